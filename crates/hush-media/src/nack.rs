//! Loss recovery by retransmission: the receiver's NACK scheduler and the sender's packet
//! history that answers NACKs with RTX packets (RFC 4588).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::rtp::RtpPacket;
use crate::wire::Reader;
use crate::Instant;

/// Missing packets tracked at most; a larger gap is treated as a stream restart.
const MAX_MISSING: u64 = 1000;

#[derive(Debug, Clone, Copy)]
struct Missing {
    first_seen: Instant,
    next_send: Instant,
    retries: u32,
    /// When the first NACK went out, while its repeat is still to go.
    repeat_of: Option<Instant>,
}

/// Receiver side: notices gaps in extended sequence numbers and decides when to NACK them.
///
/// A missing packet is NACKed when first noticed, once more `repeat_after` later (a NACK
/// crosses the same lossy path as the packet it asks for: on a path losing 10 %, one NACK in
/// ten is lost and its packet waits a whole round trip more), then again every
/// `max(rtt, min_interval)` after the first (each retry repeated the same way if
/// `repeat_retries`), up to `max_retries` NACKs, and forgotten after `max_age` (when it could
/// no longer be played) or once it arrives. The sender answers a repeat only if the NACK it
/// repeats was lost ([`RtxSender::on_nack`] ignores a request repeated within 0.8 × RTT).
#[derive(Debug, Clone)]
pub struct NackScheduler {
    missing: BTreeMap<u64, Missing>,
    highest: Option<u64>,
    /// Retries per packet.
    pub max_retries: u32,
    /// Shortest time between two NACKs of one packet.
    pub min_interval: Duration,
    /// Age after which a missing packet is given up.
    pub max_age: Duration,
    /// When the first NACK of a packet is repeated, if that is sooner than the retry.
    pub repeat_after: Duration,
    /// Whether each retry is repeated `repeat_after` later too, not only the first NACK. A
    /// retry is sent because an earlier attempt failed (its NACKs or the retransmission
    /// were lost); on a lossy path a single retry is lost one time in ten again, and a
    /// video frame waiting for it is given up before the next one can come back.
    pub repeat_retries: bool,
    /// Retries go every `max(rtt × retry_factor, min_interval)`. At 1.0 a retry races the
    /// retransmission it asks for (which comes back one round trip after the NACK, plus
    /// pacing), and the sender answers it again.
    pub retry_factor: f64,
}

impl Default for NackScheduler {
    fn default() -> Self {
        Self {
            missing: BTreeMap::new(),
            highest: None,
            max_retries: 10,
            min_interval: Duration::from_millis(20),
            max_age: Duration::from_millis(1000),
            repeat_after: Duration::from_millis(20),
            repeat_retries: false,
            retry_factor: 1.0,
        }
    }
}

impl NackScheduler {
    /// Records an arrived packet. Returns `true` if it was one we were missing.
    pub fn on_packet(&mut self, now: Instant, ext_seq: u64) -> bool {
        let Some(highest) = self.highest else {
            self.highest = Some(ext_seq);
            return false;
        };
        if ext_seq > highest {
            if ext_seq - highest > MAX_MISSING {
                self.missing.clear();
            } else {
                for s in highest + 1..ext_seq {
                    self.missing.insert(
                        s,
                        Missing {
                            first_seen: now,
                            next_send: now,
                            retries: 0,
                            repeat_of: None,
                        },
                    );
                }
            }
            self.highest = Some(ext_seq);
            false
        } else {
            self.missing.remove(&ext_seq).is_some()
        }
    }

    /// Stops asking for a packet (it was recovered another way, e.g. by RED).
    pub fn forget(&mut self, ext_seq: u64) {
        self.missing.remove(&ext_seq);
    }

    /// Packets currently missing.
    pub fn missing_count(&self) -> usize {
        self.missing.len()
    }

    /// The time between two attempts at one packet on a path with this round trip:
    /// `max(rtt × retry_factor, min_interval)`. On a path shorter than `min_interval` it is
    /// longer than the round trip, so a receiver that waits for a second attempt must wait
    /// this long, not one more round trip.
    pub fn retry_interval(&self, rtt: Duration) -> Duration {
        rtt.mul_f64(self.retry_factor).max(self.min_interval)
    }

    /// The extended sequence numbers to NACK now; `rtt` paces the retries.
    pub fn poll_nacks(&mut self, now: Instant, rtt: Duration) -> Vec<u64> {
        let interval = self.retry_interval(rtt);
        let (max_age, max_retries) = (self.max_age, self.max_retries);
        let (repeat_after, repeat_retries) = (self.repeat_after, self.repeat_retries);
        self.missing.retain(|_, m| {
            now.saturating_duration_since(m.first_seen) < max_age && m.retries < max_retries
        });
        let mut out = Vec::new();
        for (&s, m) in self.missing.iter_mut() {
            if m.next_send <= now {
                m.next_send = match m.repeat_of.take() {
                    // The repeat: the retry stays one interval after the first.
                    Some(first) => (first + interval).max(now),
                    None if (m.retries == 0 || repeat_retries) && repeat_after < interval => {
                        m.repeat_of = Some(now);
                        now + repeat_after
                    }
                    None => now + interval,
                };
                m.retries += 1;
                out.push(s);
            }
        }
        out
    }

    /// When [`poll_nacks`](Self::poll_nacks) next has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.missing.values().map(|m| m.next_send).min()
    }
}

/// Sender side: the recently sent packets of one SSRC, to answer NACKs with RTX packets.
#[derive(Debug, Clone)]
pub struct RtxSender {
    rtx_ssrc: u32,
    rtx_payload_type: u8,
    next_rtx_seq: u16,
    history: VecDeque<(Instant, Option<Instant>, RtpPacket)>,
    /// How long packets are kept.
    pub keep_for: Duration,
}

impl RtxSender {
    /// A history answering with RTX packets on `rtx_ssrc` / `rtx_payload_type`.
    pub fn new(rtx_ssrc: u32, rtx_payload_type: u8) -> Self {
        Self {
            rtx_ssrc,
            rtx_payload_type,
            next_rtx_seq: 0,
            history: VecDeque::new(),
            keep_for: Duration::from_millis(1000),
        }
    }

    /// Remembers a packet just sent.
    pub fn on_sent(&mut self, now: Instant, packet: &RtpPacket) {
        while self
            .history
            .front()
            .is_some_and(|(t, _, _)| now.saturating_duration_since(*t) > self.keep_for)
        {
            self.history.pop_front();
        }
        self.history.push_back((now, None, packet.clone()));
    }

    /// RTX packets for the NACKed sequence numbers still in history. A packet is resent at
    /// most once per `rtt` (a NACK repeated before the last resend could arrive is ignored).
    pub fn on_nack(&mut self, now: Instant, lost: &[u16], rtt: Duration) -> Vec<RtpPacket> {
        let mut out = Vec::new();
        for &seq in lost {
            // History is in send order with consecutive sequence numbers, so index directly.
            let Some(front) = self.history.front() else {
                break;
            };
            let idx = usize::from(seq.wrapping_sub(front.2.header.sequence_number));
            let Some(entry) = self.history.get_mut(idx) else {
                continue;
            };
            if entry.2.header.sequence_number != seq {
                continue;
            }
            if entry
                .1
                .is_some_and(|t| now.saturating_duration_since(t) < rtt.mul_f64(0.8))
            {
                continue;
            }
            entry.1 = Some(now);
            let orig = &entry.2;
            let mut payload = Vec::with_capacity(orig.payload.len() + 2);
            payload.extend_from_slice(&seq.to_be_bytes());
            payload.extend_from_slice(&orig.payload);
            let mut header = orig.header.clone();
            header.ssrc = self.rtx_ssrc;
            header.payload_type = self.rtx_payload_type;
            header.sequence_number = self.next_rtx_seq;
            self.next_rtx_seq = self.next_rtx_seq.wrapping_add(1);
            out.push(RtpPacket { header, payload });
        }
        out
    }
}

impl RtxSender {
    /// Another copy of an RTX packet this sender made, under the next RTX sequence number.
    pub fn copy(&mut self, rtx: &RtpPacket) -> RtpPacket {
        let mut copy = rtx.clone();
        copy.header.sequence_number = self.next_rtx_seq;
        self.next_rtx_seq = self.next_rtx_seq.wrapping_add(1);
        copy
    }

    /// A padding-only packet on the RTX stream (for bandwidth probing); `timestamp` should be
    /// a recent media timestamp.
    pub fn padding_packet(&mut self, timestamp: u32) -> RtpPacket {
        let header = crate::rtp::RtpHeader {
            payload_type: self.rtx_payload_type,
            sequence_number: self.next_rtx_seq,
            timestamp,
            ssrc: self.rtx_ssrc,
            ..Default::default()
        };
        self.next_rtx_seq = self.next_rtx_seq.wrapping_add(1);
        RtpPacket {
            header,
            payload: Vec::new(),
        }
    }
}

/// Turns a received RTX packet back into the original: the first two payload bytes are the
/// original sequence number (RFC 4588 §4). `None` if the payload is too short.
pub fn unwrap_rtx(rtx: &RtpPacket, media_ssrc: u32, media_payload_type: u8) -> Option<RtpPacket> {
    let mut r = Reader::new(&rtx.payload, "RTX payload");
    let osn = r.u16().ok()?;
    let mut header = rtx.header.clone();
    header.ssrc = media_ssrc;
    header.payload_type = media_payload_type;
    header.sequence_number = osn;
    Some(RtpPacket {
        header,
        payload: r.rest().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn nacks_gaps_and_retries_at_rtt() {
        let t0 = Instant::now();
        let mut n = NackScheduler::default();
        n.on_packet(t0, 100);
        n.on_packet(t0, 103);
        assert_eq!(n.poll_nacks(t0, ms(40)), vec![101, 102]);
        // Repeated once after 20 ms, in case the first NACK was lost.
        assert!(n.poll_nacks(t0 + ms(19), ms(40)).is_empty());
        assert_eq!(n.poll_nacks(t0 + ms(20), ms(40)), vec![101, 102]);
        // Then retried one RTT after the first.
        assert!(n.poll_nacks(t0 + ms(39), ms(40)).is_empty());
        assert_eq!(n.poll_timeout(), Some(t0 + ms(40)));
        assert!(n.on_packet(t0 + ms(40), 101));
        assert_eq!(n.poll_nacks(t0 + ms(40), ms(40)), vec![102]);
        n.forget(102);
        assert_eq!(n.missing_count(), 0);
        assert_eq!(n.poll_timeout(), None);
    }

    #[test]
    fn repeats_every_retry_when_asked() {
        let t0 = Instant::now();
        let mut n = NackScheduler {
            repeat_retries: true,
            retry_factor: 1.5,
            ..NackScheduler::default()
        };
        n.on_packet(t0, 100);
        n.on_packet(t0, 102);
        let rtt = ms(40);
        let sent: Vec<u64> = (0..=200)
            .filter(|&t| !n.poll_nacks(t0 + ms(t), rtt).is_empty())
            .collect();
        // The first NACK and each retry (every 1.5 RTT after the first) go twice, 20 ms
        // apart: a retry lost on a lossy path is not a whole retry interval lost.
        assert_eq!(sent, [0, 20, 60, 80, 120, 140, 180, 200]);
        // Without it, only the first is repeated.
        n.repeat_retries = false;
        n.on_packet(t0 + ms(300), 104);
        let sent: Vec<u64> = (300..=500)
            .filter(|&t| n.poll_nacks(t0 + ms(t), rtt).contains(&103))
            .collect();
        assert_eq!(sent, [300, 320, 360, 420, 480]);
    }

    #[test]
    fn gives_up_after_max_age_and_ignores_huge_gaps() {
        let t0 = Instant::now();
        let mut n = NackScheduler::default();
        n.on_packet(t0, 1);
        n.on_packet(t0, 3);
        assert!(n.poll_nacks(t0 + ms(1000), ms(10)).is_empty());
        n.on_packet(t0, 1_000_000);
        assert_eq!(n.missing_count(), 0);
    }

    #[test]
    fn rtx_round_trip_and_rate_limit() {
        let t0 = Instant::now();
        let mut s = RtxSender::new(99, 97);
        for seq in 65534..=65535u16 {
            let mut p = RtpPacket::default();
            p.header.sequence_number = seq;
            p.header.ssrc = 5;
            p.header.payload_type = 111;
            p.payload = vec![seq as u8; 3];
            s.on_sent(t0, &p);
        }
        let rtx = s.on_nack(t0, &[65535, 7], ms(40));
        assert_eq!(rtx.len(), 1);
        assert_eq!(rtx[0].header.ssrc, 99);
        let orig = unwrap_rtx(&rtx[0], 5, 111).unwrap();
        assert_eq!(orig.header.sequence_number, 65535);
        assert_eq!(orig.payload, vec![255; 3]);
        // Asked again too soon: ignored; after an RTT: resent.
        assert!(s.on_nack(t0 + ms(10), &[65535], ms(40)).is_empty());
        let again = s.on_nack(t0 + ms(40), &[65535], ms(40));
        assert_eq!(again.len(), 1);
        // A copy carries the same packet under the next RTX sequence number.
        let copy = s.copy(&again[0]);
        assert_eq!(
            copy.header.sequence_number,
            again[0].header.sequence_number.wrapping_add(1)
        );
        assert_eq!(unwrap_rtx(&copy, 5, 111).unwrap().payload, vec![255; 3]);
        assert!(unwrap_rtx(&RtpPacket::default(), 5, 111).is_none());
    }
}

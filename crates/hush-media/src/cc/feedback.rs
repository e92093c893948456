//! Both ends of transport-wide feedback: the receiver's arrival recorder and the sender's
//! history that turns feedback back into (send time, arrival time, size) triples.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::rtcp::{TransportFeedback, REFERENCE_MICROS, TICK_MICROS};
use crate::wire::SeqUnwrapper;
use crate::Instant;

/// Receiver side: arrival times of packets carrying a transport-wide sequence number.
#[derive(Debug, Clone, Default)]
pub struct TwccRecorder {
    unwrap: SeqUnwrapper,
    epoch: Option<Instant>,
    arrivals: BTreeMap<u64, i64>,
    next_base: Option<u64>,
    feedback_count: u8,
}

/// Most packets reported in one feedback message.
const MAX_PER_FEEDBACK: u64 = 500;

impl TwccRecorder {
    /// Records the arrival of transport sequence number `seq` at `now`.
    pub fn record(&mut self, now: Instant, seq: u16) {
        let ext = self.unwrap.unwrap(seq);
        let epoch = *self.epoch.get_or_insert(now);
        if self.next_base.is_some_and(|b| ext < b) {
            return; // already reported as lost; too late to report now
        }
        if self.next_base.is_none() {
            self.next_base = Some(ext);
        }
        let us = now.saturating_duration_since(epoch).as_micros() as i64;
        self.arrivals.entry(ext).or_insert(us);
        // Bound memory if feedback is never polled.
        while self.arrivals.len() > 4 * MAX_PER_FEEDBACK as usize {
            if let Some((s, _)) = self.arrivals.pop_first() {
                self.next_base = Some(s + 1);
            }
        }
    }

    /// Whether there are arrivals not yet reported.
    pub fn has_pending(&self) -> bool {
        !self.arrivals.is_empty()
    }

    /// Builds the next feedback message covering unreported arrivals, if any.
    pub fn build(&mut self, sender_ssrc: u32, media_ssrc: u32) -> Option<TransportFeedback> {
        let base = self.next_base?;
        let (&first_seq, &first_us) = self.arrivals.first_key_value()?;
        let reference = first_us.div_euclid(REFERENCE_MICROS);
        let mut last_us = reference * REFERENCE_MICROS;
        let mut packets = Vec::new();
        let mut seq = base;
        let end = self
            .arrivals
            .last_key_value()
            .map_or(first_seq, |(&s, _)| s)
            .min(base + MAX_PER_FEEDBACK);
        while seq <= end {
            match self.arrivals.get(&seq) {
                None => packets.push(None),
                Some(&us) => {
                    let ticks = (us - last_us) / TICK_MICROS;
                    let Ok(d) = i16::try_from(ticks) else {
                        break; // does not fit: report the rest next time
                    };
                    last_us += i64::from(d) * TICK_MICROS;
                    packets.push(Some(d));
                }
            }
            seq += 1;
        }
        // Drop trailing not-received entries: they may still arrive.
        while packets.last().is_some_and(Option::is_none) {
            packets.pop();
            seq -= 1;
        }
        if packets.is_empty() {
            return None;
        }
        self.arrivals = self.arrivals.split_off(&seq);
        self.next_base = Some(seq);
        let fb = TransportFeedback {
            sender_ssrc,
            media_ssrc,
            base_seq: base as u16,
            reference_time: (reference as u32) & 0x00ff_ffff,
            feedback_count: self.feedback_count,
            packets,
        };
        self.feedback_count = self.feedback_count.wrapping_add(1);
        Some(fb)
    }
}

/// One packet's fate, from feedback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketResult {
    /// When we sent it.
    pub send_time: Instant,
    /// Its size in bytes.
    pub size: usize,
    /// Arrival time on the receiver's clock in microseconds, or `None` if lost.
    pub recv_us: Option<i64>,
    /// Probe cluster it belonged to.
    pub probe: Option<u32>,
}

#[derive(Debug, Clone, Copy)]
struct Sent {
    time: Instant,
    size: usize,
    probe: Option<u32>,
}

/// Sender side: what was sent under each transport sequence number.
#[derive(Debug, Clone, Default)]
pub struct SendHistory {
    next_seq: u64,
    sent: BTreeMap<u64, Sent>,
    last_ref_us: Option<i64>,
    outstanding: usize,
}

impl SendHistory {
    /// Assigns the next transport sequence number to a packet being sent.
    pub fn on_send(&mut self, now: Instant, size: usize, probe: Option<u32>) -> u16 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.sent.insert(
            seq,
            Sent {
                time: now,
                size,
                probe,
            },
        );
        self.outstanding += size;
        while self
            .sent
            .first_key_value()
            .is_some_and(|(_, s)| now.saturating_duration_since(s.time) > Duration::from_secs(3))
        {
            if let Some((_, s)) = self.sent.pop_first() {
                self.outstanding = self.outstanding.saturating_sub(s.size);
            }
        }
        seq as u16
    }

    /// Bytes sent that no feedback has covered yet (in flight, queued, or whose feedback is
    /// still on its way); packets older than 3 s are forgotten.
    pub fn outstanding_bytes(&self) -> usize {
        self.outstanding
    }

    /// (send time, size) of every packet no feedback has covered yet, oldest first.
    pub fn unsettled(&self) -> impl Iterator<Item = (Instant, usize)> + '_ {
        self.sent.values().map(|s| (s.time, s.size))
    }

    /// Resolves a feedback message against the history. Unknown sequence numbers are skipped.
    pub fn on_feedback(&mut self, fb: &TransportFeedback) -> Vec<PacketResult> {
        // Unwrap the base relative to the newest sequence number we sent.
        let last = self.next_seq.saturating_sub(1);
        let diff = fb.base_seq.wrapping_sub(last as u16) as i16;
        let base = last as i64 + i64::from(diff);
        // Unwrap the 24-bit reference time against the previous one.
        let mut ref_us = i64::from(fb.reference_time) * REFERENCE_MICROS;
        if let Some(prev) = self.last_ref_us {
            let span = (1i64 << 24) * REFERENCE_MICROS;
            while ref_us < prev - span / 2 {
                ref_us += span;
            }
        }
        self.last_ref_us = Some(ref_us);
        let mut t = ref_us;
        let mut out = Vec::with_capacity(fb.packets.len());
        for (i, p) in fb.packets.iter().enumerate() {
            let seq = base + i as i64;
            let recv_us = p.map(|d| {
                t += i64::from(d) * TICK_MICROS;
                t
            });
            if seq < 0 {
                continue;
            }
            if let Some(s) = self.sent.get(&(seq as u64)) {
                out.push(PacketResult {
                    send_time: s.time,
                    size: s.size,
                    recv_us,
                    probe: s.probe,
                });
            }
        }
        // Everything up to the end of this report is settled: reported now, or never to be
        // reported (the receiver moves on past it).
        let end = base + fb.packets.len() as i64;
        if end > 0 {
            let rest = self.sent.split_off(&(end as u64));
            let settled: usize = self.sent.values().map(|s| s.size).sum();
            self.outstanding = self.outstanding.saturating_sub(settled);
            self.sent = rest;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_and_history_agree() {
        let t0 = Instant::now();
        let mut hist = SendHistory::default();
        let mut rec = TwccRecorder::default();
        let mut seqs = Vec::new();
        for i in 0..20u32 {
            seqs.push(hist.on_send(t0 + Duration::from_millis(u64::from(i) * 10), 100, None));
        }
        for (i, &s) in seqs.iter().enumerate() {
            if i % 5 != 3 {
                rec.record(t0 + Duration::from_millis(i as u64 * 10 + 30), s);
            }
        }
        let fb = rec.build(1, 2).unwrap();
        assert!(!rec.has_pending());
        let res = hist.on_feedback(&fb);
        assert_eq!(res.len(), 20);
        assert_eq!(res.iter().filter(|r| r.recv_us.is_none()).count(), 4);
        let recv: Vec<i64> = res.iter().filter_map(|r| r.recv_us).collect();
        // Arrivals 10 ms apart (up to the 250 µs tick), except across a lost packet.
        assert_eq!(hist.outstanding_bytes(), 0);
        // The same report again resolves nothing and settles nothing twice.
        assert!(hist.on_feedback(&fb).is_empty());
        assert_eq!(hist.outstanding_bytes(), 0);
        assert!(recv
            .windows(2)
            .all(|w| (w[1] - w[0] - 10_000).abs() <= 250 || (w[1] - w[0] - 20_000).abs() <= 250));
    }
}

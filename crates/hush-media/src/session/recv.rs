//! The receive path of a [`MediaSession`]: RTP demultiplexing, receive statistics, NACKs.

use std::collections::VecDeque;
use std::time::Duration;

use super::{protection, MediaSession};
use crate::codec::frames;
use crate::error::Error;
use crate::jitter::Recovery;
use crate::nack::unwrap_rtx;
use crate::rtcp::{Nack, Pli, RtcpPacket};
use crate::rtp::RtpPacket;
use crate::wire::SeqUnwrapper;
use crate::{red, Instant};

/// Most audio sequence gaps tracked as suspected losses at once.
const MAX_SUSPECTED: usize = 64;
/// Gaps in the audio sequence remembered for their length (loss bursts).
const RECENT_GAPS: usize = 16;
/// Slack of the video gap timer on top of the NACK schedule's third attempt: the NACK goes
/// when a later packet shows the gap, the sender paces its answer behind other packets, and
/// both ends run late on a busy machine.
const GAP_MARGIN: Duration = Duration::from_millis(50);

/// Bytes over the last second.
#[derive(Debug, Clone, Default)]
pub(crate) struct RateMeter {
    window: VecDeque<(Instant, usize)>,
    bytes: usize,
}

impl RateMeter {
    pub(crate) fn add(&mut self, now: Instant, bytes: usize) {
        self.window.push_back((now, bytes));
        self.bytes += bytes;
        self.expire(now);
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(t, b)) = self.window.front() {
            if now.saturating_duration_since(t) <= Duration::from_secs(1) {
                break;
            }
            self.window.pop_front();
            self.bytes -= b;
        }
    }

    pub(crate) fn bps(&mut self, now: Instant) -> u64 {
        self.expire(now);
        self.bytes as u64 * 8
    }
}

/// RFC 3550 receive statistics of one remote stream (originals only).
#[derive(Debug, Clone)]
pub(crate) struct RecvStream {
    clock_rate: u32,
    unwrap: SeqUnwrapper,
    base: Option<u64>,
    highest: u64,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    jitter: f64,
    last_transit: Option<f64>,
    /// Gaps not yet filled by an original packet, with when they were noticed.
    holes: std::collections::BTreeMap<u64, Instant>,
    /// Holes never filled by an original within [`SETTLE`]: real loss, not reordering.
    settled_lost: u64,
}

/// How long a hole may stay open before it counts as loss rather than reordering.
const SETTLE: Duration = Duration::from_millis(1000);

impl RecvStream {
    pub(crate) fn new(clock_rate: u32) -> Self {
        Self {
            clock_rate,
            unwrap: SeqUnwrapper::default(),
            base: None,
            highest: 0,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            jitter: 0.0,
            last_transit: None,
            holes: std::collections::BTreeMap::new(),
            settled_lost: 0,
        }
    }

    /// Records an original packet; returns its extended sequence number.
    pub(crate) fn on_packet(&mut self, now: Instant, arrival_secs: f64, seq: u16, ts: u32) -> u64 {
        let ext = self.unwrap.unwrap(seq);
        let base = *self.base.get_or_insert(ext);
        if ext > self.highest.max(base) + 1 && ext - self.highest < 1000 {
            for s in self.highest + 1..ext {
                self.holes.insert(s, now);
            }
        } else {
            self.holes.remove(&ext);
        }
        self.highest = self.highest.max(ext).max(base);
        self.received += 1;
        // RFC 3550 §A.8, in timestamp units.
        let transit = arrival_secs * f64::from(self.clock_rate) - f64::from(ts);
        if let Some(last) = self.last_transit {
            let mut d = (transit - last).abs();
            // A timestamp wrap looks like a huge step; ignore it.
            if d > f64::from(u32::MAX / 2) {
                d = 0.0;
            }
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
        ext
    }

    /// Extended sequence number of `seq` without recording it.
    pub(crate) fn peek(&self, seq: u16) -> u64 {
        self.unwrap.peek(seq)
    }

    /// Packets lost for good (holes older than a second), so far.
    pub(crate) fn settled_lost(&mut self, now: Instant) -> u64 {
        while let Some((&s, &t)) = self.holes.first_key_value() {
            if now.saturating_duration_since(t) < SETTLE {
                break;
            }
            self.holes.remove(&s);
            self.settled_lost += 1;
        }
        self.settled_lost
    }

    pub(crate) fn expected(&self) -> u64 {
        self.base.map_or(0, |b| self.highest + 1 - b)
    }

    pub(crate) fn received(&self) -> u64 {
        self.received
    }

    pub(crate) fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }

    pub(crate) fn jitter(&self) -> Duration {
        Duration::from_secs_f64(self.jitter / f64::from(self.clock_rate))
    }

    pub(crate) fn has_data(&self) -> bool {
        self.base.is_some()
    }

    /// Fields of a report block: (fraction lost, cumulative lost, highest seq, jitter).
    pub(crate) fn report(&mut self) -> (u8, i32, u32, u32) {
        let expected = self.expected();
        let interval_expected = expected - self.expected_prior;
        let interval_received = self.received - self.received_prior;
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = interval_expected.saturating_sub(interval_received);
        let fraction = (lost_interval << 8)
            .checked_div(interval_expected)
            .map_or(0, |f| f.min(255) as u8);
        let cumulative = (expected as i64 - self.received as i64).clamp(-(1 << 23), (1 << 23) - 1);
        (
            fraction,
            cumulative as i32,
            self.highest as u32,
            self.jitter as u32,
        )
    }
}

impl MediaSession {
    pub(super) fn handle_rtp(&mut self, now: Instant, packet: RtpPacket) -> Result<(), Error> {
        if let Some(id) = self.config.extensions.transport_cc {
            if let Some(seq) = packet.header.transport_seq(id) {
                self.twcc_rx.record(now, seq);
            }
        }
        let ssrc = packet.header.ssrc;
        let arrival = now.saturating_duration_since(self.start).as_secs_f64();
        let audio = self.config.remote_audio;
        let video = self.config.remote_video;
        let audio_pt = self.config.red_pt.unwrap_or(self.config.opus_pt);
        if ssrc == audio.ssrc {
            let h = &packet.header;
            let ext = self
                .audio_rx
                .on_packet(now, arrival, h.sequence_number, h.timestamp);
            self.note_audio_sequence(now, ext);
            self.audio_nack.on_packet(now, ext);
            self.on_audio(now, &packet, ext, Recovery::None)
        } else if ssrc == audio.rtx_ssrc {
            if packet.payload.is_empty() {
                return Ok(()); // padding (probe)
            }
            let orig = unwrap_rtx(&packet, audio.ssrc, audio_pt)
                .ok_or(Error::Unexpected("short RTX packet"))?;
            let ext = self.audio_rx.peek(orig.header.sequence_number);
            self.audio_nack.on_packet(now, ext);
            self.on_audio(now, &orig, ext, Recovery::Retransmission)
        } else if let Some(v) = video.filter(|v| v.ssrc == ssrc) {
            let h = &packet.header;
            let ext = self
                .video_rx
                .on_packet(now, arrival, h.sequence_number, h.timestamp);
            self.video_nack.on_packet(now, ext);
            let _ = v;
            self.on_video(now, &packet, ext);
            Ok(())
        } else if let Some(v) = video.filter(|v| v.rtx_ssrc == ssrc) {
            if packet.payload.is_empty() {
                return Ok(());
            }
            let orig = unwrap_rtx(&packet, v.ssrc, self.config.video_pt)
                .ok_or(Error::Unexpected("short RTX packet"))?;
            let ext = self.video_rx.peek(orig.header.sequence_number);
            self.video_nack.on_packet(now, ext);
            self.on_video(now, &orig, ext);
            Ok(())
        } else {
            Err(Error::Unexpected("RTP packet from an unknown SSRC"))
        }
    }

    fn on_audio(
        &mut self,
        now: Instant,
        packet: &RtpPacket,
        ext_seq: u64,
        recovery: Recovery,
    ) -> Result<(), Error> {
        let ts = packet.header.timestamp;
        let pt = packet.header.payload_type;
        if Some(pt) == self.config.red_pt {
            let blocks = red::decode(&packet.payload)?;
            if recovery == Recovery::None {
                self.remote_red_depth = blocks.len().saturating_sub(1);
            }
            // The redundant blocks are the packets just before this one, oldest first.
            let redundant = blocks.len().saturating_sub(1) as u64;
            for (i, b) in blocks.into_iter().enumerate() {
                if b.timestamp_offset == 0 {
                    let frames = self.insert_audio(now, ts, b.data, recovery);
                    if recovery == Recovery::None {
                        self.remote_packet_frames = frames;
                    }
                } else {
                    if let Some(s) = ext_seq.checked_sub(redundant - i as u64) {
                        self.audio_nack.forget(s);
                    }
                    let rts = ts.wrapping_sub(u32::from(b.timestamp_offset));
                    self.insert_audio(now, rts, b.data, Recovery::Redundancy);
                }
            }
            Ok(())
        } else if pt == self.config.opus_pt {
            let frames = self.insert_audio(now, ts, packet.payload.clone(), recovery);
            if recovery == Recovery::None {
                self.remote_packet_frames = frames;
            }
            Ok(())
        } else {
            Err(Error::Unexpected("unknown audio payload type"))
        }
    }

    /// Hands one Opus packet's frames to the jitter buffer, each at its own timestamp; returns
    /// how many. A packet of several frames of our frame duration (the peer joined them to
    /// save headers, see [`MediaSession::send_audio`]) is split; anything else (a single
    /// frame, frames of another duration, or bytes that do not parse as Opus) goes in whole,
    /// as one frame, for the decoder to play or refuse.
    fn insert_audio(
        &mut self,
        now: Instant,
        ts: u32,
        payload: Vec<u8>,
        recovery: Recovery,
    ) -> usize {
        let step = self.audio_ts_step();
        let several = payload.first().is_some_and(|&toc| toc & 0x3 != 0);
        if several && self.is_our_frame_duration(&payload) {
            if let Ok(parts) = frames::split(&payload) {
                let n = parts.len();
                for (i, part) in parts.into_iter().enumerate() {
                    let at = ts.wrapping_add(step.wrapping_mul(i as u32));
                    self.jitter.insert(now, at, part, recovery);
                }
                return n;
            }
        }
        self.jitter.insert(now, ts, payload, recovery);
        1
    }

    fn on_video(&mut self, now: Instant, packet: &RtpPacket, ext_seq: u64) {
        let h = &packet.header;
        self.depack
            .push(ext_seq, h.timestamp, h.marker, &packet.payload);
        // A keyframe that arrived whole behind lost packets is shown now, not after the gap
        // times out (on a congested path that is several round trips of frozen picture).
        self.depack.skip_to_keyframe();
        if self.depack.needs_keyframe() {
            // A malformed frame was dropped, or frames wait for a keyframe after a skip: ask
            // (again, rate-limited, in case the request or the keyframe was lost).
            self.request_keyframe(now);
        }
        // The gap timer runs for the frame the depacketizer waits at, not for "some packet
        // missing": at 10 % loss and 200 packets a second there is nearly always a hole in
        // the buffer, and a timer that only restarted on a hole-free buffer skipped frames
        // whose retransmission was still on its way. A second timer bounds the whole run of
        // holes at four times the limit: after a blackout, repairs trickling in under a cut
        // estimate would otherwise hold frames back for seconds and release them in a burst.
        if self.depack.has_gap() {
            let head = self.depack.head();
            if self.video_gap_since.is_none() || self.video_gap_head != head {
                self.video_gap_since = Some(now);
                self.video_gap_head = head;
            }
            self.video_gap_first.get_or_insert(now);
        } else {
            self.video_gap_since = None;
            self.video_gap_first = None;
        }
    }

    /// How long the frame the depacketizer waits at may wait for its missing packets before
    /// they are skipped (and a keyframe asked for): long enough for the NACK schedule's third
    /// attempt to come back (the first NACK and two retries one retry interval apart, each
    /// repeated `repeat_after` later if lost, answered a round trip later), plus
    /// [`GAP_MARGIN`]; at least 200 ms. It was max(3 × RTT, 200 ms), which at 40 ms RTT left
    /// the third attempt no slack: an answer that came 1 ms after it, under load, cost a
    /// keyframe and a 0.34 s freeze where the repaired frame would have been shown 0.1 s late.
    pub(super) fn video_gap_limit(&self) -> Duration {
        let rtt = self.rtt_or_default();
        let third_attempt =
            self.video_nack.retry_interval(rtt) * 2 + self.video_nack.repeat_after + rtt;
        (third_attempt + GAP_MARGIN).max(Duration::from_millis(200))
    }

    pub(super) fn check_video_gap(&mut self, now: Instant) {
        let Some(since) = self.video_gap_since else {
            return;
        };
        let limit = self.video_gap_limit();
        let run_too_long = self
            .video_gap_first
            .is_some_and(|first| now.saturating_duration_since(first) >= limit * 4);
        if now.saturating_duration_since(since) >= limit || run_too_long {
            self.video_gap_since = None;
            self.video_gap_first = None;
            self.video_repair.gap_timeouts += 1;
            if self.depack.skip_missing() {
                self.request_keyframe(now);
            }
            self.drain_playout(now);
        }
    }

    /// Asks the peer for a keyframe of its video (PLI, RFC 4585), at most every 300 ms; for
    /// a decoder that lost its reference. Nothing without a remote video stream.
    pub fn request_keyframe(&mut self, now: Instant) {
        let Some(v) = self.config.remote_video else {
            return;
        };
        if self
            .last_pli
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_millis(300))
        {
            return;
        }
        self.last_pli = Some(now);
        self.video_repair.keyframe_requests_sent += 1;
        let pli = RtcpPacket::Pli(Pli {
            sender_ssrc: self.config.local_audio.ssrc,
            media_ssrc: v.ssrc,
        });
        self.send_rtcp(now, crate::rtcp::write_compound(&[pli]));
    }

    /// Tracks gaps in the audio sequence as suspected losses: an original that arrives later
    /// (reordering) clears its suspicion; one still missing after the settle time counts as a
    /// loss right away, long before the one-second settled count of `sample_loss` sees it.
    fn note_audio_sequence(&mut self, now: Instant, ext: u64) {
        match self.audio_highest {
            Some(h) if ext > h => {
                if ext > h + 1 {
                    if self.recent_gaps.len() == RECENT_GAPS {
                        self.recent_gaps.pop_front();
                    }
                    self.recent_gaps
                        .push_back((ext - h - 1).min(MAX_SUSPECTED as u64) as usize);
                }
                let first = (h + 1).max(ext.saturating_sub(MAX_SUSPECTED as u64));
                for s in first..ext {
                    if self.suspected_loss.len() == MAX_SUSPECTED {
                        self.suspected_loss.pop_front();
                    }
                    self.suspected_loss.push_back((s, now));
                }
            }
            Some(_) => self.suspected_loss.retain(|(s, _)| *s != ext),
            None => {}
        }
        self.audio_highest = Some(self.audio_highest.map_or(ext, |h| h.max(ext)));
    }

    /// Suspected losses older than the settle time are losses: hold room for recovery.
    fn confirm_suspected_losses(&mut self, now: Instant) {
        // Reordered packets come within the jitter; a hole that outlasts four times the
        // jitter p95 (and at least 100 ms) is loss. This runs for every packet: the p95 (a
        // sort of the transit window) is computed only once the oldest hole is old enough.
        const MIN_SETTLE: Duration = Duration::from_millis(100);
        let oldest = match self.suspected_loss.front() {
            Some(&(_, since)) => now.saturating_duration_since(since),
            None => return,
        };
        if oldest < MIN_SETTLE {
            return;
        }
        let settle = (self.jitter.jitter_p95() * 4).max(MIN_SETTLE);
        while let Some(&(_, since)) = self.suspected_loss.front() {
            if now.saturating_duration_since(since) < settle {
                break;
            }
            self.suspected_loss.pop_front();
            self.last_audio_loss = Some(now);
        }
    }

    pub(super) fn flush_nacks(&mut self, now: Instant) {
        self.confirm_suspected_losses(now);
        let rtt = self.rtt_or_default();
        // Room is held once loss shows: for 10 s after a confirmed loss, and, in the call's
        // first seconds (no loss measured yet), as soon as a gap in the sequence is seen. The
        // call starts without it, so its first frame plays on arrival; the jitter buffer
        // builds the room by stretching when the first gap appears, which also waits out the
        // missing frame's retransmission if it can still come.
        let recent = self.audio_loss_shows(now);
        // Losses are of packets: a packet of several frames is noticed, and repaired, whole.
        let frame = self.config.audio_frame * self.remote_packet_frames.max(1) as u32;
        let attempts = if self.audio_nack_enabled() {
            // Audio: retry at most while a retransmission could still be played.
            let lost = self.audio_nack.poll_nacks(now, rtt);
            self.send_nack(now, self.config.remote_audio.ssrc, &lost);
            // Until loss is measured, plan for a lossy path: two attempts when they fit.
            let loss = if now < self.startup_guard_until {
                self.recv_loss.max(protection::STARTUP_PRESUMED_LOSS)
            } else {
                self.recv_loss
            };
            protection::retransmission_attempts(loss, rtt, frame, self.config.audio_nack_max_rtt)
                .max(1)
        } else {
            0
        };
        let extra = if recent {
            // Room for the repairs that can come: retransmissions when the round trip allows,
            // else the redundant copies (RED, or the next packet's in-band FEC).
            let burst = self.recent_gaps.iter().copied().max().unwrap_or(1);
            protection::repair_delay(
                attempts,
                rtt,
                self.audio_nack.retry_interval(rtt),
                frame,
                self.remote_red_depth,
                burst,
                self.jitter.jitter_p95(),
            )
        } else {
            Duration::ZERO
        };
        self.jitter.set_extra_delay(extra);
        if let Some(v) = self.config.remote_video {
            let lost = self.video_nack.poll_nacks(now, rtt);
            if !lost.is_empty() {
                self.last_video_loss = Some(now);
            }
            self.send_nack(now, v.ssrc, &lost);
        }
    }

    fn send_nack(&mut self, now: Instant, media_ssrc: u32, lost: &[u64]) {
        if lost.is_empty() {
            return;
        }
        self.nacks_sent += lost.len() as u64;
        let nack = RtcpPacket::Nack(Nack {
            sender_ssrc: self.config.local_audio.ssrc,
            media_ssrc,
            lost: lost.iter().map(|&s| s as u16).collect(),
        });
        self.send_rtcp(now, crate::rtcp::write_compound(&[nack]));
    }

    pub(super) fn has_audio_data(&self) -> bool {
        self.audio_rx.has_data()
    }
}

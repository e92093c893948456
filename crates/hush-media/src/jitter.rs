//! Adaptive audio jitter buffer.
//!
//! Frames go in keyed by RTP timestamp, with their arrival time; playout comes out on a tick
//! every frame duration, as [`Playout`] actions for the decoder. The buffer:
//!
//! - measures each original packet's transit time (`arrival - timestamp / clock_rate`) and
//!   keeps the target delay at the p95 of `transit - min(transit)` over a sliding window
//!   (times a small headroom factor), plus any extra delay the session asks for (room for a retransmission to arrive);
//! - moves towards the target smoothly: [`Playout::Stretch`] adds delay (the decoder fills
//!   the time, as NetEq's expand does), and `shorten` on [`Playout::Frame`] removes up to half
//!   a frame's worth (time compression, as NetEq's accelerate);
//! - reorders, drops frames that arrive after their tick ([`InsertOutcome::Late`]), and never
//!   waits for a missing frame: its tick produces [`Playout::Fec`] (if the next frame is there
//!   and in-band FEC is on) or [`Playout::Conceal`], and playout goes on.
//!
//! Audio frames are assumed to be contiguous with a fixed duration (no DTX gaps); a gap in
//! the timestamps is played as concealment.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::wire::TsUnwrapper;
use crate::Instant;

/// How a played frame got here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// The original packet arrived in time.
    None,
    /// A retransmission (RTX) after a NACK.
    Retransmission,
    /// A redundant copy in a later RED packet (RFC 2198).
    Redundancy,
}

/// What the decoder should do for one playout tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Playout {
    /// Decode and play this frame. If `shorten` is non-zero, time-compress it by that much.
    Frame {
        /// RTP timestamp of the frame.
        timestamp: u32,
        /// The encoded frame.
        payload: Vec<u8>,
        /// How the frame was obtained.
        recovery: Recovery,
        /// How much shorter than a frame this tick is.
        shorten: Duration,
    },
    /// The frame at `timestamp` is missing but the next one is here: decode the missing frame
    /// from the next one's in-band FEC (Opus LBRR).
    Fec {
        /// RTP timestamp of the missing frame.
        timestamp: u32,
        /// The next frame's payload.
        next_payload: Vec<u8>,
    },
    /// The frame at `timestamp` is missing: run packet-loss concealment.
    Conceal {
        /// RTP timestamp of the missing frame.
        timestamp: u32,
    },
    /// Play `duration` of filler (concealment-style expansion) to build up delay. No frame is
    /// consumed and nothing was lost.
    Stretch {
        /// How long the filler lasts.
        duration: Duration,
    },
}

/// Result of [`JitterBuffer::insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    /// Buffered for playout.
    Buffered,
    /// Its tick has passed; dropped.
    Late,
    /// Already buffered; dropped.
    Duplicate,
}

/// Jitter buffer settings.
#[derive(Debug, Clone, PartialEq)]
pub struct JitterConfig {
    /// RTP clock rate (48 000 for Opus).
    pub clock_rate: u32,
    /// Duration of one frame.
    pub frame_duration: Duration,
    /// Delay before the first frame plays (also below `min_delay`), and the least target
    /// until ten packets are measured. Zero plays the first frame as soon as it arrives.
    pub initial_delay: Duration,
    /// Lower bound of the target delay.
    pub min_delay: Duration,
    /// Upper bound of the target delay.
    pub max_delay: Duration,
    /// Number of transit samples in the p95 window.
    pub window: usize,
    /// Target delay as a multiple of the measured p95 (above 1.0 to lose fewer than 5 % of
    /// packets to lateness).
    pub headroom: f64,
    /// Whether to emit [`Playout::Fec`] for a missing frame whose successor is here.
    pub inband_fec: bool,
    /// With no packet for this long and nothing buffered, playout pauses until the next one.
    pub idle_after: Duration,
}

impl Default for JitterConfig {
    fn default() -> Self {
        Self {
            clock_rate: 48_000,
            frame_duration: Duration::from_millis(20),
            initial_delay: Duration::from_millis(40),
            min_delay: Duration::ZERO,
            max_delay: Duration::from_millis(400),
            window: 250,
            headroom: 1.15,
            inband_fec: true,
            idle_after: Duration::from_millis(600),
        }
    }
}

/// Counters kept by the jitter buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    /// Frames played from a packet (recovered ones included).
    pub played: u64,
    /// Of those, frames that came from a retransmission.
    pub recovered_rtx: u64,
    /// Of those, frames that came from RED redundancy.
    pub recovered_red: u64,
    /// Missing frames decoded from the next frame's in-band FEC.
    pub fec: u64,
    /// Missing frames concealed.
    pub concealed: u64,
    /// Frames that arrived after their tick (redundant copies not counted).
    pub late: u64,
    /// Duplicate frames dropped (redundant copies not counted).
    pub duplicates: u64,
    /// Total filler played to build delay.
    pub stretched: Duration,
    /// Total time removed by compression.
    pub shortened: Duration,
}

#[derive(Debug, Clone)]
struct Buffered {
    payload: Vec<u8>,
    recovery: Recovery,
}

/// The adaptive jitter buffer. See the [module docs](self).
///
/// Inputs: [`insert`](Self::insert), [`handle_timeout`](Self::handle_timeout); outputs:
/// [`poll_playout`](Self::poll_playout), [`poll_timeout`](Self::poll_timeout) (the next tick).
#[derive(Debug, Clone)]
pub struct JitterBuffer {
    config: JitterConfig,
    ts_step: u64,
    unwrap: TsUnwrapper,
    frames: BTreeMap<u64, Buffered>,
    /// Virtual epoch: first arrival and its extended timestamp.
    epoch: Option<(Instant, u64)>,
    next_ts: u64,
    next_tick: Option<Instant>,
    last_arrival: Option<Instant>,
    transits: VecDeque<f64>,
    extra_delay: Duration,
    sync_delay: Duration,
    /// How long playout has waited, with nothing buffered, for the frame now due.
    underrun_wait: Duration,
    out: VecDeque<Playout>,
    stats: JitterStats,
}

/// Longest wait, with nothing buffered, for a frame that is due: a stall of the path or of
/// the sending device (packets held, then delivered together) is waited out, and the frames
/// play late rather than being concealed and then dropped as late.
const MAX_UNDERRUN_WAIT: Duration = Duration::from_millis(100);

/// Below this difference from the target, playout keeps its pace.
const TOLERANCE: f64 = 0.0025;

impl JitterBuffer {
    /// An empty buffer.
    pub fn new(config: JitterConfig) -> Self {
        let ts_step =
            (config.frame_duration.as_secs_f64() * f64::from(config.clock_rate)).round() as u64;
        Self {
            ts_step: ts_step.max(1),
            config,
            unwrap: TsUnwrapper::default(),
            frames: BTreeMap::new(),
            epoch: None,
            next_ts: 0,
            next_tick: None,
            last_arrival: None,
            transits: VecDeque::new(),
            extra_delay: Duration::ZERO,
            sync_delay: Duration::ZERO,
            underrun_wait: Duration::ZERO,
            out: VecDeque::new(),
            stats: JitterStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// Extra delay on top of the measured jitter, e.g. to leave time for a retransmission.
    pub fn set_extra_delay(&mut self, extra: Duration) {
        self.extra_delay = extra;
    }

    /// Delay added to the target, beyond its bounds, to play in step with the call's video
    /// ([`crate::sync::LipSync`]).
    pub fn set_sync_delay(&mut self, delay: Duration) {
        self.sync_delay = delay;
    }

    /// Whether to produce [`Playout::Fec`] for missing frames.
    pub fn set_inband_fec(&mut self, on: bool) {
        self.config.inband_fec = on;
    }

    /// The measured jitter: p95 of transit above the window's minimum.
    pub fn jitter_p95(&self) -> Duration {
        let Some(min) = self.transits.iter().copied().reduce(f64::min) else {
            return Duration::ZERO;
        };
        let mut rel: Vec<f64> = self.transits.iter().map(|t| t - min).collect();
        rel.sort_by(f64::total_cmp);
        let idx = ((rel.len() as f64 * 0.95).ceil() as usize).clamp(1, rel.len()) - 1;
        Duration::from_secs_f64(rel[idx].max(0.0))
    }

    /// The delay playout aims for above the fastest packet's transit: the measured jitter (its
    /// p95, with headroom) plus the extra delay, within the configured bounds. Until ten
    /// packets are measured it is at least the initial delay, and already more when the first
    /// packets show jitter: a call may start with no delay at all and grow it only when the
    /// path shows it is needed. The sync delay ([`set_sync_delay`](Self::set_sync_delay)) is
    /// added last.
    pub fn target_delay(&self) -> Duration {
        let measured = self.jitter_p95().mul_f64(self.config.headroom.max(0.0)) + self.extra_delay;
        let target = if self.transits.len() < 10 {
            measured.max(self.config.initial_delay)
        } else {
            measured
        };
        target.clamp(self.config.min_delay, self.config.max_delay) + self.sync_delay
    }

    fn min_transit(&self) -> f64 {
        self.transits
            .iter()
            .copied()
            .reduce(f64::min)
            .unwrap_or(0.0)
    }

    fn media_secs(&self, ext_ts: u64, epoch_ts: u64) -> f64 {
        (ext_ts as f64 - epoch_ts as f64) / f64::from(self.config.clock_rate)
    }

    /// Adds a frame that arrived at `now`. Recovered frames do not count as jitter samples.
    pub fn insert(
        &mut self,
        now: Instant,
        timestamp: u32,
        payload: Vec<u8>,
        recovery: Recovery,
    ) -> InsertOutcome {
        let ext = self.unwrap.unwrap(timestamp);
        let idle = self.frames.is_empty()
            && self
                .last_arrival
                .is_none_or(|t| now.saturating_duration_since(t) >= self.config.idle_after);
        if recovery == Recovery::None {
            self.last_arrival = Some(now);
        }
        if self.next_tick.is_none() || (idle && recovery == Recovery::None && ext >= self.next_ts) {
            // Start (or restart after a pause) playout at this frame.
            self.epoch = Some((now, ext));
            self.transits.clear();
            self.next_ts = ext;
            self.next_tick = Some(now + self.config.initial_delay.max(self.extra_delay));
        }
        // Late packets are the jitter we most need to see, so they are measured too.
        if recovery == Recovery::None && !self.frames.contains_key(&ext) {
            if let Some((e, ets)) = self.epoch {
                let transit =
                    now.saturating_duration_since(e).as_secs_f64() - self.media_secs(ext, ets);
                self.transits.push_back(transit);
                while self.transits.len() > self.config.window.max(1) {
                    self.transits.pop_front();
                }
            }
        }
        // Redundant copies usually arrive after the original or after the frame was played;
        // that is their normal life, not lateness.
        let counted = recovery != Recovery::Redundancy;
        if ext < self.next_ts {
            self.stats.late += u64::from(counted);
            return InsertOutcome::Late;
        }
        if self.frames.contains_key(&ext) {
            self.stats.duplicates += u64::from(counted);
            return InsertOutcome::Duplicate;
        }
        self.frames.insert(ext, Buffered { payload, recovery });
        InsertOutcome::Buffered
    }

    /// Runs every playout tick due at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(tick) = self.next_tick.filter(|&t| t <= now) {
            self.tick(tick);
        }
    }

    fn tick(&mut self, t: Instant) {
        let frame = self.config.frame_duration;
        let Some((epoch, epoch_ts)) = self.epoch else {
            self.next_tick = None;
            return;
        };
        if self.frames.is_empty()
            && self
                .last_arrival
                .is_none_or(|a| t.saturating_duration_since(a) >= self.config.idle_after)
        {
            // The sender has gone quiet: pause until the next packet.
            self.next_tick = None;
            return;
        }
        let current = t.saturating_duration_since(epoch).as_secs_f64()
            - self.media_secs(self.next_ts, epoch_ts);
        let desired = self.min_transit() + self.target_delay().as_secs_f64();
        let diff = desired - current;
        // The first frame of a start plays at its tick (the initial delay after it arrived),
        // even below the minimum delay: the delay is built after it, by stretching.
        let first = self.next_ts == epoch_ts;
        if diff > TOLERANCE && !first {
            let d = Duration::from_secs_f64(diff).min(frame);
            self.stats.stretched += d;
            self.out.push_back(Playout::Stretch { duration: d });
            self.next_tick = Some(t + d);
            return;
        }
        if self.frames.is_empty() && self.underrun_wait < MAX_UNDERRUN_WAIT {
            // Nothing at all is here: the stream stalled, or the frame was lost and its
            // successor is not here yet to show it. Wait (as an expansion) rather than give up
            // the frame: a stalled frame then plays, and a lost one is concealed as soon as the
            // next arrives.
            let d = frame.min(MAX_UNDERRUN_WAIT - self.underrun_wait);
            self.underrun_wait += d;
            self.stats.stretched += d;
            self.out.push_back(Playout::Stretch { duration: d });
            self.next_tick = Some(t + d);
            return;
        }
        self.underrun_wait = Duration::ZERO;
        let ts = self.next_ts;
        self.next_ts += self.ts_step;
        // Frames that are somehow between ticks (timestamp jumps) are dropped with this one.
        let mut due = self.frames.split_off(&self.next_ts);
        std::mem::swap(&mut due, &mut self.frames);
        let mut shorten = Duration::ZERO;
        match due.remove(&ts) {
            Some(b) => {
                if diff < -TOLERANCE && !self.frames.is_empty() {
                    shorten = Duration::from_secs_f64(-diff).min(frame / 2);
                    self.stats.shortened += shorten;
                }
                self.stats.played += 1;
                match b.recovery {
                    Recovery::Retransmission => self.stats.recovered_rtx += 1,
                    Recovery::Redundancy => self.stats.recovered_red += 1,
                    Recovery::None => {}
                }
                self.out.push_back(Playout::Frame {
                    timestamp: ts as u32,
                    payload: b.payload,
                    recovery: b.recovery,
                    shorten,
                });
            }
            None => match self.frames.get(&self.next_ts) {
                Some(next) if self.config.inband_fec => {
                    self.stats.fec += 1;
                    self.out.push_back(Playout::Fec {
                        timestamp: ts as u32,
                        next_payload: next.payload.clone(),
                    });
                }
                _ => {
                    self.stats.concealed += 1;
                    self.out.push_back(Playout::Conceal {
                        timestamp: ts as u32,
                    });
                }
            },
        }
        self.next_tick = Some(t + frame - shorten);
    }

    /// The next playout action, if any.
    #[must_use]
    pub fn poll_playout(&mut self) -> Option<Playout> {
        self.out.pop_front()
    }

    /// When the next tick is due, if playout is running.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_tick
    }

    /// Frames waiting for their tick.
    pub fn buffered_frames(&self) -> usize {
        self.frames.len()
    }
}

#[cfg(test)]
mod tests;

//! Congestion control and adaptive bitrate, in the spirit of Google Congestion Control.
//!
//! Feedback is transport-wide (draft-holmer-rmcat-transport-wide-cc-extensions): every RTP
//! packet carries a transport sequence number, the receiver reports arrival times, and the
//! *sender* runs all estimation. We chose it over REMB because the sender then sees each
//! packet's send time, size and fate, which delay- and loss-based estimation and probing all
//! need; the receiver stays simple; and one estimator covers audio, video, RTX and padding
//! together. REMB (receiver-side estimation, one number back) is the older design WebRTC has
//! moved away from.
//!
//! [`CongestionController`] combines:
//! - a delay-based rate: a trendline overuse detector ([`delay`]) drives an AIMD controller
//!   (multiplicative increase ~8 %/s, decrease to 0.85 × the acknowledged rate, deeper when a
//!   standing queue must drain);
//! - a loss-based rate: cut by half the loss fraction above 10 % loss, raised 5 %/s below 2 %;
//! - probing: short padding bursts at two or three times the target; the receive rate during
//!   a burst measures the path, so the estimate climbs quickly when capacity returns.
//!
//! The target is the smaller of the two rates, within `[min_bps, max_bps]`.

pub mod delay;
mod feedback;

pub use delay::{TrendlineDetector, Usage};
pub use feedback::{PacketResult, SendHistory, TwccRecorder};

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::rtcp::TransportFeedback;
use crate::Instant;

/// Congestion controller settings.
#[derive(Debug, Clone, PartialEq)]
pub struct CcConfig {
    /// Target at the start of the call.
    pub start_bps: u64,
    /// Lowest target.
    pub min_bps: u64,
    /// Highest target.
    pub max_bps: u64,
    /// Time between probes while the estimate is climbing.
    pub probe_interval: Duration,
    /// Whether to probe with padding at all.
    pub probing: bool,
}

impl Default for CcConfig {
    fn default() -> Self {
        Self {
            start_bps: 300_000,
            min_bps: 30_000,
            max_bps: 2_500_000,
            probe_interval: Duration::from_millis(1000),
            probing: true,
        }
    }
}

/// A request to send a burst of padding to probe the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Cluster id, to pass back to [`CongestionController::on_packet_sent`].
    pub cluster: u32,
    /// Rate to send the burst at.
    pub rate_bps: u64,
    /// Total bytes in the burst.
    pub bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RateState {
    Hold,
    Increase,
}

#[derive(Debug, Clone, Default)]
struct ProbeAcc {
    rate_bps: u64,
    sent: u32,
    reported: u32,
    bytes_after_first: usize,
    first_recv: Option<i64>,
    last_recv: i64,
}

/// The sender-side congestion controller. Feed it sent packets and feedback; read
/// [`target_bps`](Self::target_bps). Sans-IO: every input carries `now`.
#[derive(Debug, Clone)]
pub struct CongestionController {
    config: CcConfig,
    history: SendHistory,
    detector: TrendlineDetector,
    delay_rate: f64,
    loss_rate: f64,
    state: RateState,
    last_update: Option<Instant>,
    last_decrease: Option<Instant>,
    last_loss_decrease: Option<Instant>,
    acked: VecDeque<(i64, usize)>,
    owd: VecDeque<(i64, i64)>,
    send_epoch: Option<Instant>,
    queue_delay_ms: f64,
    losses: VecDeque<(Instant, bool)>,
    rtt: Duration,
    next_probe_at: Option<Instant>,
    next_cluster: u32,
    probes: BTreeMap<u32, ProbeAcc>,
    probe_result: Option<(Instant, f64)>,
    last_probe_saturated: bool,
}

/// How long a probe's measurement stands in for the acknowledged rate.
const PROBE_VALID: Duration = Duration::from_secs(5);

impl CongestionController {
    /// A controller starting at `config.start_bps`.
    pub fn new(config: CcConfig) -> Self {
        let start = config.start_bps as f64;
        Self {
            config,
            history: SendHistory::default(),
            detector: TrendlineDetector::default(),
            delay_rate: start,
            loss_rate: start,
            state: RateState::Increase,
            last_update: None,
            last_decrease: None,
            last_loss_decrease: None,
            acked: VecDeque::new(),
            owd: VecDeque::new(),
            send_epoch: None,
            queue_delay_ms: 0.0,
            losses: VecDeque::new(),
            rtt: Duration::from_millis(100),
            next_probe_at: None,
            next_cluster: 1,
            probes: BTreeMap::new(),
            probe_result: None,
            last_probe_saturated: false,
        }
    }

    /// The bitrate the encoders should share, in bits per second.
    pub fn target_bps(&self) -> u64 {
        (self.delay_rate.min(self.loss_rate) as u64).clamp(self.config.min_bps, self.config.max_bps)
    }

    /// Queueing delay seen in the last feedback, above the lowest one-way delay seen.
    pub fn queue_delay(&self) -> Duration {
        Duration::from_secs_f64(self.queue_delay_ms.max(0.0) / 1000.0)
    }

    /// Loss fraction over the last second of feedback (before any recovery).
    pub fn loss_fraction(&self) -> f64 {
        if self.losses.is_empty() {
            return 0.0;
        }
        self.losses.iter().filter(|(_, l)| *l).count() as f64 / self.losses.len() as f64
    }

    /// Tells the controller the round-trip time.
    pub fn set_rtt(&mut self, rtt: Duration) {
        self.rtt = rtt;
    }

    /// Registers a packet being sent; returns the transport sequence number to put in it.
    pub fn on_packet_sent(&mut self, now: Instant, size: usize, probe: Option<u32>) -> u16 {
        if let Some(acc) = probe.and_then(|c| self.probes.get_mut(&c)) {
            acc.sent += 1;
        }
        self.history.on_send(now, size, probe)
    }

    /// A probe to send now, if one is due.
    pub fn poll_probe(&mut self, now: Instant) -> Option<Probe> {
        if !self.config.probing {
            return None;
        }
        let due = *self
            .next_probe_at
            .get_or_insert(now + Duration::from_millis(500));
        if now < due {
            return None;
        }
        // Probe often while the path keeps taking more, less once it is saturated.
        let interval = if self.last_probe_saturated {
            self.config.probe_interval * 3
        } else {
            self.config.probe_interval
        };
        self.next_probe_at = Some(now + interval);
        let target = self.target_bps();
        let recently_cut = self
            .last_decrease
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_millis(1500));
        if target >= self.config.max_bps
            || self.detector.usage() != Usage::Normal
            || recently_cut
            || self.loss_fraction() > 0.05
        {
            return None;
        }
        let factor = if self.last_probe_saturated { 2 } else { 3 };
        let rate_bps = (target * factor).min(self.config.max_bps * 3 / 2);
        let bytes = ((rate_bps as f64 * 0.05 / 8.0) as usize).max(5 * 1000);
        let cluster = self.next_cluster;
        self.next_cluster = self.next_cluster.wrapping_add(1);
        self.probes.insert(
            cluster,
            ProbeAcc {
                rate_bps,
                ..ProbeAcc::default()
            },
        );
        while self.probes.len() > 4 {
            self.probes.pop_first();
        }
        Some(Probe {
            cluster,
            rate_bps,
            bytes,
        })
    }

    /// Handles a transport-wide feedback message.
    pub fn on_feedback(&mut self, now: Instant, fb: &TransportFeedback) {
        let results = self.history.on_feedback(fb);
        for r in &results {
            self.losses.push_back((now, r.recv_us.is_none()));
            let Some(recv) = r.recv_us else { continue };
            self.detector.on_packet(r.send_time, recv);
            self.acked.push_back((recv, r.size));
            self.on_probe_result(r, recv);
        }
        self.track_queue_delay(&results);
        while self
            .losses
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > Duration::from_secs(1))
        {
            self.losses.pop_front();
        }
        if let Some(&(last, _)) = self.acked.back() {
            while self.acked.front().is_some_and(|(t, _)| last - t > 500_000) {
                self.acked.pop_front();
            }
        }
        self.update(now);
    }

    fn track_queue_delay(&mut self, results: &[PacketResult]) {
        // One-way delay up to an unknown clock offset; its minimum over 10 s is the base.
        for r in results {
            let Some(recv) = r.recv_us else { continue };
            let send_us = self.send_us(r.send_time);
            self.owd.push_back((recv, recv - send_us));
        }
        let Some(&(last, latest)) = self.owd.back() else {
            return;
        };
        while self.owd.front().is_some_and(|(t, _)| last - t > 10_000_000) {
            self.owd.pop_front();
        }
        let min = self.owd.iter().map(|(_, d)| *d).min().unwrap_or(latest);
        self.queue_delay_ms = (latest - min) as f64 / 1000.0;
    }

    fn send_us(&mut self, t: Instant) -> i64 {
        let epoch = *self.send_epoch.get_or_insert(t);
        t.saturating_duration_since(epoch).as_micros() as i64
    }

    fn on_probe_result(&mut self, r: &PacketResult, recv: i64) {
        let Some(acc) = r.probe.and_then(|c| self.probes.get_mut(&c)) else {
            return;
        };
        acc.reported += 1;
        match acc.first_recv {
            None => acc.first_recv = Some(recv),
            Some(_) => acc.bytes_after_first += r.size,
        }
        acc.last_recv = acc.last_recv.max(recv);
    }

    fn finish_probes(&mut self, now: Instant) {
        let done: Vec<u32> = self
            .probes
            .iter()
            .filter(|(_, a)| a.sent >= 5 && a.reported * 10 >= a.sent * 8)
            .map(|(&c, _)| c)
            .collect();
        for c in done {
            let Some(acc) = self.probes.remove(&c) else {
                continue;
            };
            let Some(first) = acc.first_recv else {
                continue;
            };
            let span = (acc.last_recv - first) as f64 / 1e6;
            if span <= 0.0 {
                continue;
            }
            // Everything that arrived while the probe did went through the path together.
            let bytes: usize = self
                .acked
                .iter()
                .filter(|(t, _)| *t > first && *t <= acc.last_recv)
                .map(|(_, s)| s)
                .sum();
            let delivered = bytes.max(acc.bytes_after_first) as f64 * 8.0 / span;
            let measured = delivered.min(acc.rate_bps as f64);
            self.last_probe_saturated = delivered < 0.9 * acc.rate_bps as f64;
            self.probe_result = Some((now, measured * 0.95));
            if measured * 0.95 > self.delay_rate {
                self.delay_rate = measured * 0.95;
                self.loss_rate = self.loss_rate.max(self.delay_rate);
                self.state = RateState::Hold;
            }
        }
    }

    fn acked_bps(&self) -> Option<f64> {
        let (first, _) = self.acked.front()?;
        let (last, _) = self.acked.back()?;
        let span = ((last - first) as f64 / 1e6).max(0.1);
        let bytes: usize = self.acked.iter().map(|(_, s)| s).sum();
        (self.acked.len() >= 5).then(|| bytes as f64 * 8.0 / span)
    }

    fn update(&mut self, now: Instant) {
        let dt = self
            .last_update
            .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64())
            .min(1.0);
        self.last_update = Some(now);
        self.finish_probes(now);
        let acked = self.acked_bps();
        match self.detector.usage() {
            Usage::Overuse => {
                let since = self
                    .last_decrease
                    .map_or(Duration::MAX, |t| now.saturating_duration_since(t));
                if since > self.rtt + Duration::from_millis(100) {
                    // Right after a probe, its measurement is the best capacity estimate.
                    let probed = self
                        .probe_result
                        .filter(|(t, _)| now.saturating_duration_since(*t) < Duration::from_secs(1))
                        .map(|(_, r)| r);
                    let base = acked
                        .unwrap_or(self.delay_rate)
                        .max(probed.unwrap_or(0.0))
                        .min(self.delay_rate);
                    // A standing queue drains only if we send well below capacity.
                    let drain = (1.0 - self.queue_delay_ms / 1000.0).clamp(0.5, 0.85);
                    self.delay_rate = (base.max(acked.unwrap_or(0.0)) * drain).min(self.delay_rate);
                    self.last_decrease = Some(now);
                }
                self.state = RateState::Hold;
            }
            Usage::Underuse => self.state = RateState::Hold,
            Usage::Normal => {
                if self.state == RateState::Hold {
                    self.state = RateState::Increase;
                } else {
                    self.delay_rate *= 1.08f64.powf(dt);
                    if let Some(a) = acked {
                        // Do not run far ahead of what actually gets through, unless a recent
                        // probe showed the path takes more.
                        let probed = self
                            .probe_result
                            .filter(|(t, _)| now.saturating_duration_since(*t) < PROBE_VALID)
                            .map_or(0.0, |(_, r)| r);
                        self.delay_rate = self.delay_rate.min((1.5 * a + 10_000.0).max(probed));
                    }
                }
            }
        }
        // Loss-based rate.
        let loss = self.loss_fraction();
        if self.losses.len() >= 20 {
            if loss > 0.10 {
                let since = self
                    .last_loss_decrease
                    .map_or(Duration::MAX, |t| now.saturating_duration_since(t));
                if since > Duration::from_millis(300) + self.rtt {
                    self.loss_rate = self.loss_rate.min(self.delay_rate) * (1.0 - 0.5 * loss);
                    self.last_loss_decrease = Some(now);
                }
            } else if loss < 0.02 {
                self.loss_rate *= 1.05f64.powf(dt);
                self.loss_rate = self.loss_rate.max(self.delay_rate);
            }
        }
        let (min, max) = (self.config.min_bps as f64, self.config.max_bps as f64);
        self.delay_rate = self.delay_rate.clamp(min, max);
        self.loss_rate = self.loss_rate.clamp(min, max * 1.5);
    }
}

//! Bandwidth probing: short padding bursts above the target whose receive rate measures the
//! path, so the estimate climbs in a few steps once capacity returns.

use std::collections::BTreeMap;
use std::time::Duration;

use super::acked::Delivered;
use super::PacketResult;
use crate::Instant;

/// A request to send a burst of padding to probe the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Cluster id, to pass back to [`CongestionController::on_packet_sent`](super::CongestionController::on_packet_sent).
    pub cluster: u32,
    /// Rate to send the burst at.
    pub rate_bps: u64,
    /// Total bytes in the burst.
    pub bytes: usize,
}

impl Probe {
    /// The burst as padding packets, each `header` bytes of headers (RTP, SRTP, UDP/IP) plus
    /// its padding: at least five packets, with 36 to 255 bytes of padding each (small ones
    /// for a small burst, so that a probe into a slow bottleneck adds little queue), paced at
    /// the probe's rate from `now`. Yields when each is due and its padding length.
    ///
    /// ```
    /// use hush_media::cc::Probe;
    /// let probe = Probe { cluster: 1, rate_bps: 800_000, bytes: 1_500 };
    /// let now = hush_media::Instant::now();
    /// let packets: Vec<_> = probe.padding_packets(now, 60).collect();
    /// // Five packets of 60 + 240 bytes, one every 3 ms at 800 kbit/s.
    /// assert_eq!(packets.len(), 5);
    /// assert!(packets.iter().all(|&(_, padding)| padding == 240));
    /// assert_eq!(packets[4].0 - now, std::time::Duration::from_millis(12));
    /// ```
    pub fn padding_packets(
        &self,
        now: Instant,
        header: usize,
    ) -> impl Iterator<Item = (Instant, u8)> {
        let padding = (self.bytes / 5).saturating_sub(header).clamp(36, 255);
        let size = padding + header;
        let n = self.bytes.div_ceil(size).max(5);
        let gap = Duration::from_secs_f64(size as f64 * 8.0 / self.rate_bps.max(1) as f64);
        let padding = u8::try_from(padding).unwrap_or(u8::MAX);
        (0..n).map(move |k| {
            let k = u32::try_from(k).unwrap_or(u32::MAX);
            (now + gap.saturating_mul(k), padding)
        })
    }
}

/// How long a burst lasts at its rate. Short, so that a burst into a saturated bottleneck adds
/// only a few tens of milliseconds of queue.
const BURST: Duration = Duration::from_millis(15);

/// After a probe showed more capacity, probe again this soon (exponential probing).
const FOLLOW_UP: Duration = Duration::from_millis(250);

/// What a finished probe measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct ProbeResult {
    /// The rate the path delivered while the burst crossed it (at most the burst's rate).
    pub(super) bps: f64,
    /// The path delivered clearly less than the burst's rate: `bps` is its capacity.
    pub(super) saturated: bool,
}

/// When the path is quiet enough to probe.
#[derive(Debug, Clone, Copy)]
pub(super) struct Conditions {
    /// Current target.
    pub(super) target_bps: u64,
    /// Highest target.
    pub(super) max_bps: u64,
    /// Nothing stands in the way: no overuse or draining queue, the one-way delay is at its
    /// baseline, no overuse for a while, little loss.
    pub(super) quiet: bool,
}

#[derive(Debug, Clone, Default)]
struct Cluster {
    rate_bps: u64,
    sent: u32,
    reported: u32,
    bytes_after_first: usize,
    first_recv: Option<i64>,
    last_recv: i64,
    first_sent: Option<Instant>,
    last_sent: Option<Instant>,
}

/// Schedules probes and turns their feedback into rate measurements.
#[derive(Debug, Clone)]
pub(super) struct Prober {
    interval: Duration,
    next_at: Option<Instant>,
    next_cluster: u32,
    clusters: BTreeMap<u32, Cluster>,
    last_saturated: bool,
}

impl Prober {
    pub(super) fn new(interval: Duration) -> Self {
        Self {
            interval,
            next_at: None,
            next_cluster: 1,
            clusters: BTreeMap::new(),
            last_saturated: false,
        }
    }

    /// A probe to send now, if one is due and the conditions allow it.
    pub(super) fn poll(&mut self, now: Instant, c: Conditions) -> Option<Probe> {
        let due = *self.next_at.get_or_insert(now + Duration::from_millis(500));
        if now < due || c.target_bps >= c.max_bps {
            return None;
        }
        if !c.quiet {
            // Look again shortly; the path may calm down before a whole interval passes.
            self.next_at = Some(now + FOLLOW_UP);
            return None;
        }
        // Probe often while the path keeps taking more, less once it is saturated.
        self.next_at = Some(
            now + if self.last_saturated {
                self.interval * 2
            } else {
                self.interval
            },
        );
        // Three times the target while climbing; once saturated, a quarter above the target
        // is enough to notice more capacity (the target sits just under the capacity) and
        // adds only a few milliseconds of queue.
        let rate_bps = if self.last_saturated {
            c.target_bps * 5 / 4
        } else {
            c.target_bps * 3
        }
        .min(c.max_bps * 3 / 2);
        let bytes = (rate_bps as f64 * BURST.as_secs_f64() / 8.0) as usize;
        let cluster = self.next_cluster;
        self.next_cluster = self.next_cluster.wrapping_add(1);
        self.clusters.insert(
            cluster,
            Cluster {
                rate_bps,
                ..Cluster::default()
            },
        );
        while self.clusters.len() > 4 {
            self.clusters.pop_first();
        }
        Some(Probe {
            cluster,
            rate_bps,
            bytes,
        })
    }

    /// A packet of cluster `cluster` was sent at `now`.
    pub(super) fn on_sent(&mut self, now: Instant, cluster: u32) {
        if let Some(c) = self.clusters.get_mut(&cluster) {
            c.sent += 1;
            c.first_sent.get_or_insert(now);
            c.last_sent = Some(now);
        }
    }

    /// Feedback reported packet `r`, received at `recv` (µs).
    pub(super) fn on_result(&mut self, r: &PacketResult, recv: i64) {
        let Some(c) = r.probe.and_then(|c| self.clusters.get_mut(&c)) else {
            return;
        };
        c.reported += 1;
        match c.first_recv {
            None => c.first_recv = Some(recv),
            Some(_) => c.bytes_after_first += r.size,
        }
        c.last_recv = c.last_recv.max(recv);
    }

    /// Finishes the clusters that feedback has covered; returns the rate each one measured
    /// (at most its own rate), from what was delivered while it arrived. A probe found room
    /// only if the path took nearly all of it and clearly more than `known_bps` (the larger
    /// of the target and the known capacity); then the next one follows soon.
    pub(super) fn finish(
        &mut self,
        now: Instant,
        delivered: &Delivered,
        known_bps: f64,
    ) -> Vec<ProbeResult> {
        let done: Vec<u32> = self
            .clusters
            .iter()
            .filter(|(_, a)| a.sent >= 5 && a.reported * 10 >= a.sent * 8)
            .map(|(&c, _)| c)
            .collect();
        let mut out = Vec::new();
        for id in done {
            let Some(c) = self.clusters.remove(&id) else {
                continue;
            };
            let Some(first) = c.first_recv else {
                continue;
            };
            let span = (c.last_recv - first) as f64 / 1e6;
            if span <= 0.0 {
                continue;
            }
            // Arrivals bunched to under half the time the packets took to send measure the
            // path's jitter, not its rate (a saturated path only spreads them): no verdict
            // from this one (WebRTC's probe estimator drops the same ratio).
            let sent_span = match (c.first_sent, c.last_sent) {
                (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
                _ => 0.0,
            };
            if span < 0.5 * sent_span {
                continue;
            }
            // Everything that arrived while the probe did went through the path together.
            let bytes = delivered.bytes_between(first, c.last_recv);
            let delivered = bytes.max(c.bytes_after_first) as f64 * 8.0 / span;
            let saturated = delivered < 0.9 * c.rate_bps as f64;
            self.last_saturated = saturated || delivered < 1.1 * known_bps;
            if !self.last_saturated {
                // The path took it all: there may be more.
                self.next_at = Some(self.next_at.map_or(now, |t| t.min(now + FOLLOW_UP)));
            }
            out.push(ProbeResult {
                bps: delivered.min(c.rate_bps as f64),
                saturated,
            });
        }
        out
    }
}

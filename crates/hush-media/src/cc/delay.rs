//! Delay-based overuse detection in the manner of Google Congestion Control
//! (draft-ietf-rmcat-gcc-02 and WebRTC's trendline estimator): packet groups, a least-squares
//! trend of the accumulated one-way delay variation, and an adaptive threshold.

use std::collections::VecDeque;

use crate::Instant;

/// What the detector concludes about the bottleneck queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// The queue is stable.
    Normal,
    /// The queue is growing: we send faster than the path drains.
    Overuse,
    /// The queue is draining.
    Underuse,
}

/// Packets sent within this span form one group.
const GROUP_SPAN_US: i64 = 5_000;
const WINDOW: usize = 20;
const SMOOTHING: f64 = 0.9;
const GAIN: f64 = 4.0;
const K_UP: f64 = 0.0087;
const K_DOWN: f64 = 0.039;
const OVERUSE_TIME_MS: f64 = 10.0;

#[derive(Debug, Clone, Copy)]
struct Group {
    first_send_us: i64,
    last_send_us: i64,
    last_recv_us: i64,
}

/// The trendline overuse detector.
#[derive(Debug, Clone)]
pub struct TrendlineDetector {
    epoch: Option<Instant>,
    current: Option<Group>,
    previous: Option<Group>,
    first_recv_us: Option<i64>,
    accumulated_ms: f64,
    smoothed_ms: f64,
    history: VecDeque<(f64, f64)>,
    threshold: f64,
    last_threshold_update_ms: Option<f64>,
    overuse_since_ms: Option<f64>,
    overuse_count: u32,
    prev_trend: f64,
    usage: Usage,
}

impl Default for TrendlineDetector {
    fn default() -> Self {
        Self {
            epoch: None,
            current: None,
            previous: None,
            first_recv_us: None,
            accumulated_ms: 0.0,
            smoothed_ms: 0.0,
            history: VecDeque::new(),
            threshold: 12.5,
            last_threshold_update_ms: None,
            overuse_since_ms: None,
            overuse_count: 0,
            prev_trend: 0.0,
            usage: Usage::Normal,
        }
    }
}

impl TrendlineDetector {
    /// The current conclusion.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// Feeds one received packet (in send order): its send time and its arrival time on the
    /// receiver's clock.
    pub fn on_packet(&mut self, send: Instant, recv_us: i64) {
        let epoch = *self.epoch.get_or_insert(send);
        let send_us = send.saturating_duration_since(epoch).as_micros() as i64;
        match &mut self.current {
            Some(g) if send_us - g.first_send_us <= GROUP_SPAN_US && send_us >= g.last_send_us => {
                g.last_send_us = send_us;
                g.last_recv_us = g.last_recv_us.max(recv_us);
            }
            _ => {
                if let Some(done) = self.current.take() {
                    if let Some(prev) = self.previous {
                        self.on_group_pair(prev, done);
                    }
                    self.previous = Some(done);
                }
                self.current = Some(Group {
                    first_send_us: send_us,
                    last_send_us: send_us,
                    last_recv_us: recv_us,
                });
            }
        }
    }

    fn on_group_pair(&mut self, prev: Group, cur: Group) {
        let send_delta_ms = (cur.last_send_us - prev.last_send_us) as f64 / 1000.0;
        let recv_delta_ms = (cur.last_recv_us - prev.last_recv_us) as f64 / 1000.0;
        if send_delta_ms < 0.0 {
            return;
        }
        let first = *self.first_recv_us.get_or_insert(cur.last_recv_us);
        let arrival_ms = (cur.last_recv_us - first) as f64 / 1000.0;
        let delta = recv_delta_ms - send_delta_ms;
        self.accumulated_ms += delta;
        self.smoothed_ms = SMOOTHING * self.smoothed_ms + (1.0 - SMOOTHING) * self.accumulated_ms;
        self.history.push_back((arrival_ms, self.smoothed_ms));
        if self.history.len() > WINDOW {
            self.history.pop_front();
        }
        if self.history.len() < WINDOW {
            return;
        }
        let slope = linear_slope(&self.history).unwrap_or(self.prev_trend);
        let trend = slope * self.history.len().min(60) as f64 * GAIN;
        self.detect(trend, send_delta_ms, arrival_ms);
    }

    fn detect(&mut self, trend: f64, send_delta_ms: f64, now_ms: f64) {
        if trend > self.threshold {
            let since = *self
                .overuse_since_ms
                .get_or_insert(now_ms - send_delta_ms / 2.0);
            self.overuse_count += 1;
            if now_ms - since > OVERUSE_TIME_MS
                && self.overuse_count > 1
                && trend >= self.prev_trend
            {
                self.usage = Usage::Overuse;
                self.overuse_since_ms = Some(now_ms);
                self.overuse_count = 0;
            }
        } else if trend < -self.threshold {
            self.overuse_since_ms = None;
            self.overuse_count = 0;
            self.usage = Usage::Underuse;
        } else {
            self.overuse_since_ms = None;
            self.overuse_count = 0;
            self.usage = Usage::Normal;
        }
        self.prev_trend = trend;
        // Adaptive threshold (GCC §5.4), ignoring spikes far above it.
        let last = self.last_threshold_update_ms.unwrap_or(now_ms);
        if trend.abs() <= self.threshold + 15.0 {
            let k = if trend.abs() < self.threshold {
                K_DOWN
            } else {
                K_UP
            };
            let dt = (now_ms - last).min(100.0);
            self.threshold += k * (trend.abs() - self.threshold) * dt;
            self.threshold = self.threshold.clamp(6.0, 600.0);
        }
        self.last_threshold_update_ms = Some(now_ms);
    }
}

fn linear_slope(points: &VecDeque<(f64, f64)>) -> Option<f64> {
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), (x, y)| {
        (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
    });
    (den > 0.0).then(|| num / den)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn run(extra_per_packet_us: i64) -> Usage {
        let t0 = Instant::now();
        let mut d = TrendlineDetector::default();
        let mut usage = Usage::Normal;
        for i in 0..200i64 {
            let send = t0 + Duration::from_millis(i as u64 * 10);
            let recv = 50_000 + i * 10_000 + i * extra_per_packet_us;
            d.on_packet(send, recv);
            if d.usage() != Usage::Normal {
                usage = d.usage();
            }
        }
        usage
    }

    #[test]
    fn growing_queue_is_overuse_and_steady_is_normal() {
        assert_eq!(run(0), Usage::Normal);
        assert_eq!(run(2_000), Usage::Overuse);
        assert_eq!(run(-2_000), Usage::Underuse);
    }
}

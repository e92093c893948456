//! What the path delivered: recent arrivals reported by feedback, plus the bytes we sent that
//! feedback cannot report (RTCP shares the bottleneck but carries no transport sequence
//! number). Through a first-in first-out bottleneck, everything sent between two reported
//! packets arrived between them, so those bytes are added back by send time.

use std::collections::VecDeque;
use std::time::Duration;

use crate::Instant;

/// Window over which the acknowledged rate is measured (by arrival time).
const WINDOW_US: i64 = 250_000;
/// Arrivals kept (probe measurements look back this far).
const KEEP_US: i64 = 500_000;
/// Untracked sends kept.
const KEEP_UNTRACKED: Duration = Duration::from_secs(3);
/// Most arrivals kept, whatever the (peer-reported) arrival times say.
const MAX_ARRIVALS: usize = 4096;
/// A pause between two arrivals this long, far longer than between their sending, is the
/// path (or the receiver) holding packets back: see [`Delivered::held_back`].
const HELD_GAP_US: i64 = 150_000;

#[derive(Debug, Clone, Copy)]
struct Arrival {
    recv_us: i64,
    size: usize,
    sent: Instant,
}

/// Recent deliveries; see the [module docs](self).
#[derive(Debug, Clone, Default)]
pub(super) struct Delivered {
    arrivals: VecDeque<Arrival>,
    untracked: VecDeque<(Instant, usize)>,
}

impl Delivered {
    /// A packet sent at `sent` with `size` bytes arrived at `recv_us`.
    pub(super) fn on_arrival(&mut self, recv_us: i64, size: usize, sent: Instant) {
        self.arrivals.push_back(Arrival {
            recv_us,
            size,
            sent,
        });
    }

    /// We sent `size` bytes that feedback will not report (RTCP).
    pub(super) fn on_untracked_sent(&mut self, now: Instant, size: usize) {
        self.untracked.push_back((now, size));
        while self
            .untracked
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > KEEP_UNTRACKED)
        {
            self.untracked.pop_front();
        }
    }

    /// Forgets arrivals too old to matter (and the oldest beyond a hard bound, since arrival
    /// times come from the peer's feedback and may go backwards).
    pub(super) fn prune(&mut self) {
        while self.arrivals.len() > MAX_ARRIVALS {
            self.arrivals.pop_front();
        }
        if let Some(last) = self.arrivals.back().map(|a| a.recv_us) {
            while self
                .arrivals
                .front()
                .is_some_and(|a| last - a.recv_us > KEEP_US)
            {
                self.arrivals.pop_front();
            }
        }
    }

    /// Bytes delivered after the arrival at `from_us` up to and including `to_us`.
    pub(super) fn bytes_between(&self, from_us: i64, to_us: i64) -> usize {
        let mut bytes = 0;
        let mut first_sent: Option<Instant> = None;
        let mut last_sent: Option<Instant> = None;
        for a in &self.arrivals {
            if a.recv_us < from_us || a.recv_us > to_us {
                continue;
            }
            if a.recv_us > from_us {
                bytes += a.size;
            }
            first_sent = Some(first_sent.map_or(a.sent, |t| t.min(a.sent)));
            last_sent = Some(last_sent.map_or(a.sent, |t| t.max(a.sent)));
        }
        bytes + self.untracked_between(first_sent, last_sent)
    }

    fn untracked_between(&self, from: Option<Instant>, to: Option<Instant>) -> usize {
        let (Some(from), Some(to)) = (from, to) else {
            return 0;
        };
        self.untracked
            .iter()
            .filter(|(t, _)| *t > from && *t < to)
            .map(|(_, s)| s)
            .sum()
    }

    /// What the receiver got from the arrival at `from_us` on (the arrivals kept: up to
    /// 500 ms), in bits per second, the same way as [`rate_bps`](Self::rate_bps). From the
    /// moment a queue began to rise at the bottleneck its packets leave back to back, so this
    /// is its rate, without the deliveries before (which a window may still hold right after
    /// the link got slower). `None` with fewer than five arrivals or 50 ms.
    pub(super) fn rate_since(&self, from_us: i64) -> Option<f64> {
        let last = self.arrivals.back()?.recv_us;
        let (count, first) = self
            .arrivals
            .iter()
            .filter(|a| a.recv_us >= from_us && a.recv_us <= last)
            .fold((0usize, last), |(n, f), a| (n + 1, f.min(a.recv_us)));
        let span = (last - first) as f64 / 1e6;
        if count < 5 || span < 0.05 {
            return None;
        }
        Some(self.bytes_between(first, last) as f64 * 8.0 / span)
    }

    /// Whether, among the arrivals kept, the path held packets back and then let them out
    /// at once: an arrival came [`HELD_GAP_US`] or more after the one before it although it
    /// was sent less than a third of that gap after it. That is a pause in delivery (the
    /// receiving process descheduled on a busy machine, a radio outage), not a bottleneck
    /// serving at its rate: a rate over a window spanning it (43 kbps of a 2.5 Mbps path,
    /// traced) measures the pause, and a cut to it collapsed the estimate.
    pub(super) fn held_back(&self) -> bool {
        self.arrivals
            .iter()
            .zip(self.arrivals.iter().skip(1))
            .any(|(a, b)| {
                let gap = b.recv_us - a.recv_us;
                let sent_gap = b.sent.saturating_duration_since(a.sent).as_micros() as i64;
                gap >= HELD_GAP_US && sent_gap * 3 < gap
            })
    }

    /// What the receiver got over the newest `span_us` of arrivals, as
    /// [`rate_since`](Self::rate_since) does: while a queue stands at the bottleneck, the
    /// rate it serves now, without a longer window's deliveries from before a drop.
    pub(super) fn latest_rate(&self, span_us: i64) -> Option<f64> {
        let last = self.arrivals.back()?.recv_us;
        self.rate_since(last - span_us)
    }

    /// What the receiver got over the last 250 ms of arrivals, in bits per second: the bytes
    /// after the window's first arrival over the time since it, which is exact for a saturated
    /// bottleneck whatever the packet sizes. The window stretches (up to 500 ms) to hold five
    /// arrivals: a slow link's audio in 60 ms packets brings four in 250 ms. `None` with
    /// fewer than five arrivals or 50 ms.
    pub(super) fn rate_bps(&self) -> Option<f64> {
        let last = self.arrivals.back()?.recv_us;
        let mut first = last;
        let mut count = 0;
        for a in self.arrivals.iter().rev() {
            let age = last - a.recv_us;
            if (age >= WINDOW_US && count >= 5) || age > KEEP_US {
                break;
            }
            first = a.recv_us;
            count += 1;
        }
        let span = (last - first) as f64 / 1e6;
        if count < 5 || span < 0.05 {
            return None;
        }
        Some(self.bytes_between(first, last) as f64 * 8.0 / span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturated_link_rate_counts_untracked_bytes() {
        // 150 kbps bottleneck: 200-byte media packets interleaved with 50-byte RTCP, all
        // queued; every byte takes 8/150 ms on the link.
        let t0 = Instant::now();
        let mut d = Delivered::default();
        let mut recv = 0i64;
        for i in 0..40u64 {
            let sent = t0 + Duration::from_millis(i * 10);
            d.on_untracked_sent(sent, 50);
            recv += 50 * 8_000_000 / 150_000; // the RTCP packet ahead of it
            let sent = sent + Duration::from_millis(1);
            recv += 200 * 8_000_000 / 150_000;
            d.on_arrival(recv, 200, sent);
        }
        let rate = d.rate_bps().unwrap();
        assert!((rate - 150_000.0).abs() < 1_000.0, "{rate}");
        // Counting only the reported packets would see 120 kbps.
        d.untracked.clear();
        let rtp_only = d.rate_bps().unwrap();
        assert!((rtp_only - 120_000.0).abs() < 1_000.0, "{rtp_only}");
    }

    #[test]
    fn backwards_arrival_times_stay_bounded() {
        // A peer's feedback may claim arrivals that go back in time; memory stays bounded.
        let t0 = Instant::now();
        let mut d = Delivered::default();
        for i in 0..10_000i64 {
            d.on_arrival(-i * 1000, 100, t0);
            d.prune();
        }
        assert!(d.arrivals.len() <= MAX_ARRIVALS);
        let _ = d.rate_bps();
    }

    #[test]
    fn slow_packets_still_give_a_rate() {
        // 60 ms packets of 120 bytes through a 16 kbps link: four arrive in any 250 ms, so
        // the window stretches to five (a rate of None let the delay controller's increase
        // run unbounded: 24 kbps links saw the target jump to 770 kbps).
        let t0 = Instant::now();
        let mut d = Delivered::default();
        for i in 0..20i64 {
            d.on_arrival(i * 60_000, 120, t0 + Duration::from_millis(i as u64 * 60));
        }
        let rate = d.rate_bps().expect("a rate");
        assert!((rate - 16_000.0).abs() < 500.0, "{rate}");
    }

    #[test]
    fn few_arrivals_give_no_rate() {
        let t0 = Instant::now();
        let mut d = Delivered::default();
        for i in 0..4 {
            d.on_arrival(i * 20_000, 100, t0 + Duration::from_millis(i as u64 * 20));
        }
        assert_eq!(d.rate_bps(), None);
    }
}

//! The bottleneck's rate from each packet's own transmission time.
//!
//! A packet that meets no queue arrives `d + size / rate` after it was sent, where `d` (the
//! path's propagation delay and the clocks' offset) is the same for every packet: a larger
//! packet arrives later by its extra bytes' transmission time. A packet that met a queue
//! arrives later still. So, among the packets reported over the last two seconds, the
//! lowest one-way delay of the smallest ones and the lowest of the largest ones lie on that
//! line (if any packet of each kind went through without queueing), and their difference
//! over the difference in size is 1 / rate.
//!
//! On a slow link this is measurable before the link is full: on 24 kbps a 280-byte packet
//! arrives 60 ms after a 100-byte one sent into an empty queue, where the acknowledged rate
//! only measures what the sender sent. On a fast link the difference is a few microseconds,
//! below the jitter: no rate is given then.

use std::collections::VecDeque;

/// Arrivals kept, by age of their arrival (µs).
const KEEP_US: i64 = 2_000_000;
/// Most arrivals kept, whatever the (peer-reported) arrival times say.
const MAX_POINTS: usize = 256;
/// Fewest arrivals to take a rate from (as many as the acknowledged rate needs).
const MIN_POINTS: usize = 5;
/// Least difference between the small and the large packets compared (bytes).
const MIN_SIZE_SPREAD: usize = 64;
/// Least difference in one-way delay between them that is taken for transmission time rather
/// than jitter (µs): a scheduler's hiccup on a busy host is a few milliseconds.
const MIN_RESOLVED_US: i64 = 20_000;

#[derive(Debug, Clone, Copy)]
struct Point {
    recv_us: i64,
    size: usize,
    owd_us: i64,
}

/// Reported arrivals and the link rate their sizes and delays show; see the
/// [module docs](self).
#[derive(Debug, Clone, Default)]
pub(super) struct SerializationRate {
    points: VecDeque<Point>,
}

impl SerializationRate {
    /// A packet of `size` bytes (as sent, headers included) arrived at `recv_us` (receiver's
    /// clock) with a one-way delay of `owd_us` (up to a constant offset).
    pub(super) fn on_arrival(&mut self, recv_us: i64, size: usize, owd_us: i64) {
        self.points.push_back(Point {
            recv_us,
            size,
            owd_us,
        });
        while self.points.len() > MAX_POINTS
            || self
                .points
                .front()
                .is_some_and(|p| recv_us - p.recv_us > KEEP_US)
        {
            self.points.pop_front();
        }
    }

    /// The link's rate in bits per second, if the arrivals kept show one: a third of them at
    /// least [`MIN_SIZE_SPREAD`] bytes larger than another third, and the lowest delay of the
    /// large ones at least [`MIN_RESOLVED_US`] above the lowest of the small ones.
    pub(super) fn rate_bps(&self) -> Option<f64> {
        let n = self.points.len();
        if n < MIN_POINTS {
            return None;
        }
        let mut sizes: Vec<usize> = self.points.iter().map(|p| p.size).collect();
        sizes.sort_unstable();
        let (small_max, large_min) = (sizes[n / 3], sizes[n - 1 - n / 3]);
        let lowest = |keep: &dyn Fn(usize) -> bool| {
            self.points
                .iter()
                .filter(|p| keep(p.size))
                .min_by_key(|p| p.owd_us)
                .copied()
        };
        let small = lowest(&|s| s <= small_max)?;
        let large = lowest(&|s| s >= large_min)?;
        let spread = large.size.checked_sub(small.size)?;
        let later = large.owd_us - small.owd_us;
        if spread < MIN_SIZE_SPREAD || later < MIN_RESOLVED_US {
            return None;
        }
        Some(spread as f64 * 8.0 / (later as f64 / 1e6))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packets of `sizes`, one every `interval_us`, through a link of `rate_bps` with a FIFO
    /// queue and 50 ms of propagation delay: (arrival, size, one-way delay).
    fn through_link(sizes: &[usize], interval_us: i64, rate_bps: f64) -> Vec<(i64, usize, i64)> {
        let mut free_at = 0i64;
        sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                let sent = i as i64 * interval_us;
                let start = free_at.max(sent);
                free_at = start + (size as f64 * 8.0 / rate_bps * 1e6) as i64;
                let arrival = free_at + 50_000;
                (arrival, size, arrival - sent)
            })
            .collect()
    }

    fn estimate(points: &[(i64, usize, i64)]) -> Option<f64> {
        let mut s = SerializationRate::default();
        for &(recv, size, owd) in points {
            s.on_arrival(recv, size, owd);
        }
        s.rate_bps()
    }

    /// Sizes of 80 ms audio packets in a call's first second: quiet, then speech.
    const SIZES: [usize; 12] = [100, 100, 104, 180, 285, 270, 240, 300, 210, 160, 290, 250];

    #[test]
    fn a_slow_link_shows_its_rate_before_it_is_full() {
        for link in [24_000.0, 32_000.0] {
            let est = estimate(&through_link(&SIZES, 80_000, link)).expect("a rate");
            assert!((est - link).abs() < 0.1 * link, "{est} on {link}");
        }
    }

    #[test]
    fn a_queue_on_some_packets_does_not_hide_the_rate() {
        // 60 ms packets: the large ones queue behind each other on 24 kbps.
        let est = estimate(&through_link(&SIZES, 60_000, 24_000.0)).expect("a rate");
        assert!((est - 24_000.0).abs() < 2_400.0, "{est}");
    }

    #[test]
    fn no_rate_on_a_fast_link_or_without_sizes_to_compare() {
        assert_eq!(estimate(&through_link(&SIZES, 80_000, 1_000_000.0)), None);
        assert_eq!(estimate(&through_link(&[200; 12], 80_000, 24_000.0)), None);
        assert_eq!(estimate(&through_link(&SIZES[..4], 80_000, 24_000.0)), None);
    }
}

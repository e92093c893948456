//! What we sent on top of the encoders' share (retransmissions), over the last second by send
//! time. Fast start counts it against its ceiling: the encoders are given the whole rate (less
//! RTCP), so retransmissions, sent twice in a call's first seconds, ran the wire a fifth past
//! the rate fast start had set.

use std::collections::VecDeque;
use std::time::Duration;

use crate::Instant;

/// Window the rate is measured over.
const WINDOW: Duration = Duration::from_secs(1);
/// Most sends kept, whatever the window holds.
const MAX_SENDS: usize = 4096;

/// Recent sends; see the [module docs](self).
#[derive(Debug, Clone, Default)]
pub(super) struct Repairs {
    /// (send time, bytes) over the last second.
    sends: VecDeque<(Instant, usize)>,
    /// The first send ever: the rate counts over no less than the time since, nor 250 ms.
    first: Option<Instant>,
}

impl Repairs {
    /// We resent `size` bytes on the wire (headers included) at `now`.
    pub(super) fn on_sent(&mut self, now: Instant, size: usize) {
        self.first.get_or_insert(now);
        self.sends.push_back((now, size));
        while self.sends.len() > MAX_SENDS
            || self
                .sends
                .front()
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) > WINDOW)
        {
            self.sends.pop_front();
        }
    }

    /// The rate over the last second before `now` (over the time since the first send if
    /// shorter, but at least 250 ms), in bits per second; 0 before anything was sent.
    pub(super) fn rate_bps(&self, now: Instant) -> f64 {
        let Some(first) = self.first else {
            return 0.0;
        };
        let span = now
            .saturating_duration_since(first)
            .clamp(Duration::from_millis(250), WINDOW);
        let bytes: usize = self
            .sends
            .iter()
            .filter(|(t, _)| now.saturating_duration_since(*t) <= span)
            .map(|(_, s)| s)
            .sum();
        bytes as f64 * 8.0 / span.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_the_last_second_of_sends() {
        let t0 = Instant::now();
        let mut sent = Repairs::default();
        assert_eq!(sent.rate_bps(t0), 0.0);
        // 100 bytes every 20 ms: 40 kbps.
        for i in 0..100u64 {
            sent.on_sent(t0 + Duration::from_millis(20 * i), 100);
        }
        let now = t0 + Duration::from_millis(20 * 99);
        let bps = sent.rate_bps(now);
        assert!((bps - 40_000.0).abs() < 2_000.0, "{bps}");
        // Two retransmissions in the first 100 ms count over 250 ms, not over 100.
        let mut early = Repairs::default();
        early.on_sent(t0, 100);
        early.on_sent(t0 + Duration::from_millis(50), 100);
        assert_eq!(early.rate_bps(t0 + Duration::from_millis(100)), 6_400.0);
        // Two seconds of silence: nothing on top any more.
        assert_eq!(sent.rate_bps(now + Duration::from_secs(2)), 0.0);
    }
}

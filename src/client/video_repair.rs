//! The sender's own view of how well NACK/RTX repairs its video: how much of the loss the
//! peer reports is left after repair, for the ladder's step up.
//!
//! The peer's loss report counts packets before retransmissions made them good. At 10 %
//! random loss on a 40 ms path the repair delivers every frame, yet the smoothed report
//! wandered around the ladder's old 12 % gate and held a 2.5 Mbps call at 320x180@15 for
//! seconds (docs/benchmarks.md, issue 14's tenth and eleventh rounds). The sender sees
//! locally, without a protocol change, whether the repair keeps up: the NACKed packets it
//! resent, those it refused (budget, congestion), and the keyframes the peer asked for
//! (its gap timer gave up, or its decoder lost a reference). Sans-IO: `now` comes from the
//! caller.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How far back the repair's record counts: a little longer than the ladder's stable period
/// before a step up (1.5 s), so a failure within it holds the step.
const WINDOW: Duration = Duration::from_secs(2);

/// The sender's cumulative repair counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RepairCounters {
    /// Video retransmissions sent (each copy counted).
    pub(crate) resent: u64,
    /// NACKed video packets not resent (over the budget, or a congested window).
    pub(crate) refused: u64,
    /// Keyframe requests the peer sent.
    pub(crate) keyframe_requests: u64,
}

/// Estimates the loss left after repair from the sender's counters. See the
/// [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct RepairWatch {
    /// (when, counters) over the last [`WINDOW`], oldest first.
    samples: VecDeque<(Instant, RepairCounters)>,
}

impl RepairWatch {
    /// Records the counters as they are at `now`.
    pub(crate) fn observe(&mut self, now: Instant, counters: RepairCounters) {
        self.samples.push_back((now, counters));
        // Keep the newest sample at least WINDOW old as the base of the differences.
        while self
            .samples
            .get(1)
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// The part of the peer's reported `loss` that repair left over the last [`WINDOW`]:
    /// all of it if the peer asked for a keyframe (a frame was given up) or nothing lost
    /// was resent (no repair seen); otherwise `loss` times the share of the NACKed packets
    /// that were refused. With no record yet, `loss` itself.
    pub(crate) fn unrepaired_loss(&self, loss: f32) -> f32 {
        let (Some((_, old)), Some((_, new))) = (self.samples.front(), self.samples.back()) else {
            return loss;
        };
        let resent = new.resent.saturating_sub(old.resent);
        let refused = new.refused.saturating_sub(old.refused);
        let asked = new.keyframe_requests.saturating_sub(old.keyframe_requests);
        if asked > 0 || resent == 0 {
            return loss;
        }
        loss * refused as f32 / (resent + refused) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(resent: u64, refused: u64, keyframe_requests: u64) -> RepairCounters {
        RepairCounters {
            resent,
            refused,
            keyframe_requests,
        }
    }

    #[test]
    fn loss_that_is_resent_is_not_left() {
        let t0 = Instant::now();
        let mut w = RepairWatch::default();
        assert_eq!(w.unrepaired_loss(0.1), 0.1, "nothing known yet");
        for i in 0..30u64 {
            w.observe(t0 + Duration::from_millis(i * 100), counters(i * 5, 0, 0));
        }
        assert_eq!(w.unrepaired_loss(0.15), 0.0);
        // A quarter of the NACKed packets refused over the window: a quarter left.
        for i in 30..60u64 {
            w.observe(
                t0 + Duration::from_millis(i * 100),
                counters(150 + (i - 30) * 3, i - 30, 0),
            );
        }
        assert!((w.unrepaired_loss(0.12) - 0.03).abs() < 1e-6);
    }

    #[test]
    fn a_keyframe_request_or_no_repair_leaves_all_the_loss() {
        let t0 = Instant::now();
        let mut w = RepairWatch::default();
        for i in 0..30u64 {
            w.observe(t0 + Duration::from_millis(i * 100), counters(i * 5, 0, 0));
        }
        w.observe(t0 + Duration::from_millis(3000), counters(150, 0, 1));
        assert_eq!(w.unrepaired_loss(0.1), 0.1, "a frame given up");
        // Two seconds later the request is out of the window.
        for i in 31..52u64 {
            w.observe(t0 + Duration::from_millis(i * 100), counters(150 + i, 0, 1));
        }
        assert_eq!(w.unrepaired_loss(0.1), 0.0);
        // Loss reported but nothing NACKed and resent for two seconds: no repair seen.
        for i in 52..75u64 {
            w.observe(t0 + Duration::from_millis(i * 100), counters(201, 0, 1));
        }
        assert_eq!(w.unrepaired_loss(0.1), 0.1);
    }
}

//! The delay-based rate controller (GCC's "AIMD rate control", draft-ietf-rmcat-gcc-02 §5.5)
//! and the link-capacity estimate it keeps from the rates acknowledged at each overuse.

use std::time::Duration;

use crate::Instant;

/// On overuse the rate goes to this fraction of the acknowledged (received) rate.
pub(super) const BETA: f64 = 0.85;

/// Multiplicative increase per second while the capacity is unknown.
const INCREASE_PER_SEC: f64 = 1.08;

/// Slowest additive increase near the known capacity, in bits per second per second.
const MIN_ADDITIVE_BPS_PER_SEC: f64 = 4_000.0;

/// Smoothing of the link-capacity estimate (WebRTC uses the same 0.05).
const CAPACITY_ALPHA: f64 = 0.05;

/// Share of a probe's measurement the rate may jump to.
const PROBE_SHARE: f64 = 0.95;

/// Additive increase stops at this fraction of the known capacity: near but below it, so the
/// rate settles without building a queue. Only a probe, or traffic that gets through at
/// more than the capacity, moves it higher.
const NEAR_CAPACITY: f64 = 0.95;

/// What the rate controller is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Keep the rate: the queue is draining, or a decrease just happened.
    Hold,
    /// Raise the rate.
    Increase,
}

/// Mean and normalised variance of the rates acknowledged when the queue started growing.
/// Near it the controller raises the rate additively; once the acknowledged rate leaves its
/// band the capacity is unknown again and increase is multiplicative.
#[derive(Debug, Clone, Copy, PartialEq)]
struct LinkCapacity {
    /// Estimate in bits per second.
    estimate: Option<f64>,
    /// Variance normalised by the estimate, in kbit/s.
    deviation_kbps: f64,
}

impl Default for LinkCapacity {
    fn default() -> Self {
        Self {
            estimate: None,
            deviation_kbps: 0.4,
        }
    }
}

impl LinkCapacity {
    fn on_overuse(&mut self, acked_bps: f64) {
        let sample = acked_bps / 1000.0;
        let est = match self.estimate {
            None => sample,
            Some(e) => (1.0 - CAPACITY_ALPHA) * e / 1000.0 + CAPACITY_ALPHA * sample,
        };
        let error = est - sample;
        self.deviation_kbps = ((1.0 - CAPACITY_ALPHA) * self.deviation_kbps
            + CAPACITY_ALPHA * error * error / est.max(1.0))
        .clamp(0.4, 2.5);
        self.estimate = Some(est * 1000.0);
    }

    fn spread_bps(&self, est: f64) -> f64 {
        3.0 * (est / 1000.0 * self.deviation_kbps).sqrt() * 1000.0
    }

    fn upper_bound(&self) -> Option<f64> {
        self.estimate.map(|e| e + self.spread_bps(e))
    }

    fn lower_bound(&self) -> Option<f64> {
        self.estimate.map(|e| e - self.spread_bps(e))
    }
}

/// Additive-increase, multiplicative-decrease on the delay signal, with the decrease taken
/// from what the path actually delivered rather than from the previous target.
#[derive(Debug, Clone)]
pub(super) struct AimdRate {
    rate: f64,
    state: State,
    capacity: LinkCapacity,
    last_decrease: Option<Instant>,
    last_overuse: Option<Instant>,
    /// The capacity sample of the first decrease in the current overuse episode.
    episode_sample: Option<f64>,
}

/// Within one overuse episode, a further decrease needs the measured rate to fall below this
/// fraction of the episode's first sample; smaller differences are measurement noise, and
/// taking the minimum of noisy samples would ratchet the rate down.
const EPISODE_DROP: f64 = 0.9;

impl AimdRate {
    pub(super) fn new(start_bps: f64) -> Self {
        Self {
            rate: start_bps,
            state: State::Increase,
            capacity: LinkCapacity::default(),
            last_decrease: None,
            last_overuse: None,
            episode_sample: None,
        }
    }

    /// The delay-based rate, in bits per second.
    pub(super) fn rate(&self) -> f64 {
        self.rate
    }

    /// When overuse was last signalled.
    pub(super) fn last_overuse(&self) -> Option<Instant> {
        self.last_overuse
    }

    /// The link capacity estimate, if the last overuse episodes gave one.
    pub(super) fn capacity(&self) -> Option<f64> {
        self.capacity.estimate
    }

    /// Fast start: the rate rises to `bps` if that is higher (no overuse has been seen yet).
    pub(super) fn raise_to(&mut self, bps: f64) {
        if self.last_overuse.is_none() {
            self.rate = self.rate.max(bps);
        }
    }

    /// Fast start ends before the path showed a queue, on a measured link rate: the rate
    /// becomes `bps` and `link_bps` the capacity, which the rate then rises to within 95 %
    /// of (as after an overuse) rather than multiplicatively.
    pub(super) fn settle(&mut self, bps: f64, link_bps: f64) {
        self.capacity.on_overuse(link_bps);
        self.rate = bps;
        self.state = State::Hold;
    }

    /// Clamps the rate into `[min, max]`.
    pub(super) fn clamp(&mut self, min: f64, max: f64) {
        self.rate = self.rate.clamp(min, max);
    }

    /// A probe measured the path at `bps`: the rate rises to 95 % of it if that is higher.
    /// A `saturated` probe (the path delivered less than the burst's rate) measured the
    /// capacity itself, which becomes a capacity sample; one that got through whole, above
    /// the known capacity, replaces it.
    pub(super) fn on_probe(&mut self, bps: f64, saturated: bool) {
        let above = self.capacity.upper_bound().is_some_and(|u| bps > u);
        let below = saturated && self.capacity.lower_bound().is_some_and(|l| bps < l);
        if above || below {
            self.capacity = LinkCapacity::default();
        }
        // A probe that got through whole shows the path takes at least `bps`; keep that as
        // the capacity rather than none, so the rate does not climb multiplicatively past it
        // on the strength of one short (and, with jitter, noisy) burst. The next probe, soon
        // after one that found room, looks further.
        if saturated || above {
            self.capacity.on_overuse(bps);
        }
        let rate = PROBE_SHARE * bps;
        if rate > self.rate {
            self.rate = rate;
            self.state = State::Hold;
        }
    }

    /// The queue is growing. The rate becomes β × the acknowledged rate (what got through the
    /// bottleneck over the last short window, i.e. its capacity while it is saturated). The
    /// decrease is taken from that measurement, not from the previous rate, so the repeated
    /// overuse signals of one episode (packets sent before the cut keep arriving late for a
    /// while) do not compound; unless `queue_grew`: the queue kept growing past where the last
    /// cut left it, so that cut was still above the link (its sample held deliveries from
    /// before the link got slower), and the next one, an RTT + 100 ms later, takes β × the
    /// acknowledged rate again.
    pub(super) fn on_overuse(
        &mut self,
        now: Instant,
        acked: Option<f64>,
        rtt: Duration,
        queue_grew: bool,
    ) {
        self.last_overuse = Some(now);
        self.state = State::Hold;
        let recent = self
            .last_decrease
            .is_some_and(|t| now.saturating_duration_since(t) < rtt + Duration::from_millis(100));
        if recent {
            return;
        }
        if let (Some(a), Some(first)) = (acked, self.episode_sample) {
            if a > EPISODE_DROP * first && !queue_grew {
                return;
            }
        }
        let new = match acked {
            Some(a) => {
                self.episode_sample = Some(a);
                // Far below the known capacity: the path changed, start afresh.
                if self.capacity.lower_bound().is_some_and(|l| a < l) {
                    self.capacity = LinkCapacity::default();
                }
                self.capacity.on_overuse(a);
                let mut new = BETA * a;
                if new > self.rate {
                    // The window still holds arrivals from before the queue formed.
                    if let Some(c) = self.capacity.estimate {
                        new = BETA * c;
                    }
                }
                new
            }
            None => BETA * self.rate,
        };
        if new < self.rate {
            self.rate = new;
            self.last_decrease = Some(now);
        }
    }

    /// The queue grows, but our own probe burst just put it there: hold, without a decrease
    /// (the burst is over and its queue drains by itself).
    pub(super) fn on_probe_overuse(&mut self, now: Instant) {
        self.last_overuse = Some(now);
        self.state = State::Hold;
    }

    /// The queue is draining: hold the rate until it is empty.
    pub(super) fn on_underuse(&mut self) {
        self.state = State::Hold;
        self.episode_sample = None;
    }

    /// The queue is stable. After a hold, start increasing: additively up to 95 % of the known
    /// link capacity (about one packet per response time), multiplicatively when it is
    /// unknown; never beyond 1.5 × the acknowledged rate + 10 kbps (without lowering a rate that
    /// is already above either limit, as when the application sends less than it may or a
    /// probe found more).
    pub(super) fn on_normal(&mut self, dt: f64, acked: Option<f64>, rtt: Duration) {
        self.episode_sample = None;
        if let (Some(a), Some(upper)) = (acked, self.capacity.upper_bound()) {
            if a > upper {
                self.capacity = LinkCapacity::default();
            }
        }
        if self.state == State::Hold {
            self.state = State::Increase;
            return;
        }
        let (increased, near_cap) = if let Some(c) = self.capacity.estimate {
            let response = (rtt + Duration::from_millis(100)).as_secs_f64();
            let bits_per_frame = self.rate / 30.0;
            let packets = (bits_per_frame / (1200.0 * 8.0)).ceil().max(1.0);
            let per_sec = (bits_per_frame / packets / response).max(MIN_ADDITIVE_BPS_PER_SEC);
            (self.rate + per_sec * dt, NEAR_CAPACITY * c)
        } else {
            (self.rate * INCREASE_PER_SEC.powf(dt), f64::MAX)
        };
        let limit = acked.map_or(f64::MAX, |a| 1.5 * a + 10_000.0).min(near_cap);
        self.rate = increased.min(self.rate.max(limit));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: Duration = Duration::from_millis(40);

    #[test]
    fn overuse_goes_to_beta_times_acked_once_per_episode() {
        let t0 = Instant::now();
        let mut r = AimdRate::new(1_000_000.0);
        r.on_overuse(t0, Some(150_000.0), RTT, false);
        assert_eq!(r.rate(), BETA * 150_000.0);
        // Overuse again 50 ms later, with a lower sample: no second cut within an RTT.
        r.on_overuse(t0 + Duration::from_millis(50), Some(100_000.0), RTT, false);
        assert_eq!(r.rate(), BETA * 150_000.0);
        // Later in the same episode, samples a little off (noise): the rate stays, it does not
        // ratchet down or compound.
        for (i, s) in [150_000.0, 146_000.0, 141_000.0].into_iter().enumerate() {
            r.on_overuse(
                t0 + Duration::from_millis(500 * (i as u64 + 1)),
                Some(s),
                RTT,
                false,
            );
            assert_eq!(r.rate(), BETA * 150_000.0);
        }
        assert_eq!(r.capacity(), Some(150_000.0));
        // A real further drop in the same episode is followed.
        r.on_overuse(t0 + Duration::from_secs(3), Some(100_000.0), RTT, false);
        assert_eq!(r.rate(), BETA * 100_000.0);
    }

    #[test]
    fn a_queue_still_growing_cuts_again_within_the_episode() {
        // The first sample held deliveries at the old rate (358 kbps on a 300 kbps link): the
        // cut stays above the link. With the queue still growing an RTT + 100 ms later, the
        // next overuse cuts to β × what arrives now, though that is within 10 % of the first.
        let t0 = Instant::now();
        let mut r = AimdRate::new(2_000_000.0);
        r.on_overuse(t0, Some(358_000.0), RTT, false);
        assert_eq!(r.rate(), BETA * 358_000.0);
        let later = t0 + Duration::from_millis(200);
        r.on_overuse(later, Some(330_000.0), RTT, false);
        assert_eq!(
            r.rate(),
            BETA * 358_000.0,
            "no growth: the episode's cut holds"
        );
        r.on_overuse(later, Some(330_000.0), RTT, true);
        assert_eq!(r.rate(), BETA * 330_000.0);
    }

    #[test]
    fn hold_then_additive_increase_near_capacity() {
        let t0 = Instant::now();
        let mut r = AimdRate::new(1_000_000.0);
        r.on_overuse(t0, Some(150_000.0), RTT, false);
        let cut = r.rate();
        r.on_underuse();
        r.on_normal(0.1, Some(150_000.0), RTT); // leaves the hold
        assert_eq!(r.rate(), cut);
        for _ in 0..10 {
            r.on_normal(0.1, Some(150_000.0), RTT);
        }
        // Additive: well under 8 %/s multiplicative would give, and above the cut.
        let gained = r.rate() - cut;
        assert!(gained > 4_000.0 && gained < 40_000.0, "{gained}");
        // It settles near but below the capacity.
        for _ in 0..100 {
            r.on_normal(0.1, Some(150_000.0), RTT);
        }
        assert_eq!(r.rate(), NEAR_CAPACITY * 150_000.0);
    }

    #[test]
    fn app_limited_does_not_lower_the_rate() {
        let mut r = AimdRate::new(300_000.0);
        r.on_normal(0.1, Some(50_000.0), RTT);
        r.on_normal(1.0, Some(50_000.0), RTT);
        assert_eq!(r.rate(), 300_000.0);
    }

    #[test]
    fn capacity_resets_when_throughput_leaves_its_band() {
        let t0 = Instant::now();
        let mut r = AimdRate::new(1_000_000.0);
        r.on_overuse(t0, Some(150_000.0), RTT, false);
        r.on_normal(0.1, Some(600_000.0), RTT);
        assert_eq!(r.capacity(), None);
        // A probe that got through whole far above the capacity replaces it, and lifts the
        // rate.
        r.on_overuse(t0 + Duration::from_secs(1), Some(150_000.0), RTT, false);
        r.on_probe(900_000.0, false);
        assert_eq!(r.capacity(), Some(900_000.0));
        assert_eq!(r.rate(), PROBE_SHARE * 900_000.0);
        // A saturated probe measured the capacity.
        r.on_probe(1_000_000.0, true);
        assert_eq!(r.capacity(), Some(1_000_000.0));
        // A sample far below: the capacity restarts from it.
        r.on_overuse(t0 + Duration::from_secs(2), Some(1_000_000.0), RTT, false);
        r.on_normal(0.1, Some(1_000_000.0), RTT);
        r.on_overuse(t0 + Duration::from_secs(3), Some(300_000.0), RTT, false);
        assert_eq!(r.capacity(), Some(300_000.0));
    }
}

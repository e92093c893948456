//! When each received picture is shown: a render-time scheduler for video (sans-IO).
//!
//! A picture that is complete (decodable, or decoded) is not shown the moment it is: it gets a
//! render time, its capture time mapped to the local clock plus a target delay, and waits for
//! it. So a repair that takes a round trip or two no longer shows as a frozen picture followed
//! by a burst: pictures keep their spacing, later by the delay the repairs need.
//!
//! - The capture time is the picture's RTP timestamp (90 kHz), mapped through the lowest
//!   transit seen (arrival minus capture) over the last [`TRANSIT_WINDOW`]: the picture that
//!   crossed the path fastest defines "on time".
//! - Each picture's *lateness* is its transit beyond that lowest one: the path's queueing and
//!   jitter, the sender's pacing of a large frame, and above all the repairs (a NACK and its
//!   retransmission, one round trip; a second round when one of them was lost), including
//!   the wait of the pictures decoded after a repaired one.
//! - The target delay is the [`LATENESS_QUANTILE`] of the lateness over the last
//!   [`LATENESS_WINDOW`] less [`TOLERANCE`] (a picture that much behind its render time still
//!   leaves an interval under the webrtc-stats freeze rule's `mean + 150 ms`, and on a clean
//!   path keyframes and pacing stay under it, so the delay stays at zero there), capped at
//!   [`MAX_DELAY`]. It rises at once with the late pictures and falls by [`FALL_PER_SECOND`]
//!   once they left the window, so a calm stretch between repairs does not drop it just
//!   before the next one. A quantile and not the largest: the few pictures later still (a
//!   third repair round, a stall of the process) set the delay for seconds when the largest
//!   did (136–411 ms median glass to glass at 10 % loss, against 65–68 ms without the
//!   scheduler), for no fewer freezes: those left were pictures never sent or given up
//!   (docs/benchmarks.md, issue 14's tenth round).
//! - While the path shows loss, the target is at least what one repair needs
//!   ([`VideoPlayout::set_repair_room`]: a round trip for the NACK and its retransmission,
//!   which the session knows) plus a picture interval (a picture's last packet lost is
//!   noticed only when the next picture's first arrives), less [`TOLERANCE`]. The lateness
//!   window learns this only from repairs already late, so without it the call's first
//!   repaired picture stopped the picture for 160–240 ms (traced in most calls at 10 %
//!   loss). That floor rises by at most [`FLOOR_STEP`] a picture: the pictures before the
//!   first repair are spaced a little wider, not stopped.
//! - A picture that comes after its render time is shown at once (and raises the delay);
//!   order is never changed: a picture is never shown before the one before it.
//!
//! The driver pushes pictures in decode order with [`VideoPlayout::push`], takes those due with
//! [`VideoPlayout::poll`], and wakes at [`VideoPlayout::poll_timeout`].

use std::collections::VecDeque;
use std::time::Duration;

use tracing::trace;

use crate::time::Instant;
use crate::wire::TsUnwrapper;

/// The RTP clock rate of video.
const VIDEO_CLOCK_HZ: f64 = 90_000.0;
/// How far back the lowest transit is looked for. Long enough that a run of repaired or
/// queued pictures does not become the new "on time"; a path whose delay rose for longer than
/// this (a new route) is then on time again.
pub const TRANSIT_WINDOW: Duration = Duration::from_secs(20);
/// How far back the lateness sets the target delay.
pub const LATENESS_WINDOW: Duration = Duration::from_secs(10);
/// Which quantile of the window's lateness the target delay covers (less [`TOLERANCE`]).
pub const LATENESS_QUANTILE: f64 = 0.98;
/// Lateness beyond its render time a picture may have without a freeze: its interval to the
/// picture before stays under `mean + 150 ms` (webrtc-stats), with a margin for the driver's
/// wake-ups.
pub const TOLERANCE: Duration = Duration::from_millis(50);
/// Most delay the scheduler adds: beyond it, a late picture is better shown late than every
/// picture held for it.
pub const MAX_DELAY: Duration = Duration::from_millis(400);
/// How fast the target delay falls once no picture in [`LATENESS_WINDOW`] needs it: pictures
/// then come a twentieth quicker than they were captured (31.7 ms apart instead of 33.3),
/// which no one sees.
pub const FALL_PER_SECOND: f64 = 0.05;

/// Most the repair floor rises per picture pushed (see
/// [`VideoPlayout::set_repair_room`]): pictures come at most this much further apart than
/// they were captured while it builds (43 ms instead of 33 at 30 fps; 77 instead of 67 at
/// 15), never in one step.
pub const FLOOR_STEP: Duration = Duration::from_millis(10);
/// Longest picture interval the repair floor counts (a slower stream is a paused one, or
/// its first pictures).
const MAX_INTERVAL: f64 = 0.2;

/// Lateness beyond which a picture restarts the timing (see [`VideoPlayout::push`]): far over
/// any repair (the receiver gives a gap up after at most four times its limit) and over
/// [`MAX_DELAY`].
pub const RESTART_AFTER: Duration = Duration::from_secs(3);

/// A picture waiting for its render time.
#[derive(Debug)]
struct Held<T> {
    render: Instant,
    item: T,
}

/// A render-time scheduler for one received video stream. See the [module docs](self).
#[derive(Debug)]
pub struct VideoPlayout<T> {
    held: VecDeque<Held<T>>,
    /// Extends the pictures' RTP timestamps past their wrap.
    timestamps: TsUnwrapper,
    /// The local instant transits are counted from (the first push).
    origin: Option<Instant>,
    /// (arrival, transit in seconds), increasing transits: the window's minimum is the front.
    transits: VecDeque<(Instant, f64)>,
    /// (arrival, lateness) of the pictures in the window, oldest first.
    lateness: VecDeque<(Instant, Duration)>,
    /// Scratch space for the quantile.
    sorted: Vec<Duration>,
    target: Duration,
    /// Added to every render time, to show pictures in step with the sound.
    sync_delay: Duration,
    /// What one repair takes while the path shows loss (zero while it does not).
    repair_room: Duration,
    /// The floor of the target from the repair room, as far as it has risen.
    floor: Duration,
    /// Smoothed interval between pictures' capture times, in seconds.
    interval: Option<f64>,
    /// The last picture's capture time, in seconds of its RTP clock.
    last_capture: Option<f64>,
    /// When the target last changed (for its slow fall).
    updated: Option<Instant>,
    /// The render time of the last picture pushed (render times never go back).
    last_render: Option<Instant>,
    stats: PlayoutStats,
}

/// Counters of a [`VideoPlayout`].
#[derive(Debug, Default, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct PlayoutStats {
    /// Pictures pushed.
    pub pictures: u64,
    /// Pictures that came after their render time (shown at once).
    pub late: u64,
    /// Total time pictures were held for their render time, in seconds.
    pub total_held: f64,
    /// Largest target delay so far.
    pub max_target: Duration,
}

impl<T> Default for VideoPlayout<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> VideoPlayout<T> {
    /// An empty scheduler with no delay.
    pub fn new() -> Self {
        Self {
            held: VecDeque::new(),
            timestamps: TsUnwrapper::default(),
            origin: None,
            transits: VecDeque::new(),
            lateness: VecDeque::new(),
            sorted: Vec::new(),
            target: Duration::ZERO,
            sync_delay: Duration::ZERO,
            repair_room: Duration::ZERO,
            floor: Duration::ZERO,
            interval: None,
            last_capture: None,
            updated: None,
            last_render: None,
            stats: PlayoutStats::default(),
        }
    }

    /// A picture became complete at `now`, with RTP timestamp `rtp_timestamp`. Pictures are
    /// pushed in the order they are to be shown (decode order). A picture more than
    /// [`RESTART_AFTER`] behind the fastest one of the window starts the timing over (a
    /// restarted stream must not leave every later picture "late").
    pub fn push(&mut self, now: Instant, rtp_timestamp: u32, item: T) {
        let origin = *self.origin.get_or_insert(now);
        let capture = self.timestamps.unwrap(rtp_timestamp) as f64 / VIDEO_CLOCK_HZ;
        let transit = now.saturating_duration_since(origin).as_secs_f64() - capture;

        // A picture this far behind the fastest is no repair: the sender's clock or the path
        // changed (a restarted stream, a new route). Its timing starts over from here.
        if self
            .transits
            .front()
            .is_some_and(|&(_, t)| transit - t > RESTART_AFTER.as_secs_f64())
        {
            self.transits.clear();
            self.lateness.clear();
        }
        // The lowest transit of the window, this picture's included.
        while self.transits.back().is_some_and(|&(_, t)| t >= transit) {
            self.transits.pop_back();
        }
        self.transits.push_back((now, transit));
        while self
            .transits
            .front()
            .is_some_and(|&(t, _)| now.saturating_duration_since(t) > TRANSIT_WINDOW)
        {
            self.transits.pop_front();
        }
        let lowest = self.transits.front().map_or(transit, |&(_, t)| t);
        let late = Duration::from_secs_f64((transit - lowest).max(0.0));

        self.lateness.push_back((now, late));
        self.update_interval(capture);
        self.update_floor();
        self.update_target(now);

        // On time: its capture mapped through the lowest transit, plus the target delay.
        let on_time = now
            .checked_sub(late)
            .map_or(now, |t| t + self.target + self.sync_delay);
        let render = self.last_render.map_or(on_time, |r| on_time.max(r));
        if render < now {
            self.stats.late += 1;
        }
        let render = render.max(now);
        self.last_render = Some(render);
        self.stats.pictures += 1;
        self.stats.total_held += render.saturating_duration_since(now).as_secs_f64();
        trace!(
            rtp_timestamp,
            late_ms = late.as_secs_f64() * 1e3,
            target_ms = self.target.as_secs_f64() * 1e3,
            hold_ms = render.saturating_duration_since(now).as_secs_f64() * 1e3,
            "video picture scheduled"
        );
        self.held.push_back(Held { render, item });
    }

    /// The next picture due at `now`, with its render time; pictures come out in the order
    /// they were pushed.
    pub fn poll(&mut self, now: Instant) -> Option<(Instant, T)> {
        if self.held.front().is_some_and(|h| h.render <= now) {
            self.held.pop_front().map(|h| (h.render, h.item))
        } else {
            None
        }
    }

    /// When the next picture is due, if one is held.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.held.front().map(|h| h.render)
    }

    /// The delay added now beyond the lowest transit (the sync delay not included).
    pub fn target_delay(&self) -> Duration {
        self.target
    }

    /// Delay added to the render times of the pictures pushed from now on, to show them in
    /// step with the call's sound ([`crate::sync::LipSync`]). A smaller one than before shows
    /// the next pictures sooner, never before the ones already scheduled.
    pub fn set_sync_delay(&mut self, delay: Duration) {
        self.sync_delay = delay;
    }

    /// What one repair of a lost packet takes now: the NACK's round trip and the wait for a
    /// repeat of it, while the path shows loss; zero while it does not. The target delay is
    /// held at least this plus a picture interval, less [`TOLERANCE`], rising
    /// [`FLOOR_STEP`] a picture (see the [module docs](self)).
    ///
    /// ```
    /// # use std::time::{Duration, Instant};
    /// # use hush_media::video::VideoPlayout;
    /// let mut playout = VideoPlayout::new();
    /// playout.set_repair_room(Duration::from_millis(90));
    /// let t0 = Instant::now();
    /// for n in 0..30u32 {
    ///     playout.push(t0 + Duration::from_millis(33) * n, n * 3000, n);
    /// }
    /// // 90 ms + 33 ms - 50 ms: a repaired picture is no freeze.
    /// assert!(playout.target_delay() >= Duration::from_millis(72));
    /// ```
    pub fn set_repair_room(&mut self, room: Duration) {
        self.repair_room = room;
    }

    /// Pictures held now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The counters.
    pub fn stats(&self) -> PlayoutStats {
        self.stats
    }

    /// Follows the interval between pictures' capture times.
    fn update_interval(&mut self, capture: f64) {
        if let Some(last) = self.last_capture {
            let d = capture - last;
            if d > 0.0 && d <= MAX_INTERVAL {
                let i = self.interval.map_or(d, |i| i + (d - i) / 8.0);
                self.interval = Some(i);
            }
        }
        self.last_capture = Some(capture);
    }

    /// Moves the repair floor towards what the repair room asks for: up by at most
    /// [`FLOOR_STEP`] a picture, down at once (the target itself falls slowly).
    fn update_floor(&mut self) {
        let wanted = if self.repair_room.is_zero() {
            Duration::ZERO
        } else {
            let interval = Duration::from_secs_f64(self.interval.unwrap_or(0.0));
            (self.repair_room + interval)
                .saturating_sub(TOLERANCE)
                .min(MAX_DELAY)
        };
        self.floor = wanted.min(self.floor + FLOOR_STEP);
    }

    /// Updates the target delay from the window's lateness at `now`.
    fn update_target(&mut self, now: Instant) {
        while self
            .lateness
            .front()
            .is_some_and(|&(t, _)| now.saturating_duration_since(t) > LATENESS_WINDOW)
        {
            self.lateness.pop_front();
        }
        self.sorted.clear();
        self.sorted.extend(self.lateness.iter().map(|&(_, l)| l));
        let covered = if self.sorted.is_empty() {
            Duration::ZERO
        } else {
            let at = ((self.sorted.len() as f64 * LATENESS_QUANTILE) as usize)
                .min(self.sorted.len() - 1);
            *self.sorted.select_nth_unstable(at).1
        };
        let wanted = covered
            .saturating_sub(TOLERANCE)
            .max(self.floor)
            .min(MAX_DELAY);
        let since = self
            .updated
            .map_or(Duration::ZERO, |u| now.saturating_duration_since(u));
        if wanted >= self.target {
            self.target = wanted;
        } else {
            let fall = since.mul_f64(FALL_PER_SECOND);
            self.target = self.target.saturating_sub(fall).max(wanted);
        }
        self.updated = Some(now);
        self.stats.max_target = self.stats.max_target.max(self.target);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: Duration = Duration::from_micros(33_333);
    const TICKS: u32 = 3000;

    /// Pictures `n` (RTP timestamp `n * 3000` from `ts0`) pushed as they arrive, and taken
    /// when due as (n, shown at).
    struct Run {
        p: VideoPlayout<u32>,
        t0: Instant,
        ts0: u32,
        last: Instant,
        shown: Vec<(u32, Instant)>,
    }

    impl Run {
        fn new(ts0: u32) -> Self {
            let t0 = Instant::now();
            Self {
                p: VideoPlayout::new(),
                t0,
                ts0,
                last: t0,
                shown: Vec::new(),
            }
        }

        /// Runs the scheduler's clock to `until`, waking at each deadline.
        fn run_to(&mut self, until: Instant) {
            while let Some(at) = self.p.poll_timeout().filter(|&at| at <= until) {
                while let Some((render, n)) = self.p.poll(at) {
                    assert!(render <= at);
                    self.shown.push((n, at));
                }
            }
        }

        /// Picture `n` arrives `transit` after its capture (or, in decode order, with the one
        /// before it if that came later).
        fn arrive(&mut self, n: u32, transit: Duration) {
            let at = (self.t0 + FRAME * n + transit).max(self.last);
            self.last = at;
            self.run_to(at);
            self.p.push(at, self.ts0.wrapping_add(n * TICKS), n);
            self.run_to(at);
        }

        fn finish(&mut self) {
            self.run_to(self.t0 + Duration::from_secs(3600));
        }

        /// Longest interval between two pictures shown.
        fn longest_interval(&self) -> Duration {
            self.shown
                .windows(2)
                .map(|w| w[1].1.saturating_duration_since(w[0].1))
                .max()
                .unwrap_or_default()
        }
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// On a clean path (20 ms transit, a few ms of jitter, a keyframe paced out 40 ms late
    /// now and then) nothing is held: each picture is shown the moment it is complete.
    #[test]
    fn a_clean_path_adds_no_delay() {
        let mut r = Run::new(1234);
        for n in 0..300 {
            let jitter = ms(u64::from(n * 7 % 5));
            let keyframe = if n % 90 == 45 { ms(40) } else { Duration::ZERO };
            r.arrive(n, ms(20) + jitter + keyframe);
            assert_eq!(r.p.held(), 0, "picture {n} held");
        }
        assert_eq!(r.p.target_delay(), Duration::ZERO);
        assert_eq!(r.shown.len(), 300);
        assert_eq!(r.p.stats().total_held, 0.0);
    }

    /// A repair that needs a second round (the picture and the two behind it, which wait
    /// for it to be decoded, come 250 ms late) is a freeze the first time; the delay then
    /// rises, and the same repair 2 s later leaves no interval over `mean + 150 ms`, with the
    /// pictures in order.
    #[test]
    fn a_second_round_repair_is_covered_once_seen() {
        let mut r = Run::new(0);
        let repaired = |n: u32| match n % 60 {
            // 250 ms late, the next two complete behind it (decode order).
            30 => Some(ms(250)),
            31 => Some(ms(250) - FRAME),
            32 => Some(ms(250) - FRAME * 2),
            _ => None,
        };
        for n in 0..240 {
            r.arrive(n, ms(20) + repaired(n).unwrap_or_default());
        }
        r.finish();
        assert_eq!(r.shown.len(), 240);
        assert!(r.shown.windows(2).all(|w| w[0].0 + 1 == w[1].0), "in order");
        let first_repair: Vec<_> = r.shown.iter().filter(|s| s.0 < 40).copied().collect();
        let after: Vec<_> = r.shown.iter().filter(|s| s.0 >= 40).copied().collect();
        let longest = |v: &[(u32, Instant)]| {
            v.windows(2)
                .map(|w| w[1].1.saturating_duration_since(w[0].1))
                .max()
                .unwrap_or_default()
        };
        assert!(
            longest(&first_repair) >= ms(250),
            "the first one is seen late"
        );
        // No freeze: an interval over max(3 × mean, mean + 150 ms) with a mean of 33 ms.
        assert!(
            longest(&after) <= FRAME + ms(100),
            "later repairs hidden: longest interval {:?}",
            longest(&after)
        );
        // The delay is what the repairs need less the tolerance, no more.
        let target = r.p.target_delay();
        assert!(target >= ms(150) && target <= ms(200), "{target:?}");
        assert!(r.p.stats().max_target <= ms(250) - TOLERANCE + ms(1));
    }

    /// Once the path shows loss (the session's repair room), the first repaired picture is
    /// no freeze: at 15 fps a picture whose last packet was lost comes 180 ms late (noticed
    /// with the next picture, then a round trip and a repeated NACK). Without the floor its
    /// interval was 247 ms, over the webrtc-stats rule's 217; the floor builds up in steps
    /// of at most [`FLOOR_STEP`] a picture, so no picture before it waits longer.
    #[test]
    fn the_first_repair_is_covered_once_loss_shows() {
        const FRAME15: Duration = Duration::from_micros(66_667);
        let mut p = VideoPlayout::new();
        p.set_repair_room(ms(90));
        let t0 = Instant::now();
        let mut shown: Vec<Instant> = Vec::new();
        let mut last = t0;
        let mut floor = Duration::ZERO;
        for n in 0..40u32 {
            if n == 20 {
                floor = p.target_delay();
            }
            let late = if n == 20 { ms(180) } else { Duration::ZERO };
            let at = (t0 + FRAME15 * n + ms(20) + late).max(last);
            last = at;
            while let Some(due) = p.poll_timeout().filter(|&d| d <= at) {
                while p.poll(due).is_some() {
                    shown.push(due);
                }
            }
            p.push(at, n * 2 * TICKS, n);
            while p.poll(at).is_some() {
                shown.push(at);
            }
        }
        while let Some(due) = p.poll_timeout() {
            while p.poll(due).is_some() {
                shown.push(due);
            }
        }
        let intervals: Vec<Duration> = shown.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(intervals.len(), 39);
        for (n, d) in intervals[..19].iter().enumerate() {
            assert!(*d <= FRAME15 + FLOOR_STEP + ms(1), "interval {n}: {d:?}");
        }
        let longest = intervals.iter().max().copied().unwrap_or_default();
        assert!(
            longest < FRAME15 + ms(150),
            "the repaired picture froze: {longest:?}"
        );
        // Before the repair: 90 ms + 67 ms - 50 ms.
        assert!(floor >= ms(105) && floor <= ms(108), "{floor:?}");
    }

    /// The delay never goes over [`MAX_DELAY`] (pictures later still are shown at once), and
    /// once the late pictures left the window it falls slowly, never in a step.
    #[test]
    fn the_delay_is_capped_and_falls_slowly() {
        let mut r = Run::new(u32::MAX - 100 * TICKS);
        for n in 0..30 {
            r.arrive(n, ms(20));
        }
        // A stall: ten pictures a second late.
        for n in 30..40 {
            r.arrive(n, ms(1020));
        }
        assert_eq!(r.p.target_delay(), MAX_DELAY);
        assert!(r.p.stats().late >= 1);
        let stalled = r.last;
        // Pictures after it, on time, wait the capped delay (the timestamps wrapped meanwhile).
        let mut targets = Vec::new();
        for n in 40..40 + 30 * 20 {
            r.arrive(n, ms(20));
            targets.push((r.last, r.p.target_delay()));
        }
        r.finish();
        for &(at, target) in &targets {
            if at < stalled + LATENESS_WINDOW - ms(500) {
                assert_eq!(target, MAX_DELAY);
            }
        }
        for w in targets.windows(2) {
            let (a, b) = (w[0].1, w[1].1);
            assert!(b <= a);
            assert!(a - b <= FRAME.mul_f64(FALL_PER_SECOND) + ms(1), "{w:?}");
        }
        assert!(
            targets.last().unwrap().1 < MAX_DELAY,
            "falls after the window"
        );
        assert!(r.shown.windows(2).all(|w| w[0].0 + 1 == w[1].0), "in order");
        assert!(r.longest_interval() >= ms(600), "the stall was seen");
    }

    /// A stream whose timestamps jump back (the sender restarted it) does not leave every
    /// later picture late: the timing starts over and the delay comes back down at once.
    #[test]
    fn a_restarted_stream_starts_the_timing_over() {
        let mut p = VideoPlayout::new();
        let t0 = Instant::now();
        for n in 0..30u32 {
            p.push(t0 + FRAME * n + ms(20), 900_000 + n * TICKS, n);
        }
        // Timestamps back by ten seconds' worth: pictures look 10 s late.
        for n in 30..60u32 {
            let at = t0 + FRAME * n + ms(20);
            p.push(at, n * TICKS, n);
            assert_eq!(p.target_delay(), Duration::ZERO, "picture {n}");
            while p.poll(at).is_some() {}
            assert_eq!(p.held(), 0);
        }
    }
}

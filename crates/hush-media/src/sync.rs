//! Lip sync: sound and picture captured together are played together (sans-IO).
//!
//! A receiver plays audio behind a jitter buffer sized for the repairs audio needs, and shows
//! video behind a render-time scheduler sized for the repairs video needs
//! ([`crate::video::playout`]). The two delays differ: at 10 % loss on a 40 ms path the audio
//! waits 150 ms (two retransmission rounds) and the picture 65–106 ms, so the picture ran
//! 44–86 ms ahead of the sound in virtual time and 62–121 ms in real calls — near what
//! viewers notice (ITU-R BT.1359: sound after the picture from about 125 ms, sound before it
//! from 45 ms). [`LipSync`] measures the difference and holds the earlier stream back by it,
//! as libwebrtc's stream synchronization does.
//!
//! - **A common clock.** Both streams of a sender are stamped by its own clocks; its RTCP sender
//!   reports tie each stream's RTP timestamps to one wall clock (NTP time, RFC 3550 §6.4.1).
//!   [`SenderClock`] maps a timestamp to that clock's seconds.
//! - **The skew.** Each played audio frame gives the audio's latency (local time of playing
//!   minus the sender's time of the frame; the two clocks' offset is unknown but the same for
//!   both streams), each shown picture the video's; a picture's skew is its latency minus that
//!   of the audio playing at the time. Positive: the picture trails the sound.
//! - **The correction.** Every [`UPDATE_INTERVAL`] the median skew of the pictures shown since,
//!   less the sync delays in place, is what the streams differ by on their own. Beyond
//!   [`TOLERANCE`] the earlier stream is held back by all of it (the later one never waits
//!   less than its repairs need), moving at most [`MAX_STEP`] an update so the audio stretches
//!   and the pictures slow down unnoticed, and at most [`MAX_SYNC_DELAY`] for the pictures,
//!   [`MAX_AUDIO_SYNC_DELAY`] for the sound (it is what the conversation waits for). Without both
//!   streams flowing (camera off, muted) the delays go back to zero at the same pace.

use std::time::Duration;

use crate::time::Instant;

/// How often the sync delays are recomputed.
pub const UPDATE_INTERVAL: Duration = Duration::from_secs(1);
/// Skew left alone: well under what viewers notice either way (ITU-R BT.1359: about 45 ms of
/// sound before the picture, 125 ms after it).
pub const TOLERANCE: Duration = Duration::from_millis(30);
/// Most a sync delay moves in one update: the audio stretches by at most two and a half
/// frames a second, a picture is shown at most 50 ms later than its predecessor's spacing
/// (under the webrtc-stats freeze rule's `mean + 150 ms`).
pub const MAX_STEP: Duration = Duration::from_millis(50);
/// Most delay added to the video for sync.
pub const MAX_SYNC_DELAY: Duration = Duration::from_millis(500);
/// Most delay added to the audio for sync: the sound is what the conversation waits for, and
/// one-way delays over 150–200 ms make people talk over each other (ITU-T G.114); a picture
/// further behind than this stays behind.
pub const MAX_AUDIO_SYNC_DELAY: Duration = Duration::from_millis(200);
/// Pictures measured in an interval before it counts.
const MIN_SAMPLES: usize = 5;
/// An audio latency older than this is not the audio playing now (muted, stalled).
const AUDIO_STALE: Duration = Duration::from_millis(200);
/// A skew beyond this is no path's: a clock not yet reported again (a sender's audio
/// timestamps stand still while it is muted, and its report after unmuting moves them on).
/// Such an interval changes nothing.
const IMPLAUSIBLE_SKEW: Duration = Duration::from_secs(2);

/// Seconds from the NTP era to the given NTP time (the 64-bit fixed-point format).
fn ntp_secs(ntp: u64) -> f64 {
    (ntp >> 32) as f64 + (ntp & 0xffff_ffff) as f64 / 4_294_967_296.0
}

/// One stream's RTP clock tied to its sender's wall clock, from an RTCP sender report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderClock {
    /// The report's NTP time.
    pub ntp: u64,
    /// The stream's RTP timestamp at that time.
    pub rtp: u32,
    /// The stream's RTP clock rate (48,000 for Opus, 90,000 for video).
    pub clock_rate: u32,
}

impl SenderClock {
    /// The sender's wall-clock time, in seconds, of RTP timestamp `ts` (within 2^31 ticks of
    /// the report's: hours at video's rate).
    ///
    /// ```
    /// # use hush_media::sync::SenderClock;
    /// let c = SenderClock { ntp: 100 << 32, rtp: 4_294_967_000, clock_rate: 90_000 };
    /// // 90,000 ticks later, across the timestamp's wrap: one second later.
    /// assert_eq!(c.seconds(4_294_967_000u32.wrapping_add(90_000)), 101.0);
    /// ```
    pub fn seconds(&self, ts: u32) -> f64 {
        let ticks = ts.wrapping_sub(self.rtp) as i32;
        ntp_secs(self.ntp) + f64::from(ticks) / f64::from(self.clock_rate.max(1))
    }
}

/// Which stream of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncStream {
    /// The audio stream.
    Audio,
    /// The video stream.
    Video,
}

/// Figures of a [`LipSync`].
#[derive(Debug, Default, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct LipSyncStats {
    /// The median skew of the last interval with pictures and sound, in seconds, sync delays
    /// included: positive when the picture trails the sound. `None` before it was measured.
    pub skew: Option<f64>,
    /// Delay added to the audio now.
    pub audio_delay: Duration,
    /// Delay added to the video now.
    pub video_delay: Duration,
}

/// Holds the earlier of a call's received audio and video back so that both play in step.
/// See the [module docs](self).
///
/// ```
/// # use std::time::Duration;
/// # use hush_media::sync::{LipSync, SenderClock, SyncStream};
/// # use hush_media::Instant;
/// let t0 = Instant::now();
/// let mut sync = LipSync::new();
/// sync.set_sender_clock(SyncStream::Audio, SenderClock { ntp: 0, rtp: 0, clock_rate: 48_000 });
/// sync.set_sender_clock(SyncStream::Video, SenderClock { ntp: 0, rtp: 0, clock_rate: 90_000 });
/// // Sound plays 250 ms after capture, pictures show 100 ms after: hold the pictures.
/// for n in 0..100u32 {
///     let at = t0 + Duration::from_millis(20 * u64::from(n));
///     sync.audio_played(at, (n * 960).wrapping_sub(250 * 48));
///     sync.video_shown(at, (n * 1800).wrapping_sub(100 * 90));
///     sync.handle_timeout(at);
/// }
/// assert!(sync.video_delay() > Duration::ZERO);
/// assert_eq!(sync.audio_delay(), Duration::ZERO);
/// ```
#[derive(Debug, Default)]
pub struct LipSync {
    audio_clock: Option<SenderClock>,
    video_clock: Option<SenderClock>,
    /// The local instant latencies are counted from.
    origin: Option<Instant>,
    /// When audio last played, and its latency then (seconds, unknown offset included).
    last_audio: Option<(Instant, f64)>,
    /// Skews of the pictures shown since the last update.
    skews: Vec<f64>,
    audio_delay: Duration,
    video_delay: Duration,
    /// Whether the last update corrected a skew (it keeps doing so down to half the
    /// tolerance, so a skew near it does not switch the correction on and off).
    correcting: bool,
    next_update: Option<Instant>,
    stats: LipSyncStats,
}

impl LipSync {
    /// No clocks known yet, no delay.
    pub fn new() -> Self {
        Self::default()
    }

    /// The sender's clock of `stream`, from its latest sender report.
    pub fn set_sender_clock(&mut self, stream: SyncStream, clock: SenderClock) {
        match stream {
            SyncStream::Audio => self.audio_clock = Some(clock),
            SyncStream::Video => self.video_clock = Some(clock),
        }
    }

    fn local(&mut self, now: Instant) -> f64 {
        let origin = *self.origin.get_or_insert(now);
        now.saturating_duration_since(origin).as_secs_f64()
    }

    /// The audio frame with RTP timestamp `ts` is played at `now` (decoded, or concealed in
    /// its place).
    pub fn audio_played(&mut self, now: Instant, ts: u32) {
        let Some(clock) = self.audio_clock else {
            return;
        };
        let latency = self.local(now) - clock.seconds(ts);
        self.last_audio = Some((now, latency));
    }

    /// The picture with RTP timestamp `ts` is shown at `now`.
    pub fn video_shown(&mut self, now: Instant, ts: u32) {
        let (Some(clock), Some((played, audio))) = (self.video_clock, self.last_audio) else {
            return;
        };
        if now.saturating_duration_since(played) > AUDIO_STALE {
            return;
        }
        let latency = self.local(now) - clock.seconds(ts);
        self.skews.push(latency - audio);
    }

    /// Runs the periodic update when due (once both senders' clocks are known).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.audio_clock.is_none() || self.video_clock.is_none() {
            return;
        }
        match self.next_update {
            None => self.next_update = Some(now + UPDATE_INTERVAL),
            Some(at) if now >= at => {
                self.update();
                self.next_update = Some(now + UPDATE_INTERVAL);
            }
            Some(_) => {}
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) should run next: `None` until both
    /// senders' clocks are known (an audio-only call never needs it).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_update
    }

    /// Delay to add to the audio's playout now.
    pub fn audio_delay(&self) -> Duration {
        self.audio_delay
    }

    /// Delay to add to the pictures' render times now.
    pub fn video_delay(&self) -> Duration {
        self.video_delay
    }

    /// The figures.
    pub fn stats(&self) -> LipSyncStats {
        self.stats
    }

    fn update(&mut self) {
        let median = (self.skews.len() >= MIN_SAMPLES).then(|| {
            let mid = self.skews.len() / 2;
            *self.skews.select_nth_unstable_by(mid, f64::total_cmp).1
        });
        self.skews.clear();
        if median.is_some_and(|m| m.abs() > IMPLAUSIBLE_SKEW.as_secs_f64()) {
            return;
        }
        let (audio, video) = if let Some(skew) = median {
            self.stats.skew = Some(skew);
            // What the streams differ by without the sync delays.
            let own = skew - self.video_delay.as_secs_f64() + self.audio_delay.as_secs_f64();
            let bound = if self.correcting {
                TOLERANCE / 2
            } else {
                TOLERANCE
            };
            self.correcting = own.abs() > bound.as_secs_f64();
            let hold = Duration::from_secs_f64(own.abs());
            match (self.correcting, own > 0.0) {
                (false, _) => (Duration::ZERO, Duration::ZERO),
                // The picture trails: hold the sound.
                (true, true) => (hold.min(MAX_AUDIO_SYNC_DELAY), Duration::ZERO),
                (true, false) => (Duration::ZERO, hold.min(MAX_SYNC_DELAY)),
            }
        } else {
            // Not both streams flowing: no sync to keep.
            self.correcting = false;
            (Duration::ZERO, Duration::ZERO)
        };
        self.audio_delay = step_towards(self.audio_delay, audio);
        self.video_delay = step_towards(self.video_delay, video);
        self.stats.audio_delay = self.audio_delay;
        self.stats.video_delay = self.video_delay;
    }
}

/// `from` moved towards `to` by at most [`MAX_STEP`].
fn step_towards(from: Duration, to: Duration) -> Duration {
    if to > from {
        (from + MAX_STEP).min(to)
    } else {
        from.saturating_sub(MAX_STEP).max(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUDIO: SenderClock = SenderClock {
        ntp: 7 << 32,
        rtp: 1_000,
        clock_rate: 48_000,
    };
    const VIDEO: SenderClock = SenderClock {
        ntp: 7 << 32,
        rtp: 4_294_000_000,
        clock_rate: 90_000,
    };

    /// Streams whose own latencies are `audio_ms` and `video_ms` (the sync delays added on
    /// top, as the driver applies them) for `seconds`; returns the sync's delays.
    fn run(sync: &mut LipSync, t0: Instant, from: u64, seconds: u64, audio_ms: u64, video_ms: u64) {
        for n in from * 50..(from + seconds) * 50 {
            let at = t0 + Duration::from_millis(20 * n);
            // The frame captured `latency` before now.
            let audio = Duration::from_millis(audio_ms) + sync.audio_delay();
            let video = Duration::from_millis(video_ms) + sync.video_delay();
            let captured = |latency: Duration| 20 * n as i64 - latency.as_millis() as i64;
            let ats = AUDIO.rtp.wrapping_add((captured(audio) * 48) as u32);
            sync.audio_played(at, ats);
            let vts = VIDEO.rtp.wrapping_add((captured(video) * 90) as u32);
            sync.video_shown(at, vts);
            sync.handle_timeout(at);
        }
    }

    fn synced() -> (LipSync, Instant) {
        let mut sync = LipSync::new();
        sync.set_sender_clock(SyncStream::Audio, AUDIO);
        sync.set_sender_clock(SyncStream::Video, VIDEO);
        (sync, Instant::now())
    }

    #[test]
    fn a_picture_ahead_of_the_sound_is_held_by_the_difference_in_steps() {
        let (mut s, t0) = synced();
        run(&mut s, t0, 0, 2, 270, 100);
        // One update so far: one step.
        assert_eq!(s.video_delay(), MAX_STEP);
        assert_eq!(s.audio_delay(), Duration::ZERO);
        run(&mut s, t0, 2, 6, 270, 100);
        let held = s.video_delay().as_millis();
        assert!((168..=172).contains(&held), "video held {held} ms");
        assert_eq!(s.audio_delay(), Duration::ZERO);
        let skew = s.stats().skew.expect("measured");
        assert!(skew.abs() < 0.005, "skew {skew}");
    }

    #[test]
    fn sound_ahead_of_the_picture_is_held_and_small_skews_are_left_alone() {
        let (mut s, t0) = synced();
        run(&mut s, t0, 0, 8, 40, 200);
        let held = s.audio_delay().as_millis();
        assert!((158..=162).contains(&held), "audio held {held} ms");
        assert_eq!(s.video_delay(), Duration::ZERO);

        let (mut s, t0) = synced();
        run(&mut s, t0, 0, 8, 40, 21);
        assert_eq!(
            (s.audio_delay(), s.video_delay()),
            (Duration::ZERO, Duration::ZERO)
        );
        assert!(s.stats().skew.is_some_and(|k| (k + 0.019).abs() < 0.002));
    }

    #[test]
    fn the_delay_goes_back_when_the_streams_part_or_the_skew_goes() {
        let (mut s, t0) = synced();
        run(&mut s, t0, 0, 8, 270, 100);
        assert!(s.video_delay() > Duration::from_millis(150));
        // The loss stops: audio's repairs room goes, the picture is held no more.
        run(&mut s, t0, 8, 8, 100, 100);
        assert_eq!(s.video_delay(), Duration::ZERO);
        // Skew again, then the sound stops (muted): back to zero, a step a second.
        run(&mut s, t0, 16, 8, 270, 100);
        let before = s.video_delay();
        assert!(before > Duration::from_millis(150));
        // (The first update still has the last second with sound.)
        for n in 0..4u64 {
            let at = t0 + Duration::from_secs(24 + n) + Duration::from_millis(500);
            s.video_shown(at, 0);
            s.handle_timeout(at);
        }
        assert_eq!(s.video_delay(), before - MAX_STEP * 3);
    }

    #[test]
    fn the_sound_is_held_less_than_the_picture_can_be() {
        let (mut s, t0) = synced();
        run(&mut s, t0, 0, 12, 40, 640);
        assert_eq!(s.audio_delay(), MAX_AUDIO_SYNC_DELAY);
        let (mut s, t0) = synced();
        run(&mut s, t0, 0, 12, 640, 40);
        assert_eq!(s.video_delay(), MAX_SYNC_DELAY);
    }

    #[test]
    fn an_implausible_skew_changes_nothing() {
        let (mut s, t0) = synced();
        run(&mut s, t0, 0, 8, 270, 100);
        let held = s.video_delay();
        assert!(held > Duration::from_millis(150));
        // The sender's audio timestamps stood still for 5 s (muted) and its next report has
        // not come: the audio looks 5 s late for a second (measured by the update at 9 s).
        run(&mut s, t0, 8, 2, 5_270, 100);
        assert_eq!(s.video_delay(), held);
        assert_eq!(s.audio_delay(), Duration::ZERO);
    }

    #[test]
    fn nothing_is_done_without_both_senders_clocks() {
        let mut s = LipSync::new();
        let t0 = Instant::now();
        s.set_sender_clock(SyncStream::Audio, AUDIO);
        run(&mut s, t0, 0, 8, 270, 100);
        assert_eq!(s.video_delay(), Duration::ZERO);
        assert_eq!(s.stats().skew, None);
    }
}

//! Dominant (active) speaker detection over RFC 6464 audio levels, with hysteresis.
//!
//! Time is cut into buckets (100 ms by default). A packet's *activity* is how far its level is
//! above the noise floor: `max(0, floor − level)` with levels in −dBov (0 loudest, 127 silent)
//! and the floor at 70 by default (quieter than −70 dBov counts as silence). A bucket holds the
//! mean activity of its packets, a participant's *score* is the sum over the window (the last 15
//! buckets, 1.5 s), and a participant is *speaking* when at least 6 of its last 10 buckets were
//! active (600 ms of speech in the last second).
//!
//! The rules, applied at each [`evaluate`](SpeakerDetector::evaluate):
//! - with no dominant speaker yet, the speaking participant with the highest score becomes it;
//! - otherwise a *challenger* — the speaking participant with the highest score other than the
//!   dominant one — takes over only if its score exceeds `switch_ratio` (1.5) times the dominant
//!   one's and it has stayed the leading challenger over that margin for `hold` (500 ms).
//!
//! A cough (a burst shorter than 600 ms) never makes anyone speaking, so it never switches;
//! two people talking over each other at similar levels do not flap, since neither exceeds the
//! other by the ratio; a pause of the dominant speaker keeps them dominant until someone else
//! really talks. Time comes only from the caller (`now`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Parameters of the detector.
#[derive(Debug, Clone, PartialEq)]
pub struct SpeakerConfig {
    /// Length of one bucket. Default 100 ms.
    pub bucket: Duration,
    /// Buckets summed into the score. Default 15.
    pub window_buckets: usize,
    /// Recent buckets looked at to decide whether someone is speaking. Default 10.
    pub recent_buckets: usize,
    /// Active buckets among the recent ones needed to be speaking. Default 6.
    pub min_active_buckets: usize,
    /// Levels at or above this (−dBov) count as silence. Default 70.
    pub noise_floor: u8,
    /// How much higher a challenger's score must be. Default 1.5.
    pub switch_ratio: f32,
    /// How long a challenger must lead by that ratio before taking over. Default 500 ms.
    pub hold: Duration,
}

impl Default for SpeakerConfig {
    fn default() -> Self {
        Self {
            bucket: Duration::from_millis(100),
            window_buckets: 15,
            recent_buckets: 10,
            min_active_buckets: 6,
            noise_floor: 70,
            switch_ratio: 1.5,
            hold: Duration::from_millis(500),
        }
    }
}

#[derive(Debug)]
struct Entry<K> {
    key: K,
    /// (bucket number, activity sum, packets), oldest first, within the window.
    buckets: VecDeque<(u64, u32, u32)>,
}

impl<K> Entry<K> {
    fn prune(&mut self, current: u64, window: usize) {
        while let Some(&(n, _, _)) = self.buckets.front() {
            if current.saturating_sub(n) < window as u64 {
                break;
            }
            self.buckets.pop_front();
        }
    }

    fn score(&self, current: u64, window: usize) -> f32 {
        self.buckets
            .iter()
            .filter(|(n, _, _)| current.saturating_sub(*n) < window as u64 && *n <= current)
            .map(|(_, sum, count)| *sum as f32 / (*count).max(1) as f32)
            .sum()
    }

    fn active_recent(&self, current: u64, recent: usize) -> usize {
        self.buckets
            .iter()
            .filter(|(n, sum, _)| {
                current.saturating_sub(*n) < recent as u64 && *n <= current && *sum > 0
            })
            .count()
    }
}

/// The detector, over participants identified by `K`.
#[derive(Debug)]
pub struct SpeakerDetector<K> {
    config: SpeakerConfig,
    start: Instant,
    entries: Vec<Entry<K>>,
    dominant: Option<K>,
    challenger: Option<(K, Instant)>,
}

impl<K: Copy + Eq> SpeakerDetector<K> {
    /// A detector whose buckets count from `start`.
    pub fn new(config: SpeakerConfig, start: Instant) -> Self {
        Self {
            config,
            start,
            entries: Vec::new(),
            dominant: None,
            challenger: None,
        }
    }

    /// The dominant speaker, if any.
    pub fn dominant(&self) -> Option<K> {
        self.dominant
    }

    fn bucket_of(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.start).as_nanos();
        let len = self.config.bucket.as_nanos().max(1);
        u64::try_from(since / len).unwrap_or(u64::MAX)
    }

    /// Records one audio packet's level (−dBov, 0..=127) from `key` at `now`.
    pub fn record(&mut self, now: Instant, key: K, level: u8) {
        let bucket = self.bucket_of(now);
        let activity = u32::from(self.config.noise_floor.saturating_sub(level.min(127)));
        let window = self.config.window_buckets.max(self.config.recent_buckets);
        let entry = match self.entries.iter().position(|e| e.key == key) {
            Some(i) => &mut self.entries[i],
            None => {
                self.entries.push(Entry {
                    key,
                    buckets: VecDeque::new(),
                });
                let last = self.entries.len() - 1;
                &mut self.entries[last]
            }
        };
        entry.prune(bucket, window);
        match entry.buckets.back_mut() {
            Some((n, sum, count)) if *n == bucket => {
                *sum = sum.saturating_add(activity);
                *count = count.saturating_add(1);
            }
            // A packet stamped before the newest bucket (time went backwards) is ignored.
            Some((n, _, _)) if *n > bucket => {}
            _ => entry.buckets.push_back((bucket, activity, 1)),
        }
    }

    /// Forgets `key` (it left). If it was dominant, there is no dominant speaker until someone
    /// speaks.
    pub fn remove(&mut self, key: K) {
        self.entries.retain(|e| e.key != key);
        if self.dominant == Some(key) {
            self.dominant = None;
        }
        if self.challenger.is_some_and(|(k, _)| k == key) {
            self.challenger = None;
        }
    }

    /// Whether `key` is speaking at `now` (active in at least `min_active_buckets` of the last
    /// `recent_buckets`; a cough is not).
    pub fn is_speaking(&self, now: Instant, key: K) -> bool {
        let current = self.bucket_of(now);
        self.entries.iter().any(|e| {
            e.key == key
                && e.active_recent(current, self.config.recent_buckets)
                    >= self.config.min_active_buckets
        })
    }

    /// The current score of `key` (0 if unknown); used to rank audio for loudest-N forwarding.
    pub fn score(&self, now: Instant, key: K) -> f32 {
        let current = self.bucket_of(now);
        self.entries
            .iter()
            .find(|e| e.key == key)
            .map_or(0.0, |e| e.score(current, self.config.window_buckets))
    }

    /// Applies the rules at `now`. Returns the new dominant speaker when it changed.
    pub fn evaluate(&mut self, now: Instant) -> Option<K> {
        let current = self.bucket_of(now);
        let c = &self.config;
        let best = self
            .entries
            .iter()
            .filter(|e| Some(e.key) != self.dominant)
            .filter(|e| e.active_recent(current, c.recent_buckets) >= c.min_active_buckets)
            .map(|e| (e.key, e.score(current, c.window_buckets)))
            .fold(None::<(K, f32)>, |acc, (k, s)| match acc {
                Some((_, best)) if best >= s => acc,
                _ => Some((k, s)),
            });
        let Some(dominant) = self.dominant else {
            let (k, _) = best?;
            self.dominant = Some(k);
            self.challenger = None;
            return Some(k);
        };
        let dominant_score = self
            .entries
            .iter()
            .find(|e| e.key == dominant)
            .map_or(0.0, |e| e.score(current, c.window_buckets));
        let Some((k, _)) = best.filter(|(_, s)| *s > dominant_score * c.switch_ratio) else {
            self.challenger = None;
            return None;
        };
        match self.challenger {
            Some((ck, since)) if ck == k => {
                if now.saturating_duration_since(since) >= c.hold {
                    self.dominant = Some(k);
                    self.challenger = None;
                    return Some(k);
                }
            }
            _ => self.challenger = Some((k, now)),
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: Duration = Duration::from_millis(20);
    const TICK: Duration = Duration::from_millis(100);

    /// Drives the detector over `ms` milliseconds: every 20 ms each participant sends the level
    /// `levels(t, who)` (or nothing for `None`); evaluation every 100 ms. Returns the changes.
    fn run(
        d: &mut SpeakerDetector<u8>,
        start: Instant,
        from_ms: u64,
        ms: u64,
        who: &[u8],
        levels: impl Fn(u64, u8) -> Option<u8>,
    ) -> Vec<(u64, u8)> {
        let mut changes = Vec::new();
        let mut t = from_ms;
        while t < from_ms + ms {
            let now = start + Duration::from_millis(t);
            for &p in who {
                if let Some(l) = levels(t, p) {
                    d.record(now, p, l);
                }
            }
            if t.is_multiple_of(TICK.as_millis() as u64) {
                if let Some(k) = d.evaluate(now) {
                    changes.push((t, k));
                }
            }
            t += FRAME.as_millis() as u64;
        }
        changes
    }

    #[test]
    fn first_speaker_becomes_dominant_once_really_speaking() {
        let start = Instant::now();
        let mut d = SpeakerDetector::new(SpeakerConfig::default(), start);
        let changes = run(&mut d, start, 0, 2000, &[1, 2], |_, p| {
            Some(if p == 1 { 30 } else { 127 })
        });
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].1, 1);
        // Not before 600 ms of speech.
        assert!(changes[0].0 >= 500, "{changes:?}");
    }

    #[test]
    fn a_cough_does_not_take_over() {
        let start = Instant::now();
        let mut d = SpeakerDetector::new(SpeakerConfig::default(), start);
        run(&mut d, start, 0, 2000, &[1, 2], |_, p| {
            Some(if p == 1 { 35 } else { 127 })
        });
        assert_eq!(d.dominant(), Some(1));
        // Participant 2 coughs, very loud, for 300 ms, while 1 keeps talking; then again while 1
        // pauses.
        let changes = run(&mut d, start, 2000, 4000, &[1, 2], |t, p| match p {
            2 if (2500..2800).contains(&t) || (4500..4800).contains(&t) => Some(0),
            2 => Some(127),
            _ if (4000..5500).contains(&t) => Some(127),
            _ => Some(35),
        });
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(d.dominant(), Some(1));
    }

    #[test]
    fn similar_voices_talking_over_each_other_do_not_flap() {
        let start = Instant::now();
        let mut d = SpeakerDetector::new(SpeakerConfig::default(), start);
        // Both talk the whole time with levels wobbling around -30 dBov, out of phase.
        let changes = run(&mut d, start, 0, 10_000, &[1, 2], |t, p| {
            let wobble = ((t / 200) % 2) as u8 * 8;
            Some(if p == 1 { 26 + wobble } else { 34 - wobble })
        });
        assert_eq!(changes.len(), 1, "{changes:?}");
    }

    #[test]
    fn a_real_new_speaker_takes_over_after_the_hold() {
        let start = Instant::now();
        let mut d = SpeakerDetector::new(SpeakerConfig::default(), start);
        run(&mut d, start, 0, 2000, &[1, 2], |_, p| {
            Some(if p == 1 { 30 } else { 127 })
        });
        // 1 falls silent, 2 starts talking at 2000 ms.
        let changes = run(&mut d, start, 2000, 3000, &[1, 2], |_, p| {
            Some(if p == 2 { 30 } else { 127 })
        });
        assert_eq!(changes.len(), 1, "{changes:?}");
        let (t, k) = changes[0];
        assert_eq!(k, 2);
        // Needs 600 ms of speech to count as speaking and then 500 ms of lead.
        assert!((2600..=3400).contains(&t), "switched at {t}");
    }

    #[test]
    fn removed_dominant_speaker_is_forgotten() {
        let start = Instant::now();
        let mut d = SpeakerDetector::new(SpeakerConfig::default(), start);
        run(&mut d, start, 0, 1500, &[1], |_, _| Some(20));
        assert_eq!(d.dominant(), Some(1));
        d.remove(1);
        assert_eq!(d.dominant(), None);
        assert_eq!(d.score(start + Duration::from_millis(1500), 1), 0.0);
    }
}

//! Which simulcast layers a group call participant sends: the uplink's layer policy.
//!
//! The SFU reports the arrival of every packet this participant sends (transport-wide
//! feedback, docs/sfu.md "Uplink congestion control"); hush-media's
//! [`CongestionController`](hush_media::cc::CongestionController) turns that into an estimate
//! of the uplink, and [`UplinkLayers`] decides from the estimate which layers go out:
//!
//! - the top layer sent stops when the estimate has stayed below what audio and every layer
//!   sent need (their measured rates) for [`DOWN_AFTER`]; then the next one, but not within
//!   [`MIN_CHANGE_GAP`] of the last change (the estimate settles once the queue the extra
//!   layer built has drained);
//! - a stopped layer comes back, lowest first, when the estimate has held at least
//!   [`UP_HEADROOM`] × what audio, the layers sent and that layer need for [`UP_HOLD`]; a layer
//!   that has to stop again within [`RETRY_WINDOW`] of its start doubles that hold for the
//!   next try (up to [`MAX_UP_HOLD`]), so a link that cannot carry it is not tried every few
//!   seconds;
//! - the lowest layer always goes (a picture, however small, beats none).
//!
//! A layer's rate is the one measured while it goes (smoothed, and at most
//! 1.25 × its configured rate, so that keyframes do not count as its rate); a stopped layer's,
//! the last one measured (its configured rate if it never went). Sans-IO: `now` and the estimate in, changes out.

use std::time::{Duration, Instant};

/// How long the estimate must stay below what the layers sent need before the top one stops.
pub const DOWN_AFTER: Duration = Duration::from_millis(250);
/// How long the estimate must hold above a stopped layer's need before it comes back (at
/// first: see [`RETRY_WINDOW`]).
pub const UP_HOLD: Duration = Duration::from_secs(2);
/// How far above a stopped layer's need the estimate must hold for it to come back.
pub const UP_HEADROOM: f64 = 1.4;
/// A layer that has to stop again (or makes the one below it stop) this soon after it came
/// back doubles the hold of its next start (up to [`MAX_UP_HOLD`]); one that stays on this
/// long resets it to [`UP_HOLD`].
pub const RETRY_WINDOW: Duration = Duration::from_secs(5);
/// The longest hold before a layer comes back.
pub const MAX_UP_HOLD: Duration = Duration::from_secs(16);
/// Least time between two changes.
pub const MIN_CHANGE_GAP: Duration = Duration::from_secs(1);
/// The window of the rate measured per stream.
const METER_WINDOW: Duration = Duration::from_secs(1);

/// A change of the layers sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerChange {
    /// The layer (0 the smallest).
    pub layer: u8,
    /// Whether it is sent from now on.
    pub sending: bool,
    /// The estimate that decided it, in bit/s.
    pub estimate_bps: u64,
    /// What audio and the layers sent before the change needed, in bit/s.
    pub need_bps: u64,
}

/// Bytes over a window, for one stream's rate.
#[derive(Debug, Clone, Default)]
struct Meter {
    start: Option<Instant>,
    bytes: u64,
    bps: Option<u64>,
}

impl Meter {
    fn add(&mut self, now: Instant, bytes: usize) {
        let start = *self.start.get_or_insert(now);
        self.bytes = self.bytes.saturating_add(bytes as u64);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= METER_WINDOW {
            let bps = self.bytes as f64 * 8.0 / elapsed.as_secs_f64();
            // Smoothed over a few windows: a keyframe makes one window's rate jump.
            let smoothed = self.bps.map_or(bps, |old| (old as f64 + bps) / 2.0);
            self.bps = Some(smoothed as u64);
            self.start = Some(now);
            self.bytes = 0;
        }
    }
}

/// One layer: its configured rate, its measured one, whether it goes.
#[derive(Debug, Clone)]
struct Layer {
    configured_bps: u64,
    meter: Meter,
    sending: bool,
    /// The hold before this layer's next start (`None`: [`UP_HOLD`]).
    hold: Option<Duration>,
}

/// A layer's measured rate counts at most this × its configured one: its encoder aims at the
/// configured rate, and what it sends above it (keyframes: the first one, and those asked for
/// at layer switches) passes.
const MAX_OVERSHOOT: f64 = 1.25;

impl Layer {
    /// What the layer needs: its measured rate (an encoder with little to say sends far less
    /// than configured, and the estimate of an uplink that carries little stays near what it
    /// carries), up to [`MAX_OVERSHOOT`] × its configured rate.
    fn bps(&self) -> u64 {
        let cap = (self.configured_bps as f64 * MAX_OVERSHOOT) as u64;
        self.meter.bps.map_or(self.configured_bps, |m| m.min(cap))
    }
}

/// The layer policy of one participant's uplink (see the [module docs](self)).
#[derive(Debug, Clone, Default)]
pub struct UplinkLayers {
    layers: Vec<Layer>,
    audio: Meter,
    /// Since when the estimate has been below what the layers sent need.
    below_since: Option<Instant>,
    /// Since when the estimate has held above what the next stopped layer needs.
    above_since: Option<Instant>,
    last_change: Option<Instant>,
    /// The layer that last came back, and when (until it has stayed on for
    /// [`RETRY_WINDOW`]).
    last_start: Option<(usize, Instant)>,
    changes: u64,
}

impl UplinkLayers {
    /// Adds layer `layer` (0 the smallest) with its configured rate; every layer starts sent.
    pub fn add_layer(&mut self, layer: u8, configured_bps: u64) {
        let i = usize::from(layer);
        while self.layers.len() <= i {
            self.layers.push(Layer {
                configured_bps: 0,
                meter: Meter::default(),
                sending: true,
                hold: None,
            });
        }
        if let Some(l) = self.layers.get_mut(i) {
            l.configured_bps = configured_bps;
        }
    }

    /// Counts `bytes` (on the wire) sent on layer `layer`.
    pub fn on_layer_sent(&mut self, now: Instant, layer: u8, bytes: usize) {
        if let Some(l) = self.layers.get_mut(usize::from(layer)) {
            l.meter.add(now, bytes);
        }
    }

    /// Counts `bytes` (on the wire) of audio sent.
    pub fn on_audio_sent(&mut self, now: Instant, bytes: usize) {
        self.audio.add(now, bytes);
    }

    /// Whether layer `layer` goes out now (`true` for a layer never added).
    pub fn is_sending(&self, layer: u8) -> bool {
        self.layers
            .get(usize::from(layer))
            .is_none_or(|l| l.sending)
    }

    /// Which layers go out, lowest first.
    pub fn sending(&self) -> Vec<bool> {
        self.layers.iter().map(|l| l.sending).collect()
    }

    /// Changes made so far.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// What audio and layers `0..n` need, in bit/s.
    fn need(&self, n: usize) -> u64 {
        self.audio.bps.unwrap_or(0) + self.layers.iter().take(n).map(Layer::bps).sum::<u64>()
    }

    /// Layers sent: they are always `0..count` (layers stop from the top).
    fn count_sent(&self) -> usize {
        self.layers.iter().take_while(|l| l.sending).count()
    }

    /// Applies the rules to the estimate `estimate_bps` at `now`; returns the change made, if
    /// any (at most one per call).
    pub fn update(&mut self, now: Instant, estimate_bps: u64) -> Option<LayerChange> {
        if let Some((layer, t)) = self.last_start {
            if now.saturating_duration_since(t) >= RETRY_WINDOW {
                // The last layer that came back stayed.
                self.last_start = None;
                if let Some(l) = self.layers.get_mut(layer) {
                    l.hold = None;
                }
            }
        }
        let sent = self.count_sent();
        let need = self.need(sent);
        let settled = self
            .last_change
            .is_none_or(|t| now.saturating_duration_since(t) >= MIN_CHANGE_GAP);
        // Down: the top layer sent (never the lowest).
        if sent >= 2 && estimate_bps < need {
            let since = *self.below_since.get_or_insert(now);
            self.above_since = None;
            if settled && now.saturating_duration_since(since) >= DOWN_AFTER {
                return Some(self.change(now, sent - 1, false, estimate_bps, need));
            }
            return None;
        }
        self.below_since = None;
        // Up: the lowest stopped layer.
        if sent < self.layers.len() {
            let want = self.need(sent + 1) as f64 * UP_HEADROOM;
            if estimate_bps as f64 >= want {
                let since = *self.above_since.get_or_insert(now);
                let hold = self
                    .layers
                    .get(sent)
                    .and_then(|l| l.hold)
                    .unwrap_or(UP_HOLD);
                if settled && now.saturating_duration_since(since) >= hold {
                    return Some(self.change(now, sent, true, estimate_bps, need));
                }
            } else {
                self.above_since = None;
            }
        }
        None
    }

    fn change(
        &mut self,
        now: Instant,
        layer: usize,
        sending: bool,
        estimate_bps: u64,
        need_bps: u64,
    ) -> LayerChange {
        if let Some(l) = self.layers.get_mut(layer) {
            l.sending = sending;
            // A layer that comes back measures afresh.
            l.meter.start = None;
            l.meter.bytes = 0;
        }
        self.last_change = Some(now);
        if sending {
            self.last_start = Some((layer, now));
        } else if let Some((started, _)) = self.last_start.take() {
            // Stopped again too soon: that layer waits longer before its next try.
            if let Some(l) = self.layers.get_mut(started) {
                let hold = l.hold.unwrap_or(UP_HOLD);
                l.hold = Some((hold * 2).min(MAX_UP_HOLD));
            }
        }
        self.below_since = None;
        self.above_since = None;
        self.changes += 1;
        LayerChange {
            layer: u8::try_from(layer).unwrap_or(u8::MAX),
            sending,
            estimate_bps,
            need_bps,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three layers sending at 100, 300 and 800 kbit/s and 50 kbit/s of audio, measured.
    fn measured(t0: Instant) -> UplinkLayers {
        let mut u = UplinkLayers::default();
        for (l, bps) in [100_000u64, 300_000, 800_000].into_iter().enumerate() {
            u.add_layer(l as u8, bps);
        }
        for ms in (0..=1000).step_by(20) {
            let now = t0 + Duration::from_millis(ms);
            u.on_audio_sent(now, 125);
            u.on_layer_sent(now, 0, 250);
            u.on_layer_sent(now, 1, 750);
            u.on_layer_sent(now, 2, 2000);
        }
        u
    }

    #[test]
    fn the_top_layer_goes_first_then_the_middle_and_they_come_back_lowest_first() {
        let t0 = Instant::now();
        let mut u = measured(t0);
        let t = |ms: u64| t0 + Duration::from_millis(1000 + ms);
        // All three need ~1.25 Mbit/s: 1.3 keeps them.
        assert_eq!(u.update(t(0), 1_300_000), None);
        // 500 kbit/s: the top layer stops once the estimate has stayed low for 250 ms.
        assert_eq!(u.update(t(10), 500_000), None);
        assert_eq!(u.update(t(200), 500_000), None);
        let c = u.update(t(300), 500_000).expect("top stops");
        assert_eq!((c.layer, c.sending), (2, false));
        assert_eq!(u.sending(), vec![true, true, false]);
        // 300 kbit/s: the middle one too, but not within a second of the last change.
        assert_eq!(u.update(t(400), 300_000), None);
        assert_eq!(u.update(t(1200), 300_000), None);
        let c = u.update(t(1300), 300_000).expect("middle stops");
        assert_eq!((c.layer, c.sending), (1, false));
        // Never the lowest.
        for ms in (1400..5000).step_by(100) {
            assert_eq!(u.update(t(ms), 10_000), None);
        }
        assert!(u.is_sending(0));
        // Back up: the middle needs 1.4 × (100 + 300 + 50) kbit/s held for 2 s.
        assert_eq!(u.update(t(5000), 620_000), None);
        assert_eq!(u.update(t(8000), 620_000), None, "not enough headroom");
        assert_eq!(u.update(t(8100), 650_000), None);
        assert_eq!(u.update(t(9000), 400_000), None, "dipped: starts over");
        assert_eq!(u.update(t(9100), 650_000), None);
        assert_eq!(u.update(t(11_000), 650_000), None);
        let c = u.update(t(11_100), 650_000).expect("middle back");
        assert_eq!((c.layer, c.sending), (1, true));
        // It does not fit after all: stopped again within the retry window, so the next try
        // waits twice as long.
        assert_eq!(u.update(t(12_100), 300_000), None);
        let c = u.update(t(12_400), 300_000).expect("middle stops again");
        assert_eq!((c.layer, c.sending), (1, false));
        assert_eq!(u.update(t(12_500), 650_000), None);
        assert_eq!(u.update(t(14_600), 650_000), None, "hold doubled");
        let c = u.update(t(16_500), 650_000).expect("middle back");
        assert_eq!((c.layer, c.sending), (1, true));
        // It stays: the hold is back to 2 s for the top one, by its last measured rate.
        assert_eq!(u.update(t(21_500), 2_000_000), None);
        let c = u.update(t(23_500), 2_000_000).expect("top back");
        assert_eq!((c.layer, c.sending), (2, true));
        assert_eq!(u.sending(), vec![true, true, true]);
        assert_eq!(u.changes(), 6);
    }
}

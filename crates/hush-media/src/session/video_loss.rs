//! The peer's reports of our video stream's loss, for the retransmission reserve.

use std::time::Duration;

use crate::Instant;

/// A report block must cover at least this many of our video packets to count: one over a
/// paused (or just resumed) stream says nothing about the path.
const MIN_PACKETS: u64 = 20;

/// Reports older than this are stale (video paused, or reports lost): the caller falls back
/// to what the audio's reports say.
const STALE_AFTER: Duration = Duration::from_secs(2);

/// How far each counted report moves the smoothed fraction: an eighth. A report of a hundred
/// packets at 10 % loss reads 7–13 %; smoothed by a quarter, the reserve still moved the video
/// target by 18 % (over the encoder's 15 % restart threshold), by an eighth under 15 %.
const SMOOTHING: f64 = 0.125;

/// A report under this share of the smoothed loss is followed at once.
const CLEANER: f64 = 0.5;

/// The loss the peer reports on our video stream (RFC 3550 report blocks): the latest counted
/// report's fraction and a smoothed one.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct VideoLossReport {
    latest: f64,
    smoothed: f64,
    /// The highest sequence number (extended) of the last report block seen.
    highest_seq: Option<u32>,
    /// When the last counted report came.
    at: Option<Instant>,
}

impl VideoLossReport {
    /// A report block for our video stream: `fraction_lost` (of 256) over the packets up to
    /// `highest_seq` since the previous report.
    pub(crate) fn on_report(&mut self, now: Instant, fraction_lost: u8, highest_seq: u32) {
        let covered = self
            .highest_seq
            .map_or(0, |h| u64::from(highest_seq.wrapping_sub(h)));
        self.highest_seq = Some(highest_seq);
        // A report from further back (reordered) or one over a near-idle stream: not counted.
        if !(MIN_PACKETS..1 << 30).contains(&covered) {
            return;
        }
        let fraction = f64::from(fraction_lost) / 256.0;
        self.smoothed = if self.at.is_none() {
            fraction
        } else {
            self.smoothed + (fraction - self.smoothed) * SMOOTHING
        };
        self.latest = fraction;
        self.at = Some(now);
    }

    /// The loss to plan video retransmissions for at `now`: the smoothed fraction, or the
    /// latest report's when that is under half of it (after a burst the smoothed value lags
    /// by seconds; a report only a little cleaner is sampling noise: a hundred packets at
    /// 10 % loss read 7–13 %); `None` without a counted report in the last two seconds.
    pub(crate) fn loss(&self, now: Instant) -> Option<f64> {
        let at = self.at?;
        let loss = if self.latest < self.smoothed * CLEANER {
            self.latest
        } else {
            self.smoothed
        };
        (now.saturating_duration_since(at) <= STALE_AFTER).then_some(loss)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_reports_over_enough_packets_and_goes_stale() {
        let t0 = Instant::now();
        let ms = |m: u64| t0 + Duration::from_millis(m);
        let mut r = VideoLossReport::default();
        assert_eq!(r.loss(t0), None);
        // The first block only sets where the stream stands.
        r.on_report(ms(0), 128, 1_000);
        assert_eq!(r.loss(ms(0)), None);
        // 100 packets at 10 %.
        r.on_report(ms(500), 26, 1_100);
        assert!((r.loss(ms(500)).unwrap() - 26.0 / 256.0).abs() < 1e-9);
        // 5 packets (a paused stream): not counted.
        r.on_report(ms(1_000), 0, 1_105);
        assert!((r.loss(ms(1_000)).unwrap() - 26.0 / 256.0).abs() < 1e-9);
        // A little cleaner (8 % over 100 packets): noise, the smoothed value moves an eighth.
        r.on_report(ms(1_250), 20, 1_155);
        let smoothed = 26.0 / 256.0 * 0.875 + 20.0 / 256.0 * 0.125;
        assert!((r.loss(ms(1_250)).unwrap() - smoothed).abs() < 1e-9);
        // A clean report over 100 packets: followed at once.
        r.on_report(ms(1_500), 0, 1_255);
        assert_eq!(r.loss(ms(1_500)), Some(0.0));
        // A lossier one (50 %) moves the smoothed value an eighth of the way.
        r.on_report(ms(2_000), 128, 1_355);
        let expected = 0.875 * smoothed * 0.875 + 0.125 * 0.5;
        assert!((r.loss(ms(2_000)).unwrap() - expected).abs() < 1e-9);
        assert_eq!(r.loss(ms(4_001)), None, "stale");
    }
}

//! When an encoder that cannot change its rate in flight is restarted for a new target.
//!
//! OpenH264's safe API (the `openh264` crate) has no way to change a running encoder's
//! bitrate, so a new rate means a new encoder, and a new encoder begins with an IDR: a
//! picture several times the size of the others, which on a lossy path is the likeliest to
//! need a second repair round, and a quality dip while the new rate control settles. The
//! congestion controller's video target is not steady on a randomly lossy path (the
//! retransmissions it leaves room for come and go with each second's losses), so following
//! every 15 % move cost 7–10 keyframes in 15 s at 10 % loss (docs/benchmarks.md, issue 14).
//! [`RestartPolicy`] applies a drop of over 15 % at once (a slower link: the encoder must not
//! flood it, and what it sends over the target leaves less room for retransmissions), and a
//! rise only once the target has stayed over 15 % higher for 3 s: so a target that swings
//! settles the encoder at the low side of its swing instead of restarting it on every swing.

/// A target below this fraction of the running rate is applied (after [`DOWN_HOLD_S`]).
const DROP: f64 = 0.85;
/// A target above this multiple of the running rate is applied once it has stayed there for
/// [`UP_PERSIST_S`].
const RISE: f64 = 1.15;
/// Seconds of frames a rise must last to be applied.
const UP_PERSIST_S: f32 = 3.0;
/// A lower target waits at least this many seconds of frames after the last restart.
const DOWN_HOLD_S: f32 = 0.5;
/// A higher target waits at least this many seconds of frames after the last restart.
const UP_HOLD_S: f32 = 3.0;
/// A frame rate change of at least this fraction is applied (after the holds above).
const FPS_STEP: f32 = 0.1;

/// Which side of the running rate the wanted one has been on, and for how many frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    Below,
    Above(u32),
}

/// Decides, frame by frame, whether a wanted `(bitrate, frame rate)` is worth a restart of
/// an encoder running at another one. Sans-IO: time is counted in frames at the running
/// frame rate, as the encoder sees them.
#[derive(Debug, Clone, Default)]
pub(crate) struct RestartPolicy {
    out: Option<Out>,
}

impl RestartPolicy {
    /// Called once per frame before it is encoded: whether to restart the encoder running
    /// at `running` for `wanted` now. `frames_since_start` counts the frames the running
    /// encoder took so far.
    pub(crate) fn restart_now(
        &mut self,
        running: (u32, f32),
        wanted: (u32, f32),
        frames_since_start: u64,
    ) -> bool {
        let (cur_bps, cur_fps) = running;
        let (bps, fps) = wanted;
        let fps_lower = fps < cur_fps;
        let fps_moved = ((fps - cur_fps) / cur_fps).abs() >= FPS_STEP;
        let ratio = f64::from(bps) / f64::from(cur_bps.max(1));
        let frames_for = |s: f32| (s * cur_fps).max(1.0) as u64;
        let held = |s: f32| frames_since_start >= frames_for(s);
        self.out = match (self.out, ratio) {
            (_, r) if (DROP..=RISE).contains(&r) => None,
            (_, r) if r < DROP => Some(Out::Below),
            (Some(Out::Above(n)), _) => Some(Out::Above(n + 1)),
            _ => Some(Out::Above(1)),
        };
        let restart = if fps_moved {
            held(if fps_lower || ratio < 1.0 {
                DOWN_HOLD_S
            } else {
                UP_HOLD_S
            })
        } else {
            match self.out {
                None => false,
                Some(Out::Below) => held(DOWN_HOLD_S),
                Some(Out::Above(n)) => held(UP_HOLD_S) && u64::from(n) >= frames_for(UP_PERSIST_S),
            }
        };
        if restart {
            self.out = None;
        }
        restart
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `frames` frames wanting `wanted` to an encoder at `running`, `since` frames
    /// after its start; returns at which frame it would restart.
    fn first_restart(
        p: &mut RestartPolicy,
        running: (u32, f32),
        wanted: (u32, f32),
        since: u64,
        frames: u64,
    ) -> Option<u64> {
        (0..frames).find(|&i| p.restart_now(running, wanted, since + i))
    }

    #[test]
    fn small_moves_inside_the_band_never_restart() {
        let mut p = RestartPolicy::default();
        for i in 0..600 {
            let bps = if i % 20 < 10 { 1_750_000 } else { 2_250_000 };
            assert!(!p.restart_now((2_000_000, 30.0), (bps, 30.0), 100 + i));
        }
    }

    /// A target swinging 30 % up and down every half second (retransmissions coming and
    /// going): one restart down to the low side, none back up.
    #[test]
    fn a_swinging_target_settles_on_its_low_side() {
        let mut p = RestartPolicy::default();
        let mut running = (2_000_000, 30.0);
        let mut since = 100;
        let mut restarts = 0;
        for i in 0..600 {
            let bps = if i % 30 < 15 { 1_600_000 } else { 2_100_000 };
            if p.restart_now(running, (bps, 30.0), since) {
                running.0 = bps;
                since = 0;
                restarts += 1;
            } else {
                since += 1;
            }
        }
        assert_eq!((restarts, running.0), (1, 1_600_000));
    }

    #[test]
    fn a_drop_applies_at_once_after_the_hold() {
        let mut p = RestartPolicy::default();
        assert_eq!(
            first_restart(&mut p, (2_000_000, 30.0), (300_000, 30.0), 100, 10),
            Some(0)
        );
        // Right after a restart it waits 0.5 s of frames.
        let mut p = RestartPolicy::default();
        assert_eq!(
            first_restart(&mut p, (2_000_000, 30.0), (300_000, 30.0), 0, 30),
            Some(15)
        );
    }

    #[test]
    fn a_rise_applies_once_it_lasts_three_seconds() {
        let mut p = RestartPolicy::default();
        assert_eq!(
            first_restart(&mut p, (1_000_000, 30.0), (1_500_000, 30.0), 100, 200),
            Some(89)
        );
        // A dip back into the band starts the count again.
        let mut p = RestartPolicy::default();
        assert_eq!(
            first_restart(&mut p, (1_000_000, 30.0), (1_500_000, 30.0), 100, 60),
            None
        );
        assert!(!p.restart_now((1_000_000, 30.0), (1_100_000, 30.0), 160));
        assert_eq!(
            first_restart(&mut p, (1_000_000, 30.0), (1_500_000, 30.0), 161, 60),
            None
        );
    }

    #[test]
    fn a_frame_rate_step_applies_after_the_hold() {
        let mut p = RestartPolicy::default();
        assert_eq!(
            first_restart(&mut p, (500_000, 30.0), (500_000, 15.0), 0, 30),
            Some(15)
        );
        let mut p = RestartPolicy::default();
        assert_eq!(
            first_restart(&mut p, (500_000, 15.0), (500_000, 30.0), 0, 60),
            Some(45)
        );
    }
}

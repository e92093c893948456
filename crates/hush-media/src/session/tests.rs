use std::time::Duration;

use crate::sim::{CallConfig, CallSim, LossModel, SimConfig};
use crate::Instant;

fn lossy(loss: LossModel, one_way_ms: u64) -> CallConfig {
    let link = |seed| SimConfig {
        seed,
        delay: Duration::from_millis(one_way_ms),
        loss,
        ..SimConfig::default()
    };
    CallConfig {
        a_to_b: link(11),
        b_to_a: link(12),
        ..CallConfig::default()
    }
}

#[test]
fn clean_path_plays_every_frame() {
    let mut call = CallSim::new(lossy(LossModel::None, 20), Instant::now());
    call.run_until(Duration::from_secs(10));
    let m = call.metrics();
    assert_eq!(m.concealed + m.fec, 0, "{m:?}");
    assert!(m.played_original >= 490);
    let rtt = call.a.rtt().unwrap();
    assert!((rtt.as_secs_f64() - 0.040).abs() < 0.002, "{rtt:?}");
}

#[test]
fn ten_percent_loss_recovers_99_percent() {
    let mut call = CallSim::new(lossy(LossModel::Random(0.10), 20), Instant::now());
    call.run_until(Duration::from_secs(60));
    let m = call.metrics();
    assert!(
        m.played_fraction() >= 0.99,
        "{:.4} {m:?}",
        m.played_fraction()
    );
    assert!(m.played_rtx + m.played_red > 0);
}

#[test]
fn twenty_percent_loss_recovers_95_percent() {
    let mut call = CallSim::new(lossy(LossModel::Random(0.20), 20), Instant::now());
    call.run_until(Duration::from_secs(60));
    let m = call.metrics();
    assert!(m.played_fraction() >= 0.95, "{:.4}", m.played_fraction());
}

#[test]
fn stats_snapshot_reflects_loss() {
    let mut call = CallSim::new(lossy(LossModel::Random(0.10), 20), Instant::now());
    call.run_until(Duration::from_secs(20));
    let now = call.now();
    let s = call.b.stats(now);
    assert!((0.07..0.13).contains(&s.loss_before_recovery), "{s:?}");
    assert!(s.loss_after_recovery < 0.01, "{s:?}");
    assert!(s.nacks_sent > 0 && s.rtt.is_some());
    assert!(call.a.stats(now).retransmissions_sent > 0);
    assert!(s
        .to_prometheus("")
        .contains("hush_media_frames_played_total"));
}

#[test]
fn jitter_without_reorder_adds_at_most_one_and_a_half_p95() {
    let jitter = crate::sim::Jitter::Exponential(Duration::from_millis(20));
    let config = CallConfig {
        a_to_b: SimConfig {
            seed: 5,
            delay: Duration::from_millis(30),
            jitter,
            ..SimConfig::default()
        },
        ..CallConfig::default()
    };
    let mut call = CallSim::new(config, Instant::now());
    call.run_until(Duration::from_secs(60));
    let m = call.metrics();
    let ratio = m.added_delay_mean() / jitter.p95().as_secs_f64();
    assert!(ratio <= 1.5, "{ratio}");
}

#[test]
fn bandwidth_drop_and_recovery() {
    let cap = |bps| SimConfig {
        seed: 9,
        delay: Duration::from_millis(20),
        rate_bps: Some(bps),
        queue_bytes: 100_000,
        ..SimConfig::default()
    };
    let config = CallConfig {
        a_to_b: cap(1_000_000),
        video: true,
        ..CallConfig::default()
    };
    let mut call = CallSim::new(config, Instant::now());
    call.run_until(Duration::from_secs(20));
    call.ab.set_rate(Some(150_000));
    call.run_until(Duration::from_secs(40));
    call.ab.set_rate(Some(1_000_000));
    call.run_until(Duration::from_secs(60));
    let tl = &call.metrics().timeline;
    let between = |a: u64, b: u64| {
        tl.iter()
            .filter(move |s| s.0 >= Duration::from_secs(a) && s.0 < Duration::from_secs(b))
    };
    // Converges near 1 Mbps at the start.
    assert!(between(5, 20).all(|s| (700_000..=1_100_000).contains(&s.1)));
    // After the drop: the queue drains within 5 s and stays small; video pauses.
    // (Probe bursts still push single samples higher; most of the time it is under 100 ms.)
    let low = between(25, 40)
        .filter(|s| s.2 < Duration::from_millis(100))
        .count();
    assert!(low * 10 >= between(25, 40).count() * 8, "{low}");
    assert!(between(25, 40).all(|s| s.2 < Duration::from_millis(300)));
    assert!(between(25, 40).all(|s| s.1 <= 180_000 && s.3 == 0));
    // The estimate comes back up once the cap is lifted.
    assert!(
        between(50, 60).all(|s| s.1 >= 700_000),
        "{:?}",
        between(50, 60).next()
    );
}

#[test]
fn real_loss_makes_room_for_retransmissions() {
    let mut call = CallSim::new(lossy(LossModel::Random(0.10), 20), Instant::now());
    call.run_until(Duration::from_secs(10));
    let now = call.now();
    let s = call.b.stats(now);
    // RTT 40 ms + one frame + margin on top of a jitter-free path.
    assert!(s.playout_delay >= Duration::from_millis(60), "{s:?}");
}

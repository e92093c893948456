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

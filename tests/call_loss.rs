//! A call over a lossy send path. Alone in its test binary: test binaries run one after the
//! other, so no other call in this process competes for the CPU and blurs loss recovery with
//! scheduling delay.

mod common;

use common::{connect, converse, loopback_config, pair};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_percent_send_loss_still_plays_99_percent_of_frames() {
    let mut config = loopback_config();
    config.simulated_send_loss = 0.10;
    let (alice, bob, _net) = pair(config);
    let (call, answered) = connect(&alice, &bob).await;
    // 10 s both ways (500 frames each): long enough that the first loss, which reveals the
    // loss to the receiver, is a small share.
    let (heard_a, heard_b) = converse(&call, &answered, 500).await;
    let quality_a = call.stats().await.expect("stats").quality.expect("keys");
    let quality_b = answered
        .stats()
        .await
        .expect("stats")
        .quality
        .expect("keys");
    for (who, heard, quality) in [("alice", heard_a, &quality_a), ("bob", heard_b, &quality_b)] {
        let due = heard.playable() + heard.concealed;
        assert!(due >= 480, "{who} heard the stream: {heard:?}");
        let fraction = f64::from(heard.playable()) / f64::from(due);
        assert!(
            fraction >= 0.99,
            "{who}: {fraction:.4} playable, {heard:?}, {quality:?}"
        );
        assert!(
            quality.loss_before_recovery > 0.05,
            "{who}: the path really lost packets: {quality:?}"
        );
    }
    call.hangup().expect("hangup");
}

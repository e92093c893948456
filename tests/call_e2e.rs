//! Whole calls through the public API: Signal-sealed signaling (in memory), ICE over real UDP
//! sockets on loopback, SRTP, the media engine and Opus.

mod common;

use std::time::Duration;

use common::{loopback_config, pair, tone, wait_for};
use hush::machine::{EndReason, HangupReason};
use hush::{CallEvent, FrameSource};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_connects_carries_audio_and_hangs_up() {
    let (alice, bob, _net) = pair(loopback_config());
    let call = alice.call(bob.device_id()).await.expect("offer sent");
    let incoming = tokio::time::timeout(Duration::from_secs(5), bob.incoming())
        .await
        .expect("rings in time")
        .expect("client alive");
    assert_eq!(incoming.peer(), alice.device_id());
    wait_for(&call, 5, |e| *e == CallEvent::Ringing).await;
    let answered = incoming.accept().await.expect("accepted");
    wait_for(&call, 5, |e| matches!(e, CallEvent::Connected { .. })).await;
    wait_for(&answered, 5, |e| matches!(e, CallEvent::Connected { .. })).await;

    // One second of tone from Alice, paced like a microphone.
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    for n in 0..50 {
        ticker.tick().await;
        call.send_audio(&tone(n)).expect("call live");
    }
    let mut decoded = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while decoded < 40 {
        let frame = tokio::time::timeout_at(deadline, answered.recv_audio())
            .await
            .expect("audio in time")
            .expect("call live");
        assert_eq!(frame.pcm.len(), 960);
        if frame.source == FrameSource::Decoded {
            decoded += 1;
            let energy: f64 = frame.pcm.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / 960.0;
            assert!(energy > 1.0e5, "decoded tone has its energy: {energy}");
        }
    }
    let stats = answered.stats().await.expect("stats");
    assert_eq!(stats.media.srtp_failures, 0);
    assert_eq!(stats.path, Some(hush_net::CandidateKind::Host));
    let sent = call.stats().await.expect("stats");
    assert!(sent.media.frames_sent >= 50);
    // Both sides run the suite the callee chose from the caller's offer (hush prefers 256-bit).
    assert_eq!(stats.suite, "AEAD_AES_256_GCM");
    assert_eq!(sent.suite, stats.suite);

    // Both ends of the call hold keyed SRTP contexts (this is the only test in this binary).
    assert_eq!(hush::media_path::live_keyed_paths(), 2);

    call.hangup().expect("hangup");
    assert_eq!(
        wait_for(&answered, 5, |e| matches!(e, CallEvent::Ended(_))).await,
        CallEvent::Ended(EndReason::RemoteHangup(HangupReason::Normal))
    );
    assert_eq!(
        wait_for(&call, 5, |e| matches!(e, CallEvent::Ended(_))).await,
        CallEvent::Ended(EndReason::LocalHangup)
    );
    // Hangup destroys the keys: both media tasks dropped their SRTP contexts.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while hush::media_path::live_keyed_paths() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "call keys still alive after hangup"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

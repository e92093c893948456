//! A device that changes network mid-call.

mod common;

use common::{connect, converse, loopback_config, pair, wait_for};
use hush::CallEvent;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callee_network_change_is_survived_by_an_ice_restart() {
    let (alice, bob, _net) = pair(loopback_config());
    let (call, answered) = connect(&alice, &bob).await;
    let (before_a, before_b) = converse(&call, &answered, 25).await;
    assert!(before_a.playable() >= 20 && before_b.playable() >= 20);

    // Bob's device moves to a new network: fresh sockets (new ports), ICE restart, the new
    // credentials and candidates go to Alice over signaling. The call goes on.
    answered.network_changed().await.expect("new sockets bound");
    wait_for(&answered, 10, |e| {
        matches!(e, CallEvent::PathChanged { .. })
    })
    .await;
    wait_for(&call, 10, |e| matches!(e, CallEvent::PathChanged { .. })).await;

    let (after_a, after_b) = converse(&call, &answered, 50).await;
    assert!(
        after_a.playable() >= 45 && after_b.playable() >= 45,
        "media resumed on the new path: alice heard {after_a:?}, bob heard {after_b:?}"
    );
    let stats = answered.stats().await.expect("stats");
    assert_eq!(stats.media.srtp_failures, 0);
    assert!(
        !matches!(
            tokio::time::timeout(std::time::Duration::from_millis(100), call.next_event()).await,
            Ok(Some(CallEvent::Ended(_)))
        ),
        "the call did not end"
    );
    call.hangup().expect("hangup");
    common::ended(&answered, 5).await;
}

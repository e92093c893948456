//! Call-control behaviour through the public API: reject, busy, ring timeout, hangup from the
//! callee, glare, no media before accept, replayed answers.

mod common;

use std::time::Duration;

use common::{devices, ended, loopback_config, next_incoming, pair, tone, wait_for};
use hush::machine::{EndReason, HangupReason, Timeouts};
use hush::{CallEvent, Error};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_call_ends_on_both_sides() {
    let (alice, bob, _net) = pair(loopback_config());
    let call = alice.call(bob.device_id()).await.unwrap();
    next_incoming(&bob, 5).await.reject().unwrap();
    assert_eq!(
        ended(&call, 5).await,
        EndReason::RemoteHangup(HangupReason::Declined)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callee_in_a_call_answers_busy() {
    let (clients, _net) = devices(3, loopback_config());
    let (carol, alice, bob) = (&clients[0], &clients[1], &clients[2]);
    let first = alice.call(bob.device_id()).await.unwrap();
    let answered = next_incoming(bob, 5).await.accept().await.unwrap();
    wait_for(&first, 5, |e| matches!(e, CallEvent::Connected { .. })).await;

    let second = carol.call(bob.device_id()).await.unwrap();
    assert_eq!(ended(&second, 5).await, EndReason::RemoteBusy);
    // Bob's call with Alice goes on, and Alice cannot start a second call while in one.
    assert!(matches!(
        alice.call(bob.device_id()).await,
        Err(Error::Busy)
    ));
    answered.hangup().unwrap();
    assert_eq!(
        ended(&first, 5).await,
        EndReason::RemoteHangup(HangupReason::Normal)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_call_times_out() {
    let mut config = loopback_config();
    config.timeouts = Timeouts {
        ring: Duration::from_millis(800),
        ..Timeouts::default()
    };
    let (alice, bob, _net) = pair(config);
    let call = alice.call(bob.device_id()).await.unwrap();
    let incoming = next_incoming(&bob, 5).await;
    assert_eq!(ended(&call, 5).await, EndReason::RingTimeout);
    // The callee's ringing timed out too (or was told so): accepting now fails.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(incoming.accept().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callee_can_hang_up() {
    let (alice, bob, _net) = pair(loopback_config());
    let call = alice.call(bob.device_id()).await.unwrap();
    let answered = next_incoming(&bob, 5).await.accept().await.unwrap();
    wait_for(&call, 5, |e| matches!(e, CallEvent::Connected { .. })).await;
    answered.hangup().unwrap();
    assert_eq!(ended(&answered, 5).await, EndReason::LocalHangup);
    assert_eq!(
        ended(&call, 5).await,
        EndReason::RemoteHangup(HangupReason::Normal)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_media_is_sent_before_the_callee_accepts() {
    let (alice, bob, _net) = pair(loopback_config());
    let call = alice.call(bob.device_id()).await.unwrap();
    let incoming = next_incoming(&bob, 5).await;
    wait_for(&call, 5, |e| *e == CallEvent::Ringing).await;
    // Alice talks while Bob's phone rings: nothing is encoded, encrypted or sent.
    for n in 0..10 {
        call.send_audio(&tone(n)).unwrap();
    }
    let stats = call.stats().await.unwrap();
    assert_eq!(stats.media.frames_sent, 0);
    assert_eq!(stats.media.unsent_before_keys, 10);
    assert_eq!(stats.suite, "", "no keys exist before the answer");

    let answered = incoming.accept().await.unwrap();
    wait_for(&call, 5, |e| matches!(e, CallEvent::Connected { .. })).await;
    call.send_audio(&tone(0)).unwrap();
    let after = call.stats().await.unwrap();
    assert_eq!(after.media.frames_sent, 1);
    assert!(!after.suite.is_empty());
    answered.hangup().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glare_leaves_one_call_that_both_sides_share() {
    let (alice, bob, _net) = pair(loopback_config());
    // Bob has no session with Alice until her first message arrives, so let one call open it.
    let warm = alice.call(bob.device_id()).await.unwrap();
    next_incoming(&bob, 5).await.reject().unwrap();
    ended(&warm, 5).await;

    let (a, b) = tokio::join!(alice.call(bob.device_id()), bob.call(alice.device_id()));
    let (a, b) = (a.unwrap(), b.unwrap());
    if a.id() == b.id() {
        // One offer rang first and the other side's `call` accepted it: one shared call.
        wait_for(&a, 5, |e| matches!(e, CallEvent::Connected { .. })).await;
        wait_for(&b, 5, |e| matches!(e, CallEvent::Connected { .. })).await;
        a.hangup().unwrap();
        return;
    }
    // The offers crossed. The call with the larger id wins; the loser's own call ends with
    // Glare and the winning call rings there, flagged as replacing it.
    let (winner, loser_call, loser_client) = if a.id() > b.id() {
        (a, b, &bob)
    } else {
        (b, a, &alice)
    };
    assert_eq!(ended(&loser_call, 5).await, EndReason::Glare);
    let incoming = next_incoming(loser_client, 5).await;
    assert_eq!(incoming.id(), winner.id());
    assert!(incoming.replaces_outgoing());
    let joined = incoming.accept().await.unwrap();
    wait_for(&winner, 5, |e| matches!(e, CallEvent::Connected { .. })).await;
    wait_for(&joined, 5, |e| matches!(e, CallEvent::Connected { .. })).await;
    winner.hangup().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_answer_replayed_into_a_new_call_does_nothing() {
    let (alice, bob, net) = pair(loopback_config());
    net.start_recording();
    let first = alice.call(bob.device_id()).await.unwrap();
    let answered = next_incoming(&bob, 5).await.accept().await.unwrap();
    wait_for(&first, 5, |e| matches!(e, CallEvent::Connected { .. })).await;
    answered.hangup().unwrap();
    ended(&first, 5).await;
    let to_alice: Vec<_> = net
        .recorded()
        .into_iter()
        .filter(|e| e.recipient == alice.device_id())
        .collect();
    assert!(!to_alice.is_empty());

    // A second call: Bob's device rings but nobody accepts. Replay everything Bob ever sent.
    let second = alice.call(bob.device_id()).await.unwrap();
    let _ringing = next_incoming(&bob, 5).await;
    wait_for(&second, 5, |e| *e == CallEvent::Ringing).await;
    for envelope in to_alice {
        net.inject(envelope).unwrap();
    }
    // Nothing connects the second call, and no keys appear for it.
    let got = tokio::time::timeout(Duration::from_millis(700), second.next_event()).await;
    assert!(
        got.is_err(),
        "replayed envelopes changed the new call: {got:?}"
    );
    assert_eq!(second.stats().await.unwrap().suite, "");
    second.hangup().unwrap();
}

#[test]
fn a_client_built_outside_a_runtime_runs_on_the_given_one() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let network = hush_signaling::MemoryNetwork::new();
    let mut alice = common::sealer(1);
    let mut bob = common::sealer(2);
    common::start_session(&mut alice, &mut bob);
    let config = loopback_config();
    // No runtime is entered here: the builder spawns on the handle it was given.
    let build = |s: hush_signaling::crypto::SignalSealer<hush_crypto::MemoryBackend>| {
        let endpoint = network.endpoint(s.device_id());
        hush::Client::builder(
            hush_signaling::SignalingClient::new(endpoint, s),
            config.net.clone(),
        )
        .config(config.clone())
        .runtime(runtime.handle().clone())
        .build()
    };
    let (alice, bob) = (build(alice), build(bob));
    runtime.block_on(async {
        let call = alice.call(bob.device_id()).await.unwrap();
        next_incoming(&bob, 5).await.reject().unwrap();
        assert_eq!(
            ended(&call, 5).await,
            EndReason::RemoteHangup(HangupReason::Declined)
        );
    });
}

//! Two devices over a real relay on loopback (TCP and WebSocket): publish and fetch bundles,
//! then offer → ringing → answer → ICE → hangup.

mod common;

use common::{
    connect, metric, new_sealer, registered_key, scrape, start_relay, test_config, TempDir,
    ToySealer, Wire,
};
use hush_signaling::device::generate_device_key;
use hush_signaling::{
    Answer, CallMedia, CallMessage, DeviceSigner, Hangup, HangupReason, IceCandidates,
    IceParameters, Offer, SignalingClient, SignalingEvent,
};

async fn expect_message<T, S>(client: &mut SignalingClient<T, S>) -> hush_signaling::IncomingMessage
where
    T: hush_signaling::Transport,
    S: hush_signaling::Sealer,
{
    let event = tokio::time::timeout(std::time::Duration::from_secs(10), client.recv())
        .await
        .expect("message in time")
        .expect("transport ok");
    match event {
        SignalingEvent::Message(m) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

async fn round_trip(wire: Wire) {
    let dir = TempDir::new("round-trip");
    let (addr, metrics_addr, shutdown) = start_relay(test_config(dir.path())).await;
    // Alice publishes a bundle too: the relay accepts envelopes only for devices that did.
    let alice_key = registered_key(addr).await;
    let mut bob_sealer = new_sealer(1);
    let bob_key = bob_sealer.signer().clone();
    let (alice_id, bob_id) = (alice_key.device_id(), bob_key.device_id());

    let material = bob_sealer.publish(2, 2).unwrap();
    let mut one_time = material.one_time_prekeys.clone();
    one_time.sort_by_key(|(id, _)| *id);
    let bob_relay = connect(wire, addr, &bob_key).await;
    bob_relay
        .upload_prekeys(material.bundle.clone(), material.one_time_prekeys, false)
        .await
        .unwrap();
    let alice_relay = connect(wire, addr, &alice_key).await;

    // Each one-time prekey is handed out once, then the bundle comes without one.
    let b1 = alice_relay.fetch_bundle(bob_id).await.unwrap();
    assert_eq!(b1.bundle, material.bundle);
    assert_eq!(b1.one_time_prekey.as_ref(), Some(&one_time[0]));
    let b2 = alice_relay.fetch_bundle(bob_id).await.unwrap();
    assert_eq!(b2.one_time_prekey.as_ref(), Some(&one_time[1]));
    let b3 = alice_relay.fetch_bundle(bob_id).await.unwrap();
    assert_eq!(b3.one_time_prekey, None);
    assert!(alice_relay
        .fetch_bundle(generate_device_key().device_id())
        .await
        .is_err());

    let mut alice = SignalingClient::new(alice_relay, ToySealer { local: alice_id });
    let mut bob = SignalingClient::new(bob_relay, ToySealer { local: bob_id });

    let ice = Some(IceParameters {
        ufrag: "ufA".into(),
        pwd: "pwA".into(),
    });
    let offer = CallMessage::Offer(Offer {
        call_id: [7; 16],
        media: CallMedia::Audio,
        key_agreement: vec![1; 40],
        ice,
    });
    alice.send(bob_id, offer.clone()).await.unwrap();
    let got = expect_message(&mut bob).await;
    assert_eq!(got.from, alice_id);
    assert_eq!(got.message, offer);

    bob.send(alice_id, CallMessage::Ringing { call_id: [7; 16] })
        .await
        .unwrap();
    let answer = CallMessage::Answer(Answer {
        call_id: [7; 16],
        key_agreement: vec![2; 40],
        ice: Some(IceParameters {
            ufrag: "ufB".into(),
            pwd: "pwB".into(),
        }),
    });
    bob.send(alice_id, answer.clone()).await.unwrap();
    let candidates = CallMessage::IceCandidates(IceCandidates {
        call_id: [7; 16],
        generation: 0,
        candidates: vec!["candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host".into()],
        end_of_candidates: true,
        ice: None,
    });
    bob.send(alice_id, candidates.clone()).await.unwrap();
    assert_eq!(
        expect_message(&mut alice).await.message,
        CallMessage::Ringing { call_id: [7; 16] }
    );
    assert_eq!(expect_message(&mut alice).await.message, answer);
    assert_eq!(expect_message(&mut alice).await.message, candidates);

    let hangup = CallMessage::Hangup(Hangup {
        call_id: [7; 16],
        reason: HangupReason::Normal,
    });
    alice.send(bob_id, hangup.clone()).await.unwrap();
    assert_eq!(expect_message(&mut bob).await.message, hangup);

    // Everything was acknowledged: the relay's queue drains to zero.
    alice.transport().ping().await.unwrap();
    bob.transport().ping().await.unwrap();
    let mut depth = u64::MAX;
    for _ in 0..50 {
        let text = scrape(metrics_addr).await;
        depth = metric(&text, "hush_relay_queue_depth");
        if depth == 0 {
            assert_eq!(metric(&text, "hush_relay_envelopes_received_total"), 5);
            assert_eq!(metric(&text, "hush_relay_authenticated_connections"), 2);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(depth, 0, "acknowledged envelopes are deleted");
    assert_eq!(alice.stats().received, 3);
    assert_eq!(bob.stats().received, 2);
    shutdown.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offer_answer_hangup_over_tcp() {
    round_trip(Wire::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offer_answer_hangup_over_websocket() {
    round_trip(Wire::Ws).await;
}

//! Real Signal sessions (hush-crypto) over the real relay: publish bundles, fetch one, establish
//! the session with a PreKey message, run the per-call key agreement inside sealed
//! Offer/Answer, hang up. The relay's database holds no plaintext of any of it.

mod common;

use std::time::Duration;

use common::{connect, start_relay, test_config, TempDir, Wire};
use hush_crypto::{Device, DeviceStore, MemoryBackend};
use hush_signaling::crypto::SignalSealer;
use hush_signaling::transport::RelayClient;
use hush_signaling::{
    Answer, CallMedia, CallMessage, CiphertextKind, Error, Hangup, HangupReason, IceParameters,
    IncomingMessage, Offer, SignalingClient, SignalingEvent,
};

fn sealer(device_id: u8) -> SignalSealer<MemoryBackend> {
    let mut rng = rand::rng();
    let store = DeviceStore::create(MemoryBackend::new(), device_id, &mut rng).unwrap();
    SignalSealer::new(Device::new(store))
}

async fn next(
    client: &mut SignalingClient<RelayClient, SignalSealer<MemoryBackend>>,
) -> SignalingEvent {
    tokio::time::timeout(Duration::from_secs(10), client.recv())
        .await
        .expect("in time")
        .expect("transport")
}

async fn message(
    client: &mut SignalingClient<RelayClient, SignalSealer<MemoryBackend>>,
) -> IncomingMessage {
    match next(client).await {
        SignalingEvent::Message(m) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Every file of the relay's database (main file, WAL, shared memory) concatenated.
fn database_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        all.extend(std::fs::read(entry.unwrap().path()).unwrap_or_default());
    }
    all
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn signal_call(wire: Wire) {
    let dir = TempDir::new("signal");
    let (addr, _, _shutdown) = start_relay(test_config(dir.path())).await;
    let mut alice_sealer = sealer(1);
    let mut bob_sealer = sealer(2);
    let (alice_id, bob_id) = (alice_sealer.device_id(), bob_sealer.device_id());

    // Bob publishes his prekeys, then goes offline.
    let material = bob_sealer.publish(3, 2).unwrap();
    let bob_relay = connect(wire, addr, bob_sealer.signer()).await;
    bob_relay
        .upload_prekeys(material.bundle, material.one_time_prekeys, false)
        .await
        .unwrap();
    drop(bob_relay);

    // Alice fetches Bob's bundle and starts a session.
    let alice_relay = connect(wire, addr, alice_sealer.signer()).await;
    // Alice publishes hers too: the relay accepts envelopes only for devices that did.
    let alice_material = alice_sealer.publish(1, 1).unwrap();
    alice_relay
        .upload_prekeys(
            alice_material.bundle,
            alice_material.one_time_prekeys,
            false,
        )
        .await
        .unwrap();
    let fetched = alice_relay.fetch_bundle(bob_id).await.unwrap();
    assert!(fetched.one_time_prekey.is_some());
    let mut alice = SignalingClient::new(alice_relay, alice_sealer);
    alice.sealer_mut().start_session(&fetched).unwrap();

    // Offer with the per-call key agreement from hush-crypto.
    let bob_identity =
        hush_crypto::PeerBundle::decode(&fetched.one_time_prekey.as_ref().unwrap().1)
            .unwrap()
            .device
            .identity_key;
    let (mut pending, offer_payload) = alice
        .sealer_mut()
        .device()
        .calls()
        .offer(&bob_identity, &mut rand::rng());
    let secret_pwd = "ice-pwd-that-only-bob-may-read";
    let offer = CallMessage::Offer(Offer {
        call_id: [99; 16],
        media: CallMedia::Video,
        key_agreement: offer_payload.encode(),
        ice: Some(IceParameters {
            ufrag: "aliceufrag".into(),
            pwd: secret_pwd.into(),
        }),
    });
    alice.send(bob_id, offer.clone()).await.unwrap();

    // While Bob is offline the relay holds the envelope: no plaintext of the offer in it.
    let stored = database_bytes(dir.path());
    assert!(
        !contains(&stored, secret_pwd.as_bytes()),
        "ICE password visible to the relay"
    );
    assert!(
        !contains(&stored, &offer_payload.encode()[..32]),
        "key agreement visible to the relay"
    );
    assert!(!contains(&stored, b"aliceufrag"));

    // Bob comes online and gets the sealed offer as a PreKey message.
    let bob_relay = connect(wire, addr, bob_sealer.signer()).await;
    let mut bob = SignalingClient::new(bob_relay, bob_sealer);
    let got = message(&mut bob).await;
    assert_eq!(got.from, alice_id);
    assert_eq!(got.kind, CiphertextKind::PreKey);
    assert_eq!(got.message, offer);
    let CallMessage::Offer(received_offer) = got.message else {
        unreachable!()
    };

    // Bob accepts: the answer carries his half of the key agreement.
    let alice_address = bob.sealer_mut().address_of(&alice_id).unwrap();
    let alice_identity = bob
        .sealer_mut()
        .device()
        .store()
        .peer_identity(&alice_address)
        .unwrap()
        .unwrap();
    let incoming = bob
        .sealer_mut()
        .device_mut()
        .calls_mut()
        .receive_offer(
            &hush_crypto::Offer::decode(&received_offer.key_agreement).unwrap(),
            &alice_identity,
        )
        .unwrap();
    let (answer_payload, bob_keys) = incoming.accept(&mut rand::rng()).unwrap();
    bob.send(alice_id, CallMessage::Ringing { call_id: [99; 16] })
        .await
        .unwrap();
    bob.send(
        alice_id,
        CallMessage::Answer(Answer {
            call_id: [99; 16],
            key_agreement: answer_payload.encode(),
            ice: None,
        }),
    )
    .await
    .unwrap();

    assert_eq!(
        message(&mut alice).await.message,
        CallMessage::Ringing { call_id: [99; 16] }
    );
    let answer = message(&mut alice).await;
    assert_eq!(answer.kind, CiphertextKind::Signal);
    let CallMessage::Answer(answer) = answer.message else {
        panic!("expected the answer")
    };
    let alice_keys = pending
        .finish(&hush_crypto::Answer::decode(&answer.key_agreement).unwrap())
        .unwrap();
    assert_eq!(alice_keys.send_key.expose(), bob_keys.recv_key.expose());
    assert_eq!(alice_keys.recv_key.expose(), bob_keys.send_key.expose());
    assert_ne!(alice_keys.send_key.expose(), alice_keys.recv_key.expose());

    // Hangup; a replay of it (as a relay might do) is dropped.
    let hangup = CallMessage::Hangup(Hangup {
        call_id: [99; 16],
        reason: HangupReason::Normal,
    });
    let envelope = alice.seal(bob_id, hangup.clone()).await.unwrap();
    alice
        .transport()
        .send_envelope(envelope.clone())
        .await
        .unwrap();
    assert_eq!(message(&mut bob).await.message, hangup);
    match bob.process(envelope).await {
        Err(Error::Replay) => {}
        other => panic!("replayed hangup accepted: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_sealed_call_setup_over_tcp_relay() {
    signal_call(Wire::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_sealed_call_setup_over_websocket_relay() {
    signal_call(Wire::Ws).await;
}

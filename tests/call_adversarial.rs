//! Calls under attack: a peer whose Signal identity changed (or someone else using its
//! address), and a relay that tampers with the envelopes it carries.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{connect, converse, ended, loopback_config, next_incoming, sealer, start_session};
use hush::machine::{EndReason, Timeouts};
use hush::{CallEvent, Client, ClientConfig, ClientEvent};
use hush_crypto::MemoryBackend;
use hush_signaling::crypto::SignalSealer;
use hush_signaling::{
    CallMedia, CallMessage, DeliveryTag, DeviceId, Envelope, MemoryNetwork, MemoryTransport,
    Received, SignalingClient, Transport,
};

type Mallory = SignalingClient<MemoryTransport, SignalSealer<MemoryBackend>>;

/// Alice with a Signal session with Bob, Bob's client, and Mallory: a device with a Signal
/// identity of its own that sends from Bob's address (what a malicious relay, or Bob's
/// reinstalled app, looks like to Alice). Mallory has a session with Alice from her bundle.
struct World {
    alice: Client,
    bob: Client,
    bob_id: DeviceId,
    mallory: Mallory,
    alice_identity: hush_crypto::IdentityKey,
    mallory_identity: hush_crypto::IdentityKey,
    _network: MemoryNetwork,
}

fn world(config: ClientConfig) -> World {
    let network = MemoryNetwork::new();
    let mut alice = sealer(1);
    let mut bob = sealer(2);
    let mut mallory = sealer(2);
    let bob_id = bob.device_id();

    start_session(&mut alice, &mut bob);
    start_session(&mut mallory, &mut alice);

    let alice_identity = *alice.device().identity_key();
    let mallory_identity = *mallory.device().identity_key();
    let client = |s: SignalSealer<MemoryBackend>| {
        let endpoint = network.endpoint(s.device_id());
        Client::builder(SignalingClient::new(endpoint, s), config.net.clone())
            .config(config.clone())
            .build()
    };
    World {
        alice: client(alice),
        bob: client(bob),
        bob_id,
        // Mallory only sends: its endpoint is Bob's address, so it never receives.
        mallory: SignalingClient::new(network.endpoint(bob_id), mallory),
        alice_identity,
        mallory_identity,
        _network: network,
    }
}

/// A valid call offer from Mallory to Alice (a real key agreement bound to both identities).
fn mallory_offer(w: &mut World) -> CallMessage {
    let (_pending, offer) = w
        .mallory
        .sealer_mut()
        .device()
        .calls()
        .offer(&w.alice_identity, &mut rand::rng());
    CallMessage::Offer(hush_signaling::Offer {
        call_id: *offer.call_id().as_bytes(),
        media: CallMedia::Audio,
        key_agreement: offer.encode(),
        ice: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_identity_is_surfaced_and_trusted_only_once_accepted() {
    let mut w = world(loopback_config());
    let alice_id = w.alice.device_id();
    let offer = mallory_offer(&mut w);
    w.mallory.send(alice_id, offer).await.expect("sent");

    // Alice is told, and nothing rings: the offer was never opened.
    let event = tokio::time::timeout(Duration::from_secs(5), w.alice.next_event())
        .await
        .expect("event in time")
        .expect("client alive");
    assert_eq!(
        event,
        ClientEvent::IdentityChanged {
            peer: w.bob_id,
            new_identity: Some(w.mallory_identity),
        }
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(500), w.alice.incoming())
            .await
            .is_err(),
        "a call from a changed identity must not ring"
    );

    // The user verified the new safety number: from now on the new identity's calls ring.
    w.alice
        .accept_identity(w.bob_id, w.mallory_identity)
        .await
        .expect("accepted");
    let offer = mallory_offer(&mut w);
    w.mallory.send(alice_id, offer).await.expect("sent");
    let incoming = next_incoming(&w.alice, 5).await;
    assert_eq!(incoming.peer(), w.bob_id);
    incoming.reject().expect("reject");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_hangup_from_a_changed_identity_is_surfaced_and_does_not_end_the_call() {
    let mut w = world(loopback_config());
    let (call, answered) = connect(&w.alice, &w.bob).await;
    let hangup = CallMessage::Hangup(hush_signaling::Hangup {
        call_id: call.id().0,
        reason: hush_signaling::HangupReason::Normal,
    });
    w.mallory
        .send(w.alice.device_id(), hangup)
        .await
        .expect("sent");
    let event = common::wait_for(&call, 5, |e| {
        matches!(e, CallEvent::IdentityChanged { .. } | CallEvent::Ended(_))
    })
    .await;
    assert_eq!(
        event,
        CallEvent::IdentityChanged {
            new_identity: Some(w.mallory_identity),
        }
    );
    // The call's keys are bound to Bob's verified identity; it goes on.
    let (heard_alice, heard_bob) = converse(&call, &answered, 25).await;
    assert!(heard_alice.playable() >= 20 && heard_bob.playable() >= 20);
    answered.hangup().expect("hangup");
    assert_eq!(
        ended(&call, 5).await,
        EndReason::RemoteHangup(hush::machine::HangupReason::Normal)
    );
}

/// How the relay in the middle changes the envelopes it forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tamper {
    Nothing,
    FlipCiphertextBit,
    TruncateCiphertext,
    EmptyCiphertext,
    ShiftTimestamp,
    RelabelKind,
    RedirectToSender,
}

/// A transport that hands every outgoing envelope to a tampering relay first.
struct TamperingTransport {
    inner: MemoryTransport,
    mode: Arc<Mutex<Tamper>>,
}

impl Transport for TamperingTransport {
    fn local_device(&self) -> DeviceId {
        self.inner.local_device()
    }

    async fn send(&mut self, mut e: Envelope) -> Result<(), hush_signaling::Error> {
        let mode = *self.mode.lock().expect("lock");
        match mode {
            Tamper::Nothing => {}
            Tamper::FlipCiphertextBit => {
                let mid = e.ciphertext.len() / 2;
                e.ciphertext[mid] ^= 0x10;
            }
            Tamper::TruncateCiphertext => e.ciphertext.truncate(e.ciphertext.len() / 3),
            Tamper::EmptyCiphertext => e.ciphertext.clear(),
            Tamper::ShiftTimestamp => e.timestamp_ms += 3_600_000,
            Tamper::RelabelKind => {
                use hush_signaling::CiphertextKind as Kind;
                e.kind = if e.kind == Kind::PreKey {
                    Kind::Signal
                } else {
                    Kind::PreKey
                };
            }
            Tamper::RedirectToSender => {
                // Deliver the sender's own message back to it, relabelled as the recipient's.
                std::mem::swap(&mut e.sender, &mut e.recipient);
            }
        }
        self.inner.send(e).await
    }

    async fn recv(&mut self) -> Result<Received, hush_signaling::Error> {
        self.inner.recv().await
    }

    async fn ack(&mut self, tag: DeliveryTag) -> Result<(), hush_signaling::Error> {
        self.inner.ack(tag).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampering_relay_makes_calls_fail_cleanly_and_the_clients_keep_working() {
    let mut config = loopback_config();
    config.timeouts = Timeouts {
        ring: Duration::from_millis(700),
        connect: Duration::from_secs(3),
        reconnect: Duration::from_secs(2),
    };
    let network = MemoryNetwork::new();
    let mut alice = sealer(1);
    let mut bob = sealer(2);
    start_session(&mut alice, &mut bob);
    let mode = Arc::new(Mutex::new(Tamper::Nothing));
    let alice_transport = TamperingTransport {
        inner: network.endpoint(alice.device_id()),
        mode: mode.clone(),
    };
    let bob_endpoint = network.endpoint(bob.device_id());
    let alice = Client::builder(
        SignalingClient::new(alice_transport, alice),
        config.net.clone(),
    )
    .config(config.clone())
    .build();
    let bob = Client::builder(SignalingClient::new(bob_endpoint, bob), config.net.clone())
        .config(config.clone())
        .build();

    for tamper in [
        Tamper::FlipCiphertextBit,
        Tamper::TruncateCiphertext,
        Tamper::EmptyCiphertext,
        Tamper::ShiftTimestamp,
        Tamper::RelabelKind,
        Tamper::RedirectToSender,
    ] {
        *mode.lock().expect("lock") = tamper;
        let call = alice
            .call(bob.device_id())
            .await
            .expect("offer handed over");
        assert_eq!(
            ended(&call, 5).await,
            EndReason::RingTimeout,
            "{tamper:?}: the tampered offer never rang, the call timed out"
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(200), bob.incoming())
                .await
                .is_err(),
            "{tamper:?}: nothing rang at Bob"
        );
    }

    // The relay behaves again: both clients still work, the sessions were not damaged.
    *mode.lock().expect("lock") = Tamper::Nothing;
    let (call, answered) = connect(&alice, &bob).await;
    let (heard_alice, heard_bob) = converse(&call, &answered, 25).await;
    assert!(heard_alice.playable() >= 20 && heard_bob.playable() >= 20);
    call.hangup().expect("hangup");
    ended(&answered, 5).await;
}

/// Alice and Bob where Bob's outgoing envelopes pass through a tampering relay.
fn tampered_pair(config: &ClientConfig, bob_mode: Arc<Mutex<Tamper>>) -> (Client, Client) {
    let network = MemoryNetwork::new();
    let mut alice = sealer(1);
    let mut bob = sealer(2);
    start_session(&mut alice, &mut bob);
    let alice_endpoint = network.endpoint(alice.device_id());
    let bob_transport = TamperingTransport {
        inner: network.endpoint(bob.device_id()),
        mode: bob_mode,
    };
    let alice = Client::builder(
        SignalingClient::new(alice_endpoint, alice),
        config.net.clone(),
    )
    .config(config.clone())
    .build();
    let bob = Client::builder(SignalingClient::new(bob_transport, bob), config.net.clone())
        .config(config.clone())
        .build();
    (alice, bob)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_answer_ends_both_sides_and_no_media_is_decrypted() {
    let mut config = loopback_config();
    config.timeouts = Timeouts {
        ring: Duration::from_secs(2),
        connect: Duration::from_secs(2),
        reconnect: Duration::from_secs(2),
    };
    let mode = Arc::new(Mutex::new(Tamper::FlipCiphertextBit));
    let (alice, bob) = tampered_pair(&config, mode);
    let call = alice.call(bob.device_id()).await.expect("offer sent");
    // The offer is clean; everything Bob sends back (ringing, answer, candidates) is garbled.
    let answered = next_incoming(&bob, 5)
        .await
        .accept()
        .await
        .expect("accepted");
    for n in 0..25 {
        answered.send_audio(&common::tone(n)).expect("call live");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Alice never got keys: while her call still waits for an answer, she has decrypted and
    // played nothing of what Bob sent.
    let stats = call.stats().await.expect("alice's call still rings");
    assert_eq!(stats.media.frames_received, 0, "{stats:?}");
    assert_eq!(stats.quality, None, "no keys, no media session: {stats:?}");
    assert_eq!(ended(&call, 5).await, EndReason::RingTimeout);
    let bob_end = ended(&answered, 15).await;
    assert!(
        matches!(
            bob_end,
            EndReason::ConnectTimeout
                | EndReason::ConnectionLost
                | EndReason::RemoteHangup(_)
                | EndReason::Failed
        ),
        "bob's side ended by itself: {bob_end:?}"
    );
}

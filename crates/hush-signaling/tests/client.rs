//! SignalingClient over the in-memory transport: typed events, replay and staleness drops,
//! routing checks, and what a recording relay gets to see.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hush_signaling::device::generate_device_key;
use hush_signaling::{
    CallMedia, CallMessage, CiphertextKind, DeviceId, DeviceSigner, Error, Hangup, HangupReason,
    IceCandidates, MemoryNetwork, MemoryTransport, Offer, Sealed, Sealer, SignalingClient,
    SignalingConfig, SignalingEvent, WallClock,
};

/// Test-only sealer: binds ciphertext to the (sender, recipient) pair and masks the bytes.
/// Not encryption; the relay tests run the real Signal sealer.
struct MaskSealer {
    local: DeviceId,
}

fn mask(from: &DeviceId, to: &DeviceId) -> u8 {
    from.as_bytes()[0] ^ to.as_bytes()[1] ^ 0xa5
}

impl Sealer for MaskSealer {
    async fn seal(&mut self, peer: &DeviceId, plaintext: &[u8]) -> Result<Sealed, Error> {
        let mut ciphertext = peer.as_bytes()[..4].to_vec();
        let m = mask(&self.local, peer);
        ciphertext.extend(plaintext.iter().map(|b| b ^ m));
        Ok(Sealed {
            kind: CiphertextKind::Signal,
            ciphertext,
        })
    }

    async fn open(
        &mut self,
        peer: &DeviceId,
        _: CiphertextKind,
        ct: &[u8],
    ) -> Result<Vec<u8>, Error> {
        let (to, body) = ct.split_at_checked(4).ok_or(Error::Open("short".into()))?;
        if to != &self.local.as_bytes()[..4] {
            return Err(Error::Open("not for us".into()));
        }
        let m = mask(peer, &self.local);
        Ok(body.iter().map(|b| b ^ m).collect())
    }
}

/// A clock tests can move.
#[derive(Default)]
struct TestClock(AtomicU64);

impl WallClock for TestClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

type Client = SignalingClient<MemoryTransport, MaskSealer>;

fn pair(net: &MemoryNetwork, clock: &Arc<TestClock>) -> (Client, Client) {
    let (a, b) = (
        generate_device_key().device_id(),
        generate_device_key().device_id(),
    );
    let mut config = SignalingConfig::default();
    config.clock = clock.clone();
    config.max_age = Duration::from_secs(60);
    config.max_clock_skew = Duration::from_secs(10);
    (
        SignalingClient::with_config(net.endpoint(a), MaskSealer { local: a }, config.clone()),
        SignalingClient::with_config(net.endpoint(b), MaskSealer { local: b }, config),
    )
}

async fn recv(c: &mut Client) -> SignalingEvent {
    tokio::time::timeout(Duration::from_secs(5), c.recv())
        .await
        .unwrap()
        .unwrap()
}

fn offer() -> CallMessage {
    CallMessage::Offer(Offer {
        call_id: [1; 16],
        media: CallMedia::Audio,
        key_agreement: vec![7; 32],
        ice: None,
    })
}

#[tokio::test]
async fn typed_messages_flow_both_ways() {
    let net = MemoryNetwork::new();
    let clock = Arc::new(TestClock(AtomicU64::new(1_000_000)));
    let (mut a, mut b) = pair(&net, &clock);
    a.send(b.local_device(), offer()).await.unwrap();
    let SignalingEvent::Message(m) = recv(&mut b).await else {
        panic!()
    };
    assert_eq!(
        (m.from, m.message, m.sent_at_ms),
        (a.local_device(), offer(), 1_000_000)
    );
    let ice = CallMessage::IceCandidates(IceCandidates {
        call_id: [1; 16],
        generation: 1,
        candidates: vec!["candidate:2 1 udp 1 10.0.0.1 9 typ host".into(); 3],
        end_of_candidates: false,
        ice: None,
    });
    b.send(a.local_device(), ice.clone()).await.unwrap();
    let SignalingEvent::Message(m) = recv(&mut a).await else {
        panic!()
    };
    assert_eq!(m.message, ice);
}

#[tokio::test]
async fn stale_and_future_messages_are_dropped() {
    let net = MemoryNetwork::new();
    let clock = Arc::new(TestClock(AtomicU64::new(1_000_000)));
    let (mut a, mut b) = pair(&net, &clock);
    // Sealed now, delivered 61 s later (an old offer must not ring).
    a.send(b.local_device(), offer()).await.unwrap();
    clock.0.store(1_061_000, Ordering::Relaxed);
    assert!(matches!(
        recv(&mut b).await,
        SignalingEvent::Dropped {
            reason: Error::Stale,
            ..
        }
    ));
    // Sealed by a sender whose clock runs 11 s ahead.
    clock.0.store(1_072_000, Ordering::Relaxed);
    a.send(b.local_device(), offer()).await.unwrap();
    clock.0.store(1_061_000, Ordering::Relaxed);
    assert!(matches!(
        recv(&mut b).await,
        SignalingEvent::Dropped {
            reason: Error::Stale,
            ..
        }
    ));
    assert_eq!(b.stats().dropped_stale, 2);
    assert_eq!(b.stats().received, 0);
}

#[tokio::test]
async fn misrouted_or_relabelled_envelopes_are_dropped() {
    let net = MemoryNetwork::new();
    net.start_recording();
    let clock = Arc::new(TestClock(AtomicU64::new(5_000_000)));
    let (mut a, mut b) = pair(&net, &clock);
    let hangup = CallMessage::Hangup(Hangup {
        call_id: [4; 16],
        reason: HangupReason::Declined,
    });
    let env = a.seal(b.local_device(), hangup).await.unwrap();
    // Claimed sender changed by a relay: the sealed copy disagrees (and the seal does not open).
    let mut forged = env.clone();
    forged.sender = generate_device_key().device_id();
    forged.id = rand::random();
    net.inject(forged).unwrap();
    assert!(matches!(recv(&mut b).await, SignalingEvent::Dropped { .. }));
    // Delivered to the wrong device.
    let c = generate_device_key().device_id();
    let mut config = SignalingConfig::default();
    config.clock = clock.clone();
    let mut c_client =
        SignalingClient::with_config(net.endpoint(c), MaskSealer { local: c }, config);
    // ... as is: not addressed to this device.
    assert!(matches!(
        c_client.process(env.clone()).await,
        Err(Error::WrongRecipient)
    ));
    // ... relabelled for it: the seal is for someone else and does not open.
    let mut misrouted = env.clone();
    misrouted.recipient = c;
    net.inject(misrouted).unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), c_client.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            event,
            SignalingEvent::Dropped {
                reason: Error::Open(_),
                ..
            }
        ),
        "{event:?}"
    );
    // The genuine envelope still goes through once.
    net.inject(env.clone()).unwrap();
    assert!(matches!(recv(&mut b).await, SignalingEvent::Message(_)));
    net.inject(env).unwrap();
    assert!(matches!(
        recv(&mut b).await,
        SignalingEvent::Dropped {
            reason: Error::Replay,
            ..
        }
    ));
}

#[tokio::test]
async fn unsupported_content_version_is_dropped_not_crashed_on() {
    let net = MemoryNetwork::new();
    let clock = Arc::new(TestClock(AtomicU64::new(5_000_000)));
    let (a, mut b) = pair(&net, &clock);
    // Hand-build content with version 9 and seal it as `a` would.
    use prost::Message as _;
    let id: [u8; 16] = rand::random();
    let content = hush_signaling::proto::signaling::Content {
        version: 9,
        message_id: id.to_vec(),
        sender: a.local_device().as_bytes().to_vec(),
        recipient: b.local_device().as_bytes().to_vec(),
        timestamp_ms: 5_000_000,
        body: None,
    };
    let mut sealer = MaskSealer {
        local: a.local_device(),
    };
    let sealed = sealer
        .seal(&b.local_device(), &content.encode_to_vec())
        .await
        .unwrap();
    net.inject(hush_signaling::Envelope {
        id,
        sender: a.local_device(),
        recipient: b.local_device(),
        timestamp_ms: 5_000_000,
        kind: sealed.kind,
        ciphertext: sealed.ciphertext,
    })
    .unwrap();
    assert!(matches!(
        recv(&mut b).await,
        SignalingEvent::Dropped {
            reason: Error::UnsupportedVersion(9),
            ..
        }
    ));
    assert_eq!(b.stats().dropped_invalid, 1);
    let _ = a;
}

/// A sender whose clock runs ahead (within the allowed skew) fills the receiver's replay memory:
/// its own forgotten messages stay refused, but an honest sender's current messages are still
/// delivered. (With one window edge for all senders, the honest offer was dropped as `Stale`.)
#[tokio::test]
async fn future_stamping_sender_does_not_silence_others() {
    let net = MemoryNetwork::new();
    let clock = Arc::new(TestClock(AtomicU64::new(7_000_000)));
    let ahead = Arc::new(TestClock(AtomicU64::new(7_009_000)));
    let client = |clock: &Arc<TestClock>, replay_capacity: usize| {
        let id = generate_device_key().device_id();
        let mut config = SignalingConfig::default();
        config.clock = clock.clone();
        config.max_clock_skew = Duration::from_secs(10);
        config.replay_capacity = replay_capacity;
        SignalingClient::with_config(net.endpoint(id), MaskSealer { local: id }, config)
    };
    let mut alice = client(&clock, 100);
    let mut mallory = client(&ahead, 100);
    // Bob remembers few ids, so they are forgotten quickly.
    let mut bob = client(&clock, 4);
    let bob_id = bob.local_device();
    let mut first = None;
    for _ in 0..5 {
        let env = mallory.seal(bob_id, offer()).await.unwrap();
        first.get_or_insert_with(|| env.clone());
        net.inject(env).unwrap();
        assert!(matches!(recv(&mut bob).await, SignalingEvent::Message(_)));
    }
    // Mallory's forgotten first message, replayed, is still refused.
    net.inject(first.unwrap()).unwrap();
    assert!(matches!(
        recv(&mut bob).await,
        SignalingEvent::Dropped {
            reason: Error::Stale,
            ..
        }
    ));
    // Alice, on time, gets through.
    alice.send(bob_id, offer()).await.unwrap();
    let event = recv(&mut bob).await;
    let SignalingEvent::Message(m) = event else {
        panic!("honest offer dropped: {event:?}")
    };
    assert_eq!(m.from, alice.local_device());
    assert_eq!(bob.stats().dropped_stale, 1);
}

#[test]
fn signer_ids_are_keys() {
    let k = generate_device_key();
    assert_eq!(k.device_id().as_bytes(), &k.verifying_key().to_bytes());
}

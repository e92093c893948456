//! Pipelined sends over a real relay (`Transport::start_send`): many envelopes in flight on
//! one connection at once, delivered in order, each receipt resolving once the relay took it
//! (a refused one fails its own receipt only); and two devices that send to each other before
//! either reads (a group key rotation does this) are not held up: with `send`, each would wait
//! for the other's acknowledgement that cannot come while it waits.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{connect, registered_key, start_relay, test_config, TempDir, ToySealer, Wire};
use futures_util::FutureExt;
use hush_signaling::device::generate_device_key;
use hush_signaling::proto::relay::ErrorCode;
use hush_signaling::transport::RelayClient;
use hush_signaling::{
    CallMessage, DeviceId, DeviceSigner, Error, Hangup, HangupReason, IceCandidates, SendReceipt,
    SignalingClient, SignalingEvent,
};

type Client = SignalingClient<RelayClient, ToySealer>;

/// Two registered devices on the relay at `addr`, connected over TCP: (client, id) each.
async fn two_clients(addr: SocketAddr) -> ((Client, DeviceId), (Client, DeviceId)) {
    let (alice_key, bob_key) = (registered_key(addr).await, registered_key(addr).await);
    let (alice_id, bob_id) = (alice_key.device_id(), bob_key.device_id());
    let alice = SignalingClient::new(
        connect(Wire::Tcp, addr, &alice_key).await,
        ToySealer { local: alice_id },
    );
    let bob = SignalingClient::new(
        connect(Wire::Tcp, addr, &bob_key).await,
        ToySealer { local: bob_id },
    );
    ((alice, alice_id), (bob, bob_id))
}

fn candidates(n: u32) -> CallMessage {
    CallMessage::IceCandidates(IceCandidates {
        call_id: [9; 16],
        generation: n,
        candidates: vec![format!(
            "candidate:{n} 1 udp 1 127.0.0.1 {} typ host",
            40000 + n
        )],
        end_of_candidates: false,
        ice: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_pipeline_in_order_and_each_receipt_resolves() {
    let dir = TempDir::new("pipelined");
    let (addr, _metrics, _shutdown) = start_relay(test_config(dir.path())).await;
    let ((mut alice, _), (mut bob, bob_id)) = two_clients(addr).await;

    // 20 sends handed over before any receipt is awaited: none waits for the one before.
    let mut receipts = Vec::new();
    for n in 0..20 {
        let (_, receipt) = alice.start_send(bob_id, candidates(n)).await.unwrap();
        receipts.push(receipt);
    }
    // One to a device that published no bundle: its receipt fails, the others do not.
    let stranger = generate_device_key().device_id();
    let (_, refused) = alice.start_send(stranger, candidates(99)).await.unwrap();

    for n in 0..20 {
        let event = tokio::time::timeout(Duration::from_secs(10), bob.recv())
            .await
            .expect("delivered in time")
            .expect("transport ok");
        match event {
            SignalingEvent::Message(m) => assert_eq!(m.message, candidates(n), "in order"),
            other => panic!("expected message {n}, got {other:?}"),
        }
    }
    for r in receipts {
        tokio::time::timeout(Duration::from_secs(10), r)
            .await
            .expect("answered in time")
            .expect("accepted");
    }
    match refused.await {
        Err(Error::Relay { code, .. }) => assert_eq!(code, ErrorCode::UnknownRecipient),
        other => panic!("expected UNKNOWN_RECIPIENT, got {other:?}"),
    }
    assert_eq!(alice.stats().sent, 21);
}

const MESSAGES: u8 = 5;

fn hangup(n: u8) -> CallMessage {
    CallMessage::Hangup(Hangup {
        call_id: [n; 16],
        reason: HangupReason::Normal,
    })
}

/// Queues `MESSAGES` messages for `to`, numbered from 0.
async fn queue_all(client: &mut Client, to: DeviceId) -> Vec<SendReceipt> {
    let mut answers = Vec::new();
    for n in 0..MESSAGES {
        let (_, answer) = client.start_send(to, hangup(n)).await.expect("queued");
        answers.push(answer);
    }
    answers
}

/// Reads `MESSAGES` messages (acknowledging each) and returns their call ids in order.
async fn read_all(client: &mut Client, from: DeviceId) -> Vec<u8> {
    let mut got = Vec::new();
    for _ in 0..MESSAGES {
        let event = tokio::time::timeout(Duration::from_secs(10), client.recv())
            .await
            .expect("message in time")
            .expect("transport up");
        let SignalingEvent::Message(m) = event else {
            panic!("dropped: {event:?}")
        };
        assert_eq!(m.from, from);
        got.push(m.message.call_id()[0]);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_sends_cross_without_waiting_and_are_answered_on_acknowledgement() {
    let dir = TempDir::new("queued-send");
    let mut config = test_config(dir.path());
    // Longer than any request timeout: an answer can only come from the recipient's
    // acknowledgement, never from a commit.
    config.commit_delay = Duration::from_secs(600);
    let (addr, _metrics, shutdown) = start_relay(config).await;
    let ((mut alice, alice_id), (mut bob, bob_id)) = two_clients(addr).await;

    // Both send before either reads: every send returns at once, none answered yet.
    let mut alice_answers = queue_all(&mut alice, bob_id).await;
    let mut bob_answers = queue_all(&mut bob, alice_id).await;
    for answer in alice_answers.iter_mut().chain(bob_answers.iter_mut()) {
        assert!(
            answer.now_or_never().is_none(),
            "answered before the recipient read it"
        );
    }

    // Each reads (and acknowledges) the other's, in the order they were queued.
    assert_eq!(read_all(&mut bob, alice_id).await, vec![0, 1, 2, 3, 4]);
    assert_eq!(read_all(&mut alice, bob_id).await, vec![0, 1, 2, 3, 4]);
    for answer in alice_answers.into_iter().chain(bob_answers) {
        answer.await.expect("accepted on acknowledgement");
    }
    assert_eq!(alice.stats().sent, u64::from(MESSAGES));
    shutdown.shutdown();
}

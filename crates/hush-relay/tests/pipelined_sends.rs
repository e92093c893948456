//! Pipelined sends over a real relay (`Transport::start_send`): many envelopes in flight on
//! one connection at once, delivered in order, each receipt resolving once the relay took it;
//! a refused one fails its own receipt only.

mod common;

use std::time::Duration;

use common::{connect, registered_key, start_relay, test_config, TempDir, ToySealer, Wire};
use hush_signaling::device::generate_device_key;
use hush_signaling::proto::relay::ErrorCode;
use hush_signaling::{
    CallMessage, DeviceSigner, Error, IceCandidates, SignalingClient, SignalingEvent,
};

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
    let (alice_key, bob_key) = (registered_key(addr).await, registered_key(addr).await);
    let (alice_id, bob_id) = (alice_key.device_id(), bob_key.device_id());
    let mut alice = SignalingClient::new(
        connect(Wire::Tcp, addr, &alice_key).await,
        ToySealer { local: alice_id },
    );
    let mut bob = SignalingClient::new(
        connect(Wire::Tcp, addr, &bob_key).await,
        ToySealer { local: bob_id },
    );

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

//! Offline delivery across a relay crash: the recipient is offline, the relay process is killed
//! with SIGKILL and restarted on the same database, and the recipient then receives every
//! envelope exactly once. Acknowledged envelopes do not come back after another crash.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{connect, metric, scrape, TempDir, ToySealer, Wire};
use hush_signaling::device::generate_device_key;
use hush_signaling::{
    CallMessage, DeviceSigner, Hangup, HangupReason, SignalingClient, SignalingEvent,
};

struct RelayProcess {
    child: Child,
    addr: SocketAddr,
    metrics: SocketAddr,
}

impl RelayProcess {
    fn start(db: &std::path::Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hush-relay"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--metrics",
                "127.0.0.1:0",
                "--db",
            ])
            .arg(db)
            .env("HUSH_RELAY_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn relay binary");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut next_addr = |prefix: &str| -> SocketAddr {
            let line = lines
                .next()
                .expect("relay output")
                .expect("read relay output");
            line.strip_prefix(prefix)
                .unwrap_or_else(|| panic!("unexpected line {line:?}"))
                .parse()
                .unwrap()
        };
        let addr = next_addr("listening ");
        let metrics = next_addr("metrics ");
        Self {
            child,
            addr,
            metrics,
        }
    }

    /// SIGKILL: no shutdown code runs.
    fn kill9(mut self) {
        self.child.kill().expect("SIGKILL relay");
        self.child.wait().unwrap();
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const MESSAGES: u64 = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_envelopes_survive_kill9_and_arrive_exactly_once() {
    let dir = TempDir::new("durability");
    let db = dir.path().join("relay.db");
    let alice_key = generate_device_key();
    let bob_key = generate_device_key();
    let (alice_id, bob_id) = (alice_key.device_id(), bob_key.device_id());

    // 1. Bob is offline; Alice sends. Each send returns only after the relay committed it.
    let relay = RelayProcess::start(&db);
    let alice_relay = connect(Wire::Tcp, relay.addr, &alice_key).await;
    let mut alice = SignalingClient::new(alice_relay, ToySealer { local: alice_id });
    let mut sent = HashSet::new();
    for call_id in 0..MESSAGES {
        let id = alice
            .send(
                bob_id,
                CallMessage::Hangup(Hangup {
                    call_id: numbered_call_id(call_id),
                    reason: HangupReason::Timeout,
                }),
            )
            .await
            .unwrap();
        sent.insert(id);
    }
    drop(alice);
    relay.kill9();

    // 2. Restart on the same database; Bob connects and gets everything once.
    let relay = RelayProcess::start(&db);
    let bob_relay = connect(Wire::Tcp, relay.addr, &bob_key).await;
    assert_eq!(bob_relay.queued_at_auth(), MESSAGES);
    let mut bob = SignalingClient::new(bob_relay, ToySealer { local: bob_id });
    let mut got = HashSet::new();
    let mut call_ids = Vec::new();
    for _ in 0..MESSAGES {
        let event = tokio::time::timeout(Duration::from_secs(10), bob.recv())
            .await
            .unwrap()
            .unwrap();
        let SignalingEvent::Message(m) = event else {
            panic!("dropped: {event:?}")
        };
        assert_eq!(m.from, alice_id);
        assert!(got.insert(m.id), "duplicate delivery");
        call_ids.push(m.message.call_id());
    }
    assert_eq!(got, sent);
    assert_eq!(
        call_ids,
        (0..MESSAGES).map(numbered_call_id).collect::<Vec<_>>(),
        "queue order is kept"
    );
    // Nothing more arrives.
    assert!(tokio::time::timeout(Duration::from_millis(300), bob.recv())
        .await
        .is_err());

    // 3. Wait until the acknowledgements are committed, crash again: nothing is redelivered.
    let mut depth = u64::MAX;
    for _ in 0..100 {
        depth = metric(&scrape(relay.metrics).await, "hush_relay_queue_depth");
        if depth == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(depth, 0);
    drop(bob);
    relay.kill9();
    let relay = RelayProcess::start(&db);
    let bob_relay = connect(Wire::Tcp, relay.addr, &bob_key).await;
    assert_eq!(
        bob_relay.queued_at_auth(),
        0,
        "acknowledged envelopes stay deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_deliveries_are_redelivered_after_kill9() {
    let dir = TempDir::new("redeliver");
    let db = dir.path().join("relay.db");
    let alice_key = generate_device_key();
    let bob_key = generate_device_key();
    let bob_id = bob_key.device_id();

    let relay = RelayProcess::start(&db);
    let bob_relay = connect(Wire::Tcp, relay.addr, &bob_key).await;
    let alice_relay = connect(Wire::Tcp, relay.addr, &alice_key).await;
    let mut alice = SignalingClient::new(
        alice_relay,
        ToySealer {
            local: alice_key.device_id(),
        },
    );
    alice
        .send(bob_id, CallMessage::Ringing { call_id: [1; 16] })
        .await
        .unwrap();
    // Bob receives the envelope at transport level but never acknowledges it.
    let mut bob_relay = bob_relay;
    let first = tokio::time::timeout(
        Duration::from_secs(5),
        hush_signaling::Transport::recv(&mut bob_relay),
    )
    .await
    .unwrap()
    .unwrap();
    relay.kill9();

    let relay = RelayProcess::start(&db);
    let mut bob_relay = connect(Wire::Tcp, relay.addr, &bob_key).await;
    let again = tokio::time::timeout(
        Duration::from_secs(5),
        hush_signaling::Transport::recv(&mut bob_relay),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(again.envelope, first.envelope);
    drop(relay);
}

/// A call id that carries `n` (so the queue order can be checked).
fn numbered_call_id(n: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&n.to_be_bytes());
    id
}

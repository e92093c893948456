//! Offline delivery across a relay crash: the recipient is offline, the relay process is killed
//! with SIGKILL and restarted on the same database, and the recipient then receives every
//! envelope exactly once. Acknowledged envelopes do not come back after another crash.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{connect, metric, registered_key, scrape, TempDir, ToySealer, Wire};
use hush_signaling::device::generate_device_key;
use hush_signaling::transport::RelayClient;
use hush_signaling::{
    CallMessage, CiphertextKind, DeviceId, DeviceSigner, Envelope, Hangup, HangupReason, Received,
    SignalingClient, SignalingEvent, Transport,
};

struct RelayProcess {
    child: Child,
    addr: SocketAddr,
    metrics: SocketAddr,
}

impl RelayProcess {
    fn start(db: &std::path::Path) -> Self {
        Self::start_with(db, &[])
    }

    fn start_with(db: &std::path::Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hush-relay"))
            .args(extra)
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
    // 1. Bob published his bundle and is offline; Alice sends. Each send returns only after
    // the relay committed it.
    let relay = RelayProcess::start(&db);
    let alice_key = generate_device_key();
    let bob_key = registered_key(relay.addr).await;
    let (alice_id, bob_id) = (alice_key.device_id(), bob_key.device_id());
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
    let relay = RelayProcess::start(&db);
    let alice_key = generate_device_key();
    let bob_key = registered_key(relay.addr).await;
    let bob_id = bob_key.device_id();
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
    let first = tokio::time::timeout(Duration::from_secs(5), Transport::recv(&mut bob_relay))
        .await
        .unwrap()
        .unwrap();
    relay.kill9();

    let relay = RelayProcess::start(&db);
    let mut bob_relay = connect(Wire::Tcp, relay.addr, &bob_key).await;
    let again = tokio::time::timeout(Duration::from_secs(5), Transport::recv(&mut bob_relay))
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

fn raw_envelope(from: DeviceId, to: DeviceId, n: u8) -> Envelope {
    Envelope {
        id: rand::random(),
        sender: from,
        recipient: to,
        timestamp_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
        kind: CiphertextKind::Signal,
        ciphertext: vec![n; 48],
    }
}

async fn next_delivery(client: &mut RelayClient) -> Received {
    tokio::time::timeout(Duration::from_secs(10), client.recv())
        .await
        .expect("delivery in time")
        .expect("delivery")
}

const BURST: u8 = 20;

/// The online fast path pushes an envelope to its recipient before it is written, but the
/// sender is answered only once it is committed (or acknowledged): with a recipient that never
/// acknowledges, every answered send survives an immediate `kill -9`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_sends_to_a_silent_online_recipient_survive_kill9() {
    let dir = TempDir::new("silent-recipient");
    let db = dir.path().join("relay.db");
    // A long delay: the envelopes reach Bob well before they are written.
    let relay = RelayProcess::start_with(&db, &["--commit-delay-ms", "300"]);
    let (alice_key, bob_key) = (generate_device_key(), registered_key(relay.addr).await);
    let (alice_id, bob_id) = (alice_key.device_id(), bob_key.device_id());
    let mut bob = connect(Wire::Tcp, relay.addr, &bob_key).await;
    let alice = connect(Wire::Tcp, relay.addr, &alice_key).await;
    let sends = (0..BURST).map(|n| alice.send_envelope(raw_envelope(alice_id, bob_id, n)));
    let answers = futures_util::future::join_all(sends).await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    let mut live = Vec::new();
    for _ in 0..BURST {
        live.push(next_delivery(&mut bob).await.envelope);
    }
    // Bob never acknowledges. Crash right after the last answer.
    relay.kill9();

    let relay = RelayProcess::start(&db);
    let mut bob = connect(Wire::Tcp, relay.addr, &bob_key).await;
    assert_eq!(bob.queued_at_auth(), u64::from(BURST));
    for envelope in live {
        assert_eq!(next_delivery(&mut bob).await.envelope, envelope);
    }
    drop(relay);
}

/// Envelopes their online recipient acknowledges before the commit delay ends are never
/// written: the senders are answered on the acknowledgement, nothing is left in the store,
/// and nothing comes back after a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_acknowledged_before_commit_are_answered_and_never_stored() {
    let dir = TempDir::new("fast-ack");
    let db = dir.path().join("relay.db");
    // Longer than any request timeout: an answer can only come from Bob's acknowledgement.
    let relay = RelayProcess::start_with(&db, &["--commit-delay-ms", "600000"]);
    let (alice_key, bob_key) = (generate_device_key(), registered_key(relay.addr).await);
    let (alice_id, bob_id) = (alice_key.device_id(), bob_key.device_id());
    let mut bob = connect(Wire::Tcp, relay.addr, &bob_key).await;
    let acker = tokio::spawn(async move {
        let mut got = Vec::new();
        for _ in 0..BURST {
            let r = next_delivery(&mut bob).await;
            bob.ack(r.tag).await.unwrap();
            got.push(r.envelope);
        }
        (bob, got)
    });
    let alice = connect(Wire::Tcp, relay.addr, &alice_key).await;
    let sent: Vec<Envelope> = (0..BURST)
        .map(|n| raw_envelope(alice_id, bob_id, n))
        .collect();
    let answers =
        futures_util::future::join_all(sent.iter().map(|e| alice.send_envelope(e.clone()))).await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    let (bob, got) = acker.await.unwrap();
    assert_eq!(got, sent);
    let text = scrape(relay.metrics).await;
    assert_eq!(metric(&text, "hush_relay_envelopes_stored_total"), 0);
    assert_eq!(
        metric(&text, "hush_relay_envelopes_unstored_total"),
        u64::from(BURST)
    );
    assert_eq!(metric(&text, "hush_relay_queue_depth"), 0);
    drop(bob);
    relay.kill9();

    let relay = RelayProcess::start(&db);
    let bob = connect(Wire::Tcp, relay.addr, &bob_key).await;
    assert_eq!(bob.queued_at_auth(), 0, "nothing was written");
    drop(relay);
}

/// A recipient that drops its connection without acknowledging an envelope it was pushed at
/// admission, and reconnects before the envelope is written, still gets it — once — on the new
/// connection (the store pushes it there after the commit; the new connection's backlog was
/// loaded before it existed in the database). Either order of commit and reconnection must
/// deliver it exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_pushed_to_a_dropped_connection_reaches_the_next_one_once() {
    let dir = TempDir::new("reconnect-before-commit");
    let mut config = common::test_config(dir.path());
    config.commit_delay = Duration::from_millis(500);
    let (addr, metrics, _shutdown) = common::start_relay(config).await;
    let (alice_key, bob_key) = (generate_device_key(), registered_key(addr).await);
    let (alice_id, bob_id) = (alice_key.device_id(), bob_key.device_id());

    let mut bob = connect(Wire::Tcp, addr, &bob_key).await;
    let alice = connect(Wire::Tcp, addr, &alice_key).await;
    let sent = raw_envelope(alice_id, bob_id, 7);
    let answer = {
        let sent = sent.clone();
        tokio::spawn(async move { alice.send_envelope(sent).await })
    };
    assert_eq!(next_delivery(&mut bob).await.envelope, sent, "pushed live");
    drop(bob); // no acknowledgement

    let mut bob = connect(Wire::Tcp, addr, &bob_key).await;
    let again = next_delivery(&mut bob).await;
    assert_eq!(again.envelope, sent, "delivered to the new connection");
    answer
        .await
        .unwrap()
        .expect("answered once committed (Bob did not acknowledge)");
    assert_eq!(
        metric(&scrape(metrics).await, "hush_relay_envelopes_stored_total"),
        1
    );
    // Exactly once on this connection: nothing else arrives.
    assert!(
        tokio::time::timeout(Duration::from_millis(800), bob.recv())
            .await
            .is_err(),
        "no duplicate delivery"
    );
    bob.ack(again.tag).await.unwrap();
    let mut depth = u64::MAX;
    for _ in 0..100 {
        depth = metric(&scrape(metrics).await, "hush_relay_queue_depth");
        if depth == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(depth, 0, "deleted after the acknowledgement");
}

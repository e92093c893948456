//! The relay as a cluster (feature `cluster`): three nodes on loopback share one PostgreSQL and
//! one NATS server, both real and started by `hush-testkit`. Without `postgres`/`initdb` or
//! `nats-server` these tests print NOT RUN (a failure under `HUSH_REQUIRE_SYSTEM_TESTS=1`).

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{connect, registered_key, start_relay, test_config, TempDir, ToySealer, Wire};
use hush_relay::{ClusterConfig, ShutdownHandle};
use hush_signaling::transport::RelayClient;
use hush_signaling::{
    CallMessage, DeviceId, DeviceSigner, MessageId, SignalingClient, SignalingEvent,
};
use hush_testkit::servers::{nats_present, postgres_present, Nats, Postgres};

/// Whether PostgreSQL and NATS are here (prints NOT RUN, or fails under the CI variable).
fn servers_present() -> bool {
    hush_testkit::system_component("postgresql (initdb, postgres)", postgres_present())
        && hush_testkit::system_component("nats-server", nats_present())
}

/// Starts a node of the cluster in-process; nodes share `dir`'s key file.
async fn start_node(
    dir: &TempDir,
    pg: &Postgres,
    nats: &Nats,
    poll: Duration,
) -> (SocketAddr, ShutdownHandle) {
    let mut config = test_config(dir.path());
    let mut cluster = ClusterConfig::new(pg.url(), nats.url());
    cluster.poll_interval = poll;
    config.cluster = Some(cluster);
    let (addr, _metrics, handle) = start_relay(config).await;
    (addr, handle)
}

/// A device's signaling client on node `addr`.
async fn client(
    addr: SocketAddr,
    key: &dyn DeviceSigner,
) -> SignalingClient<RelayClient, ToySealer> {
    let relay = connect(Wire::Tcp, addr, key).await;
    SignalingClient::new(
        relay,
        ToySealer {
            local: key.device_id(),
        },
    )
}

async fn send(
    from: &mut SignalingClient<RelayClient, ToySealer>,
    to: DeviceId,
    n: u8,
) -> MessageId {
    from.send(to, CallMessage::Ringing { call_id: [n; 16] })
        .await
        .expect("accepted")
}

/// The next message `to` receives (within `limit`): its sender and id.
async fn next_message(
    to: &mut SignalingClient<RelayClient, ToySealer>,
    limit: Duration,
) -> Option<(DeviceId, MessageId)> {
    loop {
        match tokio::time::timeout(limit, to.recv()).await {
            Err(_) => return None,
            Ok(Ok(SignalingEvent::Message(m))) => return Some((m.from, m.id)),
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => panic!("receive failed: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_push_across_nodes_and_queue_for_offline_devices() {
    if !servers_present() {
        return;
    }
    let pg = Postgres::start();
    let nats = Nats::start();
    let dir = TempDir::new("cluster");
    // Polling only every hour: whatever arrives within the test's waits was pushed over NATS.
    let hour = Duration::from_secs(3600);
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(start_node(&dir, &pg, &nats, hour).await);
    }
    let addr = |i: usize| nodes[i].0;

    // Bundles published through different nodes; every node sees them.
    let alice_key = registered_key(addr(0)).await;
    let bob_key = registered_key(addr(1)).await;
    let carol_key = registered_key(addr(2)).await;
    let (alice_id, bob_id, carol_id) = (
        alice_key.device_id(),
        bob_key.device_id(),
        carol_key.device_id(),
    );

    // Alice on node 0 and Bob on node 1, both online: each envelope is pushed to the other
    // node's connection at once.
    let mut alice = client(addr(0), &alice_key).await;
    let mut bob = client(addr(1), &bob_key).await;
    let mut latencies = Vec::new();
    for n in 0..10u8 {
        let start = Instant::now();
        let id = send(&mut alice, bob_id, n).await;
        let got = next_message(&mut bob, Duration::from_secs(5)).await;
        assert_eq!(got, Some((alice_id, id)), "pushed from node 0 to node 1");
        latencies.push(start.elapsed());
        let id = send(&mut bob, alice_id, n).await;
        let got = next_message(&mut alice, Duration::from_secs(5)).await;
        assert_eq!(got, Some((bob_id, id)), "pushed from node 1 to node 0");
    }
    latencies.sort();
    println!(
        "cross-node push, send to receive: median {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );

    // Carol is offline: envelopes sent through nodes 0 and 1 wait in PostgreSQL, and she gets
    // them when she connects to node 2.
    let sent: HashSet<MessageId> = [
        send(&mut alice, carol_id, 1).await,
        send(&mut bob, carol_id, 2).await,
    ]
    .into();
    let carol_relay = connect(Wire::Tcp, addr(2), &carol_key).await;
    assert_eq!(carol_relay.queued_at_auth(), 2);
    let mut carol = SignalingClient::new(carol_relay, ToySealer { local: carol_id });
    let mut got = HashSet::new();
    for _ in 0..2 {
        let (_, id) = next_message(&mut carol, Duration::from_secs(5))
            .await
            .expect("queued envelope delivered");
        assert!(got.insert(id), "delivered once");
    }
    assert_eq!(got, sent);
    assert_eq!(
        next_message(&mut carol, Duration::from_millis(300)).await,
        None
    );
    // Her acknowledgements deleted them: reconnecting to another node finds nothing queued
    // (the acknowledgements are sent as the messages are received; give them a moment).
    drop(carol);
    let mut queued = u64::MAX;
    for _ in 0..50 {
        let again = connect(Wire::Tcp, addr(0), &carol_key).await;
        queued = again.queued_at_auth();
        if queued == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(queued, 0, "acknowledged envelopes are gone cluster-wide");

    // Offline again; a new envelope reaches her on reconnect to yet another node.
    let id = send(&mut bob, carol_id, 3).await;
    let carol_relay = connect(Wire::Tcp, addr(1), &carol_key).await;
    assert_eq!(carol_relay.queued_at_auth(), 1);
    let mut carol = SignalingClient::new(carol_relay, ToySealer { local: carol_id });
    assert_eq!(
        next_message(&mut carol, Duration::from_secs(5)).await,
        Some((bob_id, id))
    );

    // Carol connects again, to node 2: her connection on node 1 is closed (the takeover
    // notice crossed nodes over NATS), and new envelopes reach the new connection.
    let mut old = carol;
    let newer = connect(Wire::Tcp, addr(2), &carol_key).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match old.recv().await {
                Ok(SignalingEvent::Message(_)) => panic!("nothing was sent"),
                Ok(_) => continue,
                Err(_) => break,
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the older connection on another node was closed"
    );
    let mut carol = SignalingClient::new(newer, ToySealer { local: carol_id });
    let earlier = id;
    let id = send(&mut alice, carol_id, 4).await;
    let mut got = next_message(&mut carol, Duration::from_secs(5)).await;
    if got == Some((bob_id, earlier)) {
        // The old connection's acknowledgement of Bob's envelope was still in flight when the
        // new one loaded her queue: redelivered (an app's replay guard, kept across
        // connections, drops it; this new client's guard is fresh).
        got = next_message(&mut carol, Duration::from_secs(5)).await;
    }
    assert_eq!(got, Some((alice_id, id)));
    for (_, handle) in &nodes {
        handle.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nats_delivery_falls_back_to_polling() {
    if !servers_present() {
        return;
    }
    let pg = Postgres::start();
    let mut nats = Nats::start();
    let dir = TempDir::new("cluster-poll");
    let poll = Duration::from_millis(100);
    let a = start_node(&dir, &pg, &nats, poll).await;
    let b = start_node(&dir, &pg, &nats, poll).await;
    let alice_key = registered_key(a.0).await;
    let bob_key = registered_key(b.0).await;
    let (alice_id, bob_id) = (alice_key.device_id(), bob_key.device_id());
    let mut alice = client(a.0, &alice_key).await;
    let mut bob = client(b.0, &bob_key).await;

    // NATS dies: sends still succeed (PostgreSQL has them) and Bob's node finds them by
    // polling.
    nats.kill();
    let mut sent = Vec::new();
    for n in 0..5u8 {
        sent.push(send(&mut alice, bob_id, n).await);
    }
    for want in &sent {
        let got = next_message(&mut bob, Duration::from_secs(10)).await;
        assert_eq!(got, Some((alice_id, *want)), "polled while NATS is down");
    }
    // Back up: pushes resume (the clients reconnect to NATS in the background).
    nats.restart();
    let mut delivered = false;
    for n in 10..40u8 {
        let id = send(&mut alice, bob_id, n).await;
        if next_message(&mut bob, Duration::from_secs(2)).await == Some((alice_id, id)) {
            delivered = true;
            break;
        }
    }
    assert!(delivered, "delivery works again after NATS restarted");
    assert_eq!(
        next_message(&mut bob, Duration::from_millis(500)).await,
        None,
        "nothing is delivered twice to the app"
    );
    a.1.shutdown();
    b.1.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgres_is_down_sends_fail_and_none_accepted_is_lost() {
    if !servers_present() {
        return;
    }
    let mut pg = Postgres::start();
    let nats = Nats::start();
    let dir = TempDir::new("cluster-pg");
    let a = start_node(&dir, &pg, &nats, Duration::from_millis(200)).await;
    let b = start_node(&dir, &pg, &nats, Duration::from_millis(200)).await;
    let alice_key = registered_key(a.0).await;
    let bob_key = registered_key(b.0).await;
    let bob_id = bob_key.device_id();
    // Alice sends through a raw transport (each send's own answer), Bob is offline.
    let alice_relay = connect(Wire::Tcp, a.0, &alice_key).await;
    let mut alice = SignalingClient::new(
        alice_relay,
        ToySealer {
            local: alice_key.device_id(),
        },
    );
    let mut accepted = HashSet::new();
    accepted.insert(send(&mut alice, bob_id, 0).await);
    pg.kill();
    let mut refused = 0;
    for n in 1..6u8 {
        match alice
            .send(bob_id, CallMessage::Ringing { call_id: [n; 16] })
            .await
        {
            Ok(id) => {
                accepted.insert(id);
            }
            Err(_) => refused += 1,
        }
    }
    assert_eq!(refused, 5, "every send fails while the database is down");
    pg.restart();
    // Sends succeed again once the pool reconnects.
    let mut back = false;
    for n in 10..60u8 {
        if let Ok(id) = alice
            .send(bob_id, CallMessage::Ringing { call_id: [n; 16] })
            .await
        {
            accepted.insert(id);
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "sends succeed after PostgreSQL restarted");
    // Every accepted envelope reaches Bob, once.
    let bob_relay = connect(Wire::Tcp, b.0, &bob_key).await;
    let mut bob = SignalingClient::new(bob_relay, ToySealer { local: bob_id });
    let mut got = HashSet::new();
    while let Some((_, id)) = next_message(&mut bob, Duration::from_secs(2)).await {
        assert!(got.insert(id), "delivered once");
    }
    assert_eq!(got, accepted, "every accepted envelope delivered, no other");
    a.1.shutdown();
    b.1.shutdown();
}

/// A relay node as a child process (`hush-relay --postgres --nats`), so that it can be killed
/// with SIGKILL.
struct NodeProcess {
    child: std::process::Child,
    addr: SocketAddr,
}

impl NodeProcess {
    fn start(dir: &TempDir, pg: &Postgres, nats: &Nats) -> Self {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hush-relay"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--postgres",
                &pg.url(),
                "--nats",
                &nats.url(),
            ])
            .arg("--key")
            .arg(dir.path().join("relay.key"))
            .env("HUSH_RELAY_LOG", "error")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("spawn relay node");
        let stdout = child.stdout.take().expect("node stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("node output");
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("unexpected line {line:?}"))
            .parse()
            .expect("node address");
        Self { child, addr }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

type Addrs = std::sync::Arc<std::sync::Mutex<Vec<SocketAddr>>>;

/// Connects `key` to the first node of `addrs` that answers, starting at `start`.
async fn connect_any<K: DeviceSigner + Sync>(
    addrs: &Addrs,
    start: usize,
    key: &K,
) -> SignalingClient<RelayClient, ToySealer> {
    for attempt in 0.. {
        let list = addrs.lock().unwrap().clone();
        let addr = list[(start + attempt) % list.len()];
        if let Ok(relay) = common::try_connect(Wire::Tcp, addr, key).await {
            return SignalingClient::new(
                relay,
                ToySealer {
                    local: key.device_id(),
                },
            );
        }
        assert!(attempt < 200, "no node reachable");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unreachable!()
}

const SENDERS: usize = 16;
const RECIPIENTS: usize = 8;
const PER_SENDER: usize = 24;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_nodes_killed_mid_traffic_lose_nothing_accepted() {
    if !servers_present() {
        return;
    }
    let pg = Postgres::start();
    let nats = Nats::start();
    let dir = TempDir::new("cluster-chaos");
    let mut nodes: Vec<NodeProcess> = (0..3)
        .map(|_| NodeProcess::start(&dir, &pg, &nats))
        .collect();
    let addrs: Addrs = std::sync::Arc::new(std::sync::Mutex::new(
        nodes.iter().map(|n| n.addr).collect(),
    ));
    let mut recipients = Vec::new();
    for i in 0..RECIPIENTS {
        recipients.push(registered_key(nodes[i % 3].addr).await);
    }
    let recipient_ids: Vec<DeviceId> = recipients.iter().map(|k| k.device_id()).collect();

    // Recipients 0..4 stay online (reconnecting to another node when theirs dies); 4..8 are
    // offline until the traffic is over. Each keeps the ids it received, as an app's replay
    // guard kept across connections would: a redelivery is counted, not shown twice.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut online = Vec::new();
    for (i, key) in recipients.iter().take(RECIPIENTS / 2).cloned().enumerate() {
        let (addrs, stop) = (addrs.clone(), stop.clone());
        online.push(tokio::spawn(async move {
            let mut got = HashSet::new();
            let mut redelivered = 0u64;
            let mut client = connect_any(&addrs, i, &key).await;
            let mut reconnects = 0;
            loop {
                match tokio::time::timeout(Duration::from_millis(500), client.recv()).await {
                    Ok(Ok(SignalingEvent::Message(m))) => {
                        if !got.insert(m.id) {
                            redelivered += 1;
                        }
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => {
                        reconnects += 1;
                        client = connect_any(&addrs, i + reconnects, &key).await;
                    }
                    Err(_) if stop.load(std::sync::atomic::Ordering::SeqCst) => break,
                    Err(_) => {}
                }
            }
            (got, redelivered)
        }));
    }

    // Senders: each sends round-robin over the recipients until the chaos is over (and at least
    // PER_SENDER envelopes), reconnecting to another node when its node dies. Only envelopes
    // answered "accepted" are counted as sent.
    let chaos_over = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let (addrs, to) = (addrs.clone(), recipient_ids.clone());
        let chaos_over = chaos_over.clone();
        senders.push(tokio::spawn(async move {
            let key = hush_signaling::device::generate_device_key();
            let mut client = connect_any(&addrs, s, &key).await;
            let mut accepted = Vec::new();
            let mut failed = 0u64;
            let mut reconnects = 0;
            let mut n = 0;
            while n < PER_SENDER || !chaos_over.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                let recipient = to[(s + n) % to.len()];
                let message = CallMessage::Ringing {
                    call_id: [n as u8; 16],
                };
                match client.send(recipient, message).await {
                    Ok(id) => accepted.push((recipient, id)),
                    Err(_) => {
                        failed += 1;
                        reconnects += 1;
                        client = connect_any(&addrs, s + reconnects, &key).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (accepted, failed)
        }));
    }

    // Chaos: five times, SIGKILL a node mid-traffic and start it again (on a new port).
    for round in 0..5 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let victim = round % 3;
        nodes[victim].kill9();
        tokio::time::sleep(Duration::from_millis(100)).await;
        nodes[victim] = NodeProcess::start(&dir, &pg, &nats);
        addrs.lock().unwrap()[victim] = nodes[victim].addr;
    }
    chaos_over.store(true, std::sync::atomic::Ordering::SeqCst);

    let mut accepted: Vec<(DeviceId, MessageId)> = Vec::new();
    let mut failed = 0;
    for s in senders {
        let (a, f) = s.await.expect("sender task");
        accepted.extend(a);
        failed += f;
    }
    // The offline recipients come online now, each on some node.
    let mut offline = Vec::new();
    for (i, key) in recipients.iter().skip(RECIPIENTS / 2).cloned().enumerate() {
        let addrs = addrs.clone();
        offline.push(tokio::spawn(async move {
            let mut client = connect_any(&addrs, i, &key).await;
            let mut got = HashSet::new();
            let mut redelivered = 0u64;
            while let Ok(Ok(event)) =
                tokio::time::timeout(Duration::from_secs(3), client.recv()).await
            {
                if let SignalingEvent::Message(m) = event {
                    if !got.insert(m.id) {
                        redelivered += 1;
                    }
                }
            }
            (got, redelivered)
        }));
    }
    // Give the online ones time to drain, then stop them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut received: Vec<HashSet<MessageId>> = Vec::new();
    let mut redelivered = 0;
    for task in online.into_iter().chain(offline) {
        let (got, r) = task.await.expect("recipient task");
        received.push(got);
        redelivered += r;
    }
    let mut lost = 0;
    for (recipient, id) in &accepted {
        let i = recipient_ids
            .iter()
            .position(|r| r == recipient)
            .expect("a recipient");
        if !received[i].contains(id) {
            lost += 1;
        }
    }
    println!(
        "chaos: {} accepted, {failed} sends failed (node killed), {lost} lost, {redelivered} redeliveries filtered, 5 node kills",
        accepted.len()
    );
    // Every kill hit live traffic: at least one sender's send failed each time.
    assert!(failed >= 5, "the kills hit live traffic");
    assert!(accepted.len() > SENDERS * PER_SENDER, "most sends accepted");
    assert_eq!(lost, 0, "every accepted envelope was delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_replayed_through_another_node_is_refused() {
    if !servers_present() {
        return;
    }
    let pg = Postgres::start();
    let nats = Nats::start();
    let dir = TempDir::new("cluster-replay");
    let hour = Duration::from_secs(3600);
    let a = start_node(&dir, &pg, &nats, hour).await;
    let b = start_node(&dir, &pg, &nats, hour).await;
    let alice = hush_signaling::device::generate_device_key();
    let bob = registered_key(a.0).await.device_id();
    let e = hush_signaling::Envelope {
        id: rand::random(),
        sender: alice.device_id(),
        recipient: bob,
        timestamp_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
        kind: hush_signaling::CiphertextKind::Signal,
        ciphertext: vec![0xab; 64],
    };
    let on_a = connect(Wire::Tcp, a.0, &alice).await;
    on_a.send_envelope(e.clone())
        .await
        .expect("first copy accepted");
    // The same envelope through the other node (whose in-memory replay cache never saw it):
    // refused by the replay state in PostgreSQL.
    let on_b = connect(Wire::Tcp, b.0, &alice).await;
    match on_b.send_envelope(e).await {
        Err(hush_signaling::Error::Relay { code, .. }) => assert_eq!(
            code,
            hush_signaling::proto::relay::ErrorCode::Duplicate,
            "replay refused"
        ),
        other => panic!("replay through node b not refused: {other:?}"),
    }
    a.1.shutdown();
    b.1.shutdown();
}

/// An envelope from `from` to `to` with a fresh message id.
fn raw_envelope(from: DeviceId, to: DeviceId) -> hush_signaling::Envelope {
    hush_signaling::Envelope {
        id: rand::random(),
        sender: from,
        recipient: to,
        timestamp_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
        kind: hush_signaling::CiphertextKind::Signal,
        ciphertext: vec![0xab; 64],
    }
}

/// Fires `n` sends from `key` to `to` at once on one connection; the relay's answers in order.
async fn burst(
    addr: SocketAddr,
    key: &dyn DeviceSigner,
    to: DeviceId,
    n: usize,
) -> Vec<Result<(), hush_signaling::Error>> {
    let conn = connect(Wire::Tcp, addr, key).await;
    let sends = (0..n).map(|_| conn.send_envelope(raw_envelope(key.device_id(), to)));
    futures_util::future::join_all(sends).await
}

/// The relay's code for a refused send.
fn code(r: &Result<(), hush_signaling::Error>) -> Option<hush_signaling::proto::relay::ErrorCode> {
    match r {
        Err(hush_signaling::Error::Relay { code, .. }) => Some(*code),
        Ok(()) => None,
        Err(other) => panic!("send failed without a relay answer: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_share_commits_and_keep_exact_quotas() {
    use hush_signaling::proto::relay::ErrorCode;
    if !servers_present() {
        return;
    }
    let pg = Postgres::start();
    let nats = Nats::start();
    let dir = TempDir::new("cluster-batch");
    let mut config = test_config(dir.path());
    config.max_queue_per_sender = 10;
    config.max_queue_per_device = 1000;
    // The queue-depth gauge is counted in PostgreSQL at each sweep.
    config.sweep_interval = Duration::from_millis(100);
    config.cluster = Some(ClusterConfig::new(pg.url(), nats.url()));
    let (addr, metrics, handle) = start_relay(config).await;
    let bob = registered_key(addr).await.device_id();
    let senders: Vec<_> = (0..8)
        .map(|_| hush_signaling::device::generate_device_key())
        .collect();
    // 8 connections fire 15 sends each at once to offline Bob: the writers commit them in
    // batches mixing connections, and the per-sender bound holds exactly across a batch.
    let answers =
        futures_util::future::join_all(senders.iter().map(|k| burst(addr, k, bob, 15))).await;
    for answers in &answers {
        let codes: Vec<_> = answers.iter().map(code).collect();
        assert_eq!(
            codes.iter().filter(|c| c.is_none()).count(),
            10,
            "exactly the quota accepted: {codes:?}"
        );
        assert!(
            codes
                .iter()
                .flatten()
                .all(|c| *c == ErrorCode::SenderQuotaExceeded),
            "the rest refused by the sender quota: {codes:?}"
        );
    }
    let text = common::scrape(metrics).await;
    let stored = common::metric(&text, "hush_relay_envelopes_stored_total");
    let commits = common::metric(&text, "hush_relay_store_commits_total");
    assert_eq!(stored, 80);
    assert!(
        commits >= 1 && commits < stored,
        "sends from many connections share commits: {stored} envelopes in {commits} commits"
    );
    // Bob is offline: all 80 wait in the cluster's queue, and the gauge says so.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let depth = common::metric(&common::scrape(metrics).await, "hush_relay_queue_depth");
        if depth == 80 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "queue depth {depth}, expected 80"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_evicts_the_heaviest_sender_inside_one_batch() {
    use hush_signaling::proto::relay::ErrorCode;
    if !servers_present() {
        return;
    }
    let pg = Postgres::start();
    let nats = Nats::start();
    let dir = TempDir::new("cluster-evict");
    let mut config = test_config(dir.path());
    config.max_queue_per_sender = 12;
    config.max_queue_per_device = 12;
    config.cluster = Some(ClusterConfig::new(pg.url(), nats.url()));
    let (addr, metrics, handle) = start_relay(config).await;
    let bob = registered_key(addr).await.device_id();
    let heavy = hush_signaling::device::generate_device_key();
    let light = hush_signaling::device::generate_device_key();
    let first = burst(addr, &heavy, bob, 12).await;
    assert!(
        first.iter().all(Result::is_ok),
        "the queue fills: {first:?}"
    );
    // Bob's queue is full of the heavy sender's envelopes. The light sender's seven land in
    // one or more batches; each is checked against the queue as the ones before it left it:
    // evict while the heavy sender has at least two more queued (12 vs 0, 11 vs 1, ... 7 vs
    // 5), then the seventh finds 6 vs 6 and is refused.
    let second = burst(addr, &light, bob, 7).await;
    let codes: Vec<_> = second.iter().map(code).collect();
    assert_eq!(
        codes.iter().filter(|c| c.is_none()).count(),
        6,
        "six evict one each: {codes:?}"
    );
    assert!(
        codes.contains(&Some(ErrorCode::QueueFull)),
        "the seventh is refused: {codes:?}"
    );
    let text = common::scrape(metrics).await;
    assert_eq!(
        common::metric(&text, "hush_relay_envelopes_evicted_total"),
        6
    );
    handle.shutdown();
}

/// A recipient connected to the sending node gets its envelopes pushed at admission (before
/// the commit); its acknowledgements, whether they come before the envelope's batch is written
/// (never queued) or while it is written (deleted after the commit), leave nothing queued, and
/// every send is answered "accepted". The push does not go through NATS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_node_pushes_at_admission_and_acknowledged_envelopes_leave_nothing_queued() {
    if !servers_present() {
        return;
    }
    let pg = Postgres::start();
    let mut nats = Nats::start();
    let dir = TempDir::new("cluster-local");
    // Polling only every hour: what Bob gets within the test's waits was pushed.
    let (addr, handle) = start_node(&dir, &pg, &nats, Duration::from_secs(3600)).await;
    let alice_key = registered_key(addr).await;
    let bob_key = registered_key(addr).await;
    let (alice_id, bob_id) = (alice_key.device_id(), bob_key.device_id());
    let mut alice = client(addr, &alice_key).await;
    let mut bob = client(addr, &bob_key).await;
    let mut sent = HashSet::new();
    let mut got = HashSet::new();
    for n in 0..40u8 {
        sent.insert(send(&mut alice, bob_id, n).await);
        // Bob reads (and so acknowledges) as he goes, every few sends.
        if n % 4 == 3 {
            while got.len() < sent.len() {
                let (from, id) = next_message(&mut bob, Duration::from_secs(5))
                    .await
                    .expect("pushed to Bob");
                assert_eq!(from, alice_id);
                assert!(got.insert(id), "delivered once");
            }
        }
    }
    assert_eq!(got, sent);
    assert_eq!(
        next_message(&mut bob, Duration::from_millis(300)).await,
        None
    );
    // Without NATS (and with no polling) Bob still gets what is sent through his node: it is
    // pushed at admission, not announced.
    nats.kill();
    for n in 40..45u8 {
        let id = send(&mut alice, bob_id, n).await;
        assert_eq!(
            next_message(&mut bob, Duration::from_secs(5)).await,
            Some((alice_id, id)),
            "pushed at admission"
        );
    }
    // (Reading on also sends the last acknowledgement.)
    assert_eq!(
        next_message(&mut bob, Duration::from_millis(300)).await,
        None
    );
    drop(bob);
    let mut queued = u64::MAX;
    for _ in 0..50 {
        let again = connect(Wire::Tcp, addr, &bob_key).await;
        queued = again.queued_at_auth();
        if queued == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(queued, 0, "acknowledged envelopes are not queued");
    // Offline now: the next envelope is queued and found on reconnect.
    let id = send(&mut alice, bob_id, 99).await;
    let bob_relay = connect(Wire::Tcp, addr, &bob_key).await;
    assert_eq!(bob_relay.queued_at_auth(), 1);
    let mut bob = SignalingClient::new(bob_relay, ToySealer { local: bob_id });
    assert_eq!(
        next_message(&mut bob, Duration::from_secs(5)).await,
        Some((alice_id, id))
    );
    handle.shutdown();
}

/// A recipient on another node gets its envelope at admission, over NATS, while the sending
/// node's commit is still in flight (held back 1.5 s by `commit_delay`; polling every hour),
/// and its acknowledgement, which reaches the database before that commit, leaves nothing
/// queued: the envelope is not delivered again when the recipient reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_delivery_at_admission_and_an_ack_before_the_commit_leaves_nothing_queued() {
    if !servers_present() {
        return;
    }
    let pg = Postgres::start();
    let nats = Nats::start();
    let dir = TempDir::new("cluster-cross");
    let hour = Duration::from_secs(3600);
    let slow = {
        let mut config = test_config(dir.path());
        let mut cluster = ClusterConfig::new(pg.url(), nats.url());
        cluster.poll_interval = hour;
        cluster.commit_delay = Duration::from_millis(1500);
        config.cluster = Some(cluster);
        start_relay(config).await
    };
    let (a_addr, a_handle) = (slow.0, slow.2);
    let (b_addr, b_handle) = start_node(&dir, &pg, &nats, hour).await;
    let alice_key = registered_key(b_addr).await;
    let bob_key = registered_key(b_addr).await;
    let (alice_id, bob_id) = (alice_key.device_id(), bob_key.device_id());
    let mut alice = client(a_addr, &alice_key).await;
    let mut bob = client(b_addr, &bob_key).await;
    for n in 0..3u8 {
        let started = Instant::now();
        let sending = tokio::spawn(async move {
            let id = send(&mut alice, bob_id, n).await;
            (alice, id)
        });
        // Before the commit (1.5 s away): pushed by Bob's node from the admission notice.
        let (from, got) = next_message(&mut bob, Duration::from_millis(1000))
            .await
            .expect("delivered before the commit");
        assert_eq!(from, alice_id);
        assert!(started.elapsed() < Duration::from_millis(1500));
        // Reading on sends the acknowledgement, still before the commit.
        assert_eq!(
            next_message(&mut bob, Duration::from_millis(200)).await,
            None
        );
        let (back, id) = sending.await.expect("send task");
        alice = back;
        assert_eq!(got, id);
        assert!(
            started.elapsed() >= Duration::from_millis(1500),
            "held back"
        );
    }
    drop(bob);
    // Acknowledged before their commits: none of them was queued, none comes again.
    let bob_relay = connect(Wire::Tcp, b_addr, &bob_key).await;
    assert_eq!(
        bob_relay.queued_at_auth(),
        0,
        "acknowledged envelopes are not queued"
    );
    let mut bob = SignalingClient::new(bob_relay, ToySealer { local: bob_id });
    assert_eq!(
        next_message(&mut bob, Duration::from_millis(300)).await,
        None
    );
    // An envelope Bob has not acknowledged is still queued and found on reconnect.
    drop(bob);
    let id = send(&mut alice, bob_id, 9).await;
    let bob_relay = connect(Wire::Tcp, b_addr, &bob_key).await;
    assert_eq!(bob_relay.queued_at_auth(), 1);
    let mut bob = SignalingClient::new(bob_relay, ToySealer { local: bob_id });
    assert_eq!(
        next_message(&mut bob, Duration::from_secs(5)).await,
        Some((alice_id, id))
    );
    a_handle.shutdown();
    b_handle.shutdown();
}

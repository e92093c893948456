//! Hostile and broken clients: each is refused with a clear error, and the relay keeps serving
//! the well-behaved client connected alongside.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{
    connect, metric, registered_key, start_relay, test_config, try_connect, TempDir, ToySealer,
    Wire,
};
use futures_util::StreamExt;
use hush_crypto::{Backend, Device, DeviceStore, MemoryBackend, Table};
use hush_signaling::crypto::SignalSealer;
use hush_signaling::device::{generate_device_key, sign_challenge, ChannelBinding, AUTH_NONCE_LEN};
use hush_signaling::frame::{
    decode_server_frame, encode_client_frame, length_prefixed, RelayFrameCodec, TCP_PREAMBLE,
};
use hush_signaling::proto::relay::{self as pb, client_frame, server_frame, ErrorCode};
use hush_signaling::transport::{RelayClient, RelayClientConfig, RELAY_PROTOCOL_VERSION};
use hush_signaling::{
    CallMessage, CiphertextKind, DeviceId, DeviceSigner, Envelope, Error, MemoryNetwork,
    SignalingClient, SignalingEvent, Transport,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, FramedRead};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn envelope(from: DeviceId, to: DeviceId) -> Envelope {
    Envelope {
        id: rand::random(),
        sender: from,
        recipient: to,
        timestamp_ms: now_ms(),
        kind: CiphertextKind::Signal,
        ciphertext: vec![0xab; 64],
    }
}

fn relay_code(e: &Error) -> ErrorCode {
    match e {
        Error::Relay { code, .. } => *code,
        other => panic!("expected a relay error, got {other:?}"),
    }
}

/// A hand-driven TCP client for sending what RelayClient never would.
struct Raw {
    /// Reads with the relay frame decoder; writes go straight to the socket.
    stream: Framed<TcpStream, RelayFrameCodec>,
}

impl Raw {
    async fn connect(addr: std::net::SocketAddr) -> Self {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(&TCP_PREAMBLE).await.unwrap();
        Self {
            stream: Framed::new(stream, RelayFrameCodec::new(1 << 20)),
        }
    }

    async fn send_bytes(&mut self, bytes: &[u8]) {
        // The relay may already have closed; a failed write is fine for these tests.
        let _ = self.stream.get_mut().write_all(bytes).await;
    }

    async fn send(&mut self, frame: client_frame::Frame) {
        let bytes = length_prefixed(&encode_client_frame(frame)).unwrap();
        self.send_bytes(&bytes).await;
    }

    async fn recv(&mut self) -> Option<server_frame::Frame> {
        let frame = tokio::time::timeout(Duration::from_secs(5), self.stream.next())
            .await
            .expect("relay answers in time")?
            .ok()?;
        Some(decode_server_frame(&frame).unwrap())
    }

    /// Reads until the relay closes, returning the last error frame seen.
    async fn closing_error(&mut self) -> ErrorCode {
        let mut code = None;
        while let Some(f) = self.recv().await {
            if let server_frame::Frame::Error(e) = f {
                code = Some(ErrorCode::try_from(e.code).unwrap());
            }
        }
        code.expect("an error frame before close")
    }

    async fn authenticate(&mut self, key: &dyn DeviceSigner) {
        let Some(server_frame::Frame::Challenge(c)) = self.recv().await else {
            panic!("challenge")
        };
        let nonce: [u8; AUTH_NONCE_LEN] = c.nonce.try_into().unwrap();
        let binding = ChannelBinding::RelayKey(c.relay_key.try_into().unwrap());
        self.send(client_frame::Frame::Auth(pb::AuthResponse {
            version: RELAY_PROTOCOL_VERSION,
            device_key: key.device_id().as_bytes().to_vec(),
            signature: sign_challenge(key, &nonce, &binding).to_vec(),
            binding_type: binding.binding_type() as i32,
        }))
        .await;
        assert!(matches!(
            self.recv().await,
            Some(server_frame::Frame::AuthOk(_))
        ));
    }
}

/// A healthy client that must keep working next to the hostile ones.
async fn bystander_still_served(addr: std::net::SocketAddr, key: &dyn DeviceSigner) {
    let client = connect(Wire::Tcp, addr, key).await;
    client.ping().await.expect("relay still serves others");
    let peer = registered_key(addr).await.device_id();
    client
        .send_envelope(envelope(key.device_id(), peer))
        .await
        .expect("send still works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_client_is_refused() {
    let dir = TempDir::new("unauth");
    let (addr, _, _shutdown) = start_relay(test_config(dir.path())).await;
    let good = generate_device_key();
    let good_conn = connect(Wire::Tcp, addr, &good).await;

    let mut raw = Raw::connect(addr).await;
    assert!(matches!(
        raw.recv().await,
        Some(server_frame::Frame::Challenge(_))
    ));
    let victim = generate_device_key().device_id();
    raw.send(client_frame::Frame::Send(pb::Send {
        request_id: 1,
        envelope: Some(envelope(victim, good.device_id()).into_proto()),
    }))
    .await;
    assert_eq!(raw.closing_error().await, ErrorCode::Unauthenticated);

    good_conn.ping().await.unwrap();
    bystander_still_served(addr, &generate_device_key()).await;
}

/// Claims someone else's device id but can only sign with its own key.
struct Impostor {
    claimed: DeviceId,
    real: ed25519_dalek::SigningKey,
}

impl DeviceSigner for Impostor {
    fn device_id(&self) -> DeviceId {
        self.claimed
    }
    fn sign_challenge(&self, challenge: &[u8]) -> [u8; 64] {
        self.real.sign_challenge(challenge)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_fails_authentication() {
    let dir = TempDir::new("impostor");
    let (addr, _, _shutdown) = start_relay(test_config(dir.path())).await;
    let victim = generate_device_key();
    let impostor = Impostor {
        claimed: victim.device_id(),
        real: generate_device_key(),
    };
    for wire in [Wire::Tcp, Wire::Ws] {
        let err = try_connect(wire, addr, &impostor)
            .await
            .expect_err("impostor refused");
        assert_eq!(relay_code(&err), ErrorCode::AuthFailed);
    }
    bystander_still_served(addr, &victim).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_sender_is_refused_and_connection_survives() {
    let dir = TempDir::new("forged");
    let (addr, _, _shutdown) = start_relay(test_config(dir.path())).await;
    let alice = generate_device_key();
    let bob = registered_key(addr).await;
    let mallory = generate_device_key();
    let mallory_conn = connect(Wire::Tcp, addr, &mallory).await;
    let mut bob_conn = connect(Wire::Tcp, addr, &bob).await;

    let forged = envelope(alice.device_id(), bob.device_id());
    let err = mallory_conn
        .send_envelope(forged)
        .await
        .expect_err("forged sender refused");
    assert_eq!(relay_code(&err), ErrorCode::ForgedSender);
    // Mallory's connection is still usable for legitimate requests.
    mallory_conn.ping().await.unwrap();
    mallory_conn
        .send_envelope(envelope(mallory.device_id(), bob.device_id()))
        .await
        .unwrap();
    // Bob receives only Mallory's honest envelope.
    let got = tokio::time::timeout(Duration::from_secs(5), Transport::recv(&mut bob_conn))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.envelope.sender, mallory.device_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_and_stale_envelopes_are_refused() {
    let dir = TempDir::new("replay");
    let (addr, _, _shutdown) = start_relay(test_config(dir.path())).await;
    let alice = generate_device_key();
    let bob = registered_key(addr).await.device_id();
    let conn = connect(Wire::Tcp, addr, &alice).await;
    let e = envelope(alice.device_id(), bob);
    conn.send_envelope(e.clone()).await.unwrap();
    assert_eq!(
        relay_code(&conn.send_envelope(e.clone()).await.unwrap_err()),
        ErrorCode::Duplicate
    );
    // The replay cache outlives the connection.
    drop(conn);
    let conn = connect(Wire::Tcp, addr, &alice).await;
    assert_eq!(
        relay_code(&conn.send_envelope(e).await.unwrap_err()),
        ErrorCode::Duplicate
    );
    let mut old = envelope(alice.device_id(), bob);
    old.timestamp_ms -= 3_600_000;
    assert_eq!(
        relay_code(&conn.send_envelope(old).await.unwrap_err()),
        ErrorCode::Stale
    );
    let mut future = envelope(alice.device_id(), bob);
    future.timestamp_ms += 3_600_000;
    assert_eq!(
        relay_code(&conn.send_envelope(future).await.unwrap_err()),
        ErrorCode::Stale
    );
    conn.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reaching_the_recipient_is_dropped_by_the_client() {
    // Whatever a relay does, the recipient's SignalingClient drops a replayed envelope.
    let net = MemoryNetwork::new();
    net.start_recording();
    let (a, b) = (
        generate_device_key().device_id(),
        generate_device_key().device_id(),
    );
    let mut alice = SignalingClient::new(net.endpoint(a), ToySealer { local: a });
    let mut bob = SignalingClient::new(net.endpoint(b), ToySealer { local: b });
    alice
        .send(b, CallMessage::Busy { call_id: [3; 16] })
        .await
        .unwrap();
    assert!(matches!(
        bob.recv().await.unwrap(),
        SignalingEvent::Message(_)
    ));
    let captured = net.recorded().pop().unwrap();
    net.inject(captured.clone()).unwrap();
    match bob.recv().await.unwrap() {
        SignalingEvent::Dropped {
            reason: Error::Replay,
            ..
        } => {}
        other => panic!("replay not dropped: {other:?}"),
    }
    // A relabelled copy (fresh id and time to dodge the replay cache): the sealed routing
    // copy no longer matches the envelope.
    let mut redated = captured;
    redated.id = rand::random();
    redated.timestamp_ms += 1;
    net.inject(redated).unwrap();
    match bob.recv().await.unwrap() {
        SignalingEvent::Dropped {
            reason: Error::Mismatch(_),
            ..
        } => {}
        other => panic!("re-dated envelope not dropped: {other:?}"),
    }
    assert_eq!(bob.stats().received, 1);
    assert_eq!(bob.stats().dropped_replay, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_and_garbage_frames_close_only_that_connection() {
    let dir = TempDir::new("garbage");
    let mut config = test_config(dir.path());
    config.max_frame_len = 4096;
    let (addr, _, _shutdown) = start_relay(config).await;
    let good = generate_device_key();
    let good_conn = connect(Wire::Tcp, addr, &good).await;

    // Oversize length prefix after authenticating.
    let mut raw = Raw::connect(addr).await;
    raw.authenticate(&generate_device_key()).await;
    raw.send_bytes(&(1u32 << 20).to_be_bytes()).await;
    assert_eq!(raw.closing_error().await, ErrorCode::FrameTooLarge);

    // Oversize before authenticating.
    let mut raw = Raw::connect(addr).await;
    raw.send_bytes(&u32::MAX.to_be_bytes()).await;
    assert_eq!(raw.closing_error().await, ErrorCode::FrameTooLarge);

    // Garbage protobuf after authenticating.
    let mut raw = Raw::connect(addr).await;
    raw.authenticate(&generate_device_key()).await;
    raw.send_bytes(&length_prefixed(&[0xff; 32]).unwrap()).await;
    assert_eq!(raw.closing_error().await, ErrorCode::MalformedFrame);

    // Wrong preamble: closed without crashing anything.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"\x16\x03\x01\x00garbage").await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut s, &mut buf),
    )
    .await
    .unwrap()
    .unwrap_or(0);
    assert_eq!(n, 0, "connection closed");

    // Oversize over WebSocket.
    let ws = connect(Wire::Ws, addr, &generate_device_key()).await;
    ws.dangerous_send_raw_frame(vec![0; 8192]).await.unwrap();
    let err = ws
        .ping()
        .await
        .expect_err("connection closed after oversize message");
    assert!(
        matches!(err, Error::Closed | Error::Relay { .. }),
        "{err:?}"
    );

    // An unknown frame type from a newer client is refused, the connection stays.
    good_conn
        .dangerous_send_raw_frame(vec![0xf2, 0x01, 0x00])
        .await
        .unwrap();
    good_conn.ping().await.unwrap();
    bystander_still_served(addr, &good).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_and_queue_bound_answer_with_errors() {
    let dir = TempDir::new("limits");
    let mut config = test_config(dir.path());
    config.rate_limit_per_sec = 1;
    config.rate_limit_burst = 5;
    config.max_queue_per_device = 3;
    let (addr, _, _shutdown) = start_relay(config).await;
    let alice = generate_device_key();
    let bob = registered_key(addr).await.device_id();
    let conn = connect(Wire::Tcp, addr, &alice).await;
    let mut codes = Vec::new();
    for _ in 0..8 {
        codes.push(
            match conn.send_envelope(envelope(alice.device_id(), bob)).await {
                Ok(()) => ErrorCode::Unspecified,
                Err(e) => relay_code(&e),
            },
        );
    }
    assert_eq!(&codes[..3], &[ErrorCode::Unspecified; 3], "{codes:?}");
    assert_eq!(&codes[3..5], &[ErrorCode::QueueFull; 2], "{codes:?}");
    assert_eq!(&codes[5..], &[ErrorCode::RateLimited; 3], "{codes:?}");
    // Others are unaffected by Alice's limit.
    bystander_still_served(addr, &generate_device_key()).await;
}

/// Reads until the relay closes the stream (EOF or reset); panics if it stays open 10 s.
async fn wait_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 256];
    loop {
        let n = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read(stream, &mut buf),
        )
        .await
        .expect("relay closes the connection")
        .unwrap_or(0);
        if n == 0 {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_trickling_unauthenticated_connections_are_closed() {
    let dir = TempDir::new("auth-timeout");
    let mut config = test_config(dir.path());
    config.handshake_timeout = Duration::from_millis(300);
    let (addr, metrics, _shutdown) = start_relay(config).await;

    // Connects and sends nothing at all.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    wait_closed(&mut idle).await;

    // Sends the preamble, takes the challenge, then trickles a frame one byte at a time,
    // never completing it: the deadline covers the whole unauthenticated phase.
    let mut trickler = Raw::connect(addr).await;
    assert!(matches!(
        trickler.recv().await,
        Some(server_frame::Frame::Challenge(_))
    ));
    let trickle = async {
        for b in [0u8, 0, 1, 0].into_iter().chain(std::iter::repeat(0x0a)) {
            if trickler.stream.get_mut().write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), trickle).await;
    assert_eq!(trickler.closing_error().await, ErrorCode::Timeout);

    // Starts a WebSocket upgrade and stalls halfway through the request head.
    let mut ws = TcpStream::connect(addr).await.unwrap();
    ws.write_all(b"GET / HTTP/1.1\r\nHost: relay\r\n")
        .await
        .unwrap();
    wait_closed(&mut ws).await;

    // The relay's gauge drops once each connection task has ended.
    let mut open = u64::MAX;
    for _ in 0..100 {
        open = metric(&common::scrape(metrics).await, "hush_relay_connections");
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(open, 0, "nothing left open");
    // Authenticated clients are not subject to it.
    let key = generate_device_key();
    let client = connect(Wire::Tcp, addr, &key).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    client.ping().await.expect("authenticated connection stays");
}

/// Connects from `source` (any 127.x.y.z address works on Linux loopback).
async fn connect_from(source: [u8; 4], addr: std::net::SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::from((source, 0)))
        .unwrap();
    socket.connect(addr).await.unwrap()
}

/// Whether the relay serves a connection from `source` (sends its challenge) or drops it.
async fn served_from(source: [u8; 4], addr: std::net::SocketAddr) -> Option<TcpStream> {
    let mut stream = connect_from(source, addr).await;
    stream.write_all(&TCP_PREAMBLE).await.ok()?;
    // Only the challenge comes before the client answers: nothing is read past it.
    let mut frames = FramedRead::new(&mut stream, RelayFrameCodec::new(1 << 16));
    let frame = tokio::time::timeout(Duration::from_secs(5), frames.next())
        .await
        .expect("relay answers or closes in time")?
        .ok()?;
    drop(frames);
    matches!(
        decode_server_frame(&frame),
        Ok(server_frame::Frame::Challenge(_))
    )
    .then_some(stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_connection_limit_refuses_only_that_address() {
    let dir = TempDir::new("per-ip");
    let mut config = test_config(dir.path());
    config.max_connections_per_ip = 2;
    let (addr, metrics, _shutdown) = start_relay(config).await;
    let crowded = [127, 0, 0, 7];

    let first = served_from(crowded, addr).await.expect("first served");
    let second = served_from(crowded, addr).await.expect("second served");
    assert!(
        served_from(crowded, addr).await.is_none(),
        "third from the same address is refused"
    );
    assert!(
        metric(
            &common::scrape(metrics).await,
            "hush_relay_connections_refused_total"
        ) >= 1
    );
    // Another address is unaffected, and so is an authenticated client.
    let _other = served_from([127, 0, 0, 8], addr)
        .await
        .expect("other address served");
    bystander_still_served(addr, &generate_device_key()).await;

    // A slot frees when a connection from the address closes.
    drop(first);
    let mut again = None;
    for _ in 0..100 {
        again = served_from(crowded, addr).await;
        if again.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "served again after one closed");
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_of_a_device_replaces_the_first() {
    let dir = TempDir::new("replace");
    let (addr, _, _shutdown) = start_relay(test_config(dir.path())).await;
    let (alice, bob) = (generate_device_key(), registered_key(addr).await);
    let first = connect(Wire::Tcp, addr, &bob).await;
    let mut second = connect(Wire::Tcp, addr, &bob).await;
    // The first connection is told to close and does.
    let mut closed = None;
    for _ in 0..100 {
        if let Err(e) = first.ping().await {
            closed = Some(e);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        matches!(closed, Some(Error::Closed | Error::Relay { .. })),
        "{closed:?}"
    );
    // Deliveries go to the new one.
    let sender = connect(Wire::Tcp, addr, &alice).await;
    let sent = envelope(alice.device_id(), bob.device_id());
    sender.send_envelope(sent.clone()).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), Transport::recv(&mut second))
        .await
        .expect("delivered in time")
        .unwrap();
    assert_eq!(got.envelope, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_every_connection() {
    let dir = TempDir::new("shutdown");
    let (addr, _, shutdown) = start_relay(test_config(dir.path())).await;
    let clients = [
        connect(Wire::Tcp, addr, &generate_device_key()).await,
        connect(Wire::Ws, addr, &generate_device_key()).await,
    ];
    for c in &clients {
        c.ping().await.unwrap();
    }
    shutdown.shutdown();
    for c in &clients {
        let mut result = Ok(());
        for _ in 0..100 {
            result = c.ping().await;
            if result.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            matches!(result, Err(Error::Closed | Error::Relay { .. })),
            "{result:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_stops_reading_is_cut_off_and_reloads_its_queue() {
    let dir = TempDir::new("slow-consumer");
    let mut config = test_config(dir.path());
    config.delivery_buffer = 4;
    config.rate_limit_per_sec = 100_000;
    config.rate_limit_burst = 100_000;
    // One sender fills Bob's queue here: lift the per-sender quota.
    config.max_queue_per_sender = 1000;
    let (addr, metrics, _shutdown) = start_relay(config).await;
    let (alice, bob) = (generate_device_key(), registered_key(addr).await);
    // Bob authenticates, then never reads: the relay's socket buffers fill, then his
    // delivery queue, and the relay cuts him off instead of buffering without bound.
    let mut stalled = Raw::connect(addr).await;
    stalled.authenticate(&bob).await;
    let sender = connect(Wire::Tcp, addr, &alice).await;
    const N: usize = 300;
    let sent: Vec<Envelope> = (0..N)
        .map(|_| {
            let mut e = envelope(alice.device_id(), bob.device_id());
            e.ciphertext = vec![0x5c; 40 * 1024];
            e
        })
        .collect();
    let answers =
        futures_util::future::join_all(sent.iter().map(|e| sender.send_envelope(e.clone()))).await;
    assert!(answers.iter().all(Result::is_ok));
    assert!(
        metric(
            &common::scrape(metrics).await,
            "hush_relay_slow_consumers_total"
        ) >= 1,
        "cut off"
    );
    bystander_still_served(addr, &generate_device_key()).await;
    drop(stalled);

    // Every envelope is still queued (none was acknowledged) and arrives once on reconnect.
    let mut bob_again = None;
    for _ in 0..100 {
        let c = connect(Wire::Tcp, addr, &bob).await;
        if c.queued_at_auth() == N as u64 {
            bob_again = Some(c);
            break;
        }
        // The stalled connection may not have been unregistered yet.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut bob_again = bob_again.expect("whole queue reloaded");
    let mut got = Vec::new();
    for _ in 0..N {
        let r = tokio::time::timeout(Duration::from_secs(10), Transport::recv(&mut bob_again))
            .await
            .expect("delivered in time")
            .unwrap();
        Transport::ack(&mut bob_again, r.tag).await.unwrap();
        got.push(r.envelope.id);
    }
    let mut want: Vec<_> = sent.iter().map(|e| e.id).collect();
    want.sort_unstable();
    got.sort_unstable();
    assert_eq!(got, want, "each exactly once");
}

// ---- Bounded resources (issue 13, item 2) ----

/// Sends every envelope (pipelined); the error code of each (`Unspecified` for accepted).
async fn send_all(conn: &RelayClient, envelopes: Vec<Envelope>) -> Vec<ErrorCode> {
    futures_util::future::join_all(envelopes.into_iter().map(|e| conn.send_envelope(e)))
        .await
        .iter()
        .map(|r| match r {
            Ok(()) => ErrorCode::Unspecified,
            Err(e) => relay_code(e),
        })
        .collect()
}

fn count(codes: &[ErrorCode], code: ErrorCode) -> usize {
    codes.iter().filter(|&&c| c == code).count()
}

/// Size of the relay's database files (main file, WAL and shared memory) in `dir`.
fn database_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_sender_is_held_to_its_quota_and_an_honest_offer_gets_through() {
    let dir = TempDir::new("sender-quota");
    let mut config = test_config(dir.path());
    config.rate_limit_per_sec = 100_000;
    config.rate_limit_burst = 100_000;
    // Below what one sender could send: without a per-sender quota one flooder fills it.
    config.max_queue_per_device = 300;
    let (addr, metrics, _shutdown) = start_relay(config).await;
    let victim = registered_key(addr).await;
    let mallory = generate_device_key();
    let flooder = connect(Wire::Tcp, addr, &mallory).await;
    let flood = (0..400)
        .map(|_| envelope(mallory.device_id(), victim.device_id()))
        .collect();
    let codes = send_all(&flooder, flood).await;
    // The default quota: 100 of Mallory's envelopes queued for the victim, the rest refused
    // with a code that says it is her quota, not the victim's queue.
    assert_eq!(count(&codes, ErrorCode::Unspecified), 100, "{codes:?}");
    assert_eq!(count(&codes, ErrorCode::SenderQuotaExceeded), 300);
    assert!(
        metric(
            &common::scrape(metrics).await,
            "hush_relay_sender_quota_refusals_total"
        ) >= 300
    );

    // Alice's call offer still gets through while Mallory keeps flooding.
    let alice = generate_device_key();
    let mut alice_client = SignalingClient::new(
        connect(Wire::Tcp, addr, &alice).await,
        ToySealer {
            local: alice.device_id(),
        },
    );
    let more = (0..50)
        .map(|_| envelope(mallory.device_id(), victim.device_id()))
        .collect();
    let (refused, offer) = tokio::join!(
        send_all(&flooder, more),
        alice_client.send(victim.device_id(), CallMessage::Busy { call_id: [5; 16] })
    );
    assert_eq!(count(&refused, ErrorCode::SenderQuotaExceeded), 50);
    offer.expect("an honest sender's offer is accepted during the flood");

    // The victim gets Mallory's 100 and Alice's one.
    let mut victim_conn = connect(Wire::Tcp, addr, &victim).await;
    assert_eq!(victim_conn.queued_at_auth(), 101);
    let mut from_alice = 0;
    for _ in 0..101 {
        let r = tokio::time::timeout(Duration::from_secs(10), Transport::recv(&mut victim_conn))
            .await
            .expect("delivered in time")
            .unwrap();
        if r.envelope.sender == alice.device_id() {
            from_alice += 1;
        }
    }
    assert_eq!(from_alice, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooders_with_many_keys_share_a_full_queue_and_an_honest_offer_still_gets_through() {
    let dir = TempDir::new("sybil-flood");
    let mut config = test_config(dir.path());
    config.rate_limit_per_sec = 100_000;
    config.rate_limit_burst = 100_000;
    config.max_queue_per_device = 200;
    let (addr, metrics, _shutdown) = start_relay(config).await;
    let victim = registered_key(addr).await;
    // Four keys, each up to its quota of 100: twice what the victim's queue holds.
    let mut accepted = 0;
    for _ in 0..4 {
        let key = generate_device_key();
        let conn = connect(Wire::Tcp, addr, &key).await;
        let flood = (0..100)
            .map(|_| envelope(key.device_id(), victim.device_id()))
            .collect();
        accepted += count(&send_all(&conn, flood).await, ErrorCode::Unspecified);
    }
    assert!(accepted >= 200, "{accepted}");
    // The queue is full; Alice, with nothing queued, takes the place of the oldest envelope
    // of a flooder with the most queued.
    let alice = generate_device_key();
    let mut alice_client = SignalingClient::new(
        connect(Wire::Tcp, addr, &alice).await,
        ToySealer {
            local: alice.device_id(),
        },
    );
    alice_client
        .send(victim.device_id(), CallMessage::Busy { call_id: [6; 16] })
        .await
        .expect("an honest sender's offer gets through a full queue");
    let text = common::scrape(metrics).await;
    assert!(metric(&text, "hush_relay_envelopes_evicted_total") >= 1);
    assert_eq!(
        metric(&text, "hush_relay_queue_depth"),
        200,
        "still bounded"
    );
    let mut victim_conn = connect(Wire::Tcp, addr, &victim).await;
    assert_eq!(victim_conn.queued_at_auth(), 200);
    let mut from_alice = 0;
    for _ in 0..200 {
        let r = tokio::time::timeout(Duration::from_secs(10), Transport::recv(&mut victim_conn))
            .await
            .expect("delivered in time")
            .unwrap();
        if r.envelope.sender == alice.device_id() {
            from_alice += 1;
        }
    }
    assert_eq!(from_alice, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_leaves_the_database_bounded() {
    let dir = TempDir::new("db-flood");
    let mut config = test_config(dir.path());
    config.rate_limit_per_sec = 100_000;
    config.rate_limit_burst = 100_000;
    let (addr, metrics, _shutdown) = start_relay(config).await;
    let victim = registered_key(addr).await;
    let honest = generate_device_key();
    let honest_conn = connect(Wire::Tcp, addr, &honest).await;
    honest_conn.ping().await.unwrap();
    let before = database_size(dir.path());

    // Mallory sends 4 KiB envelopes to 2000 invented devices and 2000 more to the victim.
    let mallory = generate_device_key();
    let flooder = connect(Wire::Tcp, addr, &mallory).await;
    let big = |to: DeviceId| {
        let mut e = envelope(mallory.device_id(), to);
        e.ciphertext = vec![0x3c; 4096];
        e
    };
    let invented: Vec<_> = (0..2000)
        .map(|_| big(generate_device_key().device_id()))
        .collect();
    let at_victim: Vec<_> = (0..2000).map(|_| big(victim.device_id())).collect();
    let honest_sends: Vec<_> = (0..20)
        .map(|_| envelope(honest.device_id(), victim.device_id()))
        .collect();
    let (to_invented, to_victim, honest_codes) = tokio::join!(
        send_all(&flooder, invented),
        send_all(&flooder, at_victim),
        send_all(&honest_conn, honest_sends)
    );
    assert_eq!(
        count(&to_invented, ErrorCode::UnknownRecipient),
        2000,
        "envelopes for devices without a bundle are refused"
    );
    assert_eq!(count(&to_victim, ErrorCode::Unspecified), 100);
    assert_eq!(
        count(&honest_codes, ErrorCode::Unspecified),
        20,
        "the honest sender's envelopes all go through: {honest_codes:?}"
    );
    let grown = database_size(dir.path()).saturating_sub(before);
    println!("database grew by {grown} bytes for 4000 flooded envelopes of 4 KiB (16 MiB offered)");
    // What was accepted (100 × 4 KiB, plus the honest 20) with room for SQLite's pages and
    // WAL; accepting the flood would take more than 16 MiB.
    assert!(grown < 2 * 1024 * 1024, "database grew by {grown} bytes");
    assert_eq!(
        metric(
            &common::scrape(metrics).await,
            "hush_relay_unknown_recipients_total"
        ),
        2000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_envelopes_expire_on_a_timer() {
    let dir = TempDir::new("sweep");
    let mut config = test_config(dir.path());
    config.max_envelope_age = Duration::from_secs(1);
    config.sweep_interval = Duration::from_millis(100);
    let (addr, metrics, _shutdown) = start_relay(config).await;
    let victim = registered_key(addr).await;
    let alice = generate_device_key();
    let conn = connect(Wire::Tcp, addr, &alice).await;
    let codes = send_all(
        &conn,
        (0..5)
            .map(|_| envelope(alice.device_id(), victim.device_id()))
            .collect(),
    )
    .await;
    assert_eq!(count(&codes, ErrorCode::Unspecified), 5);
    // Nobody sends anything more, and the victim never comes: the sweep alone deletes them.
    let mut depth = u64::MAX;
    for _ in 0..100 {
        depth = metric(&common::scrape(metrics).await, "hush_relay_queue_depth");
        if depth == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(depth, 0, "expired envelopes deleted");
    assert_eq!(
        metric(
            &common::scrape(metrics).await,
            "hush_relay_envelopes_expired_total"
        ),
        5
    );
    let victim_conn = connect(Wire::Tcp, addr, &victim).await;
    assert_eq!(victim_conn.queued_at_auth(), 0, "nothing stale delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_stops_reading_is_disconnected_and_its_slot_freed() {
    let dir = TempDir::new("write-timeout");
    let mut config = test_config(dir.path());
    config.write_timeout = Duration::from_millis(500);
    config.max_queue_per_sender = 1000;
    config.rate_limit_per_sec = 100_000;
    config.rate_limit_burst = 100_000;
    let (addr, metrics, _shutdown) = start_relay(config).await;
    let (alice, bob) = (generate_device_key(), registered_key(addr).await);
    // Bob authenticates, then never reads again.
    let mut stalled = Raw::connect(addr).await;
    stalled.authenticate(&bob).await;
    let sender = connect(Wire::Tcp, addr, &alice).await;
    let flood = (0..300)
        .map(|_| {
            let mut e = envelope(alice.device_id(), bob.device_id());
            e.ciphertext = vec![0x5c; 40 * 1024];
            e
        })
        .collect();
    let codes = send_all(&sender, flood).await;
    assert_eq!(count(&codes, ErrorCode::Unspecified), 300);
    // The relay gives up on Bob's blocked writes and ends his connection (its slot, its
    // per-address count) while he still holds the socket open: Alice's is the only one left.
    let mut open = u64::MAX;
    for _ in 0..100 {
        let text = common::scrape(metrics).await;
        open = metric(&text, "hush_relay_authenticated_connections");
        if open == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(open, 1, "the stalled connection was closed by the relay");
    assert!(
        metric(
            &common::scrape(metrics).await,
            "hush_relay_write_timeouts_total"
        ) >= 1
    );
    bystander_still_served(addr, &generate_device_key()).await;
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_authenticated_connection_is_closed_after_the_idle_timeout() {
    let dir = TempDir::new("idle");
    let mut config = test_config(dir.path());
    config.idle_timeout = Duration::from_millis(400);
    let (addr, metrics, _shutdown) = start_relay(config).await;
    // Pings more often than the idle timeout: stays.
    let pinger = connect(Wire::Tcp, addr, &generate_device_key()).await;
    let mut silent = Raw::connect(addr).await;
    silent.authenticate(&generate_device_key()).await;
    let keep_pinging = async {
        for _ in 0..12 {
            pinger
                .ping()
                .await
                .expect("a client that pings stays connected");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (code, ()) = tokio::join!(silent.closing_error(), keep_pinging);
    assert_eq!(code, ErrorCode::Timeout);
    assert_eq!(
        metric(
            &common::scrape(metrics).await,
            "hush_relay_idle_timeouts_total"
        ),
        1
    );
}

/// A client left idle by its app stays connected past the relay's idle timeout: its keepalive
/// pings count as traffic. Without keepalive the same idle client is cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_keepalive_holds_an_idle_connection_past_the_idle_timeout() {
    let dir = TempDir::new("keepalive");
    let mut config = test_config(dir.path());
    config.idle_timeout = Duration::from_millis(400);
    let (addr, metrics, _shutdown) = start_relay(config).await;
    let with_keepalive = {
        let mut config = RelayClientConfig::default();
        config.keepalive_interval = Some(Duration::from_millis(100));
        RelayClient::connect_tcp(addr, &generate_device_key(), config)
            .await
            .unwrap()
    };
    let without_keepalive = {
        let mut config = RelayClientConfig::default();
        config.keepalive_interval = None;
        RelayClient::connect_tcp(addr, &generate_device_key(), config)
            .await
            .unwrap()
    };
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    with_keepalive
        .ping()
        .await
        .expect("the client with keepalive is still connected");
    assert!(
        without_keepalive.ping().await.is_err(),
        "the idle client without keepalive was closed by the relay"
    );
    assert_eq!(
        metric(
            &common::scrape(metrics).await,
            "hush_relay_idle_timeouts_total"
        ),
        1
    );
}

/// A relay (or a path) that goes silent without closing the TCP connection: the client's
/// keepalive gets no pong, closes the connection, and `recv` fails so the app reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_finds_a_silent_connection_by_its_keepalive() {
    let dir = TempDir::new("keepalive-dead");
    let (relay, _metrics, _shutdown) = start_relay(test_config(dir.path())).await;
    let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let proxy = start_freezing_proxy(relay, frozen.clone()).await;
    let mut config = RelayClientConfig::default();
    config.keepalive_interval = Some(Duration::from_millis(100));
    config.request_timeout = Duration::from_millis(300);
    let mut client = RelayClient::connect_tcp(proxy, &generate_device_key(), config)
        .await
        .unwrap();
    client.ping().await.expect("connected through the proxy");
    frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    let ended = tokio::time::timeout(Duration::from_secs(5), Transport::recv(&mut client)).await;
    assert!(
        matches!(ended, Ok(Err(Error::Closed))),
        "recv should fail once the keepalive finds the connection dead, got {ended:?}"
    );
    assert!(client.ping().await.is_err());
}

/// A TCP proxy to `relay` for one connection that forwards bytes until `frozen` is set, then
/// forwards nothing more in either direction while keeping both sockets open.
async fn start_freezing_proxy(
    relay: std::net::SocketAddr,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::net::SocketAddr {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let upstream = TcpStream::connect(relay).await.unwrap();
        let (client_rx, client_tx) = client.into_split();
        let (upstream_rx, upstream_tx) = upstream.into_split();
        let pump = |mut from: tokio::net::tcp::OwnedReadHalf,
                    mut to: tokio::net::tcp::OwnedWriteHalf,
                    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>| async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match from.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if frozen.load(std::sync::atomic::Ordering::SeqCst) {
                    // Hold both halves open, forwarding nothing.
                    std::future::pending::<()>().await;
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            drop((from, to));
        };
        let up = tokio::spawn(pump(client_rx, upstream_tx, frozen.clone()));
        let down = tokio::spawn(pump(upstream_rx, client_tx, frozen));
        let _ = tokio::join!(up, down);
    });
    addr
}

/// A burst of connections that are all waiting when the relay gets to accept them: it must
/// not serve more than `max_connections` of them.
// One runtime thread: the connections are made (by the kernel, into the listen backlog) while
// the relay cannot run, so it accepts them in one go.
#[tokio::test(flavor = "current_thread")]
async fn a_burst_of_accepts_cannot_pass_the_connection_limit() {
    let dir = TempDir::new("accept-burst");
    let mut config = test_config(dir.path());
    config.max_connections = 5;
    let (addr, metrics, _shutdown) = start_relay(config).await;
    // Blocking connects: the runtime (and so the relay) does not run until all are made.
    let blocking: Vec<std::net::TcpStream> = (0..20)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    let mut served = 0;
    for s in blocking {
        s.set_nonblocking(true).unwrap();
        let mut s = TcpStream::from_std(s).unwrap();
        let _ = s.write_all(&TCP_PREAMBLE).await;
        let mut frames = FramedRead::new(&mut s, RelayFrameCodec::new(1 << 16));
        let frame = tokio::time::timeout(Duration::from_secs(5), frames.next())
            .await
            .expect("served or closed in time");
        drop(frames);
        if let Some(Ok(frame)) = frame {
            if matches!(
                decode_server_frame(&frame),
                Ok(server_frame::Frame::Challenge(_))
            ) {
                served += 1;
                // Held open so that it keeps counting.
                std::mem::forget(s);
            }
        }
    }
    assert_eq!(served, 5, "only max_connections served");
    assert_eq!(
        metric(
            &common::scrape(metrics).await,
            "hush_relay_connections_refused_total"
        ),
        15
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_time_prekeys_are_handed_out_per_requester_quota() {
    let dir = TempDir::new("prekey-drain");
    let mut config = test_config(dir.path());
    config.prekey_fetches_per_minute = 3;
    let (addr, metrics, _shutdown) = start_relay(config).await;
    let mut bob = common::new_sealer(1);
    common::publish(addr, &mut bob, 10).await;
    let mallory = generate_device_key();
    let drainer = connect(Wire::Tcp, addr, &mallory).await;
    let mut with_one_time = 0;
    for _ in 0..8 {
        let b = drainer.fetch_bundle(bob.device_id()).await.unwrap();
        if b.one_time_prekey.is_some() {
            with_one_time += 1;
        }
    }
    assert_eq!(
        with_one_time, 3,
        "Mallory gets her quota, then the base bundle"
    );
    // Reconnecting does not refill it.
    drop(drainer);
    let drainer = connect(Wire::Tcp, addr, &mallory).await;
    let b = drainer.fetch_bundle(bob.device_id()).await.unwrap();
    assert!(b.one_time_prekey.is_none());
    assert!(!b.bundle.is_empty(), "the base bundle still comes");
    // Another requester still gets one of the seven Bob has left.
    let alice = connect(Wire::Tcp, addr, &generate_device_key()).await;
    let b = alice.fetch_bundle(bob.device_id()).await.unwrap();
    assert!(b.one_time_prekey.is_some());
    assert_eq!(
        metric(
            &common::scrape(metrics).await,
            "hush_relay_prekey_fetches_limited_total"
        ),
        6
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_bundles_are_verified_and_must_be_the_uploaders() {
    let dir = TempDir::new("bundle-check");
    let (addr, metrics, _shutdown) = start_relay(test_config(dir.path())).await;
    let mut bob = common::new_sealer(1);
    let mut mallory = common::new_sealer(1);
    let bob_material = bob.publish(2, 2).unwrap();
    let mallory_conn = connect(Wire::Tcp, addr, mallory.signer()).await;
    let bob_conn = connect(Wire::Tcp, addr, bob.signer()).await;
    let upload_code = |conn, bundle: Vec<u8>, items: Vec<(u64, Vec<u8>)>| async move {
        match RelayClient::upload_prekeys(conn, bundle, items, false).await {
            Ok(()) => ErrorCode::Unspecified,
            Err(e) => relay_code(&e),
        }
    };

    // Mallory publishes Bob's genuine bundle under her own key.
    assert_eq!(
        upload_code(&mallory_conn, bob_material.bundle.clone(), vec![]).await,
        ErrorCode::InvalidBundle
    );
    // Bob's bundle with Mallory's identity in it: the binding and prekey signatures were made
    // by another identity.
    let mallory_material = mallory.publish(0, 0).unwrap();
    let mallory_identity = hush_crypto::PeerBundle::decode(&mallory_material.bundle)
        .unwrap()
        .device
        .identity_key;
    let mut swapped = hush_crypto::PeerBundle::decode(&bob_material.bundle).unwrap();
    swapped.device.identity_key = mallory_identity;
    assert_eq!(
        upload_code(&bob_conn, swapped.encode().unwrap(), vec![]).await,
        ErrorCode::InvalidBundle
    );
    // A genuine base bundle with a one-time item that is Mallory's.
    assert_eq!(
        upload_code(
            &bob_conn,
            bob_material.bundle.clone(),
            vec![(1, mallory_material.bundle.clone())]
        )
        .await,
        ErrorCode::InvalidBundle
    );
    // Bytes that are no bundle.
    assert_eq!(
        upload_code(&bob_conn, b"bob-bundle".to_vec(), vec![]).await,
        ErrorCode::InvalidBundle
    );
    // One-time items from a second identity that holds Bob's ed25519 key (his key moved into
    // another device store): each verifies on its own, but not as Bob's with his base bundle.
    let mut backend = DeviceStore::create(MemoryBackend::new(), 1, &mut rand::rng())
        .unwrap()
        .into_backend();
    backend
        .put(
            Table::Meta,
            b"ed25519_seed",
            bob.signer().to_seed().as_ref(),
        )
        .unwrap();
    let mut twin = SignalSealer::new(Device::new(DeviceStore::open(backend).unwrap().unwrap()));
    assert_eq!(
        twin.device_id(),
        bob.device_id(),
        "the twin holds Bob's key"
    );
    let twin_material = twin.publish(1, 1).unwrap();
    assert_eq!(
        upload_code(
            &bob_conn,
            bob_material.bundle.clone(),
            twin_material.one_time_prekeys
        )
        .await,
        ErrorCode::InvalidBundle
    );
    assert_eq!(
        metric(
            &common::scrape(metrics).await,
            "hush_relay_invalid_bundles_total"
        ),
        5
    );
    // Nothing of it was stored: Bob has no bundle yet.
    let err = mallory_conn
        .fetch_bundle(bob.device_id())
        .await
        .unwrap_err();
    assert_eq!(relay_code(&err), ErrorCode::NotFound);

    // Bob's genuine upload is accepted and handed out as uploaded.
    assert_eq!(
        upload_code(
            &bob_conn,
            bob_material.bundle.clone(),
            bob_material.one_time_prekeys.clone()
        )
        .await,
        ErrorCode::Unspecified
    );
    let fetched = mallory_conn.fetch_bundle(bob.device_id()).await.unwrap();
    assert_eq!(fetched.bundle, bob_material.bundle);
    assert!(fetched.one_time_prekey.is_some());
}

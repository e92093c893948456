//! Load benchmark: starts the relay binary as a child process and N authenticated clients on
//! loopback, then measures
//!   1. connection setup (TCP + challenge–response) for N concurrent clients,
//!   2. peak end-to-end throughput (envelopes/s sender → relay → recipient, closed loop, every
//!      delivery acknowledged, every send answered by the relay),
//!   3. end-to-end latency p50/p99 at half of the measured peak (open loop, paced).
//!
//! Run: `cargo bench -p hush-relay --bench relay_load -- [--clients 10000] [--seconds 10]
//!       [--sync full|normal] [--in-flight 1] [--senders M] [--pairs] [--latency-all]
//!       [--relay-threads N] [--commit-delay-ms MS] [--gen-threads N]`
//!
//! `--cluster` (build with `--features cluster`, needs `postgresql` and `nats-server`): the relay
//! runs as a cluster node on a throwaway PostgreSQL and nats-server on loopback (started by
//! hush-testkit) instead of on SQLite. `--nodes N` (with `--cluster`): N relay processes on the
//! same PostgreSQL and NATS, client i connected to node i mod N (so most envelopes cross
//! nodes); the CPU lines then add the relays up and also report PostgreSQL's and NATS's CPU.
//!
//! `HUSH_RELAY_BIN=path` runs that relay binary instead of the one built with the bench (to
//! compare two builds in the same session).
//!
//! `--relay-threads` and `--commit-delay-ms` are passed to the relay (`--worker-threads`,
//! `--commit-delay-ms`); unset, the relay's defaults apply.
//!
//! `--senders M`: only M of the N connected clients send (default: all), each to a partner half
//! the ring away (client i to i + N/2 + 1: every client sends to one device and receives from
//! another); all N stay connected. A closed loop over 10,000 clients keeps 10,000 × K envelopes
//! queued in the system, so each waits (10,000 × K) / throughput — hundreds of milliseconds —
//! which measures queueing, not the relay; fewer senders bound the envelopes in flight.
//! Phase 3 runs the same M senders, paced at half of their peak rate (the same load at half
//! the rate); `--latency-all` paces all N clients instead (same total rate, spread thinner).
//! `--pairs`: clients talk in pairs (0 ↔ 1, 2 ↔ 3, …, as the two devices of a call do) instead
//! of the ring; a pair in a closed loop falls into lock-step, so a client's acknowledgement
//! and its next send often share one write, and so do the relay's delivery and answer to it.
//! `--in-flight K`: each client sends its envelopes in bursts of K (one write), and sends the
//! next burst when the relay has answered all K (closed loop; in phase 3 bursts are paced).
//! K = 1 is one envelope at a time per client; real clients send bursts (an offer followed by
//! trickled ICE candidates, answers to several devices).
//!
//! The relay delivers only to devices that published a prekey bundle, so each client is a
//! hush-crypto device that uploads its (verified) base bundle after connecting; the bundles
//! are made before phase 1 and uploaded after it, outside every measured phase.
//!
//! The clients are a lean load generator, not [`hush_signaling::transport::RelayClient`]: one
//! task per connection that writes pre-encoded frames (only the id and send time are patched
//! per envelope), reads whole buffers of frames, walks the few protobuf fields it needs without
//! allocating, and acknowledges all deliveries of one read in one `Ack` frame (as `RelayClient`
//! does). The relay cannot tell the difference: same protocol, same frames. Loopback only;
//! every phase is bounded in time.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use hush_crypto::{Device, DeviceSigningKey, DeviceStore, MemoryBackend};
use hush_signaling::device::{sign_challenge, ChannelBinding, AUTH_NONCE_LEN};
use hush_signaling::frame::{
    decode_server_frame, encode_client_frame, length_prefixed, RelayFrameCodec, TCP_PREAMBLE,
};
use hush_signaling::proto::relay::{self as pb, client_frame, server_frame};
use hush_signaling::transport::RELAY_PROTOCOL_VERSION;
use hush_signaling::{CiphertextKind, DeviceId, DeviceSigner, Envelope};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_util::codec::{Framed, FramedRead};

struct Args {
    clients: usize,
    seconds: u64,
    sync: String,
    in_flight: usize,
    senders: Option<usize>,
    pairs: bool,
    latency_all: bool,
    relay_threads: Option<usize>,
    commit_delay_ms: Option<u64>,
    gen_threads: usize,
    cluster: bool,
    nodes: usize,
}

fn args() -> Args {
    let mut a = Args {
        clients: 10_000,
        seconds: 10,
        sync: "full".into(),
        in_flight: 1,
        senders: None,
        pairs: false,
        latency_all: false,
        relay_threads: None,
        commit_delay_ms: None,
        gen_threads: 1,
        cluster: false,
        nodes: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_default();
        match flag.as_str() {
            "--clients" => a.clients = val().parse().expect("--clients N"),
            "--seconds" => a.seconds = val().parse().expect("--seconds N"),
            "--sync" => a.sync = val(),
            "--in-flight" => a.in_flight = val().parse::<usize>().expect("--in-flight K").max(1),
            "--commit-delay-ms" => {
                a.commit_delay_ms = Some(val().parse().expect("--commit-delay-ms MS"))
            }
            "--pairs" => a.pairs = true,
            "--cluster" => a.cluster = true,
            "--nodes" => a.nodes = val().parse::<usize>().expect("--nodes N").max(1),
            "--latency-all" => a.latency_all = true,
            "--senders" => a.senders = Some(val().parse().expect("--senders M")),
            "--relay-threads" => a.relay_threads = Some(val().parse().expect("--relay-threads N")),
            "--gen-threads" => {
                a.gen_threads = val().parse::<usize>().expect("--gen-threads N").max(1)
            }
            _ => {} // cargo bench passes --bench; ignore unknown flags
        }
    }
    a
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct Relay {
    child: Child,
    addr: SocketAddr,
    metrics: SocketAddr,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_relay(db: &std::path::Path, args: &Args, cluster: Option<(String, String)>) -> Relay {
    use std::io::BufRead;
    let bin = std::env::var_os("HUSH_RELAY_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_hush-relay").into());
    let mut cmd = Command::new(bin);
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
        "--sync",
        &args.sync,
    ])
    .args([
        "--rate",
        "1000000",
        "--burst",
        "1000000",
        "--max-queue",
        "100000",
        "--max-queue-per-sender",
        "100000",
    ])
    .args(["--max-connections", &(args.clients + 100).to_string()]);
    if let Some(n) = args.relay_threads {
        cmd.args(["--worker-threads", &n.to_string()]);
    }
    if let Some(ms) = args.commit_delay_ms {
        cmd.args(["--commit-delay-ms", &ms.to_string()]);
    }
    if let Some((postgres, nats)) = cluster {
        cmd.args(["--postgres", &postgres, "--nats", &nats]);
    }
    let mut child = cmd
        .arg("--db")
        .arg(db)
        .env("HUSH_RELAY_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn relay");
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = |p: &str| -> SocketAddr {
        lines
            .next()
            .unwrap()
            .unwrap()
            .strip_prefix(p)
            .unwrap()
            .parse()
            .unwrap()
    };
    let addr = next("listening ");
    let metrics = next("metrics ");
    Relay {
        child,
        addr,
        metrics,
    }
}

/// The relay nodes under test (one unless `--nodes`).
struct Relays(Vec<Relay>);

impl Relays {
    /// The node client `i` connects to.
    fn addr(&self, i: usize) -> SocketAddr {
        self.0[i % self.0.len()].addr
    }

    /// A metric summed over the nodes.
    async fn scrape(&self, name: &str) -> u64 {
        let mut sum = 0;
        for r in &self.0 {
            sum += scrape(r.metrics, name).await;
        }
        sum
    }

    fn cpu(&self) -> f64 {
        self.0.iter().map(|r| cpu_seconds(r.child.id())).sum()
    }

    fn cpu_wait(&self) -> f64 {
        self.0.iter().map(|r| cpu_wait_seconds(r.child.id())).sum()
    }
}

/// CPU seconds used so far by `pid` and its direct children (PostgreSQL's backends are
/// children of its postmaster).
fn tree_cpu_seconds(pid: u32) -> f64 {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    cpu_seconds(pid)
        + children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
            .map(cpu_seconds)
            .sum::<f64>()
}

async fn scrape(metrics: SocketAddr, name: &str) -> u64 {
    let mut s = TcpStream::connect(metrics).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.lines()
        .find_map(|l| {
            // `name value` or `name{labels} value`.
            let v = l.strip_prefix(name)?;
            v.strip_prefix(' ')
                .or_else(|| v.strip_prefix('{')?.split_once("} ").map(|(_, v)| v))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Connects from 127.0.x.y source addresses so ephemeral ports never run short, and
/// authenticates (challenge–response).
async fn connect(i: usize, relay: SocketAddr, key: &dyn DeviceSigner) -> TcpStream {
    let src = IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        (1 + i / 20_000) as u8,
        (1 + (i / 250) % 250) as u8,
    ));
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(src, 0)).unwrap();
    let mut stream = socket.connect(relay).await.unwrap();
    stream.set_nodelay(true).unwrap();
    stream.write_all(&TCP_PREAMBLE).await.unwrap();
    let mut frames = Framed::new(stream, RelayFrameCodec::new(1 << 16));
    let frame = frames.next().await.unwrap().unwrap();
    let Ok(server_frame::Frame::Challenge(c)) = decode_server_frame(&frame) else {
        panic!("expected a challenge");
    };
    let nonce: [u8; AUTH_NONCE_LEN] = c.nonce.as_slice().try_into().unwrap();
    // Plaintext loopback: the answer is bound to the relay's key.
    let binding = ChannelBinding::RelayKey(c.relay_key.as_slice().try_into().unwrap());
    let auth = encode_client_frame(client_frame::Frame::Auth(pb::AuthResponse {
        version: RELAY_PROTOCOL_VERSION,
        device_key: key.device_id().as_bytes().to_vec(),
        signature: sign_challenge(key, &nonce, &binding).to_vec(),
        binding_type: binding.binding_type() as i32,
    }));
    frames
        .get_mut()
        .write_all(&length_prefixed(&auth).unwrap())
        .await
        .unwrap();
    let frame = frames.next().await.unwrap().unwrap();
    let Ok(server_frame::Frame::AuthOk(_)) = decode_server_frame(&frame) else {
        panic!("authentication refused");
    };
    // A fresh device has no backlog: nothing follows AuthOk until the clients send.
    let parts = frames.into_parts();
    assert!(parts.read_buf.is_empty(), "frames after AuthOk");
    parts.io
}

/// A fresh device: its key and its encoded base bundle (no one-time prekeys).
fn device_with_bundle() -> (DeviceSigningKey, Vec<u8>) {
    let store = DeviceStore::create(MemoryBackend::new(), 1, &mut rand::rng()).unwrap();
    let mut device = Device::new(store);
    let bundle = device
        .prepare_upload(0, 0, SystemTime::now())
        .unwrap()
        .take_bundle()
        .encode()
        .unwrap();
    (device.signing_key().clone(), bundle)
}

/// Publishes `bundle` on an authenticated connection and waits for the relay's answer.
async fn upload_bundle(stream: &mut TcpStream, bundle: Vec<u8>) {
    let upload = encode_client_frame(client_frame::Frame::UploadPrekeys(pb::UploadPrekeys {
        request_id: 1,
        bundle,
        one_time_prekeys: Vec::new(),
        replace_one_time_prekeys: false,
    }));
    stream
        .write_all(&length_prefixed(&upload).unwrap())
        .await
        .unwrap();
    // Nothing but the answer comes before the clients start sending (no backlog).
    let mut frames = FramedRead::new(stream, RelayFrameCodec::new(1 << 16));
    let frame = frames.next().await.unwrap().unwrap();
    assert!(frames.read_buffer().is_empty(), "frames after the answer");
    let Ok(server_frame::Frame::Response(pb::Response {
        result: Some(pb::response::Result::Done(_)),
        ..
    })) = decode_server_frame(&frame)
    else {
        panic!("bundle upload refused");
    };
}

/// CPU seconds (user + system) used so far by process `pid` (Linux /proc; 100 ticks/s).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, r)| r.split(' ').collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the command name: field 14 (utime) and 15 (stime) are at indexes 11 and 12.
    (ticks(11) + ticks(12)) / 100.0
}

/// Seconds the threads of process `pid` spent runnable but waiting for a CPU (Linux
/// schedstat): how much other processes (and the two processes of the bench, which share
/// the cores) held them back.
fn cpu_wait_seconds(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split(' ').nth(1).and_then(|v| v.parse::<f64>().ok()))
        .sum::<f64>()
        / 1e9
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split(' ')
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Latency histogram, 10 µs buckets up to 2 s (lock-free: clients record from any thread).
struct Histogram {
    buckets: Vec<AtomicU64>,
}

const BUCKET_US: u64 = 10;

impl Histogram {
    fn new() -> Self {
        Self {
            buckets: (0..200_000).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn record(&self, us: u64) {
        let i = ((us / BUCKET_US) as usize).min(self.buckets.len() - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    fn clear(&self) {
        for b in &self.buckets {
            b.store(0, Ordering::Relaxed);
        }
    }

    /// `(count, [p50, p99, max])` in milliseconds (upper bucket bounds).
    fn summary(&self) -> (u64, [f64; 3]) {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let at = |q: f64| {
            let rank = ((total as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return ((i as u64 + 1) * BUCKET_US) as f64 / 1000.0;
                }
            }
            f64::NAN
        };
        (total, [at(0.50), at(0.99), at(1.0)])
    }
}

/// What the clients do; changed through a watch channel.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Only acknowledge deliveries.
    Idle,
    /// Send a burst of K, wait until the relay answered all K, repeat.
    Closed,
    /// Send a burst of K every period, whatever came back (open loop).
    Paced(Duration),
    /// Close the connection.
    Quit,
}

/// Shared counters of the load generator.
struct Stats {
    delivered: AtomicU64,
    answered: AtomicU64,
    errors: AtomicU64,
    recording: AtomicBool,
    latency: Histogram,
}

/// A `Send` frame (length prefix included) encoded once; each envelope copies it and patches
/// the envelope id and the send time in place.
struct Template {
    bytes: Vec<u8>,
    id_at: usize,
    time_at: usize,
}

const ID_MARK: [u8; 16] = [0xa5; 16];
const TIME_MARK: [u8; 8] = [0xc3; 8];

impl Template {
    fn new(from: DeviceId, to: DeviceId) -> Self {
        // The ciphertext stands in for a sealed message: 100 bytes, starting with the send time.
        let mut ciphertext = vec![0x5a; 100];
        ciphertext[..8].copy_from_slice(&TIME_MARK);
        let envelope = Envelope {
            id: ID_MARK,
            sender: from,
            recipient: to,
            timestamp_ms: now_ms(),
            kind: CiphertextKind::Signal,
            ciphertext,
        };
        let frame = encode_client_frame(client_frame::Frame::Send(pb::Send {
            request_id: 1,
            envelope: Some(envelope.into_proto()),
        }));
        let bytes = length_prefixed(&frame).unwrap();
        let find = |mark: &[u8]| bytes.windows(mark.len()).position(|w| w == mark).unwrap();
        let (id_at, time_at) = (find(&ID_MARK), find(&TIME_MARK));
        Self {
            bytes,
            id_at,
            time_at,
        }
    }

    fn write(&self, out: &mut Vec<u8>, client: u32, seq: u64, sent_ns: u64) {
        let at = out.len();
        out.extend_from_slice(&self.bytes);
        let id = &mut out[at + self.id_at..at + self.id_at + 16];
        id[..4].copy_from_slice(&client.to_be_bytes());
        id[4..12].copy_from_slice(&seq.to_be_bytes());
        out[at + self.time_at..at + self.time_at + 8].copy_from_slice(&sent_ns.to_be_bytes());
    }
}

/// Minimal protobuf walking (no allocation) for the server frames the generator needs.
mod wire {
    pub(crate) fn varint(b: &[u8], pos: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *b.get(*pos)?;
            *pos += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Some(v);
            }
        }
        None
    }

    /// Calls `f(field, varint, bytes)` for each field of a message; `bytes` is empty for
    /// varints.
    pub(crate) fn fields<'a>(b: &'a [u8], mut f: impl FnMut(u64, u64, &'a [u8])) -> Option<()> {
        let mut pos = 0;
        while pos < b.len() {
            let key = varint(b, &mut pos)?;
            match key & 7 {
                0 => {
                    let v = varint(b, &mut pos)?;
                    f(key >> 3, v, &[]);
                }
                2 => {
                    let len = varint(b, &mut pos)? as usize;
                    let bytes = b.get(pos..pos.checked_add(len)?)?;
                    pos += len;
                    f(key >> 3, 0, bytes);
                }
                _ => return None,
            }
        }
        Some(())
    }
}

/// What one server frame means to the generator.
enum Event {
    /// `(delivery id, send time in ns since the run's base instant)`
    Deliver(u64, u64),
    Answer {
        ok: bool,
    },
    Other,
}

fn parse(frame: &[u8]) -> Event {
    let mut event = Event::Other;
    wire::fields(frame, |field, _, body| match field {
        3 => {
            let (mut id, mut sent) = (0, 0);
            wire::fields(body, |f, v, envelope| match f {
                1 => id = v,
                2 => {
                    wire::fields(envelope, |f, _, ct| {
                        if f == 7 && ct.len() >= 8 {
                            sent = u64::from_be_bytes(ct[..8].try_into().unwrap());
                        }
                    });
                }
                _ => {}
            });
            event = Event::Deliver(id, sent);
        }
        4 => {
            let mut ok = false;
            wire::fields(body, |f, _, _| ok |= f == 2);
            event = Event::Answer { ok };
        }
        5 => event = Event::Answer { ok: false },
        _ => {}
    });
    event
}

/// What one client is.
struct ClientSetup {
    index: u32,
    /// Envelopes per burst.
    burst: usize,
    /// Whether it sends in phase 2.
    peak_sender: bool,
    /// Whether it sends in phase 3.
    paced_sender: bool,
    stats: Arc<Stats>,
    /// Time origin of the send stamps.
    base: Instant,
}

/// One client connection: sends per [`Mode`], acknowledges every delivery, counts.
async fn client(
    setup: ClientSetup,
    mut stream: TcpStream,
    templates: watch::Receiver<Arc<Vec<Template>>>,
    mut mode: tokio::sync::mpsc::UnboundedReceiver<Mode>,
) {
    let ClientSetup {
        index,
        burst,
        peak_sender,
        paced_sender,
        stats,
        base,
    } = setup;
    let mut rbuf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut wbuf: Vec<u8> = Vec::with_capacity(4 * 1024);
    let mut acks: Vec<u64> = Vec::with_capacity(64);
    let mut outstanding = 0usize;
    let mut seq = 0u64;
    let mut current = Mode::Idle;
    let mut next_tick = tokio::time::Instant::now();
    let tick = tokio::time::sleep_until(next_tick);
    tokio::pin!(tick);
    let mut ack_frame = Vec::with_capacity(256);
    let send_burst = |wbuf: &mut Vec<u8>, seq: &mut u64| {
        let sent = base.elapsed().as_nanos() as u64;
        let t = templates.borrow();
        for _ in 0..burst {
            t[index as usize].write(wbuf, index, *seq, sent);
            *seq += 1;
        }
    };
    loop {
        if current == Mode::Closed && peak_sender && outstanding == 0 {
            send_burst(&mut wbuf, &mut seq);
            outstanding = burst;
        }
        if !acks.is_empty() {
            // Ack { repeated uint64 delivery_ids = 1 } (packed) inside ClientFrame field 3.
            ack_frame.clear();
            let mut packed = Vec::with_capacity(acks.len() * 5);
            for &id in &acks {
                prost::encoding::encode_varint(id, &mut packed);
            }
            let mut ack = Vec::with_capacity(packed.len() + 6);
            prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut ack);
            prost::encoding::encode_varint(packed.len() as u64, &mut ack);
            ack.extend_from_slice(&packed);
            prost::encoding::encode_key(
                3,
                prost::encoding::WireType::LengthDelimited,
                &mut ack_frame,
            );
            prost::encoding::encode_varint(ack.len() as u64, &mut ack_frame);
            ack_frame.extend_from_slice(&ack);
            wbuf.extend_from_slice(&(ack_frame.len() as u32).to_be_bytes());
            wbuf.extend_from_slice(&ack_frame);
            acks.clear();
        }
        if !wbuf.is_empty() {
            if stream.write_all(&wbuf).await.is_err() {
                return;
            }
            wbuf.clear();
        }
        let paced = paced_sender && matches!(current, Mode::Paced(_));
        tokio::select! {
            r = stream.read_buf(&mut rbuf) => {
                match r {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
            changed = mode.recv() => {
                let Some(changed) = changed else {
                    return;
                };
                current = changed;
                match current {
                    Mode::Quit => return,
                    Mode::Paced(period) => {
                        // Spread the clients' phases over one period.
                        next_tick = tokio::time::Instant::now()
                            + period.mul_f64(f64::from(index % 10_007) / 10_007.0);
                        tick.as_mut().reset(next_tick);
                    }
                    Mode::Closed | Mode::Idle => {}
                }
                outstanding = 0;
                continue;
            }
            // One timer per client, reset on each tick (not re-created per loop turn).
            () = &mut tick, if paced => {
                if let Mode::Paced(period) = current {
                    next_tick += period;
                    if next_tick < tokio::time::Instant::now() {
                        // Fell behind (machine busy): skip rather than burst to catch up.
                        next_tick = tokio::time::Instant::now() + period;
                    }
                    tick.as_mut().reset(next_tick);
                    send_burst(&mut wbuf, &mut seq);
                }
                continue;
            }
        }
        // Every complete frame in the buffer.
        let mut pos = 0;
        let (mut delivered, mut answered, mut errors) = (0, 0, 0);
        let now_ns = base.elapsed().as_nanos() as u64;
        let recording = stats.recording.load(Ordering::Relaxed);
        while let Some(prefix) = rbuf.get(pos..pos + 4) {
            let len = u32::from_be_bytes(prefix.try_into().unwrap()) as usize;
            let Some(frame) = rbuf.get(pos + 4..pos + 4 + len) else {
                break;
            };
            match parse(frame) {
                Event::Deliver(id, sent) => {
                    acks.push(id);
                    delivered += 1;
                    if recording {
                        stats.latency.record(now_ns.saturating_sub(sent) / 1000);
                    }
                }
                Event::Answer { ok } => {
                    answered += 1;
                    outstanding = outstanding.saturating_sub(1);
                    if !ok {
                        errors += 1;
                    }
                }
                Event::Other => {}
            }
            pos += 4 + len;
        }
        rbuf.drain(..pos);
        if delivered > 0 {
            stats.delivered.fetch_add(delivered, Ordering::Relaxed);
        }
        if answered > 0 {
            stats.answered.fetch_add(answered, Ordering::Relaxed);
        }
        if errors > 0 {
            stats.errors.fetch_add(errors, Ordering::Relaxed);
        }
    }
}

fn main() {
    let args = args();
    // Each process holds one socket per client; raise the descriptor limit (root may raise the
    // hard limit too).
    let want = (args.clients as u64) * 2 + 1024;
    let (_, hard) = rlimit::Resource::NOFILE.get().unwrap();
    let target = want.max(hard);
    if rlimit::Resource::NOFILE.set(target, target).is_err() {
        rlimit::Resource::NOFILE.set(hard, hard).unwrap();
    }
    let rt = if args.gen_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.gen_threads)
            .enable_all()
            .build()
            .unwrap()
    };
    rt.block_on(run(args));
}

async fn run(args: Args) {
    let dir = std::env::temp_dir().join(format!("hush-relay-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let servers = args.cluster.then(|| {
        (
            hush_testkit::servers::Postgres::start(),
            hush_testkit::servers::Nats::start(),
        )
    });
    let urls = servers.as_ref().map(|(pg, nats)| (pg.url(), nats.url()));
    let nodes = if args.cluster { args.nodes } else { 1 };
    let relay = Relays(
        (0..nodes)
            .map(|i| start_relay(&dir.join(format!("relay{i}.db")), &args, urls.clone()))
            .collect(),
    );
    // CPU seconds of PostgreSQL (postmaster and backends) and of NATS so far.
    let servers_cpu = || {
        servers.as_ref().map_or((0.0, 0.0), |(pg, nats)| {
            (
                pg.pid().map_or(0.0, tree_cpu_seconds),
                nats.pid().map_or(0.0, cpu_seconds),
            )
        })
    };
    let n = args.clients;
    let k = args.in_flight;
    let senders = args.senders.unwrap_or(n).min(n);
    let pairs = args.pairs;
    println!(
        "relay_load: {n} clients, {}, store={}, sync={}, bursts of {k} in flight per client, relay worker threads {}, generator threads {}, {} s per phase, loopback, load average {}",
        if args.pairs { "in pairs" } else { "ring" },
        if args.cluster {
            format!("PostgreSQL+NATS ({nodes} node(s))")
        } else {
            "SQLite".to_string()
        },
        args.sync,
        args.relay_threads.map_or("default".to_string(), |t| t.to_string()),
        args.gen_threads,
        args.seconds,
        load_average()
    );

    // Devices and their bundles (not timed).
    let made = Instant::now();
    let (keys, mut bundles): (Vec<_>, Vec<_>) = (0..n)
        .map(|_| {
            let (key, bundle) = device_with_bundle();
            (Arc::new(key), Some(bundle))
        })
        .unzip();
    println!(
        "devices: {n} identities and bundles made in {:.2} s",
        made.elapsed().as_secs_f64()
    );
    let ids: Vec<DeviceId> = keys.iter().map(|k| k.device_id()).collect();

    // Phase 1: connect and authenticate everyone.
    let start = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let mut handles = Vec::with_capacity(n);
    for (i, key) in keys.iter().enumerate() {
        let (sem, key, addr) = (sem.clone(), key.clone(), relay.addr(i));
        handles.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.unwrap();
            connect(i, addr, key.as_ref()).await
        }));
    }
    let mut streams = Vec::with_capacity(n);
    for h in handles {
        streams.push(h.await.unwrap());
    }
    let connect_secs = start.elapsed().as_secs_f64();
    let authenticated = relay.scrape("hush_relay_authenticated_connections").await;
    println!(
        "connections: {authenticated} authenticated concurrently (relay gauge), set up in {connect_secs:.2} s ({:.0}/s)",
        n as f64 / connect_secs
    );
    assert_eq!(
        authenticated as usize, n,
        "every client holds an authenticated connection"
    );
    // Every client publishes its bundle (not timed): the relay delivers only to devices that
    // did.
    let uploaded = Instant::now();
    let mut handles = Vec::with_capacity(n);
    for (mut stream, bundle) in streams.into_iter().zip(bundles.iter_mut()) {
        let (sem, bundle) = (sem.clone(), bundle.take().unwrap_or_default());
        handles.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.unwrap();
            upload_bundle(&mut stream, bundle).await;
            stream
        }));
    }
    let mut streams = Vec::with_capacity(n);
    for h in handles {
        streams.push(h.await.unwrap());
    }
    println!(
        "bundles: {n} uploaded in {:.2} s",
        uploaded.elapsed().as_secs_f64()
    );

    let base = Instant::now();
    let stats = Arc::new(Stats {
        delivered: AtomicU64::new(0),
        answered: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        recording: AtomicBool::new(false),
        latency: Histogram::new(),
    });
    let partner = |i: usize| {
        if pairs {
            ids[(i ^ 1) % n]
        } else {
            ids[(i + n / 2 + 1) % n]
        }
    };
    // Senders spread over the clients (both of a pair with `--pairs`).
    let is_sender = |i: usize| {
        if pairs {
            let (p, np, sp) = (i / 2, n.div_ceil(2), senders.div_ceil(2));
            p * sp / np != (p + 1) * sp / np
        } else {
            i * senders / n != (i + 1) * senders / n
        }
    };
    let paced = if args.latency_all { n } else { senders };
    let make_templates = || {
        Arc::new(
            (0..n)
                .map(|i| Template::new(ids[i], partner(i)))
                .collect::<Vec<_>>(),
        )
    };
    let (templates_tx, templates_rx) = watch::channel(make_templates());
    // One channel per client: cheap to poll on every loop turn (a watch would lock per poll).
    let mut mode_txs = Vec::with_capacity(n);
    let set_mode = |txs: &Vec<tokio::sync::mpsc::UnboundedSender<Mode>>, m: Mode| {
        for tx in txs {
            let _ = tx.send(m);
        }
    };
    let mut tasks = Vec::with_capacity(n);
    for (i, stream) in streams.into_iter().enumerate() {
        let (mode_tx, mode_rx) = tokio::sync::mpsc::unbounded_channel();
        mode_txs.push(mode_tx);
        let setup = ClientSetup {
            index: i as u32,
            burst: k,
            peak_sender: is_sender(i),
            paced_sender: args.latency_all || is_sender(i),
            stats: stats.clone(),
            base,
        };
        tasks.push(tokio::spawn(client(
            setup,
            stream,
            templates_rx.clone(),
            mode_rx,
        )));
    }

    // Phase 2: peak throughput, closed loop.
    set_mode(&mode_txs, Mode::Closed);
    tokio::time::sleep(Duration::from_secs(2)).await; // warm-up
    let (d0, a0, e0) = (
        stats.delivered.load(Ordering::Relaxed),
        stats.answered.load(Ordering::Relaxed),
        stats.errors.load(Ordering::Relaxed),
    );
    let stored0 = relay.scrape("hush_relay_envelopes_stored_total").await;
    let commits0 = relay.scrape("hush_relay_store_commits_total").await;
    let t0 = Instant::now();
    let (relay_cpu0, gen_cpu0) = (relay.cpu(), cpu_seconds(std::process::id()));
    let servers_cpu0 = servers_cpu();
    let wait0 = relay.cpu_wait() + cpu_wait_seconds(std::process::id());
    let load_before = load_average();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let waited = relay.cpu_wait() + cpu_wait_seconds(std::process::id()) - wait0;
    let delivered = stats.delivered.load(Ordering::Relaxed) - d0;
    let answered = stats.answered.load(Ordering::Relaxed) - a0;
    let errors = stats.errors.load(Ordering::Relaxed) - e0;
    let elapsed = t0.elapsed().as_secs_f64();
    let relay_cpu = relay.cpu() - relay_cpu0;
    let (pg_cpu, nats_cpu) = servers_cpu();
    let (pg_cpu, nats_cpu) = (pg_cpu - servers_cpu0.0, nats_cpu - servers_cpu0.1);
    let gen_cpu = cpu_seconds(std::process::id()) - gen_cpu0;
    let stored = relay.scrape("hush_relay_envelopes_stored_total").await - stored0;
    let commits = relay.scrape("hush_relay_store_commits_total").await - commits0;
    let peak = delivered as f64 / elapsed;
    set_mode(&mode_txs, Mode::Idle);
    println!(
        "peak throughput ({senders} of the {n} clients sending, closed loop, {} envelopes in flight): {peak:.0} envelopes/s end to end ({delivered} delivered and acknowledged, {answered} sends answered, {errors} errors, {stored} written to SQLite in {commits} commits, in {elapsed:.1} s; load average {load_before} -> {})",
        senders * k,
        load_average()
    );
    let per_env = |cpu: f64| cpu / delivered.max(1) as f64 * 1e6;
    println!(
        "cpu during peak: relay {:.2} cores, generator {:.2} cores, their threads waited {:.2} s per s for a CPU; per envelope: relay {:.1} us, generator {:.1} us => relay alone {:.0} envelopes/s per core",
        relay_cpu / elapsed,
        gen_cpu / elapsed,
        waited / elapsed,
        per_env(relay_cpu),
        per_env(gen_cpu),
        1e6 / per_env(relay_cpu)
    );
    if args.cluster {
        println!(
            "cpu of the shared servers during peak: PostgreSQL {:.2} cores, {:.1} us per envelope; NATS {:.2} cores, {:.1} us per envelope; {:.1} envelopes per commit",
            pg_cpu / elapsed,
            per_env(pg_cpu),
            nats_cpu / elapsed,
            per_env(nats_cpu),
            stored as f64 / commits.max(1) as f64
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Phase 3: latency at half of peak, open loop: every client sends a burst every period.
    let rate = (peak / 2.0).max(1.0);
    let period = Duration::from_secs_f64((paced * k) as f64 / rate);
    templates_tx.send_replace(make_templates()); // fresh timestamps
    set_mode(&mode_txs, Mode::Paced(period));
    tokio::time::sleep(Duration::from_secs(2)).await;
    stats.latency.clear();
    stats.recording.store(true, Ordering::Relaxed);
    let (d0, e0) = (
        stats.delivered.load(Ordering::Relaxed),
        stats.errors.load(Ordering::Relaxed),
    );
    let stored0 = relay.scrape("hush_relay_envelopes_stored_total").await;
    let t0 = Instant::now();
    let (relay_cpu0, gen_cpu0) = (relay.cpu(), cpu_seconds(std::process::id()));
    let wait0 = relay.cpu_wait() + cpu_wait_seconds(std::process::id());
    let load_before = load_average();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stats.recording.store(false, Ordering::Relaxed);
    let waited = relay.cpu_wait() + cpu_wait_seconds(std::process::id()) - wait0;
    let elapsed = t0.elapsed().as_secs_f64();
    let delivered = stats.delivered.load(Ordering::Relaxed) - d0;
    let errors = stats.errors.load(Ordering::Relaxed) - e0;
    let relay_cpu = relay.cpu() - relay_cpu0;
    let gen_cpu = cpu_seconds(std::process::id()) - gen_cpu0;
    let stored = relay.scrape("hush_relay_envelopes_stored_total").await - stored0;
    set_mode(&mode_txs, Mode::Quit);
    let (samples, [p50, p99, max]) = stats.latency.summary();
    println!(
        "latency at half of peak ({rate:.0}/s offered by {paced} clients in bursts of {k} every {:.1} ms each, {:.0}/s delivered, {errors} errors, {stored} written to SQLite): p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms ({samples} samples; sender's write -> recipient's read; cpu relay {:.2} / generator {:.2} cores, waited {:.2} s per s for a CPU; load average {load_before} -> {})",
        period.as_secs_f64() * 1000.0,
        delivered as f64 / elapsed,
        relay_cpu / elapsed,
        gen_cpu / elapsed,
        waited / elapsed,
        load_average()
    );
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    drop(relay);
    let _ = std::fs::remove_dir_all(&dir);
}

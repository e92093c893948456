//! The relay under abuse: starts the relay binary (default limits unless said) as a child
//! process for each attack, runs the attack on loopback next to honest clients, and prints the
//! relay's memory (resident set, peak), its database size, and how many of the honest
//! clients' requests succeeded during the attack.
//!
//! Run: `cargo bench -p hush-relay --bench relay_abuse -- [--seconds 10] [--relay PATH]`
//!
//! `--relay PATH` runs another `hush-relay` binary (e.g. one built from an older commit, to
//! compare); only flags every version knows are passed to it.
//!
//! Attacks:
//!   1. queue flood: attacker devices send 4 KiB envelopes to one offline victim as fast as
//!      the relay answers (1 attacker device for 3 × `--seconds`, then 20), while 10 honest
//!      devices each send the victim one small envelope (a call offer) per second;
//!   2. invented recipients: 20 attacker devices send 4 KiB envelopes to made-up device ids,
//!      honest senders as in 1;
//!   3. stalled readers: 10 devices authenticate and never read again while 5 attacker
//!      devices send them 40 KiB envelopes; an honest device keeps pinging until 35 s after
//!      the attack (the default write timeout is 30 s);
//!   4. one-time prekey drain: one attacker device fetches the victim's bundle as fast as the
//!      relay answers; afterwards an honest device fetches it.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hush_crypto::{Device, DeviceStore, MemoryBackend};
use hush_signaling::crypto::SignalSealer;
use hush_signaling::device::generate_device_key;
use hush_signaling::frame::{encode_client_frame, length_prefixed, TCP_PREAMBLE};
use hush_signaling::proto::relay::{self as pb, client_frame};
use hush_signaling::transport::{RelayClient, RelayClientConfig};
use hush_signaling::{CiphertextKind, DeviceId, DeviceSigner, Envelope, Error};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Relay {
    child: Child,
    addr: SocketAddr,
    metrics: SocketAddr,
    dir: std::path::PathBuf,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The relay binary to run (`--relay PATH`, else the one built with this bench).
static RELAY_BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

fn start_relay(name: &str) -> Relay {
    use std::io::BufRead;
    let dir = std::env::temp_dir().join(format!("hush-relay-abuse-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = RELAY_BIN.get_or_init(|| env!("CARGO_BIN_EXE_hush-relay").into());
    let mut child = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
        .arg("--db")
        .arg(dir.join("relay.db"))
        .env("HUSH_RELAY_LOG", "error")
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
        dir,
    }
}

impl Relay {
    /// `(resident, peak resident)` in MiB (Linux /proc).
    fn memory(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        };
        (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
    }

    /// Database files (main, WAL, shared memory) in MiB.
    fn database_mib(&self) -> f64 {
        std::fs::read_dir(&self.dir)
            .unwrap()
            .filter_map(Result::ok)
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum::<u64>() as f64
            / (1024.0 * 1024.0)
    }

    async fn metric(&self, name: &str) -> u64 {
        let mut s = TcpStream::connect(self.metrics).await.unwrap();
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

    async fn report(&self, what: &str) {
        let (rss, peak) = self.memory();
        println!(
            "  relay after {what}: resident {rss:.1} MiB (peak {peak:.1} MiB), database {:.2} MiB, {} envelopes queued",
            self.database_mib(),
            self.metric("hush_relay_queue_depth").await
        );
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn envelope(from: DeviceId, to: DeviceId, size: usize) -> Envelope {
    Envelope {
        id: rand::random(),
        sender: from,
        recipient: to,
        timestamp_ms: now_ms(),
        kind: CiphertextKind::Signal,
        ciphertext: vec![0x5a; size],
    }
}

fn sealer() -> SignalSealer<MemoryBackend> {
    let store = DeviceStore::create(MemoryBackend::new(), 1, &mut rand::rng()).unwrap();
    SignalSealer::new(Device::new(store))
}

async fn client(addr: SocketAddr, key: &dyn DeviceSigner) -> RelayClient {
    RelayClient::connect_tcp(addr, key, RelayClientConfig::default())
        .await
        .expect("connect")
}

/// A device that published its bundle (with `one_time` one-time prekeys, uploaded in chunks
/// that fit a frame).
async fn registered(addr: SocketAddr, one_time: usize) -> SignalSealer<MemoryBackend> {
    let mut s = sealer();
    let conn = client(addr, s.signer()).await;
    let mut left = one_time;
    loop {
        let n = left.min(25);
        let material = s.publish(n, n).unwrap();
        conn.upload_prekeys(material.bundle, material.one_time_prekeys, false)
            .await
            .expect("upload");
        left -= n;
        if left == 0 {
            break;
        }
    }
    s
}

/// Tally of answers by kind.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    quota: AtomicU64,
    full: AtomicU64,
    unknown: AtomicU64,
    rate: AtomicU64,
    other: AtomicU64,
}

impl Tally {
    fn add(&self, r: &Result<(), Error>) {
        use hush_signaling::proto::relay::ErrorCode as C;
        let slot = match r {
            Ok(()) => &self.ok,
            Err(Error::Relay { code, .. }) => match code {
                C::SenderQuotaExceeded => &self.quota,
                C::QueueFull => &self.full,
                C::UnknownRecipient => &self.unknown,
                C::RateLimited => &self.rate,
                _ => &self.other,
            },
            Err(_) => &self.other,
        };
        slot.fetch_add(1, Ordering::Relaxed);
    }

    fn line(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "{} accepted, {} over sender quota, {} queue full, {} unknown recipient, {} rate limited, {} other",
            g(&self.ok),
            g(&self.quota),
            g(&self.full),
            g(&self.unknown),
            g(&self.rate),
            g(&self.other)
        )
    }
}

/// Attacker devices send `size`-byte envelopes to `target()` back to back until `until`.
fn spawn_flood(
    addr: SocketAddr,
    devices: usize,
    size: usize,
    target: impl Fn() -> DeviceId + Clone + Send + 'static,
    until: Instant,
    tally: Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..devices)
        .map(|_| {
            let (target, tally) = (target.clone(), tally.clone());
            tokio::spawn(async move {
                let key = generate_device_key();
                let conn = client(addr, &key).await;
                while Instant::now() < until {
                    let r = conn
                        .send_envelope(envelope(key.device_id(), target(), size))
                        .await;
                    tally.add(&r);
                }
            })
        })
        .collect()
}

/// Ten honest devices each send `victim` one 300-byte envelope per second until `until`.
fn spawn_honest(
    addr: SocketAddr,
    victim: DeviceId,
    until: Instant,
    tally: Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..10)
        .map(|_| {
            let tally = tally.clone();
            tokio::spawn(async move {
                let key = generate_device_key();
                let conn = client(addr, &key).await;
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                while Instant::now() < until {
                    tick.tick().await;
                    tally.add(
                        &conn
                            .send_envelope(envelope(key.device_id(), victim, 300))
                            .await,
                    );
                }
            })
        })
        .collect()
}

fn honest_rate(t: &Tally) -> String {
    let ok = t.ok.load(Ordering::Relaxed);
    let all = ok
        + t.quota.load(Ordering::Relaxed)
        + t.full.load(Ordering::Relaxed)
        + t.unknown.load(Ordering::Relaxed)
        + t.rate.load(Ordering::Relaxed)
        + t.other.load(Ordering::Relaxed);
    format!(
        "{ok}/{all} accepted ({:.1} %)",
        100.0 * ok as f64 / all.max(1) as f64
    )
}

async fn queue_flood(seconds: u64, attackers: usize) {
    println!("1. queue flood: {attackers} attacker device(s) -> one offline victim, 4 KiB envelopes, {seconds} s");
    let relay = start_relay("flood");
    let victim = registered(relay.addr, 0).await.device_id();
    let until = Instant::now() + Duration::from_secs(seconds);
    let (bad, good) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
    let mut tasks = spawn_flood(
        relay.addr,
        attackers,
        4096,
        move || victim,
        until,
        bad.clone(),
    );
    tasks.extend(spawn_honest(relay.addr, victim, until, good.clone()));
    for t in tasks {
        let _ = t.await;
    }
    println!("  attackers: {}", bad.line());
    println!("  honest senders: {}", honest_rate(&good));
    relay.report("the flood").await;
}

async fn invented_recipients(seconds: u64) {
    println!("2. invented recipients: 20 attacker devices -> random device ids, 4 KiB envelopes, {seconds} s");
    let relay = start_relay("invented");
    let victim = registered(relay.addr, 0).await.device_id();
    let until = Instant::now() + Duration::from_secs(seconds);
    let (bad, good) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
    let mut tasks = spawn_flood(
        relay.addr,
        20,
        4096,
        || generate_device_key().device_id(),
        until,
        bad.clone(),
    );
    tasks.extend(spawn_honest(relay.addr, victim, until, good.clone()));
    for t in tasks {
        let _ = t.await;
    }
    println!("  attackers: {}", bad.line());
    println!("  honest senders: {}", honest_rate(&good));
    relay.report("the flood").await;
}

async fn stalled_readers(seconds: u64) {
    const STALLED: usize = 10;
    println!(
        "3. stalled readers: {STALLED} devices authenticate and never read; 5 attacker devices send them 40 KiB envelopes for {seconds} s, then 35 s of observation (default write timeout 30 s)"
    );
    let relay = start_relay("stalled");
    let mut stalled = Vec::new();
    let mut targets = Vec::new();
    for _ in 0..STALLED {
        let s = registered(relay.addr, 0).await;
        targets.push(s.device_id());
        // Authenticates with a raw socket, then never reads from it again.
        let mut stream = TcpStream::connect(relay.addr).await.unwrap();
        stream.write_all(&TCP_PREAMBLE).await.unwrap();
        // Only the challenge comes before the client answers: nothing is read past it.
        let mut frames = tokio_util::codec::FramedRead::new(
            &mut stream,
            hush_signaling::frame::RelayFrameCodec::new(1 << 16),
        );
        let frame = futures_util::StreamExt::next(&mut frames)
            .await
            .unwrap()
            .unwrap();
        drop(frames);
        let Ok(hush_signaling::proto::relay::server_frame::Frame::Challenge(c)) =
            hush_signaling::frame::decode_server_frame(&frame)
        else {
            panic!("challenge")
        };
        let nonce: [u8; hush_signaling::device::AUTH_NONCE_LEN] =
            c.nonce.as_slice().try_into().unwrap();
        let binding =
            hush_signaling::device::ChannelBinding::RelayKey(c.relay_key.try_into().unwrap());
        let auth = encode_client_frame(client_frame::Frame::Auth(pb::AuthResponse {
            version: hush_signaling::transport::RELAY_PROTOCOL_VERSION,
            device_key: s.device_id().as_bytes().to_vec(),
            signature: hush_signaling::device::sign_challenge(s.signer(), &nonce, &binding)
                .to_vec(),
            binding_type: binding.binding_type() as i32,
        }));
        stream
            .write_all(&length_prefixed(&auth).unwrap())
            .await
            .unwrap();
        stalled.push(stream);
    }
    let pinger_key = generate_device_key();
    let pinger = client(relay.addr, &pinger_key).await;
    let before = relay.metric("hush_relay_authenticated_connections").await;
    let until = Instant::now() + Duration::from_secs(seconds);
    let bad = Arc::new(Tally::default());
    let targets = Arc::new(targets);
    let next = Arc::new(AtomicU64::new(0));
    let pick = move || targets[next.fetch_add(1, Ordering::Relaxed) as usize % targets.len()];
    let tasks = spawn_flood(relay.addr, 5, 40 * 1024, pick, until, bad.clone());
    let (mut pings, mut pongs) = (0, 0);
    while Instant::now() < until + Duration::from_secs(35) {
        pings += 1;
        if pinger.ping().await.is_ok() {
            pongs += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for t in tasks {
        let _ = t.await;
    }
    println!("  attackers: {}", bad.line());
    println!(
        "  authenticated connections: {before} before, {} after (the relay closed {} of the stalled ones; write timeouts counted: {}); honest pings answered {pongs}/{pings}",
        relay.metric("hush_relay_authenticated_connections").await,
        before.saturating_sub(relay.metric("hush_relay_authenticated_connections").await),
        relay.metric("hush_relay_write_timeouts_total").await
    );
    relay.report("the attack").await;
    drop(stalled);
}

async fn prekey_drain(seconds: u64) {
    println!("4. one-time prekey drain: one attacker device fetches the victim's bundle back to back for {seconds} s");
    let relay = start_relay("drain");
    let victim = registered(relay.addr, 100).await.device_id();
    let key = generate_device_key();
    let attacker = client(relay.addr, &key).await;
    let until = Instant::now() + Duration::from_secs(seconds);
    let (mut fetches, mut one_time) = (0, 0);
    while Instant::now() < until {
        match attacker.fetch_bundle(victim).await {
            Ok(b) => {
                fetches += 1;
                if b.one_time_prekey.is_some() {
                    one_time += 1;
                }
            }
            Err(_) => fetches += 1,
        }
    }
    let honest = client(relay.addr, &generate_device_key()).await;
    let got = honest
        .fetch_bundle(victim)
        .await
        .map(|b| b.one_time_prekey.is_some());
    println!(
        "  attacker: {fetches} fetches, {one_time} of the victim's 100 one-time prekeys taken; an honest fetch afterwards got a one-time prekey: {got:?}"
    );
    relay.report("the drain").await;
}

fn main() {
    let mut seconds = 10;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--seconds" {
            seconds = args
                .next()
                .and_then(|v| v.parse().ok())
                .expect("--seconds N");
        } else if flag == "--relay" {
            let path = args.next().expect("--relay PATH");
            let _ = RELAY_BIN.set(path.into());
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!("relay_abuse: default relay limits unless said, loopback, {seconds} s per attack");
        // Three times as long with one attacker: at the default rate limit (50/s, burst 200)
        // one device needs 16 s to fill a shared queue of 1000.
        queue_flood(seconds * 3, 1).await;
        queue_flood(seconds, 20).await;
        invented_recipients(seconds).await;
        stalled_readers(seconds).await;
        prekey_drain(seconds).await;
    });
}

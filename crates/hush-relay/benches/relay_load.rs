//! Load benchmark: starts the relay binary as a child process and N authenticated clients on
//! loopback, then measures
//!   1. connection setup (TCP + challenge–response) for N concurrent clients,
//!   2. peak end-to-end throughput (envelopes/s sender → relay (durable) → recipient, closed
//!      loop, every delivery acknowledged),
//!   3. end-to-end latency p50/p99 at half of the measured peak (open loop, paced).
//!
//! Run: `cargo bench -p hush-relay --bench relay_load -- [--clients 10000] [--seconds 10]
//!       [--sync full|normal] [--in-flight 1]`
//! Loopback only; every phase is bounded in time.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hush_signaling::device::generate_device_key;
use hush_signaling::transport::{RelayClient, RelayClientConfig};
use hush_signaling::{CiphertextKind, DeviceId, DeviceSigner, Envelope, Transport};
use tokio::net::TcpSocket;

struct Args {
    clients: usize,
    seconds: u64,
    sync: String,
    in_flight: usize,
}

fn args() -> Args {
    let mut a = Args {
        clients: 10_000,
        seconds: 10,
        sync: "full".into(),
        in_flight: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_default();
        match flag.as_str() {
            "--clients" => a.clients = val().parse().expect("--clients N"),
            "--seconds" => a.seconds = val().parse().expect("--seconds N"),
            "--sync" => a.sync = val(),
            "--in-flight" => a.in_flight = val().parse().expect("--in-flight N"),
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

fn start_relay(db: &std::path::Path, sync: &str, clients: usize) -> Relay {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_hush-relay"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--sync",
            sync,
        ])
        .args([
            "--rate",
            "1000000",
            "--burst",
            "1000000",
            "--max-queue",
            "100000",
        ])
        .args(["--max-connections", &(clients + 100).to_string()])
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

async fn scrape(metrics: SocketAddr, name: &str) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(metrics).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Connects from 127.0.0.x source addresses so ephemeral ports never run short.
async fn connect(i: usize, relay: SocketAddr, key: &dyn DeviceSigner) -> RelayClient {
    let src = IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        (1 + i / 20_000) as u8,
        (1 + (i / 250) % 250) as u8,
    ));
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(src, 0)).unwrap();
    let stream = socket.connect(relay).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let mut config = RelayClientConfig::default();
    config.request_timeout = Duration::from_secs(30);
    config.handshake_timeout = Duration::from_secs(60);
    RelayClient::connect_stream(stream, key, config)
        .await
        .expect("authenticate")
}

/// Latency samples (µs) and counters for one phase.
#[derive(Default)]
struct Phase {
    delivered: AtomicU64,
    samples: Mutex<Vec<u32>>,
    recording: AtomicBool,
}

fn envelope(from: DeviceId, to: DeviceId, base: Instant) -> Envelope {
    // The ciphertext stands in for a sealed message: 100 bytes, starting with the send time.
    let mut ciphertext = vec![0x5a; 100];
    ciphertext[..16].copy_from_slice(&base.elapsed().as_nanos().to_be_bytes());
    Envelope {
        id: rand::random(),
        sender: from,
        recipient: to,
        timestamp_ms: now_ms(),
        kind: CiphertextKind::Signal,
        ciphertext,
    }
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

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[idx]) / 1000.0
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(args));
}

async fn run(args: Args) {
    let dir = std::env::temp_dir().join(format!("hush-relay-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let relay = start_relay(&dir.join("relay.db"), &args.sync, args.clients);
    let n = args.clients;
    println!(
        "relay_load: {n} clients, sync={}, {} s per phase, loopback, 2 processes",
        args.sync, args.seconds
    );

    // Phase 1: connect and authenticate everyone.
    let keys: Vec<_> = (0..n).map(|_| Arc::new(generate_device_key())).collect();
    let ids: Vec<DeviceId> = keys.iter().map(|k| k.device_id()).collect();
    let start = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let mut handles = Vec::with_capacity(n);
    for (i, key) in keys.iter().enumerate() {
        let (sem, key, addr) = (sem.clone(), key.clone(), relay.addr);
        handles.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.unwrap();
            connect(i, addr, key.as_ref()).await
        }));
    }
    let mut clients = Vec::with_capacity(n);
    for h in handles {
        clients.push(h.await.unwrap());
    }
    let connect_secs = start.elapsed().as_secs_f64();
    let authenticated = scrape(relay.metrics, "hush_relay_authenticated_connections").await;
    println!(
        "connections: {authenticated} authenticated concurrently (relay gauge), set up in {connect_secs:.2} s ({:.0}/s)",
        n as f64 / connect_secs
    );
    assert_eq!(
        authenticated as usize, n,
        "every client holds an authenticated connection"
    );

    // Split each client into a receive loop (acks everything) and a shared send handle.
    let base = Instant::now();
    let phase = Arc::new(Mutex::new(Arc::new(Phase::default())));
    let mut senders = Vec::with_capacity(n);
    for mut client in clients {
        let (tx, mut rx) =
            tokio::sync::mpsc::channel::<(Envelope, tokio::sync::oneshot::Sender<bool>)>(64);
        let phase = phase.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = client.recv() => {
                        let Ok(r) = r else { return };
                        let sent = u128::from_be_bytes(r.envelope.ciphertext[..16].try_into().unwrap());
                        let lat_us = (base.elapsed().as_nanos().saturating_sub(sent) / 1000) as u32;
                        let p = phase.lock().unwrap().clone();
                        p.delivered.fetch_add(1, Ordering::Relaxed);
                        if p.recording.load(Ordering::Relaxed) {
                            p.samples.lock().unwrap().push(lat_us);
                        }
                        let _ = client.ack(r.tag).await;
                    }
                    cmd = rx.recv() => {
                        let Some((env, done)) = cmd else { return };
                        let ok = client.send_envelope(env).await.is_ok();
                        let _ = done.send(ok);
                    }
                }
            }
        });
        senders.push(tx);
    }
    let senders = Arc::new(senders);
    let ids = Arc::new(ids);

    // Phase 2: peak throughput, closed loop (each client keeps `in_flight` sends outstanding
    // to its partner).
    let peak_phase = Arc::new(Phase::default());
    *phase.lock().unwrap() = peak_phase.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..n {
        for _ in 0..args.in_flight {
            let (senders, ids, stop, errors) =
                (senders.clone(), ids.clone(), stop.clone(), errors.clone());
            tasks.push(tokio::spawn(async move {
                let to = ids[(i + n / 2 + 1) % n];
                while !stop.load(Ordering::Relaxed) {
                    let (done, wait) = tokio::sync::oneshot::channel();
                    if senders[i]
                        .send((envelope(ids[i], to, base), done))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    if !wait.await.unwrap_or(false) {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // warm-up
    let d0 = peak_phase.delivered.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let (relay_cpu0, bench_cpu0) = (
        cpu_seconds(relay.child.id()),
        cpu_seconds(std::process::id()),
    );
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let delivered = peak_phase.delivered.load(Ordering::Relaxed) - d0;
    let peak = delivered as f64 / t0.elapsed().as_secs_f64();
    let relay_cpu = cpu_seconds(relay.child.id()) - relay_cpu0;
    let bench_cpu = cpu_seconds(std::process::id()) - bench_cpu0;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
    println!(
        "peak throughput: {peak:.0} envelopes/s end to end ({delivered} delivered in {} s, {} send errors)",
        args.seconds,
        errors.load(Ordering::Relaxed)
    );
    let per_env = relay_cpu / delivered.max(1) as f64;
    println!(
        "cpu during peak: relay {:.2} cores, clients {:.2} cores; relay {:.1} us CPU per envelope (store + deliver + ack) => {:.0} envelopes/s per dedicated core",
        relay_cpu / args.seconds as f64,
        bench_cpu / args.seconds as f64,
        per_env * 1e6,
        1.0 / per_env
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Phase 3: latency at half of peak, open loop: every client sends at rate/N per second.
    let rate = (peak / 2.0).max(1.0);
    let lat_phase = Arc::new(Phase::default());
    *phase.lock().unwrap() = lat_phase.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let per_client = Duration::from_secs_f64(n as f64 / rate);
    let mut tasks = Vec::new();
    for i in 0..n {
        let (senders, ids, stop) = (senders.clone(), ids.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let to = ids[(i + 1) % n];
            // Spread the clients' phases over one period.
            let offset = per_client.mul_f64(i as f64 / n as f64);
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + offset, per_client);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let (done, wait) = tokio::sync::oneshot::channel();
                if senders[i]
                    .send((envelope(ids[i], to, base), done))
                    .await
                    .is_err()
                {
                    return;
                }
                let _ = wait.await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    lat_phase.recording.store(true, Ordering::Relaxed);
    let d0 = lat_phase.delivered.load(Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    lat_phase.recording.store(false, Ordering::Relaxed);
    let achieved =
        (lat_phase.delivered.load(Ordering::Relaxed) - d0) as f64 / t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut samples = std::mem::take(&mut *lat_phase.samples.lock().unwrap());
    samples.sort_unstable();
    println!(
        "latency at half of peak ({rate:.0}/s offered, {achieved:.0}/s delivered): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples; send -> durable store -> recipient)",
        percentile(&samples, 0.50),
        percentile(&samples, 0.99),
        percentile(&samples, 1.0),
        samples.len()
    );
    let relay_p = scrape(relay.metrics, "hush_relay_envelopes_received_total").await;
    println!("relay counted {relay_p} envelopes stored in total");
    for t in tasks {
        t.abort();
    }
    drop(relay);
    let _ = std::fs::remove_dir_all(&dir);
}

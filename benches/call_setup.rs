//! Call setup time, memory and CPU per call, and memory over many sequential calls, through the
//! public API.
//!
//! Each call: Alice calls Bob (sealed offer over the in-memory signaling network), Bob accepts
//! at once, ICE connects over loopback UDP, and Alice sends 20 ms Opus frames at microphone pace
//! (from the moment `Client::call` returns) until Bob decodes the first one. Setup time is
//! `Client::call` → Bob's first decoded frame. After each call Alice hangs up and both sides
//! see it end. Resident memory is sampled from /proc every `--rss-every` calls.
//!
//! `--cpu SECS` keeps one call connected for SECS with audio both ways and reads the process's
//! CPU time (/proc/self/stat) over that interval. `--concurrent K` sets up K client pairs, reads
//! resident memory with the clients idle, then with K calls connected (audio both ways), and
//! reports the difference per call and the CPU per call over `--hold SECS` (default 10).
//!
//! `--playout-delay-ms D` sets the jitter buffer's initial delay for the setup series (0, the
//! facade's default since the NetEq-like start; 20 ms before): the first frame is played that
//! long after its packet arrived, so with 0 the series shows first packet decrypted and decoded,
//! the counterpart of webrtc-rs's first RTP read, and also the moment the callee's application
//! is handed audio to play.
//!
//! `--replay-window-s S` sets the signaling replay guard's window (`SignalingConfig::max_age`,
//! 120 s by default): every message id of that window is remembered, so resident memory grows
//! with the calls of the last S seconds and is flat after that.
//!
//! `--relay` runs the setup series twice in the same process, first over the in-memory
//! signaling network, then over a hush relay started in-process (TCP on loopback, SQLite in a
//! scratch directory, default settings but the per-connection rate limit lifted): the same
//! calls with real signaling round trips.
//!
//! The last line printed is one JSON object with every figure measured in that run.
//!
//! `cargo bench --bench call_setup -- [--calls N] [--rss-every M] [--cpu SECS]
//! [--concurrent K] [--hold SECS] [--playout-delay-ms D] [--replay-window-s S] [--relay]` (default
//! `--calls 100 --rss-every 100`; `--calls 0` skips the setup series).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hush::{Call, CallEvent, Client, ClientConfig, FrameSource};
use hush_crypto::{Device, DeviceStore, MemoryBackend};
use hush_net::driver::Bind;
use hush_signaling::crypto::SignalSealer;
use hush_signaling::transport::FetchedBundle;
use hush_signaling::{MemoryNetwork, SignalingClient, SignalingConfig};

/// Knobs the bench may turn away from the defaults.
#[derive(Clone, Copy, Default)]
struct Knobs {
    /// The jitter buffer's initial delay (the facade's default, 0, unless set).
    playout_delay: Option<Duration>,
    /// The signaling replay guard's window, `SignalingConfig::max_age` (120 s by default).
    replay_window: Option<Duration>,
}

/// ICE on loopback only: host candidates, no STUN or TURN.
fn loopback_config(playout_delay: Option<Duration>) -> ClientConfig {
    let net = hush_net::Config::builder()
        .include_loopback(true)
        .build()
        .expect("valid ICE config");
    let mut config = ClientConfig::new(net);
    config.bind = Bind::Addresses(vec!["127.0.0.1".parse().expect("address")]);
    if let Some(d) = playout_delay {
        config.media.jitter.initial_delay = d;
    }
    config
}

/// What keeps a pair's signaling alive: an in-memory network, or an in-process relay (stopped
/// and its scratch directory removed on drop).
enum Keep {
    Memory(#[allow(dead_code, reason = "kept alive only")] MemoryNetwork),
    Relay(tokio::task::JoinHandle<()>, std::path::PathBuf),
}

impl Drop for Keep {
    fn drop(&mut self) {
        if let Self::Relay(task, dir) = self {
            task.abort();
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Alice and Bob connected over TCP to a relay started in-process; both published prekeys,
/// Alice fetched Bob's bundle from the relay and holds a session with him.
async fn relay_pair(knobs: Knobs) -> (Client, Client, Keep) {
    use hush_signaling::transport::{RelayClient, RelayClientConfig};
    let dir = std::env::temp_dir().join(format!(
        "hush-call-setup-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let mut relay_config = hush_relay::RelayConfig::new(
        "127.0.0.1:0".parse().expect("address"),
        dir.join("relay.db"),
    );
    // Back-to-back calls of a few tens of milliseconds each send more than the default 50
    // requests per second per connection; this measures setup, not the abuse limits.
    relay_config.rate_limit_per_sec = 100_000;
    relay_config.rate_limit_burst = 100_000;
    let relay = hush_relay::Relay::bind(relay_config)
        .await
        .expect("relay binds");
    let addr = relay.local_addr();
    let task = tokio::spawn(async move {
        let _ = relay.serve().await;
    });
    let new = |id| {
        let store = DeviceStore::create(MemoryBackend::new(), id, &mut rand::rng())
            .expect("in-memory store");
        SignalSealer::new(Device::new(store))
    };
    let (mut alice, mut bob) = (new(1), new(2));
    let mut conns = Vec::new();
    for sealer in [&mut alice, &mut bob] {
        let conn = RelayClient::connect_tcp(addr, sealer.signer(), RelayClientConfig::default())
            .await
            .expect("authenticates");
        let material = sealer.publish(1, 1).expect("prekeys");
        conn.upload_prekeys(material.bundle, material.one_time_prekeys, false)
            .await
            .expect("prekeys uploaded");
        conns.push(conn);
    }
    let bob_conn = conns.pop().expect("bob");
    let alice_conn = conns.pop().expect("alice");
    let fetched = alice_conn
        .fetch_bundle(bob.device_id())
        .await
        .expect("bundle fetched");
    alice.start_session(&fetched).expect("session from bundle");
    let config = loopback_config(knobs.playout_delay);
    let mut signaling = SignalingConfig::default();
    if let Some(w) = knobs.replay_window {
        signaling.max_age = w;
    }
    let client = |conn, sealer| {
        Client::builder(
            SignalingClient::with_config(conn, sealer, signaling.clone()),
            config.net.clone(),
        )
        .config(config.clone())
        .build()
    };
    (
        client(alice_conn, alice),
        client(bob_conn, bob),
        Keep::Relay(task, dir),
    )
}

/// Alice and Bob with fresh identities on their own in-memory signaling network; Alice holds a
/// Signal session with Bob (she fetched his bundle).
fn pair(knobs: Knobs) -> (Client, Client, MemoryNetwork) {
    let new = |id| {
        let store = DeviceStore::create(MemoryBackend::new(), id, &mut rand::rng())
            .expect("in-memory store");
        SignalSealer::new(Device::new(store))
    };
    let (mut alice, mut bob) = (new(1), new(2));
    let material = bob.publish(1, 1).expect("prekeys");
    alice
        .start_session(&FetchedBundle {
            device: bob.device_id(),
            bundle: material.bundle,
            one_time_prekey: material.one_time_prekeys.into_iter().next(),
        })
        .expect("session from bundle");
    let network = MemoryNetwork::new();
    let config = loopback_config(knobs.playout_delay);
    let mut signaling = SignalingConfig::default();
    if let Some(w) = knobs.replay_window {
        signaling.max_age = w;
    }
    let mut clients = [alice, bob].into_iter().map(|s| {
        let endpoint = network.endpoint(s.device_id());
        let signaling = SignalingClient::with_config(endpoint, s, signaling.clone());
        Client::builder(signaling, config.net.clone())
            .config(config.clone())
            .build()
    });
    let (alice, bob) = (clients.next().expect("alice"), clients.next().expect("bob"));
    (alice, bob, network)
}

/// 20 ms of a 440 Hz tone at 48 kHz, starting at frame `n`.
fn tone(n: u32) -> Vec<i16> {
    (0..960u32)
        .map(|i| {
            let t = f64::from(n * 960 + i) / 48_000.0;
            (8_000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16
        })
        .collect()
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// User + system CPU time of the whole process (all threads), from /proc/self/stat.
fn cpu_time() -> Duration {
    let ticks_per_s = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse::<u64>().ok())
        .unwrap_or(100);
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 1000 / ticks_per_s)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A JSON number, or null when not finite.
fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}")
    } else {
        "null".into()
    }
}

/// The milestones of one call, each from `Client::call`.
struct Setup {
    /// Bob's `Connected` event (ICE pair selected, keys in place on his side).
    callee_connected: Option<Duration>,
    /// Bob's first decoded frame.
    first_decoded: Duration,
}

/// Places a call from Alice to Bob, Bob accepts at once; returns both ends once Bob decoded a
/// frame, and the milestones.
async fn connect(alice: &Client, bob: &Client) -> Result<(Call, Call, Setup), String> {
    let start = Instant::now();
    // The microphone starts with the call, at a random phase of its 20 ms frame clock (the
    // webrtc-rs reference does the same): frames before Bob's answer are dropped by design.
    let phase = Duration::from_micros(rand::random_range(0..20_000));
    let mut ticker = tokio::time::interval_at((start + phase).into(), Duration::from_millis(20));
    let call = alice
        .call(bob.device_id())
        .await
        .map_err(|e| e.to_string())?;
    let mut n = 0;
    let incoming = loop {
        tokio::select! {
            _ = ticker.tick() => {
                let _ = call.send_audio(&tone(n));
                n += 1;
                if n > 250 {
                    return Err("no ring within 5 s".into());
                }
            }
            i = bob.incoming() => break i.ok_or("bob stopped")?,
        }
    };
    let answered = incoming.accept().await.map_err(|e| e.to_string())?;
    let mut callee_connected = None;
    let first_decoded = loop {
        tokio::select! {
            _ = ticker.tick() => {
                let _ = call.send_audio(&tone(n));
                n += 1;
                if n > 250 {
                    return Err("no audio within 5 s".into());
                }
            }
            e = answered.next_event(), if callee_connected.is_none() => {
                match e.ok_or("bob stopped")? {
                    CallEvent::Connected { .. } => callee_connected = Some(start.elapsed()),
                    CallEvent::Ended(r) => return Err(format!("ended: {r:?}")),
                    _ => {}
                }
            }
            f = answered.recv_audio() => {
                let f = f.ok_or("call ended")?;
                if f.source == FrameSource::Decoded {
                    break start.elapsed();
                }
            }
        }
    };
    Ok((
        call,
        answered,
        Setup {
            callee_connected,
            first_decoded,
        },
    ))
}

/// Alice hangs up; waits until both ends report the end.
async fn hang_up(call: &Call, answered: &Call) -> Result<(), String> {
    call.hangup().map_err(|e| e.to_string())?;
    for c in [call, answered] {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), c.next_event()).await {
                Ok(Some(CallEvent::Ended(_))) => break,
                Ok(Some(_)) => {}
                _ => return Err("no end".into()),
            }
        }
    }
    Ok(())
}

/// Frames played at each end while talking.
#[derive(Default, Clone, Copy)]
struct Played {
    /// Decoded from a received packet, at Alice and at Bob.
    decoded: [u64; 2],
    /// Rebuilt from FEC or concealed, at both ends together.
    not_decoded: u64,
}

/// Audio both ways at microphone pace, each end draining what it plays, for `hold`.
async fn talk(a: &Call, b: &Call, hold: Duration) -> Played {
    let deadline = tokio::time::Instant::now() + hold;
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    let (mut n, mut played) = (0u32, Played::default());
    let mut count = |end: usize, f: hush::AudioFrame| {
        if f.source == FrameSource::Decoded {
            played.decoded[end] += 1;
        } else {
            played.not_decoded += 1;
        }
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return played,
            _ = ticker.tick() => {
                let pcm = tone(n);
                let _ = a.send_audio(&pcm);
                let _ = b.send_audio(&pcm);
                n += 1;
            }
            Some(f) = a.recv_audio() => count(0, f),
            Some(f) = b.recv_audio() => count(1, f),
        }
    }
}

/// `calls` sequential calls between one pair (signaling in memory, or over an in-process relay
/// with `relay`); setup times and resident memory.
async fn sequential(calls: usize, every: usize, knobs: Knobs, relay: bool) -> String {
    let (alice, bob, _keep) = if relay {
        relay_pair(knobs).await
    } else {
        let (a, b, net) = pair(knobs);
        (a, b, Keep::Memory(net))
    };
    let via = if relay { "relay" } else { "memory" };
    let mut first = Vec::with_capacity(calls);
    let mut connected = Vec::with_capacity(calls);
    let mut rss = vec![(0, rss_kib())];
    let mut failed = 0;
    for i in 0..calls {
        let result = async {
            let (call, answered, setup) = connect(&alice, &bob).await?;
            hang_up(&call, &answered).await?;
            Ok::<_, String>(setup)
        }
        .await;
        match result {
            Ok(s) => {
                first.push(ms(s.first_decoded));
                if let Some(c) = s.callee_connected {
                    connected.push(ms(c));
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("call {i}: {e}");
            }
        }
        if (i + 1) % every == 0 || i + 1 == calls {
            rss.push((i + 1, rss_kib()));
        }
    }
    first.sort_by(f64::total_cmp);
    connected.sort_by(f64::total_cmp);
    let (median, p95) = (percentile(&first, 0.5), percentile(&first, 0.95));
    let (min, max) = (
        first.first().copied().unwrap_or(f64::NAN),
        first.last().copied().unwrap_or(f64::NAN),
    );
    println!(
        "hush, signaling over {via}: {calls} calls ({failed} failed); Client::call -> first decoded frame at the callee: median {median:.1} ms, p95 {p95:.1} ms, min {min:.1}, max {max:.1}; callee Connected event: median {:.1} ms",
        percentile(&connected, 0.5)
    );
    let mut buckets = std::collections::BTreeMap::new();
    for v in &first {
        *buckets.entry((v / 10.0) as u64 * 10).or_insert(0u32) += 1;
    }
    let buckets: Vec<String> = buckets
        .iter()
        .map(|(b, n)| format!("{b}-{}: {n}", b + 10))
        .collect();
    println!(
        "setup times in 10 ms buckets (ms: calls): {}",
        buckets.join(", ")
    );
    let samples: Vec<String> = rss.iter().map(|(n, k)| format!("{n}: {k}")).collect();
    println!(
        "resident memory (KiB) after N calls: {}",
        samples.join(", ")
    );
    let rss_json: Vec<String> = rss.iter().map(|(n, k)| format!("[{n},{k}]")).collect();
    let prefix = if relay { "relay_" } else { "" };
    let body = format!(
        "\"playout_delay_ms\":{},\"replay_window_s\":{},\"calls\":{calls},\"failed\":{failed},\"median_ms\":{},\"p95_ms\":{},\"min_ms\":{},\"max_ms\":{},\"callee_connected_median_ms\":{},\"rss_kib\":[{}]",
        knobs
            .playout_delay
            .map_or("null".into(), |d| d.as_millis().to_string()),
        knobs
            .replay_window
            .map_or("null".into(), |d| d.as_secs().to_string()),
        num(median),
        num(p95),
        num(min),
        num(max),
        num(percentile(&connected, 0.5)),
        rss_json.join(",")
    );
    // Keys of the relay series get a "relay_" prefix, so both series fit in one object.
    body.replace("\"playout", &format!("\"{prefix}playout"))
        .replace(",\"", &format!(",\"{prefix}"))
}

/// One call held for `secs` with audio both ways; CPU of the whole process over that time.
async fn cpu(secs: u64) -> String {
    let (alice, bob, _net) = pair(Knobs::default());
    let (call, answered, _) = connect(&alice, &bob).await.expect("call connects");
    // Let the first second (jitter buffer fill, bitrate ramp) pass before measuring.
    talk(&call, &answered, Duration::from_secs(1)).await;
    let (c0, t0) = (cpu_time(), Instant::now());
    let played = talk(&call, &answered, Duration::from_secs(secs)).await;
    let ([got_a, got_b], other) = (played.decoded, played.not_decoded);
    let (used, wall) = (cpu_time() - c0, t0.elapsed());
    hang_up(&call, &answered).await.expect("hangup");
    let pct = 100.0 * used.as_secs_f64() / wall.as_secs_f64();
    println!(
        "hush: one call, audio both ways for {:.1} s: {:.2} % of one core for the call (both ends in this process), {:.2} % per end; frames decoded {got_a} by Alice, {got_b} by Bob, {other} concealed or from FEC",
        wall.as_secs_f64(),
        pct,
        pct / 2.0
    );
    format!(
        "\"cpu_hold_s\":{:.1},\"cpu_pct_per_call\":{},\"cpu_pct_per_end\":{},\"cpu_frames_decoded\":[{got_a},{got_b}],\"cpu_frames_not_decoded\":{other}",
        wall.as_secs_f64(),
        num(pct),
        num(pct / 2.0)
    )
}

/// `k` client pairs, each with one connected call and audio both ways; memory and CPU per call.
async fn concurrent(k: usize, hold: u64) -> String {
    let rss_start = rss_kib();
    let pairs: Vec<_> = (0..k).map(|_| pair(Knobs::default())).collect();
    // Let the client actors settle before the idle sample.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = rss_kib();
    let mut calls = Vec::with_capacity(k);
    for (alice, bob, _) in &pairs {
        let (a, b, _) = connect(alice, bob).await.expect("call connects");
        calls.push(Arc::new((a, b)));
    }
    // Each call talks on its own task, as each call of an app would be fed by its own audio
    // thread; the first second (jitter buffer fill) is not measured.
    let talk_all = |hold: Duration| {
        let tasks: Vec<_> = calls
            .iter()
            .map(|c| {
                let c = Arc::clone(c);
                tokio::spawn(async move { talk(&c.0, &c.1, hold).await })
            })
            .collect();
        async move {
            let mut played = Vec::with_capacity(tasks.len());
            for t in tasks {
                played.push(t.await.expect("talk task"));
            }
            played
        }
    };
    talk_all(Duration::from_secs(1)).await;
    let (c0, t0) = (cpu_time(), Instant::now());
    let decoded = talk_all(Duration::from_secs(hold)).await;
    let (used, wall) = (cpu_time() - c0, t0.elapsed());
    let rss_connected = rss_kib();
    for c in &calls {
        hang_up(&c.0, &c.1).await.expect("hangup");
    }
    let expected = 2 * k as u64 * (hold * 50);
    let got: u64 = decoded.iter().map(|p| p.decoded[0] + p.decoded[1]).sum();
    let other: u64 = decoded.iter().map(|p| p.not_decoded).sum();
    let per_call_kib = (rss_connected.saturating_sub(rss_idle)) as f64 / k as f64;
    let per_pair_kib = (rss_idle.saturating_sub(rss_start)) as f64 / k as f64;
    let pct = 100.0 * used.as_secs_f64() / wall.as_secs_f64();
    println!(
        "hush: {k} concurrent calls ({} clients): resident {rss_start} KiB before the clients, {rss_idle} KiB with the clients idle, {rss_connected} KiB with {k} calls connected -> {:.0} KiB per connected call (both ends), {:.0} KiB per idle client pair; CPU {:.1} % of one core in total, {:.2} % per call, over {:.1} s; {got} of ~{expected} frames decoded, {other} concealed or from FEC",
        2 * k,
        per_call_kib,
        per_pair_kib,
        pct,
        pct / k as f64,
        wall.as_secs_f64()
    );
    format!(
        "\"concurrent\":{k},\"rss_kib_start\":{rss_start},\"rss_kib_idle\":{rss_idle},\"rss_kib_connected\":{rss_connected},\"kib_per_call\":{},\"kib_per_idle_pair\":{},\"concurrent_cpu_pct_total\":{},\"concurrent_cpu_pct_per_call\":{},\"hold_s\":{:.1},\"frames_decoded\":{got},\"frames_not_decoded\":{other},\"frames_expected\":{expected}",
        num(per_call_kib),
        num(per_pair_kib),
        num(pct),
        num(pct / k as f64),
        wall.as_secs_f64()
    )
}

fn main() {
    let (mut calls, mut every, mut cpu_secs, mut k, mut hold) =
        (100usize, 100usize, None, None, 10);
    let mut knobs = Knobs::default();
    let mut relay = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().and_then(|v| v.parse::<usize>().ok());
        match a.as_str() {
            "--calls" => calls = value().unwrap_or(calls),
            "--rss-every" => every = value().unwrap_or(every).max(1),
            "--cpu" => cpu_secs = value(),
            "--concurrent" => k = value().filter(|&k| k > 0),
            "--hold" => hold = value().unwrap_or(hold),
            "--replay-window-s" => {
                knobs.replay_window = value().map(|s| Duration::from_secs(s as u64));
            }
            "--playout-delay-ms" => {
                knobs.playout_delay = value().map(|ms| Duration::from_millis(ms as u64));
            }
            "--relay" => relay = true,
            // cargo bench passes --bench; anything else is a mistake worth seeing.
            "--bench" => {}
            other => eprintln!("ignored argument {other}"),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut json = vec!["\"impl\":\"hush\"".to_string()];
    rt.block_on(async {
        if calls > 0 {
            json.push(sequential(calls, every, knobs, false).await);
            if relay {
                json.push(sequential(calls, every, knobs, true).await);
            }
        }
        if let Some(s) = cpu_secs {
            json.push(cpu(s as u64).await);
        }
        if let Some(k) = k {
            json.push(concurrent(k, hold as u64).await);
        }
    });
    println!("{{{}}}", json.join(","));
}

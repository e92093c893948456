//! Call setup time and memory over many sequential calls, through the public API.
//!
//! Each call: Alice calls Bob (sealed offer over the in-memory signaling network), Bob accepts
//! at once, ICE connects over loopback UDP, and Alice sends 20 ms Opus frames until Bob decodes
//! the first one. Setup time is `Client::call` → Bob's first decoded frame. After each call
//! Alice hangs up and both sides see it end. Resident memory is sampled from /proc.
//!
//! `cargo bench --bench call_setup -- [--calls N]` (default 100).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use hush::{CallEvent, FrameSource};

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn one_call(alice: &hush::Client, bob: &hush::Client) -> Result<Duration, String> {
    let start = Instant::now();
    let call = alice
        .call(bob.device_id())
        .await
        .map_err(|e| e.to_string())?;
    let incoming = tokio::time::timeout(Duration::from_secs(5), bob.incoming())
        .await
        .map_err(|_| "no ring")?
        .ok_or("bob stopped")?;
    let answered = incoming.accept().await.map_err(|e| e.to_string())?;
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    let mut n = 0;
    let first = loop {
        tokio::select! {
            _ = ticker.tick() => {
                let _ = call.send_audio(&common::tone(n));
                n += 1;
                if n > 250 {
                    return Err("no audio within 5 s".into());
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
    call.hangup().map_err(|e| e.to_string())?;
    for c in [&call, &answered] {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), c.next_event()).await {
                Ok(Some(CallEvent::Ended(_))) => break,
                Ok(Some(_)) => {}
                _ => return Err("no end".into()),
            }
        }
    }
    Ok(first)
}

fn main() {
    let mut calls = 100usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--calls" {
            calls = args.next().and_then(|v| v.parse().ok()).unwrap_or(calls);
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (alice, bob, _net) = common::pair(common::loopback_config());
        let mut setups = Vec::with_capacity(calls);
        let mut rss = Vec::new();
        let mut failures = 0;
        for i in 0..calls {
            match one_call(&alice, &bob).await {
                Ok(d) => setups.push(d.as_secs_f64() * 1e3),
                Err(e) => {
                    failures += 1;
                    eprintln!("call {i}: {e}");
                }
            }
            if i == 9 || i + 1 == calls || (i + 1) % 50 == 0 {
                rss.push((i + 1, rss_kib().unwrap_or(0)));
            }
        }
        setups.sort_by(f64::total_cmp);
        println!(
            "calls: {calls} ({failures} failed); setup (call -> first decoded frame at the callee): median {:.1} ms, p95 {:.1} ms, min {:.1} ms, max {:.1} ms",
            percentile(&setups, 0.5),
            percentile(&setups, 0.95),
            setups.first().copied().unwrap_or(0.0),
            setups.last().copied().unwrap_or(0.0),
        );
        let samples: Vec<String> = rss.iter().map(|(n, k)| format!("after {n}: {k} KiB")).collect();
        println!("resident memory: {}", samples.join(", "));
    });
}

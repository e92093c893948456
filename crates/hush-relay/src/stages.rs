//! Diagnostics of the cluster send path: per-stage latency histograms (admission queue, commit,
//! notice publish, NATS hop, read to push, acknowledgement queue and delete, batch sizes),
//! printed to stderr (and cleared) every 5 s when the environment variable `HUSH_RELAY_STAGES`
//! is set; off (one cached check per record) otherwise. Used to find where the latency at half
//! of peak load goes (docs/benchmarks.md, "Relay cluster").

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The stages, by index.
pub(crate) const NAMES: [&str; 8] = [
    "queue wait (read -> batch taken)",
    "commit (batch taken -> committed)",
    "answer+publish (committed -> notice published)",
    "nats hop (published -> forwarder got it)",
    "relay total (read -> pushed to conn)",
    "batch size (envelopes)",
    "ack queue wait (ack read -> delete started)",
    "ack delete (round trip)",
];

const BUCKET_US: u64 = 10;
const BUCKETS: usize = 50_000;

/// One stage: counts per 10 us bucket (per envelope for the batch size).
struct Hist(Vec<AtomicU64>);

static HISTS: std::sync::OnceLock<Vec<Hist>> = std::sync::OnceLock::new();

fn hists() -> &'static [Hist] {
    HISTS.get_or_init(|| {
        NAMES
            .iter()
            .map(|_| Hist((0..BUCKETS).map(|_| AtomicU64::new(0)).collect()))
            .collect()
    })
}

/// Whether `HUSH_RELAY_STAGES` is set (read once).
pub(crate) fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("HUSH_RELAY_STAGES").is_some())
}

/// Records `value` (microseconds, or a count for the batch size) in stage `i`.
pub(crate) fn record(i: usize, value: u64) {
    if !enabled() {
        return;
    }
    let h = &hists()[i].0;
    let b = if i == 5 {
        value as usize
    } else {
        (value / BUCKET_US) as usize
    };
    h[b.min(BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
}

/// Records a duration in stage `i`.
pub(crate) fn record_dur(i: usize, d: Duration) {
    record(i, d.as_micros() as u64);
}

/// Unix time in microseconds.
pub(crate) fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Prints and clears the histograms every `every`.
pub(crate) async fn dump_loop(every: Duration) {
    if !enabled() {
        return;
    }
    let pid = std::process::id();
    loop {
        tokio::time::sleep(every).await;
        let mut out = format!("[stages pid {pid}]");
        for (i, h) in hists().iter().enumerate() {
            let counts: Vec<u64> = h.0.iter().map(|b| b.swap(0, Ordering::Relaxed)).collect();
            let total: u64 = counts.iter().sum();
            if total == 0 {
                continue;
            }
            let scale = if i == 5 {
                1.0
            } else {
                BUCKET_US as f64 / 1000.0
            };
            let at = |q: f64| {
                let rank = ((total as f64) * q).ceil().max(1.0) as u64;
                let mut seen = 0;
                for (b, c) in counts.iter().enumerate() {
                    seen += c;
                    if seen >= rank {
                        return (b as f64 + 1.0) * scale;
                    }
                }
                f64::NAN
            };
            let mean = counts
                .iter()
                .enumerate()
                .map(|(b, c)| (b as f64 + 0.5) * scale * *c as f64)
                .sum::<f64>()
                / total as f64;
            out.push_str(&format!(
                "\n  {:<48} n {:>8}  mean {:>8.2}  p50 {:>8.2}  p90 {:>8.2}  p99 {:>8.2}  max {:>8.2}",
                NAMES[i],
                total,
                mean,
                at(0.5),
                at(0.9),
                at(0.99),
                at(1.0)
            ));
        }
        eprintln!("{out}");
    }
}

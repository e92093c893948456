//! Relay metrics, encoded by `prometheus-client` (Prometheus text format 0.0.4) and served at
//! `GET /metrics` by a minimal HTTP responder on the relay's own runtime. Hot paths bump
//! relaxed atomics; a scrape reads them into a `prometheus-client` collector.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Upper bounds (seconds) of the send-latency histogram buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
];

/// Counters and gauges the relay exports. All relaxed atomics: cheap to bump on hot paths.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Open connections (any state).
    pub connections: AtomicU64,
    /// Authenticated connections.
    pub authenticated: AtomicU64,
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Connections refused at accept (total or per-address limit).
    pub connections_refused: AtomicU64,
    /// Failed authentications.
    pub auth_failures: AtomicU64,
    /// Envelopes accepted (committed to the database or acknowledged by their recipient).
    pub envelopes_received: AtomicU64,
    /// Envelopes written to the database.
    pub envelopes_stored: AtomicU64,
    /// Envelopes their recipient acknowledged before they were written (never stored).
    pub envelopes_unstored: AtomicU64,
    /// Database transactions committed (group commits).
    pub store_commits: AtomicU64,
    /// Envelopes written to a recipient's connection.
    pub envelopes_delivered: AtomicU64,
    /// Acknowledgements received.
    pub envelopes_acked: AtomicU64,
    /// Envelopes currently queued.
    pub queue_depth: AtomicU64,
    /// Requests or frames rejected (any reason).
    pub rejected: AtomicU64,
    /// Rejections for rate limiting.
    pub rate_limited: AtomicU64,
    /// Connections closed for a protocol violation (malformed, oversize, unauthenticated).
    pub protocol_violations: AtomicU64,
    /// Connections closed because they read their deliveries too slowly (their queue
    /// overflowed; they reload it on reconnect).
    pub slow_consumers: AtomicU64,
    /// Queued envelopes deleted unread because they outlived `max_envelope_age`.
    pub envelopes_expired: AtomicU64,
    /// Queued envelopes dropped from a full queue to make room for a sender with fewer queued.
    pub envelopes_evicted: AtomicU64,
    /// Sends refused because the recipient has no bundle.
    pub unknown_recipients: AtomicU64,
    /// Sends refused because the sender used up its quota for that recipient.
    pub sender_quota_refusals: AtomicU64,
    /// Connections closed because a write did not complete within `write_timeout`.
    pub write_timeouts: AtomicU64,
    /// Authenticated connections closed after `idle_timeout` without a frame from the client.
    pub idle_timeouts: AtomicU64,
    /// Bundle fetches answered without a one-time prekey because the requester used up its
    /// quota.
    pub prekey_fetches_limited: AtomicU64,
    /// Prekey uploads refused because a bundle did not verify or was not the uploader's.
    pub invalid_bundles: AtomicU64,
    /// TURN credentials handed out.
    pub turn_grants: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_ns: AtomicU64,
}

impl Metrics {
    /// Records the time from receiving a send request to answering it (after durable storage).
    pub fn observe_send_latency(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_ns.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Renders all metrics in the Prometheus text exposition format (0.0.4), each with the
    /// label `node="<node>"` (the relay's `node_name`), through `prometheus-client`.
    pub fn render(&self, node: &str) -> String {
        let mut registry = Registry::with_labels(
            [(Cow::Borrowed("node"), Cow::Owned(node.to_owned()))].into_iter(),
        );
        registry.register_collector(Box::new(Snapshot::take(self)));
        let mut out = String::with_capacity(4096);
        // Writing to a String does not fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }
}

/// One value of a [`Snapshot`]: counters are named without their `_total` suffix, which the
/// encoder adds.
#[derive(Debug)]
enum Value {
    Counter(&'static str, &'static str, u64),
    Gauge(&'static str, &'static str, i64),
}

/// The metrics read at one scrape, for the encoder.
#[derive(Debug)]
struct Snapshot {
    values: Vec<Value>,
    latency_sum: f64,
    latency_count: u64,
    latency_buckets: Vec<(f64, u64)>,
}

/// What the scrape reads: each metric's name, help and atomic.
enum Source<'a> {
    Counter(&'static str, &'static str, &'a AtomicU64),
    Gauge(&'static str, &'static str, &'a AtomicU64),
}
use Source::{Counter, Gauge};

impl Snapshot {
    fn take(m: &Metrics) -> Self {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let sources = [
            Gauge(
                "hush_relay_connections",
                "Open connections.",
                &m.connections,
            ),
            Gauge(
                "hush_relay_authenticated_connections",
                "Authenticated connections.",
                &m.authenticated,
            ),
            Counter(
                "hush_relay_connections",
                "Connections accepted.",
                &m.connections_total,
            ),
            Counter(
                "hush_relay_connections_refused",
                "Connections refused by the total or per-address connection limit.",
                &m.connections_refused,
            ),
            Counter(
                "hush_relay_auth_failures",
                "Failed authentications.",
                &m.auth_failures,
            ),
            Counter(
                "hush_relay_envelopes_received",
                "Envelopes accepted (stored, or acknowledged by the recipient first).",
                &m.envelopes_received,
            ),
            Counter(
                "hush_relay_envelopes_stored",
                "Envelopes written to the database.",
                &m.envelopes_stored,
            ),
            Counter(
                "hush_relay_store_commits",
                "Database transactions committed (group commits).",
                &m.store_commits,
            ),
            Counter(
                "hush_relay_envelopes_unstored",
                "Envelopes acknowledged by their recipient before being written (never stored).",
                &m.envelopes_unstored,
            ),
            Counter(
                "hush_relay_envelopes_delivered",
                "Envelopes written to recipients.",
                &m.envelopes_delivered,
            ),
            Counter(
                "hush_relay_envelopes_acked",
                "Delivery acknowledgements.",
                &m.envelopes_acked,
            ),
            Gauge(
                "hush_relay_queue_depth",
                "Envelopes queued (cluster: in the whole cluster, counted at each sweep).",
                &m.queue_depth,
            ),
            Counter("hush_relay_rejected", "Rejected requests.", &m.rejected),
            Counter(
                "hush_relay_rate_limited",
                "Requests rejected by the rate limit.",
                &m.rate_limited,
            ),
            Counter(
                "hush_relay_slow_consumers",
                "Connections closed because their delivery queue overflowed.",
                &m.slow_consumers,
            ),
            Counter(
                "hush_relay_protocol_violations",
                "Connections closed for protocol violations.",
                &m.protocol_violations,
            ),
            Counter(
                "hush_relay_envelopes_expired",
                "Queued envelopes deleted unread after max_envelope_age.",
                &m.envelopes_expired,
            ),
            Counter(
                "hush_relay_envelopes_evicted",
                "Queued envelopes dropped from a full queue for a sender with fewer queued.",
                &m.envelopes_evicted,
            ),
            Counter(
                "hush_relay_unknown_recipients",
                "Sends refused because the recipient has no bundle.",
                &m.unknown_recipients,
            ),
            Counter(
                "hush_relay_sender_quota_refusals",
                "Sends refused because the sender used up its quota for that recipient.",
                &m.sender_quota_refusals,
            ),
            Counter(
                "hush_relay_write_timeouts",
                "Connections closed because a write did not complete in time.",
                &m.write_timeouts,
            ),
            Counter(
                "hush_relay_idle_timeouts",
                "Authenticated connections closed after the idle timeout.",
                &m.idle_timeouts,
            ),
            Counter(
                "hush_relay_prekey_fetches_limited",
                "Bundle fetches answered without a one-time prekey (requester over its quota).",
                &m.prekey_fetches_limited,
            ),
            Counter(
                "hush_relay_invalid_bundles",
                "Prekey uploads refused because a bundle did not verify or was not the uploader's.",
                &m.invalid_bundles,
            ),
            Counter(
                "hush_relay_turn_grants",
                "Short-lived TURN credentials handed out.",
                &m.turn_grants,
            ),
        ];
        let values = sources
            .into_iter()
            .map(|s| match s {
                Counter(name, help, a) => Value::Counter(name, help, g(a)),
                Gauge(name, help, a) => {
                    Value::Gauge(name, help, i64::try_from(g(a)).unwrap_or(i64::MAX))
                }
            })
            .collect();
        // Per-bucket counts (the encoder makes them cumulative); the last one is +Inf.
        let mut latency_buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .zip(&m.latency_buckets)
            .map(|(bound, n)| (*bound, g(n)))
            .collect();
        let latency_count = g(&m.latency_count);
        let finite: u64 = latency_buckets.iter().map(|(_, n)| n).sum();
        latency_buckets.push((f64::INFINITY, latency_count.saturating_sub(finite)));
        Self {
            values,
            latency_sum: g(&m.latency_sum_ns) as f64 / 1e9,
            latency_count,
            latency_buckets,
        }
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for v in &self.values {
            match v {
                Value::Counter(name, help, n) => {
                    let c = ConstCounter::new(*n);
                    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
                }
                Value::Gauge(name, help, n) => {
                    let g = ConstGauge::new(*n);
                    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
                }
            }
        }
        let mut histogram = encoder.encode_descriptor(
            "hush_relay_send_latency_seconds",
            "Time from a send request to its answer (committed or acknowledged by the recipient).",
            None,
            MetricType::Histogram,
        )?;
        histogram.encode_histogram::<NoLabelSet>(
            self.latency_sum,
            self.latency_count,
            &self.latency_buckets,
            None,
        )
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, metrics: Arc<Metrics>, node: Arc<str>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (metrics, node) = (metrics.clone(), node.clone());
        tokio::spawn(async move {
            if let Err(e) = respond(stream, &metrics, &node).await {
                tracing::debug!(%peer, error = %e, "metrics request failed");
            }
        });
    }
}

async fn respond(
    mut stream: tokio::net::TcpStream,
    metrics: &Metrics,
    node: &str,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    // Read the request head (bounded in size and time); the body, if any, is ignored.
    let head = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let n = stream.read(&mut buf[len..]).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(false);
            }
            len += n;
            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") || len == buf.len() {
                return Ok(true);
            }
        }
    })
    .await;
    if !matches!(head, Ok(Ok(true))) {
        return Ok(());
    }
    let request_line = buf[..len].split(|&b| b == b'\n').next().unwrap_or_default();
    let (status, body) = if request_line.starts_with(b"GET /metrics ") {
        ("200 OK", metrics.render(node))
    } else {
        ("404 Not Found", "not found\n".to_owned())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Binds the metrics listener.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let m = Metrics::default();
        m.observe_send_latency(Duration::from_micros(50));
        m.observe_send_latency(Duration::from_millis(3));
        m.observe_send_latency(Duration::from_secs(5));
        let text = m.render("n1");
        for line in [
            "hush_relay_send_latency_seconds_bucket{node=\"n1\",le=\"0.0001\"} 1",
            "hush_relay_send_latency_seconds_bucket{node=\"n1\",le=\"0.005\"} 2",
            "hush_relay_send_latency_seconds_bucket{node=\"n1\",le=\"1\"} 2",
            "hush_relay_send_latency_seconds_bucket{node=\"n1\",le=\"+Inf\"} 3",
            "hush_relay_send_latency_seconds_count{node=\"n1\"} 3",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }

    #[test]
    fn names_types_and_node_label() {
        let m = Metrics::default();
        m.connections_total.fetch_add(3, Ordering::Relaxed);
        m.queue_depth.store(7, Ordering::Relaxed);
        let text = m.render("relay-a");
        for line in [
            "# TYPE hush_relay_connections_total counter",
            "hush_relay_connections_total{node=\"relay-a\"} 3",
            "# TYPE hush_relay_queue_depth gauge",
            "hush_relay_queue_depth{node=\"relay-a\"} 7",
            "# TYPE hush_relay_send_latency_seconds histogram",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        // A label value is escaped, not injected.
        assert!(m.render("a\"b").contains("node=\"a\\\"b\""));
    }
}

//! Relay metrics and a minimal Prometheus text endpoint over plain HTTP.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

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

    /// Renders all metrics in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        metric(
            "hush_relay_connections",
            "gauge",
            "Open connections.",
            g(&self.connections),
        );
        metric(
            "hush_relay_authenticated_connections",
            "gauge",
            "Authenticated connections.",
            g(&self.authenticated),
        );
        metric(
            "hush_relay_connections_total",
            "counter",
            "Connections accepted.",
            g(&self.connections_total),
        );
        metric(
            "hush_relay_connections_refused_total",
            "counter",
            "Connections refused by the total or per-address connection limit.",
            g(&self.connections_refused),
        );
        metric(
            "hush_relay_auth_failures_total",
            "counter",
            "Failed authentications.",
            g(&self.auth_failures),
        );
        metric(
            "hush_relay_envelopes_received_total",
            "counter",
            "Envelopes accepted (stored, or acknowledged by the recipient first).",
            g(&self.envelopes_received),
        );
        metric(
            "hush_relay_envelopes_stored_total",
            "counter",
            "Envelopes written to the database.",
            g(&self.envelopes_stored),
        );
        metric(
            "hush_relay_store_commits_total",
            "counter",
            "Database transactions committed (group commits).",
            g(&self.store_commits),
        );
        metric(
            "hush_relay_envelopes_unstored_total",
            "counter",
            "Envelopes acknowledged by their recipient before being written (never stored).",
            g(&self.envelopes_unstored),
        );
        metric(
            "hush_relay_envelopes_delivered_total",
            "counter",
            "Envelopes written to recipients.",
            g(&self.envelopes_delivered),
        );
        metric(
            "hush_relay_envelopes_acked_total",
            "counter",
            "Delivery acknowledgements.",
            g(&self.envelopes_acked),
        );
        metric(
            "hush_relay_queue_depth",
            "gauge",
            "Envelopes queued.",
            g(&self.queue_depth),
        );
        metric(
            "hush_relay_rejected_total",
            "counter",
            "Rejected requests.",
            g(&self.rejected),
        );
        metric(
            "hush_relay_rate_limited_total",
            "counter",
            "Requests rejected by the rate limit.",
            g(&self.rate_limited),
        );
        metric(
            "hush_relay_slow_consumers_total",
            "counter",
            "Connections closed because their delivery queue overflowed.",
            g(&self.slow_consumers),
        );
        metric(
            "hush_relay_protocol_violations_total",
            "counter",
            "Connections closed for protocol violations.",
            g(&self.protocol_violations),
        );
        metric(
            "hush_relay_envelopes_expired_total",
            "counter",
            "Queued envelopes deleted unread after max_envelope_age.",
            g(&self.envelopes_expired),
        );
        metric(
            "hush_relay_envelopes_evicted_total",
            "counter",
            "Queued envelopes dropped from a full queue for a sender with fewer queued.",
            g(&self.envelopes_evicted),
        );
        metric(
            "hush_relay_unknown_recipients_total",
            "counter",
            "Sends refused because the recipient has no bundle.",
            g(&self.unknown_recipients),
        );
        metric(
            "hush_relay_sender_quota_refusals_total",
            "counter",
            "Sends refused because the sender used up its quota for that recipient.",
            g(&self.sender_quota_refusals),
        );
        metric(
            "hush_relay_write_timeouts_total",
            "counter",
            "Connections closed because a write did not complete in time.",
            g(&self.write_timeouts),
        );
        metric(
            "hush_relay_idle_timeouts_total",
            "counter",
            "Authenticated connections closed after the idle timeout.",
            g(&self.idle_timeouts),
        );
        metric(
            "hush_relay_prekey_fetches_limited_total",
            "counter",
            "Bundle fetches answered without a one-time prekey (requester over its quota).",
            g(&self.prekey_fetches_limited),
        );
        metric(
            "hush_relay_invalid_bundles_total",
            "counter",
            "Prekey uploads refused because a bundle did not verify or was not the uploader's.",
            g(&self.invalid_bundles),
        );
        metric(
            "hush_relay_turn_grants_total",
            "counter",
            "Short-lived TURN credentials handed out.",
            g(&self.turn_grants),
        );
        let name = "hush_relay_send_latency_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from a send request to its answer (committed or acknowledged by the recipient).\n# TYPE {name} histogram"
        );
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += g(&self.latency_buckets[i]);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = g(&self.latency_count);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", g(&self.latency_sum_ns) as f64 / 1e9);
        let _ = writeln!(out, "{name}_count {count}");
        out
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = respond(stream, &metrics).await {
                tracing::debug!(%peer, error = %e, "metrics request failed");
            }
        });
    }
}

async fn respond(mut stream: tokio::net::TcpStream, metrics: &Metrics) -> std::io::Result<()> {
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
        ("200 OK", metrics.render())
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
        let text = m.render();
        assert!(text.contains("hush_relay_send_latency_seconds_bucket{le=\"0.0001\"} 1"));
        assert!(text.contains("hush_relay_send_latency_seconds_bucket{le=\"0.005\"} 2"));
        assert!(text.contains("hush_relay_send_latency_seconds_bucket{le=\"1\"} 2"));
        assert!(text.contains("hush_relay_send_latency_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(text.contains("hush_relay_send_latency_seconds_count 3"));
    }
}

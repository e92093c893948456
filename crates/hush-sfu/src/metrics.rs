//! Prometheus text exposition (version 0.0.4, encoded by `prometheus-client`) of the server's
//! counters over plain HTTP (`GET /metrics`).
//!
//! The driver keeps the counters ([`DriverStats`]); a scrape asks the main task for a copy, so
//! nothing on the packet path takes a lock, and hands it to the encoder as a collector.

use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::server::{Cmd, DriverStats, LegMetrics};

/// Renders the counters in the Prometheus text format (version 0.0.4).
pub fn render(s: &DriverStats) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(s.clone())));
    let mut out = String::with_capacity(4096);
    // Writing to a String does not fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

/// One value: counters are named without their `_total` suffix, which the encoder adds.
enum Value {
    Counter(u64),
    Gauge(i64),
    Ratio(f64),
}

impl Value {
    /// Writes this value under `encoder` (a descriptor, or one labelled series of it).
    fn encode(self, encoder: prometheus_client::encoding::MetricEncoder<'_>) -> std::fmt::Result {
        match self {
            Self::Counter(n) => ConstCounter::new(n).encode(encoder),
            Self::Gauge(n) => ConstGauge::new(n).encode(encoder),
            Self::Ratio(x) => ConstGauge::new(x).encode(encoder),
        }
    }

    /// The metric type of the descriptor.
    fn metric_type(&self) -> MetricType {
        match self {
            Self::Counter(_) => MetricType::Counter,
            Self::Gauge(_) | Self::Ratio(_) => MetricType::Gauge,
        }
    }
}

fn gauge(n: usize) -> Value {
    Value::Gauge(i64::try_from(n).unwrap_or(i64::MAX))
}

/// A copy of the counters, encoded at one scrape.
#[derive(Debug)]
struct Snapshot(DriverStats);

/// A per-leg series: name, help, type, and its value for one leg (`None`: no series for that
/// leg).
type LegSeries = (
    &'static str,
    &'static str,
    MetricType,
    fn(&LegMetrics) -> Option<Value>,
);

/// Per-leg series, labelled `leg` (one series per leg in a call now).
const LEG_SERIES: [LegSeries; 10] = [
    (
        "hush_sfu_leg_estimated_bitrate_bps",
        "Bandwidth the SFU estimates towards the participant (transport-wide CC).",
        MetricType::Gauge,
        |l| l.estimate_bps.map(|v| Value::Gauge(i64::try_from(v).unwrap_or(i64::MAX))),
    ),
    (
        "hush_sfu_leg_loss_ratio",
        "Loss towards the participant over the last second of feedback.",
        MetricType::Gauge,
        |l| Some(Value::Ratio(f64::from(l.loss_permille) / 1000.0)),
    ),
    (
        "hush_sfu_leg_rtt_seconds",
        "Round-trip time to the participant (its receiver reports).",
        MetricType::Gauge,
        |l| l.rtt_us.map(|us| Value::Ratio(us as f64 / 1e6)),
    ),
    (
        "hush_sfu_leg_layer_switches",
        "Simulcast layer switches made for the participant.",
        MetricType::Counter,
        |l| Some(Value::Counter(l.layer_switches)),
    ),
    (
        "hush_sfu_leg_forwarded_packets",
        "Packets forwarded to the participant.",
        MetricType::Counter,
        |l| Some(Value::Counter(l.forwarded)),
    ),
    (
        "hush_sfu_leg_retransmitted_packets",
        "Packets resent to the participant from the SFU's cache (its NACKs).",
        MetricType::Counter,
        |l| Some(Value::Counter(l.retransmitted)),
    ),
    (
        "hush_sfu_leg_uplink_nacked_packets",
        "Sequence numbers of the participant's video the SFU NACKed (uplink loss, retries counted).",
        MetricType::Counter,
        |l| Some(Value::Counter(l.uplink_nacked)),
    ),
    (
        "hush_sfu_leg_uplink_recovered_packets",
        "NACKed packets of the participant's video that then arrived.",
        MetricType::Counter,
        |l| Some(Value::Counter(l.uplink_recovered)),
    ),
    (
        "hush_sfu_leg_uplink_given_up",
        "Times the SFU stopped NACKing one of the participant's SSRCs (too much missing).",
        MetricType::Counter,
        |l| Some(Value::Counter(l.uplink_given_up)),
    ),
    (
        "hush_sfu_leg_layers_stopped",
        "Simulcast layers the participant stopped for its uplink (RTCP BYE for the layer).",
        MetricType::Counter,
        |l| Some(Value::Counter(l.layers_stopped)),
    ),
];

impl Snapshot {
    /// The server-wide metrics: name, help, value.
    fn totals(&self) -> [(&'static str, &'static str, Value); 18] {
        let s = &self.0;
        [
            (
                "hush_sfu_calls",
                "Calls with at least one participant.",
                gauge(s.calls),
            ),
            (
                "hush_sfu_participants",
                "Participants (legs) in all calls.",
                gauge(s.legs),
            ),
            ("hush_sfu_joins", "Joins accepted.", Value::Counter(s.joins)),
            (
                "hush_sfu_joins_refused",
                "Joins refused.",
                Value::Counter(s.joins_refused),
            ),
            (
                "hush_sfu_legs_timed_out",
                "Legs dropped for silence.",
                Value::Counter(s.legs_timed_out),
            ),
            (
                "hush_sfu_slow_consumers",
                "Legs dropped because their signaling queue overflowed (the client did not read).",
                Value::Counter(s.slow_consumers),
            ),
            (
                "hush_sfu_rate_limited",
                "Signaling connections closed for sending frames too fast.",
                Value::Counter(s.rate_limited),
            ),
            (
                "hush_sfu_checks_answered",
                "ICE connectivity checks answered.",
                Value::Counter(s.checks_answered),
            ),
            (
                "hush_sfu_checks_refused",
                "STUN datagrams refused.",
                Value::Counter(s.checks_refused),
            ),
            (
                "hush_sfu_packets_in",
                "Media datagrams received from a bound path.",
                Value::Counter(s.packets_in),
            ),
            (
                "hush_sfu_bytes_in",
                "Bytes of those datagrams.",
                Value::Counter(s.bytes_in),
            ),
            (
                "hush_sfu_packets_out",
                "Datagrams sent to participants (forwarded, resent, relayed RTCP).",
                Value::Counter(s.packets_out),
            ),
            (
                "hush_sfu_bytes_out",
                "Bytes of those datagrams.",
                Value::Counter(s.bytes_out),
            ),
            (
                "hush_sfu_media_dropped",
                "Media datagrams the core dropped (bad, replayed, undeclared).",
                Value::Counter(s.media_dropped),
            ),
            (
                "hush_sfu_media_unknown_source",
                "Media datagrams from an address no verified check came from.",
                Value::Counter(s.media_unknown_source),
            ),
            (
                "hush_sfu_no_path",
                "Datagrams for a leg without a path yet.",
                Value::Counter(s.no_path),
            ),
            (
                "hush_sfu_other_dropped",
                "Datagrams of other protocols.",
                Value::Counter(s.other_dropped),
            ),
            (
                "hush_sfu_layer_switches",
                "Simulcast layer switches made for receivers.",
                Value::Counter(s.layer_switches),
            ),
        ]
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        for (name, help, value) in self.totals() {
            let metric_type = value.metric_type();
            value.encode(encoder.encode_descriptor(name, help, None, metric_type)?)?;
        }
        for (name, help, metric_type, value) in LEG_SERIES {
            let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
            for l in &self.0.leg_metrics {
                if let Some(v) = value(l) {
                    let labels = [("leg", l.leg.0.to_string())];
                    v.encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

/// Serves `GET /metrics` on `listener` until the server stops.
pub(crate) async fn serve(listener: TcpListener, cmd: mpsc::UnboundedSender<Cmd>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let cmd = cmd.clone();
        tokio::spawn(async move {
            if let Err(e) = respond(stream, cmd).await {
                tracing::debug!(%peer, error = %e, "metrics request failed");
            }
        });
    }
}

async fn respond(mut stream: TcpStream, cmd: mpsc::UnboundedSender<Cmd>) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    // The request head, bounded in size and time; a body is ignored.
    let head = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let Some(free) = buf.get_mut(len..) else {
                return Ok::<_, std::io::Error>(true);
            };
            let n = stream.read(free).await?;
            if n == 0 {
                return Ok(false);
            }
            len += n;
            let got = buf.get(..len).unwrap_or_default();
            if got.windows(4).any(|w| w == b"\r\n\r\n") || len == buf.len() {
                return Ok(true);
            }
        }
    })
    .await;
    if !matches!(head, Ok(Ok(true))) {
        return Ok(());
    }
    let request_line = buf
        .get(..len)
        .unwrap_or_default()
        .split(|&b| b == b'\n')
        .next()
        .unwrap_or_default();
    let (status, body) = if request_line.starts_with(b"GET /metrics ") {
        let (tx, rx) = oneshot::channel();
        let _ = cmd.send(Cmd::Stats(tx));
        match rx.await {
            Ok(stats) => ("200 OK", render(&stats)),
            Err(_) => ("503 Service Unavailable", "stopped\n".to_owned()),
        }
    } else {
        ("404 Not Found", "not found\n".to_owned())
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        body.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LegId;

    #[test]
    fn per_leg_series_are_labelled_and_absent_values_left_out() {
        let s = DriverStats {
            layer_switches: 3,
            slow_consumers: 2,
            rate_limited: 5,
            leg_metrics: vec![
                LegMetrics {
                    leg: LegId(4),
                    estimate_bps: Some(1_250_000),
                    loss_permille: 25,
                    rtt_us: Some(48_500),
                    layer_switches: 2,
                    forwarded: 900,
                    retransmitted: 17,
                    uplink_nacked: 12,
                    uplink_recovered: 10,
                    uplink_given_up: 1,
                    layers_stopped: 2,
                },
                LegMetrics {
                    leg: LegId(9),
                    estimate_bps: None,
                    loss_permille: 0,
                    rtt_us: None,
                    layer_switches: 0,
                    forwarded: 0,
                    retransmitted: 0,
                    uplink_nacked: 0,
                    uplink_recovered: 0,
                    uplink_given_up: 0,
                    layers_stopped: 0,
                },
            ],
            ..DriverStats::default()
        };
        let text = render(&s);
        for line in [
            "hush_sfu_layer_switches_total 3",
            "hush_sfu_slow_consumers_total 2",
            "hush_sfu_rate_limited_total 5",
            "# TYPE hush_sfu_calls gauge",
            "hush_sfu_leg_estimated_bitrate_bps{leg=\"4\"} 1250000",
            "hush_sfu_leg_loss_ratio{leg=\"4\"} 0.025",
            "hush_sfu_leg_rtt_seconds{leg=\"4\"} 0.0485",
            "hush_sfu_leg_layer_switches_total{leg=\"4\"} 2",
            "hush_sfu_leg_forwarded_packets_total{leg=\"4\"} 900",
            "hush_sfu_leg_loss_ratio{leg=\"9\"} 0.0",
            "hush_sfu_leg_retransmitted_packets_total{leg=\"4\"} 17",
            "hush_sfu_leg_uplink_nacked_packets_total{leg=\"4\"} 12",
            "hush_sfu_leg_uplink_recovered_packets_total{leg=\"4\"} 10",
            "hush_sfu_leg_uplink_given_up_total{leg=\"4\"} 1",
            "hush_sfu_leg_layers_stopped_total{leg=\"4\"} 2",
            "hush_sfu_leg_uplink_nacked_packets_total{leg=\"9\"} 0",
            "# TYPE hush_sfu_leg_uplink_nacked_packets_total counter",
            "# TYPE hush_sfu_leg_rtt_seconds gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(!text.contains("hush_sfu_leg_estimated_bitrate_bps{leg=\"9\"}"));
        assert!(!text.contains("hush_sfu_leg_rtt_seconds{leg=\"9\"}"));
    }
}

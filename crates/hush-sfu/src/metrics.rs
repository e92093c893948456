//! Prometheus text exposition of the server's counters over plain HTTP (`GET /metrics`).
//!
//! The driver keeps the counters ([`DriverStats`]); a scrape asks the main task for a copy, so
//! nothing on the packet path takes a lock.

use std::fmt::Write as _;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::server::{Cmd, DriverStats, LegMetrics};

/// Renders the counters in the Prometheus text format (version 0.0.4).
pub fn render(s: &DriverStats) -> String {
    let mut out = String::with_capacity(2048);
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP hush_sfu_{name} {help}");
        let _ = writeln!(out, "# TYPE hush_sfu_{name} {kind}");
        let _ = writeln!(out, "hush_sfu_{name} {value}");
    };
    let gauge = "gauge";
    let counter = "counter";
    metric(
        "calls",
        gauge,
        "Calls with at least one participant.",
        s.calls as u64,
    );
    metric(
        "participants",
        gauge,
        "Participants (legs) in all calls.",
        s.legs as u64,
    );
    metric("joins_total", counter, "Joins accepted.", s.joins);
    metric(
        "joins_refused_total",
        counter,
        "Joins refused.",
        s.joins_refused,
    );
    metric(
        "legs_timed_out_total",
        counter,
        "Legs dropped for silence.",
        s.legs_timed_out,
    );
    metric(
        "checks_answered_total",
        counter,
        "ICE connectivity checks answered.",
        s.checks_answered,
    );
    metric(
        "checks_refused_total",
        counter,
        "STUN datagrams refused.",
        s.checks_refused,
    );
    metric(
        "packets_in_total",
        counter,
        "Media datagrams received from a bound path.",
        s.packets_in,
    );
    metric(
        "bytes_in_total",
        counter,
        "Bytes of those datagrams.",
        s.bytes_in,
    );
    metric(
        "packets_out_total",
        counter,
        "Datagrams sent to participants (forwarded, resent, relayed RTCP).",
        s.packets_out,
    );
    metric(
        "bytes_out_total",
        counter,
        "Bytes of those datagrams.",
        s.bytes_out,
    );
    metric(
        "media_dropped_total",
        counter,
        "Media datagrams the core dropped (bad, replayed, undeclared).",
        s.media_dropped,
    );
    metric(
        "media_unknown_source_total",
        counter,
        "Media datagrams from an address no verified check came from.",
        s.media_unknown_source,
    );
    metric(
        "no_path_total",
        counter,
        "Datagrams for a leg without a path yet.",
        s.no_path,
    );
    metric(
        "other_dropped_total",
        counter,
        "Datagrams of other protocols.",
        s.other_dropped,
    );
    metric(
        "layer_switches_total",
        counter,
        "Simulcast layer switches made for receivers.",
        s.layer_switches,
    );
    render_legs(&mut out, &s.leg_metrics);
    out
}

/// Per-leg series, labelled `leg` (one series per leg in a call now).
fn render_legs(out: &mut String, legs: &[LegMetrics]) {
    type Value = fn(&LegMetrics) -> Option<String>;
    let series: [(&str, &str, &str, Value); 9] = [
        (
            "leg_estimated_bitrate_bps",
            "gauge",
            "Bandwidth the SFU estimates towards the participant (transport-wide CC).",
            |l| l.estimate_bps.map(|v| v.to_string()),
        ),
        (
            "leg_loss_ratio",
            "gauge",
            "Loss towards the participant over the last second of feedback.",
            |l| Some(format!("{:.3}", f64::from(l.loss_permille) / 1000.0)),
        ),
        (
            "leg_rtt_seconds",
            "gauge",
            "Round-trip time to the participant (its receiver reports).",
            |l| l.rtt_us.map(|us| format!("{:.6}", us as f64 / 1e6)),
        ),
        (
            "leg_layer_switches_total",
            "counter",
            "Simulcast layer switches made for the participant.",
            |l| Some(l.layer_switches.to_string()),
        ),
        (
            "leg_forwarded_packets_total",
            "counter",
            "Packets forwarded to the participant.",
            |l| Some(l.forwarded.to_string()),
        ),
        (
            "leg_retransmitted_packets_total",
            "counter",
            "Packets resent to the participant from the SFU's cache (its NACKs).",
            |l| Some(l.retransmitted.to_string()),
        ),
        (
            "leg_uplink_nacked_packets_total",
            "counter",
            "Sequence numbers of the participant's video the SFU NACKed (uplink loss, retries counted).",
            |l| Some(l.uplink_nacked.to_string()),
        ),
        (
            "leg_uplink_recovered_packets_total",
            "counter",
            "NACKed packets of the participant's video that then arrived.",
            |l| Some(l.uplink_recovered.to_string()),
        ),
        (
            "leg_uplink_given_up_total",
            "counter",
            "Times the SFU stopped NACKing one of the participant's SSRCs (too much missing).",
            |l| Some(l.uplink_given_up.to_string()),
        ),
    ];
    for (name, kind, help, value) in series {
        let _ = writeln!(out, "# HELP hush_sfu_{name} {help}");
        let _ = writeln!(out, "# TYPE hush_sfu_{name} {kind}");
        for l in legs {
            if let Some(v) = value(l) {
                let _ = writeln!(out, "hush_sfu_{name}{{leg=\"{}\"}} {v}", l.leg.0);
            }
        }
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
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
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
                },
            ],
            ..DriverStats::default()
        };
        let text = render(&s);
        for line in [
            "hush_sfu_layer_switches_total 3",
            "hush_sfu_leg_estimated_bitrate_bps{leg=\"4\"} 1250000",
            "hush_sfu_leg_loss_ratio{leg=\"4\"} 0.025",
            "hush_sfu_leg_rtt_seconds{leg=\"4\"} 0.048500",
            "hush_sfu_leg_layer_switches_total{leg=\"4\"} 2",
            "hush_sfu_leg_forwarded_packets_total{leg=\"4\"} 900",
            "hush_sfu_leg_loss_ratio{leg=\"9\"} 0.000",
            "hush_sfu_leg_retransmitted_packets_total{leg=\"4\"} 17",
            "hush_sfu_leg_uplink_nacked_packets_total{leg=\"4\"} 12",
            "hush_sfu_leg_uplink_recovered_packets_total{leg=\"4\"} 10",
            "hush_sfu_leg_uplink_given_up_total{leg=\"4\"} 1",
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

//! Call quality statistics and their Prometheus text form.

use std::fmt::Write as _;
use std::time::Duration;

/// A snapshot of one session's quality, from [`MediaSession::stats`](crate::MediaSession::stats).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QualityStats {
    /// Round-trip time from RTCP reports, if measured.
    pub rtt: Option<Duration>,
    /// RFC 3550 interarrival jitter of received audio.
    pub jitter: Duration,
    /// Jitter p95 measured by the jitter buffer.
    pub jitter_p95: Duration,
    /// Delay the jitter buffer currently aims for.
    pub playout_delay: Duration,
    /// Audio RTP packets received (originals, not retransmissions).
    pub packets_received: u64,
    /// Audio packets expected but never received as originals.
    pub packets_lost: u64,
    /// Loss before recovery: `packets_lost / expected`.
    pub loss_before_recovery: f64,
    /// Loss after recovery: frames concealed over frames due.
    pub loss_after_recovery: f64,
    /// Frames played from packets (including recovered ones).
    pub frames_played: u64,
    /// Frames recovered by retransmission.
    pub frames_recovered_rtx: u64,
    /// Frames recovered by RED.
    pub frames_recovered_red: u64,
    /// Frames rebuilt from in-band FEC.
    pub frames_fec: u64,
    /// Frames concealed.
    pub frames_concealed: u64,
    /// Frames that arrived too late to play.
    pub frames_late: u64,
    /// NACKed packets (sequence numbers asked for).
    pub nacks_sent: u64,
    /// Retransmissions sent in answer to the peer's NACKs.
    pub retransmissions_sent: u64,
    /// Loss fraction the peer reports about our stream.
    pub remote_loss: f64,
    /// Our send rate over the last second, all packets, in bits per second.
    pub send_bps: u64,
    /// Our receive rate over the last second, in bits per second.
    pub recv_bps: u64,
    /// Congestion control target.
    pub target_bps: u64,
    /// Whether video is paused because the target is below the video threshold.
    pub audio_only: bool,
}

impl QualityStats {
    /// Renders the snapshot in the Prometheus text exposition format. `labels` is inserted in
    /// every sample, e.g. `call="42"` (pass `""` for none); it must already be valid label text.
    pub fn to_prometheus(&self, labels: &str) -> String {
        let mut out = String::new();
        let l = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let mut put = |name: &str, kind: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP hush_media_{name} {help}");
            let _ = writeln!(out, "# TYPE hush_media_{name} {kind}");
            let _ = writeln!(out, "hush_media_{name}{l} {v}");
        };
        let secs = |d: Duration| d.as_secs_f64();
        put(
            "rtt_seconds",
            "gauge",
            "Round-trip time from RTCP.",
            self.rtt.map_or(f64::NAN, secs),
        );
        put(
            "jitter_seconds",
            "gauge",
            "RFC 3550 interarrival jitter.",
            secs(self.jitter),
        );
        put(
            "jitter_p95_seconds",
            "gauge",
            "p95 of measured jitter.",
            secs(self.jitter_p95),
        );
        put(
            "playout_delay_seconds",
            "gauge",
            "Jitter buffer target delay.",
            secs(self.playout_delay),
        );
        put(
            "packets_received_total",
            "counter",
            "Audio packets received.",
            self.packets_received as f64,
        );
        put(
            "packets_lost_total",
            "counter",
            "Audio packets lost before recovery.",
            self.packets_lost as f64,
        );
        put(
            "loss_before_recovery_ratio",
            "gauge",
            "Loss before recovery.",
            self.loss_before_recovery,
        );
        put(
            "loss_after_recovery_ratio",
            "gauge",
            "Frames concealed over frames due.",
            self.loss_after_recovery,
        );
        put(
            "frames_played_total",
            "counter",
            "Audio frames played.",
            self.frames_played as f64,
        );
        put(
            "frames_recovered_rtx_total",
            "counter",
            "Frames recovered by retransmission.",
            self.frames_recovered_rtx as f64,
        );
        put(
            "frames_recovered_red_total",
            "counter",
            "Frames recovered by RED.",
            self.frames_recovered_red as f64,
        );
        put(
            "frames_fec_total",
            "counter",
            "Frames rebuilt from in-band FEC.",
            self.frames_fec as f64,
        );
        put(
            "frames_concealed_total",
            "counter",
            "Frames concealed.",
            self.frames_concealed as f64,
        );
        put(
            "frames_late_total",
            "counter",
            "Frames too late to play.",
            self.frames_late as f64,
        );
        put(
            "nacks_sent_total",
            "counter",
            "Packets NACKed.",
            self.nacks_sent as f64,
        );
        put(
            "retransmissions_sent_total",
            "counter",
            "Retransmissions sent.",
            self.retransmissions_sent as f64,
        );
        put(
            "remote_loss_ratio",
            "gauge",
            "Loss the peer reports.",
            self.remote_loss,
        );
        put(
            "send_bits_per_second",
            "gauge",
            "Send rate.",
            self.send_bps as f64,
        );
        put(
            "recv_bits_per_second",
            "gauge",
            "Receive rate.",
            self.recv_bps as f64,
        );
        put(
            "target_bits_per_second",
            "gauge",
            "Congestion control target.",
            self.target_bps as f64,
        );
        put(
            "audio_only",
            "gauge",
            "1 while video is paused for bandwidth.",
            f64::from(u8::from(self.audio_only)),
        );
        out
    }
}

/// Counters of video loss repair, from [`MediaSession::video_repair`](crate::MediaSession::video_repair):
/// why a frame came late or not at all (for tests and diagnosis).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VideoRepairStats {
    /// Keyframe requests (PLI) sent for the peer's video.
    pub keyframe_requests_sent: u64,
    /// Times the receiver gave up on missing packets after the gap timeout.
    pub gap_timeouts: u64,
    /// Video retransmissions sent (each copy counted).
    pub retransmissions_sent: u64,
    /// Video retransmissions not sent: the congestion window was full.
    pub refused_congested: u64,
    /// Video retransmissions not sent: over the retransmission budget.
    pub refused_budget: u64,
    /// NACKed video packets no longer (or never) in the send history, or resent too recently.
    pub not_in_history: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_has_every_metric_once() {
        let s = QualityStats {
            rtt: Some(Duration::from_millis(40)),
            frames_played: 7,
            ..QualityStats::default()
        };
        let text = s.to_prometheus("call=\"1\"");
        assert!(text.contains("hush_media_rtt_seconds{call=\"1\"} 0.04\n"));
        assert!(text.contains("hush_media_frames_played_total{call=\"1\"} 7\n"));
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(samples, 21);
        assert_eq!(text.matches("# TYPE").count(), 21);
    }
}

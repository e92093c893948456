//! A whole simulated call: two [`MediaSession`]s joined by two [`NetSim`] links, with a
//! synthetic audio source (and optionally a video source that follows the bitrate target),
//! on a virtual clock. The bench binary and the tests measure calls with it.
//!
//! With [`CallConfig::opus`], A's audio is real Opus: a synthetic voice is encoded with the
//! encoder following A's [`EncoderTarget`](crate::EncoderTarget)s (bitrate, in-band FEC and
//! expected loss), and B decodes what its jitter buffer plays out: frames, in-band FEC of the
//! next frame, or concealment.

use std::time::Duration;

use super::{NetSim, SimConfig, SimPacket};
use crate::codec::{Codec, OpusCodec};
use crate::jitter::{Playout, Recovery};
use crate::session::{Event, MediaSession, SessionConfig, StreamIds, WIRE_OVERHEAD};
use crate::Instant;

/// A datagram in flight, with its send time so the harness can measure one-way delay.
#[derive(Debug, Clone)]
pub struct Wire {
    /// The datagram.
    pub data: Vec<u8>,
    /// When it was sent.
    pub sent: Instant,
}

impl SimPacket for Wire {
    fn wire_size(&self) -> usize {
        self.data.len() + WIRE_OVERHEAD
    }
}

/// Settings of a simulated call.
#[derive(Debug, Clone)]
pub struct CallConfig {
    /// Path from A to B.
    pub a_to_b: SimConfig,
    /// Path from B to A.
    pub b_to_a: SimConfig,
    /// A's session configuration (B gets the mirrored one).
    pub session: SessionConfig,
    /// Encoded audio frame size in bytes (60 bytes is ~24 kbps Opus at 20 ms).
    pub audio_frame_bytes: usize,
    /// Whether A also sends video at the target bitrate (30 frames/s). If the session config
    /// has no local video stream, one is added.
    pub video: bool,
    /// Whether A's audio is real Opus (48 kHz mono, starting at 24 kbps) that B decodes,
    /// instead of fixed-size stand-in frames. The added-delay metric needs the stand-ins' frame
    /// numbers, so it stays empty with Opus.
    pub opus: bool,
}

impl Default for CallConfig {
    fn default() -> Self {
        Self {
            a_to_b: SimConfig::default(),
            b_to_a: SimConfig {
                seed: 2,
                ..SimConfig::default()
            },
            session: SessionConfig::default(),
            audio_frame_bytes: 60,
            video: false,
            opus: false,
        }
    }
}

/// What B saw of A's audio, and A's congestion control over time.
#[derive(Debug, Clone, Default)]
pub struct CallMetrics {
    /// Audio frames A sent.
    pub frames_sent: u64,
    /// Frames B played from their original packet.
    pub played_original: u64,
    /// Frames B played from a retransmission.
    pub played_rtx: u64,
    /// Frames B played from RED.
    pub played_red: u64,
    /// Frames B rebuilt from in-band FEC.
    pub fec: u64,
    /// Frames B concealed.
    pub concealed: u64,
    /// For each played frame: play time minus send time minus the A→B base delay (seconds).
    pub added_delay: Vec<f64>,
    /// Of the FEC frames, those whose next packet really carried in-band FEC (Opus LBRR) and
    /// were rebuilt from it; the rest were concealed by the decoder. Counted only with Opus.
    pub fec_decoded: u64,
    /// Opus frames A sent that carried in-band FEC for the frame before. Counted only with
    /// Opus.
    pub lbrr_sent: u64,
    /// Opus frames B decoded (originals and recovered copies). Counted only with Opus.
    pub opus_decoded: u64,
    /// Packets B's decoder rejected. Counted only with Opus.
    pub decode_errors: u64,
    /// Video frames A sent (with `video` on).
    pub video_frames_sent: u64,
    /// Video frames B's engine handed out whole.
    pub video_frames_received: u64,
    /// Keyframe requests A received from B.
    pub keyframe_requests: u64,
    /// Samples every 100 ms: (time since start, A's target bps, max one-way delay A→B in the
    /// last 100 ms, video bps A was asked for).
    pub timeline: Vec<(Duration, u64, Duration, u32)>,
}

impl CallMetrics {
    /// Frames played (original or recovered) over frames due.
    pub fn played_fraction(&self) -> f64 {
        let played = self.played_original + self.played_rtx + self.played_red;
        let due = played + self.fec + self.concealed;
        if due == 0 {
            return 0.0;
        }
        played as f64 / due as f64
    }

    /// The `q` quantile (0..=1) of the added delay, in seconds.
    pub fn added_delay_quantile(&self, q: f64) -> f64 {
        let mut v = self.added_delay.clone();
        if v.is_empty() {
            return 0.0;
        }
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * q).round() as usize]
    }

    /// Mean added delay, in seconds.
    pub fn added_delay_mean(&self) -> f64 {
        self.added_delay_mean_from(0)
    }

    /// Mean added delay of the frames after the first `skip` played, in seconds: the steady
    /// state, without the room a call holds for retransmissions while it starts, before it
    /// has measured any loss.
    pub fn added_delay_mean_from(&self, skip: usize) -> f64 {
        let v = self.added_delay.get(skip..).unwrap_or_default();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    }
}

/// Two sessions and two links on a virtual clock. See the [module docs](self).
#[derive(Debug)]
pub struct CallSim {
    t0: Instant,
    now: Instant,
    frame: Duration,
    audio_bytes: usize,
    video: bool,
    /// Side A (the measured sender).
    pub a: MediaSession,
    /// Side B.
    pub b: MediaSession,
    /// Link A→B.
    pub ab: NetSim<Wire>,
    /// Link B→A.
    pub ba: NetSim<Wire>,
    next_audio: Instant,
    next_video: Instant,
    frame_index: u64,
    video_bps: u32,
    keyframe_due: bool,
    max_owd: Duration,
    next_sample: Instant,
    metrics: CallMetrics,
    opus: Option<OpusLoop>,
}

/// A's Opus encoder with its voice, and B's decoder.
#[derive(Debug)]
struct OpusLoop {
    enc: OpusCodec,
    dec: OpusCodec,
    voice: Voice,
    pcm: Vec<i16>,
}

impl OpusLoop {
    fn new(frame: Duration) -> Option<Self> {
        let ms = frame.as_millis() as u32;
        Some(Self {
            enc: OpusCodec::new(1, ms, 24_000).ok()?,
            dec: OpusCodec::new(1, ms, 24_000).ok()?,
            voice: Voice::default(),
            pcm: Vec::new(),
        })
    }
}

/// A deterministic voice-like signal: a gliding pitch with five harmonics under a syllable
/// envelope, with a short pause every two seconds.
#[derive(Debug, Default)]
struct Voice {
    n: u64,
}

/// One 48 kHz sample, at `t` seconds, of a voiced speech-like signal: five harmonics of a
/// gliding pitch under a syllable envelope (no pauses).
pub(crate) fn voiced_sample(t: f64) -> i16 {
    let f0 = 140.0 + 30.0 * (t * 1.3).sin();
    let env = 0.5 + 0.5 * (t * 2.0 * std::f64::consts::PI * 3.0).sin().abs();
    let s: f64 = (1..6)
        .map(|h| (2.0 * std::f64::consts::PI * f0 * h as f64 * t).sin() / h as f64)
        .sum();
    (s * env * 6000.0) as i16
}

impl Voice {
    fn frame(&mut self, samples: usize) -> Vec<i16> {
        let out = (0..samples as u64)
            .map(|i| {
                let t = (self.n + i) as f64 / 48_000.0;
                // A 0.3 s pause every 2 s.
                if t % 2.0 > 1.7 {
                    0
                } else {
                    voiced_sample(t)
                }
            })
            .collect();
        self.n += samples as u64;
        out
    }
}

impl CallSim {
    /// A call starting at `t0` (any instant; only differences matter).
    pub fn new(mut config: CallConfig, t0: Instant) -> Self {
        if config.video && config.session.local_video.is_none() {
            config.session.local_video = Some(StreamIds {
                ssrc: 0x1000_0003,
                rtx_ssrc: 0x1000_0004,
            });
        }
        let b_config = config.session.mirrored();
        let opus = if config.opus {
            OpusLoop::new(config.session.audio_frame)
        } else {
            None
        };
        Self {
            t0,
            now: t0,
            frame: config.session.audio_frame,
            audio_bytes: config.audio_frame_bytes.max(8),
            video: config.video,
            a: MediaSession::new(config.session, t0),
            b: MediaSession::new(b_config, t0),
            ab: NetSim::new(config.a_to_b),
            ba: NetSim::new(config.b_to_a),
            next_audio: t0,
            next_video: t0,
            frame_index: 0,
            video_bps: 0,
            keyframe_due: true,
            max_owd: Duration::ZERO,
            next_sample: t0,
            metrics: CallMetrics::default(),
            opus,
        }
    }

    /// The virtual time now.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Metrics so far.
    pub fn metrics(&self) -> &CallMetrics {
        &self.metrics
    }

    /// Runs the call until `t0 + until`.
    pub fn run_until(&mut self, until: Duration) {
        let end = self.t0 + until;
        while let Some(next) = self.next_event().filter(|&t| t <= end) {
            self.now = next;
            self.step();
        }
        self.now = end;
    }

    fn next_event(&self) -> Option<Instant> {
        [
            self.a.poll_timeout(),
            self.b.poll_timeout(),
            self.ab.poll_timeout(),
            self.ba.poll_timeout(),
            Some(self.next_audio),
            self.video.then_some(self.next_video),
            Some(self.next_sample),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn step(&mut self) {
        let now = self.now;
        let base_ab = self.ab.config().delay;
        self.ab.handle_timeout(now);
        while let Some(w) = self.ab.poll_transmit() {
            self.max_owd = self.max_owd.max(now.saturating_duration_since(w.sent));
            let _ = self.b.handle_packet(now, &w.data);
        }
        self.ba.handle_timeout(now);
        while let Some(w) = self.ba.poll_transmit() {
            let _ = self.a.handle_packet(now, &w.data);
        }
        self.a.handle_timeout(now);
        self.b.handle_timeout(now);
        if now >= self.next_audio {
            let mut frame = vec![0u8; self.audio_bytes];
            frame[..8].copy_from_slice(&self.frame_index.to_be_bytes());
            if let Some(o) = self.opus.as_mut() {
                let samples = o.enc.frame_samples();
                let pcm = o.voice.frame(samples);
                frame.clear();
                if o.enc.encode(&pcm, &mut frame).is_err() {
                    frame.clear();
                }
                if crate::codec::has_inband_fec(&frame) {
                    self.metrics.lbrr_sent += 1;
                }
            }
            self.a.send_audio(now, &frame, None);
            let mut back = vec![0u8; self.audio_bytes];
            back[..8].copy_from_slice(&self.frame_index.to_be_bytes());
            self.b.send_audio(now, &back, None);
            self.frame_index += 1;
            self.metrics.frames_sent += 1;
            self.next_audio += self.frame;
        }
        if self.video && now >= self.next_video {
            if self.video_bps > 0 {
                let size = (self.video_bps as usize / 8 / 30).max(50);
                let key = std::mem::take(&mut self.keyframe_due);
                self.a.send_video(now, &vec![0x55; size], key);
                self.metrics.video_frames_sent += 1;
            }
            self.next_video += Duration::from_secs(1) / 30;
        }
        if now >= self.next_sample {
            let target = self.a.target_bps();
            self.metrics
                .timeline
                .push((now - self.t0, target, self.max_owd, self.video_bps));
            self.max_owd = Duration::ZERO;
            self.next_sample += Duration::from_millis(100);
        }
        while let Some(t) = self.a.poll_transmit() {
            self.ab.handle_packet(
                now,
                Wire {
                    data: t.data,
                    sent: now,
                },
            );
        }
        while let Some(t) = self.b.poll_transmit() {
            self.ba.handle_packet(
                now,
                Wire {
                    data: t.data,
                    sent: now,
                },
            );
        }
        while let Some(e) = self.a.poll_event() {
            match e {
                Event::EncoderTarget(t) => {
                    self.video_bps = t.video_bps;
                    if let Some(o) = self.opus.as_mut() {
                        o.enc.set_bitrate(t.audio_bps);
                        o.enc.set_fec(t.inband_fec, t.expected_loss_percent);
                    }
                }
                Event::KeyframeRequested => {
                    self.keyframe_due = true;
                    self.metrics.keyframe_requests += 1;
                }
                _ => {}
            }
        }
        while let Some(e) = self.b.poll_event() {
            if matches!(e, Event::Video(_)) {
                self.metrics.video_frames_received += 1;
            }
            let Event::Audio(p) = e else { continue };
            let m = &mut self.metrics;
            match p {
                Playout::Frame {
                    payload, recovery, ..
                } => {
                    match recovery {
                        Recovery::None => m.played_original += 1,
                        Recovery::Retransmission => m.played_rtx += 1,
                        Recovery::Redundancy => m.played_red += 1,
                    }
                    if let Some(o) = self.opus.as_mut() {
                        match o.dec.decode(&payload, &mut o.pcm) {
                            Ok(_) => m.opus_decoded += 1,
                            Err(_) => m.decode_errors += 1,
                        }
                        o.pcm.clear();
                    } else if let Some(idx) = payload.get(..8) {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(idx);
                        let sent = self.t0 + self.frame * u64::from_be_bytes(b) as u32;
                        let added = now.saturating_duration_since(sent).as_secs_f64()
                            - base_ab.as_secs_f64();
                        m.added_delay.push(added);
                    }
                }
                Playout::Fec { next_payload, .. } => {
                    m.fec += 1;
                    if let Some(o) = self.opus.as_mut() {
                        if crate::codec::has_inband_fec(&next_payload) {
                            m.fec_decoded += 1;
                        }
                        if o.dec.decode_fec(&next_payload, &mut o.pcm).is_err() {
                            m.decode_errors += 1;
                        }
                        o.pcm.clear();
                    }
                }
                Playout::Conceal { .. } => {
                    m.concealed += 1;
                    if let Some(o) = self.opus.as_mut() {
                        if o.dec.conceal(&mut o.pcm).is_err() {
                            m.decode_errors += 1;
                        }
                        o.pcm.clear();
                    }
                }
                Playout::Stretch { .. } => {}
            }
        }
    }
}

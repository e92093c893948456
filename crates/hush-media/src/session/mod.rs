//! [`MediaSession`]: the sans-IO engine of one call's media, composing packetization, the
//! jitter buffer, loss recovery, congestion control and statistics.

mod config;
mod protection;
mod recv;
mod rtcp;

pub use config::{SessionConfig, StreamIds};

use std::collections::VecDeque;
use std::time::Duration;

use crate::cc::CongestionController;
use crate::error::Error;
use crate::jitter::{JitterBuffer, Playout};
use crate::nack::{NackScheduler, RtxSender};
use crate::red::RedEncoder;
use crate::rtp::{
    is_rtcp, AudioLevel, Packetizer, RtpPacket, VideoDepacketizer, VideoFrame, VideoPayload,
};
use crate::stats::QualityStats;
use crate::Instant;
use recv::{RateMeter, RecvStream};

/// Bytes each packet costs on the wire beyond the RTP packet: SRTP tag (16) and IPv4/UDP (28).
pub const WIRE_OVERHEAD: usize = 44;

/// How long a call is in its start, before any loss could be measured. The receiver holds no
/// room for repairs at first, so the first frame waits only the jitter buffer's initial delay
/// (the facade's: none; a NetEq-like start). The first gap in the sequence makes room at once,
/// planned for [`protection::STARTUP_PRESUMED_LOSS`] (two retransmission attempts when they
/// fit), and the jitter buffer builds it by stretching playout, which also waits for that
/// gap's retransmission when it can still come. Loss confirmed later keeps the room for 10 s
/// as at any time. The sender sends each audio retransmission twice in this time: a loss in
/// the first second would otherwise be concealed, and WB-PESQ marks each concealed frame
/// heavily.
pub(crate) const STARTUP_GUARD: Duration = Duration::from_secs(2);

/// How long the receiver keeps room for repairs after the last loss it saw.
pub(crate) const LOSS_MEMORY: Duration = Duration::from_secs(10);

/// What Opus produces of its target while it codes speech as SILK wideband (below
/// [`crate::codec::WIDEBAND_BELOW_BPS`]): its VBR leaves about a tenth of the target unused
/// (bare Opus on the audio benchmark's samples: 13.1 kbps at a 14 kbps target, 14.7 at 16,
/// 16.3 at 18; in a 24 kbps call 12.0–12.5 kbps of a 13 kbps share). On an audio-only call
/// nothing else uses what it leaves, so the encoder is asked for its share over this
/// (docs/benchmarks.md, issue 17, eighth round).
const SILK_VBR_YIELD: f64 = 0.9;

/// Least encoder rate of each copy for RED to be worth its copies.
const RED_MIN_COPY_BPS: f64 = 10_000.0;

/// Share of the video rate held back for retransmissions per unit of reported loss and per
/// copy sent: a lost packet is resent once (or twice at once on a lossy path,
/// `protection::VIDEO_DOUBLE_RTX_LOSS`), and some resends need another attempt.
const RTX_RESERVE_PER_LOSS: f64 = 1.5;

/// Most of the peer's send rate our transport-wide feedback may take (WebRTC: 5 %).
const FEEDBACK_SHARE: f64 = 0.05;
/// A typical feedback packet on the wire, in bits (RTCP with a few packets' status and
/// deltas, SRTCP, IPv4/UDP): about 80 bytes.
const FEEDBACK_BITS: f64 = 640.0;
/// Longest time between transport-wide feedback packets where [`FEEDBACK_SHARE`] allows it.
/// On a 24 kbps link (audio in 80–120 ms packets) feedback every 250 ms cost 2.6 kbps, a sixth
/// of the encoder's rate; every 500 ms still covers four to six packets.
const MAX_FEEDBACK_INTERVAL: Duration = Duration::from_millis(500);
/// On a path slower than that (the peer sends under 25.6 kbps: feedback at 5 % would come
/// less often than every [`MAX_FEEDBACK_INTERVAL`]), feedback takes at most this share of
/// the peer's rate, up to [`SLOW_PATH_MAX_FEEDBACK_INTERVAL`] apart. On a 24 kbps link,
/// feedback every 500 ms (1.3 kbps) and reports (0.7 kbps) together took 8 % of the link;
/// RFC 3550 gives all of RTCP 5 %. Every second still covers ten 100 ms audio packets.
const SLOW_PATH_FEEDBACK_SHARE: f64 = 0.025;
/// Longest time between transport-wide feedback packets on a slow path.
const SLOW_PATH_MAX_FEEDBACK_INTERVAL: Duration = Duration::from_secs(1);
/// Longest time between transport-wide feedback packets in the session's first
/// [`STARTUP_GUARD`]: the sender's fast start rises only as fast as feedback shows the path
/// delivering, and finds a slow link's queue only when feedback reports it.
const STARTUP_MAX_FEEDBACK_INTERVAL: Duration = Duration::from_millis(250);
/// Most of our own target the periodic sender/receiver reports may take (RFC 3550 gives all
/// of RTCP 5 %; transport-wide feedback and NACKs take the rest).
const REPORT_SHARE: f64 = 0.03;
/// A sender report with one report block and an SDES CNAME on the wire, in bits (SRTCP,
/// IPv4/UDP): about 116 bytes.
const REPORT_BITS: f64 = 928.0;
/// Longest time between sender/receiver reports (they carry the round trip and the loss
/// the sender's protection follows).
const MAX_REPORT_INTERVAL: Duration = Duration::from_secs(2);

/// Whether a datagram to send is RTP or RTCP (the driver protects them differently).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransmitKind {
    /// An RTP packet: protect with `SrtpContext::protect_rtp`.
    Rtp,
    /// An RTCP packet: protect with `SrtpContext::protect_rtcp`.
    Rtcp,
}

/// A datagram for the driver to protect and send.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Transmit {
    /// RTP or RTCP.
    pub kind: TransmitKind,
    /// The packet, in the clear.
    pub data: Vec<u8>,
}

/// What the encoders should do, after congestion control and loss changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderTarget {
    /// Audio codec bitrate. On an audio-only call below Opus's wideband cap it is set a tenth
    /// above the audio's share, which SILK's VBR leaves partly unused.
    pub audio_bps: u32,
    /// Video codec bitrate (0 while audio-only).
    pub video_bps: u32,
    /// Video is paused: the target is below the video threshold.
    pub audio_only: bool,
    /// Turn the audio codec's in-band FEC on.
    pub inband_fec: bool,
    /// The loss rate the audio codec should protect against.
    pub expected_loss_percent: u8,
}

/// Something for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// An audio playout action for the decoder, one per tick.
    Audio(Playout),
    /// A complete video frame.
    Video(VideoFrame),
    /// The peer needs a keyframe of our video.
    KeyframeRequested,
    /// New encoder settings; apply them with [`Codec::set_bitrate`](crate::codec::Codec::set_bitrate)
    /// and [`Codec::set_fec`](crate::codec::Codec::set_fec).
    EncoderTarget(EncoderTarget),
}

/// The media engine of one call. Sans-IO: it never reads a clock or touches a socket.
///
/// Method groups, in the quinn style:
/// - inputs: [`handle_packet`](Self::handle_packet) (a decrypted RTP or RTCP datagram) and
///   [`handle_timeout`](Self::handle_timeout);
/// - application commands: [`send_audio`](Self::send_audio), [`send_video`](Self::send_video);
/// - outputs, drained after every input or command: [`poll_transmit`](Self::poll_transmit),
///   [`poll_event`](Self::poll_event), then [`poll_timeout`](Self::poll_timeout);
/// - getters: [`stats`](Self::stats), [`target_bps`](Self::target_bps).
///
/// `now` must never go backwards. Calling `handle_timeout` early or twice is harmless.
#[derive(Debug)]
pub struct MediaSession {
    config: SessionConfig,
    start: Instant,
    audio_pz: Packetizer,
    audio_ts: u32,
    audio_sent_any: bool,
    /// Encoded frames waiting to go out together in one packet: `(timestamp, frame, level)`.
    audio_pending: Vec<(u32, Vec<u8>, Option<AudioLevel>)>,
    /// Audio frames per packet now (see [`protection::frames_per_packet`]).
    audio_packet_frames: usize,
    /// Frames in the peer's last audio packet.
    remote_packet_frames: usize,
    red: RedEncoder,
    red_distance: usize,
    red_hold_until: Option<Instant>,
    audio_rtx: RtxSender,
    video_pz: Option<Packetizer>,
    video_rtx: Option<RtxSender>,
    /// The audio stream's own packets and payload octets (its sender report's counts):
    /// not its retransmissions (their own SSRC), not video, not padding.
    audio_packets_sent: u32,
    audio_octets_sent: u32,
    last_rtp_ts: u32,
    cc: CongestionController,
    probe_queue: VecDeque<(Instant, u32, u8)>,
    send_rate: RateMeter,
    rtcp_rate: RateMeter,
    rtx_rate: RateMeter,
    /// Padding and probe packets sent (they make way for anything else).
    padding_rate: RateMeter,
    recv_rate: RateMeter,
    audio_rx: RecvStream,
    video_rx: RecvStream,
    jitter: JitterBuffer,
    audio_nack: NackScheduler,
    video_nack: NackScheduler,
    depack: VideoDepacketizer,
    video_gap_since: Option<Instant>,
    /// The frame start the depacketizer waited at when `video_gap_since` was set.
    video_gap_head: Option<u64>,
    /// Since when packets have been missing without a break.
    video_gap_first: Option<Instant>,
    /// Sequence number of the last full intra request (RFC 5104) acted on.
    last_fir_seq: Option<u8>,
    last_pli: Option<Instant>,
    twcc_rx: crate::cc::TwccRecorder,
    last_sr: Option<(u32, Instant)>,
    /// The peer's audio and video clocks, from its latest sender reports (lip sync).
    remote_clocks: [Option<crate::sync::SenderClock>; 2],
    /// The timestamp of the last audio frame handed to [`send_audio`](Self::send_audio), and
    /// when: the audio's clock, for sender reports.
    audio_clock: Option<(u32, Instant)>,
    /// Video packets and payload octets sent (the video sender report's counts).
    video_packets_sent: u32,
    video_octets_sent: u32,
    rtt: Option<Duration>,
    remote_loss: f64,
    /// `remote_loss` smoothed over reports.
    remote_loss_smoothed: f64,
    /// Reports of our audio's loss received so far.
    remote_reports: u64,
    /// RTCP has measured the RTT (a seeded one no longer applies).
    rtt_from_rtcp: bool,
    /// Fraction of the peer's audio lost before recovery, smoothed over report intervals.
    recv_loss: f64,
    /// What the audio sender spends on protection now.
    protection: protection::AudioProtection,
    last_audio_loss: Option<Instant>,
    /// When a lost video packet was last asked for.
    last_video_loss: Option<Instant>,
    /// Until then, before any loss could be measured, the receiver makes room for a
    /// retransmission as soon as a gap shows, and plans it for a lossy path (see
    /// [`STARTUP_GUARD`]).
    startup_guard_until: Instant,
    /// Gaps in the audio sequence not yet filled by an original: `(sequence, seen at)`.
    suspected_loss: VecDeque<(u64, Instant)>,
    /// Lengths of the last gaps in the audio sequence (packets): how long loss bursts run.
    recent_gaps: VecDeque<usize>,
    /// Highest audio sequence number received (extended).
    audio_highest: Option<u64>,
    remote_red_depth: usize,
    loss_samples: VecDeque<(Instant, u64)>,
    next_report: Instant,
    next_feedback: Instant,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    target: Option<EncoderTarget>,
    /// The video bitrate without the congestion window's pushback (see
    /// [`MediaSession::video_bps_without_pushback`]).
    video_bps_unpushed: u32,
    nacks_sent: u64,
    retransmissions_sent: u64,
    video_repair: crate::VideoRepairStats,
}

impl MediaSession {
    /// A session starting at `now`.
    pub fn new(config: SessionConfig, now: Instant) -> Self {
        let ext = config.extensions;
        let audio_pt = config.red_pt.unwrap_or(config.opus_pt);
        let seed = config.local_audio.ssrc;
        let video_pz = config.local_video.map(|v| {
            Packetizer::new(
                v.ssrc,
                config.video_pt,
                (seed >> 3) as u16,
                ext,
                config.max_payload,
            )
        });
        let video_rtx = config
            .local_video
            .map(|v| RtxSender::new(v.rtx_ssrc, config.video_rtx_pt));
        let mut jitter_cfg = config.jitter.clone();
        jitter_cfg.frame_duration = config.audio_frame;
        Self {
            start: now,
            audio_pz: Packetizer::new(config.local_audio.ssrc, audio_pt, seed as u16, ext, 1500),
            audio_ts: seed.rotate_left(7),
            audio_sent_any: false,
            audio_pending: Vec::new(),
            audio_packet_frames: 1,
            remote_packet_frames: 1,
            red: RedEncoder::new(),
            red_distance: 0,
            red_hold_until: None,
            audio_rtx: RtxSender::new(config.local_audio.rtx_ssrc, config.audio_rtx_pt),
            video_pz,
            video_rtx,
            audio_packets_sent: 0,
            audio_octets_sent: 0,
            last_rtp_ts: 0,
            cc: CongestionController::new(config.cc.clone()),
            probe_queue: VecDeque::new(),
            send_rate: RateMeter::default(),
            rtcp_rate: RateMeter::default(),
            rtx_rate: RateMeter::default(),
            padding_rate: RateMeter::default(),
            recv_rate: RateMeter::default(),
            audio_rx: RecvStream::new(jitter_cfg.clock_rate),
            video_rx: RecvStream::new(90_000),
            jitter: JitterBuffer::new(jitter_cfg),
            audio_nack: NackScheduler::default(),
            // A video frame waits for its packets (the gap timer leaves room for the first
            // NACK and two retries, `video_gap_limit`), so retries can leave the
            // retransmission time to arrive: at one RTT each video loss was resent twice
            // (measured: 2.5 retransmissions per loss at 10 % loss). Each retry goes twice:
            // at 10 % loss a packet whose first attempt failed lost its retries one time in
            // ten each; that was most of the frames still given up mid-call
            // (docs/benchmarks.md, issue 14's thirteenth round).
            video_nack: {
                let mut n = NackScheduler::default();
                n.retry_factor = 1.5;
                n.repeat_retries = true;
                n
            },
            depack: VideoDepacketizer::with_format(config.video_payload),
            video_gap_since: None,
            video_gap_head: None,
            video_gap_first: None,
            last_fir_seq: None,
            last_pli: None,
            twcc_rx: crate::cc::TwccRecorder::default(),
            last_sr: None,
            remote_clocks: [None; 2],
            audio_clock: None,
            video_packets_sent: 0,
            video_octets_sent: 0,
            rtt: None,
            remote_loss: 0.0,
            remote_loss_smoothed: 0.0,
            remote_reports: 0,
            rtt_from_rtcp: false,
            recv_loss: 0.0,
            protection: protection::AudioProtection {
                red_distance: 0,
                inband_fec: false,
                expected_loss_percent: 0,
            },
            last_audio_loss: None,
            last_video_loss: None,
            startup_guard_until: now + STARTUP_GUARD,
            suspected_loss: VecDeque::new(),
            recent_gaps: VecDeque::new(),
            audio_highest: None,
            remote_red_depth: 0,
            loss_samples: VecDeque::new(),
            next_report: now + config.report_interval / 2,
            next_feedback: now + config.feedback_interval,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            target: None,
            video_bps_unpushed: 0,
            nacks_sent: 0,
            retransmissions_sent: 0,
            video_repair: crate::VideoRepairStats::default(),
            config,
        }
    }

    /// The session's configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// The congestion controller's current target, in bits per second (all media).
    pub fn target_bps(&self) -> u64 {
        self.cc.target_bps()
    }

    /// The congestion controller (for inspection).
    pub fn congestion_controller(&self) -> &CongestionController {
        &self.cc
    }

    /// The RTT measured from RTCP reports, if any yet (or the one seeded with
    /// [`seed_rtt`](Self::seed_rtt) before the first report).
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// A round trip measured outside the session before its first RTCP report (ICE's
    /// connectivity checks on the path the media takes). Until RTCP measures one, the session
    /// would plan its retransmission room and the startup guard at a default of 100 ms; this
    /// sizes them to the real path instead. Ignored once RTCP has measured the RTT. The
    /// congestion controller does not take it: ICE's checks are small packets, and its
    /// window must cover the round trip media packets take (on a 24 kbps link a 100 ms
    /// packet alone takes 80 ms to cross; on loopback behind the facade's simulated link
    /// the checks took 0.3 ms on a 100 ms path, and a window planned on that held the
    /// encoder back in the call's first seconds).
    ///
    /// ```
    /// # use std::time::{Duration, Instant};
    /// # use hush_media::{MediaSession, SessionConfig};
    /// let mut session = MediaSession::new(SessionConfig::default(), Instant::now());
    /// session.seed_rtt(Duration::from_millis(3));
    /// assert_eq!(session.rtt(), Some(Duration::from_millis(3)));
    /// ```
    pub fn seed_rtt(&mut self, rtt: Duration) {
        if !self.rtt_from_rtcp {
            self.rtt = Some(rtt);
        }
    }

    /// What one repair of a lost video packet takes at `now`, for the receiver's video
    /// playout ([`crate::video::VideoPlayout::set_repair_room`]): the round trip of the NACK
    /// and its retransmission, the wait for the NACK's repeat (one in ten is lost at 10 %
    /// loss; it goes 20 ms after the first) and a margin, while loss shows (the evidence the
    /// audio's jitter buffer holds room on, a gap in the audio in the call's first seconds or
    /// a loss in the last 10 s, or a video loss in the last 10 s); zero while it does not, so
    /// a clean path adds no delay.
    ///
    /// ```
    /// # use std::time::{Duration, Instant};
    /// # use hush_media::{MediaSession, SessionConfig};
    /// let now = Instant::now();
    /// let session = MediaSession::new(SessionConfig::default(), now);
    /// assert_eq!(session.video_repair_room(now), Duration::ZERO);
    /// ```
    pub fn video_repair_room(&self, now: Instant) -> Duration {
        let video_loss = self
            .last_video_loss
            .is_some_and(|t| now.saturating_duration_since(t) < LOSS_MEMORY);
        if !self.audio_loss_shows(now) && !video_loss {
            return Duration::ZERO;
        }
        // The NACK's repeat goes `repeat_after` behind it (not a retry's round trip later).
        self.rtt_or_default() + self.video_nack.repeat_after + protection::REPAIR_MARGIN
    }

    /// Whether the peer's audio shows loss at `now`: a gap in its sequence in the call's
    /// first seconds (before any loss could be confirmed), or a loss confirmed in the last
    /// [`LOSS_MEMORY`]. The receiver holds room for repairs while it does.
    fn audio_loss_shows(&self, now: Instant) -> bool {
        (now < self.startup_guard_until && !self.suspected_loss.is_empty())
            || self
                .last_audio_loss
                .is_some_and(|t| now.saturating_duration_since(t) < LOSS_MEMORY)
    }

    fn audio_ts_step(&self) -> u32 {
        (self.config.audio_frame.as_secs_f64() * f64::from(self.config.jitter.clock_rate)).round()
            as u32
    }

    /// Sends one encoded audio frame (one frame duration after the previous one).
    ///
    /// On a link too slow for a packet per frame, frames go out joined in one Opus packet
    /// (RFC 6716 code 3) of up to [`SessionConfig::max_audio_packet`], as many as
    /// [`audio_packet_frames`](Self::audio_packet_frames) says: the frame waits here until the
    /// packet is complete. Frames that cannot share a packet (the encoder changed mode or
    /// bandwidth, or they are not single-frame Opus packets) go out in separate packets.
    pub fn send_audio(&mut self, now: Instant, frame: &[u8], level: Option<AudioLevel>) {
        let ts = self.audio_ts;
        self.audio_clock = Some((ts, now));
        self.audio_ts = self.audio_ts.wrapping_add(self.audio_ts_step());
        if !self.audio_pending.is_empty() && !self.joins_pending(frame) {
            self.flush_audio(now);
        }
        let joinable =
            frame.first().is_some_and(|&toc| toc & 0x3 == 0) && self.is_our_frame_duration(frame);
        if !joinable {
            // Nothing can join it: it goes now, alone, without waiting for the next frame.
            self.audio_pending.push((ts, frame.to_vec(), level));
            self.flush_audio(now);
            self.update_target(now);
            return;
        }
        self.audio_pending.push((ts, frame.to_vec(), level));
        if self.audio_pending.len() >= self.audio_packet_frames {
            self.flush_audio(now);
        }
        self.update_target(now);
    }

    /// Whether `frame` can go in the same packet as the frames waiting.
    fn joins_pending(&self, frame: &[u8]) -> bool {
        let first = self.audio_pending.first().map(|(_, f, _)| f.as_slice());
        first.is_some_and(|f| {
            self.is_our_frame_duration(frame) && crate::codec::frames::join(&[f, frame]).is_some()
        })
    }

    /// Whether the Opus TOC of `packet` says its frames last [`SessionConfig::audio_frame`]:
    /// only such frames are joined into one packet and split from one.
    pub(crate) fn is_our_frame_duration(&self, packet: &[u8]) -> bool {
        packet.first().is_some_and(|&toc| {
            // Units of 2.5 ms: 120 ticks of a 48 kHz clock.
            let ticks = u64::from(crate::codec::frames::frame_units(toc))
                * 120
                * u64::from(self.config.jitter.clock_rate)
                / 48_000;
            ticks == u64::from(self.audio_ts_step())
        })
    }

    /// Sends the frames waiting as one packet (or one each if they cannot share one).
    fn flush_audio(&mut self, now: Instant) {
        let pending = std::mem::take(&mut self.audio_pending);
        let frames: Vec<&[u8]> = pending.iter().map(|(_, f, _)| f.as_slice()).collect();
        let joined = if frames.len() > 1 {
            crate::codec::frames::join(&frames)
        } else {
            None
        };
        match joined {
            Some(joined) => self.send_audio_packet(now, &pending, &joined),
            None => {
                for one in &pending {
                    self.send_audio_packet(now, std::slice::from_ref(one), &one.1);
                }
            }
        }
    }

    /// Sends `frame` (the frames of `parts`, joined) as one audio packet.
    fn send_audio_packet(
        &mut self,
        now: Instant,
        parts: &[(u32, Vec<u8>, Option<AudioLevel>)],
        frame: &[u8],
    ) {
        let Some(&(ts, _, _)) = parts.first() else {
            return;
        };
        // The packet's level: the loudest frame's, voice if any frame had it.
        let level = parts
            .iter()
            .filter_map(|(_, _, l)| *l)
            .reduce(|a, b| AudioLevel {
                voice: a.voice || b.voice,
                level: a.level.min(b.level),
            });
        let payload = match self.config.red_pt {
            Some(_) => self
                .red
                .encode(self.config.opus_pt, ts, frame, self.red_distance),
            None => frame.to_vec(),
        };
        let first = !self.audio_sent_any;
        self.audio_sent_any = true;
        let packet = self.audio_pz.audio(ts, &payload, level, first);
        self.audio_rtx.on_sent(now, &packet);
        self.last_rtp_ts = ts;
        self.send_rtp(now, packet, None, 0);
    }

    /// Audio frames the sender puts in each packet now (1 unless the link is slow).
    pub fn audio_packet_frames(&self) -> usize {
        self.audio_packet_frames
    }

    /// Sends one encoded video frame, split into packets. Ignored without a local video stream.
    ///
    /// With [`VideoPayload::H264`] the frame is an Annex B access unit (packetized per RFC 6184;
    /// `keyframe` is then read from the stream by the receiver, not sent).
    pub fn send_video(&mut self, now: Instant, frame: &[u8], keyframe: bool) {
        let ts = self.video_ts(now);
        let format = self.config.video_payload;
        let Some(pz) = self.video_pz.as_mut() else {
            return;
        };
        let packets = match format {
            VideoPayload::H264 => pz.h264(ts, frame),
            _ => pz.video(ts, frame, keyframe),
        };
        for packet in packets {
            if let Some(rtx) = self.video_rtx.as_mut() {
                rtx.on_sent(now, &packet);
            }
            self.video_packets_sent = self.video_packets_sent.wrapping_add(1);
            self.video_octets_sent = self
                .video_octets_sent
                .wrapping_add(packet.payload.len() as u32);
            self.send_rtp(now, packet, None, 0);
        }
    }

    fn send_rtp(&mut self, now: Instant, mut packet: RtpPacket, probe: Option<u32>, padding: u8) {
        let is_media = probe.is_none() && padding == 0;
        if let Some(id) = self.config.extensions.transport_cc {
            // The extension adds 4 bytes (one-byte form, padded) if no other is present.
            let size = packet.payload.len() + 12 + 8 + usize::from(padding) + WIRE_OVERHEAD;
            let seq = self.cc.on_packet_sent(now, size, probe);
            packet.header.set_transport_seq(id, seq);
        }
        let mut data = Vec::with_capacity(packet.payload.len() + 40);
        packet.write_padded(&mut data, padding);
        if is_media && packet.header.ssrc == self.config.local_audio.ssrc {
            self.audio_packets_sent = self.audio_packets_sent.wrapping_add(1);
            self.audio_octets_sent = self
                .audio_octets_sent
                .wrapping_add(packet.payload.len() as u32);
        }
        self.send_rate.add(now, data.len() + WIRE_OVERHEAD);
        if !is_media {
            self.padding_rate.add(now, data.len() + WIRE_OVERHEAD);
        }
        self.transmits.push_back(Transmit {
            kind: TransmitKind::Rtp,
            data,
        });
    }

    fn send_rtcp(&mut self, now: Instant, data: Vec<u8>) {
        self.send_rate.add(now, data.len() + WIRE_OVERHEAD);
        self.cc.on_untracked_sent(now, data.len() + WIRE_OVERHEAD);
        self.rtcp_rate.add(now, data.len() + WIRE_OVERHEAD);
        self.transmits.push_back(Transmit {
            kind: TransmitKind::Rtcp,
            data,
        });
    }

    /// Handles one datagram from the peer, already decrypted and authenticated by SRTP.
    /// RTP and RTCP are told apart by RFC 5761 demultiplexing.
    pub fn handle_packet(&mut self, now: Instant, data: &[u8]) -> Result<(), Error> {
        self.recv_rate.add(now, data.len() + WIRE_OVERHEAD);
        if is_rtcp(data) {
            let packets = crate::rtcp::parse_compound(data)?;
            self.handle_rtcp(now, packets);
        } else {
            let packet = RtpPacket::parse(data)?;
            self.handle_rtp(now, packet)?;
        }
        self.flush_nacks(now);
        self.drain_playout(now);
        Ok(())
    }

    /// Runs timers due at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.jitter.handle_timeout(now);
        self.drain_playout(now);
        self.flush_nacks(now);
        self.check_video_gap(now);
        self.sample_loss(now);
        if now >= self.next_report {
            self.send_report(now);
            self.next_report = now + self.report_interval();
        }
        if now >= self.next_feedback {
            self.send_feedback(now);
            self.next_feedback = now + self.feedback_interval(now);
        }
        if let Some(p) = self.cc.poll_probe(now) {
            let packets = p.padding_packets(now, 12 + 8 + WIRE_OVERHEAD);
            self.probe_queue
                .extend(packets.map(|(at, padding)| (at, p.cluster, padding)));
        }
        while let Some(&(at, cluster, padding)) = self.probe_queue.front() {
            if at > now {
                break;
            }
            self.probe_queue.pop_front();
            let ts = self.last_rtp_ts;
            let packet = match self.video_rtx.as_mut() {
                Some(rtx) => rtx.padding_packet(ts),
                None => self.audio_rtx.padding_packet(ts),
            };
            self.send_rtp(now, packet, Some(cluster), padding);
        }
        self.update_target(now);
    }

    /// The next datagram to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the application.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let nack = self
            .audio_nack_enabled()
            .then(|| self.audio_nack.poll_timeout());
        [
            self.jitter.poll_timeout(),
            nack.flatten(),
            self.video_nack.poll_timeout(),
            Some(self.next_report),
            Some(self.next_feedback),
            self.probe_queue.front().map(|(t, _, _)| *t),
            self.video_gap_since.map(|t| t + self.video_gap_limit()),
            self.video_gap_first.map(|t| t + self.video_gap_limit() * 4),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn drain_playout(&mut self, _now: Instant) {
        while let Some(p) = self.jitter.poll_playout() {
            self.events.push_back(Event::Audio(p));
        }
        while let Some(f) = self.depack.poll_frame() {
            self.events.push_back(Event::Video(f));
        }
    }

    /// Notes real loss (not reordering or lateness): holes that no original packet filled
    /// within a second. That is what makes waiting for retransmissions worth its delay.
    fn sample_loss(&mut self, now: Instant) {
        if self
            .loss_samples
            .back()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) < Duration::from_millis(500))
        {
            return;
        }
        let lost = self.audio_rx.settled_lost(now);
        if self.loss_samples.back().is_some_and(|(_, l)| lost > *l) {
            self.last_audio_loss = Some(now);
        }
        self.loss_samples.push_back((now, lost));
        while self.loss_samples.len() > 2 {
            self.loss_samples.pop_front();
        }
    }

    /// Time until the next transport-wide feedback: the configured interval, longer on a slow
    /// path so that feedback takes at most [`FEEDBACK_SHARE`] of what the peer sends us (as
    /// WebRTC's receiver does), up to [`MAX_FEEDBACK_INTERVAL`]; on a path slower still, at
    /// most [`SLOW_PATH_FEEDBACK_SHARE`], up to [`SLOW_PATH_MAX_FEEDBACK_INTERVAL`]. Every
    /// 50 ms, feedback alone would cost about 12 kbps, half a 24 kbps link.
    fn feedback_interval(&mut self, now: Instant) -> Duration {
        let recv_bps = self.recv_rate.bps(now) as f64;
        let at_share =
            |share: f64| Duration::from_secs_f64((FEEDBACK_BITS / (share * recv_bps)).min(1.0));
        let (wanted, longest) = if recv_bps <= 0.0 {
            (self.config.feedback_interval, MAX_FEEDBACK_INTERVAL)
        } else if at_share(FEEDBACK_SHARE) > MAX_FEEDBACK_INTERVAL {
            (
                at_share(SLOW_PATH_FEEDBACK_SHARE),
                SLOW_PATH_MAX_FEEDBACK_INTERVAL,
            )
        } else {
            (at_share(FEEDBACK_SHARE), MAX_FEEDBACK_INTERVAL)
        };
        let longest = if now < self.start + STARTUP_GUARD {
            STARTUP_MAX_FEEDBACK_INTERVAL
        } else {
            longest
        };
        wanted.clamp(
            self.config.feedback_interval,
            longest.max(self.config.feedback_interval),
        )
    }

    /// Time until the next sender/receiver report: the configured interval, longer on a slow
    /// path so that reports take at most [`REPORT_SHARE`] of our target (every 500 ms they
    /// cost 1.9 kbps, 8 % of a 24 kbps link), up to [`MAX_REPORT_INTERVAL`].
    fn report_interval(&self) -> Duration {
        let target = self.cc.target_bps() as f64;
        let wanted = if target > 0.0 {
            Duration::from_secs_f64((REPORT_BITS / (REPORT_SHARE * target)).min(10.0))
        } else {
            self.config.report_interval
        };
        wanted.clamp(
            self.config.report_interval,
            MAX_REPORT_INTERVAL.max(self.config.report_interval),
        )
    }

    fn rtt_or_default(&self) -> Duration {
        self.rtt.unwrap_or(Duration::from_millis(100))
    }

    fn audio_nack_enabled(&self) -> bool {
        self.rtt_or_default() <= self.config.audio_nack_max_rtt
    }

    fn update_target(&mut self, now: Instant) {
        let loss = self.remote_loss_smoothed;
        let mut p = protection::audio_protection(
            loss,
            self.rtt_or_default(),
            self.config.audio_frame,
            self.config.audio_nack_max_rtt,
        );
        if self.config.red_pt.is_none() {
            p.red_distance = 0;
        }
        // RED depth follows loss, and holds for a while once raised.
        let want = p.red_distance;
        let hold = self.red_hold_until.is_some_and(|t| now < t);
        if want > self.red_distance || (want < self.red_distance && !hold) {
            self.red_distance = want;
            if want > 0 {
                self.red_hold_until = Some(now + Duration::from_secs(10));
            }
        }
        // Copies that would leave each under RED_MIN_COPY_BPS (after the headers of the longest
        // packets) are not sent: on a link that slow they only overflow the bottleneck.
        let rtcp_bps = self.rtcp_rate.bps(now) as f64;
        let share = self.audio_share(rtcp_bps);
        let longest = self.config.max_audio_packet.max(self.config.audio_frame);
        let headers = protection::AUDIO_PACKET_BITS / longest.as_secs_f64().max(0.001);
        while self.red_distance > 0
            && (share - headers) / (1.0 + self.red_distance as f64) < RED_MIN_COPY_BPS
        {
            self.red_distance -= 1;
        }
        p.red_distance = self.red_distance;
        self.protection = p;
        let frame = self.config.audio_frame;
        let max_frames = if frame.is_zero() {
            1
        } else {
            // Opus holds at most 120 ms in one packet.
            let cap = (Duration::from_millis(120).as_nanos() / frame.as_nanos()).max(1);
            (self.config.max_audio_packet.as_nanos() / frame.as_nanos()).clamp(1, cap) as usize
        };
        let n = protection::frames_per_packet(
            self.audio_share(rtcp_bps),
            1.0 + self.protection.red_distance as f64,
            frame,
            max_frames,
            self.audio_packet_frames,
        );
        if n != self.audio_packet_frames {
            tracing::debug!(
                frames = n,
                share_bps = self.audio_share(rtcp_bps),
                "audio packet length changed"
            );
            self.audio_packet_frames = n;
        }
        let rtx_bps = self.rtx_rate.bps(now) as f64;
        let t = self.allocate(rtcp_bps, rtx_bps);
        self.video_bps_unpushed = self
            .allocate_at(self.cc.target_bps() as f64, rtcp_bps, rtx_bps)
            .video_bps;
        if self.target.is_none_or(|old| significant_change(&old, &t)) {
            self.target = Some(t);
            self.events.push_back(Event::EncoderTarget(t));
        }
    }

    /// The encoder settings now, as last announced with [`Event::EncoderTarget`].
    pub fn encoder_target(&self) -> Option<EncoderTarget> {
        self.target
    }

    /// The video bitrate the estimate leaves without the congestion window's pushback (0 if
    /// that is below the video threshold): what video gets once the queue the window holds
    /// back has drained. [`EncoderTarget::video_bps`] is what the encoder may produce now;
    /// this is for decisions that must ride out a drain, such as the ladder's audio-only floor
    /// (right after a link got slower the pushback held video under it for over a second).
    pub fn video_bps_without_pushback(&self) -> u32 {
        self.video_bps_unpushed
    }

    /// The RTP timestamp of video sent at `now` (90 kHz from the session's start).
    fn video_ts(&self, now: Instant) -> u32 {
        (now.saturating_duration_since(self.start).as_secs_f64() * 90_000.0) as u32
    }

    /// The peer's clock of its audio or video stream, from its latest RTCP sender report:
    /// what [`crate::sync::LipSync`] plays the two in step by. `None` before one came.
    pub fn remote_sender_clock(
        &self,
        stream: crate::sync::SyncStream,
    ) -> Option<crate::sync::SenderClock> {
        self.remote_clocks[stream as usize]
    }

    /// Adds `delay` to the audio's playout delay, to play in step with the video
    /// ([`crate::sync::LipSync`]).
    pub fn set_audio_sync_delay(&mut self, delay: Duration) {
        self.jitter.set_sync_delay(delay);
    }

    /// Loss the peer reports on what we send (fraction, smoothed over its reports).
    pub fn remote_loss_smoothed(&self) -> f64 {
        self.remote_loss_smoothed
    }

    /// Redundant frames in each outgoing RED packet now (0: none).
    pub fn red_distance(&self) -> usize {
        self.red_distance
    }

    /// The congestion controller's encoder rate less our own RTCP: what the media may send.
    fn media_rate(&self, rtcp_bps: f64) -> f64 {
        media_rate_of(self.encoder_rate(), rtcp_bps)
    }

    /// The rate the encoders share: with video, the congestion controller's encoder rate (its
    /// target less the congestion window's pushback); without video, the target itself. An
    /// audio-only call is at most 32 kbps of Opus, and the window it would be pushed back by
    /// measures feedback's spacing more than a queue: on a slow path feedback comes up to 1 s
    /// apart, a lost one doubles that, and with the codec following every pushback step
    /// (each announced as a frame is sent) a 24 kbps call at 10 % loss held its encoder at
    /// 0.2–0.4 of its target for seven seconds, 0.6–0.8 for five without loss
    /// (docs/benchmarks.md, issue 17, eleventh round). The queue itself is the delay-based
    /// rate's to answer.
    fn encoder_rate(&self) -> f64 {
        if self.video_pz.is_some() {
            self.cc.encoder_bps() as f64
        } else {
            self.cc.target_bps() as f64
        }
    }

    /// The audio's share of [`media_rate`](Self::media_rate), headers included: all of it
    /// without video, half at most with video.
    fn audio_share(&self, rtcp_bps: f64) -> f64 {
        let target = self.media_rate(rtcp_bps);
        if self.video_pz.is_some() {
            target * 0.5
        } else {
            target
        }
    }

    /// Splits the congestion controller's encoder rate between audio and video. The estimate
    /// covers everything we send on the path, so our own RTCP comes off it first, and the
    /// retransmissions the peer's losses call for (`rtx_bps` sent over the last second).
    fn allocate(&self, rtcp_bps: f64, rtx_bps: f64) -> EncoderTarget {
        self.allocate_at(self.encoder_rate(), rtcp_bps, rtx_bps)
    }

    /// [`allocate`](Self::allocate) of `encoder_bps` rather than the congestion controller's
    /// encoder rate.
    fn allocate_at(&self, encoder_bps: f64, rtcp_bps: f64, rtx_bps: f64) -> EncoderTarget {
        let p = self.protection;
        let target = media_rate_of(encoder_bps, rtcp_bps);
        let packet = self.config.audio_frame * self.audio_packet_frames as u32;
        let pps = 1.0 / packet.as_secs_f64().max(0.001);
        let overhead = pps * protection::AUDIO_PACKET_BITS;
        let copies = 1.0 + p.red_distance as f64;
        let has_video = self.video_pz.is_some();
        let audio_share = if has_video { target * 0.5 } else { target };
        // With in-band FEC on, Opus adds LBRR only when the rate leaves room for it: with 10 %
        // expected loss, opus-pure put it in no packet at 16 kbps and in 82 % (all but pauses
        // and quiet dips) at 24 kbps, so audio keeps 24 kbps then (taking it from video), if
        // the path carries that much at all: on a slower one, a 24 kbps floor would overflow
        // the bottleneck and cause the loss it protects against.
        let fec_fits = target - overhead >= 24_000.0 * copies;
        let floor = if p.inband_fec && fec_fits {
            24_000.0
        } else {
            8_000.0
        };
        let audio = ((audio_share - overhead) / copies).clamp(floor, protection::AUDIO_MAX_BPS);
        let audio_total = audio * copies + overhead;
        // Retransmissions answer the peer's NACKs out of the same estimate (their budget is
        // what the rest of our traffic leaves, see `on_nack`): leave them room in proportion
        // to the loss the peer reports, as WebRTC takes its protection overhead off the
        // encoder's target. Without it the encoder filled the estimate, the budget was empty
        // at 10 % loss, and lost video packets were repaired by keyframes after the gap
        // timeout instead (freezes; benches/video_quality.py).
        // The reserve is what the loss report predicts or what was resent over the last
        // second, whichever is more (the report lags the first losses by a second or two).
        let room = (target - audio_total).max(0.0);
        // The smoothed loss lags a burst by seconds (it moves an eighth per report): once the
        // latest report is cleaner, the reserve follows it, or video would stay squeezed (or
        // paused) long after a blackout. What is really resent is covered by `rtx_bps`.
        let loss = self.remote_loss_smoothed.min(self.remote_loss);
        let copies = if loss > protection::VIDEO_DOUBLE_RTX_LOSS {
            2.0
        } else {
            1.0
        };
        let predicted = room * (loss * RTX_RESERVE_PER_LOSS * copies).min(0.5);
        let reserve = predicted.max(rtx_bps).min(room * 0.5);
        let video = (room - reserve) * 0.9;
        let min_video = self.config.video_min_bps as f64;
        let was_audio_only = self.target.is_some_and(|t| t.audio_only);
        let resume = if was_audio_only {
            1.3 * min_video
        } else {
            min_video
        };
        let audio_only = !has_video || video < resume;
        let audio_bps = if has_video {
            audio
        } else {
            encoder_setting(audio)
        };
        EncoderTarget {
            audio_bps: audio_bps as u32,
            video_bps: if audio_only { 0 } else { video as u32 },
            audio_only,
            inband_fec: p.inband_fec,
            expected_loss_percent: p.expected_loss_percent,
        }
    }

    /// Quality statistics at `now`.
    pub fn stats(&mut self, now: Instant) -> QualityStats {
        let js = self.jitter.stats();
        let expected = self.audio_rx.expected();
        let lost = self.audio_rx.lost();
        let due = js.played + js.concealed + js.fec;
        QualityStats {
            rtt: self.rtt,
            jitter: self.audio_rx.jitter(),
            jitter_p95: self.jitter.jitter_p95(),
            playout_delay: self.jitter.target_delay(),
            packets_received: self.audio_rx.received(),
            packets_lost: lost,
            loss_before_recovery: if expected == 0 {
                0.0
            } else {
                lost as f64 / expected as f64
            },
            loss_after_recovery: if due == 0 {
                0.0
            } else {
                js.concealed as f64 / due as f64
            },
            frames_played: js.played,
            frames_recovered_rtx: js.recovered_rtx,
            frames_recovered_red: js.recovered_red,
            frames_fec: js.fec,
            frames_concealed: js.concealed,
            frames_late: js.late,
            nacks_sent: self.nacks_sent,
            retransmissions_sent: self.retransmissions_sent,
            remote_loss: self.remote_loss,
            send_bps: self.send_rate.bps(now),
            recv_bps: self.recv_rate.bps(now),
            target_bps: self.cc.target_bps(),
            audio_only: self.target.is_some_and(|t| t.audio_only),
        }
    }

    /// Counters of video loss repair: keyframe requests, gap timeouts, retransmissions sent
    /// and refused.
    pub fn video_repair(&self) -> crate::VideoRepairStats {
        self.video_repair
    }
}

/// What the media may send of an encoder rate of `encoder_bps`, less our own RTCP.
fn media_rate_of(encoder_bps: f64, rtcp_bps: f64) -> f64 {
    (encoder_bps - rtcp_bps).max(encoder_bps * 0.5)
}

/// The bitrate to set on an audio-only call's Opus encoder so that it produces about
/// `share_bps`: over [`SILK_VBR_YIELD`] while that stays within the wideband cap
/// ([`crate::codec::WIDEBAND_BELOW_BPS`]; the setting never crosses it, so the coded band
/// does not change), the share itself above.
fn encoder_setting(share_bps: f64) -> f64 {
    let cap = f64::from(crate::codec::WIDEBAND_BELOW_BPS) - 1.0;
    if share_bps >= cap {
        share_bps
    } else {
        (share_bps / SILK_VBR_YIELD).min(cap)
    }
}

/// Whether `new` differs enough from `old` to announce. Small steps are not (the encoder need
/// not follow every wobble of the estimate), except the step to the audio's full rate: a call
/// that climbed to within 5 % of it would otherwise stay just under it for good.
fn significant_change(old: &EncoderTarget, new: &EncoderTarget) -> bool {
    let rel = |a: u32, b: u32| (f64::from(a) - f64::from(b)).abs() > 0.05 * f64::from(a.max(1));
    let full = protection::AUDIO_MAX_BPS as u32;
    old.audio_only != new.audio_only
        || (new.audio_bps == full && old.audio_bps != full)
        || old.inband_fec != new.inband_fec
        || old
            .expected_loss_percent
            .abs_diff(new.expected_loss_percent)
            >= 5
        || rel(old.audio_bps, new.audio_bps)
        || rel(old.video_bps, new.video_bps)
}

#[cfg(test)]
mod tests;

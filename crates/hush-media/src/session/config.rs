//! Configuration of a [`MediaSession`](super::MediaSession).

use std::time::{Duration, SystemTime};

use crate::cc::CcConfig;
use crate::jitter::JitterConfig;
use crate::rtp::{ExtensionIds, VideoPayload};

/// Identifiers of one media stream in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamIds {
    /// SSRC of the media.
    pub ssrc: u32,
    /// SSRC of its retransmissions (RFC 4588 SSRC multiplexing).
    pub rtx_ssrc: u32,
}

/// Settings of a media session, agreed with the peer during call setup.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Our audio stream.
    pub local_audio: StreamIds,
    /// Our video stream, if we send video.
    pub local_video: Option<StreamIds>,
    /// The peer's audio stream.
    pub remote_audio: StreamIds,
    /// The peer's video stream, if it sends video.
    pub remote_video: Option<StreamIds>,
    /// Payload type of Opus.
    pub opus_pt: u8,
    /// Payload type of RED (RFC 2198) audio, or `None` if RED was not negotiated.
    pub red_pt: Option<u8>,
    /// Payload type of audio RTX; it retransmits RED if RED is on, Opus otherwise.
    pub audio_rtx_pt: u8,
    /// Payload type of video.
    pub video_pt: u8,
    /// Payload type of video RTX.
    pub video_rtx_pt: u8,
    /// RTP payload format of video (both directions): hush's generic payload, or H.264 per
    /// RFC 6184, in which [`MediaSession::send_video`](super::MediaSession::send_video) takes
    /// Annex B access units.
    pub video_payload: VideoPayload,
    /// Header extension ids.
    pub extensions: ExtensionIds,
    /// Duration of one audio frame.
    pub audio_frame: Duration,
    /// Jitter buffer settings.
    pub jitter: JitterConfig,
    /// Congestion control settings.
    pub cc: CcConfig,
    /// RTCP CNAME.
    pub cname: String,
    /// Wall-clock time at the session's start instant, for RTCP NTP timestamps.
    pub wallclock: SystemTime,
    /// Interval of RTCP sender/receiver reports.
    pub report_interval: Duration,
    /// Interval of transport-wide feedback.
    pub feedback_interval: Duration,
    /// Largest RTP payload of a video packet.
    pub max_payload: usize,
    /// Below this much video bitrate, video pauses (audio-only fallback).
    pub video_min_bps: u64,
    /// Above this RTT, NACK is not used for audio (the retransmission would come too late)
    /// and RED carries the recovery alone.
    pub audio_nack_max_rtt: Duration,
    /// Longest audio packet: on a slow link the sender joins up to this much of consecutive
    /// [`audio_frame`](Self::audio_frame)s into one packet to save headers (at most 120 ms,
    /// Opus's limit). `audio_frame` or less keeps one frame per packet.
    pub max_audio_packet: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            local_audio: StreamIds {
                ssrc: 0x1000_0001,
                rtx_ssrc: 0x1000_0002,
            },
            local_video: None,
            remote_audio: StreamIds {
                ssrc: 0x2000_0001,
                rtx_ssrc: 0x2000_0002,
            },
            remote_video: None,
            opus_pt: 111,
            red_pt: Some(63),
            audio_rtx_pt: 112,
            video_pt: 96,
            video_rtx_pt: 97,
            video_payload: VideoPayload::Generic,
            extensions: ExtensionIds::default(),
            audio_frame: Duration::from_millis(20),
            jitter: JitterConfig::default(),
            cc: CcConfig::default(),
            cname: "hush".into(),
            wallclock: SystemTime::UNIX_EPOCH,
            report_interval: Duration::from_millis(500),
            feedback_interval: Duration::from_millis(50),
            max_payload: 1150,
            video_min_bps: 60_000,
            audio_nack_max_rtt: Duration::from_millis(250),
            max_audio_packet: Duration::from_millis(60),
        }
    }
}

impl SessionConfig {
    /// This configuration with H.264 video (RFC 6184) both ways, on streams beside the audio
    /// ones: SSRC and RTX SSRC 2 and 3 above each side's audio SSRC.
    ///
    /// ```
    /// use hush_media::SessionConfig;
    ///
    /// let c = SessionConfig::default().with_h264_video();
    /// let video = c.local_video.expect("video");
    /// assert_eq!(video.ssrc, c.local_audio.ssrc.wrapping_add(2));
    /// assert_eq!(c.mirrored().remote_video, Some(video));
    /// ```
    pub fn with_h264_video(mut self) -> Self {
        let beside = |audio: &StreamIds| StreamIds {
            ssrc: audio.ssrc.wrapping_add(2),
            rtx_ssrc: audio.ssrc.wrapping_add(3),
        };
        self.local_video = Some(beside(&self.local_audio));
        self.remote_video = Some(beside(&self.remote_audio));
        self.video_payload = VideoPayload::H264;
        self
    }

    /// The configuration of the peer: local and remote streams swapped.
    pub fn mirrored(&self) -> Self {
        let mut c = self.clone();
        std::mem::swap(&mut c.local_audio, &mut c.remote_audio);
        std::mem::swap(&mut c.local_video, &mut c.remote_video);
        c
    }
}

//! The per-call media task: the ICE connection (`hush-net` driver) and, once keys exist, the
//! [`MediaPath`] holding the codecs (Opus, H.264), the media engine and SRTP, one straight path
//! per direction. The task also decides which camera pictures reach the path (camera, the
//! audio-only fallback, the ladder's size and frame rate; see [`super::video`]).

use std::time::{Duration, Instant};

use hush_crypto::MediaKeys;
use hush_media::codec::OpusCodec;
use hush_media::sim::{NetSim, SimConfig, SimPacket};
use hush_media::video::{sps_dimensions, EncodedVideoFrame, I420Frame};
use hush_media::{Event as MediaEvent, QualityStats, SessionConfig};
use hush_net::driver::Started;
use hush_net::{CandidateKind, ConnectionState, Event as NetEvent, IceCredentials};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::call::{AudioFrame, CallEvent, FrameSource};
use super::video::{FreezeDetector, SendChange, VideoSender, VideoStats};
use super::Command;
use crate::machine::CallId;
use crate::media_path::MediaPath;

/// Commands from the actor and the [`Call`](super::Call) handle to the media task.
#[derive(Debug)]
pub(crate) enum MediaCommand {
    /// The call's keys: media may flow from now on.
    Keys(Box<MediaKeys>),
    /// The peer's ICE credentials.
    RemoteCredentials(IceCredentials),
    /// One remote candidate line.
    RemoteCandidate(String),
    /// The peer has sent all its candidates of the current generation.
    RemoteGatheringComplete,
    /// One 20 ms PCM frame to send.
    Audio(Vec<i16>),
    /// Mute or unmute.
    Mute(bool),
    /// One picture to send.
    Video(Box<I420Frame>),
    /// One encoded access unit to send (application codec).
    EncodedVideo(Box<EncodedVideoFrame>),
    /// Camera on or off.
    Camera(bool),
    /// The application's decoder needs a keyframe.
    RequestKeyframe,
    /// The peer's announced state: whether it sends video now (camera on and not paused).
    RemoteVideo(bool),
    /// Report statistics.
    Stats(oneshot::Sender<StatsReply>),
    /// The device's network changed: new sockets and an ICE restart.
    NetworkChanged(oneshot::Sender<Result<(), crate::Error>>),
    /// End: close ICE, destroy keys.
    Stop,
}

/// What the media task reports for [`Call::stats`](super::Call::stats).
pub(crate) type StatsReply = (
    Option<CandidateKind>,
    MediaStats,
    Option<QualityStats>,
    Option<VideoStats>,
);

/// Media counters of a call.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct MediaStats {
    /// Audio frames encoded and sent.
    pub frames_sent: u64,
    /// Bytes of encoded audio sent (codec output, before RTP, redundancy and SRTP).
    pub audio_bytes_sent: u64,
    /// Audio frames played from a received packet.
    pub frames_received: u64,
    /// Audio frames rebuilt from in-band FEC.
    pub frames_fec: u64,
    /// Audio frames concealed (nothing arrived in time).
    pub frames_concealed: u64,
    /// Datagrams refused by SRTP (forged, corrupted, replayed).
    pub srtp_failures: u64,
    /// Datagrams that arrived before the call's keys existed, dropped unread.
    pub dropped_before_keys: u64,
    /// PCM frames the application offered before media was allowed, dropped unencoded.
    pub unsent_before_keys: u64,
    /// Round-trip time from RTCP, if known.
    pub rtt_ms: Option<f64>,
    /// The congestion controller's target bitrate.
    pub target_bps: u64,
}

/// What the media task needs to start.
pub(crate) struct MediaTask {
    pub(crate) call_id: CallId,
    pub(crate) net: Started,
    pub(crate) commands: mpsc::UnboundedReceiver<MediaCommand>,
    pub(crate) actor: mpsc::UnboundedSender<Command>,
    pub(crate) audio_out: mpsc::Sender<AudioFrame>,
    pub(crate) session: SessionConfig,
    /// Simulated impairments of outgoing datagrams (a test and demo knob), if any.
    pub(crate) send_link: Option<SimConfig>,
    /// Bandwidth steps of the simulated link: from each offset after the keys, this cap.
    pub(crate) link_steps: Vec<(Duration, Option<u64>)>,
    /// Most queueing delay of the simulated bottleneck (its queue follows the rate steps).
    pub(crate) link_queue: Duration,
    /// Video, when the call negotiated it.
    pub(crate) video: Option<VideoTask>,
    /// The call's events, for the ones the media task raises.
    pub(crate) events: mpsc::UnboundedSender<CallEvent>,
}

/// The video side of a call's media task.
pub(crate) struct VideoTask {
    /// The camera starts on.
    pub(crate) camera_on: bool,
    /// The application runs its own codec.
    pub(crate) encoded: bool,
    /// Decoded pictures to the application.
    pub(crate) decoded_out: mpsc::Sender<I420Frame>,
    /// Encoded frames to the application.
    pub(crate) encoded_out: mpsc::Sender<EncodedVideoFrame>,
}

/// A protected datagram in the simulated send link, sized as on the wire.
#[derive(Clone)]
struct Datagram(Vec<u8>);

impl SimPacket for Datagram {
    fn wire_size(&self) -> usize {
        // IPv4 and UDP headers.
        self.0.len() + 28
    }
}

/// Local candidates (and the end of gathering) taken from the ICE driver in one go.
#[derive(Default)]
struct CandidateBatch {
    lines: Vec<String>,
    complete: bool,
}

struct State {
    path: Option<MediaPath>,
    /// The audio codec, until the path exists (it moves into the path).
    codec: Option<OpusCodec>,
    stats: MediaStats,
    kind: Option<CandidateKind>,
    /// The round trip ICE measured on the selected path (seeds the engine's until RTCP's).
    ice_rtt: Option<Duration>,
    muted: bool,
    /// The simulated send link, when impairments are on.
    link: Option<NetSim<Datagram>>,
    /// When the keys arrived (the simulated link's bandwidth steps count from here).
    keyed_at: Option<Instant>,
    next_step: usize,
    video: Option<VideoState>,
}

struct VideoState {
    task: VideoTask,
    sender: VideoSender,
    freezes: FreezeDetector,
    /// The peer sends video now (camera on, not paused), as it last told us.
    remote_on: bool,
    /// Size of the peer's pictures, from its latest SPS (application codec).
    remote_size: (u32, u32),
    received_size: (u32, u32),
    /// Frames the application did not take in time.
    dropped_app: u64,
    /// Frames handed on encoded (application codec).
    encoded_delivered: u64,
    encoded_keyframes: u64,
}

impl MediaTask {
    pub(crate) async fn run(mut self) {
        let codec = match OpusCodec::new(1, 20, 32_000) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "opus codec unavailable");
                let _ = self.actor.send(Command::NetFailed(self.call_id));
                return;
            }
        };
        let mut st = State {
            path: None,
            codec: Some(codec),
            stats: MediaStats::default(),
            kind: None,
            ice_rtt: None,
            muted: false,
            link: self.send_link.take().map(NetSim::new),
            keyed_at: None,
            next_step: 0,
            video: self.video.take().map(|task| VideoState {
                sender: VideoSender::new(task.camera_on, 0),
                task,
                freezes: FreezeDetector::default(),
                remote_on: true,
                remote_size: (0, 0),
                received_size: (0, 0),
                dropped_app: 0,
                encoded_delivered: 0,
                encoded_keyframes: 0,
            }),
        };
        loop {
            let step_at = st
                .keyed_at
                .and_then(|k| self.link_steps.get(st.next_step).map(|(d, _)| k + *d));
            let deadline = [
                st.path.as_ref().and_then(MediaPath::poll_timeout),
                st.link.as_ref().and_then(NetSim::poll_timeout),
                step_at,
            ]
            .into_iter()
            .flatten()
            .min();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                d = self.net.datagrams.recv() => match d {
                    Some(d) => self.on_datagram(&mut st, d),
                    None => break,
                },
                ev = self.net.events.recv() => match ev {
                    Some(ev) => {
                        // Events already queued are taken together, so that the candidates
                        // gathered in one go (and the end of gathering) travel in one
                        // signaling message.
                        let mut batch = CandidateBatch::default();
                        self.on_net_event(&mut st, ev, &mut batch);
                        while let Ok(ev) = self.net.events.try_recv() {
                            self.on_net_event(&mut st, ev, &mut batch);
                        }
                        self.flush_candidates(&mut batch);
                    }
                    None => break,
                },
                c = self.commands.recv() => match c {
                    None | Some(MediaCommand::Stop) => break,
                    Some(c) => self.on_command(&mut st, c).await,
                },
                () = sleep => {
                    // After the task was starved of CPU, the datagrams that arrived meanwhile
                    // go to the jitter buffer before its playout timer runs, or frames that
                    // are here would be concealed.
                    while let Ok(d) = self.net.datagrams.try_recv() {
                        self.on_datagram(&mut st, d);
                    }
                    if let Some(path) = st.path.as_mut() {
                        path.handle_timeout(Instant::now());
                    }
                    self.step_link(&mut st);
                }
            }
            self.drain(&mut st);
        }
        let _ = self.net.handle.close().await;
        // Dropping the path drops the SRTP contexts, which zeroize their keys.
        drop(st.path.take());
        debug!(call_id = ?self.call_id, "media task ended");
    }

    /// Applies the simulated link's bandwidth steps that are due.
    fn step_link(&self, st: &mut State) {
        let Some(keyed) = st.keyed_at else {
            return;
        };
        let now = Instant::now();
        while let Some((at, bps)) = self.link_steps.get(st.next_step) {
            if now < keyed + *at {
                break;
            }
            if let Some(link) = st.link.as_mut() {
                debug!(bps = ?bps, "simulated link rate step");
                link.set_rate(*bps);
                if let Some(bps) = bps {
                    let bytes = (*bps as f64 / 8.0 * self.link_queue.as_secs_f64()) as usize;
                    link.set_queue_bytes(bytes.max(1500));
                }
            }
            st.next_step += 1;
        }
    }

    fn on_datagram(&self, st: &mut State, d: Vec<u8>) {
        match st.path.as_mut() {
            Some(path) => {
                if path.handle_datagram(Instant::now(), d).is_err() {
                    st.stats.srtp_failures = path.stats().unprotect_failures;
                }
            }
            None => st.stats.dropped_before_keys += 1,
        }
    }

    fn on_net_event(&self, st: &mut State, ev: NetEvent, batch: &mut CandidateBatch) {
        match ev {
            NetEvent::LocalCandidate(line) => batch.lines.push(line),
            NetEvent::GatheringComplete => batch.complete = true,
            NetEvent::PathSelected(info) => {
                st.kind = Some(info.kind);
                st.ice_rtt = info.rtt;
                if let (Some(path), Some(rtt)) = (st.path.as_mut(), info.rtt) {
                    path.seed_rtt(rtt);
                }
                let _ = self.actor.send(Command::PathUp(self.call_id, info.kind));
            }
            NetEvent::StateChanged(ConnectionState::Disconnected) => {
                let _ = self.actor.send(Command::PathDown(self.call_id));
            }
            NetEvent::Failed(e) => {
                warn!(error = %e, "ICE failed");
                let _ = self.actor.send(Command::NetFailed(self.call_id));
            }
            NetEvent::Restarted { credentials } => {
                // Our side restarted (network change, consent loss, or the peer's restart):
                // the peer needs the new credentials before our new candidates (and after the
                // old generation's).
                self.flush_candidates(batch);
                let _ = self
                    .actor
                    .send(Command::LocalRestart(self.call_id, credentials));
            }
            NetEvent::ServerError(e) => warn!(error = %e, "STUN/TURN server problem"),
            other => debug!(event = ?other, "ICE event"),
        }
    }

    /// Hands the batched local candidates to the actor, to send in one message.
    fn flush_candidates(&self, batch: &mut CandidateBatch) {
        if batch.lines.is_empty() && !batch.complete {
            return;
        }
        let lines = std::mem::take(&mut batch.lines);
        let complete = std::mem::take(&mut batch.complete);
        let _ = self
            .actor
            .send(Command::LocalCandidates(self.call_id, lines, complete));
    }

    async fn on_command(&self, st: &mut State, c: MediaCommand) {
        match c {
            MediaCommand::Keys(keys) => {
                match MediaPath::new(&keys, self.session.clone(), Instant::now()) {
                    // `keys` drops here: the SRTP contexts hold the only copies.
                    Ok(mut path) => {
                        if let Some(codec) = st.codec.take() {
                            path.set_audio_codec(codec);
                        }
                        if let Some(rtt) = st.ice_rtt {
                            path.seed_rtt(rtt);
                        }
                        if let Some(v) = st.video.as_mut() {
                            let start = path
                                .session()
                                .encoder_target()
                                .map_or(0, |t| t.video_bps)
                                .max((path.session().target_bps() / 2) as u32);
                            v.sender = VideoSender::new(v.sender.camera_on, start);
                            if !v.task.encoded {
                                set_codecs(&mut path, v.sender.fps());
                            }
                        }
                        st.path = Some(path);
                        st.keyed_at = Some(Instant::now());
                        // The peer assumes an unmuted microphone and, in a video call, a
                        // camera that is on: tell it otherwise.
                        if st.muted || st.video.as_ref().is_some_and(|v| !v.sender.camera_on) {
                            self.announce(st);
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "could not key the media path");
                        let _ = self.actor.send(Command::NetFailed(self.call_id));
                    }
                }
            }
            MediaCommand::RemoteCredentials(creds) => {
                if let Err(e) = self.net.handle.set_remote_credentials(creds).await {
                    warn!(error = %e, "remote ICE credentials refused");
                }
            }
            MediaCommand::RemoteCandidate(line) => {
                if let Err(e) = self.net.handle.add_remote_candidate(line).await {
                    debug!(error = %e, "remote candidate refused");
                }
            }
            MediaCommand::RemoteGatheringComplete => {
                let _ = self.net.handle.remote_gathering_complete();
            }
            MediaCommand::NetworkChanged(reply) => {
                let r = self.net.handle.network_changed().await;
                if let Err(e) = &r {
                    warn!(error = %e, "could not move the call to the new network");
                }
                let _ = reply.send(r.map(|_| ()).map_err(crate::Error::from));
            }
            MediaCommand::Audio(pcm) => self.send_audio(st, &pcm),
            MediaCommand::Mute(m) => {
                if st.muted != m {
                    st.muted = m;
                    self.announce(st);
                }
            }
            MediaCommand::Video(picture) => self.send_video(st, &picture),
            MediaCommand::EncodedVideo(frame) => self.send_encoded_video(st, &frame),
            MediaCommand::Camera(on) => {
                let Some(v) = st.video.as_mut() else {
                    return;
                };
                if v.sender.camera_on == on {
                    return;
                }
                v.sender.camera_on = on;
                if on {
                    if let Some(path) = st.path.as_mut() {
                        path.force_keyframe();
                    }
                }
                self.announce(st);
            }
            MediaCommand::RequestKeyframe => {
                if let Some(path) = st.path.as_mut() {
                    path.request_keyframe(Instant::now());
                }
            }
            MediaCommand::RemoteVideo(on) => {
                if let Some(v) = st.video.as_mut() {
                    if v.remote_on && !on {
                        v.freezes.gap();
                    }
                    if !v.remote_on && on {
                        v.freezes.gap();
                        // Its first frame back must be decodable on its own.
                        if let Some(path) = st.path.as_mut() {
                            path.request_keyframe(Instant::now());
                        }
                    }
                    v.remote_on = on;
                }
            }
            MediaCommand::Stats(reply) => {
                let now = Instant::now();
                let mut quality = None;
                if let Some(path) = st.path.as_mut() {
                    st.stats.srtp_failures = path.stats().unprotect_failures;
                    st.stats.target_bps = path.session().target_bps();
                    st.stats.rtt_ms = path.session().rtt().map(|r| r.as_secs_f64() * 1e3);
                    quality = Some(path.quality(now));
                }
                let video = st
                    .video
                    .as_mut()
                    .map(|v| video_stats(v, st.path.as_ref(), now));
                let _ = reply.send((st.kind, st.stats, quality, video));
            }
            MediaCommand::Stop => {}
        }
    }

    fn send_audio(&self, st: &mut State, pcm: &[i16]) {
        let Some(path) = st.path.as_mut() else {
            st.stats.unsent_before_keys += 1;
            return;
        };
        if st.muted {
            return;
        }
        match path.send_pcm(Instant::now(), pcm) {
            Ok(n) => {
                st.stats.frames_sent += 1;
                st.stats.audio_bytes_sent += n as u64;
            }
            Err(e) => debug!(error = %e, "encode failed"),
        }
    }

    /// Tells the peer (through the actor, sealed) what this side sends now.
    fn announce(&self, st: &State) {
        let (video_on, video_paused) = st
            .video
            .as_ref()
            .map_or((false, false), |v| (v.sender.camera_on, v.sender.paused()));
        let _ = self.actor.send(Command::SendMediaState {
            call_id: self.call_id,
            audio_muted: st.muted,
            video_on,
            video_paused,
        });
    }

    /// Runs the ladder on the engine's current video rate and the peer's loss; reports a pause
    /// or resume to the application and the peer.
    fn update_ladder(&self, st: &mut State, now: Instant) {
        let (Some(path), Some(v)) = (st.path.as_mut(), st.video.as_mut()) else {
            return;
        };
        let change = v.sender.step(path, now);
        match change {
            Some(SendChange::Paused(paused)) => {
                if v.sender.camera_on {
                    let _ = self.events.send(if paused {
                        CallEvent::LocalVideoPaused
                    } else {
                        CallEvent::LocalVideoResumed
                    });
                    self.announce(st);
                }
            }
            Some(SendChange::Rung) | None => {}
        }
    }

    fn send_video(&self, st: &mut State, picture: &I420Frame) {
        let now = Instant::now();
        self.update_ladder(st, now);
        let (Some(path), Some(v)) = (st.path.as_mut(), st.video.as_mut()) else {
            return;
        };
        if v.task.encoded {
            debug!("raw picture on a call with an application codec; ignored");
            return;
        }
        v.sender.send(path, now, picture);
    }

    fn send_encoded_video(&self, st: &mut State, frame: &EncodedVideoFrame) {
        let now = Instant::now();
        self.update_ladder(st, now);
        let (Some(path), Some(v)) = (st.path.as_mut(), st.video.as_mut()) else {
            return;
        };
        v.sender.captured += 1;
        if !v.sender.camera_on || v.sender.paused() {
            return;
        }
        path.send_encoded_video(now, frame);
        v.sender.sent_size = (frame.width, frame.height);
    }

    fn send_datagram(&self, d: Vec<u8>) {
        if let Err(e) = self.net.handle.send(d) {
            debug!(error = %e, "send failed");
        }
    }

    /// Sends what the path produced (through the simulated link, if any) and plays what it
    /// released.
    fn drain(&self, st: &mut State) {
        let Some(path) = st.path.as_mut() else {
            return;
        };
        let now = Instant::now();
        while let Some(d) = path.poll_datagram() {
            match st.link.as_mut() {
                Some(link) => link.handle_packet(now, Datagram(d)),
                None => self.send_datagram(d),
            }
        }
        if let Some(link) = st.link.as_mut() {
            link.handle_timeout(now);
            while let Some(Datagram(d)) = link.poll_transmit() {
                self.send_datagram(d);
            }
        }
        while let Some(frame) = path.poll_audio() {
            match frame.source {
                FrameSource::Decoded => st.stats.frames_received += 1,
                FrameSource::Fec => st.stats.frames_fec += 1,
                FrameSource::Concealed => st.stats.frames_concealed += 1,
            }
            // A slow application loses frames rather than stalling the call.
            let _ = self.audio_out.try_send(frame);
        }
        if let Some(v) = st.video.as_mut() {
            // Each picture comes out of the path at its render time (`capture_time`).
            while let Some(picture) = path.poll_video() {
                v.received_size = (picture.width(), picture.height());
                v.freezes.frame(now);
                if v.task.decoded_out.try_send(picture).is_err() {
                    v.dropped_app += 1;
                }
            }
        }
        while let Some(ev) = path.poll_event() {
            match ev {
                MediaEvent::Video(frame) => {
                    let Some(v) = st.video.as_mut() else {
                        continue;
                    };
                    if let Some(size) = sps_dimensions(&frame.data) {
                        v.remote_size = size;
                    }
                    if v.remote_size == (0, 0) {
                        // Nothing decodable before the first parameter sets (the keyframe
                        // was sent before the path was up): skip to a keyframe.
                        v.dropped_app += 1;
                        path.request_keyframe(now);
                        continue;
                    }
                    v.received_size = v.remote_size;
                    // The path let it out at its render time (the task wakes at the path's
                    // deadline): it is shown now, and `now` is that time.
                    v.freezes.frame(now);
                    v.encoded_delivered += 1;
                    v.encoded_keyframes += u64::from(frame.keyframe);
                    let out = EncodedVideoFrame {
                        data: frame.data,
                        keyframe: frame.keyframe,
                        width: v.remote_size.0,
                        height: v.remote_size.1,
                        capture_time: now,
                    };
                    if v.task.encoded_out.try_send(out).is_err() {
                        v.dropped_app += 1;
                    }
                }
                MediaEvent::KeyframeRequested
                    if st.video.as_ref().is_some_and(|v| v.task.encoded) =>
                {
                    let _ = self.events.send(CallEvent::KeyframeRequested);
                }

                _ => {}
            }
        }
    }
}

/// OpenH264 encoder and decoder on the path, the encoder starting at the sender's first rung's
/// frame rate `fps`; without them (the library failed to start) the call goes on without
/// video in that direction.
fn set_codecs(path: &mut MediaPath, fps: f32) {
    use hush_media::video::{OpenH264Decoder, OpenH264Encoder, VideoEncoderConfig};
    let fps = if fps > 0.0 { fps } else { 30.0 };
    let encoder = OpenH264Encoder::new(VideoEncoderConfig {
        // Starts low; the engine's first target follows at once. At the rung's frame rate:
        // started at 30 frames a second under a 15 fps rung, the encoder restarted for the
        // frame rate a second into the call, and the restart's keyframe, at a rate where
        // OpenH264 skips pictures, froze the picture in 3 of 30 calls at 10 % loss
        // (docs/benchmarks.md, issue 14's thirteenth round).
        bitrate_bps: 300_000,
        framerate: fps,
        max_nal_size: path
            .session()
            .config()
            .max_payload
            .saturating_sub(20)
            .max(420),
        ..VideoEncoderConfig::default()
    });
    let decoder = OpenH264Decoder::new();
    if let Err(e) = &encoder {
        warn!(error = %e, "video encoder unavailable");
    }
    if let Err(e) = &decoder {
        warn!(error = %e, "video decoder unavailable");
    }
    path.set_video_codecs(
        encoder
            .ok()
            .map(|e| Box::new(e) as Box<dyn hush_media::video::VideoEncoder>),
        decoder
            .ok()
            .map(|d| Box::new(d) as Box<dyn hush_media::video::VideoDecoder>),
        fps,
    );
}

/// The video figures of a call now.
fn video_stats(v: &mut VideoState, path: Option<&MediaPath>, now: Instant) -> VideoStats {
    let c = path.map(MediaPath::video_stats).unwrap_or_default();
    let repair = path.map(|p| p.session().video_repair()).unwrap_or_default();
    let sync = path.map(MediaPath::lip_sync).unwrap_or_default();
    let target = path
        .and_then(|p| p.session().encoder_target())
        .filter(|_| !v.sender.paused())
        .map_or(0, |t| t.video_bps);
    let per_frame = |total: f64, n: u64| if n == 0 { 0.0 } else { total * 1e3 / n as f64 };
    let (decoded, keys) = if v.task.encoded {
        (v.encoded_delivered, v.encoded_keyframes)
    } else {
        (c.frames_decoded, c.key_frames_decoded)
    };
    VideoStats {
        frames_captured: v.sender.captured,
        frames_encoded: c.frames_encoded,
        key_frames_encoded: c.key_frames_encoded,
        bytes_encoded: c.bytes_encoded,
        sent_width: v.sender.sent_size.0,
        sent_height: v.sender.sent_size.1,
        sent_fps: v.sender.fps(),
        encode_ms_mean: per_frame(c.total_encode_time, c.frames_encoded),
        quality_limitation: v.sender.limitation(),
        resolution_steps: v.sender.steps(),
        paused: v.sender.paused(),
        pauses: v.sender.pauses,
        keyframe_requests_received: c.keyframe_requests_received,
        frames_decoded: decoded,
        key_frames_decoded: keys,
        frames_dropped: c.frames_dropped + v.dropped_app,
        received_width: v.received_size.0,
        received_height: v.received_size.1,
        received_fps: v.freezes.fps(now),
        decode_ms_mean: per_frame(c.total_decode_time, c.frames_decoded),
        keyframe_requests_sent: c.keyframe_requests_sent,
        freeze_count: v.freezes.count,
        total_freezes_duration: v.freezes.total,
        target_bitrate: target,
        sent_bitrate: v.sender.sent_bitrate(now),
        frames_held: v.sender.held_pictures,
        retransmitted_packets_sent: repair.retransmissions_sent,
        retransmissions_refused_congested: repair.refused_congested,
        retransmissions_refused_budget: repair.refused_budget,
        gap_timeouts: repair.gap_timeouts,
        sync_skew_ms: sync.skew.map(|s| s * 1e3),
        sync_audio_delay: sync.audio_delay,
        sync_video_delay: sync.video_delay,
    }
}

//! The handles an application holds: [`Call`] and [`IncomingCall`], and what they report.

use std::sync::{Arc, Mutex as StdMutex};

use hush_net::CandidateKind;
use hush_signaling::DeviceId;
use tokio::sync::{mpsc, oneshot, Mutex};

use hush_media::video::{EncodedVideoFrame, I420Frame};

use super::media::{MediaCommand, MediaStats};
use super::video::VideoStats;
use super::Command;
use crate::machine::{CallId, EndReason};
use crate::Error;

/// Something that happened to a call.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallEvent {
    /// The callee's device rings.
    Ringing,
    /// Media flows over a path of this type.
    Connected {
        /// host, srflx or relay.
        path: CandidateKind,
    },
    /// The media path changed (after an ICE restart or a better pair).
    PathChanged {
        /// host, srflx or relay.
        path: CandidateKind,
    },
    /// The path was lost; ICE is trying to restore it.
    Reconnecting,
    /// A message claiming to come from the peer presented a Signal identity key other than
    /// the one this call's keys are bound to (the peer's safety number changed). The message
    /// was not opened; the call keeps the keys agreed with the verified identity. Show it to
    /// the user; accept the new identity only after they verify it
    /// ([`Client::accept_identity`](super::Client::accept_identity)).
    IdentityChanged {
        /// The new identity key, when the message carried one.
        new_identity: Option<hush_crypto::IdentityKey>,
    },
    /// The peer muted (`true`) or unmuted its microphone. A muted side sends no audio
    /// packets; the silence is not loss.
    RemoteMuted(bool),
    /// The peer turned its camera on (`true`) or off. With the camera off it sends no video
    /// packets; the gap is not a freeze.
    RemoteVideo(bool),
    /// The peer's video paused (`true`) because the link is too thin for it (audio-only
    /// fallback), or resumed (`false`). It resumes by itself when the link recovers.
    RemoteVideoPaused(bool),
    /// This side's video paused: the link is too thin; the call goes on audio-only and sends
    /// no video until the estimate has recovered for a while.
    LocalVideoPaused,
    /// This side's video resumed after [`LocalVideoPaused`](Self::LocalVideoPaused).
    LocalVideoResumed,
    /// The peer needs a keyframe of our video. Only with an application codec
    /// ([`CallOptions::encoded_video`](super::CallOptions::encoded_video)): make the next
    /// frame an IDR. hush's own encoder handles it by itself.
    KeyframeRequested,
    /// The call ended. Its keys are destroyed.
    Ended(EndReason),
}

/// One decoded 20 ms audio frame handed to the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AudioFrame {
    /// 48 kHz mono PCM.
    pub pcm: Vec<i16>,
    /// How the frame was produced.
    pub source: FrameSource,
}

/// Where a played audio frame came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameSource {
    /// Decoded from a received packet (original, retransmitted or redundant copy).
    Decoded,
    /// Rebuilt from the next packet's in-band FEC.
    Fec,
    /// Packet-loss concealment: nothing arrived in time.
    Concealed,
}

/// Statistics of a call.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct CallStats {
    /// The negotiated SRTP suite, e.g. `AEAD_AES_128_GCM`.
    pub suite: &'static str,
    /// The current path type, if a path is up.
    pub path: Option<CandidateKind>,
    /// Media-level counters.
    pub media: MediaStats,
    /// The media engine's quality statistics (jitter, loss before and after recovery, RTT,
    /// bitrate); `None` before keys exist. `to_prometheus` renders them for scraping.
    pub quality: Option<hush_media::QualityStats>,
    /// Video figures; `None` for a call without video.
    pub video: Option<VideoStats>,
}

impl CallStats {
    /// The quality and video figures in Prometheus text format (`hush_*` and `hush_video_*`
    /// series); `labels` goes in every sample, e.g. `call="42"` (`""` for none).
    pub fn to_prometheus(&self, labels: &str) -> String {
        let mut out = self
            .quality
            .as_ref()
            .map(|q| q.to_prometheus(labels))
            .unwrap_or_default();
        if let Some(v) = &self.video {
            out.push_str(&v.to_prometheus(labels));
        }
        out
    }
}

/// An established or establishing call. Dropping it does not end the call; call
/// [`hangup`](Self::hangup).
#[derive(Debug)]
pub struct Call {
    pub(super) id: CallId,
    pub(super) peer: DeviceId,
    pub(super) actor: mpsc::UnboundedSender<Command>,
    pub(super) media: mpsc::UnboundedSender<MediaCommand>,
    pub(super) events: Mutex<mpsc::UnboundedReceiver<CallEvent>>,
    pub(super) audio: Mutex<mpsc::Receiver<AudioFrame>>,
    pub(super) video: Option<CallVideo>,
    pub(super) suite: Arc<StdMutex<&'static str>>,
}

/// The receiving ends of a video call's pictures.
#[derive(Debug)]
pub(super) struct CallVideo {
    pub(super) encoded: bool,
    pub(super) decoded: Mutex<mpsc::Receiver<I420Frame>>,
    pub(super) encoded_frames: Mutex<mpsc::Receiver<EncodedVideoFrame>>,
}

impl Call {
    /// The call's id.
    pub fn id(&self) -> CallId {
        self.id
    }

    /// The remote device.
    pub fn peer(&self) -> DeviceId {
        self.peer
    }

    /// The next event of this call; `None` once the client is gone.
    pub async fn next_event(&self) -> Option<CallEvent> {
        self.events.lock().await.recv().await
    }

    /// Sends one 20 ms frame of 48 kHz mono PCM (960 samples). Frames sent before the callee
    /// accepted are dropped: nothing is encrypted or sent before then.
    pub fn send_audio(&self, pcm: &[i16]) -> Result<(), Error> {
        self.media
            .send(MediaCommand::Audio(pcm.to_vec()))
            .map_err(|_| Error::CallEnded)
    }

    /// The next decoded audio frame, in playout order (one every 20 ms once media flows);
    /// `None` after the call ended.
    pub async fn recv_audio(&self) -> Option<AudioFrame> {
        self.audio.lock().await.recv().await
    }

    /// Whether the call carries video (it was placed or accepted with
    /// [`CallOptions::video`](super::CallOptions::video) offered).
    pub fn has_video(&self) -> bool {
        self.video.is_some()
    }

    fn video(&self, encoded: bool) -> Result<&CallVideo, Error> {
        match &self.video {
            Some(v) if v.encoded == encoded => Ok(v),
            Some(_) => Err(Error::VideoMode),
            None => Err(Error::NoVideo),
        }
    }

    /// Sends one camera picture. hush encodes it (H.264, OpenH264) at the resolution and frame
    /// rate the link allows now: pictures larger than the ladder's rung are scaled down, and
    /// ones beyond its frame rate skipped. Nothing goes out with the camera off, while video is
    /// paused for bandwidth, or before the callee accepted. Give pictures at the camera's
    /// pace, with their capture time.
    pub fn send_video(&self, picture: I420Frame) -> Result<(), Error> {
        self.video(false)?;
        self.media
            .send(MediaCommand::Video(Box::new(picture)))
            .map_err(|_| Error::CallEnded)
    }

    /// The next decoded picture from the peer, handed over at its render time, which is also
    /// its `capture_time`: render it now. A picture is decoded as soon as its frame is complete
    /// and then held until its capture time on the peer (mapped to the local clock through the
    /// fastest transit seen) plus a playout delay that follows what repairing lost packets
    /// takes on this path: zero on a clean path, on a lossy one what all but the slowest 2 %
    /// of the last 10 s of pictures needed, less 50 ms, at most 400 ms
    /// ([`hush_media::video::playout`]). So pictures keep their spacing through a repair
    /// instead of freezing and then coming in a burst; the price is that delay (on a path
    /// losing 10 %, about 30 ms more glass to glass at the median: docs/benchmarks.md, issue
    /// 14's tenth round). Pictures are also held in step with the call's sound (lip sync,
    /// [`hush_media::sync`]): when the audio waits longer for its repairs than the video, the
    /// pictures wait as long (and the other way round), so a picture is shown with the sound
    /// captured with it, within 30 ms ([`VideoStats::sync_skew_ms`]). `None` after the call
    /// ended. Pictures the application does not take in time are dropped (counted in
    /// [`VideoStats::frames_dropped`]).
    pub async fn recv_video(&self) -> Option<I420Frame> {
        let v = self.video(false).ok()?;
        v.decoded.lock().await.recv().await
    }

    /// A decoded picture if one is waiting, without waiting.
    pub fn try_recv_video(&self) -> Option<I420Frame> {
        let v = self.video(false).ok()?;
        v.decoded.try_lock().ok()?.try_recv().ok()
    }

    /// Sends one encoded access unit (H.264 Annex B) from the application's own encoder
    /// ([`CallOptions::encoded_video`](super::CallOptions::encoded_video)). Follow
    /// [`CallEvent::KeyframeRequested`]; the bitrate to aim for is in [`Call::stats`]
    /// (`media.target_bps`, less the audio).
    pub fn send_encoded_video(&self, frame: EncodedVideoFrame) -> Result<(), Error> {
        self.video(true)?;
        self.media
            .send(MediaCommand::EncodedVideo(Box::new(frame)))
            .map_err(|_| Error::CallEnded)
    }

    /// The next encoded access unit from the peer (application codec), with the picture size
    /// from the stream's latest sequence parameter set. It is handed over at its render time
    /// (`capture_time`), held like the decoded pictures of [`recv_video`](Self::recv_video).
    pub async fn recv_encoded_video(&self) -> Option<EncodedVideoFrame> {
        let v = self.video(true).ok()?;
        v.encoded_frames.lock().await.recv().await
    }

    /// Asks the peer for a keyframe (PLI), for an application decoder that lost its reference.
    /// Rate-limited. hush's own decoder asks by itself.
    pub fn request_keyframe(&self) -> Result<(), Error> {
        self.video(true)?;
        self.media
            .send(MediaCommand::RequestKeyframe)
            .map_err(|_| Error::CallEnded)
    }

    /// Turns the camera off (`false`: no video packets at all, not black frames) or back on
    /// (the next frame is a keyframe). The peer is told ([`CallEvent::RemoteVideo`]).
    pub fn set_camera(&self, on: bool) -> Result<(), Error> {
        if self.video.is_none() {
            return Err(Error::NoVideo);
        }
        self.media
            .send(MediaCommand::Camera(on))
            .map_err(|_| Error::CallEnded)
    }

    /// Stops (or resumes) sending audio. Muted frames are not encoded or sent, and the peer
    /// is told ([`CallEvent::RemoteMuted`]).
    pub fn mute(&self, muted: bool) -> Result<(), Error> {
        self.media
            .send(MediaCommand::Mute(muted))
            .map_err(|_| Error::CallEnded)
    }

    /// Current statistics.
    pub async fn stats(&self) -> Result<CallStats, Error> {
        let (tx, rx) = oneshot::channel();
        self.media
            .send(MediaCommand::Stats(tx))
            .map_err(|_| Error::CallEnded)?;
        let (path, media, quality, video) = rx.await.map_err(|_| Error::CallEnded)?;
        let suite = *self.suite.lock().unwrap_or_else(|e| e.into_inner());
        Ok(CallStats {
            suite,
            path,
            media,
            quality,
            video,
        })
    }

    /// Tells the call that this device's network changed (Wi-Fi → mobile, a new address, or
    /// the app wants fresh sockets): ICE binds new sockets, restarts with new credentials and
    /// sends them to the peer over signaling; media resumes on the new path without a new
    /// call. Path events follow ([`CallEvent::PathChanged`] once the new path is up).
    ///
    /// Fails with [`Error::Net`] if no socket could be bound (no network yet): call it again
    /// when one is up.
    pub async fn network_changed(&self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.media
            .send(MediaCommand::NetworkChanged(tx))
            .map_err(|_| Error::CallEnded)?;
        rx.await.map_err(|_| Error::CallEnded)?
    }

    /// Ends the call (from any state) and tells the peer.
    pub fn hangup(&self) -> Result<(), Error> {
        self.actor
            .send(Command::Hangup(self.id))
            .map_err(|_| Error::ClientClosed)
    }
}

/// A call that rings on this device. Accept or reject it; dropping it leaves it ringing until
/// the ring timeout.
#[derive(Debug)]
pub struct IncomingCall {
    pub(super) id: CallId,
    pub(super) peer: DeviceId,
    pub(super) replaces_outgoing: bool,
    pub(super) video: bool,
    pub(super) actor: mpsc::UnboundedSender<Command>,
}

impl IncomingCall {
    /// The call's id.
    pub fn id(&self) -> CallId {
        self.id
    }

    /// Who calls.
    pub fn peer(&self) -> DeviceId {
        self.peer
    }

    /// True when both users called each other at once and this call won: the user already
    /// asked to talk to this peer.
    pub fn replaces_outgoing(&self) -> bool {
        self.replaces_outgoing
    }

    /// Whether the caller offered video.
    pub fn video(&self) -> bool {
        self.video
    }

    /// Accepts: derives the call's keys, answers, and starts connecting. A video call starts
    /// with the camera on; see [`accept_with`](Self::accept_with).
    pub async fn accept(self) -> Result<Call, Error> {
        let options = super::CallOptions::default().with_video(self.video);
        self.accept_with(options).await
    }

    /// Accepts with these options. On a call offered with video, `options.video == false`
    /// answers with the camera off (the peer is told; turn it on later with
    /// [`Call::set_camera`]). A call offered audio-only stays audio-only.
    pub async fn accept_with(self, options: super::CallOptions) -> Result<Call, Error> {
        let (tx, rx) = oneshot::channel();
        self.actor
            .send(Command::Accept(self.id, options, tx))
            .map_err(|_| Error::ClientClosed)?;
        rx.await.map_err(|_| Error::ClientClosed)?
    }

    /// Declines the call.
    pub fn reject(self) -> Result<(), Error> {
        self.actor
            .send(Command::Reject(self.id))
            .map_err(|_| Error::ClientClosed)
    }
}

//! The handles an application holds: [`Call`] and [`IncomingCall`], and what they report.

use std::sync::{Arc, Mutex as StdMutex};

use hush_net::CandidateKind;
use hush_signaling::DeviceId;
use tokio::sync::{mpsc, oneshot, Mutex};

use super::media::{MediaCommand, MediaStats};
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
    pub(super) suite: Arc<StdMutex<&'static str>>,
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

    /// Stops (or resumes) sending audio. Muted frames are not encoded or sent.
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
        let (path, media, quality) = rx.await.map_err(|_| Error::CallEnded)?;
        let suite = *self.suite.lock().unwrap_or_else(|e| e.into_inner());
        Ok(CallStats {
            suite,
            path,
            media,
            quality,
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

    /// Accepts: derives the call's keys, answers, and starts connecting.
    pub async fn accept(self) -> Result<Call, Error> {
        let (tx, rx) = oneshot::channel();
        self.actor
            .send(Command::Accept(self.id, tx))
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

//! Group calls through an SFU (`hush-sfu`): the [`GroupCall`] handle and its task.
//!
//! ```text
//!  app ──send_audio/kick/leave──▶ group task ──join, roster updates (TCP)──▶ SFU signaling
//!                                   │  ▲ authenticated notices (joined, left, speaker, kicked)
//!                                   ▼  │
//!  app ◀─per-participant + mixed audio── GroupMediaPath ◀──UDP (ICE to the SFU's ICE-lite)──▶ SFU
//! ```
//!
//! The creator's client signs the roster with its device key, joins (which creates the call on
//! the SFU), then sends every other member a sealed [`hush_signaling::GroupInvite`] over its
//! Signal session. A member's client surfaces it as [`ClientEvent::GroupInvite`]; the
//! application joins with [`Client::join_group_call`](super::Client::join_group_call).
//!
//! [`ClientEvent::GroupInvite`]: super::ClientEvent::GroupInvite

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hush_media::codec::{Codec, OpusCodec};
use hush_media::jitter::{JitterConfig, Playout};
use hush_media::sim::NetSim;
use hush_media::video::I420Frame;
use hush_net::{Event as NetEvent, IceCredentials, Role};
use hush_sfu::client::{Incoming, Link};
use hush_sfu::control::Notice;
use hush_sfu::ed25519_dalek::SigningKey;
use hush_sfu::join::{JoinParams, SfuPublicKey, SimulcastLayer, StreamDecl, StreamKind};
use hush_sfu::roster::Roster;
use hush_sfu::{CallId as SfuCallId, DeviceId as SfuDeviceId, LeaveReason};
use hush_signaling::DeviceId;
use rand::Rng;
use tokio::sync::{mpsc, oneshot, Mutex};
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use super::call::{AudioFrame, FrameSource};
use super::{ClientConfig, Command, NET_START_TIMEOUT};
use crate::group_path::{audio_level, E2eeStats, GroupMediaPath, SframeCrypto, AUDIO_LEVEL_EXT};
use crate::Error;
use hush_crypto::group::{GroupCallId, GroupE2ee, JoinKeys, KeyMessage, MemberSlot};

mod video;

/// How long joining the SFU (connect, request, answer) may take.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long ICE to the SFU may take before the call is given up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// The first frame of each participant waits this long before it plays. Longer than a 1:1
/// call's: every packet takes two hops (through the SFU), and a device decodes several
/// streams at once, so its own scheduling jitter is larger.
const GROUP_INITIAL_PLAYOUT_DELAY: Duration = Duration::from_millis(60);
/// The least delay a participant's jitter buffer keeps (see above).
const GROUP_MIN_PLAYOUT_DELAY: Duration = Duration::from_millis(30);
/// Decoded frames kept per participant for the mixer.
const MIX_BACKLOG: usize = 5;
/// Decoded frames waiting for the application, per output.
const AUDIO_BACKLOG: usize = 256;
/// Decoded video frames waiting for the application (all participants together).
const VIDEO_BACKLOG: usize = 64;
/// The least time between two keyframe requests of this device for one remote source.
const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(300);

/// The simulcast layers every participant declares at join and sends, lowest first:
/// (width, height, bitrate in bit/s). [`GroupCall::send_video`] scales each picture to each
/// layer's size; [`GroupCall::request_view`] heights are compared with these.
pub const GROUP_VIDEO_LAYERS: [(u16, u16, u32); 3] =
    [(160, 90, 100_000), (320, 180, 300_000), (640, 360, 800_000)];

/// Where an SFU is and the key it signs join answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SfuInfo {
    /// Its signaling address (TCP).
    pub address: SocketAddr,
    /// Its long-term public key.
    pub key: SfuPublicKey,
}

/// An invitation to a group call, received sealed from a member with whom this device has a
/// Signal session, and checked: the roster's creator signature verifies, it is for this call
/// and it lists this device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupInvite {
    /// Who sent the invitation.
    pub from: DeviceId,
    /// The SFU.
    pub sfu: SfuInfo,
    /// The roster in force when the invitation was sent.
    pub roster: Roster,
}

impl GroupInvite {
    /// Checks a received invitation for device `me` (see the type docs).
    pub(crate) fn check(
        from: DeviceId,
        me: &DeviceId,
        m: &hush_signaling::GroupInvite,
    ) -> Result<Self, Error> {
        let key = SfuPublicKey::from_bytes(&m.sfu_key)
            .map_err(|e| Error::GroupInvite(hush_sfu::JoinError::Malformed(e)))?;
        let address: SocketAddr = m
            .sfu_address
            .parse()
            .map_err(|_| Error::GroupInviteAddress)?;
        let roster = Roster::decode(&m.roster)
            .map_err(|e| Error::GroupInvite(hush_sfu::JoinError::Roster(e)))?;
        let me = SfuDeviceId::from_bytes(me.as_bytes())
            .map_err(|e| Error::GroupInvite(hush_sfu::JoinError::Malformed(e)))?;
        if roster.call_id().as_bytes() != &m.call_id || !roster.admits(&me) {
            return Err(Error::GroupInvite(hush_sfu::JoinError::NotOnRoster(me)));
        }
        Ok(Self {
            from,
            sfu: SfuInfo { address, key },
            roster,
        })
    }

    /// The group call's id.
    pub fn call_id(&self) -> [u8; 16] {
        *self.roster.call_id().as_bytes()
    }
}

/// Something that happened in a group call.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupCallEvent {
    /// Media flows to and from the SFU.
    Connected,
    /// Media flows again after an ICE restart of this device (a network change).
    Reconnected,
    /// A participant is in the call (announced by the SFU, with the SSRC of its audio).
    ParticipantJoined(DeviceId),
    /// A participant left (or was kicked).
    ParticipantLeft {
        /// Who.
        device: DeviceId,
        /// Whether the creator removed it.
        kicked: bool,
    },
    /// The SFU's dominant speaker changed.
    ActiveSpeaker(DeviceId),
    /// A participant's sender key arrived over its Signal session and was installed: frames it
    /// sends under this key (and later ratchet steps of it) decrypt from now on. A new
    /// `generation` follows a leave or kick (docs/crypto.md §9.4); a new `step` of the same
    /// generation, a join.
    SenderKeyInstalled {
        /// Whose key.
        device: DeviceId,
        /// The key's generation.
        generation: u16,
        /// The ratchet step within the generation.
        step: u8,
    },
    /// A participant muted or unmuted (as it announced through the SFU).
    RemoteMuted {
        /// Who.
        device: DeviceId,
        /// Muted.
        muted: bool,
    },
    /// A participant turned its video off or back on (as it announced through the SFU, from
    /// [`GroupCall::set_video_enabled`]). Everyone starts with video on: a joiner is told of
    /// each participant whose video is off when it joins.
    RemoteVideo {
        /// Who.
        device: DeviceId,
        /// Video on.
        enabled: bool,
    },
    /// A roster update of ours is in force (version).
    RosterUpdated(u64),
    /// A roster update of ours was refused by the SFU.
    RosterRefused(String),
    /// An invitation could not be sent to this member (no Signal session, transport down).
    InviteFailed(DeviceId),
    /// This device was removed from the call by its creator. The call ended for it.
    Kicked,
    /// The call ended for this device (it left, the SFU closed the channel, or the network
    /// failed).
    Ended,
}

/// A decoded 20 ms frame of one participant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParticipantAudio {
    /// Whose audio.
    pub device: DeviceId,
    /// The frame.
    pub frame: AudioFrame,
}

/// A decoded video picture of one participant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParticipantVideoFrame {
    /// Whose video.
    pub device: DeviceId,
    /// The simulcast layer it came on (0 the smallest; see [`GROUP_VIDEO_LAYERS`]), as the
    /// sender said inside the end-to-end encrypted frame.
    pub layer: u8,
    /// The picture; its size is the layer's ([`I420Frame::width`], [`I420Frame::height`]).
    pub frame: I420Frame,
}

/// Counters of a group call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupCallStats {
    /// Frames encoded and sent.
    pub frames_sent: u64,
    /// Frames decoded per participant.
    pub frames_received: HashMap<DeviceId, u64>,
    /// Frames concealed per participant (nothing arrived in time).
    pub frames_concealed: HashMap<DeviceId, u64>,
    /// Mixed frames produced.
    pub mixed_frames: u64,
    /// Active speaker changes announced.
    pub speaker_changes: u64,
    /// Datagrams refused by hop SRTP.
    pub srtp_failures: u64,
    /// Frames that arrived after their playout time (all participants present).
    pub late: u64,
    /// Authenticated RTP packets received from the SFU.
    pub packets_received: u64,
    /// The end-to-end (SFrame) layer: frames decrypted, held for a key, dropped, refused.
    pub e2ee: E2eeStats,
    /// Pictures given to [`GroupCall::send_video`] and encoded (each on every layer).
    pub video_pictures_sent: u64,
    /// Pictures dropped because the encoder thread was still busy (the CPU is short).
    pub video_pictures_dropped: u64,
    /// Encoded video frames sent, all layers together.
    pub video_frames_sent: u64,
    /// Video pictures decoded per participant.
    pub video_frames_decoded: HashMap<DeviceId, u64>,
    /// Received video frames lost to a missing packet before they could be opened.
    pub video_frames_incomplete: u64,
    /// Received video frames not decoded because the decoder thread was behind (dropped up to
    /// the sender's next keyframe).
    pub video_frames_skipped: u64,
    /// Received video frames the decoder refused (waiting for a keyframe, or corrupt).
    pub video_decode_errors: u64,
    /// Keyframe requests from the SFU answered (a layer switch of some receiver, or a loss).
    pub keyframe_requests: u64,
    /// Transport-wide feedback messages sent to the SFU, from which it estimates this
    /// device's downlink and picks the layers it forwards here.
    pub transport_feedback_sent: u64,
    /// Video sequence numbers asked again from the SFU (NACK, each retry counted).
    pub video_nacked: u64,
    /// Video packets that arrived after being missed (mostly the SFU's resends).
    pub video_packets_recovered: u64,
    /// Keyframes this device asked for because a frame could not be recovered or a stream
    /// began without one (besides those asked by the decoder).
    pub video_keyframes_requested: u64,
    /// Transport-wide feedback messages the SFU sent about this device's packets, from which
    /// it estimates its uplink.
    pub transport_feedback_received: u64,
    /// The uplink estimate (bit/s), once the SFU's feedback has arrived.
    pub uplink_estimate_bps: Option<u64>,
    /// Which of this device's simulcast layers it sends now, lowest first (see
    /// [`GROUP_VIDEO_LAYERS`]): a layer the uplink cannot carry is stopped, top first, and
    /// comes back once the estimate has held (docs/sfu.md "Uplink congestion control").
    pub video_layers_sending: Vec<bool>,
    /// Times a layer was stopped or started again for the uplink.
    pub uplink_layer_changes: u64,
}

/// A member's sender key as it arrived: the device whose Signal session delivered it.
pub(crate) type KeyFrom = (DeviceId, hush_signaling::GroupKey);

/// Slots of the members of `roster`, as the creator gave them (stable for the call's life: a
/// later roster keeps every member's slot and never hands out one twice).
fn assign_slots(crypto: &mut SframeCrypto, roster: &Roster) {
    for (d, slot) in roster.slots() {
        if !crypto.assign_slot(d, MemberSlot(slot)) {
            debug!(device = %d, "roster slot differs from the slot held; kept as it was");
        }
    }
}

#[derive(Debug)]
pub(crate) enum GroupCommand {
    Audio(Vec<i16>),
    View(DeviceId, u16, oneshot::Sender<Result<(), Error>>),
    Mute(bool),
    Video(bool),
    Kick(DeviceId, oneshot::Sender<Result<(), Error>>),
    Add(DeviceId, oneshot::Sender<Result<(), Error>>),
    Stats(oneshot::Sender<GroupCallStats>),
    NetworkChanged(oneshot::Sender<Result<(), Error>>),
    Leave,
}

/// A group call on this device. Dropping it leaves the call.
#[derive(Debug)]
pub struct GroupCall {
    call_id: [u8; 16],
    commands: mpsc::UnboundedSender<GroupCommand>,
    events: Mutex<mpsc::UnboundedReceiver<GroupCallEvent>>,
    audio: Mutex<mpsc::Receiver<ParticipantAudio>>,
    mixed: Mutex<mpsc::Receiver<AudioFrame>>,
    video: Mutex<mpsc::Receiver<ParticipantVideoFrame>>,
    video_in: video::VideoInput,
}

impl GroupCall {
    /// The call's id.
    pub fn id(&self) -> [u8; 16] {
        self.call_id
    }

    /// The next event; `None` once the call's task is gone.
    pub async fn next_event(&self) -> Option<GroupCallEvent> {
        self.events.lock().await.recv().await
    }

    /// Sends one 20 ms frame of 48 kHz mono PCM (960 samples) to everyone.
    pub fn send_audio(&self, pcm: &[i16]) -> Result<(), Error> {
        self.commands
            .send(GroupCommand::Audio(pcm.to_vec()))
            .map_err(|_| Error::CallEnded)
    }

    /// The next decoded frame of any participant, tagged with who spoke. Frames the
    /// application does not read are dropped past a backlog.
    pub async fn recv_audio(&self) -> Option<ParticipantAudio> {
        self.audio.lock().await.recv().await
    }

    /// The next frame of the mix of every participant (one every 20 ms while anyone's audio
    /// plays).
    pub async fn recv_mixed(&self) -> Option<AudioFrame> {
        self.mixed.lock().await.recv().await
    }

    /// Sends one camera picture to everyone: it is scaled to each layer of
    /// [`GROUP_VIDEO_LAYERS`], encoded (H.264) on each, sealed end to end and sent; the SFU
    /// forwards one layer to each receiver. A layer is encoded as a keyframe when the SFU asks
    /// for one. Nothing is sent while video is disabled ([`set_video_enabled`](Self::set_video_enabled)).
    ///
    /// ```no_run
    /// # async fn demo(call: &hush::GroupCall) -> Result<(), hush::Error> {
    /// use hush::I420Frame;
    /// let picture = I420Frame::filled(640, 360, [90, 128, 128], std::time::Instant::now())
    ///     .expect("valid size");
    /// call.send_video(&picture)?;
    /// // Show someone's tile small: at most 90 pixels high (the SFU moves to its lowest layer).
    /// # let someone = hush_signaling::DeviceId::from_bytes([7; 32]);
    /// call.request_view(someone, 90).await?;
    /// while let Some(v) = call.recv_video().await {
    ///     println!("{}: {}x{} (layer {})", v.device, v.frame.width(), v.frame.height(), v.layer);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// Encoding runs on a thread of its own; a picture that comes while that thread is still
    /// busy with earlier ones is dropped (counted in [`GroupCallStats::video_pictures_dropped`]).
    pub fn send_video(&self, frame: &I420Frame) -> Result<(), Error> {
        if !self.video_in.shared.enabled.load(Ordering::Relaxed) {
            return Ok(());
        }
        match self.video_in.pictures.try_send(frame.clone()) {
            Ok(()) => Ok(()),
            Err(std::sync::mpsc::TrySendError::Full(_)) => {
                self.video_in.shared.dropped.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => Err(Error::CallEnded),
        }
    }

    /// Starts (or stops) sending video, and announces it to the others
    /// ([`GroupCallEvent::RemoteVideo`]). Enabled by default; while disabled,
    /// [`send_video`](Self::send_video) drops the pictures. When video comes back on, the
    /// SFU asks for a keyframe for each receiver before it forwards any (the layers went
    /// idle).
    pub fn set_video_enabled(&self, enabled: bool) -> Result<(), Error> {
        self.commands
            .send(GroupCommand::Video(enabled))
            .map_err(|_| Error::CallEnded)?;
        self.video_in
            .shared
            .enabled
            .store(enabled, Ordering::Relaxed);
        Ok(())
    }

    /// Asks the SFU for at most `max_height` pixels of `device`'s video (the tile's size on
    /// screen); `0` stops its video for this device. The SFU moves to the tallest layer of
    /// [`GROUP_VIDEO_LAYERS`] that fits, at that layer's next keyframe. Fails with
    /// [`Error::UnknownParticipant`] if `device` sends no video in this call.
    pub async fn request_view(&self, device: DeviceId, max_height: u16) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(GroupCommand::View(device, max_height, tx))
            .map_err(|_| Error::CallEnded)?;
        rx.await.map_err(|_| Error::CallEnded)?
    }

    /// The next decoded video picture of any participant, with its layer. Pictures the
    /// application does not read are dropped past a backlog.
    pub async fn recv_video(&self) -> Option<ParticipantVideoFrame> {
        self.video.lock().await.recv().await
    }

    /// A decoded video picture if one is waiting (see [`recv_video`](Self::recv_video)).
    pub fn try_recv_video(&self) -> Option<ParticipantVideoFrame> {
        self.video.try_lock().ok()?.try_recv().ok()
    }

    /// Stops (or resumes) sending audio, and announces it to the others
    /// ([`GroupCallEvent::RemoteMuted`]).
    pub fn set_muted(&self, muted: bool) -> Result<(), Error> {
        self.commands
            .send(GroupCommand::Mute(muted))
            .map_err(|_| Error::CallEnded)
    }

    /// Removes `device` from the roster (creator only): the SFU drops its leg and refuses its
    /// joins from now on. The outcome also comes as [`GroupCallEvent::RosterUpdated`] or
    /// [`GroupCallEvent::RosterRefused`].
    pub async fn kick(&self, device: DeviceId) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(GroupCommand::Kick(device, tx))
            .map_err(|_| Error::CallEnded)?;
        rx.await.map_err(|_| Error::CallEnded)?
    }

    /// Tells the call that this device's network changed: ICE binds new sockets and restarts
    /// towards the SFU with the same SFU credentials; the SFU moves this participant's path to
    /// the first verified check from the new sockets. The other participants are not involved.
    pub async fn network_changed(&self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(GroupCommand::NetworkChanged(tx))
            .map_err(|_| Error::CallEnded)?;
        rx.await.map_err(|_| Error::CallEnded)?
    }

    /// Adds `device` to the roster (creator only) and invites it over its Signal session
    /// (a sealed [`hush_signaling::GroupInvite`] with the new roster). The outcome also comes
    /// as [`GroupCallEvent::RosterUpdated`] (or `RosterRefused`), and
    /// [`GroupCallEvent::InviteFailed`] if the invitation could not be sent.
    pub async fn add(&self, device: DeviceId) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(GroupCommand::Add(device, tx))
            .map_err(|_| Error::CallEnded)?;
        rx.await.map_err(|_| Error::CallEnded)?
    }

    /// Current counters.
    pub async fn stats(&self) -> Result<GroupCallStats, Error> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(GroupCommand::Stats(tx))
            .map_err(|_| Error::CallEnded)?;
        rx.await.map_err(|_| Error::CallEnded)
    }

    /// Leaves the call.
    pub fn leave(&self) {
        let _ = self.commands.send(GroupCommand::Leave);
    }
}

impl Drop for GroupCall {
    fn drop(&mut self) {
        self.leave();
    }
}

/// What the actor hands a new group task.
pub(crate) struct GroupStart {
    pub(crate) sfu: SfuInfo,
    /// The device key (ed25519), to sign the join and (as creator) roster updates.
    pub(crate) device_key: SigningKey,
    /// The roster in force (signed by the creator).
    pub(crate) roster: Roster,
    /// Whether this device creates the call (its join carries the roster).
    pub(crate) create: bool,
    pub(crate) config: ClientConfig,
    pub(crate) actor: mpsc::UnboundedSender<Command>,
}

/// The SFU as the ICE agent's remote side: its credentials (derived at join), its one host
/// candidate, and the end of its candidates (ICE-lite gathers nothing else).
async fn give_sfu_to_ice(
    net: &hush_net::driver::Handle,
    credentials: &IceCredentials,
    candidate: &str,
) -> Result<(), hush_net::Error> {
    net.set_remote_credentials(credentials.clone()).await?;
    net.add_remote_candidate(candidate).await?;
    net.remote_gathering_complete()
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn to_signaling(d: &SfuDeviceId) -> DeviceId {
    DeviceId::from_bytes(*d.as_bytes())
}

/// Joins the SFU, connects ICE, and spawns the call's task. Returns once media can flow or
/// the join failed.
pub(crate) async fn start(s: GroupStart) -> Result<GroupCall, Error> {
    let call_id = *s.roster.call_id().as_bytes();
    let me = SfuDeviceId::from_signing_key(&s.device_key);
    // Members' keys may come as soon as the SFU announces this device: listen before joining.
    let (key_tx, key_rx) = mpsc::unbounded_channel();
    let _ = s.actor.send(Command::RegisterGroupKeys {
        call_id,
        keys: key_tx,
    });
    let ssrc = rand::rng().random_range(2..u32::MAX);
    // One SSRC per video layer, distinct from the audio one and from each other.
    let mut layer_ssrcs: Vec<u32> = Vec::with_capacity(GROUP_VIDEO_LAYERS.len());
    while layer_ssrcs.len() < GROUP_VIDEO_LAYERS.len() {
        let v = rand::rng().random_range(2..u32::MAX);
        if v != ssrc && !layer_ssrcs.contains(&v) {
            layer_ssrcs.push(v);
        }
    }
    let mut streams = vec![StreamDecl::audio(ssrc)];
    streams.extend(StreamDecl::simulcast(
        0,
        GROUP_VIDEO_LAYERS
            .iter()
            .zip(&layer_ssrcs)
            .map(|(&(width, height, _), &v)| (v, width, height)),
    ));
    let params = JoinParams {
        call_id: SfuCallId::from_bytes(call_id),
        suite: hush_srtp::Suite::AeadAes128Gcm,
        audio_level_ext: Some(AUDIO_LEVEL_EXT),
        streams,
    };
    let link = hush_sfu::client::join(
        s.sfu.address,
        &s.sfu.key,
        &s.device_key,
        &params,
        s.create.then_some(&s.roster),
        unix_ms(),
        JOIN_TIMEOUT,
    )
    .await
    .map_err(Error::GroupJoin)?;
    // The SFU admitted this device, so it is on the roster, with the slot the creator gave it.
    let my_slot = s.roster.slot(&me).ok_or(Error::NoGroupSlot)?;
    let e2ee = GroupE2ee::new(GroupCallId(call_id), MemberSlot(my_slot), &mut rand::rng())?;
    let mut crypto = SframeCrypto::new(e2ee);
    assign_slots(&mut crypto, &s.roster);
    let net = tokio::time::timeout(
        NET_START_TIMEOUT,
        hush_net::driver::start(
            s.config.net.clone(),
            Role::Controlling,
            s.config.bind.clone(),
        ),
    )
    .await
    .map_err(|_| Error::NetStartTimeout)??;
    let sfu_ice = IceCredentials::new(link.keys.ice_ufrag(), link.keys.ice_pwd());
    let sfu_candidate = format!(
        "1 1 udp 2130706431 {} {} typ host",
        link.media.ip(),
        link.media.port()
    );
    give_sfu_to_ice(&net.handle, &sfu_ice, &sfu_candidate).await?;
    let jitter = JitterConfig {
        initial_delay: s
            .config
            .media
            .jitter
            .initial_delay
            .max(GROUP_INITIAL_PLAYOUT_DELAY),
        min_delay: s.config.media.jitter.min_delay.max(GROUP_MIN_PLAYOUT_DELAY),
        ..JitterConfig::default()
    };
    let first_seq = rand::rng().random::<u16>() & 0x7fff;
    let mut path = GroupMediaPath::new(&link.keys, ssrc, crypto, jitter, first_seq)?;
    let mut video_layers = Vec::with_capacity(GROUP_VIDEO_LAYERS.len());
    for (i, (&(width, height, bitrate_bps), &v)) in
        GROUP_VIDEO_LAYERS.iter().zip(&layer_ssrcs).enumerate()
    {
        path.add_video_layer(v, i as u8, bitrate_bps)?;
        video_layers.push(video::LayerSpec {
            ssrc: v,
            width: u32::from(width),
            height: u32::from(height),
            bitrate_bps,
        });
    }
    let (encoded_tx, encoded_rx) = mpsc::unbounded_channel();
    let video_in = video::start(video_layers, encoded_tx).map_err(Error::VideoThread)?;
    let encoder = OpusCodec::new(1, 20, 32_000)?;
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let (audio_tx, audio_rx) = mpsc::channel(AUDIO_BACKLOG);
    let (mixed_tx, mixed_rx) = mpsc::channel(AUDIO_BACKLOG);
    let (video_tx, video_rx) = mpsc::channel(VIDEO_BACKLOG);
    let (need_key_tx, need_key_rx) = mpsc::unbounded_channel();
    let decode_shared = Arc::new(video::DecodeShared::default());
    let decode_tx = video::start_decoder(video_tx, need_key_tx, decode_shared.clone())
        .map_err(Error::VideoThread)?;
    if s.create {
        let invite = invitation(&s.sfu, &s.roster);
        let members = s
            .roster
            .members()
            .iter()
            .filter(|d| **d != me)
            .map(to_signaling)
            .collect();
        let _ = s.actor.send(Command::SendGroupInvites {
            invite,
            members,
            failed: ev_tx.clone(),
        });
    }
    let task = GroupTask {
        me,
        sfu: s.sfu,
        actor: s.actor,
        device_key: s.device_key,
        roster: s.roster,
        path,
        encoder,
        decoders: HashMap::new(),
        mix: HashMap::new(),
        net: net.handle,
        sfu_ice,
        sfu_candidate,
        events: ev_tx,
        audio_out: audio_tx,
        mixed_out: mixed_tx,
        muted: false,
        video_on: true,
        connected: false,
        restarting: false,
        known: HashSet::new(),
        stats: GroupCallStats::default(),
        send_loss: s.config.simulated_send_loss,
        encrypted_at_key: 0,
        answered: HashSet::new(),
        video_layer_ssrcs: layer_ssrcs,
        video_shared: video_in.shared.clone(),
        video_sources: HashMap::new(),
        video_decode: decode_tx,
        video_waiting_key: HashSet::new(),
        video_decoder_layer: HashMap::new(),
        video_pli_at: HashMap::new(),
        decode_shared,
        downlink: Downlink::new(&s.config.simulated_group_downlink),
        uplink: Downlink::new(&s.config.simulated_group_uplink),
    };
    tokio::spawn(task.run(
        link,
        net.events,
        net.datagrams,
        cmd_rx,
        key_rx,
        VideoReceivers {
            encoded: encoded_rx,
            need_key: need_key_rx,
        },
    ));
    info!(call = %hex::encode(&call_id[..8]), "joined group call");
    Ok(GroupCall {
        call_id,
        commands: cmd_tx,
        events: Mutex::new(ev_rx),
        audio: Mutex::new(audio_rx),
        mixed: Mutex::new(mixed_rx),
        video: Mutex::new(video_rx),
        video_in,
    })
}

/// The invitation to send for `roster` on `sfu`.
fn invitation(sfu: &SfuInfo, roster: &Roster) -> hush_signaling::GroupInvite {
    hush_signaling::GroupInvite {
        call_id: *roster.call_id().as_bytes(),
        sfu_key: sfu.key.to_bytes(),
        sfu_address: sfu.address.to_string(),
        roster: roster.encode(),
    }
}

struct GroupTask {
    me: SfuDeviceId,
    sfu: SfuInfo,
    /// The client's actor, which sends invitations over the Signal sessions.
    actor: mpsc::UnboundedSender<Command>,
    device_key: SigningKey,
    roster: Roster,
    path: GroupMediaPath<SframeCrypto>,
    encoder: OpusCodec,
    decoders: HashMap<SfuDeviceId, OpusCodec>,
    mix: HashMap<SfuDeviceId, VecDeque<Vec<i16>>>,
    net: hush_net::driver::Handle,
    /// The SFU's ICE credentials and candidate, given again after each ICE restart of ours.
    sfu_ice: IceCredentials,
    sfu_candidate: String,
    events: mpsc::UnboundedSender<GroupCallEvent>,
    audio_out: mpsc::Sender<ParticipantAudio>,
    mixed_out: mpsc::Sender<AudioFrame>,
    muted: bool,
    /// Video on, as last announced.
    video_on: bool,
    connected: bool,
    /// An ICE restart is under way: the next selected path is a reconnection.
    restarting: bool,
    known: HashSet<SfuDeviceId>,
    stats: GroupCallStats,
    send_loss: f64,
    /// Frames sealed when the sending key last changed: if none were sealed since, a joiner
    /// can be given the key as it is (it can read nothing from before it joined).
    encrypted_at_key: u64,
    /// Participants whose key came and who were sent this device's key in return (a first
    /// send can fail while the Signal session exists in one direction only).
    answered: HashSet<SfuDeviceId>,
    /// The SSRCs of this device's simulcast layers, lowest first.
    video_layer_ssrcs: Vec<u32>,
    /// Shared with the handle and the encoder thread.
    video_shared: Arc<video::VideoShared>,
    /// Each participant's video source SSRC, as the SFU announced it.
    video_sources: HashMap<SfuDeviceId, u32>,
    /// Opened frames to the decoder thread.
    video_decode: std::sync::mpsc::SyncSender<video::DecodeJob>,
    /// Participants whose frames are dropped until their next keyframe (the decoder thread
    /// was behind and missed one of theirs).
    video_waiting_key: HashSet<SfuDeviceId>,
    /// The layer of the last keyframe given to each participant's decoder.
    video_decoder_layer: HashMap<SfuDeviceId, u8>,
    /// When this device last asked each source (by SSRC) for a keyframe.
    video_pli_at: HashMap<u32, Instant>,
    decode_shared: Arc<video::DecodeShared>,
    /// The simulated downlink (tests only, `ClientConfig::simulated_group_downlink`).
    downlink: Option<Downlink>,
    /// The simulated uplink (tests only, `ClientConfig::simulated_group_uplink`).
    uplink: Option<Downlink>,
}

/// A simulated bottleneck between the socket and the media path, either way (tests only).
struct Downlink {
    sim: NetSim<Vec<u8>>,
    started: Instant,
    steps: Vec<(Duration, Option<u64>)>,
    next_step: usize,
    queue: Duration,
}

impl Downlink {
    fn new(link: &super::SimulatedLink) -> Option<Self> {
        Some(Self {
            sim: NetSim::new(link.sim_config(0.0)?),
            started: Instant::now(),
            steps: link.bandwidth_steps.clone(),
            next_step: 0,
            queue: link.queue_delay(),
        })
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let step = self
            .steps
            .get(self.next_step)
            .map(|(at, _)| self.started + *at);
        self.sim.poll_timeout().into_iter().chain(step).min()
    }

    /// Applies the rate steps due and moves the datagrams due out of the bottleneck.
    fn handle_timeout(&mut self, now: Instant) {
        while let Some((at, bps)) = self.steps.get(self.next_step) {
            if now < self.started + *at {
                break;
            }
            debug!(bps = ?bps, "simulated link rate step");
            self.sim.set_rate(*bps);
            if let Some(bps) = bps {
                let bytes = (*bps as f64 / 8.0 * self.queue.as_secs_f64()) as usize;
                self.sim.set_queue_bytes(bytes.max(1500));
            }
            self.next_step += 1;
        }
        self.sim.handle_timeout(now);
    }
}

/// What the video threads send the call's task.
struct VideoReceivers {
    /// Encoded frames to seal and send.
    encoded: mpsc::UnboundedReceiver<video::Encoded>,
    /// Source SSRCs whose decoder needs a keyframe.
    need_key: mpsc::UnboundedReceiver<u32>,
}

enum Ending {
    Left,
    Kicked,
    Ended,
}

impl GroupTask {
    async fn run(
        mut self,
        link: Link,
        mut net_events: mpsc::UnboundedReceiver<NetEvent>,
        mut datagrams: mpsc::Receiver<Vec<u8>>,
        mut commands: mpsc::UnboundedReceiver<GroupCommand>,
        mut keys_in: mpsc::UnboundedReceiver<KeyFrom>,
        video_rx: VideoReceivers,
    ) {
        let VideoReceivers {
            mut encoded,
            mut need_key,
        } = video_rx;
        let Link {
            keys,
            notices: mut reader,
            control: mut writer,
            ..
        } = link;
        // The hop keys live on only inside the path's SRTP contexts.
        drop(keys);
        // One task reads the channel (reads are not cancel-safe).
        let (notice_tx, mut notice_rx) = mpsc::unbounded_channel();
        let reader_task = tokio::spawn(async move {
            loop {
                match reader.next().await {
                    Ok(Some(m)) => {
                        if notice_tx.send(m).is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        warn!(error = %e, "sfu channel failed");
                        break;
                    }
                }
            }
        });
        let mut mix_tick = tokio::time::interval(Duration::from_millis(20));
        mix_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let connect_deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        let ending = loop {
            let deadline = self
                .path
                .poll_timeout()
                .into_iter()
                .chain(self.downlink.as_ref().and_then(Downlink::poll_timeout))
                .chain(self.uplink.as_ref().and_then(Downlink::poll_timeout))
                .min();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                n = notice_rx.recv() => match n {
                    Some(Incoming::Notice(n)) => {
                        if let Some(end) = self.on_notice(n) {
                            break end;
                        }
                    }
                    Some(Incoming::RosterRefused(reason)) => {
                        let _ = self.events.send(GroupCallEvent::RosterRefused(reason));
                    }
                    None => break Ending::Ended,
                },
                Some((from, key)) = keys_in.recv() => self.on_group_key(from, &key),
                Some(ssrc) = need_key.recv() => self.ask_keyframe(ssrc),
                Some(e) = encoded.recv() => {
                    if let Err(err) = self.path.send_video(
                        Instant::now(),
                        e.ssrc,
                        e.timestamp,
                        e.keyframe,
                        &e.data,
                    ) {
                        debug!(error = %err, "video frame not sent");
                    }
                }
                d = datagrams.recv() => match d {
                    Some(d) => self.on_datagram(d),
                    None => break Ending::Ended,
                },
                ev = net_events.recv() => match ev {
                    Some(NetEvent::PathSelected(_)) => {
                        if !std::mem::replace(&mut self.connected, true) {
                            let _ = self.events.send(GroupCallEvent::Connected);
                        } else if std::mem::take(&mut self.restarting) {
                            let _ = self.events.send(GroupCallEvent::Reconnected);
                        }
                    }
                    Some(NetEvent::Restarted { .. }) => {
                        self.restarting = true;
                        // Our side restarted (network change, consent loss): the SFU's
                        // credentials and candidate stay the same; give them again, and the
                        // SFU follows the first verified check from the new path.
                        if let Err(e) =
                            give_sfu_to_ice(&self.net, &self.sfu_ice, &self.sfu_candidate).await
                        {
                            warn!(error = %e, "ICE restart towards the SFU failed");
                        }
                    }
                    Some(NetEvent::Failed(e)) => {
                        warn!(error = %e, "ICE to the SFU failed");
                        break Ending::Ended;
                    }
                    Some(other) => debug!(event = ?other, "ICE event"),
                    None => break Ending::Ended,
                },
                c = commands.recv() => match c {
                    None | Some(GroupCommand::Leave) => break Ending::Left,
                    Some(GroupCommand::Audio(pcm)) => self.send_audio(&pcm),
                    Some(GroupCommand::View(device, max_height, reply)) => {
                        let r = match SfuDeviceId::from_bytes(device.as_bytes())
                            .ok()
                            .and_then(|d| self.video_sources.get(&d))
                        {
                            Some(&source) => writer
                                .request_view(source, max_height)
                                .await
                                .map_err(|e| Error::GroupJoin(e.into())),
                            None => Err(Error::UnknownParticipant),
                        };
                        let _ = reply.send(r);
                    }
                    Some(GroupCommand::Mute(m)) => {
                        if std::mem::replace(&mut self.muted, m) != m {
                            if let Err(e) = writer.set_muted(m).await {
                                warn!(error = %e, "mute not announced");
                            }
                        }
                    }
                    Some(GroupCommand::Video(on)) => {
                        if std::mem::replace(&mut self.video_on, on) != on {
                            if let Err(e) = writer.set_video(on).await {
                                warn!(error = %e, "video state not announced");
                            }
                        }
                    }
                    Some(GroupCommand::Kick(device, reply)) => {
                        let r = self.change_roster(&mut writer, device, false).await;
                        let _ = reply.send(r);
                    }
                    Some(GroupCommand::Add(device, reply)) => {
                        let r = self.change_roster(&mut writer, device, true).await;
                        if r.is_ok() {
                            let _ = self.actor.send(Command::SendGroupInvites {
                                invite: invitation(&self.sfu, &self.roster),
                                members: vec![device],
                                failed: self.events.clone(),
                            });
                        }
                        let _ = reply.send(r);
                    }
                    Some(GroupCommand::NetworkChanged(reply)) => {
                        let r = self.net.network_changed().await;
                        let _ = reply.send(r.map(|_| ()).map_err(Error::from));
                    }
                    Some(GroupCommand::Stats(reply)) => {
                        let mut s = self.stats.clone();
                        let p = self.path.stats();
                        s.frames_sent = p.frames_sent;
                        s.srtp_failures = p.srtp_failures;
                        s.late = p.late;
                        s.packets_received = p.packets_received;
                        s.e2ee = p.e2ee;
                        s.video_frames_sent = p.video_frames_sent;
                        s.video_frames_incomplete = p.video_frames_incomplete;
                        s.transport_feedback_sent = p.transport_feedback_sent;
                        s.video_nacked = p.video_nacked;
                        s.video_packets_recovered = p.video_packets_recovered;
                        s.video_keyframes_requested = p.video_keyframes_requested;
                        s.transport_feedback_received = p.uplink_feedback_received;
                        s.uplink_estimate_bps = p.uplink_estimate_bps;
                        s.video_layers_sending = (0..self.video_layer_ssrcs.len())
                            .map(|i| p.layers_sending & (1 << i) != 0)
                            .collect();
                        s.uplink_layer_changes = p.layer_changes;
                        s.video_pictures_sent =
                            self.video_shared.pictures.load(Ordering::Relaxed);
                        s.video_pictures_dropped =
                            self.video_shared.dropped.load(Ordering::Relaxed);
                        s.video_decode_errors =
                            self.decode_shared.errors.load(Ordering::Relaxed);
                        if let Ok(m) = self.decode_shared.decoded.lock() {
                            s.video_frames_decoded = m.clone();
                        }
                        let _ = reply.send(s);
                    }
                },
                () = sleep => {
                    // Datagrams that arrived while this task waited for the CPU go to the
                    // jitter buffers before their playout ticks run, or frames that are here
                    // would count as late.
                    while let Ok(d) = datagrams.try_recv() {
                        self.on_datagram(d);
                    }
                    self.step_downlink();
                    self.path.handle_timeout(Instant::now());
                    self.step_uplink();
                }
                _ = mix_tick.tick() => {
                    self.mix();
                    if !self.connected && tokio::time::Instant::now() >= connect_deadline {
                        warn!("no ICE path to the SFU in time");
                        break Ending::Ended;
                    }
                }
            }
            self.drain();
        };
        reader_task.abort();
        drop(writer);
        let _ = self.net.close().await;
        let _ = self.events.send(match ending {
            Ending::Kicked => GroupCallEvent::Kicked,
            Ending::Left | Ending::Ended => GroupCallEvent::Ended,
        });
        debug!(me = %self.me, "group call task ended");
    }

    /// A datagram from the SFU: to the media path, through the simulated downlink if any.
    fn on_datagram(&mut self, d: Vec<u8>) {
        let now = Instant::now();
        match self.downlink.as_mut() {
            Some(link) => {
                link.sim.handle_packet(now, d);
                self.step_downlink();
            }
            None => {
                if let Err(e) = self.path.handle_datagram(now, d) {
                    debug!(error = %e, "group datagram dropped");
                }
            }
        }
    }

    /// Sends what the simulated uplink lets through by now.
    fn step_uplink(&mut self) {
        let Some(link) = self.uplink.as_mut() else {
            return;
        };
        link.handle_timeout(Instant::now());
        while let Some(d) = link.sim.poll_transmit() {
            let _ = self.net.send(d);
        }
    }

    /// Hands the media path what the simulated downlink lets through by now.
    fn step_downlink(&mut self) {
        let Some(link) = self.downlink.as_mut() else {
            return;
        };
        let now = Instant::now();
        link.handle_timeout(now);
        while let Some(d) = link.sim.poll_transmit() {
            if let Err(e) = self.path.handle_datagram(now, d) {
                debug!(error = %e, "group datagram dropped");
            }
        }
    }

    fn on_notice(&mut self, n: Notice) -> Option<Ending> {
        match n {
            Notice::ParticipantJoined { device, streams } => {
                for s in &streams {
                    match s.kind {
                        StreamKind::Audio => self.path.add_stream(device, s.ssrc),
                        // A simulcast source is announced as one plain video stream under its
                        // source SSRC (the SFU forwards one layer under it).
                        StreamKind::Video
                        | StreamKind::SimulcastLayer(SimulcastLayer { layer: 0, .. }) => {
                            self.path.add_video_stream(device, s.ssrc);
                            self.video_sources.insert(device, s.ssrc);
                        }
                        StreamKind::SimulcastLayer(_) => {}
                    }
                }
                if self.known.insert(device) {
                    self.share_key_with_joiner(device);
                    let _ = self
                        .events
                        .send(GroupCallEvent::ParticipantJoined(to_signaling(&device)));
                }
            }
            Notice::ParticipantLeft { device, reason } => {
                self.path.remove_participant(&device);
                self.decoders.remove(&device);
                let _ = self
                    .video_decode
                    .try_send(video::DecodeJob::Forget(to_signaling(&device)));
                self.video_waiting_key.remove(&device);
                self.video_decoder_layer.remove(&device);
                self.video_sources.remove(&device);
                self.mix.remove(&device);
                self.answered.remove(&device);
                if self.known.remove(&device) {
                    self.rotate_after_leave(device);
                    let _ = self.events.send(GroupCallEvent::ParticipantLeft {
                        device: to_signaling(&device),
                        kicked: reason == LeaveReason::Kicked,
                    });
                }
            }
            Notice::ActiveSpeaker { device } => {
                self.stats.speaker_changes += 1;
                let _ = self
                    .events
                    .send(GroupCallEvent::ActiveSpeaker(to_signaling(&device)));
            }
            Notice::Kicked => return Some(Ending::Kicked),
            Notice::RosterAccepted { version } => {
                let _ = self.events.send(GroupCallEvent::RosterUpdated(version));
            }
            Notice::Muted { device, muted } => {
                let _ = self.events.send(GroupCallEvent::RemoteMuted {
                    device: to_signaling(&device),
                    muted,
                });
            }
            Notice::Video { device, enabled } => {
                let _ = self.events.send(GroupCallEvent::RemoteVideo {
                    device: to_signaling(&device),
                    enabled,
                });
            }
        }
        None
    }

    /// Signs and sends the next roster version with `device` added or removed (creator only).
    async fn change_roster(
        &mut self,
        writer: &mut hush_sfu::client::ControlWriter,
        device: DeviceId,
        add: bool,
    ) -> Result<(), Error> {
        if self.roster.creator() != self.me {
            return Err(Error::NotCallCreator);
        }
        let mut members: Vec<SfuDeviceId> = self
            .roster
            .members()
            .iter()
            .filter(|d| d.as_bytes() != device.as_bytes())
            .copied()
            .collect();
        if add {
            let d = SfuDeviceId::from_bytes(device.as_bytes())
                .map_err(|e| Error::GroupInvite(hush_sfu::JoinError::Malformed(e)))?;
            members.push(d);
        }
        // Members kept keep their slots; an added one gets a slot never used in this call.
        let next = self
            .roster
            .next(&self.device_key, &members)
            .map_err(|e| Error::GroupInvite(hush_sfu::JoinError::Roster(e)))?;
        writer
            .update_roster(&next)
            .await
            .map_err(|e| Error::GroupJoin(e.into()))?;
        assign_slots(self.path.crypto_mut(), &next);
        self.roster = next;
        Ok(())
    }

    /// Seals `message` for each of `members` over their Signal sessions (through the actor),
    /// with the roster held here so they learn the slots of members who joined later.
    fn send_key(&self, members: Vec<SfuDeviceId>, message: &KeyMessage) {
        if members.is_empty() {
            return;
        }
        let key = hush_signaling::GroupKey {
            call_id: *self.roster.call_id().as_bytes(),
            key_message: message.encode(),
            roster: self.roster.encode(),
        };
        let _ = self.actor.send(Command::SendGroupKey {
            members: members.iter().map(to_signaling).collect(),
            key,
        });
    }

    /// A participant joined: it gets this device's sending key. If frames were sent under the
    /// current key, it moves one ratchet step first, and only the new step goes to the joiner
    /// (the others follow on their own), so the joiner reads nothing sent before.
    fn share_key_with_joiner(&mut self, device: SfuDeviceId) {
        let e2ee = self.path.crypto_mut().e2ee_mut();
        if e2ee.stats().encrypted == self.encrypted_at_key {
            let message = e2ee.key_message();
            self.send_key(vec![device], &message);
            return;
        }
        match e2ee.ratchet_for_join(&mut rand::rng()) {
            Ok(JoinKeys::Ratcheted(message)) => {
                self.encrypted_at_key = self.path.crypto_mut().e2ee().stats().encrypted;
                self.send_key(vec![device], &message);
            }
            Ok(JoinKeys::NewGeneration(message)) => {
                self.encrypted_at_key = self.path.crypto_mut().e2ee().stats().encrypted;
                let everyone = self.known.iter().copied().collect();
                self.send_key(everyone, &message);
            }
            Err(e) => warn!(error = %e, "sender key not ratcheted for a joiner"),
        }
    }

    /// A participant left or was kicked: its keys are wiped, and this device starts a new
    /// generation that only the remaining participants receive.
    fn rotate_after_leave(&mut self, device: SfuDeviceId) {
        let crypto = self.path.crypto_mut();
        if let Some(slot) = crypto.slot_of(&device) {
            crypto.e2ee_mut().remove_member(slot);
        }
        match crypto.e2ee_mut().rotate(&mut rand::rng()) {
            Ok(message) => {
                self.encrypted_at_key = self.path.crypto_mut().e2ee().stats().encrypted;
                let remaining = self.known.iter().copied().collect();
                self.send_key(remaining, &message);
            }
            Err(e) => warn!(error = %e, "sender key not rotated after a leave"),
        }
    }

    /// A member's sender key arrived over the Signal session of `from`: installed only under
    /// the slot `from` holds in the roster (the key names its sender's slot).
    fn on_group_key(&mut self, from: DeviceId, key: &hush_signaling::GroupKey) {
        let Ok(from) = SfuDeviceId::from_bytes(from.as_bytes()) else {
            return;
        };
        if !key.roster.is_empty() {
            self.adopt_roster(&key.roster);
        }
        let Some(slot) = self.path.crypto_mut().slot_of(&from) else {
            debug!(from = %from, "group key from a device with no slot; ignored");
            return;
        };
        let message = match KeyMessage::decode(&key.key_message) {
            Ok(m) => m,
            Err(e) => {
                debug!(from = %from, error = %e, "malformed group key message");
                return;
            }
        };
        let now = Instant::now();
        let e2ee = self.path.crypto_mut().e2ee_mut();
        match e2ee.receive_key(slot, &message, now) {
            Ok(()) => {
                let _ = self.events.send(GroupCallEvent::SenderKeyInstalled {
                    device: to_signaling(&from),
                    generation: message.key_id.generation,
                    step: message.key_id.step,
                });
                // A participant (announced by the SFU, so already given the ratchet step of
                // its join) gets this device's key once in return.
                if self.known.contains(&from) && self.answered.insert(from) {
                    let mine = e2ee.key_message();
                    self.send_key(vec![from], &mine);
                }
            }
            Err(e) => debug!(from = %from, error = %e, "group key refused"),
        }
        self.path.release_frames(now);
    }

    /// A newer roster of this call's creator (verified): members added since get their slots.
    fn adopt_roster(&mut self, bytes: &[u8]) {
        let Ok(roster) = Roster::decode(bytes) else {
            return;
        };
        if roster.call_id() != self.roster.call_id()
            || roster.creator() != self.roster.creator()
            || roster.version() <= self.roster.version()
        {
            return;
        }
        assign_slots(self.path.crypto_mut(), &roster);
        self.roster = roster;
    }

    fn send_audio(&mut self, pcm: &[i16]) {
        if self.muted {
            return;
        }
        let mut encoded = Vec::with_capacity(400);
        if let Err(e) = self.encoder.encode(pcm, &mut encoded) {
            debug!(error = %e, "encode failed");
            return;
        }
        let level = audio_level(pcm);
        self.path
            .send_audio(Instant::now(), &encoded, level, level < 127);
    }

    /// The uplink's layer changes go to the encoder thread: a stopped layer is not encoded,
    /// a started one begins with a keyframe.
    fn apply_layer_changes(&mut self) {
        while let Some(c) = self.path.poll_layer_change() {
            let i = usize::from(c.layer);
            if let Some(flag) = self.video_shared.active.get(i) {
                flag.store(c.sending, Ordering::Relaxed);
            }
            // A started layer begins with a keyframe. For a stopped one, the layer below makes
            // one at once: the SFU moves the stopped layer's receivers down at a keyframe,
            // which is then on its way without waiting for the SFU to ask.
            let key = if c.sending { Some(i) } else { i.checked_sub(1) };
            if let Some(flag) = key.and_then(|k| self.video_shared.keyframe.get(k)) {
                flag.store(true, Ordering::Relaxed);
            }
        }
    }

    /// The SFU's keyframe requests (one layer each) go to that layer's encoder.
    fn answer_keyframe_requests(&mut self) {
        while let Some(ssrc) = self.path.poll_keyframe_request() {
            if let Some(i) = self.video_layer_ssrcs.iter().position(|&l| l == ssrc) {
                if let Some(flag) = self.video_shared.keyframe.get(i) {
                    flag.store(true, Ordering::Relaxed);
                }
                self.stats.keyframe_requests += 1;
            }
        }
    }

    /// Asks the source arriving under `ssrc` for a keyframe, at most every
    /// [`KEYFRAME_REQUEST_INTERVAL`].
    fn ask_keyframe(&mut self, ssrc: u32) {
        let now = Instant::now();
        if self
            .video_pli_at
            .get(&ssrc)
            .is_none_or(|&t| now.duration_since(t) >= KEYFRAME_REQUEST_INTERVAL)
        {
            self.video_pli_at.insert(ssrc, now);
            self.path.request_keyframe(ssrc);
        }
    }

    /// Hands the opened video frames to the decoder thread. If it is behind, a participant's
    /// frames are dropped up to its next keyframe (asked for), so no decoder gets a frame whose
    /// reference it missed.
    fn drain_video(&mut self) {
        self.apply_layer_changes();
        self.answer_keyframe_requests();
        while let Some(v) = self.path.poll_video() {
            // A delta frame of another layer than the decoder's last keyframe (a layer switch
            // whose keyframe was lost) cannot be decoded: the decoder reads it against the
            // other layer's parameters (seen: a 180-line delta decoded as a 90-line picture
            // behind a capped downlink). Dropped up to a keyframe, which is asked for.
            if !v.keyframe
                && self.video_decoder_layer.get(&v.device) != Some(&v.layer)
                && !self.video_waiting_key.contains(&v.device)
            {
                self.video_waiting_key.insert(v.device);
                self.ask_keyframe(v.ssrc);
            }
            if self.video_waiting_key.contains(&v.device) {
                if !v.keyframe {
                    self.stats.video_frames_skipped += 1;
                    continue;
                }
                self.video_waiting_key.remove(&v.device);
            }
            if v.keyframe {
                self.video_decoder_layer.insert(v.device, v.layer);
            }
            let job = video::DecodeJob::Frame {
                device: to_signaling(&v.device),
                ssrc: v.ssrc,
                layer: v.layer,
                data: v.frame,
            };
            match self.video_decode.try_send(job) {
                Ok(()) => {}
                Err(std::sync::mpsc::TrySendError::Full(_)) => {
                    self.stats.video_frames_skipped += 1;
                    self.video_waiting_key.insert(v.device);
                    self.video_decoder_layer.remove(&v.device);
                    self.ask_keyframe(v.ssrc);
                }
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                    warn!("video decoder thread gone");
                }
            }
        }
    }

    /// Sends what the path produced; decodes what it released.
    fn drain(&mut self) {
        self.drain_video();
        while let Some(d) = self.path.poll_datagram() {
            if self.send_loss > 0.0 && rand::rng().random_bool(self.send_loss.min(1.0)) {
                continue;
            }
            match self.uplink.as_mut() {
                Some(link) => link.sim.handle_packet(Instant::now(), d),
                None => {
                    let _ = self.net.send(d);
                }
            }
        }
        self.step_uplink();
        while let Some(p) = self.path.poll_playout() {
            let decoder = match self.decoders.entry(p.device) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => match OpusCodec::new(1, 20, 32_000)
                {
                    Ok(c) => v.insert(c),
                    Err(e) => {
                        warn!(error = %e, "no decoder");
                        continue;
                    }
                },
            };
            let mut pcm = Vec::with_capacity(960);
            let (result, source) = match &p.playout {
                Playout::Frame { payload, .. } => {
                    (decoder.decode(payload, &mut pcm), FrameSource::Decoded)
                }
                Playout::Fec { next_payload, .. } => {
                    (decoder.decode_fec(next_payload, &mut pcm), FrameSource::Fec)
                }
                Playout::Conceal { .. } => (decoder.conceal(&mut pcm), FrameSource::Concealed),
                Playout::Stretch { .. } => continue,
            };
            let source = if result.is_err() {
                FrameSource::Concealed
            } else {
                source
            };
            let device = to_signaling(&p.device);
            let counter = match source {
                FrameSource::Concealed => &mut self.stats.frames_concealed,
                _ => &mut self.stats.frames_received,
            };
            *counter.entry(device).or_insert(0) += 1;
            let q = self.mix.entry(p.device).or_default();
            q.push_back(pcm.clone());
            while q.len() > MIX_BACKLOG {
                q.pop_front();
            }
            let _ = self.audio_out.try_send(ParticipantAudio {
                device,
                frame: AudioFrame { pcm, source },
            });
        }
    }

    /// Every 20 ms: one frame of each participant that has one, summed with saturation.
    fn mix(&mut self) {
        let mut out: Option<Vec<i32>> = None;
        for q in self.mix.values_mut() {
            let Some(frame) = q.pop_front() else {
                continue;
            };
            let acc = out.get_or_insert_with(|| vec![0; 960]);
            for (a, s) in acc.iter_mut().zip(frame) {
                *a += i32::from(s);
            }
        }
        if let Some(acc) = out {
            let pcm = acc
                .into_iter()
                .map(|s| s.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16)
                .collect();
            self.stats.mixed_frames += 1;
            let _ = self.mixed_out.try_send(AudioFrame {
                pcm,
                source: FrameSource::Decoded,
            });
        }
    }
}

/// The device key as an ed25519 signing key for SFU joins and rosters. The seed is the
/// caller's (`Zeroizing`, wiped on drop); the `SigningKey` wipes itself on drop.
pub(crate) fn device_signing_key(seed: &Zeroizing<[u8; 32]>) -> SigningKey {
    SigningKey::from_bytes(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> SigningKey {
        SigningKey::from_bytes(&[i; 32])
    }

    fn dev(i: u8) -> SfuDeviceId {
        SfuDeviceId::from_signing_key(&key(i))
    }

    fn invite(roster: &Roster) -> hush_signaling::GroupInvite {
        hush_signaling::GroupInvite {
            call_id: *roster.call_id().as_bytes(),
            sfu_key: hush_sfu::join::SfuSigningKey::from_seed(&[9; 32])
                .public_key()
                .to_bytes(),
            sfu_address: "127.0.0.1:4000".into(),
            roster: roster.encode(),
        }
    }

    #[test]
    fn invitations_are_checked_against_the_signed_roster() {
        let call = SfuCallId::from_bytes([3; 16]);
        let roster = Roster::sign(&key(1), call, 1, &[dev(1), dev(2)]).unwrap();
        let from = to_signaling(&dev(1));
        let me = to_signaling(&dev(2));
        let ok = GroupInvite::check(from, &me, &invite(&roster)).unwrap();
        assert_eq!(ok.call_id(), [3; 16]);
        assert_eq!(ok.sfu.address, "127.0.0.1:4000".parse().unwrap());

        // Not listed.
        let outsider = to_signaling(&dev(5));
        assert!(GroupInvite::check(from, &outsider, &invite(&roster)).is_err());
        // A roster for another call than the invitation says.
        let mut other_call = invite(&roster);
        other_call.call_id = [4; 16];
        assert!(GroupInvite::check(from, &me, &other_call).is_err());
        // A tampered roster (its signature no longer verifies).
        let mut tampered = invite(&roster);
        let last = tampered.roster.len() - 1;
        tampered.roster[last] ^= 1;
        assert!(GroupInvite::check(from, &me, &tampered).is_err());
        // A bad SFU address.
        let mut bad_addr = invite(&roster);
        bad_addr.sfu_address = "not an address".into();
        assert!(matches!(
            GroupInvite::check(from, &me, &bad_addr),
            Err(Error::GroupInviteAddress)
        ));
    }
}

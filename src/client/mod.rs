//! The application-facing API: [`Client`], [`Call`], [`IncomingCall`].
//!
//! A [`Client`] owns one device's signaling (a [`SignalingClient`] sealing with its Signal
//! sessions) and runs a tokio task, the *actor*, that joins the sans-IO
//! [`CallMachine`](crate::machine::CallMachine) to the signaling transport, the key exchange of
//! `hush-crypto`, and one media task per call (ICE from `hush-net`, SRTP and the media engine via
//! [`MediaPath`](crate::media_path::MediaPath), Opus).
//!
//! ```text
//!  app ──call/accept/hangup──▶ actor ──seal/send──▶ Transport ──▶ relay ──▶ peer
//!                               │  ▲ machine outputs / signaling events
//!                 keys, ICE cand│  │path up/down, local candidates
//!                               ▼  │
//!  app ◀──PCM frames/events── media task ◀──UDP (ICE path)──▶ peer
//! ```
//!
//! Keys are derived only when the callee accepts (callee) or the answer arrives (caller), and
//! the media task encrypts and decrypts nothing before it has them.

mod actor;
mod call;
mod group;
mod media;
mod turn;
mod video;
mod video_repair;

use std::time::Duration;

use hush_crypto::Backend;
use hush_media::SessionConfig;
use hush_net::driver::Bind;
use hush_net::{CandidateKind, IceCredentials};
use hush_signaling::crypto::SignalSealer;
use hush_signaling::{DeviceId, SignalingClient, Transport};
use tokio::sync::{mpsc, oneshot, Mutex};

pub use call::{AudioFrame, Call, CallEvent, CallStats, FrameSource, IncomingCall};
pub use group::{
    GroupCall, GroupCallEvent, GroupCallStats, GroupInvite, ParticipantAudio,
    ParticipantVideoFrame, SfuInfo, GROUP_VIDEO_LAYERS,
};
pub use media::MediaStats;
pub use video::{CallOptions, VideoStats};

use crate::machine::{CallId, Timeouts};
use crate::Error;

/// Settings of a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// ICE settings: STUN/TURN servers, policy (P2P first or relay only).
    pub net: hush_net::Config,
    /// Which local addresses ICE binds.
    pub bind: Bind,
    /// Ring, connect and reconnect timeouts.
    pub timeouts: Timeouts,
    /// Media engine settings; the callee uses the mirrored streams.
    pub media: SessionConfig,
    /// Fraction (0.0–1.0) of outgoing media datagrams dropped on purpose, to try loss recovery.
    /// Zero in real use. Losses are independent, or in bursts with
    /// [`SimulatedLink::burst_loss_mean`].
    pub simulated_send_loss: f64,
    /// Delay, jitter and a bandwidth cap applied to outgoing media datagrams, to try a call on
    /// a bad network over loopback (this client's send direction only; give both clients the
    /// same to impair both ways). All off by default; leave it so in real use.
    pub simulated_link: SimulatedLink,
    /// Delay, jitter and a bandwidth cap applied to the media a group call receives from the
    /// SFU (this client's downlink), before the media path sees it, to try a slow receiver
    /// over loopback. Its `bandwidth_steps` count from the call's start. Group calls only (1:1
    /// calls impair the send direction, [`simulated_link`](Self::simulated_link)); off by
    /// default, leave it so in real use.
    pub simulated_group_downlink: SimulatedLink,
    /// Delay, jitter and a bandwidth cap applied to the media a group call sends to the SFU
    /// (this client's uplink), after the media path, to try a sender on a thin uplink over
    /// loopback. Its `bandwidth_steps` count from the call's start. Group calls only; off by
    /// default, leave it so in real use.
    pub simulated_group_uplink: SimulatedLink,
}

/// Impairments of this client's outgoing media, applied in the media path after SRTP, just
/// before the socket (the machine's kernel may have no netem). Built on the media engine's
/// network simulator ([`hush_media::sim::NetSim`]): a drop-tail bottleneck at
/// `bandwidth_bps`, then the loss of [`ClientConfig::simulated_send_loss`], then `delay` plus
/// a uniform jitter in `[0, jitter]` that never reorders packets.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct SimulatedLink {
    /// One-way delay added to every datagram.
    pub delay: Duration,
    /// Largest extra delay, drawn uniformly per datagram; packets keep their order (they
    /// bunch up behind a late one, as on a single queue).
    pub jitter: Duration,
    /// Bottleneck rate in bits per second, counting each datagram with its IPv4 and UDP
    /// headers (28 bytes); `None` for no cap.
    pub bandwidth_bps: Option<u64>,
    /// Most queueing delay the bottleneck holds before it drops (drop-tail); 300 ms if zero.
    pub queue_limit: Duration,
    /// Mean length, in packets, of loss bursts (Gilbert–Elliott), with
    /// [`ClientConfig::simulated_send_loss`] as the long-run loss rate; `None` for
    /// independent losses.
    pub burst_loss_mean: Option<f64>,
    /// Seed of the loss and jitter draws, for runs that replay; random if `None`.
    pub seed: Option<u64>,
    /// Changes of the bottleneck rate during the call: from each offset (counted from the
    /// moment the call's keys exist) the cap becomes this (`None`: no cap). The queue follows
    /// (`queue_limit` of the new rate). Needs an impaired link to act on.
    pub bandwidth_steps: Vec<(Duration, Option<u64>)>,
}

impl SimulatedLink {
    /// No delay, jitter, cap or bursts.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the one-way delay.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Sets the jitter (largest extra delay per datagram).
    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// Caps the send rate (IPv4/UDP headers counted).
    pub fn bandwidth_bps(mut self, bps: Option<u64>) -> Self {
        self.bandwidth_bps = bps;
        self
    }

    /// Sets the bottleneck's largest queueing delay.
    pub fn queue_limit(mut self, limit: Duration) -> Self {
        self.queue_limit = limit;
        self
    }

    /// Makes losses come in bursts of this mean length (packets).
    pub fn burst_loss_mean(mut self, mean: Option<f64>) -> Self {
        self.burst_loss_mean = mean;
        self
    }

    /// Steps the bottleneck rate during the call (see
    /// [`bandwidth_steps`](Self::bandwidth_steps)).
    pub fn bandwidth_steps(mut self, steps: Vec<(Duration, Option<u64>)>) -> Self {
        self.bandwidth_steps = steps;
        self
    }

    /// The bottleneck's largest queueing delay in force (300 ms when unset).
    pub(crate) fn queue_delay(&self) -> Duration {
        if self.queue_limit.is_zero() {
            Duration::from_millis(300)
        } else {
            self.queue_limit
        }
    }

    /// Fixes the seed of the random draws.
    pub fn seed(mut self, seed: Option<u64>) -> Self {
        self.seed = seed;
        self
    }

    /// The network simulator configuration for a send direction losing `loss` of its
    /// datagrams, or `None` if nothing is impaired (datagrams then go straight out).
    pub(crate) fn sim_config(&self, loss: f64) -> Option<hush_media::sim::SimConfig> {
        use hush_media::sim::{Jitter, LossModel, SimConfig};
        let loss = loss.clamp(0.0, 1.0);
        let impaired = loss > 0.0
            || !self.delay.is_zero()
            || !self.jitter.is_zero()
            || self.bandwidth_bps.is_some()
            || !self.bandwidth_steps.is_empty();
        if !impaired {
            return None;
        }
        let loss_model = match self.burst_loss_mean {
            _ if loss == 0.0 => LossModel::None,
            Some(mean) => LossModel::bursty(loss, mean),
            None => LossModel::Random(loss),
        };
        let queue = if self.queue_limit.is_zero() {
            Duration::from_millis(300)
        } else {
            self.queue_limit
        };
        let queue_bytes = self.bandwidth_bps.map_or(usize::MAX, |bps| {
            // At least one full-size datagram fits, whatever the rate.
            ((bps as f64 / 8.0 * queue.as_secs_f64()) as usize).max(1500)
        });
        Some(SimConfig {
            seed: self.seed.unwrap_or_else(rand::random),
            delay: self.delay,
            jitter: if self.jitter.is_zero() {
                Jitter::None
            } else {
                Jitter::Uniform(self.jitter)
            },
            reorder: false,
            loss: loss_model,
            duplicate: 0.0,
            rate_bps: self.bandwidth_bps,
            queue_bytes,
        })
    }
}

impl ClientConfig {
    /// A configuration with these ICE settings and defaults for the rest.
    ///
    /// Calls are audio-only for now, so the congestion controller is capped at 200 kbps (Opus
    /// with redundancy needs far less) and does not probe with padding: probing only pays off
    /// for video. It starts at 24 kbps (what a 24 kbps link carries, headers counted) with
    /// fast start, which doubles the rate while the path shows no queue, and audio packets
    /// may grow to 120 ms where headers would starve the encoder. The first frame plays as
    /// soon as it arrives, not after the media engine's generic 40 ms: the jitter buffer
    /// grows its delay by stretching playout when the path shows it is needed (jitter from
    /// the first packets on, room for a retransmission once a gap shows), and the callee hears
    /// the caller that much sooner. After the first frame it keeps at least 10 ms, so that the
    /// device's own scheduling hiccups on an almost jitter-free path (loopback, a LAN) do not
    /// make frames late.
    pub fn new(net: hush_net::Config) -> Self {
        let mut media = SessionConfig::default();
        media.cc.max_bps = AUDIO_MAX_BPS;
        media.cc.start_bps = AUDIO_START_BPS;
        media.cc.fast_start = true;
        media.cc.probing = false;
        media.max_audio_packet = AUDIO_MAX_PACKET;
        media.jitter.initial_delay = AUDIO_INITIAL_PLAYOUT_DELAY;
        media.jitter.min_delay = AUDIO_MIN_PLAYOUT_DELAY;
        Self {
            net,
            bind: Bind::Interfaces,
            timeouts: Timeouts::default(),
            media,
            simulated_send_loss: 0.0,
            simulated_link: SimulatedLink::default(),
            simulated_group_downlink: SimulatedLink::default(),
            simulated_group_uplink: SimulatedLink::default(),
        }
    }
}

/// Builds a [`Client`].
pub struct ClientBuilder<T, B: Backend> {
    signaling: SignalingClient<T, SignalSealer<B>>,
    config: ClientConfig,
    runtime: Option<tokio::runtime::Handle>,
}

impl<T, B> ClientBuilder<T, B>
where
    T: Transport + 'static,
    B: Backend + Send + 'static,
{
    /// Sets the configuration.
    pub fn config(mut self, config: ClientConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets the ICE configuration.
    pub fn net(mut self, net: hush_net::Config) -> Self {
        self.config.net = net;
        self
    }

    /// Sets the local addresses ICE binds.
    pub fn bind(mut self, bind: Bind) -> Self {
        self.config.bind = bind;
        self
    }

    /// Sets the call timeouts.
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.config.timeouts = timeouts;
        self
    }

    /// Runs the client (its actor and every call's media task) on this tokio runtime instead
    /// of the one `build` is called from. The runtime must have its I/O and time drivers
    /// enabled.
    ///
    /// ```no_run
    /// # fn demo(builder: hush::ClientBuilder<hush_signaling::MemoryTransport, hush_crypto::MemoryBackend>) {
    /// let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    /// let client = builder.runtime(runtime.handle().clone()).build(); // callable outside it
    /// # }
    /// ```
    pub fn runtime(mut self, handle: tokio::runtime::Handle) -> Self {
        self.runtime = Some(handle);
        self
    }

    /// Starts the client's actor on the runtime given with [`runtime`](Self::runtime), or else
    /// on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Without [`runtime`](Self::runtime), when called outside a tokio runtime (as
    /// `tokio::spawn` does).
    pub fn build(self) -> Client {
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (incoming_tx, incoming_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::channel(CLIENT_EVENT_BACKLOG);
        let local = self.signaling.local_device();
        let turn_source = self.signaling.transport().turn_source();
        let refresher = turn_source
            .clone()
            .map(|source| turn::refresher(source, cmd_tx.downgrade()));
        let actor = actor::Actor::new(
            self.signaling,
            self.config,
            actor::Channels {
                commands: cmd_rx,
                self_tx: cmd_tx.clone(),
                incoming: incoming_tx,
                events: events_tx,
            },
            turn_source.map(turn::TurnCache::new),
        );
        match self.runtime {
            Some(handle) => {
                drop(handle.spawn(actor.run()));
                if let Some(r) = refresher {
                    drop(handle.spawn(r));
                }
            }
            None => {
                drop(tokio::spawn(actor.run()));
                if let Some(r) = refresher {
                    drop(tokio::spawn(r));
                }
            }
        }
        Client {
            local,
            commands: cmd_tx,
            incoming: Mutex::new(incoming_rx),
            events: Mutex::new(events_rx),
        }
    }
}

/// One device's calling endpoint.
///
/// ```no_run
/// # async fn demo(client: hush::Client, bob: hush_signaling::DeviceId) -> Result<(), hush::Error> {
/// let call = client.call(bob).await?;
/// while let Some(event) = call.next_event().await {
///     if let hush::CallEvent::Connected { .. } = event {
///         call.send_audio(&[0i16; 960])?;
///         let _frame = call.recv_audio().await;
///         call.hangup()?;
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Client {
    local: DeviceId,
    commands: mpsc::UnboundedSender<Command>,
    incoming: Mutex<mpsc::UnboundedReceiver<IncomingCall>>,
    events: Mutex<mpsc::Receiver<ClientEvent>>,
}

/// Something that happened to the client outside any call.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// A message claiming to come from `peer` presented a Signal identity key other than the
    /// one on record (its safety number changed: a reinstall, or someone else using its
    /// address). Nothing it sent was opened, so a call it placed does not ring. Show it to the
    /// user; after they verify the new safety number, [`Client::accept_identity`] trusts it.
    /// During a call with `peer` the call reports [`CallEvent::IdentityChanged`] instead.
    IdentityChanged {
        /// The device whose identity changed.
        peer: DeviceId,
        /// The new identity key, when the message carried one.
        new_identity: Option<hush_crypto::IdentityKey>,
    },
    /// A member with whom this device has a Signal session invites it to a group call. The
    /// invitation was checked (the roster is signed by the call's creator and lists this
    /// device); join with [`Client::join_group_call`], or ignore it.
    GroupInvite(Box<GroupInvite>),
}

impl Client {
    /// A builder over a signaling client whose sealer holds this device's Signal sessions, with
    /// the ICE settings `net` (STUN/TURN servers, policy).
    pub fn builder<T, B>(
        signaling: SignalingClient<T, SignalSealer<B>>,
        net: hush_net::Config,
    ) -> ClientBuilder<T, B>
    where
        T: Transport + 'static,
        B: Backend + Send + 'static,
    {
        ClientBuilder {
            signaling,
            config: ClientConfig::new(net),
            runtime: None,
        }
    }

    /// This device's address.
    pub fn device_id(&self) -> DeviceId {
        self.local
    }

    /// Calls `peer` (a device this one has a Signal session with), audio only. Returns once
    /// the sealed offer is sent; follow [`Call::next_event`] for ringing, connected and ended.
    pub async fn call(&self, peer: DeviceId) -> Result<Call, Error> {
        self.call_with(peer, CallOptions::default()).await
    }

    /// Calls `peer` with these options: with [`CallOptions::video`] the offer asks for video
    /// and the call sends and receives it ([`Call::send_video`], [`Call::recv_video`]).
    pub async fn call_with(&self, peer: DeviceId, options: CallOptions) -> Result<Call, Error> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Call(peer, options, tx))
            .map_err(|_| Error::ClientClosed)?;
        rx.await.map_err(|_| Error::ClientClosed)?
    }

    /// The next incoming call; `None` once the client stopped.
    pub async fn incoming(&self) -> Option<IncomingCall> {
        self.incoming.lock().await.recv().await
    }

    /// The next client-level event (see [`ClientEvent`]); `None` once the client stopped.
    /// Events the application does not read are kept up to a small backlog, then dropped.
    pub async fn next_event(&self) -> Option<ClientEvent> {
        self.events.lock().await.recv().await
    }

    /// Trusts `identity` as `peer`'s Signal identity from now on, after the user verified the
    /// changed safety number ([`ClientEvent::IdentityChanged`]). Messages it sends afterwards
    /// are opened again (the ones refused before are gone: the peer has to call again).
    pub async fn accept_identity(
        &self,
        peer: DeviceId,
        identity: hush_crypto::IdentityKey,
    ) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::AcceptIdentity(peer, Box::new(identity), tx))
            .map_err(|_| Error::ClientClosed)?;
        rx.await.map_err(|_| Error::ClientClosed)?
    }

    /// Creates a group call on `sfu` with `members` (this device is added as the creator):
    /// signs the roster with this device's key, joins the SFU (which creates the call), and
    /// invites every other member with a sealed message over its Signal session (a member this
    /// device has no session with gets no invitation: [`GroupCallEvent::InviteFailed`]).
    pub async fn group_call(&self, sfu: SfuInfo, members: &[DeviceId]) -> Result<GroupCall, Error> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::GroupCall(sfu, members.to_vec(), tx))
            .map_err(|_| Error::ClientClosed)?;
        rx.await.map_err(|_| Error::ClientClosed)?
    }

    /// Joins the group call of an invitation ([`ClientEvent::GroupInvite`]).
    pub async fn join_group_call(&self, invite: &GroupInvite) -> Result<GroupCall, Error> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::JoinGroupCall(Box::new(invite.clone()), tx))
            .map_err(|_| Error::ClientClosed)?;
        rx.await.map_err(|_| Error::ClientClosed)?
    }

    /// Stops the client: ends any call (telling the peer) and the actor.
    pub fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown);
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Messages to the actor.
#[derive(Debug)]
pub(crate) enum Command {
    Call(DeviceId, CallOptions, oneshot::Sender<Result<Call, Error>>),
    Accept(CallId, CallOptions, oneshot::Sender<Result<Call, Error>>),
    /// The media task's microphone/camera state changed: tell the peer.
    SendMediaState {
        call_id: CallId,
        audio_muted: bool,
        video_on: bool,
        video_paused: bool,
    },
    Reject(CallId),
    Hangup(CallId),
    /// Local candidates to send, and whether gathering of this generation is complete.
    LocalCandidates(CallId, Vec<String>, bool),
    LocalRestart(CallId, IceCredentials),
    AcceptIdentity(
        DeviceId,
        Box<hush_crypto::IdentityKey>,
        oneshot::Sender<Result<(), Error>>,
    ),
    PathUp(CallId, CandidateKind),
    GroupCall(
        SfuInfo,
        Vec<DeviceId>,
        oneshot::Sender<Result<GroupCall, Error>>,
    ),
    JoinGroupCall(Box<GroupInvite>, oneshot::Sender<Result<GroupCall, Error>>),
    /// A group task joined as creator: send the invitations.
    SendGroupInvites {
        invite: hush_signaling::GroupInvite,
        members: Vec<DeviceId>,
        failed: mpsc::UnboundedSender<GroupCallEvent>,
    },
    /// A group task starts: send its call's sender keys to it.
    RegisterGroupKeys {
        call_id: [u8; 16],
        keys: mpsc::UnboundedSender<group::KeyFrom>,
    },
    /// A group task's sender key to seal for these members.
    SendGroupKey {
        members: Vec<DeviceId>,
        key: hush_signaling::GroupKey,
    },
    PathDown(CallId),
    NetFailed(CallId),
    /// Fresh (or refused) TURN credentials from the transport.
    Turn(Box<turn::Fetched>),
    Shutdown,
}

/// Client events kept for an application that does not read them.
const CLIENT_EVENT_BACKLOG: usize = 32;

/// How long the first audio frame of a call waits in the jitter buffer before it plays: not
/// at all (a NetEq-like start); the delay grows by stretching when the path needs it.
const AUDIO_INITIAL_PLAYOUT_DELAY: Duration = Duration::ZERO;

/// The least delay the jitter buffer keeps: on a path with almost no jitter (loopback, a LAN)
/// its measured target would be a few milliseconds, and any scheduling hiccup of the device
/// itself would make a frame late.
const AUDIO_MIN_PLAYOUT_DELAY: Duration = Duration::from_millis(10);

/// Highest bitrate an audio-only call asks for.
const AUDIO_MAX_BPS: u64 = 200_000;
/// Where an audio call's congestion control starts (headers counted): what a 24 kbps link
/// carries, audio then in 80 ms packets at about 17 kbps. Fast start doubles it while the path
/// shows no queue (the encoder's full 32 kbps within about a second on a fast path, 20 ms
/// packets again within three); starting at the full rate overflowed a 24 kbps link's queue
/// for two seconds.
const AUDIO_START_BPS: u64 = 24_000;
/// Longest audio packet the sender may build on a slow link (Opus's limit). Packets grow past
/// 20 ms only when the headers would starve the encoder; on a 24 kbps link 120 ms packets
/// cost 4.3 kbps of headers where 60 ms cost 8.7.
const AUDIO_MAX_PACKET: Duration = Duration::from_millis(120);

/// The media settings of a call with video, from the client's (audio) settings: video streams
/// in both directions (H.264, RFC 6184), and the congestion controller allowed to climb to
/// 2.5 Mbps with padding probes, which only pay off for video.
pub(crate) fn video_session(audio: &SessionConfig) -> SessionConfig {
    let mut c = audio.clone().with_h264_video();
    let defaults = hush_media::cc::CcConfig::default();
    c.cc.max_bps = defaults.max_bps;
    c.cc.start_bps = defaults.start_bps;
    c.cc.probing = true;
    c
}

/// How long a client waits for an ICE driver to start.
pub(crate) const NET_START_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use hush_media::sim::{Jitter, LossModel};

    use super::SimulatedLink;

    #[test]
    fn an_unimpaired_link_sends_straight_out() {
        assert!(SimulatedLink::new().sim_config(0.0).is_none());
        // Loss alone still goes through the simulator.
        let c = SimulatedLink::new().sim_config(0.1).expect("impaired");
        assert_eq!(c.loss, LossModel::Random(0.1));
        assert!(c.delay.is_zero() && c.rate_bps.is_none());
    }

    #[test]
    fn link_settings_map_onto_the_simulator() {
        let link = SimulatedLink::new()
            .delay(Duration::from_millis(50))
            .jitter(Duration::from_millis(10))
            .bandwidth_bps(Some(64_000))
            .burst_loss_mean(Some(6.0))
            .seed(Some(3));
        let c = link.sim_config(0.1).expect("impaired");
        assert_eq!(c.delay, Duration::from_millis(50));
        assert_eq!(c.jitter, Jitter::Uniform(Duration::from_millis(10)));
        assert!(!c.reorder);
        assert_eq!(c.rate_bps, Some(64_000));
        // 300 ms of queue at 64 kbps.
        assert_eq!(c.queue_bytes, 2_400);
        assert_eq!(c.seed, 3);
        // Bursts with the requested long-run rate and mean length.
        assert!((c.loss.mean_loss() - 0.1).abs() < 1e-9);
        match c.loss {
            LossModel::GilbertElliott { p_leave_bad, .. } => {
                assert!((1.0 / p_leave_bad - 6.0).abs() < 1e-9);
            }
            other => panic!("bursty loss expected, got {other:?}"),
        }
        // Bursts without loss are no loss.
        let c = link.sim_config(0.0).expect("still delayed");
        assert_eq!(c.loss, LossModel::None);
    }
}

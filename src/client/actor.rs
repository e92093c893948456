//! The client's actor: one tokio task that owns the signaling client, the call state machine and
//! the key exchange, and starts one media task per call. It only moves values between them; the
//! decisions are the machine's.

use std::sync::{Arc, Mutex as StdMutex};
use std::time::Instant;

use hush_crypto::{Backend, IncomingOffer, PendingOffer};
use hush_net::driver::Started;
use hush_net::{CandidateKind, IceCredentials, Policy, Role, TurnServer};
use hush_signaling::crypto::SignalSealer;
use hush_signaling::{
    CallMedia, CallMessage, DeviceId, IceParameters, IncomingMessage, SignalingClient,
    SignalingEvent, Transport,
};
use tokio::sync::{mpsc, Mutex};
use tracing::{debug, info, info_span, warn, Instrument};

use super::call::{Call, CallEvent, CallVideo, IncomingCall};
use super::group::{self, GroupCall, GroupCallEvent, SfuInfo};
use super::media::{MediaCommand, MediaTask, VideoTask};
use super::turn::TurnCache;
use super::{video_session, CallOptions, ClientConfig, ClientEvent, Command, NET_START_TIMEOUT};
use crate::machine::{CallId, CallMachine, CallState, Event, Output, PeerId, Side, Signal};
use crate::Error;

/// What the machine carries opaquely for the actor.
#[derive(Debug)]
pub(super) enum Payload {
    Offer(hush_signaling::Offer),
    Answer(hush_signaling::Answer),
    Candidates(hush_signaling::IceCandidates),
}

/// The active call's plumbing.
struct Current {
    id: CallId,
    pending: Option<PendingOffer>,
    media: mpsc::UnboundedSender<MediaCommand>,
    events: mpsc::UnboundedSender<CallEvent>,
    suite: Arc<StdMutex<&'static str>>,
    path: Option<CandidateKind>,
    /// Our ICE generation: how many times our side restarted (its candidates carry it).
    generation: u32,
    /// The peer's latest ICE generation; candidates of older ones are stale.
    remote_generation: u32,
    /// An ICE restart is under way: the next selected path is reported as a path change.
    restarting: bool,
    /// Sequence number of the last [`MediaState`](hush_signaling::MediaState) we sent.
    local_seq: u64,
    /// The peer's last applied media state.
    remote: RemoteMedia,
}

/// What the peer last told us it sends.
#[derive(Clone, Copy, Debug)]
struct RemoteMedia {
    seq: u64,
    muted: bool,
    video_on: bool,
    video_paused: bool,
}

/// The channels between the actor, the [`Client`](super::Client) and the call tasks.
pub(super) struct Channels {
    pub(super) commands: mpsc::UnboundedReceiver<Command>,
    pub(super) self_tx: mpsc::UnboundedSender<Command>,
    pub(super) incoming: mpsc::UnboundedSender<IncomingCall>,
    pub(super) events: mpsc::Sender<ClientEvent>,
}

pub(super) struct Actor<T, B: Backend> {
    signaling: SignalingClient<T, SignalSealer<B>>,
    machine: CallMachine<Payload>,
    config: ClientConfig,
    commands: mpsc::UnboundedReceiver<Command>,
    self_tx: mpsc::UnboundedSender<Command>,
    incoming_tx: mpsc::UnboundedSender<IncomingCall>,
    events_tx: mpsc::Sender<ClientEvent>,
    current: Option<Current>,
    /// The validated offer of the call ringing here, kept for the answer, and whether it
    /// offered video.
    ringing_offer: Option<(CallId, IncomingOffer, Option<IceParameters>, bool)>,
    transport_open: bool,
    /// Group calls on this device, by call id: where their members' sender keys go.
    group_keys: std::collections::HashMap<[u8; 16], mpsc::UnboundedSender<group::KeyFrom>>,
    /// Short-lived TURN credentials from the transport, when it hands them out.
    turn: Option<TurnCache>,
}

enum Wake {
    Command(Option<Command>),
    Signal(Result<SignalingEvent, hush_signaling::Error>),
    Timer,
}

impl<T, B> Actor<T, B>
where
    T: Transport + 'static,
    B: Backend + Send + 'static,
{
    pub(super) fn new(
        signaling: SignalingClient<T, SignalSealer<B>>,
        config: ClientConfig,
        channels: Channels,
        turn: Option<TurnCache>,
    ) -> Self {
        Self {
            signaling,
            machine: CallMachine::new(config.timeouts),
            config,
            commands: channels.commands,
            self_tx: channels.self_tx,
            incoming_tx: channels.incoming,
            events_tx: channels.events,
            current: None,
            ringing_offer: None,
            transport_open: true,
            group_keys: std::collections::HashMap::new(),
            turn,
        }
    }

    pub(super) async fn run(mut self) {
        let span = info_span!("hush_client", device = %short(&self.signaling.local_device()));
        async move {
            loop {
                let deadline = self.machine.poll_timeout();
                let wake = tokio::select! {
                    c = self.commands.recv() => Wake::Command(c),
                    e = self.signaling.recv(), if self.transport_open => Wake::Signal(e),
                    () = sleep_until(deadline) => Wake::Timer,
                };
                match wake {
                    Wake::Command(None | Some(Command::Shutdown)) => {
                        if let Some((id, _, _)) = self.machine.active() {
                            let _ = self.machine.hangup(id);
                        }
                        self.drain().await;
                        break;
                    }
                    Wake::Command(Some(c)) => self.on_command(c).await,
                    Wake::Signal(Ok(SignalingEvent::Message(m))) => self.on_message(m),
                    Wake::Signal(Ok(SignalingEvent::Dropped {
                        from,
                        reason: hush_signaling::Error::IdentityChanged { new_identity },
                    })) => self.identity_changed(from, new_identity.as_deref()),
                    Wake::Signal(Ok(other)) => debug!(event = ?other, "signaling event"),
                    Wake::Signal(Err(e)) => {
                        warn!(error = %e, "signaling transport failed; no more incoming messages");
                        self.transport_open = false;
                    }
                    Wake::Timer => self.machine.handle_timeout(Instant::now()),
                }
                self.drain().await;
            }
        }
        .instrument(span)
        .await;
    }

    // ----- commands from the application and the media tasks -----

    async fn on_command(&mut self, c: Command) {
        match c {
            Command::Call(peer, options, reply) => {
                let r = self.place_call(peer, options).await;
                let _ = reply.send(r);
            }
            Command::Accept(id, options, reply) => {
                let r = self.accept(id, options).await;
                let _ = reply.send(r);
            }
            Command::SendMediaState {
                call_id,
                audio_muted,
                video_on,
                video_paused,
            } => {
                let Some(peer) = self.peer_of(call_id) else {
                    return;
                };
                let Some(cur) = self.current.as_mut().filter(|c| c.id == call_id) else {
                    return;
                };
                cur.local_seq += 1;
                let message = CallMessage::MediaState(hush_signaling::MediaState {
                    call_id: call_id.into(),
                    seq: cur.local_seq,
                    audio_muted,
                    video_on,
                    video_paused,
                });
                if let Err(e) = self.signaling.send(peer, message).await {
                    warn!(error = %e, "could not send the media state");
                }
            }
            Command::Reject(id) => {
                self.ringing_offer = None;
                let _ = self.machine.reject(id);
            }
            Command::Hangup(id) => {
                let _ = self.machine.hangup(id);
            }
            Command::LocalCandidates(id, lines, complete) => {
                self.trickle(id, lines, complete).await;
            }
            Command::LocalRestart(id, credentials) => self.restarted(id, credentials).await,
            Command::AcceptIdentity(peer, identity, reply) => {
                let _ = reply.send(self.accept_identity(&peer, &identity));
            }
            Command::PathUp(id, kind) => {
                if let Some(cur) = self.current.as_mut().filter(|c| c.id == id) {
                    let was = cur.path.replace(kind);
                    let restarted = std::mem::take(&mut cur.restarting);
                    let connected = matches!(
                        self.machine.active(),
                        Some((_, _, CallState::Connected | CallState::Reconnecting))
                    );
                    if connected && (restarted || was.is_some_and(|w| w != kind)) {
                        let _ = cur.events.send(CallEvent::PathChanged { path: kind });
                    }
                }
                let _ = self.machine.path_up(id);
            }
            Command::PathDown(id) => {
                let _ = self.machine.path_down(Instant::now(), id);
            }
            Command::NetFailed(id) => {
                let _ = self.machine.fail(id);
            }
            Command::GroupCall(sfu, members, reply) => self.group_call(sfu, &members, reply),
            Command::JoinGroupCall(invite, reply) => {
                let start = group::GroupStart {
                    sfu: invite.sfu,
                    device_key: self.device_signing_key(),
                    roster: invite.roster,
                    create: false,
                    config: self.config.clone(),
                    actor: self.self_tx.clone(),
                };
                tokio::spawn(async move {
                    let _ = reply.send(group::start(start).await);
                });
            }
            Command::SendGroupInvites {
                invite,
                members,
                failed,
            } => {
                for member in members {
                    let failed = failed.clone();
                    self.send_message(
                        member,
                        CallMessage::GroupInvite(invite.clone()),
                        "group invitation",
                        move || {
                            let _ = failed.send(GroupCallEvent::InviteFailed(member));
                        },
                    )
                    .await;
                }
            }
            Command::RegisterGroupKeys { call_id, keys } => {
                self.group_keys.retain(|_, tx| !tx.is_closed());
                self.group_keys.insert(call_id, keys);
            }
            Command::SendGroupKey { members, key } => {
                // Sealed one after the other (each advances a Signal session), but all in flight
                // at once (`send_message` does not wait for the relay's answer): the relay answers
                // a send only when its recipient acknowledges it (or after its commit delay), and
                // the recipients may be busy sending their own keys to this device. Waiting for
                // each answer would stop this actor from reading (and acknowledging) theirs.
                for member in members {
                    self.send_message(
                        member,
                        CallMessage::GroupKey(key.clone()),
                        "group key",
                        || {},
                    )
                    .await;
                }
            }
            Command::Turn(fetched) => {
                if let Some(turn) = self.turn.as_mut() {
                    turn.store(*fetched);
                }
            }
            Command::Shutdown => {}
        }
    }

    async fn place_call(&mut self, peer: DeviceId, options: CallOptions) -> Result<Call, Error> {
        // Calling the device whose call rings here right now: both users want to talk, so
        // this is an accept (the other half of glare, when its offer won the race).
        if let Some((id, Side::Callee, CallState::Ringing)) = self.machine.active() {
            if self.machine.active_peer() == Some(&peer_id(&peer)) {
                info!(call = ?id, "calling the device that is ringing us: accepting its call");
                return self.accept(id, options).await;
            }
        }
        if self.machine.active().is_some() {
            return Err(Error::Busy);
        }
        let identity = self.session_identity(&peer)?;
        let (pending, offer) = self
            .signaling
            .sealer_mut()
            .device()
            .calls()
            .offer(&identity, &mut rand::rng());
        let id = CallId::from(*offer.call_id().as_bytes());
        let turn = self.turn_servers().await;
        let net = start_net(&self.config, Role::Controlling, turn).await?;
        let creds = net.credentials.clone();
        let (session, video) = if options.video {
            (video_session(&self.config.media), Some(options))
        } else {
            (self.config.media.clone(), None)
        };
        let (call, mut current) = self.start_media(id, peer, net, session, video);
        current.pending = Some(pending);
        self.current = Some(current);
        let message = hush_signaling::Offer {
            call_id: id.into(),
            media: if options.video {
                CallMedia::Video
            } else {
                CallMedia::Audio
            },
            key_agreement: offer.encode(),
            ice: Some(ice_parameters(creds)),
        };
        if let Err(e) =
            self.machine
                .call(Instant::now(), peer_id(&peer), id, Payload::Offer(message))
        {
            self.stop_current();
            return Err(e.into());
        }
        info!(call = ?id, "calling");
        Ok(call)
    }

    /// The TURN servers the transport granted credentials for (none if it grants none).
    async fn turn_servers(&mut self) -> Vec<TurnServer> {
        match self.turn.as_mut() {
            Some(turn) => turn.servers().await,
            None => Vec::new(),
        }
    }

    async fn accept(&mut self, id: CallId, options: CallOptions) -> Result<Call, Error> {
        let ringing =
            matches!(self.machine.active(), Some((a, Side::Callee, CallState::Ringing)) if a == id);
        let peer = self.machine.active_peer().and_then(device_id);
        let offer = self.ringing_offer.take().filter(|(o, _, _, _)| *o == id);
        let (Some(peer), Some((_, incoming, remote_ice, offered_video)), true) =
            (peer, offer, ringing)
        else {
            return Err(Error::CallEnded);
        };
        let turn = self.turn_servers().await;
        let net = start_net(&self.config, Role::Controlled, turn).await?;
        let creds = net.credentials.clone();
        // The keys exist from here on, and only because the user accepted.
        let (answer, keys) = incoming.accept(&mut rand::rng())?;
        let suite = keys.suite.name();
        // A video offer gets video streams whatever the camera: it can come on later.
        let (session, video) = if offered_video {
            (video_session(&self.config.media).mirrored(), Some(options))
        } else {
            (self.config.media.mirrored(), None)
        };
        let (call, current) = self.start_media(id, peer, net, session, video);
        *current.suite.lock().unwrap_or_else(|e| e.into_inner()) = suite;
        let _ = current.media.send(MediaCommand::Keys(Box::new(keys)));
        if let Some(ice) = remote_ice {
            let _ = current
                .media
                .send(MediaCommand::RemoteCredentials(IceCredentials::new(
                    ice.ufrag, ice.pwd,
                )));
        }
        self.current = Some(current);
        let message = hush_signaling::Answer {
            call_id: id.into(),
            key_agreement: answer.encode(),
            ice: Some(ice_parameters(creds)),
        };
        if let Err(e) = self
            .machine
            .accept(Instant::now(), id, Payload::Answer(message))
        {
            self.stop_current();
            return Err(e.into());
        }
        info!(call = ?id, "accepted");
        Ok(call)
    }

    /// The remote device of call `id`, if it is the active call.
    fn peer_of(&self, id: CallId) -> Option<DeviceId> {
        self.machine
            .active()
            .filter(|(a, _, _)| *a == id)
            .and_then(|_| self.machine.active_peer())
            .and_then(device_id)
    }

    /// Sends local candidates to the peer, as few messages as the batch limit allows; the
    /// last one says whether gathering of this generation is complete.
    async fn trickle(&mut self, id: CallId, lines: Vec<String>, complete: bool) {
        let Some(peer) = self.peer_of(id) else {
            return;
        };
        let generation = self.current.as_ref().map_or(0, |c| c.generation);
        let mut rest = lines;
        loop {
            // The first batch-limit's worth goes now (moved, not copied); the rest after it.
            let tail = rest.split_off(
                rest.len()
                    .min(hush_signaling::message::MAX_CANDIDATES_PER_BATCH),
            );
            let candidates = std::mem::replace(&mut rest, tail);
            let last = rest.is_empty();
            let message = CallMessage::IceCandidates(hush_signaling::IceCandidates {
                call_id: id.into(),
                generation,
                candidates,
                end_of_candidates: complete && last,
                ice: None,
            });
            self.send_message(peer, message, "candidates", || {}).await;
            if last {
                break;
            }
        }
    }

    /// Our ICE agent restarted (network change, consent loss, or answering the peer's
    /// restart): a new generation starts with the new credentials; its candidates follow.
    async fn restarted(&mut self, id: CallId, credentials: IceCredentials) {
        let Some(peer) = self.peer_of(id) else {
            return;
        };
        let Some(cur) = self.current.as_mut().filter(|c| c.id == id) else {
            return;
        };
        cur.generation += 1;
        cur.restarting = true;
        info!(call = ?id, generation = cur.generation, "ICE restarted; sending new credentials");
        let message = CallMessage::IceCandidates(hush_signaling::IceCandidates {
            call_id: id.into(),
            generation: cur.generation,
            candidates: Vec::new(),
            end_of_candidates: false,
            ice: Some(ice_parameters(credentials)),
        });
        self.send_message(peer, message, "ICE restart", || {}).await;
    }

    /// A message from `from` presented a changed identity key: tell the call with it, or the
    /// application.
    /// This device's ed25519 key, for signing SFU joins and rosters (domain-separated from
    /// its relay and identity-binding signatures by their labels).
    fn device_signing_key(&mut self) -> hush_sfu::ed25519_dalek::SigningKey {
        let seed = self.signaling.sealer_mut().signer().to_seed();
        group::device_signing_key(&seed)
    }

    fn group_call(
        &mut self,
        sfu: SfuInfo,
        members: &[DeviceId],
        reply: tokio::sync::oneshot::Sender<Result<GroupCall, Error>>,
    ) {
        let key = self.device_signing_key();
        let me = hush_sfu::DeviceId::from_signing_key(&key);
        let mut roster_members = vec![me];
        for m in members {
            match hush_sfu::DeviceId::from_bytes(m.as_bytes()) {
                Ok(d) if !roster_members.contains(&d) => roster_members.push(d),
                Ok(_) => {}
                Err(e) => {
                    let _ = reply.send(Err(Error::GroupInvite(hush_sfu::JoinError::Malformed(e))));
                    return;
                }
            }
        }
        let call_id = hush_sfu::CallId::random(&mut rand::rng());
        let roster = match hush_sfu::roster::Roster::sign(&key, call_id, 1, &roster_members) {
            Ok(r) => r,
            Err(e) => {
                let _ = reply.send(Err(Error::GroupInvite(hush_sfu::JoinError::Roster(e))));
                return;
            }
        };
        let start = group::GroupStart {
            sfu,
            device_key: key,
            roster,
            create: true,
            config: self.config.clone(),
            actor: self.self_tx.clone(),
        };
        tokio::spawn(async move {
            let _ = reply.send(group::start(start).await);
        });
    }

    fn group_invite(&mut self, from: DeviceId, m: &hush_signaling::GroupInvite) {
        let me = self.signaling.local_device();
        match group::GroupInvite::check(from, &me, m) {
            Ok(invite) => {
                info!(from = %short(&from), "group call invitation");
                let _ = self
                    .events_tx
                    .try_send(ClientEvent::GroupInvite(Box::new(invite)));
            }
            Err(e) => warn!(from = %short(&from), error = %e, "group invitation refused"),
        }
    }

    fn identity_changed(&mut self, from: DeviceId, new_identity: Option<&[u8]>) {
        let new_identity = new_identity.and_then(|b| hush_crypto::IdentityKey::decode(b).ok());
        warn!(peer = %short(&from), "a message presented a changed identity key; refused");
        let in_call = self.machine.active_peer() == Some(&peer_id(&from));
        match self.current.as_ref().filter(|_| in_call) {
            Some(cur) => {
                let _ = cur.events.send(CallEvent::IdentityChanged { new_identity });
            }
            None => {
                // Bounded: a flood of forged messages must not grow memory.
                let _ = self.events_tx.try_send(ClientEvent::IdentityChanged {
                    peer: from,
                    new_identity,
                });
            }
        }
    }

    /// Trusts a peer's new identity key (the user verified it).
    fn accept_identity(
        &mut self,
        peer: &DeviceId,
        identity: &hush_crypto::IdentityKey,
    ) -> Result<(), Error> {
        self.signaling
            .sealer_mut()
            .accept_identity(peer, identity)?;
        info!(peer = %short(peer), "new identity key accepted by the user");
        Ok(())
    }

    fn start_media(
        &self,
        id: CallId,
        peer: DeviceId,
        net: Started,
        session: hush_media::SessionConfig,
        video: Option<CallOptions>,
    ) -> (Call, Current) {
        let (media_tx, media_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (audio_tx, audio_rx) = mpsc::channel(256);
        let suite = Arc::new(StdMutex::new(""));
        // A few pictures of slack (about 130 ms at 30 fps): a slower application loses
        // pictures rather than seeing old ones late.
        let (decoded_tx, decoded_rx) = mpsc::channel(VIDEO_BACKLOG);
        let (encoded_tx, encoded_rx) = mpsc::channel(VIDEO_BACKLOG);
        let call_video = video.map(|o| CallVideo {
            encoded: o.encoded_video,
            decoded: Mutex::new(decoded_rx),
            encoded_frames: Mutex::new(encoded_rx),
        });
        let link = &self.config.simulated_link;
        let task = MediaTask {
            call_id: id,
            net,
            commands: media_rx,
            actor: self.self_tx.clone(),
            audio_out: audio_tx,
            session,
            send_link: self
                .config
                .simulated_link
                .sim_config(self.config.simulated_send_loss),
            link_steps: link.bandwidth_steps.clone(),
            link_queue: link.queue_delay(),
            video: video.map(|o| VideoTask {
                camera_on: o.video,
                encoded: o.encoded_video,
                decoded_out: decoded_tx,
                encoded_out: encoded_tx,
            }),
            events: events_tx.clone(),
        };
        tokio::spawn(task.run().instrument(info_span!("hush_media", call = ?id)));
        let call = Call {
            id,
            peer,
            actor: self.self_tx.clone(),
            media: media_tx.clone(),
            events: Mutex::new(events_rx),
            audio: Mutex::new(audio_rx),
            video: call_video,
            suite: suite.clone(),
        };
        let current = Current {
            id,
            pending: None,
            media: media_tx,
            events: events_tx,
            suite,
            path: None,
            generation: 0,
            remote_generation: 0,
            restarting: false,
            local_seq: 0,
            remote: RemoteMedia {
                seq: 0,
                muted: false,
                video_on: video.is_some(),
                video_paused: false,
            },
        };
        (call, current)
    }

    fn stop_current(&mut self) {
        if let Some(cur) = self.current.take() {
            let _ = cur.media.send(MediaCommand::Stop);
        }
    }

    // ----- messages from the peer -----

    fn on_message(&mut self, m: IncomingMessage) {
        let from = peer_id(&m.from);
        let signal = match m.message {
            CallMessage::Offer(offer) => {
                let id = CallId::from(offer.call_id);
                match self.validate_offer(&m.from, &offer) {
                    Ok(incoming) => {
                        let ice = offer.ice.clone();
                        let offer_video = offer.media == CallMedia::Video;
                        self.machine.handle_signal(
                            Instant::now(),
                            &from,
                            Signal::Offer {
                                call_id: id,
                                payload: Payload::Offer(offer),
                            },
                        );
                        // Keep the offer only if it rings now (not busy, not a lost glare).
                        if matches!(self.machine.active(), Some((a, Side::Callee, CallState::Ringing)) if a == id)
                        {
                            self.ringing_offer = Some((id, incoming, ice, offer_video));
                        }
                    }
                    Err(e) => warn!(error = %e, "offer refused"),
                }
                return;
            }
            CallMessage::Answer(a) => Signal::Answer {
                call_id: a.call_id.into(),
                payload: Payload::Answer(a),
            },
            CallMessage::IceCandidates(c) => Signal::IceCandidates {
                call_id: c.call_id.into(),
                payload: Payload::Candidates(c),
            },
            CallMessage::Hangup(h) => Signal::Hangup {
                call_id: h.call_id.into(),
                reason: h.reason.into(),
            },
            CallMessage::Busy { call_id } => Signal::Busy {
                call_id: call_id.into(),
            },
            CallMessage::Ringing { call_id } => Signal::Ringing {
                call_id: call_id.into(),
            },
            CallMessage::GroupInvite(invite) => {
                self.group_invite(m.from, &invite);
                return;
            }
            CallMessage::MediaState(state) => {
                self.remote_media_state(&from, state);
                return;
            }
            CallMessage::GroupKey(key) => {
                // The Signal session authenticated `m.from`; the group task checks that the key
                // names that member's slot.
                match self.group_keys.get(&key.call_id) {
                    Some(tx) => {
                        if tx.send((m.from, key)).is_err() {
                            self.group_keys.retain(|_, tx| !tx.is_closed());
                        }
                    }
                    None => debug!(from = %short(&m.from), "group key for no call here"),
                }
                return;
            }
            other => {
                debug!(kind = other.kind(), "message ignored");
                return;
            }
        };
        self.machine.handle_signal(Instant::now(), &from, signal);
    }

    /// The peer's microphone/camera state: applied if it is for the active call, from its
    /// peer, and newer than the last; the app hears of each change.
    fn remote_media_state(&mut self, from: &PeerId, state: hush_signaling::MediaState) {
        let id = CallId::from(state.call_id);
        if self.machine.active_peer() != Some(from) {
            debug!("media state from a device not in the call");
            return;
        }
        let Some(cur) = self.current.as_mut().filter(|c| c.id == id) else {
            return;
        };
        if state.seq <= cur.remote.seq {
            debug!(seq = state.seq, "stale media state ignored");
            return;
        }
        let old = cur.remote;
        cur.remote = RemoteMedia {
            seq: state.seq,
            muted: state.audio_muted,
            video_on: state.video_on,
            video_paused: state.video_paused,
        };
        if old.muted != state.audio_muted {
            let _ = cur.events.send(CallEvent::RemoteMuted(state.audio_muted));
        }
        if old.video_on != state.video_on {
            let _ = cur.events.send(CallEvent::RemoteVideo(state.video_on));
        }
        if old.video_paused != state.video_paused {
            let _ = cur
                .events
                .send(CallEvent::RemoteVideoPaused(state.video_paused));
        }
        let _ = cur.media.send(MediaCommand::RemoteVideo(
            state.video_on && !state.video_paused,
        ));
    }

    /// Checks an offer's key agreement against the Signal session it arrived on, before the
    /// call may ring: version, suites, a contributory ephemeral, a call id never seen before.
    fn validate_offer(
        &mut self,
        from: &DeviceId,
        offer: &hush_signaling::Offer,
    ) -> Result<IncomingOffer, Error> {
        let payload = hush_crypto::Offer::decode(&offer.key_agreement)?;
        if payload.call_id().as_bytes() != &offer.call_id {
            return Err(Error::Signaling(hush_signaling::Error::Mismatch(
                "offer call id differs from its key agreement",
            )));
        }
        let identity = self.session_identity(from)?;
        Ok(self
            .signaling
            .sealer_mut()
            .device_mut()
            .calls_mut()
            .receive_offer(&payload, &identity)?)
    }

    /// The identity key the Signal session with `peer` authenticated (the one the call keys
    /// are bound to).
    fn session_identity(&mut self, peer: &DeviceId) -> Result<hush_crypto::IdentityKey, Error> {
        self.signaling
            .sealer_mut()
            .peer_identity(peer)?
            .ok_or(Error::NoSession)
    }

    // ----- machine outputs -----

    /// Seals `message` for `to` and hands it to the transport without waiting for the
    /// transport to take it: the actor goes on receiving and sending meanwhile (over a relay,
    /// each send's answer comes a round trip later, and the peer's actor may be waiting on its
    /// own sends). Messages leave in order. A failure is logged and `on_fail` runs, whether
    /// the message could not be handed over or was refused later.
    async fn send_message(
        &mut self,
        to: DeviceId,
        message: CallMessage,
        what: &'static str,
        on_fail: impl FnOnce() + Send + 'static,
    ) {
        match self.signaling.start_send(to, message).await {
            Ok((_, receipt)) => {
                tokio::spawn(
                    async move {
                        if let Err(e) = receipt.await {
                            warn!(peer = %short(&to), error = %e, "{what} not sent");
                            on_fail();
                        }
                    }
                    .in_current_span(),
                );
            }
            Err(e) => {
                warn!(peer = %short(&to), error = %e, "{what} not sent");
                on_fail();
            }
        }
    }

    async fn drain(&mut self) {
        while let Some(out) = self.machine.poll_output() {
            match out {
                Output::Send { peer, signal } => {
                    let Some(to) = device_id(&peer) else {
                        continue;
                    };
                    let message = to_wire(signal);
                    self.send_message(to, message, "call message", || {}).await;
                }
                Output::Event(event) => self.on_machine_event(event),
            }
        }
    }

    fn on_machine_event(&mut self, event: Event<Payload>) {
        match event {
            Event::Incoming {
                call_id,
                peer,
                replaces_outgoing,
                offer,
            } => {
                let Some(peer) = device_id(&peer) else {
                    return;
                };
                let video = matches!(&offer, Payload::Offer(o) if o.media == CallMedia::Video);
                let _ = self.incoming_tx.send(IncomingCall {
                    id: call_id,
                    peer,
                    replaces_outgoing,
                    video,
                    actor: self.self_tx.clone(),
                });
            }
            Event::RemoteRinging { call_id } => self.to_app(call_id, CallEvent::Ringing),
            Event::Answered { call_id, answer } => self.answered(call_id, answer),
            Event::RemoteCandidates {
                call_id,
                candidates: Payload::Candidates(c),
            } => {
                if let Some(cur) = self.current.as_mut().filter(|c| c.id == call_id) {
                    if c.generation < cur.remote_generation {
                        debug!(generation = c.generation, "stale ICE candidates ignored");
                        return;
                    }
                    if let Some(ice) = c.ice.filter(|_| c.generation > cur.remote_generation) {
                        // The peer restarted: its new credentials before its new candidates.
                        cur.remote_generation = c.generation;
                        cur.restarting = true;
                        let _ =
                            cur.media
                                .send(MediaCommand::RemoteCredentials(IceCredentials::new(
                                    ice.ufrag, ice.pwd,
                                )));
                    }
                    for line in c.candidates {
                        let _ = cur.media.send(MediaCommand::RemoteCandidate(line));
                    }
                    if c.end_of_candidates {
                        let _ = cur.media.send(MediaCommand::RemoteGatheringComplete);
                    }
                }
            }
            Event::RemoteCandidates { .. } => {}
            Event::Connected { call_id } => {
                let path = self
                    .current
                    .as_ref()
                    .and_then(|c| c.path)
                    .unwrap_or(CandidateKind::Host);
                self.to_app(call_id, CallEvent::Connected { path });
            }
            Event::Reconnecting { call_id } => self.to_app(call_id, CallEvent::Reconnecting),
            Event::Ended { call_id, reason } => {
                if self
                    .ringing_offer
                    .as_ref()
                    .is_some_and(|(id, _, _, _)| *id == call_id)
                {
                    self.ringing_offer = None;
                }
                if self.current.as_ref().is_some_and(|c| c.id == call_id) {
                    self.to_app(call_id, CallEvent::Ended(reason));
                    self.stop_current();
                }
            }
        }
    }

    /// Caller: the answer arrived. Finish the key exchange; a bad answer ends the call.
    fn answered(&mut self, call_id: CallId, answer: Payload) {
        let Payload::Answer(answer) = answer else {
            return;
        };
        let Some(cur) = self.current.as_mut().filter(|c| c.id == call_id) else {
            return;
        };
        let keys = hush_crypto::Answer::decode(&answer.key_agreement).and_then(|a| {
            cur.pending
                .as_mut()
                .ok_or(hush_crypto::Error::Internal("no pending offer"))?
                .finish(&a)
        });
        cur.pending = None;
        match keys {
            Ok(keys) => {
                *cur.suite.lock().unwrap_or_else(|e| e.into_inner()) = keys.suite.name();
                let _ = cur.media.send(MediaCommand::Keys(Box::new(keys)));
                if let Some(ice) = answer.ice {
                    let _ = cur
                        .media
                        .send(MediaCommand::RemoteCredentials(IceCredentials::new(
                            ice.ufrag, ice.pwd,
                        )));
                }
            }
            Err(e) => {
                warn!(error = %e, "answer refused; ending the call");
                let _ = self.machine.fail(call_id);
            }
        }
    }

    fn to_app(&self, call_id: CallId, event: CallEvent) {
        if let Some(cur) = self.current.as_ref().filter(|c| c.id == call_id) {
            let _ = cur.events.send(event);
        }
    }
}

/// Decoded (or encoded) pictures waiting for the application before new ones are dropped.
const VIDEO_BACKLOG: usize = 4;

/// Starts the ICE driver for one call (it binds sockets and begins gathering), with `turn`
/// added to the configured TURN servers.
async fn start_net(
    config: &ClientConfig,
    role: Role,
    turn: Vec<TurnServer>,
) -> Result<Started, Error> {
    let mut net = config.net.clone();
    for server in turn {
        net.add_turn_server(server);
    }
    if net.policy() == Policy::RelayOnly && net.turn_servers().is_empty() {
        return Err(Error::NoTurnServer);
    }
    let start = hush_net::driver::start(net, role, config.bind.clone());
    match tokio::time::timeout(NET_START_TIMEOUT, start).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(Error::NetStartTimeout),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

fn short(d: &DeviceId) -> String {
    d.to_hex().chars().take(8).collect()
}

fn peer_id(d: &DeviceId) -> PeerId {
    PeerId(d.to_hex())
}

fn device_id(p: &PeerId) -> Option<DeviceId> {
    let bytes = hex::decode(&p.0).ok()?;
    DeviceId::from_slice(&bytes).ok()
}

fn ice_parameters(c: IceCredentials) -> IceParameters {
    IceParameters {
        ufrag: c.ufrag,
        pwd: c.pwd,
    }
}

fn to_wire(signal: Signal<Payload>) -> CallMessage {
    match signal {
        Signal::Offer {
            payload: Payload::Offer(o),
            ..
        } => CallMessage::Offer(o),
        Signal::Answer {
            payload: Payload::Answer(a),
            ..
        } => CallMessage::Answer(a),
        Signal::IceCandidates {
            payload: Payload::Candidates(c),
            ..
        } => CallMessage::IceCandidates(c),
        Signal::Ringing { call_id } => CallMessage::Ringing {
            call_id: call_id.into(),
        },
        Signal::Busy { call_id } => CallMessage::Busy {
            call_id: call_id.into(),
        },
        Signal::Hangup { call_id, reason } => CallMessage::Hangup(hush_signaling::Hangup {
            call_id: call_id.into(),
            reason: reason.into(),
        }),
        // A payload that does not match its message kind cannot be built by the actor; send a
        // hangup for that call rather than panic.
        Signal::Offer { call_id, .. }
        | Signal::Answer { call_id, .. }
        | Signal::IceCandidates { call_id, .. } => CallMessage::Hangup(hush_signaling::Hangup {
            call_id: call_id.into(),
            reason: hush_signaling::HangupReason::Normal,
        }),
    }
}

//! The sans-IO connection core: one ICE session with its STUN/TURN clients.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::adapter::{
    AgentEvent, AgentState, CandInfo, IceAgent, RelaySend, TurnClient, TurnEvent, TxId,
};
use crate::candidate::{CandidateKind, IceCredentials, PathInfo};
use crate::config::{Config, Policy, Role, Transport};
use crate::demux::{self, PacketKind};
use crate::error::Error;

/// Largest datagram accepted by [`Connection::send_datagram`] (fits in UDP with TURN framing).
pub const MAX_DATAGRAM: usize = 65_000;
/// Packets held per peer while a TURN permission is being installed.
const MAX_PENDING_PER_PEER: usize = 64;
/// Datagrams sent before the first path is selected that are held for it (the newest).
pub const MAX_HELD_BEFORE_PATH: usize = 8;
/// Held datagrams older than this when the first path is selected are dropped, not sent.
pub const HELD_BEFORE_PATH_MAX_AGE: Duration = Duration::from_millis(200);

/// A message to send: from the local socket `source` to `destination`.
///
/// With [`Transport::Udp`] it is one UDP datagram from host socket `source`. With
/// [`Transport::Tcp`] or [`Transport::Tls`] it is one complete STUN or ChannelData message for
/// the stream (TURN over TCP/TLS) from `source`'s IP address to the TURN server
/// `destination`: the driver opens that connection on first use (one per `source`,
/// `destination` and transport), writes the message on it (see [`crate::framing`]), and feeds
/// the messages it receives back with [`Connection::handle_stream_message`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Transmit {
    /// The local socket address (a host socket the driver owns) to send from.
    pub source: SocketAddr,
    /// Where to send it.
    pub destination: SocketAddr,
    /// How to send it.
    pub transport: Transport,
    /// The datagram or message.
    pub contents: Vec<u8>,
}

/// Connection state, as the application sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Created; waiting for the remote credentials.
    New,
    /// Connectivity checks are running.
    Checking,
    /// A path is selected and consent is fresh.
    Connected,
    /// Nothing heard from the peer on the selected path for the consent timeout.
    Disconnected,
    /// No path could be found (see [`Error::NoRoute`]).
    Failed,
    /// Closed by the application.
    Closed,
}

/// What the connection reports to the application.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A local candidate (SDP `candidate` attribute value) to trickle to the peer in an
    /// `IceCandidates` message.
    LocalCandidate(String),
    /// All candidates of the current generation have been gathered. Relay it to the peer as
    /// end-of-candidates: there it goes to
    /// [`remote_gathering_complete`](Connection::remote_gathering_complete), so a call that
    /// cannot connect fails with [`Error::NoRoute`] as soon as every pair has failed.
    GatheringComplete,
    /// The connection state changed.
    StateChanged(ConnectionState),
    /// A path was selected (at first connect, and again after each path switch).
    PathSelected(PathInfo),
    /// This side performed an ICE restart (asked by the application, by the peer's new
    /// credentials, or automatically on consent loss). The new credentials must reach the peer,
    /// followed by the new candidates.
    Restarted {
        /// The new local credentials.
        credentials: IceCredentials,
    },
    /// A STUN/TURN server problem: bad TURN credentials, refused permission, no answer. The
    /// connection goes on with the candidates it has.
    ServerError(Error),
    /// The connection failed for good.
    Failed(Error),
}

#[derive(Debug, Clone)]
struct Path {
    local: CandInfo,
    remote: CandInfo,
}

/// One (local socket, server) session: STUN binding, and a TURN allocation when configured.
struct Session {
    socket: SocketAddr,
    server: SocketAddr,
    /// How the server is reached (UDP from `socket`, or a stream from `socket`'s address).
    transport: Transport,
    client: TurnClient,
    turn: bool,
    binding_tx: Option<TxId>,
    alloc_tx: Option<(TxId, TxId)>,
    relayed: Option<SocketAddr>,
    mapped: Option<SocketAddr>,
    alloc_failed: bool,
    perm_tx: HashMap<TxId, SocketAddr>,
    pending: HashMap<SocketAddr, VecDeque<Vec<u8>>>,
    /// Peers the server refused (or stopped answering for): not asked again this generation.
    refused: Vec<SocketAddr>,
    /// Peers already retried once after a stale nonce.
    stale_retried: Vec<SocketAddr>,
}

impl Session {
    fn gathering(&self) -> bool {
        self.binding_tx.is_some() || self.alloc_tx.is_some()
    }
}

/// One ICE session between this device and a peer, as a sans-IO state machine.
///
/// # Contract
///
/// * **Inputs**: [`handle_packet`](Self::handle_packet) for every datagram received on a socket
///   the driver announced with [`add_local_sockets`](Self::add_local_sockets), and
///   [`handle_timeout`](Self::handle_timeout) when the deadline from
///   [`poll_timeout`](Self::poll_timeout) passes. `now` never goes backwards; an early or extra
///   `handle_timeout` is harmless.
/// * **Commands**: [`set_remote_credentials`](Self::set_remote_credentials),
///   [`add_remote_candidate`](Self::add_remote_candidate), [`send_datagram`](Self::send_datagram),
///   [`restart`](Self::restart), [`close`](Self::close).
/// * **Outputs**: after every input or command, drain [`poll_transmit`](Self::poll_transmit),
///   [`recv_datagram`](Self::recv_datagram) and [`poll_event`](Self::poll_event), then re-arm the
///   timer from [`poll_timeout`](Self::poll_timeout).
///
/// The core never reads a clock and owns no socket. It never encrypts or decrypts: datagrams
/// given to [`send_datagram`](Self::send_datagram) come out of the peer's
/// [`recv_datagram`](Self::recv_datagram) byte for byte.
pub struct Connection {
    config: Config,
    agent: IceAgent,
    sockets: Vec<SocketAddr>,
    sessions: Vec<Session>,
    remote_credentials: Option<IceCredentials>,
    remote_addrs: Vec<SocketAddr>,
    checks_started: bool,
    /// After a restart, when to give up if no new path is found.
    restart_deadline: Option<Instant>,
    selected: Option<Path>,
    previous: Option<Path>,
    state: ConnectionState,
    ever_connected: bool,
    /// The peer said it has sent all candidates of this generation.
    remote_candidates_complete: bool,
    /// When the last remote candidate of this generation was added.
    last_remote_candidate: Option<Instant>,
    gathering_reported: bool,
    gathering_started: bool,
    transmits: VecDeque<Transmit>,
    datagrams: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
    /// Datagrams sent before the first path, with when: they go out on it.
    held: VecDeque<(Instant, Vec<u8>)>,
}

impl Connection {
    /// Creates a connection. Nothing is sent until sockets are added.
    pub fn new(config: Config, role: Role, now: Instant) -> Result<Self, Error> {
        let agent = IceAgent::new(now, &config, role)?;
        Ok(Self {
            config,
            agent,
            sockets: Vec::new(),
            sessions: Vec::new(),
            remote_credentials: None,
            remote_addrs: Vec::new(),
            checks_started: false,
            restart_deadline: None,
            selected: None,
            previous: None,
            state: ConnectionState::New,
            ever_connected: false,
            remote_candidates_complete: false,
            last_remote_candidate: None,
            gathering_reported: false,
            gathering_started: false,
            transmits: VecDeque::new(),
            datagrams: VecDeque::new(),
            events: VecDeque::new(),
            held: VecDeque::new(),
        })
    }

    // ----- getters -----

    /// This side's current ICE credentials, to send to the peer.
    pub fn local_credentials(&self) -> IceCredentials {
        self.agent.local_credentials()
    }

    /// The current connection state.
    pub fn state(&self) -> ConnectionState {
        self.state
    }

    /// The selected path with the latest RTT, if any.
    pub fn path(&self, now: Instant) -> Option<PathInfo> {
        self.selected.as_ref().map(|p| self.path_info(now, p))
    }

    /// The host sockets the connection knows.
    pub fn local_sockets(&self) -> &[SocketAddr] {
        &self.sockets
    }

    /// The relayed addresses of the live TURN allocations.
    pub fn relayed_addresses(&self) -> Vec<SocketAddr> {
        self.sessions.iter().filter_map(|s| s.relayed).collect()
    }

    // ----- commands -----

    /// Announces local UDP sockets (host candidate bases) and gathers candidates on them:
    /// host candidates (unless [`Policy::RelayOnly`]), server-reflexive via STUN Binding, relay
    /// via TURN Allocate. Candidates come out as [`Event::LocalCandidate`].
    pub fn add_local_sockets(&mut self, now: Instant, sockets: &[SocketAddr]) {
        for &socket in sockets {
            if self.sockets.contains(&socket) {
                continue;
            }
            self.sockets.push(socket);
            self.gather_on(now, socket);
        }
        self.gathering_started = true;
        self.pump(now);
    }

    /// Forgets a local socket (its address went away): TURN allocations made from it are
    /// released (the release requests still come out of [`poll_transmit`](Self::poll_transmit)
    /// with this socket as source; sending them is best effort) and its sessions are dropped.
    /// Follow with [`restart`](Self::restart) to move the call to the remaining sockets, or use
    /// [`network_changed`](Self::network_changed), which does both.
    pub fn remove_local_socket(&mut self, now: Instant, socket: SocketAddr) {
        let _gone = self.forget_socket(now, socket);
        self.pump(now);
    }

    /// The device changed network (Wi-Fi → mobile, new addresses, or just new local ports):
    /// every current local socket not in `sockets` is forgotten (as with
    /// [`remove_local_socket`](Self::remove_local_socket)), `sockets` are announced (as with
    /// [`add_local_sockets`](Self::add_local_sockets)), and ICE restarts on them.
    ///
    /// Returns the new local credentials. They also come out as [`Event::Restarted`], followed by
    /// the new candidates ([`Event::LocalCandidate`]): send the credentials to the peer first,
    /// then the candidates. The peer hands them to its own
    /// [`set_remote_credentials`](Self::set_remote_credentials), which makes it restart in turn
    /// (its own [`Event::Restarted`] with its new credentials, to send back here); nothing else
    /// is needed on either side.
    ///
    /// Media sent meanwhile goes out on the previous path only if that path's local socket is
    /// still among `sockets`; otherwise it is dropped until the new path is selected.
    pub fn network_changed(
        &mut self,
        now: Instant,
        sockets: &[SocketAddr],
    ) -> Result<IceCredentials, Error> {
        if self.state == ConnectionState::Closed {
            return Err(Error::Closed);
        }
        if sockets.is_empty() {
            return Err(Error::InvalidConfig("no local socket to move to"));
        }
        let mut gone = Vec::new();
        for old in self.sockets.clone() {
            if !sockets.contains(&old) {
                gone.extend(self.forget_socket(now, old));
            }
        }
        let creds = self.restart_inner(now)?;
        // The path kept for media during the restart is useless if its socket is gone.
        if self
            .previous
            .as_ref()
            .is_some_and(|p| gone.contains(&p.local.base))
        {
            self.previous = None;
        }
        // New sockets gather after the restart, so their candidates belong to the new
        // generation (and follow the Restarted event).
        self.add_local_sockets(now, sockets);
        Ok(creds)
    }

    /// Sets the peer's ICE credentials and starts connectivity checks. New credentials from the
    /// peer (it restarted) make this side restart too ([`Event::Restarted`]).
    ///
    /// Call it before adding the candidates of the same generation.
    pub fn set_remote_credentials(
        &mut self,
        now: Instant,
        credentials: IceCredentials,
    ) -> Result<(), Error> {
        if credentials.ufrag.is_empty() || credentials.pwd.is_empty() {
            return Err(Error::InvalidCredentials);
        }
        if self.state == ConnectionState::Closed {
            return Err(Error::Closed);
        }
        match &self.remote_credentials {
            Some(c) if *c == credentials => return Ok(()),
            Some(_) => {
                self.restart_inner(now)?;
            }
            None => {}
        }
        // Checks (and the nomination waits, which count from their start) begin with the first
        // remote candidate, so a relay pair cannot win just because candidates trickled late.
        if self.remote_addrs.is_empty() {
            self.agent.set_remote_credentials(&credentials)?;
        } else {
            self.agent.start(now, &credentials)?;
            self.checks_started = true;
        }
        self.remote_credentials = Some(credentials);
        self.pump(now);
        Ok(())
    }

    /// Adds a candidate received from the peer (SDP `candidate` attribute value, with or
    /// without the `candidate:` prefix).
    pub fn add_remote_candidate(&mut self, now: Instant, line: &str) -> Result<(), Error> {
        if self.state == ConnectionState::Closed {
            return Err(Error::Closed);
        }
        if let Some((addr, kind)) = self.agent.add_remote(line)? {
            tracing::debug!(%addr, %kind, "remote candidate");
            self.last_remote_candidate = Some(now);
            if !self.remote_addrs.contains(&addr) {
                self.remote_addrs.push(addr);
            }
            for i in 0..self.sessions.len() {
                self.permit(now, i, addr);
            }
            if !self.checks_started {
                if let Some(c) = self.remote_credentials.clone() {
                    self.agent.start(now, &c)?;
                    self.checks_started = true;
                }
            }
        }
        self.pump(now);
        Ok(())
    }

    /// The peer has sent all its candidates of the current generation (its
    /// [`Event::GatheringComplete`], relayed over signaling; RFC 8838's end-of-candidates).
    ///
    /// Optional: it lets the controlling side fail with [`Error::NoRoute`] as soon as every
    /// candidate pair has failed (about `max_binding_requests × check_interval`, 2 s by default,
    /// after the last pair was formed) instead of waiting
    /// [`ConfigBuilder::remote_candidates_quiet`](crate::ConfigBuilder::remote_candidates_quiet)
    /// for more candidates. A new generation (ICE restart) clears it.
    ///
    /// The controlling side judges its pairs on the assumption that the peer already had this
    /// side's credentials when this side got the peer's (true with offer/answer: the offerer
    /// controls, and the answer is sent after the offer was applied). The controlled side
    /// fails early only when no pair can exist at all (for example no local candidate).
    pub fn remote_gathering_complete(&mut self, now: Instant) {
        self.remote_candidates_complete = true;
        self.check_no_route(now);
        self.pump(now);
    }

    /// Sends a media datagram on the selected path (or, during an ICE restart, on the previous
    /// one). The bytes go out unchanged (inside TURN framing on relay paths).
    ///
    /// Before the first path is selected (the peer's keys can arrive before ICE has chosen a
    /// pair), the datagram is held: the newest [`MAX_HELD_BEFORE_PATH`] go out, in order, as
    /// soon as the first path is selected, unless older than [`HELD_BEFORE_PATH_MAX_AGE`]
    /// by then. Once the connection has failed, [`Error::NotConnected`].
    pub fn send_datagram(&mut self, now: Instant, datagram: &[u8]) -> Result<(), Error> {
        if datagram.len() > MAX_DATAGRAM {
            return Err(Error::DatagramTooLarge(datagram.len()));
        }
        if self.state == ConnectionState::Closed {
            return Err(Error::Closed);
        }
        let Some(path) = self.selected.as_ref().or(self.previous.as_ref()) else {
            if self.ever_connected || self.state == ConnectionState::Failed {
                return Err(Error::NotConnected);
            }
            if self.held.len() >= MAX_HELD_BEFORE_PATH {
                self.held.pop_front();
            }
            self.held.push_back((now, datagram.to_vec()));
            return Ok(());
        };
        let (local, dest) = (path.local.base, path.remote.addr);
        self.route(now, local, dest, datagram.to_vec());
        self.pump(now);
        Ok(())
    }

    /// ICE restart: new local credentials, candidates gathered again, checks restarted once the
    /// peer's new credentials arrive. Media keeps flowing on the previous path until a new one is
    /// selected. Returns the new credentials (also reported as [`Event::Restarted`]).
    pub fn restart(&mut self, now: Instant) -> Result<IceCredentials, Error> {
        if self.state == ConnectionState::Closed {
            return Err(Error::Closed);
        }
        let creds = self.restart_inner(now)?;
        self.pump(now);
        Ok(creds)
    }

    /// Closes the connection and releases TURN allocations (the release requests come out of
    /// [`poll_transmit`](Self::poll_transmit)).
    pub fn close(&mut self, now: Instant) {
        if self.state == ConnectionState::Closed {
            return;
        }
        for s in &mut self.sessions {
            if let Some(relayed) = s.relayed {
                s.client.release(now, relayed);
            }
        }
        self.agent.close();
        self.selected = None;
        self.previous = None;
        self.held.clear();
        self.set_state(ConnectionState::Closed);
        // Drain the release requests only.
        for s in &mut self.sessions {
            while let Some(out) = s.client.poll_out() {
                self.transmits.push_back(Transmit {
                    source: out.local,
                    destination: out.dest,
                    transport: s.transport,
                    contents: out.bytes,
                });
            }
        }
        self.sessions.clear();
    }

    /// The TURN session on local socket `local` with `server` over `transport`.
    fn session_index(
        &self,
        local: SocketAddr,
        server: SocketAddr,
        transport: Transport,
    ) -> Option<usize> {
        self.sessions
            .iter()
            .position(|s| s.server == server && s.socket == local && s.transport == transport)
    }

    // ----- inputs -----

    /// Handles a datagram received on local socket `local` from `from`.
    pub fn handle_packet(
        &mut self,
        now: Instant,
        from: SocketAddr,
        local: SocketAddr,
        bytes: &[u8],
    ) {
        if self.state == ConnectionState::Closed {
            return;
        }
        if let Some(i) = self.session_index(local, from, Transport::Udp) {
            self.sessions[i].client.handle_read(now, local, from, bytes);
        } else if self.config.policy == Policy::RelayOnly {
            tracing::trace!(%from, "direct packet dropped (relay-only)");
        } else {
            self.handle_peer_packet(now, local, from, bytes);
        }
        self.pump(now);
    }

    /// Handles one STUN or ChannelData message received on the stream (TURN over TCP/TLS) that
    /// the driver opened for a [`Transmit`] with this `source` (`local`), `destination`
    /// (`server`) and `transport`. Cut the stream into messages with
    /// [`framing::StreamDecoder`](crate::framing::StreamDecoder).
    pub fn handle_stream_message(
        &mut self,
        now: Instant,
        local: SocketAddr,
        server: SocketAddr,
        transport: Transport,
        message: &[u8],
    ) {
        if self.state == ConnectionState::Closed {
            return;
        }
        if let Some(i) = self.session_index(local, server, transport) {
            self.sessions[i]
                .client
                .handle_read(now, local, server, message);
        } else {
            tracing::trace!(%server, "stream message for no session dropped");
        }
        self.pump(now);
    }

    /// The stream (TURN over TCP/TLS) for this `local`, `server` and `transport` could not be
    /// opened (connection refused, TLS handshake or certificate failure) or was closed or broke
    /// (framing error). The allocation made over it is gone with it (an allocation
    /// belongs to its 5-tuple, here the connection: RFC 8656 §2.2): reported as
    /// [`Error::TurnConnectionFailed`] in an [`Event::ServerError`].
    pub fn stream_failed(
        &mut self,
        now: Instant,
        local: SocketAddr,
        server: SocketAddr,
        transport: Transport,
        reason: String,
    ) {
        if self.state == ConnectionState::Closed {
            return;
        }
        let Some(i) = self
            .sessions
            .iter()
            .position(|s| s.server == server && s.socket == local && s.transport == transport)
        else {
            return;
        };
        let s = &mut self.sessions[i];
        s.alloc_tx = None;
        s.binding_tx = None;
        s.alloc_failed = true;
        s.relayed = None;
        s.perm_tx.clear();
        s.pending.clear();
        tracing::warn!(%server, ?transport, %reason, "TURN connection failed");
        self.events
            .push_back(Event::ServerError(Error::TurnConnectionFailed {
                server,
                transport,
                reason,
            }));
        self.pump(now);
    }

    /// Handles timers. Call when [`poll_timeout`](Self::poll_timeout)'s deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == ConnectionState::Closed {
            return;
        }
        self.agent.handle_timeout(now);
        for s in &mut self.sessions {
            s.client.handle_timeout(now);
        }
        if self.restart_deadline.is_some_and(|d| d <= now) {
            // The restart found no new path in time: the peer is gone.
            self.restart_deadline = None;
            self.previous = None;
            self.fail_no_route();
        }
        self.check_no_route(now);
        self.pump(now);
    }

    // ----- outputs -----

    /// The next datagram to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next media datagram received from the peer (inbound; what the driver sends goes out
    /// of [`poll_transmit`](Self::poll_transmit)).
    #[must_use]
    pub fn recv_datagram(&mut self) -> Option<Vec<u8>> {
        self.datagrams.pop_front()
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should be called next (may be in the past).
    #[must_use]
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        if self.state == ConnectionState::Closed {
            return None;
        }
        let mut t = self.agent.poll_timeout();
        if let Some(d) = self.restart_deadline {
            t = Some(t.map_or(d, |t| t.min(d)));
        }
        for s in &mut self.sessions {
            if let Some(st) = s.client.poll_timeout() {
                t = Some(t.map_or(st, |t| t.min(st)));
            }
        }
        t
    }

    // ----- internals -----

    fn gather_on(&mut self, now: Instant, socket: SocketAddr) {
        let p2p = self.config.policy == Policy::P2pFirst;
        if p2p {
            self.add_host(socket);
        }
        let rto = self.config.turn_rto;
        let mut new_sessions = Vec::new();
        if p2p {
            for &server in &self.config.stun_servers {
                if server.is_ipv4() == socket.is_ipv4() {
                    new_sessions.push((server, Transport::Udp, None));
                }
            }
        }
        for t in &self.config.turn_servers {
            if t.addr.is_ipv4() == socket.is_ipv4() {
                new_sessions.push((t.addr, t.transport.kind(), Some(t.credentials.clone())));
            }
        }
        for (server, transport, creds) in new_sessions {
            let client = match TurnClient::new(
                socket,
                server,
                transport != Transport::Udp,
                creds.as_ref().map(|c| (c.username(), c.password())),
                rto,
            ) {
                Ok(c) => c,
                Err(e) => {
                    self.events.push_back(Event::ServerError(e));
                    continue;
                }
            };
            let mut s = Session {
                socket,
                server,
                transport,
                client,
                turn: creds.is_some(),
                binding_tx: None,
                alloc_tx: None,
                relayed: None,
                mapped: None,
                alloc_failed: false,
                perm_tx: HashMap::new(),
                pending: HashMap::new(),
                refused: Vec::new(),
                stale_retried: Vec::new(),
            };
            Self::start_session(now, &mut s, p2p);
            self.sessions.push(s);
        }
    }

    fn start_session(now: Instant, s: &mut Session, p2p: bool) {
        // A reflexive address seen over TCP is no UDP candidate: Binding only over UDP.
        if p2p && s.transport == Transport::Udp {
            match s.client.binding(now) {
                Ok(t) => s.binding_tx = Some(t),
                Err(e) => tracing::debug!(error = %e, "STUN binding not sent"),
            }
        }
        if s.turn && s.relayed.is_none() {
            match s.client.allocate(now) {
                Ok(t) => {
                    s.alloc_tx = Some(t);
                    s.alloc_failed = false;
                }
                Err(e) => tracing::debug!(error = %e, "TURN allocate not sent"),
            }
        }
    }

    /// Drops socket `socket`: releases its allocations (requests queued as transmits) and drops
    /// its sessions. Returns the local bases that went with it (the socket and its relayed
    /// addresses); empty if the socket was unknown.
    fn forget_socket(&mut self, now: Instant, socket: SocketAddr) -> Vec<SocketAddr> {
        if !self.sockets.contains(&socket) {
            return Vec::new();
        }
        self.sockets.retain(|s| *s != socket);
        let mut gone = vec![socket];
        for s in self.sessions.iter_mut().filter(|s| s.socket == socket) {
            if let Some(relayed) = s.relayed {
                s.client.release(now, relayed);
                gone.push(relayed);
            }
            while let Some(out) = s.client.poll_out() {
                self.transmits.push_back(Transmit {
                    source: out.local,
                    destination: out.dest,
                    transport: s.transport,
                    contents: out.bytes,
                });
            }
        }
        self.sessions.retain(|s| s.socket != socket);
        gone
    }

    fn add_host(&mut self, socket: SocketAddr) {
        match self.agent.add_host(socket) {
            Ok(Some(line)) => self.events.push_back(Event::LocalCandidate(line)),
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, %socket, "host candidate rejected"),
        }
    }

    fn restart_inner(&mut self, now: Instant) -> Result<IceCredentials, Error> {
        if let Some(p) = self.selected.take() {
            self.previous = Some(p);
        }
        self.agent.restart(now)?;
        self.remote_credentials = None;
        self.remote_addrs.clear();
        self.remote_candidates_complete = false;
        self.last_remote_candidate = None;
        self.checks_started = false;
        self.restart_deadline =
            Some(now + self.config.consent_timeout + self.config.failed_timeout);
        self.gathering_reported = false;
        let creds = self.agent.local_credentials();
        self.events.push_back(Event::Restarted {
            credentials: creds.clone(),
        });
        self.set_state(ConnectionState::Checking);
        // Gather again on every socket: host candidates, fresh reflexive addresses, and relay
        // candidates (live allocations are kept: they are bound to the 5-tuple, not to ICE).
        let p2p = self.config.policy == Policy::P2pFirst;
        for socket in self.sockets.clone() {
            if p2p {
                self.add_host(socket);
            }
        }
        for i in 0..self.sessions.len() {
            let s = &mut self.sessions[i];
            s.mapped = None;
            s.binding_tx = None;
            s.refused.clear();
            s.stale_retried.clear();
            Self::start_session(now, s, p2p);
            if let Some(relayed) = s.relayed {
                match self.agent.add_relay(relayed) {
                    Ok(Some(line)) => self.events.push_back(Event::LocalCandidate(line)),
                    Ok(None) => {}
                    Err(e) => tracing::debug!(error = %e, "relay candidate rejected"),
                }
            }
        }
        Ok(creds)
    }

    /// State `Failed` with [`Error::NoRoute`], reported once.
    fn fail_no_route(&mut self) {
        self.selected = None;
        self.held.clear();
        if self.state != ConnectionState::Failed {
            self.set_state(ConnectionState::Failed);
            self.events.push_back(Event::Failed(Error::NoRoute));
        }
    }

    /// Fails early with [`Error::NoRoute`] when no path can come any more, before this side has
    /// ever connected (after a connection, restarts and their deadline decide) and once its own
    /// gathering is complete:
    ///
    /// * it has no candidate at all (say every TURN allocation was refused under
    ///   [`Policy::RelayOnly`]): nothing can ever be checked;
    /// * or the peer's candidates are complete (it said so, or none came for the quiet time)
    ///   and no pair can be formed with them;
    /// * or, on the controlling side only, they are complete and every pair has failed. The
    ///   controlled side does not judge its failed pairs: its checks may have failed only
    ///   because the controlling side did not have its credentials yet (the answer still in
    ///   flight), and the controlling side's later checks revive them. It learns the verdict
    ///   from the controlling side (which ends the call) or from the agent's timeout.
    fn check_no_route(&mut self, now: Instant) {
        if self.ever_connected
            || self.selected.is_some()
            || !matches!(self.state, ConnectionState::New | ConnectionState::Checking)
            || self.remote_credentials.is_none()
            || !self.gathering_reported
        {
            return;
        }
        if self.agent.local_candidate_count() == 0 {
            tracing::info!("no local candidate; no route");
            self.fail_no_route();
            return;
        }
        let remote_done = self.remote_candidates_complete
            || self
                .last_remote_candidate
                .is_some_and(|t| now.saturating_duration_since(t) >= self.config.remote_quiet);
        if !remote_done {
            return;
        }
        let (pairs, failed) = self.agent.pair_summary(now);
        if pairs == 0 || (failed == pairs && self.agent.is_controlling()) {
            tracing::info!(pairs, "every candidate pair failed; no route");
            self.fail_no_route();
        }
    }

    fn set_state(&mut self, state: ConnectionState) {
        if self.state != state {
            self.state = state;
            self.events.push_back(Event::StateChanged(state));
        }
    }

    fn path_info(&self, now: Instant, p: &Path) -> PathInfo {
        let kind = if p.local.kind == CandidateKind::Relay || p.remote.kind == CandidateKind::Relay
        {
            CandidateKind::Relay
        } else {
            p.local.kind
        };
        PathInfo {
            kind,
            local_kind: p.local.kind,
            remote_kind: p.remote.kind,
            local: p.local.addr,
            remote: p.remote.addr,
            rtt: self.agent.rtt(now, &p.local.id, &p.remote.id),
        }
    }

    /// A packet from a peer, on host socket `local` or (via TURN) on relayed address `local`.
    fn handle_peer_packet(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        bytes: &[u8],
    ) {
        match demux::classify(bytes) {
            PacketKind::Stun => self.agent.handle_stun(now, local, from, bytes),
            PacketKind::Media => {
                let on_path = |p: &Option<Path>| {
                    p.as_ref()
                        .is_some_and(|p| p.local.base == local && p.remote.addr == from)
                };
                if on_path(&self.selected)
                    || on_path(&self.previous)
                    || self.agent.accept_media(now, local, from)
                {
                    self.datagrams.push_back(bytes.to_vec());
                } else {
                    tracing::trace!(%from, "media from an unknown address dropped");
                }
            }
            other => tracing::trace!(%from, kind = ?other, "packet dropped"),
        }
    }

    /// Sends `bytes` from local candidate base `local` (host socket or relayed address) to `dest`.
    fn route(&mut self, now: Instant, local: SocketAddr, dest: SocketAddr, bytes: Vec<u8>) {
        if let Some(i) = self.sessions.iter().position(|s| s.relayed == Some(local)) {
            let s = &mut self.sessions[i];
            if s.pending.contains_key(&dest) {
                Self::queue(s, dest, bytes);
                return;
            }
            match s.client.send_to(now, local, dest, &bytes) {
                RelaySend::Sent => {}
                RelaySend::NoPermission => {
                    Self::queue(s, dest, bytes);
                    self.permit(now, i, dest);
                }
                RelaySend::Gone => tracing::debug!(%local, "allocation gone; packet dropped"),
            }
        } else if self.sockets.contains(&local) {
            if self.config.policy == Policy::RelayOnly {
                tracing::trace!("direct send suppressed (relay-only)");
                return;
            }
            self.transmits.push_back(Transmit {
                source: local,
                destination: dest,
                transport: Transport::Udp,
                contents: bytes,
            });
        } else {
            tracing::trace!(%local, "no socket for local address; packet dropped");
        }
    }

    fn queue(s: &mut Session, dest: SocketAddr, bytes: Vec<u8>) {
        let q = s.pending.entry(dest).or_default();
        if q.len() >= MAX_PENDING_PER_PEER {
            q.pop_front();
        }
        q.push_back(bytes);
    }

    /// Makes sure allocation `i` has (or is getting) a permission for `peer`.
    fn permit(&mut self, now: Instant, i: usize, peer: SocketAddr) {
        let s = &mut self.sessions[i];
        let Some(relayed) = s.relayed else { return };
        if peer.is_ipv4() != relayed.is_ipv4() || s.refused.contains(&peer) {
            return;
        }
        match s.client.create_permission(now, relayed, peer) {
            Ok(Some(tx)) => {
                s.perm_tx.insert(tx, peer);
                s.pending.entry(peer).or_default();
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, %peer, "permission not requested"),
        }
    }

    fn pump(&mut self, now: Instant) {
        loop {
            let mut progressed = false;
            while let Some(out) = self.agent.poll_out() {
                progressed = true;
                self.route(now, out.local, out.dest, out.bytes);
            }
            while let Some(ev) = self.agent.poll_event() {
                progressed = true;
                self.on_agent_event(now, ev);
            }
            for i in 0..self.sessions.len() {
                while let Some(ev) = self.sessions[i].client.poll_event() {
                    progressed = true;
                    self.on_turn_event(now, i, ev);
                }
                let transport = self.sessions[i].transport;
                while let Some(out) = self.sessions[i].client.poll_out() {
                    progressed = true;
                    self.transmits.push_back(Transmit {
                        source: out.local,
                        destination: out.dest,
                        transport,
                        contents: out.bytes,
                    });
                }
            }
            if !progressed {
                break;
            }
        }
        if self.gathering_started
            && !self.gathering_reported
            && !self.sessions.iter().any(Session::gathering)
        {
            self.gathering_reported = true;
            self.events.push_back(Event::GatheringComplete);
        }
    }

    fn on_agent_event(&mut self, now: Instant, ev: AgentEvent) {
        match ev {
            AgentEvent::State(AgentState::Checking) => self.set_state(ConnectionState::Checking),
            AgentEvent::State(AgentState::Connected) => {
                if self.selected.is_some() {
                    self.set_state(ConnectionState::Connected);
                }
            }
            AgentEvent::State(AgentState::Disconnected) => {
                self.set_state(ConnectionState::Disconnected);
                if self.config.restart_on_consent_loss && self.remote_credentials.is_some() {
                    tracing::info!("consent lost; restarting ICE");
                    if let Err(e) = self.restart_inner(now) {
                        self.events.push_back(Event::ServerError(e));
                    }
                }
            }
            AgentEvent::State(AgentState::Failed) => {
                if self.ever_connected && self.config.restart_on_consent_loss {
                    tracing::info!("connection failed; restarting ICE");
                    if let Err(e) = self.restart_inner(now) {
                        self.events.push_back(Event::ServerError(e));
                    }
                } else {
                    self.fail_no_route();
                }
            }
            AgentEvent::State(AgentState::Other) => {}
            AgentEvent::Selected { local, remote } => {
                let path = Path { local, remote };
                let info = self.path_info(now, &path);
                tracing::info!(kind = %info.kind, local = %info.local, remote = %info.remote, "path selected");
                let (local, dest) = (path.local.base, path.remote.addr);
                self.selected = Some(path);
                self.previous = None;
                self.restart_deadline = None;
                self.ever_connected = true;
                self.set_state(ConnectionState::Connected);
                self.events.push_back(Event::PathSelected(info));
                // What was sent while ICE was still checking goes out now, if still fresh.
                let held = std::mem::take(&mut self.held);
                let fresh = held.into_iter().filter(|(at, _)| {
                    now.saturating_duration_since(*at) <= HELD_BEFORE_PATH_MAX_AGE
                });
                for (_, d) in fresh {
                    self.route(now, local, dest, d);
                }
            }
        }
    }

    fn on_turn_event(&mut self, now: Instant, i: usize, ev: TurnEvent) {
        let server = self.sessions[i].server;
        match ev {
            TurnEvent::Mapped(tx, mapped) => {
                let s = &mut self.sessions[i];
                if s.binding_tx != Some(tx) {
                    return;
                }
                s.binding_tx = None;
                s.mapped = Some(mapped);
                let base = s.socket;
                if mapped != base && self.config.policy == Policy::P2pFirst {
                    match self.agent.add_srflx(mapped, base) {
                        Ok(Some(line)) => self.events.push_back(Event::LocalCandidate(line)),
                        Ok(None) => {}
                        Err(e) => tracing::debug!(error = %e, "srflx candidate rejected"),
                    }
                }
            }
            TurnEvent::BindingFailed(tx) => {
                let s = &mut self.sessions[i];
                if s.binding_tx == Some(tx) {
                    s.binding_tx = None;
                }
            }
            TurnEvent::Allocated(tx, relayed) => {
                let s = &mut self.sessions[i];
                if s.alloc_tx.map(|t| t.0) != Some(tx) {
                    return;
                }
                s.alloc_tx = None;
                s.relayed = Some(relayed);
                tracing::debug!(%relayed, %server, "TURN allocation");
                match self.agent.add_relay(relayed) {
                    Ok(Some(line)) => self.events.push_back(Event::LocalCandidate(line)),
                    Ok(None) => {}
                    Err(e) => tracing::debug!(error = %e, "relay candidate rejected"),
                }
                for peer in self.remote_addrs.clone() {
                    self.permit(now, i, peer);
                }
            }
            TurnEvent::AllocateFailed(tx, code) => {
                let s = &mut self.sessions[i];
                if s.alloc_tx.map(|t| t.0) != Some(tx) {
                    return;
                }
                s.alloc_tx = None;
                s.alloc_failed = true;
                let err = if code == 401 {
                    Error::TurnAuthFailed { server }
                } else {
                    Error::TurnAllocationRefused { server, code }
                };
                tracing::warn!(error = %err, "TURN allocation failed");
                self.events.push_back(Event::ServerError(err));
            }
            TurnEvent::Timeout(tx) => {
                let s = &mut self.sessions[i];
                let mut report = false;
                if s.binding_tx == Some(tx) {
                    s.binding_tx = None;
                    report = !s.turn;
                }
                if s.alloc_tx.is_some_and(|(a, b)| a == tx || b == tx) {
                    s.alloc_tx = None;
                    s.alloc_failed = true;
                    report = true;
                }
                if let Some(peer) = s.perm_tx.remove(&tx) {
                    s.pending.remove(&peer);
                    s.refused.push(peer);
                    report = true;
                }
                if report {
                    self.events
                        .push_back(Event::ServerError(Error::Timeout { server }));
                }
            }
            TurnEvent::Permitted(tx, peer) => {
                let s = &mut self.sessions[i];
                s.perm_tx.remove(&tx);
                let queued = s.pending.remove(&peer).unwrap_or_default();
                if let Some(relayed) = s.relayed {
                    for bytes in queued {
                        let _ = s.client.send_to(now, relayed, peer, &bytes);
                    }
                }
            }
            TurnEvent::PermissionFailed(tx, code) => {
                let s = &mut self.sessions[i];
                let Some(peer) = s.perm_tx.remove(&tx) else {
                    return;
                };
                if code == 438 && !s.stale_retried.contains(&peer) {
                    // Stale nonce: the client took the new nonce; ask again, once.
                    s.stale_retried.push(peer);
                    self.permit(now, i, peer);
                    return;
                }
                s.pending.remove(&peer);
                s.refused.push(peer);
                let err = Error::TurnPermissionRefused { server, peer, code };
                tracing::warn!(error = %err, "TURN permission refused");
                self.events.push_back(Event::ServerError(err));
            }
            TurnEvent::Data(peer, bytes) => {
                if let Some(relayed) = self.sessions[i].relayed {
                    self.handle_peer_packet(now, relayed, peer, &bytes);
                }
            }
        }
    }
}

//! The one module that talks to webrtc-rs (`rtc-ice`, `rtc-turn`, `rtc-stun`, `rtc-shared`).
//!
//! Everything outside this module sees hush types only: socket addresses, byte vectors,
//! [`AgentEvent`] and [`TurnEvent`]. Swapping the ICE/TURN implementation means rewriting this
//! file and nothing else.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc_ice::candidate::candidate_host::CandidateHostConfig;
use rtc_ice::candidate::candidate_pair::CandidatePairState;
use rtc_ice::candidate::candidate_relay::CandidateRelayConfig;
use rtc_ice::candidate::candidate_server_reflexive::CandidateServerReflexiveConfig;
use rtc_ice::candidate::{unmarshal_candidate, Candidate, CandidateConfig, CandidateType};
use rtc_ice::mdns::MulticastDnsMode;
use rtc_ice::state::ConnectionState as IceState;
use rtc_ice::{Agent, AgentConfig, Event as IceEvent};
use rtc_shared::error::Error as StackError;
use rtc_shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use rtc_turn::client::{Client as TurnInner, ClientConfig, Event as TurnInnerEvent};
use sansio::Protocol as _;

use crate::candidate::{CandidateKind, IceCredentials};
use crate::config::{Config, Role};
use crate::error::Error;

/// A STUN transaction id.
pub(crate) type TxId = [u8; 12];

fn stack(e: StackError) -> Error {
    Error::Stack(e.to_string())
}

/// Extracts the STUN error code from the text rtc-turn puts in its error events
/// (`"... (error 401: Unauthorized)"`); 0 when there is none.
pub(crate) fn stun_error_code(e: &StackError) -> u16 {
    let text = e.to_string();
    text.split("(error ")
        .nth(1)
        .and_then(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .unwrap_or(0)
}

fn kind_of(c: &Candidate) -> CandidateKind {
    match c.candidate_type() {
        CandidateType::ServerReflexive => CandidateKind::ServerReflexive,
        CandidateType::PeerReflexive => CandidateKind::PeerReflexive,
        CandidateType::Relay => CandidateKind::Relay,
        _ => CandidateKind::Host,
    }
}

fn ctx(local: SocketAddr, peer: SocketAddr) -> TransportContext {
    TransportContext {
        local_addr: local,
        peer_addr: peer,
        transport_protocol: TransportProtocol::UDP,
        ecn: None,
    }
}

/// Candidate information handed out of the adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CandInfo {
    /// The candidate's transport address.
    pub(crate) addr: SocketAddr,
    /// The address packets for it are sent from (the base).
    pub(crate) base: SocketAddr,
    pub(crate) kind: CandidateKind,
    pub(crate) id: String,
}

fn info(c: &Candidate) -> CandInfo {
    CandInfo {
        addr: c.addr(),
        base: c.base_addr(),
        kind: kind_of(c),
        id: c.id().to_owned(),
    }
}

/// What the ICE agent reports.
#[derive(Debug)]
pub(crate) enum AgentEvent {
    State(AgentState),
    Selected { local: CandInfo, remote: CandInfo },
}

/// The agent's connection state, reduced to what hush acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AgentState {
    Checking,
    Connected,
    Disconnected,
    Failed,
    Other,
}

/// A packet the agent or a TURN client wants sent: from local socket `local` to `dest`.
#[derive(Debug)]
pub(crate) struct Out {
    pub(crate) local: SocketAddr,
    pub(crate) dest: SocketAddr,
    pub(crate) bytes: Vec<u8>,
}

/// The rtc-ice agent, behind hush-shaped methods.
pub(crate) struct IceAgent {
    inner: Agent,
}

impl IceAgent {
    pub(crate) fn new(now: Instant, config: &Config, role: Role) -> Result<Self, Error> {
        let waits = config.acceptance_waits();
        let agent_config = AgentConfig {
            multicast_dns_mode: MulticastDnsMode::Disabled,
            disconnected_timeout: Some(config.consent_timeout),
            failed_timeout: Some(config.failed_timeout),
            keepalive_interval: Some(config.keepalive_interval),
            check_interval: config.check_interval,
            max_binding_requests: Some(config.max_binding_requests),
            is_controlling: role == Role::Controlling,
            host_acceptance_min_wait: Some(waits.host),
            srflx_acceptance_min_wait: Some(waits.srflx),
            prflx_acceptance_min_wait: Some(waits.prflx),
            relay_acceptance_min_wait: Some(waits.relay),
            ..AgentConfig::default()
        };
        let provider = rtc_ice::crypto::default_provider()
            .map_err(|e| Error::Stack(format!("crypto provider: {e}")))?;
        let inner = Agent::new(now, Arc::new(agent_config), provider).map_err(stack)?;
        Ok(Self { inner })
    }

    pub(crate) fn local_credentials(&self) -> IceCredentials {
        let c = self.inner.get_local_credentials();
        IceCredentials::new(c.ufrag.clone(), c.pwd.clone())
    }

    fn add_local(&mut self, c: Result<Candidate, StackError>) -> Result<Option<String>, Error> {
        let c = c.map_err(stack)?;
        let line = c.marshal();
        Ok(self
            .inner
            .add_local_candidate(c)
            .map_err(stack)?
            .then_some(line))
    }

    /// Adds a host candidate; returns its SDP line if it was new.
    pub(crate) fn add_host(&mut self, addr: SocketAddr) -> Result<Option<String>, Error> {
        self.add_local(
            CandidateHostConfig {
                base_config: CandidateConfig {
                    network: "udp".into(),
                    address: addr.ip().to_string(),
                    port: addr.port(),
                    component: 1,
                    ..CandidateConfig::default()
                },
                ..CandidateHostConfig::default()
            }
            .new_candidate_host(),
        )
    }

    /// Adds a server-reflexive candidate `mapped` whose base is the host socket `base`.
    pub(crate) fn add_srflx(
        &mut self,
        mapped: SocketAddr,
        base: SocketAddr,
    ) -> Result<Option<String>, Error> {
        self.add_local(
            CandidateServerReflexiveConfig {
                base_config: CandidateConfig {
                    network: "udp".into(),
                    address: mapped.ip().to_string(),
                    port: mapped.port(),
                    component: 1,
                    ..CandidateConfig::default()
                },
                rel_addr: base.ip().to_string(),
                rel_port: base.port(),
                url: None,
            }
            .new_candidate_server_reflexive(),
        )
    }

    /// Adds a relay candidate at `relayed`. Its related address is left unspecified
    /// (`0.0.0.0:0`) so the peer does not learn this device's address from it.
    pub(crate) fn add_relay(&mut self, relayed: SocketAddr) -> Result<Option<String>, Error> {
        let unspecified = if relayed.is_ipv4() {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
        };
        self.add_local(
            CandidateRelayConfig {
                base_config: CandidateConfig {
                    network: "udp".into(),
                    address: relayed.ip().to_string(),
                    port: relayed.port(),
                    component: 1,
                    ..CandidateConfig::default()
                },
                rel_addr: unspecified.to_string(),
                rel_port: 0,
                url: None,
            }
            .new_candidate_relay(),
        )
    }

    /// Parses and adds a remote candidate line; returns its address and kind when it was added.
    pub(crate) fn add_remote(
        &mut self,
        line: &str,
    ) -> Result<Option<(SocketAddr, CandidateKind)>, Error> {
        let line = line.trim();
        let line = line.strip_prefix("a=").unwrap_or(line);
        let line = line.strip_prefix("candidate:").unwrap_or(line);
        let c = unmarshal_candidate(line).map_err(|e| Error::InvalidCandidate(e.to_string()))?;
        let addr = c.addr();
        let kind = kind_of(&c);
        if addr.port() == 0 || addr.ip().is_unspecified() || addr.ip().is_multicast() {
            return Err(Error::InvalidCandidate("unusable address".into()));
        }
        let added = self
            .inner
            .add_remote_candidate(c)
            .map_err(|e| Error::InvalidCandidate(e.to_string()))?;
        Ok(added.then_some((addr, kind)))
    }

    /// Sets the remote credentials without starting checks (inbound checks are answered).
    pub(crate) fn set_remote_credentials(&mut self, remote: &IceCredentials) -> Result<(), Error> {
        self.inner
            .set_remote_credentials(remote.ufrag.clone(), remote.pwd.clone())
            .map_err(|_| Error::InvalidCredentials)
    }

    /// Sets the remote credentials and starts (or continues) connectivity checks.
    pub(crate) fn start(&mut self, now: Instant, remote: &IceCredentials) -> Result<(), Error> {
        let controlling = self.inner.role();
        self.inner
            .start_connectivity_checks(now, controlling, remote.ufrag.clone(), remote.pwd.clone())
            .map_err(|_| Error::InvalidCredentials)
    }

    /// ICE restart: new local credentials, all candidates and pairs dropped.
    pub(crate) fn restart(&mut self, now: Instant) -> Result<(), Error> {
        self.inner
            .restart(now, String::new(), String::new(), false)
            .map_err(stack)
    }

    /// Feeds a STUN message received on local candidate `local` from `from`.
    pub(crate) fn handle_stun(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        bytes: &[u8],
    ) {
        let msg = TaggedBytesMut {
            now,
            transport: ctx(local, from),
            message: BytesMut::from(bytes),
        };
        if let Err(e) = self.inner.handle_read(msg) {
            tracing::trace!(%from, %local, error = %e, "STUN message dropped by the agent");
        }
    }

    /// Whether media from `from` on `local` comes from a candidate the agent knows (and records it
    /// as seen for consent purposes).
    pub(crate) fn accept_media(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
    ) -> bool {
        self.inner.is_valid_non_stun_traffic(now, ctx(local, from))
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if let Err(e) = self.inner.handle_timeout(now) {
            tracing::debug!(error = %e, "ICE agent timeout handling failed");
        }
    }

    pub(crate) fn poll_timeout(&mut self) -> Option<Instant> {
        self.inner.poll_timeout()
    }

    pub(crate) fn poll_out(&mut self) -> Option<Out> {
        self.inner.poll_write().map(|m| Out {
            local: m.transport.local_addr,
            dest: m.transport.peer_addr,
            bytes: m.message.to_vec(),
        })
    }

    pub(crate) fn poll_event(&mut self) -> Option<AgentEvent> {
        loop {
            let ev = self.inner.poll_event()?;
            return Some(match ev.event {
                IceEvent::ConnectionStateChange(s) => AgentEvent::State(match s {
                    IceState::Checking => AgentState::Checking,
                    IceState::Connected | IceState::Completed => AgentState::Connected,
                    IceState::Disconnected => AgentState::Disconnected,
                    IceState::Failed => AgentState::Failed,
                    _ => AgentState::Other,
                }),
                IceEvent::SelectedCandidatePairChange(l, r) => AgentEvent::Selected {
                    local: info(&l),
                    remote: info(&r),
                },
                _ => continue,
            });
        }
    }

    /// How many local candidates the agent holds.
    pub(crate) fn local_candidate_count(&self) -> usize {
        self.inner.get_local_candidates().len()
    }

    /// Whether this agent is (currently) the controlling one.
    pub(crate) fn is_controlling(&self) -> bool {
        self.inner.role()
    }

    /// How many candidate pairs exist, and how many of them have failed.
    pub(crate) fn pair_summary(&self, now: Instant) -> (usize, usize) {
        let stats = self.inner.get_candidate_pairs_stats(now);
        let failed = stats
            .iter()
            .filter(|p| p.state == CandidatePairState::Failed)
            .count();
        (stats.len(), failed)
    }

    /// The latest round-trip time measured on the pair of the two candidate ids.
    pub(crate) fn rtt(&self, now: Instant, local_id: &str, remote_id: &str) -> Option<Duration> {
        self.inner
            .get_candidate_pairs_stats(now)
            .into_iter()
            .find(|p| p.local_candidate_id == local_id && p.remote_candidate_id == remote_id)
            .map(|p| p.current_round_trip_time)
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64)
    }

    pub(crate) fn close(&mut self) {
        let _ = self.inner.close();
    }
}

/// What a TURN/STUN client reports.
#[derive(Debug)]
pub(crate) enum TurnEvent {
    /// A transaction got no answer.
    Timeout(TxId),
    /// Binding success: our server-reflexive address.
    Mapped(TxId, SocketAddr),
    /// Binding failure.
    BindingFailed(TxId),
    /// Allocation done: the relayed address.
    Allocated(TxId, SocketAddr),
    /// Allocation refused, with the STUN error code (0 if none).
    AllocateFailed(TxId, u16),
    /// Permission installed for a peer.
    Permitted(TxId, SocketAddr),
    /// Permission refused, with the STUN error code (0 if none).
    PermissionFailed(TxId, u16),
    /// Data from a peer through the allocation.
    Data(SocketAddr, Vec<u8>),
}

/// Outcome of sending through an allocation.
pub(crate) enum RelaySend {
    Sent,
    NoPermission,
    Gone,
}

/// An rtc-turn client bound to one local socket and one server, used for STUN Binding (server
/// reflexive discovery) and, when credentials are given, a TURN allocation.
pub(crate) struct TurnClient {
    inner: TurnInner,
}

impl TurnClient {
    pub(crate) fn new(
        local: SocketAddr,
        server: SocketAddr,
        stream: bool,
        credentials: Option<(&str, &str)>,
        rto: Duration,
    ) -> Result<Self, Error> {
        let (username, password, turn) = match credentials {
            Some((u, p)) => (u.to_owned(), p.to_owned(), server.to_string()),
            None => (String::new(), String::new(), String::new()),
        };
        let config = ClientConfig {
            stun_serv_addr: server.to_string(),
            turn_serv_addr: turn,
            local_addr: local,
            // Over a stream rtc-turn sends each request once (no retransmission) and still
            // asks for a UDP relay (REQUESTED-TRANSPORT); the framing is hush's (crate::framing).
            transport_protocol: if stream {
                TransportProtocol::TCP
            } else {
                TransportProtocol::UDP
            },
            username,
            password,
            realm: String::new(),
            software: String::new(),
            rto_in_ms: u64::try_from(rto.as_millis()).unwrap_or(200).max(1),
            allocation_refresh_interval_cap: None,
        };
        let provider = rtc_turn::crypto::default_provider()
            .map_err(|e| Error::Stack(format!("crypto provider: {e}")))?;
        let inner = TurnInner::new(config, provider).map_err(stack)?;
        Ok(Self { inner })
    }

    pub(crate) fn binding(&mut self, now: Instant) -> Result<TxId, Error> {
        self.inner
            .send_binding_request(now)
            .map(|t| t.0)
            .map_err(stack)
    }

    /// Starts an allocation. Returns the id the final answer will carry, and the id of the first
    /// (unauthenticated) attempt, which is the one a timeout reports if the server never answers.
    pub(crate) fn allocate(&mut self, now: Instant) -> Result<(TxId, TxId), Error> {
        let tid = self.inner.allocate(now).map_err(stack)?.0;
        let mut first = tid;
        first[11] = first[11].wrapping_sub(1);
        Ok((tid, first))
    }

    pub(crate) fn create_permission(
        &mut self,
        now: Instant,
        relayed: SocketAddr,
        peer: SocketAddr,
    ) -> Result<Option<TxId>, Error> {
        let mut relay = self.inner.relay(relayed).map_err(stack)?;
        relay
            .create_permission(now, peer)
            .map(|t| t.map(|t| t.0))
            .map_err(stack)
    }

    pub(crate) fn send_to(
        &mut self,
        now: Instant,
        relayed: SocketAddr,
        peer: SocketAddr,
        data: &[u8],
    ) -> RelaySend {
        let Ok(mut relay) = self.inner.relay(relayed) else {
            return RelaySend::Gone;
        };
        match relay.send_to(now, data, peer) {
            Ok(()) => RelaySend::Sent,
            Err(StackError::ErrNoPermission) => RelaySend::NoPermission,
            Err(e) => {
                tracing::debug!(error = %e, "send through TURN failed");
                RelaySend::Gone
            }
        }
    }

    /// Releases an allocation (refresh with lifetime 0).
    pub(crate) fn release(&mut self, now: Instant, relayed: SocketAddr) {
        if let Ok(mut relay) = self.inner.relay(relayed) {
            let _ = relay.close(now);
        }
    }

    pub(crate) fn handle_read(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        bytes: &[u8],
    ) {
        let msg = TaggedBytesMut {
            now,
            transport: ctx(local, from),
            message: BytesMut::from(bytes),
        };
        if let Err(e) = self.inner.handle_read(msg) {
            tracing::trace!(%from, error = %e, "packet from STUN/TURN server dropped");
        }
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        let _ = self.inner.handle_timeout(now);
    }

    pub(crate) fn poll_timeout(&mut self) -> Option<Instant> {
        self.inner.poll_timeout()
    }

    pub(crate) fn poll_out(&mut self) -> Option<Out> {
        self.inner.poll_write().map(|m| Out {
            local: m.transport.local_addr,
            dest: m.transport.peer_addr,
            bytes: m.message.to_vec(),
        })
    }

    pub(crate) fn poll_event(&mut self) -> Option<TurnEvent> {
        loop {
            let ev = self.inner.poll_event()?;
            return Some(match ev {
                TurnInnerEvent::TransactionTimeout(t) => TurnEvent::Timeout(t.0),
                TurnInnerEvent::BindingResponse(t, a) => TurnEvent::Mapped(t.0, a),
                TurnInnerEvent::BindingError(t, _) => TurnEvent::BindingFailed(t.0),
                TurnInnerEvent::AllocateResponse(t, a) => TurnEvent::Allocated(t.0, a),
                TurnInnerEvent::AllocateError(t, e) => {
                    TurnEvent::AllocateFailed(t.0, stun_error_code(&e))
                }
                TurnInnerEvent::CreatePermissionResponse(t, p) => TurnEvent::Permitted(t.0, p),
                TurnInnerEvent::CreatePermissionError(t, e) => {
                    let code = if e == StackError::ErrTryAgain {
                        438
                    } else {
                        stun_error_code(&e)
                    };
                    TurnEvent::PermissionFailed(t.0, code)
                }
                TurnInnerEvent::DataIndicationOrChannelData(_, from, data) => {
                    TurnEvent::Data(from, data.to_vec())
                }
                _ => continue,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_code_is_extracted() {
        let e = StackError::Other("Allocate error response (error 401: Unauthorized)".into());
        assert_eq!(stun_error_code(&e), 401);
        assert_eq!(stun_error_code(&StackError::Other("x".into())), 0);
    }
}

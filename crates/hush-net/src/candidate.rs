//! Candidate, credential and path types.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// The type of an ICE candidate, which is also the type of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CandidateKind {
    /// An address of a local interface: a direct path.
    Host,
    /// The address a STUN server saw (through a NAT): a direct path through the NAT.
    ServerReflexive,
    /// An address learned from a peer's connectivity check: a direct path.
    PeerReflexive,
    /// An address on a TURN server: media is relayed.
    Relay,
}

impl CandidateKind {
    /// Short name as in SDP (`host`, `srflx`, `prflx`, `relay`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::ServerReflexive => "srflx",
            Self::PeerReflexive => "prflx",
            Self::Relay => "relay",
        }
    }
}

impl fmt::Display for CandidateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// ICE credentials of one side (`ice-ufrag` / `ice-pwd`), exchanged through signaling.
/// They change on every ICE restart.
#[derive(Clone, PartialEq, Eq)]
pub struct IceCredentials {
    /// Username fragment.
    pub ufrag: String,
    /// Password.
    pub pwd: String,
}

impl IceCredentials {
    /// Bundles a ufrag and a password.
    pub fn new(ufrag: impl Into<String>, pwd: impl Into<String>) -> Self {
        Self {
            ufrag: ufrag.into(),
            pwd: pwd.into(),
        }
    }
}

impl fmt::Debug for IceCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IceCredentials")
            .field("ufrag", &self.ufrag)
            .field("pwd", &"<redacted>")
            .finish()
    }
}

/// The path media currently takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    /// The type of the path: the local candidate's type, or [`CandidateKind::Relay`] when
    /// either end is relayed.
    pub kind: CandidateKind,
    /// Type of the local candidate.
    pub local_kind: CandidateKind,
    /// Type of the remote candidate.
    pub remote_kind: CandidateKind,
    /// The local candidate address (a relayed address on a TURN server for relay paths).
    pub local: SocketAddr,
    /// The remote candidate address.
    pub remote: SocketAddr,
    /// Round-trip time measured by connectivity checks, when known.
    pub rtt: Option<Duration>,
}

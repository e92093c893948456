//! The crate's error type.

use std::net::SocketAddr;

/// Everything that can go wrong in hush-net.
///
/// Errors caused by bytes received from the network never reach the caller as a panic: a
/// malformed or unexpected packet is dropped (and logged); only conditions the application must
/// act on surface here or as an [`Event`](crate::Event).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No candidate pair could be validated: the peers cannot reach each other on any path
    /// (including any configured relay).
    #[error("no route to the peer: every candidate pair failed")]
    NoRoute,
    /// The TURN server rejected the credentials (STUN error 401 after authenticating).
    #[error("TURN server {server} rejected the credentials")]
    TurnAuthFailed {
        /// The TURN server.
        server: SocketAddr,
    },
    /// The TURN server refused to install a permission for a peer (typically 403 Forbidden).
    #[error("TURN server {server} refused a permission for {peer} (STUN error {code})")]
    TurnPermissionRefused {
        /// The TURN server.
        server: SocketAddr,
        /// The peer address the permission was for.
        peer: SocketAddr,
        /// The STUN error code the server answered with (0 if it gave none).
        code: u16,
    },
    /// The TURN server answered an allocation with an error other than authentication.
    #[error("TURN server {server} refused the allocation (STUN error {code})")]
    TurnAllocationRefused {
        /// The TURN server.
        server: SocketAddr,
        /// The STUN error code the server answered with (0 if it gave none).
        code: u16,
    },
    /// The TCP or TLS connection to a TURN server could not be opened (refused, TLS handshake
    /// or certificate verification failed) or broke; any allocation made over it is gone.
    #[error("TURN server {server} over {transport:?}: {reason}")]
    TurnConnectionFailed {
        /// The TURN server.
        server: SocketAddr,
        /// The transport that failed.
        transport: crate::config::Transport,
        /// What happened (for logs).
        reason: String,
    },
    /// A STUN or TURN server did not answer in time.
    #[error("{server} did not answer in time")]
    Timeout {
        /// The server that stayed silent.
        server: SocketAddr,
    },
    /// A remote candidate string could not be parsed.
    #[error("invalid remote candidate: {0}")]
    InvalidCandidate(String),
    /// Remote ICE credentials were empty or otherwise unusable.
    #[error("invalid ICE credentials")]
    InvalidCredentials,
    /// The configuration is not usable (for example `RelayOnly` without a TURN server).
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// Media was sent when no path can carry it: the connection failed, or lost its path after
    /// having one. (Before the first path, datagrams are held for it instead.)
    #[error("no path selected yet")]
    NotConnected,
    /// The datagram is too large to be sent in one UDP packet.
    #[error("datagram of {0} bytes is too large")]
    DatagramTooLarge(usize),
    /// The connection was closed.
    #[error("connection closed")]
    Closed,
    /// An error reported by the underlying ICE/TURN implementation.
    #[error("ICE/TURN stack: {0}")]
    Stack(String),
    /// A socket operation failed (driver only).
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

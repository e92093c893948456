//! The crate's error type.

use crate::proto::relay::ErrorCode;

/// A sealer's own error, kept as the typed source of [`Error::Seal`] and [`Error::Open`]
/// (downcast it to the sealer's error type to inspect it).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in hush-signaling.
///
/// Variants are grouped by who is to blame: malformed input from the network, a peer or relay
/// that misbehaves, the local environment (I/O, closed transport), and API misuse.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bytes from the network could not be decoded or break a structural rule.
    #[error("malformed input: {0}")]
    Malformed(&'static str),
    /// The sender used a format version this build does not understand.
    #[error("unsupported version {0}")]
    UnsupportedVersion(u32),
    /// A well-formed message whose body type this build does not know (a newer sender).
    #[error("unsupported message type")]
    UnsupportedMessage,
    /// A frame exceeded the configured maximum size.
    #[error("frame of {size} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Announced or actual size.
        size: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The relay answered a request (or the connection) with an error.
    #[error("relay error {code:?}: {message}")]
    Relay {
        /// Machine-readable code.
        code: ErrorCode,
        /// Human-readable detail from the relay.
        message: String,
    },
    /// Authentication with the relay (or of the relay's challenge) failed.
    #[error("authentication failed: {0}")]
    AuthFailed(&'static str),
    /// The relay presented a public key other than the one pinned in
    /// `RelayClientConfig::relay_key`: it is another relay (or relays another relay's
    /// challenge). Nothing was signed.
    #[error("the relay's key is not the pinned relay key")]
    RelayKeyMismatch {
        /// The key the relay presented.
        presented: [u8; 32],
    },
    /// A message with this id was already accepted.
    #[error("replayed message")]
    Replay,
    /// A message is older than the accepted window (or too far in the future).
    #[error("stale message")]
    Stale,
    /// The sealed content does not match the envelope that carried it.
    #[error("envelope does not match its sealed content: {0}")]
    Mismatch(&'static str),
    /// The envelope is addressed to another device.
    #[error("envelope addressed to another device")]
    WrongRecipient,
    /// Sealing a message failed (no session with the peer, store failure...). The sealer's own
    /// error is the source (with the `crypto` feature, a `hush_crypto::Error`).
    #[error("sealing failed: {0}")]
    Seal(#[source] BoxError),
    /// Opening a sealed message failed (bad ciphertext, duplicate, no session...). The
    /// sealer's own error is the source.
    #[error("opening failed: {0}")]
    Open(#[source] BoxError),
    /// The sender presented a Signal identity key other than the one on record for it (its
    /// safety number changed: a reinstall, or someone else using its address). Nothing it
    /// sends is opened until the app has the user verify and accept the new identity.
    #[error("the sender's identity key changed; not trusted until the user verifies it")]
    IdentityChanged {
        /// The new identity key in its serialized (libsignal) form, when the message carried
        /// one.
        new_identity: Option<Vec<u8>>,
    },
    /// The transport or connection is closed.
    #[error("transport closed")]
    Closed,
    /// An operation did not finish in time.
    #[error("timed out")]
    Timeout,
    /// Socket I/O failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// TLS to the relay failed (feature `tls`).
    #[cfg(feature = "tls")]
    #[error("tls: {0}")]
    Tls(#[source] tokio_rustls::rustls::Error),
    /// The WebSocket layer failed.
    #[error("websocket: {0}")]
    WebSocket(String),
    /// The caller broke an API precondition (never caused by network input).
    #[error("api misuse: {0}")]
    ApiMisuse(&'static str),
    /// An internal invariant did not hold; reported instead of panicking.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl Error {
    /// The relay error code that best describes this error, for answering a client.
    pub fn relay_code(&self) -> ErrorCode {
        match self {
            Self::Malformed(_) => ErrorCode::MalformedFrame,
            Self::UnsupportedVersion(_) | Self::UnsupportedMessage => ErrorCode::UnsupportedVersion,
            Self::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            Self::Relay { code, .. } => *code,
            Self::AuthFailed(_) | Self::RelayKeyMismatch { .. } => ErrorCode::AuthFailed,
            Self::Replay => ErrorCode::Duplicate,
            Self::Stale => ErrorCode::Stale,
            Self::Mismatch(_) | Self::WrongRecipient => ErrorCode::InvalidEnvelope,
            Self::Timeout => ErrorCode::Timeout,
            _ => ErrorCode::Internal,
        }
    }
}

impl From<prost::DecodeError> for Error {
    fn from(_: prost::DecodeError) -> Self {
        Self::Malformed("protobuf decode error")
    }
}

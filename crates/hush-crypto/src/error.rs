//! The crate's error type.
//!
//! Variants are grouped by who is to blame, as in rustls: malformed bytes from the network,
//! a peer that misbehaves (or an attacker in the middle), API misuse by the caller, and the
//! storage layer. No variant carries key material, so `Display`/`Debug` are safe to log.

use libsignal_protocol::{IdentityKey, ProtocolAddress, SignalProtocolError};

/// Everything that can go wrong in hush-crypto.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- malformed input (untrusted bytes) ----
    /// Bytes received from the network did not parse.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// Which structure was being parsed.
        what: &'static str,
        /// What was wrong with it.
        reason: &'static str,
    },
    /// A payload announced a protocol version this build does not speak.
    #[error("unsupported {what} version {version}")]
    UnsupportedVersion {
        /// Which structure carried the version.
        what: &'static str,
        /// The version found.
        version: u8,
    },

    // ---- peer misbehaviour / active attack ----
    /// The peer presented an identity key different from the one on record. Never trusted
    /// silently: the app must show it (safety number changed) and call
    /// [`Device::accept_identity`](crate::Device::accept_identity) once the user has verified.
    #[error("identity key of {peer} changed; not trusted until the user verifies it")]
    IdentityChanged {
        /// The peer whose identity changed.
        peer: ProtocolAddress,
        /// The new identity key, when the message or bundle carried one.
        new_identity: Option<IdentityKey>,
    },
    /// The peer's X25519 public value produced an all-zero (non-contributory) shared secret:
    /// it is a low-order point.
    #[error("peer ephemeral key is a low-order point (non-contributory X25519 result)")]
    NonContributory,
    /// The peer echoed our own ephemeral public key back.
    #[error("peer ephemeral key equals ours (reflection)")]
    ReflectedEphemeral,
    /// An answer carries a call id other than the pending call's.
    #[error("answer is for another call")]
    CallIdMismatch,
    /// An offer whose call id was already seen (a replay of an old offer).
    #[error("offer for an already seen call id (replay)")]
    ReplayedOffer,
    /// The offer and our supported suites have nothing in common.
    #[error("no SRTP suite in common with the offer")]
    NoCommonSuite,
    /// The answer chose a suite the offer did not contain (downgrade or tampering).
    #[error("answer chose a suite that was not offered")]
    SuiteNotOffered,
    /// The answer's key confirmation did not match: the two sides saw different transcripts
    /// (tampered offer, suite list, identity or ephemeral key).
    #[error("answer key confirmation failed: the two sides saw different transcripts")]
    KeyConfirmationFailed,
    /// A received message's counter lies further ahead of its chain than hush lets libsignal
    /// skip before the message is authenticated
    /// ([`MAX_SKIPPED_KEYS`](crate::MAX_SKIPPED_KEYS)): refused unread, the session unchanged.
    /// Forged messages with huge counters cost the receiver seconds of CPU otherwise.
    #[error("message from {peer} is {skipped} messages ahead of its chain (more than hush skips)")]
    TooFarAhead {
        /// The sender.
        peer: ProtocolAddress,
        /// How many message keys libsignal would have derived.
        skipped: u32,
    },
    /// A signature (prekey, device-key binding, or relay challenge) did not verify.
    #[error("signature verification failed: {0}")]
    BadSignature(&'static str),

    // ---- API misuse ----
    /// This pending offer was already finished (its ephemeral secret is gone).
    #[error("pending offer already finished")]
    AlreadyFinished,
    /// No Signal session or no known identity for the peer.
    #[error("no session with {0}")]
    NoSession(ProtocolAddress),
    /// An argument was out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The key ratchet ran out of epochs (2^32 rekeys).
    #[error("media key epochs exhausted")]
    EpochExhausted,

    // ---- storage and lower layers ----
    /// The storage backend failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The Signal protocol library reported an error (bad MAC, duplicate message, ...).
    #[error("signal protocol: {0}")]
    Signal(SignalProtocolError),
    /// A broken internal invariant, reported instead of panicking.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl From<SignalProtocolError> for Error {
    fn from(e: SignalProtocolError) -> Self {
        match e {
            SignalProtocolError::UntrustedIdentity(peer) => Self::IdentityChanged {
                peer,
                new_identity: None,
            },
            SignalProtocolError::SessionNotFound(peer) => Self::NoSession(peer),
            other => Self::Signal(other),
        }
    }
}

/// A failure of the storage backend (I/O, corrupt database, ...).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

impl StoreError {
    /// Wraps any displayable backend error.
    pub fn new(e: impl std::fmt::Display) -> Self {
        Self(e.to_string())
    }
}

impl From<StoreError> for SignalProtocolError {
    fn from(e: StoreError) -> Self {
        Self::ApplicationCallbackError("hush-crypto store", Box::new(e))
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

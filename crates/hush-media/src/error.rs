//! The crate's error type.

use thiserror::Error;

/// Why untrusted bytes were refused. Returned by the RTP and RTCP parsers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The input ended before a field that the header says is there.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// The version field is not 2.
    #[error("unsupported RTP/RTCP version {0}")]
    BadVersion(u8),
    /// The padding count is zero or longer than the payload.
    #[error("invalid padding")]
    BadPadding,
    /// A header extension is malformed (RFC 8285).
    #[error("malformed header extension")]
    BadExtension,
    /// A length field disagrees with the bytes present.
    #[error("bad length in {0}")]
    BadLength(&'static str),
    /// A field holds a value the format reserves.
    #[error("reserved value in {0}")]
    Reserved(&'static str),
    /// The packet is not of the kind this parser reads.
    #[error("not a {0} packet")]
    WrongKind(&'static str),
}

/// Errors of the media engine.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// A packet from the network is malformed (the peer's fault, or an attacker's).
    #[error("malformed packet: {0}")]
    Malformed(#[from] ParseError),
    /// A packet is well formed but not acceptable here (unknown SSRC or payload type).
    #[error("unexpected packet: {0}")]
    Unexpected(&'static str),
    /// The codec failed; the string is the codec's own message.
    #[error("codec error: {0}")]
    Codec(String),
    /// The caller passed a value the engine cannot honour.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// An internal invariant failed. Reaching this is a bug in hush-media.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

//! The one error type of this crate.

/// Why a packet could not be protected or unprotected, or a context not be built.
///
/// The cases fall into four groups:
/// - **malformed input** ([`TooShort`](Self::TooShort), [`BadVersion`](Self::BadVersion),
///   [`MalformedHeader`](Self::MalformedHeader)): the bytes are not an RTP/RTCP packet;
/// - **rejected by the peer-facing checks** ([`AuthFailed`](Self::AuthFailed),
///   [`Replayed`](Self::Replayed), [`TooOld`](Self::TooOld)): drop the packet, maybe count it;
/// - **limits** ([`KeyExhausted`](Self::KeyExhausted), [`IndexReused`](Self::IndexReused),
///   [`SsrcRetired`](Self::SsrcRetired), [`TooManySsrcs`](Self::TooManySsrcs)): the context
///   refuses to go on as asked;
/// - **API misuse** ([`BadKeyLength`](Self::BadKeyLength),
///   [`BadSaltLength`](Self::BadSaltLength), [`InvalidConfig`](Self::InvalidConfig)), never
///   caused by packet bytes.
///
/// No case carries key material, and neither `Display` nor `Debug` prints any.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The packet is shorter than its headers, tag and trailer need.
    #[error("packet too short: {len} bytes, need at least {min}")]
    TooShort {
        /// Length of the packet given.
        len: usize,
        /// Smallest length that could have been valid.
        min: usize,
    },
    /// The RTP/RTCP version field is not 2.
    #[error("unsupported RTP/RTCP version {0}")]
    BadVersion(u8),
    /// The header is inconsistent (e.g. the CSRC count or the header extension length runs past
    /// the end of the packet).
    #[error("malformed header: {0}")]
    MalformedHeader(&'static str),
    /// The authentication tag did not verify: the packet was forged, corrupted, or protected
    /// under another key. Nothing in the context changed.
    #[error("authentication failed")]
    AuthFailed,
    /// The packet index was already received (a duplicate or a replay).
    #[error("replayed packet (ssrc {ssrc:#010x}, index {index})")]
    Replayed {
        /// SSRC of the packet.
        ssrc: u32,
        /// Its packet index (48-bit SRTP index or 31-bit SRTCP index).
        index: u64,
    },
    /// The packet index lies behind the replay window, so it cannot be checked for replay.
    #[error("packet too old for the replay window (ssrc {ssrc:#010x}, index {index})")]
    TooOld {
        /// SSRC of the packet.
        ssrc: u32,
        /// Its packet index (48-bit SRTP index or 31-bit SRTCP index).
        index: u64,
    },
    /// The packet limit of the current master key is reached (2^48 SRTP or 2^31 SRTCP packets by
    /// default, or the index space of an SSRC ran out). Rekey before sending more.
    #[error("packet limit for this master key reached; rekey")]
    KeyExhausted,
    /// The sender was asked to protect a packet index it already used (or one too old to tell).
    /// Protecting it again would reuse an AES-GCM nonce under the same key. To retransmit, resend
    /// the protected bytes or use RTX (a separate SSRC).
    #[error("packet index already used by this sender (ssrc {ssrc:#010x}, index {index})")]
    IndexReused {
        /// SSRC of the packet.
        ssrc: u32,
        /// Its packet index.
        index: u64,
    },
    /// The sender was asked to protect a packet for an SSRC it retired under the current master
    /// key ([`SrtpContext::remove_ssrc`](crate::SrtpContext::remove_ssrc)): starting that
    /// stream again would reuse packet indices, so AES-GCM nonces. Use another SSRC, or rekey.
    #[error("ssrc {ssrc:#010x} was retired under this master key; use another ssrc or rekey")]
    SsrcRetired {
        /// The retired SSRC.
        ssrc: u32,
    },
    /// A new SSRC would exceed the configured number of SSRCs per context.
    #[error("too many SSRCs in one context (limit {limit})")]
    TooManySsrcs {
        /// The configured limit.
        limit: usize,
    },
    /// The master key length does not match the suite.
    #[error("bad master key length: {got} bytes, the suite needs {expected}")]
    BadKeyLength {
        /// Length the suite needs.
        expected: usize,
        /// Length given.
        got: usize,
    },
    /// The master salt length does not match the suite (AEAD suites use a 12-byte salt).
    #[error("bad master salt length: {got} bytes, the suite needs {expected}")]
    BadSaltLength {
        /// Length the suite needs.
        expected: usize,
        /// Length given.
        got: usize,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// The AEAD backend refused an operation it should not refuse; a bug, reported instead of a
    /// panic.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

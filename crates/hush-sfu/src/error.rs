//! The crate's error types: one per operation family, each saying who is to blame.
//!
//! - [`WireError`]: bytes that are not a well-formed message (a join, an answer, a roster).
//! - [`JoinError`]: a join refused (by the SFU) or an answer refused (by the client).
//! - [`RosterError`]: a roster or roster update refused.
//! - [`PacketError`]: why one media packet from one leg was dropped. Packet errors cost only the
//!   leg that sent the packet: the core counts them per leg and goes on.
//! - [`Error`]: API misuse and hop-key problems of the core's application commands.

use crate::{CallId, DeviceId, LegId};

/// Bytes that are not a well-formed message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {what}: {reason}")]
pub struct WireError {
    /// What was being parsed.
    pub what: &'static str,
    /// What was wrong.
    pub reason: &'static str,
}

/// Why a join request or a join answer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The message is not well formed.
    #[error(transparent)]
    Malformed(#[from] WireError),
    /// The message's protocol version is not one this code speaks.
    #[error("unsupported join protocol version {0}")]
    UnsupportedVersion(u8),
    /// A signature did not verify (the request's device signature, or the answer's SFU
    /// signature), or a key is not a valid ed25519 point.
    #[error("bad signature on the {0}")]
    BadSignature(&'static str),
    /// The request's timestamp is too far from the SFU's clock.
    #[error("join request timestamp is {skew_ms} ms away from the SFU clock")]
    Stale {
        /// Distance between the request's timestamp and the SFU's clock, in milliseconds.
        skew_ms: u64,
    },
    /// The same request (device and nonce) was already seen.
    #[error("replayed join request")]
    Replayed,
    /// The replay cache is full of requests still within the freshness window; try later.
    #[error("too many recent joins; replay cache full")]
    ReplayCacheFull,
    /// This device made too many joins within the freshness window; try later.
    #[error("too many recent joins from this device")]
    TooManyJoins,
    /// The X25519 exchange gave the all-zero result (a low-order public key): no shared secret.
    #[error("non-contributory X25519 key")]
    NonContributory,
    /// The requested SRTP suite is not one the SFU accepts (IANA protection profile number).
    #[error("SRTP suite {0:#06x} not accepted")]
    UnsupportedSuite(u16),
    /// No call with this id exists on the SFU, and the request carried no roster to create it.
    #[error("no such call {0}")]
    NoSuchCall(CallId),
    /// A call with this id already exists, so a roster cannot create it.
    #[error("call {0} already exists")]
    CallExists(CallId),
    /// The device is not on the call's roster (or was removed from it).
    #[error("device {0} is not on the roster")]
    NotOnRoster(DeviceId),
    /// The call already has as many participants as allowed.
    #[error("call is full ({limit} participants)")]
    CallFull {
        /// The configured limit.
        limit: usize,
    },
    /// An SSRC of the request is already used by another participant of the call.
    #[error("ssrc {0:#010x} already in use in this call")]
    SsrcInUse(u32),
    /// The roster given to create the call was refused.
    #[error("roster refused: {0}")]
    Roster(#[from] RosterError),
    /// A hop SRTP context could not be built from the derived keys.
    #[error("hop key setup failed: {0}")]
    Srtp(#[source] hush_srtp::Error),
    /// A parameter given by the local application is out of range (never caused by peer bytes).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// An internal invariant failed; a bug, reported instead of a panic.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

/// Why a roster or a roster update was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RosterError {
    /// The roster is not well formed.
    #[error(transparent)]
    Malformed(#[from] WireError),
    /// The roster's version byte is not one this code speaks.
    #[error("unsupported roster format {0}")]
    UnsupportedFormat(u8),
    /// The creator's signature did not verify.
    #[error("bad roster signature")]
    BadSignature,
    /// The update is signed by someone other than the call's creator.
    #[error("roster update not signed by the call's creator")]
    NotCreator,
    /// The roster belongs to another call.
    #[error("roster is for call {got}, not {expected}")]
    WrongCall {
        /// The call the roster was given for.
        expected: CallId,
        /// The call named in the roster.
        got: CallId,
    },
    /// The update's version is not newer than the roster in force.
    #[error("roster version {got} is not newer than {current}")]
    NotNewer {
        /// Version in force.
        current: u64,
        /// Version of the refused update.
        got: u64,
    },
    /// The roster lists more members than allowed.
    #[error("roster lists {got} members, limit {limit}")]
    TooManyMembers {
        /// Members listed.
        got: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The roster does not list its own creator.
    #[error("roster does not list its creator")]
    CreatorMissing,
    /// A member or a slot is listed twice.
    #[error("member or slot listed twice")]
    Duplicate,
    /// A slot is not below the roster's next free slot.
    #[error("slot not below the next free slot")]
    SlotOutOfRange,
    /// Every slot (255 per call) has been handed out.
    #[error("no slot left in this call")]
    SlotsExhausted,
    /// No call with this id exists on the SFU.
    #[error("no such call {0}")]
    NoSuchCall(CallId),
}

/// Why one packet from one leg was dropped. Costs only that leg (counted in its stats).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PacketError {
    /// The leg is not (or no longer) known to the SFU.
    #[error("unknown leg {0}")]
    UnknownLeg(LegId),
    /// The packet is too short or not RTP/RTCP version 2.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// Hop SRTP/SRTCP refused the packet (authentication, replay, limits).
    #[error("hop srtp: {0}")]
    Srtp(#[source] hush_srtp::Error),
    /// The packet's SSRC was not declared by this participant at join.
    #[error("ssrc {0:#010x} not declared by this participant")]
    UndeclaredSsrc(u32),
}

/// API misuse or state problems of the core's application commands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is out of range.
    #[error("invalid config: {0}")]
    InvalidConfig(&'static str),
    /// No such leg.
    #[error("unknown leg {0}")]
    UnknownLeg(LegId),
    /// No other participant of the leg's call sends a simulcast source with this SSRC.
    #[error("unknown simulcast source {0:#010x}")]
    UnknownSource(u32),
}

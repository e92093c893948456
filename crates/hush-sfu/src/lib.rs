//! hush-sfu: the selective forwarding unit of hush group calls, as a sans-IO core.
//!
//! A group call goes through the SFU: each participant sends its media once, over its own
//! *leg*, and the SFU forwards it to the others. The SFU holds hop-by-hop SRTP keys only: it
//! reads RTP headers (SSRC, sequence number, the RFC 6464 audio level) but the media payload is
//! meant to carry end-to-end encryption of its own (SFrame, a later layer).
//!
//! The core ([`Sfu`]) has no networking code and reads no clock: packets, joins and time go in;
//! packets, events and deadlines come out. [`server`] is its thin tokio driver (one UDP port
//! for all legs with ICE-lite from [`ice`], a TCP signaling channel from [`control`]) and the
//! `hush-sfu` binary runs it; [`client`] is the client's end of the signaling channel.
//!
//! # Design
//!
//! ```text
//!  signaling ──join request (+ first roster)──▶ Sfu::handle_join ──answer──▶ signaling
//!            ──roster update (kick)───────────▶ Sfu::update_roster
//!
//!  leg A ──SRTP──▶ Sfu::handle_input ─ unprotect (A's key) ─┬─ protect (B's key) ─▶ Transmit{B}
//!                      │  RTCP: NACK → resend from B's cache └─ protect (C's key) ─▶ Transmit{C}
//!                      │        PLI  → relay to the sender
//!                      └─ audio level → SpeakerDetector ─▶ Event::ActiveSpeaker, loudest-N
//! ```
//!
//! - [`join`]: the authenticated join (device-signed request, SFU-signed answer over the whole
//!   transcript, X25519 + HKDF-SHA256 hop keys, freshness and replay checks). `docs/sfu.md`
//!   specifies every byte and has a test vector.
//! - [`roster`]: who may join, signed by the call's creator; newer versions add and kick.
//! - [`Sfu`]: calls, participants and the packet path; [`SfuConfig`] its knobs.
//! - Video: simulcast layer selection per receiver (view requests, bandwidth share, switches
//!   at keyframes marked in a header extension, one rewritten stream per source), per-leg
//!   transport-wide congestion control (hush-media's controller, probing), video last-N
//!   (`docs/sfu.md` "Simulcast", "Per-leg congestion control", "Video last-N").
//! - [`speaker`]: dominant speaker detection with hysteresis.
//!
//! # Loop
//!
//! After every input, drain transmits and events, then re-arm one timer:
//!
//! ```
//! use std::time::{Duration, Instant};
//! use hush_sfu::{join::SfuSigningKey, Event, Sfu, SfuConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let key = SfuSigningKey::generate(&mut rand::rng());
//! let mut sfu = Sfu::new(SfuConfig::default(), key)?;
//! # let mut rounds = 0;
//! loop {
//!     let now = Instant::now();
//!     // A join request (and roster) arrived over signaling:
//!     //   let joined = sfu.handle_join(now, unix_ms, &request, roster.as_deref(), &mut rng)?;
//!     //   reply with joined.answer; map the participant's path to joined.leg.
//!     // A datagram arrived from the path of `leg`:
//!     //   if let Err(e) = sfu.handle_input(now, leg, &datagram) { /* counted; log, go on */ }
//!     while let Some(t) = sfu.poll_transmit() {
//!         // socket.send_to(&t.bytes, path_of(t.leg))
//! #       let _ = t;
//!     }
//!     while let Some(event) = sfu.poll_event() {
//!         match event {
//!             Event::ParticipantLeft { .. } => { /* close the leg's path */ }
//!             Event::ActiveSpeaker { .. } => { /* announce to the participants */ }
//!             _ => {}
//!         }
//!     }
//!     let _wait = sfu.poll_timeout().map(|t| t.saturating_duration_since(now));
//!     // wait for a datagram or the deadline, then: sfu.handle_timeout(Instant::now());
//! #   rounds += 1;
//! #   if rounds == 1 { break; }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Failure model
//!
//! Nothing from the network can panic the core. A malformed, unauthenticated, replayed or
//! undeclared packet from one participant is dropped, returned as a [`PacketError`] and counted
//! in that leg's [`LegStats`]; no other participant is affected. A refused join is a typed
//! [`JoinError`] and changes nothing (except that a request that reached the replay check stays
//! recorded).

#![forbid(unsafe_code)]

mod cache;
pub mod client;
pub mod control;
mod error;
pub mod ice;
mod ids;
pub mod join;
pub mod metrics;
mod packet;
pub mod roster;
pub mod server;
mod sfu;
mod simulcast;
pub mod speaker;
mod wire;

/// The ed25519 crate whose `SigningKey` signs join requests and rosters, re-exported so callers
/// name the same version.
pub use ed25519_dalek;

pub use error::{Error, JoinError, PacketError, RosterError, WireError};
pub use ids::{CallId, DeviceId, LegId, CALL_ID_LEN};
pub use packet::{FRAME_MARKING_EXT_ID, TRANSPORT_SEQ_EXT_ID};
pub use sfu::{
    Event, Joined, LeaveReason, LegBandwidth, LegStats, Sfu, SfuConfig, Transmit,
    UPLINK_FEEDBACK_INTERVAL,
};
#[cfg(feature = "test-hooks")]
pub use sfu::{ForwardRewrite, ForwardTap, RewriteFn, TapFn};

//! Identities, Signal sessions (via the official `libsignal-protocol`) and the per-call
//! ephemeral key agreement that produces hush's SRTP media keys.
//!
//! It does no I/O other than through store traits.

pub use libsignal_protocol as signal;

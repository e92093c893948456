//! hush: end-to-end encrypted calls built on the Signal Protocol.
//!
//! This facade crate re-exports the building blocks; the `Client`/`Call` API arrives on top of
//! them.

pub use hush_crypto as crypto;
pub use hush_media as media;
pub use hush_net as net;
pub use hush_signaling as signaling;
pub use hush_srtp as srtp;

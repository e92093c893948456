//! SRTP and SRTCP packet protection with AEAD AES-GCM (RFC 7714), using RFC 3711 §4.3 session
//! key derivation so the same master key and salt produce the same packets as libsrtp.
//!
//! # What it does
//!
//! [`SrtpContext`] turns RTP and RTCP packets into SRTP and SRTCP packets and back, in place:
//!
//! - suites `AEAD_AES_128_GCM` and `AEAD_AES_256_GCM` ([`Suite`]): AES-GCM with a 12-byte IV
//!   made from the session salt, SSRC, rollover counter and sequence number (SRTCP: the SRTCP
//!   index); the RTP header with its CSRCs and RFC 8285 header extension is authenticated, the
//!   payload encrypted; a 16-byte tag is appended; SRTCP adds the E flag and 31-bit index;
//! - session keys derived from a master key (16 or 32 bytes) and a 12-byte master salt with the
//!   RFC 3711 AES-CM PRF (key derivation rate 0);
//! - per SSRC: rollover counter estimation (RFC 3711 Appendix A), a replay window (64 packets by
//!   default, up to 32768, see [`SrtpConfig`]) for SRTP and for SRTCP, and on the sending side a
//!   refusal to reuse a packet index (an AES-GCM nonce), also for an SSRC whose state was removed
//!   ([`SrtpContext::remove_ssrc`] retires it until the next key);
//! - a packet limit per master key (2^48 SRTP, 2^31 SRTCP packets), and key epochs:
//!   [`SrtpContext::rekey`] switches to a new master key while still accepting packets that
//!   were in flight under the old one for a short overlap.
//!
//! # What it leaves to the caller
//!
//! It does no I/O, reads no clock, and knows nothing of calls or key agreement: the caller
//! brings the master keys (one context per direction, e.g. from hush-crypto's `MediaKeys` or
//! DTLS-SRTP), reads packets from and writes them to its sockets, demultiplexes RTP from RTCP
//! (RFC 5761), decides when to rekey, and reserves [`Suite::RTP_OVERHEAD`] /
//! [`Suite::RTCP_OVERHEAD`] spare bytes of capacity in its buffers so protecting never
//! reallocates. No MKI is used, and header extensions are not encrypted (no RFC 6904 or cryptex).
//!
//! Errors are typed ([`Error`]); no input bytes can cause a panic. Keys are wiped from memory
//! when a context or an old key epoch is dropped, and `Debug` prints no key material.
//!
//! # Example
//!
//! ```
//! use hush_srtp::{Error, SrtpContext, Suite};
//!
//! // Per-direction master key and salt, agreed out of band.
//! let key = [0x11u8; 16];
//! let salt = [0x22u8; 12];
//! let mut sender = SrtpContext::new(Suite::AeadAes128Gcm, &key, &salt)?;
//! let mut receiver = SrtpContext::new(Suite::AeadAes128Gcm, &key, &salt)?;
//!
//! // An RTP packet: V=2, PT 111, seq 1, timestamp 160, SSRC 0x1234, then the payload.
//! let mut packet = Vec::with_capacity(1500);
//! packet.extend_from_slice(&[0x80, 111, 0, 1, 0, 0, 0, 160, 0, 0, 0x12, 0x34]);
//! packet.extend_from_slice(b"an opus frame");
//! let plain = packet.clone();
//!
//! sender.protect_rtp(&mut packet)?;
//! assert_eq!(packet.len(), plain.len() + Suite::RTP_OVERHEAD);
//!
//! receiver.unprotect_rtp(&mut packet)?;
//! assert_eq!(packet, plain);
//!
//! // The same packet again is a replay.
//! let mut again = plain.clone();
//! sender.protect_rtp(&mut again).unwrap_err(); // the sender refuses to reuse the index
//! # Ok::<(), Error>(())
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod aead;
mod config;
mod context;
mod error;
mod header;
mod kdf;
mod replay;
mod suite;

#[cfg(test)]
mod tests;

pub use config::{SrtpConfig, SrtpConfigBuilder};
pub use context::SrtpContext;
pub use error::Error;
pub use suite::Suite;

//! SRTP and SRTCP packet protection with AEAD AES-GCM (RFC 7714), using RFC 3711 §4.3 session
//! key derivation so the same master key and salt produce the same packets as libsrtp.
//!
//! This crate does no I/O and reads no clock: it transforms packets in place.

//! Tests that need crate internals: the RFC 7714 packet vectors, which are given for session
//! keys (below the KDF) and a fixed SRTCP index.

mod rfc7714;

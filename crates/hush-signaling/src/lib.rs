//! Call signaling for hush: wire messages, sealing and opening them with Signal sessions, the
//! `Transport` trait that carries them, and the relay server that routes and queues them.
//!
//! It never parses media.

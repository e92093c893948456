//! Connectivity for hush calls: ICE with host, server-reflexive and TURN relay candidates,
//! peer-to-peer first with relay fallback, consent freshness and ICE restart.
//!
//! It carries media datagrams but never encrypts or decrypts them.

//! Connectivity for hush calls: ICE with host, server-reflexive and TURN relay candidates,
//! peer-to-peer first with relay fallback, consent freshness and ICE restart.
//!
//! It carries media datagrams but never encrypts or decrypts them.
//!
//! # Design
//!
//! ```text
//!  app / hush facade ──commands──► Connection (sans-IO core) ──► Transmit ──► driver ──► UDP
//!        ▲                          │  adapter: rtc-ice Agent,                  │
//!        └──── Event, datagrams ────┘  rtc-turn clients (one per socket×server) ◄┘
//! ```
//!
//! [`Connection`] is the sans-IO core: it takes packets and `now` in, and gives datagrams to
//! send, received media, events and a timer deadline out. It drives webrtc-rs's sans-IO
//! `rtc-ice` agent (checks, nomination, consent freshness, restart) and `rtc-turn` clients
//! (STUN Binding for server-reflexive candidates; TURN allocate, refresh, permissions and
//! channel bindings for relay candidates). All webrtc-rs types stay inside one private module.
//!
//! [`driver`] joins a [`Connection`] to tokio UDP sockets, and to TCP/TLS connections for TURN
//! servers reached over a stream (`turn:…?transport=tcp`, `turns:`; [`framing`] cuts those
//! streams into messages).
//!
//! # Signaling the application relays
//!
//! * [`Event::LocalCandidate`] → the peer's `add_remote_candidate`.
//! * [`Event::GatheringComplete`] → the peer's `remote_gathering_complete` (optional
//!   end-of-candidates; makes [`Error::NoRoute`] come as soon as every pair has failed).
//! * [`Event::Restarted`] (from `restart`, `network_changed`, consent loss, or the peer's new
//!   credentials) → the peer's `set_remote_credentials`, then the candidates that follow. The
//!   peer restarts in turn on its own and its `Restarted` comes back the same way; nobody calls
//!   `restart` in reply.
//!
//! # Loop
//!
//! ```no_run
//! # use hush_net::{Config, Connection, Role};
//! # use std::time::Instant;
//! # fn send(_: &hush_net::Transmit) {}
//! let mut conn = Connection::new(Config::builder().build()?, Role::Controlling, Instant::now())?;
//! conn.add_local_sockets(Instant::now(), &["192.0.2.1:5000".parse()?]);
//! loop {
//!     while let Some(t) = conn.poll_transmit() { send(&t); }
//!     while let Some(ev) = conn.poll_event() { /* candidates → signaling, path events */ }
//!     while let Some(media) = conn.recv_datagram() { /* to hush-srtp */ }
//!     let _deadline = conn.poll_timeout();
//!     // wait for a packet (conn.handle_packet) or the deadline (conn.handle_timeout)
//!     # break;
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

mod adapter;
mod candidate;
mod config;
mod connection;
pub mod demux;
pub mod driver;
mod error;
pub mod framing;
mod interfaces;

pub use candidate::{CandidateKind, IceCredentials, PathInfo};
pub use config::{
    AcceptanceWaits, Config, ConfigBuilder, Policy, Role, TlsRoots, Transport, TurnCredentials,
    TurnServer, TurnTransport,
};
pub use connection::{
    Connection, ConnectionState, Event, Transmit, HELD_BEFORE_PATH_MAX_AGE, MAX_DATAGRAM,
    MAX_HELD_BEFORE_PATH,
};
pub use error::Error;
pub use interfaces::host_addresses;

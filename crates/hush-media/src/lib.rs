//! The sans-IO media engine of hush: RTP/RTCP, jitter buffer, loss recovery, congestion control
//! and adaptive bitrate, quality statistics and the [`Codec`](codec::Codec) trait.
//!
//! It never holds keys and never touches a socket or a clock: the driver decrypts datagrams
//! with `hush-srtp`, hands them to [`MediaSession::handle_packet`] with the arrival time,
//! encrypts what [`MediaSession::poll_transmit`] returns, and calls
//! [`MediaSession::handle_timeout`] when [`MediaSession::poll_timeout`] says so. The crate's
//! [`Instant`] alias is the only clock type it names; nothing in it calls `Instant::now()`.
//!
//! ```text
//!  app encoder ──send_audio/send_video──▶ ┌──────────────┐ ──poll_transmit──▶ SRTP ─▶ socket
//!                                         │ MediaSession │
//!  app decoder ◀──poll_event (Playout)─── └──────────────┘ ◀─handle_packet─── SRTP ◀─ socket
//!                                              ▲  │ poll_timeout
//!                                              └──┘ handle_timeout
//! ```
//!
//! Inside: [`rtp`] and [`rtcp`] (bounds-checked parsers), [`jitter`] (adaptive playout),
//! [`nack`] (NACK + RTX), [`red`] (RFC 2198 redundancy), [`cc`] (transport-wide feedback and a
//! GCC-style estimator), [`stats`], [`codec`] (Opus on the pure-Rust `opus-pure`), [`video`]
//! (I420 frames, the video codec traits, H.264 on OpenH264), and [`sim`],
//! a deterministic network simulator: the facade's simulated impairments run on it, and with the
//! `call-sim` feature (hush's own tests and the `media_sim` example) it simulates whole calls.
//!
//! # Run loop
//!
//! After every input, drain transmits and events, then re-arm one timer:
//!
//! ```no_run
//! use std::net::UdpSocket;
//! use std::time::Instant;
//! use hush_media::{Event, MediaSession, SessionConfig};
//! use hush_media::jitter::Playout;
//!
//! # fn decrypt(b: &[u8]) -> Option<Vec<u8>> { Some(b.to_vec()) }
//! # fn encrypt(b: Vec<u8>) -> Vec<u8> { b }
//! let socket = UdpSocket::bind("0.0.0.0:0")?;
//! let mut session = MediaSession::new(SessionConfig::default(), Instant::now());
//! let mut buf = [0u8; 1500];
//! loop {
//!     while let Some(t) = session.poll_transmit() {
//!         socket.send(&encrypt(t.data))?; // SRTP-protect as RTP or RTCP per `t.kind`
//!     }
//!     while let Some(event) = session.poll_event() {
//!         match event {
//!             Event::Audio(Playout::Frame { payload, .. }) => { /* codec.decode(&payload) */ }
//!             Event::Audio(_) => { /* FEC, concealment or stretch: see `Playout` */ }
//!             Event::EncoderTarget(t) => { /* codec.set_bitrate(t.audio_bps) */ }
//!             _ => {}
//!         }
//!     }
//!     let deadline = session.poll_timeout();
//!     let wait = deadline.map(|d| d.saturating_duration_since(Instant::now()));
//!     socket.set_read_timeout(wait.filter(|w| !w.is_zero()).or(Some(std::time::Duration::from_millis(1))))?;
//!     match socket.recv(&mut buf) {
//!         Ok(n) => {
//!             if let Some(clear) = decrypt(&buf[..n]) {
//!                 let _ = session.handle_packet(Instant::now(), &clear); // bad packets: log, go on
//!             }
//!         }
//!         Err(_) => session.handle_timeout(Instant::now()),
//!     }
//!     // An audio source calls `session.send_audio(Instant::now(), &opus_frame, None)` every 20 ms.
//! }
//! # #[allow(unreachable_code)]
//! # Ok::<(), std::io::Error>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod cc;
pub mod codec;
mod error;
pub mod jitter;
pub mod nack;
pub mod red;
pub mod rtcp;
pub mod rtp;
mod session;
pub mod sim;
pub mod stats;
pub mod sync;
mod time;
pub mod video;
mod wire;

pub use error::{Error, ParseError};
pub use session::{
    EncoderTarget, Event, MediaSession, SessionConfig, StreamIds, Transmit, TransmitKind,
    WIRE_OVERHEAD,
};
pub use stats::{QualityStats, VideoRepairStats};
pub use time::Instant;

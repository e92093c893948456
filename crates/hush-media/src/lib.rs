//! The sans-IO media engine of hush: RTP/RTCP, jitter buffer, loss recovery, congestion control
//! and adaptive bitrate, quality statistics and the `Codec` trait.
//!
//! It never holds keys: packets leave it in the clear and are protected by `hush-srtp`.
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
mod time;
mod wire;

pub use error::{Error, ParseError};
pub use session::{
    EncoderTarget, Event, MediaSession, SessionConfig, StreamIds, Transmit, TransmitKind,
    WIRE_OVERHEAD,
};
pub use stats::QualityStats;
pub use time::Instant;

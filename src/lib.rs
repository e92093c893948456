//! hush: end-to-end encrypted calls built on the Signal Protocol.
//!
//! This facade crate holds the call state machine ([`machine`]); the `Client`/`Call` API and
//! its tokio drivers join it to the crates underneath (`hush-crypto`, `hush-srtp`,
//! `hush-signaling`, `hush-net`, `hush-media`).

pub mod client;
mod error;
pub mod machine;
pub mod media_path;

pub use client::{
    AudioFrame, Call, CallEvent, CallStats, Client, ClientBuilder, ClientConfig, FrameSource,
    IncomingCall, MediaStats,
};
pub use error::Error;

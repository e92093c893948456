//! Call signaling for hush: wire messages, sealing and opening them with Signal sessions, the
//! [`Transport`] trait that carries them, and the client side of the hush relay protocol.
//!
//! It never parses media.
#![forbid(unsafe_code)]

mod client;
#[cfg(feature = "crypto")]
pub mod crypto;
pub mod device;
pub mod envelope;
mod error;
pub mod frame;
pub mod message;
pub mod proto;
mod replay;
mod seal;
pub mod transport;

pub use client::{
    IncomingMessage, SignalingClient, SignalingConfig, SignalingEvent, SignalingStats, SystemClock,
    WallClock,
};
pub use device::{DeviceId, DeviceSigner};
pub use envelope::{CiphertextKind, Envelope, MessageId};
pub use error::{BoxError, Error};
pub use message::{
    Answer, CallId, CallMedia, CallMessage, Content, GroupInvite, GroupKey, Hangup, HangupReason,
    IceCandidates, IceParameters, MediaState, Offer,
};
pub use replay::ReplayGuard;
pub use seal::{Sealed, Sealer};
pub use transport::{
    DeliveryTag, MemoryNetwork, MemoryTransport, Received, SendReceipt, Transport,
};

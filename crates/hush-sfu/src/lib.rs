//! hush-sfu: the selective forwarding unit of hush group calls, as a sans-IO core.
//!
//! WIP docs.

#![forbid(unsafe_code)]

mod cache;
mod error;
mod ids;
pub mod join;
mod packet;
pub mod roster;
mod sfu;
pub mod speaker;
mod wire;

pub use error::{Error, JoinError, PacketError, RosterError, WireError};
pub use ids::{CallId, DeviceId, LegId, CALL_ID_LEN};
pub use sfu::{Event, Joined, LeaveReason, LegStats, Sfu, SfuConfig, Transmit};

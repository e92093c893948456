//! hush-sfu: the selective forwarding unit of hush group calls, as a sans-IO core.
//!
//! WIP: crate docs are completed with the forwarding core.

mod error;
mod ids;
pub mod join;
pub mod roster;
mod wire;

pub use error::{Error, JoinError, PacketError, RosterError, WireError};
pub use ids::{CallId, DeviceId, LegId, CALL_ID_LEN};

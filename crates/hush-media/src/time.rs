//! The one place the crate names its clock type. The engine never reads a clock: every call
//! that depends on time takes `now` from the caller.

/// The instant type of every `now` argument and deadline in this crate.
pub type Instant = std::time::Instant;

//! Generated protobuf types (prost). The typed, validated API lives in [`crate::message`],
//! [`crate::envelope`] and [`crate::frame`]; these raw types are public for fuzzing, interop and
//! for apps that carry the messages themselves.

#[allow(
    missing_docs,
    unreachable_pub,
    unused_qualifications,
    clippy::all,
    clippy::use_self,
    clippy::manual_let_else
)]
mod pb {
    pub mod hush {
        pub mod signaling {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/hush.signaling.v1.rs"));
            }
        }
        pub mod relay {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/hush.relay.v1.rs"));
            }
        }
    }
}

/// Call signaling messages (`proto/signaling.proto`, package `hush.signaling.v1`).
pub use pb::hush::signaling::v1 as signaling;

/// Relay protocol frames (`proto/relay.proto`, package `hush.relay.v1`).
pub use pb::hush::relay::v1 as relay;

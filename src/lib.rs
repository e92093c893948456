//! hush: end-to-end encrypted calls built on the Signal Protocol.
//!
//! This facade crate is what an application uses: [`Client`] places and receives calls,
//! [`Call`] carries PCM audio, video (I420 pictures, or encoded H.264 for apps with their own
//! codec; see docs/video.md), events and statistics, [`IncomingCall`] is accepted or rejected.
//! Underneath, the sans-IO call state machine ([`machine`]) decides what happens, and tokio tasks
//! join it to the crates that do the work: `hush-crypto` (Signal sessions, per-call keys),
//! `hush-signaling` (sealed messages over a transport), `hush-net` (ICE), `hush-srtp` and
//! `hush-media` (joined in [`media_path`]). See [`client`] for the flow and
//! `examples/two_party_call.rs` for a whole call.
//!
//! Group calls go through an SFU (`hush-sfu`): [`Client::group_call`] creates one and invites
//! the members over their Signal sessions, [`Client::join_group_call`] joins from an invitation
//! ([`ClientEvent::GroupInvite`]); [`GroupCall`] carries audio (per participant and mixed) and
//! events. [`group_path`] is its media path, with the end-to-end frame encryption seam.
//! `examples/group_call.rs` runs an SFU and N clients in one process.

pub mod client;
mod error;
pub mod group_path;
pub mod group_uplink;
pub mod machine;
pub mod media_path;

pub use client::{
    AudioFrame, Call, CallEvent, CallOptions, CallStats, Client, ClientBuilder, ClientConfig,
    ClientEvent, FrameSource, GroupCall, GroupCallEvent, GroupCallStats, GroupInvite, IncomingCall,
    MediaStats, ParticipantAudio, ParticipantVideoFrame, SfuInfo, SimulatedLink, VideoStats,
    GROUP_VIDEO_LAYERS,
};
pub use error::Error;
/// A raw picture (I420), as [`Call::send_video`] and [`GroupCall::send_video`] take them and
/// [`Call::recv_video`] and [`GroupCall::recv_video`] give them.
pub use hush_media::video::I420Frame;

//! RTP (RFC 3550): packets, header extensions, packetizers and the video depacketizer, with
//! the H.264 payload format (RFC 6184) in [`h264`].

mod depacketizer;
mod ext;
pub mod h264;
mod packet;
mod packetizer;

pub use depacketizer::{VideoDepacketizer, VideoFrame, VideoPayload};
pub use ext::{AudioLevel, ExtensionIds};
pub use packet::{is_rtcp, Extension, RtpHeader, RtpPacket};
pub use packetizer::{Packetizer, GENERIC_KEYFRAME, GENERIC_START};

//! RTP (RFC 3550): packets, header extensions, packetizers and the video depacketizer.

mod depacketizer;
mod ext;
mod packet;
mod packetizer;

pub use depacketizer::{VideoDepacketizer, VideoFrame};
pub use ext::{AudioLevel, ExtensionIds};
pub use packet::{is_rtcp, Extension, RtpHeader, RtpPacket};
pub use packetizer::{Packetizer, GENERIC_KEYFRAME, GENERIC_START};

//! Transport-layer generic NACK and payload-specific PLI (RFC 4585 §6.2.1, §6.3.1).

use crate::error::ParseError;
use crate::wire::Reader;

/// Generic NACK (PT 205, FMT 1): sequence numbers the receiver asks to be resent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Nack {
    /// SSRC of the packet sender (the receiver of the media).
    pub sender_ssrc: u32,
    /// SSRC of the media source whose packets are missing.
    pub media_ssrc: u32,
    /// The missing sequence numbers.
    pub lost: Vec<u16>,
}

impl Nack {
    pub(crate) fn parse(body: &[u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new(body, "NACK");
        let sender_ssrc = r.u32()?;
        let media_ssrc = r.u32()?;
        let mut lost = Vec::new();
        while r.remaining() >= 4 {
            let pid = r.u16()?;
            let blp = r.u16()?;
            lost.push(pid);
            for i in 0..16u16 {
                if blp & (1 << i) != 0 {
                    lost.push(pid.wrapping_add(i + 1));
                }
            }
        }
        Ok(Self {
            sender_ssrc,
            media_ssrc,
            lost,
        })
    }

    pub(crate) fn write_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.sender_ssrc.to_be_bytes());
        out.extend_from_slice(&self.media_ssrc.to_be_bytes());
        let mut i = 0;
        while i < self.lost.len() {
            let pid = self.lost[i];
            let mut blp = 0u16;
            i += 1;
            while i < self.lost.len() {
                let d = self.lost[i].wrapping_sub(pid);
                if !(1..=16).contains(&d) {
                    break;
                }
                blp |= 1 << (d - 1);
                i += 1;
            }
            out.extend_from_slice(&pid.to_be_bytes());
            out.extend_from_slice(&blp.to_be_bytes());
        }
    }
}

/// Picture loss indication (PT 206, FMT 1): the receiver needs a keyframe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pli {
    /// SSRC of the packet sender.
    pub sender_ssrc: u32,
    /// SSRC of the video source.
    pub media_ssrc: u32,
}

impl Pli {
    pub(crate) fn parse(body: &[u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new(body, "PLI");
        Ok(Self {
            sender_ssrc: r.u32()?,
            media_ssrc: r.u32()?,
        })
    }

    pub(crate) fn write_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.sender_ssrc.to_be_bytes());
        out.extend_from_slice(&self.media_ssrc.to_be_bytes());
    }
}

/// Full intra request (PT 206, FMT 4, RFC 5104 §4.3.1): the receiver needs a keyframe; each
/// request carries a sequence number per media source, and a repeat of the same number is a
/// retransmission of the same request, not a new one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fir {
    /// SSRC of the packet sender.
    pub sender_ssrc: u32,
    /// The requests: (media source SSRC, command sequence number).
    pub entries: Vec<(u32, u8)>,
}

impl Fir {
    pub(crate) fn parse(body: &[u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new(body, "FIR");
        let sender_ssrc = r.u32()?;
        // The media source SSRC of the common header is unused (zero) in a FIR.
        let _ = r.u32()?;
        let mut entries = Vec::new();
        while r.remaining() >= 8 {
            let ssrc = r.u32()?;
            let seq = r.u8()?;
            r.take(3)?;
            entries.push((ssrc, seq));
        }
        Ok(Self {
            sender_ssrc,
            entries,
        })
    }

    pub(crate) fn write_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.sender_ssrc.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        for &(ssrc, seq) in &self.entries {
            out.extend_from_slice(&ssrc.to_be_bytes());
            out.extend_from_slice(&[seq, 0, 0, 0]);
        }
    }
}

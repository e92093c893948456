//! Transport-wide congestion control feedback (PT 205, FMT 15), as specified in
//! draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1.

use crate::error::ParseError;
use crate::wire::Reader;

/// Length of one receive-delta tick.
pub const TICK_MICROS: i64 = 250;
/// Length of one reference-time unit.
pub const REFERENCE_MICROS: i64 = 64_000;

/// A transport-wide feedback message: arrival times of a run of transport sequence numbers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TransportFeedback {
    /// SSRC of the packet sender.
    pub sender_ssrc: u32,
    /// SSRC of the media source (unused by the format; commonly the first media SSRC).
    pub media_ssrc: u32,
    /// Transport sequence number of the first entry in `packets`.
    pub base_seq: u16,
    /// Reference time, 24 bits, in units of 64 ms on the receiver's clock.
    pub reference_time: u32,
    /// Feedback packet counter (wraps), to detect lost feedback.
    pub feedback_count: u8,
    /// One entry per sequence number from `base_seq` on: `None` if not received, otherwise the
    /// arrival time delta in 250 µs ticks from the previous received packet (the first one's is
    /// from the reference time).
    pub packets: Vec<Option<i16>>,
}

fn symbol(p: Option<i16>) -> u8 {
    match p {
        None => 0,
        Some(d) if (0..=255).contains(&d) => 1,
        Some(_) => 2,
    }
}

impl TransportFeedback {
    pub(crate) fn parse(body: &[u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new(body, "transport feedback");
        let sender_ssrc = r.u32()?;
        let media_ssrc = r.u32()?;
        let base_seq = r.u16()?;
        let count = usize::from(r.u16()?);
        let reference_time = r.u24()?;
        let feedback_count = r.u8()?;
        let mut symbols: Vec<u8> = Vec::with_capacity(count.min(body.len() * 14));
        while symbols.len() < count {
            let chunk = r.u16()?;
            if chunk & 0x8000 == 0 {
                let s = ((chunk >> 13) & 0x3) as u8;
                if s == 3 {
                    return Err(ParseError::Reserved("transport feedback status"));
                }
                let run = usize::from(chunk & 0x1fff).min(count - symbols.len());
                if run == 0 {
                    return Err(ParseError::BadLength("transport feedback run"));
                }
                symbols.extend(std::iter::repeat_n(s, run));
            } else if chunk & 0x4000 == 0 {
                for i in (0..14).rev() {
                    symbols.push(((chunk >> i) & 1) as u8);
                }
            } else {
                for i in (0..7).rev() {
                    let s = ((chunk >> (2 * i)) & 3) as u8;
                    if s == 3 {
                        return Err(ParseError::Reserved("transport feedback status"));
                    }
                    symbols.push(s);
                }
            }
        }
        symbols.truncate(count);
        let mut packets = Vec::with_capacity(count);
        for s in symbols {
            packets.push(match s {
                0 => None,
                1 => Some(i16::from(r.u8()?)),
                _ => Some(r.u16()? as i16),
            });
        }
        // Anything left is padding.
        Ok(Self {
            sender_ssrc,
            media_ssrc,
            base_seq,
            reference_time,
            feedback_count,
            packets,
        })
    }

    pub(crate) fn write_body(&self, out: &mut Vec<u8>) {
        let packets = &self.packets[..self.packets.len().min(usize::from(u16::MAX))];
        out.extend_from_slice(&self.sender_ssrc.to_be_bytes());
        out.extend_from_slice(&self.media_ssrc.to_be_bytes());
        out.extend_from_slice(&self.base_seq.to_be_bytes());
        out.extend_from_slice(&(packets.len() as u16).to_be_bytes());
        out.extend_from_slice(&(self.reference_time & 0x00ff_ffff).to_be_bytes()[1..]);
        out.push(self.feedback_count);
        let syms: Vec<u8> = packets.iter().map(|p| symbol(*p)).collect();
        let mut i = 0;
        while i < syms.len() {
            let run = syms[i..]
                .iter()
                .take(0x1fff)
                .take_while(|&&s| s == syms[i])
                .count();
            if run >= 7 {
                let chunk = (u16::from(syms[i]) << 13) | run as u16;
                out.extend_from_slice(&chunk.to_be_bytes());
                i += run;
                continue;
            }
            let window = &syms[i..syms.len().min(i + 14)];
            if window.iter().all(|&s| s < 2) {
                let mut chunk = 0x8000u16;
                for (k, &s) in window.iter().enumerate() {
                    chunk |= u16::from(s) << (13 - k);
                }
                out.extend_from_slice(&chunk.to_be_bytes());
                i += window.len();
            } else {
                let window = &syms[i..syms.len().min(i + 7)];
                let mut chunk = 0xC000u16;
                for (k, &s) in window.iter().enumerate() {
                    chunk |= u16::from(s) << (12 - 2 * k);
                }
                out.extend_from_slice(&chunk.to_be_bytes());
                i += window.len();
            }
        }
        for p in packets.iter().flatten() {
            if (0..=255).contains(p) {
                out.push(*p as u8);
            } else {
                out.extend_from_slice(&p.to_be_bytes());
            }
        }
    }
}

//! RTCP (RFC 3550 §6): compound packets of reports, SDES, BYE, generic NACK and PLI
//! (RFC 4585), and transport-wide congestion control feedback.
//!
//! [`parse_compound`] never panics: a malformed packet anywhere in the compound is an error.
//! Packet types it does not know are returned as [`RtcpPacket::Unknown`] and skipped.

mod feedback;
mod report;
mod twcc;

pub use feedback::{Fir, Nack, Pli};
pub use report::{Bye, ReceiverReport, ReportBlock, Sdes, SenderReport};
pub use twcc::{TransportFeedback, REFERENCE_MICROS, TICK_MICROS};

use crate::error::ParseError;
use crate::wire::Reader;

const PT_SR: u8 = 200;
const PT_RR: u8 = 201;
const PT_SDES: u8 = 202;
const PT_BYE: u8 = 203;
const PT_RTPFB: u8 = 205;
const PT_PSFB: u8 = 206;

/// One RTCP packet of a compound.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RtcpPacket {
    /// Sender report.
    SenderReport(SenderReport),
    /// Receiver report.
    ReceiverReport(ReceiverReport),
    /// Source description (CNAMEs).
    Sdes(Sdes),
    /// Goodbye.
    Bye(Bye),
    /// Generic NACK.
    Nack(Nack),
    /// Picture loss indication.
    Pli(Pli),
    /// Full intra request (RFC 5104).
    Fir(Fir),
    /// Transport-wide congestion control feedback.
    TransportFeedback(TransportFeedback),
    /// A packet type or feedback format this crate does not read.
    Unknown {
        /// Packet type.
        packet_type: u8,
        /// Count or FMT field.
        count: u8,
    },
}

/// Parses a compound RTCP packet (or a single reduced-size one, RFC 5506).
pub fn parse_compound(buf: &[u8]) -> Result<Vec<RtcpPacket>, ParseError> {
    let mut r = Reader::new(buf, "RTCP header");
    let mut out = Vec::new();
    if buf.is_empty() {
        return Err(ParseError::Truncated("RTCP header"));
    }
    while r.remaining() > 0 {
        let b0 = r.u8()?;
        let version = b0 >> 6;
        if version != 2 {
            return Err(ParseError::BadVersion(version));
        }
        let padding = b0 & 0x20 != 0;
        let count = b0 & 0x1f;
        let packet_type = r.u8()?;
        let words = usize::from(r.u16()?);
        let mut body = r
            .take(words * 4)
            .map_err(|_| ParseError::BadLength("RTCP packet"))?;
        if padding {
            let n = usize::from(*body.last().ok_or(ParseError::BadPadding)?);
            if n == 0 || n > body.len() {
                return Err(ParseError::BadPadding);
            }
            body = &body[..body.len() - n];
        }
        out.push(match (packet_type, count) {
            (PT_SR, _) => RtcpPacket::SenderReport(SenderReport::parse(count, body)?),
            (PT_RR, _) => RtcpPacket::ReceiverReport(ReceiverReport::parse(count, body)?),
            (PT_SDES, _) => RtcpPacket::Sdes(Sdes::parse(count, body)?),
            (PT_BYE, _) => RtcpPacket::Bye(Bye::parse(count, body)?),
            (PT_RTPFB, 1) => RtcpPacket::Nack(Nack::parse(body)?),
            (PT_RTPFB, 15) => RtcpPacket::TransportFeedback(TransportFeedback::parse(body)?),
            (PT_PSFB, 1) => RtcpPacket::Pli(Pli::parse(body)?),
            (PT_PSFB, 4) => RtcpPacket::Fir(Fir::parse(body)?),
            _ => RtcpPacket::Unknown { packet_type, count },
        });
    }
    Ok(out)
}

impl RtcpPacket {
    /// Appends the packet's wire form to `out`. [`RtcpPacket::Unknown`] writes nothing.
    pub fn write(&self, out: &mut Vec<u8>) {
        let (count, pt) = match self {
            Self::SenderReport(sr) => (sr.reports.len().min(31) as u8, PT_SR),
            Self::ReceiverReport(rr) => (rr.reports.len().min(31) as u8, PT_RR),
            Self::Sdes(s) => (s.chunks.len().min(31) as u8, PT_SDES),
            Self::Bye(b) => (b.ssrcs.len().min(31) as u8, PT_BYE),
            Self::Nack(_) => (1, PT_RTPFB),
            Self::TransportFeedback(_) => (15, PT_RTPFB),
            Self::Pli(_) => (1, PT_PSFB),
            Self::Fir(_) => (4, PT_PSFB),
            Self::Unknown { .. } => return,
        };
        let start = out.len();
        out.extend_from_slice(&[0x80 | count, pt, 0, 0]);
        match self {
            Self::SenderReport(sr) => sr.write_body(out),
            Self::ReceiverReport(rr) => rr.write_body(out),
            Self::Sdes(s) => s.write_body(out),
            Self::Bye(b) => b.write_body(out),
            Self::Nack(n) => n.write_body(out),
            Self::TransportFeedback(f) => f.write_body(out),
            Self::Pli(p) => p.write_body(out),
            Self::Fir(f) => f.write_body(out),
            Self::Unknown { .. } => {}
        }
        let body_len = out.len() - start;
        let pad = (4 - body_len % 4) % 4;
        if pad > 0 {
            // RFC 3550 padding: set P, the last byte holds the count.
            out.extend(std::iter::repeat_n(0, pad - 1));
            out.push(pad as u8);
            out[start] |= 0x20;
        }
        let words = ((out.len() - start) / 4 - 1) as u16;
        out[start + 2..start + 4].copy_from_slice(&words.to_be_bytes());
    }
}

/// Writes several packets as one compound.
pub fn write_compound(packets: &[RtcpPacket]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in packets {
        p.write(&mut out);
    }
    out
}

#[cfg(test)]
mod tests;

//! Sender and receiver reports (RFC 3550 §6.4), SDES CNAME (§6.5) and BYE (§6.6).

use crate::error::ParseError;
use crate::wire::Reader;

/// One reception report block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    /// SSRC of the source this block reports on.
    pub ssrc: u32,
    /// Fraction lost since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Cumulative number of packets lost (24-bit signed).
    pub cumulative_lost: i32,
    /// Extended highest sequence number received.
    pub highest_seq: u32,
    /// Interarrival jitter, in timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP timestamp of the last SR received (0 if none).
    pub last_sr: u32,
    /// Delay since that SR, in 1/65536 s.
    pub delay_since_last_sr: u32,
}

impl ReportBlock {
    pub(crate) fn parse(r: &mut Reader<'_>) -> Result<Self, ParseError> {
        let ssrc = r.u32()?;
        let fraction_lost = r.u8()?;
        let lost = r.u24()?;
        // Sign-extend the 24-bit value.
        let cumulative_lost = ((lost << 8) as i32) >> 8;
        Ok(Self {
            ssrc,
            fraction_lost,
            cumulative_lost,
            highest_seq: r.u32()?,
            jitter: r.u32()?,
            last_sr: r.u32()?,
            delay_since_last_sr: r.u32()?,
        })
    }

    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        out.push(self.fraction_lost);
        let lost = self.cumulative_lost.clamp(-(1 << 23), (1 << 23) - 1) as u32 & 0x00ff_ffff;
        out.extend_from_slice(&lost.to_be_bytes()[1..]);
        out.extend_from_slice(&self.highest_seq.to_be_bytes());
        out.extend_from_slice(&self.jitter.to_be_bytes());
        out.extend_from_slice(&self.last_sr.to_be_bytes());
        out.extend_from_slice(&self.delay_since_last_sr.to_be_bytes());
    }
}

/// Sender report (PT 200).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SenderReport {
    /// SSRC of the sender.
    pub ssrc: u32,
    /// 64-bit NTP timestamp of this report.
    pub ntp_time: u64,
    /// RTP timestamp matching `ntp_time`.
    pub rtp_time: u32,
    /// Packets sent so far.
    pub packet_count: u32,
    /// Payload octets sent so far.
    pub octet_count: u32,
    /// Reception reports (at most 31).
    pub reports: Vec<ReportBlock>,
}

/// Receiver report (PT 201).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReceiverReport {
    /// SSRC of the reporter.
    pub ssrc: u32,
    /// Reception reports (at most 31).
    pub reports: Vec<ReportBlock>,
}

impl SenderReport {
    pub(crate) fn parse(count: u8, body: &[u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new(body, "sender report");
        let mut sr = Self {
            ssrc: r.u32()?,
            ntp_time: r.u64()?,
            rtp_time: r.u32()?,
            packet_count: r.u32()?,
            octet_count: r.u32()?,
            reports: Vec::with_capacity(usize::from(count)),
        };
        for _ in 0..count {
            sr.reports.push(ReportBlock::parse(&mut r)?);
        }
        Ok(sr)
    }

    pub(crate) fn write_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        out.extend_from_slice(&self.ntp_time.to_be_bytes());
        out.extend_from_slice(&self.rtp_time.to_be_bytes());
        out.extend_from_slice(&self.packet_count.to_be_bytes());
        out.extend_from_slice(&self.octet_count.to_be_bytes());
        for b in self.reports.iter().take(31) {
            b.write(out);
        }
    }
}

impl ReceiverReport {
    pub(crate) fn parse(count: u8, body: &[u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new(body, "receiver report");
        let mut rr = Self {
            ssrc: r.u32()?,
            reports: Vec::with_capacity(usize::from(count)),
        };
        for _ in 0..count {
            rr.reports.push(ReportBlock::parse(&mut r)?);
        }
        Ok(rr)
    }

    pub(crate) fn write_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        for b in self.reports.iter().take(31) {
            b.write(out);
        }
    }
}

/// An SDES packet (PT 202) carrying one CNAME per chunk; other items are skipped on parse.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sdes {
    /// (SSRC, CNAME) pairs.
    pub chunks: Vec<(u32, Vec<u8>)>,
}

impl Sdes {
    pub(crate) fn parse(count: u8, body: &[u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new(body, "SDES");
        let mut chunks = Vec::new();
        for _ in 0..count {
            let ssrc = r.u32()?;
            let mut cname = Vec::new();
            let mut used = 0usize;
            loop {
                let t = r.u8()?;
                used += 1;
                if t == 0 {
                    break;
                }
                let len = r.u8()?;
                let v = r.take(usize::from(len))?;
                used += 1 + usize::from(len);
                if t == 1 {
                    cname = v.to_vec();
                }
            }
            // Chunks end on a 32-bit boundary.
            let pad = (4 - used % 4) % 4;
            r.take(pad)?;
            chunks.push((ssrc, cname));
        }
        Ok(Self { chunks })
    }

    pub(crate) fn write_body(&self, out: &mut Vec<u8>) {
        for (ssrc, cname) in self.chunks.iter().take(31) {
            out.extend_from_slice(&ssrc.to_be_bytes());
            let cname = &cname[..cname.len().min(255)];
            out.push(1);
            out.push(cname.len() as u8);
            out.extend_from_slice(cname);
            let used = 2 + cname.len();
            // The terminating null item, then padding to 32 bits.
            let pad = 4 - used % 4;
            out.extend(std::iter::repeat_n(0, pad));
        }
    }
}

/// A BYE packet (PT 203). A reason string, if any, is dropped on parse.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bye {
    /// The sources leaving.
    pub ssrcs: Vec<u32>,
}

impl Bye {
    pub(crate) fn parse(count: u8, body: &[u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new(body, "BYE");
        let mut ssrcs = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            ssrcs.push(r.u32()?);
        }
        Ok(Self { ssrcs })
    }

    pub(crate) fn write_body(&self, out: &mut Vec<u8>) {
        for s in self.ssrcs.iter().take(31) {
            out.extend_from_slice(&s.to_be_bytes());
        }
    }
}

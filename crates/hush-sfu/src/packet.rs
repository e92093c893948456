//! The little the SFU reads of media packets: the RTP fixed header, the RFC 6464 audio level in
//! the RFC 8285 one-byte extension form, and RFC 4585 generic NACK and PLI in compound RTCP.
//!
//! Zero-copy and allocation-free; every read is bounds-checked, so no input can panic.

/// RTCP packet type of a sender report (RFC 3550).
const PT_SR: u8 = 200;
/// RTCP packet type of a receiver report (RFC 3550).
const PT_RR: u8 = 201;
/// RTCP packet type of a goodbye (RFC 3550 §6.6).
const PT_BYE: u8 = 203;
/// RTCP packet type of transport-layer feedback (RFC 4585).
const PT_RTPFB: u8 = 205;
/// RTCP packet type of payload-specific feedback (RFC 4585).
const PT_PSFB: u8 = 206;
/// Profile of the one-byte header extension form (RFC 8285 §4.2).
const ONE_BYTE_PROFILE: u16 = 0xBEDE;

/// One-byte extension id of the frame marking element senders put on video packets
/// (docs/sfu.md, "Simulcast"): one byte, bit 7 start of frame, bit 6 end of frame, bit 5
/// independent (key) frame, as in the first byte of draft-ietf-avtext-framemarking.
pub const FRAME_MARKING_EXT_ID: u8 = 11;
/// One-byte extension id of the transport-wide sequence number the SFU writes on every RTP
/// packet it sends to a leg (docs/sfu.md, "Per-leg congestion control").
pub const TRANSPORT_SEQ_EXT_ID: u8 = 12;

/// Whether a datagram is RTCP rather than RTP on a shared port (RFC 5761 §4: the second byte is
/// an RTCP packet type 192..=223).
pub(crate) fn is_rtcp(buf: &[u8]) -> bool {
    matches!(buf.get(1), Some(192..=223))
}

/// What the SFU reads of an RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RtpInfo {
    pub(crate) ssrc: u32,
    pub(crate) seq: u16,
    pub(crate) timestamp: u32,
    /// The frame marking byte under [`FRAME_MARKING_EXT_ID`], if present.
    pub(crate) marking: Option<u8>,
    /// RFC 6464 level in −dBov (0 loudest, 127 silence), if the extension is present.
    pub(crate) audio_level: Option<u8>,
    /// The sender's transport-wide sequence number under [`TRANSPORT_SEQ_EXT_ID`] (2 bytes),
    /// if present.
    pub(crate) transport_seq: Option<u16>,
    /// The payload type.
    pub(crate) payload_type: u8,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
        *b.get(at + 2)?,
        *b.get(at + 3)?,
    ]))
}

/// Reads an RTP packet's SSRC, sequence number and (under the one-byte extension id
/// `audio_level_ext`) its audio level. `None` if the packet is not well formed.
pub(crate) fn parse_rtp(buf: &[u8], audio_level_ext: Option<u8>) -> Option<RtpInfo> {
    let b0 = *buf.first()?;
    if b0 >> 6 != 2 {
        return None;
    }
    let seq = be16(buf, 2)?;
    let timestamp = be32(buf, 4)?;
    let ssrc = be32(buf, 8)?;
    let cc = usize::from(b0 & 0x0f);
    let ext_at = 12 + 4 * cc;
    if buf.len() < ext_at {
        return None;
    }
    let mut audio_level = None;
    let mut marking = None;
    let mut transport_seq = None;
    if b0 & 0x10 != 0 {
        let profile = be16(buf, ext_at)?;
        let words = usize::from(be16(buf, ext_at + 2)?);
        let body = buf.get(ext_at + 4..ext_at + 4 + 4 * words)?;
        if profile == ONE_BYTE_PROFILE {
            if let Some(id) = audio_level_ext {
                audio_level = one_byte_element(body, id).and_then(|d| d.first().map(|b| b & 0x7f));
            }
            marking = one_byte_element(body, FRAME_MARKING_EXT_ID).and_then(|d| d.first().copied());
            transport_seq = one_byte_element(body, TRANSPORT_SEQ_EXT_ID).and_then(|d| match d {
                [a, b] => Some(u16::from_be_bytes([*a, *b])),
                _ => None,
            });
        }
    }
    Some(RtpInfo {
        ssrc,
        seq,
        timestamp,
        marking,
        audio_level,
        transport_seq,
        payload_type: *buf.get(1)? & 0x7f,
    })
}

/// The data of element `id` in a one-byte-form extension block, if present and well formed.
fn one_byte_element(body: &[u8], id: u8) -> Option<&[u8]> {
    let mut i = 0;
    while let Some(&b) = body.get(i) {
        let eid = b >> 4;
        if eid == 0 {
            i += 1; // padding
            continue;
        }
        if eid == 15 {
            return None; // reserved: stop
        }
        let len = usize::from(b & 0x0f) + 1;
        let data = body.get(i + 1..i + 1 + len)?;
        if eid == id {
            return Some(data);
        }
        i += 1 + len;
    }
    None
}

/// Feedback the SFU acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Feedback {
    /// Generic NACK for `pid` and the bitmask `blp` of the 16 following sequence numbers.
    Nack { media_ssrc: u32, pid: u16, blp: u16 },
    /// Picture loss indication (and FIR, treated the same way).
    Pli { media_ssrc: u32 },
    /// Transport-wide congestion control feedback: the RTCP packet at `start..end` of the
    /// compound.
    TransportCc { start: usize, end: usize },
    /// A reception report block (of an SR or RR) about `ssrc`, with its last-SR fields.
    ReportBlock { ssrc: u32, lsr: u32, dlsr: u32 },
    /// A goodbye (RFC 3550 §6.6) for `ssrc`: the sender stops that stream (a simulcast layer
    /// its uplink cannot carry, docs/sfu.md "Uplink congestion control").
    Bye { ssrc: u32 },
}

/// Walks a compound RTCP packet and calls `f` for each NACK item and PLI/FIR. Stops at the first
/// malformed packet and returns `false` (what came before it was still reported).
pub(crate) fn for_each_feedback(buf: &[u8], mut f: impl FnMut(Feedback)) -> bool {
    let mut at = 0;
    while at < buf.len() {
        let Some(&b0) = buf.get(at) else {
            return false;
        };
        let (Some(&pt), Some(words)) = (buf.get(at + 1), be16(buf, at + 2)) else {
            return false;
        };
        if b0 >> 6 != 2 {
            return false;
        }
        let end = at + 4 + 4 * usize::from(words);
        let Some(body) = buf.get(at + 4..end) else {
            return false;
        };
        let fmt = b0 & 0x1f;
        match (pt, fmt) {
            (PT_RTPFB, 1) => {
                let Some(media_ssrc) = be32(body, 4) else {
                    return false;
                };
                let mut i = 8;
                while let (Some(pid), Some(blp)) = (be16(body, i), be16(body, i + 2)) {
                    f(Feedback::Nack {
                        media_ssrc,
                        pid,
                        blp,
                    });
                    i += 4;
                }
            }
            (PT_RTPFB, 15) => f(Feedback::TransportCc { start: at, end }),
            (PT_SR | PT_RR, count) => {
                // Reports follow the reporter's SSRC (and, in an SR, 20 bytes of sender info).
                let mut i = if pt == PT_SR { 24 } else { 4 };
                for _ in 0..count {
                    let (Some(ssrc), Some(lsr), Some(dlsr)) =
                        (be32(body, i), be32(body, i + 16), be32(body, i + 20))
                    else {
                        return false;
                    };
                    f(Feedback::ReportBlock { ssrc, lsr, dlsr });
                    i += 24;
                }
            }
            (PT_BYE, count) => {
                for k in 0..usize::from(count) {
                    let Some(ssrc) = be32(body, 4 * k) else {
                        return false;
                    };
                    f(Feedback::Bye { ssrc });
                }
            }
            (PT_PSFB, 1) => {
                let Some(media_ssrc) = be32(body, 4) else {
                    return false;
                };
                f(Feedback::Pli { media_ssrc });
            }
            (PT_PSFB, 4) => {
                // FIR (RFC 5104 §4.3.1): FCI entries of SSRC + seq nr + reserved.
                let mut i = 8;
                while let Some(media_ssrc) = be32(body, i) {
                    f(Feedback::Pli { media_ssrc });
                    i += 8;
                }
            }
            _ => {}
        }
        at = end;
    }
    true
}

/// Walks a one-byte-form extension body: the end of its last element (what follows is
/// padding), and the offset and length of the data of element `id` if present. `None` if the
/// body is malformed or holds the reserved id 15.
fn scan_one_byte(body: &[u8], id: u8) -> Option<(usize, Option<(usize, usize)>)> {
    let mut i = 0;
    let mut end = 0;
    let mut found = None;
    while let Some(&b) = body.get(i) {
        let eid = b >> 4;
        if eid == 0 {
            i += 1;
            continue;
        }
        if eid == 15 {
            return None;
        }
        let len = usize::from(b & 0x0f) + 1;
        body.get(i + 1..i + 1 + len)?;
        if eid == id && found.is_none() {
            found = Some((i + 1, len));
        }
        i += 1 + len;
        end = i;
    }
    Some((end, found))
}

/// Copies the RTP packet `src` into `out` (cleared first) with a 2-byte element under
/// [`TRANSPORT_SEQ_EXT_ID`] in its one-byte-form extension block: added to the block, a block
/// added if the packet has none, or the element already there reused. Returns the offset of
/// the element's 2 bytes in `out` for the caller to fill in; `None` (and `out` a plain copy)
/// when the packet carries a two-byte-form or other extension, or a malformed one.
pub(crate) fn copy_with_transport_seq(src: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    out.clear();
    let at = stamp_into(src, out);
    if at.is_none() {
        out.clear();
        out.extend_from_slice(src);
    }
    at
}

fn stamp_into(src: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    let b0 = *src.first()?;
    let ext_at = 12 + 4 * usize::from(b0 & 0x0f);
    let head = src.get(..ext_at)?;
    let element = (TRANSPORT_SEQ_EXT_ID << 4) | 1;
    if b0 & 0x10 == 0 {
        out.extend_from_slice(head);
        *out.first_mut()? |= 0x10;
        let [p0, p1] = ONE_BYTE_PROFILE.to_be_bytes();
        out.extend_from_slice(&[p0, p1, 0, 1, element, 0, 0, 0]);
        out.extend_from_slice(src.get(ext_at..)?);
        return Some(ext_at + 5);
    }
    if be16(src, ext_at)? != ONE_BYTE_PROFILE {
        return None;
    }
    let words = usize::from(be16(src, ext_at + 2)?);
    let body_at = ext_at + 4;
    let body = src.get(body_at..body_at + 4 * words)?;
    let rest = src.get(body_at + 4 * words..)?;
    let (end, found) = scan_one_byte(body, TRANSPORT_SEQ_EXT_ID)?;
    match found {
        Some((offset, 2)) => {
            out.extend_from_slice(src);
            Some(body_at + offset)
        }
        Some(_) => None,
        None => {
            let mut new_len = end + 3;
            new_len += (4 - new_len % 4) % 4;
            let new_words = u16::try_from(new_len / 4).ok()?;
            out.extend_from_slice(head);
            out.extend_from_slice(&ONE_BYTE_PROFILE.to_be_bytes());
            out.extend_from_slice(&new_words.to_be_bytes());
            out.extend_from_slice(body.get(..end)?);
            out.extend_from_slice(&[element, 0, 0]);
            out.resize(body_at + new_len, 0);
            out.extend_from_slice(rest);
            Some(body_at + end + 1)
        }
    }
}

/// Rewrites an RTP packet's sequence number, timestamp and SSRC in place (a no-op on a buffer
/// shorter than the fixed header, which the parser has refused before).
pub(crate) fn rewrite_rtp(buf: &mut [u8], ssrc: u32, seq: u16, timestamp: u32) {
    if let Some(h) = buf.get_mut(2..12) {
        h[..2].copy_from_slice(&seq.to_be_bytes());
        h[2..6].copy_from_slice(&timestamp.to_be_bytes());
        h[6..].copy_from_slice(&ssrc.to_be_bytes());
    }
}

/// A PLI (RFC 4585 §6.3.1) from `sender_ssrc` about `media_ssrc`, in `out` (cleared first).
pub(crate) fn write_pli(out: &mut Vec<u8>, sender_ssrc: u32, media_ssrc: u32) {
    out.clear();
    out.extend_from_slice(&[0x81, PT_PSFB, 0, 2]);
    out.extend_from_slice(&sender_ssrc.to_be_bytes());
    out.extend_from_slice(&media_ssrc.to_be_bytes());
}

/// A sender report (RFC 3550 §6.4.1) from `ssrc` without report blocks, in `out` (cleared
/// first), whose NTP timestamp's middle 32 bits are `ntp32` (the rest, and the RTP time and
/// counts, 0: the SFU sends no media of its own; the report is only there to be echoed back
/// for the round-trip time).
pub(crate) fn write_sender_report(out: &mut Vec<u8>, ssrc: u32, ntp32: u32) {
    out.clear();
    out.extend_from_slice(&[0x80, PT_SR, 0, 6]);
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.extend_from_slice(&(ntp32 >> 16).to_be_bytes());
    out.extend_from_slice(&(ntp32 << 16).to_be_bytes());
    out.extend_from_slice(&[0; 12]);
}

/// The sender SSRC of an RTCP packet (bytes 4..8).
pub(crate) fn rtcp_sender_ssrc(buf: &[u8]) -> Option<u32> {
    be32(buf, 4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hush_media::rtcp::{
        self, Bye, Nack, Pli, ReceiverReport, ReportBlock, RtcpPacket, SenderReport,
        TransportFeedback,
    };
    use hush_media::rtp::{AudioLevel, RtpPacket};
    use proptest::prelude::*;

    #[test]
    fn reads_header_and_audio_level_written_by_hush_media() {
        let mut p = RtpPacket::default();
        p.header.ssrc = 0xdead_beef;
        p.header.sequence_number = 4242;
        p.header.csrcs = vec![1, 2];
        p.header.set_transport_seq(3, 7);
        p.header.set_audio_level(
            5,
            AudioLevel {
                voice: true,
                level: 33,
            },
        );
        p.payload = vec![9; 20];
        let bytes = p.to_vec();
        let info = parse_rtp(&bytes, Some(5)).unwrap();
        assert_eq!(info.ssrc, 0xdead_beef);
        assert_eq!(info.seq, 4242);
        assert_eq!(info.audio_level, Some(33));
        assert_eq!(info.transport_seq, None, "not under the SFU's id");
        assert_eq!(parse_rtp(&bytes, Some(4)).unwrap().audio_level, None);
        p.header.set_transport_seq(TRANSPORT_SEQ_EXT_ID, 0xbeef);
        p.header.payload_type = 96;
        let info = parse_rtp(&p.to_vec(), Some(5)).unwrap();
        assert_eq!(info.transport_seq, Some(0xbeef));
        assert_eq!(info.payload_type, 96);
        assert_eq!(info.audio_level, Some(33));
        assert_eq!(parse_rtp(&bytes, None).unwrap().audio_level, None);
        assert!(!is_rtcp(&bytes));
        // Two-byte form is not read (the SFU reads only the one-byte form).
        p.header.set_extension(20, vec![1; 20]);
        assert_eq!(parse_rtp(&p.to_vec(), Some(5)).unwrap().audio_level, None);
    }

    #[test]
    fn truncated_rtp_is_refused() {
        let mut p = RtpPacket::default();
        p.header.set_audio_level(
            1,
            AudioLevel {
                voice: false,
                level: 10,
            },
        );
        let bytes = p.to_vec();
        for n in 0..12 {
            assert!(parse_rtp(&bytes[..n], Some(1)).is_none());
        }
        // Cut inside the extension block.
        assert!(parse_rtp(&bytes[..bytes.len() - 1], Some(1)).is_none());
        assert!(parse_rtp(&[0x40; 12], None).is_none());
    }

    #[test]
    fn reads_nack_pli_and_transport_feedback_written_by_hush_media() {
        let lost = vec![100, 101, 117, 300];
        let twcc = TransportFeedback {
            sender_ssrc: 1,
            media_ssrc: 2,
            base_seq: 65_530,
            reference_time: 77,
            feedback_count: 3,
            packets: vec![Some(4), None, Some(-2), Some(300)],
        };
        let mut twccs = Vec::new();
        let mut blocks = Vec::new();
        let block = |ssrc, last_sr, delay_since_last_sr| ReportBlock {
            ssrc,
            fraction_lost: 9,
            last_sr,
            delay_since_last_sr,
            ..ReportBlock::default()
        };
        let compound = rtcp::write_compound(&[
            RtcpPacket::Nack(Nack {
                sender_ssrc: 1,
                media_ssrc: 0xabc,
                lost: lost.clone(),
            }),
            RtcpPacket::Pli(Pli {
                sender_ssrc: 1,
                media_ssrc: 0xdef,
            }),
            RtcpPacket::TransportFeedback(twcc.clone()),
            RtcpPacket::SenderReport(SenderReport {
                ssrc: 1,
                ntp_time: 77,
                reports: vec![block(1, 0x1111, 0x22)],
                ..SenderReport::default()
            }),
            RtcpPacket::ReceiverReport(ReceiverReport {
                ssrc: 1,
                reports: vec![block(3, 0x3333, 0x44), block(4, 0x5555, 0x66)],
            }),
            RtcpPacket::Bye(Bye {
                ssrcs: vec![0x77, 0x78],
            }),
        ]);
        assert!(is_rtcp(&compound));
        assert_eq!(rtcp_sender_ssrc(&compound), Some(1));
        let mut got = Vec::new();
        let mut plis = Vec::new();
        let mut byes = Vec::new();
        assert!(for_each_feedback(&compound, |fb| match fb {
            Feedback::Nack {
                media_ssrc,
                pid,
                blp,
            } => {
                assert_eq!(media_ssrc, 0xabc);
                got.push(pid);
                for i in 0..16u16 {
                    if blp & (1 << i) != 0 {
                        got.push(pid.wrapping_add(i + 1));
                    }
                }
            }
            Feedback::Pli { media_ssrc } => plis.push(media_ssrc),
            Feedback::TransportCc { start, end } => twccs.push((start, end)),
            Feedback::ReportBlock { ssrc, lsr, dlsr } => blocks.push((ssrc, lsr, dlsr)),
            Feedback::Bye { ssrc } => byes.push(ssrc),
        }));
        assert_eq!(byes, vec![0x77, 0x78]);
        assert_eq!(
            blocks,
            vec![(1, 0x1111, 0x22), (3, 0x3333, 0x44), (4, 0x5555, 0x66)]
        );
        assert_eq!(got, lost);
        assert_eq!(twccs.len(), 1);
        let (start, end) = twccs[0];
        assert_eq!(
            rtcp::parse_compound(&compound[start..end]).unwrap(),
            vec![RtcpPacket::TransportFeedback(twcc)]
        );
        assert_eq!(plis, vec![0xdef]);

        let mut out = Vec::new();
        write_sender_report(&mut out, 5, 0xabcd_1234);
        match rtcp::parse_compound(&out).unwrap().as_slice() {
            [RtcpPacket::SenderReport(sr)] => {
                assert_eq!(sr.ssrc, 5);
                assert_eq!((sr.ntp_time >> 16) as u32, 0xabcd_1234);
                assert!(sr.reports.is_empty());
            }
            other => panic!("{other:?}"),
        }
        write_pli(&mut out, 5, 6);
        let parsed = rtcp::parse_compound(&out).unwrap();
        assert_eq!(
            parsed,
            vec![RtcpPacket::Pli(Pli {
                sender_ssrc: 5,
                media_ssrc: 6
            })]
        );
    }

    #[test]
    fn malformed_rtcp_stops_the_walk() {
        let mut out = Vec::new();
        write_pli(&mut out, 5, 6);
        // Length says one more word than there is.
        out[3] = 3;
        assert!(!for_each_feedback(&out, |_| {}));
        assert!(!for_each_feedback(&[0x81, 206], |_| {}));
    }

    #[test]
    fn transport_seq_is_added_or_reused_and_the_rest_kept() {
        let mut cases = Vec::new();
        // No extension at all, with CSRCs.
        let mut p = RtpPacket::default();
        p.header.csrcs = vec![5];
        p.payload = vec![1, 2, 3];
        cases.push(p.clone());
        // An audio level and a frame marking element already there.
        p.header.set_audio_level(
            1,
            AudioLevel {
                voice: true,
                level: 20,
            },
        );
        p.header.set_extension(FRAME_MARKING_EXT_ID, vec![0xa0]);
        cases.push(p.clone());
        // The sender's own transport sequence under the same id: reused.
        p.header.set_transport_seq(TRANSPORT_SEQ_EXT_ID, 999);
        cases.push(p.clone());
        for (n, p) in cases.iter().enumerate() {
            let src = p.to_vec();
            let mut out = Vec::new();
            let at = copy_with_transport_seq(&src, &mut out).expect("stamped");
            out[at..at + 2].copy_from_slice(&0xabcdu16.to_be_bytes());
            let got = RtpPacket::parse(&out).unwrap();
            assert_eq!(
                got.header.transport_seq(TRANSPORT_SEQ_EXT_ID),
                Some(0xabcd),
                "{n}"
            );
            assert_eq!(got.payload, p.payload);
            assert_eq!(got.header.csrcs, p.header.csrcs);
            assert_eq!(got.header.audio_level(1), p.header.audio_level(1));
            assert_eq!(
                got.header.extension(FRAME_MARKING_EXT_ID),
                p.header.extension(FRAME_MARKING_EXT_ID)
            );
            assert_eq!(out.len() % 4, src.len() % 4);
        }
        // A two-byte-form block is copied as it is, unstamped.
        let mut p = RtpPacket::default();
        p.header.set_extension(20, vec![1; 20]);
        let src = p.to_vec();
        let mut out = vec![7; 3];
        assert_eq!(copy_with_transport_seq(&src, &mut out), None);
        assert_eq!(out, src);
    }

    proptest! {
        #[test]
        fn stamping_never_panics_and_keeps_what_it_cannot_stamp(
            bytes in proptest::collection::vec(any::<u8>(), 0..120)
        ) {
            let mut out = Vec::new();
            match copy_with_transport_seq(&bytes, &mut out) {
                None => prop_assert_eq!(&out, &bytes),
                Some(at) => prop_assert!(at + 2 <= out.len()),
            }
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), id in 0u8..16) {
            let _ = parse_rtp(&bytes, Some(id));
            let _ = for_each_feedback(&bytes, |_| {});
            let _ = is_rtcp(&bytes);
            let _ = rtcp_sender_ssrc(&bytes);
        }
    }
}

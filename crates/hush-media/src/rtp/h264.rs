//! RTP payload format for H.264 (RFC 6184), packetization mode 1 (non-interleaved): single NAL
//! unit packets, STAP-A aggregation and FU-A fragmentation.
//!
//! The packetizer takes an Annex B access unit and returns RTP payloads; the depacketizer takes
//! the payloads of one access unit in sequence order and returns it in Annex B form. Payloads
//! come from the network: every inconsistency is an [`H264Error`], never a panic.

use thiserror::Error;

use crate::video::{annexb_nal_units, NAL_FU_A, NAL_IDR, NAL_PPS, NAL_SEI, NAL_SPS, NAL_STAP_A};

/// NAL unit type of an access unit delimiter.
const NAL_AUD: u8 = 9;
/// FU header: first fragment.
const FU_START: u8 = 0x80;
/// FU header: last fragment.
const FU_END: u8 = 0x40;
/// FU header: reserved bit, must be zero.
const FU_RESERVED: u8 = 0x20;
/// Forbidden-zero bit of a NAL header.
const FORBIDDEN: u8 = 0x80;
/// Annex B start code written before each NAL unit.
const START_CODE: [u8; 4] = [0, 0, 0, 1];
/// Smallest payload size the packetizer accepts (FU indicator, FU header, one byte).
pub const H264_MIN_PAYLOAD: usize = 3;

/// Why RTP payloads could not be turned back into an access unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum H264Error {
    /// A payload (or a NAL unit inside a STAP-A) is empty.
    #[error("empty payload or NAL unit")]
    Empty,
    /// The forbidden-zero bit of a NAL header is set.
    #[error("forbidden bit set in NAL header")]
    ForbiddenBit,
    /// A NAL unit type this receiver does not accept (0, 30, 31, or STAP-B/MTAP/FU-B, which
    /// packetization mode 1 does not use).
    #[error("unsupported NAL unit type {0}")]
    Unsupported(u8),
    /// A STAP-A size field runs past the end of the packet, or no unit follows the header.
    #[error("malformed STAP-A")]
    BadStapA,
    /// An FU-A packet without its FU header, with the reserved bit set, with both start and
    /// end bits, or carrying an aggregation or fragmentation type inside.
    #[error("malformed FU-A")]
    BadFuA,
    /// An FU-A fragment that continues a NAL unit whose start was not seen.
    #[error("FU-A fragment without a start")]
    FuWithoutStart,
    /// A new NAL unit began (or the access unit ended) before the FU-A end fragment: a
    /// fragment was lost.
    #[error("truncated FU-A")]
    TruncatedFuA,
    /// The fragments of one FU-A disagree on the NAL unit type.
    #[error("FU-A fragments of different NAL unit types")]
    FuTypeChanged,
    /// No NAL unit at all in the access unit.
    #[error("access unit without NAL units")]
    NoNalUnits,
}

/// Splits an Annex B access unit into RTP payloads of at most `max_payload` bytes (clamped
/// to at least [`H264_MIN_PAYLOAD`]): runs of small NAL units share a STAP-A, a unit that fits
/// alone goes as a single NAL unit packet, a larger one is fragmented into FU-A packets.
/// The caller sets the marker bit on the last payload's packet.
pub fn packetize_h264(access_unit: &[u8], max_payload: usize) -> Vec<Vec<u8>> {
    let max = max_payload.max(H264_MIN_PAYLOAD);
    let nals: Vec<&[u8]> = annexb_nal_units(access_unit).collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < nals.len() {
        let nal = nals[i];
        // How many units from `i` fit together in one STAP-A.
        let mut size = 1;
        let mut n = 0;
        while let Some(next) = nals.get(i + n) {
            if size + 2 + next.len() > max || next.len() > usize::from(u16::MAX) {
                break;
            }
            size += 2 + next.len();
            n += 1;
        }
        if n >= 2 {
            let group = &nals[i..i + n];
            let f = group.iter().fold(0, |a, u| a | (u[0] & FORBIDDEN));
            let nri = group.iter().map(|u| u[0] & 0x60).max().unwrap_or(0);
            let mut p = Vec::with_capacity(size);
            p.push(f | nri | NAL_STAP_A);
            for u in group {
                p.extend_from_slice(&(u.len() as u16).to_be_bytes());
                p.extend_from_slice(u);
            }
            out.push(p);
            i += n;
        } else if nal.len() <= max {
            out.push(nal.to_vec());
            i += 1;
        } else {
            let indicator = (nal[0] & 0xe0) | NAL_FU_A;
            let kind = nal[0] & 0x1f;
            let body = &nal[1..];
            let chunk = max - 2;
            let count = body.len().div_ceil(chunk);
            for (k, part) in body.chunks(chunk).enumerate() {
                let mut header = kind;
                if k == 0 {
                    header |= FU_START;
                }
                if k + 1 == count {
                    header |= FU_END;
                }
                let mut p = Vec::with_capacity(part.len() + 2);
                p.push(indicator);
                p.push(header);
                p.extend_from_slice(part);
                out.push(p);
            }
            i += 1;
        }
    }
    out
}

/// Whether an RTP payload can begin an access unit: it starts with an access unit delimiter,
/// SEI or parameter set, or with the first slice of a picture (`first_mb_in_slice` = 0),
/// whole or as the first FU-A fragment.
pub fn h264_payload_starts_frame(payload: &[u8]) -> bool {
    let Some(&h) = payload.first() else {
        return false;
    };
    let (kind, rest) = match h & 0x1f {
        NAL_STAP_A => {
            // First aggregated unit: two size bytes, then the unit.
            match payload.get(3..) {
                Some(u) if !u.is_empty() => (u[0] & 0x1f, &u[1..]),
                _ => return false,
            }
        }
        NAL_FU_A => match payload.get(1) {
            Some(&fu) if fu & FU_START != 0 => (fu & 0x1f, payload.get(2..).unwrap_or(&[])),
            _ => return false,
        },
        k => (k, &payload[1..]),
    };
    match kind {
        NAL_AUD | NAL_SEI | NAL_SPS | NAL_PPS => true,
        // ue(v) of 0 is the single bit 1.
        1 | NAL_IDR => rest.first().is_some_and(|b| b & 0x80 != 0),
        _ => false,
    }
}

/// Whether an RTP payload carries (part of) an IDR slice or a sequence parameter set.
pub fn h264_payload_has_keyframe(payload: &[u8]) -> bool {
    let Some(&h) = payload.first() else {
        return false;
    };
    match h & 0x1f {
        NAL_STAP_A => {
            let mut rest = &payload[1..];
            while let Some((size, tail)) = rest.split_first_chunk::<2>() {
                let size = usize::from(u16::from_be_bytes(*size));
                let Some(unit) = tail.get(..size) else {
                    return false;
                };
                if unit.first().is_some_and(|b| b & 0x1f == NAL_IDR) {
                    return true;
                }
                rest = &tail[size..];
            }
            false
        }
        NAL_FU_A => payload.get(1).is_some_and(|fu| fu & 0x1f == NAL_IDR),
        k => k == NAL_IDR,
    }
}

fn check_nal_header(h: u8) -> Result<u8, H264Error> {
    if h & FORBIDDEN != 0 {
        return Err(H264Error::ForbiddenBit);
    }
    match h & 0x1f {
        k @ 1..=23 => Ok(k),
        k => Err(H264Error::Unsupported(k)),
    }
}

/// Rebuilds one access unit in Annex B form from its RTP payloads, in sequence order.
///
/// Any malformed payload, a fragment whose start is missing, or a fragmented NAL unit left
/// open at the end makes the whole access unit an error: a decoder must not see a partial
/// picture.
pub fn depacketize_h264<'a>(
    payloads: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<u8>, H264Error> {
    let mut out = Vec::new();
    // (NAL type of the fragmented unit) while an FU-A is open.
    let mut open_fu: Option<u8> = None;
    let mut units = 0usize;
    for payload in payloads {
        let (&h, body) = payload.split_first().ok_or(H264Error::Empty)?;
        if h & FORBIDDEN != 0 {
            return Err(H264Error::ForbiddenBit);
        }
        let kind = h & 0x1f;
        if kind != NAL_FU_A && open_fu.is_some() {
            return Err(H264Error::TruncatedFuA);
        }
        match kind {
            NAL_STAP_A => {
                let mut rest = body;
                let mut n = 0;
                while !rest.is_empty() {
                    let (size, tail) = rest.split_first_chunk::<2>().ok_or(H264Error::BadStapA)?;
                    let size = usize::from(u16::from_be_bytes(*size));
                    let unit = tail.get(..size).ok_or(H264Error::BadStapA)?;
                    let (&uh, _) = unit.split_first().ok_or(H264Error::Empty)?;
                    check_nal_header(uh)?;
                    out.extend_from_slice(&START_CODE);
                    out.extend_from_slice(unit);
                    rest = &tail[size..];
                    n += 1;
                }
                if n == 0 {
                    return Err(H264Error::BadStapA);
                }
                units += n;
            }
            NAL_FU_A => {
                let (&fu, data) = body.split_first().ok_or(H264Error::BadFuA)?;
                let inner = fu & 0x1f;
                let (start, end) = (fu & FU_START != 0, fu & FU_END != 0);
                if fu & FU_RESERVED != 0 || (start && end) || data.is_empty() {
                    return Err(H264Error::BadFuA);
                }
                if !(1..=23).contains(&inner) {
                    return Err(H264Error::BadFuA);
                }
                match (start, open_fu) {
                    (true, Some(_)) => return Err(H264Error::TruncatedFuA),
                    (true, None) => {
                        out.extend_from_slice(&START_CODE);
                        out.push((h & 0xe0) | inner);
                        open_fu = Some(inner);
                    }
                    (false, None) => return Err(H264Error::FuWithoutStart),
                    (false, Some(t)) if t != inner => return Err(H264Error::FuTypeChanged),
                    (false, Some(_)) => {}
                }
                out.extend_from_slice(data);
                if end {
                    open_fu = None;
                    units += 1;
                }
            }
            _ => {
                check_nal_header(h)?;
                out.extend_from_slice(&START_CODE);
                out.extend_from_slice(payload);
                units += 1;
            }
        }
    }
    if open_fu.is_some() {
        return Err(H264Error::TruncatedFuA);
    }
    if units == 0 {
        return Err(H264Error::NoNalUnits);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn au(nals: &[&[u8]]) -> Vec<u8> {
        nals.iter()
            .flat_map(|n| START_CODE.iter().chain(n.iter()).copied())
            .collect()
    }

    fn slice(kind: u8, first_mb_zero: bool, len: usize) -> Vec<u8> {
        let mut v = vec![0x60 | kind, if first_mb_zero { 0x88 } else { 0x40 }];
        v.extend((0..len.saturating_sub(2)).map(|i| (i % 251) as u8 + 1));
        v
    }

    #[test]
    fn small_units_aggregate_large_ones_fragment() {
        let sps = [0x67, 0x42, 0xc0, 0x1e];
        let pps = [0x68, 0xce, 0x3c, 0x80];
        let idr = slice(NAL_IDR, true, 3000);
        let p_small = slice(1, false, 500);
        let unit = au(&[&sps, &pps, &idr, &p_small]);
        let payloads = packetize_h264(&unit, 1200);
        // STAP-A(SPS, PPS), FU-A ×3 for the 3000-byte slice, then a single NAL packet.
        assert_eq!(payloads[0][0] & 0x1f, NAL_STAP_A);
        assert_eq!(
            payloads[0][0] & 0x60,
            0x60,
            "NRI is the largest of the group"
        );
        assert_eq!(payloads[0][1..3], [0, 4]);
        let fus: Vec<&Vec<u8>> = payloads[1..4].iter().collect();
        assert!(fus.iter().all(|p| p[0] == 0x60 | NAL_FU_A));
        assert_eq!(fus[0][1], FU_START | NAL_IDR);
        assert_eq!(fus[1][1], NAL_IDR);
        assert_eq!(fus[2][1], FU_END | NAL_IDR);
        assert_eq!(payloads[4], p_small);
        assert_eq!(payloads.len(), 5);
        assert!(payloads.iter().all(|p| p.len() <= 1200));
        assert!(h264_payload_starts_frame(&payloads[0]));
        assert!(!h264_payload_starts_frame(&payloads[2]));
        assert!(h264_payload_has_keyframe(&payloads[1]));
        assert!(!h264_payload_has_keyframe(&payloads[4]));
        let back = depacketize_h264(payloads.iter().map(Vec::as_slice)).unwrap();
        assert_eq!(back, unit);
    }

    #[test]
    fn tiny_payload_limit_still_round_trips() {
        let unit = au(&[&[0x67, 1, 2, 3], &slice(NAL_IDR, true, 40)]);
        for max in [0, 3, 4, 7, 64] {
            let payloads = packetize_h264(&unit, max);
            assert!(payloads.iter().all(|p| p.len() <= max.max(3)));
            let back = depacketize_h264(payloads.iter().map(Vec::as_slice)).unwrap();
            assert_eq!(back, unit, "max {max}");
        }
    }

    #[test]
    fn lost_or_odd_fragments_are_errors() {
        let unit = au(&[&slice(NAL_IDR, true, 100)]);
        let p = packetize_h264(&unit, 30);
        assert!(p.len() >= 4);
        let without = |skip: usize| {
            depacketize_h264(
                p.iter()
                    .enumerate()
                    .filter(|(i, _)| *i != skip)
                    .map(|(_, v)| v.as_slice()),
            )
        };
        assert_eq!(without(0), Err(H264Error::FuWithoutStart));
        assert_eq!(without(p.len() - 1), Err(H264Error::TruncatedFuA));
        // A middle fragment lost: the rest still chains, but the end is the same NAL: the
        // receiver cannot see the hole from the payloads alone; the sequence numbers tell it
        // (the frame assembler only hands over gapless runs).
        // A new unit while a fragment is open.
        let mut cut = p[..2].to_vec();
        cut.push(vec![0x41, 0x80]);
        assert_eq!(
            depacketize_h264(cut.iter().map(Vec::as_slice)),
            Err(H264Error::TruncatedFuA)
        );
        let mut both = p[0].clone();
        both[1] |= FU_END;
        assert_eq!(depacketize_h264([both.as_slice()]), Err(H264Error::BadFuA));
        let mut changed = p[..2].to_vec();
        changed[1][1] = (changed[1][1] & 0xe0) | 1;
        assert_eq!(
            depacketize_h264(changed.iter().map(Vec::as_slice)),
            Err(H264Error::FuTypeChanged)
        );
    }

    #[test]
    fn malformed_payloads_are_errors() {
        let cases: &[(&[u8], H264Error)] = &[
            (&[], H264Error::Empty),
            (&[0x80 | 1, 0], H264Error::ForbiddenBit),
            (&[0x00], H264Error::Unsupported(0)),
            (&[25, 0, 1, 0x41], H264Error::Unsupported(25)),
            (&[29, 0x81, 1], H264Error::Unsupported(29)),
            (&[31], H264Error::Unsupported(31)),
            (&[24], H264Error::BadStapA),
            (&[24, 0], H264Error::BadStapA),
            (&[24, 0, 5, 0x41], H264Error::BadStapA),
            (&[24, 0, 0], H264Error::Empty),
            (&[24, 0, 1, 24], H264Error::Unsupported(24)),
            (&[28], H264Error::BadFuA),
            (&[28, 0x85], H264Error::BadFuA),
            (&[28, 0xa5, 1], H264Error::BadFuA),
            (&[28, 0x98, 1], H264Error::BadFuA),
        ];
        for (payload, want) in cases {
            assert_eq!(depacketize_h264([*payload]), Err(*want), "{payload:?}");
        }
        assert_eq!(
            depacketize_h264(std::iter::empty()),
            Err(H264Error::NoNalUnits)
        );
    }
}

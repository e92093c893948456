//! Bounds-checked parsing of the RTP and RTCP header fields the transforms need.
//!
//! Only what protection needs is read: the length of the RTP header (fixed part, CSRC list and
//! RFC 8285 header extension, all of which are authenticated but not encrypted), the sequence
//! number and the SSRC. Every read goes through `get`, so no input can make this panic.

use crate::Error;

/// Length of the fixed RTP header.
pub(crate) const RTP_FIXED_HEADER: usize = 12;
/// Length of the part of an RTCP packet that stays in the clear: the first header word and the
/// sender SSRC.
pub(crate) const RTCP_HEADER: usize = 8;

/// The fields of an RTP header that SRTP uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RtpHeader {
    /// Bytes from the start of the packet to the start of the payload.
    pub(crate) len: usize,
    /// Sequence number.
    pub(crate) seq: u16,
    /// Synchronisation source.
    pub(crate) ssrc: u32,
}

fn version_of(first: u8) -> Result<(), Error> {
    match first >> 6 {
        2 => Ok(()),
        v => Err(Error::BadVersion(v)),
    }
}

fn be16(packet: &[u8], at: usize) -> Option<u16> {
    let b = packet.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

fn be32(packet: &[u8], at: usize) -> Option<u32> {
    let b = packet.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Parses the RTP header of `packet`, of which the last `trailer` bytes are not part of the RTP
/// packet (the SRTP tag when unprotecting).
pub(crate) fn parse_rtp(packet: &[u8], trailer: usize) -> Result<RtpHeader, Error> {
    let min = RTP_FIXED_HEADER + trailer;
    if packet.len() < min {
        return Err(Error::TooShort {
            len: packet.len(),
            min,
        });
    }
    let body = &packet[..packet.len() - trailer];
    let first = body[0];
    version_of(first)?;
    let csrc_count = usize::from(first & 0x0f);
    let mut len = RTP_FIXED_HEADER + 4 * csrc_count;
    if len > body.len() {
        return Err(Error::MalformedHeader(
            "CSRC list runs past the end of the packet",
        ));
    }
    if first & 0x10 != 0 {
        // RFC 3550 §5.3.1 / RFC 8285: 16-bit profile, 16-bit length in 32-bit words, then data.
        let words = be16(body, len + 2).ok_or(Error::MalformedHeader(
            "header extension runs past the end of the packet",
        ))?;
        len += 4 + 4 * usize::from(words);
        if len > body.len() {
            return Err(Error::MalformedHeader(
                "header extension runs past the end of the packet",
            ));
        }
    }
    // The fixed header is present (checked above), so these reads succeed.
    let seq = be16(body, 2).ok_or(Error::Internal("RTP sequence number"))?;
    let ssrc = be32(body, 8).ok_or(Error::Internal("RTP SSRC"))?;
    Ok(RtpHeader { len, seq, ssrc })
}

/// Checks the RTCP header of `packet` (whose last `trailer` bytes are SRTCP tag and index when
/// unprotecting) and returns the sender SSRC.
pub(crate) fn parse_rtcp(packet: &[u8], trailer: usize) -> Result<u32, Error> {
    let min = RTCP_HEADER + trailer;
    if packet.len() < min {
        return Err(Error::TooShort {
            len: packet.len(),
            min,
        });
    }
    version_of(packet[0])?;
    be32(packet, 4).ok_or(Error::Internal("RTCP SSRC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fixed_header() {
        let p = hex::decode("8040f17b8041f8d35501a0b247616c6c").unwrap();
        assert_eq!(
            parse_rtp(&p, 0).unwrap(),
            RtpHeader {
                len: 12,
                seq: 0xf17b,
                ssrc: 0x5501a0b2
            }
        );
    }

    #[test]
    fn parses_csrcs_and_extension() {
        // CC=2, X=1, extension of 1 word (one-byte header form, RFC 8285).
        let mut p = vec![0x92, 0x60, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 9];
        p.extend_from_slice(&[1, 1, 1, 1, 2, 2, 2, 2]);
        p.extend_from_slice(&[0xbe, 0xde, 0x00, 0x01, 0x10, 0xff, 0x00, 0x00]);
        p.extend_from_slice(b"payload");
        let h = parse_rtp(&p, 0).unwrap();
        assert_eq!(h.len, 12 + 8 + 8);
        assert_eq!(h.ssrc, 9);
        // With a 16-byte trailer the same bytes no longer fit.
        assert!(matches!(parse_rtp(&p, 16), Err(Error::MalformedHeader(_))));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(
            parse_rtp(&[0x80; 11], 0),
            Err(Error::TooShort { len: 11, min: 12 })
        ));
        assert_eq!(parse_rtp(&[0x40; 12], 0), Err(Error::BadVersion(1)));
        // CC=15 but no CSRCs.
        assert!(matches!(
            parse_rtp(&[0x8f; 20], 0),
            Err(Error::MalformedHeader(_))
        ));
        // X set, extension header cut short.
        let mut p = vec![0x90, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xbe, 0xde];
        assert!(matches!(parse_rtp(&p, 0), Err(Error::MalformedHeader(_))));
        // X set, extension length too long.
        p.extend_from_slice(&[0x00, 0x02, 0, 0, 0, 0]);
        assert!(matches!(parse_rtp(&p, 0), Err(Error::MalformedHeader(_))));
        assert!(matches!(
            parse_rtcp(&[0x80; 7], 0),
            Err(Error::TooShort { .. })
        ));
        assert_eq!(parse_rtcp(&[0xc0; 8], 0), Err(Error::BadVersion(3)));
    }

    #[test]
    fn never_panics_on_short_garbage() {
        for len in 0..40 {
            for byte in [0x00, 0x80, 0x9f, 0xff] {
                let p = vec![byte; len];
                for trailer in [0, 16, 20] {
                    let _ = parse_rtp(&p, trailer);
                    let _ = parse_rtcp(&p, trailer);
                }
            }
        }
    }
}

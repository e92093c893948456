//! RTP packet parsing and writing (RFC 3550 §5.1) with RFC 8285 header extensions.

use crate::error::ParseError;
use crate::wire::Reader;

/// One RFC 8285 header extension element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    /// Local identifier negotiated for this extension (1..=255; 1..=14 fit the one-byte form).
    pub id: u8,
    /// The element's bytes.
    pub data: Vec<u8>,
}

/// An RTP fixed header, CSRC list and header extensions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RtpHeader {
    /// Marker bit: last packet of a video frame, or first packet of a talk spurt.
    pub marker: bool,
    /// Payload type (0..=127).
    pub payload_type: u8,
    /// Sequence number.
    pub sequence_number: u16,
    /// Media timestamp in the payload's clock rate.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
    /// Contributing sources (at most 15).
    pub csrcs: Vec<u32>,
    /// Header extension elements (RFC 8285), in wire order.
    pub extensions: Vec<Extension>,
}

/// A parsed RTP packet: the header and the payload with any padding removed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RtpPacket {
    /// The header.
    pub header: RtpHeader,
    /// The payload, without padding.
    pub payload: Vec<u8>,
}

const ONE_BYTE_PROFILE: u16 = 0xBEDE;
const TWO_BYTE_PROFILE_MASK: u16 = 0xFFF0;
const TWO_BYTE_PROFILE: u16 = 0x1000;

impl RtpHeader {
    /// The data of the extension with local id `id`, if present.
    pub fn extension(&self, id: u8) -> Option<&[u8]> {
        self.extensions
            .iter()
            .find(|e| e.id == id)
            .map(|e| e.data.as_slice())
    }

    /// Sets (replacing) the extension with local id `id`.
    pub fn set_extension(&mut self, id: u8, data: Vec<u8>) {
        if let Some(e) = self.extensions.iter_mut().find(|e| e.id == id) {
            e.data = data;
        } else {
            self.extensions.push(Extension { id, data });
        }
    }

    /// Whether the one-byte extension form (RFC 8285 §4.2) can carry every element.
    fn fits_one_byte(&self) -> bool {
        self.extensions
            .iter()
            .all(|e| (1..=14).contains(&e.id) && (1..=16).contains(&e.data.len()))
    }
}

impl RtpPacket {
    /// Parses one RTP packet. Never panics; any inconsistency is an error.
    pub fn parse(buf: &[u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new(buf, "RTP header");
        let b0 = r.u8()?;
        let version = b0 >> 6;
        if version != 2 {
            return Err(ParseError::BadVersion(version));
        }
        let padding = b0 & 0x20 != 0;
        let has_ext = b0 & 0x10 != 0;
        let cc = usize::from(b0 & 0x0f);
        let b1 = r.u8()?;
        let marker = b1 & 0x80 != 0;
        let payload_type = b1 & 0x7f;
        let sequence_number = r.u16()?;
        let timestamp = r.u32()?;
        let ssrc = r.u32()?;
        let mut csrcs = Vec::with_capacity(cc);
        for _ in 0..cc {
            csrcs.push(r.u32()?);
        }
        let mut extensions = Vec::new();
        if has_ext {
            let profile = r.u16()?;
            let words = usize::from(r.u16()?);
            let body = r.take(words * 4)?;
            if profile == ONE_BYTE_PROFILE {
                parse_one_byte(body, &mut extensions)?;
            } else if profile & TWO_BYTE_PROFILE_MASK == TWO_BYTE_PROFILE {
                parse_two_byte(body, &mut extensions)?;
            }
            // Other profiles are legal RFC 3550 extensions that we do not understand: skip them.
        }
        let mut payload = r.rest();
        if padding {
            let Some(&n) = payload.last() else {
                return Err(ParseError::BadPadding);
            };
            let n = usize::from(n);
            if n == 0 || n > payload.len() {
                return Err(ParseError::BadPadding);
            }
            payload = &payload[..payload.len() - n];
        }
        Ok(Self {
            header: RtpHeader {
                marker,
                payload_type,
                sequence_number,
                timestamp,
                ssrc,
                csrcs,
                extensions,
            },
            payload: payload.to_vec(),
        })
    }

    /// Appends the packet's wire form to `out` (no padding).
    ///
    /// At most 15 CSRCs are written. Extensions use the one-byte form when every element fits
    /// it, the two-byte form otherwise; elements with an id of 0 or more than 255 bytes of data
    /// are skipped, since neither form can carry them.
    pub fn write(&self, out: &mut Vec<u8>) {
        let h = &self.header;
        let cc = h.csrcs.len().min(15);
        let exts: Vec<&Extension> = h
            .extensions
            .iter()
            .filter(|e| e.id != 0 && e.data.len() <= 255)
            .collect();
        let has_ext = !exts.is_empty();
        out.push(0x80 | if has_ext { 0x10 } else { 0 } | cc as u8);
        out.push(if h.marker { 0x80 } else { 0 } | (h.payload_type & 0x7f));
        out.extend_from_slice(&h.sequence_number.to_be_bytes());
        out.extend_from_slice(&h.timestamp.to_be_bytes());
        out.extend_from_slice(&h.ssrc.to_be_bytes());
        for c in &h.csrcs[..cc] {
            out.extend_from_slice(&c.to_be_bytes());
        }
        if has_ext {
            let one_byte = h.fits_one_byte();
            let profile = if one_byte {
                ONE_BYTE_PROFILE
            } else {
                TWO_BYTE_PROFILE
            };
            out.extend_from_slice(&profile.to_be_bytes());
            let len_at = out.len();
            out.extend_from_slice(&[0, 0]);
            let start = out.len();
            for e in exts {
                if one_byte {
                    out.push((e.id << 4) | (e.data.len() as u8 - 1));
                } else {
                    out.push(e.id);
                    out.push(e.data.len() as u8);
                }
                out.extend_from_slice(&e.data);
            }
            while !(out.len() - start).is_multiple_of(4) {
                out.push(0);
            }
            let words = ((out.len() - start) / 4) as u16;
            out[len_at..len_at + 2].copy_from_slice(&words.to_be_bytes());
        }
        out.extend_from_slice(&self.payload);
    }

    /// Appends the wire form with `padding` bytes of RTP padding (P bit set; 0 means none).
    pub fn write_padded(&self, out: &mut Vec<u8>, padding: u8) {
        let start = out.len();
        self.write(out);
        if padding > 0 {
            out[start] |= 0x20;
            out.extend(std::iter::repeat_n(0, usize::from(padding) - 1));
            out.push(padding);
        }
    }

    /// The wire form as a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(12 + self.payload.len() + 16);
        self.write(&mut v);
        v
    }
}

fn parse_one_byte(body: &[u8], out: &mut Vec<Extension>) -> Result<(), ParseError> {
    let mut r = Reader::new(body, "RTP header extension");
    while r.remaining() > 0 {
        let b = r.u8()?;
        let id = b >> 4;
        if id == 0 {
            continue; // padding byte
        }
        if id == 15 {
            break; // reserved: stop processing
        }
        let len = usize::from(b & 0x0f) + 1;
        let data = r.take(len).map_err(|_| ParseError::BadExtension)?;
        out.push(Extension {
            id,
            data: data.to_vec(),
        });
    }
    Ok(())
}

fn parse_two_byte(body: &[u8], out: &mut Vec<Extension>) -> Result<(), ParseError> {
    let mut r = Reader::new(body, "RTP header extension");
    while r.remaining() > 0 {
        let id = r.u8()?;
        if id == 0 {
            continue; // padding byte
        }
        let len = usize::from(r.u8().map_err(|_| ParseError::BadExtension)?);
        let data = r.take(len).map_err(|_| ParseError::BadExtension)?;
        out.push(Extension {
            id,
            data: data.to_vec(),
        });
    }
    Ok(())
}

/// Whether `buf` looks like RTCP rather than RTP when both share a port (RFC 5761 §4):
/// the second byte is an RTCP packet type 192..=223.
pub fn is_rtcp(buf: &[u8]) -> bool {
    buf.len() >= 2 && (192..=223).contains(&buf[1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_minimal_packet() {
        let bytes = [
            0x80, 0xE0, 0x12, 0x34, 0, 0, 0x03, 0xC0, 0xDE, 0xAD, 0xBE, 0xEF, 1, 2, 3,
        ];
        let p = RtpPacket::parse(&bytes).unwrap();
        assert!(p.header.marker);
        assert_eq!(p.header.payload_type, 0x60);
        assert_eq!(p.header.sequence_number, 0x1234);
        assert_eq!(p.header.timestamp, 960);
        assert_eq!(p.header.ssrc, 0xDEADBEEF);
        assert_eq!(p.payload, vec![1, 2, 3]);
        assert_eq!(p.to_vec(), bytes);
    }

    #[test]
    fn strips_padding_and_rejects_bad_padding() {
        let mut bytes = vec![0xA0, 0x60, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 9, 9, 0, 0, 3];
        let p = RtpPacket::parse(&bytes).unwrap();
        assert_eq!(p.payload, vec![9, 9]);
        *bytes.last_mut().unwrap() = 0;
        assert_eq!(RtpPacket::parse(&bytes), Err(ParseError::BadPadding));
        *bytes.last_mut().unwrap() = 200;
        assert_eq!(RtpPacket::parse(&bytes), Err(ParseError::BadPadding));
    }

    #[test]
    fn rejects_truncated_and_wrong_version() {
        assert!(RtpPacket::parse(&[0x80, 0x60, 0, 1]).is_err());
        assert_eq!(
            RtpPacket::parse(&[0x40; 12]),
            Err(ParseError::BadVersion(1))
        );
        // CSRC count promises 4 bytes that are not there.
        assert!(RtpPacket::parse(&[0x81, 0x60, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]).is_err());
        // Extension length promises more than is there.
        let b = [
            0x90, 0x60, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xBE, 0xDE, 0, 2, 0x10, 1,
        ];
        assert!(RtpPacket::parse(&b).is_err());
        // One-byte element longer than the extension block.
        let b = [
            0x90, 0x60, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xBE, 0xDE, 0, 1, 0x1F, 1, 2, 3,
        ];
        assert_eq!(RtpPacket::parse(&b), Err(ParseError::BadExtension));
    }

    #[test]
    fn one_and_two_byte_extensions() {
        let mut p = RtpPacket::default();
        p.header.set_extension(1, vec![0x85]);
        p.header.set_extension(3, vec![0, 7]);
        let bytes = p.to_vec();
        assert_eq!(&bytes[12..14], &[0xBE, 0xDE]);
        assert_eq!(RtpPacket::parse(&bytes).unwrap(), p);
        p.header.set_extension(20, vec![1; 20]);
        let bytes = p.to_vec();
        assert_eq!(&bytes[12..14], &[0x10, 0x00]);
        assert_eq!(RtpPacket::parse(&bytes).unwrap(), p);
    }

    #[test]
    fn padding_only_packet() {
        let mut p = RtpPacket::default();
        p.header.set_transport_seq(3, 9);
        let mut bytes = Vec::new();
        p.write_padded(&mut bytes, 200);
        let q = RtpPacket::parse(&bytes).unwrap();
        assert!(q.payload.is_empty());
        assert_eq!(q.header.transport_seq(3), Some(9));
    }

    #[test]
    fn demux_rtcp() {
        assert!(is_rtcp(&[0x80, 200]));
        assert!(!is_rtcp(&[0x80, 0x6f]));
        assert!(!is_rtcp(&[0x80]));
    }

    fn arb_ext(two_byte: bool) -> impl Strategy<Value = Extension> {
        let (ids, lens) = if two_byte {
            (1u8..=255, 0usize..=40)
        } else {
            (1u8..=14, 1usize..=16)
        };
        (ids, proptest::collection::vec(any::<u8>(), lens))
            .prop_map(|(id, data)| Extension { id, data })
    }

    fn arb_packet() -> impl Strategy<Value = RtpPacket> {
        (
            any::<bool>(),
            0u8..128,
            any::<u16>(),
            any::<u32>(),
            any::<u32>(),
            proptest::collection::vec(any::<u32>(), 0..=15),
            any::<bool>().prop_flat_map(|two| proptest::collection::vec(arb_ext(two), 0..5)),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(marker, pt, seq, ts, ssrc, csrcs, exts, payload)| {
                let mut header = RtpHeader {
                    marker,
                    payload_type: pt,
                    sequence_number: seq,
                    timestamp: ts,
                    ssrc,
                    csrcs,
                    extensions: Vec::new(),
                };
                for e in exts {
                    header.set_extension(e.id, e.data);
                }
                // A two-byte-form element with empty data round-trips; drop nothing else.
                RtpPacket { header, payload }
            })
    }

    proptest! {
        #[test]
        fn round_trip(p in arb_packet()) {
            let bytes = p.to_vec();
            prop_assert_eq!(RtpPacket::parse(&bytes).unwrap(), p);
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = RtpPacket::parse(&bytes);
        }
    }
}

//! Opus packets that hold several frames (RFC 6716 §3.2): joining single-frame packets into
//! one, and splitting one back into single-frame packets.
//!
//! The sender joins consecutive 20 ms frames of its encoder into one packet of 40 or 60 ms when
//! the link is too slow for a packet every 20 ms (each packet costs its headers: IPv4/UDP,
//! SRTP, RTP). A joined packet is an ordinary Opus packet (code 3, variable bitrate) that any
//! Opus decoder plays whole (RFC 7587 allows up to 120 ms in one RTP packet); the hush
//! receiver splits it back into the frames its jitter buffer and decoder work with, each with
//! its own timestamp.

use crate::error::ParseError;

/// Largest frame an Opus packet may hold, in bytes (RFC 6716 §3.2.1).
const MAX_FRAME_BYTES: usize = 1275;
/// Most audio one Opus packet may hold, in units of 2.5 ms (120 ms, RFC 6716 §3.2.5).
const MAX_PACKET_UNITS: u32 = 48;

/// Duration of each frame of an Opus packet, in units of 2.5 ms, from its TOC byte
/// (RFC 6716 §3.1, Table 2).
pub fn frame_units(toc: u8) -> u32 {
    let config = toc >> 3;
    match config {
        // SILK-only: 10, 20, 40, 60 ms.
        0..=11 => [4, 8, 16, 24][usize::from(config % 4)],
        // Hybrid: 10, 20 ms.
        12..=15 => [4, 8][usize::from(config % 2)],
        // CELT-only: 2.5, 5, 10, 20 ms.
        _ => [1, 2, 4, 8][usize::from(config % 4)],
    }
}

/// Reads a frame length (RFC 6716 §3.2.1): one byte below 252, else two.
fn read_length(data: &[u8], at: &mut usize) -> Result<usize, ParseError> {
    let first = *data
        .get(*at)
        .ok_or(ParseError::Truncated("Opus frame length"))?;
    *at += 1;
    if first < 252 {
        return Ok(usize::from(first));
    }
    let second = *data
        .get(*at)
        .ok_or(ParseError::Truncated("Opus frame length"))?;
    *at += 1;
    Ok(usize::from(second) * 4 + usize::from(first))
}

/// Writes a frame length (RFC 6716 §3.2.1). `len` is at most 1275.
fn write_length(out: &mut Vec<u8>, len: usize) {
    if len < 252 {
        out.push(len as u8);
    } else {
        let first = 252 + (len & 3);
        out.push(first as u8);
        out.push(((len - first) / 4) as u8);
    }
}

/// The frames of an Opus packet, each as a packet of its own (code 0: the packet's TOC with
/// the frame-count bits cleared, then the frame). A code 0 packet comes back unchanged.
/// Malformed packets (RFC 6716 §3.4's requirements R1–R7) are an error.
pub fn split(packet: &[u8]) -> Result<Vec<Vec<u8>>, ParseError> {
    let (&toc, body) = packet
        .split_first()
        .ok_or(ParseError::Truncated("Opus TOC"))?;
    let single = toc & !0x3;
    let one = |frame: &[u8]| {
        let mut p = Vec::with_capacity(frame.len() + 1);
        p.push(single);
        p.extend_from_slice(frame);
        p
    };
    let too_big = |len: usize| len > MAX_FRAME_BYTES;
    match toc & 0x3 {
        0 => {
            if too_big(body.len()) {
                return Err(ParseError::BadLength("Opus frame"));
            }
            Ok(vec![packet.to_vec()])
        }
        1 => {
            // Two frames of equal size.
            if body.len() % 2 != 0 || too_big(body.len() / 2) {
                return Err(ParseError::BadLength("Opus code 1 packet"));
            }
            let (a, b) = body.split_at(body.len() / 2);
            Ok(vec![one(a), one(b)])
        }
        2 => {
            // Two frames, the first one's length coded.
            let mut at = 0;
            let first = read_length(body, &mut at)?;
            let rest = body.len() - at;
            if first > rest || too_big(first) || too_big(rest - first) {
                return Err(ParseError::BadLength("Opus code 2 packet"));
            }
            let (a, b) = body[at..].split_at(first);
            Ok(vec![one(a), one(b)])
        }
        _ => {
            let count_byte = *body
                .first()
                .ok_or(ParseError::Truncated("Opus frame count"))?;
            let vbr = count_byte & 0x80 != 0;
            let padded = count_byte & 0x40 != 0;
            let count = usize::from(count_byte & 0x3f);
            if count == 0 || count as u32 * frame_units(toc) > MAX_PACKET_UNITS {
                return Err(ParseError::BadLength("Opus frame count"));
            }
            let mut at = 1;
            let mut padding = 0usize;
            if padded {
                loop {
                    let b = *body
                        .get(at)
                        .ok_or(ParseError::Truncated("Opus padding length"))?;
                    at += 1;
                    if b == 255 {
                        padding += 254;
                    } else {
                        padding += usize::from(b);
                        break;
                    }
                }
            }
            let mut lengths = Vec::with_capacity(count);
            if vbr {
                for _ in 1..count {
                    lengths.push(read_length(body, &mut at)?);
                }
            }
            let data_len = body
                .len()
                .checked_sub(at + padding)
                .ok_or(ParseError::BadLength("Opus padding"))?;
            if vbr {
                let listed: usize = lengths.iter().sum();
                let last = data_len
                    .checked_sub(listed)
                    .ok_or(ParseError::BadLength("Opus code 3 frame lengths"))?;
                lengths.push(last);
            } else {
                if data_len % count != 0 {
                    return Err(ParseError::BadLength("Opus code 3 CBR packet"));
                }
                lengths = vec![data_len / count; count];
            }
            if lengths.iter().any(|&l| too_big(l)) {
                return Err(ParseError::BadLength("Opus frame"));
            }
            let mut frames = Vec::with_capacity(count);
            for len in lengths {
                frames.push(one(&body[at..at + len]));
                at += len;
            }
            Ok(frames)
        }
    }
}

/// One Opus packet holding `packets`' frames in order (code 3, variable bitrate), or `None` if
/// they cannot share one: each must be a single-frame (code 0) packet, all with the same TOC
/// (mode, bandwidth, frame size, channels), at most 120 ms in all. A single packet comes back
/// unchanged.
pub fn join(packets: &[&[u8]]) -> Option<Vec<u8>> {
    let first = packets.first()?;
    let toc = *first.first()?;
    if packets.len() == 1 {
        return (toc & 0x3 == 0).then(|| first.to_vec());
    }
    if toc & 0x3 != 0 || packets.len() as u32 * frame_units(toc) > MAX_PACKET_UNITS {
        return None;
    }
    let mut total = 2;
    for p in packets {
        if p.first() != Some(&toc) || p.len() - 1 > MAX_FRAME_BYTES {
            return None;
        }
        total += p.len() + 1;
    }
    let mut out = Vec::with_capacity(total);
    out.push(toc | 0x3);
    out.push(0x80 | packets.len() as u8);
    for p in &packets[..packets.len() - 1] {
        write_length(&mut out, p.len() - 1);
    }
    for p in packets {
        out.extend_from_slice(&p[1..]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Codec, OpusCodec};
    use proptest::prelude::*;

    #[test]
    fn joined_frames_split_back_exactly() {
        // SILK WB 20 ms (config 9), mono; one frame long enough for a two-byte length.
        let toc = 9 << 3;
        let a = [&[toc][..], &[1, 2, 3]].concat();
        let b = [&[toc][..], &vec![7; 300][..]].concat();
        let c = vec![toc]; // a DTX frame: no data
        let joined = join(&[&a, &b, &c]).unwrap();
        assert_eq!(joined[0], toc | 3);
        assert_eq!(joined[1], 0x80 | 3);
        // 3, then 300 = 252 + 0 + 4 * 12, then the data.
        assert_eq!(&joined[2..5], &[3, 252, 12]);
        assert_eq!(joined.len(), 2 + 3 + 3 + 300);
        assert_eq!(split(&joined).unwrap(), vec![a.clone(), b, c]);
        // One packet is left alone.
        assert_eq!(join(&[&a]).unwrap(), a);
    }

    #[test]
    fn refuses_what_cannot_share_a_packet() {
        let wb = [9 << 3, 1];
        let nb = [1 << 3, 1];
        assert!(join(&[&wb, &nb]).is_none(), "different bandwidths");
        assert!(
            join(&[&[9 << 3 | 1, 1, 1][..], &wb]).is_none(),
            "not single-frame"
        );
        // Seven 20 ms frames are 140 ms: over 120.
        let many = vec![&wb[..]; 7];
        assert!(join(&many).is_none());
        assert!(join(&many[..6]).is_some());
        assert!(join(&[]).is_none());
    }

    #[test]
    fn splits_every_frame_count_code() {
        let toc = 9 << 3;
        // Code 1: two equal frames.
        assert_eq!(
            split(&[toc | 1, 1, 2, 3, 4]).unwrap(),
            vec![vec![toc, 1, 2], vec![toc, 3, 4]]
        );
        assert!(split(&[toc | 1, 1, 2, 3]).is_err());
        // Code 2: first length 1.
        assert_eq!(
            split(&[toc | 2, 1, 9, 8, 7]).unwrap(),
            vec![vec![toc, 9], vec![toc, 8, 7]]
        );
        assert!(split(&[toc | 2, 5, 9]).is_err());
        // Code 3 CBR, two frames of two bytes, with two bytes of padding.
        assert_eq!(
            split(&[toc | 3, 0x40 | 2, 2, 1, 2, 3, 4, 0, 0]).unwrap(),
            vec![vec![toc, 1, 2], vec![toc, 3, 4]]
        );
        // Zero frames, or more than 120 ms (three 60 ms frames), are malformed.
        assert!(split(&[toc | 3, 0]).is_err());
        assert!(split(&[11 << 3 | 3, 3, 1, 2, 3]).is_err());
        assert!(split(&[]).is_err());
    }

    #[test]
    fn joined_opus_decodes_as_the_frames_did() {
        // What a peer without splitting hears: the joined packet decodes, whole, to the
        // same samples as the three frames decoded one by one.
        let mut enc = OpusCodec::new(1, 20, 24_000).unwrap();
        let pcm = crate::codec::opus::tests::speech(3, 960);
        let frames: Vec<Vec<u8>> = pcm
            .chunks(960)
            .map(|c| {
                let mut out = Vec::new();
                enc.encode(c, &mut out).unwrap();
                out
            })
            .collect();
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        let joined = join(&refs).expect("same TOC");
        let mut whole = Vec::new();
        // A decoder with room for 60 ms.
        let mut dec = OpusCodec::new(1, 60, 24_000).unwrap();
        assert_eq!(dec.decode(&joined, &mut whole).unwrap(), 3 * 960);
        let mut one_by_one = Vec::new();
        let mut dec = OpusCodec::new(1, 20, 24_000).unwrap();
        for f in &frames {
            dec.decode(f, &mut one_by_one).unwrap();
        }
        assert_eq!(whole, one_by_one);
        assert_eq!(split(&joined).unwrap(), frames);
    }

    proptest! {
        #[test]
        fn split_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = split(&bytes);
        }

        #[test]
        fn join_split_round_trip(
            config in 0u8..32,
            stereo in any::<bool>(),
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..400), 1..7),
        ) {
            let toc = config << 3 | u8::from(stereo) << 2;
            let packets: Vec<Vec<u8>> =
                frames.iter().map(|f| [&[toc][..], f].concat()).collect();
            let refs: Vec<&[u8]> = packets.iter().map(Vec::as_slice).collect();
            match join(&refs) {
                Some(joined) => prop_assert_eq!(split(&joined).unwrap(), packets),
                None => prop_assert!(packets.len() as u32 * frame_units(toc) > MAX_PACKET_UNITS),
            }
        }
    }
}

//! Audio redundancy (RFC 2198 RED): each packet carries copies of the previous frames, so a
//! lost packet is rebuilt from a later one without waiting a round trip.

use std::collections::VecDeque;

use crate::error::ParseError;
use crate::wire::Reader;

/// One block of a RED payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedBlock {
    /// Payload type of the block.
    pub payload_type: u8,
    /// How far before the packet's timestamp this block's timestamp is (0 for the primary).
    pub timestamp_offset: u16,
    /// The block's data.
    pub data: Vec<u8>,
}

/// Largest timestamp offset a redundant block can carry (14 bits).
pub const MAX_OFFSET: u16 = 0x3fff;
/// Largest redundant block (10-bit length).
pub const MAX_BLOCK: usize = 0x3ff;

/// Writes a RED payload: `redundant` blocks (oldest first), then the primary block.
/// Redundant blocks that cannot be described (offset or length too large) are left out.
pub fn encode(primary_pt: u8, primary: &[u8], redundant: &[RedBlock]) -> Vec<u8> {
    let usable: Vec<&RedBlock> = redundant
        .iter()
        .filter(|b| b.timestamp_offset <= MAX_OFFSET && b.data.len() <= MAX_BLOCK)
        .collect();
    let mut out = Vec::with_capacity(1 + primary.len() + usable.len() * 4);
    for b in &usable {
        let word = (1u32 << 31)
            | (u32::from(b.payload_type & 0x7f) << 24)
            | (u32::from(b.timestamp_offset) << 10)
            | b.data.len() as u32;
        out.extend_from_slice(&word.to_be_bytes());
    }
    out.push(primary_pt & 0x7f);
    for b in &usable {
        out.extend_from_slice(&b.data);
    }
    out.extend_from_slice(primary);
    out
}

/// Parses a RED payload into its blocks, redundant ones first and the primary last.
pub fn decode(payload: &[u8]) -> Result<Vec<RedBlock>, ParseError> {
    let mut r = Reader::new(payload, "RED header");
    let mut headers = Vec::new();
    loop {
        let b = r.u8()?;
        if b & 0x80 == 0 {
            headers.push((b & 0x7f, 0u16, None));
            break;
        }
        let rest = r.take(3)?;
        let word = u32::from_be_bytes([b, rest[0], rest[1], rest[2]]);
        let offset = ((word >> 10) & 0x3fff) as u16;
        let len = (word & 0x3ff) as usize;
        headers.push((b & 0x7f, offset, Some(len)));
        if headers.len() > 32 {
            return Err(ParseError::BadLength("RED block count"));
        }
    }
    let mut blocks = Vec::with_capacity(headers.len());
    for (pt, offset, len) in headers {
        let data = match len {
            Some(len) => r.take(len)?,
            None => r.rest(),
        };
        blocks.push(RedBlock {
            payload_type: pt,
            timestamp_offset: offset,
            data: data.to_vec(),
        });
    }
    Ok(blocks)
}

/// Keeps the last frames sent, to build RED payloads of `distance` redundant frames.
#[derive(Debug, Clone, Default)]
pub struct RedEncoder {
    history: VecDeque<(u32, Vec<u8>)>,
}

impl RedEncoder {
    /// An encoder with empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds the RED payload for `frame` at `timestamp`, carrying up to `distance` previous
    /// frames, and remembers `frame`.
    pub fn encode(&mut self, pt: u8, timestamp: u32, frame: &[u8], distance: usize) -> Vec<u8> {
        let start = self.history.len().saturating_sub(distance);
        let redundant: Vec<RedBlock> = self
            .history
            .iter()
            .skip(start)
            .filter_map(|(ts, data)| {
                let off = timestamp.wrapping_sub(*ts);
                (off > 0 && off <= u32::from(MAX_OFFSET)).then(|| RedBlock {
                    payload_type: pt,
                    timestamp_offset: off as u16,
                    data: data.clone(),
                })
            })
            .collect();
        let out = encode(pt, frame, &redundant);
        self.history.push_back((timestamp, frame.to_vec()));
        while self.history.len() > 4 {
            self.history.pop_front();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encoder_carries_previous_frames() {
        let mut e = RedEncoder::new();
        let _ = e.encode(111, 0, &[1], 2);
        let _ = e.encode(111, 960, &[2, 2], 2);
        let p = e.encode(111, 1920, &[3, 3, 3], 2);
        let blocks = decode(&p).unwrap();
        let summary: Vec<(u16, Vec<u8>)> = blocks
            .into_iter()
            .map(|b| (b.timestamp_offset, b.data))
            .collect();
        assert_eq!(
            summary,
            vec![(1920, vec![1]), (960, vec![2, 2]), (0, vec![3, 3, 3])]
        );
        // Distance 0 is a bare primary block.
        assert_eq!(decode(&e.encode(111, 2880, &[4], 0)).unwrap().len(), 1);
    }

    #[test]
    fn rejects_truncated() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[0x80 | 111, 0, 4]).is_err());
        // Block length 5 but only 2 bytes follow the headers.
        assert!(decode(&[0x80 | 111, 0, 0x04, 0x05, 111, 1, 2]).is_err());
    }

    proptest! {
        #[test]
        fn round_trip(
            primary in proptest::collection::vec(any::<u8>(), 0..100),
            red in proptest::collection::vec(
                (0u8..128, 1u16..=MAX_OFFSET, proptest::collection::vec(any::<u8>(), 0..60)), 0..4),
        ) {
            let red: Vec<RedBlock> = red.into_iter()
                .map(|(pt, off, data)| RedBlock { payload_type: pt, timestamp_offset: off, data })
                .collect();
            let bytes = encode(111, &primary, &red);
            let mut want = red.clone();
            want.push(RedBlock { payload_type: 111, timestamp_offset: 0, data: primary });
            prop_assert_eq!(decode(&bytes).unwrap(), want);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = decode(&bytes);
        }
    }
}

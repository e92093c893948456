//! Reassembly of video frames split over RTP packets (hush's generic video payload).

use std::collections::{BTreeMap, VecDeque};

use super::packetizer::{GENERIC_KEYFRAME, GENERIC_START};

/// A reassembled video frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoFrame {
    /// RTP timestamp (90 kHz for video).
    pub timestamp: u32,
    /// Whether the sender flagged the frame as a keyframe.
    pub keyframe: bool,
    /// The encoded frame.
    pub data: Vec<u8>,
}

#[derive(Debug, Clone)]
struct Part {
    timestamp: u32,
    marker: bool,
    desc: u8,
    data: Vec<u8>,
}

/// Collects packets (by extended sequence number), and hands out whole frames in order.
///
/// Frames come out only when every packet from the frame's first (descriptor start bit) to its
/// last (marker bit) is present and no earlier frame is still incomplete. When the caller gives
/// up on missing packets ([`skip_missing`](Self::skip_missing)), the depacketizer drops to the
/// next frame start and then waits for a keyframe, since a decoder cannot use frames that
/// reference a lost one.
#[derive(Debug, Clone, Default)]
pub struct VideoDepacketizer {
    parts: BTreeMap<u64, Part>,
    next_seq: Option<u64>,
    need_keyframe: bool,
    ready: VecDeque<VideoFrame>,
}

/// Packets held at most; beyond this the oldest go (bounds memory under attack or long loss).
const MAX_PARTS: usize = 2048;

impl VideoDepacketizer {
    /// An empty depacketizer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a packet. Packets before the frame being assembled, duplicates and packets with an
    /// empty payload are ignored.
    pub fn push(&mut self, ext_seq: u64, timestamp: u32, marker: bool, payload: &[u8]) {
        let Some((&desc, data)) = payload.split_first() else {
            return;
        };
        if self.next_seq.is_some_and(|n| ext_seq < n) {
            return;
        }
        self.parts.entry(ext_seq).or_insert_with(|| Part {
            timestamp,
            marker,
            desc,
            data: data.to_vec(),
        });
        while self.parts.len() > MAX_PARTS {
            self.parts.pop_first();
            self.skip_missing();
        }
        self.assemble();
    }

    /// Whether a keyframe is needed before frames can flow again (send a PLI).
    pub fn needs_keyframe(&self) -> bool {
        self.need_keyframe
    }

    /// Whether packets are waiting behind a gap.
    pub fn has_gap(&self) -> bool {
        match (self.next_seq, self.parts.keys().next()) {
            (Some(n), Some(&first)) => first > n,
            _ => false,
        }
    }

    /// Gives up on missing packets: drops to the next frame start in the buffer and waits for a
    /// keyframe. Returns whether a keyframe is now needed.
    pub fn skip_missing(&mut self) -> bool {
        let from = self.next_seq.unwrap_or(0);
        let start = self
            .parts
            .range(from..)
            .find(|(_, p)| p.desc & GENERIC_START != 0)
            .map(|(&s, _)| s);
        match start {
            Some(s) => {
                self.parts = self.parts.split_off(&s);
                self.next_seq = Some(s);
            }
            None => {
                if let Some((&last, _)) = self.parts.last_key_value() {
                    self.next_seq = Some(last + 1);
                }
                self.parts.clear();
            }
        }
        self.need_keyframe = true;
        self.assemble();
        self.need_keyframe
    }

    /// The next complete frame, if any.
    pub fn poll_frame(&mut self) -> Option<VideoFrame> {
        self.ready.pop_front()
    }

    fn assemble(&mut self) {
        loop {
            let Some((&first, part)) = self.parts.first_key_value() else {
                return;
            };
            let expected = self.next_seq.unwrap_or(first);
            if first != expected || part.desc & GENERIC_START == 0 {
                if self.next_seq.is_none() {
                    // Joined mid-frame: drop the tail of a frame whose start we never saw.
                    self.parts.pop_first();
                    continue;
                }
                return;
            }
            // Walk consecutive packets of the same timestamp until the marker.
            let ts = part.timestamp;
            let mut end = None;
            for (seq, (&s, p)) in (first..).zip(self.parts.range(first..)) {
                if s != seq || p.timestamp != ts || (s != first && p.desc & GENERIC_START != 0) {
                    break;
                }
                if p.marker {
                    end = Some(s);
                    break;
                }
            }
            let Some(end) = end else {
                return;
            };
            let rest = self.parts.split_off(&(end + 1));
            let frame_parts = std::mem::replace(&mut self.parts, rest);
            self.next_seq = Some(end + 1);
            let keyframe = frame_parts.values().all(|p| p.desc & GENERIC_KEYFRAME != 0);
            if self.need_keyframe && !keyframe {
                continue;
            }
            self.need_keyframe = false;
            let data = frame_parts.into_values().flat_map(|p| p.data).collect();
            self.ready.push_back(VideoFrame {
                timestamp: ts,
                keyframe,
                data,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::{ExtensionIds, Packetizer};

    fn packets(
        p: &mut Packetizer,
        ts: u32,
        len: usize,
        key: bool,
    ) -> Vec<(u64, u32, bool, Vec<u8>)> {
        let frame: Vec<u8> = (0..len).map(|i| i as u8).collect();
        p.video(ts, &frame, key)
            .into_iter()
            .map(|pk| {
                (
                    u64::from(pk.header.sequence_number) + 100_000,
                    pk.header.timestamp,
                    pk.header.marker,
                    pk.payload,
                )
            })
            .collect()
    }

    #[test]
    fn reassembles_reordered_frames_in_order() {
        let mut pz = Packetizer::new(1, 96, 0, ExtensionIds::default(), 101);
        let mut all = packets(&mut pz, 0, 250, true);
        all.extend(packets(&mut pz, 3000, 120, false));
        all.reverse();
        let mut d = VideoDepacketizer::new();
        // First packet in must be the real start, as a receiver joins at the first frame.
        let first = all.pop().unwrap();
        d.push(first.0, first.1, first.2, &first.3);
        for (s, ts, m, p) in all {
            d.push(s, ts, m, &p);
        }
        let a = d.poll_frame().unwrap();
        let b = d.poll_frame().unwrap();
        assert_eq!((a.timestamp, a.keyframe, a.data.len()), (0, true, 250));
        assert_eq!((b.timestamp, b.keyframe, b.data.len()), (3000, false, 120));
        assert!(d.poll_frame().is_none());
    }

    #[test]
    fn loss_then_skip_waits_for_keyframe() {
        let mut pz = Packetizer::new(1, 96, 0, ExtensionIds::default(), 101);
        let f1 = packets(&mut pz, 0, 50, true);
        let f2 = packets(&mut pz, 3000, 250, false);
        let f3 = packets(&mut pz, 6000, 50, false);
        let f4 = packets(&mut pz, 9000, 50, true);
        let mut d = VideoDepacketizer::new();
        for (s, ts, m, p) in f1.iter().chain(&f2[1..]).chain(&f3).chain(&f4) {
            d.push(*s, *ts, *m, p);
        }
        assert_eq!(d.poll_frame().map(|f| f.timestamp), Some(0));
        assert!(d.poll_frame().is_none());
        assert!(d.has_gap());
        assert!(!d.skip_missing(), "keyframe 4 was already buffered");
        assert_eq!(d.poll_frame().map(|f| f.timestamp), Some(9000));
    }
}

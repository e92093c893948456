//! Reassembly of video frames split over RTP packets: hush's generic video payload, or H.264
//! (RFC 6184, see [`h264`](super::h264)).

use std::collections::{BTreeMap, VecDeque};

use tracing::debug;

use super::h264::{depacketize_h264, h264_payload_has_keyframe, h264_payload_starts_frame};
use super::packetizer::{GENERIC_KEYFRAME, GENERIC_START};

/// A reassembled video frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoFrame {
    /// RTP timestamp (90 kHz for video).
    pub timestamp: u32,
    /// Whether the frame is a keyframe (flagged by the sender in the generic payload; holding
    /// an IDR slice in H.264).
    pub keyframe: bool,
    /// The encoded frame (for H.264, an Annex B access unit).
    pub data: Vec<u8>,
}

/// The RTP payload format of a video stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum VideoPayload {
    /// hush's generic payload: one descriptor byte ([`GENERIC_START`], [`GENERIC_KEYFRAME`])
    /// before a chunk of the encoded frame.
    #[default]
    Generic,
    /// H.264, RFC 6184 packetization mode 1.
    H264,
}

#[derive(Debug, Clone)]
struct Part {
    timestamp: u32,
    marker: bool,
    start: bool,
    key: bool,
    data: Vec<u8>,
}

/// Collects packets (by extended sequence number), and hands out whole frames in order.
///
/// Frames come out only when every packet from the frame's first to its last (marker bit) is
/// present and no earlier frame is still incomplete. The first packet of a frame is known from
/// the generic descriptor's start bit, or for H.264 from the payload (parameter sets, or the
/// first slice of a picture). When the caller gives up on missing packets
/// ([`skip_missing`](Self::skip_missing)), the depacketizer drops to the next frame start and
/// then waits for a keyframe, since a decoder cannot use frames that reference a lost one. An
/// H.264 frame whose payloads are malformed (bad STAP-A, truncated FU-A, ...) is dropped the
/// same way: frames after it are skipped up to the next keyframe.
#[derive(Debug, Clone, Default)]
pub struct VideoDepacketizer {
    format: VideoPayload,
    parts: BTreeMap<u64, Part>,
    next_seq: Option<u64>,
    need_keyframe: bool,
    malformed: u64,
    ready: VecDeque<VideoFrame>,
}

/// Packets held at most; beyond this the oldest go (bounds memory under attack or long loss).
const MAX_PARTS: usize = 2048;

impl VideoDepacketizer {
    /// An empty depacketizer for hush's generic video payload.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty depacketizer for `format`.
    pub fn with_format(format: VideoPayload) -> Self {
        Self {
            format,
            ..Self::default()
        }
    }

    /// The payload format it reads.
    pub fn format(&self) -> VideoPayload {
        self.format
    }

    /// Frames dropped because their payloads were malformed.
    pub fn malformed_frames(&self) -> u64 {
        self.malformed
    }

    /// Adds a packet. Packets before the frame being assembled, duplicates and packets with an
    /// empty payload are ignored.
    pub fn push(&mut self, ext_seq: u64, timestamp: u32, marker: bool, payload: &[u8]) {
        let part = match self.format {
            VideoPayload::Generic => {
                let Some((&desc, data)) = payload.split_first() else {
                    return;
                };
                Part {
                    timestamp,
                    marker,
                    start: desc & GENERIC_START != 0,
                    key: desc & GENERIC_KEYFRAME != 0,
                    data: data.to_vec(),
                }
            }
            VideoPayload::H264 => {
                if payload.is_empty() {
                    return;
                }
                Part {
                    timestamp,
                    marker,
                    start: h264_payload_starts_frame(payload),
                    key: h264_payload_has_keyframe(payload),
                    data: payload.to_vec(),
                }
            }
        };
        if self.next_seq.is_some_and(|n| ext_seq < n) {
            return;
        }
        self.parts.entry(ext_seq).or_insert(part);
        while self.parts.len() > MAX_PARTS {
            self.parts.pop_first();
            self.skip_missing();
        }
        self.assemble();
    }

    /// The sequence number of the next packet the depacketizer waits for (the start of the
    /// frame it assembles next), once it has seen a frame start.
    pub fn head(&self) -> Option<u64> {
        self.next_seq
    }

    /// Whether a keyframe is needed before frames can flow again (send a PLI).
    pub fn needs_keyframe(&self) -> bool {
        self.need_keyframe
    }

    /// Whether packets are missing among those buffered: before the first one, or between
    /// any two (a frame waits for a packet that may never come).
    pub fn has_gap(&self) -> bool {
        let (Some((&first, _)), Some((&last, _))) =
            (self.parts.first_key_value(), self.parts.last_key_value())
        else {
            return false;
        };
        let from = self.next_seq.unwrap_or(first).min(first);
        last - from + 1 > self.parts.len() as u64
    }

    /// Gives up on missing packets: drops the frame being assembled up to the next frame start
    /// in the buffer and waits for a keyframe. Returns whether a keyframe is now needed.
    pub fn skip_missing(&mut self) -> bool {
        // The frame at the head is incomplete (a complete one would have been handed out):
        // look for a start after it.
        let head = match (self.next_seq, self.parts.keys().next()) {
            (Some(n), _) => n,
            (None, Some(&first)) => first,
            (None, None) => 0,
        };
        let start = self
            .parts
            .range(head + 1..)
            .find(|(_, p)| p.start)
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

    /// When packets are missing before a keyframe that is already complete in the buffer,
    /// drops everything before that keyframe and hands it out: the decoder starts over from
    /// it, so waiting for (or retransmitting) the older frames only delays the picture.
    /// Returns whether it skipped.
    pub fn skip_to_keyframe(&mut self) -> bool {
        if !self.has_gap() {
            return false;
        }
        let head = self
            .next_seq
            .or_else(|| self.parts.keys().next().copied())
            .unwrap_or(0);
        let generic = self.format == VideoPayload::Generic;
        let starts: Vec<u64> = self
            .parts
            .range(head + 1..)
            .filter(|(_, p)| p.start)
            .map(|(&s, _)| s)
            .collect();
        for s in starts {
            let Some(ts) = self.parts.get(&s).map(|p| p.timestamp) else {
                continue;
            };
            let (mut complete, mut key) = (false, generic);
            for (seq, (&q, p)) in (s..).zip(self.parts.range(s..)) {
                if q != seq || p.timestamp != ts || (generic && q != s && p.start) {
                    break;
                }
                key = if generic { key && p.key } else { key || p.key };
                if p.marker {
                    complete = true;
                    break;
                }
            }
            if complete && key {
                debug!(
                    from = head,
                    to = s,
                    "skipping lost packets to a complete keyframe"
                );
                self.parts = self.parts.split_off(&s);
                self.next_seq = Some(s);
                self.need_keyframe = true;
                self.assemble();
                return true;
            }
        }
        false
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
            if first != expected || (self.next_seq.is_none() && !part.start) {
                if self.next_seq.is_none() {
                    // Joined mid-frame: drop the tail of a frame whose start we never saw.
                    self.parts.pop_first();
                    continue;
                }
                return;
            }
            if self.format == VideoPayload::Generic && !part.start {
                // The generic payload flags every start: this is a lost frame's tail.
                return;
            }
            // Walk consecutive packets of the same timestamp until the marker. In the generic
            // payload a start bit also ends the walk (the marker packet was lost); H.264 can
            // have several "start" packets in one frame (parameter sets, then the slice).
            let ts = part.timestamp;
            let generic = self.format == VideoPayload::Generic;
            let mut end = None;
            for (seq, (&s, p)) in (first..).zip(self.parts.range(first..)) {
                if s != seq || p.timestamp != ts || (generic && s != first && p.start) {
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
            let keyframe = match self.format {
                VideoPayload::Generic => frame_parts.values().all(|p| p.key),
                VideoPayload::H264 => frame_parts.values().any(|p| p.key),
            };
            if self.need_keyframe && !keyframe {
                continue;
            }
            let data = match self.format {
                VideoPayload::Generic => frame_parts.into_values().flat_map(|p| p.data).collect(),
                VideoPayload::H264 => {
                    match depacketize_h264(frame_parts.values().map(|p| p.data.as_slice())) {
                        Ok(d) => d,
                        Err(e) => {
                            debug!(error = %e, timestamp = ts, "dropping malformed H.264 frame");
                            self.malformed += 1;
                            self.need_keyframe = true;
                            continue;
                        }
                    }
                }
            };
            self.need_keyframe = false;
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

    #[test]
    fn a_complete_keyframe_after_a_gap_comes_out_at_once() {
        let mut d = VideoDepacketizer::new();
        // Frame 0 (key), frame 1 loses its only packet, frame 2 (delta), frame 3 (key).
        d.push(0, 0, true, &[GENERIC_START | GENERIC_KEYFRAME, 1]);
        d.push(2, 6000, true, &[GENERIC_START, 3]);
        assert!(d.poll_frame().is_some());
        assert!(d.poll_frame().is_none(), "frame 2 waits behind the gap");
        assert!(!d.skip_to_keyframe(), "no keyframe to skip to yet");
        // Keyframe 3 in two packets: incomplete first, then complete.
        d.push(3, 9000, false, &[GENERIC_START | GENERIC_KEYFRAME, 4]);
        assert!(!d.skip_to_keyframe(), "the keyframe is not complete");
        d.push(4, 9000, true, &[GENERIC_KEYFRAME, 5]);
        assert!(d.skip_to_keyframe());
        let f = d.poll_frame().expect("the keyframe");
        assert_eq!(
            (f.timestamp, f.keyframe, f.data.clone()),
            (9000, true, vec![4, 5])
        );
        assert!(!d.has_gap());
        // The lost frame's retransmission, late: ignored.
        d.push(1, 3000, true, &[GENERIC_START, 2]);
        assert!(d.poll_frame().is_none());
    }

    #[test]
    fn hole_inside_a_frame_is_a_gap_and_skip_moves_past_it() {
        // A 3-packet keyframe loses its middle packet; the next frame is a keyframe too.
        let mut pz = Packetizer::new(1, 96, 0, ExtensionIds::default(), 101);
        let f1 = packets(&mut pz, 0, 250, true);
        let f2 = packets(&mut pz, 3000, 50, true);
        let mut d = VideoDepacketizer::new();
        for (s, ts, m, p) in [&f1[0], &f1[2]].into_iter().chain(&f2) {
            d.push(*s, *ts, *m, p);
        }
        assert!(d.poll_frame().is_none());
        assert!(d.has_gap(), "the frame waits for its middle packet");
        d.skip_missing();
        assert_eq!(d.poll_frame().map(|f| f.timestamp), Some(3000));
        assert!(!d.has_gap());
    }

    fn h264_packets(p: &mut Packetizer, ts: u32, au: &[u8]) -> Vec<(u64, u32, bool, Vec<u8>)> {
        p.h264(ts, au)
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

    /// An Annex B access unit: SPS + PPS + IDR slice, or one non-IDR slice, `len` bytes of slice.
    fn access_unit(key: bool, len: usize, fill: u8) -> Vec<u8> {
        let mut au = Vec::new();
        if key {
            au.extend_from_slice(&[0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1e, 0, 0, 0, 1, 0x68, 0xce]);
        }
        au.extend_from_slice(&[0, 0, 0, 1, if key { 0x65 } else { 0x41 }, 0x88]);
        au.extend(std::iter::repeat_n(fill, len));
        au
    }

    #[test]
    fn h264_frames_reassemble_in_order_and_keyframes_are_found() {
        let mut pz = Packetizer::new(1, 96, 0, ExtensionIds::default(), 100);
        let a = access_unit(true, 450, 7);
        let b = access_unit(false, 80, 9);
        let mut all = h264_packets(&mut pz, 0, &a);
        all.extend(h264_packets(&mut pz, 3000, &b));
        assert!(all.len() >= 6);
        let first = all.remove(0);
        all.reverse();
        let mut d = VideoDepacketizer::with_format(VideoPayload::H264);
        d.push(first.0, first.1, first.2, &first.3);
        for (s, ts, m, p) in all {
            d.push(s, ts, m, &p);
        }
        let fa = d.poll_frame().unwrap();
        let fb = d.poll_frame().unwrap();
        assert_eq!((fa.timestamp, fa.keyframe), (0, true));
        assert_eq!((fb.timestamp, fb.keyframe), (3000, false));
        assert_eq!(fa.data, a);
        assert_eq!(fb.data, b);
    }

    #[test]
    fn h264_malformed_frame_is_dropped_until_the_next_keyframe() {
        let mut pz = Packetizer::new(1, 96, 0, ExtensionIds::default(), 100);
        let f1 = h264_packets(&mut pz, 0, &access_unit(true, 300, 1));
        let mut f2 = h264_packets(&mut pz, 3000, &access_unit(false, 300, 2));
        let f3 = h264_packets(&mut pz, 6000, &access_unit(false, 50, 3));
        let f4 = h264_packets(&mut pz, 9000, &access_unit(true, 50, 4));
        // Corrupt frame 2: its middle FU-A fragment claims to start a new unit.
        assert!(f2.len() >= 3);
        f2[1].3[1] |= 0x80;
        let mut d = VideoDepacketizer::with_format(VideoPayload::H264);
        for (s, ts, m, p) in f1.iter().chain(&f2).chain(&f3).chain(&f4) {
            d.push(*s, *ts, *m, p);
        }
        let got: Vec<u32> = std::iter::from_fn(|| d.poll_frame())
            .map(|f| f.timestamp)
            .collect();
        assert_eq!(got, vec![0, 9000], "frame 3 depends on the broken frame 2");
        assert_eq!(d.malformed_frames(), 1);
        assert!(!d.needs_keyframe());
    }

    #[test]
    fn h264_lost_fragment_skips_to_keyframe() {
        let mut pz = Packetizer::new(1, 96, 0, ExtensionIds::default(), 100);
        let f1 = h264_packets(&mut pz, 0, &access_unit(true, 300, 1));
        let f2 = h264_packets(&mut pz, 3000, &access_unit(false, 300, 2));
        let f3 = h264_packets(&mut pz, 6000, &access_unit(false, 50, 3));
        let f4 = h264_packets(&mut pz, 9000, &access_unit(true, 50, 4));
        let mut d = VideoDepacketizer::with_format(VideoPayload::H264);
        let kept = f2
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, p)| p);
        for (s, ts, m, p) in f1.iter().chain(kept).chain(&f3).chain(&f4) {
            d.push(*s, *ts, *m, p);
        }
        assert_eq!(d.poll_frame().map(|f| f.timestamp), Some(0));
        assert!(d.poll_frame().is_none());
        assert!(d.has_gap());
        assert!(!d.skip_missing(), "keyframe 4 was already buffered");
        let f = d.poll_frame().unwrap();
        assert_eq!((f.timestamp, f.keyframe), (9000, true));
    }
}

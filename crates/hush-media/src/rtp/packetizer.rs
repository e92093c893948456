//! Packetizers: one audio frame per packet, or one video frame split over several.

use super::ext::{AudioLevel, ExtensionIds};
use super::h264::packetize_h264;
use super::packet::{RtpHeader, RtpPacket};

/// Payload descriptor byte of hush's generic video payload: first packet of a frame.
pub const GENERIC_START: u8 = 0x02;
/// Payload descriptor byte of hush's generic video payload: the frame is a keyframe.
pub const GENERIC_KEYFRAME: u8 = 0x01;

/// Turns encoded frames into RTP packets for one SSRC.
///
/// Audio frames go one per packet; the marker bit flags the first packet of a talk spurt
/// (RFC 3551 §4.1). Video frames are split into packets of at most `max_payload` bytes, each
/// starting with a one-byte generic descriptor ([`GENERIC_START`], [`GENERIC_KEYFRAME`]); the
/// marker bit flags the last packet of a frame (as WebRTC's generic packetizer does).
#[derive(Debug, Clone)]
pub struct Packetizer {
    ssrc: u32,
    payload_type: u8,
    next_seq: u16,
    ext: ExtensionIds,
    max_payload: usize,
}

impl Packetizer {
    /// A packetizer for `ssrc`/`payload_type`, starting at sequence number `first_seq`.
    /// `max_payload` is clamped to at least 2 bytes (3 for H.264).
    pub fn new(
        ssrc: u32,
        payload_type: u8,
        first_seq: u16,
        ext: ExtensionIds,
        max_payload: usize,
    ) -> Self {
        Self {
            ssrc,
            payload_type,
            next_seq: first_seq,
            ext,
            max_payload: max_payload.max(2),
        }
    }

    /// The SSRC this packetizer writes.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// The sequence number the next packet will get.
    pub fn next_seq(&self) -> u16 {
        self.next_seq
    }

    fn header(&mut self, timestamp: u32, marker: bool) -> RtpHeader {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        RtpHeader {
            marker,
            payload_type: self.payload_type,
            sequence_number: seq,
            timestamp,
            ssrc: self.ssrc,
            csrcs: Vec::new(),
            extensions: Vec::new(),
        }
    }

    /// Packetizes one audio frame. `talkspurt_start` sets the marker bit.
    pub fn audio(
        &mut self,
        timestamp: u32,
        frame: &[u8],
        level: Option<AudioLevel>,
        talkspurt_start: bool,
    ) -> RtpPacket {
        let mut header = self.header(timestamp, talkspurt_start);
        if let (Some(id), Some(level)) = (self.ext.audio_level, level) {
            header.set_audio_level(id, level);
        }
        RtpPacket {
            header,
            payload: frame.to_vec(),
        }
    }

    /// Packetizes one H.264 access unit (Annex B) per RFC 6184 packetization mode 1 (see
    /// [`packetize_h264`]); the marker bit flags the last packet. An access unit without NAL
    /// units gives no packet.
    pub fn h264(&mut self, timestamp: u32, access_unit: &[u8]) -> Vec<RtpPacket> {
        let payloads = packetize_h264(access_unit, self.max_payload);
        let n = payloads.len();
        payloads
            .into_iter()
            .enumerate()
            .map(|(i, payload)| RtpPacket {
                header: self.header(timestamp, i + 1 == n),
                payload,
            })
            .collect()
    }

    /// Packetizes one video frame into one or more packets (at least one, even if empty).
    pub fn video(&mut self, timestamp: u32, frame: &[u8], keyframe: bool) -> Vec<RtpPacket> {
        let chunk = self.max_payload - 1;
        let n = frame.len().div_ceil(chunk).max(1);
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let part = frame
                .get(i * chunk..((i + 1) * chunk).min(frame.len()))
                .unwrap_or(&[]);
            let header = self.header(timestamp, i + 1 == n);
            let mut desc = 0;
            if i == 0 {
                desc |= GENERIC_START;
            }
            if keyframe {
                desc |= GENERIC_KEYFRAME;
            }
            let mut payload = Vec::with_capacity(part.len() + 1);
            payload.push(desc);
            payload.extend_from_slice(part);
            out.push(RtpPacket { header, payload });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_packets_count_up() {
        let mut p = Packetizer::new(7, 111, 65535, ExtensionIds::default(), 1200);
        let a = p.audio(
            0,
            &[1, 2],
            Some(AudioLevel {
                voice: true,
                level: 10,
            }),
            true,
        );
        let b = p.audio(960, &[3], None, false);
        assert_eq!(a.header.sequence_number, 65535);
        assert_eq!(b.header.sequence_number, 0);
        assert!(a.header.marker && !b.header.marker);
        assert_eq!(a.header.audio_level(1).map(|l| l.level), Some(10));
    }

    #[test]
    fn video_splits_with_marker_on_last() {
        let mut p = Packetizer::new(7, 96, 10, ExtensionIds::default(), 11);
        let frame: Vec<u8> = (0..25).collect();
        let pkts = p.video(3000, &frame, true);
        assert_eq!(pkts.len(), 3);
        assert_eq!(pkts[0].payload[0], GENERIC_START | GENERIC_KEYFRAME);
        assert_eq!(pkts[1].payload[0], GENERIC_KEYFRAME);
        assert!(pkts[2].header.marker && !pkts[0].header.marker);
        let joined: Vec<u8> = pkts.iter().flat_map(|p| p.payload[1..].to_vec()).collect();
        assert_eq!(joined, frame);
    }
}

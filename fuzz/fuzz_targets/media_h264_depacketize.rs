//! H.264 RTP depacketization (hush-media, RFC 6184) as `MediaSession` drives it for a video
//! stream with `VideoPayload::H264`: arbitrary packets (sequence jumps, marker bits,
//! timestamps) into `VideoDepacketizer`, with `skip_missing` when it reports a gap. Never panics;
//! every frame handed out is a well-formed Annex B access unit. Also: any access unit whose NAL
//! headers are valid survives packetize → depacketize unchanged (up to start-code length).
//! Input: records [len, flags, bytes...]; flags bit 0 marker, bits 1-2 sequence step - 1,
//! bit 3 new timestamp, bit 4 give up on gaps; bytes 0..2 of the input pick the payload limit.
#![no_main]
use hush_media::rtp::h264::{depacketize_h264, packetize_h264};
use hush_media::rtp::{VideoDepacketizer, VideoPayload};
use hush_media::video::annexb_nal_units;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((limit, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max_payload = usize::from(u16::from_be_bytes(*limit)) % 1500;

    // Round trip of the whole input taken as an access unit.
    let units: Vec<&[u8]> = annexb_nal_units(rest).collect();
    let payloads = packetize_h264(rest, max_payload);
    assert!(payloads.iter().all(|p| p.len() <= max_payload.max(3)));
    let valid = |u: &&[u8]| u[0] & 0x80 == 0 && (1..=23).contains(&(u[0] & 0x1f));
    if !units.is_empty() && units.iter().all(valid) {
        let back = depacketize_h264(payloads.iter().map(Vec::as_slice)).expect("round trip");
        let again: Vec<&[u8]> = annexb_nal_units(&back).collect();
        assert_eq!(again, units);
    }

    // The receive path on arbitrary packets.
    let mut d = VideoDepacketizer::with_format(VideoPayload::H264);
    let mut seq = 1_000u64;
    let mut ts = 0u32;
    let mut input = rest;
    while let Some((&len, tail)) = input.split_first() {
        let Some((&flags, tail)) = tail.split_first() else {
            break;
        };
        let take = usize::from(len).min(tail.len());
        let (payload, tail) = tail.split_at(take);
        input = tail;
        seq += u64::from((flags >> 1) & 3) + 1;
        if flags & 8 != 0 {
            ts = ts.wrapping_add(3000);
        }
        d.push(seq, ts, flags & 1 != 0, payload);
        if flags & 16 != 0 && d.has_gap() {
            d.skip_missing();
        }
        while let Some(f) = d.poll_frame() {
            assert!(annexb_nal_units(&f.data).count() > 0);
        }
    }
});

//! The OpenH264 decoder (hush-media `OpenH264Decoder`) on arbitrary access units, as the
//! receive path hands it depacketized frames: never panics, and after an error it refuses
//! frames without an IDR; the SPS size reader (`sps_dimensions`, used on received access units
//! in encoded-frame mode) never panics and gives no zero size. Input: records [len_hi, len_lo,
//! bytes...], one access unit each.
#![no_main]
use std::time::Instant;

use hush_media::video::{contains_idr, sps_dimensions, OpenH264Decoder, VideoDecoder, VideoError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut dec) = OpenH264Decoder::new() else {
        return;
    };
    let now = Instant::now();
    let mut rest = data;
    while let Some((len, tail)) = rest.split_first_chunk::<2>() {
        let take = usize::from(u16::from_be_bytes(*len)).min(tail.len());
        let (au, tail) = tail.split_at(take);
        rest = tail;
        if let Some((w, h)) = sps_dimensions(au) {
            assert!(w > 0 && h > 0);
        }
        let waiting = dec.needs_keyframe();
        match dec.decode(au, now) {
            Err(VideoError::NeedKeyframe) => assert!(waiting && !contains_idr(au)),
            Ok(Some(frame)) => {
                assert!(frame.width() > 0 && frame.height() > 0);
                assert!(!dec.needs_keyframe());
            }
            Ok(None) | Err(_) => {}
        }
    }
});

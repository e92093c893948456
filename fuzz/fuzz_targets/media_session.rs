//! The whole receive path of a media session (RTP, RTX, RED, video depacketizer, RTCP
//! feedback) fed arbitrary datagrams: never panics. Input: a sequence of
//! [len_hi, len_lo, gap_ms, bytes...] records.
#![no_main]
use std::time::{Duration, Instant};

use hush_media::{MediaSession, SessionConfig, StreamIds};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let config = SessionConfig {
        local_video: Some(StreamIds {
            ssrc: 0x1000_0003,
            rtx_ssrc: 0x1000_0004,
        }),
        remote_video: Some(StreamIds {
            ssrc: 0x2000_0003,
            rtx_ssrc: 0x2000_0004,
        }),
        ..SessionConfig::default()
    };
    let mut s = MediaSession::new(config, t0);
    let mut now = t0;
    let mut rest = data;
    while rest.len() >= 3 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])) % 1500;
        now += Duration::from_millis(u64::from(rest[2]));
        rest = &rest[3..];
        let take = len.min(rest.len());
        let _ = s.handle_packet(now, &rest[..take]);
        rest = &rest[take..];
        s.handle_timeout(now);
        while s.poll_transmit().is_some() {}
        while s.poll_event().is_some() {}
        s.send_audio(now, &[1, 2, 3], None);
    }
    let _ = s.stats(now);
});

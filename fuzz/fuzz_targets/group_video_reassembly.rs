//! Fuzzes the receive side of a group call's video (`GroupMediaPath`, src/group_path.rs): the
//! SFU's video packets, authentic under the hop key, but with any sequence numbers (gaps,
//! reordering, duplicates, wraps), timestamps, marker bits, frame marks (start, end, keyframe)
//! and payloads, as a faulty or malicious SFU (or a sender through it) could send them. They go
//! through `handle_datagram` (hop SRTP, reassembly by frame, NACKs, giving up after the wait,
//! the end-to-end layer, here `NoFrameCrypto` so the reassembled bytes reach the frame parser)
//! and `handle_timeout`, and every frame, datagram and keyframe request is taken out.
//!
//! Input: records `flags u8 || len u8 || bytes`. Flags: bits 0-2 the frame marks (keyframe,
//! end, start); bits 3-4 the sequence step (+1, +2, -1, +300); bit 5 a new timestamp (+3000);
//! bit 6 time moves on 150 ms first (so frames waiting for a packet are given up); bit 7 the
//! RTP marker bit. A record shorter than `len` takes what is left.
//!
//! Checked: nothing panics; every frame handed out is of the stream's participant and SSRC, is
//! no longer than the bytes sent, and carries a layer that fits the inner byte.
#![no_main]

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use hush::group_path::{GroupMediaPath, NoFrameCrypto, VIDEO_PT};
use hush_media::jitter::JitterConfig;
use hush_media::rtp::RtpPacket;
use hush_sfu::join::{HopKeys, JoinParams, PendingJoin, SfuSigningKey, StreamDecl};
use hush_sfu::{CallId, DeviceId, FRAME_MARKING_EXT_ID};
use hush_srtp::{SrtpConfig, Suite};
use libfuzzer_sys::fuzz_target;
use rand::rngs::StdRng;
use rand::SeedableRng;

/// The SSRC of the one remote video stream.
const SSRC: u32 = 0x5151;

/// The client's hop keys and the SFU's side of them, from one real join.
static KEYS: LazyLock<(HopKeys, HopKeys)> = LazyLock::new(|| {
    let mut rng = StdRng::seed_from_u64(7);
    let params = JoinParams {
        call_id: CallId::from_bytes([0x1d; 16]),
        suite: Suite::AeadAes128Gcm,
        audio_level_ext: Some(1),
        streams: vec![StreamDecl::audio(1)],
    };
    let device = SigningKey::from_bytes(&[9; 32]);
    let (pending, request) =
        PendingJoin::new(&device, &params, 1_780_000_000_000, &mut rng).unwrap();
    let sfu = SfuSigningKey::from_seed(&[8; 32]);
    let (answer, sfu_keys) = sfu.answer(&request, &mut rng).unwrap();
    let client_keys = pending.finish(&sfu.public_key(), &answer).unwrap();
    (client_keys, sfu_keys)
});

fn sender() -> DeviceId {
    DeviceId::from_signing_key(&SigningKey::from_bytes(&[5; 32]))
}

fuzz_target!(|data: &[u8]| {
    let (client_keys, sfu_keys) = &*KEYS;
    let Ok(mut path) =
        GroupMediaPath::new(client_keys, 1, NoFrameCrypto, JitterConfig::default(), 1000)
    else {
        return;
    };
    path.add_video_stream(sender(), SSRC);
    let mut sfu = sfu_keys.send_context(SrtpConfig::default()).unwrap();
    let mut now = Instant::now();
    let mut seq = 0xfff0u16;
    let mut timestamp = 0u32;
    let mut sent_bytes = 0usize;
    let mut out_bytes = 0usize;
    let mut input = data;
    while let [flags, len, rest @ ..] = input {
        let take = usize::from(*len).min(rest.len());
        let (payload, tail) = rest.split_at(take);
        input = tail;
        seq = match (flags >> 3) & 3 {
            0 => seq.wrapping_add(1),
            1 => seq.wrapping_add(2),
            2 => seq.wrapping_sub(1),
            _ => seq.wrapping_add(300),
        };
        if flags & 0x20 != 0 {
            timestamp = timestamp.wrapping_add(3000);
        }
        if flags & 0x40 != 0 {
            now += Duration::from_millis(150);
            path.handle_timeout(now);
        }
        let mut p = RtpPacket::default();
        p.header.payload_type = VIDEO_PT;
        p.header.ssrc = SSRC;
        p.header.sequence_number = seq;
        p.header.timestamp = timestamp;
        p.header.marker = flags & 0x80 != 0;
        p.header
            .set_extension(FRAME_MARKING_EXT_ID, vec![(flags & 0x07) << 5]);
        p.payload = payload.to_vec();
        let mut bytes = p.to_vec();
        if sfu.protect_rtp(&mut bytes).is_err() {
            continue;
        }
        sent_bytes += payload.len();
        let _ = path.handle_datagram(now, bytes);
        while let Some(v) = path.poll_video() {
            assert_eq!(v.device, sender());
            assert_eq!(v.ssrc, SSRC);
            assert!(v.layer < 4, "layer {}", v.layer);
            out_bytes += v.frame.len();
            assert!(out_bytes <= sent_bytes);
        }
        while path.poll_datagram().is_some() {}
        while path.poll_keyframe_request().is_some() {}
    }
    // Whatever still waits is given up in the end.
    now += Duration::from_secs(2);
    path.handle_timeout(now);
    while let Some(v) = path.poll_video() {
        out_bytes += v.frame.len();
        assert!(out_bytes <= sent_bytes);
    }
    while path.poll_datagram().is_some() {}
});

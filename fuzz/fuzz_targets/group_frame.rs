//! Fuzzes what a group call member runs on bytes from the SFU and from other members:
//! `GroupE2ee::decrypt` on SFrame frames (as the media path does for each received frame) and
//! `KeyMessage::decode` + `GroupE2ee::receive_key` on the plaintext of a Signal-sealed key
//! message. Nothing may panic, and nothing but a genuine frame may decrypt.
#![no_main]

use std::time::{Duration, Instant};

use hush_crypto::group::{FrameKind, GroupCallId, GroupE2ee, KeyMessage, MemberSlot, Opened};
use hush_crypto::rand::rngs::StdRng;
use hush_crypto::rand::SeedableRng;
use libfuzzer_sys::fuzz_target;

const CALL: GroupCallId = GroupCallId([3; 16]);

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let now = Instant::now();
    let mut sender = GroupE2ee::new(CALL, MemberSlot(0), &mut StdRng::seed_from_u64(1)).unwrap();
    let mut receiver = GroupE2ee::new(CALL, MemberSlot(1), &mut StdRng::seed_from_u64(2)).unwrap();
    receiver
        .receive_key(MemberSlot(0), &sender.key_message(), now)
        .unwrap();
    let from = MemberSlot(selector & 0x03);
    let kind = if selector & 0x04 == 0 {
        FrameKind::Audio
    } else {
        FrameKind::Video
    };
    if selector & 0x08 != 0 {
        // A key message's plaintext, then a frame under whatever key it installed.
        if let Ok(message) = KeyMessage::decode(rest) {
            let _ = receiver.receive_key(from, &message, now);
        }
    }
    // The sender's first frame (the same bytes every run: seeded keys).
    let _genuine = sender.encrypt(FrameKind::Audio, b"genuine").unwrap();
    if let Ok(Opened::Frame(plain)) = receiver.decrypt(from, kind, rest, now) {
        // Without a key of its own, the only frame that can decrypt is the sender's.
        assert!(selector & 0x08 != 0 || plain == b"genuine");
    }
    receiver.handle_timeout(now + Duration::from_secs(5));
    while receiver.poll_released().is_some() {}
});

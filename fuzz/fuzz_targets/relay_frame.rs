//! Relay framing as production runs it: the relay's preamble check and `RelayFrameCodec` (the
//! one length-prefixed decoder, which the relay's reader and `RelayClient` drive through a
//! `FramedRead`), fed the stream in arbitrary chunks, and both frame directions.
//!
//! Input: `[flags, seed, stream...]`. Flags bit 0: the relay's side (the stream starts with the
//! 4-byte preamble, checked as the relay checks it; frames up to the relay's default limit) or
//! the client's side (frames from the relay, no preamble). The seed picks the chunk sizes, so
//! the fuzzer explores splits as well as bytes. The calls are the ones `FramedRead` makes:
//! `decode` after every chunk until it wants more, `decode_eof` at the end, nothing after an
//! error.
#![no_main]

use bytes::BytesMut;
use hush_signaling::frame::{
    check_preamble, decode_client_frame, decode_server_frame, RelayFrameCodec,
    DEFAULT_MAX_FRAME_LEN, TCP_PREAMBLE,
};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

/// Chunk sizes from the seed: mostly small (splitting prefixes and bodies), sometimes large.
struct Splits(u32);

impl Splits {
    fn next(&mut self) -> usize {
        // xorshift32; a zero seed still makes progress through the `| 1`.
        self.0 |= 1;
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        match self.0 % 8 {
            0 => 1 + (self.0 as usize >> 8) % 4096,
            _ => 1 + (self.0 as usize >> 8) % 16,
        }
    }
}

fn decode_frame(relay_side: bool, frame: &[u8]) {
    if relay_side {
        let _ = decode_client_frame(frame);
    } else {
        let _ = decode_server_frame(frame);
    }
}

fuzz_target!(|data: &[u8]| {
    let [flags, seed, stream @ ..] = data else {
        return;
    };
    // The stream as one frame body, both directions.
    let _ = decode_client_frame(stream);
    let _ = decode_server_frame(stream);

    let relay_side = flags & 1 == 1;
    let mut stream = stream;
    let max = if relay_side {
        // The relay reads the preamble with `read_exact` before any frame.
        let Some((preamble, rest)) = stream.split_first_chunk::<{ TCP_PREAMBLE.len() }>() else {
            return;
        };
        if check_preamble(preamble).is_err() {
            return;
        }
        stream = rest;
        DEFAULT_MAX_FRAME_LEN
    } else {
        // Clients often run with a smaller limit; a small one reaches the oversize path.
        4096
    };

    let mut codec = RelayFrameCodec::new(max);
    let mut buf = BytesMut::new();
    let mut splits = Splits(u32::from(*seed) * 0x0101_0101 ^ u32::from(*flags));
    while !stream.is_empty() {
        let (chunk, rest) = stream.split_at(splits.next().min(stream.len()));
        stream = rest;
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= max);
                    decode_frame(relay_side, &frame);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    while let Ok(Some(frame)) = codec.decode_eof(&mut buf) {
        assert!(frame.len() <= max);
        decode_frame(relay_side, &frame);
    }
});

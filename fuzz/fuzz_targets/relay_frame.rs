//! Relay frame decode: the length-prefixed stream decoder and both frame directions.
#![no_main]

use hush_signaling::frame::{decode_client_frame, decode_server_frame, FrameDecoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Whole input as one frame body, both directions.
    let _ = decode_client_frame(data);
    let _ = decode_server_frame(data);
    // Input as a byte stream, delivered in uneven chunks.
    let mut decoder = FrameDecoder::new(4096);
    for chunk in data.chunks(7) {
        decoder.push(chunk);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= 4096);
                    let _ = decode_client_frame(&frame);
                    let _ = decode_server_frame(&frame);
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
});

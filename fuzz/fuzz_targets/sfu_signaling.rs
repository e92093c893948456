//! The SFU's parsers of untrusted bytes outside the media path: STUN connectivity checks on the
//! media port (ICE-lite), and both directions of the signaling channel (client frames the SFU
//! reads, server frames and sealed notices the client reads).
//!
//! The first byte selects the parser. Checked: no panic; a check is answered only under the
//! password whose MESSAGE-INTEGRITY it carries (a fixed wrong password never verifies unless
//! the input was made with it, which the fuzzer cannot do without the HMAC key); a notice never
//! opens under a key it was not sealed with; encodings of decoded messages decode to the same.
#![no_main]

use hush_sfu::control::{ClientMessage, NoticeOpener, ServerMessage};
use hush_sfu::ice;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 4 {
        0 => {
            if let Ok(check) = ice::parse_check(rest) {
                let from = "127.0.0.1:5000".parse().expect("address");
                // The fuzzer does not know this password: the MAC must not verify.
                assert!(
                    ice::answer_check(rest, &check, "fuzz-unknown-password-0123", from).is_err()
                );
            }
        }
        1 => {
            if let Ok(m) = ClientMessage::decode(rest) {
                assert_eq!(ClientMessage::decode(&m.encode()).ok(), Some(m));
            }
        }
        2 => {
            if let Ok(m) = ServerMessage::decode(rest) {
                assert_eq!(ServerMessage::decode(&m.encode()).ok(), Some(m));
            }
        }
        _ => {
            let mut opener = NoticeOpener::new(&[0x42; 32]);
            assert!(opener.open(rest).is_err());
        }
    }
});

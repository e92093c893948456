//! Envelope decode: untrusted bytes from a relay or any transport.
#![no_main]

use hush_signaling::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::decode(data) {
        // A valid envelope re-encodes to something that decodes to the same envelope.
        let again = Envelope::decode(&envelope.encode()).expect("re-encoded envelope decodes");
        assert_eq!(again, envelope);
    }
});

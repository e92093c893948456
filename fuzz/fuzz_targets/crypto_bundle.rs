//! Fuzzes hush-crypto's bundle parsers (`PeerBundle::decode`, `BundleUpload::decode`) and the
//! signature checks run on what parses. Nothing may panic.
#![no_main]

use hush_crypto::{BundleUpload, PeerBundle};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(bundle) = PeerBundle::decode(data) {
        let _ = bundle.verify();
        let _ = bundle.to_signal();
        let again = bundle.encode().expect("parsed bundle re-encodes");
        assert_eq!(again, data, "bundle re-encodes to the same bytes");
    }
    if let Ok(mut upload) = BundleUpload::decode(data) {
        let _ = upload.verify();
        let again = upload.encode().expect("parsed upload re-encodes");
        assert_eq!(again, data, "upload re-encodes to the same bytes");
        let _ = upload.take_bundle().encode();
    }
});

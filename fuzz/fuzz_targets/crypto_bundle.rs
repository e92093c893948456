//! A prekey bundle as production handles one, whoever sent it:
//! - the relay, on upload (`hush-relay` `bundles::check_upload`): `PeerBundle::decode`, then
//!   `verify` (both bindings between the ed25519 device key and the identity, prekey
//!   signatures);
//! - the client, on a fetched bundle (`SignalSealer::start_session`): `PeerBundle::decode`,
//!   then `Device::process_bundle` at the Signal address the bundle names (verify, pin check,
//!   `to_signal`, libsignal's session setup), here on a device with no session yet.
//!
//! Bundles travel as `PeerBundle` encodings on the wire (`SignalSealer::publish`);
//! `BundleUpload::decode` has no production caller and is not fuzzed here. Nothing may panic,
//! and a bundle that parses re-encodes to the same bytes.
#![no_main]

use std::cell::RefCell;

use hush_crypto::fuzzing::{device, now};
use hush_crypto::rand::rngs::StdRng;
use hush_crypto::rand::SeedableRng;
use hush_crypto::signal::DeviceId;
use hush_crypto::{complete_now, Device, DeviceStore, MemoryBackend, PeerBundle, ProtocolAddress};
use libfuzzer_sys::fuzz_target;

thread_local! {
    /// The fetching device's store, built once (key generation is slow) and cloned per input.
    static FETCHER: RefCell<Option<MemoryBackend>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    let Ok(bundle) = PeerBundle::decode(data) else {
        return;
    };
    let again = bundle.encode().expect("parsed bundle re-encodes");
    assert_eq!(again, data, "bundle re-encodes to the same bytes");
    // The relay's check.
    let verified = bundle.verify().is_ok();

    // The client's: the address comes from the bundle's own Signal device id, as in
    // `start_session` (which refuses ids libsignal does not accept).
    let Ok(device_id) = DeviceId::new(bundle.device.device_id) else {
        return;
    };
    let backend = FETCHER.with(|f| {
        f.borrow_mut()
            .get_or_insert_with(|| device(5).into_store().into_backend())
            .clone()
    });
    let store = DeviceStore::open(backend)
        .expect("open store")
        .expect("device present");
    let mut fetcher = Device::with_rng(store, StdRng::seed_from_u64(6));
    let address = ProtocolAddress::new("peer".into(), device_id);
    let processed = complete_now(fetcher.process_bundle(&address, &bundle, now()));
    if let Some(Ok(())) = processed {
        assert!(
            verified,
            "a session started from a bundle that does not verify"
        );
    }
});

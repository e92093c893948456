//! Fuzzes `Device::open` (sealed Signal message parsing and decryption) on a device that
//! already has a session with the sender. Nothing may panic. The setup is deterministic
//! (`hush_crypto::fuzzing`, seeded RNGs), the same that `crates/hush-crypto/examples/fuzz_seeds.rs`
//! uses to write valid sealed messages as seeds.
#![no_main]

use std::cell::RefCell;

use hush_crypto::fuzzing::{addr, alice_and_bob};
use hush_crypto::rand::rngs::StdRng;
use hush_crypto::rand::SeedableRng;
use hush_crypto::{complete_now, Device, DeviceStore, MemoryBackend};
use libfuzzer_sys::fuzz_target;

/// Bob's backend after Alice started a session and Bob opened her first message.
fn bob_backend() -> MemoryBackend {
    let (_alice, bob) = alice_and_bob();
    bob.into_store().into_backend()
}

thread_local! {
    static BOB: RefCell<Option<MemoryBackend>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    let backend = BOB.with(|b| {
        b.borrow_mut()
            .get_or_insert_with(|| {
                // libfuzzer-sys aborts on every panic, even one that `Device::open` catches
                // (it catches panics inside libsignal, e.g. the SPQR epoch underflow kept in
                // crates/hush-crypto/tests/data). Restore the default hook: a panic that is not
                // caught still unwinds into the FFI boundary and aborts, so it is still found.
                drop(std::panic::take_hook());
                bob_backend()
            })
            .clone()
    });
    let store = DeviceStore::open(backend)
        .expect("open store")
        .expect("device present");
    let mut bob = Device::with_rng(store, StdRng::seed_from_u64(3));
    let _ = complete_now(bob.open(&addr("alice"), data));
});

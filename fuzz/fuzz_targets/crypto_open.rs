//! Fuzzes `Device::open` (sealed Signal message parsing and decryption) on a device that
//! already has a session with the sender. Nothing may panic. The setup is deterministic
//! (seeded RNGs) and matches `crates/hush-crypto/examples/fuzz_seeds.rs`, which writes valid
//! sealed messages as seeds.
#![no_main]

use std::cell::RefCell;
use std::time::{Duration, SystemTime};

use hush_crypto::rand::rngs::StdRng;
use hush_crypto::rand::SeedableRng;
use hush_crypto::signal::DeviceId;
use hush_crypto::{complete_now, Device, DeviceStore, MemoryBackend, ProtocolAddress};
use libfuzzer_sys::fuzz_target;

fn device(seed: u64) -> Device<MemoryBackend> {
    let mut rng = StdRng::seed_from_u64(seed);
    let store = DeviceStore::create(MemoryBackend::new(), 1, &mut rng).expect("create");
    Device::with_rng(store, StdRng::seed_from_u64(seed ^ 0x5eed))
}

fn addr(name: &str) -> ProtocolAddress {
    ProtocolAddress::new(name.into(), DeviceId::new(1).expect("valid id"))
}

/// Bob's backend after Alice started a session and Bob opened her first message.
fn bob_backend() -> MemoryBackend {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut alice = device(1);
    let mut bob = device(2);
    let bundle = bob.fresh_bundle(now).expect("bundle");
    complete_now(alice.process_bundle(&addr("bob"), &bundle, now))
        .expect("sync")
        .expect("session");
    let hello = complete_now(alice.seal(&addr("bob"), b"hello", now))
        .expect("sync")
        .expect("seal");
    complete_now(bob.open(&addr("alice"), &hello))
        .expect("sync")
        .expect("open");
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

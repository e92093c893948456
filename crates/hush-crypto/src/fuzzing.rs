//! Deterministic fixtures shared by the fuzz targets and the example that writes their seeds
//! (`examples/fuzz_seeds.rs`): both must build the very same devices, or the seeds would not
//! open on the fuzz target's device. Not part of the API.
//! Compiled only with the `fuzzing` feature.

use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::{complete_now, Device, DeviceStore, MemoryBackend, ProtocolAddress};

/// The fixed wall-clock time the fixtures use.
pub fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

/// A device whose keys and RNG come from `seed`.
pub fn device(seed: u64) -> Device<MemoryBackend> {
    let mut rng = StdRng::seed_from_u64(seed);
    let store = DeviceStore::create(MemoryBackend::new(), 1, &mut rng).expect("create");
    Device::with_rng(store, StdRng::seed_from_u64(seed ^ 0x5eed))
}

/// The Signal address `name`.1.
pub fn addr(name: &str) -> ProtocolAddress {
    ProtocolAddress::new(
        name.into(),
        crate::signal::DeviceId::new(1).expect("valid id"),
    )
}

/// Alice (seed 1) and Bob (seed 2) after Alice started a session from Bob's bundle and Bob
/// opened her first message ("hello"): addresses "alice" and "bob".
pub fn alice_and_bob() -> (Device<MemoryBackend>, Device<MemoryBackend>) {
    let mut alice = device(1);
    let mut bob = device(2);
    let bundle = bob.fresh_bundle(now()).expect("bundle");
    complete_now(alice.process_bundle(&addr("bob"), &bundle, now()))
        .expect("sync")
        .expect("session");
    let hello = complete_now(alice.seal(&addr("bob"), b"hello", now()))
        .expect("sync")
        .expect("seal");
    complete_now(bob.open(&addr("alice"), &hello))
        .expect("sync")
        .expect("open");
    (alice, bob)
}

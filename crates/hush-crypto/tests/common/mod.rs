//! Shared helpers for hush-crypto's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::time::{Duration, SystemTime};

use hush_crypto::signal::DeviceId;
use hush_crypto::{complete_now, Device, DeviceStore, MemoryBackend, ProtocolAddress};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// Drives a future of the synchronous stores.
pub fn run<F: Future>(f: F) -> F::Output {
    complete_now(f).expect("memory/sqlite store futures complete on first poll")
}

pub fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

pub fn addr(name: &str, device: u8) -> ProtocolAddress {
    ProtocolAddress::new(name.into(), DeviceId::new(device).unwrap())
}

pub fn device(seed: u64, device_id: u8) -> Device<MemoryBackend> {
    let mut rng = StdRng::seed_from_u64(seed);
    let store = DeviceStore::create(MemoryBackend::new(), device_id, &mut rng).unwrap();
    Device::with_rng(store, StdRng::seed_from_u64(seed ^ 0x5eed))
}

/// Alice (device 1 of "alice") and Bob (device 1 of "bob") with a session both ways: Alice
/// processed Bob's bundle, sent one message and Bob opened it.
pub struct Pair {
    pub alice: Device<MemoryBackend>,
    pub bob: Device<MemoryBackend>,
    pub alice_addr: ProtocolAddress,
    pub bob_addr: ProtocolAddress,
}

pub fn pair(seed: u64) -> Pair {
    let mut alice = device(seed, 1);
    let mut bob = device(seed.wrapping_add(1000), 1);
    let alice_addr = addr("alice", 1);
    let bob_addr = addr("bob", 1);
    let bundle = bob.fresh_bundle(now()).unwrap();
    run(alice.process_bundle(&bob_addr, &bundle, now())).unwrap();
    let hello = run(alice.seal(&bob_addr, b"hello", now())).unwrap();
    assert_eq!(run(bob.open(&alice_addr, &hello)).unwrap(), b"hello");
    Pair {
        alice,
        bob,
        alice_addr,
        bob_addr,
    }
}

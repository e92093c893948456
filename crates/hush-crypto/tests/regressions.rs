//! Inputs found by fuzzing, kept as regression tests.

mod common;

use common::{addr, device, now, run};

/// `fuzz/fuzz_targets/crypto_open.rs` found a sealed message whose post-quantum ratchet (SPQR)
/// field makes libsignal's `spqr` crate compute `epoch - 1` with epoch 0, which panics when
/// overflow checks are on. `Device::open` must turn that into an error.
#[test]
fn open_survives_spqr_epoch_underflow() {
    // Same device setup as the fuzz target.
    let mut alice = device(1, 1);
    let mut bob = device(2, 1);
    let bundle = bob.fresh_bundle(now()).unwrap();
    run(alice.process_bundle(&addr("bob", 1), &bundle, now())).unwrap();
    let hello = run(alice.seal(&addr("bob", 1), b"hello", now())).unwrap();
    run(bob.open(&addr("alice", 1), &hello)).unwrap();

    let input = include_bytes!("data/open_spqr_epoch_underflow.bin");
    assert!(run(bob.open(&addr("alice", 1), input)).is_err());
    // The session still works afterwards.
    let next = run(alice.seal(&addr("bob", 1), b"still fine", now())).unwrap();
    assert_eq!(
        run(bob.open(&addr("alice", 1), &next)).unwrap(),
        b"still fine"
    );
}

//! Benchmarks: a whole call setup in crypto terms (sealed offer → sealed answer → both
//! MediaKeys) over an established Signal session, the bare key agreement without Signal, and a
//! PQXDH session setup from a bundle.
//!
//! Run: `cargo bench -p hush-crypto --bench call_setup`
#![allow(missing_docs)] // criterion_group! generates an undocumented function

use std::time::{Duration, Instant, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion};
use hush_crypto::rand::rngs::StdRng;
use hush_crypto::rand::SeedableRng;
use hush_crypto::signal::{DeviceId, IdentityKeyPair};
use hush_crypto::{
    complete_now, CallKeyExchange, Device, DeviceStore, MemoryBackend, ProtocolAddress,
};

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn addr(name: &str) -> ProtocolAddress {
    ProtocolAddress::new(name.into(), DeviceId::new(1).expect("valid id"))
}

fn device(seed: u64) -> Device<MemoryBackend> {
    let mut rng = StdRng::seed_from_u64(seed);
    let store = DeviceStore::create(MemoryBackend::new(), 1, &mut rng).expect("create");
    Device::with_rng(store, StdRng::seed_from_u64(seed ^ 0x5eed))
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    complete_now(f).expect("memory store futures are ready")
}

fn bench_call_setup(c: &mut Criterion) {
    let (a, b) = (addr("alice"), addr("bob"));
    let mut alice = device(1);
    let mut bob = device(2);
    let bundle = bob.fresh_bundle(now()).expect("bundle");
    run(alice.process_bundle(&b, &bundle, now())).expect("session");
    let hello = run(alice.seal(&b, b"hello", now())).expect("seal");
    run(bob.open(&a, &hello)).expect("open");
    let reply = run(bob.seal(&a, b"hi", now())).expect("seal");
    run(alice.open(&b, &reply)).expect("open");

    c.bench_function(
        "call setup: sealed offer -> sealed answer -> both MediaKeys",
        |bench| {
            bench.iter(|| {
                let (mut pending, sealed_offer) = run(alice.start_call(&b, now())).expect("offer");
                let incoming = run(bob.receive_offer(&a, &sealed_offer)).expect("receive");
                let (sealed_answer, bob_keys) =
                    run(bob.accept_call(&a, incoming, now())).expect("accept");
                let alice_keys =
                    run(alice.receive_answer(&b, &mut pending, &sealed_answer)).expect("finish");
                (alice_keys, bob_keys)
            })
        },
    );

    let mut rng = StdRng::seed_from_u64(3);
    let ida = *IdentityKeyPair::generate(&mut rng).identity_key();
    let idb = *IdentityKeyPair::generate(&mut rng).identity_key();
    let caller = CallKeyExchange::new(ida);
    let mut callee = CallKeyExchange::new(idb);
    c.bench_function(
        "call key agreement only (offer, accept, finish; no Signal)",
        |bench| {
            bench.iter(|| {
                let (mut pending, offer) = caller.offer(&idb, &mut rng);
                let (answer, callee_keys) = callee
                    .receive_offer(&offer, &ida)
                    .expect("receive")
                    .accept(&mut rng)
                    .expect("accept");
                (pending.finish(&answer).expect("finish"), callee_keys)
            })
        },
    );
}

fn bench_session_setup(c: &mut Criterion) {
    let b = addr("bob");
    let mut bob = device(10);
    let mut seed = 100u64;
    c.bench_function(
        "session setup from bundle (PQXDH initiator + first message opened)",
        |bench| {
            bench.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    seed += 1;
                    let mut alice = device(seed);
                    let a = addr(&format!("alice{seed}"));
                    let bundle = bob.fresh_bundle(now()).expect("bundle");
                    let start = Instant::now();
                    run(alice.process_bundle(&b, &bundle, now())).expect("session");
                    let first = run(alice.seal(&b, b"hello", now())).expect("seal");
                    run(bob.open(&a, &first)).expect("open");
                    total += start.elapsed();
                }
                total
            })
        },
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(4));
    targets = bench_call_setup, bench_session_setup
}
criterion_main!(benches);

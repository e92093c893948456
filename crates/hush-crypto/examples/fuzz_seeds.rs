//! Writes valid seed inputs for the hush-crypto fuzz targets.
//!
//! Run from the repository root: `cargo run -p hush-crypto --features fuzzing --example fuzz_seeds -- fuzz/corpus`
//! The devices come from `hush_crypto::fuzzing`, as in `fuzz/fuzz_targets/crypto_open.rs`, so
//! the sealed messages open on the fuzz target's device.

use std::path::Path;

use hush_crypto::fuzzing::{addr, alice_and_bob, device};
use hush_crypto::rand::rngs::StdRng;
use hush_crypto::rand::SeedableRng;
use hush_crypto::signal::IdentityKeyPair;
use hush_crypto::{complete_now, CallKeyExchange};

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).expect("mkdir");
    std::fs::write(d.join(name), bytes).expect("write seed");
}

fn main() {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus".into());
    let out = Path::new(&out);
    let now = hush_crypto::fuzzing::now();

    // Offer and answer.
    let mut rng = StdRng::seed_from_u64(1);
    let a = *IdentityKeyPair::generate(&mut rng).identity_key();
    let b = *IdentityKeyPair::generate(&mut rng).identity_key();
    let caller = CallKeyExchange::new(a);
    let mut callee = CallKeyExchange::new(b);
    let (_pending, offer) = caller.offer(&b, &mut rng);
    let (answer, _) = callee
        .receive_offer(&offer, &a)
        .expect("offer")
        .accept(&mut rng)
        .expect("accept");
    write(out, "crypto_offer_answer", "offer", &offer.encode());
    write(out, "crypto_offer_answer", "answer", &answer.encode());

    // Bundles.
    let mut carol = device(9);
    let mut upload = carol.prepare_upload(2, 1, now).expect("upload");
    write(
        out,
        "crypto_bundle",
        "upload",
        &upload.encode().expect("encode"),
    );
    write(
        out,
        "crypto_bundle",
        "peer_bundle",
        &upload.take_bundle().encode().expect("encode"),
    );
    write(out, "crypto_bundle", "peer_bundle_last_resort", &{
        upload.take_bundle();
        upload.take_bundle().encode().expect("encode")
    });

    // Sealed messages from Alice to Bob, as the crypto_open target's Bob sees them.
    let (mut alice, mut bob) = alice_and_bob();
    let prekey = complete_now(alice.seal(&addr("bob"), b"second", now))
        .expect("sync")
        .expect("seal");
    write(out, "crypto_open", "prekey_message", &prekey);
    let reply = complete_now(bob.seal(&addr("alice"), b"reply", now))
        .expect("sync")
        .expect("seal");
    complete_now(alice.open(&addr("bob"), &reply))
        .expect("sync")
        .expect("open");
    let (_pending, sealed_offer) = complete_now(alice.start_call(&addr("bob"), now))
        .expect("sync")
        .expect("call");
    write(out, "crypto_open", "whisper_offer", &sealed_offer);
    println!("seeds written under {}", out.display());
}

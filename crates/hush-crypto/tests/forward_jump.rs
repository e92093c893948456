//! A forged message with a counter far ahead of its chain is refused before libsignal derives
//! the skipped message keys (found by the `crypto_open` fuzz campaign: such a message cost
//! 30 s of CPU to refuse under AddressSanitizer). Legitimate gaps below the bound still decrypt.

mod common;

use common::{device, now, pair, run, Pair};
use hush_crypto::signal::{
    CiphertextMessage, KeyPair, KyberPayload, PreKeySignalMessage, PublicKey, SignalMessage,
};
use hush_crypto::{Error, MAX_SKIPPED_KEYS, SEALED_PREKEY, SEALED_WHISPER};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// Alice and Bob after one message each way, so Alice's next message is a whisper message.
fn talking_pair() -> Pair {
    let mut p = pair(40);
    let reply = run(p.bob.seal(&p.alice_addr, b"hi alice", now())).unwrap();
    assert_eq!(run(p.alice.open(&p.bob_addr, &reply)).unwrap(), b"hi alice");
    p
}

fn whisper(sealed: &[u8]) -> SignalMessage {
    assert_eq!(sealed[0], SEALED_WHISPER, "expected a whisper message");
    SignalMessage::try_from(&sealed[1..]).unwrap()
}

/// `m` re-made with another counter and ratchet key (its MAC is made with a wrong key, as a
/// forger without the chain key must).
fn forged(m: &SignalMessage, ratchet_key: PublicKey, counter: u32, p: &Pair) -> SignalMessage {
    SignalMessage::new(
        m.message_version(),
        &[0x42; 32],
        ratchet_key,
        counter,
        0,
        m.body(),
        p.alice.identity_key(),
        p.bob.identity_key(),
        m.pq_ratchet(),
    )
    .unwrap()
}

fn sealed_whisper(m: &SignalMessage) -> Vec<u8> {
    let mut out = vec![SEALED_WHISPER];
    out.extend_from_slice(m.serialized());
    out
}

fn assert_too_far(result: hush_crypto::Result<Vec<u8>>, at_least: u32) {
    match result {
        Err(Error::TooFarAhead { skipped, .. }) => {
            assert!(skipped >= at_least, "skipped {skipped} < {at_least}")
        }
        other => panic!("expected TooFarAhead, got {other:?}"),
    }
}

#[test]
fn forged_counter_far_ahead_on_a_known_chain_is_refused_unread() {
    let mut p = talking_pair();
    let genuine = whisper(&run(p.alice.seal(&p.bob_addr, b"one", now())).unwrap());
    let far = genuine.counter() + MAX_SKIPPED_KEYS + 1;
    let attack = forged(&genuine, *genuine.sender_ratchet_key(), far, &p);
    assert_too_far(
        run(p.bob.open(&p.alice_addr, &sealed_whisper(&attack))),
        MAX_SKIPPED_KEYS + 1,
    );
    // Nothing moved: the genuine message still opens, and so does the next one.
    assert_eq!(
        run(p.bob.open(&p.alice_addr, &sealed_whisper(&genuine))).unwrap(),
        b"one"
    );
    let next = run(p.alice.seal(&p.bob_addr, b"two", now())).unwrap();
    assert_eq!(run(p.bob.open(&p.alice_addr, &next)).unwrap(), b"two");
}

#[test]
fn forged_counter_on_a_new_ratchet_key_is_measured_from_zero() {
    let mut p = talking_pair();
    let genuine = whisper(&run(p.alice.seal(&p.bob_addr, b"one", now())).unwrap());
    let mut rng = StdRng::seed_from_u64(7);
    let stranger = KeyPair::generate(&mut rng).public_key;
    // The fuzzer's input had counter 13,489 on a chain Bob had never seen.
    let attack = forged(&genuine, stranger, 13_489, &p);
    assert_too_far(
        run(p.bob.open(&p.alice_addr, &sealed_whisper(&attack))),
        13_489,
    );
    // Just within the bound, a forgery on a new chain goes to libsignal, which refuses it on
    // its MAC (after deriving at most MAX_SKIPPED_KEYS keys).
    let within = forged(&genuine, stranger, MAX_SKIPPED_KEYS, &p);
    match run(p.bob.open(&p.alice_addr, &sealed_whisper(&within))) {
        Err(Error::TooFarAhead { .. }) => panic!("a jump within the bound was refused early"),
        Err(_) => {}
        Ok(_) => panic!("a forged message decrypted"),
    }
    assert_eq!(
        run(p.bob.open(&p.alice_addr, &sealed_whisper(&genuine))).unwrap(),
        b"one"
    );
}

#[test]
fn forged_prekey_message_with_a_far_counter_is_refused() {
    // Bob has no session yet: a prekey message starts one, from counter 0.
    let mut alice = device(50, 1);
    let mut bob = device(51, 1);
    let bob_addr = common::addr("bob", 1);
    let alice_addr = common::addr("alice", 1);
    let bundle = bob.fresh_bundle(now()).unwrap();
    run(alice.process_bundle(&bob_addr, &bundle, now())).unwrap();
    let hello = run(alice.seal(&bob_addr, b"hello", now())).unwrap();
    assert_eq!(hello[0], SEALED_PREKEY);
    let genuine = PreKeySignalMessage::try_from(&hello[1..]).unwrap();
    let inner = genuine.message();
    let far_inner = SignalMessage::new(
        inner.message_version(),
        &[0x42; 32],
        *inner.sender_ratchet_key(),
        20_000,
        0,
        inner.body(),
        alice.identity_key(),
        bob.identity_key(),
        inner.pq_ratchet(),
    )
    .unwrap();
    let kyber = match (genuine.kyber_pre_key_id(), genuine.kyber_ciphertext()) {
        (Some(id), Some(ct)) => Some(KyberPayload::new(id, ct.clone())),
        _ => None,
    };
    let attack = PreKeySignalMessage::new(
        genuine.message_version(),
        genuine.registration_id(),
        genuine.pre_key_id(),
        genuine.signed_pre_key_id(),
        kyber,
        *genuine.base_key(),
        *genuine.identity_key(),
        far_inner,
    )
    .unwrap();
    let mut sealed = vec![SEALED_PREKEY];
    sealed.extend_from_slice(CiphertextMessage::PreKeySignalMessage(attack).serialize());
    assert_too_far(run(bob.open(&alice_addr, &sealed)), 20_000);
    // The genuine first message still starts the session.
    assert_eq!(run(bob.open(&alice_addr, &hello)).unwrap(), b"hello");
}

#[test]
fn a_genuine_gap_within_the_bound_decrypts_and_one_beyond_recovers_after_a_reply() {
    let mut p = talking_pair();
    // 40 messages lost: the 41st opens, and the lost ones still open out of order.
    let lost: Vec<Vec<u8>> = (0..40)
        .map(|i| run(p.alice.seal(&p.bob_addr, format!("m{i}").as_bytes(), now())).unwrap())
        .collect();
    let after = run(p.alice.seal(&p.bob_addr, b"after the gap", now())).unwrap();
    assert_eq!(
        run(p.bob.open(&p.alice_addr, &after)).unwrap(),
        b"after the gap"
    );
    assert_eq!(run(p.bob.open(&p.alice_addr, &lost[7])).unwrap(), b"m7");

    // More than MAX_SKIPPED_KEYS lost in one chain: the next message is refused...
    for _ in 0..=MAX_SKIPPED_KEYS {
        run(p.alice.seal(&p.bob_addr, b"lost", now())).unwrap();
    }
    let beyond = run(p.alice.seal(&p.bob_addr, b"beyond", now())).unwrap();
    assert_too_far(
        run(p.bob.open(&p.alice_addr, &beyond)),
        MAX_SKIPPED_KEYS + 1,
    );
    // ...and once Bob writes and Alice reads it, Alice's next chain starts from 0 again.
    let reply = run(p.bob.seal(&p.alice_addr, b"are you there?", now())).unwrap();
    assert_eq!(
        run(p.alice.open(&p.bob_addr, &reply)).unwrap(),
        b"are you there?"
    );
    let fresh = run(p.alice.seal(&p.bob_addr, b"yes", now())).unwrap();
    assert_eq!(run(p.bob.open(&p.alice_addr, &fresh)).unwrap(), b"yes");
}

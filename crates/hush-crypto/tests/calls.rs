//! Per-call key agreement: mirrored keys into hush-srtp, freshness, tampering, downgrade,
//! replay, identity binding, epochs, redaction.

mod common;

use common::{now, pair, run};
use hush_crypto::signal::IdentityKeyPair;
use hush_crypto::{Answer, CallKeyExchange, Error, MediaKeys, Offer, SecretBytes, Side, Suite};
use hush_srtp::SrtpContext;
use rand::rngs::StdRng;
use rand::SeedableRng;

fn rtp(seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, 96];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x10, 0x00, 0xde, 0xad, 0xbe, 0xef]);
    p.extend_from_slice(payload);
    p
}

/// Sends one RTP packet from `from` to `to` through hush-srtp; true if it authenticated and
/// came out unchanged.
fn media_flows(from: &MediaKeys, to: &MediaKeys, seq: u16) -> bool {
    let mut tx = SrtpContext::new(from.suite, &from.send_key, &from.send_salt).unwrap();
    let Ok(mut rx) = SrtpContext::new(to.suite, &to.recv_key, &to.recv_salt) else {
        return false;
    };
    let plain = rtp(seq, b"twenty ms of opus audio");
    let mut pkt = plain.clone();
    tx.protect_rtp(&mut pkt).unwrap();
    assert!(
        !pkt.windows(8).any(|w| w == b"twenty m"),
        "payload is encrypted"
    );
    rx.unprotect_rtp(&mut pkt).is_ok() && pkt == plain
}

fn setup(seed: u64) -> (CallKeyExchange, CallKeyExchange, StdRng) {
    let mut rng = StdRng::seed_from_u64(seed);
    let a = *IdentityKeyPair::generate(&mut rng).identity_key();
    let b = *IdentityKeyPair::generate(&mut rng).identity_key();
    (CallKeyExchange::new(a), CallKeyExchange::new(b), rng)
}

fn full_call(
    caller: &CallKeyExchange,
    callee: &mut CallKeyExchange,
    rng: &mut StdRng,
) -> (MediaKeys, MediaKeys) {
    let callee_id = *callee.local_identity();
    let (mut pending, offer) = caller.offer(&callee_id, rng);
    let incoming = callee
        .receive_offer(&offer, caller.local_identity())
        .unwrap();
    let (answer, callee_keys) = incoming.accept(rng).unwrap();
    (pending.finish(&answer).unwrap(), callee_keys)
}

#[test]
fn sealed_call_setup_feeds_srtp_both_ways() {
    let mut p = pair(1);
    let (mut pending, sealed_offer) = run(p.alice.start_call(&p.bob_addr, now())).unwrap();
    let incoming = run(p.bob.receive_offer(&p.alice_addr, &sealed_offer)).unwrap();
    assert_eq!(incoming.call_id(), pending.call_id());
    assert_eq!(incoming.suite(), Suite::AeadAes256Gcm);
    let (sealed_answer, bob_keys) = run(p.bob.accept_call(&p.alice_addr, incoming, now())).unwrap();
    let alice_keys = run(p
        .alice
        .receive_answer(&p.bob_addr, &mut pending, &sealed_answer))
    .unwrap();
    assert_eq!(
        (alice_keys.side(), bob_keys.side()),
        (Side::Caller, Side::Callee)
    );
    assert!(media_flows(&alice_keys, &bob_keys, 1));
    assert!(media_flows(&bob_keys, &alice_keys, 2));
    // A device's own send key does not open its own packets (directions differ).
    assert!(!media_flows(&alice_keys, &alice_keys, 3));
}

#[test]
fn aes128_suite_also_works() {
    let (caller, _, mut rng) = setup(2);
    let caller =
        CallKeyExchange::with_suites(*caller.local_identity(), &[Suite::AeadAes128Gcm]).unwrap();
    let mut callee = CallKeyExchange::with_suites(
        *IdentityKeyPair::generate(&mut rng).identity_key(),
        &[Suite::AeadAes128Gcm, Suite::AeadAes256Gcm],
    )
    .unwrap();
    let (a, b) = full_call(&caller, &mut callee, &mut rng);
    assert_eq!(a.suite, Suite::AeadAes128Gcm);
    assert_eq!(a.send_key.len(), 16);
    assert!(media_flows(&a, &b, 1) && media_flows(&b, &a, 1));
}

#[test]
fn every_call_gets_fresh_keys() {
    let (caller, mut callee, mut rng) = setup(3);
    let (a1, b1) = full_call(&caller, &mut callee, &mut rng);
    let (a2, b2) = full_call(&caller, &mut callee, &mut rng);
    assert_ne!(a1.call_id(), a2.call_id());
    assert_ne!(a1.send_key, a2.send_key);
    assert_ne!(a1.recv_key, a2.recv_key);
    assert_ne!(a1.send_salt, a2.send_salt);
    assert!(
        !media_flows(&a1, &b2, 1),
        "keys of one call do not open another call's media"
    );
    assert!(media_flows(&a2, &b2, 1) && media_flows(&b1, &a1, 1));
}

#[test]
fn no_common_suite_is_refused() {
    let (caller, callee, mut rng) = setup(4);
    let caller =
        CallKeyExchange::with_suites(*caller.local_identity(), &[Suite::AeadAes128Gcm]).unwrap();
    let mut callee =
        CallKeyExchange::with_suites(*callee.local_identity(), &[Suite::AeadAes256Gcm]).unwrap();
    let (_, offer) = caller.offer(callee.local_identity(), &mut rng);
    assert!(matches!(
        callee.receive_offer(&offer, caller.local_identity()),
        Err(Error::NoCommonSuite)
    ));
}

/// Byte offsets in the encodings (see the payload module docs).
const OFFER_CALL_ID: usize = 2;
const OFFER_EPHEMERAL: usize = 18;
const OFFER_SUITES: usize = 51;
const ANSWER_EPHEMERAL: usize = 18;
const ANSWER_SUITE: usize = 50;
const ANSWER_CONFIRM: usize = 52;

#[test]
fn tampering_any_offer_field_fails_the_call() {
    // One byte flipped in each field of the offer between caller and callee (an attacker who
    // could get through the Signal layer): the call never completes with keys.
    for (what, pos) in [
        ("call id", OFFER_CALL_ID + 3),
        ("ephemeral", OFFER_EPHEMERAL + 7),
        ("suite", OFFER_SUITES + 1),
    ] {
        let (caller, mut callee, mut rng) = setup(5);
        let (mut pending, offer) = caller.offer(callee.local_identity(), &mut rng);
        let mut bytes = offer.encode();
        bytes[pos] ^= 0x01;
        let Ok(tampered) = Offer::decode(&bytes) else {
            continue;
        };
        // Refused at the callee is fine too.
        let Ok(incoming) = callee.receive_offer(&tampered, caller.local_identity()) else {
            continue;
        };
        let Ok((answer, _callee_keys)) = incoming.accept(&mut rng) else {
            continue;
        };
        let r = pending.finish(&answer);
        assert!(r.is_err(), "tampered offer {what} must not yield keys");
    }
}

#[test]
fn tampering_any_answer_field_fails_the_call() {
    for (what, pos, expect) in [
        ("call id", OFFER_CALL_ID + 5, "CallIdMismatch"),
        ("ephemeral", ANSWER_EPHEMERAL + 9, "KeyConfirmationFailed"),
        ("suite", ANSWER_SUITE + 1, "SuiteNotOffered"),
        ("confirm", ANSWER_CONFIRM + 31, "KeyConfirmationFailed"),
    ] {
        let (caller, mut callee, mut rng) = setup(6);
        let (mut pending, offer) = caller.offer(callee.local_identity(), &mut rng);
        let incoming = callee
            .receive_offer(&offer, caller.local_identity())
            .unwrap();
        let (answer, _) = incoming.accept(&mut rng).unwrap();
        let mut bytes = answer.encode();
        bytes[pos] ^= 0x01;
        let tampered = Answer::decode(&bytes).unwrap();
        let err = pending.finish(&tampered).unwrap_err();
        let name = format!("{err:?}");
        // A flipped ephemeral bit may also land on a low-order point; both are refusals.
        assert!(
            name.starts_with(expect)
                || (what == "ephemeral" && name.starts_with("NonContributory")),
            "answer {what}: got {name}"
        );
    }
}

#[test]
fn suite_downgrade_by_a_man_in_the_middle_is_detected() {
    let (caller, mut callee, mut rng) = setup(7);
    let (mut pending, offer) = caller.offer(callee.local_identity(), &mut rng);
    assert_eq!(offer.suite_codes(), &[0x0008, 0x0007]);
    // The attacker strips AES-256 from the list so that the callee picks AES-128.
    let mut bytes = offer.encode();
    bytes.truncate(OFFER_SUITES - 1);
    bytes.push(1);
    bytes.extend_from_slice(&0x0007u16.to_be_bytes());
    let stripped = Offer::decode(&bytes).unwrap();
    let incoming = callee
        .receive_offer(&stripped, caller.local_identity())
        .unwrap();
    assert_eq!(incoming.suite(), Suite::AeadAes128Gcm);
    let (answer, callee_keys) = incoming.accept(&mut rng).unwrap();
    // The chosen suite was offered, but the transcripts differ: the caller refuses.
    assert!(matches!(
        pending.finish(&answer),
        Err(Error::KeyConfirmationFailed)
    ));
    assert_eq!(callee_keys.suite, Suite::AeadAes128Gcm);

    // Rewriting only the answer's suite to a weaker offered one is refused as well.
    let (caller, mut callee, mut rng) = setup(8);
    let (mut pending, offer) = caller.offer(callee.local_identity(), &mut rng);
    let (answer, _) = callee
        .receive_offer(&offer, caller.local_identity())
        .unwrap()
        .accept(&mut rng)
        .unwrap();
    let mut bytes = answer.encode();
    bytes[ANSWER_SUITE..ANSWER_SUITE + 2].copy_from_slice(&0x0007u16.to_be_bytes());
    assert!(matches!(
        pending.finish(&Answer::decode(&bytes).unwrap()),
        Err(Error::KeyConfirmationFailed)
    ));
}

#[test]
fn replayed_offer_and_answer_are_rejected() {
    let (caller, mut callee, mut rng) = setup(9);
    let (mut pending1, offer1) = caller.offer(callee.local_identity(), &mut rng);
    let (answer1, _) = callee
        .receive_offer(&offer1, caller.local_identity())
        .unwrap()
        .accept(&mut rng)
        .unwrap();
    pending1.finish(&answer1).unwrap();
    // The same offer again (replay): refused before ringing.
    assert!(matches!(
        callee.receive_offer(&offer1, caller.local_identity()),
        Err(Error::ReplayedOffer)
    ));
    // A finished offer takes no second answer.
    assert!(matches!(
        pending1.finish(&answer1),
        Err(Error::AlreadyFinished)
    ));

    // An old answer replayed into a new call: wrong call id.
    let (mut pending2, offer2) = caller.offer(callee.local_identity(), &mut rng);
    assert!(matches!(
        pending2.finish(&answer1),
        Err(Error::CallIdMismatch)
    ));
    // ... and with its call id rewritten to the new call: the transcript gives it away.
    let mut bytes = answer1.encode();
    bytes[OFFER_CALL_ID..OFFER_CALL_ID + 16].copy_from_slice(pending2.call_id().as_bytes());
    let forged = Answer::decode(&bytes).unwrap();
    // The refusals above left the pending call intact for its real answer.
    assert!(!pending2.is_finished());
    assert!(matches!(
        pending2.finish(&forged),
        Err(Error::KeyConfirmationFailed)
    ));

    // The real answer for a fresh call still works after such attempts on another call.
    let (mut pending3, offer3) = caller.offer(callee.local_identity(), &mut rng);
    let stale = offer2; // never answered
    let (answer3, k3) = callee
        .receive_offer(&offer3, caller.local_identity())
        .unwrap()
        .accept(&mut rng)
        .unwrap();
    assert!(matches!(
        pending3.finish(&answer1),
        Err(Error::CallIdMismatch)
    ));
    let k3c = pending3.finish(&answer3).unwrap();
    assert!(media_flows(&k3c, &k3, 1));
    let _ = stale;
}

#[test]
fn keys_are_bound_to_both_identities() {
    let (caller, mut callee, mut rng) = setup(10);
    let (mut pending, offer) = caller.offer(callee.local_identity(), &mut rng);
    // The callee believes the offer came from someone else (e.g. a changed identity).
    let impostor = *IdentityKeyPair::generate(&mut rng).identity_key();
    let (answer, _) = callee
        .receive_offer(&offer, &impostor)
        .unwrap()
        .accept(&mut rng)
        .unwrap();
    assert!(matches!(
        pending.finish(&answer),
        Err(Error::KeyConfirmationFailed)
    ));

    // The caller addressed a different callee identity than the one answering.
    let (caller, mut callee, mut rng) = setup(11);
    let wrong = *IdentityKeyPair::generate(&mut rng).identity_key();
    let (mut pending, offer) = caller.offer(&wrong, &mut rng);
    let (answer, _) = callee
        .receive_offer(&offer, caller.local_identity())
        .unwrap()
        .accept(&mut rng)
        .unwrap();
    assert!(matches!(
        pending.finish(&answer),
        Err(Error::KeyConfirmationFailed)
    ));
}

#[test]
fn low_order_ephemerals_are_refused() {
    let (caller, mut callee, mut rng) = setup(12);
    let (_, offer) = caller.offer(callee.local_identity(), &mut rng);
    let mut bytes = offer.encode();
    bytes[OFFER_EPHEMERAL..OFFER_EPHEMERAL + 32].copy_from_slice(&[0u8; 32]);
    let bad = Offer::decode(&bytes).unwrap();
    assert!(matches!(
        callee.receive_offer(&bad, caller.local_identity()),
        Err(Error::NonContributory)
    ));

    let (caller, mut callee, mut rng) = setup(13);
    let (mut pending, offer) = caller.offer(callee.local_identity(), &mut rng);
    let (answer, _) = callee
        .receive_offer(&offer, caller.local_identity())
        .unwrap()
        .accept(&mut rng)
        .unwrap();
    let mut bytes = answer.encode();
    let mut one = [0u8; 32];
    one[0] = 1;
    bytes[ANSWER_EPHEMERAL..ANSWER_EPHEMERAL + 32].copy_from_slice(&one);
    assert!(matches!(
        pending.finish(&Answer::decode(&bytes).unwrap()),
        Err(Error::NonContributory)
    ));
}

#[test]
fn reflected_ephemeral_is_refused() {
    let (caller, mut callee, mut rng) = setup(14);
    let (mut pending, offer) = caller.offer(callee.local_identity(), &mut rng);
    let (answer, _) = callee
        .receive_offer(&offer, caller.local_identity())
        .unwrap()
        .accept(&mut rng)
        .unwrap();
    let mut bytes = answer.encode();
    bytes[ANSWER_EPHEMERAL..ANSWER_EPHEMERAL + 32].copy_from_slice(offer.caller_ephemeral());
    assert!(matches!(
        pending.finish(&Answer::decode(&bytes).unwrap()),
        Err(Error::ReflectedEphemeral)
    ));
}

#[test]
fn epochs_ratchet_one_way_and_stay_mirrored() {
    let (caller, mut callee, mut rng) = setup(15);
    let (mut a, mut b) = full_call(&caller, &mut callee, &mut rng);
    let old_send = a.send_key.clone();
    a.next_epoch().unwrap();
    assert!(
        !media_flows(&a, &b, 1),
        "a side that did not rekey cannot read the new epoch"
    );
    b.next_epoch().unwrap();
    assert_eq!((a.epoch(), b.epoch()), (1, 1));
    assert_ne!(a.send_key, old_send);
    assert!(media_flows(&a, &b, 2) && media_flows(&b, &a, 2));
    for _ in 0..5 {
        a.next_epoch().unwrap();
        b.next_epoch().unwrap();
    }
    assert!(media_flows(&a, &b, 3) && media_flows(&b, &a, 3));
}

#[test]
fn debug_output_redacts_secrets() {
    let (caller, mut callee, mut rng) = setup(16);
    let (a, _) = full_call(&caller, &mut callee, &mut rng);
    let dbg = format!("{a:?} {:?} {:?}", a.send_key, a.recv_salt);
    for secret in [&a.send_key, &a.send_salt, &a.recv_key, &a.recv_salt] {
        assert!(!dbg.contains(&hex::encode(secret.expose())));
        assert!(!dbg.contains(&format!("{:?}", secret.expose())));
    }
    assert!(dbg.contains("redacted"));
}

#[test]
fn secrets_zeroize() {
    fn zeroize_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    zeroize_on_drop::<SecretBytes>();
    let (caller, mut callee, mut rng) = setup(17);
    let (a, _) = full_call(&caller, &mut callee, &mut rng);
    let mut k = a.send_key.clone();
    assert!(k.iter().any(|b| *b != 0));
    zeroize::Zeroize::zeroize(&mut k);
    assert!(k.is_empty() || k.iter().all(|b| *b == 0));
}

#[test]
fn offer_and_answer_parsers_reject_garbage() {
    let (caller, mut callee, mut rng) = setup(18);
    let (_, offer) = caller.offer(callee.local_identity(), &mut rng);
    let (answer, _) = callee
        .receive_offer(&offer, caller.local_identity())
        .unwrap()
        .accept(&mut rng)
        .unwrap();
    let (o, a) = (offer.encode(), answer.encode());
    assert_eq!(Offer::decode(&o).unwrap(), offer);
    assert_eq!(Answer::decode(&a).unwrap(), answer);
    for n in 0..o.len() {
        assert!(Offer::decode(&o[..n]).is_err());
    }
    for n in 0..a.len() {
        assert!(Answer::decode(&a[..n]).is_err());
    }
    let mut long = o.clone();
    long.push(0);
    assert!(Offer::decode(&long).is_err(), "trailing byte");
    assert!(
        Offer::decode(&a).is_err() && Answer::decode(&o).is_err(),
        "type confusion"
    );
    let mut v2 = o.clone();
    v2[1] = 2;
    assert!(matches!(
        Offer::decode(&v2),
        Err(Error::UnsupportedVersion { version: 2, .. })
    ));
    let mut dup = o[..OFFER_SUITES - 1].to_vec();
    dup.extend_from_slice(&[2, 0, 8, 0, 8]);
    assert!(Offer::decode(&dup).is_err(), "duplicate suite");
    let mut none = o[..OFFER_SUITES - 1].to_vec();
    none.push(0);
    assert!(Offer::decode(&none).is_err(), "empty suite list");
}

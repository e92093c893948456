use libsignal_protocol::IdentityKeyPair;
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::*;

fn ids(seed: u64) -> (IdentityKey, IdentityKey, StdRng) {
    let mut rng = StdRng::seed_from_u64(seed);
    let a = *IdentityKeyPair::generate(&mut rng).identity_key();
    let b = *IdentityKeyPair::generate(&mut rng).identity_key();
    (a, b, rng)
}

#[test]
fn both_sides_get_mirrored_keys() {
    let (alice, bob, mut rng) = ids(1);
    let caller = CallKeyExchange::new(alice);
    let mut callee = CallKeyExchange::new(bob);
    let (mut pending, offer) = caller.offer(&bob, &mut rng);
    let offer = Offer::decode(&offer.encode()).unwrap();
    let incoming = callee.receive_offer(&offer, &alice).unwrap();
    let (answer, callee_keys) = incoming.accept(&mut rng).unwrap();
    let answer = Answer::decode(&answer.encode()).unwrap();
    let caller_keys = pending.finish(&answer).unwrap();
    assert_eq!(caller_keys.suite, Suite::AeadAes256Gcm);
    assert_eq!(caller_keys.send_key.len(), 32);
    assert_eq!(caller_keys.send_salt.len(), 12);
    assert_eq!(caller_keys.send_key, callee_keys.recv_key);
    assert_eq!(caller_keys.send_salt, callee_keys.recv_salt);
    assert_eq!(caller_keys.recv_key, callee_keys.send_key);
    assert_eq!(caller_keys.recv_salt, callee_keys.send_salt);
    assert_ne!(
        caller_keys.send_key, caller_keys.recv_key,
        "directions differ"
    );
    assert_ne!(caller_keys.send_salt, caller_keys.recv_salt);
}

#[test]
fn low_order_points_are_detected() {
    // The all-zero point, the point of order 1 (u = 1), and a point of order 8.
    let order8 =
        hex::decode("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800").unwrap();
    for p in [
        [0u8; 32],
        {
            let mut one = [0u8; 32];
            one[0] = 1;
            one
        },
        <[u8; 32]>::try_from(order8.as_slice()).unwrap(),
    ] {
        assert!(is_low_order(&p));
    }
    let (_, _, mut rng) = ids(2);
    let mut seed = Zeroizing::new([0u8; 32]);
    rand::RngCore::fill_bytes(&mut rng, seed.as_mut());
    let public = X25519Public::from(&ephemeral_from_seed(&seed)).to_bytes();
    assert!(!is_low_order(&public));
}

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

fn seed(s: &str) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(h(s).try_into().unwrap())
}

/// The vector in docs/crypto.md, produced by `tools/call_kdf_vector.py` (an independent
/// implementation on python-cryptography + hmac).
#[test]
fn test_vector_matches_independent_implementation() {
    let caller_id = IdentityKey::decode(&h(
        "05f0b4fd8be480349293ab61f0505ebb5bafccdf8a4127de221e6ef3db20e03d29",
    ))
    .unwrap();
    let callee_id = IdentityKey::decode(&h(
        "0580e1a53d3eee82b62b3048578cf38c980ddd1131243a1047fe48482942d6b648",
    ))
    .unwrap();
    let call_id = CallId::from_bytes(h("000102030405060708090a0b0c0d0e0f").try_into().unwrap());
    let caller = CallKeyExchange::new(caller_id);
    let mut callee = CallKeyExchange::new(callee_id);
    let (mut pending, offer) = caller.offer_from_parts(
        &callee_id,
        call_id,
        &seed("202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"),
    );
    assert_eq!(
        offer.caller_ephemeral().to_vec(),
        h("358072d6365880d1aeea329adf9121383851ed21a28e3b75e965d0d2cd166254")
    );
    assert_eq!(offer.suite_codes(), &[0x0008, 0x0007]);
    let incoming = callee.receive_offer(&offer, &caller_id).unwrap();
    let (answer, callee_keys) = incoming
        .accept_with_seed(&seed(
            "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f",
        ))
        .unwrap();
    assert_eq!(
        answer.callee_ephemeral().to_vec(),
        h("79a631eede1bf9c98f12032cdeadd0e7a079398fc786b88cc846ec89af85a51a")
    );
    assert_eq!(answer.suite_code(), 0x0008);
    assert_eq!(
        answer.confirm.to_vec(),
        h("ba30dcf38e6cc098f5307ac1f5345d3de8998fe3aa7663c009102c0479a1b7e1")
    );
    let mut caller_keys = pending.finish(&answer).unwrap();
    let mut callee_keys = callee_keys;

    let c2e_key = h("78a698b283acc1f5e6f26a39b234111eb11cb15dd635f9242f1f7d0b8a09ffb6");
    let c2e_salt = h("674d7e31fad3140831e8c48e");
    let e2c_key = h("09c8a122f705d65932ac6d84eca33b08298f9e4064d598e71f99784db0575e1c");
    let e2c_salt = h("b26b3d02a58839861618cd6b");
    assert_eq!(caller_keys.suite, Suite::AeadAes256Gcm);
    assert_eq!(caller_keys.send_key.expose(), c2e_key.as_slice());
    assert_eq!(caller_keys.send_salt.expose(), c2e_salt.as_slice());
    assert_eq!(caller_keys.recv_key.expose(), e2c_key.as_slice());
    assert_eq!(caller_keys.recv_salt.expose(), e2c_salt.as_slice());
    assert_eq!(callee_keys.send_key.expose(), e2c_key.as_slice());
    assert_eq!(callee_keys.recv_key.expose(), c2e_key.as_slice());

    caller_keys.next_epoch().unwrap();
    callee_keys.next_epoch().unwrap();
    assert_eq!(caller_keys.epoch(), 1);
    let k1 = h("638a95fd4c7e580b9e2dced6ee31ddc4751af664413ce31109eda597813f3a05");
    assert_eq!(caller_keys.send_key.expose(), k1.as_slice());
    assert_eq!(
        caller_keys.send_salt.expose(),
        h("f8a28fe6cc6ebace3c324a9a").as_slice()
    );
    assert_eq!(
        caller_keys.recv_key.expose(),
        h("7849cd6094e7270269fedb360f0bff47b64c275b41e93e08eb952a2a38ee33d0").as_slice()
    );
    assert_eq!(callee_keys.recv_key.expose(), k1.as_slice());
    assert_eq!(
        callee_keys.send_salt.expose(),
        h("22301d21d8a590a5b899ad34").as_slice()
    );
}

#[test]
fn transcript_encoding_matches_the_spec() {
    let caller_id = h("05f0b4fd8be480349293ab61f0505ebb5bafccdf8a4127de221e6ef3db20e03d29");
    let callee_id = h("0580e1a53d3eee82b62b3048578cf38c980ddd1131243a1047fe48482942d6b648");
    let call_id = CallId::from_bytes(h("000102030405060708090a0b0c0d0e0f").try_into().unwrap());
    let t = Transcript {
        version: 1,
        call_id: &call_id,
        caller_identity: &caller_id,
        callee_identity: &callee_id,
        caller_ephemeral: &h("358072d6365880d1aeea329adf9121383851ed21a28e3b75e965d0d2cd166254")
            .try_into()
            .unwrap(),
        callee_ephemeral: &h("79a631eede1bf9c98f12032cdeadd0e7a079398fc786b88cc846ec89af85a51a")
            .try_into()
            .unwrap(),
        offered_suites: &[0x0008, 0x0007],
        chosen_suite: 0x0008,
    };
    assert_eq!(
        hex::encode(t.encode().unwrap()),
        "485553482d43414c4c01000102030405060708090a0b0c0d0e0f05f0b4fd8be480349293ab61f0505ebb5bafccdf8a4127de221e6ef3db20e03d290580e1a53d3eee82b62b3048578cf38c980ddd1131243a1047fe48482942d6b648358072d6365880d1aeea329adf9121383851ed21a28e3b75e965d0d2cd16625479a631eede1bf9c98f12032cdeadd0e7a079398fc786b88cc846ec89af85a51a02000800070008"
    );
    let shared: [u8; 32] = h("04c304fb1ca83cee75e206344231f33797e07d9929db670994b7c6fbeb1dc255")
        .try_into()
        .unwrap();
    assert_eq!(
        hex::encode(t.epoch0_secret(&shared).unwrap().as_slice()),
        "76ef9286558a229159c9924a864df4c984c1306792bea5b2312a6696fc59d4d1"
    );
}

#[test]
fn seen_set_is_bounded() {
    let (alice, bob, mut rng) = ids(3);
    let caller = CallKeyExchange::new(alice);
    let mut callee = CallKeyExchange::new(bob).with_seen_capacity(2);
    let offers: Vec<Offer> = (0..3).map(|_| caller.offer(&bob, &mut rng).1).collect();
    for o in &offers {
        callee.receive_offer(o, &alice).unwrap();
    }
    assert!(!callee.has_seen(&offers[0].call_id()), "oldest evicted");
    assert!(callee.has_seen(&offers[1].call_id()) && callee.has_seen(&offers[2].call_id()));
    assert!(matches!(
        callee.receive_offer(&offers[2], &alice),
        Err(Error::ReplayedOffer)
    ));
    assert_eq!(callee.seen.order.len(), 2);
    assert_eq!(callee.seen.set.len(), 2);
}

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
    assert_ne!(caller_keys.send_key, caller_keys.recv_key, "directions differ");
    assert_ne!(caller_keys.send_salt, caller_keys.recv_salt);
}

#[test]
fn low_order_points_are_detected() {
    // The all-zero point, the point of order 1 (u = 1), and a point of order 8.
    let order8 =
        hex::decode("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800").unwrap();
    for p in [[0u8; 32], {
        let mut one = [0u8; 32];
        one[0] = 1;
        one
    }, <[u8; 32]>::try_from(order8.as_slice()).unwrap()]
    {
        assert!(is_low_order(&p));
    }
    let (_, _, mut rng) = ids(2);
    let mut seed = Zeroizing::new([0u8; 32]);
    rand::RngCore::fill_bytes(&mut rng, seed.as_mut());
    let public = X25519Public::from(&ephemeral_from_seed(&seed)).to_bytes();
    assert!(!is_low_order(&public));
}

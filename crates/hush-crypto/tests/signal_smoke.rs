//! Smoke test of the official Signal library as hush builds it: two identities, a PQXDH session
//! from a prekey bundle (with a Kyber prekey), and one message each way.

use std::time::SystemTime;

use futures_util::FutureExt;
use hush_crypto::signal::*;
use rand::{rngs::OsRng, Rng, TryRngCore};

fn run<F: std::future::Future>(f: F) -> F::Output {
    // The in-memory stores never suspend, so the future completes on its first poll.
    f.now_or_never()
        .expect("in-memory store futures complete immediately")
}

fn bundle_for(store: &mut InMemSignalProtocolStore, device: u8) -> PreKeyBundle {
    let mut rng = OsRng.unwrap_err();
    let identity = run(store.get_identity_key_pair()).unwrap();
    let pre_key = KeyPair::generate(&mut rng);
    let signed = KeyPair::generate(&mut rng);
    let kyber = kem::KeyPair::generate(kem::KeyType::Kyber1024, &mut rng);
    let signed_sig = identity
        .private_key()
        .calculate_signature(&signed.public_key.serialize(), &mut rng)
        .unwrap();
    let kyber_sig = identity
        .private_key()
        .calculate_signature(&kyber.public_key.serialize(), &mut rng)
        .unwrap();
    let (pk_id, spk_id, kpk_id) = (
        PreKeyId::from(1),
        SignedPreKeyId::from(2),
        KyberPreKeyId::from(3),
    );
    run(store.save_pre_key(pk_id, &PreKeyRecord::new(pk_id, &pre_key))).unwrap();
    run(store.save_signed_pre_key(
        spk_id,
        &SignedPreKeyRecord::new(
            spk_id,
            Timestamp::from_epoch_millis(1),
            &signed,
            &signed_sig,
        ),
    ))
    .unwrap();
    run(store.save_kyber_pre_key(
        kpk_id,
        &KyberPreKeyRecord::new(kpk_id, Timestamp::from_epoch_millis(1), &kyber, &kyber_sig),
    ))
    .unwrap();
    PreKeyBundle::new(
        run(store.get_local_registration_id()).unwrap(),
        DeviceId::new(device).unwrap(),
        Some((pk_id, pre_key.public_key)),
        spk_id,
        signed.public_key,
        signed_sig.to_vec(),
        kpk_id,
        kyber.public_key.clone(),
        kyber_sig.to_vec(),
        *identity.identity_key(),
    )
    .unwrap()
}

#[test]
fn session_from_prekey_bundle_exchanges_messages() {
    let mut rng = OsRng.unwrap_err();
    let mut alice = InMemSignalProtocolStore::new(
        IdentityKeyPair::generate(&mut rng),
        rng.random_range(1..16380),
    )
    .unwrap();
    let mut bob = InMemSignalProtocolStore::new(
        IdentityKeyPair::generate(&mut rng),
        rng.random_range(1..16380),
    )
    .unwrap();
    let alice_addr = ProtocolAddress::new("alice".into(), DeviceId::new(1).unwrap());
    let bob_addr = ProtocolAddress::new("bob".into(), DeviceId::new(1).unwrap());

    let bundle = bundle_for(&mut bob, 1);
    run(process_prekey_bundle(
        &bob_addr,
        &mut alice.session_store,
        &mut alice.identity_store,
        &bundle,
        SystemTime::now(),
        &mut rng,
    ))
    .unwrap();

    let first = run(message_encrypt(
        b"hello bob",
        &bob_addr,
        &mut alice.session_store,
        &mut alice.identity_store,
        SystemTime::now(),
        &mut rng,
    ))
    .unwrap();
    assert_eq!(first.message_type(), CiphertextMessageType::PreKey);
    assert!(!first.serialize().windows(9).any(|w| w == b"hello bob"));

    let opened = run(message_decrypt(
        &first,
        &alice_addr,
        &mut bob.session_store,
        &mut bob.identity_store,
        &mut bob.pre_key_store,
        &bob.signed_pre_key_store,
        &mut bob.kyber_pre_key_store,
        &mut rng,
    ))
    .unwrap();
    assert_eq!(opened, b"hello bob");

    let reply = run(message_encrypt(
        b"hi alice",
        &alice_addr,
        &mut bob.session_store,
        &mut bob.identity_store,
        SystemTime::now(),
        &mut rng,
    ))
    .unwrap();
    assert_eq!(reply.message_type(), CiphertextMessageType::Whisper);
    let opened = run(message_decrypt(
        &reply,
        &bob_addr,
        &mut alice.session_store,
        &mut alice.identity_store,
        &mut alice.pre_key_store,
        &alice.signed_pre_key_store,
        &mut alice.kyber_pre_key_store,
        &mut rng,
    ))
    .unwrap();
    assert_eq!(opened, b"hi alice");
}

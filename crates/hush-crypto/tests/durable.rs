//! The SQLite store keeps identity, sessions and prekeys across a restart.
#![cfg(feature = "sqlite")]

mod common;

use std::path::PathBuf;

use common::{addr, device, now, run};
use hush_crypto::{Device, DeviceStore, SqliteBackend};
use rand::rngs::StdRng;
use rand::SeedableRng;

struct TempDb(PathBuf);

impl TempDb {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("hush-crypto-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self) -> PathBuf {
        self.0.join("device.sqlite")
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open(path: &std::path::Path, seed: u64) -> Device<SqliteBackend> {
    let mut rng = StdRng::seed_from_u64(seed);
    let store =
        DeviceStore::open_or_create(SqliteBackend::open(path).unwrap(), 1, &mut rng).unwrap();
    Device::with_rng(store, StdRng::seed_from_u64(seed + 1))
}

#[test]
fn restart_keeps_identity_sessions_and_prekeys() {
    let db = TempDb::new("restart");
    let (a, b) = (addr("alice", 1), addr("bob", 1));
    let mut bob = device(2, 1);

    // First run: Alice creates her device, uploads prekeys, starts a session with Bob.
    let mut alice = open(&db.file(), 1);
    let identity = *alice.identity_key();
    let auth = alice.signing_key().auth_key();
    let upload = alice.prepare_upload(3, 2, now()).unwrap();
    let bundle = bob.fresh_bundle(now()).unwrap();
    run(alice.process_bundle(&b, &bundle, now())).unwrap();
    let m1 = run(alice.seal(&b, b"before restart", now())).unwrap();
    assert_eq!(run(bob.open(&a, &m1)).unwrap(), b"before restart");
    drop(alice);

    // Second run: same identity, same ed25519 key, the session continues, prekeys are there.
    let mut alice = open(&db.file(), 99);
    assert_eq!(*alice.identity_key(), identity);
    assert_eq!(alice.signing_key().auth_key(), auth);
    assert_eq!(alice.one_time_pre_key_count().unwrap(), 3);
    assert_eq!(alice.kyber_one_time_pre_key_count().unwrap(), 2);
    let reply = run(bob.seal(&a, b"after restart", now())).unwrap();
    assert_eq!(run(alice.open(&b, &reply)).unwrap(), b"after restart");
    let m2 = run(alice.seal(&b, b"still here", now())).unwrap();
    assert_eq!(run(bob.open(&a, &m2)).unwrap(), b"still here");

    // A peer uses one of the uploaded bundles; the consumed one-time keys stay consumed.
    let mut relay = upload;
    let mut carol = device(3, 1);
    let c = addr("carol", 1);
    run(carol.process_bundle(&a, &relay.take_bundle(), now())).unwrap();
    let hello = run(carol.seal(&a, b"hi", now())).unwrap();
    assert_eq!(run(alice.open(&c, &hello)).unwrap(), b"hi");
    drop(alice);
    let mut alice = open(&db.file(), 100);
    assert_eq!(alice.one_time_pre_key_count().unwrap(), 2);
    assert_eq!(alice.kyber_one_time_pre_key_count().unwrap(), 1);
    let hi2 = run(carol.seal(&a, b"again", now())).unwrap();
    assert_eq!(run(alice.open(&c, &hi2)).unwrap(), b"again");
    // Trusted identities survive: a changed identity for Bob is still refused.
    let mut new_bob = device(4, 1);
    let nb = new_bob.fresh_bundle(now()).unwrap();
    assert!(matches!(
        run(alice.process_bundle(&b, &nb, now())),
        Err(hush_crypto::Error::IdentityChanged { .. })
    ));
}

#[test]
fn create_refuses_an_existing_device_and_open_finds_none_in_an_empty_db() {
    let db = TempDb::new("create");
    assert!(DeviceStore::open(SqliteBackend::open(db.file()).unwrap())
        .unwrap()
        .is_none());
    let mut rng = StdRng::seed_from_u64(5);
    let store = DeviceStore::create(SqliteBackend::open(db.file()).unwrap(), 7, &mut rng).unwrap();
    let id = *store.identity_key();
    drop(store);
    assert!(DeviceStore::create(SqliteBackend::open(db.file()).unwrap(), 7, &mut rng).is_err());
    let store = DeviceStore::open(SqliteBackend::open(db.file()).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(*store.identity_key(), id);
    assert_eq!(u8::from(store.device_id()), 7);
}

//! The SQLite device store encrypted at rest: the files hold no private key bytes and no peer
//! names; the right key reopens the device with its sessions, a wrong key is refused up front.
#![cfg(feature = "sqlite")]

mod common;

use std::path::{Path, PathBuf};

use common::{addr, device, now, run};
use hush_crypto::{Device, DeviceStore, SqliteBackend, StoreKey};

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!(
            "hush-store-{name}-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every file of the database (main file, WAL, shared memory) concatenated.
fn files(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        all.extend(std::fs::read(e.unwrap().path()).unwrap_or_default());
    }
    all
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

const PEER: &str = "peer-name-that-must-not-show-in-the-file";

/// A device on `backend` with prekeys and a session with a peer called [`PEER`]; returns the
/// secrets the file must hide, the peer and the peer's address.
fn populate(backend: SqliteBackend) -> (Vec<Vec<u8>>, Device<hush_crypto::MemoryBackend>) {
    let store = DeviceStore::create(backend, 1, &mut rand::rng()).unwrap();
    let mut alice = Device::new(store);
    alice.prepare_upload(20, 3, now()).unwrap();
    let mut bob = device(7, 1);
    let bundle = bob.fresh_bundle(now()).unwrap();
    run(alice.process_bundle(&addr(PEER, 1), &bundle, now())).unwrap();
    let m = run(alice.seal(&addr(PEER, 1), b"hello", now())).unwrap();
    assert_eq!(run(bob.open(&addr("alice", 1), &m)).unwrap(), b"hello");
    let secrets = vec![
        alice.store().identity_key_pair().private_key().serialize(),
        alice.signing_key().to_seed().to_vec(),
        PEER.as_bytes().to_vec(),
    ];
    (secrets, bob)
}

#[test]
fn an_encrypted_store_file_holds_no_key_bytes_and_no_peer_names() {
    let key = StoreKey::generate(&mut rand::rng());
    let dir = Dir::new("encrypted");
    let path = dir.0.join("device.db");
    let (secrets, mut bob) = populate(SqliteBackend::open_encrypted(&path, &key).unwrap());
    let on_disk = files(&dir.0);
    assert!(on_disk.len() > 4096, "the store was written");
    for s in &secrets {
        assert!(
            !contains(&on_disk, s),
            "secret bytes found in the encrypted store"
        );
    }

    // The right key reopens the device, its session with the peer included.
    let store = DeviceStore::open(SqliteBackend::open_encrypted(&path, &key).unwrap())
        .unwrap()
        .expect("device present");
    assert_eq!(
        store.identity_key_pair().private_key().serialize(),
        secrets[0]
    );
    assert_eq!(store.one_time_pre_key_count().unwrap(), 20);
    let mut alice = Device::new(store);
    let m = run(alice.seal(&addr(PEER, 1), b"after restart", now())).unwrap();
    assert_eq!(
        run(bob.open(&addr("alice", 1), &m)).unwrap(),
        b"after restart"
    );
    drop(alice);

    // A wrong key, or opening without one, is refused with a clear error.
    let wrong = StoreKey::generate(&mut rand::rng());
    let err = SqliteBackend::open_encrypted(&path, &wrong).unwrap_err();
    assert!(err.0.contains("wrong key"), "{err}");
    let err = SqliteBackend::open(&path).unwrap_err();
    assert!(err.0.contains("encrypted"), "{err}");
}

#[test]
fn a_plain_store_file_shows_its_keys_and_is_not_encrypted_in_place() {
    // The control for the test above: without encryption the same secrets are in the file.
    let dir = Dir::new("plain");
    let path = dir.0.join("device.db");
    let (secrets, _) = populate(SqliteBackend::open(&path).unwrap());
    let on_disk = files(&dir.0);
    assert!(secrets.iter().all(|s| contains(&on_disk, s)));
    let key = StoreKey::generate(&mut rand::rng());
    let err = SqliteBackend::open_encrypted(&path, &key).unwrap_err();
    assert!(err.0.contains("unencrypted"), "{err}");
}

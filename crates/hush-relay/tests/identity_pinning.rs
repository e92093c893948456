//! A man in the middle between Alice and the real relay (anyone on the path of a plaintext TCP
//! connection, or a malicious relay) answers Alice's `fetch_bundle(bob)` with a bundle of its
//! own. Alice already has a session with Bob, on a SQLite device store. Whatever Signal device
//! id the forged bundle claims (1, as Bob's, or 7, a new one), and before and after Alice's
//! client restarts, the bundle is refused and Alice's messages still reach Bob, and only Bob.
//!
//! Two forgeries:
//! * the one an attacker can make without Bob's keys: Bob's device key (his address) with the
//!   attacker's Signal identity, the identity's binding signed by the attacker. Refused because
//!   the device key must sign the identity too (binding both ways).
//! * one made with Bob's stolen device key: bound both ways, but another identity than the one
//!   pinned for Bob. Refused with `IdentityChanged` until the user accepts the new identity.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{connect, start_relay, test_config, TempDir, Wire};
use hush_crypto::{Backend, Device, DeviceStore, MemoryBackend, PeerBundle, SqliteBackend, Table};
use hush_signaling::crypto::SignalSealer;
use hush_signaling::frame::{decode_server_frame, encode_server_frame};
use hush_signaling::proto::relay as pb;
use hush_signaling::transport::{FetchedBundle, RelayClient};
use hush_signaling::{
    CallMessage, DeviceId, Error, Hangup, HangupReason, SignalingClient, SignalingEvent,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The bundle bytes the proxy puts into every fetched-bundle response while set.
type Swap = Arc<Mutex<Option<Vec<u8>>>>;

/// A TCP proxy in front of the relay that forwards everything unchanged, except bundle
/// responses while `swap` holds a forged bundle.
async fn start_swapping_proxy(relay: SocketAddr, swap: Swap) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let swap = swap.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(relay).await else {
                    return;
                };
                let (mut client_read, client_write) = client.into_split();
                let (server_read, mut server_write) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                });
                let _ = rewrite_server_frames(server_read, client_write, swap).await;
            });
        }
    });
    addr
}

async fn rewrite_server_frames(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    swap: Swap,
) -> std::io::Result<()> {
    loop {
        let mut len = [0u8; 4];
        from.read_exact(&mut len).await?;
        let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
        from.read_exact(&mut frame).await?;
        let forged = swap.lock().unwrap().clone();
        if let (Some(forged), Ok(pb::server_frame::Frame::Response(mut response))) =
            (forged, decode_server_frame(&frame))
        {
            if let Some(pb::response::Result::Bundle(bundle)) = response.result.as_mut() {
                bundle.bundle = forged.clone();
                if let Some(one_time) = bundle.one_time_prekey.as_mut() {
                    one_time.data = forged;
                }
                frame = encode_server_frame(pb::server_frame::Frame::Response(response));
            }
        }
        to.write_all(&(frame.len() as u32).to_be_bytes()).await?;
        to.write_all(&frame).await?;
        to.flush().await?;
    }
}

fn memory_sealer(device_id: u8) -> SignalSealer<MemoryBackend> {
    let store = DeviceStore::create(MemoryBackend::new(), device_id, &mut rand::rng()).unwrap();
    SignalSealer::new(Device::new(store))
}

fn sqlite_sealer(path: &Path) -> SignalSealer<SqliteBackend> {
    let backend = SqliteBackend::open(path).unwrap();
    let store = DeviceStore::open_or_create(backend, 1, &mut rand::rng()).unwrap();
    SignalSealer::new(Device::new(store))
}

/// A device with a fresh Signal identity but `stolen`'s ed25519 device key, so its bundles
/// are bound both ways and carry `stolen`'s address.
fn with_stolen_device_key(
    stolen: &hush_crypto::DeviceSigningKey,
    device_id: u8,
) -> Device<MemoryBackend> {
    let store = DeviceStore::create(MemoryBackend::new(), device_id, &mut rand::rng()).unwrap();
    let mut backend = store.into_backend();
    backend
        .put(Table::Meta, b"ed25519_seed", stolen.to_seed().as_ref())
        .unwrap();
    Device::new(DeviceStore::open(backend).unwrap().unwrap())
}

/// What an attacker without Bob's keys can build: Bob's device key and the attacker's
/// identity (which signs Bob's device key), with Bob's own identity-binding signature copied
/// over (the only one that exists for Bob's device key).
fn one_way_forgery(
    bob: &PeerBundle,
    bob_key: &hush_crypto::DeviceSigningKey,
    device_id: u8,
) -> Vec<u8> {
    // The attacker's identity signing Bob's device key: a device holding the attacker's
    // identity computes exactly that binding, whatever ed25519 secret it holds.
    let mut attacker = with_stolen_device_key(bob_key, device_id);
    let mut forged = attacker.fresh_bundle(std::time::SystemTime::now()).unwrap();
    assert_eq!(forged.device.auth_key, bob.device.auth_key);
    forged.device.identity_binding = bob.device.identity_binding;
    forged.encode().unwrap()
}

fn stolen_key_bundle(
    bob_key: &hush_crypto::DeviceSigningKey,
    device_id: u8,
) -> (Vec<u8>, hush_crypto::IdentityKey) {
    let mut mallory = with_stolen_device_key(bob_key, device_id);
    let bundle = mallory.fresh_bundle(std::time::SystemTime::now()).unwrap();
    bundle.verify().expect("bound both ways");
    (bundle.encode().unwrap(), bundle.device.identity_key)
}

/// Alice seals a hangup for Bob; Bob's client must open it (it is still Bob's session).
async fn alice_still_reaches_bob<B: Backend + Send>(
    alice: &mut SignalingClient<RelayClient, SignalSealer<B>>,
    bob: &mut SignalingClient<RelayClient, SignalSealer<MemoryBackend>>,
    bob_id: DeviceId,
    call: u8,
) {
    let hangup = CallMessage::Hangup(Hangup {
        call_id: [call; 16],
        reason: HangupReason::Normal,
    });
    alice.send(bob_id, hangup.clone()).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), bob.recv())
        .await
        .expect("Bob hears Alice in time")
        .expect("transport");
    match got {
        SignalingEvent::Message(m) => assert_eq!(m.message, hangup),
        other => panic!("Bob could not open Alice's message: {other:?}"),
    }
}

async fn fetch(alice_relay: &RelayClient, bob_id: DeviceId) -> FetchedBundle {
    alice_relay.fetch_bundle(bob_id).await.expect("fetch")
}

fn assert_bad_binding(result: Result<(), Error>) {
    match result {
        Err(Error::Seal(source)) => match source.downcast_ref::<hush_crypto::Error>() {
            Some(hush_crypto::Error::BadSignature(_)) => {}
            other => panic!("expected a bad binding signature, got {other:?}"),
        },
        other => panic!("a one-way-bound bundle was not refused: {other:?}"),
    }
}

fn assert_identity_changed(result: Result<(), Error>, expected: &hush_crypto::IdentityKey) {
    match result {
        Err(Error::IdentityChanged { new_identity }) => {
            assert_eq!(new_identity.as_deref(), Some(&*expected.serialize()));
        }
        other => panic!("a bundle with another identity was not refused: {other:?}"),
    }
}

async fn forged_bundles_are_refused(forged_device_id: u8) {
    let dir = TempDir::new("pinning");
    let (relay_addr, _, _shutdown) = start_relay(test_config(dir.path())).await;
    let swap: Swap = Arc::default();
    let proxy = start_swapping_proxy(relay_addr, swap.clone()).await;

    // Bob publishes his bundle (Signal device id 1) and stays online, directly on the relay.
    let mut bob_sealer = memory_sealer(1);
    let bob_id = bob_sealer.device_id();
    let bob_key = bob_sealer.signer().clone();
    let material = bob_sealer.publish(4, 2).unwrap();
    let bob_relay = connect(Wire::Tcp, relay_addr, &bob_key).await;
    bob_relay
        .upload_prekeys(material.bundle, material.one_time_prekeys, false)
        .await
        .unwrap();
    let mut bob = SignalingClient::new(bob_relay, bob_sealer);

    // Alice, on a SQLite store, reaches the relay through the proxy and starts a session with
    // Bob from his genuine bundle.
    let alice_db = dir.path().join("alice.db");
    let alice_sealer = sqlite_sealer(&alice_db);
    let alice_key = alice_sealer.signer().clone();
    let alice_relay = connect(Wire::Tcp, proxy, &alice_key).await;
    let genuine = fetch(&alice_relay, bob_id).await;
    let genuine_bundle = PeerBundle::decode(&genuine.one_time_prekey.as_ref().unwrap().1).unwrap();
    let mut alice = SignalingClient::new(alice_relay, alice_sealer);
    alice.sealer_mut().start_session(&genuine).unwrap();
    alice_still_reaches_bob(&mut alice, &mut bob, bob_id, 1).await;

    let forgery = one_way_forgery(&genuine_bundle, &bob_key, forged_device_id);
    let (stolen, mallory_identity) = stolen_key_bundle(&bob_key, forged_device_id);

    // Before a restart.
    *swap.lock().unwrap() = Some(forgery.clone());
    let fetched = fetch(alice.transport(), bob_id).await;
    assert_bad_binding(alice.sealer_mut().start_session(&fetched));
    *swap.lock().unwrap() = Some(stolen.clone());
    let fetched = fetch(alice.transport(), bob_id).await;
    assert_identity_changed(
        alice.sealer_mut().start_session(&fetched),
        &mallory_identity,
    );
    alice_still_reaches_bob(&mut alice, &mut bob, bob_id, 2).await;

    // Alice's app restarts: a new client on the same SQLite store.
    drop(alice);
    let alice_sealer = sqlite_sealer(&alice_db);
    assert_eq!(
        alice_sealer.peer_identity(&bob_id).unwrap(),
        Some(genuine_bundle.device.identity_key),
        "Bob's identity stays pinned across a restart"
    );
    let alice_relay = connect(Wire::Tcp, proxy, &alice_key).await;
    let mut alice = SignalingClient::new(alice_relay, alice_sealer);
    *swap.lock().unwrap() = Some(forgery);
    let fetched = fetch(alice.transport(), bob_id).await;
    assert_bad_binding(alice.sealer_mut().start_session(&fetched));
    *swap.lock().unwrap() = Some(stolen);
    let fetched = fetch(alice.transport(), bob_id).await;
    assert_identity_changed(
        alice.sealer_mut().start_session(&fetched),
        &mallory_identity,
    );
    alice_still_reaches_bob(&mut alice, &mut bob, bob_id, 3).await;

    // Only the user's explicit acceptance (after comparing safety numbers) trusts the new
    // identity, and with it the device id its bundle claims.
    alice
        .sealer_mut()
        .accept_identity(&bob_id, &mallory_identity)
        .unwrap();
    alice.sealer_mut().start_session(&fetched).unwrap();
    assert_eq!(
        alice.sealer_mut().address_of(&bob_id).unwrap().device_id(),
        hush_crypto::signal::DeviceId::new(forged_device_id).unwrap()
    );
    assert_eq!(
        alice.sealer_mut().peer_identity(&bob_id).unwrap(),
        Some(mallory_identity)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_bundle_with_bobs_signal_device_id_is_refused() {
    forged_bundles_are_refused(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_bundle_with_a_new_signal_device_id_is_refused() {
    forged_bundles_are_refused(7).await;
}

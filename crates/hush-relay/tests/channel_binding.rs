//! Relay authentication bound to its channel, on plaintext listeners: a device's answer to the
//! challenge is signed over the relay's public key, so a man in the middle who passes a
//! victim's answer on to his own connection to the real relay is refused, and a device that
//! pins its relay's key never answers another relay's challenge. (Over TLS the binding is the
//! TLS exporter: see `tls.rs`.)

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{start_relay, test_config, TempDir};
use futures_util::StreamExt;
use hush_signaling::device::{
    generate_device_key, sign_challenge, ChannelBinding, AUTH_NONCE_LEN, RELAY_KEY_LEN,
    TLS_EXPORTER_LEN,
};
use hush_signaling::frame::{
    decode_client_frame, decode_server_frame, encode_client_frame, encode_server_frame,
    length_prefixed, RelayFrameCodec, TCP_PREAMBLE,
};
use hush_signaling::proto::relay::{self as pb, client_frame, server_frame, ErrorCode};
use hush_signaling::transport::{RelayClient, RelayClientConfig, RELAY_PROTOCOL_VERSION};
use hush_signaling::{DeviceSigner, Error};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

/// One end of a framed TCP connection, driven by hand.
struct Wire(Framed<TcpStream, RelayFrameCodec>);

impl Wire {
    /// Connects to a relay and sends the preamble.
    async fn to_relay(addr: SocketAddr) -> Self {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(&TCP_PREAMBLE).await.unwrap();
        Self(Framed::new(stream, RelayFrameCodec::new(1 << 16)))
    }

    /// Accepts a device and reads its preamble.
    async fn from_device(listener: &TcpListener) -> Self {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut preamble = [0u8; 4];
        stream.read_exact(&mut preamble).await.unwrap();
        assert_eq!(preamble, TCP_PREAMBLE);
        Self(Framed::new(stream, RelayFrameCodec::new(1 << 16)))
    }

    async fn send(&mut self, frame: Vec<u8>) {
        let _ = self
            .0
            .get_mut()
            .write_all(&length_prefixed(&frame).unwrap())
            .await;
    }

    /// The next frame, `None` once the other end closed.
    async fn recv(&mut self) -> Option<Vec<u8>> {
        tokio::time::timeout(Duration::from_secs(5), self.0.next())
            .await
            .expect("an answer in time")
            .and_then(Result::ok)
            .map(|f| f.to_vec())
    }

    async fn recv_server(&mut self) -> Option<server_frame::Frame> {
        Some(decode_server_frame(&self.recv().await?).unwrap())
    }
}

fn config() -> RelayClientConfig {
    let mut config = RelayClientConfig::default();
    config.handshake_timeout = Duration::from_secs(5);
    config
}

fn pinned(key: [u8; RELAY_KEY_LEN]) -> RelayClientConfig {
    let mut config = config();
    config.relay_key = Some(key);
    config
}

/// The man in the middle: serves one device as if it were the relay whose key is `shown_key`
/// (`None`: shows the real relay's key), passes the real relay's challenge nonce on, and
/// forwards the device's answer onto his own connection to the real relay. Returns what the
/// real relay answered that connection (`None` when no answer was forwarded because the device
/// sent none).
async fn relay_in_the_middle(
    listener: TcpListener,
    real: SocketAddr,
    shown_key: Option<[u8; RELAY_KEY_LEN]>,
) -> Option<server_frame::Frame> {
    let mut device = Wire::from_device(&listener).await;
    let mut upstream = Wire::to_relay(real).await;
    let Some(server_frame::Frame::Challenge(mut challenge)) = upstream.recv_server().await else {
        panic!("the real relay sends a challenge");
    };
    if let Some(key) = shown_key {
        challenge.relay_key = key.to_vec();
    }
    device
        .send(encode_server_frame(server_frame::Frame::Challenge(
            challenge,
        )))
        .await;
    let answer = device.recv().await?;
    assert!(matches!(
        decode_client_frame(&answer),
        Ok(client_frame::Frame::Auth(_))
    ));
    upstream.send(answer).await;
    let verdict = upstream.recv_server().await;
    if matches!(verdict, Some(server_frame::Frame::AuthOk(_))) {
        // Taken over: the attacker now acts as the device (here a harmless ping).
        upstream
            .send(encode_client_frame(client_frame::Frame::Ping(pb::Ping {
                nonce: 7,
            })))
            .await;
    }
    verdict
}

fn refusal(frame: Option<server_frame::Frame>) -> ErrorCode {
    match frame {
        Some(server_frame::Frame::Error(e)) => ErrorCode::try_from(e.code).unwrap(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A relay (here a man in the middle with a key of his own) relays another relay's challenge
/// to a device that meant to talk to him: the device signs over his key, so the real relay
/// refuses the answer he forwards (on the old protocol it accepted it and he was the device).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_forwarded_to_another_relay_is_refused() {
    let dir = TempDir::new("cb-mitm-own-key");
    let (real, _, _shutdown) = start_relay(test_config(dir.path())).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mitm_addr = listener.local_addr().unwrap();
    let mitm_key: [u8; RELAY_KEY_LEN] = rand::random();
    let mitm = tokio::spawn(relay_in_the_middle(listener, real, Some(mitm_key)));

    let victim = generate_device_key();
    // The victim pins the key of the relay it chose, which is the man in the middle's.
    let outcome = RelayClient::connect_tcp(mitm_addr, &victim, pinned(mitm_key)).await;
    assert!(
        outcome.is_err(),
        "the man in the middle has no session to offer"
    );
    assert_eq!(refusal(mitm.await.unwrap()), ErrorCode::AuthFailed);

    // The victim still gets in on its own, to the relay whose key it pins.
    let relay_key = RelayClient::connect_tcp(real, &victim, config())
        .await
        .unwrap()
        .relay_key();
    let direct = RelayClient::connect_tcp(real, &victim, pinned(relay_key))
        .await
        .unwrap();
    direct.ping().await.unwrap();
}

/// A device that pins its relay's key refuses a challenge showing another relay's key before
/// signing anything: a man in the middle passing on the real relay's challenge gets no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_device_never_answers_another_relays_challenge() {
    let dir = TempDir::new("cb-pinned");
    let (real, _, _shutdown) = start_relay(test_config(dir.path())).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mitm_addr = listener.local_addr().unwrap();
    let mitm = tokio::spawn(relay_in_the_middle(listener, real, None));

    let victim = generate_device_key();
    let expected: [u8; RELAY_KEY_LEN] = rand::random();
    let err = RelayClient::connect_tcp(mitm_addr, &victim, pinned(expected))
        .await
        .expect_err("pinned key mismatch");
    let Error::RelayKeyMismatch { presented } = err else {
        panic!("expected RelayKeyMismatch, got {err:?}");
    };
    assert_ne!(presented, expected);
    assert!(
        mitm.await.unwrap().is_none(),
        "the victim sent no answer to forward"
    );
}

/// The relay key is the same across restarts (it lives next to the database), so a pin stays
/// valid; TCP and WebSocket clients both authenticate with it pinned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_relay_key_survives_a_restart_over_tcp_and_websocket() {
    let dir = TempDir::new("cb-restart");
    let relay = hush_relay::Relay::bind(test_config(dir.path()))
        .await
        .unwrap();
    let key = relay.public_key();
    assert!(dir.path().join("relay.db.key").exists());
    drop(relay);
    let (addr, _, shutdown) = start_relay(test_config(dir.path())).await;
    let device = generate_device_key();
    let tcp = RelayClient::connect_tcp(addr, &device, pinned(key))
        .await
        .unwrap();
    assert_eq!(tcp.relay_key(), key);
    tcp.ping().await.unwrap();
    drop(tcp);
    let ws = RelayClient::connect_ws(addr, &device, pinned(key))
        .await
        .unwrap();
    ws.ping().await.unwrap();
    drop(ws);
    shutdown.shutdown();
    // Another database directory is another relay with another key.
    let other = TempDir::new("cb-restart-other");
    let (other_addr, _, _s) = start_relay(test_config(other.path())).await;
    assert!(matches!(
        RelayClient::connect_tcp(other_addr, &device, pinned(key)).await,
        Err(Error::RelayKeyMismatch { .. })
    ));
}

/// Answers a challenge by hand: `version`, the signed message given by `sign`, and the binding
/// type claimed. Returns the relay's verdict.
async fn answer_by_hand(
    addr: SocketAddr,
    key: &ed25519_dalek::SigningKey,
    version: u32,
    binding_type: pb::ChannelBindingType,
    sign: impl FnOnce(&[u8; AUTH_NONCE_LEN], [u8; RELAY_KEY_LEN]) -> [u8; 64],
) -> Option<server_frame::Frame> {
    let mut wire = Wire::to_relay(addr).await;
    let Some(server_frame::Frame::Challenge(c)) = wire.recv_server().await else {
        panic!("challenge")
    };
    let nonce: [u8; AUTH_NONCE_LEN] = c.nonce.as_slice().try_into().unwrap();
    let relay_key = c.relay_key.as_slice().try_into().unwrap();
    wire.send(encode_client_frame(client_frame::Frame::Auth(
        pb::AuthResponse {
            version,
            device_key: key.device_id().as_bytes().to_vec(),
            signature: sign(&nonce, relay_key).to_vec(),
            binding_type: binding_type as i32,
        },
    )))
    .await;
    wire.recv_server().await
}

/// Version 1 answers (no channel binding) are refused, however they are labelled; a version 2
/// answer claiming a TLS binding on a plaintext listener is refused; the right one passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbound_and_misbound_answers_are_refused() {
    let dir = TempDir::new("cb-versions");
    let (addr, _, _shutdown) = start_relay(test_config(dir.path())).await;
    let key = generate_device_key();
    let device = key.device_id();
    let v1 = |nonce: &[u8; AUTH_NONCE_LEN]| {
        let mut m = b"hush-relay-auth-v1\0".to_vec();
        m.extend_from_slice(nonce);
        m.extend_from_slice(device.as_bytes());
        key.sign_challenge(&m)
    };
    use pb::ChannelBindingType as T;

    let verdict = answer_by_hand(addr, &key, 1, T::Unspecified, |n, _| v1(n)).await;
    assert_eq!(refusal(verdict), ErrorCode::UnsupportedVersion);
    let verdict = answer_by_hand(addr, &key, 2, T::RelayKey, |n, _| v1(n)).await;
    assert_eq!(refusal(verdict), ErrorCode::AuthFailed);
    let verdict = answer_by_hand(addr, &key, 2, T::TlsExporter, |n, _| {
        let exporter = ChannelBinding::TlsExporter([0; TLS_EXPORTER_LEN]);
        sign_challenge(&key, n, &exporter)
    })
    .await;
    assert_eq!(refusal(verdict), ErrorCode::AuthFailed);
    // The same answer bound to the relay key, but labelled as a TLS binding.
    let verdict = answer_by_hand(addr, &key, 2, T::TlsExporter, |n, k| {
        sign_challenge(&key, n, &ChannelBinding::RelayKey(k))
    })
    .await;
    assert_eq!(refusal(verdict), ErrorCode::AuthFailed);

    let verdict = answer_by_hand(addr, &key, RELAY_PROTOCOL_VERSION, T::RelayKey, |n, k| {
        sign_challenge(&key, n, &ChannelBinding::RelayKey(k))
    })
    .await;
    assert!(matches!(verdict, Some(server_frame::Frame::AuthOk(_))));
}

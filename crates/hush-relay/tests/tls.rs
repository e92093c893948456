//! The relay over TLS (feature `tls`): framed TCP and WebSocket inside TLS, with a self-signed
//! certificate the clients pin; a client that does not trust the certificate cannot connect.
//! Authentication is bound to the TLS connection (RFC 9266 `tls-exporter`): an answer a man in
//! the middle forwards onto his own TLS connection to the relay is refused.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{start_relay, test_config, TempDir};
use futures_util::StreamExt;
use hush_signaling::device::generate_device_key;
use hush_signaling::frame::{decode_server_frame, length_prefixed, RelayFrameCodec, TCP_PREAMBLE};
use hush_signaling::proto::relay::{server_frame, ErrorCode};
use hush_signaling::transport::{
    tls_exporter, ClientChannel, RelayClient, RelayClientConfig, RelayTls, TlsRoots,
};
use hush_signaling::{CiphertextKind, DeviceSigner, Envelope, Error, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName,
};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::codec::Framed;

fn certificate() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let key = PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der());
    (cert.cert.der().clone(), key.into())
}

fn connector(trusted: &CertificateDer<'static>) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

fn relay_tls(trusted: &CertificateDer<'static>) -> RelayTls {
    RelayTls::new("localhost", TlsRoots::Custom(vec![trusted.to_vec()]))
}

async fn tls_client(
    addr: std::net::SocketAddr,
    trusted: &CertificateDer<'static>,
    key: &dyn DeviceSigner,
    websocket: bool,
) -> Result<RelayClient, Error> {
    let tls = relay_tls(trusted);
    let config = RelayClientConfig::default();
    if websocket {
        RelayClient::connect_wss(addr, &tls, key, config).await
    } else {
        RelayClient::connect_tls(addr, &tls, key, config).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framed_and_websocket_clients_over_tls() {
    let dir = TempDir::new("tls");
    let (cert, key) = certificate();
    let mut config = test_config(dir.path());
    config.tls = Some(hush_relay::tls_config(vec![cert.clone()], key).unwrap());
    let (addr, _, _shutdown) = start_relay(config).await;

    let alice = generate_device_key();
    let mut bob_sealer = common::new_sealer(1);
    let bob = bob_sealer.signer().clone();
    let alice_conn = tls_client(addr, &cert, &alice, false).await.unwrap();
    let mut bob_conn = tls_client(addr, &cert, &bob, true).await.unwrap();
    // Bob publishes his bundle: the relay accepts envelopes only for devices that did.
    let material = bob_sealer.publish(0, 0).unwrap();
    bob_conn
        .upload_prekeys(material.bundle, material.one_time_prekeys, false)
        .await
        .unwrap();
    alice_conn.ping().await.unwrap();
    let envelope = Envelope {
        id: rand::random(),
        sender: alice.device_id(),
        recipient: bob.device_id(),
        timestamp_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
        kind: CiphertextKind::Signal,
        ciphertext: vec![1, 2, 3],
    };
    alice_conn.send_envelope(envelope.clone()).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), bob_conn.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.envelope, envelope);

    // Plain TCP to a TLS relay fails; so does TLS with a certificate the client does not trust.
    let plain =
        RelayClient::connect_tcp(addr, &generate_device_key(), RelayClientConfig::default()).await;
    assert!(plain.is_err());
    let (other_cert, _) = certificate();
    assert!(tls_client(addr, &other_cert, &generate_device_key(), false)
        .await
        .is_err());
    // The relay keeps serving.
    alice_conn.ping().await.unwrap();
}

/// A relay configured with a fresh self-signed certificate; returns its address and certificate.
async fn tls_relay(
    dir: &TempDir,
) -> (
    std::net::SocketAddr,
    CertificateDer<'static>,
    hush_relay::ShutdownHandle,
) {
    let (cert, key) = certificate();
    let mut config = test_config(dir.path());
    config.tls = Some(hush_relay::tls_config(vec![cert.clone()], key).unwrap());
    let (addr, _, shutdown) = start_relay(config).await;
    (addr, cert, shutdown)
}

/// Reads one frame from a framed TLS stream (`None` once closed).
async fn next_frame<S: tokio::io::AsyncRead + Unpin>(
    frames: &mut Framed<S, RelayFrameCodec>,
) -> Option<Vec<u8>> {
    tokio::time::timeout(Duration::from_secs(5), frames.next())
        .await
        .expect("an answer in time")
        .and_then(Result::ok)
        .map(|f| f.to_vec())
}

async fn send_frame<S: tokio::io::AsyncWrite + Unpin>(
    frames: &mut Framed<S, RelayFrameCodec>,
    frame: &[u8],
) {
    let io = frames.get_mut();
    let _ = io.write_all(&length_prefixed(frame).unwrap()).await;
    let _ = io.flush().await;
}

/// A man in the middle with a certificate the victim trusts (a relay of his own, or a
/// corporate proxy CA): he terminates the victim's TLS, opens his own TLS connection to the real
/// relay, passes the real challenge through untouched and forwards the victim's answer. The
/// answer is bound to the victim's TLS connection, whose exporter is not the one of his
/// connection to the relay: refused (on the old protocol the relay accepted it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_forwarded_across_tls_connections_is_refused() {
    let dir = TempDir::new("tls-mitm");
    let (real, real_cert, _shutdown) = tls_relay(&dir).await;
    let (mitm_cert, mitm_key) = certificate();
    let acceptor =
        TlsAcceptor::from(hush_relay::tls_config(vec![mitm_cert.clone()], mitm_key).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mitm_addr = listener.local_addr().unwrap();
    let upstream_connector = connector(&real_cert);

    let mitm = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut device = acceptor.accept(tcp).await.unwrap();
        let mut preamble = [0u8; 4];
        device.read_exact(&mut preamble).await.unwrap();
        let mut device = Framed::new(device, RelayFrameCodec::new(1 << 16));

        let tcp = TcpStream::connect(real).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut upstream = upstream_connector.connect(name, tcp).await.unwrap();
        upstream.write_all(&TCP_PREAMBLE).await.unwrap();
        let mut upstream = Framed::new(upstream, RelayFrameCodec::new(1 << 16));

        let challenge = next_frame(&mut upstream).await.expect("challenge");
        send_frame(&mut device, &challenge).await;
        let answer = next_frame(&mut device).await.expect("the victim answers");
        send_frame(&mut upstream, &answer).await;
        next_frame(&mut upstream)
            .await
            .map(|f| decode_server_frame(&f).unwrap())
    });

    let victim = generate_device_key();
    let outcome = RelayClient::connect_tls(
        mitm_addr,
        &relay_tls(&mitm_cert),
        &victim,
        RelayClientConfig::default(),
    )
    .await;
    assert!(outcome.is_err());
    match mitm.await.unwrap() {
        Some(server_frame::Frame::Error(e)) => {
            assert_eq!(ErrorCode::try_from(e.code).unwrap(), ErrorCode::AuthFailed)
        }
        other => panic!("the real relay must refuse the forwarded answer, got {other:?}"),
    }
    // The victim connecting to the real relay itself is served.
    let direct = tls_client(real, &real_cert, &victim, false).await.unwrap();
    direct.ping().await.unwrap();
}

/// On a TLS listener the relay requires the TLS binding: an answer bound only to the relay key
/// (a client that does not bind to TLS, or a downgrade) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_key_binding_is_refused_on_a_tls_listener() {
    let dir = TempDir::new("tls-downgrade");
    let (addr, cert, _shutdown) = tls_relay(&dir).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = connector(&cert).connect(name, tcp).await.unwrap();
    let err =
        RelayClient::connect_stream(tls, &generate_device_key(), RelayClientConfig::default())
            .await
            .expect_err("plaintext binding refused");
    assert!(
        matches!(
            err,
            Error::Relay {
                code: ErrorCode::AuthFailed,
                ..
            }
        ),
        "{err:?}"
    );
    // The exporter of this very connection, passed by hand, is accepted.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = connector(&cert).connect(name, tcp).await.unwrap();
    let exporter = tls_exporter(tls.get_ref().1).unwrap();
    let client = RelayClient::connect_stream_bound(
        tls,
        ClientChannel::Tls { exporter },
        &generate_device_key(),
        RelayClientConfig::default(),
    )
    .await
    .unwrap();
    client.ping().await.unwrap();
}

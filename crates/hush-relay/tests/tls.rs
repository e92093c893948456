//! The relay over TLS (feature `tls`): framed TCP and WebSocket inside TLS, with a self-signed
//! certificate the clients pin; a client that does not trust the certificate cannot connect.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{start_relay, test_config, TempDir};
use hush_signaling::device::generate_device_key;
use hush_signaling::transport::{RelayClient, RelayClientConfig};
use hush_signaling::{CiphertextKind, DeviceSigner, Envelope, Transport};
use tokio_rustls::rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName,
};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

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

async fn tls_client(
    addr: std::net::SocketAddr,
    connector: &TlsConnector,
    key: &dyn DeviceSigner,
    websocket: bool,
) -> Result<RelayClient, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let config = RelayClientConfig::default();
    if websocket {
        RelayClient::connect_ws_stream(tls, "wss://localhost/", key, config).await
    } else {
        RelayClient::connect_stream(tls, key, config).await
    }
    .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framed_and_websocket_clients_over_tls() {
    let dir = TempDir::new("tls");
    let (cert, key) = certificate();
    let mut config = test_config(dir.path());
    config.tls = Some(hush_relay::tls_config(vec![cert.clone()], key).unwrap());
    let (addr, _, _shutdown) = start_relay(config).await;
    let trusted = connector(&cert);

    let alice = generate_device_key();
    let mut bob_sealer = common::new_sealer(1);
    let bob = bob_sealer.signer().clone();
    let alice_conn = tls_client(addr, &trusted, &alice, false).await.unwrap();
    let mut bob_conn = tls_client(addr, &trusted, &bob, true).await.unwrap();
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
    assert!(
        tls_client(addr, &connector(&other_cert), &generate_device_key(), false)
            .await
            .is_err()
    );
    // The relay keeps serving.
    alice_conn.ping().await.unwrap();
}

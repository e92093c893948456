//! Helpers shared by the relay integration tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use hush_crypto::{Device, DeviceSigningKey, DeviceStore, MemoryBackend};
use hush_relay::{Relay, RelayConfig, ShutdownHandle};
use hush_signaling::crypto::SignalSealer;
use hush_signaling::transport::{RelayClient, RelayClientConfig};
use hush_signaling::{CiphertextKind, DeviceId, DeviceSigner, Error, Sealed, Sealer};

/// A stand-in for a Signal session in relay tests: binds ciphertext to (sender, recipient) and
/// scrambles the plaintext. NOT encryption; the hush-crypto tests use the real thing.
pub struct ToySealer {
    pub local: DeviceId,
}

fn tag(from: &DeviceId, to: &DeviceId) -> [u8; 8] {
    let mut t = [0u8; 8];
    for (i, b) in from.as_bytes().iter().chain(to.as_bytes()).enumerate() {
        t[i % 8] ^= b.rotate_left(i as u32 % 7);
    }
    t
}

impl Sealer for ToySealer {
    async fn seal(&mut self, peer: &DeviceId, plaintext: &[u8]) -> Result<Sealed, Error> {
        let mut ciphertext = tag(&self.local, peer).to_vec();
        ciphertext.extend(plaintext.iter().map(|b| b ^ 0x5a));
        Ok(Sealed {
            kind: CiphertextKind::Signal,
            ciphertext,
        })
    }

    async fn open(
        &mut self,
        peer: &DeviceId,
        _kind: CiphertextKind,
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, Error> {
        match ciphertext.split_at_checked(8) {
            Some((t, body)) if t == tag(peer, &self.local) => {
                Ok(body.iter().map(|b| b ^ 0x5a).collect())
            }
            _ => Err(Error::Open("bad toy tag".into())),
        }
    }
}

pub fn test_config(dir: &Path) -> RelayConfig {
    let mut config = RelayConfig::new("127.0.0.1:0".parse().unwrap(), dir.join("relay.db"));
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    config.handshake_timeout = Duration::from_secs(5);
    config
}

/// Starts an in-process relay; returns its address, metrics address and a shutdown handle.
pub async fn start_relay(config: RelayConfig) -> (SocketAddr, SocketAddr, ShutdownHandle) {
    let relay = Relay::bind(config).await.expect("bind relay");
    let addr = relay.local_addr();
    let metrics = relay.metrics_addr().expect("metrics enabled");
    let handle = relay.shutdown_handle();
    tokio::spawn(relay.serve());
    (addr, metrics, handle)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    Tcp,
    Ws,
}

pub async fn connect(wire: Wire, addr: SocketAddr, key: &dyn DeviceSigner) -> RelayClient {
    try_connect(wire, addr, key)
        .await
        .expect("connect to relay")
}

pub async fn try_connect(
    wire: Wire,
    addr: SocketAddr,
    key: &dyn DeviceSigner,
) -> Result<RelayClient, Error> {
    let config = RelayClientConfig::default();
    match wire {
        Wire::Tcp => RelayClient::connect_tcp(addr, key, config).await,
        Wire::Ws => RelayClient::connect_ws(addr, key, config).await,
    }
}

/// A fresh device (Signal identity, in memory) with Signal device id `device_id`.
pub fn new_sealer(device_id: u8) -> SignalSealer<MemoryBackend> {
    let mut rng = rand::rng();
    let store = DeviceStore::create(MemoryBackend::new(), device_id, &mut rng).unwrap();
    SignalSealer::new(Device::new(store))
}

/// Publishes `sealer`'s bundle with `one_time` one-time prekeys (over a short TCP connection).
pub async fn publish(addr: SocketAddr, sealer: &mut SignalSealer<MemoryBackend>, one_time: usize) {
    let material = sealer.publish(one_time, one_time).unwrap();
    let conn = connect(Wire::Tcp, addr, sealer.signer()).await;
    conn.upload_prekeys(material.bundle, material.one_time_prekeys, false)
        .await
        .expect("bundle accepted");
}

/// The device key of a new device that published its bundle: the relay accepts envelopes only
/// for devices that did.
pub async fn registered_key(addr: SocketAddr) -> DeviceSigningKey {
    let mut sealer = new_sealer(1);
    publish(addr, &mut sealer, 0).await;
    sealer.signer().clone()
}

/// A private temporary directory, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "hush-relay-test-{name}-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Fetches the relay's Prometheus text.
pub async fn scrape(metrics: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(metrics).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Reads one metric value from Prometheus text.
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            // `name value` or `name{labels} value`.
            let v = l.strip_prefix(name)?;
            v.strip_prefix(' ')
                .or_else(|| v.strip_prefix('{')?.split_once("} ").map(|(_, v)| v))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing"))
}

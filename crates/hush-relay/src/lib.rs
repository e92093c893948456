//! The hush signaling relay.
//!
//! Devices connect over TCP (length-prefixed frames) or WebSocket on one port, inside TLS in
//! production (feature `tls`, `RelayConfig::tls`), authenticate with their ed25519 device key
//! (challenge–response, no accounts or passwords; the answer is bound to the connection: to the TLS
//! exporter, or on a plaintext listener to the relay's own key, see `docs/relay-auth.md`), publish
//! prekey bundles, fetch each other's bundles (each one-time prekey is handed out once), and send
//! sealed envelopes. The relay pushes an envelope to its recipient at once if the recipient is
//! online, and answers the sender only once the envelope is either committed to SQLite or
//! acknowledged by the recipient: an envelope acknowledged within [`RelayConfig::commit_delay`] is
//! never written, any other is written (group commit) and deleted when the recipient acknowledges
//! it (or, unread, once it is older than [`RelayConfig::max_envelope_age`], or evicted from a full
//! queue when its sender has the most queued there). So nothing a sender was told is accepted is
//! lost across a crash (`kill -9`) and restart.
//!
//! Limits ([`RelayConfig`], all configurable, also from the command line): largest frame,
//! total connections and connections per IP address or IPv6 /64 (counted and refused at
//! accept), a deadline for the whole unauthenticated phase
//! ([`RelayConfig::handshake_timeout`]: a connection that idles or trickles bytes without
//! authenticating is closed), a write deadline (a device that stops reading is cut off) and an
//! idle deadline after authentication, per-connection request rate, envelopes queued per
//! recipient and per (sender, recipient), envelopes only for devices that published a bundle,
//! an age after which queued envelopes are deleted unread, one-time prekeys handed out per
//! requester and minute, live deliveries buffered per connection. A client that breaks them
//! gets an error and, for stream-level violations, is disconnected; other clients are
//! unaffected.
//!
//! Uploaded bundles are checked before they are stored: each must decode as a
//! [`hush_crypto::PeerBundle`], verify (identity binding and prekey signatures), belong to the
//! authenticated device, and carry the same identity, registration id and device id as the
//! others of the upload.
//!
//! The relay only ever sees routing metadata (sender, recipient, time, ciphertext kind) and
//! Signal ciphertext; it logs no payloads. Prometheus metrics are served on a separate port.
//!
//! With the `cluster` feature the relay can instead run as one of several equal nodes on a shared
//! PostgreSQL database and NATS server (`RelayConfig::cluster`, `--postgres URL --nats URL`),
//! with the same promise: "accepted" only once committed (see `docs/relay-cluster.md`).
//!
//! Run it as a binary (`cargo run -p hush-relay -- --listen 127.0.0.1:7400 --db relay.db`) or
//! embed it:
//!
//! ```no_run
//! # async fn demo() -> Result<(), hush_relay::RelayError> {
//! let config = hush_relay::RelayConfig::new("127.0.0.1:0".parse().unwrap(), "relay.db".into());
//! let relay = hush_relay::Relay::bind(config).await?;
//! println!("relay on {}", relay.local_addr());
//! tokio::spawn(relay.serve());
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod backend;
mod bundles;
#[cfg(feature = "cluster")]
mod cluster;
mod conn;
mod io;
mod key;
pub mod metrics;
mod pending;
#[cfg(feature = "cluster")]
mod stages;
mod state;
mod store;
pub mod turn;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

#[cfg(feature = "cluster")]
pub use cluster::{ClusterConfig, ClusterError};
pub use metrics::Metrics;
/// The rustls version the relay's TLS support is built on (feature `tls`).
#[cfg(feature = "tls")]
pub use tokio_rustls::rustls;
pub use turn::{TurnConfig, TurnConfigError};

use backend::{FanOut, SqliteStore, Store};
use state::{FetchQuotas, Registry, ReplayCaches};
use store::StoreLimits;

/// How hard SQLite works to make a commit durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyncMode {
    /// fsync on every commit: survives power loss and OS crashes, not only process crashes.
    Full,
    /// WAL without fsync per commit: survives a process crash (`kill -9`), may lose the last
    /// commits on power loss or an OS crash.
    Normal,
}

/// Relay settings. Start from [`RelayConfig::new`] and adjust fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RelayConfig {
    /// Address for client connections (TCP and WebSocket on the same port).
    pub listen: SocketAddr,
    /// Address for the Prometheus endpoint (`GET /metrics`); `None` disables it.
    pub metrics_listen: Option<SocketAddr>,
    /// SQLite database file (created if missing).
    pub db_path: PathBuf,
    /// Durability of commits.
    pub sync: SyncMode,
    /// Largest frame accepted from a client, in bytes.
    pub max_frame_len: usize,
    /// Most simultaneous connections; more are refused.
    pub max_connections: u64,
    /// Most simultaneous connections from one IP address (authenticated or not); more from
    /// that address are refused. Generous by default: many devices can share an address
    /// behind carrier-grade NAT.
    pub max_connections_per_ip: u32,
    /// Requests per second a connection may make (sustained).
    pub rate_limit_per_sec: u32,
    /// Requests a connection may make in a burst.
    pub rate_limit_burst: u32,
    /// Most envelopes queued for one device, all senders together. When it is full, an
    /// envelope from a sender with at least two fewer queued than the heaviest sender evicts
    /// that sender's oldest envelope; other sends are refused with `QueueFull`.
    pub max_queue_per_device: u32,
    /// Most envelopes one sender may have queued for one recipient; sends beyond are refused
    /// with `SenderQuotaExceeded` while other senders still get through (up to
    /// [`max_queue_per_device`](Self::max_queue_per_device)).
    pub max_queue_per_sender: u32,
    /// Most one-time prekeys stored per device.
    pub max_one_time_prekeys: u32,
    /// Live deliveries buffered per connection; a connection that falls further behind is
    /// closed and reloads its queue on reconnect.
    pub delivery_buffer: usize,
    /// Time an unauthenticated connection may stay open: from accepting it to the end of
    /// authentication (TLS handshake, WebSocket upgrade and challenge–response together). A
    /// connection that idles or trickles bytes without authenticating is closed when it runs
    /// out.
    pub handshake_timeout: Duration,
    /// Envelopes stamped earlier than this before now are refused as stale, and queued
    /// envelopes admitted longer ago than this are deleted unread (see
    /// [`sweep_interval`](Self::sweep_interval)).
    pub max_envelope_age: Duration,
    /// How often expired envelopes are deleted: an envelope stays queued at most
    /// `max_envelope_age + sweep_interval`.
    pub sweep_interval: Duration,
    /// How long one write to a client (a frame, or flushing the buffered ones) may take; a
    /// device that stops reading is cut off when it runs out, freeing its connection slot.
    pub write_timeout: Duration,
    /// An authenticated connection that sends no frame (not even a ping) for this long is
    /// closed. Clients that stay connected while idle must ping more often than this.
    pub idle_timeout: Duration,
    /// One-time prekeys one requesting device may take per minute (bundle fetches that
    /// consume one; the bucket holds as many). Past it, fetches still succeed but come without
    /// a one-time prekey (the base bundle: a session still starts, on the signed and
    /// last-resort prekeys), so a device cannot drain another's one-time prekeys.
    pub prekey_fetches_per_minute: u32,
    /// Envelopes stamped later than this after now are refused as stale.
    pub max_clock_skew: Duration,
    /// Envelope ids remembered per sender to refuse replays.
    pub replay_cache_per_device: usize,
    /// Most store operations per transaction (group commit).
    pub max_batch: usize,
    /// How long an accepted envelope pushed to its online recipient waits for the recipient's
    /// acknowledgement before it is written to the database (envelopes for offline devices are
    /// written at the next group commit). An envelope its online recipient acknowledges within this time
    /// is never written; the sender is answered when the envelope is either committed or
    /// acknowledged, so nothing a sender was told is accepted can be lost in a crash. Longer
    /// means fewer writes and later answers for envelopes to offline devices.
    pub commit_delay: Duration,
    /// The relay's long-term ed25519 key file (created on first start, owner-only). Its public
    /// key is sent in every challenge; devices on a plaintext connection sign over it and may
    /// pin it. Default: `<db_path>.key`. Keep it with the database: a new key makes clients
    /// that pinned the old one refuse this relay.
    pub key_path: PathBuf,
    /// Serve TLS (TCP and WebSocket) with this configuration instead of plain TCP: the
    /// production setting (devices bind their authentication to the TLS connection). Build it
    /// with [`tls_config`] or [`load_tls_config`]; a configuration of your own must keep
    /// `require_ems` set if it allows TLS 1.2 (RFC 9266 §3).
    #[cfg(feature = "tls")]
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// This node's name, the `node` label on every metric; `None`: the listening address.
    pub node_name: Option<String>,
    /// Short-lived TURN credentials for authenticated devices (TURN REST scheme, coturn
    /// `use-auth-secret`); `None`: requests for them are answered `TURN_UNAVAILABLE`.
    pub turn: Option<TurnConfig>,
    /// Run as one node of a cluster on PostgreSQL and NATS (feature `cluster`) instead of on
    /// the SQLite file [`db_path`](Self::db_path) (which is then unused; the key file still
    /// defaults to a path next to it).
    #[cfg(feature = "cluster")]
    pub cluster: Option<ClusterConfig>,
}

impl RelayConfig {
    /// Defaults suitable for a small deployment.
    pub fn new(listen: SocketAddr, db_path: PathBuf) -> Self {
        Self {
            key_path: key::default_path(&db_path),
            listen,
            metrics_listen: None,
            db_path,
            sync: SyncMode::Full,
            max_frame_len: hush_signaling::frame::DEFAULT_MAX_FRAME_LEN,
            max_connections: 100_000,
            max_connections_per_ip: 1000,
            rate_limit_per_sec: 50,
            rate_limit_burst: 200,
            max_queue_per_device: 1000,
            max_queue_per_sender: 100,
            max_one_time_prekeys: 1000,
            delivery_buffer: 1024,
            handshake_timeout: Duration::from_secs(10),
            max_envelope_age: Duration::from_secs(300),
            sweep_interval: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(15 * 60),
            prekey_fetches_per_minute: 30,
            max_clock_skew: Duration::from_secs(60),
            replay_cache_per_device: 4096,
            max_batch: 2048,
            commit_delay: Duration::from_millis(20),
            turn: None,
            node_name: None,
            #[cfg(feature = "tls")]
            tls: None,
            #[cfg(feature = "cluster")]
            cluster: None,
        }
    }
}

/// Errors starting or running the relay.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// Binding or accepting failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The database could not be opened or initialised.
    #[error("database: {0}")]
    Database(#[from] rusqlite::Error),
    /// The TLS certificate or key could not be loaded.
    #[error("tls: {0}")]
    Tls(String),
    /// The relay key file could not be read or created.
    #[error("relay key file {path}: {source}")]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The relay key file does not hold a 32-byte key.
    #[error("relay key file {path} is not a 32-byte ed25519 key")]
    KeyFormat {
        /// The key file.
        path: PathBuf,
    },
    /// The cluster backend (PostgreSQL, NATS) could not be reached or set up.
    #[cfg(feature = "cluster")]
    #[error("cluster: {0}")]
    Cluster(#[from] ClusterError),
}

/// Builds a TLS server configuration (ring provider, TLS 1.2 and 1.3) from a PEM certificate
/// chain and a PEM private key.
#[cfg(feature = "tls")]
pub fn load_tls_config(
    cert_chain_pem: &std::path::Path,
    key_pem: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, RelayError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let tls_err = |e: &dyn std::fmt::Display| RelayError::Tls(e.to_string());
    let certs = CertificateDer::pem_file_iter(cert_chain_pem)
        .map_err(|e| tls_err(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(&e))?;
    let key = PrivateKeyDer::from_pem_file(key_pem).map_err(|e| tls_err(&e))?;
    tls_config(certs, key)
}

/// Builds a TLS server configuration (ring provider, TLS 1.2 with the extended master secret
/// required, and 1.3) from DER certificates and key.
#[cfg(feature = "tls")]
pub fn tls_config(
    certs: Vec<rustls_pki_types::CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, RelayError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RelayError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| RelayError::Tls(e.to_string()))?;
    // RFC 9266 §3: without the extended master secret a TLS 1.2 exporter is not unique to
    // the connection, so it is no channel binding.
    config.require_ems = true;
    Ok(Arc::new(config))
}

/// State shared by all connections.
pub(crate) struct Shared {
    pub(crate) config: RelayConfig,
    /// The durable queue and prekey directory.
    pub(crate) store: Arc<dyn Store>,
    /// Who is online; how new envelopes reach them.
    pub(crate) fanout: Arc<dyn FanOut>,
    pub(crate) replay_caches: ReplayCaches,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) next_conn_id: AtomicU64,
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) tls: Option<io::Tls>,
    /// The relay's public key, sent in every challenge.
    pub(crate) relay_key: [u8; 32],
    /// Open connections per remote address (IPv6: per /64, see [`address_key`]).
    pub(crate) per_ip: Mutex<HashMap<IpAddr, u32>>,
    /// One-time prekeys taken per requesting device.
    pub(crate) fetch_quotas: FetchQuotas,
}

/// What the per-address connection limit counts a peer as: its IPv4 address, or the /64 its
/// IPv6 address is in (one subscriber usually gets a whole /64, so counting single IPv6
/// addresses would let one host open a limit's worth of connections per address it picks).
/// IPv4-mapped IPv6 addresses count as the IPv4 address.
pub(crate) fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(std::net::Ipv6Addr::from(prefix))
            }
        },
    }
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    Total,
    PerAddress,
}

impl Shared {
    /// Counts a connection from `peer` in the open-connection gauge and its address's count,
    /// at accept (before its task runs, so a burst of accepts cannot pass the limits); the
    /// guard uncounts it when the connection ends. Nothing is counted if a limit is reached.
    fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<conn::ConnGuard, Refused> {
        let open = self.metrics.connections.fetch_add(1, Ordering::Relaxed);
        if open >= self.config.max_connections {
            self.metrics.connections.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::Total);
        }
        let key = address_key(peer);
        {
            let mut per_ip = state::lock(&self.per_ip);
            let n = per_ip.entry(key).or_insert(0);
            if *n >= self.config.max_connections_per_ip {
                drop(per_ip);
                self.metrics.connections.fetch_sub(1, Ordering::Relaxed);
                return Err(Refused::PerAddress);
            }
            *n += 1;
        }
        Ok(conn::ConnGuard::new(self.clone(), key))
    }

    /// A connection counted under `key` ended.
    pub(crate) fn release_ip(&self, key: IpAddr) {
        let mut per_ip = state::lock(&self.per_ip);
        if let Some(n) = per_ip.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&key);
            }
        }
    }
}

/// A bound relay, ready to [`serve`](Self::serve).
pub struct Relay {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("listen", &self.local_addr())
            .finish_non_exhaustive()
    }
}

/// Stops a running relay from another task.
#[derive(Clone)]
pub struct ShutdownHandle(watch::Sender<bool>);

impl std::fmt::Debug for ShutdownHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShutdownHandle")
    }
}

impl ShutdownHandle {
    /// Stops accepting connections and closes every open one.
    pub fn shutdown(&self) {
        let _ = self.0.send(true);
    }
}

impl Relay {
    /// Opens the database and binds the listeners.
    pub async fn bind(config: RelayConfig) -> Result<Self, RelayError> {
        let metrics = Arc::new(Metrics::default());
        let registry = Arc::new(Registry::new(metrics.clone()));
        let limits = StoreLimits {
            max_queue_per_device: config.max_queue_per_device,
            max_queue_per_sender: config.max_queue_per_sender,
            max_envelope_age: config.max_envelope_age,
            sweep_interval: config.sweep_interval,
            max_one_time_prekeys: config.max_one_time_prekeys,
            max_batch: config.max_batch.max(1),
            commit_delay: config.commit_delay,
        };
        #[cfg(feature = "cluster")]
        let cluster = match &config.cluster {
            Some(cluster) => Some(Self::cluster(&config, cluster, &metrics, &registry).await?),
            None => None,
        };
        #[cfg(not(feature = "cluster"))]
        let cluster: Option<(Arc<dyn Store>, Arc<dyn FanOut>)> = None;
        let (store, fanout) = match cluster {
            Some(backend) => backend,
            None => {
                let path = config.db_path.clone();
                let sync = config.sync;
                let (m, r) = (metrics.clone(), registry.clone());
                let (ops, pending) =
                    tokio::task::spawn_blocking(move || store::open(&path, sync, limits, m, r))
                        .await
                        .map_err(|_| std::io::Error::other("store setup panicked"))??;
                let store: Arc<dyn Store> = Arc::new(SqliteStore {
                    ops,
                    pending,
                    registry: registry.clone(),
                });
                let fanout: Arc<dyn FanOut> = registry;
                (store, fanout)
            }
        };
        let key_path = config.key_path.clone();
        let relay_key = tokio::task::spawn_blocking(move || key::load_or_create(&key_path))
            .await
            .map_err(|_| std::io::Error::other("relay key setup panicked"))??;
        let listener = TcpListener::bind(config.listen).await?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(metrics::bind(addr).await?),
            None => None,
        };
        let (shutdown, _) = watch::channel(false);
        #[cfg(feature = "tls")]
        let tls = config.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        #[cfg(not(feature = "tls"))]
        let tls = None;
        Ok(Self {
            listener,
            metrics_listener,
            shared: Arc::new(Shared {
                config,
                store,
                fanout,
                replay_caches: ReplayCaches::default(),
                metrics,
                next_conn_id: AtomicU64::new(1),
                shutdown,
                tls,
                relay_key,
                per_ip: Mutex::default(),
                fetch_quotas: FetchQuotas::default(),
            }),
        })
    }

    /// Connects this node to the cluster's PostgreSQL and NATS.
    #[cfg(feature = "cluster")]
    async fn cluster(
        config: &RelayConfig,
        cluster: &ClusterConfig,
        metrics: &Arc<Metrics>,
        registry: &Arc<Registry>,
    ) -> Result<(Arc<dyn Store>, Arc<dyn FanOut>), RelayError> {
        let nats = cluster::connect_nats(&cluster.nats).await?;
        let limits = cluster::PgLimits {
            max_queue_per_device: config.max_queue_per_device,
            max_queue_per_sender: config.max_queue_per_sender,
            max_one_time_prekeys: config.max_one_time_prekeys,
            max_envelope_age: config.max_envelope_age,
            replay_window: config.max_envelope_age + config.max_clock_skew,
        };
        let store = Arc::new(
            cluster::PgStore::connect(
                cluster,
                nats.clone(),
                limits,
                metrics.clone(),
                registry.clone(),
            )
            .await?,
        );
        tokio::spawn(cluster::sweep_loop(
            Arc::downgrade(&store),
            config.sweep_interval,
        ));
        let fanout = Arc::new(cluster::NatsFanOut::new(
            nats,
            registry.clone(),
            store.clone(),
            cluster.poll_interval,
            config.max_queue_per_device,
        ));
        Ok((store, fanout))
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        // A bound listener always has a local address; fall back to the configured one.
        self.listener
            .local_addr()
            .unwrap_or(self.shared.config.listen)
    }

    /// The metrics endpoint's address, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The relay's public key (ed25519), as sent in its challenges: what clients pin in
    /// `RelayClientConfig::relay_key`.
    pub fn public_key(&self) -> [u8; 32] {
        self.shared.relay_key
    }

    /// Live metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// A handle that stops [`serve`](Self::serve).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shared.shutdown.clone())
    }

    /// Accepts and serves connections until shut down.
    pub async fn serve(self) -> Result<(), RelayError> {
        let Self {
            listener,
            metrics_listener,
            shared,
        } = self;
        let mut shutdown = shared.shutdown.subscribe();
        let (addr, key) = (listener.local_addr()?, hex(&shared.relay_key));
        let node: Arc<str> = match &shared.config.node_name {
            Some(name) => name.as_str().into(),
            None => addr.to_string().into(),
        };
        let metrics_task =
            metrics_listener.map(|l| tokio::spawn(metrics::serve(l, shared.metrics.clone(), node)));
        if shared.tls.is_some() {
            tracing::info!(%addr, relay_key = %key, "relay listening (TLS)");
        } else {
            tracing::warn!(%addr, relay_key = %key, "relay listening on plaintext TCP/WebSocket: for local use only; production relays serve TLS (--tls-cert, --tls-key), to which devices bind their authentication");
        }
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.changed() => break,
            };
            match accepted {
                Ok((stream, peer)) => match shared.admit(peer.ip()) {
                    Ok(guard) => {
                        tokio::spawn(conn::run(shared.clone(), stream, peer, guard));
                    }
                    Err(why) => {
                        match why {
                            Refused::Total => {
                                tracing::warn!(%peer, "connection limit reached; refusing");
                            }
                            Refused::PerAddress => {
                                tracing::debug!(%peer, "per-address connection limit reached; refusing");
                            }
                        }
                        shared
                            .metrics
                            .connections_refused
                            .fetch_add(1, Ordering::Relaxed);
                        drop(stream);
                    }
                },
                Err(e) => {
                    // Typically EMFILE: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        shared.fanout.kick_all();
        if let Some(t) = metrics_task {
            t.abort();
        }
        Ok(())
    }
}

/// Lowercase hex, for logging the relay key.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_peers_are_counted_per_64() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // One /64: one count, whatever the interface identifier.
        assert_eq!(
            address_key(ip("2001:db8:1:2::1")),
            address_key(ip("2001:db8:1:2:ffff:ffff:ffff:fffe"))
        );
        assert_eq!(
            address_key(ip("2001:db8:1:2:abcd::7")),
            ip("2001:db8:1:2::")
        );
        // The neighbouring /64 is someone else.
        assert_ne!(
            address_key(ip("2001:db8:1:2::1")),
            address_key(ip("2001:db8:1:3::1"))
        );
        // IPv4 stays per address, also when it arrives IPv4-mapped on a dual-stack socket.
        assert_ne!(address_key(ip("192.0.2.1")), address_key(ip("192.0.2.2")));
        assert_eq!(address_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }
}

//! A tokio driver joining a [`Connection`] to real UDP sockets.
//!
//! The driver only moves bytes and time: it binds one UDP socket per local address, feeds
//! received datagrams and timer expiries to the core, sends what the core emits, and forwards
//! events and media to the application through channels. No protocol logic lives here.
//!
//! TURN over TCP and TLS: for a [`Transmit`] on a stream transport the driver
//! opens one TCP connection (from the host socket's IP address) per socket, server and
//! transport, with a rustls handshake for TLS (roots from [`Config::tls_roots`]), writes the
//! core's messages on it ([`crate::framing::frame_for_stream`]) and cuts what it reads into messages
//! ([`crate::framing::StreamDecoder`]) for [`Connection::handle_stream_message`]. A connection that
//! cannot be opened or breaks is reported to [`Connection::stream_failed`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpSocket, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::candidate::{IceCredentials, PathInfo};
use crate::config::{Config, Role, TlsRoots, Transport, TurnTransport};
use crate::connection::{Connection, Event, Transmit};
use crate::error::Error;
use crate::framing::{frame_for_stream, StreamDecoder};
use crate::interfaces::host_addresses;

/// How many received media datagrams wait for the application before new ones are dropped
/// (like a socket receive buffer).
const DATAGRAM_QUEUE: usize = 4096;
/// Largest UDP datagram read.
const RECV_BUF: usize = 65_536;
/// How long opening a TCP connection (and the TLS handshake) to a TURN server may take.
const STREAM_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Which local addresses the driver binds sockets on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Bind {
    /// Every usable interface address (see [`host_addresses`]); rescanned on ICE restart so a
    /// changed address is picked up.
    Interfaces,
    /// Exactly these addresses (port chosen by the OS).
    Addresses(Vec<IpAddr>),
}

enum Command {
    SetRemoteCredentials(IceCredentials, oneshot::Sender<Result<(), Error>>),
    AddRemoteCandidate(String, oneshot::Sender<Result<(), Error>>),
    RemoteGatheringComplete,
    Send(Vec<u8>),
    Restart(oneshot::Sender<Result<IceCredentials, Error>>),
    NetworkChanged(oneshot::Sender<Result<IceCredentials, Error>>),
    Path(oneshot::Sender<Option<PathInfo>>),
    LocalSockets(oneshot::Sender<Vec<SocketAddr>>),
    Close(oneshot::Sender<()>),
}

/// A running connection: the handle for commands plus the event and media receivers.
#[derive(Debug)]
pub struct Started {
    /// Commands to the connection. Cloneable.
    pub handle: Handle,
    /// Events: candidates to trickle, state changes, path selection, restarts, errors.
    pub events: mpsc::UnboundedReceiver<Event>,
    /// Media datagrams received from the peer, unchanged.
    pub datagrams: mpsc::Receiver<Vec<u8>>,
    /// The initial local ICE credentials, to send to the peer.
    pub credentials: IceCredentials,
}

/// Sends commands to a driver task. Dropping every handle closes the connection.
#[derive(Debug, Clone)]
pub struct Handle {
    tx: mpsc::UnboundedSender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl Handle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)
    }

    /// Gives the peer's ICE credentials (starts checks; new ones make this side restart).
    pub async fn set_remote_credentials(&self, credentials: IceCredentials) -> Result<(), Error> {
        self.ask(|tx| Command::SetRemoteCredentials(credentials, tx))
            .await?
    }

    /// Adds a candidate received from the peer.
    pub async fn add_remote_candidate(&self, line: impl Into<String>) -> Result<(), Error> {
        let line = line.into();
        self.ask(|tx| Command::AddRemoteCandidate(line, tx)).await?
    }

    /// The peer has sent all its candidates of the current generation (its
    /// [`Event::GatheringComplete`] relayed over signaling). Optional; lets
    /// [`Error::NoRoute`] come as soon as every pair has failed (see
    /// [`Connection::remote_gathering_complete`]).
    pub fn remote_gathering_complete(&self) -> Result<(), Error> {
        self.tx
            .send(Command::RemoteGatheringComplete)
            .map_err(|_| Error::Closed)
    }

    /// Sends a media datagram on the selected path. Fire-and-forget, like UDP. Before the first
    /// path is selected the newest few are held for it ([`Connection::send_datagram`]); once
    /// the connection has failed, a datagram is dropped.
    ///
    /// [`Connection::send_datagram`]: crate::Connection::send_datagram
    pub fn send(&self, datagram: Vec<u8>) -> Result<(), Error> {
        self.tx
            .send(Command::Send(datagram))
            .map_err(|_| Error::Closed)
    }

    /// ICE restart (for example after a network change): rescans interfaces, gathers again,
    /// and returns the new credentials to send to the peer.
    pub async fn restart(&self) -> Result<IceCredentials, Error> {
        self.ask(Command::Restart).await?
    }

    /// The device changed network (Wi-Fi → mobile, an address changed, or the app just wants
    /// fresh sockets): binds new sockets per the configured [`Bind`] (new ports, even on the
    /// same addresses), switches the connection to them, closes the old ones (after sending the
    /// release of any TURN allocation made from them), and restarts ICE.
    ///
    /// Returns the new local credentials. The same credentials come out as
    /// [`Event::Restarted`], followed by the new candidates as [`Event::LocalCandidate`];
    /// relay them to the peer like any restart (credentials first, then candidates; sending
    /// them from the event alone is enough, a duplicate is ignored by the peer).
    ///
    /// **What the peer does**: on receiving the new credentials it calls
    /// [`Handle::set_remote_credentials`] with them and then [`Handle::add_remote_candidate`]
    /// for each candidate that follows. That call makes the peer restart too: it emits its own
    /// [`Event::Restarted`] with its new credentials (and then its candidates), which go back
    /// to this side the same way and are given to this side's
    /// [`Handle::set_remote_credentials`]. This side does not restart again (its remote
    /// credentials were cleared by its own restart), so there is no ping-pong. The peer never
    /// calls [`Handle::restart`] itself for this.
    ///
    /// When returns, the old sockets are closed. Fails with [`Error::InvalidConfig`] (and
    /// changes nothing) if no socket could be bound, for example while no network is up; call
    /// it again when one is.
    pub async fn network_changed(&self) -> Result<IceCredentials, Error> {
        self.ask(Command::NetworkChanged).await?
    }

    /// The selected path, if any.
    pub async fn path(&self) -> Result<Option<PathInfo>, Error> {
        self.ask(Command::Path).await
    }

    /// The local sockets the driver currently uses.
    pub async fn local_sockets(&self) -> Result<Vec<SocketAddr>, Error> {
        self.ask(Command::LocalSockets).await
    }

    /// Closes the connection (releasing TURN allocations) and stops the driver.
    pub async fn close(&self) -> Result<(), Error> {
        self.ask(Command::Close).await
    }
}

struct Sock {
    socket: Arc<UdpSocket>,
    reader: JoinHandle<()>,
}

type Received = (Instant, SocketAddr, SocketAddr, Vec<u8>);

/// A stream to a TURN server: (host socket it belongs to, server, transport).
type StreamKey = (SocketAddr, SocketAddr, Transport);

/// What a stream task reports.
enum StreamIn {
    /// One complete STUN/ChannelData message, and when it was read.
    Message(StreamKey, Instant, Vec<u8>),
    /// The stream with this id could not be opened or broke.
    Failed(StreamKey, u64, String),
}

struct Stream {
    id: u64,
    tx: mpsc::UnboundedSender<Vec<u8>>,
}

struct Driver {
    conn: Connection,
    bind: Bind,
    include_loopback: bool,
    sockets: HashMap<SocketAddr, Sock>,
    pkt_tx: mpsc::Sender<Received>,
    streams: HashMap<StreamKey, Stream>,
    next_stream: u64,
    stream_tx: mpsc::Sender<StreamIn>,
    tls: Option<Arc<ClientConfig>>,
    tls_names: HashMap<SocketAddr, String>,
    events: mpsc::UnboundedSender<Event>,
    datagrams: mpsc::Sender<Vec<u8>>,
    last_now: Instant,
}

/// Binds sockets, starts gathering and spawns the driver task on the current tokio runtime.
pub async fn start(config: Config, role: Role, bind: Bind) -> Result<Started, Error> {
    let now = Instant::now();
    let include_loopback = config.include_loopback();
    let tls_names: HashMap<SocketAddr, String> = config
        .turn_servers()
        .iter()
        .filter_map(|t| match &t.transport {
            TurnTransport::Tls { server_name } => Some((t.addr, server_name.clone())),
            _ => None,
        })
        .collect();
    let tls = if tls_names.is_empty() {
        None
    } else {
        Some(tls_config(config.tls_roots())?)
    };
    let conn = Connection::new(config, role, now)?;
    let credentials = conn.local_credentials();
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let (dg_tx, dg_rx) = mpsc::channel(DATAGRAM_QUEUE);
    let (pkt_tx, pkt_rx) = mpsc::channel(1024);
    let (stream_tx, stream_rx) = mpsc::channel(1024);
    let mut driver = Driver {
        conn,
        bind,
        include_loopback,
        sockets: HashMap::new(),
        pkt_tx,
        streams: HashMap::new(),
        next_stream: 0,
        stream_tx,
        tls,
        tls_names,
        events: ev_tx,
        datagrams: dg_tx,
        last_now: now,
    };
    driver.rescan().await?;
    if driver.sockets.is_empty() {
        return Err(Error::InvalidConfig("no usable local address to bind"));
    }
    tokio::spawn(driver.run(cmd_rx, pkt_rx, stream_rx));
    Ok(Started {
        handle: Handle { tx: cmd_tx },
        events: ev_rx,
        datagrams: dg_rx,
        credentials,
    })
}

impl Driver {
    fn now(&mut self) -> Instant {
        let n = Instant::now().max(self.last_now);
        self.last_now = n;
        n
    }

    fn wanted(&self) -> Vec<IpAddr> {
        match &self.bind {
            Bind::Interfaces => host_addresses(self.include_loopback),
            Bind::Addresses(a) => a.clone(),
        }
    }

    /// Binds sockets on new addresses, drops those on vanished ones, and tells the core.
    async fn rescan(&mut self) -> Result<(), Error> {
        let wanted = self.wanted();
        let gone: Vec<SocketAddr> = self
            .sockets
            .keys()
            .filter(|a| !wanted.contains(&a.ip()))
            .copied()
            .collect();
        for addr in gone {
            if let Some(s) = self.sockets.remove(&addr) {
                s.reader.abort();
            }
            let now = self.now();
            self.conn.remove_local_socket(now, addr);
            tracing::info!(%addr, "local address gone");
        }
        let mut added = Vec::new();
        for ip in wanted {
            if self.sockets.keys().any(|a| a.ip() == ip) {
                continue;
            }
            let Some((local, sock)) = self.bind_one(ip).await else {
                continue;
            };
            self.sockets.insert(local, sock);
            added.push(local);
        }
        if !added.is_empty() {
            let now = self.now();
            self.conn.add_local_sockets(now, &added);
        }
        Ok(())
    }

    /// Binds one socket on `ip`, port chosen by the OS, and starts its reader.
    async fn bind_one(&self, ip: IpAddr) -> Option<(SocketAddr, Sock)> {
        let socket = match UdpSocket::bind(SocketAddr::new(ip, 0)).await {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::warn!(%ip, error = %e, "cannot bind");
                return None;
            }
        };
        let local = match socket.local_addr() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(%ip, error = %e, "bound socket has no address");
                return None;
            }
        };
        let reader = tokio::spawn(read_loop(socket.clone(), local, self.pkt_tx.clone()));
        Some((local, Sock { socket, reader }))
    }

    /// Replaces every socket by fresh ones and restarts ICE (see [`Handle::network_changed`]).
    async fn network_changed(&mut self) -> Result<IceCredentials, Error> {
        let mut fresh = Vec::new();
        for ip in self.wanted() {
            if let Some(s) = self.bind_one(ip).await {
                fresh.push(s);
            }
        }
        if fresh.is_empty() {
            return Err(Error::InvalidConfig("no usable local address to bind"));
        }
        let old: Vec<SocketAddr> = self.sockets.keys().copied().collect();
        let addrs: Vec<SocketAddr> = fresh.iter().map(|(a, _)| *a).collect();
        self.sockets.extend(fresh);
        let now = self.now();
        let result = self.conn.network_changed(now, &addrs);
        let retire = if result.is_ok() { old } else { addrs };
        // Release requests for allocations on the old sockets go out before they close.
        self.flush().await;
        for addr in retire {
            if let Some(s) = self.sockets.remove(&addr) {
                s.reader.abort();
                // Resolves once the reader (and its handle on the socket) is dropped.
                let _ = s.reader.await;
                drop(s.socket);
                tracing::info!(%addr, "socket closed after network change");
            }
            // Dropping the sender lets the stream task write what is queued, then close.
            self.streams.retain(|k, _| k.0 != addr);
        }
        result
    }

    /// Queues a message on the stream for `t`, opening the stream first if needed.
    fn stream_send(&mut self, t: Transmit) {
        let key = (t.source, t.destination, t.transport);
        if !self.sockets.contains_key(&t.source) {
            tracing::debug!(source = %t.source, "stream message for a retired socket dropped");
            return;
        }
        if !self.streams.contains_key(&key) {
            let tls = match t.transport {
                Transport::Tls => {
                    let name = self
                        .tls_names
                        .get(&t.destination)
                        .cloned()
                        .unwrap_or_else(|| t.destination.ip().to_string());
                    Some((self.tls.clone(), name))
                }
                _ => None,
            };
            let (tx, rx) = mpsc::unbounded_channel();
            let id = self.next_stream;
            self.next_stream += 1;
            tokio::spawn(stream_task(key, id, tls, rx, self.stream_tx.clone()));
            self.streams.insert(key, Stream { id, tx });
        }
        if let Some(s) = self.streams.get(&key) {
            let _ = s.tx.send(t.contents);
        }
    }

    fn stream_in(&mut self, msg: StreamIn) {
        match msg {
            StreamIn::Message(key, at, bytes) => {
                let now = at.max(self.last_now);
                self.last_now = now;
                self.conn
                    .handle_stream_message(now, key.0, key.1, key.2, &bytes);
            }
            StreamIn::Failed(key, id, reason) => {
                if self.streams.get(&key).is_some_and(|s| s.id == id) {
                    self.streams.remove(&key);
                    let now = self.now();
                    self.conn.stream_failed(now, key.0, key.1, key.2, reason);
                }
            }
        }
    }

    async fn flush(&mut self) {
        loop {
            let mut restarted = false;
            while let Some(t) = self.conn.poll_transmit() {
                if t.transport != Transport::Udp {
                    self.stream_send(t);
                } else if let Some(s) = self.sockets.get(&t.source) {
                    if let Err(e) = s.socket.send_to(&t.contents, t.destination).await {
                        tracing::debug!(to = %t.destination, error = %e, "send failed");
                    }
                }
            }
            while let Some(d) = self.conn.recv_datagram() {
                if self.datagrams.try_send(d).is_err() {
                    tracing::trace!("datagram queue full; dropped");
                }
            }
            while let Some(ev) = self.conn.poll_event() {
                if matches!(ev, Event::Restarted { .. }) {
                    restarted = true;
                }
                let _ = self.events.send(ev);
            }
            if restarted && self.bind == Bind::Interfaces {
                if let Err(e) = self.rescan().await {
                    tracing::warn!(error = %e, "interface rescan failed");
                }
                continue;
            }
            break;
        }
    }

    async fn run(
        mut self,
        mut cmds: mpsc::UnboundedReceiver<Command>,
        mut pkts: mpsc::Receiver<Received>,
        mut stream_in: mpsc::Receiver<StreamIn>,
    ) {
        loop {
            self.flush().await;
            let deadline = self.conn.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                cmd = cmds.recv() => {
                    let Some(cmd) = cmd else { break };
                    if self.command(cmd).await {
                        break;
                    }
                }
                pkt = pkts.recv() => {
                    let Some((at, from, local, bytes)) = pkt else { break };
                    let now = at.max(self.last_now);
                    self.last_now = now;
                    self.conn.handle_packet(now, from, local, &bytes);
                }
                Some(msg) = stream_in.recv() => self.stream_in(msg),
                () = sleep => {
                    let now = self.now();
                    self.conn.handle_timeout(now);
                }
            }
        }
        let now = self.now();
        self.conn.close(now);
        self.flush().await;
        for (_, s) in self.sockets.drain() {
            s.reader.abort();
        }
    }

    /// Runs one command; returns true when the driver must stop.
    async fn command(&mut self, cmd: Command) -> bool {
        let now = self.now();
        match cmd {
            Command::SetRemoteCredentials(c, reply) => {
                let _ = reply.send(self.conn.set_remote_credentials(now, c));
            }
            Command::AddRemoteCandidate(line, reply) => {
                let _ = reply.send(self.conn.add_remote_candidate(now, &line));
            }
            Command::RemoteGatheringComplete => self.conn.remote_gathering_complete(now),
            Command::Send(d) => {
                if let Err(e) = self.conn.send_datagram(now, &d) {
                    tracing::trace!(error = %e, "datagram not sent");
                }
            }
            Command::Restart(reply) => {
                let r = self.conn.restart(now);
                let _ = reply.send(r);
            }
            Command::NetworkChanged(reply) => {
                let r = self.network_changed().await;
                let _ = reply.send(r);
            }
            Command::Path(reply) => {
                let _ = reply.send(self.conn.path(now));
            }
            Command::LocalSockets(reply) => {
                let _ = reply.send(self.sockets.keys().copied().collect());
            }
            Command::Close(reply) => {
                self.conn.close(now);
                self.flush().await;
                let _ = reply.send(());
                return true;
            }
        }
        false
    }
}

async fn read_loop(socket: Arc<UdpSocket>, local: SocketAddr, tx: mpsc::Sender<Received>) {
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, from)) => {
                let at = Instant::now();
                let Some(bytes) = buf.get(..n) else { continue };
                if tx.send((at, from, local, bytes.to_vec())).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // ICMP errors (connection refused) surface here on Linux; keep reading.
                tracing::trace!(%local, error = %e, "recv error");
                if e.kind() == std::io::ErrorKind::InvalidInput {
                    return;
                }
            }
        }
    }
}

/// The rustls client configuration for TURN over TLS, on the ring provider.
fn tls_config(roots: &TlsRoots) -> Result<Arc<ClientConfig>, Error> {
    let mut store = RootCertStore::empty();
    match roots {
        TlsRoots::WebPki => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        TlsRoots::Custom(certs) => {
            for der in certs {
                if let Err(e) = store.add(CertificateDer::from(der.clone())) {
                    tracing::warn!(error = %e, "TLS root certificate ignored");
                }
            }
        }
    }
    if store.is_empty() {
        return Err(Error::InvalidConfig("no usable TLS root certificate"));
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|_| Error::InvalidConfig("TLS protocol versions"))?
        .with_root_certificates(store)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Opens the stream for `key` and runs it until the driver drops its sender (clean close) or
/// it fails (reported with `id`).
async fn stream_task(
    key: StreamKey,
    id: u64,
    tls: Option<(Option<Arc<ClientConfig>>, String)>,
    rx: mpsc::UnboundedReceiver<Vec<u8>>,
    out: mpsc::Sender<StreamIn>,
) {
    if let Err(reason) = run_stream(key, tls, rx, &out).await {
        let _ = out.send(StreamIn::Failed(key, id, reason)).await;
    }
}

async fn run_stream(
    key: StreamKey,
    tls: Option<(Option<Arc<ClientConfig>>, String)>,
    rx: mpsc::UnboundedReceiver<Vec<u8>>,
    out: &mpsc::Sender<StreamIn>,
) -> Result<(), String> {
    let (local, server, _) = key;
    let socket = if server.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(SocketAddr::new(local.ip(), 0))
        .map_err(|e| format!("bind {}: {e}", local.ip()))?;
    let tcp = tokio::time::timeout(STREAM_CONNECT_TIMEOUT, socket.connect(server))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    match tls {
        None => pump_stream(key, tcp, rx, out).await,
        Some((config, name)) => {
            let config = config.ok_or_else(|| "no TLS configuration".to_owned())?;
            let name = ServerName::try_from(name.clone())
                .map_err(|_| format!("invalid TLS server name {name:?}"))?;
            let tls = tokio::time::timeout(
                STREAM_CONNECT_TIMEOUT,
                TlsConnector::from(config).connect(name, tcp),
            )
            .await
            .map_err(|_| "TLS handshake timed out".to_owned())?
            .map_err(|e| format!("TLS handshake: {e}"))?;
            pump_stream(key, tls, rx, out).await
        }
    }
}

async fn pump_stream<S: AsyncRead + AsyncWrite + Unpin>(
    key: StreamKey,
    stream: S,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    out: &mpsc::Sender<StreamIn>,
) -> Result<(), String> {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut decoder = StreamDecoder::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(m) => writer
                    .write_all(&frame_for_stream(&m))
                    .await
                    .map_err(|e| format!("write: {e}"))?,
                None => {
                    let _ = writer.shutdown().await;
                    return Ok(());
                }
            },
            n = reader.read(&mut buf) => {
                let n = n.map_err(|e| format!("read: {e}"))?;
                let Some(bytes) = buf.get(..n).filter(|b| !b.is_empty()) else {
                    return Err("closed by the server".to_owned());
                };
                decoder.push(bytes);
                let at = Instant::now();
                while let Some(m) = decoder.next_message().map_err(|e| e.to_string())? {
                    if out.send(StreamIn::Message(key, at, m)).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

//! A tokio driver joining a [`Connection`] to real UDP sockets.
//!
//! The driver only moves bytes and time: it binds one UDP socket per local address, feeds
//! received datagrams and timer expiries to the core, sends what the core emits, and forwards
//! events and media to the application through channels. No protocol logic lives here.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::candidate::{IceCredentials, PathInfo};
use crate::config::{Config, Role};
use crate::connection::{Connection, Event};
use crate::error::Error;
use crate::interfaces::host_addresses;

/// How many received media datagrams wait for the application before new ones are dropped
/// (like a socket receive buffer).
const DATAGRAM_QUEUE: usize = 4096;
/// Largest UDP datagram read.
const RECV_BUF: usize = 65_536;

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

    /// Sends a media datagram on the selected path. Fire-and-forget, like UDP: a datagram sent
    /// before a path exists is dropped.
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

struct Driver {
    conn: Connection,
    bind: Bind,
    include_loopback: bool,
    sockets: HashMap<SocketAddr, Sock>,
    pkt_tx: mpsc::Sender<Received>,
    events: mpsc::UnboundedSender<Event>,
    datagrams: mpsc::Sender<Vec<u8>>,
    last_now: Instant,
}

/// Binds sockets, starts gathering and spawns the driver task on the current tokio runtime.
pub async fn start(config: Config, role: Role, bind: Bind) -> Result<Started, Error> {
    let now = Instant::now();
    let include_loopback = config.include_loopback();
    let conn = Connection::new(config, role, now)?;
    let credentials = conn.local_credentials();
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let (dg_tx, dg_rx) = mpsc::channel(DATAGRAM_QUEUE);
    let (pkt_tx, pkt_rx) = mpsc::channel(1024);
    let mut driver = Driver {
        conn,
        bind,
        include_loopback,
        sockets: HashMap::new(),
        pkt_tx,
        events: ev_tx,
        datagrams: dg_tx,
        last_now: now,
    };
    driver.rescan().await?;
    if driver.sockets.is_empty() {
        return Err(Error::InvalidConfig("no usable local address to bind"));
    }
    tokio::spawn(driver.run(cmd_rx, pkt_rx));
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
        }
        result
    }

    async fn flush(&mut self) {
        loop {
            let mut restarted = false;
            while let Some(t) = self.conn.poll_transmit() {
                if let Some(s) = self.sockets.get(&t.source) {
                    if let Err(e) = s.socket.send_to(&t.contents, t.destination).await {
                        tracing::debug!(to = %t.destination, error = %e, "send failed");
                    }
                }
            }
            while let Some(d) = self.conn.poll_datagram() {
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

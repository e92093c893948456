//! A thin tokio driver for the [`Sfu`] core: one UDP port for the media of every participant
//! (ICE-lite), and a TCP listener for the signaling channel ([`crate::control`]).
//!
//! ```text
//!  TCP conn task ──Join / UpdateRoster / Leave──▶ ┌──────────── main task ───────────┐
//!        ▲                                        │ Sfu core, legs, ICE-lite demux   │
//!        └──── Accepted, notices (per leg) ────── │ UDP: STUN → ufrag → leg (verify) │ ◀─▶ UDP
//!                                                 │      SRTP → source addr → leg    │
//!                                                 └──────────────────────────────────┘
//! ```
//!
//! Demultiplexing: a STUN connectivity check names its leg by the SFU-side ICE ufrag (derived
//! at join) and must verify with that leg's ICE password; the source address of the latest
//! check that verified is the leg's path. SRTP/SRTCP datagrams are handed to the leg of their
//! source address (the core then checks the SSRC against the leg's declared streams and
//! authenticates with the leg's hop key). Datagrams from an address no verified check came
//! from are dropped: a path is only ever bound by someone who holds the leg's ICE password.
//!
//! All protocol decisions are the core's; this module moves bytes and time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, info, trace, warn};
use zeroize::Zeroizing;

use crate::control::{read_frame, write_frame, ClientMessage, Notice, NoticeSealer, ServerMessage};
use crate::ice;
use crate::join::{SfuPublicKey, SfuSigningKey, StreamDecl};
use crate::sfu::{Event, LeaveReason, Sfu, SfuConfig};
use crate::{CallId, DeviceId, LegId};

/// Largest UDP datagram read.
const RECV_BUF: usize = 2048;

/// Most datagrams read in one turn of the run loop (each one's output is sent before the next
/// is read); then the other sources (commands, timers) get their turn, and after a full batch
/// the other tasks of the runtime (signaling connections) too.
const RECV_BATCH: usize = 64;

/// Where the deadline timer waits while the core has no deadline.
const NO_DEADLINE: Duration = Duration::from_secs(24 * 3600);

/// Where the driver listens and how long it waits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// UDP address for the media of every participant (port 0: chosen by the OS).
    pub media: SocketAddr,
    /// TCP address of the signaling channel.
    pub signal: SocketAddr,
    /// The address announced to clients as the SFU's ICE host candidate; `None` announces the
    /// bound media address (right when it is not a wildcard address).
    pub announce: Option<SocketAddr>,
    /// The core's configuration.
    pub sfu: SfuConfig,
    /// How long a new signaling connection may take to send its join. Default 10 s.
    pub join_timeout: Duration,
    /// A leg with no verified connectivity check and no authenticated media for this long
    /// (counted from its join) is dropped as gone, and its signaling connection closed. ICE
    /// consent checks (RFC 7675) come every 4–6 s, so keep it well above that. Default 30 s.
    pub leg_timeout: Duration,
    /// Most signaling connections open at once (joined or not); more are closed at accept.
    /// Default 4096.
    pub max_connections: usize,
    /// Serve Prometheus metrics at `http://ADDR/metrics` (see [`crate::metrics`]). Default none.
    pub metrics: Option<SocketAddr>,
    /// Messages queued for one signaling connection; a client that lets it fill (does not read)
    /// is dropped from the call. Default 1024.
    pub notice_queue: usize,
    /// Frames per second a joined client may send on the signaling channel (token bucket with
    /// a burst of twice that); faster closes the connection (and leaves the call). Default 20.
    pub frames_per_second: u32,
}

impl ServerConfig {
    /// Defaults, listening on the given addresses.
    pub fn new(media: SocketAddr, signal: SocketAddr) -> Self {
        Self {
            media,
            signal,
            announce: None,
            sfu: SfuConfig::default(),
            join_timeout: Duration::from_secs(10),
            leg_timeout: Duration::from_secs(30),
            max_connections: 4096,
            metrics: None,
            notice_queue: 1024,
            frames_per_second: 20,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Binding a socket failed.
    #[error("bind: {0}")]
    Io(#[from] std::io::Error),
    /// The core refused the configuration.
    #[error(transparent)]
    Sfu(#[from] crate::Error),
    /// The server task is gone.
    #[error("server stopped")]
    Stopped,
}

/// Counters of the driver (the core keeps per-leg counters of its own).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// Connectivity checks answered.
    pub checks_answered: u64,
    /// STUN datagrams refused (malformed, unknown ufrag, integrity).
    pub checks_refused: u64,
    /// Media datagrams from an address no verified check came from.
    pub media_unknown_source: u64,
    /// Media datagrams the core dropped (counted per leg there too).
    pub media_dropped: u64,
    /// Datagrams of other protocols (DTLS, garbage), dropped.
    pub other_dropped: u64,
    /// Transmits for a leg with no path yet (its first check has not arrived).
    pub no_path: u64,
    /// Joins accepted.
    pub joins: u64,
    /// Joins refused.
    pub joins_refused: u64,
    /// Legs dropped for silence (no check, no media for `leg_timeout`).
    pub legs_timed_out: u64,
    /// Legs dropped because their signaling queue overflowed (the client did not read).
    pub slow_consumers: u64,
    /// Signaling connections closed for sending frames faster than allowed.
    pub rate_limited: u64,
    /// Legs currently known.
    pub legs: usize,
    /// Calls currently known (with at least one leg).
    pub calls: usize,
    /// Media datagrams received from a bound path.
    pub packets_in: u64,
    /// Bytes of those.
    pub bytes_in: u64,
    /// Datagrams sent to participants (forwarded media, NACK resends, relayed RTCP).
    pub packets_out: u64,
    /// Bytes of those.
    pub bytes_out: u64,
    /// Simulcast layer switches since the server started (from the core).
    pub layer_switches: u64,
    /// Per-leg figures of the legs in calls now (from the core), sorted by leg.
    pub leg_metrics: Vec<LegMetrics>,
}

/// What the metrics endpoint shows of one leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegMetrics {
    /// The leg.
    pub leg: LegId,
    /// The congestion controller's estimate of the path to the participant, once it sent
    /// transport-wide feedback.
    pub estimate_bps: Option<u64>,
    /// Loss on the path to the participant over the last second of feedback, in 1/1000.
    pub loss_permille: u32,
    /// Round-trip time, in microseconds, once known.
    pub rtt_us: Option<u64>,
    /// Simulcast layer switches made for this receiver.
    pub layer_switches: u64,
    /// Packets forwarded to it.
    pub forwarded: u64,
    /// Packets resent to it from the SFU's cache in answer to its NACKs.
    pub retransmitted: u64,
    /// Sequence numbers of its video the SFU asked it to resend (uplink loss; retries counted).
    pub uplink_nacked: u64,
    /// Of those, packets that then arrived from it (resent, or only late).
    pub uplink_recovered: u64,
    /// Times the SFU gave up asking it for missing video of one SSRC (too much missing).
    pub uplink_given_up: u64,
    /// Simulcast layers it stopped because its uplink could not carry them (RTCP BYE).
    pub layers_stopped: u64,
}

pub(crate) enum Cmd {
    Join {
        request: Vec<u8>,
        roster: Option<Vec<u8>>,
        out: mpsc::Sender<ServerMessage>,
        reply: oneshot::Sender<Option<LegId>>,
    },
    Roster {
        leg: LegId,
        roster: Vec<u8>,
    },
    Mute {
        leg: LegId,
        muted: bool,
    },
    Video {
        leg: LegId,
        enabled: bool,
    },
    View {
        leg: LegId,
        source: u32,
        max_height: u16,
    },
    Leave {
        leg: LegId,
    },
    Stats(oneshot::Sender<DriverStats>),
    RateLimited,
    Shutdown,
}

/// A running SFU: its addresses and key, and a handle to stop it.
#[derive(Debug)]
pub struct Server {
    media: SocketAddr,
    signal: SocketAddr,
    public_key: SfuPublicKey,
    cmd: mpsc::UnboundedSender<Cmd>,
    main: JoinHandle<()>,
    accept: JoinHandle<()>,
    metrics: Option<(SocketAddr, JoinHandle<()>)>,
}

impl Server {
    /// Binds the media and signaling sockets and spawns the driver on the current runtime.
    pub async fn start(config: ServerConfig, key: SfuSigningKey) -> Result<Self, ServerError> {
        let public_key = key.public_key();
        let sfu = Sfu::new(config.sfu.clone(), key)?;
        let socket = Arc::new(UdpSocket::bind(config.media).await?);
        let media = socket.local_addr()?;
        let listener = TcpListener::bind(config.signal).await?;
        let signal = listener.local_addr()?;
        let metrics_listener = match config.metrics {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        let announce = config.announce.unwrap_or(media);
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let main = Main {
            sfu,
            socket,
            announce,
            leg_timeout: config.leg_timeout,
            legs: HashMap::new(),
            pending: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            stats: DriverStats::default(),
            last_now: Instant::now(),
        };
        let main = tokio::spawn(main.run(cmd_rx));
        let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
        let limits = ConnLimits {
            join_timeout: config.join_timeout,
            notice_queue: config.notice_queue,
            frames_per_second: config.frames_per_second.max(1),
        };
        let accept = tokio::spawn(accept_loop(listener, cmd_tx.clone(), limits, slots));
        let metrics = match metrics_listener {
            Some(l) => {
                let addr = l.local_addr()?;
                Some((addr, tokio::spawn(crate::metrics::serve(l, cmd_tx.clone()))))
            }
            None => None,
        };
        info!(%media, %signal, key = ?public_key, "sfu listening");
        Ok(Self {
            media,
            signal,
            public_key,
            cmd: cmd_tx,
            main,
            accept,
            metrics,
        })
    }

    /// The bound UDP media address.
    pub fn media_addr(&self) -> SocketAddr {
        self.media
    }

    /// The bound TCP signaling address.
    pub fn signal_addr(&self) -> SocketAddr {
        self.signal
    }

    /// The bound metrics address, if metrics are served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(a, _)| *a)
    }

    /// The SFU's public key (what clients are configured with).
    pub fn public_key(&self) -> SfuPublicKey {
        self.public_key
    }

    /// The driver's counters.
    pub async fn stats(&self) -> Result<DriverStats, ServerError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Stats(tx))
            .map_err(|_| ServerError::Stopped)?;
        rx.await.map_err(|_| ServerError::Stopped)
    }

    /// Stops accepting, closes every signaling connection (clients see the call end) and
    /// stops the driver.
    pub async fn shutdown(self) {
        self.accept.abort();
        if let Some((_, task)) = &self.metrics {
            task.abort();
        }
        let _ = self.cmd.send(Cmd::Shutdown);
        let _ = self.main.await;
    }
}

/// Per-connection limits of the signaling channel.
#[derive(Clone, Copy, Debug)]
struct ConnLimits {
    join_timeout: Duration,
    notice_queue: usize,
    frames_per_second: u32,
}

async fn accept_loop(
    listener: TcpListener,
    cmd: mpsc::UnboundedSender<Cmd>,
    limits: ConnLimits,
    slots: Arc<Semaphore>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    debug!(%peer, "too many signaling connections; closed");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let cmd = cmd.clone();
                tokio::spawn(async move {
                    serve_conn(stream, peer, cmd, limits).await;
                    drop(permit);
                });
            }
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One signaling connection: the join, then notices out and roster updates in.
async fn serve_conn(
    stream: TcpStream,
    peer: SocketAddr,
    cmd: mpsc::UnboundedSender<Cmd>,
    limits: ConnLimits,
) {
    let (mut rd, mut wr) = stream.into_split();
    let first = tokio::time::timeout(limits.join_timeout, read_frame(&mut rd)).await;
    let body = match first {
        Ok(Ok(Some(body))) => body,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "signaling read failed before join");
            return;
        }
        Err(_) => {
            debug!(%peer, "no join in time");
            return;
        }
    };
    let (request, roster) = match ClientMessage::decode(&body) {
        Ok(ClientMessage::Join { request, roster }) => (request, roster),
        other => {
            debug!(%peer, ?other, "first signaling frame is not a join");
            let refuse = ServerMessage::Refused {
                reason: "expected a join".into(),
            };
            let _ = write_frame(&mut wr, &refuse.encode()).await;
            return;
        }
    };
    let (out_tx, mut out_rx) = mpsc::channel(limits.notice_queue.max(2));
    let (reply_tx, reply_rx) = oneshot::channel();
    if cmd
        .send(Cmd::Join {
            request,
            roster,
            out: out_tx,
            reply: reply_tx,
        })
        .is_err()
    {
        return;
    }
    let leg = reply_rx.await.ok().flatten();
    // The reader: roster updates in; the end of the stream is leaving.
    let reader = leg.map(|leg| {
        let cmd = cmd.clone();
        tokio::spawn(async move {
            let rate = f64::from(limits.frames_per_second);
            let burst = 2.0 * rate;
            let mut tokens = burst;
            let mut last = Instant::now();
            loop {
                let frame = read_frame(&mut rd).await;
                let now = Instant::now();
                tokens =
                    (tokens + now.saturating_duration_since(last).as_secs_f64() * rate).min(burst);
                last = now;
                if tokens < 1.0 {
                    debug!(%leg, "signaling frames too fast; closing");
                    let _ = cmd.send(Cmd::RateLimited);
                    break;
                }
                tokens -= 1.0;
                match frame {
                    Ok(Some(body)) => match ClientMessage::decode(&body) {
                        Ok(ClientMessage::UpdateRoster { roster }) => {
                            let _ = cmd.send(Cmd::Roster { leg, roster });
                        }
                        Ok(ClientMessage::SetMuted { muted }) => {
                            let _ = cmd.send(Cmd::Mute { leg, muted });
                        }
                        Ok(ClientMessage::SetVideo { enabled }) => {
                            let _ = cmd.send(Cmd::Video { leg, enabled });
                        }
                        Ok(ClientMessage::RequestView { source, max_height }) => {
                            let _ = cmd.send(Cmd::View {
                                leg,
                                source,
                                max_height,
                            });
                        }
                        other => {
                            debug!(%leg, ?other, "unexpected signaling frame; closing");
                            break;
                        }
                    },
                    Ok(None) => break,
                    Err(e) => {
                        debug!(%leg, error = %e, "signaling read failed");
                        break;
                    }
                }
            }
            let _ = cmd.send(Cmd::Leave { leg });
        })
    });
    // The writer: everything the main task sends for this connection, in order, until it
    // drops the sender (refused, kicked, replaced, shut down).
    while let Some(msg) = out_rx.recv().await {
        if let Err(e) = write_frame(&mut wr, &msg.encode()).await {
            debug!(%peer, error = %e, "signaling write failed");
            break;
        }
    }
    if let Some(reader) = reader {
        reader.abort();
    }
    if let Some(leg) = leg {
        let _ = cmd.send(Cmd::Leave { leg });
    }
}

/// A leg before its `ParticipantJoined` event is processed.
struct Pending {
    ufrag: String,
    pwd: Zeroizing<String>,
    sealer: NoticeSealer,
    out: mpsc::Sender<ServerMessage>,
}

struct Leg {
    call: CallId,
    device: DeviceId,
    streams: Vec<StreamDecl>,
    ufrag: String,
    pwd: Zeroizing<String>,
    addr: Option<SocketAddr>,
    /// Whether the participant says it is muted.
    muted: bool,
    /// Whether the participant says its video is off.
    video_off: bool,
    /// Its signaling queue overflowed: drop it.
    overflowed: bool,
    /// When a verified check or authenticated media last came (or the join, before any).
    last_seen: Instant,
    sealer: NoticeSealer,
    out: mpsc::Sender<ServerMessage>,
}

impl Leg {
    fn notify(&mut self, notice: &Notice) {
        match self.sealer.seal(notice) {
            Ok(sealed) => self.send(ServerMessage::Notice(sealed)),
            Err(e) => warn!(error = %e, "notice not sealed"),
        }
    }

    /// Queues a message for the leg's connection. A full queue (the client does not read its
    /// connection) marks the leg to be dropped: a notice cannot be skipped (the client would
    /// refuse every later one), and the SFU does not buffer without bound for one reader.
    fn send(&mut self, msg: ServerMessage) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.out.try_send(msg) {
            self.overflowed = true;
        }
    }
}

struct Main {
    sfu: Sfu,
    socket: Arc<UdpSocket>,
    announce: SocketAddr,
    leg_timeout: Duration,
    legs: HashMap<LegId, Leg>,
    pending: HashMap<LegId, Pending>,
    by_ufrag: HashMap<String, LegId>,
    by_addr: HashMap<SocketAddr, LegId>,
    stats: DriverStats,
    last_now: Instant,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Main {
    /// Sends `notice` to every other leg of `leg`'s call (nothing when `leg` is gone).
    fn notify_others(&mut self, leg: LegId, notice: &Notice) {
        let Some(call) = self.legs.get(&leg).map(|l| l.call) else {
            return;
        };
        for (_, other) in self
            .legs
            .iter_mut()
            .filter(|(id, o)| **id != leg && o.call == call)
        {
            other.notify(notice);
        }
    }

    fn now(&mut self) -> Instant {
        let n = Instant::now().max(self.last_now);
        self.last_now = n;
        n
    }

    async fn run(mut self, mut cmd: mpsc::UnboundedReceiver<Cmd>) {
        let socket = self.socket.clone();
        let mut buf = vec![0u8; RECV_BUF];
        let mut sweep =
            tokio::time::interval((self.leg_timeout / 4).max(Duration::from_millis(50)));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // One timer for the core's deadline, moved when the deadline changes (not rebuilt on
        // every turn); `armed` is the deadline it waits for.
        let timer = tokio::time::sleep(NO_DEADLINE);
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        loop {
            let mut full_batch = false;
            let deadline = self.sfu.poll_timeout();
            if deadline != armed {
                let at = deadline.unwrap_or_else(|| Instant::now() + NO_DEADLINE);
                timer.as_mut().reset(at.into());
                armed = deadline;
            }
            tokio::select! {
                r = socket.readable() => match r {
                    Ok(()) => full_batch = self.drain_socket(&socket, &mut buf),
                    Err(e) => trace!(error = %e, "udp readiness error"),
                },
                c = cmd.recv() => match c {
                    Some(Cmd::Shutdown) | None => break,
                    Some(c) => self.command(c),
                },
                () = &mut timer, if armed.is_some() => {
                    // Fired: re-armed on the next turn, even for the same deadline.
                    armed = None;
                    let now = self.now();
                    self.sfu.handle_timeout(now);
                }
                _ = sweep.tick() => self.sweep(),
            }
            self.flush();
            if full_batch {
                // More may be waiting: let the runtime's other tasks run first, so that a
                // backlog does not hold the signaling connections for thousands of datagrams
                // (tokio's own budget only counts the `readable` polls, one per batch).
                tokio::task::yield_now().await;
            }
        }
        info!("sfu stopping");
        self.legs.clear();
        self.pending.clear();
    }

    /// Reads what the socket holds, up to [`RECV_BATCH`] datagrams, handing each to the core
    /// and sending its output before reading the next. Whether it stopped at the limit (the
    /// socket may hold more).
    fn drain_socket(&mut self, socket: &UdpSocket, buf: &mut [u8]) -> bool {
        for _ in 0..RECV_BATCH {
            match socket.try_recv_from(buf) {
                Ok((n, from)) => {
                    if let Some(packet) = buf.get(..n) {
                        self.datagram(from, packet);
                    }
                    self.handle_events();
                    self.send_transmits();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(e) => {
                    trace!(error = %e, "udp recv error");
                    return false;
                }
            }
        }
        true
    }

    fn datagram(&mut self, from: SocketAddr, packet: &[u8]) {
        match packet.first() {
            Some(0..=3) => self.stun(from, packet),
            Some(128..=191) => {
                let Some(&leg) = self.by_addr.get(&from) else {
                    self.stats.media_unknown_source += 1;
                    return;
                };
                self.stats.packets_in += 1;
                self.stats.bytes_in += packet.len() as u64;
                let now = self.now();
                match self.sfu.handle_input(now, leg, packet) {
                    Ok(()) => {
                        if let Some(l) = self.legs.get_mut(&leg) {
                            l.last_seen = now;
                        }
                    }
                    Err(e) => {
                        self.stats.media_dropped += 1;
                        trace!(%leg, error = %e, "media dropped");
                    }
                }
            }
            _ => self.stats.other_dropped += 1,
        }
    }

    fn stun(&mut self, from: SocketAddr, packet: &[u8]) {
        let now = self.now();
        let check = match ice::parse_check(packet) {
            Ok(c) => c,
            Err(e) => {
                self.stats.checks_refused += 1;
                trace!(%from, error = %e, "stun refused");
                return;
            }
        };
        let Some(&leg_id) = self.by_ufrag.get(check.local_ufrag) else {
            self.stats.checks_refused += 1;
            trace!(%from, "check for an unknown ufrag");
            return;
        };
        let Some(leg) = self.legs.get_mut(&leg_id) else {
            self.stats.checks_refused += 1;
            return;
        };
        let answer = match ice::answer_check(packet, &check, &leg.pwd, from) {
            Ok(a) => a,
            Err(e) => {
                self.stats.checks_refused += 1;
                debug!(leg = %leg_id, %from, error = %e, "check refused");
                return;
            }
        };
        self.stats.checks_answered += 1;
        leg.last_seen = now;
        if leg.addr != Some(from) {
            if let Some(old) = leg.addr.replace(from) {
                self.by_addr.remove(&old);
            }
            if let Some(prev) = self.by_addr.insert(from, leg_id) {
                if prev != leg_id {
                    if let Some(p) = self.legs.get_mut(&prev) {
                        p.addr = None;
                    }
                }
            }
            debug!(leg = %leg_id, %from, "leg path bound by a verified check");
        }
        if let Err(e) = self.socket.try_send_to(&answer, from) {
            trace!(%from, error = %e, "check answer not sent");
        }
    }

    fn command(&mut self, c: Cmd) {
        match c {
            Cmd::Join {
                request,
                roster,
                out,
                reply,
            } => {
                let now = self.now();
                let result = self.sfu.handle_join(
                    now,
                    unix_ms(),
                    &request,
                    roster.as_deref(),
                    &mut rand::rng(),
                );
                match result {
                    Ok(joined) if !self.by_ufrag.contains_key(&joined.ice_ufrag) => {
                        self.stats.joins += 1;
                        let _ = out.try_send(ServerMessage::Accepted {
                            answer: joined.answer,
                            media: self.announce,
                        });
                        self.by_ufrag.insert(joined.ice_ufrag.clone(), joined.leg);
                        self.pending.insert(
                            joined.leg,
                            Pending {
                                ufrag: joined.ice_ufrag,
                                pwd: joined.ice_pwd,
                                sealer: NoticeSealer::new(joined.notice_key),
                                out,
                            },
                        );
                        let _ = reply.send(Some(joined.leg));
                    }
                    Ok(joined) => {
                        // Two legs derived the same 64-bit ufrag: refuse the newcomer.
                        warn!("ice ufrag collision; join refused");
                        let _ = self.sfu.leave(joined.leg);
                        self.stats.joins_refused += 1;
                        let _ = out.try_send(ServerMessage::Refused {
                            reason: "try again".into(),
                        });
                        let _ = reply.send(None);
                    }
                    Err(e) => {
                        info!(error = %e, "join refused");
                        self.stats.joins_refused += 1;
                        let _ = out.try_send(ServerMessage::Refused {
                            reason: e.to_string(),
                        });
                        let _ = reply.send(None);
                    }
                }
            }
            Cmd::Roster { leg, roster } => {
                let result = self.sfu.update_roster(&roster);
                let Some(l) = self.legs.get_mut(&leg) else {
                    return;
                };
                match result {
                    Ok(kicked) => {
                        info!(%leg, kicked = kicked.len(), "roster updated");
                        let version = self.sfu.roster_version(&l.call).unwrap_or(0);
                        l.notify(&Notice::RosterAccepted { version });
                    }
                    Err(e) => {
                        l.send(ServerMessage::RosterRefused {
                            reason: e.to_string(),
                        });
                    }
                }
            }
            Cmd::View {
                leg,
                source,
                max_height,
            } => {
                // An unknown source (not sent yet, or gone) is only logged: the connection
                // stays, as for any request the SFU cannot act on.
                if let Err(e) = self.sfu.request_view(leg, source, max_height) {
                    debug!(%leg, error = %e, "view request not applied");
                }
            }
            Cmd::Mute { leg, muted } => {
                let Some(l) = self.legs.get_mut(&leg) else {
                    return;
                };
                if l.muted == muted {
                    return;
                }
                l.muted = muted;
                let device = l.device;
                self.notify_others(leg, &Notice::Muted { device, muted });
            }
            Cmd::Video { leg, enabled } => {
                let Some(l) = self.legs.get_mut(&leg) else {
                    return;
                };
                if l.video_off != enabled {
                    return;
                }
                l.video_off = !enabled;
                let device = l.device;
                self.notify_others(leg, &Notice::Video { device, enabled });
            }
            Cmd::Leave { leg } => {
                if self.sfu.leave(leg).is_err() {
                    // Already gone (kicked, replaced, refused).
                    self.forget(leg);
                }
            }
            Cmd::Stats(reply) => {
                let mut s = self.stats.clone();
                s.legs = self.legs.len() + self.pending.len();
                let mut calls: Vec<CallId> = self.legs.values().map(|l| l.call).collect();
                calls.sort_unstable();
                calls.dedup();
                s.calls = calls.len();
                s.layer_switches = self.sfu.layer_switches_total();
                let mut legs: Vec<LegId> = self.legs.keys().copied().collect();
                legs.sort_unstable();
                s.leg_metrics = legs
                    .into_iter()
                    .filter_map(|leg| {
                        let bw = self.sfu.leg_bandwidth(leg)?;
                        let st = self.sfu.leg_stats(leg)?;
                        Some(LegMetrics {
                            leg,
                            estimate_bps: bw.estimate_bps,
                            loss_permille: (bw.loss_fraction * 1000.0).round() as u32,
                            rtt_us: bw
                                .rtt
                                .map(|r| u64::try_from(r.as_micros()).unwrap_or(u64::MAX)),
                            layer_switches: st.layer_switches,
                            forwarded: st.forwarded,
                            retransmitted: st.retransmitted,
                            uplink_nacked: st.uplink_nacked,
                            uplink_recovered: st.uplink_recovered,
                            uplink_given_up: st.uplink_given_up,
                            layers_stopped: st.layers_stopped,
                        })
                    })
                    .collect();
                let _ = reply.send(s);
            }
            Cmd::RateLimited => self.stats.rate_limited += 1,
            Cmd::Shutdown => {}
        }
    }

    /// Drops the legs silent for longer than the leg timeout.
    fn sweep(&mut self) {
        let now = self.now();
        let silent: Vec<LegId> = self
            .legs
            .iter()
            .filter(|(_, l)| now.saturating_duration_since(l.last_seen) > self.leg_timeout)
            .map(|(id, _)| *id)
            .collect();
        for leg in silent {
            info!(%leg, "leg silent too long; dropped");
            self.stats.legs_timed_out += 1;
            if self.sfu.leave(leg).is_err() {
                self.forget(leg);
            }
        }
    }

    fn forget(&mut self, leg: LegId) -> Option<Leg> {
        if let Some(p) = self.pending.remove(&leg) {
            self.by_ufrag.remove(&p.ufrag);
        }
        let l = self.legs.remove(&leg)?;
        self.by_ufrag.remove(&l.ufrag);
        if let Some(addr) = l.addr {
            if self.by_addr.get(&addr) == Some(&leg) {
                self.by_addr.remove(&addr);
            }
        }
        Some(l)
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::ParticipantJoined {
                call,
                device,
                leg,
                streams,
            } => {
                let Some(p) = self.pending.remove(&leg) else {
                    return;
                };
                let mut me = Leg {
                    call,
                    device,
                    streams: streams.clone(),
                    ufrag: p.ufrag,
                    pwd: p.pwd,
                    addr: None,
                    muted: false,
                    video_off: false,
                    overflowed: false,
                    last_seen: self.last_now,
                    sealer: p.sealer,
                    out: p.out,
                };
                for other in self.legs.values_mut().filter(|l| l.call == call) {
                    me.notify(&Notice::ParticipantJoined {
                        device: other.device,
                        streams: other.streams.clone(),
                    });
                    if other.muted {
                        me.notify(&Notice::Muted {
                            device: other.device,
                            muted: true,
                        });
                    }
                    if other.video_off {
                        me.notify(&Notice::Video {
                            device: other.device,
                            enabled: false,
                        });
                    }
                    other.notify(&Notice::ParticipantJoined {
                        device,
                        streams: streams.clone(),
                    });
                }
                if let Some(speaker) = self.sfu.dominant_speaker(&call) {
                    me.notify(&Notice::ActiveSpeaker { device: speaker });
                }
                self.legs.insert(leg, me);
            }
            Event::ParticipantLeft {
                call,
                device,
                leg,
                reason,
            } => {
                if let Some(mut gone) = self.forget(leg) {
                    if reason == LeaveReason::Kicked {
                        gone.notify(&Notice::Kicked);
                    }
                    // Dropping `gone` drops its sender: its connection closes once flushed.
                }
                if reason != LeaveReason::Replaced {
                    for other in self.legs.values_mut().filter(|l| l.call == call) {
                        other.notify(&Notice::ParticipantLeft { device, reason });
                    }
                }
            }
            Event::ActiveSpeaker { call, device } => {
                for l in self.legs.values_mut().filter(|l| l.call == call) {
                    l.notify(&Notice::ActiveSpeaker { device });
                }
            }
            Event::CallEnded { call } => debug!(%call, "call ended"),
        }
    }

    /// The core's events, legs whose signaling queue overflowed, and the core's transmits.
    fn flush(&mut self) {
        self.handle_events();
        let overflowed: Vec<LegId> = self
            .legs
            .iter()
            .filter(|(_, l)| l.overflowed)
            .map(|(id, _)| *id)
            .collect();
        for leg in overflowed {
            info!(%leg, "signaling queue full (client not reading); leg dropped");
            self.stats.slow_consumers += 1;
            if self.sfu.leave(leg).is_err() {
                self.forget(leg);
            }
            self.handle_events();
        }
        self.send_transmits();
    }

    fn handle_events(&mut self) {
        while let Some(event) = self.sfu.poll_event() {
            self.event(event);
        }
    }

    /// Sends what the core has to send, each datagram with its own system call.
    fn send_transmits(&mut self) {
        while let Some(t) = self.sfu.poll_transmit() {
            let Some(addr) = self.legs.get(&t.leg).and_then(|l| l.addr) else {
                self.stats.no_path += 1;
                continue;
            };
            // One socket for everyone: a full send buffer drops this datagram (as the network
            // would), it never makes the loop wait on one slow receiver.
            match self.socket.try_send_to(&t.bytes, addr) {
                Ok(n) => {
                    self.stats.packets_out += 1;
                    self.stats.bytes_out += n as u64;
                }
                Err(e) => trace!(leg = %t.leg, error = %e, "send dropped"),
            }
        }
    }
}

//! The SFU server (tokio driver + core, as the `hush-sfu` binary runs it: one current-thread
//! runtime) over real loopback UDP, in a child process of its own; the participants are plain
//! UDP sockets in this process.
//!
//! Each participant joins over the signaling channel, sends one connectivity check
//! (`ice::build_check`) to bind its path, then sends hop-SRTP-protected RTP. Each packet
//! carries (in a header extension, which SRTP leaves in clear and the SFU forwards) its
//! sender's index and a packet counter (also stamped as the transport-wide sequence number, as
//! hush clients do, so the SFU's feedback to senders runs); the sender notes its wall-clock time under that pair
//! after protecting the packet, just before its `sendto`. Receivers read the kernel's receive
//! stamp of each datagram (SO_TIMESTAMPNS) and the time they unprotected it: **SFU-added** =
//! kernel receive stamp − send stamp (the sender's `sendto`, the SFU, the loopback delivery),
//! **end to end** = unprotected − send stamp (the receiving client's queue too).
//!
//! Modes:
//!
//! - default: a 32-person audio call, every participant's audio (80-byte payloads) forwarded
//!   to the 31 others (`loudest_n: None`);
//! - `--video`: an 8-person video call, every participant sending three simulcast layers
//!   (1, 2 and 3 packets of 1200 bytes per frame, as hush's 100 / 300 / 800 kbit/s layers at
//!   30 frames/s), every receiver getting the top layer of the 7 others;
//!
//! each in two phases: (1) throughput: every participant sends as fast as it can for 2.5 s and
//! the server's `packets_out` counter and CPU time are read from 0.5 s to 2 s; (2) latency at
//! half that rate (senders paced; 1 s of warm-up, then 3 s measured).
//!
//! - `--calls K` (with `--video`): K 8-person video calls at once at a real call's rates
//!   (30 video frames/s of 6 packets, 50 audio packets/s of 80 bytes with the audio level, one
//!   talker per call, the SFU's default loudest 3 and last-N 9) for `--seconds S` (default 5):
//!   packets in and out per second, the server's CPU share, latency, and packets lost.
//!
//! `--client-workers N` sets the clients' tokio worker threads (default 2).
//!
//! `--out-rate R` (one call) skips the throughput phase and measures latency with the senders
//! paced for R packets out per second.
//!
//! `--reflector` (one call) is the baseline: the same clients, but their media goes to a plain
//! UDP reflector in the server process (no SRTP, no core: each datagram of the forwarded
//! streams is sent as it came to the call's other participants, one `sendto` each), so the
//! machine's own cost of receiving and sending that many datagrams shows beside the SFU's.
//! The participants still join the SFU (for their keys); only their media goes elsewhere.
//!
//! `--no-uplink-nack` turns the SFU's NACKs to senders off (`SfuConfig::uplink_nack`).
//!
//! `--server-cpu N` starts the server under `taskset -c N` (run the bench itself under
//! `taskset -c M` to pin the clients to another core). The server's CPU time is the sum of its
//! threads' run time from `/proc/PID/task/*/schedstat`; the latency phase also prints the time
//! the server (and the clients) were runnable but waited for a CPU (the same file's second
//! field), which on a shared machine explains most of the p99. Run:
//!
//! ```text
//! nice -n 10 taskset -c 1 cargo bench -p hush-sfu --bench driver -- --server-cpu 0 [--video] [--calls K]
//! ```

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use hush_media::rtp::RtpPacket;
use hush_sfu::client;
use hush_sfu::ice;
use hush_sfu::join::{JoinParams, SfuPublicKey, SfuSigningKey, StreamDecl};
use hush_sfu::roster::Roster;
use hush_sfu::server::{Server, ServerConfig};
use hush_sfu::{CallId, DeviceId, SfuConfig, FRAME_MARKING_EXT_ID, TRANSPORT_SEQ_EXT_ID};
use hush_srtp::{SrtpConfig, SrtpContext, Suite};
use tokio::net::UdpSocket;
use tokio::sync::Mutex;

const AUDIO_PARTICIPANTS: usize = 32;
const VIDEO_PARTICIPANTS: usize = 8;
const AUDIO_PAYLOAD: usize = 80;
/// Size of every video packet on the wire (RTP header, extension, payload, SRTP tag).
const VIDEO_PACKET: usize = 1200;
/// Packets per frame of layers 0, 1, 2 (see the forward bench).
const PACKETS_PER_FRAME: [usize; 3] = [1, 2, 3];
const HEIGHTS: [u16; 3] = [90, 180, 360];
const KEYFRAME_EVERY: u32 = 90;
const AUDIO_LEVEL_EXT: u8 = 1;
/// Header extension (one-byte form) of the bench's packet id: sender index and packet
/// counter, two bytes each.
const BENCH_ID_EXT: u8 = 5;
/// Send stamps kept per sender (a ring indexed by the packet counter).
const STAMP_SLOTS: usize = 1 << 14;
const LATENCY_SECONDS: f64 = 3.0;
/// Paced sending before the latency phase's measurement starts (the legs' start, or the
/// backlog of the throughput phase, out of the way).
const WARMUP: Duration = Duration::from_secs(1);

type Failure = Box<dyn std::error::Error + Send + Sync>;

fn key(call: usize, i: usize) -> SigningKey {
    let mut seed = [i as u8 + 1; 32];
    seed[0] = call as u8;
    seed[1] = (call >> 8) as u8;
    SigningKey::from_bytes(&seed)
}

fn call_id(call: usize) -> CallId {
    let mut b = [0xb0; 16];
    b[0] = call as u8;
    b[1] = (call >> 8) as u8;
    CallId::from_bytes(b)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// CPU time (ns) of all threads of process `pid` ("self" for this one).
fn cpu_ns(pid: &str) -> u64 {
    schedstat_ns(pid, 0)
}

/// Field `field` of `/proc/PID/task/*/schedstat` summed over the threads: 0 = time on a CPU,
/// 1 = time runnable but waiting for one (ns).
fn schedstat_ns(pid: &str, field: usize) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(field)?.parse::<u64>().ok())
        .sum()
}

// ---------------------------------------------------------------------------------------------
// The server process.

/// The baseline's forwarding rule: every audio stream, and the top layer of each video
/// sender (SSRCs as `join_call` declares them), as the SFU forwards them in `one_call`.
fn reflected(ssrc: u32) -> bool {
    ssrc < 0x4000 || ssrc & 0xf == 2
}

/// Packets in and out of the reflector.
#[derive(Default)]
struct ReflectorCounters {
    packets_in: AtomicU64,
    packets_out: AtomicU64,
}

/// The plain UDP reflector: a STUN-looking datagram registers its source in the group named by
/// the first byte of its transaction id (the call) and is answered with a datagram of type
/// 0x0101; RTP of a [`reflected`] stream from a registered source is sent unchanged to the
/// group's other members.
async fn reflect(socket: UdpSocket, counters: Arc<ReflectorCounters>) {
    let mut groups: HashMap<u8, Vec<SocketAddr>> = HashMap::new();
    let mut group_of: HashMap<SocketAddr, u8> = HashMap::new();
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Some(d) = buf.get_mut(..n) else { continue };
        match (d.first(), d.get(8..12)) {
            (Some(0..=3), Some(&[group, ..])) => {
                if group_of.insert(from, group).is_none() {
                    groups.entry(group).or_default().push(from);
                }
                d[..2].copy_from_slice(&[0x01, 0x01]);
                let _ = socket.try_send_to(d, from);
            }
            (Some(128..=191), Some(&[a, b, c, e])) => {
                counters.packets_in.fetch_add(1, Ordering::Relaxed);
                let ssrc = u32::from_be_bytes([a, b, c, e]);
                let Some(members) = group_of.get(&from).and_then(|g| groups.get(g)) else {
                    continue;
                };
                if !reflected(ssrc) {
                    continue;
                }
                for &to in members.iter().filter(|&&to| to != from) {
                    if socket.try_send_to(d, to).is_ok() {
                        counters.packets_out.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            _ => {}
        }
    }
}

fn serve(video: bool, uplink_nack: bool, reflector: bool) -> Result<(), Failure> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut config = ServerConfig::new("127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?);
        config.sfu = if video {
            SfuConfig::default()
        } else {
            SfuConfig {
                loudest_n: None,
                ..SfuConfig::default()
            }
        };
        config.sfu.max_participants = 32;
        config.sfu.uplink_nack = uplink_nack;
        config.leg_timeout = Duration::from_secs(600);
        let server = Server::start(config, SfuSigningKey::from_seed(&[9; 32])).await?;
        let counters = Arc::new(ReflectorCounters::default());
        let media = if reflector {
            let socket = UdpSocket::bind("127.0.0.1:0").await?;
            let addr = socket.local_addr()?.to_string();
            tokio::spawn(reflect(socket, counters.clone()));
            addr
        } else {
            "sfu".to_owned()
        };
        println!(
            "ready {} {} {media}",
            server.signal_addr(),
            hex::encode(server.public_key().to_bytes())
        );
        std::io::stdout().flush()?;
        // Commands on stdin, read on a thread of their own: "stats" or end of input.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        while let Some(cmd) = rx.recv().await {
            if cmd.trim() == "stats" && reflector {
                println!(
                    "stats {} {} 0",
                    counters.packets_in.load(Ordering::Relaxed),
                    counters.packets_out.load(Ordering::Relaxed)
                );
                std::io::stdout().flush()?;
            } else if cmd.trim() == "stats" {
                let s = server.stats().await?;
                println!(
                    "stats {} {} {}",
                    s.packets_in, s.packets_out, s.layer_switches
                );
                std::io::stdout().flush()?;
            }
        }
        server.shutdown().await;
        Ok(())
    })
}

/// The server child process and its command pipe.
struct ServerProcess {
    child: Child,
    stdin: std::sync::Mutex<(ChildStdin, BufReader<ChildStdout>)>,
    signal: SocketAddr,
    key: SfuPublicKey,
    /// The reflector's address (baseline runs), where the participants send their media.
    reflector: Option<SocketAddr>,
}

/// Packets in, packets out, layer switches; and the server's CPU time (ns).
struct Sample {
    packets_in: u64,
    packets_out: u64,
    cpu_ns: u64,
    /// Time the server was runnable but waited for a CPU (ns).
    wait_ns: u64,
    at: Instant,
}

impl ServerProcess {
    fn start(
        video: bool,
        uplink_nack: bool,
        reflector: bool,
        cpu: Option<&str>,
    ) -> Result<Self, Failure> {
        let exe = std::env::current_exe()?;
        let mut cmd = match cpu {
            Some(c) => {
                let mut cmd = Command::new("taskset");
                cmd.arg("-c").arg(c).arg(&exe);
                cmd
            }
            None => Command::new(&exe),
        };
        cmd.arg("--serve");
        if video {
            cmd.arg("--video");
        }
        if !uplink_nack {
            cmd.arg("--no-uplink-nack");
        }
        if reflector {
            cmd.arg("--reflector");
        }
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let mut it = line.split_whitespace();
        if it.next() != Some("ready") {
            return Err(format!("server did not start: {line:?}").into());
        }
        let signal: SocketAddr = it.next().ok_or("no address")?.parse()?;
        let key_bytes: [u8; 32] = hex::decode(it.next().ok_or("no key")?)?
            .try_into()
            .map_err(|_| "key length")?;
        let reflector = match it.next() {
            Some("sfu") | None => None,
            Some(a) => Some(a.parse()?),
        };
        Ok(Self {
            child,
            stdin: std::sync::Mutex::new((stdin, stdout)),
            signal,
            key: SfuPublicKey::from_bytes(&key_bytes)?,
            reflector,
        })
    }

    fn sample(&self) -> Result<Sample, Failure> {
        let mut g = self.stdin.lock().map_err(|_| "poisoned")?;
        let (stdin, stdout) = &mut *g;
        stdin.write_all(b"stats\n")?;
        stdin.flush()?;
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let pid = self.child.id().to_string();
        let cpu = cpu_ns(&pid);
        let wait = schedstat_ns(&pid, 1);
        let at = Instant::now();
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        if v.len() != 3 {
            return Err(format!("bad stats line {line:?}").into());
        }
        Ok(Sample {
            packets_in: v[0],
            packets_out: v[1],
            cpu_ns: cpu,
            wait_ns: wait,
            at,
        })
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// The participants.

/// The send stamps of every sender: wall-clock ns, [`STAMP_SLOTS`] per sender, indexed by the
/// packet counter; written just before the `sendto`, read by the receivers.
struct SendStamps(Vec<AtomicU64>);

impl SendStamps {
    fn new(senders: usize) -> Arc<Self> {
        Arc::new(Self(
            (0..senders * STAMP_SLOTS)
                .map(|_| AtomicU64::new(0))
                .collect(),
        ))
    }

    fn slot(&self, sender: u16, counter: u16) -> Option<&AtomicU64> {
        self.0
            .get(usize::from(sender) * STAMP_SLOTS + usize::from(counter) % STAMP_SLOTS)
    }

    fn set(&self, sender: u16, counter: u16, ns: u64) {
        if let Some(s) = self.slot(sender, counter) {
            s.store(ns, Ordering::Release);
        }
    }

    fn get(&self, sender: u16, counter: u16) -> Option<u64> {
        Some(self.slot(sender, counter)?.load(Ordering::Acquire)).filter(|&ns| ns != 0)
    }
}

/// The (sender, counter) id a packet carries, read from its clear header.
fn packet_id(datagram: &[u8]) -> Option<(u16, u16)> {
    let pkt = RtpPacket::parse(datagram).ok()?;
    match *pkt.header.extension(BENCH_ID_EXT)? {
        [a, b, c, d] => Some((u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]))),
        _ => None,
    }
}

struct Participant {
    socket: Arc<UdpSocket>,
    /// Index among all the bench's senders, and this sender's packet counter.
    index: u16,
    counter: AtomicU32,
    stamps: Arc<SendStamps>,
    send: Mutex<SrtpContext>,
    recv: Mutex<SrtpContext>,
    audio_ssrc: u32,
    /// SSRCs of the layers sent (none for an audio-only participant).
    layers: Vec<u32>,
    media: SocketAddr,
    /// Audio level sent (RFC 6464: 0 loudest, 127 silence).
    level: u8,
    _link: client::Link,
}

async fn join_call(
    server: &ServerProcess,
    stamps: &Arc<SendStamps>,
    call: usize,
    n: usize,
    video: bool,
) -> Result<Vec<Arc<Participant>>, Failure> {
    let members: Vec<DeviceId> = (0..n)
        .map(|i| DeviceId::from_signing_key(&key(call, i)))
        .collect();
    let roster = Roster::sign(&key(call, 0), call_id(call), 1, &members)?;
    let mut out = Vec::new();
    for i in 0..n {
        let audio_ssrc = 0x1000 + i as u32;
        let mut streams = vec![StreamDecl::audio(audio_ssrc)];
        let mut layers = Vec::new();
        if video {
            layers = (0..HEIGHTS.len() as u32)
                .map(|l| 0x4000 + (i as u32) * 16 + l)
                .collect();
            streams.extend(StreamDecl::simulcast(
                0,
                layers
                    .iter()
                    .zip(&HEIGHTS)
                    .map(|(&s, &h)| (s, h / 9 * 16, h)),
            ));
        }
        let params = JoinParams {
            call_id: call_id(call),
            suite: Suite::AeadAes128Gcm,
            audio_level_ext: Some(AUDIO_LEVEL_EXT),
            streams,
        };
        let link = client::join(
            server.signal,
            &server.key,
            &key(call, i),
            &params,
            (i == 0).then_some(&roster),
            unix_ms(),
            Duration::from_secs(10),
        )
        .await?;
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::ReceiveTimestampns,
            &true,
        )?;
        // The transaction id's first byte names the call (the reflector groups by it).
        let mut transaction = [i as u8; 12];
        transaction[0] = call as u8;
        let check = ice::build_check(
            link.keys.ice_ufrag(),
            "bench",
            link.keys.ice_pwd(),
            transaction,
        )?;
        let media = server.reflector.unwrap_or(link.media);
        socket.send_to(&check, media).await?;
        let mut buf = [0u8; 1500];
        loop {
            let (n, _) =
                tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf)).await??;
            // Media of the others may arrive before the answer (calls already running).
            if buf.get(..2) == Some(&[0x01, 0x01]) && n >= 20 {
                break;
            }
        }
        let config = SrtpConfig::builder().max_ssrcs(64).build()?;
        out.push(Arc::new(Participant {
            socket,
            index: u16::try_from(call * n + i)?,
            counter: AtomicU32::new(0),
            stamps: stamps.clone(),
            send: Mutex::new(link.keys.send_context(SrtpConfig::default())?),
            recv: Mutex::new(link.keys.recv_context(config)?),
            audio_ssrc,
            layers,
            media,
            level: if i == 0 { 30 } else { 110 },
            _link: link,
        }));
    }
    Ok(out)
}

impl Participant {
    /// Builds, protects and sends one packet with the next packet id; its send stamp is taken
    /// after protect, just before the `sendto`.
    async fn send_packet(
        &self,
        ssrc: u32,
        seq: u16,
        ts: u32,
        ext: (u8, u8),
        size: usize,
    ) -> Result<(), Failure> {
        let counter = self.counter.fetch_add(1, Ordering::Relaxed) as u16;
        let mut p = RtpPacket::default();
        p.header.payload_type = if self.layers.contains(&ssrc) { 96 } else { 111 };
        p.header.ssrc = ssrc;
        p.header.sequence_number = seq;
        p.header.timestamp = ts;
        p.header.set_extension(ext.0, vec![ext.1]);
        let [a, b] = self.index.to_be_bytes();
        let [c, d] = counter.to_be_bytes();
        p.header.set_extension(BENCH_ID_EXT, vec![a, b, c, d]);
        // The transport-wide sequence number hush clients stamp on every packet (the SFU
        // reports their arrivals back to the sender every 50 ms).
        p.header.set_transport_seq(TRANSPORT_SEQ_EXT_ID, counter);
        p.payload = vec![0u8; size];
        let mut bytes = p.to_vec();
        self.send.lock().await.protect_rtp(&mut bytes)?;
        self.stamps.set(self.index, counter, wall_ns());
        self.socket.send_to(&bytes, self.media).await?;
        Ok(())
    }

    /// One audio packet (sequence number `round`).
    async fn send_audio(&self, round: u32) -> Result<(), Failure> {
        self.send_packet(
            self.audio_ssrc,
            round as u16,
            round.wrapping_mul(960),
            (AUDIO_LEVEL_EXT, 0x80 | self.level),
            AUDIO_PAYLOAD,
        )
        .await
    }

    /// Frame `round` of every layer: 1, 2, 3 packets of 1200 bytes with frame marking.
    async fn send_frame(&self, round: u32) -> Result<(), Failure> {
        // RTP header 12 + one-byte extension block 12 (frame marking, packet id) + SRTP tag 16.
        let payload = VIDEO_PACKET - 12 - 12 - 16;
        for (l, &ssrc) in self.layers.iter().enumerate() {
            let n = PACKETS_PER_FRAME[l];
            for k in 0..n {
                let mut mark = 0u8;
                if k == 0 {
                    mark |= 0x80;
                    if round.is_multiple_of(KEYFRAME_EVERY) {
                        mark |= 0x20;
                    }
                }
                if k + 1 == n {
                    mark |= 0x40;
                }
                let seq = (round as usize * n + k) as u16;
                self.send_packet(
                    ssrc,
                    seq,
                    round.wrapping_mul(3000),
                    (FRAME_MARKING_EXT_ID, mark),
                    payload,
                )
                .await?;
            }
        }
        Ok(())
    }

    /// One round: a video frame if this participant sends video, else an audio packet.
    async fn send_round(&self, round: u32) -> Result<(), Failure> {
        if self.layers.is_empty() {
            self.send_audio(round).await
        } else {
            self.send_frame(round).await
        }
    }
}

/// Nanoseconds since the Unix epoch on the wall clock (CLOCK_REALTIME, the clock of the
/// kernel's SO_TIMESTAMPNS receive stamps), the send stamp of each packet.
fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Latencies (ns) of the packets a receiver read.
#[derive(Default)]
struct Latencies {
    /// Send stamp (after protect, before `sendto`) → the kernel's receive stamp on the
    /// receiving socket: the sender's `sendto`, the SFU (its socket queue, unprotect,
    /// per-recipient protect, `sendto`s) and the loopback delivery; not the receiving client's
    /// own queue.
    sfu: Vec<u64>,
    /// Send stamp → this process read and unprotected the packet (the receiving client's
    /// queue and CPU share included).
    end_to_end: Vec<u64>,
}

/// One datagram into `buf`: its length and the kernel's receive time (ns since the epoch,
/// when the socket has SO_TIMESTAMPNS on). Nothing within 50 ms: `None`.
async fn recv_stamped(socket: &UdpSocket, buf: &mut [u8]) -> Option<(usize, Option<u64>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrStorage};
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let read = socket.async_io(tokio::io::Interest::READABLE, || {
        let mut iov = [std::io::IoSliceMut::new(buf)];
        let msg = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut cmsg), MsgFlags::empty())
            .map_err(std::io::Error::from)?;
        let stamp = msg.cmsgs().ok().and_then(|mut c| {
            c.find_map(|m| match m {
                ControlMessageOwned::ScmTimestampns(ts) => {
                    Some(ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64)
                }
                _ => None,
            })
        });
        Ok((msg.bytes, stamp))
    });
    tokio::time::timeout(Duration::from_millis(50), read)
        .await
        .ok()?
        .ok()
}

/// Receives until `stop`, counting every datagram in `count`; from the instant `measure`,
/// unprotects each one and records its latencies (the throughput phase only counts). Behind the reflector the
/// unprotect fails (the packet still has its sender's hop key) but is still done, so the
/// receiving clients do the same work in both runs.
async fn receive(
    p: Arc<Participant>,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    measure: Option<Instant>,
    reflector: bool,
) -> Latencies {
    let mut lat = Latencies::default();
    let mut buf = vec![0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        let Some((n, kernel_ns)) = recv_stamped(&p.socket, &mut buf).await else {
            continue;
        };
        count.fetch_add(1, Ordering::Relaxed);
        if measure.is_none_or(|from| Instant::now() < from) {
            continue;
        }
        let mut d = buf[..n].to_vec();
        let Some(sent) = packet_id(&d).and_then(|(s, c)| p.stamps.get(s, c)) else {
            continue;
        };
        if p.recv.lock().await.unprotect_rtp(&mut d).is_err() && !reflector {
            continue;
        }
        let now_ns = wall_ns();
        lat.end_to_end.push(now_ns.saturating_sub(sent));
        if let Some(k) = kernel_ns {
            lat.sfu.push(k.saturating_sub(sent));
        }
    }
    lat
}

/// One [`receive`] task per participant, until `stop`.
fn spawn_receivers(
    parts: &[Arc<Participant>],
    stop: &Arc<AtomicBool>,
    count: &Arc<AtomicU64>,
    measure: Option<Instant>,
    reflector: bool,
) -> Vec<tokio::task::JoinHandle<Latencies>> {
    parts
        .iter()
        .map(|p| {
            tokio::spawn(receive(
                p.clone(),
                stop.clone(),
                count.clone(),
                measure,
                reflector,
            ))
        })
        .collect()
}

/// Gathers the receivers' latencies.
async fn gather(receivers: Vec<tokio::task::JoinHandle<Latencies>>) -> Result<Latencies, Failure> {
    let mut all = Latencies::default();
    for r in receivers {
        let l = r.await?;
        all.sfu.extend(l.sfu);
        all.end_to_end.extend(l.end_to_end);
    }
    Ok(all)
}

/// "N samples, p50 X ms, p99 Y ms" of the SFU-added and the end-to-end latencies.
fn latency_summary(lat: Latencies) -> String {
    let over_5ms = lat.sfu.iter().filter(|&&ns| ns > 5_000_000).count() as f64
        / lat.sfu.len().max(1) as f64
        * 100.0;
    let (n, [p50, p90, p99]) = percentiles(lat.sfu);
    let (m, [e50, _, e99]) = percentiles(lat.end_to_end);
    format!(
        "SFU-added (kernel receive stamp) {n} samples, p50 {p50:.3} ms, p99 {p99:.3} ms; \
         end to end (client read) {m} samples, p50 {e50:.3} ms, p99 {e99:.3} ms; \
         SFU-added p90 {p90:.3} ms, {over_5ms:.2} % over 5 ms"
    )
}

/// Sample count, and p50, p90, p99 (ms).
fn percentiles(mut lat: Vec<u64>) -> (usize, [f64; 3]) {
    lat.sort_unstable();
    let pct = |q: f64| {
        lat.get(((lat.len() as f64 - 1.0) * q) as usize)
            .map_or(0.0, |&ns| ns as f64 / 1e6)
    };
    (lat.len(), [pct(0.5), pct(0.9), pct(0.99)])
}

async fn sample(server: &Arc<ServerProcess>) -> Result<Sample, Failure> {
    let s = server.clone();
    tokio::task::spawn_blocking(move || s.sample()).await?
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default()
}

/// What one call's run measures.
struct OneCall {
    video: bool,
    /// Skip the throughput phase and pace the senders for this many packets out per second.
    out_rate: Option<f64>,
    /// The media goes to the plain UDP reflector (baseline).
    reflector: bool,
}

/// Throughput (unless an out rate is given), then latency at half that load (or at the out
/// rate), of one call.
async fn one_call(server: Arc<ServerProcess>, run: OneCall) -> Result<(), Failure> {
    let video = run.video;
    let n = if video {
        VIDEO_PARTICIPANTS
    } else {
        AUDIO_PARTICIPANTS
    };
    let stamps = SendStamps::new(n);
    let parts = join_call(&server, &stamps, 0, n, video).await?;
    // Packets the SFU sends per round of one sender: one per other participant, times the
    // packets of the top layer's frame.
    let out_per_round = (n - 1) * if video { PACKETS_PER_FRAME[2] } else { 1 };
    let in_per_round = if video {
        PACKETS_PER_FRAME.iter().sum::<usize>()
    } else {
        1
    };
    let received = Arc::new(AtomicU64::new(0));
    let (target, last_round) = match run.out_rate {
        Some(r) => (r, 0),
        None => {
            let (rate, last_round) = throughput(&server, &parts, &received, run.reflector).await?;
            (rate / 2.0, last_round)
        }
    };

    // Phase 2: latency at the target rate.
    let per_sender_rounds = target / out_per_round as f64 / n as f64;
    let interval = Duration::from_secs_f64(1.0 / per_sender_rounds.max(1.0));
    let stop = Arc::new(AtomicBool::new(false));
    let measure_from = Instant::now() + WARMUP;
    let receivers = spawn_receivers(&parts, &stop, &received, Some(measure_from), run.reflector);
    let end = measure_from + Duration::from_secs_f64(LATENCY_SECONDS);
    let senders: Vec<_> = parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let p = p.clone();
            tokio::spawn(async move {
                // Spread the senders over one interval.
                tokio::time::sleep(interval.mul_f64(i as f64 / n as f64)).await;
                let mut tick = tokio::time::interval(interval);
                // A sender that fell behind (the clients' core was busy) skips the rounds it
                // missed rather than sending them in a burst the SFU would then queue.
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let mut r = last_round + 1000;
                while Instant::now() < end {
                    tick.tick().await;
                    r += 1;
                    let _ = p.send_round(r).await;
                }
            })
        })
        .collect();
    tokio::time::sleep_until(measure_from.into()).await;
    let s0 = sample(&server).await?;
    let (me0, my_wait0) = (cpu_ns("self"), schedstat_ns("self", 1));
    for s in senders {
        s.await?;
    }
    let s1 = sample(&server).await?;
    let (me1, my_wait1) = (cpu_ns("self"), schedstat_ns("self", 1));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let lat = gather(receivers).await?;
    let secs = (s1.at - s0.at).as_secs_f64();
    println!(
        "{}latency at {:.0} packets out/s target ({:.1} rounds/s per sender, {} packets in per round): \
         server sent {:.0} packets out/s at {:.0} % CPU, waited for a CPU {:.0} % of the time; \
         {}; clients CPU {:.0} %, their threads waited {:.0} % (summed); load average {}",
        if run.reflector { "REFLECTOR " } else { "" },
        per_sender_rounds * (n * out_per_round) as f64,
        per_sender_rounds,
        in_per_round,
        (s1.packets_out - s0.packets_out) as f64 / secs,
        (s1.cpu_ns - s0.cpu_ns) as f64 / 1e9 / secs * 100.0,
        (s1.wait_ns - s0.wait_ns) as f64 / 1e9 / secs * 100.0,
        latency_summary(lat),
        (me1 - me0) as f64 / 1e9 / secs * 100.0,
        (my_wait1 - my_wait0) as f64 / 1e9 / secs * 100.0,
        load_average()
    );
    Ok(())
}

/// Phase 1: every participant sends as fast as it can for 2.5 s; the rate of packets out
/// from 0.5 s to 2 s, and the last round sent.
async fn throughput(
    server: &Arc<ServerProcess>,
    parts: &[Arc<Participant>],
    received: &Arc<AtomicU64>,
    reflector: bool,
) -> Result<(f64, u32), Failure> {
    let stop = Arc::new(AtomicBool::new(false));
    let receivers = spawn_receivers(parts, &stop, received, None, reflector);
    let sending = Arc::new(AtomicBool::new(true));
    let senders: Vec<_> = parts
        .iter()
        .map(|p| {
            let p = p.clone();
            let sending = sending.clone();
            tokio::spawn(async move {
                let mut r: u32 = 0;
                while sending.load(Ordering::Relaxed) {
                    r += 1;
                    let _ = p.send_round(r).await;
                    if r.is_multiple_of(8) {
                        tokio::task::yield_now().await;
                    }
                }
                r
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let me0 = cpu_ns("self");
    let s0 = sample(server).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s1 = sample(server).await?;
    let me1 = cpu_ns("self");
    sending.store(false, Ordering::Relaxed);
    let mut last_round = 0u32;
    for s in senders {
        last_round = last_round.max(s.await?);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for r in receivers {
        r.await?;
    }
    let secs = (s1.at - s0.at).as_secs_f64();
    let out = s1.packets_out - s0.packets_out;
    let inp = s1.packets_in - s0.packets_in;
    let cpu = (s1.cpu_ns - s0.cpu_ns) as f64 / 1e9;
    let rate = out as f64 / secs;
    println!(
        "throughput: {inp} packets in, {out} packets out in {secs:.3} s: {rate:.0} packets out/s; \
         server CPU {:.0} % of a core, {:.2} us per packet out, {:.0} packets out per CPU-second; \
         clients CPU {:.0} %; load average {}",
        cpu / secs * 100.0,
        cpu * 1e6 / out.max(1) as f64,
        out as f64 / cpu.max(1e-9),
        (me1 - me0) as f64 / 1e9 / secs * 100.0,
        load_average()
    );
    Ok((rate, last_round))
}

/// `calls` 8-person video calls at a real call's packet rates for `seconds`.
async fn many_calls(server: Arc<ServerProcess>, calls: usize, seconds: f64) -> Result<(), Failure> {
    let stamps = SendStamps::new(calls * VIDEO_PARTICIPANTS);
    let mut all = Vec::new();
    for c in 0..calls {
        all.extend(join_call(&server, &stamps, c, VIDEO_PARTICIPANTS, true).await?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let receivers = spawn_receivers(&all, &stop, &received, Some(Instant::now()), false);
    // Let the calls start (first keyframes, layer choice) before measuring.
    let warmup = Duration::from_secs(1);
    let end = Instant::now() + warmup + Duration::from_secs_f64(seconds);
    let mut senders = Vec::new();
    for (i, p) in all.iter().enumerate() {
        let spread = i as f64 / all.len() as f64;
        for (video, period) in [(true, 1.0 / 30.0), (false, 0.020)] {
            let p = p.clone();
            senders.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs_f64(period * spread)).await;
                let mut tick = tokio::time::interval(Duration::from_secs_f64(period));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let mut r = 0u32;
                while Instant::now() < end {
                    tick.tick().await;
                    let _ = if video {
                        p.send_frame(r).await
                    } else {
                        p.send_audio(r).await
                    };
                    r += 1;
                }
            }));
        }
    }
    tokio::time::sleep(warmup).await;
    let me0 = cpu_ns("self");
    let s0 = sample(&server).await?;
    for s in senders {
        s.await?;
    }
    let s1 = sample(&server).await?;
    let me1 = cpu_ns("self");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let lat = gather(receivers).await?;
    let secs = (s1.at - s0.at).as_secs_f64();
    let out = (s1.packets_out - s0.packets_out) as f64;
    let inp = (s1.packets_in - s0.packets_in) as f64;
    let cpu = (s1.cpu_ns - s0.cpu_ns) as f64 / 1e9;
    // What a real call's rates make the SFU send: per sender and second, 30 × 3 packets of
    // the top layer to each of 7 others, and 50 audio packets from each of the 3 loudest.
    let expected_out =
        calls as f64 * (VIDEO_PARTICIPANTS as f64 * 30.0 * 3.0 * 7.0 + 3.0 * 50.0 * 7.0);
    println!(
        "{calls} calls: {:.0} packets in/s, {:.0} packets out/s ({:.0} % of {:.0} expected); \
         server CPU {:.0} % of a core, {:.2} us per packet out; clients CPU {:.0} %; \
         {}; load average {}",
        inp / secs,
        out / secs,
        out / secs / expected_out * 100.0,
        expected_out,
        cpu / secs * 100.0,
        cpu * 1e6 / out.max(1.0),
        (me1 - me0) as f64 / 1e9 / secs * 100.0,
        latency_summary(lat),
        load_average()
    );
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let value = |f: &str| {
        args.iter()
            .position(|a| a == f)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let video = flag("--video");
    if flag("--serve") {
        if let Err(e) = serve(video, !flag("--no-uplink-nack"), flag("--reflector")) {
            eprintln!("driver bench server failed: {e}");
            std::process::exit(1);
        }
        return;
    }
    let calls: Option<usize> = value("--calls").and_then(|v| v.parse().ok());
    let seconds: f64 = value("--seconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(5.0);
    let server_cpu = value("--server-cpu");
    let out_rate: Option<f64> = value("--out-rate").and_then(|v| v.parse().ok());
    let reflector = flag("--reflector");
    if reflector && calls.is_some() {
        eprintln!("--reflector measures one call (not --calls)");
        std::process::exit(2);
    }
    // `--client-workers 1` keeps a sender from being preempted by its own process's other
    // worker between its send stamp and its `sendto` (the clients share one core).
    let workers: usize = value("--client-workers")
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()
        .expect("runtime");
    let result = rt.block_on(async {
        let server = Arc::new(ServerProcess::start(
            video || calls.is_some(),
            !flag("--no-uplink-nack"),
            reflector,
            server_cpu.as_deref(),
        )?);
        match calls {
            Some(k) => many_calls(server, k, seconds).await,
            None => {
                let run = OneCall {
                    video,
                    out_rate,
                    reflector,
                };
                one_call(server, run).await
            }
        }
    });
    if let Err(e) = result {
        eprintln!("driver bench failed: {e}");
        std::process::exit(1);
    }
}

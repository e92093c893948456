//! The load generator of the webrtc-rs `sfu` reference: N `webrtc` 0.21 peer connections (the
//! crate's own test clients are the same) in this process, each publishing one track and
//! subscribing to every other participant's through `sfu_server`.
//!
//! Shapes, as in hush-sfu's driver bench: `--participants 32` audio-only (Opus payload type,
//! 80-byte payloads) or `--video --participants 8` (VP8 payload type, 1200-byte packets on the
//! wire: 12-byte RTP header, 1172-byte payload, 16-byte AES-GCM tag); every packet is forwarded
//! to the N − 1 others. Each payload starts with the wall-clock time (ns since the Unix epoch)
//! taken just before `write_rtp` (so before the client's interceptors, SRTP protect and
//! `sendto`); a receiver takes the wall clock when webrtc-rs hands it the packet (after its
//! `recvfrom`, SRTP unprotect and interceptors): **latency** = that − the stamp, i.e. both
//! clients' WebRTC stacks and the SFU (hush's driver calls the same span "end to end (client
//! read)", except that its stamp is taken after the sender's protect).
//!
//! Each participant joins over `sfu_server`'s TCP signaling: its first offer already carries
//! its sendonly track; subscribe re-offers from the SFU are answered as they come. Once every
//! participant has received every other's track (a low-rate priming phase), the bench runs one
//! step per `--rates` value: senders paced for that many packets **out** of the SFU per second
//! (per sender: rate / (N × (N − 1))), 1 s of warm-up, then `--seconds` measured, then 1.5 s
//! of pause. Per step it prints the SFU's RTP and RTCP packets in/out per second, its CPU time
//! and run-queue wait (from `/proc/PID/task/*/schedstat` of the server, whose pid it asks over
//! signaling), the share of the packets sent in the window that every receiver got (a
//! retransmitted packet counted once), latency percentiles, the clients' CPU, the machine's UDP
//! receive-buffer drops, and one JSON line. The server's RTP count includes the retransmissions
//! webrtc-rs sends for its receivers' NACKs.
//!
//! `sfu_clients [--signal 127.0.0.1:8080] [--video] [--participants N] [--rates R1,R2,..]
//! [--seconds S] [--workers W] [--join-gap-ms G]`

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8};
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::media_stream::MediaStreamTrack;
use webrtc::peer_connection::*;
use webrtc::runtime::default_runtime;

const AUDIO_PAYLOAD: usize = 80;
/// 1200 bytes on the wire less the RTP header and the AES-128-GCM tag (webrtc-rs negotiates
/// SRTP_AEAD_AES_128_GCM first, as hush-sfu uses); webrtc-rs may add header extensions.
const VIDEO_PAYLOAD: usize = 1200 - 12 - 16;
/// Latency histogram: 10 µs buckets up to 2 s.
const BUCKET_NS: u64 = 10_000;
const BUCKETS: usize = 200_000;

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// State shared by all senders and receivers of this process.
struct Shared {
    window_start: AtomicU64,
    window_end: AtomicU64,
    sent_in_window: AtomicU64,
    received_in_window: AtomicU64,
    remote_tracks: AtomicU64,
    hist: Vec<AtomicU32>,
}

impl Shared {
    fn new() -> Self {
        Self {
            window_start: AtomicU64::new(u64::MAX),
            window_end: AtomicU64::new(0),
            sent_in_window: AtomicU64::new(0),
            received_in_window: AtomicU64::new(0),
            remote_tracks: AtomicU64::new(0),
            hist: (0..BUCKETS).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    fn in_window(&self, stamp: u64) -> bool {
        stamp >= self.window_start.load(Ordering::Relaxed)
            && stamp < self.window_end.load(Ordering::Relaxed)
    }

    fn receive(&self, seen: &mut Seen, seq: u16, payload: &[u8]) {
        // A retransmission (webrtc-rs answers its receivers' NACKs) counts once, with the
        // latency of its first copy.
        if !seen.first(seq) {
            return;
        }
        let Some(stamp) = payload.get(..8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_be_bytes(a)
        }) else {
            return;
        };
        if !self.in_window(stamp) {
            return;
        }
        let now = wall_ns();
        let bucket = (now.saturating_sub(stamp) / BUCKET_NS) as usize;
        self.hist[bucket.min(BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
        self.received_in_window.fetch_add(1, Ordering::Relaxed);
    }

    /// Percentiles (ms) and the share over 5 ms, then clears the histogram.
    fn take_latency(&self) -> (u64, Vec<f64>, f64) {
        let counts: Vec<u64> = self
            .hist
            .iter()
            .map(|c| c.swap(0, Ordering::Relaxed) as u64)
            .collect();
        let total: u64 = counts.iter().sum();
        let mut out = Vec::new();
        for q in [0.5, 0.9, 0.99, 0.999] {
            let want = ((total as f64) * q).ceil() as u64;
            let mut acc = 0;
            let mut at = 0;
            for (i, c) in counts.iter().enumerate() {
                acc += c;
                if acc >= want.max(1) {
                    at = i;
                    break;
                }
            }
            // Upper edge of the bucket.
            out.push(((at as u64 + 1) * BUCKET_NS) as f64 / 1e6);
        }
        let over5: u64 = counts[(5_000_000 / BUCKET_NS) as usize..].iter().sum();
        (total, out, over5 as f64 / total.max(1) as f64)
    }
}

/// Which sequence numbers of one forwarded track arrived, over a sliding half of the
/// sequence space (marking `seq` forgets `seq + 32768`).
struct Seen(Vec<u64>);

impl Seen {
    fn new() -> Self {
        Self(vec![0; 1024])
    }

    /// Marks `seq`; false if it was already marked (a duplicate).
    fn first(&mut self, seq: u16) -> bool {
        let bit = |s: u16| (s as usize / 64, 1u64 << (s % 64));
        let (w, m) = bit(seq.wrapping_add(32768));
        self.0[w] &= !m;
        let (w, m) = bit(seq);
        let fresh = self.0[w] & m == 0;
        self.0[w] |= m;
        fresh
    }
}

struct Handler {
    state: mpsc::UnboundedSender<RTCPeerConnectionState>,
    shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_connection_state_change(&self, s: RTCPeerConnectionState) {
        let _ = self.state.send(s);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let shared = self.shared.clone();
        shared.remote_tracks.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let mut seen = Seen::new();
            while let Some(ev) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(p) = ev {
                    shared.receive(&mut seen, p.header.sequence_number, &p.payload);
                }
            }
        });
    }
}

/// One participant: its peer connection (kept alive) and its send track.
struct Participant {
    _pc: Arc<dyn PeerConnection>,
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    payload_type: u8,
    seq: AtomicU32,
}

type Failure = Box<dyn std::error::Error + Send + Sync>;

fn codec(video: bool) -> (RTCRtpCodec, RtpCodecKind) {
    if video {
        (
            RTCRtpCodec {
                mime_type: MIME_TYPE_VP8.to_owned(),
                clock_rate: 90_000,
                channels: 0,
                sdp_fmtp_line: String::new(),
                rtcp_feedback: vec![],
            },
            RtpCodecKind::Video,
        )
    } else {
        (
            RTCRtpCodec {
                mime_type: MIME_TYPE_OPUS.to_owned(),
                clock_rate: 48_000,
                channels: 2,
                sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
                rtcp_feedback: vec![],
            },
            RtpCodecKind::Audio,
        )
    }
}

async fn read_frame(
    r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
) -> std::io::Result<Option<(String, u64, String)>> {
    let mut line = String::new();
    if r.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    let mut it = line.split_whitespace();
    let kind = it.next().unwrap_or_default().to_owned();
    let a: u64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let len: usize = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).await?;
    Ok(Some((kind, a, String::from_utf8_lossy(&body).into_owned())))
}

async fn join(
    index: u64,
    signal: SocketAddr,
    video: bool,
    shared: Arc<Shared>,
) -> Result<Participant, Failure> {
    let mut media = MediaEngine::default();
    media.register_default_codecs()?;
    let registry = register_default_interceptors(Registry::new(), &mut media)?;
    let (state_tx, mut state_rx) = mpsc::unbounded_channel();
    let pc: Arc<dyn PeerConnection> = Arc::new(
        PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_handler(Arc::new(Handler {
                state: state_tx,
                shared,
            }))
            .with_runtime(default_runtime().ok_or("no runtime")?)
            .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
            .build()
            .await?,
    );
    let (codec, kind) = codec(video);
    let ssrc = 0x1000_0000 + index as u32;
    let track_id = format!("track-{index}");
    let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        format!("stream-{index}"),
        track_id.clone(),
        format!("label-{index}"),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            active: true,
            codec: codec.clone(),
            ..Default::default()
        }],
    )));
    let transceiver = pc
        .add_transceiver_from_track(
            Arc::clone(&track) as Arc<dyn TrackLocal>,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Sendonly,
                streams: vec![],
                send_encodings: vec![],
            }),
        )
        .await?;
    let sender = transceiver.sender().await?.ok_or("no sender")?;
    let params = sender.get_parameters().await?;
    let payload_type = params
        .rtp_parameters
        .codecs
        .iter()
        .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(&codec.mime_type))
        .map(|c| c.payload_type)
        .ok_or("no negotiated codec")?;

    let offer = pc.create_offer(None).await?;
    pc.set_local_description(offer.clone()).await?;
    let stream = TcpStream::connect(signal).await?;
    stream.set_nodelay(true)?;
    let (rd, wr) = stream.into_split();
    let wr = Arc::new(Mutex::new(wr));
    {
        let mut w = wr.lock().await;
        w.write_all(format!("join {index} 0\n").as_bytes()).await?;
        w.write_all(format!("offer 0 {}\n", offer.sdp.len()).as_bytes())
            .await?;
        w.write_all(offer.sdp.as_bytes()).await?;
    }
    let pc_in = pc.clone();
    tokio::spawn(async move {
        let mut rd = BufReader::new(rd);
        while let Ok(Some((kind, request_id, sdp))) = read_frame(&mut rd).await {
            let r: Result<(), Failure> = async {
                if kind == "answer" {
                    pc_in
                        .set_remote_description(RTCSessionDescription::answer(sdp)?)
                        .await?;
                } else if kind == "offer" {
                    pc_in
                        .set_remote_description(RTCSessionDescription::offer(sdp)?)
                        .await?;
                    let answer = pc_in.create_answer(None).await?;
                    pc_in.set_local_description(answer.clone()).await?;
                    let mut w = wr.lock().await;
                    w.write_all(format!("answer {request_id} {}\n", answer.sdp.len()).as_bytes())
                        .await?;
                    w.write_all(answer.sdp.as_bytes()).await?;
                }
                Ok(())
            }
            .await;
            if let Err(e) = r {
                eprintln!("participant {index}: {kind}: {e}");
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(s) = state_rx.recv().await {
            match s {
                RTCPeerConnectionState::Connected => return Ok(()),
                RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                    return Err(format!("participant {index}: {s}"))
                }
                _ => {}
            }
        }
        Err(format!("participant {index}: no state"))
    })
    .await
    .map_err(|_| format!("participant {index}: not connected in 20 s"))??;
    Ok(Participant {
        _pc: pc,
        track,
        ssrc,
        payload_type,
        seq: AtomicU32::new(0),
    })
}

impl Participant {
    /// Sends one packet; its send stamp if webrtc-rs took it.
    async fn send(&self, video: bool) -> Option<u64> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let size = if video { VIDEO_PAYLOAD } else { AUDIO_PAYLOAD };
        let mut payload = BytesMut::with_capacity(size);
        let stamp = wall_ns();
        payload.put_u64(stamp);
        payload.resize(size, 0x55);
        let packet = rtp::Packet {
            header: rtp::header::Header {
                version: 2,
                marker: true,
                payload_type: self.payload_type,
                sequence_number: seq as u16,
                timestamp: seq.wrapping_mul(960),
                ssrc: self.ssrc,
                ..Default::default()
            },
            payload: Bytes::from(payload),
        };
        self.track.write_rtp(packet).await.ok().map(|()| stamp)
    }
}

/// A server-side sample: its RTP counters and its threads' CPU time and run-queue wait.
#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    rtp_in: u64,
    rtp_out: u64,
    rtcp_in: u64,
    rtcp_out: u64,
    cpu_ns: u64,
    wait_ns: u64,
}

fn schedstat(pid: &str) -> (u64, u64) {
    let mut run = 0;
    let mut wait = 0;
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in dir.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                let mut f = s.split_whitespace().map(|v| v.parse::<u64>().unwrap_or(0));
                run += f.next().unwrap_or(0);
                wait += f.next().unwrap_or(0);
            }
        }
    }
    (run, wait)
}

struct Stats {
    rd: BufReader<tokio::net::tcp::OwnedReadHalf>,
    wr: tokio::net::tcp::OwnedWriteHalf,
    pid: String,
}

impl Stats {
    async fn connect(signal: SocketAddr) -> Result<Self, Failure> {
        let s = TcpStream::connect(signal).await?;
        s.set_nodelay(true)?;
        let (rd, wr) = s.into_split();
        Ok(Self {
            rd: BufReader::new(rd),
            wr,
            pid: String::new(),
        })
    }

    async fn sample(&mut self) -> Result<Sample, Failure> {
        self.wr.write_all(b"stats 0 0\n").await?;
        let mut line = String::new();
        self.rd.read_line(&mut line).await?;
        let f: Vec<&str> = line.split_whitespace().collect();
        self.pid = f.first().ok_or("bad stats")?.to_string();
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let (cpu_ns, wait_ns) = schedstat(&self.pid);
        Ok(Sample {
            at: Instant::now(),
            rtp_in: n(1),
            rtp_out: n(2),
            rtcp_in: n(3),
            rtcp_out: n(4),
            cpu_ns,
            wait_ns,
        })
    }
}

/// The kernel's count of UDP datagrams dropped for a full receive buffer (all sockets of the
/// machine: this bench's, the server's and anyone else's).
fn udp_rcvbuf_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(head), Some(vals)) = (lines.next(), lines.next()) else {
        return 0;
    };
    head.split_whitespace()
        .zip(vals.split_whitespace())
        .find(|(h, _)| *h == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Senders paced at `per_sender` packets/s each until `end`; a sender that fell behind skips
/// the rounds it missed (as hush's driver does).
fn spawn_senders(
    parts: &[Arc<Participant>],
    per_sender: f64,
    end: Instant,
    video: bool,
    shared: &Arc<Shared>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let n = parts.len();
    parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let p = p.clone();
            let shared = shared.clone();
            let period = Duration::from_secs_f64(1.0 / per_sender);
            tokio::spawn(async move {
                tokio::time::sleep(period.mul_f64(i as f64 / n as f64)).await;
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                while Instant::now() < end {
                    tick.tick().await;
                    if let Some(stamp) = p.send(video).await {
                        if shared.in_window(stamp) {
                            shared.sent_in_window.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect()
}

async fn run() -> Result<(), Failure> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let value = |f: &str| {
        args.iter()
            .position(|a| a == f)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let video = flag("--video");
    let signal: SocketAddr = value("--signal")
        .unwrap_or_else(|| "127.0.0.1:8080".to_owned())
        .parse()?;
    let n: usize = value("--participants")
        .and_then(|v| v.parse().ok())
        .unwrap_or(if video { 8 } else { 32 });
    let rates: Vec<f64> = value("--rates")
        .unwrap_or_else(|| "50000".to_owned())
        .split(',')
        .filter_map(|v| v.parse().ok())
        .collect();
    let seconds: f64 = value("--seconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(3.0);
    let join_gap = Duration::from_millis(
        value("--join-gap-ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(100),
    );
    let mode = if video { "video" } else { "audio" };
    let shared = Arc::new(Shared::new());

    let t0 = Instant::now();
    let mut parts = Vec::new();
    for i in 0..n {
        parts.push(Arc::new(
            join(i as u64, signal, video, shared.clone()).await?,
        ));
        tokio::time::sleep(join_gap).await;
    }
    let joined = t0.elapsed();
    // Prime: a low rate until every participant has every other's track (on_track fires on
    // the first forwarded packet).
    let want = (n * (n - 1)) as u64;
    let prime_end = Instant::now() + Duration::from_secs(30);
    let primers = spawn_senders(&parts, 10.0, prime_end, video, &shared);
    while shared.remote_tracks.load(Ordering::Relaxed) < want && Instant::now() < prime_end {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for p in primers {
        p.abort();
    }
    let tracks = shared.remote_tracks.load(Ordering::Relaxed);
    println!(
        "{mode}: {n} participants joined in {:.1} s; remote tracks {tracks} of {want} after {:.1} s",
        joined.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    if tracks < want {
        return Err(format!("only {tracks} of {want} forwarded tracks arrived").into());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut stats = Stats::connect(signal).await?;
    let _ = shared.take_latency();
    for &rate in &rates {
        let per_sender = rate / (n * (n - 1)) as f64;
        let warm = Duration::from_secs(1);
        let start = Instant::now() + warm;
        let end = start + Duration::from_secs_f64(seconds);
        let start_wall = wall_ns() + warm.as_nanos() as u64;
        shared.sent_in_window.store(0, Ordering::Relaxed);
        shared.received_in_window.store(0, Ordering::Relaxed);
        shared.window_start.store(start_wall, Ordering::Relaxed);
        shared
            .window_end
            .store(start_wall + (seconds * 1e9) as u64, Ordering::Relaxed);
        let senders = spawn_senders(&parts, per_sender, end, video, &shared);
        tokio::time::sleep_until(start.into()).await;
        let me0 = schedstat("self");
        let drops0 = udp_rcvbuf_errors();
        let s0 = stats.sample().await?;
        tokio::time::sleep_until(end.into()).await;
        let s1 = stats.sample().await?;
        let me1 = schedstat("self");
        let drops = udp_rcvbuf_errors() - drops0;
        for s in senders {
            s.await?;
        }
        // Late packets of the window, then a pause so one step's backlog (and the NACKs and
        // retransmissions it caused) is over before the next.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let secs = (s1.at - s0.at).as_secs_f64();
        let out = (s1.rtp_out - s0.rtp_out) as f64;
        let inp = (s1.rtp_in - s0.rtp_in) as f64;
        let rtcp_in = (s1.rtcp_in - s0.rtcp_in) as f64;
        let rtcp_out = (s1.rtcp_out - s0.rtcp_out) as f64;
        let cpu = (s1.cpu_ns - s0.cpu_ns) as f64 / 1e9;
        let wait = (s1.wait_ns - s0.wait_ns) as f64 / 1e9;
        let sent = shared.sent_in_window.load(Ordering::Relaxed);
        let got = shared.received_in_window.load(Ordering::Relaxed);
        let delivered = got as f64 / (sent * (n as u64 - 1)).max(1) as f64;
        let (samples, q, over5) = shared.take_latency();
        let clients_cpu = (me1.0 - me0.0) as f64 / 1e9 / secs;
        let clients_wait = (me1.1 - me0.1) as f64 / 1e9 / secs;
        let load = load_average();
        println!(
            "{mode} {n}: target {rate:.0} out/s ({per_sender:.1} packets/s per sender): server \
             {:.0} RTP in/s, {:.0} RTP out/s, {:.0} RTCP in/s, {:.0} RTCP out/s, CPU {:.0} % of a core, waited {:.0} %, {:.2} us per \
             packet out, {:.0} packets out per CPU-second; delivered {:.2} % of {} sent; latency \
             p50 {:.3} / p90 {:.3} / p99 {:.3} / p99.9 {:.3} ms, {:.2} % over 5 ms ({samples} \
             samples); clients CPU {:.0} %, waited {:.0} %; UDP receive-buffer drops (machine-wide) \
             {drops}; load average {load}",
            inp / secs,
            out / secs,
            rtcp_in / secs,
            rtcp_out / secs,
            cpu / secs * 100.0,
            wait / secs * 100.0,
            cpu * 1e6 / out.max(1.0),
            out / cpu.max(1e-9),
            delivered * 100.0,
            sent,
            q[0],
            q[1],
            q[2],
            q[3],
            over5 * 100.0,
            clients_cpu * 100.0,
            clients_wait * 100.0,
        );
        let mut j = HashMap::new();
        j.insert("target_out", rate);
        j.insert("rtp_in_per_s", inp / secs);
        j.insert("rtp_out_per_s", out / secs);
        j.insert("rtcp_in_per_s", rtcp_in / secs);
        j.insert("rtcp_out_per_s", rtcp_out / secs);
        j.insert("server_cpu", cpu / secs);
        j.insert("server_wait", wait / secs);
        j.insert("us_per_out", cpu * 1e6 / out.max(1.0));
        j.insert("out_per_cpu_s", out / cpu.max(1e-9));
        j.insert("delivered", delivered);
        j.insert("p50_ms", q[0]);
        j.insert("p90_ms", q[1]);
        j.insert("p99_ms", q[2]);
        j.insert("p999_ms", q[3]);
        j.insert("over_5ms", over5);
        j.insert("clients_cpu", clients_cpu);
        j.insert("udp_rcvbuf_drops", drops as f64);
        let mut keys: Vec<_> = j.keys().copied().collect();
        keys.sort_unstable();
        let body: Vec<String> = keys
            .iter()
            .map(|k| format!("\"{k}\":{:.6}", j[k]))
            .collect();
        println!(
            "{{\"impl\":\"webrtc-rs sfu 0.5\",\"mode\":\"{mode}\",\"participants\":{n},{},\"load\":\"{load}\"}}",
            body.join(",")
        );
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let workers: usize = args
        .iter()
        .position(|a| a == "--workers")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run()) {
        eprintln!("sfu_clients: {e}");
        std::process::exit(1);
    }
    // The peer connections' tasks would keep the runtime busy on drop.
    std::process::exit(0);
}

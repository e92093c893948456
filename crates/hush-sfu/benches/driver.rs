//! The SFU server (tokio driver + core) over real loopback UDP: a 32-person audio call, every
//! participant's audio forwarded to all 31 others (`loudest_n: None`).
//!
//! Each participant is a plain UDP socket in this process: it joins over the signaling
//! channel, sends one connectivity check (`ice::build_check`) to bind its path, then sends
//! hop-SRTP-protected RTP packets of 80-byte payloads. Two phases:
//!
//! 1. throughput: every participant sends as fast as it can for 2.5 s; the server's
//!    `packets_out` counter from 0.5 s to 2 s gives packets out per second (what the SFU
//!    cannot take, its socket buffer drops);
//! 2. latency at half that load: senders are paced so the SFU sends half the measured rate;
//!    each payload carries its send time, and receivers (after hop SRTP unprotect) record
//!    send → receive time: client protect + send, the SFU (unprotect, protect per recipient),
//!    and the receiving socket, all on loopback.
//!
//! Clients and the server share the machine (the server's main task is one task on a
//! 2-worker runtime; the clients run on the same runtime), so the figures are a floor for the
//! SFU alone. Run:
//!
//! ```text
//! cargo bench -p hush-sfu --bench driver
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use hush_media::rtp::RtpPacket;
use hush_sfu::client;
use hush_sfu::ice;
use hush_sfu::join::{JoinParams, SfuSigningKey, StreamDecl, StreamKind};
use hush_sfu::roster::Roster;
use hush_sfu::server::{Server, ServerConfig};
use hush_sfu::{CallId, DeviceId, SfuConfig};
use hush_srtp::{SrtpConfig, SrtpContext, Suite};
use tokio::net::UdpSocket;
use tokio::sync::Mutex;

const CALL: CallId = CallId::from_bytes([0xb0; 16]);
const PARTICIPANTS: usize = 32;
const PAYLOAD: usize = 80;
const LATENCY_SECONDS: f64 = 3.0;

type Failure = Box<dyn std::error::Error + Send + Sync>;

fn key(i: usize) -> SigningKey {
    SigningKey::from_bytes(&[i as u8 + 1; 32])
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Participant {
    socket: Arc<UdpSocket>,
    send: Mutex<SrtpContext>,
    recv: Mutex<SrtpContext>,
    ssrc: u32,
    media: SocketAddr,
    _link: client::Link,
}

async fn join_all(server: &Server) -> Result<Vec<Arc<Participant>>, Failure> {
    let members: Vec<DeviceId> = (0..PARTICIPANTS)
        .map(|i| DeviceId::from_signing_key(&key(i)))
        .collect();
    let roster = Roster::sign(&key(0), CALL, 1, &members)?;
    let mut out = Vec::new();
    for i in 0..PARTICIPANTS {
        let ssrc = 0x1000 + i as u32;
        let params = JoinParams {
            call_id: CALL,
            suite: Suite::AeadAes128Gcm,
            audio_level_ext: None,
            streams: vec![StreamDecl {
                ssrc,
                kind: StreamKind::Audio,
            }],
        };
        let link = client::join(
            server.signal_addr(),
            &server.public_key(),
            &key(i),
            &params,
            (i == 0).then_some(&roster),
            unix_ms(),
            Duration::from_secs(10),
        )
        .await?;
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let check = ice::build_check(
            link.keys.ice_ufrag(),
            "bench",
            link.keys.ice_pwd(),
            [i as u8; 12],
        )?;
        socket.send_to(&check, link.media).await?;
        let mut buf = [0u8; 1500];
        let (n, _) =
            tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf)).await??;
        if buf.get(..2) != Some(&[0x01, 0x01]) || n < 20 {
            return Err("check not answered".into());
        }
        let config = SrtpConfig::builder().max_ssrcs(64).build()?;
        out.push(Arc::new(Participant {
            socket,
            send: Mutex::new(link.keys.send_context(SrtpConfig::default())?),
            recv: Mutex::new(link.keys.recv_context(config)?),
            ssrc,
            media: link.media,
            _link: link,
        }));
    }
    Ok(out)
}

impl Participant {
    async fn send(&self, seq: u16, base: Instant) -> Result<(), Failure> {
        let mut p = RtpPacket::default();
        p.header.payload_type = 111;
        p.header.ssrc = self.ssrc;
        p.header.sequence_number = seq;
        p.header.timestamp = u32::from(seq) * 960;
        let mut payload = vec![0u8; PAYLOAD];
        let sent_ns = base.elapsed().as_nanos() as u64;
        payload[..8].copy_from_slice(&sent_ns.to_be_bytes());
        p.payload = payload;
        let mut bytes = p.to_vec();
        self.send.lock().await.protect_rtp(&mut bytes)?;
        self.socket.send_to(&bytes, self.media).await?;
        Ok(())
    }
}

/// Receives until `stop`; returns the latencies (ns) of the packets it could read.
async fn receive(p: Arc<Participant>, base: Instant, stop: Arc<AtomicBool>) -> Vec<u64> {
    let mut lat = Vec::new();
    let mut buf = vec![0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(50), p.socket.recv_from(&mut buf)).await
        else {
            continue;
        };
        let now_ns = base.elapsed().as_nanos() as u64;
        let mut d = buf[..n].to_vec();
        if p.recv.lock().await.unprotect_rtp(&mut d).is_err() {
            continue;
        }
        if let Ok(pkt) = RtpPacket::parse(&d) {
            if let Some(b) = pkt.payload.get(..8) {
                let mut t = [0u8; 8];
                t.copy_from_slice(b);
                lat.push(now_ns.saturating_sub(u64::from_be_bytes(t)));
            }
        }
    }
    lat
}

async fn run() -> Result<(), Failure> {
    let mut config = ServerConfig::new("127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?);
    config.sfu = SfuConfig {
        loudest_n: None,
        ..SfuConfig::default()
    };
    config.leg_timeout = Duration::from_secs(600);
    let server = Server::start(config, SfuSigningKey::from_seed(&[9; 32])).await?;
    let parts = join_all(&server).await?;
    let base = Instant::now();

    // Phase 1: throughput. Every sender sends as fast as it can for 2.5 s (what the SFU cannot
    // take, its socket buffer drops); the rate is measured from 0.5 s to 2 s, when it is steady.
    let stop = Arc::new(AtomicBool::new(false));
    let receivers: Vec<_> = parts
        .iter()
        .map(|p| tokio::spawn(receive(p.clone(), base, stop.clone())))
        .collect();
    let sending = Arc::new(AtomicBool::new(true));
    let senders: Vec<_> = parts
        .iter()
        .map(|p| {
            let p = p.clone();
            let sending = sending.clone();
            tokio::spawn(async move {
                let mut s: u16 = 0;
                while sending.load(Ordering::Relaxed) {
                    s = s.wrapping_add(1);
                    let _ = p.send(s, base).await;
                    if s.is_multiple_of(8) {
                        tokio::task::yield_now().await;
                    }
                }
                s
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s0 = server.stats().await?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s1 = server.stats().await?;
    let secs = t0.elapsed().as_secs_f64();
    sending.store(false, Ordering::Relaxed);
    let mut last_seq = 0u16;
    for s in senders {
        last_seq = last_seq.max(s.await?);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for r in receivers {
        let _ = r.await?;
    }
    let out = s1.packets_out - s0.packets_out;
    let inp = s1.packets_in - s0.packets_in;
    let rate = out as f64 / secs;
    println!(
        "throughput: {inp} packets in, {out} packets out in {secs:.3} s: {rate:.0} packets out/s"
    );

    // Phase 2: latency at half that rate.
    let per_sender_pps = (rate / 2.0) / (PARTICIPANTS - 1) as f64 / PARTICIPANTS as f64;
    let interval = Duration::from_secs_f64(1.0 / per_sender_pps.max(1.0));
    let stop = Arc::new(AtomicBool::new(false));
    let receivers: Vec<_> = parts
        .iter()
        .map(|p| tokio::spawn(receive(p.clone(), base, stop.clone())))
        .collect();
    let end = Instant::now() + Duration::from_secs_f64(LATENCY_SECONDS);
    let senders: Vec<_> = parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let p = p.clone();
            tokio::spawn(async move {
                // Spread the senders over one interval.
                tokio::time::sleep(interval.mul_f64(i as f64 / PARTICIPANTS as f64)).await;
                let mut tick = tokio::time::interval(interval);
                let mut seq = last_seq.wrapping_add(1000);
                while Instant::now() < end {
                    tick.tick().await;
                    seq = seq.wrapping_add(1);
                    let _ = p.send(seq, base).await;
                }
            })
        })
        .collect();
    for s in senders {
        s.await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for r in receivers {
        lat.extend(r.await?);
    }
    lat.sort_unstable();
    let pct = |q: f64| {
        lat.get(((lat.len() as f64 - 1.0) * q) as usize)
            .map_or(0.0, |&ns| ns as f64 / 1e6)
    };
    println!(
        "latency at {:.0} packets out/s ({:.1} packets/s per sender): {} samples, p50 {:.3} ms, p99 {:.3} ms",
        per_sender_pps * (PARTICIPANTS * (PARTICIPANTS - 1)) as f64,
        per_sender_pps,
        lat.len(),
        pct(0.5),
        pct(0.99)
    );
    server.shutdown().await;
    Ok(())
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if let Err(e) = rt.block_on(run()) {
        eprintln!("driver bench failed: {e}");
        std::process::exit(1);
    }
}

//! webrtc-rs's sans-IO `sfu` crate (0.5) on one loopback UDP port, the server half of the
//! reference for hush-sfu's forwarding bench (`crates/hush-sfu/benches/driver.rs`).
//!
//! One `sfu::Sfu` on one UDP socket, driven by one current-thread tokio runtime (as hush-sfu's
//! server runs). The loop is the crate's `chat` example's (`examples/signaling/mod.rs`, `run`:
//! `handle_read` each datagram, `poll_read` (which is where the crate forwards RTP), `poll_write`
//! to the socket, `poll_event` for SDP to push, `handle_timeout` on the earliest deadline), with
//! two changes so it is not slower than it need be: a datagram's forwarded packets are sent
//! before the next wait (the example sends them at the top of its next turn, i.e. after the next
//! datagram or a 50 ms timeout), and `handle_timeout` runs when the crate's deadline is due, not
//! after every datagram. Up to 64 datagrams are read per wake-up, each one handled and its
//! packets sent before the next is read (hush-sfu's server does the same).
//!
//! Signaling is a small framed protocol over TCP instead of the example's WebSocket (the SFU
//! sees the same `SFUEvent`s): a client sends `join ID\n`, then `offer 0 LEN\n<sdp>` or
//! `answer REQUEST_ID LEN\n<sdp>`; the server sends `answer 0 LEN\n<sdp>` and
//! `offer REQUEST_ID LEN\n<sdp>` (subscribe re-offers, answered with their request id). A
//! connection whose first line is `stats` gets, for each further line, one line
//! `pid rtp_in rtp_out rtcp_in rtcp_out other_in other_out bytes_out`.
//!
//! `sfu_server [--port P] [--signal-port S]` (defaults 3478, 8080; both on 127.0.0.1).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::peer_connection::sdp::{RTCSdpType, RTCSessionDescription};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use sfu::{ClientId, RoomId, SFUEvent, Sfu, TaggedSFUEvent};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// Datagrams read per wake-up before the loop looks at timers and signaling again.
const BATCH: usize = 64;

/// Counters of what went through the UDP socket, read by `stats` connections.
#[derive(Default)]
struct Counters {
    rtp_in: AtomicU64,
    rtp_out: AtomicU64,
    rtcp_in: AtomicU64,
    rtcp_out: AtomicU64,
    other_in: AtomicU64,
    other_out: AtomicU64,
    bytes_out: AtomicU64,
}

/// RTP, RTCP (RFC 5761 demultiplexing on the second byte) or anything else (STUN, DTLS).
fn count(c: &Counters, d: &[u8], out: bool) {
    let is_rtp_family = d.len() >= 2 && (128..192).contains(&d[0]);
    let is_rtcp = is_rtp_family && (192..=223).contains(&d[1]);
    let counter = match (out, is_rtp_family, is_rtcp) {
        (false, true, false) => &c.rtp_in,
        (false, true, true) => &c.rtcp_in,
        (false, false, _) => &c.other_in,
        (true, true, false) => &c.rtp_out,
        (true, true, true) => &c.rtcp_out,
        (true, false, _) => &c.other_out,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    if out {
        c.bytes_out.fetch_add(d.len() as u64, Ordering::Relaxed);
    }
}

/// What a signaling connection hands to the media loop.
enum Command {
    Join {
        client_id: ClientId,
        out: std::sync::mpsc::Sender<(RTCSessionDescription, u64)>,
    },
    Sdp {
        client_id: ClientId,
        request_id: u64,
        sdp: Box<RTCSessionDescription>,
    },
    Leave {
        client_id: ClientId,
    },
}

const ROOM: RoomId = RoomId::from_u128(0x6875_7368);

fn read_frame(r: &mut impl BufRead) -> std::io::Result<Option<(String, u64, Vec<u8>)>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut it = line.split_whitespace();
    let kind = it.next().unwrap_or_default().to_owned();
    let a: u64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let len: usize = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok(Some((kind, a, body)))
}

fn serve_signaling(stream: TcpStream, tx: mpsc::UnboundedSender<Command>, counters: Arc<Counters>) {
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut client: Option<ClientId> = None;
    while let Ok(Some((kind, a, body))) = read_frame(&mut reader) {
        match kind.as_str() {
            "stats" => {
                let c = &counters;
                let l = |x: &AtomicU64| x.load(Ordering::Relaxed);
                let line = format!(
                    "{} {} {} {} {} {} {} {}\n",
                    std::process::id(),
                    l(&c.rtp_in),
                    l(&c.rtp_out),
                    l(&c.rtcp_in),
                    l(&c.rtcp_out),
                    l(&c.other_in),
                    l(&c.other_out),
                    l(&c.bytes_out)
                );
                if writer.write_all(line.as_bytes()).is_err() {
                    return;
                }
            }
            "join" => {
                let (out_tx, out_rx) = std::sync::mpsc::channel::<(RTCSessionDescription, u64)>();
                let Ok(mut w) = writer.try_clone() else {
                    return;
                };
                std::thread::spawn(move || {
                    for (sdp, request_id) in out_rx {
                        let kind = if sdp.sdp_type == RTCSdpType::Offer {
                            "offer"
                        } else {
                            "answer"
                        };
                        let head = format!("{kind} {request_id} {}\n", sdp.sdp.len());
                        if w.write_all(head.as_bytes()).is_err()
                            || w.write_all(sdp.sdp.as_bytes()).is_err()
                        {
                            return;
                        }
                    }
                });
                client = Some(a);
                let _ = tx.send(Command::Join {
                    client_id: a,
                    out: out_tx,
                });
            }
            "offer" | "answer" => {
                let Some(client_id) = client else { continue };
                let text = String::from_utf8_lossy(&body).into_owned();
                let sdp = if kind == "offer" {
                    RTCSessionDescription::offer(text)
                } else {
                    RTCSessionDescription::answer(text)
                };
                match sdp {
                    Ok(sdp) => {
                        let _ = tx.send(Command::Sdp {
                            client_id,
                            request_id: if kind == "offer" { rand_u64() } else { a },
                            sdp: Box::new(sdp),
                        });
                    }
                    Err(e) => eprintln!("client {client_id}: bad {kind}: {e}"),
                }
            }
            _ => {}
        }
    }
    if let Some(client_id) = client {
        let _ = tx.send(Command::Leave { client_id });
    }
}

/// A random number from std's randomly keyed hasher (no rand dependency to build).
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::UNIX_EPOCH
            .elapsed()
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

struct Loop {
    sfu: Sfu,
    socket: UdpSocket,
    local: SocketAddr,
    counters: Arc<Counters>,
    outs: HashMap<ClientId, std::sync::mpsc::Sender<(RTCSessionDescription, u64)>>,
}

impl Loop {
    fn tagged(&self, event: SFUEvent) -> TaggedSFUEvent {
        TaggedSFUEvent {
            now: Instant::now(),
            event,
        }
    }

    fn command(&mut self, cmd: Command) {
        let event = match cmd {
            Command::Join { client_id, out } => {
                self.outs.insert(client_id, out);
                SFUEvent::Join {
                    request_id: rand_u64(),
                    room_id: ROOM,
                    client_id,
                }
            }
            Command::Sdp {
                client_id,
                request_id,
                sdp,
            } => SFUEvent::SessionDescription {
                request_id,
                room_id: ROOM,
                client_id,
                sdp: *sdp,
            },
            Command::Leave { client_id } => {
                self.outs.remove(&client_id);
                SFUEvent::Leave {
                    request_id: rand_u64(),
                    room_id: ROOM,
                    client_id,
                    reason: "signaling closed".to_owned(),
                }
            }
        };
        let event = self.tagged(event);
        if let Err(e) = self.sfu.handle_event(event) {
            eprintln!("sfu.handle_event: {e}");
        }
    }

    /// Forward what was read, send what the SFU wrote, push the SDP it produced.
    async fn drive(&mut self) {
        while self.sfu.poll_read().is_some() {}
        while let Some(t) = self.sfu.poll_write() {
            count(&self.counters, &t.message, true);
            match self.socket.try_send_to(&t.message, t.transport.peer_addr) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let _ = self.socket.send_to(&t.message, t.transport.peer_addr).await;
                }
                Err(_) => {}
            }
        }
        while let Some(TaggedSFUEvent { event, .. }) = self.sfu.poll_event() {
            if let SFUEvent::SessionDescription {
                request_id,
                client_id,
                sdp,
                ..
            } = event
            {
                if let Some(out) = self.outs.get(&client_id) {
                    let _ = out.send((sdp, request_id));
                }
            }
        }
    }

    fn read(&mut self, buf: &[u8], peer_addr: SocketAddr) {
        count(&self.counters, buf, false);
        let msg = TaggedBytesMut {
            now: Instant::now(),
            transport: TransportContext {
                local_addr: self.local,
                peer_addr,
                transport_protocol: TransportProtocol::UDP,
                ecn: None,
            },
            message: BytesMut::from(buf),
        };
        // As in the example: one client's bad datagram must not stop the loop.
        let _ = self.sfu.handle_read(msg);
    }
}

async fn run(port: u16, signal_port: u16) -> std::io::Result<()> {
    let socket = UdpSocket::bind(("127.0.0.1", port)).await?;
    let local = socket.local_addr()?;
    let counters = Arc::new(Counters::default());
    let (tx, mut rx) = mpsc::unbounded_channel::<Command>();
    let listener = TcpListener::bind(("127.0.0.1", signal_port))?;
    {
        let counters = counters.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let tx = tx.clone();
                let counters = counters.clone();
                std::thread::spawn(move || serve_signaling(stream, tx, counters));
            }
        });
    }
    println!(
        "sfu_server pid {} media {local} signaling 127.0.0.1:{signal_port}",
        std::process::id()
    );
    let mut lp = Loop {
        sfu: Sfu::new(1, local),
        socket,
        local,
        counters,
        outs: HashMap::new(),
    };
    let mut buf = vec![0u8; 2048];
    let sleep = tokio::time::sleep(Duration::from_millis(50));
    tokio::pin!(sleep);
    loop {
        let now = Instant::now();
        let deadline = lp
            .sfu
            .poll_timeout()
            .unwrap_or(now + Duration::from_millis(100));
        if deadline <= now {
            if let Err(e) = lp.sfu.handle_timeout(now) {
                eprintln!("sfu.handle_timeout: {e}");
            }
            lp.drive().await;
            continue;
        }
        if sleep.deadline() != deadline.into() {
            sleep.as_mut().reset(deadline.into());
        }
        tokio::select! {
            biased;
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { return Ok(()) };
                lp.command(cmd);
                while let Ok(cmd) = rx.try_recv() {
                    lp.command(cmd);
                }
                lp.drive().await;
            }
            r = lp.socket.readable() => {
                r?;
                for _ in 0..BATCH {
                    match lp.socket.try_recv_from(&mut buf) {
                        Ok((n, peer)) => {
                            lp.read(&buf[..n], peer);
                            lp.drive().await;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
                tokio::task::yield_now().await;
            }
            () = &mut sleep => {}
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |f: &str| {
        args.iter()
            .position(|a| a == f)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<u16>().ok())
    };
    let port = value("--port").unwrap_or(3478);
    let signal_port = value("--signal-port").unwrap_or(8080);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(port, signal_port)) {
        eprintln!("sfu_server: {e}");
        std::process::exit(1);
    }
}

//! The SFU server over real loopback sockets: joins over the TCP signaling channel, clients
//! running hush-net's ICE agent (controlling) against the SFU's ICE-lite on one UDP port, hop
//! SRTP both ways, authenticated notices.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use hush_media::rtp::{AudioLevel, RtpPacket};
use hush_net::driver::{self, Bind};
use hush_net::{Config, Event as NetEvent, IceCredentials, Role};
use hush_sfu::client::{self, ClientError, Incoming, Link};
use hush_sfu::control::{self, ClientMessage, Notice, ServerMessage};
use hush_sfu::join::{JoinParams, PendingJoin, SfuSigningKey, StreamDecl, StreamKind};
use hush_sfu::roster::Roster;
use hush_sfu::server::{Server, ServerConfig};
use hush_sfu::{CallId, DeviceId, LeaveReason, SfuConfig};
use hush_srtp::{SrtpConfig, SrtpContext, Suite};
use tokio::sync::mpsc;

const CALL: CallId = CallId::from_bytes([0x5a; 16]);
const WAIT: Duration = Duration::from_secs(10);
const LEVEL_EXT: u8 = 1;

fn key(i: usize) -> SigningKey {
    SigningKey::from_bytes(&[i as u8 + 1; 32])
}

fn device(i: usize) -> DeviceId {
    DeviceId::from_signing_key(&key(i))
}

fn ssrc(i: usize) -> u32 {
    0x1000 + i as u32
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn params(i: usize) -> JoinParams {
    JoinParams {
        call_id: CALL,
        suite: Suite::AeadAes128Gcm,
        audio_level_ext: Some(LEVEL_EXT),
        streams: vec![StreamDecl {
            ssrc: ssrc(i),
            kind: StreamKind::Audio,
        }],
    }
}

fn roster(version: u64, members: &[usize]) -> Roster {
    let devices: Vec<DeviceId> = members.iter().map(|&i| device(i)).collect();
    Roster::sign(&key(0), CALL, version, &devices).unwrap()
}

async fn start_sfu() -> Server {
    let mut config = ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    );
    config.sfu = SfuConfig {
        loudest_n: None,
        ..SfuConfig::default()
    };
    Server::start(config, SfuSigningKey::from_seed(&[0x77; 32]))
        .await
        .unwrap()
}

/// One participant: its signaling link, its ICE connection to the SFU and its hop SRTP.
struct Member {
    i: usize,
    link: Link,
    net: driver::Handle,
    datagrams: mpsc::Receiver<Vec<u8>>,
    send: SrtpContext,
    recv: SrtpContext,
    seq: u16,
}

async fn join(server: &Server, i: usize, creates: Option<&Roster>) -> Result<Link, ClientError> {
    client::join(
        server.signal_addr(),
        &server.public_key(),
        &key(i),
        &params(i),
        creates,
        unix_ms(),
        WAIT,
    )
    .await
}

/// Joins, then connects ICE to the SFU's media port with the credentials derived at join.
async fn member(server: &Server, i: usize, creates: Option<&Roster>) -> Member {
    let link = join(server, i, creates).await.unwrap();
    connect(i, link).await
}

async fn connect(i: usize, link: Link) -> Member {
    let cfg = Config::builder().include_loopback(true).build().unwrap();
    let started = driver::start(
        cfg,
        Role::Controlling,
        Bind::Addresses(vec!["127.0.0.1".parse().unwrap()]),
    )
    .await
    .unwrap();
    let net = started.handle.clone();
    net.set_remote_credentials(IceCredentials::new(
        link.keys.ice_ufrag(),
        link.keys.ice_pwd(),
    ))
    .await
    .unwrap();
    net.add_remote_candidate(candidate(link.media))
        .await
        .unwrap();
    net.remote_gathering_complete().unwrap();
    let mut events = started.events;
    let path = tokio::time::timeout(WAIT, async {
        while let Some(ev) = events.recv().await {
            if let NetEvent::PathSelected(p) = ev {
                return Some(p);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .expect("ICE path to the SFU");
    assert_eq!(path.remote, link.media);
    // Keep draining events so the driver never blocks on them.
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let cfg = SrtpConfig::builder().max_ssrcs(64).build().unwrap();
    let send = link.keys.send_context(cfg.clone()).unwrap();
    let recv = link.keys.recv_context(cfg).unwrap();
    Member {
        i,
        link,
        net,
        datagrams: started.datagrams,
        send,
        recv,
        seq: 0,
    }
}

fn candidate(addr: SocketAddr) -> String {
    format!("1 1 udp 2130706431 {} {} typ host", addr.ip(), addr.port())
}

impl Member {
    fn send_audio(&mut self, level: u8) {
        self.seq = self.seq.wrapping_add(1);
        let mut p = RtpPacket::default();
        p.header.payload_type = 111;
        p.header.ssrc = ssrc(self.i);
        p.header.sequence_number = self.seq;
        p.header.timestamp = u32::from(self.seq) * 960;
        p.header
            .set_audio_level(LEVEL_EXT, AudioLevel { voice: true, level });
        p.payload = vec![self.i as u8; 40];
        let mut bytes = p.to_vec();
        self.send.protect_rtp(&mut bytes).unwrap();
        self.net.send(bytes).unwrap();
    }

    /// Receives for `d` and returns the SSRCs heard (authenticated with the hop key).
    async fn heard(&mut self, d: Duration) -> HashSet<u32> {
        let mut heard = HashSet::new();
        let end = tokio::time::Instant::now() + d;
        while let Ok(Some(mut dg)) = tokio::time::timeout_at(end, self.datagrams.recv()).await {
            if matches!(dg.get(1), Some(192..=223)) {
                continue;
            }
            if self.recv.unprotect_rtp(&mut dg).is_ok() {
                if let Ok(p) = RtpPacket::parse(&dg) {
                    heard.insert(p.header.ssrc);
                }
            }
        }
        heard
    }

    async fn notice(&mut self) -> Option<Incoming> {
        tokio::time::timeout(WAIT, self.link.notices.next())
            .await
            .expect("notice in time")
            .expect("authentic notice")
    }

    /// Reads notices until `pred` matches one.
    async fn wait_notice(&mut self, pred: impl Fn(&Notice) -> bool) -> Notice {
        loop {
            match self.notice().await {
                Some(Incoming::Notice(n)) if pred(&n) => return n,
                Some(_) => {}
                None => panic!("channel closed while waiting"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_participants_hear_each_other_over_loopback() {
    let server = start_sfu().await;
    let all: Vec<usize> = (0..8).collect();
    let mut members = vec![member(&server, 0, Some(&roster(1, &all))).await];
    for i in 1..8 {
        members.push(member(&server, i, None).await);
    }
    // Everyone learns of everyone else (SSRC → device), authenticated.
    for m in &mut members {
        let mut known = HashSet::new();
        while known.len() < 7 {
            if let Notice::ParticipantJoined { device, streams } = m
                .wait_notice(|n| matches!(n, Notice::ParticipantJoined { .. }))
                .await
            {
                assert_eq!(streams.len(), 1);
                known.insert(device);
            }
        }
        assert!(!known.contains(&device(m.i)));
    }
    for _ in 0..20 {
        for m in &mut members {
            m.send_audio(30);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for m in &mut members {
        let heard = m.heard(Duration::from_millis(500)).await;
        let want: HashSet<u32> = (0..8).filter(|&j| j != m.i).map(ssrc).collect();
        assert_eq!(heard, want, "participant {} heard {:x?}", m.i, heard);
    }
    let stats = server.stats().await.unwrap();
    assert_eq!(stats.joins, 8);
    assert!(stats.checks_answered >= 8);
    assert_eq!(stats.media_dropped, 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roster_admits_kicks_and_leaves_are_announced() {
    let server = start_sfu().await;
    let mut a = member(&server, 0, Some(&roster(1, &[0, 1, 2]))).await;
    let mut b = member(&server, 1, None).await;
    let mut c = member(&server, 2, None).await;

    // Not on the roster: refused.
    match join(&server, 5, None).await {
        Err(ClientError::Refused(reason)) => assert!(reason.contains("roster"), "{reason}"),
        other => panic!("outsider admitted: {other:?}"),
    }

    // Kick c: c is told and its channel closes; the others see it leave as kicked.
    a.link
        .control
        .update_roster(&roster(2, &[0, 1]))
        .await
        .unwrap();
    a.wait_notice(|n| matches!(n, Notice::RosterAccepted { version: 2 }))
        .await;
    c.wait_notice(|n| matches!(n, Notice::Kicked)).await;
    assert!(c.notice().await.is_none(), "kicked channel closes");
    let left = b
        .wait_notice(|n| matches!(n, Notice::ParticipantLeft { .. }))
        .await;
    assert_eq!(
        left,
        Notice::ParticipantLeft {
            device: device(2),
            reason: LeaveReason::Kicked
        }
    );
    // The kicked one cannot come back; its media no longer reaches anyone.
    assert!(matches!(
        join(&server, 2, None).await,
        Err(ClientError::Refused(_))
    ));
    c.send_audio(10);
    b.send_audio(10);
    assert_eq!(
        a.heard(Duration::from_millis(300)).await,
        HashSet::from([ssrc(1)])
    );

    // b leaves by closing its channel; a sees it; b rejoins and a sees that too.
    drop(b.link);
    let _ = b.net.close().await;
    let left = a
        .wait_notice(|n| matches!(n, Notice::ParticipantLeft { device: d, .. } if *d == device(1)))
        .await;
    assert_eq!(
        left,
        Notice::ParticipantLeft {
            device: device(1),
            reason: LeaveReason::Left
        }
    );
    let mut b = member(&server, 1, None).await;
    b.seq = 100; // carry on past the old sequence numbers (docs/sfu.md, reconnect)
    let joined = a
        .wait_notice(|n| matches!(n, Notice::ParticipantJoined { .. }))
        .await;
    assert!(matches!(joined, Notice::ParticipantJoined { device: d, .. } if d == device(1)));
    b.send_audio(10);
    assert_eq!(
        a.heard(Duration::from_millis(300)).await,
        HashSet::from([ssrc(1)])
    );
    server.shutdown().await;
    // The end of the SFU closes the channels.
    let _ = a.wait_notice_or_end().await;
}

impl Member {
    async fn wait_notice_or_end(&mut self) -> Option<Incoming> {
        loop {
            match tokio::time::timeout(WAIT, self.link.notices.next()).await {
                Ok(Ok(None)) | Ok(Err(_)) => return None,
                Ok(Ok(Some(_))) => {}
                Err(_) => panic!("channel not closed"),
            }
        }
    }
}

/// Raw signaling: one join frame, one answer (and the connection, which is the leg).
async fn raw_join(server: &Server, body: &[u8]) -> (ServerMessage, tokio::net::TcpStream) {
    let mut s = tokio::net::TcpStream::connect(server.signal_addr())
        .await
        .unwrap();
    control::write_frame(&mut s, body).await.unwrap();
    let reply = control::read_frame(&mut s).await.unwrap().unwrap();
    (ServerMessage::decode(&reply).unwrap(), s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_or_forged_joins_and_unauthenticated_checks_are_refused() {
    let server = start_sfu().await;
    let (_pending, request) =
        PendingJoin::new(&key(0), &params(0), unix_ms(), &mut rand::rng()).unwrap();
    let join = ClientMessage::Join {
        request: request.encode(),
        roster: Some(roster(1, &[0, 1]).encode()),
    }
    .encode();
    let (accepted, _creator) = raw_join(&server, &join).await;
    assert!(matches!(accepted, ServerMessage::Accepted { .. }));
    // The same request again without the roster (a replay by whoever saw it): refused.
    let replay = ClientMessage::Join {
        request: request.encode(),
        roster: None,
    }
    .encode();
    match raw_join(&server, &replay).await.0 {
        ServerMessage::Refused { reason } => assert!(reason.contains("replayed"), "{reason}"),
        other => panic!("replay accepted: {other:?}"),
    }
    // A request with a flipped bit: refused (bad signature).
    let (_p, req1) = PendingJoin::new(&key(1), &params(1), unix_ms(), &mut rand::rng()).unwrap();
    let mut forged = req1.encode();
    forged[84] ^= 1; // inside the timestamp
    let msg = ClientMessage::Join {
        request: forged,
        roster: None,
    };
    match raw_join(&server, &msg.encode()).await.0 {
        ServerMessage::Refused { reason } => assert!(reason.contains("signature"), "{reason}"),
        other => panic!("forged join accepted: {other:?}"),
    }

    // An answer signed by another SFU key is refused by the client.
    let wrong = SfuSigningKey::from_seed(&[0x66; 32]).public_key();
    let res = client::join(
        server.signal_addr(),
        &wrong,
        &key(1),
        &params(1),
        None,
        unix_ms(),
        WAIT,
    )
    .await;
    assert!(matches!(res, Err(ClientError::Join(_))), "{res:?}");

    // Checks under a made-up ufrag or with a wrong password, and media from an address no
    // check came from, are dropped and counted.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut check = stun_check("deadbeefdeadbeef:x", b"wrong");
    udp.send_to(&check, server.media_addr()).await.unwrap();
    check[0] = 0x80; // now looks like RTP
    udp.send_to(&check, server.media_addr()).await.unwrap();
    let mut buf = [0u8; 1500];
    let got = tokio::time::timeout(Duration::from_millis(300), udp.recv_from(&mut buf)).await;
    assert!(got.is_err(), "unauthenticated check answered");
    let stats = server.stats().await.unwrap();
    assert_eq!(stats.checks_refused, 1);
    assert_eq!(stats.media_unknown_source, 1);
    assert_eq!(stats.checks_answered, 0);
    server.shutdown().await;
}

/// A minimal STUN Binding request with USERNAME and a MESSAGE-INTEGRITY of garbage.
fn stun_check(username: &str, mi: &[u8]) -> Vec<u8> {
    let mut m = vec![0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42];
    m.extend_from_slice(&[7u8; 12]);
    m.extend_from_slice(&0x0006u16.to_be_bytes());
    m.extend_from_slice(&(username.len() as u16).to_be_bytes());
    m.extend_from_slice(username.as_bytes());
    while m.len() % 4 != 0 {
        m.push(0);
    }
    m.extend_from_slice(&0x0008u16.to_be_bytes());
    m.extend_from_slice(&20u16.to_be_bytes());
    let mut tag = mi.to_vec();
    tag.resize(20, 0);
    m.extend_from_slice(&tag);
    let len = (m.len() - 20) as u16;
    m[2..4].copy_from_slice(&len.to_be_bytes());
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_legs_are_dropped_and_bad_packets_cost_only_their_sender() {
    let mut config = ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    );
    config.sfu = SfuConfig {
        loudest_n: None,
        ..SfuConfig::default()
    };
    config.leg_timeout = Duration::from_millis(1500);
    let server = Server::start(config, SfuSigningKey::from_seed(&[0x78; 32]))
        .await
        .unwrap();
    let mut a = member(&server, 0, Some(&roster(1, &[0, 1, 2]))).await;
    let mut b = member(&server, 1, None).await;
    // c joins over signaling but never connects its media: it holds a slot without a path.
    let mut lazy = join(&server, 2, None).await.unwrap();

    // b sends garbage and forged packets on its path, then real audio; a loud a.
    let mut forged = vec![0x80, 111, 0, 1, 0, 0, 0, 1];
    forged.extend_from_slice(&ssrc(1).to_be_bytes());
    forged.extend_from_slice(&[0u8; 40]);
    b.net.send(forged).unwrap();
    b.net.send(vec![0x90; 7]).unwrap();
    // Both keep talking while the lazy leg times out; a is the loud one.
    let end = tokio::time::Instant::now() + Duration::from_millis(2500);
    let mut heard_b = HashSet::new();
    while tokio::time::Instant::now() < end {
        a.send_audio(5);
        b.send_audio(90);
        heard_b.extend(b.heard(Duration::from_millis(20)).await);
        heard_b.extend(
            a.heard(Duration::from_millis(1))
                .await
                .into_iter()
                .map(|_| 0),
        );
    }
    // The garbage cost b's packets only: a's audio reached b (and b's reached a, checked
    // through a's counters below).
    assert!(heard_b.contains(&ssrc(0)), "b heard {heard_b:x?}");
    // The lazy leg was dropped: its channel closed, and a and b were told it left.
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match lazy.notices.next().await {
                Ok(None) | Err(_) => return,
                Ok(Some(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "silent leg not closed");
    let left = a
        .wait_notice(|n| matches!(n, Notice::ParticipantLeft { device: d, .. } if *d == device(2)))
        .await;
    assert_eq!(
        left,
        Notice::ParticipantLeft {
            device: device(2),
            reason: LeaveReason::Left
        }
    );
    // a loud: the dominant speaker announced to b is a.
    b.wait_notice(|n| *n == Notice::ActiveSpeaker { device: device(0) })
        .await;
    let stats = server.stats().await.unwrap();
    assert_eq!(stats.legs_timed_out, 1);
    assert_eq!(stats.legs, 2, "the talking legs stay");
    assert!(stats.media_dropped >= 2, "{stats:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signaling_connections_are_bounded() {
    let mut config = ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    );
    config.max_connections = 1;
    config.join_timeout = Duration::from_millis(500);
    let server = Server::start(config, SfuSigningKey::from_seed(&[0x79; 32]))
        .await
        .unwrap();
    // One connection holds the only slot without joining...
    let _holder = tokio::net::TcpStream::connect(server.signal_addr())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // ...so a second one is closed at once, before it can join.
    match join(&server, 0, Some(&roster(1, &[0]))).await {
        Err(ClientError::Unexpected | ClientError::Control(_)) => {}
        other => panic!("second connection served: {other:?}"),
    }
    // Once the holder's join time is over, its slot is free again.
    tokio::time::sleep(Duration::from_millis(700)).await;
    join(&server, 0, Some(&roster(1, &[0]))).await.unwrap();
    server.shutdown().await;
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served() {
    let mut config = ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    );
    config.metrics = Some("127.0.0.1:0".parse().unwrap());
    let server = Server::start(config, SfuSigningKey::from_seed(&[0x7a; 32]))
        .await
        .unwrap();
    let addr = server.metrics_addr().unwrap();
    let mut a = member(&server, 0, Some(&roster(1, &[0, 1, 2]))).await;
    let mut b = member(&server, 1, None).await;
    for _ in 0..10 {
        a.send_audio(20);
    }
    assert_eq!(
        b.heard(Duration::from_millis(300)).await,
        HashSet::from([ssrc(0)])
    );
    let _ = join(&server, 7, None).await; // refused: not on the roster
    let text = http_get(addr, "/metrics").await;
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert_eq!(metric(&text, "hush_sfu_calls"), 1);
    assert_eq!(metric(&text, "hush_sfu_participants"), 2);
    assert_eq!(metric(&text, "hush_sfu_joins_total"), 2);
    assert_eq!(metric(&text, "hush_sfu_joins_refused_total"), 1);
    assert!(metric(&text, "hush_sfu_packets_in_total") >= 10);
    assert!(metric(&text, "hush_sfu_packets_out_total") >= 10);
    assert!(metric(&text, "hush_sfu_bytes_out_total") >= 10 * 40);
    assert_eq!(metric(&text, "hush_sfu_layer_switches_total"), 0);
    // One series per leg: b got a's ten packets.
    let forwarded: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("hush_sfu_leg_forwarded_packets_total{leg=\""))
        .collect();
    assert_eq!(forwarded.len(), 2, "{text}");
    assert!(
        forwarded.iter().any(|l| l.ends_with(" 10")),
        "{forwarded:?}"
    );
    // The resend and uplink-loss counters of each leg are there too (none here: no loss).
    for name in [
        "hush_sfu_leg_retransmitted_packets_total",
        "hush_sfu_leg_uplink_nacked_packets_total",
        "hush_sfu_leg_uplink_recovered_packets_total",
        "hush_sfu_leg_uplink_given_up_total",
    ] {
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{leg=\"")))
            .collect();
        assert_eq!(series.len(), 2, "{name} in {text}");
        assert!(series.iter().all(|l| l.ends_with(" 0")), "{series:?}");
    }
    assert!(http_get(addr, "/other").await.starts_with("HTTP/1.1 404"));
    drop(a);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_flooding_the_signaling_channel_is_disconnected_alone() {
    let server = start_sfu().await;
    let mut a = member(&server, 0, Some(&roster(1, &[0, 1, 2]))).await;
    let mut b = member(&server, 1, None).await;
    let mut c = member(&server, 2, None).await;
    // b toggles its mute state far faster than 20 frames/s.
    for i in 0..200 {
        if b.link.control.set_muted(i % 2 == 0).await.is_err() {
            break;
        }
    }
    let left = a
        .wait_notice(|n| matches!(n, Notice::ParticipantLeft { .. }))
        .await;
    assert_eq!(
        left,
        Notice::ParticipantLeft {
            device: device(1),
            reason: LeaveReason::Left
        }
    );
    // c is unaffected: it still hears a.
    a.send_audio(10);
    assert_eq!(
        c.heard(Duration::from_millis(300)).await,
        HashSet::from([ssrc(0)])
    );
    let stats = server.stats().await.unwrap();
    assert_eq!(stats.rate_limited, 1);
    assert_eq!(stats.legs, 2);
    server.shutdown().await;
}

/// Simulcast over real sockets: the notice announces one video stream per source, receivers
/// get one stream under the source SSRC, and a view request sent on the signaling channel
/// switches the layer (after the SFU asked the sender for a keyframe of it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulcast_view_request_over_the_signaling_channel_switches_the_layer() {
    use hush_media::rtcp::{self, RtcpPacket};
    use hush_sfu::join::SimulcastLayer;
    const LAYERS: [u32; 3] = [0x3000, 0x3001, 0x3002];
    let server = start_sfu().await;
    let mut p0 = params(0);
    for (l, (&ssrc, height)) in LAYERS.iter().zip([90u16, 180, 360]).enumerate() {
        p0.streams.push(StreamDecl {
            ssrc,
            kind: StreamKind::SimulcastLayer(SimulcastLayer {
                source: 0,
                layer: l as u8,
                width: height / 9 * 16,
                height,
            }),
        });
    }
    let link = client::join(
        server.signal_addr(),
        &server.public_key(),
        &key(0),
        &p0,
        Some(&roster(1, &[0, 1])),
        unix_ms(),
        WAIT,
    )
    .await
    .unwrap();
    let mut sender = connect(0, link).await;
    let mut receiver = member(&server, 1, None).await;
    let Notice::ParticipantJoined { streams, .. } = receiver
        .wait_notice(
            |n| matches!(n, Notice::ParticipantJoined { device: d, .. } if *d == device(0)),
        )
        .await
    else {
        unreachable!()
    };
    assert_eq!(
        streams,
        vec![
            StreamDecl {
                ssrc: ssrc(0),
                kind: StreamKind::Audio
            },
            StreamDecl {
                ssrc: LAYERS[0],
                kind: StreamKind::Video
            },
        ]
    );
    let mut seq = [0u16; 3];
    let mut send_frame = |m: &mut Member, key_on: &[usize]| {
        for (l, &ssrc) in LAYERS.iter().enumerate() {
            seq[l] = seq[l].wrapping_add(1);
            let mut p = RtpPacket::default();
            p.header.payload_type = 96;
            p.header.ssrc = ssrc;
            p.header.sequence_number = seq[l];
            p.header.timestamp = u32::from(seq[l]) * 3000;
            let mark = if key_on.contains(&l) { 0xa0 } else { 0x80 };
            p.header
                .set_extension(hush_sfu::FRAME_MARKING_EXT_ID, vec![mark]);
            p.payload = vec![l as u8; 200];
            let mut bytes = p.to_vec();
            m.send.protect_rtp(&mut bytes).unwrap();
            m.net.send(bytes).unwrap();
        }
    };
    // Layers received by `m` (the first payload byte), authenticated; RTCP skipped.
    async fn layers(m: &mut Member, d: Duration) -> Vec<(u32, u8)> {
        let mut got = Vec::new();
        let end = tokio::time::Instant::now() + d;
        while let Ok(Some(mut dg)) = tokio::time::timeout_at(end, m.datagrams.recv()).await {
            if matches!(dg.get(1), Some(192..=223)) || m.recv.unprotect_rtp(&mut dg).is_err() {
                continue;
            }
            if let Ok(p) = RtpPacket::parse(&dg) {
                if p.header.payload_type == 96 {
                    got.push((p.header.ssrc, p.payload[0]));
                }
            }
        }
        got
    }
    send_frame(&mut sender, &[0, 1, 2]);
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        send_frame(&mut sender, &[]);
    }
    let got = layers(&mut receiver, Duration::from_millis(400)).await;
    assert_eq!(got, vec![(LAYERS[0], 2); 6]);
    // The view request travels on the signaling channel.
    receiver
        .link
        .control
        .request_view(LAYERS[0], 90)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Still layer 2 until layer 0 has a keyframe; the sender is asked for one.
    send_frame(&mut sender, &[]);
    let mut asked = false;
    let end = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Ok(Some(mut dg)) = tokio::time::timeout_at(end, sender.datagrams.recv()).await {
        if matches!(dg.get(1), Some(192..=223)) && sender.recv.unprotect_rtcp(&mut dg).is_ok() {
            asked |= rtcp::parse_compound(&dg)
                .unwrap_or_default()
                .iter()
                .any(|p| matches!(p, RtcpPacket::Pli(p) if p.media_ssrc == LAYERS[0]));
        }
        if asked {
            break;
        }
    }
    assert!(asked, "the SFU asked the sender for a layer 0 keyframe");
    send_frame(&mut sender, &[0]);
    send_frame(&mut sender, &[]);
    let got = layers(&mut receiver, Duration::from_millis(400)).await;
    assert_eq!(
        got,
        vec![(LAYERS[0], 2), (LAYERS[0], 0), (LAYERS[0], 0)],
        "{got:x?}"
    );
    let stats = server.stats().await.unwrap();
    assert_eq!(stats.layer_switches, 1);
    server.shutdown().await;
}

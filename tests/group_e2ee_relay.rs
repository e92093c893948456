//! Key rotation time of a group call whose keys travel over the real hush relay (TCP): from one
//! member's leave to every remaining member holding every remaining sender's new key, and to
//! every remaining sender's frames on its new key at the SFU. A measurement (printed;
//! docs/benchmarks.md), checked only for behaviour: the rotation happens, every remaining
//! member installs the others' new keys, every remaining sender's frames go under its new key,
//! and the member that left never installs one of them. The test learns of each key from
//! `GroupCallEvent::SenderKeyInstalled`, as an app would. In the same run it measures issue
//! #18's yardstick on the same relay: one round trip between two devices over the relay and
//! the Signal sealing of one key message.
//!
//! The call runs three times: on loopback, then with every client's TCP connections to the
//! relay and to the SFU's signaling going through a proxy that holds each chunk for a fixed
//! one-way delay (10 ms, then 25 ms) in both directions, so that a round trip between two
//! members over the relay is a real one (4 × the delay: to the relay and on, and back). The
//! yardstick's devices go through the same proxy. Media (UDP to the SFU) is not delayed.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::group::{info, invitation, joined_and_connected, sframe_key_id, WAIT};
use common::{loopback_config, sealer, tone};
use hush::{Client, GroupCall, GroupCallEvent, SfuInfo};
use hush_crypto::group::{GroupCallId, GroupE2ee, MemberSlot};
use hush_media::rtp::RtpPacket;
use hush_relay::{Relay, RelayConfig};
use hush_sfu::ed25519_dalek::SigningKey;
use hush_sfu::join::SfuSigningKey;
use hush_sfu::roster::Roster;
use hush_sfu::server::{Server, ServerConfig};
use hush_sfu::{CallId as SfuCallId, DeviceId as SfuDeviceId, ForwardTap, SfuConfig};
use hush_signaling::transport::{RelayClient, RelayClientConfig, Transport};
use hush_signaling::{CallMessage, DeviceId, GroupKey, SignalingClient, SignalingEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

type Tapped = Arc<Mutex<Vec<(Instant, Vec<u8>)>>>;

/// `n` clients on a relay at `addr`, each with a Signal session to each other (bundles
/// fetched from the relay).
async fn relay_devices(addr: SocketAddr, n: u8) -> Vec<Client> {
    let mut sealers: Vec<_> = (1..=n).map(sealer).collect();
    let mut transports = Vec::new();
    for s in &mut sealers {
        let relay = RelayClient::connect_tcp(addr, s.signer(), RelayClientConfig::default())
            .await
            .expect("authenticates");
        let material = s.publish(usize::from(n), 1).expect("prekeys");
        relay
            .upload_prekeys(material.bundle, material.one_time_prekeys, false)
            .await
            .expect("prekeys uploaded");
        transports.push(relay);
    }
    for j in 1..sealers.len() {
        let device = sealers[j].device_id();
        for i in 0..j {
            let fetched = transports[i].fetch_bundle(device).await.expect("bundle");
            sealers[i].start_session(&fetched).expect("session");
        }
    }
    let config = loopback_config();
    transports
        .into_iter()
        .zip(sealers)
        .map(|(t, s)| {
            Client::builder(SignalingClient::new(t, s), config.net.clone())
                .config(config.clone())
                .build()
        })
        .collect()
}

/// The generation in an SFrame header's key id (hush's KID layout).
fn generation(frame: &[u8]) -> Option<(u8, u16)> {
    let id = sframe_key_id(frame)?;
    Some((id.sender.0, id.generation))
}

/// Milliseconds, one decimal.
fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

/// The figures of one leave.
struct Round {
    /// From the leave to each remaining member's leave notice (`ParticipantLeft`).
    notices: Vec<Duration>,
    /// From a sender's own leave notice to its new key held by both other members, the
    /// longest of the three senders.
    from_notice: Duration,
    /// The median of the six (sender's notice to its key held by one other member).
    pair_median: Duration,
    /// From the leave to all six new keys held.
    keys_held: Duration,
    /// From the leave to the first frame of every remaining sender under its new generation
    /// at the SFU.
    senders_switched: Duration,
}

/// The events of the members that stay, with the newest key generation each holds of each
/// other.
struct Events {
    rx: mpsc::UnboundedReceiver<(usize, Instant, GroupCallEvent)>,
    stable: Vec<DeviceId>,
    /// (receiver, sender) -> newest generation installed.
    generations: HashMap<(usize, usize), u16>,
}

impl Events {
    /// Which stable member a `SenderKeyInstalled` is from.
    fn sender_of(&self, e: &GroupCallEvent) -> Option<usize> {
        match e {
            GroupCallEvent::SenderKeyInstalled { device, .. } => {
                self.stable.iter().position(|d| d == device)
            }
            _ => None,
        }
    }

    fn note(&mut self, i: usize, e: &GroupCallEvent) {
        if let (Some(s), GroupCallEvent::SenderKeyInstalled { generation, .. }) =
            (self.sender_of(e), e)
        {
            let g = self.generations.entry((i, s)).or_insert(0);
            *g = (*g).max(*generation);
        }
    }

    /// The next event (by `deadline`, or the test fails).
    async fn next(&mut self, deadline: Instant) -> (usize, Instant, GroupCallEvent) {
        let (i, at, e) = tokio::time::timeout_at(deadline.into(), self.rx.recv())
            .await
            .expect("event in time")
            .expect("calls alive");
        self.note(i, &e);
        (i, at, e)
    }

    /// Takes in the events that came so far.
    fn drain(&mut self) {
        while let Ok((i, _, e)) = self.rx.try_recv() {
            self.note(i, &e);
        }
    }
}

/// What one key message costs on the relay the call uses.
struct Yardstick {
    /// From handing an envelope to the relay to the relay's answer, which it gives when the
    /// recipient (reading) acknowledges it, or after its commit delay (20 ms) and a commit if
    /// that comes first (on a long path it does).
    round_trips: Vec<Duration>,
    /// From handing an envelope to the relay to having opened the recipient's answer (a
    /// message it seals and sends as soon as it has opened the first): a round trip between
    /// two devices over the relay, with two Signal opens and one seal in it.
    echoes: Vec<Duration>,
    /// From handing an envelope to the relay to the recipient having opened it.
    deliveries: Vec<Duration>,
    /// Sealing one group key message (`SignalingClient::seal`, as the client's actor does
    /// for each recipient).
    seals: Vec<Duration>,
}

/// Two more devices on the relay at `addr` with a Signal session (both ways used once, so
/// messages are ordinary Signal messages like a call's key messages); 21 key messages from
/// one to the other, sealed and sent one at a time while the other reads and answers each.
async fn yardstick(addr: SocketAddr) -> Yardstick {
    const SAMPLES: usize = 21;
    let mut sealers = vec![sealer(5), sealer(6)];
    let mut transports = Vec::new();
    for s in &mut sealers {
        let relay = RelayClient::connect_tcp(addr, s.signer(), RelayClientConfig::default())
            .await
            .expect("authenticates");
        let material = s.publish(1, 1).expect("prekeys");
        relay
            .upload_prekeys(material.bundle, material.one_time_prekeys, false)
            .await
            .expect("prekeys uploaded");
        transports.push(relay);
    }
    let b_id = sealers[1].device_id();
    let a_id = sealers[0].device_id();
    let fetched = transports[0].fetch_bundle(b_id).await.expect("bundle");
    sealers[0].start_session(&fetched).expect("session");
    let b_sealer = sealers.pop().unwrap();
    let a_sealer = sealers.pop().unwrap();
    let b_transport = transports.pop().unwrap();
    let mut a = SignalingClient::new(transports.pop().unwrap(), a_sealer);
    // A key message the size of the call's: a real key message and a 4-member roster.
    let members: Vec<SfuDeviceId> = (0..4u8)
        .map(|i| SfuDeviceId::from_signing_key(&SigningKey::from_bytes(&[i + 40; 32])))
        .collect();
    let creator = SigningKey::from_bytes(&[40; 32]);
    let roster = Roster::sign(&creator, SfuCallId::from_bytes([7; 16]), 1, &members).unwrap();
    let e2ee = GroupE2ee::new(GroupCallId([7; 16]), MemberSlot(0), &mut rand::rng()).unwrap();
    let key = GroupKey {
        call_id: [7; 16],
        key_message: e2ee.key_message().encode(),
        roster: roster.encode(),
    };
    // One message each way first: A's prekey message, then B's answer.
    let mut b = SignalingClient::new(b_transport, b_sealer);
    let key_a = key.clone();
    a.send(b_id, CallMessage::GroupKey(key.clone()))
        .await
        .expect("first message");
    b.recv().await.expect("first message in");
    let (_, answered) = b
        .start_send(a_id, CallMessage::GroupKey(key.clone()))
        .await
        .expect("answer");
    a.recv().await.expect("answer in");
    answered.await.expect("answer acknowledged");
    // B reads (and acknowledges) from now on, and answers each message with one of its own.
    let (opened_tx, mut opened) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Ok(SignalingEvent::Message(_)) = b.recv().await {
            if opened_tx.send(Instant::now()).is_err() {
                break;
            }
            let Ok((_, answered)) = b.start_send(a_id, CallMessage::GroupKey(key.clone())).await
            else {
                break;
            };
            tokio::spawn(answered);
        }
    });
    let mut y = Yardstick {
        round_trips: Vec::new(),
        echoes: Vec::new(),
        deliveries: Vec::new(),
        seals: Vec::new(),
    };
    for _ in 0..SAMPLES {
        let t0 = Instant::now();
        let envelope = a
            .seal(b_id, CallMessage::GroupKey(key_a.clone()))
            .await
            .expect("sealed");
        let t1 = Instant::now();
        let receipt = a.transport_mut().start_send(envelope).await.expect("sent");
        let answered = async {
            receipt.await.expect("answered");
            Instant::now()
        };
        let echoed = async {
            loop {
                if let SignalingEvent::Message(_) = a.recv().await.expect("answer in") {
                    return Instant::now();
                }
            }
        };
        let (t2, t3) = tokio::join!(answered, echoed);
        let at = opened.recv().await.expect("opened");
        y.seals.push(t1 - t0);
        y.round_trips.push(t2 - t1);
        y.echoes.push(t3 - t1);
        y.deliveries.push(at - t1);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    reader.abort();
    y
}

/// A TCP proxy on loopback in front of `target`: each chunk read from either side is written
/// to the other `delay` after it was read, in order (no bandwidth limit, nothing lost), so a
/// round trip through it takes 2 × `delay` more. Runs until the returned task is aborted.
async fn delay_proxy(
    target: SocketAddr,
    delay: Duration,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
    let addr = listener.local_addr().expect("proxy address");
    let task = tokio::spawn(async move {
        let mut links = JoinSet::new();
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = TcpStream::connect(target).await else {
                continue;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            links.spawn(delayed_copy(in_read, out_write, delay));
            links.spawn(delayed_copy(out_read, in_write, delay));
        }
    });
    (addr, task)
}

/// One direction of [`delay_proxy`]: reads chunks as they come and writes each at its due time.
async fn delayed_copy(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            if tx
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .is_err()
            {
                return;
            }
        }
        // The end of the stream is delayed too (an empty chunk): a leaving client's closed
        // connection reaches the SFU no sooner than its last bytes would.
        let _ = tx.send((Instant::now() + delay, Vec::new()));
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due.into()).await;
            if chunk.is_empty() || to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

/// The medians of one run of the call (five leaves) and of its yardstick.
struct Summary {
    notice: Duration,
    from_notice: Duration,
    pair: Duration,
    keys_held: Duration,
    senders: Duration,
    answer: Duration,
    echo: Duration,
    one_way: Duration,
    seal: Duration,
}

/// Forwards every event of `call` (as member `i`) into `tx`, timestamped as it comes out.
fn forward_events(
    i: usize,
    call: Arc<GroupCall>,
    tx: mpsc::UnboundedSender<(usize, Instant, GroupCallEvent)>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(e) = call.next_event().await {
            if tx.send((i, Instant::now(), e)).is_err() {
                break;
            }
        }
    })
}

/// The call of four over a fresh relay and SFU, the fourth leaving five times; with `delay`,
/// every client reaches the relay and the SFU's signaling through a [`delay_proxy`] of that
/// one-way delay.
async fn rotation_run(label: &str, delay: Option<Duration>) -> Summary {
    let dir = std::env::temp_dir().join(format!(
        "hush-group-rotation-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let relay = Relay::bind(RelayConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.join("relay.db"),
    ))
    .await
    .unwrap();
    let mut relay_addr = relay.local_addr();
    let relay_task = tokio::spawn(async move {
        let _ = relay.serve().await;
    });
    let tapped: Tapped = Arc::new(Mutex::new(Vec::new()));
    let sink = tapped.clone();
    let mut config = ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    );
    config.sfu = SfuConfig {
        loudest_n: None,
        tap: Some(ForwardTap(Arc::new(move |p: &[u8]| {
            sink.lock().unwrap().push((Instant::now(), p.to_vec()));
        }))),
        ..SfuConfig::default()
    };
    let server = Server::start(config, SfuSigningKey::generate(&mut rand::rng()))
        .await
        .unwrap();
    let mut sfu = info(&server);
    let mut proxies = Vec::new();
    if let Some(delay) = delay {
        let (addr, task) = delay_proxy(relay_addr, delay).await;
        relay_addr = addr;
        proxies.push(task);
        let (addr, task) = delay_proxy(sfu.address, delay).await;
        sfu = SfuInfo {
            address: addr,
            key: sfu.key,
        };
        proxies.push(task);
    }

    let clients = relay_devices(relay_addr, 4).await;
    let others: Vec<_> = clients[1..].iter().map(Client::device_id).collect();
    let mut calls = vec![clients[0].group_call(sfu, &others).await.unwrap()];
    let mut invites = Vec::new();
    for c in &clients[1..] {
        let invite = invitation(c).await;
        calls.push(c.join_group_call(&invite).await.unwrap());
        invites.push(invite);
    }
    for call in &calls {
        joined_and_connected(call, 3).await;
    }
    let mut calls: Vec<Arc<GroupCall>> = calls.into_iter().map(Arc::new).collect();
    // Everyone talks the whole time.
    let talking = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut speakers = Vec::new();
    for call in &calls[..3] {
        let call = call.clone();
        let talking = talking.clone();
        speakers.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_millis(20));
            let mut n = 0;
            while talking.load(std::sync::atomic::Ordering::Relaxed) {
                ticker.tick().await;
                let _ = call.send_audio(&tone(n));
                n += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Every event of the three members that stay (0..3) and of the one that leaves (3),
    // timestamped as it arrives (the test learns of a key when `SenderKeyInstalled` comes out
    // of the call, as an app would).
    let stable: Vec<DeviceId> = clients[..3].iter().map(Client::device_id).collect();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let mut forwarders: Vec<_> = calls
        .iter()
        .enumerate()
        .map(|(i, call)| forward_events(i, call.clone(), ev_tx.clone()))
        .collect();
    let mut events = Events {
        rx: ev_rx,
        stable,
        generations: HashMap::new(),
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let three = clients[3].device_id();

    let mut rounds = Vec::new();
    for round in 0..5 {
        // Member 3 leaves (and comes back between rounds).
        events.drain();
        let before = events.generations.clone();
        let mark = tapped.lock().unwrap().len();
        let left = Instant::now();
        calls[3].leave();
        // Until every remaining member has had the leave notice and has installed the two
        // other remaining senders' new keys (each arrives sealed over the relay).
        let mut notices: [Option<Instant>; 3] = [None; 3];
        let mut keys: HashMap<(usize, usize), Instant> = HashMap::new();
        while notices.iter().any(Option::is_none) || keys.len() < 6 {
            let (i, at, e) = events.next(left + Duration::from_secs(10)).await;
            if i == 3 {
                continue;
            }
            match e {
                GroupCallEvent::ParticipantLeft { device, .. } if device == three => {
                    notices[i] = Some(at);
                }
                GroupCallEvent::SenderKeyInstalled { generation, .. } => {
                    if let Some(s) = events.sender_of(&e) {
                        if generation > before.get(&(i, s)).copied().unwrap_or(0) {
                            keys.entry((i, s)).or_insert(at);
                        }
                    }
                }
                _ => {}
            }
        }
        let notices: Vec<Instant> = notices.iter().map(|n| n.unwrap()).collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        events.drain();
        // The member that left holds none of the keys the others now send under.
        for s in 0..3 {
            let new = (0..3)
                .filter(|&r| r != s)
                .map(|r| events.generations[&(r, s)])
                .min()
                .unwrap();
            let departed = events.generations.get(&(3, s)).copied().unwrap_or(0);
            assert!(
                new > departed,
                "{label} round {round}: sender {s}'s new generation {new}, the departed \
                 member holds {departed}"
            );
        }
        // When each remaining sender's frames first came under a newer generation.
        let tap = tapped.lock().unwrap().clone();
        let mut first_new: HashMap<u8, Instant> = HashMap::new();
        let mut old: HashMap<u8, u16> = HashMap::new();
        for (_, p) in &tap[..mark] {
            if let Some((s, g)) = RtpPacket::parse(p)
                .ok()
                .and_then(|p| generation(&p.payload))
            {
                let e = old.entry(s).or_insert(0);
                *e = (*e).max(g);
            }
        }
        for (t, p) in &tap[mark..] {
            if let Some((s, g)) = RtpPacket::parse(p)
                .ok()
                .and_then(|p| generation(&p.payload))
            {
                if old.get(&s).is_some_and(|o| g > *o) {
                    first_new.entry(s).or_insert(*t);
                }
            }
        }
        assert_eq!(first_new.len(), 3, "{label} round {round}: {first_new:?}");
        let from_notice: Vec<Duration> = keys
            .iter()
            .map(|(&(_, s), at)| at.saturating_duration_since(notices[s]))
            .collect();
        let figures = Round {
            notices: notices.iter().map(|n| *n - left).collect(),
            // Each sender rotates on its own notice: from there to its key being held by
            // both other members, the longest of the three senders.
            from_notice: *from_notice.iter().max().unwrap(),
            pair_median: median(from_notice),
            keys_held: keys.values().map(|at| *at - left).max().unwrap(),
            senders_switched: first_new.values().map(|t| *t - left).max().unwrap(),
        };
        println!(
            "{label} rotation round {round}: leave notices after {} ms; each sender's new key \
             held by the others at most {} ms after its notice (median of the six keys {} ms); \
             all new keys held {} ms after the leave; all senders on the new key at the SFU \
             after {} ms",
            figures
                .notices
                .iter()
                .map(|d| ms(*d))
                .collect::<Vec<_>>()
                .join(", "),
            ms(figures.from_notice),
            ms(figures.pair_median),
            ms(figures.keys_held),
            ms(figures.senders_switched),
        );
        rounds.push(figures);
        // Member 3 comes back for the next round.
        let back = clients[3].join_group_call(&invites[2]).await.unwrap();
        joined_and_connected(&back, 3).await;
        let mut seen = [false; 3];
        while seen.iter().any(|s| !s) {
            let (i, _, e) = events.next(Instant::now() + WAIT).await;
            if i < 3 && e == GroupCallEvent::ParticipantJoined(three) {
                seen[i] = true;
            }
        }
        calls[3] = Arc::new(back);
        forwarders.push(forward_events(3, calls[3].clone(), ev_tx.clone()));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // The yardstick, on the same relay (through the same proxy), while the call goes on: a
    // round trip between two devices over the relay and the sealing of one key message.
    let yardstick = yardstick(relay_addr).await;

    let summary = Summary {
        notice: median(rounds.iter().flat_map(|r| r.notices.clone()).collect()),
        from_notice: median(rounds.iter().map(|r| r.from_notice).collect()),
        pair: median(rounds.iter().map(|r| r.pair_median).collect()),
        keys_held: median(rounds.iter().map(|r| r.keys_held).collect()),
        senders: median(rounds.iter().map(|r| r.senders_switched).collect()),
        answer: median(yardstick.round_trips.clone()),
        echo: median(yardstick.echoes.clone()),
        one_way: median(yardstick.deliveries.clone()),
        seal: median(yardstick.seals.clone()),
    };
    println!(
        "{label} rotation over the relay, median of {} rounds: leave notice {} ms; notice -> \
         new key held by all {} ms (one key {} ms); leave -> all new keys held {} ms; senders \
         on the new key at the SFU {} ms",
        rounds.len(),
        ms(summary.notice),
        ms(summary.from_notice),
        ms(summary.pair),
        ms(summary.keys_held),
        ms(summary.senders)
    );
    println!(
        "{label} yardstick on the same relay, median of {}: round trip (send -> the \
         recipient's answer opened) {} ms [{} .. {}]; relay's answer (on the recipient's \
         acknowledgement or commit) {} ms [{} .. {}]; one-way delivery (send -> opened by the \
         recipient) {} ms; sealing one key message {} ms; 1 RTT + 2 x sealing (two recipients, \
         sealed in turn) = {} ms",
        yardstick.echoes.len(),
        ms(summary.echo),
        ms(*yardstick.echoes.iter().min().unwrap()),
        ms(*yardstick.echoes.iter().max().unwrap()),
        ms(summary.answer),
        ms(*yardstick.round_trips.iter().min().unwrap()),
        ms(*yardstick.round_trips.iter().max().unwrap()),
        ms(summary.one_way),
        ms(summary.seal),
        ms(summary.echo + 2 * summary.seal)
    );
    talking.store(false, std::sync::atomic::Ordering::Relaxed);
    for s in speakers {
        let _ = s.await;
    }
    for f in forwarders {
        f.abort();
    }
    drop(calls);
    server.shutdown().await;
    relay_task.abort();
    for p in proxies {
        p.abort();
    }
    let _ = std::fs::remove_dir_all(&dir);
    summary
}

/// The middle value (the upper one of an even count).
fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_time_after_a_leave_over_the_relay() {
    let runs = [
        ("loopback", None),
        ("one-way 10 ms", Some(Duration::from_millis(10))),
        ("one-way 25 ms", Some(Duration::from_millis(25))),
    ];
    let mut table = Vec::new();
    for (label, delay) in runs {
        table.push((label, rotation_run(label, delay).await));
    }
    println!(
        "| path | leave → notice | notice → all keys | one key | leave → all keys | SFU on new \
         key | RTT (answer opened) | relay's answer | one-way | sealing | yardstick (RTT + 2 \
         × sealing) |"
    );
    for (label, s) in &table {
        println!(
            "| {label} | {} ms | {} ms | {} ms | {} ms | {} ms | {} ms | {} ms | {} ms | {} ms | \
             {} ms |",
            ms(s.notice),
            ms(s.from_notice),
            ms(s.pair),
            ms(s.keys_held),
            ms(s.senders),
            ms(s.echo),
            ms(s.answer),
            ms(s.one_way),
            ms(s.seal),
            ms(s.echo + 2 * s.seal)
        );
    }
}

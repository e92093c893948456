//! A group call through an SFU, all in this process over loopback UDP.
//!
//! Starts a `hush-sfu` server (ICE-lite media port, TCP signaling) and N clients with fresh
//! Signal identities; every pair of devices has a Signal session (on an in-memory signaling
//! network). It creates the group call with all of them through the public
//! `Client::group_call` API: signed roster, join, sealed invitations; each other client joins
//! from the invitation it receives. Everyone then sends a tone (participant k at 300 + 60·k Hz)
//! for the given time; participant k is loud during second k mod N and quiet otherwise, so the
//! SFU's dominant speaker moves around. The last line printed is one JSON summary: per
//! participant, frames sent, frames decoded and concealed per peer, active speaker changes; and
//! the SFU driver's counters. The exit status is non-zero if the call failed.
//!
//! ```text
//! cargo run --example group_call -- --participants 6 [--video] [--seconds 10] [--loss PCT]
//!                                   [--loudest-n N|all] [--downlink-kbps K]
//! ```
//!
//! `--video` makes every participant also send 640×360 camera pictures at 12.5 per second
//! (three simulcast layers); the summary then counts each peer's decoded pictures and the
//! height of the last one, and how often the layer of the pictures from that peer changed.
//! `--downlink-kbps K` puts the last participant's downlink (SFU → it) behind a K kbit/s
//! bottleneck: its feedback makes the SFU forward it lower layers than the others get.
//!
//! `--loss PCT` makes every client drop that share of the datagrams it sends to the SFU;
//! `--loudest-n` is the SFU's audio selection (default 3: only the three loudest participants'
//! audio is forwarded; `all` forwards everyone's).

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use hush::{
    Client, ClientConfig, ClientEvent, FrameSource, GroupCall, GroupCallEvent, I420Frame, SfuInfo,
    SimulatedLink,
};
use hush_crypto::{Device, DeviceStore, MemoryBackend};
use hush_net::driver::Bind;
use hush_sfu::join::SfuSigningKey;
use hush_sfu::server::{Server, ServerConfig};
use hush_signaling::crypto::SignalSealer;
use hush_signaling::transport::FetchedBundle;
use hush_signaling::{DeviceId, MemoryNetwork, SignalingClient};

type Failure = Box<dyn std::error::Error + Send + Sync>;

const WAIT: Duration = Duration::from_secs(20);

struct Args {
    participants: usize,
    seconds: u32,
    loss: f64,
    loudest_n: Option<usize>,
    video: bool,
    downlink_kbps: Option<u64>,
}

/// A group call through an SFU started in-process (see the file's documentation).
#[derive(Debug, clap::Parser)]
#[command(name = "group_call")]
struct Cli {
    /// Clients in the call (2 to 32).
    #[arg(long, value_name = "N", default_value_t = 6,
          value_parser = clap::value_parser!(u32).range(2..=32))]
    participants: u32,
    /// Seconds the call lasts.
    #[arg(long, value_name = "N", default_value_t = 10)]
    seconds: u32,
    /// Drop this share (0 to 100) of each client's outgoing media packets.
    #[arg(long, value_name = "PCT", default_value_t = 0.0)]
    loss: f64,
    /// How many loudest speakers the SFU forwards, or "all".
    #[arg(long, value_name = "N|all", default_value = "3")]
    loudest_n: String,
    /// Everyone also sends video (640×360 test pictures in three simulcast layers).
    #[arg(long)]
    video: bool,
    /// Cap the last participant's downlink (SFU → it) at this many kbit/s.
    #[arg(long, value_name = "K")]
    downlink_kbps: Option<u64>,
}

fn parse_args() -> Result<Args, Failure> {
    let cli = <Cli as clap::Parser>::parse();
    if !(0.0..=100.0).contains(&cli.loss) {
        return Err("--loss must be 0..=100".into());
    }
    let loudest_n = match cli.loudest_n.as_str() {
        "all" => None,
        n => Some(n.parse()?),
    };
    Ok(Args {
        participants: cli.participants.try_into()?,
        seconds: cli.seconds,
        loss: cli.loss / 100.0,
        loudest_n,
        video: cli.video,
        downlink_kbps: cli.downlink_kbps,
    })
}

fn sealer(signal_device_id: u8) -> Result<SignalSealer<MemoryBackend>, Failure> {
    let store = DeviceStore::create(MemoryBackend::new(), signal_device_id, &mut rand::rng())?;
    Ok(SignalSealer::new(Device::new(store)))
}

fn config(args: &Args) -> Result<ClientConfig, Failure> {
    let net = hush_net::Config::builder().include_loopback(true).build()?;
    let mut config = ClientConfig::new(net);
    config.bind = Bind::Addresses(vec!["127.0.0.1".parse()?]);
    config.simulated_send_loss = args.loss;
    Ok(config)
}

/// N clients on an in-memory signaling network, each with a Signal session with every other.
fn clients(args: &Args) -> Result<(Vec<Client>, MemoryNetwork), Failure> {
    let network = MemoryNetwork::new();
    let mut sealers = Vec::new();
    for i in 0..args.participants {
        sealers.push(sealer(u8::try_from(i + 1)?)?);
    }
    // Every pair has a Signal session (members hand each other their SFrame sender keys over
    // them): each device starts one with every later device's bundle.
    let n = sealers.len();
    for j in 1..n {
        let material = sealers[j].publish(n, 1)?;
        let device = sealers[j].device_id();
        let mut one_time = material.one_time_prekeys.into_iter();
        for earlier in sealers.iter_mut().take(j) {
            earlier.start_session(&FetchedBundle {
                device,
                bundle: material.bundle.clone(),
                one_time_prekey: one_time.next(),
            })?;
        }
    }
    let config = config(args)?;
    let clients = sealers
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let endpoint = network.endpoint(s.device_id());
            let mut config = config.clone();
            if i + 1 == n {
                if let Some(kbps) = args.downlink_kbps {
                    config.simulated_group_downlink =
                        SimulatedLink::new().bandwidth_bps(Some(kbps * 1000));
                }
            }
            Client::builder(SignalingClient::new(endpoint, s), config.net.clone())
                .config(config)
                .build()
        })
        .collect();
    Ok((clients, network))
}

/// One 20 ms frame of participant `k`'s tone, frame `n`, loud or quiet.
fn tone(k: usize, n: u32, loud: bool) -> Vec<i16> {
    let freq = 300.0 + 60.0 * k as f64;
    let amp = if loud { 10_000.0 } else { 300.0 };
    (0..960u32)
        .map(|i| {
            let t = f64::from(n * 960 + i) / 48_000.0;
            (amp * (2.0 * std::f64::consts::PI * freq * t).sin()) as i16
        })
        .collect()
}

/// Participant `k`'s camera picture for audio frame `f`: a moving diagonal pattern, tinted per
/// participant.
fn picture(k: usize, f: u32) -> Result<I420Frame, Failure> {
    let (w, h) = (640usize, 360usize);
    let shift = f as usize * 2;
    let y = (0..w * h)
        .map(|i| ((i % w + i / w + shift) % 200 + 20) as u8)
        .collect();
    let c = (w / 2) * (h / 2);
    let tint = (40 + 50 * k % 180) as u8;
    Ok(I420Frame::new(
        640,
        360,
        [y, vec![tint; c], vec![128; c]],
        [w, w / 2, w / 2],
        std::time::Instant::now(),
    )?)
}

fn short(d: &DeviceId) -> String {
    d.to_hex().chars().take(8).collect()
}

#[derive(Default)]
struct Heard {
    decoded: HashMap<DeviceId, u64>,
    concealed: HashMap<DeviceId, u64>,
    speaker_changes: u64,
    joined: u64,
    video: HashMap<DeviceId, u64>,
    video_height: HashMap<DeviceId, u32>,
    /// Changes of the layer of the pictures received from each peer.
    layer_changes: HashMap<DeviceId, u64>,
    layer: HashMap<DeviceId, u8>,
}

async fn run(args: Args) -> Result<bool, Failure> {
    let mut sfu_config = ServerConfig::new("127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?);
    sfu_config.sfu.loudest_n = args.loudest_n;
    let server = Server::start(sfu_config, SfuSigningKey::generate(&mut rand::rng())).await?;
    eprintln!(
        "sfu: media {} signaling {}",
        server.media_addr(),
        server.signal_addr()
    );
    let sfu = SfuInfo {
        address: server.signal_addr(),
        key: server.public_key(),
    };
    let (clients, _network) = clients(&args)?;
    let others: Vec<DeviceId> = clients[1..].iter().map(Client::device_id).collect();
    let mut calls = vec![clients[0].group_call(sfu, &others).await?];
    for c in &clients[1..] {
        let invite = loop {
            match tokio::time::timeout(WAIT, c.next_event()).await? {
                Some(ClientEvent::GroupInvite(invite)) => break invite,
                Some(_) => continue,
                None => return Err("client stopped".into()),
            }
        };
        calls.push(c.join_group_call(&invite).await?);
    }
    let n = calls.len();
    let calls: Vec<Arc<GroupCall>> = calls.into_iter().map(Arc::new).collect();
    // Wait until everyone is connected and knows everyone.
    for call in &calls {
        let (mut joined, mut connected) = (0, false);
        while joined < n - 1 || !connected {
            match tokio::time::timeout(WAIT, call.next_event()).await? {
                Some(GroupCallEvent::ParticipantJoined(_)) => joined += 1,
                Some(GroupCallEvent::Connected) => connected = true,
                Some(_) => {}
                None => return Err("group call ended while joining".into()),
            }
        }
    }
    eprintln!("{n} participants connected; talking for {} s", args.seconds);

    let frames = args.seconds * 50;
    let listen_for = Duration::from_millis(u64::from(frames) * 20 + 800);
    let mut listeners = Vec::new();
    for call in &calls {
        let call = call.clone();
        listeners.push(tokio::spawn(async move {
            let mut heard = Heard::default();
            let end = tokio::time::Instant::now() + listen_for;
            loop {
                tokio::select! {
                    v = call.recv_video() => match v {
                        Some(v) => {
                            *heard.video.entry(v.device).or_insert(0) += 1;
                            heard.video_height.insert(v.device, v.frame.height());
                            if heard.layer.insert(v.device, v.layer).is_some_and(|l| l != v.layer) {
                                *heard.layer_changes.entry(v.device).or_insert(0) += 1;
                            }
                        }
                        None => break,
                    },
                    a = call.recv_audio() => match a {
                        Some(a) => {
                            let map = match a.frame.source {
                                FrameSource::Concealed => &mut heard.concealed,
                                _ => &mut heard.decoded,
                            };
                            *map.entry(a.device).or_insert(0) += 1;
                        }
                        None => break,
                    },
                    e = call.next_event() => match e {
                        Some(GroupCallEvent::ActiveSpeaker(_)) => heard.speaker_changes += 1,
                        Some(GroupCallEvent::ParticipantJoined(_)) => heard.joined += 1,
                        Some(_) => {}
                        None => break,
                    },
                    () = tokio::time::sleep_until(end) => break,
                }
            }
            heard
        }));
    }
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    for f in 0..frames {
        ticker.tick().await;
        let second = (f / 50) as usize;
        for (k, call) in calls.iter().enumerate() {
            call.send_audio(&tone(k, f, second % n == k))?;
            if args.video && f % 4 == 0 {
                call.send_video(&picture(k, f)?)?;
            }
        }
    }
    let mut heard = Vec::new();
    for l in listeners {
        heard.push(l.await?);
    }
    let mut stats = Vec::new();
    for call in &calls {
        stats.push(call.stats().await?);
    }
    let sfu_stats = server.stats().await?;
    for call in &calls {
        call.leave();
    }
    drop(calls);
    server.shutdown().await;

    // Everyone must have decoded something of everyone whose audio the SFU forwards to all
    // (with loudest-N, everyone is among the loudest during its own loud second).
    let mut ok = true;
    let mut parts = Vec::new();
    for (i, (h, s)) in heard.iter().zip(&stats).enumerate() {
        let me = clients[i].device_id();
        let mut peers = Vec::new();
        for c in &clients {
            let d = c.device_id();
            if d == me {
                continue;
            }
            let decoded = h.decoded.get(&d).copied().unwrap_or(0);
            let concealed = h.concealed.get(&d).copied().unwrap_or(0);
            if decoded == 0 {
                ok = false;
            }
            let video = if args.video {
                let pictures = h.video.get(&d).copied().unwrap_or(0);
                if pictures == 0 {
                    ok = false;
                }
                let height = h.video_height.get(&d).copied().unwrap_or(0);
                let changes = h.layer_changes.get(&d).copied().unwrap_or(0);
                format!(",\"video_decoded\":{pictures},\"video_height\":{height},\"layer_changes\":{changes}")
            } else {
                String::new()
            };
            peers.push(format!(
                "{{\"peer\":\"{}\",\"decoded\":{decoded},\"concealed\":{concealed}{video}}}",
                short(&d)
            ));
        }
        parts.push(format!(
            "{{\"device\":\"{}\",\"frames_sent\":{},\"video_pictures_sent\":{},\"video_pictures_dropped\":{},\"received\":[{}],\"active_speaker_changes\":{},\"late\":{},\"srtp_failures\":{},\"mixed_frames\":{},\"transport_feedback_sent\":{},\"video_nacked\":{},\"video_packets_recovered\":{},\"video_keyframes_requested\":{}}}",
            short(&me),
            s.frames_sent,
            s.video_pictures_sent,
            s.video_pictures_dropped,
            peers.join(","),
            h.speaker_changes,
            s.late,
            s.srtp_failures,
            s.mixed_frames,
            s.transport_feedback_sent,
            s.video_nacked,
            s.video_packets_recovered,
            s.video_keyframes_requested,
        ));
    }
    println!(
        "{{\"participants\":{n},\"seconds\":{},\"loss_pct\":{},\"loudest_n\":{},\"ok\":{ok},\"sfu\":{{\"joins\":{},\"checks_answered\":{},\"checks_refused\":{},\"media_dropped\":{},\"media_unknown_source\":{},\"no_path\":{},\"layer_switches\":{}}},\"per_participant\":[{}]}}",
        args.seconds,
        args.loss * 100.0,
        args.loudest_n.map_or("\"all\"".to_string(), |n| n.to_string()),
        sfu_stats.joins,
        sfu_stats.checks_answered,
        sfu_stats.checks_refused,
        sfu_stats.media_dropped,
        sfu_stats.media_unknown_source,
        sfu_stats.no_path,
        sfu_stats.layer_switches,
        parts.join(","),
    );
    Ok(ok)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("group_call: {e}");
            eprintln!("usage: cargo run --example group_call -- --participants N [--video] [--seconds S] [--loss PCT] [--loudest-n N|all] [--downlink-kbps K]");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("group_call: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("group_call: {e}");
            ExitCode::FAILURE
        }
    }
}

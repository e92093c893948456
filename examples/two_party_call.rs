//! A whole hush call between two devices on this machine.
//!
//! With no arguments it starts a hush relay in-process on loopback, creates Alice and Bob with
//! fresh Signal identities, has Bob publish his prekeys and Alice fetch them (PQXDH session),
//! and then Alice calls Bob through the public `Client`/`Call` API: sealed offer, ringing,
//! accept, sealed answer, per-call keys, ICE over real UDP sockets, SRTP, the media engine and
//! Opus. Each side sends 5 s of a tone (Alice 440 Hz, Bob 660 Hz); each receiver checks that it
//! decodes the other's tone. Both print statistics, Alice hangs up.
//!
//! The last line printed is one JSON object; the exit status is non-zero if the call failed.
//!
//! ```text
//! cargo run --example two_party_call [-- --relay ADDR] [--loss PCT] [--seconds N]
//!                                       [--relay-only --turn ADDR --turn-user U --turn-pass P]
//!                                       [--relay-only --turn ADDR --turn-secret S]
//!                                       [--network-change-at SECS]
//!                                       [--delay-ms MS] [--jitter-ms MS] [--bandwidth-kbps K]
//!                                       [--burst-loss MEAN] [--seed N]
//!                                       [--audio-in IN.wav --audio-out OUT.wav]
//! ```
//!
//! `--relay ADDR` uses a running `hush-relay` instead of the in-process one; `--loss PCT`
//! drops that share of each side's outgoing media packets; `--relay-only` sends media through
//! the TURN server given with `--turn` (long-term credentials), hiding each device's address;
//! with `--turn-secret S` instead of a user and password, the in-process relay hands each device
//! short-lived TURN credentials (coturn `use-auth-secret` with `static-auth-secret=S`) and the
//! clients fetch them themselves;
//! `--network-change-at SECS` has Bob's device change network that far into the call (new
//! sockets, ICE restart over signaling, media resumes on the new path).
//!
//! Impairments (applied to each side's outgoing media, so the round trip is twice the delay):
//! `--delay-ms` one-way delay, `--jitter-ms` a uniform extra delay of up to that much,
//! `--bandwidth-kbps` a drop-tail bottleneck (IPv4/UDP headers counted), `--burst-loss MEAN`
//! makes `--loss` come in Gilbert–Elliott bursts of that mean length, `--seed` replays the
//! same draws. `--audio-in` has Alice send a 48 kHz mono 16-bit WAV instead of her tone (the
//! call lasts as long as the file); `--audio-out` writes what Bob played, from the first frame
//! he heard to the last, concealed frames included, as a WAV of the same format.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use hush::machine::EndReason;
use hush::{Call, CallEvent, Client, ClientConfig, FrameSource, SimulatedLink};
use hush_crypto::{Device, DeviceStore, MemoryBackend};
use hush_net::driver::Bind;
use hush_net::{Policy, TurnCredentials};
use hush_relay::{Relay, RelayConfig};
use hush_signaling::crypto::SignalSealer;
use hush_signaling::transport::{RelayClient, RelayClientConfig};
use hush_signaling::SignalingClient;

type Failure = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug)]
struct Args {
    relay: Option<SocketAddr>,
    loss: f64,
    seconds: u32,
    relay_only: bool,
    turn: Option<SocketAddr>,
    turn_user: String,
    turn_pass: String,
    turn_secret: Option<String>,
    network_change_at: Option<f64>,
    link: SimulatedLink,
    audio_in: Option<PathBuf>,
    audio_out: Option<PathBuf>,
}

/// A whole hush call between two devices on this machine (see the file's documentation).
#[derive(Debug, clap::Parser)]
#[command(name = "two_party_call")]
struct Cli {
    /// Use this running hush-relay instead of starting one in-process.
    #[arg(long, value_name = "ADDR")]
    relay: Option<SocketAddr>,
    /// Drop this share of each side's outgoing media packets.
    #[arg(long, value_name = "PCT", default_value_t = 0.0)]
    loss: f64,
    /// Seconds of tone each side sends.
    #[arg(long, value_name = "N", default_value_t = 5)]
    seconds: u32,
    /// Media only through the TURN server given with --turn (hides each device's address).
    #[arg(long, requires = "turn")]
    relay_only: bool,
    /// A TURN server.
    #[arg(long, value_name = "ADDR")]
    turn: Option<SocketAddr>,
    /// TURN long-term username.
    #[arg(long, value_name = "U", default_value = "")]
    turn_user: String,
    /// TURN long-term password.
    #[arg(long, value_name = "P", default_value = "")]
    turn_pass: String,
    /// Instead of a user and password: the in-process relay hands out short-lived TURN
    /// credentials for a coturn with `use-auth-secret` and `static-auth-secret=S`.
    #[arg(long, value_name = "S", requires = "turn", conflicts_with = "relay")]
    turn_secret: Option<String>,
    /// Bob's device changes network this far into the call.
    #[arg(long, value_name = "SECS")]
    network_change_at: Option<f64>,
    /// One-way delay added to each side's outgoing media.
    #[arg(long, value_name = "MS")]
    delay_ms: Option<u64>,
    /// Uniform extra delay of up to this much.
    #[arg(long, value_name = "MS")]
    jitter_ms: Option<u64>,
    /// Drop-tail bottleneck on each side's outgoing media (IPv4/UDP headers counted).
    #[arg(long, value_name = "K")]
    bandwidth_kbps: Option<f64>,
    /// --loss comes in Gilbert–Elliott bursts of this mean length.
    #[arg(long, value_name = "MEAN")]
    burst_loss: Option<f64>,
    /// Seed of the impairments' random draws.
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Alice sends this 48 kHz mono 16-bit WAV instead of her tone.
    #[arg(long, value_name = "IN.wav")]
    audio_in: Option<PathBuf>,
    /// Write what Bob played as a WAV.
    #[arg(long, value_name = "OUT.wav")]
    audio_out: Option<PathBuf>,
}

fn parse_args() -> Result<Args, Failure> {
    let cli = <Cli as clap::Parser>::parse();
    let mut link = SimulatedLink::new();
    if let Some(ms) = cli.delay_ms {
        link = link.delay(Duration::from_millis(ms));
    }
    if let Some(ms) = cli.jitter_ms {
        link = link.jitter(Duration::from_millis(ms));
    }
    if let Some(kbps) = cli.bandwidth_kbps {
        link = link.bandwidth_bps(Some((kbps * 1000.0) as u64));
    }
    if cli.burst_loss.is_some() {
        link = link.burst_loss_mean(cli.burst_loss);
    }
    if cli.seed.is_some() {
        link = link.seed(cli.seed);
    }
    Ok(Args {
        relay: cli.relay,
        loss: cli.loss / 100.0,
        seconds: cli.seconds,
        relay_only: cli.relay_only,
        turn: cli.turn,
        turn_user: cli.turn_user,
        turn_pass: cli.turn_pass,
        turn_secret: cli.turn_secret,
        network_change_at: cli.network_change_at,
        link,
        audio_in: cli.audio_in,
        audio_out: cli.audio_out,
    })
}

fn sealer(signal_device_id: u8) -> Result<SignalSealer<MemoryBackend>, Failure> {
    let store = DeviceStore::create(MemoryBackend::new(), signal_device_id, &mut rand::rng())?;
    Ok(SignalSealer::new(Device::new(store)))
}

fn client_config(args: &Args) -> Result<ClientConfig, Failure> {
    let mut net = hush_net::Config::builder().include_loopback(true);
    if args.turn_secret.is_some() {
        // The relay grants the TURN server with short-lived credentials before each call.
        net = net.turn_provided_later(true);
    } else if let Some(turn) = args.turn {
        net = net.turn_server(
            turn,
            TurnCredentials::long_term(args.turn_user.clone(), args.turn_pass.clone()),
        );
    }
    if args.relay_only {
        net = net.policy(Policy::RelayOnly);
    }
    let mut config = ClientConfig::new(net.build()?);
    config.bind = Bind::Addresses(vec!["127.0.0.1".parse()?]);
    config.simulated_send_loss = args.loss;
    config.simulated_link = args.link.clone();
    Ok(config)
}

/// 20 ms of a `hz` tone at 48 kHz, frame `n` of the stream.
fn tone(hz: f64, n: u32) -> Vec<i16> {
    (0..960u32)
        .map(|i| {
            let t = f64::from(n * 960 + i) / 48_000.0;
            (8_000.0 * (2.0 * std::f64::consts::PI * hz * t).sin()) as i16
        })
        .collect()
}

/// Estimates the dominant frequency of a frame from its zero crossings.
fn frequency(pcm: &[i16]) -> f64 {
    let crossings = pcm.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
    crossings as f64 / 2.0 / (pcm.len() as f64 / 48_000.0)
}

#[derive(Debug, Default)]
struct Heard {
    decoded: u32,
    fec: u32,
    concealed: u32,
    on_pitch: u32,
    first_at: Option<Instant>,
    /// Concealed frames since the last real one: counted only once the stream goes on (the
    /// tail after the peer stopped talking is silence, not loss).
    trailing: u32,
    /// What was played from the first real frame on, when recording.
    recorded: Option<Vec<i16>>,
    /// Length of `recorded` at the end of the last real frame.
    recorded_real: usize,
    /// Frames since the first real one that were not decoded from a packet (FEC or
    /// concealment), by index.
    not_decoded_at: Vec<u32>,
    /// Frames heard since the first real one.
    since_first: u32,
}

/// What one side sends.
enum Source {
    Tone(f64),
    Samples(Vec<i16>),
}

impl Source {
    fn frame(&self, n: u32) -> Vec<i16> {
        match self {
            Self::Tone(hz) => tone(*hz, n),
            Self::Samples(all) => {
                let start = (n as usize * 960).min(all.len());
                let mut f = all[start..(start + 960).min(all.len())].to_vec();
                f.resize(960, 0);
                f
            }
        }
    }
}

fn read_wav(path: &Path) -> Result<Vec<i16>, Failure> {
    let mut reader = hound::WavReader::open(path)?;
    let spec = reader.spec();
    if spec.sample_rate != 48_000 || spec.channels != 1 || spec.bits_per_sample != 16 {
        return Err(format!(
            "{}: need 48 kHz mono 16-bit PCM, got {} Hz, {} channels, {} bits",
            path.display(),
            spec.sample_rate,
            spec.channels,
            spec.bits_per_sample
        )
        .into());
    }
    Ok(reader.samples::<i16>().collect::<Result<_, _>>()?)
}

fn write_wav(path: &Path, pcm: &[i16]) -> Result<(), Failure> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 48_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(path, spec)?;
    for &s in pcm {
        writer.write_sample(s)?;
    }
    writer.finalize()?;
    Ok(())
}

/// Sends `frames` of `source` at microphone pace while receiving the peer's, then reports.
/// `expect_hz` is the peer's tone, if it sends one.
async fn talk(
    call: &Call,
    source: &Source,
    expect_hz: Option<f64>,
    frames: u32,
    record: bool,
) -> Heard {
    let mut heard = Heard {
        recorded: record.then(Vec::new),
        ..Heard::default()
    };
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    let end = Instant::now() + Duration::from_millis(u64::from(frames) * 20 + 600);
    let mut n = 0;
    loop {
        tokio::select! {
            _ = ticker.tick(), if n < frames => {
                let _ = call.send_audio(&source.frame(n));
                n += 1;
            }
            frame = call.recv_audio() => {
                let Some(frame) = frame else { break };
                match frame.source {
                    FrameSource::Decoded => heard.decoded += 1,
                    FrameSource::Fec => heard.fec += 1,
                    FrameSource::Concealed => heard.trailing += 1,
                }
                let real = frame.source != FrameSource::Concealed;
                if heard.first_at.is_some() || real {
                    if frame.source != FrameSource::Decoded {
                        heard.not_decoded_at.push(heard.since_first);
                    }
                    heard.since_first += 1;
                }
                if real {
                    if heard.first_at.is_some() {
                        heard.concealed += heard.trailing;
                    }
                    heard.trailing = 0;
                    heard.first_at.get_or_insert_with(Instant::now);
                    if expect_hz.is_some_and(|hz| (frequency(&frame.pcm) - hz).abs() < 60.0) {
                        heard.on_pitch += 1;
                    }
                }
                if let Some(rec) = heard.recorded.as_mut().filter(|_| heard.first_at.is_some()) {
                    rec.extend_from_slice(&frame.pcm);
                    if real {
                        heard.recorded_real = rec.len();
                    }
                }
            }
            () = tokio::time::sleep_until(end.into()) => break,
        }
    }
    heard
}

async fn wait_connected(call: &Call) -> Result<String, Failure> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), call.next_event()).await? {
            Some(CallEvent::Connected { path }) => return Ok(path.to_string()),
            Some(CallEvent::Ended(reason)) => return Err(format!("call ended: {reason:?}").into()),
            Some(_) => {}
            None => return Err("client stopped".into()),
        }
    }
}

async fn run(args: Args) -> Result<bool, Failure> {
    // The signaling relay: in-process unless one was given.
    let scratch = std::env::temp_dir().join(format!("hush-example-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let relay_addr = match args.relay {
        Some(a) => a,
        None => {
            let mut config = RelayConfig::new("127.0.0.1:0".parse()?, scratch.join("relay.db"));
            if let (Some(secret), Some(turn)) = (&args.turn_secret, args.turn) {
                config.turn = Some(hush_relay::TurnConfig::new(
                    secret.as_bytes(),
                    vec![format!("turn:{turn}")],
                    Duration::from_secs(3600),
                )?);
            }
            let relay = Relay::bind(config).await?;
            let addr = relay.local_addr();
            tokio::spawn(relay.serve());
            addr
        }
    };
    println!("relay at {relay_addr}");
    let alice_source = match &args.audio_in {
        Some(path) => Source::Samples(read_wav(path)?),
        None => Source::Tone(440.0),
    };
    let speech = matches!(alice_source, Source::Samples(_));
    let frames = match &alice_source {
        Source::Samples(all) => all.len().div_ceil(960) as u32,
        Source::Tone(_) => args.seconds * 50,
    };
    let record = args.audio_out.is_some();

    // Two devices with fresh identities. Both publish prekeys; Alice fetches Bob's.
    let mut alice_sealer = sealer(1)?;
    let mut bob_sealer = sealer(2)?;
    let bob_relay = RelayClient::connect_tcp(
        relay_addr,
        bob_sealer.signer(),
        RelayClientConfig::default(),
    )
    .await?;
    let material = bob_sealer.publish(4, 2)?;
    bob_relay
        .upload_prekeys(material.bundle, material.one_time_prekeys, false)
        .await?;
    let alice_relay = RelayClient::connect_tcp(
        relay_addr,
        alice_sealer.signer(),
        RelayClientConfig::default(),
    )
    .await?;
    // Alice publishes hers too: the relay accepts envelopes only for devices that did.
    let material = alice_sealer.publish(4, 2)?;
    alice_relay
        .upload_prekeys(material.bundle, material.one_time_prekeys, false)
        .await?;
    let fetched = alice_relay.fetch_bundle(bob_sealer.device_id()).await?;
    alice_sealer.start_session(&fetched)?;
    let bob_id = bob_sealer.device_id();

    let config = client_config(&args)?;
    let alice = Client::builder(
        SignalingClient::new(alice_relay, alice_sealer),
        config.net.clone(),
    )
    .config(config.clone())
    .build();
    let bob = Client::builder(
        SignalingClient::new(bob_relay, bob_sealer),
        config.net.clone(),
    )
    .config(config)
    .build();

    // Bob answers whatever rings, talks, and tells Alice when he is done.
    let (bob_done_tx, bob_done) = tokio::sync::oneshot::channel::<()>();
    let bob_side = tokio::spawn(async move {
        let incoming = tokio::time::timeout(Duration::from_secs(10), bob.incoming())
            .await?
            .ok_or("bob's client stopped")?;
        println!(
            "bob: incoming call from {}",
            short(&incoming.peer().to_hex())
        );
        let call = incoming.accept().await?;
        wait_connected(&call).await?;
        let move_network = async {
            let Some(at) = args.network_change_at else {
                return Ok::<_, Failure>(());
            };
            tokio::time::sleep(Duration::from_secs_f64(at)).await;
            call.network_changed().await?;
            println!("bob: network changed; ICE restarted with new sockets");
            Ok(())
        };
        let expect = (!speech).then_some(440.0);
        let (heard, moved) = tokio::join!(
            talk(&call, &Source::Tone(660.0), expect, frames, record),
            move_network
        );
        moved?;
        let stats = call.stats().await?;
        println!("bob: {stats:?}");
        let _ = bob_done_tx.send(());
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(ev) = call.next_event().await {
                match ev {
                    CallEvent::Ended(reason) => return Some(reason),
                    other => println!("bob: {other:?}"),
                }
            }
            None
        })
        .await?;
        Ok::<_, Failure>((heard, ended, bob))
    });

    let start = Instant::now();
    let call = alice.call(bob_id).await?;
    println!("alice: calling {}", short(&bob_id.to_hex()));
    let path = wait_connected(&call).await?;
    println!("alice: connected over a {path} path");
    let heard = talk(&call, &alice_source, Some(660.0), frames, false).await;
    let stats = call.stats().await?;
    println!("alice: {stats:?}");
    let _ = tokio::time::timeout(Duration::from_secs(5), bob_done).await;
    call.hangup()?;
    let (mut bob_heard, bob_ended, _bob) = bob_side.await??;
    if let (Some(path), Some(rec)) = (&args.audio_out, bob_heard.recorded.take()) {
        write_wav(path, &rec[..bob_heard.recorded_real])?;
        println!("bob's playout written to {}", path.display());
    }
    let _ = std::fs::remove_dir_all(&scratch);

    println!("alice heard: {heard:?}");
    println!("bob heard:   {bob_heard:?}");
    let setup_ms = bob_heard
        .first_at
        .map_or(-1.0, |t| t.duration_since(start).as_secs_f64() * 1e3);
    let playable = |h: &Heard| h.decoded + h.fec;
    let need = frames * 9 / 10;
    let ok = playable(&heard) >= need
        && playable(&bob_heard) >= need
        && heard.on_pitch >= need * 9 / 10
        && (speech || bob_heard.on_pitch >= need * 9 / 10)
        && bob_ended == Some(EndReason::RemoteHangup(hush::machine::HangupReason::Normal));
    println!(
        "{{\"setup_ms\":{setup_ms:.1},\"frames_sent\":{},\"frames_received\":{},\"frames_fec\":{},\"frames_concealed\":{},\"audio_kbps\":{:.1},\"rtt_ms\":{:.1},\"path\":\"{path}\",\"suite\":\"{}\",\"result\":\"{}\"}}",
        stats.media.frames_sent,
        playable(&bob_heard),
        bob_heard.fec,
        bob_heard.concealed,
        stats.media.audio_bytes_sent as f64 * 8.0 / (stats.media.frames_sent.max(1) as f64 * 20.0),
        stats.media.rtt_ms.unwrap_or(-1.0),
        stats.suite,
        if ok { "ok" } else { "failed" }
    );
    Ok(ok)
}

fn short(hex: &str) -> &str {
    &hex[..hex.len().min(12)]
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("two_party_call: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("two_party_call: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("two_party_call: {e}");
            println!(
                "{{\"result\":\"failed\",\"error\":\"{}\"}}",
                e.to_string().replace('"', "'")
            );
            ExitCode::FAILURE
        }
    }
}

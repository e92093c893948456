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
//!                                       [--video] [--video-in IN.y4m] [--video-out OUT.y4m]
//!                                       [--bandwidth-kbps 2000,300,150,2000@5s]
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
//!
//! `--video` makes it a video call: both sides send 640×360 at 30 fps (a moving test pattern,
//! or with `--video-in` Alice sends the frames of a 4:2:0 Y4M file, looped for the call's
//! length); `--video-out` writes the pictures Bob received, scaled back to the source size, as
//! Y4M. The top 32 rows of each picture carry its frame number in 16 black/white blocks, so the
//! receiver matches pictures to their send time (glass to glass, `send_video` → `recv_video`).
//! `--bandwidth-kbps` also takes steps: `2000,300,150,2000@5s` caps each side's link at 2 Mbps,
//! then 300 kbps after 5 s, 150 kbps after 10 s, 2 Mbps after 15 s (counted from the call's
//! keys); the JSON then reports how the video followed (step-down times, the frame rate and
//! size at each step, when the full size came back, pictures per second). With the
//! environment variable `HUSH_EXAMPLE_TRACE` set, each side of a video call prints a `trace`
//! line to stderr every 250 ms (`HUSH_EXAMPLE_TRACE_MS` to change it): its estimate, send rate,
//! loss, RTT, video state, frames, bytes and keyframes encoded, keyframe requests received,
//! NACKed packets and retransmissions sent (cumulative); and a `picture` line for each picture
//! it receives (arrival time, width, frame number, `send_video` → `recv_video` delay in ms);
//! both end with the side that prints them (`side alice`, `side bob`).
//! In an audio-only call both sides print an
//! `atrace` line at the same interval instead: congestion target, encoder output, wire send rate (kbps),
//! RTT and how far it is above the path's round trip (`over_path`: queueing, and on a slow link
//! the serialization of long packets), the peer's reported loss, playout delay and jitter p95
//! (ms), and since the last line the frames late, concealed and repaired by retransmission,
//! the retransmissions and NACKs sent.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use hush::machine::EndReason;
use hush::{Call, CallEvent, CallOptions, Client, ClientConfig, FrameSource, SimulatedLink};
use hush_crypto::{Device, DeviceStore, MemoryBackend};
use hush_media::video::I420Frame;
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
    video: bool,
    video_in: Option<PathBuf>,
    video_out: Option<PathBuf>,
    /// Bandwidth steps: each rate (bps) and when it starts.
    steps: Vec<(Duration, u64)>,
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
    /// Drop-tail bottleneck on each side's outgoing media (IPv4/UDP headers counted): one rate,
    /// or steps through several rates, e.g. `2000,300,150,2000@5s` (a new rate every 5 s).
    #[arg(long, value_name = "K[,K...@SECS]")]
    bandwidth_kbps: Option<String>,
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
    /// A video call (640×360@30 test pictures both ways, unless --video-in).
    #[arg(long)]
    video: bool,
    /// Alice sends this 4:2:0 Y4M file as her camera (implies --video).
    #[arg(long, value_name = "IN.y4m")]
    video_in: Option<PathBuf>,
    /// Write the pictures Bob decoded as a Y4M file (implies --video).
    #[arg(long, value_name = "OUT.y4m")]
    video_out: Option<PathBuf>,
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
    let mut steps = Vec::new();
    if let Some(spec) = &cli.bandwidth_kbps {
        steps = bandwidth_steps(spec)?;
        link = link
            .bandwidth_bps(steps.first().map(|&(_, bps)| bps))
            .bandwidth_steps(
                steps
                    .iter()
                    .skip(1)
                    .map(|&(at, bps)| (at, Some(bps)))
                    .collect(),
            );
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
        video: cli.video || cli.video_in.is_some() || cli.video_out.is_some(),
        video_in: cli.video_in,
        video_out: cli.video_out,
        steps,
    })
}

/// `--bandwidth-kbps`: `K` or `K,K,...@SECS` into each rate (bps) and when it starts.
fn bandwidth_steps(spec: &str) -> Result<Vec<(Duration, u64)>, Failure> {
    let (rates, every) = match spec.split_once('@') {
        Some((r, e)) => {
            let secs: f64 = e.trim_end_matches('s').parse()?;
            (r, Duration::from_secs_f64(secs))
        }
        None => (spec, Duration::ZERO),
    };
    let rates = rates
        .split(',')
        .map(|k| k.parse::<f64>().map(|k| (k * 1000.0) as u64))
        .collect::<Result<Vec<_>, _>>()?;
    if rates.len() > 1 && every.is_zero() {
        return Err("bandwidth steps need @SECONDS, e.g. 2000,300@5s".into());
    }
    Ok(rates
        .iter()
        .enumerate()
        .map(|(i, &bps)| (every * i as u32, bps))
        .collect())
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

// ----- video -----

/// Picture size of the synthetic source.
const VIDEO_W: u32 = 640;
const VIDEO_H: u32 = 360;
/// Blocks carrying the frame number in the top rows.
const STAMP_BITS: u32 = 16;
const STAMP_ROWS: u32 = 32;

/// Reads a 4:2:0 Y4M file (YUV4MPEG2, `C420*` or no colour space tag, 8 bit).
fn read_y4m(path: &Path) -> Result<(u32, u32, Vec<Vec<u8>>), Failure> {
    let data = std::fs::read(path)?;
    let header_end = data
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("y4m: no header")?;
    let header = std::str::from_utf8(&data[..header_end])?;
    let mut tags = header.split(' ');
    if tags.next() != Some("YUV4MPEG2") {
        return Err("y4m: not a YUV4MPEG2 file".into());
    }
    let (mut w, mut h) = (0u32, 0u32);
    for tag in tags {
        match tag.split_at(1) {
            ("W", v) => w = v.parse()?,
            ("H", v) => h = v.parse()?,
            ("C", v) if !v.starts_with("420") => {
                return Err(format!("y4m: colour space {v} (need 4:2:0 8 bit)").into())
            }
            _ => {}
        }
    }
    if w == 0 || h == 0 || w % 2 == 1 || h % 2 == 1 {
        return Err("y4m: width and height must be even and non-zero".into());
    }
    let size = (w * h * 3 / 2) as usize;
    let mut frames = Vec::new();
    let mut at = header_end + 1;
    while at < data.len() {
        let line_end = at
            + data[at..]
                .iter()
                .position(|&b| b == b'\n')
                .ok_or("y4m: truncated frame header")?;
        if !data[at..line_end].starts_with(b"FRAME") {
            return Err("y4m: expected FRAME".into());
        }
        let start = line_end + 1;
        let frame = data
            .get(start..start + size)
            .ok_or("y4m: truncated frame")?;
        frames.push(frame.to_vec());
        at = start + size;
    }
    if frames.is_empty() {
        return Err("y4m: no frames".into());
    }
    Ok((w, h, frames))
}

/// Writes pictures (all of the same size) as a Y4M file at 30 fps.
fn write_y4m(path: &Path, pictures: &[I420Frame]) -> Result<(), Failure> {
    use std::io::Write;
    let Some(first) = pictures.first() else {
        return Err("no pictures to write".into());
    };
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(
        out,
        "YUV4MPEG2 W{} H{} F30:1 Ip A1:1 C420jpeg",
        first.width(),
        first.height()
    )?;
    for p in pictures {
        out.write_all(b"FRAME\n")?;
        let p = p.to_packed();
        out.write_all(p.y())?;
        out.write_all(p.u())?;
        out.write_all(p.v())?;
    }
    out.flush()?;
    Ok(())
}

/// What a side sends as video.
enum VideoSource {
    Pattern,
    Y4m(u32, u32, Vec<Vec<u8>>),
}

impl VideoSource {
    fn size(&self) -> (u32, u32) {
        match self {
            Self::Pattern => (VIDEO_W, VIDEO_H),
            Self::Y4m(w, h, _) => (*w, *h),
        }
    }

    /// Picture `n`, with its number stamped in the top rows.
    fn picture(&self, n: u32) -> Result<I420Frame, Failure> {
        let mut p = match self {
            Self::Pattern => {
                let mut p = I420Frame::filled(VIDEO_W, VIDEO_H, [16, 128, 128], Instant::now())?;
                let [y, u, v] = p.planes_mut();
                let w = VIDEO_W as usize;
                for (i, px) in y.iter_mut().enumerate() {
                    let (x, r) = (i % w, i / w);
                    *px = ((x / 2 + r + 2 * n as usize) % 180 + 30) as u8;
                    let sx = (n as usize * 6) % w;
                    if x >= sx && x < sx + 48 && (120..200).contains(&r) {
                        *px = 230;
                    }
                }
                for (i, px) in u.iter_mut().enumerate() {
                    *px = (90 + (i / (w / 2) + n as usize) % 80) as u8;
                }
                for (i, px) in v.iter_mut().enumerate() {
                    *px = (100 + (i % (w / 2)) % 60) as u8;
                }
                p
            }
            Self::Y4m(w, h, frames) => {
                let f = &frames[n as usize % frames.len()];
                let (wy, c) = ((w * h) as usize, (w * h / 4) as usize);
                I420Frame::new(
                    *w,
                    *h,
                    [
                        f[..wy].to_vec(),
                        f[wy..wy + c].to_vec(),
                        f[wy + c..wy + 2 * c].to_vec(),
                    ],
                    [*w as usize, *w as usize / 2, *w as usize / 2],
                    Instant::now(),
                )?
            }
        };
        stamp(&mut p, n);
        Ok(p)
    }
}

/// Writes `n` into the top rows: bit i is block i of a row of `STAMP_BITS`, white for 1.
fn stamp(p: &mut I420Frame, n: u32) {
    let (w, h) = (p.width() as usize, p.height() as usize);
    let rows = (STAMP_ROWS as usize).min(h);
    let [y, _, _] = p.planes_mut();
    for r in 0..rows {
        for x in 0..w {
            let bit = x * STAMP_BITS as usize / w;
            y[r * w + x] = if (n >> bit) & 1 == 1 { 235 } else { 16 };
        }
    }
}

/// Reads the number stamped by [`stamp`] from a (possibly scaled) received picture.
fn read_stamp(p: &I420Frame) -> u32 {
    let (w, h) = (p.width() as usize, p.height() as usize);
    let row = (STAMP_ROWS as usize * h / VIDEO_H as usize / 2).min(h - 1);
    (0..STAMP_BITS)
        .map(|bit| {
            let x = (2 * bit as usize + 1) * w / (2 * STAMP_BITS as usize);
            let v = p.row(0, row).and_then(|r| r.get(x)).copied().unwrap_or(0);
            u32::from(v > 128) << bit
        })
        .sum()
}

/// Send times of the pictures one side sent, by number (shared with the receiving side).
type SendTimes = std::sync::Arc<std::sync::Mutex<Vec<Option<Instant>>>>;

/// What a side saw of the peer's video.
#[derive(Debug, Default)]
struct Seen {
    /// Pictures received.
    pictures: u32,
    /// Glass-to-glass delays, milliseconds.
    delays: Vec<f64>,
    /// Received pictures per whole second of the call: (second, count, width of the last).
    per_second: Vec<(u32, u32, u32)>,
    /// Pictures received, kept for `--video-out`.
    recorded: Vec<I420Frame>,
    /// Each picture's arrival (seconds from `start`) and width.
    arrivals: Vec<(f64, u32)>,
    /// When the first picture arrived.
    first: Option<Instant>,
    /// Pictures this side handed to `send_video`.
    offered: u32,
    /// This side's encoded video bytes so far, sampled every second from `start`.
    bytes_per_second: Vec<u64>,
}

/// Sends pictures at 30 fps for `duration` while taking the peer's; `who` names the side in
/// the trace lines.
#[allow(clippy::too_many_arguments)]
async fn video_side(
    call: &Call,
    source: &VideoSource,
    sent: SendTimes,
    peer_sent: SendTimes,
    duration: Duration,
    record: bool,
    start: Instant,
    who: &str,
) -> Result<Seen, Failure> {
    let mut seen = Seen::default();
    let mut ticker = tokio::time::interval(Duration::from_millis(33));
    let end = Instant::now() + duration;
    let mut n = 0u32;
    let size = source.size();
    let trace = std::env::var_os("HUSH_EXAMPLE_TRACE").is_some() && !record;
    let mut tracer = tokio::time::interval(trace_interval());
    let mut sampler = tokio::time::interval_at(
        (start + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    loop {
        tokio::select! {
            _ = sampler.tick() => {
                if let Ok(st) = call.stats().await {
                    seen.bytes_per_second.push(st.video.map_or(0, |v| v.bytes_encoded));
                }
            }
            _ = tracer.tick(), if trace => {
                if let Ok(st) = call.stats().await {
                    let q = st.quality.as_ref();
                    let v = st.video.as_ref();
                    eprintln!(
                        "trace {:5.2} target {} send {} loss {:.3} rtt {:?} paused {:?} sent {:?}x{:?}@{:?} encoded {:?} bytes {:?} keyframes {:?} asked {:?} nacks {:?} rtx {:?} side {who}",
                        start.elapsed().as_secs_f64(),
                        st.media.target_bps,
                        q.map_or(0, |q| q.send_bps),
                        q.map_or(0.0, |q| q.remote_loss),
                        st.media.rtt_ms.map(|r| r as u32),
                        v.map(|v| v.paused),
                        v.map(|v| v.sent_width),
                        v.map(|v| v.sent_height),
                        v.map(|v| v.sent_fps),
                        v.map(|v| v.frames_encoded),
                        v.map(|v| v.bytes_encoded),
                        v.map(|v| v.key_frames_encoded),
                        v.map(|v| v.keyframe_requests_received),
                        q.map(|q| q.nacks_sent),
                        q.map(|q| q.retransmissions_sent),
                    );
                }
            }
            _ = ticker.tick(), if Instant::now() < end => {
                let picture = source.picture(n)?;
                if let Ok(mut times) = sent.lock() {
                    times.push(Some(Instant::now()));
                }
                let _ = call.send_video(picture);
                seen.offered += 1;
                n = (n + 1) % (1 << STAMP_BITS);
            }
            p = call.recv_video() => {
                let Some(p) = p else { break };
                let now = Instant::now();
                seen.pictures += 1;
                seen.first.get_or_insert(now);
                let k = read_stamp(&p) as usize;
                if let Some(Some(t)) = peer_sent.lock().ok().and_then(|v| v.get(k).copied()) {
                    seen.delays.push(now.duration_since(t).as_secs_f64() * 1e3);
                }
                seen.arrivals.push((now.duration_since(start).as_secs_f64(), p.width()));
                if trace {
                    let delay = peer_sent.lock().ok().and_then(|v| v.get(k).copied().flatten());
                    eprintln!(
                        "picture {:6.3} width {} number {k} delay_ms {:.0} side {who}",
                        start.elapsed().as_secs_f64(),
                        p.width(),
                        delay.map_or(-1.0, |t| now.duration_since(t).as_secs_f64() * 1e3),
                    );
                }
                if record {
                    seen.recorded.push(p.scaled(size.0, size.1)?);
                }
            }
            () = tokio::time::sleep_until((end + Duration::from_millis(500)).into()) => break,
        }
    }
    let mut per: std::collections::BTreeMap<u32, (u32, u32)> = Default::default();
    for &(t, w) in &seen.arrivals {
        let e = per.entry(t as u32).or_default();
        e.0 += 1;
        e.1 = w;
    }
    seen.per_second = per.into_iter().map(|(s, (c, w))| (s, c, w)).collect();
    Ok(seen)
}

/// The `q` quantile of `v` (sorted in place).
fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return -1.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// CPU time this process used so far (user + system), from /proc; `None` elsewhere.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(Duration::from_millis(ticks * 10))
}

/// One side's audio trace: who it is, the call's start and the path's round trip, and its
/// counters at its last line, to print what changed since.
struct AudioTrace<'a> {
    who: &'a str,
    start: Instant,
    path_rtt_ms: f64,
    at: Option<Instant>,
    audio_bytes: u64,
    late: u64,
    concealed: u64,
    rtx_played: u64,
    rtx_sent: u64,
    nacks: u64,
}

impl<'a> AudioTrace<'a> {
    fn new(who: &'a str, start: Instant, path_rtt_ms: f64) -> Self {
        Self {
            who,
            start,
            path_rtt_ms,
            at: None,
            audio_bytes: 0,
            late: 0,
            concealed: 0,
            rtx_played: 0,
            rtx_sent: 0,
            nacks: 0,
        }
    }

    /// Prints one line (every 250 ms in an audio-only call with
    /// `HUSH_EXAMPLE_TRACE`): what it sends (congestion target, encoder output, wire rate,
    /// round trip and how far it is above the path's `path_rtt_ms`, retransmissions and NACKs
    /// sent) and what it plays (playout delay, frames late, concealed, repaired by
    /// retransmission, since the last line).
    async fn line(&mut self, call: &Call) {
        let Ok(st) = call.stats().await else { return };
        let Some(q) = st.quality.as_ref() else { return };
        let now = Instant::now();
        let secs = self
            .at
            .map_or(0.25, |t| now.duration_since(t).as_secs_f64().max(1e-3));
        let enc_kbps = (st.media.audio_bytes_sent - self.audio_bytes) as f64 * 8.0 / secs / 1e3;
        let rtt = q.rtt.map(|r| r.as_secs_f64() * 1e3);
        eprintln!(
            "atrace {:5.2} {} target {:5.1} enc {:5.1} wire {:5.1} rtt {:>5} over_path {:>4} \
             rloss {:.3} playout {:3} p95 {:3} late {} conc {} rtx_played {} rtx_sent {} nacks {}",
            self.start.elapsed().as_secs_f64(),
            self.who,
            q.target_bps as f64 / 1e3,
            enc_kbps,
            q.send_bps as f64 / 1e3,
            rtt.map_or("-".into(), |r| format!("{r:.0}")),
            rtt.map_or("-".into(), |r| format!(
                "{:.0}",
                (r - self.path_rtt_ms).max(0.0)
            )),
            q.remote_loss,
            q.playout_delay.as_millis(),
            q.jitter_p95.as_millis(),
            q.frames_late - self.late,
            q.frames_concealed - self.concealed,
            q.frames_recovered_rtx - self.rtx_played,
            q.retransmissions_sent - self.rtx_sent,
            q.nacks_sent - self.nacks,
        );
        self.at = Some(now);
        self.audio_bytes = st.media.audio_bytes_sent;
        self.late = q.frames_late;
        self.concealed = q.frames_concealed;
        self.rtx_played = q.frames_recovered_rtx;
        self.rtx_sent = q.retransmissions_sent;
        self.nacks = q.nacks_sent;
    }
}

/// Sends `frames` of `source` at microphone pace while receiving the peer's, then reports.
/// `expect_hz` is the peer's tone, if it sends one; `trace`, if given, prints an audio trace
/// line every 250 ms.
async fn talk(
    call: &Call,
    source: &Source,
    expect_hz: Option<f64>,
    frames: u32,
    record: bool,
    mut trace: Option<AudioTrace<'_>>,
) -> Heard {
    let mut heard = Heard {
        recorded: record.then(Vec::new),
        ..Heard::default()
    };
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    let end = Instant::now() + Duration::from_millis(u64::from(frames) * 20 + 600);
    let mut n = 0;
    let mut tracer = tokio::time::interval(trace_interval());
    loop {
        tokio::select! {
            _ = tracer.tick(), if trace.is_some() => {
                if let Some(t) = trace.as_mut() {
                    t.line(call).await;
                }
            }
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

/// How often the `trace` and `atrace` lines are printed: `HUSH_EXAMPLE_TRACE_MS`, or 250 ms.
fn trace_interval() -> Duration {
    let ms = std::env::var("HUSH_EXAMPLE_TRACE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(250);
    Duration::from_millis(ms)
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
    let video_source = match (&args.video_in, args.video) {
        (Some(path), _) => Some(std::sync::Arc::new({
            let (w, h, f) = read_y4m(path)?;
            VideoSource::Y4m(w, h, f)
        })),
        (None, true) => Some(std::sync::Arc::new(VideoSource::Pattern)),
        (None, false) => None,
    };
    let alice_sent: SendTimes = Default::default();
    let bob_sent: SendTimes = Default::default();
    let record_video = args.video_out.is_some();
    let call_seconds = Duration::from_millis(u64::from(frames) * 20);
    // Audio trace lines (video calls print their own trace).
    let audio_trace = std::env::var_os("HUSH_EXAMPLE_TRACE").is_some() && video_source.is_none();
    let path_rtt_ms = 2.0 * args.link.delay.as_secs_f64() * 1e3;

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
    let bob_video = video_source
        .as_ref()
        .map(|_| std::sync::Arc::new(VideoSource::Pattern));
    let (bob_sent_c, alice_sent_c) = (bob_sent.clone(), alice_sent.clone());
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
        let connected = Instant::now();
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
        let video = async {
            match &bob_video {
                Some(source) => video_side(
                    &call,
                    source,
                    bob_sent_c,
                    alice_sent_c,
                    call_seconds,
                    record_video,
                    connected,
                    "bob",
                )
                .await
                .map(Some),
                None => Ok(None),
            }
        };
        let (heard, moved, seen) = tokio::join!(
            talk(
                &call,
                &Source::Tone(660.0),
                expect,
                frames,
                record,
                audio_trace.then(|| AudioTrace::new("bob", connected, path_rtt_ms)),
            ),
            move_network,
            video
        );
        moved?;
        let seen = seen?;
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
        Ok::<_, Failure>((heard, ended, bob, seen, stats.video))
    });

    let start = Instant::now();
    let options = if video_source.is_some() {
        CallOptions::video()
    } else {
        CallOptions::audio()
    };
    let call = alice.call_with(bob_id, options).await?;
    println!("alice: calling {}", short(&bob_id.to_hex()));
    let path = wait_connected(&call).await?;
    println!("alice: connected over a {path} path");
    let connected = Instant::now();
    let cpu_before = process_cpu();
    let video = async {
        match &video_source {
            Some(source) => video_side(
                &call,
                source,
                alice_sent.clone(),
                bob_sent.clone(),
                call_seconds,
                false,
                connected,
                "alice",
            )
            .await
            .map(Some),
            None => Ok(None),
        }
    };
    let (heard, alice_seen) = tokio::join!(
        talk(
            &call,
            &alice_source,
            Some(660.0),
            frames,
            false,
            audio_trace.then(|| AudioTrace::new("alice", connected, path_rtt_ms)),
        ),
        video
    );
    let alice_seen = alice_seen?;
    let cpu = process_cpu()
        .zip(cpu_before)
        .map(|(a, b)| (a - b).as_secs_f64() / connected.elapsed().as_secs_f64() * 100.0);
    let stats = call.stats().await?;
    println!("alice: {stats:?}");
    let _ = tokio::time::timeout(Duration::from_secs(5), bob_done).await;
    call.hangup()?;
    let (mut bob_heard, bob_ended, _bob, bob_seen, bob_video) = bob_side.await??;
    let video_json = match (&bob_seen, &stats.video, &bob_video, &alice_seen) {
        (Some(seen), Some(sent), Some(recv), Some(own)) => {
            if let Some(path) = &args.video_out {
                write_y4m(path, &seen.recorded)?;
                println!("bob's pictures written to {}", path.display());
            }
            let full = video_source.as_ref().map_or(VIDEO_W, |v| v.size().0);
            let mut delays = seen.delays.clone();
            let since_offer = |t: Option<Instant>| {
                t.map_or(-1.0, |t| t.duration_since(start).as_secs_f64() * 1e3)
            };
            let bytes: Vec<String> = own.bytes_per_second.iter().map(u64::to_string).collect();
            format!(
                ",\"video_setup_ms\":{:.1},\"video_setup_back_ms\":{:.1},\"video_pictures_offered\":{},\"video_kbps\":{:.1},\"video_bytes_per_second\":[{}],\"video_frames_sent\":{},\"video_frames_received\":{},\"video_frames_decoded\":{},\"g2g_median_ms\":{:.1},\"g2g_p95_ms\":{:.1},\"resolution_steps\":{},\"pauses\":{},\"freezes\":{},\"freezes_s\":{:.2},\"pli_sent\":{},\"frames_dropped\":{},\"video_frames_captured\":{},\"video_keyframes_sent\":{},\"keyframe_requests_received\":{},\"encode_ms\":{:.2},\"decode_ms\":{:.2},\"sync_skew_ms\":{},\"sync_audio_delay_ms\":{:.1},\"sync_video_delay_ms\":{:.1},\"cpu_core_pct\":{:.1}{}",
                since_offer(seen.first),
                since_offer(own.first),
                own.offered,
                sent.bytes_encoded as f64 * 8.0 / call_seconds.as_secs_f64() / 1e3,
                bytes.join(","),
                sent.frames_encoded,
                seen.pictures,
                recv.frames_decoded,
                quantile(&mut delays, 0.5),
                quantile(&mut delays, 0.95),
                sent.resolution_steps,
                sent.pauses,
                recv.freeze_count,
                recv.total_freezes_duration,
                recv.keyframe_requests_sent,
                recv.frames_dropped,
                sent.frames_captured,
                sent.key_frames_encoded,
                sent.keyframe_requests_received,
                sent.encode_ms_mean,
                recv.decode_ms_mean,
                recv.sync_skew_ms
                    .map_or_else(|| "null".to_owned(), |s| format!("{s:.1}")),
                recv.sync_audio_delay.as_secs_f64() * 1e3,
                recv.sync_video_delay.as_secs_f64() * 1e3,
                cpu.unwrap_or(-1.0),
                step_report(&args.steps, seen, full),
            )
        }
        _ => String::new(),
    };
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
        "{{\"setup_ms\":{setup_ms:.1},\"frames_sent\":{},\"frames_received\":{},\"frames_fec\":{},\"frames_concealed\":{},\"audio_kbps\":{:.1},\"rtt_ms\":{:.1},\"path\":\"{path}\",\"suite\":\"{}\"{video_json},\"result\":\"{}\"}}",
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

/// How the received video followed the bandwidth steps (JSON fields, empty without steps):
/// per step its rate, how long until the picture got smaller or stopped (rate going down), and
/// the frame rate and width over the step's last 3 s; then how long after the last step the
/// full width came back.
fn step_report(steps: &[(Duration, u64)], seen: &Seen, full_width: u32) -> String {
    if steps.len() < 2 {
        return String::new();
    }
    let mut parts = Vec::new();
    for (i, &(at, bps)) in steps.iter().enumerate() {
        let from = at.as_secs_f64();
        let until = steps
            .get(i + 1)
            .map_or(f64::INFINITY, |(t, _)| t.as_secs_f64());
        let until = until.min(seen.arrivals.last().map_or(from, |a| a.0));
        let before = seen
            .arrivals
            .iter()
            .rev()
            .find(|a| a.0 < from)
            .map_or(0, |a| a.1);
        let down = steps.get(i.wrapping_sub(1)).filter(|p| p.1 > bps).map(|_| {
            let mut last = from;
            for &(t, w) in seen.arrivals.iter().filter(|a| a.0 >= from && a.0 < until) {
                if w < before || t - last > 0.5 {
                    return last.max(t.min(last + 0.5)) - from;
                }
                last = t;
            }
            until - from
        });
        let tail: Vec<_> = seen
            .arrivals
            .iter()
            .filter(|a| a.0 >= until - 3.0 && a.0 < until)
            .collect();
        let fps = tail.len() as f64 / 3.0;
        let width = tail.last().map_or(0, |a| a.1);
        parts.push(format!(
            "{{\"kbps\":{},\"at_s\":{from:.0},\"down_s\":{},\"fps_end\":{fps:.1},\"width_end\":{width}}}",
            bps / 1000,
            down.map_or("null".into(), |d| format!("{d:.2}")),
        ));
    }
    let last_at = steps.last().map_or(0.0, |s| s.0.as_secs_f64());
    let full_again = seen
        .arrivals
        .iter()
        .find(|a| a.0 >= last_at && a.1 >= full_width)
        .map_or("null".into(), |a| format!("{:.2}", a.0 - last_at));
    let timeline: Vec<String> = seen
        .per_second
        .iter()
        .map(|(s, n, w)| format!("[{s},{n},{w}]"))
        .collect();
    format!(
        ",\"steps\":[{}],\"full_width_again_s\":{full_again},\"per_second\":[{}]",
        parts.join(","),
        timeline.join(",")
    )
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

//! Forwarding throughput of the SFU core: SRTP packets out per second on one core for a
//! 32-person audio call and for an 8-person video call with three simulcast layers, through
//! `Sfu::handle_input` (unprotect, level or layer choice, protect per recipient, cache) and
//! `poll_transmit`. The client side (protecting the input, keys) is done before the clock
//! starts. Run:
//!
//! ```text
//! cargo bench -p hush-sfu --bench forward
//! ```
//!
//! Prints one line per configuration: packets in, packets out, seconds, packets out per second
//! (the median of 5 runs, each on a fresh SFU).

use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use hush_sfu::join::{JoinAnswer, JoinParams, PendingJoin, SfuSigningKey, StreamDecl};
use hush_sfu::roster::Roster;
use hush_sfu::{CallId, DeviceId, LegId, Sfu, SfuConfig, FRAME_MARKING_EXT_ID};
use hush_srtp::{SrtpConfig, SrtpContext, Suite};
use rand::rngs::StdRng;
use rand::SeedableRng;

const CALL: CallId = CallId::from_bytes([0xc0; 16]);
const UNIX_MS: u64 = 1_780_000_000_000;
const PARTICIPANTS: usize = 32;
/// 20 ms Opus frames per participant: 10 s of audio.
const FRAMES: usize = 500;
/// A typical 32 kbit/s Opus frame.
const PAYLOAD: usize = 80;
/// Participants of the video call.
const VIDEO_PARTICIPANTS: usize = 8;
/// Video frames per participant at 30 frames/s: 10 s of video.
const VIDEO_FRAMES: usize = 300;
/// Size of every video packet on the wire (RTP header, extensions, payload, SRTP tag).
const VIDEO_PACKET: usize = 1200;
/// Heights of the three layers (160×90, 320×180, 640×360).
const HEIGHTS: [u16; 3] = [90, 180, 360];
/// Packets per frame of each layer: hush's layers at 100 / 300 / 800 kbit/s and 30 frames/s
/// average 413 / 1238 / 3365 bytes a frame (docs/benchmarks.md, "CPU of E2EE in an 8-person
/// video call"), in packets of at most 1200 bytes.
const PACKETS_PER_FRAME: [usize; 3] = [1, 2, 3];
/// A keyframe on every layer every this many frames (and on the first).
const KEYFRAME_EVERY: usize = 90;

fn key(i: usize) -> SigningKey {
    SigningKey::from_bytes(&[i as u8 + 1; 32])
}

/// A fresh SFU with `PARTICIPANTS` joined, and the protected packets each sends (in the order
/// they would arrive: round by round).
fn setup_audio(config: &SfuConfig, now: Instant) -> Input {
    let mut rng = StdRng::seed_from_u64(1);
    let mut sfu = Sfu::new(config.clone(), SfuSigningKey::from_seed(&[9; 32])).unwrap();
    let members: Vec<DeviceId> = (0..PARTICIPANTS)
        .map(|i| DeviceId::from_signing_key(&key(i)))
        .collect();
    let roster = Roster::sign(&key(0), CALL, 1, &members).unwrap().encode();
    let mut senders = Vec::new();
    for i in 0..PARTICIPANTS {
        let streams = vec![StreamDecl::audio(0x1000 + i as u32)];
        senders.push(join(&mut sfu, now, &roster, i, streams, &mut rng));
    }
    while sfu.poll_event().is_some() {}
    let mut packets = Vec::with_capacity(PARTICIPANTS * FRAMES);
    for frame in 0..FRAMES {
        for (i, (leg, ctx)) in senders.iter_mut().enumerate() {
            let seq = frame as u16;
            // One-byte extension block with the audio level (id 1): a few talk, most are quiet.
            let level = if i < 3 { 30 } else { 110 };
            let mut p = vec![0x90, 111];
            p.extend_from_slice(&seq.to_be_bytes());
            p.extend_from_slice(&(frame as u32 * 960).to_be_bytes());
            p.extend_from_slice(&(0x1000 + i as u32).to_be_bytes());
            p.extend_from_slice(&[0xBE, 0xDE, 0, 1, 0x10, 0x80 | level, 0, 0]);
            p.extend(std::iter::repeat_n(0x55, PAYLOAD));
            ctx.protect_rtp(&mut p).unwrap();
            packets.push((*leg, p));
        }
    }
    Input {
        sfu,
        packets,
        per_round: PARTICIPANTS,
        round: Duration::from_millis(20),
    }
}

/// Builds the input of one run, on an SFU started at the given time.
type Setup<'a> = Box<dyn Fn(Instant) -> Input + 'a>;

/// What one timed run feeds the SFU.
struct Input {
    sfu: Sfu,
    /// Protected packets in arrival order.
    packets: Vec<(LegId, Vec<u8>)>,
    /// Packets per round (one frame of everyone).
    per_round: usize,
    /// Simulated time between rounds.
    round: Duration,
}

/// A fresh SFU with `VIDEO_PARTICIPANTS` joined, each sending a three-layer simulcast camera
/// (every layer sent, as the client does), every receiver asking for at most `view_height`
/// of every other participant; and the protected packets, frame by frame.
fn setup_video(config: &SfuConfig, now: Instant, view_height: u16) -> Input {
    let mut rng = StdRng::seed_from_u64(2);
    let mut sfu = Sfu::new(config.clone(), SfuSigningKey::from_seed(&[9; 32])).unwrap();
    let members: Vec<DeviceId> = (0..VIDEO_PARTICIPANTS)
        .map(|i| DeviceId::from_signing_key(&key(i)))
        .collect();
    let roster = Roster::sign(&key(0), CALL, 1, &members).unwrap().encode();
    let layer_ssrc = |i: usize, l: usize| 0x4000 + (i as u32) * 16 + l as u32;
    let mut senders = Vec::new();
    for i in 0..VIDEO_PARTICIPANTS {
        let mut streams = vec![StreamDecl::audio(0x1000 + i as u32)];
        streams.extend(StreamDecl::simulcast(
            0,
            HEIGHTS
                .iter()
                .enumerate()
                .map(|(l, &h)| (layer_ssrc(i, l), h / 9 * 16, h)),
        ));
        senders.push(join(&mut sfu, now, &roster, i, streams, &mut rng));
    }
    while sfu.poll_event().is_some() {}
    for (r, (leg, _)) in senders.iter().enumerate() {
        for s in (0..VIDEO_PARTICIPANTS).filter(|&s| s != r) {
            sfu.request_view(*leg, layer_ssrc(s, 0), view_height)
                .unwrap();
        }
    }
    let per_round = VIDEO_PARTICIPANTS * PACKETS_PER_FRAME.iter().sum::<usize>();
    let mut packets = Vec::with_capacity(per_round * VIDEO_FRAMES);
    let mut seq = [[0u16; 3]; VIDEO_PARTICIPANTS];
    for frame in 0..VIDEO_FRAMES {
        for (i, (leg, ctx)) in senders.iter_mut().enumerate() {
            for (l, &n) in PACKETS_PER_FRAME.iter().enumerate() {
                for k in 0..n {
                    let mut mark = 0u8;
                    if k == 0 {
                        mark |= 0x80;
                        if frame % KEYFRAME_EVERY == 0 {
                            mark |= 0x20;
                        }
                    }
                    if k + 1 == n {
                        mark |= 0x40;
                    }
                    let s = seq[i][l];
                    seq[i][l] = s.wrapping_add(1);
                    let mut p = vec![0x90, 96];
                    p.extend_from_slice(&s.to_be_bytes());
                    p.extend_from_slice(&(frame as u32 * 3000).to_be_bytes());
                    p.extend_from_slice(&layer_ssrc(i, l).to_be_bytes());
                    // One-byte extension block with the frame marking element.
                    p.extend_from_slice(&[0xBE, 0xDE, 0, 1, FRAME_MARKING_EXT_ID << 4, mark, 0, 0]);
                    // The SRTP tag (16 bytes) brings the packet to VIDEO_PACKET.
                    p.resize(VIDEO_PACKET - 16, 0x55);
                    ctx.protect_rtp(&mut p).unwrap();
                    debug_assert_eq!(p.len(), VIDEO_PACKET);
                    packets.push((*leg, p));
                }
            }
        }
    }
    Input {
        sfu,
        packets,
        per_round,
        round: Duration::from_micros(33_333),
    }
}

/// One timed run: every packet in, all transmits drained. Returns (out, elapsed).
fn run(setup: &dyn Fn(Instant) -> Input) -> (usize, usize, Duration) {
    let start = Instant::now();
    let Input {
        mut sfu,
        packets,
        per_round,
        round,
    } = setup(start);
    let n_in = packets.len();
    let mut out = 0usize;
    let mut bytes = 0usize;
    let t0 = Instant::now();
    for (k, (leg, p)) in packets.iter().enumerate() {
        // Simulated arrival time: one round of all participants every `round`.
        let now = start + round * (k / per_round) as u32;
        sfu.handle_input(now, *leg, p).unwrap();
        while let Some(t) = sfu.poll_transmit() {
            out += 1;
            bytes += t.bytes.len();
        }
        if sfu.poll_timeout().is_some_and(|d| d <= now) {
            sfu.handle_timeout(now);
        }
    }
    let elapsed = t0.elapsed();
    std::hint::black_box(bytes);
    (n_in, out, elapsed)
}

fn main() {
    let all_audio = SfuConfig {
        loudest_n: None,
        ..SfuConfig::default()
    };
    let default = SfuConfig::default();
    let configs: [(&str, Setup); 5] = [
        (
            "32 participants, all audio forwarded",
            Box::new(|now| setup_audio(&all_audio, now)),
        ),
        (
            "32 participants, loudest 3 forwarded",
            Box::new(|now| setup_audio(&default, now)),
        ),
        (
            "8 participants, video 3 layers, everyone gets 640x360 of everyone",
            Box::new(|now| setup_video(&default, now, 360)),
        ),
        (
            "8 participants, video 3 layers, everyone gets 320x180 of everyone",
            Box::new(|now| setup_video(&default, now, 180)),
        ),
        (
            "8 participants, video 3 layers, everyone gets 160x90 of everyone",
            Box::new(|now| setup_video(&default, now, 90)),
        ),
    ];
    for (name, setup) in configs {
        let mut runs: Vec<(usize, usize, Duration)> = (0..5).map(|_| run(&*setup)).collect();
        runs.sort_by_key(|r| r.2);
        let (n_in, out, elapsed) = runs[2];
        println!(
            "{name}: {n_in} packets in, {out} out in {:.3} s: {:.0} packets out/s, {:.2} us per packet out (median of 5)",
            elapsed.as_secs_f64(),
            out as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64() * 1e6 / out.max(1) as f64
        );
    }
}

/// Joins participant `i` (the roster's creator when `i` is 0) with `streams`: its leg and the
/// hop SRTP context it sends with.
fn join(
    sfu: &mut Sfu,
    now: Instant,
    roster: &[u8],
    i: usize,
    streams: Vec<StreamDecl>,
    rng: &mut StdRng,
) -> (LegId, SrtpContext) {
    let params = JoinParams {
        call_id: CALL,
        suite: Suite::AeadAes128Gcm,
        audio_level_ext: Some(1),
        streams,
    };
    let (pending, request) = PendingJoin::new(&key(i), &params, UNIX_MS, rng).unwrap();
    let joined = sfu
        .handle_join(
            now,
            UNIX_MS,
            &request.encode(),
            (i == 0).then_some(roster),
            rng,
        )
        .unwrap();
    let answer = JoinAnswer::decode(&joined.answer).unwrap();
    let keys = pending.finish(&sfu.public_key(), &answer).unwrap();
    (
        joined.leg,
        keys.send_context(SrtpConfig::default()).unwrap(),
    )
}

//! Forwarding throughput of the SFU core: SRTP packets out per second on one core for a
//! 32-person audio call, through `Sfu::handle_input` (unprotect, level, choose, protect per
//! recipient, cache) and `poll_transmit`. The client side (protecting the input, keys) is done
//! before the clock starts. Run:
//!
//! ```text
//! cargo bench -p hush-sfu --bench forward
//! ```
//!
//! Prints one line per configuration: packets in, packets out, seconds, packets out per second
//! (the median of 5 runs, each on a fresh SFU).

use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use hush_sfu::join::{JoinAnswer, JoinParams, PendingJoin, SfuSigningKey, StreamDecl, StreamKind};
use hush_sfu::roster::Roster;
use hush_sfu::{CallId, DeviceId, LegId, Sfu, SfuConfig};
use hush_srtp::{SrtpConfig, Suite};
use rand::rngs::StdRng;
use rand::SeedableRng;

const CALL: CallId = CallId::from_bytes([0xc0; 16]);
const UNIX_MS: u64 = 1_780_000_000_000;
const PARTICIPANTS: usize = 32;
/// 20 ms Opus frames per participant: 10 s of audio.
const FRAMES: usize = 500;
/// A typical 32 kbit/s Opus frame.
const PAYLOAD: usize = 80;

fn key(i: usize) -> SigningKey {
    SigningKey::from_bytes(&[i as u8 + 1; 32])
}

/// A fresh SFU with `PARTICIPANTS` joined, and the protected packets each sends (in the order
/// they would arrive: round by round).
fn setup(config: &SfuConfig, now: Instant) -> (Sfu, Vec<(LegId, Vec<u8>)>) {
    let mut rng = StdRng::seed_from_u64(1);
    let mut sfu = Sfu::new(config.clone(), SfuSigningKey::from_seed(&[9; 32])).unwrap();
    let members: Vec<DeviceId> = (0..PARTICIPANTS)
        .map(|i| DeviceId::from_signing_key(&key(i)))
        .collect();
    let roster = Roster::sign(&key(0), CALL, 1, &members).unwrap().encode();
    let mut senders = Vec::new();
    for i in 0..PARTICIPANTS {
        let params = JoinParams {
            call_id: CALL,
            suite: Suite::AeadAes128Gcm,
            audio_level_ext: Some(1),
            streams: vec![StreamDecl {
                ssrc: 0x1000 + i as u32,
                kind: StreamKind::Audio,
            }],
        };
        let (pending, request) = PendingJoin::new(&key(i), &params, UNIX_MS, &mut rng).unwrap();
        let joined = sfu
            .handle_join(
                now,
                UNIX_MS,
                &request.encode(),
                (i == 0).then_some(&roster[..]),
                &mut rng,
            )
            .unwrap();
        let answer = JoinAnswer::decode(&joined.answer).unwrap();
        let keys = pending.finish(&sfu.public_key(), &answer).unwrap();
        senders.push((
            joined.leg,
            keys.send_context(SrtpConfig::default()).unwrap(),
        ));
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
    (sfu, packets)
}

/// One timed run: every packet in, all transmits drained. Returns (out, elapsed).
fn run(config: &SfuConfig) -> (usize, usize, Duration) {
    let start = Instant::now();
    let (mut sfu, packets) = setup(config, start);
    let n_in = packets.len();
    let mut out = 0usize;
    let mut bytes = 0usize;
    let t0 = Instant::now();
    for (k, (leg, p)) in packets.iter().enumerate() {
        // Simulated arrival time: one round of all participants every 20 ms.
        let now = start + Duration::from_millis((k / PARTICIPANTS) as u64 * 20);
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
    assert_eq!(n_in, PARTICIPANTS * FRAMES);
    (n_in, out, elapsed)
}

fn main() {
    let configs = [
        (
            "32 participants, all audio forwarded",
            SfuConfig {
                loudest_n: None,
                ..SfuConfig::default()
            },
        ),
        ("32 participants, loudest 3 forwarded", SfuConfig::default()),
    ];
    for (name, config) in configs {
        let mut runs: Vec<(usize, usize, Duration)> = (0..5).map(|_| run(&config)).collect();
        runs.sort_by_key(|r| r.2);
        let (n_in, out, elapsed) = runs[2];
        println!(
            "{name}: {n_in} packets in, {out} out in {:.3} s: {:.0} packets out/s (median of 5)",
            elapsed.as_secs_f64(),
            out as f64 / elapsed.as_secs_f64()
        );
    }
}

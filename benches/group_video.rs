//! CPU that end-to-end encryption adds to one device in an 8-person group video call.
//!
//! The device sends a three-layer simulcast camera (640×360 at 800 kbps, 320×180 at
//! 300 kbps, 160×90 at 100 kbps, 30 fps, OpenH264) and receives the 320×180 layer of each of
//! the 7 others (a gallery view). Measured on this thread, in the same run:
//!
//! - **codec**: encoding the three layers of a synthetic moving picture, and decoding seven
//!   320×180 streams (OpenH264);
//! - **media path, bare**: `GroupMediaPath` with `NoFrameCrypto`: packetizing its three layers
//!   with frame marking and hop SRTP, and for the seven received streams hop SRTP, reassembly
//!   and hand-out;
//! - **media path, E2EE**: the same with `SframeCrypto` (SFrame seal of every frame sent, open
//!   of every frame received, per-sender keys).
//!
//! The packets go through the real SFU core (`hush_sfu::Sfu`) between the participants; only
//! the measured device's own calls are timed (not the SFU, not the other senders). The
//! encoded frames are made once and replayed through both media paths, which run alternately
//! `--rounds` times (median taken) to even out a shared machine's load.
//!
//! E2EE's share = (path E2EE − path bare) / (codec + path bare), per second of call.
//!
//! `cargo bench --bench group_video -- [--seconds S] [--rounds R]` (default 4 s, 7 rounds).
//! The last line printed is one JSON object with every figure.

use std::time::{Duration, Instant};

use hush::group_path::{FrameCrypto, GroupMediaPath, NoFrameCrypto, SframeCrypto};
use hush_crypto::group::{GroupCallId, GroupE2ee, MemberSlot};
use hush_media::jitter::JitterConfig;
use hush_media::video::{
    I420Frame, OpenH264Decoder, OpenH264Encoder, VideoDecoder, VideoEncoder, VideoEncoderConfig,
};
use hush_sfu::ed25519_dalek::SigningKey;
use hush_sfu::join::{HopKeys, JoinAnswer, JoinParams, PendingJoin, StreamDecl};
use hush_sfu::roster::Roster;
use hush_sfu::{CallId, DeviceId, LegId, Sfu, SfuConfig};
use hush_srtp::Suite;

const PARTICIPANTS: usize = 8;
const CALL: [u8; 16] = [0x42; 16];
const T0_MS: u64 = 1_780_000_000_000;
const FPS: u32 = 30;
/// (width, height, bitrate) of the measured device's layers, layer 0 the smallest.
const LAYERS: [(u32, u32, u32); 3] = [(160, 90, 100_000), (320, 180, 300_000), (640, 360, 800_000)];
/// The layer every receiver gets (gallery view).
const RECEIVED_LAYER: usize = 1;
const MY_LAYER_SSRCS: [u32; 3] = [0x7000, 0x7001, 0x7002];

fn key(i: usize) -> SigningKey {
    SigningKey::from_bytes(&[i as u8 + 7; 32])
}

fn device(i: usize) -> DeviceId {
    DeviceId::from_signing_key(&key(i))
}

/// The video SSRC of participant `i` ≥ 1 (one plain stream each).
fn their_ssrc(i: usize) -> u32 {
    0x8000 + i as u32
}

/// A moving picture with texture: a gradient that scrolls, a bright square that moves, and
/// deterministic noise, so the encoder has real work every frame.
fn picture(width: u32, height: u32, n: u32) -> I420Frame {
    let mut pic = I420Frame::filled(width, height, [16, 128, 128], Instant::now()).unwrap();
    let [y, u, v] = pic.planes_mut();
    let (w, h) = (width as usize, height as usize);
    let (bx, by) = (
        (n as usize * 3 * w / 640) % (w - w / 5),
        (n as usize * 2 * h / 360) % (h - h / 5),
    );
    let mut seed = 0x9e37_79b9u32.wrapping_mul(n + 1);
    for row in 0..h {
        for col in 0..w {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let inside = (bx..bx + w / 5).contains(&col) && (by..by + h / 5).contains(&row);
            let base = ((col + row + n as usize * 4) % 200) as u8 + 20;
            y[row * w + col] = if inside { 235 } else { base } ^ (seed as u8 & 0x07);
        }
    }
    for (i, px) in u.iter_mut().enumerate() {
        *px = 128u8.wrapping_add(((i + n as usize) % 32) as u8);
    }
    for (i, px) in v.iter_mut().enumerate() {
        *px = 128u8.wrapping_sub(((i / 7 + n as usize) % 32) as u8);
    }
    pic
}

/// An encoded frame: the access unit and whether it is a keyframe.
type Encoded = (Vec<u8>, bool);

/// Encodes `frames` pictures of each layer; returns them and the encoding time.
fn encode_all(frames: u32) -> (Vec<Vec<Encoded>>, Duration) {
    let mut out = vec![Vec::new(); LAYERS.len()];
    let mut spent = Duration::ZERO;
    let mut encoders: Vec<OpenH264Encoder> = LAYERS
        .iter()
        .map(|&(_, _, bitrate_bps)| {
            OpenH264Encoder::new(VideoEncoderConfig {
                bitrate_bps,
                framerate: FPS as f32,
                max_nal_size: 1100,
                keyframe_interval: Some(Duration::from_secs(10)),
            })
            .unwrap()
        })
        .collect();
    for n in 0..frames {
        for (l, &(w, h, _)) in LAYERS.iter().enumerate() {
            let pic = picture(w, h, n);
            let t = Instant::now();
            let encoded = encoders[l].encode(&pic).unwrap();
            spent += t.elapsed();
            if let Some(e) = encoded {
                out[l].push((e.data, e.keyframe));
            }
        }
    }
    (out, spent)
}

/// Decodes `stream` once per other participant (7 decoders); returns the decoding time.
fn decode_all(stream: &[Encoded]) -> Duration {
    let mut spent = Duration::ZERO;
    for _ in 1..PARTICIPANTS {
        let mut decoder = OpenH264Decoder::new().unwrap();
        for (data, _) in stream {
            let t = Instant::now();
            let _ = decoder.decode(data, Instant::now());
            spent += t.elapsed();
        }
    }
    spent
}

struct Call<C: FrameCrypto> {
    sfu: Sfu,
    legs: Vec<LegId>,
    paths: Vec<GroupMediaPath<C>>,
}

/// Eight participants joined to an SFU core; `crypto(i)` makes participant `i`'s end-to-end
/// layer, and `share_keys` gives participant 0 everyone's keys (for SFrame).
fn call<C: FrameCrypto>(
    mut crypto: impl FnMut(usize, &Roster) -> C,
    share_keys: impl Fn(&mut [GroupMediaPath<C>], &Roster),
) -> Call<C> {
    let mut rng = rand::rng();
    let mut sfu = Sfu::new(
        SfuConfig {
            video_last_n: None,
            ..SfuConfig::default()
        },
        hush_sfu::join::SfuSigningKey::generate(&mut rng),
    )
    .unwrap();
    let now = Instant::now();
    let devices: Vec<DeviceId> = (0..PARTICIPANTS).map(device).collect();
    let roster = Roster::sign(&key(0), CallId::from_bytes(CALL), 1, &devices).unwrap();
    let (mut legs, mut paths) = (Vec::new(), Vec::new());
    for i in 0..PARTICIPANTS {
        let mut streams = vec![StreamDecl::audio(0x100 + i as u32)];
        if i == 0 {
            streams.extend(StreamDecl::simulcast(
                0,
                MY_LAYER_SSRCS
                    .iter()
                    .zip(&LAYERS)
                    .map(|(&ssrc, &(w, h, _))| (ssrc, w as u16, h as u16)),
            ));
        } else {
            streams.push(StreamDecl::video(their_ssrc(i)));
        }
        let params = JoinParams {
            call_id: CallId::from_bytes(CALL),
            suite: Suite::AeadAes128Gcm,
            audio_level_ext: Some(1),
            streams,
        };
        let (pending, request) = PendingJoin::new(&key(i), &params, T0_MS, &mut rng).unwrap();
        let r = (i == 0).then(|| roster.encode());
        let joined = sfu
            .handle_join(now, T0_MS, &request.encode(), r.as_deref(), &mut rng)
            .unwrap();
        let answer = JoinAnswer::decode(&joined.answer).unwrap();
        let keys: HopKeys = pending.finish(&sfu.public_key(), &answer).unwrap();
        let mut path = GroupMediaPath::new(
            &keys,
            0x100 + i as u32,
            crypto(i, &roster),
            JitterConfig::default(),
            1000,
        )
        .unwrap();
        if i == 0 {
            for (l, &ssrc) in MY_LAYER_SSRCS.iter().enumerate() {
                path.add_video_layer(ssrc, l as u8, 800_000).unwrap();
            }
            for j in 1..PARTICIPANTS {
                path.add_video_stream(device(j), their_ssrc(j));
            }
        } else {
            path.add_video_layer(their_ssrc(i), RECEIVED_LAYER as u8, 800_000)
                .unwrap();
        }
        legs.push(joined.leg);
        paths.push(path);
    }
    while sfu.poll_event().is_some() {}
    share_keys(&mut paths, &roster);
    Call { sfu, legs, paths }
}

/// Plays `frames` through `call`; returns the time participant 0's path took and the frames
/// it received.
fn play<C: FrameCrypto>(call: &mut Call<C>, frames: &[Vec<Encoded>]) -> (Duration, u64) {
    let mut spent = Duration::ZERO;
    let mut received = 0u64;
    let mut now = Instant::now();
    let ticks = frames[0].iter().zip(&frames[1]).zip(&frames[2]);
    for (n, ((f0, f1), f2)) in ticks.enumerate() {
        let layers = [f0, f1, f2];
        let ts = (n as u32).wrapping_mul(90_000 / FPS);
        // The others send (not timed), the SFU forwards (not timed).
        for i in 1..PARTICIPANTS {
            let (data, key) = layers[RECEIVED_LAYER];
            call.paths[i]
                .send_video(now, their_ssrc(i), ts, *key, data)
                .unwrap();
            while let Some(d) = call.paths[i].poll_datagram() {
                let _ = call.sfu.handle_input(now, call.legs[i], &d);
            }
        }
        // Participant 0 sends its three layers (timed).
        let t = Instant::now();
        for (&ssrc, (data, key)) in MY_LAYER_SSRCS.iter().zip(layers) {
            call.paths[0].send_video(now, ssrc, ts, *key, data).unwrap();
        }
        let mut out = Vec::new();
        while let Some(d) = call.paths[0].poll_datagram() {
            out.push(d);
        }
        spent += t.elapsed();
        for d in out {
            let _ = call.sfu.handle_input(now, call.legs[0], &d);
        }
        // What the SFU sends participant 0 (timed: its receive path).
        let mut inbound = Vec::new();
        while let Some(tx) = call.sfu.poll_transmit() {
            if tx.leg == call.legs[0] {
                inbound.push(tx.bytes);
            }
        }
        let t = Instant::now();
        for d in inbound {
            let _ = call.paths[0].handle_datagram(now, d);
            while call.paths[0].poll_video().is_some() {
                received += 1;
            }
        }
        spent += t.elapsed();
        now += Duration::from_millis(1000 / u64::from(FPS));
        call.sfu.handle_timeout(now);
        while call.sfu.poll_transmit().is_some() {}
    }
    (spent, received)
}

fn sframe_call() -> Call<SframeCrypto> {
    call(
        |i, roster| {
            let slot = roster.slot(&device(i)).unwrap();
            let e2ee =
                GroupE2ee::new(GroupCallId(CALL), MemberSlot(slot), &mut rand::rng()).unwrap();
            let mut c = SframeCrypto::new(e2ee);
            for (d, s) in roster.slots() {
                c.assign_slot(d, MemberSlot(s));
            }
            c
        },
        |paths, roster| {
            let now = Instant::now();
            for i in 1..paths.len() {
                let message = paths[i].crypto_mut().e2ee().key_message();
                let slot = MemberSlot(roster.slot(&device(i)).unwrap());
                paths[0]
                    .crypto_mut()
                    .e2ee_mut()
                    .receive_key(slot, &message, now)
                    .unwrap();
            }
        },
    )
}

fn bare_call() -> Call<NoFrameCrypto> {
    call(|_, _| NoFrameCrypto, |_, _| {})
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mut seconds = 4u32;
    let mut rounds = 7usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => seconds = args.next().and_then(|v| v.parse().ok()).unwrap_or(4),
            "--rounds" => rounds = args.next().and_then(|v| v.parse().ok()).unwrap_or(7),
            // `cargo bench` passes `--bench`.
            _ => {}
        }
    }
    let frames = seconds * FPS;
    let (encoded, encode) = encode_all(frames);
    let decode = decode_all(&encoded[RECEIVED_LAYER]);
    let sizes: Vec<f64> = encoded
        .iter()
        .map(|l| l.iter().map(|f| f.0.len()).sum::<usize>() as f64 / l.len().max(1) as f64)
        .collect();
    let (mut bare, mut e2ee) = (Vec::new(), Vec::new());
    let (mut got_bare, mut got_e2ee) = (0, 0);
    for _ in 0..rounds {
        let (t, n) = play(&mut bare_call(), &encoded);
        bare.push(t);
        got_bare = n;
        let (t, n) = play(&mut sframe_call(), &encoded);
        e2ee.push(t);
        got_e2ee = n;
    }
    assert_eq!(got_bare, got_e2ee, "both paths hand out every frame");
    let per_s = |d: Duration| d.as_secs_f64() * 1e3 / f64::from(seconds);
    let (bare, e2ee) = (median(bare), median(e2ee));
    let codec = per_s(encode) + per_s(decode);
    let share = (per_s(e2ee) - per_s(bare)) / (codec + per_s(bare)) * 100.0;
    println!(
        "8-person video call, one device, per second of call: encode 3 layers {:.1} ms, \
         decode 7×{}p {:.1} ms, media path bare {:.2} ms, with E2EE {:.2} ms \
         (frames received per run {got_e2ee}; mean frame bytes per layer {:.0}/{:.0}/{:.0})",
        per_s(encode),
        LAYERS[RECEIVED_LAYER].1,
        per_s(decode),
        per_s(bare),
        per_s(e2ee),
        sizes[0],
        sizes[1],
        sizes[2],
    );
    println!(
        "E2EE adds {:.2} ms per second of call: {share:.2} % of the call's CPU (codec + media path)",
        per_s(e2ee) - per_s(bare)
    );
    println!(
        "{{\"seconds\":{seconds},\"rounds\":{rounds},\"encode_ms_per_s\":{:.2},\
         \"decode_ms_per_s\":{:.2},\"path_bare_ms_per_s\":{:.3},\"path_e2ee_ms_per_s\":{:.3},\
         \"e2ee_share_pct\":{share:.3},\"frames_received\":{got_e2ee}}}",
        per_s(encode),
        per_s(decode),
        per_s(bare),
        per_s(e2ee),
    );
}

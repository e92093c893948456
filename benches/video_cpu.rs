//! CPU of hush's 1:1 video pipeline against the bare codec, in the same run (issue 14).
//!
//! The same 640×360 pictures (a moving, textured synthetic scene) go through:
//!
//! - **bare codec**: `OpenH264Encoder::encode` then `OpenH264Decoder::decode`, nothing else;
//! - **hush's path**: Alice's `MediaPath` (the same encoder inside, RFC 6184 packetization,
//!   the media engine's pacing, NACK/RTX history and RTCP, SRTP) → datagrams → Bob's
//!   `MediaPath` (SRTP, the engine, reassembly, the same decoder), the picture coming out of
//!   `poll_video`; the encoder's rate is fixed like the bare one's (`set_video_rates`).
//!
//! Both run on this thread with the same encoder settings and bitrate, alternately `--rounds`
//! times (median taken) to even out a shared machine's load. Time is this thread's CPU time
//! (`/proc/thread-self/schedstat`, wall clock elsewhere), so other processes do not count.
//! The pictures are made before timing. The network is ideal and time virtual (33 ms a frame).
//!
//! `cargo bench --bench video_cpu -- [--frames N] [--rounds R] [--kbps K]`
//! (default 300 frames, 5 rounds, 1500 kbps). The last line printed is one JSON object.

use std::time::{Duration, Instant};

use hush::media_path::{test_keys, MediaPath};
use hush_media::video::{
    I420Frame, OpenH264Decoder, OpenH264Encoder, VideoDecoder, VideoEncoder, VideoEncoderConfig,
};
use hush_media::SessionConfig;

const W: u32 = 640;
const H: u32 = 360;
const FPS: u32 = 30;

/// A moving picture with texture and noise, so the encoder has real work every frame.
fn picture(n: u32, t: Instant) -> I420Frame {
    let mut pic = I420Frame::filled(W, H, [16, 128, 128], t).expect("valid size");
    let [y, u, v] = pic.planes_mut();
    let w = W as usize;
    let (bx, by) = (
        (n as usize * 4) % (w - 128),
        (n as usize * 2) % (H as usize - 72),
    );
    let mut seed = 0x9e37_79b9u32.wrapping_mul(n + 1);
    for (i, px) in y.iter_mut().enumerate() {
        let (col, row) = (i % w, i / w);
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let inside = (bx..bx + 128).contains(&col) && (by..by + 72).contains(&row);
        let base = (((col * 7) ^ (row * 3)) + n as usize * 2) % 180 + 30;
        *px = if inside { 230 } else { base as u8 } ^ (seed as u8 & 0x03);
    }
    for (i, px) in u.iter_mut().enumerate() {
        *px = 110 + ((i / (w / 2) + n as usize) % 40) as u8;
    }
    for (i, px) in v.iter_mut().enumerate() {
        *px = 120 + ((i % (w / 2)) % 30) as u8;
    }
    pic
}

/// CPU time of this thread so far.
fn cpu_now() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map(Duration::from_nanos)
        .unwrap_or_else(|| {
            static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
            START.get_or_init(Instant::now).elapsed()
        })
}

fn encoder_config(kbps: u32, max_nal_size: usize) -> VideoEncoderConfig {
    VideoEncoderConfig {
        bitrate_bps: kbps * 1000,
        framerate: FPS as f32,
        max_nal_size,
        ..VideoEncoderConfig::default()
    }
}

/// Bare codec: returns (CPU time, pictures decoded, bytes encoded).
fn bare(pictures: &[I420Frame], kbps: u32, max_nal_size: usize) -> (Duration, usize, usize) {
    let mut enc = OpenH264Encoder::new(encoder_config(kbps, max_nal_size)).expect("encoder");
    let mut dec = OpenH264Decoder::new().expect("decoder");
    let (mut decoded, mut bytes) = (0, 0);
    let start = cpu_now();
    for p in pictures {
        if let Some(frame) = enc.encode(p).expect("encode") {
            bytes += frame.data.len();
            if let Ok(Some(_)) = dec.decode(&frame.data, p.capture_time) {
                decoded += 1;
            }
        }
    }
    (cpu_now() - start, decoded, bytes)
}

/// Moves datagrams both ways and runs both paths' timers up to `now`.
fn pump(alice: &mut MediaPath, bob: &mut MediaPath, now: Instant) {
    loop {
        let mut moved = false;
        while let Some(d) = alice.poll_datagram() {
            moved = true;
            let _ = bob.handle_datagram(now, d);
        }
        while let Some(d) = bob.poll_datagram() {
            moved = true;
            let _ = alice.handle_datagram(now, d);
        }
        for path in [&mut *alice, &mut *bob] {
            if path.poll_timeout().is_some_and(|t| t <= now) {
                path.handle_timeout(now);
                moved = true;
            }
        }
        if !moved {
            return;
        }
    }
}

/// hush's path both ways: returns (CPU time, pictures decoded, bytes encoded).
fn path(pictures: &[I420Frame], kbps: u32, t0: Instant) -> (Duration, usize, usize) {
    let (ak, bk) = test_keys();
    let config = SessionConfig::default().with_h264_video();
    let max_nal = config.max_payload.saturating_sub(20).max(420);
    let mut alice = MediaPath::new(&ak, config.clone(), t0).expect("keys");
    let mut bob = MediaPath::new(&bk, config.mirrored(), t0).expect("keys");
    let enc = OpenH264Encoder::new(encoder_config(kbps, max_nal)).expect("encoder");
    alice.set_video_codecs(Some(Box::new(enc)), None, FPS as f32);
    bob.set_video_codecs(
        None,
        Some(Box::new(OpenH264Decoder::new().expect("decoder"))),
        FPS as f32,
    );
    alice.set_video_rates(kbps * 1000, FPS as f32);
    let frame = Duration::from_secs(1) / FPS;
    let mut decoded = 0;
    let start = cpu_now();
    for (n, p) in pictures.iter().enumerate() {
        let now = t0 + frame * n as u32;
        let _ = alice.send_video(now, p);
        // Three steps per frame interval, as a driver wakes for the pacer.
        for k in 0..3 {
            pump(&mut alice, &mut bob, now + frame * k / 3);
        }
        while bob.poll_video().is_some() {
            decoded += 1;
        }
    }
    let cpu = cpu_now() - start;
    (cpu, decoded, alice.video_stats().bytes_encoded as usize)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut frames = 300u32;
    let mut rounds = 5usize;
    let mut kbps = 1500u32;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().and_then(|v| v.parse::<u64>().ok());
        match a.as_str() {
            "--frames" => frames = value().map_or(frames, |v| v as u32),
            "--rounds" => rounds = value().map_or(rounds, |v| v as usize).max(1),
            "--kbps" => kbps = value().map_or(kbps, |v| v as u32),
            _ => {} // cargo bench passes --bench
        }
    }
    let t0 = Instant::now();
    let frame = Duration::from_secs(1) / FPS;
    let pictures: Vec<I420Frame> = (0..frames).map(|n| picture(n, t0 + frame * n)).collect();
    let max_nal = SessionConfig::default()
        .max_payload
        .saturating_sub(20)
        .max(420);
    let (mut b_ms, mut p_ms, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut b_info, mut p_info) = ((0, 0), (0, 0));
    for r in 0..rounds {
        let (b, bd, bb) = bare(&pictures, kbps, max_nal);
        let (p, pd, pb) = path(&pictures, kbps, t0);
        let per = |d: Duration| d.as_secs_f64() * 1e3 / f64::from(frames);
        println!(
            "round {r}: bare {:.3} ms/frame ({bd} decoded, {} kbps), path {:.3} ms/frame ({pd} decoded, {} kbps), ratio {:.3}",
            per(b),
            bb * 8 * FPS as usize / frames as usize / 1000,
            per(p),
            pb * 8 * FPS as usize / frames as usize / 1000,
            p.as_secs_f64() / b.as_secs_f64()
        );
        b_ms.push(per(b));
        p_ms.push(per(p));
        ratios.push(p.as_secs_f64() / b.as_secs_f64());
        b_info = (bd, bb);
        p_info = (pd, pb);
    }
    let (b, p, ratio) = (median(&mut b_ms), median(&mut p_ms), median(&mut ratios));
    println!(
        "{{\"frames\":{frames},\"rounds\":{rounds},\"kbps\":{kbps},\"bare_ms_per_frame\":{b:.3},\"path_ms_per_frame\":{p:.3},\"ratio\":{ratio:.3},\"bare_decoded\":{},\"path_decoded\":{},\"bare_bytes\":{},\"path_bytes\":{},\"bare_core_pct_at_30fps\":{:.1},\"path_core_pct_at_30fps\":{:.1}}}",
        b_info.0,
        p_info.0,
        b_info.1,
        p_info.1,
        b * 30.0 / 10.0,
        p * 30.0 / 10.0,
    );
}

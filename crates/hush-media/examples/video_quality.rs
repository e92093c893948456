//! Video quality bench: hush's OpenH264 settings against the input, side by side with x264
//! (`-preset veryfast -tune zerolatency`, through the system's ffmpeg) at the same bitrate.
//!
//! ```sh
//! cargo run --release -p hush-media --example video_quality -- [--frames N] [--kbps 300,800,1500]
//! ```
//!
//! The content is synthetic and deterministic (640×360 at 30 fps): a slowly panning textured
//! background, moving shapes, and a little sensor noise. For each bitrate it encodes with
//! several OpenH264 tunings (hush's default first) and with x264, decodes, and reports the
//! achieved bitrate, mean Y-PSNR and Y-SSIM against the input (a frame the rate control skipped
//! counts as the previous picture shown again, as a receiver would show it), and encode/decode
//! milliseconds per frame. Without ffmpeg the x264 rows are left out.

use std::process::Command;
use std::time::{Duration, Instant};

use hush_media::video::{
    I420Frame, OpenH264Decoder, OpenH264Encoder, OpenH264Tuning, VideoDecoder, VideoEncoder,
    VideoEncoderConfig,
};

const W: u32 = 640;
const H: u32 = 360;
const FPS: f64 = 30.0;

/// Deterministic xorshift noise.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Frame `n` of the synthetic scene, as packed I420 bytes.
fn scene(n: u32, rng: &mut Rng) -> Vec<u8> {
    let (w, h) = (W as usize, H as usize);
    let mut buf = vec![0u8; w * h * 3 / 2];
    let t = f64::from(n) / FPS;
    let pan = t * 60.0; // pixels per second of background pan
    let (y, uv) = buf.split_at_mut(w * h);
    for r in 0..h {
        for c in 0..w {
            let x = c as f64 + pan;
            let yy = r as f64 + pan * 0.3;
            // Textured background: a few sines of different scales.
            let mut v = 110.0
                + 40.0 * (x * 0.031).sin() * (yy * 0.023).cos()
                + 18.0 * (x * 0.11 + yy * 0.07).sin()
                + 14.0 * ((x * 0.35).sin() * (yy * 0.29).sin())
                + 10.0 * ((x * 0.9).sin() * (yy * 0.8).sin());
            // A bright disc moving on a circle, and a dark bar moving across.
            let cx = 320.0 + 180.0 * (t * 0.9).cos();
            let cy = 180.0 + 100.0 * (t * 0.9).sin();
            let d2 = (c as f64 - cx).powi(2) + (r as f64 - cy).powi(2);
            if d2 < 50.0f64.powi(2) {
                v = 200.0 + 30.0 * ((c as f64 - cx) * 0.2).sin();
            }
            let bx = (t * 120.0) % (W as f64 + 100.0) - 100.0;
            if (c as f64) > bx && (c as f64) < bx + 60.0 && (220..300).contains(&r) {
                v = 40.0 + ((r / 4 + c / 4) % 2) as f64 * 20.0;
            }
            let noise = (rng.next() % 5) as f64 - 2.0;
            y[r * w + c] = (v + noise).clamp(16.0, 235.0) as u8;
        }
    }
    let (u, v) = uv.split_at_mut(w * h / 4);
    for r in 0..h / 2 {
        for c in 0..w / 2 {
            let x = (c * 2) as f64 + pan;
            u[r * w / 2 + c] = (128.0 + 30.0 * (x * 0.01).sin()) as u8;
            v[r * w / 2 + c] = (128.0 + 25.0 * ((r * 2) as f64 * 0.015 + t).cos()) as u8;
        }
    }
    buf
}

fn frame_of(bytes: &[u8], t: Instant) -> I420Frame {
    let (w, h) = (W as usize, H as usize);
    let (y, rest) = bytes.split_at(w * h);
    let (u, v) = rest.split_at(w * h / 4);
    I420Frame::new(
        W,
        H,
        [y.to_vec(), u.to_vec(), v.to_vec()],
        [w, w / 2, w / 2],
        t,
    )
    .expect("valid frame")
}

fn psnr_y(a: &[u8], b: &[u8]) -> f64 {
    let n = (W * H) as usize;
    let mse = a[..n]
        .iter()
        .zip(&b[..n])
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum::<f64>()
        / n as f64;
    10.0 * (255.0f64.powi(2) / mse.max(1e-10)).log10()
}

/// SSIM of the Y planes over 8×8 windows with a step of 4 (Wang et al. 2004 constants).
fn ssim_y(a: &[u8], b: &[u8]) -> f64 {
    let (w, h) = (W as usize, H as usize);
    let (c1, c2) = ((0.01f64 * 255.0).powi(2), (0.03f64 * 255.0).powi(2));
    let mut total = 0.0;
    let mut count = 0usize;
    for r0 in (0..=h - 8).step_by(4) {
        for c0 in (0..=w - 8).step_by(4) {
            let (mut sa, mut sb, mut saa, mut sbb, mut sab) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for r in r0..r0 + 8 {
                for c in c0..c0 + 8 {
                    let x = f64::from(a[r * w + c]);
                    let y = f64::from(b[r * w + c]);
                    sa += x;
                    sb += y;
                    saa += x * x;
                    sbb += y * y;
                    sab += x * y;
                }
            }
            let n = 64.0;
            let (ma, mb) = (sa / n, sb / n);
            let va = saa / n - ma * ma;
            let vb = sbb / n - mb * mb;
            let cov = sab / n - ma * mb;
            total += ((2.0 * ma * mb + c1) * (2.0 * cov + c2))
                / ((ma * ma + mb * mb + c1) * (va + vb + c2));
            count += 1;
        }
    }
    total / count as f64
}

struct Row {
    name: String,
    kbps_target: u32,
    kbps_actual: f64,
    psnr: f64,
    ssim: f64,
    enc_ms: Option<f64>,
    dec_ms: Option<f64>,
    skipped: usize,
    keyframes: usize,
}

/// Scores decoded pictures against the input; `None` entries repeat the last picture.
fn score(input: &[Vec<u8>], shown: &[Option<Vec<u8>>]) -> (f64, f64) {
    let mut last: Option<&Vec<u8>> = None;
    let (mut p, mut s) = (0.0, 0.0);
    for (inp, out) in input.iter().zip(shown) {
        if let Some(o) = out {
            last = Some(o);
        }
        let pic = last.map_or(&[][..], Vec::as_slice);
        if pic.is_empty() {
            continue;
        }
        p += psnr_y(inp, pic);
        s += ssim_y(inp, pic);
    }
    (p / input.len() as f64, s / input.len() as f64)
}

fn run_hush(
    name: &str,
    tuning: OpenH264Tuning,
    kbps: u32,
    input: &[Vec<u8>],
) -> Result<Row, Box<dyn std::error::Error>> {
    let cfg = VideoEncoderConfig {
        bitrate_bps: kbps * 1000,
        framerate: FPS as f32,
        ..Default::default()
    };
    let mut enc = OpenH264Encoder::with_tuning(cfg, tuning)?;
    let mut dec = OpenH264Decoder::new()?;
    let t0 = Instant::now();
    let (mut enc_t, mut dec_t) = (Duration::ZERO, Duration::ZERO);
    let mut bytes = 0usize;
    let mut shown = Vec::new();
    let (mut skipped, mut keyframes) = (0, 0);
    for (i, raw) in input.iter().enumerate() {
        let t = t0 + Duration::from_secs_f64(i as f64 / FPS);
        let frame = frame_of(raw, t);
        let s = Instant::now();
        let out = enc.encode(&frame)?;
        enc_t += s.elapsed();
        let Some(out) = out else {
            skipped += 1;
            shown.push(None);
            continue;
        };
        keyframes += usize::from(out.keyframe);
        bytes += out.data.len();
        let s = Instant::now();
        let pic = dec.decode(&out.data, t)?;
        dec_t += s.elapsed();
        shown.push(pic.map(|p| [p.y(), p.u(), p.v()].concat()));
    }
    let (psnr, ssim) = score(input, &shown);
    let n = input.len() as f64;
    Ok(Row {
        name: name.into(),
        kbps_target: kbps,
        kbps_actual: bytes as f64 * 8.0 / (n / FPS) / 1000.0,
        psnr,
        ssim,
        enc_ms: Some(enc_t.as_secs_f64() * 1000.0 / n),
        dec_ms: Some(dec_t.as_secs_f64() * 1000.0 / n),
        skipped,
        keyframes,
    })
}

/// The `openh264` crate's own defaults with only the bitrate set (rate control mode
/// "quality", no frame rate given): what a first try gets.
fn run_crate_defaults(kbps: u32, input: &[Vec<u8>]) -> Result<Row, Box<dyn std::error::Error>> {
    use openh264::encoder::{BitRate, Encoder, EncoderConfig, FrameType};
    use openh264::formats::YUVBuffer;
    use openh264::OpenH264API;
    let config = EncoderConfig::new().bitrate(BitRate::from_bps(kbps * 1000));
    let mut enc = Encoder::with_api_config(OpenH264API::from_source(), config)?;
    let mut dec = OpenH264Decoder::new()?;
    let t0 = Instant::now();
    let mut bytes = 0usize;
    let mut shown = Vec::new();
    let (mut skipped, mut keyframes) = (0, 0);
    let mut enc_t = Duration::ZERO;
    for raw in input {
        let yuv = YUVBuffer::from_vec(raw.clone(), W as usize, H as usize);
        let s = Instant::now();
        let bits = enc.encode(&yuv)?;
        enc_t += s.elapsed();
        let kind = bits.frame_type();
        let data = bits.to_vec();
        if data.is_empty() || kind == FrameType::Skip {
            skipped += 1;
            shown.push(None);
            continue;
        }
        keyframes += usize::from(kind == FrameType::IDR);
        bytes += data.len();
        shown.push(
            dec.decode(&data, t0)?
                .map(|p| [p.y(), p.u(), p.v()].concat()),
        );
    }
    let (psnr, ssim) = score(input, &shown);
    let n = input.len() as f64;
    Ok(Row {
        name: "openh264 crate defaults + bitrate".into(),
        kbps_target: kbps,
        kbps_actual: bytes as f64 * 8.0 / (n / FPS) / 1000.0,
        psnr,
        ssim,
        enc_ms: Some(enc_t.as_secs_f64() * 1000.0 / n),
        dec_ms: None,
        skipped,
        keyframes,
    })
}

fn run_x264(kbps: u32, input: &[Vec<u8>], dir: &std::path::Path) -> Option<Row> {
    let raw = dir.join("in.yuv");
    let h264 = dir.join("x264.h264");
    let back = dir.join("x264.yuv");
    let size = format!("{W}x{H}");
    let rate = format!("{kbps}k");
    let s = Instant::now();
    let ok = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo"])
        .args(["-pix_fmt", "yuv420p", "-s", &size, "-r", "30", "-i"])
        .arg(&raw)
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-tune",
            "zerolatency",
        ])
        .args([
            "-b:v", &rate, "-maxrate", &rate, "-bufsize", &rate, "-threads", "1",
        ])
        .args(["-f", "h264"])
        .arg(&h264)
        .status()
        .ok()?
        .success();
    let enc_wall = s.elapsed();
    if !ok {
        return None;
    }
    let ok = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-i"])
        .arg(&h264)
        .args(["-f", "rawvideo", "-pix_fmt", "yuv420p"])
        .arg(&back)
        .status()
        .ok()?
        .success();
    if !ok {
        return None;
    }
    let bytes = std::fs::metadata(&h264).ok()?.len() as f64;
    let decoded = std::fs::read(&back).ok()?;
    let fsize = (W * H * 3 / 2) as usize;
    let shown: Vec<Option<Vec<u8>>> = decoded.chunks(fsize).map(|c| Some(c.to_vec())).collect();
    if shown.len() != input.len() {
        eprintln!("x264: {} frames back for {}", shown.len(), input.len());
    }
    let (psnr, ssim) = score(input, &shown);
    let n = input.len() as f64;
    Some(Row {
        name: "x264 veryfast zerolatency".into(),
        kbps_target: kbps,
        kbps_actual: bytes * 8.0 / (n / FPS) / 1000.0,
        psnr,
        ssim,
        // ffmpeg's wall time includes process start and file I/O: shown for scale only.
        enc_ms: Some(enc_wall.as_secs_f64() * 1000.0 / n),
        dec_ms: None,
        skipped: input.len().saturating_sub(shown.len()),
        keyframes: 0,
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut frames = 150u32;
    let mut rates = vec![300u32, 800, 1500];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--frames" => frames = args.next().ok_or("--frames N")?.parse()?,
            "--kbps" => {
                rates = args
                    .next()
                    .ok_or("--kbps LIST")?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let input: Vec<Vec<u8>> = (0..frames).map(|n| scene(n, &mut rng)).collect();
    let dir = std::env::temp_dir().join(format!("hush-video-quality-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("in.yuv"), input.concat())?;

    let hush = OpenH264Tuning::default();
    let mut variants: Vec<(&str, OpenH264Tuning)> = vec![("hush default", hush)];
    let mut t = hush;
    t.complexity = 2;
    variants.push(("complexity high", t));
    let mut t = hush;
    t.complexity = 0;
    variants.push(("complexity low", t));
    let mut t = hush;
    t.size_limited_slices = false;
    variants.push(("one slice per picture", t));
    let mut t = hush;
    t.background_detection = false;
    t.adaptive_quant = false;
    variants.push(("no AQ, no background detection", t));
    let mut t = hush;
    t.qp_range = (0, 51);
    variants.push(("qp 0-51", t));
    let mut t = hush;
    t.frame_skip = true;
    variants.push(("frame skip at every rate", t));
    let mut t = hush;
    t.scene_change_detect = true;
    variants.push(("scene-change detection on", t));
    let mut t = hush;
    t.frame_skip_below_bps = 0;
    variants.push(("no frame skip at any rate", t));

    println!(
        "{frames} frames {W}x{H}@{FPS}, synthetic scene; Y-PSNR/Y-SSIM vs input (skipped frames \
         count as the previous picture)"
    );
    println!(
        "| encoder | target kbps | actual kbps | Y-PSNR dB | Y-SSIM | enc ms/frame | dec ms/frame | skipped | IDR |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let fmt = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.2}"));
    for &kbps in &rates {
        let mut rows = Vec::new();
        for (name, tuning) in &variants {
            rows.push(run_hush(name, *tuning, kbps, &input)?);
        }
        rows.push(run_crate_defaults(kbps, &input)?);
        rows.extend(run_x264(kbps, &input, &dir));
        for r in rows {
            println!(
                "| {} | {} | {:.0} | {:.2} | {:.4} | {} | {} | {} | {} |",
                r.name,
                r.kbps_target,
                r.kbps_actual,
                r.psnr,
                r.ssim,
                fmt(r.enc_ms),
                fmt(r.dec_ms),
                r.skipped,
                r.keyframes
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

//! H.264 on Cisco's OpenH264 (the `openh264` crate, built from source; its safe API only).

use openh264::decoder::Decoder;
use openh264::encoder::{
    BitRate, Complexity, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, Profile,
    QpRange, RateControlMode, SpsPpsStrategy, UsageType,
};
use openh264::formats::YUVSource;
use openh264::{OpenH264API, Timestamp};
use tracing::debug;

use super::annexb::contains_idr;
use super::restart::RestartPolicy;
use super::{
    EncodedVideoFrame, I420Frame, VideoCodec, VideoDecoder, VideoEncoder, VideoEncoderConfig,
    VideoError,
};
use crate::time::Instant;

fn codec_err(e: openh264::Error) -> VideoError {
    VideoError::Codec {
        codec: "OpenH264",
        source: Box::new(e),
    }
}

/// Encoder knobs beyond [`VideoEncoderConfig`], for measuring settings against each other
/// (the `video_quality` bench). [`Default`] is what hush uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct OpenH264Tuning {
    /// OpenH264's complexity mode: 0 low, 1 medium, 2 high.
    pub complexity: u8,
    /// Adaptive quantization.
    pub adaptive_quant: bool,
    /// Background detection (skips "static" macroblocks).
    pub background_detection: bool,
    /// Scene change detection (an I frame on a cut).
    pub scene_change_detect: bool,
    /// Let the rate control drop frames to hold the bitrate, at any bitrate.
    pub frame_skip: bool,
    /// Let the rate control drop frames when the target bitrate is below this (bits per
    /// second), whatever `frame_skip` says.
    pub frame_skip_below_bps: u32,
    /// Cut slices to `max_nal_size` (otherwise one slice per picture, fragmented by FU-A).
    pub size_limited_slices: bool,
    /// Lowest and highest quantizer the rate control may pick.
    pub qp_range: (u8, u8),
}

impl Default for OpenH264Tuning {
    fn default() -> Self {
        Self {
            complexity: 1,
            adaptive_quant: true,
            background_detection: true,
            // On moving camera content OpenH264 takes many frames for cuts and makes them
            // IDRs: 9 in 5 s of the bench scene, 2.8 dB Y-PSNR lost at 800 kbps
            // (docs/benchmarks.md). Receivers ask for keyframes when they need them.
            scene_change_detect: false,
            // Through a call each skipped picture is a repeated one on the receiver's screen:
            // with skipping on at 2 Mbps OpenH264 dropped ~1 picture in 20 on moving content,
            // which cost ~9 dB Y-PSNR over what was shown (benches/video_quality.py). On
            // thin links it stays the rate control's valve: a keyframe or a burst of motion
            // at 150 kbps must not queue seconds of video (the bandwidth-step tests).
            frame_skip: false,
            frame_skip_below_bps: 300_000,
            size_limited_slices: true,
            qp_range: (10, 42),
        }
    }
}

/// The default [`VideoEncoder`]: OpenH264, constrained baseline, tuned for calls. See the
/// [module docs](super).
///
/// OpenH264's safe API cannot change the bitrate of a running encoder, so
/// [`set_rates`](VideoEncoder::set_rates) restarts it (one keyframe): for a drop of over 15 %
/// at most every 0.5 s, for a rise of over 15 % only once it has lasted 3 s (see
/// `video/restart.rs`). A larger picture starts OpenH264 over anyway (it reinitialises
/// with an IDR): if the running rate is one where it skips pictures
/// ([`OpenH264Tuning::frame_skip_below_bps`]), the wanted rates are taken then.
pub struct OpenH264Encoder {
    config: VideoEncoderConfig,
    tuning: OpenH264Tuning,
    encoder: Option<Encoder>,
    wanted: (u32, f32),
    policy: RestartPolicy,
    frames_since_start: u64,
    force_keyframe: bool,
    epoch: Option<Instant>,
    restarts: u64,
    /// The size of the last picture encoded.
    size: Option<(u32, u32)>,
    /// Started over for a larger picture: its rate control does not skip pictures, whatever
    /// the rate (see [`apply_size`](Self::apply_size)), until the next restart.
    step_up: bool,
}

impl std::fmt::Debug for OpenH264Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenH264Encoder")
            .field("config", &self.config)
            .field("tuning", &self.tuning)
            .field("wanted", &self.wanted)
            .field("restarts", &self.restarts)
            .finish_non_exhaustive()
    }
}

/// Lends an [`I420Frame`] to OpenH264 as its YUV source.
struct Source<'a>(&'a I420Frame);

impl YUVSource for Source<'_> {
    fn dimensions(&self) -> (usize, usize) {
        (self.0.width() as usize, self.0.height() as usize)
    }

    fn strides(&self) -> (usize, usize, usize) {
        let [y, u, v] = self.0.strides();
        (y, u, v)
    }

    fn y(&self) -> &[u8] {
        self.0.y()
    }

    fn u(&self) -> &[u8] {
        self.0.u()
    }

    fn v(&self) -> &[u8] {
        self.0.v()
    }
}

impl OpenH264Encoder {
    /// An encoder with hush's real-time settings.
    pub fn new(config: VideoEncoderConfig) -> Result<Self, VideoError> {
        Self::with_tuning(config, OpenH264Tuning::default())
    }

    /// An encoder with explicit [`OpenH264Tuning`] (for comparisons; use [`new`](Self::new)).
    pub fn with_tuning(
        config: VideoEncoderConfig,
        tuning: OpenH264Tuning,
    ) -> Result<Self, VideoError> {
        config.validate()?;
        if tuning.complexity > 2 || tuning.qp_range.0 > tuning.qp_range.1 || tuning.qp_range.1 > 51
        {
            return Err(VideoError::InvalidConfig(
                "complexity 0..=2, qp range within 0..=51",
            ));
        }
        let mut enc = Self {
            config,
            tuning,
            encoder: None,
            wanted: (config.bitrate_bps, config.framerate),
            policy: RestartPolicy::default(),
            frames_since_start: 0,
            force_keyframe: false,
            epoch: None,
            restarts: 0,
            size: None,
            step_up: false,
        };
        enc.encoder = Some(enc.build()?);
        Ok(enc)
    }

    /// The settings in force (after any rate change applied so far).
    pub fn config(&self) -> &VideoEncoderConfig {
        &self.config
    }

    /// How often the encoder was restarted to apply a new rate.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    fn build(&self) -> Result<Encoder, VideoError> {
        let c = &self.config;
        let t = &self.tuning;
        let period = c.keyframe_interval.map_or(0, |d| {
            // At least one frame: 0 would mean "encoder decides" to OpenH264.
            ((d.as_secs_f32() * c.framerate).round() as u32).max(1)
        });
        let complexity = match t.complexity {
            0 => Complexity::Low,
            1 => Complexity::Medium,
            _ => Complexity::High,
        };
        let mut ec = EncoderConfig::new()
            .usage_type(UsageType::CameraVideoRealTime)
            .rate_control_mode(RateControlMode::Bitrate)
            .bitrate(BitRate::from_bps(c.bitrate_bps))
            .max_frame_rate(FrameRate::from_hz(c.framerate))
            .profile(Profile::Baseline)
            .complexity(complexity)
            .adaptive_quantization(t.adaptive_quant)
            .background_detection(t.background_detection)
            .scene_change_detect(t.scene_change_detect)
            .skip_frames(t.frame_skip || (c.bitrate_bps < t.frame_skip_below_bps && !self.step_up))
            .qp(QpRange::new(t.qp_range.0, t.qp_range.1))
            .sps_pps_strategy(SpsPpsStrategy::ConstantId)
            .intra_frame_period(IntraFramePeriod::from_num_frames(period))
            .num_threads(1);
        if t.size_limited_slices {
            ec = ec.max_slice_len(c.max_nal_size as u32);
        }
        Encoder::with_api_config(OpenH264API::from_source(), ec).map_err(codec_err)
    }

    /// At a new picture size (a ladder step) OpenH264 starts over with an IDR anyway, so the
    /// encoder is restarted there at the wanted rates, and the restart policy's holds count
    /// from it. Before, only a larger picture out of OpenH264's skipping range took them
    /// (docs/benchmarks.md, issue 14's tenth and eleventh rounds); elsewhere the step kept the
    /// small picture's rates, and the policy restarted the encoder for them a few frames later
    /// (a new frame rate, a drop, not held by the step's IDR): two keyframes of 24–45 kB
    /// within 60 ms at 480×270 and 640×360, whose burst held pictures back for a full queue
    /// and froze the picture for 0.4–0.55 s at 10 % loss (issue 14's thirteenth round).
    ///
    /// A larger picture's encoder does not skip pictures, even below
    /// [`OpenH264Tuning::frame_skip_below_bps`]: the step's IDR (25 kB at 480×270) is most of
    /// a second of a 240–300 kbps budget, and OpenH264 paid it back by skipping three pictures
    /// in four for 0.6–0.8 s, a freeze at each step up from 320×180 at 10 % loss. A step up
    /// comes from a rising estimate, so the link has room for the IDR; on a link that is
    /// really that thin, the next drop restarts the encoder with skipping again.
    fn apply_size(&mut self, size: (u32, u32)) -> Result<(), VideoError> {
        let area = |s: (u32, u32)| u64::from(s.0) * u64::from(s.1);
        let previous = self.size.replace(size);
        let Some(previous) = previous.filter(|&p| p != size) else {
            return Ok(());
        };
        let step_up = area(size) > area(previous);
        let skipping = self.config.bitrate_bps < self.tuning.frame_skip_below_bps;
        let rates_differ = self.wanted != (self.config.bitrate_bps, self.config.framerate);
        if rates_differ || (step_up != self.step_up && skipping) {
            self.step_up = step_up;
            let (bps, fps) = self.wanted;
            self.rebuild_at(bps, fps, "a new picture size")?;
        }
        self.policy = RestartPolicy::default();
        self.frames_since_start = 0;
        Ok(())
    }

    /// Restarts the encoder if the [`RestartPolicy`] says a pending rate change is due.
    fn apply_rates(&mut self) -> Result<(), VideoError> {
        let running = (self.config.bitrate_bps, self.config.framerate);
        if self.frames_since_start == 0 && self.wanted != running {
            // Nothing encoded since the encoder (re)started: its next frame is an IDR anyway,
            // so the rates the engine asked for before it are taken now, at no cost. Held
            // back by the policy instead, a first target that differed from the starting
            // guess restarted the encoder (a second keyframe) a second into the call.
            let (bps, fps) = self.wanted;
            return self.build_at(bps, fps);
        }
        if !self
            .policy
            .restart_now(running, self.wanted, self.frames_since_start)
        {
            return Ok(());
        }
        let (bps, fps) = self.wanted;
        self.step_up = false;
        self.rebuild_at(bps, fps, "a new rate")?;
        self.frames_since_start = 0;
        Ok(())
    }

    /// Starts OpenH264 over at `bps` and `fps` (its next frame is an IDR), for `reason`.
    fn rebuild_at(&mut self, bps: u32, fps: f32, reason: &'static str) -> Result<(), VideoError> {
        debug!(
            from_bps = self.config.bitrate_bps,
            to_bps = bps,
            fps,
            size = ?self.size,
            reason,
            "restarting OpenH264"
        );
        self.build_at(bps, fps)?;
        self.restarts += 1;
        Ok(())
    }

    /// Builds OpenH264 anew at `bps` and `fps`.
    fn build_at(&mut self, bps: u32, fps: f32) -> Result<(), VideoError> {
        self.config.bitrate_bps = bps;
        self.config.framerate = fps;
        self.encoder = Some(self.build()?);
        Ok(())
    }
}

impl VideoEncoder for OpenH264Encoder {
    fn codec(&self) -> VideoCodec {
        VideoCodec::H264
    }

    fn encode(&mut self, frame: &I420Frame) -> Result<Option<EncodedVideoFrame>, VideoError> {
        self.apply_size((frame.width(), frame.height()))?;
        self.apply_rates()?;
        let epoch = *self.epoch.get_or_insert(frame.capture_time);
        let ms = frame
            .capture_time
            .saturating_duration_since(epoch)
            .as_millis();
        let ts = Timestamp::from_millis(u64::try_from(ms).unwrap_or(u64::MAX));
        let encoder = match self.encoder.as_mut() {
            Some(e) => e,
            None => self.encoder.insert(self.build()?),
        };
        if std::mem::take(&mut self.force_keyframe) {
            encoder.force_intra_frame();
        }
        self.frames_since_start += 1;
        let bits = encoder.encode_at(&Source(frame), ts).map_err(codec_err)?;
        let frame_type = bits.frame_type();
        if matches!(frame_type, FrameType::Skip | FrameType::Invalid) {
            return Ok(None);
        }
        let data = bits.to_vec();
        if data.is_empty() {
            return Ok(None);
        }
        Ok(Some(EncodedVideoFrame {
            keyframe: frame_type == FrameType::IDR,
            data,
            width: frame.width(),
            height: frame.height(),
            capture_time: frame.capture_time,
        }))
    }

    fn request_keyframe(&mut self) {
        self.force_keyframe = true;
    }

    fn set_rates(&mut self, bitrate_bps: u32, framerate: f32) {
        let bps = bitrate_bps.clamp(10_000, 50_000_000);
        let fps = if framerate.is_finite() {
            framerate.clamp(1.0, 120.0)
        } else {
            self.config.framerate
        };
        self.wanted = (bps, fps);
    }
}

/// The default [`VideoDecoder`]: OpenH264.
///
/// Error concealment is off: a unit that fails to decode is an error, the decoder then waits
/// for an IDR ([`VideoError::NeedKeyframe`] for anything else).
pub struct OpenH264Decoder {
    decoder: Decoder,
    need_keyframe: bool,
}

impl std::fmt::Debug for OpenH264Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenH264Decoder")
            .field("need_keyframe", &self.need_keyframe)
            .finish_non_exhaustive()
    }
}

impl OpenH264Decoder {
    /// A decoder waiting for its first keyframe.
    pub fn new() -> Result<Self, VideoError> {
        Ok(Self {
            decoder: Decoder::with_api_config(
                OpenH264API::from_source(),
                openh264::decoder::DecoderConfig::new(),
            )
            .map_err(codec_err)?,
            need_keyframe: true,
        })
    }
}

impl VideoDecoder for OpenH264Decoder {
    fn codec(&self) -> VideoCodec {
        VideoCodec::H264
    }

    fn decode(
        &mut self,
        access_unit: &[u8],
        capture_time: Instant,
    ) -> Result<Option<I420Frame>, VideoError> {
        if self.need_keyframe {
            if !contains_idr(access_unit) {
                return Err(VideoError::NeedKeyframe);
            }
            // Start from a clean state: drop whatever the failed stream left behind.
            self.decoder = Decoder::with_api_config(
                OpenH264API::from_source(),
                openh264::decoder::DecoderConfig::new(),
            )
            .map_err(codec_err)?;
        }
        let picture = match self.decoder.decode(access_unit) {
            Ok(p) => p,
            Err(e) => {
                self.need_keyframe = true;
                return Err(codec_err(e));
            }
        };
        let Some(yuv) = picture else {
            return Ok(None);
        };
        self.need_keyframe = false;
        let (w, h) = yuv.dimensions();
        let (sy, su, sv) = yuv.strides();
        let (w, h) = (w as u32, h as u32);
        let frame = I420Frame::new(
            w,
            h,
            [yuv.y().to_vec(), yuv.u().to_vec(), yuv.v().to_vec()],
            [sy, su, sv],
            capture_time,
        );
        match frame {
            Ok(f) => Ok(Some(f.to_packed())),
            Err(e) => {
                self.need_keyframe = true;
                Err(e)
            }
        }
    }

    fn needs_keyframe(&self) -> bool {
        self.need_keyframe
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::annexb::{annexb_nal_units, nal_type};
    use super::super::{NAL_IDR, NAL_PPS, NAL_SPS};
    use super::*;

    /// An encoder with the default settings at `bps`.
    fn encoder_at(bps: u32) -> OpenH264Encoder {
        OpenH264Encoder::new(VideoEncoderConfig {
            bitrate_bps: bps,
            ..VideoEncoderConfig::default()
        })
        .unwrap()
    }

    /// A moving gradient with a bouncing square: enough texture and motion to exercise the
    /// encoder without input files.
    fn picture(w: u32, h: u32, n: u32, t: Instant) -> I420Frame {
        let mut f = I420Frame::filled(w, h, [0, 128, 128], t).unwrap();
        let [y, u, _] = f.planes_mut();
        for r in 0..h {
            for c in 0..w {
                let mut v = ((c + 2 * n) ^ (r + n)) as u8;
                let sx = (n * 3) % (w - 32);
                if (sx..sx + 32).contains(&c) && (r % 64) < 32 {
                    v = 235;
                }
                y[(r * w + c) as usize] = v;
            }
        }
        for (i, b) in u.iter_mut().enumerate() {
            *b = (i as u32 / 7 + n) as u8;
        }
        f
    }

    fn y_psnr(a: &I420Frame, b: &I420Frame) -> f64 {
        let mse: f64 = a
            .y()
            .iter()
            .zip(b.y())
            .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
            .sum::<f64>()
            / a.y().len() as f64;
        10.0 * (255.0f64.powi(2) / mse.max(1e-9)).log10()
    }

    #[test]
    fn encodes_and_decodes_with_keyframe_on_request() {
        let cfg = VideoEncoderConfig {
            bitrate_bps: 1_500_000,
            ..Default::default()
        };
        let mut enc = OpenH264Encoder::new(cfg).unwrap();
        let mut dec = OpenH264Decoder::new().unwrap();
        let t0 = Instant::now();
        let mut keys = Vec::new();
        let mut decoded = 0;
        for n in 0..40u32 {
            if n == 25 {
                enc.request_keyframe();
            }
            let t = t0 + Duration::from_millis(u64::from(n) * 33);
            let input = picture(320, 180, n, t);
            let Some(out) = enc.encode(&input).unwrap() else {
                continue;
            };
            for nal in annexb_nal_units(&out.data) {
                assert!(nal.len() <= cfg.max_nal_size, "NAL of {} bytes", nal.len());
            }
            if out.keyframe {
                keys.push(n);
                let types: Vec<u8> = annexb_nal_units(&out.data).filter_map(nal_type).collect();
                assert!(types.contains(&NAL_SPS) && types.contains(&NAL_PPS));
                assert!(types.contains(&NAL_IDR));
            }
            let pic = dec.decode(&out.data, t).unwrap().expect("a picture");
            assert_eq!((pic.width(), pic.height()), (320, 180));
            assert_eq!(pic.capture_time, t);
            if n > 5 {
                let q = y_psnr(&input, &pic);
                assert!(q > 30.0, "frame {n}: {q:.1} dB");
            }
            decoded += 1;
        }
        assert_eq!(keys.first(), Some(&0));
        assert!(keys.contains(&25), "keyframes at {keys:?}");
        assert!(decoded >= 35);
    }

    #[test]
    fn decoder_waits_for_keyframe_after_bad_input() {
        let mut enc = OpenH264Encoder::new(VideoEncoderConfig::default()).unwrap();
        let mut dec = OpenH264Decoder::new().unwrap();
        let t = Instant::now();
        let frames: Vec<EncodedVideoFrame> = (0..6)
            .filter_map(|n| enc.encode(&picture(160, 96, n, t)).unwrap())
            .collect();
        // A predicted frame first: refused.
        assert!(matches!(
            dec.decode(&frames[1].data, t),
            Err(VideoError::NeedKeyframe)
        ));
        assert!(dec.decode(&frames[0].data, t).unwrap().is_some());
        assert!(!dec.needs_keyframe());
        // Garbage behind a start code, claiming to be a slice.
        let mut junk = vec![0, 0, 0, 1, 0x41];
        junk.extend((0..300u32).map(|i| (i * 37 % 251) as u8));
        let r = dec.decode(&junk, t);
        if r.is_err() {
            assert!(dec.needs_keyframe());
            assert!(matches!(
                dec.decode(&frames[2].data, t),
                Err(VideoError::NeedKeyframe)
            ));
        }
        enc.request_keyframe();
        let key = enc.encode(&picture(160, 96, 7, t)).unwrap().unwrap();
        assert!(key.keyframe);
        assert!(dec.decode(&key.data, t).unwrap().is_some());
    }

    /// Rates asked for before the first frame (the engine's first target, a frame rate
    /// the sender settled on) are taken with that frame's IDR, not held back by the restart
    /// policy to cost a second keyframe later.
    #[test]
    fn rates_asked_before_the_first_frame_cost_no_restart() {
        let mut enc = encoder_at(300_000);
        let t = Instant::now();
        enc.set_rates(200_000, 15.0);
        let keyframes: Vec<bool> = (0..40)
            .filter_map(|n| enc.encode(&picture(160, 96, n, t)).unwrap())
            .map(|f| f.keyframe)
            .collect();
        assert_eq!(enc.restarts(), 0);
        assert_eq!(
            (enc.config().bitrate_bps, enc.config().framerate),
            (200_000, 15.0)
        );
        assert_eq!(keyframes.iter().filter(|&&k| k).count(), 1, "{keyframes:?}");
        assert!(keyframes[0]);
    }

    #[test]
    fn rate_changes_restart_only_on_large_steps() {
        let mut enc = OpenH264Encoder::new(VideoEncoderConfig::default()).unwrap();
        let t = Instant::now();
        for n in 0..20 {
            enc.set_rates(760_000, 30.0); // 5 % lower: ignored
            enc.encode(&picture(160, 96, n, t)).unwrap();
        }
        assert_eq!(enc.restarts(), 0);
        enc.set_rates(300_000, 30.0);
        let f = enc.encode(&picture(160, 96, 21, t)).unwrap().unwrap();
        assert_eq!(enc.restarts(), 1);
        assert_eq!(enc.config().bitrate_bps, 300_000);
        assert!(f.keyframe, "a restart begins with an IDR");
        enc.set_rates(800_000, 30.0); // up again: held for 3 s of frames
        for n in 0..30 {
            enc.encode(&picture(160, 96, 22 + n, t)).unwrap();
        }
        assert_eq!(enc.restarts(), 1);
    }

    /// A new picture size (a ladder step) takes the wanted rates at once: OpenH264 starts
    /// over at the new size anyway. The restart policy's holds then count from that IDR, so a
    /// rate change right after the step does not cost a second keyframe at once.
    #[test]
    fn a_new_picture_size_takes_the_wanted_rates_in_its_one_keyframe() {
        let mut enc = encoder_at(200_000);
        let t = Instant::now();
        for n in 0..20 {
            enc.encode(&picture(160, 96, n, t)).unwrap();
        }
        enc.set_rates(900_000, 30.0); // a rise: held for 3 s at the same size
        enc.encode(&picture(160, 96, 20, t)).unwrap();
        assert_eq!(enc.config().bitrate_bps, 200_000);
        let f = enc.encode(&picture(320, 192, 21, t)).unwrap().unwrap();
        assert!(f.keyframe);
        assert_eq!(enc.config().bitrate_bps, 900_000);
        // A drop right after the step waits the policy's hold (0.5 s of frames) from the
        // step's keyframe, rather than restarting (a second keyframe) at once.
        enc.set_rates(400_000, 30.0);
        let keys: Vec<bool> = (22..36)
            .filter_map(|n| enc.encode(&picture(320, 192, n, t)).unwrap())
            .map(|f| f.keyframe)
            .collect();
        assert_eq!(enc.config().bitrate_bps, 900_000);
        assert!(keys.iter().all(|k| !k), "{keys:?}");
        let f = enc.encode(&picture(320, 192, 36, t)).unwrap().unwrap();
        assert!(f.keyframe);
        assert_eq!(enc.config().bitrate_bps, 400_000);
        // Above the skipping rate a step takes the wanted rates too, frame rate included.
        enc.set_rates(1_500_000, 20.0);
        let restarts = enc.restarts();
        let f = enc.encode(&picture(480, 288, 37, t)).unwrap().unwrap();
        assert!(f.keyframe);
        assert_eq!(
            (enc.config().bitrate_bps, enc.config().framerate),
            (1_500_000, 20.0)
        );
        assert_eq!(enc.restarts(), restarts + 1);
        let keys: Vec<bool> = (38..60)
            .filter_map(|n| enc.encode(&picture(480, 288, n, t)).unwrap())
            .map(|f| f.keyframe)
            .collect();
        assert!(keys.iter().all(|k| !k), "{keys:?}");
    }

    /// A step up below the skipping rate: the larger picture's IDR is most of a second of
    /// that budget, and OpenH264's rate control, left to skip, paid it back with the pictures
    /// after it. The step's encoder sends them all.
    #[test]
    fn a_step_up_below_the_skipping_rate_skips_no_picture_after_its_keyframe() {
        let mut enc = encoder_at(250_000);
        let t0 = Instant::now();
        let at = |n: u32| t0 + Duration::from_millis(u64::from(n) * 33);
        for n in 0..30 {
            enc.encode(&picture(320, 192, n, at(n))).unwrap();
        }
        let sent: Vec<bool> = (30..60)
            .map(|n| enc.encode(&picture(640, 384, n, at(n))).unwrap().is_some())
            .collect();
        assert!(sent.iter().all(|&s| s), "{sent:?}");
        // A drop restarts it with skipping again (the link may really be that thin).
        enc.set_rates(150_000, 30.0);
        let sent: Vec<bool> = (60..150)
            .map(|n| enc.encode(&picture(640, 384, n, at(n))).unwrap().is_some())
            .collect();
        assert!(sent.iter().any(|&s| !s), "{sent:?}");
    }

    /// Panning textured content with a moving object: hush's default makes one IDR (the
    /// first), not one per "scene change" OpenH264 believes it sees (each costs dB, see
    /// docs/benchmarks.md).
    #[test]
    fn default_settings_make_no_spurious_idrs_on_moving_content() {
        let (w, h) = (320u32, 180u32);
        let mut enc = encoder_at(400_000);
        let t0 = Instant::now();
        let mut idrs = 0;
        for n in 0..90u32 {
            let t = t0 + Duration::from_millis(u64::from(n) * 33);
            let mut f = I420Frame::filled(w, h, [0, 128, 128], t).unwrap();
            let [y, _, _] = f.planes_mut();
            let pan = f64::from(n) * 2.0;
            for r in 0..h {
                for c in 0..w {
                    let x = f64::from(c) + pan;
                    let yy = f64::from(r) + pan * 0.3;
                    let mut v = 110.0
                        + 40.0 * (x * 0.031).sin() * (yy * 0.023).cos()
                        + 14.0 * ((x * 0.35).sin() * (yy * 0.29).sin())
                        + 10.0 * ((x * 0.9).sin() * (yy * 0.8).sin());
                    let bx = f64::from(n * 4 % (w + 50)) - 50.0;
                    if f64::from(c) > bx && f64::from(c) < bx + 30.0 && (100..140).contains(&r) {
                        v = 40.0;
                    }
                    y[(r * w + c) as usize] = v as u8;
                }
            }
            if let Some(out) = enc.encode(&f).unwrap() {
                idrs += usize::from(out.keyframe);
            }
        }
        assert_eq!(idrs, 1);
    }

    /// The smallest NAL size limit the config accepts is one OpenH264 takes (it refuses less
    /// than a worst-case macroblock plus headers, 420 bytes, at the first encode).
    #[test]
    fn smallest_accepted_nal_size_encodes() {
        let t = Instant::now();
        let small = VideoEncoderConfig {
            max_nal_size: 420,
            ..Default::default()
        };
        let mut enc = OpenH264Encoder::new(small).unwrap();
        let out = enc.encode(&picture(160, 96, 0, t)).unwrap().unwrap();
        assert!(annexb_nal_units(&out.data).all(|n| n.len() <= 420));
        let too_small = VideoEncoderConfig {
            max_nal_size: 419,
            ..Default::default()
        };
        assert!(matches!(
            OpenH264Encoder::new(too_small),
            Err(VideoError::InvalidConfig(_))
        ));
    }
}

//! Video codecs: raw I420 pictures, the codec-neutral [`VideoEncoder`]/[`VideoDecoder`] traits,
//! H.264 Annex B helpers, the resolution/frame-rate adaptation [`ladder`], the render-time
//! scheduler of received pictures ([`playout`]), and (feature
//! `openh264`, on by default) the OpenH264 implementation.
//!
//! The engine moves encoded access units; it never needs to know which codec made them. An
//! application with a hardware codec (MediaCodec, VideoToolbox) implements the two traits on
//! it, or skips them and hands hush encoded H.264 access units in Annex B form directly.
//!
//! The default encoder is tuned for calls: rate control on bitrate, constrained baseline (no
//! B-frames, so no reordering delay), slices sized to fit one RTP packet, a periodic IDR as a
//! safety net, and a keyframe at once when [`VideoEncoder::request_keyframe`] is called
//! (a PLI or FIR from the receiver).

mod annexb;
pub mod ladder;
#[cfg(feature = "openh264")]
mod openh264;
pub mod playout;
mod restart;

pub use self::annexb::{
    annexb_nal_units, contains_idr, nal_type, sps_dimensions, NAL_FU_A, NAL_IDR, NAL_PPS, NAL_SEI,
    NAL_SLICE, NAL_SPS, NAL_STAP_A,
};
#[cfg(feature = "openh264")]
pub use self::openh264::{OpenH264Decoder, OpenH264Encoder, OpenH264Tuning};
pub use self::playout::{PlayoutStats, VideoPlayout};

use std::time::Duration;

use thiserror::Error;

use crate::time::Instant;

/// Smallest NAL size limit: OpenH264 refuses less than one worst-case macroblock (400 bytes)
/// plus 20 bytes of headers.
pub const MIN_NAL_SIZE: usize = 420;

/// Largest picture side the codecs accept (H.264 level 5.2 stops at 4096).
pub const MAX_DIMENSION: u32 = 4096;

/// Errors of the video codecs.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum VideoError {
    /// A raw picture is inconsistent (odd or zero size, planes shorter than their strides say).
    #[error("invalid I420 frame: {0}")]
    InvalidFrame(&'static str),
    /// An encoder setting is out of range.
    #[error("invalid encoder setting: {0}")]
    InvalidConfig(&'static str),
    /// The decoder lost its reference (an earlier frame failed or was skipped) and refuses
    /// frames until a keyframe arrives: ask the sender for one (PLI).
    #[error("decoder waits for a keyframe")]
    NeedKeyframe,
    /// An access unit from the network is not valid Annex B H.264.
    #[error("malformed access unit: {0}")]
    Malformed(&'static str),
    /// The codec library failed.
    #[error("{codec} failed")]
    Codec {
        /// Which codec.
        codec: &'static str,
        /// The library's own error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The video codecs hush can negotiate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum VideoCodec {
    /// H.264 constrained baseline, RTP payload format RFC 6184 packetization mode 1.
    H264,
}

/// A raw picture in I420 (planar YUV 4:2:0, 8 bit): a full-size Y plane, then U and V at half
/// width and half height, each plane row-major with its own stride.
#[derive(Clone, PartialEq, Eq)]
pub struct I420Frame {
    width: u32,
    height: u32,
    strides: [usize; 3],
    planes: [Vec<u8>; 3],
    /// When the picture was captured (sender) or is due to be shown (receiver).
    pub capture_time: Instant,
}

impl std::fmt::Debug for I420Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("I420Frame")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("strides", &self.strides)
            .field("capture_time", &self.capture_time)
            .finish_non_exhaustive()
    }
}

impl I420Frame {
    /// A picture from its three planes. `width` and `height` must be even, non-zero and at most
    /// [`MAX_DIMENSION`]; each stride at least its plane's width, and each plane at least
    /// `stride × rows` bytes (extra bytes are ignored).
    pub fn new(
        width: u32,
        height: u32,
        planes: [Vec<u8>; 3],
        strides: [usize; 3],
        capture_time: Instant,
    ) -> Result<Self, VideoError> {
        if width == 0 || height == 0 {
            return Err(VideoError::InvalidFrame("zero width or height"));
        }
        if !width.is_multiple_of(2) || !height.is_multiple_of(2) {
            return Err(VideoError::InvalidFrame("odd width or height"));
        }
        if width > MAX_DIMENSION || height > MAX_DIMENSION {
            return Err(VideoError::InvalidFrame("larger than 4096 pixels"));
        }
        let (w, h) = (width as usize, height as usize);
        let dims = [(w, h), (w / 2, h / 2), (w / 2, h / 2)];
        for ((&(pw, ph), &stride), plane) in dims.iter().zip(&strides).zip(&planes) {
            if stride < pw {
                return Err(VideoError::InvalidFrame(
                    "stride shorter than the plane's width",
                ));
            }
            let need = stride
                .checked_mul(ph)
                .ok_or(VideoError::InvalidFrame("stride too large"))?;
            if plane.len() < need {
                return Err(VideoError::InvalidFrame("plane shorter than stride × rows"));
            }
        }
        Ok(Self {
            width,
            height,
            strides,
            planes,
            capture_time,
        })
    }

    /// A tightly packed picture (strides equal to the plane widths) filled with `y`, `u`, `v`.
    pub fn filled(
        width: u32,
        height: u32,
        [y, u, v]: [u8; 3],
        capture_time: Instant,
    ) -> Result<Self, VideoError> {
        let (w, h) = (width as usize, height as usize);
        let c = (w / 2) * (h / 2);
        Self::new(
            width,
            height,
            [vec![y; w * h], vec![u; c], vec![v; c]],
            [w, w / 2, w / 2],
            capture_time,
        )
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Strides of the Y, U and V planes in bytes.
    pub fn strides(&self) -> [usize; 3] {
        self.strides
    }

    /// The Y (luma) plane.
    pub fn y(&self) -> &[u8] {
        &self.planes[0]
    }

    /// The U (Cb) plane.
    pub fn u(&self) -> &[u8] {
        &self.planes[1]
    }

    /// The V (Cr) plane.
    pub fn v(&self) -> &[u8] {
        &self.planes[2]
    }

    /// Mutable access to the three planes (Y, U, V), for writing a picture in place.
    pub fn planes_mut(&mut self) -> [&mut [u8]; 3] {
        let [y, u, v] = &mut self.planes;
        [y, u, v]
    }

    /// Row `row` of plane `plane` (0 = Y, 1 = U, 2 = V), without the stride padding; `None`
    /// out of range.
    pub fn row(&self, plane: usize, row: usize) -> Option<&[u8]> {
        let (w, h) = if plane == 0 {
            (self.width as usize, self.height as usize)
        } else {
            (self.width as usize / 2, self.height as usize / 2)
        };
        if row >= h {
            return None;
        }
        let stride = *self.strides.get(plane)?;
        self.planes.get(plane)?.get(row * stride..row * stride + w)
    }

    /// The picture with strides equal to the plane widths (a copy; `self` if already packed).
    pub fn to_packed(&self) -> Self {
        let (w, h) = (self.width as usize, self.height as usize);
        let dims = [(w, h), (w / 2, h / 2), (w / 2, h / 2)];
        let mut planes: [Vec<u8>; 3] = Default::default();
        for (p, &(pw, ph)) in dims.iter().enumerate() {
            let mut out = Vec::with_capacity(pw * ph);
            for r in 0..ph {
                out.extend_from_slice(self.row(p, r).unwrap_or(&[]));
            }
            planes[p] = out;
        }
        Self {
            width: self.width,
            height: self.height,
            strides: [w, w / 2, w / 2],
            planes,
            capture_time: self.capture_time,
        }
    }
}

impl I420Frame {
    /// The picture resized to `width` × `height` (even, non-zero, at most [`MAX_DIMENSION`])
    /// by averaging the source pixels each output pixel covers (a box filter: good for the
    /// downscaling a sender does when the ladder steps down; upscaling repeats pixels).
    /// Halving, the common case (simulcast layers, ladder rungs), takes a fast path with the
    /// same result. Keeps the capture time.
    pub fn scaled(&self, width: u32, height: u32) -> Result<Self, VideoError> {
        if (width, height) == (self.width, self.height) {
            return Ok(self.clone());
        }
        let mut out = Self::filled(width, height, [0, 128, 128], self.capture_time)?;
        for plane in 0..3 {
            let (sw, sh, dw, dh) = if plane == 0 {
                (self.width, self.height, width, height)
            } else {
                (self.width / 2, self.height / 2, width / 2, height / 2)
            };
            let (sw, sh, dw, dh) = (sw as usize, sh as usize, dw as usize, dh as usize);
            let stride = self.strides[plane];
            let src = &self.planes[plane];
            let dst = &mut out.planes[plane];
            if sw == dw * 2 && sh == dh * 2 {
                // Each output sample is the rounded mean of a 2×2 block.
                for (oy, out_row) in dst.chunks_exact_mut(dw.max(1)).enumerate().take(dh) {
                    let (Some(a), Some(b)) = (self.row(plane, 2 * oy), self.row(plane, 2 * oy + 1))
                    else {
                        continue;
                    };
                    let pairs = a.chunks_exact(2).zip(b.chunks_exact(2));
                    for (px, (a, b)) in out_row.iter_mut().zip(pairs) {
                        let sum =
                            u16::from(a[0]) + u16::from(a[1]) + u16::from(b[0]) + u16::from(b[1]);
                        *px = ((sum + 2) / 4) as u8;
                    }
                }
                continue;
            }
            for oy in 0..dh {
                let y0 = oy * sh / dh;
                let y1 = ((oy + 1) * sh / dh).max(y0 + 1).min(sh);
                for ox in 0..dw {
                    let x0 = ox * sw / dw;
                    let x1 = ((ox + 1) * sw / dw).max(x0 + 1).min(sw);
                    let mut sum = 0u32;
                    for y in y0..y1 {
                        let row = src.get(y * stride + x0..y * stride + x1).unwrap_or(&[]);
                        sum += row.iter().map(|&p| u32::from(p)).sum::<u32>();
                    }
                    let n = ((y1 - y0) * (x1 - x0)) as u32;
                    if let Some(px) = dst.get_mut(oy * dw + ox) {
                        *px = ((sum + n / 2) / n.max(1)) as u8;
                    }
                }
            }
        }
        Ok(out)
    }
}

/// One encoded picture: an H.264 access unit in Annex B form (NAL units each preceded by a
/// start code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedVideoFrame {
    /// The access unit, Annex B.
    pub data: Vec<u8>,
    /// Whether it can be decoded on its own (an IDR with its parameter sets).
    pub keyframe: bool,
    /// Picture width in pixels.
    pub width: u32,
    /// Picture height in pixels.
    pub height: u32,
    /// Capture time of the raw picture it was made from.
    pub capture_time: Instant,
}

/// Settings of a real-time video encoder.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoEncoderConfig {
    /// Target bitrate in bits per second.
    pub bitrate_bps: u32,
    /// Frame rate the source delivers (the rate control spreads the bitrate over it).
    pub framerate: f32,
    /// Largest NAL unit the encoder should produce, in bytes (at least [`MIN_NAL_SIZE`]):
    /// slices are cut to fit one RTP packet, so that a lost packet costs one slice and not a
    /// whole frame.
    pub max_nal_size: usize,
    /// Distance between periodic IDR frames, a safety net behind keyframe requests
    /// (`None`: only on request).
    pub keyframe_interval: Option<Duration>,
}

impl Default for VideoEncoderConfig {
    fn default() -> Self {
        Self {
            bitrate_bps: 800_000,
            framerate: 30.0,
            max_nal_size: 1100,
            keyframe_interval: Some(Duration::from_secs(10)),
        }
    }
}

impl VideoEncoderConfig {
    /// Checks the ranges the encoders rely on.
    pub fn validate(&self) -> Result<(), VideoError> {
        if !(10_000..=50_000_000).contains(&self.bitrate_bps) {
            return Err(VideoError::InvalidConfig(
                "bitrate must be 10 kbps to 50 Mbps",
            ));
        }
        if !(self.framerate.is_finite() && (1.0..=120.0).contains(&self.framerate)) {
            return Err(VideoError::InvalidConfig("frame rate must be 1 to 120"));
        }
        if !(MIN_NAL_SIZE..=65_000).contains(&self.max_nal_size) {
            return Err(VideoError::InvalidConfig(
                "max NAL size must be 420 to 65000 bytes",
            ));
        }
        Ok(())
    }
}

/// A real-time video encoder: raw pictures in, Annex B access units out.
///
/// Implementations must not block for long (they run on the media path) and must honour
/// [`request_keyframe`](Self::request_keyframe) on the very next frame.
pub trait VideoEncoder: Send {
    /// The codec of the produced stream.
    fn codec(&self) -> VideoCodec;

    /// Encodes one picture. `Ok(None)` when the rate control dropped the frame to hold the
    /// bitrate (the caller just moves on to the next picture).
    fn encode(&mut self, frame: &I420Frame) -> Result<Option<EncodedVideoFrame>, VideoError>;

    /// Makes the next encoded frame a keyframe (the receiver lost its reference or just joined).
    fn request_keyframe(&mut self);

    /// Changes the target bitrate and frame rate. An encoder may apply a change at its own
    /// pace (the OpenH264 one restarts and so sends a keyframe; it waits for a large enough
    /// change), but must never exceed the new bitrate for long.
    fn set_rates(&mut self, bitrate_bps: u32, framerate: f32);
}

/// A video decoder: Annex B access units in, raw pictures out.
///
/// Input comes from the network: malformed bytes give an error, never a panic. After an error
/// the decoder refuses predicted frames ([`VideoError::NeedKeyframe`]) until the next keyframe,
/// so that a corrupted picture is never shown.
pub trait VideoDecoder: Send {
    /// The codec it decodes.
    fn codec(&self) -> VideoCodec;

    /// Decodes one access unit; `capture_time` is carried over to the picture.
    /// `Ok(None)` when the unit produced no picture (parameter sets only).
    fn decode(
        &mut self,
        access_unit: &[u8],
        capture_time: Instant,
    ) -> Result<Option<I420Frame>, VideoError>;

    /// Whether the decoder waits for a keyframe (send a PLI until one arrives).
    fn needs_keyframe(&self) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_checks_sizes() {
        let t = Instant::now();
        assert!(I420Frame::filled(16, 16, [1, 2, 3], t).is_ok());
        assert!(matches!(
            I420Frame::filled(15, 16, [0; 3], t),
            Err(VideoError::InvalidFrame(_))
        ));
        assert!(matches!(
            I420Frame::filled(0, 16, [0; 3], t),
            Err(VideoError::InvalidFrame(_))
        ));
        let short = I420Frame::new(4, 4, [vec![0; 15], vec![0; 4], vec![0; 4]], [4, 2, 2], t);
        assert!(matches!(short, Err(VideoError::InvalidFrame(_))));
        let narrow = I420Frame::new(4, 4, [vec![0; 16], vec![0; 4], vec![0; 4]], [4, 1, 2], t);
        assert!(matches!(narrow, Err(VideoError::InvalidFrame(_))));
        let huge = I420Frame::new(
            4,
            4,
            [vec![0; 16], vec![0; 4], vec![0; 4]],
            [usize::MAX, 2, 2],
            t,
        );
        assert!(matches!(huge, Err(VideoError::InvalidFrame(_))));
    }

    #[test]
    fn packing_drops_stride_padding() {
        let t = Instant::now();
        let y: Vec<u8> = (0..6 * 2).map(|i| i as u8).collect(); // stride 6, width 4
        let f = I420Frame::new(4, 2, [y, vec![7; 3], vec![9; 3]], [6, 3, 3], t).unwrap();
        let p = f.to_packed();
        assert_eq!(p.strides(), [4, 2, 2]);
        assert_eq!(p.y(), &[0, 1, 2, 3, 6, 7, 8, 9]);
        assert_eq!(p.u(), &[7, 7]);
        assert_eq!(f.row(0, 2), None);
    }

    #[test]
    fn scaling_averages_and_keeps_flat_pictures_flat() {
        let t = Instant::now();
        let flat = I420Frame::filled(640, 360, [90, 100, 110], t).unwrap();
        let small = flat.scaled(320, 180).unwrap();
        assert_eq!((small.width(), small.height()), (320, 180));
        assert!(small.y().iter().all(|&p| p == 90));
        assert!(small.u().iter().all(|&p| p == 100) && small.v().iter().all(|&p| p == 110));
        // A 2x2 checkerboard of 0/200 halves to its mean; strides with padding are honoured.
        let y: Vec<u8> = (0..4 * 6)
            .map(|i| if (i % 6 + i / 6) % 2 == 0 { 200 } else { 0 })
            .collect();
        let f = I420Frame::new(4, 4, [y, vec![5; 4], vec![6; 4]], [6, 2, 2], t).unwrap();
        let h = f.scaled(2, 2).unwrap();
        assert_eq!(h.y(), &[100, 100, 100, 100]);
        assert!(f.scaled(3, 2).is_err());
    }

    #[test]
    fn scaling_averages_the_covered_samples() {
        let t = Instant::now();
        // A 4×4 luma with a left half of 10 and a right half of 30.
        let y = [10, 10, 30, 30].repeat(4);
        let f = I420Frame::new(4, 4, [y, vec![100; 4], vec![200; 4]], [4, 2, 2], t).unwrap();
        let half = f.scaled(2, 2).unwrap();
        assert_eq!(half.y(), &[10, 30, 10, 30]);
        assert_eq!(half.u(), &[100]);
        assert_eq!(half.v(), &[200]);
        // Not a halving: the general path, at the size asked for.
        let odd = f.scaled(2, 4).unwrap();
        assert_eq!((odd.width(), odd.height()), (2, 4));
        assert_eq!(&odd.y()[..2], &[10, 30]);
        // Upscaling repeats the nearest sample.
        let up = f.scaled(8, 8).unwrap();
        assert_eq!(&up.y()[..8], &[10, 10, 10, 10, 30, 30, 30, 30]);
    }

    #[test]
    fn halving_takes_the_fast_path_with_the_general_paths_result() {
        // The fast path must give what the box filter gives at 2:1: the rounded mean of each
        // 2×2 block, computed here from the source rows.
        let t = Instant::now();
        let y: Vec<u8> = (0..16 * 8).map(|i| (i * 37 % 251) as u8).collect();
        let u: Vec<u8> = (0..8 * 4).map(|i| (i * 53 % 241) as u8).collect();
        let f = I420Frame::new(16, 8, [y, u.clone(), u], [16, 8, 8], t).unwrap();
        let fast = f.scaled(8, 4).unwrap();
        for oy in 0..4usize {
            for ox in 0..8usize {
                let mut sum = 0u32;
                for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                    sum += u32::from(f.row(0, 2 * oy + dy).unwrap()[2 * ox + dx]);
                }
                assert_eq!(
                    u32::from(fast.y()[oy * 8 + ox]),
                    (sum + 2) / 4,
                    "({ox}, {oy})"
                );
            }
        }
    }

    #[test]
    fn config_ranges() {
        assert!(VideoEncoderConfig::default().validate().is_ok());
        let bad = VideoEncoderConfig {
            framerate: f32::NAN,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
        let bad = VideoEncoderConfig {
            max_nal_size: 10,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }
}

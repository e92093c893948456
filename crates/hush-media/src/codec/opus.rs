//! Opus on the pure-Rust `opus-pure` codec (no C toolchain or cmake needed).

use opus_pure::{Application, Bandwidth, OpusDecoder, OpusEncoder, Signal, MAX_PACKET_BYTES};

use super::Codec;
use crate::error::Error;

/// Below this target bitrate [`OpusCodec`] codes at most wideband (8 kHz of audio, SILK only).
///
/// Left to itself, Opus codes speech as hybrid super-wideband or fullband from about 14 kbps,
/// spending part of a small budget above 8 kHz. Wideband speech gets all of it: with the
/// audio benchmark's samples (`docs/benchmarks.md`, issue 17) bare Opus scored 3.31 WB-PESQ
/// at a 16 kbps target as hybrid fullband and 3.60 capped at wideband, 3.79 and 4.14 at
/// 24 kbps. The cap stops at this rate so calls with room for fullband (32 kbps on a fast
/// path) keep it.
pub const WIDEBAND_BELOW_BPS: u32 = 24_000;

/// Once capped at wideband, the encoder may code above it again only from this target, so a
/// rate that wavers around [`WIDEBAND_BELOW_BPS`] does not switch the coded band back and
/// forth.
pub const FULLBAND_FROM_BPS: u32 = 28_000;

/// The widest band Opus may code at `bps`, given the cap in force (`capped`): wideband below
/// [`WIDEBAND_BELOW_BPS`], fullband from [`FULLBAND_FROM_BPS`], unchanged in between.
fn wideband_cap(bps: u32, capped: bool) -> bool {
    if bps < WIDEBAND_BELOW_BPS {
        true
    } else if bps >= FULLBAND_FROM_BPS {
        false
    } else {
        capped
    }
}

/// Opus at 48 kHz with a fixed frame duration, on `opus-pure`.
///
/// Below [`WIDEBAND_BELOW_BPS`] the coded band is capped at wideband (see there).
pub struct OpusCodec {
    enc: OpusEncoder,
    dec: OpusDecoder,
    channels: usize,
    frame: usize,
    scratch: Vec<u8>,
    pcm: Vec<i16>,
}

impl std::fmt::Debug for OpusCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusCodec")
            .field("channels", &self.channels)
            .field("frame", &self.frame)
            .field("bitrate_bps", &self.enc.bitrate_bps)
            .field("inband_fec", &self.enc.use_inband_fec)
            .field("max_bandwidth", &self.enc.max_bandwidth)
            .finish_non_exhaustive()
    }
}

fn codec_err(e: opus_pure::Error) -> Error {
    Error::Codec(e.to_string())
}

impl OpusCodec {
    /// A VoIP-tuned Opus codec: `channels` (1 or 2), `frame_ms` (10, 20, 40 or 60), at
    /// `bitrate_bps`.
    pub fn new(channels: usize, frame_ms: u32, bitrate_bps: u32) -> Result<Self, Error> {
        if !matches!(frame_ms, 10 | 20 | 40 | 60) {
            return Err(Error::InvalidArgument(
                "Opus frame must be 10, 20, 40 or 60 ms",
            ));
        }
        let mut enc = OpusEncoder::new(48_000, channels, Application::Voip).map_err(codec_err)?;
        enc.bitrate_bps = bitrate_bps.min(510_000) as i32;
        if wideband_cap(bitrate_bps, false) {
            enc.max_bandwidth = Bandwidth::Wideband;
        }
        // Calls carry speech: without the hint the encoder may take a harmonic voice for music
        // and code it as CELT, which has no in-band FEC.
        enc.signal_type = Some(Signal::Voice);
        let dec = OpusDecoder::new(48_000, channels).map_err(codec_err)?;
        Ok(Self {
            enc,
            dec,
            channels,
            frame: 48 * frame_ms as usize,
            scratch: vec![0; MAX_PACKET_BYTES],
            pcm: Vec::new(),
        })
    }

    fn decode_into(
        &mut self,
        out: &mut Vec<i16>,
        f: impl FnOnce(&mut OpusDecoder, usize, &mut [i16]) -> opus_pure::Result<usize>,
    ) -> Result<usize, Error> {
        self.pcm.resize(self.frame * self.channels, 0);
        let n = f(&mut self.dec, self.frame, &mut self.pcm).map_err(codec_err)?;
        let samples = (n * self.channels).min(self.pcm.len());
        out.extend_from_slice(&self.pcm[..samples]);
        Ok(samples)
    }
}

impl Codec for OpusCodec {
    type Sample = i16;

    fn clock_rate(&self) -> u32 {
        48_000
    }

    fn frame_samples(&self) -> usize {
        self.frame * self.channels
    }

    fn encode(&mut self, input: &[i16], out: &mut Vec<u8>) -> Result<(), Error> {
        if input.len() != self.frame * self.channels {
            return Err(Error::InvalidArgument("input is not one frame"));
        }
        let n = self
            .enc
            .encode_s16(input, self.frame, &mut self.scratch)
            .map_err(codec_err)?;
        out.extend_from_slice(&self.scratch[..n]);
        Ok(())
    }

    fn decode(&mut self, packet: &[u8], out: &mut Vec<i16>) -> Result<usize, Error> {
        if packet.is_empty() {
            // An empty packet means PLC to opus-pure; keep that an explicit `conceal` call.
            return Err(Error::Codec("empty Opus packet".into()));
        }
        self.decode_into(out, |d, frame, pcm| d.decode_s16(packet, frame, pcm))
    }

    fn decode_fec(&mut self, next_packet: &[u8], out: &mut Vec<i16>) -> Result<usize, Error> {
        if next_packet.is_empty() {
            return self.conceal(out);
        }
        self.decode_into(out, |d, frame, pcm| {
            d.decode_fec_s16(next_packet, frame, pcm)
        })
    }

    fn conceal(&mut self, out: &mut Vec<i16>) -> Result<usize, Error> {
        self.decode_into(out, |d, frame, pcm| d.decode_s16(&[], frame, pcm))
    }

    fn set_bitrate(&mut self, bps: u32) {
        self.enc.bitrate_bps = bps.clamp(6_000, 510_000) as i32;
        let capped = self.enc.max_bandwidth == Bandwidth::Wideband;
        let cap = wideband_cap(bps, capped);
        if cap != capped {
            tracing::debug!(bps, wideband_only = cap, "Opus coded band");
            self.enc.max_bandwidth = if cap {
                Bandwidth::Wideband
            } else {
                Bandwidth::Fullband
            };
        }
    }

    fn set_fec(&mut self, enabled: bool, expected_loss_percent: u8) {
        self.enc.use_inband_fec = enabled;
        self.enc.packet_loss_perc = i32::from(expected_loss_percent.min(100));
    }
}

/// Whether an Opus packet carries in-band FEC (LBRR data) for the frame before it, so that
/// decoding its FEC rebuilds that frame instead of concealing it. Reads the SILK header bits
/// the way libopus's `opus_packet_has_lbrr` does: the LBRR flag follows the voice-activity
/// flags at the start of the first frame. CELT-only packets never carry it. Packets that
/// hold several frames of unequal size (codes 2 and 3) are reported as having none.
pub fn has_inband_fec(packet: &[u8]) -> bool {
    let (Some(&toc), Some(&first)) = (packet.first(), packet.get(1)) else {
        return false;
    };
    let config = usize::from(toc >> 3);
    if config >= 16 || toc & 0x3 >= 2 {
        return false;
    }
    // SILK-only configs 0..=11 cycle 10/20/40/60 ms; hybrid 12..=15 cycle 10/20 ms. A SILK
    // frame is 20 ms, so 40 and 60 ms packets hold two and three of them, each with a VAD bit.
    let frame_ms = if config < 12 {
        [10, 20, 40, 60][config % 4]
    } else {
        [10, 20][config % 2]
    };
    let silk_frames = (frame_ms / 20).max(1);
    let mid = (first >> (7 - silk_frames)) & 1 == 1;
    let stereo = toc & 0x4 != 0;
    let side = stereo && (first >> (6 - 2 * silk_frames)) & 1 == 1;
    mid || side
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A voiced, speech-like test signal: harmonics of a gliding pitch with a syllable envelope.
    pub(crate) fn speech(frames: usize, frame: usize) -> Vec<i16> {
        (0..frames * frame)
            .map(|i| crate::sim::call::voiced_sample(i as f64 / 48_000.0))
            .collect()
    }

    fn energy(x: &[i16]) -> f64 {
        x.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / x.len().max(1) as f64
    }

    #[test]
    fn encode_decode_fec_and_conceal() {
        let mut c = OpusCodec::new(1, 20, 24_000).unwrap();
        c.set_fec(true, 20);
        let pcm = speech(50, 960);
        let packets: Vec<Vec<u8>> = pcm
            .chunks(960)
            .map(|f| {
                let mut out = Vec::new();
                c.encode(f, &mut out).unwrap();
                out
            })
            .collect();
        let mean_len = packets.iter().map(Vec::len).sum::<usize>() / packets.len();
        assert!((30..120).contains(&mean_len), "{mean_len} bytes at 24 kbps");
        let mut d = OpusCodec::new(1, 20, 24_000).unwrap();
        let mut out = Vec::new();
        for (i, p) in packets.iter().enumerate() {
            let n = match i {
                30 => d.decode_fec(&packets[31], &mut out).unwrap(),
                40 => d.conceal(&mut out).unwrap(),
                _ => d.decode(p, &mut out).unwrap(),
            };
            assert_eq!(n, 960);
        }
        assert_eq!(out.len(), 50 * 960);
        // The FEC-rebuilt frame carries real signal, not silence.
        assert!(energy(&out[30 * 960..31 * 960]) > 0.1 * energy(&out[29 * 960..30 * 960]));
    }

    #[test]
    fn inband_fec_flag_follows_the_encoder() {
        let pcm = speech(50, 960);
        let encode_all = |fec: bool| {
            let mut c = OpusCodec::new(1, 20, 24_000).unwrap();
            c.set_fec(fec, if fec { 10 } else { 0 });
            pcm.chunks(960)
                .map(|f| {
                    let mut out = Vec::new();
                    c.encode(f, &mut out).unwrap();
                    has_inband_fec(&out)
                })
                .filter(|&lbrr| lbrr)
                .count()
        };
        assert_eq!(encode_all(false), 0);
        // Voiced frames carry LBRR; the synthetic voice's quiet dips do not.
        assert!(encode_all(true) >= 30, "{}", encode_all(true));
        assert!(!has_inband_fec(&[]) && !has_inband_fec(&[0x08]));
        // A CELT-only TOC (config 31) never carries it, whatever follows.
        assert!(!has_inband_fec(&[31 << 3, 0xff]));
    }

    #[test]
    fn inband_fec_flag_agrees_with_the_decoder() {
        // Decoding the FEC of a packet without LBRR is plain concealment; with LBRR it is not.
        let mut c = OpusCodec::new(1, 20, 24_000).unwrap();
        c.set_fec(true, 10);
        let packets: Vec<Vec<u8>> = speech(40, 960)
            .chunks(960)
            .map(|f| {
                let mut out = Vec::new();
                c.encode(f, &mut out).unwrap();
                out
            })
            .collect();
        let (mut with, mut without) = (0, 0);
        for k in 5..39 {
            // Two decoders in the same state.
            let warmed = || {
                let mut d = OpusCodec::new(1, 20, 24_000).unwrap();
                let mut warm = Vec::new();
                for p in &packets[..k] {
                    d.decode(p, &mut warm).unwrap();
                }
                d
            };
            let (mut d, mut plc) = (warmed(), warmed());
            let (mut a, mut b) = (Vec::new(), Vec::new());
            d.decode_fec(&packets[k + 1], &mut a).unwrap();
            plc.conceal(&mut b).unwrap();
            let lbrr = has_inband_fec(&packets[k + 1]);
            assert_eq!(a != b, lbrr, "packet {}", k + 1);
            if lbrr {
                with += 1;
            } else {
                without += 1;
            }
        }
        assert!(with > 0 && without > 0, "{with} {without}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut d = OpusCodec::new(1, 20, 24_000).unwrap();
        let mut out = Vec::new();
        assert!(d.decode(&[], &mut out).is_err());
        for b in 0..=255u8 {
            let _ = d.decode(&[b, 0xff, 0xff, 0xff], &mut out);
            let _ = d.decode_fec(&[b, 3, 0xff], &mut out);
        }
        assert!(OpusCodec::new(1, 25, 24_000).is_err());
        let mut e = OpusCodec::new(1, 20, 24_000).unwrap();
        assert!(e.encode(&[0; 100], &mut Vec::new()).is_err());
    }

    /// Speech-like signal with content above 8 kHz (voiced harmonics plus a little
    /// pseudo-random noise), so that the encoder has a reason to code above wideband.
    fn broadband(frames: usize) -> Vec<i16> {
        let mut x: u32 = 1;
        speech(frames, 960)
            .into_iter()
            .map(|s| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                s.saturating_add(((x >> 16) as i16) / 24)
            })
            .collect()
    }

    /// Whether each packet's TOC codes above wideband (hybrid or CELT super-wide/fullband).
    fn above_wideband(codec: &mut OpusCodec, pcm: &[i16]) -> usize {
        pcm.chunks(960)
            .filter(|f| {
                let mut out = Vec::new();
                codec.encode(f, &mut out).unwrap();
                let config = out[0] >> 3;
                (12..16).contains(&config) || config >= 24
            })
            .count()
    }

    #[test]
    fn low_bitrates_code_wideband_only() {
        let pcm = broadband(50);
        // Uncapped, Opus codes this signal above wideband at 16 kbps...
        let mut raw = OpusEncoder::new(48_000, 1, Application::Voip).unwrap();
        raw.bitrate_bps = 16_000;
        raw.signal_type = Some(Signal::Voice);
        let mut buf = vec![0; MAX_PACKET_BYTES];
        let raw_wide = pcm
            .chunks(960)
            .filter(|f| {
                raw.encode_s16(f, 960, &mut buf).unwrap();
                (12..16).contains(&(buf[0] >> 3))
            })
            .count();
        assert!(raw_wide > 40, "{raw_wide} of 50 above wideband uncapped");
        // ...the codec does not.
        let mut c = OpusCodec::new(1, 20, 16_000).unwrap();
        assert_eq!(above_wideband(&mut c, &pcm), 0);
        // From 28 kbps it may again; between 24 and 28 kbps it keeps what it had.
        c.set_bitrate(32_000);
        assert!(above_wideband(&mut c, &pcm) > 40);
        c.set_bitrate(26_000);
        assert!(above_wideband(&mut c, &pcm) > 40);
        c.set_bitrate(20_000);
        assert_eq!(above_wideband(&mut c, &pcm), 0);
        c.set_bitrate(26_000);
        assert_eq!(above_wideband(&mut c, &pcm), 0);
    }
}

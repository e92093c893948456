//! Opus on libopus (the `opus` crate), behind the `libopus` feature, for interop tests.

use opus::{Application, Bitrate, Channels, Decoder, Encoder, Signal};

use super::Codec;
use crate::error::Error;

/// Opus at 48 kHz with a fixed frame duration, on the reference libopus.
pub struct LibOpusCodec {
    enc: Encoder,
    dec: Decoder,
    channels: usize,
    frame: usize,
    scratch: Vec<u8>,
    pcm: Vec<i16>,
}

impl std::fmt::Debug for LibOpusCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibOpusCodec")
            .field("channels", &self.channels)
            .field("frame", &self.frame)
            .finish_non_exhaustive()
    }
}

fn codec_err(e: opus::Error) -> Error {
    Error::Codec(e.to_string())
}

impl LibOpusCodec {
    /// A VoIP-tuned libopus codec: `channels` (1 or 2), `frame_ms`, at `bitrate_bps`.
    pub fn new(channels: usize, frame_ms: u32, bitrate_bps: u32) -> Result<Self, Error> {
        let ch = match channels {
            1 => Channels::Mono,
            2 => Channels::Stereo,
            _ => return Err(Error::InvalidArgument("Opus takes 1 or 2 channels")),
        };
        if !matches!(frame_ms, 10 | 20 | 40 | 60) {
            return Err(Error::InvalidArgument(
                "Opus frame must be 10, 20, 40 or 60 ms",
            ));
        }
        let mut enc = Encoder::new(48_000, ch, Application::Voip).map_err(codec_err)?;
        enc.set_bitrate(Bitrate::Bits(bitrate_bps.min(510_000) as i32))
            .map_err(codec_err)?;
        // Speech, as for the pure-Rust adapter: keeps SILK (and its in-band FEC) in use.
        enc.set_signal(Signal::Voice).map_err(codec_err)?;
        let dec = Decoder::new(48_000, ch).map_err(codec_err)?;
        Ok(Self {
            enc,
            dec,
            channels,
            frame: 48 * frame_ms as usize,
            scratch: vec![0; 4000],
            pcm: Vec::new(),
        })
    }

    fn decode_into(
        &mut self,
        packet: &[u8],
        fec: bool,
        out: &mut Vec<i16>,
    ) -> Result<usize, Error> {
        self.pcm.resize(self.frame * self.channels, 0);
        let n = self
            .dec
            .decode(packet, &mut self.pcm, fec)
            .map_err(codec_err)?;
        let samples = (n * self.channels).min(self.pcm.len());
        out.extend_from_slice(&self.pcm[..samples]);
        Ok(samples)
    }
}

impl Codec for LibOpusCodec {
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
            .encode(input, &mut self.scratch)
            .map_err(codec_err)?;
        out.extend_from_slice(&self.scratch[..n]);
        Ok(())
    }

    fn decode(&mut self, packet: &[u8], out: &mut Vec<i16>) -> Result<usize, Error> {
        if packet.is_empty() {
            return Err(Error::Codec("empty Opus packet".into()));
        }
        self.decode_into(packet, false, out)
    }

    fn decode_fec(&mut self, next_packet: &[u8], out: &mut Vec<i16>) -> Result<usize, Error> {
        if next_packet.is_empty() {
            return self.conceal(out);
        }
        self.decode_into(next_packet, true, out)
    }

    fn conceal(&mut self, out: &mut Vec<i16>) -> Result<usize, Error> {
        self.decode_into(&[], false, out)
    }

    fn set_bitrate(&mut self, bps: u32) {
        let _ = self
            .enc
            .set_bitrate(Bitrate::Bits(bps.clamp(6_000, 510_000) as i32));
    }

    fn set_fec(&mut self, enabled: bool, expected_loss_percent: u8) {
        let _ = self.enc.set_inband_fec(enabled);
        let _ = self
            .enc
            .set_packet_loss_perc(i32::from(expected_loss_percent.min(100)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::opus::tests::speech;
    use crate::codec::OpusCodec;

    fn encode_all(c: &mut dyn Codec<Sample = i16>, pcm: &[i16]) -> Vec<Vec<u8>> {
        pcm.chunks(960)
            .map(|f| {
                let mut out = Vec::new();
                c.encode(f, &mut out).unwrap();
                out
            })
            .collect()
    }

    fn decode_all(c: &mut dyn Codec<Sample = i16>, packets: &[Vec<u8>], lost: usize) -> Vec<i16> {
        let mut out = Vec::new();
        for (i, p) in packets.iter().enumerate() {
            let n = if i == lost {
                c.decode_fec(&packets[i + 1], &mut out).unwrap()
            } else {
                c.decode(p, &mut out).unwrap()
            };
            assert_eq!(n, 960);
        }
        out
    }

    fn snr_db(reference: &[i16], test: &[i16]) -> f64 {
        let sig: f64 = reference.iter().map(|&s| f64::from(s).powi(2)).sum();
        let err: f64 = reference
            .iter()
            .zip(test)
            .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
            .sum();
        10.0 * (sig / err.max(1.0)).log10()
    }

    /// Each side decodes the other's packets, one frame rebuilt from in-band FEC, and gets
    /// the same audio (to float rounding) as the encoder's own implementation does.
    #[test]
    fn opus_pure_and_libopus_interoperate_with_fec() {
        if !hush_testkit::system_component("libopus (cmake build)", true) {
            return;
        }
        let pcm = speech(60, 960);
        for (enc_is_lib, name) in [
            (true, "libopus → opus-pure"),
            (false, "opus-pure → libopus"),
        ] {
            let mut enc: Box<dyn Codec<Sample = i16>> = if enc_is_lib {
                Box::new(LibOpusCodec::new(1, 20, 24_000).unwrap())
            } else {
                Box::new(OpusCodec::new(1, 20, 24_000).unwrap())
            };
            enc.set_fec(true, 20);
            let packets = encode_all(enc.as_mut(), &pcm);
            let mut pure = OpusCodec::new(1, 20, 24_000).unwrap();
            let mut lib = LibOpusCodec::new(1, 20, 24_000).unwrap();
            let a = decode_all(&mut pure, &packets, 30);
            let b = decode_all(&mut lib, &packets, 30);
            // Both decoders agree, FEC frame included.
            let agreement = snr_db(&b, &a);
            assert!(
                agreement > 40.0,
                "{name}: decoders differ, SNR {agreement:.1} dB"
            );
            let fec_frame = &a[30 * 960..31 * 960];
            assert!(
                fec_frame.iter().any(|&s| s.unsigned_abs() > 500),
                "{name}: FEC frame is silent"
            );
        }
    }
}

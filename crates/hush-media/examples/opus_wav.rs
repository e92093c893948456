//! Bare Opus, no network: encodes a WAV with the [`OpusCodec`] the calls use (VoIP, voice
//! signal, 20 ms frames) at a fixed bitrate, decodes it and writes the result. The reference of
//! the audio quality benchmark (`benches/audio-quality.sh`): what the codec alone does to the
//! speech at the bitrate a call used.
//!
//! ```text
//! cargo run -p hush-media --example opus_wav -- IN.wav OUT.wav BITRATE_BPS [FEC_LOSS_PERCENT]
//! ```
//!
//! Input and output are 48 kHz mono 16-bit WAV. With `FEC_LOSS_PERCENT`, in-band FEC is on and
//! told to protect against that loss (nothing is lost: it shows what the FEC bits cost). The
//! JSON line printed also counts the packets by the band Opus coded (wideband or narrower,
//! super-wideband, fullband).

use std::process::ExitCode;

use hush_media::codec::{Codec, OpusCodec};

type Failure = Box<dyn std::error::Error>;

fn run() -> Result<(), Failure> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output, bitrate, rest @ ..] = args.as_slice() else {
        return Err("usage: opus_wav IN.wav OUT.wav BITRATE_BPS [FEC_LOSS_PERCENT]".into());
    };
    let bitrate: u32 = bitrate.parse()?;
    let fec: Option<u8> = rest.first().map(|s| s.parse()).transpose()?;
    let mut reader = hound::WavReader::open(input)?;
    let spec = reader.spec();
    if spec.sample_rate != 48_000 || spec.channels != 1 || spec.bits_per_sample != 16 {
        return Err(format!("{input}: need 48 kHz mono 16-bit PCM").into());
    }
    let pcm: Vec<i16> = reader.samples::<i16>().collect::<Result<_, _>>()?;
    let mut codec = OpusCodec::new(1, 20, bitrate)?;
    if let Some(loss) = fec {
        codec.set_fec(true, loss);
    }
    let mut decoded = Vec::with_capacity(pcm.len() + 960);
    let (mut bytes, mut frames) = (0usize, 0usize);
    // Packets by coded band (from the TOC byte): wideband or narrower, super-wideband, fullband.
    let mut bands = [0usize; 3];
    for chunk in pcm.chunks(960) {
        let mut frame = chunk.to_vec();
        frame.resize(960, 0);
        let mut packet = Vec::new();
        codec.encode(&frame, &mut packet)?;
        bytes += packet.len();
        if let Some(&toc) = packet.first() {
            bands[coded_band(toc)] += 1;
        }
        frames += 1;
        codec.decode(&packet, &mut decoded)?;
    }
    let mut writer = hound::WavWriter::create(output, spec)?;
    for &s in &decoded {
        writer.write_sample(s)?;
    }
    writer.finalize()?;
    println!(
        "{{\"frames\":{frames},\"audio_kbps\":{:.1},\"packets_wb\":{},\"packets_swb\":{},\"packets_fb\":{}}}",
        bytes as f64 * 8.0 / (frames.max(1) as f64 * 20.0),
        bands[0],
        bands[1],
        bands[2]
    );
    Ok(())
}

/// The band an Opus packet codes (RFC 6716 §3.1): 0 for wideband or narrower, 1 for
/// super-wideband, 2 for fullband.
fn coded_band(toc: u8) -> usize {
    match toc >> 3 {
        0..=11 | 16..=23 => 0,
        12 | 13 | 24..=27 => 1,
        _ => 2,
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("opus_wav: {e}");
            ExitCode::FAILURE
        }
    }
}

//! The [`Codec`] trait and its Opus adapters.
//!
//! The engine itself never encodes or decodes: it moves encoded frames. The application (or
//! the `hush` facade) runs a [`Codec`] on each side, feeding it what
//! [`Playout`](crate::jitter::Playout) says: decode a frame, decode the next frame's in-band
//! FEC, or conceal.

pub mod frames;
#[cfg(feature = "libopus")]
mod libopus;
mod opus;

#[cfg(feature = "libopus")]
pub use self::libopus::LibOpusCodec;
pub use self::opus::{has_inband_fec, OpusCodec, FULLBAND_FROM_BPS, WIDEBAND_BELOW_BPS};

use crate::error::Error;

/// An encoder/decoder pair for one media stream.
///
/// Raw media is a slice of [`Sample`](Self::Sample)s: interleaved `i16` PCM for audio; a video
/// codec would use bytes of a raw picture. Every method that handles bytes from the network
/// must return an error, never panic, on malformed input.
pub trait Codec {
    /// The raw sample type.
    type Sample: Copy + Default;

    /// RTP clock rate of the encoded stream.
    fn clock_rate(&self) -> u32;

    /// Raw samples (all channels) in one frame.
    fn frame_samples(&self) -> usize;

    /// Encodes one frame of raw media, appending the encoded frame to `out`.
    fn encode(&mut self, input: &[Self::Sample], out: &mut Vec<u8>) -> Result<(), Error>;

    /// Decodes one encoded frame, appending raw media to `out`. Returns the samples added.
    fn decode(&mut self, packet: &[u8], out: &mut Vec<Self::Sample>) -> Result<usize, Error>;

    /// Rebuilds the frame *before* `next_packet` from its in-band FEC, appending to `out`;
    /// falls back to concealment if the packet has none.
    fn decode_fec(
        &mut self,
        next_packet: &[u8],
        out: &mut Vec<Self::Sample>,
    ) -> Result<usize, Error>;

    /// Produces one frame of packet-loss concealment, appending to `out`.
    fn conceal(&mut self, out: &mut Vec<Self::Sample>) -> Result<usize, Error>;

    /// Sets the target bitrate of the encoder, in bits per second.
    fn set_bitrate(&mut self, bps: u32);

    /// Turns in-band FEC on or off, telling the encoder the loss rate to protect against.
    fn set_fec(&mut self, enabled: bool, expected_loss_percent: u8);
}

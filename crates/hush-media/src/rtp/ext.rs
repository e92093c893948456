//! Typed header extensions: audio level (RFC 6464) and transport-wide sequence numbers
//! (draft-holmer-rmcat-transport-wide-cc-extensions-01 §2).

use super::packet::RtpHeader;

/// Local extension identifiers, as negotiated with the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtensionIds {
    /// Id of `urn:ietf:params:rtp-hdrext:ssrc-audio-level`, or `None` to not send it.
    pub audio_level: Option<u8>,
    /// Id of the transport-wide sequence number extension, or `None` to not send it.
    pub transport_cc: Option<u8>,
}

impl Default for ExtensionIds {
    /// The ids WebRTC stacks commonly use: audio level 1, transport-wide CC 3.
    fn default() -> Self {
        Self {
            audio_level: Some(1),
            transport_cc: Some(3),
        }
    }
}

/// RFC 6464 audio level: the level in -dBov (0 loudest, 127 silence) and the voice-activity flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioLevel {
    /// Voice activity detected.
    pub voice: bool,
    /// Level in -dBov, 0..=127.
    pub level: u8,
}

impl AudioLevel {
    /// Encodes the one-byte form.
    pub fn to_byte(self) -> u8 {
        (if self.voice { 0x80 } else { 0 }) | self.level.min(127)
    }

    /// Decodes the one-byte form.
    pub fn from_byte(b: u8) -> Self {
        Self {
            voice: b & 0x80 != 0,
            level: b & 0x7f,
        }
    }
}

impl RtpHeader {
    /// The audio level extension, if present under `id` and well formed.
    pub fn audio_level(&self, id: u8) -> Option<AudioLevel> {
        match self.extension(id)? {
            [b, ..] => Some(AudioLevel::from_byte(*b)),
            [] => None,
        }
    }

    /// Sets the audio level extension under `id`.
    pub fn set_audio_level(&mut self, id: u8, level: AudioLevel) {
        self.set_extension(id, vec![level.to_byte()]);
    }

    /// The transport-wide sequence number, if present under `id` and well formed.
    pub fn transport_seq(&self, id: u8) -> Option<u16> {
        match self.extension(id)? {
            [a, b, ..] => Some(u16::from_be_bytes([*a, *b])),
            _ => None,
        }
    }

    /// Sets the transport-wide sequence number under `id`.
    pub fn set_transport_seq(&mut self, id: u8, seq: u16) {
        self.set_extension(id, seq.to_be_bytes().to_vec());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::RtpPacket;

    #[test]
    fn audio_level_and_twcc_round_trip() {
        let mut p = RtpPacket::default();
        p.header.set_audio_level(
            1,
            AudioLevel {
                voice: true,
                level: 30,
            },
        );
        p.header.set_transport_seq(3, 0xABCD);
        let q = RtpPacket::parse(&p.to_vec()).unwrap();
        assert_eq!(
            q.header.audio_level(1),
            Some(AudioLevel {
                voice: true,
                level: 30
            })
        );
        assert_eq!(q.header.transport_seq(3), Some(0xABCD));
        assert_eq!(q.header.transport_seq(4), None);
    }

    #[test]
    fn short_extension_data_is_ignored() {
        let mut p = RtpPacket::default();
        p.header.set_extension(3, vec![1]);
        assert_eq!(p.header.transport_seq(3), None);
    }
}

//! STUN and TURN ChannelData over a byte stream (TURN over TCP or TLS, RFC 8656 §12.5 /
//! RFC 5766 §11.5).
//!
//! Over UDP every datagram is one message. Over TCP or TLS the messages are concatenated on the
//! stream, and each tells its own length in its header:
//!
//! | first two bits | message | length |
//! |---|---|---|
//! | `00` | STUN | 20-byte header + the 16-bit length at offset 2 (a multiple of 4) |
//! | `01` | ChannelData | 4-byte header + the 16-bit length at offset 2, **padded to a multiple of 4** |
//!
//! Anything else cannot be resynchronized: the stream is broken and must be closed.
//!
//! [`StreamDecoder`] cuts received bytes into messages; [`frame_for_stream`] makes sure an
//! outgoing ChannelData message carries its padding. Both look at untrusted bytes only through
//! checked accessors: no input makes them panic, and the decoder never holds more than one
//! partial message plus the last chunk pushed.

use std::borrow::Cow;

/// STUN header length.
const STUN_HEADER: usize = 20;
/// ChannelData header length.
const CHANNEL_HEADER: usize = 4;

/// Why a stream cannot be decoded further. The connection must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FramingError {
    /// The next message starts with a byte that is neither STUN (`0b00`) nor ChannelData
    /// (`0b01`).
    #[error("stream carries a message of unknown type (first byte {0:#04x})")]
    UnknownMessage(u8),
    /// A STUN message whose length is not a multiple of 4 (RFC 8489 §5).
    #[error("STUN message length {0} is not a multiple of 4")]
    BadStunLength(u16),
    /// A ChannelData message with a channel number outside 0x4000–0x4FFF.
    #[error("ChannelData with invalid channel number {0:#06x}")]
    BadChannel(u16),
}

/// The total length on the stream of the message whose header starts `buf` (padding included),
/// `Ok(None)` when `buf` does not yet hold the whole header.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, FramingError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    match first >> 6 {
        0b00 => {
            let Some(h) = buf.get(..4) else {
                return Ok(None);
            };
            let len = u16::from_be_bytes([h[2], h[3]]);
            if len % 4 != 0 {
                return Err(FramingError::BadStunLength(len));
            }
            Ok(Some(STUN_HEADER + usize::from(len)))
        }
        0b01 => {
            let Some(h) = buf.get(..CHANNEL_HEADER) else {
                return Ok(None);
            };
            let channel = u16::from_be_bytes([h[0], h[1]]);
            if !(0x4000..=0x4FFF).contains(&channel) {
                return Err(FramingError::BadChannel(channel));
            }
            let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
            Ok(Some(CHANNEL_HEADER + len.next_multiple_of(4)))
        }
        _ => Err(FramingError::UnknownMessage(first)),
    }
}

/// Cuts a received byte stream into STUN and ChannelData messages.
///
/// Push bytes as they arrive with [`push`](Self::push), then take messages with
/// [`next_message`](Self::next_message) until it returns `Ok(None)`. After an error the
/// decoder stays failed (the stream has lost its framing).
#[derive(Debug, Default)]
pub struct StreamDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out (compacted lazily).
    start: usize,
    failed: Option<FramingError>,
}

impl StreamDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message (ChannelData with its padding), `Ok(None)` if more bytes are
    /// needed.
    pub fn next_message(&mut self) -> Result<Option<Vec<u8>>, FramingError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let rest = self.buf.get(self.start..).unwrap_or_default();
        let len = match frame_len(rest) {
            Ok(Some(len)) => len,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.failed = Some(e);
                self.buf = Vec::new();
                self.start = 0;
                return Err(e);
            }
        };
        let Some(msg) = rest.get(..len) else {
            return Ok(None);
        };
        let msg = msg.to_vec();
        self.start += len;
        Ok(Some(msg))
    }

    /// Bytes received but not yet returned as a message.
    pub fn buffered(&self) -> usize {
        self.buf.len().saturating_sub(self.start)
    }
}

/// The bytes to write on a stream for one outgoing message: a ChannelData message gets zero
/// padding up to a multiple of 4 bytes if it lacks it (mandatory over TCP, RFC 5766 §11.5);
/// anything else is written as is.
pub fn frame_for_stream(msg: &[u8]) -> Cow<'_, [u8]> {
    let Some(h) = msg.get(..CHANNEL_HEADER) else {
        return Cow::Borrowed(msg);
    };
    if h[0] >> 6 != 0b01 {
        return Cow::Borrowed(msg);
    }
    let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
    let want = CHANNEL_HEADER + len.next_multiple_of(4);
    if msg.len() >= want {
        return Cow::Borrowed(msg.get(..want).unwrap_or(msg));
    }
    let mut v = msg.to_vec();
    v.resize(want, 0);
    Cow::Owned(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stun(len: u16) -> Vec<u8> {
        let mut m = vec![0x01, 0x01];
        m.extend_from_slice(&len.to_be_bytes());
        m.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        m.extend_from_slice(&[9; 12]);
        m.resize(20 + usize::from(len), 0xEE);
        m
    }

    fn chan(payload: &[u8]) -> Vec<u8> {
        let mut m = vec![0x40, 0x01];
        m.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn cuts_concatenated_messages_fed_byte_by_byte() {
        let a = stun(8);
        let b = frame_for_stream(&chan(&[1, 2, 3, 4, 5])).into_owned();
        assert_eq!(b.len(), 12, "5 bytes of payload padded to 8");
        let c = stun(0);
        let stream: Vec<u8> = [a.clone(), b.clone(), c.clone()].concat();
        let mut d = StreamDecoder::new();
        let mut out = Vec::new();
        for byte in &stream {
            d.push(std::slice::from_ref(byte));
            while let Some(m) = d.next_message().unwrap() {
                out.push(m);
            }
        }
        assert_eq!(out, vec![a, b, c]);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn waits_for_the_padding_of_channel_data() {
        let mut d = StreamDecoder::new();
        d.push(&chan(&[7]));
        assert_eq!(d.next_message(), Ok(None), "3 padding bytes still missing");
        d.push(&[0, 0, 0]);
        assert_eq!(d.next_message(), Ok(Some(vec![0x40, 1, 0, 1, 7, 0, 0, 0])));
    }

    #[test]
    fn broken_framing_is_an_error_that_sticks() {
        let mut d = StreamDecoder::new();
        d.push(&[0x80, 0, 0, 0]);
        assert_eq!(d.next_message(), Err(FramingError::UnknownMessage(0x80)));
        d.push(&stun(0));
        assert!(d.next_message().is_err());
        let mut d = StreamDecoder::new();
        d.push(&[0x00, 0x01, 0x00, 0x03]);
        assert_eq!(d.next_message(), Err(FramingError::BadStunLength(3)));
        let mut d = StreamDecoder::new();
        d.push(&[0x7F, 0xFF, 0x00, 0x00]);
        assert_eq!(d.next_message(), Err(FramingError::BadChannel(0x7FFF)));
    }

    #[test]
    fn frame_for_stream_pads_only_channel_data() {
        let s = stun(4);
        assert!(matches!(frame_for_stream(&s), Cow::Borrowed(_)));
        let padded = frame_for_stream(&chan(&[1, 2, 3, 4])).into_owned();
        assert_eq!(padded.len(), 8);
        assert_eq!(frame_for_stream(&chan(&[1, 2])).len(), 8);
        assert_eq!(frame_for_stream(&[0x40]).as_ref(), &[0x40]);
        assert_eq!(frame_len(&[]), Ok(None));
        assert_eq!(frame_len(&[0x40, 0x00]), Ok(None));
        assert_eq!(frame_len(&[0x40, 0x00, 0xFF, 0xFF]), Ok(Some(4 + 65536)));
    }
}

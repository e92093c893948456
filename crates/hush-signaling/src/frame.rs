//! Relay protocol framing.
//!
//! Over TCP each frame is a `u32` big-endian length followed by that many bytes of protobuf
//! ([`proto::relay::ClientFrame`] from a device, [`proto::relay::ServerFrame`] from the relay).
//! A TCP client first sends [`TCP_PREAMBLE`]. Over WebSocket each frame is one binary message
//! with no length prefix.
//!
//! [`proto::relay::ClientFrame`]: crate::proto::relay::ClientFrame
//! [`proto::relay::ServerFrame`]: crate::proto::relay::ServerFrame

use prost::Message as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::proto::relay as pb;
use crate::Error;

/// Default (and recommended) largest frame, in bytes, excluding the length prefix.
pub const DEFAULT_MAX_FRAME_LEN: usize = 64 * 1024;

/// Bytes a client sends first on a raw TCP connection, before any frame. They tell the relay
/// (which serves WebSocket on the same port; a WebSocket upgrade starts with `GET `) that
/// length-prefixed frames follow, and which framing version.
pub const TCP_PREAMBLE: [u8; 4] = *b"hsh1";

/// Length of the TCP length prefix.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// Decodes a frame sent by a device. Unknown frame types are reported, not crashed on.
pub fn decode_client_frame(bytes: &[u8]) -> Result<pb::client_frame::Frame, Error> {
    pb::ClientFrame::decode(bytes)?
        .frame
        .ok_or(Error::UnsupportedMessage)
}

/// Decodes a frame sent by the relay.
pub fn decode_server_frame(bytes: &[u8]) -> Result<pb::server_frame::Frame, Error> {
    pb::ServerFrame::decode(bytes)?
        .frame
        .ok_or(Error::UnsupportedMessage)
}

/// Encodes a device frame (without length prefix).
pub fn encode_client_frame(frame: pb::client_frame::Frame) -> Vec<u8> {
    pb::ClientFrame { frame: Some(frame) }.encode_to_vec()
}

/// Encodes a relay frame (without length prefix).
pub fn encode_server_frame(frame: pb::server_frame::Frame) -> Vec<u8> {
    pb::ServerFrame { frame: Some(frame) }.encode_to_vec()
}

/// Encodes a `ServerFrame { deliver: Deliver { delivery_id, envelope } }` around an already
/// encoded [`crate::proto::signaling::Envelope`], without decoding and re-encoding it.
pub fn encode_deliver_frame(delivery_id: u64, envelope: &[u8]) -> Vec<u8> {
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
    // Deliver: field 1 varint, field 2 bytes.
    let inner_len = 1
        + encoded_len_varint(delivery_id)
        + 1
        + encoded_len_varint(envelope.len() as u64)
        + envelope.len();
    let mut out = Vec::with_capacity(inner_len + 8);
    // ServerFrame field 3 (deliver), length-delimited.
    encode_key(3, WireType::LengthDelimited, &mut out);
    encode_varint(inner_len as u64, &mut out);
    encode_key(1, WireType::Varint, &mut out);
    encode_varint(delivery_id, &mut out);
    encode_key(2, WireType::LengthDelimited, &mut out);
    encode_varint(envelope.len() as u64, &mut out);
    out.extend_from_slice(envelope);
    out
}

/// Prepends the TCP length prefix to an encoded frame.
pub fn length_prefixed(frame: &[u8]) -> Result<Vec<u8>, Error> {
    let len = u32::try_from(frame.len()).map_err(|_| Error::FrameTooLarge {
        size: frame.len(),
        max: u32::MAX as usize,
    })?;
    let mut out = Vec::with_capacity(LENGTH_PREFIX_LEN + frame.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(frame);
    Ok(out)
}

/// A sans-IO decoder for length-prefixed frames: push bytes in, pull whole frames out.
///
/// After an error (an oversized length) the decoder stays failed: a byte stream cannot be
/// resynchronised once a length prefix is untrustworthy.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max: usize,
    failed: Option<usize>,
}

impl FrameDecoder {
    /// A decoder that rejects frames longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max,
            failed: None,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Returns the next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, Error> {
        if let Some(size) = self.failed {
            return Err(Error::FrameTooLarge {
                size,
                max: self.max,
            });
        }
        let Some(prefix) = self.buf.first_chunk::<LENGTH_PREFIX_LEN>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*prefix) as usize;
        if len > self.max {
            self.failed = Some(len);
            self.buf = Vec::new();
            return Err(Error::FrameTooLarge {
                size: len,
                max: self.max,
            });
        }
        if self.buf.len() < LENGTH_PREFIX_LEN + len {
            return Ok(None);
        }
        let frame = self.buf[LENGTH_PREFIX_LEN..LENGTH_PREFIX_LEN + len].to_vec();
        self.buf.drain(..LENGTH_PREFIX_LEN + len);
        Ok(Some(frame))
    }

    /// Bytes buffered but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// Reads one length-prefixed frame. `Ok(None)` on a clean end of stream at a frame boundary.
///
/// Not cancel-safe: use it from a task that owns the reader.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, Error> {
    let mut prefix = [0u8; LENGTH_PREFIX_LEN];
    let mut got = 0;
    while got < LENGTH_PREFIX_LEN {
        let n = reader.read(&mut prefix[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(Error::Malformed("stream ended inside a length prefix"))
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(Error::FrameTooLarge { size: len, max });
    }
    let mut frame = vec![0u8; len];
    reader.read_exact(&mut frame).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::Malformed("stream ended inside a frame")
        } else {
            Error::Io(e)
        }
    })?;
    Ok(Some(frame))
}

/// Writes one length-prefixed frame (does not flush).
pub async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, frame: &[u8]) -> Result<(), Error> {
    let len = u32::try_from(frame.len()).map_err(|_| Error::FrameTooLarge {
        size: frame.len(),
        max: u32::MAX as usize,
    })?;
    writer.write_all(&len.to_be_bytes()).await?;
    writer.write_all(frame).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decoder_splits_frames_across_pushes() {
        let mut d = FrameDecoder::new(16);
        let mut wire = length_prefixed(b"hello").unwrap();
        wire.extend(length_prefixed(b"").unwrap());
        wire.extend(length_prefixed(b"world!").unwrap());
        for chunk in wire.chunks(3) {
            d.push(chunk);
        }
        assert_eq!(d.next_frame().unwrap().unwrap(), b"hello");
        assert_eq!(d.next_frame().unwrap().unwrap(), b"");
        assert_eq!(d.next_frame().unwrap().unwrap(), b"world!");
        assert_eq!(d.next_frame().unwrap(), None);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn decoder_rejects_oversize_and_stays_failed() {
        let mut d = FrameDecoder::new(4);
        d.push(&length_prefixed(b"12345").unwrap());
        assert!(matches!(
            d.next_frame(),
            Err(Error::FrameTooLarge { size: 5, max: 4 })
        ));
        d.push(&length_prefixed(b"1").unwrap());
        assert!(d.next_frame().is_err());
    }

    #[test]
    fn unknown_frame_type_is_an_error() {
        // Field 30 (unknown oneof member), empty message.
        assert!(matches!(
            decode_client_frame(&[0xf2, 0x01, 0x00]),
            Err(Error::UnsupportedMessage)
        ));
        assert!(matches!(
            decode_server_frame(&[]),
            Err(Error::UnsupportedMessage)
        ));
        assert!(decode_client_frame(&[0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn hand_encoded_deliver_matches_prost() {
        use crate::proto::signaling::Envelope;
        let env = Envelope {
            version: 1,
            id: vec![1; 16],
            ciphertext: vec![7; 300],
            ..Default::default()
        };
        let bytes = env.encode_to_vec();
        for id in [0u64, 1, 127, 128, u64::MAX] {
            let frame = encode_deliver_frame(id, &bytes);
            let expected = pb::server_frame::Frame::Deliver(pb::Deliver {
                delivery_id: id,
                envelope: Some(env.clone()),
            });
            assert_eq!(decode_server_frame(&frame).unwrap(), expected);
            if id != 0 {
                // prost omits zero-valued fields; otherwise the bytes are identical.
                assert_eq!(frame, encode_server_frame(expected));
            }
        }
    }

    #[tokio::test]
    async fn async_read_write_round_trip() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            write_frame(&mut a, b"abc").await.unwrap();
            write_frame(&mut a, &[0u8; 100]).await.unwrap();
        });
        assert_eq!(read_frame(&mut b, 100).await.unwrap().unwrap(), b"abc");
        assert_eq!(read_frame(&mut b, 100).await.unwrap().unwrap().len(), 100);
        writer.await.unwrap();
        assert_eq!(read_frame(&mut b, 100).await.unwrap(), None);
    }

    proptest! {
        #[test]
        fn decoder_never_panics(chunks in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
            let mut d = FrameDecoder::new(128);
            for c in &chunks {
                d.push(c);
                while let Ok(Some(f)) = d.next_frame() {
                    let _ = decode_client_frame(&f);
                    let _ = decode_server_frame(&f);
                }
            }
        }
    }
}

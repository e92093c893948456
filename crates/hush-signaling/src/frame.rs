//! Relay protocol framing.
//!
//! Over TCP each frame is a `u32` big-endian length followed by that many bytes of protobuf
//! ([`proto::relay::ClientFrame`] from a device, [`proto::relay::ServerFrame`] from the relay).
//! A TCP client first sends [`TCP_PREAMBLE`]. Over WebSocket each frame is one binary message
//! with no length prefix.
//!
//! [`proto::relay::ClientFrame`]: crate::proto::relay::ClientFrame
//! [`proto::relay::ServerFrame`]: crate::proto::relay::ServerFrame

use bytes::{Buf, BytesMut};
use prost::Message as _;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

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

/// Checks the first bytes of a framed TCP connection (what a relay reads before any frame).
pub fn check_preamble(first: &[u8]) -> Result<(), Error> {
    if first == TCP_PREAMBLE {
        Ok(())
    } else {
        Err(Error::Malformed("unknown protocol preamble"))
    }
}

/// The one decoder for length-prefixed relay frames, used by the relay (for what devices send)
/// and by [`RelayClient`](crate::transport::RelayClient) (for what the relay sends), and fuzzed
/// as such (`fuzz/fuzz_targets/relay_frame.rs`).
///
/// It is tokio-util's [`LengthDelimitedCodec`] set to this protocol (`u32` big-endian length,
/// prefix stripped, frames longer than `max` refused), with its errors mapped to [`Error`]:
/// an oversized length is [`Error::FrameTooLarge`], a stream that ends inside a frame is
/// [`Error::Malformed`]. Drive it with a [`FramedRead`](tokio_util::codec::FramedRead) (which
/// keeps the bytes read so far in its own buffer, so waiting on it in `select!` loses nothing
/// when another branch wins) or call [`Decoder::decode`] on a buffer directly.
///
/// After an error the stream cannot be resynchronised (a length prefix is untrustworthy);
/// `FramedRead` ends the stream after yielding the error.
#[derive(Debug)]
pub struct RelayFrameCodec {
    inner: LengthDelimitedCodec,
    max: usize,
}

impl RelayFrameCodec {
    /// A decoder that refuses frames longer than `max` bytes (excluding the length prefix).
    pub fn new(max: usize) -> Self {
        let inner = LengthDelimitedCodec::builder()
            .length_field_offset(0)
            .length_field_length(LENGTH_PREFIX_LEN)
            // The prefix stays in the buffer until its whole frame is there (and is cut off
            // the returned frame below): so the buffer is empty exactly at frame boundaries,
            // which is how the end of the stream is told apart from a cut-off frame.
            .length_adjustment(LENGTH_PREFIX_LEN as isize)
            .num_skip(0)
            .big_endian()
            .max_frame_length(max)
            .new_codec();
        Self { inner, max }
    }

    /// The largest frame accepted.
    pub fn max_frame_len(&self) -> usize {
        self.max
    }

    fn map_err(&self, src: &BytesMut, e: std::io::Error) -> Error {
        if e.get_ref()
            .is_some_and(|inner| inner.is::<tokio_util::codec::LengthDelimitedCodecError>())
        {
            // The codec refuses an oversized length before consuming the prefix, so the
            // announced size is still at the front of the buffer (only used in the message).
            let size = src
                .first_chunk::<LENGTH_PREFIX_LEN>()
                .map_or(0, |p| u32::from_be_bytes(*p) as usize);
            return Error::FrameTooLarge {
                size,
                max: self.max,
            };
        }
        Error::Io(e)
    }
}

impl Decoder for RelayFrameCodec {
    type Item = BytesMut;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, Error> {
        match self.inner.decode(src) {
            Ok(Some(mut frame)) => {
                frame.advance(LENGTH_PREFIX_LEN);
                Ok(Some(frame))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(self.map_err(src, e)),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, Error> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(Error::Malformed("stream ended inside a frame")),
        }
    }
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

    /// Feeds `wire` in chunks of `chunk` bytes and decodes everything, like `FramedRead`.
    fn decode_all(max: usize, wire: &[u8], chunk: usize) -> Result<Vec<Vec<u8>>, Error> {
        let mut codec = RelayFrameCodec::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for c in wire.chunks(chunk.max(1)) {
            buf.extend_from_slice(c);
            while let Some(f) = codec.decode(&mut buf)? {
                out.push(f.to_vec());
            }
        }
        while let Some(f) = codec.decode_eof(&mut buf)? {
            out.push(f.to_vec());
        }
        Ok(out)
    }

    #[test]
    fn decoder_splits_frames_across_chunks() {
        let mut wire = length_prefixed(b"hello").unwrap();
        wire.extend(length_prefixed(b"").unwrap());
        wire.extend(length_prefixed(b"world!").unwrap());
        for chunk in 1..=wire.len() {
            let frames = decode_all(16, &wire, chunk).unwrap();
            assert_eq!(frames, [&b"hello"[..], b"", b"world!"], "chunk {chunk}");
        }
    }

    #[test]
    fn decoder_rejects_oversize_with_its_size() {
        let mut wire = length_prefixed(b"1234").unwrap();
        wire.extend(length_prefixed(b"12345").unwrap());
        for chunk in [1, 3, wire.len()] {
            assert!(matches!(
                decode_all(4, &wire, chunk),
                Err(Error::FrameTooLarge { size: 5, max: 4 })
            ));
        }
        assert!(matches!(
            decode_all(4, &u32::MAX.to_be_bytes(), 1),
            Err(Error::FrameTooLarge {
                size: 0xffff_ffff,
                max: 4
            })
        ));
    }

    #[test]
    fn decoder_tells_a_cut_off_frame_from_a_clean_end() {
        let wire = length_prefixed(b"abc").unwrap();
        // Cut inside the prefix, right after it (the case where only a length arrived), and
        // inside the body.
        for cut in [1, 3, 4, 6] {
            assert!(
                matches!(
                    decode_all(16, &wire[..cut], 1),
                    Err(Error::Malformed("stream ended inside a frame"))
                ),
                "cut at {cut}"
            );
        }
        assert_eq!(decode_all(16, &wire, 2).unwrap(), [b"abc"]);
        assert!(decode_all(16, &[], 1).unwrap().is_empty());
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
    async fn framed_read_write_round_trip() {
        use futures_util::StreamExt;
        let (mut a, b) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            write_frame(&mut a, b"abc").await.unwrap();
            write_frame(&mut a, &[0u8; 100]).await.unwrap();
        });
        let mut frames = tokio_util::codec::FramedRead::new(b, RelayFrameCodec::new(100));
        assert_eq!(&frames.next().await.unwrap().unwrap()[..], b"abc");
        assert_eq!(frames.next().await.unwrap().unwrap().len(), 100);
        writer.await.unwrap();
        assert!(frames.next().await.is_none());
    }

    proptest! {
        #[test]
        fn decoder_never_panics(chunks in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
            let mut codec = RelayFrameCodec::new(128);
            let mut buf = BytesMut::new();
            'outer: for c in &chunks {
                buf.extend_from_slice(c);
                loop {
                    match codec.decode(&mut buf) {
                        Ok(Some(f)) => {
                            prop_assert!(f.len() <= 128);
                            let _ = decode_client_frame(&f);
                            let _ = decode_server_frame(&f);
                        }
                        Ok(None) => break,
                        Err(_) => break 'outer,
                    }
                }
            }
        }

        #[test]
        fn any_split_gives_back_the_frames(
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..6),
            chunk in 1usize..50,
        ) {
            let mut wire = Vec::new();
            for f in &frames {
                wire.extend(length_prefixed(f).unwrap());
            }
            prop_assert_eq!(decode_all(40, &wire, chunk).unwrap(), frames);
        }
    }
}

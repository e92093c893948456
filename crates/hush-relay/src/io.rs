//! Frame I/O for one accepted socket: length-prefixed TCP or WebSocket, optionally inside TLS,
//! told apart by the first bytes (a WebSocket upgrade starts with `GET `; a framed client starts
//! with [`TCP_PREAMBLE`](hush_signaling::frame::TCP_PREAMBLE)).
//!
//! The halves are boxed so one connection task serves every combination (TCP, WebSocket, each
//! with or without TLS) without being generic.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use hush_signaling::device::ChannelBinding;
use hush_signaling::frame::{check_preamble, write_frame, RelayFrameCodec, TCP_PREAMBLE};
use hush_signaling::transport::ws_config;
use hush_signaling::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::codec::FramedRead;

/// What reading produces: a frame, or why reading stopped.
pub(crate) type ReadEvent = Result<Bytes, Error>;

type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;
type WsSource = Pin<Box<dyn Stream<Item = Result<Message, tungstenite::Error>> + Send>>;
type WsSink = Pin<Box<dyn Sink<Message, Error = tungstenite::Error> + Send>>;

/// The write side of a connection.
pub(crate) enum Writer {
    Tcp(BufWriter<BoxWrite>),
    Ws(WsSink),
}

impl Writer {
    /// Queues one frame (written out by [`Self::flush`] or when the buffer fills).
    pub(crate) async fn send(&mut self, frame: Vec<u8>) -> Result<(), Error> {
        match self {
            Self::Tcp(w) => write_frame(w, &frame).await,
            Self::Ws(s) => s.feed(Message::Binary(frame.into())).await.map_err(ws_err),
        }
    }

    pub(crate) async fn flush(&mut self) -> Result<(), Error> {
        match self {
            Self::Tcp(w) => w.flush().await.map_err(Error::Io),
            Self::Ws(s) => s.flush().await.map_err(ws_err),
        }
    }

    pub(crate) async fn close(&mut self) {
        match self {
            Self::Tcp(w) => {
                let _ = w.flush().await;
                let _ = w.shutdown().await;
            }
            Self::Ws(s) => {
                let _ = s.close().await;
            }
        }
    }
}

fn ws_err(e: tungstenite::Error) -> Error {
    match e {
        tungstenite::Error::Capacity(c) => {
            tracing::debug!(error = %c, "websocket capacity exceeded");
            Error::FrameTooLarge { size: 0, max: 0 }
        }
        tungstenite::Error::Io(e) => Error::Io(e),
        other => Error::WebSocket(other.to_string()),
    }
}

/// The read side of a connection. [`Reader::next`] is cancel-safe, so the connection task can
/// wait on it in `select!` directly, with no reader task and channel hop per frame.
pub(crate) enum Reader {
    /// Length-prefixed frames, decoded by the one relay frame decoder
    /// ([`RelayFrameCodec`], also what the client and the `relay_frame` fuzz target run).
    /// Cancel-safe because the `FramedRead` owns its buffer: when `next()` is dropped in
    /// `select!` after reading part of a frame, those bytes stay in the buffer and the next
    /// call continues from them.
    Tcp(FramedRead<BoxRead, RelayFrameCodec>),
    Ws {
        source: WsSource,
        failed: bool,
    },
}

impl Reader {
    fn framed(read: BoxRead, max: usize) -> Self {
        Self::Tcp(FramedRead::with_capacity(
            read,
            RelayFrameCodec::new(max),
            8 * 1024,
        ))
    }

    /// The next frame, an error (after which the stream is unusable), or `None` at end of
    /// stream. Cancel-safe: bytes read before cancellation stay buffered.
    pub(crate) async fn next(&mut self) -> Option<ReadEvent> {
        match self {
            Self::Tcp(frames) => frames.next().await.map(|f| f.map(BytesMut::freeze)),
            Self::Ws { source, failed } => loop {
                if *failed {
                    return None;
                }
                let event = match source.next().await? {
                    Ok(Message::Binary(b)) => Ok(b),
                    Ok(Message::Text(_)) => Err(Error::Malformed("text websocket frame")),
                    Ok(Message::Close(_)) => return None,
                    Ok(_) => continue,
                    Err(e) => Err(ws_err(e)),
                };
                *failed = event.is_err();
                return Some(event);
            },
        }
    }

    /// What [`Self::next`] has ready without waiting: `Some(event)` (a frame, an error, or the
    /// end of the stream as `Some(None)`), or `None` when it would have to wait. Polls once
    /// with this task's waker (framed TCP: decodes what is buffered, or reads what the socket
    /// already has); WebSocket connections always report `None`.
    pub(crate) async fn try_next(&mut self) -> Option<Option<ReadEvent>> {
        let Self::Tcp(frames) = self else {
            return None;
        };
        std::future::poll_fn(|cx| match Pin::new(&mut *frames).poll_next(cx) {
            Poll::Ready(event) => Poll::Ready(Some(event.map(|f| f.map(BytesMut::freeze)))),
            Poll::Pending => Poll::Ready(None),
        })
        .await
    }
}

/// TLS settings for accepting connections (feature `tls`).
#[cfg(feature = "tls")]
pub(crate) type Tls = tokio_rustls::TlsAcceptor;
/// Placeholder when the `tls` feature is off.
#[cfg(not(feature = "tls"))]
pub(crate) type Tls = std::convert::Infallible;

/// Runs the TLS handshake if configured, sniffs the protocol, runs the WebSocket handshake if
/// needed. Also returns the connection's TLS channel binding (RFC 9266 `tls-exporter`) when
/// the relay terminates TLS, `None` on plaintext.
pub(crate) async fn accept(
    stream: TcpStream,
    max_frame_len: usize,
    tls: Option<&Tls>,
) -> Result<(Writer, Reader, Option<ChannelBinding>), Error> {
    #[cfg(feature = "tls")]
    if let Some(acceptor) = tls {
        let stream = acceptor.accept(stream).await?;
        let exporter = hush_signaling::transport::tls_exporter(stream.get_ref().1)?;
        let (writer, reader) = accept_stream(stream, max_frame_len).await?;
        return Ok((writer, reader, Some(ChannelBinding::TlsExporter(exporter))));
    }
    #[cfg(not(feature = "tls"))]
    if let Some(never) = tls {
        match *never {}
    }
    // Plain TCP: peek, so the framed path keeps tokio's split halves (no lock per operation).
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await? == 0 {
        return Err(Error::Closed);
    }
    if first[0] == b'G' {
        let (writer, reader) = websocket(stream, max_frame_len).await?;
        return Ok((writer, reader, None));
    }
    let mut stream = stream;
    let mut preamble = [0u8; TCP_PREAMBLE.len()];
    stream.read_exact(&mut preamble).await?;
    check_preamble(&preamble)?;
    let (read, write) = stream.into_split();
    Ok((
        Writer::Tcp(BufWriter::with_capacity(16 * 1024, Box::new(write))),
        Reader::framed(Box::new(read), max_frame_len),
        None,
    ))
}

/// Protocol sniffing on a stream that cannot peek (TLS): reads the first four bytes and replays
/// them to the WebSocket handshake if it is one.
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
async fn accept_stream<S>(mut stream: S, max_frame_len: usize) -> Result<(Writer, Reader), Error>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut first = [0u8; TCP_PREAMBLE.len()];
    stream.read_exact(&mut first).await?;
    if check_preamble(&first).is_ok() {
        let (read, write) = tokio::io::split(stream);
        return Ok((
            Writer::Tcp(BufWriter::with_capacity(16 * 1024, Box::new(write))),
            Reader::framed(Box::new(read), max_frame_len),
        ));
    }
    if &first == b"GET " {
        return websocket(
            Prefixed {
                prefix: first,
                pos: 0,
                inner: stream,
            },
            max_frame_len,
        )
        .await;
    }
    Err(Error::Malformed("unknown protocol preamble"))
}

async fn websocket<S>(stream: S, max_frame_len: usize) -> Result<(Writer, Reader), Error>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let ws = tokio_tungstenite::accept_async_with_config(stream, Some(ws_config(max_frame_len)))
        .await
        .map_err(ws_err)?;
    let (sink, source) = ws.split();
    Ok((
        Writer::Ws(Box::pin(sink)),
        Reader::Ws {
            source: Box::pin(source),
            failed: false,
        },
    ))
}

/// A stream whose first bytes were already read: replays them, then reads the stream.
struct Prefixed<S> {
    prefix: [u8; 4],
    pos: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pos < self.prefix.len() {
            let rest = &self.prefix[self.pos..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hush_signaling::frame::length_prefixed;

    /// `next()` dropped in `select!` after reading half a frame loses nothing: the frame
    /// completes on the next call.
    #[tokio::test]
    async fn reader_is_cancel_safe_inside_a_frame() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut reader = Reader::framed(Box::new(server), 64);
        let wire = length_prefixed(b"0123456789").unwrap();
        for split in 1..wire.len() {
            client.write_all(&wire[..split]).await.unwrap();
            // The reader is polled first, takes the partial frame and waits; the other branch
            // is ready and wins, dropping the reader's future.
            tokio::select! {
                biased;
                event = reader.next() => panic!("a partial frame came out: {event:?}"),
                () = std::future::ready(()) => {}
            }
            assert!(reader.try_next().await.is_none(), "split {split}");
            client.write_all(&wire[split..]).await.unwrap();
            let frame = reader.next().await.unwrap().unwrap();
            assert_eq!(&frame[..], b"0123456789", "split {split}");
        }
        drop(client);
        assert!(reader.next().await.is_none());
    }

    /// `try_next` hands out buffered frames one by one, then reports the end of the stream.
    #[tokio::test]
    async fn try_next_drains_buffered_frames_then_the_end() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut reader = Reader::framed(Box::new(server), 64);
        let mut wire = length_prefixed(b"a").unwrap();
        wire.extend(length_prefixed(b"bc").unwrap());
        client.write_all(&wire).await.unwrap();
        drop(client);
        assert_eq!(&reader.next().await.unwrap().unwrap()[..], b"a");
        assert_eq!(
            &reader.try_next().await.unwrap().unwrap().unwrap()[..],
            b"bc"
        );
        assert!(matches!(reader.try_next().await, Some(None)));
    }

    /// An oversized length ends the stream with `FrameTooLarge`, then nothing more.
    #[tokio::test]
    async fn oversize_is_reported_once() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut reader = Reader::framed(Box::new(server), 4);
        client
            .write_all(&length_prefixed(b"12345").unwrap())
            .await
            .unwrap();
        client
            .write_all(&length_prefixed(b"1").unwrap())
            .await
            .unwrap();
        assert!(matches!(
            reader.next().await,
            Some(Err(Error::FrameTooLarge { size: 5, max: 4 }))
        ));
        assert!(reader.next().await.is_none());
    }
}

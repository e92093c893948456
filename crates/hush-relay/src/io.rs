//! Frame I/O for one accepted socket: length-prefixed TCP or WebSocket, optionally inside TLS,
//! told apart by the first bytes (a WebSocket upgrade starts with `GET `; a framed client starts
//! with [`TCP_PREAMBLE`](hush_signaling::frame::TCP_PREAMBLE)).
//!
//! The halves are boxed so one connection task serves every combination (TCP, WebSocket, each
//! with or without TLS) without being generic.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use hush_signaling::frame::{write_frame, TCP_PREAMBLE};
use hush_signaling::transport::ws_config;
use hush_signaling::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};

/// What reading produces: a frame, or why reading stopped.
pub(crate) type ReadEvent = Result<Vec<u8>, Error>;

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
    Tcp {
        read: BoxRead,
        buf: Vec<u8>,
        start: usize,
        max: usize,
        failed: bool,
    },
    Ws {
        source: WsSource,
        failed: bool,
    },
}

impl Reader {
    fn framed(read: BoxRead, max: usize) -> Self {
        Self::Tcp {
            read,
            buf: Vec::new(),
            start: 0,
            max,
            failed: false,
        }
    }

    /// The next frame, an error (after which the stream is unusable), or `None` at end of
    /// stream. Cancel-safe: bytes read before cancellation stay buffered.
    pub(crate) async fn next(&mut self) -> Option<ReadEvent> {
        loop {
            if let Some(event) = self.try_next() {
                return Some(event);
            }
            match self {
                Self::Tcp {
                    read,
                    buf,
                    start,
                    failed,
                    ..
                } => {
                    if *failed {
                        return None;
                    }
                    if *start > 0 {
                        buf.drain(..*start);
                        *start = 0;
                    }
                    buf.reserve(8 * 1024);
                    match read.read_buf(buf).await {
                        Ok(0) if buf.is_empty() => return None,
                        Ok(0) => {
                            *failed = true;
                            return Some(Err(Error::Malformed("stream ended inside a frame")));
                        }
                        Ok(_) => {}
                        Err(e) => {
                            *failed = true;
                            return Some(Err(Error::Io(e)));
                        }
                    }
                }
                Self::Ws { source, failed } => {
                    if *failed {
                        return None;
                    }
                    let event = match source.next().await? {
                        Ok(Message::Binary(b)) => Ok(b.to_vec()),
                        Ok(Message::Text(_)) => Err(Error::Malformed("text websocket frame")),
                        Ok(Message::Close(_)) => return None,
                        Ok(_) => continue,
                        Err(e) => Err(ws_err(e)),
                    };
                    *failed = event.is_err();
                    return Some(event);
                }
            }
        }
    }

    /// A frame that is already buffered, without waiting.
    pub(crate) fn try_next(&mut self) -> Option<ReadEvent> {
        let Self::Tcp {
            buf,
            start,
            max,
            failed,
            ..
        } = self
        else {
            return None;
        };
        if *failed {
            return None;
        }
        let avail = &buf[*start..];
        let prefix = avail.first_chunk::<4>()?;
        let len = u32::from_be_bytes(*prefix) as usize;
        if len > *max {
            *failed = true;
            return Some(Err(Error::FrameTooLarge {
                size: len,
                max: *max,
            }));
        }
        let frame = avail.get(4..4 + len)?.to_vec();
        *start += 4 + len;
        if *start == buf.len() {
            buf.clear();
            *start = 0;
        }
        Some(Ok(frame))
    }
}

/// TLS settings for accepting connections (feature `tls`).
#[cfg(feature = "tls")]
pub(crate) type Tls = tokio_rustls::TlsAcceptor;
/// Placeholder when the `tls` feature is off.
#[cfg(not(feature = "tls"))]
pub(crate) type Tls = std::convert::Infallible;

/// Runs the TLS handshake if configured, sniffs the protocol, runs the WebSocket handshake if
/// needed.
pub(crate) async fn accept(
    stream: TcpStream,
    max_frame_len: usize,
    tls: Option<&Tls>,
) -> Result<(Writer, Reader), Error> {
    #[cfg(feature = "tls")]
    if let Some(acceptor) = tls {
        let stream = acceptor.accept(stream).await?;
        return accept_stream(stream, max_frame_len).await;
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
        return websocket(stream, max_frame_len).await;
    }
    let mut stream = stream;
    let mut preamble = [0u8; 4];
    stream.read_exact(&mut preamble).await?;
    if preamble != TCP_PREAMBLE {
        return Err(Error::Malformed("unknown protocol preamble"));
    }
    let (read, write) = stream.into_split();
    Ok((
        Writer::Tcp(BufWriter::with_capacity(16 * 1024, Box::new(write))),
        Reader::framed(Box::new(read), max_frame_len),
    ))
}

/// Protocol sniffing on a stream that cannot peek (TLS): reads the first four bytes and replays
/// them to the WebSocket handshake if it is one.
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
async fn accept_stream<S>(mut stream: S, max_frame_len: usize) -> Result<(Writer, Reader), Error>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut first = [0u8; 4];
    stream.read_exact(&mut first).await?;
    if first == TCP_PREAMBLE {
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

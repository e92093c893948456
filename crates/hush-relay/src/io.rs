//! Frame I/O for one accepted socket: length-prefixed TCP or WebSocket, told apart by the first
//! bytes (a WebSocket upgrade starts with `GET `; a TCP client starts with
//! [`TCP_PREAMBLE`](hush_signaling::frame::TCP_PREAMBLE)).

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hush_signaling::frame::{write_frame, TCP_PREAMBLE};
use hush_signaling::transport::ws_config;
use hush_signaling::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

/// What the reader task reports: a frame, or why reading stopped.
pub(crate) type ReadEvent = Result<Vec<u8>, Error>;

/// The write side of a connection.
pub(crate) enum Writer {
    Tcp(BufWriter<OwnedWriteHalf>),
    Ws(SplitSink<WebSocketStream<TcpStream>, Message>),
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
        read: OwnedReadHalf,
        buf: Vec<u8>,
        start: usize,
        max: usize,
        failed: bool,
    },
    Ws {
        source: SplitStream<WebSocketStream<TcpStream>>,
        failed: bool,
    },
}

impl Reader {
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

/// Sniffs the protocol and runs the WebSocket handshake if needed.
pub(crate) async fn accept(
    stream: TcpStream,
    max_frame_len: usize,
) -> Result<(Writer, Reader), Error> {
    let mut first = [0u8; 1];
    let n = stream.peek(&mut first).await?;
    if n == 0 {
        return Err(Error::Closed);
    }
    if first[0] == b'G' {
        let ws =
            tokio_tungstenite::accept_async_with_config(stream, Some(ws_config(max_frame_len)))
                .await
                .map_err(ws_err)?;
        let (sink, source) = ws.split();
        Ok((
            Writer::Ws(sink),
            Reader::Ws {
                source,
                failed: false,
            },
        ))
    } else {
        let mut stream = stream;
        let mut preamble = [0u8; 4];
        stream.read_exact(&mut preamble).await?;
        if preamble != TCP_PREAMBLE {
            return Err(Error::Malformed("unknown protocol preamble"));
        }
        let (read, write) = stream.into_split();
        let reader = Reader::Tcp {
            read,
            buf: Vec::new(),
            start: 0,
            max: max_frame_len,
            failed: false,
        };
        Ok((
            Writer::Tcp(BufWriter::with_capacity(16 * 1024, write)),
            reader,
        ))
    }
}

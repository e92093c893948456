//! Frame I/O for one accepted socket: length-prefixed TCP or WebSocket, told apart by the first
//! bytes (a WebSocket upgrade starts with `GET `; a TCP client starts with
//! [`TCP_PREAMBLE`](hush_signaling::frame::TCP_PREAMBLE)).

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hush_signaling::frame::{read_frame, write_frame, TCP_PREAMBLE};
use hush_signaling::transport::ws_config;
use hush_signaling::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
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

/// Sniffs the protocol, runs the WebSocket handshake if needed, and starts a reader task that
/// sends frames to the returned channel (bounded: a slow relay stops reading the socket).
pub(crate) async fn accept(
    stream: TcpStream,
    max_frame_len: usize,
) -> Result<(Writer, mpsc::Receiver<ReadEvent>), Error> {
    let mut first = [0u8; 1];
    let n = stream.peek(&mut first).await?;
    if n == 0 {
        return Err(Error::Closed);
    }
    let (tx, rx) = mpsc::channel(64);
    if first[0] == b'G' {
        let ws =
            tokio_tungstenite::accept_async_with_config(stream, Some(ws_config(max_frame_len)))
                .await
                .map_err(ws_err)?;
        let (sink, source) = ws.split();
        tokio::spawn(read_ws(source, tx));
        Ok((Writer::Ws(sink), rx))
    } else {
        let mut stream = stream;
        let mut preamble = [0u8; 4];
        stream.read_exact(&mut preamble).await?;
        if preamble != TCP_PREAMBLE {
            return Err(Error::Malformed("unknown protocol preamble"));
        }
        let (read, write) = stream.into_split();
        tokio::spawn(read_tcp(read, max_frame_len, tx));
        Ok((Writer::Tcp(BufWriter::with_capacity(16 * 1024, write)), rx))
    }
}

async fn read_tcp(mut read: OwnedReadHalf, max: usize, tx: mpsc::Sender<ReadEvent>) {
    loop {
        match read_frame(&mut read, max).await {
            Ok(Some(frame)) => {
                if tx.send(Ok(frame)).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}

async fn read_ws(mut source: SplitStream<WebSocketStream<TcpStream>>, tx: mpsc::Sender<ReadEvent>) {
    while let Some(msg) = source.next().await {
        let event = match msg {
            Ok(Message::Binary(b)) => Ok(b.to_vec()),
            Ok(Message::Text(_)) => Err(Error::Malformed("text websocket frame")),
            Ok(Message::Close(_)) => return,
            Ok(_) => continue,
            Err(e) => Err(ws_err(e)),
        };
        let stop = event.is_err();
        if tx.send(event).await.is_err() || stop {
            return;
        }
    }
}

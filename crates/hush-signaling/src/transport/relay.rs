//! The client side of the hush relay protocol, over TCP (length-prefixed frames) or WebSocket,
//! each in plaintext or (feature `tls`) TLS.
//!
//! Authentication answers the relay's challenge with the device key, bound to the connection
//! ([`ChannelBinding`]): over TLS to the relay itself, to the connection's RFC 9266
//! `tls-exporter` value (use `RelayClient::connect_tls` / `RelayClient::connect_wss`, or
//! pass the exporter of your own TLS connection with [`ClientChannel::Tls`]); over plaintext,
//! to the relay's public key, which [`RelayClientConfig::relay_key`] can pin. TLS is the
//! production setting: plaintext binding only stops a relay from passing this device's
//! answer on to another relay, not an on-path attacker who takes over the TCP stream.
//!
//! A [`RelayClient`] runs two background tasks per connection: a reader that dispatches frames
//! from the relay (deliveries to a queue, responses to the request waiting for them) and a
//! writer that drains a bounded frame queue into the socket. The public methods only talk to
//! those tasks over channels, so they are cancel-safe.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::codec::FramedRead;

use super::turn::{TurnGrant, TurnSource};
use super::{DeliveryTag, Received, SendReceipt, Transport};
use crate::device::{
    sign_challenge, ChannelBinding, DeviceId, DeviceSigner, AUTH_NONCE_LEN, RELAY_KEY_LEN,
    TLS_EXPORTER_LEN,
};
use crate::envelope::Envelope;
use crate::frame::{
    self, decode_server_frame, encode_client_frame, RelayFrameCodec, DEFAULT_MAX_FRAME_LEN,
};
use crate::proto::relay::{self as pb, client_frame, server_frame, ErrorCode};
use crate::Error;

/// Relay protocol version spoken by this build (2: the auth answer is bound to its channel; the
/// relay refuses version 1).
pub const RELAY_PROTOCOL_VERSION: u32 = 2;

/// What protects the byte stream a [`RelayClient`] authenticates over, and so what its answer
/// to the relay's challenge is bound to.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ClientChannel {
    /// Plaintext (TCP or WebSocket): the answer is bound to the relay key the challenge shows
    /// (checked against [`RelayClientConfig::relay_key`] when pinned). Also for TLS that ends
    /// before the relay (a terminating proxy), where the relay sees plaintext.
    Plaintext,
    /// TLS terminated by the relay: the answer is bound to this connection's RFC 9266
    /// `tls-exporter` value (see `tls_exporter` with feature `tls`, or compute it with your
    /// TLS library: label `"EXPORTER-Channel-Binding"`, no context, 32 bytes).
    Tls {
        /// The exporter value of the TLS connection the frames travel in.
        exporter: [u8; TLS_EXPORTER_LEN],
    },
}

/// Settings for a [`RelayClient`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RelayClientConfig {
    /// Largest frame accepted from the relay.
    pub max_frame_len: usize,
    /// How long the connect + authentication handshake may take.
    pub handshake_timeout: Duration,
    /// How long a request (send, upload, fetch, ping) may wait for its response.
    pub request_timeout: Duration,
    /// Deliveries buffered before the reader stops reading from the socket (backpressure).
    pub delivery_buffer: usize,
    /// How often the client pings the relay while connected (`None`: never). Keeps NAT and
    /// firewall state alive and the connection under the relay's idle timeout (15 minutes by
    /// default), and finds a dead connection: if no pong comes within `request_timeout`, the
    /// client closes the connection, so [`Transport::recv`] fails and the app reconnects.
    pub keepalive_interval: Option<Duration>,
    /// The relay's public key, pinned: the client refuses (before signing anything) a relay
    /// whose challenge shows another key, with [`Error::RelayKeyMismatch`]. `None` accepts the
    /// key the relay shows ([`RelayClient::relay_key`] tells it, to pin on first use). The
    /// relay logs its key at startup (`relay key` line); it lives next to its database.
    pub relay_key: Option<[u8; RELAY_KEY_LEN]>,
}

impl Default for RelayClientConfig {
    fn default() -> Self {
        Self {
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            handshake_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            delivery_buffer: 256,
            keepalive_interval: Some(Duration::from_secs(60)),
            relay_key: None,
        }
    }
}

/// A prekey bundle fetched from the relay's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedBundle {
    /// Whose bundle.
    pub device: DeviceId,
    /// The opaque bundle bytes the device uploaded.
    pub bundle: Vec<u8>,
    /// One one-time prekey `(id, bytes)`, handed out to this fetcher only; `None` when the
    /// device has run out.
    pub one_time_prekey: Option<(u64, Vec<u8>)>,
}

/// What the writer task sends.
enum Out {
    /// An encoded frame.
    Frame(Vec<u8>),
    /// Send every acknowledgement collected so far in one frame.
    Acks,
}

type Pending = HashMap<u64, oneshot::Sender<Result<pb::response::Result, Error>>>;

struct Shared {
    pending: Mutex<Pending>,
    /// Delivery ids waiting to be acknowledged; the writer sends them as one `Ack` frame.
    acks: Mutex<Vec<u64>>,
    /// Why the relay closed the connection, if it said so.
    close_reason: Mutex<Option<(ErrorCode, String)>>,
    /// Set by the reader when the connection ended, before it fails the waiting requests: a
    /// request registered after that would never be answered.
    closed: AtomicBool,
}

impl Shared {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            pending: Mutex::default(),
            acks: Mutex::default(),
            close_reason: Mutex::default(),
            closed: AtomicBool::new(false),
        })
    }

    /// Turns a queued [`Out`] into the bytes to write (`None`: nothing to write).
    fn render(&self, out: Out) -> Option<Vec<u8>> {
        match out {
            Out::Frame(f) => Some(f),
            Out::Acks => {
                let ids = std::mem::take(
                    &mut *self
                        .acks
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                );
                (!ids.is_empty()).then(|| {
                    encode_client_frame(client_frame::Frame::Ack(pb::Ack { delivery_ids: ids }))
                })
            }
        }
    }

    /// Registers a request waiting for its response; fails if the connection already ended.
    fn register(
        &self,
        id: u64,
        tx: oneshot::Sender<Result<pb::response::Result, Error>>,
    ) -> Result<(), Error> {
        self.pending().insert(id, tx);
        if self.closed.load(Ordering::SeqCst) {
            self.pending().remove(&id);
            return Err(self.closed_error());
        }
        Ok(())
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn closed_error(&self) -> Error {
        match &*self
            .close_reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            Some((code, message)) => Error::Relay {
                code: *code,
                message: message.clone(),
            },
            None => Error::Closed,
        }
    }
}

/// An authenticated connection to a hush relay. Implements [`Transport`].
pub struct RelayClient {
    device: DeviceId,
    config: RelayClientConfig,
    writer: mpsc::Sender<Out>,
    deliveries: mpsc::Receiver<Received>,
    shared: Arc<Shared>,
    next_request: Arc<AtomicU64>,
    queued_at_auth: u64,
    relay_key: [u8; RELAY_KEY_LEN],
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for RelayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayClient")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl Drop for RelayClient {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Frames from the reader task that the handshake waits for.
type Control = mpsc::Sender<server_frame::Frame>;

impl RelayClient {
    /// Connects over plaintext TCP and authenticates with `signer`'s device key, bound to the
    /// relay's key ([`ClientChannel::Plaintext`]). For local use and tests: in production
    /// connect with `connect_tls` (feature `tls`).
    pub async fn connect_tcp(
        addr: SocketAddr,
        signer: &dyn DeviceSigner,
        config: RelayClientConfig,
    ) -> Result<Self, Error> {
        let timeout = config.handshake_timeout;
        with_timeout(timeout, async {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Self::connect_stream(stream, signer, config).await
        })
        .await
    }

    /// Authenticates over an already-connected plaintext byte stream (TCP, a Unix socket...)
    /// carrying length-prefixed frames ([`ClientChannel::Plaintext`]). Over a TLS stream that
    /// the relay terminates, use [`Self::connect_stream_bound`] with its exporter (the relay
    /// refuses a relay-key binding on its TLS listener).
    pub async fn connect_stream<S>(
        stream: S,
        signer: &dyn DeviceSigner,
        config: RelayClientConfig,
    ) -> Result<Self, Error>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        Self::connect_stream_bound(stream, ClientChannel::Plaintext, signer, config).await
    }

    /// Authenticates over an already-connected byte stream carrying length-prefixed frames,
    /// binding the answer to `channel`.
    pub async fn connect_stream_bound<S>(
        stream: S,
        channel: ClientChannel,
        signer: &dyn DeviceSigner,
        config: RelayClientConfig,
    ) -> Result<Self, Error>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, mut write) = tokio::io::split(stream);
        let (writer_tx, mut writer_rx) = mpsc::channel::<Out>(1024);
        let shared = Shared::new();
        let sh = shared.clone();
        let writer = tokio::spawn(async move {
            if write.write_all(&frame::TCP_PREAMBLE).await.is_err() {
                return;
            }
            while let Some(out) = writer_rx.recv().await {
                if let Some(frame) = sh.render(out) {
                    if frame::write_frame(&mut write, &frame).await.is_err() {
                        break;
                    }
                }
                // Coalesce whatever is already queued into one flush.
                while let Ok(out) = writer_rx.try_recv() {
                    let Some(frame) = sh.render(out) else {
                        continue;
                    };
                    if frame::write_frame(&mut write, &frame).await.is_err() {
                        return;
                    }
                }
                if write.flush().await.is_err() {
                    break;
                }
            }
            let _ = write.shutdown().await;
        });
        let max = config.max_frame_len;
        let reader = move |dispatch: Dispatcher| async move {
            let mut frames = FramedRead::with_capacity(read, RelayFrameCodec::new(max), 16 * 1024);
            while let Some(frame) = frames.next().await {
                match frame {
                    Ok(bytes) => {
                        if !dispatch.handle(&bytes).await {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "relay connection read failed");
                        break;
                    }
                }
            }
            dispatch.finish();
        };
        Self::start(signer, channel, config, shared, writer_tx, writer, reader).await
    }

    /// Connects over plaintext WebSocket (`ws://host:port/`) and authenticates, bound to the
    /// relay's key. For local use and tests: in production connect with `connect_wss` (feature
    /// `tls`).
    pub async fn connect_ws(
        addr: SocketAddr,
        signer: &dyn DeviceSigner,
        config: RelayClientConfig,
    ) -> Result<Self, Error> {
        let timeout = config.handshake_timeout;
        with_timeout(timeout, async {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Self::connect_ws_stream(stream, &format!("ws://{addr}/"), signer, config).await
        })
        .await
    }

    /// Runs the WebSocket client handshake for `url` over an already-connected plaintext
    /// stream, then authenticates ([`ClientChannel::Plaintext`]).
    pub async fn connect_ws_stream<S>(
        stream: S,
        url: &str,
        signer: &dyn DeviceSigner,
        config: RelayClientConfig,
    ) -> Result<Self, Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Self::connect_ws_stream_bound(stream, url, ClientChannel::Plaintext, signer, config).await
    }

    /// Runs the WebSocket client handshake for `url` over an already-connected stream, then
    /// authenticates, binding the answer to `channel`.
    pub async fn connect_ws_stream_bound<S>(
        stream: S,
        url: &str,
        channel: ClientChannel,
        signer: &dyn DeviceSigner,
        config: RelayClientConfig,
    ) -> Result<Self, Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let ws_config = ws_config(config.max_frame_len);
        let (ws, _response) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config))
                .await
                .map_err(|e| Error::WebSocket(e.to_string()))?;
        let (mut sink, mut source) = ws.split();
        let (writer_tx, mut writer_rx) = mpsc::channel::<Out>(1024);
        let shared = Shared::new();
        let sh = shared.clone();
        let writer = tokio::spawn(async move {
            while let Some(out) = writer_rx.recv().await {
                if let Some(frame) = sh.render(out) {
                    if sink.feed(WsMessage::Binary(frame.into())).await.is_err() {
                        return;
                    }
                }
                while let Ok(out) = writer_rx.try_recv() {
                    let Some(frame) = sh.render(out) else {
                        continue;
                    };
                    if sink.feed(WsMessage::Binary(frame.into())).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
            let _ = sink.close().await;
        });
        let reader = move |dispatch: Dispatcher| async move {
            while let Some(msg) = source.next().await {
                match msg {
                    Ok(WsMessage::Binary(bytes)) => {
                        if !dispatch.handle(&bytes).await {
                            break;
                        }
                    }
                    Ok(WsMessage::Close(_)) | Err(_) => break,
                    // Ping/pong are answered by tungstenite; text frames are not part of the
                    // protocol and are ignored.
                    Ok(_) => {}
                }
            }
            dispatch.finish();
        };
        Self::start(signer, channel, config, shared, writer_tx, writer, reader).await
    }

    async fn start<R, F>(
        signer: &dyn DeviceSigner,
        channel: ClientChannel,
        config: RelayClientConfig,
        shared: Arc<Shared>,
        writer_tx: mpsc::Sender<Out>,
        writer_task: tokio::task::JoinHandle<()>,
        reader: R,
    ) -> Result<Self, Error>
    where
        R: FnOnce(Dispatcher) -> F,
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let (deliveries_tx, deliveries) = mpsc::channel(config.delivery_buffer.max(1));
        let (control_tx, mut control_rx) = mpsc::channel(4);
        let dispatch = Dispatcher {
            shared: shared.clone(),
            deliveries: deliveries_tx,
            control: Some(control_tx),
        };
        let reader_task = tokio::spawn(reader(dispatch));
        let mut client = Self {
            device: signer.device_id(),
            config,
            writer: writer_tx,
            deliveries,
            shared,
            next_request: Arc::new(AtomicU64::new(1)),
            queued_at_auth: 0,
            relay_key: [0; RELAY_KEY_LEN],
            tasks: vec![reader_task, writer_task],
        };
        let timeout = client.config.handshake_timeout;
        let queued = with_timeout(timeout, async {
            let (nonce, relay_key) = match control_rx.recv().await {
                Some(server_frame::Frame::Challenge(c)) => {
                    if c.version != RELAY_PROTOCOL_VERSION {
                        return Err(Error::UnsupportedVersion(c.version));
                    }
                    let nonce = <[u8; AUTH_NONCE_LEN]>::try_from(c.nonce.as_slice())
                        .map_err(|_| Error::Malformed("challenge nonce must be 32 bytes"))?;
                    let relay_key = <[u8; RELAY_KEY_LEN]>::try_from(c.relay_key.as_slice())
                        .map_err(|_| Error::Malformed("challenge relay key must be 32 bytes"))?;
                    (nonce, relay_key)
                }
                Some(server_frame::Frame::Error(e)) => return Err(relay_error(e)),
                Some(_) => return Err(Error::Malformed("expected a challenge")),
                None => return Err(client.shared.closed_error()),
            };
            if client
                .config
                .relay_key
                .is_some_and(|pinned| pinned != relay_key)
            {
                tracing::warn!("relay key differs from the pinned key; not authenticating");
                return Err(Error::RelayKeyMismatch {
                    presented: relay_key,
                });
            }
            client.relay_key = relay_key;
            let binding = match channel {
                ClientChannel::Plaintext => ChannelBinding::RelayKey(relay_key),
                ClientChannel::Tls { exporter } => ChannelBinding::TlsExporter(exporter),
            };
            let signature = sign_challenge(signer, &nonce, &binding);
            client
                .write(client_frame::Frame::Auth(pb::AuthResponse {
                    version: RELAY_PROTOCOL_VERSION,
                    device_key: signer.device_id().as_bytes().to_vec(),
                    signature: signature.to_vec(),
                    binding_type: binding.binding_type() as i32,
                }))
                .await?;
            match control_rx.recv().await {
                Some(server_frame::Frame::AuthOk(ok)) => Ok(ok.queued),
                Some(server_frame::Frame::Error(e)) => Err(relay_error(e)),
                Some(_) => Err(Error::Malformed("expected auth result")),
                None => Err(client.shared.closed_error()),
            }
        })
        .await?;
        client.queued_at_auth = queued;
        if let Some(interval) = client.config.keepalive_interval {
            let aborts = client.tasks.iter().map(|t| t.abort_handle()).collect();
            client.tasks.push(tokio::spawn(keepalive(
                client.shared.clone(),
                client.writer.clone(),
                interval,
                client.config.request_timeout,
                aborts,
            )));
        }
        Ok(client)
    }

    /// How many envelopes the relay said were queued for this device when it connected.
    pub fn queued_at_auth(&self) -> u64 {
        self.queued_at_auth
    }

    /// The public key the relay showed in its challenge (pin it in
    /// [`RelayClientConfig::relay_key`] for the next connections).
    pub fn relay_key(&self) -> [u8; RELAY_KEY_LEN] {
        self.relay_key
    }

    /// Publishes this device's prekey bundle and adds one-time prekeys `(id, bytes)`.
    pub async fn upload_prekeys(
        &self,
        bundle: Vec<u8>,
        one_time_prekeys: Vec<(u64, Vec<u8>)>,
        replace_one_time_prekeys: bool,
    ) -> Result<(), Error> {
        let request_id = self.request_id();
        let frame = client_frame::Frame::UploadPrekeys(pb::UploadPrekeys {
            request_id,
            bundle,
            one_time_prekeys: one_time_prekeys
                .into_iter()
                .map(|(id, data)| pb::OneTimePrekey { id, data })
                .collect(),
            replace_one_time_prekeys,
        });
        match self.request(request_id, frame).await? {
            pb::response::Result::Done(_) => Ok(()),
            _ => Err(Error::Malformed("unexpected response to upload")),
        }
    }

    /// Fetches `device`'s prekey bundle (consuming one of its one-time prekeys).
    pub async fn fetch_bundle(&self, device: DeviceId) -> Result<FetchedBundle, Error> {
        let request_id = self.request_id();
        let frame = client_frame::Frame::FetchBundle(pb::FetchBundle {
            request_id,
            device: device.as_bytes().to_vec(),
        });
        match self.request(request_id, frame).await? {
            pb::response::Result::Bundle(b) => {
                let got = DeviceId::from_slice(&b.device)?;
                if got != device {
                    return Err(Error::Mismatch("relay returned another device's bundle"));
                }
                Ok(FetchedBundle {
                    device,
                    bundle: b.bundle,
                    one_time_prekey: b.one_time_prekey.map(|k| (k.id, k.data)),
                })
            }
            _ => Err(Error::Malformed("unexpected response to fetch")),
        }
    }

    /// Stores an envelope at the relay for its recipient; resolves once it is stored durably.
    pub async fn send_envelope(&self, envelope: Envelope) -> Result<(), Error> {
        let request_id = self.request_id();
        let frame = client_frame::Frame::Send(pb::Send {
            request_id,
            envelope: Some(envelope.into_proto()),
        });
        match self.request(request_id, frame).await? {
            pb::response::Result::Done(_) => Ok(()),
            _ => Err(Error::Malformed("unexpected response to send")),
        }
    }

    /// Queues an envelope for the relay and returns once it is in this connection's write
    /// queue (in call order), with a receipt that resolves when the relay answers that it is
    /// stored: several sends can be in flight at once ([`Transport::start_send`]).
    pub async fn start_send_envelope(&self, envelope: Envelope) -> Result<SendReceipt, Error> {
        let requester = self.requester();
        let request_id = self.request_id();
        let frame = client_frame::Frame::Send(pb::Send {
            request_id,
            envelope: Some(envelope.into_proto()),
        });
        let (tx, rx) = oneshot::channel();
        requester.shared.register(request_id, tx)?;
        if let Err(e) = requester.write(frame).await {
            requester.shared.pending().remove(&request_id);
            return Err(e);
        }
        Ok(Box::pin(async move {
            match requester.await_response(request_id, rx).await? {
                pb::response::Result::Done(_) => Ok(()),
                _ => Err(Error::Malformed("unexpected response to send")),
            }
        }))
    }

    /// Acknowledges deliveries so the relay deletes them. Acknowledgements made while the
    /// connection is busy writing are sent together in one frame.
    pub async fn ack_deliveries(&self, ids: Vec<u64>) -> Result<(), Error> {
        let was_empty = {
            let mut acks = self
                .shared
                .acks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let was_empty = acks.is_empty();
            acks.extend(ids);
            was_empty
        };
        if was_empty {
            self.writer
                .send(Out::Acks)
                .await
                .map_err(|_| self.shared.closed_error())?;
        }
        Ok(())
    }

    /// Round trip to the relay.
    pub async fn ping(&self) -> Result<(), Error> {
        let nonce = self.request_id();
        let (tx, rx) = oneshot::channel();
        self.shared.register(nonce, tx)?;
        self.write(client_frame::Frame::Ping(pb::Ping { nonce }))
            .await?;
        self.await_response(nonce, rx).await.map(|_| ())
    }

    /// Sends a raw, already-encoded frame (no length prefix). For tests of the relay's
    /// handling of hostile clients; normal code never needs it.
    pub async fn dangerous_send_raw_frame(&self, frame: Vec<u8>) -> Result<(), Error> {
        self.writer
            .send(Out::Frame(frame))
            .await
            .map_err(|_| self.shared.closed_error())
    }

    fn request_id(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed)
    }

    async fn write(&self, frame: client_frame::Frame) -> Result<(), Error> {
        self.requester().write(frame).await
    }

    async fn request(
        &self,
        request_id: u64,
        frame: client_frame::Frame,
    ) -> Result<pb::response::Result, Error> {
        self.requester().request(request_id, frame).await
    }

    async fn await_response(
        &self,
        id: u64,
        rx: oneshot::Receiver<Result<pb::response::Result, Error>>,
    ) -> Result<pb::response::Result, Error> {
        self.requester().await_response(id, rx).await
    }

    fn requester(&self) -> Requester {
        Requester {
            writer: self.writer.clone(),
            shared: self.shared.clone(),
            next_request: self.next_request.clone(),
            timeout: self.config.request_timeout,
        }
    }

    /// Asks the relay for short-lived TURN credentials for this device (TURN REST scheme:
    /// username `"<expiry>:<device>"`, password `base64(HMAC-SHA1(secret, username))`). A relay
    /// without TURN answers [`Error::Relay`] with [`ErrorCode::TurnUnavailable`].
    pub async fn turn_credentials(&self) -> Result<TurnGrant, Error> {
        self.requester().turn_credentials().await
    }
}

/// What a request needs from a connection; cloned out of a [`RelayClient`] so a
/// [`TurnSource`] can ask while the client is busy elsewhere.
#[derive(Clone)]
struct Requester {
    writer: mpsc::Sender<Out>,
    shared: Arc<Shared>,
    next_request: Arc<AtomicU64>,
    timeout: Duration,
}

impl Requester {
    async fn write(&self, frame: client_frame::Frame) -> Result<(), Error> {
        self.writer
            .send(Out::Frame(encode_client_frame(frame)))
            .await
            .map_err(|_| self.shared.closed_error())
    }

    async fn request(
        &self,
        request_id: u64,
        frame: client_frame::Frame,
    ) -> Result<pb::response::Result, Error> {
        let (tx, rx) = oneshot::channel();
        self.shared.register(request_id, tx)?;
        if let Err(e) = self.write(frame).await {
            self.shared.pending().remove(&request_id);
            return Err(e);
        }
        self.await_response(request_id, rx).await
    }

    async fn await_response(
        &self,
        id: u64,
        rx: oneshot::Receiver<Result<pb::response::Result, Error>>,
    ) -> Result<pb::response::Result, Error> {
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self.shared.closed_error()),
            Err(_) => {
                self.shared.pending().remove(&id);
                Err(Error::Timeout)
            }
        }
    }

    async fn turn_credentials(&self) -> Result<TurnGrant, Error> {
        let request_id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let frame = client_frame::Frame::GetTurnCredentials(pb::GetTurnCredentials { request_id });
        match self.request(request_id, frame).await? {
            pb::response::Result::TurnCredentials(t) => TurnGrant::from_proto(t),
            _ => Err(Error::Malformed(
                "unexpected response to a TURN credentials request",
            )),
        }
    }
}

/// A [`TurnSource`] asking the relay over a [`RelayClient`]'s connection.
struct RelayTurnSource(Requester);

impl TurnSource for RelayTurnSource {
    fn fetch(&self) -> futures_util::future::BoxFuture<'_, Result<TurnGrant, Error>> {
        Box::pin(self.0.turn_credentials())
    }
}

impl Transport for RelayClient {
    fn local_device(&self) -> DeviceId {
        self.device
    }

    async fn send(&mut self, envelope: Envelope) -> Result<(), Error> {
        self.send_envelope(envelope).await
    }

    async fn start_send(&mut self, envelope: Envelope) -> Result<SendReceipt, Error> {
        self.start_send_envelope(envelope).await
    }

    async fn recv(&mut self) -> Result<Received, Error> {
        match self.deliveries.recv().await {
            Some(r) => Ok(r),
            None => Err(self.shared.closed_error()),
        }
    }

    async fn ack(&mut self, tag: DeliveryTag) -> Result<(), Error> {
        self.ack_deliveries(vec![tag.0]).await
    }

    fn turn_source(&self) -> Option<Arc<dyn TurnSource>> {
        Some(Arc::new(RelayTurnSource(self.requester())))
    }
}

/// The reader task's side: routes each frame from the relay.
struct Dispatcher {
    shared: Arc<Shared>,
    deliveries: mpsc::Sender<Received>,
    control: Option<Control>,
}

impl Dispatcher {
    /// Handles one frame; `false` ends the connection.
    async fn handle(&self, bytes: &[u8]) -> bool {
        let frame = match decode_server_frame(bytes) {
            Ok(f) => f,
            Err(Error::UnsupportedMessage) => return true,
            Err(e) => {
                tracing::warn!(error = %e, "malformed frame from relay");
                return false;
            }
        };
        match frame {
            server_frame::Frame::Deliver(d) => {
                let Some(envelope) = d.envelope else {
                    tracing::warn!("relay delivered an empty envelope");
                    return true;
                };
                match Envelope::from_proto(envelope) {
                    Ok(envelope) => {
                        let received = Received {
                            envelope,
                            tag: DeliveryTag(d.delivery_id),
                        };
                        // Awaiting here applies backpressure to the relay when the app is slow.
                        self.deliveries.send(received).await.is_ok()
                    }
                    Err(e) => {
                        // Unusable: acknowledge nothing, the app never sees it. Log no bytes.
                        tracing::warn!(error = %e, delivery = d.delivery_id, "invalid envelope from relay");
                        true
                    }
                }
            }
            server_frame::Frame::Response(r) => {
                let result = match r.result {
                    Some(pb::response::Result::Error(e)) => Err(relay_error(e)),
                    Some(other) => Ok(other),
                    None => Err(Error::UnsupportedMessage),
                };
                if let Some(tx) = self.shared.pending().remove(&r.request_id) {
                    let _ = tx.send(result);
                }
                true
            }
            server_frame::Frame::Pong(p) => {
                if let Some(tx) = self.shared.pending().remove(&p.nonce) {
                    let _ = tx.send(Ok(pb::response::Result::Done(pb::Done {})));
                }
                true
            }
            server_frame::Frame::Error(e) => {
                let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified);
                tracing::debug!(?code, message = %e.message, "relay reported an error");
                *self
                    .shared
                    .close_reason
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some((code, e.message.clone()));
                if let Some(c) = &self.control {
                    let _ = c.try_send(server_frame::Frame::Error(e));
                }
                true
            }
            f @ (server_frame::Frame::Challenge(_) | server_frame::Frame::AuthOk(_)) => {
                if let Some(c) = &self.control {
                    let _ = c.try_send(f);
                }
                true
            }
        }
    }

    /// The connection ended: fail every waiting request.
    fn finish(self) {
        self.shared.close();
    }
}

impl Shared {
    /// Marks the connection ended and fails every waiting request.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let err = self.closed_error();
        for (_, tx) in self.pending().drain() {
            let _ = tx.send(Err(match &err {
                Error::Relay { code, message } => Error::Relay {
                    code: *code,
                    message: message.clone(),
                },
                _ => Error::Closed,
            }));
        }
    }
}

/// Keepalive pings use nonces with the top bit set, apart from request ids (which count up
/// from 1).
const KEEPALIVE_NONCE_BASE: u64 = 1 << 63;

/// Pings the relay every `interval`; closes the connection (aborting its reader and writer
/// tasks and failing waiting requests) when a pong does not come within `pong_timeout`.
async fn keepalive(
    shared: Arc<Shared>,
    writer: mpsc::Sender<Out>,
    interval: Duration,
    pong_timeout: Duration,
    connection_tasks: Vec<tokio::task::AbortHandle>,
) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u64.. {
        ticks.tick().await;
        let nonce = KEEPALIVE_NONCE_BASE | n;
        let (tx, rx) = oneshot::channel();
        if shared.register(nonce, tx).is_err() {
            return; // The connection already ended.
        }
        let ping = encode_client_frame(client_frame::Frame::Ping(pb::Ping { nonce }));
        if writer.send(Out::Frame(ping)).await.is_err() {
            return;
        }
        match tokio::time::timeout(pong_timeout, rx).await {
            Ok(_) => {}
            Err(_) => {
                shared.pending().remove(&nonce);
                tracing::warn!(
                    ?pong_timeout,
                    "the relay did not answer a keepalive ping; closing the connection"
                );
                for task in &connection_tasks {
                    task.abort();
                }
                shared.close();
                return;
            }
        }
    }
}

fn relay_error(e: pb::RelayError) -> Error {
    Error::Relay {
        code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
        message: e.message,
    }
}

pub(super) async fn with_timeout<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or(Err(Error::Timeout))
}

/// WebSocket limits matching the relay frame limit.
pub fn ws_config(max_frame_len: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_frame_len))
        .max_frame_size(Some(max_frame_len))
}

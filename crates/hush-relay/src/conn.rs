//! One client connection: authenticate, deliver the backlog, then serve requests and live
//! deliveries until the client leaves or breaks the protocol.
//!
//! Errors for a single request (forged sender, stale or duplicate envelope, rate limit, queue
//! full) are answered in a `Response` and the connection stays up. Errors that make the byte
//! stream untrustworthy (oversize or malformed frame, frames before authentication) are sent
//! as a top-level `RelayError` frame and the connection is closed. Nothing a client sends can
//! affect another client's connection.
//!
//! Deadlines after authentication: every write must complete within
//! [`RelayConfig::write_timeout`](crate::RelayConfig::write_timeout) (a device that stops
//! reading is cut off and its slot freed, instead of holding its task in a blocked write where
//! it never sees its slow-consumer kick), and a client that sends no frame for
//! [`RelayConfig::idle_timeout`](crate::RelayConfig::idle_timeout) is closed.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hush_signaling::device::{verify_challenge, ChannelBinding, AUTH_NONCE_LEN};
use hush_signaling::frame::{decode_client_frame, encode_deliver_frame, encode_server_frame};
use hush_signaling::proto::relay::{self as pb, client_frame, server_frame, ErrorCode};
use hush_signaling::transport::RELAY_PROTOCOL_VERSION;
use hush_signaling::{DeviceId, Envelope, Error};
use prost::Message as _;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::backend::Admission;
use crate::bundles::check_upload;
use crate::io::{self, Reader, Writer};
use crate::state::{lock, ConnHandle, Kick, Live, RecentIds, Refused};
use crate::store::{InsertDone, StoreError};
use crate::Shared;

/// The answer to a request over the connection's rate limit.
const RATE_LIMITED: Refusal = (ErrorCode::RateLimited, "rate limit exceeded");
/// Largest opaque bundle accepted.
const MAX_BUNDLE_LEN: usize = 16 * 1024;
/// Largest one-time prekey accepted.
const MAX_ONE_TIME_PREKEY_LEN: usize = 4 * 1024;
/// Most one-time prekeys in one upload.
const MAX_PREKEYS_PER_UPLOAD: usize = 200;
/// Most frames handled before flushing and yielding.
const MAX_EVENTS_PER_WAKE: usize = 128;

/// A connection counted at accept (open-connection gauge, per-address count); uncounts it
/// when the connection ends, however it ends.
pub(crate) struct ConnGuard(Arc<Shared>, std::net::IpAddr);

impl ConnGuard {
    /// Takes over a connection `Shared::admit` counted under address key `key`.
    pub(crate) fn new(shared: Arc<Shared>, key: std::net::IpAddr) -> Self {
        shared
            .metrics
            .connections_total
            .fetch_add(1, Ordering::Relaxed);
        Self(shared, key)
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.metrics.connections.fetch_sub(1, Ordering::Relaxed);
        self.0.release_ip(self.1);
    }
}

/// Serves one accepted socket to the end (counted at accept, uncounted when `_guard` drops).
pub(crate) async fn run(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    _guard: ConnGuard,
) {
    let _ = stream.set_nodelay(true);
    // One deadline for everything before authentication: an unauthenticated connection cannot
    // stay open longer, whatever it sends.
    let deadline = tokio::time::Instant::now() + shared.config.handshake_timeout;
    let (mut writer, mut frames, tls) = match tokio::time::timeout_at(
        deadline,
        io::accept(stream, shared.config.max_frame_len, shared.tls.as_ref()),
    )
    .await
    {
        Ok(Ok(io)) => io,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "connection setup failed");
            return;
        }
        Err(_) => return,
    };
    let device = match tokio::time::timeout_at(
        deadline,
        authenticate(&shared, tls, &mut writer, &mut frames),
    )
    .await
    {
        Ok(Ok(device)) => device,
        Ok(Err((code, message))) => {
            if code == ErrorCode::AuthFailed {
                shared.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
            } else {
                shared
                    .metrics
                    .protocol_violations
                    .fetch_add(1, Ordering::Relaxed);
            }
            tracing::debug!(%peer, ?code, message, "authentication refused");
            close_with(&mut writer, code, message, shared.config.write_timeout).await;
            return;
        }
        Err(_) => {
            close_with(
                &mut writer,
                ErrorCode::Timeout,
                "authentication timed out",
                shared.config.write_timeout,
            )
            .await;
            return;
        }
    };
    shared.metrics.authenticated.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%peer, %device, "authenticated");
    let mut conn = Conn::new(shared.clone(), device, writer);
    let reason = conn.serve(&mut frames).await;
    tracing::debug!(%peer, %device, ?reason, "connection closed");
    conn.finish().await;
    shared.metrics.authenticated.fetch_sub(1, Ordering::Relaxed);
}

/// Sends a last error and closes, giving up after `limit` (a client that does not read).
async fn close_with(writer: &mut Writer, code: ErrorCode, message: &str, limit: Duration) {
    let frame = encode_server_frame(server_frame::Frame::Error(pb::RelayError {
        code: code as i32,
        message: message.to_owned(),
    }));
    let _ = tokio::time::timeout(limit, async {
        let _ = writer.send(frame).await;
        writer.close().await;
    })
    .await;
}

type Refusal = (ErrorCode, &'static str);

/// Challenge–response: the client proves it holds the device key it claims, with a signature
/// bound to this connection: to `tls` (the TLS exporter binding) when the relay terminates
/// TLS, else to the relay's own key. An answer made on another connection (a man in the
/// middle forwarding a victim's answer onto his own connection to this relay) does not verify.
async fn authenticate(
    shared: &Shared,
    tls: Option<ChannelBinding>,
    writer: &mut Writer,
    frames: &mut Reader,
) -> Result<DeviceId, Refusal> {
    let nonce: [u8; AUTH_NONCE_LEN] = rand::random();
    let challenge = encode_server_frame(server_frame::Frame::Challenge(pb::Challenge {
        version: RELAY_PROTOCOL_VERSION,
        nonce: nonce.to_vec(),
        relay_key: shared.relay_key.to_vec(),
    }));
    let sent = async {
        writer.send(challenge).await?;
        writer.flush().await
    };
    if sent.await.is_err() {
        return Err((ErrorCode::Internal, "write failed"));
    }
    let bytes = match frames.next().await {
        Some(Ok(bytes)) => bytes,
        Some(Err(e)) => return Err(stream_refusal(&e)),
        None => return Err((ErrorCode::Unauthenticated, "closed before authenticating")),
    };
    let auth = match decode_client_frame(&bytes) {
        Ok(client_frame::Frame::Auth(a)) => a,
        Ok(_) => return Err((ErrorCode::Unauthenticated, "authenticate first")),
        Err(_) => return Err((ErrorCode::MalformedFrame, "malformed frame")),
    };
    if auth.version != RELAY_PROTOCOL_VERSION {
        // Version 1 answers bind no channel: refused, so they cannot be relayed.
        return Err((
            ErrorCode::UnsupportedVersion,
            "unsupported relay protocol version (version 2, channel-bound, is required)",
        ));
    }
    let expected = tls.unwrap_or(ChannelBinding::RelayKey(shared.relay_key));
    if auth.binding_type != expected.binding_type() as i32 {
        return Err(match expected {
            ChannelBinding::TlsExporter(_) => (
                ErrorCode::AuthFailed,
                "this listener is TLS: bind the answer to the TLS exporter",
            ),
            ChannelBinding::RelayKey(_) => (
                ErrorCode::AuthFailed,
                "this listener is plaintext: bind the answer to the relay key",
            ),
        });
    }
    let device = DeviceId::from_slice(&auth.device_key)
        .map_err(|_| (ErrorCode::AuthFailed, "bad device key"))?;
    verify_challenge(&device, &nonce, &expected, &auth.signature).map_err(|_| {
        (
            ErrorCode::AuthFailed,
            "signature does not verify for this connection",
        )
    })?;
    Ok(device)
}

fn stream_refusal(e: &Error) -> Refusal {
    match e {
        Error::FrameTooLarge { .. } => (ErrorCode::FrameTooLarge, "frame too large"),
        _ => (ErrorCode::MalformedFrame, "malformed stream"),
    }
}

/// Token bucket for per-connection rate limiting.
struct Bucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl Bucket {
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Why the serve loop ended.
#[derive(Debug)]
#[allow(
    dead_code,
    reason = "the fields are read through Debug in the close log"
)]
enum End {
    ClientClosed,
    Kicked(Kick),
    Violation(ErrorCode),
    WriteFailed,
    /// A write did not complete within the write timeout (the client stopped reading).
    WriteTimedOut,
    /// No frame from the client within the idle timeout.
    Idle,
}

struct Conn {
    shared: Arc<Shared>,
    device: DeviceId,
    conn_id: u64,
    writer: Writer,
    bucket: Bucket,
    /// This device's replay cache, shared with its other connections.
    recent: Arc<Mutex<RecentIds>>,
    /// When the client's last frame arrived (for the idle timeout).
    last_read: Instant,
    done_tx: mpsc::UnboundedSender<InsertDone>,
    done_rx: mpsc::UnboundedReceiver<InsertDone>,
}

impl Conn {
    fn new(shared: Arc<Shared>, device: DeviceId, writer: Writer) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let conn_id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let recent = shared.replay_caches.of(&device);
        let rate = f64::from(shared.config.rate_limit_per_sec);
        let burst = f64::from(shared.config.rate_limit_burst.max(1));
        Self {
            device,
            conn_id,
            writer,
            bucket: Bucket {
                tokens: burst,
                last: Instant::now(),
                rate,
                burst,
            },
            recent,
            last_read: Instant::now(),
            done_tx,
            done_rx,
            shared,
        }
    }

    async fn serve(&mut self, frames: &mut Reader) -> End {
        let (live_tx, mut live_rx) = mpsc::channel(self.shared.config.delivery_buffer.max(1));
        let (kick, mut kicked) = oneshot::channel();
        self.shared
            .fanout
            .register(
                self.device,
                ConnHandle {
                    conn_id: self.conn_id,
                    live: live_tx,
                    kick: Mutex::new(Some(kick)),
                },
            )
            .await;

        // Backlog: everything committed before this point. Live pushes queue up meanwhile.
        let backlog = self
            .shared
            .store
            .load(self.device, self.shared.config.max_queue_per_device)
            .await;
        let Ok(backlog) = backlog else {
            self.send_error(ErrorCode::Internal, "cannot load queue")
                .await;
            return End::Violation(ErrorCode::Internal);
        };
        let ok = encode_server_frame(server_frame::Frame::AuthOk(pb::AuthOk {
            queued: backlog.rows.len() as u64,
        }));
        if let Err(end) = self.write(ok).await {
            return end;
        }
        // Envelopes in the backlog may also be among the live pushes (pushed at admission, or
        // after their commit): each is delivered once.
        let mut in_backlog = HashSet::with_capacity(backlog.rows.len());
        for (id, envelope) in backlog.rows {
            in_backlog.insert(id);
            if let Err(end) = self.deliver(encode_deliver_frame(id, &envelope)).await {
                return end;
            }
        }
        if let Err(end) = self.flush().await {
            return end;
        }
        // Created once (not per loop turn); pushed back by frames as they arrive.
        let idle_timeout = self.shared.config.idle_timeout;
        let idle = tokio::time::sleep(idle_timeout);
        tokio::pin!(idle);

        loop {
            let mut handled = 0;
            let step = tokio::select! {
                biased;
                why = &mut kicked => {
                    // Shutdown kicks every connection, including ones registered later.
                    let why = why.unwrap_or(Kick::Shutdown);
                    let (code, msg) = match why {
                        Kick::SlowConsumer => (ErrorCode::SlowConsumer, "delivery queue overflowed; reconnect"),
                        Kick::Replaced => (ErrorCode::Unspecified, "connection replaced"),
                        Kick::Shutdown => (ErrorCode::Unspecified, "relay shutting down"),
                    };
                    self.send_error(code, msg).await;
                    Err(End::Kicked(why))
                }
                Some(done) = self.done_rx.recv() => self.on_done(done).await,
                Some(live) = live_rx.recv() => self.on_live(live, &in_backlog).await,
                event = frames.next() => self.on_read(event).await,
                () = &mut idle => {
                    let deadline = self.last_read + idle_timeout;
                    if deadline > Instant::now() {
                        // Frames arrived since the timer was set.
                        idle.as_mut().reset(deadline.into());
                        continue;
                    }
                    self.shared.metrics.idle_timeouts.fetch_add(1, Ordering::Relaxed);
                    self.send_error(ErrorCode::Timeout, "idle timeout: no frame received")
                        .await;
                    Err(End::Idle)
                }
            };
            if let Err(end) = step {
                return end;
            }
            handled += 1;
            // Drain what is already waiting before one flush.
            while handled < MAX_EVENTS_PER_WAKE {
                let step = if let Ok(done) = self.done_rx.try_recv() {
                    self.on_done(done).await
                } else if let Ok(live) = live_rx.try_recv() {
                    self.on_live(live, &in_backlog).await
                } else if let Some(event) = frames.try_next() {
                    self.on_read(Some(event)).await
                } else {
                    break;
                };
                if let Err(end) = step {
                    return end;
                }
                handled += 1;
            }
            if let Err(end) = self.flush().await {
                return end;
            }
        }
    }

    async fn finish(mut self) {
        self.shared.fanout.unregister(&self.device, self.conn_id);
        let max_age = self.shared.config.max_envelope_age.as_millis() as u64;
        let device = self.device;
        let shared = self.shared.clone();
        // Our handle on the cache goes before the release, so that it can see it unused.
        self.recent = Arc::default();
        shared.replay_caches.release(&device, now_ms(), max_age);
        let limit = shared.config.write_timeout;
        let _ = tokio::time::timeout(limit, self.writer.close()).await;
    }

    /// Queues one frame; fails the connection if the write does not complete in time.
    async fn write(&mut self, frame: Vec<u8>) -> Result<(), End> {
        match tokio::time::timeout(self.shared.config.write_timeout, self.writer.send(frame)).await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::WriteFailed),
            Err(_) => Err(self.write_timed_out()),
        }
    }

    /// Writes out the queued frames; fails the connection if that does not complete in time.
    async fn flush(&mut self) -> Result<(), End> {
        match tokio::time::timeout(self.shared.config.write_timeout, self.writer.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::WriteFailed),
            Err(_) => Err(self.write_timed_out()),
        }
    }

    fn write_timed_out(&self) -> End {
        self.shared
            .metrics
            .write_timeouts
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(device = %self.device, "write timed out; closing");
        End::WriteTimedOut
    }

    async fn deliver(&mut self, frame: Vec<u8>) -> Result<(), End> {
        self.write(frame).await?;
        self.shared
            .metrics
            .envelopes_delivered
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn on_live(&mut self, live: Live, in_backlog: &HashSet<u64>) -> Result<(), End> {
        if !in_backlog.contains(&live.id) {
            self.deliver(live.frame).await?;
        }
        Ok(())
    }

    async fn on_done(&mut self, done: InsertDone) -> Result<(), End> {
        let result = match done.result {
            Ok(_) => {
                self.shared
                    .metrics
                    .envelopes_received
                    .fetch_add(1, Ordering::Relaxed);
                self.shared
                    .metrics
                    .observe_send_latency(done.received.elapsed());
                Ok(())
            }
            Err(e) => Err(refusal(&e)),
        };
        self.respond(
            done.request_id,
            result.map(|()| pb::response::Result::Done(pb::Done {})),
        )
        .await
    }

    async fn on_read(&mut self, event: Option<io::ReadEvent>) -> Result<(), End> {
        let bytes = match event {
            None => return Err(End::ClientClosed),
            Some(Ok(bytes)) => {
                self.last_read = Instant::now();
                bytes
            }
            Some(Err(e)) => {
                let (code, msg) = stream_refusal(&e);
                self.shared
                    .metrics
                    .protocol_violations
                    .fetch_add(1, Ordering::Relaxed);
                self.send_error(code, msg).await;
                return Err(End::Violation(code));
            }
        };
        let frame = match decode_client_frame(&bytes) {
            Ok(f) => f,
            Err(Error::UnsupportedMessage) => {
                // A frame type from a newer client: refuse it, keep the connection.
                self.shared.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                self.send_error(ErrorCode::UnsupportedVersion, "unknown frame type")
                    .await;
                return Ok(());
            }
            Err(_) => {
                self.shared
                    .metrics
                    .protocol_violations
                    .fetch_add(1, Ordering::Relaxed);
                self.send_error(ErrorCode::MalformedFrame, "malformed frame")
                    .await;
                return Err(End::Violation(ErrorCode::MalformedFrame));
            }
        };
        match frame {
            client_frame::Frame::Send(send) => self.on_send(send).await,
            client_frame::Frame::Ack(ack) => {
                let n = ack.delivery_ids.len() as u64;
                if n > 0 {
                    self.shared
                        .metrics
                        .envelopes_acked
                        .fetch_add(n, Ordering::Relaxed);
                    let acked = self.shared.store.ack(self.device, ack.delivery_ids);
                    if acked.await.is_err() {
                        return Err(End::Violation(ErrorCode::Internal));
                    }
                }
                Ok(())
            }
            client_frame::Frame::UploadPrekeys(up) => self.on_upload(up).await,
            client_frame::Frame::FetchBundle(fetch) => self.on_fetch(fetch).await,
            client_frame::Frame::GetTurnCredentials(get) => self.on_turn(get).await,
            client_frame::Frame::Ping(ping) => {
                if !self.bucket.take(Instant::now()) {
                    self.shared
                        .metrics
                        .rate_limited
                        .fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                let pong =
                    encode_server_frame(server_frame::Frame::Pong(pb::Pong { nonce: ping.nonce }));
                self.write(pong).await
            }
            client_frame::Frame::Auth(_) => {
                self.shared.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                self.send_error(ErrorCode::Unspecified, "already authenticated")
                    .await;
                Ok(())
            }
        }
    }

    fn rate_limited(&mut self) -> bool {
        if self.bucket.take(Instant::now()) {
            false
        } else {
            self.shared
                .metrics
                .rate_limited
                .fetch_add(1, Ordering::Relaxed);
            true
        }
    }

    async fn on_send(&mut self, send: pb::Send) -> Result<(), End> {
        let received = Instant::now();
        let request_id = send.request_id;
        if self.rate_limited() {
            return self.respond(request_id, Err(RATE_LIMITED)).await;
        }
        let Some(envelope) = send.envelope else {
            return self
                .respond(request_id, Err((ErrorCode::InvalidEnvelope, "no envelope")))
                .await;
        };
        // Encoded as received (after the checks below pass): the same bytes as re-encoding the
        // validated envelope, without copying its fields.
        let encoded = envelope.encode_to_vec();
        let envelope = match Envelope::from_proto(envelope) {
            Ok(e) => e,
            Err(Error::UnsupportedVersion(_) | Error::UnsupportedMessage) => {
                return self
                    .respond(
                        request_id,
                        Err((ErrorCode::UnsupportedVersion, "unsupported envelope")),
                    )
                    .await
            }
            Err(_) => {
                return self
                    .respond(
                        request_id,
                        Err((ErrorCode::InvalidEnvelope, "invalid envelope")),
                    )
                    .await
            }
        };
        if envelope.sender != self.device {
            tracing::debug!(device = %self.device, claimed = %envelope.sender, "forged sender refused");
            return self
                .respond(
                    request_id,
                    Err((
                        ErrorCode::ForgedSender,
                        "sender is not the authenticated device",
                    )),
                )
                .await;
        }
        let cfg = &self.shared.config;
        let refused = lock(&self.recent).check(
            envelope.id,
            envelope.timestamp_ms,
            now_ms(),
            cfg.max_envelope_age.as_millis() as u64,
            cfg.max_clock_skew.as_millis() as u64,
            cfg.replay_cache_per_device,
        );
        match refused {
            Ok(()) => {}
            Err(Refused::Stale) => {
                return self
                    .respond(
                        request_id,
                        Err((ErrorCode::Stale, "envelope timestamp out of window")),
                    )
                    .await
            }
            Err(Refused::Duplicate) => {
                return self
                    .respond(
                        request_id,
                        Err((ErrorCode::Duplicate, "envelope already accepted")),
                    )
                    .await
            }
        }
        let recipient = envelope.recipient;
        // Pushed to the recipient now if online; answered once committed or acknowledged.
        let admission = Admission {
            sender: self.device,
            recipient,
            envelope: encoded,
            message_id: envelope.id,
            request_id,
            received,
            done: self.done_tx.clone(),
        };
        match self.shared.store.admit(admission).await {
            Ok(()) => Ok(()),
            // The store is gone (its thread or its database): nothing more can be served.
            Err(StoreError::Database) => Err(End::Violation(ErrorCode::Internal)),
            Err(e) => {
                let counter = match e {
                    StoreError::UnknownRecipient => Some(&self.shared.metrics.unknown_recipients),
                    StoreError::SenderQuota => Some(&self.shared.metrics.sender_quota_refusals),
                    _ => None,
                };
                if let Some(counter) = counter {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!(device = %self.device, %recipient, error = %e, "send refused");
                self.respond(request_id, Err(refusal(&e))).await
            }
        }
    }

    async fn on_upload(&mut self, up: pb::UploadPrekeys) -> Result<(), End> {
        let request_id = up.request_id;
        if self.rate_limited() {
            return self.respond(request_id, Err(RATE_LIMITED)).await;
        }
        if up.bundle.is_empty() || up.bundle.len() > MAX_BUNDLE_LEN {
            return self
                .respond(
                    request_id,
                    Err((ErrorCode::InvalidEnvelope, "bad bundle size")),
                )
                .await;
        }
        if up.one_time_prekeys.len() > MAX_PREKEYS_PER_UPLOAD
            || up
                .one_time_prekeys
                .iter()
                .any(|k| k.data.is_empty() || k.data.len() > MAX_ONE_TIME_PREKEY_LEN)
        {
            return self
                .respond(
                    request_id,
                    Err((ErrorCode::InvalidEnvelope, "bad one-time prekeys")),
                )
                .await;
        }
        let device = self.device;
        let bundle = up.bundle;
        let one_time_prekeys: Vec<(u64, Vec<u8>)> = up
            .one_time_prekeys
            .into_iter()
            .map(|k| (k.id, k.data))
            .collect();
        // Signature checks are CPU work (up to a few hundred bundles): off the runtime's
        // threads.
        let checked = tokio::task::spawn_blocking(move || {
            check_upload(&device, &bundle, &one_time_prekeys).map(|()| (bundle, one_time_prekeys))
        })
        .await;
        let (bundle, one_time_prekeys) = match checked {
            Ok(Ok(checked)) => checked,
            Ok(Err(e)) => {
                self.shared
                    .metrics
                    .invalid_bundles
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%device, error = %e, "prekey upload refused");
                let message = match e {
                    crate::bundles::BundleError::Decode { .. } => "bundle does not decode",
                    crate::bundles::BundleError::Verify { .. } => "bundle does not verify",
                    crate::bundles::BundleError::NotTheUploader { .. } => {
                        "bundle belongs to another device"
                    }
                    crate::bundles::BundleError::Mismatch { .. } => {
                        "bundles carry different identities"
                    }
                };
                return self
                    .respond(request_id, Err((ErrorCode::InvalidBundle, message)))
                    .await;
            }
            Err(_) => {
                return self
                    .respond(
                        request_id,
                        Err((ErrorCode::Internal, "bundle check failed")),
                    )
                    .await;
            }
        };
        let upload = self.shared.store.upload(
            device,
            bundle,
            one_time_prekeys,
            up.replace_one_time_prekeys,
        );
        // Uploads are rare; waiting inline keeps the code simple.
        let result = match upload.await {
            Ok(()) => Ok(pb::response::Result::Done(pb::Done {})),
            Err(StoreError::TooManyPrekeys) => {
                Err((ErrorCode::QueueFull, "too many one-time prekeys stored"))
            }
            _ => Err((ErrorCode::Internal, "storage failed")),
        };
        self.respond(request_id, result).await
    }

    async fn on_fetch(&mut self, fetch: pb::FetchBundle) -> Result<(), End> {
        let request_id = fetch.request_id;
        if self.rate_limited() {
            return self.respond(request_id, Err(RATE_LIMITED)).await;
        }
        let Ok(device) = DeviceId::from_slice(&fetch.device) else {
            return self
                .respond(
                    request_id,
                    Err((ErrorCode::InvalidEnvelope, "bad device id")),
                )
                .await;
        };
        // A one-time prekey only while the requester's quota lasts; past it, the base bundle
        // (sessions still start; the target's one-time prekeys are not drained).
        let one_time = self.shared.fetch_quotas.take(
            &self.device,
            self.shared.config.prekey_fetches_per_minute,
            Instant::now(),
        );
        if !one_time {
            self.shared
                .metrics
                .prekey_fetches_limited
                .fetch_add(1, Ordering::Relaxed);
        }
        let result = match self.shared.store.fetch(device, one_time).await {
            Ok(b) => Ok(pb::response::Result::Bundle(pb::Bundle {
                device: device.as_bytes().to_vec(),
                bundle: b.bundle,
                one_time_prekey: b
                    .one_time_prekey
                    .map(|(id, data)| pb::OneTimePrekey { id, data }),
            })),
            Err(StoreError::NotFound) => Err((ErrorCode::NotFound, "no bundle for that device")),
            _ => Err((ErrorCode::Internal, "storage failed")),
        };
        self.respond(request_id, result).await
    }

    async fn on_turn(&mut self, get: pb::GetTurnCredentials) -> Result<(), End> {
        let request_id = get.request_id;
        if self.rate_limited() {
            return self.respond(request_id, Err(RATE_LIMITED)).await;
        }
        let Some(turn) = self.shared.config.turn.as_ref() else {
            return self
                .respond(
                    request_id,
                    Err((ErrorCode::TurnUnavailable, "no TURN server configured")),
                )
                .await;
        };
        let grant = turn.grant(&self.device, SystemTime::now());
        self.shared
            .metrics
            .turn_grants
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(expires = grant.expires_unix, "TURN credentials granted");
        let result = pb::response::Result::TurnCredentials(pb::TurnCredentials {
            username: grant.username,
            password: grant.password.to_string(),
            expires_unix: grant.expires_unix,
            urls: turn.urls().to_vec(),
        });
        self.respond(request_id, Ok(result)).await
    }

    async fn respond(
        &mut self,
        request_id: u64,
        result: Result<pb::response::Result, Refusal>,
    ) -> Result<(), End> {
        let result = match result {
            Ok(r) => r,
            Err((code, message)) => {
                self.shared.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                pb::response::Result::Error(pb::RelayError {
                    code: code as i32,
                    message: message.to_owned(),
                })
            }
        };
        let frame = encode_server_frame(server_frame::Frame::Response(pb::Response {
            request_id,
            result: Some(result),
        }));
        self.write(frame).await
    }

    async fn send_error(&mut self, code: ErrorCode, message: &str) {
        let frame = encode_server_frame(server_frame::Frame::Error(pb::RelayError {
            code: code as i32,
            message: message.to_owned(),
        }));
        if self.write(frame).await.is_ok() {
            let _ = self.flush().await;
        }
    }
}

/// The answer to a send the queue refused.
fn refusal(e: &StoreError) -> Refusal {
    match e {
        StoreError::QueueFull => (ErrorCode::QueueFull, "recipient queue is full"),
        StoreError::SenderQuota => (
            ErrorCode::SenderQuotaExceeded,
            "too many envelopes queued from you for this recipient",
        ),
        StoreError::UnknownRecipient => (
            ErrorCode::UnknownRecipient,
            "recipient has published no bundle",
        ),
        StoreError::Duplicate => (ErrorCode::Duplicate, "envelope already accepted"),
        StoreError::Evicted => (
            ErrorCode::SenderQuotaExceeded,
            "dropped from the recipient's full queue: you have the most envelopes queued there",
        ),
        _ => (ErrorCode::Internal, "storage failed"),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

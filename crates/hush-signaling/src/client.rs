//! [`SignalingClient`]: seals outgoing call messages, opens incoming ones, drops replays and
//! stale messages, and hands typed events to the call layer.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::device::DeviceId;
use crate::envelope::{CiphertextKind, Envelope, MessageId};
use crate::message::{CallMessage, Content};
use crate::replay::ReplayGuard;
use crate::seal::Sealer;
use crate::transport::{SendReceipt, Transport};
use crate::Error;

/// A wall clock in Unix milliseconds. Injected so tests can move time.
pub trait WallClock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// Settings for a [`SignalingClient`].
#[derive(Clone)]
#[non_exhaustive]
pub struct SignalingConfig {
    /// Messages older than this are dropped as stale (a call offer from minutes ago must not
    /// ring). Default 120 s.
    pub max_age: Duration,
    /// Messages stamped further than this in the future are dropped. Default 30 s.
    pub max_clock_skew: Duration,
    /// Message ids remembered for replay detection (and at most as many per-sender window
    /// edges, see [`ReplayGuard`]). Default 65 536.
    pub replay_capacity: usize,
    /// The clock.
    pub clock: Arc<dyn WallClock>,
}

impl Default for SignalingConfig {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(120),
            max_clock_skew: Duration::from_secs(30),
            replay_capacity: 65_536,
            clock: Arc::new(SystemClock),
        }
    }
}

impl std::fmt::Debug for SignalingConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalingConfig")
            .field("max_age", &self.max_age)
            .field("max_clock_skew", &self.max_clock_skew)
            .field("replay_capacity", &self.replay_capacity)
            .finish_non_exhaustive()
    }
}

/// A call message received from a peer, authenticated and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingMessage {
    /// The sending device.
    pub from: DeviceId,
    /// The message id.
    pub id: MessageId,
    /// When the sender sealed it (sender's clock, Unix ms).
    pub sent_at_ms: u64,
    /// Whether it arrived as a session-establishing PreKey message.
    pub kind: CiphertextKind,
    /// The message.
    pub message: CallMessage,
}

/// What [`SignalingClient::recv`] returns.
#[derive(Debug)]
#[non_exhaustive]
pub enum SignalingEvent {
    /// A valid message for the call layer.
    Message(IncomingMessage),
    /// An envelope that was dropped (and acknowledged, so it is not redelivered). The call
    /// layer normally ignores these; they are surfaced for logging and tests.
    Dropped {
        /// Claimed sender (unauthenticated when the reason is an opening failure).
        from: DeviceId,
        /// Why: [`Error::Replay`], [`Error::Stale`], [`Error::Open`], [`Error::Mismatch`],
        /// [`Error::WrongRecipient`], [`Error::UnsupportedVersion`], ...
        reason: Error,
    },
}

/// Counters of a [`SignalingClient`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SignalingStats {
    /// Messages sealed and handed to the transport.
    pub sent: u64,
    /// Messages delivered to the caller as [`SignalingEvent::Message`].
    pub received: u64,
    /// Replays dropped.
    pub dropped_replay: u64,
    /// Stale or future-dated messages dropped.
    pub dropped_stale: u64,
    /// Messages dropped for any other reason (failed to open, malformed, mismatched routing).
    pub dropped_invalid: u64,
}

/// Sealed call signaling over a [`Transport`].
///
/// ```text
///  send(peer, CallMessage) ─ Content{ids, routing copy, message} ─ Sealer::seal ─ Envelope ─ Transport
///  recv() ◄─ checks ◄─ Content::decode ◄─ Sealer::open ◄─ replay/stale pre-check ◄─ Transport
/// ```
///
/// Every received envelope is acknowledged once processed, whether it was delivered or
/// dropped, so a relay never redelivers it; duplicates from at-least-once delivery are dropped
/// by the replay guard.
pub struct SignalingClient<T, S> {
    transport: T,
    sealer: S,
    local: DeviceId,
    guard: ReplayGuard,
    config: SignalingConfig,
    stats: SignalingStats,
}

impl<T, S> std::fmt::Debug for SignalingClient<T, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalingClient")
            .field("local", &self.local)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<T: Transport, S: Sealer> SignalingClient<T, S> {
    /// A client with default settings.
    pub fn new(transport: T, sealer: S) -> Self {
        Self::with_config(transport, sealer, SignalingConfig::default())
    }

    /// A client with `config`.
    pub fn with_config(transport: T, sealer: S, config: SignalingConfig) -> Self {
        let guard = ReplayGuard::new(
            config.max_age.as_millis() as u64,
            config.max_clock_skew.as_millis() as u64,
            config.replay_capacity,
        );
        Self {
            local: transport.local_device(),
            transport,
            sealer,
            guard,
            config,
            stats: SignalingStats::default(),
        }
    }

    /// This device.
    pub fn local_device(&self) -> DeviceId {
        self.local
    }

    /// The transport (e.g. to fetch bundles from a relay).
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The transport, mutably.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// The sealer (e.g. to start a session from a fetched bundle).
    pub fn sealer_mut(&mut self) -> &mut S {
        &mut self.sealer
    }

    /// Counters.
    pub fn stats(&self) -> SignalingStats {
        self.stats
    }

    /// Seals `message` for `to` and sends it. Returns the message id.
    pub async fn send(&mut self, to: DeviceId, message: CallMessage) -> Result<MessageId, Error> {
        let envelope = self.seal(to, message).await?;
        let id = envelope.id;
        self.transport.send(envelope).await?;
        self.stats.sent += 1;
        Ok(id)
    }

    /// Seals `message` for `to` and hands it to the transport without waiting for the
    /// transport to take it ([`Transport::start_send`]): returns the message id and a receipt
    /// that resolves once it has. Messages are sent in call order; this client can go on
    /// receiving and sending while receipts are outstanding.
    pub async fn start_send(
        &mut self,
        to: DeviceId,
        message: CallMessage,
    ) -> Result<(MessageId, SendReceipt), Error> {
        let envelope = self.seal(to, message).await?;
        let id = envelope.id;
        let receipt = self.transport.start_send(envelope).await?;
        self.stats.sent += 1;
        Ok((id, receipt))
    }

    /// Seals `message` for `to` into an envelope without sending it (for transports the app
    /// drives itself).
    pub async fn seal(&mut self, to: DeviceId, message: CallMessage) -> Result<Envelope, Error> {
        let content = Content {
            message_id: rand::random(),
            sender: self.local,
            recipient: to,
            timestamp_ms: self.config.clock.now_ms(),
            message,
        };
        let mut plaintext = content.encode();
        let sealed = self.sealer.seal(&to, &plaintext).await;
        // The plaintext holds ICE credentials and key-agreement data: wipe it.
        plaintext.iter_mut().for_each(|b| *b = 0);
        let sealed = sealed?;
        Ok(Envelope {
            id: content.message_id,
            sender: self.local,
            recipient: to,
            timestamp_ms: content.timestamp_ms,
            kind: sealed.kind,
            ciphertext: sealed.ciphertext,
        })
    }

    /// Waits for the next envelope, opens and checks it, acknowledges it, and returns a
    /// [`SignalingEvent`]. Errors are transport failures only.
    ///
    /// Cancel-safe while waiting for the transport; if cancelled while opening, the envelope
    /// stays unacknowledged and a relay redelivers it on the next connection.
    pub async fn recv(&mut self) -> Result<SignalingEvent, Error> {
        let received = self.transport.recv().await?;
        let from = received.envelope.sender;
        let event = match self.process(received.envelope).await {
            Ok(message) => {
                self.stats.received += 1;
                SignalingEvent::Message(message)
            }
            Err(reason) => {
                match reason {
                    Error::Replay => self.stats.dropped_replay += 1,
                    Error::Stale => self.stats.dropped_stale += 1,
                    _ => self.stats.dropped_invalid += 1,
                }
                tracing::debug!(%from, error = %reason, "dropped signaling message");
                SignalingEvent::Dropped { from, reason }
            }
        };
        self.transport.ack(received.tag).await?;
        Ok(event)
    }

    /// Opens and checks one envelope (also usable directly with an app-driven transport).
    pub async fn process(&mut self, envelope: Envelope) -> Result<IncomingMessage, Error> {
        if envelope.recipient != self.local {
            return Err(Error::WrongRecipient);
        }
        let now = self.config.clock.now_ms();
        // Cheap checks before the expensive (and ratchet-advancing) open.
        self.guard
            .check(now, &envelope.sender, &envelope.id, envelope.timestamp_ms)?;
        let mut plaintext = self
            .sealer
            .open(&envelope.sender, envelope.kind, &envelope.ciphertext)
            .await?;
        let content = Content::decode(&plaintext);
        plaintext.iter_mut().for_each(|b| *b = 0);
        let content = content?;
        if content.message_id != envelope.id {
            return Err(Error::Mismatch("message id"));
        }
        if content.sender != envelope.sender {
            return Err(Error::Mismatch("sender"));
        }
        if content.recipient != envelope.recipient {
            return Err(Error::Mismatch("recipient"));
        }
        if content.timestamp_ms != envelope.timestamp_ms {
            return Err(Error::Mismatch("timestamp"));
        }
        self.guard.accept(
            now,
            &content.sender,
            &content.message_id,
            content.timestamp_ms,
        )?;
        Ok(IncomingMessage {
            from: content.sender,
            id: content.message_id,
            sent_at_ms: content.timestamp_ms,
            kind: envelope.kind,
            message: content.message,
        })
    }
}

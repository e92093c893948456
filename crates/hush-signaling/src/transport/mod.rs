//! The [`Transport`] trait and its implementations.
//!
//! A transport moves [`Envelope`]s between devices: an in-memory network for tests and
//! simulators ([`MemoryNetwork`]), and a connection to a hush relay over TCP or WebSocket
//! ([`RelayClient`]; inside TLS in production, feature `tls`). An app can implement
//! [`Transport`] on its own connection (for example its existing chat socket).

mod memory;
mod relay;
#[cfg(feature = "tls")]
mod tls;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

pub use memory::{MemoryNetwork, MemoryTransport};
pub use relay::{
    ws_config, ClientChannel, FetchedBundle, RelayClient, RelayClientConfig, RELAY_PROTOCOL_VERSION,
};
#[cfg(feature = "tls")]
pub use tls::{tls_exporter, RelayTls, TlsRoots};

use crate::device::DeviceId;
use crate::envelope::Envelope;
use crate::Error;

/// Identifies one received envelope for [`Transport::ack`].
///
/// For a relay it is the relay's delivery id; transports without acknowledgements use 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeliveryTag(pub u64);

/// An envelope handed over by a transport, with the tag to acknowledge it by.
#[derive(Debug, Clone)]
pub struct Received {
    /// The envelope, as it arrived (not yet opened or checked).
    pub envelope: Envelope,
    /// Acknowledge with this once the envelope has been processed.
    pub tag: DeliveryTag,
}

/// Moves sealed envelopes between devices.
///
/// Delivery may be at-least-once: a transport with a durable queue (the relay) redelivers an
/// envelope until it is acknowledged, and [`crate::SignalingClient`] drops the duplicates.
pub trait Transport: Send {
    /// The address of this end.
    fn local_device(&self) -> DeviceId;

    /// Sends an envelope to `envelope.recipient`. Resolves once the transport has taken
    /// responsibility for it (for a relay: it is stored durably).
    fn send(&mut self, envelope: Envelope) -> impl Future<Output = Result<(), Error>> + Send;

    /// Hands an envelope to the transport without waiting for its answer: resolves once the
    /// envelope is on its way (queued for the wire, in the order of the calls), with an
    /// [`Acceptance`] that resolves when the transport has taken responsibility for it, as
    /// [`send`](Self::send) would. Several envelopes can thus be in flight at once, and the
    /// caller can go on receiving while a relay waits for their recipients.
    ///
    /// The default sends and waits (for transports whose send has no separate answer).
    fn send_queued(
        &mut self,
        envelope: Envelope,
    ) -> impl Future<Output = Result<Acceptance, Error>> + Send {
        async move {
            self.send(envelope).await?;
            Ok(Acceptance::ready(Ok(())))
        }
    }

    /// Waits for the next envelope addressed to this device.
    ///
    /// Must be cancel-safe (usable in `tokio::select!`): if the future is dropped before it
    /// completes, no envelope is lost.
    fn recv(&mut self) -> impl Future<Output = Result<Received, Error>> + Send;

    /// Acknowledges a received envelope so the transport may forget it.
    fn ack(&mut self, tag: DeliveryTag) -> impl Future<Output = Result<(), Error>> + Send;
}

/// The answer to an envelope handed over with [`Transport::send_queued`]: resolves once the
/// transport has taken responsibility for the envelope (for a relay: stored durably or
/// acknowledged by its recipient), or with why it did not. Independent of the transport's
/// borrow, so it can be awaited elsewhere (a spawned task) while the transport goes on.
pub struct Acceptance(Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'static>>);

impl Acceptance {
    /// An answer that is already known.
    pub fn ready(result: Result<(), Error>) -> Self {
        Self(Box::pin(std::future::ready(result)))
    }

    /// An answer that `future` will give.
    pub fn new(future: impl Future<Output = Result<(), Error>> + Send + 'static) -> Self {
        Self(Box::pin(future))
    }
}

impl Future for Acceptance {
    type Output = Result<(), Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

impl std::fmt::Debug for Acceptance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptance").finish_non_exhaustive()
    }
}

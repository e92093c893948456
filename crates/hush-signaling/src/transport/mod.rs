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
mod turn;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use memory::{MemoryNetwork, MemoryTransport};
pub use relay::{
    ws_config, ClientChannel, FetchedBundle, RelayClient, RelayClientConfig, RELAY_PROTOCOL_VERSION,
};
#[cfg(feature = "tls")]
pub use tls::{tls_exporter, RelayTls, TlsRoots};
pub use turn::{TurnGrant, TurnSource};

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

/// A send handed to a transport but not yet confirmed: resolves once the transport has taken
/// responsibility for the envelope (for a relay: stored durably or acknowledged by the
/// recipient), like [`Transport::send`] does.
pub type SendReceipt = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

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

    /// Hands `envelope` over for sending and returns without waiting for the transport to take
    /// responsibility for it: the returned [`SendReceipt`] resolves when it has. Envelopes are
    /// sent in the order of these calls, and the transport stays usable (more sends,
    /// [`recv`](Self::recv), [`ack`](Self::ack)) while receipts are outstanding, so sends
    /// pipeline instead of each waiting a round trip. Default: waits for
    /// [`send`](Self::send) and returns a receipt that is already resolved.
    fn start_send(
        &mut self,
        envelope: Envelope,
    ) -> impl Future<Output = Result<SendReceipt, Error>> + Send {
        async move {
            self.send(envelope).await?;
            Ok(Box::pin(std::future::ready(Ok(()))) as SendReceipt)
        }
    }

    /// Waits for the next envelope addressed to this device.
    ///
    /// Must be cancel-safe (usable in `tokio::select!`): if the future is dropped before it
    /// completes, no envelope is lost.
    fn recv(&mut self) -> impl Future<Output = Result<Received, Error>> + Send;

    /// Acknowledges a received envelope so the transport may forget it.
    fn ack(&mut self, tag: DeliveryTag) -> impl Future<Output = Result<(), Error>> + Send;

    /// Where this transport gets short-lived TURN credentials, if it can (a [`RelayClient`]
    /// asks its relay: [`RelayClient::turn_credentials`]). The `hush` facade fetches and refreshes
    /// them itself through it. Default: none.
    fn turn_source(&self) -> Option<Arc<dyn TurnSource>> {
        None
    }
}

//! An in-process transport for tests and simulators.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::{DeliveryTag, Received, Transport};
use crate::device::DeviceId;
use crate::envelope::Envelope;
use crate::proto::relay::ErrorCode;
use crate::Error;

/// Most envelopes queued for one device before sends to it fail with `QueueFull`.
const MAX_QUEUE: usize = 4096;

#[derive(Default)]
struct Inner {
    queues: HashMap<DeviceId, VecDeque<Envelope>>,
    notify: HashMap<DeviceId, Arc<Notify>>,
    recording: Option<Vec<Envelope>>,
}

/// An in-memory "relay": envelopes sent to a device are queued until that device's
/// [`MemoryTransport`] receives them, whether or not it exists yet.
///
/// It can record every envelope it routes ([`MemoryNetwork::start_recording`]), which lets
/// tests check what a relay gets to see.
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryNetwork").finish_non_exhaustive()
    }
}

impl MemoryNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means another test thread panicked; the data is still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The transport for `device`. Several handles for one device share its queue.
    pub fn endpoint(&self, device: DeviceId) -> MemoryTransport {
        let notify = self.lock().notify.entry(device).or_default().clone();
        MemoryTransport {
            network: self.clone(),
            device,
            notify,
        }
    }

    /// Starts recording every envelope routed from now on.
    pub fn start_recording(&self) {
        self.lock().recording.get_or_insert_with(Vec::new);
    }

    /// Every envelope routed since [`Self::start_recording`].
    pub fn recorded(&self) -> Vec<Envelope> {
        self.lock().recording.clone().unwrap_or_default()
    }

    /// Puts an envelope on the wire as if someone sent it (for tampering and replay tests).
    pub fn inject(&self, envelope: Envelope) -> Result<(), Error> {
        let recipient = envelope.recipient;
        let notify = {
            let mut inner = self.lock();
            if let Some(rec) = inner.recording.as_mut() {
                rec.push(envelope.clone());
            }
            let queue = inner.queues.entry(recipient).or_default();
            if queue.len() >= MAX_QUEUE {
                return Err(Error::Relay {
                    code: ErrorCode::QueueFull,
                    message: "recipient queue full".into(),
                });
            }
            queue.push_back(envelope);
            inner.notify.entry(recipient).or_default().clone()
        };
        notify.notify_one();
        Ok(())
    }

    /// Envelopes waiting for `device`.
    pub fn queued(&self, device: &DeviceId) -> usize {
        self.lock().queues.get(device).map_or(0, VecDeque::len)
    }
}

/// One device's end of a [`MemoryNetwork`].
#[derive(Debug, Clone)]
pub struct MemoryTransport {
    network: MemoryNetwork,
    device: DeviceId,
    notify: Arc<Notify>,
}

impl Transport for MemoryTransport {
    fn local_device(&self) -> DeviceId {
        self.device
    }

    async fn send(&mut self, envelope: Envelope) -> Result<(), Error> {
        if envelope.sender != self.device {
            return Err(Error::Relay {
                code: ErrorCode::ForgedSender,
                message: "envelope sender is not this device".into(),
            });
        }
        self.network.inject(envelope)
    }

    async fn recv(&mut self) -> Result<Received, Error> {
        loop {
            // Register interest before checking, so a notify between the check and the wait
            // is not lost. Cancel-safe: nothing is dequeued until it is returned.
            let notified = self.notify.notified();
            if let Some(envelope) = self
                .network
                .lock()
                .queues
                .get_mut(&self.device)
                .and_then(VecDeque::pop_front)
            {
                return Ok(Received {
                    envelope,
                    tag: DeliveryTag(0),
                });
            }
            notified.await;
        }
    }

    async fn ack(&mut self, _tag: DeliveryTag) -> Result<(), Error> {
        Ok(())
    }
}

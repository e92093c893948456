//! The two seams between a connection and the rest of the relay: the durable [`Store`] (queue,
//! prekey directory) and the [`FanOut`] ("device D has a new envelope", who is online).
//!
//! Two implementations of each:
//! - single node (the default, no server needed): [`SqliteStore`] (the store thread of
//!   [`crate::store`] with the admission table of [`crate::pending`]) and the in-process
//!   [`Registry`](crate::state::Registry);
//! - cluster (feature `cluster`): PostgreSQL and NATS, in `crate::cluster`.
//!
//! Both keep the same promise: a sender is answered "accepted" (through the
//! [`InsertDone`] queue of its connection) only once its envelope is durable or acknowledged by
//! its recipient.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use hush_signaling::DeviceId;
use tokio::sync::{mpsc, oneshot};

use crate::pending::Pending;
use crate::state::{ConnHandle, Registry};
use crate::store::{Backlog, BundleOut, InsertDone, Op, StoreError, StoreResult};

/// A boxed future, for the object-safe traits below.
pub(crate) type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An envelope a connection wants accepted.
pub(crate) struct Admission {
    pub(crate) sender: DeviceId,
    pub(crate) recipient: DeviceId,
    /// The encoded envelope.
    pub(crate) envelope: Vec<u8>,
    /// The envelope's message id (end-to-end, chosen by the sender).
    #[cfg_attr(
        not(feature = "cluster"),
        allow(dead_code, reason = "the cluster store keeps replay state by it")
    )]
    pub(crate) message_id: [u8; 16],
    pub(crate) request_id: u64,
    pub(crate) received: Instant,
    /// Where the sender's answer goes.
    pub(crate) done: mpsc::UnboundedSender<InsertDone>,
}

/// The durable state every node shares: envelope queue and prekey directory.
pub(crate) trait Store: Send + Sync {
    /// Admits an envelope. `Err` refuses it at once (nothing was stored); `Ok` means the
    /// answer (accepted, or refused later) arrives on `admission.done`, "accepted" only once
    /// the envelope is durable or acknowledged by its recipient.
    fn admit(&self, admission: Admission) -> BoxFut<'_, Result<(), StoreError>>;
    /// `device` acknowledged these delivery ids: they leave its queue.
    fn ack(&self, device: DeviceId, ids: Vec<u64>) -> BoxFut<'_, StoreResult<()>>;
    /// Up to `limit` of `device`'s queued envelopes, in id order.
    fn load(&self, device: DeviceId, limit: u32) -> BoxFut<'_, StoreResult<Backlog>>;
    /// Stores `device`'s bundle and one-time prekeys (replacing the old prekeys if `replace`).
    fn upload(
        &self,
        device: DeviceId,
        bundle: Vec<u8>,
        one_time_prekeys: Vec<(u64, Vec<u8>)>,
        replace: bool,
    ) -> BoxFut<'_, StoreResult<()>>;
    /// `device`'s bundle, with one one-time prekey (handed out once) if `one_time`.
    fn fetch(&self, device: DeviceId, one_time: bool) -> BoxFut<'_, StoreResult<BundleOut>>;
}

/// Who is online, and how a new envelope reaches its recipient's connection.
pub(crate) trait FanOut: Send + Sync {
    /// Registers a connection of `device` on this node; an older connection of the same device
    /// (on any node) is told to close. Once this returns, every envelope committed for `device`
    /// afterwards is pushed to it.
    fn register(&self, device: DeviceId, handle: ConnHandle) -> BoxFut<'_, ()>;
    /// Removes `device` if it is still registered by connection `conn_id`.
    fn unregister(&self, device: &DeviceId, conn_id: u64);
    /// Tells every connection on this node to close (shutdown).
    fn kick_all(&self);
}

impl FanOut for Registry {
    fn register(&self, device: DeviceId, handle: ConnHandle) -> BoxFut<'_, ()> {
        self.register(device, handle);
        Box::pin(std::future::ready(()))
    }

    fn unregister(&self, device: &DeviceId, conn_id: u64) {
        self.unregister(device, conn_id);
    }

    fn kick_all(&self) {
        self.kick_all();
    }
}

/// The single-node store: SQLite behind the store thread, with the in-memory admission table.
pub(crate) struct SqliteStore {
    pub(crate) ops: mpsc::Sender<Op>,
    pub(crate) pending: Arc<Pending>,
    pub(crate) registry: Arc<Registry>,
}

impl SqliteStore {
    async fn send(&self, op: Op) -> StoreResult<()> {
        self.ops.send(op).await.map_err(|_| StoreError::Database)
    }

    async fn ask<T>(&self, op: Op, rx: oneshot::Receiver<StoreResult<T>>) -> StoreResult<T> {
        self.send(op).await?;
        rx.await.map_err(|_| StoreError::Database)?
    }
}

impl Store for SqliteStore {
    fn admit(&self, a: Admission) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let recipient = a.recipient;
            // Pushed to the recipient now if online; answered once committed or acknowledged.
            let admitted = self.pending.admit(
                &self.registry,
                a.sender,
                recipient,
                a.envelope,
                a.request_id,
                a.received,
                &a.done,
            )?;
            if let Some(sender) = admitted.evict_stored {
                self.send(Op::Evict { recipient, sender }).await?;
            }
            Ok(())
        })
    }

    fn ack(&self, device: DeviceId, ids: Vec<u64>) -> BoxFut<'_, StoreResult<()>> {
        Box::pin(async move {
            // Envelopes not yet written are settled in memory; the rest are deleted.
            let ids = self.pending.ack(&device, ids);
            if !ids.is_empty() {
                self.send(Op::Ack { device, ids }).await?;
            }
            Ok(())
        })
    }

    fn load(&self, device: DeviceId, limit: u32) -> BoxFut<'_, StoreResult<Backlog>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            self.ask(
                Op::Load {
                    device,
                    limit,
                    reply,
                },
                rx,
            )
            .await
        })
    }

    fn upload(
        &self,
        device: DeviceId,
        bundle: Vec<u8>,
        one_time_prekeys: Vec<(u64, Vec<u8>)>,
        replace: bool,
    ) -> BoxFut<'_, StoreResult<()>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            let op = Op::Upload {
                device,
                bundle,
                one_time_prekeys,
                replace,
                reply,
            };
            self.ask(op, rx).await
        })
    }

    fn fetch(&self, device: DeviceId, one_time: bool) -> BoxFut<'_, StoreResult<BundleOut>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            let op = Op::Fetch {
                device,
                one_time,
                reply,
            };
            self.ask(op, rx).await
        })
    }
}

//! The cluster backend (feature `cluster`): any number of relay nodes share one PostgreSQL
//! database (the durable queue, the prekey directory and the per-sender replay state) and one
//! NATS server (new-envelope notices and presence between nodes). No node is special; a
//! device may connect to any of them.
//!
//! Sending: the node that receives an envelope checks and inserts it in one PostgreSQL
//! transaction (the recipient's bundle row is locked first, which serialises sends to one
//! recipient across nodes and makes the queue bounds exact), answers the sender "accepted" once
//! that transaction committed, and then publishes the envelope on the recipient's NATS subject
//! `hush.dev.<device id in hex>`.
//!
//! Receiving: a node subscribes to the subject of each device connected to it (before loading
//! the device's backlog, so nothing committed later is missed) and pushes what arrives to the
//! connection; a new connection also publishes a takeover notice on the subject, and the node
//! holding an older connection of the same device closes it. NATS is at-most-once: while a
//! node's NATS connection is down (and once right after it comes back) each connected device's
//! queue is polled from PostgreSQL every [`ClusterConfig::poll_interval`], so delivery falls
//! back to polling and nothing committed is lost. An envelope may so reach a connection twice
//! (pushed and polled, or after a reconnect): each connection filters repeated delivery ids,
//! and the client's replay guard filters repeated message ids before the app sees them.
//!
//! Unlike the single-node store there is no commit delay: every envelope is written before its
//! sender is answered, and deleted when acknowledged.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use hush_signaling::frame::encode_deliver_frame;
use hush_signaling::DeviceId;
use tokio::sync::Semaphore;
use tokio_postgres::{Client, NoTls};

use crate::backend::{Admission, BoxFut, FanOut, Store};
use crate::metrics::Metrics;
use crate::state::{lock, ConnHandle, Kick, Live, Registry};
use crate::store::{Backlog, BundleOut, InsertDone, StoreError, StoreResult};

/// Where the cluster's shared servers are, and how a node uses them.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClusterConfig {
    /// PostgreSQL connection string (`postgresql://user@host:port/db` or key=value form).
    pub postgres: String,
    /// NATS server URL (`nats://host:port`).
    pub nats: String,
    /// PostgreSQL connections this node keeps open at most.
    pub pool_size: usize,
    /// How often each connected device's queue is polled while NATS is unreachable.
    pub poll_interval: Duration,
}

impl ClusterConfig {
    /// A node of the cluster on these servers, with a pool of 8 connections and a 1 s poll.
    pub fn new(postgres: impl Into<String>, nats: impl Into<String>) -> Self {
        Self {
            postgres: postgres.into(),
            nats: nats.into(),
            pool_size: 8,
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// Why the cluster backend could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// PostgreSQL could not be reached or the schema not created.
    #[error("postgres: {}", detail(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// The NATS server could not be reached.
    #[error("nats: {0}")]
    Nats(#[from] async_nats::ConnectError),
}

/// Longest wait for NATS when publishing or subscribing: NATS is best effort (polling covers
/// what it misses), so a slow NATS must not hold up senders or connections.
const NATS_WAIT: Duration = Duration::from_millis(250);
/// Takes a transaction-scoped advisory lock while the schema is created (nodes starting
/// together would race on `CREATE TABLE IF NOT EXISTS`).
const SCHEMA_LOCK: i64 = 0x6875_7368_0016;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS queue (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recipient BYTEA NOT NULL,
    sender BYTEA NOT NULL,
    envelope BYTEA NOT NULL,
    admitted TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS queue_by_recipient ON queue (recipient, id);
CREATE INDEX IF NOT EXISTS queue_by_age ON queue (admitted);
CREATE TABLE IF NOT EXISTS bundles (
    device BYTEA PRIMARY KEY,
    bundle BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS one_time_prekeys (
    device BYTEA NOT NULL,
    id BIGINT NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (device, id)
);
CREATE TABLE IF NOT EXISTS seen (
    sender BYTEA NOT NULL,
    message_id BYTEA NOT NULL,
    stamped TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (sender, message_id)
);
CREATE INDEX IF NOT EXISTS seen_by_age ON seen (stamped);
";

/// A few PostgreSQL connections, reconnected when they break.
struct Pool {
    config: tokio_postgres::Config,
    idle: Mutex<Vec<Client>>,
    permits: Semaphore,
}

/// A connection taken from the [`Pool`]; goes back on drop unless it broke.
struct Pooled<'a> {
    pool: &'a Pool,
    client: Option<Client>,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        // Set from construction until drop.
        self.client.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl std::ops::DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            if !client.is_closed() {
                lock(&self.pool.idle).push(client);
            }
        }
    }
}

impl Pool {
    fn new(url: &str, size: usize) -> Result<Self, tokio_postgres::Error> {
        let mut config: tokio_postgres::Config = url.parse()?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        Ok(Self {
            config,
            idle: Mutex::default(),
            permits: Semaphore::new(size.max(1)),
        })
    }

    async fn connect(&self) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "postgres connection ended");
            }
        });
        Ok(client)
    }

    async fn get(&self) -> StoreResult<Pooled<'_>> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Database)?;
        let reused = loop {
            let client = lock(&self.idle).pop();
            match client {
                Some(c) if c.is_closed() => continue,
                other => break other,
            }
        };
        let client = match reused {
            Some(c) => c,
            None => self.connect().await.map_err(db_error)?,
        };
        Ok(Pooled {
            pool: self,
            client: Some(client),
            _permit: permit,
        })
    }
}

/// A PostgreSQL error with the server's message (the error's own text says only "db error").
fn detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// Logs a PostgreSQL error and turns it into the store's error.
fn db_error(e: tokio_postgres::Error) -> StoreError {
    tracing::warn!(error = %detail(&e), "postgres operation failed");
    StoreError::Database
}

/// Limits the PostgreSQL store enforces (the same as the single-node store's).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PgLimits {
    pub(crate) max_queue_per_device: u32,
    pub(crate) max_queue_per_sender: u32,
    pub(crate) max_one_time_prekeys: u32,
    pub(crate) max_envelope_age: Duration,
    /// How long message ids are remembered for replay refusal.
    pub(crate) replay_window: Duration,
}

/// The durable store on PostgreSQL.
pub(crate) struct PgStore {
    pool: Pool,
    nats: async_nats::Client,
    limits: PgLimits,
    metrics: Arc<Metrics>,
}

/// The NATS subject of `device`.
fn subject(device: &DeviceId) -> String {
    let mut s = String::with_capacity(9 + 64);
    s.push_str("hush.dev.");
    for b in device.as_bytes() {
        s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    s
}

/// What travels on a device's subject.
enum Notice {
    /// A committed envelope: its delivery id and encoding.
    Deliver(u64, Bytes),
    /// A connection of the device opened on node `.0` as connection `.1`.
    Takeover(u64, u64),
}

impl Notice {
    fn encode(&self) -> Bytes {
        let mut out = Vec::new();
        match self {
            Self::Deliver(id, envelope) => {
                out.push(b'D');
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(envelope);
            }
            Self::Takeover(node, conn) => {
                out.push(b'T');
                out.extend_from_slice(&node.to_be_bytes());
                out.extend_from_slice(&conn.to_be_bytes());
            }
        }
        Bytes::from(out)
    }

    fn decode(payload: &Bytes) -> Option<Self> {
        let (&kind, rest) = payload.split_first()?;
        let word = |b: &[u8]| -> Option<u64> { Some(u64::from_be_bytes(b.try_into().ok()?)) };
        match kind {
            b'D' if rest.len() >= 8 => Some(Self::Deliver(word(&rest[..8])?, payload.slice(9..))),
            b'T' if rest.len() == 16 => Some(Self::Takeover(word(&rest[..8])?, word(&rest[8..])?)),
            _ => None,
        }
    }
}

/// Why an admission was refused inside its transaction.
enum Verdict {
    Accepted(u64),
    Refused(StoreError),
}

impl PgStore {
    /// Connects, creates the schema if needed.
    pub(crate) async fn connect(
        config: &ClusterConfig,
        nats: async_nats::Client,
        limits: PgLimits,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ClusterError> {
        let pool = Pool::new(&config.postgres, config.pool_size)?;
        let client = pool.connect().await?;
        // Created in one transaction, so its last index exists only if all of it does. A node
        // (re)starting beside busy nodes must not take the schema's locks: its CREATE INDEX
        // statements would deadlock with their sends.
        let created = client
            .query_one("SELECT to_regclass('seen_by_age') IS NOT NULL", &[])
            .await?
            .get::<_, bool>(0);
        if !created {
            client
                .batch_execute(&format!(
                    "BEGIN; SELECT pg_advisory_xact_lock({SCHEMA_LOCK}); {SCHEMA} COMMIT;"
                ))
                .await?;
        }
        lock(&pool.idle).push(client);
        Ok(Self {
            pool,
            nats,
            limits,
            metrics,
        })
    }

    /// Checks and inserts one envelope in a transaction; committed when this returns
    /// `Accepted`.
    async fn insert(&self, a: &Admission) -> Result<Verdict, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await.map_err(db_error)?;
        let (rcpt, sender) = (
            a.recipient.as_bytes().as_slice(),
            a.sender.as_bytes().as_slice(),
        );
        // The recipient must have a bundle; its row lock serialises sends to it cluster-wide.
        let known = tx
            .query_opt(
                "SELECT 1 FROM bundles WHERE device = $1 FOR UPDATE",
                &[&rcpt],
            )
            .await
            .map_err(db_error)?;
        if known.is_none() {
            return Ok(Verdict::Refused(StoreError::UnknownRecipient));
        }
        // Replays across nodes: a message id is accepted once per sender.
        let fresh = tx
            .execute(
                "INSERT INTO seen (sender, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&sender, &a.message_id.as_slice()],
            )
            .await
            .map_err(db_error)?;
        if fresh == 0 {
            return Ok(Verdict::Refused(StoreError::Duplicate));
        }
        let row = tx
            .query_one(
                "SELECT count(*) FILTER (WHERE sender = $2), count(*) FROM queue WHERE recipient = $1",
                &[&rcpt, &sender],
            )
            .await
            .map_err(db_error)?;
        let (mine, total): (i64, i64) = (row.get(0), row.get(1));
        if mine >= i64::from(self.limits.max_queue_per_sender) {
            return Ok(Verdict::Refused(StoreError::SenderQuota));
        }
        if total >= i64::from(self.limits.max_queue_per_device) {
            // Full: evict the heaviest sender's oldest envelope if it has at least two more
            // queued than this sender, as the single-node store does.
            let heaviest = tx
                .query_opt(
                    "SELECT sender, count(*) AS n FROM queue WHERE recipient = $1 GROUP BY sender ORDER BY n DESC LIMIT 1",
                    &[&rcpt],
                )
                .await
                .map_err(db_error)?;
            match heaviest {
                Some(h) if h.get::<_, i64>(1) > mine + 1 => {
                    let heavy: Vec<u8> = h.get(0);
                    tx.execute(
                        "DELETE FROM queue WHERE id = (SELECT id FROM queue WHERE recipient = $1 AND sender = $2 ORDER BY id LIMIT 1)",
                        &[&rcpt, &heavy],
                    )
                    .await
                    .map_err(db_error)?;
                    self.metrics
                        .envelopes_evicted
                        .fetch_add(1, Ordering::Relaxed);
                }
                _ => return Ok(Verdict::Refused(StoreError::QueueFull)),
            }
        }
        let id: i64 = tx
            .query_one(
                "INSERT INTO queue (recipient, sender, envelope) VALUES ($1, $2, $3) RETURNING id",
                &[&rcpt, &sender, &a.envelope],
            )
            .await
            .map_err(db_error)?
            .get(0);
        tx.commit().await.map_err(db_error)?;
        Ok(Verdict::Accepted(u64::try_from(id).unwrap_or(0)))
    }

    /// Deletes envelopes admitted longer than `max_envelope_age` ago and message ids older
    /// than the replay window.
    pub(crate) async fn sweep(&self) -> StoreResult<(u64, u64)> {
        let client = self.pool.get().await?;
        let expired = client
            .execute(
                "DELETE FROM queue WHERE admitted < now() - make_interval(secs => $1)",
                &[&self.limits.max_envelope_age.as_secs_f64()],
            )
            .await
            .map_err(db_error)?;
        let forgotten = client
            .execute(
                "DELETE FROM seen WHERE stamped < now() - make_interval(secs => $1)",
                &[&self.limits.replay_window.as_secs_f64()],
            )
            .await
            .map_err(db_error)?;
        Ok((expired, forgotten))
    }

    /// Announces a committed envelope on its recipient's subject (best effort).
    async fn announce(&self, recipient: &DeviceId, id: u64, envelope: Vec<u8>) {
        let notice = Notice::Deliver(id, Bytes::from(envelope)).encode();
        let publish = self.nats.publish(subject(recipient), notice);
        match tokio::time::timeout(NATS_WAIT, publish).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "new-envelope notice not published"),
            Err(_) => tracing::debug!("new-envelope notice timed out"),
        }
    }
}

impl Store for PgStore {
    fn admit(&self, a: Admission) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let verdict = self.insert(&a).await;
            let result = match verdict {
                Ok(Verdict::Accepted(id)) => Ok(id),
                Ok(Verdict::Refused(e)) | Err(e) => Err(e),
            };
            let counter = match &result {
                Ok(_) => Some(&self.metrics.envelopes_stored),
                Err(StoreError::UnknownRecipient) => Some(&self.metrics.unknown_recipients),
                Err(StoreError::SenderQuota) => Some(&self.metrics.sender_quota_refusals),
                Err(_) => None,
            };
            if let Some(counter) = counter {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            // Committed (or refused): answer the sender first, then tell the recipient's node.
            let _ = a.done.send(InsertDone {
                request_id: a.request_id,
                received: a.received,
                result: result.clone(),
            });
            if let Ok(id) = result {
                self.announce(&a.recipient, id, a.envelope).await;
            }
            Ok(())
        })
    }

    fn ack(&self, device: DeviceId, ids: Vec<u64>) -> BoxFut<'_, StoreResult<()>> {
        Box::pin(async move {
            let ids: Vec<i64> = ids
                .into_iter()
                .filter_map(|id| i64::try_from(id).ok())
                .collect();
            let client = self.pool.get().await?;
            client
                .execute(
                    "DELETE FROM queue WHERE recipient = $1 AND id = ANY($2)",
                    &[&device.as_bytes().as_slice(), &ids],
                )
                .await
                .map_err(db_error)?;
            Ok(())
        })
    }

    fn load(&self, device: DeviceId, limit: u32) -> BoxFut<'_, StoreResult<Backlog>> {
        Box::pin(async move {
            let client = self.pool.get().await?;
            let rows = client
                .query(
                    "SELECT id, envelope FROM queue WHERE recipient = $1 ORDER BY id LIMIT $2",
                    &[&device.as_bytes().as_slice(), &i64::from(limit)],
                )
                .await
                .map_err(db_error)?;
            let rows = rows
                .into_iter()
                .map(|r| (u64::try_from(r.get::<_, i64>(0)).unwrap_or(0), r.get(1)))
                .collect();
            Ok(Backlog { rows })
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
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await.map_err(db_error)?;
            let dev = device.as_bytes().as_slice();
            if replace {
                tx.execute("DELETE FROM one_time_prekeys WHERE device = $1", &[&dev])
                    .await
                    .map_err(db_error)?;
            }
            let existing: i64 = tx
                .query_one(
                    "SELECT count(*) FROM one_time_prekeys WHERE device = $1",
                    &[&dev],
                )
                .await
                .map_err(db_error)?
                .get(0);
            let total =
                existing.saturating_add(i64::try_from(one_time_prekeys.len()).unwrap_or(i64::MAX));
            if total > i64::from(self.limits.max_one_time_prekeys) {
                return Err(StoreError::TooManyPrekeys);
            }
            tx.execute(
                "INSERT INTO bundles (device, bundle) VALUES ($1, $2) ON CONFLICT (device) DO UPDATE SET bundle = EXCLUDED.bundle",
                &[&dev, &bundle],
            )
            .await
            .map_err(db_error)?;
            for (id, data) in one_time_prekeys {
                let id = i64::from_ne_bytes(id.to_ne_bytes());
                tx.execute(
                    "INSERT INTO one_time_prekeys (device, id, data) VALUES ($1, $2, $3) ON CONFLICT (device, id) DO UPDATE SET data = EXCLUDED.data",
                    &[&dev, &id, &data],
                )
                .await
                .map_err(db_error)?;
            }
            tx.commit().await.map_err(db_error)
        })
    }

    fn fetch(&self, device: DeviceId, one_time: bool) -> BoxFut<'_, StoreResult<BundleOut>> {
        Box::pin(async move {
            let client = self.pool.get().await?;
            let dev = device.as_bytes().as_slice();
            let Some(row) = client
                .query_opt("SELECT bundle FROM bundles WHERE device = $1", &[&dev])
                .await
                .map_err(db_error)?
            else {
                return Err(StoreError::NotFound);
            };
            let bundle: Vec<u8> = row.get(0);
            if !one_time {
                return Ok(BundleOut {
                    bundle,
                    one_time_prekey: None,
                });
            }
            // Handed out once, also when two nodes fetch at the same moment.
            let otpk = client
                .query_opt(
                    "DELETE FROM one_time_prekeys WHERE (device, id) = (SELECT device, id FROM one_time_prekeys WHERE device = $1 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id, data",
                    &[&dev],
                )
                .await
                .map_err(db_error)?
                .map(|r| (u64::from_ne_bytes(r.get::<_, i64>(0).to_ne_bytes()), r.get(1)));
            Ok(BundleOut {
                bundle,
                one_time_prekey: otpk,
            })
        })
    }
}

/// Delivery ids a device's forwarder pushed recently (bounded, oldest forgotten first).
struct RecentDeliveries {
    set: HashSet<u64>,
    order: VecDeque<u64>,
    capacity: usize,
}

impl RecentDeliveries {
    fn new(capacity: usize) -> Self {
        Self {
            set: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// `true` the first time `id` is seen.
    fn first(&mut self, id: u64) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

/// The fan-out over NATS: local connections in a [`Registry`], one subscription per connected
/// device.
pub(crate) struct NatsFanOut {
    nats: async_nats::Client,
    registry: Arc<Registry>,
    store: Arc<PgStore>,
    /// This node's id in takeover notices (random).
    node: u64,
    /// The forwarder of each device connected here: `(connection id, task)`.
    forwarders: Mutex<HashMap<DeviceId, (u64, tokio::task::JoinHandle<()>)>>,
    poll_interval: Duration,
    /// Envelopes loaded per poll (the queue bound).
    poll_limit: u32,
}

impl NatsFanOut {
    pub(crate) fn new(
        nats: async_nats::Client,
        registry: Arc<Registry>,
        store: Arc<PgStore>,
        poll_interval: Duration,
        poll_limit: u32,
    ) -> Self {
        Self {
            nats,
            registry,
            store,
            node: rand::random(),
            forwarders: Mutex::default(),
            poll_interval,
            poll_limit,
        }
    }

    /// Pushes what arrives for `device` (connection `conn_id`) to its connection: notices from
    /// NATS, and while NATS is down, what polling its queue finds.
    async fn forward(
        nats: async_nats::Client,
        registry: Arc<Registry>,
        store: Arc<PgStore>,
        mut sub: Option<async_nats::Subscriber>,
        (device, conn_id, node): (DeviceId, u64, u64),
        poll_interval: Duration,
        poll_limit: u32,
    ) {
        let mut recent = RecentDeliveries::new(2 * poll_limit as usize + 64);
        let mut tick = tokio::time::interval(poll_interval.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_connected = true;
        loop {
            tokio::select! {
                msg = async { match sub.as_mut() { Some(s) => s.next().await, None => std::future::pending().await } } => {
                    let Some(msg) = msg else {
                        // The subscription ended (client closed): polling carries on.
                        sub = None;
                        continue;
                    };
                    match Notice::decode(&msg.payload) {
                        Some(Notice::Deliver(id, envelope)) if recent.first(id) => {
                            let frame = encode_deliver_frame(id, &envelope);
                            registry.push(&device, Live { id, frame }, None);
                        }
                        Some(Notice::Takeover(n, c)) if (n, c) != (node, conn_id) => {
                            registry.kick_conn(&device, conn_id, Kick::Replaced);
                        }
                        _ => {}
                    }
                }
                _ = tick.tick() => {
                    let connected = sub.is_some()
                        && nats.connection_state() == async_nats::connection::State::Connected;
                    // Poll while NATS is down, and once after it came back (notices published
                    // meanwhile were lost).
                    if !connected || !was_connected {
                        match store.load(device, poll_limit).await {
                            Ok(backlog) => {
                                for (id, envelope) in backlog.rows {
                                    if recent.first(id) {
                                        let frame = encode_deliver_frame(id, &envelope);
                                        registry.push(&device, Live { id, frame }, None);
                                    }
                                }
                            }
                            Err(e) => tracing::debug!(%device, error = %e, "queue poll failed"),
                        }
                    }
                    was_connected = connected;
                }
            }
        }
    }
}

impl FanOut for NatsFanOut {
    fn register(&self, device: DeviceId, handle: ConnHandle) -> BoxFut<'_, ()> {
        Box::pin(async move {
            let conn_id = handle.conn_id;
            self.registry.register(device, handle);
            let subject = subject(&device);
            let sub =
                match tokio::time::timeout(NATS_WAIT, self.nats.subscribe(subject.clone())).await {
                    Ok(Ok(sub)) => Some(sub),
                    Ok(Err(e)) => {
                        tracing::debug!(%device, error = %e, "subscribe failed; polling");
                        None
                    }
                    Err(_) => None,
                };
            // The subscription is active at the server once a flush returns (else polling
            // covers the gap).
            let _ = tokio::time::timeout(NATS_WAIT, self.nats.flush()).await;
            let takeover = Notice::Takeover(self.node, conn_id).encode();
            let _ = tokio::time::timeout(NATS_WAIT, self.nats.publish(subject, takeover)).await;
            let task = tokio::spawn(Self::forward(
                self.nats.clone(),
                self.registry.clone(),
                self.store.clone(),
                sub,
                (device, conn_id, self.node),
                self.poll_interval,
                self.poll_limit,
            ));
            if let Some((_, old)) = lock(&self.forwarders).insert(device, (conn_id, task)) {
                old.abort();
            }
        })
    }

    fn unregister(&self, device: &DeviceId, conn_id: u64) {
        self.registry.unregister(device, conn_id);
        let mut forwarders = lock(&self.forwarders);
        if forwarders.get(device).is_some_and(|(c, _)| *c == conn_id) {
            if let Some((_, task)) = forwarders.remove(device) {
                task.abort();
            }
        }
    }

    fn kick_all(&self) {
        self.registry.kick_all();
        for (_, (_, task)) in lock(&self.forwarders).drain() {
            task.abort();
        }
    }
}

/// Connects to NATS (retrying in the background if it is down later).
pub(crate) async fn connect_nats(url: &str) -> Result<async_nats::Client, ClusterError> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        .reconnect_delay_callback(|attempt| {
            Duration::from_millis(50u64.saturating_mul(1 << attempt.min(5)))
        })
        .connect(url)
        .await?;
    Ok(client)
}

/// Deletes expired envelopes and message ids every `every`, until the store is dropped.
pub(crate) async fn sweep_loop(store: std::sync::Weak<PgStore>, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    loop {
        tick.tick().await;
        let Some(store) = store.upgrade() else { return };
        match store.sweep().await {
            Ok((expired, _)) if expired > 0 => {
                store
                    .metrics
                    .envelopes_expired
                    .fetch_add(expired, Ordering::Relaxed);
                tracing::debug!(expired, "expired envelopes deleted");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "sweeping expired envelopes failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_round_trip_and_garbage_is_ignored() {
        let deliver = Notice::Deliver(42, Bytes::from_static(b"envelope")).encode();
        match Notice::decode(&deliver) {
            Some(Notice::Deliver(42, e)) => assert_eq!(&e[..], b"envelope"),
            _ => panic!("deliver notice not decoded"),
        }
        let takeover = Notice::Takeover(7, 9).encode();
        assert!(matches!(
            Notice::decode(&takeover),
            Some(Notice::Takeover(7, 9))
        ));
        for junk in [&b""[..], b"D1234", b"T12345678", b"X"] {
            assert!(Notice::decode(&Bytes::copy_from_slice(junk)).is_none());
        }
    }

    #[test]
    fn recent_deliveries_are_bounded() {
        let mut r = RecentDeliveries::new(2);
        assert!(r.first(1));
        assert!(!r.first(1));
        assert!(r.first(2));
        assert!(r.first(3));
        // 1 was forgotten.
        assert!(r.first(1));
        assert_eq!(r.set.len(), 2);
    }

    #[test]
    fn subjects_carry_the_whole_device_id() {
        let s = subject(&DeviceId::from_bytes([0xab; 32]));
        assert_eq!(s.len(), 9 + 64);
        assert!(s.starts_with("hush.dev.abab"));
    }
}

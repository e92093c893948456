//! The cluster backend (feature `cluster`): any number of relay nodes share one PostgreSQL
//! database (the durable queue, the prekey directory and the per-sender replay state) and one
//! NATS server (new-envelope notices and presence between nodes). No node is special; a
//! device may connect to any of them.
//!
//! Sending (group commit): the node gives the envelope a delivery id from its own block of
//! ids (taken from the `queue_ids` sequence 1,024 at a time), pushes it at once to its
//! recipient if that device is connected to this node (before the commit, as the single-node
//! store does: delivery waits for no database, only the sender's answer does), or else sends it
//! on the recipient's NATS subject (also before the commit, up to [`ANNOUNCE_MAX`] bytes; an
//! acknowledgement that overtakes the commit leaves a tombstone in `acked_early`, taken under
//! the recipient's advisory lock, which the admission batch honours), and hands it to
//! this node's write queue; the connection reads on. A few writer tasks, each with its own
//! PostgreSQL connection and a prepared statement, take whatever is queued (up to
//! [`MAX_BATCH`] envelopes from any number of connections) and check and insert all of it in
//! ONE statement, `hush_admit_batch3`: one round trip and one
//! commit (one WAL flush) for the whole batch. Inside it each envelope is checked as before, in
//! order: the recipient's bundle row is locked (serialising sends to one recipient across nodes
//! and making the queue bounds exact), the message id must be new for its sender (replays
//! across nodes), the sender and device quotas hold (evicting the heaviest sender's oldest
//! envelope when full). A batch is sorted by recipient (lock key) before it is written, so concurrent
//! batches take their row locks in the same order and cannot deadlock. Each sender is answered
//! "accepted" only after the batch committed; if the batch fails, every sender in it is
//! answered with an error, never "accepted" (an envelope pushed at admission may then have
//! reached its recipient all the same: delivery is at least once, and a sender that sends again
//! after the error repeats the message id, which the client filters). The writers then publish
//! the committed envelopes not pushed at admission on their recipients' NATS subjects
//! `hush.dev.<device id in hex>`. An envelope its recipient acknowledged before its batch was
//! taken is checked (replay) but never written, and its sender is answered "accepted" (the
//! promise is "durable or acknowledged"); one acknowledged while its batch was being written is
//! deleted after the commit.
//!
//! Acknowledgements go through one more writer the same way (one `DELETE` per batch). Its
//! connection commits asynchronously (`synchronous_commit = off`): an acknowledgement lost in
//! a database crash only means the envelope is delivered again, and delivery is at least once
//! anyway (see below).
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
//! Unlike the single-node store there is no commit delay: every envelope not yet acknowledged
//! is written before its sender is answered, and deleted when acknowledged; batches form only
//! from what queued up while the previous batch was being written, so an idle node writes each
//! envelope at once.
//!
//! An envelope pushed at admission is still announced after its commit when the connection it
//! went to is no longer its recipient's connection on this node (the device reconnected, here or
//! elsewhere, and may have loaded its backlog before the commit).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use hush_signaling::frame::encode_deliver_frame;
use hush_signaling::DeviceId;
use tokio::sync::{mpsc, Semaphore};
use tokio_postgres::{Client, NoTls, Statement};

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
    /// Writer tasks (each with its own PostgreSQL connection) that commit queued envelopes in
    /// batches; while one commits, the next batch gathers for another.
    pub writers: usize,
    /// A pause before each batch is written (zero). For tests that need a commit still in
    /// flight when its envelope is delivered and acknowledged on another node.
    pub commit_delay: Duration,
}

impl ClusterConfig {
    /// A node of the cluster on these servers, with a pool of 8 connections, 2 writers and a
    /// 1 s poll.
    pub fn new(postgres: impl Into<String>, nats: impl Into<String>) -> Self {
        Self {
            postgres: postgres.into(),
            nats: nats.into(),
            pool_size: 8,
            poll_interval: Duration::from_secs(1),
            writers: 2,
            commit_delay: Duration::ZERO,
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
-- Delivery ids are handed out by the nodes, in blocks of this sequence's increment (a node
-- delivers an envelope to a device connected to it before the envelope is committed).
CREATE TABLE IF NOT EXISTS queue (
    id BIGINT PRIMARY KEY,
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
CREATE SEQUENCE IF NOT EXISTS queue_ids INCREMENT BY 1024;
-- Acknowledgements that found no row: the envelope was delivered (over NATS, at admission) by
-- another node that had not committed it yet. That node's batch does not queue it. Swept
-- after the envelope age limit.
CREATE TABLE IF NOT EXISTS acked_early (
    id BIGINT PRIMARY KEY,
    stamped TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS acked_early_by_age ON acked_early (stamped);
-- Deletes acknowledged envelopes; one not found is recorded in acked_early. Each recipient's
-- advisory lock (the one hush_admit_batch3 holds until its commit) is taken first, so an
-- admission of that recipient in flight commits before the delete looks (each statement of
-- this function sees what committed before it started): either the delete finds the row, or
-- the admission, which looks for the tombstone under the same lock, finds the tombstone.
-- Callers pass rows sorted by lock key (the admission order: no deadlock).
CREATE OR REPLACE FUNCTION hush_ack_batch(rcpts BYTEA[], lock_keys BIGINT[], ids BIGINT[])
RETURNS VOID LANGUAGE plpgsql AS $$
DECLARE
    n INT := coalesce(array_length(rcpts, 1), 0);
BEGIN
    FOR i IN 1..n LOOP
        PERFORM pg_advisory_xact_lock(lock_keys[i]);
        DELETE FROM queue WHERE id = ids[i] AND recipient = rcpts[i];
        IF NOT FOUND THEN
            INSERT INTO acked_early (id) VALUES (ids[i]) ON CONFLICT DO NOTHING;
        END IF;
    END LOOP;
END
$$;
-- Never below an id already queued (a queue made by an older schema numbered its own rows).
SELECT setval('queue_ids', greatest((SELECT last_value FROM queue_ids),
                                    coalesce((SELECT max(id) FROM queue), 0) + 1));
-- Checks and queues a batch of envelopes in order; row i of the result is envelope i's
-- verdict: 0 accepted, 5 accepted after evicting another envelope, 1 unknown recipient,
-- 2 duplicate message id, 3 sender quota, 4 queue full; qid is the delivery id if accepted.
-- ids[i] is envelope i's delivery id (handed out by the node); keeps[i] false means its
-- recipient already acknowledged it: it is checked for replay but not queued. Verdict 6: accepted,
-- but acknowledged on another node before this commit (found in acked_early): not queued.
CREATE OR REPLACE FUNCTION hush_admit_batch3(
    rcpts BYTEA[], lock_keys BIGINT[], senders BYTEA[], mids BYTEA[], envs BYTEA[],
    ids BIGINT[], keeps BOOLEAN[], max_sender BIGINT, max_device BIGINT)
RETURNS TABLE (verdict INT, qid BIGINT) LANGUAGE plpgsql
-- Plain index scans mark the index entries of acknowledged (deleted) envelopes dead as they
-- pass them, so the next count skips them; a bitmap scan would visit them again every time
-- until vacuum.
SET enable_bitmapscan = off
AS $$
DECLARE
    n INT := coalesce(array_length(rcpts, 1), 0);
    r BYTEA; s BYTEA;
    mine BIGINT; total BIGINT; heavy BYTEA; heavy_n BIGINT; evicted BOOLEAN;
BEGIN
    FOR i IN 1..n LOOP
        r := rcpts[i]; s := senders[i]; qid := 0; evicted := false;
        -- The recipient must have a bundle.
        PERFORM 1 FROM bundles WHERE device = r;
        IF NOT FOUND THEN verdict := 1; RETURN NEXT; CONTINUE; END IF;
        -- Serialises sends to one recipient cluster-wide until commit (an advisory lock on
        -- the recipient's key: in memory, unlike a row lock, which writes the row).
        PERFORM pg_advisory_xact_lock(lock_keys[i]);
        -- Replays across nodes: a message id is accepted once per sender.
        INSERT INTO seen (sender, message_id) VALUES (s, mids[i]) ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN verdict := 2; RETURN NEXT; CONTINUE; END IF;
        IF NOT keeps[i] THEN verdict := 0; qid := ids[i]; RETURN NEXT; CONTINUE; END IF;
        -- Acknowledged on another node already (pushed over NATS at admission)?
        DELETE FROM acked_early WHERE id = ids[i];
        IF FOUND THEN verdict := 6; qid := ids[i]; RETURN NEXT; CONTINUE; END IF;
        SELECT count(*) FILTER (WHERE sender = s), count(*) INTO mine, total
            FROM queue WHERE recipient = r;
        IF mine >= max_sender THEN
            DELETE FROM seen WHERE sender = s AND message_id = mids[i];
            verdict := 3; RETURN NEXT; CONTINUE;
        END IF;
        IF total >= max_device THEN
            -- Full: evict the heaviest sender's oldest envelope if it has at least two more
            -- queued than this sender, as the single-node store does.
            SELECT q.sender, count(*) INTO heavy, heavy_n FROM queue q
                WHERE q.recipient = r GROUP BY q.sender ORDER BY 2 DESC LIMIT 1;
            IF heavy_n IS NULL OR heavy_n <= mine + 1 THEN
                DELETE FROM seen WHERE sender = s AND message_id = mids[i];
                verdict := 4; RETURN NEXT; CONTINUE;
            END IF;
            DELETE FROM queue WHERE id = (SELECT q.id FROM queue q
                WHERE q.recipient = r AND q.sender = heavy ORDER BY q.id LIMIT 1);
            evicted := true;
        END IF;
        -- OVERRIDING: a queue made by an older schema has an identity column.
        INSERT INTO queue (id, recipient, sender, envelope) OVERRIDING SYSTEM VALUE
            VALUES (ids[i], r, s, envs[i]);
        qid := ids[i];
        verdict := CASE WHEN evicted THEN 5 ELSE 0 END;
        RETURN NEXT;
    END LOOP;
END
$$;
";

/// Envelopes one write statement takes at most.
pub(crate) const MAX_BATCH: usize = 256;
/// Acknowledged delivery ids one delete takes at most.
const MAX_ACK_BATCH: usize = 4096;
/// The prepared statement a writer runs per batch.
const ADMIT_BATCH: &str =
    "SELECT verdict, qid FROM hush_admit_batch3($1, $2, $3, $4, $5, $6, $7, $8, $9)";
/// ... and the acknowledgement writer.
const ACK_BATCH: &str = "SELECT hush_ack_batch($1, $2, $3)";

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
        connect(&self.config).await
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

/// Opens a PostgreSQL connection (its I/O runs in a task of its own).
async fn connect(config: &tokio_postgres::Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
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

/// Largest envelope sent over NATS at admission; a bigger one is announced after its commit.
const ANNOUNCE_MAX: usize = 16 * 1024;

/// Delivery ids a node takes from the `queue_ids` sequence at a time (its increment).
const ID_BLOCK: i64 = 1024;

/// Acknowledgements on their way to the acknowledgement writer: `(device, delivery id)` rows
/// (one connection's acknowledgement, or those a writer found after its commit) and when the
/// first of them was read.
type AckItem = (Vec<(DeviceId, u64)>, std::time::Instant);

/// Envelopes handed to a writer and not yet committed: delivery id -> (recipient, whether the
/// recipient acknowledged it already).
type Unsettled = Arc<Mutex<HashMap<u64, (DeviceId, bool)>>>;

/// An envelope in the write queue, with the delivery id this node gave it.
struct Queued {
    id: u64,
    /// The connection of its recipient on this node it was pushed to at admission, if any.
    pushed: Option<u64>,
    /// Sent on its recipient's NATS subject at admission (the recipient was not connected to
    /// this node): after the commit only a [`Notice::Committed`] follows.
    announced: bool,
    admission: Admission,
}

/// The durable store on PostgreSQL.
pub(crate) struct PgStore {
    pool: Pool,
    limits: PgLimits,
    metrics: Arc<Metrics>,
    /// This node's connections: an envelope for one of them is pushed at admission.
    registry: Arc<Registry>,
    /// Where an envelope for a device not connected here is announced at admission.
    nats: async_nats::Client,
    /// The rest of this node's current block of delivery ids: `(next, end)`.
    ids: tokio::sync::Mutex<(i64, i64)>,
    unsettled: Unsettled,
    /// The write queue the writer tasks take batches from.
    admissions: mpsc::Sender<Queued>,
    /// The acknowledgement writer's queue.
    acks: mpsc::Sender<AckItem>,
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
    /// A committed envelope with the unix times (microseconds) it was read and published, sent
    /// instead of `Deliver` while the stage diagnostics (`crate::stages`) are on.
    Stamped(u64, u64, u64, Bytes),
    /// A connection of the device opened on node `.0` as connection `.1`.
    Takeover(u64, u64),
    /// The envelope with this delivery id, sent on this subject at admission (before its
    /// commit), is now committed: a forwarder that has not pushed it polls the queue (its
    /// device connected to it after the admission notice went out).
    Committed(u64),
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
            Self::Stamped(id, read, published, envelope) => {
                out.push(b'S');
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&read.to_be_bytes());
                out.extend_from_slice(&published.to_be_bytes());
                out.extend_from_slice(envelope);
            }
            Self::Takeover(node, conn) => {
                out.push(b'T');
                out.extend_from_slice(&node.to_be_bytes());
                out.extend_from_slice(&conn.to_be_bytes());
            }
            Self::Committed(id) => {
                out.push(b'C');
                out.extend_from_slice(&id.to_be_bytes());
            }
        }
        Bytes::from(out)
    }

    fn decode(payload: &Bytes) -> Option<Self> {
        let (&kind, rest) = payload.split_first()?;
        let word = |b: &[u8]| -> Option<u64> { Some(u64::from_be_bytes(b.try_into().ok()?)) };
        match kind {
            b'D' if rest.len() >= 8 => Some(Self::Deliver(word(&rest[..8])?, payload.slice(9..))),
            b'S' if rest.len() >= 24 => Some(Self::Stamped(
                word(&rest[..8])?,
                word(&rest[8..16])?,
                word(&rest[16..24])?,
                payload.slice(25..),
            )),
            b'T' if rest.len() == 16 => Some(Self::Takeover(word(&rest[..8])?, word(&rest[8..])?)),
            b'C' if rest.len() == 8 => Some(Self::Committed(word(rest)?)),
            _ => None,
        }
    }
}

impl PgStore {
    /// Connects, creates the schema if needed.
    pub(crate) async fn connect(
        config: &ClusterConfig,
        nats: async_nats::Client,
        limits: PgLimits,
        metrics: Arc<Metrics>,
        registry: Arc<Registry>,
    ) -> Result<Self, ClusterError> {
        let pool = Pool::new(&config.postgres, config.pool_size)?;
        let client = pool.connect().await?;
        // Created in one transaction, so its last item (the batch function) exists only if all
        // of it does. A node
        // (re)starting beside busy nodes must not take the schema's locks: its CREATE INDEX
        // statements would deadlock with their sends.
        let created = client
            .query_one("SELECT to_regproc('hush_admit_batch3') IS NOT NULL", &[])
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
        let writers = config.writers.max(1);
        let (admissions, queue) = mpsc::channel(2 * MAX_BATCH * writers);
        let queue = Arc::new(tokio::sync::Mutex::new(queue));
        let (acks, ack_queue) = mpsc::channel(2 * MAX_BATCH);
        let unsettled = Unsettled::default();
        for _ in 0..writers {
            let writer = Writer {
                config: pool.config.clone(),
                nats: nats.clone(),
                limits,
                metrics: metrics.clone(),
                unsettled: unsettled.clone(),
                acks: acks.clone(),
                registry: registry.clone(),
                commit_delay: config.commit_delay,
                conn: None,
            };
            tokio::spawn(writer.run(queue.clone()));
        }
        tokio::spawn(ack_writer(pool.config.clone(), ack_queue));
        tokio::spawn(crate::stages::dump_loop(Duration::from_secs(5)));
        Ok(Self {
            pool,
            limits,
            metrics,
            registry,
            nats,
            ids: tokio::sync::Mutex::new((0, 0)),
            unsettled,
            admissions,
            acks,
        })
    }

    /// The next delivery id of this node's block (a new block when it is used up).
    async fn next_id(&self) -> StoreResult<u64> {
        let mut ids = self.ids.lock().await;
        if ids.0 >= ids.1 {
            let client = self.pool.get().await?;
            let start: i64 = client
                .query_one("SELECT nextval('queue_ids')", &[])
                .await
                .map_err(db_error)?
                .get(0);
            *ids = (start, start.saturating_add(ID_BLOCK));
        }
        let id = ids.0;
        ids.0 += 1;
        u64::try_from(id).map_err(|_| StoreError::Database)
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
        // Tombstones of acknowledgements whose envelope never came (or came and was
        // dropped): an admission older than the envelope age limit is long committed.
        let _ = client
            .execute(
                "DELETE FROM acked_early WHERE stamped < now() - make_interval(secs => $1)",
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
        // The queue of the whole cluster, for the queue-depth gauge (same on every node).
        if let Ok(row) = client.query_one("SELECT count(*) FROM queue", &[]).await {
            let depth: i64 = row.get(0);
            self.metrics
                .queue_depth
                .store(u64::try_from(depth).unwrap_or(0), Ordering::Relaxed);
        }
        Ok((expired, forgotten))
    }
}

/// The advisory lock key that serialises sends to `device` (its first 8 bytes; two devices
/// sharing a key only wait for each other).
fn lock_key(device: &DeviceId) -> i64 {
    let b = device.as_bytes();
    i64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// The queue's shared receiving end: a writer holds it only while it takes a batch.
type WriteQueue = Arc<tokio::sync::Mutex<mpsc::Receiver<Queued>>>;

/// A writer task: takes what is queued (up to [`MAX_BATCH`] envelopes from any connections),
/// commits it in one statement, then answers each sender and announces what was accepted.
struct Writer {
    config: tokio_postgres::Config,
    nats: async_nats::Client,
    limits: PgLimits,
    metrics: Arc<Metrics>,
    unsettled: Unsettled,
    /// Where acknowledgements that came while their envelope was being written go.
    acks: mpsc::Sender<AckItem>,
    /// This node's connections (was an envelope pushed at admission to the device's current
    /// connection?).
    registry: Arc<Registry>,
    /// [`ClusterConfig::commit_delay`].
    commit_delay: Duration,
    /// Its own connection and prepared statement, (re)made when needed.
    conn: Option<(Client, Statement)>,
}

impl Writer {
    async fn run(mut self, queue: WriteQueue) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            let taken = queue.lock().await.recv_many(&mut batch, MAX_BATCH).await;
            if taken == 0 {
                return; // The store is gone.
            }
            let at = std::time::Instant::now();
            crate::stages::record(5, batch.len() as u64);
            for q in &batch {
                crate::stages::record_dur(0, at.saturating_duration_since(q.admission.received));
            }
            self.write(&mut batch).await;
            batch.clear();
        }
    }

    /// The writer's connection, made (and its statement prepared) if it has none or it broke.
    async fn connection(&mut self) -> Result<&(Client, Statement), tokio_postgres::Error> {
        let conn = match self.conn.take() {
            Some(conn) if !conn.0.is_closed() => conn,
            _ => {
                let client = connect(&self.config).await?;
                let statement = client.prepare(ADMIT_BATCH).await?;
                (client, statement)
            }
        };
        Ok(self.conn.insert(conn))
    }

    /// Checks and queues the batch in one statement (one transaction); returns each
    /// envelope's verdict, in batch order, once committed.
    async fn insert(
        &mut self,
        batch: &[Queued],
        keeps: &[bool],
    ) -> Result<Vec<StoreResult<u64>>, tokio_postgres::Error> {
        let max_sender = i64::from(self.limits.max_queue_per_sender);
        let max_device = i64::from(self.limits.max_queue_per_device);
        let (client, statement) = self.connection().await?;
        let column = |f: fn(&Admission) -> &[u8]| {
            batch
                .iter()
                .map(|q| f(&q.admission))
                .collect::<Vec<&[u8]>>()
        };
        let rcpts = column(|a| a.recipient.as_bytes().as_slice());
        let lock_keys: Vec<i64> = batch
            .iter()
            .map(|q| lock_key(&q.admission.recipient))
            .collect();
        let senders = column(|a| a.sender.as_bytes().as_slice());
        let mids = column(|a| a.message_id.as_slice());
        let envs = column(|a| a.envelope.as_slice());
        let ids: Vec<i64> = batch
            .iter()
            .map(|q| i64::try_from(q.id).unwrap_or(i64::MAX))
            .collect();
        let rows = client
            .query(
                statement,
                &[
                    &rcpts,
                    &lock_keys,
                    &senders,
                    &mids,
                    &envs,
                    &ids,
                    &keeps,
                    &max_sender,
                    &max_device,
                ],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let id = u64::try_from(row.try_get::<_, i64>(1)?).unwrap_or(0);
                Ok(match row.try_get::<_, i32>(0)? {
                    0 | 6 => Ok(id),
                    5 => {
                        self.metrics
                            .envelopes_evicted
                            .fetch_add(1, Ordering::Relaxed);
                        Ok(id)
                    }
                    1 => Err(StoreError::UnknownRecipient),
                    2 => Err(StoreError::Duplicate),
                    3 => Err(StoreError::SenderQuota),
                    4 => Err(StoreError::QueueFull),
                    _ => Err(StoreError::Database),
                })
            })
            .collect()
    }

    /// Writes one batch, answers its senders, announces what was accepted.
    async fn write(&mut self, batch: &mut Vec<Queued>) {
        // Every batch takes its recipients' row locks in the same order, so two batches (on
        // any nodes) cannot deadlock; the sort is stable, so one sender's envelopes to one
        // recipient keep their order.
        batch.sort_by_key(|q| lock_key(&q.admission.recipient));
        // An envelope its recipient acknowledged already (it was pushed at admission) is
        // checked for replay but not queued: the sender's answer needs it durable OR
        // acknowledged.
        let keeps: Vec<bool> = {
            let unsettled = lock(&self.unsettled);
            batch
                .iter()
                .map(|q| !unsettled.get(&q.id).is_some_and(|(_, acked)| *acked))
                .collect()
        };
        if !self.commit_delay.is_zero() {
            tokio::time::sleep(self.commit_delay).await;
        }
        let started = std::time::Instant::now();
        let result = self.insert(batch, &keeps).await;
        let committed = std::time::Instant::now();
        for _ in 0..batch.len() {
            crate::stages::record_dur(1, committed - started);
        }
        let now_us = crate::stages::unix_us();
        let verdicts = match result {
            Ok(v) if v.len() == batch.len() => {
                self.metrics.store_commits.fetch_add(1, Ordering::Relaxed);
                v
            }
            Ok(v) => {
                tracing::warn!(
                    rows = v.len(),
                    batch = batch.len(),
                    "postgres returned a verdict per envelope mismatch"
                );
                vec![Err(StoreError::Database); batch.len()]
            }
            // Not committed (or not known to be): nobody is answered "accepted".
            Err(e) => {
                let _ = db_error(e);
                vec![Err(StoreError::Database); batch.len()]
            }
        };
        // Settled: an acknowledgement from now on goes to the delete queue, which runs after
        // this commit. One that came while the batch was being written is queued now.
        let mut late_acks = Vec::new();
        {
            let mut unsettled = lock(&self.unsettled);
            for ((q, keep), result) in batch.iter().zip(&keeps).zip(&verdicts) {
                if let Some((recipient, true)) = unsettled.remove(&q.id) {
                    if *keep && result.is_ok() {
                        late_acks.push((recipient, q.id));
                    }
                }
            }
        }
        if !late_acks.is_empty() {
            let _ = self.acks.send((late_acks, std::time::Instant::now())).await;
        }
        let mut notices = Vec::new();
        for ((q, keep), result) in batch.drain(..).zip(keeps).zip(verdicts) {
            let Queued {
                pushed,
                announced,
                admission: a,
                ..
            } = q;
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
            // Acknowledged, or pushed at admission to the connection its recipient still has
            // here: no notice. (Pushed to a connection since replaced, here or on another
            // node, whose backlog may have been loaded before this commit: announced.)
            let delivered = pushed.is_some() && pushed == self.registry.conn_id(&a.recipient);
            // Announced at admission: only the commit is announced now (its envelope went
            // out already; a forwarder that missed it polls).
            if let (Ok(id), true, false) = (result, keep, delivered) {
                let read_us = now_us.saturating_sub(
                    committed.saturating_duration_since(a.received).as_micros() as u64,
                );
                let envelope = (!announced).then_some(a.envelope);
                notices.push((subject(&a.recipient), id, read_us, envelope));
            }
        }
        if notices.is_empty() {
            return;
        }
        // Best effort: a missed notice is found by polling, or on the device's next connect.
        let nats = &self.nats;
        let publish = async {
            for (subject, id, read_us, envelope) in notices {
                let notice = match envelope {
                    None => Notice::Committed(id),
                    Some(envelope) if crate::stages::enabled() => Notice::Stamped(
                        id,
                        read_us,
                        crate::stages::unix_us(),
                        Bytes::from(envelope),
                    ),
                    Some(envelope) => Notice::Deliver(id, Bytes::from(envelope)),
                };
                if let Err(e) = nats.publish(subject, notice.encode()).await {
                    tracing::debug!(error = %e, "new-envelope notice not published");
                }
                crate::stages::record_dur(2, committed.elapsed());
            }
        };
        if tokio::time::timeout(NATS_WAIT, publish).await.is_err() {
            tracing::debug!("new-envelope notices timed out");
        }
    }
}

/// The acknowledgement writer: deletes acknowledged envelopes in batches, on a connection that
/// commits asynchronously (an acknowledgement lost in a database crash only means the envelope
/// is delivered again, which the client filters).
async fn ack_writer(config: tokio_postgres::Config, mut queue: mpsc::Receiver<AckItem>) {
    let mut conn: Option<(Client, Statement)> = None;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        if queue.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return; // The store is gone.
        }
        let mut rows: Vec<(DeviceId, i64)> = Vec::new();
        let at = std::time::Instant::now();
        for (acked, read) in batch.drain(..) {
            crate::stages::record_dur(6, at.saturating_duration_since(read));
            rows.extend(
                acked
                    .into_iter()
                    .filter_map(|(device, id)| Some((device, i64::try_from(id).ok()?))),
            );
        }
        for chunk in rows.chunks(MAX_ACK_BATCH) {
            let started = std::time::Instant::now();
            let r = delete_acked(&config, &mut conn, chunk).await;
            crate::stages::record_dur(7, started.elapsed());
            if let Err(e) = r {
                // Left queued: delivered again later, filtered by the client.
                let _ = db_error(e);
            }
        }
    }
}

/// Deletes acknowledged `(recipient, delivery id)` rows in one statement.
async fn delete_acked(
    config: &tokio_postgres::Config,
    conn: &mut Option<(Client, Statement)>,
    rows: &[(DeviceId, i64)],
) -> Result<(), tokio_postgres::Error> {
    let ready = match conn.take() {
        Some(c) if !c.0.is_closed() => c,
        _ => {
            let client = connect(config).await?;
            client.batch_execute("SET synchronous_commit = off").await?;
            let statement = client.prepare(ACK_BATCH).await?;
            (client, statement)
        }
    };
    let (client, statement) = conn.insert(ready);
    // In lock-key order, as admission batches take the same advisory locks (no deadlock).
    let mut rows = rows.to_vec();
    rows.sort_by_key(|(d, id)| (lock_key(d), *id));
    let devices: Vec<&[u8]> = rows.iter().map(|(d, _)| d.as_bytes().as_slice()).collect();
    let keys: Vec<i64> = rows.iter().map(|(d, _)| lock_key(d)).collect();
    let ids: Vec<i64> = rows.iter().map(|(_, id)| *id).collect();
    client.query(statement, &[&devices, &keys, &ids]).await?;
    Ok(())
}

impl Store for PgStore {
    fn admit(&self, a: Admission) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let id = self.next_id().await?;
            let recipient = a.recipient;
            lock(&self.unsettled).insert(id, (recipient, false));
            // A recipient connected to this node gets the envelope now, before it is
            // committed, as the single-node store does: delivery does not wait for the
            // database, only the sender's answer does. (Delivery is at least once: if the
            // batch fails, the sender is told so and may send again; the client filters the
            // repeat by its message id.)
            let pushed = match self.registry.conn_id(&recipient) {
                Some(_) => self.registry.push(
                    &recipient,
                    Live {
                        id,
                        frame: encode_deliver_frame(id, &a.envelope),
                    },
                    None,
                ),
                None => None,
            };
            if pushed.is_some() {
                crate::stages::record_dur(4, a.received.elapsed());
            }
            // A recipient connected elsewhere (or nowhere) is sent the envelope on its NATS
            // subject now, before the commit, unless it is big (then it is announced after
            // the commit, as before). Best effort: a lost notice is found by polling.
            let mut announced = false;
            if pushed.is_none() && a.envelope.len() <= ANNOUNCE_MAX {
                let notice = if crate::stages::enabled() {
                    let now = crate::stages::unix_us();
                    let read = now.saturating_sub(a.received.elapsed().as_micros() as u64);
                    Notice::Stamped(id, read, now, Bytes::copy_from_slice(&a.envelope))
                } else {
                    Notice::Deliver(id, Bytes::copy_from_slice(&a.envelope))
                };
                let sent = tokio::time::timeout(
                    NATS_WAIT,
                    self.nats.publish(subject(&recipient), notice.encode()),
                )
                .await;
                announced = matches!(sent, Ok(Ok(())));
            }
            // Answered by a writer once the batch holding it committed (or failed).
            let queued = Queued {
                id,
                pushed,
                announced,
                admission: a,
            };
            if self.admissions.send(queued).await.is_err() {
                lock(&self.unsettled).remove(&id);
                return Err(StoreError::Database);
            }
            Ok(())
        })
    }

    fn ack(&self, device: DeviceId, ids: Vec<u64>) -> BoxFut<'_, StoreResult<()>> {
        Box::pin(async move {
            // Envelopes not yet committed are marked (their writer skips or deletes them);
            // the rest are deleted.
            let rows: Vec<(DeviceId, u64)> = {
                let mut unsettled = lock(&self.unsettled);
                ids.into_iter()
                    .filter(|id| match unsettled.get_mut(id) {
                        Some((recipient, acked)) if *recipient == device => {
                            *acked = true;
                            false
                        }
                        _ => true,
                    })
                    .map(|id| (device, id))
                    .collect()
            };
            if rows.is_empty() {
                return Ok(());
            }
            self.acks
                .send((rows, std::time::Instant::now()))
                .await
                .map_err(|_| StoreError::Database)
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

    /// Whether `id` was seen (and not forgotten yet).
    fn contains(&self, id: u64) -> bool {
        self.set.contains(&id)
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

    /// Pushes what `device`'s queue holds and its connection was not pushed yet.
    async fn poll(
        store: &PgStore,
        registry: &Registry,
        device: &DeviceId,
        recent: &mut RecentDeliveries,
        poll_limit: u32,
    ) {
        match store.load(*device, poll_limit).await {
            Ok(backlog) => {
                for (id, envelope) in backlog.rows {
                    if recent.first(id) {
                        let frame = encode_deliver_frame(id, &envelope);
                        registry.push(device, Live { id, frame }, None);
                    }
                }
            }
            Err(e) => tracing::debug!(%device, error = %e, "queue poll failed"),
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
                        Some(Notice::Stamped(id, read_us, published_us, envelope)) if recent.first(id) => {
                            let now = crate::stages::unix_us();
                            crate::stages::record(3, now.saturating_sub(published_us));
                            let frame = encode_deliver_frame(id, &envelope);
                            registry.push(&device, Live { id, frame }, None);
                            crate::stages::record(4, crate::stages::unix_us().saturating_sub(read_us));
                        }
                        Some(Notice::Takeover(n, c)) if (n, c) != (node, conn_id) => {
                            registry.kick_conn(&device, conn_id, Kick::Replaced);
                        }
                        Some(Notice::Committed(id)) if !recent.contains(id) => {
                            // Its admission notice came before this subscription: the queue
                            // has it now.
                            Self::poll(&store, &registry, &device, &mut recent, poll_limit).await;
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
                        Self::poll(&store, &registry, &device, &mut recent, poll_limit).await;
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
        let stamped = Notice::Stamped(42, 1, 2, Bytes::from_static(b"envelope")).encode();
        match Notice::decode(&stamped) {
            Some(Notice::Stamped(42, 1, 2, e)) => assert_eq!(&e[..], b"envelope"),
            _ => panic!("stamped notice not decoded"),
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

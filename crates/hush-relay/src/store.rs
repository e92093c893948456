//! Durable state in SQLite: the store-and-forward queue and the prekey directory.
//!
//! One dedicated thread owns the database connection. Connection tasks send it [`Op`]s, and
//! admit envelopes to [`Pending`]; the thread takes every op already waiting (up to a batch
//! limit) and every admitted envelope whose commit delay has passed without an
//! acknowledgement, runs them in one transaction, commits, and only then answers. Group commit
//! gives durability (an answered envelope is on disk, in the WAL) at tens of thousands of
//! envelopes per second instead of one fsync per envelope; the commit delay lets envelopes that
//! their online recipient acknowledges at once skip SQLite altogether.
//!
//! The same thread sweeps expired envelopes on a timer: every
//! [`RelayConfig::sweep_interval`](crate::RelayConfig::sweep_interval) it deletes every envelope
//! admitted more than [`RelayConfig::max_envelope_age`](crate::RelayConfig::max_envelope_age)
//! ago, whether or not its recipient ever comes back. Delivery ids grow with admission time, so
//! the thread only remembers, once per sweep, the next id to be handed out and when: every id
//! below a mark taken `max_envelope_age` ago is expired (deleted by a range scan of the primary
//! key, no index on time needed).

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hush_signaling::frame::encode_deliver_frame;
use hush_signaling::DeviceId;
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::pending::{Entry, Pending, QueueLimits, Stored};
use crate::state::{Live, Registry};
use crate::SyncMode;

/// Result of a store operation.
pub(crate) type StoreResult<T> = Result<T, StoreError>;

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("recipient queue is full")]
    QueueFull,
    #[error("sender's quota for this recipient is used up")]
    SenderQuota,
    #[error("recipient has no bundle")]
    UnknownRecipient,
    #[error("dropped to make room for a sender with fewer envelopes queued")]
    Evicted,
    #[error("no bundle for that device")]
    NotFound,
    #[error("too many one-time prekeys")]
    TooManyPrekeys,
    #[error("database error")]
    Database,
    /// The sender's message id was accepted before (the cluster store keeps replay state
    /// shared by all nodes).
    #[cfg_attr(
        not(feature = "cluster"),
        allow(dead_code, reason = "cluster store only")
    )]
    #[error("envelope already accepted")]
    Duplicate,
}

/// The answer to a send, delivered to the sending connection's completion queue once the
/// envelope is committed or acknowledged by its recipient.
pub(crate) struct InsertDone {
    pub(crate) request_id: u64,
    pub(crate) received: Instant,
    pub(crate) result: StoreResult<u64>,
}

/// A device's queued envelopes, loaded when it connects.
pub(crate) struct Backlog {
    /// `(delivery id, encoded envelope)` in id order.
    pub(crate) rows: Vec<(u64, Vec<u8>)>,
}

/// A bundle handed out by the directory.
pub(crate) struct BundleOut {
    pub(crate) bundle: Vec<u8>,
    pub(crate) one_time_prekey: Option<(u64, Vec<u8>)>,
}

/// Work for the store thread.
pub(crate) enum Op {
    Ack {
        device: DeviceId,
        ids: Vec<u64>,
    },
    Load {
        device: DeviceId,
        limit: u32,
        reply: oneshot::Sender<StoreResult<Backlog>>,
    },
    Upload {
        device: DeviceId,
        bundle: Vec<u8>,
        one_time_prekeys: Vec<(u64, Vec<u8>)>,
        replace: bool,
        reply: oneshot::Sender<StoreResult<()>>,
    },
    /// Deletes the oldest stored envelope from `sender` for `recipient` (evicted from a full
    /// queue; the queue counts were already adjusted).
    Evict {
        recipient: DeviceId,
        sender: DeviceId,
    },
    Fetch {
        device: DeviceId,
        /// Whether to hand out (and delete) a one-time prekey if one is left.
        one_time: bool,
        reply: oneshot::Sender<StoreResult<BundleOut>>,
    },
}

/// Limits the store enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StoreLimits {
    pub(crate) max_queue_per_device: u32,
    pub(crate) max_queue_per_sender: u32,
    pub(crate) max_envelope_age: Duration,
    pub(crate) sweep_interval: Duration,
    pub(crate) max_one_time_prekeys: u32,
    pub(crate) max_batch: usize,
    pub(crate) commit_delay: Duration,
}

/// Opens (creating if needed) the database and starts the store thread.
pub(crate) fn open(
    path: &Path,
    sync: SyncMode,
    limits: StoreLimits,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
) -> Result<(mpsc::Sender<Op>, Arc<Pending>), rusqlite::Error> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        match sync {
            SyncMode::Full => "FULL",
            SyncMode::Normal => "NORMAL",
        },
    )?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS queue (
             id INTEGER PRIMARY KEY AUTOINCREMENT,
             recipient BLOB NOT NULL,
             envelope BLOB NOT NULL
         );
         CREATE INDEX IF NOT EXISTS queue_by_recipient ON queue(recipient, id);
         CREATE TABLE IF NOT EXISTS bundles (
             device BLOB PRIMARY KEY,
             bundle BLOB NOT NULL
         );
         CREATE TABLE IF NOT EXISTS one_time_prekeys (
             device BLOB NOT NULL,
             id INTEGER NOT NULL,
             data BLOB NOT NULL,
             PRIMARY KEY (device, id)
         );",
    )?;
    migrate(&conn)?;
    let mut stored = load_stored(&conn)?;
    let last_id: i64 = conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'queue'",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
    stored.max_id = u64::try_from(last_id).unwrap_or(0);
    let pending = Arc::new(Pending::new(
        stored,
        limits.commit_delay,
        QueueLimits {
            per_recipient: limits.max_queue_per_device,
            per_sender: limits.max_queue_per_sender,
        },
        metrics.clone(),
    ));
    let (tx, rx) = mpsc::channel(64 * 1024);
    // Everything stored before this start was admitted before now.
    let marks = VecDeque::from([(Instant::now(), pending.next_id())]);
    let worker = Worker {
        conn,
        limits,
        metrics,
        registry,
        pending: pending.clone(),
        marks,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|_| rusqlite::Error::InvalidQuery)?;
    std::thread::Builder::new()
        .name("hush-relay-store".into())
        .spawn(move || runtime.block_on(worker.run(rx)))
        .map_err(|_| rusqlite::Error::InvalidQuery)?;
    Ok((tx, pending))
}

struct Worker {
    conn: Connection,
    limits: StoreLimits,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    pending: Arc<Pending>,
    /// `(when, next delivery id then)`, oldest first: every envelope with a smaller id was
    /// admitted before `when`.
    marks: VecDeque<(Instant, u64)>,
}

/// A deleted row: its recipient and sender (NULL for rows stored before senders were
/// recorded).
type ExpiredRow = (Vec<u8>, Option<Vec<u8>>);

/// An answer to send once the batch is committed.
enum Reply {
    Load(oneshot::Sender<StoreResult<Backlog>>, StoreResult<Backlog>),
    Upload(oneshot::Sender<StoreResult<()>>, StoreResult<()>, DeviceId),
    Fetch(
        oneshot::Sender<StoreResult<BundleOut>>,
        StoreResult<BundleOut>,
    ),
    /// Nothing to answer.
    Nothing,
    /// Rows deleted for a device's acknowledgements: the sender of each (`None` for rows
    /// stored before senders were recorded).
    Acked(DeviceId, Vec<Option<DeviceId>>),
}

impl Worker {
    /// Runs on the store thread's own single-threaded runtime (for the timed waits); all
    /// database work is synchronous.
    async fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        let mut batch = Vec::with_capacity(self.limits.max_batch);
        let sweep_every = self.limits.sweep_interval.max(Duration::from_millis(10));
        let mut next_sweep = Instant::now() + sweep_every;
        loop {
            let due_at = self.pending.next_due(Instant::now());
            let mut closed = false;
            tokio::select! {
                biased;
                op = rx.recv() => match op {
                    Some(op) => batch.push(op),
                    None => closed = true,
                },
                () = sleep_until(due_at), if due_at.is_some() => {}
                // An entry in an empty table, or one for an offline recipient (due at once).
                () = self.pending.admitted() => continue,
                () = tokio::time::sleep_until(next_sweep.into()) => {
                    self.sweep();
                    next_sweep = Instant::now() + sweep_every;
                    continue;
                }
            }
            while batch.len() < self.limits.max_batch {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            // Every envelope admitted before the ops were taken is either in `due`, still
            // waiting, or settled by its recipient: an acknowledgement in `batch` for one of
            // `due` was sent after it was taken, and is applied after its insert below.
            let due = self.pending.take_due(Instant::now(), closed);
            if !batch.is_empty() || !due.is_empty() {
                self.run_batch(due, &mut batch);
            }
            if closed {
                break;
            }
        }
        tracing::debug!("store thread exiting");
    }

    fn run_batch(&mut self, due: Vec<(u64, Entry)>, batch: &mut Vec<Op>) {
        let mut replies = Vec::with_capacity(batch.len());
        let mut inserted = Vec::with_capacity(due.len());
        let mut refused = Vec::new();
        let committed = match self.conn.transaction() {
            Ok(tx) => {
                let mut ok = true;
                for (id, entry) in due {
                    if !ok {
                        inserted.push((id, entry));
                        continue;
                    }
                    match Self::insert(&tx, id, &entry) {
                        Ok(true) => inserted.push((id, entry)),
                        Ok(false) => refused.push(entry),
                        Err(e) => {
                            tracing::error!(error = %e, "store insert failed");
                            inserted.push((id, entry));
                            ok = false;
                        }
                    }
                }
                for op in batch.drain(..) {
                    if !ok {
                        continue;
                    }
                    match Self::apply(&tx, &self.limits, op) {
                        Ok(reply) => replies.push(reply),
                        Err(e) => {
                            tracing::error!(error = %e, "store operation failed");
                            ok = false;
                        }
                    }
                }
                ok && tx.commit().is_ok()
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot begin transaction");
                inserted.extend(due);
                batch.clear();
                false
            }
        };
        for entry in refused {
            // An envelope with this id is already stored (ids only grow; not expected).
            self.pending
                .release(&entry.recipient, Some(&entry.sender), 1);
            entry.answer(Err(StoreError::Database));
        }
        if !committed {
            // Nothing of the batch happened: fail every request in it.
            for (_, entry) in inserted {
                self.pending
                    .release(&entry.recipient, Some(&entry.sender), 1);
                entry.answer(Err(StoreError::Database));
            }
            for r in replies {
                fail(r);
            }
            return;
        }
        self.metrics.store_commits.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .envelopes_stored
            .fetch_add(inserted.len() as u64, Ordering::Relaxed);
        for (id, entry) in inserted {
            // Committed: push to the recipient's current connection unless it already has it
            // (a device that reconnected meanwhile may have missed it in its backlog), then
            // answer the sender.
            let frame = encode_deliver_frame(id, &entry.envelope);
            self.registry
                .push(&entry.recipient, Live { id, frame }, entry.pushed_to);
            entry.answer(Ok(id));
        }
        for r in replies {
            match r {
                Reply::Load(tx, v) => {
                    let _ = tx.send(v);
                }
                Reply::Upload(tx, v, device) => {
                    if v.is_ok() {
                        // Before the uploader hears back: envelopes sent to it after that
                        // are accepted.
                        self.pending.add_known(device);
                    }
                    let _ = tx.send(v);
                }
                Reply::Fetch(tx, v) => {
                    let _ = tx.send(v);
                }
                Reply::Nothing => {}
                Reply::Acked(device, senders) => {
                    for sender in senders {
                        self.pending.release(&device, sender.as_ref(), 1);
                    }
                }
            }
        }
    }

    /// Deletes every envelope admitted more than `max_envelope_age` ago (see the module
    /// documentation), in its own transaction.
    fn sweep(&mut self) {
        let now = Instant::now();
        self.marks.push_back((now, self.pending.next_id()));
        // The newest mark at least `max_envelope_age` old bounds what has expired.
        let mut bound = None;
        while let Some(&(at, id)) = self.marks.front() {
            if now.saturating_duration_since(at) < self.limits.max_envelope_age {
                break;
            }
            bound = Some(id);
            self.marks.pop_front();
        }
        let Some(bound) = bound.and_then(|b| i64::try_from(b).ok()) else {
            return;
        };
        let rows = match self.delete_below(bound) {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, "sweeping expired envelopes failed");
                return;
            }
        };
        if rows.is_empty() {
            return;
        }
        tracing::debug!(expired = rows.len(), "expired envelopes deleted");
        self.metrics
            .envelopes_expired
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        let mut counts: HashMap<(DeviceId, Option<DeviceId>), u32> = HashMap::new();
        for (recipient, sender) in rows {
            let Ok(recipient) = DeviceId::from_slice(&recipient) else {
                continue;
            };
            let sender = sender.and_then(|s| DeviceId::from_slice(&s).ok());
            *counts.entry((recipient, sender)).or_insert(0) += 1;
        }
        for ((recipient, sender), n) in counts {
            self.pending.release(&recipient, sender.as_ref(), n);
        }
    }

    /// Deletes every queued envelope with an id below `bound`; returns their recipients and
    /// senders.
    fn delete_below(&mut self, bound: i64) -> rusqlite::Result<Vec<ExpiredRow>> {
        let tx = self.conn.transaction()?;
        let rows = tx
            .prepare_cached("DELETE FROM queue WHERE id < ?1 RETURNING recipient, sender")?
            .query_map(params![bound], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        tx.commit()?;
        Ok(rows)
    }

    /// Inserts an admitted envelope; `false` if its id is already taken (never expected:
    /// ids only grow).
    fn insert(tx: &rusqlite::Transaction<'_>, id: u64, entry: &Entry) -> rusqlite::Result<bool> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(false);
        };
        let n = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO queue (id, recipient, envelope, sender) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                id,
                entry.recipient.as_bytes().as_slice(),
                &entry.envelope,
                entry.sender.as_bytes().as_slice()
            ])?;
        Ok(n == 1)
    }

    fn apply(
        tx: &rusqlite::Transaction<'_>,
        limits: &StoreLimits,
        op: Op,
    ) -> Result<Reply, rusqlite::Error> {
        Ok(match op {
            Op::Ack { device, ids } => {
                let mut stmt = tx.prepare_cached(
                    "DELETE FROM queue WHERE id = ?1 AND recipient = ?2 RETURNING sender",
                )?;
                let mut senders = Vec::new();
                for id in ids {
                    let Ok(id) = i64::try_from(id) else { continue };
                    let sender: Option<Option<Vec<u8>>> = stmt
                        .query_row(params![id, device.as_bytes().as_slice()], |r| r.get(0))
                        .optional()?;
                    if let Some(sender) = sender {
                        senders.push(sender.and_then(|s| DeviceId::from_slice(&s).ok()));
                    }
                }
                Reply::Acked(device, senders)
            }
            Op::Evict { recipient, sender } => {
                let n = tx
                    .prepare_cached(
                        "DELETE FROM queue WHERE id = (SELECT id FROM queue WHERE recipient = ?1 AND sender = ?2 ORDER BY id LIMIT 1)",
                    )?
                    .execute(params![
                        recipient.as_bytes().as_slice(),
                        sender.as_bytes().as_slice()
                    ])?;
                if n == 0 {
                    // Acknowledged or expired meanwhile (and released then too): the counts
                    // are one low until the recipient's queue drains.
                    tracing::debug!(%recipient, %sender, "evicted envelope already gone");
                }
                Reply::Nothing
            }
            Op::Load {
                device,
                limit,
                reply,
            } => {
                let mut stmt = tx.prepare_cached(
                    "SELECT id, envelope FROM queue WHERE recipient = ?1 ORDER BY id LIMIT ?2",
                )?;
                let rows = stmt
                    .query_map(params![device.as_bytes().as_slice(), limit], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
                    })?
                    .map(|r| r.map(|(id, env)| (u64::try_from(id).unwrap_or(0), env)))
                    .collect::<Result<Vec<_>, _>>()?;
                Reply::Load(reply, Ok(Backlog { rows }))
            }
            Op::Upload {
                device,
                bundle,
                one_time_prekeys,
                replace,
                reply,
            } => {
                let dev = device.as_bytes().as_slice();
                if replace {
                    tx.prepare_cached("DELETE FROM one_time_prekeys WHERE device = ?1")?
                        .execute(params![dev])?;
                }
                let existing: u32 = tx
                    .prepare_cached("SELECT count(*) FROM one_time_prekeys WHERE device = ?1")?
                    .query_row(params![dev], |r| r.get(0))?;
                let result = if existing as usize + one_time_prekeys.len()
                    > limits.max_one_time_prekeys as usize
                {
                    Err(StoreError::TooManyPrekeys)
                } else {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO bundles (device, bundle) VALUES (?1, ?2)",
                    )?
                    .execute(params![dev, bundle])?;
                    let mut stmt = tx.prepare_cached(
                        "INSERT OR REPLACE INTO one_time_prekeys (device, id, data) VALUES (?1, ?2, ?3)",
                    )?;
                    for (id, data) in one_time_prekeys {
                        let id = i64::from_ne_bytes(id.to_ne_bytes());
                        stmt.execute(params![dev, id, data])?;
                    }
                    Ok(())
                };
                Reply::Upload(reply, result, device)
            }
            Op::Fetch {
                device,
                one_time,
                reply,
            } => {
                let dev = device.as_bytes().as_slice();
                let bundle: Option<Vec<u8>> = tx
                    .prepare_cached("SELECT bundle FROM bundles WHERE device = ?1")?
                    .query_row(params![dev], |r| r.get(0))
                    .optional()?;
                let result = match bundle {
                    None => Err(StoreError::NotFound),
                    Some(bundle) if !one_time => Ok(BundleOut {
                        bundle,
                        one_time_prekey: None,
                    }),
                    Some(bundle) => {
                        let otpk: Option<(i64, Vec<u8>)> = tx
                            .prepare_cached(
                                "SELECT id, data FROM one_time_prekeys WHERE device = ?1 ORDER BY id LIMIT 1",
                            )?
                            .query_row(params![dev], |r| Ok((r.get(0)?, r.get(1)?)))
                            .optional()?;
                        if let Some((id, _)) = &otpk {
                            // Handed out once: deleted in the same transaction.
                            tx.prepare_cached(
                                "DELETE FROM one_time_prekeys WHERE device = ?1 AND id = ?2",
                            )?
                            .execute(params![dev, id])?;
                        }
                        Ok(BundleOut {
                            bundle,
                            one_time_prekey: otpk
                                .map(|(id, data)| (u64::from_ne_bytes(id.to_ne_bytes()), data)),
                        })
                    }
                };
                Reply::Fetch(reply, result)
            }
        })
    }
}

/// Adds the `sender` column to a queue table created before senders were recorded (its rows
/// keep a NULL sender and count only towards their recipient's total).
fn migrate(conn: &Connection) -> Result<(), rusqlite::Error> {
    let has_sender = conn
        .prepare("SELECT 1 FROM pragma_table_info('queue') WHERE name = 'sender'")?
        .exists([])?;
    if !has_sender {
        conn.execute_batch("ALTER TABLE queue ADD COLUMN sender BLOB")?;
    }
    Ok(())
}

/// Queue lengths per recipient and per (recipient, sender), and the devices with a bundle.
fn load_stored(conn: &Connection) -> Result<Stored, rusqlite::Error> {
    let mut stored = Stored::default();
    let mut stmt =
        conn.prepare("SELECT recipient, sender, count(*) FROM queue GROUP BY recipient, sender")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            r.get::<_, Option<Vec<u8>>>(1)?,
            r.get::<_, u32>(2)?,
        ))
    })?;
    for row in rows {
        let (recipient, sender, n) = row?;
        let Ok(recipient) = DeviceId::from_slice(&recipient) else {
            continue;
        };
        *stored.depth.entry(recipient).or_insert(0) += n;
        if let Some(sender) = sender.and_then(|s| DeviceId::from_slice(&s).ok()) {
            stored.pairs.entry(recipient).or_default().insert(sender, n);
        }
    }
    let mut stmt = conn.prepare("SELECT device FROM bundles")?;
    for device in stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))? {
        if let Ok(device) = DeviceId::from_slice(&device?) {
            stored.known.insert(device);
        }
    }
    Ok(stored)
}

fn fail(r: Reply) {
    match r {
        Reply::Acked(..) | Reply::Nothing => {}
        Reply::Load(tx, _) => {
            let _ = tx.send(Err(StoreError::Database));
        }
        Reply::Upload(tx, _, _) => {
            let _ = tx.send(Err(StoreError::Database));
        }
        Reply::Fetch(tx, _) => {
            let _ = tx.send(Err(StoreError::Database));
        }
    }
}

/// Sleeps until `at` (forever for `None`; the caller guards that branch).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

//! Durable state in SQLite: the store-and-forward queue and the prekey directory.
//!
//! One dedicated thread owns the database connection. Connection tasks send it [`Op`]s; it
//! takes every op already waiting (up to a batch limit), runs them in one transaction, commits,
//! and only then answers. Group commit gives durability (an answered `Insert` is on disk, in
//! the WAL) at tens of thousands of envelopes per second instead of one fsync per envelope.
//!
//! Queue ids come from `AUTOINCREMENT`, so they only grow: a connection can tell a live
//! delivery it already sent in its backlog by comparing ids with the backlog's watermark.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use hush_signaling::DeviceId;
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::state::{Live, Registry};
use crate::SyncMode;

/// Result of a store operation.
pub(crate) type StoreResult<T> = Result<T, StoreError>;

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("recipient queue is full")]
    QueueFull,
    #[error("no bundle for that device")]
    NotFound,
    #[error("too many one-time prekeys")]
    TooManyPrekeys,
    #[error("database error")]
    Database,
}

/// Completion of an insert, delivered to the sending connection's completion queue.
pub(crate) struct InsertDone {
    pub(crate) request_id: u64,
    pub(crate) received: std::time::Instant,
    pub(crate) result: StoreResult<u64>,
}

/// A device's queued envelopes, loaded when it connects.
pub(crate) struct Backlog {
    /// `(delivery id, encoded envelope)` in id order.
    pub(crate) rows: Vec<(u64, Vec<u8>)>,
    /// Every id up to this was committed before the load: live deliveries at or below it are
    /// already in `rows` (or were acknowledged).
    pub(crate) watermark: u64,
}

/// A bundle handed out by the directory.
pub(crate) struct BundleOut {
    pub(crate) bundle: Vec<u8>,
    pub(crate) one_time_prekey: Option<(u64, Vec<u8>)>,
}

/// Work for the store thread.
pub(crate) enum Op {
    Insert {
        request_id: u64,
        recipient: DeviceId,
        envelope: Vec<u8>,
        received: std::time::Instant,
        done: mpsc::UnboundedSender<InsertDone>,
    },
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
    Fetch {
        device: DeviceId,
        reply: oneshot::Sender<StoreResult<BundleOut>>,
    },
}

/// Limits the store enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StoreLimits {
    pub(crate) max_queue_per_device: u32,
    pub(crate) max_one_time_prekeys: u32,
    pub(crate) max_batch: usize,
}

/// Opens (creating if needed) the database and starts the store thread.
pub(crate) fn open(
    path: &Path,
    sync: SyncMode,
    limits: StoreLimits,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
) -> Result<mpsc::Sender<Op>, rusqlite::Error> {
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
    let depth = load_depth(&conn)?;
    let total: u64 = depth.values().map(|&n| u64::from(n)).sum();
    metrics.queue_depth.store(total, Ordering::Relaxed);
    let last_id: u64 = conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'queue'",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
    let (tx, rx) = mpsc::channel(64 * 1024);
    let worker = Worker {
        conn,
        depth,
        last_id,
        limits,
        metrics,
        registry,
    };
    std::thread::Builder::new()
        .name("hush-relay-store".into())
        .spawn(move || worker.run(rx))
        .map_err(|_| rusqlite::Error::InvalidQuery)?;
    Ok(tx)
}

struct Worker {
    conn: Connection,
    depth: HashMap<DeviceId, u32>,
    last_id: u64,
    limits: StoreLimits,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
}

/// An answer to send once the batch is committed.
enum Reply {
    Insert(
        mpsc::UnboundedSender<InsertDone>,
        InsertDone,
        Option<(DeviceId, Vec<u8>)>,
    ),
    Load(oneshot::Sender<StoreResult<Backlog>>, StoreResult<Backlog>),
    Upload(oneshot::Sender<StoreResult<()>>, StoreResult<()>),
    Fetch(
        oneshot::Sender<StoreResult<BundleOut>>,
        StoreResult<BundleOut>,
    ),
}

impl Worker {
    fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        let mut batch = Vec::with_capacity(self.limits.max_batch);
        while let Some(op) = rx.blocking_recv() {
            batch.push(op);
            while batch.len() < self.limits.max_batch {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.run_batch(&mut batch);
        }
        tracing::debug!("store thread exiting");
    }

    fn run_batch(&mut self, batch: &mut Vec<Op>) {
        let last_before = self.last_id;
        let mut replies = Vec::with_capacity(batch.len());
        let committed = match self.conn.transaction() {
            Ok(tx) => {
                let ok = batch.drain(..).all(|op| {
                    match Self::apply(
                        &tx,
                        &mut self.depth,
                        &mut self.last_id,
                        &self.limits,
                        &self.metrics,
                        op,
                    ) {
                        Ok(reply) => {
                            if let Some(r) = reply {
                                replies.push(r);
                            }
                            true
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "store operation failed");
                            false
                        }
                    }
                });
                ok && tx.commit().is_ok()
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot begin transaction");
                batch.clear();
                false
            }
        };
        if !committed {
            // Roll back the in-memory view and fail every request in the batch.
            self.last_id = last_before;
            self.depth = load_depth(&self.conn).unwrap_or_default();
            let total: u64 = self.depth.values().map(|&n| u64::from(n)).sum();
            self.metrics.queue_depth.store(total, Ordering::Relaxed);
            for r in replies {
                fail(r);
            }
            return;
        }
        for r in replies {
            match r {
                Reply::Insert(tx, done, live) => {
                    // Committed: push to the recipient if online, then answer the sender.
                    if let (Ok(id), Some((recipient, envelope))) = (&done.result, live) {
                        self.registry.push(&recipient, Live { id: *id, envelope });
                    }
                    let _ = tx.send(done);
                }
                Reply::Load(tx, v) => {
                    let _ = tx.send(v);
                }
                Reply::Upload(tx, v) => {
                    let _ = tx.send(v);
                }
                Reply::Fetch(tx, v) => {
                    let _ = tx.send(v);
                }
            }
        }
    }

    fn apply(
        tx: &rusqlite::Transaction<'_>,
        depth: &mut HashMap<DeviceId, u32>,
        last_id: &mut u64,
        limits: &StoreLimits,
        metrics: &Metrics,
        op: Op,
    ) -> Result<Option<Reply>, rusqlite::Error> {
        Ok(Some(match op {
            Op::Insert {
                request_id,
                recipient,
                envelope,
                received,
                done,
            } => {
                let count = depth.entry(recipient).or_insert(0);
                let mut live = None;
                let result = if *count >= limits.max_queue_per_device {
                    Err(StoreError::QueueFull)
                } else {
                    tx.prepare_cached("INSERT INTO queue (recipient, envelope) VALUES (?1, ?2)")?
                        .execute(params![recipient.as_bytes().as_slice(), &envelope])?;
                    *count += 1;
                    metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
                    let id = u64::try_from(tx.last_insert_rowid()).unwrap_or(0);
                    *last_id = (*last_id).max(id);
                    live = Some((recipient, envelope));
                    Ok(id)
                };
                Reply::Insert(
                    done,
                    InsertDone {
                        request_id,
                        received,
                        result,
                    },
                    live,
                )
            }
            Op::Ack { device, ids } => {
                let mut stmt =
                    tx.prepare_cached("DELETE FROM queue WHERE id = ?1 AND recipient = ?2")?;
                let mut removed = 0u32;
                for id in ids {
                    let Ok(id) = i64::try_from(id) else { continue };
                    removed += stmt.execute(params![id, device.as_bytes().as_slice()])? as u32;
                }
                metrics
                    .queue_depth
                    .fetch_sub(u64::from(removed), Ordering::Relaxed);
                if let Some(n) = depth.get_mut(&device) {
                    *n = n.saturating_sub(removed);
                    if *n == 0 {
                        depth.remove(&device);
                    }
                }
                return Ok(None);
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
                Reply::Load(
                    reply,
                    Ok(Backlog {
                        rows,
                        watermark: *last_id,
                    }),
                )
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
                Reply::Upload(reply, result)
            }
            Op::Fetch { device, reply } => {
                let dev = device.as_bytes().as_slice();
                let bundle: Option<Vec<u8>> = tx
                    .prepare_cached("SELECT bundle FROM bundles WHERE device = ?1")?
                    .query_row(params![dev], |r| r.get(0))
                    .optional()?;
                let result = match bundle {
                    None => Err(StoreError::NotFound),
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
        }))
    }
}

/// Queue length per recipient, from the database.
fn load_depth(conn: &Connection) -> Result<HashMap<DeviceId, u32>, rusqlite::Error> {
    let mut depth = HashMap::new();
    let mut stmt = conn.prepare("SELECT recipient, count(*) FROM queue GROUP BY recipient")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, u32>(1)?)))?;
    for row in rows {
        let (device, n) = row?;
        if let Ok(device) = DeviceId::from_slice(&device) {
            depth.insert(device, n);
        }
    }
    Ok(depth)
}

fn fail(r: Reply) {
    match r {
        Reply::Insert(tx, mut done, _) => {
            done.result = Err(StoreError::Database);
            let _ = tx.send(done);
        }
        Reply::Load(tx, _) => {
            let _ = tx.send(Err(StoreError::Database));
        }
        Reply::Upload(tx, _) => {
            let _ = tx.send(Err(StoreError::Database));
        }
        Reply::Fetch(tx, _) => {
            let _ = tx.send(Err(StoreError::Database));
        }
    }
}

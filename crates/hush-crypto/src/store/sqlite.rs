//! Durable backend on SQLite (bundled; no system library needed).

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::{Backend, Table};
use crate::error::StoreError;

/// A [`Backend`] in one SQLite database file. Every write is committed before it returns
/// (WAL journal, `synchronous=FULL`), so a crash or an app restart loses nothing that a call
/// returned from. The file holds private keys: keep it in app-private storage.
pub struct SqliteBackend {
    conn: Connection,
}

impl SqliteBackend {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::from_connection(Connection::open(path).map_err(StoreError::new)?)
    }

    /// A private in-memory database (tests).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::from_connection(Connection::open_in_memory().map_err(StoreError::new)?)
    }

    fn from_connection(conn: Connection) -> Result<Self, StoreError> {
        // journal_mode returns a row, so it goes through query_row.
        let _mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(StoreError::new)?;
        conn.execute_batch(
            "PRAGMA synchronous=FULL;
             PRAGMA secure_delete=ON;
             CREATE TABLE IF NOT EXISTS hush_kv (
                 tbl INTEGER NOT NULL,
                 k BLOB NOT NULL,
                 v BLOB NOT NULL,
                 PRIMARY KEY (tbl, k)
             ) WITHOUT ROWID;",
        )
        .map_err(StoreError::new)?;
        Ok(Self { conn })
    }
}

impl std::fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBackend")
            .field("path", &self.conn.path())
            .finish()
    }
}

impl Backend for SqliteBackend {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.conn
            .prepare_cached("SELECT v FROM hush_kv WHERE tbl = ?1 AND k = ?2")
            .and_then(|mut s| {
                s.query_row(params![table.id(), key], |r| r.get(0))
                    .optional()
            })
            .map_err(StoreError::new)
    }

    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO hush_kv (tbl, k, v) VALUES (?1, ?2, ?3)")
            .and_then(|mut s| s.execute(params![table.id(), key, value]))
            .map(|_| ())
            .map_err(StoreError::new)
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached("DELETE FROM hush_kv WHERE tbl = ?1 AND k = ?2")
            .and_then(|mut s| s.execute(params![table.id(), key]))
            .map(|n| n > 0)
            .map_err(StoreError::new)
    }

    fn keys(&self, table: Table) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT k FROM hush_kv WHERE tbl = ?1 ORDER BY k")
            .map_err(StoreError::new)?;
        let rows = stmt
            .query_map(params![table.id()], |r| r.get::<_, Vec<u8>>(0))
            .map_err(StoreError::new)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(StoreError::new)
    }
}

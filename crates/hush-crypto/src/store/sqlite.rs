//! Durable backend on SQLite (bundled; no system library needed), optionally encrypted at rest
//! under a key the app provides.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::cipher::{RowCipher, StoreKey};
use super::{Backend, Table};
use crate::error::StoreError;

/// Table number of the row that marks (and checks the key of) an encrypted store. Not a
/// [`Table`].
const MARKER_TABLE: u8 = 255;
const MARKER_KEY: &[u8] = b"hush-store-encryption-v1";

/// A stored `(key, value)` pair as it is in the file.
type Row = (Vec<u8>, Vec<u8>);

/// A [`Backend`] in one SQLite database file. Every write is committed before it returns
/// (WAL journal, `synchronous=FULL`), so a crash or an app restart loses nothing that a call
/// returned from.
///
/// The file holds private keys. Opened with [`open`](Self::open) it keeps them in clear (keep
/// it in app-private storage); opened with [`open_encrypted`](Self::open_encrypted) every row is
/// encrypted under a key the app keeps in the OS keystore.
pub struct SqliteBackend {
    conn: Connection,
    cipher: Option<RowCipher>,
}

impl SqliteBackend {
    /// Opens (or creates) the unencrypted database at `path`. Refuses a database written by
    /// [`open_encrypted`](Self::open_encrypted).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let backend = Self::from_connection(Connection::open(path).map_err(StoreError::new)?)?;
        if backend.marker()?.is_some() {
            return Err(StoreError(
                "the device store is encrypted: open it with SqliteBackend::open_encrypted".into(),
            ));
        }
        Ok(backend)
    }

    /// Opens (or creates) the database at `path` encrypted at rest under `key`.
    ///
    /// Every value (identity and prekey private keys, the ed25519 seed, sessions, pinned peer
    /// identities) is sealed with AES-256-GCM-SIV under a key derived from `key`, bound to its
    /// table and row; row keys (peer names, prekey ids) are replaced by an HMAC under another
    /// derived key, so the file does not show whom the device talks to either. What remains
    /// visible: the number and sizes of rows per table.
    ///
    /// The app keeps `key` in the platform keystore (Android Keystore-wrapped, iOS Keychain
    /// with `kSecAttrAccessibleAfterFirstUnlockThisDeviceOnly`, libsecret / DPAPI on desktops)
    /// and never writes it next to the database. A new database is marked with a check value,
    /// so a wrong key fails here with a clear error rather than later. An existing unencrypted
    /// database is refused (encrypting one in place would leave its clear pages behind).
    ///
    /// ```no_run
    /// use hush_crypto::{DeviceStore, SqliteBackend, StoreKey};
    /// # fn keystore_get_or_create() -> [u8; 32] { [7; 32] }
    /// let key = StoreKey::from_bytes(keystore_get_or_create());
    /// let backend = SqliteBackend::open_encrypted("device.db", &key)?;
    /// let store = DeviceStore::open_or_create(backend, 1, &mut hush_crypto::rand::rng())?;
    /// # Ok::<(), hush_crypto::Error>(())
    /// ```
    pub fn open_encrypted(path: impl AsRef<Path>, key: &StoreKey) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(StoreError::new)?;
        Self::encrypted_from_connection(conn, key)
    }

    /// A private in-memory database (tests).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::from_connection(Connection::open_in_memory().map_err(StoreError::new)?)
    }

    fn encrypted_from_connection(conn: Connection, key: &StoreKey) -> Result<Self, StoreError> {
        let mut backend = Self::from_connection(conn)?;
        let cipher = RowCipher::new(key);
        match backend.marker()? {
            Some(check) => cipher.check_marker(MARKER_TABLE, MARKER_KEY, &check)?,
            None => {
                let rows: i64 = backend
                    .conn
                    .query_row("SELECT COUNT(*) FROM hush_kv", [], |r| r.get(0))
                    .map_err(StoreError::new)?;
                if rows > 0 {
                    return Err(StoreError(
                        "the device store holds unencrypted data; it cannot be encrypted in place"
                            .into(),
                    ));
                }
                let check = cipher.marker(MARKER_TABLE, MARKER_KEY);
                backend.raw_put(MARKER_TABLE, MARKER_KEY, &check)?;
            }
        }
        backend.cipher = Some(cipher);
        Ok(backend)
    }

    fn marker(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.raw_get(MARKER_TABLE, MARKER_KEY)
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
        Ok(Self { conn, cipher: None })
    }

    fn raw_get(&self, table: u8, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.conn
            .prepare_cached("SELECT v FROM hush_kv WHERE tbl = ?1 AND k = ?2")
            .and_then(|mut s| s.query_row(params![table, key], |r| r.get(0)).optional())
            .map_err(StoreError::new)
    }

    fn raw_put(&mut self, table: u8, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO hush_kv (tbl, k, v) VALUES (?1, ?2, ?3)")
            .and_then(|mut s| s.execute(params![table, key, value]))
            .map(|_| ())
            .map_err(StoreError::new)
    }

    fn raw_delete(&mut self, table: u8, key: &[u8]) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached("DELETE FROM hush_kv WHERE tbl = ?1 AND k = ?2")
            .and_then(|mut s| s.execute(params![table, key]))
            .map(|n| n > 0)
            .map_err(StoreError::new)
    }

    fn raw_rows(&self, table: u8) -> Result<Vec<Row>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT k, v FROM hush_kv WHERE tbl = ?1 ORDER BY k")
            .map_err(StoreError::new)?;
        let rows = stmt
            .query_map(params![table], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(StoreError::new)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(StoreError::new)
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
        match &self.cipher {
            None => self.raw_get(table.id(), key),
            Some(c) => {
                let row = c.row_key(table.id(), key);
                match self.raw_get(table.id(), &row)? {
                    None => Ok(None),
                    Some(sealed) => {
                        let (stored_key, value) = c.open(table.id(), &row, &sealed)?;
                        if stored_key != key {
                            return Err(StoreError("encrypted row holds another key".into()));
                        }
                        Ok(Some(value))
                    }
                }
            }
        }
    }

    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        match &self.cipher {
            None => self.raw_put(table.id(), key, value),
            Some(c) => {
                let row = c.row_key(table.id(), key);
                let sealed = c.seal(table.id(), &row, key, value)?;
                self.raw_put(table.id(), &row, &sealed)
            }
        }
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<bool, StoreError> {
        let row = match &self.cipher {
            None => key.to_vec(),
            Some(c) => c.row_key(table.id(), key),
        };
        self.raw_delete(table.id(), &row)
    }

    fn keys(&self, table: Table) -> Result<Vec<Vec<u8>>, StoreError> {
        let rows = self.raw_rows(table.id())?;
        let Some(c) = &self.cipher else {
            return Ok(rows.into_iter().map(|(k, _)| k).collect());
        };
        let mut keys = rows
            .into_iter()
            .map(|(row, sealed)| c.open(table.id(), &row, &sealed).map(|(k, _)| k))
            .collect::<Result<Vec<_>, _>>()?;
        keys.sort();
        Ok(keys)
    }
}

//! In-memory backend.

use std::collections::BTreeMap;

use super::{Backend, Table};
use crate::error::StoreError;

/// A [`Backend`] in memory: nothing survives the process. Cloning copies the whole state,
/// which tests use to fork a device.
#[derive(Clone, Default)]
pub struct MemoryBackend {
    map: BTreeMap<(Table, Vec<u8>), Vec<u8>>,
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MemoryBackend({} entries)", self.map.len())
    }
}

impl Drop for MemoryBackend {
    fn drop(&mut self) {
        // Values include private keys and session state.
        for v in self.map.values_mut() {
            zeroize::Zeroize::zeroize(v);
        }
    }
}

impl Backend for MemoryBackend {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.map.get(&(table, key.to_vec())).cloned())
    }

    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.map.insert((table, key.to_vec()), value.to_vec());
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.map.remove(&(table, key.to_vec())).is_some())
    }

    fn keys(&self, table: Table) -> Result<Vec<Vec<u8>>, StoreError> {
        Ok(self
            .map
            .range((table, Vec::new())..)
            .take_while(|((t, _), _)| *t == table)
            .map(|((_, k), _)| k.clone())
            .collect())
    }
}

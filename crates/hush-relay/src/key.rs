//! The relay's long-term ed25519 key, kept in a file next to its database.
//!
//! Its public half goes into every challenge. On a plaintext listener each device signs over
//! it (the relay-key channel binding), so an answer made for this relay does not verify at
//! another one, and a device that pins this key refuses to answer another relay's challenge.
//! The private half is only kept (not used yet): it makes the key a real key pair, so that the
//! relay can later sign what it hands out without a key change.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use zeroize::Zeroizing;

use crate::RelayError;

/// Length of the key file: the 32-byte ed25519 secret seed.
const SEED_LEN: usize = 32;

/// The default key file for a database: `<db_path>.key`.
pub(crate) fn default_path(db_path: &Path) -> PathBuf {
    let mut path = db_path.as_os_str().to_owned();
    path.push(".key");
    PathBuf::from(path)
}

/// Loads the relay key from `path`, creating it (owner-only permissions) on first start.
/// Returns the public key.
pub(crate) fn load_or_create(path: &Path) -> Result<[u8; 32], RelayError> {
    let file_err = |source| RelayError::KeyFile {
        path: path.to_owned(),
        source,
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            let seed: &[u8; SEED_LEN] =
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| RelayError::KeyFormat {
                        path: path.to_owned(),
                    })?;
            Ok(SigningKey::from_bytes(seed).verifying_key().to_bytes())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let seed = Zeroizing::new(rand::random::<[u8; SEED_LEN]>());
            match write_new(path, seed.as_slice()) {
                Ok(()) => {}
                // Another relay process created it first: use that one.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return load_or_create(path)
                }
                Err(e) => return Err(file_err(e)),
            }
            let public = SigningKey::from_bytes(&seed).verifying_key().to_bytes();
            tracing::info!(path = %path.display(), "created a new relay key");
            Ok(public)
        }
        Err(e) => Err(file_err(e)),
    }
}

/// Writes a new key file atomically: a temporary file (mode 0600 on Unix) synced and renamed
/// into place. Refuses to replace a key file that appeared meanwhile.
fn write_new(path: &Path, seed: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(seed)?;
    file.sync_all()?;
    drop(file);
    // hard_link fails if `path` exists: a key another process created first is kept.
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    linked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "hush-relay-key-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn key_is_created_once_then_reloaded() {
        let dir = temp_dir();
        let path = default_path(&dir.join("relay.db"));
        assert_eq!(path, dir.join("relay.db.key"));
        let first = load_or_create(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap().len(), SEED_LEN);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "key file readable by others: {mode:o}");
        }
        assert_eq!(load_or_create(&path).unwrap(), first);
        let other = load_or_create(&dir.join("other.key")).unwrap();
        assert_ne!(other, first);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_damaged_key_file_is_refused() {
        let dir = temp_dir();
        let path = dir.join("relay.db.key");
        std::fs::write(&path, [1u8; 31]).unwrap();
        assert!(matches!(
            load_or_create(&path),
            Err(RelayError::KeyFormat { .. })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}

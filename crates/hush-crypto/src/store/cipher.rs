//! Row encryption for a device store at rest (used by `SqliteBackend::open_encrypted`).
//!
//! From the app's 32-byte [`StoreKey`], HKDF-SHA256 (salt `"hush store v1"`) derives an
//! AES-256-GCM-SIV key (info `"row encryption"`) and an HMAC-SHA256 key (info `"row names"`).
//! A row `(table, key, value)` is stored as
//!
//! ```text
//! row key = HMAC(name key, table u8 ‖ key)                         (32 bytes)
//! value   = nonce [12] ‖ AES-256-GCM-SIV(key_len u16be ‖ key ‖ value,
//!                                        aad = "hush store v1" ‖ table u8 ‖ row key)
//! ```
//!
//! The associated data binds a sealed value to its table and row, so rows cannot be swapped
//! or moved between tables by someone editing the file. Nonces are random; GCM-SIV keeps a
//! repeated nonce from exposing anything beyond equality of identical rows.

use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::StoreError;

const SALT: &[u8] = b"hush store v1";
const NONCE_LEN: usize = 12;
const CHECK: &[u8] = b"hush store key check";

/// The app's key for a device store encrypted at rest: 32 random bytes the app keeps in the
/// platform keystore. Zeroized on drop; `Debug` redacts it.
#[derive(Clone)]
pub struct StoreKey(Zeroizing<[u8; 32]>);

impl StoreKey {
    /// The key with these bytes (as kept in the keystore).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// A new random key (store it in the keystore before using it).
    pub fn generate<R: rand::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(k.as_mut());
        Self(k)
    }

    /// The key bytes, to hand to the keystore.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        self.0.clone()
    }
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreKey(<redacted>)")
    }
}

/// Seals and opens rows under keys derived from a [`StoreKey`].
pub(crate) struct RowCipher {
    aead: Aes256GcmSiv,
    names: Zeroizing<[u8; 32]>,
}

fn corrupt(reason: &str) -> StoreError {
    StoreError(format!("encrypted device store: {reason}"))
}

impl RowCipher {
    pub(crate) fn new(key: &StoreKey) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(SALT), key.0.as_ref());
        let mut enc = Zeroizing::new([0u8; 32]);
        let mut names = Zeroizing::new([0u8; 32]);
        // 32-byte outputs are far below HKDF-SHA256's limit of 8160 bytes.
        let _ = hk.expand(b"row encryption", enc.as_mut());
        let _ = hk.expand(b"row names", names.as_mut());
        Self {
            aead: Aes256GcmSiv::new(enc.as_ref().into()),
            names,
        }
    }

    /// The stored name of row `key` in `table`.
    pub(crate) fn row_key(&self, table: u8, key: &[u8]) -> Vec<u8> {
        // HMAC takes keys of any length: this cannot fail.
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(self.names.as_ref()) else {
            return Vec::new();
        };
        mac.update(&[table]);
        mac.update(key);
        mac.finalize().into_bytes().to_vec()
    }

    fn aad(table: u8, row: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(SALT.len() + 1 + row.len());
        aad.extend_from_slice(SALT);
        aad.push(table);
        aad.extend_from_slice(row);
        aad
    }

    /// Seals `(key, value)` for the row named `row` in `table`.
    pub(crate) fn seal(
        &self,
        table: u8,
        row: &[u8],
        key: &[u8],
        value: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        let key_len = u16::try_from(key.len()).map_err(|_| corrupt("row key too long"))?;
        let mut plain = Zeroizing::new(Vec::with_capacity(2 + key.len() + value.len()));
        plain.extend_from_slice(&key_len.to_be_bytes());
        plain.extend_from_slice(key);
        plain.extend_from_slice(value);
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .aead
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &Self::aad(table, row),
                },
            )
            .map_err(|_| corrupt("encryption failed"))?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens the value stored in row `row` of `table`: `(key, value)`.
    pub(crate) fn open(
        &self,
        table: u8,
        row: &[u8],
        sealed: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
        let (nonce, body) = sealed
            .split_at_checked(NONCE_LEN)
            .ok_or_else(|| corrupt("row too short"))?;
        let plain = Zeroizing::new(
            self.aead
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: body,
                        aad: &Self::aad(table, row),
                    },
                )
                .map_err(|_| corrupt("a row failed authentication (wrong key or tampered file)"))?,
        );
        let (len, rest) = plain
            .split_first_chunk::<2>()
            .ok_or_else(|| corrupt("row too short"))?;
        let (key, value) = rest
            .split_at_checked(usize::from(u16::from_be_bytes(*len)))
            .ok_or_else(|| corrupt("row key length out of range"))?;
        Ok((key.to_vec(), value.to_vec()))
    }

    /// The check value written into a new encrypted store.
    pub(crate) fn marker(&self, table: u8, row: &[u8]) -> Vec<u8> {
        // Sealing a constant cannot fail; an empty marker would fail the check on open.
        self.seal(table, row, &[], CHECK).unwrap_or_default()
    }

    /// Checks the store's check value: a wrong key fails here, before any row is used.
    pub(crate) fn check_marker(
        &self,
        table: u8,
        row: &[u8],
        marker: &[u8],
    ) -> Result<(), StoreError> {
        match self.open(table, row, marker) {
            Ok((_, value)) if value == CHECK => Ok(()),
            _ => Err(StoreError(
                "wrong key for the encrypted device store (or the file was tampered with)".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_bound_to_table_and_name() {
        let c = RowCipher::new(&StoreKey::from_bytes([1; 32]));
        let row = c.row_key(2, b"bob");
        let sealed = c.seal(2, &row, b"bob", b"session").unwrap();
        assert_eq!(
            c.open(2, &row, &sealed).unwrap(),
            (b"bob".to_vec(), b"session".to_vec())
        );
        assert!(c.open(3, &row, &sealed).is_err(), "moved to another table");
        assert!(
            c.open(2, &c.row_key(2, b"eve"), &sealed).is_err(),
            "moved to another row"
        );
        let mut flipped = sealed.clone();
        flipped[20] ^= 1;
        assert!(c.open(2, &row, &flipped).is_err());
        assert!(c.open(2, &row, &sealed[..5]).is_err());
        let other = RowCipher::new(&StoreKey::from_bytes([2; 32]));
        assert!(other.open(2, &row, &sealed).is_err());
        assert_ne!(other.row_key(2, b"bob"), row, "names depend on the key");
        assert!(!format!("{:?}", StoreKey::from_bytes([0xab; 32])).contains("ab"));
    }
}

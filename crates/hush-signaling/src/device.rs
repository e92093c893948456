//! Device addresses and relay authentication with ed25519 device keys.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::Error;

/// Length of a device address: an ed25519 public key.
pub const DEVICE_ID_LEN: usize = 32;

/// Length of the relay's authentication nonce.
pub const AUTH_NONCE_LEN: usize = 32;

/// Domain separator for the relay challenge.
const AUTH_CONTEXT: &[u8] = b"hush-relay-auth-v1\0";

/// Label of the signed message (shared with hush-crypto's `DeviceSigningKey::sign_challenge`).
const CHALLENGE_LABEL: &[u8] = b"hush relay challenge v1";

/// A device address: the device's 32-byte ed25519 public key.
///
/// Using the key itself as the address means the relay needs no account registry: a client
/// proves it owns an address by signing the relay's challenge with that key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId([u8; DEVICE_ID_LEN]);

impl DeviceId {
    /// Wraps 32 raw key bytes (no validation that they are a valid curve point).
    pub const fn from_bytes(bytes: [u8; DEVICE_ID_LEN]) -> Self {
        Self(bytes)
    }

    /// Parses an address from untrusted bytes; must be exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, Error> {
        <[u8; DEVICE_ID_LEN]>::try_from(bytes)
            .map(Self)
            .map_err(|_| Error::Malformed("device id must be 32 bytes"))
    }

    /// The raw key bytes.
    pub const fn as_bytes(&self) -> &[u8; DEVICE_ID_LEN] {
        &self.0
    }

    /// The address as lowercase hex (64 characters).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({self})")
    }
}

impl fmt::Display for DeviceId {
    /// Shows the first 8 bytes in hex, which is enough to tell devices apart in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl From<&VerifyingKey> for DeviceId {
    fn from(key: &VerifyingKey) -> Self {
        Self(key.to_bytes())
    }
}

/// Something that holds a device's ed25519 private key and can answer relay challenges.
///
/// Implemented for [`ed25519_dalek::SigningKey`] and (feature `crypto`) for
/// `hush_crypto::DeviceSigningKey`; an app that keeps the key elsewhere (a hardware keystore)
/// implements it itself.
pub trait DeviceSigner: Send + Sync {
    /// This device's address (its ed25519 public key).
    fn device_id(&self) -> DeviceId;
    /// Signs a relay challenge: an ed25519 signature over
    /// `"hush relay challenge v1" || u32_be(len(challenge)) || challenge`.
    fn sign_challenge(&self, challenge: &[u8]) -> [u8; 64];
}

impl DeviceSigner for SigningKey {
    fn device_id(&self) -> DeviceId {
        DeviceId::from(&self.verifying_key())
    }

    fn sign_challenge(&self, challenge: &[u8]) -> [u8; 64] {
        Signer::sign(self, &labelled(challenge)).to_bytes()
    }
}

/// The message actually signed for a challenge.
fn labelled(challenge: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CHALLENGE_LABEL.len() + 4 + challenge.len());
    m.extend_from_slice(CHALLENGE_LABEL);
    m.extend_from_slice(
        &u32::try_from(challenge.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    m.extend_from_slice(challenge);
    m
}

/// The bytes a device signs to answer a relay challenge:
/// `"hush-relay-auth-v1\0" || nonce || device_id`.
pub fn auth_message(nonce: &[u8; AUTH_NONCE_LEN], device: &DeviceId) -> Vec<u8> {
    let mut m = Vec::with_capacity(AUTH_CONTEXT.len() + AUTH_NONCE_LEN + DEVICE_ID_LEN);
    m.extend_from_slice(AUTH_CONTEXT);
    m.extend_from_slice(nonce);
    m.extend_from_slice(device.as_bytes());
    m
}

/// Signs a relay challenge.
pub fn sign_challenge(signer: &dyn DeviceSigner, nonce: &[u8; AUTH_NONCE_LEN]) -> [u8; 64] {
    signer.sign_challenge(&auth_message(nonce, &signer.device_id()))
}

/// Verifies a device's answer to a relay challenge (strict ed25519 verification: rejects
/// non-canonical encodings and small-order keys).
pub fn verify_challenge(
    device: &DeviceId,
    nonce: &[u8; AUTH_NONCE_LEN],
    signature: &[u8],
) -> Result<(), Error> {
    let key = VerifyingKey::from_bytes(device.as_bytes())
        .map_err(|_| Error::AuthFailed("device key is not a valid ed25519 key"))?;
    let sig = Signature::from_slice(signature)
        .map_err(|_| Error::AuthFailed("signature must be 64 bytes"))?;
    key.verify_strict(&labelled(&auth_message(nonce, device)), &sig)
        .map_err(|_| Error::AuthFailed("bad signature"))
}

/// Makes a fresh random ed25519 device key (for tests, tools and benchmarks; apps normally get
/// their device key from hush-crypto's identity store).
pub fn generate_device_key() -> SigningKey {
    SigningKey::from_bytes(&rand::random::<[u8; 32]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_round_trip() {
        let key = generate_device_key();
        let nonce = [7u8; AUTH_NONCE_LEN];
        let sig = sign_challenge(&key, &nonce);
        verify_challenge(&key.device_id(), &nonce, &sig).unwrap();
    }

    #[test]
    fn challenge_rejects_other_nonce_other_key_and_garbage() {
        let key = generate_device_key();
        let other = generate_device_key();
        let nonce = [7u8; AUTH_NONCE_LEN];
        let sig = sign_challenge(&key, &nonce);
        assert!(verify_challenge(&key.device_id(), &[8u8; AUTH_NONCE_LEN], &sig).is_err());
        assert!(verify_challenge(&other.device_id(), &nonce, &sig).is_err());
        assert!(verify_challenge(&key.device_id(), &nonce, &sig[..63]).is_err());
        assert!(verify_challenge(&DeviceId::from_bytes([0xff; 32]), &nonce, &sig).is_err());
    }

    #[test]
    fn device_id_parsing() {
        assert!(DeviceId::from_slice(&[1; 31]).is_err());
        assert!(DeviceId::from_slice(&[1; 33]).is_err());
        let id = DeviceId::from_slice(&[1; 32]).unwrap();
        assert_eq!(id.to_string(), "0101010101010101");
        assert_eq!(id.to_hex().len(), 64);
    }
}

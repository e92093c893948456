//! Identifiers: calls, devices and legs.

use std::fmt;

use ed25519_dalek::VerifyingKey;

use crate::error::WireError;

/// Length of a [`CallId`].
pub const CALL_ID_LEN: usize = 16;

/// A group call's id: 16 random bytes chosen by its creator.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId([u8; CALL_ID_LEN]);

impl CallId {
    /// Wraps raw bytes.
    pub const fn from_bytes(bytes: [u8; CALL_ID_LEN]) -> Self {
        Self(bytes)
    }

    /// A fresh random call id.
    pub fn random<R: rand::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut b = [0u8; CALL_ID_LEN];
        rng.fill_bytes(&mut b);
        Self(b)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; CALL_ID_LEN] {
        &self.0
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CallId({self})")
    }
}

/// A device's address: its ed25519 public key (the same 32 bytes as hush-signaling's
/// `DeviceId` and hush-crypto's `DeviceAuthKey`), checked to be a valid, not small-order point.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId([u8; 32]);

impl DeviceId {
    /// Parses and checks 32 bytes: they must be a valid ed25519 point of large order.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, WireError> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| WireError {
            what: "device id",
            reason: "not a valid ed25519 point",
        })?;
        if key.is_weak() {
            return Err(WireError {
                what: "device id",
                reason: "small-order ed25519 point",
            });
        }
        Ok(Self(*bytes))
    }

    /// The public key of `signing_key`.
    pub fn from_signing_key(signing_key: &ed25519_dalek::SigningKey) -> Self {
        Self(signing_key.verifying_key().to_bytes())
    }

    /// The 32 key bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key, for verifying. The bytes were checked at construction.
    pub(crate) fn verifying_key(&self) -> Result<VerifyingKey, WireError> {
        VerifyingKey::from_bytes(&self.0).map_err(|_| WireError {
            what: "device id",
            reason: "not a valid ed25519 point",
        })
    }
}

impl fmt::Display for DeviceId {
    /// The first 8 bytes in hex, enough to tell devices apart in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({self})")
    }
}

/// One participant's transport leg on the SFU, assigned when its join is accepted. The driver
/// maps its network path (ICE credentials, 5-tuple) to this id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct LegId(pub u64);

impl fmt::Display for LegId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "leg{}", self.0)
    }
}

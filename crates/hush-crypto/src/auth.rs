//! ed25519 device keys for authenticating to the relay, bound to the Signal identity.
//!
//! The device signs relay challenges with its [`DeviceSigningKey`]. Its public half,
//! [`DeviceAuthKey`], is the device's hush address, and travels in every uploaded bundle bound
//! to the Signal identity *both ways*:
//!
//! * the Signal identity key (XEd25519) signs
//!   `"hush device auth key v1" || registration_id u32be || device_id u8 || ed25519_public [32]`
//!   (the identity vouches for the ed25519 key), and
//! * the ed25519 key signs
//!   `"hush device identity v1" || registration_id u32be || device_id u8 || identity_key [33]`
//!   (the device address vouches for the identity).
//!
//! A relay or peer that checks both knows the two keys were put together by the holder of both
//! secrets: nobody can pair someone else's device address with their own Signal identity (the
//! bundle substitution a malicious relay would need), nor claim someone else's identity.
//!
//! Challenge signatures cover `"hush relay challenge v1" || len u32be || challenge`, so a
//! signature made here cannot be replayed as a signature over anything else.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use libsignal_protocol::{IdentityKey, IdentityKeyPair};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

const BINDING_LABEL: &[u8] = b"hush device auth key v1";
const IDENTITY_BINDING_LABEL: &[u8] = b"hush device identity v1";
const CHALLENGE_LABEL: &[u8] = b"hush relay challenge v1";
/// Length of an ed25519 signature.
pub const AUTH_SIGNATURE_LEN: usize = 64;

/// The device's ed25519 signing key (secret). Zeroized on drop; `Debug` redacts it.
#[derive(Clone)]
pub struct DeviceSigningKey(SigningKey);

impl DeviceSigningKey {
    /// A new random key.
    pub fn generate<R: rand::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        Self::from_seed(&seed)
    }

    /// The key with the given 32-byte seed (as stored).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self(SigningKey::from_bytes(seed))
    }

    /// The 32-byte seed, for storage.
    pub fn to_seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The public half.
    pub fn auth_key(&self) -> DeviceAuthKey {
        DeviceAuthKey(self.0.verifying_key())
    }

    /// Signs a relay challenge.
    pub fn sign_challenge(&self, challenge: &[u8]) -> [u8; AUTH_SIGNATURE_LEN] {
        self.0.sign(&challenge_message(challenge)).to_bytes()
    }

    /// The binding signature: the Signal identity vouches for this ed25519 key.
    pub(crate) fn binding<R: rand::CryptoRng + rand::Rng>(
        &self,
        identity: &IdentityKeyPair,
        registration_id: u32,
        device_id: u8,
        rng: &mut R,
    ) -> Result<Vec<u8>> {
        let msg = binding_message(registration_id, device_id, &self.auth_key());
        Ok(identity
            .private_key()
            .calculate_signature(&msg, rng)
            .map_err(libsignal_protocol::SignalProtocolError::from)?
            .into_vec())
    }
}

impl DeviceSigningKey {
    /// The reverse binding signature: this ed25519 key vouches for the Signal `identity` (see
    /// the module docs).
    pub(crate) fn identity_binding(
        &self,
        identity: &IdentityKey,
        registration_id: u32,
        device_id: u8,
    ) -> [u8; AUTH_SIGNATURE_LEN] {
        self.0
            .sign(&identity_binding_message(
                registration_id,
                device_id,
                identity,
            ))
            .to_bytes()
    }
}

impl fmt::Debug for DeviceSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DeviceSigningKey({:?}, <secret redacted>)",
            self.auth_key()
        )
    }
}

/// The device's ed25519 public key, which the relay uses to check challenge signatures.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DeviceAuthKey(VerifyingKey);

impl DeviceAuthKey {
    /// Parses 32 bytes; fails for an invalid or weak (small-order) point.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| Error::Malformed {
            what: "device auth key",
            reason: "not a valid ed25519 point",
        })?;
        if key.is_weak() {
            return Err(Error::Malformed {
                what: "device auth key",
                reason: "small-order ed25519 point",
            });
        }
        Ok(Self(key))
    }

    /// The 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// Checks a challenge signature (strict ed25519 verification).
    pub fn verify_challenge(&self, challenge: &[u8], signature: &[u8]) -> Result<()> {
        let sig = Signature::from_slice(signature)
            .map_err(|_| Error::BadSignature("relay challenge signature malformed"))?;
        self.0
            .verify_strict(&challenge_message(challenge), &sig)
            .map_err(|_| Error::BadSignature("relay challenge"))
    }

    /// Checks that `identity` vouched for this key for the given registration and device id.
    pub fn verify_binding(
        &self,
        identity: &IdentityKey,
        registration_id: u32,
        device_id: u8,
        signature: &[u8],
    ) -> Result<()> {
        let msg = binding_message(registration_id, device_id, self);
        if identity.public_key().verify_signature(&msg, signature) {
            Ok(())
        } else {
            Err(Error::BadSignature("device auth key binding"))
        }
    }
}

impl DeviceAuthKey {
    /// Checks that this ed25519 key vouched for `identity` for the given registration and
    /// device id (strict ed25519 verification).
    pub fn verify_identity_binding(
        &self,
        identity: &IdentityKey,
        registration_id: u32,
        device_id: u8,
        signature: &[u8],
    ) -> Result<()> {
        let sig = Signature::from_slice(signature)
            .map_err(|_| Error::BadSignature("device identity binding malformed"))?;
        self.0
            .verify_strict(
                &identity_binding_message(registration_id, device_id, identity),
                &sig,
            )
            .map_err(|_| Error::BadSignature("device identity binding"))
    }
}

impl fmt::Debug for DeviceAuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceAuthKey(")?;
        for b in self.to_bytes() {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

fn binding_message(registration_id: u32, device_id: u8, key: &DeviceAuthKey) -> Vec<u8> {
    let mut m = Vec::with_capacity(BINDING_LABEL.len() + 37);
    m.extend_from_slice(BINDING_LABEL);
    m.extend_from_slice(&registration_id.to_be_bytes());
    m.push(device_id);
    m.extend_from_slice(&key.to_bytes());
    m
}

fn identity_binding_message(
    registration_id: u32,
    device_id: u8,
    identity: &IdentityKey,
) -> Vec<u8> {
    let identity = identity.serialize();
    let mut m = Vec::with_capacity(IDENTITY_BINDING_LABEL.len() + 5 + identity.len());
    m.extend_from_slice(IDENTITY_BINDING_LABEL);
    m.extend_from_slice(&registration_id.to_be_bytes());
    m.push(device_id);
    m.extend_from_slice(&identity);
    m
}

fn challenge_message(challenge: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CHALLENGE_LABEL.len() + 4 + challenge.len());
    m.extend_from_slice(CHALLENGE_LABEL);
    // Challenges are relay nonces (tens of bytes); saturating keeps this total, never panics.
    m.extend_from_slice(
        &u32::try_from(challenge.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    m.extend_from_slice(challenge);
    m
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn challenge_round_trip_and_tamper() {
        let mut rng = StdRng::seed_from_u64(7);
        let key = DeviceSigningKey::generate(&mut rng);
        let auth = DeviceAuthKey::from_bytes(&key.auth_key().to_bytes()).unwrap();
        let sig = key.sign_challenge(b"nonce-123");
        auth.verify_challenge(b"nonce-123", &sig).unwrap();
        assert!(auth.verify_challenge(b"nonce-124", &sig).is_err());
        let mut bad = sig;
        bad[5] ^= 1;
        assert!(auth.verify_challenge(b"nonce-123", &bad).is_err());
        assert!(auth.verify_challenge(b"nonce-123", &sig[..63]).is_err());
        let other = DeviceSigningKey::generate(&mut rng).auth_key();
        assert!(other.verify_challenge(b"nonce-123", &sig).is_err());
        assert!(!format!("{key:?}").contains(&hex::encode(key.to_seed().as_ref())));
    }

    #[test]
    fn binding_checks_identity_and_device() {
        let mut rng = StdRng::seed_from_u64(8);
        let identity = IdentityKeyPair::generate(&mut rng);
        let other = IdentityKeyPair::generate(&mut rng);
        let key = DeviceSigningKey::generate(&mut rng);
        let sig = key.binding(&identity, 42, 3, &mut rng).unwrap();
        let auth = key.auth_key();
        auth.verify_binding(identity.identity_key(), 42, 3, &sig)
            .unwrap();
        assert!(auth
            .verify_binding(other.identity_key(), 42, 3, &sig)
            .is_err());
        assert!(auth
            .verify_binding(identity.identity_key(), 42, 4, &sig)
            .is_err());
        assert!(auth
            .verify_binding(identity.identity_key(), 43, 3, &sig)
            .is_err());
        let swapped = DeviceSigningKey::generate(&mut rng).auth_key();
        assert!(swapped
            .verify_binding(identity.identity_key(), 42, 3, &sig)
            .is_err());
    }

    #[test]
    fn identity_binding_checks_key_identity_and_ids() {
        let mut rng = StdRng::seed_from_u64(9);
        let identity = IdentityKeyPair::generate(&mut rng);
        let other = IdentityKeyPair::generate(&mut rng);
        let key = DeviceSigningKey::generate(&mut rng);
        let sig = key.identity_binding(identity.identity_key(), 42, 3);
        let auth = key.auth_key();
        auth.verify_identity_binding(identity.identity_key(), 42, 3, &sig)
            .unwrap();
        assert!(auth
            .verify_identity_binding(other.identity_key(), 42, 3, &sig)
            .is_err());
        assert!(auth
            .verify_identity_binding(identity.identity_key(), 42, 7, &sig)
            .is_err());
        assert!(auth
            .verify_identity_binding(identity.identity_key(), 43, 3, &sig)
            .is_err());
        assert!(auth
            .verify_identity_binding(identity.identity_key(), 42, 3, &sig[..63])
            .is_err());
        let swapped = DeviceSigningKey::generate(&mut rng).auth_key();
        assert!(swapped
            .verify_identity_binding(identity.identity_key(), 42, 3, &sig)
            .is_err());
        // A challenge signature is never a valid identity binding (labels differ).
        let challenge = identity.identity_key().serialize();
        let as_challenge = key.sign_challenge(&challenge);
        assert!(auth
            .verify_identity_binding(identity.identity_key(), 42, 3, &as_challenge)
            .is_err());
    }

    #[test]
    fn weak_auth_keys_are_refused() {
        // The identity point (small order) encoded as y = 1.
        let mut ident = [0u8; 32];
        ident[0] = 1;
        assert!(DeviceAuthKey::from_bytes(&ident).is_err());
    }
}

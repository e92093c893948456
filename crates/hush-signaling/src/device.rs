//! Device addresses and relay authentication with ed25519 device keys.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::Error;

/// Length of a device address: an ed25519 public key.
pub const DEVICE_ID_LEN: usize = 32;

/// Length of the relay's authentication nonce.
pub const AUTH_NONCE_LEN: usize = 32;

/// Domain separator and version of the relay auth message. Version 2 binds the signature to
/// the connection ([`ChannelBinding`]); version 1 (`"hush-relay-auth-v1\0" || nonce ||
/// device`) bound nothing and is refused by the relay.
const AUTH_CONTEXT: &[u8] = b"hush-relay-auth-v2\0";

/// Length of the relay's public key (ed25519) sent in its challenge.
pub const RELAY_KEY_LEN: usize = 32;

/// Length of the RFC 9266 `tls-exporter` channel binding.
pub const TLS_EXPORTER_LEN: usize = 32;

/// The RFC 9266 exporter label for the `tls-exporter` channel binding (used with no context).
pub const TLS_EXPORTER_LABEL: &[u8] = b"EXPORTER-Channel-Binding";

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

/// What a device's answer to the relay challenge is bound to, so that the answer is worth
/// nothing on any other connection.
///
/// - [`ChannelBinding::TlsExporter`]: the connection's RFC 9266 `tls-exporter` value, when the
///   relay itself terminates TLS. A man in the middle has two TLS connections with two
///   different exporters, so an answer forwarded from one to the other does not verify. This
///   is the production setting.
/// - [`ChannelBinding::RelayKey`]: the relay's long-term public key from its challenge, on a
///   plaintext connection. It only names the relay the device meant to talk to: a device that
///   pins its relay's key cannot be authenticated into another relay (one relaying the
///   challenge of a second relay must show that relay's key, which the pin refuses, or its
///   own, which the second relay refuses). It does not stop an on-path attacker that forwards
///   the real relay's key and then takes over the plaintext TCP stream itself.
#[derive(Clone, PartialEq, Eq, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub enum ChannelBinding {
    /// The relay's ed25519 public key, as sent in its challenge.
    RelayKey([u8; RELAY_KEY_LEN]),
    /// The RFC 9266 `tls-exporter` value of the TLS connection carrying the frames.
    TlsExporter([u8; TLS_EXPORTER_LEN]),
}

impl ChannelBinding {
    /// The binding type, as carried in `AuthResponse.binding_type`.
    pub fn binding_type(&self) -> crate::proto::relay::ChannelBindingType {
        use crate::proto::relay::ChannelBindingType;
        match self {
            Self::RelayKey(_) => ChannelBindingType::RelayKey,
            Self::TlsExporter(_) => ChannelBindingType::TlsExporter,
        }
    }

    /// The bound value (relay key or exporter output).
    pub fn value(&self) -> &[u8; 32] {
        match self {
            Self::RelayKey(v) | Self::TlsExporter(v) => v,
        }
    }
}

impl fmt::Debug for ChannelBinding {
    /// Shows the relay key (public) but not the exporter value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RelayKey(k) => write!(f, "RelayKey({})", hex::encode(k)),
            Self::TlsExporter(_) => f.write_str("TlsExporter(..)"),
        }
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

/// The bytes a device signs to answer a relay challenge (auth message version 2):
/// `"hush-relay-auth-v2\0" || nonce || device_id || u8(binding type) || u8(32) || binding value`.
pub fn auth_message(
    nonce: &[u8; AUTH_NONCE_LEN],
    device: &DeviceId,
    binding: &ChannelBinding,
) -> Vec<u8> {
    let value = binding.value();
    let mut m =
        Vec::with_capacity(AUTH_CONTEXT.len() + AUTH_NONCE_LEN + DEVICE_ID_LEN + 2 + value.len());
    m.extend_from_slice(AUTH_CONTEXT);
    m.extend_from_slice(nonce);
    m.extend_from_slice(device.as_bytes());
    // Both fit in a byte: the type is a small enum value, the value is 32 bytes.
    m.push(binding.binding_type() as u8);
    m.push(value.len() as u8);
    m.extend_from_slice(value);
    m
}

/// Signs a relay challenge, bound to the connection it arrived on.
pub fn sign_challenge(
    signer: &dyn DeviceSigner,
    nonce: &[u8; AUTH_NONCE_LEN],
    binding: &ChannelBinding,
) -> [u8; 64] {
    signer.sign_challenge(&auth_message(nonce, &signer.device_id(), binding))
}

/// Verifies a device's answer to a relay challenge against the binding the verifier sees on
/// its own end of the connection (strict ed25519 verification: rejects non-canonical encodings
/// and small-order keys).
pub fn verify_challenge(
    device: &DeviceId,
    nonce: &[u8; AUTH_NONCE_LEN],
    binding: &ChannelBinding,
    signature: &[u8],
) -> Result<(), Error> {
    let key = VerifyingKey::from_bytes(device.as_bytes())
        .map_err(|_| Error::AuthFailed("device key is not a valid ed25519 key"))?;
    let sig = Signature::from_slice(signature)
        .map_err(|_| Error::AuthFailed("signature must be 64 bytes"))?;
    key.verify_strict(&labelled(&auth_message(nonce, device, binding)), &sig)
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

    const RELAY: ChannelBinding = ChannelBinding::RelayKey([3; RELAY_KEY_LEN]);

    #[test]
    fn challenge_round_trip() {
        let key = generate_device_key();
        let nonce = [7u8; AUTH_NONCE_LEN];
        for binding in [RELAY, ChannelBinding::TlsExporter([4; TLS_EXPORTER_LEN])] {
            let sig = sign_challenge(&key, &nonce, &binding);
            verify_challenge(&key.device_id(), &nonce, &binding, &sig).unwrap();
        }
    }

    #[test]
    fn challenge_rejects_other_nonce_other_key_and_garbage() {
        let key = generate_device_key();
        let other = generate_device_key();
        let nonce = [7u8; AUTH_NONCE_LEN];
        let sig = sign_challenge(&key, &nonce, &RELAY);
        let verify = |device: &DeviceId, nonce, sig: &[u8]| {
            verify_challenge(device, nonce, &RELAY, sig).is_err()
        };
        assert!(verify(&key.device_id(), &[8u8; AUTH_NONCE_LEN], &sig));
        assert!(verify(&other.device_id(), &nonce, &sig));
        assert!(verify(&key.device_id(), &nonce, &sig[..63]));
        assert!(verify(&DeviceId::from_bytes([0xff; 32]), &nonce, &sig));
    }

    /// An answer bound to one connection does not verify for another: another relay key,
    /// another exporter, or the same 32 bytes under the other binding type.
    #[test]
    fn challenge_is_bound_to_its_channel() {
        let key = generate_device_key();
        let nonce = [7u8; AUTH_NONCE_LEN];
        let device = key.device_id();
        let sig = sign_challenge(&key, &nonce, &RELAY);
        for other in [
            ChannelBinding::RelayKey([9; RELAY_KEY_LEN]),
            ChannelBinding::TlsExporter([3; TLS_EXPORTER_LEN]),
        ] {
            assert!(verify_challenge(&device, &nonce, &other, &sig).is_err());
        }
        let tls = ChannelBinding::TlsExporter([5; TLS_EXPORTER_LEN]);
        let sig = sign_challenge(&key, &nonce, &tls);
        let other = ChannelBinding::TlsExporter([6; TLS_EXPORTER_LEN]);
        assert!(verify_challenge(&device, &nonce, &other, &sig).is_err());
    }

    /// A version 1 answer (signed over `"hush-relay-auth-v1\0" || nonce || device`) does not
    /// verify as version 2, whatever the binding.
    #[test]
    fn version_1_answers_do_not_verify() {
        let key = generate_device_key();
        let nonce = [7u8; AUTH_NONCE_LEN];
        let mut v1 = b"hush-relay-auth-v1\0".to_vec();
        v1.extend_from_slice(&nonce);
        v1.extend_from_slice(key.device_id().as_bytes());
        let sig = key.sign_challenge(&v1);
        assert!(verify_challenge(&key.device_id(), &nonce, &RELAY, &sig).is_err());
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

//! Public prekey material in a stable byte encoding: what a device uploads to the relay
//! ([`BundleUpload`]) and what a peer fetches to start a session ([`PeerBundle`]).
//!
//! Encoding (big-endian; `bytes16` = u16 length then bytes; every length bounded; trailing
//! bytes rejected):
//!
//! ```text
//! DeviceKeys   = registration_id u32 | device_id u8 (1..=127) | identity_key bytes16 (≤64)
//!              | ed25519_auth_key [32] | auth_binding_signature bytes16 (≤128)
//!              | identity_binding_signature [64]
//! OneTime      = id u32 | public_key bytes16 (≤64)
//! Signed       = id u32 | public_key bytes16 (≤64) | signature bytes16 (≤128)
//! Kyber        = id u32 | public_key bytes16 (≤2048) | signature bytes16 (≤128)
//! PeerBundle   = 0x10 | version u8 (=2) | DeviceKeys | Signed | Kyber | has_one_time u8 (0|1) | [OneTime]
//! BundleUpload = 0x11 | version u8 (=2) | DeviceKeys | Signed | Kyber (last resort)
//!              | n u16 (≤500) | n × OneTime | m u16 (≤100) | m × Kyber (one-time)
//! ```
//!
//! Public keys use libsignal's serialization (a type byte, then the key). Version 1 bundles
//! (no identity binding) are refused.

use libsignal_protocol::{
    kem, DeviceId, IdentityKey, KyberPreKeyId, PreKeyBundle, PreKeyId, PublicKey, SignedPreKeyId,
};

use crate::auth::{DeviceAuthKey, AUTH_SIGNATURE_LEN};
use crate::error::{Error, Result};
use crate::wire::{Reader, Writer};

/// Version byte of the bundle encodings (2: the device key also signs the identity).
pub const BUNDLE_VERSION: u8 = 2;
/// First byte of an encoded [`PeerBundle`].
pub const PEER_BUNDLE_TAG: u8 = 0x10;
/// First byte of an encoded [`BundleUpload`].
pub const BUNDLE_UPLOAD_TAG: u8 = 0x11;
/// Most one-time EC prekeys in one upload.
pub const MAX_UPLOAD_PRE_KEYS: usize = 500;
/// Most one-time Kyber prekeys in one upload.
pub const MAX_UPLOAD_KYBER_PRE_KEYS: usize = 100;

const MAX_EC_KEY: usize = 64;
const MAX_KYBER_KEY: usize = 2048;
const MAX_SIGNATURE: usize = 128;

/// Public half of a one-time EC prekey.
#[derive(Clone, Debug)]
pub struct OneTimePreKeyPublic {
    /// Prekey id.
    pub id: u32,
    /// Public key.
    pub public: PublicKey,
}

/// Public half of a signed EC prekey, with the identity key's signature over it.
#[derive(Clone, Debug)]
pub struct SignedPreKeyPublic {
    /// Signed prekey id.
    pub id: u32,
    /// Public key.
    pub public: PublicKey,
    /// XEd25519 signature by the identity key over `public.serialize()`.
    pub signature: Vec<u8>,
}

/// Public half of a Kyber (ML-KEM) prekey, with the identity key's signature over it.
#[derive(Clone)]
pub struct KyberPreKeyPublic {
    /// Kyber prekey id.
    pub id: u32,
    /// KEM public key.
    pub public: kem::PublicKey,
    /// XEd25519 signature by the identity key over `public.serialize()`.
    pub signature: Vec<u8>,
}

impl std::fmt::Debug for KyberPreKeyPublic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KyberPreKeyPublic")
            .field("id", &self.id)
            .field("public_len", &self.public.serialize().len())
            .finish_non_exhaustive()
    }
}

/// Who the bundle belongs to: Signal identity, ids, and the ed25519 relay-auth key bound to the
/// identity.
#[derive(Clone, Debug)]
pub struct DeviceKeys {
    /// Registration id of the device.
    pub registration_id: u32,
    /// Device id (1..=127).
    pub device_id: u8,
    /// The device's Signal identity key.
    pub identity_key: IdentityKey,
    /// The device's ed25519 key for relay authentication.
    pub auth_key: DeviceAuthKey,
    /// The identity key's signature binding `auth_key` (see [`DeviceAuthKey::verify_binding`](crate::DeviceAuthKey::verify_binding)).
    pub auth_binding: Vec<u8>,
    /// The ed25519 key's signature binding `identity_key` (see
    /// [`DeviceAuthKey::verify_identity_binding`](crate::DeviceAuthKey::verify_identity_binding)).
    pub identity_binding: [u8; AUTH_SIGNATURE_LEN],
}

impl DeviceKeys {
    /// Checks the binding of the ed25519 key and the identity key, both ways: the identity
    /// signed the ed25519 key, and the ed25519 key signed the identity.
    pub fn verify(&self) -> Result<()> {
        self.auth_key.verify_binding(
            &self.identity_key,
            self.registration_id,
            self.device_id,
            &self.auth_binding,
        )?;
        self.auth_key.verify_identity_binding(
            &self.identity_key,
            self.registration_id,
            self.device_id,
            &self.identity_binding,
        )
    }

    fn encode(&self, w: &mut Writer) -> Result<()> {
        w.u32(self.registration_id);
        w.u8(self.device_id);
        w.bytes16(&self.identity_key.serialize())?;
        w.put(&self.auth_key.to_bytes());
        w.bytes16(&self.auth_binding)?;
        w.put(&self.identity_binding);
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let registration_id = r.u32()?;
        let device_id = r.u8()?;
        if DeviceId::new(device_id).is_err() {
            return Err(r.malformed("device id out of range"));
        }
        let identity_key = IdentityKey::decode(r.bytes16(MAX_EC_KEY)?)
            .map_err(|_| r.malformed("bad identity key"))?;
        let auth_key = DeviceAuthKey::from_bytes(&r.array()?)?;
        let auth_binding = r.bytes16(MAX_SIGNATURE)?.to_vec();
        let identity_binding = r.array()?;
        Ok(Self {
            registration_id,
            device_id,
            identity_key,
            auth_key,
            auth_binding,
            identity_binding,
        })
    }
}

/// Everything a peer needs to start a PQXDH session with a device: one signed prekey, one
/// Kyber prekey, optionally one one-time EC prekey, plus the device keys.
#[derive(Clone, Debug)]
pub struct PeerBundle {
    /// Identity, ids and relay-auth key.
    pub device: DeviceKeys,
    /// The signed EC prekey.
    pub signed: SignedPreKeyPublic,
    /// A Kyber prekey (one-time if the relay had one, else the last-resort key).
    pub kyber: KyberPreKeyPublic,
    /// A one-time EC prekey, if the relay had one left.
    pub one_time: Option<OneTimePreKeyPublic>,
}

impl PeerBundle {
    /// Checks every signature: the ed25519 binding, the signed prekey and the Kyber prekey.
    pub fn verify(&self) -> Result<()> {
        self.device.verify()?;
        verify_prekey_signature(
            &self.device.identity_key,
            &self.signed.public.serialize(),
            &self.signed.signature,
        )?;
        verify_prekey_signature(
            &self.device.identity_key,
            &self.kyber.public.serialize(),
            &self.kyber.signature,
        )
    }

    /// The libsignal form, for `process_prekey_bundle`.
    pub fn to_signal(&self) -> Result<PreKeyBundle> {
        let device_id = DeviceId::new(self.device.device_id)
            .map_err(|_| Error::InvalidArgument("device id must be 1..=127"))?;
        Ok(PreKeyBundle::new(
            self.device.registration_id,
            device_id,
            self.one_time
                .as_ref()
                .map(|k| (PreKeyId::from(k.id), k.public)),
            SignedPreKeyId::from(self.signed.id),
            self.signed.public,
            self.signed.signature.clone(),
            KyberPreKeyId::from(self.kyber.id),
            self.kyber.public.clone(),
            self.kyber.signature.clone(),
            self.device.identity_key,
        )?)
    }

    /// Encodes the bundle.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut w = Writer::with_capacity(2000);
        w.u8(PEER_BUNDLE_TAG);
        w.u8(BUNDLE_VERSION);
        self.device.encode(&mut w)?;
        encode_signed(&mut w, &self.signed)?;
        encode_kyber(&mut w, &self.kyber)?;
        match &self.one_time {
            None => w.u8(0),
            Some(k) => {
                w.u8(1);
                encode_one_time(&mut w, k)?;
            }
        }
        Ok(w.buf)
    }

    /// Parses a bundle from untrusted bytes. Parsing checks structure and key encodings only;
    /// call [`verify`](Self::verify) (done by [`Device::process_bundle`](crate::Device::process_bundle)) for the signatures.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes, "peer bundle");
        check_header(&mut r, PEER_BUNDLE_TAG)?;
        let device = DeviceKeys::decode(&mut r)?;
        let signed = decode_signed(&mut r)?;
        let kyber = decode_kyber(&mut r)?;
        let one_time = match r.u8()? {
            0 => None,
            1 => Some(decode_one_time(&mut r)?),
            _ => return Err(r.malformed("bad one-time flag")),
        };
        r.finish()?;
        Ok(Self {
            device,
            signed,
            kyber,
            one_time,
        })
    }
}

/// What a device uploads to the relay: its device keys, current signed prekey, last-resort
/// Kyber prekey, and a batch of fresh one-time prekeys. The relay hands out one
/// [`PeerBundle`] per fetch with [`take_bundle`](Self::take_bundle), each one-time key once.
#[derive(Clone, Debug)]
pub struct BundleUpload {
    /// Identity, ids and relay-auth key.
    pub device: DeviceKeys,
    /// The current signed EC prekey.
    pub signed: SignedPreKeyPublic,
    /// The last-resort Kyber prekey (used when no one-time Kyber prekey is left).
    pub last_resort_kyber: KyberPreKeyPublic,
    /// Fresh one-time EC prekeys.
    pub one_time: Vec<OneTimePreKeyPublic>,
    /// Fresh one-time Kyber prekeys.
    pub kyber_one_time: Vec<KyberPreKeyPublic>,
}

impl BundleUpload {
    /// Checks every signature in the upload (relay side, before storing it).
    pub fn verify(&self) -> Result<()> {
        let id = &self.device.identity_key;
        self.device.verify()?;
        verify_prekey_signature(id, &self.signed.public.serialize(), &self.signed.signature)?;
        verify_prekey_signature(
            id,
            &self.last_resort_kyber.public.serialize(),
            &self.last_resort_kyber.signature,
        )?;
        for k in &self.kyber_one_time {
            verify_prekey_signature(id, &k.public.serialize(), &k.signature)?;
        }
        Ok(())
    }

    /// Removes one one-time EC and one one-time Kyber prekey (if any are left) and returns the
    /// bundle to give to one fetching peer.
    pub fn take_bundle(&mut self) -> PeerBundle {
        PeerBundle {
            device: self.device.clone(),
            signed: self.signed.clone(),
            kyber: self
                .kyber_one_time
                .pop()
                .unwrap_or_else(|| self.last_resort_kyber.clone()),
            one_time: self.one_time.pop(),
        }
    }

    /// Encodes the upload.
    pub fn encode(&self) -> Result<Vec<u8>> {
        if self.one_time.len() > MAX_UPLOAD_PRE_KEYS
            || self.kyber_one_time.len() > MAX_UPLOAD_KYBER_PRE_KEYS
        {
            return Err(Error::InvalidArgument("too many prekeys for one upload"));
        }
        let mut w = Writer::with_capacity(
            2000 + 40 * self.one_time.len() + 1800 * self.kyber_one_time.len(),
        );
        w.u8(BUNDLE_UPLOAD_TAG);
        w.u8(BUNDLE_VERSION);
        self.device.encode(&mut w)?;
        encode_signed(&mut w, &self.signed)?;
        encode_kyber(&mut w, &self.last_resort_kyber)?;
        // Both counts were checked against limits far below u16::MAX above.
        w.u16(self.one_time.len() as u16);
        for k in &self.one_time {
            encode_one_time(&mut w, k)?;
        }
        w.u16(self.kyber_one_time.len() as u16);
        for k in &self.kyber_one_time {
            encode_kyber(&mut w, k)?;
        }
        Ok(w.buf)
    }

    /// Parses an upload from untrusted bytes (structure and key encodings; see
    /// [`verify`](Self::verify) for signatures).
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes, "bundle upload");
        check_header(&mut r, BUNDLE_UPLOAD_TAG)?;
        let device = DeviceKeys::decode(&mut r)?;
        let signed = decode_signed(&mut r)?;
        let last_resort_kyber = decode_kyber(&mut r)?;
        let n = usize::from(r.u16()?);
        if n > MAX_UPLOAD_PRE_KEYS {
            return Err(r.malformed("too many one-time prekeys"));
        }
        let one_time = (0..n)
            .map(|_| decode_one_time(&mut r))
            .collect::<Result<Vec<_>>>()?;
        let m = usize::from(r.u16()?);
        if m > MAX_UPLOAD_KYBER_PRE_KEYS {
            return Err(r.malformed("too many one-time Kyber prekeys"));
        }
        let kyber_one_time = (0..m)
            .map(|_| decode_kyber(&mut r))
            .collect::<Result<Vec<_>>>()?;
        r.finish()?;
        Ok(Self {
            device,
            signed,
            last_resort_kyber,
            one_time,
            kyber_one_time,
        })
    }
}

fn verify_prekey_signature(identity: &IdentityKey, public: &[u8], signature: &[u8]) -> Result<()> {
    if identity.public_key().verify_signature(public, signature) {
        Ok(())
    } else {
        Err(Error::BadSignature("prekey"))
    }
}

fn check_header(r: &mut Reader<'_>, tag: u8) -> Result<()> {
    if r.u8()? != tag {
        return Err(r.malformed("wrong message tag"));
    }
    let version = r.u8()?;
    if version != BUNDLE_VERSION {
        return Err(Error::UnsupportedVersion {
            what: "bundle",
            version,
        });
    }
    Ok(())
}

fn encode_one_time(w: &mut Writer, k: &OneTimePreKeyPublic) -> Result<()> {
    w.u32(k.id);
    w.bytes16(&k.public.serialize())
}

fn decode_one_time(r: &mut Reader<'_>) -> Result<OneTimePreKeyPublic> {
    let id = r.u32()?;
    let public = PublicKey::deserialize(r.bytes16(MAX_EC_KEY)?)
        .map_err(|_| r.malformed("bad EC public key"))?;
    Ok(OneTimePreKeyPublic { id, public })
}

fn encode_signed(w: &mut Writer, k: &SignedPreKeyPublic) -> Result<()> {
    w.u32(k.id);
    w.bytes16(&k.public.serialize())?;
    w.bytes16(&k.signature)
}

fn decode_signed(r: &mut Reader<'_>) -> Result<SignedPreKeyPublic> {
    let id = r.u32()?;
    let public = PublicKey::deserialize(r.bytes16(MAX_EC_KEY)?)
        .map_err(|_| r.malformed("bad EC public key"))?;
    let signature = r.bytes16(MAX_SIGNATURE)?.to_vec();
    Ok(SignedPreKeyPublic {
        id,
        public,
        signature,
    })
}

fn encode_kyber(w: &mut Writer, k: &KyberPreKeyPublic) -> Result<()> {
    w.u32(k.id);
    w.bytes16(&k.public.serialize())?;
    w.bytes16(&k.signature)
}

fn decode_kyber(r: &mut Reader<'_>) -> Result<KyberPreKeyPublic> {
    let id = r.u32()?;
    let public = kem::PublicKey::deserialize(r.bytes16(MAX_KYBER_KEY)?)
        .map_err(|_| r.malformed("bad Kyber public key"))?;
    let signature = r.bytes16(MAX_SIGNATURE)?.to_vec();
    Ok(KyberPreKeyPublic {
        id,
        public,
        signature,
    })
}

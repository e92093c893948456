//! Device storage: the local identity, peers' identities, sessions and prekeys.
//!
//! A [`Backend`] is a tiny table-of-blobs interface; [`DeviceStore`] implements libsignal's
//! store traits once on top of it (through [`StoreHandle`]) and adds what hush needs:
//! one-time prekey bookkeeping, Kyber last-resort keys and the ed25519 device key.
//!
//! Two backends ship: [`MemoryBackend`] (tests, ephemeral devices) and, with the default
//! `sqlite` feature, [`SqliteBackend`] (durable; an app restart keeps identity, sessions and
//! prekeys). Both complete every operation synchronously, so the async libsignal futures built
//! on them are ready on their first poll (see [`crate::complete_now`]).

#[cfg(feature = "sqlite")]
mod cipher;
mod memory;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::cell::RefCell;

use async_trait::async_trait;
use libsignal_protocol::{
    kem, DeviceId, Direction, GenericSignedPreKey, IdentityChange, IdentityKey, IdentityKeyPair,
    IdentityKeyStore, KeyPair, KyberPreKeyId, KyberPreKeyRecord, KyberPreKeyStore, PreKeyId,
    PreKeyRecord, PreKeyStore, ProtocolAddress, PublicKey, SessionRecord, SessionStore,
    SignalProtocolError, SignedPreKeyId, SignedPreKeyRecord, SignedPreKeyStore, Timestamp,
};
use zeroize::Zeroizing;

#[cfg(feature = "sqlite")]
pub use cipher::StoreKey;
pub use memory::MemoryBackend;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteBackend;

use crate::auth::DeviceSigningKey;
use crate::bundle::{KyberPreKeyPublic, OneTimePreKeyPublic, SignedPreKeyPublic};
use crate::error::{Error, Result, StoreError};

/// The tables a [`Backend`] holds. Keys and values are opaque bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Table {
    /// Local device data: identity key pair, registration id, ed25519 seed, id counters.
    Meta,
    /// Peers' identity keys by Signal address (format before pinning by name; migrated into
    /// [`Table::Peers`] when a store is opened, then empty).
    Identities,
    /// Signal session records by address.
    Sessions,
    /// One-time EC prekeys by id.
    PreKeys,
    /// Signed EC prekeys by id.
    SignedPreKeys,
    /// Kyber prekeys by id (one-time and last-resort).
    KyberPreKeys,
    /// Base keys already used with a last-resort Kyber prekey.
    KyberBaseKeys,
    /// Pinned peers by name (the hush device address): trusted identity key and Signal device
    /// id (see [`PeerPin`]).
    Peers,
}

impl Table {
    /// Every table.
    pub const ALL: [Self; 8] = [
        Self::Meta,
        Self::Identities,
        Self::Sessions,
        Self::PreKeys,
        Self::SignedPreKeys,
        Self::KyberPreKeys,
        Self::KyberBaseKeys,
        Self::Peers,
    ];

    /// A stable number for the table (used as the SQLite table column).
    pub const fn id(self) -> u8 {
        match self {
            Self::Meta => 0,
            Self::Identities => 1,
            Self::Sessions => 2,
            Self::PreKeys => 3,
            Self::SignedPreKeys => 4,
            Self::KyberPreKeys => 5,
            Self::KyberBaseKeys => 6,
            Self::Peers => 7,
        }
    }
}

/// Storage for a [`DeviceStore`]: a set of tables mapping byte keys to byte values.
///
/// Each call must be durable when it returns if the backend claims durability. Values include
/// private keys: a durable backend should live in app-private storage.
pub trait Backend {
    /// The value under `key`, if any.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Inserts or replaces.
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    /// Removes `key`; true if it was present.
    fn delete(&mut self, table: Table, key: &[u8]) -> Result<bool, StoreError>;
    /// All keys of `table`.
    fn keys(&self, table: Table) -> Result<Vec<Vec<u8>>, StoreError>;
}

const META_IDENTITY: &[u8] = b"identity_key_pair";
const META_REGISTRATION: &[u8] = b"registration_id";
const META_DEVICE: &[u8] = b"device_id";
const META_ED25519: &[u8] = b"ed25519_seed";
const META_NEXT_PREKEY: &[u8] = b"next_prekey_id";
const META_NEXT_SIGNED: &[u8] = b"next_signed_prekey_id";
const META_NEXT_KYBER: &[u8] = b"next_kyber_prekey_id";
const META_CURRENT_SIGNED: &[u8] = b"current_signed_prekey_id";
const META_LAST_RESORT_KYBER: &[u8] = b"last_resort_kyber_prekey_id";

const KYBER_ONE_TIME: u8 = 0;
const KYBER_LAST_RESORT: u8 = 1;
/// Prekey ids live in 1..=0xFF_FFFF, as in Signal's clients.
const MAX_PREKEY_ID: u32 = 0x00FF_FFFF;

/// A device's keys and state on top of a [`Backend`].
pub struct DeviceStore<B> {
    backend: RefCell<B>,
    identity: IdentityKeyPair,
    registration_id: u32,
    device_id: DeviceId,
    signing_key: DeviceSigningKey,
}

impl<B: Backend> DeviceStore<B> {
    /// Opens the device stored in `backend`, or `None` if it holds no device yet.
    pub fn open(backend: B) -> Result<Option<Self>> {
        let Some(identity) = backend.get(Table::Meta, META_IDENTITY)? else {
            return Ok(None);
        };
        let identity = Zeroizing::new(identity);
        let identity = IdentityKeyPair::try_from(identity.as_slice())?;
        let registration_id = read_u32(&backend, META_REGISTRATION)?.ok_or(corrupt())?;
        let device = backend.get(Table::Meta, META_DEVICE)?.ok_or(corrupt())?;
        let device_id = match device.as_slice() {
            [d] => DeviceId::new(*d).map_err(|_| corrupt())?,
            _ => return Err(corrupt()),
        };
        let seed = Zeroizing::new(backend.get(Table::Meta, META_ED25519)?.ok_or(corrupt())?);
        let seed: &[u8; 32] = seed.as_slice().try_into().map_err(|_| corrupt())?;
        let store = Self {
            backend: RefCell::new(backend),
            identity,
            registration_id,
            device_id,
            signing_key: DeviceSigningKey::from_seed(seed),
        };
        store.migrate_address_identities()?;
        Ok(Some(store))
    }

    /// Moves identities recorded per Signal address (older stores) into per-name pins. The
    /// device id they were recorded under becomes an assumed (not bundle-verified) pin.
    fn migrate_address_identities(&self) -> Result<()> {
        let legacy = self.backend.borrow().keys(Table::Identities)?;
        for key in legacy {
            let Some((&device, name)) = key.split_first() else {
                continue;
            };
            let (Ok(name), Ok(device)) = (std::str::from_utf8(name), DeviceId::new(device)) else {
                continue;
            };
            if let Some(bytes) = self.get(Table::Identities, &key)? {
                if self.peer_pin(name)?.is_none() {
                    let pin = PeerPin {
                        identity: IdentityKey::decode(&bytes)?,
                        device_id: device,
                        from_bundle: false,
                    };
                    self.put(Table::Peers, name.as_bytes(), &pin.encode())?;
                }
            }
            self.delete(Table::Identities, &key)?;
        }
        Ok(())
    }

    /// Creates a new device (identity key pair, registration id, ed25519 key) in an empty
    /// `backend`. `device_id` must be in 1..=127.
    pub fn create<R: rand::CryptoRng + rand::Rng>(
        mut backend: B,
        device_id: u8,
        rng: &mut R,
    ) -> Result<Self> {
        if backend.get(Table::Meta, META_IDENTITY)?.is_some() {
            return Err(Error::InvalidArgument("backend already holds a device"));
        }
        let device_id = DeviceId::new(device_id)
            .map_err(|_| Error::InvalidArgument("device id must be 1..=127"))?;
        let identity = IdentityKeyPair::generate(rng);
        let registration_id = rng.random_range(1..=16380u32);
        let signing_key = DeviceSigningKey::generate(rng);
        backend.put(
            Table::Meta,
            META_REGISTRATION,
            &registration_id.to_be_bytes(),
        )?;
        backend.put(Table::Meta, META_DEVICE, &[u8::from(device_id)])?;
        backend.put(Table::Meta, META_ED25519, signing_key.to_seed().as_ref())?;
        // The identity goes last: its presence marks a complete device.
        backend.put(
            Table::Meta,
            META_IDENTITY,
            &Zeroizing::new(identity.serialize().into_vec()),
        )?;
        Ok(Self {
            backend: RefCell::new(backend),
            identity,
            registration_id,
            device_id,
            signing_key,
        })
    }

    /// Opens the device in `backend`, creating it first if the backend is empty.
    pub fn open_or_create<R: rand::CryptoRng + rand::Rng>(
        backend: B,
        device_id: u8,
        rng: &mut R,
    ) -> Result<Self> {
        if backend.get(Table::Meta, META_IDENTITY)?.is_some() {
            Self::open(backend)?.ok_or(Error::Internal("device vanished while opening"))
        } else {
            Self::create(backend, device_id, rng)
        }
    }

    /// The local Signal identity key pair.
    pub fn identity_key_pair(&self) -> &IdentityKeyPair {
        &self.identity
    }

    /// The local Signal identity key.
    pub fn identity_key(&self) -> &IdentityKey {
        self.identity.identity_key()
    }

    /// The local registration id.
    pub fn registration_id(&self) -> u32 {
        self.registration_id
    }

    /// The local device id.
    pub fn device_id(&self) -> DeviceId {
        self.device_id
    }

    /// The ed25519 key used to authenticate to the relay.
    pub fn signing_key(&self) -> &DeviceSigningKey {
        &self.signing_key
    }

    /// A handle implementing libsignal's store traits. Several handles may exist at once (the
    /// libsignal functions take the session and identity stores as separate `&mut`).
    pub fn handle(&self) -> StoreHandle<'_, B> {
        StoreHandle(self)
    }

    /// Unwraps the backend (e.g. to reopen it).
    pub fn into_backend(self) -> B {
        self.backend.into_inner()
    }

    /// The identity key on record for `peer`, if any. Identities are pinned per peer *name*
    /// (a hush device address), whatever Signal device id the address carries.
    pub fn peer_identity(&self, peer: &ProtocolAddress) -> Result<Option<IdentityKey>> {
        Ok(self.peer_pin(peer.name())?.map(|p| p.identity))
    }

    /// What is pinned for the peer called `name`, if anything.
    pub fn peer_pin(&self, name: &str) -> Result<Option<PeerPin>> {
        match self.get(Table::Peers, name.as_bytes())? {
            None => Ok(None),
            Some(bytes) => PeerPin::decode(&bytes).map(Some),
        }
    }

    /// Pins `pin` for `peer`'s name, replacing what was there.
    pub fn set_peer_pin(&self, peer: &ProtocolAddress, pin: &PeerPin) -> Result<()> {
        Ok(self.put(Table::Peers, peer.name().as_bytes(), &pin.encode())?)
    }

    /// Records `identity` as the trusted identity of `peer`, replacing an older one. Call this
    /// only after the user verified the new safety number. The Signal device id of `peer`
    /// becomes an assumed pin: the next verified bundle carrying this identity pins its own
    /// device id.
    pub fn set_peer_identity(
        &self,
        peer: &ProtocolAddress,
        identity: &IdentityKey,
    ) -> Result<IdentityChange> {
        let old = self.peer_pin(peer.name())?;
        self.set_peer_pin(
            peer,
            &PeerPin {
                identity: *identity,
                device_id: peer.device_id(),
                from_bundle: false,
            },
        )?;
        Ok(IdentityChange::from_changed(
            old.is_some_and(|o| o.identity != *identity),
        ))
    }

    /// Whether `identity` presented at `peer` matches the pin: unknown names are trusted on
    /// first use; a known name must present the pinned identity, and, when the device id was
    /// pinned from a verified bundle, that device id.
    pub fn is_trusted_peer(&self, peer: &ProtocolAddress, identity: &IdentityKey) -> Result<bool> {
        Ok(match self.peer_pin(peer.name())? {
            None => true,
            Some(pin) => pin.identity == *identity && pin.admits_device(peer.device_id()),
        })
    }

    /// Whether a Signal session with `peer` exists.
    pub fn has_session(&self, peer: &ProtocolAddress) -> Result<bool> {
        Ok(self.get(Table::Sessions, &address_key(peer))?.is_some())
    }

    /// The serialized Signal session record for `peer` (libsignal's `RecordStructure`), wiped
    /// on drop.
    pub(crate) fn session_record(
        &self,
        peer: &ProtocolAddress,
    ) -> Result<Option<Zeroizing<Vec<u8>>>> {
        Ok(self
            .get(Table::Sessions, &address_key(peer))?
            .map(Zeroizing::new))
    }

    /// Number of unused one-time EC prekeys held locally.
    pub fn one_time_pre_key_count(&self) -> Result<usize> {
        Ok(self.backend.borrow().keys(Table::PreKeys)?.len())
    }

    /// Number of unused one-time Kyber prekeys held locally (the last-resort key not counted).
    pub fn kyber_one_time_pre_key_count(&self) -> Result<usize> {
        let backend = self.backend.borrow();
        let mut n = 0;
        for key in backend.keys(Table::KyberPreKeys)? {
            if backend
                .get(Table::KyberPreKeys, &key)?
                .is_some_and(|v| v.first() == Some(&KYBER_ONE_TIME))
            {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Generates `n` one-time EC prekeys, stores them, and returns their public halves.
    pub fn generate_pre_keys<R: rand::CryptoRng + rand::Rng>(
        &self,
        n: usize,
        rng: &mut R,
    ) -> Result<Vec<OneTimePreKeyPublic>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let id = self.next_id(META_NEXT_PREKEY)?;
            let pair = KeyPair::generate(rng);
            let record = PreKeyRecord::new(PreKeyId::from(id), &pair);
            self.put(
                Table::PreKeys,
                &id.to_be_bytes(),
                &Zeroizing::new(record.serialize()?),
            )?;
            out.push(OneTimePreKeyPublic {
                id,
                public: pair.public_key,
            });
        }
        Ok(out)
    }

    /// Generates `n` one-time Kyber prekeys (signed by the identity key), stores them, and
    /// returns their public halves.
    pub fn generate_kyber_pre_keys<R: rand::CryptoRng + rand::Rng>(
        &self,
        n: usize,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Vec<KyberPreKeyPublic>> {
        (0..n)
            .map(|_| self.new_kyber(KYBER_ONE_TIME, now, rng))
            .collect()
    }

    /// Makes a new signed EC prekey the current one. Older signed prekeys stay so that
    /// in-flight prekey messages still decrypt.
    pub fn rotate_signed_pre_key<R: rand::CryptoRng + rand::Rng>(
        &self,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<SignedPreKeyPublic> {
        let id = self.next_id(META_NEXT_SIGNED)?;
        let pair = KeyPair::generate(rng);
        let signature = self
            .identity
            .private_key()
            .calculate_signature(&pair.public_key.serialize(), rng)
            .map_err(SignalProtocolError::from)?;
        let record = SignedPreKeyRecord::new(SignedPreKeyId::from(id), now, &pair, &signature);
        self.put(
            Table::SignedPreKeys,
            &id.to_be_bytes(),
            &Zeroizing::new(record.serialize()?),
        )?;
        self.put(Table::Meta, META_CURRENT_SIGNED, &id.to_be_bytes())?;
        Ok(SignedPreKeyPublic {
            id,
            public: pair.public_key,
            signature: signature.into_vec(),
        })
    }

    /// Makes a new last-resort Kyber prekey the current one (used when no one-time Kyber
    /// prekey is left; never deleted on use, but a reused base key is refused).
    pub fn rotate_last_resort_kyber_pre_key<R: rand::CryptoRng + rand::Rng>(
        &self,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<KyberPreKeyPublic> {
        let key = self.new_kyber(KYBER_LAST_RESORT, now, rng)?;
        self.put(Table::Meta, META_LAST_RESORT_KYBER, &key.id.to_be_bytes())?;
        Ok(key)
    }

    /// The current signed prekey's public half, if one was made.
    pub fn current_signed_pre_key(&self) -> Result<Option<SignedPreKeyPublic>> {
        let Some(id) = read_u32(&*self.backend.borrow(), META_CURRENT_SIGNED)? else {
            return Ok(None);
        };
        let bytes = self
            .get(Table::SignedPreKeys, &id.to_be_bytes())?
            .ok_or(corrupt())?;
        let record = SignedPreKeyRecord::deserialize(&bytes)?;
        Ok(Some(SignedPreKeyPublic {
            id,
            public: record.public_key()?,
            signature: record.signature()?,
        }))
    }

    /// The current last-resort Kyber prekey's public half, if one was made.
    pub fn current_last_resort_kyber_pre_key(&self) -> Result<Option<KyberPreKeyPublic>> {
        let Some(id) = read_u32(&*self.backend.borrow(), META_LAST_RESORT_KYBER)? else {
            return Ok(None);
        };
        let record = self.kyber_record(id)?.ok_or(corrupt())?.1;
        Ok(Some(KyberPreKeyPublic {
            id,
            public: record.public_key()?,
            signature: record.signature()?,
        }))
    }

    fn new_kyber<R: rand::CryptoRng + rand::Rng>(
        &self,
        kind: u8,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<KyberPreKeyPublic> {
        let id = self.next_id(META_NEXT_KYBER)?;
        let pair = kem::KeyPair::generate(kem::KeyType::Kyber1024, rng);
        let signature = self
            .identity
            .private_key()
            .calculate_signature(&pair.public_key.serialize(), rng)
            .map_err(SignalProtocolError::from)?;
        let record = KyberPreKeyRecord::new(KyberPreKeyId::from(id), now, &pair, &signature);
        let mut value = Zeroizing::new(vec![kind]);
        value.extend_from_slice(&record.serialize()?);
        self.put(Table::KyberPreKeys, &id.to_be_bytes(), &value)?;
        Ok(KyberPreKeyPublic {
            id,
            public: pair.public_key,
            signature: signature.into_vec(),
        })
    }

    fn kyber_record(&self, id: u32) -> Result<Option<(u8, KyberPreKeyRecord)>> {
        let Some(bytes) = self.get(Table::KyberPreKeys, &id.to_be_bytes())? else {
            return Ok(None);
        };
        let bytes = Zeroizing::new(bytes);
        let (kind, rest) = bytes.split_first().ok_or(corrupt())?;
        Ok(Some((*kind, KyberPreKeyRecord::deserialize(rest)?)))
    }

    /// Allocates the next id from a counter (1..=0xFF_FFFF, wrapping).
    fn next_id(&self, counter: &[u8]) -> Result<u32> {
        let current = read_u32(&*self.backend.borrow(), counter)?.unwrap_or(1);
        let next = if current >= MAX_PREKEY_ID {
            1
        } else {
            current + 1
        };
        self.put(Table::Meta, counter, &next.to_be_bytes())?;
        Ok(current.clamp(1, MAX_PREKEY_ID))
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.backend.borrow().get(table, key)
    }

    fn put(&self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.backend.borrow_mut().put(table, key, value)
    }

    fn delete(&self, table: Table, key: &[u8]) -> Result<bool, StoreError> {
        self.backend.borrow_mut().delete(table, key)
    }
}

impl<B> std::fmt::Debug for DeviceStore<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceStore")
            .field("registration_id", &self.registration_id)
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

fn corrupt() -> Error {
    Error::Store(StoreError("device store is corrupt or incomplete".into()))
}

fn read_u32<B: Backend + ?Sized>(backend: &B, key: &[u8]) -> Result<Option<u32>> {
    match backend.get(Table::Meta, key)? {
        None => Ok(None),
        Some(v) => {
            let arr: [u8; 4] = v.as_slice().try_into().map_err(|_| corrupt())?;
            Ok(Some(u32::from_be_bytes(arr)))
        }
    }
}

/// Table key for a peer address: device id byte, then the name's UTF-8 bytes.
fn address_key(address: &ProtocolAddress) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + address.name().len());
    k.push(u8::from(address.device_id()));
    k.extend_from_slice(address.name().as_bytes());
    k
}

/// What a device pins for one peer name: the trusted identity key and the Signal device id.
///
/// Stored as `version u8 (=1) | from_bundle u8 (0|1) | device_id u8 | identity_key`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerPin {
    /// The trusted Signal identity key.
    pub identity: IdentityKey,
    /// The Signal device id the peer's session lives under.
    pub device_id: DeviceId,
    /// True when `device_id` came from a verified bundle (then a bundle with another device id
    /// is refused); false when it is only the local label chosen for a peer that wrote first,
    /// or after the user accepted a change.
    pub from_bundle: bool,
}

const PEER_PIN_VERSION: u8 = 1;

impl PeerPin {
    /// Whether a session under `device_id` is consistent with this pin.
    pub fn admits_device(&self, device_id: DeviceId) -> bool {
        !self.from_bundle || self.device_id == device_id
    }

    fn encode(&self) -> Vec<u8> {
        let identity = self.identity.serialize();
        let mut v = Vec::with_capacity(3 + identity.len());
        v.push(PEER_PIN_VERSION);
        v.push(u8::from(self.from_bundle));
        v.push(u8::from(self.device_id));
        v.extend_from_slice(&identity);
        v
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        match bytes {
            [PEER_PIN_VERSION, from_bundle @ (0 | 1), device, identity @ ..] => Ok(Self {
                identity: IdentityKey::decode(identity)?,
                device_id: DeviceId::new(*device).map_err(|_| corrupt())?,
                from_bundle: *from_bundle == 1,
            }),
            _ => Err(corrupt()),
        }
    }
}

/// Implements libsignal's store traits over a [`DeviceStore`].
///
/// Identity trust is strict and pinned per peer *name* (the hush device address), not per
/// Signal address: a name with nothing on record is trusted on first use; a name whose
/// presented identity differs from the pinned one — under any Signal device id — is *not*
/// trusted (in either direction) until [`DeviceStore::set_peer_identity`] records the new one.
pub struct StoreHandle<'a, B>(&'a DeviceStore<B>);

type SignalResult<T> = std::result::Result<T, SignalProtocolError>;

#[async_trait(?Send)]
impl<B: Backend> IdentityKeyStore for StoreHandle<'_, B> {
    async fn get_identity_key_pair(&self) -> SignalResult<IdentityKeyPair> {
        Ok(self.0.identity)
    }

    async fn get_local_registration_id(&self) -> SignalResult<u32> {
        Ok(self.0.registration_id)
    }

    /// Called by libsignal after it checked trust; a pin already holding this identity (and
    /// its device id) is kept as it is, so a bundle-verified device id stays pinned.
    async fn save_identity(
        &mut self,
        address: &ProtocolAddress,
        identity: &IdentityKey,
    ) -> SignalResult<IdentityChange> {
        let pin = self.0.peer_pin(address.name()).map_err(to_signal)?;
        if pin.is_some_and(|p| p.identity == *identity && p.admits_device(address.device_id())) {
            return Ok(IdentityChange::from_changed(false));
        }
        self.0
            .set_peer_identity(address, identity)
            .map_err(to_signal)
    }

    async fn is_trusted_identity(
        &self,
        address: &ProtocolAddress,
        identity: &IdentityKey,
        _direction: Direction,
    ) -> SignalResult<bool> {
        self.0.is_trusted_peer(address, identity).map_err(to_signal)
    }

    async fn get_identity(&self, address: &ProtocolAddress) -> SignalResult<Option<IdentityKey>> {
        self.0.peer_identity(address).map_err(to_signal)
    }
}

#[async_trait(?Send)]
impl<B: Backend> SessionStore for StoreHandle<'_, B> {
    async fn load_session(&self, address: &ProtocolAddress) -> SignalResult<Option<SessionRecord>> {
        match self.0.get(Table::Sessions, &address_key(address))? {
            None => Ok(None),
            Some(bytes) => Ok(Some(SessionRecord::deserialize(&Zeroizing::new(bytes))?)),
        }
    }

    async fn store_session(
        &mut self,
        address: &ProtocolAddress,
        record: &SessionRecord,
    ) -> SignalResult<()> {
        let bytes = Zeroizing::new(record.serialize()?);
        Ok(self.0.put(Table::Sessions, &address_key(address), &bytes)?)
    }
}

#[async_trait(?Send)]
impl<B: Backend> PreKeyStore for StoreHandle<'_, B> {
    async fn get_pre_key(&self, id: PreKeyId) -> SignalResult<PreKeyRecord> {
        let bytes = self
            .0
            .get(Table::PreKeys, &u32::from(id).to_be_bytes())?
            .ok_or(SignalProtocolError::InvalidPreKeyId)?;
        PreKeyRecord::deserialize(&Zeroizing::new(bytes))
    }

    async fn save_pre_key(&mut self, id: PreKeyId, record: &PreKeyRecord) -> SignalResult<()> {
        let bytes = Zeroizing::new(record.serialize()?);
        Ok(self
            .0
            .put(Table::PreKeys, &u32::from(id).to_be_bytes(), &bytes)?)
    }

    async fn remove_pre_key(&mut self, id: PreKeyId) -> SignalResult<()> {
        self.0
            .delete(Table::PreKeys, &u32::from(id).to_be_bytes())?;
        Ok(())
    }
}

#[async_trait(?Send)]
impl<B: Backend> SignedPreKeyStore for StoreHandle<'_, B> {
    async fn get_signed_pre_key(&self, id: SignedPreKeyId) -> SignalResult<SignedPreKeyRecord> {
        let bytes = self
            .0
            .get(Table::SignedPreKeys, &u32::from(id).to_be_bytes())?
            .ok_or(SignalProtocolError::InvalidSignedPreKeyId)?;
        SignedPreKeyRecord::deserialize(&Zeroizing::new(bytes))
    }

    async fn save_signed_pre_key(
        &mut self,
        id: SignedPreKeyId,
        record: &SignedPreKeyRecord,
    ) -> SignalResult<()> {
        let bytes = Zeroizing::new(record.serialize()?);
        Ok(self
            .0
            .put(Table::SignedPreKeys, &u32::from(id).to_be_bytes(), &bytes)?)
    }
}

#[async_trait(?Send)]
impl<B: Backend> KyberPreKeyStore for StoreHandle<'_, B> {
    async fn get_kyber_pre_key(&self, id: KyberPreKeyId) -> SignalResult<KyberPreKeyRecord> {
        match self.0.kyber_record(u32::from(id)).map_err(to_signal)? {
            Some((_, record)) => Ok(record),
            None => Err(SignalProtocolError::InvalidKyberPreKeyId),
        }
    }

    /// Saved through the libsignal trait, a Kyber prekey counts as one-time.
    async fn save_kyber_pre_key(
        &mut self,
        id: KyberPreKeyId,
        record: &KyberPreKeyRecord,
    ) -> SignalResult<()> {
        let mut value = Zeroizing::new(vec![KYBER_ONE_TIME]);
        value.extend_from_slice(&record.serialize()?);
        Ok(self
            .0
            .put(Table::KyberPreKeys, &u32::from(id).to_be_bytes(), &value)?)
    }

    async fn mark_kyber_pre_key_used(
        &mut self,
        id: KyberPreKeyId,
        ec_prekey_id: SignedPreKeyId,
        base_key: &PublicKey,
    ) -> SignalResult<()> {
        let id_bytes = u32::from(id).to_be_bytes();
        let kind = self
            .0
            .get(Table::KyberPreKeys, &id_bytes)?
            .and_then(|v| v.first().copied());
        match kind {
            Some(KYBER_LAST_RESORT) => {
                let mut seen = id_bytes.to_vec();
                seen.extend_from_slice(&u32::from(ec_prekey_id).to_be_bytes());
                seen.extend_from_slice(&base_key.serialize());
                if self.0.get(Table::KyberBaseKeys, &seen)?.is_some() {
                    return Err(SignalProtocolError::InvalidMessage(
                        libsignal_protocol::CiphertextMessageType::PreKey,
                        "reused base key",
                    ));
                }
                self.0.put(Table::KyberBaseKeys, &seen, &[])?;
            }
            _ => {
                self.0.delete(Table::KyberPreKeys, &id_bytes)?;
            }
        }
        Ok(())
    }
}

fn to_signal(e: Error) -> SignalProtocolError {
    match e {
        Error::Signal(s) => s,
        Error::Store(s) => s.into(),
        other => SignalProtocolError::InvalidState("hush-crypto store", other.to_string()),
    }
}

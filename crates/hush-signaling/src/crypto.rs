//! Signal sessions from hush-crypto as the [`Sealer`], and hush-crypto's device key as the
//! relay [`DeviceSigner`] (feature `crypto`).
//!
//! # Addresses
//!
//! A hush device is addressed by its ed25519 device key ([`DeviceId`]); libsignal addresses
//! sessions by `ProtocolAddress { name, device_id }`. [`SignalSealer`] uses the hex device key
//! as the name, with the Signal device id from the peer's bundle (or 1 for a peer that
//! contacted us first).
//!
//! # Pinning
//!
//! The peer's Signal identity and device id are pinned per [`DeviceId`] in the device store
//! (so a restart keeps them): a bundle for a known device that carries another identity, or
//! another device id than an earlier verified bundle, is refused with
//! [`Error::IdentityChanged`] until the app calls [`SignalSealer::accept_identity`]. A bundle
//! must also be bound both ways (the identity signs the device key, the device key signs the
//! identity), so nobody can pair a device address with an identity that is not its own.
//!
//! # Bundles on the relay
//!
//! The relay stores opaque bytes: [`SignalSealer::publish`] produces a base bundle (signed
//! prekey and last-resort Kyber key, no one-time key) plus one item per one-time prekey, each a
//! complete `PeerBundle` with a fresh one-time EC and (when available) one-time Kyber key. The
//! relay hands each item out once; without items the base bundle is used.

use std::collections::HashMap;
use std::time::SystemTime;

use hush_crypto::IdentityKey;

use hush_crypto::{complete_now, Backend, Device, PeerBundle, ProtocolAddress};

use crate::device::{DeviceId, DeviceSigner};
use crate::envelope::CiphertextKind;
use crate::seal::{Sealed, Sealer};
use crate::transport::FetchedBundle;
use crate::Error;

impl DeviceSigner for hush_crypto::DeviceSigningKey {
    fn device_id(&self) -> DeviceId {
        DeviceId::from_bytes(self.auth_key().to_bytes())
    }

    fn sign_challenge(&self, challenge: &[u8]) -> [u8; 64] {
        Self::sign_challenge(self, challenge)
    }
}

/// What a device uploads to the relay's prekey directory.
#[derive(Debug, Clone)]
pub struct PrekeyMaterial {
    /// The base bundle (no one-time prekey), handed out when one-time prekeys run out.
    pub bundle: Vec<u8>,
    /// `(id, bundle with that one-time prekey)`, each handed out once.
    pub one_time_prekeys: Vec<(u64, Vec<u8>)>,
}

/// Most refused bundles remembered for [`SignalSealer::accept_identity`] (one per peer).
const MAX_REFUSED_BUNDLES: usize = 64;

/// A hush-crypto [`Device`] used as a [`Sealer`].
pub struct SignalSealer<B: Backend> {
    device: Device<B>,
    /// The last bundle refused for a changed identity or device id, per peer: the Signal
    /// device id and identity it carried, so that accepting that identity also moves the pin
    /// to that device id. Bounded; only bundles that verified (signed by the peer's device key)
    /// get here.
    refused: HashMap<DeviceId, (u8, IdentityKey)>,
}

impl<B: Backend> std::fmt::Debug for SignalSealer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalSealer")
            .field("refused_bundles", &self.refused.len())
            .finish_non_exhaustive()
    }
}

fn crypto_err(e: hush_crypto::Error) -> Error {
    match e {
        hush_crypto::Error::IdentityChanged { new_identity, .. } => Error::IdentityChanged {
            new_identity: new_identity.map(|k| k.serialize().to_vec()),
        },
        other => Error::Seal(Box::new(other)),
    }
}

/// Runs a hush-crypto future that completes on its first poll (true for the shipped store
/// backends); a backend that suspends is reported as an error, not a panic.
fn now_or_err<T>(
    fut: impl std::future::Future<Output = hush_crypto::Result<T>>,
) -> Result<T, hush_crypto::Error> {
    complete_now(fut).unwrap_or(Err(hush_crypto::Error::Internal("store backend suspended")))
}

fn signal_device_id(id: u8) -> Result<hush_crypto::signal::DeviceId, Error> {
    hush_crypto::signal::DeviceId::new(id)
        .map_err(|_| Error::Malformed("Signal device id out of range"))
}

impl<B: Backend> SignalSealer<B> {
    /// Wraps a device.
    pub fn new(device: Device<B>) -> Self {
        Self {
            device,
            refused: HashMap::new(),
        }
    }

    /// This device's relay address (its ed25519 device key).
    pub fn device_id(&self) -> DeviceId {
        self.device.signing_key().device_id()
    }

    /// The device key, for authenticating to the relay.
    pub fn signer(&self) -> &hush_crypto::DeviceSigningKey {
        self.device.signing_key()
    }

    /// The wrapped device.
    pub fn device(&self) -> &Device<B> {
        &self.device
    }

    /// The wrapped device, mutably (call key exchange, safety numbers...).
    pub fn device_mut(&mut self) -> &mut Device<B> {
        &mut self.device
    }

    /// The Signal address used for `peer`: the device id pinned in the device store, or 1 for
    /// a peer never seen.
    pub fn address_of(&self, peer: &DeviceId) -> Result<ProtocolAddress, Error> {
        let name = peer.to_hex();
        let device_id = match self.device.store().peer_pin(&name).map_err(crypto_err)? {
            Some(pin) => pin.device_id,
            None => signal_device_id(1)?,
        };
        Ok(ProtocolAddress::new(name, device_id))
    }

    /// The identity key pinned for `peer`, if any.
    pub fn peer_identity(&self, peer: &DeviceId) -> Result<Option<IdentityKey>, Error> {
        Ok(self
            .device
            .store()
            .peer_pin(&peer.to_hex())
            .map_err(crypto_err)?
            .map(|p| p.identity))
    }

    /// Trusts `identity` for `peer` after the user verified the new safety number (shown when
    /// a message or bundle failed with [`Error::IdentityChanged`]). If the last bundle refused
    /// for `peer` carried this identity, its Signal device id is pinned too, so
    /// [`start_session`](Self::start_session) with that bundle now succeeds.
    pub fn accept_identity(
        &mut self,
        peer: &DeviceId,
        identity: &IdentityKey,
    ) -> Result<(), Error> {
        let device_id = match self.refused.remove(peer) {
            Some((device_id, refused)) if refused == *identity => signal_device_id(device_id)?,
            _ => self.address_of(peer)?.device_id(),
        };
        let address = ProtocolAddress::new(peer.to_hex(), device_id);
        self.device
            .accept_identity(&address, identity)
            .map_err(crypto_err)
    }

    /// Prekey material to upload to the relay with
    /// [`crate::transport::RelayClient::upload_prekeys`]. `one_time` fresh one-time prekeys
    /// are generated (each paired with a one-time Kyber key while `kyber_one_time` lasts).
    pub fn publish(
        &mut self,
        one_time: usize,
        kyber_one_time: usize,
    ) -> Result<PrekeyMaterial, Error> {
        let upload = self
            .device
            .prepare_upload(one_time, kyber_one_time, SystemTime::now())
            .map_err(crypto_err)?;
        let base = PeerBundle {
            device: upload.device.clone(),
            signed: upload.signed.clone(),
            kyber: upload.last_resort_kyber.clone(),
            one_time: None,
        };
        let mut kyber = upload.kyber_one_time.clone();
        let mut items = Vec::with_capacity(upload.one_time.len());
        for k in &upload.one_time {
            let item = PeerBundle {
                device: upload.device.clone(),
                signed: upload.signed.clone(),
                kyber: kyber
                    .pop()
                    .unwrap_or_else(|| upload.last_resort_kyber.clone()),
                one_time: Some(k.clone()),
            };
            items.push((u64::from(k.id), item.encode().map_err(crypto_err)?));
        }
        Ok(PrekeyMaterial {
            bundle: base.encode().map_err(crypto_err)?,
            one_time_prekeys: items,
        })
    }

    /// Starts a Signal session with `peer` from a bundle fetched from the relay. Refuses a
    /// bundle whose device key is not `peer` (a relay handing out someone else's bundle), one
    /// not bound both ways to its identity, and — with [`Error::IdentityChanged`] — one whose
    /// identity or Signal device id differs from what is pinned for `peer` (see the module
    /// docs), until [`accept_identity`](Self::accept_identity).
    pub fn start_session(&mut self, fetched: &FetchedBundle) -> Result<(), Error> {
        let bytes = fetched
            .one_time_prekey
            .as_ref()
            .map_or(&fetched.bundle, |(_, b)| b);
        let bundle = PeerBundle::decode(bytes).map_err(crypto_err)?;
        if DeviceId::from_bytes(bundle.device.auth_key.to_bytes()) != fetched.device {
            return Err(Error::Mismatch("bundle belongs to another device"));
        }
        let address = ProtocolAddress::new(
            fetched.device.to_hex(),
            signal_device_id(bundle.device.device_id)?,
        );
        let processed = now_or_err(self.device.process_bundle(
            &address,
            &bundle,
            SystemTime::now(),
        ));
        if let Err(hush_crypto::Error::IdentityChanged { .. }) = &processed {
            if self.refused.len() >= MAX_REFUSED_BUNDLES
                && !self.refused.contains_key(&fetched.device)
            {
                self.refused.clear();
            }
            self.refused.insert(
                fetched.device,
                (bundle.device.device_id, bundle.device.identity_key),
            );
        }
        processed.map_err(crypto_err)
    }
}

impl<B: Backend + Send> Sealer for SignalSealer<B> {
    async fn seal(&mut self, peer: &DeviceId, plaintext: &[u8]) -> Result<Sealed, Error> {
        let address = self.address_of(peer)?;
        let sealed = now_or_err(self.device.seal(&address, plaintext, SystemTime::now()))
            .map_err(crypto_err)?;
        let (kind, body) = sealed
            .split_first()
            .ok_or(Error::Internal("empty sealed message"))?;
        let kind = match *kind {
            hush_crypto::SEALED_PREKEY => CiphertextKind::PreKey,
            hush_crypto::SEALED_WHISPER => CiphertextKind::Signal,
            _ => return Err(Error::Internal("unknown sealed message type")),
        };
        Ok(Sealed {
            kind,
            ciphertext: body.to_vec(),
        })
    }

    async fn open(
        &mut self,
        peer: &DeviceId,
        kind: CiphertextKind,
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, Error> {
        let address = self.address_of(peer)?;
        let mut sealed = Vec::with_capacity(1 + ciphertext.len());
        sealed.push(match kind {
            CiphertextKind::PreKey => hush_crypto::SEALED_PREKEY,
            CiphertextKind::Signal => hush_crypto::SEALED_WHISPER,
        });
        sealed.extend_from_slice(ciphertext);
        now_or_err(self.device.open(&address, &sealed)).map_err(|e| match e {
            hush_crypto::Error::IdentityChanged { new_identity, .. } => Error::IdentityChanged {
                new_identity: new_identity.map(|k| k.serialize().to_vec()),
            },
            other => Error::Open(Box::new(other)),
        })
    }
}

//! A device: its store, Signal sessions with peers (seal/open), prekey upkeep, safety numbers,
//! and the Signal-sealed call setup.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use libsignal_protocol::{
    message_decrypt, message_encrypt, process_prekey_bundle, CiphertextMessage,
    CiphertextMessageType, Fingerprint, IdentityKey, PreKeySignalMessage, ProtocolAddress,
    SignalMessage, SignalProtocolError, Timestamp,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tracing::{debug, warn};

use crate::auth::DeviceSigningKey;
use crate::bundle::{BundleUpload, DeviceKeys, PeerBundle};
use crate::call::{Answer, CallKeyExchange, IncomingOffer, MediaKeys, Offer, PendingOffer};
use crate::error::{Error, Result};
use crate::skipped_keys::{forward_jump, Incoming, MAX_SKIPPED_KEYS};
use crate::store::{Backend, DeviceStore, PeerPin};
use crate::suite::Suite;

/// Largest sealed message [`Device::open`] looks at.
pub const MAX_SEALED_LEN: usize = 256 * 1024;
/// Sealed-message type byte: a Signal `PreKeySignalMessage` follows (first message of a session).
pub const SEALED_PREKEY: u8 = 3;
/// Sealed-message type byte: a Signal `SignalMessage` (Double Ratchet) follows.
pub const SEALED_WHISPER: u8 = 2;

/// Safety-number iteration count used by Signal's apps.
const FINGERPRINT_ITERATIONS: u32 = 5200;
/// Fingerprint version 2 (identifiers are service ids in Signal; any stable id here).
const FINGERPRINT_VERSION: u32 = 2;

/// A device: identity, store, RNG, Signal sessions with peers and the call key exchange.
///
/// # Async
///
/// The session methods are `async` because libsignal's store traits are. With the shipped
/// backends ([`MemoryBackend`](crate::MemoryBackend), [`SqliteBackend`](crate::SqliteBackend))
/// every future completes on its first poll, so code without a runtime can drive them with
/// [`complete_now`](crate::complete_now). No method spawns tasks or does I/O of its own.
///
/// # Sealed message format
///
/// `seal` returns `type u8 || libsignal message`, type [`SEALED_PREKEY`] or
/// [`SEALED_WHISPER`]. `open` needs the sender's [`ProtocolAddress`], which the transport
/// knows.
pub struct Device<B: Backend> {
    store: DeviceStore<B>,
    calls: CallKeyExchange,
    rng: StdRng,
}

impl<B: Backend> Device<B> {
    /// A device over `store`, with an RNG seeded from the operating system.
    pub fn new(store: DeviceStore<B>) -> Self {
        Self::with_rng(store, StdRng::from_os_rng())
    }

    /// A device over `store` using `rng` (a seeded RNG makes tests reproducible).
    pub fn with_rng(store: DeviceStore<B>, rng: StdRng) -> Self {
        let calls = CallKeyExchange::new(*store.identity_key());
        Self { store, calls, rng }
    }

    /// The store.
    pub fn store(&self) -> &DeviceStore<B> {
        &self.store
    }

    /// Gives the store back (e.g. to close and reopen it).
    pub fn into_store(self) -> DeviceStore<B> {
        self.store
    }

    /// This device's Signal identity key.
    pub fn identity_key(&self) -> &IdentityKey {
        self.store.identity_key()
    }

    /// This device's ed25519 key for relay authentication.
    pub fn signing_key(&self) -> &DeviceSigningKey {
        self.store.signing_key()
    }

    /// Signs a relay authentication challenge with the device's ed25519 key.
    pub fn sign_challenge(&self, challenge: &[u8]) -> [u8; 64] {
        self.store.signing_key().sign_challenge(challenge)
    }

    /// The call key exchange (suites, seen call ids).
    pub fn calls(&self) -> &CallKeyExchange {
        &self.calls
    }

    /// Mutable access to the call key exchange, e.g. to feed it offers that arrived inside
    /// other messages.
    pub fn calls_mut(&mut self) -> &mut CallKeyExchange {
        &mut self.calls
    }

    /// Sets the SRTP suites this device accepts, most preferred first.
    pub fn set_call_suites(&mut self, suites: &[Suite]) -> Result<()> {
        self.calls = CallKeyExchange::with_suites(*self.store.identity_key(), suites)?;
        Ok(())
    }

    // ---- prekeys ----

    /// The device keys (identity, ids, ed25519 key and its binding signature).
    pub fn device_keys(&mut self) -> Result<DeviceKeys> {
        let store = &self.store;
        let auth_binding = store.signing_key().binding(
            store.identity_key_pair(),
            store.registration_id(),
            u8::from(store.device_id()),
            &mut self.rng,
        )?;
        let identity_binding = store.signing_key().identity_binding(
            store.identity_key(),
            store.registration_id(),
            u8::from(store.device_id()),
        );
        Ok(DeviceKeys {
            registration_id: store.registration_id(),
            device_id: u8::from(store.device_id()),
            identity_key: *store.identity_key(),
            auth_key: store.signing_key().auth_key(),
            auth_binding,
            identity_binding,
        })
    }

    /// Builds an upload for the relay: creates a signed prekey and a last-resort Kyber prekey
    /// if there are none yet, plus `one_time` fresh one-time EC prekeys and `kyber_one_time`
    /// fresh one-time Kyber prekeys (replenishment). Only the fresh keys are listed, so a key
    /// the relay already handed out is never handed out again.
    pub fn prepare_upload(
        &mut self,
        one_time: usize,
        kyber_one_time: usize,
        now: SystemTime,
    ) -> Result<BundleUpload> {
        let ts = timestamp(now);
        let signed = match self.store.current_signed_pre_key()? {
            Some(k) => k,
            None => self.store.rotate_signed_pre_key(ts, &mut self.rng)?,
        };
        let last_resort_kyber = match self.store.current_last_resort_kyber_pre_key()? {
            Some(k) => k,
            None => self
                .store
                .rotate_last_resort_kyber_pre_key(ts, &mut self.rng)?,
        };
        let one_time = self.store.generate_pre_keys(one_time, &mut self.rng)?;
        let kyber_one_time =
            self.store
                .generate_kyber_pre_keys(kyber_one_time, ts, &mut self.rng)?;
        Ok(BundleUpload {
            device: self.device_keys()?,
            signed,
            last_resort_kyber,
            one_time,
            kyber_one_time,
        })
    }

    /// A single bundle with a fresh one-time EC and Kyber prekey, for direct exchange without
    /// a relay (tests, QR-code pairing).
    pub fn fresh_bundle(&mut self, now: SystemTime) -> Result<PeerBundle> {
        Ok(self.prepare_upload(1, 1, now)?.take_bundle())
    }

    /// Makes a new signed EC prekey current (rotate e.g. weekly, then upload).
    pub fn rotate_signed_pre_key(&mut self, now: SystemTime) -> Result<()> {
        self.store
            .rotate_signed_pre_key(timestamp(now), &mut self.rng)?;
        Ok(())
    }

    /// Makes a new last-resort Kyber prekey current.
    pub fn rotate_last_resort_kyber_pre_key(&mut self, now: SystemTime) -> Result<()> {
        self.store
            .rotate_last_resort_kyber_pre_key(timestamp(now), &mut self.rng)?;
        Ok(())
    }

    /// Unused one-time EC prekeys held locally (replenish when low).
    pub fn one_time_pre_key_count(&self) -> Result<usize> {
        self.store.one_time_pre_key_count()
    }

    /// Unused one-time Kyber prekeys held locally.
    pub fn kyber_one_time_pre_key_count(&self) -> Result<usize> {
        self.store.kyber_one_time_pre_key_count()
    }

    // ---- sessions ----

    /// Starts a Signal (PQXDH) session with `peer` from its bundle. Verifies every signature
    /// in the bundle first (the prekeys, and the identity/device-key binding both ways).
    ///
    /// Identities are pinned per peer *name*: a bundle whose identity differs from the one
    /// pinned for `peer.name()` fails with [`Error::IdentityChanged`], whatever Signal device id
    /// it claims; so does a bundle whose device id differs from one pinned from an earlier
    /// verified bundle. On success the bundle's identity and device id are pinned.
    pub async fn process_bundle(
        &mut self,
        peer: &ProtocolAddress,
        bundle: &PeerBundle,
        now: SystemTime,
    ) -> Result<()> {
        if bundle.device.device_id != u8::from(peer.device_id()) {
            return Err(Error::Malformed {
                what: "peer bundle",
                reason: "device id does not match the peer address",
            });
        }
        bundle.verify()?;
        if let Some(pin) = self.store.peer_pin(peer.name())? {
            if pin.identity != bundle.device.identity_key {
                warn!(%peer, "bundle carries a different identity key");
                return Err(Error::IdentityChanged {
                    peer: peer.clone(),
                    new_identity: Some(bundle.device.identity_key),
                });
            }
            if !pin.admits_device(peer.device_id()) {
                warn!(%peer, pinned = %pin.device_id, "bundle carries a different Signal device id");
                return Err(Error::IdentityChanged {
                    peer: peer.clone(),
                    new_identity: Some(bundle.device.identity_key),
                });
            }
        }
        let signal_bundle = bundle.to_signal()?;
        let mut sessions = self.store.handle();
        let mut identities = self.store.handle();
        let processed = CatchPanic(Box::pin(process_prekey_bundle(
            peer,
            &mut sessions,
            &mut identities,
            &signal_bundle,
            now,
            &mut self.rng,
        )))
        .await
        .map_err(|_| Error::Malformed {
            what: "peer bundle",
            reason: "rejected by libsignal (panic caught)",
        })?;
        processed.map_err(|e| identity_error(e, peer, Some(bundle.device.identity_key)))?;
        self.store.set_peer_pin(
            peer,
            &PeerPin {
                identity: bundle.device.identity_key,
                device_id: peer.device_id(),
                from_bundle: true,
            },
        )?;
        debug!(%peer, "session started from bundle");
        Ok(())
    }

    /// Encrypts `plaintext` for `peer` with the Double Ratchet.
    pub async fn seal(
        &mut self,
        peer: &ProtocolAddress,
        plaintext: &[u8],
        now: SystemTime,
    ) -> Result<Vec<u8>> {
        let mut sessions = self.store.handle();
        let mut identities = self.store.handle();
        let msg = message_encrypt(
            plaintext,
            peer,
            &mut sessions,
            &mut identities,
            now,
            &mut self.rng,
        )
        .await
        .map_err(|e| identity_error(e, peer, None))?;
        let kind = match msg.message_type() {
            CiphertextMessageType::PreKey => SEALED_PREKEY,
            CiphertextMessageType::Whisper => SEALED_WHISPER,
            _ => {
                return Err(Error::Internal(
                    "unexpected ciphertext type from message_encrypt",
                ))
            }
        };
        let body = msg.serialize();
        let mut out = Vec::with_capacity(1 + body.len());
        out.push(kind);
        out.extend_from_slice(body);
        Ok(out)
    }

    /// Decrypts a sealed message from `peer`. Out-of-order messages decrypt (libsignal keeps
    /// skipped message keys, up to its limits); a duplicate fails; a message from a peer whose
    /// identity changed fails with [`Error::IdentityChanged`]. Untrusted bytes: never panics.
    pub async fn open(&mut self, peer: &ProtocolAddress, sealed: &[u8]) -> Result<Vec<u8>> {
        let malformed = |reason| Error::Malformed {
            what: "sealed message",
            reason,
        };
        if sealed.len() > MAX_SEALED_LEN {
            return Err(malformed("too long"));
        }
        let (kind, body) = sealed.split_first().ok_or(malformed("empty"))?;
        let (msg, presented) = match *kind {
            SEALED_PREKEY => {
                let m = PreKeySignalMessage::try_from(body)
                    .map_err(|_| malformed("bad prekey message"))?;
                let id = *m.identity_key();
                (CiphertextMessage::PreKeySignalMessage(m), Some(id))
            }
            SEALED_WHISPER => (
                CiphertextMessage::SignalMessage(
                    SignalMessage::try_from(body).map_err(|_| malformed("bad message"))?,
                ),
                None,
            ),
            _ => return Err(malformed("unknown type")),
        };
        let incoming = match &msg {
            CiphertextMessage::PreKeySignalMessage(m) => Incoming::PreKey(m),
            CiphertextMessage::SignalMessage(m) => Incoming::Whisper(m),
            _ => return Err(malformed("unknown type")),
        };
        let record = self.store.session_record(peer)?;
        let skipped = forward_jump(record.as_ref().map(|r| r.as_slice()), &incoming);
        if skipped > MAX_SKIPPED_KEYS {
            warn!(%peer, skipped, "message too far ahead of its chain; refused before decryption");
            return Err(Error::TooFarAhead {
                peer: peer.clone(),
                skipped,
            });
        }
        let mut sessions = self.store.handle();
        let mut identities = self.store.handle();
        let mut pre_keys = self.store.handle();
        let signed = self.store.handle();
        let mut kyber = self.store.handle();
        // libsignal's dependencies can panic on some malformed input (found by fuzzing: an
        // SPQR epoch underflow). The panic happens while decrypting, before anything is stored,
        // so refusing the message leaves the session intact.
        let decrypted = CatchPanic(Box::pin(message_decrypt(
            &msg,
            peer,
            &mut sessions,
            &mut identities,
            &mut pre_keys,
            &signed,
            &mut kyber,
            &mut self.rng,
        )))
        .await;
        match decrypted {
            Ok(result) => result.map_err(|e| identity_error(e, peer, presented)),
            Err(_) => {
                warn!(%peer, "libsignal panicked on a received message; refused");
                Err(malformed("rejected by libsignal (panic caught)"))
            }
        }
    }

    /// Records `identity` as `peer`'s trusted identity after the user verified the new safety
    /// number. Until this is called, a changed identity (or a changed device id in a bundle) is
    /// refused. The device id is pinned again by the next verified bundle.
    pub fn accept_identity(
        &mut self,
        peer: &ProtocolAddress,
        identity: &IdentityKey,
    ) -> Result<()> {
        self.store.set_peer_identity(peer, identity)?;
        Ok(())
    }

    /// The safety number between this device and `peer` (libsignal fingerprint, version 2,
    /// 5200 iterations). `local_id`/`peer_id` are the stable account identifiers both apps
    /// use (Signal uses service ids).
    pub fn safety_number(
        &self,
        local_id: &[u8],
        peer: &ProtocolAddress,
        peer_id: &[u8],
    ) -> Result<SafetyNumber> {
        let remote = self
            .store
            .peer_identity(peer)?
            .ok_or_else(|| Error::NoSession(peer.clone()))?;
        let fp = Fingerprint::new(
            FINGERPRINT_VERSION,
            FINGERPRINT_ITERATIONS,
            local_id,
            self.store.identity_key(),
            peer_id,
            &remote,
        )
        .map_err(|_| Error::Internal("fingerprint computation"))?;
        Ok(SafetyNumber(fp))
    }

    // ---- calls over the Signal session ----

    /// Caller: makes an offer for `peer` and seals it. Keep the `PendingOffer` until the answer.
    pub async fn start_call(
        &mut self,
        peer: &ProtocolAddress,
        now: SystemTime,
    ) -> Result<(PendingOffer, Vec<u8>)> {
        let peer_identity = self
            .store
            .peer_identity(peer)?
            .ok_or_else(|| Error::NoSession(peer.clone()))?;
        let (pending, offer) = self.calls.offer(&peer_identity, &mut self.rng);
        let sealed = self.seal(peer, &offer.encode(), now).await?;
        Ok((pending, sealed))
    }

    /// Callee: opens a sealed offer from `peer` and validates it (the call may ring).
    pub async fn receive_offer(
        &mut self,
        peer: &ProtocolAddress,
        sealed: &[u8],
    ) -> Result<IncomingOffer> {
        let bytes = zeroize::Zeroizing::new(self.open(peer, sealed).await?);
        let offer = Offer::decode(&bytes)?;
        // The identity the Signal session just authenticated.
        let peer_identity = self
            .store
            .peer_identity(peer)?
            .ok_or_else(|| Error::NoSession(peer.clone()))?;
        self.calls.receive_offer(&offer, &peer_identity)
    }

    /// Callee, on accept: derives the media keys and seals the answer for `peer`.
    pub async fn accept_call(
        &mut self,
        peer: &ProtocolAddress,
        incoming: IncomingOffer,
        now: SystemTime,
    ) -> Result<(Vec<u8>, MediaKeys)> {
        let (answer, keys) = incoming.accept(&mut self.rng)?;
        let sealed = self.seal(peer, &answer.encode(), now).await?;
        Ok((sealed, keys))
    }

    /// Caller: opens the sealed answer from `peer` and finishes `pending`.
    pub async fn receive_answer(
        &mut self,
        peer: &ProtocolAddress,
        pending: &mut PendingOffer,
        sealed: &[u8],
    ) -> Result<MediaKeys> {
        let bytes = self.open(peer, sealed).await?;
        pending.finish(&Answer::decode(&bytes)?)
    }
}

impl<B: Backend> std::fmt::Debug for Device<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// A safety number for out-of-band verification (libsignal's `Fingerprint`).
#[derive(Debug, Clone)]
pub struct SafetyNumber(Fingerprint);

impl SafetyNumber {
    /// The 60-digit number users compare by reading it aloud.
    pub fn display(&self) -> String {
        self.0.display.to_string()
    }

    /// The bytes to put in a QR code.
    pub fn scannable(&self) -> Result<Vec<u8>> {
        self.0
            .scannable
            .serialize()
            .map_err(|_| Error::Internal("fingerprint encoding"))
    }

    /// Whether the QR-code bytes scanned from the peer's screen match.
    pub fn matches_scanned(&self, scanned: &[u8]) -> Result<bool> {
        self.0
            .scannable
            .compare(scanned)
            .map_err(|_| Error::Malformed {
                what: "scanned fingerprint",
                reason: "not a fingerprint",
            })
    }
}

/// Polls a boxed future inside `catch_unwind`, turning a panic in a dependency into an error.
struct CatchPanic<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchPanic<F> {
    type Output = std::thread::Result<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.get_mut().0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.as_mut().poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

fn timestamp(now: SystemTime) -> Timestamp {
    let ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    Timestamp::from_epoch_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

fn identity_error(
    e: SignalProtocolError,
    peer: &ProtocolAddress,
    presented: Option<IdentityKey>,
) -> Error {
    match e {
        SignalProtocolError::UntrustedIdentity(_) => {
            warn!(%peer, "untrusted (changed) identity");
            Error::IdentityChanged {
                peer: peer.clone(),
                new_identity: presented,
            }
        }
        other => other.into(),
    }
}

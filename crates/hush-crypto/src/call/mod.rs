//! Per-call key agreement: a fresh X25519 exchange carried in Signal-sealed `Offer`/`Answer`
//! payloads, HKDF-SHA256 over a transcript of everything both sides agreed on, and
//! per-direction SRTP master keys.
//!
//! ```text
//! caller                                              callee
//! CallKeyExchange::offer ──── Offer (sealed) ───────▶ CallKeyExchange::receive_offer  (ringing)
//!   PendingOffer                                       IncomingOffer
//!                                                      … user accepts …
//! PendingOffer::finish ◀──── Answer (sealed) ──────── IncomingOffer::accept → MediaKeys
//!   → MediaKeys
//! ```
//!
//! Nothing media-related is derived before the callee accepts: `receive_offer` only validates
//! and records the call id; the callee's ephemeral key exists only inside `accept`.

mod keys;
mod payload;
#[cfg(test)]
mod tests;

use std::collections::{HashSet, VecDeque};

use libsignal_protocol::IdentityKey;
use subtle::ConstantTimeEq;
use tracing::debug;
use x25519_dalek::{EphemeralSecret, PublicKey as X25519Public};
use zeroize::Zeroizing;

pub use keys::{MediaKeys, SecretBytes, Side, CONFIRM_LEN};
pub use payload::{
    Answer, CallId, Offer, ANSWER_TAG, CALL_PROTOCOL_VERSION, MAX_OFFERED_SUITES, OFFER_TAG,
};

use crate::error::{Error, Result};
use crate::suite::{suite_code, Suite};
use keys::{confirmation, Transcript};

/// Default bound of the callee's set of seen call ids.
pub const DEFAULT_SEEN_CALL_IDS: usize = 4096;

/// One device's side of the per-call key agreement: its Signal identity, the SRTP suites it
/// accepts (in preference order) and, for incoming calls, a bounded set of call ids already
/// seen so that a replayed offer is refused.
pub struct CallKeyExchange {
    local_identity: IdentityKey,
    suites: Vec<Suite>,
    seen: SeenCallIds,
}

impl CallKeyExchange {
    /// A key exchange preferring AEAD_AES_256_GCM, then AEAD_AES_128_GCM.
    pub fn new(local_identity: IdentityKey) -> Self {
        Self {
            local_identity,
            suites: vec![Suite::AeadAes256Gcm, Suite::AeadAes128Gcm],
            seen: SeenCallIds::new(DEFAULT_SEEN_CALL_IDS),
        }
    }

    /// A key exchange accepting `suites`, most preferred first (1 to
    /// [`MAX_OFFERED_SUITES`] distinct entries).
    pub fn with_suites(local_identity: IdentityKey, suites: &[Suite]) -> Result<Self> {
        if suites.is_empty() || suites.len() > MAX_OFFERED_SUITES {
            return Err(Error::InvalidArgument("suite list must have 1..=8 entries"));
        }
        for (i, s) in suites.iter().enumerate() {
            if suites.get(..i).is_some_and(|before| before.contains(s)) {
                return Err(Error::InvalidArgument("duplicate suite"));
            }
        }
        Ok(Self {
            local_identity,
            suites: suites.to_vec(),
            seen: SeenCallIds::new(DEFAULT_SEEN_CALL_IDS),
        })
    }

    /// Changes the bound of the seen-call-id set (at least 1).
    pub fn with_seen_capacity(mut self, capacity: usize) -> Self {
        self.seen = SeenCallIds::new(capacity.max(1));
        self
    }

    /// The accepted suites, most preferred first.
    pub fn suites(&self) -> &[Suite] {
        &self.suites
    }

    /// This device's identity key.
    pub fn local_identity(&self) -> &IdentityKey {
        &self.local_identity
    }

    /// Caller: starts a call to the device whose Signal identity is `peer_identity`. Returns the
    /// state to keep until the answer arrives and the `Offer` to seal and send.
    pub fn offer<R: rand::CryptoRng + ?Sized>(
        &self,
        peer_identity: &IdentityKey,
        rng: &mut R,
    ) -> (PendingOffer, Offer) {
        let call_id = CallId::random(rng);
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        self.offer_from_parts(peer_identity, call_id, &seed)
    }

    pub(crate) fn offer_from_parts(
        &self,
        peer_identity: &IdentityKey,
        call_id: CallId,
        seed: &Zeroizing<[u8; 32]>,
    ) -> (PendingOffer, Offer) {
        let secret = ephemeral_from_seed(seed);
        let public = X25519Public::from(&secret);
        let offer = Offer {
            version: CALL_PROTOCOL_VERSION,
            call_id,
            caller_ephemeral: public.to_bytes(),
            suites: self.suites.iter().map(|s| suite_code(*s)).collect(),
        };
        debug!(%call_id, suites = ?self.suites, "call offer created");
        let pending = PendingOffer {
            offer: offer.clone(),
            caller_identity: self.local_identity,
            callee_identity: *peer_identity,
            secret: Some(secret),
        };
        (pending, offer)
    }

    /// Callee: validates an incoming offer from the device whose Signal identity is
    /// `peer_identity` (the identity of the Signal session it arrived on) and records its call
    /// id. The call may now ring; no key material exists yet.
    ///
    /// Fails with [`Error::ReplayedOffer`] for a call id seen before, [`Error::NoCommonSuite`]
    /// if no offered suite is acceptable, [`Error::NonContributory`] for a low-order ephemeral.
    pub fn receive_offer(
        &mut self,
        offer: &Offer,
        peer_identity: &IdentityKey,
    ) -> Result<IncomingOffer> {
        if offer.version != CALL_PROTOCOL_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "offer",
                version: offer.version,
            });
        }
        if is_low_order(&offer.caller_ephemeral) {
            return Err(Error::NonContributory);
        }
        // The callee's preference decides among the suites both sides accept; the offered list
        // and the choice are both in the transcript, so a changed list cannot go unnoticed.
        let suite = self
            .suites
            .iter()
            .copied()
            .find(|ours| offer.suites.contains(&suite_code(*ours)))
            .ok_or(Error::NoCommonSuite)?;
        if !self.seen.insert(offer.call_id) {
            return Err(Error::ReplayedOffer);
        }
        debug!(call_id = %offer.call_id, ?suite, "call offer received");
        Ok(IncomingOffer {
            offer: offer.clone(),
            suite,
            caller_identity: *peer_identity,
            callee_identity: self.local_identity,
        })
    }

    /// Callee, on accept: same as [`IncomingOffer::accept`].
    pub fn answer<R: rand::CryptoRng + ?Sized>(
        incoming: IncomingOffer,
        rng: &mut R,
    ) -> Result<(Answer, MediaKeys)> {
        incoming.accept(rng)
    }

    /// Whether `call_id` is in the seen set (callee side).
    pub fn has_seen(&self, call_id: &CallId) -> bool {
        self.seen.contains(call_id)
    }
}

/// The caller's state between sending an offer and receiving the answer. Holds the ephemeral
/// secret, which is consumed (and zeroized) by the successful [`finish`](Self::finish) or when
/// this value is dropped.
pub struct PendingOffer {
    offer: Offer,
    caller_identity: IdentityKey,
    callee_identity: IdentityKey,
    secret: Option<EphemeralSecret>,
}

impl PendingOffer {
    /// The call id of the offer.
    pub fn call_id(&self) -> CallId {
        self.offer.call_id
    }

    /// The offer that was sent.
    pub fn offer(&self) -> &Offer {
        &self.offer
    }

    /// Whether the answer already arrived (the secret is spent).
    pub fn is_finished(&self) -> bool {
        self.secret.is_none()
    }

    /// Completes the exchange with the callee's answer and returns the caller's media keys.
    ///
    /// An answer for another call ([`Error::CallIdMismatch`]) or with a suite that was not
    /// offered ([`Error::SuiteNotOffered`]) is refused and leaves this offer pending. Once the
    /// answer passes those checks the ephemeral secret is used up, and a failing key
    /// confirmation ([`Error::KeyConfirmationFailed`]) or a low-order peer key
    /// ([`Error::NonContributory`]) ends the attempt ([`Error::AlreadyFinished`] afterwards).
    pub fn finish(&mut self, answer: &Answer) -> Result<MediaKeys> {
        if self.secret.is_none() {
            return Err(Error::AlreadyFinished);
        }
        if answer.version != self.offer.version {
            return Err(Error::UnsupportedVersion {
                what: "answer",
                version: answer.version,
            });
        }
        if answer.call_id != self.offer.call_id {
            return Err(Error::CallIdMismatch);
        }
        if !self.offer.suites.contains(&answer.suite) {
            return Err(Error::SuiteNotOffered);
        }
        // Only suites this build knows are ever offered, so this cannot fail in practice.
        let suite = answer.suite().ok_or(Error::SuiteNotOffered)?;
        if answer.callee_ephemeral == self.offer.caller_ephemeral {
            return Err(Error::ReflectedEphemeral);
        }
        let secret = self.secret.take().ok_or(Error::AlreadyFinished)?;
        let shared = secret.diffie_hellman(&X25519Public::from(answer.callee_ephemeral));
        if !shared.was_contributory() {
            return Err(Error::NonContributory);
        }
        let caller_id = self.caller_identity.serialize();
        let callee_id = self.callee_identity.serialize();
        let transcript = Transcript {
            version: self.offer.version,
            call_id: &self.offer.call_id,
            caller_identity: &caller_id,
            callee_identity: &callee_id,
            caller_ephemeral: &self.offer.caller_ephemeral,
            callee_ephemeral: &answer.callee_ephemeral,
            offered_suites: &self.offer.suites,
            chosen_suite: answer.suite,
        };
        let s0 = transcript.epoch0_secret(shared.as_bytes())?;
        drop(shared);
        let expected = confirmation(&s0)?;
        if !bool::from(expected.as_slice().ct_eq(&answer.confirm)) {
            return Err(Error::KeyConfirmationFailed);
        }
        debug!(call_id = %self.offer.call_id, ?suite, "call keys derived (caller)");
        MediaKeys::from_epoch_secret(suite, Side::Caller, self.offer.call_id, 0, s0)
    }
}

impl std::fmt::Debug for PendingOffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingOffer")
            .field("call_id", &self.offer.call_id)
            .field("finished", &self.secret.is_none())
            .finish_non_exhaustive()
    }
}

/// A validated incoming offer: the call may ring. Accepting it creates the callee's ephemeral
/// key and the media keys; dropping or rejecting it creates nothing.
#[derive(Debug)]
pub struct IncomingOffer {
    offer: Offer,
    suite: Suite,
    caller_identity: IdentityKey,
    callee_identity: IdentityKey,
}

impl IncomingOffer {
    /// The call id.
    pub fn call_id(&self) -> CallId {
        self.offer.call_id
    }

    /// The suite that will be used if the call is accepted.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The caller's identity key (from the Signal session the offer came on).
    pub fn caller_identity(&self) -> &IdentityKey {
        &self.caller_identity
    }

    /// The offer.
    pub fn offer(&self) -> &Offer {
        &self.offer
    }

    /// Declines the call. Nothing was derived; the call id stays in the seen set.
    pub fn reject(self) {}

    /// Accepts the call: makes the callee's ephemeral key, derives the media keys and returns
    /// the `Answer` to seal and send back.
    pub fn accept<R: rand::CryptoRng + ?Sized>(self, rng: &mut R) -> Result<(Answer, MediaKeys)> {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        self.accept_with_seed(&seed)
    }

    pub(crate) fn accept_with_seed(
        self,
        seed: &Zeroizing<[u8; 32]>,
    ) -> Result<(Answer, MediaKeys)> {
        let secret = ephemeral_from_seed(seed);
        let callee_ephemeral = X25519Public::from(&secret).to_bytes();
        if callee_ephemeral == self.offer.caller_ephemeral {
            return Err(Error::ReflectedEphemeral);
        }
        let shared = secret.diffie_hellman(&X25519Public::from(self.offer.caller_ephemeral));
        if !shared.was_contributory() {
            return Err(Error::NonContributory);
        }
        let caller_id = self.caller_identity.serialize();
        let callee_id = self.callee_identity.serialize();
        let chosen = suite_code(self.suite);
        let transcript = Transcript {
            version: self.offer.version,
            call_id: &self.offer.call_id,
            caller_identity: &caller_id,
            callee_identity: &callee_id,
            caller_ephemeral: &self.offer.caller_ephemeral,
            callee_ephemeral: &callee_ephemeral,
            offered_suites: &self.offer.suites,
            chosen_suite: chosen,
        };
        let s0 = transcript.epoch0_secret(shared.as_bytes())?;
        drop(shared);
        let confirm = confirmation(&s0)?;
        let answer = Answer {
            version: self.offer.version,
            call_id: self.offer.call_id,
            callee_ephemeral,
            suite: chosen,
            confirm: *confirm,
        };
        debug!(call_id = %self.offer.call_id, suite = ?self.suite, "call keys derived (callee)");
        let keys =
            MediaKeys::from_epoch_secret(self.suite, Side::Callee, self.offer.call_id, 0, s0)?;
        Ok((answer, keys))
    }
}

/// A bounded set of call ids, oldest evicted first.
///
/// Beyond the bound, an evicted id could be replayed; that replay still has to get through the
/// Signal session, whose Double Ratchet refuses a message it already decrypted, and even then
/// the replayed offer only rings: no key is derived without a fresh caller secret.
#[derive(Debug)]
struct SeenCallIds {
    capacity: usize,
    order: VecDeque<CallId>,
    set: HashSet<CallId>,
}

impl SeenCallIds {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            order: VecDeque::new(),
            set: HashSet::new(),
        }
    }

    /// Inserts `id`; false if it was already present.
    fn insert(&mut self, id: CallId) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    fn contains(&self, id: &CallId) -> bool {
        self.set.contains(id)
    }
}

/// X25519 secret from 32 seed bytes (x25519-dalek clamps them).
fn ephemeral_from_seed(seed: &Zeroizing<[u8; 32]>) -> EphemeralSecret {
    EphemeralSecret::random_from_rng(SeedRng(seed))
}

/// True if `point` is in the small subgroup: any clamped scalar is a multiple of the cofactor 8
/// and smaller than 8·ℓ, so X25519 gives the all-zero output exactly for low-order inputs.
fn is_low_order(point: &[u8; 32]) -> bool {
    let mut probe = [0u8; 32];
    probe[0] = 8;
    probe[31] = 0x40;
    let out = x25519_dalek::x25519(probe, *point);
    bool::from(out.ct_eq(&[0u8; 32]))
}

/// Hands x25519-dalek (which takes a rand_core 0.6 RNG) the seed drawn from the caller's
/// rand 0.9 RNG. x25519-dalek asks for exactly 32 bytes once.
struct SeedRng<'a>(&'a Zeroizing<[u8; 32]>);

impl rand_core_06::RngCore for SeedRng<'_> {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for (d, s) in dest.iter_mut().zip(self.0.iter().cycle()) {
            *d = *s;
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core_06::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rand_core_06::CryptoRng for SeedRng<'_> {}

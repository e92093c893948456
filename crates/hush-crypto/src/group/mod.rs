//! End-to-end encryption of group call media: SFrame (RFC 9605) with sender keys handed out
//! over the pairwise Signal sessions.
//!
//! In a group call the SFU terminates the hop-by-hop SRTP, so every encoded audio and video
//! frame is also encrypted end to end, before packetization, under its sender's key. Each
//! participant has one [`GroupE2ee`]: it makes its own random sender key, gives out
//! [`KeyMessage`]s for the app to seal over the Signal session of each member (and only those),
//! takes the key messages of the others, and encrypts and decrypts frames. It is sans-IO: time
//! comes in as [`Instant`]s, held frames come out of [`GroupE2ee::poll_released`].
//!
//! Key rules (normative text in `docs/crypto.md`, "Group call keys"):
//! - **Key ids** name `(sender, generation, step)` ([`GroupKeyId`]). A receiver installs a key
//!   only from the member whose Signal session delivered it, and decrypts a frame only if its
//!   key id names the member it arrived from.
//! - **Join**: every sender moves its key one ratchet step forward (RFC 9605 §5.1,
//!   [`ratchet_base_key`]) and gives the joiner only the new step: the joiner cannot decrypt
//!   what was sent before it joined. Members already holding the key ratchet their copy when
//!   the first frame of the new step authenticates.
//! - **Leave or kick**: every remaining sender starts a new generation, a fresh random key the
//!   departed member never receives ([`GroupE2ee::rotate`]), and receivers drop the departed
//!   member's keys. Keys that are replaced stay usable for [`GRACE`] for frames in flight, then
//!   are wiped.
//! - **Unknown key**: a frame whose key has not arrived yet is held for [`HOLD`] (bounded), then
//!   dropped and counted; never shown.
//!
//! hush-sfu does not depend on this crate: the SFU never holds these keys.
//!
//! ```
//! use std::time::Instant;
//! use hush_crypto::group::{FrameKind, GroupCallId, GroupE2ee, MemberSlot, Opened};
//!
//! let call = GroupCallId([1; 16]);
//! let now = Instant::now();
//! let mut alice = GroupE2ee::new(call, MemberSlot(0), &mut rand::rng()).unwrap();
//! let mut bob = GroupE2ee::new(call, MemberSlot(1), &mut rand::rng()).unwrap();
//! // Alice's key message travels sealed over the Alice–Bob Signal session.
//! bob.receive_key(MemberSlot(0), &alice.key_message(), now).unwrap();
//! let sframe = alice.encrypt(FrameKind::Audio, b"an opus frame").unwrap();
//! let opened = bob.decrypt(MemberSlot(0), FrameKind::Audio, &sframe, now).unwrap();
//! assert_eq!(opened, Opened::Frame(b"an opus frame".to_vec()));
//! ```

mod key_id;
mod key_message;
mod ratchet;
mod receiver;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use rand::{CryptoRng, Rng};
use sframe::frame::{EncryptedFrameView, MediaFrameView, MonotonicCounter};
use sframe::key::{DecryptionKey, EncryptionKey};
use sframe::CipherSuite;
use tracing::debug;
use zeroize::Zeroizing;

pub use key_id::{GroupKeyId, MemberSlot};
pub use key_message::{KeyMessage, KEY_MESSAGE_LEN, KEY_MESSAGE_VERSION};
pub use ratchet::ratchet_base_key;

use receiver::SenderKeys;

/// The SFrame cipher suite of hush group calls: AES-128-GCM with HKDF-SHA256, 16-byte tag
/// (RFC 9605 `AES_128_GCM_SHA256_128`).
pub const GROUP_SUITE: CipherSuite = CipherSuite::AesGcm128Sha256;

/// Length of a sender base key.
pub const BASE_KEY_LEN: usize = 32;

/// How long a replaced key still decrypts frames that were in flight.
pub const GRACE: Duration = Duration::from_secs(2);

/// How long a frame under a key not yet received is held.
pub const HOLD: Duration = Duration::from_secs(1);

/// Frames held per sender while their key is in flight.
pub const MAX_HELD_PER_SENDER: usize = 64;

/// A group call's identifier, bound into every key message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GroupCallId(pub [u8; 16]);

/// What a frame is; authenticated with it (as SFrame metadata), so a frame cannot be replayed
/// as the other kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// An encoded audio frame.
    Audio,
    /// An encoded video frame.
    Video,
}

impl FrameKind {
    fn metadata(self) -> [u8; 2] {
        // Version of the metadata layout, then the kind.
        [1, self as u8]
    }
}

/// Why a key message or a frame was refused. Each is counted in [`GroupStats`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupError {
    /// A key message did not parse.
    #[error("malformed key message: {0}")]
    MalformedKeyMessage(&'static str),
    /// A key message for another call.
    #[error("key message is for another call")]
    OtherCall,
    /// A key message or frame names another sender than the member it came from.
    #[error("{claimed} claimed by a message from {from}")]
    WrongSender {
        /// The sender the key id names.
        claimed: MemberSlot,
        /// The member whose session or stream delivered it.
        from: MemberSlot,
    },
    /// A key message for a generation older than one already held, or one that contradicts a
    /// key already held for its generation.
    #[error("key message for {0} contradicts or predates a key already held")]
    StaleKey(GroupKeyId),
    /// A frame did not parse as SFrame, or its key id does not fit hush's layout.
    #[error("malformed SFrame frame: {0}")]
    MalformedFrame(&'static str),
    /// A frame that does not authenticate under its key (altered, truncated, relabelled kind).
    #[error("frame failed authentication")]
    Authentication,
    /// A frame whose counter was already received under its key.
    #[error("replayed frame")]
    Replayed,
    /// A frame from a sender that is not (or no longer) a member.
    #[error("frame from {0}, not a member")]
    NotAMember(MemberSlot),
    /// A frame under a key that is gone (older than the grace window) or too far ahead.
    #[error("no usable key for {0}")]
    NoKey(GroupKeyId),
    /// The sender's own key ran out of generations, steps or frame counters.
    #[error("sender key exhausted; the call must be restarted")]
    Exhausted,
}

/// What [`GroupE2ee::decrypt`] did with a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    /// The frame's plaintext.
    Frame(Vec<u8>),
    /// Its key has not arrived: held for up to [`HOLD`]; it comes out of
    /// [`GroupE2ee::poll_released`] if the key arrives in time.
    Held,
}

/// Counters of what happened to frames and key messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Frames encrypted.
    pub encrypted: u64,
    /// Frames decrypted (at once or after being held).
    pub decrypted: u64,
    /// Frames held for a key in flight.
    pub held: u64,
    /// Held frames dropped: their key did not come within [`HOLD`], or the hold was full.
    pub dropped_unknown_key: u64,
    /// Frames refused: failed authentication, replayed, wrong sender, not a member, no key.
    pub refused: u64,
    /// Key messages installed.
    pub keys_installed: u64,
    /// Key messages refused.
    pub keys_refused: u64,
}

/// This participant's sending key.
struct SendingKey {
    id: GroupKeyId,
    base: Zeroizing<[u8; BASE_KEY_LEN]>,
    key: EncryptionKey,
    counter: MonotonicCounter,
}

impl SendingKey {
    fn new(id: GroupKeyId, base: Zeroizing<[u8; BASE_KEY_LEN]>) -> Result<Self, GroupError> {
        let key = EncryptionKey::derive_from(GROUP_SUITE, id.to_kid(), &base[..])
            .map_err(|_| GroupError::Exhausted)?;
        Ok(Self {
            id,
            base,
            key,
            counter: MonotonicCounter::default(),
        })
    }
}

/// A frame held until its key arrives.
struct HeldFrame {
    from: MemberSlot,
    kind: FrameKind,
    tag: u64,
    sframe: Vec<u8>,
    until: Instant,
}

/// One participant's end-to-end state for one group call. See the [module docs](self).
pub struct GroupE2ee {
    call_id: GroupCallId,
    me: MemberSlot,
    sending: SendingKey,
    senders: HashMap<MemberSlot, SenderKeys>,
    held: VecDeque<HeldFrame>,
    released: VecDeque<Released>,
    stats: GroupStats,
}

impl std::fmt::Debug for GroupE2ee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupE2ee")
            .field("me", &self.me)
            .field("sending", &self.sending.id)
            .field("senders", &self.senders.len())
            .finish_non_exhaustive()
    }
}

impl GroupE2ee {
    /// A participant at `me` in call `call_id`, with a fresh random sender key (generation 0,
    /// step 0).
    pub fn new<R: CryptoRng + Rng + ?Sized>(
        call_id: GroupCallId,
        me: MemberSlot,
        rng: &mut R,
    ) -> Result<Self, GroupError> {
        let id = GroupKeyId {
            sender: me,
            generation: 0,
            step: 0,
        };
        let sending = SendingKey::new(id, random_base(rng))?;
        Ok(Self {
            call_id,
            me,
            sending,
            senders: HashMap::new(),
            held: VecDeque::new(),
            released: VecDeque::new(),
            stats: GroupStats::default(),
        })
    }

    /// This participant's slot.
    pub fn me(&self) -> MemberSlot {
        self.me
    }

    /// The key id frames are sent under now.
    pub fn sending_key_id(&self) -> GroupKeyId {
        self.sending.id
    }

    /// The current sending key as a key message, to seal for each member of the call.
    pub fn key_message(&self) -> KeyMessage {
        KeyMessage {
            call_id: self.call_id,
            key_id: self.sending.id,
            base_key: self.sending.base.clone(),
        }
    }

    /// A member left or was kicked: start a new generation with a fresh random key (the old
    /// one is wiped) and return its key message, to seal for every *remaining* member only.
    pub fn rotate<R: CryptoRng + Rng + ?Sized>(
        &mut self,
        rng: &mut R,
    ) -> Result<KeyMessage, GroupError> {
        let generation = self
            .sending
            .id
            .generation
            .checked_add(1)
            .ok_or(GroupError::Exhausted)?;
        let id = GroupKeyId {
            sender: self.me,
            generation,
            step: 0,
        };
        self.sending = SendingKey::new(id, random_base(rng))?;
        debug!(key = %id, "group sender key rotated");
        Ok(self.key_message())
    }

    /// A member joined: move the sending key one ratchet step forward (the previous step is
    /// wiped) and return the new step's key message, for the joiner. Members that hold the
    /// key already follow the step on their own. After 255 joins in one generation this starts
    /// a new generation instead, which then must go to every member.
    pub fn ratchet_for_join<R: CryptoRng + Rng + ?Sized>(
        &mut self,
        rng: &mut R,
    ) -> Result<JoinKeys, GroupError> {
        let Some(step) = self.sending.id.step.checked_add(1) else {
            return Ok(JoinKeys::NewGeneration(self.rotate(rng)?));
        };
        let id = GroupKeyId {
            step,
            ..self.sending.id
        };
        let base = ratchet_base_key(&self.sending.base);
        self.sending = SendingKey::new(id, base)?;
        Ok(JoinKeys::Ratcheted(self.key_message()))
    }

    /// Installs a key message that arrived over the Signal session of the member at `from`.
    /// Refused if it is for another call, names another sender, or predates or contradicts a
    /// key already held. Frames held for this key are released.
    pub fn receive_key(
        &mut self,
        from: MemberSlot,
        message: &KeyMessage,
        now: Instant,
    ) -> Result<(), GroupError> {
        let result = self.install_key(from, message, now);
        match &result {
            Ok(()) => {
                self.stats.keys_installed += 1;
                self.release_held(from, now);
            }
            Err(e) => {
                self.stats.keys_refused += 1;
                debug!(%from, error = %e, "group key message refused");
            }
        }
        result
    }

    fn install_key(
        &mut self,
        from: MemberSlot,
        message: &KeyMessage,
        now: Instant,
    ) -> Result<(), GroupError> {
        if message.call_id != self.call_id {
            return Err(GroupError::OtherCall);
        }
        if message.key_id.sender != from || from == self.me {
            return Err(GroupError::WrongSender {
                claimed: message.key_id.sender,
                from,
            });
        }
        self.senders
            .entry(from)
            .or_default()
            .install(message.key_id, &message.base_key, now)
    }

    /// The member at `slot` left or was kicked: its keys are wiped and its held frames
    /// dropped. (Call [`rotate`](Self::rotate) too, and send the new key to the others.)
    pub fn remove_member(&mut self, slot: MemberSlot) {
        self.senders.remove(&slot);
        let before = self.held.len();
        self.held.retain(|h| h.from != slot);
        self.stats.dropped_unknown_key += (before - self.held.len()) as u64;
    }

    /// Encrypts one encoded frame under the current sending key: SFrame header, ciphertext and
    /// tag, to packetize as the frame's payload.
    pub fn encrypt(&mut self, kind: FrameKind, frame: &[u8]) -> Result<Vec<u8>, GroupError> {
        let meta = kind.metadata();
        let media = MediaFrameView::try_with_meta_data(&mut self.sending.counter, frame, &meta)
            .map_err(|_| GroupError::Exhausted)?;
        let mut buffer = Vec::with_capacity(frame.len() + meta.len() + 32);
        let encrypted = media
            .encrypt_into(&self.sending.key, &mut buffer)
            .map_err(|_| GroupError::Exhausted)?;
        // The buffer holds the metadata, then the SFrame ciphertext: keep the ciphertext in
        // place, no second allocation.
        let sframe_len = encrypted.sframe_cipher_text().len();
        buffer.truncate(meta.len() + sframe_len);
        buffer.drain(..meta.len());
        self.stats.encrypted += 1;
        Ok(buffer)
    }

    /// Decrypts a frame that arrived on the stream of the member at `from`. Refused (and
    /// counted) if its key id names another member, it does not authenticate (altered,
    /// truncated, other kind), or it is a replay. A frame under a key not received yet is held.
    pub fn decrypt(
        &mut self,
        from: MemberSlot,
        kind: FrameKind,
        sframe: &[u8],
        now: Instant,
    ) -> Result<Opened, GroupError> {
        self.decrypt_tagged(from, kind, sframe, 0, now)
    }

    /// [`decrypt`](Self::decrypt), with a `tag` of the caller's (such as the frame's RTP
    /// timestamp) that comes back with the frame from [`poll_released_tagged`] if it is held.
    ///
    /// [`poll_released_tagged`]: Self::poll_released_tagged
    pub fn decrypt_tagged(
        &mut self,
        from: MemberSlot,
        kind: FrameKind,
        sframe: &[u8],
        tag: u64,
        now: Instant,
    ) -> Result<Opened, GroupError> {
        match self.open(from, kind, sframe, now) {
            Ok(Ok(plain)) => {
                self.stats.decrypted += 1;
                Ok(Opened::Frame(plain))
            }
            Ok(Err(id)) => self.hold(from, kind, sframe, tag, id, now),
            Err(e) => {
                self.stats.refused += 1;
                Err(e)
            }
        }
    }

    /// `Ok(Err(id))`: key `id` has not arrived.
    fn open(
        &mut self,
        from: MemberSlot,
        kind: FrameKind,
        sframe: &[u8],
        now: Instant,
    ) -> Result<Result<Vec<u8>, GroupKeyId>, GroupError> {
        let meta = kind.metadata();
        let frame = EncryptedFrameView::try_with_meta_data(sframe, &meta)
            .map_err(|_| GroupError::MalformedFrame("header"))?;
        let id = GroupKeyId::from_kid(frame.header().key_id())
            .ok_or(GroupError::MalformedFrame("key id outside hush's layout"))?;
        if id.sender != from {
            return Err(GroupError::WrongSender {
                claimed: id.sender,
                from,
            });
        }
        let Some(keys) = self.senders.get_mut(&from) else {
            return Ok(Err(id));
        };
        Ok(keys.open(id, &frame, now)?.ok_or(id))
    }

    fn hold(
        &mut self,
        from: MemberSlot,
        kind: FrameKind,
        sframe: &[u8],
        tag: u64,
        id: GroupKeyId,
        now: Instant,
    ) -> Result<Opened, GroupError> {
        self.expire_held(now);
        if self.held.iter().filter(|h| h.from == from).count() >= MAX_HELD_PER_SENDER {
            self.stats.dropped_unknown_key += 1;
            return Err(GroupError::NoKey(id));
        }
        self.held.push_back(HeldFrame {
            from,
            kind,
            tag,
            sframe: sframe.to_vec(),
            until: now + HOLD,
        });
        self.stats.held += 1;
        Ok(Opened::Held)
    }

    fn release_held(&mut self, from: MemberSlot, now: Instant) {
        let (mine, others): (VecDeque<_>, VecDeque<_>) =
            self.held.drain(..).partition(|h| h.from == from);
        self.held = others;
        for h in mine {
            match self.open(h.from, h.kind, &h.sframe, now) {
                Ok(Ok(plain)) => {
                    self.stats.decrypted += 1;
                    self.released.push_back(Released {
                        from: h.from,
                        kind: h.kind,
                        tag: h.tag,
                        frame: plain,
                    });
                }
                // Still no key for this one (another generation in flight): keep waiting.
                Ok(Err(_)) => self.held.push_back(h),
                Err(_) => self.stats.refused += 1,
            }
        }
    }

    fn expire_held(&mut self, now: Instant) {
        let before = self.held.len();
        self.held.retain(|h| h.until > now);
        self.stats.dropped_unknown_key += (before - self.held.len()) as u64;
    }

    /// A frame that was held and has now decrypted: `(sender, kind, plaintext)`.
    pub fn poll_released(&mut self) -> Option<(MemberSlot, FrameKind, Vec<u8>)> {
        self.released.pop_front().map(|r| (r.from, r.kind, r.frame))
    }

    /// A frame that was held and has now decrypted, with the tag given to
    /// [`decrypt_tagged`](Self::decrypt_tagged).
    pub fn poll_released_tagged(&mut self) -> Option<Released> {
        self.released.pop_front()
    }

    /// Drops held frames whose key did not come in time and wipes replaced keys whose grace
    /// window ended. Call at [`poll_timeout`](Self::poll_timeout).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire_held(now);
        for keys in self.senders.values_mut() {
            keys.expire(now);
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let held = self.held.iter().map(|h| h.until).min();
        let keys = self
            .senders
            .values()
            .filter_map(SenderKeys::next_expiry)
            .min();
        held.into_iter().chain(keys).min()
    }

    /// Counters of frames and key messages.
    pub fn stats(&self) -> &GroupStats {
        &self.stats
    }
}

/// A held frame that decrypted once its key arrived.
#[derive(Debug, PartialEq, Eq)]
pub struct Released {
    /// The member it came from.
    pub from: MemberSlot,
    /// Its kind.
    pub kind: FrameKind,
    /// The tag it was held with ([`GroupE2ee::decrypt_tagged`]).
    pub tag: u64,
    /// Its plaintext.
    pub frame: Vec<u8>,
}

/// What [`GroupE2ee::ratchet_for_join`] produced.
#[derive(Debug)]
pub enum JoinKeys {
    /// The key moved one step forward: send this to the joiner only.
    Ratcheted(KeyMessage),
    /// The generation's steps ran out, so a new generation started: send this to every member,
    /// the joiner included.
    NewGeneration(KeyMessage),
}

fn random_base<R: CryptoRng + Rng + ?Sized>(rng: &mut R) -> Zeroizing<[u8; BASE_KEY_LEN]> {
    let mut base = Zeroizing::new([0u8; BASE_KEY_LEN]);
    rng.fill_bytes(&mut base[..]);
    base
}

/// Derives the SFrame decryption key of `id` from its base key.
fn decryption_key(id: GroupKeyId, base: &[u8; BASE_KEY_LEN]) -> Result<DecryptionKey, GroupError> {
    DecryptionKey::derive_from(GROUP_SUITE, id.to_kid(), &base[..])
        .map_err(|_| GroupError::NoKey(id))
}

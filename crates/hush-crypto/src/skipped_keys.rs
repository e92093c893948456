//! A bound on the message keys libsignal derives for one received message before it checks
//! the message's MAC.
//!
//! A Signal message carries its sender's ratchet key and its counter in that sender chain, in
//! clear and unauthenticated until the MAC is checked. To decrypt counter `n` on a chain whose
//! next index is `i`, libsignal derives and stores the `n - i` skipped message keys first (it
//! allows up to 25,000), cloning the chain with its stored keys at every step, and it does so
//! again for every archived session it tries when the MAC fails. A forged message with a large
//! counter therefore costs seconds of CPU (found by the `crypto_open` fuzz campaign: counter
//! 13,489 took 30 s under AddressSanitizer), and whoever can deliver envelopes under a peer's
//! name can send one per envelope.
//!
//! [`forward_jump`] reads the session record (the chains' public ratchet keys and indexes, not
//! their keys) and returns the largest number of keys libsignal would derive in any session
//! state it may try. [`crate::Device::open`] refuses the message, before libsignal runs, when
//! that exceeds [`MAX_SKIPPED_KEYS`].

use libsignal_protocol::{PreKeySignalMessage, PublicKey, SignalMessage};
use prost::Message as _;

/// The largest number of skipped message keys hush lets libsignal derive for one received
/// message, in any one session state. Half of the 2,000 skipped keys libsignal keeps per chain:
/// a peer that sent more than 1,000 messages in one chain that never arrived (the relay keeps
/// at most 100 per sender and recipient) is out of step anyway, and a message refused here is
/// followed by a new chain, from counter 0, as soon as this device sends to that peer.
pub const MAX_SKIPPED_KEYS: u32 = 1_000;

/// The parts of libsignal's `RecordStructure` (storage.proto, `signal.proto.storage`) read
/// here. prost skips every other field, so key material is never copied into these values.
#[derive(Clone, PartialEq, prost::Message)]
struct RecordView {
    #[prost(message, optional, tag = "1")]
    current_session: Option<SessionView>,
    #[prost(bytes = "vec", repeated, tag = "2")]
    previous_sessions: Vec<Vec<u8>>,
}

/// The parts of libsignal's `SessionStructure` read here.
#[derive(Clone, PartialEq, prost::Message)]
struct SessionView {
    #[prost(uint32, tag = "1")]
    session_version: u32,
    #[prost(message, repeated, tag = "7")]
    receiver_chains: Vec<ChainView>,
    #[prost(bytes = "vec", tag = "13")]
    alice_base_key: Vec<u8>,
}

/// One receiver chain: the sender's public ratchet key and the chain's next index.
#[derive(Clone, PartialEq, prost::Message)]
struct ChainView {
    #[prost(bytes = "vec", tag = "1")]
    sender_ratchet_key: Vec<u8>,
    #[prost(message, optional, tag = "3")]
    chain_key: Option<ChainIndexView>,
}

/// A chain key's index (its key bytes, field 2, are skipped).
#[derive(Clone, PartialEq, prost::Message)]
struct ChainIndexView {
    #[prost(uint32, tag = "1")]
    index: u32,
}

impl SessionView {
    /// How many message keys libsignal derives in this state to reach `counter` on the chain of
    /// `ratchet_key`: from the chain's index if the chain is known (0 when the counter is
    /// behind it: a stored key is looked up), from 0 for a chain it would create.
    fn jump(&self, ratchet_key: &PublicKey, counter: u32) -> u32 {
        let known = self.receiver_chains.iter().find(|chain| {
            PublicKey::deserialize(&chain.sender_ratchet_key).is_ok_and(|key| key == *ratchet_key)
        });
        match known {
            Some(chain) => {
                let index = chain.chain_key.as_ref().map_or(0, |key| key.index);
                counter.saturating_sub(index)
            }
            None => counter,
        }
    }
}

/// The largest forward jump libsignal would make for `message` from a peer whose session record
/// serializes to `record` (`None`: no session yet). For a whisper message that is the largest
/// over the current state and every archived state of the right version (libsignal tries them
/// in turn while the MAC fails); for a prekey message, the state it would continue (one with
/// the same base key) or a new one. A record that does not parse gives the message's counter,
/// the jump from a new chain.
pub(crate) fn forward_jump(record: Option<&[u8]>, message: &Incoming<'_>) -> u32 {
    let (signal, base_key) = match message {
        Incoming::Whisper(m) => (*m, None),
        Incoming::PreKey(m) => (m.message(), Some(m.base_key())),
    };
    let ratchet_key = signal.sender_ratchet_key();
    let counter = signal.counter();
    let Some(view) = record.and_then(|bytes| RecordView::decode(bytes).ok()) else {
        return counter;
    };
    let mut states = Vec::with_capacity(1 + view.previous_sessions.len());
    states.extend(view.current_session);
    states.extend(
        view.previous_sessions
            .iter()
            .filter_map(|bytes| SessionView::decode(bytes.as_slice()).ok()),
    );
    match base_key {
        Some(base_key) => states
            .iter()
            .find(|state| {
                PublicKey::deserialize(&state.alice_base_key).is_ok_and(|key| key == *base_key)
            })
            .map_or(counter, |state| state.jump(ratchet_key, counter)),
        None => {
            let version = u32::from(signal.message_version());
            states
                .iter()
                .filter(|state| state.session_version == version)
                .map(|state| state.jump(ratchet_key, counter))
                .max()
                .unwrap_or(0)
        }
    }
}

/// A parsed received message, as [`forward_jump`] looks at it.
pub(crate) enum Incoming<'a> {
    /// A message on an existing session.
    Whisper(&'a SignalMessage),
    /// A message that starts (or continues) a session from a prekey bundle.
    PreKey(&'a PreKeySignalMessage),
}

//! The keys one receiver holds for one sender, with their replay windows.

use std::time::Instant;

use sframe::frame::EncryptedFrameView;
use sframe::key::DecryptionKey;
use zeroize::Zeroizing;

use super::ratchet::ratchet_steps;
use super::{decryption_key, GroupError, GroupKeyId, BASE_KEY_LEN, GRACE};

/// Keys held per sender: the current one, and replaced ones within their grace window.
const MAX_KEYS_PER_SENDER: usize = 4;

/// How many ratchet steps a frame may be ahead of the key held for its generation (each step
/// is one join while this receiver did not see a frame).
pub(super) const MAX_STEPS_AHEAD: u8 = 16;

/// Counters remembered below the highest one received, per key.
const REPLAY_WINDOW: u64 = 128;

/// One key of a sender.
struct HeldKey {
    id: GroupKeyId,
    base: Zeroizing<[u8; BASE_KEY_LEN]>,
    key: DecryptionKey,
    replay: ReplayWindow,
    /// When a newer key replaced this one, it stays until then.
    expires: Option<Instant>,
}

impl HeldKey {
    fn new(id: GroupKeyId, base: Zeroizing<[u8; BASE_KEY_LEN]>) -> Result<Self, GroupError> {
        let key = decryption_key(id, &base)?;
        Ok(Self {
            id,
            base,
            key,
            replay: ReplayWindow::default(),
            expires: None,
        })
    }

    fn usable(&self, now: Instant) -> bool {
        self.expires.is_none_or(|t| now < t)
    }

    fn retire(&mut self, now: Instant) {
        let until = now + GRACE;
        self.expires = Some(self.expires.map_or(until, |t| t.min(until)));
    }
}

/// The keys held for one sender.
#[derive(Default)]
pub(super) struct SenderKeys {
    keys: Vec<HeldKey>,
}

impl SenderKeys {
    /// Installs a key from a key message (already checked to come from its sender).
    pub(super) fn install(
        &mut self,
        id: GroupKeyId,
        base: &[u8; BASE_KEY_LEN],
        now: Instant,
    ) -> Result<(), GroupError> {
        self.expire(now);
        let newest_generation = self.keys.iter().map(|k| k.id.generation).max();
        if newest_generation.is_some_and(|g| id.generation < g) {
            return Err(GroupError::StaleKey(id));
        }
        if let Some(same) = self
            .keys
            .iter()
            .filter(|k| k.id.generation == id.generation)
            .max_by_key(|k| k.id.step)
        {
            // Within a generation a key is fixed by its first step: a later step must be its
            // ratchet, an equal step the same key.
            if id.step < same.id.step {
                return Err(GroupError::StaleKey(id));
            }
            let expected = ratchet_steps(&same.base, id.step - same.id.step);
            if *expected != *base {
                return Err(GroupError::StaleKey(id));
            }
            if id.step == same.id.step {
                return Ok(());
            }
        }
        let key = HeldKey::new(id, Zeroizing::new(*base))?;
        self.push(key, now);
        Ok(())
    }

    /// Adds `key` as the current one; the others enter their grace window.
    fn push(&mut self, key: HeldKey, now: Instant) {
        for old in &mut self.keys {
            old.retire(now);
        }
        self.keys.push(key);
        if self.keys.len() > MAX_KEYS_PER_SENDER {
            // The oldest key goes first (dropping wipes it).
            self.keys.remove(0);
        }
    }

    /// Decrypts `frame` under key `id`; `Ok(None)` if that key may still arrive.
    pub(super) fn open(
        &mut self,
        id: GroupKeyId,
        frame: &EncryptedFrameView<'_>,
        now: Instant,
    ) -> Result<Option<Vec<u8>>, GroupError> {
        let counter = frame.header().counter();
        if let Some(held) = self.keys.iter_mut().find(|k| k.id == id) {
            if !held.usable(now) {
                return Err(GroupError::NoKey(id));
            }
            if !held.replay.is_new(counter) {
                return Err(GroupError::Replayed);
            }
            let plain = decrypt(frame, &held.key)?;
            held.replay.record(counter);
            return Ok(Some(plain));
        }
        // A later step of a generation held: the sender ratcheted for a joiner.
        let below = self
            .keys
            .iter()
            .filter(|k| k.id.generation == id.generation && k.id.step < id.step && k.usable(now))
            .max_by_key(|k| k.id.step);
        if let Some(below) = below {
            let steps = id.step - below.id.step;
            if steps > MAX_STEPS_AHEAD {
                return Err(GroupError::NoKey(id));
            }
            // The key id is not authenticated yet: derive a candidate and keep it only if the
            // frame authenticates under it.
            let candidate = HeldKey::new(id, ratchet_steps(&below.base, steps))?;
            let plain = decrypt(frame, &candidate.key)?;
            let mut candidate = candidate;
            candidate.replay.record(counter);
            self.push(candidate, now);
            return Ok(Some(plain));
        }
        let newest_generation = self.keys.iter().map(|k| k.id.generation).max();
        if newest_generation.is_none_or(|g| id.generation > g) {
            // A generation not received yet: its key message may be in flight.
            return Ok(None);
        }
        Err(GroupError::NoKey(id))
    }

    /// Wipes keys whose grace window ended.
    pub(super) fn expire(&mut self, now: Instant) {
        self.keys.retain(|k| k.usable(now));
    }

    /// When the next replaced key's grace window ends.
    pub(super) fn next_expiry(&self) -> Option<Instant> {
        self.keys.iter().filter_map(|k| k.expires).min()
    }
}

fn decrypt(frame: &EncryptedFrameView<'_>, key: &DecryptionKey) -> Result<Vec<u8>, GroupError> {
    let mut buffer = Vec::with_capacity(frame.sframe_cipher_text().len());
    let media = frame
        .decrypt_into(key, &mut buffer)
        .map_err(|_| GroupError::Authentication)?;
    // The buffer holds the metadata, then the payload: keep the payload in place, no copy.
    let (meta_len, payload_len) = (media.meta_data().len(), media.payload().len());
    buffer.truncate(meta_len + payload_len);
    buffer.drain(..meta_len);
    Ok(buffer)
}

/// Which frame counters were received under one key: the highest, and a bitmap of the
/// [`REPLAY_WINDOW`] below it. Older counters are refused.
#[derive(Default)]
struct ReplayWindow {
    /// Highest counter received plus one (0: none yet).
    top: u64,
    /// Bit `i`: counter `top - 1 - i` received.
    seen: u128,
}

impl ReplayWindow {
    fn is_new(&self, counter: u64) -> bool {
        if self.top == 0 || counter >= self.top {
            return true;
        }
        let behind = self.top - 1 - counter;
        behind < REPLAY_WINDOW && self.seen & (1u128 << behind) == 0
    }

    fn record(&mut self, counter: u64) {
        if self.top == 0 || counter >= self.top {
            let shift = if self.top == 0 {
                REPLAY_WINDOW
            } else {
                counter - (self.top - 1)
            };
            self.seen = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.top = counter.saturating_add(1);
        } else {
            let behind = self.top - 1 - counter;
            if behind < REPLAY_WINDOW {
                self.seen |= 1u128 << behind;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ReplayWindow;

    #[test]
    fn replay_window_accepts_each_counter_once_and_refuses_old_ones() {
        let mut w = ReplayWindow::default();
        for c in [5u64, 3, 4, 200, 199, 100] {
            assert!(w.is_new(c), "{c}");
            w.record(c);
            assert!(!w.is_new(c), "{c} again");
        }
        // 200 - 127 = 73 is the oldest counter still tracked; 72 and below are refused.
        assert!(w.is_new(73));
        assert!(!w.is_new(72));
        assert!(!w.is_new(5));
        assert!(w.is_new(u64::MAX - 1));
        w.record(u64::MAX - 1);
        assert!(!w.is_new(u64::MAX - 1));
    }
}

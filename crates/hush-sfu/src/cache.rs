//! Per-leg cache of the protected packets sent to a recipient, for answering its NACKs.
//!
//! A retransmission resends the exact SRTP bytes sent the first time: the same packet index
//! under the same key, the same ciphertext, so no AES-GCM nonce is used for two plaintexts. The
//! recipient's replay window accepts it only if the first copy never arrived.

use std::collections::HashMap;

/// A ring of the last `capacity` packets, looked up by (SSRC, sequence number).
#[derive(Debug)]
pub(crate) struct PacketCache {
    slots: Vec<Slot>,
    index: HashMap<(u32, u16), usize>,
    next: usize,
    max_resends: u8,
}

#[derive(Debug, Default)]
struct Slot {
    key: Option<(u32, u16)>,
    bytes: Vec<u8>,
    resends: u8,
}

impl PacketCache {
    /// A cache of `capacity` packets (0 disables it), each resent at most `max_resends` times.
    pub(crate) fn new(capacity: usize, max_resends: u8) -> Self {
        Self {
            slots: (0..capacity).map(|_| Slot::default()).collect(),
            index: HashMap::with_capacity(capacity),
            next: 0,
            max_resends,
        }
    }

    /// Stores a copy of `bytes`, the packet of `ssrc`/`seq`, evicting the oldest. Reuses the
    /// evicted slot's buffer, so a warm cache does not allocate.
    pub(crate) fn insert(&mut self, ssrc: u32, seq: u16, bytes: &[u8]) {
        let Some(slot) = self.slots.get_mut(self.next) else {
            return;
        };
        if let Some(old) = slot.key.take() {
            self.index.remove(&old);
        }
        slot.bytes.clear();
        slot.bytes.extend_from_slice(bytes);
        slot.key = Some((ssrc, seq));
        slot.resends = 0;
        // A sender cannot protect the same index twice, so a key is only in the index once; an
        // older slot with the same (ssrc, seq) after a sequence wrap is simply superseded.
        if let Some(prev) = self.index.insert((ssrc, seq), self.next) {
            if let Some(s) = self.slots.get_mut(prev) {
                s.key = None;
            }
        }
        self.next = (self.next + 1) % self.slots.len();
    }

    /// The bytes to resend for `ssrc`/`seq`, if cached and not resent too often already.
    pub(crate) fn resend(&mut self, ssrc: u32, seq: u16) -> Option<&[u8]> {
        let i = *self.index.get(&(ssrc, seq))?;
        let slot = self.slots.get_mut(i)?;
        if slot.resends >= self.max_resends {
            return None;
        }
        slot.resends += 1;
        Some(&slot.bytes)
    }

    /// Forgets every packet of `ssrc` (its sender left).
    pub(crate) fn forget_ssrc(&mut self, ssrc: u32) {
        for slot in &mut self.slots {
            if slot.key.is_some_and(|(s, _)| s == ssrc) {
                if let Some(k) = slot.key.take() {
                    self.index.remove(&k);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_packets_and_bounds_resends() {
        let mut c = PacketCache::new(3, 2);
        for seq in 0..5u16 {
            c.insert(7, seq, &[seq as u8; 4]);
        }
        assert!(c.resend(7, 0).is_none());
        assert!(c.resend(7, 1).is_none());
        assert_eq!(c.resend(7, 2), Some(&[2u8; 4][..]));
        assert_eq!(c.resend(7, 2), Some(&[2u8; 4][..]));
        assert!(c.resend(7, 2).is_none(), "third resend refused");
        assert!(c.resend(8, 3).is_none());
        c.forget_ssrc(7);
        assert!(c.resend(7, 4).is_none());
        // Evicting a forgotten slot does not disturb others.
        c.insert(9, 1, &[1]);
        assert_eq!(c.resend(9, 1), Some(&[1u8][..]));
    }

    #[test]
    fn disabled_cache_holds_nothing() {
        let mut c = PacketCache::new(0, 2);
        c.insert(1, 1, &[1]);
        assert!(c.resend(1, 1).is_none());
    }
}

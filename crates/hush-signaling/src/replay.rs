//! Sans-IO replay and staleness filter for received signaling messages.

use std::collections::{HashSet, VecDeque};

use crate::device::DeviceId;
use crate::envelope::MessageId;
use crate::Error;

/// Remembers accepted `(sender, message id)` pairs for a time window and refuses repeats and
/// messages outside the window.
///
/// Memory is bounded by `capacity`: when full, the oldest entry is forgotten and the window's
/// lower edge moves past it, so a replay of a forgotten message is still refused (as stale).
/// Time comes in as an argument (`now_ms`, Unix milliseconds); the guard never reads a clock.
#[derive(Debug)]
pub struct ReplayGuard {
    max_age_ms: u64,
    max_skew_ms: u64,
    capacity: usize,
    seen: HashSet<(DeviceId, MessageId)>,
    order: VecDeque<((DeviceId, MessageId), u64)>,
    floor_ms: u64,
}

impl ReplayGuard {
    /// A guard accepting messages stamped at most `max_age_ms` in the past and `max_skew_ms`
    /// in the future, remembering at most `capacity` ids.
    pub fn new(max_age_ms: u64, max_skew_ms: u64, capacity: usize) -> Self {
        Self {
            max_age_ms,
            max_skew_ms,
            capacity: capacity.max(1),
            seen: HashSet::new(),
            order: VecDeque::new(),
            floor_ms: 0,
        }
    }

    /// Checks without recording: `Err(Stale)` or `Err(Replay)` if the message must be dropped.
    pub fn check(
        &mut self,
        now_ms: u64,
        sender: &DeviceId,
        id: &MessageId,
        timestamp_ms: u64,
    ) -> Result<(), Error> {
        let oldest = now_ms.saturating_sub(self.max_age_ms);
        self.expire(oldest);
        if timestamp_ms < oldest
            || timestamp_ms < self.floor_ms
            || timestamp_ms > now_ms.saturating_add(self.max_skew_ms)
        {
            return Err(Error::Stale);
        }
        if self.seen.contains(&(*sender, *id)) {
            return Err(Error::Replay);
        }
        Ok(())
    }

    /// Checks and, if accepted, records the message.
    pub fn accept(
        &mut self,
        now_ms: u64,
        sender: &DeviceId,
        id: &MessageId,
        timestamp_ms: u64,
    ) -> Result<(), Error> {
        self.check(now_ms, sender, id, timestamp_ms)?;
        self.seen.insert((*sender, *id));
        self.order.push_back(((*sender, *id), timestamp_ms));
        while self.order.len() > self.capacity {
            if let Some((key, ts)) = self.order.pop_front() {
                self.seen.remove(&key);
                self.floor_ms = self.floor_ms.max(ts.saturating_add(1));
            }
        }
        Ok(())
    }

    /// Ids currently remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn expire(&mut self, oldest: u64) {
        // Entries are in arrival order; timestamps are close to it. Expire from the front.
        while let Some(&(key, ts)) = self.order.front() {
            if ts >= oldest {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: DeviceId = DeviceId::from_bytes([1; 32]);
    const B: DeviceId = DeviceId::from_bytes([2; 32]);

    #[test]
    fn replay_and_window() {
        let mut g = ReplayGuard::new(1000, 100, 16);
        let now = 10_000;
        g.accept(now, &A, &[1; 16], now).unwrap();
        assert!(matches!(
            g.accept(now, &A, &[1; 16], now),
            Err(Error::Replay)
        ));
        // Same id from another sender is a different message.
        g.accept(now, &B, &[1; 16], now).unwrap();
        assert!(matches!(
            g.accept(now, &A, &[2; 16], now - 1001),
            Err(Error::Stale)
        ));
        assert!(matches!(
            g.accept(now, &A, &[2; 16], now + 101),
            Err(Error::Stale)
        ));
        // After the window passes, the remembered id is forgotten but its timestamp is stale.
        assert!(matches!(
            g.accept(now + 2000, &A, &[1; 16], now),
            Err(Error::Stale)
        ));
        assert!(g.is_empty());
    }

    proptest! {
        /// Whatever the capacity and order, a message id is accepted at most once.
        #[test]
        fn never_accepts_twice(ids in proptest::collection::vec(0u8..20, 1..200), cap in 1usize..10) {
            let mut g = ReplayGuard::new(1_000_000, 1_000, cap);
            let mut accepted = HashSet::new();
            for id in ids {
                // A replay repeats the whole message: same id, same timestamp.
                let ts = 999_900 + u64::from(id) * 3;
                if g.accept(1_000_000, &A, &[id; 16], ts).is_ok() {
                    prop_assert!(accepted.insert(id), "id {} accepted twice", id);
                }
            }
        }
    }
}

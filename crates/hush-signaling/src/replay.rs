//! Sans-IO replay and staleness filter for received signaling messages.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use crate::device::DeviceId;
use crate::envelope::MessageId;
use crate::Error;

/// Remembers accepted `(sender, message id)` pairs for a time window and refuses repeats and
/// messages outside the window.
///
/// Memory is bounded by `capacity`: when full, the oldest entry is forgotten and the window's
/// lower edge moves past it *for its sender only*, so a replay of a forgotten message is still
/// refused (as stale) while other senders are unaffected: a sender that stamps its messages in
/// the future (up to the allowed clock skew) can only make its own later messages stale.
///
/// The per-sender edges are bounded too (at most `capacity` senders): an edge at or below the
/// age window is dropped as useless, and when room is still needed the lowest edge is dropped
/// and folded into one edge for all senders. That shared edge only ever takes the lowest
/// per-sender edge, so pushing it into the future takes `capacity` distinct senders each
/// stamping in the future.
///
/// Time comes in as an argument (`now_ms`, Unix milliseconds); the guard never reads a clock.
#[derive(Debug)]
pub struct ReplayGuard {
    max_age_ms: u64,
    max_skew_ms: u64,
    capacity: usize,
    seen: HashSet<(DeviceId, MessageId)>,
    order: VecDeque<((DeviceId, MessageId), u64)>,
    /// Per sender: messages stamped below this were forgotten (evicted for room).
    floors: HashMap<DeviceId, u64>,
    /// The same edges ordered by value, to drop the lowest first.
    floors_by_value: BTreeSet<(u64, DeviceId)>,
    /// Edge for every sender: the highest per-sender edge dropped for room.
    floor_ms: u64,
}

impl ReplayGuard {
    /// A guard accepting messages stamped at most `max_age_ms` in the past and `max_skew_ms`
    /// in the future, remembering at most `capacity` ids (and at most `capacity` per-sender
    /// window edges).
    pub fn new(max_age_ms: u64, max_skew_ms: u64, capacity: usize) -> Self {
        Self {
            max_age_ms,
            max_skew_ms,
            capacity: capacity.max(1),
            seen: HashSet::new(),
            order: VecDeque::new(),
            floors: HashMap::new(),
            floors_by_value: BTreeSet::new(),
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
        let sender_floor = self.floors.get(sender).copied().unwrap_or(0);
        if timestamp_ms < oldest
            || timestamp_ms < self.floor_ms
            || timestamp_ms < sender_floor
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
            if let Some(((from, forgotten), ts)) = self.order.pop_front() {
                self.seen.remove(&(from, forgotten));
                self.raise_floor(from, ts.saturating_add(1));
            }
        }
        self.bound_floors(now_ms.saturating_sub(self.max_age_ms));
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

    /// Senders with a window edge of their own (at most the capacity).
    pub fn senders_with_floor(&self) -> usize {
        self.floors.len()
    }

    fn raise_floor(&mut self, sender: DeviceId, to: u64) {
        let old = self.floors.get(&sender).copied();
        if old.is_some_and(|f| f >= to) {
            return;
        }
        if let Some(f) = old {
            self.floors_by_value.remove(&(f, sender));
        }
        self.floors.insert(sender, to);
        self.floors_by_value.insert((to, sender));
    }

    /// Drops per-sender edges that no longer matter (at or below `oldest`, which refuses those
    /// messages anyway), then, while there are more than `capacity`, the lowest one, folding it
    /// into the edge for all senders.
    fn bound_floors(&mut self, oldest: u64) {
        while let Some(&(f, sender)) = self.floors_by_value.first() {
            if f > oldest && self.floors.len() <= self.capacity {
                break;
            }
            self.floors_by_value.pop_first();
            self.floors.remove(&sender);
            if f > oldest {
                self.floor_ms = self.floor_ms.max(f);
            }
        }
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

    /// One sender stamping its messages in the future (within the allowed skew) and filling
    /// the memory must not make another sender's messages stale: before the floor was kept per
    /// sender, B's message was refused as `Stale` here.
    #[test]
    fn future_stamps_of_one_sender_do_not_stale_others() {
        let mut g = ReplayGuard::new(1000, 100, 4);
        let now = 10_000;
        for i in 0..5u8 {
            g.accept(now, &A, &[i; 16], now + 100).unwrap();
        }
        // A's oldest message was forgotten: a replay of it is still refused.
        assert!(matches!(
            g.accept(now, &A, &[0; 16], now + 100),
            Err(Error::Stale)
        ));
        // B, stamping with the right time, is not affected.
        g.accept(now, &B, &[9; 16], now).unwrap();
        g.accept(now + 1, &B, &[10; 16], now + 1).unwrap();
        assert_eq!(g.senders_with_floor(), 1);
    }

    /// Per-sender edges stay bounded by the capacity, and edges below the age window go.
    #[test]
    fn sender_floors_are_bounded() {
        let mut g = ReplayGuard::new(1000, 100, 2);
        let now = 10_000;
        for s in 0..50u8 {
            let sender = DeviceId::from_bytes([s; 32]);
            g.accept(now, &sender, &[s; 16], now - 10 + u64::from(s))
                .unwrap();
            assert!(g.senders_with_floor() <= 2);
        }
        // A forgotten message of sender 0 is still refused.
        let zero = DeviceId::from_bytes([0; 32]);
        assert!(g.accept(now, &zero, &[0; 16], now - 10).is_err());
        // Once the window has passed every edge, all of them are dropped.
        g.accept(now + 2000, &A, &[1; 16], now + 2000).unwrap();
        assert_eq!(g.senders_with_floor(), 0);
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

        /// With several senders, any timestamps inside the window (future ones too) and any
        /// capacity, a message is accepted at most once and the per-sender edges stay bounded.
        #[test]
        fn never_accepts_twice_many_senders(
            msgs in proptest::collection::vec((0u8..6, 0u8..20), 1..300),
            cap in 1usize..8,
        ) {
            let mut g = ReplayGuard::new(1_000_000, 1_000, cap);
            let mut accepted = HashSet::new();
            for (sender, id) in msgs {
                let from = DeviceId::from_bytes([sender; 32]);
                // A replay repeats the whole message: the timestamp follows from (sender, id).
                // Some are stamped up to 930 ms in the future.
                let ts = 999_500 + u64::from(id) * 75 + u64::from(sender);
                if g.accept(1_000_000, &from, &[id; 16], ts).is_ok() {
                    prop_assert!(accepted.insert((sender, id)), "({}, {}) accepted twice", sender, id);
                }
                prop_assert!(g.senders_with_floor() <= cap);
            }
        }
    }
}

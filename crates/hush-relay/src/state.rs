//! State shared by all connections: who is online, and per-sender replay caches.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use hush_signaling::{DeviceId, MessageId};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;

/// An envelope for an online recipient: its delivery id and its encoded `Deliver` frame.
pub(crate) struct Live {
    pub(crate) id: u64,
    pub(crate) frame: Vec<u8>,
}

/// Why a connection was told to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kick {
    /// Its delivery queue overflowed (the device reads too slowly); it reconnects and reloads.
    SlowConsumer,
    /// The same device connected again.
    Replaced,
    /// The relay is shutting down.
    Shutdown,
}

/// An online device's connection, as seen from elsewhere.
pub(crate) struct ConnHandle {
    pub(crate) conn_id: u64,
    pub(crate) live: mpsc::Sender<Live>,
    /// Tells the connection to close, once (a oneshot: cheap for the connection to poll).
    pub(crate) kick: Mutex<Option<oneshot::Sender<Kick>>>,
}

impl ConnHandle {
    fn kick(&self, why: Kick) {
        if let Some(tx) = lock(&self.kick).take() {
            let _ = tx.send(why);
        }
    }
}

/// Online devices.
#[derive(Default)]
pub(crate) struct Registry {
    online: Mutex<HashMap<DeviceId, ConnHandle>>,
    /// Set at shutdown: connections registering later are told to close at once.
    closed: AtomicBool,
    /// Where slow consumers are counted.
    metrics: Arc<Metrics>,
}

impl Registry {
    /// An empty registry counting into `metrics`.
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            ..Self::default()
        }
    }

    /// Registers a connection; an older connection of the same device is told to close.
    pub(crate) fn register(&self, device: DeviceId, handle: ConnHandle) {
        let mut online = lock(&self.online);
        if self.closed.load(Ordering::SeqCst) {
            handle.kick(Kick::Shutdown);
            return;
        }
        if let Some(old) = online.insert(device, handle) {
            old.kick(Kick::Replaced);
        }
    }

    /// The id of `device`'s connection here, if it has one.
    #[cfg(feature = "cluster")]
    pub(crate) fn conn_id(&self, device: &DeviceId) -> Option<u64> {
        lock(&self.online).get(device).map(|h| h.conn_id)
    }

    /// Removes `device` if it is still registered by connection `conn_id`.
    pub(crate) fn unregister(&self, device: &DeviceId, conn_id: u64) {
        let mut online = lock(&self.online);
        if online.get(device).is_some_and(|h| h.conn_id == conn_id) {
            online.remove(device);
        }
    }

    /// Hands an envelope to its recipient's connection, if online and not connection `except`
    /// (which already has it); returns the connection it was queued to. A connection whose
    /// queue is full is closed: the envelope stays queued and is delivered on reconnect.
    pub(crate) fn push(
        &self,
        recipient: &DeviceId,
        live: Live,
        except: Option<u64>,
    ) -> Option<u64> {
        let mut online = lock(&self.online);
        let handle = online.get(recipient)?;
        if except == Some(handle.conn_id) {
            return None;
        }
        match handle.live.try_send(live) {
            Ok(()) => Some(handle.conn_id),
            Err(mpsc::error::TrySendError::Full(_)) => {
                handle.kick(Kick::SlowConsumer);
                self.metrics.slow_consumers.fetch_add(1, Ordering::Relaxed);
                online.remove(recipient);
                None
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                online.remove(recipient);
                None
            }
        }
    }

    /// Tells connection `conn_id` of `device` to close, if it is still the registered one.
    #[cfg_attr(
        not(feature = "cluster"),
        allow(dead_code, reason = "cluster fan-out only")
    )]
    pub(crate) fn kick_conn(&self, device: &DeviceId, conn_id: u64, why: Kick) {
        let mut online = lock(&self.online);
        if online.get(device).is_some_and(|h| h.conn_id == conn_id) {
            if let Some(h) = online.remove(device) {
                h.kick(why);
            }
        }
    }

    /// Tells every connection to close (shutdown).
    pub(crate) fn kick_all(&self) {
        let online = lock(&self.online);
        self.closed.store(true, Ordering::SeqCst);
        for h in online.values() {
            h.kick(Kick::Shutdown);
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means a task panicked while holding it; the maps stay consistent
    // (every critical section is a single insert/remove), so keep serving.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Why a sender's envelope was refused by the replay cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    Stale,
    Duplicate,
}

/// Recently accepted envelope ids of one sender, bounded in count and age.
#[derive(Debug, Default)]
pub(crate) struct RecentIds {
    set: HashSet<MessageId>,
    order: VecDeque<(MessageId, u64)>,
    /// Envelopes stamped before this (ms) are refused: their ids may have been evicted.
    floor_ms: u64,
}

impl RecentIds {
    /// Accepts `(id, timestamp)` once; refuses replays and envelopes outside the time window.
    pub(crate) fn check(
        &mut self,
        id: MessageId,
        timestamp_ms: u64,
        now_ms: u64,
        max_age_ms: u64,
        max_skew_ms: u64,
        capacity: usize,
    ) -> Result<(), Refused> {
        let oldest_ok = now_ms.saturating_sub(max_age_ms);
        if timestamp_ms < oldest_ok || timestamp_ms > now_ms.saturating_add(max_skew_ms) {
            return Err(Refused::Stale);
        }
        while let Some(&(old, ts)) = self.order.front() {
            if ts >= oldest_ok {
                break;
            }
            self.order.pop_front();
            self.set.remove(&old);
        }
        if timestamp_ms < self.floor_ms {
            return Err(Refused::Stale);
        }
        if !self.set.insert(id) {
            return Err(Refused::Duplicate);
        }
        self.order.push_back((id, timestamp_ms));
        while self.order.len() > capacity {
            if let Some((old, ts)) = self.order.pop_front() {
                self.set.remove(&old);
                self.floor_ms = self.floor_ms.max(ts.saturating_add(1));
            }
        }
        Ok(())
    }

    /// Whether every remembered id has aged out.
    pub(crate) fn is_expired(&self, now_ms: u64, max_age_ms: u64) -> bool {
        self.order
            .back()
            .is_none_or(|&(_, ts)| ts < now_ms.saturating_sub(max_age_ms))
    }
}

/// Each sender device's replay cache, shared by all its connections and kept after they end
/// until its ids age out. Shared rather than handed from one connection to the next: a device
/// that reconnects is served by its new connection while the old one may still be closing, and
/// both must refuse the same replays.
#[derive(Default)]
pub(crate) struct ReplayCaches {
    caches: Mutex<HashMap<DeviceId, Arc<Mutex<RecentIds>>>>,
}

impl ReplayCaches {
    /// The replay cache of `device` (created empty if it has none).
    pub(crate) fn of(&self, device: &DeviceId) -> Arc<Mutex<RecentIds>> {
        lock(&self.caches).entry(*device).or_default().clone()
    }

    /// A connection of `device` ended: forget caches that no connection holds and whose ids
    /// all aged out (amortised over the map).
    pub(crate) fn release(&self, device: &DeviceId, now_ms: u64, max_age_ms: u64) {
        let mut caches = lock(&self.caches);
        let unused_and_expired = |c: &Arc<Mutex<RecentIds>>| {
            Arc::strong_count(c) == 1 && lock(c).is_expired(now_ms, max_age_ms)
        };
        if caches.get(device).is_some_and(unused_and_expired) {
            caches.remove(device);
        }
        if caches.len() > 1024 && caches.len().is_power_of_two() {
            caches.retain(|_, c| !unused_and_expired(c));
        }
    }
}

/// One-time prekeys handed out per requesting device: a token bucket per device that holds
/// `per_minute` tokens and refills at `per_minute` a minute, shared by all the device's
/// connections (reconnecting does not refill it).
#[derive(Default)]
pub(crate) struct FetchQuotas {
    buckets: Mutex<HashMap<DeviceId, (f64, Instant)>>,
}

impl FetchQuotas {
    /// Takes one one-time prekey for `device` if its quota allows; `false` if it is used up.
    pub(crate) fn take(&self, device: &DeviceId, per_minute: u32, now: Instant) -> bool {
        let capacity = f64::from(per_minute);
        let rate = capacity / 60.0;
        let mut buckets = lock(&self.buckets);
        // Forget devices whose bucket refilled (amortised over the map): the map holds only
        // devices that fetched in the last minute or so.
        if buckets.len() >= 1024 && buckets.len().is_power_of_two() {
            buckets.retain(|_, (tokens, last)| {
                *tokens + now.saturating_duration_since(*last).as_secs_f64() * rate < capacity
            });
        }
        let (tokens, last) = buckets.entry(*device).or_insert((capacity, now));
        *tokens =
            (*tokens + now.saturating_duration_since(*last).as_secs_f64() * rate).min(capacity);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fetch_quota_is_per_device_and_refills() {
        let quotas = FetchQuotas::default();
        let (alice, bob) = (DeviceId::from_bytes([1; 32]), DeviceId::from_bytes([2; 32]));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(quotas.take(&alice, 3, t0));
        }
        assert!(!quotas.take(&alice, 3, t0), "used up");
        assert!(quotas.take(&bob, 3, t0), "another requester has its own");
        // 3 a minute: one more after 20 s.
        assert!(quotas.take(&alice, 3, t0 + Duration::from_secs(20)));
        assert!(!quotas.take(&alice, 3, t0 + Duration::from_secs(21)));
    }

    #[test]
    fn connections_of_one_device_share_its_replay_cache() {
        let caches = ReplayCaches::default();
        let device = DeviceId::from_bytes([7; 32]);
        let now = 1_000_000;
        let old_conn = caches.of(&device);
        // The new connection is served before the old one has finished closing.
        let new_conn = caches.of(&device);
        assert_eq!(
            lock(&old_conn).check([1; 16], now, now, 1000, 500, 8),
            Ok(())
        );
        assert_eq!(
            lock(&new_conn).check([1; 16], now, now, 1000, 500, 8),
            Err(Refused::Duplicate)
        );
        // Kept after both connections ended, until its ids age out.
        drop((old_conn, new_conn));
        caches.release(&device, now, 1000);
        assert_eq!(
            lock(&caches.of(&device)).check([1; 16], now, now, 1000, 500, 8),
            Err(Refused::Duplicate)
        );
        caches.release(&device, now + 2000, 1000);
        assert_eq!(
            lock(&caches.of(&device)).check([1; 16], now + 2000, now + 2000, 1000, 500, 8),
            Ok(())
        );
    }

    #[test]
    fn recent_ids_refuse_replays_and_stale() {
        let mut r = RecentIds::default();
        let now = 1_000_000;
        assert_eq!(r.check([1; 16], now, now, 1000, 500, 8), Ok(()));
        assert_eq!(
            r.check([1; 16], now, now, 1000, 500, 8),
            Err(Refused::Duplicate)
        );
        assert_eq!(
            r.check([2; 16], now - 1001, now, 1000, 500, 8),
            Err(Refused::Stale)
        );
        assert_eq!(
            r.check([3; 16], now + 501, now, 1000, 500, 8),
            Err(Refused::Stale)
        );
        assert_eq!(r.check([4; 16], now + 500, now, 1000, 500, 8), Ok(()));
    }

    #[test]
    fn recent_ids_capacity_raises_floor() {
        let mut r = RecentIds::default();
        let now = 1_000_000;
        for i in 0..4u8 {
            assert_eq!(
                r.check([i; 16], now + u64::from(i), now + 10, 1000, 500, 2),
                Ok(())
            );
        }
        // Ids 0 and 1 were evicted; their replay is refused as stale rather than accepted.
        assert_eq!(
            r.check([0; 16], now, now + 10, 1000, 500, 2),
            Err(Refused::Stale)
        );
        assert_eq!(
            r.check([1; 16], now + 1, now + 10, 1000, 500, 2),
            Err(Refused::Stale)
        );
    }
}

//! Accepted envelopes not yet written to SQLite, and the per-device queue bound.
//!
//! When a device sends an envelope, the relay admits it here (refusing it if the recipient's
//! queue is full), gives it a delivery id, and pushes it at once to the recipient's connection
//! if the recipient is online. The store thread writes an admitted envelope to SQLite only
//! once it has waited [`RelayConfig::commit_delay`](crate::RelayConfig::commit_delay) for it:
//!
//! - if the recipient acknowledges it first, it is dropped from here and never written, and
//!   the sender is answered at that moment (the recipient has it);
//! - otherwise the store thread takes it, inserts it, commits, and only then answers the
//!   sender. An envelope whose recipient was offline at admission cannot be acknowledged, so
//!   it is written at the next group commit without waiting.
//!
//! Either way the sender's answer ("accepted") comes only once the envelope is committed or
//! acknowledged by its recipient, so a crash loses nothing a sender was told was accepted. An
//! acknowledgement that arrives after the store thread took the envelope goes to the store
//! as a delete, which the store applies after the insert (one thread, in order).
//!
//! Queue bounds, checked at admission: the recipient must have published a bundle (an
//! envelope for a device nobody can reach would only fill the database), each sender may have
//! at most [`RelayConfig::max_queue_per_sender`](crate::RelayConfig::max_queue_per_sender)
//! envelopes queued for one recipient, and every recipient at most
//! [`RelayConfig::max_queue_per_device`](crate::RelayConfig::max_queue_per_device) in all. The
//! per-sender quota keeps one flooding sender from taking the whole queue, so other senders'
//! call offers still get through.
//!
//! Delivery ids are allocated here, in admission order. They start above both the largest id
//! in the database and the current time in microseconds, so ids handed out before a crash for
//! envelopes that were never written are not reused after a restart (unless the relay had
//! admitted more than one envelope per microsecond on average since it started).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hush_signaling::frame::encode_deliver_frame;
use hush_signaling::DeviceId;
use tokio::sync::{mpsc, Notify};

use crate::metrics::Metrics;
use crate::state::{lock, Live, Registry};
use crate::store::{InsertDone, StoreError};

/// An admitted envelope waiting for its recipient's acknowledgement or the store thread.
pub(crate) struct Entry {
    pub(crate) sender: DeviceId,
    pub(crate) recipient: DeviceId,
    /// The encoded envelope.
    pub(crate) envelope: Vec<u8>,
    /// The connection it was pushed to at admission, if any.
    pub(crate) pushed_to: Option<u64>,
    pub(crate) request_id: u64,
    pub(crate) received: Instant,
    /// Where the sender's answer goes.
    pub(crate) done: mpsc::UnboundedSender<InsertDone>,
}

impl Entry {
    /// Answers the sender.
    pub(crate) fn answer(self, result: Result<u64, StoreError>) {
        let _ = self.done.send(InsertDone {
            request_id: self.request_id,
            received: self.received,
            result,
        });
    }
}

struct Inner {
    /// Delivery id of `slots[0]`.
    base: u64,
    /// Admitted envelopes in admission (= id) order: slot `i` holds id `base + i`, `None` once
    /// acknowledged. The front slot is never `None` (settled slots are popped at once), so the
    /// front is the oldest entry still waiting.
    slots: VecDeque<Option<Entry>>,
    /// Unacknowledged envelopes per recipient: in SQLite or admitted here.
    depth: HashMap<DeviceId, u32>,
    /// The same per `(recipient, sender)` pair (rows stored before senders were recorded count
    /// only in `depth`).
    pairs: HashMap<(DeviceId, DeviceId), u32>,
    /// Devices that published a bundle: the only valid recipients.
    known: HashSet<DeviceId>,
    /// Entries whose recipient was offline at admission: nothing can acknowledge them, so
    /// they are written at the next group commit, without waiting for the delay.
    offline: usize,
}

impl Inner {
    fn slot(&mut self, id: u64) -> Option<&mut Option<Entry>> {
        let i = usize::try_from(id.checked_sub(self.base)?).ok()?;
        self.slots.get_mut(i)
    }

    fn pop_settled(&mut self) {
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
            self.base += 1;
        }
    }
}

/// See the module documentation.
pub(crate) struct Pending {
    inner: Mutex<Inner>,
    /// Wakes the store thread when an entry arrives in an empty table, or one for an offline
    /// recipient.
    wake: Notify,
    delay: Duration,
    limits: QueueLimits,
    metrics: Arc<Metrics>,
}

/// Queue bounds enforced at admission.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueLimits {
    /// Most envelopes queued for one recipient, all senders together.
    pub(crate) per_recipient: u32,
    /// Most envelopes one sender may have queued for one recipient.
    pub(crate) per_sender: u32,
}

/// What the database holds at startup.
#[derive(Default)]
pub(crate) struct Stored {
    /// Queued envelopes per recipient.
    pub(crate) depth: HashMap<DeviceId, u32>,
    /// Queued envelopes per `(recipient, sender)`.
    pub(crate) pairs: HashMap<(DeviceId, DeviceId), u32>,
    /// Devices with a bundle.
    pub(crate) known: HashSet<DeviceId>,
    /// Largest delivery id stored.
    pub(crate) max_id: u64,
}

/// What [`Pending::ack`] could not settle: ids the store must delete.
pub(crate) type Leftover = Vec<u64>;

impl Pending {
    /// Starts from what the database holds.
    pub(crate) fn new(
        stored: Stored,
        delay: Duration,
        limits: QueueLimits,
        metrics: Arc<Metrics>,
    ) -> Self {
        let Stored {
            depth,
            pairs,
            known,
            max_id,
        } = stored;
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let total: u64 = depth.values().map(|&n| u64::from(n)).sum();
        metrics.queue_depth.store(total, Ordering::Relaxed);
        Self {
            inner: Mutex::new(Inner {
                // SQLite rowids are i64.
                base: max_id
                    .saturating_add(1)
                    .max(now_us)
                    .min(i64::MAX as u64 / 2),
                slots: VecDeque::new(),
                depth,
                pairs,
                known,
                offline: 0,
            }),
            wake: Notify::new(),
            delay,
            limits,
            metrics,
        }
    }

    /// `device` published a bundle: envelopes for it are accepted from now on.
    pub(crate) fn add_known(&self, device: DeviceId) {
        lock(&self.inner).known.insert(device);
    }

    /// The delivery id the next admitted envelope gets: every envelope admitted so far has a
    /// smaller one.
    pub(crate) fn next_id(&self) -> u64 {
        let inner = lock(&self.inner);
        inner.base + inner.slots.len() as u64
    }

    /// Admits an envelope from `sender` for `recipient` and pushes it to the recipient's
    /// connection if it is online. Refuses it if the recipient has no bundle, if the sender
    /// used up its quota for this recipient, or if the recipient's queue is full.
    #[allow(
        clippy::too_many_arguments,
        reason = "one call site; the arguments are the envelope and where to answer"
    )]
    pub(crate) fn admit(
        &self,
        registry: &Registry,
        sender: DeviceId,
        recipient: DeviceId,
        envelope: Vec<u8>,
        request_id: u64,
        received: Instant,
        done: &mpsc::UnboundedSender<InsertDone>,
    ) -> Result<u64, StoreError> {
        let mut inner = lock(&self.inner);
        if !inner.known.contains(&recipient) {
            return Err(StoreError::UnknownRecipient);
        }
        if inner.pairs.get(&(recipient, sender)).copied().unwrap_or(0) >= self.limits.per_sender {
            return Err(StoreError::SenderQuota);
        }
        let count = inner.depth.entry(recipient).or_insert(0);
        if *count >= self.limits.per_recipient {
            return Err(StoreError::QueueFull);
        }
        *count += 1;
        *inner.pairs.entry((recipient, sender)).or_insert(0) += 1;
        let id = inner.base + inner.slots.len() as u64;
        // Pushed under the lock: an acknowledgement cannot overtake the entry.
        let frame = encode_deliver_frame(id, &envelope);
        let pushed_to = registry.push(&recipient, Live { id, frame }, None);
        let first = inner.slots.is_empty() || pushed_to.is_none();
        if pushed_to.is_none() {
            inner.offline += 1;
        }
        inner.slots.push_back(Some(Entry {
            sender,
            recipient,
            envelope,
            pushed_to,
            request_id,
            received,
            done: done.clone(),
        }));
        drop(inner);
        self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        if first {
            self.wake.notify_one();
        }
        Ok(id)
    }

    /// Settles `device`'s acknowledgements of envelopes still here (answering their senders);
    /// returns the ids the store must delete.
    pub(crate) fn ack(&self, device: &DeviceId, ids: Vec<u64>) -> Leftover {
        let mut leftover = Vec::new();
        let mut settled = Vec::new();
        {
            let mut inner = lock(&self.inner);
            for id in ids {
                match inner.slot(id) {
                    // Only the recipient may acknowledge an envelope.
                    Some(slot) if slot.as_ref().is_some_and(|e| e.recipient == *device) => {
                        if let Some(entry) = slot.take() {
                            if entry.pushed_to.is_none() {
                                // Delivered by a connection opened since (after its commit).
                                inner.offline -= 1;
                            }
                            settled.push((id, entry));
                        }
                    }
                    _ => leftover.push(id),
                }
            }
            if !settled.is_empty() {
                inner.pop_settled();
                for (_, entry) in &settled {
                    Self::release_locked(&mut inner, device, Some(&entry.sender), 1);
                }
            }
        }
        if !settled.is_empty() {
            self.metrics
                .queue_depth
                .fetch_sub(settled.len() as u64, Ordering::Relaxed);
            self.metrics
                .envelopes_unstored
                .fetch_add(settled.len() as u64, Ordering::Relaxed);
        }
        for (id, entry) in settled {
            entry.answer(Ok(id));
        }
        leftover
    }

    /// `n` envelopes from `sender` (`None`: not recorded) for `device` left the queue
    /// (deleted, expired, or never written).
    pub(crate) fn release(&self, device: &DeviceId, sender: Option<&DeviceId>, n: u32) {
        if n == 0 {
            return;
        }
        Self::release_locked(&mut lock(&self.inner), device, sender, n);
        self.metrics
            .queue_depth
            .fetch_sub(u64::from(n), Ordering::Relaxed);
    }

    fn release_locked(inner: &mut Inner, device: &DeviceId, sender: Option<&DeviceId>, n: u32) {
        if let Some(count) = inner.depth.get_mut(device) {
            *count = count.saturating_sub(n);
            if *count == 0 {
                inner.depth.remove(device);
            }
        }
        if let Some(sender) = sender {
            let key = (*device, *sender);
            if let Some(count) = inner.pairs.get_mut(&key) {
                *count = count.saturating_sub(n);
                if *count == 0 {
                    inner.pairs.remove(&key);
                }
            }
        }
    }

    /// When the oldest entry is due, if there is one.
    pub(crate) fn next_due(&self, now: Instant) -> Option<Instant> {
        let inner = lock(&self.inner);
        if inner.offline > 0 {
            return Some(now);
        }
        inner
            .slots
            .front()
            .and_then(|slot| slot.as_ref())
            .map(|e| e.received + self.delay)
    }

    /// Waits until an entry is admitted into an empty table (returns at once if one was
    /// admitted since the last call).
    pub(crate) async fn admitted(&self) {
        self.wake.notified().await;
    }

    /// Takes the entries due by `now` (all of them when `all`), in admission order.
    pub(crate) fn take_due(&self, now: Instant, all: bool) -> Vec<(u64, Entry)> {
        let mut inner = lock(&self.inner);
        let mut due = Vec::new();
        while let Some(front) = inner.slots.front() {
            if !all
                && front
                    .as_ref()
                    .is_some_and(|e| e.received + self.delay > now)
            {
                break;
            }
            let id = inner.base;
            if let Some(Some(entry)) = inner.slots.pop_front() {
                due.push((id, entry));
            }
            inner.base += 1;
            inner.pop_settled();
        }
        // Entries for offline recipients further back (admission times only grow, so no other
        // entry there is due yet).
        if inner.offline > 0 {
            let base = inner.base;
            for (i, slot) in inner.slots.iter_mut().enumerate() {
                if slot.as_ref().is_some_and(|e| e.pushed_to.is_none()) {
                    if let Some(entry) = slot.take() {
                        due.push((base + i as u64, entry));
                    }
                }
            }
            inner.pop_settled();
        }
        inner.offline -= due.iter().filter(|(_, e)| e.pushed_to.is_none()).count();
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(b: u8) -> DeviceId {
        DeviceId::from_slice(&[b; 32]).unwrap()
    }

    /// Registers a connection for `device`; returns its live-delivery queue.
    fn online(registry: &Registry, device: DeviceId) -> mpsc::Receiver<Live> {
        let (live, rx) = mpsc::channel(16);
        let (kick, _) = tokio::sync::oneshot::channel();
        registry.register(
            device,
            crate::state::ConnHandle {
                conn_id: 1,
                live,
                kick: Mutex::new(Some(kick)),
            },
        );
        rx
    }

    /// The sender of every envelope in these tests unless said otherwise.
    fn alice() -> DeviceId {
        device(9)
    }

    /// A table where devices 1 to 4 have bundles.
    fn with(stored: Stored, delay: Duration, per_recipient: u32, per_sender: u32) -> Pending {
        let mut stored = stored;
        stored.known.extend((1..=4).map(device));
        let limits = QueueLimits {
            per_recipient,
            per_sender,
        };
        Pending::new(stored, delay, limits, Arc::new(Metrics::default()))
    }

    fn pending(max_queue: u32) -> (Pending, Registry) {
        (
            with(
                Stored::default(),
                Duration::from_millis(20),
                max_queue,
                max_queue,
            ),
            Registry::default(),
        )
    }

    #[test]
    fn only_the_recipient_settles_and_the_sender_is_answered_then() {
        let (p, registry) = pending(10);
        let (bob, mallory) = (device(1), device(2));
        let mut bob_live = online(&registry, bob);
        let (done, mut answers) = mpsc::unbounded_channel();
        let now = Instant::now();
        let id = p
            .admit(&registry, alice(), bob, vec![1, 2, 3], 7, now, &done)
            .unwrap();
        assert!(answers.try_recv().is_err(), "not answered before ack");
        assert_eq!(bob_live.try_recv().unwrap().id, id, "pushed at admission");
        // Another device's acknowledgement settles nothing; it goes to the store (which
        // deletes only rows addressed to that device).
        assert_eq!(p.ack(&mallory, vec![id]), vec![id]);
        assert!(answers.try_recv().is_err());
        assert_eq!(p.ack(&bob, vec![id, id + 100]), vec![id + 100]);
        let answer = answers.try_recv().unwrap();
        assert_eq!((answer.request_id, answer.result.ok()), (7, Some(id)));
        // Settled: nothing left for the store, even long after the delay.
        assert!(p.take_due(now + Duration::from_secs(60), false).is_empty());
        assert_eq!(p.metrics.envelopes_unstored.load(Ordering::Relaxed), 1);
        assert_eq!(p.metrics.queue_depth.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn unacknowledged_envelopes_become_due_after_the_delay_in_order() {
        let (p, registry) = pending(10);
        let bob = device(1);
        let _bob_live = online(&registry, bob);
        let (done, mut answers) = mpsc::unbounded_channel();
        let t0 = Instant::now();
        let a = p
            .admit(&registry, alice(), bob, vec![1], 1, t0, &done)
            .unwrap();
        let b = p
            .admit(
                &registry,
                alice(),
                bob,
                vec![2],
                2,
                t0 + Duration::from_millis(5),
                &done,
            )
            .unwrap();
        assert!(b > a);
        assert_eq!(p.next_due(t0), Some(t0 + Duration::from_millis(20)));
        assert!(p.take_due(t0 + Duration::from_millis(19), false).is_empty());
        let due = p.take_due(t0 + Duration::from_millis(20), false);
        assert_eq!(due.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![a]);
        // Taken by the store: an acknowledgement now must go to the store as a delete.
        assert_eq!(p.ack(&bob, vec![a]), vec![a]);
        assert!(
            answers.try_recv().is_err(),
            "answered only after the commit"
        );
        let rest = p.take_due(t0, true);
        assert_eq!(rest.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![b]);
        assert_eq!(p.next_due(t0), None);
    }

    #[test]
    fn queue_bound_counts_admitted_and_stored_envelopes() {
        let bob = device(1);
        let p = with(
            Stored {
                depth: HashMap::from([(bob, 2)]),
                max_id: 41,
                ..Stored::default()
            },
            Duration::from_millis(20),
            3,
            3,
        );
        let registry = Registry::default();
        let (done, _answers) = mpsc::unbounded_channel();
        let now = Instant::now();
        let id = p
            .admit(&registry, alice(), bob, vec![1], 1, now, &done)
            .unwrap();
        assert!(id > 41, "ids start above the stored ones");
        assert!(matches!(
            p.admit(&registry, alice(), bob, vec![2], 2, now, &done),
            Err(StoreError::QueueFull)
        ));
        // Another recipient is unaffected; a delete frees a slot.
        assert!(p
            .admit(&registry, alice(), device(2), vec![3], 3, now, &done)
            .is_ok());
        p.release(&bob, None, 1);
        assert!(p
            .admit(&registry, alice(), bob, vec![4], 4, now, &done)
            .is_ok());
    }

    #[test]
    fn envelopes_for_offline_recipients_are_due_at_once() {
        let p = with(Stored::default(), Duration::from_secs(60), 10, 10);
        let registry = Registry::default();
        let (bob, carol) = (
            DeviceId::from_slice(&[1; 32]).unwrap(),
            DeviceId::from_slice(&[2; 32]).unwrap(),
        );
        let _bob_live = online(&registry, bob);
        let (done, _answers) = mpsc::unbounded_channel();
        let t0 = Instant::now();
        let waiting = p
            .admit(&registry, alice(), bob, vec![1], 1, t0, &done)
            .unwrap();
        let offline = p
            .admit(&registry, alice(), carol, vec![2], 2, t0, &done)
            .unwrap();
        // Carol is offline: nothing can acknowledge hers, so it is written at once; Bob's
        // waits for his acknowledgement.
        assert_eq!(p.next_due(t0), Some(t0));
        let due = p.take_due(t0, false);
        assert_eq!(
            due.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            vec![offline]
        );
        assert_eq!(p.next_due(t0), Some(t0 + Duration::from_secs(60)));
        assert!(p.ack(&bob, vec![waiting]).is_empty());
        assert_eq!(p.next_due(t0), None);
    }

    #[test]
    fn each_sender_has_a_quota_per_recipient_and_unknown_recipients_are_refused() {
        let p = with(Stored::default(), Duration::from_millis(20), 5, 2);
        let registry = Registry::default();
        let (bob, mallory, carol) = (device(1), device(7), device(8));
        let (done, _answers) = mpsc::unbounded_channel();
        let now = Instant::now();
        let admit = |from: DeviceId, to: DeviceId| {
            p.admit(&registry, from, to, vec![0], 1, now, &done)
                .map(|_| ())
        };
        // Mallory floods Bob: two accepted, then her quota for Bob is spent.
        assert!(admit(mallory, bob).is_ok());
        assert!(admit(mallory, bob).is_ok());
        assert!(matches!(admit(mallory, bob), Err(StoreError::SenderQuota)));
        // Alice and Carol still get through, up to Bob's total.
        assert!(admit(alice(), bob).is_ok());
        assert!(admit(carol, bob).is_ok());
        assert!(admit(carol, bob).is_ok());
        assert!(matches!(admit(alice(), bob), Err(StoreError::QueueFull)));
        // A device without a bundle receives nothing; once it has one it does.
        let dave = device(5);
        assert!(matches!(
            admit(alice(), dave),
            Err(StoreError::UnknownRecipient)
        ));
        p.add_known(dave);
        assert!(admit(alice(), dave).is_ok());
        // A delete of one of Mallory's envelopes gives her one slot back.
        p.release(&bob, Some(&mallory), 1);
        assert!(admit(mallory, bob).is_ok());
    }
}

//! A deterministic, sans-IO network simulator for one direction of a path.
//!
//! [`NetSim`] models a bottleneck with a rate cap and a drop-tail queue, then a lossy link
//! ([`LossModel`]: random or Gilbert–Elliott bursts), then propagation delay with jitter,
//! optional reordering and duplication. Everything is driven by the caller's virtual clock and
//! a seed, so a run replays exactly; nothing sleeps or reads the system clock.
//!
//! ```
//! use std::time::Duration;
//! use hush_media::sim::{LossModel, NetSim, SimConfig};
//! use hush_media::Instant;
//!
//! let config = SimConfig {
//!     delay: Duration::from_millis(20),
//!     loss: LossModel::Random(0.1),
//!     ..SimConfig::default()
//! };
//! let mut link: NetSim<Vec<u8>> = NetSim::new(config);
//! let t0 = Instant::now(); // only the caller reads a clock, once, as the virtual epoch
//! link.handle_packet(t0, vec![0; 100]);
//! // Jump the virtual clock to the next event instead of sleeping.
//! while let Some(at) = link.poll_timeout() {
//!     link.handle_timeout(at);
//!     while let Some(packet) = link.poll_transmit() {
//!         assert_eq!(packet.len(), 100);
//!     }
//! }
//! ```

#[cfg(any(test, feature = "call-sim"))]
pub mod call;
mod loss;
mod rng;

#[cfg(any(test, feature = "call-sim"))]
pub use call::{CallConfig, CallMetrics, CallSim, Wire};
pub use loss::LossModel;
pub use rng::SimRng;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use crate::Instant;
use loss::LossState;

/// Anything the simulator can carry: it only needs the size on the wire.
pub trait SimPacket {
    /// Size in bytes, as counted against the rate cap and queue.
    fn wire_size(&self) -> usize;
}

impl SimPacket for Vec<u8> {
    fn wire_size(&self) -> usize {
        self.len()
    }
}

impl<A> SimPacket for (A, Vec<u8>) {
    fn wire_size(&self) -> usize {
        self.1.len()
    }
}

/// Extra per-packet delay on top of the base delay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Jitter {
    /// No jitter.
    None,
    /// Uniform in `[0, max]`; its p95 is `0.95 * max`.
    Uniform(Duration),
    /// Exponential with this mean (a long tail); its p95 is `ln(20) * mean ≈ 3.0 * mean`.
    Exponential(Duration),
}

impl Jitter {
    /// The 95th percentile of the distribution.
    pub fn p95(&self) -> Duration {
        match *self {
            Self::None => Duration::ZERO,
            Self::Uniform(max) => max.mul_f64(0.95),
            Self::Exponential(mean) => mean.mul_f64(20f64.ln()),
        }
    }

    fn sample(&self, rng: &mut SimRng) -> Duration {
        match *self {
            Self::None => Duration::ZERO,
            Self::Uniform(max) => max.mul_f64(rng.next_f64()),
            Self::Exponential(mean) => {
                let u = 1.0 - rng.next_f64(); // (0, 1]
                mean.mul_f64(-u.ln()).min(mean * 20)
            }
        }
    }
}

/// Configuration of one direction of a simulated path.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Seed of the random choices (loss, jitter, duplication).
    pub seed: u64,
    /// Base one-way propagation delay.
    pub delay: Duration,
    /// Per-packet jitter added to the delay.
    pub jitter: Jitter,
    /// Whether jitter may reorder packets. If `false`, a packet never overtakes an earlier one
    /// (jitter then bunches packets up instead, as on a single queue).
    pub reorder: bool,
    /// Packet loss on the link.
    pub loss: LossModel,
    /// Probability that a delivered packet is delivered twice.
    pub duplicate: f64,
    /// Bottleneck rate in bits per second, or `None` for unlimited.
    pub rate_bps: Option<u64>,
    /// Drop-tail queue limit at the bottleneck, in bytes.
    pub queue_bytes: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            delay: Duration::from_millis(20),
            jitter: Jitter::None,
            reorder: false,
            loss: LossModel::None,
            duplicate: 0.0,
            rate_bps: None,
            queue_bytes: 64 * 1024,
        }
    }
}

/// Counters of what the simulator did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Packets handed in.
    pub sent: u64,
    /// Packets lost on the link.
    pub lost: u64,
    /// Packets dropped because the bottleneck queue was full.
    pub queue_dropped: u64,
    /// Extra copies made.
    pub duplicated: u64,
    /// Packets handed out (copies included).
    pub delivered: u64,
}

#[derive(Debug)]
struct InFlight<T> {
    at: Instant,
    order: u64,
    packet: T,
}

impl<T> PartialEq for InFlight<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl<T> Eq for InFlight<T> {}
impl<T> PartialOrd for InFlight<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for InFlight<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

/// One direction of a simulated network path. See the [module docs](self).
///
/// Inputs: [`handle_packet`](Self::handle_packet) and [`handle_timeout`](Self::handle_timeout);
/// outputs: [`poll_transmit`](Self::poll_transmit) (packets whose delivery time has come) and
/// [`poll_timeout`](Self::poll_timeout) (the next delivery time). Time must not go backwards.
#[derive(Debug)]
pub struct NetSim<T> {
    config: SimConfig,
    rng: SimRng,
    loss: LossState,
    /// Departure times and sizes of packets in the bottleneck queue.
    queue: VecDeque<(Instant, usize)>,
    queued_bytes: usize,
    link_free_at: Option<Instant>,
    last_delivery: Option<Instant>,
    in_flight: BinaryHeap<Reverse<InFlight<T>>>,
    ready: VecDeque<T>,
    order: u64,
    stats: SimStats,
}

impl<T: SimPacket + Clone> NetSim<T> {
    /// A simulator with `config`.
    pub fn new(config: SimConfig) -> Self {
        Self {
            rng: SimRng::new(config.seed),
            loss: LossState::new(config.loss),
            config,
            queue: VecDeque::new(),
            queued_bytes: 0,
            link_free_at: None,
            last_delivery: None,
            in_flight: BinaryHeap::new(),
            ready: VecDeque::new(),
            order: 0,
            stats: SimStats::default(),
        }
    }

    /// The current configuration.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Changes the bottleneck rate from now on (packets already queued keep their times).
    pub fn set_rate(&mut self, rate_bps: Option<u64>) {
        self.config.rate_bps = rate_bps;
    }

    /// Changes the bottleneck's queue size from now on (drop-tail above it; packets already
    /// queued stay).
    pub fn set_queue_bytes(&mut self, queue_bytes: usize) {
        self.config.queue_bytes = queue_bytes;
    }

    /// Changes the loss model from now on.
    pub fn set_loss(&mut self, loss: LossModel) {
        self.config.loss = loss;
        self.loss.set_model(loss);
    }

    /// What the simulator has done so far.
    pub fn stats(&self) -> SimStats {
        self.stats
    }

    /// Bytes waiting at the bottleneck at `now`.
    pub fn queued_bytes(&mut self, now: Instant) -> usize {
        self.drain_queue(now);
        self.queued_bytes
    }

    fn drain_queue(&mut self, now: Instant) {
        while let Some(&(dep, size)) = self.queue.front() {
            if dep > now {
                break;
            }
            self.queue.pop_front();
            self.queued_bytes -= size;
        }
    }

    /// Sends `packet` into the path at `now`.
    pub fn handle_packet(&mut self, now: Instant, packet: T) {
        self.stats.sent += 1;
        let size = packet.wire_size();
        let departure = match self.config.rate_bps {
            Some(rate) if rate > 0 => {
                self.drain_queue(now);
                if self.queued_bytes + size > self.config.queue_bytes {
                    self.stats.queue_dropped += 1;
                    return;
                }
                let start = self.link_free_at.map_or(now, |t| t.max(now));
                let tx = Duration::from_secs_f64(size as f64 * 8.0 / rate as f64);
                let dep = start + tx;
                self.link_free_at = Some(dep);
                self.queue.push_back((dep, size));
                self.queued_bytes += size;
                dep
            }
            _ => now,
        };
        if self.loss.lose(&mut self.rng) {
            self.stats.lost += 1;
            return;
        }
        let copies = if self.rng.chance(self.config.duplicate) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for i in 0..copies {
            let mut at = departure + self.config.delay + self.config.jitter.sample(&mut self.rng);
            if !self.config.reorder && i == 0 {
                if let Some(last) = self.last_delivery {
                    at = at.max(last);
                }
                self.last_delivery = Some(at);
            }
            self.order += 1;
            self.in_flight.push(Reverse(InFlight {
                at,
                order: self.order,
                packet: packet.clone(),
            }));
        }
    }

    /// Moves packets due at or before `now` to the output.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse(f)) = self.in_flight.peek() {
            if f.at > now {
                break;
            }
            if let Some(Reverse(f)) = self.in_flight.pop() {
                self.stats.delivered += 1;
                self.ready.push_back(f.packet);
            }
        }
    }

    /// The next delivered packet, if any.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<T> {
        self.ready.pop_front()
    }

    /// When the next packet is due, if any is in flight.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.in_flight.peek().map(|Reverse(f)| f.at)
    }
}

#[cfg(test)]
mod tests;

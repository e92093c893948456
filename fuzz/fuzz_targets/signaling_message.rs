//! What the client runs on every received envelope: `SignalingClient::process` (replay and
//! staleness pre-check, open, `Content::decode`, the envelope/content consistency checks, then
//! the replay guard). The sealer here hands the ciphertext back as the plaintext, so the fuzzer
//! writes the opened plaintext directly; opening real Signal ciphertext is `crypto_open`'s job.
//!
//! Input: records `ctl len_hi len_lo plaintext[len]`. The envelope's header is copied from the
//! plaintext when it decodes (else fixed values), then `ctl` may perturb it: bit 0 the id,
//! bit 1 the sender, bit 2 the timestamp, bit 3 the recipient; bits 4–7 move the clock forward
//! by that many seconds. One client with a small replay memory takes all records.
//! Property: nothing panics, what is accepted is inside the time window, and a message (sender,
//! id and timestamp: what a replay repeats) is never accepted twice.
#![no_main]

use std::collections::HashSet;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hush_signaling::{
    CiphertextKind, Content, DeviceId, Envelope, Error, MemoryNetwork, Sealed, Sealer,
    SignalingClient, SignalingConfig, WallClock,
};
use libfuzzer_sys::fuzz_target;

/// The receiving device (the seeds' content recipient).
const LOCAL: DeviceId = DeviceId::from_bytes([2; 32]);
/// The sending device (the seeds' content sender).
const PEER: DeviceId = DeviceId::from_bytes([1; 32]);

/// Opens by handing the ciphertext back.
struct PassThrough;

impl Sealer for PassThrough {
    async fn seal(&mut self, _: &DeviceId, plaintext: &[u8]) -> Result<Sealed, Error> {
        Ok(Sealed {
            kind: CiphertextKind::Signal,
            ciphertext: plaintext.to_vec(),
        })
    }

    async fn open(&mut self, _: &DeviceId, _: CiphertextKind, ct: &[u8]) -> Result<Vec<u8>, Error> {
        Ok(ct.to_vec())
    }
}

struct Clock(AtomicU64);

impl WallClock for Clock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Runs a future that never waits (the sealer above is ready at once).
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("process waited with a sealer that never waits"),
    }
}

fuzz_target!(|data: &[u8]| {
    let clock = Arc::new(Clock(AtomicU64::new(1_000)));
    let mut config = SignalingConfig::default();
    config.clock = clock.clone();
    config.replay_capacity = 4;
    let net = MemoryNetwork::new();
    let mut client = SignalingClient::with_config(net.endpoint(LOCAL), PassThrough, config);
    let mut accepted = HashSet::new();

    let mut rest = data;
    while let [ctl, hi, lo, r @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(r.len());
        let (plaintext, r) = r.split_at(len);
        rest = r;
        clock
            .0
            .fetch_add(u64::from(ctl >> 4) * 1_000, Ordering::Relaxed);
        let (mut id, mut sender, mut recipient, mut timestamp_ms) = match Content::decode(plaintext)
        {
            Ok(c) => (c.message_id, c.sender, c.recipient, c.timestamp_ms),
            Err(_) => ([0; 16], PEER, LOCAL, clock.now_ms()),
        };
        if ctl & 1 != 0 {
            id[0] ^= 1;
        }
        if ctl & 2 != 0 {
            sender = DeviceId::from_bytes([3; 32]);
        }
        if ctl & 4 != 0 {
            timestamp_ms = timestamp_ms.wrapping_add(1);
        }
        if ctl & 8 != 0 {
            recipient = DeviceId::from_bytes([4; 32]);
        }
        let envelope = Envelope {
            id,
            sender,
            recipient,
            timestamp_ms,
            kind: CiphertextKind::Signal,
            ciphertext: plaintext.to_vec(),
        };
        if let Ok(m) = ready(client.process(envelope)) {
            let content = Content::decode(plaintext).expect("accepted content decodes");
            assert_eq!(content.message, m.message);
            assert_eq!((m.from, m.id, m.sent_at_ms), (sender, id, timestamp_ms));
            assert_eq!(recipient, LOCAL);
            assert!(
                accepted.insert((m.from, m.id, m.sent_at_ms)),
                "message accepted twice"
            );
            // Within the default window: 120 s old at most, 30 s ahead at most.
            let now = clock.now_ms();
            assert!(m.sent_at_ms <= now + Duration::from_secs(30).as_millis() as u64);
            assert!(
                m.sent_at_ms >= now.saturating_sub(Duration::from_secs(120).as_millis() as u64)
            );
        }
    }
});

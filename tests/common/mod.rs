//! Shared setup for the end-to-end tests: two devices with a Signal session between them.
#![allow(dead_code)]

pub(crate) mod group;
pub(crate) mod sfu_core;

use std::time::Duration;

use hush::{CallEvent, Client, ClientConfig};
use hush_crypto::{Device, DeviceStore, MemoryBackend};
use hush_net::driver::Bind;
use hush_signaling::crypto::SignalSealer;
use hush_signaling::transport::FetchedBundle;
use hush_signaling::{MemoryNetwork, SignalingClient};

/// A fresh device identity wrapped for signaling.
pub(crate) fn sealer(signal_device_id: u8) -> SignalSealer<MemoryBackend> {
    let store = DeviceStore::create(MemoryBackend::new(), signal_device_id, &mut rand::rng())
        .expect("in-memory store");
    SignalSealer::new(Device::new(store))
}

/// `from` starts a Signal session with `to` from a bundle `to` publishes now (with a one-time
/// prekey), as if fetched from a relay.
pub(crate) fn start_session(
    from: &mut SignalSealer<MemoryBackend>,
    to: &mut SignalSealer<MemoryBackend>,
) {
    let material = to.publish(1, 1).expect("prekeys");
    from.start_session(&FetchedBundle {
        device: to.device_id(),
        bundle: material.bundle,
        one_time_prekey: material.one_time_prekeys.into_iter().next(),
    })
    .expect("session from bundle");
}

/// ICE on loopback only.
pub(crate) fn loopback_config() -> ClientConfig {
    let net = hush_net::Config::builder()
        .include_loopback(true)
        .build()
        .expect("valid ICE config");
    let mut config = ClientConfig::new(net);
    config.bind = Bind::Addresses(vec!["127.0.0.1".parse().expect("address")]);
    config
}

/// Alice and Bob on an in-memory signaling network; Alice has fetched Bob's bundle.
pub(crate) fn pair(config: ClientConfig) -> (Client, Client, MemoryNetwork) {
    let (mut clients, network) = devices(2, config);
    let bob = clients.pop().expect("two clients");
    let alice = clients.pop().expect("two clients");
    (alice, bob, network)
}

/// `n` devices on an in-memory signaling network; each has fetched the bundle of every device
/// after it, so device `i` can call any device `j > i` (and be called back once contacted).
pub(crate) fn devices(n: u8, config: ClientConfig) -> (Vec<Client>, MemoryNetwork) {
    devices_configured(n, |_| config.clone())
}

/// [`devices`], device `i` with the configuration `config(i)`.
pub(crate) fn devices_configured(
    n: u8,
    config: impl Fn(usize) -> ClientConfig,
) -> (Vec<Client>, MemoryNetwork) {
    let network = MemoryNetwork::new();
    let mut sealers: Vec<_> = (1..=n).map(sealer).collect();
    for j in 1..sealers.len() {
        let material = sealers[j].publish(usize::from(n), 1).expect("prekeys");
        let device = sealers[j].device_id();
        let mut one_time = material.one_time_prekeys.into_iter();
        for earlier in sealers.iter_mut().take(j) {
            let fetched = FetchedBundle {
                device,
                bundle: material.bundle.clone(),
                one_time_prekey: one_time.next(),
            };
            earlier
                .start_session(&fetched)
                .expect("session from bundle");
        }
    }
    let clients = sealers
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let endpoint = network.endpoint(s.device_id());
            let config = config(i);
            Client::builder(SignalingClient::new(endpoint, s), config.net.clone())
                .config(config)
                .build()
        })
        .collect();
    (clients, network)
}

/// The next incoming call, failing after `secs`.
pub(crate) async fn next_incoming(client: &Client, secs: u64) -> hush::IncomingCall {
    tokio::time::timeout(Duration::from_secs(secs), client.incoming())
        .await
        .expect("rings in time")
        .expect("client alive")
}

/// Waits for the call's end and returns why.
pub(crate) async fn ended(call: &hush::Call, secs: u64) -> hush::machine::EndReason {
    match wait_for(call, secs, |e| matches!(e, CallEvent::Ended(_))).await {
        CallEvent::Ended(reason) => reason,
        other => unreachable!("wait_for returned {other:?}"),
    }
}

/// Waits for an event matching `pred`, failing after `secs`.
pub(crate) async fn wait_for(
    call: &hush::Call,
    secs: u64,
    pred: impl Fn(&CallEvent) -> bool,
) -> CallEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let ev = tokio::time::timeout_at(deadline, call.next_event())
            .await
            .expect("event in time")
            .expect("client alive");
        if pred(&ev) {
            return ev;
        }
    }
}

/// 20 ms of a 440 Hz tone at 48 kHz, starting at frame `n`.
pub(crate) fn tone(n: u32) -> Vec<i16> {
    (0..960u32)
        .map(|i| {
            let t = f64::from(n * 960 + i) / 48_000.0;
            (8_000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16
        })
        .collect()
}

/// Alice calls Bob, Bob accepts; returns both calls once each side is connected.
pub(crate) async fn connect(alice: &Client, bob: &Client) -> (hush::Call, hush::Call) {
    let call = alice.call(bob.device_id()).await.expect("offer sent");
    let answered = next_incoming(bob, 10)
        .await
        .accept()
        .await
        .expect("accepted");
    wait_for(&call, 10, |e| matches!(e, CallEvent::Connected { .. })).await;
    wait_for(&answered, 10, |e| matches!(e, CallEvent::Connected { .. })).await;
    (call, answered)
}

/// What one side of a conversation heard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Heard {
    /// Frames decoded from a received packet (original, retransmission or redundant copy).
    pub(crate) decoded: u32,
    /// Frames rebuilt from in-band FEC.
    pub(crate) fec: u32,
    /// Frames concealed between two real frames (the tail after the peer stopped talking is
    /// silence, not loss, and is not counted).
    pub(crate) concealed: u32,
    trailing: u32,
}

impl Heard {
    /// Frames the listener heard as audio (decoded or rebuilt).
    pub(crate) fn playable(&self) -> u32 {
        self.decoded + self.fec
    }

    pub(crate) fn note(&mut self, source: hush::FrameSource) {
        if source == hush::FrameSource::Concealed {
            self.trailing += 1;
            return;
        }
        if self.playable() > 0 {
            self.concealed += self.trailing;
        }
        self.trailing = 0;
        match source {
            hush::FrameSource::Fec => self.fec += 1,
            _ => self.decoded += 1,
        }
    }
}

/// Both sides talk for `frames` 20 ms frames at microphone pace (then listen 600 ms more);
/// returns what `a` and `b` heard.
pub(crate) async fn converse(a: &hush::Call, b: &hush::Call, frames: u32) -> (Heard, Heard) {
    let (mut heard_a, mut heard_b) = (Heard::default(), Heard::default());
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    let end = tokio::time::Instant::now() + Duration::from_millis(u64::from(frames) * 20 + 600);
    let mut n = 0;
    loop {
        tokio::select! {
            _ = ticker.tick(), if n < frames => {
                a.send_audio(&tone(n)).expect("call live");
                b.send_audio(&tone(n)).expect("call live");
                n += 1;
            }
            f = a.recv_audio() => heard_a.note(f.expect("call live").source),
            f = b.recv_audio() => heard_b.note(f.expect("call live").source),
            () = tokio::time::sleep_until(end) => break,
        }
    }
    (heard_a, heard_b)
}

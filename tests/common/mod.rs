//! Shared setup for the end-to-end tests: two devices with a Signal session between them.
#![allow(dead_code)]

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
    let network = MemoryNetwork::new();
    let mut alice = sealer(1);
    let mut bob = sealer(2);
    let material = bob.publish(2, 1).expect("prekeys");
    let fetched = FetchedBundle {
        device: bob.device_id(),
        bundle: material.bundle,
        one_time_prekey: material.one_time_prekeys.into_iter().next(),
    };
    alice.start_session(&fetched).expect("session from bundle");
    let (a_id, b_id) = (alice.device_id(), bob.device_id());
    let alice = Client::builder(
        SignalingClient::new(network.endpoint(a_id), alice),
        config.net.clone(),
    )
    .config(config.clone())
    .build();
    let bob = Client::builder(
        SignalingClient::new(network.endpoint(b_id), bob),
        config.net.clone(),
    )
    .config(config)
    .build();
    (alice, bob, network)
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

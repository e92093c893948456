//! Key rotation time of a group call whose keys travel over the real hush relay (TCP on
//! loopback): from one member's leave to every remaining member holding every remaining
//! sender's new key, and to every remaining sender's frames on its new key at the SFU. A
//! measurement (printed; docs/benchmarks.md), checked only for the rotation happening.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::group::{info, invitation, joined_and_connected, sframe_key_id, wait_event};
use common::{loopback_config, sealer, tone};
use hush::{Client, GroupCall, GroupCallEvent};
use hush_media::rtp::RtpPacket;
use hush_relay::{Relay, RelayConfig};
use hush_sfu::join::SfuSigningKey;
use hush_sfu::server::{Server, ServerConfig};
use hush_sfu::{ForwardTap, SfuConfig};
use hush_signaling::transport::{RelayClient, RelayClientConfig};
use hush_signaling::SignalingClient;

type Tapped = Arc<Mutex<Vec<(Instant, Vec<u8>)>>>;

/// `n` clients on a relay at `addr`, each with a Signal session to each other (bundles
/// fetched from the relay).
async fn relay_devices(addr: std::net::SocketAddr, n: u8) -> Vec<Client> {
    let mut sealers: Vec<_> = (1..=n).map(sealer).collect();
    let mut transports = Vec::new();
    for s in &mut sealers {
        let relay = RelayClient::connect_tcp(addr, s.signer(), RelayClientConfig::default())
            .await
            .expect("authenticates");
        let material = s.publish(usize::from(n), 1).expect("prekeys");
        relay
            .upload_prekeys(material.bundle, material.one_time_prekeys, false)
            .await
            .expect("prekeys uploaded");
        transports.push(relay);
    }
    for j in 1..sealers.len() {
        let device = sealers[j].device_id();
        for i in 0..j {
            let fetched = transports[i].fetch_bundle(device).await.expect("bundle");
            sealers[i].start_session(&fetched).expect("session");
        }
    }
    let config = loopback_config();
    transports
        .into_iter()
        .zip(sealers)
        .map(|(t, s)| {
            Client::builder(SignalingClient::new(t, s), config.net.clone())
                .config(config.clone())
                .build()
        })
        .collect()
}

/// The generation in an SFrame header's key id (hush's KID layout).
fn generation(frame: &[u8]) -> Option<(u8, u16)> {
    let id = sframe_key_id(frame)?;
    Some((id.sender.0, id.generation))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_time_after_a_leave_over_the_relay() {
    let dir = std::env::temp_dir().join(format!(
        "hush-group-rotation-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let relay = Relay::bind(RelayConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.join("relay.db"),
    ))
    .await
    .unwrap();
    let relay_addr = relay.local_addr();
    let relay_task = tokio::spawn(async move {
        let _ = relay.serve().await;
    });
    let tapped: Tapped = Arc::new(Mutex::new(Vec::new()));
    let sink = tapped.clone();
    let mut config = ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    );
    config.sfu = SfuConfig {
        loudest_n: None,
        tap: Some(ForwardTap(Arc::new(move |p: &[u8]| {
            sink.lock().unwrap().push((Instant::now(), p.to_vec()));
        }))),
        ..SfuConfig::default()
    };
    let server = Server::start(config, SfuSigningKey::generate(&mut rand::rng()))
        .await
        .unwrap();

    let clients = relay_devices(relay_addr, 4).await;
    let others: Vec<_> = clients[1..].iter().map(Client::device_id).collect();
    let mut calls = vec![clients[0].group_call(info(&server), &others).await.unwrap()];
    let mut invites = Vec::new();
    for c in &clients[1..] {
        let invite = invitation(c).await;
        calls.push(c.join_group_call(&invite).await.unwrap());
        invites.push(invite);
    }
    for call in &calls {
        joined_and_connected(call, 3).await;
    }
    let mut calls: Vec<Arc<GroupCall>> = calls.into_iter().map(Arc::new).collect();
    // Everyone talks the whole time.
    let talking = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut speakers = Vec::new();
    for call in &calls[..3] {
        let call = call.clone();
        let talking = talking.clone();
        speakers.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_millis(20));
            let mut n = 0;
            while talking.load(std::sync::atomic::Ordering::Relaxed) {
                ticker.tick().await;
                let _ = call.send_audio(&tone(n));
                n += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut figures = Vec::new();
    for round in 0..5 {
        // Member 3 leaves (and comes back between rounds).
        let keys_before: Vec<u64> = {
            let mut v = Vec::new();
            for c in &calls[..3] {
                v.push(c.stats().await.unwrap().e2ee.keys_installed);
            }
            v
        };
        let mark = tapped.lock().unwrap().len();
        let left = Instant::now();
        calls[3].leave();
        // Until every remaining member has installed the two other remaining senders' new
        // keys (each arrives sealed over the relay).
        let mut keys_at = None;
        while keys_at.is_none() {
            let mut all = true;
            for (c, before) in calls[..3].iter().zip(&keys_before) {
                if c.stats().await.unwrap().e2ee.keys_installed < before + 2 {
                    all = false;
                }
            }
            if all {
                keys_at = Some(left.elapsed());
            } else {
                assert!(left.elapsed() < Duration::from_secs(10), "keys in time");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        // When each remaining sender's frames first came under a newer generation.
        let tap = tapped.lock().unwrap().clone();
        let mut first_new: std::collections::HashMap<u8, Instant> = Default::default();
        let mut old: std::collections::HashMap<u8, u16> = Default::default();
        for (_, p) in &tap[..mark] {
            if let Some((s, g)) = RtpPacket::parse(p)
                .ok()
                .and_then(|p| generation(&p.payload))
            {
                let e = old.entry(s).or_insert(0);
                *e = (*e).max(g);
            }
        }
        for (t, p) in &tap[mark..] {
            if let Some((s, g)) = RtpPacket::parse(p)
                .ok()
                .and_then(|p| generation(&p.payload))
            {
                if old.get(&s).is_some_and(|o| g > *o) {
                    first_new.entry(s).or_insert(*t);
                }
            }
        }
        assert_eq!(first_new.len(), 3, "round {round}: {first_new:?}");
        let senders_at = first_new.values().map(|t| *t - left).max().unwrap();
        let keys_at = keys_at.unwrap();
        println!(
            "rotation round {round}: all senders on the new key at the SFU after {:.1} ms; \
             all remaining members hold all new keys after {:.1} ms",
            senders_at.as_secs_f64() * 1e3,
            keys_at.as_secs_f64() * 1e3
        );
        figures.push((senders_at, keys_at));
        // Member 3 comes back for the next round.
        let back = clients[3].join_group_call(&invites[2]).await.unwrap();
        joined_and_connected(&back, 3).await;
        let three = clients[3].device_id();
        for c in &calls[..3] {
            wait_event(c, |e| *e == GroupCallEvent::ParticipantJoined(three)).await;
        }
        calls[3] = Arc::new(back);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    println!(
        "rotation over the relay, median of {}: senders {:.1} ms, keys {:.1} ms",
        figures.len(),
        median(figures.iter().map(|f| f.0).collect()).as_secs_f64() * 1e3,
        median(figures.iter().map(|f| f.1).collect()).as_secs_f64() * 1e3
    );
    talking.store(false, std::sync::atomic::Ordering::Relaxed);
    for s in speakers {
        let _ = s.await;
    }
    drop(calls);
    server.shutdown().await;
    relay_task.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

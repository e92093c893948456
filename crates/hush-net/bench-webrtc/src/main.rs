//! Reference for hush-net's `connect_time` bench: webrtc-rs 0.21 `PeerConnection` on loopback.
//!
//! Two peer connections (one data channel, so DTLS and SCTP run too) exchange a complete offer
//! and answer in-process. The clock starts when the offerer applies the answer, the point where
//! both sides have each other's candidates, and stops at ICE `connected` on both sides (the
//! counterpart of hush-net's selected pair) and at peer-connection `connected` (after DTLS).
//!
//! Env: `RUNS` (default 30); `TURN=IP:PORT TURN_USER=.. TURN_PASS=..` adds a relay-only row.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use webrtc::peer_connection::*;
use webrtc::runtime::default_runtime;

struct Handler {
    tx: mpsc::UnboundedSender<(&'static str, Instant)>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, s: RTCIceGatheringState) {
        if s == RTCIceGatheringState::Complete {
            let _ = self.tx.send(("gathered", Instant::now()));
        }
    }
    async fn on_ice_connection_state_change(&self, s: RTCIceConnectionState) {
        if s == RTCIceConnectionState::Connected {
            let _ = self.tx.send(("ice", Instant::now()));
        }
    }
    async fn on_connection_state_change(&self, s: RTCPeerConnectionState) {
        if s == RTCPeerConnectionState::Connected {
            let _ = self.tx.send(("pc", Instant::now()));
        }
    }
}

async fn wait(rx: &mut mpsc::UnboundedReceiver<(&'static str, Instant)>, what: &str) -> Instant {
    loop {
        let (w, t) = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("timeout")
            .expect("closed");
        if w == what {
            return t;
        }
    }
}

fn config(turn: &Option<(String, String, String)>) -> RTCConfiguration {
    match turn {
        None => RTCConfigurationBuilder::new().build(),
        Some((addr, user, pass)) => RTCConfigurationBuilder::new()
            .with_ice_transport_policy(RTCIceTransportPolicy::Relay)
            .with_ice_servers(vec![RTCIceServer {
                urls: vec![format!("turn:{addr}?transport=udp")],
                username: user.clone(),
                credential: pass.clone(),
            }])
            .build(),
    }
}

async fn once(turn: &Option<(String, String, String)>) -> (Duration, Duration) {
    let rt = default_runtime().expect("runtime");
    let (otx, mut orx) = mpsc::unbounded_channel();
    let (atx, mut arx) = mpsc::unbounded_channel();
    let offerer = PeerConnectionBuilder::new()
        .with_configuration(config(turn))
        .with_handler(Arc::new(Handler { tx: otx }))
        .with_runtime(rt.clone())
        .with_udp_addrs(vec!["127.0.0.1:0".to_string()])
        .build()
        .await
        .expect("offerer");
    let _dc = offerer
        .create_data_channel("bench", None)
        .await
        .expect("dc");
    let offer = offerer.create_offer(None).await.expect("offer");
    offerer.set_local_description(offer).await.expect("local");
    wait(&mut orx, "gathered").await;
    let offer = offerer.local_description().await.expect("offer sdp");
    let answerer = PeerConnectionBuilder::new()
        .with_configuration(config(turn))
        .with_handler(Arc::new(Handler { tx: atx }))
        .with_runtime(rt)
        .with_udp_addrs(vec!["127.0.0.1:0".to_string()])
        .build()
        .await
        .expect("answerer");
    answerer
        .set_remote_description(offer)
        .await
        .expect("remote");
    let answer = answerer.create_answer(None).await.expect("answer");
    answerer.set_local_description(answer).await.expect("local");
    wait(&mut arx, "gathered").await;
    let answer = answerer.local_description().await.expect("answer sdp");
    let t0 = Instant::now();
    offerer
        .set_remote_description(answer)
        .await
        .expect("remote");
    let (oi, ai) = (wait(&mut orx, "ice").await, wait(&mut arx, "ice").await);
    let (op, ap) = (wait(&mut orx, "pc").await, wait(&mut arx, "pc").await);
    let ice = oi.max(ai).saturating_duration_since(t0);
    let pc = op.max(ap).saturating_duration_since(t0);
    let _ = offerer.close().await;
    let _ = answerer.close().await;
    (ice, pc)
}

fn report(name: &str, mut v: Vec<Duration>) {
    v.sort();
    println!(
        "{name:<40} n={:<3} median={:>8.2} ms  min={:>8.2} ms  max={:>8.2} ms",
        v.len(),
        v[v.len() / 2].as_secs_f64() * 1e3,
        v[0].as_secs_f64() * 1e3,
        v[v.len() - 1].as_secs_f64() * 1e3
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let turn = std::env::var("TURN").ok().map(|a| {
        (
            a,
            std::env::var("TURN_USER").unwrap_or_default(),
            std::env::var("TURN_PASS").unwrap_or_default(),
        )
    });
    let mut rows = vec![None];
    if turn.is_some() {
        rows.push(turn);
    }
    for t in rows {
        let label = if t.is_some() {
            "relay (TURN, relay policy)"
        } else {
            "host (loopback)"
        };
        let (mut ice, mut pc) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let (i, p) = once(&t).await;
            ice.push(i);
            pc.push(p);
        }
        report(&format!("webrtc-rs {label}: ICE connected"), ice);
        report(&format!("webrtc-rs {label}: PC connected"), pc);
    }
}

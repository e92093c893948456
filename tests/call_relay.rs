//! Calls through real servers: the hush relay over TCP for signaling, and coturn for media
//! when the devices hide their addresses (relay-only policy).

mod common;

use common::{connect, converse, ended, loopback_config, sealer, wait_for};
use hush::{CallEvent, Client, ClientConfig};
use hush_net::{CandidateKind, Policy, TurnCredentials};
use hush_relay::{Relay, RelayConfig};
use hush_signaling::transport::{RelayClient, RelayClientConfig};
use hush_signaling::SignalingClient;
use hush_testkit::coturn::{coturn_present, coturn_tls_present, Auth, Coturn};

/// A relay on loopback with its database in a scratch directory, removed on drop.
struct LocalRelay {
    addr: std::net::SocketAddr,
    dir: std::path::PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl LocalRelay {
    async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "hush-call-relay-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let relay = Relay::bind(RelayConfig::new(
            "127.0.0.1:0".parse().expect("address"),
            dir.join("relay.db"),
        ))
        .await
        .expect("relay binds");
        let addr = relay.local_addr();
        let task = tokio::spawn(async move {
            let _ = relay.serve().await;
        });
        Self { addr, dir, task }
    }
}

impl Drop for LocalRelay {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Alice and Bob connected to the relay over TCP; Bob published prekeys, Alice fetched his
/// bundle from the relay and started a session.
async fn relay_pair(relay: &LocalRelay, config: &ClientConfig) -> (Client, Client) {
    let mut alice = sealer(1);
    let mut bob = sealer(2);
    let bob_relay =
        RelayClient::connect_tcp(relay.addr, bob.signer(), RelayClientConfig::default())
            .await
            .expect("bob authenticates");
    let material = bob.publish(2, 1).expect("prekeys");
    bob_relay
        .upload_prekeys(material.bundle, material.one_time_prekeys, false)
        .await
        .expect("prekeys uploaded");
    let alice_relay =
        RelayClient::connect_tcp(relay.addr, alice.signer(), RelayClientConfig::default())
            .await
            .expect("alice authenticates");
    // Alice publishes hers too: the relay accepts envelopes only for devices that did.
    let material = alice.publish(1, 1).expect("prekeys");
    alice_relay
        .upload_prekeys(material.bundle, material.one_time_prekeys, false)
        .await
        .expect("prekeys uploaded");
    let fetched = alice_relay
        .fetch_bundle(bob.device_id())
        .await
        .expect("bundle fetched");
    alice.start_session(&fetched).expect("session");
    let client = |transport, sealer| {
        Client::builder(SignalingClient::new(transport, sealer), config.net.clone())
            .config(config.clone())
            .build()
    };
    (client(alice_relay, alice), client(bob_relay, bob))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_over_the_real_relay_carries_audio_both_ways() {
    let relay = LocalRelay::start().await;
    let (alice, bob) = relay_pair(&relay, &loopback_config()).await;
    let (call, answered) = connect(&alice, &bob).await;
    let (heard_alice, heard_bob) = converse(&call, &answered, 50).await;
    assert!(
        heard_alice.playable() >= 45 && heard_bob.playable() >= 45,
        "alice {heard_alice:?}, bob {heard_bob:?}"
    );
    let stats = answered.stats().await.expect("stats");
    assert_eq!(stats.path, Some(CandidateKind::Host));
    assert_eq!(stats.media.srtp_failures, 0);
    answered.hangup().expect("hangup");
    assert_eq!(
        ended(&call, 5).await,
        hush::machine::EndReason::RemoteHangup(hush::machine::HangupReason::Normal)
    );
}

/// A relay-only call through coturn over `transport`: both devices gather only relay
/// candidates, so neither learns the other's address, and the media path is `relay`.
async fn relay_only_call(turn: &Coturn, url: String, roots: Option<hush_net::TlsRoots>) {
    let mut net = hush_net::Config::builder()
        .include_loopback(true)
        .policy(Policy::RelayOnly)
        .turn_url(
            &url,
            TurnCredentials::long_term(hush_testkit::coturn::USER, hush_testkit::coturn::PASSWORD),
        )
        .expect("TURN url");
    if let Some(roots) = roots {
        net = net.turn_tls_roots(roots);
    }
    let mut config = loopback_config();
    config.net = net.build().expect("ICE config");
    let (alice, bob, _network) = common::pair(config);
    let (call, answered) = connect(&alice, &bob).await;
    // 2 s each way. Through TURN over TCP/TLS a stalled segment delays the ones behind it, and
    // the tests of this binary run side by side: ask for 90 % of the frames, not all.
    let (heard_alice, heard_bob) = converse(&call, &answered, 100).await;
    assert!(
        heard_alice.playable() >= 90 && heard_bob.playable() >= 90,
        "{url}: alice {heard_alice:?}, bob {heard_bob:?}; coturn log:\n{}",
        turn.log_text()
    );
    for c in [&call, &answered] {
        let stats = c.stats().await.expect("stats");
        assert_eq!(stats.path, Some(CandidateKind::Relay), "{url}");
    }
    call.hangup().expect("hangup");
    wait_for(&answered, 5, |e| matches!(e, CallEvent::Ended(_))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_call_goes_through_coturn_over_udp_and_tcp() {
    if !hush_testkit::system_component("coturn (turnserver)", coturn_present()) {
        return;
    }
    let turn = Coturn::builder(Auth::long_term()).tcp(true).start();
    relay_only_call(&turn, format!("turn:{}", turn.udp_addr()), None).await;
    let tcp = turn.tcp_addr().expect("TCP listener");
    relay_only_call(&turn, format!("turn:{tcp}?transport=tcp"), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_call_goes_through_coturn_over_tls() {
    if !hush_testkit::system_component(
        "coturn with TLS (turnserver, openssl)",
        coturn_tls_present(),
    ) {
        return;
    }
    let turn = Coturn::builder(Auth::long_term()).tls(true).start();
    let tls = turn.tls_addr().expect("TLS listener");
    let cert = turn.tls_cert_der().expect("certificate").to_vec();
    let roots = hush_net::TlsRoots::Custom(vec![cert]);
    relay_only_call(&turn, format!("turns:{tls}"), Some(roots)).await;
}

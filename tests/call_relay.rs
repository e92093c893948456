//! Calls through real servers: the hush relay over TCP for signaling, and coturn for media
//! when the devices hide their addresses (relay-only policy).

mod common;

use common::{connect, converse, ended, loopback_config, sealer, wait_for};
use hush::{CallEvent, Client, ClientConfig};
use hush_net::{CandidateKind, Policy, TurnCredentials};
use hush_relay::{Relay, RelayConfig, TurnConfig};
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
        Self::start_with(None).await
    }

    /// A relay that hands out short-lived TURN credentials with `turn`.
    async fn start_with(turn: Option<TurnConfig>) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "hush-call-relay-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let mut config = RelayConfig::new(
            "127.0.0.1:0".parse().expect("address"),
            dir.join("relay.db"),
        );
        config.turn = turn;
        let relay = Relay::bind(config).await.expect("relay binds");
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

/// The app configures no TURN password: the relay hands each device short-lived credentials
/// (TURN REST scheme) for a coturn sharing its secret, the clients fetch them themselves before
/// each call, and a relay-only call goes through coturn. Once the credentials have expired
/// coturn refuses them, and a second call still works because the clients fetched new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_call_with_short_lived_turn_credentials_from_the_relay() {
    if !hush_testkit::system_component("coturn (turnserver)", coturn_present()) {
        return;
    }
    let secret = format!("{:032x}", rand::random::<u128>());
    let turn = Coturn::start(Auth::Rest {
        secret: secret.clone(),
    });
    let ttl = std::time::Duration::from_secs(4);
    let urls = vec![format!("turn:{}", turn.udp_addr())];
    let relay = LocalRelay::start_with(Some(
        TurnConfig::new(secret.as_bytes(), urls, ttl).expect("TURN settings"),
    ))
    .await;
    let mut config = loopback_config();
    config.net = hush_net::Config::builder()
        .include_loopback(true)
        .policy(Policy::RelayOnly)
        .turn_provided_later(true)
        .build()
        .expect("relay-only without a static TURN server");
    let (alice, bob) = relay_pair(&relay, &config).await;
    // A grant for a third device, taken after Alice's and Bob's first ones: once it has
    // expired, so have theirs.
    let carol = sealer(3);
    let carol_relay =
        RelayClient::connect_tcp(relay.addr, carol.signer(), RelayClientConfig::default())
            .await
            .expect("carol authenticates");
    let old = carol_relay.turn_credentials().await.expect("a grant");

    for round in 0..2 {
        let (call, answered) = connect(&alice, &bob).await;
        let (heard_alice, heard_bob) = converse(&call, &answered, 25).await;
        assert!(
            heard_alice.playable() >= 20 && heard_bob.playable() >= 20,
            "round {round}: alice {heard_alice:?}, bob {heard_bob:?}; coturn log:\n{}",
            turn.log_text()
        );
        for c in [&call, &answered] {
            let stats = c.stats().await.expect("stats");
            assert_eq!(stats.path, Some(CandidateKind::Relay), "round {round}");
        }
        call.hangup().expect("hangup");
        wait_for(&answered, 5, |e| matches!(e, CallEvent::Ended(_))).await;
        if round == 0 {
            // Past the expiry of every grant fetched before the first call.
            let left = old.remaining(std::time::SystemTime::now());
            tokio::time::sleep(left + std::time::Duration::from_millis(1100)).await;
            expired_grant_is_refused(&turn, &old).await;
        }
    }
}

/// Allocating on coturn with an expired grant fails with a typed authentication error.
async fn expired_grant_is_refused(turn: &Coturn, old: &hush_signaling::transport::TurnGrant) {
    let net = hush_net::Config::builder()
        .include_loopback(true)
        .policy(Policy::RelayOnly)
        .turn_server(
            turn.udp_addr(),
            TurnCredentials::long_term(&old.username, old.password.as_str()),
        )
        .build()
        .expect("ICE config");
    let bind = hush_net::driver::Bind::Addresses(vec!["127.0.0.1".parse().expect("address")]);
    let mut started = hush_net::driver::start(net, hush_net::Role::Controlling, bind)
        .await
        .expect("driver starts");
    let refused = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(event) = started.events.recv().await {
            if let hush_net::Event::ServerError(e) = event {
                return Some(e);
            }
        }
        None
    })
    .await
    .expect("an answer from coturn, not a hang")
    .expect("a server error event");
    assert!(
        matches!(refused, hush_net::Error::TurnAuthFailed { server } if server == turn.udp_addr()),
        "{refused:?}; coturn log:\n{}",
        turn.log_text()
    );
}

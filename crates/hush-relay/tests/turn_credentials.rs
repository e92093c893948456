//! Short-lived TURN credentials over a real relay connection: an authenticated device asks and
//! gets a username naming itself and the expiry, with the coturn REST password; a relay
//! without TURN says so with a typed error. The call through coturn with these credentials is
//! in the facade's tests (`tests/call_relay.rs`).

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{connect, metric, registered_key, scrape, start_relay, test_config, TempDir, Wire};
use hush_relay::turn::rest_password;
use hush_relay::TurnConfig;
use hush_signaling::proto::relay::ErrorCode;
use hush_signaling::transport::Transport as _;
use hush_signaling::{DeviceSigner as _, Error};

const SECRET: &[u8] = b"shared-with-coturn";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_device_gets_time_limited_credentials() {
    let dir = TempDir::new("turn");
    let mut config = test_config(dir.path());
    let urls = vec![
        "turn:192.0.2.1:3478".to_string(),
        "turns:192.0.2.1:5349".to_string(),
    ];
    config.turn = Some(TurnConfig::new(SECRET, urls.clone(), Duration::from_secs(600)).unwrap());
    let (addr, metrics, _shutdown) = start_relay(config).await;
    let key = registered_key(addr).await;
    for wire in [Wire::Tcp, Wire::Ws] {
        let client = connect(wire, addr, &key).await;
        let before = SystemTime::now();
        let grant = client.turn_credentials().await.expect("credentials");
        let (expiry, device) = grant.username.split_once(':').expect("expiry:device");
        assert_eq!(device, key.device_id().to_hex(), "{wire:?}");
        let expiry: u64 = expiry.parse().unwrap();
        assert_eq!(grant.expires, UNIX_EPOCH + Duration::from_secs(expiry));
        let lifetime = grant.remaining(before);
        assert!(
            (Duration::from_secs(599)..=Duration::from_secs(601)).contains(&lifetime),
            "{lifetime:?}"
        );
        assert_eq!(*grant.password, rest_password(SECRET, &grant.username));
        assert_eq!(grant.urls, urls);
        // The same through the Transport hook the facade uses.
        let source = client
            .turn_source()
            .expect("a relay connection is a TURN source");
        let again = source.fetch().await.expect("credentials");
        assert_eq!(*again.password, rest_password(SECRET, &again.username));
    }
    assert_eq!(
        metric(&scrape(metrics).await, "hush_relay_turn_grants_total"),
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_without_turn_answers_turn_unavailable() {
    let dir = TempDir::new("no-turn");
    let (addr, _metrics, _shutdown) = start_relay(test_config(dir.path())).await;
    let key = registered_key(addr).await;
    let client = connect(Wire::Tcp, addr, &key).await;
    match client.turn_credentials().await {
        Err(Error::Relay { code, .. }) => assert_eq!(code, ErrorCode::TurnUnavailable),
        other => panic!("expected TURN_UNAVAILABLE, got {other:?}"),
    }
    // The connection stays usable.
    client.ping().await.expect("still connected");
}

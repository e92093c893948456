//! Real UDP sockets on loopback: host path, and relay through a real coturn.

mod common;

use std::time::Duration;

use common::nodes::{loopback, pair, Seen};
use common::{coturn_present, Auth, Coturn};
use hush_net::{CandidateKind, Config, Error, Policy, TurnCredentials};

const T: Duration = Duration::from_secs(10);

fn media(i: u8) -> Vec<u8> {
    let mut v = vec![0x80, 0x60, 0, i];
    v.extend((0..100u8).map(|x| x.wrapping_mul(i)));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_path_on_loopback_carries_datagrams_unchanged() {
    let cfg = || Config::builder().include_loopback(true).build().unwrap();
    let (mut a, mut b) = pair(cfg(), cfg(), loopback()).await;
    let pa = a.path(T).await.expect("A selects a path");
    let pb = b.path(T).await.expect("B selects a path");
    assert_eq!(pa.kind, CandidateKind::Host);
    assert_eq!(pb.kind, CandidateKind::Host);
    for i in 0..50 {
        a.handle.send(media(i)).unwrap();
    }
    for i in 0..50 {
        assert_eq!(b.recv(T).await.expect("datagram"), media(i));
    }
    b.handle.send(vec![0x81, 0xC8, 0, 1]).unwrap();
    assert_eq!(a.recv(T).await.unwrap(), vec![0x81, 0xC8, 0, 1]);
    let p = a.handle.path().await.unwrap().unwrap();
    assert!(p.rtt.is_some(), "RTT measured: {p:?}");
    a.handle.close().await.unwrap();
}

fn relay_cfg(turn: std::net::SocketAddr, creds: TurnCredentials) -> Config {
    Config::builder()
        .policy(Policy::RelayOnly)
        .turn_server(turn, creds)
        .build()
        .unwrap()
}

async fn relay_roundtrip(creds: impl Fn() -> TurnCredentials, turn: std::net::SocketAddr) {
    let (mut a, mut b) = pair(
        relay_cfg(turn, creds()),
        relay_cfg(turn, creds()),
        loopback(),
    )
    .await;
    let pa = a.path(T).await.expect("A selects a path");
    let pb = b.path(T).await.expect("B selects a path");
    assert_eq!(pa.kind, CandidateKind::Relay);
    assert_eq!(pa.local_kind, CandidateKind::Relay);
    assert_eq!(pb.local_kind, CandidateKind::Relay);
    assert_eq!(
        pa.remote_kind,
        CandidateKind::Relay,
        "relay-only peers see only relay candidates"
    );
    for i in 0..20 {
        a.handle.send(media(i)).unwrap();
        b.handle.send(media(100 + i)).unwrap();
    }
    for i in 0..20 {
        assert_eq!(b.recv(T).await.expect("B receives"), media(i));
        assert_eq!(a.recv(T).await.expect("A receives"), media(100 + i));
    }
    a.handle.close().await.unwrap();
    b.handle.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_through_coturn_with_long_term_credentials() {
    if !hush_testkit::system_component("coturn (turnserver)", coturn_present()) {
        return;
    }
    let turn = Coturn::start(Auth::long_term());
    relay_roundtrip(
        || TurnCredentials::long_term("alice", "wonderland"),
        turn.addr,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_through_coturn_with_turn_rest_credentials() {
    if !hush_testkit::system_component("coturn (turnserver)", coturn_present()) {
        return;
    }
    let turn = Coturn::start(Auth::Rest {
        secret: "s3cr3t-shared".into(),
    });
    let expires = std::time::SystemTime::now() + Duration::from_secs(600);
    relay_roundtrip(
        || TurnCredentials::rest(b"s3cr3t-shared", "bob", expires),
        turn.addr,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_turn_rest_credentials_are_a_typed_error() {
    if !hush_testkit::system_component("coturn (turnserver)", coturn_present()) {
        return;
    }
    let turn = Coturn::start(Auth::Rest {
        secret: "s3cr3t-shared".into(),
    });
    let expired = std::time::SystemTime::now() - Duration::from_secs(60);
    let creds = || TurnCredentials::rest(b"s3cr3t-shared", "bob", expired);
    let (mut a, _b) = pair(
        relay_cfg(turn.addr, creds()),
        relay_cfg(turn.addr, creds()),
        loopback(),
    )
    .await;
    let e = a
        .wait_for(T, |s| match s {
            Seen::ServerError(e) => Some(e),
            _ => None,
        })
        .await
        .expect("an error event, not a hang");
    assert!(
        matches!(e, Error::TurnAuthFailed { server } if server == turn.addr),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_turn_password_is_a_typed_error() {
    if !hush_testkit::system_component("coturn (turnserver)", coturn_present()) {
        return;
    }
    let turn = Coturn::start(Auth::long_term());
    let bad = || TurnCredentials::long_term("alice", "not-the-password");
    let (mut a, _b) = pair(
        relay_cfg(turn.addr, bad()),
        relay_cfg(turn.addr, bad()),
        loopback(),
    )
    .await;
    let e = a
        .wait_for(T, |s| match s {
            Seen::ServerError(e) => Some(e),
            _ => None,
        })
        .await
        .expect("an error event, not a hang");
    assert!(
        matches!(e, Error::TurnAuthFailed { server } if server == turn.addr),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_permission_is_a_typed_error() {
    if !hush_testkit::system_component("coturn (turnserver)", coturn_present()) {
        return;
    }
    // Without allow-loopback-peers coturn answers 403 to every permission for 127.0.0.1.
    let turn = Coturn::start_loopback(Auth::long_term(), false);
    let good = || TurnCredentials::long_term("alice", "wonderland");
    let (mut a, _b) = pair(
        relay_cfg(turn.addr, good()),
        relay_cfg(turn.addr, good()),
        loopback(),
    )
    .await;
    let e = a
        .wait_for(T, |s| match s {
            Seen::ServerError(e) => Some(e),
            _ => None,
        })
        .await
        .expect("an error event, not a hang");
    assert!(
        matches!(e, Error::TurnPermissionRefused { code: 403, .. }),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_turn_server_is_a_timeout_error() {
    // Nothing listens there: no system component needed.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = || {
        Config::builder()
            .policy(Policy::RelayOnly)
            .turn_server(port, TurnCredentials::long_term("u", "p"))
            .turn_rto(Duration::from_millis(10))
            .build()
            .unwrap()
    };
    let (mut a, _b) = pair(cfg(), cfg(), loopback()).await;
    let e = a
        .wait_for(T, |s| match s {
            Seen::ServerError(e) => Some(e),
            _ => None,
        })
        .await
        .expect("an error event, not a hang");
    assert!(
        matches!(e, Error::Timeout { server } if server == port),
        "{e:?}"
    );
}

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

/// Drains what a node observed so far without waiting; returns how many restarts it saw.
fn restarts_seen(n: &mut common::nodes::Node) -> usize {
    let mut count = 0;
    while let Ok(s) = n.seen.try_recv() {
        if matches!(s, Seen::Restarted) {
            count += 1;
        }
    }
    count
}

/// Exchanges `n` datagrams each way, checking they arrive unchanged.
async fn flows(a: &mut common::nodes::Node, b: &mut common::nodes::Node, tag: u8, n: u8) {
    // Datagrams sent while the new path is being nominated may be lost: wait for the first
    // that gets through, then require every following one.
    let probe = |i: u8| {
        let mut m = media(i);
        m[2] = tag;
        m
    };
    let mut got = false;
    for _ in 0..100 {
        a.handle.send(probe(0)).unwrap();
        if tokio::time::timeout(Duration::from_millis(50), b.datagrams.recv())
            .await
            .ok()
            .flatten()
            .is_some_and(|d| d == probe(0))
        {
            got = true;
            break;
        }
    }
    assert!(got, "media does not get through");
    while let Ok(_stale) = b.datagrams.try_recv() {}
    for i in 1..n {
        a.handle.send(probe(i)).unwrap();
        b.handle.send(probe(100 + i)).unwrap();
    }
    for i in 1..n {
        assert_eq!(b.recv(T).await.expect("B receives"), probe(i));
        assert_eq!(a.recv(T).await.expect("A receives"), probe(100 + i));
    }
}

async fn network_change_moves_the_flow(cfg: impl Fn() -> Config) {
    let (mut a, mut b) = pair(cfg(), cfg(), loopback()).await;
    let before_a = a.path(T).await.expect("A selects a path");
    b.path(T).await.expect("B selects a path");
    flows(&mut a, &mut b, 1, 10).await;
    let old = a.handle.local_sockets().await.unwrap();
    assert_eq!(restarts_seen(&mut a) + restarts_seen(&mut b), 0);

    // A "moves to another network": fresh sockets (new ports on loopback), ICE restart.
    let creds = a.handle.network_changed().await.expect("network change");
    let new = a.handle.local_sockets().await.unwrap();
    assert!(!new.is_empty());
    assert!(new.iter().all(|n| !old.contains(n)), "{old:?} → {new:?}");
    // The old sockets are closed when network_changed returns: their ports are free again.
    let _reuse: Vec<std::net::UdpSocket> = old
        .iter()
        .map(|o| std::net::UdpSocket::bind(o).expect("old socket closed"))
        .collect();

    // The test's signaling relays A's Restarted credentials to B's set_remote_credentials, B
    // restarts in turn and its credentials come back: a new path, on A's new socket.
    let (mut ra, mut rb) = (0, 0);
    let after_a = a
        .wait_for(T, |s| match s {
            Seen::Path(p) => Some(p),
            Seen::Restarted => {
                ra += 1;
                None
            }
            _ => None,
        })
        .await
        .expect("A selects a new path");
    let after_b = b
        .wait_for(T, |s| match s {
            Seen::Path(p) => Some(p),
            Seen::Restarted => {
                rb += 1;
                None
            }
            _ => None,
        })
        .await
        .expect("B selects a new path");
    assert_ne!(after_a.local, before_a.local);
    assert_eq!(after_a.kind, before_a.kind);
    if after_a.kind == CandidateKind::Host {
        assert!(new.contains(&after_a.local), "{after_a:?} not on {new:?}");
        assert!(new.contains(&after_b.remote), "{after_b:?} not to {new:?}");
    }
    flows(&mut a, &mut b, 2, 20).await;
    // Exactly one restart on each side (A asked, B followed): no ping-pong.
    assert_eq!(ra + restarts_seen(&mut a), 1);
    assert_eq!(rb + restarts_seen(&mut b), 1);
    assert_ne!(creds, a.handle.network_changed().await.unwrap());
    a.handle.close().await.unwrap();
    b.handle.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_change_moves_a_host_flow_to_fresh_sockets() {
    network_change_moves_the_flow(|| Config::builder().include_loopback(true).build().unwrap())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_change_moves_a_relay_flow_to_a_new_allocation() {
    if !hush_testkit::system_component("coturn (turnserver)", coturn_present()) {
        return;
    }
    let turn = Coturn::start(Auth::long_term());
    network_change_moves_the_flow(|| {
        relay_cfg(turn.addr, TurnCredentials::long_term("alice", "wonderland"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_with_rejected_credentials_fails_with_no_route_at_once() {
    if !hush_testkit::system_component("coturn (turnserver)", coturn_present()) {
        return;
    }
    let turn = Coturn::start(Auth::long_term());
    let bad = || TurnCredentials::long_term("alice", "not-the-password");
    let (mut a, mut b) = pair(
        relay_cfg(turn.addr, bad()),
        relay_cfg(turn.addr, bad()),
        loopback(),
    )
    .await;
    // Neither side can have a candidate; both said so (GatheringComplete relayed as
    // end-of-candidates): NoRoute well before the ICE agent's own 30 s timeout (T is 10 s).
    for n in [&mut a, &mut b] {
        let mut auth = false;
        let e = n
            .wait_for(T, |s| match s {
                Seen::ServerError(Error::TurnAuthFailed { .. }) => {
                    auth = true;
                    None
                }
                Seen::Failed(e) => Some(e),
                _ => None,
            })
            .await
            .expect("Failed within T");
        assert!(matches!(e, Error::NoRoute), "{e:?}");
        assert!(auth, "the cause was reported first");
    }
}

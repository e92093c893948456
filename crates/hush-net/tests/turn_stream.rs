//! TURN over TCP and TLS against a real coturn whose UDP listener is off (`no-udp`), so the
//! client can only have reached it over the stream. Relayed addresses are UDP either way.

mod common;

use std::time::Duration;

use common::nodes::{loopback, pair, Node, Seen};
use hush_net::{
    CandidateKind, Config, Error, Policy, TlsRoots, Transport, TurnCredentials, TurnServer,
};
use hush_testkit::coturn::{coturn_present, coturn_tls_present, Auth, Coturn, PASSWORD, USER};

const T: Duration = Duration::from_secs(10);

fn media(i: u8) -> Vec<u8> {
    let mut v = vec![0x80, 0x60, 0, i];
    // Odd lengths exercise ChannelData padding on the stream.
    v.extend((0..(97 + usize::from(i % 4))).map(|x| (x as u8).wrapping_mul(i)));
    v
}

fn good() -> TurnCredentials {
    TurnCredentials::long_term(USER, PASSWORD)
}

fn stream_server(tcp: bool, tls: bool) -> Coturn {
    Coturn::builder(Auth::long_term())
        .udp(false)
        .tcp(tcp)
        .tls(tls)
        .start()
}

fn relay_only(server: TurnServer, roots: Option<&[u8]>) -> Config {
    let mut b = Config::builder().policy(Policy::RelayOnly).turn(server);
    if let Some(der) = roots {
        b = b.turn_tls_roots(TlsRoots::Custom(vec![der.to_vec()]));
    }
    b.build().unwrap()
}

async fn relayed_media_flows(mut a: Node, mut b: Node) {
    let pa = a.path(T).await.expect("A selects a path");
    let pb = b.path(T).await.expect("B selects a path");
    for p in [&pa, &pb] {
        assert_eq!(p.kind, CandidateKind::Relay);
        assert_eq!(p.local_kind, CandidateKind::Relay);
        assert_eq!(p.remote_kind, CandidateKind::Relay);
    }
    for i in 0..30 {
        a.handle.send(media(i)).unwrap();
        b.handle.send(media(100 + i)).unwrap();
    }
    for i in 0..30 {
        assert_eq!(b.recv(T).await.expect("B receives"), media(i));
        assert_eq!(a.recv(T).await.expect("A receives"), media(100 + i));
    }
    a.handle.close().await.unwrap();
    b.handle.close().await.unwrap();
}

async fn server_error(n: &mut Node) -> Error {
    n.wait_for(T, |s| match s {
        Seen::ServerError(e) => Some(e),
        _ => None,
    })
    .await
    .expect("an error event, not a hang")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_over_turn_tcp_carries_media() {
    if !hush_testkit::system_component("coturn (turnserver)", coturn_present()) {
        return;
    }
    let turn = stream_server(true, false);
    let addr = turn.tcp_addr().unwrap();
    let url = format!("turn:{addr}?transport=tcp");
    let server = || TurnServer::from_url(&url, good()).unwrap();
    let (a, b) = pair(
        relay_only(server(), None),
        relay_only(server(), None),
        loopback(),
    )
    .await;
    relayed_media_flows(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_over_turn_tls_carries_media() {
    if !hush_testkit::system_component("coturn (turnserver) + openssl", coturn_tls_present()) {
        return;
    }
    let turn = stream_server(false, true);
    let addr = turn.tls_addr().unwrap();
    let cert = turn.tls_cert_der().unwrap();
    // turns: with an IP address: the certificate must be valid for that IP (it is).
    let url = format!("turns:{addr}");
    let server = || TurnServer::from_url(&url, good()).unwrap();
    let (a, b) = pair(
        relay_only(server(), Some(cert)),
        relay_only(server(), Some(cert)),
        loopback(),
    )
    .await;
    relayed_media_flows(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_udp_peers_meet_through_the_same_relay() {
    if !hush_testkit::system_component("coturn (turnserver) + openssl", coturn_tls_present()) {
        return;
    }
    let turn = Coturn::builder(Auth::long_term()).tls(true).start();
    let cert = turn.tls_cert_der().unwrap();
    let tls = TurnServer::tls(turn.tls_addr().unwrap(), "turn.hush.test", good());
    let udp = TurnServer::udp(turn.udp_addr(), good());
    let (a, b) = pair(
        relay_only(tls, Some(cert)),
        relay_only(udp, None),
        loopback(),
    )
    .await;
    relayed_media_flows(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_over_turn_tcp_is_a_typed_error() {
    if !hush_testkit::system_component("coturn (turnserver)", coturn_present()) {
        return;
    }
    let turn = stream_server(true, false);
    let addr = turn.tcp_addr().unwrap();
    let bad = || TurnServer::tcp(addr, TurnCredentials::long_term(USER, "not-the-password"));
    let (mut a, _b) = pair(relay_only(bad(), None), relay_only(bad(), None), loopback()).await;
    let e = server_error(&mut a).await;
    assert!(
        matches!(e, Error::TurnAuthFailed { server } if server == addr),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_tls_certificate_is_a_typed_error() {
    if !hush_testkit::system_component("coturn (turnserver) + openssl", coturn_tls_present()) {
        return;
    }
    let turn = stream_server(false, true);
    let addr = turn.tls_addr().unwrap();
    // Default roots (Mozilla's): the self-signed certificate is not trusted.
    let server = || TurnServer::tls(addr, "turn.hush.test", good());
    let (mut a, _b) = pair(
        relay_only(server(), None),
        relay_only(server(), None),
        loopback(),
    )
    .await;
    let e = server_error(&mut a).await;
    match e {
        Error::TurnConnectionFailed {
            server,
            transport: Transport::Tls,
            reason,
        } => {
            assert_eq!(server, addr);
            assert!(reason.contains("certificate"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_name_mismatch_is_a_typed_error() {
    if !hush_testkit::system_component("coturn (turnserver) + openssl", coturn_tls_present()) {
        return;
    }
    let turn = stream_server(false, true);
    let addr = turn.tls_addr().unwrap();
    let cert = turn.tls_cert_der().unwrap();
    // Trusted certificate, but not for this name.
    let server = || TurnServer::tls(addr, "other.example", good());
    let (mut a, _b) = pair(
        relay_only(server(), Some(cert)),
        relay_only(server(), Some(cert)),
        loopback(),
    )
    .await;
    let e = server_error(&mut a).await;
    assert!(
        matches!(
            &e,
            Error::TurnConnectionFailed {
                transport: Transport::Tls,
                ..
            }
        ),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tcp_connection_is_a_typed_error() {
    // Nothing listens on this port: no system component needed.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = || TurnServer::tcp(addr, good());
    let (mut a, _b) = pair(
        relay_only(server(), None),
        relay_only(server(), None),
        loopback(),
    )
    .await;
    let e = server_error(&mut a).await;
    assert!(
        matches!(&e, Error::TurnConnectionFailed { server, transport: Transport::Tcp, .. } if *server == addr),
        "{e:?}"
    );
}

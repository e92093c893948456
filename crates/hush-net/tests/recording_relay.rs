//! A TURN relay that records everything sees only SRTP ciphertext: a known plaintext marker
//! protected with hush-srtp before it is handed to hush-net never appears in any byte the relay
//! handled, while the exact SRTP datagrams given to the API do.

mod common;

use std::time::Duration;

use common::nodes::{loopback, pair};
use common::proxy::RecordingProxy;
use common::{coturn_present, Auth, Coturn};
use hush_net::{CandidateKind, Config, Policy, TurnCredentials};
use hush_srtp::{SrtpContext, Suite};

const T: Duration = Duration::from_secs(10);
const MARKER: &[u8] = b"HUSH-KNOWN-PLAINTEXT-MARKER-7f3a";

fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 111];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 960).to_be_bytes());
    p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    p.extend_from_slice(MARKER);
    p.extend_from_slice(&seq.to_be_bytes());
    p
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_relay_sees_only_srtp_ciphertext() {
    if !hush_testkit::system_component("coturn (turnserver)", coturn_present()) {
        return;
    }
    let turn = Coturn::start(Auth::long_term());
    let proxy = RecordingProxy::start(turn.addr);
    let cfg = || {
        Config::builder()
            .policy(Policy::RelayOnly)
            .turn_server(
                proxy.addr,
                TurnCredentials::long_term("alice", "wonderland"),
            )
            .build()
            .unwrap()
    };
    let (mut a, mut b) = pair(cfg(), cfg(), loopback()).await;
    assert_eq!(a.path(T).await.expect("path").kind, CandidateKind::Relay);
    assert_eq!(b.path(T).await.expect("path").kind, CandidateKind::Relay);

    let key = [0x42u8; 16];
    let salt = [0x24u8; 12];
    let mut tx = SrtpContext::new(Suite::AeadAes128Gcm, &key, &salt).unwrap();
    let mut rx = SrtpContext::new(Suite::AeadAes128Gcm, &key, &salt).unwrap();
    let mut sent = Vec::new();
    for seq in 1..=30u16 {
        let mut p = rtp(seq);
        tx.protect_rtp(&mut p).unwrap();
        assert!(!contains(&p, MARKER));
        sent.push(p.clone());
        a.handle.send(p).unwrap();
    }
    for (i, expected) in sent.iter().enumerate() {
        let mut got = b.recv(T).await.expect("B receives");
        assert_eq!(&got, expected, "hush-net delivers the datagram unchanged");
        rx.unprotect_rtp(&mut got).unwrap();
        assert_eq!(
            got,
            rtp(u16::try_from(i + 1).unwrap()),
            "end to end the plaintext is intact"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let recorded = proxy.snapshot();
    assert!(!recorded.is_empty());
    for (dir, bytes) in &recorded {
        assert!(
            !contains(bytes, MARKER),
            "plaintext marker seen by the relay ({dir:?})"
        );
    }
    // Every SRTP datagram went through the relay as is (inside TURN framing), both into the
    // server and out of it to the peer.
    for p in &sent {
        let to_server = recorded
            .iter()
            .any(|(d, r)| *d == common::proxy::Dir::ToServer && contains(r, p));
        let to_client = recorded
            .iter()
            .any(|(d, r)| *d == common::proxy::Dir::ToClient && contains(r, p));
        assert!(
            to_server && to_client,
            "datagram not seen unchanged on both legs"
        );
    }
}

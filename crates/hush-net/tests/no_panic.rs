//! No panic on any received bytes: arbitrary datagrams from a peer and from the TURN server, and
//! arbitrary candidate strings, go into a live connection (property test; the fuzz target
//! `net_stun_input` does the same at scale).

use std::time::{Duration, Instant};

use hush_net::{Config, Connection, IceCredentials, Role, TurnCredentials};
use proptest::prelude::*;

fn conn(now: Instant) -> Connection {
    let config = Config::builder()
        .include_loopback(true)
        .turn_server(
            "127.0.0.1:3478".parse().unwrap(),
            TurnCredentials::long_term("u", "p"),
        )
        .build()
        .unwrap();
    let mut c = Connection::new(config, Role::Controlled, now).unwrap();
    c.add_local_sockets(now, &["127.0.0.1:5000".parse().unwrap()]);
    c.set_remote_credentials(
        now,
        IceCredentials::new("abcd", "0123456789abcdef0123456789"),
    )
    .unwrap();
    c.add_remote_candidate(now, "1 1 udp 2130706431 127.0.0.1 6000 typ host")
        .unwrap();
    c
}

/// A STUN-looking header followed by arbitrary attributes, to get past the first checks.
fn stun_like() -> impl Strategy<Value = Vec<u8>> {
    (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..200)).prop_map(|(ty, body)| {
        let len = body.len() & !3;
        let mut p = vec![];
        p.extend_from_slice(&(ty & 0x3fff).to_be_bytes());
        p.extend_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
        p.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        p.extend_from_slice(&[9; 12]);
        p.extend_from_slice(&body[..len]);
        p
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn arbitrary_datagrams_never_panic(
        packets in proptest::collection::vec(
            prop_oneof![proptest::collection::vec(any::<u8>(), 0..300), stun_like()],
            1..8,
        ),
        from_server in proptest::collection::vec(any::<bool>(), 8),
    ) {
        let now = Instant::now();
        let mut c = conn(now);
        let local = "127.0.0.1:5000".parse().unwrap();
        for (i, p) in packets.iter().enumerate() {
            let from = if from_server[i] { "127.0.0.1:3478" } else { "127.0.0.1:6000" };
            c.handle_packet(now, from.parse().unwrap(), local, p);
        }
        c.handle_timeout(now + Duration::from_millis(100));
        while c.poll_transmit().is_some() {}
        while c.poll_event().is_some() {}
        while c.recv_datagram().is_some() {}
    }

    #[test]
    fn arbitrary_candidates_never_panic(line in ".{0,120}") {
        let now = Instant::now();
        let mut c = conn(now);
        let _ = c.add_remote_candidate(now, &line);
        c.handle_timeout(now + Duration::from_millis(100));
    }

    #[test]
    fn candidate_shaped_strings_never_panic(
        parts in proptest::collection::vec("[a-z0-9.:]{0,12}", 0..14)
    ) {
        let now = Instant::now();
        let mut c = conn(now);
        let _ = c.add_remote_candidate(now, &parts.join(" "));
    }
}

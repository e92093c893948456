//! Arbitrary bytes into the hush-net core (and through it the webrtc-rs ICE agent and TURN
//! client), from a peer, from the TURN server, and as remote candidate strings.
#![no_main]

use std::time::{Duration, Instant};

use hush_net::{Config, Connection, IceCredentials, Role, TurnCredentials};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let now = Instant::now();
    let turn = "127.0.0.1:3478".parse().unwrap();
    let config = Config::builder()
        .include_loopback(true)
        .turn_server(turn, TurnCredentials::long_term("u", "p"))
        .build()
        .unwrap();
    let role = if selector & 1 == 0 {
        Role::Controlling
    } else {
        Role::Controlled
    };
    let Ok(mut conn) = Connection::new(config, role, now) else {
        return;
    };
    let local = "127.0.0.1:5000".parse().unwrap();
    let peer = "127.0.0.1:6000".parse().unwrap();
    conn.add_local_sockets(now, &[local]);
    let _ = conn.set_remote_credentials(
        now,
        IceCredentials::new("abcd", "0123456789abcdef0123456789"),
    );
    let _ = conn.add_remote_candidate(now, "1 1 udp 2130706431 127.0.0.1 6000 typ host");
    match selector >> 1 & 3 {
        0 => conn.handle_packet(now, peer, local, rest),
        1 => conn.handle_packet(now, turn, local, rest),
        2 => {
            if let Ok(s) = std::str::from_utf8(rest) {
                let _ = conn.add_remote_candidate(now, s);
            }
        }
        _ => {
            // Several datagrams, split on 0xFF, alternating sources.
            for (i, chunk) in rest.split(|b| *b == 0xFF).enumerate() {
                let from = if i % 2 == 0 { peer } else { turn };
                conn.handle_packet(now, from, local, chunk);
            }
        }
    }
    conn.handle_timeout(now + Duration::from_millis(50));
    while conn.poll_transmit().is_some() {}
    while conn.poll_event().is_some() {}
    while conn.recv_datagram().is_some() {}
    let _ = conn.send_datagram(now, rest);
});

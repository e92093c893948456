//! TURN-over-TCP/TLS stream framing: arbitrary bytes, cut into arbitrary chunks, through
//! hush-net's StreamDecoder, and every message it yields into a Connection whose TURN server is
//! reached over TCP (and through it into the webrtc-rs TURN client).
#![no_main]

use std::time::{Duration, Instant};

use hush_net::framing::{frame_for_stream, frame_len, StreamDecoder};
use hush_net::{Config, Connection, Policy, Role, Transport, TurnCredentials, TurnServer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let now = Instant::now();
    let turn = "127.0.0.1:3478".parse().unwrap();
    let config = Config::builder()
        .policy(Policy::RelayOnly)
        .turn(TurnServer::tcp(turn, TurnCredentials::long_term("u", "p")))
        .build()
        .unwrap();
    let Ok(mut conn) = Connection::new(config, Role::Controlling, now) else {
        return;
    };
    let local = "127.0.0.1:5000".parse().unwrap();
    conn.add_local_sockets(now, &[local]);
    while conn.poll_transmit().is_some() {}

    let mut d = StreamDecoder::new();
    let mut consumed = 0usize;
    let mut failed = false;
    for piece in stream.chunks(chunk) {
        d.push(piece);
        loop {
            match d.next_message() {
                Ok(Some(m)) => {
                    assert!(!failed);
                    // A message is exactly what its header announces, and a slice of the input.
                    assert_eq!(frame_len(&m), Ok(Some(m.len())));
                    assert_eq!(stream.get(consumed..consumed + m.len()), Some(&m[..]));
                    consumed += m.len();
                    assert_eq!(frame_for_stream(&m).as_ref(), &m[..]);
                    conn.handle_stream_message(now, local, turn, Transport::Tcp, &m);
                }
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
    }
    if failed {
        assert!(d.next_message().is_err(), "errors stick");
    } else {
        assert_eq!(consumed + d.buffered(), stream.len());
    }
    let padded = frame_for_stream(stream);
    if stream.len() >= 4 && stream[0] >> 6 == 1 {
        assert_eq!(padded.len() % 4, 0);
    }
    conn.handle_timeout(now + Duration::from_millis(50));
    while conn.poll_transmit().is_some() {}
    while conn.poll_event().is_some() {}
    let _ = conn.send_datagram(now, stream);
});

//! Property tests: `unprotect(protect(p)) == p` over random headers (CSRCs, RFC 8285
//! extensions, padding bit, marker) and payloads, for both suites, SRTP and SRTCP; and any
//! single changed byte of a protected packet fails authentication.

mod common;

use common::{pair, SUITES};
use hush_srtp::{Error, Suite};
use proptest::prelude::*;

/// A random but well-formed RTP packet.
fn rtp_packet() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),                               // padding bit
        any::<bool>(),                               // marker
        0u8..128,                                    // payload type
        any::<u16>(),                                // sequence number
        any::<u32>(),                                // timestamp
        any::<u32>(),                                // SSRC
        prop::collection::vec(any::<u32>(), 0..=15), // CSRCs
        prop::option::of((any::<u16>(), prop::collection::vec(any::<u8>(), 0..64))), // extension
        prop::collection::vec(any::<u8>(), 0..1400), // payload
    )
        .prop_map(|(p, m, pt, seq, ts, ssrc, csrcs, ext, payload)| {
            let mut out = Vec::with_capacity(1500);
            let first =
                0x80 | (u8::from(p) << 5) | (u8::from(ext.is_some()) << 4) | csrcs.len() as u8;
            out.push(first);
            out.push((u8::from(m) << 7) | pt);
            out.extend_from_slice(&seq.to_be_bytes());
            out.extend_from_slice(&ts.to_be_bytes());
            out.extend_from_slice(&ssrc.to_be_bytes());
            for c in &csrcs {
                out.extend_from_slice(&c.to_be_bytes());
            }
            if let Some((profile, mut data)) = ext {
                while data.len() % 4 != 0 {
                    data.push(0);
                }
                out.extend_from_slice(&profile.to_be_bytes());
                out.extend_from_slice(&((data.len() / 4) as u16).to_be_bytes());
                out.extend_from_slice(&data);
            }
            out.extend_from_slice(&payload);
            out
        })
}

fn rtcp_packet() -> impl Strategy<Value = Vec<u8>> {
    (
        192u8..=223,
        any::<u32>(),
        prop::collection::vec(any::<u8>(), 0..400),
    )
        .prop_map(|(pt, ssrc, body)| {
            let mut out = vec![0x80, pt, 0, 0];
            out.extend_from_slice(&ssrc.to_be_bytes());
            out.extend_from_slice(&body);
            out
        })
}

fn header_len(p: &[u8]) -> usize {
    let mut len = 12 + 4 * usize::from(p[0] & 0x0f);
    if p[0] & 0x10 != 0 {
        len += 4 + 4 * usize::from(u16::from_be_bytes([p[len + 2], p[len + 3]]));
    }
    len
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn srtp_round_trip(packet in rtp_packet(), suite in prop::sample::select(SUITES.to_vec())) {
        let (mut tx, mut rx) = pair(suite);
        let mut p = packet.clone();
        tx.protect_rtp(&mut p).unwrap();
        prop_assert_eq!(p.len(), packet.len() + Suite::RTP_OVERHEAD);
        // Header in the clear, payload changed (unless empty).
        let hl = header_len(&packet);
        prop_assert_eq!(&p[..hl], &packet[..hl]);
        if packet.len() - hl >= 8 {
            prop_assert_ne!(&p[hl..packet.len()], &packet[hl..]);
        }
        rx.unprotect_rtp(&mut p).unwrap();
        prop_assert_eq!(p, packet);
    }

    #[test]
    fn srtcp_round_trip(packet in rtcp_packet(), suite in prop::sample::select(SUITES.to_vec())) {
        let (mut tx, mut rx) = pair(suite);
        let mut p = packet.clone();
        tx.protect_rtcp(&mut p).unwrap();
        prop_assert_eq!(p.len(), packet.len() + Suite::RTCP_OVERHEAD);
        prop_assert_eq!(&p[..8], &packet[..8]);
        // E flag set, index 1.
        prop_assert_eq!(&p[p.len() - 4..], &[0x80, 0, 0, 1]);
        rx.unprotect_rtcp(&mut p).unwrap();
        prop_assert_eq!(p, packet);
    }

    /// Flipping any bits of any byte of a protected packet (header, payload, tag or SRTCP
    /// trailer) makes it fail, and the receiver still accepts the genuine packet afterwards.
    #[test]
    fn tampering_any_byte_fails(
        packet in rtp_packet(),
        at in any::<prop::sample::Index>(),
        mask in 1u8..=255,
        suite in prop::sample::select(SUITES.to_vec()),
    ) {
        let (mut tx, mut rx) = pair(suite);
        let mut good = packet.clone();
        tx.protect_rtp(&mut good).unwrap();
        let mut bad = good.clone();
        let i = at.index(bad.len());
        bad[i] ^= mask;
        let r = rx.unprotect_rtp(&mut bad);
        prop_assert!(r.is_err(), "byte {} accepted", i);
        // Header bytes may also break the layout (version, CC, X, extension length); payload
        // and tag changes can only be caught by authentication.
        if i >= header_len(&packet) {
            prop_assert_eq!(r, Err(Error::AuthFailed));
        } else {
            prop_assert!(
                matches!(r, Err(Error::AuthFailed | Error::MalformedHeader(_) | Error::BadVersion(_))),
                "{:?}", r
            );
        }
        rx.unprotect_rtp(&mut good).unwrap();
        prop_assert_eq!(good, packet);
    }

    #[test]
    fn srtcp_tampering_any_byte_fails(
        packet in rtcp_packet(),
        at in any::<prop::sample::Index>(),
        mask in 1u8..=255,
        suite in prop::sample::select(SUITES.to_vec()),
    ) {
        let (mut tx, mut rx) = pair(suite);
        let mut good = packet.clone();
        tx.protect_rtcp(&mut good).unwrap();
        let mut bad = good.clone();
        let i = at.index(bad.len());
        bad[i] ^= mask;
        prop_assert!(rx.unprotect_rtcp(&mut bad).is_err(), "byte {} accepted", i);
        rx.unprotect_rtcp(&mut good).unwrap();
        prop_assert_eq!(good, packet);
    }

    /// A long stream with random reordering inside the window round-trips, in both suites,
    /// across sequence number wraps. (The first packet of the stream is delivered first: a
    /// receiver that first sees a later packet from after a wrap cannot know the ROC, in any
    /// SRTP implementation.)
    #[test]
    fn reordered_stream_round_trips(
        start in any::<u16>(),
        delays in prop::collection::vec(0u32..40, 600),
        suite in prop::sample::select(SUITES.to_vec()),
    ) {
        let (mut tx, mut rx) = pair(suite);
        let mut packets: Vec<(u32, u16, Vec<u8>)> = (0..600u16)
            .map(|i| {
                let seq = start.wrapping_add(i);
                let mut p = common::rtp(seq, 7, &i.to_be_bytes());
                tx.protect_rtp(&mut p).unwrap();
                let delay = if i == 0 { 0 } else { delays[usize::from(i)] };
                (u32::from(i) + delay, i, p)
            })
            .collect();
        packets.sort_by_key(|(arrival, i, _)| (*arrival, *i));
        for (_, i, mut p) in packets {
            rx.unprotect_rtp(&mut p).unwrap();
            prop_assert_eq!(&p[12..], &i.to_be_bytes()[..]);
        }
        let last = u64::from(start) + 599;
        prop_assert_eq!(rx.highest_rtp_index_received(7), Some(last));
        prop_assert_eq!(tx.highest_rtp_index_sent(7), Some(last));
    }
}

#[test]
fn empty_payload_round_trips() {
    for suite in SUITES {
        let (mut tx, mut rx) = pair(suite);
        let mut p = common::rtp(1, 1, b"");
        tx.protect_rtp(&mut p).unwrap();
        assert_eq!(p.len(), 12 + 16);
        rx.unprotect_rtp(&mut p).unwrap();
        assert_eq!(p, common::rtp(1, 1, b""));
        let mut c = common::rtcp(1, b"");
        tx.protect_rtcp(&mut c).unwrap();
        assert_eq!(c.len(), 8 + 20);
        rx.unprotect_rtcp(&mut c).unwrap();
        assert_eq!(c, common::rtcp(1, b""));
    }
}

#[test]
fn protect_does_not_reallocate_with_reserved_capacity() {
    let (mut tx, mut rx) = pair(Suite::AeadAes128Gcm);
    let mut p = Vec::with_capacity(1500);
    p.extend_from_slice(&common::rtp(1, 1, &[0u8; 1200]));
    let ptr = p.as_ptr();
    tx.protect_rtp(&mut p).unwrap();
    rx.unprotect_rtp(&mut p).unwrap();
    assert_eq!(p.as_ptr(), ptr);
    let mut c = Vec::with_capacity(1500);
    c.extend_from_slice(&common::rtcp(1, &[0u8; 100]));
    let ptr = c.as_ptr();
    tx.protect_rtcp(&mut c).unwrap();
    rx.unprotect_rtcp(&mut c).unwrap();
    assert_eq!(c.as_ptr(), ptr);
}

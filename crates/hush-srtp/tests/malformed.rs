//! Truncated, oversized and garbage packets: always a typed error, never a panic, never a
//! state change.

mod common;

use common::{pair, protected, rtcp, rtp, SUITES};
use hush_srtp::{Error, Suite};
use proptest::prelude::*;

#[test]
fn truncated_packets_are_rejected() {
    for suite in SUITES {
        let (mut tx, mut rx) = pair(suite);
        let good = protected(&mut tx, 7, 42);
        for len in 0..good.len() {
            let mut p = good[..len].to_vec();
            let r = rx.unprotect_rtp(&mut p);
            assert!(r.is_err(), "length {len} accepted");
            if len < 12 + 16 {
                assert!(matches!(r, Err(Error::TooShort { .. })), "{len}: {r:?}");
            }
        }
        let mut c = rtcp(42, b"0123456789");
        tx.protect_rtcp(&mut c).unwrap();
        for len in 0..c.len() {
            let r = rx.unprotect_rtcp(&mut c[..len].to_vec());
            assert!(r.is_err(), "rtcp length {len} accepted");
            if len < 8 + 20 {
                assert!(matches!(r, Err(Error::TooShort { .. })), "{len}: {r:?}");
            }
        }
        // Nothing was accepted, so the full packets still are.
        rx.unprotect_rtp(&mut good.clone()).unwrap();
        rx.unprotect_rtcp(&mut c).unwrap();
    }
}

#[test]
fn typed_errors_for_bad_headers() {
    let (mut tx, mut rx) = pair(Suite::AeadAes128Gcm);
    // Version 1.
    let mut p = rtp(1, 1, &[0; 40]);
    p[0] = 0x40;
    assert_eq!(tx.protect_rtp(&mut p.clone()), Err(Error::BadVersion(1)));
    assert_eq!(rx.unprotect_rtp(&mut p), Err(Error::BadVersion(1)));
    // CSRC count past the end.
    let mut p = rtp(1, 1, &[0; 20]);
    p[0] = 0x8f;
    assert!(matches!(
        tx.protect_rtp(&mut p.clone()),
        Err(Error::MalformedHeader(_))
    ));
    assert!(matches!(
        rx.unprotect_rtp(&mut p),
        Err(Error::MalformedHeader(_))
    ));
    // Extension length past the end.
    let mut p = rtp(1, 1, &[0xbe, 0xde, 0xff, 0xff, 0, 0, 0, 0]);
    p[0] |= 0x10;
    assert!(matches!(
        tx.protect_rtp(&mut p.clone()),
        Err(Error::MalformedHeader(_))
    ));
    // RTCP too short to protect, or wrong version.
    assert!(matches!(
        tx.protect_rtcp(&mut vec![0x80, 200, 0, 0]),
        Err(Error::TooShort { len: 4, min: 8 })
    ));
    assert_eq!(
        tx.protect_rtcp(&mut vec![0x00; 8]),
        Err(Error::BadVersion(0))
    );
    // A huge packet is fine (no length limit of its own).
    let mut big = rtp(2, 1, &vec![0x55; 65_000]);
    tx.protect_rtp(&mut big).unwrap();
    rx.unprotect_rtp(&mut big).unwrap();
    assert_eq!(big, rtp(2, 1, &vec![0x55; 65_000]));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary bytes never panic and are never accepted.
    #[test]
    fn garbage_is_rejected(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        suite in prop::sample::select(SUITES.to_vec()),
    ) {
        let (mut tx, mut rx) = pair(suite);
        let mut p = bytes.clone();
        prop_assert!(rx.unprotect_rtp(&mut p).is_err());
        prop_assert_eq!(p.len(), bytes.len());
        let mut p = bytes.clone();
        prop_assert!(rx.unprotect_rtcp(&mut p).is_err());
        prop_assert_eq!(p.len(), bytes.len());
        // Protecting garbage either fails cleanly or adds exactly the overhead.
        let mut p = bytes.clone();
        if tx.protect_rtp(&mut p).is_ok() {
            prop_assert_eq!(p.len(), bytes.len() + Suite::RTP_OVERHEAD);
        }
        let mut p = bytes.clone();
        if tx.protect_rtcp(&mut p).is_ok() {
            prop_assert_eq!(p.len(), bytes.len() + Suite::RTCP_OVERHEAD);
        }
    }

    /// Garbage with a valid-looking RTP header (version 2, random CC/X/lengths) is rejected.
    #[test]
    fn garbage_with_rtp_header_is_rejected(
        first in 0x80u8..0xc0,
        rest in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let (_, mut rx) = pair(Suite::AeadAes128Gcm);
        let mut p = vec![first];
        p.extend_from_slice(&rest);
        prop_assert!(rx.unprotect_rtp(&mut p).is_err());
        let mut p = vec![first];
        p.extend_from_slice(&rest);
        prop_assert!(rx.unprotect_rtcp(&mut p).is_err());
    }
}

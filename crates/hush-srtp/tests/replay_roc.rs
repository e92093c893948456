//! Replay windows, rollover counter (ROC) estimation and wrap, and that forged packets change
//! no state.

mod common;

use common::{pair, pair_with, protected, rtcp, rtp, SUITES};
use hush_srtp::{Error, SrtpConfig, Suite};

const SSRC: u32 = 0xcafe_f00d;

#[test]
fn duplicate_srtp_packet_is_replayed() {
    for suite in SUITES {
        let (mut tx, mut rx) = pair(suite);
        let p = protected(&mut tx, 100, SSRC);
        rx.unprotect_rtp(&mut p.clone()).unwrap();
        assert_eq!(
            rx.unprotect_rtp(&mut p.clone()),
            Err(Error::Replayed {
                ssrc: SSRC,
                index: 100
            })
        );
    }
}

#[test]
fn default_window_is_64_packets() {
    let (mut tx, mut rx) = pair(Suite::AeadAes128Gcm);
    let packets: Vec<_> = (0..200u16).map(|s| protected(&mut tx, s, SSRC)).collect();
    rx.unprotect_rtp(&mut packets[0].clone()).unwrap();
    rx.unprotect_rtp(&mut packets[199].clone()).unwrap();
    // 199 - 63 = 136 is the oldest index still inside the window.
    rx.unprotect_rtp(&mut packets[136].clone()).unwrap();
    assert_eq!(
        rx.unprotect_rtp(&mut packets[135].clone()),
        Err(Error::TooOld {
            ssrc: SSRC,
            index: 135
        })
    );
    // Unseen packets in the window are still accepted, in any order.
    for s in (137..199).rev() {
        rx.unprotect_rtp(&mut packets[s].clone()).unwrap();
    }
    for p in &packets[136..200] {
        assert!(matches!(
            rx.unprotect_rtp(&mut p.clone()),
            Err(Error::Replayed { .. })
        ));
    }
}

#[test]
fn window_of_1024_packets() {
    let config = SrtpConfig::builder().replay_window(1024).build().unwrap();
    let (mut tx, mut rx) = pair_with(Suite::AeadAes256Gcm, config);
    let packets: Vec<_> = (0..1500u16).map(|s| protected(&mut tx, s, SSRC)).collect();
    rx.unprotect_rtp(&mut packets[0].clone()).unwrap();
    rx.unprotect_rtp(&mut packets[1499].clone()).unwrap();
    // 1499 - 1023 = 476.
    rx.unprotect_rtp(&mut packets[476].clone()).unwrap();
    assert!(matches!(
        rx.unprotect_rtp(&mut packets[475].clone()),
        Err(Error::TooOld { index: 475, .. })
    ));
    rx.unprotect_rtp(&mut packets[1000].clone()).unwrap();
    assert!(matches!(
        rx.unprotect_rtp(&mut packets[1000].clone()),
        Err(Error::Replayed { index: 1000, .. })
    ));
}

#[test]
fn srtcp_replay_and_window() {
    for suite in SUITES {
        let (mut tx, mut rx) = pair(suite);
        let packets: Vec<_> = (0..100)
            .map(|_| {
                let mut p = rtcp(SSRC, b"report");
                tx.protect_rtcp(&mut p).unwrap();
                p
            })
            .collect();
        assert_eq!(tx.last_rtcp_index_sent(SSRC), Some(100));
        rx.unprotect_rtcp(&mut packets[99].clone()).unwrap();
        assert_eq!(
            rx.unprotect_rtcp(&mut packets[99].clone()),
            Err(Error::Replayed {
                ssrc: SSRC,
                index: 100
            })
        );
        // Index 100 is the highest; 37 is the oldest inside 64.
        rx.unprotect_rtcp(&mut packets[36].clone()).unwrap();
        assert!(matches!(
            rx.unprotect_rtcp(&mut packets[35].clone()),
            Err(Error::TooOld { index: 36, .. })
        ));
        assert_eq!(rx.highest_rtcp_index_received(SSRC), Some(100));
    }
}

/// Sequence numbers 65530..=65535 then 0..=10: the index goes on from 65535 to 65536, on both
/// sides, and the receiver decrypts everything.
#[test]
fn roc_wraps_at_65535() {
    for suite in SUITES {
        let (mut tx, mut rx) = pair(suite);
        let seqs: Vec<u16> = (65530..=65535).chain(0..=10).collect();
        for (n, &seq) in seqs.iter().enumerate() {
            let mut p = rtp(seq, SSRC, b"x");
            tx.protect_rtp(&mut p).unwrap();
            rx.unprotect_rtp(&mut p).unwrap();
            assert_eq!(p, rtp(seq, SSRC, b"x"));
            let index = 65530 + n as u64;
            assert_eq!(tx.highest_rtp_index_sent(SSRC), Some(index));
            assert_eq!(rx.highest_rtp_index_received(SSRC), Some(index));
        }
        // ROC is now 1.
        assert_eq!(rx.highest_rtp_index_received(SSRC).unwrap() >> 16, 1);
    }
}

/// A packet sent just before the wrap and delivered just after it is decrypted with ROC - 1.
#[test]
fn late_packet_from_before_the_wrap() {
    let (mut tx, mut rx) = pair(Suite::AeadAes128Gcm);
    let before = protected(&mut tx, 65534, SSRC);
    let last = protected(&mut tx, 65535, SSRC);
    let after = protected(&mut tx, 2, SSRC);
    rx.unprotect_rtp(&mut before.clone()).unwrap();
    rx.unprotect_rtp(&mut after.clone()).unwrap();
    assert_eq!(rx.highest_rtp_index_received(SSRC), Some(0x1_0002));
    let mut late = last.clone();
    rx.unprotect_rtp(&mut late).unwrap();
    assert_eq!(late, rtp(65535, SSRC, b"payload bytes"));
    assert_eq!(rx.highest_rtp_index_received(SSRC), Some(0x1_0002));
}

/// Many wraps in a row (a long call): the ROC keeps counting.
#[test]
fn several_wraps() {
    let (mut tx, mut rx) = pair(Suite::AeadAes128Gcm);
    let mut seq = 0u16;
    for _ in 0..(3 * 65536 / 1000 + 1) {
        // Send 1000 packets, deliver every 50th.
        for i in 0..1000 {
            let mut p = rtp(seq, SSRC, b"y");
            tx.protect_rtp(&mut p).unwrap();
            if i % 50 == 0 {
                rx.unprotect_rtp(&mut p).unwrap();
            }
            seq = seq.wrapping_add(1);
        }
    }
    let sent = tx.highest_rtp_index_sent(SSRC).unwrap();
    assert_eq!(sent >> 16, 3);
    assert!(rx.highest_rtp_index_received(SSRC).unwrap() >> 16 >= 2);
}

/// A forged packet (bad tag) whose sequence number would advance the index — even past a wrap —
/// changes neither the ROC nor the window: the genuine packets that follow still decrypt.
#[test]
fn forged_packet_does_not_move_roc_or_window() {
    for suite in SUITES {
        let (mut tx, mut rx) = pair(suite);
        rx.unprotect_rtp(&mut protected(&mut tx, 40_000, SSRC))
            .unwrap();
        let before = rx.highest_rtp_index_received(SSRC);

        // Would be index 0x1_0005 (ROC + 1) if believed.
        let mut forged = rtp(5, SSRC, b"evil payload");
        forged.extend_from_slice(&[0u8; 16]);
        assert_eq!(rx.unprotect_rtp(&mut forged), Err(Error::AuthFailed));
        // A genuine packet with a different key but the same layout also fails.
        let mut other =
            hush_srtp::SrtpContext::new(suite, &common::key(suite, 1), &common::salt(2)).unwrap();
        let mut foreign = protected(&mut other, 40_001, SSRC);
        assert_eq!(rx.unprotect_rtp(&mut foreign), Err(Error::AuthFailed));
        assert_eq!(rx.highest_rtp_index_received(SSRC), before);

        // Genuine packets right after 40_000 are still accepted (window not advanced) ...
        for seq in 40_001..40_010 {
            rx.unprotect_rtp(&mut protected(&mut tx, seq, SSRC))
                .unwrap();
        }
        // ... and the sender's real next packets with ROC 0 too.
        assert_eq!(rx.highest_rtp_index_received(SSRC), Some(40_009));
    }
}

/// A forged packet for an unknown SSRC creates no state (so it cannot fill the SSRC table).
#[test]
fn forged_new_ssrc_creates_no_state() {
    let config = SrtpConfig::builder().max_ssrcs(2).build().unwrap();
    let (_, mut rx) = pair_with(Suite::AeadAes128Gcm, config);
    let (mut tx, _) = pair(Suite::AeadAes128Gcm);
    for ssrc in 100..200 {
        let mut forged = rtp(1, ssrc, b"evil");
        forged.extend_from_slice(&[0xee; 16]);
        assert_eq!(rx.unprotect_rtp(&mut forged), Err(Error::AuthFailed));
        let mut forged = rtcp(ssrc, b"evil");
        forged.extend_from_slice(&[0xee; 20]);
        assert_eq!(rx.unprotect_rtcp(&mut forged), Err(Error::AuthFailed));
        assert_eq!(rx.highest_rtp_index_received(ssrc), None);
    }
    // Two genuine SSRCs still fit; a third is refused.
    rx.unprotect_rtp(&mut protected(&mut tx, 1, 1)).unwrap();
    rx.unprotect_rtp(&mut protected(&mut tx, 1, 2)).unwrap();
    assert_eq!(
        rx.unprotect_rtp(&mut protected(&mut tx, 1, 3)),
        Err(Error::TooManySsrcs { limit: 2 })
    );
    // Removing one makes room.
    assert!(rx.remove_ssrc(1));
    rx.unprotect_rtp(&mut protected(&mut tx, 2, 3)).unwrap();
}

/// A forged SRTCP packet with a high index does not advance the SRTCP window.
#[test]
fn forged_srtcp_does_not_move_window() {
    let (mut tx, mut rx) = pair(Suite::AeadAes128Gcm);
    let mut first = rtcp(SSRC, b"sr");
    tx.protect_rtcp(&mut first).unwrap();
    rx.unprotect_rtcp(&mut first).unwrap();
    let mut forged = rtcp(SSRC, b"xx");
    forged.extend_from_slice(&[0u8; 16]);
    forged.extend_from_slice(&(0x8000_0000u32 | 100_000).to_be_bytes());
    assert_eq!(rx.unprotect_rtcp(&mut forged), Err(Error::AuthFailed));
    assert_eq!(rx.highest_rtcp_index_received(SSRC), Some(1));
    let mut second = rtcp(SSRC, b"rr");
    tx.protect_rtcp(&mut second).unwrap();
    rx.unprotect_rtcp(&mut second).unwrap();
}

/// Many SSRCs in one context each keep their own ROC and window.
#[test]
fn ssrcs_are_independent() {
    let (mut tx, mut rx) = pair(Suite::AeadAes256Gcm);
    for ssrc in 0..20u32 {
        let start = (ssrc as u16).wrapping_mul(3000);
        for i in 0..5u16 {
            let mut p = rtp(start.wrapping_add(i), ssrc, &ssrc.to_be_bytes());
            tx.protect_rtp(&mut p).unwrap();
            rx.unprotect_rtp(&mut p).unwrap();
        }
    }
    for ssrc in 0..20u32 {
        let start = u64::from((ssrc as u16).wrapping_mul(3000));
        assert_eq!(rx.highest_rtp_index_received(ssrc), Some(start + 4));
    }
    // A replay of SSRC 3's packet is caught, SSRC 4's same sequence number is not confused.
    let mut p = rtp(9010, 3, b"z");
    tx.protect_rtp(&mut p).unwrap();
    rx.unprotect_rtp(&mut p.clone()).unwrap();
    assert!(matches!(
        rx.unprotect_rtp(&mut p),
        Err(Error::Replayed { ssrc: 3, .. })
    ));
}

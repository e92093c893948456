//! Packet limits per key, nonce-reuse refusal on the sending side, and key epochs (rekey with an
//! overlap for packets in flight).

mod common;

use common::{key, pair, pair_with, protected, rtcp, rtp, salt, SUITES};
use hush_srtp::{Error, SrtpConfig, SrtpContext, Suite};

const SSRC: u32 = 0x0102_0304;

#[test]
fn sender_refuses_to_reuse_an_index() {
    for suite in SUITES {
        let (mut tx, _) = pair(suite);
        protected(&mut tx, 500, SSRC);
        protected(&mut tx, 498, SSRC); // out of order is fine
        let mut again = rtp(500, SSRC, b"different payload");
        assert_eq!(
            tx.protect_rtp(&mut again),
            Err(Error::IndexReused {
                ssrc: SSRC,
                index: 500
            })
        );
        // Unchanged on error.
        assert_eq!(again, rtp(500, SSRC, b"different payload"));
        // Behind the window cannot be checked, so it is refused too.
        protected(&mut tx, 1000, SSRC);
        assert!(matches!(
            tx.protect_rtp(&mut rtp(900, SSRC, b"")),
            Err(Error::IndexReused { .. })
        ));
    }
}

#[test]
fn srtp_packet_limit_is_enforced_and_rekey_resets_it() {
    let config = SrtpConfig::builder().srtp_packet_limit(3).build().unwrap();
    let (mut tx, mut rx) = pair_with(Suite::AeadAes128Gcm, config);
    for seq in 0..3 {
        rx.unprotect_rtp(&mut protected(&mut tx, seq, SSRC))
            .unwrap();
    }
    let mut p = rtp(3, SSRC, b"fourth");
    assert_eq!(tx.protect_rtp(&mut p), Err(Error::KeyExhausted));
    assert_eq!(p, rtp(3, SSRC, b"fourth"));
    // The limit counts across SSRCs: it is per key.
    assert_eq!(
        tx.protect_rtp(&mut rtp(0, SSRC + 1, b"")),
        Err(Error::KeyExhausted)
    );

    let (k, s) = (key(Suite::AeadAes128Gcm, 9), salt(9));
    tx.rekey(&k, &s).unwrap();
    rx.rekey(&k, &s).unwrap();
    tx.protect_rtp(&mut p).unwrap();
    rx.unprotect_rtp(&mut p).unwrap();
    assert_eq!(p, rtp(3, SSRC, b"fourth"));
}

#[test]
fn srtcp_packet_limit_is_enforced() {
    let config = SrtpConfig::builder().srtcp_packet_limit(2).build().unwrap();
    let (mut tx, _) = pair_with(Suite::AeadAes256Gcm, config);
    tx.protect_rtcp(&mut rtcp(SSRC, b"1")).unwrap();
    tx.protect_rtcp(&mut rtcp(SSRC + 1, b"2")).unwrap();
    assert_eq!(
        tx.protect_rtcp(&mut rtcp(SSRC, b"3")),
        Err(Error::KeyExhausted)
    );
    // SRTP is counted separately.
    protected(&mut tx, 1, SSRC);
}

/// The sender's ROC follows its sequence numbers through wraps, a half wrap at a time. (The end
/// of the 48-bit index space is covered by the unit test of the index estimation.)
#[test]
fn sender_roc_follows_half_wraps() {
    let (mut tx, _) = pair(Suite::AeadAes128Gcm);
    // Walk the sender's ROC up quickly: each jump of 0x8000 is one half wrap.
    let mut seq = 0u16;
    protected(&mut tx, seq, SSRC);
    for _ in 0..8 {
        seq = seq.wrapping_add(0x7fff);
        protected(&mut tx, seq, SSRC);
    }
    assert_eq!(tx.highest_rtp_index_sent(SSRC), Some(8 * 0x7fff));
}

/// Old-key packets still in flight after a rekey are accepted; then the old key is dropped
/// after the configured number of new-key packets, and packets under it fail.
#[test]
fn rekey_keeps_old_epoch_for_in_flight_packets() {
    for suite in SUITES {
        let config = SrtpConfig::builder()
            .rekey_grace_packets(4)
            .build()
            .unwrap();
        let (mut tx, mut rx) = pair_with(suite, config);
        let old: Vec<_> = (0..10u16).map(|s| protected(&mut tx, s, SSRC)).collect();
        let mut old_rtcp = rtcp(SSRC, b"old");
        tx.protect_rtcp(&mut old_rtcp).unwrap();

        let (k2, s2) = (key(suite, 0x77), salt(0x77));
        tx.rekey(&k2, &s2).unwrap();
        rx.rekey(&k2, &s2).unwrap();
        assert_eq!(rx.epoch(), 1);
        assert!(rx.has_previous_epoch());

        // Sender switches at once: its packets only open with the new key.
        let new: Vec<_> = (10..20u16).map(|s| protected(&mut tx, s, SSRC)).collect();
        let mut fresh = SrtpContext::new(suite, &k2, &s2).unwrap();
        fresh.unprotect_rtp(&mut new[0].clone()).unwrap();

        // Interleaved delivery: old, new, old, new ...
        rx.unprotect_rtp(&mut old[0].clone()).unwrap();
        rx.unprotect_rtp(&mut new[0].clone()).unwrap();
        rx.unprotect_rtp(&mut old[1].clone()).unwrap();
        rx.unprotect_rtp(&mut new[1].clone()).unwrap();
        rx.unprotect_rtcp(&mut old_rtcp.clone()).unwrap();
        rx.unprotect_rtp(&mut old[2].clone()).unwrap();
        // Replay protection spans both keys.
        assert!(matches!(
            rx.unprotect_rtp(&mut old[2].clone()),
            Err(Error::Replayed { .. })
        ));
        rx.unprotect_rtp(&mut new[2].clone()).unwrap();
        assert!(rx.has_previous_epoch());
        // Fourth new-key packet: the grace count is reached, the old key goes.
        rx.unprotect_rtp(&mut new[3].clone()).unwrap();
        assert!(!rx.has_previous_epoch());
        assert_eq!(
            rx.unprotect_rtp(&mut old[3].clone()),
            Err(Error::AuthFailed)
        );
        for p in &new[4..] {
            rx.unprotect_rtp(&mut p.clone()).unwrap();
        }
    }
}

#[test]
fn rekey_grace_zero_drops_old_key_at_first_new_packet() {
    let config = SrtpConfig::builder()
        .rekey_grace_packets(0)
        .build()
        .unwrap();
    let (mut tx, mut rx) = pair_with(Suite::AeadAes128Gcm, config);
    let old = protected(&mut tx, 1, SSRC);
    let (k2, s2) = (key(Suite::AeadAes128Gcm, 3), salt(3));
    tx.rekey(&k2, &s2).unwrap();
    rx.rekey(&k2, &s2).unwrap();
    rx.unprotect_rtp(&mut protected(&mut tx, 2, SSRC)).unwrap();
    assert!(!rx.has_previous_epoch());
    assert_eq!(rx.unprotect_rtp(&mut old.clone()), Err(Error::AuthFailed));
}

#[test]
fn only_one_previous_epoch_is_kept() {
    let (mut tx, mut rx) = pair(Suite::AeadAes256Gcm);
    let first = protected(&mut tx, 1, SSRC);
    for n in 1..=2u8 {
        let (k, s) = (key(Suite::AeadAes256Gcm, n), salt(n));
        tx.rekey(&k, &s).unwrap();
        rx.rekey(&k, &s).unwrap();
    }
    // Two rekeys later, the first key is gone.
    assert_eq!(rx.unprotect_rtp(&mut first.clone()), Err(Error::AuthFailed));
    rx.unprotect_rtp(&mut protected(&mut tx, 2, SSRC)).unwrap();
    assert!(rx.drop_previous_epoch());
    assert!(!rx.drop_previous_epoch());
}

#[test]
fn rekey_with_bad_lengths_changes_nothing() {
    let (mut tx, mut rx) = pair(Suite::AeadAes128Gcm);
    assert_eq!(
        tx.rekey(&[0u8; 32], &[0u8; 12]),
        Err(Error::BadKeyLength {
            expected: 16,
            got: 32
        })
    );
    assert!(matches!(
        tx.rekey(&[0u8; 16], &[0u8; 14]),
        Err(Error::BadSaltLength {
            expected: 12,
            got: 14
        })
    ));
    assert_eq!(tx.epoch(), 0);
    rx.unprotect_rtp(&mut protected(&mut tx, 1, SSRC)).unwrap();
}

#[test]
fn constructor_checks_lengths() {
    assert!(matches!(
        SrtpContext::new(Suite::AeadAes256Gcm, &[0u8; 16], &[0u8; 12]),
        Err(Error::BadKeyLength {
            expected: 32,
            got: 16
        })
    ));
    assert!(matches!(
        SrtpContext::new(Suite::AeadAes128Gcm, &[0u8; 16], &[0u8; 14]),
        Err(Error::BadSaltLength { .. })
    ));
}

#[test]
fn debug_output_has_no_key_material() {
    let k = [0xabu8; 16];
    let s = [0xcdu8; 12];
    let ctx = SrtpContext::new(Suite::AeadAes128Gcm, &k, &s).unwrap();
    let text = format!("{ctx:?}");
    assert!(text.contains("redacted"));
    assert!(!text.to_lowercase().contains("abab"));
    assert!(!text.contains("171, 171"));
    assert!(!text.contains("205, 205"));
}

#[test]
fn different_keys_or_directions_do_not_interoperate() {
    let a = SrtpContext::new(
        Suite::AeadAes128Gcm,
        &key(Suite::AeadAes128Gcm, 1),
        &salt(1),
    );
    let mut a = a.unwrap();
    // Same key, different salt.
    let mut b = SrtpContext::new(
        Suite::AeadAes128Gcm,
        &key(Suite::AeadAes128Gcm, 1),
        &salt(2),
    )
    .unwrap();
    assert_eq!(
        b.unprotect_rtp(&mut protected(&mut a, 1, SSRC)),
        Err(Error::AuthFailed)
    );
}

/// Removing a sending SSRC retires it for the key: the stream cannot start again at the same
/// packet indices (the same AES-GCM nonces, which would leak the XOR of two plaintexts and the
/// GHASH key). Before, the second packet below was protected under the nonce of the first.
#[test]
fn removed_send_ssrc_is_retired_for_the_key() {
    for suite in SUITES {
        let (mut tx, mut rx) = pair(suite);
        let mut first = rtp(7, SSRC, b"first secret");
        tx.protect_rtp(&mut first).unwrap();
        let mut first_rtcp = rtcp(SSRC, b"report 1");
        tx.protect_rtcp(&mut first_rtcp).unwrap();
        assert!(tx.remove_ssrc(SSRC));

        let mut again = rtp(7, SSRC, b"other secret");
        assert_eq!(
            tx.protect_rtp(&mut again),
            Err(Error::SsrcRetired { ssrc: SSRC })
        );
        assert_eq!(again, rtp(7, SSRC, b"other secret"), "unchanged on error");
        let mut again_rtcp = rtcp(SSRC, b"report 2");
        assert_eq!(
            tx.protect_rtcp(&mut again_rtcp),
            Err(Error::SsrcRetired { ssrc: SSRC })
        );
        // Other SSRCs are unaffected, and removing again changes nothing.
        rx.unprotect_rtp(&mut protected(&mut tx, 7, SSRC + 1))
            .unwrap();
        assert!(!tx.remove_ssrc(SSRC));

        // Under a new key the SSRC may start again.
        let (k, s) = (key(suite, 3), salt(3));
        tx.rekey(&k, &s).unwrap();
        rx.rekey(&k, &s).unwrap();
        tx.protect_rtp(&mut again).unwrap();
        rx.unprotect_rtp(&mut first).unwrap();
        assert_eq!(first, rtp(7, SSRC, b"first secret"));
        tx.protect_rtcp(&mut again_rtcp).unwrap();
        rx.unprotect_rtcp(&mut again_rtcp).unwrap();
        assert_eq!(again_rtcp, rtcp(SSRC, b"report 2"));
    }
}

/// A retired SSRC keeps its place in `max_ssrcs` until the next key, so retiring takes bounded
/// memory; a receiving context frees the place at once.
#[test]
fn retired_ssrcs_hold_their_place_until_rekey() {
    let config = SrtpConfig::builder().max_ssrcs(2).build().unwrap();
    let (mut tx, mut rx) = pair_with(Suite::AeadAes128Gcm, config);
    for ssrc in [1, 2] {
        rx.unprotect_rtp(&mut protected(&mut tx, 1, ssrc)).unwrap();
    }
    assert!(tx.remove_ssrc(1));
    assert_eq!(
        tx.protect_rtp(&mut rtp(1, 3, b"")),
        Err(Error::TooManySsrcs { limit: 2 })
    );
    assert!(rx.remove_ssrc(1));
    let (k, s) = (key(Suite::AeadAes128Gcm, 4), salt(4));
    tx.rekey(&k, &s).unwrap();
    rx.rekey(&k, &s).unwrap();
    rx.unprotect_rtp(&mut protected(&mut tx, 1, 3)).unwrap();
}

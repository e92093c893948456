//! Fuzzes `SrtpContext::unprotect_rtp` with raw packets and, to reach the replay window, ROC
//! estimation and key epochs, with genuine packets protected by a sender context and then
//! delivered out of order, replayed, truncated or tampered with.
//!
//! Input: a control byte (suite, replay window), then operations `op len bytes[len]`.
#![no_main]

use hush_srtp::{SrtpConfig, SrtpContext, Suite};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, mut rest)) = data.split_first() else {
        return;
    };
    let suite = if ctl & 1 == 0 {
        Suite::AeadAes128Gcm
    } else {
        Suite::AeadAes256Gcm
    };
    let config = SrtpConfig::builder()
        .replay_window(64 << ((ctl >> 1) & 3))
        .max_ssrcs(4)
        .rekey_grace_packets(u64::from(ctl >> 4))
        .build()
        .expect("valid config");
    let key = vec![0x42; suite.key_len()];
    let salt = [0x24; 12];
    let mut tx = SrtpContext::with_config(suite, &key, &salt, config.clone()).expect("keys");
    let mut rx = SrtpContext::with_config(suite, &key, &salt, config).expect("keys");
    let mut sent: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();

    while let Some((&op, r)) = rest.split_first() {
        let Some((&len, r)) = r.split_first() else {
            break;
        };
        let take = usize::from(len).min(r.len());
        let (bytes, r) = r.split_at(take);
        rest = r;
        match op % 4 {
            // Raw bytes straight into the receiver.
            0 => {
                let mut p = bytes.to_vec();
                let before = p.len();
                if rx.unprotect_rtp(&mut p).is_ok() {
                    assert_eq!(p.len() + Suite::RTP_OVERHEAD, before);
                }
            }
            // Protect an RTP packet built from the bytes (sequence number from the op byte).
            1 => {
                let mut p = vec![0x80, 96, op, len, 0, 0, 0, 0, 0, 0, 0, op & 3];
                p.extend_from_slice(bytes);
                let plain = p.clone();
                if tx.protect_rtp(&mut p).is_ok() {
                    sent.push((plain, p));
                }
            }
            // Deliver a protected packet (maybe again), maybe tampered or cut.
            2 if !sent.is_empty() => {
                let (plain, protected) = &sent[usize::from(len) % sent.len()];
                let mut p = protected.clone();
                let tampered = match bytes.first() {
                    Some(&b) if b & 1 == 1 && !p.is_empty() => {
                        let i = usize::from(b >> 1) % p.len();
                        p[i] ^= bytes.get(1).copied().unwrap_or(1) | 1;
                        true
                    }
                    Some(&b) if b & 2 == 2 => {
                        p.truncate(usize::from(b) % p.len());
                        true
                    }
                    _ => false,
                };
                if rx.unprotect_rtp(&mut p).is_ok() {
                    assert!(!tampered, "tampered packet accepted");
                    assert_eq!(&p, plain);
                }
            }
            // Rekey both sides.
            3 => {
                let k = vec![len; suite.key_len()];
                tx.rekey(&k, &salt).expect("key length");
                rx.rekey(&k, &salt).expect("key length");
            }
            _ => {}
        }
    }
});

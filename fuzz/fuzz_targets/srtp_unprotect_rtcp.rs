//! Fuzzes `SrtpContext::unprotect_rtcp` with raw packets and with genuine SRTCP packets
//! delivered out of order, replayed, truncated, tampered with, or with the E flag cleared.
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
        .build()
        .expect("valid config");
    let key = vec![0x17; suite.key_len()];
    let salt = [0x71; 12];
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
            0 => {
                let mut p = bytes.to_vec();
                let before = p.len();
                if rx.unprotect_rtcp(&mut p).is_ok() {
                    assert_eq!(p.len() + Suite::RTCP_OVERHEAD, before);
                }
            }
            1 => {
                let mut p = vec![0x80, 200, 0, 6, 0, 0, 0, op & 3];
                p.extend_from_slice(bytes);
                let plain = p.clone();
                if tx.protect_rtcp(&mut p).is_ok() {
                    sent.push((plain, p));
                }
            }
            2 if !sent.is_empty() => {
                let (plain, protected) = &sent[usize::from(len) % sent.len()];
                let mut p = protected.clone();
                let tampered = match bytes.first() {
                    Some(&b) if b & 1 == 1 => {
                        let i = usize::from(b >> 1) % p.len();
                        p[i] ^= bytes.get(1).copied().unwrap_or(1) | 1;
                        true
                    }
                    Some(&b) if b & 2 == 2 => {
                        p.truncate(usize::from(b) % p.len());
                        true
                    }
                    Some(&b) if b & 4 == 4 => {
                        // Clear the E flag: claims "not encrypted".
                        let at = p.len() - 4;
                        p[at] &= 0x7f;
                        true
                    }
                    _ => false,
                };
                if rx.unprotect_rtcp(&mut p).is_ok() {
                    assert!(!tampered, "tampered packet accepted");
                    assert_eq!(&p, plain);
                }
            }
            3 => {
                let k = vec![len; suite.key_len()];
                tx.rekey(&k, &salt).expect("key length");
                rx.rekey(&k, &salt).expect("key length");
            }
            _ => {}
        }
    }
});

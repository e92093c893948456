//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use hush_srtp::{SrtpConfig, SrtpContext, Suite};

pub const SUITES: [Suite; 2] = [Suite::AeadAes128Gcm, Suite::AeadAes256Gcm];

pub fn key(suite: Suite, fill: u8) -> Vec<u8> {
    (0..suite.key_len() as u8).map(|i| i ^ fill).collect()
}

pub fn salt(fill: u8) -> Vec<u8> {
    (0..12u8).map(|i| i.wrapping_mul(7) ^ fill).collect()
}

/// A sender and a receiver context sharing one master key.
pub fn pair(suite: Suite) -> (SrtpContext, SrtpContext) {
    pair_with(suite, SrtpConfig::default())
}

pub fn pair_with(suite: Suite, config: SrtpConfig) -> (SrtpContext, SrtpContext) {
    let k = key(suite, 0x5a);
    let s = salt(0xa5);
    (
        SrtpContext::with_config(suite, &k, &s, config.clone()).unwrap(),
        SrtpContext::with_config(suite, &k, &s, config).unwrap(),
    )
}

/// An RTP packet with the given fields and payload.
pub fn rtp(seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(12 + payload.len() + Suite::RTP_OVERHEAD);
    p.extend_from_slice(&[0x80, 96]);
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// An RTCP receiver report (no report blocks) followed by `extra` bytes.
pub fn rtcp(ssrc: u32, extra: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, 201, 0, 1];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(extra);
    p
}

/// Protects `seq` for `ssrc` with `tx`.
pub fn protected(tx: &mut SrtpContext, seq: u16, ssrc: u32) -> Vec<u8> {
    let mut p = rtp(seq, ssrc, b"payload bytes");
    tx.protect_rtp(&mut p).unwrap();
    p
}

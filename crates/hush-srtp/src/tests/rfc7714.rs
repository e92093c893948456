//! RFC 7714 §16 (SRTP) and §17 (SRTCP) test vectors, both suites.
//!
//! The RFC gives session keys and salts, not master keys: key `00 01 .. 0f` (or `.. 1f`) and
//! salt "Quid pro quo". The SRTCP examples of §17.1-17.4 encrypt the packet with SSRC "Mars"
//! and SRTCP index 0x5d4.

use crate::{Error, SrtpContext, Suite};

const KEY_128: &str = "000102030405060708090a0b0c0d0e0f";
const KEY_256: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const SALT: &str = "517569642070726f2071756f";

/// §16: "Gallia est omnis divisa in partes tres" after a 12-byte header, SEQ 0xf17b,
/// SSRC 0x5501a0b2, ROC 0.
const RTP: &str = concat!(
    "8040f17b8041f8d35501a0b2",
    "47616c6c696120657374206f6d6e697320646976697361",
    "20696e207061727465732074726573"
);

/// §16.1.1, AEAD_AES_128_GCM.
const SRTP_128: &str = concat!(
    "8040f17b8041f8d35501a0b2",
    "f24de3a3fb34de6cacba861c9d7e4bcabe633bd50d294e6f42a5f47a51c7d19b36de3adf8833",
    "899d7f27beb16a9152cf765ee4390cce"
);

/// §16.2.1, AEAD_AES_256_GCM.
const SRTP_256: &str = concat!(
    "8040f17b8041f8d35501a0b2",
    "32b1de78a822fe12ef9f78fa332e33aab18012389a58e2f3b50b2a0276ffae0f1ba63799b87b",
    "7aa3db36dfffd6b0f9bb7878d7a76c13"
);

/// §17.1-17.4: the RTCP packet of SSRC "Mars" that the examples protect.
const RTCP: &str = concat!(
    "81c8000d4d6172734e5450314e545032525450200000042a0000e9304c756e61",
    "deadbeefdeadbeefdeadbeefdeadbeefdeadbeef"
);

/// §17.1, AEAD_AES_128_GCM, encrypted, index 0x5d4.
const SRTCP_128: &str = concat!(
    "81c8000d4d617273",
    "63e94885dcdab67ca727d7662f6b7e997ff5c0f76c06f32dc676a5f1730d6fda4ce09b46",
    "86303ded0bb9275bc84aa45896cf4d2f",
    "c5abf87245d9eade",
    "800005d4"
);

/// §17.2, AEAD_AES_256_GCM, encrypted, index 0x5d4.
const SRTCP_256: &str = concat!(
    "81c8000d4d617273",
    "d50ae4d1f5ce5d304ba297e47d470c282c3ece5dbffe0a50a2eaa5c1110555be8415f658",
    "c61de0476f1b6fad1d1eb30c4446839f",
    "57ff6f6cb26ac3be",
    "800005d4"
);

/// §17.3, AEAD_AES_128_GCM, authenticated only (E flag clear), index 0x5d4.
const SRTCP_128_AUTH_ONLY: &str = concat!(
    "81c8000d4d6172734e5450314e545032525450200000042a0000e9304c756e61",
    "deadbeefdeadbeefdeadbeefdeadbeefdeadbeef",
    "841dd9683dd78ec92ae58790125f62b3",
    "000005d4"
);

const RTCP_SSRC: u32 = 0x4d61_7273;

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

fn context(suite: Suite) -> SrtpContext {
    let key = match suite {
        Suite::AeadAes128Gcm => h(KEY_128),
        Suite::AeadAes256Gcm => h(KEY_256),
    };
    let salt: [u8; 12] = h(SALT).try_into().unwrap();
    SrtpContext::from_session_keys(suite, &key, salt, &key, salt)
}

fn check_srtp(suite: Suite, expected: &str) {
    let mut packet = h(RTP);
    context(suite).protect_rtp(&mut packet).unwrap();
    assert_eq!(hex::encode(&packet), expected, "{suite} protect");

    let mut rx = context(suite);
    rx.unprotect_rtp(&mut packet).unwrap();
    assert_eq!(hex::encode(&packet), RTP, "{suite} unprotect");
    assert_eq!(rx.highest_rtp_index_received(0x5501_a0b2), Some(0xf17b));
}

fn check_srtcp(suite: Suite, expected: &str) {
    let mut tx = context(suite);
    tx.set_next_srtcp_index(RTCP_SSRC, 0x5d4);
    let mut packet = h(RTCP);
    tx.protect_rtcp(&mut packet).unwrap();
    assert_eq!(hex::encode(&packet), expected, "{suite} protect");
    assert_eq!(tx.last_rtcp_index_sent(RTCP_SSRC), Some(0x5d4));

    let mut rx = context(suite);
    rx.unprotect_rtcp(&mut packet).unwrap();
    assert_eq!(hex::encode(&packet), RTCP, "{suite} unprotect");
    assert_eq!(rx.highest_rtcp_index_received(RTCP_SSRC), Some(0x5d4));
}

#[test]
fn rfc7714_16_1_srtp_aead_aes_128_gcm() {
    check_srtp(Suite::AeadAes128Gcm, SRTP_128);
}

#[test]
fn rfc7714_16_2_srtp_aead_aes_256_gcm() {
    check_srtp(Suite::AeadAes256Gcm, SRTP_256);
}

#[test]
fn rfc7714_17_1_srtcp_aead_aes_128_gcm() {
    check_srtcp(Suite::AeadAes128Gcm, SRTCP_128);
}

#[test]
fn rfc7714_17_2_srtcp_aead_aes_256_gcm() {
    check_srtcp(Suite::AeadAes256Gcm, SRTCP_256);
}

#[test]
fn rfc7714_17_3_srtcp_authenticated_only() {
    let mut packet = h(SRTCP_128_AUTH_ONLY);
    let mut rx = context(Suite::AeadAes128Gcm);
    rx.unprotect_rtcp(&mut packet).unwrap();
    assert_eq!(hex::encode(&packet), RTCP);
    // Replaying it is refused; flipping a byte of the clear payload fails authentication.
    let mut again = h(SRTCP_128_AUTH_ONLY);
    assert_eq!(
        rx.unprotect_rtcp(&mut again),
        Err(Error::Replayed {
            ssrc: RTCP_SSRC,
            index: 0x5d4
        })
    );
    let mut tampered = h(SRTCP_128_AUTH_ONLY);
    tampered[20] ^= 1;
    assert_eq!(
        context(Suite::AeadAes128Gcm).unprotect_rtcp(&mut tampered),
        Err(Error::AuthFailed)
    );
}

/// Every single-bit change of the vector packets is refused (RFC 7714 §16.1.2 / §17.4 show
/// decryption; this is the negative side).
#[test]
fn rfc7714_vectors_tampered_fail() {
    for (suite, srtp, srtcp) in [
        (Suite::AeadAes128Gcm, SRTP_128, SRTCP_128),
        (Suite::AeadAes256Gcm, SRTP_256, SRTCP_256),
    ] {
        let srtp = h(srtp);
        for i in 0..srtp.len() {
            let mut p = srtp.clone();
            p[i] ^= 0x01;
            let r = context(suite).unprotect_rtp(&mut p);
            assert!(r.is_err(), "{suite} srtp byte {i} accepted");
        }
        let srtcp = h(srtcp);
        for i in 0..srtcp.len() {
            let mut p = srtcp.clone();
            p[i] ^= 0x01;
            let r = context(suite).unprotect_rtcp(&mut p);
            assert!(r.is_err(), "{suite} srtcp byte {i} accepted");
        }
    }
}

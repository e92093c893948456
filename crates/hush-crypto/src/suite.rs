//! SRTP protection suites as hush-crypto negotiates them.
//!
//! The suite type is `hush_srtp::Suite`, so negotiated keys feed straight into
//! `hush_srtp::SrtpContext`. On the wire a suite is its IANA "DTLS-SRTP Protection Profile"
//! number (RFC 7714 §14.2): `0x0007` for AEAD_AES_128_GCM and `0x0008` for AEAD_AES_256_GCM.
//! Using the registry numbers keeps codes stable and lets other implementations map them
//! without a hush-specific table.

pub use hush_srtp::Suite;

/// Length of an SRTP master salt for the AEAD suites (RFC 7714 §12: 96 bits).
pub const MASTER_SALT_LEN: usize = Suite::SALT_LEN;

/// The IANA protection-profile number of `suite`.
pub const fn suite_code(suite: Suite) -> u16 {
    suite.dtls_srtp_profile()
}

/// The suite with IANA protection-profile number `code`, if hush supports it.
pub const fn suite_from_code(code: u16) -> Option<Suite> {
    match code {
        0x0007 => Some(Suite::AeadAes128Gcm),
        0x0008 => Some(Suite::AeadAes256Gcm),
        _ => None,
    }
}

/// Length of the SRTP master key for `suite` (16 or 32 bytes).
pub const fn master_key_len(suite: Suite) -> usize {
    suite.key_len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for s in [Suite::AeadAes128Gcm, Suite::AeadAes256Gcm] {
            assert_eq!(suite_from_code(suite_code(s)), Some(s));
        }
        assert_eq!(suite_from_code(0x0001), None);
    }
}

//! The protection suites: which AEAD, and the key, salt and tag lengths that go with it.

/// An SRTP protection suite (RFC 7714).
///
/// Both suites use a 12-byte master salt (RFC 7714 §12: GCM takes a 96-bit salt, not the 112-bit
/// salt of the AES-CM suites), a 12-byte session salt and a 16-byte authentication tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Suite {
    /// `AEAD_AES_128_GCM`: 16-byte master key (DTLS-SRTP profile `SRTP_AEAD_AES_128_GCM`).
    AeadAes128Gcm,
    /// `AEAD_AES_256_GCM`: 32-byte master key (DTLS-SRTP profile `SRTP_AEAD_AES_256_GCM`).
    AeadAes256Gcm,
}

impl Suite {
    /// Length of the authentication tag every protected packet carries, in bytes.
    pub const TAG_LEN: usize = 16;
    /// Length of the master salt and of the derived session salts, in bytes.
    pub const SALT_LEN: usize = 12;
    /// Bytes that [`SrtpContext::protect_rtp`](crate::SrtpContext::protect_rtp) appends to a packet.
    pub const RTP_OVERHEAD: usize = Self::TAG_LEN;
    /// Bytes that [`SrtpContext::protect_rtcp`](crate::SrtpContext::protect_rtcp) appends to a
    /// packet: the tag and the 4-byte E-flag/SRTCP-index word.
    pub const RTCP_OVERHEAD: usize = Self::TAG_LEN + 4;

    /// Length of the master key (and of the derived session keys), in bytes: 16 or 32.
    #[must_use]
    pub const fn key_len(self) -> usize {
        match self {
            Self::AeadAes128Gcm => 16,
            Self::AeadAes256Gcm => 32,
        }
    }

    /// Length of the master salt, in bytes: always 12 for these suites.
    #[must_use]
    pub const fn salt_len(self) -> usize {
        Self::SALT_LEN
    }

    /// Length of the authentication tag, in bytes: always 16 for these suites.
    #[must_use]
    pub const fn tag_len(self) -> usize {
        Self::TAG_LEN
    }

    /// The suite's name as registered for SDES (RFC 7714 §14.1), e.g. `"AEAD_AES_128_GCM"`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::AeadAes128Gcm => "AEAD_AES_128_GCM",
            Self::AeadAes256Gcm => "AEAD_AES_256_GCM",
        }
    }

    /// The DTLS-SRTP protection profile number (RFC 7714 §14.2): `0x0007` or `0x0008`.
    #[must_use]
    pub const fn dtls_srtp_profile(self) -> u16 {
        match self {
            Self::AeadAes128Gcm => 0x0007,
            Self::AeadAes256Gcm => 0x0008,
        }
    }
}

impl core::fmt::Display for Suite {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_match_rfc7714() {
        assert_eq!(Suite::AeadAes128Gcm.key_len(), 16);
        assert_eq!(Suite::AeadAes256Gcm.key_len(), 32);
        for s in [Suite::AeadAes128Gcm, Suite::AeadAes256Gcm] {
            assert_eq!(s.salt_len(), 12);
            assert_eq!(s.tag_len(), 16);
        }
        assert_eq!(Suite::AeadAes256Gcm.to_string(), "AEAD_AES_256_GCM");
        assert_eq!(Suite::AeadAes128Gcm.dtls_srtp_profile(), 7);
    }
}

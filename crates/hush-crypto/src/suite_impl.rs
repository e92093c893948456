//! Stand-in for `hush_srtp::Suite` while that crate is being written.

/// An SRTP AEAD protection suite (RFC 7714).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Suite {
    /// AEAD_AES_128_GCM: 16-byte master key, 12-byte master salt.
    AeadAes128Gcm,
    /// AEAD_AES_256_GCM: 32-byte master key, 12-byte master salt.
    AeadAes256Gcm,
}

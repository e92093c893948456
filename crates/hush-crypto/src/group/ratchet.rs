//! The sender-key ratchet of RFC 9605 §5.1.

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::BASE_KEY_LEN;

/// The label of the RFC 9605 §5.1 ratchet.
const RATCHET_LABEL: &[u8] = b"SFrame 1.0 Ratchet";

/// One step of the RFC 9605 §5.1 ratchet for the group suite (`Nh` = 32 for SHA-256):
/// `HKDF-Expand(HKDF-Extract("", base_key), "SFrame 1.0 Ratchet", 32)`. One-way: the next
/// step's holder cannot compute the previous one.
pub fn ratchet_base_key(base: &[u8; BASE_KEY_LEN]) -> Zeroizing<[u8; BASE_KEY_LEN]> {
    let hk = Hkdf::<Sha256>::new(Some(&[]), base);
    let mut next = Zeroizing::new([0u8; BASE_KEY_LEN]);
    // 32 bytes are far below HKDF-SHA256's 8160-byte limit.
    if hk.expand(RATCHET_LABEL, &mut next[..]).is_err() {
        unreachable!("HKDF-SHA256 expands 32 bytes");
    }
    next
}

/// `steps` ratchet steps from `base`.
pub(super) fn ratchet_steps(base: &[u8; BASE_KEY_LEN], steps: u8) -> Zeroizing<[u8; BASE_KEY_LEN]> {
    let mut key = Zeroizing::new(*base);
    for _ in 0..steps {
        key = ratchet_base_key(&key);
    }
    key
}

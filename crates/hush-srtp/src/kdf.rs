//! RFC 3711 §4.3 key derivation with the AES-CM PRF, key derivation rate 0.
//!
//! For each label, `x = (label << 48) XOR master_salt` (the salt taken as a 112-bit number) and
//! the output is the AES counter-mode keystream of the master key starting at the block
//! `x * 2^16`. RFC 7714 §12 gives GCM a 96-bit master salt; like libsrtp, it is placed in the
//! leading 12 of the 14 salt bytes and the last two are zero, which is the same as taking the
//! 96-bit salt shifted left by 16 bits.

use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockEncrypt, KeyInit};
use aes::{Aes128, Aes256};
use zeroize::Zeroize;

use crate::Error;

/// Label of the SRTP encryption key.
pub(crate) const LABEL_RTP_ENCRYPTION: u8 = 0x00;
/// Label of the SRTP authentication key (not used by AEAD suites; kept for the RFC 3711 vector).
#[cfg(test)]
pub(crate) const LABEL_RTP_AUTH: u8 = 0x01;
/// Label of the SRTP salting key.
pub(crate) const LABEL_RTP_SALT: u8 = 0x02;
/// Label of the SRTCP encryption key.
pub(crate) const LABEL_RTCP_ENCRYPTION: u8 = 0x03;
/// Label of the SRTCP salting key.
pub(crate) const LABEL_RTCP_SALT: u8 = 0x05;

/// Longest master salt the AES-CM PRF takes (112 bits).
const MAX_SALT: usize = 14;

/// Fills `out` with the key stream for `label`, keyed by `master_key` (16 or 32 bytes) and
/// `master_salt` (at most 14 bytes; shorter salts are padded with zeros on the right).
pub(crate) fn derive(
    master_key: &[u8],
    master_salt: &[u8],
    label: u8,
    out: &mut [u8],
) -> Result<(), Error> {
    if master_salt.len() > MAX_SALT {
        return Err(Error::BadSaltLength {
            expected: MAX_SALT,
            got: master_salt.len(),
        });
    }
    match master_key.len() {
        16 => {
            let cipher = Aes128::new(GenericArray::from_slice(master_key));
            keystream(&cipher, master_salt, label, out);
        }
        32 => {
            let cipher = Aes256::new(GenericArray::from_slice(master_key));
            keystream(&cipher, master_salt, label, out);
        }
        got => return Err(Error::BadKeyLength { expected: 16, got }),
    }
    Ok(())
}

fn keystream<C: BlockEncrypt>(cipher: &C, master_salt: &[u8], label: u8, out: &mut [u8]) {
    let mut iv = [0u8; 16];
    iv[..master_salt.len()].copy_from_slice(master_salt);
    // key_id = label || r with r = 0 (key_derivation_rate 0): the label is the 7th byte from
    // the right of the 14-byte x, which is byte 7 of the IV.
    iv[7] ^= label;
    let mut block = GenericArray::default();
    for (counter, chunk) in out.chunks_mut(16).enumerate() {
        // Outputs here are at most 32 bytes; a u16 counter covers 1 MiB.
        let ctr = (counter as u16).to_be_bytes();
        iv[14] = ctr[0];
        iv[15] = ctr[1];
        block.copy_from_slice(&iv);
        cipher.encrypt_block(&mut block);
        chunk.copy_from_slice(&block[..chunk.len()]);
    }
    block.as_mut_slice().zeroize();
    iv.zeroize();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn derive_hex(key: &str, salt: &str, label: u8, len: usize) -> String {
        let mut out = vec![0u8; len];
        derive(
            &hex::decode(key).unwrap(),
            &hex::decode(salt).unwrap(),
            label,
            &mut out,
        )
        .unwrap();
        hex::encode(out)
    }

    /// RFC 3711 Appendix B.3 (AES-128, 112-bit salt, kdr 0, index 0).
    #[test]
    fn rfc3711_b3_key_derivation() {
        let key = "E1F97A0D3E018BE0D64FA32C06DE4139";
        let salt = "0EC675AD498AFEEBB6960B3AABE6";
        assert_eq!(
            derive_hex(key, salt, LABEL_RTP_ENCRYPTION, 16),
            "c61e7a93744f39ee10734afe3ff7a087"
        );
        assert_eq!(
            derive_hex(key, salt, LABEL_RTP_SALT, 14),
            "30cbbc08863d8c85d49db34a9ae1"
        );
        assert_eq!(
            derive_hex(key, salt, LABEL_RTP_AUTH, 94),
            concat!(
                "cebe321f6ff7716b6fd4ab49af256a156d38baa48f0a0acf3c34e2359e6cdbce",
                "e049646c43d9327ad175578ef72270986371c10c9a369ac2f94a8c5fbcdddc25",
                "6d6e919a48b610ef17c2041e474035766b68642c59bbfc2f34db60dbdfb2"
            )
        );
    }

    /// RFC 6188 §7.2 (AES-256 PRF, 112-bit salt).
    #[test]
    fn rfc6188_aes256_key_derivation() {
        let key = "f0f04914b513f2763a1b1fa130f10e2998f6f6e43e4309d1e622a0e332b9f1b6";
        let salt = "3b04803de51ee7c96423ab5b78d2";
        assert_eq!(
            derive_hex(key, salt, LABEL_RTP_ENCRYPTION, 32),
            "5ba1064e30ec51613cad926c5a28ef731ec7fb397f70a960653caf06554cd8c4"
        );
        assert_eq!(
            derive_hex(key, salt, LABEL_RTP_SALT, 14),
            "fa31791685ca444a9e07c6c64e93"
        );
        assert_eq!(
            derive_hex(key, salt, 0x01, 20),
            "fd9c32d39ed5fbb5a9dc96b30818454d1313dc05"
        );
    }

    /// A 12-byte salt is the 14-byte salt with two trailing zero bytes.
    #[test]
    fn short_salt_is_zero_padded() {
        let key = "000102030405060708090a0b0c0d0e0f";
        for label in [0u8, 2, 3, 5] {
            assert_eq!(
                derive_hex(key, "a0a1a2a3a4a5a6a7a8a9aaab", label, 16),
                derive_hex(key, "a0a1a2a3a4a5a6a7a8a9aaab0000", label, 16)
            );
        }
    }

    #[test]
    fn rejects_bad_lengths() {
        let mut out = [0u8; 16];
        assert_eq!(
            derive(&[0; 24], &[0; 12], 0, &mut out),
            Err(Error::BadKeyLength {
                expected: 16,
                got: 24
            })
        );
        assert!(matches!(
            derive(&[0; 16], &[0; 15], 0, &mut out),
            Err(Error::BadSaltLength { .. })
        ));
    }
}

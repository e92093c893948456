//! The AES-GCM backend behind the packet transforms.
//!
//! Everything above this module sees one small surface: seal in place returning a detached tag,
//! open in place against a detached tag. The default backend is RustCrypto's `aes-gcm` (AES-NI
//! and CLMUL are detected at run time); the `ring` feature switches to ring's AES-GCM (BoringSSL's
//! stitched AES-NI/CLMUL and VAES/AVX2 assembly), which is several times faster on large packets.

#[cfg(not(feature = "ring"))]
use aes_gcm::aead::generic_array::GenericArray;
#[cfg(not(feature = "ring"))]
use aes_gcm::aead::AeadInPlace;
#[cfg(not(feature = "ring"))]
use aes_gcm::{Aes128Gcm, Aes256Gcm, KeyInit};

use crate::Error;

/// Length of a GCM nonce (the SRTP IV), in bytes.
pub(crate) const NONCE_LEN: usize = 12;
/// Length of a GCM tag, in bytes.
pub(crate) const TAG_LEN: usize = 16;

/// A keyed AES-GCM instance. Its key schedule is wiped when dropped: by the `zeroize` features
/// of `aes` and `ghash`, or, with ring (which does not wipe its keys), by overwriting the key in
/// place with the schedule of an all-zero key. Boxed so that moving a context never leaves
/// copies of the key schedule behind.
pub(crate) struct Aead(Inner);

#[cfg(not(feature = "ring"))]
enum Inner {
    Aes128(Box<Aes128Gcm>),
    Aes256(Box<Aes256Gcm>),
}

#[cfg(feature = "ring")]
struct Inner {
    key: Box<ring::aead::LessSafeKey>,
    bits: u16,
}

#[cfg(not(feature = "ring"))]
impl Aead {
    /// Whether [`Aead::open`] leaves `buf` untouched when the tag does not verify. The
    /// `aes-gcm` backend (0.10.3 and later) checks the tag before it decrypts anything.
    pub(crate) const OPEN_PRESERVES_ON_FAILURE: bool = true;

    /// Keys an instance with a 16- or 32-byte session key.
    pub(crate) fn new(key: &[u8]) -> Result<Self, Error> {
        match key.len() {
            16 => Ok(Self(Inner::Aes128(Box::new(Aes128Gcm::new(
                GenericArray::from_slice(key),
            ))))),
            32 => Ok(Self(Inner::Aes256(Box::new(Aes256Gcm::new(
                GenericArray::from_slice(key),
            ))))),
            got => Err(Error::BadKeyLength { expected: 16, got }),
        }
    }

    /// Encrypts `buf` in place and returns the tag over `aad` and the ciphertext.
    #[inline]
    pub(crate) fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], Error> {
        let nonce = GenericArray::from_slice(nonce);
        let tag = match &self.0 {
            Inner::Aes128(c) => c.encrypt_in_place_detached(nonce, aad, buf),
            Inner::Aes256(c) => c.encrypt_in_place_detached(nonce, aad, buf),
        }
        .map_err(|_| Error::Internal("AES-GCM refused to encrypt"))?;
        Ok(tag.into())
    }

    /// Verifies `tag` over `aad` and the ciphertext in `buf`, then decrypts `buf` in place.
    #[inline]
    pub(crate) fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), Error> {
        let nonce = GenericArray::from_slice(nonce);
        let tag = GenericArray::from_slice(tag);
        match &self.0 {
            Inner::Aes128(c) => c.decrypt_in_place_detached(nonce, aad, buf, tag),
            Inner::Aes256(c) => c.decrypt_in_place_detached(nonce, aad, buf, tag),
        }
        .map_err(|_| Error::AuthFailed)
    }

    fn bits(&self) -> u16 {
        match self.0 {
            Inner::Aes128(_) => 128,
            Inner::Aes256(_) => 256,
        }
    }
}

#[cfg(feature = "ring")]
impl Drop for Inner {
    fn drop(&mut self) {
        // ring keeps the expanded key inline in `LessSafeKey` and has no zeroize support:
        // assigning through the box rewrites the same heap bytes with an all-zero key's
        // schedule before the allocation is freed; `black_box` keeps the store from being
        // optimized away as dead.
        let alg = if self.bits == 256 {
            &ring::aead::AES_256_GCM
        } else {
            &ring::aead::AES_128_GCM
        };
        let zero = [0u8; 32];
        if let Ok(k) = ring::aead::UnboundKey::new(alg, &zero[..alg.key_len()]) {
            *self.key = ring::aead::LessSafeKey::new(k);
            std::hint::black_box(&*self.key);
        }
    }
}

#[cfg(feature = "ring")]
impl Aead {
    /// ring decrypts and authenticates in one pass and zeroes the buffer when the tag is wrong.
    pub(crate) const OPEN_PRESERVES_ON_FAILURE: bool = false;

    /// Keys an instance with a 16- or 32-byte session key.
    pub(crate) fn new(key: &[u8]) -> Result<Self, Error> {
        let (alg, bits) = match key.len() {
            16 => (&ring::aead::AES_128_GCM, 128),
            32 => (&ring::aead::AES_256_GCM, 256),
            got => return Err(Error::BadKeyLength { expected: 16, got }),
        };
        let unbound = ring::aead::UnboundKey::new(alg, key)
            .map_err(|_| Error::Internal("ring refused the key"))?;
        Ok(Self(Inner {
            key: Box::new(ring::aead::LessSafeKey::new(unbound)),
            bits,
        }))
    }

    /// Encrypts `buf` in place and returns the tag over `aad` and the ciphertext.
    #[inline]
    pub(crate) fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], Error> {
        let tag = self
            .0
            .key
            .seal_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(*nonce),
                ring::aead::Aad::from(aad),
                buf,
            )
            .map_err(|_| Error::Internal("AES-GCM refused to encrypt"))?;
        tag.as_ref()
            .try_into()
            .map_err(|_| Error::Internal("AES-GCM tag length"))
    }

    /// Verifies `tag` over `aad` and the ciphertext in `buf`, then decrypts `buf` in place.
    #[inline]
    pub(crate) fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), Error> {
        self.0
            .key
            .open_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(*nonce),
                ring::aead::Aad::from(aad),
                ring::aead::Tag::from(*tag),
                buf,
                0..,
            )
            .map(|_| ())
            .map_err(|_| Error::AuthFailed)
    }

    fn bits(&self) -> u16 {
        self.0.bits
    }
}

impl core::fmt::Debug for Aead {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Aead(AES-{}-GCM, key redacted)", self.bits())
    }
}

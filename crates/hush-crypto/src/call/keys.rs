//! The key schedule of a call: transcript, HKDF-SHA256, per-direction SRTP master keys, and the
//! one-way epoch ratchet. `docs/crypto.md` is the normative description of every byte here.

use std::fmt;
use std::ops::Deref;

use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::CallId;
use crate::error::{Error, Result};
use crate::suite::{master_key_len, Suite, MASTER_SALT_LEN};

/// Domain label that opens every transcript.
pub(crate) const TRANSCRIPT_LABEL: &[u8] = b"HUSH-CALL";
/// HKDF-Expand label of the caller-to-callee SRTP master key and salt.
pub(crate) const LABEL_CALLER_TO_CALLEE: &[u8] = b"hush v1 srtp caller to callee";
/// HKDF-Expand label of the callee-to-caller SRTP master key and salt.
pub(crate) const LABEL_CALLEE_TO_CALLER: &[u8] = b"hush v1 srtp callee to caller";
/// HKDF-Expand label of the answer's key confirmation value.
pub(crate) const LABEL_CONFIRM: &[u8] = b"hush v1 answer confirm";
/// HKDF-Expand label of the next epoch secret.
pub(crate) const LABEL_NEXT_EPOCH: &[u8] = b"hush v1 next epoch";
/// Length of the key confirmation value in an answer.
pub const CONFIRM_LEN: usize = 32;

/// Which end of a call this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The device that sent the offer.
    Caller,
    /// The device that answered.
    Callee,
}

/// Secret bytes (an SRTP master key or salt): zeroized on drop, redacted in `Debug`,
/// compared in constant time. Dereferences to `&[u8]`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretBytes(Box<[u8]>);

impl SecretBytes {
    pub(crate) fn new(bytes: &[u8]) -> Self {
        Self(bytes.into())
    }

    /// The bytes. Prefer passing them straight to the SRTP context over copying them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl Deref for SecretBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for SecretBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl PartialEq for SecretBytes {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for SecretBytes {}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<{} bytes redacted>)", self.0.len())
    }
}

/// The media keys of one call at one epoch: an SRTP master key and salt per direction, sized
/// for `suite`. Zeroized on drop; `Debug` prints no secret.
///
/// Feed `send_*` to the SRTP context that protects outgoing packets and `recv_*` to the one that
/// unprotects incoming packets. The caller's `send_*` equal the callee's `recv_*` and vice versa.
pub struct MediaKeys {
    /// The negotiated SRTP suite.
    pub suite: Suite,
    /// Master key for packets this device sends.
    pub send_key: SecretBytes,
    /// Master salt for packets this device sends.
    pub send_salt: SecretBytes,
    /// Master key for packets this device receives.
    pub recv_key: SecretBytes,
    /// Master salt for packets this device receives.
    pub recv_salt: SecretBytes,
    side: Side,
    call_id: CallId,
    epoch: u32,
    /// Epoch secret `S_epoch`; the next epoch is derived from it and it is then overwritten.
    ratchet: Zeroizing<[u8; 32]>,
}

impl MediaKeys {
    /// Derives the keys of epoch 0 from the epoch-0 secret.
    pub(crate) fn from_epoch_secret(
        suite: Suite,
        side: Side,
        call_id: CallId,
        epoch: u32,
        secret: Zeroizing<[u8; 32]>,
    ) -> Result<Self> {
        let (c2e_key, c2e_salt) = direction_keys(&secret, suite, LABEL_CALLER_TO_CALLEE, epoch)?;
        let (e2c_key, e2c_salt) = direction_keys(&secret, suite, LABEL_CALLEE_TO_CALLER, epoch)?;
        let (send_key, send_salt, recv_key, recv_salt) = match side {
            Side::Caller => (c2e_key, c2e_salt, e2c_key, e2c_salt),
            Side::Callee => (e2c_key, e2c_salt, c2e_key, c2e_salt),
        };
        Ok(Self {
            suite,
            send_key,
            send_salt,
            recv_key,
            recv_salt,
            side,
            call_id,
            epoch,
            ratchet: secret,
        })
    }

    /// Moves to the next key epoch (rekey for long calls): `S_{e+1} = HKDF-Expand(S_e, ...)`.
    ///
    /// One-way: the old epoch's secret and SRTP keys are overwritten (zeroized) and cannot be
    /// recomputed from the new ones. Both sides must call this at an agreed point (e.g. a
    /// signalled epoch switch); hush-srtp can keep the old context alive for in-flight packets.
    pub fn next_epoch(&mut self) -> Result<()> {
        let epoch = self.epoch.checked_add(1).ok_or(Error::EpochExhausted)?;
        let next = expand32(&self.ratchet, LABEL_NEXT_EPOCH, epoch)?;
        // Assigning drops the old values, whose Drop zeroizes them.
        *self = Self::from_epoch_secret(self.suite, self.side, self.call_id, epoch, next)?;
        Ok(())
    }

    /// The current epoch (0 right after the key exchange).
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Whether these are the caller's or the callee's keys.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The call these keys belong to.
    pub fn call_id(&self) -> CallId {
        self.call_id
    }
}

impl Drop for MediaKeys {
    fn drop(&mut self) {
        // The fields zeroize themselves (SecretBytes and Zeroizing); this impl documents it and
        // keeps MediaKeys from being destructured into non-zeroizing parts.
        self.ratchet.zeroize();
    }
}

impl fmt::Debug for MediaKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MediaKeys")
            .field("suite", &self.suite)
            .field("side", &self.side)
            .field("call_id", &self.call_id)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

/// Everything both sides must agree on; hashed into the HKDF salt.
pub(crate) struct Transcript<'a> {
    pub(crate) version: u8,
    pub(crate) call_id: &'a CallId,
    pub(crate) caller_identity: &'a [u8],
    pub(crate) callee_identity: &'a [u8],
    pub(crate) caller_ephemeral: &'a [u8; 32],
    pub(crate) callee_ephemeral: &'a [u8; 32],
    pub(crate) offered_suites: &'a [u16],
    pub(crate) chosen_suite: u16,
}

impl Transcript<'_> {
    /// The exact transcript bytes (docs/crypto.md, "Transcript").
    pub(crate) fn encode(&self) -> Result<Vec<u8>> {
        let n = u8::try_from(self.offered_suites.len())
            .map_err(|_| Error::Internal("suite list over 255 entries"))?;
        let mut out = Vec::with_capacity(200);
        out.extend_from_slice(TRANSCRIPT_LABEL);
        out.push(self.version);
        out.extend_from_slice(self.call_id.as_bytes());
        out.extend_from_slice(self.caller_identity);
        out.extend_from_slice(self.callee_identity);
        out.extend_from_slice(self.caller_ephemeral);
        out.extend_from_slice(self.callee_ephemeral);
        out.push(n);
        for code in self.offered_suites {
            out.extend_from_slice(&code.to_be_bytes());
        }
        out.extend_from_slice(&self.chosen_suite.to_be_bytes());
        Ok(out)
    }

    /// `S_0 = HKDF-Extract(salt = SHA-256(transcript), IKM = X25519 shared secret)`.
    pub(crate) fn epoch0_secret(&self, shared: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>> {
        let salt = Sha256::digest(self.encode()?);
        let (prk, _) = Hkdf::<Sha256>::extract(Some(&salt), shared);
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(&prk);
        // `prk` is a GenericArray copy on the stack; overwrite it too.
        let mut prk = prk;
        prk.as_mut_slice().zeroize();
        Ok(out)
    }
}

/// `HKDF-Expand(S_0, "hush v1 answer confirm" || u32be(0), 32)`.
pub(crate) fn confirmation(epoch0: &[u8; 32]) -> Result<Zeroizing<[u8; CONFIRM_LEN]>> {
    let hk = Hkdf::<Sha256>::from_prk(epoch0).map_err(|_| Error::Internal("prk length"))?;
    let mut out = Zeroizing::new([0u8; CONFIRM_LEN]);
    hk.expand_multi_info(&[LABEL_CONFIRM, &0u32.to_be_bytes()], out.as_mut())
        .map_err(|_| Error::Internal("hkdf expand length"))?;
    Ok(out)
}

fn expand32(secret: &[u8; 32], label: &[u8], epoch: u32) -> Result<Zeroizing<[u8; 32]>> {
    let hk = Hkdf::<Sha256>::from_prk(secret).map_err(|_| Error::Internal("prk length"))?;
    let mut out = Zeroizing::new([0u8; 32]);
    hk.expand_multi_info(&[label, &epoch.to_be_bytes()], out.as_mut())
        .map_err(|_| Error::Internal("hkdf expand length"))?;
    Ok(out)
}

/// `HKDF-Expand(S_e, label || u32be(e), Nk + 12)` split into master key and master salt.
fn direction_keys(
    secret: &[u8; 32],
    suite: Suite,
    label: &[u8],
    epoch: u32,
) -> Result<(SecretBytes, SecretBytes)> {
    let nk = master_key_len(suite);
    let hk = Hkdf::<Sha256>::from_prk(secret).map_err(|_| Error::Internal("prk length"))?;
    let mut okm = Zeroizing::new([0u8; 64]);
    let okm_slice = okm
        .get_mut(..nk + MASTER_SALT_LEN)
        .ok_or(Error::Internal("suite key too long"))?;
    hk.expand_multi_info(&[label, &epoch.to_be_bytes()], okm_slice)
        .map_err(|_| Error::Internal("hkdf expand length"))?;
    let (key, salt) = okm_slice.split_at(nk);
    Ok((SecretBytes::new(key), SecretBytes::new(salt)))
}

//! `Offer` and `Answer` payloads and their versioned, bounds-checked byte encoding.
//!
//! These bytes travel inside a Signal-sealed message; after opening they are still treated as
//! untrusted and parsed without any panic path. Layout (big-endian, no padding):
//!
//! ```text
//! Offer  = 0x01 | version u8 | call_id [16] | caller_ephemeral [32] | n u8 (1..=8) | n × suite u16
//! Answer = 0x02 | version u8 | call_id [16] | callee_ephemeral [32] | suite u16 | confirm [32]
//! ```

use std::fmt;

use super::keys::CONFIRM_LEN;
use crate::error::{Error, Result};
use crate::suite::{suite_from_code, Suite};
use crate::wire::{Reader, Writer};

/// The only call key-agreement version this build speaks.
pub const CALL_PROTOCOL_VERSION: u8 = 1;
/// Most suites an offer may list.
pub const MAX_OFFERED_SUITES: usize = 8;
/// First byte of an encoded [`Offer`].
pub const OFFER_TAG: u8 = 0x01;
/// First byte of an encoded [`Answer`].
pub const ANSWER_TAG: u8 = 0x02;

/// A random 128-bit call identifier chosen by the caller.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId([u8; 16]);

impl CallId {
    /// Wraps raw bytes (e.g. received from the peer).
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// A fresh random call id.
    pub fn random<R: rand::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut b = [0u8; 16];
        rng.fill_bytes(&mut b);
        Self(b)
    }

    /// The 16 bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CallId({self})")
    }
}

/// The caller's call offer: call id, its fresh X25519 public key and the suites it accepts in
/// preference order. Carries no secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    pub(crate) version: u8,
    pub(crate) call_id: CallId,
    pub(crate) caller_ephemeral: [u8; 32],
    /// IANA protection-profile codes exactly as offered (unknown codes are kept, because the
    /// transcript binds the list as sent).
    pub(crate) suites: Vec<u16>,
}

impl Offer {
    /// Protocol version of this offer.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The call this offer opens.
    pub fn call_id(&self) -> CallId {
        self.call_id
    }

    /// The caller's ephemeral X25519 public key.
    pub fn caller_ephemeral(&self) -> &[u8; 32] {
        &self.caller_ephemeral
    }

    /// The offered suite codes, in the caller's preference order, as sent.
    pub fn suite_codes(&self) -> &[u16] {
        &self.suites
    }

    /// The offered suites this build knows, in the caller's preference order.
    pub fn suites(&self) -> impl Iterator<Item = Suite> + '_ {
        self.suites.iter().filter_map(|c| suite_from_code(*c))
    }

    /// Encodes the offer.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(52 + 2 * self.suites.len());
        w.u8(OFFER_TAG);
        w.u8(self.version);
        w.put(self.call_id.as_bytes());
        w.put(&self.caller_ephemeral);
        // Offers are only built by `CallKeyExchange` (bounded list) or `decode` (checked), so
        // the count fits a u8; saturate rather than panic if that ever changed.
        w.u8(u8::try_from(self.suites.len()).unwrap_or(u8::MAX));
        for code in &self.suites {
            w.u16(*code);
        }
        w.buf
    }

    /// Parses an offer from untrusted bytes. Rejects unknown versions, an empty, oversized or
    /// duplicated suite list, and trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes, "offer");
        if r.u8()? != OFFER_TAG {
            return Err(r.malformed("not an offer"));
        }
        let version = r.u8()?;
        if version != CALL_PROTOCOL_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "offer",
                version,
            });
        }
        let call_id = CallId(r.array()?);
        let caller_ephemeral = r.array()?;
        let n = usize::from(r.u8()?);
        if n == 0 || n > MAX_OFFERED_SUITES {
            return Err(r.malformed("suite count out of range"));
        }
        let mut suites = Vec::with_capacity(n);
        for _ in 0..n {
            let code = r.u16()?;
            if suites.contains(&code) {
                return Err(r.malformed("duplicate suite"));
            }
            suites.push(code);
        }
        r.finish()?;
        Ok(Self {
            version,
            call_id,
            caller_ephemeral,
            suites,
        })
    }
}

/// The callee's answer, sent only after the user accepted: call id, its fresh X25519 public
/// key, the chosen suite and a key confirmation value over the whole transcript.
#[derive(Clone, PartialEq, Eq)]
pub struct Answer {
    pub(crate) version: u8,
    pub(crate) call_id: CallId,
    pub(crate) callee_ephemeral: [u8; 32],
    pub(crate) suite: u16,
    pub(crate) confirm: [u8; CONFIRM_LEN],
}

impl Answer {
    /// Protocol version of this answer.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The call this answer answers.
    pub fn call_id(&self) -> CallId {
        self.call_id
    }

    /// The callee's ephemeral X25519 public key.
    pub fn callee_ephemeral(&self) -> &[u8; 32] {
        &self.callee_ephemeral
    }

    /// The chosen suite's code.
    pub fn suite_code(&self) -> u16 {
        self.suite
    }

    /// The chosen suite, if this build knows it.
    pub fn suite(&self) -> Option<Suite> {
        suite_from_code(self.suite)
    }

    /// Encodes the answer.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(2 + 16 + 32 + 2 + CONFIRM_LEN);
        w.u8(ANSWER_TAG);
        w.u8(self.version);
        w.put(self.call_id.as_bytes());
        w.put(&self.callee_ephemeral);
        w.u16(self.suite);
        w.put(&self.confirm);
        w.buf
    }

    /// Parses an answer from untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes, "answer");
        if r.u8()? != ANSWER_TAG {
            return Err(r.malformed("not an answer"));
        }
        let version = r.u8()?;
        if version != CALL_PROTOCOL_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "answer",
                version,
            });
        }
        let call_id = CallId(r.array()?);
        let callee_ephemeral = r.array()?;
        let suite = r.u16()?;
        let confirm = r.array()?;
        r.finish()?;
        Ok(Self {
            version,
            call_id,
            callee_ephemeral,
            suite,
            confirm,
        })
    }
}

impl fmt::Debug for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The confirmation value is public (it travels in the answer) but prints as noise.
        f.debug_struct("Answer")
            .field("version", &self.version)
            .field("call_id", &self.call_id)
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

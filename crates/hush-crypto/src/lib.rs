//! Identities, Signal sessions (via the official `libsignal-protocol`) and the per-call
//! ephemeral key agreement that produces hush's SRTP media keys.
//!
//! It does no I/O other than through store traits.

mod auth;
mod bundle;
mod call;
mod device;
mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod group;
mod skipped_keys;
mod store;
mod suite;
mod wire;

pub use libsignal_protocol as signal;
/// The `rand` version whose RNG traits this crate (and libsignal) take, re-exported so callers
/// can name compatible RNG types.
pub use rand;

pub use auth::{DeviceAuthKey, DeviceSigningKey, AUTH_SIGNATURE_LEN};
pub use bundle::{
    BundleUpload, DeviceKeys, KyberPreKeyPublic, OneTimePreKeyPublic, PeerBundle,
    SignedPreKeyPublic, BUNDLE_UPLOAD_TAG, BUNDLE_VERSION, MAX_UPLOAD_KYBER_PRE_KEYS,
    MAX_UPLOAD_PRE_KEYS, PEER_BUNDLE_TAG,
};
pub use call::{
    Answer, CallId, CallKeyExchange, IncomingOffer, MediaKeys, Offer, PendingOffer, SecretBytes,
    Side, ANSWER_TAG, CALL_PROTOCOL_VERSION, CONFIRM_LEN, DEFAULT_SEEN_CALL_IDS,
    MAX_OFFERED_SUITES, OFFER_TAG,
};
pub use device::{Device, SafetyNumber, MAX_SEALED_LEN, SEALED_PREKEY, SEALED_WHISPER};
pub use error::{Error, Result, StoreError};
pub use libsignal_protocol::{IdentityKey, ProtocolAddress};
pub use skipped_keys::MAX_SKIPPED_KEYS;
pub use store::{Backend, DeviceStore, MemoryBackend, PeerPin, StoreHandle, Table};
#[cfg(feature = "sqlite")]
pub use store::{SqliteBackend, StoreKey};
pub use suite::{master_key_len, suite_code, suite_from_code, Suite, MASTER_SALT_LEN};

/// Polls `fut` once and returns its output if it completed.
///
/// Every future of a [`Device`] over the shipped backends completes on its first poll, so this
/// drives them without an async runtime: `complete_now(device.seal(..)).expect("sync store")`.
/// Returns `None` only for a backend that really suspends; use an executor for those.
pub fn complete_now<F: std::future::Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

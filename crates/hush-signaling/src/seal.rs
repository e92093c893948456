//! The [`Sealer`] trait: end-to-end encryption of signaling content to a peer device.

use std::future::Future;

use crate::device::DeviceId;
use crate::envelope::CiphertextKind;
use crate::Error;

/// A sealed message: what goes into an envelope's `kind` and `ciphertext`.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Kind of Signal ciphertext.
    pub kind: CiphertextKind,
    /// The ciphertext.
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed")
            .field("kind", &self.kind)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}

/// Seals plaintext for a peer device and opens what a peer sealed, e.g. with a Signal session.
///
/// With the `crypto` feature, [`crate::crypto::SignalSealer`] implements it on a
/// `hush_crypto::Device`. An implementation must authenticate: `open` fails for anything not
/// sealed by `peer` for this device, and should fail for a ciphertext it already opened.
pub trait Sealer: Send {
    /// Encrypts `plaintext` for `peer`.
    fn seal(
        &mut self,
        peer: &DeviceId,
        plaintext: &[u8],
    ) -> impl Future<Output = Result<Sealed, Error>> + Send;

    /// Decrypts a message `peer` sealed for this device.
    fn open(
        &mut self,
        peer: &DeviceId,
        kind: CiphertextKind,
        ciphertext: &[u8],
    ) -> impl Future<Output = Result<Vec<u8>, Error>> + Send;
}

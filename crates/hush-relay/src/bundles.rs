//! Checks on uploaded prekey bundles, before the relay stores them.
//!
//! A device uploads a base bundle and one bundle per one-time prekey, each a
//! [`PeerBundle`] encoding. The relay hands them out to anyone who asks for the device, so it
//! refuses an upload unless every bundle decodes, verifies (the identity key's binding of the
//! ed25519 device key, and the prekey signatures), names the authenticated device as its
//! ed25519 key, and carries the same identity key, registration id and Signal device id as the
//! base bundle. A peer's client checks the same again: the relay's check keeps a device from
//! publishing bundles in another device's name, or mixing identities within its own.

use hush_crypto::PeerBundle;
use hush_signaling::DeviceId;

/// Why an upload was refused. `index` is 0 for the base bundle and `n + 1` for the n-th
/// one-time prekey bundle.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BundleError {
    /// The bytes are not a bundle.
    #[error("bundle {index} does not decode")]
    Decode {
        index: usize,
        #[source]
        source: hush_crypto::Error,
    },
    /// A signature does not verify.
    #[error("bundle {index} does not verify")]
    Verify {
        index: usize,
        #[source]
        source: hush_crypto::Error,
    },
    /// The bundle's ed25519 key is not the uploading device.
    #[error("bundle {index} belongs to another device")]
    NotTheUploader { index: usize },
    /// The bundle's identity, registration id or device id differs from the base bundle's.
    #[error("bundle {index} does not match the base bundle")]
    Mismatch { index: usize },
}

/// Checks an upload by `device` (see the module documentation). CPU-bound (a few signature
/// checks per bundle): run it off the connection tasks' threads.
pub(crate) fn check_upload(
    device: &DeviceId,
    base: &[u8],
    one_time: &[(u64, Vec<u8>)],
) -> Result<(), BundleError> {
    let base_bundle = check_one(device, 0, base)?;
    for (i, (_, bytes)) in one_time.iter().enumerate() {
        let index = i + 1;
        let item = check_one(device, index, bytes)?;
        let (a, b) = (&base_bundle.device, &item.device);
        if a.identity_key != b.identity_key
            || a.registration_id != b.registration_id
            || a.device_id != b.device_id
        {
            return Err(BundleError::Mismatch { index });
        }
    }
    Ok(())
}

fn check_one(device: &DeviceId, index: usize, bytes: &[u8]) -> Result<PeerBundle, BundleError> {
    let bundle =
        PeerBundle::decode(bytes).map_err(|source| BundleError::Decode { index, source })?;
    if bundle.device.auth_key.to_bytes() != *device.as_bytes() {
        return Err(BundleError::NotTheUploader { index });
    }
    bundle
        .verify()
        .map_err(|source| BundleError::Verify { index, source })?;
    Ok(bundle)
}

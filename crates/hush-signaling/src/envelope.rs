//! The routing envelope: the only part of a signaling message a relay can read.

use prost::Message as _;

use crate::device::DeviceId;
use crate::proto::signaling as pb;
use crate::Error;

/// Envelope format version produced by this build.
pub const ENVELOPE_VERSION: u32 = 1;

/// Length of a message id.
pub const MESSAGE_ID_LEN: usize = 16;

/// Largest ciphertext an envelope may carry.
pub const MAX_CIPHERTEXT_LEN: usize = 48 * 1024;

/// A sender-chosen random message id; unique per message, repeated inside the sealed content.
pub type MessageId = [u8; MESSAGE_ID_LEN];

/// Which kind of Signal ciphertext an envelope carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CiphertextKind {
    /// A Double Ratchet message on an established session.
    Signal,
    /// A PreKey message that also establishes the session.
    PreKey,
}

impl CiphertextKind {
    fn to_proto(self) -> pb::CiphertextKind {
        match self {
            Self::Signal => pb::CiphertextKind::Signal,
            Self::PreKey => pb::CiphertextKind::Prekey,
        }
    }

    fn from_proto(value: i32) -> Result<Self, Error> {
        match pb::CiphertextKind::try_from(value) {
            Ok(pb::CiphertextKind::Signal) => Ok(Self::Signal),
            Ok(pb::CiphertextKind::Prekey) => Ok(Self::PreKey),
            Ok(pb::CiphertextKind::Unspecified) => Err(Error::Malformed("ciphertext kind missing")),
            Err(_) => Err(Error::UnsupportedMessage),
        }
    }
}

/// A validated signaling envelope.
///
/// Routing metadata (sender, recipient, time, kind) is in the clear for the relay; the call
/// message itself is inside `ciphertext`, sealed with the Signal session between the devices.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Sender-chosen random id.
    pub id: MessageId,
    /// Sending device.
    pub sender: DeviceId,
    /// Receiving device.
    pub recipient: DeviceId,
    /// Sender's wall clock when sealing, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Kind of Signal ciphertext.
    pub kind: CiphertextKind,
    /// The sealed [`crate::message::Content`].
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for Envelope {
    /// Never prints the ciphertext, only its length.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope")
            .field("id", &hex::encode(self.id))
            .field("sender", &self.sender)
            .field("recipient", &self.recipient)
            .field("timestamp_ms", &self.timestamp_ms)
            .field("kind", &self.kind)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}

impl Envelope {
    /// Decodes and validates an envelope from untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        Self::from_proto(pb::Envelope::decode(bytes)?)
    }

    /// Encodes the envelope to protobuf bytes.
    pub fn encode(&self) -> Vec<u8> {
        self.to_proto().encode_to_vec()
    }

    /// Validates a decoded protobuf envelope.
    pub fn from_proto(p: pb::Envelope) -> Result<Self, Error> {
        match p.version {
            0 => return Err(Error::Malformed("envelope version missing")),
            ENVELOPE_VERSION => {}
            v => return Err(Error::UnsupportedVersion(v)),
        }
        let id = MessageId::try_from(p.id.as_slice())
            .map_err(|_| Error::Malformed("message id must be 16 bytes"))?;
        let sender = DeviceId::from_slice(&p.sender)?;
        let recipient = DeviceId::from_slice(&p.recipient)?;
        let kind = CiphertextKind::from_proto(p.kind)?;
        if p.ciphertext.is_empty() {
            return Err(Error::Malformed("empty ciphertext"));
        }
        if p.ciphertext.len() > MAX_CIPHERTEXT_LEN {
            return Err(Error::FrameTooLarge {
                size: p.ciphertext.len(),
                max: MAX_CIPHERTEXT_LEN,
            });
        }
        Ok(Self {
            id,
            sender,
            recipient,
            timestamp_ms: p.timestamp_ms,
            kind,
            ciphertext: p.ciphertext,
        })
    }

    /// The protobuf form.
    pub fn to_proto(&self) -> pb::Envelope {
        pb::Envelope {
            version: ENVELOPE_VERSION,
            id: self.id.to_vec(),
            sender: self.sender.as_bytes().to_vec(),
            recipient: self.recipient.as_bytes().to_vec(),
            timestamp_ms: self.timestamp_ms,
            kind: self.kind.to_proto() as i32,
            ciphertext: self.ciphertext.clone(),
        }
    }

    /// Consumes the envelope into its protobuf form without copying the ciphertext.
    pub fn into_proto(self) -> pb::Envelope {
        pb::Envelope {
            version: ENVELOPE_VERSION,
            id: self.id.to_vec(),
            sender: self.sender.as_bytes().to_vec(),
            recipient: self.recipient.as_bytes().to_vec(),
            timestamp_ms: self.timestamp_ms,
            kind: self.kind.to_proto() as i32,
            ciphertext: self.ciphertext,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            id: [1; 16],
            sender: DeviceId::from_bytes([2; 32]),
            recipient: DeviceId::from_bytes([3; 32]),
            timestamp_ms: 1_700_000_000_000,
            kind: CiphertextKind::PreKey,
            ciphertext: vec![9; 100],
        }
    }

    #[test]
    fn round_trip() {
        let e = sample();
        assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
    }

    #[test]
    fn debug_hides_ciphertext() {
        let s = format!("{:?}", sample());
        assert!(s.contains("ciphertext_len: 100"));
        assert!(!s.contains("9, 9"));
    }

    #[test]
    fn rejects_bad_fields() {
        let mut p = sample().to_proto();
        p.version = 2;
        assert!(matches!(
            Envelope::from_proto(p.clone()),
            Err(Error::UnsupportedVersion(2))
        ));
        p.version = 0;
        assert!(matches!(
            Envelope::from_proto(p.clone()),
            Err(Error::Malformed(_))
        ));
        p.version = 1;
        p.kind = 77;
        assert!(matches!(
            Envelope::from_proto(p.clone()),
            Err(Error::UnsupportedMessage)
        ));
        p.kind = 1;
        p.sender.pop();
        assert!(Envelope::from_proto(p.clone()).is_err());
        p.sender.push(0);
        p.id = vec![1; 15];
        assert!(Envelope::from_proto(p.clone()).is_err());
        p.id = vec![1; 16];
        p.ciphertext.clear();
        assert!(Envelope::from_proto(p.clone()).is_err());
        p.ciphertext = vec![0; MAX_CIPHERTEXT_LEN + 1];
        assert!(matches!(
            Envelope::from_proto(p),
            Err(Error::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let mut bytes = sample().encode();
        // Field 99, varint 5: a field from a future version.
        bytes.extend_from_slice(&[0x98, 0x06, 0x05]);
        assert_eq!(Envelope::decode(&bytes).unwrap(), sample());
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = Envelope::decode(&bytes);
        }
    }
}

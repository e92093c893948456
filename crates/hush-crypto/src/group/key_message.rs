//! The key message: one sender key, sent sealed over the pairwise Signal session to each member
//! that may hold it.

use zeroize::Zeroizing;

use super::key_id::{GroupKeyId, MemberSlot};
use super::{GroupCallId, GroupError, BASE_KEY_LEN};

/// Version byte of the key message encoding.
pub const KEY_MESSAGE_VERSION: u8 = 1;

/// Encoded length: version, call id, sender, generation, step, base key.
pub const KEY_MESSAGE_LEN: usize = 1 + 16 + 1 + 2 + 1 + BASE_KEY_LEN;

/// A sender key for one group call, as one member hands it to another. The plaintext of a
/// Signal-sealed message; never sent in clear.
///
/// ```text
/// version (1) = 1 | call id (16) | sender slot (1) | generation (2, BE) | step (1) | base key (32)
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct KeyMessage {
    /// The call the key is for.
    pub call_id: GroupCallId,
    /// The sender, generation and ratchet step of the key.
    pub key_id: GroupKeyId,
    /// The sender's base key at that step (SFrame `base_key`, RFC 9605 §4.4.2).
    pub base_key: Zeroizing<[u8; BASE_KEY_LEN]>,
}

impl std::fmt::Debug for KeyMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyMessage")
            .field("call_id", &self.call_id)
            .field("key_id", &self.key_id)
            .field("base_key", &"<redacted>")
            .finish()
    }
}

impl KeyMessage {
    /// The message's bytes (wiped on drop: they hold the key).
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(KEY_MESSAGE_LEN));
        out.push(KEY_MESSAGE_VERSION);
        out.extend_from_slice(&self.call_id.0);
        out.push(self.key_id.sender.0);
        out.extend_from_slice(&self.key_id.generation.to_be_bytes());
        out.push(self.key_id.step);
        out.extend_from_slice(&self.base_key[..]);
        out
    }

    /// Parses a key message. Untrusted bytes: errors, never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, GroupError> {
        let malformed = GroupError::MalformedKeyMessage;
        let (&version, rest) = bytes.split_first().ok_or(malformed("empty"))?;
        if version != KEY_MESSAGE_VERSION {
            return Err(malformed("unknown version"));
        }
        if bytes.len() != KEY_MESSAGE_LEN {
            return Err(malformed("wrong length"));
        }
        let (call_id, rest) = rest.split_at(16);
        let sender = MemberSlot(rest[0]);
        let generation = u16::from_be_bytes([rest[1], rest[2]]);
        let step = rest[3];
        let mut base_key = Zeroizing::new([0u8; BASE_KEY_LEN]);
        base_key.copy_from_slice(&rest[4..]);
        let mut id = [0u8; 16];
        id.copy_from_slice(call_id);
        Ok(Self {
            call_id: GroupCallId(id),
            key_id: GroupKeyId {
                sender,
                generation,
                step,
            },
            base_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> KeyMessage {
        KeyMessage {
            call_id: GroupCallId([7; 16]),
            key_id: GroupKeyId {
                sender: MemberSlot(3),
                generation: 513,
                step: 9,
            },
            base_key: Zeroizing::new([0x5a; BASE_KEY_LEN]),
        }
    }

    #[test]
    fn round_trips_and_refuses_every_other_length_and_version() {
        let bytes = sample().encode();
        assert_eq!(bytes.len(), KEY_MESSAGE_LEN);
        assert_eq!(KeyMessage::decode(&bytes).unwrap(), sample());
        for len in 0..bytes.len() {
            assert!(KeyMessage::decode(&bytes[..len]).is_err(), "length {len}");
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(KeyMessage::decode(&longer).is_err());
        let mut other_version = bytes.to_vec();
        other_version[0] = 2;
        assert!(KeyMessage::decode(&other_version).is_err());
    }

    #[test]
    fn debug_hides_the_key() {
        assert!(!format!("{:?}", sample()).contains("90"));
        assert!(format!("{:?}", sample()).contains("redacted"));
    }
}

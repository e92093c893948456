//! The SFrame key id layout of hush group calls: who sent the frame, under which key
//! generation, at which ratchet step.

use std::fmt;

/// A participant's place in the call's roster (0–255). Key ids carry it, so a receiver knows
/// whose key a frame claims, and checks it against the member the frame arrived from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberSlot(pub u8);

impl fmt::Display for MemberSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "member {}", self.0)
    }
}

/// One sender key: `(sender, generation, step)`, written into the SFrame key id (KID) as
///
/// ```text
///   bits 31..24   23..8        7..0
///   +--------+--------------+------+
///   | sender |  generation  | step |
///   +--------+--------------+------+
/// ```
///
/// A sender starts a new generation (a fresh random base key) when a member leaves, and moves
/// one ratchet step forward (RFC 9605 §5.1) when a member joins. Key ids up to 2^32 fit in four
/// bytes of SFrame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKeyId {
    /// Whose key.
    pub sender: MemberSlot,
    /// Key generation of that sender (a fresh random key each).
    pub generation: u16,
    /// Ratchet step within the generation.
    pub step: u8,
}

impl GroupKeyId {
    /// The SFrame KID value.
    pub fn to_kid(self) -> u64 {
        (u64::from(self.sender.0) << 24) | (u64::from(self.generation) << 8) | u64::from(self.step)
    }

    /// Parses an SFrame KID; `None` if it does not fit the layout (more than 32 bits).
    pub fn from_kid(kid: u64) -> Option<Self> {
        if kid >> 32 != 0 {
            return None;
        }
        Some(Self {
            sender: MemberSlot((kid >> 24) as u8),
            generation: (kid >> 8) as u16,
            step: kid as u8,
        })
    }
}

impl fmt::Display for GroupKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} generation {} step {}",
            self.sender, self.generation, self.step
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kid_round_trips_and_refuses_wide_values() {
        let id = GroupKeyId {
            sender: MemberSlot(0xab),
            generation: 0x1234,
            step: 0x56,
        };
        assert_eq!(id.to_kid(), 0xab12_3456);
        assert_eq!(GroupKeyId::from_kid(0xab12_3456), Some(id));
        assert_eq!(GroupKeyId::from_kid(1 << 32), None);
        assert_eq!(
            GroupKeyId::from_kid(0).unwrap(),
            GroupKeyId {
                sender: MemberSlot(0),
                generation: 0,
                step: 0
            }
        );
    }
}

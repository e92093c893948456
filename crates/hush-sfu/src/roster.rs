//! Rosters: who may join a call, signed by the call's creator.
//!
//! The creator's first join carries version 1 of the roster and creates the call on the SFU.
//! Later versions (each with a higher version number, signed by the same creator) add or remove
//! members; a removed member who is in the call is kicked. An older or equal version is refused,
//! so a captured roster cannot be replayed to undo a kick. Byte layout in `docs/sfu.md`.
//!
//! Each member also has a **slot**, a number the creator gives it once and that never changes
//! for the life of the call: a later roster keeps the slots of the members it keeps and gives
//! new members slots never handed out before ([`Roster::next`]). Clients name a member's
//! end-to-end media keys by its slot; the SFU does not use slots.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey};

use crate::error::RosterError;
use crate::ids::{CallId, DeviceId, CALL_ID_LEN};
use crate::wire::Reader;

/// First byte of an encoded [`Roster`] (`'R'`).
pub const ROSTER_TAG: u8 = 0x52;
/// Format version of the roster encoding (2: members with stable slots).
pub const ROSTER_FORMAT: u8 = 2;
/// Most members an encoded roster can list.
pub const MAX_ROSTER_MEMBERS: usize = 255;

const ROSTER_SIG_LABEL: &[u8] = b"hush sfu roster v1";

/// A roster whose creator signature has been checked ([`decode`](Self::decode) and
/// [`sign`](Self::sign) make no other kind).
#[derive(Clone, PartialEq, Eq)]
pub struct Roster {
    body: Vec<u8>,
    signature: [u8; 64],
    call_id: CallId,
    creator: DeviceId,
    version: u64,
    members: Vec<DeviceId>,
    slots: Vec<u8>,
    next_slot: u8,
}

impl Roster {
    /// Builds and signs a roster whose members get the slots 0, 1, 2… in the order listed (a
    /// call's first roster). `members` must list `creator`'s device, without duplicates. Later
    /// versions come from [`next`](Self::next), which keeps slots where they are.
    pub fn sign(
        creator: &SigningKey,
        call_id: CallId,
        version: u64,
        members: &[DeviceId],
    ) -> Result<Self, RosterError> {
        if members.len() > MAX_ROSTER_MEMBERS {
            return Err(RosterError::TooManyMembers {
                got: members.len(),
                limit: MAX_ROSTER_MEMBERS,
            });
        }
        let slots = (0..members.len())
            .map(|i| u8::try_from(i).map_err(|_| RosterError::SlotsExhausted))
            .collect::<Result<Vec<u8>, _>>()?;
        let next_slot = u8::try_from(members.len()).map_err(|_| RosterError::SlotsExhausted)?;
        Self::sign_slots(creator, call_id, version, members, &slots, next_slot)
    }

    /// The next version of this roster, signed by its creator, listing `members`: those it
    /// keeps keep their slots; those it adds get slots never handed out before in this call,
    /// in the order listed. Fails with [`RosterError::SlotsExhausted`] once 255 slots have
    /// been handed out.
    pub fn next(&self, creator: &SigningKey, members: &[DeviceId]) -> Result<Self, RosterError> {
        let mut next_slot = self.next_slot;
        let mut slots = Vec::with_capacity(members.len());
        for m in members {
            match self.slot(m) {
                Some(s) => slots.push(s),
                None => {
                    slots.push(next_slot);
                    next_slot = next_slot
                        .checked_add(1)
                        .ok_or(RosterError::SlotsExhausted)?;
                }
            }
        }
        let version = self.version.checked_add(1).ok_or(RosterError::NotNewer {
            current: self.version,
            got: self.version,
        })?;
        Self::sign_slots(creator, self.call_id, version, members, &slots, next_slot)
    }

    fn sign_slots(
        creator: &SigningKey,
        call_id: CallId,
        version: u64,
        members: &[DeviceId],
        slots: &[u8],
        next_slot: u8,
    ) -> Result<Self, RosterError> {
        if members.len() > MAX_ROSTER_MEMBERS {
            return Err(RosterError::TooManyMembers {
                got: members.len(),
                limit: MAX_ROSTER_MEMBERS,
            });
        }
        let mut body = Vec::with_capacity(2 + CALL_ID_LEN + 32 + 8 + 2 + 33 * members.len());
        body.push(ROSTER_TAG);
        body.push(ROSTER_FORMAT);
        body.extend_from_slice(call_id.as_bytes());
        body.extend_from_slice(&creator.verifying_key().to_bytes());
        body.extend_from_slice(&version.to_be_bytes());
        body.push(members.len() as u8);
        for (m, slot) in members.iter().zip(slots) {
            body.extend_from_slice(m.as_bytes());
            body.push(*slot);
        }
        body.push(next_slot);
        let signature = creator.sign(&message(&body)).to_bytes();
        body.extend_from_slice(&signature);
        Self::decode(&body)
    }

    /// Parses a roster and checks the creator's signature (strict ed25519), that the creator is
    /// listed, that no member or slot is listed twice and that every slot is below the next
    /// free one. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, RosterError> {
        let mut r = Reader::new(bytes, "roster");
        if r.u8()? != ROSTER_TAG {
            return Err(r.malformed("not a roster").into());
        }
        let format = r.u8()?;
        if format != ROSTER_FORMAT {
            return Err(RosterError::UnsupportedFormat(format));
        }
        let call_id = CallId::from_bytes(r.array::<CALL_ID_LEN>()?);
        let creator = DeviceId::from_bytes(&r.array::<32>()?)?;
        let version = r.u64()?;
        let n = usize::from(r.u8()?);
        let mut members: Vec<DeviceId> = Vec::with_capacity(n);
        let mut slots: Vec<u8> = Vec::with_capacity(n);
        for _ in 0..n {
            let m = DeviceId::from_bytes(&r.array::<32>()?)?;
            let slot = r.u8()?;
            if members.contains(&m) || slots.contains(&slot) {
                return Err(RosterError::Duplicate);
            }
            members.push(m);
            slots.push(slot);
        }
        let next_slot = r.u8()?;
        if slots.iter().any(|s| *s >= next_slot) {
            return Err(RosterError::SlotOutOfRange);
        }
        let body_len = bytes.len() - r.remaining();
        let signature = r.array::<64>()?;
        r.finish()?;
        let body = bytes
            .get(..body_len)
            .ok_or(RosterError::BadSignature)?
            .to_vec();
        creator
            .verifying_key()?
            .verify_strict(&message(&body), &Signature::from_bytes(&signature))
            .map_err(|_| RosterError::BadSignature)?;
        if !members.contains(&creator) {
            return Err(RosterError::CreatorMissing);
        }
        Ok(Self {
            body,
            signature,
            call_id,
            creator,
            version,
            members,
            slots,
            next_slot,
        })
    }

    /// The wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.body.clone();
        out.extend_from_slice(&self.signature);
        out
    }

    /// The call this roster is for.
    pub fn call_id(&self) -> CallId {
        self.call_id
    }

    /// The device that created the call and signs its rosters.
    pub fn creator(&self) -> DeviceId {
        self.creator
    }

    /// The version number; each update must have a higher one.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The devices allowed in the call (the creator among them).
    pub fn members(&self) -> &[DeviceId] {
        &self.members
    }

    /// Whether `device` is allowed in the call.
    pub fn admits(&self, device: &DeviceId) -> bool {
        self.members.contains(device)
    }

    /// The slot of `device`, if it is a member: the same in every version of the roster that
    /// lists it.
    pub fn slot(&self, device: &DeviceId) -> Option<u8> {
        let i = self.members.iter().position(|m| m == device)?;
        self.slots.get(i).copied()
    }

    /// Every member with its slot.
    pub fn slots(&self) -> impl Iterator<Item = (DeviceId, u8)> + '_ {
        self.members.iter().copied().zip(self.slots.iter().copied())
    }

    /// The first slot not yet handed out in this call (every slot listed is below it).
    pub fn next_slot(&self) -> u8 {
        self.next_slot
    }
}

impl fmt::Debug for Roster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Roster")
            .field("call_id", &self.call_id)
            .field("creator", &self.creator)
            .field("version", &self.version)
            .field("members", &self.members.len())
            .finish_non_exhaustive()
    }
}

fn message(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(ROSTER_SIG_LABEL.len() + body.len());
    m.extend_from_slice(ROSTER_SIG_LABEL);
    m.extend_from_slice(body);
    m
}

/// The roster in force for one call on the SFU, with the member limit.
#[derive(Debug, Clone)]
pub struct RosterState {
    current: Roster,
    max_members: usize,
}

impl RosterState {
    /// The first roster of a call. Fails if it lists more than `max_members`.
    pub fn new(roster: Roster, max_members: usize) -> Result<Self, RosterError> {
        check_size(&roster, max_members)?;
        Ok(Self {
            current: roster,
            max_members,
        })
    }

    /// The roster in force.
    pub fn current(&self) -> &Roster {
        &self.current
    }

    /// Whether `device` is allowed in the call.
    pub fn admits(&self, device: &DeviceId) -> bool {
        self.current.admits(device)
    }

    /// Replaces the roster with a newer one from the same creator for the same call, and
    /// returns the members it removed (who must be kicked if present). On error nothing
    /// changes.
    pub fn update(&mut self, next: Roster) -> Result<Vec<DeviceId>, RosterError> {
        if next.call_id != self.current.call_id {
            return Err(RosterError::WrongCall {
                expected: self.current.call_id,
                got: next.call_id,
            });
        }
        if next.creator != self.current.creator {
            return Err(RosterError::NotCreator);
        }
        if next.version <= self.current.version {
            return Err(RosterError::NotNewer {
                current: self.current.version,
                got: next.version,
            });
        }
        check_size(&next, self.max_members)?;
        let removed = self
            .current
            .members
            .iter()
            .filter(|m| !next.admits(m))
            .copied()
            .collect();
        self.current = next;
        Ok(removed)
    }
}

fn check_size(roster: &Roster, max_members: usize) -> Result<(), RosterError> {
    if roster.members.len() > max_members {
        return Err(RosterError::TooManyMembers {
            got: roster.members.len(),
            limit: max_members,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> SigningKey {
        SigningKey::from_bytes(&[i; 32])
    }

    fn id(i: u8) -> DeviceId {
        DeviceId::from_signing_key(&key(i))
    }

    const CALL: CallId = CallId::from_bytes([7; 16]);

    #[test]
    fn round_trip_and_admits() {
        let r = Roster::sign(&key(1), CALL, 1, &[id(1), id(2)]).unwrap();
        let again = Roster::decode(&r.encode()).unwrap();
        assert_eq!(again, r);
        assert!(r.admits(&id(2)));
        assert!(!r.admits(&id(3)));
        assert_eq!(r.creator(), id(1));
    }

    #[test]
    fn tampered_roster_is_refused() {
        let r = Roster::sign(&key(1), CALL, 1, &[id(1), id(2)]).unwrap();
        let mut bytes = r.encode();
        // Swap member 2 for member 3: the signature no longer covers it.
        let at = 2 + 16 + 32 + 8 + 1 + 33;
        bytes[at..at + 32].copy_from_slice(id(3).as_bytes());
        assert_eq!(Roster::decode(&bytes), Err(RosterError::BadSignature));
        // Every truncation is an error, never a panic.
        let full = r.encode();
        for n in 0..full.len() {
            assert!(Roster::decode(&full[..n]).is_err());
        }
    }

    #[test]
    fn creator_must_be_listed_once_each() {
        assert_eq!(
            Roster::sign(&key(1), CALL, 1, &[id(2)]),
            Err(RosterError::CreatorMissing)
        );
        assert_eq!(
            Roster::sign(&key(1), CALL, 1, &[id(1), id(2), id(2)]),
            Err(RosterError::Duplicate)
        );
    }

    #[test]
    fn updates_must_be_newer_same_creator_same_call() {
        let v1 = Roster::sign(&key(1), CALL, 1, &[id(1), id(2), id(3)]).unwrap();
        let mut state = RosterState::new(v1.clone(), 32).unwrap();
        let v2 = Roster::sign(&key(1), CALL, 2, &[id(1), id(3)]).unwrap();
        assert_eq!(state.update(v2.clone()).unwrap(), vec![id(2)]);
        assert!(!state.admits(&id(2)));
        // Replaying v1 (which would re-admit the kicked member) is refused, as is v2 again.
        assert_eq!(
            state.update(v1),
            Err(RosterError::NotNewer { current: 2, got: 1 })
        );
        assert_eq!(
            state.update(v2),
            Err(RosterError::NotNewer { current: 2, got: 2 })
        );
        // A member cannot sign an update of their own.
        let forged = Roster::sign(&key(3), CALL, 9, &[id(3), id(2)]).unwrap();
        assert_eq!(state.update(forged), Err(RosterError::NotCreator));
        let other = Roster::sign(&key(1), CallId::from_bytes([8; 16]), 9, &[id(1)]).unwrap();
        assert!(matches!(
            state.update(other),
            Err(RosterError::WrongCall { .. })
        ));
        assert!(!state.admits(&id(2)));
    }

    #[test]
    fn slots_stay_with_their_members_and_are_never_handed_out_twice() {
        let v1 = Roster::sign(&key(1), CALL, 1, &[id(1), id(2), id(3), id(4)]).unwrap();
        assert_eq!(v1.slot(&id(3)), Some(2));
        assert_eq!(v1.next_slot(), 4);
        // Member 2 is removed: the others keep their slots (3 stays at 2, 4 at 3).
        let v2 = v1.next(&key(1), &[id(1), id(3), id(4)]).unwrap();
        assert_eq!(v2.version(), 2);
        assert_eq!(
            v2.slots().collect::<Vec<_>>(),
            vec![(id(1), 0), (id(3), 2), (id(4), 3)]
        );
        // A member added later gets a fresh slot, not the removed member's; so does the
        // removed member if it is added back.
        let v3 = v2
            .next(&key(1), &[id(1), id(3), id(4), id(5), id(2)])
            .unwrap();
        assert_eq!(v3.slot(&id(5)), Some(4));
        assert_eq!(v3.slot(&id(2)), Some(5));
        assert_eq!(v3.slot(&id(4)), Some(3));
        assert_eq!(v3.next_slot(), 6);
        assert_eq!(Roster::decode(&v3.encode()).unwrap(), v3);
        // Once 255 slots are handed out, no one more can be added.
        let mut r = Roster::sign(&key(1), CALL, 1, &[id(1)]).unwrap();
        for i in 0..254u32 {
            let other = DeviceId::from_signing_key(&SigningKey::from_bytes(
                &[[0x40; 28].as_slice(), &i.to_be_bytes()]
                    .concat()
                    .try_into()
                    .unwrap(),
            ));
            r = r.next(&key(1), &[id(1), other]).unwrap();
        }
        assert_eq!(r.next_slot(), 255);
        assert_eq!(
            r.next(&key(1), &[id(1), id(9)]),
            Err(RosterError::SlotsExhausted)
        );
    }

    #[test]
    fn signed_rosters_with_shared_or_unissued_slots_are_refused() {
        assert_eq!(
            Roster::sign_slots(&key(1), CALL, 1, &[id(1), id(2)], &[0, 0], 2),
            Err(RosterError::Duplicate)
        );
        assert_eq!(
            Roster::sign_slots(&key(1), CALL, 1, &[id(1), id(2)], &[0, 2], 2),
            Err(RosterError::SlotOutOfRange)
        );
    }

    #[test]
    fn member_limit() {
        let members: Vec<DeviceId> = (1..=5).map(id).collect();
        let r = Roster::sign(&key(1), CALL, 1, &members).unwrap();
        assert_eq!(
            RosterState::new(r, 4).unwrap_err(),
            RosterError::TooManyMembers { got: 5, limit: 4 }
        );
    }
}

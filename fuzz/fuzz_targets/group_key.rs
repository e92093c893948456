//! Fuzzes what a group call member's client does with a received `GroupKey` (the opened
//! plaintext of a Signal-sealed message from another member): `Content::decode`, the roster it
//! carries (`Roster::decode`: signature, slots), the sender's slot in the roster in force,
//! `KeyMessage::decode` and `GroupE2ee::receive_key`.
//!
//! Input: a selector byte, then bytes. Selector bit 0 set: the bytes are the whole opened
//! plaintext. Clear: they are the key message of a well-formed `GroupKey` from the peer
//! (member at slot 1), carrying the signed roster if bit 1 is set.
//! Property: nothing panics; a key is installed only for this call, under the slot the roster
//! gives the device whose session delivered it, and never under this member's own slot.
#![no_main]

use std::sync::LazyLock;
use std::time::Instant;

use ed25519_dalek::SigningKey;
use hush_crypto::group::{GroupCallId, GroupE2ee, KeyMessage, MemberSlot};
use hush_crypto::rand::rngs::StdRng;
use hush_crypto::rand::SeedableRng;
use hush_sfu::roster::Roster;
use hush_sfu::{CallId as SfuCallId, DeviceId as SfuDeviceId};
use hush_signaling::{CallMessage, Content, DeviceId, GroupKey};
use libfuzzer_sys::fuzz_target;

const CALL: [u8; 16] = [3; 16];

fn key(i: u8) -> SigningKey {
    SigningKey::from_bytes(&[i; 32])
}

/// The roster in force: this member (the creator, slot 0) and the peer (slot 1).
static ROSTER: LazyLock<Roster> = LazyLock::new(|| {
    let me = SfuDeviceId::from_signing_key(&key(1));
    let peer = SfuDeviceId::from_signing_key(&key(2));
    Roster::sign(&key(1), SfuCallId::from_bytes(CALL), 1, &[me, peer]).unwrap()
});

fn peer() -> DeviceId {
    DeviceId::from_bytes(*SfuDeviceId::from_signing_key(&key(2)).as_bytes())
}

fn me() -> DeviceId {
    DeviceId::from_bytes(*SfuDeviceId::from_signing_key(&key(1)).as_bytes())
}

/// A well-formed opened plaintext of a `GroupKey` from the peer.
fn wrap(key_message: &[u8], with_roster: bool) -> Vec<u8> {
    Content {
        message_id: [7; 16],
        sender: peer(),
        recipient: me(),
        timestamp_ms: 1_780_000_000_000,
        message: CallMessage::GroupKey(GroupKey {
            call_id: CALL,
            key_message: key_message.to_vec().into(),
            roster: if with_roster {
                ROSTER.encode()
            } else {
                Vec::new()
            },
        }),
    }
    .encode()
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let plaintext = if selector & 1 != 0 {
        rest.to_vec()
    } else {
        wrap(rest, selector & 2 != 0)
    };
    let Ok(content) = Content::decode(&plaintext) else {
        return;
    };
    let CallMessage::GroupKey(key) = content.message else {
        return;
    };
    if key.call_id != CALL {
        return;
    }
    // The client adopts a carried roster only if it is a newer one of this call's creator.
    let mut roster = ROSTER.clone();
    if !key.roster.is_empty() {
        if let Ok(r) = Roster::decode(&key.roster) {
            if r.call_id() == roster.call_id()
                && r.creator() == roster.creator()
                && r.version() > roster.version()
            {
                roster = r;
            }
        }
    }
    let Ok(sender) = SfuDeviceId::from_bytes(content.sender.as_bytes()) else {
        return;
    };
    let Some(slot) = roster.slot(&sender) else {
        return;
    };
    let Ok(message) = KeyMessage::decode(&key.key_message) else {
        return;
    };
    let mut member = GroupE2ee::new(
        GroupCallId(CALL),
        MemberSlot(0),
        &mut StdRng::seed_from_u64(1),
    )
    .unwrap();
    let now = Instant::now();
    if member.receive_key(MemberSlot(slot), &message, now).is_ok() {
        assert_eq!(message.call_id, GroupCallId(CALL));
        assert_eq!(message.key_id.sender, MemberSlot(slot));
        assert_ne!(slot, 0);
        // The same key again is accepted (no change); an older generation is not.
        assert!(member.receive_key(MemberSlot(slot), &message, now).is_ok());
    }
});

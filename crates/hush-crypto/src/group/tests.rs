//! Adversarial tests of group call keys: what a kicked member, a late joiner and a malicious
//! SFU can and cannot do.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::RngCore as _;
use rand::SeedableRng;

use sframe::frame::EncryptedFrameView;

use super::*;

const CALL: GroupCallId = GroupCallId([9; 16]);

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

fn member(slot: u8) -> GroupE2ee {
    GroupE2ee::new(CALL, MemberSlot(slot), &mut rng(u64::from(slot) + 100)).unwrap()
}

/// Every member gives its current key to every other.
fn exchange_all(members: &mut [GroupE2ee], now: Instant) {
    let messages: Vec<_> = members.iter().map(|m| (m.me(), m.key_message())).collect();
    for m in members.iter_mut() {
        for (from, msg) in &messages {
            if *from != m.me() {
                m.receive_key(*from, msg, now).unwrap();
            }
        }
    }
}

fn frame(i: u32) -> Vec<u8> {
    format!("MARKER frame {i}").into_bytes()
}

fn opens(rx: &mut GroupE2ee, from: u8, sframe: &[u8], now: Instant) -> Result<Opened, GroupError> {
    rx.decrypt(MemberSlot(from), FrameKind::Audio, sframe, now)
}

/// Whether `sframe` opens under `base` used as the key of the id its header names: what an
/// attacker holding `base` could do with it, whatever key messages it got.
fn opens_with_base(base: &[u8; BASE_KEY_LEN], sframe: &[u8]) -> bool {
    let meta = FrameKind::Audio.metadata();
    let frame = EncryptedFrameView::try_with_meta_data(sframe, &meta).unwrap();
    let id = GroupKeyId::from_kid(frame.header().key_id()).unwrap();
    let mut keys = SenderKeys::default();
    keys.install(id, base, Instant::now()).unwrap();
    matches!(keys.open(id, &frame, Instant::now()), Ok(Some(_)))
}

#[test]
fn members_decrypt_each_others_frames_and_the_ciphertext_hides_them() {
    let now = Instant::now();
    let mut m = vec![member(0), member(1), member(2)];
    exchange_all(&mut m, now);
    for i in 0..10 {
        let sframe = m[0].encrypt(FrameKind::Audio, &frame(i)).unwrap();
        assert!(!sframe.windows(6).any(|w| w == b"MARKER"));
        // 1 config byte + 4 KID bytes + counter bytes + 16 tag bytes.
        assert!(sframe.len() <= frame(i).len() + 1 + 4 + 1 + 16);
        for rx in &mut m[1..] {
            assert_eq!(opens(rx, 0, &sframe, now).unwrap(), Opened::Frame(frame(i)));
        }
    }
    assert_eq!(m[1].stats().decrypted, 10);
}

#[test]
fn a_kicked_member_that_keeps_its_keys_and_every_packet_decrypts_nothing_after_the_rotation() {
    let now = Instant::now();
    let mut m = vec![member(0), member(1), member(2)];
    exchange_all(&mut m, now);
    let before = m[0].encrypt(FrameKind::Audio, &frame(0)).unwrap();
    assert!(matches!(
        opens(&mut m[2], 0, &before, now),
        Ok(Opened::Frame(_))
    ));
    // Every key the kicked member ever held.
    let known: Vec<[u8; BASE_KEY_LEN]> = m.iter().map(|x| *x.key_message().base_key).collect();
    assert!(opens_with_base(&known[0], &before));

    // Member 2 is kicked: the others drop it and rotate; the new keys go to the others only.
    let mut kicked = m.pop().unwrap();
    for x in &mut m {
        x.remove_member(MemberSlot(2));
    }
    let rotated: Vec<_> = m
        .iter_mut()
        .map(|x| (x.me(), x.rotate(&mut rng(7 + u64::from(x.me().0))).unwrap()))
        .collect();
    for x in &mut m {
        for (from, msg) in &rotated {
            if *from != x.me() {
                x.receive_key(*from, msg, now).unwrap();
            }
        }
    }
    // A colluding SFU forwards everything to the kicked member, long after the grace window.
    let later = now + GRACE + HOLD + Duration::from_secs(1);
    for i in 1..50 {
        let sframe = m[0].encrypt(FrameKind::Audio, &frame(i)).unwrap();
        assert_eq!(
            opens(&mut m[1], 0, &sframe, later).unwrap(),
            Opened::Frame(frame(i))
        );
        match opens(&mut kicked, 0, &sframe, later) {
            Ok(Opened::Held) | Err(_) => {}
            Ok(Opened::Frame(_)) => panic!("the kicked member decrypted frame {i}"),
        }
        for base in &known {
            assert!(
                !opens_with_base(base, &sframe),
                "an old key opens frame {i}"
            );
        }
    }
    kicked.handle_timeout(later + HOLD);
    assert!(kicked.poll_released().is_none());
    assert_eq!(kicked.stats().decrypted, 1);
    assert!(kicked.stats().dropped_unknown_key > 0);
}

#[test]
fn a_late_joiner_given_every_earlier_packet_decrypts_nothing_sent_before_it_joined() {
    let now = Instant::now();
    let mut m = vec![member(0), member(1)];
    exchange_all(&mut m, now);
    let earlier: Vec<_> = (0..20)
        .map(|i| m[0].encrypt(FrameKind::Audio, &frame(i)).unwrap())
        .collect();
    // The last one is still in flight to member 1 when member 2 joins.
    for f in &earlier[..19] {
        assert!(matches!(opens(&mut m[1], 0, f, now), Ok(Opened::Frame(_))));
    }
    // Member 2 joins: each sender ratchets and gives the joiner only the new step.
    let mut joiner = member(2);
    let mut given = Vec::new();
    for x in &mut m {
        let JoinKeys::Ratcheted(msg) = x.ratchet_for_join(&mut rng(1)).unwrap() else {
            panic!("the first join ratchets");
        };
        joiner.receive_key(x.me(), &msg, now).unwrap();
        given.push(*msg.base_key);
    }
    for f in &earlier {
        match opens(&mut joiner, 0, f, now) {
            Err(GroupError::NoKey(_)) => {}
            other => panic!("the joiner opened an earlier frame: {other:?}"),
        }
        // Not even by using the keys it was given under the earlier key id.
        for base in &given {
            assert!(
                !opens_with_base(base, f),
                "a joiner's key opens an earlier frame"
            );
        }
    }
    // New frames reach everyone: member 1 follows the step on its own.
    let after = m[0].encrypt(FrameKind::Audio, &frame(99)).unwrap();
    assert_eq!(
        opens(&mut joiner, 0, &after, now).unwrap(),
        Opened::Frame(frame(99))
    );
    assert_eq!(
        opens(&mut m[1], 0, &after, now).unwrap(),
        Opened::Frame(frame(99))
    );
    // A frame sent just before the join, arriving late, still opens for the old member.
    assert_eq!(
        opens(&mut m[1], 0, &earlier[19], now).unwrap(),
        Opened::Frame(frame(19))
    );
}

#[test]
fn a_malicious_sfu_that_alters_truncates_replays_or_relabels_frames_gets_them_refused() {
    let now = Instant::now();
    let mut m = vec![member(0), member(1), member(2)];
    exchange_all(&mut m, now);
    let genuine = m[0].encrypt(FrameKind::Audio, &frame(1)).unwrap();

    // Every single bit flip is refused.
    for bit in 0..genuine.len() * 8 {
        let mut altered = genuine.clone();
        altered[bit / 8] ^= 1 << (bit % 8);
        match opens(&mut m[1], 0, &altered, now) {
            Ok(Opened::Frame(_)) => panic!("bit {bit} flipped and the frame opened"),
            Ok(Opened::Held) | Err(_) => {}
        }
    }
    // Every truncation is refused.
    for len in 0..genuine.len() {
        assert!(
            !matches!(
                opens(&mut m[1], 0, &genuine[..len], now),
                Ok(Opened::Frame(_))
            ),
            "truncated to {len}"
        );
    }
    // Relabelled as video: the kind is authenticated.
    assert_eq!(
        m[1].decrypt(MemberSlot(0), FrameKind::Video, &genuine, now),
        Err(GroupError::Authentication)
    );
    // Relabelled as from member 2.
    assert_eq!(
        opens(&mut m[1], 2, &genuine, now),
        Err(GroupError::WrongSender {
            claimed: MemberSlot(0),
            from: MemberSlot(2)
        })
    );
    // The genuine frame opens once; its replay is refused.
    assert_eq!(
        opens(&mut m[1], 0, &genuine, now).unwrap(),
        Opened::Frame(frame(1))
    );
    assert_eq!(
        opens(&mut m[1], 0, &genuine, now),
        Err(GroupError::Replayed)
    );
    // Reordered frames open; the call goes on.
    let a = m[0].encrypt(FrameKind::Audio, &frame(2)).unwrap();
    let b = m[0].encrypt(FrameKind::Audio, &frame(3)).unwrap();
    assert_eq!(
        opens(&mut m[1], 0, &b, now).unwrap(),
        Opened::Frame(frame(3))
    );
    assert_eq!(
        opens(&mut m[1], 0, &a, now).unwrap(),
        Opened::Frame(frame(2))
    );
    assert!(m[1].stats().refused > 0);
}

#[test]
fn key_messages_from_the_wrong_member_call_or_generation_are_refused() {
    let now = Instant::now();
    let mut a = member(0);
    let mut b = member(1);
    let mut c = member(2);
    let a_key = a.key_message();
    // Member 2's session delivers a key claiming to be member 0's.
    assert!(matches!(
        c.receive_key(MemberSlot(2), &a_key, now),
        Err(GroupError::WrongSender { .. })
    ));
    // A key message of another call.
    let mut other_call = a_key.clone();
    other_call.call_id = GroupCallId([1; 16]);
    assert_eq!(
        c.receive_key(MemberSlot(0), &other_call, now),
        Err(GroupError::OtherCall)
    );
    c.receive_key(MemberSlot(0), &a_key, now).unwrap();
    // Another key under the same generation and step (equivocation).
    let mut contradicting = a_key.clone();
    contradicting.base_key[0] ^= 1;
    assert!(matches!(
        c.receive_key(MemberSlot(0), &contradicting, now),
        Err(GroupError::StaleKey(_))
    ));
    // After a rotation the old generation cannot be installed again.
    let rotated = a.rotate(&mut rng(5)).unwrap();
    b.receive_key(MemberSlot(0), &rotated, now).unwrap();
    assert!(matches!(
        b.receive_key(MemberSlot(0), &a_key, now),
        Err(GroupError::StaleKey(_))
    ));
    // A key message for a later step must be the ratchet of the step held.
    let mut fake_step = a_key.clone();
    fake_step.key_id.step = 1;
    assert!(matches!(
        c.receive_key(MemberSlot(0), &fake_step, now),
        Err(GroupError::StaleKey(_))
    ));
    assert_eq!(c.stats().keys_refused, 4);
}

#[test]
fn frames_under_a_key_in_flight_are_held_then_released_or_dropped() {
    let now = Instant::now();
    let mut a = member(0);
    let mut b = member(1);
    let first = a.encrypt(FrameKind::Audio, &frame(1)).unwrap();
    assert_eq!(opens(&mut b, 0, &first, now).unwrap(), Opened::Held);
    assert!(b.poll_timeout().is_some());
    b.receive_key(
        MemberSlot(0),
        &a.key_message(),
        now + Duration::from_millis(30),
    )
    .unwrap();
    assert_eq!(
        b.poll_released(),
        Some((MemberSlot(0), FrameKind::Audio, frame(1)))
    );

    // After a rotation whose key never comes, held frames are dropped after HOLD, unshown.
    a.rotate(&mut rng(3)).unwrap();
    let lost = a.encrypt(FrameKind::Audio, &frame(2)).unwrap();
    assert_eq!(opens(&mut b, 0, &lost, now).unwrap(), Opened::Held);
    b.handle_timeout(now + HOLD + Duration::from_millis(1));
    assert!(b.poll_released().is_none());
    assert_eq!(b.stats().dropped_unknown_key, 1);
    // The hold is bounded per sender.
    for i in 0..(MAX_HELD_PER_SENDER as u32 + 5) {
        let f = a.encrypt(FrameKind::Audio, &frame(i)).unwrap();
        let _ = opens(&mut b, 0, &f, now + HOLD * 2);
    }
    assert_eq!(b.stats().held, 2 + MAX_HELD_PER_SENDER as u64);
}

#[test]
fn a_replaced_key_still_opens_frames_in_flight_for_the_grace_window_only() {
    let now = Instant::now();
    let mut a = member(0);
    let mut b = member(1);
    b.receive_key(MemberSlot(0), &a.key_message(), now).unwrap();
    let in_flight: Vec<_> = (0..3)
        .map(|i| a.encrypt(FrameKind::Audio, &frame(i)).unwrap())
        .collect();
    let rotated = a.rotate(&mut rng(11)).unwrap();
    b.receive_key(MemberSlot(0), &rotated, now).unwrap();
    assert_eq!(
        opens(&mut b, 0, &in_flight[0], now + GRACE / 2).unwrap(),
        Opened::Frame(frame(0))
    );
    b.handle_timeout(now + GRACE);
    assert!(matches!(
        opens(&mut b, 0, &in_flight[1], now + GRACE),
        Err(GroupError::NoKey(_))
    ));
}

#[test]
fn garbage_frames_and_key_messages_never_panic() {
    let now = Instant::now();
    let mut b = member(1);
    let mut r = rng(42);
    for len in 0..200 {
        let mut bytes = vec![0u8; len];
        r.fill_bytes(&mut bytes);
        let _ = b.decrypt(MemberSlot((len % 3) as u8), FrameKind::Video, &bytes, now);
        let _ = KeyMessage::decode(&bytes);
    }
}

/// Eight members; every simulated second one member leaves or a new one joins, for 30 s. Key
/// messages take 40 ms to arrive; the stable members keep talking (20 ms frames) and decrypt at
/// least 99 % of each other's frames.
#[test]
fn audio_keeps_flowing_between_stable_members_under_churn() {
    const FRAME: Duration = Duration::from_millis(20);
    const KEY_DELAY: Duration = Duration::from_millis(40);
    let start = Instant::now();
    let mut members: BTreeMap<u8, GroupE2ee> = (0..8).map(|s| (s, member(s))).collect();
    {
        let mut all: Vec<_> = members
            .values_mut()
            .map(|m| std::mem::replace(m, member(255)))
            .collect();
        exchange_all(&mut all, start);
        for m in all {
            members.insert(m.me().0, m);
        }
    }
    let stable = [0u8, 1, 2, 3];
    // (arrival time, to, from, message)
    let mut in_flight: Vec<(Instant, u8, u8, KeyMessage)> = Vec::new();
    let mut next_slot = 8u8;
    let mut r = rng(77);
    let mut sent = 0u64;
    let mut opened = 0u64;
    let ticks = 30 * 1000 / 20;
    for tick in 0..ticks {
        let now = start + FRAME * tick;
        // Deliver key messages that have arrived.
        in_flight.sort_by_key(|k| k.0);
        while in_flight.first().is_some_and(|k| k.0 <= now) {
            let (_, to, from, msg) = in_flight.remove(0);
            if let Some(m) = members.get_mut(&to) {
                let _ = m.receive_key(MemberSlot(from), &msg, now);
            }
        }
        // Churn once a second: alternately a non-stable member leaves or a new one joins.
        if tick % 50 == 25 {
            let churners: Vec<u8> = members
                .keys()
                .copied()
                .filter(|s| !stable.contains(s))
                .collect();
            if tick % 100 == 25 && !churners.is_empty() {
                let gone = churners[r.random_range(0..churners.len())];
                members.remove(&gone);
                let slots: Vec<u8> = members.keys().copied().collect();
                for s in &slots {
                    let m = members.get_mut(s).unwrap();
                    m.remove_member(MemberSlot(gone));
                    let msg = m.rotate(&mut r).unwrap();
                    for to in &slots {
                        if to != s {
                            in_flight.push((now + KEY_DELAY, *to, *s, msg.clone()));
                        }
                    }
                }
            } else {
                let new = next_slot;
                next_slot += 1;
                let joiner = member(new);
                let slots: Vec<u8> = members.keys().copied().collect();
                for s in &slots {
                    let m = members.get_mut(s).unwrap();
                    match m.ratchet_for_join(&mut r).unwrap() {
                        JoinKeys::Ratcheted(msg) => in_flight.push((now + KEY_DELAY, new, *s, msg)),
                        JoinKeys::NewGeneration(msg) => {
                            for to in slots.iter().chain([&new]) {
                                if to != s {
                                    in_flight.push((now + KEY_DELAY, *to, *s, msg.clone()));
                                }
                            }
                        }
                    }
                    in_flight.push((now + KEY_DELAY, *s, new, joiner.key_message()));
                }
                members.insert(new, joiner);
            }
        }
        // Stable members send; stable members receive.
        for &s in &stable {
            let f = frame(tick);
            let sframe = members
                .get_mut(&s)
                .unwrap()
                .encrypt(FrameKind::Audio, &f)
                .unwrap();
            for &rx in &stable {
                if rx == s {
                    continue;
                }
                sent += 1;
                let m = members.get_mut(&rx).unwrap();
                if let Ok(Opened::Frame(p)) =
                    m.decrypt(MemberSlot(s), FrameKind::Audio, &sframe, now)
                {
                    assert_eq!(p, f);
                    opened += 1;
                }
                while let Some((_, _, p)) = m.poll_released() {
                    assert!(p.starts_with(b"MARKER"));
                    opened += 1;
                }
            }
        }
        for m in members.values_mut() {
            m.handle_timeout(now);
        }
    }
    let ratio = opened as f64 / sent as f64;
    assert!(
        ratio >= 0.99,
        "stable members decrypted {opened}/{sent} = {ratio:.4}"
    );
}

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The vector in docs/crypto.md §9, printed by `crates/hush-crypto/tools/group_vector.py` (an
/// independent implementation on Python's hmac and python-cryptography's AES-GCM).
#[test]
fn test_vector_matches_independent_implementation() {
    let base0: [u8; 32] = unhex("404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f")
        .try_into()
        .unwrap();
    let base1 = ratchet_base_key(&base0);
    assert_eq!(
        base1[..],
        unhex("261ce309d4e447344e05ede70b5227bd0ad31cfcdb1fe7e2a703fdec5d096e0b")[..]
    );
    assert_eq!(
        ratchet_base_key(&base1)[..],
        unhex("865826ab0d9d763ddba51b94cce68a2a251313b4b4e01343b1428e1a9a19d6c1")[..]
    );
    let id = GroupKeyId {
        sender: MemberSlot(3),
        generation: 0x0102,
        step: 1,
    };
    assert_eq!(id.to_kid(), 0x0301_0201);
    let call = GroupCallId(
        unhex("000102030405060708090a0b0c0d0e0f")
            .try_into()
            .unwrap(),
    );
    let message = KeyMessage {
        call_id: call,
        key_id: id,
        base_key: base1.clone(),
    };
    assert_eq!(
        message.encode()[..],
        unhex(
            "01000102030405060708090a0b0c0d0e0f03010201261ce309d4e447344e05ed
             e70b5227bd0ad31cfcdb1fe7e2a703fdec5d096e0b"
        )[..]
    );
    // The first frame a sender encrypts under this key (counter 0).
    let mut sender = GroupE2ee::new(call, MemberSlot(3), &mut rng(1)).unwrap();
    sender.sending = SendingKey::new(id, base1).unwrap();
    let frame0 = sender
        .encrypt(FrameKind::Audio, b"hush group audio frame")
        .unwrap();
    assert_eq!(
        frame0,
        unhex(
            "b00301020176f2d4ccd829ac1b37426ad9436b245770fbb51f2d9e37fc18ddd56d38bb9ddc8ef176ba91aa"
        )
    );
    // A receiver holding step 0 of that generation follows the ratchet to open counter 5.
    let mut receiver = GroupE2ee::new(call, MemberSlot(4), &mut rng(2)).unwrap();
    let step0 = KeyMessage {
        call_id: call,
        key_id: GroupKeyId { step: 0, ..id },
        base_key: Zeroizing::new(base0),
    };
    receiver
        .receive_key(MemberSlot(3), &step0, Instant::now())
        .unwrap();
    let frame5 = unhex(
        "b5030102011a27b56d051810ba461ae688c870cb7749502be125c9a4bef3c003cf0c201df093b868023a0c",
    );
    assert_eq!(
        receiver
            .decrypt(MemberSlot(3), FrameKind::Audio, &frame5, Instant::now())
            .unwrap(),
        Opened::Frame(b"hush group audio frame".to_vec())
    );
}

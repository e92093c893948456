//! proptest: random interleavings of messages, offers and answers between two devices, with
//! loss, reordering and replay. Invariants: every first delivery opens to what was sent; every
//! replay is refused; every answered call ends with mirrored media keys on both sides.

mod common;

use std::collections::HashMap;

use common::{now, pair, run};
use hush_crypto::{CallId, MediaKeys, PendingOffer};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    /// Alice (true) or Bob sends a text message.
    Send(bool, Vec<u8>),
    /// Alice (true) or Bob starts a call.
    Call(bool),
    /// Deliver the in-flight message at this index (modulo), i.e. any order.
    Deliver(usize),
    /// Lose the in-flight message at this index.
    Lose(usize),
    /// Deliver again a message that was already delivered.
    Replay(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..40)).prop_map(|(a, m)| Op::Send(a, m)),
        1 => any::<bool>().prop_map(Op::Call),
        5 => any::<usize>().prop_map(Op::Deliver),
        1 => any::<usize>().prop_map(Op::Lose),
        1 => any::<usize>().prop_map(Op::Replay),
    ]
}

#[derive(Clone)]
enum Kind {
    Text(Vec<u8>),
    Offer,
    Answer(CallId),
}

#[derive(Clone)]
struct Msg {
    to_alice: bool,
    sealed: Vec<u8>,
    kind: Kind,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_interleavings_keep_sessions_and_calls_consistent(
        seed in any::<u64>(),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let mut p = pair(seed);
        let mut in_flight: Vec<Msg> = Vec::new();
        let mut delivered: Vec<Msg> = Vec::new();
        // Pending offers by call id, per caller (true = Alice).
        let mut pending: HashMap<CallId, (bool, PendingOffer)> = HashMap::new();
        let mut callee_keys: HashMap<CallId, MediaKeys> = HashMap::new();
        let mut completed = 0usize;

        for op in ops {
            match op {
                Op::Send(from_alice, text) => {
                    let (dev, to) = if from_alice { (&mut p.alice, &p.bob_addr) } else { (&mut p.bob, &p.alice_addr) };
                    let sealed = run(dev.seal(to, &text, now())).unwrap();
                    in_flight.push(Msg { to_alice: !from_alice, sealed, kind: Kind::Text(text) });
                }
                Op::Call(from_alice) => {
                    let (dev, to) = if from_alice { (&mut p.alice, &p.bob_addr) } else { (&mut p.bob, &p.alice_addr) };
                    let (pend, sealed) = run(dev.start_call(to, now())).unwrap();
                    pending.insert(pend.call_id(), (from_alice, pend));
                    in_flight.push(Msg { to_alice: !from_alice, sealed, kind: Kind::Offer });
                }
                Op::Lose(i) if !in_flight.is_empty() => {
                    let n = in_flight.len();
                    in_flight.remove(i % n);
                }
                Op::Deliver(i) if !in_flight.is_empty() => {
                    let n = in_flight.len();
                    let msg = in_flight.remove(i % n);
                    let (dev, from) = if msg.to_alice { (&mut p.alice, &p.bob_addr) } else { (&mut p.bob, &p.alice_addr) };
                    match &msg.kind {
                        Kind::Text(text) => {
                            prop_assert_eq!(&run(dev.open(from, &msg.sealed)).unwrap(), text);
                        }
                        Kind::Offer => {
                            let incoming = run(dev.receive_offer(from, &msg.sealed)).unwrap();
                            let call_id = incoming.call_id();
                            let (sealed, keys) = run(dev.accept_call(from, incoming, now())).unwrap();
                            callee_keys.insert(call_id, keys);
                            in_flight.push(Msg { to_alice: !msg.to_alice, sealed, kind: Kind::Answer(call_id) });
                        }
                        Kind::Answer(call_id) => {
                            let (caller_is_alice, mut pend) = pending.remove(call_id).unwrap();
                            prop_assert_eq!(caller_is_alice, msg.to_alice);
                            let keys = run(dev.receive_answer(from, &mut pend, &msg.sealed)).unwrap();
                            let theirs = &callee_keys[call_id];
                            prop_assert!(keys.send_key == theirs.recv_key && keys.recv_key == theirs.send_key);
                            prop_assert!(keys.send_salt == theirs.recv_salt && keys.recv_salt == theirs.send_salt);
                            prop_assert!(keys.send_key != keys.recv_key);
                            completed += 1;
                        }
                    }
                    delivered.push(msg);
                }
                Op::Replay(i) if !delivered.is_empty() => {
                    let n = delivered.len();
                    let msg = delivered[i % n].clone();
                    let (dev, from) = if msg.to_alice { (&mut p.alice, &p.bob_addr) } else { (&mut p.bob, &p.alice_addr) };
                    prop_assert!(run(dev.open(from, &msg.sealed)).is_err(), "replayed message opened");
                }
                _ => {}
            }
        }
        // Keys of different completed calls never collide.
        let mut seen = Vec::new();
        for k in callee_keys.values() {
            prop_assert!(!seen.iter().any(|s: &&MediaKeys| s.send_key == k.send_key));
            seen.push(k);
        }
        let _ = completed;
    }
}

use std::collections::HashSet;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

type M = CallMachine<u32>;

fn id(n: u8) -> CallId {
    CallId([n; 16])
}

fn drain(m: &mut M) -> Vec<Output<u32>> {
    std::iter::from_fn(|| m.poll_output()).collect()
}

fn sent(outs: &[Output<u32>]) -> Vec<Signal<u32>> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Send { signal, .. } => Some(signal.clone()),
            Output::Event(_) => None,
        })
        .collect()
}

fn events(outs: &[Output<u32>]) -> Vec<Event<u32>> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e.clone()),
            Output::Send { .. } => None,
        })
        .collect()
}

fn alice() -> PeerId {
    "alice".into()
}
fn bob() -> PeerId {
    "bob".into()
}

#[test]
fn full_call_happy_path() {
    let t0 = Instant::now();
    let (mut a, mut b) = (M::new(Timeouts::default()), M::new(Timeouts::default()));
    a.call(t0, bob(), id(1), 100).unwrap();
    for s in sent(&drain(&mut a)) {
        b.handle_signal(t0, &alice(), s);
    }
    let out = drain(&mut b);
    assert_eq!(sent(&out), vec![Signal::Ringing { call_id: id(1) }]);
    assert_eq!(
        events(&out),
        vec![Event::Incoming {
            call_id: id(1),
            peer: alice(),
            offer: 100,
            replaces_outgoing: false
        }]
    );
    for s in sent(&out) {
        a.handle_signal(t0, &bob(), s);
    }
    assert_eq!(
        events(&drain(&mut a)),
        vec![Event::RemoteRinging { call_id: id(1) }]
    );
    assert!(!a.media_allowed(id(1)) && !b.media_allowed(id(1)));

    b.accept(t0, id(1), 200).unwrap();
    assert!(b.media_allowed(id(1)));
    for s in sent(&drain(&mut b)) {
        a.handle_signal(t0, &bob(), s);
    }
    assert_eq!(
        events(&drain(&mut a)),
        vec![Event::Answered {
            call_id: id(1),
            answer: 200
        }]
    );
    assert!(a.media_allowed(id(1)));
    a.path_up(id(1)).unwrap();
    assert_eq!(a.active().unwrap().2, CallState::Connected);
    assert_eq!(a.poll_timeout(), None, "a connected call has no timer");

    a.hangup(id(1)).unwrap();
    let out = drain(&mut a);
    for s in sent(&out) {
        b.handle_signal(t0, &alice(), s);
    }
    assert!(a.active().is_none() && b.active().is_none());
    assert_eq!(
        events(&drain(&mut b)),
        vec![Event::Ended {
            call_id: id(1),
            reason: EndReason::RemoteHangup(HangupReason::Normal)
        }]
    );
}

#[test]
fn busy_when_in_another_call() {
    let t0 = Instant::now();
    let mut b = M::new(Timeouts::default());
    b.handle_signal(
        t0,
        &alice(),
        Signal::Offer {
            call_id: id(1),
            payload: 1,
        },
    );
    drain(&mut b);
    b.handle_signal(
        t0,
        &"carol".into(),
        Signal::Offer {
            call_id: id(2),
            payload: 2,
        },
    );
    let out = drain(&mut b);
    assert_eq!(
        out,
        vec![Output::Send {
            peer: "carol".into(),
            signal: Signal::Busy { call_id: id(2) }
        }]
    );
    assert_eq!(b.active().unwrap().0, id(1), "the first call keeps ringing");
    assert_eq!(
        b.call(t0, "carol".into(), id(3), 3),
        Err(CommandError::Busy)
    );

    // The caller that got Busy ends its call.
    let mut c = M::new(Timeouts::default());
    c.call(t0, bob(), id(2), 2).unwrap();
    drain(&mut c);
    c.handle_signal(t0, &bob(), Signal::Busy { call_id: id(2) });
    assert!(events(&drain(&mut c)).contains(&Event::Ended {
        call_id: id(2),
        reason: EndReason::RemoteBusy
    }));
}

#[test]
fn glare_resolves_to_the_larger_call_id_on_both_sides() {
    let t0 = Instant::now();
    let (mut a, mut b) = (M::new(Timeouts::default()), M::new(Timeouts::default()));
    a.call(t0, bob(), id(9), 9).unwrap();
    b.call(t0, alice(), id(3), 3).unwrap();
    let from_a = sent(&drain(&mut a));
    let from_b = sent(&drain(&mut b));
    for s in from_b {
        a.handle_signal(t0, &bob(), s);
    }
    for s in from_a {
        b.handle_signal(t0, &alice(), s);
    }
    // Alice's call (id 9) wins: Alice ignores Bob's offer and keeps offering.
    assert_eq!(a.active(), Some((id(9), Side::Caller, CallState::Offering)));
    assert!(drain(&mut a).is_empty());
    // Bob's own call ends with Glare and Alice's call rings, flagged as replacing it.
    assert_eq!(b.active(), Some((id(9), Side::Callee, CallState::Ringing)));
    let ev = events(&drain(&mut b));
    assert_eq!(
        ev,
        vec![
            Event::Ended {
                call_id: id(3),
                reason: EndReason::Glare
            },
            Event::Incoming {
                call_id: id(9),
                peer: alice(),
                offer: 9,
                replaces_outgoing: true
            }
        ]
    );
}

#[test]
fn ring_connect_and_reconnect_timeouts() {
    let t0 = Instant::now();
    let to = Timeouts::default();
    let mut a = M::new(to);
    a.call(t0, bob(), id(1), 1).unwrap();
    drain(&mut a);
    assert_eq!(a.poll_timeout(), Some(t0 + to.ring));
    a.handle_timeout(t0 + to.ring - Duration::from_millis(1));
    assert!(a.active().is_some(), "not yet");
    a.handle_timeout(t0 + to.ring);
    let out = drain(&mut a);
    assert!(sent(&out).contains(&Signal::Hangup {
        call_id: id(1),
        reason: HangupReason::Timeout
    }));
    assert!(events(&out).contains(&Event::Ended {
        call_id: id(1),
        reason: EndReason::RingTimeout
    }));

    a.call(t0, bob(), id(2), 2).unwrap();
    a.handle_signal(
        t0,
        &bob(),
        Signal::Answer {
            call_id: id(2),
            payload: 5,
        },
    );
    a.handle_timeout(t0 + to.connect);
    assert!(events(&drain(&mut a)).contains(&Event::Ended {
        call_id: id(2),
        reason: EndReason::ConnectTimeout
    }));

    a.call(t0, bob(), id(3), 3).unwrap();
    a.handle_signal(
        t0,
        &bob(),
        Signal::Answer {
            call_id: id(3),
            payload: 5,
        },
    );
    a.path_up(id(3)).unwrap();
    a.path_down(t0, id(3)).unwrap();
    a.path_up(id(3)).unwrap();
    a.path_down(t0 + Duration::from_secs(1), id(3)).unwrap();
    a.handle_timeout(t0 + Duration::from_secs(1) + to.reconnect);
    let ev = events(&drain(&mut a));
    assert!(ev.contains(&Event::Reconnecting { call_id: id(3) }));
    assert!(ev.contains(&Event::Ended {
        call_id: id(3),
        reason: EndReason::ConnectionLost
    }));
}

#[test]
fn reject_and_remote_decline() {
    let t0 = Instant::now();
    let (mut a, mut b) = (M::new(Timeouts::default()), M::new(Timeouts::default()));
    a.call(t0, bob(), id(1), 1).unwrap();
    for s in sent(&drain(&mut a)) {
        b.handle_signal(t0, &alice(), s);
    }
    drain(&mut b);
    b.reject(id(1)).unwrap();
    let out = drain(&mut b);
    assert!(events(&out).contains(&Event::Ended {
        call_id: id(1),
        reason: EndReason::LocalDeclined
    }));
    for s in sent(&out) {
        a.handle_signal(t0, &bob(), s);
    }
    assert!(events(&drain(&mut a)).contains(&Event::Ended {
        call_id: id(1),
        reason: EndReason::RemoteHangup(HangupReason::Declined)
    }));
    assert_eq!(b.accept(t0, id(1), 0), Err(CommandError::UnknownCall));
}

#[test]
fn late_and_foreign_messages_are_ignored() {
    let t0 = Instant::now();
    let mut a = M::new(Timeouts::default());
    a.call(t0, bob(), id(1), 1).unwrap();
    drain(&mut a);
    // An answer from someone who is not the callee does nothing.
    a.handle_signal(
        t0,
        &"mallory".into(),
        Signal::Answer {
            call_id: id(1),
            payload: 0,
        },
    );
    assert!(!a.media_allowed(id(1)));
    // An answer for another call id does nothing.
    a.handle_signal(
        t0,
        &bob(),
        Signal::Answer {
            call_id: id(2),
            payload: 0,
        },
    );
    assert!(!a.media_allowed(id(1)));
    a.hangup(id(1)).unwrap();
    drain(&mut a);
    // The old call's answer arriving late (or replayed) while a new call runs is ignored.
    a.call(t0, bob(), id(2), 2).unwrap();
    drain(&mut a);
    a.handle_signal(
        t0,
        &bob(),
        Signal::Answer {
            call_id: id(1),
            payload: 0,
        },
    );
    assert!(drain(&mut a).is_empty());
    assert!(!a.media_allowed(id(1)) && !a.media_allowed(id(2)));
    // A replayed offer of an ended call does not ring again.
    let mut b = M::new(Timeouts::default());
    b.handle_signal(
        t0,
        &alice(),
        Signal::Offer {
            call_id: id(5),
            payload: 5,
        },
    );
    b.hangup(id(5)).unwrap();
    drain(&mut b);
    b.handle_signal(
        t0,
        &alice(),
        Signal::Offer {
            call_id: id(5),
            payload: 5,
        },
    );
    assert!(b.active().is_none());
    assert!(drain(&mut b).is_empty());
}

#[test]
fn candidates_wait_for_accept() {
    let t0 = Instant::now();
    let mut b = M::new(Timeouts::default());
    b.handle_signal(
        t0,
        &alice(),
        Signal::Offer {
            call_id: id(1),
            payload: 1,
        },
    );
    b.handle_signal(
        t0,
        &alice(),
        Signal::IceCandidates {
            call_id: id(1),
            payload: 7,
        },
    );
    b.handle_signal(
        t0,
        &alice(),
        Signal::IceCandidates {
            call_id: id(1),
            payload: 8,
        },
    );
    let before: Vec<_> = events(&drain(&mut b));
    assert!(!before
        .iter()
        .any(|e| matches!(e, Event::RemoteCandidates { .. })));
    b.accept(t0, id(1), 2).unwrap();
    let after = events(&drain(&mut b));
    assert_eq!(
        after,
        vec![
            Event::RemoteCandidates {
                call_id: id(1),
                candidates: 7
            },
            Event::RemoteCandidates {
                call_id: id(1),
                candidates: 8
            }
        ]
    );
}

// ----- property test: two machines, random commands, a network that reorders, duplicates
// and drops, a clock that jumps. -----

#[derive(Clone, Debug)]
enum Op {
    Call { who: bool, n: u8 },
    Accept { who: bool },
    Reject { who: bool },
    Hangup { who: bool },
    PathUp { who: bool },
    PathDown { who: bool },
    Candidates { who: bool },
    Deliver { idx: usize },
    Duplicate { idx: usize },
    Drop { idx: usize },
    Advance { ms: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (any::<bool>(), 1u8..40).prop_map(|(who, n)| Op::Call { who, n }),
        1 => any::<bool>().prop_map(|who| Op::Accept { who }),
        1 => any::<bool>().prop_map(|who| Op::Reject { who }),
        1 => any::<bool>().prop_map(|who| Op::Hangup { who }),
        1 => any::<bool>().prop_map(|who| Op::PathUp { who }),
        1 => any::<bool>().prop_map(|who| Op::PathDown { who }),
        1 => any::<bool>().prop_map(|who| Op::Candidates { who }),
        3 => any::<usize>().prop_map(|idx| Op::Deliver { idx }),
        1 => any::<usize>().prop_map(|idx| Op::Duplicate { idx }),
        1 => any::<usize>().prop_map(|idx| Op::Drop { idx }),
        1 => (0u64..30_000).prop_map(|ms| Op::Advance { ms }),
    ]
}

struct Side_ {
    m: M,
    me: PeerId,
    /// Calls this side accepted (callee) or that were answered (caller).
    accepted: HashSet<CallId>,
    ended: HashSet<CallId>,
}

impl Side_ {
    /// Drains outputs into the network, checking per-event invariants.
    fn drain_into(&mut self, net: &mut Vec<(PeerId, Signal<u32>)>) {
        while let Some(o) = self.m.poll_output() {
            match o {
                Output::Send { signal, .. } => net.push((self.me.clone(), signal)),
                Output::Event(e) => {
                    let cid = match &e {
                        Event::Incoming { call_id, .. }
                        | Event::RemoteRinging { call_id }
                        | Event::RemoteCandidates { call_id, .. }
                        | Event::Connected { call_id }
                        | Event::Reconnecting { call_id } => *call_id,
                        Event::Answered { call_id, .. } => {
                            self.accepted.insert(*call_id);
                            *call_id
                        }
                        Event::Ended { call_id, .. } => {
                            assert!(self.ended.insert(*call_id), "a call ended twice");
                            *call_id
                        }
                    };
                    if !matches!(e, Event::Ended { .. }) {
                        assert!(!self.ended.contains(&cid), "event after end: {e:?}");
                    }
                    if matches!(e, Event::RemoteCandidates { .. } | Event::Connected { .. }) {
                        assert!(self.accepted.contains(&cid), "media step before accept");
                    }
                }
            }
        }
        if let Some((cid, _, _)) = self.m.active() {
            if self.m.media_allowed(cid) {
                assert!(self.accepted.contains(&cid), "media allowed before accept");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn random_message_orders_keep_invariants(ops in proptest::collection::vec(op(), 1..80)) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut sides = [
            Side_ { m: M::new(Timeouts::default()), me: alice(), accepted: HashSet::new(), ended: HashSet::new() },
            Side_ { m: M::new(Timeouts::default()), me: bob(), accepted: HashSet::new(), ended: HashSet::new() },
        ];
        let mut net: Vec<(PeerId, Signal<u32>)> = Vec::new();
        let mut fresh = 0u64;
        for op in ops {
            match op {
                Op::Call { who, n } => {
                    let s = &mut sides[usize::from(who)];
                    let peer = if who { alice() } else { bob() };
                    // Call ids are random in real use: unique, in no particular order.
                    fresh += 1;
                    let mut cid = [0u8; 16];
                    cid[0] = n;
                    cid[1..9].copy_from_slice(&fresh.to_be_bytes());
                    let _ = s.m.call(now, peer, CallId(cid), u32::from(n));
                }
                Op::Accept { who } => {
                    let s = &mut sides[usize::from(who)];
                    if let Some((cid, Side::Callee, CallState::Ringing)) = s.m.active() {
                        s.m.accept(now, cid, 0).unwrap();
                        s.accepted.insert(cid);
                    }
                }
                Op::Reject { who } => {
                    let s = &mut sides[usize::from(who)];
                    if let Some((cid, _, _)) = s.m.active() {
                        let _ = s.m.reject(cid);
                    }
                }
                Op::Hangup { who } => {
                    let s = &mut sides[usize::from(who)];
                    if let Some((cid, _, _)) = s.m.active() {
                        s.m.hangup(cid).unwrap();
                    }
                }
                Op::PathUp { who } => {
                    let s = &mut sides[usize::from(who)];
                    if let Some((cid, _, _)) = s.m.active() {
                        if s.m.media_allowed(cid) {
                            s.m.path_up(cid).unwrap();
                        } else {
                            prop_assert!(s.m.path_up(cid).is_err());
                        }
                    }
                }
                Op::PathDown { who } => {
                    let s = &mut sides[usize::from(who)];
                    if let Some((cid, _, _)) = s.m.active() {
                        let _ = s.m.path_down(now, cid);
                    }
                }
                Op::Candidates { who } => {
                    // Drivers trickle candidates as soon as they gather them, before accept too.
                    let s = &sides[usize::from(who)];
                    if let Some((cid, _, _)) = s.m.active() {
                        net.push((s.me.clone(), Signal::IceCandidates { call_id: cid, payload: 0 }));
                    }
                }
                Op::Deliver { idx } | Op::Duplicate { idx } if !net.is_empty() => {
                    let i = idx % net.len();
                    let (from, sig) = if matches!(op, Op::Deliver { .. }) {
                        net.remove(i)
                    } else {
                        net[i].clone()
                    };
                    let to = usize::from(from == alice());
                    sides[to].m.handle_signal(now, &from, sig);
                }
                Op::Drop { idx } if !net.is_empty() => {
                    let i = idx % net.len();
                    net.remove(i);
                }
                Op::Advance { ms } => {
                    now += Duration::from_millis(ms);
                    for s in sides.iter_mut() {
                        s.m.handle_timeout(now);
                    }
                }
                _ => {}
            }
            for s in sides.iter_mut() {
                s.drain_into(&mut net);
                if let Some(t) = s.m.poll_timeout() {
                    // A deadline in the past would have fired already only if time was handled.
                    prop_assert!(t > t0);
                }
            }
        }
        // Liveness: deliver everything left, then let every timer run out. No call may be stuck.
        for _ in 0..16 {
            while !net.is_empty() {
                let (from, sig) = net.remove(0);
                let to = usize::from(from == alice());
                sides[to].m.handle_signal(now, &from, sig);
                for s in sides.iter_mut() {
                    s.drain_into(&mut net);
                }
            }
            now += Duration::from_secs(120);
            for s in sides.iter_mut() {
                s.m.handle_timeout(now);
                s.drain_into(&mut net);
            }
        }
        for s in &sides {
            if let Some((_, _, state)) = s.m.active() {
                // Only a connected call (no timer) may remain; it ends on hangup.
                prop_assert_eq!(state, CallState::Connected);
            }
        }
    }
}

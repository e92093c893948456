//! Two sans-IO connections over a simulated network with a virtual clock.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hush_net::{CandidateKind, Config, Connection, ConnectionState, Event, Role};

struct Side {
    conn: Connection,
    sockets: Vec<SocketAddr>,
    events: Vec<Event>,
    received: Vec<Vec<u8>>,
    candidates: VecDeque<String>,
}

struct Pair {
    now: Instant,
    a: Side,
    b: Side,
    /// Drop everything sent to these addresses (a "network change").
    blackhole: Vec<SocketAddr>,
    delivered: usize,
    /// Whether restart credentials are carried automatically.
    signaling: bool,
}

fn fast_config() -> Config {
    Config::builder()
        .include_loopback(true)
        .consent_timeout(Duration::from_millis(600))
        .keepalive_interval(Duration::from_millis(100))
        .failed_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

fn side(role: Role, now: Instant, sock: SocketAddr) -> Side {
    side_with(fast_config(), role, now, sock)
}

fn side_with(config: Config, role: Role, now: Instant, sock: SocketAddr) -> Side {
    let mut conn = Connection::new(config, role, now).unwrap();
    conn.add_local_sockets(now, &[sock]);
    Side {
        conn,
        sockets: vec![sock],
        events: Vec::new(),
        received: Vec::new(),
        candidates: VecDeque::new(),
    }
}

impl Pair {
    fn new() -> Self {
        Self::with(fast_config)
    }

    fn with(config: impl Fn() -> Config) -> Self {
        let now = Instant::now();
        let a = side_with(
            config(),
            Role::Controlling,
            now,
            "10.0.0.1:1000".parse().unwrap(),
        );
        let b = side_with(
            config(),
            Role::Controlled,
            now,
            "10.0.0.2:2000".parse().unwrap(),
        );
        let mut p = Self {
            now,
            a,
            b,
            blackhole: Vec::new(),
            delivered: 0,
            signaling: true,
        };
        p.collect();
        let (ca, cb) = (p.a.conn.local_credentials(), p.b.conn.local_credentials());
        p.a.conn.set_remote_credentials(now, cb).unwrap();
        p.b.conn.set_remote_credentials(now, ca).unwrap();
        p
    }

    /// Moves output of both sides: packets to the other side, events into lists, candidates
    /// across "signaling" (instant here).
    fn collect(&mut self) -> bool {
        let mut progressed = false;
        for from_a in [true, false] {
            let (src, dst) = if from_a {
                (&mut self.a, &mut self.b)
            } else {
                (&mut self.b, &mut self.a)
            };
            while let Some(ev) = src.conn.poll_event() {
                progressed = true;
                // Signaling, in order: credentials first, then the candidates that follow.
                match &ev {
                    Event::LocalCandidate(c) => {
                        src.candidates.push_back(c.clone());
                    }
                    Event::Restarted { credentials } if self.signaling => {
                        src.candidates.clear();
                        dst.conn
                            .set_remote_credentials(self.now, credentials.clone())
                            .unwrap();
                    }
                    _ => {}
                }
                src.events.push(ev);
            }
            while let Some(c) = src.candidates.pop_front() {
                dst.conn.add_remote_candidate(self.now, &c).unwrap();
            }
            while let Some(d) = src.conn.recv_datagram() {
                src.received.push(d);
            }
            while let Some(t) = src.conn.poll_transmit() {
                progressed = true;
                if self.blackhole.contains(&t.destination) || self.blackhole.contains(&t.source) {
                    continue;
                }
                if dst.sockets.contains(&t.destination) {
                    self.delivered += 1;
                    dst.conn
                        .handle_packet(self.now, t.source, t.destination, &t.contents);
                }
            }
        }
        progressed
    }

    /// Runs until both are idle, then advances the clock to the next deadline.
    fn step(&mut self) {
        while self.collect() {}
        let next = [self.a.conn.poll_timeout(), self.b.conn.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        let next = next.unwrap_or(self.now + Duration::from_millis(10));
        // One millisecond of "latency" at least, so time moves.
        self.now = next.max(self.now + Duration::from_millis(1));
        self.a.conn.handle_timeout(self.now);
        self.b.conn.handle_timeout(self.now);
    }

    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            self.step();
            while self.collect() {}
            if done(self) {
                return true;
            }
        }
        false
    }
}

fn connected(s: &Side) -> bool {
    s.conn.state() == ConnectionState::Connected
}

#[test]
fn host_pair_connects_and_carries_datagrams_unchanged() {
    let mut p = Pair::new();
    assert!(p.run_until(Duration::from_secs(5), |p| connected(&p.a)
        && connected(&p.b)));
    let path = p.a.conn.path(p.now).unwrap();
    assert_eq!(path.kind, CandidateKind::Host);
    assert_eq!(path.remote, "10.0.0.2:2000".parse().unwrap());
    assert!(p
        .a
        .events
        .iter()
        .any(|e| matches!(e, Event::PathSelected(_))));
    assert!(p
        .b
        .events
        .iter()
        .any(|e| matches!(e, Event::PathSelected(_))));

    let media: Vec<Vec<u8>> = (0u8..20)
        .map(|i| vec![0x80, 96, 0, i, 1, 2, 3, i])
        .collect();
    for m in &media {
        p.a.conn.send_datagram(p.now, m).unwrap();
    }
    p.b.conn.send_datagram(p.now, &[0x80, 0, 9, 9]).unwrap();
    while p.collect() {}
    assert_eq!(p.b.received, media);
    assert_eq!(p.a.received, vec![vec![0x80, 0, 9, 9]]);
}

/// The peer's media keys can come before ICE has chosen a pair (the answer carries both):
/// what is sent meanwhile goes out on the first path, not lost. (Losing the first audio packet
/// cost a call whose sender packs four frames per packet at its start rate 80 ms more before
/// the callee heard anything: docs/benchmarks.md, "Call setup after seeding".)
#[test]
fn datagrams_sent_while_checking_go_out_on_the_first_path() {
    let mut p = Pair::new();
    assert!(p.a.conn.path(p.now).is_none());
    let media: Vec<Vec<u8>> = (0u8..12).map(|i| vec![0x80, 96, 0, i]).collect();
    for m in &media {
        p.a.conn.send_datagram(p.now, m).unwrap();
    }
    assert!(p.run_until(Duration::from_secs(5), |p| connected(&p.a)
        && connected(&p.b)));
    while p.collect() {}
    // The newest MAX_HELD_BEFORE_PATH, in order.
    let newest = &media[media.len() - hush_net::MAX_HELD_BEFORE_PATH..];
    assert_eq!(p.b.received, newest);
}

/// Held datagrams that have grown stale by the time a path comes are dropped, not sent late.
#[test]
fn datagrams_held_too_long_before_the_first_path_are_dropped() {
    let mut p = Pair::new();
    p.a.conn.send_datagram(p.now, &[0x80, 96, 0, 1]).unwrap();
    // No path for a while: A's checks go nowhere.
    p.blackhole = vec!["10.0.0.2:2000".parse().unwrap()];
    let held_at = p.now;
    assert!(!p.run_until(hush_net::HELD_BEFORE_PATH_MAX_AGE * 2, |p| connected(&p.a)));
    assert!(p.now.duration_since(held_at) > hush_net::HELD_BEFORE_PATH_MAX_AGE);
    p.a.conn.send_datagram(p.now, &[0x80, 96, 0, 2]).unwrap();
    p.blackhole.clear();
    assert!(p.run_until(Duration::from_secs(10), |p| connected(&p.a)
        && connected(&p.b)));
    while p.collect() {}
    assert!(
        !p.b.received.contains(&vec![0x80, 96, 0, 1]),
        "stale datagram sent"
    );
    assert!(
        p.b.received.contains(&vec![0x80, 96, 0, 2]),
        "fresh datagram lost"
    );
}

#[test]
fn sending_before_a_path_holds_the_datagram_and_bad_remote_input_is_an_error() {
    let now = Instant::now();
    let mut s = side(Role::Controlling, now, "10.0.0.1:1000".parse().unwrap());
    assert!(s.conn.send_datagram(now, &[0x80, 0]).is_ok());
    assert!(matches!(
        s.conn.add_remote_candidate(now, "garbage"),
        Err(hush_net::Error::InvalidCandidate(_))
    ));
    assert!(s
        .conn
        .set_remote_credentials(now, hush_net::IceCredentials::new("", ""))
        .is_err());
}

#[test]
fn unreachable_peer_fails_with_no_route() {
    let mut p = Pair::new();
    p.blackhole = vec![
        "10.0.0.1:1000".parse().unwrap(),
        "10.0.0.2:2000".parse().unwrap(),
    ];
    assert!(p.run_until(Duration::from_secs(10), |p| p.a.conn.state()
        == ConnectionState::Failed));
    assert!(p
        .a
        .events
        .iter()
        .any(|e| matches!(e, Event::Failed(hush_net::Error::NoRoute))));
    // Nothing is held for a path that will not come.
    assert!(matches!(
        p.a.conn.send_datagram(p.now, &[0x80, 0]),
        Err(hush_net::Error::NotConnected)
    ));
}

fn move_b(p: &mut Pair) -> SocketAddr {
    let old: SocketAddr = "10.0.0.2:2000".parse().unwrap();
    let new: SocketAddr = "10.0.0.3:2001".parse().unwrap();
    p.blackhole.push(old);
    p.b.sockets = vec![new];
    p.b.conn.remove_local_socket(p.now, old);
    p.b.conn.add_local_sockets(p.now, &[new]);
    new
}

fn flows_on(p: &mut Pair, new: SocketAddr) {
    assert!(p.run_until(Duration::from_secs(5), |p| {
        p.a.conn.path(p.now).is_some_and(|x| x.remote == new) && connected(&p.b)
    }));
    p.a.conn.send_datagram(p.now, &[0x80, 1, 2, 3]).unwrap();
    p.b.conn.send_datagram(p.now, &[0x80, 4, 5, 6]).unwrap();
    while p.collect() {}
    assert!(p.b.received.contains(&vec![0x80, 1, 2, 3]));
    assert!(p.a.received.contains(&vec![0x80, 4, 5, 6]));
}

#[test]
fn app_restart_after_address_change_restores_flow() {
    let mut p = Pair::new();
    assert!(p.run_until(Duration::from_secs(5), |p| connected(&p.a)
        && connected(&p.b)));
    let new = move_b(&mut p);
    // The app restarts on the network change; the credentials travel through signaling
    // (collect() forwards them), A restarts in turn and answers with its own.
    let creds = p.b.conn.restart(p.now).unwrap();
    assert_ne!(creds, p.a.conn.local_credentials());
    flows_on(&mut p, new);
    let restarts = |s: &Side| {
        s.events
            .iter()
            .filter(|e| matches!(e, Event::Restarted { .. }))
            .count()
    };
    assert_eq!(restarts(&p.a), 1);
    assert_eq!(restarts(&p.b), 1);
}

#[test]
fn consent_loss_triggers_automatic_restart() {
    let mut p = Pair::new();
    assert!(p.run_until(Duration::from_secs(5), |p| connected(&p.a)
        && connected(&p.b)));
    let new = move_b(&mut p);
    // Nobody calls restart: consent expires and the connection restarts by itself.
    assert!(p.run_until(Duration::from_secs(5), |p| p
        .a
        .events
        .iter()
        .any(|e| matches!(e, Event::StateChanged(ConnectionState::Disconnected)))));
    flows_on(&mut p, new);
}

#[test]
fn media_keeps_flowing_on_the_old_path_during_a_restart() {
    let mut p = Pair::new();
    assert!(p.run_until(Duration::from_secs(5), |p| connected(&p.a)
        && connected(&p.b)));
    p.signaling = false; // credentials are "in flight"
    let _ = p.a.conn.restart(p.now).unwrap();
    while p.collect() {}
    assert!(p.a.conn.path(p.now).is_none());
    p.a.conn.send_datagram(p.now, &[0x80, 7]).unwrap();
    p.b.conn.send_datagram(p.now, &[0x80, 8]).unwrap();
    while p.collect() {}
    assert!(p.b.received.contains(&vec![0x80, 7]));
    assert!(p.a.received.contains(&vec![0x80, 8]));
}

#[test]
fn restart_without_answer_fails_with_no_route() {
    let mut p = Pair::new();
    assert!(p.run_until(Duration::from_secs(5), |p| connected(&p.a)
        && connected(&p.b)));
    // The peer vanishes: consent is lost, the automatic restart gets no answer.
    p.signaling = false;
    p.blackhole = vec![
        "10.0.0.1:1000".parse().unwrap(),
        "10.0.0.2:2000".parse().unwrap(),
    ];
    assert!(p.run_until(Duration::from_secs(10), |p| p.a.conn.state()
        == ConnectionState::Failed));
    assert!(p
        .a
        .events
        .iter()
        .any(|e| matches!(e, Event::Failed(hush_net::Error::NoRoute))));
}

#[test]
fn network_changed_moves_the_flow_to_the_new_socket() {
    let mut p = Pair::new();
    assert!(p.run_until(Duration::from_secs(5), |p| connected(&p.a)
        && connected(&p.b)));
    let old: SocketAddr = "10.0.0.2:2000".parse().unwrap();
    let new: SocketAddr = "10.0.0.3:2001".parse().unwrap();
    p.blackhole.push(old);
    p.b.sockets = vec![new];
    let creds = p.b.conn.network_changed(p.now, &[new]).unwrap();
    assert_eq!(p.b.conn.local_sockets(), &[new]);
    // Restarted comes first, then the new generation's candidate on the new socket.
    let n = p.b.events.len();
    p.collect();
    assert!(
        matches!(&p.b.events[n], Event::Restarted { credentials } if *credentials == creds),
        "{:?}",
        &p.b.events[n..]
    );
    let candidates: Vec<&String> = p.b.events[n..]
        .iter()
        .filter_map(|e| match e {
            Event::LocalCandidate(c) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(candidates.len(), 1, "{:?}", &p.b.events[n..]);
    assert!(candidates[0].contains("10.0.0.3 2001"), "{candidates:?}");
    // The peer's set_remote_credentials (in collect) makes it restart once; no ping-pong.
    flows_on(&mut p, new);
    let restarts = |s: &Side| {
        s.events
            .iter()
            .filter(|e| matches!(e, Event::Restarted { .. }))
            .count()
    };
    assert_eq!(restarts(&p.a), 1);
    assert_eq!(restarts(&p.b), 1);
    assert!(p.b.conn.network_changed(p.now, &[]).is_err());
}

fn no_route_events(s: &Side) -> usize {
    s.events
        .iter()
        .filter(|e| matches!(e, Event::Failed(hush_net::Error::NoRoute)))
        .count()
}

/// The default timers: the ICE agent alone would declare failure after consent timeout +
/// failed timeout = 30 s of checking.
fn default_timers() -> Config {
    Config::builder().include_loopback(true).build().unwrap()
}

#[test]
fn no_route_comes_when_every_pair_has_failed_not_at_the_agent_timeout() {
    let mut p = Pair::with(default_timers);
    let start = p.now;
    p.blackhole = vec![
        "10.0.0.1:1000".parse().unwrap(),
        "10.0.0.2:2000".parse().unwrap(),
    ];
    assert!(p.run_until(Duration::from_secs(40), |p| p.a.conn.state()
        == ConnectionState::Failed));
    // Virtual clock: pairs fail after 100 checks × 20 ms, then the 3 s quiet time for more
    // remote candidates runs out (it started at the last candidate, so they overlap).
    let took = p.now - start;
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(no_route_events(&p.a), 1);
    // The controlled side does not judge its own failed pairs (the controlling side may just
    // not have had its credentials yet); in a call the controlling side's verdict ends it.
    assert_ne!(p.b.conn.state(), ConnectionState::Failed);
    // The agents' own timeout later fails B, and does not report A again.
    assert!(p.run_until(Duration::from_secs(35), |p| p.b.conn.state()
        == ConnectionState::Failed));
    p.run_until(Duration::from_secs(1), |_| false);
    assert_eq!(no_route_events(&p.a), 1);
    assert_eq!(no_route_events(&p.b), 1);
}

#[test]
fn controlled_side_checks_failed_before_the_answer_arrived_are_revived() {
    // B (controlled) checks A while A does not have B's credentials yet (the answer is slow):
    // A drops them, every pair of B fails. Then A gets the credentials: B must not have given
    // up, and the controlling side's checks revive the pairs.
    let now = Instant::now();
    let a = side_with(
        default_timers(),
        Role::Controlling,
        now,
        "10.0.0.1:1000".parse().unwrap(),
    );
    let b = side_with(
        default_timers(),
        Role::Controlled,
        now,
        "10.0.0.2:2000".parse().unwrap(),
    );
    let mut p = Pair {
        now,
        a,
        b,
        blackhole: Vec::new(),
        delivered: 0,
        signaling: true,
    };
    p.collect();
    let ca = p.a.conn.local_credentials();
    p.b.conn.set_remote_credentials(now, ca).unwrap();
    p.b.conn.remote_gathering_complete(now);
    assert!(!p.run_until(Duration::from_secs(6), |p| p.b.conn.state()
        == ConnectionState::Failed));
    let cb = p.b.conn.local_credentials();
    p.a.conn.set_remote_credentials(p.now, cb).unwrap();
    assert!(p.run_until(Duration::from_secs(5), |p| connected(&p.a)
        && connected(&p.b)));
    assert_eq!(no_route_events(&p.a) + no_route_events(&p.b), 0);
}

#[test]
fn end_of_candidates_lets_no_route_come_as_the_last_pair_fails() {
    let mut p = Pair::with(|| {
        Config::builder()
            .include_loopback(true)
            .remote_candidates_quiet(Duration::from_secs(20))
            .build()
            .unwrap()
    });
    let start = p.now;
    p.blackhole = vec![
        "10.0.0.1:1000".parse().unwrap(),
        "10.0.0.2:2000".parse().unwrap(),
    ];
    // Without the signal the long quiet time holds the verdict back...
    assert!(!p.run_until(Duration::from_secs(4), |p| p.a.conn.state()
        == ConnectionState::Failed));
    // ...the peer's end-of-candidates releases it at once (every pair has failed by now).
    p.a.conn.remote_gathering_complete(p.now);
    assert_eq!(p.a.conn.state(), ConnectionState::Failed);
    assert!(p.now - start < Duration::from_secs(5));
    while p.collect() {}
    assert_eq!(no_route_events(&p.a), 1);
}

#[test]
fn end_of_candidates_does_not_fail_a_connection_that_works() {
    let mut p = Pair::with(default_timers);
    p.a.conn.remote_gathering_complete(p.now);
    p.b.conn.remote_gathering_complete(p.now);
    assert!(p.run_until(Duration::from_secs(5), |p| connected(&p.a)
        && connected(&p.b)));
    p.run_until(Duration::from_secs(5), |_| false);
    assert!(connected(&p.a) && connected(&p.b));
    assert_eq!(no_route_events(&p.a) + no_route_events(&p.b), 0);
}

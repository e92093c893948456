//! Real NAT in Linux network namespaces (iptables MASQUERADE), coturn in an "internet"
//! namespace, and `hush-net-peer` processes behind the NATs. Needs root (CAP_NET_ADMIN / CAP_SYS_ADMIN).
//!
//! Every address used here exists only inside namespaces these tests create.

mod common;

use std::time::{Duration, Instant};

use common::{
    connect, coturn_present, netns_capable, pump_one, veth, Auth, Coturn, NatTopology, Peer, Reach,
};

const T: Duration = Duration::from_secs(20);

fn available() -> bool {
    hush_testkit::system_component("coturn (turnserver)", coturn_present())
        && hush_testkit::system_component(
            "network namespaces + iptables (root, iproute2, iptables)",
            netns_capable(),
        )
}

fn peer_args(role: &'static str, turn: &str, consent_ms: &str) -> Vec<String> {
    [
        "--role",
        role,
        "--turn",
        turn,
        "--user",
        "alice",
        "--pass",
        "wonderland",
        "--consent-ms",
        consent_ms,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

fn spawn(name: &'static str, ns: &common::Netns, args: &[String]) -> Peer {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    Peer::spawn(name, Some(ns), &a)
}

fn kind(path_line: &str) -> &str {
    path_line.split_whitespace().nth(1).unwrap_or("")
}

/// Sends `payload` from `from` and waits until `to` prints it, relaying signaling meanwhile.
fn deliver(from: &mut Peer, to: &mut Peer, payload: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let want = format!("RECV {payload}");
    let mut last_send = Instant::now() - Duration::from_secs(1);
    loop {
        assert!(
            Instant::now() < deadline,
            "{payload} not delivered; from {:#?}\nto {:#?}",
            from.log,
            to.log
        );
        if last_send.elapsed() > Duration::from_millis(100) {
            from.send(&format!("SEND {payload}"));
            last_send = Instant::now();
        }
        let mut p = None;
        pump_one(from, to, &mut p);
        if let Some(l) = pump_one(to, from, &mut p) {
            if l == want {
                return;
            }
        }
    }
}

#[test]
fn nat_without_direct_route_falls_back_to_relay() {
    if !available() {
        return;
    }
    let topo = NatTopology::new("relay", Reach::Blocked);
    let _turn = Coturn::start_in(&topo.net.name, topo.turn_ip, Auth::long_term());
    let turn = format!("{}:3478", topo.turn_ip);
    let mut a = spawn("A", &topo.a, &peer_args("controlling", &turn, "2000"));
    let mut b = spawn("B", &topo.b, &peer_args("controlled", &turn, "2000"));
    let (pa, pb) = connect(&mut a, &mut b, T);
    assert_eq!(kind(&pa), "relay", "{pa}");
    assert_eq!(kind(&pb), "relay", "{pb}");
    deliver(&mut a, &mut b, "80600001deadbeef", T);
    deliver(&mut b, &mut a, "80600002cafebabe", T);
}

#[test]
fn direct_route_through_nat_picks_a_direct_path() {
    if !available() {
        return;
    }
    let topo = NatTopology::new("direct", Reach::BPublic);
    let _turn = Coturn::start_in(&topo.net.name, topo.turn_ip, Auth::long_term());
    let turn = format!("{}:3478", topo.turn_ip);
    let mut a = spawn("A", &topo.a, &peer_args("controlling", &turn, "2000"));
    let mut b = spawn("B", &topo.b, &peer_args("controlled", &turn, "2000"));
    let (pa, pb) = connect(&mut a, &mut b, T);
    assert_ne!(
        kind(&pa),
        "relay",
        "P2P first: {pa}\nA {:#?}\nB {:#?}",
        a.log,
        b.log
    );
    assert_ne!(kind(&pb), "relay", "P2P first: {pb}");
    // A reaches B's public address directly; B sees A through A's NAT.
    assert!(pa.contains(" 192.168.2.2:"), "{pa}");
    assert!(pb.contains(" 10.99.1.2:"), "{pb}");
    deliver(&mut a, &mut b, "80600003aa55", T);
}

#[test]
fn both_behind_nat_hole_punching_picks_a_direct_path() {
    if !available() {
        return;
    }
    // Both peers behind MASQUERADE NATs with stateful firewalls (see `Reach::BothNat`): the
    // checks punch holes in both NATs and a direct pair (host ↔ the peer's server-reflexive
    // address) beats the relay.
    let topo = NatTopology::new("punch", Reach::BothNat);
    let _turn = Coturn::start_in(&topo.net.name, topo.turn_ip, Auth::long_term());
    let turn = format!("{}:3478", topo.turn_ip);
    let mut a = spawn("A", &topo.a, &peer_args("controlling", &turn, "2000"));
    let mut b = spawn("B", &topo.b, &peer_args("controlled", &turn, "2000"));
    let (pa, pb) = connect(&mut a, &mut b, T);
    assert_ne!(kind(&pa), "relay", "{pa}\nA {:#?}\nB {:#?}", a.log, b.log);
    assert_ne!(kind(&pb), "relay", "{pb}");
    // Each sees the other at its NAT's public address (with the port the NAT kept).
    assert!(pa.contains(" 10.99.2.2:"), "{pa}");
    assert!(pb.contains(" 10.99.1.2:"), "{pb}");
    deliver(&mut a, &mut b, "80600005beef", T);
    deliver(&mut b, &mut a, "80600006f00d", T);
}

/// B's address changes mid-flow (moved to another interface of its namespace); ICE restart
/// (asked by B's app, or automatic on consent loss) restores the flow. Returns the media gap.
fn address_change(app_restart: bool) -> Duration {
    let topo = NatTopology::new(
        if app_restart { "mv-app" } else { "mv-auto" },
        Reach::BothNat,
    );
    // A second LAN between B and its router, initially unused.
    veth(
        &topo.rb,
        "lan2",
        "192.168.3.1/24",
        &topo.b,
        "eth1",
        "192.168.3.254/24",
    );
    topo.b
        .ip(&["addr", "del", "192.168.3.254/24", "dev", "eth1"]);
    let _turn = Coturn::start_in(&topo.net.name, topo.turn_ip, Auth::long_term());
    let turn = format!("{}:3478", topo.turn_ip);
    let mut a = spawn("A", &topo.a, &peer_args("controlling", &turn, "1000"));
    let mut b = spawn("B", &topo.b, &peer_args("controlled", &turn, "1000"));
    let _ = connect(&mut a, &mut b, T);
    deliver(&mut a, &mut b, "8060000411", T);

    // Move B: old address gone, new address on the other interface.
    topo.b.ip(&["addr", "flush", "dev", "eth0"]);
    topo.b.ip(&["addr", "add", "192.168.3.2/24", "dev", "eth1"]);
    topo.b
        .ip(&["route", "replace", "default", "via", "192.168.3.1"]);
    let moved = Instant::now();
    if app_restart {
        b.send("RESTART");
    }
    // A keeps sending media every 20 ms; measure until B hears it again.
    let deadline = moved + T;
    let mut seq = 0u32;
    let mut last = Instant::now() - Duration::from_secs(1);
    loop {
        assert!(
            Instant::now() < deadline,
            "flow not restored; A {:#?}\nB {:#?}",
            a.log,
            b.log
        );
        if last.elapsed() >= Duration::from_millis(20) {
            seq += 1;
            a.send(&format!("SEND 8060{seq:08x}"));
            last = Instant::now();
        }
        let mut p = None;
        pump_one(&mut a, &mut b, &mut p);
        if let Some(l) = pump_one(&mut b, &mut a, &mut p) {
            if l.starts_with("RECV 8060") && b.log.iter().any(|x| x.starts_with("RESTARTED")) {
                break;
            }
        }
    }
    let gap = moved.elapsed();
    assert!(b
        .log
        .iter()
        .any(|l| l.starts_with("CAND") && l.contains("192.168.3.2")));
    eprintln!("media gap after the address change (app restart = {app_restart}): {gap:?}");
    gap
}

#[test]
fn address_change_mid_flow_app_restart_restores_flow() {
    if !available() {
        return;
    }
    let _ = address_change(true);
}

#[test]
fn address_change_mid_flow_consent_loss_restarts_by_itself() {
    if !available() {
        return;
    }
    let _ = address_change(false);
}

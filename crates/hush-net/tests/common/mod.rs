//! Test harness: network namespaces with NAT and the `hush-net-peer` helper process (coturn
//! comes from `hush_testkit::coturn`). Everything started here is stopped on Drop.

#![allow(dead_code, unreachable_pub, unused_imports)]

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub mod nodes;
pub mod proxy;

pub use hush_testkit::coturn::{coturn_present, Auth, Coturn};

/// Runs a command, panicking with its output when it fails.
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether network namespaces and iptables can be used here (needs root / CAP_NET_ADMIN).
pub fn netns_capable() -> bool {
    static CAPABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CAPABLE.get_or_init(probe_netns)
}

fn probe_netns() -> bool {
    if !hush_testkit::on_path("ip") || !hush_testkit::on_path("iptables") {
        return false;
    }
    let name = format!("hush-probe-{}", std::process::id());
    let ok = Command::new("ip")
        .args(["netns", "add", &name])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        let ok2 = Command::new("ip")
            .args(["netns", "exec", &name, "iptables", "-t", "nat", "-L"])
            .output()
            .is_ok_and(|o| o.status.success());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        return ok2;
    }
    false
}

/// A network namespace, deleted on Drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = format!("hush-{}-{tag}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Self { name }
    }

    /// Runs `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        sh(&v);
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        sh(&v);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Links namespace `a` (interface `ia`, address `addr_a/prefix`) to `b` (`ib`, `addr_b`).
pub fn veth(a: &Netns, ia: &str, addr_a: &str, b: &Netns, ib: &str, addr_b: &str) {
    a.ip(&[
        "link", "add", ia, "type", "veth", "peer", "name", ib, "netns", &b.name,
    ]);
    a.ip(&["addr", "add", addr_a, "dev", ia]);
    b.ip(&["addr", "add", addr_b, "dev", ib]);
    a.ip(&["link", "set", ia, "up"]);
    b.ip(&["link", "set", ib, "up"]);
}

/// How the two peers of a [`NatTopology`] can reach each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Both behind NAT and the internet drops traffic between the two NATs: only the relay
    /// connects them.
    Blocked,
    /// Both behind NAT, traffic between the NATs allowed: hole punching works, a direct pair
    /// is found.
    ///
    /// It works only because the routers also run the stateful firewall every home router
    /// has (unsolicited inbound packets to the router dropped in `INPUT`). Without it, the
    /// first check from the peer that reaches a router before this side's own check has left
    /// is delivered to the router itself (no listener, ICMP port unreachable) and conntrack
    /// *confirms* an entry for it: `peer:pP → router:pX`. When this side's check then leaves
    /// from `lan:pX`, MASQUERADE (without `--random`, as here, it keeps the source port when
    /// it can) finds the reply tuple `peer:pP → router:pX` taken and picks another port;
    /// the peer's NAT, expecting replies from `router:pX`, drops the packets, and the
    /// router's stale entry, refreshed by every further check, keeps blocking `pX`. Dropping
    /// the packet in `INPUT` leaves its conntrack entry unconfirmed (discarded), so the port
    /// stays free and the mapping endpoint-independent. Observed here: without the rule the
    /// pair was relay in 3 of 3 runs (in one, the peer saw this side at a NAT port other
    /// than its host port); with it, host ↔ srflx in 6 of 6.
    BothNat,
    /// A behind NAT, B with a public address (192.168.2.2 routed by the internet): a direct
    /// path exists.
    BPublic,
}

/// Two peers, each behind its own router (iptables MASQUERADE NAT), joined by an "internet"
/// namespace that hosts the TURN server at 10.99.0.1.
///
/// Addresses (all inside these namespaces): peer A 192.168.1.2 behind NAT 10.99.1.2, peer B
/// 192.168.2.2 behind NAT 10.99.2.2 (or routed as is with [`Reach::BPublic`]).
pub struct NatTopology {
    // Field order = drop order: peers' namespaces go last.
    pub a: Netns,
    pub b: Netns,
    pub ra: Netns,
    pub rb: Netns,
    pub net: Netns,
    pub void: Netns,
    pub turn_ip: IpAddr,
}

impl NatTopology {
    pub fn new(tag: &str, reach: Reach) -> Self {
        let net = Netns::new(&format!("{tag}-n"));
        let void = Netns::new(&format!("{tag}-v"));
        let ra = Netns::new(&format!("{tag}-ra"));
        let rb = Netns::new(&format!("{tag}-rb"));
        let a = Netns::new(&format!("{tag}-a"));
        let b = Netns::new(&format!("{tag}-b"));
        // The TURN server's address lives on the internet namespace's loopback.
        net.ip(&["addr", "add", "10.99.0.1/32", "dev", "lo"]);
        net.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        // Like the internet, unroutable (private) destinations vanish silently instead of
        // failing the sender locally: the default route leads into a namespace that does not
        // forward.
        veth(&net, "void", "10.99.9.1/30", &void, "in", "10.99.9.2/30");
        net.ip(&["route", "add", "default", "via", "10.99.9.2"]);
        veth(&net, "to-ra", "10.99.1.1/24", &ra, "wan", "10.99.1.2/24");
        veth(&net, "to-rb", "10.99.2.1/24", &rb, "wan", "10.99.2.2/24");
        veth(&ra, "lan", "192.168.1.1/24", &a, "eth0", "192.168.1.2/24");
        veth(&rb, "lan", "192.168.2.1/24", &b, "eth0", "192.168.2.2/24");
        let b_nat = reach != Reach::BPublic;
        for (r, up, nat) in [(&ra, "10.99.1.1", true), (&rb, "10.99.2.1", b_nat)] {
            r.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
            r.ip(&["route", "add", "default", "via", up]);
            if nat {
                let masquerade = "-t nat -A POSTROUTING -o wan -j MASQUERADE";
                let mut args = vec!["iptables"];
                args.extend(masquerade.split(' '));
                r.exec(&args);
            }
            // A home router's stateful firewall: nothing unsolicited reaches the router itself
            // (see `Reach::BothNat` for why this matters to NAT traversal).
            let firewall = "-A INPUT -i wan -m conntrack --ctstate NEW -j DROP";
            let mut args = vec!["iptables"];
            args.extend(firewall.split(' '));
            r.exec(&args);
        }
        if !b_nat {
            net.ip(&["route", "add", "192.168.2.0/24", "via", "10.99.2.2"]);
        }
        a.ip(&["route", "add", "default", "via", "192.168.1.1"]);
        b.ip(&["route", "add", "default", "via", "192.168.2.1"]);
        if reach == Reach::Blocked {
            net.exec(&[
                "iptables", "-A", "FORWARD", "-i", "to-ra", "-o", "to-rb", "-j", "DROP",
            ]);
            net.exec(&[
                "iptables", "-A", "FORWARD", "-i", "to-rb", "-o", "to-ra", "-j", "DROP",
            ]);
        }
        Self {
            a,
            b,
            ra,
            rb,
            net,
            void,
            turn_ip: "10.99.0.1".parse().expect("ip"),
        }
    }
}

/// A `hush-net-peer` process and its output lines.
pub struct Peer {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    pub log: Vec<String>,
    pub name: &'static str,
}

impl Peer {
    /// Starts the peer binary, inside `ns` when given.
    pub fn spawn(name: &'static str, ns: Option<&Netns>, args: &[&str]) -> Self {
        let bin = env!("CARGO_BIN_EXE_hush-net-peer");
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.name, bin]);
                c
            }
            None => Command::new(bin),
        };
        let mut child = cmd
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn hush-net-peer");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stdin,
            lines: rx,
            log: Vec::new(),
            name,
        }
    }

    pub fn send(&mut self, line: &str) {
        let _ = writeln!(self.stdin, "{line}");
        let _ = self.stdin.flush();
    }

    /// Next output line within `timeout`.
    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        let line = self.lines.recv_timeout(timeout).ok()?;
        self.log.push(line.clone());
        Some(line)
    }

    /// Waits for a line starting with `prefix`; returns it.
    pub fn expect(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if let Some(l) = self.next_line(left) {
                if l.starts_with(prefix) {
                    return l;
                }
            } else {
                break;
            }
        }
        panic!(
            "{}: no `{prefix}` line within {timeout:?}; log: {:#?}",
            self.name, self.log
        );
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "QUIT");
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Relays signaling between two peers until both report a path (or `timeout`): every `CRED`,
/// `RESTARTED` and `CAND` line of one becomes input of the other. Returns the two `PATH` lines.
pub fn connect(a: &mut Peer, b: &mut Peer, timeout: Duration) -> (String, String) {
    let deadline = Instant::now() + timeout;
    let (mut pa, mut pb) = (None::<String>, None::<String>);
    while pa.is_none() || pb.is_none() {
        assert!(
            Instant::now() < deadline,
            "no path: A {:#?}\nB {:#?}",
            a.log,
            b.log
        );
        pump_one(a, b, &mut pa);
        pump_one(b, a, &mut pb);
    }
    (pa.unwrap_or_default(), pb.unwrap_or_default())
}

/// Handles at most one line of `from` (waiting briefly), forwarding signaling to `to`.
pub fn pump_one(from: &mut Peer, to: &mut Peer, path: &mut Option<String>) -> Option<String> {
    let line = from.next_line(Duration::from_millis(5))?;
    if let Some(rest) = line.strip_prefix("CRED ") {
        to.send(&format!("CRED {rest}"));
    } else if let Some(rest) = line.strip_prefix("RESTARTED ") {
        to.send(&format!("CRED {rest}"));
    } else if line.starts_with("CAND ") {
        to.send(&line);
    } else if line.starts_with("PATH ") {
        *path = Some(line.clone());
    }
    Some(line)
}

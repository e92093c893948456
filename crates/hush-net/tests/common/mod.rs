//! Test harness: coturn on loopback or in a network namespace, network namespaces with NAT,
//! and the `hush-net-peer` helper process. Everything started here is stopped on Drop.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub mod nodes;
pub mod proxy;

/// How the TURN server authenticates.
#[derive(Clone, Debug)]
pub enum Auth {
    /// Long-term credentials.
    LongTerm { user: String, pass: String },
    /// TURN REST API shared secret (`use-auth-secret`).
    Rest { secret: String },
}

impl Auth {
    pub fn long_term() -> Self {
        Self::LongTerm {
            user: "alice".into(),
            pass: "wonderland".into(),
        }
    }
}

pub const REALM: &str = "hush.test";

pub fn coturn_present() -> bool {
    hush_testkit::on_path("turnserver")
}

/// A unique scratch directory under the system temp dir.
fn scratch(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("hush-net-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A coturn process with a generated configuration.
pub struct Coturn {
    child: Child,
    /// The server's UDP listening address.
    pub addr: SocketAddr,
    dir: PathBuf,
    log: PathBuf,
}

impl Coturn {
    /// Starts coturn on 127.0.0.1 on a free port.
    pub fn start(auth: Auth) -> Self {
        Self::start_loopback(auth, true)
    }

    /// Starts coturn on 127.0.0.1; `loopback_peers` false makes it refuse (403) every
    /// permission for a loopback peer.
    pub fn start_loopback(auth: Auth, loopback_peers: bool) -> Self {
        let port = {
            let s = UdpSocket::bind("127.0.0.1:0").expect("probe socket");
            s.local_addr().expect("addr").port()
        };
        Self::spawn(
            None,
            SocketAddr::new([127, 0, 0, 1].into(), port),
            auth,
            loopback_peers,
        )
    }

    /// Starts coturn inside network namespace `ns`, listening on `ip:3478`.
    pub fn start_in(ns: &str, ip: IpAddr, auth: Auth) -> Self {
        Self::spawn(Some(ns), SocketAddr::new(ip, 3478), auth, true)
    }

    fn spawn(ns: Option<&str>, addr: SocketAddr, auth: Auth, loopback_peers: bool) -> Self {
        let dir = scratch("coturn");
        let log = dir.join("turn.log");
        let mut conf = format!(
            "listening-ip={ip}\nrelay-ip={ip}\nlistening-port={port}\nrealm={REALM}\n\
             no-tls\nno-dtls\nno-tcp\nno-cli\nfingerprint\n\
             no-software-attribute\nverbose\nno-multicast-peers\nsimple-log\nlog-file={log}\n\
             pidfile={pid}\nuserdb={db}\nmin-port=40000\nmax-port=40999\n",
            ip = addr.ip(),
            port = addr.port(),
            log = log.display(),
            pid = dir.join("turn.pid").display(),
            db = dir.join("turndb").display(),
        );
        if loopback_peers {
            conf.push_str("allow-loopback-peers\n");
        }
        match &auth {
            Auth::LongTerm { user, pass } => {
                conf.push_str(&format!("lt-cred-mech\nuser={user}:{pass}\n"));
            }
            Auth::Rest { secret } => {
                conf.push_str(&format!("use-auth-secret\nstatic-auth-secret={secret}\n"));
            }
        }
        let conf_path = dir.join("turnserver.conf");
        std::fs::write(&conf_path, conf).expect("write coturn config");
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "turnserver"]);
                c
            }
            None => Command::new("turnserver"),
        };
        cmd.arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().expect("start turnserver");
        let me = Self {
            child,
            addr,
            dir,
            log,
        };
        me.wait_ready(ns.is_none());
        me
    }

    fn wait_ready(&self, probe: bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        if probe {
            // Ask for a STUN Binding until the server answers.
            let sock = UdpSocket::bind("127.0.0.1:0").expect("probe");
            sock.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
            req.extend_from_slice(&[0x5a; 12]);
            let mut buf = [0u8; 1500];
            while Instant::now() < deadline {
                let _ = sock.send_to(&req, self.addr);
                if let Ok((n, _)) = sock.recv_from(&mut buf) {
                    if n >= 20 && buf[0] == 0x01 && buf[1] == 0x01 {
                        return;
                    }
                }
            }
        } else {
            while Instant::now() < deadline {
                if self.log_text().contains("DB connection success") {
                    std::thread::sleep(Duration::from_millis(300));
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("coturn did not start; log:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("coturn log kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

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
    /// Both behind NAT, traffic between the NATs allowed (hole punching may or may not work:
    /// Linux MASQUERADE changes the port when the peer's packet arrives first).
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

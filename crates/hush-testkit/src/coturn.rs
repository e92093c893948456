//! A real TURN/STUN server for tests: Debian's `coturn` (`turnserver`) started with a generated
//! configuration, on loopback or inside a network namespace, and stopped on Drop.
//!
//! ```no_run
//! use hush_testkit::coturn::{coturn_present, Auth, Coturn};
//!
//! if hush_testkit::system_component("coturn (turnserver)", coturn_present()) {
//!     // UDP only, on 127.0.0.1, long-term user alice/wonderland.
//!     let turn = Coturn::start(Auth::long_term());
//!     let _udp = turn.udp_addr();
//!
//!     // UDP + TCP + TLS (a self-signed certificate is generated with `openssl req`).
//!     let turn = Coturn::builder(Auth::long_term()).tcp(true).tls(true).start();
//!     let _tcp = turn.tcp_addr().expect("TCP listener");
//!     let _tls = turn.tls_addr().expect("TLS listener");
//!     let _trust = turn.tls_cert_der().expect("certificate to trust");
//! }
//! ```
//!
//! On loopback coturn refuses every permission for a loopback peer (403 Forbidden IP) unless
//! `allow-loopback-peers` is set; [`Coturn::start`] sets it, [`CoturnBuilder::loopback_peers`]
//! can clear it to test the refusal.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The realm every generated configuration uses.
pub const REALM: &str = "hush.test";

/// The DNS name in the generated TLS certificate (besides the listening IP address).
pub const TLS_SERVER_NAME: &str = "turn.hush.test";

/// Long-term user of [`Auth::long_term`].
pub const USER: &str = "alice";
/// Password of [`Auth::long_term`].
pub const PASSWORD: &str = "wonderland";

/// Whether `turnserver` (Debian package `coturn`) is on `PATH`.
pub fn coturn_present() -> bool {
    crate::on_path("turnserver")
}

/// Whether a TLS listener can be started: coturn plus the `openssl` command-line tool (which
/// generates the certificate).
pub fn coturn_tls_present() -> bool {
    coturn_present() && crate::on_path("openssl")
}

/// How the TURN server authenticates clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// Long-term credentials (`lt-cred-mech`) with one user.
    LongTerm {
        /// The username.
        user: String,
        /// The password.
        pass: String,
    },
    /// TURN REST API shared secret (`use-auth-secret`): usernames `"<expiry>:<user>"`,
    /// passwords `base64(HMAC-SHA1(secret, username))`.
    Rest {
        /// The shared secret.
        secret: String,
    },
}

impl Auth {
    /// Long-term credentials [`USER`] / [`PASSWORD`].
    pub fn long_term() -> Self {
        Self::LongTerm {
            user: USER.into(),
            pass: PASSWORD.into(),
        }
    }
}

use crate::scratch;

/// A port that is free on `ip` for UDP and TCP at the same time (coturn's plain listener uses
/// the same port for both).
fn free_port(ip: IpAddr) -> u16 {
    for _ in 0..100 {
        let Ok(tcp) = TcpListener::bind(SocketAddr::new(ip, 0)) else {
            continue;
        };
        let Ok(addr) = tcp.local_addr() else { continue };
        if UdpSocket::bind(addr).is_ok() {
            return addr.port();
        }
    }
    panic!("no free UDP+TCP port on {ip}");
}

/// Options for starting coturn. Made by [`Coturn::builder`].
#[derive(Clone, Debug)]
pub struct CoturnBuilder {
    auth: Auth,
    ip: IpAddr,
    netns: Option<String>,
    port: Option<u16>,
    tls_port: Option<u16>,
    loopback_peers: bool,
    udp: bool,
    tcp: bool,
    tls: bool,
}

impl CoturnBuilder {
    /// Listens (and relays) on `ip` instead of 127.0.0.1.
    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.ip = ip;
        self
    }

    /// Runs coturn inside network namespace `ns` (`ip netns exec`). The ports default to 3478
    /// (UDP/TCP) and 5349 (TLS) there, since the namespace is private.
    pub fn netns(mut self, ns: impl Into<String>) -> Self {
        self.netns = Some(ns.into());
        self
    }

    /// The UDP (and TCP) listening port; default: a free one (3478 in a namespace).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// The TLS listening port; default: a free one (5349 in a namespace).
    pub fn tls_port(mut self, port: u16) -> Self {
        self.tls_port = Some(port);
        self
    }

    /// Whether peers on loopback addresses may get permissions (`allow-loopback-peers`,
    /// default true). False makes coturn answer 403 to every permission for 127.0.0.1.
    pub fn loopback_peers(mut self, yes: bool) -> Self {
        self.loopback_peers = yes;
        self
    }

    /// Whether to listen for TURN over UDP (default true). False (`no-udp`) proves that a client
    /// really uses TCP or TLS; the relayed addresses stay UDP either way.
    pub fn udp(mut self, yes: bool) -> Self {
        self.udp = yes;
        self
    }

    /// Also listens for TURN over TCP (stream framing of RFC 8656 §12.5, same port as UDP).
    /// Default false.
    pub fn tcp(mut self, yes: bool) -> Self {
        self.tcp = yes;
        self
    }

    /// Also listens for TURN over TLS on its own port, with a freshly generated self-signed
    /// certificate for [`TLS_SERVER_NAME`] and the listening IP (needs `openssl`). Default false.
    pub fn tls(mut self, yes: bool) -> Self {
        self.tls = yes;
        self
    }

    /// Starts coturn and waits until it answers. Panics (with coturn's log) if it does not.
    pub fn start(self) -> Coturn {
        Coturn::spawn(self)
    }
}

/// A running coturn process with a generated configuration. Killed, and its scratch directory
/// removed, on Drop (the directory is kept, and its path printed, when the test panicked).
#[derive(Debug)]
pub struct Coturn {
    udp: bool,
    child: Child,
    /// The server's UDP listening address.
    pub addr: SocketAddr,
    tcp_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    cert_der: Option<Vec<u8>>,
    cert_pem: Option<PathBuf>,
    dir: PathBuf,
    log: PathBuf,
}

impl Coturn {
    /// Options, starting from: 127.0.0.1, free port, UDP only, loopback peers allowed.
    pub fn builder(auth: Auth) -> CoturnBuilder {
        CoturnBuilder {
            auth,
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            netns: None,
            port: None,
            tls_port: None,
            loopback_peers: true,
            udp: true,
            tcp: false,
            tls: false,
        }
    }

    /// Starts coturn on 127.0.0.1 on a free port, UDP only, loopback peers allowed.
    pub fn start(auth: Auth) -> Self {
        Self::builder(auth).start()
    }

    /// Starts coturn on 127.0.0.1, UDP only; `loopback_peers` false makes it refuse (403) every
    /// permission for a loopback peer.
    pub fn start_loopback(auth: Auth, loopback_peers: bool) -> Self {
        Self::builder(auth).loopback_peers(loopback_peers).start()
    }

    /// Starts coturn inside network namespace `ns`, UDP only, listening on `ip:3478`.
    pub fn start_in(ns: &str, ip: IpAddr, auth: Auth) -> Self {
        Self::builder(auth).netns(ns).ip(ip).start()
    }

    /// The UDP listening address (same as [`Coturn::addr`]; nothing listens there when started
    /// with `udp(false)`).
    pub fn udp_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The TCP listening address, when started with [`CoturnBuilder::tcp`].
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// The TLS listening address, when started with [`CoturnBuilder::tls`].
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The server's self-signed certificate (DER), to trust as a root, when started with TLS.
    pub fn tls_cert_der(&self) -> Option<&[u8]> {
        self.cert_der.as_deref()
    }

    /// The path of the server's certificate in PEM, when started with TLS.
    pub fn tls_cert_pem_path(&self) -> Option<&Path> {
        self.cert_pem.as_deref()
    }

    /// What coturn logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn spawn(b: CoturnBuilder) -> Self {
        let dir = scratch("coturn");
        let log = dir.join("turn.log");
        let ip = b.ip;
        let in_ns = b.netns.is_some();
        let port = b
            .port
            .unwrap_or_else(|| if in_ns { 3478 } else { free_port(ip) });
        let mut conf = format!(
            "listening-ip={ip}\nrelay-ip={ip}\nlistening-port={port}\nrealm={REALM}\n\
             no-dtls\nno-cli\nfingerprint\nno-software-attribute\nverbose\nno-multicast-peers\n\
             simple-log\nlog-file={log}\npidfile={pid}\nuserdb={db}\nmin-port=40000\n\
             max-port=40999\n",
            log = log.display(),
            pid = dir.join("turn.pid").display(),
            db = dir.join("turndb").display(),
        );
        if !b.tcp {
            conf.push_str("no-tcp\n");
        }
        if !b.udp {
            conf.push_str("no-udp\n");
        }
        let (mut tls_addr, mut cert_der, mut cert_pem) = (None, None, None);
        if b.tls {
            let tls_port = b
                .tls_port
                .unwrap_or_else(|| if in_ns { 5349 } else { free_port(ip) });
            let (pem, key, der) = self_signed_cert(&dir, ip);
            conf.push_str(&format!(
                "tls-listening-port={tls_port}\ncert={}\npkey={}\nno-tlsv1\nno-tlsv1_1\n",
                pem.display(),
                key.display()
            ));
            tls_addr = Some(SocketAddr::new(ip, tls_port));
            cert_der = Some(der);
            cert_pem = Some(pem);
        } else {
            conf.push_str("no-tls\n");
        }
        if b.loopback_peers {
            conf.push_str("allow-loopback-peers\n");
        }
        match &b.auth {
            Auth::LongTerm { user, pass } => {
                conf.push_str(&format!("lt-cred-mech\nuser={user}:{pass}\n"));
            }
            Auth::Rest { secret } => {
                conf.push_str(&format!("use-auth-secret\nstatic-auth-secret={secret}\n"));
            }
        }
        let conf_path = dir.join("turnserver.conf");
        std::fs::write(&conf_path, conf).expect("write coturn config");
        let mut cmd = match &b.netns {
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
        let addr = SocketAddr::new(ip, port);
        let me = Self {
            udp: b.udp,
            child,
            addr,
            tcp_addr: b.tcp.then_some(addr),
            tls_addr,
            cert_der,
            cert_pem,
            dir,
            log,
        };
        me.wait_ready(!in_ns);
        me
    }

    fn wait_ready(&self, probe: bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        if probe {
            if (!self.udp || self.udp_answers(deadline))
                && self.tcp_addr.is_none_or(|a| tcp_accepts(a, deadline, true))
                && self
                    .tls_addr
                    .is_none_or(|a| tcp_accepts(a, deadline, false))
            {
                return;
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

    /// Asks for a STUN Binding over UDP until the server answers.
    fn udp_answers(&self, deadline: Instant) -> bool {
        let any = SocketAddr::new(
            if self.addr.is_ipv4() {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            } else {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            },
            0,
        );
        let sock = UdpSocket::bind(any).expect("probe socket");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let req = binding_request();
        let mut buf = [0u8; 1500];
        while Instant::now() < deadline {
            let _ = sock.send_to(&req, self.addr);
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                if n >= 20 && buf[0] == 0x01 && buf[1] == 0x01 {
                    return true;
                }
            }
        }
        false
    }
}

fn binding_request() -> Vec<u8> {
    let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    req.extend_from_slice(&[0x5a; 12]);
    req
}

/// Connects until the listener accepts; with `stun`, also sends a Binding request and waits
/// for the response (plain TCP listener).
fn tcp_accepts(addr: SocketAddr, deadline: Instant, stun: bool) -> bool {
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            if !stun {
                return true;
            }
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let mut head = [0u8; 2];
            if s.write_all(&binding_request()).is_ok()
                && s.read_exact(&mut head).is_ok()
                && head == [0x01, 0x01]
            {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Generates a self-signed P-256 certificate (not a CA, server auth) for [`TLS_SERVER_NAME`]
/// and `ip` in `dir`. Returns the PEM certificate path, the key path, and the certificate DER.
fn self_signed_cert(dir: &Path, ip: IpAddr) -> (PathBuf, PathBuf, Vec<u8>) {
    let pem = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let der = dir.join("cert.der");
    run(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN={TLS_SERVER_NAME}"),
        "-addext",
        &format!("subjectAltName=IP:{ip},DNS:{TLS_SERVER_NAME}"),
        "-addext",
        "basicConstraints=critical,CA:FALSE",
        "-addext",
        "extendedKeyUsage=serverAuth",
        "-keyout",
        &key.display().to_string(),
        "-out",
        &pem.display().to_string(),
    ]));
    run(Command::new("openssl").args([
        "x509",
        "-in",
        &pem.display().to_string(),
        "-outform",
        "DER",
        "-out",
        &der.display().to_string(),
    ]));
    let bytes = std::fs::read(&der).expect("read certificate");
    (pem, key, bytes)
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let _ = writeln!(
                std::io::stderr().lock(),
                "coturn files kept in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_with_udp_tcp_and_tls_listeners() {
        if !crate::system_component("coturn (turnserver) + openssl", coturn_tls_present()) {
            return;
        }
        let turn = Coturn::builder(Auth::long_term())
            .tcp(true)
            .tls(true)
            .start();
        let tcp = turn.tcp_addr().expect("tcp");
        let tls = turn.tls_addr().expect("tls");
        assert_eq!(tcp, turn.udp_addr());
        assert_ne!(tls.port(), tcp.port());
        assert!(turn
            .tls_cert_der()
            .is_some_and(|d| d.first() == Some(&0x30)));
        // The plain TCP listener answers STUN with RFC 4571-less framing (STUN is
        // self-delimiting over TCP).
        assert!(tcp_accepts(
            tcp,
            Instant::now() + Duration::from_secs(2),
            true
        ));
    }

    #[test]
    fn stream_only_server_does_not_answer_udp() {
        if !crate::system_component("coturn (turnserver) + openssl", coturn_tls_present()) {
            return;
        }
        let turn = Coturn::builder(Auth::long_term())
            .udp(false)
            .tcp(true)
            .tls(true)
            .start();
        let tcp = turn.tcp_addr().expect("tcp");
        assert!(tcp_accepts(
            tcp,
            Instant::now() + Duration::from_secs(2),
            true
        ));
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        sock.send_to(&binding_request(), turn.udp_addr()).unwrap();
        let mut buf = [0u8; 100];
        assert!(sock.recv_from(&mut buf).is_err(), "no UDP listener");
    }

    #[test]
    fn udp_only_has_no_stream_listeners() {
        if !crate::system_component("coturn (turnserver)", coturn_present()) {
            return;
        }
        let turn = Coturn::start(Auth::Rest { secret: "s".into() });
        assert!(turn.tcp_addr().is_none());
        assert!(turn.tls_addr().is_none());
        assert!(TcpStream::connect_timeout(&turn.addr, Duration::from_millis(200)).is_err());
    }
}

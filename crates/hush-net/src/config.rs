//! Configuration: policy, STUN/TURN servers, timers.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use zeroize::Zeroizing;

use crate::error::Error;

/// Which paths the connection may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Policy {
    /// Peer-to-peer first: host and server-reflexive candidates are offered and preferred; a
    /// TURN relay is the fallback when no direct pair works.
    #[default]
    P2pFirst,
    /// Only relay candidates are offered, so the peer never learns this device's IP address
    /// (as Signal's "always relay calls"). Needs at least one TURN server.
    RelayOnly,
}

/// Which side of the ICE session this is. The caller (offerer) controls and nominates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// The controlling agent (the caller): it nominates the pair media will use.
    Controlling,
    /// The controlled agent (the callee): it accepts the controlling side's nomination.
    Controlled,
}

/// Credentials for a TURN server.
///
/// The password is wiped from memory when the credentials are dropped (hush's copies; the
/// TURN client library keeps its own for the life of an allocation).
#[derive(Clone, PartialEq, Eq)]
pub struct TurnCredentials {
    username: String,
    password: Zeroizing<String>,
}

impl TurnCredentials {
    /// Long-term credentials (RFC 8489 §9.2): a username and password provisioned on the server.
    pub fn long_term(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: Zeroizing::new(password.into()),
        }
    }

    /// Time-limited credentials as used by the TURN REST API (coturn's `use-auth-secret`):
    /// username `"<expiry unix seconds>:<user>"` and password
    /// `base64(HMAC-SHA1(shared_secret, username))`.
    ///
    /// `expires` is the wall-clock instant after which the server rejects the credentials.
    pub fn rest(shared_secret: &[u8], user: &str, expires: SystemTime) -> Self {
        let expiry = expires
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let username = format!("{expiry}:{user}");
        Self::rest_with_username(shared_secret, username)
    }

    /// TURN REST credentials for an already formed username (`"<expiry>:<user>"`).
    pub fn rest_with_username(shared_secret: &[u8], username: String) -> Self {
        // HMAC accepts keys of any length; `new_from_slice` cannot fail for HMAC.
        let password = match Hmac::<sha1::Sha1>::new_from_slice(shared_secret) {
            Ok(mut mac) => {
                mac.update(username.as_bytes());
                base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
            }
            Err(_) => String::new(),
        };
        Self {
            username,
            password: Zeroizing::new(password),
        }
    }

    /// The username presented to the server.
    pub fn username(&self) -> &str {
        &self.username
    }

    pub(crate) fn password(&self) -> &str {
        &self.password
    }
}

impl fmt::Debug for TurnCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How the client reaches a TURN server. Whatever the transport, the relayed address on the
/// server is UDP: only the leg between this device and the server changes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TurnTransport {
    /// UDP (`turn:host:port`, the default).
    Udp,
    /// TCP (`turn:host:port?transport=tcp`): for networks that block UDP.
    Tcp,
    /// TLS over TCP (`turns:host:port`): for networks that only let HTTPS-like traffic out.
    /// The server's certificate is verified against the configured roots
    /// ([`ConfigBuilder::turn_tls_roots`]) for `server_name`.
    Tls {
        /// The name the certificate must be valid for: a DNS name, or the IP address as text.
        server_name: String,
    },
}

impl TurnTransport {
    /// The kind of transport, without the TLS server name.
    pub fn kind(&self) -> Transport {
        match self {
            Self::Udp => Transport::Udp,
            Self::Tcp => Transport::Tcp,
            Self::Tls { .. } => Transport::Tls,
        }
    }
}

/// The transport a [`Transmit`](crate::Transmit) goes out on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Transport {
    /// A UDP datagram from the host socket.
    #[default]
    Udp,
    /// A message on the TCP connection from the host socket's address to the destination.
    Tcp,
    /// A message on the TLS connection from the host socket's address to the destination.
    Tls,
}

/// A TURN server, how to reach it, and the credentials to use with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnServer {
    /// The server's address.
    pub addr: SocketAddr,
    /// Credentials for the allocation.
    pub credentials: TurnCredentials,
    /// How to reach it.
    pub transport: TurnTransport,
}

impl TurnServer {
    /// A TURN server reached over UDP.
    pub fn udp(addr: SocketAddr, credentials: TurnCredentials) -> Self {
        Self {
            addr,
            credentials,
            transport: TurnTransport::Udp,
        }
    }

    /// A TURN server reached over TCP.
    pub fn tcp(addr: SocketAddr, credentials: TurnCredentials) -> Self {
        Self {
            addr,
            credentials,
            transport: TurnTransport::Tcp,
        }
    }

    /// A TURN server reached over TLS; its certificate must be valid for `server_name`.
    pub fn tls(
        addr: SocketAddr,
        server_name: impl Into<String>,
        credentials: TurnCredentials,
    ) -> Self {
        Self {
            addr,
            credentials,
            transport: TurnTransport::Tls {
                server_name: server_name.into(),
            },
        }
    }

    /// Parses a WebRTC-style TURN URL (RFC 7065): `turn:<host>[:<port>][?transport=udp|tcp]`
    /// or `turns:<host>[:<port>][?transport=tcp]`. The default port is 3478 for `turn:` and
    /// 5349 for `turns:`.
    ///
    /// `host` must be an IP address (IPv6 in brackets): this crate does no DNS. To use a name,
    /// resolve it and build the server with [`TurnServer::tls`] (the name is what the
    /// certificate is checked against). For `turns:` with an IP address, the certificate must
    /// be valid for that IP address.
    pub fn from_url(url: &str, credentials: TurnCredentials) -> Result<Self, Error> {
        let bad = || {
            Error::InvalidConfig("TURN URL: expected turn:/turns:<ip>[:port][?transport=udp|tcp]")
        };
        let (secure, rest) = if let Some(r) = url.strip_prefix("turns:") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("turn:") {
            (false, r)
        } else {
            return Err(bad());
        };
        let (hostport, query) = match rest.split_once('?') {
            Some((h, q)) => (h, Some(q)),
            None => (rest, None),
        };
        let tcp = match query {
            None => secure,
            Some("transport=udp") if !secure => false,
            Some("transport=tcp") => true,
            Some(_) => return Err(bad()),
        };
        let default_port = if secure { 5349 } else { 3478 };
        let (ip, port): (IpAddr, u16) = if let Some(v6) = hostport.strip_prefix('[') {
            let (ip, after) = v6.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad())?,
                None if after.is_empty() => default_port,
                None => return Err(bad()),
            };
            (ip.parse().map_err(|_| bad())?, port)
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h.parse().map_err(|_| bad())?, p.parse().map_err(|_| bad())?),
                None => (hostport.parse().map_err(|_| bad())?, default_port),
            }
        };
        if port == 0 {
            return Err(bad());
        }
        let addr = SocketAddr::new(ip, port);
        Ok(match (secure, tcp) {
            (true, _) => Self::tls(addr, ip.to_string(), credentials),
            (false, true) => Self::tcp(addr, credentials),
            (false, false) => Self::udp(addr, credentials),
        })
    }
}

/// Which certificates a TLS connection to a TURN server is verified against.
#[derive(Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TlsRoots {
    /// The Mozilla root programme's CAs (compiled in, `webpki-roots`).
    #[default]
    WebPki,
    /// Only these certificates (DER), as trust anchors. A self-signed server certificate can be
    /// pinned this way.
    Custom(Vec<Vec<u8>>),
}

impl fmt::Debug for TlsRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WebPki => f.write_str("WebPki"),
            Self::Custom(c) => write!(f, "Custom({} certificates)", c.len()),
        }
    }
}

/// Minimum waits before the controlling agent may nominate a pair whose candidates are of a
/// given type, measured from the start of connectivity checks.
///
/// With [`Policy::P2pFirst`] a short wait on relay pairs lets a direct pair that is still being
/// checked win; with [`Policy::RelayOnly`] no better pair can come, so all waits are zero.
/// Peer-reflexive candidates do not wait by default: one is learned from a check that reached
/// this agent directly, most often just before the peer's signalled host candidate for the
/// same address arrives, so it is a direct path already (waiting cost ~50 ms in 2–100 % of
/// loopback calls, depending on signaling order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptanceWaits {
    /// Host candidates.
    pub host: Duration,
    /// Server-reflexive candidates.
    pub srflx: Duration,
    /// Peer-reflexive candidates.
    pub prflx: Duration,
    /// Relay candidates.
    pub relay: Duration,
}

impl AcceptanceWaits {
    /// No wait for any type.
    pub const ZERO: Self = Self {
        host: Duration::ZERO,
        srflx: Duration::ZERO,
        prflx: Duration::ZERO,
        relay: Duration::ZERO,
    };
}

impl Default for AcceptanceWaits {
    fn default() -> Self {
        Self {
            host: Duration::ZERO,
            srflx: Duration::from_millis(20),
            prflx: Duration::ZERO,
            relay: Duration::from_millis(100),
        }
    }
}

/// Configuration of a [`Connection`](crate::Connection). Build it with [`Config::builder`].
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) policy: Policy,
    pub(crate) stun_servers: Vec<SocketAddr>,
    pub(crate) turn_servers: Vec<TurnServer>,
    pub(crate) include_loopback: bool,
    pub(crate) check_interval: Duration,
    pub(crate) max_binding_requests: u16,
    pub(crate) keepalive_interval: Duration,
    pub(crate) consent_timeout: Duration,
    pub(crate) failed_timeout: Duration,
    pub(crate) waits: Option<AcceptanceWaits>,
    pub(crate) restart_on_consent_loss: bool,
    pub(crate) turn_rto: Duration,
    pub(crate) tls_roots: TlsRoots,
    pub(crate) remote_quiet: Duration,
    pub(crate) turn_later: bool,
}

impl Config {
    /// Starts a builder with the defaults: [`Policy::P2pFirst`], no servers, loopback excluded.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder {
            config: Self {
                policy: Policy::P2pFirst,
                stun_servers: Vec::new(),
                turn_servers: Vec::new(),
                include_loopback: false,
                check_interval: Duration::from_millis(20),
                max_binding_requests: 100,
                keepalive_interval: Duration::from_secs(1),
                consent_timeout: Duration::from_secs(5),
                failed_timeout: Duration::from_secs(25),
                waits: None,
                restart_on_consent_loss: true,
                turn_rto: Duration::from_millis(200),
                tls_roots: TlsRoots::WebPki,
                remote_quiet: Duration::from_secs(3),
                turn_later: false,
            },
        }
    }

    /// Adds a TURN server to a built configuration (for credentials that arrive later, such
    /// as short-lived ones a relay hands out before each call).
    pub fn add_turn_server(&mut self, server: TurnServer) {
        self.turn_servers.push(server);
    }

    /// Whether TURN servers are added after building ([`ConfigBuilder::turn_provided_later`]).
    pub fn turn_provided_later(&self) -> bool {
        self.turn_later
    }

    /// The path policy.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Whether host candidates on loopback addresses are gathered.
    pub fn include_loopback(&self) -> bool {
        self.include_loopback
    }

    /// The nomination waits in force (policy default unless set explicitly).
    pub fn acceptance_waits(&self) -> AcceptanceWaits {
        match (self.waits, self.policy) {
            (Some(w), _) => w,
            (None, Policy::RelayOnly) => AcceptanceWaits::ZERO,
            (None, Policy::P2pFirst) => AcceptanceWaits::default(),
        }
    }

    /// The configured TURN servers.
    pub fn turn_servers(&self) -> &[TurnServer] {
        &self.turn_servers
    }

    /// The roots TLS connections to TURN servers are verified against.
    pub fn tls_roots(&self) -> &TlsRoots {
        &self.tls_roots
    }
}

/// Builder for [`Config`].
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    config: Config,
}

impl ConfigBuilder {
    /// Sets the path policy.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.config.policy = policy;
        self
    }

    /// Adds a STUN server used to learn server-reflexive candidates.
    pub fn stun_server(mut self, addr: SocketAddr) -> Self {
        self.config.stun_servers.push(addr);
        self
    }

    /// Adds a TURN server reached over UDP. It is also asked for a server-reflexive address.
    pub fn turn_server(mut self, addr: SocketAddr, credentials: TurnCredentials) -> Self {
        self.config
            .turn_servers
            .push(TurnServer::udp(addr, credentials));
        self
    }

    /// Adds a TURN server with any transport (see [`TurnServer::tcp`], [`TurnServer::tls`],
    /// [`TurnServer::from_url`]). Only UDP servers are asked for a server-reflexive address.
    pub fn turn(mut self, server: TurnServer) -> Self {
        self.config.turn_servers.push(server);
        self
    }

    /// Adds a TURN server from a WebRTC-style URL (`turn:ip:port?transport=tcp`,
    /// `turns:ip:port`); see [`TurnServer::from_url`].
    pub fn turn_url(self, url: &str, credentials: TurnCredentials) -> Result<Self, Error> {
        Ok(self.turn(TurnServer::from_url(url, credentials)?))
    }

    /// The roots TLS (`turns:`) servers' certificates are verified against (default
    /// [`TlsRoots::WebPki`]).
    pub fn turn_tls_roots(mut self, roots: TlsRoots) -> Self {
        self.config.tls_roots = roots;
        self
    }

    /// Also gathers host candidates on loopback addresses (tests and same-host calls).
    pub fn include_loopback(mut self, yes: bool) -> Self {
        self.config.include_loopback = yes;
        self
    }

    /// How often the agent sends connectivity checks while connecting (default 20 ms).
    pub fn check_interval(mut self, interval: Duration) -> Self {
        self.config.check_interval = interval;
        self
    }

    /// How many checks a pair gets before it is declared failed (default 100).
    pub fn max_binding_requests(mut self, n: u16) -> Self {
        self.config.max_binding_requests = n;
        self
    }

    /// Interval of consent-freshness checks on the selected pair (default 1 s).
    pub fn keepalive_interval(mut self, interval: Duration) -> Self {
        self.config.keepalive_interval = interval;
        self
    }

    /// How long without anything heard from the peer on the selected pair before consent is
    /// considered lost (state `Disconnected`, default 5 s).
    pub fn consent_timeout(mut self, timeout: Duration) -> Self {
        self.config.consent_timeout = timeout;
        self
    }

    /// How long after consent loss before the connection fails (default 25 s).
    pub fn failed_timeout(mut self, timeout: Duration) -> Self {
        self.config.failed_timeout = timeout;
        self
    }

    /// Overrides the per-type nomination waits.
    pub fn acceptance_waits(mut self, waits: AcceptanceWaits) -> Self {
        self.config.waits = Some(waits);
        self
    }

    /// When the peer does not signal the end of its candidates
    /// ([`Connection::remote_gathering_complete`](crate::Connection::remote_gathering_complete)),
    /// how long after its last candidate it is assumed to have sent them all (default 3 s).
    /// Once that holds, local gathering is complete and every pair has failed, the controlling
    /// side fails with [`Error::NoRoute`] at once instead of at the ICE agent's timeout
    /// (consent timeout + failed timeout, 30 s by default); see
    /// [`Connection::remote_gathering_complete`](crate::Connection::remote_gathering_complete).
    pub fn remote_candidates_quiet(mut self, quiet: Duration) -> Self {
        self.config.remote_quiet = quiet;
        self
    }

    /// Whether consent loss triggers an ICE restart automatically (default true).
    pub fn restart_on_consent_loss(mut self, yes: bool) -> Self {
        self.config.restart_on_consent_loss = yes;
        self
    }

    /// Initial retransmission timeout of STUN/TURN transactions (default 200 ms).
    pub fn turn_rto(mut self, rto: Duration) -> Self {
        self.config.turn_rto = rto;
        self
    }

    /// TURN servers come later, with [`Config::add_turn_server`] (the `hush` facade adds the
    /// ones its relay grants short-lived credentials for before each call), so
    /// [`Policy::RelayOnly`] builds without one. Default false.
    pub fn turn_provided_later(mut self, yes: bool) -> Self {
        self.config.turn_later = yes;
        self
    }

    /// Checks and returns the configuration.
    pub fn build(self) -> Result<Config, Error> {
        let c = self.config;
        if c.policy == Policy::RelayOnly && c.turn_servers.is_empty() && !c.turn_later {
            return Err(Error::InvalidConfig(
                "RelayOnly needs at least one TURN server",
            ));
        }
        if c.check_interval.is_zero() {
            return Err(Error::InvalidConfig("check interval must be positive"));
        }
        if c.consent_timeout.is_zero() || c.keepalive_interval >= c.consent_timeout {
            return Err(Error::InvalidConfig(
                "keepalive interval must be shorter than the consent timeout",
            ));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_credentials_match_coturn_formula() {
        // Cross-checked with: printf '1700000000:alice' | openssl dgst -sha1 -hmac 'sekrit' -binary | base64
        let c = TurnCredentials::rest_with_username(b"sekrit", "1700000000:alice".into());
        assert_eq!(c.username(), "1700000000:alice");
        assert_eq!(c.password(), "qicIgfR+IBFR4/g4weuEVByS9aw=");
        assert_eq!(c.password().len(), 28);
    }

    #[test]
    fn rest_username_carries_expiry() {
        let t = UNIX_EPOCH + Duration::from_secs(1_234_567_890);
        let c = TurnCredentials::rest(b"k", "bob", t);
        assert_eq!(c.username(), "1234567890:bob");
    }

    #[test]
    fn debug_hides_password() {
        let c = TurnCredentials::long_term("u", "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn relay_only_may_get_its_turn_servers_later() {
        let mut c = Config::builder()
            .policy(Policy::RelayOnly)
            .turn_provided_later(true)
            .build()
            .unwrap();
        assert!(c.turn_provided_later());
        assert!(c.turn_servers().is_empty());
        c.add_turn_server(TurnServer::udp(
            "192.0.2.1:3478".parse().unwrap(),
            TurnCredentials::long_term("u", "p"),
        ));
        assert_eq!(c.turn_servers().len(), 1);
    }

    #[test]
    fn relay_only_needs_turn() {
        assert!(Config::builder().policy(Policy::RelayOnly).build().is_err());
        let c = Config::builder()
            .policy(Policy::RelayOnly)
            .turn_server(
                "127.0.0.1:3478".parse().unwrap(),
                TurnCredentials::long_term("u", "p"),
            )
            .build()
            .unwrap();
        assert_eq!(c.acceptance_waits(), AcceptanceWaits::ZERO);
    }

    #[test]
    fn turn_urls_parse_like_webrtc() {
        let c = || TurnCredentials::long_term("u", "p");
        let t = TurnServer::from_url("turn:192.0.2.1", c()).unwrap();
        assert_eq!(t.addr, "192.0.2.1:3478".parse().unwrap());
        assert_eq!(t.transport, TurnTransport::Udp);
        let t = TurnServer::from_url("turn:192.0.2.1:80?transport=tcp", c()).unwrap();
        assert_eq!(t.addr, "192.0.2.1:80".parse().unwrap());
        assert_eq!(t.transport, TurnTransport::Tcp);
        let t = TurnServer::from_url("turn:192.0.2.1:3479?transport=udp", c()).unwrap();
        assert_eq!(t.transport.kind(), Transport::Udp);
        let t = TurnServer::from_url("turns:[2001:db8::1]", c()).unwrap();
        assert_eq!(t.addr, "[2001:db8::1]:5349".parse().unwrap());
        assert_eq!(
            t.transport,
            TurnTransport::Tls {
                server_name: "2001:db8::1".into()
            }
        );
        let t = TurnServer::from_url("turns:10.0.0.1:443?transport=tcp", c()).unwrap();
        assert_eq!(t.transport.kind(), Transport::Tls);
        for bad in [
            "stun:1.2.3.4",
            "turn:",
            "turn:host.example",
            "turn:1.2.3.4:0",
            "turn:1.2.3.4:99999",
            "turn:1.2.3.4?transport=sctp",
            "turns:1.2.3.4?transport=udp",
            "turn:[::1",
            "turn:[::1]x",
        ] {
            assert!(TurnServer::from_url(bad, c()).is_err(), "{bad}");
        }
    }
}

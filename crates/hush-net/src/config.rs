//! Configuration: policy, STUN/TURN servers, timers.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac as _};

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
#[derive(Clone, PartialEq, Eq)]
pub struct TurnCredentials {
    username: String,
    password: String,
}

impl TurnCredentials {
    /// Long-term credentials (RFC 8489 §9.2): a username and password provisioned on the server.
    pub fn long_term(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
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
        Self { username, password }
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

/// A TURN server (UDP transport) and the credentials to use with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnServer {
    /// The server's UDP address.
    pub addr: SocketAddr,
    /// Credentials for the allocation.
    pub credentials: TurnCredentials,
}

/// Minimum waits before the controlling agent may nominate a pair whose candidates are of a
/// given type, measured from the start of connectivity checks.
///
/// With [`Policy::P2pFirst`] a short wait on relay pairs lets a direct pair that is still being
/// checked win; with [`Policy::RelayOnly`] no better pair can come, so all waits are zero.
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
            prflx: Duration::from_millis(50),
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
            },
        }
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

    /// Adds a TURN server (UDP). It is also asked for a server-reflexive address.
    pub fn turn_server(mut self, addr: SocketAddr, credentials: TurnCredentials) -> Self {
        self.config
            .turn_servers
            .push(TurnServer { addr, credentials });
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

    /// Checks and returns the configuration.
    pub fn build(self) -> Result<Config, Error> {
        let c = self.config;
        if c.policy == Policy::RelayOnly && c.turn_servers.is_empty() {
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
}

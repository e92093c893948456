//! Short-lived TURN credentials handed out by a relay (the TURN REST scheme coturn implements
//! with `use-auth-secret`): the device asks over its authenticated connection and gets a
//! username `"<expiry>:<device>"` with its password, so an app ships no TURN password.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use zeroize::Zeroizing;

use crate::proto::relay as pb;
use crate::Error;

/// Longest username accepted from a relay (RFC 8489 §14.3: USERNAME is under 513 bytes).
const MAX_USERNAME_LEN: usize = 512;
/// Longest password accepted from a relay (a base64 HMAC-SHA1 is 28 characters).
const MAX_PASSWORD_LEN: usize = 256;
/// Most TURN URLs accepted in one grant.
const MAX_URLS: usize = 16;
/// Longest TURN URL accepted.
const MAX_URL_LEN: usize = 256;

/// Time-limited TURN credentials and the servers they work on.
#[derive(Clone, PartialEq, Eq)]
pub struct TurnGrant {
    /// The TURN username, `"<expiry unix seconds>:<device id hex>"`.
    pub username: String,
    /// The TURN password, `base64(HMAC-SHA1(secret, username))`. Zeroized on drop.
    pub password: Zeroizing<String>,
    /// When the TURN servers stop accepting these credentials.
    pub expires: SystemTime,
    /// TURN server URLs (RFC 7065: `turn:ip:port`, `turn:ip:port?transport=tcp`,
    /// `turns:ip:port`).
    pub urls: Vec<String>,
}

impl TurnGrant {
    /// How long the grant stays valid after `now` (zero once expired).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.expires.duration_since(now).unwrap_or(Duration::ZERO)
    }

    /// Checks a grant received from a relay (untrusted bytes: sizes are bounded, the expiry
    /// must match the username's prefix).
    pub(crate) fn from_proto(t: pb::TurnCredentials) -> Result<Self, Error> {
        if t.username.is_empty() || t.username.len() > MAX_USERNAME_LEN {
            return Err(Error::Malformed("TURN username empty or too long"));
        }
        if t.password.is_empty() || t.password.len() > MAX_PASSWORD_LEN {
            return Err(Error::Malformed("TURN password empty or too long"));
        }
        if t.urls.len() > MAX_URLS || t.urls.iter().any(|u| u.len() > MAX_URL_LEN) {
            return Err(Error::Malformed("too many or too long TURN URLs"));
        }
        let prefix = t.username.split(':').next().unwrap_or_default();
        if prefix.parse::<u64>().ok() != Some(t.expires_unix) {
            return Err(Error::Malformed(
                "TURN username does not start with its expiry",
            ));
        }
        let expires = UNIX_EPOCH
            .checked_add(Duration::from_secs(t.expires_unix))
            .ok_or(Error::Malformed("TURN expiry out of range"))?;
        Ok(Self {
            username: t.username,
            password: Zeroizing::new(t.password),
            expires,
            urls: t.urls,
        })
    }
}

impl fmt::Debug for TurnGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnGrant")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("expires", &self.expires)
            .field("urls", &self.urls)
            .finish()
    }
}

/// Something that hands out [`TurnGrant`]s on request, such as a relay connection
/// ([`super::Transport::turn_source`] of a
/// [`super::RelayClient`]). Cheap to call; each call asks afresh.
pub trait TurnSource: Send + Sync {
    /// Asks for fresh credentials. A relay without TURN answers
    /// [`Error::Relay`] with [`pb::ErrorCode::TurnUnavailable`].
    fn fetch(&self) -> BoxFuture<'_, Result<TurnGrant, Error>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(username: &str, expires_unix: u64) -> pb::TurnCredentials {
        pb::TurnCredentials {
            username: username.into(),
            password: "qicIgfR+IBFR4/g4weuEVByS9aw=".into(),
            expires_unix,
            urls: vec!["turn:127.0.0.1:3478".into()],
        }
    }

    #[test]
    fn grant_checks_the_expiry_prefix() {
        let g = TurnGrant::from_proto(wire("1700000000:ab", 1_700_000_000)).unwrap();
        assert_eq!(g.expires, UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        assert_eq!(
            g.remaining(UNIX_EPOCH + Duration::from_secs(1_800_000_000)),
            Duration::ZERO
        );
        assert!(TurnGrant::from_proto(wire("1700000001:ab", 1_700_000_000)).is_err());
        assert!(TurnGrant::from_proto(wire("ab", 1_700_000_000)).is_err());
    }

    #[test]
    fn grant_bounds_untrusted_sizes() {
        let long = format!("1:{}", "a".repeat(600));
        assert!(TurnGrant::from_proto(wire(&long, 1)).is_err());
        let mut w = wire("1:a", 1);
        w.urls = vec!["turn:127.0.0.1".into(); 17];
        assert!(TurnGrant::from_proto(w).is_err());
        let mut w = wire("1:a", 1);
        w.password.clear();
        assert!(TurnGrant::from_proto(w).is_err());
        assert!(TurnGrant::from_proto(wire("18446744073709551615:a", u64::MAX)).is_err());
    }

    #[test]
    fn debug_hides_the_password() {
        let g = TurnGrant::from_proto(wire("1:a", 1)).unwrap();
        assert!(!format!("{g:?}").contains("qicI"));
    }
}

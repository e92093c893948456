//! Short-lived TURN credentials for authenticated devices: the TURN REST scheme that coturn
//! checks with `use-auth-secret` / `static-auth-secret`. The relay and the TURN servers share a
//! secret; the relay answers a device's request with username `"<expiry>:<device id hex>"` and
//! password `base64(HMAC-SHA1(secret, username))`, which the TURN server recomputes and refuses
//! once the expiry has passed. Apps then ship no TURN password.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use hush_signaling::DeviceId;
use zeroize::Zeroizing;

/// Shortest lifetime a grant may be given.
pub const MIN_TURN_TTL: Duration = Duration::from_secs(1);
/// Longest lifetime a grant may be given (credentials are bearer tokens: keep them short).
pub const MAX_TURN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// What is wrong with a [`TurnConfig`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TurnConfigError {
    /// The shared secret is empty.
    #[error("the TURN shared secret is empty")]
    EmptySecret,
    /// No TURN server URL was given: credentials would be good for nothing.
    #[error("no TURN server URL")]
    NoUrls,
    /// A URL is not `turn:` or `turns:` (RFC 7065).
    #[error("TURN URL {0:?} must start with turn: or turns:")]
    BadUrl(String),
    /// The lifetime is outside [`MIN_TURN_TTL`]..=[`MAX_TURN_TTL`].
    #[error("TURN credential lifetime must be between 1 s and 7 days")]
    BadTtl,
}

/// The relay's TURN settings: the secret shared with the TURN servers (coturn
/// `static-auth-secret`), the servers' URLs handed to devices, and how long each grant lives.
#[derive(Clone)]
pub struct TurnConfig {
    secret: Zeroizing<Vec<u8>>,
    urls: Vec<String>,
    ttl: Duration,
}

impl fmt::Debug for TurnConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnConfig")
            .field("secret", &"<redacted>")
            .field("urls", &self.urls)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// One grant: what the relay sends a device.
#[derive(Clone)]
pub(crate) struct Grant {
    pub(crate) username: String,
    pub(crate) password: Zeroizing<String>,
    pub(crate) expires_unix: u64,
}

impl TurnConfig {
    /// Checks and builds the settings. `urls` are RFC 7065 URLs (`turn:ip:port`,
    /// `turn:ip:port?transport=tcp`, `turns:ip:port`) as devices will use them.
    pub fn new(
        secret: impl Into<Vec<u8>>,
        urls: Vec<String>,
        ttl: Duration,
    ) -> Result<Self, TurnConfigError> {
        let secret = Zeroizing::new(secret.into());
        if secret.is_empty() {
            return Err(TurnConfigError::EmptySecret);
        }
        if urls.is_empty() {
            return Err(TurnConfigError::NoUrls);
        }
        if let Some(bad) = urls
            .iter()
            .find(|u| !(u.starts_with("turn:") || u.starts_with("turns:")) || u.len() > 256)
        {
            return Err(TurnConfigError::BadUrl(bad.clone()));
        }
        if !(MIN_TURN_TTL..=MAX_TURN_TTL).contains(&ttl) {
            return Err(TurnConfigError::BadTtl);
        }
        Ok(Self { secret, urls, ttl })
    }

    /// The TURN server URLs handed out with every grant.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// How long a grant lives.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Credentials for `device`, valid until `now + ttl` (rounded up to the next second).
    pub(crate) fn grant(&self, device: &DeviceId, now: SystemTime) -> Grant {
        let now_s = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let expires_unix = now_s.saturating_add(self.ttl.as_secs().max(1));
        let username = format!("{expires_unix}:{}", device.to_hex());
        let password = Zeroizing::new(rest_password(&self.secret, &username));
        Grant {
            username,
            password,
            expires_unix,
        }
    }
}

/// `base64(HMAC-SHA1(secret, username))`: the password coturn (`use-auth-secret`) expects for
/// `username`.
pub fn rest_password(secret: &[u8], username: &str) -> String {
    // HMAC takes keys of any length: `new_from_slice` does not fail for it.
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_matches_the_coturn_formula() {
        // printf '1700000000:alice' | openssl dgst -sha1 -hmac 'sekrit' -binary | base64
        assert_eq!(
            rest_password(b"sekrit", "1700000000:alice"),
            "qicIgfR+IBFR4/g4weuEVByS9aw="
        );
    }

    #[test]
    fn grant_names_the_device_and_the_expiry() {
        let c = TurnConfig::new(
            b"sekrit".to_vec(),
            vec!["turn:127.0.0.1:3478".into()],
            Duration::from_secs(600),
        )
        .unwrap();
        let device = DeviceId::from_bytes([7; 32]);
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let g = c.grant(&device, now);
        assert_eq!(g.expires_unix, 1_700_000_600);
        assert_eq!(g.username, format!("1700000600:{}", "07".repeat(32)));
        assert_eq!(*g.password, rest_password(b"sekrit", &g.username));
        assert!(!format!("{c:?}").contains("sekrit"));
    }

    #[test]
    fn bad_settings_are_refused() {
        let url = || vec!["turn:127.0.0.1".to_string()];
        let s = Duration::from_secs;
        assert_eq!(
            TurnConfig::new(Vec::new(), url(), s(60)).unwrap_err(),
            TurnConfigError::EmptySecret
        );
        assert_eq!(
            TurnConfig::new(b"k".to_vec(), vec![], s(60)).unwrap_err(),
            TurnConfigError::NoUrls
        );
        assert!(matches!(
            TurnConfig::new(b"k".to_vec(), vec!["stun:1.2.3.4".into()], s(60)),
            Err(TurnConfigError::BadUrl(_))
        ));
        assert_eq!(
            TurnConfig::new(b"k".to_vec(), url(), Duration::ZERO).unwrap_err(),
            TurnConfigError::BadTtl
        );
        assert_eq!(
            TurnConfig::new(b"k".to_vec(), url(), s(8 * 24 * 3600)).unwrap_err(),
            TurnConfigError::BadTtl
        );
    }
}

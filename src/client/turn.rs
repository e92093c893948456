//! Short-lived TURN credentials from the signaling transport (a hush relay hands them out: see
//! `hush_signaling::transport::TurnSource`). The client fetches a grant when it starts,
//! refreshes it once three quarters of its lifetime have passed, and adds the granted TURN
//! servers to each call's ICE configuration, so the app configures no TURN password.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hush_net::{TurnCredentials, TurnServer};
use hush_signaling::proto::relay::ErrorCode;
use hush_signaling::transport::{TurnGrant, TurnSource};
use tokio::sync::mpsc::WeakUnboundedSender;
use tracing::{debug, info, warn};

use super::Command;

/// How long a call start waits for credentials it has to fetch first.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// A grant with less left than this is not used for a new call: TURN servers check the
/// credentials again on every refresh and permission, so a call must not start on ones about
/// to run out.
const MIN_REMAINING: Duration = Duration::from_secs(60);
/// How long to wait before asking a relay again that said it has no TURN.
const UNAVAILABLE_RETRY: Duration = Duration::from_secs(600);
/// First and longest wait before retrying a failed fetch.
const RETRY_MIN: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// The outcome of one fetch, and when it started (wall clock: grants expire in wall time).
pub(crate) struct Fetched {
    result: Result<TurnGrant, hush_signaling::Error>,
    at: SystemTime,
}

impl std::fmt::Debug for Fetched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetched")
            .field("ok", &self.result.is_ok())
            .finish_non_exhaustive()
    }
}

/// A grant in use.
struct Cached {
    expires: SystemTime,
    /// Fetch a new one from here on.
    refresh_at: SystemTime,
    servers: Vec<TurnServer>,
}

/// The actor's view of the transport's TURN credentials.
pub(super) struct TurnCache {
    source: Arc<dyn TurnSource>,
    current: Option<Cached>,
    /// The relay said it has no TURN; do not ask before this.
    unavailable_until: Option<Instant>,
}

impl TurnCache {
    pub(super) fn new(source: Arc<dyn TurnSource>) -> Self {
        Self {
            source,
            current: None,
            unavailable_until: None,
        }
    }

    /// Takes in a fetch's outcome (from the refresher, or from [`Self::servers`]).
    pub(super) fn store(&mut self, fetched: Fetched) {
        match fetched.result {
            Ok(grant) => {
                let lifetime = grant.remaining(fetched.at);
                let servers: Vec<TurnServer> = grant
                    .urls
                    .iter()
                    .filter_map(|url| {
                        let credentials =
                            TurnCredentials::long_term(&grant.username, grant.password.as_str());
                        TurnServer::from_url(url, credentials)
                            .map_err(
                                |e| warn!(%url, error = %e, "unusable TURN URL from the relay"),
                            )
                            .ok()
                    })
                    .collect();
                debug!(
                    ?lifetime,
                    servers = servers.len(),
                    "TURN credentials from the relay"
                );
                self.unavailable_until = None;
                self.current = Some(Cached {
                    expires: grant.expires,
                    refresh_at: fetched.at + lifetime * 3 / 4,
                    servers,
                });
            }
            Err(hush_signaling::Error::Relay {
                code: ErrorCode::TurnUnavailable,
                ..
            }) => {
                info!("the relay hands out no TURN credentials");
                self.current = None;
                self.unavailable_until = Some(Instant::now() + UNAVAILABLE_RETRY);
            }
            Err(e) => warn!(error = %e, "fetching TURN credentials failed"),
        }
    }

    /// The TURN servers (with credentials) for a call starting now: the cached grant while it
    /// is fresh (under three quarters of its lifetime used and at least [`MIN_REMAINING`]
    /// left), else a new one (waiting up to [`FETCH_TIMEOUT`]), else the old one while it
    /// has not expired, else none.
    pub(super) async fn servers(&mut self) -> Vec<TurnServer> {
        let now = SystemTime::now();
        let fresh = |c: &&Cached| {
            now < c.refresh_at
                && c.expires
                    .duration_since(now)
                    .is_ok_and(|left| left >= MIN_REMAINING)
        };
        if let Some(c) = self.current.as_ref().filter(fresh) {
            return c.servers.clone();
        }
        if self.unavailable_until.is_some_and(|t| Instant::now() < t) {
            return Vec::new();
        }
        match tokio::time::timeout(FETCH_TIMEOUT, self.source.fetch()).await {
            Ok(result) => self.store(Fetched { result, at: now }),
            Err(_) => warn!("TURN credentials did not come in time"),
        }
        let now = SystemTime::now();
        self.current
            .as_ref()
            .filter(|c| now < c.expires)
            .map(|c| c.servers.clone())
            .unwrap_or_default()
    }
}

/// Fetches a grant at once and again before each runs out, handing them to the actor; ends
/// when the actor or the transport is gone.
pub(super) async fn refresher(source: Arc<dyn TurnSource>, actor: WeakUnboundedSender<Command>) {
    let mut retry = RETRY_MIN;
    loop {
        let at = SystemTime::now();
        let result = source.fetch().await;
        let wait = match &result {
            Ok(grant) => {
                retry = RETRY_MIN;
                (grant.remaining(at) * 3 / 4).max(Duration::from_secs(1))
            }
            Err(hush_signaling::Error::Relay {
                code: ErrorCode::TurnUnavailable,
                ..
            }) => UNAVAILABLE_RETRY,
            Err(hush_signaling::Error::Closed) => return,
            Err(_) => {
                let wait = retry;
                retry = (retry * 2).min(RETRY_MAX);
                wait
            }
        };
        let Some(actor) = actor.upgrade() else { return };
        if actor
            .send(Command::Turn(Box::new(Fetched { result, at })))
            .is_err()
        {
            return;
        }
        drop(actor);
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;

    use hush_signaling::transport::TurnGrant;

    use super::*;

    /// Hands out the queued answers in order and counts the requests.
    struct Fake {
        answers: Mutex<Vec<Result<TurnGrant, hush_signaling::Error>>>,
        asked: AtomicU32,
    }

    impl TurnSource for Fake {
        fn fetch(
            &self,
        ) -> std::pin::Pin<
            Box<
                dyn std::future::Future<Output = Result<TurnGrant, hush_signaling::Error>>
                    + Send
                    + '_,
            >,
        > {
            self.asked.fetch_add(1, Ordering::SeqCst);
            let next = self.answers.lock().unwrap().remove(0);
            Box::pin(async move { next })
        }
    }

    fn grant(lifetime: Duration, urls: &[&str]) -> TurnGrant {
        TurnGrant {
            username: "1:dev".into(),
            password: zeroize::Zeroizing::new("pw".into()),
            expires: SystemTime::now() + lifetime,
            urls: urls.iter().map(|u| (*u).to_owned()).collect(),
        }
    }

    fn unavailable() -> Result<TurnGrant, hush_signaling::Error> {
        Err(hush_signaling::Error::Relay {
            code: ErrorCode::TurnUnavailable,
            message: String::new(),
        })
    }

    fn cache(answers: Vec<Result<TurnGrant, hush_signaling::Error>>) -> (TurnCache, Arc<Fake>) {
        let fake = Arc::new(Fake {
            answers: Mutex::new(answers),
            asked: AtomicU32::new(0),
        });
        (TurnCache::new(fake.clone()), fake)
    }

    #[tokio::test]
    async fn a_fresh_grant_is_reused_and_bad_urls_are_skipped() {
        let hour = Duration::from_secs(3600);
        let (mut c, fake) = cache(vec![Ok(grant(
            hour,
            &["turn:192.0.2.1:3478", "stun:nope", "turns:192.0.2.1:5349"],
        ))]);
        assert_eq!(
            c.servers().await.len(),
            2,
            "the stun: URL is not a TURN server"
        );
        assert_eq!(c.servers().await.len(), 2);
        assert_eq!(fake.asked.load(Ordering::SeqCst), 1, "fetched once");
    }

    #[tokio::test]
    async fn a_grant_about_to_expire_is_replaced_before_a_call() {
        // Under a minute left: not used for a new call; the next fetch is.
        let (mut c, fake) = cache(vec![
            Ok(grant(Duration::from_secs(30), &["turn:192.0.2.1:3478"])),
            Ok(grant(Duration::from_secs(3600), &["turn:192.0.2.2:3478"])),
        ]);
        let first = c.servers().await;
        assert_eq!(first.len(), 1);
        let second = c.servers().await;
        assert_eq!(fake.asked.load(Ordering::SeqCst), 2);
        assert_eq!(second[0].addr, "192.0.2.2:3478".parse().unwrap());
        // And a failed fetch keeps the old grant while it has not expired.
        let (mut c, _) = cache(vec![
            Ok(grant(Duration::from_secs(30), &["turn:192.0.2.1:3478"])),
            Err(hush_signaling::Error::Timeout),
        ]);
        assert_eq!(c.servers().await.len(), 1);
        assert_eq!(c.servers().await.len(), 1, "still valid for 30 s");
    }

    #[tokio::test]
    async fn a_relay_without_turn_is_not_asked_before_every_call() {
        let (mut c, fake) = cache(vec![unavailable()]);
        assert!(c.servers().await.is_empty());
        assert!(c.servers().await.is_empty());
        assert_eq!(fake.asked.load(Ordering::SeqCst), 1);
    }
}

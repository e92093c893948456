//! In-process driver pairs with signaling relayed by tasks.

use std::net::SocketAddr;
use std::time::Duration;

use hush_net::driver::{self, Bind, Handle};
use hush_net::{Config, Error, Event, PathInfo, Role};
use tokio::sync::mpsc;

/// What a node's signaling task observed.
#[derive(Debug)]
pub enum Seen {
    Path(PathInfo),
    ServerError(Error),
    Failed(Error),
    Restarted,
}

pub struct Node {
    pub handle: Handle,
    pub datagrams: mpsc::Receiver<Vec<u8>>,
    pub seen: mpsc::UnboundedReceiver<Seen>,
}

impl Node {
    /// Next observation matching `f`, within `timeout`.
    pub async fn wait_for<T>(
        &mut self,
        timeout: Duration,
        mut f: impl FnMut(Seen) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.seen.recv()).await {
                Ok(Some(s)) => {
                    if let Some(t) = f(s) {
                        return Some(t);
                    }
                }
                _ => return None,
            }
        }
    }

    pub async fn path(&mut self, timeout: Duration) -> Option<PathInfo> {
        self.wait_for(timeout, |s| match s {
            Seen::Path(p) => Some(p),
            _ => None,
        })
        .await
    }

    pub async fn recv(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        tokio::time::timeout(timeout, self.datagrams.recv())
            .await
            .ok()
            .flatten()
    }
}

/// Starts two drivers bound to `bind` and wires their signaling together.
pub async fn pair(ca: Config, cb: Config, bind: Bind) -> (Node, Node) {
    let a = driver::start(ca, Role::Controlling, bind.clone())
        .await
        .expect("start A");
    let b = driver::start(cb, Role::Controlled, bind)
        .await
        .expect("start B");
    let (ha, hb) = (a.handle.clone(), b.handle.clone());
    ha.set_remote_credentials(b.credentials.clone())
        .await
        .expect("creds");
    hb.set_remote_credentials(a.credentials.clone())
        .await
        .expect("creds");
    let (sa_tx, sa_rx) = mpsc::unbounded_channel();
    let (sb_tx, sb_rx) = mpsc::unbounded_channel();
    tokio::spawn(signal(a.events, hb.clone(), sa_tx));
    tokio::spawn(signal(b.events, ha.clone(), sb_tx));
    (
        Node {
            handle: ha,
            datagrams: a.datagrams,
            seen: sa_rx,
        },
        Node {
            handle: hb,
            datagrams: b.datagrams,
            seen: sb_rx,
        },
    )
}

async fn signal(
    mut events: mpsc::UnboundedReceiver<Event>,
    peer: Handle,
    seen: mpsc::UnboundedSender<Seen>,
) {
    while let Some(ev) = events.recv().await {
        match ev {
            Event::LocalCandidate(c) => {
                let _ = peer.add_remote_candidate(c).await;
            }
            Event::Restarted { credentials } => {
                let _ = peer.set_remote_credentials(credentials).await;
                let _ = seen.send(Seen::Restarted);
            }
            Event::GatheringComplete => {
                // End-of-candidates, as the facade relays it.
                let _ = peer.remote_gathering_complete();
            }
            Event::PathSelected(p) => {
                let _ = seen.send(Seen::Path(p));
            }
            Event::ServerError(e) => {
                let _ = seen.send(Seen::ServerError(e));
            }
            Event::Failed(e) => {
                let _ = seen.send(Seen::Failed(e));
            }
            _ => {}
        }
    }
}

pub fn loopback() -> Bind {
    Bind::Addresses(vec!["127.0.0.1".parse().expect("ip")])
}

pub fn is_loopback(a: SocketAddr) -> bool {
    a.ip().is_loopback()
}

//! Helpers shared by the group call tests (`group_call`, `group_e2ee`).

use std::time::Duration;

use hush::{Client, ClientEvent, GroupCall, GroupCallEvent, GroupInvite, SfuInfo};
use hush_sfu::server::Server;

/// How long a group call test waits for an invitation or an event.
pub(crate) const WAIT: Duration = Duration::from_secs(15);

/// How clients reach `server`.
pub(crate) fn info(server: &Server) -> SfuInfo {
    SfuInfo {
        address: server.signal_addr(),
        key: server.public_key(),
    }
}

/// The next group call invitation `client` receives (other events are skipped).
pub(crate) async fn invitation(client: &Client) -> GroupInvite {
    loop {
        let ev = tokio::time::timeout(WAIT, client.next_event())
            .await
            .expect("invitation in time")
            .expect("client alive");
        if let ClientEvent::GroupInvite(invite) = ev {
            return *invite;
        }
    }
}

/// The next event of `call` that `pred` accepts (others are skipped).
pub(crate) async fn wait_event(
    call: &GroupCall,
    pred: impl Fn(&GroupCallEvent) -> bool,
) -> GroupCallEvent {
    loop {
        let ev = tokio::time::timeout(WAIT, call.next_event())
            .await
            .expect("event in time")
            .expect("call task alive");
        if pred(&ev) {
            return ev;
        }
    }
}

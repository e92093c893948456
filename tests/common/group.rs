//! Helpers shared by the group call tests (`group_call`, `group_e2ee`, `group_e2ee_relay`,
//! `group_video`).

use std::sync::Arc;
use std::time::Duration;

use hush::{Client, ClientEvent, GroupCall, GroupCallEvent, GroupInvite, SfuInfo};
use hush_sfu::server::Server;
use hush_signaling::DeviceId;

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

/// Client 0 creates the call with the others; each joins from its invitation; returns once
/// every call knows all the others and is connected.
pub(crate) async fn everyone_joins(clients: &[Client], server: &Server) -> Vec<GroupCall> {
    let others: Vec<DeviceId> = clients[1..].iter().map(Client::device_id).collect();
    let mut calls = vec![clients[0].group_call(info(server), &others).await.unwrap()];
    for c in &clients[1..] {
        let invite = invitation(c).await;
        calls.push(c.join_group_call(&invite).await.unwrap());
    }
    for call in &calls {
        joined_and_connected(call, clients.len() - 1).await;
    }
    calls
}

/// [`everyone_joins`], each call behind an [`Arc`] for tasks that send and receive at once.
pub(crate) async fn everyone_joins_shared(
    clients: &[Client],
    server: &Server,
) -> Vec<Arc<GroupCall>> {
    everyone_joins(clients, server)
        .await
        .into_iter()
        .map(Arc::new)
        .collect()
}

/// Waits until `call` is connected and has seen `n` participants join.
pub(crate) async fn joined_and_connected(call: &GroupCall, n: usize) {
    let (mut joined, mut connected) = (0, false);
    while joined < n || !connected {
        match wait_event(call, |_| true).await {
            GroupCallEvent::ParticipantJoined(_) => joined += 1,
            GroupCallEvent::Connected => connected = true,
            _ => {}
        }
    }
}

/// An SFrame header (RFC 9605 §4.3): `(key id, counter, header length)`.
pub(crate) fn sframe_header(frame: &[u8]) -> Option<(u64, u64, usize)> {
    let config = *frame.first()?;
    let field = |at: usize, small: u8, extended: bool| -> Option<(u64, usize)> {
        if !extended {
            return Some((u64::from(small), 0));
        }
        let len = usize::from(small) + 1;
        let v = frame
            .get(at..at + len)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        Some((v, len))
    };
    let (kid, kid_len) = field(1, (config >> 4) & 0x07, config & 0x80 != 0)?;
    let (ctr, ctr_len) = field(1 + kid_len, config & 0x07, config & 0x08 != 0)?;
    Some((kid, ctr, 1 + kid_len + ctr_len))
}

/// The key id in an SFrame header (RFC 9605 §4.3).
pub(crate) fn sframe_key_id(frame: &[u8]) -> Option<hush_crypto::group::GroupKeyId> {
    hush_crypto::group::GroupKeyId::from_kid(sframe_header(frame)?.0)
}

//! Group calls through a real SFU over loopback: the creator's client signs the roster, joins
//! and invites the members over their Signal sessions; members join from the invitation; audio
//! goes through Opus, hop SRTP, the SFU and back.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::group::{info, invitation, wait_event};
use common::{devices, loopback_config, tone};
use hush::{Client, Error, GroupCall, GroupCallEvent, GroupInvite};
use hush_sfu::join::SfuSigningKey;
use hush_sfu::server::{Server, ServerConfig};
use hush_sfu::SfuConfig;
use hush_signaling::DeviceId;

async fn sfu(loudest_n: Option<usize>) -> Server {
    let mut config = ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    );
    config.sfu = SfuConfig {
        loudest_n,
        ..SfuConfig::default()
    };
    Server::start(config, SfuSigningKey::generate(&mut rand::rng()))
        .await
        .unwrap()
}

/// Creator (client 0) creates the call with every other client; each joins from its invitation
/// and waits until it knows all the others and media is connected.
async fn everyone_joins(clients: &[Client], server: &Server) -> (Vec<GroupCall>, Vec<GroupInvite>) {
    let others: Vec<DeviceId> = clients[1..].iter().map(Client::device_id).collect();
    let creator = clients[0].group_call(info(server), &others).await.unwrap();
    let mut calls = vec![creator];
    let mut invites = Vec::new();
    for c in &clients[1..] {
        let invite = invitation(c).await;
        assert_eq!(invite.from, clients[0].device_id());
        assert_eq!(invite.call_id(), calls[0].id());
        calls.push(c.join_group_call(&invite).await.unwrap());
        invites.push(invite);
    }
    let n = clients.len();
    for call in &calls {
        let mut joined = 0;
        let mut connected = false;
        while joined < n - 1 || !connected {
            match wait_event(call, |_| true).await {
                GroupCallEvent::ParticipantJoined(_) => joined += 1,
                GroupCallEvent::Connected => connected = true,
                _ => {}
            }
        }
    }
    (calls, invites)
}

/// Everyone talks for `frames` frames at microphone pace; returns, per listener, the decoded
/// frames heard from each speaker.
async fn talk(
    clients: &[Client],
    calls: Vec<GroupCall>,
    frames: u32,
) -> (Vec<GroupCall>, Vec<HashMap<DeviceId, u32>>) {
    let calls: Vec<Arc<GroupCall>> = calls.into_iter().map(Arc::new).collect();
    let mut listeners = Vec::new();
    for call in &calls {
        let call = call.clone();
        listeners.push(tokio::spawn(async move {
            let mut heard: HashMap<DeviceId, u32> = HashMap::new();
            let end =
                tokio::time::Instant::now() + Duration::from_millis(u64::from(frames) * 20 + 800);
            while let Ok(Some(a)) = tokio::time::timeout_at(end, call.recv_audio()).await {
                if a.frame.source == hush::FrameSource::Decoded {
                    *heard.entry(a.device).or_insert(0) += 1;
                }
            }
            heard
        }));
    }
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    for n in 0..frames {
        ticker.tick().await;
        for call in &calls {
            call.send_audio(&tone(n)).unwrap();
        }
    }
    let mut heard = Vec::new();
    for l in listeners {
        heard.push(l.await.unwrap());
    }
    let _ = clients;
    let calls = calls
        .into_iter()
        .map(|c| Arc::try_unwrap(c).expect("listener done"))
        .collect();
    (calls, heard)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_participants_everyone_hears_everyone() {
    let server = sfu(None).await;
    let (clients, _network) = devices(8, loopback_config());
    let (calls, _) = everyone_joins(&clients, &server).await;
    let frames = 50;
    let (calls, heard) = talk(&clients, calls, frames).await;
    for (i, h) in heard.iter().enumerate() {
        for (j, c) in clients.iter().enumerate() {
            if i == j {
                assert!(!h.contains_key(&c.device_id()), "{i} heard itself");
                continue;
            }
            let got = h.get(&c.device_id()).copied().unwrap_or(0);
            // Everyone's audio reaches everyone; a few frames may be lost at start-up or to
            // scheduling on a loaded machine.
            assert!(
                got >= frames * 8 / 10,
                "participant {i} decoded {got}/{frames} frames of {j}"
            );
        }
    }
    let stats = calls[0].stats().await.unwrap();
    assert_eq!(stats.srtp_failures, 0);
    assert!(stats.mixed_frames > 0);
    drop(calls);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_rejoin_kick_and_outsider() {
    let server = sfu(None).await;
    let (mut clients, _network) = devices(5, loopback_config());
    // The fifth device is not in the call: it is never invited.
    let outsider = clients.pop().unwrap();
    let (mut calls, invites) = everyone_joins(&clients, &server).await;

    // An outsider holding a member's invitation is refused by the SFU (not on the roster).
    match outsider.join_group_call(&invites[0]).await {
        Err(Error::GroupJoin(hush_sfu::client::ClientError::Refused(reason))) => {
            assert!(reason.contains("roster"), "{reason}")
        }
        other => panic!("outsider joined: {other:?}"),
    }

    // Member 3 leaves: the others see it go; it rejoins from its invitation and they see it
    // come back.
    let three = clients[3].device_id();
    calls.pop().unwrap().leave();
    for call in &calls {
        let ev = wait_event(call, |e| {
            matches!(e, GroupCallEvent::ParticipantLeft { .. })
        })
        .await;
        assert_eq!(
            ev,
            GroupCallEvent::ParticipantLeft {
                device: three,
                kicked: false
            }
        );
    }
    calls.push(clients[3].join_group_call(&invites[2]).await.unwrap());
    for call in &calls[..3] {
        wait_event(call, |e| *e == GroupCallEvent::ParticipantJoined(three)).await;
    }

    // Member 1 mutes and turns its video off: the others are told, and a newcomer learns
    // both on joining.
    let one = clients[1].device_id();
    calls[1].set_muted(true).unwrap();
    calls[1].set_video_enabled(false).unwrap();
    for i in [0, 2, 3] {
        wait_event(&calls[i], |e| {
            *e == GroupCallEvent::RemoteMuted {
                device: one,
                muted: true,
            }
        })
        .await;
        wait_event(&calls[i], |e| {
            *e == GroupCallEvent::RemoteVideo {
                device: one,
                enabled: false,
            }
        })
        .await;
    }
    // A newcomer (member 3 again) learns it on joining.
    calls.pop().unwrap().leave();
    wait_event(&calls[0], |e| {
        matches!(e, GroupCallEvent::ParticipantLeft { .. })
    })
    .await;
    calls.push(clients[3].join_group_call(&invites[2]).await.unwrap());
    wait_event(&calls[3], |e| {
        *e == GroupCallEvent::RemoteMuted {
            device: one,
            muted: true,
        }
    })
    .await;
    wait_event(&calls[3], |e| {
        *e == GroupCallEvent::RemoteVideo {
            device: one,
            enabled: false,
        }
    })
    .await;
    // Video back on: announced to everyone, the newcomer included.
    calls[1].set_video_enabled(true).unwrap();
    for i in [0, 2, 3] {
        wait_event(&calls[i], |e| {
            *e == GroupCallEvent::RemoteVideo {
                device: one,
                enabled: true,
            }
        })
        .await;
    }

    // The creator kicks member 2: it is told, the others see it kicked, and it cannot rejoin.
    let two = clients[2].device_id();
    calls[0].kick(two).await.unwrap();
    wait_event(&calls[0], |e| matches!(e, GroupCallEvent::RosterUpdated(2))).await;
    wait_event(&calls[2], |e| *e == GroupCallEvent::Kicked).await;
    for i in [0, 1, 3] {
        wait_event(&calls[i], |e| {
            *e == GroupCallEvent::ParticipantLeft {
                device: two,
                kicked: true,
            }
        })
        .await;
    }
    assert!(matches!(
        clients[2].join_group_call(&invites[1]).await,
        Err(Error::GroupJoin(hush_sfu::client::ClientError::Refused(_)))
    ));
    // Only the creator may change the roster.
    assert!(matches!(
        calls[1].kick(clients[0].device_id()).await,
        Err(Error::NotCallCreator)
    ));
    drop(calls);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_participant_changes_network_and_the_call_goes_on() {
    let server = sfu(None).await;
    let (clients, _network) = devices(3, loopback_config());
    let (calls, _) = everyone_joins(&clients, &server).await;
    // Participant 2 moves to new sockets (new ports): ICE restarts towards the SFU.
    calls[2].network_changed().await.unwrap();
    wait_event(&calls[2], |e| *e == GroupCallEvent::Reconnected).await;
    let frames = 40;
    let (calls, heard) = talk(&clients, calls, frames).await;
    for (i, h) in heard.iter().enumerate() {
        for (j, c) in clients.iter().enumerate() {
            if i != j {
                let got = h.get(&c.device_id()).copied().unwrap_or(0);
                assert!(
                    got >= frames * 8 / 10,
                    "participant {i} decoded {got}/{frames} frames of {j}"
                );
            }
        }
    }
    // Nobody left or joined again: the move was invisible to the others.
    for call in &calls[..2] {
        while let Ok(Some(ev)) =
            tokio::time::timeout(Duration::from_millis(50), call.next_event()).await
        {
            assert!(
                !matches!(
                    ev,
                    GroupCallEvent::ParticipantLeft { .. } | GroupCallEvent::ParticipantJoined(_)
                ),
                "{ev:?}"
            );
        }
    }
    drop(calls);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creator_adds_a_member_who_is_invited_and_joins() {
    let server = sfu(None).await;
    let (clients, _network) = devices(3, loopback_config());
    // The call starts with 0 and 1 only.
    let (calls, _) = everyone_joins(&clients[..2], &server).await;
    // 2 is not on the roster yet: the SFU would refuse it. The creator adds it.
    let two = clients[2].device_id();
    calls[0].add(two).await.unwrap();
    wait_event(&calls[0], |e| matches!(e, GroupCallEvent::RosterUpdated(2))).await;
    let invite = invitation(&clients[2]).await;
    assert_eq!(invite.roster.version(), 2);
    let third = clients[2].join_group_call(&invite).await.unwrap();
    for call in &calls {
        wait_event(call, |e| *e == GroupCallEvent::ParticipantJoined(two)).await;
    }
    wait_event(&third, |e| *e == GroupCallEvent::Connected).await;
    drop((calls, third));
    server.shutdown().await;
}

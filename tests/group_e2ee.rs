//! End-to-end encryption of group call audio (SFrame with sender keys over the Signal
//! sessions) through a real SFU over loopback, checked from the SFU's side: a tap records every
//! RTP packet the SFU forwards, as the SFU sees it once hop SRTP is removed.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::group::{info, invitation, wait_event};
use common::{devices, loopback_config, tone};
use hush::{Client, FrameSource, GroupCall, GroupCallEvent};
use hush_media::codec::{Codec, OpusCodec};
use hush_media::rtp::RtpPacket;
use hush_sfu::join::SfuSigningKey;
use hush_sfu::server::{Server, ServerConfig};
use hush_sfu::{ForwardTap, SfuConfig};
use hush_signaling::DeviceId;

type Tapped = Arc<Mutex<Vec<Vec<u8>>>>;

/// An SFU that forwards all audio and records every RTP packet it forwards.
async fn tapped_sfu() -> (Server, Tapped) {
    let tapped: Tapped = Arc::new(Mutex::new(Vec::new()));
    let sink = tapped.clone();
    let mut config = ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    );
    config.sfu = SfuConfig {
        loudest_n: None,
        tap: Some(ForwardTap(Arc::new(move |p: &[u8]| {
            sink.lock().unwrap().push(p.to_vec());
        }))),
        ..SfuConfig::default()
    };
    let server = Server::start(config, SfuSigningKey::generate(&mut rand::rng()))
        .await
        .unwrap();
    (server, tapped)
}

/// Client 0 creates the call with the others; each joins from its invitation; returns once
/// every call knows all the others and is connected.
async fn everyone_joins(clients: &[Client], server: &Server) -> Vec<GroupCall> {
    let others: Vec<DeviceId> = clients[1..].iter().map(Client::device_id).collect();
    let mut calls = vec![clients[0].group_call(info(server), &others).await.unwrap()];
    for c in &clients[1..] {
        let invite = invitation(c).await;
        calls.push(c.join_group_call(&invite).await.unwrap());
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
    calls
}

/// The calls in `speakers` send `frames` tone frames at microphone pace (frame numbers from
/// `first`); every call listens. Returns per listener the decoded frames heard from each
/// speaker.
async fn talk(
    calls: &[Arc<GroupCall>],
    speakers: &[usize],
    first: u32,
    frames: u32,
) -> Vec<HashMap<DeviceId, u32>> {
    let mut listeners = Vec::new();
    for call in calls {
        let call = call.clone();
        listeners.push(tokio::spawn(async move {
            let mut heard: HashMap<DeviceId, u32> = HashMap::new();
            let end =
                tokio::time::Instant::now() + Duration::from_millis(u64::from(frames) * 20 + 800);
            while let Ok(Some(a)) = tokio::time::timeout_at(end, call.recv_audio()).await {
                if a.frame.source == FrameSource::Decoded {
                    *heard.entry(a.device).or_insert(0) += 1;
                }
            }
            heard
        }));
    }
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    for n in first..first + frames {
        ticker.tick().await;
        for &s in speakers {
            calls[s].send_audio(&tone(n)).unwrap();
        }
    }
    let mut heard = Vec::new();
    for l in listeners {
        heard.push(l.await.unwrap());
    }
    heard
}

/// The Opus frames a fresh group call encoder makes of tone frames `0..frames`: the plaintext
/// a speaker sends, byte for byte (the encoder is deterministic).
fn plaintext_frames(frames: u32) -> Vec<Vec<u8>> {
    let mut encoder = OpusCodec::new(1, 20, 32_000).unwrap();
    (0..frames)
        .map(|n| {
            let mut out = Vec::new();
            encoder.encode(&tone(n), &mut out).unwrap();
            out
        })
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.len() >= 8 && haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_participants_hear_each_other_and_the_sfu_forwards_only_ciphertext() {
    let (server, tapped) = tapped_sfu().await;
    let (clients, _network) = devices(3, loopback_config());
    let calls: Vec<Arc<GroupCall>> = everyone_joins(&clients, &server)
        .await
        .into_iter()
        .map(Arc::new)
        .collect();
    let frames = 50;
    let heard = talk(&calls, &[0, 1, 2], 0, frames).await;
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

    // What the SFU saw: every forwarded audio payload, none of which contains any of the Opus
    // frames the speakers encoded.
    let plain = plaintext_frames(frames);
    let tapped = tapped.lock().unwrap().clone();
    let payloads: Vec<Vec<u8>> = tapped
        .iter()
        .filter_map(|p| RtpPacket::parse(p).ok())
        .filter(|p| p.header.payload_type == 111)
        .map(|p| p.payload.to_vec())
        .collect();
    assert!(
        payloads.len() >= (frames as usize) * 3 * 8 / 10,
        "the SFU forwarded {} audio packets",
        payloads.len()
    );
    for (k, p) in payloads.iter().enumerate() {
        for (n, f) in plain.iter().enumerate() {
            assert!(
                !contains(p, f),
                "forwarded packet {k} carries the plaintext of frame {n}"
            );
        }
    }
    // And the audio heard was opened by the end-to-end layer.
    for call in &calls {
        let s = call.stats().await.unwrap();
        assert!(s.e2ee.decrypted >= u64::from(frames) * 2 * 8 / 10, "{s:?}");
        assert!(s.e2ee.keys_installed >= 2, "{s:?}");
        assert_eq!(s.e2ee.refused, 0, "{s:?}");
    }
    drop(calls);
    server.shutdown().await;
}

/// The key id in an SFrame header (RFC 9605 §4.3): `X|K|Y|C` config byte, then the KID in
/// `K + 1` bytes when `X` is set.
fn sframe_key_id(frame: &[u8]) -> Option<hush_crypto::group::GroupKeyId> {
    let config = *frame.first()?;
    let k = u64::from((config >> 4) & 0x07);
    let kid = if config & 0x80 == 0 {
        k
    } else {
        let len = usize::try_from(k).ok()? + 1;
        frame
            .get(1..1 + len)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
    };
    hush_crypto::group::GroupKeyId::from_kid(kid)
}

/// Audio payloads in the tap from `from` on.
fn tapped_audio(tapped: &Tapped, from: usize) -> Vec<Vec<u8>> {
    tapped.lock().unwrap()[from..]
        .iter()
        .filter_map(|p| RtpPacket::parse(p).ok())
        .filter(|p| p.header.payload_type == 111)
        .map(|p| p.payload.to_vec())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kick_the_others_send_under_fresh_keys_the_kicked_member_never_receives() {
    let (server, tapped) = tapped_sfu().await;
    let (clients, network) = devices(3, loopback_config());
    let calls: Vec<Arc<GroupCall>> = everyone_joins(&clients, &server)
        .await
        .into_iter()
        .map(Arc::new)
        .collect();
    // Everyone talks: the generation each sender used while the kicked member was in.
    talk(&calls, &[0, 1, 2], 0, 20).await;
    let mut before: HashMap<u8, u16> = HashMap::new();
    for p in tapped_audio(&tapped, 0) {
        let id = sframe_key_id(&p).expect("every forwarded frame is SFrame");
        let g = before.entry(id.sender.0).or_insert(0);
        *g = (*g).max(id.generation);
    }
    assert_eq!(before.len(), 3, "{before:?}");

    // The creator kicks member 2. From here every envelope on the signaling network is kept.
    network.start_recording();
    let kicked = clients[2].device_id();
    calls[0].kick(kicked).await.unwrap();
    wait_event(&calls[2], |e| *e == GroupCallEvent::Kicked).await;
    for call in &calls[..2] {
        wait_event(call, |e| {
            *e == GroupCallEvent::ParticipantLeft {
                device: kicked,
                kicked: true,
            }
        })
        .await;
    }
    // Frames sent before the kick have reached the SFU; what it forwards from here was sent
    // after both remaining members saw the kick.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mark = tapped.lock().unwrap().len();
    let heard = talk(&calls[..2], &[0, 1], 20, 40).await;
    for (i, j) in [(0, 1), (1, 0)] {
        let got = heard[i].get(&clients[j].device_id()).copied().unwrap_or(0);
        assert!(got >= 32, "participant {i} decoded {got}/40 frames of {j}");
    }

    // Every frame the SFU forwarded after the kick is under a newer generation of its sender:
    // a fresh random key, not derivable from any key the kicked member held.
    let after = tapped_audio(&tapped, mark);
    assert!(after.len() >= 64, "{} frames forwarded", after.len());
    for p in &after {
        let id = sframe_key_id(p).expect("SFrame");
        assert!(
            id.generation > before[&id.sender.0],
            "{id} after the kick (generation before: {})",
            before[&id.sender.0]
        );
    }
    // And those keys went to the remaining member only: no envelope to the kicked device.
    let recorded = network.recorded();
    let to_remaining = recorded
        .iter()
        .filter(|e| e.recipient == clients[0].device_id() || e.recipient == clients[1].device_id())
        .count();
    assert!(
        to_remaining >= 2,
        "{to_remaining} envelopes between the remaining members"
    );
    assert!(
        recorded.iter().all(|e| e.recipient != kicked),
        "an envelope went to the kicked device after the kick"
    );
    drop(calls);
    server.shutdown().await;
}

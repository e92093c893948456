//! Group video through a real SFU over loopback: every participant sends camera pictures,
//! which its client scales to three simulcast layers, encodes with H.264, seals with SFrame and
//! sends; the SFU forwards one layer of each to each receiver, which decodes it. A view request
//! for a small tile moves that receiver (and only it) to the smallest layer.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::group::{everyone_joins_shared, info, invitation, joined_and_connected};
use common::{devices, devices_configured, loopback_config};
use hush::{Client, Error, GroupCall, I420Frame, SimulatedLink, GROUP_VIDEO_LAYERS};
use hush_sfu::join::SfuSigningKey;
use hush_sfu::server::{Server, ServerConfig};
use hush_signaling::DeviceId;

async fn sfu() -> Server {
    let config = ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    );
    Server::start(config, SfuSigningKey::generate(&mut rand::rng()))
        .await
        .unwrap()
}

/// A 640×360 picture that moves with `n` (so the encoder has real work), tinted per sender.
fn picture(n: u32, tint: u8) -> I420Frame {
    let (w, h) = (640usize, 360usize);
    picture_from(pattern(n, w, h), tint)
}

/// The luma of [`picture`]: a diagonal ramp moving 4 pixels a picture.
fn pattern(n: u32, w: usize, h: usize) -> Vec<u8> {
    (0..w * h)
        .map(|i| ((i % w + i / w + n as usize * 4) % 200 + 20) as u8)
        .collect()
}

/// A 640×360 I420 picture of this luma, its chroma flat and tinted.
fn picture_from(y: Vec<u8>, tint: u8) -> I420Frame {
    let (w, h) = (640usize, 360usize);
    let c = (w / 2) * (h / 2);
    I420Frame::new(
        640,
        360,
        [y, vec![tint; c], vec![128; c]],
        [w, w / 2, w / 2],
        Instant::now(),
    )
    .unwrap()
}

/// A 640×360 picture with as much new detail each time as a camera's: the moving pattern of
/// [`picture`] (which the encoders predict almost for free) with noise in a changing tenth of
/// its 16×16 blocks, tinted per sender. The encoders then send about their configured rates
/// (pure noise would need ten times as much).
fn busy_picture(n: u32, tint: u8) -> I420Frame {
    let (w, h) = (640usize, 360usize);
    let mut state = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut y = pattern(n, w, h);
    for by in 0..h / 16 {
        for bx in 0..w / 16 {
            if next() % 10 != 0 {
                continue;
            }
            for r in by * 16..by * 16 + 16 {
                for x in bx * 16..bx * 16 + 16 {
                    y[r * w + x] = y[r * w + x].wrapping_add((next() >> 59) as u8 * 4);
                }
            }
        }
    }
    picture_from(y, tint)
}

/// Everyone sends `pictures` pictures at 15 per second; returns, per receiver, the heights of
/// the pictures decoded from each sender, in order.
async fn film(calls: &[Arc<GroupCall>], pictures: u32) -> Vec<HashMap<DeviceId, Vec<u32>>> {
    let everyone: Vec<usize> = (0..calls.len()).collect();
    film_from(calls, &everyone, pictures).await
}

/// [`film`] with only the participants in `senders` sending.
async fn film_from(
    calls: &[Arc<GroupCall>],
    senders: &[usize],
    pictures: u32,
) -> Vec<HashMap<DeviceId, Vec<u32>>> {
    let mut receivers = Vec::new();
    for call in calls {
        let call = call.clone();
        let end = tokio::time::Instant::now()
            + Duration::from_millis(u64::from(pictures) * 1000 / 15 + 1500);
        receivers.push(tokio::spawn(async move {
            let mut got: HashMap<DeviceId, Vec<u32>> = HashMap::new();
            while let Ok(Some(v)) = tokio::time::timeout_at(end, call.recv_video()).await {
                // The layer said inside the sealed frame matches the decoded size.
                let layer = GROUP_VIDEO_LAYERS[usize::from(v.layer)];
                assert_eq!(v.frame.height(), u32::from(layer.1));
                assert_eq!(v.frame.width(), u32::from(layer.0));
                got.entry(v.device).or_default().push(v.frame.height());
            }
            got
        }));
    }
    let mut ticker = tokio::time::interval(Duration::from_millis(1000 / 15));
    for n in 0..pictures {
        ticker.tick().await;
        for (i, call) in calls.iter().enumerate() {
            if senders.contains(&i) {
                call.send_video(&picture(n, 60 + 40 * i as u8)).unwrap();
            }
        }
    }
    let mut out = Vec::new();
    for r in receivers {
        out.push(r.await.unwrap());
    }
    out
}

/// Reads and drops every call's pictures for `time`.
async fn settle(calls: &[Arc<GroupCall>], time: Duration) {
    let end = tokio::time::Instant::now() + time;
    let readers: Vec<_> = calls
        .iter()
        .map(|call| {
            let call = call.clone();
            tokio::spawn(async move {
                while let Ok(Some(_)) = tokio::time::timeout_at(end, call.recv_video()).await {}
            })
        })
        .collect();
    for r in readers {
        r.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_participants_see_each_other_and_a_small_view_gets_the_low_layer() {
    let server = sfu().await;
    let (clients, _network) = devices(3, loopback_config());
    let calls = everyone_joins_shared(&clients, &server).await;
    let ids: Vec<DeviceId> = clients.iter().map(Client::device_id).collect();

    // Everyone sees everyone, on the top layer (no view limit, no bandwidth estimate).
    let pictures = 30;
    let seen = film(&calls, pictures).await;
    for (i, got) in seen.iter().enumerate() {
        assert!(!got.contains_key(&ids[i]), "{i} saw itself");
        for (j, id) in ids.iter().enumerate() {
            if i == j {
                continue;
            }
            let heights = got.get(id).cloned().unwrap_or_default();
            assert!(
                heights.len() as u32 >= pictures / 2,
                "participant {i} decoded {}/{pictures} pictures of {j}: {:?} {:?}",
                heights.len(),
                calls[i].stats().await.unwrap(),
                calls[j].stats().await.unwrap()
            );
            assert_eq!(
                heights.last(),
                Some(&360),
                "{i} gets {j}'s top layer: {heights:?} {:?}",
                calls[j].stats().await.unwrap()
            );
        }
    }

    // Participant 0 shows 1's tile small: it moves to 1's lowest layer; 2 keeps seeing 1 on
    // the top layer, and 0 keeps seeing 2 on the top layer.
    calls[0].request_view(ids[1], 90).await.unwrap();
    let seen = film(&calls, 30).await;
    let small = &seen[0][&ids[1]];
    assert_eq!(small.last(), Some(&90), "0 gets 1 at 90 pixels: {small:?}");
    assert!(small.iter().filter(|&&h| h == 90).count() >= 5, "{small:?}");
    assert_eq!(seen[0][&ids[2]].last(), Some(&360));
    assert_eq!(seen[2][&ids[1]].last(), Some(&360));

    // A view of someone not in the call is refused.
    let stranger = DeviceId::from_bytes([0x55; 32]);
    assert!(matches!(
        calls[0].request_view(stranger, 90).await,
        Err(Error::UnknownParticipant)
    ));

    // Video off: the others stop receiving 0's pictures. Those already on their way (in its
    // encoder's queue, on the network, in a receiver's playout) still come: they are let
    // through first. Filmed at once, one of them arriving under load failed this check.
    calls[0].set_video_enabled(false).unwrap();
    settle(&calls, Duration::from_secs(1)).await;
    let seen = film(&calls, 10).await;
    assert!(!seen[1].contains_key(&ids[0]), "video off still sent");
    assert!(seen[1].get(&ids[2]).is_some_and(|h| !h.is_empty()));
    // Video back on (its layers went idle at the SFU meanwhile): the SFU asks for a keyframe
    // and the others decode 0 again.
    calls[0].set_video_enabled(true).unwrap();
    let seen = film(&calls, 15).await;
    for r in [1, 2] {
        let back = seen[r].get(&ids[0]).map_or(0, Vec::len);
        assert!(
            back >= 5,
            "{r} decoded {back} of 0's pictures after video on"
        );
    }

    let stats = calls[1].stats().await.unwrap();
    // The switch to 1's lowest layer waited for a keyframe there, which the SFU asked for.
    assert!(stats.keyframe_requests >= 1, "{stats:?}");
    assert!(stats.video_pictures_sent >= 70, "{stats:?}");
    // Each receiver reported its downlink to the SFU all along.
    assert!(stats.transport_feedback_sent >= 20, "{stats:?}");
    assert!(stats.video_frames_sent >= stats.video_pictures_sent * 2);
    assert_eq!(stats.srtp_failures, 0);
    let stats0 = calls[0].stats().await.unwrap();
    assert!(stats0.video_frames_decoded[&ids[1]] > 0);
    drop(calls);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_on_a_capped_downlink_gets_a_lower_layer_while_the_other_keeps_the_top_one() {
    let server = sfu().await;
    // Participant 2's downlink (SFU → it) is a 250 kbit/s bottleneck: its feedback tells the
    // SFU, which forwards it a lower layer of participant 0's camera.
    let (clients, _network) = devices_configured(3, |i| {
        let mut config = loopback_config();
        if i == 2 {
            config.simulated_group_downlink = SimulatedLink::new().bandwidth_bps(Some(250_000));
        }
        config
    });
    let calls = everyone_joins_shared(&clients, &server).await;
    let sender = clients[0].device_id();
    let seen = film_from(&calls, &[0], 120).await;
    let fast = seen[1].get(&sender).cloned().unwrap_or_default();
    let slow = seen[2].get(&sender).cloned().unwrap_or_default();
    let stats2 = calls[2].stats().await.unwrap();
    let stats1 = calls[1].stats().await.unwrap();
    assert_eq!(fast.last(), Some(&360), "uncapped: {fast:?} {stats1:?}");
    assert!(fast.iter().all(|&h| h == 360), "uncapped: {fast:?}");
    // For the record (docs/benchmarks.md): the capped receiver's pictures as runs of
    // (height, count).
    let mut runs: Vec<(u32, usize)> = Vec::new();
    for &h in &slow {
        match runs.last_mut() {
            Some((last, n)) if *last == h => *n += 1,
            _ => runs.push((h, 1)),
        }
    }
    eprintln!(
        "capped receiver: {} pictures, runs (height, count) {runs:?}; uncapped: {}",
        slow.len(),
        fast.len()
    );
    let last = slow.last().copied();
    assert!(last.is_some_and(|h| h < 360), "capped: {slow:?} {stats2:?}");
    // It kept receiving pictures (on the lower layer) to the end.
    let tail = slow.iter().rev().take_while(|&&h| h < 360).count();
    assert!(tail >= 15, "capped: {slow:?}");
    // The uncapped receiver decoded (nearly) every picture; pictures the sender's encoder
    // thread dropped on a busy machine are not there to decode.
    assert!(fast.len() >= 60, "uncapped: {} pictures", fast.len());
    assert!(stats2.transport_feedback_sent >= 50, "{stats2:?}");
    drop(calls);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_decodes_video_at_once_from_one_keyframe_request() {
    let server = sfu().await;
    let (clients, _network) = devices(3, loopback_config());
    let ids: Vec<DeviceId> = clients.iter().map(Client::device_id).collect();
    let c0 = clients[0]
        .group_call(info(&server), &ids[1..])
        .await
        .unwrap();
    let invite1 = invitation(&clients[1]).await;
    let invite2 = invitation(&clients[2]).await;
    let c1 = clients[1].join_group_call(&invite1).await.unwrap();
    joined_and_connected(&c0, 1).await;
    joined_and_connected(&c1, 1).await;
    let (c0, c1) = (Arc::new(c0), Arc::new(c1));
    // Participant 0's video runs for 2 s (its encoder makes periodic keyframes only every
    // 10 s), then participant 2 joins.
    let seen = film_from(&[c0.clone(), c1.clone()], &[0], 30).await;
    assert!(seen[1].get(&ids[0]).is_some_and(|h| h.len() >= 15));
    let c2 = clients[2].join_group_call(&invite2).await.unwrap();
    joined_and_connected(&c2, 2).await;
    let before = c0.stats().await.unwrap().keyframe_requests;
    let calls = [c0.clone(), c1, Arc::new(c2)];
    let seen = film_from(&calls, &[0], 30).await;
    let late = seen[2].get(&ids[0]).cloned().unwrap_or_default();
    let stats2 = calls[2].stats().await.unwrap();
    // It decoded nearly all of the 30 pictures sent after it joined: the keyframe it started
    // from was made for it, not the encoder's next periodic one (8 s away).
    assert!(
        late.len() >= 20,
        "late joiner decoded {}: {stats2:?}",
        late.len()
    );
    assert_eq!(stats2.video_decode_errors, 0, "{stats2:?}");
    // One keyframe request (the SFU's, for the joiner's new layer subscription, and maybe the
    // joiner's own if that keyframe passed before its path was up), not a stream of them.
    let asked = c0.stats().await.unwrap().keyframe_requests - before;
    assert!((1..=3).contains(&asked), "{asked} keyframe requests");
    drop(calls);
    server.shutdown().await;
}

/// What one receiver decoded of one sender: (when, picture height), in order.
type Decoded = Vec<(Instant, u32)>;

/// The longest gap between two decoded pictures in `got` among those after `from` and before
/// `to` (the gap that ends at the first picture after `from` counts).
fn longest_gap(got: &Decoded, from: Instant, to: Instant) -> Duration {
    got.windows(2)
        .filter(|w| w[1].0 > from && w[0].0 < to)
        .map(|w| w[1].0 - w[0].0)
        .max()
        .unwrap_or(Duration::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_on_a_capped_uplink_stops_its_top_layer_and_starts_it_again_when_the_cap_lifts() {
    const CAP_AT: Duration = Duration::from_secs(6);
    const LIFT_AT: Duration = Duration::from_secs(16);
    const END_AT: Duration = Duration::from_secs(30);
    let server = sfu().await;
    // Participant 0's uplink (it → SFU) is capped at 500 kbit/s from 6 s to 16 s after its
    // call started: its three layers (100 + 300 + 800 kbit/s) and audio do not fit.
    let (clients, _network) = devices_configured(3, |i| {
        let mut config = loopback_config();
        if i == 0 {
            config.simulated_group_uplink = SimulatedLink::new()
                .bandwidth_steps(vec![(CAP_AT, Some(500_000)), (LIFT_AT, None)]);
        }
        config
    });
    let t0 = Instant::now();
    let calls = everyone_joins_shared(&clients, &server).await;
    let ids: Vec<DeviceId> = clients.iter().map(Client::device_id).collect();
    let (cap, lift, end) = (t0 + CAP_AT, t0 + LIFT_AT, t0 + END_AT);

    // 0 and 1 send pictures at 15 per second; everyone records what it decodes, and when.
    let mut receivers = Vec::new();
    for call in &calls {
        let call = call.clone();
        receivers.push(tokio::spawn(async move {
            let mut got: HashMap<DeviceId, Decoded> = HashMap::new();
            let until = tokio::time::Instant::from_std(end + Duration::from_millis(500));
            while let Ok(Some(v)) = tokio::time::timeout_at(until, call.recv_video()).await {
                got.entry(v.device)
                    .or_default()
                    .push((Instant::now(), v.frame.height()));
            }
            got
        }));
    }
    let sender = calls[0].clone();
    // Participant 0's layers as its stats say, polled every 100 ms: (when, sending).
    let watcher = tokio::spawn(async move {
        let mut seen: Vec<(Instant, Vec<bool>, Option<u64>)> = Vec::new();
        while Instant::now() < end {
            let s = sender.stats().await.unwrap();
            seen.push((
                Instant::now(),
                s.video_layers_sending,
                s.uplink_estimate_bps,
            ));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        seen
    });
    let mut ticker = tokio::time::interval(Duration::from_millis(1000 / 15));
    let mut n = 0;
    while Instant::now() < end {
        ticker.tick().await;
        for (i, call) in calls.iter().enumerate().take(2) {
            call.send_video(&busy_picture(n, 60 + 40 * i as u8))
                .unwrap();
        }
        n += 1;
    }
    let layers = watcher.await.unwrap();
    let trace: Vec<String> = layers
        .iter()
        .map(|(t, l, e)| {
            let on: String = l.iter().map(|&b| if b { '1' } else { '0' }).collect();
            format!(
                "{:.1}s {on} {}k",
                (*t - t0).as_secs_f64(),
                e.unwrap_or(0) / 1000
            )
        })
        .collect();
    let mut seen = Vec::new();
    for r in receivers {
        seen.push(r.await.unwrap());
    }
    let stats0 = calls[0].stats().await.unwrap();
    let stats1 = calls[1].stats().await.unwrap();
    let top_on = |l: &Vec<bool>| l.get(2).copied().unwrap_or(true);
    eprintln!("layers of 0 (since its call started, sending, estimate): {trace:?}");
    // Freezes of 0's pictures at each receiver (gaps over 500 ms), per period, for the record
    // (docs/benchmarks.md).
    for r in [1, 2] {
        let got = seen[r].get(&ids[0]).cloned().unwrap_or_default();
        for (name, from, to) in [
            ("before the cap", t0 + Duration::from_secs(2), cap),
            ("capped", cap, lift),
            ("after the lift", lift, end),
        ] {
            let freezes: Vec<u128> = got
                .windows(2)
                .filter(|w| w[1].0 > from && w[0].0 < to)
                .map(|w| w[1].0 - w[0].0)
                .filter(|g| *g > Duration::from_millis(500))
                .map(|g| g.as_millis())
                .collect();
            let pictures = got.iter().filter(|(t, _)| *t > from && *t < to).count();
            eprintln!(
                "receiver {r} of 0, {name}: {pictures} pictures, freezes over 500 ms (ms): \
                 {freezes:?}"
            );
        }
    }

    // Before the cap, all three layers went, on the SFU's feedback.
    assert!(
        layers
            .iter()
            .filter(|(t, ..)| *t < cap)
            .all(|(_, l, _)| top_on(l)),
        "top stopped before the cap: {trace:?}"
    );
    assert!(stats0.transport_feedback_received >= 100, "{stats0:?}");
    // Within a few seconds of the cap, the top layer stopped.
    let stopped = layers
        .iter()
        .find(|(t, l, _)| *t >= cap && !top_on(l))
        .map(|(t, ..)| *t)
        .unwrap_or_else(|| panic!("top layer never stopped: {trace:?} {stats0:?}"));
    let to_stop = stopped - cap;
    assert!(to_stop < Duration::from_secs(4), "{to_stop:?}: {trace:?}");
    // It came back after the cap lifted, and was on at the end.
    let back = layers
        .iter()
        .find(|(t, l, _)| *t >= lift && top_on(l))
        .map(|(t, ..)| *t)
        .unwrap_or_else(|| panic!("top layer never came back: {trace:?} {stats0:?}"));
    assert!(top_on(&layers.last().unwrap().1), "{trace:?}");
    // The other sender kept its top layer all along.
    assert!(
        stats1.video_layers_sending.iter().all(|&on| on) && stats1.uplink_layer_changes == 0,
        "{stats1:?}"
    );

    // The layers settle within a few seconds of the cap: the last change before the lift
    // (the top layer's stop; on a busy machine maybe the middle one's after it) leaves at
    // least 3 s of the capped period without a change.
    let last_change = layers
        .windows(2)
        .filter(|w| w[1].0 < lift && w[0].1 != w[1].1)
        .map(|w| w[1].0)
        .next_back()
        .unwrap_or(stopped);
    assert!(
        last_change + Duration::from_secs(3) < lift,
        "layers still changing {:?} after the cap: {trace:?}",
        last_change - cap
    );
    // The switch has settled once the receivers have 0's pictures on the lower layer.
    let switched = |r: usize| {
        seen[r]
            .get(&ids[0])
            .and_then(|got| got.iter().find(|(t, h)| *t > stopped && *h < 360))
            .map(|p| p.0)
            .unwrap_or_else(|| panic!("receiver {r} never got 0's lower layer"))
    };
    let settled = switched(1).max(switched(2)).max(last_change);
    for r in [1, 2] {
        let got = seen[r].get(&ids[0]).cloned().unwrap_or_default();
        // Pictures of 0 went on through its capped period, on a lower layer, without a freeze
        // of over half a second once the switch settled.
        let gap = longest_gap(&got, settled, lift);
        let during: Vec<u32> = got
            .iter()
            .filter(|(t, _)| *t > settled && *t < lift)
            .map(|&(_, h)| h)
            .collect();
        let gaps: Vec<String> = got
            .windows(2)
            .filter(|w| w[1].0 - w[0].0 > Duration::from_millis(300))
            .map(|w| {
                format!(
                    "{:.1}s..{:.1}s {}→{}",
                    (w[0].0 - t0).as_secs_f64(),
                    (w[1].0 - t0).as_secs_f64(),
                    w[0].1,
                    w[1].1
                )
            })
            .collect();
        assert!(
            gap < Duration::from_millis(500),
            "receiver {r}: {gap:?} without 0's pictures while capped (settled at {:.1}s): \
             gaps {gaps:?} {:?} {stats0:?}",
            (settled - t0).as_secs_f64(),
            calls[r].stats().await.unwrap()
        );
        assert!(during.len() >= 60, "receiver {r}: {during:?}");
        assert!(during.iter().all(|&h| h < 360), "receiver {r}: {during:?}");
        // Back on the top layer after the cap lifted.
        assert_eq!(got.last().map(|p| p.1), Some(360), "receiver {r}");
        let gap_before = longest_gap(&got, t0 + Duration::from_secs(2), cap);
        let gap_switch = longest_gap(&got, cap, settled);
        let gap_after = longest_gap(&got, back, end);
        eprintln!(
            "receiver {r} of 0: cap→top stopped {to_stop:?}, top stopped→lower layer here \
             {:?}, lift→top back {:?}; longest gap before the cap {gap_before:?}, around the \
             switch {gap_switch:?}, capped after it {gap:?}, after the top came back \
             {gap_after:?}; settled at {:.1}s, gaps over 300 ms {gaps:?}",
            switched(r) - stopped,
            back - lift,
            (settled - t0).as_secs_f64()
        );
    }
    // The other sender's top layer reached receiver 2 throughout.
    let other = seen[2].get(&ids[1]).cloned().unwrap_or_default();
    let late: Vec<u32> = other
        .iter()
        .filter(|(t, _)| *t > t0 + Duration::from_secs(3))
        .map(|&(_, h)| h)
        .collect();
    assert!(late.len() >= 200, "{} of 1's pictures", late.len());
    assert!(late.iter().all(|&h| h == 360), "1 at 2: {late:?}");
    drop(calls);
    server.shutdown().await;
}

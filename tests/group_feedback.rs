//! What a group call client sends back to the SFU, and what it buys: transport-wide feedback
//! (the SFU picks each receiver's simulcast layer from its downlink's estimate), NACKs answered
//! from the SFU's cache (a lost packet costs no keyframe), and a keyframe request at once when
//! a stream starts with a frame nothing can decode (a late joiner); no resends of a layer the
//! sender stopped.
//!
//! Real joins, hop SRTP and SFrame; `GroupMediaPath` on every participant with the real
//! `hush_sfu::Sfu` core between them; simulated time (1 ms steps), a bottleneck or loss on
//! the SFU → receiver hop of one participant or on a sender's hop to the SFU. Nothing in the
//! client is scripted: its feedback, NACKs and keyframe requests come from
//! `GroupMediaPath::handle_datagram` and `handle_timeout` alone.

mod common;

use common::sfu_core::CoreCall;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hush::group_path::{GroupMediaPath, ParticipantVideo, SframeCrypto};
use hush_crypto::group::MemberSlot;
use hush_sfu::roster::Roster;
use hush_sfu::{DeviceId, LegId, Sfu, SfuConfig};

const CALL: [u8; 16] = [0x3c; 16];
const LAYERS: [u32; 3] = [0x6000, 0x6001, 0x6002];
const FRAME_MS: u64 = 33;

const CORE: CoreCall = CoreCall {
    call: CALL,
    key_seed: 40,
    audio_ssrc_base: 0x200,
    layers: LAYERS,
};

fn device(i: usize) -> DeviceId {
    CORE.device(i)
}

/// The encoded frame `n` of `layer`, `size` bytes: the layer and number in front.
fn frame(layer: usize, n: u32, size: usize) -> Vec<u8> {
    let mut f = vec![0x5a; size];
    f[0] = layer as u8;
    f[1..5].copy_from_slice(&n.to_be_bytes());
    f
}

/// The frame number of a received frame.
fn number(v: &ParticipantVideo) -> u32 {
    u32::from_be_bytes(v.frame[1..5].try_into().unwrap())
}

/// A drop-tail bottleneck on one hop: a FIFO drained at `bps`, dropping what would wait
/// longer than `limit`.
struct Bottleneck {
    bps: u64,
    limit: Duration,
    free_at: Instant,
    queue: VecDeque<(Instant, Vec<u8>)>,
    dropped: usize,
}

impl Bottleneck {
    fn new(now: Instant, bps: u64, limit: Duration) -> Self {
        Self {
            bps,
            limit,
            free_at: now,
            queue: VecDeque::new(),
            dropped: 0,
        }
    }

    /// Queues a datagram sent at `now` (IPv4 and UDP headers counted), or drops it.
    fn offer(&mut self, now: Instant, bytes: Vec<u8>) {
        let start = self.free_at.max(now);
        let wire = (bytes.len() + 28) as u64 * 8;
        let done = start + Duration::from_micros(wire * 1_000_000 / self.bps);
        if done.saturating_duration_since(now) > self.limit {
            self.dropped += 1;
        } else {
            self.free_at = done;
            self.queue.push_back((done, bytes));
        }
    }

    /// The datagrams through the bottleneck by `now`, with when each came out.
    fn take_due(&mut self, now: Instant) -> Vec<(Instant, Vec<u8>)> {
        let due = self.queue.iter().take_while(|(t, _)| *t <= now).count();
        self.queue.drain(..due).collect()
    }
}

struct Member {
    leg: LegId,
    path: GroupMediaPath<SframeCrypto>,
    video: Vec<ParticipantVideo>,
    link: Option<Bottleneck>,
    /// Every `n`th datagram of the SFU to this member is lost (not its retransmissions: the
    /// counter runs over all datagrams, and a resend is a datagram of its own).
    lose_every: Option<u64>,
    datagrams: u64,
    lost: u64,
    /// Until then, nothing of the SFU reaches it (its ICE path is not up yet).
    no_path_until: Option<Instant>,
    /// The next video packet to it, and every resend of it, is lost.
    lose_next_video: bool,
    /// Sequence numbers of video packets lost for good.
    black_hole: Vec<u16>,
    /// Every `n`th datagram of this member to the SFU is lost (its resends included).
    uplink_lose_every: Option<u64>,
    uplink_datagrams: u64,
    uplink_lost: u64,
    /// Video packets (not probes) it sent of its top layer while that layer was stopped.
    stopped_top_layer_sent: u64,
    /// A drop-tail bottleneck on its hop to the SFU (what would wait over 300 ms is dropped).
    uplink_link: Option<Bottleneck>,
}

struct Sim {
    sfu: Sfu,
    members: Vec<Option<Member>>,
    roster: Roster,
    now: Instant,
    /// Per-frame encoded sizes of the sender's layers.
    sizes: [usize; 3],
    /// Layers that must send a keyframe next (asked by the SFU).
    key_next: Vec<u32>,
    /// Keyframes the sender sent: (layer, frame number).
    keyframes: Vec<(usize, u32)>,
    frame: u32,
}

impl Sim {
    /// `n` participants on the roster; participant 0 sends a three-layer camera. Those in
    /// `late` join only when [`join`](Self::join) is called.
    fn new(n: usize, late: &[usize], sizes: [usize; 3]) -> Self {
        Self::with_config(
            n,
            late,
            sizes,
            SfuConfig {
                video_last_n: None,
                ..SfuConfig::default()
            },
        )
    }

    fn with_config(n: usize, late: &[usize], sizes: [usize; 3], config: SfuConfig) -> Self {
        let mut rng = rand::rng();
        let sfu = Sfu::new(config, hush_sfu::join::SfuSigningKey::generate(&mut rng)).unwrap();
        let roster = CORE.roster(n);
        let mut sim = Self {
            sfu,
            members: (0..n).map(|_| None).collect(),
            roster,
            now: Instant::now(),
            sizes,
            key_next: LAYERS.to_vec(),
            keyframes: Vec::new(),
            frame: 0,
        };
        for i in (0..n).filter(|i| !late.contains(i)) {
            sim.join(i);
        }
        sim
    }

    fn join(&mut self, i: usize) {
        let (leg, mut path) = CORE.join(&mut self.sfu, self.now, &self.roster, i);
        if i != 0 {
            // The sender's key (over the Signal sessions in a real call).
            let sender = self.members[0].as_mut().expect("sender joined first");
            let message = sender.path.crypto_mut().e2ee().key_message();
            let slot0 = MemberSlot(self.roster.slot(&device(0)).unwrap());
            path.crypto_mut()
                .e2ee_mut()
                .receive_key(slot0, &message, self.now)
                .unwrap();
        }
        while self.sfu.poll_event().is_some() {}
        self.members[i] = Some(Member {
            leg,
            path,
            video: Vec::new(),
            link: None,
            lose_every: None,
            datagrams: 0,
            lost: 0,
            no_path_until: None,
            lose_next_video: false,
            black_hole: Vec::new(),
            uplink_lose_every: None,
            uplink_datagrams: 0,
            uplink_lost: 0,
            stopped_top_layer_sent: 0,
            uplink_link: None,
        });
    }

    fn member(&self, i: usize) -> &Member {
        self.members[i].as_ref().expect("joined")
    }

    fn member_mut(&mut self, i: usize) -> &mut Member {
        self.members[i].as_mut().expect("joined")
    }

    fn leg(&self, i: usize) -> LegId {
        self.member(i).leg
    }

    /// One frame on every layer (a keyframe where the SFU asked for one, and the first), then
    /// 33 ms of time.
    fn send_frame(&mut self) {
        let n = self.frame;
        let sizes = self.sizes;
        let sender = self.members[0].as_mut().expect("sender");
        while let Some(ssrc) = sender.path.poll_keyframe_request() {
            self.key_next.push(ssrc);
        }
        for (l, &ssrc) in LAYERS.iter().enumerate() {
            let key = self.key_next.contains(&ssrc);
            if key {
                self.keyframes.push((l, n));
            }
            sender
                .path
                .send_video(
                    self.now,
                    ssrc,
                    n.wrapping_mul(2970),
                    key,
                    &frame(l, n, sizes[l]),
                )
                .unwrap();
        }
        self.key_next.clear();
        self.frame += 1;
        self.pump();
        for _ in 0..FRAME_MS {
            self.step();
        }
    }

    /// 1 ms: bottleneck deliveries, every path's timers, the SFU's timers.
    fn step(&mut self) {
        self.now += Duration::from_millis(1);
        let now = self.now;
        for m in self.members.iter_mut().flatten() {
            if let Some(link) = &mut m.link {
                for (t, bytes) in link.take_due(now) {
                    let _ = m.path.handle_datagram(t, bytes);
                }
            }
            m.path.handle_timeout(now);
            while let Some(v) = m.path.poll_video() {
                m.video.push(v);
            }
        }
        let mut uplink = Vec::new();
        for m in self.members.iter_mut().flatten() {
            if let Some(link) = &mut m.uplink_link {
                let leg = m.leg;
                uplink.extend(link.take_due(now).into_iter().map(|(t, b)| (t, leg, b)));
            }
        }
        for (t, leg, bytes) in uplink {
            let _ = self.sfu.handle_input(t, leg, &bytes);
        }
        self.sfu.handle_timeout(now);
        self.pump();
    }

    fn pump(&mut self) {
        let now = self.now;
        loop {
            let mut moved = false;
            for m in self.members.iter_mut().flatten() {
                while let Some(d) = m.path.poll_datagram() {
                    moved = true;
                    m.uplink_datagrams += 1;
                    if d[8..12] == LAYERS[2].to_be_bytes()
                        && d[1] & 0x7f != 127
                        && !m.path.layer_sending(2)
                    {
                        m.stopped_top_layer_sent += 1;
                    }
                    if m.uplink_lose_every
                        .is_some_and(|k| m.uplink_datagrams % k == 0)
                    {
                        m.uplink_lost += 1;
                        continue;
                    }
                    if let Some(link) = &mut m.uplink_link {
                        link.offer(now, d);
                        continue;
                    }
                    let _ = self.sfu.handle_input(now, m.leg, &d);
                }
            }
            while let Some(t) = self.sfu.poll_transmit() {
                moved = true;
                let Some(m) = self.members.iter_mut().flatten().find(|m| m.leg == t.leg) else {
                    continue;
                };
                if m.no_path_until.is_some_and(|u| now < u) {
                    continue;
                }
                m.datagrams += 1;
                if t.bytes[8..12] == LAYERS[0].to_be_bytes() {
                    let seq = u16::from_be_bytes([t.bytes[2], t.bytes[3]]);
                    if std::mem::take(&mut m.lose_next_video) {
                        m.black_hole.push(seq);
                    }
                    if m.black_hole.contains(&seq) {
                        m.lost += 1;
                        continue;
                    }
                }
                if m.lose_every.is_some_and(|k| m.datagrams % k == 0) {
                    m.lost += 1;
                    continue;
                }
                match &mut m.link {
                    Some(link) => link.offer(now, t.bytes),
                    None => {
                        let _ = m.path.handle_datagram(now, t.bytes);
                        while let Some(v) = m.path.poll_video() {
                            m.video.push(v);
                        }
                    }
                }
            }
            if !moved {
                break;
            }
        }
    }

    /// The layer of the last frame member `i` got.
    fn last_layer(&self, i: usize) -> Option<u8> {
        self.member(i).video.last().map(|v| v.layer)
    }
}

#[test]
fn a_receiver_on_a_capped_downlink_gets_a_lower_layer_from_its_own_feedback_and_climbs_back() {
    // About 80 kbit/s, 500 kbit/s and 1.3 Mbit/s at 30 frames a second.
    let mut sim = Sim::new(4, &[], [300, 2000, 5500]);
    let capped = sim.leg(2);
    let now = sim.now;
    sim.member_mut(2).link = Some(Bottleneck::new(now, 400_000, Duration::from_secs(1)));
    for _ in 0..240 {
        sim.send_frame();
    }
    let source = LAYERS[0];
    assert_eq!(sim.sfu.forwarded_layer(capped, source), Some(0));
    assert_eq!(sim.last_layer(2), Some(0));
    let bw = sim.sfu.leg_bandwidth(capped).unwrap();
    assert!(
        bw.estimate_bps.is_some_and(|e| e < 400_000),
        "the capped receiver's estimate: {bw:?}"
    );
    for r in [1, 3] {
        let leg = sim.leg(r);
        assert_eq!(
            sim.sfu.forwarded_layer(leg, source),
            Some(2),
            "receiver {r}"
        );
        assert_eq!(sim.sfu.leg_stats(leg).unwrap().layer_switches, 0);
        assert!(sim.member(r).video.iter().all(|v| v.layer == 2));
        let fast = sim.sfu.leg_bandwidth(leg).unwrap();
        assert!(fast.estimate_bps.is_some_and(|e| e > 1_500_000), "{fast:?}");
    }
    for i in 1..4 {
        let s = sim.member(i).path.stats();
        // 8 s of 50 ms feedback, and the SFU used it.
        assert!(s.transport_feedback_sent > 100, "{s:?}");
        assert!(sim.sfu.leg_stats(sim.leg(i)).unwrap().transport_feedback > 100);
        // The SFU's sender reports were answered, so it knows each leg's round trip.
        assert!(s.receiver_reports_sent >= 7, "{s:?}");
        assert!(sim.sfu.leg_bandwidth(sim.leg(i)).unwrap().rtt.is_some());
    }

    // The bottleneck goes away (what is queued still arrives): the SFU probes the leg and
    // moves the receiver back to the top layer.
    sim.member_mut(2).link.as_mut().unwrap().bps = 100_000_000;
    for _ in 0..450 {
        sim.send_frame();
    }
    let stats = sim.sfu.leg_stats(capped).unwrap();
    assert_eq!(
        sim.sfu.forwarded_layer(capped, source),
        Some(2),
        "{:?} {stats:?}",
        sim.sfu.leg_bandwidth(capped)
    );
    assert_eq!(sim.last_layer(2), Some(2));
    assert!(stats.probe_packets > 0);
    assert!(sim.member(2).path.stats().probes_received > 0);
    assert_eq!(sim.member(2).path.stats().srtp_failures, 0);
}

#[test]
fn lost_packets_on_one_downlink_are_recovered_by_nack_without_a_keyframe() {
    let mut sim = Sim::new(3, &[], [300, 2000, 5500]);
    // Warm up: everyone on the top layer.
    for _ in 0..10 {
        sim.send_frame();
    }
    let keyframes_before = sim.keyframes.len();
    let first = sim.frame;
    // One datagram in 9 from the SFU to receiver 2 is lost (media, resends and RTCP alike).
    sim.member_mut(2).lose_every = Some(9);
    for _ in 0..90 {
        sim.send_frame();
    }
    let last = sim.frame - 1;
    // Time for the last recoveries.
    for _ in 0..200 {
        sim.step();
    }
    let m = sim.member(2);
    let s = m.path.stats();
    assert!(m.lost > 50, "{} datagrams lost", m.lost);
    assert!(s.video_nacked > 0 && s.video_packets_recovered > 0, "{s:?}");
    assert_eq!(s.video_frames_incomplete, 0, "{s:?}");
    assert_eq!(s.video_keyframes_requested, 0, "{s:?}");
    // Every frame sent during the loss reached receiver 2, whole, in order, once.
    let got: Vec<u32> = m.video.iter().map(number).filter(|&n| n >= first).collect();
    assert_eq!(got, (first..=last).collect::<Vec<_>>());
    for v in &m.video {
        assert_eq!(
            v.frame,
            frame(
                usize::from(v.layer),
                number(v),
                sim.sizes[usize::from(v.layer)]
            )
        );
    }
    // The sender was asked for no keyframe: none sent after the warm-up's.
    assert_eq!(sim.keyframes.len(), keyframes_before, "{:?}", sim.keyframes);
    let leg = sim.sfu.leg_stats(sim.leg(2)).unwrap();
    assert!(leg.retransmitted > 0, "{leg:?}");
    // The other receiver lost nothing and sent no NACK.
    let other = sim.member(1).path.stats();
    assert_eq!(other.video_nacked, 0);
    assert_eq!(sim.member(1).video.len(), sim.frame as usize);
}

#[test]
fn an_unrecoverable_frame_is_given_up_and_a_keyframe_asked_for() {
    let mut sim = Sim::new(2, &[], [300, 2000, 5500]);
    for _ in 0..10 {
        sim.send_frame();
    }
    let keyframes_before = sim.keyframes.len();
    // One packet to receiver 1 is lost, and every resend of it too.
    sim.member_mut(1).lose_next_video = true;
    for _ in 0..40 {
        sim.send_frame();
    }
    let m = sim.member(1);
    let s = m.path.stats();
    assert_eq!(m.black_hole.len(), 1);
    assert!(s.video_nacked >= 2, "asked more than once: {s:?}");
    // Its frame was given up after the recovery wait, and a keyframe asked for.
    assert_eq!(s.video_frames_incomplete, 1, "{s:?}");
    assert_eq!(s.video_keyframes_requested, 1, "{s:?}");
    let new = &sim.keyframes[keyframes_before..];
    assert_eq!(new.len(), 1, "{:?}", sim.keyframes);
    let (layer, key_at) = new[0];
    assert_eq!(layer, 2);
    // Frames are handed out in order: the ones after the lost frame waited for it, then
    // came out (a decoder refuses those that need the lost one, until the keyframe).
    let got: Vec<u32> = m.video.iter().map(number).collect();
    let missing: Vec<u32> = (0..sim.frame).filter(|n| !got.contains(n)).collect();
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert!(
        missing[0] >= 10 && missing[0] < key_at,
        "{missing:?} {key_at}"
    );
    assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
    // The keyframe came about one recovery wait (400 ms, 12 frames) after the loss.
    assert!(key_at - missing[0] <= 16, "{missing:?} {key_at}");
    assert!(got.contains(&(sim.frame - 1)));
}

#[test]
fn a_late_joiner_gets_a_keyframe_at_once_when_its_path_comes_up() {
    let mut sim = Sim::new(3, &[2], [300, 2000, 5500]);
    for _ in 0..60 {
        sim.send_frame();
    }
    let keyframes_before = sim.keyframes.len();
    // Participant 2 joins; its ICE path to the SFU takes 200 ms, during which the SFU's
    // switch keyframe for it is lost on the way.
    sim.join(2);
    let now = sim.now;
    sim.member_mut(2).no_path_until = Some(now + Duration::from_millis(200));
    let joined_at = sim.frame;
    let mut up_at = None;
    for _ in 0..30 {
        sim.send_frame();
        if up_at.is_none() && sim.member(2).path.stats().packets_received > 0 {
            up_at = Some(sim.frame);
        }
    }
    let up_at = up_at.expect("media reached the late joiner");
    assert!(up_at > joined_at + 3, "the path was down for 200 ms");
    let m = sim.member(2);
    let first = m.video.first().expect("the late joiner decoded video");
    assert!(first.keyframe, "its first frame is a keyframe");
    // The keyframe came within a few frames of the path (a keyframe interval of the sender is
    // 10 s here: only asked keyframes are sent).
    assert!(
        number(first) <= up_at + 3,
        "first frame {} with the path up at frame {up_at}",
        number(first)
    );
    let s = m.path.stats();
    assert_eq!(s.video_keyframes_requested, 1, "{s:?}");
    // What came before the keyframe was dropped, not handed to a decoder.
    assert!(s.video_frames_before_keyframe >= 1, "{s:?}");
    // The sender made one keyframe for the SFU's switch (lost on the way) and one for the
    // joiner's request, on the top layer.
    let new: Vec<(usize, u32)> = sim.keyframes[keyframes_before..].to_vec();
    assert!((1..=2).contains(&new.len()), "{new:?}");
    assert!(new.iter().all(|&(l, _)| l == 2), "{new:?}");
    // From the keyframe on, every frame.
    let got: Vec<u32> = m.video.iter().map(number).collect();
    assert_eq!(got, (number(first)..sim.frame).collect::<Vec<_>>());
}

/// Loss on the sender's uplink (sender → SFU): `lose_every` of its datagrams, for 90 frames.
/// Returns the simulation after the last recoveries, and the first frame sent under loss.
fn uplink_loss(config: SfuConfig, lose_every: u64) -> (Sim, u32, usize) {
    let mut sim = Sim::with_config(3, &[], [300, 2000, 5500], config);
    for _ in 0..10 {
        sim.send_frame();
    }
    let keyframes_before = sim.keyframes.len();
    let first = sim.frame;
    sim.member_mut(0).uplink_lose_every = Some(lose_every);
    for _ in 0..90 {
        sim.send_frame();
    }
    sim.member_mut(0).uplink_lose_every = None;
    for _ in 0..200 {
        sim.step();
    }
    (sim, first, keyframes_before)
}

#[test]
fn lost_packets_on_the_senders_uplink_are_nacked_by_the_sfu_and_resent_without_a_keyframe() {
    let config = SfuConfig {
        video_last_n: None,
        ..SfuConfig::default()
    };
    let (sim, first, keyframes_before) = uplink_loss(config, 9);
    let last = first + 89;
    let sender = sim.member(0);
    assert!(sender.uplink_lost > 50, "{} lost", sender.uplink_lost);
    let s = sender.path.stats();
    assert!(s.video_packets_resent > 0, "{s:?}");
    let leg = sim.sfu.leg_stats(sim.leg(0)).unwrap();
    println!(
        "uplink: {} of {} datagrams lost; SFU NACKed {} sequence numbers, {} arrived after; \
         sender resent {} ({} unserved)",
        sender.uplink_lost,
        sender.uplink_datagrams,
        leg.uplink_nacked,
        leg.uplink_recovered,
        s.video_packets_resent,
        s.video_resends_unserved
    );
    assert!(leg.uplink_nacked > 0 && leg.uplink_recovered > 0, "{leg:?}");
    for r in [1, 2] {
        let m = sim.member(r);
        let s = m.path.stats();
        assert_eq!(s.video_keyframes_requested, 0, "receiver {r}: {s:?}");
        assert_eq!(s.video_frames_incomplete, 0, "receiver {r}: {s:?}");
        // Every frame sent during the loss reached the receiver, whole, in order, once.
        let got: Vec<u32> = m.video.iter().map(number).filter(|&n| n >= first).collect();
        assert_eq!(got, (first..=last).collect::<Vec<_>>(), "receiver {r}");
        for v in &m.video {
            assert_eq!(
                v.frame,
                frame(
                    usize::from(v.layer),
                    number(v),
                    sim.sizes[usize::from(v.layer)]
                )
            );
        }
    }
    // No keyframe was asked for: none sent after the warm-up's.
    assert_eq!(sim.keyframes.len(), keyframes_before, "{:?}", sim.keyframes);
}

#[test]
fn without_uplink_nacks_the_same_uplink_loss_costs_keyframes() {
    let config = SfuConfig {
        video_last_n: None,
        uplink_nack: false,
        ..SfuConfig::default()
    };
    let (sim, _, keyframes_before) = uplink_loss(config, 9);
    assert_eq!(sim.member(0).path.stats().video_packets_resent, 0);
    let requested: u64 = [1, 2]
        .iter()
        .map(|&r| sim.member(r).path.stats().video_keyframes_requested)
        .sum();
    assert!(requested > 0, "no keyframe requested");
    assert!(
        sim.keyframes.len() > keyframes_before,
        "{:?}",
        sim.keyframes
    );
}

#[test]
fn a_layer_stopped_behind_a_congested_uplink_is_not_resent() {
    // The sender's uplink becomes a 1 Mbit/s drop-tail bottleneck (300 ms queue) under its
    // 1.9 Mbit/s of layers: packets are dropped, the SFU NACKs them, the estimate falls and the
    // top layer stops. The SFU goes on NACKing that layer's lost packets for a while; resending
    // them would only add to the queue that made the layer stop (docs/benchmarks.md, "Eighth
    // round": they took the place of the lower layer's keyframe).
    let mut sim = Sim::new(3, &[], [300, 2000, 5500]);
    for _ in 0..10 {
        sim.send_frame();
    }
    let now = sim.now;
    sim.member_mut(0).uplink_link =
        Some(Bottleneck::new(now, 1_000_000, Duration::from_millis(300)));
    let mut stopped = false;
    for _ in 0..150 {
        sim.send_frame();
        stopped |= !sim.member(0).path.layer_sending(2);
    }
    let sender = sim.member(0);
    let s = sender.path.stats();
    assert!(stopped, "the top layer never stopped: {s:?}");
    assert_eq!(sender.stopped_top_layer_sent, 0, "{s:?}");
    assert!(s.video_resends_unserved > 0, "{s:?}");
}

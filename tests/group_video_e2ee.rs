//! Group video end to end through the SFU core: one sender with three simulcast layers, each
//! frame SFrame-sealed and cut into packets with the frame marking element (id 11) the SFU
//! switches layers by; receivers reassemble and open. Real joins, hop SRTP, `GroupMediaPath`
//! with `SframeCrypto` on every participant, the real `hush_sfu::Sfu` between them (sans-IO,
//! deterministic time).

mod common;

use common::sfu_core::CoreCall;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hush::group_path::{GroupMediaPath, ParticipantVideo, SframeCrypto};
use hush_crypto::group::MemberSlot;
use hush_media::rtp::RtpPacket;
use hush_sfu::{
    DeviceId, ForwardRewrite, ForwardTap, LegId, Sfu, SfuConfig, FRAME_MARKING_EXT_ID,
    TRANSPORT_SEQ_EXT_ID,
};

const CALL: [u8; 16] = [0x7e; 16];
const LAYERS: [u32; 3] = [0x5000, 0x5001, 0x5002];
/// Encoded frame sizes per layer: one packet, two packets, five packets.
const SIZES: [usize; 3] = [700, 1900, 5200];
const FRAME_MS: u64 = 33;
/// Every plaintext frame is full of this; the SFU must never see it.
const MARKER: &[u8; 16] = b"PLAINTEXT-FRAME!";

const CORE: CoreCall = CoreCall {
    call: CALL,
    key_seed: 90,
    audio_ssrc_base: 0x100,
    layers: LAYERS,
};

fn device(i: usize) -> DeviceId {
    CORE.device(i)
}

/// The encoded frame `n` of `layer`: the marker pattern, with the layer and number in front.
fn frame(layer: usize, n: u32) -> Vec<u8> {
    let mut f: Vec<u8> = MARKER.iter().copied().cycle().take(SIZES[layer]).collect();
    f[0] = layer as u8;
    f[1..5].copy_from_slice(&n.to_be_bytes());
    f
}

struct Member {
    leg: LegId,
    path: GroupMediaPath<SframeCrypto>,
    video: Vec<ParticipantVideo>,
}

struct Sim {
    sfu: Sfu,
    members: Vec<Member>,
    now: Instant,
    /// Layers that must send a keyframe next (asked by the SFU).
    key_next: Vec<u32>,
    /// (layer, frame number) of every keyframe sent.
    keyframes: HashSet<(u8, u32)>,
    frame: u32,
}

impl Sim {
    fn new(config: SfuConfig, n: usize) -> Self {
        let mut rng = rand::rng();
        let mut sfu = Sfu::new(config, hush_sfu::join::SfuSigningKey::generate(&mut rng)).unwrap();
        let now = Instant::now();
        let roster = CORE.roster(n);
        let mut members = Vec::new();
        for i in 0..n {
            let (leg, path) = CORE.join(&mut sfu, now, &roster, i);
            members.push(Member {
                leg,
                path,
                video: Vec::new(),
            });
        }
        while sfu.poll_event().is_some() {}
        // The sender's key reaches every receiver (over Signal sessions in a real call).
        let message = members[0].path.crypto_mut().e2ee().key_message();
        let slot0 = MemberSlot(roster.slot(&device(0)).unwrap());
        for m in &mut members[1..] {
            m.path
                .crypto_mut()
                .e2ee_mut()
                .receive_key(slot0, &message, now)
                .unwrap();
        }
        Self {
            sfu,
            members,
            now,
            key_next: LAYERS.to_vec(),
            keyframes: HashSet::new(),
            frame: 0,
        }
    }

    /// One frame on every layer (a keyframe where the SFU asked for one, and on the first),
    /// then 33 ms of time.
    fn send_frame(&mut self) {
        while let Some(ssrc) = self.members[0].path.poll_keyframe_request() {
            self.key_next.push(ssrc);
        }
        let n = self.frame;
        for (l, &ssrc) in LAYERS.iter().enumerate() {
            let key = self.key_next.contains(&ssrc);
            if key {
                self.keyframes.insert((l as u8, n));
            }
            self.members[0]
                .path
                .send_video(self.now, ssrc, n.wrapping_mul(2970), key, &frame(l, n))
                .unwrap();
        }
        self.key_next.clear();
        self.frame += 1;
        self.pump();
        for _ in 0..FRAME_MS {
            self.now += Duration::from_millis(1);
            self.sfu.handle_timeout(self.now);
            self.pump();
        }
    }

    fn pump(&mut self) {
        loop {
            let mut moved = false;
            for m in &mut self.members {
                while let Some(d) = m.path.poll_datagram() {
                    moved = true;
                    let _ = self.sfu.handle_input(self.now, m.leg, &d);
                }
            }
            while let Some(t) = self.sfu.poll_transmit() {
                moved = true;
                if let Some(m) = self.members.iter_mut().find(|m| m.leg == t.leg) {
                    let _ = m.path.handle_datagram(self.now, t.bytes);
                    while let Some(v) = m.path.poll_video() {
                        m.video.push(v);
                    }
                }
            }
            if !moved {
                break;
            }
        }
    }
}

/// Checks every frame `m` received against what the sender sealed; returns the layers seen.
fn check_frames(m: &Member) -> Vec<u8> {
    let mut layers = Vec::new();
    for v in &m.video {
        assert_eq!(v.device, device(0));
        assert_eq!(v.ssrc, LAYERS[0]);
        let n = u32::from_be_bytes(v.frame[1..5].try_into().unwrap());
        assert_eq!(v.frame, frame(usize::from(v.layer), n), "frame {n} intact");
        assert_eq!(usize::from(v.frame[0]), usize::from(v.layer));
        layers.push(v.layer);
    }
    layers
}

type Tapped = Arc<Mutex<Vec<Vec<u8>>>>;

fn tapping_config() -> (SfuConfig, Tapped) {
    let tapped: Tapped = Arc::new(Mutex::new(Vec::new()));
    let sink = tapped.clone();
    let config = SfuConfig {
        video_last_n: None,
        tap: Some(ForwardTap(Arc::new(move |p: &[u8]| {
            sink.lock().unwrap().push(p.to_vec());
        }))),
        ..SfuConfig::default()
    };
    (config, tapped)
}

#[test]
fn simulcast_video_is_sframe_ciphertext_to_the_sfu_which_still_switches_layers() {
    let (config, tapped) = tapping_config();
    let mut sim = Sim::new(config, 3);
    for _ in 0..30 {
        sim.send_frame();
    }
    // Receiver 2's tile shrinks to 90 lines: the SFU asks the sender for a layer-0 keyframe
    // (read from the frame marking, the payload being ciphertext) and switches there.
    let leg2 = sim.members[2].leg;
    sim.sfu.request_view(leg2, LAYERS[0], 90).unwrap();
    let before_switch = sim.members[2].video.len();
    for _ in 0..30 {
        sim.send_frame();
    }

    // Receiver 1 got the top layer throughout, every frame intact.
    let layers1 = check_frames(&sim.members[1]);
    assert!(layers1.len() >= 25, "{} frames", layers1.len());
    assert!(layers1.iter().all(|&l| l == 2), "{layers1:?}");
    assert!(sim.members[1].video[0].keyframe);
    // Receiver 2 got the top layer, then layer 0 from a keyframe on.
    let layers2 = check_frames(&sim.members[2]);
    assert!(layers2[..before_switch].iter().all(|&l| l == 2));
    let first_small = layers2
        .iter()
        .position(|&l| l == 0)
        .expect("switched to layer 0");
    assert!(first_small >= before_switch);
    assert!(sim.members[2].video[first_small].keyframe);
    assert!(layers2[first_small..].iter().all(|&l| l == 0));
    assert!(layers2.len() - first_small >= 20, "{layers2:?}");
    assert!(sim.members[0].path.stats().keyframe_requests >= 1);
    for m in &sim.members[1..] {
        let s = m.path.stats();
        assert_eq!(s.e2ee.refused, 0);
        assert_eq!(s.video_marking_mismatch, 0);
        assert_eq!(s.frame_failures, 0);
        assert_eq!(s.video_frames_incomplete, 0);
    }

    // What the SFU saw: ciphertext only, with a frame marking element on every video packet.
    let tapped = tapped.lock().unwrap();
    let video: Vec<RtpPacket> = tapped
        .iter()
        .filter_map(|p| RtpPacket::parse(p).ok())
        .filter(|p| LAYERS.contains(&p.header.ssrc))
        .collect();
    assert!(video.len() > 100, "{} video packets", video.len());
    for p in &video {
        assert!(
            !p.payload
                .windows(8)
                .any(|w| MARKER.windows(8).any(|m| m == w)),
            "plaintext reached the SFU"
        );
        assert!(p.header.extension(FRAME_MARKING_EXT_ID).is_some());
    }
}

#[test]
fn a_malicious_sfu_cannot_change_keyframe_flags_or_frames_unnoticed() {
    // The SFU flips the keyframe bit of every frame marking it forwards, and alters one byte
    // of the payload of every 7th video packet.
    let count = Arc::new(Mutex::new(0u32));
    let config = SfuConfig {
        video_last_n: None,
        rewrite: Some(ForwardRewrite(Arc::new(move |p: &[u8]| {
            let Ok(mut packet) = RtpPacket::parse(p) else {
                return vec![p.to_vec()];
            };
            let Some(&[mark]) = packet.header.extension(FRAME_MARKING_EXT_ID) else {
                return vec![p.to_vec()];
            };
            packet
                .header
                .set_extension(FRAME_MARKING_EXT_ID, vec![mark ^ 0x20]);
            let mut n = count.lock().unwrap();
            *n += 1;
            if (*n).is_multiple_of(7) {
                if let Some(b) = packet.payload.last_mut() {
                    *b ^= 0x01;
                }
            }
            vec![packet.to_vec()]
        }))),
        ..SfuConfig::default()
    };
    let mut sim = Sim::new(config, 2);
    for _ in 0..40 {
        sim.send_frame();
    }
    let m = &sim.members[1];
    let s = m.path.stats();
    // Altered frames are refused and counted; the others open, with the keyframe flag the
    // sender sealed, not the SFU's.
    assert!(s.e2ee.refused >= 3, "{s:?}");
    assert!(s.video_frames_received >= 10, "{s:?}");
    check_frames(m);
    for v in &m.video {
        let n = u32::from_be_bytes(v.frame[1..5].try_into().unwrap());
        assert_eq!(
            v.keyframe,
            sim.keyframes.contains(&(v.layer, n)),
            "frame {n}"
        );
    }
    assert_eq!(s.video_marking_mismatch, s.video_frames_received, "{s:?}");
}

/// The SFrame key id at the start of a frame's first packet (RFC 9605 §4.3), in clear.
fn sframe_kid(payload: &[u8]) -> Option<u64> {
    let config = *payload.first()?;
    let k = u64::from((config >> 4) & 0x07);
    if config & 0x80 == 0 {
        return Some(k);
    }
    let len = usize::try_from(k).ok()? + 1;
    Some(
        payload
            .get(1..1 + len)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
    )
}

/// The length of the SFrame header at the start of `payload` (RFC 9605 §4.3).
fn sframe_header_len(payload: &[u8]) -> usize {
    let config = payload[0];
    let k = usize::from((config >> 4) & 0x07);
    let c = usize::from(config & 0x07);
    let kid = if config & 0x80 != 0 { k + 1 } else { 0 };
    let ctr = if config & 0x08 != 0 { c + 1 } else { 0 };
    1 + kid + ctr
}

/// Exactly what docs (SECURITY.md, "what the SFU sees") say the SFU learns of a video frame:
/// one frame marking element (start, end, keyframe) and the transport-wide sequence number
/// (for the sender's uplink congestion control) and no other header extension from the sender; the frame's size (plaintext + 1 header byte + the SFrame overhead, which depends
/// only on the key id and the frame counter, cut into packets of at most 1100 bytes); and, in
/// the clear SFrame header, the key id naming the sender's slot and key generation. Nothing of
/// the frame itself.
#[test]
fn what_the_sfu_sees_of_a_video_frame() {
    let (config, tapped) = tapping_config();
    let mut sim = Sim::new(config, 2);
    for _ in 0..10 {
        sim.send_frame();
    }
    let tapped = tapped.lock().unwrap();
    let packets: Vec<RtpPacket> = tapped
        .iter()
        .filter_map(|p| RtpPacket::parse(p).ok())
        .filter(|p| LAYERS.contains(&p.header.ssrc))
        .collect();
    // Per layer, group the packets into frames by timestamp.
    let mut overheads = HashSet::new();
    for (l, &ssrc) in LAYERS.iter().enumerate() {
        let mine: Vec<&RtpPacket> = packets.iter().filter(|p| p.header.ssrc == ssrc).collect();
        let mut frames: Vec<Vec<&RtpPacket>> = Vec::new();
        for p in mine {
            match frames.last_mut() {
                Some(f) if f[0].header.timestamp == p.header.timestamp => f.push(p),
                _ => frames.push(vec![p]),
            }
        }
        assert_eq!(frames.len(), 10, "layer {l}");
        for (n, f) in frames.iter().enumerate() {
            let key = sim.keyframes.contains(&(l as u8, n as u32));
            for (i, p) in f.iter().enumerate() {
                let mut ids: Vec<u8> = p.header.extensions.iter().map(|e| e.id).collect();
                ids.sort_unstable();
                assert_eq!(
                    ids,
                    vec![FRAME_MARKING_EXT_ID, TRANSPORT_SEQ_EXT_ID],
                    "only the frame marking and the transport-wide sequence number"
                );
                let mut mark = if key { 0x20 } else { 0 };
                if i == 0 {
                    mark |= 0x80;
                }
                if i + 1 == f.len() {
                    mark |= 0x40;
                }
                assert_eq!(p.header.extension(FRAME_MARKING_EXT_ID), Some(&[mark][..]));
                assert_eq!(p.header.marker, i + 1 == f.len());
                assert!(p.payload.len() <= hush::group_path::VIDEO_PAYLOAD_MAX);
            }
            // Size: the plaintext, 1 header byte, the SFrame header (config byte, key id,
            // counter) and the 16-byte tag; nothing else.
            let total: usize = f.iter().map(|p| p.payload.len()).sum();
            assert_eq!(total, SIZES[l] + 1 + sframe_header_len(&f[0].payload) + 16);
            overheads.insert(total - SIZES[l]);
            let kid = sframe_kid(&f[0].payload).expect("sframe header");
            let id = hush_crypto::group::GroupKeyId::from_kid(kid).unwrap();
            assert_eq!(id.sender, MemberSlot(0), "the sender's slot is visible");
            assert_eq!(id.generation, 0);
        }
    }
    // The overhead varies only with the length of the counter (short for the first frames).
    assert!(
        overheads.iter().all(|o| (18..=19).contains(o)),
        "{overheads:?}"
    );
}

/// A lost packet costs only the frame it belonged to (counted), and an SFU that forwards
/// garbage under valid hop keys (random payloads, frame markings, lengths) gets it refused or
/// dropped, never a panic, and the genuine frames around it still open.
#[test]
fn lost_and_garbage_video_packets_cost_only_their_frames() {
    let count = Arc::new(Mutex::new(0u32));
    let config = SfuConfig {
        video_last_n: None,
        rewrite: Some(ForwardRewrite(Arc::new(move |p: &[u8]| {
            let Ok(packet) = RtpPacket::parse(p) else {
                return vec![p.to_vec()];
            };
            if packet.header.ssrc != LAYERS[2] {
                return vec![p.to_vec()];
            }
            let mut n = count.lock().unwrap();
            *n += 1;
            match *n {
                // The second packet of frame 2 (five packets a frame) is lost.
                12 => vec![],
                // From frame 6 on, every other frame's packets are replaced by garbage.
                k if k > 30 && (k - 1) / 5 % 2 == 1 => {
                    let mut g = packet.clone();
                    let len = rand::random_range(0..1200);
                    g.payload = (0..len).map(|_| rand::random()).collect();
                    g.header
                        .set_extension(FRAME_MARKING_EXT_ID, vec![rand::random::<u8>() & 0xe0]);
                    vec![g.to_vec()]
                }
                _ => vec![p.to_vec()],
            }
        }))),
        ..SfuConfig::default()
    };
    let mut sim = Sim::new(config, 2);
    for _ in 0..30 {
        sim.send_frame();
    }
    let m = &sim.members[1];
    let s = m.path.stats();
    let numbers: Vec<u32> = m
        .video
        .iter()
        .map(|v| u32::from_be_bytes(v.frame[1..5].try_into().unwrap()))
        .collect();
    check_frames(m);
    assert!(
        !numbers.contains(&2),
        "the frame with the lost packet is not shown"
    );
    assert!(numbers.contains(&1) && numbers.contains(&3), "{numbers:?}");
    assert!(s.video_frames_incomplete >= 1, "{s:?}");
    // Genuine frames after the garbage started still open.
    assert!(
        numbers.iter().filter(|&&n| n >= 6).count() >= 8,
        "{numbers:?}"
    );
}

mod reordering {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// An SFU that holds back, reorders, duplicates and drops video packets at random:
        /// whatever arrives, every frame a receiver hands out is one the sender sealed, intact
        /// and whole, never twice; nothing panics.
        #[test]
        fn reordered_duplicated_or_dropped_packets_never_yield_a_wrong_frame(seed: u64) {
            let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(seed)));
            let held: Arc<Mutex<Vec<Vec<u8>>>> = Arc::new(Mutex::new(Vec::new()));
            let config = SfuConfig {
                video_last_n: None,
                rewrite: Some(ForwardRewrite(Arc::new(move |p: &[u8]| {
                    let mut rng = rng.lock().unwrap();
                    let mut held = held.lock().unwrap();
                    held.push(p.to_vec());
                    let mut out = Vec::new();
                    while !held.is_empty() && rng.random_bool(0.6) {
                        let i = rng.random_range(0..held.len());
                        let q = if rng.random_bool(0.1) {
                            held[i].clone()
                        } else {
                            held.swap_remove(i)
                        };
                        if !rng.random_bool(0.05) {
                            out.push(q);
                        }
                    }
                    out
                }))),
                ..SfuConfig::default()
            };
            let mut sim = Sim::new(config, 2);
            for _ in 0..20 {
                sim.send_frame();
            }
            let m = &sim.members[1];
            check_frames(m);
            let mut seen = HashSet::new();
            for v in &m.video {
                let n = u32::from_be_bytes(v.frame[1..5].try_into().unwrap());
                prop_assert!(seen.insert((v.layer, n)), "frame {} of layer {} handed out twice", n, v.layer);
            }
        }
    }
}

//! Simulcast through the SFU core: one sender with three layers, receivers with their own view
//! requests (and, further down, their own links). Real joins and hop SRTP on both sides, RTP
//! and RTCP written by hush-media, deterministic time.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use hush_media::cc::TwccRecorder;
use hush_media::rtcp::{self, Nack, Pli, RtcpPacket};
use hush_media::rtp::RtpPacket;
use hush_sfu::join::{JoinAnswer, JoinParams, PendingJoin, StreamDecl};
use hush_sfu::roster::Roster;
use hush_sfu::{
    CallId, DeviceId, Error, LegId, Sfu, SfuConfig, FRAME_MARKING_EXT_ID, TRANSPORT_SEQ_EXT_ID,
};
use hush_srtp::{SrtpConfig, SrtpContext, Suite};
use rand::rngs::StdRng;
use rand::SeedableRng;

const CALL: CallId = CallId::from_bytes([0x5c; 16]);
const T0_MS: u64 = 1_780_000_000_000;
/// Layer SSRCs of the sender's camera; layer 0's is the source SSRC receivers see.
const LAYERS: [u32; 3] = [0x3000, 0x3001, 0x3002];
const HEIGHTS: [u16; 3] = [90, 180, 360];
const SOURCE: u32 = LAYERS[0];
/// Frame marking: start of a keyframe / start of a delta frame / continuation.
const KEY_START: u8 = 0x80 | 0x20;
const DELTA_START: u8 = 0x80;
const FRAME_MS: u64 = 33;

fn key(i: usize) -> SigningKey {
    SigningKey::from_bytes(&[i as u8 + 40; 32])
}

fn device(i: usize) -> DeviceId {
    DeviceId::from_signing_key(&key(i))
}

struct Client {
    leg: LegId,
    send: SrtpContext,
    recv: SrtpContext,
    /// Next sequence number per layer (sender).
    seq: [u16; 3],
    /// Received RTP: SSRC → (sequence number, timestamp, payload) in arrival order.
    rtp: HashMap<u32, Vec<(u16, u32, Vec<u8>)>>,
    rtcp: Vec<RtcpPacket>,
    bad: usize,
    /// Arrivals of the SFU's transport-wide sequence numbers, for feedback.
    twcc: TwccRecorder,
}

/// A bottleneck in front of one receiver: a FIFO drained at `bps`, dropping what would wait
/// longer than 1 s.
struct Link {
    bps: u64,
    free_at: Instant,
    queue: VecDeque<(Instant, Vec<u8>)>,
    dropped: usize,
}

struct Sim {
    sfu: Sfu,
    clients: HashMap<usize, Client>,
    now: Instant,
    unix_ms: u64,
    rng: StdRng,
    frame: u32,
    /// Deliveries to drop: (recipient leg, sequence number), to simulate loss.
    drop: Vec<(LegId, u16)>,
    links: HashMap<LegId, Link>,
    /// Next sequence number of everyone's audio.
    audio_seq: u16,
    /// Receivers send transport-wide feedback every 100 ms when set.
    feedback: bool,
    next_feedback: Instant,
}

impl Sim {
    fn new(config: SfuConfig, n: usize) -> Self {
        let mut rng = StdRng::seed_from_u64(15);
        let sfu_key = hush_sfu::join::SfuSigningKey::generate(&mut rng);
        let mut sim = Self {
            sfu: Sfu::new(config, sfu_key).unwrap(),
            clients: HashMap::new(),
            now: Instant::now(),
            unix_ms: T0_MS,
            rng,
            frame: 0,
            drop: Vec::new(),
            links: HashMap::new(),
            audio_seq: 0,
            feedback: false,
            next_feedback: Instant::now(),
        };
        let members: Vec<DeviceId> = (0..n).map(device).collect();
        let roster = Roster::sign(&key(0), CALL, 1, &members).unwrap();
        for i in 0..n {
            let r = (i == 0).then(|| roster.encode());
            sim.join(i, r.as_deref());
        }
        sim
    }

    fn join(&mut self, i: usize, roster: Option<&[u8]>) {
        // Participant 0 sends the simulcast camera; everyone declares an audio stream (their
        // RTCP goes out under it).
        let mut streams = vec![StreamDecl::audio(0x1000 + i as u32)];
        if i == 0 {
            streams.extend(StreamDecl::simulcast(
                0,
                LAYERS
                    .iter()
                    .zip(&HEIGHTS)
                    .map(|(&s, &h)| (s, h / 9 * 16, h)),
            ));
        }
        let params = JoinParams {
            call_id: CALL,
            suite: Suite::AeadAes128Gcm,
            audio_level_ext: Some(1),
            streams,
        };
        let (pending, request) =
            PendingJoin::new(&key(i), &params, self.unix_ms, &mut self.rng).unwrap();
        let joined = self
            .sfu
            .handle_join(
                self.now,
                self.unix_ms,
                &request.encode(),
                roster,
                &mut self.rng,
            )
            .unwrap();
        let answer = JoinAnswer::decode(&joined.answer).unwrap();
        let keys = pending.finish(&self.sfu.public_key(), &answer).unwrap();
        let cfg = SrtpConfig::builder().max_ssrcs(64).build().unwrap();
        self.clients.insert(
            i,
            Client {
                leg: joined.leg,
                send: keys.send_context(cfg.clone()).unwrap(),
                recv: keys.recv_context(cfg).unwrap(),
                seq: [100, 20_000, 65_500],
                rtp: HashMap::new(),
                rtcp: Vec::new(),
                bad: 0,
                twcc: TwccRecorder::default(),
            },
        );
        while self.sfu.poll_event().is_some() {}
    }

    fn leg(&self, i: usize) -> LegId {
        self.clients[&i].leg
    }

    /// One packet of `layer` from participant 0 with frame marking `mark` (`None`: no
    /// element); the payload names the layer and its own sequence number.
    fn layer_packet(&mut self, layer: usize, mark: Option<u8>, size: usize) -> Vec<u8> {
        self.try_layer_packet(layer, mark, size)
            .expect("sender protects")
    }

    /// [`layer_packet`](Self::layer_packet), `None` when the sender's SRTP refuses the index
    /// (a sequence number it used already).
    fn try_layer_packet(&mut self, layer: usize, mark: Option<u8>, size: usize) -> Option<Vec<u8>> {
        let frame = self.frame;
        let c = self.clients.get_mut(&0).unwrap();
        let seq = c.seq[layer];
        c.seq[layer] = seq.wrapping_add(1);
        let mut p = RtpPacket::default();
        p.header.payload_type = 96;
        p.header.ssrc = LAYERS[layer];
        p.header.sequence_number = seq;
        // Each layer with its own random-looking timestamp base, as real senders have.
        p.header.timestamp = (layer as u32 * 0x1234_5678).wrapping_add(frame * 2970);
        if let Some(m) = mark {
            p.header.set_extension(FRAME_MARKING_EXT_ID, vec![m]);
        }
        let mut body = vec![0xaa; size.max(3)];
        body[0] = layer as u8;
        body[1..3].copy_from_slice(&seq.to_be_bytes());
        p.payload = body;
        let mut bytes = p.to_vec();
        c.send.protect_rtp(&mut bytes).ok()?;
        Some(bytes)
    }

    /// One frame of every layer (one packet each), keyframes on the layers in `key_on`.
    fn frame(&mut self, key_on: &[usize]) {
        for layer in 0..3 {
            let mark = if key_on.contains(&layer) {
                KEY_START
            } else {
                DELTA_START
            };
            let size = [150, 400, 1100][layer];
            let p = self.layer_packet(layer, Some(mark), size);
            self.input(0, &p);
        }
        self.frame += 1;
        self.advance(Duration::from_millis(FRAME_MS));
    }

    fn rtcp(&mut self, i: usize, packets: &[RtcpPacket]) {
        let mut bytes = rtcp::write_compound(packets);
        self.clients
            .get_mut(&i)
            .unwrap()
            .send
            .protect_rtcp(&mut bytes)
            .unwrap();
        self.input(i, &bytes);
    }

    fn input(&mut self, i: usize, bytes: &[u8]) {
        let leg = self.leg(i);
        self.sfu.handle_input(self.now, leg, bytes).unwrap();
        self.pump();
    }

    fn pump(&mut self) {
        while let Some(t) = self.sfu.poll_transmit() {
            let now = self.now;
            match self.links.get_mut(&t.leg) {
                Some(link) => {
                    let start = link.free_at.max(now);
                    let wire = (t.bytes.len() + 28) as u64 * 8;
                    let done = start + Duration::from_micros(wire * 1_000_000 / link.bps);
                    if done.saturating_duration_since(now) > Duration::from_millis(1000) {
                        link.dropped += 1;
                        continue;
                    }
                    link.free_at = done;
                    link.queue.push_back((done, t.bytes));
                }
                None => self.deliver(t.leg, t.bytes, now),
            }
        }
    }

    fn deliver(&mut self, leg: LegId, mut bytes: Vec<u8>, at: Instant) {
        let Some(c) = self.clients.values_mut().find(|c| c.leg == leg) else {
            return;
        };
        if bytes.get(1).is_some_and(|b| (192..=223).contains(b)) {
            match c.recv.unprotect_rtcp(&mut bytes) {
                Ok(()) => c
                    .rtcp
                    .extend(rtcp::parse_compound(&bytes).unwrap_or_default()),
                Err(_) => c.bad += 1,
            }
            return;
        }
        let seq = u16::from_be_bytes([bytes[2], bytes[3]]);
        if let Some(i) = self.drop.iter().position(|d| *d == (leg, seq)) {
            self.drop.remove(i);
            return;
        }
        match c.recv.unprotect_rtp(&mut bytes) {
            Ok(()) => {
                let p = RtpPacket::parse(&bytes).unwrap();
                if let Some(tseq) = p.header.transport_seq(TRANSPORT_SEQ_EXT_ID) {
                    c.twcc.record(at, tseq);
                }
                c.rtp.entry(p.header.ssrc).or_default().push((
                    p.header.sequence_number,
                    p.header.timestamp,
                    p.payload,
                ));
            }
            Err(_) => c.bad += 1,
        }
    }

    /// Moves time on in 1 ms steps: link deliveries, receivers' feedback, SFU timers.
    fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        while self.now < until {
            self.now = (self.now + Duration::from_millis(1)).min(until);
            let now = self.now;
            let mut due = Vec::new();
            for (&leg, link) in &mut self.links {
                while link.queue.front().is_some_and(|(t, _)| *t <= now) {
                    if let Some((t, b)) = link.queue.pop_front() {
                        due.push((t, leg, b));
                    }
                }
            }
            due.sort_by_key(|(t, _, _)| *t);
            for (t, leg, b) in due {
                self.deliver(leg, b, t);
            }
            if self.feedback && now >= self.next_feedback {
                self.next_feedback = now + Duration::from_millis(100);
                let mut ids: Vec<usize> = self.clients.keys().copied().collect();
                ids.sort_unstable();
                for i in ids {
                    let fb = self
                        .clients
                        .get_mut(&i)
                        .unwrap()
                        .twcc
                        .build(0x1000 + i as u32, 0);
                    if let Some(fb) = fb {
                        self.rtcp(i, &[RtcpPacket::TransportFeedback(fb)]);
                    }
                }
            }
            self.sfu.handle_timeout(now);
            self.pump();
        }
        self.unix_ms += by.as_millis() as u64;
    }

    /// The layer of each packet receiver `i` got of the source, in order.
    fn layers_received(&self, i: usize) -> Vec<u8> {
        self.clients[&i]
            .rtp
            .get(&SOURCE)
            .map_or_else(Vec::new, |v| v.iter().map(|(_, _, b)| b[0]).collect())
    }

    /// PLIs participant 0 got, by media SSRC; drained.
    fn plis_to_sender(&mut self) -> Vec<u32> {
        let c = self.clients.get_mut(&0).unwrap();
        let plis = c
            .rtcp
            .iter()
            .filter_map(|p| match p {
                RtcpPacket::Pli(p) => Some(p.media_ssrc),
                _ => None,
            })
            .collect();
        c.rtcp.clear();
        plis
    }
}

/// Checks that receiver `i` got one continuous stream: consecutive sequence numbers, no
/// other SSRC of the source, timestamps never going back.
fn assert_continuous(sim: &Sim, i: usize) {
    assert_continuous_within(sim, i, 100 * 90);
}

/// [`assert_continuous`] with timestamp steps of up to `max_step` (a pause of the source).
fn assert_continuous_within(sim: &Sim, i: usize, max_step: u32) {
    let c = &sim.clients[&i];
    assert_eq!(c.bad, 0);
    for &l in &LAYERS[1..] {
        assert!(
            !c.rtp.contains_key(&l),
            "receiver {i} saw layer SSRC {l:#x}"
        );
    }
    let got = &c.rtp[&SOURCE];
    for w in got.windows(2) {
        assert_eq!(
            w[1].0,
            w[0].0.wrapping_add(1),
            "sequence gap at receiver {i}"
        );
        let dt = w[1].1.wrapping_sub(w[0].1);
        assert!(
            (0..=max_step).contains(&dt),
            "timestamp step {dt} at receiver {i}"
        );
    }
}

#[test]
fn receivers_get_the_top_layer_from_its_first_keyframe_as_one_stream() {
    let mut sim = Sim::new(SfuConfig::default(), 3);
    // No keyframe yet: nothing is forwarded, and the SFU asks for one of the top layer only
    // (the layers that have not sent yet count as there while the source starts).
    sim.frame(&[]);
    assert!(sim.layers_received(1).is_empty());
    assert_eq!(sim.plis_to_sender(), vec![LAYERS[2]]);
    sim.advance(Duration::from_millis(300));
    sim.frame(&[]);
    assert_eq!(sim.plis_to_sender(), vec![LAYERS[2]]);
    sim.frame(&[2]);
    for _ in 0..10 {
        sim.frame(&[]);
    }
    for r in [1, 2] {
        assert_eq!(sim.layers_received(r), vec![2; 11]);
        assert_continuous(&sim, r);
        assert_eq!(sim.sfu.forwarded_layer(sim.leg(r), SOURCE), Some(2));
    }
    // The sender gets nothing of its own.
    assert!(sim.clients[&0].rtp.is_empty());
    assert_eq!(sim.sfu.leg_stats(sim.leg(1)).unwrap().layer_switches, 0);
}

#[test]
fn a_smaller_view_switches_one_receiver_at_the_next_keyframe_without_a_gap() {
    let mut sim = Sim::new(SfuConfig::default(), 3);
    sim.frame(&[2]);
    for _ in 0..5 {
        sim.frame(&[]);
    }
    sim.plis_to_sender();
    let leg1 = sim.leg(1);
    sim.sfu.request_view(leg1, SOURCE, 180).unwrap();
    // Until layer 1 has a keyframe, receiver 1 keeps layer 2, and the SFU asks for one
    // (once per PLI interval, not once per packet).
    for _ in 0..5 {
        sim.frame(&[]);
    }
    assert_eq!(sim.plis_to_sender(), vec![LAYERS[1]]);
    assert_eq!(sim.layers_received(1), vec![2; 11]);
    sim.frame(&[1]);
    for _ in 0..5 {
        sim.frame(&[]);
    }
    let mut want = vec![2u8; 11];
    want.extend([1; 6]);
    assert_eq!(sim.layers_received(1), want);
    assert_continuous(&sim, 1);
    // Receiver 2 never moved.
    assert_eq!(sim.layers_received(2), vec![2; 17]);
    assert_eq!(sim.sfu.forwarded_layer(leg1, SOURCE), Some(1));
    assert_eq!(sim.sfu.leg_stats(leg1).unwrap().layer_switches, 1);
    assert_eq!(sim.sfu.leg_stats(sim.leg(2)).unwrap().layer_switches, 0);

    // A view of 0 stops the source for that receiver only.
    sim.sfu.request_view(leg1, SOURCE, 0).unwrap();
    sim.frame(&[0, 1, 2]);
    assert_eq!(sim.layers_received(1).len(), 17);
    assert_eq!(sim.layers_received(2).len(), 18);
    // Asking for an SSRC that is no simulcast source is refused.
    assert!(matches!(
        sim.sfu.request_view(leg1, LAYERS[1], 90),
        Err(Error::UnknownSource(s)) if s == LAYERS[1]
    ));
    assert!(matches!(
        sim.sfu.request_view(leg1, 0x1001, 90),
        Err(Error::UnknownSource(_))
    ));
}

#[test]
fn pli_and_nack_from_a_receiver_refer_to_the_stream_it_sees() {
    let mut sim = Sim::new(SfuConfig::default(), 3);
    let leg1 = sim.leg(1);
    sim.sfu.request_view(leg1, SOURCE, 90).unwrap();
    sim.frame(&[0, 2]);
    for _ in 0..3 {
        sim.frame(&[]);
    }
    // The next packet to receiver 1 is lost on the way.
    let lost = sim.clients[&1].rtp[&SOURCE]
        .last()
        .unwrap()
        .0
        .wrapping_add(1);
    sim.drop.push((leg1, lost));
    for _ in 0..9 {
        sim.frame(&[]);
    }
    sim.plis_to_sender();
    // Receiver 1 (on layer 0) asks for a keyframe of the source: the sender is asked for
    // layer 0's.
    sim.rtcp(
        1,
        &[RtcpPacket::Pli(Pli {
            sender_ssrc: 0x1001,
            media_ssrc: SOURCE,
        })],
    );
    assert_eq!(sim.plis_to_sender(), vec![LAYERS[0]]);
    // Receiver 2 (on layer 2) likewise gets layer 2's.
    sim.rtcp(
        2,
        &[RtcpPacket::Pli(Pli {
            sender_ssrc: 0x1002,
            media_ssrc: SOURCE,
        })],
    );
    assert_eq!(sim.plis_to_sender(), vec![LAYERS[2]]);
    // The loss shows as one missing sequence number of the source stream; a NACK for it is
    // answered with the packet sent under it (layer 0's).
    let got: Vec<u16> = sim.clients[&1].rtp[&SOURCE].iter().map(|p| p.0).collect();
    assert!(!got.contains(&lost));
    assert_eq!(got.len(), 12);
    sim.rtcp(
        1,
        &[RtcpPacket::Nack(Nack {
            sender_ssrc: 0x1001,
            media_ssrc: SOURCE,
            lost: vec![lost],
        })],
    );
    let (seq, _, body) = sim.clients[&1].rtp[&SOURCE].last().unwrap().clone();
    assert_eq!(seq, lost);
    assert_eq!(body[0], 0, "layer 0");
    assert_eq!(sim.sfu.leg_stats(leg1).unwrap().retransmitted, 1);
    assert_eq!(sim.clients[&1].bad, 0);
}

#[test]
fn a_keyframe_lifts_the_pli_throttle_of_its_layer() {
    let mut sim = Sim::new(SfuConfig::default(), 3);
    sim.frame(&[0, 1, 2]);
    for _ in 0..3 {
        sim.frame(&[]);
    }
    sim.plis_to_sender();
    let pli = |sim: &mut Sim, i: usize| {
        sim.rtcp(
            i,
            &[RtcpPacket::Pli(Pli {
                sender_ssrc: 0x1000 + i as u32,
                media_ssrc: SOURCE,
            })],
        );
    };
    // Two receivers (both on layer 2) ask within 300 ms: one PLI reaches the sender.
    pli(&mut sim, 1);
    pli(&mut sim, 2);
    assert_eq!(sim.plis_to_sender(), vec![LAYERS[2]]);
    // The sender answers with a keyframe; receiver 2 missed it (its path was not up, say) and
    // asks again 66 ms later: relayed at once, not 300 ms on.
    sim.frame(&[2]);
    sim.frame(&[]);
    pli(&mut sim, 2);
    assert_eq!(sim.plis_to_sender(), vec![LAYERS[2]]);
    // Without a keyframe in between, the throttle holds.
    sim.frame(&[]);
    pli(&mut sim, 1);
    assert_eq!(sim.plis_to_sender(), Vec::<u32>::new());
}

#[test]
fn a_source_that_leaves_and_rejoins_continues_its_output_stream() {
    let mut sim = Sim::new(SfuConfig::default(), 2);
    sim.frame(&[2]);
    for _ in 0..3 {
        sim.frame(&[]);
    }
    // The sender rejoins (a reconnect) and restarts its sequence numbers.
    sim.join(0, None);
    sim.clients.get_mut(&0).unwrap().seq = [7, 7, 7];
    sim.frame(&[]);
    sim.frame(&[2]);
    sim.frame(&[]);
    assert_eq!(sim.layers_received(1), vec![2; 6]);
    assert_continuous(&sim, 1);
    assert_eq!(sim.sfu.leg_stats(sim.leg(1)).unwrap().send_errors, 0);
}

/// One frame of a realistic ladder (≈ 85 kbit/s, 500 kbit/s and 1.4 Mbit/s at 30 fps), with a
/// keyframe on every layer the SFU asked for since the last frame, as a real sender does.
fn ladder_frame(sim: &mut Sim) {
    let mut keys: Vec<usize> = sim
        .plis_to_sender()
        .into_iter()
        .filter_map(|ssrc| LAYERS.iter().position(|&l| l == ssrc))
        .collect();
    keys.dedup();
    for (layer, (&count, &size)) in [1usize, 2, 5]
        .iter()
        .zip(&[300usize, 1000, 1100])
        .enumerate()
    {
        for k in 0..count {
            let mark = match (k, keys.contains(&layer)) {
                (0, true) => KEY_START,
                (0, false) => DELTA_START,
                _ => 0,
            };
            let p = sim.layer_packet(layer, Some(mark), size);
            sim.input(0, &p);
        }
    }
    sim.frame += 1;
    sim.advance(Duration::from_millis(FRAME_MS));
}

#[test]
fn a_receiver_on_a_capped_link_gets_the_low_layer_while_the_others_keep_the_high_one() {
    let mut sim = Sim::new(SfuConfig::default(), 4);
    sim.feedback = true;
    let capped = sim.leg(2);
    sim.links.insert(
        capped,
        Link {
            bps: 400_000,
            free_at: sim.now,
            queue: VecDeque::new(),
            dropped: 0,
        },
    );
    for _ in 0..240 {
        ladder_frame(&mut sim);
    }
    assert_eq!(sim.sfu.forwarded_layer(capped, SOURCE), Some(0));
    for r in [1, 3] {
        let leg = sim.leg(r);
        assert_eq!(
            sim.sfu.forwarded_layer(leg, SOURCE),
            Some(2),
            "receiver {r}"
        );
        assert_eq!(sim.sfu.leg_stats(leg).unwrap().layer_switches, 0);
        assert_continuous(&sim, r);
        assert!(sim.sfu.leg_stats(leg).unwrap().transport_feedback > 50);
    }
    let stats = sim.sfu.leg_stats(capped).unwrap();
    assert!(stats.layer_switches >= 1);
    assert!(stats.transport_feedback > 50);
    let bw = sim.sfu.leg_bandwidth(capped).unwrap();
    assert!(bw.estimate_bps.unwrap() < 400_000, "{bw:?}");
    let fast = sim.sfu.leg_bandwidth(sim.leg(1)).unwrap();
    assert!(fast.estimate_bps.unwrap() > 1_500_000, "{fast:?}");
    // What the capped receiver got at the end is layer 0, and its link is no longer
    // overflowing: the last two seconds lost nothing.
    let got = sim.layers_received(2);
    assert!(got[got.len() - 60..].iter().all(|&l| l == 0), "{got:?}");
    let dropped = sim.links[&capped].dropped;
    for _ in 0..60 {
        ladder_frame(&mut sim);
    }
    assert_eq!(sim.links[&capped].dropped, dropped);
    assert_eq!(sim.sfu.forwarded_layer(capped, SOURCE), Some(0));
}

#[test]
fn rtt_comes_from_receiver_reports_on_the_sfus_sender_reports() {
    use hush_media::rtcp::{ReceiverReport, ReportBlock};
    let rtcp_ssrc = SfuConfig::default().rtcp_ssrc;
    let mut sim = Sim::new(SfuConfig::default(), 2);
    sim.frame(&[2]);
    let leg1 = sim.leg(1);
    assert_eq!(sim.sfu.leg_bandwidth(leg1).unwrap().rtt, None);
    // Wait for the next sender report to receiver 1, noting when it arrived.
    sim.clients.get_mut(&1).unwrap().rtcp.clear();
    let sr = loop {
        sim.advance(Duration::from_millis(1));
        let got = sim.clients[&1].rtcp.iter().find_map(|p| match p {
            RtcpPacket::SenderReport(sr) => Some(sr.clone()),
            _ => None,
        });
        if let Some(sr) = got {
            break sr;
        }
    };
    assert_eq!(sr.ssrc, rtcp_ssrc);
    // It answers 70 ms later, having held the report 20 ms itself: the round trip is 50 ms.
    sim.advance(Duration::from_millis(70));
    let lsr = (sr.ntp_time >> 16) as u32;
    let report = |last_sr: u32, ssrc: u32| {
        RtcpPacket::ReceiverReport(ReceiverReport {
            ssrc: 0x1001,
            reports: vec![ReportBlock {
                ssrc,
                last_sr,
                delay_since_last_sr: 20 * 65_536 / 1000,
                ..ReportBlock::default()
            }],
        })
    };
    sim.rtcp(1, &[report(lsr, rtcp_ssrc)]);
    let rtt = sim.sfu.leg_bandwidth(leg1).unwrap().rtt.expect("rtt");
    assert!(
        rtt.abs_diff(Duration::from_millis(50)) < Duration::from_micros(100),
        "{rtt:?}"
    );
    // A block about another SSRC, or without a last SR, changes nothing.
    sim.rtcp(1, &[report(lsr.wrapping_sub(65_536), 0x3000)]);
    sim.rtcp(1, &[report(0, rtcp_ssrc)]);
    assert_eq!(sim.sfu.leg_bandwidth(leg1).unwrap().rtt, Some(rtt));
}

#[test]
fn a_receiver_whose_link_recovers_is_probed_back_up_to_the_high_layer() {
    let mut sim = Sim::new(SfuConfig::default(), 3);
    sim.feedback = true;
    let slow = sim.leg(2);
    sim.links.insert(
        slow,
        Link {
            bps: 400_000,
            free_at: sim.now,
            queue: VecDeque::new(),
            dropped: 0,
        },
    );
    for _ in 0..240 {
        ladder_frame(&mut sim);
    }
    assert_eq!(sim.sfu.forwarded_layer(slow, SOURCE), Some(0));
    // The bottleneck goes away (what is queued still arrives).
    sim.links.get_mut(&slow).unwrap().bps = 100_000_000;
    for _ in 0..450 {
        ladder_frame(&mut sim);
    }
    let stats = sim.sfu.leg_stats(slow).unwrap();
    let bw = sim.sfu.leg_bandwidth(slow).unwrap();
    assert_eq!(
        sim.sfu.forwarded_layer(slow, SOURCE),
        Some(2),
        "{bw:?} {stats:?}"
    );
    assert!(stats.probe_packets > 0);
    assert_eq!(sim.sfu.forwarded_layer(sim.leg(1), SOURCE), Some(2));
    assert_eq!(sim.clients[&2].bad, 0);
}

impl Sim {
    /// 1.5 s of audio from everyone, `talker` at a speaking level and the others silent, with
    /// video frames of every layer alongside.
    fn talk(&mut self, talker: usize, n: usize) {
        use hush_media::rtp::AudioLevel;
        for k in 0..75u16 {
            let seq = self.audio_seq;
            self.audio_seq = seq.wrapping_add(1);
            for i in 0..n {
                let c = self.clients.get_mut(&i).unwrap();
                let mut p = RtpPacket::default();
                p.header.payload_type = 111;
                p.header.ssrc = 0x1000 + i as u32;
                p.header.sequence_number = seq;
                p.header.timestamp = u32::from(seq) * 960;
                let level = if i == talker { 20 } else { 127 };
                p.header
                    .set_audio_level(1, AudioLevel { voice: true, level });
                p.payload = vec![1; 40];
                let mut bytes = p.to_vec();
                c.send.protect_rtp(&mut bytes).unwrap();
                self.input(i, &bytes);
            }
            if k % 2 == 0 {
                self.frame(&[]);
            } else {
                self.advance(Duration::from_millis(20));
            }
        }
    }
}

#[test]
fn a_simulcast_source_out_of_a_receivers_last_n_is_paused_and_resumes_at_a_keyframe() {
    let config = SfuConfig {
        video_last_n: Some(1),
        ..SfuConfig::default()
    };
    let mut sim = Sim::new(config, 3);
    sim.frame(&[2]);
    let leg1 = sim.leg(1);
    assert_eq!(sim.layers_received(1).len(), 1);
    // Participant 1 talks: for receiver 2 the last-1 is now 1 (who sends no video), so the
    // camera of 0 stops there; receiver 1 still has 0 as its last-1.
    sim.talk(1, 3);
    let at1 = sim.layers_received(1).len();
    let at2 = sim.layers_received(2).len();
    for _ in 0..5 {
        sim.frame(&[2]);
    }
    assert_eq!(sim.layers_received(1).len(), at1 + 5);
    assert_eq!(sim.layers_received(2).len(), at2);
    assert_eq!(sim.sfu.forwarded_layer(sim.leg(2), SOURCE), None);
    assert!(sim.sfu.leg_stats(sim.leg(2)).unwrap().video_not_selected > 0);
    // 0 talks: back in for receiver 2, from the next keyframe, continuing its stream.
    sim.talk(0, 3);
    sim.plis_to_sender();
    let before = sim.layers_received(2).len();
    sim.frame(&[]);
    assert_eq!(sim.layers_received(2).len(), before, "waits for a keyframe");
    sim.frame(&[2]);
    assert_eq!(sim.layers_received(2).len(), before + 1);
    // No sequence gap over the pause; the timestamp moved on by the pause (under 5 s).
    assert_continuous_within(&sim, 2, 5 * 90_000);
    assert_continuous(&sim, 1);
    assert_eq!(sim.sfu.forwarded_layer(leg1, SOURCE), Some(2));
}

#[test]
fn a_receiver_that_starts_sending_feedback_late_is_tracked_from_then_on() {
    let mut sim = Sim::new(SfuConfig::default(), 3);
    let slow = sim.leg(2);
    // 7 s without any feedback: no estimate, the view alone decides (layer 2 for everyone),
    // and the SFU stops keeping send history for the legs (after 5 s).
    for _ in 0..210 {
        ladder_frame(&mut sim);
    }
    assert_eq!(sim.sfu.forwarded_layer(slow, SOURCE), Some(2));
    assert_eq!(sim.sfu.leg_bandwidth(slow).unwrap().estimate_bps, None);
    // Feedback starts as receiver 2's link drops to 400 kbit/s: the first message restarts
    // tracking (with transport sequence numbers continuing on the wire), the next ones drive
    // it down.
    sim.feedback = true;
    sim.links.insert(
        slow,
        Link {
            bps: 400_000,
            free_at: sim.now,
            queue: VecDeque::new(),
            dropped: 0,
        },
    );
    for _ in 0..240 {
        ladder_frame(&mut sim);
    }
    assert_eq!(sim.sfu.forwarded_layer(slow, SOURCE), Some(0));
    assert_eq!(sim.sfu.forwarded_layer(sim.leg(1), SOURCE), Some(2));
    let bw = sim.sfu.leg_bandwidth(slow).unwrap();
    assert!(bw.estimate_bps.is_some_and(|e| e < 400_000), "{bw:?}");
}

mod robustness {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Authenticated layer packets in any order (sequence jumps back and forth, any frame
        /// marking byte or none, any size, view changes, time steps): never a panic, nothing
        /// a receiver cannot authenticate, and no layer SSRC other than the source's reaches
        /// a receiver.
        #[test]
        fn any_layer_packet_order_is_handled(
            steps in proptest::collection::vec(
                (0usize..3, -40i16..40, proptest::option::of(any::<u8>()), 0usize..1300,
                 0u64..50, 0u16..400),
                1..120),
        ) {
            let mut sim = Sim::new(SfuConfig::default(), 3);
            sim.feedback = true;
            for (layer, jump, mark, size, wait, view) in steps {
                {
                    let c = sim.clients.get_mut(&0).unwrap();
                    c.seq[layer] = c.seq[layer].wrapping_add(jump as u16);
                }
                // The sender's own SRTP refuses an index it used: that packet is never sent.
                if let Some(p) = sim.try_layer_packet(layer, mark, size) {
                    let leg = sim.leg(0);
                    prop_assert!(sim.sfu.handle_input(sim.now, leg, &p).is_ok());
                    sim.pump();
                }
                if view % 7 == 0 {
                    let leg1 = sim.leg(1);
                    sim.sfu.request_view(leg1, SOURCE, view).unwrap();
                }
                sim.advance(Duration::from_millis(wait));
            }
            for r in [1, 2] {
                let c = &sim.clients[&r];
                prop_assert_eq!(c.bad, 0);
                for ssrc in c.rtp.keys() {
                    prop_assert!(*ssrc == SOURCE || *ssrc == SfuConfig::default().rtcp_ssrc);
                }
            }
        }
    }
}

/// One packet of `layer` from participant 0 carrying the transport-wide sequence number
/// `tseq`, of payload type `pt` (127: a padding probe, padding only).
fn stamped_packet(sim: &mut Sim, layer: usize, mark: u8, tseq: u16, pt: u8) -> Vec<u8> {
    let frame = sim.frame;
    let c = sim.clients.get_mut(&0).unwrap();
    let seq = c.seq[layer];
    c.seq[layer] = seq.wrapping_add(1);
    let mut p = RtpPacket::default();
    p.header.payload_type = pt;
    p.header.ssrc = LAYERS[layer];
    p.header.sequence_number = seq;
    p.header.timestamp = (layer as u32 * 0x1234_5678).wrapping_add(frame * 2970);
    p.header.set_transport_seq(TRANSPORT_SEQ_EXT_ID, tseq);
    let mut bytes = Vec::new();
    if pt == 127 {
        p.write_padded(&mut bytes, 100);
    } else {
        p.header.set_extension(FRAME_MARKING_EXT_ID, vec![mark]);
        p.payload = vec![layer as u8, (seq >> 8) as u8, seq as u8];
        bytes = p.to_vec();
    }
    c.send.protect_rtp(&mut bytes).unwrap();
    bytes
}

#[test]
fn a_sender_gets_feedback_on_its_packets_and_a_bye_moves_its_receivers_down_at_once() {
    let mut sim = Sim::new(SfuConfig::default(), 3);
    let mut tseq = 0u16;
    for n in 0..6 {
        for layer in 0..3 {
            let mark = if n == 0 { KEY_START } else { DELTA_START };
            let p = stamped_packet(&mut sim, layer, mark, tseq, 96);
            tseq += 1;
            sim.input(0, &p);
        }
        sim.frame += 1;
        sim.advance(Duration::from_millis(FRAME_MS));
    }
    assert_eq!(sim.layers_received(1).last(), Some(&2));
    // A padding probe on the top layer: recorded, not forwarded.
    let before = sim.layers_received(1).len();
    let probe = stamped_packet(&mut sim, 2, 0, tseq, 127);
    tseq += 1;
    sim.input(0, &probe);
    sim.advance(Duration::from_millis(60));
    assert_eq!(sim.layers_received(1).len(), before, "probe forwarded");
    let stats = sim.sfu.leg_stats(sim.leg(0)).unwrap().clone();
    assert_eq!(stats.uplink_padding, 1);
    // The sender got feedback every 50 ms covering every number it sent, all received; the
    // receivers (who stamp nothing) got none.
    let reported: Vec<Option<i16>> = sim.clients[&0]
        .rtcp
        .iter()
        .filter_map(|p| match p {
            RtcpPacket::TransportFeedback(fb) => Some(fb.packets.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(reported.len(), usize::from(tseq), "{reported:?}");
    assert!(reported.iter().all(Option::is_some));
    assert!(stats.uplink_feedback_sent >= 4, "{stats:?}");
    for i in [1, 2] {
        assert!(!sim.clients[&i]
            .rtcp
            .iter()
            .any(|p| matches!(p, RtcpPacket::TransportFeedback(_))));
    }
    // The sender stops its top layer (BYE) and sends a keyframe of the middle one right after:
    // receivers switch at it, 33 ms later, not after the 1 s idle time.
    sim.rtcp(
        0,
        &[RtcpPacket::Bye(rtcp::Bye {
            ssrcs: vec![LAYERS[2]],
        })],
    );
    assert_eq!(sim.sfu.leg_stats(sim.leg(0)).unwrap().layers_stopped, 1);
    for (layer, mark) in [(1, KEY_START), (0, DELTA_START)] {
        let p = stamped_packet(&mut sim, layer, mark, tseq, 96);
        tseq += 1;
        sim.input(0, &p);
    }
    for i in [1, 2] {
        assert_eq!(sim.layers_received(i).last(), Some(&1), "receiver {i}");
    }
    // The top layer's next packet starts it again: receivers go back up at its keyframe.
    sim.frame += 1;
    sim.advance(Duration::from_millis(FRAME_MS));
    for layer in (0..3).rev() {
        let mark = if layer == 2 { KEY_START } else { DELTA_START };
        let p = stamped_packet(&mut sim, layer, mark, tseq, 96);
        tseq += 1;
        sim.input(0, &p);
    }
    assert_eq!(sim.layers_received(1).last(), Some(&2));
    assert_continuous(&sim, 1);
}

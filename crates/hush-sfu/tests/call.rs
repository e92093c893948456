//! A simulated group call through the SFU core: real join messages, real hop SRTP on both
//! sides, RTP/RTCP written by hush-media, deterministic time. Nothing sleeps.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use hush_media::rtcp::{self, Nack, Pli, RtcpPacket};
use hush_media::rtp::{AudioLevel, RtpPacket};
use hush_sfu::join::{JoinAnswer, JoinParams, PendingJoin, StreamDecl, StreamKind};
use hush_sfu::roster::Roster;
use hush_sfu::{
    CallId, DeviceId, Event, JoinError, LeaveReason, LegId, PacketError, RosterError, Sfu,
    SfuConfig,
};
use hush_srtp::{SrtpConfig, SrtpContext, Suite};
use rand::rngs::StdRng;
use rand::SeedableRng;

const CALL: CallId = CallId::from_bytes([0xc0; 16]);
const T0_MS: u64 = 1_780_000_000_000;
const LEVEL_EXT: u8 = 1;

fn key(i: usize) -> SigningKey {
    SigningKey::from_bytes(&[i as u8 + 1; 32])
}

fn device(i: usize) -> DeviceId {
    DeviceId::from_signing_key(&key(i))
}

fn audio_ssrc(i: usize) -> u32 {
    0x1000 + i as u32
}

fn video_ssrc(i: usize) -> u32 {
    0x2000 + i as u32
}

struct Client {
    leg: LegId,
    send: SrtpContext,
    recv: SrtpContext,
    seq: u16,
    video_seq: u16,
    /// Received RTP: SSRC → (sequence number, payload) in arrival order.
    rtp: HashMap<u32, Vec<(u16, Vec<u8>)>>,
    /// Received RTCP (decrypted compounds).
    rtcp: Vec<Vec<RtcpPacket>>,
    /// Packets that failed to unprotect at this client (must stay 0).
    bad: usize,
}

struct Sim {
    sfu: Sfu,
    clients: HashMap<usize, Client>,
    now: Instant,
    unix_ms: u64,
    rng: StdRng,
    events: Vec<Event>,
    /// Drop the next delivery of (recipient, ssrc, seq), to simulate loss.
    drop_once: Vec<(usize, u32, u16)>,
}

impl Sim {
    fn new(config: SfuConfig) -> Self {
        let mut rng = StdRng::seed_from_u64(7);
        let key = hush_sfu::join::SfuSigningKey::generate(&mut rng);
        Self {
            sfu: Sfu::new(config, key).unwrap(),
            clients: HashMap::new(),
            now: Instant::now(),
            unix_ms: T0_MS,
            rng,
            events: Vec::new(),
            drop_once: Vec::new(),
        }
    }

    fn request(&mut self, i: usize) -> (PendingJoin, Vec<u8>) {
        let params = JoinParams {
            call_id: CALL,
            suite: Suite::AeadAes128Gcm,
            audio_level_ext: Some(LEVEL_EXT),
            streams: vec![
                StreamDecl {
                    ssrc: audio_ssrc(i),
                    kind: StreamKind::Audio,
                },
                StreamDecl {
                    ssrc: video_ssrc(i),
                    kind: StreamKind::Video,
                },
            ],
        };
        let (pending, request) =
            PendingJoin::new(&key(i), &params, self.unix_ms, &mut self.rng).unwrap();
        (pending, request.encode())
    }

    fn join(&mut self, i: usize, roster: Option<&Roster>) -> Result<LegId, JoinError> {
        let (pending, request) = self.request(i);
        self.join_with(i, pending, &request, roster)
    }

    fn join_with(
        &mut self,
        i: usize,
        pending: PendingJoin,
        request: &[u8],
        roster: Option<&Roster>,
    ) -> Result<LegId, JoinError> {
        let roster_bytes = roster.map(Roster::encode);
        let joined = self.sfu.handle_join(
            self.now,
            self.unix_ms,
            request,
            roster_bytes.as_deref(),
            &mut self.rng,
        )?;
        let answer = JoinAnswer::decode(&joined.answer).unwrap();
        let keys = pending.finish(&self.sfu.public_key(), &answer).unwrap();
        let cfg = SrtpConfig::builder()
            .max_ssrcs(512)
            .replay_window(256)
            .build()
            .unwrap();
        let client = Client {
            leg: joined.leg,
            send: keys.send_context(cfg.clone()).unwrap(),
            recv: keys.recv_context(cfg).unwrap(),
            seq: 1000,
            video_seq: 5000,
            rtp: HashMap::new(),
            rtcp: Vec::new(),
            bad: 0,
        };
        self.clients.insert(i, client);
        self.pump();
        Ok(joined.leg)
    }

    /// One protected audio packet from client `i` at `level` (−dBov), payload naming the sender
    /// and sequence number.
    fn audio_packet(&mut self, i: usize, level: u8) -> Vec<u8> {
        let c = self.clients.get_mut(&i).unwrap();
        c.seq = c.seq.wrapping_add(1);
        let mut p = RtpPacket::default();
        p.header.payload_type = 111;
        p.header.ssrc = audio_ssrc(i);
        p.header.sequence_number = c.seq;
        p.header.timestamp = u32::from(c.seq) * 960;
        p.header
            .set_audio_level(LEVEL_EXT, AudioLevel { voice: true, level });
        p.payload = payload(i, c.seq);
        let mut bytes = p.to_vec();
        c.send.protect_rtp(&mut bytes).unwrap();
        bytes
    }

    fn video_packet(&mut self, i: usize) -> Vec<u8> {
        let c = self.clients.get_mut(&i).unwrap();
        c.video_seq = c.video_seq.wrapping_add(1);
        let mut p = RtpPacket::default();
        p.header.payload_type = 96;
        p.header.ssrc = video_ssrc(i);
        p.header.sequence_number = c.video_seq;
        p.payload = vec![0xee; 1100];
        let mut bytes = p.to_vec();
        c.send.protect_rtp(&mut bytes).unwrap();
        bytes
    }

    fn rtcp_packet(&mut self, i: usize, packets: &[RtcpPacket]) -> Vec<u8> {
        let mut bytes = rtcp::write_compound(packets);
        self.clients
            .get_mut(&i)
            .unwrap()
            .send
            .protect_rtcp(&mut bytes)
            .unwrap();
        bytes
    }

    fn send(&mut self, i: usize, bytes: &[u8]) -> Result<(), PacketError> {
        let leg = self.clients[&i].leg;
        let r = self.sfu.handle_input(self.now, leg, bytes);
        self.pump();
        r
    }

    /// Delivers everything the SFU wants to send and collects its events.
    fn pump(&mut self) {
        while let Some(t) = self.sfu.poll_transmit() {
            let Some((&i, c)) = self.clients.iter_mut().find(|(_, c)| c.leg == t.leg) else {
                continue;
            };
            let mut bytes = t.bytes;
            if bytes.get(1).is_some_and(|b| (192..=223).contains(b)) {
                match c.recv.unprotect_rtcp(&mut bytes) {
                    Ok(()) => c
                        .rtcp
                        .push(rtcp::parse_compound(&bytes).unwrap_or_default()),
                    Err(_) => c.bad += 1,
                }
                continue;
            }
            let ssrc = u32::from_be_bytes(bytes[8..12].try_into().unwrap());
            let seq = u16::from_be_bytes([bytes[2], bytes[3]]);
            if let Some(at) = self.drop_once.iter().position(|d| *d == (i, ssrc, seq)) {
                self.drop_once.remove(at);
                continue;
            }
            match c.recv.unprotect_rtp(&mut bytes) {
                Ok(()) => {
                    // Random-content tests forward packets hush-media's parser refuses (e.g. bad
                    // padding); those are kept with an empty payload.
                    let payload = RtpPacket::parse(&bytes).map(|p| p.payload);
                    c.rtp
                        .entry(ssrc)
                        .or_default()
                        .push((seq, payload.unwrap_or_default()));
                }
                Err(_) => c.bad += 1,
            }
        }
        while let Some(e) = self.sfu.poll_event() {
            self.events.push(e);
        }
    }

    /// Advances time, running the SFU's timers on the way.
    fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        while let Some(t) = self.sfu.poll_timeout().filter(|t| *t <= until) {
            self.now = self.now.max(t);
            self.sfu.handle_timeout(self.now);
            self.pump();
        }
        self.now = until;
        self.unix_ms += by.as_millis() as u64;
    }

    fn received(&self, i: usize, ssrc: u32) -> usize {
        self.clients[&i].rtp.get(&ssrc).map_or(0, Vec::len)
    }
}

fn payload(i: usize, seq: u16) -> Vec<u8> {
    let mut p = vec![i as u8; 40];
    p[..2].copy_from_slice(&seq.to_be_bytes());
    p
}

fn roster(version: u64, members: &[usize]) -> Roster {
    let ids: Vec<DeviceId> = members.iter().map(|&i| device(i)).collect();
    Roster::sign(&key(0), CALL, version, &ids).unwrap()
}

fn all_audio() -> SfuConfig {
    SfuConfig {
        loudest_n: None,
        ..SfuConfig::default()
    }
}

fn start_call(config: SfuConfig, n: usize) -> Sim {
    let mut sim = Sim::new(config);
    let r = roster(1, &(0..n).collect::<Vec<_>>());
    sim.join(0, Some(&r)).unwrap();
    for i in 1..n {
        sim.join(i, None).unwrap();
    }
    sim
}

#[test]
fn eight_participants_everyone_hears_everyone() {
    let mut sim = start_call(all_audio(), 8);
    assert_eq!(sim.sfu.participants(&CALL).len(), 8);
    for _round in 0..50 {
        for i in 0..8 {
            let p = sim.audio_packet(i, 40);
            sim.send(i, &p).unwrap();
        }
        sim.advance(Duration::from_millis(20));
    }
    for r in 0..8 {
        let c = &sim.clients[&r];
        assert_eq!(c.bad, 0, "client {r} failed to unprotect hop packets");
        for s in 0..8 {
            let got = c.rtp.get(&audio_ssrc(s)).map_or(&[][..], Vec::as_slice);
            if s == r {
                assert!(got.is_empty(), "client {r} got its own audio back");
                continue;
            }
            assert_eq!(got.len(), 50, "client {r} from {s}");
            // In order, intact: the payload names the sender and the sequence number.
            for (k, (seq, body)) in got.iter().enumerate() {
                assert_eq!(*seq, 1001 + k as u16);
                assert_eq!(body, &payload(s, *seq));
            }
        }
    }
    let stats = sim.sfu.leg_stats(sim.clients[&3].leg).unwrap();
    assert_eq!(stats.rtp_received, 50);
    assert_eq!(stats.forwarded, 7 * 50);
    assert_eq!(stats.dropped_srtp + stats.dropped_malformed, 0);
}

#[test]
fn video_is_forwarded_to_everyone_else() {
    let mut sim = start_call(SfuConfig::default(), 4);
    for _ in 0..10 {
        for i in 0..4 {
            let p = sim.video_packet(i);
            sim.send(i, &p).unwrap();
        }
    }
    for r in 0..4 {
        for s in 0..4 {
            let want = if r == s { 0 } else { 10 };
            assert_eq!(sim.received(r, video_ssrc(s)), want);
        }
    }
}

#[test]
fn loudest_three_are_forwarded_and_the_loudest_becomes_active_speaker() {
    let mut sim = start_call(SfuConfig::default(), 8);
    // The last joiners talk (so the tie-break among silent participants, the earlier leg,
    // cannot pick them by chance): 7 loudest, 5 and 6 softer; everyone else sends silence.
    let level = |i: usize| match i {
        7 => 20,
        5 | 6 => 45,
        _ => 127,
    };
    let talkers = [5, 6, 7];
    for _ in 0..100 {
        for i in 0..8 {
            let p = sim.audio_packet(i, level(i));
            sim.send(i, &p).unwrap();
        }
        sim.advance(Duration::from_millis(20));
    }
    let speakers: Vec<DeviceId> = sim
        .events
        .iter()
        .filter_map(|e| match e {
            Event::ActiveSpeaker { device, .. } => Some(*device),
            _ => None,
        })
        .collect();
    assert_eq!(speakers, vec![device(7)]);
    assert_eq!(sim.sfu.dominant_speaker(&CALL), Some(device(7)));
    // Measure the last second only (after the scores settled).
    for c in sim.clients.values_mut() {
        c.rtp.clear();
    }
    let held_before = sim
        .sfu
        .leg_stats(sim.clients[&1].leg)
        .unwrap()
        .audio_not_selected;
    for _ in 0..50 {
        for i in 0..8 {
            let p = sim.audio_packet(i, level(i));
            sim.send(i, &p).unwrap();
        }
        sim.advance(Duration::from_millis(20));
    }
    for r in 0..8 {
        for s in 0..8 {
            let got = sim.received(r, audio_ssrc(s));
            if s == r || !talkers.contains(&s) {
                assert_eq!(got, 0, "client {r} got audio of {s}");
            } else {
                assert_eq!(got, 50, "client {r} from {s}");
            }
        }
    }
    let quiet = sim.sfu.leg_stats(sim.clients[&1].leg).unwrap();
    assert_eq!(quiet.audio_not_selected - held_before, 50);
}

#[test]
fn non_roster_device_is_refused() {
    let mut sim = start_call(all_audio(), 3);
    assert_eq!(sim.join(9, None), Err(JoinError::NotOnRoster(device(9))));
    assert_eq!(sim.sfu.participants(&CALL).len(), 3);
    // Nor can it create the call with a roster of its own.
    let own = Roster::sign(&key(9), CALL, 7, &[device(9)]).unwrap();
    assert_eq!(sim.join(9, Some(&own)), Err(JoinError::CallExists(CALL)));
    // A roster signed by someone else than the joining creator cannot create a call.
    let mut fresh = Sim::new(all_audio());
    let by_zero = roster(1, &[0, 9]);
    assert_eq!(
        fresh.join(9, Some(&by_zero)),
        Err(JoinError::Roster(RosterError::NotCreator))
    );
    assert_eq!(fresh.join(9, None), Err(JoinError::NoSuchCall(CALL)));
}

#[test]
fn replayed_stale_and_forged_joins_are_refused() {
    let mut sim = start_call(all_audio(), 2);
    let (pending, request) = sim.request(2);
    // Roster v2 admits 2.
    sim.sfu
        .update_roster(&roster(2, &[0, 1, 2]).encode())
        .unwrap();
    let (pending2, _) = sim.request(2);
    sim.join_with(2, pending, &request, None).unwrap();
    // The same request bytes again: replay.
    assert_eq!(
        sim.join_with(2, pending2, &request, None),
        Err(JoinError::Replayed)
    );
    // A request from 31 s ago: stale.
    sim.unix_ms -= 31_000;
    let (old_pending, old) = sim.request(1);
    sim.unix_ms += 31_000;
    assert!(matches!(
        sim.join_with(1, old_pending, &old, None),
        Err(JoinError::Stale { skew_ms: 31_000 })
    ));
    // A request altered in flight (one bit of the SSRC list): the signature fails.
    let (p, mut forged) = sim.request(1);
    let n = forged.len();
    forged[n - 64 - 2] ^= 1;
    assert_eq!(
        sim.join_with(1, p, &forged, None),
        Err(JoinError::BadSignature("join request"))
    );
    assert_eq!(sim.sfu.participants(&CALL).len(), 3);
}

#[test]
fn kicked_member_is_no_longer_forwarded_and_cannot_rejoin() {
    let mut sim = start_call(all_audio(), 4);
    let kicked_leg = sim.clients[&3].leg;
    let before = sim.audio_packet(3, 40);
    sim.send(3, &before).unwrap();
    assert_eq!(sim.received(1, audio_ssrc(3)), 1);

    let kicked = sim
        .sfu
        .update_roster(&roster(2, &[0, 1, 2]).encode())
        .unwrap();
    assert_eq!(kicked, vec![device(3)]);
    sim.pump();
    assert!(sim.events.contains(&Event::ParticipantLeft {
        call: CALL,
        device: device(3),
        leg: kicked_leg,
        reason: LeaveReason::Kicked,
    }));
    let after = sim.audio_packet(3, 40);
    assert_eq!(
        sim.send(3, &after),
        Err(PacketError::UnknownLeg(kicked_leg))
    );
    assert_eq!(sim.received(1, audio_ssrc(3)), 1, "nothing more from 3");
    assert_eq!(sim.join(3, None), Err(JoinError::NotOnRoster(device(3))));
    // Replaying the old roster (which listed 3) is refused, so the kick holds.
    assert_eq!(
        sim.sfu.update_roster(&roster(1, &[0, 1, 2, 3]).encode()),
        Err(RosterError::NotNewer { current: 2, got: 1 })
    );
    // A member cannot sign an update.
    let forged = Roster::sign(&key(1), CALL, 3, &[device(1), device(3)]).unwrap();
    assert_eq!(
        sim.sfu.update_roster(&forged.encode()),
        Err(RosterError::NotCreator)
    );
    // The rest of the call goes on.
    let p = sim.audio_packet(2, 40);
    sim.send(2, &p).unwrap();
    assert_eq!(sim.received(1, audio_ssrc(2)), 1);
    assert_eq!(sim.received(0, audio_ssrc(2)), 1);
}

#[test]
fn bad_packets_cost_only_their_sender() {
    let mut sim = start_call(all_audio(), 3);
    // Garbage, a short packet, a packet under a wrong key, an undeclared SSRC, a replay.
    assert!(matches!(
        sim.send(1, &[0x80]),
        Err(PacketError::Malformed(_))
    ));
    let good = sim.audio_packet(1, 40);
    let mut tampered = good.clone();
    let n = tampered.len();
    tampered[n - 1] ^= 0xff;
    assert!(matches!(sim.send(1, &tampered), Err(PacketError::Srtp(_))));
    sim.send(1, &good).unwrap();
    assert!(matches!(sim.send(1, &good), Err(PacketError::Srtp(_))));
    let mut other = RtpPacket::default();
    other.header.ssrc = 0xbad;
    let mut other = other.to_vec();
    sim.clients
        .get_mut(&1)
        .unwrap()
        .send
        .protect_rtp(&mut other)
        .unwrap();
    assert_eq!(sim.send(1, &other), Err(PacketError::UndeclaredSsrc(0xbad)));
    let stats = sim.sfu.leg_stats(sim.clients[&1].leg).unwrap().clone();
    assert_eq!(stats.dropped_malformed, 1);
    assert_eq!(stats.dropped_srtp, 2);
    assert_eq!(stats.dropped_undeclared, 1);
    assert_eq!(stats.rtp_received, 1);
    // Only the one good packet went through, and the others are unaffected.
    assert_eq!(sim.received(0, audio_ssrc(1)), 1);
    let p = sim.audio_packet(2, 40);
    sim.send(2, &p).unwrap();
    assert_eq!(sim.received(0, audio_ssrc(2)), 1);
    assert_eq!(sim.received(1, audio_ssrc(2)), 1);
    let clean = sim.sfu.leg_stats(sim.clients[&2].leg).unwrap();
    assert_eq!(clean.dropped_malformed + clean.dropped_srtp, 0);
    assert!(sim.clients.values().all(|c| c.bad == 0));
}

#[test]
fn nack_is_answered_from_the_cache_with_the_same_bytes() {
    let mut sim = start_call(all_audio(), 3);
    let mut sent = Vec::new();
    for k in 0..5 {
        let p = sim.audio_packet(0, 40);
        if k == 2 {
            // Client 1 loses the third packet.
            sim.drop_once.push((1, audio_ssrc(0), 1003));
        }
        sent.push(p.clone());
        sim.send(0, &p).unwrap();
    }
    assert_eq!(sim.received(1, audio_ssrc(0)), 4);
    let nack = sim.rtcp_packet(
        1,
        &[RtcpPacket::Nack(Nack {
            sender_ssrc: audio_ssrc(1),
            media_ssrc: audio_ssrc(0),
            lost: vec![1003, 999],
        })],
    );
    sim.send(1, &nack).unwrap();
    let got = &sim.clients[&1].rtp[&audio_ssrc(0)];
    assert_eq!(got.len(), 5);
    assert_eq!(got[4], (1003, payload(0, 1003)));
    let stats = sim.sfu.leg_stats(sim.clients[&1].leg).unwrap();
    assert_eq!(stats.retransmitted, 1);
    assert_eq!(stats.nacks_unserved, 1, "999 was never sent");
    // Client 2 had it already: a NACK from it is served, and its replay window drops the copy
    // (counted as bad at the client, not delivered twice).
    let nack = sim.rtcp_packet(
        2,
        &[RtcpPacket::Nack(Nack {
            sender_ssrc: audio_ssrc(2),
            media_ssrc: audio_ssrc(0),
            lost: vec![1003],
        })],
    );
    sim.send(2, &nack).unwrap();
    assert_eq!(sim.received(2, audio_ssrc(0)), 5);
    assert_eq!(sim.clients[&2].bad, 1);
}

#[test]
fn pli_is_relayed_to_the_sender_and_throttled() {
    let mut sim = start_call(all_audio(), 3);
    let pli = |sim: &mut Sim| {
        sim.rtcp_packet(
            1,
            &[RtcpPacket::Pli(Pli {
                sender_ssrc: audio_ssrc(1),
                media_ssrc: video_ssrc(0),
            })],
        )
    };
    let p = pli(&mut sim);
    sim.send(1, &p).unwrap();
    assert_eq!(
        sim.clients[&0].rtcp,
        vec![vec![RtcpPacket::Pli(Pli {
            sender_ssrc: 1,
            media_ssrc: video_ssrc(0)
        })]]
    );
    // A second one 100 ms later is absorbed; one after the interval goes through.
    sim.advance(Duration::from_millis(100));
    let p = pli(&mut sim);
    sim.send(1, &p).unwrap();
    assert_eq!(sim.clients[&0].rtcp.len(), 1);
    sim.advance(Duration::from_millis(250));
    let p = pli(&mut sim);
    sim.send(1, &p).unwrap();
    assert_eq!(sim.clients[&0].rtcp.len(), 2);
    assert!(sim.clients[&2].rtcp.is_empty());
    assert_eq!(
        sim.sfu.leg_stats(sim.clients[&0].leg).unwrap().plis_relayed,
        2
    );
}

#[test]
fn rejoin_replaces_the_old_leg() {
    let mut sim = start_call(all_audio(), 3);
    let old = sim.clients[&2].leg;
    let p = sim.audio_packet(2, 40);
    sim.send(2, &p).unwrap();
    let seq = sim.clients[&2].seq;
    let new = sim.join(2, None).unwrap();
    assert_ne!(old, new);
    assert!(sim.events.contains(&Event::ParticipantLeft {
        call: CALL,
        device: device(2),
        leg: old,
        reason: LeaveReason::Replaced,
    }));
    assert_eq!(sim.sfu.participants(&CALL).len(), 3);
    assert_eq!(
        sim.sfu.handle_input(sim.now, old, &p),
        Err(PacketError::UnknownLeg(old))
    );
    // The new leg carries on with the stream's sequence numbers.
    sim.clients.get_mut(&2).unwrap().seq = seq;
    let p = sim.audio_packet(2, 40);
    sim.send(2, &p).unwrap();
    assert_eq!(sim.received(0, audio_ssrc(2)), 2);
}

#[test]
fn call_full_and_call_end() {
    let config = SfuConfig {
        max_participants: 2,
        ..all_audio()
    };
    let mut sim = start_call(config, 2);
    sim.sfu
        .update_roster(&roster(2, &[0, 1, 2]).encode())
        .unwrap();
    assert_eq!(sim.join(2, None), Err(JoinError::CallFull { limit: 2 }));
    // SSRC already used by another participant.
    let leg1 = sim.clients[&1].leg;
    sim.sfu.leave(leg1).unwrap();
    let leg0 = sim.clients[&0].leg;
    sim.sfu.leave(leg0).unwrap();
    sim.pump();
    assert!(sim.events.contains(&Event::CallEnded { call: CALL }));
    assert!(sim.sfu.participants(&CALL).is_empty());
    assert_eq!(sim.join(1, None), Err(JoinError::NoSuchCall(CALL)));
}

#[test]
fn config_is_checked_and_suites_are_enforced() {
    let key = || hush_sfu::join::SfuSigningKey::from_seed(&[3; 32]);
    for bad in [
        SfuConfig {
            max_participants: 0,
            ..SfuConfig::default()
        },
        SfuConfig {
            suites: vec![],
            ..SfuConfig::default()
        },
        SfuConfig {
            loudest_n: Some(0),
            ..SfuConfig::default()
        },
        SfuConfig {
            replay_window: 100,
            ..SfuConfig::default()
        },
    ] {
        assert!(matches!(
            Sfu::new(bad, key()),
            Err(hush_sfu::Error::InvalidConfig(_))
        ));
    }
    // An SFU that accepts only AES-256 refuses a join asking for AES-128.
    let mut sim = Sim::new(SfuConfig {
        suites: vec![Suite::AeadAes256Gcm],
        ..SfuConfig::default()
    });
    let r = roster(1, &[0]);
    assert_eq!(
        sim.join(0, Some(&r)),
        Err(JoinError::UnsupportedSuite(0x0007))
    );
}

mod robustness {
    use super::*;
    use proptest::prelude::*;

    fn assert_nothing_sent(sim: &mut Sim) {
        assert!(sim.sfu.poll_transmit().is_none());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Unauthenticated bytes of any shape on a leg: dropped with an error, counted, never a
        /// panic, nothing forwarded; the call still works afterwards.
        #[test]
        fn random_bytes_never_panic_nor_forward(
            packets in proptest::collection::vec(
                (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..400)), 1..24),
        ) {
            let mut sim = start_call(all_audio(), 3);
            let leg = sim.clients[&1].leg;
            for (shape, mut bytes) in packets {
                // Steer some inputs past the first checks: RTP or RTCP version bits, declared
                // SSRCs, RTCP packet types.
                match shape % 4 {
                    1 if bytes.len() >= 12 => {
                        bytes[0] = 0x80 | (bytes[0] & 0x3f);
                        bytes[1] &= 0x7f;
                        bytes[8..12].copy_from_slice(&audio_ssrc(1).to_be_bytes());
                    }
                    2 if bytes.len() >= 8 => {
                        bytes[0] = 0x80 | (bytes[0] & 0x3f);
                        bytes[1] = 200 + bytes[1] % 8;
                        bytes[4..8].copy_from_slice(&video_ssrc(1).to_be_bytes());
                    }
                    _ => {}
                }
                prop_assert!(sim.sfu.handle_input(sim.now, leg, &bytes).is_err());
                assert_nothing_sent(&mut sim);
            }
            let p = sim.audio_packet(2, 40);
            sim.send(2, &p).unwrap();
            prop_assert_eq!(sim.received(1, audio_ssrc(2)), 1);
        }

        /// Authenticated packets with arbitrary content after the header (so the SFU's
        /// post-authentication parsing sees random RTP extensions and RTCP bodies): never a
        /// panic, and other participants keep receiving.
        #[test]
        fn authenticated_random_content_never_panics(
            packets in proptest::collection::vec(
                (any::<bool>(), proptest::collection::vec(any::<u8>(), 12..300)), 1..24),
        ) {
            let mut sim = start_call(all_audio(), 3);
            for (rtcp, mut bytes) in packets {
                bytes[0] = 0x80 | (bytes[0] & 0x3f);
                if rtcp {
                    bytes[1] = 200 + bytes[1] % 8;
                    bytes[4..8].copy_from_slice(&audio_ssrc(1).to_be_bytes());
                    if sim.clients.get_mut(&1).unwrap().send.protect_rtcp(&mut bytes).is_err() {
                        continue;
                    }
                } else {
                    bytes[1] &= 0x7f;
                    bytes[8..12].copy_from_slice(&audio_ssrc(1).to_be_bytes());
                    if sim.clients.get_mut(&1).unwrap().send.protect_rtp(&mut bytes).is_err() {
                        continue;
                    }
                }
                let _ = sim.send(1, &bytes);
            }
            prop_assert!(sim.clients.values().all(|c| c.bad == 0));
            let p = sim.audio_packet(2, 40);
            sim.send(2, &p).unwrap();
            prop_assert_eq!(sim.received(0, audio_ssrc(2)), 1);
        }

        /// Random join requests and rosters are refused without a panic.
        #[test]
        fn random_joins_and_rosters_are_refused(
            request in proptest::collection::vec(any::<u8>(), 0..300),
            roster in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut sim = Sim::new(all_audio());
            let mut rng = StdRng::seed_from_u64(1);
            prop_assert!(sim.sfu.handle_join(sim.now, T0_MS, &request, Some(&roster), &mut rng).is_err());
            prop_assert!(sim.sfu.handle_join(sim.now, T0_MS, &request, None, &mut rng).is_err());
            prop_assert!(sim.sfu.update_roster(&roster).is_err());
        }
    }
}

/// The senders whose video receiver `r` got, sorted.
fn video_senders(sim: &Sim, r: usize, n: usize) -> Vec<usize> {
    (0..n)
        .filter(|&s| sim.received(r, video_ssrc(s)) > 0)
        .collect()
}

#[test]
fn video_goes_to_each_receiver_from_its_last_nine_speakers_only() {
    let n = 12;
    let mut sim = start_call(SfuConfig::default(), n);
    let talk = |sim: &mut Sim, talkers: &[usize]| {
        for _ in 0..100 {
            for i in 0..n {
                let level = if talkers.contains(&i) { 20 } else { 127 };
                let p = sim.audio_packet(i, level);
                sim.send(i, &p).unwrap();
            }
            sim.advance(Duration::from_millis(20));
        }
    };
    let video_round = |sim: &mut Sim| {
        for c in sim.clients.values_mut() {
            c.rtp.clear();
        }
        for i in 0..n {
            let p = sim.video_packet(i);
            sim.send(i, &p).unwrap();
        }
    };
    // Before anyone speaks: the first nine others in join order.
    video_round(&mut sim);
    assert_eq!(video_senders(&sim, 0, n), (1..10).collect::<Vec<_>>());
    assert_eq!(video_senders(&sim, 11, n), (0..9).collect::<Vec<_>>());
    // 10 and 11 talk: they come in, pushing out the last of the join order.
    talk(&mut sim, &[10, 11]);
    video_round(&mut sim);
    assert_eq!(video_senders(&sim, 0, n), vec![1, 2, 3, 4, 5, 6, 7, 10, 11]);
    assert_eq!(video_senders(&sim, 11, n), vec![0, 1, 2, 3, 4, 5, 6, 7, 10]);
    // Then 8 talks: 7 goes out for everyone but those it no longer fits.
    talk(&mut sim, &[8]);
    video_round(&mut sim);
    assert_eq!(video_senders(&sim, 0, n), vec![1, 2, 3, 4, 5, 6, 8, 10, 11]);
    let stats = sim.sfu.leg_stats(sim.clients[&0].leg).unwrap();
    assert_eq!(stats.video_not_selected, 2 + 2 + 2);
    // With last-N off, everyone gets everyone's video.
    let mut all = start_call(
        SfuConfig {
            video_last_n: None,
            ..SfuConfig::default()
        },
        n,
    );
    video_round(&mut all);
    assert_eq!(video_senders(&all, 0, n), (1..n).collect::<Vec<_>>());
}

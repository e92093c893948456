//! The forwarding core: calls, participants and their legs, and the packet path.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use hush_media::cc::{CcConfig, CongestionController, TwccRecorder};
use hush_media::nack::NackScheduler;
use hush_srtp::{SrtpConfig, SrtpContext, Suite};
use tracing::{debug, info, trace};
use zeroize::Zeroizing;

use crate::cache::PacketCache;
use crate::error::{Error, JoinError, PacketError, RosterError};
use crate::ids::{CallId, DeviceId, LegId};
use crate::join::{
    announced_streams, JoinGuard, JoinRequest, SfuPublicKey, SfuSigningKey, StreamDecl, StreamKind,
    DEFAULT_JOINS_PER_DEVICE, DEFAULT_MAX_SKEW, DEFAULT_REPLAY_CAPACITY, MAX_STREAMS,
    NOTICE_KEY_LEN,
};
use crate::packet::{self, Feedback};
use crate::roster::{Roster, RosterState, MAX_ROSTER_MEMBERS};
use crate::simulcast::{LayerPacket, Source, Subscription};
use crate::speaker::{SpeakerConfig, SpeakerDetector};

/// Most retransmissions one NACK packet can trigger.
const MAX_RESENDS_PER_NACK: usize = 64;
/// Frame marking bits of a packet that starts a keyframe (start of frame, independent).
const KEYFRAME_START: u8 = 0x80 | 0x20;
/// IPv4 and UDP headers, counted in what the congestion controller of a leg sees sent.
const UDP_IP_OVERHEAD: usize = 28;
/// Payload type of the SFU's probe padding packets (never media: they carry only padding).
const PADDING_PAYLOAD_TYPE: u8 = 127;
/// Header bytes of a probe packet on the wire: RTP 12, extension 8, SRTP tag, UDP/IP.
const PROBE_HEADER: usize = 12 + 8 + Suite::RTP_OVERHEAD + UDP_IP_OVERHEAD;

/// Spreads a probe burst over packets of at most 255 bytes of padding (at least five), paced at
/// the probe's rate, as hush-media's session does for 1:1 calls.
fn schedule_probe(p: &mut Participant, now: Instant, probe: hush_media::cc::Probe) {
    let packets = probe.padding_packets(now, PROBE_HEADER);
    p.probes
        .extend(packets.map(|(at, padding)| (at, probe.cluster, padding)));
}

/// Time between two transport-wide feedback messages to a sender about the packets it sends
/// (docs/sfu.md "Uplink congestion control"), as the client reports its own downlink.
pub const UPLINK_FEEDBACK_INTERVAL: Duration = Duration::from_millis(50);

/// Time between two sender reports of the SFU on one leg (for the participant's RTT).
const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// A leg that sends no usable transport feedback this long after its controller started is no
/// longer tracked by it (until it sends some).
const CC_IDLE: Duration = Duration::from_secs(5);
/// Round-trip times above this from a report are taken as nonsense and ignored.
const MAX_RTT: Duration = Duration::from_secs(10);

/// The middle 32 bits of an NTP-format time (16.16 seconds) of `now` on the SFU's report clock.
fn ntp32(epoch: Instant, now: Instant) -> u32 {
    let us = now.saturating_duration_since(epoch).as_micros();
    // Starts at 1 s (a last-SR field of 0 means "no report yet"); wraps every 18 hours, as the
    // field does.
    (((us << 16) / 1_000_000) as u32).wrapping_add(1 << 16)
}

/// Sends `p` a sender report of the SFU's own SSRC carrying `ntp32`, for RTT.
fn send_report(
    config: &SfuConfig,
    p: &mut Participant,
    ntp32: u32,
    transmits: &mut VecDeque<Transmit>,
    now: Instant,
) {
    let mut out = Vec::with_capacity(28 + Suite::RTCP_OVERHEAD);
    packet::write_sender_report(&mut out, config.rtcp_ssrc, ntp32);
    p.send_rtcp(now, out, transmits, "sender report");
}

/// A hook that sees every RTP packet the SFU forwards, as the SFU sees it: after hop SRTP is
/// removed, before it is protected again for each recipient. For tests that check what the
/// server can read (group media must be end-to-end ciphertext here); not for production
/// (feature `test-hooks`).
#[cfg(feature = "test-hooks")]
#[derive(Clone)]
pub struct ForwardTap(pub std::sync::Arc<TapFn>);

/// The function a [`ForwardTap`] calls with each forwarded RTP packet.
#[cfg(feature = "test-hooks")]
pub type TapFn = dyn Fn(&[u8]) + Send + Sync;

#[cfg(feature = "test-hooks")]
impl std::fmt::Debug for ForwardTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ForwardTap")
    }
}

/// A hook that replaces every RTP packet the SFU forwards (as [`ForwardTap`] sees it) with the
/// packets it returns, each then protected and sent to every other participant as usual: none
/// drops the packet, several inject more. It stands for a malicious SFU (which holds the hop
/// keys) in tests of the end-to-end layer: alter, truncate, replay, reorder or relabel frames.
/// Simulcast layer packets are rewritten after the SFU chose what to forward (on the packet as
/// sent). Not for production (feature `test-hooks`).
#[cfg(feature = "test-hooks")]
#[derive(Clone)]
pub struct ForwardRewrite(pub std::sync::Arc<RewriteFn>);

/// The function a [`ForwardRewrite`] calls with each RTP packet to forward.
#[cfg(feature = "test-hooks")]
pub type RewriteFn = dyn Fn(&[u8]) -> Vec<Vec<u8>> + Send + Sync;

#[cfg(feature = "test-hooks")]
impl std::fmt::Debug for ForwardRewrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ForwardRewrite")
    }
}

/// Configuration of an [`Sfu`].
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// Most participants in one call at once. Default 32.
    pub max_participants: usize,
    /// Most members a roster may list (who may join, not all at once). Default 255, the most
    /// the encoding can carry.
    pub max_roster_members: usize,
    /// Forward each participant's audio only while it is among the `n` loudest (by the
    /// speaker detector's score) or the dominant speaker; `None` forwards all audio. Default
    /// `Some(3)`.
    pub loudest_n: Option<usize>,
    /// SRTP suites accepted for hop keys. Default both AEAD suites.
    pub suites: Vec<Suite>,
    /// Largest distance between a join's timestamp and the SFU's clock. Default 30 s.
    pub max_skew: Duration,
    /// Bound of the join replay cache. Default 8192.
    pub replay_capacity: usize,
    /// Joins one device may make within twice `max_skew`. Default 16.
    pub joins_per_device: usize,
    /// Packets kept per recipient leg to answer NACKs. Default 512.
    pub cache_packets: usize,
    /// Times one cached packet may be resent. Default 2.
    pub max_resends: u8,
    /// Shortest time between two PLIs relayed to the sender of one SSRC, unless a keyframe of
    /// that SSRC (frame marking: start and independent) came in between. Default 300 ms.
    pub pli_interval: Duration,
    /// SSRC the SFU uses as the sender of the RTCP it originates (relayed PLIs); no participant
    /// may declare it. Default 1.
    pub rtcp_ssrc: u32,
    /// SRTP replay window of the hop contexts (see hush-srtp's `SrtpConfig`). Default 256.
    pub replay_window: usize,
    /// Dominant speaker detection.
    pub speaker: SpeakerConfig,
    /// Sees every RTP packet forwarded (see [`ForwardTap`]; feature `test-hooks`). Default none.
    #[cfg(feature = "test-hooks")]
    pub tap: Option<ForwardTap>,
    /// Forward each receiver the video of only the `n` other participants who spoke most
    /// recently (by the speaker detector; those who never spoke in join order); `None`
    /// forwards all video. Default `Some(9)`.
    pub video_last_n: Option<usize>,
    /// NACK a participant for the video packets lost between it and the SFU (gaps in the
    /// sequence numbers of its video SSRCs), so that it resends them from its send history
    /// (docs/sfu.md, "Uplink loss"). Default `true`.
    pub uplink_nack: bool,
    /// The congestion controller of each leg (what the SFU sends to one participant), fed by
    /// that participant's transport-wide feedback. Default: start at 2 Mbit/s, between
    /// 50 kbit/s and 20 Mbit/s, probing with padding (only on legs that send feedback).
    pub leg_cc: CcConfig,
    /// Rewrites every RTP packet forwarded (see [`ForwardRewrite`]; feature `test-hooks`).
    /// Default none.
    #[cfg(feature = "test-hooks")]
    pub rewrite: Option<ForwardRewrite>,
}

impl Default for SfuConfig {
    fn default() -> Self {
        Self {
            max_participants: 32,
            max_roster_members: MAX_ROSTER_MEMBERS,
            loudest_n: Some(3),
            suites: vec![Suite::AeadAes128Gcm, Suite::AeadAes256Gcm],
            max_skew: DEFAULT_MAX_SKEW,
            replay_capacity: DEFAULT_REPLAY_CAPACITY,
            joins_per_device: DEFAULT_JOINS_PER_DEVICE,
            cache_packets: 512,
            max_resends: 2,
            pli_interval: Duration::from_millis(300),
            rtcp_ssrc: 1,
            replay_window: 256,
            speaker: SpeakerConfig::default(),
            #[cfg(feature = "test-hooks")]
            tap: None,
            video_last_n: Some(9),
            uplink_nack: true,
            leg_cc: CcConfig {
                start_bps: 2_000_000,
                min_bps: 50_000,
                max_bps: 20_000_000,
                probing: true,
                ..CcConfig::default()
            },
            #[cfg(feature = "test-hooks")]
            rewrite: None,
        }
    }
}

/// A datagram to send on a leg. The driver maps the leg to its network path.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Transmit {
    /// The recipient's leg.
    pub leg: LegId,
    /// The SRTP/SRTCP packet.
    pub bytes: Vec<u8>,
}

/// Why a participant left a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// The driver reported it gone ([`Sfu::leave`]).
    Left,
    /// A roster update removed it.
    Kicked,
    /// The same device joined again; its old leg is closed.
    Replaced,
}

/// What happened, for the driver to act on (signal participants, close paths, log).
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Event {
    /// A participant was admitted.
    ParticipantJoined {
        /// The call.
        call: CallId,
        /// The participant's device.
        device: DeviceId,
        /// Its new leg.
        leg: LegId,
        /// The streams the others receive from it (for announcing SSRC → participant): its
        /// declared streams, each simulcast source as one video stream under its source SSRC
        /// ([`announced_streams`](crate::join::announced_streams)).
        streams: Vec<StreamDecl>,
    },
    /// A participant's leg is gone; the driver should close its path.
    ParticipantLeft {
        /// The call.
        call: CallId,
        /// The participant's device.
        device: DeviceId,
        /// The closed leg.
        leg: LegId,
        /// Why.
        reason: LeaveReason,
    },
    /// The dominant speaker of a call changed.
    ActiveSpeaker {
        /// The call.
        call: CallId,
        /// The new dominant speaker.
        device: DeviceId,
    },
    /// The last participant left; the call is gone (its creator may create it again).
    CallEnded {
        /// The call.
        call: CallId,
    },
}

/// An accepted join: the new leg, the answer to send back to the client, and the SFU-side
/// secrets of the leg the driver needs (ICE-lite credentials, the notice key).
pub struct Joined {
    /// The participant's leg.
    pub leg: LegId,
    /// The encoded [`JoinAnswer`](crate::join::JoinAnswer).
    pub answer: Vec<u8>,
    /// The SFU's ICE ufrag on this leg (derived at join; see [`crate::join::HopKeys::ice_ufrag`]).
    pub ice_ufrag: String,
    /// The SFU's ICE password on this leg (secret).
    pub ice_pwd: Zeroizing<String>,
    /// The key that authenticates the SFU's notices to this participant.
    pub notice_key: Zeroizing<[u8; NOTICE_KEY_LEN]>,
}

impl std::fmt::Debug for Joined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Joined")
            .field("leg", &self.leg)
            .field("ice_ufrag", &self.ice_ufrag)
            .finish_non_exhaustive()
    }
}

/// Counters of one leg.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LegStats {
    /// Authenticated RTP packets received.
    pub rtp_received: u64,
    /// Authenticated RTCP packets received.
    pub rtcp_received: u64,
    /// Packets dropped as malformed.
    pub dropped_malformed: u64,
    /// Packets dropped by hop SRTP (authentication, replay, limits).
    pub dropped_srtp: u64,
    /// Packets dropped for an SSRC the participant did not declare.
    pub dropped_undeclared: u64,
    /// Audio packets received but not forwarded (not among the loudest N).
    pub audio_not_selected: u64,
    /// Packets forwarded to this leg.
    pub forwarded: u64,
    /// Packets that could not be protected for this leg (e.g. index reuse after a sender
    /// restarted its sequence numbers).
    pub send_errors: u64,
    /// Packets resent to this leg in answer to its NACKs.
    pub retransmitted: u64,
    /// NACKed packets that were not in the cache (or resent too often).
    pub nacks_unserved: u64,
    /// PLIs relayed to this leg (as the sender of the named SSRC), including the SFU's own
    /// keyframe requests for a layer switch.
    pub plis_relayed: u64,
    /// Simulcast layer switches made on this leg (as a receiver).
    pub layer_switches: u64,
    /// Transport-wide feedback messages received from this leg.
    pub transport_feedback: u64,
    /// Probe padding packets sent to this leg (bandwidth probing).
    pub probe_packets: u64,
    /// Video packets not forwarded to this leg because their sender is not among its last-N.
    pub video_not_selected: u64,
    /// Sequence numbers of this participant's video the SFU asked it to resend (lost between
    /// it and the SFU; each retry counted).
    pub uplink_nacked: u64,
    /// Of those, packets that then arrived (resent, or only late).
    pub uplink_recovered: u64,
    /// Times the SFU stopped asking this participant for missing video of one SSRC because
    /// too much was missing at once (more than 32 packets: left to keyframe requests).
    pub uplink_given_up: u64,
    /// Transport-wide feedback messages sent to this participant about the packets it sends
    /// (its uplink estimate comes from them).
    pub uplink_feedback_sent: u64,
    /// Probe padding packets received from this participant (recorded for its feedback, not
    /// forwarded).
    pub uplink_padding: u64,
    /// Simulcast layers this participant said it stopped (RTCP BYE for a layer SSRC).
    pub layers_stopped: u64,
}

/// The SFU's view of the path to one participant (what it sends on the leg).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LegBandwidth {
    /// The congestion controller's estimate, once the participant has sent transport-wide
    /// feedback (`None` before: then only its view requests limit its layers).
    pub estimate_bps: Option<u64>,
    /// Loss over the last second of feedback (0 without feedback).
    pub loss_fraction: f64,
    /// Queueing delay seen in the last feedback.
    pub queue_delay: Duration,
    /// Round-trip time, from the participant's receiver reports on the SFU's sender reports
    /// (RFC 3550 §6.4.1 LSR/DLSR); `None` before the first.
    pub rtt: Option<Duration>,
}

struct Participant {
    device: DeviceId,
    leg: LegId,
    streams: Vec<StreamDecl>,
    audio_level_ext: Option<u8>,
    ingress: SrtpContext,
    egress: SrtpContext,
    cache: PacketCache,
    stats: LegStats,
    /// When a PLI was last relayed to this participant, per its SSRC.
    last_pli: Vec<(u32, Instant)>,
    /// Its simulcast sources (as a sender).
    sources: Vec<Source>,
    /// What it gets of each simulcast source (as a receiver), by source SSRC. Kept while the
    /// source's sender reconnects (replaced by its own new join) so that its output stream
    /// continues; dropped when no participant sends the source any more.
    subs: Vec<Subscription>,
    /// The congestion controller of what the SFU sends on this leg.
    cc: CongestionController,
    /// Whether the participant has sent transport-wide feedback that the controller used
    /// (only then does its estimate limit the layers it gets).
    feedback_seen: bool,
    /// Whether `cc` tracks the packets sent on this leg (from the join, and again from the
    /// first feedback after it stopped for lack of any).
    cc_active: bool,
    /// Transport sequence number on the wire = the controller's + this.
    tseq_offset: u16,
    /// The next transport sequence number on the wire.
    tseq_next: u16,
    /// When `cc` started tracking the leg (the join, or the feedback that restarted it).
    cc_since: Instant,
    /// When the SFU sends this leg its next sender report.
    next_report: Option<Instant>,
    /// Round-trip time to the participant, from its receiver reports.
    rtt: Option<Duration>,
    /// Probe padding packets to send on this leg: when, probe cluster, padding length.
    probes: VecDeque<(Instant, u32, u8)>,
    /// Sequence number of the SFU's padding stream on this leg.
    padding_seq: u16,
    /// Gaps in the video this participant sends, per SSRC, to NACK it for (see
    /// [`UplinkNacks`]).
    uplink: Vec<UplinkNacks>,
    /// Arrivals of this participant's transport-wide sequence numbers, reported back to it
    /// every [`UPLINK_FEEDBACK_INTERVAL`].
    uplink_twcc: TwccRecorder,
    /// When the next such report is due (`None` while nothing is pending).
    uplink_feedback_at: Option<Instant>,
}

/// The loss between a sender and the SFU on one of its video SSRCs: missing sequence numbers
/// are NACKed to the sender, which resends them from its send history, so a packet lost on
/// the uplink costs every receiver a late packet instead of a keyframe (docs/sfu.md, "Uplink
/// loss").
#[derive(Debug)]
struct UplinkNacks {
    ssrc: u32,
    /// Highest extended sequence number seen.
    highest: Option<u64>,
    scheduler: NackScheduler,
    /// When `scheduler` next has NACKs to send (kept here: asking the scheduler costs a walk
    /// over every missing packet, too much per packet when the uplink loses many).
    due: Option<Instant>,
}

/// Round trip assumed to pace the retries of uplink NACKs when the leg has no measured RTT.
const UPLINK_NACK_RTT: Duration = Duration::from_millis(100);

/// Most packets of one SSRC the SFU asks a sender for at once: a longer gap (a burst, or the
/// SFU's own receive buffer overflowing) is left to the receivers' keyframe requests, and so
/// is everything missing when more than this is. Bounds the NACK work of an overloaded SFU,
/// which would otherwise grow with the input it drops.
const UPLINK_MAX_MISSING: usize = 32;

/// A new gap is NACKed this long after it is seen: gaps of a few milliseconds go out in one
/// NACK, and a packet only reordered by less than this is not asked for.
const UPLINK_NACK_DELAY: Duration = Duration::from_millis(5);

impl UplinkNacks {
    fn new(ssrc: u32) -> Self {
        let mut scheduler = NackScheduler::default();
        // Past this, receivers have given up the frame (and asked for a keyframe).
        scheduler.max_age = Duration::from_millis(500);
        scheduler.max_retries = 3;
        // The first NACK is repeated only after a round trip (the sender answers a repeat
        // only if it is late; the hop is one network path).
        scheduler.repeat_after = UPLINK_NACK_RTT;
        Self {
            ssrc,
            highest: None,
            scheduler,
            due: None,
        }
    }

    /// The extended sequence number of `seq` (the nearest to the highest seen).
    fn extend(&mut self, seq: u16) -> u64 {
        let ext = match self.highest {
            None => u64::from(seq) + (1 << 16),
            Some(h) => {
                let delta = i64::from(seq.wrapping_sub(h as u16) as i16);
                (h as i64 + delta).max(0) as u64
            }
        };
        if self.highest.is_none_or(|h| ext > h) {
            self.highest = Some(ext);
        }
        ext
    }
}

impl Participant {
    /// Records an authenticated video packet of this participant for uplink loss (a new gap
    /// is NACKed [`UPLINK_NACK_DELAY`] later).
    fn track_uplink(&mut self, now: Instant, ssrc: u32, seq: u16) {
        let Some(u) = self.uplink.iter_mut().find(|u| u.ssrc == ssrc) else {
            return;
        };
        let before = u.highest;
        let ext = u.extend(seq);
        if before.is_some_and(|h| ext > h + 1 + UPLINK_MAX_MISSING as u64)
            || u.scheduler.missing_count() > UPLINK_MAX_MISSING
        {
            // Too much to ask for: start over from this packet.
            self.stats.uplink_given_up += 1;
            let mut fresh = UplinkNacks::new(ssrc);
            fresh.extend(seq);
            fresh.highest = Some(ext);
            fresh.scheduler.on_packet(now, ext);
            *u = fresh;
            return;
        }
        if u.scheduler.on_packet(now, ext) {
            self.stats.uplink_recovered += 1;
        }
        if before.is_some_and(|h| ext > h + 1) {
            let at = now + UPLINK_NACK_DELAY;
            u.due = Some(u.due.map_or(at, |d| d.min(at)));
        }
    }

    /// Sends the uplink NACKs due: one generic NACK per SSRC with packets to ask for.
    fn send_uplink_nacks(
        &mut self,
        config: &SfuConfig,
        now: Instant,
        transmits: &mut VecDeque<Transmit>,
    ) {
        let rtt = self.rtt.unwrap_or(UPLINK_NACK_RTT);
        let mut packets = Vec::new();
        for u in &mut self.uplink {
            if u.due.is_none_or(|d| d > now) {
                continue;
            }
            let lost = u.scheduler.poll_nacks(now, rtt);
            u.due = u.scheduler.poll_timeout();
            if lost.is_empty() {
                continue;
            }
            self.stats.uplink_nacked += lost.len() as u64;
            packets.push(hush_media::rtcp::RtcpPacket::Nack(hush_media::rtcp::Nack {
                sender_ssrc: config.rtcp_ssrc,
                media_ssrc: u.ssrc,
                lost: lost.iter().map(|&s| s as u16).collect(),
            }));
        }
        if packets.is_empty() {
            return;
        }
        let out = hush_media::rtcp::write_compound(&packets);
        self.send_rtcp(now, out, transmits, "uplink nack");
    }

    /// Records the arrival of one of this participant's transport-wide sequence numbers (an
    /// authenticated packet).
    fn record_uplink(&mut self, now: Instant, seq: u16) {
        self.uplink_twcc.record(now, seq);
        if self.uplink_feedback_at.is_none() {
            self.uplink_feedback_at = Some(now + UPLINK_FEEDBACK_INTERVAL);
        }
    }

    /// Sends this participant the transport-wide feedback due: the arrivals of its packets
    /// since the last one. It counts in what the leg's controller sees sent.
    fn send_uplink_feedback(
        &mut self,
        config: &SfuConfig,
        now: Instant,
        transmits: &mut VecDeque<Transmit>,
    ) {
        if self.uplink_feedback_at.is_none_or(|t| now < t) {
            return;
        }
        if let Some(fb) = self.uplink_twcc.build(config.rtcp_ssrc, 0) {
            let out = hush_media::rtcp::write_compound(&[
                hush_media::rtcp::RtcpPacket::TransportFeedback(fb),
            ]);
            if self.send_rtcp(now, out, transmits, "uplink feedback") {
                self.stats.uplink_feedback_sent += 1;
            }
        }
        self.uplink_feedback_at = self
            .uplink_twcc
            .has_pending()
            .then_some(now + UPLINK_FEEDBACK_INTERVAL);
    }

    /// When the next uplink NACK retry is due.
    fn uplink_deadline(&self) -> Option<Instant> {
        self.uplink.iter().filter_map(|u| u.due).min()
    }

    fn stream(&self, ssrc: u32) -> Option<&StreamDecl> {
        self.streams.iter().find(|s| s.ssrc == ssrc)
    }

    /// This receiver's subscription to `source`, created if new (`None` never happens).
    fn sub_mut(&mut self, source: u32) -> Option<&mut Subscription> {
        let i = match self.subs.iter().position(|s| s.source == source) {
            Some(i) => i,
            None => {
                self.subs.push(Subscription::new(source));
                self.subs.len().checked_sub(1)?
            }
        };
        self.subs.get_mut(i)
    }

    /// The bandwidth share of one simulcast source at this receiver, if it has an estimate:
    /// 90 % of the leg's estimate (the rest for audio and RTCP) split evenly among the sources
    /// it gets or waits for.
    fn video_share(&self) -> Option<u64> {
        if !self.feedback_seen {
            return None;
        }
        let sources = self
            .subs
            .iter()
            .filter(|s| s.current.is_some() || s.target.is_some())
            .count()
            .max(1) as u64;
        Some(self.cc.target_bps() / 10 * 9 / sources)
    }

    /// The transport-wide sequence number of the next packet sent on this leg, registered with
    /// the congestion controller while it tracks the leg.
    fn next_transport_seq(&mut self, now: Instant, wire: usize, probe: Option<u32>) -> u16 {
        let seq = if self.cc_active {
            self.cc
                .on_packet_sent(now, wire, probe)
                .wrapping_add(self.tseq_offset)
        } else {
            self.tseq_next
        };
        self.tseq_next = seq.wrapping_add(1);
        seq
    }

    /// Protects one RTCP packet the SFU originates for this leg and queues it, counted as sent
    /// without a transport sequence number. `what` names the packet in the trace of a failure
    /// (counted in `send_errors`). True if it was queued.
    fn send_rtcp(
        &mut self,
        now: Instant,
        mut out: Vec<u8>,
        transmits: &mut VecDeque<Transmit>,
        what: &'static str,
    ) -> bool {
        match self.egress.protect_rtcp(&mut out) {
            Ok(()) => {
                self.untracked_sent(now, out.len() + UDP_IP_OVERHEAD);
                transmits.push_back(Transmit {
                    leg: self.leg,
                    bytes: out,
                });
                true
            }
            Err(e) => {
                self.stats.send_errors += 1;
                trace!(leg = %self.leg, error = %e, what, "rtcp not protected");
                false
            }
        }
    }

    /// Bytes sent on this leg without a transport sequence number (RTCP, resends).
    fn untracked_sent(&mut self, now: Instant, wire: usize) {
        if self.cc_active {
            self.cc.on_untracked_sent(now, wire);
        }
    }

    /// Handles one transport feedback message from this participant.
    fn on_transport_feedback(
        &mut self,
        config: &SfuConfig,
        now: Instant,
        mut fb: hush_media::rtcp::TransportFeedback,
    ) {
        self.stats.transport_feedback += 1;
        if !self.cc_active {
            // The controller stopped tracking this leg (no feedback for a while): start a
            // fresh one whose sequence numbers continue the wire's. This message is about
            // packets sent before, which it does not know.
            self.cc = CongestionController::new(config.leg_cc.clone());
            self.cc_active = true;
            self.cc_since = now;
            self.tseq_offset = self.tseq_next;
            return;
        }
        fb.base_seq = fb.base_seq.wrapping_sub(self.tseq_offset);
        self.cc.on_feedback(now, &fb);
        self.feedback_seen = true;
    }

    /// Stops tracking a leg that has sent no usable feedback for [`CC_IDLE`] since tracking
    /// started: a participant that does not send transport feedback costs no history on the
    /// packet path.
    fn idle_cc(&mut self, config: &SfuConfig, now: Instant) {
        if self.cc_active
            && !self.feedback_seen
            && now.saturating_duration_since(self.cc_since) > CC_IDLE
        {
            self.cc = CongestionController::new(config.leg_cc.clone());
            self.cc_active = false;
        }
    }

    /// Sends one probe packet: RTP under the SFU's own SSRC carrying only `padding` bytes of
    /// RFC 3550 padding, with the leg's transport-wide sequence number, counted in `cluster`.
    fn send_padding(
        &mut self,
        config: &SfuConfig,
        now: Instant,
        cluster: u32,
        padding: u8,
        transmits: &mut VecDeque<Transmit>,
    ) {
        self.padding_seq = self.padding_seq.wrapping_add(1);
        let mut src = Vec::with_capacity(12 + usize::from(padding));
        src.extend_from_slice(&[0xa0, PADDING_PAYLOAD_TYPE]);
        src.extend_from_slice(&self.padding_seq.to_be_bytes());
        src.extend_from_slice(&[0; 4]);
        src.extend_from_slice(&config.rtcp_ssrc.to_be_bytes());
        src.resize(12 + usize::from(padding) - 1, 0);
        src.push(padding);
        let mut out = Vec::with_capacity(src.len() + 8 + Suite::RTP_OVERHEAD);
        let Some(at) = packet::copy_with_transport_seq(&src, &mut out) else {
            return;
        };
        let wire = out.len() + Suite::RTP_OVERHEAD + UDP_IP_OVERHEAD;
        let tseq = self.next_transport_seq(now, wire, Some(cluster));
        if let Some(field) = out.get_mut(at..at + 2) {
            field.copy_from_slice(&tseq.to_be_bytes());
        }
        match self.egress.protect_rtp(&mut out) {
            Ok(()) => {
                self.stats.probe_packets += 1;
                transmits.push_back(Transmit {
                    leg: self.leg,
                    bytes: out,
                });
            }
            Err(e) => {
                self.stats.send_errors += 1;
                trace!(leg = %self.leg, error = %e, "probe failed");
            }
        }
    }

    /// Protects and queues one RTP packet for this leg: a copy of `src` with the leg's
    /// transport-wide sequence number (registered with its congestion controller), and with
    /// `(ssrc, seq, timestamp)` written into the header when `rewrite` is set. Cached under
    /// that SSRC and sequence number for NACKs.
    fn send_rtp(
        &mut self,
        now: Instant,
        src: &[u8],
        (ssrc, seq, timestamp): (u32, u16, u32),
        rewrite: bool,
        transmits: &mut VecDeque<Transmit>,
    ) {
        let mut out = Vec::with_capacity(src.len() + 8 + Suite::RTP_OVERHEAD);
        let at = packet::copy_with_transport_seq(src, &mut out);
        if rewrite {
            packet::rewrite_rtp(&mut out, ssrc, seq, timestamp);
        }
        let wire = out.len() + Suite::RTP_OVERHEAD + UDP_IP_OVERHEAD;
        match at.and_then(|at| out.get_mut(at..at + 2)) {
            Some(field) => {
                let tseq = self.next_transport_seq(now, wire, None);
                field.copy_from_slice(&tseq.to_be_bytes());
            }
            None => self.untracked_sent(now, wire),
        }
        match self.egress.protect_rtp(&mut out) {
            Ok(()) => {
                self.cache.insert(ssrc, seq, &out);
                self.stats.forwarded += 1;
                transmits.push_back(Transmit {
                    leg: self.leg,
                    bytes: out,
                });
            }
            Err(e) => {
                self.stats.send_errors += 1;
                trace!(leg = %self.leg, error = %e, "forward failed");
            }
        }
    }
}

struct Call {
    roster: RosterState,
    participants: Vec<Participant>,
    speaker: SpeakerDetector<DeviceId>,
    /// Legs whose audio is forwarded under loudest-N, and until when that choice holds.
    selected: Vec<LegId>,
    /// The participants, most recent speaker first (video last-N).
    recency: Vec<DeviceId>,
    selected_until: Option<Instant>,
}

impl Call {
    fn index_of(&self, leg: LegId) -> Option<usize> {
        self.participants.iter().position(|p| p.leg == leg)
    }

    /// Forgets the subscriptions of receivers to sources no participant sends any more (those
    /// of a participant that reconnected with the same SSRCs stay, so its output streams
    /// continue). Bounds them by the sources present.
    fn prune_subs(&mut self) {
        let present: Vec<u32> = self
            .participants
            .iter()
            .flat_map(|p| p.sources.iter().map(|s| s.ssrc))
            .collect();
        for p in &mut self.participants {
            p.subs.retain(|s| present.contains(&s.source));
        }
    }

    /// Moves whoever speaks now to the front of the recency order (the louder first, the
    /// dominant speaker before all).
    fn refresh_recency(&mut self, now: Instant) {
        let mut speaking: Vec<(f32, DeviceId)> = self
            .participants
            .iter()
            .filter(|p| self.speaker.is_speaking(now, p.device))
            .map(|p| (self.speaker.score(now, p.device), p.device))
            .collect();
        // Quietest first, so that the loudest ends up in front.
        speaking.sort_by(|a, b| a.0.total_cmp(&b.0));
        let dominant = self.speaker.dominant();
        for device in speaking.into_iter().map(|(_, d)| d).chain(dominant) {
            if let Some(at) = self.recency.iter().position(|d| *d == device) {
                self.recency.remove(at);
                self.recency.insert(0, device);
            }
        }
    }
}

/// Whether `receiver` gets `sender`'s video under last-N: `sender` is among the first `n`
/// of the recency order once `receiver` itself is left out.
fn in_last_n(recency: &[DeviceId], n: Option<usize>, sender: DeviceId, receiver: DeviceId) -> bool {
    let Some(n) = n else {
        return true;
    };
    recency
        .iter()
        .filter(|d| **d != receiver)
        .take(n)
        .any(|d| *d == sender)
}

impl Call {
    /// Recomputes the loudest-N set when the last one is older than a speaker bucket.
    fn refresh_selection(&mut self, now: Instant, n: usize, bucket: Duration) {
        if self.selected_until.is_some_and(|t| now < t) {
            return;
        }
        let mut ranked: Vec<(f32, LegId)> = self
            .participants
            .iter()
            .map(|p| (self.speaker.score(now, p.device), p.leg))
            .collect();
        // Highest score first; among equals, the earlier leg.
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        self.selected.clear();
        self.selected
            .extend(ranked.into_iter().take(n).map(|(_, leg)| leg));
        self.selected_until = Some(now + bucket);
    }
}

/// The selective forwarding unit, sans-IO: packets, joins and time in; packets, events and
/// deadlines out. See the crate docs for the loop that drives it.
///
/// Methods:
/// - inputs: [`handle_join`](Self::handle_join), [`update_roster`](Self::update_roster),
///   [`leave`](Self::leave), [`handle_input`](Self::handle_input),
///   [`handle_timeout`](Self::handle_timeout);
/// - outputs, drained after each input: [`poll_transmit`](Self::poll_transmit),
///   [`poll_event`](Self::poll_event), [`poll_timeout`](Self::poll_timeout);
/// - getters: [`public_key`](Self::public_key), [`leg_stats`](Self::leg_stats),
///   [`participants`](Self::participants), [`dominant_speaker`](Self::dominant_speaker).
///
/// Instants passed in must never go backwards. Nothing here reads a clock; the wall clock that
/// join timestamps are checked against is passed to [`handle_join`](Self::handle_join).
pub struct Sfu {
    config: SfuConfig,
    key: SfuSigningKey,
    guard: JoinGuard,
    calls: HashMap<CallId, Call>,
    legs: HashMap<LegId, CallId>,
    next_leg: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    next_tick: Option<Instant>,
    /// The origin of the SFU's NTP-like report clock (set at the first timeout).
    epoch: Option<Instant>,
    /// Simulcast layer switches since the SFU started (over all legs, gone ones included).
    layer_switches: u64,
    /// The earliest probe packet due on any leg (as of the last timeout).
    probe_deadline: Option<Instant>,
    /// The earliest uplink NACK due of any participant.
    uplink_deadline: Option<Instant>,
    /// The earliest transport-wide feedback to a sender due.
    feedback_deadline: Option<Instant>,
    /// Scratch buffers reused across packets.
    buf: Vec<u8>,
    feedback: Vec<Feedback>,
}

impl Sfu {
    /// A new SFU with its long-term key.
    pub fn new(config: SfuConfig, key: SfuSigningKey) -> Result<Self, Error> {
        if config.max_participants == 0 {
            return Err(Error::InvalidConfig("max_participants must be at least 1"));
        }
        if config.suites.is_empty() {
            return Err(Error::InvalidConfig("at least one suite"));
        }
        if config.loudest_n == Some(0) {
            return Err(Error::InvalidConfig("loudest_n must be at least 1"));
        }
        if config.video_last_n == Some(0) {
            return Err(Error::InvalidConfig("video_last_n must be at least 1"));
        }
        if config.speaker.bucket.is_zero() {
            return Err(Error::InvalidConfig("speaker bucket must not be zero"));
        }
        // Checked once here so leg setup cannot fail on it later.
        srtp_config(&config, MAX_STREAMS)?;
        srtp_config(&config, egress_ssrcs(&config))?;
        Ok(Self {
            guard: JoinGuard::new(
                config.max_skew,
                config.replay_capacity,
                config.joins_per_device,
            ),
            config,
            key,
            calls: HashMap::new(),
            legs: HashMap::new(),
            next_leg: 1,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_tick: None,
            epoch: None,
            layer_switches: 0,
            probe_deadline: None,
            uplink_deadline: None,
            feedback_deadline: None,
            buf: Vec::with_capacity(1500),
            feedback: Vec::new(),
        })
    }

    /// The SFU's public key, which clients are configured with.
    pub fn public_key(&self) -> SfuPublicKey {
        self.key.public_key()
    }

    /// Handles a join request (and, to create the call, its first roster signed by the
    /// joining device). `unix_ms` is the SFU's wall clock in milliseconds since the Unix epoch.
    ///
    /// Checks, in order (docs/sfu.md): the device signature, freshness, the suite, admission
    /// (roster, participant limit, SSRCs), replay; then answers. A device already in the call
    /// is replaced (its old leg closed with [`LeaveReason::Replaced`]). On error nothing
    /// changes except that a replay-checked request stays recorded.
    pub fn handle_join<R: rand::CryptoRng + ?Sized>(
        &mut self,
        now: Instant,
        unix_ms: u64,
        request: &[u8],
        roster: Option<&[u8]>,
        rng: &mut R,
    ) -> Result<Joined, JoinError> {
        let req = JoinRequest::decode(request)?;
        self.guard.check_fresh(&req, unix_ms)?;
        let call_id = req.call_id();
        let device = req.device();
        if !req.suite().is_some_and(|s| self.config.suites.contains(&s)) {
            return Err(JoinError::UnsupportedSuite(req.suite_code()));
        }
        let new_roster = match (self.calls.get(&call_id), roster) {
            (Some(_), Some(_)) => return Err(JoinError::CallExists(call_id)),
            (None, None) => return Err(JoinError::NoSuchCall(call_id)),
            (None, Some(bytes)) => {
                let r = Roster::decode(bytes)?;
                if r.call_id() != call_id {
                    return Err(RosterError::WrongCall {
                        expected: call_id,
                        got: r.call_id(),
                    }
                    .into());
                }
                if r.creator() != device {
                    return Err(RosterError::NotCreator.into());
                }
                Some(RosterState::new(r, self.config.max_roster_members)?)
            }
            (Some(call), None) => {
                if !call.roster.admits(&device) {
                    return Err(JoinError::NotOnRoster(device));
                }
                let others = call
                    .participants
                    .iter()
                    .filter(|p| p.device != device)
                    .count();
                if others >= self.config.max_participants {
                    return Err(JoinError::CallFull {
                        limit: self.config.max_participants,
                    });
                }
                for s in req.streams() {
                    let taken = call
                        .participants
                        .iter()
                        .filter(|p| p.device != device)
                        .any(|p| p.stream(s.ssrc).is_some());
                    if taken {
                        return Err(JoinError::SsrcInUse(s.ssrc));
                    }
                }
                None
            }
        };
        if let Some(s) = req
            .streams()
            .iter()
            .find(|s| s.ssrc == self.config.rtcp_ssrc)
        {
            return Err(JoinError::SsrcInUse(s.ssrc));
        }
        self.guard.record(&req, unix_ms)?;
        let (answer, keys) = self.key.answer(&req, rng)?;
        let ingress = keys
            .recv_context(srtp_config(&self.config, MAX_STREAMS).map_err(internal)?)
            .map_err(JoinError::Srtp)?;
        let egress = keys
            .send_context(srtp_config(&self.config, egress_ssrcs(&self.config)).map_err(internal)?)
            .map_err(JoinError::Srtp)?;

        let leg = LegId(self.next_leg);
        self.next_leg += 1;
        if let Some(roster) = new_roster {
            info!(call = %call_id, creator = %device, "call created");
            self.calls.insert(
                call_id,
                Call {
                    roster,
                    participants: Vec::new(),
                    speaker: SpeakerDetector::new(self.config.speaker.clone(), now),
                    selected: Vec::new(),
                    recency: Vec::new(),
                    selected_until: None,
                },
            );
        }
        let old_leg = self
            .calls
            .get(&call_id)
            .and_then(|c| c.participants.iter().find(|p| p.device == device))
            .map(|p| p.leg);
        if let Some(old) = old_leg {
            self.remove_participant(call_id, old, LeaveReason::Replaced);
        }
        let call = self
            .calls
            .get_mut(&call_id)
            .ok_or(JoinError::Internal("call vanished"))?;
        call.participants.push(Participant {
            device,
            leg,
            streams: req.streams().to_vec(),
            audio_level_ext: req.audio_level_ext(),
            ingress,
            egress,
            cache: PacketCache::new(self.config.cache_packets, self.config.max_resends),
            stats: LegStats::default(),
            last_pli: Vec::new(),
            sources: Source::from_decl(req.streams()),
            subs: Vec::new(),
            cc: CongestionController::new(self.config.leg_cc.clone()),
            feedback_seen: false,
            cc_active: true,
            tseq_offset: 0,
            tseq_next: 0,
            cc_since: now,
            next_report: None,
            rtt: None,
            probes: VecDeque::new(),
            padding_seq: 0,
            uplink: req
                .streams()
                .iter()
                .filter(|d| d.kind != StreamKind::Audio)
                .map(|d| UplinkNacks::new(d.ssrc))
                .collect(),
            uplink_twcc: TwccRecorder::default(),
            uplink_feedback_at: None,
        });
        call.selected_until = None;
        call.prune_subs();
        if !call.recency.contains(&device) {
            call.recency.push(device);
        }
        self.legs.insert(leg, call_id);
        info!(call = %call_id, %device, %leg, "participant joined");
        self.events.push_back(Event::ParticipantJoined {
            call: call_id,
            device,
            leg,
            streams: announced_streams(req.streams()),
        });
        Ok(Joined {
            leg,
            answer: answer.encode(),
            ice_ufrag: keys.ice_ufrag().to_owned(),
            ice_pwd: Zeroizing::new(keys.ice_pwd().to_owned()),
            notice_key: Zeroizing::new(*keys.notice_key()),
        })
    }

    /// Applies a roster update (signed by the call's creator, newer than the one in force) and
    /// kicks the participants it removes. Returns the kicked devices that were in the call.
    pub fn update_roster(&mut self, roster: &[u8]) -> Result<Vec<DeviceId>, RosterError> {
        let r = Roster::decode(roster)?;
        let call_id = r.call_id();
        let call = self
            .calls
            .get_mut(&call_id)
            .ok_or(RosterError::NoSuchCall(call_id))?;
        let removed = call.roster.update(r)?;
        let kicked: Vec<(DeviceId, LegId)> = call
            .participants
            .iter()
            .filter(|p| removed.contains(&p.device))
            .map(|p| (p.device, p.leg))
            .collect();
        for (device, leg) in &kicked {
            info!(call = %call_id, %device, "participant kicked");
            self.remove_participant(call_id, *leg, LeaveReason::Kicked);
        }
        Ok(kicked.into_iter().map(|(d, _)| d).collect())
    }

    /// The driver reports a leg gone (closed, timed out).
    pub fn leave(&mut self, leg: LegId) -> Result<(), Error> {
        let call_id = *self.legs.get(&leg).ok_or(Error::UnknownLeg(leg))?;
        self.remove_participant(call_id, leg, LeaveReason::Left);
        Ok(())
    }

    fn remove_participant(&mut self, call_id: CallId, leg: LegId, reason: LeaveReason) {
        self.legs.remove(&leg);
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        let Some(i) = call.index_of(leg) else {
            return;
        };
        let p = call.participants.remove(i);
        call.speaker.remove(p.device);
        if reason != LeaveReason::Replaced {
            call.recency.retain(|d| *d != p.device);
            call.prune_subs();
        }
        call.selected_until = None;
        // Recipients forget the cached packets of the leaver. Their egress contexts keep the
        // leaver's SSRC state on purpose: forgetting it would let a rejoin with restarted
        // sequence numbers reuse AES-GCM nonces.
        for q in &mut call.participants {
            for s in &p.streams {
                q.cache.forget_ssrc(s.ssrc);
            }
            for src in &p.sources {
                if let Some(sub) = q.subs.iter_mut().find(|s| s.source == src.ssrc) {
                    sub.reset();
                }
            }
        }
        debug!(call = %call_id, device = %p.device, %leg, ?reason, "participant removed");
        self.events.push_back(Event::ParticipantLeft {
            call: call_id,
            device: p.device,
            leg,
            reason,
        });
        if call.participants.is_empty() {
            self.calls.remove(&call_id);
            info!(call = %call_id, "call ended");
            self.events.push_back(Event::CallEnded { call: call_id });
        }
    }

    /// Handles one datagram received on `leg` (SRTP or SRTCP, told apart as RFC 5761 says).
    ///
    /// An error means the packet was dropped; it is counted in that leg's stats and costs no
    /// other participant anything. The driver can log it and go on.
    pub fn handle_input(
        &mut self,
        now: Instant,
        leg: LegId,
        packet: &[u8],
    ) -> Result<(), PacketError> {
        let call_id = *self.legs.get(&leg).ok_or(PacketError::UnknownLeg(leg))?;
        let call = self
            .calls
            .get_mut(&call_id)
            .ok_or(PacketError::UnknownLeg(leg))?;
        let i = call.index_of(leg).ok_or(PacketError::UnknownLeg(leg))?;
        let result = if packet::is_rtcp(packet) {
            handle_rtcp(
                &self.config,
                self.epoch,
                call,
                i,
                now,
                packet,
                &mut self.buf,
                &mut self.feedback,
                &mut self.transmits,
            )
        } else {
            let r = handle_rtp(
                &self.config,
                call,
                i,
                now,
                packet,
                &mut self.buf,
                &mut self.transmits,
                &mut self.layer_switches,
            );
            if r.is_ok() && self.next_tick.is_none() {
                self.next_tick = Some(now + self.config.speaker.bucket);
            }
            if let Some(p) = call.participants.get(i) {
                if let Some(t) = p.uplink_deadline() {
                    self.uplink_deadline = Some(self.uplink_deadline.map_or(t, |d| d.min(t)));
                }
                if let Some(t) = p.uplink_feedback_at {
                    self.feedback_deadline = Some(self.feedback_deadline.map_or(t, |d| d.min(t)));
                }
            }
            r
        };
        if let Err(e) = &result {
            if let Some(p) = call.participants.get_mut(i) {
                match e {
                    PacketError::Srtp(_) => p.stats.dropped_srtp += 1,
                    PacketError::UndeclaredSsrc(_) => p.stats.dropped_undeclared += 1,
                    _ => p.stats.dropped_malformed += 1,
                }
            }
            trace!(%leg, error = %e, "packet dropped");
        }
        result
    }

    /// Runs what is due at `now`: the dominant speaker evaluation of every call.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.send_due_probes(now);
        self.send_uplink_nacks(now);
        self.send_uplink_feedback(now);
        if self.next_tick.is_none_or(|t| t <= now) {
            self.tick(now);
        }
        self.probe_deadline = self
            .calls
            .values()
            .flat_map(|c| &c.participants)
            .filter_map(|p| p.probes.front().map(|(t, _, _)| *t))
            .min();
    }

    /// The periodic work: dominant speaker, last-N order, sender reports, controllers' idle
    /// checks and probes.
    fn tick(&mut self, now: Instant) {
        let epoch = *self.epoch.get_or_insert(now);
        for (call_id, call) in &mut self.calls {
            if let Some(device) = call.speaker.evaluate(now) {
                debug!(call = %call_id, %device, "dominant speaker");
                self.events.push_back(Event::ActiveSpeaker {
                    call: *call_id,
                    device,
                });
            }
            call.refresh_recency(now);
            for p in &mut call.participants {
                if p.next_report.is_none_or(|t| t <= now) {
                    p.next_report = Some(now + REPORT_INTERVAL);
                    send_report(&self.config, p, ntp32(epoch, now), &mut self.transmits, now);
                }
                p.idle_cc(&self.config, now);
                if p.feedback_seen {
                    if let Some(probe) = p.cc.poll_probe(now) {
                        schedule_probe(p, now, probe);
                    }
                }
            }
        }
        self.next_tick = if self.calls.is_empty() {
            None
        } else {
            Some(now + self.config.speaker.bucket)
        };
    }

    /// A receiver asks for at most `max_height` pixels of the simulcast source `source` (its
    /// source SSRC, as announced); 0 stops that source for it. Takes effect at the source's
    /// next packet (a switch still waits for a keyframe). The default is no limit.
    pub fn request_view(&mut self, leg: LegId, source: u32, max_height: u16) -> Result<(), Error> {
        let call = self
            .legs
            .get(&leg)
            .and_then(|c| self.calls.get_mut(c))
            .ok_or(Error::UnknownLeg(leg))?;
        let exists = call
            .participants
            .iter()
            .any(|p| p.leg != leg && p.sources.iter().any(|s| s.ssrc == source));
        if !exists {
            return Err(Error::UnknownSource(source));
        }
        let me = call
            .participants
            .iter_mut()
            .find(|p| p.leg == leg)
            .ok_or(Error::UnknownLeg(leg))?;
        debug!(%leg, source, max_height, "view requested");
        if let Some(sub) = me.sub_mut(source) {
            sub.max_height = max_height;
        }
        Ok(())
    }

    /// What the SFU estimates of the path to `leg` (from its transport-wide feedback).
    pub fn leg_bandwidth(&self, leg: LegId) -> Option<LegBandwidth> {
        let call = self.calls.get(self.legs.get(&leg)?)?;
        let me = call.participants.iter().find(|p| p.leg == leg)?;
        Some(LegBandwidth {
            estimate_bps: me.feedback_seen.then(|| me.cc.target_bps()),
            loss_fraction: me.cc.loss_fraction(),
            queue_delay: me.cc.queue_delay(),
            rtt: me.rtt,
        })
    }

    /// Simulcast layer switches made since the SFU started, over all legs (a counter).
    pub fn layer_switches_total(&self) -> u64 {
        self.layer_switches
    }

    /// The layer index of simulcast source `source` that `leg` receives now, if any.
    pub fn forwarded_layer(&self, leg: LegId, source: u32) -> Option<u8> {
        let call = self.calls.get(self.legs.get(&leg)?)?;
        let me = call.participants.iter().find(|p| p.leg == leg)?;
        let sub = me.subs.iter().find(|s| s.source == source)?;
        sub.current.and_then(|c| u8::try_from(c).ok())
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should be called next, if at all.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.next_tick,
            self.probe_deadline,
            self.uplink_deadline,
            self.feedback_deadline,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Sends the uplink NACK retries that are due.
    fn send_uplink_nacks(&mut self, now: Instant) {
        if self.uplink_deadline.is_none_or(|t| t > now) {
            return;
        }
        let mut next: Option<Instant> = None;
        for call in self.calls.values_mut() {
            for p in &mut call.participants {
                if p.uplink_deadline().is_some_and(|t| t <= now) {
                    p.send_uplink_nacks(&self.config, now, &mut self.transmits);
                }
                if let Some(t) = p.uplink_deadline() {
                    next = Some(next.map_or(t, |n| n.min(t)));
                }
            }
        }
        self.uplink_deadline = next;
    }

    /// Sends the transport-wide feedback due to senders.
    fn send_uplink_feedback(&mut self, now: Instant) {
        if self.feedback_deadline.is_none_or(|t| t > now) {
            return;
        }
        let mut next: Option<Instant> = None;
        for call in self.calls.values_mut() {
            for p in &mut call.participants {
                p.send_uplink_feedback(&self.config, now, &mut self.transmits);
                if let Some(t) = p.uplink_feedback_at {
                    next = Some(next.map_or(t, |n| n.min(t)));
                }
            }
        }
        self.feedback_deadline = next;
    }

    /// Sends the probe padding packets that are due.
    fn send_due_probes(&mut self, now: Instant) {
        for call in self.calls.values_mut() {
            for p in &mut call.participants {
                while let Some(&(at, cluster, padding)) = p.probes.front() {
                    if at > now {
                        break;
                    }
                    p.probes.pop_front();
                    p.send_padding(&self.config, now, cluster, padding, &mut self.transmits);
                }
            }
        }
    }

    /// The counters of `leg`.
    pub fn leg_stats(&self, leg: LegId) -> Option<&LegStats> {
        let call = self.calls.get(self.legs.get(&leg)?)?;
        call.participants
            .iter()
            .find(|p| p.leg == leg)
            .map(|p| &p.stats)
    }

    /// The devices and legs in `call`.
    pub fn participants(&self, call: &CallId) -> Vec<(DeviceId, LegId)> {
        self.calls.get(call).map_or_else(Vec::new, |c| {
            c.participants.iter().map(|p| (p.device, p.leg)).collect()
        })
    }

    /// The dominant speaker of `call`, if any.
    pub fn dominant_speaker(&self, call: &CallId) -> Option<DeviceId> {
        self.calls.get(call)?.speaker.dominant()
    }

    /// The roster version in force for `call`.
    pub fn roster_version(&self, call: &CallId) -> Option<u64> {
        Some(self.calls.get(call)?.roster.current().version())
    }
}

impl std::fmt::Debug for Sfu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sfu")
            .field("public_key", &self.key.public_key())
            .field("calls", &self.calls.len())
            .field("legs", &self.legs.len())
            .finish_non_exhaustive()
    }
}

fn egress_ssrcs(config: &SfuConfig) -> usize {
    // Every other participant's streams, plus the SFU's own RTCP SSRC.
    config.max_participants.saturating_mul(MAX_STREAMS) + 1
}

fn srtp_config(config: &SfuConfig, max_ssrcs: usize) -> Result<SrtpConfig, Error> {
    SrtpConfig::builder()
        .replay_window(config.replay_window)
        .max_ssrcs(max_ssrcs)
        .build()
        .map_err(|_| Error::InvalidConfig("replay_window or max_participants out of range"))
}

fn internal(_: Error) -> JoinError {
    JoinError::Internal("srtp config checked at construction")
}

/// The RTP path: authenticate, read the level, pick recipients, protect per recipient.
#[allow(clippy::too_many_arguments)]
fn handle_rtp(
    config: &SfuConfig,
    call: &mut Call,
    i: usize,
    now: Instant,
    packet: &[u8],
    buf: &mut Vec<u8>,
    transmits: &mut VecDeque<Transmit>,
    switches: &mut u64,
) -> Result<(), PacketError> {
    let sender = call
        .participants
        .get_mut(i)
        .ok_or(PacketError::Malformed("no sender"))?;
    // The header is in the clear (authenticated, not encrypted): read it first, act on it only
    // once the packet has authenticated.
    let info = packet::parse_rtp(packet, sender.audio_level_ext)
        .ok_or(PacketError::Malformed("rtp header"))?;
    let kind = sender
        .stream(info.ssrc)
        .ok_or(PacketError::UndeclaredSsrc(info.ssrc))?
        .kind;
    buf.clear();
    buf.extend_from_slice(packet);
    sender
        .ingress
        .unprotect_rtp(buf)
        .map_err(PacketError::Srtp)?;
    sender.stats.rtp_received += 1;
    if let Some(seq) = info.transport_seq {
        sender.record_uplink(now, seq);
    }
    if config.uplink_nack {
        sender.track_uplink(now, info.ssrc, info.seq);
    }
    if info.payload_type == PADDING_PAYLOAD_TYPE {
        // The sender's bandwidth probe (padding only, on a layer it does not send now): its
        // arrival is all that matters.
        sender.stats.uplink_padding += 1;
        return Ok(());
    }
    if info
        .marking
        .is_some_and(|m| m & KEYFRAME_START == KEYFRAME_START)
    {
        // A keyframe of this SSRC answers every PLI sent for it so far: the next one (a
        // receiver that missed this keyframe, e.g. whose path came up just after) goes out
        // at once instead of waiting out `pli_interval`.
        sender.last_pli.retain(|(s, _)| *s != info.ssrc);
    }
    let sender_leg = sender.leg;
    let sender_device = sender.device;
    if let StreamKind::SimulcastLayer(_) = kind {
        let layer = sender
            .sources
            .iter_mut()
            .find_map(|s| s.on_packet(now, info.ssrc, info.seq, buf.len(), info.marking))
            .ok_or(PacketError::UndeclaredSsrc(info.ssrc))?;
        match test_hooks(config, buf) {
            None => {
                *switches += forward_layer(config, call, i, now, &info, &layer, buf, transmits);
            }
            Some(rewritten) => {
                // The layer decisions were made on the packet as the sender sent it; each
                // rewritten packet goes out under the number it now carries.
                for p in rewritten {
                    if let Some(h) = packet::parse_rtp(&p, None) {
                        *switches += forward_layer(config, call, i, now, &h, &layer, &p, transmits);
                    }
                }
            }
        }
        return Ok(());
    }
    if kind == StreamKind::Audio {
        if let Some(level) = info.audio_level {
            call.speaker.record(now, sender_device, level);
        }
        if let Some(n) = config.loudest_n {
            if call.participants.len() > n + 1 {
                call.refresh_selection(now, n, config.speaker.bucket);
                let chosen = call.selected.contains(&sender_leg)
                    || call.speaker.dominant() == Some(sender_device);
                if !chosen {
                    if let Some(s) = call.participants.get_mut(i) {
                        s.stats.audio_not_selected += 1;
                    }
                    return Ok(());
                }
            }
        }
    }
    let video_last_n = (kind == StreamKind::Video).then_some(config.video_last_n);
    match test_hooks(config, buf) {
        None => forward(
            call,
            (i, sender_device),
            video_last_n,
            now,
            &info_of(&info),
            buf,
            transmits,
        ),
        Some(rewritten) => {
            for p in rewritten {
                // A rewritten packet is cached under the stream and number it now carries.
                if let Some(h) = packet::parse_rtp(&p, None) {
                    forward(
                        call,
                        (i, sender_device),
                        video_last_n,
                        now,
                        &info_of(&h),
                        &p,
                        transmits,
                    );
                }
            }
        }
    }
    Ok(())
}

/// The stream, sequence number and timestamp of a parsed RTP packet.
fn info_of(info: &packet::RtpInfo) -> (u32, u16, u32) {
    (info.ssrc, info.seq, info.timestamp)
}

/// The test hooks' part in forwarding one RTP packet (feature `test-hooks`): the tap sees it,
/// and a rewrite hook gives the packets to forward instead. `None`: forward it as it is.
#[cfg(feature = "test-hooks")]
fn test_hooks(config: &SfuConfig, buf: &[u8]) -> Option<Vec<Vec<u8>>> {
    if let Some(tap) = &config.tap {
        (tap.0)(buf);
    }
    config.rewrite.as_ref().map(|rewrite| (rewrite.0)(buf))
}

/// Without the `test-hooks` feature every packet is forwarded as it is.
#[cfg(not(feature = "test-hooks"))]
fn test_hooks(_config: &SfuConfig, _buf: &[u8]) -> Option<Vec<Vec<u8>>> {
    None
}

/// Protects the RTP packet `rtp` (from participant `from`, index and device) for every other
/// participant and queues it, keeping a copy in each recipient's NACK cache. `video_last_n` is
/// `Some(n)` for video, which goes only to receivers for which the sender is among the last
/// `n` speakers.
fn forward(
    call: &mut Call,
    (from, sender_device): (usize, DeviceId),
    video_last_n: Option<Option<usize>>,
    now: Instant,
    header: &(u32, u16, u32),
    rtp: &[u8],
    transmits: &mut VecDeque<Transmit>,
) {
    for (j, r) in call.participants.iter_mut().enumerate() {
        if j == from {
            continue;
        }
        if let Some(n) = video_last_n {
            if !in_last_n(&call.recency, n, sender_device, r.device) {
                r.stats.video_not_selected += 1;
                continue;
            }
        }
        r.send_rtp(now, rtp, *header, false, transmits);
    }
}

/// The RTCP path: authenticate, answer NACKs from the cache, relay PLIs to the media sender.
#[allow(clippy::too_many_arguments)]
fn handle_rtcp(
    config: &SfuConfig,
    epoch: Option<Instant>,
    call: &mut Call,
    i: usize,
    now: Instant,
    packet: &[u8],
    buf: &mut Vec<u8>,
    feedback: &mut Vec<Feedback>,
    transmits: &mut VecDeque<Transmit>,
) -> Result<(), PacketError> {
    let sender = call
        .participants
        .get_mut(i)
        .ok_or(PacketError::Malformed("no sender"))?;
    let ssrc = packet::rtcp_sender_ssrc(packet).ok_or(PacketError::Malformed("rtcp header"))?;
    if sender.stream(ssrc).is_none() {
        return Err(PacketError::UndeclaredSsrc(ssrc));
    }
    buf.clear();
    buf.extend_from_slice(packet);
    sender
        .ingress
        .unprotect_rtcp(buf)
        .map_err(PacketError::Srtp)?;
    sender.stats.rtcp_received += 1;
    feedback.clear();
    let well_formed = packet::for_each_feedback(buf, |f| feedback.push(f));
    let mut resends = 0;
    for fb in feedback.iter() {
        match *fb {
            Feedback::Nack {
                media_ssrc,
                pid,
                blp,
            } => {
                let Some(me) = call.participants.get_mut(i) else {
                    break;
                };
                let seqs = std::iter::once(pid).chain(
                    (0..16u16)
                        .filter(|b| blp & (1 << b) != 0)
                        .map(|b| pid.wrapping_add(b + 1)),
                );
                for seq in seqs {
                    if resends >= MAX_RESENDS_PER_NACK {
                        me.stats.nacks_unserved += 1;
                        continue;
                    }
                    match me.cache.resend(media_ssrc, seq) {
                        Some(bytes) => {
                            let bytes = bytes.to_vec();
                            resends += 1;
                            me.stats.retransmitted += 1;
                            me.untracked_sent(now, bytes.len() + UDP_IP_OVERHEAD);
                            transmits.push_back(Transmit { leg: me.leg, bytes });
                        }
                        None => me.stats.nacks_unserved += 1,
                    }
                }
            }
            Feedback::ReportBlock { ssrc, lsr, dlsr } => {
                if ssrc != config.rtcp_ssrc || lsr == 0 {
                    continue;
                }
                let (Some(epoch), Some(me)) = (epoch, call.participants.get_mut(i)) else {
                    continue;
                };
                let units = ntp32(epoch, now).wrapping_sub(lsr).wrapping_sub(dlsr);
                let rtt = Duration::from_micros((u64::from(units) * 1_000_000) >> 16);
                if rtt <= MAX_RTT {
                    me.rtt = Some(rtt);
                    me.cc.set_rtt(rtt);
                }
            }
            Feedback::TransportCc { start, end } => {
                let Some(me) = call.participants.get_mut(i) else {
                    break;
                };
                let parsed = buf
                    .get(start..end)
                    .and_then(|b| hush_media::rtcp::parse_compound(b).ok());
                for p in parsed.into_iter().flatten() {
                    if let hush_media::rtcp::RtcpPacket::TransportFeedback(fb) = p {
                        me.on_transport_feedback(config, now, fb);
                    }
                }
            }
            Feedback::Bye { ssrc } => {
                let Some(me) = call.participants.get_mut(i) else {
                    break;
                };
                if me.sources.iter_mut().any(|s| s.stop_layer(ssrc)) {
                    me.stats.layers_stopped += 1;
                    debug!(leg = %me.leg, ssrc, "sender stopped a layer");
                }
            }
            Feedback::Pli { media_ssrc } => {
                // A receiver names the source SSRC of a simulcast source: the keyframe it
                // needs is of the layer it gets (or waits for).
                let layer = call
                    .participants
                    .get(i)
                    .and_then(|me| me.subs.iter().find(|s| s.source == media_ssrc))
                    .and_then(|s| s.current.or(s.target));
                let Some((j, owner)) = call
                    .participants
                    .iter_mut()
                    .enumerate()
                    .find(|(_, p)| p.stream(media_ssrc).is_some())
                else {
                    continue;
                };
                if j == i {
                    continue;
                }
                let ssrc = layer
                    .and_then(|l| {
                        owner
                            .sources
                            .iter()
                            .find(|s| s.ssrc == media_ssrc)
                            .and_then(|s| s.layers.get(l))
                    })
                    .map_or(media_ssrc, |l| l.ssrc);
                send_pli(config, owner, ssrc, now, transmits);
            }
        }
    }
    if well_formed {
        Ok(())
    } else {
        Err(PacketError::Malformed("rtcp compound"))
    }
}

/// Forwards one simulcast layer packet to every receiver that gets this layer now, rewritten
/// to the source's output stream, and asks the sender for the keyframes receivers wait on.
#[allow(clippy::too_many_arguments)]
fn forward_layer(
    config: &SfuConfig,
    call: &mut Call,
    i: usize,
    now: Instant,
    info: &packet::RtpInfo,
    layer: &LayerPacket,
    buf: &[u8],
    transmits: &mut VecDeque<Transmit>,
) -> u64 {
    let mut switches = 0;
    let sender_device = call.participants.get(i).map(|p| p.device);
    let mut keyframes: [Option<u32>; crate::join::MAX_LAYERS] = [None; crate::join::MAX_LAYERS];
    for (j, r) in call.participants.iter_mut().enumerate() {
        if j == i {
            continue;
        }
        if sender_device
            .is_some_and(|s| !in_last_n(&call.recency, config.video_last_n, s, r.device))
        {
            // Out of this receiver's last-N: nothing, and a keyframe is waited for when the
            // sender comes back into it.
            if let Some(sub) = r.sub_mut(layer.source) {
                sub.reset();
            }
            r.stats.video_not_selected += 1;
            continue;
        }
        let share = r.video_share();
        let Some(sub) = r.sub_mut(layer.source) else {
            continue;
        };
        let d = sub.on_packet(now, layer, info.seq, info.timestamp, share);
        if let Some(k) = d.keyframe {
            if let Some(slot) = keyframes.iter_mut().find(|s| s.is_none() || **s == Some(k)) {
                *slot = Some(k);
            }
        }
        if d.switched {
            r.stats.layer_switches += 1;
            switches += 1;
            debug!(leg = %r.leg, source = layer.source, layer = layer.layer, "layer switched");
        }
        let Some((seq, ts)) = d.forward else {
            continue;
        };
        r.send_rtp(now, buf, (layer.source, seq, ts), true, transmits);
    }
    if let Some(sender) = call.participants.get_mut(i) {
        for k in keyframes.into_iter().flatten() {
            send_pli(config, sender, k, now, transmits);
        }
    }
    switches
}

/// Sends `owner` a PLI for its SSRC `media_ssrc` from the SFU, at most once per
/// `pli_interval` per SSRC.
fn send_pli(
    config: &SfuConfig,
    owner: &mut Participant,
    media_ssrc: u32,
    now: Instant,
    transmits: &mut VecDeque<Transmit>,
) {
    let recent = owner.last_pli.iter_mut().find(|(s, _)| *s == media_ssrc);
    match recent {
        Some((_, at)) if now.saturating_duration_since(*at) < config.pli_interval => return,
        Some((_, at)) => *at = now,
        None => owner.last_pli.push((media_ssrc, now)),
    }
    let mut out = Vec::with_capacity(12 + Suite::RTCP_OVERHEAD);
    packet::write_pli(&mut out, config.rtcp_ssrc, media_ssrc);
    if owner.send_rtcp(now, out, transmits, "pli") {
        owner.stats.plis_relayed += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uplink_sequence_numbers_extend_across_a_wrap_and_reordering() {
        let mut u = UplinkNacks::new(7);
        let a = u.extend(65_534);
        assert_eq!(u.extend(65_535), a + 1);
        assert_eq!(u.extend(0), a + 2);
        // Reordered: an older number maps below the highest, not a wrap ahead.
        assert_eq!(u.extend(65_535), a + 1);
        assert_eq!(u.highest, Some(a + 2));
    }
}

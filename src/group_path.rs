//! The media path of one participant in a group call: hop SRTP to the SFU around per-sender
//! jitter buffers, with the end-to-end frame encryption seam in one place.
//!
//! ```text
//!  send:    Opus frame ─▶ FrameCrypto::seal ─▶ RTP (+ RFC 6464 level) ─▶ hop SRTP ─▶ SFU
//!  receive: SFU ─▶ hop SRTP ─▶ RTP ─▶ SSRC → participant ─▶ FrameCrypto::open ─▶ jitter buffer
//!                                                                  (one per participant) ─▶ Playout
//! ```
//!
//! [`FrameCrypto`] is where the end-to-end layer goes: every encoded frame passes
//! [`FrameCrypto::seal`] before it leaves and [`FrameCrypto::open`] after the hop layer and
//! before anything else reads it, and nowhere else. [`SframeCrypto`] implements it with SFrame
//! and per-sender keys ([`hush_crypto::group`]); `GroupCall` uses it, so the SFU forwards
//! ciphertext. [`NoFrameCrypto`] leaves frames as they are (the SFU can read them). The RTP
//! header (SSRC, sequence number, the audio level) stays outside the seam on purpose: the SFU
//! reads it to forward.
//!
//! What goes back to the SFU comes from here too (docs/sfu.md "Feedback and loss recovery of
//! the client"): transport-wide feedback on every packet's arrival every
//! [`FEEDBACK_INTERVAL`] (the SFU estimates this receiver's downlink from it and picks the
//! simulcast layers it forwards here), a receiver report for each of the SFU's sender reports
//! (its RTT), NACKs for missing video packets (resent from the SFU's cache; video frames are
//! handed out whole and in order, waiting at most [`VIDEO_RECOVERY_WAIT`] for a resend), and a
//! PLI when a frame is given up (and no keyframe is held behind it) or a stream has not had a
//! keyframe yet.
//!
//! The uplink is congestion controlled too (docs/sfu.md "Uplink congestion control"): every
//! RTP packet sent carries a transport-wide sequence number, the SFU reports their arrivals,
//! hush-media's [`CongestionController`] estimates the uplink from the reports, and
//! [`UplinkLayers`] stops the simulcast layers the estimate cannot carry (top first, with an
//! RTCP BYE for the layer's SSRC so that the SFU moves its receivers down at once) and brings
//! them back once the estimate has held (found by padding probes on a stopped layer's SSRC).
//!
//! Sans-IO: datagrams and `now` in; datagrams, playout actions per participant and a deadline
//! out.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

pub use hush_crypto::group::FrameKind;
use hush_crypto::group::{GroupE2ee, GroupError, MemberSlot, Opened};
use hush_media::cc::{CcConfig, CongestionController, Probe, TwccRecorder};
use hush_media::jitter::{JitterBuffer, JitterConfig, Playout, Recovery};
use hush_media::nack::NackScheduler;
use hush_media::rtcp::{self, Bye, Nack, Pli, ReceiverReport, ReportBlock, RtcpPacket};
use hush_media::rtp::{AudioLevel, RtpPacket};
use hush_sfu::join::HopKeys;
use hush_sfu::{DeviceId, FRAME_MARKING_EXT_ID, TRANSPORT_SEQ_EXT_ID};
use hush_srtp::{SrtpConfig, SrtpContext, Suite};
use tracing::{info, trace};

use crate::group_uplink::{LayerChange, UplinkLayers};

/// The RFC 8285 one-byte extension id of the RFC 6464 audio level in group call packets.
pub const AUDIO_LEVEL_EXT: u8 = 1;
/// The Opus payload type of group call audio.
const OPUS_PT: u8 = 111;
/// RTP timestamp step of one 20 ms frame at 48 kHz.
const FRAME_TICKS: u32 = 960;
/// The payload type of group call video: a generic payload (the SFU reads no codec), the
/// SFrame ciphertext of one encoded frame cut into packets.
pub const VIDEO_PT: u8 = 96;
/// Most SFrame bytes in one video packet (with the RTP header, hop SRTP and UDP/IP it stays
/// under a 1280-byte path MTU).
pub const VIDEO_PAYLOAD_MAX: usize = 1100;
/// Largest video frame reassembled (ciphertext): beyond it the frame is dropped, so a sender
/// that never ends a frame cannot grow a receiver's memory.
pub const MAX_VIDEO_FRAME: usize = 1 << 20;
/// Frame marking bits (docs/sfu.md "Simulcast"): start of frame, end of frame, keyframe.
const MARK_START: u8 = 0x80;
const MARK_END: u8 = 0x40;
const MARK_KEY: u8 = 0x20;
/// The byte inside the SFrame plaintext of a video frame, before the encoded frame: bit 0 the
/// frame is a keyframe, bits 1–2 its simulcast layer, the other bits 0. Authenticated with
/// the frame, so a receiver takes the keyframe flag and the layer from here and not from the
/// frame marking the SFU can read and rewrite.
const INNER_KEY: u8 = 0x01;
const INNER_LAYER_SHIFT: u8 = 1;
const INNER_RESERVED: u8 = 0xf8;
/// Most held video frames whose frame marking is remembered until they open.
const MAX_HELD_MARKS: usize = 256;
/// Most SSRCs the receive context tracks (32 participants with up to 8 streams, and the SFU).
const MAX_RECV_SSRCS: usize = 32 * 8 + 1;
/// How often the path reports the arrivals of the SFU's transport-wide sequence numbers
/// (docs/sfu.md "Per-leg congestion control" asks for every 50–100 ms).
pub const FEEDBACK_INTERVAL: Duration = Duration::from_millis(50);
/// The payload type of the SFU's probe padding (under its own SSRC): recorded for feedback,
/// then dropped.
const PROBE_PT: u8 = 127;
/// The round-trip time assumed to pace NACK retries (the client has no RTT measurement of its
/// own on the SFU hop; the SFU measures it from this path's receiver reports).
const NACK_RTT: Duration = Duration::from_millis(100);
/// How long a video frame with a missing packet waits for its retransmission before it is
/// given up (and a keyframe is asked for). The frames behind it wait too: frames are handed
/// out in order, as a decoder needs them.
pub const VIDEO_RECOVERY_WAIT: Duration = Duration::from_millis(400);
/// Most video packets held per stream while a missing one is waited for.
const MAX_HELD_VIDEO_PACKETS: usize = 1024;
/// The least time between two keyframe requests of the path for one stream.
const PATH_KEYFRAME_INTERVAL: Duration = Duration::from_millis(300);
/// Times the goodbye of a stopped layer is repeated, one per feedback from the SFU (every
/// 50 ms).
const BYE_REPEATS: u8 = 2;
/// IPv4 and UDP headers, counted in what the uplink's congestion controller sees sent.
const UDP_IP_OVERHEAD: usize = 28;
/// The payload type of this participant's probe padding (on a layer SSRC it does not send
/// now); the SFU records its arrival and drops it.
const UPLINK_PROBE_PT: u8 = 127;

/// The uplink's congestion controller settings: it starts high enough for every layer (it
/// acts only once the SFU's feedback arrives, and an SFU that sends none leaves every layer
/// on), and probes with padding while a layer is stopped.
fn uplink_cc_config() -> CcConfig {
    CcConfig {
        start_bps: 2_000_000,
        min_bps: 30_000,
        max_bps: 10_000_000,
        probing: true,
        ..CcConfig::default()
    }
}

/// Why a frame could not be sealed or opened by the end-to-end layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameCryptoError {
    /// The frame did not authenticate, or its sender's key is unknown.
    #[error("frame not authentic or sender key unknown")]
    Open,
    /// The frame could not be sealed.
    #[error("frame could not be sealed")]
    Seal,
    /// The frame came on the stream of a device with no place in the roster held here.
    #[error("frame from a device with no roster slot")]
    NoSlot,
    /// The group end-to-end layer refused the frame (or could not seal it).
    #[error(transparent)]
    Group(#[from] GroupError),
    /// A video frame opened, but its authenticated header byte is not valid.
    #[error("video frame header invalid")]
    VideoHeader,
}

/// What [`FrameCrypto::open`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameOpen {
    /// The frame was opened into `out`.
    Frame,
    /// Its key has not arrived: held; it comes out of [`FrameCrypto::poll_released`] if the
    /// key arrives in time.
    Held,
}

/// A held frame that opened once its key arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleasedFrame {
    /// Whose stream it came on.
    pub device: DeviceId,
    /// Audio or video.
    pub kind: FrameKind,
    /// Its RTP timestamp.
    pub timestamp: u32,
    /// The encoded frame.
    pub frame: Vec<u8>,
}

/// Counters of the end-to-end layer of a group media path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct E2eeStats {
    /// Frames sealed.
    pub encrypted: u64,
    /// Frames opened (at once or after being held).
    pub decrypted: u64,
    /// Frames held for a key in flight.
    pub held: u64,
    /// Held frames dropped: their key did not come in time.
    pub dropped: u64,
    /// Frames refused: failed authentication, replayed, wrong sender, no slot, no key.
    pub refused: u64,
    /// Key messages installed.
    pub keys_installed: u64,
    /// Key messages refused.
    pub keys_refused: u64,
}

/// The end-to-end encryption of media frames in a group call: the one seam of the media path
/// where it applies (see the [module docs](self)). SFrame (group calls part 2) implements it.
pub trait FrameCrypto: Send {
    /// Seals one encoded frame of this participant, appending the result to `out`.
    fn seal(
        &mut self,
        kind: FrameKind,
        frame: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), FrameCryptoError>;
    /// Opens one frame of `kind` received on the stream of `sender` with RTP timestamp
    /// `timestamp`, appending the encoded frame to `out`, or holds it until its key arrives.
    fn open(
        &mut self,
        now: Instant,
        sender: &DeviceId,
        kind: FrameKind,
        timestamp: u32,
        frame: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<FrameOpen, FrameCryptoError>;
    /// The next held frame that has opened since.
    fn poll_released(&mut self) -> Option<ReleasedFrame> {
        None
    }
    /// Expires held frames and old keys due at `now`.
    fn handle_timeout(&mut self, _now: Instant) {}
    /// When [`handle_timeout`](Self::handle_timeout) next has work.
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    /// Counters.
    fn stats(&self) -> E2eeStats {
        E2eeStats::default()
    }
}

impl FrameCrypto for Box<dyn FrameCrypto> {
    fn seal(
        &mut self,
        kind: FrameKind,
        frame: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), FrameCryptoError> {
        (**self).seal(kind, frame, out)
    }
    fn open(
        &mut self,
        now: Instant,
        sender: &DeviceId,
        kind: FrameKind,
        timestamp: u32,
        frame: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<FrameOpen, FrameCryptoError> {
        (**self).open(now, sender, kind, timestamp, frame, out)
    }
    fn poll_released(&mut self) -> Option<ReleasedFrame> {
        (**self).poll_released()
    }
    fn handle_timeout(&mut self, now: Instant) {
        (**self).handle_timeout(now);
    }
    fn poll_timeout(&self) -> Option<Instant> {
        (**self).poll_timeout()
    }
    fn stats(&self) -> E2eeStats {
        (**self).stats()
    }
}

/// No end-to-end layer: frames pass unchanged, protected only hop by hop (the SFU can read
/// them). The bare baseline of benchmarks and tests; the facade's group calls always use
/// [`SframeCrypto`].
#[derive(Debug, Default, Clone, Copy)]
pub struct NoFrameCrypto;

impl FrameCrypto for NoFrameCrypto {
    fn seal(
        &mut self,
        _kind: FrameKind,
        frame: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), FrameCryptoError> {
        out.extend_from_slice(frame);
        Ok(())
    }

    fn open(
        &mut self,
        _now: Instant,
        _sender: &DeviceId,
        _kind: FrameKind,
        _timestamp: u32,
        frame: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<FrameOpen, FrameCryptoError> {
        out.extend_from_slice(frame);
        Ok(FrameOpen::Frame)
    }
}

/// End-to-end encryption of group call audio with SFrame and per-sender keys
/// ([`GroupE2ee`]): each frame is sealed under this participant's sender key and opened with
/// the key of the member whose stream it came on. A member is named by its slot, its position
/// in the creator-signed roster; a frame whose key id names another slot than that of the
/// device whose stream carried it is refused.
pub struct SframeCrypto {
    e2ee: GroupE2ee,
    slots: HashMap<DeviceId, MemberSlot>,
    devices: HashMap<MemberSlot, DeviceId>,
    no_slot: u64,
}

impl std::fmt::Debug for SframeCrypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SframeCrypto")
            .field("e2ee", &self.e2ee)
            .field("slots", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl SframeCrypto {
    /// Wraps this participant's end-to-end state; no device has a slot yet.
    pub fn new(e2ee: GroupE2ee) -> Self {
        Self {
            e2ee,
            slots: HashMap::new(),
            devices: HashMap::new(),
            no_slot: 0,
        }
    }

    /// Gives `device` the slot `slot`, unless either already has a place: slots never move
    /// (a key id names a slot, so moving one would let a device claim another's keys).
    /// Returns whether the device now has `slot`.
    pub fn assign_slot(&mut self, device: DeviceId, slot: MemberSlot) -> bool {
        match (self.slots.get(&device), self.devices.get(&slot)) {
            (Some(s), _) => *s == slot,
            (None, Some(_)) => false,
            (None, None) => {
                self.slots.insert(device, slot);
                self.devices.insert(slot, device);
                true
            }
        }
    }

    /// The slot of `device`, if it has one.
    pub fn slot_of(&self, device: &DeviceId) -> Option<MemberSlot> {
        self.slots.get(device).copied()
    }

    /// The end-to-end state (to hand out keys, install received ones, rotate).
    pub fn e2ee_mut(&mut self) -> &mut GroupE2ee {
        &mut self.e2ee
    }

    /// The end-to-end state.
    pub fn e2ee(&self) -> &GroupE2ee {
        &self.e2ee
    }
}

impl FrameCrypto for SframeCrypto {
    fn seal(
        &mut self,
        kind: FrameKind,
        frame: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), FrameCryptoError> {
        out.extend_from_slice(&self.e2ee.encrypt(kind, frame)?);
        Ok(())
    }

    fn open(
        &mut self,
        now: Instant,
        sender: &DeviceId,
        kind: FrameKind,
        timestamp: u32,
        frame: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<FrameOpen, FrameCryptoError> {
        let Some(slot) = self.slot_of(sender) else {
            self.no_slot += 1;
            return Err(FrameCryptoError::NoSlot);
        };
        match self
            .e2ee
            .decrypt_tagged(slot, kind, frame, u64::from(timestamp), now)?
        {
            Opened::Frame(plain) => {
                out.extend_from_slice(&plain);
                Ok(FrameOpen::Frame)
            }
            Opened::Held => Ok(FrameOpen::Held),
        }
    }

    fn poll_released(&mut self) -> Option<ReleasedFrame> {
        loop {
            let r = self.e2ee.poll_released_tagged()?;
            if let Some(device) = self.devices.get(&r.from) {
                return Some(ReleasedFrame {
                    device: *device,
                    kind: r.kind,
                    // The tag is the RTP timestamp given to `open`.
                    timestamp: r.tag as u32,
                    frame: r.frame,
                });
            }
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.e2ee.handle_timeout(now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.e2ee.poll_timeout()
    }

    fn stats(&self) -> E2eeStats {
        let s = self.e2ee.stats();
        E2eeStats {
            encrypted: s.encrypted,
            decrypted: s.decrypted,
            held: s.held,
            dropped: s.dropped_unknown_key,
            refused: s.refused + self.no_slot,
            keys_installed: s.keys_installed,
            keys_refused: s.keys_refused,
        }
    }
}

/// Why a received datagram was dropped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GroupPathError {
    /// Hop SRTP refused it (forged, replayed, not from the SFU).
    #[error("hop srtp: {0}")]
    Srtp(#[from] hush_srtp::Error),
    /// Not a well-formed RTP packet.
    #[error("malformed rtp")]
    Malformed,
    /// Its SSRC belongs to no participant the SFU announced.
    #[error("unknown ssrc {0:#010x}")]
    UnknownSsrc(u32),
    /// The end-to-end layer refused the frame.
    #[error(transparent)]
    Frame(#[from] FrameCryptoError),
    /// A video packet without a frame marking element.
    #[error("video packet without frame marking")]
    NoFrameMarking,
    /// A video layer this participant did not add, or a layer index over 3.
    #[error("no video layer under ssrc {0:#010x}")]
    NoVideoLayer(u32),
}

/// Counters of one participant's group media path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupPathStats {
    /// Audio frames sent.
    pub frames_sent: u64,
    /// RTP packets received that authenticated and belonged to a participant.
    pub packets_received: u64,
    /// Datagrams dropped by hop SRTP (not authentic, or too old to check), besides
    /// duplicates.
    pub srtp_failures: u64,
    /// RTP packets dropped by hop SRTP as already received (a packet resent twice by the
    /// SFU, the second answer arriving after the first).
    pub duplicates: u64,
    /// Packets for an SSRC no announced participant owns.
    pub unknown_ssrc: u64,
    /// Frames the end-to-end layer refused.
    pub frame_failures: u64,
    /// RTCP datagrams received (consumed; the SFU relays only what concerns this leg).
    pub rtcp_received: u64,
    /// Frames that arrived after their playout time, summed over the participants present.
    pub late: u64,
    /// The end-to-end layer's counters.
    pub e2ee: E2eeStats,
    /// Video frames sent (all layers).
    pub video_frames_sent: u64,
    /// Video packets sent (all layers).
    pub video_packets_sent: u64,
    /// Video frames received, opened and handed out.
    pub video_frames_received: u64,
    /// Video frames lost to a missing or out-of-order packet, or too large (dropped before
    /// opening).
    pub video_frames_incomplete: u64,
    /// Video frames whose frame marking (read by the SFU) disagreed with their authenticated
    /// header on being a keyframe. The authenticated header wins.
    pub video_marking_mismatch: u64,
    /// Keyframe requests (PLI) from the SFU for one of this participant's layers.
    pub keyframe_requests: u64,
    /// Transport-wide feedback messages sent to the SFU (its bandwidth estimate of this
    /// participant's downlink comes from them).
    pub transport_feedback_sent: u64,
    /// Receiver reports sent in answer to the SFU's sender reports (its RTT measurement).
    pub receiver_reports_sent: u64,
    /// Probe padding packets of the SFU received (recorded for feedback, then dropped).
    pub probes_received: u64,
    /// Video sequence numbers asked again in NACKs (each retry counted).
    pub video_nacked: u64,
    /// Video packets that arrived after being missed (a retransmission from the SFU's cache,
    /// or a late packet).
    pub video_packets_recovered: u64,
    /// Keyframe requests (PLI) this path sent for remote streams: a frame it could not
    /// recover, or a stream whose first frame was not a keyframe.
    pub video_keyframes_requested: u64,
    /// Video frames dropped because their stream had not had a keyframe yet (nothing could
    /// decode them).
    pub video_frames_before_keyframe: u64,
    /// Video packets of this participant's layers resent in answer to the SFU's NACKs (lost
    /// between it and the SFU), from its send history.
    pub video_packets_resent: u64,
    /// Sequence numbers the SFU NACKed that were no longer in the send history (or resent
    /// too often already, or of a layer stopped since).
    pub video_resends_unserved: u64,
    /// Transport-wide feedback messages received from the SFU about this participant's
    /// packets (its uplink estimate comes from them).
    pub uplink_feedback_received: u64,
    /// The uplink estimate, once the SFU's feedback has arrived (bit/s).
    pub uplink_estimate_bps: Option<u64>,
    /// Which of this participant's video layers go out now, lowest first (bit `i` for layer
    /// `i`).
    pub layers_sending: u8,
    /// Times a layer was stopped or started again for the uplink.
    pub layer_changes: u64,
    /// Encoded video frames not sent because their layer is stopped (or waits for a
    /// keyframe to start again).
    pub video_frames_held_back: u64,
    /// Probe padding packets sent (on a stopped layer's SSRC).
    pub probe_packets_sent: u64,
}

/// A video frame of another participant, opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantVideo {
    /// Whose video.
    pub device: DeviceId,
    /// The stream it came on (the source SSRC the SFU forwards).
    pub ssrc: u32,
    /// Its RTP timestamp (rewritten by the SFU at layer switches, so not authenticated).
    pub timestamp: u32,
    /// A keyframe, as the sender said inside the ciphertext.
    pub keyframe: bool,
    /// The simulcast layer, as the sender said inside the ciphertext.
    pub layer: u8,
    /// The encoded frame.
    pub frame: Vec<u8>,
}

/// Video packets of this participant's layers kept (protected, as sent) to answer the SFU's
/// NACKs: about 2.8 s of three layers at 100 / 300 / 800 kbit/s.
const SEND_HISTORY_PACKETS: usize = 512;

/// Times one packet of the send history may be resent.
const MAX_RESENDS: u8 = 2;

/// One sent video packet, kept for a resend.
struct SentVideo {
    ssrc: u32,
    seq: u16,
    resends: u8,
    bytes: Vec<u8>,
}

/// One video layer this participant sends.
struct VideoOut {
    layer: u8,
    seq: u16,
    /// It just started again: its frames wait for a keyframe (receivers switch to a layer only
    /// at one).
    needs_key: bool,
}

/// One received video packet waiting for the rest of its frame.
struct HeldPacket {
    /// When it arrived.
    at: Instant,
    timestamp: u32,
    mark: u8,
    payload: Vec<u8>,
}

/// A frame ready to open: its timestamp, the frame marking's keyframe bit, the SFrame
/// ciphertext.
type SealedFrame = (u32, bool, Vec<u8>);

/// What reassembling one stream found besides frames.
#[derive(Default)]
struct Assembly {
    /// Frames given up (a packet never came).
    incomplete: u64,
    /// Frames dropped before the stream's first keyframe.
    before_key: u64,
    /// A keyframe should be asked for.
    need_key: bool,
}

/// One remote video stream: packets held by extended sequence number until their frame is
/// whole, the NACK schedule of the missing ones.
struct VideoIn {
    device: DeviceId,
    /// The highest extended sequence number seen (the sequence numbers are the SFU's, one
    /// continuous stream per source).
    highest: Option<u64>,
    /// The extended sequence number the next frame starts at (after the last one handed out
    /// or given up).
    next: Option<u64>,
    packets: BTreeMap<u64, HeldPacket>,
    bytes: usize,
    nack: NackScheduler,
    /// The frame at `next` is waiting for a missing packet.
    stalled: bool,
    /// No keyframe handed out yet: delta frames are dropped (nothing could decode them).
    waiting_key: bool,
    last_keyframe_request: Option<Instant>,
}

impl VideoIn {
    fn new(device: DeviceId) -> Self {
        let mut nack = NackScheduler::default();
        nack.max_age = VIDEO_RECOVERY_WAIT;
        // No quick repeat of a first NACK: the SFU hop is short and the repeat's resend
        // would mostly arrive twice, on the downlink that may be the one congested.
        nack.repeat_after = NACK_RTT;
        Self {
            device,
            highest: None,
            next: None,
            packets: BTreeMap::new(),
            bytes: 0,
            nack,
            stalled: false,
            waiting_key: true,
            last_keyframe_request: None,
        }
    }

    /// The extended form of `seq`, near the highest seen.
    fn extend(&mut self, seq: u16) -> u64 {
        match self.highest {
            None => {
                // Far enough from 0 that packets from before the first stay representable.
                let e = (1 << 16) + u64::from(seq);
                self.highest = Some(e);
                e
            }
            Some(h) => {
                let d = i64::from(seq.wrapping_sub(h as u16) as i16);
                let e = h.saturating_add_signed(d);
                if e > h {
                    self.highest = Some(e);
                }
                e
            }
        }
    }

    /// Whether the frame at the head may still wait for a missing packet: the oldest packet
    /// held (the gap before it, or in its frame, was seen when it came) is not older than
    /// [`VIDEO_RECOVERY_WAIT`]. So after a frame is given up, the next one waits only for what
    /// is left of its own packets' wait, not a whole wait more.
    fn may_wait(&mut self, now: Instant) -> bool {
        let wait = self.packets.values().next().is_some_and(|p| {
            now.saturating_duration_since(p.at) < VIDEO_RECOVERY_WAIT
                && self.bytes <= MAX_VIDEO_FRAME
                && self.packets.len() <= MAX_HELD_VIDEO_PACKETS
        });
        self.stalled = wait;
        wait
    }

    /// Gives up the frame at the head: everything before the next frame start held goes.
    fn give_up(&mut self, a: &mut Assembly) {
        let Some(n) = self.next else {
            return;
        };
        let next_start = self
            .packets
            .range(n + 1..)
            .find(|(_, p)| p.mark & MARK_START != 0)
            .map(|(&k, p)| (k, p.mark & MARK_KEY != 0));
        let to = next_start.map_or_else(|| self.highest.map_or(n + 1, |h| h + 1), |s| s.0);
        let kept = self.packets.split_off(&to);
        self.bytes = kept.values().map(|p| p.payload.len()).sum();
        self.packets = kept;
        for s in n..to.min(n + 2 * MAX_HELD_VIDEO_PACKETS as u64) {
            self.nack.forget(s);
        }
        self.next = Some(to);
        self.stalled = false;
        a.incomplete += 1;
        // The frames after a loss go to the decoder anyway (it refuses those whose reference is
        // gone); a keyframe is asked for unless one is held, next or further on. One further on
        // is the SFU's switch to another layer behind frames of the old one whose packets were
        // lost on the sender's uplink and never come back: they are given up in turn and the
        // keyframe is waited for (its own missing packets asked for). A new one would follow
        // it into the same uplink: on a congested one, into a full queue that drops it and the
        // frames behind it (docs/benchmarks.md, "Ninth round"). A stream that has had no
        // keyframe yet asks unless the next frame is one, as before: at the start of a call
        // behind a congested downlink, the keyframe held further on was often lost in part too,
        // and waiting it out (traced in a version that did) left the receiver ~400 ms longer
        // without a picture and then on a lower layer for 2 s.
        let key_next = next_start.is_some_and(|s| s.1);
        let key_held = if self.waiting_key {
            key_next
        } else {
            self.holds_keyframe()
        };
        if !key_held {
            a.need_key = true;
        }
    }

    /// Whether a packet that starts a keyframe is held.
    fn holds_keyframe(&self) -> bool {
        self.packets
            .values()
            .any(|p| p.mark & (MARK_START | MARK_KEY) == MARK_START | MARK_KEY)
    }

    /// Moves every frame that is whole at the head into `out`, in order; gives up the head
    /// frame when it waited too long for a packet.
    fn assemble(&mut self, now: Instant, out: &mut Vec<SealedFrame>) -> Assembly {
        let mut a = Assembly::default();
        while let Some(n) = self.next {
            let Some(first) = self.packets.get(&n) else {
                if self.packets.is_empty() {
                    self.stalled = false;
                    break;
                }
                if self.may_wait(now) {
                    break;
                }
                self.give_up(&mut a);
                continue;
            };
            if first.mark & MARK_START == 0 {
                // A frame whose start is gone (or the stream began in the middle of one).
                self.give_up(&mut a);
                continue;
            }
            let (timestamp, key) = (first.timestamp, first.mark & MARK_KEY != 0);
            let mut end = None;
            let mut broken = false;
            let mut e = n;
            while let Some(p) = self.packets.get(&e) {
                if p.timestamp != timestamp || (e != n && p.mark & MARK_START != 0) {
                    broken = true;
                    break;
                }
                if p.mark & MARK_END != 0 {
                    end = Some(e);
                    break;
                }
                e += 1;
            }
            let Some(end) = end.filter(|_| !broken) else {
                if !broken && self.may_wait(now) {
                    break;
                }
                self.give_up(&mut a);
                continue;
            };
            let rest = self.packets.split_off(&(end + 1));
            let frame = std::mem::replace(&mut self.packets, rest);
            self.next = Some(end + 1);
            self.stalled = false;
            let mut sealed = Vec::with_capacity(frame.values().map(|p| p.payload.len()).sum());
            for p in frame.into_values() {
                self.bytes = self.bytes.saturating_sub(p.payload.len());
                sealed.extend_from_slice(&p.payload);
            }
            if self.waiting_key && !key {
                a.before_key += 1;
                a.need_key = true;
                continue;
            }
            self.waiting_key = false;
            out.push((timestamp, key, sealed));
        }
        a
    }

    /// When [`assemble`](Self::assemble) gives up the head frame, if it waits.
    fn give_up_at(&self) -> Option<Instant> {
        if !self.stalled {
            return None;
        }
        self.packets
            .values()
            .next()
            .map(|p| p.at + VIDEO_RECOVERY_WAIT)
    }
}

struct Remote {
    device: DeviceId,
    jitter: JitterBuffer,
}

/// A playout action for one participant's audio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantPlayout {
    /// Whose audio.
    pub device: DeviceId,
    /// What to decode.
    pub playout: Playout,
}

/// The group media path of one participant, sealing frames with `C`. See the
/// [module docs](self).
pub struct GroupMediaPath<C: FrameCrypto = Box<dyn FrameCrypto>> {
    send: SrtpContext,
    recv: SrtpContext,
    crypto: C,
    ssrc: u32,
    seq: u16,
    timestamp: u32,
    jitter: JitterConfig,
    remotes: HashMap<u32, Remote>,
    out: VecDeque<Vec<u8>>,
    playouts: VecDeque<ParticipantPlayout>,
    stats: GroupPathStats,
    scratch: Vec<u8>,
    video_out: HashMap<u32, VideoOut>,
    video_in: HashMap<u32, VideoIn>,
    video: VecDeque<ParticipantVideo>,
    /// Keyframe marking of held video frames, by (device, timestamp), until they open.
    held_marks: HashMap<(DeviceId, u32), (u32, bool)>,
    keyframe_requests: VecDeque<u32>,
    /// The last [`SEND_HISTORY_PACKETS`] video packets sent, oldest first.
    sent_video: VecDeque<SentVideo>,
    /// Arrivals of the SFU's transport-wide sequence numbers, reported every
    /// [`FEEDBACK_INTERVAL`].
    twcc: TwccRecorder,
    next_feedback: Option<Instant>,
    /// The uplink's congestion controller, fed by the SFU's transport-wide feedback.
    cc: CongestionController,
    /// Whether the SFU's feedback has arrived (only then do layers stop).
    uplink_feedback: bool,
    /// Which layers go out.
    uplink: UplinkLayers,
    /// Layer changes for the encoder (stop encoding, or a keyframe to start again).
    layer_changes: VecDeque<LayerChange>,
    /// Probe padding packets to send: when, probe cluster, padding length.
    probes: VecDeque<(Instant, u32, u8)>,
    /// Goodbyes of stopped layers still to repeat (SSRC, repeats left): the first one goes
    /// into the very queue that made the layer stop, and a drop-tail queue may lose it.
    byes: Vec<(u32, u8)>,
}

impl<C: FrameCrypto> std::fmt::Debug for GroupMediaPath<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupMediaPath")
            .field("ssrc", &self.ssrc)
            .field("remotes", &self.remotes.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<C: FrameCrypto> GroupMediaPath<C> {
    /// A path keyed with the client's hop keys, sending audio under `ssrc` and sealing frames
    /// with `crypto`. `jitter` configures each participant's jitter buffer.
    pub fn new(
        keys: &HopKeys,
        ssrc: u32,
        crypto: C,
        jitter: JitterConfig,
        first_seq: u16,
    ) -> Result<Self, hush_srtp::Error> {
        // The replay window covers every packet a NACK may still bring back (a frame waits
        // up to `VIDEO_RECOVERY_WAIT` while the later ones arrive).
        let config = SrtpConfig::builder()
            .max_ssrcs(MAX_RECV_SSRCS)
            .replay_window(MAX_HELD_VIDEO_PACKETS)
            .build()?;
        Ok(Self {
            send: keys.send_context(SrtpConfig::default())?,
            recv: keys.recv_context(config)?,
            crypto,
            ssrc,
            seq: first_seq,
            timestamp: u32::from(first_seq).wrapping_mul(FRAME_TICKS),
            jitter,
            remotes: HashMap::new(),
            out: VecDeque::new(),
            playouts: VecDeque::new(),
            stats: GroupPathStats::default(),
            scratch: Vec::with_capacity(1500),
            video_out: HashMap::new(),
            video_in: HashMap::new(),
            video: VecDeque::new(),
            held_marks: HashMap::new(),
            keyframe_requests: VecDeque::new(),
            sent_video: VecDeque::new(),
            twcc: TwccRecorder::default(),
            next_feedback: None,
            cc: CongestionController::new(uplink_cc_config()),
            uplink_feedback: false,
            uplink: UplinkLayers::default(),
            layer_changes: VecDeque::new(),
            probes: VecDeque::new(),
            byes: Vec::new(),
        })
    }

    /// A participant (as the SFU announced it) sends audio under `ssrc`.
    pub fn add_stream(&mut self, device: DeviceId, ssrc: u32) {
        if ssrc == self.ssrc {
            return;
        }
        self.remotes.insert(
            ssrc,
            Remote {
                device,
                jitter: JitterBuffer::new(self.jitter.clone()),
            },
        );
    }

    /// A participant left: forget its streams.
    pub fn remove_participant(&mut self, device: &DeviceId) {
        self.remotes.retain(|_, r| r.device != *device);
        self.video_in.retain(|_, v| v.device != *device);
        self.held_marks.retain(|(d, _), _| d != device);
    }

    /// A participant (as the SFU announced it) sends video that arrives under `ssrc` (for a
    /// simulcast source, the SSRC of its layer 0: the SFU forwards one layer under it).
    pub fn add_video_stream(&mut self, device: DeviceId, ssrc: u32) {
        if ssrc == self.ssrc || self.video_out.contains_key(&ssrc) {
            return;
        }
        self.video_in.insert(ssrc, VideoIn::new(device));
    }

    /// This participant sends video layer `layer` (0 the smallest, at most 3) under `ssrc`,
    /// as declared in its join, at about `bitrate_bps` (its rate until one is measured, for
    /// the uplink's layer decisions).
    pub fn add_video_layer(
        &mut self,
        ssrc: u32,
        layer: u8,
        bitrate_bps: u32,
    ) -> Result<(), GroupPathError> {
        if layer > 3 || ssrc == self.ssrc {
            return Err(GroupPathError::NoVideoLayer(ssrc));
        }
        // Each layer its own sequence space; start them apart.
        let seq = self
            .seq
            .wrapping_add(u16::from(layer + 1).wrapping_mul(16_411));
        self.video_out.insert(
            ssrc,
            VideoOut {
                layer,
                seq,
                needs_key: false,
            },
        );
        self.uplink.add_layer(layer, u64::from(bitrate_bps));
        Ok(())
    }

    /// Whether video layer `layer` goes out now (the uplink can carry it).
    pub fn layer_sending(&self, layer: u8) -> bool {
        self.uplink.is_sending(layer)
    }

    /// The uplink estimate, once the SFU's transport-wide feedback has arrived (bit/s).
    pub fn uplink_estimate_bps(&self) -> Option<u64> {
        self.uplink_feedback.then(|| self.cc.target_bps())
    }

    /// The next change of the layers sent: stop encoding a stopped layer; encode the next
    /// frame of a started one as a keyframe (its other frames are not sent before one).
    pub fn poll_layer_change(&mut self) -> Option<LayerChange> {
        self.layer_changes.pop_front()
    }

    /// Stamps `p` with the next transport-wide sequence number (registered with the uplink's
    /// controller, with its size on the wire), serializes it with `padding` bytes of RTP
    /// padding and protects it.
    fn stamp_and_protect(
        &mut self,
        now: Instant,
        p: &mut RtpPacket,
        probe: Option<u32>,
        padding: u8,
    ) -> Result<Vec<u8>, hush_srtp::Error> {
        p.header.set_transport_seq(TRANSPORT_SEQ_EXT_ID, 0);
        let mut bytes = Vec::with_capacity(1500);
        p.write_padded(&mut bytes, padding);
        let wire = bytes.len() + Suite::RTP_OVERHEAD + UDP_IP_OVERHEAD;
        let tseq = self.cc.on_packet_sent(now, wire, probe);
        p.header.set_transport_seq(TRANSPORT_SEQ_EXT_ID, tseq);
        bytes.clear();
        p.write_padded(&mut bytes, padding);
        self.send.protect_rtp(&mut bytes)?;
        Ok(bytes)
    }

    /// The SFU's feedback on this participant's packets: the estimate, and the layers it
    /// carries.
    fn on_uplink_feedback(&mut self, now: Instant, fb: &rtcp::TransportFeedback) {
        self.stats.uplink_feedback_received += 1;
        self.cc.on_feedback(now, fb);
        self.uplink_feedback = true;
        if !self.byes.is_empty() {
            let ssrcs: Vec<u32> = self.byes.iter().map(|b| b.0).collect();
            self.send_rtcp(&[RtcpPacket::Bye(Bye { ssrcs })]);
            self.byes.retain_mut(|b| {
                b.1 = b.1.saturating_sub(1);
                b.1 > 0
            });
        }
        let estimate = self.cc.target_bps();
        if let Some(change) = self.uplink.update(now, estimate) {
            self.apply_layer_change(change);
        }
        if !self.uplink.sending().iter().all(|s| *s) {
            if let Some(probe) = self.cc.poll_probe(now) {
                self.schedule_probe(now, probe);
            }
        }
    }

    /// Acts on a layer change: a stopped layer says goodbye to the SFU (which moves its
    /// receivers to the next layer down at once); a started one waits for a keyframe.
    fn apply_layer_change(&mut self, change: LayerChange) {
        let ssrc = self
            .video_out
            .iter_mut()
            .find(|(_, v)| v.layer == change.layer)
            .map(|(&ssrc, v)| {
                v.needs_key = change.sending;
                ssrc
            });
        info!(
            layer = change.layer,
            sending = change.sending,
            estimate_bps = change.estimate_bps,
            need_bps = change.need_bps,
            "uplink layer {}",
            if change.sending { "started" } else { "stopped" }
        );
        if let Some(ssrc) = ssrc {
            self.byes.retain(|b| b.0 != ssrc);
            if !change.sending {
                self.send_rtcp(&[RtcpPacket::Bye(Bye { ssrcs: vec![ssrc] })]);
                self.byes.push((ssrc, BYE_REPEATS));
            }
        }
        self.layer_changes.push_back(change);
    }

    /// Spreads a probe burst over padding packets of at most 255 bytes (at least five), paced
    /// at the probe's rate, as the SFU and the 1:1 session do.
    fn schedule_probe(&mut self, now: Instant, probe: Probe) {
        let header = 12 + 12 + Suite::RTP_OVERHEAD + UDP_IP_OVERHEAD;
        let packets = probe.padding_packets(now, header);
        self.probes
            .extend(packets.map(|(at, padding)| (at, probe.cluster, padding)));
    }

    /// Sends the probe padding packets due, on the SSRC of the highest stopped layer (its
    /// sequence numbers go on from there when it starts again; nothing of it reaches a
    /// receiver).
    fn send_probes(&mut self, now: Instant) {
        while let Some(&(at, cluster, padding)) = self.probes.front() {
            if at > now {
                break;
            }
            self.probes.pop_front();
            let Some((&ssrc, out)) = self
                .video_out
                .iter_mut()
                .filter(|(_, v)| !self.uplink.is_sending(v.layer))
                .max_by_key(|(_, v)| v.layer)
            else {
                // Every layer goes again: the probe is not needed.
                self.probes.clear();
                break;
            };
            let mut p = RtpPacket::default();
            p.header.payload_type = UPLINK_PROBE_PT;
            p.header.ssrc = ssrc;
            p.header.sequence_number = out.seq;
            out.seq = out.seq.wrapping_add(1);
            match self.stamp_and_protect(now, &mut p, Some(cluster), padding) {
                Ok(bytes) => {
                    self.stats.probe_packets_sent += 1;
                    self.out.push_back(bytes);
                }
                Err(e) => trace!(error = %e, "protect failed"),
            }
        }
    }

    /// Seals one encoded video frame of the layer sent under `ssrc` (a keyframe or not, with
    /// RTP timestamp `timestamp` at 90 kHz), cuts the ciphertext into packets of at most
    /// [`VIDEO_PAYLOAD_MAX`] bytes with the frame marking element (start, end, keyframe) the
    /// SFU switches layers by, and protects them.
    ///
    /// The frame marking is all the SFU learns of the frame besides sizes and timing; the
    /// keyframe flag and the layer are repeated inside the ciphertext for the receivers.
    ///
    /// A frame of a layer the uplink does not carry now ([`layer_sending`](Self::layer_sending))
    /// is not sent, nor a delta frame of a layer that just started again (it waits for a
    /// keyframe).
    pub fn send_video(
        &mut self,
        now: Instant,
        ssrc: u32,
        timestamp: u32,
        keyframe: bool,
        frame: &[u8],
    ) -> Result<(), GroupPathError> {
        let out = self
            .video_out
            .get_mut(&ssrc)
            .ok_or(GroupPathError::NoVideoLayer(ssrc))?;
        let layer = out.layer;
        if !self.uplink.is_sending(layer) || (out.needs_key && !keyframe) {
            self.stats.video_frames_held_back += 1;
            return Ok(());
        }
        out.needs_key = false;
        let mut plain = Vec::with_capacity(frame.len() + 1);
        plain.push((layer << INNER_LAYER_SHIFT) | if keyframe { INNER_KEY } else { 0 });
        plain.extend_from_slice(frame);
        self.scratch.clear();
        let sealed = self
            .crypto
            .seal(FrameKind::Video, &plain, &mut self.scratch);
        plain.iter_mut().for_each(|b| *b = 0);
        if let Err(e) = sealed {
            self.stats.frame_failures += 1;
            return Err(e.into());
        }
        let sealed = std::mem::take(&mut self.scratch);
        let chunks = sealed.chunks(VIDEO_PAYLOAD_MAX).count();
        for (i, chunk) in sealed.chunks(VIDEO_PAYLOAD_MAX).enumerate() {
            let Some(out) = self.video_out.get_mut(&ssrc) else {
                break;
            };
            let mut mark = 0;
            if i == 0 {
                mark |= MARK_START;
            }
            if i + 1 == chunks {
                mark |= MARK_END;
            }
            if keyframe {
                mark |= MARK_KEY;
            }
            let mut p = RtpPacket::default();
            p.header.payload_type = VIDEO_PT;
            p.header.ssrc = ssrc;
            p.header.sequence_number = out.seq;
            out.seq = out.seq.wrapping_add(1);
            p.header.timestamp = timestamp;
            p.header.marker = i + 1 == chunks;
            p.header.set_extension(FRAME_MARKING_EXT_ID, vec![mark]);
            p.payload = chunk.to_vec();
            let seq = p.header.sequence_number;
            match self.stamp_and_protect(now, &mut p, None, 0) {
                Ok(bytes) => {
                    self.uplink
                        .on_layer_sent(now, layer, bytes.len() + UDP_IP_OVERHEAD);
                    self.stats.video_packets_sent += 1;
                    if self.sent_video.len() == SEND_HISTORY_PACKETS {
                        self.sent_video.pop_front();
                    }
                    self.sent_video.push_back(SentVideo {
                        ssrc,
                        seq,
                        resends: 0,
                        bytes: bytes.clone(),
                    });
                    self.out.push_back(bytes);
                }
                Err(e) => trace!(error = %e, "protect failed"),
            }
        }
        self.scratch = sealed;
        self.stats.video_frames_sent += 1;
        Ok(())
    }

    /// Asks the sender of the video arriving under `ssrc` (through the SFU) for a keyframe.
    pub fn request_keyframe(&mut self, ssrc: u32) {
        let mut bytes = rtcp::write_compound(&[RtcpPacket::Pli(Pli {
            sender_ssrc: self.ssrc,
            media_ssrc: ssrc,
        })]);
        match self.send.protect_rtcp(&mut bytes) {
            Ok(()) => self.out.push_back(bytes),
            Err(e) => trace!(error = %e, "protect failed"),
        }
    }

    /// The next layer (by its SSRC) the SFU asked a keyframe for: encode the next frame of
    /// that layer as a keyframe.
    pub fn poll_keyframe_request(&mut self) -> Option<u32> {
        self.keyframe_requests.pop_front()
    }

    /// The next opened video frame of another participant.
    pub fn poll_video(&mut self) -> Option<ParticipantVideo> {
        self.video.pop_front()
    }

    /// A video packet of a remote stream: held until its frame is whole (missing packets are
    /// NACKed to the SFU, which resends them from its cache), then opened, frames in order.
    fn handle_video(&mut self, now: Instant, packet: RtpPacket) -> Result<(), GroupPathError> {
        let ssrc = packet.header.ssrc;
        let Some(stream) = self.video_in.get_mut(&ssrc) else {
            self.stats.unknown_ssrc += 1;
            return Err(GroupPathError::UnknownSsrc(ssrc));
        };
        self.stats.packets_received += 1;
        let Some(&[mark]) = packet.header.extension(FRAME_MARKING_EXT_ID) else {
            return Err(GroupPathError::NoFrameMarking);
        };
        let ext = stream.extend(packet.header.sequence_number);
        if stream.nack.on_packet(now, ext) {
            self.stats.video_packets_recovered += 1;
        }
        let next = *stream.next.get_or_insert(ext);
        if ext < next || stream.packets.contains_key(&ext) {
            // Late (its frame was handed out or given up), or a duplicate.
            return Ok(());
        }
        stream.bytes += packet.payload.len();
        stream.packets.insert(
            ext,
            HeldPacket {
                at: now,
                timestamp: packet.header.timestamp,
                mark,
                payload: packet.payload,
            },
        );
        let result = self.assemble_stream(now, ssrc);
        self.send_nacks(now);
        result
    }

    /// Hands out (opens) the frames of stream `ssrc` that are whole; asks for a keyframe
    /// when one was given up or the stream has not had one.
    fn assemble_stream(&mut self, now: Instant, ssrc: u32) -> Result<(), GroupPathError> {
        let Some(stream) = self.video_in.get_mut(&ssrc) else {
            return Ok(());
        };
        let mut frames = Vec::new();
        let a = stream.assemble(now, &mut frames);
        let device = stream.device;
        self.stats.video_frames_incomplete += a.incomplete;
        self.stats.video_frames_before_keyframe += a.before_key;
        if a.need_key {
            let due = stream
                .last_keyframe_request
                .is_none_or(|t| now.saturating_duration_since(t) >= PATH_KEYFRAME_INTERVAL);
            if due {
                stream.last_keyframe_request = Some(now);
                self.stats.video_keyframes_requested += 1;
                self.request_keyframe(ssrc);
            }
        }
        let mut result = Ok(());
        for (ts, marked_key, sealed) in frames {
            let mut plain = Vec::with_capacity(sealed.len());
            let r = match self
                .crypto
                .open(now, &device, FrameKind::Video, ts, &sealed, &mut plain)
            {
                Ok(FrameOpen::Frame) => self.deliver_video(device, ssrc, ts, marked_key, plain),
                Ok(FrameOpen::Held) => {
                    self.held_marks.insert((device, ts), (ssrc, marked_key));
                    Ok(())
                }
                Err(e) => {
                    self.stats.frame_failures += 1;
                    Err(e.into())
                }
            };
            if r.is_err() {
                result = r;
            }
        }
        result
    }

    /// Sends the NACKs due: one generic NACK per stream with missing packets, in one RTCP
    /// compound.
    fn send_nacks(&mut self, now: Instant) {
        let mut packets = Vec::new();
        for (&ssrc, stream) in &mut self.video_in {
            let lost = stream.nack.poll_nacks(now, NACK_RTT);
            if lost.is_empty() {
                continue;
            }
            self.stats.video_nacked += lost.len() as u64;
            packets.push(RtcpPacket::Nack(Nack {
                sender_ssrc: self.ssrc,
                media_ssrc: ssrc,
                // The low 16 bits of an extended sequence number are the number on the wire.
                lost: lost.into_iter().map(|e| e as u16).collect(),
            }));
        }
        if !packets.is_empty() {
            self.send_rtcp(&packets);
        }
    }

    /// Protects and queues one RTCP compound to the SFU, under this participant's SSRC.
    fn send_rtcp(&mut self, packets: &[RtcpPacket]) {
        let mut bytes = rtcp::write_compound(packets);
        match self.send.protect_rtcp(&mut bytes) {
            Ok(()) => self.out.push_back(bytes),
            Err(e) => trace!(error = %e, "protect failed"),
        }
    }

    /// Sends the transport-wide feedback due (the arrivals recorded since the last one).
    fn send_feedback(&mut self, now: Instant) {
        if self.next_feedback.is_none_or(|t| now < t) {
            return;
        }
        if let Some(fb) = self.twcc.build(self.ssrc, 0) {
            self.stats.transport_feedback_sent += 1;
            self.send_rtcp(&[RtcpPacket::TransportFeedback(fb)]);
        }
        self.next_feedback = self.twcc.has_pending().then_some(now + FEEDBACK_INTERVAL);
    }

    /// Checks an opened video frame's header byte and hands the frame out.
    fn deliver_video(
        &mut self,
        device: DeviceId,
        ssrc: u32,
        timestamp: u32,
        marked_key: bool,
        mut plain: Vec<u8>,
    ) -> Result<(), GroupPathError> {
        let Some(&head) = plain.first() else {
            self.stats.frame_failures += 1;
            return Err(FrameCryptoError::VideoHeader.into());
        };
        if head & INNER_RESERVED != 0 {
            self.stats.frame_failures += 1;
            return Err(FrameCryptoError::VideoHeader.into());
        }
        let keyframe = head & INNER_KEY != 0;
        if keyframe != marked_key {
            self.stats.video_marking_mismatch += 1;
        }
        plain.remove(0);
        self.stats.video_frames_received += 1;
        self.video.push_back(ParticipantVideo {
            device,
            ssrc,
            timestamp,
            keyframe,
            layer: head >> INNER_LAYER_SHIFT,
            frame: plain,
        });
        Ok(())
    }

    /// Seals, packetizes and protects one encoded 20 ms frame whose RFC 6464 level is
    /// `level` (−dBov, 0 loudest, 127 silence).
    pub fn send_audio(&mut self, now: Instant, frame: &[u8], level: u8, voice: bool) {
        self.scratch.clear();
        if let Err(e) = self.crypto.seal(FrameKind::Audio, frame, &mut self.scratch) {
            self.stats.frame_failures += 1;
            trace!(error = %e, "frame not sealed");
            return;
        }
        self.seq = self.seq.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(FRAME_TICKS);
        let mut p = RtpPacket::default();
        p.header.payload_type = OPUS_PT;
        p.header.ssrc = self.ssrc;
        p.header.sequence_number = self.seq;
        p.header.timestamp = self.timestamp;
        p.header.set_audio_level(
            AUDIO_LEVEL_EXT,
            AudioLevel {
                voice,
                level: level.min(127),
            },
        );
        p.payload = std::mem::take(&mut self.scratch);
        let sent = self.stamp_and_protect(now, &mut p, None, 0);
        self.scratch = p.payload;
        match sent {
            Ok(bytes) => {
                self.uplink
                    .on_audio_sent(now, bytes.len() + UDP_IP_OVERHEAD);
                self.stats.frames_sent += 1;
                self.out.push_back(bytes);
            }
            Err(e) => trace!(error = %e, "protect failed"),
        }
    }

    /// Handles one datagram from the SFU.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        mut datagram: Vec<u8>,
    ) -> Result<(), GroupPathError> {
        if matches!(datagram.get(1), Some(192..=223)) {
            // RTCP from the SFU: relayed PLIs and the SFU's NACKs for this participant's video
            // layers, sender reports.
            if let Err(e) = self.recv.unprotect_rtcp(&mut datagram) {
                self.stats.srtp_failures += 1;
                return Err(e.into());
            }
            self.stats.rtcp_received += 1;
            for p in rtcp::parse_compound(&datagram).unwrap_or_default() {
                match p {
                    RtcpPacket::Nack(nack) if self.video_out.contains_key(&nack.media_ssrc) => {
                        // Not for a layer stopped since: its receivers wait for the layer
                        // below's keyframe, and the resends would go into the congested
                        // uplink that made the layer stop, ahead of that keyframe.
                        let layer = self.video_out[&nack.media_ssrc].layer;
                        if !self.uplink.is_sending(layer) {
                            self.stats.video_resends_unserved += nack.lost.len() as u64;
                            continue;
                        }
                        // Lost on the way to the SFU: the same protected bytes again (the
                        // SFU's SRTP never saw that index, so it takes them).
                        for seq in nack.lost {
                            let sent = self
                                .sent_video
                                .iter_mut()
                                .find(|p| p.ssrc == nack.media_ssrc && p.seq == seq);
                            match sent {
                                Some(p) if p.resends < MAX_RESENDS => {
                                    p.resends += 1;
                                    self.stats.video_packets_resent += 1;
                                    // It carries its first transport sequence number: the
                                    // controller counts it as sent without one.
                                    self.cc
                                        .on_untracked_sent(now, p.bytes.len() + UDP_IP_OVERHEAD);
                                    self.out.push_back(p.bytes.clone());
                                }
                                _ => self.stats.video_resends_unserved += 1,
                            }
                        }
                    }
                    RtcpPacket::Pli(pli) if self.video_out.contains_key(&pli.media_ssrc) => {
                        self.stats.keyframe_requests += 1;
                        if !self.keyframe_requests.contains(&pli.media_ssrc) {
                            self.keyframe_requests.push_back(pli.media_ssrc);
                        }
                    }
                    RtcpPacket::TransportFeedback(fb) => self.on_uplink_feedback(now, &fb),
                    RtcpPacket::SenderReport(sr) => {
                        // Answered at once (the delay since it is then ~0): the SFU takes
                        // the round trip of this leg from the block (RFC 3550 §6.4.1).
                        self.stats.receiver_reports_sent += 1;
                        self.send_rtcp(&[RtcpPacket::ReceiverReport(ReceiverReport {
                            ssrc: self.ssrc,
                            reports: vec![ReportBlock {
                                ssrc: sr.ssrc,
                                last_sr: (sr.ntp_time >> 16) as u32,
                                delay_since_last_sr: 0,
                                ..ReportBlock::default()
                            }],
                        })]);
                    }
                    _ => {}
                }
            }
            return Ok(());
        }
        if let Err(e) = self.recv.unprotect_rtp(&mut datagram) {
            match e {
                // A second resend of a packet already recovered (or a copy): harmless.
                hush_srtp::Error::Replayed { .. } => self.stats.duplicates += 1,
                _ => self.stats.srtp_failures += 1,
            }
            return Err(e.into());
        }
        let packet = RtpPacket::parse(&datagram).map_err(|_| GroupPathError::Malformed)?;
        if let Some(tseq) = packet.header.transport_seq(TRANSPORT_SEQ_EXT_ID) {
            self.twcc.record(now, tseq);
            if self.next_feedback.is_none() {
                self.next_feedback = Some(now + FEEDBACK_INTERVAL);
            }
        }
        if packet.header.payload_type == PROBE_PT && packet.payload.is_empty() {
            // The SFU's bandwidth probe: only its arrival matters.
            self.stats.probes_received += 1;
            return Ok(());
        }
        if self.video_in.contains_key(&packet.header.ssrc) {
            let result = self.handle_video(now, packet);
            self.release_frames(now);
            return result;
        }
        let Some(remote) = self.remotes.get_mut(&packet.header.ssrc) else {
            self.stats.unknown_ssrc += 1;
            return Err(GroupPathError::UnknownSsrc(packet.header.ssrc));
        };
        let mut frame = Vec::with_capacity(packet.payload.len());
        let opened = self.crypto.open(
            now,
            &remote.device,
            FrameKind::Audio,
            packet.header.timestamp,
            &packet.payload,
            &mut frame,
        );
        let opened = match opened {
            Ok(o) => o,
            Err(e) => {
                self.stats.frame_failures += 1;
                return Err(e.into());
            }
        };
        self.stats.packets_received += 1;
        if opened == FrameOpen::Frame {
            remote
                .jitter
                .insert(now, packet.header.timestamp, frame, Recovery::None);
        }
        self.release_frames(now);
        Ok(())
    }

    /// Gives frames the end-to-end layer held and has now opened (their key arrived) to their
    /// participants' jitter buffers. Call after installing a key.
    pub fn release_frames(&mut self, now: Instant) {
        while let Some(r) = self.crypto.poll_released() {
            if r.kind == FrameKind::Video {
                let mark = self.held_marks.remove(&(r.device, r.timestamp));
                let ssrc = mark.map(|m| m.0).or_else(|| {
                    self.video_in
                        .iter()
                        .find(|(_, v)| v.device == r.device)
                        .map(|(s, _)| *s)
                });
                if let Some(ssrc) = ssrc {
                    let marked_key = mark.is_some_and(|m| m.1);
                    if let Err(e) =
                        self.deliver_video(r.device, ssrc, r.timestamp, marked_key, r.frame)
                    {
                        trace!(error = %e, "released video frame refused");
                    }
                }
                continue;
            }
            if let Some(remote) = self.remotes.values_mut().find(|x| x.device == r.device) {
                remote
                    .jitter
                    .insert(now, r.timestamp, r.frame, Recovery::None);
            }
        }
        // Marks of held frames that never opened (their key did not come): bounded.
        if self.held_marks.len() > MAX_HELD_MARKS {
            self.held_marks.clear();
        }
    }

    /// The end-to-end layer.
    pub fn crypto_mut(&mut self) -> &mut C {
        &mut self.crypto
    }

    /// Runs every participant's playout ticks due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.crypto.handle_timeout(now);
        self.release_frames(now);
        self.send_feedback(now);
        self.send_probes(now);
        let waiting: Vec<u32> = self
            .video_in
            .iter()
            .filter(|(_, v)| v.give_up_at().is_some_and(|t| t <= now))
            .map(|(&s, _)| s)
            .collect();
        for ssrc in waiting {
            if let Err(e) = self.assemble_stream(now, ssrc) {
                trace!(error = %e, "video frame refused");
            }
        }
        self.send_nacks(now);
        for r in self.remotes.values_mut() {
            r.jitter.handle_timeout(now);
            while let Some(playout) = r.jitter.poll_playout() {
                self.playouts.push_back(ParticipantPlayout {
                    device: r.device,
                    playout,
                });
            }
        }
    }

    /// The next datagram to send to the SFU.
    pub fn poll_datagram(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    /// The next playout action.
    pub fn poll_playout(&mut self) -> Option<ParticipantPlayout> {
        self.playouts.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.remotes
            .values()
            .filter_map(|r| r.jitter.poll_timeout())
            .chain(self.crypto.poll_timeout())
            .chain(self.next_feedback)
            .chain(self.probes.front().map(|p| p.0))
            .chain(
                self.video_in
                    .values()
                    .flat_map(|v| [v.nack.poll_timeout(), v.give_up_at()])
                    .flatten(),
            )
            .min()
    }

    /// Counters.
    pub fn stats(&self) -> GroupPathStats {
        let mut s = self.stats;
        s.late = self.remotes.values().map(|r| r.jitter.stats().late).sum();
        s.e2ee = self.crypto.stats();
        s.uplink_estimate_bps = self.uplink_estimate_bps();
        s.layers_sending = self
            .uplink
            .sending()
            .iter()
            .enumerate()
            .filter(|(_, on)| **on)
            .fold(0, |m, (i, _)| m | (1 << i));
        s.layer_changes = self.uplink.changes();
        s
    }
}

/// The RFC 6464 level of a PCM frame: −dBov of its RMS, 0 (loudest) to 127 (silence).
pub fn audio_level(pcm: &[i16]) -> u8 {
    if pcm.is_empty() {
        return 127;
    }
    let energy: f64 = pcm.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    let rms = (energy / pcm.len() as f64).sqrt() / 32768.0;
    if rms <= 0.0 {
        return 127;
    }
    let dbov = 20.0 * rms.log10();
    (-dbov).round().clamp(0.0, 127.0) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> DeviceId {
        use hush_sfu::ed25519_dalek::SigningKey;
        DeviceId::from_signing_key(&SigningKey::from_bytes(&[3; 32]))
    }

    /// Feeds packet `seq` of frame `ts` with marking `mark` to `v`.
    fn feed(v: &mut VideoIn, now: Instant, seq: u16, ts: u32, mark: u8) -> Vec<SealedFrame> {
        let ext = v.extend(seq);
        v.nack.on_packet(now, ext);
        let next = *v.next.get_or_insert(ext);
        if ext >= next && !v.packets.contains_key(&ext) {
            v.bytes += 1;
            v.packets.insert(
                ext,
                HeldPacket {
                    at: now,
                    timestamp: ts,
                    mark,
                    payload: vec![seq as u8],
                },
            );
        }
        let mut out = Vec::new();
        v.assemble(now, &mut out);
        out
    }

    #[test]
    fn video_frames_come_out_whole_and_in_order_across_a_sequence_wrap() {
        let t0 = Instant::now();
        let mut v = VideoIn::new(device());
        let key = MARK_START | MARK_END | MARK_KEY;
        // A one-packet keyframe at 65534, then a two-packet frame over the wrap.
        assert_eq!(feed(&mut v, t0, 65534, 1, key).len(), 1);
        assert!(feed(&mut v, t0, 65535, 2, MARK_START).is_empty());
        let f = feed(&mut v, t0, 0, 2, MARK_END);
        assert_eq!(f, vec![(2, false, vec![255, 0])]);
        // Packet 1 is lost: frame 3 (1, 2) waits, frame 4 (3) waits behind it; 1 is NACKed.
        assert!(feed(&mut v, t0, 2, 3, MARK_END).is_empty());
        assert!(feed(&mut v, t0, 3, 4, MARK_START | MARK_END).is_empty());
        let lost: Vec<u16> = v
            .nack
            .poll_nacks(t0, NACK_RTT)
            .into_iter()
            .map(|e| e as u16)
            .collect();
        assert_eq!(lost, vec![1]);
        // Its resend comes: both frames, in order. A late copy of 0 is ignored.
        let f = feed(&mut v, t0, 1, 3, MARK_START);
        assert_eq!(f, vec![(3, false, vec![1, 2]), (4, false, vec![3])]);
        assert!(feed(&mut v, t0, 0, 2, MARK_END).is_empty());
        // Packet 4 never comes: the frame (4, 5) is given up after the wait, and a keyframe
        // asked for, since what follows (6) is not one.
        assert!(feed(&mut v, t0, 5, 5, MARK_END).is_empty());
        assert!(feed(&mut v, t0, 6, 6, MARK_START | MARK_END).is_empty());
        let mut out = Vec::new();
        let a = v.assemble(t0 + VIDEO_RECOVERY_WAIT / 2, &mut out);
        assert!(out.is_empty() && a.incomplete == 0);
        assert_eq!(v.give_up_at(), Some(t0 + VIDEO_RECOVERY_WAIT));
        let a = v.assemble(t0 + VIDEO_RECOVERY_WAIT, &mut out);
        assert_eq!((a.incomplete, a.need_key), (1, true));
        assert_eq!(out, vec![(6, false, vec![6])]);
        assert!(v.packets.is_empty() && v.bytes == 0);
    }

    #[test]
    fn frames_given_up_before_a_held_keyframe_ask_for_no_other() {
        // The SFU switched this stream to another layer at a keyframe while frames of the old
        // one still miss packets lost on the sender's uplink (the sender stopped that layer:
        // they never come). The frame missing a packet is given up, the one after it still
        // handed out; the keyframe, itself missing a packet, is waited for, and no other is
        // asked for.
        let t0 = Instant::now();
        let mut v = VideoIn::new(device());
        let one = MARK_START | MARK_END;
        assert_eq!(feed(&mut v, t0, 10, 1, one | MARK_KEY).len(), 1);
        // Old layer: frame 2 (11, 12) misses 12; frame 3 (13) is whole.
        assert!(feed(&mut v, t0, 11, 2, MARK_START).is_empty());
        assert!(feed(&mut v, t0, 13, 3, one).is_empty());
        // New layer, later: keyframe 4 (14, 15, 16) misses 16, NACKed to the SFU.
        let switch = t0 + VIDEO_RECOVERY_WAIT / 2;
        let key = MARK_START | MARK_KEY;
        assert!(feed(&mut v, switch, 14, 4, key).is_empty());
        assert!(feed(&mut v, switch, 15, 4, MARK_KEY).is_empty());
        assert!(feed(&mut v, switch, 17, 5, one).is_empty());
        let mut out = Vec::new();
        let a = v.assemble(t0 + VIDEO_RECOVERY_WAIT, &mut out);
        assert_eq!(out, vec![(3, false, vec![13])]);
        assert_eq!((a.incomplete, a.need_key), (1, false));
        assert_eq!(v.give_up_at(), Some(switch + VIDEO_RECOVERY_WAIT));
        // The keyframe's last packet comes (resent): it and the frame behind it go out.
        let f = feed(&mut v, t0 + VIDEO_RECOVERY_WAIT, 16, 4, MARK_KEY | MARK_END);
        assert_eq!(f, vec![(4, true, vec![14, 15, 16]), (5, false, vec![17])]);
    }

    #[test]
    fn a_stream_without_a_keyframe_yet_asks_when_it_gives_up_a_frame_before_a_held_one() {
        let t0 = Instant::now();
        let mut v = VideoIn::new(device());
        // Frame 1 (10, 11) misses 11; frame 2 (12, 13) misses 13; keyframe 3 (14, 15) misses 15.
        assert!(feed(&mut v, t0, 10, 1, MARK_START).is_empty());
        let later = t0 + VIDEO_RECOVERY_WAIT / 2;
        assert!(feed(&mut v, later, 12, 2, MARK_START).is_empty());
        assert!(feed(&mut v, later, 14, 3, MARK_START | MARK_KEY).is_empty());
        let mut out = Vec::new();
        let a = v.assemble(t0 + VIDEO_RECOVERY_WAIT, &mut out);
        assert!(out.is_empty());
        assert_eq!((a.incomplete, a.need_key), (1, true));
    }

    #[test]
    fn a_stream_drops_delta_frames_until_its_first_keyframe() {
        let t0 = Instant::now();
        let mut v = VideoIn::new(device());
        let one = MARK_START | MARK_END;
        assert!(feed(&mut v, t0, 10, 1, one).is_empty());
        let mut out = Vec::new();
        let a = v.assemble(t0, &mut out);
        assert!(out.is_empty() && !a.need_key, "already counted");
        assert_eq!(feed(&mut v, t0, 11, 2, one | MARK_KEY).len(), 1);
        assert_eq!(feed(&mut v, t0, 12, 3, one).len(), 1);
    }

    #[test]
    fn audio_level_of_silence_full_scale_and_a_quiet_tone() {
        assert_eq!(audio_level(&[0; 960]), 127);
        assert_eq!(audio_level(&[i16::MAX; 960]), 0);
        // A sine of amplitude 8000 has an RMS of 8000/√2 ≈ 5657, 20·log10(5657/32768) ≈ −15.3 dBov.
        let tone: Vec<i16> = (0..960)
            .map(|i| (8000.0 * (f64::from(i) * 0.0576).sin()) as i16)
            .collect();
        assert!(
            (14..=16).contains(&audio_level(&tone)),
            "{}",
            audio_level(&tone)
        );
    }
}

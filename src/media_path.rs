//! The media path of one call: SRTP protection (`hush-srtp`) around the media engine
//! (`hush-media`), keyed by the call's [`MediaKeys`].
//!
//! A [`MediaPath`] exists only once a call's keys do, that is after the callee accepted: no key,
//! no path, no media in either direction. With codecs set ([`set_audio_codec`](MediaPath::set_audio_codec),
//! [`set_video_codecs`](MediaPath::set_video_codecs)) it is one straight path per direction:
//! PCM or pictures in, codec, engine, SRTP, datagrams out; datagrams in, SRTP, engine, codec,
//! PCM or pictures out. It is sans-IO: encrypted datagrams and `now` in,
//! encrypted datagrams, media events and a deadline out. The driver moves the datagrams over the
//! ICE connection.
//!
//! ```
//! use std::time::Instant;
//! use hush::media_path::MediaPath;
//! # fn keys() -> (hush_crypto::MediaKeys, hush_crypto::MediaKeys) { hush::media_path::test_keys() }
//! let (alice_keys, bob_keys) = keys();
//! let now = Instant::now();
//! let config = hush_media::SessionConfig::default();
//! let mut alice = MediaPath::new(&alice_keys, config.clone(), now).unwrap();
//! let mut bob = MediaPath::new(&bob_keys, config.mirrored(), now).unwrap();
//! alice.send_audio(now, &[0xf8, 0xff, 0xfe]); // one (silent) Opus frame
//! while let Some(datagram) = alice.poll_datagram() {
//!     bob.handle_datagram(now, datagram).unwrap();
//! }
//! assert_eq!(bob.stats().unprotect_failures, 0);
//! ```

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hush_crypto::MediaKeys;
use hush_media::codec::{Codec, OpusCodec};
use hush_media::jitter::Playout;
use hush_media::rtp::VideoFrame;
use hush_media::sync::{LipSync, LipSyncStats, SyncStream};
use hush_media::video::{
    EncodedVideoFrame, I420Frame, PlayoutStats, VideoDecoder, VideoEncoder, VideoError,
    VideoPlayout,
};
use hush_media::{Event, MediaSession, SessionConfig, TransmitKind};
use hush_srtp::SrtpContext;
use tracing::debug;

use crate::client::{AudioFrame, FrameSource};

/// Samples in one 20 ms frame of 48 kHz mono audio.
const FRAME_SAMPLES: usize = 960;

/// Why a datagram was not accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaPathError {
    /// SRTP refused the packet: forged, corrupted, replayed, or under a key we do not have.
    #[error("srtp: {0}")]
    Srtp(#[from] hush_srtp::Error),
    /// The packet authenticated but the media engine could not parse it (or the audio codec
    /// failed on a frame).
    #[error("media: {0}")]
    Media(#[from] hush_media::Error),
    /// The video encoder failed on a picture.
    #[error("video: {0}")]
    Video(#[from] VideoError),
}

/// Counters of the protection layer of one call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathStats {
    /// Datagrams protected and handed out for sending.
    pub sent: u64,
    /// Datagrams that authenticated and reached the media engine.
    pub received: u64,
    /// Datagrams that failed to authenticate or were replays.
    pub unprotect_failures: u64,
}

/// Counters of the video codecs on a path (W3C webrtc-stats names in brackets).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct VideoCodecStats {
    /// Frames encoded and sent, by the path's encoder or handed in encoded (`framesEncoded`).
    pub frames_encoded: u64,
    /// Keyframes among them (`keyFramesEncoded`).
    pub key_frames_encoded: u64,
    /// Bytes of those frames (the codec's output: no RTP headers, retransmissions or padding).
    pub bytes_encoded: u64,
    /// Pictures the encoder's rate control skipped.
    pub frames_skipped_by_encoder: u64,
    /// Time spent encoding, in seconds (`totalEncodeTime`).
    pub total_encode_time: f64,
    /// Frames decoded into pictures (`framesDecoded`).
    pub frames_decoded: u64,
    /// Keyframes among them (`keyFramesDecoded`).
    pub key_frames_decoded: u64,
    /// Frames received but not shown: the decoder refused them (lost reference, corrupt),
    /// and the path asked for a keyframe (`framesDropped`).
    pub frames_dropped: u64,
    /// Time spent decoding, in seconds (`totalDecodeTime`).
    pub total_decode_time: f64,
    /// Keyframe requests (PLI/FIR) the peer sent us (`pliCount` seen from the sender).
    pub keyframe_requests_received: u64,
    /// Keyframe requests our decoder made.
    pub keyframe_requests_sent: u64,
}

/// SRTP + media engine for one call. See the [module docs](self).
pub struct MediaPath {
    tx: SrtpContext,
    rx: SrtpContext,
    session: MediaSession,
    out: VecDeque<Vec<u8>>,
    stats: PathStats,
    encoder: Option<Box<dyn VideoEncoder>>,
    decoder: Option<Box<dyn VideoDecoder>>,
    decoded: VecDeque<I420Frame>,
    /// Decoded pictures waiting for their render time, with their RTP timestamps.
    playout: VideoPlayout<(u32, I420Frame)>,
    /// Received frames waiting for their render time (no decoder on the path: the
    /// application decodes them).
    encoded_playout: VideoPlayout<VideoFrame>,
    pending: VecDeque<Event>,
    video_fps: f32,
    /// The encoder's rates come from [`set_video_rates`](Self::set_video_rates).
    ladder_rates: bool,
    video_stats: VideoCodecStats,
    audio_codec: Option<OpusCodec>,
    /// Holds the earlier of the received audio and video back so both play in step.
    lip_sync: LipSync,
    played: VecDeque<AudioFrame>,
    encoded: Vec<u8>,
}

impl MediaPath {
    /// Keys the path with `keys` (send and receive contexts) and starts the media engine.
    pub fn new(
        keys: &MediaKeys,
        config: SessionConfig,
        now: Instant,
    ) -> Result<Self, hush_srtp::Error> {
        let path = Self {
            tx: SrtpContext::new(keys.suite, &keys.send_key, &keys.send_salt)?,
            rx: SrtpContext::new(keys.suite, &keys.recv_key, &keys.recv_salt)?,
            session: MediaSession::new(config, now),
            out: VecDeque::new(),
            stats: PathStats::default(),
            encoder: None,
            decoder: None,
            decoded: VecDeque::new(),
            playout: VideoPlayout::new(),
            encoded_playout: VideoPlayout::new(),
            pending: VecDeque::new(),
            video_fps: 30.0,
            ladder_rates: false,
            video_stats: VideoCodecStats::default(),
            audio_codec: None,
            lip_sync: LipSync::new(),
            played: VecDeque::new(),
            encoded: Vec::with_capacity(400),
        };
        LIVE_PATHS.fetch_add(1, Ordering::Relaxed);
        Ok(path)
    }

    /// Sends one encoded audio frame.
    pub fn send_audio(&mut self, now: Instant, frame: &[u8]) {
        self.session.send_audio(now, frame, None);
        self.protect_transmits();
    }

    /// Puts the audio codec on the path: [`send_pcm`](Self::send_pcm) encodes here, and the
    /// engine's playout actions are decoded (or concealed) here into 20 ms frames of PCM
    /// ([`poll_audio`](Self::poll_audio)); the engine's bitrate and FEC targets go to it.
    pub fn set_audio_codec(&mut self, codec: OpusCodec) {
        self.audio_codec = Some(codec);
    }

    /// Encodes one 20 ms frame of 48 kHz mono PCM with the path's audio codec and sends it;
    /// returns the encoded size. Without an audio codec nothing is sent (`Ok(0)`).
    pub fn send_pcm(&mut self, now: Instant, pcm: &[i16]) -> Result<usize, MediaPathError> {
        let Some(codec) = self.audio_codec.as_mut() else {
            return Ok(0);
        };
        self.encoded.clear();
        codec.encode(pcm, &mut self.encoded)?;
        let n = self.encoded.len();
        self.session.send_audio(now, &self.encoded, None);
        self.protect_transmits();
        // The engine may announce a new target as it takes the frame (its first one, or, with
        // video, the congestion window's pushback): the codec takes it now, before the application's
        // `poll_event` could take it past the codec.
        self.run_codecs(now);
        Ok(n)
    }

    /// The next 20 ms frame of PCM to play, in playout order (with an audio codec set).
    pub fn poll_audio(&mut self) -> Option<AudioFrame> {
        self.played.pop_front()
    }

    /// Puts video codecs on the path: pictures given to [`send_video`](Self::send_video) are
    /// encoded here and frames received are decoded here ([`poll_video`](Self::poll_video)),
    /// so a picture goes straight through codec, engine and SRTP in each direction. `fps` is
    /// the frame rate the source delivers. The session config should use
    /// `VideoPayload::H264` for an H.264 codec.
    pub fn set_video_codecs(
        &mut self,
        encoder: Option<Box<dyn VideoEncoder>>,
        decoder: Option<Box<dyn VideoDecoder>>,
        fps: f32,
    ) {
        self.encoder = encoder;
        self.decoder = decoder;
        self.video_fps = fps;
    }

    /// Encodes one picture and sends it. Returns whether a frame went out (the encoder's rate
    /// control may drop one). Without an encoder nothing is sent.
    pub fn send_video(
        &mut self,
        now: Instant,
        picture: &I420Frame,
    ) -> Result<bool, MediaPathError> {
        self.run_codecs(now);
        let Some(enc) = self.encoder.as_mut() else {
            return Ok(false);
        };
        // The codec's own CPU time, for the stats and the ladder's CPU check: a measurement,
        // not protocol time.
        let started = Instant::now();
        let encoded = enc.encode(picture);
        self.video_stats.total_encode_time += started.elapsed().as_secs_f64();
        let Some(frame) = encoded? else {
            self.video_stats.frames_skipped_by_encoder += 1;
            return Ok(false);
        };
        self.send_encoded_video(now, &frame);
        Ok(true)
    }

    /// Sends one already-encoded frame (an H.264 Annex B access unit from the application's
    /// own codec, or from the path's encoder).
    pub fn send_encoded_video(&mut self, now: Instant, frame: &EncodedVideoFrame) {
        self.video_stats.frames_encoded += 1;
        self.video_stats.key_frames_encoded += u64::from(frame.keyframe);
        self.video_stats.bytes_encoded += frame.data.len() as u64;
        self.session.send_video(now, &frame.data, frame.keyframe);
        self.protect_transmits();
    }

    /// Sets the encoder's bitrate and frame rate from now on (the sender's ladder decides
    /// them); the engine's video targets no longer go to the encoder by themselves.
    pub fn set_video_rates(&mut self, bps: u32, fps: f32) {
        self.ladder_rates = true;
        self.video_fps = fps;
        if let Some(enc) = self.encoder.as_mut() {
            enc.set_rates(bps, fps);
        }
    }

    /// Makes the path's encoder send a keyframe next (video resumes after a pause, the camera
    /// came back on).
    pub fn force_keyframe(&mut self) {
        if let Some(enc) = self.encoder.as_mut() {
            enc.request_keyframe();
        }
    }

    /// Asks the peer for a keyframe of its video (PLI), rate-limited by the engine: for an
    /// application whose own decoder lost its reference.
    pub fn request_keyframe(&mut self, now: Instant) {
        self.video_stats.keyframe_requests_sent += 1;
        self.session.request_keyframe(now);
        self.protect_transmits();
    }

    /// Counters of the video codecs.
    pub fn video_stats(&self) -> VideoCodecStats {
        self.video_stats
    }

    /// The next decoded picture received, in order, once its render time came; its
    /// `capture_time` is that render time. A picture is decoded as soon as its frame is
    /// complete, then held until its capture time (the RTP timestamp, mapped to the local clock
    /// through the fastest transit seen) plus the path's playout delay: zero on a clean path,
    /// what the repairs of lost packets take on a lossy one (up to 400 ms; see
    /// [`hush_media::video::playout`]). [`poll_timeout`](Self::poll_timeout) includes the next
    /// render time.
    pub fn poll_video(&mut self) -> Option<I420Frame> {
        self.decoded.pop_front()
    }

    /// The render-time scheduler's figures for received video (with a decoder on the path, or
    /// for the frames handed out encoded without one), and its delay now.
    pub fn video_playout(&self) -> (PlayoutStats, Duration) {
        if self.decoder.is_some() {
            (self.playout.stats(), self.playout.target_delay())
        } else {
            (
                self.encoded_playout.stats(),
                self.encoded_playout.target_delay(),
            )
        }
    }

    /// Lip sync of the received audio and video: the skew measured, and the delay added to
    /// either to play them in step ([`hush_media::sync`]).
    pub fn lip_sync(&self) -> LipSyncStats {
        self.lip_sync.stats()
    }

    /// Runs the video codecs on the engine's events: decodes received frames (asking for a
    /// keyframe when the decoder lost its reference), forces a keyframe when the peer asks,
    /// applies the video bitrate. Other events wait for [`poll_event`](Self::poll_event).
    fn run_codecs(&mut self, now: Instant) {
        for stream in [SyncStream::Audio, SyncStream::Video] {
            if let Some(clock) = self.session.remote_sender_clock(stream) {
                self.lip_sync.set_sender_clock(stream, clock);
            }
        }
        while let Some(event) = self.session.poll_event() {
            if let Event::Audio(playout) = &event {
                if let Some(ts) = played_timestamp(playout) {
                    self.lip_sync.audio_played(now, ts);
                }
            }
            match event {
                Event::Audio(playout) if self.audio_codec.is_some() => {
                    let Some(codec) = self.audio_codec.as_mut() else {
                        continue;
                    };
                    let mut pcm = Vec::with_capacity(FRAME_SAMPLES);
                    // Filler to build delay is not a frame of the stream.
                    if let Some(source) = play(codec, playout, &mut pcm) {
                        self.played.push_back(AudioFrame { pcm, source });
                    }
                }
                Event::Video(frame) if self.decoder.is_some() => {
                    let Some(dec) = self.decoder.as_mut() else {
                        continue;
                    };
                    let started = Instant::now();
                    let decoded = dec.decode(&frame.data, now);
                    self.video_stats.total_decode_time += started.elapsed().as_secs_f64();
                    match decoded {
                        Ok(Some(picture)) => {
                            self.video_stats.frames_decoded += 1;
                            self.video_stats.key_frames_decoded += u64::from(frame.keyframe);
                            self.playout
                                .push(now, frame.timestamp, (frame.timestamp, picture));
                        }
                        Ok(None) => {}
                        Err(e) => {
                            debug!(error = %e, "video frame not decoded; asking for a keyframe");
                            self.video_stats.frames_dropped += 1;
                            self.video_stats.keyframe_requests_sent += 1;
                            self.session.request_keyframe(now);
                        }
                    }
                }
                Event::Video(frame) => {
                    let ts = frame.timestamp;
                    self.encoded_playout.push(now, ts, frame);
                }
                Event::KeyframeRequested => {
                    self.video_stats.keyframe_requests_received += 1;
                    if let Some(enc) = self.encoder.as_mut() {
                        enc.request_keyframe();
                    }
                    self.pending.push_back(Event::KeyframeRequested);
                }
                Event::EncoderTarget(t) => {
                    if let Some(codec) = self.audio_codec.as_mut() {
                        codec.set_bitrate(t.audio_bps);
                        codec.set_fec(t.inband_fec, t.expected_loss_percent);
                    }
                    if let Some(enc) = self.encoder.as_mut().filter(|_| !self.ladder_rates) {
                        if !t.audio_only && t.video_bps > 0 {
                            enc.set_rates(t.video_bps, self.video_fps);
                        }
                    }
                    self.pending.push_back(Event::EncoderTarget(t));
                }
                other => self.pending.push_back(other),
            }
        }
        self.release_video(now);
        self.lip_sync.handle_timeout(now);
        self.session
            .set_audio_sync_delay(self.lip_sync.audio_delay());
        self.playout.set_sync_delay(self.lip_sync.video_delay());
        self.encoded_playout
            .set_sync_delay(self.lip_sync.video_delay());
        let room = self.session.video_repair_room(now);
        self.playout.set_repair_room(room);
        self.encoded_playout.set_repair_room(room);
        self.protect_transmits();
    }

    /// Hands out the received pictures (and encoded frames) whose render time came.
    fn release_video(&mut self, now: Instant) {
        while let Some((render, (ts, mut picture))) = self.playout.poll(now) {
            self.lip_sync.video_shown(render, ts);
            picture.capture_time = render;
            self.decoded.push_back(picture);
        }
        while let Some((render, frame)) = self.encoded_playout.poll(now) {
            self.lip_sync.video_shown(render, frame.timestamp);
            self.pending.push_back(Event::Video(frame));
        }
    }

    /// Handles one datagram received on the call's ICE path: authenticates and decrypts it in
    /// place, then feeds it to the media engine. Nothing changes if it does not authenticate.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        mut packet: Vec<u8>,
    ) -> Result<(), MediaPathError> {
        let unprotected = if is_rtcp(&packet) {
            self.rx.unprotect_rtcp(&mut packet)
        } else {
            self.rx.unprotect_rtp(&mut packet)
        };
        if let Err(e) = unprotected {
            self.stats.unprotect_failures += 1;
            debug!(error = %e, "media datagram refused");
            return Err(e.into());
        }
        self.stats.received += 1;
        let handled = self.session.handle_packet(now, &packet);
        self.protect_transmits();
        self.run_codecs(now);
        handled.map_err(Into::into)
    }

    /// Runs the media engine's timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.session.handle_timeout(now);
        self.protect_transmits();
        self.run_codecs(now);
    }

    /// The next protected datagram to send.
    #[must_use]
    pub fn poll_datagram(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    /// The next media event (audio playout, encoder target, ...). With video codecs set
    /// ([`set_video_codecs`](Self::set_video_codecs)), received video comes out decoded from
    /// [`poll_video`](Self::poll_video) instead of as `Event::Video`; without a decoder each
    /// `Event::Video` comes at its render time, as [`poll_video`](Self::poll_video) says.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.pending
            .pop_front()
            .or_else(|| self.session.poll_event())
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next run: the engine's timers and
    /// the render time of the next received picture held.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.session.poll_timeout(),
            self.playout.poll_timeout(),
            self.encoded_playout.poll_timeout(),
            self.lip_sync.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Counters of the protection layer.
    pub fn stats(&self) -> PathStats {
        self.stats
    }

    /// The media engine's quality statistics.
    pub fn quality(&mut self, now: Instant) -> hush_media::QualityStats {
        self.session.stats(now)
    }

    /// Tells the media engine the round trip ICE measured on the selected path, for the time
    /// before RTCP measures its own ([`MediaSession::seed_rtt`]).
    pub fn seed_rtt(&mut self, rtt: Duration) {
        self.session.seed_rtt(rtt);
    }

    /// The media engine (for its getters).
    pub fn session(&self) -> &MediaSession {
        &self.session
    }

    fn protect_transmits(&mut self) {
        while let Some(t) = self.session.poll_transmit() {
            let mut data = t.data;
            let protected = match t.kind {
                TransmitKind::Rtp => self.tx.protect_rtp(&mut data),
                TransmitKind::Rtcp => self.tx.protect_rtcp(&mut data),
            };
            match protected {
                Ok(()) => {
                    self.stats.sent += 1;
                    self.out.push_back(data);
                }
                // Only a key at its packet limit fails here; the packet is dropped, never sent
                // in the clear.
                Err(e) => debug!(error = %e, "could not protect an outgoing packet"),
            }
        }
    }
}

/// The RTP timestamp of the audio frame a playout action plays (decoded, recovered or
/// concealed); `None` for filler.
fn played_timestamp(playout: &Playout) -> Option<u32> {
    match *playout {
        Playout::Frame { timestamp, .. }
        | Playout::Fec { timestamp, .. }
        | Playout::Conceal { timestamp } => Some(timestamp),
        Playout::Stretch { .. } => None,
    }
}

/// Runs the decoder for one playout action, leaving one frame of PCM in `pcm`; `None` for
/// [`Playout::Stretch`], which is not a frame of the stream. A packet the decoder refuses (or
/// a short frame) still takes its 20 ms: it is concealed (or silent), so playout keeps its
/// timing and the application never gets an empty frame.
fn play(codec: &mut OpusCodec, playout: Playout, pcm: &mut Vec<i16>) -> Option<FrameSource> {
    pcm.clear();
    let (decoded, source) = match playout {
        Playout::Frame { payload, .. } => (codec.decode(&payload, pcm), FrameSource::Decoded),
        Playout::Fec { next_payload, .. } => {
            (codec.decode_fec(&next_payload, pcm), FrameSource::Fec)
        }
        Playout::Conceal { .. } => (codec.conceal(pcm), FrameSource::Concealed),
        Playout::Stretch { .. } => return None,
    };
    match decoded {
        Ok(n) if n == FRAME_SAMPLES => Some(source),
        other => {
            debug!(result = ?other, "audio frame not decoded; concealed");
            pcm.clear();
            if codec.conceal(pcm).is_err() {
                pcm.clear();
            }
            pcm.resize(FRAME_SAMPLES, 0);
            Some(FrameSource::Concealed)
        }
    }
}

/// RTP and RTCP share the path (RFC 5761): RTCP packet types 192–223 sit where an RTP packet has
/// its marker bit and payload type.
fn is_rtcp(packet: &[u8]) -> bool {
    packet.get(1).is_some_and(|b| (192..=223).contains(b))
}

impl Drop for MediaPath {
    fn drop(&mut self) {
        // The SRTP contexts wipe their keys as they drop, right after this.
        LIVE_PATHS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Keyed media paths alive in this process.
static LIVE_PATHS: AtomicUsize = AtomicUsize::new(0);

/// How many keyed [`MediaPath`]s (SRTP contexts holding call keys) exist in this process right
/// now: a test hook showing that a call's keys are gone once it ended (feature `test-hooks`).
#[cfg(feature = "test-hooks")]
pub fn live_keyed_paths() -> usize {
    LIVE_PATHS.load(Ordering::Relaxed)
}

/// Test helper: runs both paths' timers at `now` and carries their datagrams over two
/// simulated links (`links.0` from the first path to the second, `links.1` back).
#[cfg(test)]
pub(crate) fn exchange_over(
    now: Instant,
    (a, b): (&mut MediaPath, &mut MediaPath),
    (ab, ba): (
        &mut hush_media::sim::NetSim<Vec<u8>>,
        &mut hush_media::sim::NetSim<Vec<u8>>,
    ),
) {
    a.handle_timeout(now);
    b.handle_timeout(now);
    while let Some(d) = a.poll_datagram() {
        ab.handle_packet(now, d);
    }
    while let Some(d) = b.poll_datagram() {
        ba.handle_packet(now, d);
    }
    ab.handle_timeout(now);
    ba.handle_timeout(now);
    while let Some(d) = ab.poll_transmit() {
        let _ = b.handle_datagram(now, d);
    }
    while let Some(d) = ba.poll_transmit() {
        let _ = a.handle_datagram(now, d);
    }
}

/// Two mirrored sets of media keys from a real key exchange, for doc examples, tests and benches
/// (feature `test-hooks`).
#[cfg(any(test, feature = "test-hooks"))]
pub fn test_keys() -> (MediaKeys, MediaKeys) {
    use hush_crypto::signal::IdentityKeyPair;
    use hush_crypto::CallKeyExchange;
    let mut rng = rand::rng();
    let a_id = IdentityKeyPair::generate(&mut rng);
    let b_id = IdentityKeyPair::generate(&mut rng);
    let alice = CallKeyExchange::new(*a_id.identity_key());
    let mut bob = CallKeyExchange::new(*b_id.identity_key());
    let (mut pending, offer) = alice.offer(b_id.identity_key(), &mut rng);
    let incoming = bob
        .receive_offer(&offer, a_id.identity_key())
        .expect("well-formed offer");
    let (answer, bob_keys) = incoming.accept(&mut rng).expect("accept");
    let alice_keys = pending.finish(&answer).expect("matching answer");
    (alice_keys, bob_keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_flows_both_ways_and_forgeries_change_nothing() {
        let (ak, bk) = test_keys();
        let t0 = Instant::now();
        let config = SessionConfig::default();
        let mut alice = MediaPath::new(&ak, config.clone(), t0).unwrap();
        let mut bob = MediaPath::new(&bk, config.mirrored(), t0).unwrap();
        let frame = [0xf8, 0xff, 0xfe];
        for i in 0..10u32 {
            let now = t0 + Duration::from_millis(20 * u64::from(i));
            alice.send_audio(now, &frame);
            bob.send_audio(now, &frame);
            while let Some(d) = alice.poll_datagram() {
                bob.handle_datagram(now, d).unwrap();
            }
            while let Some(d) = bob.poll_datagram() {
                alice.handle_datagram(now, d).unwrap();
            }
        }
        assert!(bob.stats().received >= 10 && alice.stats().received >= 10);

        // A forged packet and a replay are refused and counted.
        alice.send_audio(t0, &frame);
        let good = alice.poll_datagram().unwrap();
        let mut forged = good.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(matches!(
            bob.handle_datagram(t0, forged),
            Err(MediaPathError::Srtp(_))
        ));
        bob.handle_datagram(t0, good.clone()).unwrap();
        assert!(bob.handle_datagram(t0, good).is_err(), "replay refused");
        assert_eq!(bob.stats().unprotect_failures, 2);
    }

    #[test]
    fn a_refused_packet_still_plays_a_whole_frame() {
        use hush_media::jitter::Recovery;
        let mut codec = OpusCodec::new(1, 20, 32_000).expect("codec");
        // Code 3 (several frames) with a frame count of zero: invalid (RFC 6716 §3.2.5).
        let bad = vec![0x03, 0x00];
        assert!(codec.decode(&bad, &mut Vec::new()).is_err());
        let mut pcm = Vec::new();
        let frame = Playout::Frame {
            timestamp: 0,
            payload: bad,
            recovery: Recovery::None,
            shorten: Duration::ZERO,
        };
        assert_eq!(
            play(&mut codec, frame, &mut pcm),
            Some(FrameSource::Concealed)
        );
        assert_eq!(pcm.len(), FRAME_SAMPLES);
        // Filler is not a frame.
        let stretch = Playout::Stretch {
            duration: Duration::from_millis(5),
        };
        assert_eq!(play(&mut codec, stretch, &mut pcm), None);
    }

    /// PCM in on one side, PCM out on the other, through Opus, the engine and SRTP in one path
    /// per direction.
    #[test]
    fn pcm_goes_through_codec_engine_and_srtp_in_one_path() {
        let (ak, bk) = test_keys();
        let t0 = Instant::now();
        let config = SessionConfig::default();
        let mut alice = MediaPath::new(&ak, config.clone(), t0).unwrap();
        let mut bob = MediaPath::new(&bk, config.mirrored(), t0).unwrap();
        alice.set_audio_codec(OpusCodec::new(1, 20, 32_000).unwrap());
        bob.set_audio_codec(OpusCodec::new(1, 20, 32_000).unwrap());
        let mut decoded = 0;
        // 50 frames sent, then half a second more for the jitter buffer to play them out.
        for n in 0..75u32 {
            let now = t0 + Duration::from_millis(u64::from(n) * 20);
            let pcm: Vec<i16> = (0..960u32)
                .map(|i| ((f64::from(n * 960 + i) * 0.0575).sin() * 8000.0) as i16)
                .collect();
            if n < 50 {
                assert!(alice.send_pcm(now, &pcm).unwrap() > 0);
            }
            while let Some(d) = alice.poll_datagram() {
                bob.handle_datagram(now, d).unwrap();
            }
            bob.handle_timeout(now);
            while let Some(f) = bob.poll_audio() {
                assert_eq!(f.pcm.len(), FRAME_SAMPLES);
                decoded += usize::from(f.source == FrameSource::Decoded);
            }
        }
        assert!(decoded >= 48, "{decoded} of 50 frames decoded");
    }

    /// The engine announces its first target as it takes the first frame, and an
    /// application polls events right after sending, as the client's media task does: the
    /// codec must have taken the target by then. (It used to stay at the 32 kbps it was
    /// created with until the next target, which came from a timer or a packet.)
    #[test]
    fn the_codec_takes_targets_announced_as_a_frame_is_sent() {
        use hush_media::codec::Codec as _;
        let (ak, _) = test_keys();
        let t0 = Instant::now();
        let mut config = SessionConfig::default();
        // A 24 kbps start (a slow link's): the encoder's share is far under 32 kbps.
        config.cc.start_bps = 24_000;
        let mut alice = MediaPath::new(&ak, config, t0).unwrap();
        alice.set_audio_codec(OpusCodec::new(1, 20, 32_000).unwrap());
        let mut unchanged = OpusCodec::new(1, 20, 32_000).unwrap();
        let (mut sent, mut at_32k) = (0, 0);
        let mut target = None;
        for n in 0..50u32 {
            let now = t0 + Duration::from_millis(u64::from(n) * 20);
            let pcm: Vec<i16> = (0..960u32)
                .map(|i| {
                    let t = f64::from(n * 960 + i);
                    ((t * 0.0575).sin() * 6000.0
                        + (t * 0.31).sin() * 3000.0
                        + (t * 1.7).sin() * 1500.0) as i16
                })
                .collect();
            let n_sent = alice.send_pcm(now, &pcm).unwrap();
            let mut reference = Vec::new();
            unchanged.encode(&pcm, &mut reference).unwrap();
            if n >= 10 {
                sent += n_sent;
                at_32k += reference.len();
            }
            while alice.poll_datagram().is_some() {}
            while let Some(e) = alice.poll_event() {
                if let Event::EncoderTarget(t) = e {
                    target = Some(t.audio_bps);
                }
            }
        }
        let target = target.expect("a target announced");
        assert!(target < 24_000, "{target}");
        assert!(
            (sent as f64) < 0.8 * at_32k as f64,
            "{sent} bytes sent at a {target} bps target, {at_32k} at 32 kbps"
        );
    }

    #[test]
    fn keys_of_another_call_cannot_decrypt() {
        let (ak, _) = test_keys();
        let (_, other_bk) = test_keys();
        let t0 = Instant::now();
        let config = SessionConfig::default();
        let mut alice = MediaPath::new(&ak, config.clone(), t0).unwrap();
        let mut stranger = MediaPath::new(&other_bk, config.mirrored(), t0).unwrap();
        alice.send_audio(t0, &[1, 2, 3]);
        let d = alice.poll_datagram().unwrap();
        assert!(stranger.handle_datagram(t0, d).is_err());
        assert_eq!(stranger.stats().received, 0);
    }

    /// Video through the whole path: OpenH264 encodes inside Alice's path, SRTP protects,
    /// Bob's path authenticates, depacketizes (H.264, RFC 6184) and decodes; a keyframe Bob's
    /// path asks for (PLI) is produced by Alice's encoder.
    #[test]
    fn video_goes_through_codec_engine_and_srtp_in_one_path() {
        use hush_media::video::{OpenH264Decoder, OpenH264Encoder, VideoEncoderConfig};

        let (ak, bk) = test_keys();
        let t0 = Instant::now();
        let config = SessionConfig::default().with_h264_video();
        let mut alice = MediaPath::new(&ak, config.clone(), t0).unwrap();
        let mut bob = MediaPath::new(&bk, config.mirrored(), t0).unwrap();
        let enc = OpenH264Encoder::new(VideoEncoderConfig::default()).unwrap();
        alice.set_video_codecs(Some(Box::new(enc)), None, 30.0);
        bob.set_video_codecs(None, Some(Box::new(OpenH264Decoder::new().unwrap())), 30.0);
        let mut got = Vec::new();
        let mut sent = 0;
        for n in 0..45u32 {
            let now = t0 + Duration::from_millis(u64::from(n) * 33);
            let mut pic = I420Frame::filled(320, 180, [16, 128, 128], now).unwrap();
            let [y, _, _] = pic.planes_mut();
            for (i, px) in y.iter_mut().enumerate() {
                *px = ((i as u32 % 320 + 2 * n) / 2 + i as u32 / 960) as u8;
            }
            if n == 20 {
                // Bob's decoder lost its reference (as after a decode error): his path asks.
                bob.session.request_keyframe(now);
                bob.protect_transmits();
            }
            sent += u32::from(alice.send_video(now, &pic).unwrap());
            while let Some(d) = alice.poll_datagram() {
                bob.handle_datagram(now, d).unwrap();
            }
            while let Some(d) = bob.poll_datagram() {
                alice.handle_datagram(now, d).unwrap();
            }
            alice.handle_timeout(now);
            bob.handle_timeout(now);
            while let Some(p) = bob.poll_video() {
                got.push(p);
            }
        }
        assert!(sent >= 40, "{sent} frames sent");
        assert!(
            got.len() + 2 >= sent as usize,
            "{} of {sent} decoded",
            got.len()
        );
        assert!(got.iter().all(|p| (p.width(), p.height()) == (320, 180)));
        let mut requests = 0;
        while let Some(e) = alice.poll_event() {
            requests += usize::from(e == Event::KeyframeRequested);
        }
        assert_eq!(requests, 1, "the PLI reached Alice's path and its encoder");
        assert_eq!(bob.stats().unprotect_failures, 0);
    }
}

#[cfg(test)]
mod av_sync_tests {
    use super::*;
    use hush_media::jitter::Playout;
    use hush_media::sim::{Jitter, LossModel, NetSim, SimConfig};

    /// What a person on Bob's side perceives, measured from the frames' own payloads (each
    /// carries the index it was sent with): the time from sending to playing of every audio
    /// frame, and from sending to showing of every picture.
    struct Perceived {
        /// (seconds since the start, audio latency) per played frame.
        audio: Vec<(f64, f64)>,
        /// (seconds since the start, video latency) per shown picture.
        video: Vec<(f64, f64)>,
        /// For every frame and picture, the sender's time of it by its stream's clock (from
        /// the sender reports) less the time it was sent: the same for both streams when the
        /// reports tie them to one clock (`true` for a picture's).
        clock_offsets: Vec<(bool, f64)>,
    }

    impl Perceived {
        /// Median of (picture latency − latency of the audio played at the same time) over
        /// pictures shown in `from..to` seconds: positive when the picture trails the sound.
        fn skew(&self, from: f64, to: f64) -> f64 {
            let mut d: Vec<f64> = self
                .video
                .iter()
                .filter(|v| (from..to).contains(&v.0))
                .filter_map(|&(t, lv)| {
                    let a = self.audio.iter().rev().find(|a| a.0 <= t)?;
                    Some(lv - a.1)
                })
                .collect();
            d.sort_by(f64::total_cmp);
            d[d.len() / 2]
        }
    }

    /// A call in virtual time, Alice to Bob: 20 ms audio frames and 30 fps pictures (generic
    /// payload sized to the engine's video target, a keyframe every 3 s), 20 ms one-way delay, `loss` both ways.
    fn lossy_av_call(loss: f64, seed: u64, seconds: f64) -> (Perceived, LipSyncStats) {
        let (ak, bk) = test_keys();
        let t0 = Instant::now();
        let mut config = crate::client::video_session(&SessionConfig::default());
        config.video_payload = hush_media::rtp::VideoPayload::Generic;
        let mut a = MediaPath::new(&ak, config.clone(), t0).unwrap();
        let mut b = MediaPath::new(&bk, config.mirrored(), t0).unwrap();
        let link = |seed| SimConfig {
            seed,
            delay: Duration::from_millis(20),
            jitter: Jitter::None,
            reorder: false,
            loss: LossModel::Random(loss),
            duplicate: 0.0,
            rate_bps: None,
            queue_bytes: usize::MAX,
        };
        let mut ab = NetSim::<Vec<u8>>::new(link(seed));
        let mut ba = NetSim::<Vec<u8>>::new(link(seed + 1));
        let mut out = Perceived {
            audio: Vec::new(),
            video: Vec::new(),
            clock_offsets: Vec::new(),
        };
        let (mut audio_n, mut video_n) = (0u64, 0u64);
        let tick = Duration::from_millis(2);
        let mut t = Duration::ZERO;
        let index = |data: &[u8]| u64::from_be_bytes(data[..8].try_into().unwrap());
        while t.as_secs_f64() < seconds {
            let now = t0 + t;
            if t >= Duration::from_millis(20 * audio_n) {
                let mut frame = audio_n.to_be_bytes().to_vec();
                frame.resize(60, 0x55);
                a.send_audio(now, &frame);
                // Bob talks too (his reports then measure the round trip).
                b.send_audio(now, &frame);
                audio_n += 1;
            }
            if t >= Duration::from_micros(33_333 * video_n) {
                // Sized to the engine's video target, as the ladder would.
                let bps = a
                    .session()
                    .encoder_target()
                    .map_or(300_000, |t| t.video_bps);
                let mut data = video_n.to_be_bytes().to_vec();
                data.resize((bps / 8 / 30).clamp(200, 6_000) as usize, 0x77);
                a.send_encoded_video(
                    now,
                    &EncodedVideoFrame {
                        data,
                        keyframe: video_n % 90 == 0,
                        width: 640,
                        height: 360,
                        capture_time: now,
                    },
                );
                video_n += 1;
            }
            exchange_over(now, (&mut a, &mut b), (&mut ab, &mut ba));
            while a.poll_event().is_some() {}
            let secs = t.as_secs_f64();
            while let Some(e) = b.poll_event() {
                match e {
                    Event::Audio(Playout::Frame {
                        payload, timestamp, ..
                    }) => {
                        let sent = index(&payload) as f64 * 0.020;
                        if let Some(c) = b.session().remote_sender_clock(SyncStream::Audio) {
                            out.clock_offsets.push((false, c.seconds(timestamp) - sent));
                        }
                        out.audio.push((secs, secs - sent));
                    }
                    Event::Video(frame) => {
                        let sent = index(&frame.data) as f64 * 0.033_333;
                        if let Some(c) = b.session().remote_sender_clock(SyncStream::Video) {
                            out.clock_offsets
                                .push((true, c.seconds(frame.timestamp) - sent));
                        }
                        out.video.push((secs, secs - sent));
                    }
                    _ => {}
                }
            }
            t += tick;
        }
        (out, b.lip_sync())
    }

    fn median_latency(v: &[(f64, f64)], from: f64) -> f64 {
        let mut x: Vec<f64> = v.iter().filter(|s| s.0 > from).map(|s| s.1).collect();
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    }

    /// At 10 % loss on a 40 ms path the audio waits 150 ms for its repairs (two rounds) and
    /// the pictures less for theirs: without lip sync the picture ran 54, 69, 77 and 83 ms
    /// ahead of the sound (seeds 1, 2, 5, 6), with it within 4 ms. The pictures held with
    /// the sound also leave the repairs more time: seeds 1 and 6 had an interval over 150 ms
    /// without it. The sender reports tie both streams' timestamps to one clock.
    #[test]
    fn picture_and_sound_play_in_step_at_ten_percent_loss() {
        for seed in [1, 2, 5, 6] {
            let (p, stats) = lossy_av_call(0.10, seed, 15.0);
            let skew = p.skew(8.0, 15.0);
            eprintln!(
                "seed {seed}: audio {:.1} ms, video {:.1} ms, skew {:.1} ms, {stats:?}",
                median_latency(&p.audio, 8.0) * 1e3,
                median_latency(&p.video, 8.0) * 1e3,
                skew * 1e3
            );
            assert!(skew.abs() < 0.040, "seed {seed}: skew {skew:.3} s");
            assert!(p.video.len() > 420, "{} pictures shown", p.video.len());
            let longest = p
                .video
                .windows(2)
                .filter(|w| w[0].0 > 1.0)
                .map(|w| w[1].0 - w[0].0)
                .fold(0.0, f64::max);
            assert!(
                longest < 0.150,
                "seed {seed}: {longest:.3} s without a picture"
            );
            assert!(stats.skew.is_some(), "{stats:?}");
            let (lo, hi) = p
                .clock_offsets
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), &(_, o)| {
                    (lo.min(o), hi.max(o))
                });
            let pictures = p.clock_offsets.iter().filter(|o| o.0).count();
            assert!(pictures > 300 && p.clock_offsets.len() - pictures > 500);
            // Pictures go out on the 2 ms tick after their index's time.
            assert!(hi - lo < 0.003, "clock offsets {lo} .. {hi}");
        }
    }

    /// On a clean path the streams differ by less than the tolerance: nothing is held, the
    /// pictures keep their ~20 ms glass to glass.
    #[test]
    fn a_clean_path_adds_no_sync_delay() {
        let (p, stats) = lossy_av_call(0.0, 1, 8.0);
        assert_eq!(
            (stats.audio_delay, stats.video_delay),
            (Duration::ZERO, Duration::ZERO)
        );
        let video = median_latency(&p.video, 2.0);
        assert!(video < 0.030, "video latency {video:.3} s");
        assert!(stats.skew.is_some_and(|k| k.abs() < 0.030), "{stats:?}");
    }
}

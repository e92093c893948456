//! Joining a call: an authenticated X25519 exchange between a client device and the SFU, and
//! the per-direction hop SRTP keys both derive from it. `docs/sfu.md` is the normative
//! description of every byte here.
//!
//! ```text
//! client (device key D)                                      SFU (long-term key K)
//! PendingJoin::new ──── JoinRequest (signed by D) ─────────▶ JoinRequest::decode (checks D's sig)
//!                                                            JoinGuard: fresh? replayed?
//!                                                            roster admits D? (crate::Sfu)
//! PendingJoin::finish ◀─ JoinAnswer (signed by K over ────── SfuSigningKey::answer → HopKeys
//!   → HopKeys             the whole transcript)
//! ```
//!
//! The hop keys protect packets between one client and the SFU only; the media inside is meant
//! to be end-to-end encrypted as well (SFrame, a later layer), so the SFU reads only RTP
//! headers and the RFC 6464 audio level.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::time::Duration;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use hush_srtp::{SrtpConfig, SrtpContext, Suite};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::debug;
use x25519_dalek::{x25519, X25519_BASEPOINT_BYTES};
use zeroize::Zeroizing;

use crate::error::{JoinError, WireError};
use crate::ids::{CallId, DeviceId, CALL_ID_LEN};
use crate::packet::{FRAME_MARKING_EXT_ID, TRANSPORT_SEQ_EXT_ID};
use crate::wire::Reader;

/// Version of the join protocol this code speaks (the second byte of both messages).
pub const JOIN_PROTOCOL_VERSION: u8 = 1;
/// First byte of an encoded [`JoinRequest`] (`'J'`).
pub const JOIN_REQUEST_TAG: u8 = 0x4A;
/// First byte of an encoded [`JoinAnswer`] (`'A'`).
pub const JOIN_ANSWER_TAG: u8 = 0x41;
/// Most media streams (SSRCs) one participant may declare.
pub const MAX_STREAMS: usize = 8;
/// Length of the nonce of a join request.
pub const JOIN_NONCE_LEN: usize = 16;
/// Length of an encoded [`JoinAnswer`].
pub const JOIN_ANSWER_LEN: usize = 2 + 32 + 64;
/// Default largest distance between a request's timestamp and the SFU's clock.
pub const DEFAULT_MAX_SKEW: Duration = Duration::from_secs(30);
/// Default bound of the join replay cache.
pub const DEFAULT_REPLAY_CAPACITY: usize = 8192;
/// Default bound of the replay cache entries of one device: joins one device may make within
/// `2 × max_skew`.
pub const DEFAULT_JOINS_PER_DEVICE: usize = 16;

const REQUEST_SIG_LABEL: &[u8] = b"hush sfu join request v1";
const ANSWER_SIG_LABEL: &[u8] = b"hush sfu join answer v1";
const TRANSCRIPT_LABEL: &[u8] = b"HUSH-SFU-JOIN";
const LABEL_CLIENT_TO_SFU: &[u8] = b"hush sfu v1 srtp client to sfu";
const LABEL_SFU_TO_CLIENT: &[u8] = b"hush sfu v1 srtp sfu to client";
const LABEL_ICE_UFRAG: &[u8] = b"hush sfu v1 ice sfu ufrag";
const LABEL_ICE_PWD: &[u8] = b"hush sfu v1 ice sfu pwd";
const LABEL_NOTICE: &[u8] = b"hush sfu v1 notice sfu to client";
/// Bytes of HKDF output behind the SFU's ICE ufrag (hex-encoded: 16 characters).
const ICE_UFRAG_BYTES: usize = 8;
/// Bytes of HKDF output behind the SFU's ICE password (hex-encoded: 32 characters).
const ICE_PWD_BYTES: usize = 16;
/// Length of the key that authenticates the SFU's notices to one client.
pub const NOTICE_KEY_LEN: usize = 32;

/// What kind of media a declared stream carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// Audio (wire code 0): forwarded to everyone, or to the loudest N.
    Audio,
    /// Video (wire code 1): one stream, forwarded to everyone as it is.
    Video,
    /// One layer of a simulcast video source (wire code 2): the SFU forwards one layer of each
    /// source to each receiver, as one continuous stream (docs/sfu.md, "Simulcast").
    SimulcastLayer(SimulcastLayer),
}

/// One layer of a simulcast video source, as declared at join.
///
/// The layers of one source share its `source` id; their `layer` indices are `0..n` (n at most
/// [`MAX_LAYERS`]) and their heights grow strictly with the index (layer 0 is the smallest).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SimulcastLayer {
    /// The source this layer belongs to (a participant may send several sources, e.g. camera
    /// and screen).
    pub source: u8,
    /// The layer's index within its source: 0 the lowest resolution.
    pub layer: u8,
    /// Frame width in pixels (not 0).
    pub width: u16,
    /// Frame height in pixels (not 0).
    pub height: u16,
}

impl StreamKind {
    fn code(self) -> u8 {
        match self {
            Self::Audio => 0,
            Self::Video => 1,
            Self::SimulcastLayer(_) => 2,
        }
    }

    /// Whether this is video (a plain stream or a simulcast layer).
    pub fn is_video(self) -> bool {
        !matches!(self, Self::Audio)
    }
}

/// One media stream a participant will send: its SSRC and kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamDecl {
    /// The RTP SSRC the participant sends this stream with.
    pub ssrc: u32,
    /// Audio, video, or one layer of a simulcast video source.
    pub kind: StreamKind,
}

/// Most layers one simulcast source may declare.
pub const MAX_LAYERS: usize = 3;

impl StreamDecl {
    /// An audio stream sent with `ssrc`.
    pub fn audio(ssrc: u32) -> Self {
        Self {
            ssrc,
            kind: StreamKind::Audio,
        }
    }

    /// A plain (single-layer) video stream sent with `ssrc`.
    pub fn video(ssrc: u32) -> Self {
        Self {
            ssrc,
            kind: StreamKind::Video,
        }
    }

    /// The layers of one simulcast `source`, from `(ssrc, width, height)` per layer, smallest
    /// first (the first is layer 0).
    ///
    /// ```
    /// use hush_sfu::join::{StreamDecl, StreamKind};
    /// let camera: Vec<_> = StreamDecl::simulcast(0, [(10, 320, 180), (11, 640, 360)]).collect();
    /// assert!(matches!(camera[1].kind, StreamKind::SimulcastLayer(l) if l.layer == 1 && l.height == 360));
    /// ```
    pub fn simulcast(
        source: u8,
        layers: impl IntoIterator<Item = (u32, u16, u16)>,
    ) -> impl Iterator<Item = Self> {
        layers
            .into_iter()
            .enumerate()
            .map(move |(layer, (ssrc, width, height))| Self {
                ssrc,
                kind: StreamKind::SimulcastLayer(SimulcastLayer {
                    source,
                    layer: layer as u8,
                    width,
                    height,
                }),
            })
    }

    /// Appends the wire form (SSRC 4, kind 1, and for a simulcast layer source 1, layer 1,
    /// width 2, height 2).
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        out.push(self.kind.code());
        if let StreamKind::SimulcastLayer(l) = self.kind {
            out.push(l.source);
            out.push(l.layer);
            out.extend_from_slice(&l.width.to_be_bytes());
            out.extend_from_slice(&l.height.to_be_bytes());
        }
    }

    /// Reads one wire form (see [`write`](Self::write)).
    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let ssrc = r.u32()?;
        let kind = match r.u8()? {
            0 => StreamKind::Audio,
            1 => StreamKind::Video,
            2 => {
                let source = r.u8()?;
                let layer = r.u8()?;
                let width = r.u16()?;
                let height = r.u16()?;
                if width == 0 || height == 0 {
                    return Err(r.malformed("simulcast layer size zero"));
                }
                StreamKind::SimulcastLayer(SimulcastLayer {
                    source,
                    layer,
                    width,
                    height,
                })
            }
            _ => return Err(r.malformed("unknown stream kind")),
        };
        Ok(Self { ssrc, kind })
    }
}

/// Checks the simulcast layout of a declaration: per source at most [`MAX_LAYERS`] layers,
/// indexed `0..n` without gaps or repeats, heights strictly growing with the index.
fn check_simulcast(streams: &[StreamDecl]) -> Result<(), &'static str> {
    for (_, layers) in simulcast_sources(streams) {
        if layers.len() > MAX_LAYERS {
            return Err("more than 3 simulcast layers in a source");
        }
        for (i, l) in layers.iter().enumerate() {
            if usize::from(l.1.layer) != i {
                return Err("simulcast layer indices not 0..n");
            }
            if i > 0 && layers.get(i - 1).is_some_and(|p| p.1.height >= l.1.height) {
                return Err("simulcast layer heights not increasing");
            }
        }
    }
    Ok(())
}

/// The simulcast sources of a declaration: per source id (in order of first appearance), its
/// layers `(ssrc, layer)` sorted by layer index.
pub fn simulcast_sources(streams: &[StreamDecl]) -> Vec<(u8, Vec<(u32, SimulcastLayer)>)> {
    let mut out: Vec<(u8, Vec<(u32, SimulcastLayer)>)> = Vec::new();
    for s in streams {
        let StreamKind::SimulcastLayer(l) = s.kind else {
            continue;
        };
        match out.iter_mut().find(|(id, _)| *id == l.source) {
            Some((_, layers)) => layers.push((s.ssrc, l)),
            None => out.push((l.source, vec![(s.ssrc, l)])),
        }
    }
    for (_, layers) in &mut out {
        layers.sort_by_key(|(_, l)| l.layer);
    }
    out
}

/// The streams receivers get from a participant with this declaration: every audio and plain
/// video stream as declared, and each simulcast source as one [`StreamKind::Video`] stream
/// under the SSRC of its layer 0 (the *source SSRC*; the SFU rewrites every forwarded layer to
/// it). What the SFU announces to the other participants.
pub fn announced_streams(streams: &[StreamDecl]) -> Vec<StreamDecl> {
    let mut out = Vec::with_capacity(streams.len());
    for s in streams {
        match s.kind {
            StreamKind::SimulcastLayer(l) if l.layer == 0 => out.push(StreamDecl {
                ssrc: s.ssrc,
                kind: StreamKind::Video,
            }),
            StreamKind::SimulcastLayer(_) => {}
            _ => out.push(*s),
        }
    }
    out
}

/// What a client asks for when it joins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinParams {
    /// The call to join.
    pub call_id: CallId,
    /// The SRTP suite for the hop keys.
    pub suite: Suite,
    /// The RFC 8285 one-byte extension id (1..=14, but not the reserved 11 and 12) of the
    /// RFC 6464 audio level in this client's audio packets, or `None` if it sends none.
    pub audio_level_ext: Option<u8>,
    /// The streams this client will send (1..=[`MAX_STREAMS`], distinct SSRCs).
    pub streams: Vec<StreamDecl>,
}

fn suite_from_code(code: u16) -> Option<Suite> {
    [Suite::AeadAes128Gcm, Suite::AeadAes256Gcm]
        .into_iter()
        .find(|s| s.dtls_srtp_profile() == code)
}

/// A join request whose device signature has been checked ([`decode`](Self::decode) refuses
/// any other). Says who joins (`device`), which call, with what fresh X25519 key, when, and which
/// streams it will send.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinRequest {
    /// The signed bytes (everything before the signature).
    body: Vec<u8>,
    signature: [u8; 64],
    call_id: CallId,
    device: DeviceId,
    ephemeral: [u8; 32],
    timestamp_ms: u64,
    nonce: [u8; JOIN_NONCE_LEN],
    suite_code: u16,
    audio_level_ext: Option<u8>,
    streams: Vec<StreamDecl>,
}

impl JoinRequest {
    /// Parses a request and checks its device signature (strict ed25519). Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, JoinError> {
        let mut r = Reader::new(bytes, "join request");
        if r.u8()? != JOIN_REQUEST_TAG {
            return Err(r.malformed("not a join request").into());
        }
        let version = r.u8()?;
        if version != JOIN_PROTOCOL_VERSION {
            return Err(JoinError::UnsupportedVersion(version));
        }
        let call_id = CallId::from_bytes(r.array::<CALL_ID_LEN>()?);
        let device = DeviceId::from_bytes(&r.array::<32>()?)?;
        let ephemeral = r.array::<32>()?;
        let timestamp_ms = r.u64()?;
        let nonce = r.array::<JOIN_NONCE_LEN>()?;
        let suite_code = r.u16()?;
        let ext = r.u8()?;
        let audio_level_ext = match ext {
            0 => None,
            FRAME_MARKING_EXT_ID | TRANSPORT_SEQ_EXT_ID => {
                return Err(r.malformed("audio level extension id reserved").into())
            }
            1..=14 => Some(ext),
            _ => return Err(r.malformed("audio level extension id over 14").into()),
        };
        let n = usize::from(r.u8()?);
        if n == 0 || n > MAX_STREAMS {
            return Err(r.malformed("stream count not in 1..=8").into());
        }
        let mut streams = Vec::with_capacity(n);
        for _ in 0..n {
            let s = StreamDecl::read(&mut r)?;
            if streams.iter().any(|d: &StreamDecl| d.ssrc == s.ssrc) {
                return Err(r.malformed("duplicate ssrc").into());
            }
            streams.push(s);
        }
        check_simulcast(&streams).map_err(|reason| r.malformed(reason))?;
        let body_len = bytes.len() - r.remaining();
        let signature = r.array::<64>()?;
        r.finish()?;
        let body = bytes
            .get(..body_len)
            .ok_or(JoinError::Internal("request body length"))?
            .to_vec();
        let key = device.verifying_key()?;
        key.verify_strict(
            &signed_message(REQUEST_SIG_LABEL, &[&body]),
            &Signature::from_bytes(&signature),
        )
        .map_err(|_| JoinError::BadSignature("join request"))?;
        Ok(Self {
            body,
            signature,
            call_id,
            device,
            ephemeral,
            timestamp_ms,
            nonce,
            suite_code,
            audio_level_ext,
            streams,
        })
    }

    /// The wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 64);
        out.extend_from_slice(&self.body);
        out.extend_from_slice(&self.signature);
        out
    }

    /// The call to join.
    pub fn call_id(&self) -> CallId {
        self.call_id
    }

    /// The joining device (whose key signed this request).
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// The client's fresh X25519 public key.
    pub fn ephemeral(&self) -> &[u8; 32] {
        &self.ephemeral
    }

    /// The client's clock when it made the request, in milliseconds since the Unix epoch.
    pub fn timestamp_ms(&self) -> u64 {
        self.timestamp_ms
    }

    /// The request's random nonce (with the device, the key of the replay cache).
    pub fn nonce(&self) -> &[u8; JOIN_NONCE_LEN] {
        &self.nonce
    }

    /// The requested suite's IANA protection profile number.
    pub fn suite_code(&self) -> u16 {
        self.suite_code
    }

    /// The requested suite, if this code knows it.
    pub fn suite(&self) -> Option<Suite> {
        suite_from_code(self.suite_code)
    }

    /// The one-byte extension id of the audio level in this client's packets.
    pub fn audio_level_ext(&self) -> Option<u8> {
        self.audio_level_ext
    }

    /// The streams the client will send.
    pub fn streams(&self) -> &[StreamDecl] {
        &self.streams
    }

    /// `TRANSCRIPT_LABEL || request body || SFU key || SFU ephemeral` (docs/sfu.md).
    fn transcript(&self, sfu_key: &[u8; 32], sfu_ephemeral: &[u8; 32]) -> Vec<u8> {
        let mut t = Vec::with_capacity(TRANSCRIPT_LABEL.len() + self.body.len() + 64);
        t.extend_from_slice(TRANSCRIPT_LABEL);
        t.extend_from_slice(&self.body);
        t.extend_from_slice(sfu_key);
        t.extend_from_slice(sfu_ephemeral);
        t
    }
}

impl fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinRequest")
            .field("call_id", &self.call_id)
            .field("device", &self.device)
            .field("timestamp_ms", &self.timestamp_ms)
            .field("suite_code", &self.suite_code)
            .field("streams", &self.streams)
            .finish_non_exhaustive()
    }
}

/// The SFU's answer: its fresh X25519 key and its signature over the whole transcript.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct JoinAnswer {
    ephemeral: [u8; 32],
    signature: [u8; 64],
}

impl JoinAnswer {
    /// Parses an answer (the signature is checked by [`PendingJoin::finish`], which knows the
    /// transcript). Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, JoinError> {
        let mut r = Reader::new(bytes, "join answer");
        if r.u8()? != JOIN_ANSWER_TAG {
            return Err(r.malformed("not a join answer").into());
        }
        let version = r.u8()?;
        if version != JOIN_PROTOCOL_VERSION {
            return Err(JoinError::UnsupportedVersion(version));
        }
        let ephemeral = r.array::<32>()?;
        let signature = r.array::<64>()?;
        r.finish()?;
        Ok(Self {
            ephemeral,
            signature,
        })
    }

    /// The wire bytes ([`JOIN_ANSWER_LEN`] of them).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(JOIN_ANSWER_LEN);
        out.push(JOIN_ANSWER_TAG);
        out.push(JOIN_PROTOCOL_VERSION);
        out.extend_from_slice(&self.ephemeral);
        out.extend_from_slice(&self.signature);
        out
    }

    /// The SFU's fresh X25519 public key.
    pub fn ephemeral(&self) -> &[u8; 32] {
        &self.ephemeral
    }
}

/// The SFU's long-term ed25519 signing key (secret). Zeroized on drop; `Debug` redacts it.
#[derive(Clone)]
pub struct SfuSigningKey(SigningKey);

impl SfuSigningKey {
    /// A new random key.
    pub fn generate<R: rand::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        Self::from_seed(&seed)
    }

    /// The key with the given 32-byte seed (as stored).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self(SigningKey::from_bytes(seed))
    }

    /// The 32-byte seed, for storage.
    pub fn to_seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The public half, which clients are configured with.
    pub fn public_key(&self) -> SfuPublicKey {
        SfuPublicKey(self.0.verifying_key())
    }

    /// Answers a request: a fresh X25519 key, the signature over the transcript, and the hop
    /// keys of the SFU's side.
    ///
    /// Checks only what concerns the key exchange (a known suite, a contributory client key).
    /// Freshness and replay ([`JoinGuard`]) and admission (the roster) are the caller's:
    /// [`crate::Sfu::handle_join`] does all of them in order.
    pub fn answer<R: rand::CryptoRng + ?Sized>(
        &self,
        request: &JoinRequest,
        rng: &mut R,
    ) -> Result<(JoinAnswer, HopKeys), JoinError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        self.answer_with_seed(request, &seed)
    }

    pub(crate) fn answer_with_seed(
        &self,
        request: &JoinRequest,
        seed: &Zeroizing<[u8; 32]>,
    ) -> Result<(JoinAnswer, HopKeys), JoinError> {
        let suite = request
            .suite()
            .ok_or(JoinError::UnsupportedSuite(request.suite_code))?;
        let ephemeral = x25519(**seed, X25519_BASEPOINT_BYTES);
        let shared = shared_secret(seed, &request.ephemeral)?;
        let sfu_key = self.0.verifying_key().to_bytes();
        let transcript = request.transcript(&sfu_key, &ephemeral);
        let signature = self
            .0
            .sign(&signed_message(ANSWER_SIG_LABEL, &[&transcript]))
            .to_bytes();
        let keys = HopKeys::derive(suite, HopSide::Sfu, &transcript, &shared)?;
        debug!(call = %request.call_id, device = %request.device, %suite, "sfu join answered");
        Ok((
            JoinAnswer {
                ephemeral,
                signature,
            },
            keys,
        ))
    }
}

impl fmt::Debug for SfuSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SfuSigningKey({:?}, <secret redacted>)",
            self.public_key()
        )
    }
}

/// The SFU's long-term ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SfuPublicKey(VerifyingKey);

impl SfuPublicKey {
    /// Parses 32 bytes; fails for an invalid or small-order point.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, WireError> {
        let bad = |reason| WireError {
            what: "sfu public key",
            reason,
        };
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| bad("not a valid ed25519 point"))?;
        if key.is_weak() {
            return Err(bad("small-order ed25519 point"));
        }
        Ok(Self(key))
    }

    /// The 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }
}

impl fmt::Debug for SfuPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SfuPublicKey(")?;
        for b in &self.to_bytes()[..8] {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

/// The client's state between sending a request and receiving the answer. Holds the X25519
/// secret (zeroized on drop).
pub struct PendingJoin {
    request: JoinRequest,
    secret: Zeroizing<[u8; 32]>,
}

impl PendingJoin {
    /// Builds and signs a request with the device key. `unix_ms` is the client's wall clock.
    pub fn new<R: rand::CryptoRng + ?Sized>(
        device: &SigningKey,
        params: &JoinParams,
        unix_ms: u64,
        rng: &mut R,
    ) -> Result<(Self, JoinRequest), JoinError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        let mut nonce = [0u8; JOIN_NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        Self::from_parts(device, params, unix_ms, nonce, seed)
    }

    pub(crate) fn from_parts(
        device: &SigningKey,
        params: &JoinParams,
        unix_ms: u64,
        nonce: [u8; JOIN_NONCE_LEN],
        seed: Zeroizing<[u8; 32]>,
    ) -> Result<(Self, JoinRequest), JoinError> {
        let n = params.streams.len();
        if n == 0 || n > MAX_STREAMS {
            return Err(JoinError::InvalidArgument("1 to 8 streams"));
        }
        let ext = match params.audio_level_ext {
            None => 0,
            Some(FRAME_MARKING_EXT_ID | TRANSPORT_SEQ_EXT_ID) => {
                return Err(JoinError::InvalidArgument(
                    "extension ids 11 and 12 are reserved (frame marking, transport sequence)",
                ))
            }
            Some(id @ 1..=14) => id,
            Some(_) => return Err(JoinError::InvalidArgument("extension id must be 1..=14")),
        };
        let ephemeral = x25519(*seed, X25519_BASEPOINT_BYTES);
        let mut body = Vec::with_capacity(128);
        body.push(JOIN_REQUEST_TAG);
        body.push(JOIN_PROTOCOL_VERSION);
        body.extend_from_slice(params.call_id.as_bytes());
        body.extend_from_slice(&device.verifying_key().to_bytes());
        body.extend_from_slice(&ephemeral);
        body.extend_from_slice(&unix_ms.to_be_bytes());
        body.extend_from_slice(&nonce);
        body.extend_from_slice(&params.suite.dtls_srtp_profile().to_be_bytes());
        body.push(ext);
        body.push(n as u8);
        check_simulcast(&params.streams).map_err(JoinError::InvalidArgument)?;
        for s in &params.streams {
            s.write(&mut body);
        }
        let signature = device
            .sign(&signed_message(REQUEST_SIG_LABEL, &[&body]))
            .to_bytes();
        body.extend_from_slice(&signature);
        // Decoding what we built checks it exactly as the SFU will (distinct SSRCs, a valid
        // device key) and fills in the parsed fields.
        let request = JoinRequest::decode(&body).map_err(|e| match e {
            JoinError::Malformed(w) if w.reason == "duplicate ssrc" => {
                JoinError::InvalidArgument("duplicate ssrc")
            }
            other => other,
        })?;
        Ok((
            Self {
                request: request.clone(),
                secret: seed,
            },
            request,
        ))
    }

    /// The request this state belongs to.
    pub fn request(&self) -> &JoinRequest {
        &self.request
    }

    /// Checks the SFU's signature over the transcript with the configured SFU key, and derives
    /// the client's hop keys. Consumes the X25519 secret.
    pub fn finish(self, sfu: &SfuPublicKey, answer: &JoinAnswer) -> Result<HopKeys, JoinError> {
        let suite = self
            .request
            .suite()
            .ok_or(JoinError::UnsupportedSuite(self.request.suite_code))?;
        let transcript = self.request.transcript(&sfu.to_bytes(), &answer.ephemeral);
        sfu.0
            .verify_strict(
                &signed_message(ANSWER_SIG_LABEL, &[&transcript]),
                &Signature::from_bytes(&answer.signature),
            )
            .map_err(|_| JoinError::BadSignature("join answer"))?;
        let shared = shared_secret(&self.secret, &answer.ephemeral)?;
        HopKeys::derive(suite, HopSide::Client, &transcript, &shared)
    }
}

impl fmt::Debug for PendingJoin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingJoin")
            .field("request", &self.request)
            .finish_non_exhaustive()
    }
}

fn signed_message(label: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let len = label.len() + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(label);
    for p in parts {
        m.extend_from_slice(p);
    }
    m
}

/// X25519; refuses the all-zero result of a low-order peer key (RFC 7748 §6.1).
fn shared_secret(
    secret: &Zeroizing<[u8; 32]>,
    peer: &[u8; 32],
) -> Result<Zeroizing<[u8; 32]>, JoinError> {
    let shared = Zeroizing::new(x25519(**secret, *peer));
    if bool::from(shared.ct_eq(&[0u8; 32])) {
        return Err(JoinError::NonContributory);
    }
    Ok(shared)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// An SRTP master key and master salt.
type KeyAndSalt = (Zeroizing<Vec<u8>>, Zeroizing<Vec<u8>>);

/// Which end of a hop the keys are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HopSide {
    /// The participant's device.
    Client,
    /// The SFU.
    Sfu,
}

/// The hop SRTP master keys and salts of one leg, for one side: `send_*` protects what this
/// side sends, `recv_*` unprotects what it receives. The client's `send_*` are the SFU's
/// `recv_*`. Zeroized on drop; `Debug` prints no secret.
pub struct HopKeys {
    suite: Suite,
    side: HopSide,
    send_key: Zeroizing<Vec<u8>>,
    send_salt: Zeroizing<Vec<u8>>,
    recv_key: Zeroizing<Vec<u8>>,
    recv_salt: Zeroizing<Vec<u8>>,
    ice_ufrag: String,
    ice_pwd: Zeroizing<String>,
    notice_key: Zeroizing<[u8; NOTICE_KEY_LEN]>,
}

impl HopKeys {
    /// `PRK = HKDF-Extract(SHA-256(transcript), shared)`, then one
    /// `HKDF-Expand(PRK, label, Nk + 12)` per direction, split into key and salt.
    fn derive(
        suite: Suite,
        side: HopSide,
        transcript: &[u8],
        shared: &[u8; 32],
    ) -> Result<Self, JoinError> {
        let salt = Sha256::digest(transcript);
        let hk = Hkdf::<Sha256>::new(Some(&salt), shared);
        let nk = suite.key_len();
        let expand = |label: &[u8]| -> Result<KeyAndSalt, JoinError> {
            let mut okm = Zeroizing::new(vec![0u8; nk + Suite::SALT_LEN]);
            hk.expand(label, &mut okm)
                .map_err(|_| JoinError::Internal("hkdf expand length"))?;
            let salt = Zeroizing::new(okm.split_off(nk));
            Ok((okm, salt))
        };
        let expand_hex = |label: &[u8], len: usize| -> Result<Zeroizing<String>, JoinError> {
            let mut okm = Zeroizing::new(vec![0u8; len]);
            hk.expand(label, &mut okm)
                .map_err(|_| JoinError::Internal("hkdf expand length"))?;
            let mut out = Zeroizing::new(String::with_capacity(2 * len));
            for b in okm.iter() {
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0x0f)]));
            }
            Ok(out)
        };
        let ice_ufrag = expand_hex(LABEL_ICE_UFRAG, ICE_UFRAG_BYTES)?.to_string();
        let ice_pwd = expand_hex(LABEL_ICE_PWD, ICE_PWD_BYTES)?;
        let mut notice_key = Zeroizing::new([0u8; NOTICE_KEY_LEN]);
        hk.expand(LABEL_NOTICE, notice_key.as_mut())
            .map_err(|_| JoinError::Internal("hkdf expand length"))?;
        let (c2s_key, c2s_salt) = expand(LABEL_CLIENT_TO_SFU)?;
        let (s2c_key, s2c_salt) = expand(LABEL_SFU_TO_CLIENT)?;
        let (send_key, send_salt, recv_key, recv_salt) = match side {
            HopSide::Client => (c2s_key, c2s_salt, s2c_key, s2c_salt),
            HopSide::Sfu => (s2c_key, s2c_salt, c2s_key, c2s_salt),
        };
        Ok(Self {
            suite,
            side,
            send_key,
            send_salt,
            recv_key,
            recv_salt,
            ice_ufrag,
            ice_pwd,
            notice_key,
        })
    }

    /// The SFU's ICE-lite username fragment on this leg (16 lowercase hex characters). Both
    /// sides derive it; the client gives it with [`ice_pwd`](Self::ice_pwd) to its ICE agent as
    /// the remote credentials, the SFU finds the leg of a connectivity check by it.
    pub fn ice_ufrag(&self) -> &str {
        &self.ice_ufrag
    }

    /// The SFU's ICE-lite password on this leg (32 lowercase hex characters, secret): it keys
    /// the STUN MESSAGE-INTEGRITY of the client's checks and of the SFU's answers.
    pub fn ice_pwd(&self) -> &str {
        &self.ice_pwd
    }

    /// The key that authenticates the SFU's notices (joins, leaves, active speaker, kick) to
    /// this client on the signaling channel (see [`crate::control`]).
    pub fn notice_key(&self) -> &[u8; NOTICE_KEY_LEN] {
        &self.notice_key
    }

    /// The negotiated suite.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// Which side these keys are for.
    pub fn side(&self) -> HopSide {
        self.side
    }

    /// The master key of what this side sends. Prefer [`send_context`](Self::send_context).
    pub fn send_key(&self) -> &[u8] {
        &self.send_key
    }

    /// The master salt of what this side sends.
    pub fn send_salt(&self) -> &[u8] {
        &self.send_salt
    }

    /// The master key of what this side receives.
    pub fn recv_key(&self) -> &[u8] {
        &self.recv_key
    }

    /// The master salt of what this side receives.
    pub fn recv_salt(&self) -> &[u8] {
        &self.recv_salt
    }

    /// The SRTP context that protects what this side sends.
    pub fn send_context(&self, config: SrtpConfig) -> Result<SrtpContext, hush_srtp::Error> {
        SrtpContext::with_config(self.suite, &self.send_key, &self.send_salt, config)
    }

    /// The SRTP context that unprotects what this side receives.
    pub fn recv_context(&self, config: SrtpConfig) -> Result<SrtpContext, hush_srtp::Error> {
        SrtpContext::with_config(self.suite, &self.recv_key, &self.recv_salt, config)
    }
}

impl fmt::Debug for HopKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HopKeys")
            .field("suite", &self.suite)
            .field("side", &self.side)
            .finish_non_exhaustive()
    }
}

/// The SFU's freshness and replay checks on join requests, with bounded memory.
///
/// A request is fresh when its timestamp is within `max_skew` of the SFU's wall clock. A fresh
/// request's (device, nonce) is remembered until no request with its timestamp could be fresh
/// any more (`2 × max_skew` after it was recorded), so a replay inside that time is refused and
/// one after it is refused as stale. At most `capacity` entries are kept; when all are still
/// needed, new joins are refused with [`JoinError::ReplayCacheFull`] rather than forgetting one
/// that could be replayed. Only requests that passed the signature and admission checks are
/// recorded, so only roster members can fill the cache, and one device holds at most
/// `per_device` entries (further joins of that device are refused with
/// [`JoinError::TooManyJoins`]), so one member cannot lock everyone else out.
#[derive(Debug)]
pub struct JoinGuard {
    max_skew_ms: u64,
    capacity: usize,
    per_device: usize,
    counts: HashMap<[u8; 32], usize>,
    seen: HashSet<[u8; 32 + JOIN_NONCE_LEN]>,
    /// Entries in the order recorded, with the wall time (ms) at which they may be forgotten.
    order: VecDeque<(u64, [u8; 32 + JOIN_NONCE_LEN])>,
}

impl JoinGuard {
    /// A guard with the given skew bound, capacity and per-device bound (each at least 1).
    pub fn new(max_skew: Duration, capacity: usize, per_device: usize) -> Self {
        Self {
            max_skew_ms: u64::try_from(max_skew.as_millis()).unwrap_or(u64::MAX),
            capacity: capacity.max(1),
            per_device: per_device.max(1),
            counts: HashMap::new(),
            seen: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// Entries currently remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Refuses a request whose timestamp is more than `max_skew` from `unix_ms`.
    pub fn check_fresh(&self, request: &JoinRequest, unix_ms: u64) -> Result<(), JoinError> {
        let skew_ms = request.timestamp_ms.abs_diff(unix_ms);
        if skew_ms > self.max_skew_ms {
            return Err(JoinError::Stale { skew_ms });
        }
        Ok(())
    }

    /// Records the request, refusing it if already seen (or if the cache is full).
    pub fn record(&mut self, request: &JoinRequest, unix_ms: u64) -> Result<(), JoinError> {
        self.expire(unix_ms);
        let mut key = [0u8; 32 + JOIN_NONCE_LEN];
        key[..32].copy_from_slice(request.device.as_bytes());
        key[32..].copy_from_slice(&request.nonce);
        if self.seen.contains(&key) {
            return Err(JoinError::Replayed);
        }
        if self.order.len() >= self.capacity {
            return Err(JoinError::ReplayCacheFull);
        }
        let count = self.counts.entry(*request.device.as_bytes()).or_insert(0);
        if *count >= self.per_device {
            return Err(JoinError::TooManyJoins);
        }
        *count += 1;
        self.seen.insert(key);
        // A request fresh now has a timestamp of at most `unix_ms + max_skew`, which stays fresh
        // up to and including `unix_ms + 2 × max_skew`.
        let forget_at = unix_ms
            .saturating_add(self.max_skew_ms.saturating_mul(2))
            .saturating_add(1);
        self.order.push_back((forget_at, key));
        Ok(())
    }

    fn expire(&mut self, unix_ms: u64) {
        while let Some((at, key)) = self.order.front() {
            if *at > unix_ms {
                break;
            }
            self.seen.remove(key);
            let mut device = [0u8; 32];
            device.copy_from_slice(&key[..32]);
            if let Some(n) = self.counts.get_mut(&device) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.counts.remove(&device);
                }
            }
            self.order.pop_front();
        }
    }
}

impl Default for JoinGuard {
    fn default() -> Self {
        Self::new(
            DEFAULT_MAX_SKEW,
            DEFAULT_REPLAY_CAPACITY,
            DEFAULT_JOINS_PER_DEVICE,
        )
    }
}

#[cfg(test)]
mod tests;

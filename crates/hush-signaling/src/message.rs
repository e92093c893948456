//! Typed call messages and the sealed [`Content`] that carries them.

use prost::Message as _;

use crate::device::DeviceId;
use crate::envelope::MessageId;
use crate::proto::signaling as pb;
use crate::Error;

/// Content format version produced by this build.
pub const CONTENT_VERSION: u32 = 1;

/// Most candidates one [`IceCandidates`] batch may carry.
pub const MAX_CANDIDATES_PER_BATCH: usize = 64;
/// Longest accepted candidate line.
pub const MAX_CANDIDATE_LEN: usize = 512;
/// Longest accepted opaque key-agreement payload.
pub const MAX_KEY_AGREEMENT_LEN: usize = 4096;
/// Longest accepted ICE ufrag or password.
pub const MAX_ICE_CREDENTIAL_LEN: usize = 256;

/// A call id: 16 random bytes chosen by the caller (the same id the key agreement binds).
pub type CallId = [u8; 16];

/// Kind of media a call starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CallMedia {
    /// Audio only.
    Audio,
    /// Audio and video.
    Video,
}

/// ICE credentials for one ICE generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceParameters {
    /// ICE username fragment.
    pub ufrag: String,
    /// ICE password.
    pub pwd: String,
}

/// Caller to callee: start a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// Call id chosen by the caller.
    pub call_id: CallId,
    /// Media the call starts with.
    pub media: CallMedia,
    /// Opaque key-agreement payload from hush-crypto (the caller's ephemeral public key etc.).
    pub key_agreement: Vec<u8>,
    /// The caller's ICE credentials, if it already has them.
    pub ice: Option<IceParameters>,
}

/// Callee to caller: accept the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Call id from the offer.
    pub call_id: CallId,
    /// Opaque key-agreement payload from hush-crypto.
    pub key_agreement: Vec<u8>,
    /// The callee's ICE credentials.
    pub ice: Option<IceParameters>,
}

/// A batch of trickled ICE candidates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceCandidates {
    /// Call id.
    pub call_id: CallId,
    /// ICE generation (incremented by an ICE restart).
    pub generation: u32,
    /// Candidates in SDP `candidate-attribute` form.
    pub candidates: Vec<String>,
    /// No more candidates follow for this generation.
    pub end_of_candidates: bool,
    /// Set when this batch starts a new generation (an ICE restart, for example after a
    /// network change): the sender's new ICE credentials, which the peer must apply before
    /// the candidates of this generation.
    pub ice: Option<IceParameters>,
}

/// Why a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HangupReason {
    /// One side hung up.
    Normal,
    /// The callee declined.
    Declined,
    /// The callee is busy.
    Busy,
    /// Nobody answered in time, or the connection could not be established.
    Timeout,
    /// Another device of the callee accepted the call.
    AcceptedElsewhere,
    /// A reason this build does not know (sent by a newer peer); treat as normal.
    Unknown(i32),
}

impl HangupReason {
    fn to_proto(self) -> i32 {
        match self {
            Self::Normal => pb::HangupReason::Normal as i32,
            Self::Declined => pb::HangupReason::Declined as i32,
            Self::Busy => pb::HangupReason::Busy as i32,
            Self::Timeout => pb::HangupReason::Timeout as i32,
            Self::AcceptedElsewhere => pb::HangupReason::AcceptedElsewhere as i32,
            Self::Unknown(v) => v,
        }
    }

    fn from_proto(v: i32) -> Self {
        match pb::HangupReason::try_from(v) {
            Ok(pb::HangupReason::Normal | pb::HangupReason::Unspecified) => Self::Normal,
            Ok(pb::HangupReason::Declined) => Self::Declined,
            Ok(pb::HangupReason::Busy) => Self::Busy,
            Ok(pb::HangupReason::Timeout) => Self::Timeout,
            Ok(pb::HangupReason::AcceptedElsewhere) => Self::AcceptedElsewhere,
            Err(_) => Self::Unknown(v),
        }
    }
}

/// End the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hangup {
    /// Call id.
    pub call_id: CallId,
    /// Why.
    pub reason: HangupReason,
}

/// Longest SFU address accepted in a [`GroupInvite`].
pub const MAX_SFU_ADDRESS_LEN: usize = 256;
/// Longest roster accepted in a [`GroupInvite`] (255 members, as hush-sfu's encoding allows).
pub const MAX_ROSTER_LEN: usize = 2 + 16 + 32 + 8 + 1 + 32 * 255 + 64;

/// An invitation to a group call (see the `hush-sfu` crate): where the SFU is, its key, and the
/// creator-signed roster. It travels sealed like every call message, so the recipient learns
/// the SFU's key from a member it already has a Signal session with. The fields are checked
/// for size here; the roster's signature and the SFU key by the recipient's client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInvite {
    /// The group call's id.
    pub call_id: CallId,
    /// The SFU's ed25519 public key.
    pub sfu_key: [u8; 32],
    /// The SFU's signaling address, `ip:port`.
    pub sfu_address: String,
    /// The encoded roster in force.
    pub roster: Vec<u8>,
}

/// Longest key message accepted in a [`GroupKey`] (hush's is 53 bytes; later versions may
/// grow it a little).
pub const MAX_GROUP_KEY_LEN: usize = 128;

/// A group call participant's end-to-end sender key for another participant (see
/// `hush_crypto::group`), sent sealed over their Signal session: the session authenticates
/// which member it comes from. Sizes are checked here; the contents by the recipient's client.
#[derive(Clone, PartialEq, Eq)]
pub struct GroupKey {
    /// The group call's id.
    pub call_id: CallId,
    /// The key message (`hush_crypto::group::KeyMessage` encoding). Secret.
    pub key_message: zeroize::Zeroizing<Vec<u8>>,
    /// The sender's roster in force (encoded, creator-signed), so that members invited before
    /// a joiner learn its place; empty if not sent.
    pub roster: Vec<u8>,
}

impl std::fmt::Debug for GroupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupKey")
            .field("call_id", &self.call_id)
            .field("key_message", &"<secret>")
            .field("roster_len", &self.roster.len())
            .finish()
    }
}

/// What one side of a 1:1 call sends now: its microphone and camera state, told to the peer
/// on every change so that its app can show it (and its receiver does not take a muted
/// microphone or a switched-off camera for loss).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaState {
    /// Call id.
    pub call_id: CallId,
    /// Increases with every state the sender sends in this call; the receiver ignores one not
    /// newer than the last it applied (the relay may deliver an old one late).
    pub seq: u64,
    /// The microphone is muted: no audio packets follow.
    pub audio_muted: bool,
    /// The camera is on.
    pub video_on: bool,
    /// The camera is on but video is paused because the link is too thin (audio-only
    /// fallback); it resumes by itself.
    pub video_paused: bool,
}

/// One call signaling message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallMessage {
    /// Start a call.
    Offer(Offer),
    /// Accept a call.
    Answer(Answer),
    /// Trickled ICE candidates.
    IceCandidates(IceCandidates),
    /// End a call.
    Hangup(Hangup),
    /// The callee is in another call.
    Busy {
        /// Call id.
        call_id: CallId,
    },
    /// The callee's device is ringing.
    Ringing {
        /// Call id.
        call_id: CallId,
    },
    /// An invitation to a group call.
    GroupInvite(GroupInvite),
    /// A group call participant's end-to-end sender key.
    GroupKey(GroupKey),
    /// A 1:1 call side's microphone and camera state.
    MediaState(MediaState),
}

impl CallMessage {
    /// The call this message belongs to.
    pub fn call_id(&self) -> CallId {
        match self {
            Self::Offer(m) => m.call_id,
            Self::Answer(m) => m.call_id,
            Self::IceCandidates(m) => m.call_id,
            Self::Hangup(m) => m.call_id,
            Self::Busy { call_id } | Self::Ringing { call_id } => *call_id,
            Self::GroupInvite(m) => m.call_id,
            Self::GroupKey(m) => m.call_id,
            Self::MediaState(m) => m.call_id,
        }
    }

    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Offer(_) => "offer",
            Self::Answer(_) => "answer",
            Self::IceCandidates(_) => "ice-candidates",
            Self::Hangup(_) => "hangup",
            Self::Busy { .. } => "busy",
            Self::Ringing { .. } => "ringing",
            Self::GroupInvite(_) => "group-invite",
            Self::GroupKey(_) => "group-key",
            Self::MediaState(_) => "media-state",
        }
    }

    fn to_proto(&self) -> pb::content::Body {
        use pb::content::Body;
        match self {
            Self::Offer(m) => Body::Offer(pb::Offer {
                call_id: m.call_id.to_vec(),
                media: match m.media {
                    CallMedia::Audio => pb::CallMedia::Audio as i32,
                    CallMedia::Video => pb::CallMedia::Video as i32,
                },
                key_agreement: m.key_agreement.clone(),
                ice: m.ice.as_ref().map(ice_to_proto),
            }),
            Self::Answer(m) => Body::Answer(pb::Answer {
                call_id: m.call_id.to_vec(),
                key_agreement: m.key_agreement.clone(),
                ice: m.ice.as_ref().map(ice_to_proto),
            }),
            Self::IceCandidates(m) => Body::IceCandidates(pb::IceCandidates {
                call_id: m.call_id.to_vec(),
                generation: m.generation,
                candidates: m
                    .candidates
                    .iter()
                    .map(|c| pb::IceCandidate {
                        candidate: c.clone(),
                    })
                    .collect(),
                end_of_candidates: m.end_of_candidates,
                ice: m.ice.as_ref().map(ice_to_proto),
            }),
            Self::Hangup(m) => Body::Hangup(pb::Hangup {
                call_id: m.call_id.to_vec(),
                reason: m.reason.to_proto(),
            }),
            Self::Busy { call_id } => Body::Busy(pb::Busy {
                call_id: call_id.to_vec(),
            }),
            Self::Ringing { call_id } => Body::Ringing(pb::Ringing {
                call_id: call_id.to_vec(),
            }),
            Self::GroupInvite(m) => Body::GroupInvite(pb::GroupInvite {
                call_id: m.call_id.to_vec(),
                sfu_key: m.sfu_key.to_vec(),
                sfu_address: m.sfu_address.clone(),
                roster: m.roster.clone(),
            }),
            Self::GroupKey(m) => Body::GroupKey(pb::GroupKey {
                call_id: m.call_id.to_vec(),
                key_message: m.key_message.to_vec(),
                roster: m.roster.clone(),
            }),
            Self::MediaState(m) => Body::MediaState(pb::MediaState {
                call_id: m.call_id.to_vec(),
                seq: m.seq,
                audio_muted: m.audio_muted,
                video_on: m.video_on,
                video_paused: m.video_paused,
            }),
        }
    }

    fn from_proto(body: Option<pb::content::Body>) -> Result<Self, Error> {
        use pb::content::Body;
        // An unknown oneof field number (a message type from a newer version) decodes as None.
        let Some(body) = body else {
            return Err(Error::UnsupportedMessage);
        };
        Ok(match body {
            Body::Offer(m) => {
                let media = match pb::CallMedia::try_from(m.media) {
                    Ok(pb::CallMedia::Audio) => CallMedia::Audio,
                    Ok(pb::CallMedia::Video) => CallMedia::Video,
                    Ok(pb::CallMedia::Unspecified) => {
                        return Err(Error::Malformed("offer media missing"))
                    }
                    Err(_) => return Err(Error::UnsupportedMessage),
                };
                check_key_agreement(&m.key_agreement)?;
                Self::Offer(Offer {
                    call_id: call_id_from_proto(&m.call_id)?,
                    media,
                    key_agreement: m.key_agreement,
                    ice: m.ice.map(ice_from_proto).transpose()?,
                })
            }
            Body::Answer(m) => {
                check_key_agreement(&m.key_agreement)?;
                Self::Answer(Answer {
                    call_id: call_id_from_proto(&m.call_id)?,
                    key_agreement: m.key_agreement,
                    ice: m.ice.map(ice_from_proto).transpose()?,
                })
            }
            Body::IceCandidates(m) => {
                if m.candidates.len() > MAX_CANDIDATES_PER_BATCH {
                    return Err(Error::Malformed("too many ICE candidates in one batch"));
                }
                if m.candidates
                    .iter()
                    .any(|c| c.candidate.len() > MAX_CANDIDATE_LEN)
                {
                    return Err(Error::Malformed("ICE candidate too long"));
                }
                Self::IceCandidates(IceCandidates {
                    call_id: call_id_from_proto(&m.call_id)?,
                    generation: m.generation,
                    candidates: m.candidates.into_iter().map(|c| c.candidate).collect(),
                    end_of_candidates: m.end_of_candidates,
                    ice: m.ice.map(ice_from_proto).transpose()?,
                })
            }
            Body::Hangup(m) => Self::Hangup(Hangup {
                call_id: call_id_from_proto(&m.call_id)?,
                reason: HangupReason::from_proto(m.reason),
            }),
            Body::Busy(m) => Self::Busy {
                call_id: call_id_from_proto(&m.call_id)?,
            },
            Body::Ringing(m) => Self::Ringing {
                call_id: call_id_from_proto(&m.call_id)?,
            },
            Body::GroupInvite(m) => {
                if m.sfu_address.len() > MAX_SFU_ADDRESS_LEN {
                    return Err(Error::Malformed("sfu address too long"));
                }
                if m.roster.is_empty() || m.roster.len() > MAX_ROSTER_LEN {
                    return Err(Error::Malformed("roster missing or too long"));
                }
                Self::GroupInvite(GroupInvite {
                    call_id: call_id_from_proto(&m.call_id)?,
                    sfu_key: m
                        .sfu_key
                        .as_slice()
                        .try_into()
                        .map_err(|_| Error::Malformed("sfu key must be 32 bytes"))?,
                    sfu_address: m.sfu_address,
                    roster: m.roster,
                })
            }
            Body::GroupKey(mut m) => {
                let key_message = zeroize::Zeroizing::new(std::mem::take(&mut m.key_message));
                if key_message.is_empty() || key_message.len() > MAX_GROUP_KEY_LEN {
                    return Err(Error::Malformed("group key message missing or too long"));
                }
                if m.roster.len() > MAX_ROSTER_LEN {
                    return Err(Error::Malformed("roster too long"));
                }
                Self::GroupKey(GroupKey {
                    call_id: call_id_from_proto(&m.call_id)?,
                    key_message,
                    roster: m.roster,
                })
            }
            Body::MediaState(m) => Self::MediaState(MediaState {
                call_id: call_id_from_proto(&m.call_id)?,
                seq: m.seq,
                audio_muted: m.audio_muted,
                video_on: m.video_on,
                video_paused: m.video_paused,
            }),
        })
    }
}

fn call_id_from_proto(bytes: &[u8]) -> Result<CallId, Error> {
    bytes
        .try_into()
        .map_err(|_| Error::Malformed("call id must be 16 bytes"))
}

fn check_key_agreement(bytes: &[u8]) -> Result<(), Error> {
    if bytes.is_empty() {
        return Err(Error::Malformed("key agreement payload missing"));
    }
    if bytes.len() > MAX_KEY_AGREEMENT_LEN {
        return Err(Error::Malformed("key agreement payload too long"));
    }
    Ok(())
}

fn ice_to_proto(p: &IceParameters) -> pb::IceParameters {
    pb::IceParameters {
        ufrag: p.ufrag.clone(),
        pwd: p.pwd.clone(),
    }
}

fn ice_from_proto(p: pb::IceParameters) -> Result<IceParameters, Error> {
    if p.ufrag.len() > MAX_ICE_CREDENTIAL_LEN || p.pwd.len() > MAX_ICE_CREDENTIAL_LEN {
        return Err(Error::Malformed("ICE credentials too long"));
    }
    Ok(IceParameters {
        ufrag: p.ufrag,
        pwd: p.pwd,
    })
}

/// The plaintext sealed inside an envelope: the call message plus copies of the routing fields,
/// so a relay cannot re-route, re-date or re-label a sealed message without detection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    /// Equals the envelope id.
    pub message_id: MessageId,
    /// Equals the envelope sender.
    pub sender: DeviceId,
    /// Equals the envelope recipient.
    pub recipient: DeviceId,
    /// Equals the envelope timestamp.
    pub timestamp_ms: u64,
    /// The call message.
    pub message: CallMessage,
}

impl Content {
    /// Encodes to protobuf bytes (the plaintext that gets sealed).
    pub fn encode(&self) -> Vec<u8> {
        pb::Content {
            version: CONTENT_VERSION,
            message_id: self.message_id.to_vec(),
            sender: self.sender.as_bytes().to_vec(),
            recipient: self.recipient.as_bytes().to_vec(),
            timestamp_ms: self.timestamp_ms,
            body: Some(self.message.to_proto()),
        }
        .encode_to_vec()
    }

    /// Decodes and validates opened plaintext.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let p = pb::Content::decode(bytes)?;
        match p.version {
            0 => return Err(Error::Malformed("content version missing")),
            CONTENT_VERSION => {}
            v => return Err(Error::UnsupportedVersion(v)),
        }
        Ok(Self {
            message_id: MessageId::try_from(p.message_id.as_slice())
                .map_err(|_| Error::Malformed("message id must be 16 bytes"))?,
            sender: DeviceId::from_slice(&p.sender)?,
            recipient: DeviceId::from_slice(&p.recipient)?,
            timestamp_ms: p.timestamp_ms,
            message: CallMessage::from_proto(p.body)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn content(message: CallMessage) -> Content {
        Content {
            message_id: [5; 16],
            sender: DeviceId::from_bytes([1; 32]),
            recipient: DeviceId::from_bytes([2; 32]),
            timestamp_ms: 42,
            message,
        }
    }

    fn all_messages() -> Vec<CallMessage> {
        let ice = Some(IceParameters {
            ufrag: "uf".into(),
            pwd: "pw".into(),
        });
        vec![
            CallMessage::Offer(Offer {
                call_id: [1; 16],
                media: CallMedia::Video,
                key_agreement: vec![1, 2, 3],
                ice: ice.clone(),
            }),
            CallMessage::Answer(Answer {
                call_id: [1; 16],
                key_agreement: vec![4],
                ice,
            }),
            CallMessage::IceCandidates(IceCandidates {
                call_id: [1; 16],
                generation: 2,
                candidates: vec!["candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host".into()],
                end_of_candidates: true,
                ice: Some(IceParameters {
                    ufrag: "restarted".into(),
                    pwd: "a-new-ice-password-24ch".into(),
                }),
            }),
            CallMessage::Hangup(Hangup {
                call_id: [1; 16],
                reason: HangupReason::AcceptedElsewhere,
            }),
            CallMessage::Busy { call_id: [9; 16] },
            CallMessage::Ringing { call_id: [9; 16] },
            CallMessage::GroupInvite(GroupInvite {
                call_id: [9; 16],
                sfu_key: [7; 32],
                sfu_address: "127.0.0.1:4000".into(),
                roster: vec![0x52; 100],
            }),
            CallMessage::GroupKey(GroupKey {
                call_id: [9; 16],
                key_message: zeroize::Zeroizing::new(vec![1; 53]),
                roster: vec![0x52; 100],
            }),
            CallMessage::MediaState(MediaState {
                call_id: [9; 16],
                seq: 7,
                audio_muted: true,
                video_on: true,
                video_paused: false,
            }),
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in all_messages() {
            let c = content(m);
            assert_eq!(Content::decode(&c.encode()).unwrap(), c);
        }
    }

    #[test]
    fn every_hangup_reason_round_trips() {
        for reason in [
            HangupReason::Normal,
            HangupReason::Declined,
            HangupReason::Busy,
            HangupReason::Timeout,
            HangupReason::AcceptedElsewhere,
            HangupReason::Unknown(99),
        ] {
            let c = content(CallMessage::Hangup(Hangup {
                call_id: [3; 16],
                reason,
            }));
            assert_eq!(Content::decode(&c.encode()).unwrap(), c);
        }
    }

    #[test]
    fn unknown_body_and_version_are_errors_not_panics() {
        let mut p = pb::Content {
            version: CONTENT_VERSION,
            message_id: vec![5; 16],
            sender: vec![1; 32],
            recipient: vec![2; 32],
            timestamp_ms: 1,
            body: None,
        };
        // A future message type: oneof field number 40, length-delimited, empty.
        let mut bytes = p.encode_to_vec();
        bytes.extend_from_slice(&[0xc2, 0x02, 0x00]);
        assert!(matches!(
            Content::decode(&bytes),
            Err(Error::UnsupportedMessage)
        ));
        p.version = 2;
        p.body = Some(pb::content::Body::Busy(pb::Busy {
            call_id: vec![1; 16],
        }));
        assert!(matches!(
            Content::decode(&p.encode_to_vec()),
            Err(Error::UnsupportedVersion(2))
        ));
    }

    #[test]
    fn oversized_fields_rejected() {
        let c = content(CallMessage::IceCandidates(IceCandidates {
            call_id: [1; 16],
            generation: 0,
            candidates: vec!["x".into(); MAX_CANDIDATES_PER_BATCH + 1],
            end_of_candidates: false,
            ice: None,
        }));
        assert!(Content::decode(&c.encode()).is_err());
        let c = content(CallMessage::Offer(Offer {
            call_id: [1; 16],
            media: CallMedia::Audio,
            key_agreement: vec![0; MAX_KEY_AGREEMENT_LEN + 1],
            ice: None,
        }));
        assert!(Content::decode(&c.encode()).is_err());
        let c = content(CallMessage::Answer(Answer {
            call_id: [1; 16],
            key_agreement: vec![],
            ice: None,
        }));
        assert!(Content::decode(&c.encode()).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Content::decode(&bytes);
        }

        #[test]
        fn ice_batches_round_trip(
            call_id in any::<[u8; 16]>(),
            generation in any::<u32>(),
            candidates in proptest::collection::vec("[ -~]{0,64}", 0..8),
            eoc in any::<bool>(),
            restart in any::<bool>(),
        ) {
            let ice = restart.then(|| IceParameters { ufrag: "u".into(), pwd: "p".into() });
            let c = content(CallMessage::IceCandidates(IceCandidates {
                call_id, generation, candidates, end_of_candidates: eoc, ice,
            }));
            prop_assert_eq!(Content::decode(&c.encode()).unwrap(), c);
        }
    }
}

//! The signaling channel between a client and the SFU (a direct TCP connection for now):
//! the join exchange, roster updates, and the SFU's notices to the participant.
//!
//! Every message is one frame: a 4-byte big-endian length, then the body (at most
//! [`MAX_CONTROL_FRAME`] bytes). The first byte of the body is its tag. `docs/sfu.md` lists the
//! layout of each.
//!
//! The join request and the answer authenticate themselves (signatures over the transcript).
//! Notices after the join are authenticated with the leg's notice key (derived at join, see
//! [`crate::join::HopKeys::notice_key`]): HMAC-SHA256 over a sequence number that starts at 0
//! and grows by one per notice, so a notice cannot be forged, replayed, dropped or reordered
//! by whoever carries the stream without the client noticing. Closing the connection is
//! leaving the call.

use std::net::{IpAddr, SocketAddr};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use zeroize::Zeroizing;

use crate::error::WireError;
use crate::ids::DeviceId;
use crate::join::{StreamDecl, NOTICE_KEY_LEN};
use crate::sfu::LeaveReason;
use crate::wire::Reader;

/// Largest frame body either side accepts.
pub const MAX_CONTROL_FRAME: usize = 16 * 1024;
/// Bytes of the notice MAC.
const NOTICE_MAC_LEN: usize = 32;
const NOTICE_LABEL: &[u8] = b"hush sfu notice v1";

const TAG_JOIN: u8 = 0x10;
const TAG_ROSTER: u8 = 0x11;
const TAG_MUTE: u8 = 0x12;
const TAG_VIEW: u8 = 0x13;
const TAG_VIDEO: u8 = 0x14;
const TAG_ACCEPTED: u8 = 0x20;
const TAG_REFUSED: u8 = 0x21;
const TAG_NOTICE: u8 = 0x22;
const TAG_ROSTER_REFUSED: u8 = 0x23;

/// Errors of the signaling channel.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// Reading or writing the stream failed.
    #[error("signaling i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A frame is longer than [`MAX_CONTROL_FRAME`].
    #[error("signaling frame of {0} bytes is too long")]
    FrameTooLong(usize),
    /// A frame is not well formed.
    #[error(transparent)]
    Malformed(#[from] WireError),
    /// A notice's MAC does not verify, or its sequence number is not the next one.
    #[error("notice not authentic (or out of sequence)")]
    BadNotice,
}

/// What a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// The first frame: a join request, and the first roster to create the call.
    Join {
        /// The encoded [`crate::join::JoinRequest`].
        request: Vec<u8>,
        /// The encoded first [`crate::roster::Roster`], when this join creates the call.
        roster: Option<Vec<u8>>,
    },
    /// A roster update signed by the call's creator (adds and kicks members).
    UpdateRoster {
        /// The encoded [`crate::roster::Roster`].
        roster: Vec<u8>,
    },
    /// This participant muted or unmuted its audio (announced to the others).
    SetMuted {
        /// Muted.
        muted: bool,
    },
    /// This participant wants at most `max_height` pixels of a simulcast source (0: none of
    /// it); see [`crate::Sfu::request_view`].
    RequestView {
        /// The source SSRC (as announced in the participant-joined notice).
        source: u32,
        /// The largest frame height wanted.
        max_height: u16,
    },
    /// This participant turned its video on or off (announced to the others).
    SetVideo {
        /// Video on.
        enabled: bool,
    },
}

/// What the SFU sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    /// The join was accepted.
    Accepted {
        /// The encoded [`crate::join::JoinAnswer`].
        answer: Vec<u8>,
        /// The SFU's media address (its one ICE-lite host candidate). Not authenticated: a
        /// wrong one only makes the connectivity checks fail.
        media: SocketAddr,
    },
    /// The join was refused; the SFU closes the connection.
    Refused {
        /// Why, as the SFU words it.
        reason: String,
    },
    /// A roster update was refused (the connection stays).
    RosterRefused {
        /// Why, as the SFU words it.
        reason: String,
    },
    /// An authenticated notice (open it with a [`NoticeOpener`]).
    Notice(Vec<u8>),
}

/// What the SFU tells a participant about its call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A participant is in the call (sent for every one already there right after joining,
    /// then for each newcomer). A device already known may come again with new streams.
    ParticipantJoined {
        /// Its device.
        device: DeviceId,
        /// The streams it sends (SSRC → participant).
        streams: Vec<StreamDecl>,
    },
    /// A participant left the call.
    ParticipantLeft {
        /// Its device.
        device: DeviceId,
        /// Why.
        reason: LeaveReason,
    },
    /// The dominant speaker changed.
    ActiveSpeaker {
        /// The new dominant speaker.
        device: DeviceId,
    },
    /// This participant was removed from the roster; the SFU closes the connection.
    Kicked,
    /// A roster update from this participant (the creator) is in force.
    RosterAccepted {
        /// Its version.
        version: u64,
    },
    /// A participant muted or unmuted its audio (as it says; the SFU relays it).
    Muted {
        /// Its device.
        device: DeviceId,
        /// Muted.
        muted: bool,
    },
    /// A participant turned its video on or off (as it says; the SFU relays it).
    Video {
        /// Its device.
        device: DeviceId,
        /// Video on.
        enabled: bool,
    },
}

fn put_bytes16(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    out.extend_from_slice(bytes.get(..usize::from(u16::MAX)).unwrap_or(bytes));
}

fn get_bytes16(r: &mut Reader<'_>) -> Result<Vec<u8>, WireError> {
    let n = usize::from(r.u16()?);
    Ok(r.take(n)?.to_vec())
}

fn reason_text(r: &mut Reader<'_>) -> Result<String, WireError> {
    let bytes = get_bytes16(r)?;
    String::from_utf8(bytes).map_err(|_| r.malformed("reason not utf-8"))
}

impl ClientMessage {
    /// The frame body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Self::Join { request, roster } => {
                out.push(TAG_JOIN);
                put_bytes16(&mut out, request);
                put_bytes16(&mut out, roster.as_deref().unwrap_or_default());
            }
            Self::UpdateRoster { roster } => {
                out.push(TAG_ROSTER);
                put_bytes16(&mut out, roster);
            }
            Self::SetMuted { muted } => {
                out.push(TAG_MUTE);
                out.push(u8::from(*muted));
            }
            Self::RequestView { source, max_height } => {
                out.push(TAG_VIEW);
                out.extend_from_slice(&source.to_be_bytes());
                out.extend_from_slice(&max_height.to_be_bytes());
            }
            Self::SetVideo { enabled } => {
                out.push(TAG_VIDEO);
                out.push(u8::from(*enabled));
            }
        }
        out
    }

    /// Parses a frame body. Never panics.
    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body, "client signaling message");
        let msg = match r.u8()? {
            TAG_JOIN => {
                let request = get_bytes16(&mut r)?;
                let roster = get_bytes16(&mut r)?;
                Self::Join {
                    request,
                    roster: (!roster.is_empty()).then_some(roster),
                }
            }
            TAG_ROSTER => Self::UpdateRoster {
                roster: get_bytes16(&mut r)?,
            },
            TAG_MUTE => Self::SetMuted {
                muted: match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(r.malformed("mute flag")),
                },
            },
            TAG_VIEW => Self::RequestView {
                source: r.u32()?,
                max_height: r.u16()?,
            },
            TAG_VIDEO => Self::SetVideo {
                enabled: match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(r.malformed("video flag")),
                },
            },
            _ => return Err(r.malformed("unknown tag")),
        };
        r.finish()?;
        Ok(msg)
    }
}

impl ServerMessage {
    /// The frame body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Self::Accepted { answer, media } => {
                out.push(TAG_ACCEPTED);
                put_bytes16(&mut out, answer);
                match media.ip() {
                    IpAddr::V4(ip) => {
                        out.push(4);
                        out.extend_from_slice(&ip.octets());
                    }
                    IpAddr::V6(ip) => {
                        out.push(6);
                        out.extend_from_slice(&ip.octets());
                    }
                }
                out.extend_from_slice(&media.port().to_be_bytes());
            }
            Self::Refused { reason } => {
                out.push(TAG_REFUSED);
                put_bytes16(&mut out, reason.as_bytes());
            }
            Self::RosterRefused { reason } => {
                out.push(TAG_ROSTER_REFUSED);
                put_bytes16(&mut out, reason.as_bytes());
            }
            Self::Notice(sealed) => {
                out.push(TAG_NOTICE);
                out.extend_from_slice(sealed);
            }
        }
        out
    }

    /// Parses a frame body. Never panics.
    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body, "sfu signaling message");
        let msg = match r.u8()? {
            TAG_ACCEPTED => {
                let answer = get_bytes16(&mut r)?;
                let ip = match r.u8()? {
                    4 => IpAddr::from(r.array::<4>()?),
                    6 => IpAddr::from(r.array::<16>()?),
                    _ => return Err(r.malformed("address family")),
                };
                let port = r.u16()?;
                Self::Accepted {
                    answer,
                    media: SocketAddr::new(ip, port),
                }
            }
            TAG_REFUSED => Self::Refused {
                reason: reason_text(&mut r)?,
            },
            TAG_ROSTER_REFUSED => Self::RosterRefused {
                reason: reason_text(&mut r)?,
            },
            TAG_NOTICE => {
                let rest = r.take(r.remaining())?;
                Self::Notice(rest.to_vec())
            }
            _ => return Err(r.malformed("unknown tag")),
        };
        r.finish()?;
        Ok(msg)
    }
}

fn reason_code(reason: LeaveReason) -> u8 {
    match reason {
        LeaveReason::Left => 0,
        LeaveReason::Kicked => 1,
        LeaveReason::Replaced => 2,
    }
}

impl Notice {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::ParticipantJoined { device, streams } => {
                out.push(1);
                out.extend_from_slice(device.as_bytes());
                out.push(streams.len().min(usize::from(u8::MAX)) as u8);
                for s in streams.iter().take(usize::from(u8::MAX)) {
                    s.write(out);
                }
            }
            Self::ParticipantLeft { device, reason } => {
                out.push(2);
                out.extend_from_slice(device.as_bytes());
                out.push(reason_code(*reason));
            }
            Self::ActiveSpeaker { device } => {
                out.push(3);
                out.extend_from_slice(device.as_bytes());
            }
            Self::Kicked => out.push(4),
            Self::RosterAccepted { version } => {
                out.push(5);
                out.extend_from_slice(&version.to_be_bytes());
            }
            Self::Muted { device, muted } => {
                out.push(6);
                out.extend_from_slice(device.as_bytes());
                out.push(u8::from(*muted));
            }
            Self::Video { device, enabled } => {
                out.push(7);
                out.extend_from_slice(device.as_bytes());
                out.push(u8::from(*enabled));
            }
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let device = |r: &mut Reader<'_>| DeviceId::from_bytes(&r.array::<32>()?);
        Ok(match r.u8()? {
            1 => {
                let device = device(r)?;
                let n = r.u8()?;
                let mut streams = Vec::with_capacity(usize::from(n));
                for _ in 0..n {
                    streams.push(StreamDecl::read(r)?);
                }
                Self::ParticipantJoined { device, streams }
            }
            2 => {
                let device = device(r)?;
                let reason = match r.u8()? {
                    0 => LeaveReason::Left,
                    1 => LeaveReason::Kicked,
                    2 => LeaveReason::Replaced,
                    _ => return Err(r.malformed("leave reason")),
                };
                Self::ParticipantLeft { device, reason }
            }
            3 => Self::ActiveSpeaker { device: device(r)? },
            4 => Self::Kicked,
            5 => Self::RosterAccepted { version: r.u64()? },
            6 => {
                let device = device(r)?;
                let muted = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(r.malformed("mute flag")),
                };
                Self::Muted { device, muted }
            }
            7 => {
                let device = device(r)?;
                let enabled = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(r.malformed("video flag")),
                };
                Self::Video { device, enabled }
            }
            _ => return Err(r.malformed("notice kind")),
        })
    }
}

fn notice_mac(
    key: &[u8; NOTICE_KEY_LEN],
    seq: u64,
    body: &[u8],
) -> Result<Hmac<Sha256>, ControlError> {
    // HMAC accepts keys of any length; the error cannot happen.
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).map_err(|_| ControlError::BadNotice)?;
    mac.update(NOTICE_LABEL);
    mac.update(&seq.to_be_bytes());
    mac.update(body);
    Ok(mac)
}

/// The SFU's side of one leg's notices: numbers and authenticates them.
pub struct NoticeSealer {
    key: Zeroizing<[u8; NOTICE_KEY_LEN]>,
    seq: u64,
}

impl NoticeSealer {
    /// A sealer with the leg's notice key; the first notice gets sequence number 0.
    pub fn new(key: Zeroizing<[u8; NOTICE_KEY_LEN]>) -> Self {
        Self { key, seq: 0 }
    }

    /// `seq (8) || notice || HMAC-SHA256(key, label || seq || notice)`.
    pub fn seal(&mut self, notice: &Notice) -> Result<Vec<u8>, ControlError> {
        let mut body = Vec::with_capacity(64);
        notice.encode(&mut body);
        let tag = notice_mac(&self.key, self.seq, &body)?
            .finalize()
            .into_bytes();
        let mut out = Vec::with_capacity(8 + body.len() + NOTICE_MAC_LEN);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&body);
        out.extend_from_slice(&tag);
        self.seq += 1;
        Ok(out)
    }
}

impl std::fmt::Debug for NoticeSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoticeSealer")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

/// The client's side: checks each notice's MAC and that it is the next in sequence.
pub struct NoticeOpener {
    key: Zeroizing<[u8; NOTICE_KEY_LEN]>,
    next: u64,
}

impl NoticeOpener {
    /// An opener with the leg's notice key (from the client's [`crate::join::HopKeys`]).
    pub fn new(key: &[u8; NOTICE_KEY_LEN]) -> Self {
        Self {
            key: Zeroizing::new(*key),
            next: 0,
        }
    }

    /// Verifies and parses one sealed notice. Never panics.
    pub fn open(&mut self, sealed: &[u8]) -> Result<Notice, ControlError> {
        let split = sealed
            .len()
            .checked_sub(NOTICE_MAC_LEN)
            .ok_or(ControlError::BadNotice)?;
        let (signed, tag) = sealed.split_at(split);
        let mut r = Reader::new(signed, "notice");
        let seq = r.u64().map_err(|_| ControlError::BadNotice)?;
        let body = signed.get(8..).ok_or(ControlError::BadNotice)?;
        if seq != self.next {
            return Err(ControlError::BadNotice);
        }
        notice_mac(&self.key, seq, body)?
            .verify_slice(tag)
            .map_err(|_| ControlError::BadNotice)?;
        let notice = Notice::decode(&mut r)?;
        r.finish()?;
        self.next += 1;
        Ok(notice)
    }
}

impl std::fmt::Debug for NoticeOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoticeOpener")
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

/// Reads one frame body; `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Vec<u8>>, ControlError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_CONTROL_FRAME {
        return Err(ControlError::FrameTooLong(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some(body))
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    body: &[u8],
) -> Result<(), ControlError> {
    if body.len() > MAX_CONTROL_FRAME {
        return Err(ControlError::FrameTooLong(body.len()));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(body);
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::join::{SimulcastLayer, StreamKind};

    fn device(seed: u8) -> DeviceId {
        DeviceId::from_signing_key(&ed25519_dalek::SigningKey::from_bytes(&[seed; 32]))
    }

    #[test]
    fn notices_round_trip_in_sequence() {
        let key = [7u8; NOTICE_KEY_LEN];
        let mut sealer = NoticeSealer::new(Zeroizing::new(key));
        let mut opener = NoticeOpener::new(&key);
        let notices = [
            Notice::ParticipantJoined {
                device: device(1),
                streams: vec![
                    StreamDecl {
                        ssrc: 9,
                        kind: StreamKind::Audio,
                    },
                    StreamDecl {
                        ssrc: 10,
                        kind: StreamKind::SimulcastLayer(SimulcastLayer {
                            source: 1,
                            layer: 2,
                            width: 640,
                            height: 360,
                        }),
                    },
                ],
            },
            Notice::ParticipantLeft {
                device: device(2),
                reason: LeaveReason::Kicked,
            },
            Notice::ActiveSpeaker { device: device(3) },
            Notice::Kicked,
            Notice::RosterAccepted { version: 4 },
            Notice::Muted {
                device: device(4),
                muted: true,
            },
            Notice::Video {
                device: device(5),
                enabled: false,
            },
            Notice::Video {
                device: device(5),
                enabled: true,
            },
        ];
        for n in &notices {
            let sealed = sealer.seal(n).unwrap();
            assert_eq!(&opener.open(&sealed).unwrap(), n);
        }
    }

    #[test]
    fn forged_replayed_or_skipped_notices_are_refused() {
        let key = [7u8; NOTICE_KEY_LEN];
        let mut sealer = NoticeSealer::new(Zeroizing::new(key));
        let mut opener = NoticeOpener::new(&key);
        let first = sealer.seal(&Notice::Kicked).unwrap();
        let second = sealer.seal(&Notice::Kicked).unwrap();
        // Skipping one (dropped by whoever carries the stream) is noticed.
        assert!(matches!(opener.open(&second), Err(ControlError::BadNotice)));
        opener.open(&first).unwrap();
        // Replaying one is noticed.
        assert!(matches!(opener.open(&first), Err(ControlError::BadNotice)));
        // A notice under another key (another leg's) is refused.
        let mut other = NoticeSealer::new(Zeroizing::new([8u8; NOTICE_KEY_LEN]));
        let _ = other.seal(&Notice::Kicked).unwrap();
        assert!(matches!(
            opener.open(&other.seal(&Notice::Kicked).unwrap()),
            Err(ControlError::BadNotice)
        ));
        // A flipped bit is refused.
        let mut bad = second.clone();
        bad[8] ^= 1;
        assert!(matches!(opener.open(&bad), Err(ControlError::BadNotice)));
        opener.open(&second).unwrap();
    }

    #[test]
    fn messages_round_trip() {
        let msgs = [
            ServerMessage::Accepted {
                answer: vec![1, 2, 3],
                media: "127.0.0.1:4000".parse().unwrap(),
            },
            ServerMessage::Accepted {
                answer: vec![],
                media: "[::1]:4000".parse().unwrap(),
            },
            ServerMessage::Refused {
                reason: "no".into(),
            },
            ServerMessage::RosterRefused {
                reason: "old".into(),
            },
            ServerMessage::Notice(vec![9; 40]),
        ];
        for m in msgs {
            assert_eq!(ServerMessage::decode(&m.encode()).unwrap(), m);
        }
        let c = [
            ClientMessage::Join {
                request: vec![1; 10],
                roster: None,
            },
            ClientMessage::Join {
                request: vec![1; 10],
                roster: Some(vec![2; 5]),
            },
            ClientMessage::UpdateRoster { roster: vec![3; 7] },
            ClientMessage::SetMuted { muted: true },
            ClientMessage::SetMuted { muted: false },
            ClientMessage::RequestView {
                source: 0x3000,
                max_height: 180,
            },
            ClientMessage::SetVideo { enabled: false },
            ClientMessage::SetVideo { enabled: true },
        ];
        for m in c {
            assert_eq!(ClientMessage::decode(&m.encode()).unwrap(), m);
        }
    }

    proptest::proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = ClientMessage::decode(&bytes);
            let _ = ServerMessage::decode(&bytes);
            let _ = NoticeOpener::new(&[0; 32]).open(&bytes);
        }
    }
}

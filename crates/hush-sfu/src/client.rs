//! The client's end of the signaling channel ([`crate::control`]): connect, join, then read
//! the SFU's authenticated notices and send roster updates.
//!
//! Media is not here: the client gives [`HopKeys::ice_ufrag`] / [`HopKeys::ice_pwd`] and the
//! SFU's media address to its ICE agent (hush-net, controlling; the SFU is ICE-lite) and keys
//! its SRTP with the hop keys.

use std::net::SocketAddr;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::control::{
    read_frame, write_frame, ClientMessage, ControlError, Notice, NoticeOpener, ServerMessage,
};
use crate::error::JoinError;
use crate::join::{HopKeys, JoinAnswer, JoinParams, PendingJoin, SfuPublicKey};
use crate::roster::Roster;

/// Why joining through the signaling channel failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The channel failed (connect, read, write, a malformed frame, a bad notice).
    #[error(transparent)]
    Control(#[from] ControlError),
    /// Building the request or checking the answer failed (e.g. the answer is not signed by
    /// the configured SFU key).
    #[error(transparent)]
    Join(#[from] JoinError),
    /// The SFU refused the join.
    #[error("join refused by the sfu: {0}")]
    Refused(String),
    /// The SFU sent something else than an answer or a refusal first.
    #[error("unexpected first message from the sfu")]
    Unexpected,
    /// The SFU did not answer in time.
    #[error("no answer from the sfu in time")]
    Timeout,
}

/// What comes from the SFU after joining.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// An authenticated notice.
    Notice(Notice),
    /// A roster update this participant sent was refused.
    RosterRefused(String),
}

/// A joined leg: the hop keys, the SFU's media address, and the two halves of the channel.
#[derive(Debug)]
pub struct Link {
    /// The client's hop keys (SRTP both ways, the SFU's ICE credentials).
    pub keys: HopKeys,
    /// The SFU's media address (its ICE host candidate).
    pub media: SocketAddr,
    /// Notices in.
    pub notices: NoticeReader,
    /// Roster updates out; dropping it (with the reader) leaves the call.
    pub control: ControlWriter,
}

/// Reads and authenticates the SFU's notices.
#[derive(Debug)]
pub struct NoticeReader {
    rd: OwnedReadHalf,
    opener: NoticeOpener,
}

impl NoticeReader {
    /// The next message; `Ok(None)` when the SFU closed the channel (the call ended for this
    /// participant). Not cancel-safe: keep one task reading.
    pub async fn next(&mut self) -> Result<Option<Incoming>, ControlError> {
        let Some(body) = read_frame(&mut self.rd).await? else {
            return Ok(None);
        };
        match ServerMessage::decode(&body)? {
            ServerMessage::Notice(sealed) => Ok(Some(Incoming::Notice(self.opener.open(&sealed)?))),
            ServerMessage::RosterRefused { reason } => Ok(Some(Incoming::RosterRefused(reason))),
            ServerMessage::Accepted { .. } | ServerMessage::Refused { .. } => {
                Err(ControlError::BadNotice)
            }
        }
    }
}

/// Sends roster updates (the call's creator only; the SFU checks the signature).
#[derive(Debug)]
pub struct ControlWriter {
    wr: OwnedWriteHalf,
}

impl ControlWriter {
    /// Sends a roster update; the outcome comes back as a notice
    /// ([`Notice::RosterAccepted`]) or [`Incoming::RosterRefused`].
    pub async fn update_roster(&mut self, roster: &Roster) -> Result<(), ControlError> {
        let msg = ClientMessage::UpdateRoster {
            roster: roster.encode(),
        };
        write_frame(&mut self.wr, &msg.encode()).await
    }

    /// Tells the SFU (and through it, the others) that this participant muted or unmuted.
    pub async fn set_muted(&mut self, muted: bool) -> Result<(), ControlError> {
        write_frame(&mut self.wr, &ClientMessage::SetMuted { muted }.encode()).await
    }

    /// Tells the SFU (and through it, the others) that this participant turned its video on
    /// or off.
    pub async fn set_video(&mut self, enabled: bool) -> Result<(), ControlError> {
        write_frame(&mut self.wr, &ClientMessage::SetVideo { enabled }.encode()).await
    }

    /// Asks for at most `max_height` pixels of the simulcast source `source` (its source SSRC
    /// as announced; 0 stops it). The SFU switches at the source's next keyframe.
    pub async fn request_view(&mut self, source: u32, max_height: u16) -> Result<(), ControlError> {
        let msg = ClientMessage::RequestView { source, max_height };
        write_frame(&mut self.wr, &msg.encode()).await
    }
}

/// Connects to the SFU's signaling address, sends a join signed with `device` (with `roster`
/// to create the call), checks the answer against `sfu` and derives the hop keys.
pub async fn join(
    signal: SocketAddr,
    sfu: &SfuPublicKey,
    device: &SigningKey,
    params: &JoinParams,
    roster: Option<&Roster>,
    unix_ms: u64,
    timeout: Duration,
) -> Result<Link, ClientError> {
    let (pending, request) = PendingJoin::new(device, params, unix_ms, &mut rand::rng())?;
    let stream = tokio::time::timeout(timeout, TcpStream::connect(signal))
        .await
        .map_err(|_| ClientError::Timeout)?
        .map_err(ControlError::Io)?;
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let msg = ClientMessage::Join {
        request: request.encode(),
        roster: roster.map(Roster::encode),
    };
    write_frame(&mut wr, &msg.encode()).await?;
    let body = tokio::time::timeout(timeout, read_frame(&mut rd))
        .await
        .map_err(|_| ClientError::Timeout)??
        .ok_or(ClientError::Unexpected)?;
    match ServerMessage::decode(&body).map_err(ControlError::Malformed)? {
        ServerMessage::Accepted { answer, media } => {
            let answer = JoinAnswer::decode(&answer)?;
            let keys = pending.finish(sfu, &answer)?;
            let opener = NoticeOpener::new(keys.notice_key());
            Ok(Link {
                keys,
                media,
                notices: NoticeReader { rd, opener },
                control: ControlWriter { wr },
            })
        }
        ServerMessage::Refused { reason } => Err(ClientError::Refused(reason)),
        _ => Err(ClientError::Unexpected),
    }
}

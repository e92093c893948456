//! The facade's error type.

/// Why a `hush` operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Another call is active on this client.
    #[error("another call is active")]
    Busy,
    /// There is no Signal session with the peer: fetch its prekey bundle and start one first.
    #[error("no Signal session with this peer")]
    NoSession,
    /// The call has no video: it was placed audio-only.
    #[error("the call has no video (it was placed audio-only)")]
    NoVideo,
    /// The call's video runs in the other mode: raw pictures on a call with an application
    /// codec, or encoded frames on a call where hush runs the codec.
    #[error("video sent in the wrong mode for this call (raw vs encoded)")]
    VideoMode,
    /// The call has ended; its handle no longer does anything.
    #[error("the call has ended")]
    CallEnded,
    /// The client has shut down.
    #[error("the client has shut down")]
    ClientClosed,
    /// The ICE driver did not start in time (interface scan or socket binding hung).
    #[error("the network layer did not start in time")]
    NetStartTimeout,
    /// The ICE policy is relay-only but there is no TURN server: none configured, and the
    /// transport handed out no credentials (its relay has no TURN, or could not be asked).
    #[error("relay-only policy but no TURN server (none configured or granted)")]
    NoTurnServer,
    /// The call state machine refused the command.
    #[error(transparent)]
    Command(#[from] crate::machine::CommandError),
    /// Signaling failed (sealing, transport, relay).
    #[error("signaling: {0}")]
    Signaling(#[from] hush_signaling::Error),
    /// A Signal-session or key-exchange step failed (identity change, tampered answer, ...).
    #[error("crypto: {0}")]
    Crypto(#[from] hush_crypto::Error),
    /// ICE/TURN failed.
    #[error("network: {0}")]
    Net(#[from] hush_net::Error),
    /// The media engine or codec failed.
    #[error("media: {0}")]
    Media(#[from] hush_media::Error),
    /// SRTP setup failed.
    #[error("srtp: {0}")]
    Srtp(#[from] hush_srtp::Error),
    /// Joining a group call's SFU failed (refused, unreachable, an answer not signed by the
    /// SFU's key) or its signaling channel broke.
    #[error("group call: {0}")]
    GroupJoin(#[from] hush_sfu::client::ClientError),
    /// A group call invitation or roster is not valid (bad signature, not for this device).
    #[error("group call invitation: {0}")]
    GroupInvite(#[source] hush_sfu::JoinError),
    /// A group call invitation names an SFU address that does not parse.
    #[error("group call invitation: bad sfu address")]
    GroupInviteAddress,
    /// The group call's end-to-end layer failed (this device has no slot in the roster, or its
    /// sender key ran out).
    #[error("group call end-to-end encryption: {0}")]
    GroupE2ee(#[from] hush_crypto::group::GroupError),
    /// The group call's roster gives this device no slot for end-to-end keys (it does not
    /// list it).
    #[error("no end-to-end key slot for this device in the group call's roster")]
    NoGroupSlot,
    /// Only the call's creator can change its roster.
    #[error("only the group call's creator can change its roster")]
    NotCallCreator,
    /// The group call's video encoder thread could not be started.
    #[error("group video thread: {0}")]
    VideoThread(std::io::Error),
    /// No participant of the group call by that device id sends video.
    #[error("no participant with video by that device id in the group call")]
    UnknownParticipant,
    /// The group call's media path refused a setting (a video layer).
    #[error("group media path: {0}")]
    GroupPath(#[from] crate::group_path::GroupPathError),
}

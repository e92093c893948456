//! Values the call state machine takes in and gives out.

use std::fmt;

/// Identifies one call. Chosen at random (128 bits) by the caller for every call.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CallId(pub [u8; 16]);

impl fmt::Debug for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Eight hex digits are enough to tell calls apart in logs.
        write!(
            f,
            "CallId({:02x}{:02x}{:02x}{:02x}..)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

impl From<[u8; 16]> for CallId {
    /// The id of the signaling messages (`hush_signaling::CallId`) and of the key agreement.
    fn from(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }
}

impl From<CallId> for [u8; 16] {
    fn from(id: CallId) -> Self {
        id.0
    }
}

/// Names the remote device of a call (its signaling address).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub String);

impl From<&str> for PeerId {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

/// Why a side sent `Hangup`, as carried on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HangupReason {
    /// An ordinary hangup by the user.
    Normal,
    /// The callee declined the call.
    Declined,
    /// The sender is in another call.
    Busy,
    /// Ringing or connecting took too long.
    Timeout,
    /// Another device of the callee accepted the call.
    AcceptedElsewhere,
}

impl From<HangupReason> for hush_signaling::HangupReason {
    fn from(r: HangupReason) -> Self {
        match r {
            HangupReason::Normal => Self::Normal,
            HangupReason::Declined => Self::Declined,
            HangupReason::Busy => Self::Busy,
            HangupReason::Timeout => Self::Timeout,
            HangupReason::AcceptedElsewhere => Self::AcceptedElsewhere,
        }
    }
}

impl From<hush_signaling::HangupReason> for HangupReason {
    /// A reason this build does not know (a newer peer's) counts as an ordinary hangup.
    fn from(r: hush_signaling::HangupReason) -> Self {
        match r {
            hush_signaling::HangupReason::Declined => Self::Declined,
            hush_signaling::HangupReason::Busy => Self::Busy,
            hush_signaling::HangupReason::Timeout => Self::Timeout,
            hush_signaling::HangupReason::AcceptedElsewhere => Self::AcceptedElsewhere,
            _ => Self::Normal,
        }
    }
}

/// A call-signaling message, as the state machine sees it.
///
/// `P` is the opaque payload of the messages that carry one (the key-exchange offer and answer,
/// and ICE candidates). The machine never looks inside it: the driver builds and opens payloads
/// with `hush-crypto` and `hush-net`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signal<P> {
    /// Starts a call.
    Offer {
        /// The call being offered.
        call_id: CallId,
        /// The caller's key-exchange offer.
        payload: P,
    },
    /// The callee's device is ringing.
    Ringing {
        /// The call that rings.
        call_id: CallId,
    },
    /// The callee accepted.
    Answer {
        /// The call being answered.
        call_id: CallId,
        /// The callee's key-exchange answer.
        payload: P,
    },
    /// A batch of ICE candidates.
    IceCandidates {
        /// The call they belong to.
        call_id: CallId,
        /// The candidates.
        payload: P,
    },
    /// The callee is in another call.
    Busy {
        /// The call that was refused.
        call_id: CallId,
    },
    /// Ends the call.
    Hangup {
        /// The call to end.
        call_id: CallId,
        /// Why it ends.
        reason: HangupReason,
    },
}

impl<P> Signal<P> {
    /// The call this message belongs to.
    pub fn call_id(&self) -> CallId {
        match self {
            Self::Offer { call_id, .. }
            | Self::Ringing { call_id }
            | Self::Answer { call_id, .. }
            | Self::IceCandidates { call_id, .. }
            | Self::Busy { call_id }
            | Self::Hangup { call_id, .. } => *call_id,
        }
    }
}

/// Which side of the call this device is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// This device placed the call.
    Caller,
    /// This device received the call.
    Callee,
}

/// Where a call stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallState {
    /// Caller: the offer is sent, the callee has not said it rings.
    Offering,
    /// Caller: the callee's device rings.
    RemoteRinging,
    /// Callee: the call rings here, waiting for the user to accept or reject.
    Ringing,
    /// Keys are agreed and ICE is finding a path; media may flow.
    Connecting,
    /// Media flows.
    Connected,
    /// The path was lost; ICE is restarting.
    Reconnecting,
    /// The call is over.
    Ended(EndReason),
}

impl CallState {
    /// Whether media may be sent and decrypted in this state: only once the callee accepted.
    pub fn media_allowed(self) -> bool {
        matches!(
            self,
            Self::Connecting | Self::Connected | Self::Reconnecting
        )
    }
}

/// Why a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EndReason {
    /// The local user hung up.
    LocalHangup,
    /// The local user rejected the incoming call.
    LocalDeclined,
    /// The remote side hung up (with its reason).
    RemoteHangup(HangupReason),
    /// The callee is in another call.
    RemoteBusy,
    /// Nobody answered (caller) or accepted (callee) in time.
    RingTimeout,
    /// No media path was found in time after the answer.
    ConnectTimeout,
    /// The media path was lost and not restored in time.
    ConnectionLost,
    /// Both sides called each other at once and the other side's call won; the winning call
    /// arrives as an incoming call.
    Glare,
    /// The key exchange or another step failed (for example a tampered answer).
    Failed,
}

/// Something that happened to a call, for the application and the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event<P> {
    /// An incoming call rings. The driver keeps `offer` to build the answer on accept.
    Incoming {
        /// The new call.
        call_id: CallId,
        /// Who calls.
        peer: PeerId,
        /// The caller's key-exchange offer.
        offer: P,
        /// True when this call won a glare against our own outgoing call to the same peer (both
        /// users pressed call), so an application may accept it without asking again.
        replaces_outgoing: bool,
    },
    /// The callee's device rings.
    RemoteRinging {
        /// The call.
        call_id: CallId,
    },
    /// The callee answered: the driver finishes the key exchange with `answer` and starts ICE.
    Answered {
        /// The call.
        call_id: CallId,
        /// The callee's key-exchange answer.
        answer: P,
    },
    /// Remote ICE candidates for a call whose media may flow.
    RemoteCandidates {
        /// The call.
        call_id: CallId,
        /// The candidates.
        candidates: P,
    },
    /// Media flows.
    Connected {
        /// The call.
        call_id: CallId,
    },
    /// The media path was lost; ICE is restarting.
    Reconnecting {
        /// The call.
        call_id: CallId,
    },
    /// The call ended. Its keys must be destroyed now.
    Ended {
        /// The call.
        call_id: CallId,
        /// Why.
        reason: EndReason,
    },
}

/// What the machine asks of its driver.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output<P> {
    /// Seal `signal` for `peer` and send it.
    Send {
        /// Recipient.
        peer: PeerId,
        /// The message.
        signal: Signal<P>,
    },
    /// Report this event.
    Event(Event<P>),
}

/// Why a command to the machine was refused. These are API-use errors, never caused by what a
/// peer sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// Another call is active; hang it up first.
    #[error("another call is active")]
    Busy,
    /// This call id was used before; every call needs a fresh random id.
    #[error("call id reused")]
    ReusedCallId,
    /// No active call has this id.
    #[error("no active call with this id")]
    UnknownCall,
    /// The call is not in a state where this command applies.
    #[error("the call is {0:?}; this command does not apply")]
    WrongState(CallState),
}

#[cfg(test)]
mod wire_tests {
    use super::{CallId, HangupReason};

    #[test]
    fn hangup_reasons_and_call_ids_convert_both_ways() {
        for r in [
            HangupReason::Normal,
            HangupReason::Declined,
            HangupReason::Busy,
            HangupReason::Timeout,
            HangupReason::AcceptedElsewhere,
        ] {
            let wire: hush_signaling::HangupReason = r.into();
            assert_eq!(HangupReason::from(wire), r);
        }
        // A newer peer's reason is an ordinary hangup here.
        assert_eq!(
            HangupReason::from(hush_signaling::HangupReason::Unknown(42)),
            HangupReason::Normal
        );
        let id = CallId::from([7; 16]);
        assert_eq!(<[u8; 16]>::from(id), [7; 16]);
    }
}

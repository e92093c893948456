//! The sans-IO call state machine: which call is active, what to send, what to report.
//!
//! [`CallMachine`] holds at most one active call (a device is either idle, ringing, or in one
//! call; everything else gets `Busy`). It never reads a clock, touches a socket or a key: the
//! driver feeds it commands, received signals and the time, then drains [`CallMachine::poll_output`]
//! and arms one timer at [`CallMachine::poll_timeout`].
//!
//! # Contract
//!
//! - Commands: [`call`](CallMachine::call), [`accept`](CallMachine::accept),
//!   [`reject`](CallMachine::reject), [`hangup`](CallMachine::hangup),
//!   [`fail`](CallMachine::fail); path reports: [`path_up`](CallMachine::path_up),
//!   [`path_down`](CallMachine::path_down).
//! - Inputs: [`handle_signal`](CallMachine::handle_signal),
//!   [`handle_timeout`](CallMachine::handle_timeout).
//! - Outputs: [`poll_output`](CallMachine::poll_output) (drain until `None` after every input),
//!   [`poll_timeout`](CallMachine::poll_timeout).
//! - `now` never goes backwards. A duplicate, late or unknown message is ignored, never an error:
//!   peers and relays can replay anything. An extra `handle_timeout` is a no-op.
//!
//! # Rules
//!
//! - **No media before accept.** [`CallMachine::media_allowed`] is true only once the callee's
//!   user accepted (callee) or the answer arrived (caller). The driver derives keys, sends and
//!   decrypts media only then.
//! - **Glare.** When both sides offer each other at once, the call with the larger [`CallId`]
//!   wins on both sides: the loser's own outgoing call ends with [`EndReason::Glare`] and the
//!   winning call rings there with `replaces_outgoing: true`; the winner ignores the losing offer.
//! - **Busy.** An offer that arrives while another call is active is answered with `Busy`.
//! - **Timeouts.** Ringing, connecting and reconnecting each have a limit ([`Timeouts`]).
//! - Candidates that arrive before media is allowed are held (bounded) and released when it is.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use hush::machine::{CallId, CallMachine, Event, Output, Signal, Timeouts};
//!
//! let t0 = Instant::now();
//! let mut alice = CallMachine::<&str>::new(Timeouts::default());
//! let mut bob = CallMachine::<&str>::new(Timeouts::default());
//! let id = CallId([7; 16]);
//! alice.call(t0, "bob".into(), id, "offer").unwrap();
//! // Deliver Alice's offer to Bob.
//! let Some(Output::Send { signal, .. }) = alice.poll_output() else { unreachable!() };
//! bob.handle_signal(t0, &"alice".into(), signal);
//! assert!(matches!(bob.poll_output(), Some(Output::Send { signal: Signal::Ringing { .. }, .. })));
//! assert!(matches!(bob.poll_output(), Some(Output::Event(Event::Incoming { .. }))));
//! assert!(!bob.media_allowed(id)); // nothing flows until Bob accepts
//! bob.accept(t0 + Duration::from_secs(2), id, "answer").unwrap();
//! assert!(bob.media_allowed(id));
//! ```

mod types;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tracing::{debug, info};

pub use types::{
    CallId, CallState, CommandError, EndReason, Event, HangupReason, Output, PeerId, Side, Signal,
};

/// How long each waiting state may last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// From offer (caller) or incoming offer (callee) until answer/accept.
    pub ring: Duration,
    /// From answer/accept until the media path is up.
    pub connect: Duration,
    /// From losing the path until it is back.
    pub reconnect: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            ring: Duration::from_secs(60),
            connect: Duration::from_secs(15),
            reconnect: Duration::from_secs(20),
        }
    }
}

/// Candidate batches held for a call whose media is not yet allowed.
const MAX_HELD_CANDIDATE_BATCHES: usize = 64;
/// Ended call ids remembered so that late or replayed messages for them are ignored.
const MAX_ENDED_REMEMBERED: usize = 256;

struct ActiveCall<P> {
    id: CallId,
    peer: PeerId,
    side: Side,
    state: CallState,
    /// When the current state's timer fires.
    deadline: Instant,
    held_candidates: Vec<P>,
    accepted: bool,
}

/// The call state machine of one device. See the [module docs](self) for the contract.
pub struct CallMachine<P> {
    timeouts: Timeouts,
    active: Option<ActiveCall<P>>,
    ended: VecDeque<CallId>,
    out: VecDeque<Output<P>>,
}

impl<P> CallMachine<P> {
    /// A machine with no call.
    pub fn new(timeouts: Timeouts) -> Self {
        Self {
            timeouts,
            active: None,
            ended: VecDeque::new(),
            out: VecDeque::new(),
        }
    }

    // ----- getters -----

    /// The active call's id, side and state, if there is one.
    pub fn active(&self) -> Option<(CallId, Side, CallState)> {
        self.active.as_ref().map(|c| (c.id, c.side, c.state))
    }

    /// The remote device of the active call.
    pub fn active_peer(&self) -> Option<&PeerId> {
        self.active.as_ref().map(|c| &c.peer)
    }

    /// Whether media for `call_id` may be sent and decrypted now. False for any call that is
    /// not active, not yet accepted, or ended.
    pub fn media_allowed(&self, call_id: CallId) -> bool {
        self.active
            .as_ref()
            .is_some_and(|c| c.id == call_id && c.accepted && c.state.media_allowed())
    }

    // ----- commands -----

    /// Places a call to `peer`, sending `offer`. Refused while another call is active.
    pub fn call(
        &mut self,
        now: Instant,
        peer: PeerId,
        call_id: CallId,
        offer: P,
    ) -> Result<(), CommandError> {
        if self.active.is_some() {
            return Err(CommandError::Busy);
        }
        if self.ended.contains(&call_id) {
            return Err(CommandError::ReusedCallId);
        }
        info!(?call_id, "placing call");
        self.active = Some(ActiveCall {
            id: call_id,
            peer: peer.clone(),
            side: Side::Caller,
            state: CallState::Offering,
            deadline: now + self.timeouts.ring,
            held_candidates: Vec::new(),
            accepted: false,
        });
        self.send(
            peer,
            Signal::Offer {
                call_id,
                payload: offer,
            },
        );
        Ok(())
    }

    /// Accepts the ringing incoming call, sending `answer`. Media is allowed from here on.
    pub fn accept(&mut self, now: Instant, call_id: CallId, answer: P) -> Result<(), CommandError> {
        let connect = self.timeouts.connect;
        let call = self.active_mut(call_id)?;
        if call.state != CallState::Ringing {
            return Err(CommandError::WrongState(call.state));
        }
        info!(?call_id, "accepted");
        call.accepted = true;
        call.state = CallState::Connecting;
        call.deadline = now + connect;
        let peer = call.peer.clone();
        let held = std::mem::take(&mut call.held_candidates);
        self.send(
            peer,
            Signal::Answer {
                call_id,
                payload: answer,
            },
        );
        self.release_candidates(call_id, held);
        Ok(())
    }

    /// Declines the ringing incoming call.
    pub fn reject(&mut self, call_id: CallId) -> Result<(), CommandError> {
        let call = self.active_mut(call_id)?;
        if call.state != CallState::Ringing {
            return Err(CommandError::WrongState(call.state));
        }
        self.end(Some(HangupReason::Declined), EndReason::LocalDeclined);
        Ok(())
    }

    /// Hangs up the active call in any state (rejecting it if it rings here).
    pub fn hangup(&mut self, call_id: CallId) -> Result<(), CommandError> {
        let call = self.active_mut(call_id)?;
        if call.state == CallState::Ringing {
            self.end(Some(HangupReason::Declined), EndReason::LocalDeclined);
        } else {
            self.end(Some(HangupReason::Normal), EndReason::LocalHangup);
        }
        Ok(())
    }

    /// Ends the call because a step of the driver failed (for example the answer did not open
    /// or its key exchange was invalid). The peer is told with a normal hangup.
    pub fn fail(&mut self, call_id: CallId) -> Result<(), CommandError> {
        self.active_mut(call_id)?;
        self.end(Some(HangupReason::Normal), EndReason::Failed);
        Ok(())
    }

    /// The media path of the call is up (first path, or restored after a loss).
    pub fn path_up(&mut self, call_id: CallId) -> Result<(), CommandError> {
        let call = self.active_mut(call_id)?;
        match call.state {
            CallState::Connecting | CallState::Reconnecting => {
                call.state = CallState::Connected;
                self.out
                    .push_back(Output::Event(Event::Connected { call_id }));
                Ok(())
            }
            CallState::Connected => Ok(()),
            other => Err(CommandError::WrongState(other)),
        }
    }

    /// The media path of the connected call was lost; ICE restarts.
    pub fn path_down(&mut self, now: Instant, call_id: CallId) -> Result<(), CommandError> {
        let reconnect = self.timeouts.reconnect;
        let call = self.active_mut(call_id)?;
        match call.state {
            CallState::Connected => {
                call.state = CallState::Reconnecting;
                call.deadline = now + reconnect;
                self.out
                    .push_back(Output::Event(Event::Reconnecting { call_id }));
                Ok(())
            }
            CallState::Reconnecting | CallState::Connecting => Ok(()),
            other => Err(CommandError::WrongState(other)),
        }
    }

    // ----- inputs -----

    /// Handles a message that `from` sent. Unexpected, late, duplicate and replayed messages are
    /// ignored.
    pub fn handle_signal(&mut self, now: Instant, from: &PeerId, signal: Signal<P>) {
        let call_id = signal.call_id();
        if self.ended.contains(&call_id) {
            debug!(?call_id, "message for an ended call ignored");
            return;
        }
        if let Signal::Offer { call_id, payload } = signal {
            self.handle_offer(now, from, call_id, payload);
            return;
        }
        let connect = self.timeouts.connect;
        let Some(call) = self
            .active
            .as_mut()
            .filter(|c| c.id == call_id && &c.peer == from)
        else {
            debug!(?call_id, "message for no active call ignored");
            return;
        };
        match signal {
            Signal::Offer { .. } => {} // handled above
            Signal::Ringing { .. } => {
                if call.state == CallState::Offering {
                    call.state = CallState::RemoteRinging;
                    self.out
                        .push_back(Output::Event(Event::RemoteRinging { call_id }));
                }
            }
            Signal::Answer { payload, .. } => {
                if call.side == Side::Caller
                    && matches!(call.state, CallState::Offering | CallState::RemoteRinging)
                {
                    info!(?call_id, "answered");
                    call.accepted = true;
                    call.state = CallState::Connecting;
                    call.deadline = now + connect;
                    let held = std::mem::take(&mut call.held_candidates);
                    self.out.push_back(Output::Event(Event::Answered {
                        call_id,
                        answer: payload,
                    }));
                    self.release_candidates(call_id, held);
                }
            }
            Signal::IceCandidates { payload, .. } => {
                if call.accepted {
                    self.out.push_back(Output::Event(Event::RemoteCandidates {
                        call_id,
                        candidates: payload,
                    }));
                } else if call.held_candidates.len() < MAX_HELD_CANDIDATE_BATCHES {
                    call.held_candidates.push(payload);
                }
            }
            Signal::Busy { .. } => {
                if call.side == Side::Caller
                    && matches!(call.state, CallState::Offering | CallState::RemoteRinging)
                {
                    self.end(None, EndReason::RemoteBusy);
                }
            }
            Signal::Hangup { reason, .. } => self.end(None, EndReason::RemoteHangup(reason)),
        }
    }

    /// Fires the active call's timer if `now` has reached it.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(call) = self.active.as_ref() else {
            return;
        };
        if now < call.deadline {
            return;
        }
        let reason = match call.state {
            CallState::Offering | CallState::RemoteRinging | CallState::Ringing => {
                EndReason::RingTimeout
            }
            CallState::Connecting => EndReason::ConnectTimeout,
            CallState::Reconnecting => EndReason::ConnectionLost,
            // Connected has no timer; Ended calls are not active.
            CallState::Connected | CallState::Ended(_) => return,
        };
        info!(call_id = ?call.id, ?reason, "call timed out");
        self.end(Some(HangupReason::Timeout), reason);
    }

    // ----- outputs -----

    /// The next message to send or event to report. Drain until `None` after every input.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output<P>> {
        self.out.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.active
            .as_ref()
            .filter(|c| c.state != CallState::Connected)
            .map(|c| c.deadline)
    }

    // ----- internals -----

    fn handle_offer(&mut self, now: Instant, from: &PeerId, call_id: CallId, offer: P) {
        if let Some(call) = self.active.as_ref() {
            if call.id == call_id {
                return; // duplicate offer
            }
            let glare = call.side == Side::Caller
                && &call.peer == from
                && matches!(call.state, CallState::Offering | CallState::RemoteRinging);
            if glare && call_id < call.id {
                // Our call wins; the peer drops its own by the same rule.
                info!(?call_id, "glare: our call wins, their offer ignored");
                self.remember_ended(call_id);
                return;
            }
            if glare {
                info!(?call_id, "glare: their call wins");
                self.end(None, EndReason::Glare);
                self.ring(now, from, call_id, offer, true);
            } else {
                debug!(?call_id, "offer while in another call: busy");
                self.remember_ended(call_id);
                self.send(from.clone(), Signal::Busy { call_id });
            }
            return;
        }
        self.ring(now, from, call_id, offer, false);
    }

    fn ring(&mut self, now: Instant, from: &PeerId, call_id: CallId, offer: P, glare: bool) {
        info!(?call_id, "incoming call");
        self.active = Some(ActiveCall {
            id: call_id,
            peer: from.clone(),
            side: Side::Callee,
            state: CallState::Ringing,
            deadline: now + self.timeouts.ring,
            held_candidates: Vec::new(),
            accepted: false,
        });
        self.send(from.clone(), Signal::Ringing { call_id });
        self.out.push_back(Output::Event(Event::Incoming {
            call_id,
            peer: from.clone(),
            offer,
            replaces_outgoing: glare,
        }));
    }

    fn active_mut(&mut self, call_id: CallId) -> Result<&mut ActiveCall<P>, CommandError> {
        self.active
            .as_mut()
            .filter(|c| c.id == call_id)
            .ok_or(CommandError::UnknownCall)
    }

    fn release_candidates(&mut self, call_id: CallId, held: Vec<P>) {
        for candidates in held {
            self.out.push_back(Output::Event(Event::RemoteCandidates {
                call_id,
                candidates,
            }));
        }
    }

    /// Ends the active call, telling the peer `tell` if given.
    fn end(&mut self, tell: Option<HangupReason>, reason: EndReason) {
        let Some(call) = self.active.take() else {
            return;
        };
        info!(call_id = ?call.id, ?reason, "call ended");
        if let Some(reason) = tell {
            self.send(
                call.peer,
                Signal::Hangup {
                    call_id: call.id,
                    reason,
                },
            );
        }
        self.remember_ended(call.id);
        self.out.push_back(Output::Event(Event::Ended {
            call_id: call.id,
            reason,
        }));
    }

    fn remember_ended(&mut self, call_id: CallId) {
        if self.ended.len() == MAX_ENDED_REMEMBERED {
            self.ended.pop_front();
        }
        self.ended.push_back(call_id);
    }

    fn send(&mut self, peer: PeerId, signal: Signal<P>) {
        self.out.push_back(Output::Send { peer, signal });
    }
}

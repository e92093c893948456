//! The per-call media task: the ICE connection (`hush-net` driver), the [`MediaPath`] once keys
//! exist, and the Opus codec between PCM and the media engine.

use std::time::Instant;

use hush_crypto::MediaKeys;
use hush_media::codec::{Codec, OpusCodec};
use hush_media::jitter::Playout;
use hush_media::sim::{NetSim, SimConfig, SimPacket};
use hush_media::{Event as MediaEvent, QualityStats, SessionConfig};
use hush_net::driver::Started;
use hush_net::{CandidateKind, ConnectionState, Event as NetEvent, IceCredentials};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::call::{AudioFrame, FrameSource};
use super::Command;
use crate::machine::CallId;
use crate::media_path::MediaPath;

/// Samples in one 20 ms frame of 48 kHz mono audio.
const FRAME_SAMPLES: usize = 960;

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

/// Commands from the actor and the [`Call`](super::Call) handle to the media task.
#[derive(Debug)]
pub(crate) enum MediaCommand {
    /// The call's keys: media may flow from now on.
    Keys(Box<MediaKeys>),
    /// The peer's ICE credentials.
    RemoteCredentials(IceCredentials),
    /// One remote candidate line.
    RemoteCandidate(String),
    /// The peer has sent all its candidates of the current generation.
    RemoteGatheringComplete,
    /// One 20 ms PCM frame to send.
    Audio(Vec<i16>),
    /// Mute or unmute.
    Mute(bool),
    /// Report statistics.
    Stats(oneshot::Sender<(Option<CandidateKind>, MediaStats, Option<QualityStats>)>),
    /// The device's network changed: new sockets and an ICE restart.
    NetworkChanged(oneshot::Sender<Result<(), crate::Error>>),
    /// End: close ICE, destroy keys.
    Stop,
}

/// Media counters of a call.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct MediaStats {
    /// Audio frames encoded and sent.
    pub frames_sent: u64,
    /// Bytes of encoded audio sent (codec output, before RTP, redundancy and SRTP).
    pub audio_bytes_sent: u64,
    /// Audio frames played from a received packet.
    pub frames_received: u64,
    /// Audio frames rebuilt from in-band FEC.
    pub frames_fec: u64,
    /// Audio frames concealed (nothing arrived in time).
    pub frames_concealed: u64,
    /// Datagrams refused by SRTP (forged, corrupted, replayed).
    pub srtp_failures: u64,
    /// Datagrams that arrived before the call's keys existed, dropped unread.
    pub dropped_before_keys: u64,
    /// PCM frames the application offered before media was allowed, dropped unencoded.
    pub unsent_before_keys: u64,
    /// Round-trip time from RTCP, if known.
    pub rtt_ms: Option<f64>,
    /// The congestion controller's target bitrate.
    pub target_bps: u64,
}

/// What the media task needs to start.
pub(crate) struct MediaTask {
    pub(crate) call_id: CallId,
    pub(crate) net: Started,
    pub(crate) commands: mpsc::UnboundedReceiver<MediaCommand>,
    pub(crate) actor: mpsc::UnboundedSender<Command>,
    pub(crate) audio_out: mpsc::Sender<AudioFrame>,
    pub(crate) session: SessionConfig,
    /// Simulated impairments of outgoing datagrams (a test and demo knob), if any.
    pub(crate) send_link: Option<SimConfig>,
}

/// A protected datagram in the simulated send link, sized as on the wire.
#[derive(Clone)]
struct Datagram(Vec<u8>);

impl SimPacket for Datagram {
    fn wire_size(&self) -> usize {
        // IPv4 and UDP headers.
        self.0.len() + 28
    }
}

/// Local candidates (and the end of gathering) taken from the ICE driver in one go.
#[derive(Default)]
struct CandidateBatch {
    lines: Vec<String>,
    complete: bool,
}

struct State {
    path: Option<MediaPath>,
    codec: OpusCodec,
    stats: MediaStats,
    kind: Option<CandidateKind>,
    muted: bool,
    pcm: Vec<i16>,
    encoded: Vec<u8>,
    /// The simulated send link, when impairments are on.
    link: Option<NetSim<Datagram>>,
}

impl MediaTask {
    pub(crate) async fn run(mut self) {
        let codec = match OpusCodec::new(1, 20, 32_000) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "opus codec unavailable");
                let _ = self.actor.send(Command::NetFailed(self.call_id));
                return;
            }
        };
        let mut st = State {
            path: None,
            codec,
            stats: MediaStats::default(),
            kind: None,
            muted: false,
            pcm: Vec::with_capacity(960),
            encoded: Vec::with_capacity(400),
            link: self.send_link.take().map(NetSim::new),
        };
        loop {
            let deadline = [
                st.path.as_ref().and_then(MediaPath::poll_timeout),
                st.link.as_ref().and_then(NetSim::poll_timeout),
            ]
            .into_iter()
            .flatten()
            .min();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                d = self.net.datagrams.recv() => match d {
                    Some(d) => self.on_datagram(&mut st, d),
                    None => break,
                },
                ev = self.net.events.recv() => match ev {
                    Some(ev) => {
                        // Events already queued are taken together, so that the candidates
                        // gathered in one go (and the end of gathering) travel in one
                        // signaling message.
                        let mut batch = CandidateBatch::default();
                        self.on_net_event(&mut st, ev, &mut batch);
                        while let Ok(ev) = self.net.events.try_recv() {
                            self.on_net_event(&mut st, ev, &mut batch);
                        }
                        self.flush_candidates(&mut batch);
                    }
                    None => break,
                },
                c = self.commands.recv() => match c {
                    None | Some(MediaCommand::Stop) => break,
                    Some(c) => self.on_command(&mut st, c).await,
                },
                () = sleep => {
                    // After the task was starved of CPU, the datagrams that arrived meanwhile
                    // go to the jitter buffer before its playout timer runs, or frames that
                    // are here would be concealed.
                    while let Ok(d) = self.net.datagrams.try_recv() {
                        self.on_datagram(&mut st, d);
                    }
                    if let Some(path) = st.path.as_mut() {
                        path.handle_timeout(Instant::now());
                    }
                }
            }
            self.drain(&mut st);
        }
        let _ = self.net.handle.close().await;
        // Dropping the path drops the SRTP contexts, which zeroize their keys.
        drop(st.path.take());
        debug!(call_id = ?self.call_id, "media task ended");
    }

    fn on_datagram(&self, st: &mut State, d: Vec<u8>) {
        match st.path.as_mut() {
            Some(path) => {
                if path.handle_datagram(Instant::now(), d).is_err() {
                    st.stats.srtp_failures = path.stats().unprotect_failures;
                }
            }
            None => st.stats.dropped_before_keys += 1,
        }
    }

    fn on_net_event(&self, st: &mut State, ev: NetEvent, batch: &mut CandidateBatch) {
        match ev {
            NetEvent::LocalCandidate(line) => batch.lines.push(line),
            NetEvent::GatheringComplete => batch.complete = true,
            NetEvent::PathSelected(info) => {
                st.kind = Some(info.kind);
                let _ = self.actor.send(Command::PathUp(self.call_id, info.kind));
            }
            NetEvent::StateChanged(ConnectionState::Disconnected) => {
                let _ = self.actor.send(Command::PathDown(self.call_id));
            }
            NetEvent::Failed(e) => {
                warn!(error = %e, "ICE failed");
                let _ = self.actor.send(Command::NetFailed(self.call_id));
            }
            NetEvent::Restarted { credentials } => {
                // Our side restarted (network change, consent loss, or the peer's restart):
                // the peer needs the new credentials before our new candidates (and after the
                // old generation's).
                self.flush_candidates(batch);
                let _ = self
                    .actor
                    .send(Command::LocalRestart(self.call_id, credentials));
            }
            NetEvent::ServerError(e) => warn!(error = %e, "STUN/TURN server problem"),
            other => debug!(event = ?other, "ICE event"),
        }
    }

    /// Hands the batched local candidates to the actor, to send in one message.
    fn flush_candidates(&self, batch: &mut CandidateBatch) {
        if batch.lines.is_empty() && !batch.complete {
            return;
        }
        let lines = std::mem::take(&mut batch.lines);
        let complete = std::mem::take(&mut batch.complete);
        let _ = self
            .actor
            .send(Command::LocalCandidates(self.call_id, lines, complete));
    }

    async fn on_command(&self, st: &mut State, c: MediaCommand) {
        match c {
            MediaCommand::Keys(keys) => {
                match MediaPath::new(&keys, self.session.clone(), Instant::now()) {
                    // `keys` drops here: the SRTP contexts hold the only copies.
                    Ok(path) => st.path = Some(path),
                    Err(e) => {
                        warn!(error = %e, "could not key the media path");
                        let _ = self.actor.send(Command::NetFailed(self.call_id));
                    }
                }
            }
            MediaCommand::RemoteCredentials(creds) => {
                if let Err(e) = self.net.handle.set_remote_credentials(creds).await {
                    warn!(error = %e, "remote ICE credentials refused");
                }
            }
            MediaCommand::RemoteCandidate(line) => {
                if let Err(e) = self.net.handle.add_remote_candidate(line).await {
                    debug!(error = %e, "remote candidate refused");
                }
            }
            MediaCommand::RemoteGatheringComplete => {
                let _ = self.net.handle.remote_gathering_complete();
            }
            MediaCommand::NetworkChanged(reply) => {
                let r = self.net.handle.network_changed().await;
                if let Err(e) = &r {
                    warn!(error = %e, "could not move the call to the new network");
                }
                let _ = reply.send(r.map(|_| ()).map_err(crate::Error::from));
            }
            MediaCommand::Audio(pcm) => self.send_audio(st, &pcm),
            MediaCommand::Mute(m) => st.muted = m,
            MediaCommand::Stats(reply) => {
                let now = Instant::now();
                let mut quality = None;
                if let Some(path) = st.path.as_mut() {
                    st.stats.srtp_failures = path.stats().unprotect_failures;
                    st.stats.target_bps = path.session().target_bps();
                    st.stats.rtt_ms = path.session().rtt().map(|r| r.as_secs_f64() * 1e3);
                    quality = Some(path.quality(now));
                }
                let _ = reply.send((st.kind, st.stats, quality));
            }
            MediaCommand::Stop => {}
        }
    }

    fn send_audio(&self, st: &mut State, pcm: &[i16]) {
        let Some(path) = st.path.as_mut() else {
            st.stats.unsent_before_keys += 1;
            return;
        };
        if st.muted {
            return;
        }
        st.encoded.clear();
        match st.codec.encode(pcm, &mut st.encoded) {
            Ok(()) => {
                path.send_audio(Instant::now(), &st.encoded);
                st.stats.frames_sent += 1;
                st.stats.audio_bytes_sent += st.encoded.len() as u64;
            }
            Err(e) => debug!(error = %e, "encode failed"),
        }
    }

    fn send_datagram(&self, d: Vec<u8>) {
        if let Err(e) = self.net.handle.send(d) {
            debug!(error = %e, "send failed");
        }
    }

    /// Sends what the path produced (through the simulated link, if any) and plays what it
    /// released.
    fn drain(&self, st: &mut State) {
        let Some(path) = st.path.as_mut() else {
            return;
        };
        let now = Instant::now();
        while let Some(d) = path.poll_datagram() {
            match st.link.as_mut() {
                Some(link) => link.handle_packet(now, Datagram(d)),
                None => self.send_datagram(d),
            }
        }
        if let Some(link) = st.link.as_mut() {
            link.handle_timeout(now);
            while let Some(Datagram(d)) = link.poll_transmit() {
                self.send_datagram(d);
            }
        }
        while let Some(ev) = path.poll_event() {
            match ev {
                MediaEvent::Audio(playout) => {
                    // Filler to build delay: not a frame of the stream.
                    let Some(source) = play(&mut st.codec, playout, &mut st.pcm) else {
                        continue;
                    };
                    match source {
                        FrameSource::Decoded => st.stats.frames_received += 1,
                        FrameSource::Fec => st.stats.frames_fec += 1,
                        FrameSource::Concealed => st.stats.frames_concealed += 1,
                    }
                    // A slow application loses frames rather than stalling the call.
                    let _ = self.audio_out.try_send(AudioFrame {
                        pcm: st.pcm.clone(),
                        source,
                    });
                }
                MediaEvent::EncoderTarget(t) => {
                    st.codec.set_bitrate(t.audio_bps);
                    st.codec.set_fec(t.inband_fec, t.expected_loss_percent);
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use hush_media::codec::{Codec, OpusCodec};
    use hush_media::jitter::{Playout, Recovery};

    use super::{play, FrameSource, FRAME_SAMPLES};

    #[test]
    fn a_refused_packet_still_plays_a_whole_frame() {
        let mut codec = OpusCodec::new(1, 20, 32_000).expect("codec");
        // Code 3 (several frames) with a frame count of zero: invalid (RFC 6716 §3.2.5).
        let bad = vec![0x03, 0x00];
        assert!(codec.decode(&bad, &mut Vec::new()).is_err());
        let mut pcm = Vec::new();
        let frame = Playout::Frame {
            timestamp: 0,
            payload: bad,
            recovery: Recovery::None,
            shorten: std::time::Duration::ZERO,
        };
        assert_eq!(
            play(&mut codec, frame, &mut pcm),
            Some(FrameSource::Concealed)
        );
        assert_eq!(pcm.len(), FRAME_SAMPLES);
        // Filler is not a frame.
        let stretch = Playout::Stretch {
            duration: std::time::Duration::from_millis(5),
        };
        assert_eq!(play(&mut codec, stretch, &mut pcm), None);
    }
}

//! How the audio sender protects against loss, and how long the receiver waits for repairs.
//!
//! Protection is RTT-aware. When a retransmission (NACK/RTX) can arrive within the playout
//! delay the receiver is willing to add for it ([`SessionConfig::audio_nack_max_rtt`]), lost
//! frames are repaired by retransmission and the encoder spends no bits on redundancy: RED and
//! Opus in-band FEC (LBRR) both take bits from the primary encoding, which costs quality on
//! every frame to protect a few. Only the loss retransmission cannot repair (the residual after
//! the attempts that fit, or all of it when the round trip is too long) is protected, with RED
//! depth and in-band FEC sized to it.
//!
//! [`SessionConfig::audio_nack_max_rtt`]: super::SessionConfig::audio_nack_max_rtt

use std::time::Duration;

/// Residual loss below this needs no protection. WB-PESQ is sensitive to lost frames: silencing
/// 1 % of the frames of a clean call's espeak-ng speech took its score from 4.01 to 3.14 (see
/// docs/benchmarks.md).
const NEGLIGIBLE_LOSS: f64 = 0.005;
/// Slack on top of the round trips: the NACK goes out when the next packet shows the gap,
/// one frame after the loss, plus the sender's and receiver's scheduling.
pub(crate) const REPAIR_MARGIN: Duration = Duration::from_millis(10);
/// Measured loss above which the receiver waits for a second retransmission, when it fits.
const SECOND_ATTEMPT_LOSS: f64 = 0.05;

/// What the audio sender spends on protection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AudioProtection {
    /// Redundant frames in each RED packet (0: none).
    pub(crate) red_distance: usize,
    /// Opus in-band FEC (LBRR) on.
    pub(crate) inband_fec: bool,
    /// The loss the encoder's in-band FEC should protect against, in percent (0 when off).
    pub(crate) expected_loss_percent: u8,
}

/// How many retransmissions of one lost frame can arrive in time: each costs one round trip,
/// and all must fit within `max_rtt` (the most delay the receiver adds for repairs, after the
/// frame time and a margin). None when the round trip itself is over `max_rtt`; a second one
/// only when loss is high enough that a lost retransmission is likely.
pub(crate) fn retransmission_attempts(
    loss: f64,
    rtt: Duration,
    frame: Duration,
    max_rtt: Duration,
) -> u32 {
    if rtt > max_rtt {
        return 0;
    }
    let budget = max_rtt.saturating_sub(frame + REPAIR_MARGIN);
    let fit = if rtt.is_zero() {
        2
    } else {
        (budget.as_secs_f64() / rtt.as_secs_f64()).floor() as u32
    };
    if loss > SECOND_ATTEMPT_LOSS {
        fit.clamp(1, 2)
    } else {
        1
    }
}

/// Longest loss burst (in frames) the receiver waits out before asking for retransmissions.
pub(crate) const MAX_BURST_FRAMES: usize = 8;

/// The extra playout delay the receiver holds while it sees loss: enough for `attempts`
/// retransmissions, or for the last redundant copy of a frame (RED `red_depth` frames later, or
/// the next packet's in-band FEC) to arrive. A lost frame is noticed only when the next packet
/// arrives: after the burst it was part of (`burst`, the longest recent run of lost packets),
/// or after its RED copies. A retransmission waits for that packet and then travels itself,
/// so it meets the path's jitter (`jitter`, its p95) twice where the original met it once:
/// once more is added.
///
/// Attempts after the first go one `retry_interval` apart (the NACK scheduler's
/// [`retry_interval`](crate::nack::NackScheduler::retry_interval)): a round trip on a long
/// path, but on a path shorter than the scheduler's shortest interval the wait for a second
/// attempt is that interval. Counting a round trip per attempt there held room for the first
/// attempt only, and every lost NACK or retransmission was a concealed frame.
pub(crate) fn repair_delay(
    attempts: u32,
    rtt: Duration,
    retry_interval: Duration,
    frame: Duration,
    red_depth: usize,
    burst: usize,
    jitter: Duration,
) -> Duration {
    let noticed = frame * (red_depth + 1).max(burst.min(MAX_BURST_FRAMES)) as u32;
    if attempts == 0 {
        frame * red_depth.max(1) as u32 + REPAIR_MARGIN
    } else {
        retry_interval.max(rtt) * (attempts - 1) + rtt + noticed + REPAIR_MARGIN + jitter
    }
}

/// The loss a receiver plans its repairs for while it has measured none yet (the session's
/// start): enough for a second retransmission attempt when it fits.
pub(crate) const STARTUP_PRESUMED_LOSS: f64 = 0.10;

/// Measured loss above which each audio retransmission is sent twice.
const DOUBLE_RTX_LOSS: f64 = 0.10;

/// Measured loss above which each video retransmission is sent twice.
pub(crate) const VIDEO_DOUBLE_RTX_LOSS: f64 = 0.05;

/// How many copies of each audio retransmission to send on a path losing `loss`.
pub(crate) fn rtx_copies(loss: f64) -> u32 {
    if loss > DOUBLE_RTX_LOSS {
        2
    } else {
        1
    }
}

/// The share of frames lost for good after `attempts` retransmissions on a path losing `loss`
/// both ways: an attempt fails if both copies of its NACK (the first and its repeat) are lost,
/// or every copy of the retransmission is.
pub(crate) fn residual_loss(loss: f64, attempts: u32) -> f64 {
    let rtx_lost = loss.powi(rtx_copies(loss) as i32);
    let attempt_fails = 1.0 - (1.0 - loss * loss) * (1.0 - rtx_lost);
    loss * attempt_fails.powi(attempts as i32)
}

/// Protection for audio sent over a path with this loss fraction and round-trip time, given
/// the receiver's repair budget `nack_max_rtt` (see the [module docs](self)).
pub(crate) fn audio_protection(
    loss: f64,
    rtt: Duration,
    frame: Duration,
    nack_max_rtt: Duration,
) -> AudioProtection {
    let loss = loss.clamp(0.0, 1.0);
    let attempts = retransmission_attempts(loss, rtt, frame, nack_max_rtt);
    let residual = residual_loss(loss, attempts);
    if residual < NEGLIGIBLE_LOSS {
        return AudioProtection {
            red_distance: 0,
            inband_fec: false,
            expected_loss_percent: 0,
        };
    }
    // RED copies whole frames: each one recovers a loss exactly, at the cost of the bitrate
    // of a frame; LBRR is a cheaper, coarser copy of the previous frame only.
    let red_distance = if attempts > 0 {
        0
    } else if residual > 0.08 {
        2
    } else {
        1
    };
    AudioProtection {
        red_distance,
        inband_fec: true,
        expected_loss_percent: (residual * 100.0).round().clamp(1.0, 100.0) as u8,
    }
}

/// Most the audio encoder is given, in bits per second.
pub(crate) const AUDIO_MAX_BPS: f64 = 32_000.0;
/// Bits each audio packet costs on the wire beyond its Opus bytes: IPv4/UDP and the SRTP tag
/// ([`WIRE_OVERHEAD`](super::WIRE_OVERHEAD)), the RTP header, the transport-wide-CC extension
/// and the RED header.
pub(crate) const AUDIO_PACKET_BITS: f64 = ((12 + 8 + 1 + super::WIRE_OVERHEAD) * 8) as f64;
/// How much encoder rate longer packets must win before the sender makes its packets longer.
const PACKETIZATION_GAIN_BPS: f64 = 3_000.0;
/// ... or this share of the best encoder rate, if that is less.
const PACKETIZATION_GAIN_SHARE: f64 = 0.12;

/// How many audio frames of `frame` each go in one packet, given `share_bps` for the audio on
/// the wire (headers included) sent `copies` times (RED), at most `max_frames`, `current` now.
///
/// Each packet costs [`AUDIO_PACKET_BITS`] of headers: 26 kbps at one 20 ms frame per packet,
/// more than a 24 kbps link carries. Packets stay one frame long while that leaves the encoder
/// its full rate ([`AUDIO_MAX_BPS`]), since every frame more in a packet adds a frame of
/// delay. Otherwise they grow to the shortest length whose encoder rate is within
/// [`PACKETIZATION_GAIN_BPS`] (or [`PACKETIZATION_GAIN_SHARE`] of it, if less) of what the
/// longest allowed gives; they shrink again only once
/// the shorter length gets the full rate (hysteresis: no flapping on a steady estimate).
pub(crate) fn frames_per_packet(
    share_bps: f64,
    copies: f64,
    frame: Duration,
    max_frames: usize,
    current: usize,
) -> usize {
    let max_frames = max_frames.max(1);
    let current = current.clamp(1, max_frames);
    let frame_secs = frame.as_secs_f64().max(0.001);
    let audio = |n: usize| {
        let headers = AUDIO_PACKET_BITS / (frame_secs * n as f64);
        ((share_bps - headers) / copies.max(1.0)).min(AUDIO_MAX_BPS)
    };
    if let Some(n) = (1..current).find(|&n| audio(n) >= AUDIO_MAX_BPS) {
        return n;
    }
    let best = audio(max_frames);
    // At a low rate a few kbps are a large share of the encoder's bits: on a 24 kbps link,
    // 120 ms packets leave it 13.7 kbps where 80 ms leave 11.5.
    let gain = PACKETIZATION_GAIN_BPS.min(PACKETIZATION_GAIN_SHARE * best.max(0.0));
    if audio(current) >= best - gain {
        return current;
    }
    (current..=max_frames)
        .find(|&n| audio(n) >= best - gain)
        .unwrap_or(max_frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: Duration = Duration::from_millis(20);
    const MAX_RTT: Duration = Duration::from_millis(250);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn packets_grow_only_when_headers_starve_the_encoder() {
        // Unlimited, or enough for 32 kbps of Opus plus 26 kbps of headers: 20 ms packets.
        assert_eq!(frames_per_packet(300_000.0, 1.0, FRAME, 3, 1), 1);
        assert_eq!(frames_per_packet(60_000.0, 1.0, FRAME, 3, 1), 1);
        // A 64 kbps link (about 50 kbps for the audio): 20 ms packets leave 24 kbps, 40 ms
        // the full 32.
        assert_eq!(frames_per_packet(50_000.0, 1.0, FRAME, 3, 1), 2);
        // A 24 kbps link: 20 ms packets cannot even carry their headers; 60 ms leave 13 kbps.
        assert_eq!(frames_per_packet(22_000.0, 1.0, FRAME, 3, 1), 3);
        // Never past the longest allowed.
        assert_eq!(frames_per_packet(22_000.0, 1.0, FRAME, 2, 1), 2);
        assert_eq!(frames_per_packet(22_000.0, 1.0, FRAME, 1, 1), 1);
        // RED copies count: 50 kbps for two copies leaves 12 kbps a copy at 20 ms, 18.5 at
        // 40 ms.
        assert_eq!(frames_per_packet(50_000.0, 2.0, FRAME, 3, 1), 2);
    }

    #[test]
    fn slow_links_take_the_longest_packets_that_still_pay() {
        // 22 kbps for the audio, packets up to 120 ms: 80 ms leave the encoder 15.5 kbps,
        // 100 ms 16.7 and 120 ms 17.7; within 12 % of the best, 100 ms.
        assert_eq!(frames_per_packet(22_000.0, 1.0, FRAME, 6, 1), 5);
        // 10 kbps: 120 ms (5.7 kbps) against 100 ms (4.8): the longest.
        assert_eq!(frames_per_packet(10_000.0, 1.0, FRAME, 6, 1), 6);
        // A 64 kbps link still gets 40 ms packets, which carry the full rate.
        assert_eq!(frames_per_packet(50_000.0, 1.0, FRAME, 6, 1), 2);
    }

    #[test]
    fn packet_length_holds_near_the_boundary() {
        // 57 kbps: 20 ms packets leave 31 kbps, 40 ms the full 32. Once at 40 ms the sender
        // stays there (shorter packets would cut the encoder), and at 20 ms it stays too
        // (within the gain threshold): a steady estimate near the boundary does not flap.
        assert_eq!(frames_per_packet(57_000.0, 1.0, FRAME, 3, 2), 2);
        assert_eq!(frames_per_packet(57_000.0, 1.0, FRAME, 3, 1), 1);
        // Back to 20 ms once they carry the full rate.
        assert_eq!(frames_per_packet(59_000.0, 1.0, FRAME, 3, 2), 1);
        assert_eq!(frames_per_packet(59_000.0, 1.0, FRAME, 3, 3), 1);
        // From 60 to 40 ms when 40 ms carries the full rate, not before.
        assert_eq!(frames_per_packet(46_000.0, 1.0, FRAME, 3, 3), 2);
        assert_eq!(frames_per_packet(40_000.0, 1.0, FRAME, 3, 3), 3);
    }

    #[test]
    fn repairable_loss_costs_no_encoder_bits() {
        // 5 %, 10 % and 20 % random loss at a loopback-like, a LAN and a 100 ms round trip:
        // NACK repairs it in time, so no RED and no in-band FEC (the old policy sent RED depth
        // 2 and LBRR from 8 % loss on, whatever the RTT).
        for loss in [0.05, 0.10, 0.20] {
            for rtt in [ms(2), ms(20), ms(100)] {
                let p = audio_protection(loss, rtt, FRAME, MAX_RTT);
                assert_eq!(
                    p,
                    AudioProtection {
                        red_distance: 0,
                        inband_fec: false,
                        expected_loss_percent: 0
                    },
                    "loss {loss}, rtt {rtt:?}"
                );
            }
        }
    }

    #[test]
    fn unrepairable_loss_is_protected_in_proportion() {
        // 300 ms round trip: no retransmission fits; protection grows with the loss.
        let light = audio_protection(0.03, ms(300), FRAME, MAX_RTT);
        assert_eq!((light.red_distance, light.inband_fec), (1, true));
        assert_eq!(light.expected_loss_percent, 3);
        let heavy = audio_protection(0.20, ms(300), FRAME, MAX_RTT);
        assert_eq!((heavy.red_distance, heavy.inband_fec), (2, true));
        assert_eq!(heavy.expected_loss_percent, 20);
        // Negligible loss gets nothing, even then.
        let none = audio_protection(0.004, ms(300), FRAME, MAX_RTT);
        assert!(!none.inband_fec && none.red_distance == 0);
    }

    #[test]
    fn only_the_residual_after_retransmission_is_protected() {
        // 200 ms round trip: one retransmission fits, not two; at 20 % loss an attempt fails
        // when both RTX copies or both NACKs are lost (7.8 %), so 1.6 % of frames are lost for
        // good, and LBRR (no RED) is sized to that.
        assert_eq!(retransmission_attempts(0.2, ms(200), FRAME, MAX_RTT), 1);
        assert_eq!(rtx_copies(0.2), 2);
        assert!((residual_loss(0.2, 1) - 0.01568).abs() < 1e-9);
        let p = audio_protection(0.20, ms(200), FRAME, MAX_RTT);
        assert_eq!(p.red_distance, 0);
        assert!(p.inband_fec);
        assert_eq!(p.expected_loss_percent, 2);
        // At 100 ms two attempts fit: 0.12 % left at 20 % loss and 0.04 % at 10 %: nothing
        // more to protect.
        for loss in [0.10, 0.20] {
            let p = audio_protection(loss, ms(100), FRAME, MAX_RTT);
            assert!(!p.inband_fec && p.red_distance == 0, "{loss}: {p:?}");
        }
    }

    #[test]
    fn the_room_held_covers_the_second_attempt_the_nack_scheduler_sends() {
        use crate::nack::NackScheduler;
        // Packet 2 is lost: due at t0 + 20 ms, noticed when packet 3 arrives a frame later.
        // Whatever the round trip, the retransmission answering the scheduler's second
        // attempt (and its repeat of the first NACK) must arrive within the room held.
        for rtt_ms in [1, 5, 15, 40, 100] {
            let rtt = ms(rtt_ms);
            let mut nack = NackScheduler::default();
            let t0 = crate::Instant::now();
            let due = t0 + FRAME;
            nack.on_packet(t0, 1);
            nack.on_packet(due + FRAME, 3);
            let mut sent = Vec::new();
            for step in 0..1000 {
                let now = due + FRAME + ms(step);
                if nack.poll_nacks(now, rtt).contains(&2) {
                    sent.push(now);
                }
            }
            let second = sent[0] + nack.retry_interval(rtt);
            let attempts: Vec<_> = sent.iter().filter(|&&t| t <= second).collect();
            assert!(attempts.len() >= 2, "{rtt_ms} ms: {sent:?}");
            let room = repair_delay(2, rtt, nack.retry_interval(rtt), FRAME, 0, 1, ms(0));
            let last = **attempts.last().expect("two attempts") + rtt;
            assert!(
                last <= due + room - REPAIR_MARGIN,
                "{rtt_ms} ms: the second attempt lands {:?} after the frame was due, \
                 room {room:?}",
                last - due
            );
        }
    }

    #[test]
    fn receiver_waits_for_what_can_repair() {
        // Two attempts at high loss when they fit, one otherwise, none past the budget.
        assert_eq!(retransmission_attempts(0.1, ms(100), FRAME, MAX_RTT), 2);
        assert_eq!(retransmission_attempts(0.02, ms(100), FRAME, MAX_RTT), 1);
        assert_eq!(retransmission_attempts(0.1, ms(300), FRAME, MAX_RTT), 0);
        assert_eq!(
            repair_delay(2, ms(100), ms(100), FRAME, 0, 1, ms(0)),
            ms(230)
        );
        assert_eq!(repair_delay(1, ms(40), ms(40), FRAME, 0, 1, ms(5)), ms(75));
        // A burst of 6 is noticed when the packet after it arrives, 6 frames after its first.
        assert_eq!(repair_delay(1, ms(40), ms(40), FRAME, 0, 6, ms(5)), ms(175));
        // Without retransmission: until the last RED copy (or the next packet's LBRR) is here.
        assert_eq!(
            repair_delay(0, ms(300), ms(300), FRAME, 2, 1, ms(5)),
            ms(50)
        );
        assert_eq!(
            repair_delay(0, ms(300), ms(300), FRAME, 0, 6, ms(5)),
            ms(30)
        );
        // A 1 ms path with a 20 ms retry interval: the second attempt is asked for 20 ms after
        // the first and travels 1 ms.
        assert_eq!(repair_delay(2, ms(1), ms(20), FRAME, 0, 1, ms(0)), ms(51));
    }
}

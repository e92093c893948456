use std::time::Duration;

use crate::sim::{CallConfig, CallSim, LossModel, SimConfig};
use crate::Event;
use crate::Instant;

/// A call with video over [`lossy`] links, 20 ms each way.
fn video_call(loss: LossModel) -> CallSim {
    let mut config = lossy(loss, 20);
    config.video = true;
    CallSim::new(config, Instant::now())
}

fn lossy(loss: LossModel, one_way_ms: u64) -> CallConfig {
    let link = |seed| SimConfig {
        seed,
        delay: Duration::from_millis(one_way_ms),
        loss,
        ..SimConfig::default()
    };
    CallConfig {
        a_to_b: link(11),
        b_to_a: link(12),
        ..CallConfig::default()
    }
}

#[test]
fn clean_path_plays_every_frame() {
    let mut call = CallSim::new(lossy(LossModel::None, 20), Instant::now());
    call.run_until(Duration::from_secs(10));
    let m = call.metrics();
    assert_eq!(m.concealed + m.fec, 0, "{m:?}");
    assert!(m.played_original >= 490);
    let rtt = call.a.rtt().unwrap();
    assert!((rtt.as_secs_f64() - 0.040).abs() < 0.002, "{rtt:?}");
}

#[test]
fn ten_percent_loss_recovers_99_percent() {
    let mut call = CallSim::new(lossy(LossModel::Random(0.10), 20), Instant::now());
    call.run_until(Duration::from_secs(60));
    let m = call.metrics();
    assert!(
        m.played_fraction() >= 0.99,
        "{:.4} {m:?}",
        m.played_fraction()
    );
    assert!(m.played_rtx + m.played_red > 0);
}

#[test]
fn twenty_percent_loss_recovers_95_percent() {
    let mut call = CallSim::new(lossy(LossModel::Random(0.20), 20), Instant::now());
    call.run_until(Duration::from_secs(60));
    let m = call.metrics();
    assert!(m.played_fraction() >= 0.95, "{:.4}", m.played_fraction());
}

#[test]
fn stats_snapshot_reflects_loss() {
    // 60 s: with RED depth 2 covering most single and double losses, NACKs go out only for
    // the rarer runs of three, a few per minute at 10 % random loss.
    let mut call = CallSim::new(lossy(LossModel::Random(0.10), 20), Instant::now());
    call.run_until(Duration::from_secs(60));
    let now = call.now();
    let s = call.b.stats(now);
    assert!((0.07..0.13).contains(&s.loss_before_recovery), "{s:?}");
    assert!(s.loss_after_recovery < 0.01, "{s:?}");
    assert!(s.nacks_sent > 0 && s.rtt.is_some(), "{s:?}");
    assert!(call.a.stats(now).retransmissions_sent > 0);
    assert!(s
        .to_prometheus("")
        .contains("hush_media_frames_played_total"));
}

#[test]
fn jitter_without_reorder_adds_at_most_one_and_a_half_p95() {
    let jitter = crate::sim::Jitter::Exponential(Duration::from_millis(20));
    let config = CallConfig {
        a_to_b: SimConfig {
            seed: 5,
            delay: Duration::from_millis(30),
            jitter,
            ..SimConfig::default()
        },
        ..CallConfig::default()
    };
    let mut call = CallSim::new(config, Instant::now());
    call.run_until(Duration::from_secs(60));
    let m = call.metrics();
    // After the startup room (STARTUP_GUARD, then time compression) is gone: 5 s of frames.
    let ratio = m.added_delay_mean_from(250) / jitter.p95().as_secs_f64();
    assert!(ratio <= 1.5, "{ratio}");
}

/// One timeline sample: (time, A's target, max one-way delay A→B, video bps asked for).
type Sample = (Duration, u64, Duration, u32);

/// A call with video whose A→B cap follows `steps` (from time, bps); returns the timeline.
fn stepped_call(steps: &[(u64, u64)], end: u64, one_way_ms: u64, seed: u64) -> Vec<Sample> {
    stepped_call_queue(steps, end, one_way_ms, seed, 100_000)
}

/// [`stepped_call`] with a bottleneck queue of `queue_bytes`.
fn stepped_call_queue(
    steps: &[(u64, u64)],
    end: u64,
    one_way_ms: u64,
    seed: u64,
    queue_bytes: usize,
) -> Vec<Sample> {
    let cap = |bps| SimConfig {
        seed,
        delay: Duration::from_millis(one_way_ms),
        rate_bps: Some(bps),
        queue_bytes,
        ..SimConfig::default()
    };
    let config = CallConfig {
        a_to_b: cap(steps[0].1),
        b_to_a: SimConfig {
            seed: seed + 1,
            delay: Duration::from_millis(one_way_ms),
            ..SimConfig::default()
        },
        video: true,
        ..CallConfig::default()
    };
    let mut call = CallSim::new(config, Instant::now());
    for w in steps.windows(2) {
        call.run_until(Duration::from_secs(w[1].0));
        call.ab.set_rate(Some(w[1].1));
    }
    call.run_until(Duration::from_secs(end));
    call.metrics().timeline.clone()
}

fn between(tl: &[Sample], a: f64, b: f64) -> impl Iterator<Item = &Sample> {
    tl.iter()
        .filter(move |s| s.0.as_secs_f64() >= a && s.0.as_secs_f64() < b)
}

/// Asserts that from `step + 5 s` until `until`, the target stays within 20 % of `cap` and
/// the queueing delay (one-way delay above `base`) under 80 ms: the convergence
/// targets (one-way delay under 100 ms on its 20 ms path), held, not just touched.
fn assert_settled(tl: &[Sample], base: Duration, step: f64, until: f64, cap: u64) {
    let cap = cap as f64;
    for s in between(tl, step + 5.0, until) {
        let t = s.0.as_secs_f64();
        assert!(
            (s.1 as f64 - cap).abs() <= 0.2 * cap,
            "target {} at {t:.1} s, cap {cap} since {step} s",
            s.1
        );
        assert!(
            s.2 < base + Duration::from_millis(80),
            "one-way delay {:?} at {t:.1} s, cap {cap} since {step} s",
            s.2
        );
    }
}

#[test]
fn bandwidth_drop_and_recovery() {
    // The scenario: 1 Mbps → 150 kbps at 20 s → 1 Mbps at 40 s.
    let tl = stepped_call(&[(0, 1_000_000), (20, 150_000), (40, 1_000_000)], 60, 20, 9);
    let base = Duration::from_millis(20);
    assert_settled(&tl, base, 0.0, 20.0, 1_000_000);
    assert_settled(&tl, base, 20.0, 40.0, 150_000);
    assert_settled(&tl, base, 40.0, 60.0, 1_000_000);
    // Within a second of the drop the estimate is already within 20 %, and video pauses
    // (audio-only fallback) until the cap is lifted.
    assert!(between(&tl, 21.0, 40.0).all(|s| (120_000..=180_000).contains(&s.1)));
    assert!(between(&tl, 21.0, 40.0).all(|s| s.3 == 0));
    assert!(between(&tl, 45.0, 60.0).all(|s| s.3 > 0));
}

#[test]
fn bandwidth_drop_converges_on_a_longer_path() {
    // Another shape: 600 kbps → 200 kbps → 800 kbps, 50 ms one way (RTT 100 ms).
    let tl = stepped_call(&[(0, 600_000), (15, 200_000), (35, 800_000)], 55, 50, 21);
    let base = Duration::from_millis(50);
    assert_settled(&tl, base, 0.0, 15.0, 600_000);
    assert_settled(&tl, base, 15.0, 35.0, 200_000);
    assert_settled(&tl, base, 35.0, 55.0, 800_000);
}

#[test]
fn shallow_queue_overflow_does_not_sink_the_estimate() {
    // A 15 kB bottleneck queue: after the drop it overflows and drops packets (loss well over
    // 10 %). The loss-based rate must not take the estimate far below what the path delivers.
    let tl = stepped_call_queue(&[(0, 1_000_000), (20, 150_000)], 40, 20, 9, 15_000);
    assert_settled(&tl, Duration::from_millis(20), 20.0, 40.0, 150_000);
}

#[test]
fn real_loss_makes_room_for_retransmissions() {
    let mut call = CallSim::new(lossy(LossModel::Random(0.10), 20), Instant::now());
    call.run_until(Duration::from_secs(10));
    let now = call.now();
    let s = call.b.stats(now);
    // RTT 40 ms + one frame + margin on top of a jitter-free path.
    assert!(s.playout_delay >= Duration::from_millis(60), "{s:?}");
}

/// Video at 10 % random loss both ways on a 40 ms path: retransmissions repair it, so frames
/// come out whole and the receiver does not fall back to keyframe requests. The encoder's
/// share leaves room for the retransmissions (`RTX_RESERVE_PER_LOSS`); when it filled the
/// estimate, the retransmission budget was empty and frames were lost to the gap timeout.
#[test]
fn video_loss_is_repaired_by_retransmissions() {
    let mut call = video_call(LossModel::Random(0.10));
    call.run_until(Duration::from_secs(15));
    let m = call.metrics();
    let target = call.a.encoder_target().expect("a target");
    assert!(target.video_bps > 300_000, "{target:?}");
    // The last frames sent may still be on their way.
    assert!(
        m.video_frames_received + 3 >= m.video_frames_sent,
        "{} of {} frames, {} keyframe requests",
        m.video_frames_received,
        m.video_frames_sent,
        m.keyframe_requests
    );
    assert!(m.keyframe_requests <= 2, "{m:?}");
}

/// Each sender report counts its own stream's packets and payload octets (RFC 3550 §6.4.1):
/// the audio's leaves out the retransmissions (sent on their own SSRC) and the video.
#[test]
fn sender_reports_count_only_their_own_streams_packets() {
    use crate::rtcp::{parse_compound, RtcpPacket};
    use crate::session::{MediaSession, SessionConfig};
    use crate::TransmitKind;

    let t0 = Instant::now();
    let config = SessionConfig::default().with_h264_video();
    let mut a = MediaSession::new(config.clone(), t0);
    let (audio, video) = (
        config.local_audio.ssrc,
        config.local_video.expect("video").ssrc,
    );
    let mut audio_seqs = Vec::new();
    let mut audio_octets = 0;
    for n in 0..20u32 {
        let now = t0 + Duration::from_millis(u64::from(n) * 20);
        a.send_audio(now, &[0x11; 40], None);
        if n % 2 == 0 {
            a.send_video(now, &[0, 0, 0, 1, 0x65, 0x22, 0x33], true);
        }
        while let Some(t) = a.poll_transmit() {
            if let Ok(p) = crate::rtp::RtpPacket::parse(&t.data) {
                if p.header.ssrc == audio {
                    audio_seqs.push(p.header.sequence_number);
                    audio_octets += p.payload.len() as u32;
                }
            }
        }
    }
    assert_eq!(audio_seqs.len(), 20);
    let now = t0 + Duration::from_millis(500);
    // Both streams lose packets and resend them.
    a.on_nack(now, audio, &audio_seqs[..4]);
    let sent = |a: &mut MediaSession| {
        let mut rtp = 0;
        while let Some(t) = a.poll_transmit() {
            rtp += usize::from(t.kind == TransmitKind::Rtp);
        }
        rtp
    };
    assert!(sent(&mut a) >= 4, "audio retransmissions went");
    a.send_report(now);
    let mut reports = Vec::new();
    while let Some(t) = a.poll_transmit() {
        if t.kind == TransmitKind::Rtcp {
            reports.extend(parse_compound(&t.data).expect("our own RTCP"));
        }
    }
    let counts = |ssrc: u32| {
        reports.iter().find_map(|p| match p {
            RtcpPacket::SenderReport(sr) if sr.ssrc == ssrc => {
                Some((sr.packet_count, sr.octet_count))
            }
            _ => None,
        })
    };
    assert_eq!(counts(audio), Some((20, audio_octets)), "{reports:?}");
    let (video_packets, _) = counts(video).expect("a video report");
    assert_eq!(video_packets, 10);
}

/// The receiver's video playout is told what one repair takes once loss shows (a round
/// trip, the wait for a repeated NACK, a margin: 70 ms on a 40 ms path), and nothing on a
/// clean path, so there its pictures are shown the moment they are complete.
#[test]
fn video_repair_room_follows_the_loss_seen() {
    for (model, lossy_path) in [(LossModel::None, false), (LossModel::Random(0.10), true)] {
        let mut call = video_call(model);
        call.run_until(Duration::from_secs(3));
        let room = call.b.video_repair_room(call.now());
        if lossy_path {
            assert!(
                room >= Duration::from_millis(65) && room <= Duration::from_millis(85),
                "{room:?}"
            );
        } else {
            assert_eq!(room, Duration::ZERO);
        }
    }
}

/// On a path losing more than 5 %, each video retransmission goes twice (a failed attempt
/// costs a round trip more, past the 150 ms a frozen picture is counted from); on a clean
/// path once.
#[test]
fn video_retransmissions_go_twice_on_a_lossy_path() {
    let mut call = video_call(LossModel::None);
    let mut at = Duration::from_secs(2);
    call.run_until(at);
    let mut answers = Vec::new();
    for loss in [0.0, 0.12] {
        call.a.remote_loss_smoothed = loss;
        // One small frame, one packet.
        answers.push(video_rtx_answering_a_nack(&mut call, 300, 1));
        at += Duration::from_millis(500);
        call.run_until(at);
    }
    assert_eq!(answers, [1, 2]);
}

/// Sends one video frame of `size` bytes from `call.a` now, NACKs its first `nacked` packets
/// at once and returns how many RTX packets answered.
fn video_rtx_answering_a_nack(call: &mut CallSim, size: usize, nacked: usize) -> usize {
    use crate::rtp::RtpPacket;
    let video = call.a.config().local_video.expect("video stream");
    let now = call.now();
    while call.a.poll_transmit().is_some() {}
    call.a.send_video(now, &vec![0x55; size], false);
    let mut seqs = Vec::new();
    while let Some(t) = call.a.poll_transmit() {
        if let Ok(p) = RtpPacket::parse(&t.data) {
            if p.header.ssrc == video.ssrc {
                seqs.push(p.header.sequence_number);
            }
        }
    }
    assert!(seqs.len() >= nacked, "{} packets", seqs.len());
    call.a.on_nack(now, video.ssrc, &seqs[..nacked]);
    let mut rtx = 0;
    while let Some(t) = call.a.poll_transmit() {
        if let Ok(p) = RtpPacket::parse(&t.data) {
            rtx += usize::from(p.header.ssrc == video.rtx_ssrc);
        }
    }
    rtx
}

/// Video repairs go twice from the call's first moment (before any loss report, as audio's)
/// and as soon as the latest report is over 5 %, not only once the smoothed loss is (at 10 %
/// loss that took 5–6 s, and single repairs lost again froze the picture meanwhile).
#[test]
fn video_retransmissions_go_twice_before_the_smoothed_loss_says_so() {
    let mut call = video_call(LossModel::None);
    call.run_until(Duration::from_millis(300));
    let at_start = video_rtx_answering_a_nack(&mut call, 300, 1);
    let mut at = Duration::from_secs(3);
    call.run_until(at);
    let mut answers = vec![at_start];
    for (smoothed, latest) in [(0.0, 0.0), (0.02, 0.12), (0.12, 0.0)] {
        call.a.remote_loss_smoothed = smoothed;
        call.a.remote_loss = latest;
        answers.push(video_rtx_answering_a_nack(&mut call, 300, 1));
        at += Duration::from_millis(300);
        call.run_until(at);
    }
    assert_eq!(answers, [2, 1, 2, 2]);
}

/// On a path losing 10 %, video repairs go twice whatever the peer's latest reports say:
/// they count its audio only (25 packets a report), and read 0 to 4 % at times.
#[test]
fn video_retransmissions_go_twice_while_the_transport_feedback_shows_loss() {
    let mut call = video_call(LossModel::Random(0.10));
    call.run_until(Duration::from_secs(3));
    let loss = call.a.cc.loss_fraction();
    assert!(loss > 0.05, "transport loss {loss}");
    call.a.remote_loss_smoothed = 0.04;
    call.a.remote_loss = 0.0;
    assert_eq!(video_rtx_answering_a_nack(&mut call, 300, 1), 2);
}

/// The frame waiting for a missing packet is not given up while the NACK schedule's third
/// attempt can still come back: at 40 ms RTT that is the first NACK and two retries 60 ms
/// apart, each repeated 20 ms later if lost, answered a round trip later, plus the
/// scheduling of both ends. The limit was max(3 × RTT, 200 ms), and a third attempt's answer
/// arriving 1 ms after it (under load) cost a keyframe and a 0.34 s freeze
/// (docs/benchmarks.md, issue 14's fourteenth round).
#[test]
fn a_repair_after_three_attempts_is_waited_for() {
    use crate::rtp::RtpPacket;
    let mut call = video_call(LossModel::None);
    call.run_until(Duration::from_secs(2));
    let video = call.a.config().local_video.expect("video stream");
    let start = call.now();
    while call.a.poll_transmit().is_some() {}
    call.a.send_video(start, &vec![0x55; 3000], true);
    let mut packets = Vec::new();
    while let Some(t) = call.a.poll_transmit() {
        if RtpPacket::parse(&t.data).is_ok_and(|p| p.header.ssrc == video.ssrc) {
            packets.push(t.data);
        }
    }
    assert!(packets.len() >= 3, "{} packets", packets.len());
    let held = packets.remove(1);
    let before = call.b.video_repair();
    let at = |ms: u64| start + Duration::from_millis(ms);
    for p in &packets {
        call.b.handle_packet(at(20), p).expect("video packet");
    }
    // B's NACKs (and everything else it sends) are lost; the packet comes at last 220 ms
    // after the gap showed.
    for ms in 21..=240 {
        call.b.handle_timeout(at(ms));
        while call.b.poll_transmit().is_some() {}
    }
    call.b.handle_packet(at(240), &held).expect("video packet");
    call.b.handle_timeout(at(241));
    let after = call.b.video_repair();
    assert_eq!(after.gap_timeouts, before.gap_timeouts, "{after:?}");
    assert_eq!(
        after.keyframe_requests_sent, before.keyframe_requests_sent,
        "{after:?}"
    );
}

/// On a path with no queue, video repairs are bounded by half the target, not by what the
/// rest of the traffic leaves: the encoder overshooting its share (a keyframe, busy
/// pictures) left only the tenth of slack, and the repairs refused then were most of the
/// frames given up mid-call at 10 % loss. With a queue standing, what the rest leaves
/// still bounds them.
#[test]
fn video_repairs_are_not_refused_for_an_overshooting_encoder_without_a_queue() {
    let mut call = video_call(LossModel::None);
    call.run_until(Duration::from_secs(3));
    let target = call.a.cc.target_bps();
    // Pictures worth more than the whole target within the last second.
    let now = call.now();
    let frame = 20_000;
    for _ in 0..(target as usize / 8 / frame + 2) {
        call.a.send_video(now, &vec![0x33; frame], false);
    }
    while call.a.poll_transmit().is_some() {}
    assert!(call.a.send_rate.bps(now) > target + target / 10, "{target}");
    // More repairs than the tenth of slack carries (packets of ~1.1 kB).
    let nacked = (target / 10 / 8_000) as usize + 3;
    let size = (nacked + 1) * 1200;
    call.a.cc.set_queue_delay_for_test(Duration::ZERO);
    let without_queue = video_rtx_answering_a_nack(&mut call, size, nacked);
    call.a
        .cc
        .set_queue_delay_for_test(Duration::from_millis(50));
    let with_queue = video_rtx_answering_a_nack(&mut call, size, nacked);
    assert_eq!(without_queue, nacked, "{target}");
    assert!(with_queue < nacked, "{with_queue} of {nacked}");
}

/// A full intra request (RFC 5104) for our video asks our encoder for a keyframe like a PLI;
/// the same request sent again (same sequence number) does not ask twice, a new one does, and
/// one for another stream is not ours.
#[test]
fn fir_requests_a_keyframe_once_per_sequence_number() {
    use crate::rtcp::{write_compound, Fir, RtcpPacket};
    let mut call = video_call(LossModel::None);
    call.run_until(Duration::from_millis(500));
    while call.a.poll_event().is_some() {}
    let video = call.a.config().local_video.expect("video stream");
    let now = call.now();
    let mut asked = Vec::new();
    for (ssrc, seq) in [
        (video.ssrc, 1),
        (video.ssrc, 1),
        (video.ssrc, 2),
        (video.ssrc + 1, 3),
    ] {
        let fir = RtcpPacket::Fir(Fir {
            sender_ssrc: 0x55,
            entries: vec![(ssrc, seq)],
        });
        call.a
            .handle_packet(now, &write_compound(&[fir]))
            .expect("well-formed FIR");
        let mut n = 0;
        while let Some(e) = call.a.poll_event() {
            n += usize::from(e == Event::KeyframeRequested);
        }
        asked.push(n);
    }
    assert_eq!(asked, [1, 0, 1, 0]);
}

/// 10 % random loss with real Opus in the loop: A's encoder follows the engine's targets
/// (in-band FEC on, expected loss), B decodes every playout event.
fn opus_call(red: bool, nack: bool, secs: u64) -> crate::sim::CallMetrics {
    opus_call_over(red, nack, 20, secs)
}

fn opus_call_over(red: bool, nack: bool, one_way_ms: u64, secs: u64) -> crate::sim::CallMetrics {
    let mut config = lossy(LossModel::Random(0.10), one_way_ms);
    config.opus = true;
    if !red {
        config.session.red_pt = None;
    }
    if !nack {
        config.session.audio_nack_max_rtt = Duration::ZERO;
    }
    let mut call = CallSim::new(config, Instant::now());
    call.run_until(Duration::from_secs(secs));
    call.metrics().clone()
}

#[test]
fn opus_in_band_fec_rebuilds_lost_frames() {
    // RED and NACK off: in-band FEC is the only recovery. The jitter buffer holds a frame
    // more once loss shows, so the next packet is there to rebuild a lost one.
    let m = opus_call(false, false, 12);
    let due = m.played_original + m.played_rtx + m.played_red + m.fec + m.concealed;
    assert_eq!(m.decode_errors, 0, "{m:?}");
    assert!(m.opus_decoded + m.fec + m.concealed >= due, "{m:?}");
    // Most packets carry LBRR (not the voice's pauses), and most lost frames come back
    // from it.
    assert!(m.lbrr_sent * 10 >= m.frames_sent * 7, "{m:?}");
    assert!(m.fec > 0 && m.fec_decoded * 10 >= m.fec * 7, "{m:?}");
    let rebuilt = (m.played_original + m.fec_decoded) as f64 / due as f64;
    assert!(rebuilt >= 0.95, "{rebuilt} {m:?}");
}

#[test]
fn opus_with_rtx_decodes_cleanly() {
    // The default recovery at a short round trip, with real Opus payloads: RTX packets carry
    // them intact (every one decodes), and nearly every frame plays without concealment, the
    // first second (before loss is known) included.
    let m = opus_call(true, true, 10);
    assert_eq!(m.decode_errors, 0, "{m:?}");
    assert!(m.played_rtx > 0 && m.opus_decoded >= m.played_original + m.played_rtx);
    assert!(m.played_fraction() >= 0.98, "{:.4}", m.played_fraction());
}

#[test]
fn opus_with_red_decodes_cleanly() {
    // A 300 ms round trip: retransmissions come too late, RED carries the recovery. Its blocks
    // carry the Opus payloads intact, and nearly every frame plays.
    let m = opus_call_over(true, true, 150, 10);
    assert_eq!(m.decode_errors, 0, "{m:?}");
    assert!(m.played_red > 0 && m.opus_decoded >= m.played_original + m.played_red);
    assert!(m.played_fraction() >= 0.97, "{:.4}", m.played_fraction());
}

/// After `secs` of a call over `loss` with `one_way_ms` each way: A's encoder target, A's RED
/// depth, and what B played.
fn protection_after(
    loss: LossModel,
    one_way_ms: u64,
    secs: u64,
) -> (super::EncoderTarget, usize, crate::sim::CallMetrics) {
    let mut call = CallSim::new(lossy(loss, one_way_ms), Instant::now());
    call.run_until(Duration::from_secs(secs));
    let target = call.a.encoder_target().expect("a target was set");
    (target, call.a.red_distance(), call.metrics().clone())
}

#[test]
fn repairable_loss_keeps_the_full_audio_bitrate() {
    // 10 % and 20 % random loss at a 40 ms round trip: NACK repairs nearly every frame in
    // time, so the encoder keeps its full bitrate for the primary encoding: no RED copies, and
    // no in-band FEC, and no bitrate cut (the loss is not congestion: no queue stands). The
    // old policy sent RED depth 2 with LBRR for 10 % or more, at 24 kbps, and cut the rate at
    // 20 % loss.
    for loss in [0.10, 0.20] {
        let (target, red, m) = protection_after(LossModel::Random(loss), 20, 20);
        assert_eq!(red, 0, "loss {loss}: {target:?}");
        assert_eq!(target.audio_bps, 32_000, "loss {loss}: {target:?}");
        assert!(!target.inband_fec, "loss {loss}: {target:?}");
        let floor = if loss > 0.15 { 0.97 } else { 0.99 };
        assert!(
            m.played_fraction() >= floor,
            "loss {loss}: {:.4} played",
            m.played_fraction()
        );
    }
}

#[test]
fn unrepairable_loss_is_protected() {
    // A 300 ms round trip: no retransmission fits the playout budget, so RED and in-band FEC
    // protect, sized to the loss.
    // 30 s: the protection follows the loss measured, and 10 s of this path's draws lose
    // only 7.5 % of the packets.
    let (target, red, _) = protection_after(LossModel::Random(0.10), 150, 30);
    assert_eq!(red, 2, "{target:?}");
    assert!(target.inband_fec, "{target:?}");
    assert!(
        (8..=12).contains(&target.expected_loss_percent),
        "{target:?}"
    );
}

#[test]
fn losses_in_the_first_seconds_are_recovered_too() {
    // A loopback-like path (1 ms one way): the jitter target is below one frame, so a lost
    // packet's RED copy (in the next packet, 20 ms later) arrives after its frame was due
    // unless the buffer starts holding room as soon as loss is seen, not a second later.
    let mut call = CallSim::new(lossy(LossModel::Random(0.10), 1), Instant::now());
    call.run_until(Duration::from_secs(3));
    let m = call.metrics();
    assert!(
        m.played_fraction() >= 0.97,
        "{:.4} {m:?}",
        m.played_fraction()
    );
}

#[test]
fn the_first_losses_are_repaired_before_loss_is_measured() {
    // 10 % random loss on a 40 ms round trip, the call's first two seconds: no loss has been
    // measured yet, nor (for the first packets) the round trip, yet the first lost frames
    // come back by retransmission too. Before the startup rules, a loss in the first second
    // was concealed (PESQ weighs each heavily).
    // With the engine's default 40 ms initial delay, and with the facade's start (none, 10 ms
    // at least after the first frame): no room is held before the first gap, which makes it
    // and is waited out by stretching.
    for (initial, min) in [(40, 0), (0, 10)] {
        for seed in [11, 21, 31] {
            let mut config = lossy(LossModel::Random(0.10), 20);
            config.a_to_b.seed = seed;
            config.session.jitter.initial_delay = Duration::from_millis(initial);
            config.session.jitter.min_delay = Duration::from_millis(min);
            let mut call = CallSim::new(config, Instant::now());
            call.run_until(Duration::from_secs(2));
            let m = call.metrics();
            assert!(m.played_rtx > 0, "{initial} ms, seed {seed}: {m:?}");
            assert_eq!(m.concealed + m.fec, 0, "{initial} ms, seed {seed}: {m:?}");
        }
    }
}

/// Frames B played in `later` but not yet in `earlier`: (played, due).
fn played_between(
    earlier: &crate::sim::CallMetrics,
    later: &crate::sim::CallMetrics,
) -> (u64, u64) {
    let played = |m: &crate::sim::CallMetrics| m.played_original + m.played_rtx + m.played_red;
    let due = |m: &crate::sim::CallMetrics| played(m) + m.fec + m.concealed;
    (played(later) - played(earlier), due(later) - due(earlier))
}

#[test]
fn a_24_kbps_link_carries_audio_in_longer_packets() {
    // Real Opus over a 24 kbps bottleneck (headers counted, 300 ms of queue). One 20 ms
    // frame per packet costs 26 kbps of headers alone: the queue overflowed and most frames
    // were lost. The sender joins three frames per packet (8.7 kbps of headers), the encoder
    // gets the rest, and B splits the packets back into frames that all play.
    let config = CallConfig {
        a_to_b: SimConfig {
            seed: 3,
            delay: Duration::from_millis(20),
            rate_bps: Some(24_000),
            queue_bytes: 900,
            ..SimConfig::default()
        },
        b_to_a: SimConfig {
            seed: 4,
            delay: Duration::from_millis(20),
            ..SimConfig::default()
        },
        opus: true,
        ..CallConfig::default()
    };
    let mut call = CallSim::new(config, Instant::now());
    call.run_until(Duration::from_secs(10));
    let settled = call.metrics().clone();
    call.run_until(Duration::from_secs(30));
    let m = call.metrics();
    assert_eq!(call.a.audio_packet_frames(), 3);
    let target = call.a.encoder_target().expect("a target");
    assert!((8_000..=16_000).contains(&target.audio_bps), "{target:?}");
    assert_eq!(m.decode_errors, 0, "{m:?}");
    let (played, due) = played_between(&settled, m);
    assert!(due >= 990, "{due}");
    assert!(played * 1000 >= due * 990, "{played} of {due} played");
}

#[test]
fn fast_links_keep_one_frame_per_packet() {
    // Unlimited, and a 64 kbps link: 20 ms packets while they leave the encoder its full
    // rate; 40 ms on the 64 kbps link, where 20 ms would leave it about 24 kbps.
    for (rate, frames) in [(None, 1), (Some(64_000), 2)] {
        let config = CallConfig {
            a_to_b: SimConfig {
                seed: 5,
                delay: Duration::from_millis(20),
                rate_bps: rate,
                queue_bytes: 8_000,
                ..SimConfig::default()
            },
            opus: true,
            ..CallConfig::default()
        };
        let mut call = CallSim::new(config, Instant::now());
        call.run_until(Duration::from_secs(20));
        assert_eq!(call.a.audio_packet_frames(), frames, "{rate:?}");
        let target = call.a.encoder_target().expect("a target");
        assert!(target.audio_bps >= 30_000, "{rate:?}: {target:?}");
    }
}

#[test]
fn reordering_alone_does_not_hold_room_for_loss() {
    let jitter = crate::sim::Jitter::Exponential(Duration::from_millis(10));
    let link = |seed| SimConfig {
        seed,
        delay: Duration::from_millis(30),
        jitter,
        reorder: true,
        ..SimConfig::default()
    };
    let config = CallConfig {
        a_to_b: link(7),
        b_to_a: link(8),
        ..CallConfig::default()
    };
    let mut call = CallSim::new(config, Instant::now());
    call.run_until(Duration::from_secs(60));
    let m = call.metrics();
    let ratio = m.added_delay_mean_from(250) / jitter.p95().as_secs_f64();
    assert!(ratio <= 1.5, "{ratio} {m:?}");
}

/// H.264 through two sessions with OpenH264 on both ends: a lost packet breaks one frame, the
/// receiver skips to a keyframe it asks for (PLI), and nothing it decodes is corrupted.
#[cfg(feature = "openh264")]
#[test]
fn h264_video_recovers_from_loss_with_a_keyframe_request() {
    use crate::session::{Event, MediaSession, SessionConfig};
    use crate::video::{
        I420Frame, OpenH264Decoder, OpenH264Encoder, VideoDecoder, VideoEncoder, VideoEncoderConfig,
    };
    use crate::TransmitKind;

    let t0 = Instant::now();
    let config = SessionConfig::default().with_h264_video();
    let mut a = MediaSession::new(config.clone(), t0);
    let mut b = MediaSession::new(config.mirrored(), t0);
    let mut enc = OpenH264Encoder::new(VideoEncoderConfig {
        bitrate_bps: 600_000,
        max_nal_size: config.max_payload,
        ..Default::default()
    })
    .unwrap();
    let mut dec = OpenH264Decoder::new().unwrap();
    let (w, h) = (320, 192);
    let mut decoded = Vec::new();
    let mut keyframe_requests = 0;
    let mut video_packets = 0u32;
    let mut dropped = None;
    let mut rtx_dropped = 0;
    for n in 0..90u32 {
        let now = t0 + Duration::from_millis(u64::from(n) * 33);
        let mut pic = I420Frame::filled(w, h, [16, 128, 128], now).unwrap();
        let [y, _, _] = pic.planes_mut();
        for (i, px) in y.iter_mut().enumerate() {
            let (r, c) = ((i as u32) / w, (i as u32) % w);
            // A smooth ramp sliding 2 pixels a frame (no scene cuts, so no spontaneous IDR).
            *px = ((c + 2 * n) / 2 + r / 3) as u8;
        }
        if let Some(f) = enc.encode(&pic).unwrap() {
            a.send_video(now, &f.data, f.keyframe);
        }
        while let Some(t) = a.poll_transmit() {
            if t.kind == TransmitKind::Rtp {
                let ssrc = crate::rtp::RtpPacket::parse(&t.data).unwrap().header.ssrc;
                if ssrc == 0x1000_0004 {
                    // Retransmissions are lost too: only a keyframe can repair the stream.
                    rtx_dropped += 1;
                    continue;
                }
                video_packets += 1;
                // Lose one packet at frame 30 (well after the first keyframe).
                if n >= 30 && dropped.is_none() {
                    dropped = Some(n);
                    continue;
                }
            }
            let _ = b.handle_packet(now, &t.data);
        }
        b.handle_timeout(now);
        while let Some(t) = b.poll_transmit() {
            let _ = a.handle_packet(now, &t.data);
        }
        a.handle_timeout(now);
        while let Some(e) = a.poll_event() {
            if e == Event::KeyframeRequested {
                keyframe_requests += 1;
                enc.request_keyframe();
            }
        }
        while let Some(e) = b.poll_event() {
            if let Event::Video(f) = e {
                match dec.decode(&f.data, now) {
                    Ok(Some(p)) => decoded.push((f.timestamp, f.keyframe, p)),
                    Ok(None) => {}
                    Err(err) => panic!("frame at {}: {err}", f.timestamp),
                }
            }
        }
    }
    assert!(dropped.is_some(), "{video_packets} video packets");
    assert!(rtx_dropped > 0, "the receiver NACKed the lost packet first");
    assert!(keyframe_requests >= 1, "the receiver asked for a keyframe");
    // Frames were lost around the drop, then flow resumed from a keyframe.
    assert!(
        decoded.len() >= 60 && decoded.len() < 90,
        "{}",
        decoded.len()
    );
    let keys = decoded.iter().filter(|d| d.1).count();
    assert!(keys >= 2, "first keyframe and the requested one");
}

/// A malformed H.264 frame (no packet lost, so no gap to time out) makes the receiver drop it
/// and ask for a keyframe at once.
#[test]
fn malformed_h264_frame_triggers_a_keyframe_request() {
    use crate::session::{Event, MediaSession, SessionConfig};

    let t0 = Instant::now();
    let config = SessionConfig::default().with_h264_video();
    let mut a = MediaSession::new(config.clone(), t0);
    let mut b = MediaSession::new(config.mirrored(), t0);
    let key = [
        0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1e, 0, 0, 0, 1, 0x68, 0xce, 0, 0, 0, 1, 0x65, 0x88, 1, 2,
    ];
    // Forbidden bit set in the slice's NAL header.
    let bad = [0, 0, 0, 1, 0xc1, 0x88, 3, 4];
    let mut requests = 0;
    let mut frames = Vec::new();
    for (i, au) in [&key[..], &bad[..]].iter().enumerate() {
        let now = t0 + Duration::from_millis(33 * i as u64);
        a.send_video(now, au, i == 0);
        while let Some(t) = a.poll_transmit() {
            let _ = b.handle_packet(now, &t.data);
        }
        while let Some(t) = b.poll_transmit() {
            let _ = a.handle_packet(now, &t.data);
        }
        while let Some(e) = a.poll_event() {
            if e == Event::KeyframeRequested {
                requests += 1;
            }
        }
        while let Some(e) = b.poll_event() {
            if let Event::Video(f) = e {
                frames.push(f.keyframe);
            }
        }
    }
    assert_eq!(frames, vec![true], "the malformed frame is not handed out");
    assert_eq!(requests, 1);
}

#[test]
fn loss_bursts_are_waited_out_for_retransmission() {
    // 10 % loss in bursts of mean 6 packets at a 40 ms round trip. A burst's first frame is
    // noticed only when the packet after the burst arrives: the receiver holds room for the
    // bursts it has seen, so retransmission repairs them too.
    let mut call = CallSim::new(lossy(LossModel::bursty(0.10, 6.0), 20), Instant::now());
    call.run_until(Duration::from_secs(30));
    let m = call.metrics();
    assert!(
        m.played_fraction() >= 0.97,
        "{:.4} played, {} concealed, {} rtx",
        m.played_fraction(),
        m.concealed,
        m.played_rtx
    );
}

/// A 1 ms path each way (loopback-like) with the facade's jitter settings: no initial delay,
/// at least 10 ms once playing.
fn loopback_like(one_way_ms: u64) -> CallConfig {
    let mut config = lossy(LossModel::None, one_way_ms);
    config.a_to_b.seed = 5;
    config.session.jitter.initial_delay = Duration::ZERO;
    config.session.jitter.min_delay = Duration::from_millis(10);
    config
}

#[test]
fn the_first_frame_plays_on_arrival_on_a_clean_path() {
    // A NetEq-like start: until a gap shows, no room is held for repairs, so the first frame
    // plays as its packet arrives, seeded round trip or not (with room held from the start,
    // it waited 2 × the round trip + 30 ms: ~230 ms before a round trip was known, ~31 ms
    // with ICE's seed on a 2 ms path). The delay then grows only to what the path needs.
    for seed in [None, Some(Duration::from_micros(500))] {
        let mut call = CallSim::new(loopback_like(1), Instant::now());
        if let Some(rtt) = seed {
            call.a.seed_rtt(rtt);
            call.b.seed_rtt(rtt);
        }
        call.run_until(Duration::from_secs(3));
        let m = call.metrics();
        let first = *m.added_delay.first().expect("a frame played");
        assert!(first < 0.002, "{seed:?}: first frame {first} s late");
        assert_eq!(m.concealed + m.fec, 0, "{seed:?}: {m:?}");
        // No loss, no jitter: the delay stays at the 10 ms floor.
        let worst = m.added_delay_quantile(1.0);
        assert!(worst < 0.015, "{seed:?}: worst added delay {worst} s");
    }
}

#[test]
fn a_round_trip_seeded_from_ice_sizes_the_startup_room_to_the_path() {
    // The first gap of a call makes room for retransmissions before RTCP has measured a round
    // trip. Without a seed the room is planned at a default 100 ms round trip: on a 2 ms path
    // that held frames ~200 ms for repairs that take 2 ms. Seeded with the path's round trip
    // (ICE measures it), the room fits the path; RTCP's own measurement then replaces the
    // seed. (Before the NetEq-like start, this room was held from the first frame on.)
    let room_after_a_gap = |seed: Option<Duration>| {
        let mut call = CallSim::new(loopback_like(1), Instant::now());
        if let Some(rtt) = seed {
            call.a.seed_rtt(rtt);
            call.b.seed_rtt(rtt);
        }
        call.run_until(Duration::from_millis(300));
        call.ab.set_loss(LossModel::Random(1.0));
        call.run_until(Duration::from_millis(321));
        call.ab.set_loss(LossModel::None);
        call.run_until(Duration::from_millis(400));
        let now = call.now();
        let room = call.b.stats(now).playout_delay;
        call.run_until(Duration::from_secs(4));
        (room, call.b.rtt().expect("rtt"))
    };
    let (unseeded, _) = room_after_a_gap(None);
    let (seeded, measured) = room_after_a_gap(Some(Duration::from_micros(500)));
    assert!(seeded < Duration::from_millis(60), "seeded: {seeded:?}");
    assert!(
        unseeded > seeded + Duration::from_millis(100),
        "unseeded {unseeded:?}, seeded {seeded:?}"
    );
    // RTCP's measurement (a 1 ms path each way: about 2 ms) replaced the 0.5 ms seed.
    assert!(measured >= Duration::from_micros(1500), "{measured:?}");
}

#[test]
fn an_early_loss_is_repaired_and_grows_the_delay() {
    // 40 ms round trip (seeded, as ICE does), no initial delay. A packet lost 0.3 s into the
    // call, before any loss was measured and with no room held: the gap makes room at once,
    // the jitter buffer stretches playout instead of concealing the missing frame, and its
    // retransmission plays. The delay stays grown for the repairs to come.
    let mut config = loopback_like(20);
    config.b_to_a.seed = 6;
    let mut call = CallSim::new(config, Instant::now());
    call.a.seed_rtt(Duration::from_millis(40));
    call.b.seed_rtt(Duration::from_millis(40));
    call.run_until(Duration::from_millis(300));
    let before = call.b.stats(call.now()).playout_delay;
    let first = *call.metrics().added_delay.first().expect("a frame played");
    call.ab.set_loss(LossModel::Random(1.0));
    call.run_until(Duration::from_millis(321));
    call.ab.set_loss(LossModel::None);
    call.run_until(Duration::from_secs(2));
    let after = call.b.stats(call.now()).playout_delay;
    let m = call.metrics();
    assert!(first < 0.002, "first frame {first} s late");
    assert!(
        before <= Duration::from_millis(15),
        "before the loss: {before:?}"
    );
    assert!(call.ab.stats().lost >= 1);
    assert!(m.played_rtx >= 1, "{m:?}");
    assert_eq!(m.concealed + m.fec, 0, "{m:?}");
    // Room for a retransmission: the round trip (40 ms, as RTCP measures it) + the gap
    // noticed (20 ms) + margin (10 ms); it was 10 ms before the loss.
    assert!(
        after >= Duration::from_millis(65),
        "after the loss: {after:?}"
    );
}

/// A call as the facade sets one up (start at 24 kbps with fast start, no probing, packets up
/// to 120 ms) with A's sending direction capped at `rate_bps` (300 ms of queue at 24 kbps is
/// the 1,500-byte minimum) and 50 ms each way. B's direction is not capped: the simulator's B
/// sends fixed-size frames that ignore its targets.
fn facade_call(rate_bps: Option<u64>) -> CallSim {
    CallSim::new(facade_config(rate_bps), Instant::now())
}

/// The configuration of [`facade_call`].
fn facade_config(rate_bps: Option<u64>) -> CallConfig {
    let mut session = crate::session::SessionConfig::default();
    session.cc.max_bps = 200_000;
    session.cc.start_bps = 24_000;
    session.cc.fast_start = true;
    session.cc.probing = false;
    session.max_audio_packet = Duration::from_millis(120);
    session.jitter.initial_delay = Duration::from_millis(20);
    session.jitter.min_delay = Duration::from_millis(10);
    CallConfig {
        a_to_b: SimConfig {
            seed: 3,
            delay: Duration::from_millis(50),
            rate_bps,
            // 300 ms, at least 1,500 bytes (as the facade's simulated link).
            queue_bytes: rate_bps.map_or(1500, |r| (r as usize * 3 / 80).max(1500)),
            ..SimConfig::default()
        },
        b_to_a: SimConfig {
            seed: 4,
            delay: Duration::from_millis(50),
            ..SimConfig::default()
        },
        session,
        opus: true,
        ..CallConfig::default()
    }
}

#[test]
fn a_24_kbps_call_starts_without_overflowing_the_link() {
    // Starting at the audio's full rate (32 kbps in 20 ms packets, 58 kbps on the wire), the
    // bottleneck dropped 10 packets in this call's first second and B lost 9 frames (in the
    // real two-party example, where both directions carry audio and the feedback waits in a
    // full queue too, 46 of 556). Starting at 24 kbps with fast start, the rate rises until
    // the first queue shows and comes back at once; afterwards the encoder keeps more than
    // its 8 kbps floor (the congestion window counts the 500 ms between feedback packets:
    // without that, pushback held it at the floor).
    let mut call = facade_call(Some(24_000));
    call.run_until(Duration::from_secs(13));
    let m = call.metrics();
    let drops = call.ab.stats().queue_dropped;
    assert!(drops <= 3, "{drops} dropped at the bottleneck");
    let (played, due) = played_between(&crate::sim::CallMetrics::default(), m);
    assert!(played * 100 >= due * 98, "{played} of {due} played");
    assert!(call.a.audio_packet_frames() >= 4);
    let target = call.a.encoder_target().expect("a target");
    assert!(target.audio_bps >= 9_000, "{target:?}");
}

#[test]
fn fast_start_reaches_the_full_rate_on_a_fast_path() {
    // Without a cap the same start reaches 32 kbps within a second (0.7 s in this run) and
    // one frame per packet within three. On a 64 kbps link too (40 ms packets, then 20): the
    // longer packets' own transmission time there must not read as a queue (ending fast
    // start at 20 ms of delay left this call at 22 kbps for good, 13 for the encoder).
    for (rate, frames) in [(None, 1), (Some(64_000), 2)] {
        let mut call = facade_call(rate);
        call.run_until(Duration::from_secs(2));
        let target = call.a.encoder_target().expect("a target");
        assert_eq!(target.audio_bps, 32_000, "{rate:?}: {target:?}");
        call.run_until(Duration::from_secs(3));
        assert!(call.a.audio_packet_frames() <= frames, "{rate:?}");
        assert_eq!(call.ab.stats().queue_dropped, 0, "{rate:?}");
    }
}

#[test]
fn the_step_to_the_full_audio_rate_is_always_announced() {
    // A fast start that reached 31.4 kbps (the wideband-capped encoder's smaller packets made
    // the acknowledged rate, and so the ramp, a little slower) then stayed there while the
    // estimate went on to 78 kbps: 32 kbps was within 5 % and never announced.
    let target = |audio_bps| super::EncoderTarget {
        audio_bps,
        video_bps: 0,
        audio_only: true,
        inband_fec: false,
        expected_loss_percent: 0,
    };
    assert!(super::significant_change(&target(31_427), &target(32_000)));
    // Other small steps are still not announced, in either direction.
    assert!(!super::significant_change(&target(30_000), &target(31_000)));
    assert!(!super::significant_change(&target(32_000), &target(31_427)));
    assert!(!super::significant_change(&target(32_000), &target(32_000)));
}

#[test]
fn an_audio_only_encoder_is_asked_for_a_tenth_more_than_its_share_at_silk_rates() {
    // SILK's VBR produces about 0.9 × its target: on a 24 kbps link the call's encoder
    // produced 12.0–12.5 kbps of a 13 kbps share, and nothing else used the rest. The
    // setting stays under the wideband cap, and the full rate and video calls are as before.
    let now = Instant::now();
    let mut s = super::MediaSession::new(crate::SessionConfig::default(), now);
    s.audio_packet_frames = 5;
    let headers = 10.0 * super::protection::AUDIO_PACKET_BITS;
    let share = 22_000.0 - headers;
    let t = s.allocate_at(24_000.0, 2_000.0, 0.0);
    assert_eq!(t.audio_bps, (share / 0.9) as u32, "{t:?}");
    let near_cap = s.allocate_at(30_000.0, 2_000.0, 0.0);
    assert_eq!(
        near_cap.audio_bps,
        crate::codec::WIDEBAND_BELOW_BPS - 1,
        "{near_cap:?}"
    );
    s.audio_packet_frames = 1;
    assert_eq!(s.allocate_at(200_000.0, 2_000.0, 0.0).audio_bps, 32_000);
    let mut v = super::MediaSession::new(crate::SessionConfig::default().with_h264_video(), now);
    v.audio_packet_frames = 5;
    let t = v.allocate_at(48_000.0, 4_000.0, 0.0);
    assert_eq!(t.audio_bps, (22_000.0 - headers) as u32, "{t:?}");
}

#[test]
fn an_audio_only_encoder_takes_the_target_when_feedback_is_late() {
    // On a slow path feedback comes up to 1 s apart and a lost one doubles that: the bytes
    // sent meanwhile overfill the congestion window with no queue on the path. With the
    // codec following every pushback step, a 24 kbps call at 10 % loss held its encoder at
    // 0.2–0.4 of the target for seconds. Audio alone takes the target itself.
    let t0 = Instant::now();
    let mut config = crate::SessionConfig::default();
    config.cc.start_bps = 24_000;
    config.max_audio_packet = Duration::from_millis(120);
    let mut s = super::MediaSession::new(config, t0);
    // 1.5 s of 20 ms frames and no feedback.
    for i in 0..75 {
        let now = t0 + Duration::from_millis(20 * i);
        s.send_audio(now, &[0x55; 40], None);
        while s.poll_transmit().is_some() {}
    }
    let cc = s.congestion_controller();
    assert!(
        cc.encoder_bps() * 2 < cc.target_bps(),
        "{} outstanding, no pushback to ride out",
        cc.outstanding_bytes()
    );
    let target = s.encoder_target().expect("a target");
    assert!(target.audio_bps >= 14_000, "{target:?}");
}

#[test]
fn an_rtt_seeded_from_ice_does_not_shrink_the_congestion_window() {
    // ICE's checks are small packets, and behind the facade's simulated link they skipped
    // it (0.3 ms on a 100 ms path): a congestion window planned on that pushed the encoder
    // back while the first packets waited for feedback. The window keeps the default RTT
    // until RTCP measures one; the seed still plans the repairs (`rtt`).
    let t0 = Instant::now();
    let mut config = crate::SessionConfig::default();
    config.cc.start_bps = 24_000;
    let mut s = super::MediaSession::new(config, t0);
    s.seed_rtt(Duration::from_micros(300));
    assert_eq!(s.rtt(), Some(Duration::from_micros(300)));
    // 1,950 bytes outstanding: over a window of 24 kbps × (0.3 ms + 500 ms between feedback
    // packets + 100 ms), under one planned on the default 100 ms round trip.
    for i in 0..26 {
        let now = t0 + Duration::from_millis(20 * i);
        s.send_audio(now, &[0x55; 10], None);
        while s.poll_transmit().is_some() {}
    }
    let cc = s.congestion_controller();
    assert_eq!(cc.outstanding_bytes(), 26 * 75);
    assert_eq!(cc.encoder_bps(), cc.target_bps(), "pushed back");
}

#[test]
fn feedback_on_a_path_under_26_kbps_takes_half_the_share() {
    // On a 24 kbps link feedback every 500 ms (1.3 kbps) and the reports (0.7 kbps) took 8 %
    // of the link: there, feedback takes 2.5 % of the peer's rate, up to a second apart.
    let t0 = Instant::now();
    let mut s = super::MediaSession::new(crate::SessionConfig::default(), t0);
    let now = t0 + Duration::from_secs(3);
    s.recv_rate.add(now, 2_500); // 20 kbps from the peer
    assert_eq!(s.feedback_interval(now), Duration::from_secs(1));
    s.recv_rate.add(now, 2_500); // 40 kbps: 5 %, as before
    assert_eq!(s.feedback_interval(now), Duration::from_millis(320));
    s.recv_rate.add(now, 35_000); // 320 kbps: the configured 50 ms
    assert_eq!(s.feedback_interval(now), Duration::from_millis(50));
    // In the call's start, 250 ms at most whatever the rate.
    let mut early = super::MediaSession::new(crate::SessionConfig::default(), t0);
    early.recv_rate.add(t0, 2_500);
    assert_eq!(early.feedback_interval(t0), Duration::from_millis(250));
}

/// How many of two NACKed audio packets A answers while its estimate (24 kbps at the start)
/// is below what the audio itself sends, with the congestion controller measuring `queue`.
fn audio_nacks_answered_below_the_audio_rate(queue: Duration) -> usize {
    use crate::rtp::RtpPacket;
    let mut config = facade_config(None);
    config.a_to_b.delay = Duration::from_millis(1);
    config.b_to_a.delay = Duration::from_millis(1);
    let mut call = CallSim::new(config, Instant::now());
    call.run_until(Duration::from_millis(300));
    let audio = call.a.config().local_audio;
    let mut now = call.now();
    // Two seconds of 100 ms packets of 32 kbps Opus: over the estimate, which starts at 24 kbps.
    let mut seqs = Vec::new();
    for _ in 0..20 {
        while call.a.poll_transmit().is_some() {}
        call.a.send_audio(now, &[0x55; 400], None);
        while let Some(t) = call.a.poll_transmit() {
            if let Ok(p) = RtpPacket::parse(&t.data) {
                if p.header.ssrc == audio.ssrc {
                    seqs.push(p.header.sequence_number);
                }
            }
        }
        now += Duration::from_millis(100);
    }
    let target = call.a.cc.target_bps();
    let sent = call.a.send_rate.bps(now);
    assert!(target < sent, "target {target}, sending {sent}");
    call.a.cc.set_queue_delay_for_test(queue);
    let mut answered = 0;
    for &seq in seqs.iter().rev().take(2) {
        call.a.on_nack(now, audio.ssrc, &[seq]);
        while let Some(t) = call.a.poll_transmit() {
            if let Ok(p) = RtpPacket::parse(&t.data) {
                answered += usize::from(p.header.ssrc == audio.rtx_ssrc && !p.payload.is_empty());
            }
        }
    }
    answered
}

/// Audio retransmissions go while the estimate is below what the audio itself sends (a
/// call's start on a lossy path, where loss holds fast start back at 24 kbps) and no queue
/// stands: the rule that keeps video repairs within what the rest of the traffic leaves of the
/// target starved them, and each unrepaired 100 ms packet was five concealed frames
/// (`tests/call_loss.rs`). With a queue standing (a slow link, where the losses may be our
/// own overflow) that rule holds for audio too.
#[test]
fn audio_retransmissions_go_while_the_estimate_is_below_the_audio_rate() {
    let free = audio_nacks_answered_below_the_audio_rate(Duration::ZERO);
    assert!(
        free >= 2,
        "{free} retransmissions for 2 NACKed packets, no queue"
    );
    let queued = audio_nacks_answered_below_the_audio_rate(Duration::from_millis(100));
    assert!(
        queued < 2,
        "{queued} retransmissions for 2 NACKed packets, 100 ms of queue"
    );
}

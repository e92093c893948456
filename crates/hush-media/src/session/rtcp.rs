//! The RTCP side of a [`MediaSession`]: reports, RTT, feedback handling.

use std::time::{Duration, UNIX_EPOCH};

use super::{protection, MediaSession};
use crate::rtcp::{write_compound, ReceiverReport, ReportBlock, RtcpPacket, Sdes, SenderReport};
use crate::sync::SyncStream;
use crate::Instant;

/// Seconds from 1900 (NTP era 0) to 1970.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// Queueing delay from which the path counts as overflowing for retransmissions: a full
/// congestion window then refuses video ones, and both audio and video ones keep within what
/// the rest of the traffic leaves of the target (under it, half the target bounds them).
const RTX_OVERFLOW_QUEUE: Duration = Duration::from_millis(30);

impl MediaSession {
    /// 64-bit NTP time of `now`, from the configured wall clock at the session start.
    fn ntp(&self, now: Instant) -> u64 {
        let wall = self.config.wallclock + now.saturating_duration_since(self.start);
        let since_unix = wall.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let secs = since_unix.as_secs() + NTP_UNIX_OFFSET;
        let frac = (u64::from(since_unix.subsec_nanos()) << 32) / 1_000_000_000;
        (secs << 32) | frac
    }

    fn report_blocks(&mut self, now: Instant) -> Vec<ReportBlock> {
        let (lsr, dlsr) = match self.last_sr {
            Some((lsr, at)) => {
                let d = now.saturating_duration_since(at).as_secs_f64() * 65536.0;
                (lsr, d as u32)
            }
            None => (0, 0),
        };
        let mut blocks = Vec::new();
        if self.has_audio_data() {
            let (fraction_lost, cumulative_lost, highest_seq, jitter) = self.audio_rx.report();
            // Smoothed over a few reports: a 500 ms interval holds only 25 audio packets.
            let fraction = f64::from(fraction_lost) / 256.0;
            self.recv_loss += (fraction - self.recv_loss) * 0.25;
            blocks.push(ReportBlock {
                ssrc: self.config.remote_audio.ssrc,
                fraction_lost,
                cumulative_lost,
                highest_seq,
                jitter,
                last_sr: lsr,
                delay_since_last_sr: dlsr,
            });
        }
        if let Some(v) = self
            .config
            .remote_video
            .filter(|_| self.video_rx.has_data())
        {
            let (fraction_lost, cumulative_lost, highest_seq, jitter) = self.video_rx.report();
            blocks.push(ReportBlock {
                ssrc: v.ssrc,
                fraction_lost,
                cumulative_lost,
                highest_seq,
                jitter,
                last_sr: lsr,
                delay_since_last_sr: dlsr,
            });
        }
        blocks
    }

    pub(super) fn send_report(&mut self, now: Instant) {
        let reports = self.report_blocks(now);
        let ssrc = self.config.local_audio.ssrc;
        let ntp_time = self.ntp(now);
        let mut packets = Vec::with_capacity(3);
        packets.push(if self.audio_sent_any {
            // The audio's timestamp now: the last frame's, plus the time since it was handed
            // over (RFC 3550 §6.4.1: the RTP time of the same instant as the NTP time).
            let rtp_time = self.audio_clock.map_or(self.last_rtp_ts, |(ts, at)| {
                let since = now.saturating_duration_since(at).as_secs_f64();
                ts.wrapping_add((since * f64::from(self.config.jitter.clock_rate)) as u32)
            });
            RtcpPacket::SenderReport(SenderReport {
                ssrc,
                ntp_time,
                rtp_time,
                // The audio's own counts: the video has its report.
                packet_count: self.audio_packets_sent,
                octet_count: self.audio_octets_sent,
                reports,
            })
        } else {
            RtcpPacket::ReceiverReport(ReceiverReport { ssrc, reports })
        });
        if let Some(video) = self
            .config
            .local_video
            .filter(|_| self.video_packets_sent > 0)
        {
            // The video's own report ties its timestamps to the same wall clock: the peer
            // plays the two streams in step by it (lip sync).
            packets.push(RtcpPacket::SenderReport(SenderReport {
                ssrc: video.ssrc,
                ntp_time,
                rtp_time: self.video_ts(now),
                packet_count: self.video_packets_sent,
                octet_count: self.video_octets_sent,
                reports: Vec::new(),
            }));
        }
        packets.push(RtcpPacket::Sdes(Sdes {
            chunks: vec![(ssrc, self.config.cname.as_bytes().to_vec())],
        }));
        self.send_rtcp(now, write_compound(&packets));
    }

    pub(super) fn send_feedback(&mut self, now: Instant) {
        let media = self.config.remote_audio.ssrc;
        let ssrc = self.config.local_audio.ssrc;
        let mut packets = Vec::new();
        while let Some(fb) = self.twcc_rx.build(ssrc, media) {
            packets.push(RtcpPacket::TransportFeedback(fb));
            if packets.len() >= 4 {
                break;
            }
        }
        if !packets.is_empty() {
            self.send_rtcp(now, write_compound(&packets));
        }
    }

    pub(super) fn handle_rtcp(&mut self, now: Instant, packets: Vec<RtcpPacket>) {
        for p in packets {
            match p {
                RtcpPacket::SenderReport(sr) => {
                    let clock = |clock_rate| crate::sync::SenderClock {
                        ntp: sr.ntp_time,
                        rtp: sr.rtp_time,
                        clock_rate,
                    };
                    if sr.ssrc == self.config.remote_audio.ssrc {
                        self.last_sr = Some(((sr.ntp_time >> 16) as u32, now));
                        self.remote_clocks[SyncStream::Audio as usize] =
                            Some(clock(self.config.jitter.clock_rate));
                    } else if self.config.remote_video.is_some_and(|v| v.ssrc == sr.ssrc) {
                        self.remote_clocks[SyncStream::Video as usize] = Some(clock(90_000));
                    }
                    self.on_report_blocks(now, &sr.reports);
                }
                RtcpPacket::ReceiverReport(rr) => self.on_report_blocks(now, &rr.reports),
                RtcpPacket::Nack(n) => self.on_nack(now, n.media_ssrc, &n.lost),
                RtcpPacket::Pli(p)
                    if self
                        .config
                        .local_video
                        .is_some_and(|v| v.ssrc == p.media_ssrc) =>
                {
                    self.events.push_back(super::Event::KeyframeRequested);
                }
                RtcpPacket::Fir(f) => {
                    let Some(video) = self.config.local_video else {
                        continue;
                    };
                    for &(ssrc, seq) in &f.entries {
                        // A repeated sequence number is the same request sent again.
                        if ssrc == video.ssrc && self.last_fir_seq != Some(seq) {
                            self.last_fir_seq = Some(seq);
                            self.events.push_back(super::Event::KeyframeRequested);
                        }
                    }
                }
                RtcpPacket::TransportFeedback(fb) => {
                    self.cc.on_feedback(now, &fb);
                    self.update_target(now);
                }
                _ => {}
            }
        }
    }

    fn on_report_blocks(&mut self, now: Instant, blocks: &[ReportBlock]) {
        let ours = self.config.local_audio.ssrc;
        for b in blocks.iter().filter(|b| b.ssrc == ours) {
            self.remote_loss = f64::from(b.fraction_lost) / 256.0;
            // A report covers 500 ms, 25 audio packets: protection follows the smoothed loss,
            // not each report's sampling noise.
            // The first report is the estimate; later ones move it by an eighth (a report of
            // 25 packets at 20 % loss is off by 8 points one time in three).
            self.remote_loss_smoothed = if self.remote_reports == 0 {
                self.remote_loss
            } else {
                self.remote_loss_smoothed + (self.remote_loss - self.remote_loss_smoothed) / 8.0
            };
            self.remote_reports += 1;
            if b.last_sr == 0 {
                continue;
            }
            let now_mid = (self.ntp(now) >> 16) as u32;
            let rtt = now_mid
                .wrapping_sub(b.last_sr)
                .wrapping_sub(b.delay_since_last_sr);
            // Anything over a minute is a bogus report (or clock trouble): ignore.
            if rtt < 60 * 65536 {
                let rtt = Duration::from_secs_f64(f64::from(rtt) / 65536.0);
                self.rtt = Some(match self.rtt {
                    Some(old) if self.rtt_from_rtcp => old.mul_f64(0.75) + rtt.mul_f64(0.25),
                    _ => rtt,
                });
                self.rtt_from_rtcp = true;
                self.cc.set_rtt(rtt);
            }
        }
    }

    pub(super) fn on_nack(&mut self, now: Instant, media_ssrc: u32, lost: &[u16]) {
        let rtt = self.rtt_or_default();
        // While the congestion window is over-full the losses are our own queue overflowing:
        // resending big video packets into it only keeps it full. Audio retransmissions are
        // small and keep the call intelligible, so they still go (within the budget below).
        let congested = self.cc.window_full();
        // For video, the window alone is not overflow: bytes stay outstanding until feedback
        // covers them, so on a randomly lossy path one lost feedback packet (or a keyframe's
        // burst) fills it with no queue at all, and the refused repairs froze the picture
        // (`client::video` loss test: 30 refusals, 4 freezes in 15 s). Overflow builds a
        // queue first.
        let video_congested = congested && self.cc.queue_delay() >= RTX_OVERFLOW_QUEUE;
        let audio = media_ssrc == self.config.local_audio.ssrc;
        // The smoothed loss moves an eighth a report from a first one that covers the call's
        // clean first moments: at 10 % loss it passed 5 % only 5-6 s into the call, and until
        // then lost retransmissions were most of the frames given up that the budget did not
        // refuse (docs/benchmarks.md, issue 14's twelfth round). So repairs go twice as
        // soon as the latest report is over the bound too, and, as audio's, before the
        // peer's reports have said anything (no loss, nothing to resend: it costs nothing).
        // Or as soon as the transport feedback shows it: the reports count the peer's audio
        // only, 25 packets each, and at 10 % loss about one in four reads under 5 % (worked
        // out; 0 and 1 in 26 at times); each repair then went once, and three lost in a row
        // froze the picture (docs/benchmarks.md, issue 14's fourteenth round). The feedback
        // counts every packet of the last second, before any repair.
        let video_loss = self
            .remote_loss_smoothed
            .max(self.remote_loss)
            .max(self.cc.loss_fraction());
        let double_video =
            now < self.startup_guard_until || video_loss > protection::VIDEO_DOUBLE_RTX_LOSS;
        let packets = if audio {
            let mut packets = self.audio_rtx.on_nack(now, lost, rtt);
            // Before the peer's reports say how lossy the path is, assume the worst.
            let startup = now < self.startup_guard_until;
            if startup || protection::rtx_copies(self.remote_loss_smoothed) > 1 {
                // On a path this lossy, one retransmission in five or more is lost too, and
                // the next attempt costs a round trip: send each twice (as its own RTX
                // packet: SRTP would refuse a replayed sequence number). Link bits, not
                // encoder bits.
                let copies: Vec<_> = packets.iter().map(|p| self.audio_rtx.copy(p)).collect();
                packets.extend(copies);
            }
            packets
        } else if let Some(rtx) = self.video_rtx.as_mut().filter(|_| {
            self.config
                .local_video
                .is_some_and(|v| v.ssrc == media_ssrc)
        }) {
            if video_congested {
                self.video_repair.refused_congested += lost.len() as u64;
                return;
            }
            let mut packets = rtx.on_nack(now, lost, rtt);
            self.video_repair.not_in_history += lost.len().saturating_sub(packets.len()) as u64;
            if double_video {
                // A video frame counts as frozen once it waits ~150 ms past its due time: one
                // failed attempt (the next costs another round trip and a retry interval) is
                // already a freeze. On a path this lossy each retransmission goes twice.
                let copies: Vec<_> = packets.iter().map(|p| rtx.copy(p)).collect();
                packets.extend(copies);
            }
            packets
        } else {
            Vec::new()
        };
        // Retransmissions never take more than half the target over a second (WebRTC bounds
        // them by the target too), nor more than what the rest of our traffic leaves of it:
        // on a path that is full, the losses are our own overflow, and retransmitting into
        // it only causes more. Padding and probes are not "the rest": they only fill room
        // nothing else uses (counting them left no room for video retransmissions while
        // the estimate was probed upwards, and frames were lost to the gap timeout).
        let target = self.cc.target_bps();
        let others = self
            .send_rate
            .bps(now)
            .saturating_sub(self.rtx_rate.bps(now))
            .saturating_sub(self.padding_rate.bps(now));
        // A tenth of the target on top: the encoder's share leaves room for the
        // retransmissions it has seen (`allocate`), but it follows them a second late, and
        // with no slack every burst of losses had its repairs refused (frames then waited for
        // the gap timeout and a keyframe). Real overflow is caught by the window check above.
        //
        // Repairs on a path with no queue are not overflow: a drop-tail bottleneck queues
        // before it drops, so losses without a queue are the path's own, and half the target
        // alone bounds their repairs. Audio: a lost packet is heard; while the estimate was
        // still at its 24 kbps start below the audio's own rate (loss holds fast start back),
        // what the rest left was 2.4 kbps and every lost 100 ms packet went unrepaired: five
        // frames concealed each. Video: the encoder overshoots what it is allotted (a step
        // up's keyframe, a requested one, busy pictures: the rest of the traffic at 2.0-2.8
        // Mbps of a 2.5 Mbps target at 10 % loss), so what it left was the tenth of slack
        // while repairs going twice took 0.3-0.6 Mbps; the refused repairs were most of the
        // frames given up mid-call (docs/benchmarks.md, issue 14's twelfth round), and each
        // keyframe asked for then refused more. With a queue standing (a slow link), the losses may
        // be our own and what the rest leaves bounds both.
        let leftover = target.saturating_sub(others) + target / 10;
        let budget = if self.cc.queue_delay() < RTX_OVERFLOW_QUEUE {
            target / 2
        } else {
            (target / 2).min(leftover)
        };
        let total = packets.len();
        for (i, p) in packets.into_iter().enumerate() {
            let bits = (p.payload.len() + 12 + 8 + super::WIRE_OVERHEAD) as u64 * 8;
            if self.rtx_rate.bps(now) + bits > budget {
                if !audio {
                    self.video_repair.refused_budget += (total - i) as u64;
                }
                break;
            }
            self.rtx_rate.add(now, bits as usize / 8);
            self.retransmissions_sent += 1;
            if !audio {
                self.video_repair.retransmissions_sent += 1;
            }
            self.send_rtp(now, p, None, 0);
        }
    }
}

//! Reference for hush's `call_setup` bench: webrtc-rs 0.21 `PeerConnection`, offer → first media.
//!
//! Two peer connections in one process on loopback (host candidates only, no STUN/TURN). The
//! offerer has an Opus audio track (`TrackLocalStaticSample`) that writes one 20 ms frame every
//! 20 ms from the start of the call, at a random phase of that 20 ms clock (webrtc-rs drops what
//! it cannot send yet, as hush drops frames sent before the answer). The answerer has its own Opus track
//! (audio both ways, as in a call) and reads RTP in `on_track`. The clock runs from
//! `create_offer` on the offerer to the first RTP packet the answerer reads (SRTP-decrypted by
//! webrtc-rs). Signaling is non-trickle, as webrtc-rs's own examples do it: each side waits for
//! ICE gathering to complete, then hands its description to the other in memory.
//!
//! The payload is a fixed Opus packet (a TOC byte and 79 bytes, the size of a 32 kbit/s frame);
//! nothing encodes or decodes it, whereas hush's bench counts the first *decoded* frame.
//!
//! Each run builds fresh peer connections and closes both afterwards. Resident memory is sampled
//! before the first call and every `--rss-every` calls. The last line printed is one JSON object.
//!
//! `call_setup [--calls N] [--rss-every M] [--ice-check-ms C]` (defaults 100, 100, and
//! webrtc-rs's own ICE check interval, 200 ms; hush-net checks every 20 ms).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::media::Sample;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use tokio::sync::mpsc;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::media_stream::{MediaStreamTrack, Track};
use webrtc::peer_connection::*;
use webrtc::runtime::default_runtime;

const PT_OPUS: u8 = 111;

/// Milestones of one call, as seen by the event handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ev {
    Gathered,
    Ice,
    Connected,
    FirstRtp,
}

struct Handler {
    tx: mpsc::UnboundedSender<(Ev, Instant)>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, s: RTCIceGatheringState) {
        if s == RTCIceGatheringState::Complete {
            let _ = self.tx.send((Ev::Gathered, Instant::now()));
        }
    }
    async fn on_ice_connection_state_change(&self, s: RTCIceConnectionState) {
        if s == RTCIceConnectionState::Connected {
            let _ = self.tx.send((Ev::Ice, Instant::now()));
        }
    }
    async fn on_connection_state_change(&self, s: RTCPeerConnectionState) {
        if s == RTCPeerConnectionState::Connected {
            let _ = self.tx.send((Ev::Connected, Instant::now()));
        }
    }
    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let mut first = true;
            while let Some(ev) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(p) = ev {
                    if first && !p.payload.is_empty() {
                        first = false;
                        let _ = tx.send((Ev::FirstRtp, Instant::now()));
                    }
                }
            }
        });
    }
}

async fn wait(
    rx: &mut mpsc::UnboundedReceiver<(Ev, Instant)>,
    what: Ev,
) -> Result<Instant, String> {
    loop {
        let (w, t) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .map_err(|_| format!("timeout waiting for {what:?}"))?
            .ok_or("handler gone")?;
        if w == what {
            return Ok(t);
        }
    }
}

fn opus() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

async fn peer(
    tx: mpsc::UnboundedSender<(Ev, Instant)>,
    ice_check: Option<Duration>,
) -> Result<(impl PeerConnection, Arc<TrackLocalStaticSample>), String> {
    let mut media = MediaEngine::default();
    media
        .register_codec(
            RTCRtpCodecParameters {
                rtp_codec: opus(),
                payload_type: PT_OPUS,
            },
            RtpCodecKind::Audio,
        )
        .map_err(|e| e.to_string())?;
    let registry =
        register_default_interceptors(Registry::new(), &mut media).map_err(|e| e.to_string())?;
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media)
        .with_setting_engine(
            SettingEngineBuilder::new()
                .with_ice_connection_attempts(ice_check, None)
                .build(),
        )
        .with_interceptor_registry(registry)
        .with_handler(Arc::new(Handler { tx }))
        .with_runtime(default_runtime().ok_or("runtime")?)
        .with_udp_addrs(vec!["127.0.0.1:0".to_string()])
        .build()
        .await
        .map_err(|e| e.to_string())?;
    let track = Arc::new(
        TrackLocalStaticSample::new(
            Instant::now(),
            MediaStreamTrack::new(
                "hush-bench".to_owned(),
                format!("audio-{}", rand_u32()),
                "audio".to_owned(),
                RtpCodecKind::Audio,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(rand_u32()),
                        ..Default::default()
                    },
                    codec: opus(),
                    ..Default::default()
                }],
            ),
        )
        .map_err(|e| e.to_string())?,
    );
    pc.add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
        .await
        .map_err(|e| e.to_string())?;
    Ok((pc, track))
}

/// A random number from std's randomly keyed hasher (no rand dependency to build).
fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::UNIX_EPOCH
            .elapsed()
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() as u32
}

/// Writes one 20 ms Opus frame every 20 ms from `start` until aborted; write errors (not bound
/// yet, not connected yet) are ignored, as a microphone keeps producing frames regardless.
fn pace(track: Arc<TrackLocalStaticSample>, start: Instant) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let ssrc = track.ssrcs().await.first().copied().unwrap_or_default();
        let mut frame = vec![0x55u8; 80];
        frame[0] = 0xFC; // TOC: SILK+CELT hybrid FB, 20 ms, stereo flag off, one frame.
        let data = Bytes::from(frame);
        let mut tick = tokio::time::interval_at(start.into(), Duration::from_millis(20));
        loop {
            tick.tick().await;
            let _ = track
                .write_sample(
                    ssrc,
                    PT_OPUS,
                    &Sample {
                        data: data.clone(),
                        duration: Duration::from_millis(20),
                        ..Sample::new(Instant::now())
                    },
                    &[],
                )
                .await;
        }
    })
}

/// Phases of one call, each from `create_offer`.
struct Phases {
    offer_gathered: Duration,
    answer_gathered: Duration,
    ice: Duration,
    dtls: Duration,
    first_rtp: Duration,
}

async fn once(ice_check: Option<Duration>) -> Result<Phases, String> {
    let (otx, mut orx) = mpsc::unbounded_channel();
    let (atx, mut arx) = mpsc::unbounded_channel();
    let (offerer, otrack) = peer(otx, ice_check).await?;
    let t0 = Instant::now();
    // The offerer's microphone starts with the call, at a random phase of its 20 ms frame clock
    // (hush's bench does the same).
    let osend = pace(
        otrack,
        t0 + Duration::from_micros(u64::from(rand_u32() % 20_000)),
    );
    let result = async {
        let offer = offerer
            .create_offer(None)
            .await
            .map_err(|e| e.to_string())?;
        offerer
            .set_local_description(offer)
            .await
            .map_err(|e| e.to_string())?;
        let og = wait(&mut orx, Ev::Gathered).await?;
        let offer = offerer.local_description().await.ok_or("no offer")?;
        let (answerer, atrack) = peer(atx, ice_check).await?;
        let asend = pace(atrack, Instant::now());
        let inner = async {
            answerer
                .set_remote_description(offer)
                .await
                .map_err(|e| e.to_string())?;
            let answer = answerer
                .create_answer(None)
                .await
                .map_err(|e| e.to_string())?;
            answerer
                .set_local_description(answer)
                .await
                .map_err(|e| e.to_string())?;
            let ag = wait(&mut arx, Ev::Gathered).await?;
            let answer = answerer.local_description().await.ok_or("no answer")?;
            offerer
                .set_remote_description(answer)
                .await
                .map_err(|e| e.to_string())?;
            let ice = wait(&mut arx, Ev::Ice).await?;
            let dtls = wait(&mut arx, Ev::Connected).await?;
            let rtp = wait(&mut arx, Ev::FirstRtp).await?;
            Ok::<_, String>(Phases {
                offer_gathered: og - t0,
                answer_gathered: ag - t0,
                ice: ice - t0,
                dtls: dtls - t0,
                first_rtp: rtp - t0,
            })
        }
        .await;
        asend.abort();
        let _ = answerer.close().await;
        inner
    }
    .await;
    osend.abort();
    let _ = offerer.close().await;
    result
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A JSON number, or null when not finite.
fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}")
    } else {
        "null".into()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (mut calls, mut every) = (100usize, 100usize);
    let mut ice_check = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().and_then(|v| v.parse().ok());
        match a.as_str() {
            "--calls" => calls = v.unwrap_or(calls),
            "--rss-every" => every = v.unwrap_or(every).max(1),
            "--ice-check-ms" => ice_check = v.map(|ms| Duration::from_millis(ms as u64)),
            other => eprintln!("ignored argument {other}"),
        }
    }
    let mut rss = vec![(0, rss_kib())];
    let (mut og, mut ag, mut ice, mut dtls, mut first) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut failed = 0;
    for i in 0..calls {
        match once(ice_check).await {
            Ok(p) => {
                og.push(ms(p.offer_gathered));
                ag.push(ms(p.answer_gathered));
                ice.push(ms(p.ice));
                dtls.push(ms(p.dtls));
                first.push(ms(p.first_rtp));
            }
            Err(e) => {
                failed += 1;
                eprintln!("call {i}: {e}");
            }
        }
        if (i + 1) % every == 0 || i + 1 == calls {
            rss.push((i + 1, rss_kib()));
        }
    }
    for v in [&mut og, &mut ag, &mut ice, &mut dtls, &mut first] {
        v.sort_by(f64::total_cmp);
    }
    let med = |v: &[f64]| percentile(v, 0.5);
    eprintln!(
        "webrtc-rs: {calls} calls ({failed} failed); create_offer -> first RTP at the answerer: median {:.1} ms, p95 {:.1} ms, min {:.1}, max {:.1}",
        med(&first),
        percentile(&first, 0.95),
        first.first().copied().unwrap_or(f64::NAN),
        first.last().copied().unwrap_or(f64::NAN)
    );
    eprintln!(
        "  phase medians from create_offer: offer gathered {:.1} ms, answer gathered {:.1}, ICE connected {:.1}, DTLS connected {:.1}, first RTP {:.1}",
        med(&og),
        med(&ag),
        med(&ice),
        med(&dtls),
        med(&first)
    );
    let rss_json: Vec<String> = rss.iter().map(|(n, k)| format!("[{n},{k}]")).collect();
    let ice_check = ice_check.map_or("null".to_string(), |d| d.as_millis().to_string());
    println!(
        "{{\"impl\":\"webrtc-rs 0.21.1\",\"ice_check_ms\":{ice_check},\"calls\":{calls},\"failed\":{failed},\"median_ms\":{},\"p95_ms\":{},\"min_ms\":{},\"max_ms\":{},\"phases_median_ms\":{{\"offer_gathered\":{},\"answer_gathered\":{},\"ice_connected\":{},\"dtls_connected\":{},\"first_rtp\":{}}},\"rss_kib\":[{}]}}",
        num(med(&first)),
        num(percentile(&first, 0.95)),
        num(first.first().copied().unwrap_or(f64::NAN)),
        num(first.last().copied().unwrap_or(f64::NAN)),
        num(med(&og)),
        num(med(&ag)),
        num(med(&ice)),
        num(med(&dtls)),
        num(med(&first)),
        rss_json.join(",")
    );
}

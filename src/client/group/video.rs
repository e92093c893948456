//! Group video off the call's task (which also plays audio out): one thread per call scales
//! each camera picture to the simulcast layers and encodes them; another decodes what the
//! other participants send.
//!
//! ```text
//!  GroupCall::send_video ──picture (bounded, dropped when full)──▶ encoder thread
//!                                                                   │ scale, H.264 per layer
//!  group task ◀──encoded frame (ssrc, timestamp, keyframe)──────────┘
//!      │ keyframe request of the SFU for a layer ──flag──▶ encoder thread (next picture)
//!      │
//!      └─opened frame (bounded; when full: drop, PLI, wait for a keyframe)──▶ decoder thread
//!  GroupCall::recv_video ◀──decoded picture (one decoder per participant)──────┘
//!  group task ◀──source SSRC whose decoder needs a keyframe (PLI, throttled)──┘
//! ```

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use hush_media::video::{
    I420Frame, OpenH264Decoder, OpenH264Encoder, VideoDecoder, VideoEncoder, VideoEncoderConfig,
};
use hush_signaling::DeviceId;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::ParticipantVideoFrame;

/// Pictures waiting for the encoder thread; more are dropped (the thread is behind).
const PICTURE_QUEUE: usize = 2;

/// One encoded frame of one layer, to send.
#[derive(Debug)]
pub(super) struct Encoded {
    /// The layer's SSRC.
    pub(super) ssrc: u32,
    /// 90 kHz, the same on every layer of one picture.
    pub(super) timestamp: u32,
    pub(super) keyframe: bool,
    /// The access unit (Annex B).
    pub(super) data: Vec<u8>,
}

/// One layer the thread encodes.
pub(super) struct LayerSpec {
    pub(super) ssrc: u32,
    pub(super) width: u32,
    pub(super) height: u32,
    pub(super) bitrate_bps: u32,
}

/// What the call's handle, its task and the encoder thread share.
#[derive(Debug)]
pub(super) struct VideoShared {
    /// Video is sent (the application did not disable it).
    pub(super) enabled: AtomicBool,
    /// Per layer (same order as the specs): encode the next picture as a keyframe.
    pub(super) keyframe: Vec<AtomicBool>,
    /// Per layer: encode it at all (the uplink carries it; see `GroupMediaPath::layer_sending`).
    pub(super) active: Vec<AtomicBool>,
    /// Pictures encoded (on every layer).
    pub(super) pictures: AtomicU64,
    /// Pictures dropped because the encoder thread was behind.
    pub(super) dropped: AtomicU64,
}

/// The handle's side: where pictures go.
#[derive(Debug)]
pub(super) struct VideoInput {
    pub(super) pictures: std::sync::mpsc::SyncSender<I420Frame>,
    pub(super) shared: Arc<VideoShared>,
}

/// Starts the encoder thread for `layers` (any order). It ends when the [`VideoInput`] is
/// dropped or the task stops listening.
pub(super) fn start(
    layers: Vec<LayerSpec>,
    out: mpsc::UnboundedSender<Encoded>,
) -> std::io::Result<VideoInput> {
    let shared = Arc::new(VideoShared {
        enabled: AtomicBool::new(true),
        keyframe: layers.iter().map(|_| AtomicBool::new(false)).collect(),
        active: layers.iter().map(|_| AtomicBool::new(true)).collect(),
        pictures: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
    });
    let (tx, rx) = std::sync::mpsc::sync_channel(PICTURE_QUEUE);
    let thread_shared = shared.clone();
    std::thread::Builder::new()
        .name("hush-group-video".into())
        .spawn(move || run(layers, rx, out, &thread_shared))?;
    Ok(VideoInput {
        pictures: tx,
        shared,
    })
}

fn run(
    layers: Vec<LayerSpec>,
    pictures: std::sync::mpsc::Receiver<I420Frame>,
    out: mpsc::UnboundedSender<Encoded>,
    shared: &VideoShared,
) {
    let epoch = Instant::now();
    let mut encoders: Vec<Option<OpenH264Encoder>> = layers.iter().map(|_| None).collect();
    // Tallest first, so that each layer is scaled from the one above it.
    let mut order: Vec<usize> = (0..layers.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(layers[i].height));
    while let Ok(picture) = pictures.recv() {
        let ticks = picture
            .capture_time
            .saturating_duration_since(epoch)
            .as_micros()
            .saturating_mul(9)
            / 100;
        let timestamp = (ticks & u128::from(u32::MAX)) as u32;
        let mut source = picture;
        for &i in &order {
            if !shared.active[i].load(Ordering::Relaxed) {
                // Stopped for the uplink: not encoded (it starts again with a keyframe).
                continue;
            }
            let spec = &layers[i];
            if source.width() != spec.width || source.height() != spec.height {
                match source.scaled(spec.width, spec.height) {
                    Ok(s) => source = s,
                    Err(e) => {
                        debug!(error = %e, "picture not scaled");
                        continue;
                    }
                }
            }
            let encoder = match &mut encoders[i] {
                Some(e) => e,
                None => match OpenH264Encoder::new(VideoEncoderConfig {
                    bitrate_bps: spec.bitrate_bps,
                    ..VideoEncoderConfig::default()
                }) {
                    // Its first frame is a keyframe.
                    Ok(e) => encoders[i].insert(e),
                    Err(e) => {
                        warn!(error = %e, "no video encoder");
                        continue;
                    }
                },
            };
            if shared.keyframe[i].swap(false, Ordering::Relaxed) {
                encoder.request_keyframe();
            }
            match encoder.encode(&source) {
                Ok(Some(e)) => {
                    let frame = Encoded {
                        ssrc: spec.ssrc,
                        timestamp,
                        keyframe: e.keyframe,
                        data: e.data,
                    };
                    if out.send(frame).is_err() {
                        return;
                    }
                }
                // The rate control skipped it.
                Ok(None) => {}
                Err(e) => debug!(error = %e, "video encode failed"),
            }
        }
        shared.pictures.fetch_add(1, Ordering::Relaxed);
    }
}

/// Opened frames waiting for the decoder thread; when it is full the task drops frames and
/// waits for that participant's next keyframe.
const DECODE_QUEUE: usize = 32;

/// Work for the decoder thread.
#[derive(Debug)]
pub(super) enum DecodeJob {
    /// An opened frame of `device`, arrived under `ssrc` on `layer`.
    Frame {
        device: DeviceId,
        ssrc: u32,
        layer: u8,
        data: Vec<u8>,
    },
    /// The participant left: drop its decoder.
    Forget(DeviceId),
}

/// Counters the decoder thread keeps.
#[derive(Debug, Default)]
pub(super) struct DecodeShared {
    /// Pictures decoded per participant.
    pub(super) decoded: std::sync::Mutex<HashMap<DeviceId, u64>>,
    /// Frames the decoders refused.
    pub(super) errors: AtomicU64,
}

/// Starts the decoder thread: one OpenH264 decoder per participant, pictures to `out`, the
/// source SSRC of a stream whose decoder needs a keyframe to `keyframe_needed`. It ends when
/// the returned sender is dropped.
pub(super) fn start_decoder(
    out: mpsc::Sender<ParticipantVideoFrame>,
    keyframe_needed: mpsc::UnboundedSender<u32>,
    shared: Arc<DecodeShared>,
) -> std::io::Result<std::sync::mpsc::SyncSender<DecodeJob>> {
    let (tx, rx) = std::sync::mpsc::sync_channel(DECODE_QUEUE);
    std::thread::Builder::new()
        .name("hush-group-video-dec".into())
        .spawn(move || decode_loop(&rx, &out, &keyframe_needed, &shared))?;
    Ok(tx)
}

fn decode_loop(
    jobs: &std::sync::mpsc::Receiver<DecodeJob>,
    out: &mpsc::Sender<ParticipantVideoFrame>,
    keyframe_needed: &mpsc::UnboundedSender<u32>,
    shared: &DecodeShared,
) {
    let mut decoders: HashMap<DeviceId, OpenH264Decoder> = HashMap::new();
    while let Ok(job) = jobs.recv() {
        let (device, ssrc, layer, data) = match job {
            DecodeJob::Forget(d) => {
                decoders.remove(&d);
                continue;
            }
            DecodeJob::Frame {
                device,
                ssrc,
                layer,
                data,
            } => (device, ssrc, layer, data),
        };
        let decoder = match decoders.entry(device) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => match OpenH264Decoder::new() {
                Ok(d) => e.insert(d),
                Err(err) => {
                    warn!(error = %err, "no video decoder");
                    continue;
                }
            },
        };
        match decoder.decode(&data, Instant::now()) {
            Ok(Some(frame)) => {
                if let Ok(mut m) = shared.decoded.lock() {
                    *m.entry(device).or_insert(0) += 1;
                }
                let _ = out.try_send(ParticipantVideoFrame {
                    device,
                    layer,
                    frame,
                });
            }
            // Parameter sets only.
            Ok(None) => {}
            Err(e) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                debug!(error = %e, "video frame not decoded");
                if keyframe_needed.send(ssrc).is_err() {
                    return;
                }
            }
        }
    }
}

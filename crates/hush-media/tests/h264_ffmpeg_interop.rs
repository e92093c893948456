//! Interop: hush's H.264 RTP stream (RFC 6184 packetization mode 1, plain RTP) read by a
//! real depacketizer and decoder, ffmpeg's, through an SDP over UDP on loopback. The frames
//! ffmpeg decodes must be exactly the frames OpenH264 decodes from the same access units.
//! Needs `ffmpeg` (Debian package, `.ci/install-system-deps`); NOT RUN without it.
#![cfg(feature = "openh264")]

use std::io::Read;
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hush_media::rtp::{ExtensionIds, Packetizer};
use hush_media::video::{
    I420Frame, OpenH264Decoder, OpenH264Encoder, OpenH264Tuning, VideoDecoder, VideoEncoder,
    VideoEncoderConfig,
};

const W: u32 = 320;
const H: u32 = 180;

/// A moving test pattern: a sliding ramp, a bouncing box and a chroma sweep.
fn picture(n: u32, t: Instant) -> I420Frame {
    let mut f = I420Frame::filled(W, H, [16, 128, 128], t).unwrap();
    let [y, u, v] = f.planes_mut();
    let bx = (n * 5) % (W - 40);
    for r in 0..H {
        for c in 0..W {
            let mut px = ((c + 3 * n) / 2 + r / 2) as u8;
            if (bx..bx + 40).contains(&c) && (60..100).contains(&r) {
                px = 230;
            }
            y[(r * W + c) as usize] = px;
        }
    }
    for (i, b) in u.iter_mut().enumerate() {
        *b = 96 + ((i as u32 % (W / 2) + n) % 64) as u8;
    }
    for (i, b) in v.iter_mut().enumerate() {
        *b = 160 - ((i as u32 / (W / 2) + n) % 64) as u8;
    }
    f
}

/// An even UDP port on loopback whose odd neighbour (RTCP) is free too, released for ffmpeg.
fn free_port_pair() -> u16 {
    for _ in 0..200 {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = a.local_addr().unwrap().port();
        if p.is_multiple_of(2) && p < u16::MAX && UdpSocket::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no free even UDP port pair on loopback");
}

#[test]
fn ffmpeg_decodes_hushs_h264_rtp_stream_bit_exactly() {
    if !hush_testkit::system_component("ffmpeg", hush_testkit::on_path("ffmpeg")) {
        return;
    }
    let kinds = run_through_ffmpeg(OpenH264Tuning::default());
    assert!(
        kinds[0] > 0 && kinds[1] > 0,
        "single NAL and STAP-A: {kinds:?}"
    );
}

#[test]
fn ffmpeg_reads_fu_a_fragments_of_whole_picture_slices() {
    if !hush_testkit::system_component("ffmpeg", hush_testkit::on_path("ffmpeg")) {
        return;
    }
    let mut tuning = OpenH264Tuning::default();
    tuning.size_limited_slices = false;
    let kinds = run_through_ffmpeg(tuning);
    assert!(kinds[2] > 0, "FU-A: {kinds:?}");
}

/// Encodes, packetizes and sends the test pattern to ffmpeg; checks its decoded frames against
/// OpenH264's. Returns how many single NAL, STAP-A and FU-A packets were sent.
fn run_through_ffmpeg(tuning: OpenH264Tuning) -> [usize; 3] {
    const FRAMES: usize = 60;
    const TAIL: usize = 15; // extra frames so ffmpeg's reorder queue lets the last ones out
    let t0 = Instant::now();
    let cfg = VideoEncoderConfig {
        bitrate_bps: 1_000_000,
        max_nal_size: 1100,
        ..Default::default()
    };
    let mut enc = OpenH264Encoder::with_tuning(cfg, tuning).unwrap();
    let mut dec = OpenH264Decoder::new().unwrap();
    let mut pz = Packetizer::new(0x4855_5348, 96, 4000, ExtensionIds::default(), 1100);
    let mut ours = Vec::new();
    let mut datagrams: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut n = 0u32;
    let mut kinds = [0usize; 3]; // single NAL, STAP-A, FU-A packets
    while datagrams.len() < FRAMES + TAIL {
        let t = t0 + Duration::from_millis(u64::from(n) * 33);
        let input = picture(n, t);
        n += 1;
        let Some(f) = enc.encode(&input).unwrap() else {
            continue;
        };
        let ts = n * 3000;
        let rtp = pz.h264(ts, &f.data);
        let packets: Vec<Vec<u8>> = rtp.iter().map(|p| p.to_vec()).collect();
        for p in &rtp {
            match p.payload[0] & 0x1f {
                24 => kinds[1] += 1,
                28 => kinds[2] += 1,
                _ => kinds[0] += 1,
            }
        }
        if datagrams.len() < FRAMES {
            ours.push(
                dec.decode(&f.data, t)
                    .unwrap()
                    .expect("own decoder: a picture"),
            );
        }
        datagrams.push(packets);
    }

    let dir = std::env::temp_dir().join(format!(
        "hush-h264-ffmpeg-{}-{}",
        std::process::id(),
        tuning.size_limited_slices
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port_pair();
    let sdp = dir.join("stream.sdp");
    std::fs::write(
        &sdp,
        format!(
            "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=hush\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=video {port} RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n\
             a=fmtp:96 packetization-mode=1\r\n"
        ),
    )
    .unwrap();
    let out = dir.join("out.yuv");
    let mut child = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-y"])
        .args(["-protocol_whitelist", "file,udp,rtp"])
        .arg("-i")
        .arg(&sdp)
        .args(["-frames:v", &FRAMES.to_string()])
        .args(["-f", "rawvideo", "-pix_fmt", "yuv420p"])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Wait until ffmpeg holds the port (our bind then fails), at most 20 s.
    let ready = Instant::now();
    while UdpSocket::bind(("127.0.0.1", port)).is_ok() {
        assert!(
            ready.elapsed() < Duration::from_secs(20),
            "ffmpeg did not open the RTP port"
        );
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    for frame in &datagrams {
        for d in frame {
            sock.send_to(d, ("127.0.0.1", port)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(
        status.is_some_and(|s| s.success()),
        "ffmpeg failed or hung: {status:?}\n{err}"
    );

    let yuv = std::fs::read(&out).unwrap();
    let size = (W * H * 3 / 2) as usize;
    assert_eq!(
        yuv.len(),
        FRAMES * size,
        "ffmpeg decoded {} frames",
        yuv.len() / size
    );
    for (i, (theirs, mine)) in yuv.chunks(size).zip(&ours).enumerate() {
        let mine: Vec<u8> = [mine.y(), mine.u(), mine.v()].concat();
        assert!(
            theirs == mine.as_slice(),
            "frame {i} differs from OpenH264's"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "ffmpeg decoded {FRAMES} frames bit-exactly; packets {kinds:?} (single, STAP-A, FU-A)"
    );
    kinds
}

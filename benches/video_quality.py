#!/usr/bin/env python3
"""Video quality of real hush calls: Y-PSNR and SSIM against the input, beside x264.

Driven by benches/video-quality.sh, which builds the example. For each network condition a
synthetic camera-like clip (made here, deterministic) goes through a real call over loopback
(`two_party_call --video-in/--video-out`: in-process relay, Signal session, SRTP, the media
engine, OpenH264, the ladder, the simulated send link on both sides). The example stamps each
picture's number in its top 32 rows; the receiver's pictures are matched to their input by
that number, and every input picture is scored against what Bob was showing when it was due:
a picture that never came (skipped by the rate control, lost, or late) counts as the previous
one again, as a viewer sees it. The stamp rows are cropped before scoring (ffmpeg's psnr and
ssim filters on the Y plane). Pictures before `--warmup` seconds are not scored: the call
starts at 320x180 and climbs the ladder while the estimate grows.

In the same run, x264 (`-preset veryfast -tune zerolatency`, one thread, rate = maxrate =
buffer) encodes the same stamped pictures at the bitrate hush's encoder produced over the
scored window, and is scored on the same window. Freezes are the receiver's own count
(webrtc-stats: an interval > max(3 x mean, mean + 150 ms)).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np

W, H, FPS = 640, 360, 30
STAMP_ROWS, STAMP_BITS = 32, 16


def make_clip(path, seconds, seed):
    """A camera-like 640x360@30 clip whose motion is periodic over its length (it loops
    without a cut): a detailed textured background panning back and forth, a disc circling,
    a bar crossing, sensor noise of +-2."""
    rng = np.random.default_rng(seed)
    n = seconds * FPS
    span = 320
    bw, bh = W + span, H + 40

    def smooth(a, k):
        for axis in (0, 1):
            c = np.cumsum(np.pad(a, [(k, k) if i == axis else (0, 0) for i in (0, 1)],
                                 mode="wrap"), axis=axis)
            a = (np.take(c, range(2 * k, c.shape[axis]), axis=axis)
                 - np.take(c, range(0, c.shape[axis] - 2 * k), axis=axis)) / (2 * k)
        return a

    tex = np.zeros((bh, bw))
    for k, amp in ((24, 60.0), (8, 24.0), (2, 8.0)):
        layer = smooth(rng.standard_normal((bh, bw)), k)
        tex += amp * layer / (layer.std() + 1e-9)
    # Some hard edges: a few rectangles, as furniture and frames in a room.
    for _ in range(14):
        x, y = rng.integers(0, bw - 80), rng.integers(0, bh - 60)
        tex[y:y + rng.integers(20, 60), x:x + rng.integers(20, 80)] += rng.uniform(-50, 50)
    tex = np.clip(tex + 120, 20, 225)
    cu = np.clip(128 + 25 * smooth(rng.standard_normal((bh // 2, bw // 2)), 16) * 8, 60, 196)
    cv = np.clip(128 + 25 * smooth(rng.standard_normal((bh // 2, bw // 2)), 16) * 8, 60, 196)
    yy, xx = np.mgrid[0:H, 0:W]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{W} H{H} F{FPS}:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(n):
            t = i / n
            ox = int(round(span / 2 * (1 - np.cos(2 * np.pi * t))))
            oy = int(round(20 * (1 - np.cos(4 * np.pi * t))))
            y = tex[oy:oy + H, ox:ox + W].copy()
            cx = W / 2 + 150 * np.cos(4 * np.pi * t)
            cy = H / 2 + 90 * np.sin(4 * np.pi * t)
            y[(xx - cx) ** 2 + (yy - cy) ** 2 < 45 ** 2] = 210
            bx = int(t * (W + 60)) - 60
            y[200:260, max(bx, 0):max(bx + 60, 0)] = 40
            y += rng.integers(-2, 3, size=y.shape)
            u = cu[oy // 2:oy // 2 + H // 2, ox // 2:ox // 2 + W // 2]
            v = cv[oy // 2:oy // 2 + H // 2, ox // 2:ox // 2 + W // 2]
            f.write(b"FRAME\n")
            f.write(np.clip(y, 0, 255).astype(np.uint8).tobytes())
            f.write(u.astype(np.uint8).tobytes())
            f.write(v.astype(np.uint8).tobytes())


def read_y4m(path):
    """The Y planes of a 4:2:0 Y4M file, as an array (frames, H, W)."""
    with open(path, "rb") as f:
        data = f.read()
    header_end = data.index(b"\n")
    tags = dict((t[:1], t[1:]) for t in data[:header_end].decode().split(" ")[1:])
    w, h = int(tags["W"]), int(tags["H"])
    size = w * h * 3 // 2
    frames, at = [], header_end + 1
    while at < len(data):
        at = data.index(b"\n", at) + 1
        frames.append(np.frombuffer(data, np.uint8, w * h, at).reshape(h, w))
        at += size
    return np.stack(frames)


def stamp(y, n):
    """The example's stamp: bit i of `n` in block i of the top rows, white for 1."""
    y = y.copy()
    bits = (np.arange(W) * STAMP_BITS) // W
    y[:STAMP_ROWS, :] = np.where((n >> bits) & 1 == 1, 235, 16)
    return y


def read_stamp(y):
    row = y[STAMP_ROWS // 2]
    xs = (2 * np.arange(STAMP_BITS) + 1) * W // (2 * STAMP_BITS)
    return int(sum(1 << i for i, x in enumerate(xs) if row[x] > 128))


def write_y_only(path, planes):
    """Writes Y planes as a Y4M (grey chroma): the filters then score Y."""
    n, h, w = planes.shape
    grey = np.full(w * h // 2, 128, np.uint8).tobytes()
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{FPS}:1 Ip A1:1 C420jpeg\n".encode())
        for p in planes:
            f.write(b"FRAME\n")
            f.write(np.ascontiguousarray(p).tobytes())
            f.write(grey)


def ffmpeg_scores(dist, ref, workdir):
    """(Y-PSNR, Y-SSIM) of dist against ref with ffmpeg's psnr and ssim filters: the mean of
    the per-picture Y-PSNR (from the filter's stats file, capped at 100 dB) and ffmpeg's mean
    Y-SSIM."""
    stats = os.path.join(workdir, "psnr.log")
    p = subprocess.run(["ffmpeg", "-hide_banner", "-nostats", "-i", dist, "-i", ref,
                        "-lavfi", f"[0:v][1:v]psnr=stats_file={stats}", "-f", "null", "-"],
                       capture_output=True, text=True, check=True)
    with open(stats) as f:
        per = [float(m.group(1)) for m in re.finditer(r"psnr_y:([0-9.]+|inf)", f.read())]
    psnr = float(np.mean(np.minimum(per, 100.0))) if per else float("nan")
    p = subprocess.run(["ffmpeg", "-hide_banner", "-nostats", "-i", dist, "-i", ref,
                        "-lavfi", "[0:v][1:v]ssim", "-f", "null", "-"],
                       capture_output=True, text=True, check=True)
    m = re.search(r"SSIM Y:([0-9.]+)", p.stderr)
    return psnr, float(m.group(1)) if m else float("nan")


def shown_sequence(received, n_frames):
    """The stamps of the received pictures, and for each input picture number 0..n_frames-1
    the index of the received picture shown when it was due (the newest whose stamp is <= its
    number), or -1 before the first."""
    stamps, last = [], -1
    for i in range(len(received)):
        s = read_stamp(received[i])
        # A misread stamp (never seen at these sizes, but cheap to guard): keep order.
        if s < last or s > last + 4 * FPS and last >= 0:
            s = last
        stamps.append(s)
        last = s
    shown, j = [], -1
    for n in range(n_frames):
        while j + 1 < len(stamps) and stamps[j + 1] <= n:
            j += 1
        shown.append(j)
    return stamps, shown


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {}


def run_x264(clip_y4m, n_frames, kbps, workdir):
    """Encodes the first n_frames of the stamped input with x264 at kbps, decodes, returns the
    decoded Y planes and the actual kbps."""
    h264 = os.path.join(workdir, "x264.h264")
    back = os.path.join(workdir, "x264.yuv")
    rate = f"{kbps:.0f}k"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-i", clip_y4m,
                    "-frames:v", str(n_frames), "-c:v", "libx264", "-preset", "veryfast",
                    "-tune", "zerolatency", "-b:v", rate, "-maxrate", rate, "-bufsize", rate,
                    "-threads", "1", "-f", "h264", h264], check=True)
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-i", h264,
                    "-f", "rawvideo", "-pix_fmt", "yuv420p", back], check=True)
    raw = np.fromfile(back, np.uint8)
    frames = raw.reshape(-1, W * H * 3 // 2)[:, :W * H].reshape(-1, H, W)
    actual = os.path.getsize(h264) * 8 / (n_frames / FPS) / 1000
    return frames, actual


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--call-bin", required=True)
    ap.add_argument("--loss", default="0,10,10b6",
                    help="'10' is 10 %% random loss, '10b6' 10 %% in bursts of mean 6")
    ap.add_argument("--rtt", type=int, default=40, help="path round trip, ms")
    ap.add_argument("--seconds", type=int, default=20, help="call length")
    ap.add_argument("--clip-seconds", type=int, default=10)
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds not scored")
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--json", help="append one JSON line per run here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()

    workdir = tempfile.mkdtemp(prefix="hush-vq-")
    clip = os.path.join(workdir, "clip.y4m")
    make_clip(clip, args.clip_seconds, 7)
    clip_y = read_y4m(clip)
    print(f"clip: {len(clip_y)} pictures 640x360@30 (synthetic, looped); call {args.seconds} s, "
          f"RTT {args.rtt} ms, scored from {args.warmup:g} s", flush=True)
    print()
    print("| loss | seed | hush kbps | hush as shown: Y-PSNR / SSIM | hush matched: Y-PSNR / "
          "SSIM | x264 kbps | x264 Y-PSNR / SSIM | hush − x264 dB (shown; matched) | "
          "pictures shown / due | freezes (s) | per minute | keyframes asked |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    summary = {}
    for loss_s in args.loss.split(","):
        loss, burst = (loss_s.split("b") + [None])[:2]
        for seed in [int(s) for s in args.seeds.split(",")]:
            out = os.path.join(workdir, "out.y4m")
            cmd = [args.call_bin, "--video-in", clip, "--video-out", out,
                   "--seconds", str(args.seconds), "--delay-ms", str(args.rtt // 2),
                   "--seed", str(seed)]
            if float(loss) > 0:
                cmd += ["--loss", loss]
            if burst:
                cmd += ["--burst-loss", burst]
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.seconds + 120)
            r = last_json(p.stdout)
            if "video_frames_sent" not in r or not os.path.exists(out):
                sys.stderr.write(p.stdout[-3000:] + p.stderr[-3000:])
                print(f"<!-- loss={loss_s} seed={seed}: call failed -->", flush=True)
                continue
            n = r["video_pictures_offered"]
            # The stamped input, as Alice sent it.
            sent = np.stack([stamp(clip_y[i % len(clip_y)], i) for i in range(n)])
            received = read_y4m(out)
            stamps, shown = shown_sequence(received, n)
            w0 = int(args.warmup * FPS)
            window = range(w0, n)
            if shown[w0] < 0:
                print(f"<!-- loss={loss_s} seed={seed}: nothing shown by {args.warmup} s -->")
                continue
            ref_path = os.path.join(workdir, "ref.y4m")
            dist_path = os.path.join(workdir, "dist.y4m")
            write_y_only(ref_path, sent[w0:, STAMP_ROWS:])
            write_y_only(dist_path, np.stack([received[shown[i]][STAMP_ROWS:] for i in window]))
            psnr, ssim = ffmpeg_scores(dist_path, ref_path, workdir)
            shown_n = len(set(shown[w0:]))
            # Matched: each picture shown in the window against its own input picture.
            mine = [i for i, s in enumerate(stamps) if w0 <= s < n]
            write_y_only(ref_path, np.stack([sent[stamps[i]][STAMP_ROWS:] for i in mine]))
            write_y_only(dist_path, np.stack([received[i][STAMP_ROWS:] for i in mine]))
            m_psnr, m_ssim = ffmpeg_scores(dist_path, ref_path, workdir)
            write_y_only(ref_path, sent[w0:, STAMP_ROWS:])
            # hush's rate over the scored window, from the sender's per-second byte counts.
            cum = r["video_bytes_per_second"]
            s0 = int(args.warmup)
            kbps = (cum[-1] - cum[s0 - 1]) * 8 / (len(cum) - s0) / 1000
            # x264 on the same stamped pictures at that rate, scored on the same window.
            stamped = os.path.join(workdir, "stamped.y4m")
            with open(stamped, "wb") as f:
                f.write(f"YUV4MPEG2 W{W} H{H} F{FPS}:1 Ip A1:1 C420jpeg\n".encode())
                for i in range(n):
                    f.write(b"FRAME\n")
                    f.write(sent[i].tobytes())
                    f.write(read_chroma(clip, i % len(clip_y)))
            x_frames, x_kbps_all = run_x264(stamped, n, kbps, workdir)
            write_y_only(dist_path, x_frames[w0:n, STAMP_ROWS:])
            x_psnr, x_ssim = ffmpeg_scores(dist_path, ref_path, workdir)
            minutes = args.seconds / 60
            row = {"loss": loss_s, "seed": seed, "hush_kbps": kbps, "psnr": psnr, "ssim": ssim,
                   "matched_psnr": m_psnr, "matched_ssim": m_ssim,
                   "x264_kbps": x_kbps_all, "x264_psnr": x_psnr, "x264_ssim": x_ssim,
                   "shown": shown_n, "due": len(window), "freezes": r["freezes"],
                   "freezes_s": r["freezes_s"], "call": r,
                   # Both sides' repair counters (their VideoStats lines): NACKed packets
                   # refused by the retransmission budget, and gaps given up on.
                   "refused_budget": sum(int(x) for x in re.findall(
                       r"retransmissions_refused_budget: (\d+)", p.stdout)),
                   "gap_timeouts": sum(int(x) for x in re.findall(
                       r"gap_timeouts: (\d+)", p.stdout))}
            summary.setdefault(loss_s, []).append(row)
            print(f"| {loss_s} % | {seed} | {kbps:.0f} | {psnr:.2f} / {ssim:.4f} | "
                  f"{m_psnr:.2f} / {m_ssim:.4f} | "
                  f"{x_kbps_all:.0f} | {x_psnr:.2f} / {x_ssim:.4f} | {psnr - x_psnr:+.2f}; "
                  f"{m_psnr - x_psnr:+.2f} | "
                  f"{shown_n} / {len(window)} | {r['freezes']} ({r['freezes_s']:.2f}) | "
                  f"{r['freezes'] / minutes:.1f} | {r.get('keyframe_requests_received', '–')} |", flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
            for path in (out, stamped):
                os.remove(path)
    print()
    base = summary.get("0")
    for loss_s, rows in summary.items():
        fpm = sum(r["freezes"] for r in rows) / (len(rows) * args.seconds / 60)
        x = np.mean([r["x264_psnr"] for r in rows])
        line = f"loss {loss_s}: x264 {x:.2f} dB; {fpm:.1f} freezes/min"
        for key in ("psnr", "matched_psnr"):
            v = np.mean([r[key] for r in rows])
            line += f"; hush {key.replace('_psnr', '')} {v:.2f} dB ({v - x:+.2f} vs x264"
            if base and loss_s != "0":
                line += f", {v - np.mean([r[key] for r in base]):+.2f} vs no loss"
            line += ")"
        print(line)
    if not args.keep:
        shutil.rmtree(workdir)


_CHROMA = {}


def read_chroma(path, i):
    """The chroma planes of picture i of a Y4M file (cached)."""
    if path not in _CHROMA:
        with open(path, "rb") as f:
            data = f.read()
        header_end = data.index(b"\n")
        size = W * H * 3 // 2
        frames, at = [], header_end + 1
        while at < len(data):
            at = data.index(b"\n", at) + 1
            frames.append(data[at + W * H:at + size])
            at += size
        _CHROMA[path] = frames
    return _CHROMA[path][i]


if __name__ == "__main__":
    main()

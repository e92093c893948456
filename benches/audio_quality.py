#!/usr/bin/env python3
"""Audio quality of real hush calls, scored with wideband PESQ (ITU-T P.862.2).

Driven by benches/audio-quality.sh, which installs the tools and builds the binaries. For each
network condition and each speech sample: espeak-ng speech (48 kHz mono) goes through a real
call over loopback (`two_party_call --audio-in/--audio-out`: in-process relay, Signal session,
SRTP, the media engine, Opus, the simulated send link on both sides), and what the callee
played is scored against the input. In the same run, the same speech goes through bare Opus
(`opus_wav`, no network) at the mean bitrate the call's encoder produced: the reference.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import scipy.io.wavfile as wavfile
from pesq import pesq
from scipy.signal import resample_poly

SAMPLES = {
    # name: (espeak-ng voice, text)
    "en-m": ("en-us", "The birch canoe slid on the smooth planks. Glue the sheet to the dark "
             "blue background. It is easy to tell the depth of a well. These days a chicken "
             "leg is a rare dish."),
    "en-f": ("en-us+f3", "Rice is often served in round bowls. The juice of lemons makes fine "
             "punch. The box was thrown beside the parked truck. The hogs were fed chopped "
             "corn and garbage."),
    "de": ("de", "Der Nordwind und die Sonne stritten sich, wer von ihnen beiden wohl der "
           "Stärkere wäre, als ein Wanderer, der in einen warmen Mantel gehüllt war, des "
           "Weges daherkam."),
    "fr": ("fr", "La bise et le soleil se disputaient, chacun assurant qu'il était le plus "
           "fort, quand ils ont vu un voyageur qui s'avançait, enveloppé dans son manteau."),
    "es": ("es", "El viento norte y el sol porfiaban sobre cuál de ellos era el más fuerte, "
           "cuando acertó a pasar un viajero envuelto en ancha capa."),
}


def make_sample(name, workdir):
    voice, text = SAMPLES[name]
    raw = os.path.join(workdir, f"{name}-22k.wav")
    out = os.path.join(workdir, f"{name}.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", raw, text], check=True)
    rate, pcm = wavfile.read(raw)
    if rate != 22050:
        sys.exit(f"espeak-ng wrote {rate} Hz, expected 22050")
    # 22050 -> 48000 = * 320 / 147; 200 ms of silence on both ends, as a caller's pauses.
    up = resample_poly(pcm.astype(np.float64), 320, 147)
    pad = np.zeros(9600)
    up = np.concatenate([pad, up, pad])
    wavfile.write(out, 48000, np.clip(up, -32768, 32767).astype(np.int16))
    return out


def twice(path):
    """The sample played twice in a row (for --twice)."""
    rate, pcm = wavfile.read(path)
    out = path.replace(".wav", "-x2.wav")
    wavfile.write(out, rate, np.concatenate([pcm, pcm]))
    return out


def second_pass(sample, played):
    """The end of what was played: the sample's length plus 100 ms (PESQ aligns the rest)."""
    _, ref = wavfile.read(sample)
    rate, deg = wavfile.read(played)
    out = played.replace(".wav", "-2nd.wav")
    wavfile.write(out, rate, deg[max(0, len(deg) - len(ref) - 4800):])
    return out


def wb_pesq(ref_path, deg_path):
    _, ref = wavfile.read(ref_path)
    _, deg = wavfile.read(deg_path)
    # P.862.2 scores 16 kHz audio.
    ref16 = resample_poly(ref.astype(np.float64), 1, 3)
    deg16 = resample_poly(deg.astype(np.float64), 1, 3)
    return pesq(16000, ref16, deg16, "wb")


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {}


def run_call(args, sample, out, loss, burst, rtt, link, seed):
    cmd = [args.call_bin, "--audio-in", sample, "--audio-out", out,
           "--delay-ms", str(rtt // 2), "--seed", str(seed)]
    if loss > 0:
        cmd += ["--loss", str(loss)]
    if burst:
        cmd += ["--burst-loss", str(burst)]
    if link:
        cmd += ["--bandwidth-kbps", str(link)]
    if args.jitter_ms:
        cmd += ["--jitter-ms", str(args.jitter_ms)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    result = last_json(p.stdout)
    if result.get("result") is None or not os.path.exists(out):
        sys.stderr.write(p.stdout[-2000:] + p.stderr[-2000:])
        return None
    return result


def reference(args, sample, kbps, out):
    p = subprocess.run([args.opus_bin, sample, out, str(int(kbps * 1000))],
                       capture_output=True, text=True, check=True)
    return last_json(p.stdout)


def bare_table(args, samples, workdir):
    """Bare Opus (`opus_wav`) at each target bitrate: WB-PESQ per sample, the bitrate the
    encoder produced and the share of packets it coded above wideband."""
    names = list(samples)
    print(f"| target kbps | {' / '.join(names)} | mean | produced kbps | packets above wideband |")
    print("|---|---|---|---|---|")
    for kbps in [float(x) for x in args.bare_kbps.split(",")]:
        scores, produced, above, total = [], [], 0, 0
        for name, sample in samples.items():
            out = os.path.join(workdir, f"ref-{name}.wav")
            r = reference(args, sample, kbps, out)
            scores.append(wb_pesq(sample, out))
            produced.append(r["audio_kbps"])
            above += r.get("packets_swb", 0) + r.get("packets_fb", 0)
            total += r["frames"]
        print(f"| {kbps:g} | {' / '.join(f'{x:.2f}' for x in scores)} | {np.mean(scores):.2f} | "
              f"{np.mean(produced):.1f} | {100 * above / max(total, 1):.0f} % |", flush=True)


def parse_loss(s):
    """'10' is 10 % random loss; '10b6' is 10 % in bursts of mean 6 packets."""
    if "b" in s:
        loss, burst = s.split("b")
        return float(loss), float(burst)
    return float(s), None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--call-bin", required=True)
    ap.add_argument("--opus-bin", required=True)
    ap.add_argument("--loss", default="0,5,10,20,10b6")
    ap.add_argument("--rtt", default="20,100,300")
    ap.add_argument("--link", default="0,64,24", help="kbps, 0 for unlimited")
    ap.add_argument("--samples", default=",".join(SAMPLES))
    ap.add_argument("--jitter-ms", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="append one JSON line per run here")
    ap.add_argument("--bare-kbps", help="no calls: bare Opus at these target bitrates only")
    ap.add_argument("--twice", action="store_true",
                    help="play each sample twice in one call and score only the second pass "
                         "(what the call sounds like once past its first seconds)")
    args = ap.parse_args()

    workdir = tempfile.mkdtemp(prefix="hush-aq-")
    samples = {n: make_sample(n, workdir) for n in args.samples.split(",")}
    played = {n: twice(s) if args.twice else s for n, s in samples.items()}
    print(f"samples: {', '.join(f'{n} ({SAMPLES[n][0]})' for n in samples)}", flush=True)
    print()
    if args.bare_kbps:
        bare_table(args, samples, workdir)
        return
    print("| link | RTT | loss | WB-PESQ call (mean; min–max) | bare Opus at the call's "
          "bitrate | call − bare | call kbps | frames decoded / FEC / concealed |")
    print("|---|---|---|---|---|---|---|---|")
    for link in [int(x) for x in args.link.split(",")]:
        for rtt in [int(x) for x in args.rtt.split(",")]:
            for loss_s in args.loss.split(","):
                loss, burst = parse_loss(loss_s)
                scores, refs, kbps, counts = [], [], [], [0, 0, 0]
                for i, (name, sample) in enumerate(samples.items()):
                    out = os.path.join(workdir, f"out-{name}.wav")
                    ref_out = os.path.join(workdir, f"ref-{name}.wav")
                    if os.path.exists(out):
                        os.remove(out)
                    r = run_call(args, played[name], out, loss, burst, rtt, link, args.seed + i)
                    if r is None:
                        print(f"<!-- {name} link={link} rtt={rtt} loss={loss_s}: call failed -->",
                              flush=True)
                        continue
                    score = wb_pesq(sample, second_pass(sample, out) if args.twice else out)
                    reference(args, sample, r["audio_kbps"], ref_out)
                    ref_score = wb_pesq(sample, ref_out)
                    scores.append(score)
                    refs.append(ref_score)
                    kbps.append(r["audio_kbps"])
                    counts[0] += r["frames_received"] - r.get("frames_fec", 0)
                    counts[1] += r.get("frames_fec", 0)
                    counts[2] += r["frames_concealed"]
                    if args.json:
                        with open(args.json, "a") as f:
                            f.write(json.dumps({"sample": name, "link_kbps": link, "path_rtt_ms": rtt,
                                                "loss": loss_s, "pesq": score,
                                                "ref_pesq": ref_score, "call": r}) + "\n")
                if not scores:
                    continue
                burst_s = f" bursts (mean {burst:g})" if burst else ""
                link_s = f"{link} kbps" if link else "unlimited"
                mean, ref_mean = np.mean(scores), np.mean(refs)
                print(f"| {link_s} | {rtt} ms | {loss:g} %{burst_s} | {mean:.2f} "
                      f"({min(scores):.2f}–{max(scores):.2f}) | {ref_mean:.2f} | "
                      f"{mean - ref_mean:+.2f} | {np.mean(kbps):.1f} | "
                      f"{counts[0]} / {counts[1]} / {counts[2]} |", flush=True)


if __name__ == "__main__":
    main()

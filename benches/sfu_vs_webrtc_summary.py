#!/usr/bin/env python3
"""Summarises the output of benches/sfu-vs-webrtc.sh (read from a file or stdin).

Per round and mode: hush-sfu flat out (packets out/s, server CPU, us per packet out, packets
out per server CPU-second) and at 50,000 packets out/s (reached rate, server wait, SFU-added
and end-to-end p50/p99); webrtc-rs sfu per ramp step (RTP out/s, CPU, wait, us per packet out,
delivered, p50/p99), its highest step sustained (delivered >= 95 % and RTP out >= 97 % of the
target), and the ratios hush / webrtc-rs of packets out per server CPU-second and of p99 at
50,000 packets out/s.
"""
import json
import re
import statistics
import sys

text = open(sys.argv[1]).read() if len(sys.argv) > 1 else sys.stdin.read()
num = r"([0-9.]+)"
rounds = []  # (round, mode, time, load, hush_flat, hush_50k, ref_steps)
cur = None
section = None
for line in text.splitlines():
    m = re.match(r"== round (\d+), (\w+), (\S+) UTC, load average (\S+)", line)
    if m:
        cur = {"round": int(m[1]), "mode": m[2], "time": m[3], "load": m[4],
               "flat": None, "half": None, "r50": None, "ref": []}
        rounds.append(cur)
        continue
    if cur is None:
        continue
    if line.startswith("-- hush-sfu (flat"):
        section = "flat"
    elif line.startswith("-- hush-sfu (50,000"):
        section = "r50"
    elif line.startswith("-- webrtc-rs"):
        section = "ref"
    elif line.startswith("throughput:"):
        m = re.search(r": " + num + r" packets out/s; server CPU " + num + r" % of a core, " + num +
                      r" us per packet out, " + num + r" packets out per CPU-second", line)
        if m:
            cur["flat"] = dict(out=float(m[1]), cpu=float(m[2]), us=float(m[3]), per_cpu=float(m[4]))
    elif line.startswith("latency at"):
        m = re.search(r"server sent " + num + r" packets out/s at " + num + r" % CPU, waited for a CPU "
                      + num + r" % .*SFU-added \(kernel receive stamp\) \d+ samples, p50 " + num +
                      r" ms, p99 " + num + r" ms; end to end \(client read\) \d+ samples, p50 " + num +
                      r" ms, p99 " + num + r" ms", line)
        if m:
            d = dict(out=float(m[1]), cpu=float(m[2]), wait=float(m[3]), sfu50=float(m[4]),
                     sfu99=float(m[5]), e50=float(m[6]), e99=float(m[7]))
            d["us"] = d["cpu"] / 100 * 1e6 / max(d["out"], 1)
            cur["half" if section == "flat" else "r50"] = d
    elif line.startswith("{") and section == "ref":
        cur["ref"].append(json.loads(line))


def sustained(s):
    # The clients' own sockets overflow now and then (their core is shared): 95 %, not 100 %.
    return s["delivered"] >= 0.95 and s["rtp_out_per_s"] >= 0.97 * s["target_out"]


print("hush-sfu, flat out and at 50,000 packets out/s:")
print("round mode  UTC       load | flat: out/s  CPU%  us/out  out/CPU-s | 50k: out/s  CPU% wait%  us/out  SFU-added p50/p99  end-to-end p50/p99")
for r in rounds:
    f, h = r["flat"], r["r50"]
    fs = f"{f['out']:>9.0f} {f['cpu']:>4.0f} {f['us']:>7.2f} {f['per_cpu']:>9.0f}" if f else " " * 33
    hs = (f"{h['out']:>9.0f} {h['cpu']:>4.0f} {h['wait']:>4.0f} {h['us']:>7.2f}  {h['sfu50']:.2f}/{h['sfu99']:.2f}"
          f"  {h['e50']:.2f}/{h['e99']:.2f}") if h else ""
    print(f"{r['round']:>5} {r['mode']:<5} {r['time']} {r['load']:>5} | {fs} | {hs}")

print()
print("webrtc-rs sfu 0.5, ramp (target -> RTP out/s, CPU %, wait %, us/out, delivered %, p50/p99 ms):")
for r in rounds:
    steps = "; ".join(
        f"{s['target_out']/1000:.1f}k -> {s['rtp_out_per_s']:.0f}, {s['server_cpu']*100:.0f}, "
        f"{s['server_wait']*100:.0f}, {s['us_per_out']:.2f}, {s['delivered']*100:.1f}, "
        f"{s['p50_ms']:.2f}/{s['p99_ms']:.2f}{' *' if sustained(s) else ''}"
        for s in r["ref"])
    best = max((s["target_out"] for s in r["ref"] if sustained(s)), default=0)
    print(f"{r['round']:>5} {r['mode']:<5} max sustained {best:.0f}: {steps}")
print("(* = sustained: delivered >= 95 % and RTP out >= 97 % of the target)")

print()
for mode in ("audio", "video"):
    rs = [r for r in rounds if r["mode"] == mode]
    hush_per_cpu = [r["flat"]["per_cpu"] for r in rs if r["flat"]]
    hush_us_50 = [r["r50"]["us"] for r in rs if r["r50"]]
    ref_us = [s["us_per_out"] for r in rs for s in r["ref"] if sustained(s)]
    ref_us_50 = [s["us_per_out"] for r in rs for s in r["ref"] if s["target_out"] == 50000]
    if not rs:
        continue
    print(f"{mode}: hush packets out per server CPU-second (flat out), median {statistics.median(hush_per_cpu):.0f}"
          if hush_per_cpu else f"{mode}: no hush flat-out figure")
    if ref_us:
        print(f"  webrtc-rs us per packet out on sustained steps: median {statistics.median(ref_us):.2f} "
              f"-> {1e6/statistics.median(ref_us):.0f} packets out per CPU-second")
        if hush_per_cpu:
            print(f"  ratio hush / webrtc-rs (packets out per CPU-second): "
                  f"{statistics.median(hush_per_cpu) / (1e6/statistics.median(ref_us)):.2f}")
    if hush_us_50 and ref_us_50:
        print(f"  at 50,000 out/s: us per packet out hush median {statistics.median(hush_us_50):.2f}, "
              f"webrtc-rs median {statistics.median(ref_us_50):.2f}: ratio webrtc-rs / hush "
              f"{statistics.median(ref_us_50)/statistics.median(hush_us_50):.2f}")
    p99h = [r["r50"]["e99"] for r in rs if r["r50"]]
    p99r = [s["p99_ms"] for r in rs for s in r["ref"] if s["target_out"] == 50000]
    if p99h and p99r:
        print(f"  p99 at 50,000 out/s (end to end, client read): hush median {statistics.median(p99h):.2f} ms, "
              f"webrtc-rs median {statistics.median(p99r):.2f} ms, ratio hush / webrtc-rs "
              f"{statistics.median(p99h)/statistics.median(p99r):.3f}")

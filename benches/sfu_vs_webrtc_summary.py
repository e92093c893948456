#!/usr/bin/env python3
"""Summarises the output of benches/sfu-vs-webrtc.sh (read from the files named, or stdin).

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

text = "".join(open(f).read() for f in sys.argv[1:]) if len(sys.argv) > 1 else sys.stdin.read()
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
print("Per round, hush / webrtc-rs:")
print("  thr = packets out/s, hush flat out (rounds where its server had >= 70 % of a core) vs")
print("        webrtc-rs's highest sustained step (limited by the share of core 0 it got);")
print("  cap = packets out per server CPU-second, hush flat out vs webrtc-rs at its busiest step;")
print("  cost50 = server us per packet out at 50,000 out/s, webrtc-rs / hush;")
print("  p99 = end-to-end p99 at 50,000 out/s, hush / webrtc-rs.")
for mode in ("audio", "video"):
    rs = [r for r in rounds if r["mode"] == mode and r["ref"]]
    thr, cap, cost, p99 = [], [], [], []
    for r in rs:
        f, h = r["flat"], r["r50"]
        best = max((s["target_out"] for s in r["ref"] if sustained(s)), default=0)
        busiest = max(r["ref"], key=lambda s: s["rtp_out_per_s"])
        at50 = [s for s in r["ref"] if s["target_out"] == 50000]
        row = []
        # Only where hush's flat-out run had most of its core (else its clients or the
        # machine were the limit, not the server).
        if f and best and f["cpu"] >= 70:
            thr.append(f["out"] / best)
            row.append(f"thr {f['out']:.0f} / {best:.0f} = {thr[-1]:.2f}")
        if f:
            cap.append(f["per_cpu"] / busiest["out_per_cpu_s"])
            row.append(f"cap {f['per_cpu']:.0f} / {busiest['out_per_cpu_s']:.0f} = {cap[-1]:.2f}")
        if h and at50:
            cost.append(at50[0]["us_per_out"] / h["us"])
            p99.append(h["e99"] / at50[0]["p99_ms"])
            row.append(f"cost50 {at50[0]['us_per_out']:.2f} / {h['us']:.2f} = {cost[-1]:.2f}")
            row.append(f"p99 {h['e99']:.2f} / {at50[0]['p99_ms']:.2f} ms = {p99[-1]:.3f}")
        print(f"  {r['round']:>3} {mode}: " + "; ".join(row))
    med = lambda v: f"{statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f}, {len(v)} rounds)" if v else "-"
    print(f"  {mode} medians: thr {med(thr)}; cap {med(cap)}; cost50 {med(cost)}; p99 {med(p99)}")

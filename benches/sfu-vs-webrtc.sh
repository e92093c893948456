#!/usr/bin/env bash
# SFU forwarding on loopback, hush-sfu vs webrtc-rs's `sfu` crate 0.5, alternating on the same
# machine: the server pinned to core 0, the clients to core 1, both at nice 5 (NICE).
#
#   benches/sfu-vs-webrtc.sh [ROUNDS] [MODES]          (defaults 3 and "audio video")
#
# hush:      crates/hush-sfu/benches/driver.rs (hush-sfu's server in a child process, plain UDP
#            clients with hop SRTP), twice per mode and round: flat out then half that rate
#            (the default command), and paced for 50,000 packets out/s (--out-rate 50000).
# webrtc-rs: crates/hush-sfu/bench-webrtc-sfu (sfu_server: one sfu::Sfu on one UDP port;
#            sfu_clients: N webrtc 0.21 peer connections), one run per mode and round that ramps
#            the rate (REF_AUDIO_RATES / REF_VIDEO_RATES, packets out/s; 25,000, 50,000, then
#            up to 100,000 in steps of 12,500), low to high.
# Shapes: audio = 32 participants, 80-byte payloads, everyone forwarded to the 31 others;
#         video = 8 participants, 1200-byte packets (hush: three simulcast layers, receivers on
#         the top one; webrtc-rs: one track each, forwarded to the 7 others).
# Env: CARGO_TARGET_DIR (hush build, default ./target), WEBRTC_SFU_TARGET_DIR (reference build,
# default crates/hush-sfu/bench-webrtc-sfu/target; webrtc 0.21 and sfu 0.5 take 12-22 min to
# build the first time here), NICE (default 5), REF_PORT / REF_SIGNAL_PORT (default 3478 / 8088).
# Prints every result line (each webrtc-rs step also as one JSON object); save it and run
# `python3 benches/sfu_vs_webrtc_summary.py LOG` for the tables and the ratios.
set -euo pipefail

rounds=${1:-3}
modes=${2:-audio video}
root=$(cd "$(dirname "$0")/.." && pwd)
ref_dir=$root/crates/hush-sfu/bench-webrtc-sfu
ref_target=${WEBRTC_SFU_TARGET_DIR:-$ref_dir/target}
nice_n=${NICE:-5}
port=${REF_PORT:-3478}
signal_port=${REF_SIGNAL_PORT:-8088}
audio_rates=${REF_AUDIO_RATES:-25000,50000,62500,75000,87500,100000}
video_rates=${REF_VIDEO_RATES:-25000,50000,62500,75000,87500,100000}

cd "$root"
bench=$(cargo bench -p hush-sfu --bench driver --no-run 2>&1 | tee /dev/stderr |
  sed -n 's/.*Executable benches\/driver.rs (\(.*\))/\1/p' | tail -n 1)
[ -x "$bench" ] || { echo "no driver bench executable" >&2; exit 1; }
(cd "$ref_dir" && CARGO_TARGET_DIR=$ref_target cargo build --release >&2)

echo "commit $(git rev-parse --short HEAD); load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

ref_run() { # mode
  local flag="" rates=$audio_rates server
  if [ "$1" = video ]; then flag=--video; rates=$video_rates; fi
  taskset -c 0 nice -n "$nice_n" "$ref_target/release/sfu_server" --port "$port" \
    --signal-port "$signal_port" >/dev/null &
  server=$!
  sleep 0.5
  nice -n "$nice_n" taskset -c 1 "$ref_target/release/sfu_clients" \
    --signal "127.0.0.1:$signal_port" $flag --rates "$rates" || echo "webrtc-rs $1 run failed"
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
}

for round in $(seq 1 "$rounds"); do
  for mode in $modes; do
    flag=""; [ "$mode" = video ] && flag=--video
    echo "== round $round, $mode, $(date -u +%H:%M:%S) UTC, load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "-- hush-sfu (flat out, then half of it)"
    nice -n "$nice_n" taskset -c 1 "$bench" --server-cpu 0 $flag || echo "hush $mode run failed"
    echo "-- hush-sfu (50,000 packets out/s)"
    nice -n "$nice_n" taskset -c 1 "$bench" --server-cpu 0 $flag --out-rate 50000 ||
      echo "hush $mode run failed"
    echo "-- webrtc-rs sfu 0.5 (ramp: $([ "$mode" = video ] && echo "$video_rates" || echo "$audio_rates") packets out/s)"
    ref_run "$mode"
  done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

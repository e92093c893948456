#!/usr/bin/env bash
# Call setup on loopback, hush vs webrtc-rs 0.21, one after the other on the same machine.
#
#   benches/call-setup-vs-webrtc.sh [CALLS] [RSS_EVERY]      (defaults 100 and 100)
#
# hush:      benches/call_setup.rs, Client::call -> first decoded frame at the callee, twice:
#            default 20 ms jitter-buffer playout delay, and playout delay 0 (first packet
#            decrypted and decoded, the counterpart of webrtc-rs's first RTP read).
# webrtc-rs: crates/hush-net/bench-webrtc/src/bin/call_setup.rs, create_offer -> first RTP
#            packet read at the answerer, twice: webrtc-rs defaults (200 ms ICE check interval)
#            and with a 20 ms check interval (what hush-net uses).
# Env: CARGO_TARGET_DIR (hush build, default ./target), WEBRTC_TARGET_DIR (reference build,
# default crates/hush-net/bench-webrtc/target; webrtc 0.21 takes ~20 min to build the first time).
# Needs jq. Prints each JSON result, then a side-by-side table with the ratio hush / webrtc-rs.
set -euo pipefail

calls=${1:-100}
every=${2:-100}
root=$(cd "$(dirname "$0")/.." && pwd)
ref_dir=$root/crates/hush-net/bench-webrtc
webrtc_target=${WEBRTC_TARGET_DIR:-$ref_dir/target}
command -v jq >/dev/null || { echo "needs jq" >&2; exit 1; }

cd "$root"
cargo bench --bench call_setup --no-run >&2
(cd "$ref_dir" && CARGO_TARGET_DIR=$webrtc_target cargo build --release --bin call_setup >&2)

echo "commit $(git rev-parse --short HEAD)$(git diff --quiet -- src benches crates || echo ' (+ uncommitted changes)')"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

last_json() { grep '^{' | tail -n 1; }
# Runs a command, copies its output to stderr (the human-readable lines), prints its JSON line.
json_of() { local out; out=$("$@"); printf '%s\n' "$out" >&2; printf '%s\n' "$out" | last_json; }
hush=$(json_of cargo bench --bench call_setup -- --calls "$calls" --rss-every "$every")
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
hush0=$(json_of cargo bench --bench call_setup -- --calls "$calls" --rss-every "$every" --playout-delay-ms 0)
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
ref=$(json_of "$webrtc_target/release/call_setup" --calls "$calls" --rss-every "$every")
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
tuned=$(json_of "$webrtc_target/release/call_setup" --calls "$calls" --rss-every "$every" --ice-check-ms 20)
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%s\n' "$hush" "$hush0" "$ref" "$tuned"

row() { # name json
  jq -r --arg n "$1" '[$n, .calls, .failed, .median_ms, .p95_ms, .min_ms, .max_ms,
    (.rss_kib[0][1]), (.rss_kib[-1][1])] | @tsv' <<<"$2"
}
ratio() { # json-a json-b field
  jq -rn --argjson a "$1" --argjson b "$2" --arg f "$3" '($a[$f] / $b[$f] * 100 | round) / 100'
}
{
  echo -e "impl\tcalls\tfailed\tmedian_ms\tp95_ms\tmin_ms\tmax_ms\trss_first_kib\trss_last_kib"
  row "hush (20 ms playout delay)" "$hush"
  row "hush (playout delay 0)" "$hush0"
  row "webrtc-rs (defaults)" "$ref"
  row "webrtc-rs (20 ms ICE checks)" "$tuned"
} | column -t -s $'\t'
for h in hush hush0; do
  label=$([ $h = hush ] && echo "hush (20 ms playout)" || echo "hush (playout 0)    ")
  for r in ref tuned; do
    rl=$([ $r = ref ] && echo "webrtc-rs (defaults)        " || echo "webrtc-rs (20 ms ICE checks)")
    echo "$label / $rl: median $(ratio "${!h}" "${!r}" median_ms), p95 $(ratio "${!h}" "${!r}" p95_ms)"
  done
done

#!/usr/bin/env bash
# Audio quality benchmark: speech through real hush calls over loopback under loss, delay and
# bandwidth caps, scored with wideband PESQ against the input, beside bare Opus at the same
# bitrate. Run by hand (it takes minutes); results go in docs/benchmarks.md.
#
#   benches/audio-quality.sh [--loss 0,5,10,20,10b6] [--rtt 20,100,300] [--link 0,64,24]
#                            [--samples en-m,en-f,de,fr,es] [--jitter-ms MS] [--json FILE]
#   benches/audio-quality.sh --bare-kbps 10,12,16,20   # bare Opus at these targets, no calls
#   `--twice` plays each sample twice in one call and scores the second pass only.
#
# `--loss 10b6` is 10 % loss in Gilbert–Elliott bursts of mean 6 packets; `--link 0` is no cap.
# Installs espeak-ng (apt) and the Python packages pesq, numpy and scipy (pip) if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v espeak-ng >/dev/null; then
    apt-get update -qq && apt-get install -y -qq espeak-ng
fi
if ! python3 -c 'import pesq, numpy, scipy' 2>/dev/null; then
    pip install -q pesq numpy scipy
fi

export PROTOC="${PROTOC:-$PWD/tools/protoc}"
# Built like `cargo run --example` builds them: the dev profile optimizes opus-pure.
nice -n 10 cargo build -q --example two_party_call
nice -n 10 cargo build -q -p hush-media --example opus_wav
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"

exec python3 benches/audio_quality.py \
    --call-bin "$target_dir/debug/examples/two_party_call" \
    --opus-bin "$target_dir/debug/examples/opus_wav" "$@"

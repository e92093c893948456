#!/usr/bin/env bash
# Video quality benchmark: a synthetic camera-like clip through real hush calls over loopback
# (OpenH264, the ladder, SRTP, NACK/RTX, the simulated send link on both sides), scored with
# ffmpeg's psnr/ssim filters against the input, beside x264 (veryfast, zerolatency) at the
# bitrate hush's encoder produced. Run by hand (minutes); results go in docs/benchmarks.md.
#
#   benches/video-quality.sh [--loss 0,10,10b6] [--rtt 40] [--seconds 20] [--seeds 1,2]
#                            [--warmup 5] [--json FILE]
#
# `--loss 10b6` is 10 % loss in Gilbert–Elliott bursts of mean 6 packets.
# Needs ffmpeg with libx264 (apt) and numpy (pip); installs them if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v ffmpeg >/dev/null; then
    apt-get update -qq && apt-get install -y -qq ffmpeg
fi
if ! python3 -c 'import numpy' 2>/dev/null; then
    pip install -q numpy
fi
export PROTOC="${PROTOC:-$PWD/tools/protoc}"
# nasm on PATH makes OpenH264 use its assembly (as in docs/benchmarks.md).
nice -n 10 cargo build -q --release --example two_party_call
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"

exec nice -n 10 python3 benches/video_quality.py \
    --call-bin "$target_dir/release/examples/two_party_call" "$@"

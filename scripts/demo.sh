#!/usr/bin/env bash
# The main job without a camera: sets everything up, then runs the DepthCLIP pipeline on
# a scene the project renders itself (or on your images: ./scripts/demo.sh --input DIR
# --intrinsics FX FY CX CY) and prints where the results are.
# Weights: real CLIP RN50 weights if they can be had (download, or
# --pretrained /path/to/RN50.pt); otherwise it says how to supply them and goes on with
# random weights, labelling every output as such.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
. scripts/env.sh
exec python -m depthclip_ros.cli demo --fallback-random "$@"

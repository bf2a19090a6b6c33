#!/usr/bin/env bash
# The main job without a camera: sets everything up, then runs the node's DepthCLIP
# pipeline on a corridor the project renders itself (one frame with exact depth, and a
# short recording as a ROS 2 bag), or on yours with one argument changed:
#   ./scripts/demo.sh --input my_recording.mcap   (or .db3, ROS 1 .bag, bag folder)
#   ./scripts/demo.sh --input DIR --intrinsics FX FY CX CY   (images, folders, videos)
# and prints where the results are and how to look at them.
# Weights: real CLIP RN50 weights if they can be had (download, or
# --pretrained /path/to/RN50.pt); otherwise it says how to supply them and goes on with
# random weights, labelling every output as such.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
. scripts/env.sh
exec python -m depthclip_ros.tools.cli demo --fallback-random "$@"

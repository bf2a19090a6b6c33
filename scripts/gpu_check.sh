#!/usr/bin/env bash
# The GPU check (docs/benchmarks.md, "GPU check"): one command for a GPU machine that has
# Python 3.12 and torch and no network.
#
#   scripts/gpu_check.sh --prepare        on a machine with network, first: the wheels of
#                                         what the GPU machine lacks, into gpu-wheels/
#   scripts/gpu_check.sh [--out DIR]      on the GPU machine, from a copy of the repository
#                                         with gpu-wheels/: the CUDA tests, the trunk's
#                                         speed paths, torch.compile and the multi-camera
#                                         batch in under 8 minutes -> DIR/gpu-check.md, .json
#
# scripts/gpu_check.sh --help lists the options (scripts/gpu_check.py does the work; it
# needs nothing beyond Python's standard library before it installs the wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" scripts/gpu_check.py "$@"

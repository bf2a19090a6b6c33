#!/usr/bin/env bash
# The test command: sets everything up, lints, runs the whole suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
. scripts/env.sh
export HF_HUB_OFFLINE=1  # tests never download weights
ruff check .
python -m pytest -q test "$@"

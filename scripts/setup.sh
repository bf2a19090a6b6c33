#!/usr/bin/env bash
# Creates ./.venv with every dependency (idempotent; re-installs only when the
# requirements change). Sourced by demo.sh and test.sh; safe to run on its own.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.depthclip-requirements
want=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements-dev.txt
  echo "$want" > "$stamp"
fi
# The package itself (console scripts depth_node, depthclip-ros; launch/config under
# .venv/share). Non-editable: an editable install would skip the data files.
.venv/bin/python -m pip install -q --no-deps --no-build-isolation . >/dev/null

#!/usr/bin/env bash
# The test command: sets everything up, lints, runs the test suite on the CPU.
#   ./scripts/test.sh                  the whole suite
#   ./scripts/test.sh -m "not slow"    the quick tier (-m unit: fast, no ROS traffic)
#   ./scripts/test.sh test/test_x.py   anything else pytest takes
# Tiers, durations and memory: test/conftest.py, pytest.ini.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
. scripts/env.sh
export HF_HUB_OFFLINE=1  # tests never download weights
ruff check .
if [ $# -eq 0 ]; then
  echo 'test: the whole suite, about 1,280 tests: 8-10 minutes on 2 free cores (longer on'
  echo '  a busy machine), under 4 GB of memory. Quick tier, about 3.5 minutes:'
  echo '  ./scripts/test.sh -m "not slow"'
fi
status=0
python -m pytest -q "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "test: no test was selected by: $*" >&2
fi
exit "$status"

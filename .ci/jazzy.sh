#!/usr/bin/env bash
# CI's Jazzy leg: the package as a ROS 2 Jazzy user installs it (README, "Install for ROS 2
# (Jazzy / Kilted)"), proved on the ROS-facing tests. A venv (.venv-jazzy, gitignored) stands in for
# the distribution: Jazzy's rclpy 7 / Fast DDS 2 wheels and Ubuntu 24.04's numpy 1.26,
# OpenCV 4.6, SciPy, scikit-image, Pillow (requirements-jazzy.txt, Python 3.12 where there
# is one, as on Ubuntu 24.04); then `pip install -r requirements-ros.txt` (constrained by
# those pins, so nothing can move them), the real launch system (../shared/ros-tools),
# `colcon build` and `. install/setup.bash`; then the node over DDS, messages, the managed
# node, launch, bags and a tools smoke, run against that install.
# Idempotent: re-installs only when a requirements file changes. Prints what it installs.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
start=$SECONDS
venv=${JAZZY_VENV:-$repo/.venv-jazzy}
shared=${DEPTHCLIP_SHARED:-$repo/../shared}  # CI: shared/ beside the clone
ros_tools=$shared/ros-tools
if [ ! -x "$ros_tools/install.sh" ]; then
  echo "the Jazzy leg needs the ROS 2 launch system: $ros_tools/install.sh is absent" >&2
  exit 1
fi

pick_python() {  # Jazzy's Python is 3.12; else this machine's python3
  local candidate
  for candidate in "${PYTHON_JAZZY:-}" python3.12 \
      "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12 python3; do
    if [ -n "$candidate" ] && "$candidate" -c 'import sys' 2>/dev/null; then
      echo "$candidate"
      return
    fi
  done
}
say() { echo "=== [$((SECONDS - start)) s] $*"; }
python=$(pick_python)
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
py=$venv/bin/python
say "Jazzy leg: $venv, $("$py" --version)"

quiet() {  # pip's notes about this machine's absent local indexes say nothing
  grep -v "^WARNING: Location 'file://" || true
}
pip_install() {  # no wheel cache: the venv is what is kept (CI's disk is limited)
  "$py" -m pip install -q --no-cache-dir "$@" 2>&1 | quiet
  return "${PIPESTATUS[0]}"
}
stamp=$venv/.depthclip-jazzy
want=$(cat requirements-jazzy.txt requirements-ros.txt "$ros_tools"/install.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing the Jazzy stand-in (requirements-jazzy.txt):"
  grep -v '^#' requirements-jazzy.txt | sed 's/^/    /'
  pip_install -r requirements-jazzy.txt
  # torch's ~3 GB of CUDA library wheels are Python-independent: share .venv's by hard
  # links rather than a second copy (.ci/share_cuda_libs.py; CI's disk ran out without it)
  if [ -x "$repo/.venv/bin/python" ]; then
    "$repo/.venv/bin/python" .ci/share_cuda_libs.py \
      "$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  fi
  say "free disk: $(df -h --output=avail "$venv" | tail -n 1 | tr -d ' ')"
  say "installing requirements-ros.txt as the README says, pinned by requirements-jazzy.txt"
  echo "    (torch and its CUDA libraries: several GB on a first install):"
  grep -v '^#' requirements-ros.txt | sed 's/^/    /'
  pip_install -r requirements-ros.txt -c requirements-jazzy.txt
  say "installing the ROS 2 launch system from $ros_tools"
  PYTHON=$py "$ros_tools/install.sh" 2>&1 | quiet
  echo "$want" > "$stamp"
fi
# What the tests run on: exactly the pins (a failed pin stops the leg here).
"$py" - <<'PY'
from importlib.metadata import version
import re
wanted = {}
for line in open('requirements-jazzy.txt'):
    match = re.match(r'([\w.\-]+)==([\w.]+)', line.split('#')[0].strip())
    if match:
        wanted[match[1]] = match[2]
got = {name: version(name) for name in wanted}
wrong = {name: (got[name], pin) for name, pin in wanted.items() if got[name] != pin}
assert not wrong, f'not the Jazzy pins (installed, pinned): {wrong}'
import cv2, numpy, rclpy, torch  # noqa: E401,F401 - they import together
print('installed: ' + ', '.join(f'{n} {got[n]}' for n in (
    'ros-rclpy', 'ros-rmw-fastrtps-cpp', 'ros-sensor-msgs', 'numpy', 'opencv-python-headless',
    'scipy', 'scikit-image', 'pillow')) + f', torch {version("torch")}')
PY

. "$venv/bin/activate"
. scripts/env.sh  # LOCALHOST discovery, a random ROS_DOMAIN_ID
export HF_HUB_OFFLINE=1
[ -d "$shared/data" ] && export DEPTHCLIP_SHARED_DATA=${DEPTHCLIP_SHARED_DATA:-$shared/data}
# launch_testing's pytest plugins (from ros-tools, unused here) do not load under pytest 9
export PYTEST_ADDOPTS="-p no:launch_testing -p no:launch_ros -p no:launch_pytest ${PYTEST_ADDOPTS:-}"
ws=$(mktemp -d)
trap 'rm -rf "$ws"' EXIT
say "colcon build into $ws, then . install/setup.bash"
colcon --log-base "$ws/log" build --base-paths "$repo" --build-base "$ws/build" \
  --install-base "$ws/install" --event-handlers console_direct- > "$ws/build.txt" 2>&1 \
  || { cat "$ws/build.txt"; exit 1; }
set +u
. "$ws/install/setup.bash"
set -u
say "a tools smoke through ros2 run (the installed console scripts)"
cd "$ws"
"$py" -c 'import depthclip_ros, sys; assert depthclip_ros.__file__.startswith(sys.argv[1]), depthclip_ros.__file__' "$ws/install"
ros2 pkg prefix depthclip_ros
ros2 run depthclip_ros depth_node --help > "$ws/node_help.txt"
grep -q 'pretrained' "$ws/node_help.txt"
"$py" -c 'import cv2, numpy as np; cv2.imwrite("frame.png", np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))'
ros2 run depthclip_ros depthclip-ros infer frame.png --hfov-deg 60 --output infer_out \
  --pretrained none --device cpu --input-size 64 64 --json
for name in frame_depth.npy frame_depth.png frame_preview.png frame.ply frame_summary.json; do
  [ -s "infer_out/$name" ] || { echo "infer wrote no $name" >&2; exit 1; }
done
"$py" -c 'import numpy as np; d = np.load("infer_out/frame_depth.npy"); assert d.shape == (48, 64) and np.isfinite(d).all() and (d > 0).all(), d.shape'
say "the ROS-facing tests against the install (run from $ws, so the"
echo "    installed depthclip_ros is the one imported): messages, the managed node over DDS,"
echo "    the node's start-time refusals, ros2 launch of the three launch files, bags"
set +e
"$py" -m pytest -q -p no:cacheprovider --rootdir "$repo" \
  "$repo/test/test_messages.py" \
  "$repo/test/test_object_messages.py" \
  "$repo/test/test_lifecycle.py" \
  "$repo/test/test_node_start.py" \
  "$repo/test/test_launch.py" \
  "$repo/test/test_bag.py" \
  "$@"
status=$?
set -e
say "Jazzy leg done (pytest exit $status)"
exit "$status"

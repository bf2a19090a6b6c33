#!/usr/bin/env bash
# Creates ./.venv with every dependency (idempotent; re-installs only when the
# requirements change). Run by demo.sh and test.sh; safe to run on its own.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=.venv/.depthclip-requirements
want=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo 'setup: installing the pinned dependencies into ./.venv (requirements-dev.txt:'
  echo '  torch, torchvision, open_clip, the ROS 2 PyPI wheels, OpenCV, scikit-image, pytest,'
  echo '  ruff, and OpenVINO, NNCF and ONNX for backend openvino): about 6 GB on disk and'
  echo '  about 2 minutes with a fast connection, longer on a slow one. The torch wheels carry'
  echo '  CUDA libraries (most of it); they run on the CPU when there is no GPU. Later runs'
  echo '  skip this step.'
  start=$SECONDS
  if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
  fi
  .venv/bin/python -m pip install -q --upgrade pip
  # pip's own progress (each download with its size), not -q: minutes must not be silent
  # --no-cache-dir: the venv is what is kept; a second copy of the wheels in pip's cache
  # would cost another ~3.5 GB of disk
  .venv/bin/python -m pip install --no-cache-dir --progress-bar on -r requirements-dev.txt
  echo "$want" > "$stamp"
  echo "setup: dependencies installed in $((SECONDS - start)) s ($(du -sh .venv | cut -f1)" \
    'in .venv)'
fi
# The real ROS 2 launch system and the `ros2` command (launch, launch_ros, ros2launch ...,
# as wheels in ../shared/ros-tools beside this repository on the project's machines): the
# launch tests run `ros2 launch` with it. A clone without it skips those tests, saying so.
ros_tools=../shared/ros-tools/install.sh
if [ -f "$ros_tools" ] && ! .venv/bin/python -c 'import launch_ros, ros2launch' 2>/dev/null; then
  echo 'setup: installing the ROS 2 launch system and the ros2 command from'
  echo "  $ros_tools (wheels of a few MB, and their small dependencies from PyPI)"
  PYTHON=.venv/bin/python bash "$ros_tools" 2>&1 | grep -v "^WARNING: Location 'file://" || true
  .venv/bin/python -c 'import launch_ros, ros2launch' || {
    echo 'setup: the ROS 2 launch system did not install' >&2; exit 1; }
fi
# The package itself (console scripts depth_node, depthclip-ros; launch/config under
# .venv/share). Non-editable: an editable install would skip the data files.
.venv/bin/python -m pip install -q --no-deps --no-build-isolation . >/dev/null

"""depth_node as a child process for the benchmarks, with traffic kept on this machine.

``isolate_ros_traffic`` must run before rclpy starts: discovery limited to localhost, a
random domain, and the shipped loopback Fast DDS profile (large shared-memory segment).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import random
import subprocess
import sys
import tempfile

PROFILE = Path(__file__).resolve().parents[2] / 'config' / 'fastdds_localhost.xml'


def isolate_ros_traffic() -> None:
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    os.environ.setdefault('ROS_DOMAIN_ID', str(random.randint(1, 101)))
    os.environ['FASTRTPS_DEFAULT_PROFILES_FILE'] = str(PROFILE)


def start_node(parameters: dict) -> subprocess.Popen:
    """``python -m depthclip_ros.node`` with ``parameters`` (a params file), stdout
    discarded, stderr piped (text)."""
    params = Path(tempfile.mkdtemp()) / 'params.yaml'
    params.write_text('/**:\n  ros__parameters:\n' + ''.join(
        f'    {name}: {json.dumps(value)}\n' for name, value in parameters.items()))
    return subprocess.Popen([sys.executable, '-m', 'depthclip_ros.node', '--ros-args',
                             '--params-file', str(params)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

"""Imports go one way (STYLE.md): geometry/metrics need no torch, the model no ROS,
messages no rclpy. Each check runs in a fresh interpreter."""

import subprocess
import sys

import pytest

CASES = [
    ('depthclip_ros.geometry', ('torch', 'rclpy', 'sensor_msgs', 'open_clip')),
    ('depthclip_ros.metrics', ('torch', 'rclpy', 'sensor_msgs', 'open_clip')),
    ('depthclip_ros.model', ('rclpy', 'sensor_msgs', 'open_clip')),  # open_clip: at load()
    ('depthclip_ros.messages', ('rclpy', 'torch')),
    ('depthclip_ros.encodings', ('rclpy', 'torch', 'sensor_msgs')),
    ('depthclip_ros.pipeline', ('rclpy',)),
    ('depthclip_ros.phrases', ('spacy', 'torch', 'rclpy')),
    ('depthclip_ros.referring', ('rclpy', 'sensor_msgs', 'spacy')),
    ('depthclip_ros.objects', ('torch', 'rclpy', 'sensor_msgs')),
    ('depthclip_ros.proposals', ('torch', 'rclpy', 'sensor_msgs', 'skimage')),
    ('depthclip_ros.finder', ('rclpy', 'sensor_msgs')),
    ('depthclip_ros.object_messages', ('rclpy', 'torch', 'vision_msgs')),
    ('depthclip_ros.scenes', ('rclpy', 'sensor_msgs', 'open_clip')),  # open_clip: when used
    ('depthclip_ros.streams', ('rclpy', 'torch', 'sensor_msgs')),
]


@pytest.mark.parametrize('module, forbidden', CASES)
def test_module_does_not_import(module, forbidden):
    code = (f'import sys, {module}; bad = [m for m in {forbidden!r} if m in sys.modules]; '
            f'print(bad); sys.exit(1 if bad else 0)')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert result.returncode == 0, f'{module} imports {result.stdout.strip()}{result.stderr}'

"""The weights hint in the node's own syntax: launch arguments when ``ros2 launch``
started it (the launch files set ``DEPTHCLIP_STARTED_BY_LAUNCH=1``), ROS parameters
otherwise (``ros2 run``, ``python -m depthclip_ros.ros.entry``)."""

from __future__ import annotations

import os

from depthclip_ros.engine.weights import Spelling, WeightsError

LAUNCH_ENV = 'DEPTHCLIP_STARTED_BY_LAUNCH'
ROS_SPELLING = Spelling('-p pretrained:={}', 'a node parameter: after --ros-args, or '
                        '"pretrained: ..." in the --params-file YAML')
LAUNCH_SPELLING = Spelling('pretrained:={}', 'a launch argument: ros2 launch depthclip_ros '
                           'depth.launch.py pretrained:=..., or "pretrained: ..." in its '
                           'params_file')


def node_spelling() -> Spelling:
    """:data:`LAUNCH_SPELLING` under ``ros2 launch``, else :data:`ROS_SPELLING`."""
    return LAUNCH_SPELLING if os.environ.get(LAUNCH_ENV) == '1' else ROS_SPELLING


def with_hint(error: Exception) -> str:
    """The error, with a weights hint in the syntax of how the node was started."""
    if isinstance(error, WeightsError):
        return error.message(node_spelling())
    return str(error)

"""Start depth_node: ros2 launch depthclip_ros depth.launch.py [arg:=value ...].

Arguments (``--show-args`` lists them; one table for all launch files,
depthclip_ros/ros/launch_arguments.py): namespace, params_file (default: the installed
config/depthclip.yaml), image and camera_info (topics to remap the node's inputs to),
use_sim_time, log_level, rviz (also start rviz2 with the shipped config), managed (start
the lifecycle node, depth_lifecycle_node, unconfigured, for a lifecycle manager), and the
start-time choices model, pretrained, device, precision, feature_mode, input_size,
image_transport, which override the params file only when given.
"""

from launch import LaunchDescription
from launch.actions import OpaqueFunction
from launch_ros.actions import Node

from depthclip_ros.ros.launch_arguments import (
    check_given,
    declare,
    flag,
    node_options,
    rviz_options,
)

FILE = 'depth.launch.py'


def generate_launch_description():
    return LaunchDescription([*declare(FILE), OpaqueFunction(function=depth_node)])


def depth_node(context):
    """The node (the lifecycle node with managed:=true) and, with rviz:=true, rviz2."""
    check_given(FILE, context)
    given = context.launch_configurations
    managed = flag('managed', given['managed'])
    rviz = rviz_options(given)
    return [Node(package='depthclip_ros',
                 executable='depth_lifecycle_node' if managed else 'depth_node',
                 **node_options(FILE, given)),
            *([Node(**rviz)] if rviz else [])]

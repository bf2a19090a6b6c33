"""Start one depth_node for several cameras: ros2 launch depthclip_ros cameras.launch.py.

depth.launch.py's node with the shipped config/cameras_example.yaml (``cameras: [front,
left, right]``) layered over config/depthclip.yaml. Arguments (``--show-args``; the table
in depthclip_ros/ros/launch_arguments.py): namespace, params_file, cameras_file (the YAML
naming the cameras), use_sim_time, log_level, managed, and the start-time choices of
depth.launch.py (model, pretrained, device, ...). Remap each camera's inputs at its
driver, or give the drivers the namespaces front, left, right.
"""

from launch import LaunchDescription
from launch.actions import OpaqueFunction
from launch_ros.actions import Node

from depthclip_ros.ros.launch_arguments import check_given, declare, flag, node_options

FILE = 'cameras.launch.py'


def generate_launch_description():
    return LaunchDescription([*declare(FILE), OpaqueFunction(function=depth_node)])


def depth_node(context):
    """The node over every camera (the lifecycle node with managed:=true)."""
    check_given(FILE, context)
    given = context.launch_configurations
    managed = flag('managed', given['managed'])
    return [Node(package='depthclip_ros',
                 executable='depth_lifecycle_node' if managed else 'depth_node',
                 **node_options(FILE, given))]

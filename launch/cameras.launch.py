"""Start one depth_node for several cameras: ros2 launch depthclip_ros cameras.launch.py.

depth.launch.py with the shipped config/cameras_example.yaml (``cameras: [front, left,
right]``) layered over config/depthclip.yaml. Arguments: namespace, cameras_file (the YAML
naming the cameras), use_sim_time, log_level, and the start-time choices of
depth.launch.py (model, pretrained, device, ...). Remap each camera's inputs at its
driver, or give the drivers the namespaces front, left, right.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from depthclip_ros.ros.launch_arguments import overrides, START_TIME_ARGUMENTS


def generate_launch_description():
    share = get_package_share_directory('depthclip_ros')
    arguments = [
        DeclareLaunchArgument('namespace', default_value='',
                              description='namespace of the node (cameras are below it)'),
        DeclareLaunchArgument('params_file',
                              default_value=os.path.join(share, 'config', 'depthclip.yaml'),
                              description='YAML with depth_node parameters'),
        DeclareLaunchArgument('cameras_file',
                              default_value=os.path.join(share, 'config',
                                                         'cameras_example.yaml'),
                              description='YAML naming the cameras (cameras: [...]), applied '
                                          'over params_file'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='use /clock (bag replay, simulation)'),
        DeclareLaunchArgument('log_level', default_value='info',
                              description='debug, info, warn, error or fatal'),
        *(DeclareLaunchArgument(name, default_value='',
                                description=f'{text} (default: the params file)')
          for name, text in START_TIME_ARGUMENTS.items()),
    ]
    return LaunchDescription([*arguments, OpaqueFunction(function=depth_node)])


def depth_node(context):
    """The node over every camera, with the start-time arguments that were given."""
    given = {name: LaunchConfiguration(name).perform(context) for name in START_TIME_ARGUMENTS}
    return [Node(
        package='depthclip_ros',
        executable='depth_node',
        name='depth_node',
        namespace=LaunchConfiguration('namespace'),
        output='screen',
        emulate_tty=True,
        parameters=[LaunchConfiguration('params_file'), LaunchConfiguration('cameras_file'),
                    {'use_sim_time': ParameterValue(LaunchConfiguration('use_sim_time'),
                                                    value_type=bool)},
                    overrides(given)],
        arguments=['--ros-args', '--log-level', LaunchConfiguration('log_level')],
        additional_env={'DEPTHCLIP_STARTED_BY_LAUNCH': '1'},
    )]

"""Start depth_node: ros2 launch depthclip_ros depth.launch.py [arg:=value ...].

Arguments: namespace, params_file (default: the installed config/depthclip.yaml), image
and camera_info (topics to remap the node's inputs to), use_sim_time, log_level, rviz
(also start rviz2 with the shipped config).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    share = get_package_share_directory('depthclip_ros')
    namespace = LaunchConfiguration('namespace')
    arguments = [
        DeclareLaunchArgument('namespace', default_value='',
                              description='namespace of the node and its topics'),
        DeclareLaunchArgument('params_file',
                              default_value=os.path.join(share, 'config', 'depthclip.yaml'),
                              description='YAML with depth_node parameters'),
        DeclareLaunchArgument('image', default_value='image',
                              description='colour image topic (sensor_msgs/Image)'),
        DeclareLaunchArgument('camera_info', default_value='camera_info',
                              description='CameraInfo topic of that image'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='use /clock (bag replay, simulation)'),
        DeclareLaunchArgument('log_level', default_value='info',
                              description='debug, info, warn, error or fatal'),
        DeclareLaunchArgument('rviz', default_value='false',
                              description='also start rviz2 with the shipped config'),
    ]
    node = Node(
        package='depthclip_ros',
        executable='depth_node',
        name='depth_node',
        namespace=namespace,
        output='screen',
        emulate_tty=True,
        parameters=[LaunchConfiguration('params_file'),
                    {'use_sim_time': ParameterValue(LaunchConfiguration('use_sim_time'),
                                                    value_type=bool)}],
        remappings=[('image', LaunchConfiguration('image')),
                    ('camera_info', LaunchConfiguration('camera_info'))],
        arguments=['--ros-args', '--log-level', LaunchConfiguration('log_level')],
    )
    rviz = Node(
        package='rviz2',
        executable='rviz2',
        namespace=namespace,
        arguments=['-d', os.path.join(share, 'config', 'depthclip.rviz')],
        parameters=[{'use_sim_time': ParameterValue(LaunchConfiguration('use_sim_time'),
                                                    value_type=bool)}],
        condition=IfCondition(LaunchConfiguration('rviz')),
    )
    return LaunchDescription([*arguments, node, rviz])

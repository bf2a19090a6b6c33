"""Start depth_node: ros2 launch depthclip_ros depth.launch.py [arg:=value ...].

Arguments (``--show-args`` lists them): namespace, params_file (default: the installed
config/depthclip.yaml), image and camera_info (topics to remap the node's inputs to),
use_sim_time, log_level, rviz (also start rviz2 with the shipped config), managed (start
the lifecycle node, depth_lifecycle_node, unconfigured), and the start-time choices model,
pretrained, device, precision, feature_mode, input_size, image_transport, which override
the params file only when given.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from depthclip_ros.ros.launch_arguments import overrides, START_TIME_ARGUMENTS


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
        DeclareLaunchArgument('managed', default_value='false',
                              description='start depth_lifecycle_node (unconfigured, for a '
                                          'lifecycle manager) instead of depth_node'),
        *(DeclareLaunchArgument(name, default_value='',
                                description=f'{text} (default: the params file)')
          for name, text in START_TIME_ARGUMENTS.items()),
    ]
    rviz = Node(
        package='rviz2',
        executable='rviz2',
        namespace=namespace,
        arguments=['-d', os.path.join(share, 'config', 'depthclip.rviz')],
        parameters=[{'use_sim_time': ParameterValue(LaunchConfiguration('use_sim_time'),
                                                    value_type=bool)}],
        condition=IfCondition(LaunchConfiguration('rviz')),
    )
    return LaunchDescription([*arguments, OpaqueFunction(function=depth_node), rviz])


def depth_node(context):
    """The node, with the start-time arguments that were given as parameter overrides."""
    given = {name: LaunchConfiguration(name).perform(context) for name in START_TIME_ARGUMENTS}
    managed = LaunchConfiguration('managed').perform(context).lower() in ('true', '1', 'yes')
    return [Node(
        package='depthclip_ros',
        executable='depth_lifecycle_node' if managed else 'depth_node',
        name='depth_node',
        namespace=LaunchConfiguration('namespace'),
        output='screen',
        emulate_tty=True,
        parameters=[LaunchConfiguration('params_file'),
                    {'use_sim_time': ParameterValue(LaunchConfiguration('use_sim_time'),
                                                    value_type=bool)},
                    overrides(given)],
        remappings=[('image', LaunchConfiguration('image')),
                    ('camera_info', LaunchConfiguration('camera_info'))],
        arguments=['--ros-args', '--log-level', LaunchConfiguration('log_level')],
        # error hints then name launch arguments (pretrained:=none), not --ros-args syntax
        additional_env={'DEPTHCLIP_STARTED_BY_LAUNCH': '1'},
    )]

"""depth_lifecycle_node brought up by launch's own lifecycle events: configure (validate
the parameters, load the model), then activate once it is inactive.

    ros2 launch depthclip_ros depth_lifecycle.launch.py [params_file:=...] [image:=...]

Under Nav2, leave this file out and add ``depth_node`` to a lifecycle manager's
``node_names`` instead (README, "Managed node").
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition


def generate_launch_description():
    share = get_package_share_directory('depthclip_ros')
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
    ]
    node = LifecycleNode(
        package='depthclip_ros',
        executable='depth_lifecycle_node',
        name='depth_node',
        namespace=LaunchConfiguration('namespace'),
        output='screen',
        parameters=[LaunchConfiguration('params_file')],
        remappings=[('image', LaunchConfiguration('image')),
                    ('camera_info', LaunchConfiguration('camera_info'))],
        additional_env={'DEPTHCLIP_STARTED_BY_LAUNCH': '1'},
    )
    configure = EmitEvent(event=ChangeState(
        lifecycle_node_matcher=matches_action(node),
        transition_id=Transition.TRANSITION_CONFIGURE))
    activate_once_inactive = RegisterEventHandler(OnStateTransition(
        target_lifecycle_node=node, goal_state='inactive',
        entities=[EmitEvent(event=ChangeState(
            lifecycle_node_matcher=matches_action(node),
            transition_id=Transition.TRANSITION_ACTIVATE))]))
    return LaunchDescription([*arguments, node, activate_once_inactive, configure])

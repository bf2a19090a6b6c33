"""depth_lifecycle_node, configured (parameters validated, model loaded) and then
activated by this launch file:

    ros2 launch depthclip_ros depth_lifecycle.launch.py [arg:=value ...]

The arguments of depth.launch.py but ``managed`` (``--show-args``; the table in
depthclip_ros/ros/launch_arguments.py). Under Nav2, leave this file out: start
``depth.launch.py managed:=true`` and add ``depth_node`` to a lifecycle manager's
``node_names`` (docs/node.md, "Managed node").

The transitions are asked for on launch's own event loop, which also runs its shutdown:
Ctrl-C at any moment (before the node's services exist, while it configures) ends the
launch cleanly. launch_ros's ChangeState events would wait for the service on a worker
thread that shutdown can overtake (launch then exits 1 with "cannot use Destroyable
because destruction was requested"). The node is still a launch_ros ``LifecycleNode``:
a including launch file can handle its state transitions and emit ChangeState events.
"""

import asyncio

from launch import LaunchDescription
from launch.actions import OpaqueFunction
from launch.event_handlers import OnProcessExit
import launch.logging
from launch_ros.actions import LifecycleNode, Node
from launch_ros.ros_adapters import get_ros_node
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState

from depthclip_ros.ros.launch_arguments import check_given, declare, node_options, rviz_options

FILE = 'depth_lifecycle.launch.py'


def generate_launch_description():
    return LaunchDescription([*declare(FILE), OpaqueFunction(function=depth_node)])


def depth_node(context):
    """The lifecycle node, what brings it up and, with rviz:=true, rviz2."""
    check_given(FILE, context)
    given = context.launch_configurations
    node = LifecycleNode(package='depthclip_ros', executable='depth_lifecycle_node',
                         **node_options(FILE, given))
    rviz = rviz_options(given)
    return [node, OpaqueFunction(function=bring_up, args=[node]),
            *([Node(**rviz)] if rviz else [])]


def bring_up(context, node):
    """Configure, then activate ``node`` (an executed LifecycleNode action)."""
    exited = []
    context.register_event_handler(OnProcessExit(
        target_action=node, on_exit=lambda event, context: exited.append(event)))
    context.add_completion_future(context.asyncio_loop.create_task(
        transitions(context, node.node_name, lambda: context.is_shutdown or exited)))


async def transitions(context, node_name: str, stop) -> None:
    """Ask for configure, then activate, through ``node_name``'s change_state service; give
    up as soon as ``stop()`` (launch shuts down or the node's process has ended).

    Runs on launch's event loop and checks ``context.is_shutdown`` (set at Ctrl-C before the
    shutdown event destroys launch's ROS node) before each use of the client, so it never
    touches a destroyed client and returns promptly once launch shuts down."""
    logger = launch.logging.get_logger(FILE)
    client = get_ros_node(context).create_client(ChangeState, f'{node_name}/change_state')
    for transition, label in ((Transition.TRANSITION_CONFIGURE, 'configure'),
                              (Transition.TRANSITION_ACTIVATE, 'activate')):
        while not stop() and not client.service_is_ready():
            await asyncio.sleep(0.1)
        if stop():
            return
        request = ChangeState.Request()
        request.transition.id = transition
        future = client.call_async(request)
        while not future.done():
            if stop():
                future.cancel()
                return
            await asyncio.sleep(0.1)
        if future.exception() is not None or not future.result().success:
            logger.error(f'{node_name}: {label} failed (the node logged why); it stays '
                         f'{"unconfigured" if label == "configure" else "inactive"}')
            return
    logger.info(f'{node_name} is active')

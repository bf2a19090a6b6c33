"""depth_lifecycle_node over DDS, driven through its lifecycle services as a lifecycle
manager drives it (CPU, random weights, small input)."""

from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
import numpy as np
import rclpy
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image

from depthclip_ros.ros.node import DepthLifecycleNode

from conftest import TINY_MODEL
from rosutil import camera_info, rgb8_image, Spinner, unique_namespace, wait_for

SMALL = [Parameter('model', value=TINY_MODEL), Parameter('pretrained', value='none'),
         Parameter('device', value='cpu'), Parameter('input_size', value=[64, 96])]
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


class Manager:
    """What a lifecycle manager does: calls change_state and get_state."""

    def __init__(self, context, namespace):
        self.node = rclpy.create_node('manager', namespace=namespace, context=context)
        self.change = self.node.create_client(ChangeState, 'depth_node/change_state')
        self.get = self.node.create_client(GetState, 'depth_node/get_state')
        assert self.change.wait_for_service(timeout_sec=20)
        assert self.get.wait_for_service(timeout_sec=20)

    def _call(self, client, request, timeout=60.0):
        for _ in range(3):  # a request right after discovery can be lost: ask again
            future = client.call_async(request)
            if wait_for(future.done, timeout / 3):
                return future.result()
        raise AssertionError('no answer from the lifecycle service')

    def transition(self, transition_id) -> bool:
        request = ChangeState.Request()
        request.transition.id = transition_id
        return self._call(self.change, request).success

    def state(self) -> int:
        return self._call(self.get, GetState.Request()).current_state.id


def start(context, namespace, overrides=SMALL):
    node = DepthLifecycleNode(context=context, namespace=namespace,
                              parameter_overrides=list(overrides))
    spinner = Spinner(context, node)
    manager = Manager(context, namespace)
    spinner.add(manager.node)
    return node, manager, spinner


def test_configure_activate_deactivate_cleanup_shutdown(ros):
    namespace = unique_namespace('managed')
    node, manager, spinner = start(ros, namespace)
    peer = rclpy.create_node('camera', namespace=namespace, context=ros)
    spinner.add(peer)
    got = []
    peer.create_subscription(Image, 'depth/image', got.append, RELIABLE)
    image_pub = peer.create_publisher(Image, 'image', qos_profile_sensor_data)
    info_pub = peer.create_publisher(CameraInfo, 'camera_info', qos_profile_sensor_data)
    rgb = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)

    def send(sec):
        info_pub.publish(camera_info(48, 64, 60.0, 60.0, 31.5, 23.5))
        image_pub.publish(rgb8_image(rgb, sec=sec))

    try:
        assert manager.state() == State.PRIMARY_STATE_UNCONFIGURED
        assert node.engine is None and peer.count_publishers(f'{namespace}/depth/image') == 0
        assert manager.transition(Transition.TRANSITION_CONFIGURE)
        assert manager.state() == State.PRIMARY_STATE_INACTIVE
        assert node.engine is not None and node.engine.loaded
        assert node.count_subscribers(f'{namespace}/image') == 0  # not listening yet
        for sec in range(5):  # inactive: nothing comes out
            send(sec)
        assert not wait_for(lambda: got, 1.5)

        assert manager.transition(Transition.TRANSITION_ACTIVATE)
        assert manager.state() == State.PRIMARY_STATE_ACTIVE
        assert wait_for(lambda: (send(10), len(got) > 0)[1], 30, period=0.3)

        assert manager.transition(Transition.TRANSITION_DEACTIVATE)
        assert manager.state() == State.PRIMARY_STATE_INACTIVE
        assert wait_for(lambda: peer.count_subscribers(f'{namespace}/image') == 0, 5)
        count = len(got)
        for sec in range(20, 25):
            send(sec)
        assert not wait_for(lambda: len(got) > count, 1.5)
        assert node.streams[0].slot is None  # the waiting frame was dropped

        assert manager.transition(Transition.TRANSITION_CLEANUP)
        assert manager.state() == State.PRIMARY_STATE_UNCONFIGURED
        assert node.engine is None and node.streams[0].pub_depth is None
        # configure again from scratch, then shut down from inactive
        assert manager.transition(Transition.TRANSITION_CONFIGURE)
        assert manager.transition(Transition.TRANSITION_INACTIVE_SHUTDOWN)
        assert manager.state() == State.PRIMARY_STATE_FINALIZED
        assert node.engine is None
    finally:
        spinner.stop()
        peer.destroy_node()
        manager.node.destroy_node()
        node.destroy_node()


def test_a_failed_configure_stays_unconfigured_with_the_reason(ros, capfd):
    overrides = [Parameter('pretrained', value='/nonexistent/RN50.pt'),
                 Parameter('device', value='cpu'), Parameter('input_size', value=[64, 96])]
    node, manager, spinner = start(ros, unique_namespace('failing'), overrides)
    try:
        assert not manager.transition(Transition.TRANSITION_CONFIGURE)
        assert manager.state() == State.PRIMARY_STATE_UNCONFIGURED
        assert node.engine is None
        err = capfd.readouterr().err
        assert 'configure failed, still unconfigured' in err and 'does not exist' in err, err
        # shutdown works from unconfigured too
        assert manager.transition(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN)
        assert manager.state() == State.PRIMARY_STATE_FINALIZED
    finally:
        spinner.stop()
        manager.node.destroy_node()
        node.destroy_node()

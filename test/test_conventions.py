"""The conventions ROS tools rely on, checked over DDS (CPU, random weights, small input):
image_transport's CameraInfo pairing for every image the node publishes, and the
compressed transport following the image topic."""

import functools

import cv2
import numpy as np
import pytest
import rclpy
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from depthclip_ros.ros.node import DepthNode

from conftest import TINY_MODEL
from rosutil import camera_info, rgb8_image, Spinner, unique_namespace, wait_for

SMALL = [Parameter('model', value=TINY_MODEL), Parameter('pretrained', value='none'),
         Parameter('device', value='cpu'), Parameter('input_size', value=[64, 96])]
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
H, W = 48, 64


def sibling_camera_info(image_topic: str) -> str:
    """image_transport's rule (CameraPublisher/Subscriber, depth_image_proc, rviz2's
    DepthCloud and Camera displays): an image's CameraInfo is the sibling ``camera_info``."""
    return f'{image_topic.rsplit("/", 1)[0]}/camera_info'


@pytest.mark.parametrize('namespace, remap, output_size', [
    ('', False, [0, 0]),
    ('robot/front', False, [24, 32]),
    ('', True, [96, 128]),
])
def test_every_published_image_pairs_with_a_camera_info_of_its_size(ros, namespace, remap,
                                                                    output_size):
    cli = ['--ros-args', '-r', 'image:=/camera/color/image_raw',
           '-r', 'camera_info:=/camera/color/camera_info'] if remap else None
    node = DepthNode(context=ros, namespace=namespace, cli_args=cli, parameter_overrides=[
        *SMALL, Parameter('publish_colormap', value=True),
        Parameter('output_size', value=output_size),
        # objects/labels too: a label image aligned with depth/image
        Parameter('object_queries', Parameter.Type.STRING_ARRAY, ['a thing']),
        Parameter('object_max_masks', value=2)])
    node.load()
    peer = rclpy.create_node('camera', context=ros)
    spinner = Spinner(ros, node, peer)
    try:
        ours = {name: types for name, types in
                node.get_publisher_names_and_types_by_node('depth_node', node.get_namespace())}
        images = sorted(t for t, types in ours.items() if 'sensor_msgs/msg/Image' in types)
        assert images, ours
        got = {}
        frame_id = unique_namespace('optical')[1:]  # only this test's frames count

        def keep(store, msg):
            if msg.header.frame_id == frame_id:
                store.append(msg)
        for topic in images + [sibling_camera_info(t) for t in images]:
            kind = Image if topic in images else CameraInfo
            got[topic] = []
            peer.create_subscription(kind, topic, functools.partial(keep, got[topic]), RELIABLE)
        image_in = node.resolve_topic_name('image')
        info_in = node.resolve_topic_name('camera_info')
        image_pub = peer.create_publisher(Image, image_in, qos_profile_sensor_data)
        info_pub = peer.create_publisher(CameraInfo, info_in, qos_profile_sensor_data)
        rgb = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)

        def arrived():
            info_pub.publish(camera_info(H, W, 60.0, 60.0, 31.5, 23.5, frame_id=frame_id))
            image_pub.publish(rgb8_image(rgb, frame_id=frame_id))
            return all(got.values())
        assert wait_for(arrived, 30, period=0.3), {k: len(v) for k, v in got.items()}
        for topic in images:
            info_topic = sibling_camera_info(topic)
            assert info_topic in ours, f'{topic} pairs with {info_topic}, not published'
            image, info = got[topic][-1], got[info_topic][-1]
            assert (image.height, image.width) == (info.height, info.width), topic
            assert info.header.frame_id == image.header.frame_id
        expected = (H, W) if output_size == [0, 0] else tuple(output_size)
        depth_topic = node.resolve_topic_name('depth/image')
        assert (got[depth_topic][-1].height, got[depth_topic][-1].width) == expected
    finally:
        spinner.stop()
        node.stop()
        node.destroy_node()
        peer.destroy_node()


def test_the_compressed_stream_follows_the_remapped_image_topic(ros):
    camera = unique_namespace('camera')  # an input topic no other run publishes to
    node = DepthNode(context=ros, cli_args=['--ros-args', '-r',
                                            f'image:={camera}/color/image_raw'],
                     parameter_overrides=[*SMALL, Parameter('image_transport',
                                                            value='compressed')])
    node.load()
    peer = rclpy.create_node('camera', context=ros)
    spinner = Spinner(ros, node, peer)
    try:
        assert wait_for(lambda: peer.count_subscribers(
            f'{camera}/color/image_raw/compressed') == 1, 10)
        assert peer.count_subscribers('/image/compressed') == 0
        assert peer.count_subscribers(f'{camera}/color/image_raw') == 0  # one transport
        got = []
        peer.create_subscription(Image, 'depth/image', lambda m: m.header.frame_id == camera[1:]
                                 and got.append(m), RELIABLE)
        info_pub = peer.create_publisher(CameraInfo, 'camera_info', qos_profile_sensor_data)
        pub = peer.create_publisher(CompressedImage, f'{camera}/color/image_raw/compressed',
                                    qos_profile_sensor_data)
        rgb = np.random.default_rng(1).integers(0, 255, (H, W, 3), dtype=np.uint8)
        msg = CompressedImage(format='png')
        msg.header.frame_id = camera[1:]
        msg.data = cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()

        def arrived():
            info_pub.publish(camera_info(H, W, 60.0, 60.0, 31.5, 23.5))
            pub.publish(msg)
            return bool(got)
        assert wait_for(arrived, 30, period=0.3)
    finally:
        spinner.stop()
        node.stop()
        node.destroy_node()
        peer.destroy_node()

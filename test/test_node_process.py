"""depth_node as its own process over real DDS, fed the real RealSense frame from the
bag in ../shared/data (CPU, random weights), then stopped with SIGINT and SIGTERM.

Each test's node and peer share a namespace of their own: another run on this host that
drew the same ROS domain never answers this run's frames."""

from pathlib import Path
import signal
import socket
import subprocess
import time

import numpy as np
import pytest
import rclpy
from rclpy.qos import qos_profile_sensor_data, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header

from depthclip_ros.geometry import backproject, Intrinsics
from depthclip_ros.ros.messages import (
    camera_info_for,
    cloud_array,
    depth_from_image,
    rgb_from_image,
    rgb_image,
)
from depthclip_ros.tools import node_process

from conftest import shared_data
from rosutil import repeat_until, Spinner, unique_namespace, wait_for

HERE = Path(__file__).resolve().parent
LOOPBACK_PROFILE = str(HERE.parent / 'config' / 'fastdds_localhost.xml')
BAG = ('bags', 'realsense_d435_single_frame_ros2')


def read_realsense_frame():
    from rosbags.highlevel import AnyReader
    path = shared_data(*BAG)
    found = {}
    with AnyReader([path]) as reader:
        for connection, _, raw in reader.messages():
            kind = {'/camera/color/image_raw': Image,
                    '/camera/color/camera_info': CameraInfo}.get(connection.topic)
            if kind:
                found[connection.topic] = deserialize_message(bytes(raw), kind)
    return found['/camera/color/image_raw'], found['/camera/color/camera_info']


PARAMS = {'pretrained': 'none', 'device': 'cpu', 'cloud_rgb': True, 'cloud_stride': 2,
          'max_depth_m': 20.0}


def start_node(namespace, extra=(), **env):
    """The node in ``namespace``, its inputs remapped to the bag's topics in there, with
    ``env`` added to its environment."""
    return node_process.start_node(
        PARAMS, namespace, ['-r', 'image:=camera/color/image_raw',
                            '-r', 'camera_info:=camera/color/camera_info', *extra],
        env={'FASTDDS_DEFAULT_PROFILES_FILE': LOOPBACK_PROFILE,
             'FASTRTPS_DEFAULT_PROFILES_FILE': LOOPBACK_PROFILE, 'PYTHONUNBUFFERED': '1',
             **env}, stdout=subprocess.PIPE, cwd=HERE.parent)


def stop(process: subprocess.Popen, stop_signal) -> tuple[str, float]:
    """Send ``stop_signal``; the node's stderr and the seconds it took to exit."""
    started = time.monotonic()
    process.send_signal(stop_signal)
    try:
        _, err = process.communicate(timeout=10)
    finally:
        process.kill()
    return err, time.monotonic() - started


def assert_exited_cleanly(process: subprocess.Popen, err: str, exit_s: float) -> None:
    assert process.returncode == 0, err
    assert exit_s < 2.0 + 1.0, exit_s  # 2 s budget, 1 s slack for process exit
    assert 'Traceback' not in err, err


@pytest.mark.parametrize('stop_signal', [signal.SIGINT, signal.SIGTERM])
def test_real_frame_through_the_node_process(stop_signal, monkeypatch):
    image, info = read_realsense_frame()
    rgb = rgb_from_image(image)
    namespace = unique_namespace('replay')
    process = start_node(namespace)
    monkeypatch.setenv('FASTDDS_DEFAULT_PROFILES_FILE', LOOPBACK_PROFILE)
    monkeypatch.setenv('FASTRTPS_DEFAULT_PROFILES_FILE', LOOPBACK_PROFILE)
    context = rclpy.Context()
    rclpy.init(context=context)
    peer = rclpy.create_node('replay', namespace=namespace, context=context)
    got = {'depth': [], 'info': [], 'points': []}
    reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    peer.create_subscription(Image, 'depth/image', got['depth'].append, reliable)
    peer.create_subscription(CameraInfo, 'depth/camera_info', got['info'].append, reliable)
    peer.create_subscription(PointCloud2, 'points', got['points'].append, reliable)
    image_pub = peer.create_publisher(Image, 'camera/color/image_raw', qos_profile_sensor_data)
    info_pub = peer.create_publisher(CameraInfo, 'camera/color/camera_info',
                                     qos_profile_sensor_data)
    spinner = Spinner(context, peer)

    def replay():
        info_pub.publish(info)
        image_pub.publish(image)

    try:
        assert wait_for(lambda: image_pub.get_subscription_count() > 0
                        or process.poll() is not None, 120), 'node never subscribed'
        assert process.poll() is None, process.stderr.read()
        # best effort: resend until the outputs came back (model load, discovery, load)
        assert repeat_until(replay, lambda: all(got.values()), 180), \
            {k: len(v) for k, v in got.items()}
        depth_msg, depth_info, cloud = got['depth'][0], got['info'][0], got['points'][0]
        for msg in (depth_msg, depth_info, cloud):
            assert msg.header == image.header  # the camera's stamp and frame_id
        assert image.header.frame_id == 'camera_color_optical_frame'
        assert (depth_msg.encoding, depth_msg.height, depth_msg.width) == ('32FC1', 480, 640)
        assert (depth_info.height, depth_info.width) == (480, 640)
        assert list(depth_info.k) == list(info.k)
        depth = depth_from_image(depth_msg)
        assert np.isfinite(depth).all() and depth.min() > 0
        camera = Intrinsics(info.k[0], info.k[4], info.k[2], info.k[5], 640, 480)
        points = cloud_array(cloud)
        assert (cloud.height, cloud.width) == (240, 320)
        assert [f.name for f in cloud.fields] == ['x', 'y', 'z', 'rgb']
        expected = backproject(depth, camera, 2, 0.1, 20.0)
        for i, axis in enumerate('xyz'):
            np.testing.assert_array_equal(points[axis], expected[..., i])
        packed = points['rgb'].view(np.uint32)
        assert ((packed >> 16) & 0xFF)[10, 10] == rgb[20, 20, 0]
    finally:
        spinner.stop()
        peer.destroy_node()
        rclpy.try_shutdown(context=context)
        err, exit_s = stop(process, stop_signal)
    assert_exited_cleanly(process, err, exit_s)


@pytest.mark.parametrize('launched', [False, True])
def test_missing_weights_end_the_node_with_one_clear_message(tmp_path, launched):
    """The hint names the parameter as the user gives it: ``-p pretrained:=...`` to
    ``ros2 run`` / ``python -m``, the launch argument ``pretrained:=...`` under
    ``ros2 launch`` (the launch file sets DEPTHCLIP_STARTED_BY_LAUNCH=1)."""
    process = start_node(unique_namespace('no_weights'),
                         ['-p', f'pretrained:={tmp_path / "RN50.pt"}'],
                         DEPTHCLIP_STARTED_BY_LAUNCH='1' if launched else '')
    out, err = process.communicate(timeout=120)
    assert process.returncode == 1
    assert err.count('does not exist') == 1 and err.count('Supply weights') == 1, err
    assert '--pretrained' not in err  # the tools' syntax
    if launched:
        assert 'depth.launch.py pretrained:=' in err and '-p pretrained:=' not in err
    else:
        assert '-p pretrained:=none' in err
    assert 'Traceback' not in err


def test_uncached_weights_without_network_end_the_node_in_seconds(tmp_path):
    """The default ``pretrained: openai`` with nothing cached and no hub to reach (a closed
    loopback port stands for it): one message, no hub retries (about 50 s before)."""
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    process = start_node(unique_namespace('offline'), ['-p', 'pretrained:=openai'],
                         HF_HUB_OFFLINE='', HF_HOME=str(tmp_path / 'hf_home'),
                         HF_HUB_CACHE=str(tmp_path / 'hf_home' / 'hub'),
                         HF_ENDPOINT=f'http://127.0.0.1:{port}')
    out, err = process.communicate(timeout=120)
    assert process.returncode == 1, err
    assert err.count('not in the local cache') == 1 and 'no network' in err, err
    assert err.count('Supply weights') == 1
    assert 'Retrying' not in err and 'Traceback' not in err, err
    assert time.monotonic() - started < 40  # the start of python and torch included


@pytest.mark.parametrize('stop_signal', [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_inference_lets_the_frame_finish_then_exits_cleanly(stop_signal):
    """Frames stream in faster than the node's CPU inference (about 0.1 s at 224x224), so
    the signal lands mid-frame. rclpy's own handler would shut the context down under the
    worker: 'inference failed ... publisher's context is invalid' and, now and then, a
    traceback from the executor with exit code 1 (seen on CI)."""
    node_process.isolate_ros_traffic()
    namespace = unique_namespace('signal')
    process = node_process.start_node({'pretrained': 'none', 'device': 'cpu',
                                       'input_size': [224, 224]}, namespace)
    context = rclpy.Context()
    rclpy.init(context=context)
    peer = rclpy.create_node('camera', namespace=namespace, context=context)
    depth = []
    peer.create_subscription(Image, 'depth/image', depth.append,
                             QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    image_pub = peer.create_publisher(Image, 'image', qos_profile_sensor_data)
    info_pub = peer.create_publisher(CameraInfo, 'camera_info', qos_profile_sensor_data)
    header = Header(frame_id='camera_optical_frame')
    image = rgb_image(np.random.default_rng(0).integers(0, 256, (48, 64, 3), np.uint8), header)
    info = camera_info_for(Intrinsics(60.0, 60.0, 32.0, 24.0, 64, 48), header)
    spinner = Spinner(context, peer)
    try:
        deadline = time.monotonic() + 180
        while len(depth) < 3 and time.monotonic() < deadline and process.poll() is None:
            info_pub.publish(info)
            image_pub.publish(image)
            time.sleep(0.02)
        assert len(depth) >= 3, process.stderr.read() if process.poll() is not None else ''
        for _ in range(10):  # keep the worker busy right up to the signal
            image_pub.publish(image)
            time.sleep(0.02)
        err, exit_s = stop(process, stop_signal)
    finally:
        spinner.stop()
        peer.destroy_node()
        rclpy.try_shutdown(context=context)
    assert_exited_cleanly(process, err, exit_s)
    assert 'inference failed' not in err and '[ERROR]' not in err, err

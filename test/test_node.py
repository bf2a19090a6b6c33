"""depth_node in-process over real rclpy / Fast DDS (CPU, random weights, small input)."""

import math
import time

import cv2
from hypothesis import given, HealthCheck, settings
from hypothesis import strategies as st
import numpy as np
import pytest
import rclpy
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

from depthclip_ros.encodings import ENCODINGS
from depthclip_ros.geometry import backproject, Intrinsics
from depthclip_ros.messages import cloud_array, depth_from_image
from depthclip_ros.node import DepthNode

from rosutil import camera_info, rgb8_image, Spinner, wait_for

H, W = 96, 128
FX, FY, CX, CY = 110.0, 112.0, 63.5, 47.5
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
SMALL = [Parameter('pretrained', value='none'), Parameter('device', value='cpu'),
         Parameter('input_size', value=[64, 96])]


class Harness:
    """A camera (publishers) and a consumer (subscribers) around one DepthNode."""

    def __init__(self, context, namespace='', overrides=()):
        self.node = DepthNode(context=context, namespace=namespace,
                              parameter_overrides=[*SMALL, *overrides])
        self.node.load()
        self.peer = rclpy.create_node('peer', namespace=namespace, context=context)
        self.image_pub = self.peer.create_publisher(Image, 'image', qos_profile_sensor_data)
        self.info_pub = self.peer.create_publisher(CameraInfo, 'camera_info',
                                                   qos_profile_sensor_data)
        self.got = {'depth': [], 'depth/camera_info': [], 'points': []}
        for topic, kind in (('depth', Image), ('depth/camera_info', CameraInfo),
                            ('points', PointCloud2)):
            self.peer.create_subscription(kind, topic, self.got[topic].append, RELIABLE)

    def send(self, rgb=None, sec=100, info=True, image=None):
        if info:
            self.info_pub.publish(camera_info(H, W, FX, FY, CX, CY))
        if image is None:
            rgb = rgb if rgb is not None else np.random.default_rng(sec).integers(
                0, 256, (H, W, 3), dtype=np.uint8)
            image = rgb8_image(rgb, sec=sec)
        self.image_pub.publish(image)

    def wait_outputs(self, count=1, timeout=30.0):
        return wait_for(lambda: all(len(v) >= count for v in self.got.values()), timeout)

    def connected(self):
        return wait_for(lambda: self.node.count_subscribers('image') > 0
                        and self.node.pub_points.get_subscription_count() > 0, 10)

    def close(self):
        self.node.stop()
        self.node.destroy_node()
        self.peer.destroy_node()


@pytest.fixture
def ros():
    context = rclpy.Context()
    rclpy.init(context=context)
    yield context
    rclpy.try_shutdown(context=context)


@pytest.fixture
def harness(ros):
    h = Harness(ros)
    spinner = Spinner(ros, h.node, h.peer)
    assert h.connected()
    yield h
    spinner.stop()
    h.close()


def wrap_predict(monkeypatch, engine, before):
    """Make ``engine.predict`` call ``before()`` first (to slow it down or make it fail)."""
    real_predict = engine.predict

    def predict(*args, **kwargs):
        before()
        return real_predict(*args, **kwargs)

    monkeypatch.setattr(engine, 'predict', predict)


def send_until_output(h, count=1, **kwargs):
    """Best-effort input may lose the first messages while discovery settles: resend."""
    for attempt in range(20):
        h.send(sec=100 + attempt, **kwargs)
        if h.wait_outputs(count, timeout=3.0):
            return True
    return False


def test_outputs_match_the_input_and_each_other(harness):
    assert send_until_output(harness)
    depth_msg = harness.got['depth'][-1]
    info = harness.got['depth/camera_info'][-1]
    cloud = harness.got['points'][-1]
    assert depth_msg.encoding == '32FC1' and (depth_msg.height, depth_msg.width) == (H, W)
    for msg in (depth_msg, info, cloud):
        assert msg.header.frame_id == 'camera_optical' and msg.header.stamp.sec >= 100
    assert depth_msg.header.stamp == info.header.stamp == cloud.header.stamp
    assert (info.height, info.width) == (H, W) and info.k[0] == FX and info.k[5] == CY
    depth = depth_from_image(depth_msg)
    assert np.isfinite(depth).all() and depth.min() > 0
    # The cloud is the back-projection of the published depth with the published K.
    camera = Intrinsics(info.k[0], info.k[4], info.k[2], info.k[5], info.width, info.height)
    points = cloud_array(cloud)
    expected = backproject(depth, camera, 1, 0.1, 10.0)
    assert (cloud.height, cloud.width) == (H, W) and not cloud.is_dense
    for i, axis in enumerate('xyz'):
        np.testing.assert_array_equal(points[axis], expected[..., i])


def test_metric_scale_follows_the_camera_focal(harness):
    rgb = np.random.default_rng(5).integers(0, 256, (H, W, 3), dtype=np.uint8)
    assert send_until_output(harness, rgb=rgb)
    first = depth_from_image(harness.got['depth'][-1]).copy()
    n = len(harness.got['depth'])
    harness.info_pub.publish(camera_info(H, W, 2 * FX, 2 * FY, CX, CY))
    assert wait_for(lambda: harness.node.pipeline.latest_info is not None
                    and harness.node.pipeline.latest_info.k[0] == 2 * FX, 5)
    harness.send(rgb=rgb, info=False, sec=200)
    assert wait_for(lambda: len(harness.got['depth']) > n, 20)
    np.testing.assert_allclose(depth_from_image(harness.got['depth'][-1]), 2 * first, rtol=1e-6)


def test_stride_rgb_and_range_parameters_apply_live(harness):
    result = harness.node.set_parameters([Parameter('cloud_stride', value=2),
                                          Parameter('cloud_rgb', value=True),
                                          Parameter('max_depth_m', value=1.0)])
    assert all(r.successful for r in result)
    assert send_until_output(harness)
    cloud = harness.got['points'][-1]
    assert (cloud.height, cloud.width) == (H // 2, W // 2)
    assert [f.name for f in cloud.fields] == ['x', 'y', 'z', 'rgb']
    # Random-weight depths are >= 1 m canonical * ~0.21 focal ratio: some exceed 1.0 m or
    # not; either way every point beyond max_depth_m is NaN.
    z = cloud_array(cloud)['z']
    assert np.all(np.isnan(z) | (z <= 1.0))


def test_bad_frames_are_rejected_counted_and_the_next_good_one_processed(harness):
    assert send_until_output(harness)
    bad = rgb8_image(np.zeros((H, W, 3), np.uint8))
    bad.encoding = 'weird16'
    short = rgb8_image(np.zeros((H, W, 3), np.uint8))
    short.data = bytes(10)
    before = harness.node.counts['rejected']
    for msg in (bad, short):
        harness.send(image=msg)
        assert wait_for(lambda seen=before: harness.node.counts['rejected'] > seen, 10)
        before = harness.node.counts['rejected']
    n = len(harness.got['depth'])
    assert send_until_output(harness, count=n + 1)


def test_missing_camera_info_is_reported_or_uses_the_fallback_fov(ros):
    h = Harness(ros, namespace='nocal')
    spinner = Spinner(ros, h.node, h.peer)
    try:
        assert h.connected()
        for attempt in range(20):
            h.send(info=False, sec=10 + attempt)
            if wait_for(lambda: h.node.counts['rejected'] > 0, 1.0):
                break
        assert h.node.counts['rejected'] > 0 and not h.got['depth']
        assert h.node.set_parameters([Parameter('fallback_hfov_deg', value=60.0)])[0].successful
        assert send_until_output(h, info=False)
        info = h.got['depth/camera_info'][-1]
        assert info.k[0] == pytest.approx(0.5 * W / math.tan(math.radians(30)))
    finally:
        spinner.stop()
        h.close()


def test_parameter_services_accept_and_reject_with_reasons(harness, ros):
    from rclpy.parameter_client import AsyncParameterClient
    client_node = rclpy.create_node('param_client', context=ros)
    harness_spinner = Spinner(ros, client_node)
    try:
        client = AsyncParameterClient(client_node, 'depth_node')
        assert client.wait_for_services(timeout_sec=10.0)

        def set_one(name, value):
            future = client.set_parameters([Parameter(name, value=value)])
            assert wait_for(future.done, 10)
            return future.result().results[0]

        texts = harness.node.engine.text_encodings
        assert set_one('temperature', 0.2).successful
        assert set_one('depth_bins_m', [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]).successful
        for name, value, reason in [
                ('depth_bins_m', [1.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 'strictly increasing'),
                # (a count mismatch between prompts and bins is accepted and waits for its
                # partner: test_node_hardening.py)
                ('temperature', 0.0, ''), ('temperature', math.nan, ''),
                ('temperature', 'warm', ''), ('model', 'RN101', ''),
                ('min_depth_m', 50.0, 'min_depth_m'), ('prompt_template', 'no slots', 'two')]:
            result = set_one(name, value)
            assert not result.successful, (name, value)
            assert reason in result.reason
        values = {name: harness.node.get_parameter(name).value
                  for name in ('temperature', 'depth_bins_m', 'model')}
        assert values['temperature'] == 0.2 and values['model'] == 'RN50'
        assert list(values['depth_bins_m']) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
        assert send_until_output(harness)
        assert harness.node.engine.head.temperature == 0.2
        assert harness.node.engine.text_encodings == texts  # no re-encoding for bins
    finally:
        harness_spinner.stop()
        client_node.destroy_node()


def test_two_namespaced_nodes_do_not_interfere(ros):
    left, right = Harness(ros, 'left'), Harness(ros, 'right')
    spinner = Spinner(ros, left.node, left.peer, right.node, right.peer)
    try:
        assert left.connected() and right.connected()
        assert send_until_output(left)
        assert right.node.counts['received'] == 0 and not right.got['depth']
        assert send_until_output(right)
        assert left.node.get_fully_qualified_name() == '/left/depth_node'
    finally:
        spinner.stop()
        left.close()
        right.close()


def test_newest_frame_wins_and_counts_add_up(harness, monkeypatch):
    assert send_until_output(harness)
    # A camera faster than the network.
    wrap_predict(monkeypatch, harness.node.engine, lambda: time.sleep(0.2))
    for i in range(30):
        time.sleep(0.01)
        harness.send(sec=1000 + i, info=(i == 0))
    counts = harness.node.counts
    assert wait_for(lambda: harness.node._slot is None and counts['received']
                    == counts['processed'] + counts['dropped'] + counts['rejected']
                    + counts['failed'] + counts['skipped_no_subscribers'], 30)
    assert counts['dropped'] > 0
    # The last frame sent is the last one processed.
    assert wait_for(lambda: harness.got['depth'][-1].header.stamp.sec == 1029, 10)


def test_output_size_colormap_and_diagnostics(ros):
    from diagnostic_msgs.msg import DiagnosticArray
    h = Harness(ros, 'extras', [Parameter('publish_colormap', value=True),
                                Parameter('output_size', value=[48, 64])])
    colormaps, diagnostics = [], []
    h.peer.create_subscription(Image, 'depth/colormap', colormaps.append, RELIABLE)
    h.peer.create_subscription(DiagnosticArray, '/diagnostics', diagnostics.append, 10)
    spinner = Spinner(ros, h.node, h.peer)
    try:
        assert h.connected()
        assert send_until_output(h)
        depth, info = h.got['depth'][-1], h.got['depth/camera_info'][-1]
        assert (depth.height, depth.width) == (info.height, info.width) == (48, 64)
        assert info.k[0] == pytest.approx(FX / 2) and info.k[5] == pytest.approx(CY / 2)
        assert wait_for(lambda: colormaps, 10)
        assert colormaps[-1].encoding == 'rgb8' and (colormaps[-1].height,
                                                     colormaps[-1].width) == (48, 64)

        def after_a_frame():  # the 1 Hz status published once a frame was processed
            return [s for a in diagnostics for s in a.status
                    if s.name == '/extras/depth_node: depth'
                    and any(kv.key == 'frames processed' and kv.value != '0'
                            for kv in s.values)]
        assert wait_for(after_a_frame, 5)
        status = after_a_frame()[-1]
        values = {kv.key: kv.value for kv in status.values}
        assert values['random weights'] == 'True' and values['model'] == 'RN50 (none)'
        for key in ('input rate (Hz)', 'output rate (Hz)', 'frames dropped',
                    'latency end-to-end median (ms)', 'stage network median (ms)', 'device'):
            assert key in values, key
    finally:
        spinner.stop()
        h.close()


def test_an_inference_error_drops_one_frame_and_the_node_goes_on(harness, monkeypatch):
    assert send_until_output(harness)
    calls = []

    def fail_once():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError('CUDA out of memory (simulated)')

    wrap_predict(monkeypatch, harness.node.engine, fail_once)
    harness.send(sec=500)
    assert wait_for(lambda: harness.node.counts['failed'] == 1, 10)
    n = len(harness.got['depth'])
    assert send_until_output(harness, count=n + 1)


def test_compressed_images_when_enabled(ros):
    h = Harness(ros, 'jpeg', [Parameter('use_compressed', value=True)])
    pub = h.peer.create_publisher(CompressedImage, 'image/compressed', qos_profile_sensor_data)
    spinner = Spinner(ros, h.node, h.peer)
    rgb = np.random.default_rng(7).integers(0, 256, (H, W, 3), dtype=np.uint8)
    ok, png = cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok

    def compressed(data, sec):
        msg = CompressedImage(format='png', data=bytes(data))
        msg.header.frame_id, msg.header.stamp.sec = 'camera_optical', sec
        return msg

    try:
        assert wait_for(lambda: h.node.count_subscribers('image/compressed') > 0, 10)
        assert h.connected()
        for attempt in range(20):
            h.info_pub.publish(camera_info(H, W, FX, FY, CX, CY))
            pub.publish(compressed(png.tobytes(), 300 + attempt))
            if h.wait_outputs(1, timeout=3.0):
                break
        depth_msg = h.got['depth'][-1]
        assert depth_msg.header.stamp.sec >= 300 and depth_msg.header.frame_id == \
            'camera_optical'
        expected = h.node.engine.predict(rgb, Intrinsics(FX, FY, CX, CY, W, H))
        np.testing.assert_allclose(depth_from_image(depth_msg), expected, rtol=1e-5)
        before = h.node.counts['rejected']
        pub.publish(compressed(b'not a png at all', 400))  # corrupt: rejected, node goes on
        assert wait_for(lambda: h.node.counts['rejected'] > before, 10)
        n = len(h.got['depth'])
        for attempt in range(20):
            pub.publish(compressed(png.tobytes(), 500 + attempt))
            if h.wait_outputs(n + 1, timeout=3.0):
                break
        assert len(h.got['depth']) > n
    finally:
        spinner.stop()
        h.close()


field_text = st.text(max_size=10)
fuzz_floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                        st.integers(-5, 200).map(float))


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(encoding=st.one_of(st.sampled_from(sorted(ENCODINGS)), field_text),
       height=st.integers(0, 40), width=st.integers(0, 40), step=st.integers(0, 200),
       length=st.integers(0, 6000), big=st.booleans(),
       info_size=st.tuples(st.integers(0, 60), st.integers(0, 60)),
       k=st.lists(fuzz_floats, min_size=9, max_size=9), model=field_text,
       d=st.lists(fuzz_floats, max_size=8), frame_id=field_text,
       stamp=st.integers(0, 2**31 - 1), compressed=st.booleans())
def test_fuzzed_messages_through_the_node_callbacks(harness, encoding, height, width, step,
                                                    length, big, info_size, k, model, d,
                                                    frame_id, stamp, compressed):
    """Whatever the fields, the CameraInfo callback and the worker's per-frame function
    never raise: each frame ends processed or rejected with a reason, counted once."""
    info = CameraInfo(height=info_size[0], width=info_size[1], distortion_model=model)
    info.k, info.d = k, d
    harness.node.pipeline.on_camera_info(info)  # the camera_info subscription's callback
    data = np.random.default_rng(length).integers(0, 256, length, dtype=np.uint8).tobytes()
    if compressed:
        msg = CompressedImage(format=encoding, data=data)
    else:
        msg = Image(height=height, width=width, encoding=encoding, step=step,
                    is_bigendian=int(big), data=data)
    msg.header.frame_id, msg.header.stamp.sec = frame_id, stamp
    counts = harness.node.counts
    before = counts['processed'] + counts['rejected']
    harness.node._process(msg, time.monotonic())  # what the worker thread runs per frame
    assert counts['processed'] + counts['rejected'] == before + 1
    assert counts['failed'] == 0

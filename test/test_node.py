"""depth_node in-process over real rclpy / Fast DDS (CPU, the tests' tiny random model, small
input; tests that leave the node as they found it share one node: ``shared``).

Deterministic by construction: every harness has a namespace of its own (another test, or
another run that drew the same ROS domain on this host, is never heard), its frames carry
its own frame_id and a stamp per frame, outputs are matched to the frame by stamp, and
best-effort input is resent until the awaited condition holds, within generous limits.
"""

import functools
import math
import time

import cv2
import numpy as np
import pytest
import rclpy
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

from depthclip_ros.geometry import backproject, Intrinsics
from depthclip_ros.ros.messages import cloud_array, depth_from_image
from depthclip_ros.ros.node import DepthNode

from conftest import random_models_shared, TINY_MODEL
from rosutil import (
    camera_info,
    own_context,
    repeat_until,
    rgb8_image,
    serving,
    Spinner,
    unique_namespace,
    wait_for,
)

H, W = 96, 128
FX, FY, CX, CY = 110.0, 112.0, 63.5, 47.5
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
SMALL = [Parameter('model', value=TINY_MODEL), Parameter('pretrained', value='none'),
         Parameter('device', value='cpu'), Parameter('input_size', value=[64, 96])]
OUTPUTS = {'depth/image': Image, 'depth/camera_info': CameraInfo, 'points': PointCloud2}
CONNECT_S = 30.0  # discovery between two nodes of one process (well under 1 s when quiet)
OUTPUT_S = 60.0  # a frame's outputs, resending the frame every 2 s meanwhile


class Harness:
    """A camera (publishers) and a consumer (subscribers) around one DepthNode, in a
    namespace of their own. ``got`` keeps the outputs of this harness's frames (its
    frame_id); anything else heard on its topics goes to ``foreign``."""

    def __init__(self, context, name='cam', overrides=(), camera_qos=qos_profile_sensor_data):
        self.namespace = unique_namespace(name)
        self.frame_id = f'{self.namespace[1:]}_optical'
        self.frame_ids = 0
        self.node = DepthNode(context=context, namespace=self.namespace,
                              parameter_overrides=[*SMALL, *overrides])
        self.node.load()
        self.peer = rclpy.create_node('peer', namespace=self.namespace, context=context)
        self.image_pub = self.peer.create_publisher(Image, 'image', camera_qos)
        self.info_pub = self.peer.create_publisher(CameraInfo, 'camera_info', camera_qos)
        self.got = {topic: [] for topic in OUTPUTS}
        self.foreign = []
        for topic, kind in OUTPUTS.items():
            self.subscribe(kind, topic, self.got[topic])

    def subscribe(self, kind, topic, store, qos=RELIABLE):
        self.peer.create_subscription(kind, topic, functools.partial(self._keep, store), qos)

    def _keep(self, store, msg):
        (store if msg.header.frame_id == self.frame_id else self.foreign).append(msg)

    def new_frame_id(self):
        """Frames of a frame_id of their own from now on (another test's on a shared
        harness): an output of an earlier frame is never taken for one of these."""
        self.frame_ids += 1
        self.frame_id = f'{self.namespace[1:]}_{self.frame_ids}_optical'
        for msgs in self.got.values():
            msgs.clear()
        self.foreign.clear()

    def info(self, fx=FX, fy=FY) -> CameraInfo:
        return camera_info(H, W, fx, fy, CX, CY, frame_id=self.frame_id)

    def image(self, sec, rgb=None) -> Image:
        if rgb is None:
            rgb = np.random.default_rng(sec).integers(0, 256, (H, W, 3), dtype=np.uint8)
        return rgb8_image(rgb, frame_id=self.frame_id, sec=sec)

    def send(self, sec, rgb=None, info=True, image=None):
        if info:
            self.info_pub.publish(self.info())
        self.image_pub.publish(image if image is not None else self.image(sec, rgb))

    def outputs(self, sec) -> dict[str, list]:
        return {topic: [m for m in msgs if m.header.stamp.sec == sec]
                for topic, msgs in self.got.items()}

    def send_until(self, predicate, sec, timeout=OUTPUT_S, **send) -> bool:
        """Send frame ``sec`` (best effort: it may be lost) every 2 s until ``predicate``."""
        return repeat_until(lambda: self.send(sec, **send), predicate, timeout)

    def output_for(self, sec, **send) -> dict:
        """Send frame ``sec`` until all its outputs came back; the first of each."""
        done = self.send_until(lambda: all(self.outputs(sec).values()), sec, **send)
        assert done, f'no outputs for frame {sec}: counts {self.node.streams[0].counts}'
        return {topic: msgs[0] for topic, msgs in self.outputs(sec).items()}

    def connected(self, image_pub=None):
        """The camera (``image_pub``: the raw image's publisher unless given) reaches the
        node, and the node every output's subscriber."""
        image_pub = image_pub or self.image_pub
        stream = self.node.streams[0]
        publishers = (stream.pub_depth, stream.pub_info, stream.pub_points)
        return wait_for(lambda: image_pub.get_subscription_count() > 0
                        and self.info_pub.get_subscription_count() > 0
                        and all(p.get_subscription_count() > 0 for p in publishers),
                        CONNECT_S)

    def close(self):
        self.node.stop()
        self.node.destroy_node()
        self.peer.destroy_node()


@pytest.fixture
def harness(ros):
    """A fresh node (camera and consumer around it) for one test."""
    with serving(ros, Harness(ros)) as h:
        yield h


@pytest.fixture(scope='module')
def module_harness():
    """One node, with its camera and consumer, for this module's tests that need no fresh
    node (``shared``)."""
    with own_context() as context:
        with random_models_shared():  # module fixtures start before the autouse one
            h = Harness(context, 'shared')
        with serving(context, h):
            yield h


@pytest.fixture
def shared(module_harness):
    """The module's node, as a test that leaves it as it found it sees it: frames of a
    frame_id of its own; afterwards the parameters it changed are set back (the engine's
    head with them) and the camera's own CameraInfo is the node's again. Counts go on
    from earlier tests: compare them with their value at the start."""
    h = module_harness
    h.new_frame_id()
    node, pipeline = h.node, h.node.streams[0].pipeline
    before = node.get_parameters_by_prefix('')
    head = node.engine.head
    yield h
    changed = [p for name, p in before.items()
               if node.get_parameter(name).value != p.value]
    assert all(r.successful for r in node.set_parameters(changed))
    assert wait_for(lambda: node.engine.head == head, 10)
    assert repeat_until(lambda: h.info_pub.publish(h.info()),
                        lambda: pipeline.latest_info.k[0] == FX, 30)


def wrap_predict(monkeypatch, engine, before):
    """Make the engine's inference (``infer_frames``, which the pipeline and the node call) call
    ``before()`` first (to slow it down or make it fail)."""
    real_predict = engine.infer_frames

    def predict(*args, **kwargs):
        before()
        return real_predict(*args, **kwargs)

    monkeypatch.setattr(engine, 'infer_frames', predict)


def test_outputs_match_the_input_and_each_other(shared):
    out = shared.output_for(100)
    depth_msg, info, cloud = out['depth/image'], out['depth/camera_info'], out['points']
    assert depth_msg.encoding == '32FC1' and (depth_msg.height, depth_msg.width) == (H, W)
    for msg in (depth_msg, info, cloud):
        assert msg.header.frame_id == shared.frame_id and msg.header.stamp.sec == 100
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


def test_metric_scale_follows_the_camera_focal(shared):
    rgb = np.random.default_rng(5).integers(0, 256, (H, W, 3), dtype=np.uint8)
    first = depth_from_image(shared.output_for(100, rgb=rgb)['depth/image']).copy()
    doubled = shared.info(2 * FX, 2 * FY)
    pipeline = shared.node.streams[0].pipeline
    assert repeat_until(lambda: shared.info_pub.publish(doubled),
                        lambda: pipeline.latest_info is not None
                        and pipeline.latest_info.k[0] == 2 * FX, 30)
    second = shared.output_for(200, rgb=rgb, info=False)['depth/image']
    np.testing.assert_allclose(depth_from_image(second), 2 * first, rtol=1e-6)


def test_stride_rgb_and_range_parameters_apply_live(shared):
    result = shared.node.set_parameters([Parameter('cloud_stride', value=2),
                                         Parameter('cloud_rgb', value=True),
                                         Parameter('max_depth_m', value=1.0)])
    assert all(r.successful for r in result)
    cloud = shared.output_for(100)['points']
    assert (cloud.height, cloud.width) == (H // 2, W // 2)
    assert [f.name for f in cloud.fields] == ['x', 'y', 'z', 'rgb']
    # Random-weight depths are >= 1 m canonical * ~0.21 focal ratio: some exceed 1.0 m or
    # not; either way every point beyond max_depth_m is NaN.
    z = cloud_array(cloud)['z']
    assert np.all(np.isnan(z) | (z <= 1.0))


def test_bad_frames_are_rejected_counted_and_the_next_good_one_processed(shared):
    shared.output_for(100)
    bad = shared.image(101)
    bad.encoding = 'weird16'
    short = shared.image(102)
    short.data = bytes(10)
    counts = shared.node.streams[0].counts
    for sec, msg in ((101, bad), (102, short)):
        before = counts['rejected']
        assert shared.send_until(lambda seen=before: counts['rejected'] > seen, sec, image=msg)
        assert not any(shared.outputs(sec).values())
    shared.output_for(103)


def test_missing_camera_info_is_reported_or_uses_the_fallback_fov(ros):
    h = Harness(ros, 'nocal')
    spinner = Spinner(ros, h.node, h.peer)
    try:
        assert h.connected()
        assert h.send_until(lambda: h.node.streams[0].counts['rejected'] > 0, 10, info=False)
        assert not h.got['depth/image']
        assert h.node.set_parameters([Parameter('fallback_hfov_deg', value=60.0)])[0].successful
        info = h.output_for(11, info=False)['depth/camera_info']
        assert info.k[0] == pytest.approx(0.5 * W / math.tan(math.radians(30)))
    finally:
        spinner.stop()
        h.close()


def test_parameter_services_accept_and_reject_with_reasons(shared):
    from rclpy.parameter_client import AsyncParameterClient
    context = shared.node.context
    client_node = rclpy.create_node('param_client', namespace=shared.namespace, context=context)
    harness_spinner = Spinner(context, client_node)
    try:
        client = AsyncParameterClient(client_node, shared.node.get_fully_qualified_name())
        assert client.wait_for_services(timeout_sec=CONNECT_S)

        def set_one(name, value):
            future = client.set_parameters([Parameter(name, value=value)])
            assert wait_for(future.done, 30)
            return future.result().results[0]

        texts = shared.node.engine.text_encodings
        assert set_one('temperature', 0.2).successful
        assert set_one('depth_bins_m', [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]).successful
        for name, value, reason in [
                ('depth_bins_m', [1.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 'strictly increasing'),
                ('temperature', 0.0, ''), ('temperature', math.nan, ''),
                ('temperature', 'warm', ''), ('model', 'RN101', ''),
                ('min_depth_m', 50.0, 'min_depth_m'), ('prompt_template', 'no slots', 'two')]:
            result = set_one(name, value)
            assert not result.successful, (name, value)
            assert reason in result.reason
        values = {name: shared.node.get_parameter(name).value
                  for name in ('temperature', 'depth_bins_m', 'model')}
        assert values['temperature'] == 0.2 and values['model'] == TINY_MODEL
        assert list(values['depth_bins_m']) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
        shared.output_for(100)
        assert shared.node.engine.head.temperature == 0.2
        assert shared.node.engine.text_encodings == texts  # no re-encoding for bins
    finally:
        harness_spinner.stop()
        client_node.destroy_node()


def test_two_namespaced_nodes_do_not_interfere(ros):
    left, right = Harness(ros, 'left'), Harness(ros, 'right')
    spinner = Spinner(ros, left.node, left.peer, right.node, right.peer)
    try:
        assert left.connected() and right.connected()
        left.output_for(100)
        assert right.node.streams[0].counts['received'] == 0 and not right.got['depth/image']
        right.output_for(100)
        assert not left.foreign and not right.foreign
        assert left.node.get_fully_qualified_name() == f'{left.namespace}/depth_node'
    finally:
        spinner.stop()
        left.close()
        right.close()


def test_newest_frame_wins_and_counts_add_up(ros, monkeypatch):
    """A camera faster than the network. Reliable input here, so that the burst's last
    frame surely arrives: it must be the last one processed."""
    h = Harness(ros, 'burst', [Parameter('subscriber_qos', value='reliable')],
                camera_qos=RELIABLE)
    spinner = Spinner(ros, h.node, h.peer)
    try:
        assert h.connected()
        h.output_for(100)
        wrap_predict(monkeypatch, h.node.engine, lambda: time.sleep(0.2))
        for i in range(30):
            time.sleep(0.01)
            h.send(1000 + i, info=(i == 0))
        counts = h.node.streams[0].counts
        assert wait_for(lambda: h.node.streams[0].slot is None and counts['received']
                        == counts['processed'] + counts['dropped'] + counts['rejected']
                        + counts['failed'] + counts['skipped_no_subscribers']
                        and any(m.header.stamp.sec == 1029 for m in h.got['depth/image']), 60), \
            counts
        assert counts['dropped'] > 0
        assert h.got['depth/image'][-1].header.stamp.sec == 1029  # the newest frame was last
    finally:
        spinner.stop()
        h.close()


def test_output_size_colormap_and_diagnostics(ros):
    from diagnostic_msgs.msg import DiagnosticArray
    h = Harness(ros, 'extras', [Parameter('publish_colormap', value=True),
                                Parameter('output_size', value=[48, 64])])
    colormaps, diagnostics = [], []
    h.subscribe(Image, 'depth/colormap', colormaps)
    h.peer.create_subscription(DiagnosticArray, '/diagnostics', diagnostics.append, 10)
    spinner = Spinner(ros, h.node, h.peer)
    try:
        assert h.connected()
        out = h.output_for(100)
        depth, info = out['depth/image'], out['depth/camera_info']
        assert (depth.height, depth.width) == (info.height, info.width) == (48, 64)
        assert info.k[0] == pytest.approx(FX / 2) and info.k[5] == pytest.approx(CY / 2)
        assert wait_for(lambda: colormaps, 30)
        assert colormaps[-1].encoding == 'rgb8' and (colormaps[-1].height,
                                                     colormaps[-1].width) == (48, 64)

        def after_a_frame():  # this node's 1 Hz status, once a frame was processed
            return [s for a in diagnostics for s in a.status
                    if s.name == f'{h.namespace}/depth_node: depth'
                    and any(kv.key == 'frames processed' and kv.value != '0'
                            for kv in s.values)]
        assert wait_for(after_a_frame, 30)
        status = after_a_frame()[-1]
        values = {kv.key: kv.value for kv in status.values}
        assert values['random weights'] == 'True' and values['model'] == f'{TINY_MODEL} (none)'
        for key in ('input rate (Hz)', 'output rate (Hz)', 'frames dropped',
                    'latency end-to-end median (ms)', 'stage network median (ms)', 'device'):
            assert key in values, key
    finally:
        spinner.stop()
        h.close()


def test_an_inference_error_drops_one_frame_and_the_node_goes_on(shared, monkeypatch):
    shared.output_for(100)
    counts = shared.node.streams[0].counts
    failed = counts['failed']
    calls = []

    def fail_once():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError('CUDA out of memory (simulated)')

    wrap_predict(monkeypatch, shared.node.engine, fail_once)
    assert shared.send_until(lambda: counts['failed'] >= failed + 1, 500)
    shared.output_for(501)
    assert counts['failed'] == failed + 1


def test_compressed_images_with_the_compressed_transport(ros):
    h = Harness(ros, 'jpeg', [Parameter('image_transport', value='compressed')])
    pub = h.peer.create_publisher(CompressedImage, 'image/compressed', qos_profile_sensor_data)
    rgb = np.random.default_rng(7).integers(0, 256, (H, W, 3), dtype=np.uint8)
    ok, png = cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    # Before the worker runs: the engine is not shared with a frame in progress.
    expected = h.node.engine.predict(rgb, Intrinsics(FX, FY, CX, CY, W, H))
    spinner = Spinner(ros, h.node, h.peer)

    def send_compressed(data, sec):
        msg = CompressedImage(format='png', data=bytes(data))
        msg.header.frame_id, msg.header.stamp.sec = h.frame_id, sec
        h.info_pub.publish(h.info())
        pub.publish(msg)

    def until_output(sec):
        assert repeat_until(lambda: send_compressed(png.tobytes(), sec),
                            lambda: all(h.outputs(sec).values()), OUTPUT_S)
        return h.outputs(sec)['depth/image'][0]

    try:
        assert h.connected(pub)
        assert h.image_pub.get_subscription_count() == 0  # one transport
        depth_msg = until_output(300)
        assert depth_msg.header.frame_id == h.frame_id
        np.testing.assert_allclose(depth_from_image(depth_msg), expected, rtol=1e-5)
        before = h.node.streams[0].counts['rejected']
        # corrupt: rejected, and the node goes on
        assert repeat_until(lambda: send_compressed(b'not a png at all', 400),
                            lambda: h.node.streams[0].counts['rejected'] > before, OUTPUT_S)
        assert not any(h.outputs(400).values())
        until_output(500)
    finally:
        spinner.stop()
        h.close()


def test_backend_openvino_gives_the_depth_of_the_torch_backend(ros):
    """``backend: openvino``: the node's engine runs its trunk on OpenVINO (converted at
    load into the tests' own cache folder) and publishes the depth the torch engine
    gives, to the backends' tolerance."""
    pytest.importorskip('openvino')
    from dataclasses import replace

    from depthclip_ros.engine.depthclip import DepthCLIP
    h = Harness(ros, 'openvino', [Parameter('backend', value='openvino')])
    assert h.node.engine.describe_device() == 'cpu float32, openvino fp32'
    rgb = np.random.default_rng(11).integers(0, 256, (H, W, 3), dtype=np.uint8)
    # Before the worker runs; the same (shared) random model, on torch.
    reference = DepthCLIP(replace(h.node.engine.config, backend='torch'), h.node.engine.head)
    expected = reference.load().predict(rgb, Intrinsics(FX, FY, CX, CY, W, H))
    spinner = Spinner(ros, h.node, h.peer)
    try:
        assert h.connected()
        depth = depth_from_image(h.output_for(100, rgb=rgb)['depth/image'])
        np.testing.assert_allclose(depth, expected, rtol=1e-5)
    finally:
        spinner.stop()
        h.close()


def test_backend_openvino_int8_calibrated_on_a_folder_gives_depth(ros):
    """``precision: int8`` with ``calibration``: the node calibrates at load (NNCF, on the
    shared NYU frames) and publishes finite, positive depth over the whole image."""
    pytest.importorskip('nncf')
    from conftest import shared_data
    h = Harness(ros, 'int8', [Parameter('backend', value='openvino'),
                              Parameter('precision', value='int8'),
                              Parameter('calibration', value=str(
                                  shared_data('nyu_v2_eigen_test_sg10', 'rgb')))])
    assert h.node.engine.describe_device() == 'cpu float32, openvino int8'
    spinner = Spinner(ros, h.node, h.peer)
    try:
        assert h.connected()
        depth = depth_from_image(h.output_for(101)['depth/image'])
        assert depth.shape == (H, W) and np.isfinite(depth).all() and (depth > 0).all()
    finally:
        spinner.stop()
        h.close()

"""One depth_node, three cameras, one model, over real rclpy / Fast DDS (CPU, random
weights, small input): each camera's outputs equal the single-camera result for the same
frame, frames of several cameras share one forward, a bad camera leaves the others alone,
and a fast camera cannot starve a slow one."""

import threading

import numpy as np
import pytest
import rclpy
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from depthclip_ros.geometry import Intrinsics
from depthclip_ros.ros.messages import cloud_array, depth_from_image
from depthclip_ros.ros.node import DepthNode
from depthclip_ros.ros.streams import check_camera_names

from rosutil import camera_info, repeat_until, rgb8_image, Spinner, unique_namespace, wait_for
from test_node import RELIABLE, SMALL

# three cameras, each its own size and lens
CAMERAS = {'front': Intrinsics(110.0, 112.0, 63.5, 47.5, 128, 96),
           'left': Intrinsics(60.0, 60.0, 40.0, 30.0, 80, 60),
           'arm/wrist': Intrinsics(200.0, 190.0, 50.0, 40.0, 96, 80)}
OUTPUTS = {'depth/image': Image, 'depth/camera_info': CameraInfo, 'points': PointCloud2}
OUTPUT_S = 60.0


class Cameras:
    """Publishers for every camera and subscribers of every camera's outputs around one
    node in a namespace of its own."""

    def __init__(self, context, overrides=(), cameras=CAMERAS):
        self.cameras = cameras
        self.namespace = unique_namespace('rig')
        self.node = DepthNode(context=context, namespace=self.namespace, parameter_overrides=[
            *SMALL, Parameter('cameras', value=list(cameras)), *overrides])
        self.node.load()
        self.peer = rclpy.create_node('rig_peer', namespace=self.namespace, context=context)
        self.image_pubs, self.info_pubs, self.got = {}, {}, {}
        for name in cameras:
            self.image_pubs[name] = self.peer.create_publisher(Image, f'{name}/image', RELIABLE)
            self.info_pubs[name] = self.peer.create_publisher(CameraInfo,
                                                              f'{name}/camera_info', RELIABLE)
            self.got[name] = {topic: [] for topic in OUTPUTS}
            for topic, kind in OUTPUTS.items():
                self.peer.create_subscription(kind, f'{name}/{topic}',
                                              self.got[name][topic].append, RELIABLE)

    def rgb(self, name, sec):
        camera = self.cameras[name]
        return np.random.default_rng([sec, len(name)]).integers(
            0, 256, (camera.height, camera.width, 3), dtype=np.uint8)

    def send(self, name, sec, image=None, info=None):
        camera = self.cameras[name]
        self.info_pubs[name].publish(info or camera_info(
            camera.height, camera.width, camera.fx, camera.fy, camera.cx, camera.cy,
            frame_id=name.replace('/', '_')))
        self.image_pubs[name].publish(image or rgb8_image(
            self.rgb(name, sec), frame_id=name.replace('/', '_'), sec=sec))

    def outputs(self, name, sec):
        return {topic: [m for m in msgs if m.header.stamp.sec == sec]
                for topic, msgs in self.got[name].items()}

    def connected(self):
        return wait_for(lambda: all(
            p.get_subscription_count() > 0 for p in [*self.image_pubs.values(),
                                                     *self.info_pubs.values()])
            and all(s.pub_depth.get_subscription_count() > 0
                    and s.pub_points.get_subscription_count() > 0
                    for s in self.node.streams), 30)

    def close(self):
        self.node.stop()
        self.node.destroy_node()
        self.peer.destroy_node()


@pytest.fixture
def rig(ros):
    r = Cameras(ros)
    spinner = Spinner(ros, r.node, r.peer)
    assert r.connected()
    yield r
    spinner.stop()
    r.close()


def hold_inference(monkeypatch, engine):
    """Block the engine's first batch until released; record every batch's size."""
    release, sizes = threading.Event(), []
    real = engine.infer_frames

    def held(frames, *args, **kwargs):
        sizes.append(len(frames))
        release.wait(30)
        return real(frames, *args, **kwargs)

    monkeypatch.setattr(engine, 'infer_frames', held)
    return release, sizes


def test_every_camera_gets_its_own_single_camera_result_from_one_batched_forward(
        rig, monkeypatch):
    release, sizes = hold_inference(monkeypatch, rig.node.engine)
    rig.send('front', 1)
    assert wait_for(lambda: sizes, 30)  # the worker holds the first frame...
    for name in CAMERAS:  # ...while every camera's next frame waits
        rig.send(name, 2)
    assert wait_for(lambda: all(s.slot is not None for s in rig.node.streams), 30)
    release.set()
    assert wait_for(lambda: all(all(rig.outputs(n, 2).values()) for n in CAMERAS), OUTPUT_S)
    assert 3 in sizes, sizes  # the three waiting frames went through one forward
    engine = rig.node.engine
    for name, camera in CAMERAS.items():
        out = {topic: msgs[0] for topic, msgs in rig.outputs(name, 2).items()}
        depth = depth_from_image(out['depth/image'])
        alone = engine.infer(rig.rgb(name, 2), camera).depth  # as a single-camera node
        np.testing.assert_allclose(depth, alone, rtol=1e-4, atol=1e-5)
        info = out['depth/camera_info']
        assert (info.height, info.width) == (camera.height, camera.width)
        assert info.header.frame_id == name.replace('/', '_')
        cloud = cloud_array(out['points'])
        assert cloud.shape == (camera.height, camera.width)
        # its own focal: x = (u - cx) z / fx at a pixel
        v, u = camera.height // 2, camera.width - 3
        assert cloud['x'][v, u] == pytest.approx((u - camera.cx) * depth[v, u] / camera.fx,
                                                 rel=1e-4)
    assert rig.node.streams[1].counts['processed'] >= 1


def test_a_bad_camera_never_affects_the_others(rig, monkeypatch):
    node = rig.node
    left = node.streams[[s.name for s in node.streams].index('left')]
    # its CameraInfo does not describe its images and cannot be scaled to them
    bad_info = camera_info(10, 50, 0.0, 0.0, 5.0, 5.0, frame_id='left')
    # and its frames fail inside the engine whenever they are in a batch
    real = node.engine.infer_frames

    def failing(frames, *args, **kwargs):
        if any(f.rgb.shape[:2] == (60, 80) for f in frames):
            raise RuntimeError('CUDA error: an illegal memory access (simulated)')
        return real(frames, *args, **kwargs)

    for sec in range(10, 13):
        rig.send('left', sec, info=bad_info)
        rig.send('front', sec)
        rig.send('arm/wrist', sec)
    assert wait_for(lambda: left.counts['rejected'] >= 1, 30)
    assert 'left/camera_info' in left.last_problem
    monkeypatch.setattr(node.engine, 'infer_frames', failing)

    def others_and_left_failed(sec):
        for name in ('left', 'front', 'arm/wrist'):
            rig.send(name, sec)
        return (left.counts['failed'] >= 1 and all(rig.outputs('front', sec)['points'])
                and all(rig.outputs('arm/wrist', sec)['points']))
    assert repeat_until(lambda: None, lambda: others_and_left_failed(20), OUTPUT_S, every=1)
    assert 'illegal memory access' in left.last_problem
    for name in ('front', 'arm/wrist'):
        stream = node.streams[[s.name for s in node.streams].index(name)]
        assert stream.counts['failed'] == 0 and stream.counts['rejected'] == 0
        assert stream.last_problem is None
    assert not rig.got['left']['depth/image'] or all(
        m.header.stamp.sec < 20 for m in rig.got['left']['depth/image'])


def test_a_fast_camera_cannot_starve_a_slow_one(ros, monkeypatch):
    """While a batch runs, a fast camera's frames replace each other (dropped) and a slow
    camera's one frame waits; the next batch takes both. Every forward is held at a gate
    opened by the test, so the order of events does not depend on this machine's speed."""
    cameras = {name: CAMERAS[name] for name in ('front', 'left')}
    rig = Cameras(ros, cameras=cameras)
    real = rig.node.engine.infer_frames
    gate, batches = threading.Semaphore(0), []

    def gated(frames, *args, **kwargs):
        batches.append(sorted(f.rgb.shape[:2] for f in frames))
        assert gate.acquire(timeout=30), 'the test never opened the gate'
        return real(frames, *args, **kwargs)

    monkeypatch.setattr(rig.node.engine, 'infer_frames', gated)
    spinner = Spinner(ros, rig.node, rig.peer)
    front, left = rig.node.streams
    try:
        assert rig.connected()
        sec = 100

        def arrive(name, stream):  # best-effort input: resent until the node has it
            nonlocal sec
            sec += 1
            count = stream.counts['received']
            assert repeat_until(lambda s=sec: rig.send(name, s),
                                lambda: stream.counts['received'] > count, 30, every=2.0)

        for cycle in range(3):
            calls = len(batches)
            arrive('front', front)  # the worker takes it and waits at the gate
            assert wait_for(lambda n=calls: len(batches) > n, 30)
            for _ in range(8):  # the fast camera: each frame replaces the one waiting
                arrive('front', front)
            arrive('left', left)  # the slow camera: one frame
            assert front.slot is not None and left.slot is not None
            gate.release()  # the held batch finishes; the next takes both cameras
            assert wait_for(lambda n=calls: len(batches) > n + 1, 30)
            assert batches[-1] == [(60, 80), (96, 128)], batches
            gate.release()
            assert wait_for(lambda n=cycle: left.counts['processed'] == n + 1, 30)
        assert left.counts['received'] == left.counts['processed'] == 3
        assert left.counts['dropped'] == 0
        assert front.counts['dropped'] >= 3 * 7  # newest wins on the fast camera
    finally:
        for _ in range(4):
            gate.release()
        spinner.stop()
        rig.close()


def test_per_camera_diagnostics(rig):
    from diagnostic_msgs.msg import DiagnosticArray
    statuses = []
    rig.peer.create_subscription(DiagnosticArray, '/diagnostics', statuses.append, 10)
    for name in CAMERAS:
        assert repeat_until(lambda n=name: rig.send(n, 30),
                            lambda n=name: all(rig.outputs(n, 30).values()), OUTPUT_S)
    node_name = rig.node.get_fully_qualified_name()

    def latest():
        found = {}
        for array in statuses:
            for status in array.status:
                found[status.name] = {kv.key: kv.value for kv in status.values}
        return found
    expected = {f'{node_name}: camera {name}' for name in CAMERAS}
    assert wait_for(lambda: expected <= set(latest()) and all(
        latest()[n].get('frames processed', '0') != '0' for n in expected), 30)
    found = latest()
    assert found[f'{node_name}: depth']['cameras'] == ', '.join(CAMERAS)
    for name in expected:
        assert 'latency end-to-end median (ms)' in found[name]
        assert 'stage network median (ms)' in found[name]


def test_topics_are_under_each_camera(rig):
    names = dict(rig.node.get_publisher_names_and_types_by_node('depth_node', rig.namespace))
    for name in CAMERAS:
        for topic in ('depth/image', 'depth/camera_info', 'points', 'depth/uncertainty'):
            assert f'{rig.namespace}/{name}/{topic}' in names
    assert not any(n == f'{rig.namespace}/points' for n in names)


@pytest.mark.parametrize('names, problem', [
    (['front', 'front'], 'distinct'), (['/front'], 'relative'), (['front/'], 'relative'),
    (['9cam'], 'relative'), (['a b'], 'relative'), ([f'c{i}' for i in range(17)], 'at most'),
])
def test_camera_names_are_checked(names, problem):
    with pytest.raises(ValueError, match=problem):
        check_camera_names(names)


def test_no_cameras_is_the_single_camera_node(ros):
    node = DepthNode(context=ros, namespace=unique_namespace('solo'),
                     parameter_overrides=list(SMALL))
    try:
        assert [s.name for s in node.streams] == ['']
        assert node.get_parameter('cameras').type_ == Parameter.Type.STRING_ARRAY
        assert node.get_parameter('cameras').value == []
        [result] = node.set_parameters([Parameter('cameras', value=['front'])])
        assert not result.successful and 'read-only' in result.reason
        assert [s.name for s in node.streams] == ['']
    finally:
        node.destroy_node()



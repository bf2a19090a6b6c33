"""One depth_node, three cameras, one model, over real rclpy / Fast DDS (CPU, the tests'
tiny random model, small input): each camera's outputs equal the single-camera result for
the same frame, frames of several cameras share one forward, a bad camera leaves the others
alone, a fast camera cannot starve a slow one, no camera waits on another's optional step,
and camera names follow ROS's rules without overlapping."""

import copy
import re
import threading

from hypothesis import given, HealthCheck, settings
from hypothesis import strategies as st
import numpy as np
import pytest
import rclpy
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from depthclip_ros.geometry import Intrinsics
from depthclip_ros.ros.diagnostics import objects_status
from depthclip_ros.ros.messages import cloud_array, depth_from_image
from depthclip_ros.ros.node import DepthNode
from depthclip_ros.ros.object_messages import labels_image
from depthclip_ros.ros.parameters import validate
from depthclip_ros.ros.streams import CAMERA_TOPICS, check_camera_names

from conftest import random_models_shared
from rosutil import (
    camera_info,
    own_context,
    repeat_until,
    rgb8_image,
    serving,
    Spinner,
    start_refusal,
    unique_namespace,
    wait_for,
)
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


@pytest.fixture(scope='module')
def rig():
    """One three-camera node for this module's tests that leave it as they found it (no
    parameter changed, every monkeypatch undone, frame stamps of their own)."""
    with own_context() as context:
        with random_models_shared():  # module fixtures start before the autouse one
            r = Cameras(context)
        with serving(context, r):
            yield r


@pytest.fixture
def fresh_rig(ros):
    """A three-camera node of its own for a test that leaves it changed."""
    with serving(ros, Cameras(ros)) as r:
        yield r


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


def test_a_bad_camera_never_affects_the_others(fresh_rig, monkeypatch):
    rig = fresh_rig  # its left camera keeps a bad CameraInfo and failure counts
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


@pytest.mark.parametrize('transport', ['raw', 'compressed'])
def test_every_camera_topic_is_one_the_names_are_checked_against(ros, transport):
    """The overlap rule knows every topic the node has under a camera
    (``streams.CAMERA_TOPICS``): the node has no other, and has those it should."""
    namespace = unique_namespace('topics')
    node = DepthNode(context=ros, namespace=namespace, parameter_overrides=[
        *SMALL, Parameter('cameras', value=['front', 'arm/wrist']),
        Parameter('image_transport', value=transport),
        Parameter('publish_colormap', value=True)])
    try:
        def under_cameras():
            found = set()
            for names in (node.get_publisher_names_and_types_by_node,
                          node.get_subscriber_names_and_types_by_node):
                for topic, _ in names('depth_node', namespace):
                    for camera in ('front', 'arm/wrist'):
                        if topic.startswith(f'{namespace}/{camera}/'):
                            found.add((camera, topic[len(f'{namespace}/{camera}/'):]))
            return found
        expected = {'depth/image', 'depth/colormap', 'points', 'camera_info', 'objects/masks',
                    'image' if transport == 'raw' else 'image/compressed'}
        assert wait_for(lambda: {(c, t) for c in ('front', 'arm/wrist') for t in expected}
                        <= under_cameras(), 10), under_cameras()
        assert {topic for _, topic in under_cameras()} <= set(CAMERA_TOPICS)
    finally:
        node.destroy_node()


@pytest.mark.parametrize('names, problem', [
    (['front', 'front'], 'distinct'),
    ([''], 'empty name'),
    (['/front'], 'relative namespace (no leading'),
    (['front/'], "end with a '/'"),
    (['a//b'], "repeated '/'"),
    (['9cam'], 'starts with a number'),
    (['arm/2nd'], 'starts with a number'),
    (['a b'], 'characters other than'),
    (['kamera_é'], 'characters other than'),
    (['カメラ'], 'characters other than'),
    (['came\u0301ra'], 'characters other than'),  # a combining accent
    (['front-left'], 'characters other than'),
    (['~'], 'characters other than'),
    (['~/cam'], 'characters other than'),
    (['cam/~'], 'characters other than'),
    (['{node}'], 'characters other than'),
    (['c' * 300], 'ROS refuses'),
    (['c' * 240], 'ROS refuses'),  # a valid namespace, but its topics are too long
    (['x', 'x/depth'], 'x/depth/image would be a topic of both'),
    (['x/depth', 'x'], 'x/depth/image would be a topic of both'),
    (['x', 'x/points'], 'topic x/points would hold topic x/points/'),
    (['x', 'x/image'], 'topic x/image would hold'),
    (['x', 'x/camera_info'], 'overlap'),
    (['x', 'x/objects'], 'overlap'),
    (['front', 'left', 'left/objects/masks'], 'overlap'),
    ([f'c{i}' for i in range(17)], 'at most 16'),
])
def test_camera_names_are_checked(names, problem):
    """ROS's own name rules (rclpy's), and no camera in another's topics: one line each,
    naming the camera, from the parameter rules as from the check itself."""
    for check in (check_camera_names, lambda value: validate({'cameras': value})):
        with pytest.raises(ValueError, match=re.escape(problem)) as error:
            check(names)
        assert '\n' not in str(error.value) and str(error.value).startswith('cameras')


@pytest.mark.parametrize('names', [
    ['front'], ['front', 'left', 'arm/wrist'], ['arm', 'arm/wrist'], ['_x', 'A1', 'a__b'],
    ['x', 'x_depth'], ['x', 'x/depth_cam'], ['c' * 200], [f'c{i}' for i in range(16)]])
def test_camera_names_ros_accepts_are_accepted(names):
    assert check_camera_names(names) == tuple(names)
    validate({'cameras': names})


@pytest.fixture
def probe(ros):
    """``probe(namespace)``: a node in ``namespace``, to resolve topic names there."""
    nodes = {}

    def node(namespace):
        if namespace not in nodes:
            nodes[namespace] = rclpy.create_node('probe', namespace=namespace, context=ros)
        return nodes[namespace]

    yield node
    for made in nodes.values():
        made.destroy_node()


NAME_CHARS = st.sampled_from(list('ab_Z09/é~{} .-'))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.one_of(st.text(NAME_CHARS, max_size=14),
                      st.builds(lambda n, c: c * n, st.integers(170, 260),
                                st.sampled_from(['x', 'é', 'ab/']))),
       namespace=st.sampled_from(['/', '/robot', '/' + 'n' * 50]))
def test_a_camera_name_is_accepted_exactly_when_ros_accepts_its_topics(probe, name,
                                                                      namespace):
    """Against rclpy itself: a name is accepted iff it is a plain relative namespace (no
    leading /, no ~ or {} substitution) and ROS resolves every topic the node would have
    under it, in the node's namespace."""
    def resolves(topic):
        try:
            return probe(namespace).resolve_topic_name(topic) == \
                f'{namespace.rstrip("/")}/{topic}'
        except Exception:  # noqa: BLE001 - rclpy's RCLError: the name is refused
            return False

    plain = bool(name) and not name.startswith('/') and not set('~{}') & set(name)
    ros_accepts = all(resolves(f'{name}/{topic}') for topic in CAMERA_TOPICS)
    try:
        check_camera_names([name], namespace)
        accepted = True
    except ValueError as error:
        assert '\n' not in str(error)
        accepted = False
    assert accepted == (plain and ros_accepts), (name, namespace)


def test_a_node_refuses_a_bad_camera_name_at_start_in_one_line(ros):
    for names, problem in ((['kamera_é'], 'characters other than'),
                           (['x', 'x/depth'], 'overlap')):
        with pytest.raises(ValueError, match=re.escape(problem)) as error:
            DepthNode(context=ros, namespace=unique_namespace('names'),
                      parameter_overrides=[*SMALL, Parameter('cameras', value=names)])
        assert '\n' not in str(error.value)
    # the node's own namespace counts: a name fine alone is too long under it
    long_name = 'c' * 190
    check_camera_names([long_name])
    with pytest.raises(ValueError, match='ROS refuses'):
        DepthNode(context=ros, namespace='/' + 'n' * 60,
                  parameter_overrides=[*SMALL, Parameter('cameras', value=[long_name])])


@pytest.mark.parametrize('names, problem', [(['kamera_é'], 'characters other than'),
                                            (['c' * 300], 'ROS refuses'),
                                            (['x', 'x/depth'], 'overlap')])
def test_the_node_process_refuses_a_bad_camera_name_in_one_line(names, problem):
    line, err = start_refusal({'pretrained': 'none', 'cameras': names}, namespace='names')
    assert 'cameras' in line and problem in line, err


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


# ---------------------------------------------------------------- no camera waits on another
# One node, two cameras, the object step on: a camera whose label images never come keeps
# only its own frame waiting; an object step in progress on one camera never holds back the
# depth of another camera's frame from the same batch. Deterministic by construction: what
# would block is made to block for longer than the test (a wait of an hour, a gate the test
# opens), so the old behaviour shows as the other camera getting nothing, never as a slower
# time; no assertion on wall-clock time.
TWO = {name: CAMERAS[name] for name in ('front', 'left')}


def object_rig(ros, proposals):
    """Two cameras with a query, each with a subscriber of its markers (so the object
    step runs) and a publisher of its label images."""
    rig = Cameras(ros, cameras=TWO, overrides=[
        Parameter('object_queries', value=['the box']),
        Parameter('object_proposals', value=proposals),
        Parameter('object_max_masks', value=2)])
    rig.markers = {name: [] for name in TWO}
    rig.masks_pubs = {}
    for name in TWO:
        rig.peer.create_subscription(MarkerArray, f'{name}/objects/markers',
                                     rig.markers[name].append, RELIABLE)
        rig.masks_pubs[name] = rig.peer.create_publisher(Image, f'{name}/objects/masks',
                                                         RELIABLE)
    rig.streams = dict(zip(TWO, rig.node.streams))
    return rig


def connected(rig):
    return rig.connected() and wait_for(lambda: all(
        s.pub_markers.get_subscription_count() > 0 for s in rig.node.streams) and all(
        p.get_subscription_count() > 0 for p in rig.masks_pubs.values()), 30)


def markers_of(rig, name, sec):
    return [m for m in rig.markers[name]
            if m.markers and m.markers[-1].header.stamp.sec == sec]


def send_masks(rig, name, sec):
    camera = TWO[name]
    labels = np.zeros((camera.height, camera.width), np.uint16)
    labels[: camera.height // 2] = 1
    labels[camera.height // 2:, : camera.width // 2] = 2
    header = Header(frame_id=name.replace('/', '_'))
    header.stamp.sec = sec
    rig.masks_pubs[name].publish(labels_image(labels, header))


def depth_out(rig, name, sec):
    return bool(rig.outputs(name, sec)['depth/image'])


def test_a_camera_whose_label_images_never_come_delays_no_camera(ros):
    """front's label images never come and its wait outlasts the test; left's frames, with
    their label images, get depth and objects meanwhile, and so do front's later frames
    (depth): only front's own object step waits. A label image arriving completes the
    frame waiting for it."""
    rig = object_rig(ros, 'topic')
    spinner = Spinner(ros, rig.node, rig.peer)
    front, left = rig.streams['front'], rig.streams['left']
    try:
        assert connected(rig)
        # front's wait for its label images: an hour (the parameter allows at most 2 s;
        # set past its range here so that any wait of the worker on it would outlast the
        # test instead of making it slower)
        slow = copy.copy(front.pipeline.objects)
        object.__setattr__(slow, 'masks_wait_s', 3600.0)
        front.pipeline.objects = slow
        assert repeat_until(lambda: rig.send('front', 1),
                            lambda: depth_out(rig, 'front', 1), OUTPUT_S)
        for sec in (2, 3, 4):  # the other camera: depth and objects, frame after frame
            assert repeat_until(lambda s=sec: (send_masks(rig, 'left', s),
                                               rig.send('left', s)),
                                lambda s=sec: depth_out(rig, 'left', s)
                                and markers_of(rig, 'left', s), OUTPUT_S), \
                (left.counts, left.last_problem)
            assert front.counts['objects_skipped'] == 0 and not markers_of(rig, 'front', 1)
        # front's own depth goes on too, while its first frame still waits
        assert repeat_until(lambda: rig.send('front', 5),
                            lambda: depth_out(rig, 'front', 5), OUTPUT_S)
        assert front.counts['processed'] >= 2 and not markers_of(rig, 'front', 1)
        waiting = {kv.key: kv.value for kv in objects_status(rig.node, front).values}
        assert waiting['frames waiting for their label image'] == '2'  # frames 1 and 5
        # the label image of the first frame arrives: that frame's objects come out
        assert repeat_until(lambda: send_masks(rig, 'front', 1),
                            lambda: markers_of(rig, 'front', 1), OUTPUT_S)
        assert front.counts['objects_found'] == 1
        assert left.counts['objects_found'] >= 3 and left.counts['objects_skipped'] == 0
        assert left.counts['failed'] == front.counts['failed'] == 0
    finally:
        spinner.stop()
        rig.close()


def test_a_frame_past_its_own_deadline_is_skipped_and_said_so(ros):
    """With the parameter's own wait: front's frame without a label image is skipped and
    warned once its deadline passes, left's objects keep coming."""
    rig = object_rig(ros, 'topic')
    rig.node.set_parameters([Parameter('object_masks_wait_s', value=0.3)])
    spinner = Spinner(ros, rig.node, rig.peer)
    front, left = rig.streams['front'], rig.streams['left']
    try:
        assert connected(rig)
        assert repeat_until(lambda: rig.send('front', 1),
                            lambda: front.counts['objects_skipped'] >= 1, OUTPUT_S)
        assert 'front/objects/masks' in front.last_problem
        assert wait_for(lambda: not front.objects_waiting, 10)
        assert repeat_until(lambda: (send_masks(rig, 'left', 2), rig.send('left', 2)),
                            lambda: markers_of(rig, 'left', 2), OUTPUT_S)
        assert left.counts['objects_skipped'] == 0 and left.last_problem is None
    finally:
        spinner.stop()
        rig.close()


def test_an_object_step_never_holds_back_another_cameras_depth(ros, monkeypatch):
    """Both cameras' frames in one batch, front's object step (built-in proposals) held
    at a gate: left's depth of that batch is out while front's object step still runs."""
    rig = object_rig(ros, 'builtin')
    front = rig.streams['front']
    gate, entered = threading.Event(), threading.Event()
    real_find = front.pipeline.find

    def gated_find(frame, *args, **kwargs):
        if frame.header.stamp.sec == 2:
            entered.set()
            assert gate.wait(60), 'the test never opened the gate'
        return real_find(frame, *args, **kwargs)

    monkeypatch.setattr(front.pipeline, 'find', gated_find)
    release, sizes = hold_inference(monkeypatch, rig.node.engine)
    spinner = Spinner(ros, rig.node, rig.peer)
    try:
        assert connected(rig)
        # the worker holds front's first frame...
        assert repeat_until(lambda: rig.send('front', 1), lambda: sizes, 30)
        # ...while both cameras' next frames wait: one batch, front first
        assert repeat_until(lambda: [rig.send(name, 2) for name in TWO],
                            lambda: all(s.slot is not None for s in rig.node.streams), 30)
        release.set()
        assert wait_for(entered.is_set, OUTPUT_S)  # front's object step of frame 2 runs
        assert wait_for(lambda: depth_out(rig, 'left', 2), 30), \
            "left's depth waited for front's object step"
        assert not markers_of(rig, 'front', 2)
        assert 2 in sizes, sizes  # the two frames were one batch
        gate.set()
        assert wait_for(lambda: markers_of(rig, 'front', 2) and markers_of(rig, 'left', 2),
                        OUTPUT_S)
    finally:
        gate.set()
        release.set()
        spinner.stop()
        rig.close()

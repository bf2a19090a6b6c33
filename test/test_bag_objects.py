"""``depthclip-ros bag --query``: language-referred objects in the output bag (CPU, the tests'
tiny random model: the tests check topics, stamps and messages, never which object is
found)."""

import re

import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from visualization_msgs.msg import Marker, MarkerArray

from depthclip_ros.bags.process import process_bag, read_topic
from depthclip_ros.bags.recover import recover_partial
from depthclip_ros.engine.config import RANDOM_WEIGHTS_BANNER
from depthclip_ros.ros.object_messages import labels_from_image, object_cloud_array
from depthclip_ros.ros.pipeline import DepthPipeline, ObjectSettings
from depthclip_ros.tools.cli import main

from conftest import TINY_MODEL
from test_bag import by_topic, frames, mcap_messages, stamp_of, stream, write_bag

FAST = ['--model', TINY_MODEL, '--pretrained', 'none', '--device', 'cpu', '--input-size', '64',
        '96']
pytestmark = pytest.mark.usefixtures('tiny_model')  # FAST's model, in this process
OBJECT_TOPICS = ('/cam/objects/markers', '/cam/objects/points', '/cam/objects/labels',
                 '/cam/objects/camera_info')
QUERIES = ('the bright square', 'the dark corner on the left')


def raw_messages(bag) -> list[tuple[str, int, bytes]]:
    with AnyReader([bag]) as reader:
        return sorted((c.topic, t, bytes(r)) for c, t, r in reader.messages())


def scenes(count: int) -> list[np.ndarray]:
    """Random texture with a bright square: something for the proposals to find."""
    images = frames(count, seed=5)
    for index, rgb in enumerate(images):
        rgb[8 + index:30 + index, 10:34] = (240, 230, 40)
    return images


def test_object_topics_carry_the_frames_stamps(small_engine, tmp_path):
    images = scenes(2)
    source = write_bag(tmp_path / 'in', stream(images))
    out = tmp_path / 'out'
    pipeline = DepthPipeline(small_engine, objects=ObjectSettings(queries=QUERIES))
    report = process_bag(source, out, pipeline, objects=True)
    assert (report.frames_written, report.object_frames, report.object_frames_failed,
            report.object_queries, report.object_messages) == (2, 2, 0, 2, 8)
    assert report.objects_located <= 4
    assert set(OBJECT_TOPICS) <= set(report.output_topics.values())
    got = by_topic(mcap_messages(out))  # decoded with the schemas stored in the file
    for topic in OBJECT_TOPICS:
        assert len(got[topic]) == 2
        for index, message in enumerate(got[topic]):
            image = got['/cam/image_raw'][index]
            depth = got['/cam/depth/image'][index]
            assert message.log_time_ns == image.log_time_ns == depth.log_time_ns
            header = (message.ros_msg.markers[0].header if topic.endswith('markers')
                      else message.ros_msg.header)
            assert (header.stamp.sec, header.stamp.nanosec) == stamp_of(image.ros_msg)
            assert header.frame_id == image.ros_msg.header.frame_id
    # and read back with rclpy's own types (what ros2 bag play would publish)
    markers = read_topic(out, '/cam/objects/markers', MarkerArray)
    assert markers[0][1].markers[0].action == Marker.DELETEALL
    for _, array in markers:
        for marker in array.markers[1:]:
            assert marker.type in (Marker.CUBE, Marker.TEXT_VIEW_FACING)
            assert np.isfinite([marker.pose.position.x, marker.pose.position.y,
                                marker.pose.position.z]).all()
        texts = [m.text for m in array.markers if m.type == Marker.TEXT_VIEW_FACING]
        assert all(any(t.startswith(q) for q in QUERIES) for t in texts)
    infos = [info for _, info in read_topic(out, '/cam/depth/camera_info', CameraInfo)]
    assert [info for _, info in read_topic(out, '/cam/objects/camera_info', CameraInfo)] \
        == infos  # objects/labels' sibling: the same calibration as depth/image's
    for _, labels in read_topic(out, '/cam/objects/labels', Image):
        assert labels.encoding == 'mono16' and (labels.height, labels.width) == (48, 64)
        assert set(np.unique(labels_from_image(labels)).tolist()) <= {0, 1, 2}
    for _, cloud in read_topic(out, '/cam/objects/points', PointCloud2):
        points = object_cloud_array(cloud)
        assert set(np.unique(points['query']).tolist()) <= {0, 1}
        assert np.isfinite(points['z']).all()
    # --recover copies the object topics too (it rebuilds their types from the file)
    recovered = recover_partial(out, tmp_path / 'recovered')
    assert all(recovered.per_topic[topic] == 2 for topic in OBJECT_TOPICS)
    assert read_topic(tmp_path / 'recovered', '/cam/objects/markers', MarkerArray) == markers


def test_a_failing_object_step_keeps_the_frames_depth(small_engine, tmp_path, monkeypatch):
    source = write_bag(tmp_path / 'in', stream(scenes(3)))
    pipeline = DepthPipeline(small_engine, objects=ObjectSettings(queries=QUERIES[:1]))
    find, calls = pipeline.find, []

    def fail_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError('out of memory (simulated)')
        return find(*args, **kwargs)

    monkeypatch.setattr(pipeline, 'find', fail_second)
    problems = []
    report = process_bag(source, tmp_path / 'out', pipeline, objects=True,
                         on_problem=problems.append)
    assert (report.frames_written, report.object_frames, report.object_frames_failed,
            report.object_messages) == (3, 2, 1, 8)
    assert any('objects failed' in p and 'simulated' in p for p in problems)
    got = by_topic(mcap_messages(tmp_path / 'out'))
    assert len(got['/cam/depth/image']) == 3
    for topic in OBJECT_TOPICS:
        assert [m.log_time_ns // 10**9 for m in got[topic]] == [10, 12]


def test_without_queries_there_are_no_object_topics_and_depth_is_unchanged(small_engine,
                                                                            tmp_path):
    source = write_bag(tmp_path / 'in', stream(scenes(2)))
    plain = process_bag(source, tmp_path / 'plain', DepthPipeline(small_engine))
    assert (plain.object_queries, plain.object_messages) == (0, 0)
    got = by_topic(mcap_messages(tmp_path / 'plain'))
    assert not any('/objects/' in topic for topic in got)
    assert set(got) == {'/cam/image_raw', '/cam/camera_info', '/cam/depth/image',
                        '/cam/depth/camera_info', '/cam/points'}
    pipeline = DepthPipeline(small_engine, objects=ObjectSettings(queries=QUERIES[:1]))
    process_bag(source, tmp_path / 'objects', pipeline, objects=True)
    # the inputs are copied byte for byte and the depth outputs do not depend on the
    # object step (compared decoded: CDR alignment padding is not initialised by rclpy)
    inputs = {'/cam/image_raw', '/cam/camera_info'}
    assert [m for m in raw_messages(tmp_path / 'plain') if m[0] in inputs] == \
        [m for m in raw_messages(tmp_path / 'objects') if m[0] in inputs]
    for topic, kind in (('/cam/depth/image', Image), ('/cam/depth/camera_info', CameraInfo),
                        ('/cam/points', PointCloud2)):
        assert read_topic(tmp_path / 'plain', topic, kind) == \
            read_topic(tmp_path / 'objects', topic, kind)


def test_cli_query_counts_the_object_messages(tmp_path, capsys):
    source = write_bag(tmp_path / 'in', stream(scenes(3)))
    out = tmp_path / 'out'
    assert main(['bag', str(source), str(out), '--query', QUERIES[0], '--query', QUERIES[1],
                 '--object-alpha', '0.85', '--object-beta', '0.4', *FAST]) == 0
    text = capsys.readouterr().out
    assert 'done: 3 of 3 frames with depth' in text
    assert re.search(r'objects: 12 messages on objects/markers, objects/points, '
                     r'objects/labels and objects/camera_info \(3 frames x 4\); \d of 6 '
                     r'answers to 2 queries', text)
    assert 'RANDOM WEIGHTS' in text and 'objects/markers' in text
    got = by_topic(mcap_messages(out))
    assert all(len(got[topic]) == 3 for topic in OBJECT_TOPICS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['in', 'out']  # no partial left


@pytest.mark.parametrize('extra, problem', [
    (['--object-alpha', '0.5'], '--object-alpha need at least one --query'),
    (['--query', '  '], '--query: every query must be a non-empty string'),
    (['--query', 'a chair', '--object-alpha', '1.5'], '--object-alpha: object_alpha'),
    (['--query', 'a chair', '--object-beta', '-1'], '--object-beta: object_beta'),
    (['--query', 'a ' * 100], "longer than the text encoder's context"),  # after the load
])
def test_cli_refuses_bad_object_options(tmp_path, capsys, extra, problem):
    source = write_bag(tmp_path / 'in', stream(scenes(1)))
    assert main(['bag', str(source), str(tmp_path / 'out'), *extra, *FAST]) == 2
    *banner, line = capsys.readouterr().err.strip().splitlines()
    assert line.startswith('depthclip-ros bag: ') and problem in line, line
    assert not banner or RANDOM_WEIGHTS_BANNER in banner  # refused once the model loaded
    assert sorted(p.name for p in tmp_path.iterdir()) == ['in']

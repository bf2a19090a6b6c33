"""depth_node's language-referred objects over real rclpy / Fast DDS (CPU, random
weights: the chosen masks mean nothing; these tests check the plumbing, headers, sizes and
that no work is done when no query is set)."""

import numpy as np
import pytest
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image, PointCloud2
from visualization_msgs.msg import Marker, MarkerArray

from depthclip_ros.ros.diagnostics import objects_status
from depthclip_ros.ros.messages import depth_from_image
from depthclip_ros.ros.object_messages import labels_from_image, labels_image, object_cloud_array
from depthclip_ros.ros.pipeline import DepthPipeline

from rosutil import repeat_until, Spinner, wait_for
from test_node import H, Harness, OUTPUT_S, W

OBJECT_OUTPUTS = {'objects/markers': MarkerArray, 'objects/points': PointCloud2,
                  'objects/labels': Image}


def scene():
    """Two coloured boxes on a grey wall: something for the built-in proposals to find."""
    rgb = np.full((H, W, 3), 120, dtype=np.uint8)
    rgb[10:50, 10:60] = (200, 30, 30)
    rgb[40:90, 70:120] = (30, 60, 200)
    return rgb


def object_harness(ros, overrides=()):
    h = Harness(ros, name='objcam', overrides=overrides)
    h.objects_got = {topic: [] for topic in OBJECT_OUTPUTS}
    for topic, kind in OBJECT_OUTPUTS.items():
        if kind is MarkerArray:  # no header of its own: each marker carries the frame's
            h.peer.create_subscription(kind, topic, h.objects_got[topic].append, 10)
        else:
            h.subscribe(kind, topic, h.objects_got[topic])
    h.masks_pub = h.peer.create_publisher(Image, 'objects/masks', 10)
    return h


@pytest.fixture
def objects(ros, request):
    h = object_harness(ros, getattr(request, 'param', ()))
    spinner = Spinner(ros, h.node, h.peer)
    stream = h.node.streams[0]
    publishers = (stream.pub_depth, stream.pub_markers, stream.pub_object_points,
                  stream.pub_labels)
    assert wait_for(lambda: h.image_pub.get_subscription_count() > 0
                    and all(p.get_subscription_count() > 0 for p in publishers), 30.0)
    yield h
    spinner.stop()
    h.close()


def header_of(msg):
    return msg.markers[-1].header if isinstance(msg, MarkerArray) else msg.header


def object_outputs(h, sec) -> dict[str, list]:
    return {topic: [m for m in msgs if (not isinstance(m, MarkerArray) or m.markers)
                    and header_of(m).stamp.sec == sec
                    and header_of(m).frame_id == h.frame_id]
            for topic, msgs in h.objects_got.items()}


def all_outputs(h, sec) -> bool:
    return all(h.outputs(sec).values()) and all(object_outputs(h, sec).values())


def count_calls(monkeypatch, obj, name):
    calls = []
    real = getattr(obj, name)

    def wrapper(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(obj, name, wrapper)
    return calls


def test_no_query_no_object_work_and_no_object_output(objects, monkeypatch):
    calls = count_calls(monkeypatch, DepthPipeline, 'find')
    for sec in (10, 11):
        out = objects.output_for(sec, rgb=scene())
        assert out['depth/image'].header.stamp.sec == sec
    assert calls == []
    assert not any(objects.objects_got.values())
    assert objects_status(objects.node, objects.node.streams[0]) is None


def test_query_set_at_run_time_gives_object_outputs_aligned_with_depth(objects):
    result = objects.node.set_parameters(
        [Parameter('object_queries', Parameter.Type.STRING_ARRAY, ['the red box', 'a wall'])])
    assert result[0].successful, result[0].reason
    assert objects.node.streams[0].pipeline.objects.queries == ('the red box', 'a wall')
    sec = 20
    assert objects.send_until(lambda: all_outputs(objects, sec), sec, rgb=scene()), \
        (objects.node.streams[0].counts, objects.node.streams[0].last_problem,
         {t: len(m) for t, m in object_outputs(objects, sec).items()})
    got = {topic: msgs[0] for topic, msgs in
           {**objects.outputs(sec), **object_outputs(objects, sec)}.items()}
    for msg in got.values():
        header = header_of(msg)
        assert header.frame_id == objects.frame_id and header.stamp.sec == sec
    labels = labels_from_image(got['objects/labels'])
    depth = depth_from_image(got['depth/image'])
    assert labels.shape == depth.shape == (H, W)
    assert set(np.unique(labels)) <= {0, 1, 2}
    markers = got['objects/markers'].markers
    assert markers[0].action == Marker.DELETEALL
    cubes = [m for m in markers if m.type == Marker.CUBE]
    assert cubes and all(m.header.frame_id == objects.frame_id for m in cubes)
    cloud = object_cloud_array(got['objects/points'])
    assert set(np.unique(cloud['query'])) <= {0, 1} and np.isfinite(cloud['z']).all()
    # the per-query report in /diagnostics
    assert wait_for(lambda: len(objects.node.streams[0].objects_found) == 2, 10.0)
    status = objects_status(objects.node, objects.node.streams[0])
    keys = {kv.key: kv.value for kv in status.values}
    assert 'query 0 "the red box" score' in keys and 'query 1 "a wall" position (m)' in keys
    assert 'random weights' in status.message


def test_bad_queries_are_refused_and_the_old_ones_kept(objects):
    for bad in ([''], ['a,' * 100], ['q'] * 17):
        result = objects.node.set_parameters(
            [Parameter('object_queries', Parameter.Type.STRING_ARRAY, bad)])
        assert not result[0].successful and 'object_queries' in result[0].reason \
            or 'context' in result[0].reason
    assert objects.node.streams[0].pipeline.objects.queries == ()
    result = objects.node.set_parameters([Parameter('object_alpha', value=1.5)])
    assert not result[0].successful


@pytest.mark.parametrize('objects', [[
    Parameter('object_queries', Parameter.Type.STRING_ARRAY, ['the blue box']),
    Parameter('object_proposals', value='topic'),
    Parameter('object_masks_wait_s', value=0.5)]], indirect=True)
def test_label_images_on_the_topic_are_matched_by_stamp(objects):
    given = np.zeros((H, W), dtype=np.uint16)
    given[10:50, 10:60] = 3
    given[40:90, 70:120] = 7

    def send_with_masks(sec):
        msg = labels_image(given, objects.image(sec).header)
        objects.masks_pub.publish(msg)
        objects.send(sec, rgb=scene())

    sec = 30
    assert repeat_until(lambda: send_with_masks(sec),
                        lambda: all_outputs(objects, sec), OUTPUT_S)
    labels = labels_from_image(object_outputs(objects, sec)['objects/labels'][0])
    chosen = objects.node.streams[0].objects_found[0].label
    assert chosen in (3, 7)
    np.testing.assert_array_equal(labels == 1, given == chosen)
    assert {c[0] for c in objects.node.streams[0].objects_found[0].candidates} == {3, 7}

    # a frame whose label image never comes: depth still out, objects skipped and said so
    skipped = objects.node.streams[0].counts['objects_skipped']
    out = objects.output_for(31, rgb=scene())
    assert out['depth/image'].header.stamp.sec == 31
    assert wait_for(lambda: objects.node.streams[0].counts['objects_skipped'] > skipped, 10.0)
    assert 'objects/masks' in objects.node.streams[0].last_problem
    assert object_outputs(objects, 31)['objects/labels'] == []

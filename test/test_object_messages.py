"""ROS messages of language-referred objects: markers, cloud, label image, Detection3D."""

from __future__ import annotations

import sys
import types

from builtin_interfaces.msg import Time
import numpy as np
import pytest
from sensor_msgs.msg import Image, PointCloud2, PointField
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from depthclip_ros.geometry import Intrinsics
from depthclip_ros.io.encodings import ImageFormatError
from depthclip_ros.objects.locate import locate, ObjectLocation, ObjectResult
from depthclip_ros.ros.object_messages import (
    detections_3d,
    labels_from_image,
    labels_image,
    object_cloud,
    object_cloud_array,
    object_markers,
)

K = Intrinsics(fx=100.0, fy=100.0, cx=32.0, cy=24.0, width=64, height=48)
HEADER = Header(frame_id='camera_optical', stamp=Time(sec=12, nanosec=345))


def square_location(z=2.0):
    depth = np.full((48, 64), np.nan, dtype=np.float32)
    depth[10:20, 20:30] = z
    mask = np.isfinite(depth)
    return locate(depth, K, mask)


def box_location():
    points = np.array([[0.1, 0.2, 1.0], [0.3, 0.6, 1.5], [0.2, 0.4, 1.2]], dtype=np.float32)
    return ObjectLocation(position_m=(0.2, 0.4, 1.2), box_min_m=(0.1, 0.2, 1.0),
                          box_max_m=(0.3, 0.6, 1.5), points=points, pixels=3)


def results():
    """Queries 0 and 2 located, query 1 found no depth."""
    return [
        ObjectResult('red mug', 0, 'red mug', 3, 25.25, 1.5, ((1, 20.0), (3, 25.25)),
                     square_location()),
        ObjectResult('the chair', 1, 'chair', 1, 18.0, None, ((1, 18.0),), None),
        ObjectResult('a book', 2, 'book', 2, 21.0, 0.5, ((1, 20.5), (2, 21.0)),
                     box_location()),
    ]


def same_header(msg_header):
    return (msg_header.frame_id == 'camera_optical' and msg_header.stamp.sec == 12
            and msg_header.stamp.nanosec == 345)


def test_markers_delete_all_first_then_cube_and_text_per_located_query():
    array = object_markers(results(), HEADER)
    markers = array.markers
    assert markers[0].action == Marker.DELETEALL
    assert [m.id for m in markers[1:]] == [0, 1, 4, 5]
    assert [m.type for m in markers[1:]] == [Marker.CUBE, Marker.TEXT_VIEW_FACING] * 2
    assert all(same_header(m.header) and m.ns == 'depthclip_objects' for m in markers)
    assert all(m.action == Marker.ADD for m in markers[1:])

    mug, mug_text, book, book_text = markers[1:]
    # the square: x -0.24..-0.06, y -0.28..-0.10 at z = 2 (zero thickness -> 1 cm)
    position = mug.pose.position
    assert (position.x, position.y, position.z) == pytest.approx((-0.15, -0.19, 2.0), abs=1e-6)
    assert (mug.scale.x, mug.scale.y, mug.scale.z) == pytest.approx((0.18, 0.18, 0.01),
                                                                    abs=1e-6)
    assert mug.pose.orientation.w == 1.0 and mug.pose.orientation.x == 0.0
    position = book.pose.position
    assert (position.x, position.y, position.z) == pytest.approx((0.2, 0.4, 1.25))
    assert (book.scale.x, book.scale.y, book.scale.z) == pytest.approx((0.2, 0.4, 0.5))
    assert 0.3 <= mug.color.a <= 0.7
    assert (mug.color.r, mug.color.g, mug.color.b) != (book.color.r, book.color.g, book.color.b)

    assert mug_text.text == 'red mug  2.00 m  (score 25.2)'
    assert book_text.text == 'a book  1.20 m  (score 21.0)'
    assert mug_text.pose.position.y < mug.pose.position.y - mug.scale.y / 2  # above the box
    assert mug_text.scale.z > 0


def test_markers_custom_namespace_and_nothing_located():
    markers = object_markers([results()[1]], HEADER, namespace='objs').markers
    assert len(markers) == 1 and markers[0].action == Marker.DELETEALL
    assert markers[0].ns == 'objs'


def test_query_colours_are_distinct():
    from depthclip_ros.ros.object_messages import query_colour

    colours = {tuple(round(c, 3) for c in (q.r, q.g, q.b))
               for q in (query_colour(i) for i in range(16))}
    assert len(colours) == 16


def test_object_cloud_fields_counts_and_values():
    located = results()
    msg = object_cloud(located, HEADER)
    assert isinstance(msg, PointCloud2) and same_header(msg.header)
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ('x', 0, PointField.FLOAT32, 1), ('y', 4, PointField.FLOAT32, 1),
        ('z', 8, PointField.FLOAT32, 1), ('query', 12, PointField.UINT32, 1)]
    assert msg.height == 1 and msg.width == 103
    assert msg.point_step == 16 and msg.row_step == 16 * 103 and len(msg.data) == 16 * 103
    assert msg.is_dense and not msg.is_bigendian
    cloud = object_cloud_array(msg)
    assert cloud.shape == (103,)
    np.testing.assert_array_equal(cloud['query'], [0] * 100 + [2] * 3)
    xyz = np.stack([cloud['x'], cloud['y'], cloud['z']], axis=-1)
    np.testing.assert_array_equal(xyz[:100], located[0].location.points)
    np.testing.assert_array_equal(xyz[100:], located[2].location.points)


def test_object_cloud_empty():
    msg = object_cloud([], HEADER)
    assert msg.height == 1 and msg.width == 0 and len(msg.data) == 0 and msg.is_dense
    assert object_cloud_array(msg).shape == (0,)


def test_object_cloud_array_honours_big_endian_and_row_padding():
    msg = PointCloud2()
    msg.height, msg.width, msg.is_bigendian = 2, 2, True
    msg.fields = [PointField(name='z', offset=0, datatype=PointField.FLOAT32, count=1),
                  PointField(name='query', offset=4, datatype=PointField.UINT32, count=1)]
    msg.point_step, msg.row_step = 8, 20
    rows = np.zeros((2, 20), dtype=np.uint8)
    values = np.array([(1.5, 7), (2.5, 8), (3.5, 9), (4.5, 10)],
                      dtype=[('z', '>f4'), ('query', '>u4')])
    rows[:, :16] = values.view(np.uint8).reshape(2, 16)
    msg.data = rows.tobytes()
    cloud = object_cloud_array(msg)
    np.testing.assert_array_equal(cloud['z'], [1.5, 2.5, 3.5, 4.5])
    np.testing.assert_array_equal(cloud['query'], [7, 8, 9, 10])
    msg.data = rows.tobytes()[:-1]
    with pytest.raises(ValueError, match='bytes'):
        object_cloud_array(msg)


def label_msg(encoding, values: np.ndarray, pad=0, big=False):
    msg = Image()
    msg.height, msg.width = values.shape
    msg.encoding = encoding
    rows = np.ascontiguousarray(values).view(np.uint8).reshape(values.shape[0], -1)
    if pad:
        rows = np.concatenate([rows, np.full((rows.shape[0], pad), 0xAB, np.uint8)], axis=1)
    msg.step = rows.shape[1]
    msg.is_bigendian = int(big)
    msg.data = rows.tobytes()
    return msg


LABELS = np.arange(35, dtype=np.int64).reshape(5, 7) * 3


def test_labels_image_round_trip():
    msg = labels_image(LABELS, HEADER)
    assert msg.encoding == 'mono16' and msg.step == 14 and not msg.is_bigendian
    assert (msg.height, msg.width) == (5, 7) and same_header(msg.header)
    out = labels_from_image(msg)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, LABELS)
    wide = np.zeros((2, 3), dtype=np.uint16)
    wide[1, 2] = 65535
    np.testing.assert_array_equal(labels_from_image(labels_image(wide, HEADER)), wide)


@pytest.mark.parametrize('encoding,dtype', [('mono8', 'u1'), ('8UC1', 'u1'),
                                            ('mono16', '<u2'), ('16UC1', '<u2'),
                                            ('32SC1', '<i4')])
@pytest.mark.parametrize('pad', [0, 3])
def test_labels_from_image_encodings(encoding, dtype, pad):
    values = LABELS.astype(dtype)
    out = labels_from_image(label_msg(encoding, values, pad))
    assert out.dtype == np.int32 and out.shape == (5, 7)
    np.testing.assert_array_equal(out, LABELS)


@pytest.mark.parametrize('encoding,dtype', [('mono16', '>u2'), ('16UC1', '>u2'),
                                            ('32SC1', '>i4')])
def test_labels_from_image_big_endian(encoding, dtype):
    values = (LABELS * 613).astype(dtype)  # both bytes of each sample matter
    out = labels_from_image(label_msg(encoding, values, pad=1, big=True))
    np.testing.assert_array_equal(out, LABELS * 613)
    # the same bytes read as little-endian are different numbers
    little = labels_from_image(label_msg(encoding, values, pad=1, big=False))
    assert not np.array_equal(little, out)


def test_labels_from_image_32SC1_negative():
    values = np.array([[-1, 0, 2 ** 31 - 1]], dtype='<i4')
    np.testing.assert_array_equal(labels_from_image(label_msg('32SC1', values)), values)


def test_labels_from_image_errors():
    good = label_msg('mono16', LABELS.astype('<u2'))
    msg = label_msg('mono16', LABELS.astype('<u2'))
    msg.step = 13
    with pytest.raises(ImageFormatError, match='step 13'):
        labels_from_image(msg)
    msg = label_msg('mono16', LABELS.astype('<u2'))
    msg.data = bytes(msg.data)[:-2]
    with pytest.raises(ImageFormatError, match='68 bytes, expected'):
        labels_from_image(msg)
    msg = label_msg('mono16', LABELS.astype('<u2'))
    msg.step = 16  # claims padding the data does not have
    with pytest.raises(ImageFormatError, match='expected step x rows'):
        labels_from_image(msg)
    for encoding in ('rgb8', '32FC1', 'bgr8', ''):
        msg = label_msg('mono16', LABELS.astype('<u2'))
        msg.encoding = encoding
        with pytest.raises(ImageFormatError, match='unsupported label image encoding'):
            labels_from_image(msg)
    with pytest.raises(ImageFormatError, match='max_input_pixels'):
        labels_from_image(good, max_pixels=34)
    assert labels_from_image(good, max_pixels=35).shape == (5, 7)
    msg = label_msg('mono16', LABELS.astype('<u2'))
    msg.is_bigendian = 2
    with pytest.raises(ImageFormatError, match='is_bigendian'):
        labels_from_image(msg)
    empty = Image()
    empty.encoding = 'mono8'
    with pytest.raises(ImageFormatError, match='zero or absurd'):
        labels_from_image(empty)


def test_labels_image_errors():
    with pytest.raises(ValueError, match='2-D'):
        labels_image(np.zeros(4, dtype=np.uint16), HEADER)
    with pytest.raises(ValueError, match='integers'):
        labels_image(np.zeros((2, 2), dtype=np.float32), HEADER)
    with pytest.raises(ValueError, match='65535'):
        labels_image(np.full((2, 2), 65536), HEADER)
    with pytest.raises(ValueError, match='65535'):
        labels_image(np.full((2, 2), -1), HEADER)


def test_detections_3d_is_none_without_vision_msgs(monkeypatch):
    monkeypatch.setitem(sys.modules, 'vision_msgs', None)  # import raises ImportError
    monkeypatch.setitem(sys.modules, 'vision_msgs.msg', None)
    assert detections_3d(results(), HEADER) is None


def fake_vision_msgs() -> tuple[types.ModuleType, types.ModuleType]:
    """vision_msgs 4.x message classes with the documented fields only: an unknown
    keyword raises, as it does for rclpy messages."""
    def message(name, **fields):
        def __init__(self, **kwargs):
            unknown = set(kwargs) - set(fields)
            if unknown:
                raise TypeError(f'{name} has no fields {sorted(unknown)}')
            for field, default in fields.items():
                setattr(self, field, kwargs.get(field, default()))
        return type(name, (), {'__init__': __init__})

    msg = types.ModuleType('vision_msgs.msg')
    msg.ObjectHypothesis = message('ObjectHypothesis', class_id=str, score=float)
    msg.ObjectHypothesisWithPose = message('ObjectHypothesisWithPose',
                                           hypothesis=msg.ObjectHypothesis, pose=object)
    msg.BoundingBox3D = message('BoundingBox3D', center=object, size=object)
    msg.Detection3D = message('Detection3D', header=Header, results=list,
                              bbox=msg.BoundingBox3D, id=str)
    msg.Detection3DArray = message('Detection3DArray', header=Header, detections=list)
    package = types.ModuleType('vision_msgs')
    package.msg = msg
    return package, msg


def test_detections_3d_structure(monkeypatch):
    package, msg = fake_vision_msgs()
    monkeypatch.setitem(sys.modules, 'vision_msgs', package)
    monkeypatch.setitem(sys.modules, 'vision_msgs.msg', msg)
    array = detections_3d(results(), HEADER)
    assert isinstance(array, msg.Detection3DArray) and same_header(array.header)
    assert [d.id for d in array.detections] == ['0', '2']  # query 1 has no location
    mug, book = array.detections
    assert same_header(mug.header) and len(mug.results) == 1
    hypothesis = mug.results[0]
    assert hypothesis.hypothesis.class_id == 'red mug'
    assert hypothesis.hypothesis.score == 25.25
    pose = hypothesis.pose.pose
    assert (pose.position.x, pose.position.y, pose.position.z) == pytest.approx(
        (-0.15, -0.19, 2.0), abs=1e-6)
    assert pose.orientation.w == 1.0
    centre, size = book.bbox.center.position, book.bbox.size
    assert (centre.x, centre.y, centre.z) == pytest.approx((0.2, 0.4, 1.25))
    assert (size.x, size.y, size.z) == pytest.approx((0.2, 0.4, 0.5))
    assert book.results[0].hypothesis.class_id == 'a book'
    assert book.results[0].pose.pose.position.z == pytest.approx(1.2)

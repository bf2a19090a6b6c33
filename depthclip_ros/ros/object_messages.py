"""ROS messages for language-referred objects (:mod:`depthclip_ros.objects.locate`), no rclpy.

* :func:`object_markers`: rviz boxes and labels (``visualization_msgs/MarkerArray``).
* :func:`object_cloud`: the objects' inlier points, tagged with their query index.
* :func:`labels_image` / :func:`labels_from_image`: the per-pixel query label image.
* :func:`detections_3d`: ``vision_msgs/Detection3DArray`` when vision_msgs (4.x, ROS
  Humble and later) is importable, ``None`` otherwise; it is imported lazily so that the
  package works without it.

All points are in the camera optical frame (x right, y down, z forward) of ``header``.
"""

from __future__ import annotations

from collections.abc import Sequence

from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
import numpy as np
from sensor_msgs.msg import Image, PointCloud2, PointField
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from depthclip_ros.engine.config import MAX_SIDE_PX
from depthclip_ros.io.encodings import check_pixels, ImageFormatError
from depthclip_ros.io.visualize import query_rgb
from depthclip_ros.objects.locate import ObjectResult
from depthclip_ros.ros.messages import _bytes, image_message

MIN_MARKER_SIZE_M = 0.01  # rviz cannot draw a box thinner than nothing
MARKER_ALPHA = 0.5
TEXT_HEIGHT_M = 0.08  # height of an upper-case letter of the label, metres
# label image encodings -> (numpy sample type without byte order, bytes per pixel)
LABEL_ENCODINGS: dict[str, tuple[str, int]] = {
    'mono8': ('u1', 1), '8UC1': ('u1', 1),
    'mono16': ('u2', 2), '16UC1': ('u2', 2),
    '32SC1': ('i4', 4),
}

_POINT_FIELD_TYPES: dict[int, str] = {
    PointField.INT8: 'i1', PointField.UINT8: 'u1', PointField.INT16: 'i2',
    PointField.UINT16: 'u2', PointField.INT32: 'i4', PointField.UINT32: 'u4',
    PointField.FLOAT32: 'f4', PointField.FLOAT64: 'f8',
}

OBJECT_CLOUD_DTYPE = np.dtype([('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('query', '<u4')])


def query_colour(index: int, alpha: float = MARKER_ALPHA) -> ColorRGBA:
    """A colour of its own for query ``index`` (:func:`visualize.query_rgb`)."""
    r, g, b = query_rgb(index)
    return ColorRGBA(r=float(r), g=float(g), b=float(b), a=float(alpha))


def _point(values: Sequence[float]) -> Point:
    return Point(x=float(values[0]), y=float(values[1]), z=float(values[2]))


def _pose(values: Sequence[float]) -> Pose:
    return Pose(position=_point(values), orientation=Quaternion(x=0.0, y=0.0, z=0.0, w=1.0))


def object_markers(results: Sequence[ObjectResult], header,
                   namespace: str = 'depthclip_objects') -> MarkerArray:
    """rviz markers of the located results.

    First a ``DELETEALL`` marker (queries that are no longer found disappear), then for
    each result with a location a translucent ``CUBE`` (id ``2 * index``: the box, at
    least 1 cm along each axis, in the query's colour) and a ``TEXT_VIEW_FACING`` label
    (id ``2 * index + 1``) just above the box (towards -y, the optical frame's up):
    ``"<query>  <z> m  (score <s>)"`` with the position's z. Every marker carries
    ``header`` and ``namespace``.
    """
    markers = MarkerArray()
    clear = Marker()
    clear.header = header
    clear.ns = namespace
    clear.id = 0
    clear.action = Marker.DELETEALL
    markers.markers.append(clear)
    for result in results:
        location = result.location
        if location is None:
            continue
        centre = location.box_center_m
        cube = Marker()
        cube.header = header
        cube.ns = namespace
        cube.id = 2 * int(result.index)
        cube.type = Marker.CUBE
        cube.action = Marker.ADD
        cube.pose = _pose(centre)
        size = [max(float(s), MIN_MARKER_SIZE_M) for s in location.box_size_m]
        cube.scale = Vector3(x=size[0], y=size[1], z=size[2])
        cube.color = query_colour(result.index)
        text = Marker()
        text.header = header
        text.ns = namespace
        text.id = 2 * int(result.index) + 1
        text.type = Marker.TEXT_VIEW_FACING
        text.action = Marker.ADD
        text.pose = _pose((centre[0], location.box_min_m[1] - TEXT_HEIGHT_M, centre[2]))
        text.scale.z = TEXT_HEIGHT_M
        text.color = ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0)
        text.text = (f'{result.query}  {location.position_m[2]:.2f} m  '
                     f'(score {result.score:.1f})')
        markers.markers += [cube, text]
    return markers


def object_cloud(results: Sequence[ObjectResult], header) -> PointCloud2:
    """Unorganised cloud (height 1) of every located result's inlier points.

    Fields ``x, y, z`` FLOAT32 and ``query`` UINT32 (the result's query index),
    little-endian, 16 bytes a point, in the order of ``results``. Non-finite points are
    left out, so the cloud is dense.
    """
    chunks = []
    for result in results:
        if result.location is None:
            continue
        points = np.asarray(result.location.points, dtype=np.float32).reshape(-1, 3)
        points = points[np.isfinite(points).all(axis=1)]
        chunk = np.empty(len(points), dtype=OBJECT_CLOUD_DTYPE)
        chunk['x'], chunk['y'], chunk['z'] = points[:, 0], points[:, 1], points[:, 2]
        chunk['query'] = int(result.index)
        chunks.append(chunk)
    cloud = np.concatenate(chunks) if chunks else np.empty(0, dtype=OBJECT_CLOUD_DTYPE)
    msg = PointCloud2()
    msg.header = header
    msg.height, msg.width = 1, len(cloud)
    msg.fields = [PointField(name=name, offset=OBJECT_CLOUD_DTYPE.fields[name][1],
                             datatype=PointField.UINT32 if name == 'query'
                             else PointField.FLOAT32, count=1)
                  for name in OBJECT_CLOUD_DTYPE.names]
    msg.is_bigendian = False
    msg.point_step = OBJECT_CLOUD_DTYPE.itemsize
    msg.row_step = msg.point_step * msg.width
    msg.is_dense = True
    msg.data = _bytes(cloud)
    return msg


def object_cloud_array(msg: PointCloud2) -> np.ndarray:
    """PointCloud2 -> ``(height * width,)`` structured array of its fields (a copy).

    For tests and tools: any PointField types, ``is_bigendian`` and ``row_step`` padding
    honoured. Raises ``ValueError`` for a cloud whose sizes do not add up.
    """
    order = '>' if msg.is_bigendian else '<'
    formats = []
    for field in msg.fields:
        if field.datatype not in _POINT_FIELD_TYPES:
            raise ValueError(f'field {field.name!r} has unknown datatype {field.datatype}')
        sample = order + _POINT_FIELD_TYPES[field.datatype]
        formats.append(sample if field.count <= 1 else (sample, (field.count,)))
    dtype = np.dtype({'names': [f.name for f in msg.fields], 'formats': formats,
                      'offsets': [f.offset for f in msg.fields], 'itemsize': msg.point_step})
    if msg.row_step < msg.point_step * msg.width:
        raise ValueError(f'row_step {msg.row_step} is smaller than width x point_step = '
                         f'{msg.width} x {msg.point_step}')
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size != msg.row_step * msg.height:
        raise ValueError(f'data has {data.size} bytes, expected row_step x height = '
                         f'{msg.row_step} x {msg.height}')
    rows = data.reshape(msg.height, msg.row_step)[:, :msg.point_step * msg.width]
    return np.ascontiguousarray(rows).view(dtype).reshape(-1).copy()


def labels_image(labels: np.ndarray, header) -> Image:
    """``(H, W)`` integer labels (0 to 65535) -> mono16 Image, little-endian."""
    if not isinstance(labels, np.ndarray) or labels.ndim != 2:
        raise ValueError(f'labels must be a 2-D array, got shape '
                         f'{getattr(labels, "shape", None)}')
    if labels.dtype != bool and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f'labels must be integers, got {labels.dtype}')
    if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.uint16).max):
        raise ValueError(f'labels must lie in [0, 65535] for mono16, got '
                         f'[{labels.min()}, {labels.max()}]')
    return image_message(labels.astype('<u2'), header, 'mono16')


def labels_from_image(msg: Image, max_pixels: int | None = None) -> np.ndarray:
    """Label image message -> ``(H, W)`` int32 (a copy).

    Accepts mono8/8UC1, mono16/16UC1 and 32SC1; ``step`` padding and ``is_bigendian``
    are honoured. Raises :class:`ImageFormatError` for another encoding, a zero or absurd
    size, more than ``max_pixels`` pixels (checked from the header, before the data is
    touched), a ``step`` shorter than a row, an ``is_bigendian`` other than 0/1 or a
    data length other than ``step * height``.
    """
    spec = LABEL_ENCODINGS.get(msg.encoding)
    if spec is None:
        raise ImageFormatError(f'unsupported label image encoding {msg.encoding!r} '
                               f'(supported: {", ".join(sorted(LABEL_ENCODINGS))})')
    sample, size = spec
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if not (0 < height <= MAX_SIDE_PX and 0 < width <= MAX_SIDE_PX):
        raise ImageFormatError(f'label image size {width}x{height} is zero or absurd')
    check_pixels(height, width, max_pixels)
    if msg.is_bigendian not in (0, 1):
        raise ImageFormatError(f'is_bigendian must be 0 or 1, got {msg.is_bigendian!r}')
    needed = width * size
    if step < needed:
        raise ImageFormatError(f'step {step} is smaller than one {msg.encoding} row of '
                               f'{width} pixels ({needed} bytes)')
    buffer = np.frombuffer(msg.data, dtype=np.uint8)
    if buffer.size != step * height:
        raise ImageFormatError(f'data has {buffer.size} bytes, expected step x rows = '
                               f'{step} x {height} = {step * height}')
    rows = np.ascontiguousarray(buffer.reshape(height, step)[:, :needed])
    order = '>' if msg.is_bigendian else '<'
    return rows.view(order + sample).reshape(height, width).astype(np.int32)


def detections_3d(results: Sequence[ObjectResult], header):
    """``vision_msgs/Detection3DArray`` of the located results, or ``None`` when
    vision_msgs (4.x API: ``ObjectHypothesis`` inside ``ObjectHypothesisWithPose``) is
    not importable.

    One ``Detection3D`` per result with a location: ``id`` the query index as text, one
    hypothesis with ``class_id`` the query text, ``score`` the CLIP score
    (``100 * f . t``, not a probability) and the pose at the robust position; ``bbox``
    centred on the box with its size. Orientations are identity.
    """
    try:
        from vision_msgs.msg import (
            BoundingBox3D,
            Detection3D,
            Detection3DArray,
            ObjectHypothesis,
            ObjectHypothesisWithPose,
        )
    except ImportError:
        return None
    from geometry_msgs.msg import PoseWithCovariance

    array = Detection3DArray()
    array.header = header
    for result in results:
        location = result.location
        if location is None:
            continue
        hypothesis = ObjectHypothesisWithPose(
            hypothesis=ObjectHypothesis(class_id=str(result.query), score=float(result.score)),
            pose=PoseWithCovariance(pose=_pose(location.position_m)))
        size = location.box_size_m
        bbox = BoundingBox3D(center=_pose(location.box_center_m),
                             size=Vector3(x=float(size[0]), y=float(size[1]),
                                          z=float(size[2])))
        array.detections.append(Detection3D(header=header, results=[hypothesis], bbox=bbox,
                                            id=str(int(result.index))))
    return array

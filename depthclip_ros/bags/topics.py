"""Which topics of a recording ``depthclip-ros bag`` reads and where it writes.

The image topic is the one given, else the bag's one colour image topic. The CameraInfo
topic is the one given, else ``camera_info`` beside the image, else the nearest CameraInfo
topic; an automatic choice is refused when its first message does not belong to the image
topic's first image (another frame_id, aspect, or for the nearest topic another size), so
that another camera's calibration never scales silently. The outputs go next to the image
topic (``/cam/color/image_raw`` -> ``/cam/color/depth/image``).
"""

from __future__ import annotations

import contextlib
from typing import Callable

from sensor_msgs.msg import CompressedImage, Image

from depthclip_ros.bags.safety import BagError

IMAGE_TYPES = {'sensor_msgs/msg/Image': Image,
               'sensor_msgs/msg/CompressedImage': CompressedImage}
CAMERA_INFO_TYPE = 'sensor_msgs/msg/CameraInfo'
OUTPUT_TYPES = {'depth/image': 'sensor_msgs/msg/Image',
                'depth/camera_info': CAMERA_INFO_TYPE,
                'points': 'sensor_msgs/msg/PointCloud2',
                'depth/colormap': 'sensor_msgs/msg/Image',
                'depth/uncertainty': 'sensor_msgs/msg/Image',
                'objects/markers': 'visualization_msgs/msg/MarkerArray',
                'objects/points': 'sensor_msgs/msg/PointCloud2',
                'objects/labels': 'sensor_msgs/msg/Image',
                'objects/camera_info': CAMERA_INFO_TYPE}
OBJECT_OUTPUTS = ('objects/markers', 'objects/points', 'objects/labels',
                  'objects/camera_info')
CAMERA_INFO_PEEK = 5  # messages tried for the first readable image / CameraInfo


def output_namespace(image_topic: str, msgtype: str) -> str:
    """Where the outputs go: next to the image topic (``/cam/color/image_raw`` ->
    ``/cam/color``); a CompressedImage's ``/compressed`` suffix is the transport's."""
    base = image_topic.rstrip('/')
    if msgtype == 'sensor_msgs/msg/CompressedImage' and base.endswith('/compressed'):
        base = base[:-len('/compressed')]
    namespace = base.rsplit('/', 1)[0]
    return namespace or '/'


def output_topics(namespace: str, colormap: bool, objects: bool = False,
                  uncertainty: bool = False) -> dict[str, str]:
    names = [n for n in OUTPUT_TYPES if (colormap or n != 'depth/colormap')
             and (uncertainty or n != 'depth/uncertainty')
             and (objects or n not in OBJECT_OUTPUTS)]
    prefix = namespace.rstrip('/')
    return {name: f'{prefix}/{name}' for name in names}


def _common_prefix_depth(a: str, b: str) -> int:
    depth = 0
    for x, y in zip(a.strip('/').split('/'), b.strip('/').split('/')):
        if x != y:
            break
        depth += 1
    return depth


def choose_topics(connections, image_topic: str | None, info_topic: str | None
                  ) -> tuple[str, str, str | None]:
    """``(image topic, its message type, camera_info topic or None)``.

    Without ``image_topic`` the bag must hold one image topic (topics named like depth
    images are not candidates when others exist). Without ``info_topic``: ``camera_info``
    beside the image, else the CameraInfo topic sharing the longest namespace with it,
    which :func:`check_camera_info` then accepts only if its first message matches the
    first image (frame_id and size).
    """
    types = {}
    for conn in connections:
        types.setdefault(conn.topic, conn.msgtype)
    images = sorted(t for t, m in types.items() if m in IMAGE_TYPES)
    infos = sorted(t for t, m in types.items() if m == CAMERA_INFO_TYPE)
    if image_topic is None:
        colour = [t for t in images if 'depth' not in t.lower()] or images
        if len(colour) != 1:
            raise BagError(f'pick the image topic with --image-topic; the bag has '
                           f'{len(images)} image topics: {", ".join(images) or "none"}')
        image_topic = colour[0]
    elif image_topic not in types:
        raise BagError(f'topic {image_topic} is not in the bag; image topics: '
                       f'{", ".join(images) or "none"}')
    elif types[image_topic] not in IMAGE_TYPES:
        raise BagError(f'{image_topic} is {types[image_topic]}, not sensor_msgs/Image or '
                       f'sensor_msgs/CompressedImage')
    sibling = f'{output_namespace(image_topic, types[image_topic]).rstrip("/")}/camera_info'
    if info_topic is None and sibling in infos:  # the ROS convention
        info_topic = sibling
    elif info_topic is None and infos:
        scores = {t: _common_prefix_depth(t, image_topic) for t in infos}
        best = max(scores.values())
        matches = [t for t, s in scores.items() if s == best]
        if len(matches) > 1:
            raise BagError(f'pick the CameraInfo topic with --camera-info-topic: '
                           f'{", ".join(matches)}')
        info_topic = matches[0]
    elif info_topic is not None and types.get(info_topic) != CAMERA_INFO_TYPE:
        raise BagError(f'{info_topic} is not a sensor_msgs/CameraInfo topic in the bag '
                       f'(CameraInfo topics: {", ".join(infos) or "none"})')
    return image_topic, types[image_topic], info_topic


def sibling_camera_info(image_topic: str, msgtype: str) -> str:
    """The ROS convention: ``camera_info`` beside the image (``/cam/image_raw`` ->
    ``/cam/camera_info``)."""
    return f'{output_namespace(image_topic, msgtype).rstrip("/")}/camera_info'


def _first_readable(reader, topic: str, describe: Callable) -> tuple | None:
    """``describe(message)`` of the first readable of the first few messages on ``topic``."""
    conns = [c for c in reader.connections if c.topic == topic]
    try:
        messages = reader.messages(connections=conns)
        with contextlib.closing(messages):
            for index, (conn, _, raw) in enumerate(messages):
                if index >= CAMERA_INFO_PEEK:
                    break
                try:
                    return describe(reader.deserialize(raw, conn.msgtype))
                except Exception:  # noqa: BLE001 - corrupt: the run reports it, try the next
                    continue
    except Exception:  # noqa: BLE001 - a damaged file: the run reports it
        return None
    return None


def _image_facts(msg) -> tuple[str, tuple[int, int] | None]:
    if hasattr(msg, 'format'):  # CompressedImage: the size its header declares
        from depthclip_ros.io.encodings import encoded_image_size, ImageFormatError
        try:
            return msg.header.frame_id, encoded_image_size(bytes(msg.data))
        except ImageFormatError:
            return msg.header.frame_id, None
    return msg.header.frame_id, (int(msg.height), int(msg.width))


def _info_facts(msg) -> tuple[str, tuple[int, int]]:
    from depthclip_ros.ros.messages import image_size_of
    return msg.header.frame_id, tuple(int(v) for v in image_size_of(msg))


def _size(size) -> str:
    return f'{size[1]}x{size[0]}'


def check_camera_info(reader, image_topic: str, image_type: str, info_topic: str | None,
                      explicit: bool, warn: Callable[[str], None]) -> str:
    """Check that ``info_topic`` belongs to ``image_topic``; returns how it was chosen and
    what it describes (for the summary).

    The first readable image and CameraInfo are compared: another frame_id (both
    non-empty), another aspect ratio, or for a topic that is not beside the image another
    size, mean another camera. An automatic choice is then refused (:class:`BagError`); a
    topic given explicitly (``explicit``) is used with a warning. The nearest topic whose
    frame_id cannot be compared (empty) is used only with the image's exact size, and
    warned about.
    """
    from depthclip_ros.ros.messages import ASPECT_TOLERANCE

    if info_topic is None:
        return 'none in the bag'
    sibling = sibling_camera_info(image_topic, image_type)
    how = ('given with --camera-info-topic' if explicit else 'beside the image'
           if info_topic == sibling else f'the nearest CameraInfo topic; {sibling} is absent')
    info = _first_readable(reader, info_topic, _info_facts)
    if info is None:
        return f'{info_topic} ({how}; no readable message)'
    info_frame, info_size = info
    described = f'{info_topic} ({how}; {_size(info_size)}, frame_id {info_frame!r})'
    image = _first_readable(reader, image_topic, _image_facts)
    if image is None:
        return described
    image_frame, image_size = image
    wrong = []
    if info_frame and image_frame and info_frame != image_frame:
        wrong.append(f'frame_id {info_frame!r}, the images {image_frame!r}')
    if image_size and info_size != image_size and min(info_size) > 0:
        ratio = (image_size[1] / image_size[0]) / (info_size[1] / info_size[0])
        if abs(ratio - 1.0) > ASPECT_TOLERANCE:
            wrong.append(f'size {_size(info_size)}, the images {_size(image_size)} (another '
                         f'aspect ratio)')
        elif explicit or info_topic != sibling:
            wrong.append(f'size {_size(info_size)}, the images {_size(image_size)}')
        else:
            described += f", scaled to the images' {_size(image_size)}"
    if wrong:
        text = (f'CameraInfo {info_topic} ({how}) does not match the first image on '
                f'{image_topic}: {"; ".join(wrong)}')
        if not explicit:
            raise BagError(f"{text}. It looks like another camera's, whose intrinsics would "
                           f'give wrong metres; pass --camera-info-topic {info_topic} to use '
                           f'it anyway, name the right one with --camera-info-topic, or run '
                           f'without CameraInfo with --fallback-hfov-deg')
        warn(f'{text}; using it because it was given with --camera-info-topic (a CameraInfo '
             f'of another size is scaled when the aspect ratio matches)')
    elif not explicit and info_topic != sibling and not (info_frame and image_frame):
        warn(f'CameraInfo {info_topic} is not beside {image_topic} ({sibling} is absent) and '
             f'its frame_id cannot be compared (empty); using it as the nearest CameraInfo '
             f"topic of the images' size {_size(info_size)}; pass --camera-info-topic to "
             f'choose another')
    return described


def valid_ros2_topic(name: str) -> bool:
    """Whether ROS 2 allows ``name`` as a topic (ROS 1 bags may hold names it does not,
    such as RealSense's with spaces: those topics are not copied)."""
    from rclpy.exceptions import InvalidTopicNameException
    from rclpy.validate_full_topic_name import validate_full_topic_name
    try:
        validate_full_topic_name(name)
    except InvalidTopicNameException:
        return False
    return True

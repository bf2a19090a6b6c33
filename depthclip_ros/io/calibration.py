"""The frames an INT8 calibration reads (``precision: int8``, ``calibration``): a folder of
images, or a recording's colour image topics. numpy, OpenCV and rosbags only; no ROS.

- a folder: its images (sorted); a dataset folder in the ``../shared/data`` layout (no
  images of its own, an ``rgb/`` folder) gives the images of ``rgb/``;
- a bag (a ROS 1 ``.bag``, a rosbag2 ``.mcap``/``.db3`` file or a rosbag2 folder with
  ``metadata.yaml``): the ``sensor_msgs/Image`` and ``CompressedImage`` messages of its
  colour topics (topics named like depth images are left out, and so are messages whose
  encoding is not a colour one: 16-bit and float depth, ``compressedDepth``), read with
  rosbags' own deserialiser, so that the engine needs no ROS install for them.

At most :data:`CALIBRATION_FRAMES` frames are kept, evenly spaced over what the source
holds. Every problem raises :class:`~depthclip_ros.io.dataset.DatasetError` (a
``ValueError``) naming the source in one line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from depthclip_ros.io.dataset import DatasetError, expand_inputs, IMAGE_SUFFIXES, one_line

# Frames NNCF's post-training quantization sees: its statistics settle within a few dozen
# frames of one kind of scene; more only lengthens the one-off calibration.
CALIBRATION_FRAMES = 32
MIN_CALIBRATION_FRAMES = 1
BAG_SUFFIXES = ('.bag', '.mcap', '.db3')
IMAGE_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')
# Image encodings that are not colour pictures: depth (16-bit, float) is left out.
NOT_COLOUR = ('16UC1', 'mono16', '32FC1', '32FC', '64FC', '16SC1')


def is_recording(path: Path) -> bool:
    """A ROS 1 bag, a rosbag2 storage file or a rosbag2 folder (with metadata.yaml)."""
    return (path.is_file() and path.suffix.lower() in BAG_SUFFIXES) or \
        (path.is_dir() and (path / 'metadata.yaml').is_file())


def calibration_frames(source: str | Path, limit: int = CALIBRATION_FRAMES
                       ) -> list[np.ndarray]:
    """``(H, W, 3)`` uint8 RGB frames of ``source`` (a folder of images or a bag), at most
    ``limit``, evenly spaced. Raises ``DatasetError`` naming ``source``."""
    path = Path(str(source)).expanduser()
    if not str(source).strip():
        raise DatasetError('calibration: no source given (a folder of images or a bag)')
    if not path.exists():
        raise DatasetError(f'calibration {path}: no such file or folder')
    try:
        frames = _bag_frames(path, limit) if is_recording(path) else \
            _folder_frames(path, limit)
    except DatasetError as error:
        raise DatasetError(f'calibration {path}: {error}') from None
    if len(frames) < MIN_CALIBRATION_FRAMES:
        raise DatasetError(f'calibration {path}: no colour frame found')
    return frames


def _spaced(count: int, limit: int) -> list[int]:
    """At most ``limit`` indices of ``range(count)``, evenly spaced, first and last kept."""
    if count <= limit:
        return list(range(count))
    return sorted({round(i * (count - 1) / (limit - 1)) for i in range(limit)}) \
        if limit > 1 else [0]


def _folder_frames(path: Path, limit: int) -> list[np.ndarray]:
    from depthclip_ros.io.dataset import read_rgb
    if path.is_dir() and (path / 'rgb').is_dir() and not any(
            p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir()):
        path = path / 'rgb'  # a dataset folder (../shared/data layout)
    files = expand_inputs([path])
    return [read_rgb(files[i]) for i in _spaced(len(files), limit)]


def _bag_frames(path: Path, limit: int) -> list[np.ndarray]:
    from rosbags.highlevel import AnyReader
    try:
        with AnyReader([path]) as reader:
            images = [c for c in reader.connections if c.msgtype in IMAGE_TYPES]
            colour = [c for c in images if 'depth' not in c.topic.lower()]
            if not colour:
                topics = sorted({c.topic for c in images})
                raise DatasetError(f'no colour image topic (image topics: '
                                   f'{", ".join(topics) or "none"})')
            count = sum(c.msgcount for c in colour)
            wanted = set(_spaced(count, limit)) if count else None
            frames = []
            for index, (connection, _, raw) in enumerate(reader.messages(colour)):
                if wanted is not None and index not in wanted:
                    continue
                rgb = _decode(reader.deserialize(raw, connection.msgtype))
                if rgb is not None:
                    frames.append(rgb)
                if len(frames) >= limit:
                    break
            return frames
    except DatasetError:
        raise
    except Exception as error:  # noqa: BLE001 - rosbags' many reader errors, one line
        raise DatasetError(f'cannot read the bag ({one_line(error)})') from None


def _decode(msg) -> np.ndarray | None:
    """A colour image message as RGB, ``None`` for depth or what cannot be decoded."""
    import cv2

    from depthclip_ros.io.encodings import decode_to_rgb, ImageFormatError
    if hasattr(msg, 'encoding'):  # sensor_msgs/Image
        if msg.encoding in NOT_COLOUR or msg.encoding.startswith(NOT_COLOUR):
            return None
        try:
            return decode_to_rgb(msg.encoding, msg.height, msg.width, msg.step,
                                 msg.is_bigendian, msg.data)
        except ImageFormatError:
            return None
    if 'depth' in str(msg.format).lower():  # compressedDepth
        return None
    decoded = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR)
    return None if decoded is None else cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)

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
``ValueError``) naming the source in one line. A chosen image file or a colour message that
cannot be decoded is damage, not skipped: :class:`CalibrationUnreadable` says how many of
those read could not be, and names the first (a set quietly smaller than the user gave
would calibrate on other scenes than they chose). :func:`check_calibration_source` is the
cheap check a tool makes before anything loads (the path exists and is a folder of images
or a recording); it decodes nothing.
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


class CalibrationUnreadable(DatasetError):
    """Calibration frames that exist but could not be read (damaged input, not an option
    that is wrong): ``count`` of ``total`` read."""

    def __init__(self, source: Path, count: int, total: int, first: str):
        self.count, self.total = count, total
        what = 'image' if total == 1 else 'images'
        super().__init__(f'calibration {source}: {count} of {total} {what} read could not '
                         f'be decoded (first: {first})')


def check_calibration_source(source: str | Path) -> None:
    """``DatasetError`` unless ``source`` exists and is a recording or a folder (or file)
    of images; reads no image (what a tool checks before the model loads)."""
    path = Path(str(source)).expanduser()
    if not str(source).strip():
        raise DatasetError('calibration: no source given (a folder of images or a bag)')
    if not path.exists():
        raise DatasetError(f'calibration {path}: no such file or folder')
    if is_recording(path):
        return
    if not path.is_dir() and path.suffix.lower() not in IMAGE_SUFFIXES:
        raise DatasetError(f'calibration {path}: neither a folder of images, an image nor a '
                           f'recording ({", ".join(BAG_SUFFIXES)} or a rosbag2 folder)')
    if path.is_dir() and (path / 'rgb').is_dir() and not any(
            p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir()):
        path = path / 'rgb'
    try:
        expand_inputs([path])
    except DatasetError as error:
        raise DatasetError(f'calibration {path}: {error}') from None


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
    except CalibrationUnreadable:
        raise
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
    chosen = [files[i] for i in _spaced(len(files), limit)]
    frames, problems = [], []
    for file in chosen:
        try:
            frames.append(read_rgb(file))
        except ValueError as error:  # ImageFormatError
            problems.append(one_line(error))
    if problems:
        raise CalibrationUnreadable(path, len(problems), len(chosen), problems[0])
    return frames


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
            frames, damaged, read = [], [], 0
            for index, (connection, _, raw) in enumerate(reader.messages(colour)):
                if wanted is not None and index not in wanted:
                    continue
                read += 1
                try:
                    rgb = _decode(reader.deserialize(raw, connection.msgtype))
                except Exception as error:  # noqa: BLE001 - a damaged message, counted
                    damaged.append(f'{connection.topic} message {index}: {one_line(error)}')
                    continue
                if rgb is not None:
                    frames.append(rgb)
                if len(frames) >= limit:
                    break
            if damaged:
                raise CalibrationUnreadable(path, len(damaged), read, damaged[0])
            return frames
    except DatasetError:
        raise
    except Exception as error:  # noqa: BLE001 - rosbags' many reader errors, one line
        raise DatasetError(f'cannot read the bag ({one_line(error)})') from None


def _decode(msg) -> np.ndarray | None:
    """A colour image message as RGB; ``None`` for depth and encodings the node does not
    read; ``ValueError`` for a colour message that cannot be decoded (damage)."""
    import cv2

    from depthclip_ros.io.encodings import decode_to_rgb, ENCODINGS, ImageFormatError
    if hasattr(msg, 'encoding'):  # sensor_msgs/Image
        if msg.encoding in NOT_COLOUR or msg.encoding.startswith(NOT_COLOUR) or \
                msg.encoding not in ENCODINGS:  # depth, or a kind the node does not read
            return None
        return decode_to_rgb(msg.encoding, msg.height, msg.width, msg.step,
                             msg.is_bigendian, msg.data)
    if 'depth' in str(msg.format).lower():  # compressedDepth
        return None
    decoded = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
        raise ImageFormatError(f'{msg.format} data that cannot be decoded')
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)

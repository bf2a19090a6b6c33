"""Reading RGB-D folders in the ``../shared/data`` layout, and image files.

A dataset folder holds ``intrinsics.json`` (``fx, fy, cx, cy, width, height,
depth_unit_m``), ``rgb/NNNN.(png|jpg)`` and ``depth/NNNN.(png|npy)``: uint16 PNG in units
of ``depth_unit_m`` or float32 ``.npy`` in metres, 0 = invalid.

Every problem with a file or folder raises a ``ValueError`` (:class:`DatasetError` for
folders and frames, ``ImageFormatError`` for images) whose message names the file and the
reason in one line, so that the tools can report it and go on or stop cleanly.

OpenCV is imported when a file is read, not with this module (the tools' ``--help`` and
option checks import it without OpenCV).
"""

from __future__ import annotations

from dataclasses import dataclass
import json
import math
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from depthclip_ros.engine.config import MAX_SIDE_PX
from depthclip_ros.geometry import Intrinsics

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')
VIDEO_SUFFIXES = ('.mp4', '.avi', '.mov', '.mkv', '.webm')
DEPTH_SUFFIXES = ('.png', '.npy')


class DatasetError(ValueError):
    """A dataset folder, input path or frame that cannot be used; the message says why."""


ONE_LINE_CHARS = 600  # long enough for a refusal that lists a few files by full path


def one_line(error: BaseException) -> str:
    """An exception's message on one line (OpenCV's run over several), at most
    ``ONE_LINE_CHARS`` long."""
    text = ' '.join(str(error).split()) or type(error).__name__
    return text if len(text) <= ONE_LINE_CHARS else text[:ONE_LINE_CHARS - 3] + '...'


def read_rgb(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB (grey and 16-bit are converted).

    With ``max_pixels`` the size its header declares is checked before decoding
    (``ImageFormatError``, a ``ValueError``). Any file that cannot be decoded, or whose
    pixels are not 8- or 16-bit unsigned with 1, 3 or 4 channels, raises
    ``ImageFormatError`` naming the file."""
    import cv2

    from depthclip_ros.io.encodings import check_pixels, encoded_image_size, ImageFormatError
    if max_pixels is not None:
        try:
            check_pixels(*encoded_image_size(str(path)), max_pixels)
        except ImageFormatError as error:
            raise ImageFormatError(f'{path}: {error}') from None
    try:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    except cv2.error as error:
        raise ImageFormatError(f'cannot read image {path} ({one_line(error)})') from None
    if image is None:
        raise ImageFormatError(f'cannot read image {path} (missing, not an image, corrupt '
                               f'or too large for OpenCV)')
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.dtype != np.uint8:
        raise ImageFormatError(f'image {path} has {image.dtype} pixels; only 8- and 16-bit '
                               f'unsigned images are read')
    if image.size == 0:
        raise ImageFormatError(f'image {path} is empty ({image.shape})')
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    raise ImageFormatError(f'image {path} has {channels} channels; 1, 3 or 4 are read')


def read_depth(path: str | Path, depth_unit_m: float,
               expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a ground-truth depth map as ``(H, W)`` float32 metres, 0 = invalid.

    Non-finite and negative values count as invalid (0). With ``expected_size``
    ``(height, width)`` the size is checked from the file's header (PNG) or array header
    (``.npy``) before the pixels are read. Raises :class:`DatasetError`."""
    import cv2

    from depthclip_ros.io.encodings import encoded_image_size, ImageFormatError
    path = Path(path)
    try:
        if path.suffix.lower() == '.npy':
            depth = np.load(path, mmap_mode='r', allow_pickle=False)
            if depth.ndim != 2:
                raise DatasetError(f'depth {path} must be single-channel (H, W), got shape '
                                   f'{depth.shape}')
            if depth.dtype.kind not in 'fiu':
                raise DatasetError(f'depth {path} holds {depth.dtype} values, not numbers')
            _check_size(path, depth.shape, expected_size)
            depth = np.array(depth, dtype=np.float32)
        else:
            if expected_size is not None:
                try:
                    _check_size(path, encoded_image_size(str(path)), expected_size)
                except ImageFormatError as error:
                    raise DatasetError(f'depth {path}: {error}') from None
            depth = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if depth is None:
                raise DatasetError(f'cannot read depth {path} (missing, not an image or '
                                   f'corrupt)')
            if depth.ndim != 2:
                raise DatasetError(f'depth {path} must be single-channel, got shape '
                                   f'{depth.shape}')
            depth = depth.astype(np.float32)
    except DatasetError:
        raise
    except (OSError, ValueError, EOFError, cv2.error) as error:
        raise DatasetError(f'cannot read depth {path} ({one_line(error)})') from None
    with np.errstate(invalid='ignore', over='ignore'):
        depth = depth * np.float32(depth_unit_m)
        depth[~(np.isfinite(depth) & (depth > 0))] = 0.0
    return depth


def _check_size(path: Path, size: tuple[int, int], expected: tuple[int, int] | None) -> None:
    if expected is not None and tuple(size) != tuple(expected):
        raise DatasetError(f'{path} is {size[1]}x{size[0]} pixels, the intrinsics say '
                           f'{expected[1]}x{expected[0]}')


@dataclass
class Frame:
    name: str
    rgb: np.ndarray  # (H, W, 3) uint8
    depth_m: np.ndarray  # (H, W) float32 metres, 0 = invalid
    intrinsics: Intrinsics


def _number(info: dict, key: str, source: Path, integer: bool = False) -> float | int:
    if key not in info:
        raise DatasetError(f'{source}: no "{key}"')
    value = info[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value):
        raise DatasetError(f'{source}: "{key}" must be a finite number, got {value!r}')
    if integer:
        if value != int(value) or not 0 < value <= MAX_SIDE_PX:
            raise DatasetError(f'{source}: "{key}" must be a whole number of pixels in 1..'
                               f'{MAX_SIDE_PX}, got {value!r}')
        return int(value)
    return float(value)


def read_intrinsics(path: Path) -> tuple[Intrinsics, float]:
    """``(intrinsics, depth_unit_m)`` from a dataset's ``intrinsics.json``."""
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f'cannot read {path} ({one_line(error)})') from None
    except ValueError as error:
        raise DatasetError(f'{path} is not valid JSON ({one_line(error)})') from None
    if not isinstance(info, dict):
        raise DatasetError(f'{path} must hold a JSON object, got {type(info).__name__}')
    fx, fy, cx, cy = (_number(info, key, path) for key in ('fx', 'fy', 'cx', 'cy'))
    width, height = (_number(info, key, path, integer=True) for key in ('width', 'height'))
    unit = _number(info, 'depth_unit_m', path) if 'depth_unit_m' in info else 0.001
    if unit <= 0:
        raise DatasetError(f'{path}: "depth_unit_m" must be > 0, got {unit}')
    try:
        return Intrinsics(fx, fy, cx, cy, width, height), unit
    except ValueError as error:
        raise DatasetError(f'{path}: {error}') from None


class RGBDFolder:
    """A folder in the ``../shared/data`` layout; iterate for :class:`Frame` objects.

    The constructor checks everything that can be checked without reading the frames
    (``intrinsics.json``, the ``rgb/`` and ``depth/`` folders, at least one pair) and
    raises :class:`DatasetError`. :meth:`frame` reads one pair, checking both sizes from
    the file headers before decoding."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        info_path = self.root / 'intrinsics.json'
        if not info_path.exists():
            raise DatasetError(f'{self.root} is not a dataset folder: no intrinsics.json')
        self.intrinsics, self.depth_unit_m = read_intrinsics(info_path)
        rgb_files = self._listing('rgb', IMAGE_SUFFIXES)
        depth_files = self._listing('depth', DEPTH_SUFFIXES)
        depth_by_stem: dict[str, Path] = {}
        for path in depth_files:  # sorted: .npy before .png when both exist
            depth_by_stem.setdefault(path.stem, path)
        self.pairs = [(p, depth_by_stem[p.stem]) for p in rgb_files if p.stem in depth_by_stem]
        self.unpaired = [p for p in rgb_files if p.stem not in depth_by_stem]
        if not self.pairs:
            raise DatasetError(f'{self.root} has no rgb/ + depth/ pairs (same file stem in '
                               f'both: {len(rgb_files)} rgb image(s), {len(depth_files)} '
                               f'depth file(s))')

    def _listing(self, folder: str, suffixes: tuple[str, ...]) -> list[Path]:
        path = self.root / folder
        if not path.is_dir():
            raise DatasetError(f'{self.root} has no {folder}/ folder')
        try:
            return sorted(p for p in path.iterdir()
                          if p.suffix.lower() in suffixes and p.is_file())
        except OSError as error:
            raise DatasetError(f'cannot list {path} ({one_line(error)})') from None

    @property
    def is_nyu(self) -> bool:
        """NYU Depth v2 folders get the paper's protocol (crop, Eigen mask, 10 m cap)."""
        return 'nyu' in self.root.name.lower() and self.intrinsics.size == (480, 640)

    def __len__(self) -> int:
        return len(self.pairs)

    def frame(self, index: int) -> Frame:
        """The ``index``-th pair; :class:`DatasetError` (or ``ImageFormatError``) when a
        file cannot be read or its size is not the intrinsics size."""
        from depthclip_ros.io.encodings import encoded_image_size, ImageFormatError
        rgb_path, depth_path = self.pairs[index]
        size = self.intrinsics.size
        try:
            _check_size(rgb_path, encoded_image_size(str(rgb_path)), size)
        except ImageFormatError as error:
            raise DatasetError(f'{rgb_path}: {error}') from None
        rgb = read_rgb(rgb_path)
        _check_size(rgb_path, rgb.shape[:2], size)
        depth = read_depth(depth_path, self.depth_unit_m, expected_size=size)
        return Frame(rgb_path.stem, rgb, depth, self.intrinsics)

    def __iter__(self) -> Iterator[Frame]:
        for index in range(len(self.pairs)):
            yield self.frame(index)


def expand_inputs(paths: list[str | Path]) -> list[Path]:
    """Image files, folders (their images, sorted) and video files, in the given order.

    Raises :class:`DatasetError` for a path that does not exist, is neither a file nor a
    folder, or is a folder that cannot be listed or holds no image."""
    out = []
    for path in map(Path, paths):
        if path.is_dir():
            try:
                found = sorted(p for p in path.iterdir()
                               if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            except OSError as error:
                raise DatasetError(f'cannot list folder {path} ({one_line(error)})') from None
            if not found:
                raise DatasetError(f'folder {path} holds no images '
                                   f'({", ".join(IMAGE_SUFFIXES)})')
            out.extend(found)
        elif path.is_file():
            out.append(path)
        elif os.path.lexists(path):
            raise DatasetError(f'not a file or folder: {path}')
        else:
            raise DatasetError(f'no such file or folder: {path}')
    return out


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def video_frame_name(name: str, index: int) -> str:
    """Name of frame ``index`` of a video named ``name``: ``<name>_NNNNNN``."""
    return f'{name}_{index:06d}'


def iter_images(path: Path, max_pixels: int | None = None, name: str | None = None
                ) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, RGB image)`` of an image file, or of every frame of a video file.

    ``name`` defaults to the file's stem; video frames are ``<name>_NNNNNN``. With
    ``max_pixels`` an image's header and a video's declared frame size are checked before
    any pixel is decoded (and every decoded frame again). Raises ``ValueError``."""
    import cv2

    from depthclip_ros.io.encodings import check_pixels, ImageFormatError
    path = Path(path)
    name = path.stem if name is None else name
    if not is_video(path):
        yield name, read_rgb(path, max_pixels)
        return
    # FFmpeg's own complaints ("moov atom not found") would add lines of their own to the
    # one-line report of the error raised below; quiet unless the user asked otherwise.
    os.environ.setdefault('OPENCV_FFMPEG_LOGLEVEL', '-8')
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise DatasetError(f'cannot open video {path}')
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        if width > 0 and height > 0:
            try:
                check_pixels(height, width, max_pixels)
            except ImageFormatError as error:
                raise ImageFormatError(f'video {path}: {error}') from None
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok or frame is None:
                break
            try:
                check_pixels(frame.shape[0], frame.shape[1], max_pixels)
            except ImageFormatError as error:
                raise ImageFormatError(f'video {path} frame {index}: {error}') from None
            if frame.ndim == 2:
                rgb = cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
            else:
                rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            yield video_frame_name(name, index), rgb
            index += 1
    except cv2.error as error:
        raise DatasetError(f'cannot read video {path} ({one_line(error)})') from None
    finally:
        capture.release()
    if index == 0:
        raise DatasetError(f'video {path} has no readable frame')


def video_frame_count(path: Path) -> int | None:
    """The frame count a video file declares (``None`` when it declares none or cannot be
    opened): for progress only, the frames are counted again as they are decoded."""
    import cv2
    os.environ.setdefault('OPENCV_FFMPEG_LOGLEVEL', '-8')
    capture = cv2.VideoCapture(str(path))
    try:
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if capture.isOpened() else 0
    except (cv2.error, ValueError, OverflowError):
        count = 0
    finally:
        capture.release()
    return count if count > 0 else None

"""Reading RGB-D folders in the ``../shared/data`` layout, and image files.

A dataset folder holds ``intrinsics.json`` (``fx, fy, cx, cy, width, height,
depth_unit_m``), ``rgb/NNNN.(png|jpg)`` and ``depth/NNNN.(png|npy)``: uint16 PNG in units
of ``depth_unit_m`` or float32 ``.npy`` in metres, 0 = invalid.
"""

from __future__ import annotations

from dataclasses import dataclass
import json
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from .encodings import check_pixels, encoded_image_size
from .geometry import Intrinsics

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')
VIDEO_SUFFIXES = ('.mp4', '.avi', '.mov', '.mkv', '.webm')


def read_rgb(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB (grey and 16-bit are converted).

    With ``max_pixels`` the size its header declares is checked before decoding
    (``ImageFormatError``, a ``ValueError``)."""
    if max_pixels is not None:
        check_pixels(*encoded_image_size(str(path)), max_pixels)
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f'cannot read image {path}')
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_depth(path: str | Path, depth_unit_m: float) -> np.ndarray:
    """Read a ground-truth depth map as ``(H, W)`` float32 metres, 0 = invalid."""
    path = Path(path)
    if path.suffix == '.npy':
        depth = np.load(path).astype(np.float32)
    else:
        depth = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if depth is None:
            raise ValueError(f'cannot read depth {path}')
        depth = depth.astype(np.float32)
    if depth.ndim != 2:
        raise ValueError(f'depth {path} must be single-channel, got shape {depth.shape}')
    return depth * np.float32(depth_unit_m)


@dataclass
class Frame:
    name: str
    rgb: np.ndarray  # (H, W, 3) uint8
    depth_m: np.ndarray  # (H, W) float32 metres, 0 = invalid
    intrinsics: Intrinsics


class RGBDFolder:
    """A folder in the ``../shared/data`` layout; iterate for :class:`Frame` objects."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        info_path = self.root / 'intrinsics.json'
        if not info_path.is_file():
            raise ValueError(f'{self.root} is not a dataset folder: no intrinsics.json')
        info = json.loads(info_path.read_text())
        self.intrinsics = Intrinsics(float(info['fx']), float(info['fy']), float(info['cx']),
                                     float(info['cy']), int(info['width']), int(info['height']))
        self.depth_unit_m = float(info.get('depth_unit_m', 0.001))
        self.pairs = []
        for rgb_path in sorted((self.root / 'rgb').iterdir()):
            if rgb_path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            matches = [p for p in (self.root / 'depth').glob(rgb_path.stem + '.*')
                       if p.suffix in ('.png', '.npy')]
            if matches:
                self.pairs.append((rgb_path, sorted(matches)[0]))
        if not self.pairs:
            raise ValueError(f'{self.root} has no rgb/ + depth/ pairs')

    @property
    def is_nyu(self) -> bool:
        """NYU Depth v2 folders get the paper's protocol (crop, Eigen mask, 10 m cap)."""
        return 'nyu' in self.root.name.lower() and self.intrinsics.size == (480, 640)

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[Frame]:
        for rgb_path, depth_path in self.pairs:
            rgb = read_rgb(rgb_path)
            depth = read_depth(depth_path, self.depth_unit_m)
            if rgb.shape[:2] != self.intrinsics.size or depth.shape != self.intrinsics.size:
                raise ValueError(f'{rgb_path.name}: rgb {rgb.shape[:2]} / depth {depth.shape} '
                                 f'do not match the intrinsics size {self.intrinsics.size}')
            yield Frame(rgb_path.stem, rgb, depth, self.intrinsics)


def expand_inputs(paths: list[str | Path]) -> list[Path]:
    """Image files, folders (their images, sorted) and video files, in the given order."""
    out = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ValueError(f'folder {path} holds no images ({", ".join(IMAGE_SUFFIXES)})')
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise ValueError(f'no such file or folder: {path}')
    return out


def iter_images(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """``(stem, RGB image)`` of an image file, or of every frame of a video file."""
    if path.suffix.lower() in VIDEO_SUFFIXES:
        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            raise ValueError(f'cannot open video {path}')
        index = 0
        try:
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                yield f'{path.stem}_{index:06d}', cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                index += 1
        finally:
            capture.release()
        if index == 0:
            raise ValueError(f'video {path} has no readable frame')
    else:
        yield path.stem, read_rgb(path)

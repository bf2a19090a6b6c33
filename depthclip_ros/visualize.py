"""Pictures and files for people: colourised depth, previews, PLY, 16-bit PNG.

numpy + OpenCV only. Every file is written to a hidden temporary name beside its target
and renamed into place when complete, so an interrupted or failed write never leaves a
truncated file under the target's name (nor destroys a previous complete one); failures
raise ``OSError`` naming the file.
"""

from __future__ import annotations

import colorsys
from contextlib import contextmanager
import os
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix, so writers pick the same format);
    renamed to ``path`` when the block succeeds, removed when it fails."""
    path = Path(path)
    temporary = path.with_name(f'.{path.stem}.{os.getpid()}.tmp{path.suffix}')
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        try:
            temporary.unlink()
        except FileNotFoundError:
            pass


def save_npy(path: str | Path, array: np.ndarray) -> None:
    """``np.save`` through :func:`atomic_path`."""
    with atomic_path(path) as temporary:
        with open(temporary, 'wb') as handle:
            np.save(handle, array, allow_pickle=False)


def check_output_dir(path: str | Path) -> None:
    """Raise ``ValueError`` unless ``path`` is, or can be created as, a writable folder
    (checked without creating anything)."""
    path = Path(path)
    probe = path
    while not os.path.lexists(probe):
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        what = 'is not a folder' if probe == path else f'cannot be created: {probe} is not ' \
            f'a folder'
        raise ValueError(f'output {path} {what}')
    if not os.access(probe, os.W_OK | os.X_OK):
        what = 'is not writable' if probe == path else f'cannot be created: {probe} is not ' \
            f'writable'
        raise ValueError(f'output {path} {what}')


def check_output_file(path: str | Path) -> None:
    """Raise ``ValueError`` unless ``path`` can be written as a file: not a folder, its
    folder exists and is writable, and the file (if it exists) is writable."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f'output {path} is a folder, not a file')
    folder = path.parent
    if not folder.is_dir():
        raise ValueError(f'output {path}: folder {folder} does not exist')
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f'output {path}: folder {folder} is not writable')
    if os.path.lexists(path) and not os.access(path, os.W_OK):
        raise ValueError(f'output {path} is not writable')


GOLDEN_RATIO_CONJUGATE = 0.618033988749895


def query_rgb(index: int) -> tuple[float, float, float]:
    """The colour of object query ``index`` (r, g, b in [0, 1]), the same in rviz markers
    and in ``locate``'s preview: hues a golden-ratio step apart (never repeating),
    saturated and bright."""
    hue = (index * GOLDEN_RATIO_CONJUGATE) % 1.0
    return colorsys.hsv_to_rgb(hue, 0.85, 0.95)


def colorize_depth(depth: np.ndarray, min_depth_m: float | None = None,
                   max_depth_m: float | None = None) -> tuple[np.ndarray, float, float]:
    """``(H, W)`` metres -> ``(H, W, 3)`` uint8 RGB (turbo, near = red), invalid black.

    Returns the image and the ``(min, max)`` metres the colours span (the valid
    2nd/98th percentiles unless given).
    """
    valid = np.isfinite(depth) & (depth > 0)
    if min_depth_m is None or max_depth_m is None:
        if valid.any():
            low, high = np.percentile(depth[valid], (2, 98))
        else:
            low, high = 0.0, 1.0
        min_depth_m = low if min_depth_m is None else min_depth_m
        max_depth_m = high if max_depth_m is None else max_depth_m
    span = max(float(max_depth_m) - float(min_depth_m), 1e-6)
    scaled = np.clip((np.nan_to_num(depth, nan=0.0) - min_depth_m) / span, 0.0, 1.0)
    # turbo maps 0 -> blue; invert so that near is warm.
    index = ((1.0 - scaled) * 255.0).astype(np.uint8)
    rgb = cv2.cvtColor(cv2.applyColorMap(index, cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB)
    rgb[~valid] = 0
    return rgb, float(min_depth_m), float(max_depth_m)


def _colour_bar(height: int, min_depth_m: float, max_depth_m: float,
                width: int = 70) -> np.ndarray:
    """A vertical colour bar with metre labels, near at the top."""
    ramp = np.linspace(min_depth_m, max_depth_m, height, dtype=np.float32)[:, None]
    bar, _, _ = colorize_depth(np.repeat(ramp, 16, axis=1), min_depth_m, max_depth_m)
    panel = np.full((height, width, 3), 255, dtype=np.uint8)
    panel[:, :16] = bar
    for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
        row = int(round(fraction * (height - 1)))
        value = min_depth_m + fraction * (max_depth_m - min_depth_m)
        y = min(max(row + 5, 12), height - 3)
        cv2.putText(panel, f'{value:.2f}m', (19, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return panel


def preview(rgb: np.ndarray, depth: np.ndarray, banner: str | None = None) -> np.ndarray:
    """Side by side: the image | the coloured depth | a colour bar in metres (RGB uint8)."""
    coloured, low, high = colorize_depth(depth)
    if coloured.shape[:2] != rgb.shape[:2]:
        coloured = cv2.resize(coloured, (rgb.shape[1], rgb.shape[0]),
                              interpolation=cv2.INTER_NEAREST)
    out = np.concatenate([rgb, coloured, _colour_bar(rgb.shape[0], low, high)], axis=1)
    if banner:
        strip = np.full((24, out.shape[1], 3), (255, 255, 0), dtype=np.uint8)
        cv2.putText(strip, banner, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                    cv2.LINE_AA)
        out = np.concatenate([strip, out], axis=0)
    return out


def _imwrite(path: str | Path, image: np.ndarray) -> None:
    with atomic_path(path) as temporary:
        try:
            ok = cv2.imwrite(str(temporary), image)
        except cv2.error as error:
            raise OSError(f'cannot write {path} ({" ".join(str(error).split())})') from None
        if not ok:
            raise OSError(f'cannot write {path}')


def write_rgb_png(path: str | Path, rgb: np.ndarray) -> None:
    _imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def depth_to_mm_png(depth: np.ndarray) -> np.ndarray:
    """``(H, W)`` metres -> uint16 millimetres, 0 where invalid or beyond 65.535 m."""
    mm = np.nan_to_num(depth, nan=0.0, posinf=0.0, neginf=0.0) * 1000.0
    mm = np.where((mm > 0) & (mm <= 65535), np.round(mm), 0)
    return mm.astype(np.uint16)


def write_depth_png(path: str | Path, depth: np.ndarray) -> None:
    _imwrite(path, depth_to_mm_png(depth))


def write_ply(path: str | Path, points: np.ndarray, colours: np.ndarray | None = None,
              comment: str | None = None) -> int:
    """Binary little-endian PLY of the finite points of ``(..., 3)``; returns the count.

    ``colours``: uint8 RGB of the same leading shape, optional.
    """
    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    keep = np.isfinite(points).all(axis=1)
    fields = [('x', '<f4'), ('y', '<f4'), ('z', '<f4')]
    if colours is not None:
        colours = np.asarray(colours, dtype=np.uint8).reshape(-1, 3)
        fields += [('red', 'u1'), ('green', 'u1'), ('blue', 'u1')]
    vertices = np.empty(int(keep.sum()), dtype=fields)
    for i, axis in enumerate('xyz'):
        vertices[axis] = points[keep, i]
    if colours is not None:
        for i, channel in enumerate(('red', 'green', 'blue')):
            vertices[channel] = colours[keep, i]
    header = ['ply', 'format binary_little_endian 1.0']
    if comment:
        header += [f'comment {line}' for line in comment.splitlines()]
    header.append(f'element vertex {len(vertices)}')
    header += [f'property float {a}' for a in 'xyz']
    if colours is not None:
        header += [f'property uchar {c}' for c in ('red', 'green', 'blue')]
    header.append('end_header')
    with atomic_path(path) as temporary, open(temporary, 'wb') as handle:
        handle.write(('\n'.join(header) + '\n').encode('ascii'))
        handle.write(vertices.tobytes())
    return len(vertices)


def read_ply(path: str | Path) -> np.ndarray:
    """Read back a PLY written by :func:`write_ply` as a structured array."""
    with open(path, 'rb') as handle:
        names, types = [], []
        count = 0
        while True:
            line = handle.readline().decode('ascii').strip()
            if line.startswith('element vertex'):
                count = int(line.split()[-1])
            elif line.startswith('property'):
                _, kind, name = line.split()
                names.append(name)
                types.append('<f4' if kind == 'float' else 'u1')
            elif line == 'end_header':
                break
        return np.frombuffer(handle.read(), dtype=list(zip(names, types)), count=count)

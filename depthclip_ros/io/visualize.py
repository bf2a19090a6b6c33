"""Pictures and files for people: colourised depth and uncertainty, previews, PLY, 16-bit
PNG, JSON.

numpy + OpenCV only, OpenCV imported when a picture is made (not with this module). Every
file is written to a hidden temporary name beside its target and renamed into place when
complete, so an interrupted or failed write never leaves a truncated file under the
target's name (nor destroys a previous complete one); failures raise ``OSError`` naming
the file. Which files a run may write at all is :mod:`depthclip_ros.io.outputs`' call.
"""

from __future__ import annotations

import colorsys
import json
from pathlib import Path
import re

import numpy as np

from depthclip_ros.io.outputs import atomic_path


def save_npy(path: str | Path, array: np.ndarray) -> None:
    """``np.save`` through :func:`atomic_path`."""
    with atomic_path(path) as temporary:
        with open(temporary, 'wb') as handle:
            np.save(handle, array, allow_pickle=False)


def save_json(path: str | Path, document) -> None:
    """``document`` as indented JSON (strict: NaN and infinity refused with
    ``ValueError``) through :func:`atomic_path`."""
    text = json.dumps(document, indent=2, allow_nan=False) + '\n'
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding='utf-8')


GOLDEN_RATIO_CONJUGATE = 0.618033988749895
# The span of a colour map when none is given: robust ends, so that a few extreme pixels
# do not wash out the rest (values beyond take the end colours). Said under every preview.
DEPTH_PERCENTILES = (2, 98)
UNCERTAINTY_PERCENTILE = 98


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
    ``DEPTH_PERCENTILES``, 2nd and 98th, unless given).
    """
    import cv2
    valid = np.isfinite(depth) & (depth > 0)
    if min_depth_m is None or max_depth_m is None:
        if valid.any():
            low, high = np.percentile(depth[valid], DEPTH_PERCENTILES)
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


def colorize_uncertainty(sigma: np.ndarray, max_m: float | None = None
                         ) -> tuple[np.ndarray, float, float]:
    """``(H, W)`` standard deviations (m) -> ``(H, W, 3)`` uint8 RGB (viridis: dark = certain,
    yellow = uncertain), non-finite black.

    Returns the image and the ``(0, max)`` metres the colours span: its own scale, from 0
    (certain) to ``max_m``, by default the 98th percentile of the finite values (a robust
    maximum: a few extreme pixels do not wash out the rest; larger ones are clipped).
    """
    import cv2
    sigma = np.asarray(sigma, dtype=np.float32)
    valid = np.isfinite(sigma)
    if max_m is None:
        max_m = float(np.percentile(sigma[valid], UNCERTAINTY_PERCENTILE)) if valid.any() \
            else 0.0
        if not max_m > 0:  # all certain (or nothing valid): any positive scale shows it
            max_m = float(sigma[valid].max()) if valid.any() and sigma[valid].max() > 0 \
                else 1.0
    span = max(float(max_m), 1e-6)
    scaled = np.clip(np.nan_to_num(sigma, nan=0.0, posinf=span, neginf=0.0) / span, 0.0, 1.0)
    index = (scaled * 255.0).astype(np.uint8)
    rgb = cv2.cvtColor(cv2.applyColorMap(index, cv2.COLORMAP_VIRIDIS), cv2.COLOR_BGR2RGB)
    rgb[~valid] = 0
    return rgb, 0.0, float(max_m)


BAR_WIDTH = 70  # colour (16 px) and labels
TITLE_WIDTH = 16  # a bar's title, written upwards beside it


def _metres(value: float, span: float) -> str:
    """A bar label: enough decimals to tell the five labels of ``span`` metres apart."""
    decimals = 2 if span >= 0.2 else 3 if span >= 0.02 else 4
    return f'{value:.{decimals}f}m'


def _title_column(height: int, title: str) -> np.ndarray:
    """``title`` written bottom to top in a white ``(height, TITLE_WIDTH)`` column, as a
    plot's y-axis label; left blank when it cannot be read at that height."""
    import cv2
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.4
    (text_width, _), _ = cv2.getTextSize(title, font, scale, 1)
    scale = min(scale, scale * (height - 6) / max(text_width, 1))
    strip = np.full((TITLE_WIDTH, height, 3), 255, dtype=np.uint8)  # drawn lying down
    if scale >= 0.25:
        (text_width, _), _ = cv2.getTextSize(title, font, scale, 1)
        cv2.putText(strip, title, (max((height - text_width) // 2, 0), 12), font, scale,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return np.ascontiguousarray(cv2.rotate(strip, cv2.ROTATE_90_COUNTERCLOCKWISE))


def _colour_bar(height: int, min_depth_m: float, max_depth_m: float,
                width: int = BAR_WIDTH, paint=None, title: str | None = None) -> np.ndarray:
    """A vertical colour bar with metre labels, the low end (near) at the top.

    ``paint``: values -> RGB with the same colours as the panel (default the depth's);
    ``title``: written upwards on the right (adds ``TITLE_WIDTH`` columns)."""
    import cv2
    paint = paint or (lambda values: colorize_depth(values, min_depth_m, max_depth_m)[0])
    ramp = np.linspace(min_depth_m, max_depth_m, height, dtype=np.float32)[:, None]
    bar = paint(np.repeat(ramp, 16, axis=1))
    panel = np.full((height, width, 3), 255, dtype=np.uint8)
    panel[:, :16] = bar
    span = max_depth_m - min_depth_m
    for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
        row = int(round(fraction * (height - 1)))
        value = min_depth_m + fraction * span
        y = min(max(row + 5, 12), height - 3)
        cv2.putText(panel, _metres(value, span), (19, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 0, 0), 1, cv2.LINE_AA)
    if title:
        panel = np.concatenate([panel, _title_column(height, title)], axis=1)
    return panel


def _fit(panel: np.ndarray, height: int, width: int) -> np.ndarray:
    import cv2
    if panel.shape[:2] != (height, width):
        panel = cv2.resize(panel, (width, height), interpolation=cv2.INTER_NEAREST)
    return panel


CAPTION_LINE = 16  # pixel rows per line of the caption under a preview


def _ordinal(number: int) -> str:
    suffix = 'th' if 10 <= number % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(
        number % 10, 'th')
    return f'{number}{suffix}'


def preview_caption(uncertainty: bool) -> list[str]:
    """What the colour bars of :func:`preview` span, one line each (written under it)."""
    low, high = DEPTH_PERCENTILES
    lines = [f'depth bar: {_ordinal(low)}-{_ordinal(high)} percentile (beyond: end colours)']
    if uncertainty:
        lines.append(f'uncertainty bar: 0-{_ordinal(UNCERTAINTY_PERCENTILE)} percentile '
                     f'(beyond: end colour)')
    return lines


def text_strip(width: int, lines: list[str], height: int = CAPTION_LINE,
               background=(255, 255, 255)) -> np.ndarray:
    """``lines`` of black text on a ``(height * len(lines), width)`` strip, each shrunk to
    fit the width (RGB uint8)."""
    import cv2
    font = cv2.FONT_HERSHEY_SIMPLEX
    strip = np.full((height * len(lines), width, 3), background, dtype=np.uint8)
    for row, line in enumerate(lines):
        scale = 0.4
        (text_width, _), _ = cv2.getTextSize(line, font, scale, 1)
        scale = min(scale, scale * (width - 8) / max(text_width, 1))
        cv2.putText(strip, line, (4, row * height + height - 4), font, scale, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return strip


def preview(rgb: np.ndarray, depth: np.ndarray, banner: str | None = None,
            sigma: np.ndarray | None = None) -> np.ndarray:
    """Side by side (RGB uint8): the image | the coloured depth | its colour bar in metres,
    and with ``sigma`` (``(H, W)`` depth uncertainty, m) | the coloured uncertainty | its
    own colour bar, 0 to a robust maximum (:func:`colorize_uncertainty`), titled
    "uncertainty (m)". Under it, a caption saying what the bars span
    (:func:`preview_caption`, ``CAPTION_LINE`` rows per line); ``banner``: a strip of text
    on top."""
    import cv2
    height, width = rgb.shape[:2]
    coloured, low, high = colorize_depth(depth)
    panels = [rgb, _fit(coloured, height, width)]
    if sigma is None:
        panels.append(_colour_bar(height, low, high))
    else:
        painted, _, top = colorize_uncertainty(sigma)
        panels += [_colour_bar(height, low, high, title='depth (m)'),
                   _fit(painted, height, width),
                   _colour_bar(height, 0.0, top, title='uncertainty (m)',
                               paint=lambda values: colorize_uncertainty(values, top)[0])]
    out = np.concatenate(panels, axis=1)
    out = np.concatenate([out, text_strip(out.shape[1], preview_caption(sigma is not None))],
                         axis=0)
    if banner:
        strip = np.full((24, out.shape[1], 3), (255, 255, 0), dtype=np.uint8)
        cv2.putText(strip, banner, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                    cv2.LINE_AA)
        out = np.concatenate([strip, out], axis=0)
    return out


def colorize_labels(labels: np.ndarray, rgb: np.ndarray | None = None) -> np.ndarray:
    """A label image ``(H, W)`` (0 = none) as ``(H, W, 3)`` uint8 RGB a person can read:
    every label its own colour (:func:`query_rgb` of the label), label 0 black, or with
    ``rgb`` (the image, same size) its pixels greyed and darkened; each labelled region
    half its colour, half the image."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f'labels must be (H, W), got shape {labels.shape}')
    ids, inverse = np.unique(labels, return_inverse=True)
    palette = np.array([[0, 0, 0] if label == 0 else
                        [round(255 * c) for c in query_rgb(int(label))] for label in ids],
                       dtype=np.float32)
    colours = palette[inverse.reshape(labels.shape)]
    if rgb is None:
        return colours.astype(np.uint8)
    if rgb.shape[:2] != labels.shape:
        raise ValueError(f'image {rgb.shape[:2]} and labels {labels.shape} differ in size')
    grey = rgb.astype(np.float32).mean(axis=2, keepdims=True).repeat(3, axis=2)
    out = np.where((labels == 0)[..., None], 0.5 * grey, 0.5 * grey + 0.5 * colours)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _imwrite(path: str | Path, image: np.ndarray) -> None:
    import cv2
    with atomic_path(path) as temporary:
        try:
            ok = cv2.imwrite(str(temporary), image)
        except cv2.error as error:
            raise OSError(f'cannot write {path} ({" ".join(str(error).split())})') from None
        if not ok:
            raise OSError(f'cannot write {path}')


def write_rgb_png(path: str | Path, rgb: np.ndarray) -> None:
    import cv2
    _imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def depth_to_mm_png(depth: np.ndarray) -> np.ndarray:
    """``(H, W)`` metres -> uint16 millimetres, 0 where invalid or beyond 65.535 m."""
    mm = np.nan_to_num(depth, nan=0.0, posinf=0.0, neginf=0.0) * 1000.0
    mm = np.where((mm > 0) & (mm <= 65535), np.round(mm), 0)
    return mm.astype(np.uint16)


def write_depth_png(path: str | Path, depth: np.ndarray) -> None:
    _imwrite(path, depth_to_mm_png(depth))


PLY_NAME = re.compile(r'[A-Za-z_][A-Za-z0-9_]*')


def write_ply(path: str | Path, points: np.ndarray, colours: np.ndarray | None = None,
              comment: str | None = None,
              scalars: dict[str, np.ndarray] | None = None) -> int:
    """Binary little-endian PLY of the finite points of ``(..., 3)``; returns the count.

    ``colours``: uint8 RGB of the same leading shape, optional. ``scalars``: per-point
    values of the same leading shape, each written as a ``property float <name>`` of the
    vertex after x, y, z (and red, green, blue), e.g. ``{'uncertainty': sigma}``; readers
    that do not know a property skip it (Open3D, MeshLab, CloudCompare shows it as a
    scalar field).
    """
    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    keep = np.isfinite(points).all(axis=1)
    fields = [('x', '<f4'), ('y', '<f4'), ('z', '<f4')]
    if colours is not None:
        colours = np.asarray(colours, dtype=np.uint8).reshape(-1, 3)
        fields += [('red', 'u1'), ('green', 'u1'), ('blue', 'u1')]
    values = {}
    for name, array in (scalars or {}).items():
        if not isinstance(name, str) or not PLY_NAME.fullmatch(name) or \
                name in {f for f, _ in fields}:
            raise ValueError(f'PLY scalar name must be a new identifier, got {name!r}')
        array = np.asarray(array, dtype=np.float32).reshape(-1)
        if array.size != len(points):
            raise ValueError(f'PLY scalar {name!r} has {array.size} values for '
                             f'{len(points)} points')
        values[name] = array
        fields.append((name, '<f4'))
    vertices = np.empty(int(keep.sum()), dtype=fields)
    for i, axis in enumerate('xyz'):
        vertices[axis] = points[keep, i]
    if colours is not None:
        for i, channel in enumerate(('red', 'green', 'blue')):
            vertices[channel] = colours[keep, i]
    for name, array in values.items():
        vertices[name] = array[keep]
    header = ['ply', 'format binary_little_endian 1.0']
    if comment:
        header += [f'comment {line}' for line in comment.splitlines()]
    header.append(f'element vertex {len(vertices)}')
    header += [f'property float {a}' for a in 'xyz']
    if colours is not None:
        header += [f'property uchar {c}' for c in ('red', 'green', 'blue')]
    header += [f'property float {name}' for name in values]
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

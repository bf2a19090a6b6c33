"""Pinhole geometry: intrinsics under resize and crop, z-depth back-projection.

numpy only (no torch, no ROS). Conventions, written once here and pinned by tests:

* Intrinsics are ``(fx, fy, cx, cy)`` in pixels for the image they belong to.
* Resizing an image by ``(sx, sy)`` scales ``fx, cx`` by ``sx`` and ``fy, cy`` by ``sy``
  (as ``image_proc``'s resize does for CameraInfo).
* Cropping shifts ``cx, cy`` by the crop origin and leaves ``fx, fy`` unchanged.
* Depth is z-depth (distance along the optical axis), not ray length.
* Points are in the camera's optical frame: x right, y down, z forward (REP 103).
"""

from __future__ import annotations

from dataclasses import dataclass
import math

import numpy as np


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics of an image of ``width`` x ``height`` pixels.

    ``fx, fy`` focal lengths and ``cx, cy`` principal point, all in pixels.
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self):
        for name in ('fx', 'fy', 'cx', 'cy'):
            value = getattr(self, name)
            if not isinstance(value, (int, float, np.floating, np.integer)):
                raise TypeError(f'{name} must be a number, got {type(value).__name__}')
            if not math.isfinite(value):
                raise ValueError(f'{name} must be finite, got {value}')
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f'focal lengths must be > 0, got fx={self.fx}, fy={self.fy}')
        for name in ('width', 'height'):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f'{name} must be a positive integer, got {value!r}')

    @property
    def mean_focal(self) -> float:
        """Mean of ``fx`` and ``fy`` in pixels (Metric3D's test-time focal)."""
        return 0.5 * (self.fx + self.fy)

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` in pixels."""
        return (self.height, self.width)

    def matrix(self) -> np.ndarray:
        """K as a ``(3, 3)`` float64 array."""
        return np.array([[self.fx, 0.0, self.cx],
                         [0.0, self.fy, self.cy],
                         [0.0, 0.0, 1.0]])

    def resized(self, height: int, width: int) -> 'Intrinsics':
        """Intrinsics of this image resized to ``height`` x ``width`` pixels."""
        if height <= 0 or width <= 0:
            raise ValueError(f'resize target must be positive, got {height}x{width}')
        sx = width / self.width
        sy = height / self.height
        return Intrinsics(fx=self.fx * sx, fy=self.fy * sy,
                          cx=self.cx * sx, cy=self.cy * sy,
                          width=int(width), height=int(height))

    def cropped(self, left: int, top: int, width: int, height: int) -> 'Intrinsics':
        """Intrinsics of the crop whose top-left pixel is ``(left, top)`` of this image."""
        if left < 0 or top < 0 or left + width > self.width or top + height > self.height:
            raise ValueError(f'crop (left={left}, top={top}, {width}x{height}) is outside '
                             f'the {self.width}x{self.height} image')
        return Intrinsics(fx=self.fx, fy=self.fy, cx=self.cx - left, cy=self.cy - top,
                          width=int(width), height=int(height))


def intrinsics_from_hfov(height: int, width: int, hfov_deg: float) -> Intrinsics:
    """Square-pixel intrinsics with a centred principal point and a horizontal field of
    view of ``hfov_deg`` degrees (for cameras without a calibration)."""
    if not 0 < hfov_deg < 180:
        raise ValueError(f'horizontal field of view must be in (0, 180) degrees, got {hfov_deg}')
    focal = 0.5 * width / math.tan(math.radians(hfov_deg) / 2)
    return Intrinsics(focal, focal, (width - 1) / 2, (height - 1) / 2, width, height)


def metric_scale(intrinsics_net: Intrinsics, canonical_focal_px: float) -> float:
    """Factor turning canonical-camera depth into metric depth (Metric3D).

    ``intrinsics_net`` are the intrinsics of the image fed to the network (after any
    resize). Returns ``mean(fx, fy) / canonical_focal_px``.
    """
    if not math.isfinite(canonical_focal_px) or canonical_focal_px <= 0:
        raise ValueError(f'canonical_focal_px must be finite and > 0, got {canonical_focal_px}')
    return intrinsics_net.mean_focal / canonical_focal_px


def pixel_rays(intrinsics: Intrinsics, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Normalised image coordinates of the pixel grid.

    Returns ``(x_over_z (1, W'), y_over_z (H', 1))`` float32 with
    ``x/z = (u - cx) / fx`` and ``y/z = (v - cy) / fy`` for ``u = 0, stride, ...``.
    """
    if stride < 1:
        raise ValueError(f'stride must be >= 1, got {stride}')
    u = np.arange(0, intrinsics.width, stride, dtype=np.float64)
    v = np.arange(0, intrinsics.height, stride, dtype=np.float64)
    x = ((u - intrinsics.cx) / intrinsics.fx).astype(np.float32)[None, :]
    y = ((v - intrinsics.cy) / intrinsics.fy).astype(np.float32)[:, None]
    return x, y


def valid_depth_mask(depth: np.ndarray, min_depth_m: float = 0.0,
                     max_depth_m: float = math.inf) -> np.ndarray:
    """Boolean mask of usable depths: finite, > 0 and inside ``[min, max]``.

    ``depth (H, W)`` metres. Returns ``(H, W)`` bool.
    """
    if min_depth_m > max_depth_m:
        raise ValueError(f'min_depth_m ({min_depth_m}) > max_depth_m ({max_depth_m})')
    with np.errstate(invalid='ignore'):
        return np.isfinite(depth) & (depth > 0) & (depth >= min_depth_m) & (depth <= max_depth_m)


def backproject(depth: np.ndarray, intrinsics: Intrinsics, stride: int = 1,
                min_depth_m: float = 0.0, max_depth_m: float = math.inf,
                out: np.ndarray | None = None) -> np.ndarray:
    """Organised point cloud from a z-depth image.

    ``depth (H, W)`` float metres at the size of ``intrinsics``. Keeps every
    ``stride``-th row and column. Returns ``(H', W', 3)`` float32 points ``(x, y, z)``
    in the optical frame, NaN where the depth is invalid (see :func:`valid_depth_mask`).
    ``out`` may be a preallocated ``(H', W', 3)`` float32 array (or a view of one,
    e.g. three fields of a structured array) to write into.
    """
    if not isinstance(depth, np.ndarray) or depth.ndim != 2:
        raise ValueError(f'depth must be a 2-D array, got shape {getattr(depth, "shape", None)}')
    if depth.shape != intrinsics.size:
        raise ValueError(f'depth is {depth.shape[1]}x{depth.shape[0]} but the intrinsics are '
                         f'for {intrinsics.width}x{intrinsics.height}')
    x_over_z, y_over_z = pixel_rays(intrinsics, stride)
    z = depth[::stride, ::stride].astype(np.float32, copy=False)
    if out is None:
        out = np.empty(z.shape + (3,), dtype=np.float32)
    elif out.shape != z.shape + (3,):
        raise ValueError(f'out has shape {out.shape}, expected {z.shape + (3,)}')
    invalid = ~valid_depth_mask(z, min_depth_m, max_depth_m)
    z = np.where(invalid, np.float32(np.nan), z)
    np.multiply(z, x_over_z, out=out[..., 0])
    np.multiply(z, y_over_z, out=out[..., 1])
    out[..., 2] = z
    return out


def project(points: np.ndarray, intrinsics: Intrinsics) -> np.ndarray:
    """Pixel coordinates ``(..., 2)`` (u, v) of optical-frame points ``(..., 3)``."""
    points = np.asarray(points, dtype=np.float64)
    if points.shape[-1] != 3:
        raise ValueError(f'points must have a last axis of 3, got shape {points.shape}')
    z = points[..., 2]
    u = intrinsics.fx * points[..., 0] / z + intrinsics.cx
    v = intrinsics.fy * points[..., 1] / z + intrinsics.cy
    return np.stack([u, v], axis=-1)

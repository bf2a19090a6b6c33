"""Language-referred objects in 3-D: a chosen instance mask plus metric depth -> an object.

numpy only (no torch, no ROS). For a text query CLIP picks one candidate mask among the
proposals (elsewhere); this module turns that mask and the metric z-depth into a position
and an axis-aligned box in the camera optical frame (x right, y down, z forward), the
same geometry as the node's ``points`` cloud: a mask pixel ``(row, col)`` becomes exactly
the point :func:`~depthclip_ros.geometry.backproject` gives it (same rays, same float32
arithmetic).

Outlier rule (mask-edge bleeding): instance masks are a pixel or two too generous at the
object's silhouette, and there the depth is the background's. Of the mask's valid-depth
points, those whose z lies farther from the median z than

    max(OUTLIER_K * 1.4826 * MAD(z), OUTLIER_FLOOR_M)      (OUTLIER_K = 3, floor 2 cm)

are rejected, where ``MAD(z) = median(|z - median(z)|)``; ``1.4826 * MAD`` estimates the
standard deviation of normally distributed z, so this is a 3-sigma rule that ignores the
outliers it is looking for. The floor keeps a flat, fronto-parallel object (MAD 0) from
losing its own depth noise. Only z is tested: bleeding moves points along their rays,
i.e. in depth. The rule assumes the object covers more than half of the mask's valid
pixels; otherwise the median belongs to the background and so does the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import math

import numpy as np

from depthclip_ros.geometry import Intrinsics, pixel_rays, valid_depth_mask

OUTLIER_K = 3.0  # robust standard deviations of z kept around the median z
OUTLIER_FLOOR_M = 0.02  # the kept band is at least this wide on each side of the median
MAD_TO_SIGMA = 1.4826  # 1 / Phi^-1(3/4): MAD -> standard deviation for normal data


@dataclass(frozen=True, eq=False)
class ObjectLocation:
    """Where an object is, in metres in the camera optical frame.

    ``position_m`` is the per-axis median of the inlier points, ``box_min_m`` and
    ``box_max_m`` the per-axis percentiles of the inliers (an axis-aligned box),
    ``points`` the ``(M, 3)`` float32 inliers (read-only) and ``pixels`` the number of
    mask pixels with a valid depth before outliers were rejected. Compared by identity
    (it holds an array).
    """

    position_m: tuple[float, float, float]
    box_min_m: tuple[float, float, float]
    box_max_m: tuple[float, float, float]
    points: np.ndarray
    pixels: int

    @property
    def box_center_m(self) -> tuple[float, float, float]:
        """Centre of the box (not the robust position)."""
        return tuple(0.5 * (lo + hi) for lo, hi in zip(self.box_min_m, self.box_max_m))

    @property
    def box_size_m(self) -> tuple[float, float, float]:
        """Edge lengths of the box along x, y, z."""
        return tuple(hi - lo for lo, hi in zip(self.box_min_m, self.box_max_m))


@dataclass(frozen=True)
class ObjectResult:
    """The answer to one text query.

    ``query`` and ``index`` are the query text and its position in the query list,
    ``noun_phrase`` the phrase that was matched, ``label`` the chosen proposal id
    (0: none chosen), ``score`` ``100 * f . t`` of the chosen mask, ``margin`` the score
    minus the runner-up's (``None`` with fewer than two candidates), ``candidates`` the
    ``(label, score)`` of every candidate in label order and ``location`` the object in
    3-D (``None`` when the mask has no usable depth).
    """

    query: str
    index: int
    noun_phrase: str
    label: int
    score: float
    margin: float | None
    candidates: tuple[tuple[int, float], ...]
    location: ObjectLocation | None

    def __post_init__(self):
        if isinstance(self.index, bool) or not isinstance(self.index, (int, np.integer)) \
                or self.index < 0:
            raise ValueError(f'index must be a non-negative integer, got {self.index!r}')
        object.__setattr__(self, 'candidates',
                           tuple((int(label), float(score)) for label, score in self.candidates))

    def to_json(self) -> dict:
        """JSON-ready dict of plain Python values; non-finite numbers become ``None``.

        Keys: ``query``, ``index``, ``noun_phrase``, ``best_label``, ``score``,
        ``margin``, ``position_m`` (``[x, y, z]`` or ``None``), ``box_m``
        (``{"min": [...], "max": [...]}`` or ``None``), ``points`` (inlier count) and
        ``masks`` (``[{"label": int, "score": float}, ...]``).
        """
        location = self.location
        return {
            'query': str(self.query),
            'index': int(self.index),
            'noun_phrase': str(self.noun_phrase),
            'best_label': int(self.label),
            'score': _finite(self.score),
            'margin': None if self.margin is None else _finite(self.margin),
            'position_m': None if location is None else _vector(location.position_m),
            'box_m': None if location is None else {'min': _vector(location.box_min_m),
                                                    'max': _vector(location.box_max_m)},
            'points': 0 if location is None else int(len(location.points)),
            'masks': [{'label': label, 'score': _finite(score)}
                      for label, score in self.candidates],
        }


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _vector(values: Sequence[float]) -> list[float | None]:
    return [_finite(v) for v in values]


def locate(depth: np.ndarray, intrinsics: Intrinsics, mask: np.ndarray,
           min_depth_m: float = 0.0, max_depth_m: float = math.inf,
           percentiles: tuple[float, float] = (5.0, 95.0)) -> ObjectLocation | None:
    """The 3-D object under ``mask``.

    ``depth (H, W)`` metres (z-depth) and ``mask (H, W)`` bool (or integer, non-zero
    inside), both at the size of ``intrinsics``. The mask's pixels with a valid depth
    (finite, > 0, inside ``[min_depth_m, max_depth_m]``) are back-projected; outliers in
    z are rejected by the module's rule (see the module docstring); the position is the
    per-axis median of the inliers and the box spans the ``percentiles`` (low, high) of
    the inliers per axis. Returns ``None`` when no mask pixel has a valid depth. Memory:
    one index per mask pixel plus a few float32 values per valid mask pixel.
    """
    if not isinstance(intrinsics, Intrinsics):
        raise TypeError(f'intrinsics must be an Intrinsics, got {type(intrinsics).__name__}')
    if not isinstance(depth, np.ndarray) or depth.ndim != 2:
        raise ValueError(f'depth must be a 2-D array, got shape {getattr(depth, "shape", None)}')
    if depth.shape != intrinsics.size:
        raise ValueError(f'depth is {depth.shape[1]}x{depth.shape[0]} but the intrinsics are '
                         f'for {intrinsics.width}x{intrinsics.height}')
    if not isinstance(mask, np.ndarray) or mask.ndim != 2:
        raise ValueError(f'mask must be a 2-D array, got shape {getattr(mask, "shape", None)}')
    if mask.shape != depth.shape:
        raise ValueError(f'mask is {mask.shape[1]}x{mask.shape[0]} but depth is '
                         f'{depth.shape[1]}x{depth.shape[0]}')
    if mask.dtype != bool and not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f'mask must be bool or integer, got {mask.dtype}')
    low, high = (float(p) for p in percentiles)
    if not 0.0 <= low <= high <= 100.0:
        raise ValueError(f'percentiles must satisfy 0 <= low <= high <= 100, got {percentiles}')
    if min_depth_m > max_depth_m:
        raise ValueError(f'min_depth_m ({min_depth_m}) > max_depth_m ({max_depth_m})')

    index = np.flatnonzero(mask)  # row-major, as the organised cloud
    z = depth.reshape(-1)[index].astype(np.float32, copy=False)
    valid = valid_depth_mask(z, min_depth_m, max_depth_m)
    index, z = index[valid], z[valid]
    if z.size == 0:
        return None
    rows, cols = np.divmod(index, depth.shape[1])
    x_over_z, y_over_z = pixel_rays(intrinsics)
    points = np.empty((z.size, 3), dtype=np.float32)
    np.multiply(z, x_over_z[0, cols], out=points[:, 0])  # the same products as backproject
    np.multiply(z, y_over_z[rows, 0], out=points[:, 1])
    points[:, 2] = z
    del rows, cols, index

    inliers = points[depth_inliers(z)]
    inliers.flags.writeable = False
    box_low, box_high = np.percentile(inliers, [low, high], axis=0)
    return ObjectLocation(position_m=_triple(np.median(inliers, axis=0)),
                          box_min_m=_triple(box_low), box_max_m=_triple(box_high),
                          points=inliers, pixels=int(z.size))


def depth_inliers(z: np.ndarray, k: float = OUTLIER_K,
                  floor_m: float = OUTLIER_FLOOR_M) -> np.ndarray:
    """Bool mask of the ``z`` values kept by the outlier rule: ``|z - median(z)| <=
    max(k * 1.4826 * MAD(z), floor_m)``. Keeps at least half of a non-empty ``z``."""
    z = np.asarray(z, dtype=np.float64)
    if z.size == 0:
        return np.zeros(0, dtype=bool)
    deviation = np.abs(z - np.median(z))
    band = max(k * MAD_TO_SIGMA * float(np.median(deviation)), floor_m)
    return deviation <= band


def _triple(values: np.ndarray) -> tuple[float, float, float]:
    return (float(values[0]), float(values[1]), float(values[2]))


def query_labels(results: Sequence[ObjectResult], proposals: np.ndarray) -> np.ndarray:
    """Label image of the queries' chosen masks.

    ``proposals (H, W)`` integer label image of the candidate masks (0: no candidate).
    Returns ``(H, W)`` uint16: ``index + 1`` where query ``index``'s chosen label is, 0
    elsewhere (and for results with label 0, i.e. nothing chosen). Ties: when several
    queries chose the same mask, the pixel carries the lowest query index among them.
    """
    if not isinstance(proposals, np.ndarray) or proposals.ndim != 2:
        raise ValueError(f'proposals must be a 2-D array, got shape '
                         f'{getattr(proposals, "shape", None)}')
    if not np.issubdtype(proposals.dtype, np.integer):
        raise ValueError(f'proposals must be an integer label image, got {proposals.dtype}')
    out = np.zeros(proposals.shape, dtype=np.uint16)
    chosen: dict[int, int] = {}  # label -> lowest query index that chose it
    for result in results:
        if result.index + 1 > np.iinfo(np.uint16).max:
            raise ValueError(f'query index {result.index} does not fit a uint16 label image')
        if result.label != 0:
            label = int(result.label)
            chosen[label] = min(chosen.get(label, result.index), result.index)
    for label, query in chosen.items():
        out[proposals == label] = query + 1
    return out

"""Instance mask proposals that need no learned weights, for zero-shot referring segmentation.

Zero-shot referring segmentation (Yu et al., CVPR 2023) lets CLIP pick, among candidate
instance masks, the one that matches a text query. The paper's proposer (FreeSOLO) needs
trained weights; this module proposes masks from the colour image and, when there is one,
the metric depth map, with classical graph-based segmentation only:

1. Both images are brought to a *working resolution* chosen from the CPU time budget
   (``_working_shape``): colour by area averaging, depth by nearest-neighbour sampling (so
   that steps stay steps and unknown pixels do not bleed into known ones).
2. Felzenszwalb-Huttenlocher graph segmentation (scikit-image) over the colour channels,
   plus ``log(depth)`` as a fourth channel when the depth is dense (at least half of the
   pixels known; sparse depth such as projected LiDAR would only add fill-in artefacts).
3. Depth refinement: every region is cut along depth discontinuities, i.e. between
   4-neighbours whose ``|log d1 - log d2|`` exceeds ``DEPTH_STEP`` (about a 9 % jump) and
   is at least ``DEPTH_RAMP_RATIO`` times the smaller of the jumps two pixels before and
   after, so that a slanted floor (a steady ramp) is not sliced into bands.
4. The regions are upsampled to the input size with nearest-neighbour and the
   ``max_masks`` largest of at least ``min_area_fraction`` of the image are kept, labelled
   ``1..N`` in order of decreasing area. Everything else is ``0`` (no proposal).

The choice of method (against colour-only Felzenszwalb, SLIC + region adjacency merging and
an OpenCV-only marker watershed) was measured on rendered scenes with known objects and on
the real RGB-D frames of the evaluation data; docs/benchmarks.md has the comparison.

Image indexing is ``(row, col)`` throughout. Only numpy is imported eagerly; OpenCV,
scikit-image and SciPy when ``propose`` runs, so importing this module stays cheap.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

MAX_MASKS = 32
"""Default bound on the number of proposals per frame."""

WORK_PIXELS_PER_SECOND = 250_000
"""Working-resolution pixels ``propose`` allows per second of ``time_budget_s``.

It assumes 4 microseconds of CPU time per working pixel: twice the cost measured on the
project's machines (docs/benchmarks.md, "Choice of the proposal method"), a margin for
slower or busier ones.
"""

MIN_WORK_PIXELS = 4096
"""Working-resolution floor (64x64): below it proposals stop being useful, whatever the
budget (images smaller than this are processed at their own size)."""

REFERENCE_WORK_PIXELS = 320 * 240
"""Working size at which ``FELZENSZWALB_SCALE`` was tuned."""

FELZENSZWALB_SCALE = 600.0
"""Felzenszwalb's ``k`` (skimage's ``scale``) at ``REFERENCE_WORK_PIXELS``.

Above that size it grows in proportion to the pixel count, so that a region's relative
size, not its pixel count, decides whether it merges; below it stays constant, since a
tiny image has few pixels per object and no averaging has calmed its noise."""

FELZENSZWALB_SIGMA = 0.3
"""Gaussian pre-smoothing (working pixels). Area downsampling already averages noise;
more smoothing blurs edges into thin boundary regions (sigma 0.8 in the comparison of
docs/benchmarks.md)."""

DEPTH_WEIGHT = 2.0
"""Weight of ``log(depth)`` against colours in ``[0, 1]`` in the Felzenszwalb feature:
a 10 % depth step weighs as much as a colour step of 0.19 (about 49 of 255)."""

DENSE_DEPTH_FRACTION = 0.5
"""Depth is used as a Felzenszwalb channel only when at least this fraction is known."""

DEPTH_STEP = math.log(1.09)
"""Smallest ``|log d1 - log d2|`` between 4-neighbours that counts as a discontinuity."""

DEPTH_RAMP_RATIO = 2.0
"""A discontinuity must also exceed this multiple of the smaller of the jumps two pixels
before and after it along the same axis (a ramp has similar jumps on both sides)."""

FILL_RADIUS = 2.0
"""Unknown depth pixels within this distance (working pixels) of a known one take its
value for the discontinuity test (a hole on an edge cannot bridge the two sides); farther
ones never cut."""


class ProposalError(ValueError):
    """A proposal input (label image, colour image, depth, option) is unusable."""


def _check_max_masks(max_masks: int) -> int:
    if isinstance(max_masks, (bool, np.bool_)) or not isinstance(max_masks, (int, np.integer)):
        raise ProposalError(f'max_masks must be an integer >= 1, got {max_masks!r}')
    if max_masks < 1:
        raise ProposalError(f'max_masks must be >= 1, got {max_masks}')
    return int(max_masks)


def check_labels(labels: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Validate a user-supplied instance label image and return it as int32 ``(H, W)``.

    ``labels`` must be 2-D with an integer dtype (uint8, uint16, int32 and, when the values
    fit in int32, any other integer type); ``0`` is background and every other value one
    instance. With ``shape`` given, the image must be exactly ``(H, W) == shape``.

    Returns ``labels`` itself (or a view of it) when it is already int32, or uint32 with
    values below ``2**31``; otherwise an int32 copy.

    Raises ``ProposalError`` naming the problem: wrong number of dimensions, an empty image,
    a float, bool or non-numeric dtype, negative values, values beyond int32, wrong shape.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ProposalError(f'label image must be 2-D (H, W), got shape {labels.shape}')
    if labels.size == 0:
        raise ProposalError(f'label image is empty, shape {labels.shape}')
    if shape is not None and tuple(labels.shape) != tuple(shape):
        raise ProposalError(f'label image has shape {labels.shape}, expected {tuple(shape)}')
    if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise ProposalError(f'label image must have an integer dtype (uint8, uint16, int32), '
                            f'got {labels.dtype}')
    if labels.dtype == np.int32:
        low = int(labels.min())
        if low < 0:
            raise ProposalError(f'label image has negative values (min {low}); '
                                f'0 is background, instances are > 0')
        return labels
    info = np.iinfo(labels.dtype)
    if info.min < 0:
        low = int(labels.min())
        if low < 0:
            raise ProposalError(f'label image has negative values (min {low}); '
                                f'0 is background, instances are > 0')
    limit = np.iinfo(np.int32).max
    if info.max > limit:
        high = int(labels.max())
        if high > limit:
            raise ProposalError(f'label value {high} does not fit in int32 (max {limit})')
    if labels.dtype == np.uint32:
        return labels.view(np.int32)  # same bits for values below 2**31
    return labels.astype(np.int32)


def _instance_counts(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, counts)`` of the non-zero values of a non-negative int32 array."""
    high = int(flat.max())
    if high <= 4 * flat.size + 65536:  # bincount's table stays about the image's size
        counts = np.bincount(flat)
        ids = np.flatnonzero(counts)
        counts = counts[ids]
    else:
        ids, counts = np.unique(flat, return_counts=True)
    keep = ids != 0
    return ids[keep].astype(np.int32), counts[keep]


def masks_from_labels(labels: np.ndarray, max_masks: int = MAX_MASKS, min_pixels: int = 1
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Split a label image into boolean instance masks.

    Background (``0``) is excluded and instances with fewer than ``min_pixels`` pixels are
    dropped. When more than ``max_masks`` remain, the ``max_masks`` largest are kept (equal
    areas: the smaller id wins). Returns ``(ids, masks)``: ``ids`` ``(N,)`` int32 in
    ascending order and ``masks`` ``(N, H, W)`` bool, ``masks[i]`` the pixels of
    ``ids[i]``. At most ``max_masks`` masks are ever allocated.

    Raises ``ProposalError`` for a bad label image (see ``check_labels``), ``max_masks < 1``
    or a negative ``min_pixels``.
    """
    max_masks = _check_max_masks(max_masks)
    if isinstance(min_pixels, (bool, np.bool_)) or not isinstance(min_pixels,
                                                                  (int, np.integer)):
        raise ProposalError(f'min_pixels must be an integer >= 0, got {min_pixels!r}')
    if min_pixels < 0:
        raise ProposalError(f'min_pixels must be >= 0, got {min_pixels}')
    labels = check_labels(labels)
    height, width = labels.shape
    flat = labels.ravel()
    ids, counts = _instance_counts(flat)
    keep = counts >= min_pixels
    ids, counts = ids[keep], counts[keep]
    if ids.size > max_masks:
        order = np.lexsort((ids, -counts))  # largest first, then the smaller id
        ids = np.sort(ids[order[:max_masks]])
    masks = np.zeros((ids.size, height, width), dtype=bool)
    if ids.size:
        position = np.searchsorted(ids, flat)
        np.minimum(position, ids.size - 1, out=position)
        hit = ids[position] == flat
        masks.reshape(ids.size, -1)[position[hit], np.flatnonzero(hit)] = True
    return ids, masks


def _working_shape(height: int, width: int, time_budget_s: float) -> tuple[int, int]:
    """Working ``(rows, cols)`` for a ``height`` x ``width`` image and a CPU time budget.

    The rule: at most ``max(MIN_WORK_PIXELS, time_budget_s * WORK_PIXELS_PER_SECOND)``
    pixels, the aspect ratio kept (each side rounded down, at least 1), and never more than
    the image itself. With the default 0.5 s that is 125,000 pixels (408x306 for 640x480,
    471x265 for 1280x720).
    """
    allowed = max(MIN_WORK_PIXELS, time_budget_s * WORK_PIXELS_PER_SECOND)
    if height * width <= allowed:
        return height, width
    factor = math.sqrt(allowed / (height * width))
    return max(1, int(height * factor)), max(1, int(width * factor))


def _nearest_index(size_out: int, size_in: int) -> np.ndarray:
    """For each output row (or col), the input row (col) whose centre is nearest."""
    index = ((np.arange(size_out) + 0.5) * (size_in / size_out)).astype(np.intp)
    return np.minimum(index, size_in - 1)


def _check_inputs(rgb: np.ndarray, depth: np.ndarray | None, max_masks: int,
                  time_budget_s: float, min_area_fraction: float
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ProposalError(f'rgb must be (H, W, 3), got shape {rgb.shape}')
    if rgb.dtype != np.uint8:
        raise ProposalError(f'rgb must be uint8, got {rgb.dtype}')
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ProposalError(f'rgb is empty, shape {rgb.shape}')
    if depth is not None:
        depth = np.asarray(depth)
        if depth.shape != rgb.shape[:2]:
            raise ProposalError(f'depth must be (H, W) = {rgb.shape[:2]} like rgb, '
                                f'got shape {depth.shape}')
        if not np.issubdtype(depth.dtype, np.floating):
            raise ProposalError(f'depth must be float metres (NaN or 0 = unknown), got '
                                f'{depth.dtype}; convert e.g. uint16 millimetres first')
    _check_max_masks(max_masks)
    if (isinstance(time_budget_s, (bool, np.bool_))
            or not isinstance(time_budget_s, (int, float, np.integer, np.floating))
            or not math.isfinite(time_budget_s) or time_budget_s <= 0):
        raise ProposalError(f'time_budget_s must be a finite number > 0, got {time_budget_s!r}')
    if (isinstance(min_area_fraction, (bool, np.bool_))
            or not isinstance(min_area_fraction, (int, float, np.integer, np.floating))
            or not 0.0 <= min_area_fraction < 1.0):
        raise ProposalError(f'min_area_fraction must be in [0, 1), got {min_area_fraction!r}')
    return rgb, depth


def _fill_nearest(values: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``values`` with each unknown pixel replaced by its nearest known one, and the
    distance (pixels) to that pixel. ``known`` must have at least one True."""
    from scipy import ndimage

    if known.all():
        return values, np.zeros(values.shape)
    distance, index = ndimage.distance_transform_edt(~known, return_indices=True)
    return values[tuple(index)], distance


def _cuts_between_rows(filled: np.ndarray, known: np.ndarray, usable: np.ndarray
                       ) -> np.ndarray:
    """Depth discontinuities between vertically adjacent pixels, ``(H-1, W)`` bool."""
    jump = np.abs(filled[1:] - filled[:-1])
    counted = (known[1:] | known[:-1]) & usable[1:] & usable[:-1]
    jump = np.where(counted, jump, 0.0)
    n = jump.shape[0]
    if n < 3:  # too short to tell a step from a ramp: no cuts
        return np.zeros(jump.shape, dtype=bool)
    padded = np.pad(jump, ((2, 2), (0, 0)), mode='reflect')
    neighbour = np.minimum(padded[:n], padded[4:])  # the jumps two pairs before and after
    return (jump > DEPTH_STEP) & (jump > DEPTH_RAMP_RATIO * neighbour)


def _depth_cuts(log_depth: np.ndarray, known: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Discontinuities between vertical ``(H-1, W)`` and horizontal ``(H, W-1)`` pairs."""
    filled, distance = _fill_nearest(log_depth, known)
    usable = distance <= FILL_RADIUS
    cut_rows = _cuts_between_rows(filled, known, usable)
    cut_cols = _cuts_between_rows(filled.T, known.T, usable.T).T
    return cut_rows, cut_cols


def _connected_regions(segments: np.ndarray, cut_rows: np.ndarray | None,
                       cut_cols: np.ndarray | None) -> np.ndarray:
    """4-connected components of equal ``segments`` not separated by a cut, numbered
    ``0..M-1`` in raster order of their first pixel."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    height, width = segments.shape
    index = np.arange(height * width).reshape(height, width)
    join_rows = segments[1:] == segments[:-1]
    join_cols = segments[:, 1:] == segments[:, :-1]
    if cut_rows is not None:
        join_rows &= ~cut_rows
        join_cols &= ~cut_cols
    a = np.concatenate([index[:-1][join_rows], index[:, :-1][join_cols]])
    b = np.concatenate([index[1:][join_rows], index[:, 1:][join_cols]])
    graph = coo_matrix((np.ones(a.size, dtype=np.int8), (a, b)),
                       shape=(height * width, height * width))
    _, components = connected_components(graph, directed=False)
    # renumber by first pixel so that the numbering depends on the regions only
    _, first, inverse = np.unique(components, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int32)
    rank[np.argsort(first, kind='stable')] = np.arange(first.size, dtype=np.int32)
    return rank[inverse].reshape(height, width)


def propose(rgb: np.ndarray, depth: np.ndarray | None = None, max_masks: int = MAX_MASKS,
            time_budget_s: float = 0.5, min_area_fraction: float = 0.002) -> np.ndarray:
    """Class-agnostic region proposals as an int32 label image ``(H, W)``.

    ``rgb`` is ``(H, W, 3)`` uint8; ``depth`` is ``(H, W)`` float metres with NaN, inf or
    ``<= 0`` for unknown pixels, or ``None``. Returns ``0`` where there is no proposal and
    ``1..N`` (``N <= max_masks``) for the regions, numbered in order of decreasing area
    (equal areas: the one whose first pixel comes first in raster order). Regions smaller
    than ``min_area_fraction`` of the image are not proposed. The same input always gives
    the same output.

    ``time_budget_s`` bounds the work: the images are processed at a working resolution of
    at most ``time_budget_s * WORK_PIXELS_PER_SECOND`` pixels (``_working_shape``) and the
    labels are upsampled to ``(H, W)`` with nearest-neighbour (for 640x480 the default
    0.5 s gives 408x306 working pixels). Method: Felzenszwalb segmentation of colour
    (+ log-depth when dense), then cuts along depth discontinuities; see the module
    docstring.

    Why this method: docs/benchmarks.md ("Choice of the proposal method") compares it with
    the alternatives on rendered scenes and real RGB-D frames.

    Raises ``ProposalError`` (a ``ValueError``) for a wrong shape or dtype of ``rgb`` or
    ``depth``, ``max_masks < 1``, a non-positive or non-finite ``time_budget_s``, or
    ``min_area_fraction`` outside ``[0, 1)``; ``ImportError`` if scikit-image is missing.
    """
    rgb, depth = _check_inputs(rgb, depth, max_masks, time_budget_s, min_area_fraction)
    max_masks = int(max_masks)
    try:
        from skimage.segmentation import felzenszwalb
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError('depthclip_ros.objects.proposals.propose needs scikit-image '
                          '(pip install scikit-image==0.26.0)') from error
    import cv2

    height, width = rgb.shape[:2]
    work_h, work_w = _working_shape(height, width, float(time_budget_s))
    rows, cols = _nearest_index(work_h, height), _nearest_index(work_w, width)
    if (work_h, work_w) == (height, width):
        small = np.ascontiguousarray(rgb)
    else:
        small = cv2.resize(np.ascontiguousarray(rgb), (work_w, work_h),
                           interpolation=cv2.INTER_AREA)
    features = small.astype(np.float64) / 255.0

    log_depth = known = None
    if depth is not None:
        sampled = np.asarray(depth[rows[:, None], cols[None, :]], dtype=np.float64)
        with np.errstate(invalid='ignore'):
            known = np.isfinite(sampled) & (sampled > 0)
        if known.any():
            log_depth = np.zeros(sampled.shape)
            log_depth[known] = np.log(sampled[known])
            if known.mean() >= DENSE_DEPTH_FRACTION:
                filled, _ = _fill_nearest(log_depth, known)
                features = np.concatenate([features, DEPTH_WEIGHT * filled[..., None]], -1)

    work_pixels = work_h * work_w
    scale = FELZENSZWALB_SCALE * max(1.0, work_pixels / REFERENCE_WORK_PIXELS)
    min_work = max(1, math.ceil(min_area_fraction * work_pixels))
    with warnings.catch_warnings():
        # skimage warns that a 4-channel image may be RGBA; here the 4th channel is depth
        warnings.filterwarnings('ignore', message='.*third dimension', category=RuntimeWarning)
        segments = felzenszwalb(features, scale=scale, sigma=FELZENSZWALB_SIGMA,
                                min_size=min_work, channel_axis=-1)
    if log_depth is not None:
        regions = _connected_regions(segments, *_depth_cuts(log_depth, known))
    else:
        regions = _connected_regions(segments, None, None)

    if (work_h, work_w) != (height, width):
        regions = regions[_nearest_index(height, work_h)[:, None],
                          _nearest_index(width, work_w)[None, :]]
    counts = np.bincount(regions.ravel())
    min_pixels = max(1, math.ceil(min_area_fraction * height * width))
    candidates = np.flatnonzero(counts >= min_pixels)
    # decreasing area; equal areas: the region met first in raster order (smaller number)
    order = candidates[np.lexsort((candidates, -counts[candidates]))][:max_masks]
    table = np.zeros(counts.size, dtype=np.int32)
    table[order] = np.arange(1, order.size + 1, dtype=np.int32)
    return table[regions]

"""Standard monocular-depth metrics and the NYU Depth v2 evaluation protocol.

numpy only. Definitions (docs/method.md), over valid pixels with prediction ``p`` and ground
truth ``g`` in metres: ``delta<t`` is the fraction with ``max(p/g, g/p) < t``;
``abs_rel = mean(|p-g|/g)``; ``sq_rel = mean((p-g)^2/g)``; ``rmse = sqrt(mean((p-g)^2))``;
``rmse_log = sqrt(mean((ln p - ln g)^2))``; ``log10 = mean(|log10 p - log10 g|)``.
"""

from __future__ import annotations

import numpy as np

METRIC_NAMES = ('d1', 'd2', 'd3', 'abs_rel', 'sq_rel', 'rmse', 'rmse_log', 'log10')

# NYU Depth v2 protocol of the DepthCLIP paper (640x480 frames).
NYU_INPUT_CROP = (60, 56, 604, 472)  # left, top, right, bottom: a 544x416 network input
NYU_EIGEN_CROP = (41, 45, 601, 471)  # left, top, right, bottom: Eigen et al.'s valid area
NYU_MIN_DEPTH_M = 1e-3
NYU_MAX_DEPTH_M = 10.0

# DepthCLIP, ACM MM 2022, Table 1 (NYU Depth v2 Eigen test, 654 images).
PAPER_NYU = {'d1': 0.394, 'd2': 0.683, 'd3': 0.851, 'abs_rel': 0.388, 'log10': 0.156,
             'rmse': 1.167}
RANDOM_GUESS_MAX_M = 10.0  # the paper's random guess: uniform depth in 0-10 m
RANDOM_GUESS_NYU = {'d1': 0.140, 'd2': 0.297, 'd3': 0.471, 'abs_rel': 1.327, 'log10': 0.323,
                    'rmse': 2.934}


def evaluated_pixels(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None
                     ) -> np.ndarray:
    """The pixels :func:`depth_metrics` evaluates: ``(H, W)`` bool, ``mask`` (when given)
    where ``gt`` and ``pred`` are both finite and ``> 0``. Raises ``ValueError`` if the
    shapes differ."""
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f'pred shape {pred.shape} != gt shape {gt.shape}')
    valid = np.isfinite(gt) & (gt > 0) & np.isfinite(pred) & (pred > 0)
    if mask is not None:
        if mask.shape != gt.shape:
            raise ValueError(f'mask shape {mask.shape} != gt shape {gt.shape}')
        valid &= mask.astype(bool)
    return valid


def depth_metrics(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None
                  ) -> dict[str, float]:
    """Metrics of ``pred`` against ``gt`` (both ``(H, W)`` metres) over ``mask``.

    Pixels where ``gt`` or ``pred`` is non-finite or ``<= 0`` are always excluded.
    Raises ``ValueError`` if shapes differ or no pixel is left.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    valid = evaluated_pixels(pred, gt, mask)
    if not valid.any():
        raise ValueError('no valid pixel to evaluate')
    p = pred[valid]
    g = gt[valid]
    ratio = np.maximum(p / g, g / p)
    diff = p - g
    return {
        'd1': float(np.mean(ratio < 1.25)),
        'd2': float(np.mean(ratio < 1.25 ** 2)),
        'd3': float(np.mean(ratio < 1.25 ** 3)),
        'abs_rel': float(np.mean(np.abs(diff) / g)),
        'sq_rel': float(np.mean(diff ** 2 / g)),
        'rmse': float(np.sqrt(np.mean(diff ** 2))),
        'rmse_log': float(np.sqrt(np.mean((np.log(p) - np.log(g)) ** 2))),
        'log10': float(np.mean(np.abs(np.log10(p) - np.log10(g)))),
    }


def mean_metrics(per_frame: list[dict[str, float]]) -> dict[str, float]:
    """Average of per-frame metrics (the usual per-image mean)."""
    if not per_frame:
        raise ValueError('no frames to average')
    return {name: float(np.mean([m[name] for m in per_frame])) for name in METRIC_NAMES}


def median_of_counts(values: np.ndarray, counts: np.ndarray) -> float:
    """Median of the multiset holding ``values[i]`` ``counts[i]`` times, equal to
    ``np.median(np.repeat(values, counts))`` (the mean of the two middle values for an even
    total) without building that array. Raises ``ValueError`` when it is empty."""
    values = np.asarray(values, dtype=np.float64).ravel()
    counts = np.asarray(counts, dtype=np.int64).ravel()
    if values.shape != counts.shape:
        raise ValueError(f'{values.size} values but {counts.size} counts')
    if np.any(counts < 0):
        raise ValueError('counts must be >= 0')
    total = int(counts.sum())
    if total == 0:
        raise ValueError('no value to take the median of')
    order = np.argsort(values, kind='stable')
    values, ends = values[order], np.cumsum(counts[order])

    def at(rank: int) -> float:  # the rank-th value (0-based) of the sorted multiset
        return float(values[np.searchsorted(ends, rank, side='right')])

    middle = total // 2
    return at(middle) if total % 2 else 0.5 * (at(middle - 1) + at(middle))


def uniform_random_depth(rng: np.random.Generator, size: int | tuple[int, ...],
                         high_m: float = RANDOM_GUESS_MAX_M) -> np.ndarray:
    """Depths uniform in ``(0, high_m]`` metres: ``high_m - U[0, high_m)``, so never exactly
    0 (log metrics stay finite) and every value of ``[0, high_m]`` but 0 can come out.
    float64, from ``rng`` (the caller seeds it for reproducible runs)."""
    if not (np.isfinite(high_m) and high_m > 0):
        raise ValueError(f'high_m must be finite and > 0, got {high_m}')
    return high_m - rng.uniform(0.0, high_m, size)


def nyu_eval_mask(gt: np.ndarray) -> np.ndarray:
    """NYU evaluation mask for a full 480x640 frame.

    Valid ground truth in ``(min, max]``, inside Eigen's crop and inside the network's
    input crop (the prediction exists only there).
    """
    if gt.shape != (480, 640):
        raise ValueError(f'the NYU protocol needs 640x480 frames, got {gt.shape[1]}x{gt.shape[0]}')
    mask = np.zeros(gt.shape, dtype=bool)
    left, top, right, bottom = NYU_EIGEN_CROP
    mask[top:bottom, left:right] = True
    inside = np.zeros_like(mask)
    left, top, right, bottom = NYU_INPUT_CROP
    inside[top:bottom, left:right] = True
    return mask & inside & (gt > NYU_MIN_DEPTH_M) & (gt <= NYU_MAX_DEPTH_M)


def format_table(rows: dict[str, dict[str, float]], names=METRIC_NAMES) -> str:
    """Plain-text table, one row per entry of ``rows``; missing metrics print as ``-``."""
    header = ['', *names]
    lines = [header]
    for label, metrics in rows.items():
        lines.append([label, *(f'{metrics[n]:.3f}' if n in metrics else '-' for n in names)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for i, line in enumerate(lines):
        out.append('  '.join(cell.ljust(widths[j]) if j == 0 else cell.rjust(widths[j])
                             for j, cell in enumerate(line)))
        if i == 0:
            out.append('  '.join('-' * w for w in widths))
    return '\n'.join(out)

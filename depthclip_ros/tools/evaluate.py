"""``depthclip-ros evaluate``: the paper's metrics on RGB-D folders with ground truth.

NYU Depth v2 folders (name containing ``nyu``, 640x480) follow the DepthCLIP protocol:
the image is cropped (not resized) to the 544x416 box (60, 56, 604, 472), the prediction
is compared with the ground truth inside Eigen's crop, depths capped at 10 m. Other folders
are fed whole (resized to the network input), compared on every valid ground-truth pixel
up to ``--max-depth-m``.

Every option, every dataset folder (``intrinsics.json``, ``rgb/``, ``depth/``, at least one
pair) and the ``--json`` path are checked before the model is loaded; a problem there is
one line and exit status 2 (an existing ``--json`` file is replaced only with
``--overwrite``). A frame that cannot be used (unreadable or corrupt file, size
not the intrinsics size, no valid ground truth) is reported on one line and left out of
the means; the run then ends with exit status 1 (0 when every frame was evaluated).

Under the model's row every dataset gets three baselines, which need no model, scored on
exactly the pixels and frames the model's metrics were (same clip of the prediction, same
per-frame mean):

* ``median_gt``: a constant at the median ground truth of the dataset (over the evaluated
  pixels of all its evaluated frames). It reads the ground truth: an *oracle* scale.
* ``median_bins``: a constant at the median of the depth bins times the metric scale the
  engine applies to the frame (``mean(fx, fy)`` of the camera at the network input over
  ``canonical_focal_px``, docs/method.md §2): what DepthCLIP predicts when its
  similarities say nothing.
* ``uniform_random``: per pixel, uniform depth in ``(0, 10]`` m (the paper's random guess;
  drawn as ``10 - U[0, 10)`` so never 0), from ``numpy.random.default_rng(0)`` per dataset,
  over the evaluated pixels frame by frame in row-major order: reproducible.

``--json`` holds, per dataset, ``baselines: {name: mean metrics}`` and ``baseline_depth_m``
(the median-GT constant, the distinct median-bins constants, the random range).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
import json
import os
from pathlib import Path
import sys
from typing import TYPE_CHECKING

import numpy as np

from depthclip_ros.engine.config import RANDOM_WEIGHTS_BANNER
from depthclip_ros.engine.metrics import (
    depth_metrics,
    evaluated_pixels,
    format_table,
    mean_metrics,
    median_of_counts,
    nyu_eval_mask,
    NYU_INPUT_CROP,
    NYU_MAX_DEPTH_M,
    NYU_MIN_DEPTH_M,
    PAPER_NYU,
    RANDOM_GUESS_MAX_M,
    RANDOM_GUESS_NYU,
    uniform_random_depth,
)
from depthclip_ros.geometry import Intrinsics, metric_scale
from depthclip_ros.io.dataset import DatasetError, one_line, RGBDFolder
from depthclip_ros.io.outputs import (
    atomic_path,
    check_output_file,
    check_outputs,
    OVERWRITE_HELP,
    replacing_note,
)
from depthclip_ros.tools.common import (
    add_model_arguments,
    check_max_depth,
    configs_from_args,
    load_engine,
)
from depthclip_ros.tools.progress import Progress

if TYPE_CHECKING:  # annotations only: torch is imported when the model loads
    from depthclip_ros.engine.depthclip import DepthCLIP

PROG = 'depthclip-ros evaluate'
MIN_GT_DEPTH_M = 1e-3  # ground truth at or below this is invalid
RANDOM_SEED = 0  # of the uniform_random baseline, per dataset
BASELINES = ('median_gt', 'median_bins', 'uniform_random')


def frame_errors() -> tuple[type[BaseException], ...]:
    """What may go wrong with one frame (OpenCV's and torch's own, imported by then)."""
    import cv2
    import torch
    return (ValueError, OSError, cv2.error, MemoryError, torch.cuda.OutOfMemoryError)


@dataclass
class FrameResult:
    """What one evaluated frame gives: the model's metrics, the ground truth at the pixels
    they were computed on (1-D, metres, row-major) and the intrinsics the model was given."""

    metrics: dict[str, float]
    gt_m: np.ndarray
    camera: Intrinsics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('dataset', nargs='+', type=Path,
                        help='dataset folder(s) in the ../shared/data layout, or a parent '
                             'folder whose sub-folders are datasets')
    parser.add_argument('--json', type=Path, help='also write the results as JSON')
    parser.add_argument('--overwrite', action='store_true', help=OVERWRITE_HELP)
    parser.add_argument('--max-depth-m', type=float, default=80.0,
                        help=f'cap for non-NYU folders, finite, > {MIN_GT_DEPTH_M:g} '
                             f'(default 80 m; NYU uses 10 m)')
    add_model_arguments(parser)


def find_datasets(paths: list[Path]) -> list[tuple[str, RGBDFolder]]:
    """``(label, folder)`` of every dataset named or found one level below the given
    folders, each checked (:class:`DatasetError` otherwise). Every path must be, or hold,
    a dataset; the same folder given twice is kept once; the label is the folder's name,
    or the path as given where two datasets share a name."""
    found: list[tuple[Path, RGBDFolder]] = []
    seen = set()
    for path in paths:
        if not path.exists():
            raise DatasetError(f'no such folder: {path}')
        if not path.is_dir():
            raise DatasetError(f'{path} is not a folder')
        if (path / 'intrinsics.json').exists():
            candidates = [path]
        else:
            try:
                candidates = sorted(p for p in path.iterdir() if (p / 'intrinsics.json').exists())
            except OSError as error:
                raise DatasetError(f'cannot list {path} ({one_line(error)})') from None
            if not candidates:
                raise DatasetError(f'{path} is not a dataset folder (no intrinsics.json) and '
                                   f'holds none')
        for candidate in candidates:
            info = os.stat(candidate)
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            found.append((candidate, RGBDFolder(candidate)))
    names = [p.name for p, _ in found]
    return [(p.name if names.count(p.name) == 1 else os.path.normpath(p), folder)
            for p, folder in found]


def prediction_range(folder: RGBDFolder, max_depth_m: float = 80.0) -> tuple[float, float]:
    """``(low, high)`` metres every prediction of ``folder`` is clipped to, the model's and
    the baselines'."""
    return (NYU_MIN_DEPTH_M, NYU_MAX_DEPTH_M) if folder.is_nyu else (MIN_GT_DEPTH_M,
                                                                      max_depth_m)


def median_bins_depth(engine: DepthCLIP, camera: Intrinsics) -> float:
    """The ``median_bins`` constant for a frame given to the engine with ``camera``: the
    median of the engine's depth bins times the metric scale the engine applies to it
    (the camera resized to the network input, over ``canonical_focal_px``)."""
    net_h, net_w = engine.config.input_size
    scale = metric_scale(camera.resized(net_h, net_w), engine.head.canonical_focal_px)
    return float(np.median(engine.head.depth_bins_m)) * scale


def evaluate_frame(engine: DepthCLIP, folder: RGBDFolder, index: int,
                   max_depth_m: float = 80.0) -> FrameResult:
    """Metrics of one frame (and what the baselines need); ``ValueError`` (or
    ``OSError``) when it cannot be used."""
    frame = folder.frame(index)
    low, high = prediction_range(folder, max_depth_m)
    if folder.is_nyu:
        left, top, right, bottom = NYU_INPUT_CROP
        crop = np.ascontiguousarray(frame.rgb[top:bottom, left:right])
        camera = frame.intrinsics.cropped(left, top, right - left, bottom - top)
        pred = np.full(frame.depth_m.shape, np.nan, dtype=np.float32)
        pred[top:bottom, left:right] = engine.predict(crop, camera)
        mask = nyu_eval_mask(frame.depth_m)
    else:
        camera = frame.intrinsics
        pred = engine.predict(frame.rgb, camera)
        mask = (frame.depth_m > MIN_GT_DEPTH_M) & (frame.depth_m <= max_depth_m)
    pred = np.clip(pred, low, high)
    try:
        metrics = depth_metrics(pred, frame.depth_m, mask)
    except ValueError as error:
        raise DatasetError(f'{error} (no ground truth in range)') from None
    gt = frame.depth_m[evaluated_pixels(pred, frame.depth_m, mask)]
    return FrameResult(metrics, gt, camera)


class Baselines:
    """The baselines of one dataset, fed frame by frame with what the model was scored
    on (:meth:`add`); :meth:`means` gives their metrics averaged like the model's."""

    def __init__(self, engine: DepthCLIP, low: float, high: float):
        self.engine, self.low, self.high = engine, low, high
        self.rng = np.random.default_rng(RANDOM_SEED)
        self.per_frame: dict[str, list[dict[str, float]]] = {'median_bins': [],
                                                             'uniform_random': []}
        self.bins_depths: set[float] = set()
        self.gt_counts: list[tuple[np.ndarray, np.ndarray]] = []  # per frame, compact

    def constant(self, value: float, gt: np.ndarray) -> dict[str, float]:
        return depth_metrics(np.full(gt.shape, np.clip(value, self.low, self.high)), gt)

    def add(self, frame: FrameResult) -> None:
        gt = frame.gt_m
        bins_depth = median_bins_depth(self.engine, frame.camera)
        self.bins_depths.add(bins_depth)
        self.per_frame['median_bins'].append(self.constant(bins_depth, gt))
        guess = np.clip(uniform_random_depth(self.rng, gt.size), self.low, self.high)
        self.per_frame['uniform_random'].append(depth_metrics(guess, gt))
        # The median GT needs every frame first: keep each frame's ground truth as
        # (distinct values, counts), small for quantised depth (millimetre PNGs).
        self.gt_counts.append(np.unique(gt, return_counts=True))

    def median_gt(self) -> float:
        return median_of_counts(np.concatenate([v for v, _ in self.gt_counts]),
                                np.concatenate([c for _, c in self.gt_counts]))

    def means(self) -> dict[str, dict[str, float]]:
        median = self.median_gt()
        per_frame = {'median_gt': [self.constant(median, np.repeat(values, counts))
                                   for values, counts in self.gt_counts],
                     **self.per_frame}
        return {name: mean_metrics(per_frame[name]) for name in BASELINES}

    def depths(self) -> dict:
        return {'median_gt': self.median_gt(), 'median_bins': sorted(self.bins_depths),
                'uniform_random': [0.0, RANDOM_GUESS_MAX_M]}

    def labels(self) -> dict[str, str]:
        bins = sorted(self.bins_depths)
        bins = f'{bins[0]:.2f} m' if len(bins) == 1 else f'{bins[0]:.2f}-{bins[-1]:.2f} m'
        return {'median_gt': f'baseline: constant median GT = {self.median_gt():.2f} m (oracle)',
                'median_bins': f'baseline: constant median bin x focal scale = {bins}',
                'uniform_random': f'baseline: uniform random (0, {RANDOM_GUESS_MAX_M:g}] m, '
                                  f'seed {RANDOM_SEED}'}


def evaluate_folder(engine: DepthCLIP, folder: RGBDFolder, max_depth_m: float = 80.0,
                    progress: Progress | None = None
                    ) -> tuple[dict[str, float] | None, list[dict], list[dict],
                               Baselines | None]:
    """Mean metrics of ``folder`` (``None`` when no frame could be evaluated), the
    per-frame metrics, the frames skipped (``{'frame', 'reason'}``, each reported on
    stderr) and the baselines on the same frames and pixels (``None`` with no frame).
    ``progress``: told of every frame done."""
    per_frame, skipped = [], []
    baselines = Baselines(engine, *prediction_range(folder, max_depth_m))
    errors = frame_errors()
    for index, (rgb_path, _) in enumerate(folder.pairs):
        try:
            result = evaluate_frame(engine, folder, index, max_depth_m)
        except errors as error:
            reason = one_line(error)
            print(f'{PROG}: skipped {rgb_path}: {reason}', file=sys.stderr, flush=True)
            skipped.append({'frame': rgb_path.stem, 'reason': reason})
            continue
        finally:
            if progress is not None:
                progress.step()
        per_frame.append({'frame': rgb_path.stem, **result.metrics})
        baselines.add(result)
    if not per_frame:
        return None, per_frame, skipped, None
    return mean_metrics(per_frame), per_frame, skipped, baselines


def prepare(args: argparse.Namespace) -> tuple[list[tuple[str, RGBDFolder]], list[Path]]:
    """Everything checked before the model is loaded (the device with the model);
    ``ValueError`` with the reason. Returns the datasets and the existing file replaced
    (``--json`` with ``--overwrite``)."""
    configs_from_args(args)
    check_max_depth(args.max_depth_m, MIN_GT_DEPTH_M)
    replaced = []
    if args.json is not None:
        check_output_file(args.json)
        replaced = check_outputs([args.json], args.overwrite)
    return find_datasets(args.dataset), replaced


def run(args: argparse.Namespace) -> int:
    try:
        datasets, replaced = prepare(args)
    except ValueError as error:
        print(f'{PROG}: {one_line(error)}', file=sys.stderr)
        return 2
    note = replacing_note(replaced)
    if note:
        print(note)
    frames = sum(len(folder) for _, folder in datasets)
    print(f'{len(datasets)} dataset(s), {frames} frames to evaluate', flush=True)
    engine = load_engine(args)
    results = {'device': engine.describe_device(), 'model': engine.config.model,
               'pretrained': engine.config.pretrained, 'random_weights': engine.random_weights,
               'feature_mode': engine.config.feature_mode,
               'flip_average': engine.head.flip_average, 'datasets': {}}
    evaluated = failed = 0
    for name, folder in datasets:
        protocol = 'NYU (DepthCLIP crop, Eigen mask, 10 m)' if folder.is_nyu \
            else f'whole image, GT <= {args.max_depth_m:g} m'
        print(f'\n{name}: {protocol}; {engine.describe_device()}, {engine.config.model} '
              f'{engine.config.feature_mode} mode, flip={engine.head.flip_average}',
              flush=True)
        if folder.unpaired:
            print(f'note: {len(folder.unpaired)} rgb image(s) without a depth file are not '
                  f'evaluated (first: {folder.unpaired[0].name})')
        with Progress(f'evaluate {name}', 'frame', len(folder)) as progress:
            mean, per_frame, skipped, baselines = evaluate_folder(engine, folder,
                                                                  args.max_depth_m, progress)
        evaluated += len(per_frame)
        failed += len(skipped)
        scores = baselines.means() if baselines else None
        results['datasets'][name] = {'protocol': protocol, 'frames': len(per_frame),
                                     'skipped': skipped, 'mean': mean, 'baselines': scores,
                                     'baseline_depth_m': baselines.depths() if baselines
                                     else None,
                                     'per_frame': per_frame}
        if mean is None:
            print(f'no frame of {name} could be evaluated')
            continue
        label = 'ours (RANDOM WEIGHTS)' if engine.random_weights else 'ours'
        count = f'{len(per_frame)} frames' + (f' ({len(skipped)} skipped)' if skipped else '')
        rows = {f'{label}, {count}': mean}
        labels = baselines.labels()
        rows.update({labels[key]: scores[key] for key in BASELINES})
        if folder.is_nyu:
            rows['DepthCLIP paper (654 frames)'] = PAPER_NYU
            rows['random guess 0-10 m (paper)'] = RANDOM_GUESS_NYU
        print(format_table(rows))
    if engine.random_weights:
        print(f'\n{RANDOM_WEIGHTS_BANNER}')
    if args.json:
        try:
            with atomic_path(args.json) as temporary:
                temporary.write_text(json.dumps(results, indent=2))
        except OSError as error:
            print(f'{PROG}: cannot write {args.json} ({one_line(error)})', file=sys.stderr)
            return 1
        print(f'results written to {args.json}')
    print(f'{evaluated} frame(s) evaluated, {failed} skipped')
    return 1 if failed else 0

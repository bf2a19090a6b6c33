"""``depthclip-ros evaluate``: the paper's metrics on RGB-D folders with ground truth.

NYU Depth v2 folders (name containing ``nyu``, 640x480) follow the DepthCLIP protocol:
the image is cropped (not resized) to the 544x416 box (60, 56, 604, 472), the prediction
is compared with the ground truth inside Eigen's crop, depths capped at 10 m. Other folders
are fed whole (resized to the network input), compared on every valid ground-truth pixel
up to ``--max-depth-m``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..dataset import RGBDFolder
from ..metrics import (
    depth_metrics,
    format_table,
    mean_metrics,
    nyu_eval_mask,
    NYU_INPUT_CROP,
    NYU_MAX_DEPTH_M,
    NYU_MIN_DEPTH_M,
    PAPER_NYU,
    RANDOM_GUESS_NYU,
)
from ..model import DepthCLIP, RANDOM_WEIGHTS_BANNER
from .common import add_model_arguments, load_engine


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('dataset', nargs='+', type=Path,
                        help='dataset folder(s) in the ../shared/data layout, or a parent '
                             'folder whose sub-folders are datasets')
    parser.add_argument('--json', type=Path, help='also write the results as JSON')
    parser.add_argument('--max-depth-m', type=float, default=80.0,
                        help='cap for non-NYU folders (default 80 m; NYU uses 10 m)')
    add_model_arguments(parser)


def find_datasets(paths: list[Path]) -> list[Path]:
    found = []
    for path in paths:
        if (path / 'intrinsics.json').is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(p for p in path.iterdir() if (p / 'intrinsics.json').is_file())
    if not found:
        raise ValueError(f'no dataset folder (with intrinsics.json) in {[str(p) for p in paths]}')
    return found


def evaluate_folder(engine: DepthCLIP, folder: RGBDFolder, max_depth_m: float = 80.0
                    ) -> tuple[dict[str, float], list[dict]]:
    """Mean metrics of ``folder`` and the per-frame metrics."""
    per_frame = []
    for frame in folder:
        if folder.is_nyu:
            left, top, right, bottom = NYU_INPUT_CROP
            crop = np.ascontiguousarray(frame.rgb[top:bottom, left:right])
            camera = frame.intrinsics.cropped(left, top, right - left, bottom - top)
            pred = np.full(frame.depth_m.shape, np.nan, dtype=np.float32)
            pred[top:bottom, left:right] = engine.predict(crop, camera)
            pred = np.clip(pred, NYU_MIN_DEPTH_M, NYU_MAX_DEPTH_M)
            mask = nyu_eval_mask(frame.depth_m)
        else:
            pred = np.clip(engine.predict(frame.rgb, frame.intrinsics), 1e-3, max_depth_m)
            mask = (frame.depth_m > 1e-3) & (frame.depth_m <= max_depth_m)
        metrics = depth_metrics(pred, frame.depth_m, mask)
        per_frame.append({'frame': frame.name, **metrics})
    return mean_metrics(per_frame), per_frame


def run(args: argparse.Namespace) -> int:
    datasets = find_datasets(args.dataset)
    engine = load_engine(args)
    results = {'device': engine.describe_device(), 'model': engine.config.model,
               'pretrained': engine.config.pretrained, 'random_weights': engine.random_weights,
               'feature_mode': engine.config.feature_mode,
               'flip_average': engine.head.flip_average, 'datasets': {}}
    for path in datasets:
        folder = RGBDFolder(path)
        mean, per_frame = evaluate_folder(engine, folder, args.max_depth_m)
        protocol = 'NYU (DepthCLIP crop, Eigen mask, 10 m)' if folder.is_nyu \
            else f'whole image, GT <= {args.max_depth_m:g} m'
        results['datasets'][path.name] = {'protocol': protocol, 'frames': len(per_frame),
                                          'mean': mean, 'per_frame': per_frame}
        label = 'ours (RANDOM WEIGHTS)' if engine.random_weights else 'ours'
        rows = {f'{label}, {len(per_frame)} frames': mean}
        if folder.is_nyu:
            rows['DepthCLIP paper (654 frames)'] = PAPER_NYU
            rows['random guess 0-10 m (paper)'] = RANDOM_GUESS_NYU
        print(f'\n{path.name}: {protocol}; {engine.describe_device()}, {engine.config.model} '
              f'{engine.config.feature_mode} mode, flip={engine.head.flip_average}')
        print(format_table(rows))
    if engine.random_weights:
        print(f'\n{RANDOM_WEIGHTS_BANNER}')
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f'results written to {args.json}')
    return 0

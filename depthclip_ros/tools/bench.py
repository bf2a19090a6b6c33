"""``depthclip-ros bench``: per-stage milliseconds of one frame on the chosen device.

Stages: preprocess (upload, resize, normalise), network (CLIP trunk), head (prompt
similarity, softmax, bins, metric scale), upsample (to the output size, and the download),
backproject (organised cloud). Median of ``--repeat`` runs after ``--warmup`` runs. Weights
do not change the cost, so random weights are used unless ``--pretrained`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import platform

import numpy as np
import torch

from ..geometry import backproject, Intrinsics
from ..model import DepthCLIP
from ..timing import StageTimer
from .common import add_model_arguments, load_engine

ENGINE_STAGES = ('preprocess', 'network', 'head', 'upsample', 'backproject')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--image-size', type=int, nargs=2, default=(480, 640),
                        metavar=('H', 'W'), help='camera image size (default 480 640)')
    parser.add_argument('--batch', type=int, default=1, help='frames per forward pass')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--repeat', type=int, default=10)
    parser.add_argument('--json', type=Path, help='also write the figures as JSON')
    add_model_arguments(parser)
    parser.set_defaults(pretrained='none')


def cpu_name() -> str:
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown CPU'


def device_description(engine: DepthCLIP) -> str:
    """The engine's device, with the CPU's name and thread count on the CPU."""
    device = engine.describe_device()
    if engine.device.type == 'cpu':
        device += f' - {cpu_name()}, {torch.get_num_threads()} threads'
    return device


def time_engine(engine: DepthCLIP, height: int, width: int, batch: int = 1, warmup: int = 3,
                repeat: int = 10) -> dict[str, float]:
    """Median milliseconds per stage (``ENGINE_STAGES`` and ``total``) of ``repeat`` runs
    after ``warmup``, on random ``batch`` x ``height`` x ``width`` frames."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    camera = Intrinsics(0.96 * width, 0.96 * width, width / 2, height / 2, width, height)
    sync = torch.cuda.synchronize if engine.device.type == 'cuda' else None
    timer = StageTimer(sync)
    for i in range(warmup + repeat):
        if i == warmup:
            timer.clear()
        with timer.stage('total'):
            depth = engine.predict(images, camera, timer=timer)
            with timer.stage('backproject'):
                for frame in depth:
                    backproject(frame, camera)
    return timer.medians()


def run(args: argparse.Namespace) -> int:
    engine = load_engine(args)
    height, width = args.image_size
    medians = time_engine(engine, height, width, args.batch, args.warmup, args.repeat)
    total = medians['total']
    device = device_description(engine)
    print(f'device: {device}; torch {torch.__version__}; {engine.config.model} '
          f'{engine.config.feature_mode} mode; input {height}x{width} -> network '
          f'{engine.config.input_size[0]}x{engine.config.input_size[1]}; batch {args.batch}; '
          f'flip={engine.head.flip_average}; median of {args.repeat} after {args.warmup} '
          f'warm-up' + ('; random weights (cost is the same)' if engine.random_weights else ''))
    print(f'{"stage":<12} {"ms/batch":>9} {"ms/frame":>9} {"share":>6}')
    for name in (*ENGINE_STAGES, 'total'):
        value = medians[name]
        print(f'{name:<12} {value:9.2f} {value / args.batch:9.2f} {100 * value / total:5.1f}%')
    outside = total - medians['network']
    print(f'everything but the network: {outside:.2f} ms ({100 * outside / total:.1f}% of the '
          f'frame); {1e3 * args.batch / total:.1f} frames/s')
    if args.json:
        args.json.write_text(json.dumps({'device': device, 'batch': args.batch,
                                         'image_size': [height, width],
                                         'input_size': list(engine.config.input_size),
                                         'median_ms': medians}, indent=2))
    return 0

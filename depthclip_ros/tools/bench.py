"""``depthclip-ros bench``: per-stage milliseconds of one frame on the chosen device.

Stages: preprocess (upload, resize, normalise), network (CLIP trunk), head (prompt
similarity, softmax, bins, metric scale), upsample (to the output size, and the download),
backproject (organised cloud). Median of ``--repeat`` runs after ``--warmup`` runs. Weights
do not change the cost, so random weights are used unless ``--pretrained`` says otherwise.

``--queries N`` adds the object step of the node (built-in proposals, referring with the
node protocol, 3-D location) for 1 and N queries on a synthetic scene of boxes, and prints
its stages, its fixed cost and the added cost per query.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import platform

import numpy as np
import torch

from ..finder import find_objects
from ..geometry import backproject, Intrinsics
from ..model import DepthCLIP
from ..proposals import MAX_MASKS
from ..referring import MAX_QUERIES, ReferringCLIP
from ..timing import StageTimer
from .common import add_model_arguments, load_engine

ENGINE_STAGES = ('preprocess', 'network', 'head', 'upsample', 'backproject')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--image-size', type=int, nargs=2, default=(480, 640),
                        metavar=('H', 'W'), help='camera image size (default 480 640)')
    parser.add_argument('--batch', type=int, default=1, help='frames per forward pass')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--repeat', type=int, default=10)
    parser.add_argument('--queries', type=int, default=0, metavar='N',
                        help='also time the object step with 1 and N queries (0: off)')
    parser.add_argument('--max-masks', type=int, default=MAX_MASKS,
                        help=f'candidate masks of the object step (default {MAX_MASKS})')
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


OBJECT_STAGES = ('proposals', 'referring', 'locate')
BENCH_QUERIES = ('the red box on the left', 'a blue box', 'the green box next to the wall',
                 'the small yellow box', 'the wall', 'the floor', 'a cup on the table',
                 'the door', 'the chair', 'a person', 'the lamp', 'the window', 'a book',
                 'the bottle', 'the plant', 'the screen')


def boxes_scene(height: int, width: int) -> np.ndarray:
    """A deterministic scene for the proposals: coloured boxes on a noisy gradient."""
    rng = np.random.default_rng(1)
    rows = np.linspace(90, 170, height, dtype=np.float32)[:, None, None]
    rgb = np.broadcast_to(rows, (height, width, 3)) + rng.normal(0, 4, (height, width, 3))
    colours = ((200, 40, 40), (40, 60, 200), (40, 170, 60), (220, 210, 40), (150, 80, 160))
    for i, colour in enumerate(colours):
        top, left = int(height * (0.1 + 0.15 * i)), int(width * (0.05 + 0.18 * i))
        rgb[top:top + height // 4, left:left + width // 6] = colour
    return np.clip(rgb, 0, 255).astype(np.uint8)


def time_objects(engine: DepthCLIP, height: int, width: int, queries: int,
                 max_masks: int = MAX_MASKS, warmup: int = 1, repeat: int = 5
                 ) -> dict[int, dict[str, float]]:
    """Median milliseconds of the object step (``OBJECT_STAGES`` and ``total``) for 1 and
    ``queries`` queries, node protocol, after the depth pass of the same frame."""
    rgb = boxes_scene(height, width)
    camera = Intrinsics(0.96 * width, 0.96 * width, width / 2, height / 2, width, height)
    depth, tokens = engine.predict_with_tokens(rgb, camera)
    referring = ReferringCLIP(engine)
    sync = torch.cuda.synchronize if engine.device.type == 'cuda' else None
    out = {}
    for count in sorted({1, queries}):
        texts = list(BENCH_QUERIES[:count])
        timer = StageTimer(sync)
        for i in range(warmup + repeat):
            if i == warmup:
                timer.clear()
            with timer.stage('total'):
                find_objects(referring, rgb, depth, camera, texts, protocol='node',
                             tokens=tokens, max_masks=max_masks, timer=timer)
        out[count] = timer.medians()
    return out


def print_objects(figures: dict[int, dict[str, float]]) -> None:
    counts = sorted(figures)
    print(f'object step (node protocol, built-in proposals; text encoded once per query and '
          f'remembered), with {" and ".join(str(c) for c in counts)} queries:')
    print(f'{"stage":<12} ' + ' '.join(f'{f"{c}q ms":>9}' for c in counts))
    for name in (*OBJECT_STAGES, 'total'):
        print(f'{name:<12} ' + ' '.join(f'{figures[c].get(name, 0.0):9.2f}' for c in counts))
    if len(counts) > 1:
        # proposals and the masks' features are paid once per frame; what grows with the
        # queries is each one's scoring and 3-D location (the ``locate`` stage, mostly)
        low, high = counts[0], counts[-1]
        per_query = (figures[high]['locate'] - figures[low]['locate']) / (high - low)
        once = figures[low]['proposals'] + figures[low]['referring']
        print(f'per frame: proposals + referring {once:.2f} ms '
              f'(mask features; text features are remembered); per added query: '
              f'{per_query:.2f} ms of locate (from the locate stage at {low} and {high} '
              f'queries)')


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.queries <= MAX_QUERIES:
        print(f'depthclip-ros bench: --queries must be in 0..{MAX_QUERIES}, got {args.queries}')
        return 2
    if not 1 <= args.max_masks <= 64:
        print(f'depthclip-ros bench: --max-masks must be in 1..64, got {args.max_masks}')
        return 2
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
    objects = {}
    if args.queries:
        objects = time_objects(engine, height, width, args.queries, args.max_masks,
                               repeat=max(1, args.repeat // 2))
        print_objects(objects)
    if args.json:
        args.json.write_text(json.dumps({'device': device, 'batch': args.batch,
                                         'image_size': [height, width],
                                         'input_size': list(engine.config.input_size),
                                         'median_ms': medians,
                                         'objects_median_ms': objects}, indent=2))
    return 0

"""``depthclip-ros bench``: per-stage milliseconds of one frame on the chosen device.

Stages: preprocess (upload, resize, normalise), network (CLIP trunk), head (prompt
similarity, softmax, bins, metric scale), upsample (to the output size, and the download),
backproject (organised cloud). Median of ``--repeat`` runs after ``--warmup`` runs. Weights
do not change the cost, so random weights are used unless ``--pretrained`` says otherwise.

The cost of the depth uncertainty (METHOD.md §4): the frame timed with and without
``uncertainty=True`` in the same run, interleaved (the order alternating every round),
medians, with the difference as a share of the frame; the head computes the bin
distribution's standard deviation (and its median, for diagnostics) on every frame either
way, so that part is timed on its own. And the cost of one zero-shot scene classification
(scene-adaptive bins, METHOD.md §5) at the bench image size, per classification and per
frame at the node's default of one classification every ``scene_every_n_frames`` frames.

``--queries N`` adds the object step of the node (built-in proposals, referring with the
node protocol, 3-D location) for 1 and N queries on a synthetic scene of boxes, and prints
its stages, its fixed cost and the added cost per query.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path
import platform
import statistics
import time

import numpy as np
import torch

from ..finder import find_objects
from ..geometry import backproject, Intrinsics
from ..model import bin_moments, DepthCLIP
from ..parameters import PARAMETERS
from ..proposals import MAX_MASKS
from ..referring import MAX_QUERIES, ReferringCLIP
from ..scenes import SceneClassifier
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


UNCERTAINTY_STAGES = ('head', 'upsample')  # where uncertainty=True changes the work


def _sync(engine: DepthCLIP):
    return torch.cuda.synchronize if engine.device.type == 'cuda' else None


def _frame_bins(engine: DepthCLIP) -> tuple[float, ...] | None:
    """Bins to pass with every timed frame: with scene-adaptive bins the first scene's (the
    cost is that of any bins), so that the frame is timed without a scene classification
    (the node classifies every ``scene_every_n_frames`` frames, timed on its own here)."""
    return engine.head.scene_bin_sets[0] if engine.head.bins_mode != 'fixed' else None


def _timed(step, sync) -> float:
    """Milliseconds of ``step()`` (device work included)."""
    if sync:
        sync()
    start = time.perf_counter()
    step()
    if sync:
        sync()
    return (time.perf_counter() - start) * 1e3


def time_uncertainty(engine: DepthCLIP, height: int, width: int, batch: int = 1,
                     warmup: int = 3, repeat: int = 10) -> dict:
    """What ``uncertainty=True`` costs :meth:`DepthCLIP.infer`, in milliseconds per batch.

    Both variants run on the same random frames in ``repeat`` rounds after ``warmup``, one
    of each per round, the order alternating (so that drifts in clock speed or load fall on
    both alike); every figure is the median over the rounds of that round's value:
    ``without_ms``/``with_ms`` the whole call, ``paired_ms`` their difference, ``cost_ms``
    the difference in the stages whose work the flag changes (``UNCERTAINTY_STAGES``: the
    sigma map's interpolation and download) and ``cost_share`` that over the frame without.
    ``noise_ms``: the network's difference, whose work is identical both ways, so it is the
    machine's noise, the scale below which the whole-call difference says nothing.
    ``stages_without``/``stages_with``: per-stage medians. ``head_sigma_ms``: the head's
    standard deviation and its median over the token grid, timed on their own against the
    mean alone (paid on every frame, asked for or not).
    """
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    camera = Intrinsics(0.96 * width, 0.96 * width, width / 2, height / 2, width, height)
    sync = _sync(engine)
    bins = _frame_bins(engine)
    timers = {False: StageTimer(sync), True: StageTimer(sync)}
    rounds = {name: [] for name in ('without', 'with', 'paired', 'cost', 'share', 'noise')}
    for i in range(warmup + repeat):
        if i == warmup:
            for timer in timers.values():
                timer.clear()
        took, stages = {}, {}
        for flag in (False, True) if i % 2 == 0 else (True, False):
            took[flag] = _timed(functools.partial(engine.infer, images, camera,
                                                  timer=timers[flag], uncertainty=flag,
                                                  bins_m=bins), sync)
            stages[flag] = timers[flag].last()
        if i < warmup:
            continue
        cost = sum(stages[True].get(n, 0.0) - stages[False].get(n, 0.0)
                   for n in UNCERTAINTY_STAGES)
        for name, value in (('without', took[False]), ('with', took[True]),
                            ('paired', took[True] - took[False]), ('cost', cost),
                            ('share', cost / took[False]),
                            ('noise', abs(stages[True]['network'] - stages[False]['network']))):
            rounds[name].append(value)
    grid = tuple(engine.infer(images[:1], camera, bins_m=bins).tokens.shape[-2:])
    median = {name: statistics.median(values) for name, values in rounds.items()}
    return {'without_ms': median['without'], 'with_ms': median['with'],
            'paired_ms': median['paired'], 'cost_ms': median['cost'],
            'cost_share': median['share'], 'noise_ms': median['noise'],
            'stages_without': timers[False].medians(), 'stages_with': timers[True].medians(),
            'head_sigma_ms': time_head_sigma(engine, batch, grid, max(repeat, 20)),
            'token_grid': list(grid), 'rounds': repeat}


def time_head_sigma(engine: DepthCLIP, batch: int, grid: tuple[int, int],
                    repeat: int = 20) -> float:
    """Milliseconds the head's uncertainty adds to its mean: the bin moments (mean and
    standard deviation) and the median of sigma over the grid, minus the mean alone, on
    softmax weights of the engine's shape ``(batch, h*w, K)`` (median of ``repeat``
    interleaved rounds' differences)."""
    count = len(engine.head.depth_bins_m)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, grid[0] * grid[1], count, generator=generator)
    weights = torch.softmax(logits, dim=-1).to(engine.device)
    bins = torch.as_tensor(engine.head.depth_bins_m, dtype=torch.float32,
                           device=engine.device)
    sync = _sync(engine)

    def mean_only():
        return weights @ bins

    def with_sigma():
        depth, sigma = bin_moments(weights, bins)
        return depth, sigma.flatten(1).median(dim=1).values

    extra = []
    with torch.inference_mode():
        for i in range(repeat + 3):  # 3 rounds of warm-up
            took = {step: _timed(step, sync) for step in
                    ((mean_only, with_sigma) if i % 2 == 0 else (with_sigma, mean_only))}
            if i >= 3:
                extra.append(took[with_sigma] - took[mean_only])
    return max(statistics.median(extra), 0.0)


SCENE_EVERY_N_FRAMES = next(p.default for p in PARAMETERS if p.name == 'scene_every_n_frames')
BENCH_SCENES = ('bathroom', 'classroom', 'room')  # config/scene_bins_example.yaml's


def time_scene(engine: DepthCLIP, height: int, width: int, warmup: int = 3,
               repeat: int = 10) -> dict:
    """Milliseconds of one :meth:`SceneClassifier.classify` of a ``height`` x ``width``
    frame (open_clip's preprocessing on the CPU, CLIP's image encoder and the scores; the
    text features, encoded once, are remembered), in rounds with one depth frame of the
    same size (the order alternating): ``classify_ms`` and ``frame_ms`` are medians over
    ``repeat`` rounds after ``warmup``, ``share`` the median of the rounds' ratios. The
    scenes are the engine's (``--scene-names``), else three."""
    names = engine.head.scene_names or BENCH_SCENES
    template = engine.head.scene_prompt_template
    rgb = boxes_scene(height, width)
    camera = Intrinsics(0.96 * width, 0.96 * width, width / 2, height / 2, width, height)
    classifier = SceneClassifier(engine)  # its own: the first call below encodes the text
    classifier.text_features(names, template)  # once, then remembered
    sync = _sync(engine)
    steps = {'classify': lambda: classifier.classify(rgb, names, template),
             'frame': functools.partial(engine.infer, rgb, camera,
                                        bins_m=_frame_bins(engine))}
    rounds = {'classify': [], 'frame': [], 'share': []}
    for i in range(warmup + repeat):
        took = {name: _timed(steps[name], sync)
                for name in (('classify', 'frame') if i % 2 == 0 else ('frame', 'classify'))}
        if i >= warmup:
            rounds['classify'].append(took['classify'])
            rounds['frame'].append(took['frame'])
            rounds['share'].append(took['classify'] / took['frame'])
    return {'classify_ms': statistics.median(rounds['classify']),
            'frame_ms': statistics.median(rounds['frame']),
            'share': statistics.median(rounds['share']), 'scenes': len(names)}


def print_uncertainty(figures: dict, batch: int) -> None:
    """The cost of ``uncertainty=True`` per frame, and as a share of the frame without it."""
    without = figures['without_ms']
    before, after = figures['stages_without'], figures['stages_with']
    print(f'uncertainty (sigma, METHOD.md §4): the same frames with and without '
          f'uncertainty=True, interleaved, medians of {figures["rounds"]} rounds:')
    print(f'  frame without {without / batch:.2f} ms, with {figures["with_ms"] / batch:.2f} '
          f'ms; paired difference {figures["paired_ms"] / batch:+.2f} ms/frame '
          f'({100 * figures["paired_ms"] / without:+.2f}%); noise: the network, the same work '
          f'either way, differs by {figures["noise_ms"] / batch:.2f} ms/frame between them')
    print('  the stages that do the extra work: '
          + ', '.join(f'{name} {before.get(name, 0.0) / batch:.2f} -> '
                      f'{after.get(name, 0.0) / batch:.2f} ms' for name in UNCERTAINTY_STAGES)
          + f': uncertainty cost {figures["cost_ms"] / batch:.2f} ms/frame = '
          f'{100 * figures["cost_share"]:.2f}% of the frame')
    head = figures['head_sigma_ms']
    print(f'  in the head, sigma and its median over the {figures["token_grid"][0]}x'
          f'{figures["token_grid"][1]} token grid, computed on every frame either way: '
          f'{head / batch:.3f} ms/frame = {100 * head / without:.3f}% of the frame')


def print_scene(figures: dict, height: int, width: int) -> None:
    cost, share = figures['classify_ms'], figures['share']
    every = SCENE_EVERY_N_FRAMES
    print(f'scene classification ({figures["scenes"]} scenes, {height}x{width} image, '
          f'open_clip preprocessing + image encoder), interleaved with depth frames of '
          f'{figures["frame_ms"]:.2f} ms: {cost:.2f} ms = {100 * share:.1f}% of a frame; '
          f'once every {every} frames (the node default) {cost / every:.2f} ms/frame = '
          f'{100 * share / every:.2f}%')


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
    prediction = engine.infer(rgb, camera)
    depth, tokens = prediction.depth, prediction.tokens
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
    # with scene-adaptive bins the engine classifies every frame's scene first ('scene')
    others = [name for name in medians if name not in (*ENGINE_STAGES, 'total')]
    for name in (*others, *ENGINE_STAGES, 'total'):
        value = medians[name]
        print(f'{name:<12} {value:9.2f} {value / args.batch:9.2f} {100 * value / total:5.1f}%')
    outside = total - medians['network']
    print(f'everything but the network: {outside:.2f} ms ({100 * outside / total:.1f}% of the '
          f'frame); {1e3 * args.batch / total:.1f} frames/s')
    uncertainty = time_uncertainty(engine, height, width, args.batch, args.warmup,
                                   args.repeat)
    print_uncertainty(uncertainty, args.batch)
    scene = time_scene(engine, height, width, args.warmup, args.repeat)
    print_scene(scene, height, width)
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
                                         'uncertainty_ms': uncertainty,
                                         'scene_ms': scene,
                                         'objects_median_ms': objects}, indent=2))
    return 0

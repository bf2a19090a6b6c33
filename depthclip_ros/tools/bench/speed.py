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

``--batch N`` (N > 1) also compares one-by-one with batched inference: N distinct frames
(each with its own intrinsics) through :meth:`DepthCLIP.infer_frames` one at a time and as
one call, interleaved, per-stage milliseconds per frame, frames/s and the throughput ratio.

``--compare-precision fp32 bf16 ...`` is a run of its own: one engine per precision (the
same weights, checked), fp32 also in its other trunk layout (NCHW on the CPU, where fp32
runs channels-last), per-stage medians side by side from interleaved rounds; a precision
this device cannot run is reported as not available. With ``--images`` or ``--dataset``,
the depth deviation of each against fp32: median, p99 and max of |d - d_fp32| / d_fp32 over
every pixel of the given images.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import functools
import glob
import json
from pathlib import Path
import platform
import statistics
import time

import numpy as np
import torch

from depthclip_ros.engine.config import PRECISIONS
from depthclip_ros.engine.depthclip import DepthCLIP
from depthclip_ros.engine.frames import bin_moments, FrameIn
from depthclip_ros.engine.runtime import cpu_bf16_native, resolve_runtime
from depthclip_ros.engine.scenes import SceneClassifier
from depthclip_ros.engine.weights import WeightsError
from depthclip_ros.geometry import backproject, Intrinsics
from depthclip_ros.io.dataset import DatasetError, read_rgb
from depthclip_ros.objects.finder import find_objects
from depthclip_ros.objects.proposals import MAX_MASKS
from depthclip_ros.objects.queries import MAX_QUERIES
from depthclip_ros.objects.referring import ReferringCLIP
from depthclip_ros.ros.parameters import PARAMETERS
from depthclip_ros.timing import StageTimer
from depthclip_ros.tools.common import (
    add_model_arguments,
    configs_from_args,
    load_engine,
    warn_random_weights,
)

ENGINE_STAGES = ('preprocess', 'network', 'head', 'upsample', 'backproject')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--image-size', type=int, nargs=2, default=(480, 640),
                        metavar=('H', 'W'), help='camera image size (default 480 640)')
    parser.add_argument('--batch', type=int, default=1,
                        help='frames per forward pass; above 1 also compares N frames one by '
                             'one against one batched call (infer_frames)')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--repeat', type=int, default=10)
    parser.add_argument('--queries', type=int, default=0, metavar='N',
                        help='also time the object step with 1 and N queries (0: off)')
    parser.add_argument('--max-masks', type=int, default=MAX_MASKS,
                        help=f'candidate masks of the object step (default {MAX_MASKS})')
    parser.add_argument('--compare-precision', nargs='+', type=precision_variant,
                        metavar='PRECISION',
                        help='a run of its own: time these precisions side by side (fp32, '
                             'bf16, fp16, auto; -nchw or -nhwc picks the trunk layout; fp32 '
                             'is also timed in its other layout), one engine each, the same '
                             'weights')
    parser.add_argument('--images', nargs='+', metavar='GLOB',
                        help='with --compare-precision: images for the depth deviation '
                             'against fp32 (nominal intrinsics: the deviation is relative)')
    parser.add_argument('--dataset', nargs='+', type=Path, metavar='DIR',
                        help='with --compare-precision: dataset folders (rgb/, '
                             'intrinsics.json), or folders holding them, for the deviation')
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


def device_description(engine: DepthCLIP, dtype: bool = True) -> str:
    """The engine's device (and its dtype), with the CPU's name and thread count on the
    CPU."""
    device = engine.describe_device()
    if not dtype:
        device = device.rsplit(' ', 1)[0]
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


# ------------------------------------------------------------------ batch against batch 1

BATCH_STAGES = ('preprocess', 'network', 'head', 'upsample')  # infer_frames' own stages
BATCH_MODES = ('sequential', 'batched', 'one trunk call')


def bench_frames(engine: DepthCLIP, height: int, width: int, count: int) -> list[FrameIn]:
    """``count`` distinct random ``height`` x ``width`` frames, each with intrinsics of its
    own (focal and principal point differ), the bins of :func:`_frame_bins`."""
    rng = np.random.default_rng(0)
    bins = _frame_bins(engine)
    frames = []
    for i in range(count):
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        focal = (0.90 + 0.04 * i) * width
        camera = Intrinsics(focal, focal * 1.01, width / 2 + i, height / 2 - i, width, height)
        frames.append(FrameIn(rgb, camera, bins_m=bins))
    return frames


def time_batching(engine: DepthCLIP, height: int, width: int, batch: int, warmup: int = 3,
                  repeat: int = 10) -> dict:
    """``batch`` distinct frames through :meth:`DepthCLIP.infer_frames` one by one
    (``sequential``: ``batch`` calls of one frame) and as one call (``batched``), in
    ``repeat`` rounds after ``warmup``, one of each per round, the order alternating.

    Per mode, milliseconds per frame, medians over the rounds of that round's value:
    ``stages`` (``BATCH_STAGES``: the stage's time summed over the round's calls, over
    ``batch``), ``other`` (the calls' time outside those stages: checks, bins, Python) and
    ``total`` (the whole round's wall time over ``batch``); ``fps`` is ``1000 / total``.
    ``ratio``: batched over sequential throughput from the medians, ``paired_ratio`` the
    median of the rounds' own ratios."""
    frames = bench_frames(engine, height, width, batch)
    sync = _sync(engine)

    def one_trunk_call(timer):  # the batch's trunk as one call, whatever the device's rule
        chunk, engine.trunk_batch = engine.trunk_batch, None
        try:
            return engine.infer_frames(frames, timer)
        finally:
            engine.trunk_batch = chunk

    steps = {'sequential': lambda timer: [engine.infer_frames([f], timer) for f in frames],
             'batched': lambda timer: engine.infer_frames(frames, timer),
             'one trunk call': one_trunk_call}
    rounds = {mode: {name: [] for name in (*BATCH_STAGES, 'other', 'total')}
              for mode in BATCH_MODES}
    ratios = []
    for i in range(warmup + repeat):
        took = {}
        shift = i % len(BATCH_MODES)  # the order rotates round by round
        for mode in BATCH_MODES[shift:] + BATCH_MODES[:shift]:
            timer = StageTimer(sync)
            took[mode] = _timed(functools.partial(steps[mode], timer), sync)
            if i < warmup:
                continue
            staged = 0.0
            for name in BATCH_STAGES:
                value = sum(timer.samples.get(name, ()))
                staged += value
                rounds[mode][name].append(value / batch)
            rounds[mode]['other'].append((took[mode] - staged) / batch)
            rounds[mode]['total'].append(took[mode] / batch)
        if i >= warmup:
            ratios.append(took['sequential'] / took['batched'])
    out = {'batch': batch, 'image_size': [height, width], 'rounds': repeat}
    for mode in BATCH_MODES:
        medians = {name: statistics.median(values) for name, values in rounds[mode].items()}
        out[mode] = {'stages_ms_per_frame': {n: medians[n] for n in BATCH_STAGES},
                     'other_ms_per_frame': medians['other'],
                     'total_ms_per_frame': medians['total'],
                     'fps': 1e3 / medians['total']}
    out['ratio'] = out['batched']['fps'] / out['sequential']['fps']
    out['one_trunk_call_ratio'] = out['one trunk call']['fps'] / out['sequential']['fps']
    out['trunk_batch'] = engine.trunk_batch
    out['paired_ratio'] = statistics.median(ratios)
    return out


def print_batching(figures: dict) -> None:
    batch, (height, width) = figures['batch'], figures['image_size']
    print(f'batching: {batch} distinct {height}x{width} frames (each with its own '
          f'intrinsics) through infer_frames one by one (batch 1) and as one batched call, '
          f'interleaved, medians of {figures["rounds"]} rounds; ms per frame:')
    print(f'{"stage":<12} {"sequential":>10} {"batched":>10} {"one-trunk-call":>15}')
    modes = [figures[mode] for mode in BATCH_MODES]
    for name in BATCH_STAGES:
        print(f'{name:<12} ' + ' '.join(f'{m["stages_ms_per_frame"][name]:{w}.2f}'
                                        for m, w in zip(modes, (10, 10, 15))))
    print(f'{"other":<12} ' + ' '.join(f'{m["other_ms_per_frame"]:{w}.2f}'
                                       for m, w in zip(modes, (10, 10, 15)))
          + '   (outside the stages: checks, bins, Python)')
    print(f'{"total":<12} ' + ' '.join(f'{m["total_ms_per_frame"]:{w}.2f}'
                                       for m, w in zip(modes, (10, 10, 15))))
    print(f'{"frames/s":<12} ' + ' '.join(f'{m["fps"]:{w}.2f}'
                                          for m, w in zip(modes, (10, 10, 15))))
    chunk = figures['trunk_batch']
    print(f'batched/sequential throughput: {figures["ratio"]:.3f}x (from the medians; the '
          f'median of the rounds\' own ratios {figures["paired_ratio"]:.3f}x); the engine\'s '
          f'trunk takes {"the whole batch" if chunk is None else f"{chunk} frame(s)"} per '
          f'call on this device; the whole batch as one trunk call: '
          f'{figures["one_trunk_call_ratio"]:.3f}x')


# ------------------------------------------------------------------ precisions side by side

# bench's short layout names -> the memory_format setting that loads the trunk in it
LAYOUTS = {'nhwc': 'channels_last', 'nchw': 'contiguous'}
DTYPE_NAMES = {torch.float32: 'fp32', torch.bfloat16: 'bf16', torch.float16: 'fp16'}


def precision_variant(text: str) -> tuple[str, str | None]:
    """``fp32``, ``bf16-nchw``, ``fp32/nhwc``, ... -> ``(precision, layout or None)``
    (argparse type: ``ArgumentTypeError`` for anything else)."""
    precision, _, layout = text.strip().lower().replace('/', '-').partition('-')
    if precision not in PRECISIONS or (layout and layout not in LAYOUTS):
        raise argparse.ArgumentTypeError(
            f'{text!r}: a precision ({", ".join(PRECISIONS)}), optionally with -nchw or '
            f'-nhwc (the trunk layout)')
    return precision, layout or None


def layout_name(memory_format: torch.memory_format) -> str:
    return 'nhwc' if memory_format == torch.channels_last else 'nchw'


def plan_variants(asked: list[tuple[str, str | None]], args: argparse.Namespace
                  ) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    """What to build: ``([(label, precision, layout)], [(precision, why not available)])``.

    fp32 in its default layout comes first, asked or not (the reference); unless a layout
    of fp32 is asked for, fp32 in its other layout follows it. A variant without a layout
    gets its precision's default (:func:`~depthclip_ros.engine.depthclip.trunk_memory_format`, or
    ``--memory-format``);
    duplicates are kept once. Loads nothing."""
    from depthclip_ros.engine.runtime import trunk_memory_format
    model, _ = configs_from_args(args)
    wanted = [('fp32', None)] + [v for v in asked if v != ('fp32', None)]
    if not any(precision == 'fp32' and layout for precision, layout in asked):
        wanted.insert(1, ('fp32', 'other'))
    runnable, missing, seen = [], {}, set()
    for precision, layout in wanted:
        if precision in missing:
            continue
        try:
            device, dtype = resolve_runtime(replace(model, precision=precision))
        except ValueError as error:
            missing[precision] = str(error)
            continue
        default = layout_name(trunk_memory_format(device, dtype, model.memory_format))
        precision = DTYPE_NAMES[dtype]  # auto: what it is on this device
        if layout == 'other':
            layout = 'nchw' if default == 'nhwc' else 'nhwc'
        layout = layout or default
        if (precision, layout) not in seen:
            seen.add((precision, layout))
            runnable.append((f'{precision}/{layout}', precision, layout))
    return runnable, list(missing.items())


def same_weights(reference: DepthCLIP, engine: DepthCLIP) -> tuple[bool, float]:
    """Whether ``engine``'s image trunk holds ``reference``'s weights (cast to its dtype),
    and the largest difference of their text features (float32 both: 0 when the text
    towers are the same)."""
    ref_state = reference._clip.visual.state_dict()  # noqa: SLF001 - a check of identity
    state = engine._clip.visual.state_dict()  # noqa: SLF001
    equal = ref_state.keys() == state.keys() and all(
        torch.equal(ref_state[k].to(state[k].dtype) if state[k].is_floating_point()
                    else ref_state[k], state[k]) for k in state)
    text = (reference.text_features - engine.text_features).abs().max().item()
    return equal, text


def build_variants(args: argparse.Namespace, plan: list[tuple[str, str, str]]
                   ) -> dict[str, DepthCLIP]:
    """One loaded engine per planned variant, from the tool's options with the variant's
    precision and layout; exits with the reason when weights cannot be loaded."""
    model, head = configs_from_args(args)
    engines = {}
    for label, precision, layout in plan:
        try:
            engine = DepthCLIP(replace(model, precision=precision,
                                       memory_format=LAYOUTS[layout]), head).load()
        except (ValueError, WeightsError) as error:
            raise SystemExit(f'depthclip-ros bench: {label}: {error}') from None
        engines[label] = engine
    return engines


def time_precisions(engines: dict[str, DepthCLIP], height: int, width: int, batch: int = 1,
                    warmup: int = 3, repeat: int = 10) -> dict:
    """Every engine on the same ``batch`` random frames, in ``repeat`` rounds after
    ``warmup``, one call of each per round, the order rotating by one every round. Per
    engine, ms per frame: ``stages`` (``BATCH_STAGES``) and ``total`` (the whole call)
    medians, ``fps``; ``speedup``: the median of the rounds' ratios of the first engine's
    (the reference's) call to this one's."""
    labels = list(engines)
    reference = labels[0]
    images = np.stack([f.rgb for f in bench_frames(engines[reference], height, width,
                                                   batch)])
    camera = Intrinsics(0.96 * width, 0.96 * width, width / 2, height / 2, width, height)
    bins = _frame_bins(engines[reference])
    timers = {label: StageTimer(_sync(engine)) for label, engine in engines.items()}
    totals = {label: [] for label in labels}
    speedups = {label: [] for label in labels}
    for i in range(warmup + repeat):
        if i == warmup:
            for timer in timers.values():
                timer.clear()
        shift = i % len(labels)
        took = {}
        for label in labels[shift:] + labels[:shift]:
            engine = engines[label]
            took[label] = _timed(functools.partial(engine.infer, images, camera,
                                                   timer=timers[label], bins_m=bins),
                                 _sync(engine))
        if i >= warmup:
            for label in labels:
                totals[label].append(took[label] / batch)
                speedups[label].append(took[reference] / took[label])
    out = {}
    for label in labels:
        medians = timers[label].medians()
        total = statistics.median(totals[label])
        out[label] = {'stages_ms_per_frame': {n: medians.get(n, 0.0) / batch
                                              for n in BATCH_STAGES},
                      'total_ms_per_frame': total, 'fps': 1e3 / total,
                      'speedup': statistics.median(speedups[label])}
    return out


def deviation_images(args: argparse.Namespace) -> list[tuple[str, np.ndarray, Intrinsics]]:
    """``(name, rgb, intrinsics)`` of ``--images`` (globs, or paths as given; nominal
    intrinsics, fx = fy = 0.96 width) and of every ``--dataset`` folder's rgb/ images (its
    intrinsics). Raises ``ValueError`` (``DatasetError``) naming what cannot be read."""
    out = []
    for pattern in args.images or ():
        paths = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not paths:
            raise DatasetError(f'--images {pattern}: no file matches')
        for path in paths:
            rgb = read_rgb(path)
            height, width = rgb.shape[:2]
            camera = Intrinsics(0.96 * width, 0.96 * width, width / 2, height / 2, width,
                                height)
            out.append((str(path), rgb, camera))
    if args.dataset:
        from depthclip_ros.tools.evaluate import find_datasets
        for label, folder in find_datasets(list(args.dataset)):
            for frame in folder:
                out.append((f'{label}/{frame.name}', frame.rgb, frame.intrinsics))
    return out


def precision_deviation(engines: dict[str, DepthCLIP],
                        images: list[tuple[str, np.ndarray, Intrinsics]]) -> dict:
    """Per engine, ``median``, ``p99`` and ``max`` of |d - d_ref| / d_ref over every pixel
    of every image, ``d_ref`` the first engine's depth from a pass of its own (so the
    reference's own row is its run-to-run difference: 0 where it is deterministic)."""
    labels = list(engines)
    reference = engines[labels[0]]
    bins = _frame_bins(reference)
    errors = {label: [] for label in labels}
    for _, rgb, camera in images:
        ref = reference.infer(rgb, camera, bins_m=bins).depth.astype(np.float64)
        valid = np.isfinite(ref) & (ref > 0)
        for label, engine in engines.items():
            depth = engine.infer(rgb, camera, bins_m=bins).depth.astype(np.float64)
            errors[label].append((np.abs(depth - ref)[valid] / ref[valid]).astype(np.float32))
    out = {}
    for label in labels:
        values = np.concatenate(errors[label])
        out[label] = {'median': float(np.median(values)),
                      'p99': float(np.percentile(values, 99)),
                      'max': float(values.max()), 'pixels': int(values.size)}
    return out


def _relative(value: float) -> str:
    return '0' if value == 0 else f'{value:.3g}'


def print_precisions(figures: dict, deviation: dict | None, missing: list[tuple[str, str]],
                     image_count: int) -> None:
    labels = list(figures)
    reference = labels[0]
    width = max(10, *(len(label) for label in labels))
    print(f'{"ms/frame":<12} ' + ' '.join(f'{label:>{width}}' for label in labels))
    for name in BATCH_STAGES:
        print(f'{name:<12} ' + ' '.join(
            f'{figures[label]["stages_ms_per_frame"][name]:{width}.2f}' for label in labels))
    print(f'{"total":<12} ' + ' '.join(f'{figures[label]["total_ms_per_frame"]:{width}.2f}'
                                         for label in labels))
    print(f'{"frames/s":<12} ' + ' '.join(f'{figures[label]["fps"]:{width}.2f}'
                                            for label in labels))
    print(f'{"speed-up":<12} ' + ' '.join(f'{figures[label]["speedup"]:{width - 1}.3f}x'
                                            for label in labels)
          + f"   (median of the rounds' {reference} time / its time)")
    for label, reason in missing:
        print(f'{label}: not available: {reason}')
    if deviation is None:
        print('depth deviation: give --images or --dataset to measure it against '
              f'{reference}')
        return
    pixels = next(iter(deviation.values()))['pixels']
    print(f'depth deviation against {reference} (a pass of its own), |d - d_{reference}| / '
          f'd_{reference} over {pixels} pixels of {image_count} images:')
    print(f'{"variant":<12} {"median":>10} {"p99":>10} {"max":>10}')
    for label in labels:
        row = deviation[label]
        print(f'{label:<12} ' + ' '.join(f'{_relative(row[k]):>10}'
                                          for k in ('median', 'p99', 'max')))


def run_compare_precision(args: argparse.Namespace) -> int:
    height, width = args.image_size
    try:
        images = deviation_images(args)
    except ValueError as error:  # DatasetError, ImageFormatError
        print(f'depthclip-ros bench: {error}')
        return 2
    plan, missing = plan_variants(args.compare_precision, args)
    if not plan:
        for label, reason in missing:
            print(f'{label}: not available: {reason}')
        print('depthclip-ros bench: no precision of --compare-precision can run here')
        return 1
    engines = build_variants(args, plan)
    labels = list(engines)
    reference = engines[labels[0]]
    if reference.random_weights:
        warn_random_weights()
    checks = {label: same_weights(reference, engine) for label, engine in engines.items()}
    differ = [label for label, (equal, _) in checks.items() if not equal]
    device = device_description(reference, dtype=False)
    bf16 = 'yes' if reference.device.type != 'cpu' or cpu_bf16_native() else 'no'
    print(f'device: {device}; torch {torch.__version__}; {reference.config.model} '
          f'{reference.config.feature_mode} mode; input {height}x{width} -> network '
          f'{reference.config.input_size[0]}x{reference.config.input_size[1]}; batch '
          f'{args.batch}; flip={reference.head.flip_average}; '
          + (f'native bf16 (oneDNN): {bf16}; ' if reference.device.type == 'cpu' else '')
          + f'precisions interleaved (order rotating), median of {args.repeat} rounds after '
          f'{args.warmup} warm-up' + ('; random weights (cost is the same)'
                                       if reference.random_weights else ''))
    text = max(t for _, t in checks.values())
    same = 'the same in every engine (after the cast to its dtype)' if not differ else \
        'DIFFERENT in ' + ', '.join(differ)
    print(f'weights: trunk {same}; text features: largest difference {text:.3g}')
    if differ:
        return 1
    figures = time_precisions(engines, height, width, args.batch, args.warmup, args.repeat)
    deviation = precision_deviation(engines, images) if images else None
    print_precisions(figures, deviation, missing, len(images))
    if args.json:
        args.json.write_text(json.dumps({
            'device': device, 'image_size': [height, width], 'batch': args.batch,
            'input_size': list(reference.config.input_size), 'reference': labels[0],
            'precision_ms': figures, 'deviation': deviation, 'images': len(images),
            'not_available': dict(missing)}, indent=2))
    return 0


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.queries <= MAX_QUERIES:
        print(f'depthclip-ros bench: --queries must be in 0..{MAX_QUERIES}, got {args.queries}')
        return 2
    if not 1 <= args.max_masks <= 64:
        print(f'depthclip-ros bench: --max-masks must be in 1..64, got {args.max_masks}')
        return 2
    if args.batch < 1:
        print(f'depthclip-ros bench: --batch must be >= 1, got {args.batch}')
        return 2
    if args.compare_precision:
        return run_compare_precision(args)
    if args.images or args.dataset:
        print('depthclip-ros bench: --images and --dataset go with --compare-precision')
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
    batching = None
    if args.batch > 1:
        batching = time_batching(engine, height, width, args.batch, args.warmup, args.repeat)
        print_batching(batching)
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
                                         'batching': batching,
                                         'objects_median_ms': objects}, indent=2))
    return 0

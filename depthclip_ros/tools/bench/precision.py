"""``bench --compare-precision fp32 bf16 ...``: a run of its own.

One engine per precision (the same weights, checked), fp32 also in its other trunk layout
(NCHW on the CPU, where fp32 runs channels-last), per-stage medians side by side from
interleaved rounds; a precision this device cannot run is reported as not available. With
``--images`` or ``--dataset``, the depth deviation of each against fp32: median, p99 and
max of |d - d_fp32| / d_fp32 over every pixel of the given images.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import functools
import glob
import json
import statistics
import sys

import numpy as np
import torch

from depthclip_ros.engine.depthclip import DepthCLIP
from depthclip_ros.engine.runtime import cpu_bf16_native, resolve_runtime
from depthclip_ros.engine.weights import WeightsError
from depthclip_ros.geometry import Intrinsics
from depthclip_ros.io.dataset import DatasetError, read_rgb
from depthclip_ros.io.outputs import write_text_whole
from depthclip_ros.timing import StageTimer
from depthclip_ros.tools.bench.batch import BATCH_STAGES, bench_frames
from depthclip_ros.tools.bench.common import (
    bench_camera,
    device_description,
    device_sync,
    frame_bins,
    timed,
)
from depthclip_ros.tools.bench.options import LAYOUTS
from depthclip_ros.tools.common import (
    announce,
    configs_from_args,
    describe_model,
    LOAD_TIME_HINT,
    ToolExit,
    warn_random_weights,
)
from depthclip_ros.tools.progress import Stages

DTYPE_NAMES = {torch.float32: 'fp32', torch.bfloat16: 'bf16', torch.float16: 'fp16'}


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
    ref_state = reference.clip.visual.state_dict()
    state = engine.clip.visual.state_dict()
    equal = ref_state.keys() == state.keys() and all(
        torch.equal(ref_state[k].to(state[k].dtype) if state[k].is_floating_point()
                    else ref_state[k], state[k]) for k in state)
    text = (reference.text_features - engine.text_features).abs().max().item()
    return equal, text


def build_variants(args: argparse.Namespace, plan: list[tuple[str, str, str]],
                   stages: Stages | None = None) -> dict[str, DepthCLIP]:
    """One loaded engine per planned variant, from the tool's options with the variant's
    precision and layout; exits with the reason when weights cannot be loaded."""
    model, head = configs_from_args(args)
    engines = {}
    for label, precision, layout in plan:
        if stages is not None:
            stages.start(f'loading the {label} engine')
            announce('depthclip-ros bench', f'{describe_model(model)}, {LOAD_TIME_HINT}')
        try:
            engine = DepthCLIP(replace(model, precision=precision,
                                       memory_format=LAYOUTS[layout]), head).load()
        except WeightsError as error:  # what the run needs could not be had
            raise ToolExit(f'depthclip-ros bench: {label}: {error}', 1) from None
        except ValueError as error:  # an option this engine refuses
            raise ToolExit(f'depthclip-ros bench: {label}: {error}', 2) from None
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
    camera = bench_camera(height, width)
    bins = frame_bins(engines[reference])
    timers = {label: StageTimer(device_sync(engine)) for label, engine in engines.items()}
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
            took[label] = timed(functools.partial(engine.infer, images, camera,
                                                   timer=timers[label], bins_m=bins),
                                 device_sync(engine))
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
            camera = bench_camera(height, width)
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
    bins = frame_bins(reference)
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
                     image_count: int, ratios: tuple[str, dict, str] | None = None) -> None:
    """The side-by-side table; ``ratios``: one more row of ratios after the speed-up,
    ``(row name, {label: ratio}, note)``."""
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
    if ratios is not None:
        name, values, note = ratios
        print(f'{name:<12} ' + ' '.join(f'{values[label]:{width - 1}.3f}x' for label in labels)
              + f'   ({note})')
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


def start_comparison(engines: dict[str, DepthCLIP]):
    """What a side-by-side comparison of loaded ``engines`` starts with (the first is the
    reference; the random-weights warning printed): ``(labels, reference, checks, differ,
    device)``, ``checks`` each engine's :func:`same_weights` against the reference and
    ``differ`` the labels whose trunk weights differ from it."""
    labels = list(engines)
    reference = engines[labels[0]]
    if reference.random_weights:
        warn_random_weights()
    checks = {label: same_weights(reference, engine) for label, engine in engines.items()}
    differ = [label for label, (equal, _) in checks.items() if not equal]
    return labels, reference, checks, differ, device_description(reference, dtype=False)


def images_or_report(args: argparse.Namespace) -> list | None:
    """:func:`deviation_images`, or ``None`` after printing why they cannot be read (the
    comparison then exits 2)."""
    try:
        return deviation_images(args)
    except ValueError as error:  # DatasetError, ImageFormatError
        print(f'depthclip-ros bench: {error}', file=sys.stderr)
        return None


def run_compare_precision(args: argparse.Namespace) -> int:
    height, width = args.image_size
    images = images_or_report(args)
    if images is None:
        return 2
    plan, missing = plan_variants(args.compare_precision, args)
    if not plan:
        for label, reason in missing:
            print(f'{label}: not available: {reason}')
        print('depthclip-ros bench: no precision of --compare-precision can run here',
              file=sys.stderr)
        return 2
    stages = Stages('bench', len(plan) + 1 + bool(images))
    engines = build_variants(args, plan, stages)
    labels, reference, checks, differ, device = start_comparison(engines)
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
    stages.start(f'timing {len(engines)} engines: {args.warmup} warm-up + {args.repeat} '
                 f'rounds each')
    figures = time_precisions(engines, height, width, args.batch, args.warmup, args.repeat)
    if images:
        stages.start(f'the depth deviation on {len(images)} images')
    deviation = precision_deviation(engines, images) if images else None
    stages.finish()
    print_precisions(figures, deviation, missing, len(images))
    if args.json:
        write_text_whole(args.json, json.dumps({
            'device': device, 'image_size': [height, width], 'batch': args.batch,
            'input_size': list(reference.config.input_size), 'reference': labels[0],
            'precision_ms': figures, 'deviation': deviation, 'images': len(images),
            'not_available': dict(missing)}, indent=2))
    return 0

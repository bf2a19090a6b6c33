"""``bench --batch N``: N distinct frames through :meth:`DepthCLIP.infer_frames` one by
one against one batched call (and against the whole batch as one trunk call), interleaved;
per-stage milliseconds per frame, frames/s and the throughput ratio."""

from __future__ import annotations

import functools
import statistics

import numpy as np

from depthclip_ros.engine.depthclip import DepthCLIP
from depthclip_ros.engine.frames import FrameIn
from depthclip_ros.geometry import Intrinsics
from depthclip_ros.timing import StageTimer
from depthclip_ros.tools.bench.common import device_sync, frame_bins, timed

BATCH_STAGES = ('preprocess', 'network', 'head', 'upsample')  # infer_frames' own stages
BATCH_MODES = ('sequential', 'batched', 'one trunk call')
COLUMNS = (10, 10, 15)  # widths of the table's columns, one per mode


def bench_frames(engine: DepthCLIP, height: int, width: int, count: int) -> list[FrameIn]:
    """``count`` distinct random ``height`` x ``width`` frames, each with intrinsics of its
    own (focal and principal point differ), the bins of :func:`frame_bins`."""
    rng = np.random.default_rng(0)
    bins = frame_bins(engine)
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
    sync = device_sync(engine)

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
            took[mode] = timed(functools.partial(steps[mode], timer), sync)
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
                                        for m, w in zip(modes, COLUMNS)))
    print(f'{"other":<12} ' + ' '.join(f'{m["other_ms_per_frame"]:{w}.2f}'
                                       for m, w in zip(modes, COLUMNS))
          + '   (outside the stages: checks, bins, Python)')
    print(f'{"total":<12} ' + ' '.join(f'{m["total_ms_per_frame"]:{w}.2f}'
                                       for m, w in zip(modes, COLUMNS)))
    print(f'{"frames/s":<12} ' + ' '.join(f'{m["fps"]:{w}.2f}'
                                          for m, w in zip(modes, COLUMNS)))
    chunk = figures['trunk_batch']
    print(f'batched/sequential throughput: {figures["ratio"]:.3f}x (from the medians; the '
          f'median of the rounds\' own ratios {figures["paired_ratio"]:.3f}x); the engine\'s '
          f'trunk takes {"the whole batch" if chunk is None else f"{chunk} frame(s)"} per '
          f'call on this device; the whole batch as one trunk call: '
          f'{figures["one_trunk_call_ratio"]:.3f}x')

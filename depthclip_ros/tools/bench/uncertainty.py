"""``bench``: what the depth uncertainty costs (docs/method.md §4).

The frame timed with and without ``uncertainty=True`` in the same run, interleaved (the
order alternating every round), medians, with the difference as a share of the frame; the
head computes the bin distribution's standard deviation (and its median, for diagnostics)
on every frame either way, so that part is timed on its own.
"""

from __future__ import annotations

import functools
import statistics

import torch

from depthclip_ros.engine.depthclip import DepthCLIP
from depthclip_ros.engine.frames import bin_moments
from depthclip_ros.timing import StageTimer
from depthclip_ros.tools.bench.common import (
    bench_camera,
    device_sync,
    frame_bins,
    random_images,
    timed,
)

UNCERTAINTY_STAGES = ('head', 'upsample')  # where uncertainty=True changes the work


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
    images = random_images(batch, height, width)
    camera = bench_camera(height, width)
    sync = device_sync(engine)
    bins = frame_bins(engine)
    timers = {False: StageTimer(sync), True: StageTimer(sync)}
    rounds = {name: [] for name in ('without', 'with', 'paired', 'cost', 'share', 'noise')}
    for i in range(warmup + repeat):
        if i == warmup:
            for timer in timers.values():
                timer.clear()
        took, stages = {}, {}
        for flag in (False, True) if i % 2 == 0 else (True, False):
            took[flag] = timed(functools.partial(engine.infer, images, camera,
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
    sync = device_sync(engine)

    def mean_only():
        return weights @ bins

    def with_sigma():
        depth, sigma = bin_moments(weights, bins)
        return depth, sigma.flatten(1).median(dim=1).values

    extra = []
    with torch.inference_mode():
        for i in range(repeat + 3):  # 3 rounds of warm-up
            took = {step: timed(step, sync) for step in
                    ((mean_only, with_sigma) if i % 2 == 0 else (with_sigma, mean_only))}
            if i >= 3:
                extra.append(took[with_sigma] - took[mean_only])
    return max(statistics.median(extra), 0.0)


def print_uncertainty(figures: dict, batch: int) -> None:
    """The cost of ``uncertainty=True`` per frame, and as a share of the frame without it."""
    without = figures['without_ms']
    before, after = figures['stages_without'], figures['stages_with']
    print(f'uncertainty (sigma, docs/method.md §4): the same frames with and without '
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

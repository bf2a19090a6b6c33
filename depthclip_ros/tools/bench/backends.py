"""``bench --compare-backends torch openvino openvino-int8``: a run of its own.

One engine per trunk backend (the same weights, checked): ``torch`` (eager PyTorch in the
precision and layout of the device's default), ``openvino`` (OpenVINO fp32) and
``openvino-int8`` (OpenVINO INT8, NNCF post-training quantization calibrated on
``--calibration``). Every engine times the same frames in interleaved rounds (the order
rotating), per-stage medians side by side with the speed-ups of the whole frame and of the
network stage against ``torch``; with ``--images`` or ``--dataset``, the depth deviation of
each against ``torch`` (median, p99 and max of |d - d_torch| / d_torch over every pixel).
With random weights the deviation is not an accuracy result: it says how far a backend's
numbers move, not how good they are.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import json
import sys

import torch

from depthclip_ros.engine.config import openvino_installed
from depthclip_ros.engine.depthclip import DepthCLIP
from depthclip_ros.engine.weights import WeightsError
from depthclip_ros.io.calibration import CalibrationUnreadable
from depthclip_ros.io.outputs import write_text_whole
from depthclip_ros.tools.bench.options import BACKEND_VARIANTS
from depthclip_ros.tools.bench.precision import (
    images_or_report,
    precision_deviation,
    print_precisions,
    start_comparison,
    time_precisions,
)
from depthclip_ros.tools.common import (
    announce,
    check_calibration,
    configs_from_args,
    describe_model,
    LOAD_TIME_HINT,
    show_conversions,
    ToolExit,
)
from depthclip_ros.tools.progress import Stages

PROG = 'depthclip-ros bench'


def plan_backends(asked: list[str], args: argparse.Namespace
                  ) -> tuple[list[tuple[str, object]], list[tuple[str, str]]]:
    """``([(label, ModelConfig)], [(label, why not available)])``: ``torch`` first, asked or
    not (the reference), then the others once each, in the order asked. Loads nothing."""
    model, _ = configs_from_args(args)
    wanted = ['torch'] + [label for label in dict.fromkeys(asked) if label != 'torch']
    plan, missing = [], []
    for label in wanted:
        backend, precision = BACKEND_VARIANTS[label]
        try:
            config = replace(model, backend=backend, precision=precision)
        except ValueError as error:  # int8 without --calibration, say
            missing.append((label, str(error)))
            continue
        check_calibration(config)  # a --calibration that is not there: refused (exit 2)
        if backend == 'openvino' and not openvino_installed():
            missing.append((label, 'the openvino package is not installed '
                                   '(pip install .[openvino])'))
            continue
        plan.append((label, config))
    return plan, missing


def build_backends(plan: list[tuple[str, object]], args: argparse.Namespace,
                   stages: Stages) -> dict[str, DepthCLIP]:
    _, head = configs_from_args(args)
    engines = {}
    show_conversions(PROG)
    for label, config in plan:
        stages.start(f'loading the {label} engine')
        announce(PROG, f'{describe_model(config)}, {LOAD_TIME_HINT}'
                       + (', converted with OpenVINO on first use'
                          if config.openvino_required else ''))
        try:
            engines[label] = DepthCLIP(config, head).load()
        except (CalibrationUnreadable, WeightsError, RuntimeError) as error:
            # what the run needs could not be had (damaged calibration frames, weights)
            raise ToolExit(f'depthclip-ros bench: {label}: {error}', 1) from None
        except ValueError as error:  # an option this engine refuses
            raise ToolExit(f'depthclip-ros bench: {label}: {error}', 2) from None
    return engines


def network_speedups(figures: dict) -> dict[str, float]:
    """Per engine, the reference's network-stage median over this engine's."""
    labels = list(figures)
    reference = figures[labels[0]]['stages_ms_per_frame']['network']
    return {label: reference / max(figures[label]['stages_ms_per_frame']['network'], 1e-9)
            for label in labels}


def run_compare_backends(args: argparse.Namespace) -> int:
    height, width = args.image_size
    images = images_or_report(args)
    if images is None:
        return 2
    try:
        plan, missing = plan_backends(args.compare_backends, args)
    except ValueError as error:
        print(f'depthclip-ros bench: {error}', file=sys.stderr)
        return 2
    stages = Stages('bench', len(plan) + 1 + bool(images))
    engines = build_backends(plan, args, stages)
    labels, reference, _, differ, device = start_comparison(engines)
    versions = f'torch {torch.__version__}'
    if any(engine.config.backend != 'torch' for engine in engines.values()):
        import openvino
        versions += f', openvino {openvino.__version__}'
    print(f'device: {device}; {versions}; {reference.config.model} '
          f'{reference.config.feature_mode} mode; input {height}x{width} -> network '
          f'{reference.config.input_size[0]}x{reference.config.input_size[1]}; batch '
          f'{args.batch}; backends interleaved (order rotating), median of {args.repeat} '
          f'rounds after {args.warmup} warm-up'
          + ('; random weights (cost is the same; deviations are not an accuracy result)'
             if reference.random_weights else ''))
    if differ:
        print('weights: DIFFERENT in ' + ', '.join(differ))
        return 1
    stages.start(f'timing {len(engines)} engines: {args.warmup} warm-up + {args.repeat} '
                 f'rounds each')
    figures = time_precisions(engines, height, width, args.batch, args.warmup, args.repeat)
    network = network_speedups(figures)
    if images:
        stages.start(f'the depth deviation on {len(images)} images')
    deviation = precision_deviation(engines, images) if images else None
    stages.finish()
    print_precisions(figures, deviation, missing, len(images),
                     ('network', network, f'{labels[0]} network median / its own'))
    if args.json:
        write_text_whole(args.json, json.dumps({
            'device': device, 'versions': versions, 'image_size': [height, width],
            'batch': args.batch, 'input_size': list(reference.config.input_size),
            'reference': labels[0], 'backend_ms': figures, 'network_speedup': network,
            'deviation': deviation, 'images': len(images),
            'random_weights': reference.random_weights,
            'not_available': dict(missing)}, indent=2))
    return 0

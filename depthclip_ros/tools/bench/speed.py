"""``depthclip-ros bench``: per-stage milliseconds of one frame on the chosen device.

Stages: preprocess (upload, resize, normalise), network (CLIP trunk), head (prompt
similarity, softmax, bins, metric scale), upsample (to the output size, and the download),
backproject (organised cloud). Median of ``--repeat`` runs after ``--warmup`` runs. Weights
do not change the cost, so random weights are used unless ``--pretrained`` says otherwise.

The cost of the depth uncertainty (docs/method.md §4): the frame timed with and without
``uncertainty=True`` in the same run, interleaved (the order alternating every round),
medians, with the difference as a share of the frame; the head computes the bin
distribution's standard deviation (and its median, for diagnostics) on every frame either
way, so that part is timed on its own. And the cost of one zero-shot scene classification
(scene-adaptive bins, docs/method.md §5) at the bench image size, per classification and per
frame at the node's default of one classification every ``scene_every_n_frames`` frames.

``--queries N`` adds the object step of the node (built-in proposals, referring with the
node protocol, 3-D location) for 1 and N queries on a synthetic scene of boxes, and prints
its stages, its fixed cost and the added cost per query.

``--batch N`` (N > 1) also compares one-by-one with batched inference: N distinct frames
(each with its own intrinsics) through :meth:`DepthCLIP.infer_frames` one at a time and as
one call, interleaved, per-stage milliseconds per frame, frames/s and the throughput ratio.

``--compare-backends torch openvino openvino-int8`` is a run of its own, like
``--compare-precision``: one engine per trunk backend, interleaved, with the network
stage's speed-up and, with ``--images`` or ``--dataset``, each one's depth deviation
against ``torch`` (tools/bench/backends.py).

``--compare-precision fp32 bf16 ...`` is a run of its own: one engine per precision (the
same weights, checked), fp32 also in its other trunk layout (NCHW on the CPU, where fp32
runs channels-last), per-stage medians side by side from interleaved rounds; a precision
this device cannot run is reported as not available. With ``--images`` or ``--dataset``,
the depth deviation of each against fp32: median, p99 and max of |d - d_fp32| / d_fp32 over
every pixel of the given images.
"""

# This module is the tool's entry (its options and run; the docstring is its --help). Each
# benchmark is a module beside it: stages (the per-stage table), batch (--batch N),
# uncertainty, scenes, objects (--queries N), precision (--compare-precision) and backends
# (--compare-backends); what they share (timing, the machine's description, the bench
# frames) is in common.

from __future__ import annotations

import argparse
import json
from pathlib import Path

from depthclip_ros.io.outputs import check_report_file, write_text_whole
from depthclip_ros.objects.proposals import MAX_MASKS
from depthclip_ros.objects.queries import MAX_QUERIES
from depthclip_ros.tools.bench.options import (
    BACKEND_VARIANTS,
    IMAGE_SIZE_HELP,
    image_size_problem,
    precision_variant,
)
from depthclip_ros.tools.common import add_model_arguments, announce, load_engine, ToolExit
from depthclip_ros.tools.progress import Stages


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--image-size', type=int, nargs=2, default=(480, 640),
                        metavar=('H', 'W'), help=IMAGE_SIZE_HELP)
    parser.add_argument('--batch', type=int, default=1,
                        help='frames per forward pass; above 1 also compares N frames one by '
                             'one against one batched call (infer_frames)')
    parser.add_argument('--warmup', type=int, default=3,
                        help='untimed rounds first, >= 0 (default 3)')
    parser.add_argument('--repeat', type=int, default=10,
                        help='timed rounds (the medians are over them), >= 1 (default 10)')
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
    parser.add_argument('--compare-backends', nargs='+', choices=tuple(BACKEND_VARIANTS),
                        metavar='BACKEND',
                        help='a run of its own: time these trunk backends side by side ('
                             f'{", ".join(BACKEND_VARIANTS)}; torch is always the '
                             'reference; openvino-int8 needs --calibration), one engine each, '
                             'the same weights')
    parser.add_argument('--images', nargs='+', metavar='GLOB',
                        help='with --compare-precision or --compare-backends: images for the '
                             'depth deviation against the reference (nominal intrinsics: the '
                             'deviation is relative)')
    parser.add_argument('--dataset', nargs='+', type=Path, metavar='DIR',
                        help='with --compare-precision or --compare-backends: dataset folders '
                             '(rgb/, intrinsics.json), or folders holding them, for the '
                             'deviation')
    parser.add_argument('--json', type=Path, help='also write the figures as JSON (its '
                        'folder must exist; an existing file is refused unless --overwrite; '
                        'both checked before anything runs)')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace an existing --json file')
    add_model_arguments(parser)
    parser.set_defaults(pretrained='none')


def options_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the options (``--json`` included: its folder, and an existing
    file without ``--overwrite``), found before anything is loaded; ``None`` when nothing
    is."""
    size = image_size_problem(args.image_size)
    if size:
        return size
    if not 0 <= args.queries <= MAX_QUERIES:
        return f'--queries must be in 0..{MAX_QUERIES}, got {args.queries}'
    if not 1 <= args.max_masks <= 64:
        return f'--max-masks must be in 1..64, got {args.max_masks}'
    if args.batch < 1:
        return f'--batch must be >= 1, got {args.batch}'
    if args.warmup < 0:
        return f'--warmup must be >= 0, got {args.warmup}'
    if args.repeat < 1:
        return f'--repeat must be >= 1, got {args.repeat}'
    if args.compare_precision and args.compare_backends:
        return '--compare-precision and --compare-backends are runs of their own: give one'
    if (args.images or args.dataset) and not (args.compare_precision or args.compare_backends):
        return '--images and --dataset go with --compare-precision or --compare-backends'
    if args.json is not None:
        try:  # before the model loads: never replace a file unasked, never fail at the end
            check_report_file(args.json, args.overwrite)
        except ValueError as error:
            return str(error)
    return None


def run(args: argparse.Namespace) -> int:
    problem = options_problem(args)
    if problem:  # said before torch is imported
        raise ToolExit(f'depthclip-ros bench: {problem}', 2)
    if args.compare_precision or args.compare_backends:  # the model's line comes later
        announce('depthclip-ros bench', 'starting torch (a few seconds), then one engine '
                 'per ' + ('precision' if args.compare_precision else 'backend'))
    # Imported here, not with the module: `depthclip-ros bench --help` needs no torch.
    import torch

    from depthclip_ros.tools.bench.batch import print_batching, time_batching
    from depthclip_ros.tools.bench.common import device_description
    from depthclip_ros.tools.bench.objects import (
        fp32_peak_gflops,
        print_flops,
        print_objects,
        referring_flops,
        time_objects,
    )
    from depthclip_ros.tools.bench.precision import run_compare_precision
    from depthclip_ros.tools.bench.scenes import print_scene, time_scene
    from depthclip_ros.tools.bench.stages import print_stages, time_engine
    from depthclip_ros.tools.bench.uncertainty import print_uncertainty, time_uncertainty

    if args.compare_precision:
        return run_compare_precision(args)
    if args.compare_backends:
        from depthclip_ros.tools.bench.backends import run_compare_backends
        return run_compare_backends(args)
    engine = load_engine(args)
    height, width = args.image_size
    stages = Stages('bench', 3 + (args.batch > 1) + bool(args.queries))
    stages.start(f'the stages of a frame, {args.warmup} warm-up + {args.repeat} rounds each')
    medians = time_engine(engine, height, width, args.batch, args.warmup, args.repeat)
    device = device_description(engine)
    print(f'device: {device}; torch {torch.__version__}; {engine.config.model} '
          f'{engine.config.feature_mode} mode; input {height}x{width} -> network '
          f'{engine.config.input_size[0]}x{engine.config.input_size[1]}; batch {args.batch}; '
          f'flip={engine.head.flip_average}; median of {args.repeat} after {args.warmup} '
          f'warm-up' + ('; random weights (cost is the same)' if engine.random_weights else ''))
    print_stages(medians, args.batch)
    batching = None
    if args.batch > 1:
        stages.start(f'{args.batch} frames one by one against one batch')
        batching = time_batching(engine, height, width, args.batch, args.warmup, args.repeat)
        print_batching(batching)
    stages.start('the frame with and without uncertainty')
    uncertainty = time_uncertainty(engine, height, width, args.batch, args.warmup,
                                   args.repeat)
    print_uncertainty(uncertainty, args.batch)
    stages.start('one scene classification')
    scene = time_scene(engine, height, width, args.warmup, args.repeat)
    print_scene(scene, height, width)
    objects, referring = {}, None
    if args.queries:
        stages.start(f'the object step, {args.queries} queries')
        objects = time_objects(engine, height, width, args.queries, args.max_masks,
                               repeat=max(1, args.repeat // 2))
        print_objects(objects)
        if engine.device.type == 'cpu':  # the object step against the FLOPs it needs
            flops = referring_flops(engine, height, width, args.max_masks)
            peak = fp32_peak_gflops()
            print_flops(objects, flops, peak)
            referring = {**flops, 'peak_GFLOP/s': peak}
    stages.finish()
    if args.json:
        write_text_whole(args.json, json.dumps({
            'device': device, 'batch': args.batch, 'image_size': [height, width],
            'input_size': list(engine.config.input_size), 'median_ms': medians,
            'uncertainty_ms': uncertainty, 'scene_ms': scene, 'batching': batching,
            'objects_median_ms': objects, 'referring_flops': referring}, indent=2))
    return 0


"""The measurements of ``scripts/gpu_check.sh``, run as a child process of
``scripts/gpu_check.py`` (which caps its time): the DepthCLIP image trunk with random
weights in the engine's speed paths at each batch size, ``torch.compile`` of it, and the
engine's multi-camera batch (``infer_frames`` of N camera frames).

Every figure is the median of ``--repeat`` timed runs after ``--warmup`` untimed ones; on
CUDA each run is timed with CUDA events and synchronised (the latency one call sees), on
the CPU with ``time.perf_counter``. The results are written to ``--json`` after every
measurement, so that what finished survives a time cap. Random weights: the time of a
pass does not depend on them; nothing here is an accuracy result.

    python scripts/gpu_measure.py --json PART.json --what trunk,multi_camera
        [--device cuda] [--input-size 416 544] [--batches 1 8] [--cameras 8]
        [--warmup 10] [--repeat 50] [--compile-mode reduce-overhead] [--overwrite]

An existing ``--json`` file is replaced only with ``--overwrite`` (exit status 2 otherwise,
before anything runs); ``gpu_check.py`` gives it new files of its own.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import statistics
import sys
import time
import traceback

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WHAT = ('trunk', 'compile', 'multi_camera')
CAMERA_SIZE = (480, 640)  # the camera images of the multi-camera batch (height, width)


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--json', type=Path, required=True,
                        help='where the results go (an existing file is refused unless '
                             '--overwrite, before anything runs)')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace an existing --json file')
    parser.add_argument('--what', default='trunk,multi_camera',
                        help=f'comma-separated, of {", ".join(WHAT)}')
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--input-size', type=int, nargs=2, default=(416, 544))
    parser.add_argument('--batches', type=int, nargs='+', default=(1, 8))
    parser.add_argument('--cameras', type=int, default=8)
    parser.add_argument('--warmup', type=int, default=10)
    parser.add_argument('--repeat', type=int, default=50)
    parser.add_argument('--compile-mode', default='reduce-overhead')
    return parser.parse_args(argv)


def summary(times_ms: list[float]) -> dict:
    ordered = sorted(times_ms)
    return {'median_ms': statistics.median(ordered), 'min_ms': ordered[0],
            'p10_ms': ordered[int(0.1 * (len(ordered) - 1))],
            'p90_ms': ordered[int(0.9 * (len(ordered) - 1))], 'runs': len(ordered)}


def timed(fn, device, warmup: int, repeat: int) -> dict:
    """Median and spread of ``repeat`` calls of ``fn`` after ``warmup`` calls."""
    import torch
    for _ in range(warmup):
        fn()
    times = []
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        for _ in range(repeat):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        timer = 'CUDA events'
    else:
        for _ in range(repeat):
            started = time.perf_counter()
            fn()
            times.append((time.perf_counter() - started) * 1e3)
        timer = 'perf_counter'
    return {**summary(times), 'timer': timer}


class Results:
    """The document this child writes, rewritten whole after every measurement."""

    def __init__(self, path: Path, args: argparse.Namespace):
        self.path = path
        self.document = {'settings': {'device': args.device,
                                      'input_size': list(args.input_size),
                                      'batches': list(args.batches),
                                      'cameras': args.cameras, 'warmup': args.warmup,
                                      'repeat': args.repeat,
                                      'compile_mode': args.compile_mode},
                         'trunk': [], 'multi_camera': [], 'errors': []}

    def add(self, section: str, row: dict) -> None:
        self.document[section].append(row)
        self.save()

    def save(self) -> None:
        temporary = self.path.with_name(f'.{self.path.name}.{os.getpid()}.tmp')
        temporary.write_text(json.dumps(self.document, indent=2) + '\n', encoding='utf-8')
        os.replace(temporary, self.path)


def precision_for(device) -> str:
    return 'fp16' if device.type == 'cuda' else 'fp32'  # fp16 is CUDA only


def engine_for(args, device, **config):
    from depthclip_ros.engine.config import ModelConfig
    from depthclip_ros.engine.depthclip import DepthCLIP
    return DepthCLIP(ModelConfig(pretrained='none', device=str(device),
                                 precision=precision_for(device),
                                 input_size=tuple(args.input_size), **config)).load()


# The trunk's speed paths: (name, ModelConfig fields); on the CPU the CUDA-graph rows are
# reported as not available.
TRUNK_VARIANTS = (
    ('eager NCHW', {'memory_format': 'contiguous'}),
    ('eager channels-last', {'memory_format': 'channels_last'}),
    ('CUDA graphs NCHW', {'memory_format': 'contiguous', 'cuda_graphs': True}),
    ('CUDA graphs channels-last', {'memory_format': 'channels_last', 'cuda_graphs': True}),
)


def measure_trunk(args, device, results: Results) -> None:
    import torch
    height, width = args.input_size
    for name, config in TRUNK_VARIANTS:
        label = f'{precision_for(device)} {name}'
        if config.get('cuda_graphs') and device.type != 'cuda':
            for batch in args.batches:
                results.add('trunk', {'variant': label, 'batch': batch,
                                      'status': 'not available on the CPU'})
            continue
        engine = engine_for(args, device, **config)
        try:
            for batch in args.batches:
                x = torch.randn(batch, 3, height, width, device=device).to(
                    dtype=engine.dtype, memory_format=engine.memory_format)

                def run(x=x, engine=engine):
                    with torch.inference_mode():
                        engine.image_tokens(x)

                row = {'variant': label, 'batch': batch, 'status': 'ok',
                       **timed(run, device, args.warmup, args.repeat)}
                graphs = engine._graphs
                if graphs is not None:  # proof that the graphs ran, not the eager path
                    row.update(graph_replays=graphs.replays, graph_captures=graphs.captures,
                               graphs_disabled=graphs.disabled_reason)
                row['per_frame_ms'] = row['median_ms'] / batch
                results.add('trunk', row)
        finally:
            engine.release()


def measure_compile(args, device, results: Results) -> None:
    import torch

    from depthclip_ros.engine.export import Trunk
    height, width = args.input_size
    engine = engine_for(args, device, memory_format='contiguous')
    compiled = torch.compile(Trunk(engine.clip.visual), mode=args.compile_mode,
                             dynamic=False)
    label = f'{precision_for(device)} torch.compile ({args.compile_mode})'
    for batch in args.batches:
        x = torch.randn(batch, 3, height, width, device=device, dtype=engine.dtype)

        def run(x=x):
            with torch.inference_mode():
                compiled(x)

        started = time.perf_counter()
        run()  # the compilation for this shape
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        compile_s = time.perf_counter() - started
        row = {'variant': label, 'batch': batch, 'status': 'ok', 'compile_s': compile_s,
               **timed(run, device, args.warmup, args.repeat)}
        row['per_frame_ms'] = row['median_ms'] / batch
        results.add('trunk', row)


def camera_frames(count: int):
    """``count`` distinct camera frames (their own pictures and intrinsics)."""
    import numpy as np

    from depthclip_ros.engine.frames import FrameIn
    from depthclip_ros.geometry import Intrinsics
    height, width = CAMERA_SIZE
    rng = np.random.default_rng(0)
    frames = []
    for i in range(count):
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        focal = 500.0 + 10 * i
        frames.append(FrameIn(rgb, Intrinsics(fx=focal, fy=focal, cx=width / 2,
                                              cy=height / 2, width=width, height=height)))
    return frames


def measure_multi_camera(args, device, results: Results) -> None:
    """``infer_frames`` of ``--cameras`` frames as one batch against one call per frame,
    with the engine's default layout, with and without CUDA graphs."""
    frames = camera_frames(args.cameras)
    variants = [('default', {})]
    if device.type == 'cuda':
        variants.append(('CUDA graphs', {'cuda_graphs': True}))
    for name, config in variants:
        engine = engine_for(args, device, **config)
        try:
            batched = timed(lambda engine=engine: engine.infer_frames(frames), device,
                            max(1, args.warmup // 2), max(3, args.repeat // 2))
            single = timed(lambda engine=engine: [engine.infer_frames([f]) for f in frames],
                           device, max(1, args.warmup // 2), max(3, args.repeat // 2))
            results.add('multi_camera', {
                'variant': f'{precision_for(device)} {name}', 'cameras': args.cameras,
                'camera_size': list(CAMERA_SIZE), 'status': 'ok', 'batched': batched,
                'one_by_one': single,
                'batched_per_frame_ms': batched['median_ms'] / args.cameras,
                'speed_up': single['median_ms'] / batched['median_ms']})
        finally:
            engine.release()


def main(argv=None) -> int:
    args = parse(argv)
    if os.path.lexists(args.json) and not args.overwrite:  # never replace a file unasked
        print(f'gpu_measure: {args.json} exists already (pass --overwrite to replace it, or '
              f'choose another --json)', file=sys.stderr)
        return 2
    if not args.json.parent.is_dir() or args.json.is_dir():
        print(f'gpu_measure: --json {args.json}: its folder does not exist or it is a folder',
              file=sys.stderr)
        return 2
    import torch
    device = torch.device(args.device)
    results = Results(args.json, args)
    results.save()
    steps = {'trunk': measure_trunk, 'compile': measure_compile,
             'multi_camera': measure_multi_camera}
    failed = False
    for what in args.what.split(','):
        print(f'gpu_measure: {what} on {device}', file=sys.stderr, flush=True)
        try:
            steps[what](args, device, results)
        except Exception as error:  # one measurement's failure is reported, not fatal
            failed = True
            traceback.print_exc()
            results.document['errors'].append(f'{what}: {type(error).__name__}: {error}')
            results.save()
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())

"""``bench --queries N``: the node's object step (built-in proposals, referring with the
node protocol, 3-D location) for 1 and N queries on a synthetic scene of boxes: its
stages, its fixed cost and the cost added per query."""

from __future__ import annotations

import statistics
import time

import torch

from depthclip_ros.engine.depthclip import DepthCLIP
from depthclip_ros.engine.export import ImageEncoder
from depthclip_ros.objects.finder import find_objects
from depthclip_ros.objects.proposals import masks_from_labels, MAX_MASKS, propose
from depthclip_ros.objects.referring import ReferringCLIP
from depthclip_ros.timing import StageTimer
from depthclip_ros.tools.bench.common import bench_camera, boxes_scene, device_sync

OBJECT_STAGES = ('proposals', 'referring', 'locate')


BENCH_QUERIES = ('the red box on the left', 'a blue box', 'the green box next to the wall',
                 'the small yellow box', 'the wall', 'the floor', 'a cup on the table',
                 'the door', 'the chair', 'a person', 'the lamp', 'the window', 'a book',
                 'the bottle', 'the plant', 'the screen')


def time_objects(engine: DepthCLIP, height: int, width: int, queries: int,
                 max_masks: int = MAX_MASKS, warmup: int = 1, repeat: int = 5
                 ) -> dict[int, dict[str, float]]:
    """Median milliseconds of the object step (``OBJECT_STAGES`` and ``total``) for 1 and
    ``queries`` queries, node protocol, after the depth pass of the same frame."""
    rgb = boxes_scene(height, width)
    camera = bench_camera(height, width)
    prediction = engine.infer(rgb, camera)
    depth, tokens = prediction.depth, prediction.tokens
    referring = ReferringCLIP(engine)
    sync = device_sync(engine)
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


def fp32_peak_gflops(repeat: int = 3, size: int = 4096) -> float:
    """This CPU's fp32 matrix-product rate now (GFLOP/s): the median of ``repeat``
    ``size``-square products after one warm-up, with torch's threads."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return 2 * size ** 3 / statistics.median(times) / 1e9


def referring_flops(engine: DepthCLIP, height: int, width: int, max_masks: int
                    ) -> dict[str, float]:
    """The FLOPs of the referring stage's networks on the bench scene (node protocol):
    ``masks`` candidates, each one's 224 x 224 crop through CLIP's image encoder, and the
    global features of all of them; counted on torch's modules whatever backend runs
    them (``GFLOP``)."""
    from torch.utils.flop_counter import FlopCounterMode
    rgb = boxes_scene(height, width)
    camera = bench_camera(height, width)
    prediction = engine.infer(rgb, camera)
    _, masks = masks_from_labels(propose(rgb, prediction.depth, max_masks=max_masks),
                                 max_masks=max_masks)
    crop = torch.zeros((1, 3, 224, 224), dtype=engine.dtype, device=engine.device)
    with FlopCounterMode(display=False) as encoder, torch.inference_mode():
        ImageEncoder(engine.clip.visual)(crop.contiguous(memory_format=engine.memory_format))
    with FlopCounterMode(display=False) as pooled, torch.inference_mode():
        ReferringCLIP(engine).global_features(prediction.tokens[:1], masks)
    return {'masks': len(masks),
            'GFLOP': (encoder.get_total_flops() * len(masks) + pooled.get_total_flops()) / 1e9}


def print_flops(figures: dict[int, dict[str, float]], flops: dict[str, float],
                peak: float) -> None:
    """The referring stage against what its FLOPs need at the measured fp32 peak."""
    referring = figures[min(figures)]['referring']
    need = flops['GFLOP'] / peak * 1e3
    print(f'referring with {flops["masks"]} masks: {referring:.1f} ms; the FLOPs of its '
          f'networks (the crops through the image encoder, the global features), '
          f'{flops["GFLOP"]:.1f} GFLOP, need {need:.1f} ms at the fp32 peak of this CPU '
          f'measured now ({peak:.0f} GFLOP/s, sgemm 4096^2): {referring / need:.2f}x')

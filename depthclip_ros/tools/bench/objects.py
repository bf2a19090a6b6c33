"""``bench --queries N``: the node's object step (built-in proposals, referring with the
node protocol, 3-D location) for 1 and N queries on a synthetic scene of boxes: its
stages, its fixed cost and the cost added per query."""

from __future__ import annotations

from depthclip_ros.engine.depthclip import DepthCLIP
from depthclip_ros.objects.finder import find_objects
from depthclip_ros.objects.proposals import MAX_MASKS
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

"""``bench``: what one zero-shot scene classification costs (scene-adaptive bins,
docs/method.md §5) at the bench image size, per classification and per frame at the node's
default of one classification every ``scene_every_n_frames`` frames."""

from __future__ import annotations

import functools
import statistics

from depthclip_ros.engine.depthclip import DepthCLIP
from depthclip_ros.engine.scenes import SceneClassifier
from depthclip_ros.ros.parameters import PARAMETERS
from depthclip_ros.tools.bench.common import (
    bench_camera,
    boxes_scene,
    device_sync,
    frame_bins,
    timed,
)

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
    camera = bench_camera(height, width)
    classifier = SceneClassifier(engine)  # its own: the first call below encodes the text
    classifier.text_features(names, template)  # once, then remembered
    sync = device_sync(engine)
    steps = {'classify': lambda: classifier.classify(rgb, names, template),
             'frame': functools.partial(engine.infer, rgb, camera,
                                        bins_m=frame_bins(engine))}
    rounds = {'classify': [], 'frame': [], 'share': []}
    for i in range(warmup + repeat):
        took = {name: timed(steps[name], sync)
                for name in (('classify', 'frame') if i % 2 == 0 else ('frame', 'classify'))}
        if i >= warmup:
            rounds['classify'].append(took['classify'])
            rounds['frame'].append(took['frame'])
            rounds['share'].append(took['classify'] / took['frame'])
    return {'classify_ms': statistics.median(rounds['classify']),
            'frame_ms': statistics.median(rounds['frame']),
            'share': statistics.median(rounds['share']), 'scenes': len(names)}


def print_scene(figures: dict, height: int, width: int) -> None:
    cost, share = figures['classify_ms'], figures['share']
    every = SCENE_EVERY_N_FRAMES
    print(f'scene classification ({figures["scenes"]} scenes, {height}x{width} image, '
          f'open_clip preprocessing + image encoder), interleaved with depth frames of '
          f'{figures["frame_ms"]:.2f} ms: {cost:.2f} ms = {100 * share:.1f}% of a frame; '
          f'once every {every} frames (the node default) {cost / every:.2f} ms/frame = '
          f'{100 * share / every:.2f}%')

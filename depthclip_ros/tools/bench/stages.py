"""``bench``'s first table: per-stage milliseconds of one frame (or batch) on the chosen
device, from the upload to the organised cloud."""

from __future__ import annotations

from depthclip_ros.engine.depthclip import DepthCLIP
from depthclip_ros.geometry import backproject
from depthclip_ros.timing import StageTimer
from depthclip_ros.tools.bench.common import bench_camera, device_sync, random_images

ENGINE_STAGES = ('preprocess', 'network', 'head', 'upsample', 'backproject')


def time_engine(engine: DepthCLIP, height: int, width: int, batch: int = 1, warmup: int = 3,
                repeat: int = 10) -> dict[str, float]:
    """Median milliseconds per stage (``ENGINE_STAGES`` and ``total``) of ``repeat`` runs
    after ``warmup``, on random ``batch`` x ``height`` x ``width`` frames."""
    images = random_images(batch, height, width)
    camera = bench_camera(height, width)
    timer = StageTimer(device_sync(engine))
    for i in range(warmup + repeat):
        if i == warmup:
            timer.clear()
        with timer.stage('total'):
            depth = engine.predict(images, camera, timer=timer)
            with timer.stage('backproject'):
                for frame in depth:
                    backproject(frame, camera)
    return timer.medians()


def print_stages(medians: dict[str, float], batch: int) -> None:
    """The stage table: ms per batch and per frame, share of the total, frames/s."""
    total = medians['total']
    print(f'{"stage":<12} {"ms/batch":>9} {"ms/frame":>9} {"share":>6}')
    # with scene-adaptive bins the engine classifies every frame's scene first ('scene')
    others = [name for name in medians if name not in (*ENGINE_STAGES, 'total')]
    for name in (*others, *ENGINE_STAGES, 'total'):
        value = medians[name]
        print(f'{name:<12} {value:9.2f} {value / batch:9.2f} {100 * value / total:5.1f}%')
    outside = total - medians['network']
    print(f'everything but the network: {outside:.2f} ms ({100 * outside / total:.1f}% of the '
          f'frame); {1e3 * batch / total:.1f} frames/s')

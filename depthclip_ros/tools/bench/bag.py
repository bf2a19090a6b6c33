"""``depthclip-ros bench-bag``: frames per second of ``bag`` against the bare engine.

Writes a recording of ``--frames`` camera frames (Image + CameraInfo, rgb8: the demo's
generated corridor) or uses ``--input``, then in one run times
``engine.predict`` alone on the same frames (before and after) and the whole ``bag``
command's work (read, deserialise, decode, inference, messages, cloud, serialise,
write). The overhead of everything around inference is their ratio.
"""

from __future__ import annotations

import argparse
from pathlib import Path
import statistics
import tempfile
import time

from depthclip_ros.tools.bench.options import IMAGE_SIZE_HELP, image_size_problem, range_problem
from depthclip_ros.tools.common import add_model_arguments, announce, load_engine, ToolExit
from depthclip_ros.tools.demo import CORRIDOR_IMAGE_TOPIC, CORRIDOR_INFO_TOPIC

IMAGE_TOPIC, INFO_TOPIC = CORRIDOR_IMAGE_TOPIC, CORRIDOR_INFO_TOPIC
MAX_FRAMES = 1000  # the recording written in the temporary folder (480x640: 0.9 GB)
INFERENCE_STAGES = ('preprocess', 'network', 'head', 'upsample')  # engine.predict


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--frames', type=int, default=20,
                        help=f'frames in the recording written, 1..{MAX_FRAMES} (default 20)')
    parser.add_argument('--image-size', type=int, nargs=2, default=(480, 640),
                        metavar=('H', 'W'), help=IMAGE_SIZE_HELP)
    parser.add_argument('--input', type=Path, help='time this bag instead (needs the '
                        f'topics {IMAGE_TOPIC} and {INFO_TOPIC})')
    add_model_arguments(parser)
    parser.set_defaults(pretrained='none')


def time_bare(engine, images, camera) -> list[float]:
    out = []
    for rgb in images:
        start = time.perf_counter()
        engine.predict(rgb, camera)
        out.append((time.perf_counter() - start) * 1e3)
    return out


def run(args: argparse.Namespace) -> int:
    problem = range_problem('frames', args.frames, 1, MAX_FRAMES) or \
        image_size_problem(args.image_size)
    if problem is None and args.input is not None and not args.input.exists():
        problem = f'--input {args.input}: no such file or folder'
    if problem:  # before anything is loaded
        raise ToolExit(f'depthclip-ros bench-bag: {problem}', 2)
    announce('depthclip-ros bench-bag', 'starting: torch, rosbags and ROS 2 load first (a '
             'few seconds), then the model')
    # Imported here, not with the module: `depthclip-ros bench-bag --help` needs none of them.
    from sensor_msgs.msg import CameraInfo, Image

    from depthclip_ros.bags.process import process_bag, read_topic
    from depthclip_ros.ros.messages import intrinsics_from_camera_info, rgb_from_image
    from depthclip_ros.ros.pipeline import DepthPipeline
    from depthclip_ros.tools.bench.common import device_description
    from depthclip_ros.tools.demo import write_corridor_bag

    engine = load_engine(args)
    height, width = args.image_size
    with tempfile.TemporaryDirectory() as tmp:
        source = args.input or write_corridor_bag(Path(tmp) / 'in', args.frames, height,
                                                   width)
        images = [rgb_from_image(m) for _, m in read_topic(source, IMAGE_TOPIC, Image)]
        info = read_topic(source, INFO_TOPIC, CameraInfo)[0][1]
        camera = intrinsics_from_camera_info(info, *images[0].shape[:2])
        for rgb in images[:2]:  # warm-up
            engine.predict(rgb, camera)
        bare = time_bare(engine, images, camera)
        report = process_bag(source, Path(tmp) / 'out', DepthPipeline(engine),
                             image_topic=IMAGE_TOPIC, info_topic=INFO_TOPIC)
        bare += time_bare(engine, images, camera)
    frames = report.frames_written
    per_frame = report.seconds * 1e3 / frames
    bare_mean = statistics.fmean(bare)
    print(f'device: {device_description(engine)}; {engine.config.model} '
          f'{engine.config.feature_mode} mode; {frames} frames of '
          f'{images[0].shape[1]}x{images[0].shape[0]} rgb8 -> network '
          f'{engine.config.input_size[0]}x{engine.config.input_size[1]}; outputs depth, '
          f'camera_info, points (full resolution)'
          + ('; random weights (cost is the same)' if engine.random_weights else ''))
    print(f'bare engine.predict: mean {bare_mean:.1f} ms/frame (median '
          f'{statistics.median(bare):.1f}, {len(bare)} runs before and after)')
    print(f'bag:                 {per_frame:.1f} ms/frame, {1e3 / per_frame:.2f} frames/s '
          f'(whole run incl. opening and closing, {report.seconds:.2f} s)')
    totals = {name: sum(values) / frames for name, values in report.timer.samples.items()}
    print('bag stages (ms/frame): ' + ', '.join(f'{k} {v:.2f}' for k, v in totals.items())
          + f'; writer thread {report.write_thread_ms / frames:.2f} (overlaps the above)')
    outside = sum(v for k, v in totals.items() if k not in INFERENCE_STAGES)
    print(f'bag stages outside inference: {outside:.1f} ms/frame '
          f'({100 * outside / bare_mean:.1f}% of the bare frame)')
    print(f'overhead of the bag around inference, wall clock: '
          f'{100 * (per_frame / bare_mean - 1):+.1f}%')
    return 0

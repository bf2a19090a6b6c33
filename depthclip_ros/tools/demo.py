"""``depthclip-ros demo``: the main job without a camera.

Runs the node's pipeline on the given bags, images, folders or videos, or, with no input,
on a scene this project renders itself: a textured corridor with exact metric depth, seen
by a camera with a 60 degree horizontal field of view, as one frame (depth .npy, 16-bit
PNG, preview, PLY, metrics against the exact depth) and as a short recording of the
camera walking down it (a rosbag2 MCAP, processed like ``depthclip-ros bag``). Says
where the results are and how to look at them.

Weights: as ``--pretrained`` says (default: OpenAI's RN50, downloaded by open_clip on first
use). If they cannot be had, the demo stops with instructions, or with
``--fallback-random`` carries on with random weights and labels every output as such.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
import sys

import numpy as np
from rclpy.serialization import serialize_message
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import get_typestore, Stores
from std_msgs.msg import Header

from depthclip_ros.bags.process import METADATA_VERSION, process_bag
from depthclip_ros.bags.safety import BagError, is_bag, remove_bag_folder
from depthclip_ros.engine.config import RANDOM_WEIGHTS_BANNER
from depthclip_ros.engine.depthclip import DepthCLIP
from depthclip_ros.engine.metrics import depth_metrics, format_table
from depthclip_ros.engine.weights import WeightsError
from depthclip_ros.geometry import Intrinsics, intrinsics_from_hfov, pixel_rays
from depthclip_ros.io.dataset import expand_inputs, iter_images
from depthclip_ros.ros.messages import camera_info_for, rgb_image
from depthclip_ros.ros.pipeline import DepthPipeline
from depthclip_ros.tools.bag import print_summary, ProblemLog, Progress
from depthclip_ros.tools.common import add_model_arguments, configs_from_args, warn_random_weights
from depthclip_ros.tools.infer import write_outputs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--input', nargs='+', type=Path,
                        help='images, folders or videos (default: a generated scene)')
    parser.add_argument('--intrinsics', type=float, nargs=4, metavar=('FX', 'FY', 'CX', 'CY'),
                        help='intrinsics of --input (default: 60 degree horizontal FOV)')
    parser.add_argument('--output', '-o', type=Path, default=Path('depthclip_demo'),
                        help='output folder (default ./depthclip_demo)')
    parser.add_argument('--frames', type=int, default=10,
                        help='frames of the generated recording (default 10)')
    parser.add_argument('--fallback-random', action='store_true',
                        help='if the weights cannot be loaded, go on with random weights '
                             '(every output is labelled)')
    add_model_arguments(parser)


CORRIDOR_IMAGE_TOPIC = '/camera/color/image_raw'
CORRIDOR_INFO_TOPIC = '/camera/color/camera_info'


def render_corridor(height: int = 480, width: int = 640, hfov_deg: float = 60.0,
                    forward_m: float = 0.0) -> tuple[np.ndarray, np.ndarray, Intrinsics]:
    """A textured corridor seen from inside: ``(rgb (H, W, 3) uint8, depth (H, W) m, K)``.

    Ray-cast against floor (y = 1.2 m), ceiling (y = -1.3 m), walls (x = +-1.6 m) and an
    end wall (z = 9 m), in the optical frame of a camera ``forward_m`` down the corridor
    (the texture stays on the walls). The depth is exact z-depth.
    """
    camera = intrinsics_from_hfov(height, width, hfov_deg)
    x_over_z, y_over_z = pixel_rays(camera)
    x_over_z = np.broadcast_to(x_over_z, (height, width))
    y_over_z = np.broadcast_to(y_over_z, (height, width))
    with np.errstate(divide='ignore'):
        candidates = {
            'floor': np.where(y_over_z > 0, 1.2 / y_over_z, np.inf),
            'ceiling': np.where(y_over_z < 0, -1.3 / y_over_z, np.inf),
            'right': np.where(x_over_z > 0, 1.6 / x_over_z, np.inf),
            'left': np.where(x_over_z < 0, -1.6 / x_over_z, np.inf),
            'end': np.full((height, width), 9.0 - forward_m),
        }
    names = list(candidates)
    stack = np.stack([candidates[n] for n in names])
    which = stack.argmin(axis=0)
    depth = stack.min(axis=0).astype(np.float32)
    x, y, z = x_over_z * depth, y_over_z * depth, depth + forward_m  # z in the corridor
    base = {'floor': (150, 110, 70), 'ceiling': (230, 230, 225), 'right': (120, 150, 190),
            'left': (190, 170, 120), 'end': (90, 140, 90)}
    # A 0.5 m checker on each surface, in the two coordinates that span it.
    span = {'floor': (x, z), 'ceiling': (x, z), 'right': (y, z), 'left': (y, z),
            'end': (x, y)}
    rgb = np.zeros((height, width, 3), dtype=np.float32)
    for index, name in enumerate(names):
        a, b = span[name]
        checker = ((np.floor(a / 0.5) + np.floor(b / 0.5)) % 2)[..., None]
        colour = np.array(base[name], dtype=np.float32) * (0.75 + 0.25 * checker)
        rgb = np.where((which == index)[..., None], colour, rgb)
    shade = np.clip(1.3 - depth / 12.0, 0.4, 1.0)[..., None]  # darker far away
    return (rgb * shade).astype(np.uint8), depth, camera


def load_or_fallback(args: argparse.Namespace) -> DepthCLIP:
    """The engine of ``args``; when its weights cannot be had, the problem and how to
    supply weights, then exit 1, or with ``--fallback-random`` go on with random weights."""
    model, head = configs_from_args(args)
    try:
        return DepthCLIP(model, head).load()
    except WeightsError as error:
        print(f'depthclip-ros demo: {error}', file=sys.stderr)
        if not args.fallback_random:
            sys.exit(1)
        print('--fallback-random: going on with random weights (--pretrained none).',
              file=sys.stderr)
        return DepthCLIP(replace(model, pretrained='none'), head).load()


def write_corridor_bag(path: Path, frames: int = 10, height: int = 480, width: int = 640,
                       step_m: float = 0.25) -> Path:
    """A rosbag2 (MCAP) of the corridor seen from a camera walking ``step_m`` per frame at
    10 Hz: ``/camera/color/image_raw`` (rgb8) and ``/camera/color/camera_info``."""
    if path.exists():
        remove_bag_folder(path)
    store = get_typestore(Stores.ROS2_JAZZY)
    with Writer(path, version=METADATA_VERSION, storage_plugin=StoragePlugin.MCAP) as writer:
        image_conn = writer.add_connection(CORRIDOR_IMAGE_TOPIC, 'sensor_msgs/msg/Image',
                                           typestore=store)
        info_conn = writer.add_connection(CORRIDOR_INFO_TOPIC, 'sensor_msgs/msg/CameraInfo',
                                          typestore=store)
        for i in range(frames):
            rgb, _, camera = render_corridor(height, width, forward_m=i * step_m)
            stamp = i * 100_000_000
            header = Header(frame_id='camera_color_optical_frame')
            header.stamp.sec, header.stamp.nanosec = divmod(stamp, 1_000_000_000)
            writer.write(info_conn, stamp, serialize_message(camera_info_for(camera, header)))
            writer.write(image_conn, stamp, serialize_message(rgb_image(rgb, header)))
    return path


def run_bag(engine: DepthCLIP, source: Path, destination: Path) -> None:
    progress = Progress()
    try:
        report = process_bag(source, destination, DepthPipeline(engine), colormap=True,
                             overwrite=True, on_frame=progress, on_problem=ProblemLog())
    except BagError as error:
        sys.exit(f'depthclip-ros demo: {error} (or run: depthclip-ros bag {source} '
                 f'{destination} --image-topic T --camera-info-topic T)')
    finally:
        progress.close()
    print_summary(report, destination, random_weights=False)


def run(args: argparse.Namespace) -> int:
    try:
        engine = load_or_fallback(args)
    except ValueError as error:
        sys.exit(f'depthclip-ros demo: {error}')
    if engine.random_weights:
        warn_random_weights()
    args.output.mkdir(parents=True, exist_ok=True)
    print(f'engine: {engine.config.model} ({engine.config.pretrained}) on '
          f'{engine.describe_device()}, {engine.config.feature_mode} mode')
    if args.input:
        for path in args.input:
            if is_bag(path):
                run_bag(engine, path, args.output / f'{path.stem}_depth')
        for path in expand_inputs([p for p in args.input if not is_bag(p)]):
            for stem, rgb in iter_images(path):
                height, width = rgb.shape[:2]
                if args.intrinsics:
                    camera = Intrinsics(*args.intrinsics, width, height)
                else:
                    camera = intrinsics_from_hfov(height, width, 60.0)
                prediction = engine.infer(rgb, camera, uncertainty=True)
                depth = prediction.depth
                write_outputs(args.output, stem, rgb, depth, camera, engine.random_weights,
                              20.0, prediction.sigma)
                print(f'  {stem}: median depth {np.nanmedian(depth):.2f} m')
    else:
        rgb, truth, camera = render_corridor()
        prediction = engine.infer(rgb, camera, uncertainty=True)
        depth = prediction.depth
        write_outputs(args.output, 'corridor', rgb, depth, camera, engine.random_weights, 20.0,
                      prediction.sigma)
        np.save(args.output / 'corridor_truth_depth.npy', truth)
        label = 'DepthCLIP (RANDOM WEIGHTS)' if engine.random_weights else 'DepthCLIP'
        print('generated scene: a corridor rendered by this project, exact depth 1.4-9.0 m')
        print(format_table({label: depth_metrics(depth, truth)}))
        print(f'\ngenerated recording: the camera walking down the corridor, {args.frames} '
              f'frames')
        source = write_corridor_bag(args.output / 'corridor_camera', args.frames)
        run_bag(engine, source, args.output / 'corridor_depth')
    print(f'\noutputs in {args.output.resolve()}/:')
    print('  *_preview.png   image | coloured depth | colour bar in metres (any image viewer)')
    print('  *_depth.npy     float32 metres;  *_depth.png  uint16 millimetres')
    print('  *.ply           coloured point cloud, optical frame (MeshLab, CloudCompare, '
          'Open3D, Foxglove)')
    print('live camera: ros2 launch depthclip_ros depth.launch.py image:=/camera/image_raw '
          'camera_info:=/camera/camera_info rviz:=true')
    if engine.random_weights:
        print(RANDOM_WEIGHTS_BANNER)
    return 0

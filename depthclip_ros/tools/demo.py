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

Its outputs are named before anything is loaded; a file or bag folder of those names that
exists in ``--output`` (an earlier demo's) is replaced only with ``--overwrite``, else the
run is refused (exit status 2) listing them. At the end it lists what this run wrote.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, replace
from pathlib import Path
import sys
from typing import TYPE_CHECKING

import numpy as np

from depthclip_ros.engine.config import RANDOM_WEIGHTS_BANNER
from depthclip_ros.engine.metrics import depth_metrics, format_table
from depthclip_ros.geometry import Intrinsics, intrinsics_from_hfov, pixel_rays
from depthclip_ros.io.dataset import expand_inputs, iter_images, one_line
from depthclip_ros.io.outputs import (
    check_output_dir,
    check_outputs,
    OVERWRITE_HELP,
    replacing_note,
    Series,
)
from depthclip_ros.tools.common import (
    add_model_arguments,
    announce,
    build_engine,
    configs_from_args,
    is_weights_error,
    option_problem,
    ToolExit,
    warn_random_weights,
)
from depthclip_ros.tools.infer import write_outputs
from depthclip_ros.tools.infer_names import OUTPUT_SUFFIXES, plan_outputs, planned_files
from depthclip_ros.tools.progress import Progress, Stages

if TYPE_CHECKING:  # annotations only: torch is imported when the model loads
    from depthclip_ros.engine.depthclip import DepthCLIP

PROG = 'depthclip-ros demo'
MAX_FRAMES = 1000  # of the generated recording


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--input', nargs='+', type=Path,
                        help='images, folders or videos (default: a generated scene)')
    parser.add_argument('--intrinsics', type=float, nargs=4, metavar=('FX', 'FY', 'CX', 'CY'),
                        help='intrinsics of the images of --input, finite, fx and fy > 0 '
                             '(default: 60 degree horizontal FOV)')
    parser.add_argument('--output', '-o', type=Path, default=Path('depthclip_demo'),
                        help='output folder (default ./depthclip_demo)')
    parser.add_argument('--overwrite', action='store_true', help=OVERWRITE_HELP)
    parser.add_argument('--frames', type=int, default=10,
                        help=f'frames of the generated recording, 1..{MAX_FRAMES} (default '
                             f'10)')
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
    """The engine of ``args``, saying what it loads; when its weights cannot be had, the
    problem and how to supply weights, then exit 1, or with ``--fallback-random`` go on
    with random weights."""
    model, head = configs_from_args(args)
    try:
        return build_engine(model, head, PROG)
    except RuntimeError as error:
        if not is_weights_error(error):
            raise
        print(f'{PROG}: {error}', file=sys.stderr)
        if not args.fallback_random:
            sys.exit(1)
        print('--fallback-random: going on with random weights (--pretrained none).',
              file=sys.stderr)
        return build_engine(replace(model, pretrained='none'), head, PROG)


def write_corridor_bag(path: Path, frames: int = 10, height: int = 480, width: int = 640,
                       step_m: float = 0.25) -> Path:
    """A rosbag2 (MCAP) of the corridor seen from a camera walking ``step_m`` per frame at
    10 Hz: ``/camera/color/image_raw`` (rgb8) and ``/camera/color/camera_info``. An earlier
    bag folder at ``path`` is replaced."""
    from rclpy.serialization import serialize_message
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import get_typestore, Stores
    from std_msgs.msg import Header

    from depthclip_ros.bags.output import METADATA_VERSION
    from depthclip_ros.bags.safety import remove_bag_folder
    from depthclip_ros.ros.messages import camera_info_for, rgb_image
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


def run_bag(engine: DepthCLIP, source: Path, destination: Path, overwrite: bool
            ) -> str | None:
    """``source`` through the node's pipeline into ``destination``, like
    ``depthclip-ros bag`` with ``--colormap``; ``ToolExit`` 1 when that fails. Returns
    what of the input could not be read or processed (``bag``'s exit-1 rule), or None."""
    from depthclip_ros.bags.process import process_bag
    from depthclip_ros.bags.safety import BagError
    from depthclip_ros.ros.pipeline import DepthPipeline
    from depthclip_ros.tools.bag import print_summary, ProblemLog
    from depthclip_ros.tools.bag import Progress as BagProgress
    progress = BagProgress()
    try:
        report = process_bag(source, destination, DepthPipeline(engine), colormap=True,
                             overwrite=overwrite, on_frame=progress, on_problem=ProblemLog())
    except BagError as error:
        raise ToolExit(f'{PROG}: {error} (or run: depthclip-ros bag {source} {destination} '
                       f'--image-topic T --camera-info-topic T)', 1) from None
    finally:
        progress.close()
    print_summary(report, destination, random_weights=False)
    return report.damage()


@dataclass
class Plan:
    """What the demo reads and writes, decided before anything is loaded."""

    bags: list[tuple[Path, Path]] = field(default_factory=list)  # (input, output folder)
    images: object = None  # infer's Plan of the images, folders and videos of --input
    files: list[Path] = field(default_factory=list)
    series: list[Series] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)
    replaced: list[Path] = field(default_factory=list)


CORRIDOR = 'corridor'
CORRIDOR_TRUTH = 'corridor_truth_depth.npy'
CORRIDOR_CAMERA = 'corridor_camera'  # the generated recording
CORRIDOR_DEPTH = 'corridor_depth'  # the recording through the pipeline


def check_options(args: argparse.Namespace) -> None:
    """``ValueError`` naming the option; torch-free."""
    try:
        configs_from_args(args)
    except ValueError as error:
        raise ValueError(option_problem(error, args)) from None
    if not 1 <= args.frames <= MAX_FRAMES:
        raise ValueError(f'--frames must be in 1..{MAX_FRAMES}, got {args.frames}')
    if args.intrinsics is not None:
        fx, fy, _, _ = args.intrinsics
        if not all(np.isfinite(args.intrinsics)) or fx <= 0 or fy <= 0:
            raise ValueError('--intrinsics must be finite with fx, fy > 0, got '
                             + ' '.join(f'{v:g}' for v in args.intrinsics))
    check_output_dir(args.output)


def plan_run(args: argparse.Namespace) -> Plan:
    """The inputs and every output, and the existing outputs it would replace (refused
    with :class:`~depthclip_ros.io.outputs.OutputsExist` without ``--overwrite``)."""
    from depthclip_ros.bags.safety import BagError, is_bag, plan_output
    out, plan = args.output, Plan()
    if not args.input:
        plan.files = [out / f'{CORRIDOR}{suffix}' for suffix in OUTPUT_SUFFIXES]
        plan.files.append(out / CORRIDOR_TRUTH)
        plan.folders = [out / CORRIDOR_CAMERA, out / CORRIDOR_DEPTH]
    else:
        seen = {}
        for path in args.input:
            if not is_bag(path):
                continue
            destination = out / f'{path.stem}_depth'
            if destination.name.casefold() in seen:
                raise ValueError(f'the bags {seen[destination.name.casefold()]} and {path} '
                                 f'would both be written to {destination}; give them '
                                 f'separately')
            seen[destination.name.casefold()] = path
            plan.bags.append((path, destination))
        plan.folders = [destination for _, destination in plan.bags]
        others = [p for p in args.input if not is_bag(p)]
        if others:
            plan.images = plan_outputs(expand_inputs(others), out, OUTPUT_SUFFIXES)
            plan.files, plan.series = planned_files(plan.images, out, OUTPUT_SUFFIXES)
        clash = {f.name.casefold() for f in plan.files} & set(seen)
        if clash:
            raise ValueError(f'a bag output folder and an image output share the name '
                             f'{sorted(clash)[0]}; give them separately')
    plan.replaced = check_outputs(plan.files, args.overwrite, plan.series, plan.folders)
    for source, destination in plan.bags:  # and what `bag` refuses (an output in the input)
        try:
            plan_output(source, destination, args.overwrite)
        except BagError as error:
            raise ValueError(str(error)) from None
    return plan


def run_images(engine: DepthCLIP, args: argparse.Namespace, images) -> list[str]:
    """Depth, uncertainty, preview and cloud of every planned image and video frame;
    returns the names written."""
    from depthclip_ros.tools.infer import frames_to_do
    written = []
    with Progress('demo', 'image', frames_to_do(images)) as progress:
        for source in images.sources:
            for stem, rgb in iter_images(source.path, None, source.name):
                height, width = rgb.shape[:2]
                if args.intrinsics:
                    camera = Intrinsics(*args.intrinsics, width, height)
                else:
                    camera = intrinsics_from_hfov(height, width, 60.0)
                prediction = engine.infer(rgb, camera, uncertainty=True)
                depth = prediction.depth
                write_outputs(args.output, stem, rgb, depth, camera, engine.random_weights,
                              20.0, prediction.sigma)
                written.append(stem)
                progress.write(f'  {stem}: median depth {np.nanmedian(depth):.2f} m')
                progress.step()
    return written


IMAGE_FILES = (
    ('_preview.png', 'image | coloured depth | colour bar in metres | uncertainty | its '
                     'bar (any image viewer)'),
    ('_depth.npy', 'float32 metres;  <name>_depth.png  uint16 millimetres'),
    ('_uncertainty.npy', 'float32 metres: the standard deviation of the depth bin '
                         'distribution per pixel'),
    ('.ply', 'coloured point cloud with a per-vertex uncertainty, optical frame (MeshLab, '
             'CloudCompare, Open3D, Foxglove)'),
)


def closing_list(output: Path, images: list[str], truth: bool, recording: bool,
                 bags: list[Path]) -> list[str]:
    """The lines naming what this run wrote (and nothing else) in ``output``."""
    lines = [f'outputs of this run in {output.resolve()}/:']
    if images:
        shown = images[0] if len(images) == 1 else '<name>'
        if len(images) > 1:
            lines.append(f'  for each of {len(images)} images, <name> = '
                         f'{", ".join(images[:3])}{", ..." if len(images) > 3 else ""}:')
        for suffix, what in IMAGE_FILES:
            lines.append(f'  {shown}{suffix:<16} {what.replace("<name>", shown)}')
    if truth:
        lines.append(f'  {CORRIDOR_TRUTH}  the exact depth of the generated frame, float32 '
                     f'metres')
    if recording:
        lines.append(f'  {CORRIDOR_CAMERA}/  the generated recording (rosbag2, MCAP): '
                     f'{CORRIDOR_IMAGE_TOPIC}, {CORRIDOR_INFO_TOPIC}')
    for bag in bags:
        lines.append(f'  {bag.name}/  rosbag2 (MCAP): the input topics with depth/image, '
                     f'depth/camera_info, points and depth/colormap beside the image '
                     f'(Foxglove, ros2 bag play)')
    return lines


def run(args: argparse.Namespace) -> int:
    try:
        check_options(args)
    except ValueError as error:
        print(f'{PROG}: {one_line(error)}', file=sys.stderr)
        return 2
    announce(PROG, 'importing torch, ROS 2 and rosbags to plan the run (usually 2-20 s)')
    try:
        plan = plan_run(args)
    except ValueError as error:
        print(f'{PROG}: {one_line(error)}', file=sys.stderr)
        return 2
    note = replacing_note(plan.replaced)
    if note:
        print(note)
    engine = load_or_fallback(args)
    if engine.random_weights:
        warn_random_weights()
    args.output.mkdir(parents=True, exist_ok=True)
    print(f'engine: {engine.config.model} ({engine.config.pretrained}) on '
          f'{engine.describe_device()}, {engine.config.feature_mode} mode')
    images, bags, truth, recording, damaged = [], [], False, False, []
    if args.input:
        for source, destination in plan.bags:
            damage = run_bag(engine, source, destination, args.overwrite)
            if damage:
                damaged.append(f'{PROG}: {source}: {damage}')
            bags.append(destination)
        if plan.images is not None:
            images = run_images(engine, args, plan.images)
    else:
        stages = Stages('demo', 3)
        stages.start('one frame of a corridor rendered by this project, with exact depth')
        rgb, exact, camera = render_corridor()
        prediction = engine.infer(rgb, camera, uncertainty=True)
        depth = prediction.depth
        write_outputs(args.output, CORRIDOR, rgb, depth, camera, engine.random_weights, 20.0,
                      prediction.sigma)
        images = [CORRIDOR]
        np.save(args.output / CORRIDOR_TRUTH, exact)
        truth = True
        label = 'DepthCLIP (RANDOM WEIGHTS)' if engine.random_weights else 'DepthCLIP'
        print('generated scene: a corridor rendered by this project, exact depth 1.4-9.0 m')
        print(format_table({label: depth_metrics(depth, exact)}))
        stages.start(f'writing a recording of the camera walking down the corridor, '
                     f'{args.frames} frames')
        source = write_corridor_bag(args.output / CORRIDOR_CAMERA, args.frames)
        recording = True
        stages.start('processing the recording like depthclip-ros bag')
        damage = run_bag(engine, source, args.output / CORRIDOR_DEPTH, args.overwrite)
        if damage:
            damaged.append(f'{PROG}: {source}: {damage}')
        bags.append(args.output / CORRIDOR_DEPTH)
        stages.finish()
    print()
    for line in closing_list(args.output, images, truth, recording, bags):
        print(line)
    print('live camera: ros2 launch depthclip_ros depth.launch.py image:=/camera/image_raw '
          'camera_info:=/camera/camera_info rviz:=true')
    if engine.random_weights:
        print(RANDOM_WEIGHTS_BANNER)
    for line in damaged:  # as `bag`: input that could not be read or processed is exit 1
        print(line, file=sys.stderr, flush=True)
    return 1 if damaged else 0

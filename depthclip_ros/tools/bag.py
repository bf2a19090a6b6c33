"""``depthclip-ros bag INPUT OUTPUT``: a recording through depth_node's own pipeline.

INPUT is a rosbag2 folder, .mcap or .db3 file, or a ROS 1 .bag. OUTPUT is a new rosbag2
folder (MCAP storage) with the input topics plus depth, depth/camera_info and points
(and depth/colormap with --colormap) next to the image topic: /cam/color/image_raw gives
/cam/color/depth, /cam/color/depth/camera_info, /cam/color/points. Outputs carry the
image's header and log time. Image topics may be sensor_msgs/Image or CompressedImage.

Without --image-topic the bag's one colour image topic is used; without
--camera-info-topic the CameraInfo topic nearest to it. Bad or unreadable messages are
reported and skipped. Ctrl-C stops after the current frame and leaves a valid bag.

Look at the result: open OUTPUT/*.mcap in Foxglove, or replay it with
``ros2 bag play OUTPUT --loop`` (Jazzy or newer) next to rviz2 with the shipped config;
the command prints the exact rviz2 line for the bag's topics and frame.
"""

from __future__ import annotations

import argparse
from pathlib import Path
import re
import sys
import time

from ..bags import BagError, BagReport, process_bag
from ..model import RANDOM_WEIGHTS_BANNER
from ..pipeline import DepthPipeline, OutputSettings
from .common import add_model_arguments, load_engine

PLAIN_PROGRESS_S = 5.0
SHOWN_PER_PROBLEM = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('input', type=Path, help='rosbag2 folder, .mcap, .db3 or ROS 1 .bag')
    parser.add_argument('output', type=Path, help='new rosbag2 folder (MCAP)')
    parser.add_argument('--image-topic', help='sensor_msgs/Image or CompressedImage topic '
                        '(default: the one colour image topic)')
    parser.add_argument('--camera-info-topic', help='its CameraInfo (default: the nearest)')
    parser.add_argument('--output-namespace',
                        help="where the outputs go (default: the image topic's namespace)")
    parser.add_argument('--colormap', action='store_true',
                        help='also write depth/colormap (rgb8) for viewing')
    parser.add_argument('--overwrite', action='store_true', help='replace OUTPUT')
    add_output_arguments(parser)
    add_model_arguments(parser)


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('outputs (same meaning as the node parameters)')
    node = OutputSettings()  # the node's defaults
    group.add_argument('--output-size', type=int, nargs=2, metavar=('H', 'W'),
                       default=node.output_size, help='0 0 = the image size')
    group.add_argument('--cloud-stride', type=int, default=node.cloud_stride)
    group.add_argument('--min-depth-m', type=float, default=node.min_depth_m)
    group.add_argument('--max-depth-m', type=float, default=node.max_depth_m)
    group.add_argument('--cloud-rgb', action='store_true')
    group.add_argument('--intrinsics-source', choices=('K', 'P'),
                       default=node.intrinsics_source)
    group.add_argument('--fallback-hfov-deg', type=float,
                       default=node.fallback_hfov_deg,
                       help='horizontal FOV for images before any CameraInfo (0 = skip them)')


def settings_from_args(args: argparse.Namespace) -> OutputSettings:
    return OutputSettings(output_size=tuple(args.output_size), cloud_stride=args.cloud_stride,
                          min_depth_m=args.min_depth_m, max_depth_m=args.max_depth_m,
                          cloud_rgb=args.cloud_rgb, intrinsics_source=args.intrinsics_source,
                          fallback_hfov_deg=args.fallback_hfov_deg)


class Progress:
    """A tqdm bar (frames/s, ETA) on a terminal; a plain line every few seconds otherwise."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.bar = None
        self._last_line = 0.0
        self._start = time.perf_counter()

    def __call__(self, report: BagReport) -> None:
        if self.bar is None and self.stream.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=report.frames_total, unit='frame', file=self.stream,
                            dynamic_ncols=True)
        done = report.frames_seen
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            return
        now = time.perf_counter()
        if done == 1 or now - self._last_line >= PLAIN_PROGRESS_S or \
                done == report.frames_total:
            self._last_line = now
            rate = done / max(now - self._start, 1e-9)
            left = report.frames_total - done
            eta = f', ETA {left / rate:.0f} s' if rate > 0 and left > 0 else ''
            print(f'bag: frame {done}/{report.frames_total} ({rate:.2f} frames/s{eta})',
                  file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class ProblemLog:
    """Prints the first few occurrences of each kind of problem, then counts quietly."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.seen: dict[str, int] = {}

    def __call__(self, text: str) -> None:
        kind = re.split(r' at | \(|; ', text, maxsplit=1)[0]
        count = self.seen[kind] = self.seen.get(kind, 0) + 1
        if count <= SHOWN_PER_PROBLEM:
            suffix = ' (further ones are counted, not shown)' if count == SHOWN_PER_PROBLEM \
                else ''
            print(f'bag: {text}{suffix}', file=self.stream, flush=True)


def rviz_command(report: BagReport) -> str:
    """rviz2 with the shipped config, its relative topics pointed at the bag's."""
    namespace = report.output_topics.get('depth', '/depth').rsplit('/', 1)[0] or '/'
    image = report.image_topic
    image = image[len(namespace.rstrip('/')) + 1:] if image.startswith(namespace) else image
    frame = f' -f {report.frame_id}' if report.frame_id else ''
    return (f'rviz2 -d "$(ros2 pkg prefix depthclip_ros)/share/depthclip_ros/config/'
            f'depthclip.rviz"{frame} --ros-args -r __ns:={namespace} -r image:={image}')


def print_summary(report: BagReport, output: Path, random_weights: bool) -> None:
    state = 'INTERRUPTED, the bag holds the frames done so far' if report.interrupted \
        else f'INPUT DAMAGED ({report.read_error}), the bag holds the frames before it' \
        if report.read_error else 'done'
    rate = report.frames_written / report.seconds if report.seconds > 0 else 0.0
    print(f'{state}: {report.frames_written} of {report.frames_total} frames with depth '
          f'({report.frames_rejected} rejected, {report.frames_failed} failed, '
          f'{report.unreadable} unreadable messages) in '
          f'{report.seconds:.1f} s, {rate:.2f} frames/s')
    frames = max(report.frames_seen, 1)
    totals = {name: sum(values) for name, values in report.timer.samples.items()}
    if totals:
        stages = ', '.join(f'{name} {ms / frames:.1f}' for name, ms in totals.items())
        print(f'ms per frame: {stages}; writer thread {report.write_thread_ms / frames:.1f} '
              f'(overlapped)')
    if report.skipped_topics:
        print(f'not copied (names ROS 2 does not allow): {len(report.skipped_topics)} topics, '
              f'e.g. {report.skipped_topics[0]!r}')
    print(f'output: {output.resolve()}  (rosbag2, MCAP storage)')
    print(f'  topics: {", ".join(report.output_topics.values())}')
    print(f'  Foxglove: open {output.resolve()}/*.mcap; Image panel on depth/colormap or '
          f'depth, 3D panel on points')
    print(f'  ROS 2 (Jazzy or newer): ros2 bag play {output} --loop  and  '
          f'{rviz_command(report)}')
    if random_weights:
        print(RANDOM_WEIGHTS_BANNER)


def run(args: argparse.Namespace) -> int:
    engine = load_engine(args)
    pipeline = DepthPipeline(engine, settings_from_args(args))
    progress = Progress()
    try:
        report = process_bag(args.input, args.output, pipeline,
                             image_topic=args.image_topic, info_topic=args.camera_info_topic,
                             namespace=args.output_namespace, colormap=args.colormap,
                             overwrite=args.overwrite, on_frame=progress,
                             on_problem=ProblemLog())
    except BagError as error:
        sys.exit(f'depthclip-ros bag: {error}')
    finally:
        progress.close()
    print_summary(report, args.output, engine.random_weights)
    return 130 if report.interrupted else 1 if report.read_error else 0

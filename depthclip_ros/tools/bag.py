"""``depthclip-ros bag INPUT OUTPUT``: a recording through depth_node's own pipeline.

INPUT is a rosbag2 folder, .mcap or .db3 file, or a ROS 1 .bag. OUTPUT is a new rosbag2
folder (MCAP storage) with the input topics plus depth/image, depth/camera_info and
points (and depth/colormap with --colormap, depth/uncertainty with --uncertainty) next to
the image topic: /cam/color/image_raw gives /cam/color/depth/image,
/cam/color/depth/camera_info, /cam/color/points. Outputs carry the image's header and log
time. Image topics may be sensor_msgs/Image or CompressedImage.

depth/uncertainty is 32FC1 metres, the standard deviation of each pixel's depth bin
distribution (the node's topic of that name, paired with depth/camera_info);
--max-uncertainty-m drops the points more uncertain than that from points (NaN), as the
node parameter. With scene-adaptive bins (--bins-mode scene_soft|scene_hard, --scene-config
...) the scene is classified every --scene-every-n-frames frames, as in the node, and the
summary counts the frames per scene.

With --query TEXT (repeatable) the objects those words describe are found in every frame
(built-in proposals, the node's protocol) and written as objects/markers
(visualization_msgs/MarkerArray: rviz boxes and labels), objects/points (their inlier
points, tagged with the query index) and objects/labels (mono16: query index + 1 where its
chosen mask is; with its sibling objects/camera_info, a copy of depth/camera_info), beside
the depth outputs with the same header and log time. With random
weights (--pretrained none) these answers are meaningless.

Without --image-topic the bag's one colour image topic is used; without
--camera-info-topic the camera_info beside it, else the nearest CameraInfo topic, which
is refused when its first message does not match the first image (frame_id, size, aspect:
another camera's). The summary names the CameraInfo topic used. Bad or unreadable
messages are reported and skipped.

The input is never modified: an OUTPUT that is the input, inside it or around it
(symlinks and .. resolved) is refused. The bag is written into OUTPUT.partial/ and moved
to OUTPUT when complete; --overwrite replaces an earlier output (a folder holding only a
rosbag2 bag) only then. Ctrl-C / SIGTERM stop after the current frame and leave a
complete bag of the frames done. A run killed or unable to write (disk full) leaves
OUTPUT.partial/ (with a note saying so); recover its complete chunks with
``depthclip-ros bag --recover OUTPUT.partial NEW_OUTPUT``.

Exit codes: 0 done; 1 no frame got depth, the input was damaged, or writing failed (with
--recover: nothing recoverable); 2 refused before anything was written (an option, a
path, the bag or its topics: one line "depthclip-ros bag: <reason>"; options and paths are
checked before the model is loaded or the input read); 130 interrupted (the bag is
complete).

Look at the result: open OUTPUT/*.mcap in Foxglove, or replay it with
``ros2 bag play OUTPUT --loop`` (Jazzy or newer) next to rviz2 with the shipped config;
the command prints the exact rviz2 line for the bag's topics and frame.
"""

from __future__ import annotations

import argparse
from pathlib import Path
import re
import statistics
import sys
from typing import TYPE_CHECKING

from depthclip_ros.engine.config import RANDOM_WEIGHTS_BANNER
from depthclip_ros.objects.queries import DEFAULT_ALPHA, DEFAULT_BETA, MAX_QUERIES, MAX_QUERY_CHARS
from depthclip_ros.ros.parameters import DEFAULTS
from depthclip_ros.tools import progress
from depthclip_ros.tools.common import (
    add_model_arguments,
    configs_from_args,
    load_engine,
    node_range,
    option_problem,
    read_scene_config,
)

if TYPE_CHECKING:  # annotations only: rosbags, rclpy and torch are imported when it runs
    from depthclip_ros.bags.process import BagReport
    from depthclip_ros.ros.pipeline import ObjectSettings, OutputSettings

PROG = 'depthclip-ros bag'
SHOWN_PER_PROBLEM = 3
USAGE_ERROR = 2  # refused before anything was read or written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('input', type=Path, help='rosbag2 folder, .mcap, .db3 or ROS 1 .bag '
                        '(with --recover: a partial output folder or its .mcap)')
    parser.add_argument('output', type=Path, help='new rosbag2 folder (MCAP)')
    parser.add_argument('--image-topic', help='sensor_msgs/Image or CompressedImage topic '
                        '(default: the one colour image topic)')
    parser.add_argument('--camera-info-topic',
                        help='its CameraInfo (default: camera_info beside the image, else the '
                             'nearest CameraInfo topic if its frame_id and size match)')
    parser.add_argument('--output-namespace',
                        help="where the outputs go (default: the image topic's namespace)")
    parser.add_argument('--colormap', action='store_true',
                        help='also write depth/colormap (rgb8) for viewing')
    parser.add_argument('--uncertainty', action='store_true',
                        help='also write depth/uncertainty (32FC1, metres: the standard '
                             "deviation of each pixel's depth bin distribution)")
    parser.add_argument('--overwrite', action='store_true',
                        help='replace an earlier OUTPUT (a folder holding only a rosbag2 bag), '
                             'once the new one is complete; never the input')
    parser.add_argument('--recover', action='store_true',
                        help='copy the complete messages of INPUT, a partial output left by a '
                             'killed or failed run (OUTPUT.partial), into a complete bag '
                             'OUTPUT; no model is loaded')
    add_output_arguments(parser)
    add_object_arguments(parser)
    add_model_arguments(parser)


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('outputs (same meaning as the node parameters)')
    node = DEFAULTS  # the node's defaults (OutputSettings checks them)
    group.add_argument('--output-size', type=int, nargs=2, metavar=('H', 'W'),
                       default=tuple(node['output_size']),
                       help='depth size; 0 0 = the image size (default); at most '
                            '--max-input-pixels pixels')
    group.add_argument('--cloud-stride', type=int, default=node['cloud_stride'],
                       help=f'keep every n-th row and column in points, '
                            f'{node_range("cloud_stride")} (default {node["cloud_stride"]})')
    group.add_argument('--min-depth-m', type=float, default=node['min_depth_m'],
                       help=f'depths below become NaN in points, {node_range("min_depth_m")} '
                            f'(default {node["min_depth_m"]:g})')
    group.add_argument('--max-depth-m', type=float, default=node['max_depth_m'],
                       help=f'depths above become NaN in points, {node_range("max_depth_m")} '
                            f'(default {node["max_depth_m"]:g})')
    group.add_argument('--cloud-rgb', action='store_true',
                       help='add a packed rgb field to points')
    group.add_argument('--max-uncertainty-m', type=float, default=node['max_uncertainty_m'],
                       help='points whose depth uncertainty (m) exceeds this become NaN in '
                            f'points, {node_range("max_uncertainty_m")}; 0 = off (default '
                            f'{node["max_uncertainty_m"]:g})')
    group.add_argument('--scene-every-n-frames', type=int, metavar='N',
                       help='with scene-adaptive bins, classify the scene every N-th frame, '
                            f'{node_range("scene_every_n_frames")} (default: '
                            f'scene_every_n_frames of --scene-config, else '
                            f'{node["scene_every_n_frames"]}, as the node)')
    group.add_argument('--intrinsics-source', choices=('K', 'P'),
                       default=node['intrinsics_source'],
                       help='K for raw images, P for rectified ones (default '
                            f'{node["intrinsics_source"]})')
    group.add_argument('--fallback-hfov-deg', type=float, default=node['fallback_hfov_deg'],
                       help='horizontal FOV (degrees) for images before any CameraInfo, '
                            f'{node_range("fallback_hfov_deg")}; 0 = skip them (default)')
    group.add_argument('--max-input-pixels', type=int, default=node['max_input_pixels'],
                       help='largest image (width x height) processed; larger ones are '
                            f'refused from their header; {node_range("max_input_pixels")} '
                            f'(default {node["max_input_pixels"]})')


def add_object_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('objects named in words (same meaning as the node '
                                      'parameters object_*)')
    group.add_argument('--query', dest='queries', action='append', metavar='TEXT',
                       help='a referring expression ("the red chair next to the door"); '
                            f'repeat for more (at most {MAX_QUERIES}), each at most '
                            f"{MAX_QUERY_CHARS} characters and within CLIP's 77-token "
                            'context; adds objects/markers, objects/points, objects/labels '
                            'and objects/camera_info')
    group.add_argument('--object-alpha', type=float,
                       help=f'visual mix: alpha * global + (1 - alpha) * local feature, '
                            f'{node_range("object_alpha")} (default {DEFAULT_ALPHA})')
    group.add_argument('--object-beta', type=float,
                       help=f'text mix: beta * sentence + (1 - beta) * noun phrase, '
                            f'{node_range("object_beta")} (default {DEFAULT_BETA})')


def objects_from_args(args: argparse.Namespace) -> ObjectSettings:
    """The object settings (no query: none); ``ValueError`` naming the option."""
    from depthclip_ros.ros.pipeline import ObjectSettings
    queries = tuple(args.queries or ())
    if not queries:
        given = [f'--{name.replace("_", "-")}' for name in ('object_alpha', 'object_beta')
                 if getattr(args, name) is not None]
        if given:
            raise ValueError(f'{" and ".join(given)} need at least one --query')
        return ObjectSettings()
    node = ObjectSettings()
    try:
        return ObjectSettings(
            queries=queries,
            alpha=node.alpha if args.object_alpha is None else args.object_alpha,
            beta=node.beta if args.object_beta is None else args.object_beta)
    except ValueError as error:
        reason = str(error)
        if reason.startswith('object_queries: '):
            reason = '--query: ' + reason[len('object_queries: '):]
        raise ValueError(reason) from None


def settings_from_args(args: argparse.Namespace) -> OutputSettings:
    """The output settings; ``ValueError`` naming the parameter for a value the node
    refuses."""
    from depthclip_ros.ros.pipeline import OutputSettings
    return OutputSettings(output_size=tuple(args.output_size), cloud_stride=args.cloud_stride,
                          min_depth_m=args.min_depth_m, max_depth_m=args.max_depth_m,
                          cloud_rgb=args.cloud_rgb, intrinsics_source=args.intrinsics_source,
                          fallback_hfov_deg=args.fallback_hfov_deg,
                          max_input_pixels=args.max_input_pixels,
                          max_uncertainty_m=args.max_uncertainty_m,
                          scene_every_n_frames=scene_every_n_frames(args))


def scene_every_n_frames(args: argparse.Namespace) -> int:
    """``--scene-every-n-frames``, else ``scene_every_n_frames`` of ``--scene-config`` (its
    node parameters section), else the node's default."""
    if args.scene_every_n_frames is not None:
        return args.scene_every_n_frames
    default = DEFAULTS['scene_every_n_frames']
    path = getattr(args, 'scene_config', None)
    if path is None:
        return default
    return read_scene_config(path).get('scene_every_n_frames', default)


class Progress(progress.Progress):
    """The bag's frames (called with the :class:`BagReport` after each): a tqdm bar
    (frames/s, ETA) on a terminal, a plain line every few seconds otherwise."""

    def __init__(self, stream=None):
        super().__init__('bag', 'frame', stream=stream)

    def __call__(self, report: BagReport) -> None:
        self.update(report.frames_seen, report.frames_total)


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
    depth = report.output_topics.get('depth/image', '/depth/image')
    namespace = depth[:-len('/depth/image')] or '/'
    image = report.image_topic
    image = image[len(namespace.rstrip('/')) + 1:] if image.startswith(namespace) else image
    frame = f' -f {report.frame_id}' if report.frame_id else ''
    return (f'rviz2 -d "$(ros2 pkg prefix depthclip_ros)/share/depthclip_ros/config/'
            f'depthclip.rviz"{frame} --ros-args -r __ns:={namespace} -r image:={image}')


def no_depth_reason(report: BagReport) -> str:
    """Why no frame got depth, for the summary."""
    if report.frames_seen == 0:
        return f'no image on {report.image_topic} could be read'
    if report.camera_info_topic is None and report.camera_info_rejected:
        return ('the bag has no CameraInfo topic: give one with --camera-info-topic, or '
                'approximate intrinsics with --fallback-hfov-deg')
    if report.camera_info_rejected == report.frames_seen:
        return (f'no usable CameraInfo on {report.camera_info_topic} (see the messages '
                f'above)')
    return 'every frame was rejected or failed (see the messages above)'


def print_summary(report: BagReport, output: Path, random_weights: bool,
                  failed: str | None = None) -> None:
    """The run in a few lines. ``failed``: writing failed with that message (no bag)."""
    output = report.output or Path(output)
    state = ('WRITE FAILED (the error message says what was kept where)' if failed else
             'INTERRUPTED, the bag is complete and holds the frames done so far'
             if report.interrupted else
             f'INPUT DAMAGED ({report.read_error}), the bag holds the frames before it'
             if report.read_error else
             'NO DEPTH' if report.frames_written == 0 else 'done')
    rate = report.frames_written / report.seconds if report.seconds > 0 else 0.0
    print(f'{state}: {report.frames_written} of {report.frames_total} frames with depth '
          f'({report.frames_rejected} rejected, {report.frames_failed} failed, '
          f'{report.unreadable} unreadable messages) in '
          f'{report.seconds:.1f} s, {rate:.2f} frames/s')
    if report.frames_written == 0 and not report.interrupted and not failed:
        print(f'no frame produced output: {no_depth_reason(report)}')
    if report.image_topic:
        print(f'image: {report.image_topic}; CameraInfo: {report.camera_info_choice}')
    if report.frames_fallback:
        print(f'{report.frames_fallback} frames had no CameraInfo yet and used the '
              f'--fallback-hfov-deg intrinsics (approximate metres)')
    if report.bins_mode != 'fixed':
        scenes = ', '.join(f'{name} {count}' for name, count in
                           sorted(report.scene_frames.items(), key=lambda item: -item[1]))
        print(f'bins: {report.bins_mode}, the scene classified every '
              f'{report.scene_every_n_frames} frames; frames per chosen scene: '
              f'{scenes or "none"}' + ('; with random weights the scenes are meaningless too'
                                       if random_weights else ''))
    if report.sigma_medians_m:
        medians = sorted(report.sigma_medians_m)
        print(f"depth uncertainty (median over the token grid, as the node's diagnostics): "
              f'{statistics.median(medians):.3f} m over {len(medians)} frames '
              f'({medians[0]:.3f}-{medians[-1]:.3f} m per frame)')
    if report.object_queries:
        answers = report.object_frames * report.object_queries
        no_objects = (f', {report.object_frames_failed} frames with depth but no objects (the '
                      f'object step failed, see above)' if report.object_frames_failed else '')
        print(f'objects: {report.object_messages} messages on objects/markers, '
              f'objects/points, objects/labels and objects/camera_info '
              f'({report.object_frames} frames x 4); '
              f'{report.objects_located} of {answers} answers to {report.object_queries} '
              f'queries located in 3-D{no_objects}')
    frames = max(report.frames_seen, 1)
    totals = {name: sum(values) for name, values in report.timer.samples.items()}
    if totals:
        stages = ', '.join(f'{name} {ms / frames:.1f}' for name, ms in totals.items())
        print(f'ms per frame: {stages}; writer thread {report.write_thread_ms / frames:.1f} '
              f'(overlapped)')
    if report.skipped_topics:
        print(f'not copied (names ROS 2 does not allow): {len(report.skipped_topics)} '
              f'topics:')
        for topic in report.skipped_topics:  # every one: the user loses them in the output
            print(f'  {topic!r}')
    if failed:
        return
    replaced = ', replaced the earlier output' if report.replaced else ''
    print(f'output: {output.resolve()}  (rosbag2, MCAP storage; complete: metadata and '
          f'index written{replaced})')
    print(f'  topics: {", ".join(report.output_topics.values())}')
    print(f'  Foxglove: open {output.resolve()}/*.mcap; {foxglove_panels(report)}')
    print(f'  ROS 2 (Jazzy or newer): ros2 bag play {output} --loop  and  '
          f'{rviz_command(report)}')
    if random_weights:
        print(RANDOM_WEIGHTS_BANNER + (' The objects found are meaningless too.'
                                       if report.object_queries else ''))


def foxglove_panels(report: BagReport) -> str:
    """Which Foxglove panel shows which topic this run wrote (by their names in the bag)."""
    written = report.output_topics
    images = [written[t] for t in ('depth/colormap', 'depth/image', 'depth/uncertainty')
              if t in written]
    if 'depth/colormap' in written and len(images) > 1:
        images[:2] = [f'{images[0]} (or {images[1]})']
    text = f'Image panel on {", ".join(images) or "the image topic"}'
    if 'points' in written:
        text += f', 3D panel on {written["points"]}'
        if 'objects/markers' in written:
            text += f' and {written["objects/markers"]}'
    if 'objects/labels' in written:
        text += f', Image panel on {written["objects/labels"]}'
    return text


def refuse(reason: str) -> int:
    print(f'depthclip-ros bag: {reason}', file=sys.stderr, flush=True)
    return USAGE_ERROR


def run(args: argparse.Namespace) -> int:
    if args.recover:  # mcap and rosbags only: no ROS package, no model
        return run_recover(args)
    # The imports below take seconds (torch, rosbags, ROS 2): say so first.
    print(f'bag: {args.input} -> {args.output}: starting (torch, rosbags and ROS 2 load '
          f'first, a few seconds)', flush=True)
    # Imported here, not with the module: `depthclip-ros bag --help` needs none of them.
    from depthclip_ros.bags.output import BagWriteError
    from depthclip_ros.bags.process import process_bag
    from depthclip_ros.bags.safety import BagError, PARTIAL_NOTE, plan_output
    from depthclip_ros.objects.referring import ReferringCLIP
    from depthclip_ros.ros.pipeline import DepthPipeline

    # Every option first: nothing is read, loaded or written for a value the node refuses.
    try:
        settings = settings_from_args(args)
        objects = objects_from_args(args)
        configs_from_args(args)
    except ValueError as error:
        return refuse(option_problem(error, args))
    try:
        plan_output(args.input, args.output, args.overwrite)
    except BagError as error:
        return refuse(str(error))
    engine = None

    def make_pipeline() -> DepthPipeline:  # only once the bag and its topics are usable
        nonlocal engine
        engine = load_engine(args)
        referring = ReferringCLIP(engine)
        for query in objects.queries:  # refused once, not on every frame
            try:
                referring.check_text(query)
            except ValueError as error:
                raise BagError(f'--query: {error}') from None
        progress.restart()
        return DepthPipeline(engine, settings, objects=objects)

    progress = Progress()
    try:
        report = process_bag(args.input, args.output, make_pipeline,
                             image_topic=args.image_topic, info_topic=args.camera_info_topic,
                             namespace=args.output_namespace, colormap=args.colormap,
                             objects=bool(objects.queries), uncertainty=args.uncertainty,
                             overwrite=args.overwrite,
                             on_frame=progress, on_problem=ProblemLog())
    except BagWriteError as error:
        progress.close()
        if error.report is not None:
            print_summary(error.report, args.output, False, failed=str(error))
        print(f'depthclip-ros bag: {error}', file=sys.stderr, flush=True)
        return 1
    except BagError as error:
        progress.close()
        if (Path(args.input) / PARTIAL_NOTE).is_file():
            error = f'{error} ({args.input} is a partial output: use --recover)'
        return refuse(str(error))
    finally:
        progress.close()
    print_summary(report, args.output, engine is not None and engine.random_weights)
    if report.interrupted:
        return 130
    damage = report.damage()
    if damage:
        print(f'depthclip-ros bag: {damage}', file=sys.stderr, flush=True)
    return 1 if damage or report.frames_written == 0 else 0


def run_recover(args: argparse.Namespace) -> int:
    from depthclip_ros.bags.output import BagWriteError
    from depthclip_ros.bags.recover import recover_partial
    from depthclip_ros.bags.safety import BagError
    try:
        report = recover_partial(args.input, args.output,
                                                 overwrite=args.overwrite,
                                                 on_problem=ProblemLog())
    except BagWriteError as error:
        print(f'depthclip-ros bag: {error}', file=sys.stderr, flush=True)
        return 1
    except BagError as error:
        return refuse(str(error))
    topics = ', '.join(f'{topic} {count}' for topic, count in sorted(report.per_topic.items()))
    end = ('INTERRUPTED: the bag holds the messages copied so far' if report.interrupted else
           'the file was complete' if report.complete else
           f'the file ends in a cut-off record ({report.stopped.rstrip(": ")}): what was '
           f'written after its last complete chunk was lost' if report.stopped else
           'the file ended without its summary')
    print(f'recovered {report.messages} messages from {report.source_file}; {end}')
    print(f'  per topic: {topics}')
    print(f'output: {report.output}  (rosbag2, MCAP storage; complete: metadata and index '
          f'written{", replaced the earlier output" if report.replaced else ""}); the source '
          f'was not changed, delete it when you no longer need it')
    return 130 if report.interrupted else 0

"""Recorded camera data through the node's pipeline: rosbag2 (.mcap, .db3) and ROS 1
(.bag) in, a rosbag2 MCAP out with the input topics plus ``depth/image``,
``depth/camera_info`` and ``points`` (and optionally ``depth/colormap`` and
``depth/uncertainty``, and with object queries ``objects/markers``, ``objects/points``,
``objects/labels`` and ``objects/camera_info``).

Reading, ROS 1 -> ROS 2 message conversion and writing are done by the ``rosbags``
library (its ``convert`` module migrates ROS 1 definitions such as CameraInfo's upper-case
``K``). Image and CameraInfo messages are turned into real ``sensor_msgs`` objects with
``rclpy.serialization`` and handed to :class:`~depthclip_ros.ros.pipeline.DepthPipeline`,
exactly what ``depth_node`` runs on a live topic; the outputs are serialised the same way
and written by a thread of their own. Nothing here starts rclpy (no node, no DDS traffic).

Where the output is written and when it replaces anything: :mod:`depthclip_ros.bags.safety`;
which topics are read and written: :mod:`depthclip_ros.bags.topics`; recovery of a partial
output: :mod:`depthclip_ros.bags.recover`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
import io
import logging
from pathlib import Path
import queue
import threading
import time
from typing import Callable

from rclpy.serialization import deserialize_message, serialize_message
from rosbags.convert.converter import create_connections_converters
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer, WriterError
from rosbags.typesys import get_typestore, Stores
from sensor_msgs.msg import CameraInfo

from depthclip_ros.bags.output import BagWriteError, METADATA_VERSION, stop_on_signal
from depthclip_ros.bags.safety import (
    BagError,
    discard_partial,
    kept_as_partial,
    move_into_place,
    OutputPlan,
    plan_output,
    start_partial,
)
from depthclip_ros.bags.topics import (
    check_camera_info,
    choose_topics,
    IMAGE_TYPES,
    OBJECT_OUTPUTS,
    output_namespace,
    output_topics,
    OUTPUT_TYPES,
    valid_ros2_topic,
)
from depthclip_ros.ros.pipeline import DepthPipeline, FrameRejected, Outputs, Wanted
from depthclip_ros.ros.shutdown import Shutdown
from depthclip_ros.timing import StageTimer

log = logging.getLogger(__name__)

WRITE_QUEUE = 32  # messages waiting for the writer thread (a few frames)


@dataclass
class BagReport:
    """What happened to a bag run."""

    frames_total: int = 0
    frames_seen: int = 0
    frames_written: int = 0
    frames_rejected: int = 0
    frames_failed: int = 0
    unreadable: int = 0
    interrupted: bool = False
    read_error: str | None = None  # the input could not be read to its end
    skipped_topics: list[str] = field(default_factory=list)
    image_topic: str = ''
    output_topics: dict[str, str] = field(default_factory=dict)
    frame_id: str | None = None  # of the first image
    camera_info_topic: str | None = None
    camera_info_choice: str = ''  # how it was chosen and what it describes
    camera_info_rejected: int = 0  # frames rejected for want of a usable CameraInfo
    frames_fallback: int = 0  # frames processed with fallback_hfov_deg intrinsics
    object_queries: int = 0  # queries per frame (0: no object outputs)
    object_frames: int = 0  # frames whose object outputs were written
    object_frames_failed: int = 0  # frames with depth whose object step failed
    objects_located: int = 0  # query answers with a 3-D location, over all frames
    object_messages: int = 0  # messages on the objects/* topics
    bins_mode: str = 'fixed'  # of the pipeline's engine
    scene_every_n_frames: int = 0  # how often the scene was classified (scene bins)
    scene_frames: dict[str, int] = field(default_factory=dict)  # frames per chosen scene
    sigma_medians_m: list[float] = field(default_factory=list)  # per frame with depth
    messages_written: int = 0  # handed to the bag file by the writer thread
    output: Path | None = None  # the finished bag (real path)
    replaced: bool = False  # an earlier output was replaced by it
    timer: StageTimer = field(default_factory=StageTimer)  # main thread
    write_thread_ms: float = 0.0  # time the writer thread spent writing (overlapped)
    seconds: float = 0.0

    def damage(self) -> str | None:
        """What of the input could not be read or processed, with the counts, in one line;
        None when every message was read and every frame got all its outputs. (A run with
        damage ends with exit status 1, whatever else it wrote.)"""
        counts = ((self.unreadable, 'unreadable message', 'unreadable messages'),
                  (self.frames_rejected, 'frame rejected', 'frames rejected'),
                  (self.frames_failed, 'frame failed', 'frames failed'),
                  (self.object_frames_failed, 'frame without its object outputs (the object '
                   'step failed)', 'frames without their object outputs (the object step '
                   'failed)'))
        parts = [f'{count} {one if count == 1 else many}' for count, one, many in counts
                 if count]
        if self.read_error:
            parts.append(f'the input could not be read to its end ({self.read_error})')
        if not parts:
            return None
        return (f'not all of the input could be read and processed: {", ".join(parts)}; '
                f'{self.frames_written} of {self.frames_total} frames have outputs')


class WriterThread:
    """Writes to the bag on a thread of its own, so that file I/O overlaps the next
    frame's inference. The queue is bounded (back pressure, bounded memory); an error on
    the thread is raised at the next ``write`` or at ``close``, and nothing is written
    after it."""

    def __init__(self, writer: Writer, depth: int = WRITE_QUEUE):
        self._writer = writer
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self.busy_ms = 0.0
        self.written = 0  # messages the writer accepted
        self._thread = threading.Thread(target=self._drain, name='bag_writer', daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                start = time.perf_counter()
                try:
                    self._writer.write(*item)
                    self.written += 1
                except BaseException as error:  # noqa: BLE001 - handed to the main thread
                    self._error = error
                self.busy_ms += (time.perf_counter() - start) * 1e3

    def write(self, connection, stamp: int, data) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((connection, stamp, data))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


def process_bag(source: Path, destination: Path,
                pipeline: DepthPipeline | Callable[[], DepthPipeline], *,
                image_topic: str | None = None, info_topic: str | None = None,
                namespace: str | None = None, colormap: bool = False,
                objects: bool = False, uncertainty: bool = False, overwrite: bool = False,
                on_frame: Callable[[BagReport], None] | None = None,
                on_problem: Callable[[str], None] | None = None) -> BagReport:
    """Run every image of ``source`` through ``pipeline`` into a new MCAP bag.

    Input topics with names ROS 2 allows are copied (converted from ROS 1 when needed);
    outputs are written at their image's log time. Bad or unreadable messages are
    reported to ``on_problem`` and skipped. ``pipeline`` may be a function that builds
    it, called only once the paths, the bag and its topics were found usable (so that a
    refusal does not wait for the model). ``objects``: also the object outputs of the
    pipeline's queries (``objects/markers``, ``objects/points``, ``objects/labels``;
    built-in proposals, ``node`` protocol); a frame whose object step fails keeps its
    depth outputs. ``uncertainty``: also ``depth/uncertainty`` (32FC1, metres: the
    standard deviation of each pixel's depth bin distribution, paired with
    ``depth/camera_info``).

    The input is only read. The bag is written into ``OUTPUT.partial/`` and moved to
    ``destination`` once closed (at the end, or after SIGINT/SIGTERM, which stop after
    the current frame); an earlier output (``overwrite``) is removed only then. Raises
    :class:`BagError` for unusable paths, bags and topics (nothing written) and
    :class:`BagWriteError` when writing fails (the partial folder is kept; the message
    says what it holds and how to recover it).
    """
    plan = plan_output(source, destination, overwrite)
    source = Path(source)
    report = BagReport()
    problem = on_problem or (lambda text: log.warning(text))
    try:
        reader = AnyReader([source])
        reader.open()
    except Exception as error:  # noqa: BLE001 - rosbags raises several kinds
        raise BagError(f'cannot read {source}: {error}') from None
    start = time.perf_counter()
    try:
        image_topic, image_type, chosen_info = choose_topics(reader.connections, image_topic,
                                                             info_topic)
        outputs = output_topics(namespace or output_namespace(image_topic, image_type),
                                colormap, objects, uncertainty)
        report.image_topic, report.output_topics = image_topic, outputs
        clash = sorted(set(outputs.values()) & {c.topic for c in reader.connections})
        if clash:
            raise BagError(f'the bag already has {", ".join(clash)}; choose another '
                           f'--output-namespace')
        if not valid_ros2_topic(image_topic):
            raise BagError(f'{image_topic!r} is not a valid ROS 2 topic name')
        report.camera_info_topic = chosen_info
        report.camera_info_choice = check_camera_info(
            reader, image_topic, image_type, chosen_info, info_topic is not None, problem)
        copied = [c for c in reader.connections if valid_ros2_topic(c.topic)]
        report.skipped_topics = sorted({c.topic for c in reader.connections} -
                                       {c.topic for c in copied})
        report.frames_total = sum(c.msgcount for c in reader.connections
                                  if c.topic == image_topic)
        if not isinstance(pipeline, DepthPipeline):
            pipeline = pipeline()
            start = time.perf_counter()
        if objects and not pipeline.objects.queries:
            raise BagError('object outputs need a pipeline with object queries')
        report.object_queries = len(pipeline.objects.queries) if objects else 0
        report.bins_mode = pipeline.engine.head.bins_mode
        if report.bins_mode != 'fixed':
            report.scene_every_n_frames = pipeline.settings.scene_every_n_frames
        pipeline.topics.update({'image': image_topic, 'image/compressed': image_topic,
                                'camera_info': chosen_info or '(no CameraInfo topic)'})
        pipeline.warn = problem  # warnings about frames that are still processed
        with stop_on_signal() as stop:
            start_partial(plan, recovering=False)
            _write_bag(plan, reader, copied, pipeline, report, problem, stop, image_type,
                       colormap, on_frame)
            report.interrupted = stop.requested.is_set()
            _finish(plan, report, problem)
    finally:
        reader.close()
        report.seconds = time.perf_counter() - start
    return report


def _write_bag(plan: OutputPlan, reader, copied, pipeline: DepthPipeline,
               report: BagReport, problem, stop: Shutdown, image_type: str,
               colormap: bool, on_frame) -> None:
    """Every message into ``plan.bag``; the bag is closed (metadata, index) on return.
    A write failure keeps the partial folder and raises :class:`BagWriteError`."""
    ros2 = get_typestore(Stores.ROS2_JAZZY)
    background = None
    try:
        writer = Writer(plan.bag, version=METADATA_VERSION, storage_plugin=StoragePlugin.MCAP)
        with writer:
            notes = io.StringIO()
            with contextlib.redirect_stdout(notes):  # rosbags prints migration notes
                connmap, convert = create_connections_converters(
                    copied, None if reader.is2 else ros2, reader, writer)
            for line in notes.getvalue().splitlines():
                log.info('rosbags: %s', line)
            out_conns = {name: writer.add_connection(topic, OUTPUT_TYPES[name],
                                                     typestore=ros2)
                         for name, topic in report.output_topics.items()}
            background = WriterThread(writer)
            objects = bool(report.object_queries)
            want = Wanted(colormap=colormap,
                          uncertainty='depth/uncertainty' in report.output_topics,
                          markers=objects, object_points=objects, labels=objects)
            run = _Run(pipeline, background, report, problem, report.image_topic,
                       image_type, report.camera_info_topic, want, out_conns, connmap,
                       convert)
            messages = reader.messages(connections=copied)
            try:
                while not stop.requested.is_set():
                    try:
                        with report.timer.stage('read'):
                            item = next(messages, None)
                    except Exception as error:  # noqa: BLE001 - a damaged file, any kind
                        report.read_error = f'{type(error).__name__}: {error}'
                        problem(f'cannot read further in {plan.source} '
                                f'({report.read_error}); the output holds everything '
                                f'before it')
                        break
                    if item is None:
                        break
                    if run.message(*item) and on_frame:
                        on_frame(report)
            finally:
                with report.timer.stage('write'):
                    try:
                        background.close()  # all queued is written before the bag closes
                    finally:
                        report.write_thread_ms = background.busy_ms
                        report.messages_written = background.written
    except (OSError, WriterError) as error:
        if not report.messages_written:
            discard_partial(plan)
            raise BagWriteError(
                f'cannot write {plan.bag} ({type(error).__name__}: {error}); nothing was '
                f'written, and {plan.destination} is '
                f'{"unchanged" if plan.replace else "not created"}', None, report) from error
        holds = (f'{report.messages_written} messages of the first {report.frames_seen} '
                 f'frames were handed to it, those in its complete 1 MiB chunks are on disk')
        again = (f'depthclip-ros bag --recover {plan.partial} {plan.destination}'
                 f'{" --overwrite" if plan.replace else ""}')
        raise BagWriteError(kept_as_partial(plan, error, holds, again), plan.partial,
                            report) from error
    except BaseException:
        if background is None or not background.written:
            discard_partial(plan)
        raise


def _finish(plan: OutputPlan, report: BagReport, problem) -> None:
    try:
        report.replaced = move_into_place(plan, problem)
    except (OSError, BagError) as error:
        raise BagWriteError(f'the new bag is complete (metadata and index written) in '
                            f'{plan.bag} but could not be moved to {plan.destination}: '
                            f'{error}; move it there yourself', plan.partial,
                            report) from None
    report.output = plan.destination


@dataclass
class _Run:
    """One message at a time: copy it, feed CameraInfo to the pipeline, and for an image
    write the input followed by its outputs at the image's log time."""

    pipeline: DepthPipeline
    writer: WriterThread
    report: BagReport
    problem: Callable[[str], None]
    image_topic: str
    image_type: str
    info_topic: str | None
    want: Wanted
    out_conns: dict
    connmap: dict
    convert: dict

    def message(self, conn, stamp: int, raw) -> bool:
        """Handle one message; True when it was an image (processed or not)."""
        is_image = conn.topic == self.image_topic
        self.report.frames_seen += is_image
        try:
            data = self.convert[conn.msgtype](raw)
            msg = None
            if is_image:
                with self.report.timer.stage('deserialize'):
                    msg = deserialize_message(bytes(data), IMAGE_TYPES[self.image_type])
            elif conn.topic == self.info_topic:
                msg = deserialize_message(bytes(data), CameraInfo)
        except Exception as error:  # noqa: BLE001 - corrupt bytes, in any of several ways
            self.report.unreadable += 1
            kind = 'image' if is_image else 'message'
            self.problem(f'unreadable {kind} on {conn.topic} at {stamp} ns, skipped: '
                         f'{type(error).__name__}: {error}')
            return is_image
        outputs = {}
        if is_image:
            if self.report.frame_id is None:
                self.report.frame_id = msg.header.frame_id
            try:
                processed = self.pipeline.process(msg, self.want, self.report.timer)
                outputs = _by_topic(processed)
                self._remember(processed)
                self.report.frames_fallback += self.pipeline.latest_info is None
                if processed.frame is not None:
                    outputs.update(self._objects(processed, conn.topic, stamp))
            except FrameRejected as error:
                self.report.frames_rejected += 1
                camera = self.pipeline.topics['camera_info']
                self.report.camera_info_rejected += str(error).startswith(f'{camera}:')
                self.problem(f'{error}; frame at {stamp} ns has no outputs (input copied)')
            except Exception as error:  # noqa: BLE001 - e.g. CUDA out of memory: as the node
                self.report.frames_failed += 1
                self.problem(f'inference failed on {conn.topic} at {stamp} ns: '
                             f'{type(error).__name__}: {error}; frame has no outputs (input '
                             f'copied)')
        elif msg is not None:
            self.pipeline.on_camera_info(msg)
        with self.report.timer.stage('serialize'):
            serialized = [(self.out_conns[name], serialize_message(message))
                          for name, message in outputs.items()
                          if name in self.out_conns and message is not None]
        self.report.object_messages += sum(
            1 for name, message in outputs.items()
            if name in OBJECT_OUTPUTS and name in self.out_conns and message is not None)
        with self.report.timer.stage('write'):
            self.writer.write(self.connmap[(conn.id, conn.owner)], stamp, data)
            for out_conn, payload in serialized:
                self.writer.write(out_conn, stamp, payload)
        if outputs:
            self.report.frames_written += 1
        return is_image

    def _remember(self, processed: Outputs) -> None:
        """The frame's scene and median uncertainty, for the summary."""
        if processed.sigma_median_m is not None:
            self.report.sigma_medians_m.append(float(processed.sigma_median_m))
        if processed.scene is not None:
            chosen = processed.scene.chosen
            self.report.scene_frames[chosen] = self.report.scene_frames.get(chosen, 0) + 1

    def _objects(self, processed: Outputs, topic: str, stamp: int) -> dict:
        """The object outputs of a processed frame; none (reported) when the object step
        fails: the frame keeps its depth outputs."""
        try:
            found = self.pipeline.find(processed.frame, self.want, None, self.report.timer)
        except Exception as error:  # noqa: BLE001 - as for inference: skip, report, go on
            self.report.object_frames_failed += 1
            self.problem(f'objects failed on {topic} at {stamp} ns: '
                         f'{type(error).__name__}: {error}; the frame has depth but no '
                         f'object outputs')
            return {}
        finally:
            processed.frame = None  # the feature map is not kept beyond this frame
        self.report.object_frames += 1
        self.report.objects_located += sum(r.location is not None for r in found.objects)
        return {'objects/markers': found.markers, 'objects/points': found.object_points,
                'objects/labels': found.labels, 'objects/camera_info': found.labels_info}


def _by_topic(out: Outputs) -> dict:
    return {'depth/image': out.depth, 'depth/camera_info': out.camera_info,
            'points': out.points, 'depth/colormap': out.colormap,
            'depth/uncertainty': out.uncertainty}


def read_topic(bag: Path, topic: str, msg_class) -> list[tuple[int, object]]:
    """``(log time ns, message)`` of every message on ``topic`` (for tests and tools)."""
    with AnyReader([Path(bag)]) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        return [(stamp, deserialize_message(bytes(raw), msg_class))
                for _, stamp, raw in reader.messages(connections=conns)]

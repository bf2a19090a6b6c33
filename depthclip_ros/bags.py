"""Recorded camera data through the node's pipeline: rosbag2 (.mcap, .db3) and ROS 1
(.bag) in, a rosbag2 MCAP out with the input topics plus ``depth``,
``depth/camera_info`` and ``points`` (and optionally ``depth/colormap``).

Reading, ROS 1 -> ROS 2 message conversion and writing are done by the ``rosbags``
library (its ``convert`` module migrates ROS 1 definitions such as CameraInfo's upper-case
``K``). Image and CameraInfo messages are turned into real ``sensor_msgs`` objects with
``rclpy.serialization`` and handed to :class:`~depthclip_ros.pipeline.DepthPipeline`,
exactly what ``depth_node`` runs on a live topic; the outputs are serialised the same way.
Nothing here starts rclpy (no node, no DDS traffic).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
import io
import logging
import os
from pathlib import Path
import queue
import signal
import threading
import time
from typing import Callable

from rclpy.serialization import deserialize_message, serialize_message
from rosbags.convert.converter import create_connections_converters
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer, WriterError
from rosbags.typesys import get_typestore, Stores
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from .pipeline import DepthPipeline, FrameRejected, Outputs, Wanted
from .timing import StageTimer

log = logging.getLogger(__name__)

IMAGE_TYPES = {'sensor_msgs/msg/Image': Image,
               'sensor_msgs/msg/CompressedImage': CompressedImage}
CAMERA_INFO_TYPE = 'sensor_msgs/msg/CameraInfo'
OUTPUT_TYPES = {'depth': 'sensor_msgs/msg/Image',
                'depth/camera_info': CAMERA_INFO_TYPE,
                'points': 'sensor_msgs/msg/PointCloud2',
                'depth/colormap': 'sensor_msgs/msg/Image'}
BAG_SUFFIXES = ('.bag', '.mcap', '.db3')
# rosbag2 metadata version 8 is read by Jazzy and newer; Foxglove reads the MCAP itself.
METADATA_VERSION = 8
WRITE_QUEUE = 32  # messages waiting for the writer thread (a few frames)


class BagError(ValueError):
    """The bag or the requested topics cannot be used; the message says why."""


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
    timer: StageTimer = field(default_factory=StageTimer)  # main thread
    write_thread_ms: float = 0.0  # time the writer thread spent writing (overlapped)
    seconds: float = 0.0


def is_bag(path: Path) -> bool:
    """A ROS 1 bag, a rosbag2 storage file or a rosbag2 folder (with metadata.yaml)."""
    path = Path(path)
    return (path.is_file() and path.suffix in BAG_SUFFIXES) or \
        (path.is_dir() and (path / 'metadata.yaml').is_file())


def output_namespace(image_topic: str, msgtype: str) -> str:
    """Where the outputs go: next to the image topic (``/cam/color/image_raw`` ->
    ``/cam/color``); a CompressedImage's ``/compressed`` suffix is the transport's."""
    base = image_topic.rstrip('/')
    if msgtype == 'sensor_msgs/msg/CompressedImage' and base.endswith('/compressed'):
        base = base[:-len('/compressed')]
    namespace = base.rsplit('/', 1)[0]
    return namespace or '/'


def output_topics(namespace: str, colormap: bool) -> dict[str, str]:
    names = [n for n in OUTPUT_TYPES if colormap or n != 'depth/colormap']
    prefix = namespace.rstrip('/')
    return {name: f'{prefix}/{name}' for name in names}


def _common_prefix_depth(a: str, b: str) -> int:
    depth = 0
    for x, y in zip(a.strip('/').split('/'), b.strip('/').split('/')):
        if x != y:
            break
        depth += 1
    return depth


def choose_topics(connections, image_topic: str | None, info_topic: str | None
                  ) -> tuple[str, str, str | None]:
    """``(image topic, its message type, camera_info topic or None)``.

    Without ``image_topic`` the bag must hold one image topic (topics named like depth
    images are not candidates when others exist). Without ``info_topic``: ``camera_info``
    beside the image, else the CameraInfo topic sharing the longest namespace with it.
    """
    types = {}
    for conn in connections:
        types.setdefault(conn.topic, conn.msgtype)
    images = sorted(t for t, m in types.items() if m in IMAGE_TYPES)
    infos = sorted(t for t, m in types.items() if m == CAMERA_INFO_TYPE)
    if image_topic is None:
        colour = [t for t in images if 'depth' not in t.lower()] or images
        if len(colour) != 1:
            raise BagError(f'pick the image topic with --image-topic; the bag has '
                           f'{len(images)} image topics: {", ".join(images) or "none"}')
        image_topic = colour[0]
    elif image_topic not in types:
        raise BagError(f'topic {image_topic} is not in the bag; image topics: '
                       f'{", ".join(images) or "none"}')
    elif types[image_topic] not in IMAGE_TYPES:
        raise BagError(f'{image_topic} is {types[image_topic]}, not sensor_msgs/Image or '
                       f'sensor_msgs/CompressedImage')
    sibling = f'{output_namespace(image_topic, types[image_topic]).rstrip("/")}/camera_info'
    if info_topic is None and sibling in infos:  # the ROS convention
        info_topic = sibling
    elif info_topic is None and infos:
        scores = {t: _common_prefix_depth(t, image_topic) for t in infos}
        best = max(scores.values())
        matches = [t for t, s in scores.items() if s == best]
        if len(matches) > 1:
            raise BagError(f'pick the CameraInfo topic with --camera-info-topic: '
                           f'{", ".join(matches)}')
        info_topic = matches[0]
    elif info_topic is not None and types.get(info_topic) != CAMERA_INFO_TYPE:
        raise BagError(f'{info_topic} is not a sensor_msgs/CameraInfo topic in the bag '
                       f'(CameraInfo topics: {", ".join(infos) or "none"})')
    return image_topic, types[image_topic], info_topic


def _valid_ros2_topic(name: str) -> bool:
    from rclpy.exceptions import InvalidTopicNameException
    from rclpy.validate_full_topic_name import validate_full_topic_name
    try:
        validate_full_topic_name(name)
    except InvalidTopicNameException:
        return False
    return True


class _StopRequest:
    """SIGINT/SIGTERM set a flag checked between messages, so every written frame is whole
    and the writer is drained and closed normally (at most one frame's inference later)."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _WriterThread:
    """Writes to the bag on a thread of its own, so that file I/O overlaps the next
    frame's inference. The queue is bounded (back pressure, bounded memory); an error on
    the thread is raised at the next ``write`` or at ``close``."""

    def __init__(self, writer: Writer, depth: int = WRITE_QUEUE):
        self._writer = writer
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self.busy_ms = 0.0
        self._thread = threading.Thread(target=self._drain, name='bag_writer', daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                start = time.perf_counter()
                try:
                    self._writer.write(*item)
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


def process_bag(source: Path, destination: Path, pipeline: DepthPipeline, *,
                image_topic: str | None = None, info_topic: str | None = None,
                namespace: str | None = None, colormap: bool = False,
                overwrite: bool = False,
                on_frame: Callable[[BagReport], None] | None = None,
                on_problem: Callable[[str], None] | None = None) -> BagReport:
    """Run every image of ``source`` through ``pipeline`` into a new MCAP bag.

    Input topics with names ROS 2 allows are copied (converted from ROS 1 when needed);
    outputs are written at their image's log time. Bad or unreadable messages are
    reported to ``on_problem`` and skipped. SIGINT/SIGTERM stop after the current frame;
    the output is closed and valid either way. Raises :class:`BagError` for unusable
    input or output paths and topics.
    """
    source, destination = Path(source), Path(destination)
    if not source.exists():
        raise BagError(f'{source} does not exist')
    if destination.exists():
        if not overwrite:
            raise BagError(f'{destination} exists (pass --overwrite to replace it)')
        remove_bag_folder(destination)
    report = BagReport()
    problem = on_problem or (lambda text: log.warning(text))
    start = time.perf_counter()
    try:
        reader = AnyReader([source])
        reader.open()
    except Exception as error:  # noqa: BLE001 - rosbags raises several kinds
        raise BagError(f'cannot read {source}: {error}') from None
    try:
        image_topic, image_type, info_topic = choose_topics(reader.connections, image_topic,
                                                            info_topic)
        outputs = output_topics(namespace or output_namespace(image_topic, image_type),
                                colormap)
        report.image_topic, report.output_topics = image_topic, outputs
        clash = sorted(set(outputs.values()) & {c.topic for c in reader.connections})
        if clash:
            raise BagError(f'the bag already has {", ".join(clash)}; choose another '
                           f'--output-namespace')
        pipeline.topics.update({'image': image_topic, 'image/compressed': image_topic,
                                'camera_info': info_topic or '(no CameraInfo topic)'})
        pipeline.warn = problem  # warnings about frames that are still processed
        if not _valid_ros2_topic(image_topic):
            raise BagError(f'{image_topic!r} is not a valid ROS 2 topic name')
        copied = [c for c in reader.connections if _valid_ros2_topic(c.topic)]
        report.skipped_topics = sorted({c.topic for c in reader.connections} -
                                       {c.topic for c in copied})
        report.frames_total = sum(c.msgcount for c in reader.connections
                                  if c.topic == image_topic)
        ros2 = get_typestore(Stores.ROS2_JAZZY)
        writer = Writer(destination, version=METADATA_VERSION,
                        storage_plugin=StoragePlugin.MCAP)
        with writer, _StopRequest() as stop:
            notes = io.StringIO()
            with contextlib.redirect_stdout(notes):  # rosbags prints migration notes
                connmap, convert = create_connections_converters(
                    copied, None if reader.is2 else ros2, reader, writer)
            for line in notes.getvalue().splitlines():
                log.info('rosbags: %s', line)
            out_conns = {name: writer.add_connection(topic, OUTPUT_TYPES[name],
                                                     typestore=ros2)
                         for name, topic in outputs.items()}
            background = _WriterThread(writer)
            run = _Run(pipeline, background, report, problem, image_topic, image_type,
                       info_topic, Wanted(colormap=colormap), out_conns, connmap, convert)
            messages = reader.messages(connections=copied)
            try:
                while not stop.requested:
                    try:
                        with report.timer.stage('read'):
                            item = next(messages, None)
                    except Exception as error:  # noqa: BLE001 - a damaged file, any kind
                        report.read_error = f'{type(error).__name__}: {error}'
                        problem(f'cannot read further in {source} ({report.read_error}); '
                                f'the output holds everything before it')
                        break
                    if item is None:
                        break
                    if run.message(*item) and on_frame:
                        on_frame(report)
            finally:
                with report.timer.stage('write'):
                    background.close()  # everything queued is written before the bag closes
                report.write_thread_ms = background.busy_ms
            report.interrupted = stop.requested
    except KeyboardInterrupt:
        report.interrupted = True
    except (OSError, WriterError) as error:
        raise BagError(f'cannot write {destination}: {error}') from error
    finally:
        reader.close()
        report.seconds = time.perf_counter() - start
    return report


@dataclass
class _Run:
    """One message at a time: copy it, feed CameraInfo to the pipeline, and for an image
    write the input followed by its outputs at the image's log time."""

    pipeline: DepthPipeline
    writer: _WriterThread
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
                outputs = _by_topic(self.pipeline.process(msg, self.want, self.report.timer))
            except FrameRejected as error:
                self.report.frames_rejected += 1
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
        with self.report.timer.stage('write'):
            self.writer.write(self.connmap[(conn.id, conn.owner)], stamp, data)
            for out_conn, payload in serialized:
                self.writer.write(out_conn, stamp, payload)
        if outputs:
            self.report.frames_written += 1
        return is_image


def _by_topic(out: Outputs) -> dict:
    return {'depth': out.depth, 'depth/camera_info': out.camera_info,
            'points': out.points, 'depth/colormap': out.colormap}


def remove_bag_folder(path: Path) -> None:
    """Remove a previous output: only a rosbag2 folder (metadata.yaml and storage files)."""
    if not path.is_dir():
        raise BagError(f'{path} exists and is not a bag folder; not replacing it')
    names = {p.name for p in path.iterdir()}
    if any(not (n == 'metadata.yaml' or n.endswith(('.mcap', '.db3'))) for n in names):
        raise BagError(f'{path} holds more than a rosbag2 bag; not replacing it')
    for name in names:
        os.remove(path / name)
    path.rmdir()


def read_topic(bag: Path, topic: str, msg_class) -> list[tuple[int, object]]:
    """``(log time ns, message)`` of every message on ``topic`` (for tests and tools)."""
    with AnyReader([Path(bag)]) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        return [(stamp, deserialize_message(bytes(raw), msg_class))
                for _, stamp, raw in reader.messages(connections=conns)]

"""Recorded camera data through the node's pipeline: rosbag2 (.mcap, .db3) and ROS 1
(.bag) in, a rosbag2 MCAP out with the input topics plus ``depth``,
``depth/camera_info`` and ``points`` (and optionally ``depth/colormap`` and
``depth/uncertainty``, and with object queries ``objects/markers``, ``objects/points`` and
``objects/labels``).

Reading, ROS 1 -> ROS 2 message conversion and writing are done by the ``rosbags``
library (its ``convert`` module migrates ROS 1 definitions such as CameraInfo's upper-case
``K``). Image and CameraInfo messages are turned into real ``sensor_msgs`` objects with
``rclpy.serialization`` and handed to :class:`~depthclip_ros.ros.pipeline.DepthPipeline`,
exactly what ``depth_node`` runs on a live topic; the outputs are serialised the same way.
Nothing here starts rclpy (no node, no DDS traffic).

The input is only ever read. :func:`plan_output` refuses, before anything is read or
written, an output that is the input, lies inside it (its file, or its rosbag2 folder) or
contains it, comparing real paths (symlinks and ``..`` resolved) and file identity. A run
writes into ``OUTPUT.partial/OUTPUT-NAME/`` beside OUTPUT, with a note
(``UNFINISHED-OUTPUT.txt``) saying what the folder is; only when the bag is closed
(metadata and index written: at the end, after SIGINT/SIGTERM, or after a damaged input)
is it moved to OUTPUT, and an earlier OUTPUT (``overwrite``; a folder holding only a
rosbag2 bag) is removed only then. A run that is killed or cannot write (disk full) leaves
``OUTPUT.partial``: an MCAP without index whose complete 1 MiB chunks
:func:`recover_partial` (``depthclip-ros bag --recover``) copies into a readable bag.

The CameraInfo topic is the one given, else ``camera_info`` beside the image, else the
nearest CameraInfo topic; an automatic choice is refused when its first message does not
belong to the image topic's first image (another frame_id, aspect, or for the nearest
topic another size), so that another camera's calibration never scales silently.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
import datetime
import errno
import io
import logging
import os
from pathlib import Path
import queue
import re
import shlex
import signal
import struct
import sys
import threading
import time
from typing import Callable

from rclpy.serialization import deserialize_message, serialize_message
from rosbags.convert.converter import create_connections_converters
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer, WriterError
from rosbags.typesys import get_typestore, Stores
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from depthclip_ros.ros.pipeline import DepthPipeline, FrameRejected, Outputs, Wanted
from depthclip_ros.timing import StageTimer

log = logging.getLogger(__name__)

IMAGE_TYPES = {'sensor_msgs/msg/Image': Image,
               'sensor_msgs/msg/CompressedImage': CompressedImage}
CAMERA_INFO_TYPE = 'sensor_msgs/msg/CameraInfo'
OUTPUT_TYPES = {'depth/image': 'sensor_msgs/msg/Image',
                'depth/camera_info': CAMERA_INFO_TYPE,
                'points': 'sensor_msgs/msg/PointCloud2',
                'depth/colormap': 'sensor_msgs/msg/Image',
                'depth/uncertainty': 'sensor_msgs/msg/Image',
                'objects/markers': 'visualization_msgs/msg/MarkerArray',
                'objects/points': 'sensor_msgs/msg/PointCloud2',
                'objects/labels': 'sensor_msgs/msg/Image',
                'objects/camera_info': CAMERA_INFO_TYPE}
OBJECT_OUTPUTS = ('objects/markers', 'objects/points', 'objects/labels',
                  'objects/camera_info')
BAG_SUFFIXES = ('.bag', '.mcap', '.db3')
# rosbag2 metadata version 8 is read by Jazzy and newer; Foxglove reads the MCAP itself.
METADATA_VERSION = 8
WRITE_QUEUE = 32  # messages waiting for the writer thread (a few frames)
PARTIAL_SUFFIX = '.partial'  # OUTPUT.partial: a run in progress, or one that did not end
RECOVERY_SUFFIX = '.recovery-partial'  # the same for --recover
PARTIAL_NOTE = 'UNFINISHED-OUTPUT.txt'
REPLACED_SUFFIX = '.replaced'  # an earlier OUTPUT, moved into the partial folder briefly
CAMERA_INFO_PEEK = 5  # messages tried for the first readable image / CameraInfo


class BagError(ValueError):
    """Refused before anything was written: the bag, the paths or the topics cannot be
    used; the message says why."""


class BagWriteError(BagError):
    """Writing failed during a run (disk full, I/O error). The message says what was left
    where: ``partial`` is the clearly named folder kept for recovery (None when nothing had
    been written); an earlier output was not touched."""

    def __init__(self, message: str, partial: Path | None = None,
                 report: BagReport | None = None):
        super().__init__(message)
        self.partial = partial
        self.report = report


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


def is_bag(path: Path) -> bool:
    """A ROS 1 bag, a rosbag2 storage file or a rosbag2 folder (with metadata.yaml)."""
    path = Path(path)
    return (path.is_file() and path.suffix in BAG_SUFFIXES) or \
        (path.is_dir() and (path / 'metadata.yaml').is_file())


# ----------------------------------------------------------------------------- paths

@dataclass(frozen=True)
class OutputPlan:
    """Where a run writes, checked by :func:`plan_output` before anything happens."""

    source: Path  # the input as given
    destination: Path  # OUTPUT, real path (symlinks and '..' resolved)
    partial: Path  # the folder written during the run, beside OUTPUT
    overwrite: bool
    replace: bool  # OUTPUT exists now and is replaced once the new bag is complete
    replace_partial: bool  # an earlier partial folder of this name is removed at the start

    @property
    def bag(self) -> Path:
        """The rosbag2 folder inside the partial folder; it becomes OUTPUT."""
        return self.partial / self.destination.name


def _input_paths(source: Path) -> set[Path]:
    """Everything that is the input: its path as given and resolved, and the rosbag2
    folder its storage file sits in."""
    paths = set()
    for path in (Path(os.path.abspath(source)), Path(os.path.realpath(source))):
        paths.add(path)
        if path.is_file() and (path.parent / 'metadata.yaml').is_file():
            paths.add(path.parent)
    return paths


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _relation(path: Path, protected: set[Path]) -> str | None:
    """How ``path`` overlaps the input (``'is'``, ``'is inside'``, ``'contains'``) or None.

    By name, as given and resolved, and by file identity (bind mounts, case-insensitive
    file systems): for every existing folder above ``path`` and above the input."""
    forms = {Path(os.path.abspath(path)), Path(os.path.realpath(path))}
    for inp in protected:
        for out in forms:
            if out == inp:
                return 'is'
            if inp in out.parents:
                return 'is inside'
            if out in inp.parents:
                return 'contains'
    real = Path(os.path.realpath(path))
    for inp in protected:
        if not os.path.exists(inp):
            continue
        for above in (real, *real.parents):
            if _same(above, inp):
                return 'is' if above == real else 'is inside'
        if os.path.exists(real):
            for above in (inp, *inp.parents):
                if _same(above, real):
                    return 'is' if above == inp else 'contains'
    return None


def _bag_folder_problem(path: Path) -> str | None:
    """Why ``path`` may not be replaced, or None: only a folder holding nothing but a
    rosbag2 bag (metadata.yaml, .mcap and .db3 files) is."""
    if path.is_symlink() or not path.is_dir():
        return 'is not a bag folder'
    for entry in os.scandir(path):
        if not (entry.name == 'metadata.yaml' or entry.name.endswith(('.mcap', '.db3'))) or \
                entry.is_dir():
            return 'holds more than a rosbag2 bag'
    return None


def _partial_problem(path: Path) -> str | None:
    """Why ``path`` is not a partial output of this tool (note + bag folders), or None."""
    if path.is_symlink() or not path.is_dir() or not (path / PARTIAL_NOTE).is_file():
        return f'is not a partial output of this tool (no {PARTIAL_NOTE})'
    for entry in os.scandir(path):
        if entry.name != PARTIAL_NOTE and _bag_folder_problem(Path(entry.path)):
            return 'holds more than a partial output of this tool'
    return None


def _running_writer(partial: Path) -> int | None:
    """The process id in a partial folder's note if that process (not this one) still
    runs: its run is in progress, the folder is not left over."""
    try:
        found = re.search(r'by process (\d+)', (partial / PARTIAL_NOTE).read_text())
    except (OSError, UnicodeDecodeError):
        return None
    pid = int(found.group(1)) if found else None
    if pid is None or pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except OSError:  # exists, owned by someone else
        return pid
    return pid


def plan_output(source: Path, destination: Path, overwrite: bool = False,
                partial_suffix: str = PARTIAL_SUFFIX) -> OutputPlan:
    """Check the input and output paths; reads no bag and changes nothing.

    Raises :class:`BagError` when the input does not exist; when OUTPUT or its partial
    folder is the input, lies inside it or contains it (the input file, and its rosbag2
    folder); when OUTPUT exists without ``overwrite`` or is more than a rosbag2 bag
    folder; and when an earlier partial folder is in the way.
    """
    source, given = Path(source), Path(destination)
    if not os.path.exists(source):  # a dangling symlink does not exist either
        raise BagError(f'{source} does not exist')
    real = Path(os.path.realpath(given))
    if not real.name or real == real.parent:
        raise BagError(f'{given} cannot be an output folder; name a new folder')
    if real.name == PARTIAL_NOTE:
        raise BagError(f'{given}: choose another output name')
    partial = real.with_name(real.name + partial_suffix)
    protected = _input_paths(source)
    shown = f'{given} ({real})' if str(real) != os.path.abspath(given) else str(given)
    for role, path, name in (('the output', given, shown),
                             ('the partial output folder', partial, str(partial))):
        relation = _relation(path, protected)
        if relation:
            raise BagError(f'{role} {name} {relation} the input recording {source}; '
                           f'refused before reading or writing anything (the input is '
                           f'never modified): choose an output outside the input')
    above = next(a for a in real.parents if os.path.exists(a))
    if not above.is_dir():
        raise BagError(f'{given}: {above} is not a folder')
    if not os.access(above, os.W_OK | os.X_OK):
        raise BagError(f'{given}: cannot write in {above} (permission denied)')
    replace = os.path.lexists(real)
    if replace:
        if not overwrite:
            raise BagError(f'{given} exists (pass --overwrite to replace it)')
        problem = _bag_folder_problem(real)
        if problem:
            raise BagError(f'{given} exists and {problem}; not replacing it')
    replace_partial = os.path.lexists(partial)
    if replace_partial:
        problem = _partial_problem(partial)
        if problem:
            raise BagError(f'{partial} (where this run would write) exists and {problem}; '
                           f'move it away or choose another output')
        writer = _running_writer(partial)
        if writer:
            raise BagError(f'{partial} is being written by process {writer}, still running '
                           f'(see {partial / PARTIAL_NOTE}); wait for it, stop it, or choose '
                           f'another output')
        if not overwrite:
            raise BagError(f'{partial} exists: the unfinished output of an earlier run (see '
                           f'{partial / PARTIAL_NOTE}). Recover it with "depthclip-ros bag '
                           f'--recover {partial} NEW_OUTPUT", delete it, or pass --overwrite '
                           f'to replace it')
    return OutputPlan(source, real, partial, overwrite, replace, replace_partial)


def remove_bag_folder(path: Path) -> None:
    """Remove a previous output: only a rosbag2 folder (metadata.yaml and storage files)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    problem = _bag_folder_problem(path)
    if problem:
        raise BagError(f'{path} exists and {problem}; not replacing it')
    for entry in list(os.scandir(path)):
        os.remove(entry.path)
    path.rmdir()


def _remove_partial(path: Path) -> None:
    problem = _partial_problem(path)
    if problem:
        raise BagError(f'{path} {problem}; not removing it')
    for entry in list(os.scandir(path)):
        if entry.name != PARTIAL_NOTE:
            remove_bag_folder(Path(entry.path))
    os.remove(path / PARTIAL_NOTE)
    path.rmdir()


def _note(plan: OutputPlan, recovering: bool) -> str:
    command = ' '.join(shlex.quote(a) for a in ['depthclip-ros', *sys.argv[1:]]) \
        if Path(sys.argv[0]).name in ('depthclip-ros', 'cli.py', '-m') else '(from Python)'
    again = (f'  depthclip-ros bag --recover {shlex.quote(str(plan.source))} '
             f'{shlex.quote(str(plan.destination))} --overwrite' if recovering else
             f'  depthclip-ros bag --recover {shlex.quote(str(plan.partial))} '
             f'{shlex.quote(str(plan.destination))}')
    name = plan.destination.name
    return (
        f'This folder is the UNFINISHED output of a depthclip-ros bag '
        f'{"recovery" if recovering else "run"}.\n\n'
        f'  input:   {os.path.abspath(plan.source)} (never modified)\n'
        f'  output:  {plan.destination} (made only when the run ends)\n'
        f'  started: {datetime.datetime.now().isoformat(timespec="seconds")} by process '
        f'{os.getpid()}\n  command: {command}\n\n'
        f'While that process runs, leave this folder alone: it is moved to the output when\n'
        f'the bag is complete. If the process is no longer running, it was killed or could\n'
        f'not write (disk full): {name}/{name}.mcap then holds the messages written before\n'
        f'it stopped, as an MCAP without index, summary or metadata.yaml, which ros2 bag and\n'
        f'Foxglove may refuse. Every complete 1 MiB chunk of it can be recovered into a\n'
        f'complete, readable bag with\n\n{again}\n\n'
        f'or delete this folder (or pass --overwrite) and run the command again.\n')


def _start_partial(plan: OutputPlan, recovering: bool) -> None:
    """The partial folder and its note; an earlier partial is removed (``overwrite``)."""
    try:
        if plan.replace_partial and os.path.lexists(plan.partial):
            _remove_partial(plan.partial)
        plan.partial.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(plan.partial)
    except OSError as error:
        raise BagError(f'cannot create {plan.partial}: {error}') from None
    try:
        (plan.partial / PARTIAL_NOTE).write_text(_note(plan, recovering))
    except OSError as error:
        _discard_partial(plan)
        raise BagError(f'cannot write in {plan.partial}: {error}') from None


def _discard_partial(plan: OutputPlan) -> None:
    """Remove a partial folder that holds nothing worth keeping (no message written)."""
    with contextlib.suppress(OSError):
        (plan.partial / PARTIAL_NOTE).unlink(missing_ok=True)
        if plan.bag.is_dir():
            for entry in list(os.scandir(plan.bag)):
                os.remove(entry.path)
            plan.bag.rmdir()
        plan.partial.rmdir()


def _move_into_place(plan: OutputPlan, problem: Callable[[str], None]) -> bool:
    """The closed bag becomes OUTPUT; an earlier OUTPUT is removed only after that.
    Returns whether one was replaced."""
    dest, bag = plan.destination, plan.bag
    replaced = os.path.lexists(dest)
    if replaced:
        if not plan.overwrite:
            raise BagError(f'{dest} appeared during the run; not replacing it')
        reason = _bag_folder_problem(dest)  # it may have changed during the run
        if reason:
            raise BagError(f'{dest} {reason} now; not replacing it')
        aside = plan.partial / f'{dest.name}{REPLACED_SUFFIX}'
        os.rename(dest, aside)
        try:
            os.rename(bag, dest)
        except OSError:
            os.rename(aside, dest)
            raise
        try:
            remove_bag_folder(aside)
        except (OSError, BagError) as error:
            problem(f'the earlier output, moved to {aside}, could not be removed: {error}')
            return True
    else:
        os.rename(bag, dest)
    with contextlib.suppress(OSError):
        os.remove(plan.partial / PARTIAL_NOTE)
        plan.partial.rmdir()
    return replaced


def _kept_as_partial(plan: OutputPlan, error: BaseException, holds: str, again: str) -> str:
    """The message for a write failure: what was kept where, and how to recover it."""
    code = getattr(error, 'errno', None)
    first = ('Free some space, then recover' if code in (errno.ENOSPC, errno.EDQUOT) else
             'Where files may be that large (a file size limit was reached), recover'
             if code == errno.EFBIG else 'Recover')
    old = (f'{plan.destination} is unchanged' if plan.replace
           else f'{plan.destination} was not created')
    return (f'writing failed ({type(error).__name__}: {error}); {old}. The incomplete '
            f'output is kept as {plan.partial} ({holds}) in {plan.bag.name}/'
            f'{plan.bag.name}.mcap, an MCAP without index; see {PARTIAL_NOTE} there. '
            f'{first} its complete chunks '
            f'into a readable bag with: {again}  (or delete it and run again)')


# ------------------------------------------------------------------------- topics

def output_namespace(image_topic: str, msgtype: str) -> str:
    """Where the outputs go: next to the image topic (``/cam/color/image_raw`` ->
    ``/cam/color``); a CompressedImage's ``/compressed`` suffix is the transport's."""
    base = image_topic.rstrip('/')
    if msgtype == 'sensor_msgs/msg/CompressedImage' and base.endswith('/compressed'):
        base = base[:-len('/compressed')]
    namespace = base.rsplit('/', 1)[0]
    return namespace or '/'


def output_topics(namespace: str, colormap: bool, objects: bool = False,
                  uncertainty: bool = False) -> dict[str, str]:
    names = [n for n in OUTPUT_TYPES if (colormap or n != 'depth/colormap')
             and (uncertainty or n != 'depth/uncertainty')
             and (objects or n not in OBJECT_OUTPUTS)]
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
    beside the image, else the CameraInfo topic sharing the longest namespace with it,
    which :func:`check_camera_info` then accepts only if its first message matches the
    first image (frame_id and size).
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


def sibling_camera_info(image_topic: str, msgtype: str) -> str:
    """The ROS convention: ``camera_info`` beside the image (``/cam/image_raw`` ->
    ``/cam/camera_info``)."""
    return f'{output_namespace(image_topic, msgtype).rstrip("/")}/camera_info'


def _first_readable(reader, topic: str, describe: Callable) -> tuple | None:
    """``describe(message)`` of the first readable of the first few messages on ``topic``."""
    conns = [c for c in reader.connections if c.topic == topic]
    try:
        messages = reader.messages(connections=conns)
        with contextlib.closing(messages):
            for index, (conn, _, raw) in enumerate(messages):
                if index >= CAMERA_INFO_PEEK:
                    break
                try:
                    return describe(reader.deserialize(raw, conn.msgtype))
                except Exception:  # noqa: BLE001 - corrupt: the run reports it, try the next
                    continue
    except Exception:  # noqa: BLE001 - a damaged file: the run reports it
        return None
    return None


def _image_facts(msg) -> tuple[str, tuple[int, int] | None]:
    if hasattr(msg, 'format'):  # CompressedImage: the size its header declares
        from depthclip_ros.io.encodings import encoded_image_size, ImageFormatError
        try:
            return msg.header.frame_id, encoded_image_size(bytes(msg.data))
        except ImageFormatError:
            return msg.header.frame_id, None
    return msg.header.frame_id, (int(msg.height), int(msg.width))


def _info_facts(msg) -> tuple[str, tuple[int, int]]:
    from depthclip_ros.ros.messages import image_size_of
    return msg.header.frame_id, tuple(int(v) for v in image_size_of(msg))


def _size(size) -> str:
    return f'{size[1]}x{size[0]}'


def check_camera_info(reader, image_topic: str, image_type: str, info_topic: str | None,
                      explicit: bool, warn: Callable[[str], None]) -> str:
    """Check that ``info_topic`` belongs to ``image_topic``; returns how it was chosen and
    what it describes (for the summary).

    The first readable image and CameraInfo are compared: another frame_id (both
    non-empty), another aspect ratio, or for a topic that is not beside the image another
    size, mean another camera. An automatic choice is then refused (:class:`BagError`); a
    topic given explicitly (``explicit``) is used with a warning. The nearest topic whose
    frame_id cannot be compared (empty) is used only with the image's exact size, and
    warned about.
    """
    from depthclip_ros.ros.messages import ASPECT_TOLERANCE

    if info_topic is None:
        return 'none in the bag'
    sibling = sibling_camera_info(image_topic, image_type)
    how = ('given with --camera-info-topic' if explicit else 'beside the image'
           if info_topic == sibling else f'the nearest CameraInfo topic; {sibling} is absent')
    info = _first_readable(reader, info_topic, _info_facts)
    if info is None:
        return f'{info_topic} ({how}; no readable message)'
    info_frame, info_size = info
    described = f'{info_topic} ({how}; {_size(info_size)}, frame_id {info_frame!r})'
    image = _first_readable(reader, image_topic, _image_facts)
    if image is None:
        return described
    image_frame, image_size = image
    wrong = []
    if info_frame and image_frame and info_frame != image_frame:
        wrong.append(f'frame_id {info_frame!r}, the images {image_frame!r}')
    if image_size and info_size != image_size and min(info_size) > 0:
        ratio = (image_size[1] / image_size[0]) / (info_size[1] / info_size[0])
        if abs(ratio - 1.0) > ASPECT_TOLERANCE:
            wrong.append(f'size {_size(info_size)}, the images {_size(image_size)} (another '
                         f'aspect ratio)')
        elif explicit or info_topic != sibling:
            wrong.append(f'size {_size(info_size)}, the images {_size(image_size)}')
        else:
            described += f", scaled to the images' {_size(image_size)}"
    if wrong:
        text = (f'CameraInfo {info_topic} ({how}) does not match the first image on '
                f'{image_topic}: {"; ".join(wrong)}')
        if not explicit:
            raise BagError(f"{text}. It looks like another camera's, whose intrinsics would "
                           f'give wrong metres; pass --camera-info-topic {info_topic} to use '
                           f'it anyway, name the right one with --camera-info-topic, or run '
                           f'without CameraInfo with --fallback-hfov-deg')
        warn(f'{text}; using it because it was given with --camera-info-topic (a CameraInfo '
             f'of another size is scaled when the aspect ratio matches)')
    elif not explicit and info_topic != sibling and not (info_frame and image_frame):
        warn(f'CameraInfo {info_topic} is not beside {image_topic} ({sibling} is absent) and '
             f'its frame_id cannot be compared (empty); using it as the nearest CameraInfo '
             f"topic of the images' size {_size(info_size)}; pass --camera-info-topic to "
             f'choose another')
    return described


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
        if not _valid_ros2_topic(image_topic):
            raise BagError(f'{image_topic!r} is not a valid ROS 2 topic name')
        report.camera_info_topic = chosen_info
        report.camera_info_choice = check_camera_info(
            reader, image_topic, image_type, chosen_info, info_topic is not None, problem)
        copied = [c for c in reader.connections if _valid_ros2_topic(c.topic)]
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
        with _StopRequest() as stop:
            _start_partial(plan, recovering=False)
            _write_bag(plan, reader, copied, pipeline, report, problem, stop, image_type,
                       colormap, on_frame)
            report.interrupted = stop.requested
            _finish(plan, report, problem)
    finally:
        reader.close()
        report.seconds = time.perf_counter() - start
    return report


def _write_bag(plan: OutputPlan, reader, copied, pipeline: DepthPipeline,
               report: BagReport, problem, stop: _StopRequest, image_type: str,
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
            background = _WriterThread(writer)
            objects = bool(report.object_queries)
            want = Wanted(colormap=colormap,
                          uncertainty='depth/uncertainty' in report.output_topics,
                          markers=objects, object_points=objects, labels=objects)
            run = _Run(pipeline, background, report, problem, report.image_topic,
                       image_type, report.camera_info_topic, want, out_conns, connmap,
                       convert)
            messages = reader.messages(connections=copied)
            try:
                while not stop.requested:
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
            _discard_partial(plan)
            raise BagWriteError(
                f'cannot write {plan.bag} ({type(error).__name__}: {error}); nothing was '
                f'written, and {plan.destination} is '
                f'{"unchanged" if plan.replace else "not created"}', None, report) from error
        holds = (f'{report.messages_written} messages of the first {report.frames_seen} '
                 f'frames were handed to it, those in its complete 1 MiB chunks are on disk')
        again = (f'depthclip-ros bag --recover {plan.partial} {plan.destination}'
                 f'{" --overwrite" if plan.replace else ""}')
        raise BagWriteError(_kept_as_partial(plan, error, holds, again), plan.partial,
                            report) from error
    except BaseException:
        if background is None or not background.written:
            _discard_partial(plan)
        raise


def _finish(plan: OutputPlan, report: BagReport, problem) -> None:
    try:
        report.replaced = _move_into_place(plan, problem)
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


@dataclass
class RecoveryReport:
    """What :func:`recover_partial` copied."""

    source_file: Path | None = None
    messages: int = 0
    per_topic: dict[str, int] = field(default_factory=dict)
    complete: bool = False  # the MCAP had its footer: nothing was missing
    stopped: str | None = None  # why reading stopped early (the truncated end)
    interrupted: bool = False  # SIGINT/SIGTERM: the output holds what was copied
    output: Path | None = None
    replaced: bool = False


def _partial_mcap(source: Path) -> Path:
    """The MCAP file of a partial output folder (or of a bag folder, or the file)."""
    if source.is_file():
        return source
    found = [p for p in sorted(source.glob('*.mcap')) + sorted(source.glob('*/*.mcap'))
             if not p.parent.name.endswith(REPLACED_SUFFIX)]
    if len(found) != 1:
        raise BagError(f'{source} holds {len(found)} .mcap files '
                       f'({", ".join(str(p) for p in found) or "none"}); give the one to '
                       f'recover')
    return found[0]


def recover_partial(source: Path, destination: Path, *, overwrite: bool = False,
                    on_problem: Callable[[str], None] | None = None) -> RecoveryReport:
    """Copy the complete messages of a partial output (an MCAP cut off by a kill or a
    failed write: no index, no summary) into a new, complete rosbag2 MCAP bag.

    The file is read from its start with the ``mcap`` package's stream reader, which needs
    no index: every message of a chunk that reached the disk whole is copied with its
    topic, type, definition and log time; reading stops at the truncated end. The source
    is only read; the output is written the same way as :func:`process_bag`'s (into
    ``OUTPUT.recovery-partial/``, moved into place when complete).
    """
    from mcap.exceptions import McapError
    from mcap.records import Channel, Footer, Message, Schema
    from mcap.stream_reader import StreamReader
    from rosbags.rosbag2.metadata import parse_qos
    from rosbags.typesys import get_types_from_idl, get_types_from_msg

    source = Path(source)
    plan = plan_output(source, destination, overwrite, RECOVERY_SUFFIX)
    report = RecoveryReport(source_file=_partial_mcap(source))
    problem = on_problem or (lambda text: log.warning(text))
    schemas: dict[int, Schema] = {}
    conns: dict[int, object] = {}
    try:
        stream = open(report.source_file, 'rb')  # noqa: SIM115 - closed below
    except OSError as error:
        raise BagError(f'cannot read {report.source_file}: {error}') from None
    with stream, _StopRequest() as stop:
        _start_partial(plan, recovering=True)
        try:
            with Writer(plan.bag, version=METADATA_VERSION,
                        storage_plugin=StoragePlugin.MCAP) as writer:
                records = StreamReader(stream, record_size_limit=1 << 31).records
                while not stop.requested:
                    try:
                        record = next(records, None)
                    except (McapError, EOFError, ValueError, struct.error, OSError) as error:
                        report.stopped = f'{type(error).__name__}: {error}'
                        break
                    if record is None:
                        break
                    if isinstance(record, Schema):
                        schemas[record.id] = record
                    elif isinstance(record, Channel) and record.id not in conns:
                        # (a complete file repeats its channels in the summary section)
                        schema = schemas.get(record.schema_id)
                        if schema is None:
                            problem(f'channel {record.topic} has no schema; skipped')
                            continue
                        text = schema.data.decode()
                        store = get_typestore(Stores.EMPTY)  # the file's own definitions
                        store.register(get_types_from_idl(text) if schema.encoding ==
                                       'ros2idl' else get_types_from_msg(text, schema.name))
                        try:
                            qos = parse_qos(record.metadata.get('offered_qos_profiles', ''))
                        except Exception:  # noqa: BLE001 - QoS is optional
                            qos = []
                        conns[record.id] = writer.add_connection(
                            record.topic, schema.name, typestore=store,
                            serialization_format=record.message_encoding,
                            offered_qos_profiles=qos)
                    elif isinstance(record, Message) and record.channel_id in conns:
                        conn = conns[record.channel_id]
                        writer.write(conn, record.log_time, record.data)
                        report.messages += 1
                        report.per_topic[conn.topic] = report.per_topic.get(conn.topic,
                                                                             0) + 1
                    elif isinstance(record, Footer):
                        report.complete = True
        except (OSError, WriterError) as error:
            if not report.messages:
                _discard_partial(plan)
                raise BagWriteError(f'cannot write {plan.bag} ({error}); nothing was '
                                    f'written') from error
            holds = f'{report.messages} recovered messages'
            raise BagWriteError(_kept_as_partial(plan, error, holds, again=(
                f'depthclip-ros bag --recover {source} {plan.destination} --overwrite')),
                plan.partial) from error
        except BaseException:
            if not report.messages:
                _discard_partial(plan)
            raise
        report.interrupted = stop.requested
        if not report.messages:
            _discard_partial(plan)
            raise BagWriteError(f'nothing to recover in {report.source_file}: no complete '
                                f'chunk ({report.stopped or "no messages"}); '
                                f'{plan.destination} was not written')
        try:
            report.replaced = _move_into_place(plan, problem)
        except (OSError, BagError) as error:
            raise BagWriteError(f'the recovered bag is complete in {plan.bag} but could not '
                                f'be moved to {plan.destination}: {error}; move it there '
                                f'yourself', plan.partial) from None
    report.output = plan.destination
    return report

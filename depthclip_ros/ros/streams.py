"""One camera served by ``depth_node``: its topics, pipeline, waiting frame, publishers and
statistics. The node holds one per camera (the ``cameras`` parameter; a single unnamed
one by default) and batches their waiting frames into one forward pass.

No rclpy here (but for ROS's name rules, imported where the camera names are checked): the
node creates the publishers and subscriptions and stores them.
"""

from __future__ import annotations

from collections import deque, OrderedDict
import time

STATS_WINDOW = 100
MAX_CAMERAS = 16  # one batched forward holds one frame of each
# The per-camera output publishers, attribute names (``None`` while not configured).
OUTPUT_PUBLISHERS = ('pub_depth', 'pub_info', 'pub_points', 'pub_colormap', 'pub_uncertainty',
                     'pub_markers', 'pub_object_points', 'pub_labels', 'pub_labels_info',
                     'pub_detections')
COUNTS = ('received', 'processed', 'dropped', 'rejected', 'skipped_no_subscribers', 'failed',
          'objects_found', 'objects_skipped')


# Every topic the node has under a camera's namespace, relative to it: what the camera
# names are checked against (no camera inside another's topics). test_node_cameras checks
# that the node creates no other.
INPUT_TOPICS = ('image', 'image/compressed', 'camera_info', 'objects/masks')
OUTPUT_TOPICS = ('depth/image', 'depth/camera_info', 'depth/uncertainty', 'depth/colormap',
                 'points', 'objects/markers', 'objects/points', 'objects/labels',
                 'objects/camera_info', 'objects/detections')
CAMERA_TOPICS = INPUT_TOPICS + OUTPUT_TOPICS


def check_camera_names(names, namespace: str = '/') -> tuple[str, ...]:
    """The ``cameras`` parameter: at most ``MAX_CAMERAS`` distinct relative namespaces
    (``front``, ``arm/wrist``) that ROS accepts (its own name rules, rclpy's validation,
    every topic of the camera under the node's ``namespace`` within ROS's length limit),
    none inside another's topics (``x`` and ``x/depth``: ``x/depth/image`` would be both
    cameras' topic). Raises ``ValueError``, one line naming the camera and the rule."""
    names = tuple(names)
    if len(names) > MAX_CAMERAS:
        raise ValueError(f'cameras: at most {MAX_CAMERAS}, got {len(names)}')
    for name in names:
        _check_camera_name(name, namespace)
    seen = set()
    for name in names:
        if name in seen:
            raise ValueError(f'cameras must be distinct: {_shown(name)} is given twice')
        seen.add(name)
    for index, name in enumerate(names):
        for other in names[index + 1:]:
            shared = _shared_topic(name, other)
            if shared:
                raise ValueError(
                    f'cameras: {_shown(name)} and {_shown(other)} overlap: {shared}; choose '
                    f"names where neither lies in the other's topics (e.g. "
                    f"{max(name, other, key=len).replace('/', '_')!r})")
    return names


def check_resolved_topics(resolved: dict[str, dict[str, str]]) -> None:
    """The topics of every camera as the node resolves them (namespace and remapping
    applied): ``{camera name: {topic (CAMERA_TOPICS): full name}}``. No two of them may
    be one topic, so that no camera consumes its own or another camera's outputs or
    inputs, and no two outputs mix; only one output of several cameras may share a topic
    (e.g. every camera's ``objects/markers`` remapped to one). Raises ``ValueError``, one
    line naming both and the topic."""
    users: dict[str, tuple[str, str]] = {}
    for camera, topics in resolved.items():
        for topic, full in topics.items():
            other = users.setdefault(full, (camera, topic))
            if other == (camera, topic) or (other[1] == topic and topic in OUTPUT_TOPICS):
                continue
            raise ValueError(f'{_topic_of(*other)} and {_topic_of(camera, topic)} are both '
                             f'the topic {full!r} (namespace and remapping applied): no camera '
                             f"may read its own or another camera's outputs, share an input or "
                             f'mix two outputs; remap them apart')


def _topic_of(camera: str, topic: str) -> str:
    return f'{topic} of camera {camera!r}' if camera else topic


def _shared_topic(one: str, two: str) -> str | None:
    """How the topics of cameras ``one`` and ``two`` meet (one topic of both, or one a
    namespace holding the other's), or ``None``."""
    for first in (f'{one}/{topic}' for topic in CAMERA_TOPICS):
        for second in (f'{two}/{topic}' for topic in CAMERA_TOPICS):
            if first == second:
                return f'{first} would be a topic of both'
            for outer, inner in ((first, second), (second, first)):
                if inner.startswith(f'{outer}/'):
                    return f'topic {outer} would hold topic {inner}'
    return None


def _check_camera_name(name: str, namespace: str) -> None:
    """One camera name by ROS's own rules, rclpy's validation (imported here only: the rule
    is ROS's, and importing this module needs no ROS install)."""
    from rclpy.validate_full_topic_name import validate_full_topic_name
    from rclpy.validate_namespace import validate_namespace
    if not name:
        raise ValueError("cameras: an empty name is not a namespace (for one camera on the "
                         "node's own topics leave cameras empty)")
    if name.startswith('/'):
        raise ValueError(f'cameras: {_shown(name)} must be a relative namespace (no leading '
                         f"'/'): a camera's topics stay under the node's namespace")
    refused = _refused(validate_namespace, f'/{name}')
    if refused and not refused[1]:
        raise ValueError(f'cameras: {_shown(name)} is not a relative ROS namespace '
                         f'({refused[0]}; ROS names are ASCII letters, digits and _, parts '
                         f'separated by single /, none starting with a digit)')
    base = namespace.rstrip('/')
    for topic in CAMERA_TOPICS:
        full = f'{base}/{name}/{topic}'
        refused = _refused(validate_full_topic_name, full)
        if refused:
            shown = repr(full) if len(full) <= 60 else f'{full[:40]!r}...'
            raise ValueError(f'cameras: {_shown(name)} makes the topic {shown} '
                             f'({len(full)} characters), which ROS refuses: {refused[0]}')


def _refused(validate, name: str) -> tuple[str, bool] | None:
    """``None`` if rclpy's ``validate`` accepts ``name``, else its reason in one line and
    whether it is the length alone (a name of plain letters as long is refused too)."""
    from rclpy.exceptions import NameValidationException
    try:
        validate(name)
    except NameValidationException as error:
        # rclpy's message: "Invalid <kind>: <reason>:", the name, a caret under the fault
        reason = str(error).splitlines()[0].split(': ', 1)[-1].rstrip(':')
        try:
            validate('/' + 'a' * (len(name) - 1))
        except NameValidationException:
            return reason, True
        return reason, False
    return None


def _shown(name: str) -> str:
    return repr(name) if len(name) <= 60 else f'{name[:40]!r}... ({len(name)} characters)'


class CameraStream:
    """A camera: ``name`` (``''`` for the node's own relative topics) and its state."""

    def __init__(self, name: str = ''):
        self.name = name
        self.prefix = f'{name}/' if name else ''
        self.pipeline = None  # DepthPipeline, once configured
        for attribute in OUTPUT_PUBLISHERS:
            setattr(self, attribute, None)
        self.subscriptions: list = []
        self.slot = None  # (message, receive time) of the newest waiting frame
        self.masks: OrderedDict[int, object] = OrderedDict()  # stamp (ns) -> label image
        # stamp (ns) -> (Frame, deadline): frames whose depth is out, waiting for their
        # object step (a label image on objects/masks), oldest first
        self.objects_waiting: OrderedDict[int, tuple] = OrderedDict()
        self.objects_found: list = []  # the latest frame's ObjectResults
        self.counts = dict.fromkeys(COUNTS, 0)
        self.latency_ms: deque = deque(maxlen=STATS_WINDOW)
        self.stage_ms: dict[str, deque] = {}
        self.sigma_median_m: deque = deque(maxlen=STATS_WINDOW)  # per frame, token grid
        self.scene = None  # the SceneEstimate of the latest frame (scene-adaptive bins)
        self.bins_m = None  # the canonical bins of the latest frame
        self.last_problem: str | None = None
        self.last_received = 0.0  # monotonic times, for the stall check
        self.last_output = time.monotonic()
        now = time.monotonic()
        self.rate_marks = {'received': (now, 0), 'processed': (now, 0)}

    @property
    def label(self) -> str:
        """How messages name this camera: ``camera 'front': `` (empty for the only one)."""
        return f"camera '{self.name}': " if self.name else ''

    def topic(self, name: str) -> str:
        """``name`` under this camera's namespace (relative)."""
        return f'{self.prefix}{name}'

    def rate(self, key: str) -> float:
        """Frames per second of ``counts[key]`` since the last call."""
        now = time.monotonic()
        then, count_then = self.rate_marks[key]
        count = self.counts[key]
        self.rate_marks[key] = (now, count)
        return (count - count_then) / max(now - then, 1e-6)

    def record(self, samples: dict[str, list[float]]) -> None:
        """Per-stage milliseconds of one frame (a StageTimer's samples)."""
        for name, values in samples.items():
            self.stage_ms.setdefault(name, deque(maxlen=STATS_WINDOW)).append(sum(values))

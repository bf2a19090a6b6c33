"""One camera served by ``depth_node``: its topics, pipeline, waiting frame, publishers and
statistics. The node holds one per camera (the ``cameras`` parameter; a single unnamed
one by default) and batches their waiting frames into one forward pass.

No rclpy here: the node creates the publishers and subscriptions and stores them.
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


def check_camera_names(names) -> tuple[str, ...]:
    """The ``cameras`` parameter: distinct relative namespaces (``front``, ``arm/wrist``);
    raises ``ValueError``."""
    names = tuple(names)
    if len(names) > MAX_CAMERAS:
        raise ValueError(f'cameras: at most {MAX_CAMERAS}, got {len(names)}')
    for name in names:
        parts = name.split('/')
        if not name or name.startswith('/') or name.endswith('/') or not all(
                part and (part[0].isalpha() or part[0] == '_')
                and all(c.isalnum() or c == '_' for c in part) for part in parts):
            raise ValueError(f'cameras: {name!r} is not a relative namespace (letters, digits '
                             f'and _, parts separated by /, not starting with a digit)')
    if len(set(names)) != len(names):
        raise ValueError(f'cameras must be distinct, got {list(names)}')
    return names


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

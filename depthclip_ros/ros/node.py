"""depth_node: camera Image + CameraInfo in, metric depth, its CameraInfo and a cloud out.

Topics (relative, remappable):

* subscribes ``image`` (sensor_msgs/Image) or, with ``image_transport: compressed``,
  ``<image>/compressed`` (sensor_msgs/CompressedImage, image_transport's naming), and
  ``camera_info`` (sensor_msgs/CameraInfo);
* publishes ``depth/image`` (32FC1 metres, NaN invalid), ``depth/camera_info`` beside it
  (image_transport pairs them), ``depth/uncertainty`` (32FC1 metres: the standard
  deviation of each pixel's bin distribution), ``points`` (organised PointCloud2; points
  more uncertain than ``max_uncertainty_m`` are NaN), ``depth/colormap`` (rgb8, when
  ``publish_colormap``) and ``/diagnostics`` at 1 Hz (:mod:`depthclip_ros.ros.diagnostics`).
  Every output carries the input image's header.
* with ``object_queries`` set: ``objects/markers`` (MarkerArray: a box and a label per
  query), ``objects/points`` (PointCloud2 x, y, z, query), ``objects/labels`` (mono16,
  query index + 1, aligned with ``depth/image``; its sibling ``objects/camera_info`` is a
  copy of ``depth/camera_info``) and, where vision_msgs is installed,
  ``objects/detections`` (Detection3DArray); candidates from the built-in proposals or
  from label images on ``objects/masks`` (matched by stamp). The object step runs after
  the depth of every camera's frame is published, and a frame waiting for its label image
  waits on its own (:mod:`depthclip_ros.ros.worker`): it never delays depth, its own
  camera's or another's.

With ``cameras`` (e.g. ``[front, left]``) one node serves several cameras: camera ``c``'s
topics are the above under ``c/``, and the waiting frames of all cameras run as one batched
forward.

Inference runs on a worker thread (:mod:`depthclip_ros.ros.worker`); the per-frame work is
:class:`~depthclip_ros.ros.pipeline.DepthPipeline`, shared with the bag tool.
:class:`DepthNode` subscribes from construction; :class:`DepthLifecycleNode` is the same
node under a lifecycle manager (``depth_lifecycle_node``). The process around them (signals,
spinning, exit) is :mod:`depthclip_ros.ros.entry`.
"""

from __future__ import annotations

from dataclasses import dataclass
import functools
import threading
from typing import Callable

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

from depthclip_ros.engine.config import HeadConfig, ModelConfig, RANDOM_WEIGHTS_BANNER
from depthclip_ros.engine.depthclip import DepthCLIP
from depthclip_ros.engine.weights import WeightsError
from depthclip_ros.ros.configs import (
    head_from_parameters,
    head_or_mismatch,
    model_from_parameters,
)
from depthclip_ros.ros.diagnostics import publish_diagnostics
from depthclip_ros.ros.hints import with_hint
from depthclip_ros.ros.parameters import (
    check_read_only,
    declare_parameters,
    HEAD_PARAMETERS,
    PARAMETER_NAMES,
    unknown_parameters,
    validate,
)
from depthclip_ros.ros.pipeline import DepthPipeline, ObjectSettings, OutputSettings
from depthclip_ros.ros.streams import (
    CAMERA_TOPICS,
    CameraStream,
    check_camera_names,
    check_resolved_topics,
    OUTPUT_PUBLISHERS,
)
from depthclip_ros.ros.worker import FrameWorker
from depthclip_ros.timing import Throttle

THROTTLE_S = 5.0


@dataclass(frozen=True)
class NodeConfigs:
    """What the node builds from its parameter values (:func:`node_configs`)."""

    model: ModelConfig
    head: HeadConfig | None  # None while prompts and bins disagree in count (mismatch)
    mismatch: str | None
    output: OutputSettings
    objects: ObjectSettings


def node_configs(values: dict, check_head: Callable[[HeadConfig], None] | None = None,
                 allow_mismatch: bool = False) -> NodeConfigs:
    """Every configuration the node runs on, from its parameter values, each checked
    (raises ``ValueError``): the one place for both node classes, at configure time and
    for a parameter change. ``allow_mismatch``: prompts and bins may disagree in count
    for a while (see :func:`~depthclip_ros.ros.configs.head_or_mismatch`); at configure
    time they may not. ``check_head``: the loaded engine's check of the prompts."""
    validate(values)
    model = model_from_parameters(values)
    output = OutputSettings.from_parameters(values)
    objects = ObjectSettings.from_parameters(values)
    head, mismatch = head_or_mismatch(values, check_head)  # each value's rules first
    if mismatch and not allow_mismatch:
        head_from_parameters(values)  # the counts must agree (raises naming them)
    return NodeConfigs(model, head, mismatch, output, objects)


class DepthNodeCore(FrameWorker):
    """What ``depth_node`` does, shared by the plain node (:class:`DepthNode`) and the
    managed one (:class:`DepthLifecycleNode`); mixed into an rclpy ``Node``.

    The steps, which the two nodes call at different moments: :meth:`_init_core`
    (parameters, cameras, diagnostics), :meth:`_configure` (engine and pipeline objects,
    output publishers), :meth:`_load` (weights, prompts), :meth:`_subscribe` and
    :meth:`_start_worker` (frames flow), and back: :meth:`_stop_worker`,
    :meth:`_unsubscribe`, :meth:`_release`.

    Cameras: one :class:`~depthclip_ros.ros.streams.CameraStream` per entry of ``cameras``
    (topics under its namespace), or one on the node's own relative topics, in
    ``streams``. Each keeps only its newest waiting frame; the worker
    (:class:`~depthclip_ros.ros.worker.FrameWorker`) takes every camera's waiting frame and
    runs them as one batched forward, so no camera waits for another and none can starve
    another.
    """

    def _init_core(self) -> None:
        declare_parameters(self)
        p = self._params = {name: self.get_parameter(name).value for name in PARAMETER_NAMES}
        validate(p)
        unknown = unknown_parameters(getattr(self, '_parameter_overrides', {}))
        if unknown:  # ROS drops them; a misspelt name must not be lost silently
            self.get_logger().warning(unknown)
        # with the node's namespace: every camera topic within ROS's length limit
        check_camera_names(p['cameras'], self.get_namespace())
        self.streams = [CameraStream(name) for name in p['cameras']] or [CameraStream()]
        check_resolved_topics({stream.name: self._resolved_topics(stream)
                               for stream in self.streams})
        self.engine: DepthCLIP | None = None
        self._next_head: HeadConfig | None = None  # accepted, applied by the worker
        self._head_mismatch: str | None = None  # prompts and bins waiting to agree
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._lock = threading.Condition()
        self._running = False
        self._worker: threading.Thread | None = None
        self._throttle = Throttle(THROTTLE_S)
        self.pub_diagnostics = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.create_timer(1.0, functools.partial(publish_diagnostics, self))

    def _resolved_topics(self, stream: CameraStream) -> dict[str, str]:
        """Every topic of ``stream`` (CAMERA_TOPICS) as the node resolves it: namespace and
        remapping applied (the compressed input follows the image topic's remapping)."""
        out = {name: self.resolve_topic_name(stream.topic(name)) for name in CAMERA_TOPICS
               if name != 'image/compressed'}
        out['image/compressed'] = f'{out["image"]}/compressed'
        return out

    def _configure(self, create_publisher) -> None:
        """The engine (not loaded), one pipeline and the output publishers per camera."""
        p = self._params
        configs = node_configs(p)
        self.engine = DepthCLIP(configs.model, configs.head)
        pub_qos = QoSProfile(depth=p['queue_depth'],
                             reliability=ReliabilityPolicy.RELIABLE
                             if p['publisher_qos'] == 'reliable'
                             else ReliabilityPolicy.BEST_EFFORT)
        from visualization_msgs.msg import MarkerArray
        detections = _detection_type()
        for stream in self.streams:
            def publish(kind, name, stream=stream):
                return create_publisher(kind, stream.topic(name), pub_qos)
            stream.pub_depth = publish(Image, 'depth/image')
            stream.pub_info = publish(CameraInfo, 'depth/camera_info')
            stream.pub_points = publish(PointCloud2, 'points')
            stream.pub_colormap = (publish(Image, 'depth/colormap')
                                   if p['publish_colormap'] else None)
            stream.pub_uncertainty = publish(Image, 'depth/uncertainty')
            stream.pub_markers = publish(MarkerArray, 'objects/markers')
            stream.pub_object_points = publish(PointCloud2, 'objects/points')
            stream.pub_labels = publish(Image, 'objects/labels')
            stream.pub_labels_info = publish(CameraInfo, 'objects/camera_info')
            stream.pub_detections = (publish(detections, 'objects/detections')
                                     if detections is not None else None)
            image = self.resolve_topic_name(stream.topic('image'))
            stream.pipeline = DepthPipeline(
                self.engine, configs.output,
                topics={'image': image, 'image/compressed': f'{image}/compressed',
                        'camera_info': self.resolve_topic_name(stream.topic('camera_info')),
                        'objects/masks': self.resolve_topic_name(
                            stream.topic('objects/masks'))},
                warn=functools.partial(self._warn, stream=stream),
                objects=configs.objects)

    def _load(self) -> None:
        """Read the weights and encode the prompts (may raise ``WeightsError``,
        ``ValueError``)."""
        self.engine.load()
        if self.engine.random_weights:
            self.get_logger().warning(RANDOM_WEIGHTS_BANNER)
        cameras = ', '.join(s.name for s in self.streams if s.name)
        self.get_logger().info(f'DepthCLIP {self.engine.config.model} '
                               f'({self.engine.config.pretrained}) on '
                               f'{self.engine.describe_device()}, '
                               f'{self.engine.config.feature_mode} mode, input '
                               f'{self.engine.config.input_size}'
                               + (f'; cameras {cameras}' if cameras else ''))

    def _subscribe(self) -> None:
        """Per camera, ``camera_info`` and the image transport chosen (image_transport's
        naming: the compressed stream of image topic T is ``T/compressed``, so one remap
        moves both), and ``objects/masks``."""
        p = self._params
        qos = (qos_profile_sensor_data if p['subscriber_qos'] == 'sensor_data'
               else QoSProfile(depth=p['queue_depth'], reliability=ReliabilityPolicy.RELIABLE))
        subscribe = self.create_subscription
        for stream in self.streams:
            on_image = functools.partial(self._on_image, stream)
            made = [subscribe(CameraInfo, stream.topic('camera_info'),
                              stream.pipeline.on_camera_info, qos)]
            if p['image_transport'] == 'raw':
                made.append(subscribe(Image, stream.topic('image'), on_image, qos))
            else:
                made.append(subscribe(CompressedImage,
                                      stream.pipeline.topics['image/compressed'], on_image,
                                      qos))
            made.append(subscribe(Image, stream.topic('objects/masks'),
                                  functools.partial(self._on_masks, stream), qos))
            stream.subscriptions = made

    def _unsubscribe(self) -> None:
        for stream in self.streams:
            for subscription in stream.subscriptions:
                self.destroy_subscription(subscription)
            stream.subscriptions = []

    def _release(self) -> None:
        """Forget the model (and its GPU memory): the engine's own :meth:`release`."""
        engine, self.engine = self.engine, None
        for stream in self.streams:
            if stream.pipeline is not None:
                stream.pipeline.engine = None
            stream.pipeline = None
        if engine is not None:
            engine.release()

    def _on_set_parameters(self, parameters):
        """Accept a change only if everything it needs can be built from it.

        Distance prompts and bins may arrive one at a time (two ``ros2 param set`` calls,
        or ``ros2 param load``, which sets each parameter on its own): a count mismatch
        between them is accepted when each is valid alone; the node keeps running on the
        last consistent head, reports the mismatch, and applies both once they agree.
        """
        from rcl_interfaces.msg import SetParametersResult
        proposed = dict(self._params)
        changes = {param.name: param.value for param in parameters}
        proposed.update(changes)
        try:
            check_read_only(self._params, changes)
            configs = node_configs(proposed, self._check_prompts, allow_mismatch=True)
            self._check_queries(configs.objects.queries)
        except (ValueError, TypeError) as error:
            return SetParametersResult(successful=False, reason=str(error))
        self._params = proposed
        for stream in self.streams:
            if stream.pipeline is not None:
                stream.pipeline.settings = configs.output
                stream.pipeline.objects = configs.objects
        if any(param.name in HEAD_PARAMETERS for param in parameters):
            with self._lock:
                self._head_mismatch = configs.mismatch
                if configs.head is not None:
                    self._next_head = configs.head  # applied by the worker between frames
                    self._lock.notify()
            if configs.mismatch:
                self._log('warning', configs.mismatch)
        return SetParametersResult(successful=True)

    def _check_prompts(self, head: HeadConfig) -> None:
        if self.engine is not None and self.engine.loaded:
            self.engine.check_head(head)  # tokenises: prompts within CLIP's context

    def _check_queries(self, queries) -> None:
        """Every query within CLIP's text context (tokenising only)."""
        if self.engine is not None and self.engine.loaded:
            for query in queries:
                self.engine.check_text(query, 'query')

    # ------------------------------------------------------------------ reporting
    def _warn(self, text: str, stream: CameraStream | None = None) -> None:
        self._log('warning', f'{stream.label if stream else ""}{text}')

    def _problem(self, stream: CameraStream, level: str, text: str) -> None:
        """A frame-level problem of ``stream``: remembered for /diagnostics and logged
        (throttled); silent once the node is stopping (a frame abandoned at shutdown is
        no error)."""
        if not self._running:
            return
        stream.last_problem = text
        self._log(level, f'{stream.label}{text}')

    def _log(self, level: str, text: str) -> None:
        """Log ``text`` at most once per THROTTLE_S for each kind of problem (rclpy's own
        throttle is per call site, which would let one problem hide another)."""
        if not self._throttle(text):
            return
        if level == 'error':  # rclpy fixes a call site's severity: one call per level
            self.get_logger().error(text)
        else:
            self.get_logger().warning(text)


class DepthNode(DepthNodeCore, Node):
    """The DepthCLIP ROS 2 node, subscribed from construction. Call :meth:`load` (weights,
    worker) before spinning."""

    def __init__(self, **kwargs):
        Node.__init__(self, 'depth_node', **kwargs)
        self._init_core()
        self._configure(self.create_publisher)
        self._subscribe()

    def load(self) -> None:
        """Load the model (may raise ``WeightsError``/``ValueError``) and start the worker."""
        self._load()
        self._start_worker()

    def stop(self) -> None:
        self._stop_worker()


class DepthLifecycleNode(DepthNodeCore, LifecycleNode):
    """``depth_node`` as a managed node (REP 2002 states), for lifecycle managers such as
    Nav2's: configure validates the parameters and loads the model (a failure leaves it
    unconfigured, with the reason logged); activate subscribes and publishes; deactivate
    unsubscribes, stops the worker and drops the waiting frame; cleanup releases the model
    (and GPU memory); shutdown works from any state."""

    def __init__(self, **kwargs):
        LifecycleNode.__init__(self, 'depth_node', **kwargs)
        self._init_core()

    def on_configure(self, state) -> TransitionCallbackReturn:
        try:
            self._configure(self.create_lifecycle_publisher)
            self._load()
        except (WeightsError, ValueError, RuntimeError) as error:
            self.get_logger().error(f'configure failed, still unconfigured: '
                                    f'{with_hint(error)}')
            self._destroy_outputs()
            self._release()
            return TransitionCallbackReturn.FAILURE
        return super().on_configure(state)

    def on_activate(self, state) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # activates the lifecycle publishers
        self._start_worker()
        self._subscribe()
        return result

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        self._unsubscribe()
        self._stop_worker()
        return super().on_deactivate(state)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self._destroy_outputs()
        self._release()
        return super().on_cleanup(state)

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        self._unsubscribe()
        self._stop_worker()
        self._destroy_outputs()
        self._release()
        return super().on_shutdown(state)

    def stop(self) -> None:
        self._stop_worker()

    def _destroy_outputs(self) -> None:
        for stream in self.streams:
            for name in OUTPUT_PUBLISHERS:
                publisher = getattr(stream, name)
                if publisher is not None:
                    self.destroy_lifecycle_publisher(publisher)
                    setattr(stream, name, None)


def _detection_type():
    """vision_msgs/Detection3DArray where vision_msgs is installed (a ROS install), else
    ``None``: the node works without it."""
    try:
        from vision_msgs.msg import Detection3DArray
    except ImportError:
        return None
    return Detection3DArray

"""depth_node: camera Image + CameraInfo in, metric depth, its CameraInfo and a cloud out.

Topics (relative, remappable):

* subscribes ``image`` (sensor_msgs/Image) or, with ``image_transport: compressed``,
  ``<image>/compressed`` (sensor_msgs/CompressedImage, image_transport's naming), and
  ``camera_info`` (sensor_msgs/CameraInfo);
* publishes ``depth/image`` (32FC1 metres, NaN invalid), ``depth/camera_info`` beside it
  (image_transport pairs them), ``depth/uncertainty`` (32FC1 metres: the standard
  deviation of each pixel's bin distribution), ``points`` (organised PointCloud2; points
  more uncertain than ``max_uncertainty_m`` are NaN), ``depth/colormap`` (rgb8, when
  ``publish_colormap``) and ``/diagnostics`` at 1 Hz (with the median uncertainty and, with
  scene-adaptive bins, the scene and its probabilities). Every output carries the
  input image's header.
* with ``object_queries`` set: ``objects/markers`` (MarkerArray: a box and a label per
  query), ``objects/points`` (PointCloud2 x, y, z, query), ``objects/labels`` (mono16,
  query index + 1, aligned with ``depth/image``; its sibling ``objects/camera_info`` is a
  copy of ``depth/camera_info``) and, where vision_msgs is installed,
  ``objects/detections`` (Detection3DArray); candidates from the built-in proposals or
  from label images on ``objects/masks`` (matched by stamp). The object step runs after
  the frame's depth is published, so it never delays depth.

With ``cameras`` (e.g. ``[front, left]``) one node serves several cameras: camera ``c``'s
topics are the above under ``c/``, and the waiting frames of all cameras run as one batched
forward.

Inference runs on a worker thread: the subscription callbacks only store each camera's
newest frame (an older one still waiting is dropped and counted), so the executor never
stalls and latency cannot grow without bound. Outputs nobody subscribes to are not computed. The
per-frame work is :class:`~depthclip_ros.ros.pipeline.DepthPipeline`, shared with the bag tool.
:class:`DepthNode` subscribes from construction; :class:`DepthLifecycleNode` is the same
node under a lifecycle manager (``depth_lifecycle_node``).
"""

from __future__ import annotations

if __name__ == '__main__':  # python -m depthclip_ros.ros.node: signals handled from here on
    from depthclip_ros.allocator import keep_freed_memory
    from depthclip_ros.ros.shutdown import SHUTDOWN
    SHUTDOWN.install()
    keep_freed_memory()  # before numpy, torch and rclpy start threads (allocator.py)

import functools
import logging
import os
import statistics
import sys
import threading
import time

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
import torch

from depthclip_ros.allocator import keep_freed_memory
from depthclip_ros.engine.config import (
    check_scene_template,
    HeadConfig,
    ModelConfig,
    RANDOM_WEIGHTS_BANNER,
)
from depthclip_ros.engine.depthclip import DepthCLIP
from depthclip_ros.engine.weights import import_backend, WeightsError
from depthclip_ros.io.encodings import ImageFormatError
from depthclip_ros.ros.hints import with_hint
from depthclip_ros.ros.object_messages import labels_from_image
from depthclip_ros.ros.parameters import (
    check_read_only,
    declare_parameters,
    HEAD_PARAMETERS,
    PARAMETER_NAMES,
    PARAMETERS,
    validate,
)
from depthclip_ros.ros.pipeline import (
    DepthPipeline,
    FrameRejected,
    ObjectSettings,
    OutputSettings,
    Wanted,
)
from depthclip_ros.ros.shutdown import SHUTDOWN, StopRequested
from depthclip_ros.ros.streams import CameraStream, COUNTS, OUTPUT_PUBLISHERS
from depthclip_ros.timing import StageTimer, Throttle

THROTTLE_S = 5.0
SPIN_CHECK_S = 1.0  # the executor thread and the main thread re-check the stop flag
STALL_S = 5.0  # frames arriving but nothing published for this long: diagnostics ERROR
# Torch's thread count (OMP_NUM_THREADS, else the cores) when this module was imported: the
# inference worker's. ``depth_node`` runs every other thread that touches torch (the main
# thread loading the model, the executor thread) with one, so that only the worker's
# OpenMP team exists. A second team (the main thread's, left from loading) makes libgomp
# manage more threads than there are cores, and it then stops its threads spinning
# between operations: on the project's 2 cores the worker's threads went to sleep and were
# woken about 500 times per frame and the network ran 10-15% slower than in a process
# with one team (``depthclip-ros bench-node`` prints the node's network against a bare
# forward).
INFERENCE_THREADS = torch.get_num_threads()
_TORCH_THREADS_LOCK = threading.Lock()
WORKER_JOIN_S = 1.0  # at shutdown, wait this long for the frame in progress
MASKS_KEPT = 8  # label images on objects/masks remembered, newest stamps first


class DepthNodeCore:
    """What ``depth_node`` does, shared by the plain node (:class:`DepthNode`) and the
    managed one (:class:`DepthLifecycleNode`); mixed into an rclpy ``Node``.

    The steps, which the two nodes call at different moments: :meth:`_init_core`
    (parameters, cameras, diagnostics), :meth:`_configure` (engine and pipeline objects,
    output publishers), :meth:`_load` (weights, prompts), :meth:`_subscribe` and
    :meth:`_start_worker` (frames flow), and back: :meth:`_stop_worker`,
    :meth:`_unsubscribe`, :meth:`_release`.

    Cameras: one :class:`~depthclip_ros.ros.streams.CameraStream` per entry of ``cameras``
    (topics under its namespace), or one on the node's own relative topics. Each keeps only
    its newest waiting frame; the worker takes every camera's waiting frame and runs them
    as one batched forward, so no camera waits for another and none can starve another.
    """

    def _init_core(self) -> None:
        declare_parameters(self)
        p = self._params = {name: self.get_parameter(name).value for name in PARAMETER_NAMES}
        validate(p)
        self.streams = [CameraStream(name) for name in p['cameras']] or [CameraStream()]
        self.engine: DepthCLIP | None = None
        self._next_head: HeadConfig | None = None  # accepted, applied by the worker
        self._head_mismatch: str | None = None  # prompts and bins waiting to agree
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._lock = threading.Condition()
        self._running = False
        self._worker: threading.Thread | None = None
        self._throttle = Throttle(THROTTLE_S)
        from diagnostic_msgs.msg import DiagnosticArray
        self.pub_diagnostics = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.create_timer(1.0, self._publish_diagnostics)

    # The only camera's state, under the names a single-camera node has always had.
    pipeline = property(lambda self: self.streams[0].pipeline)
    objects_found = property(lambda self: self.streams[0].objects_found)
    _slot = property(lambda self: self.streams[0].slot)
    _last_problem = property(lambda self: self.streams[0].last_problem)
    _sigma_median_m = property(lambda self: self.streams[0].sigma_median_m)
    # and pub_depth, pub_info, ... (OUTPUT_PUBLISHERS): set below the class

    @property
    def counts(self) -> dict[str, int]:
        """Frame counts: the only camera's (live), or the sum over cameras (a copy)."""
        if len(self.streams) == 1:
            return self.streams[0].counts
        return {key: sum(s.counts[key] for s in self.streams) for key in COUNTS}

    def _configure(self, create_publisher) -> None:
        """The engine (not loaded), one pipeline and the output publishers per camera."""
        p = self._params
        validate(p)
        self.engine = DepthCLIP(
            ModelConfig(model=p['model'], pretrained=p['pretrained'], device=p['device'],
                        precision=p['precision'], feature_mode=p['feature_mode'],
                        input_size=tuple(p['input_size']), cuda_graphs=p['cuda_graphs'],
                        memory_format=p['memory_format']),
            head_from_parameters(p))
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
                self.engine, OutputSettings.from_parameters(p),
                topics={'image': image, 'image/compressed': f'{image}/compressed',
                        'camera_info': self.resolve_topic_name(stream.topic('camera_info')),
                        'objects/masks': self.resolve_topic_name(
                            stream.topic('objects/masks'))},
                warn=functools.partial(self._warn, stream=stream),
                objects=ObjectSettings.from_parameters(p))

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
        if p['use_compressed']:
            self.get_logger().warning(
                'use_compressed is deprecated: set image_transport to compressed (or raw); '
                'use_compressed: true keeps subscribing to both streams')
        for stream in self.streams:
            on_image = functools.partial(self._on_image, stream)
            made = [subscribe(CameraInfo, stream.topic('camera_info'),
                              stream.pipeline.on_camera_info, qos)]
            if p['image_transport'] == 'raw' or p['use_compressed']:
                made.append(subscribe(Image, stream.topic('image'), on_image, qos))
            if p['image_transport'] == 'compressed' or p['use_compressed']:
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

    def _start_worker(self) -> None:
        with self._lock:
            self._running = True
            for stream in self.streams:
                stream.slot = None
                stream.masks.clear()
                stream.last_output = time.monotonic()
        self._worker = threading.Thread(target=self._work, name='depthclip_inference',
                                        daemon=True)
        self._worker.start()

    def _stop_worker(self) -> None:
        """Stop the worker and drop the waiting frames: a batch in progress may finish
        within ``WORKER_JOIN_S``; one that takes longer (or a long prompt encoding) is
        abandoned, never waited for."""
        with self._lock:
            self._running = False
            for stream in self.streams:
                stream.slot = None
            self._lock.notify_all()
        if self._worker is not None and self._worker.is_alive():
            self._worker.join(timeout=WORKER_JOIN_S)

    def _release(self) -> None:
        """Forget the model (and its GPU memory)."""
        self.engine = None
        for stream in self.streams:
            if stream.pipeline is not None:
                stream.pipeline.engine = None
            stream.pipeline = None
        import gc
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ callbacks
    def _on_image(self, stream: CameraStream, msg) -> None:
        with self._lock:
            stream.counts['received'] += 1
            stream.last_received = time.monotonic()
            if stream.slot is not None:
                stream.counts['dropped'] += 1
            stream.slot = (msg, time.monotonic())
            self._lock.notify()

    def _on_masks(self, stream: CameraStream, msg: Image) -> None:
        """A label image for the object step: decoded and kept (bounded) by stamp."""
        topic = (stream.pipeline.topics['objects/masks'] if stream.pipeline
                 else stream.topic('objects/masks'))
        try:
            labels = labels_from_image(msg, self._params['max_input_pixels'])
        except ImageFormatError as error:
            self._problem(stream, 'error', f'bad label image on {topic}: {error}; ignored')
            return
        with self._lock:
            stream.masks[_stamp_ns(msg.header)] = labels
            while len(stream.masks) > MASKS_KEPT:
                stream.masks.popitem(last=False)
            self._lock.notify_all()

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
            validate(proposed)
            settings = OutputSettings.from_parameters(proposed)
            objects = ObjectSettings.from_parameters(proposed)
            self._check_queries(objects.queries)
            head, mismatch = self._head_or_mismatch(proposed)
        except (ValueError, TypeError) as error:
            return SetParametersResult(successful=False, reason=str(error))
        self._params = proposed
        for stream in self.streams:
            if stream.pipeline is not None:
                stream.pipeline.settings = settings
                stream.pipeline.objects = objects
        if any(param.name in HEAD_PARAMETERS for param in parameters):
            with self._lock:
                self._head_mismatch = mismatch
                if head is not None:
                    self._next_head = head  # applied by the worker between frames
                    self._lock.notify()
            if mismatch:
                self._log('warning', mismatch)
        return SetParametersResult(successful=True)

    def _head_or_mismatch(self, values: dict) -> tuple[HeadConfig | None, str | None]:
        """``(head, None)``, or ``(None, reason)`` while the counts of prompts, bins and
        scene bins disagree but each value is valid; raises ``ValueError`` for anything
        else (counts may disagree for a while, values may never be wrong)."""
        mismatch = _count_mismatch(values)
        if mismatch is None:
            head = head_from_parameters(values)
            self._check_prompts(head)
            return head, None
        # each on its own, with stand-ins for what it must agree with
        alone = {**values, 'bins_mode': 'fixed'}
        prompts, bins = values['distance_prompts'], values['depth_bins_m']
        self._check_prompts(head_from_parameters(
            {**alone, 'depth_bins_m': [float(i + 1) for i in range(len(prompts))]}))
        head_from_parameters({**alone, 'distance_prompts': [f'bin {i}' for i in
                                                            range(len(bins))]})
        check_scene_template(values['scene_prompt_template'])
        return None, (f'{mismatch}: still running on the last consistent configuration; the '
                      f'new one applies as soon as the counts agree')

    def _check_prompts(self, head: HeadConfig) -> None:
        if self.engine is not None and self.engine.loaded:
            self.engine.check_head(head)  # tokenises: prompts within CLIP's context

    def _check_queries(self, queries) -> None:
        """Every query within CLIP's text context (tokenising only)."""
        if self.engine is not None and self.engine.loaded:
            for query in queries:
                self.engine.check_text(query, 'query')

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        """Batches of frames and head changes, one at a time; nothing that happens in here
        can end the loop but :meth:`stop`. Torch runs here with all its threads
        (:data:`INFERENCE_THREADS`)."""
        set_torch_threads(INFERENCE_THREADS)
        while True:
            with self._lock:
                while (self._running and self._next_head is None
                       and all(s.slot is None for s in self.streams)):
                    self._lock.wait()
                if not self._running:
                    return
                batch = [(s, *s.slot) for s in self.streams if s.slot is not None]
                for stream in self.streams:
                    stream.slot = None
                head, self._next_head = self._next_head, None
            try:
                if head is not None:
                    self._apply_head(head)
                if batch:
                    self._process_batch(batch)
            except Exception as error:  # noqa: BLE001 - one bad batch must not kill the node
                for stream, _, _ in batch:
                    stream.counts['failed'] += 1
                    self._problem(stream, 'error', f'inference failed, frame dropped: '
                                                   f'{type(error).__name__}: {error}')

    def _apply_head(self, head: HeadConfig) -> None:
        try:
            self.engine.set_head(head)
        except Exception as error:  # noqa: BLE001 - the previous head stays in use
            stream = self.streams[0]
            stream.counts['failed'] += 1
            self._problem(stream, 'error', f'could not apply the new prompts/bins, keeping '
                                           f'the previous ones: {type(error).__name__}: '
                                           f'{error}')

    def _process(self, msg, received: float) -> None:
        """One frame of the only (first) camera, as the worker would run it."""
        self._process_batch([(self.streams[0], msg, received)])

    def _process_batch(self, batch: list[tuple[CameraStream, object, float]]) -> None:
        """Every camera's waiting frame: prepared per camera, one forward for all, then
        each camera's outputs. A frame rejected or failing affects its own camera only."""
        jobs = []  # (stream, job, received, timer)
        for stream, msg, received in batch:
            want = self._wanted(stream)
            if not want.any():
                stream.counts['skipped_no_subscribers'] += 1
                stream.last_output = time.monotonic()
                continue
            timer = StageTimer()
            try:
                job = stream.pipeline.prepare(msg, want, timer)
            except FrameRejected as error:
                stream.counts['rejected'] += 1
                self._problem(stream, 'error', f'{error}; frame dropped')
                continue
            except Exception as error:  # noqa: BLE001 - this camera's frame only
                stream.counts['failed'] += 1
                self._problem(stream, 'error', f'frame dropped: {type(error).__name__}: '
                                               f'{error}')
                continue
            jobs.append((stream, job, received, timer))
        if not jobs:
            return
        network = StageTimer()
        try:
            predictions = self.engine.infer_frames([job.frame for _, job, _, _ in jobs],
                                                   network)
        except Exception as error:  # noqa: BLE001 - retried frame by frame below
            predictions, batch_error = None, error
        for index, (stream, job, received, timer) in enumerate(jobs):
            try:
                if predictions is None and len(jobs) == 1:
                    raise batch_error
                if predictions is None:  # find the failing camera: each frame alone
                    [prediction] = self.engine.infer_frames([job.frame], timer)
                else:
                    prediction = predictions[index]
                    for name, values in network.samples.items():  # shared by the batch
                        timer.samples.setdefault(name, []).extend(values)
                out = stream.pipeline.finish(job, prediction, timer)
            except Exception as error:  # noqa: BLE001 - this camera's frame only
                stream.counts['failed'] += 1
                self._problem(stream, 'error', f'inference failed, frame dropped: '
                                               f'{type(error).__name__}: {error}')
                continue
            self._publish(stream, out, received, timer)
        if predictions is None and len(jobs) > 1:
            self._log('warning', f'a batch of {len(jobs)} frames failed '
                                 f'({type(batch_error).__name__}: {batch_error}); its frames '
                                 f'were run one by one')

    def _wanted(self, stream: CameraStream) -> Wanted:
        queries = bool(stream.pipeline.objects.queries)
        return Wanted(
            depth=_subscribed(stream.pub_depth),
            camera_info=_subscribed(stream.pub_info),
            points=_subscribed(stream.pub_points),
            colormap=_subscribed(stream.pub_colormap),
            uncertainty=_subscribed(stream.pub_uncertainty),
            markers=queries and _subscribed(stream.pub_markers),
            object_points=queries and _subscribed(stream.pub_object_points),
            labels=queries and (_subscribed(stream.pub_labels)
                                or _subscribed(stream.pub_labels_info)),
            detections=queries and _subscribed(stream.pub_detections))

    def _publish(self, stream: CameraStream, out, received: float, timer: StageTimer) -> None:
        with timer.stage('publish'):
            for publisher, message in ((stream.pub_depth, out.depth),
                                       (stream.pub_info, out.camera_info),
                                       (stream.pub_colormap, out.colormap),
                                       (stream.pub_uncertainty, out.uncertainty),
                                       (stream.pub_points, out.points)):
                if message is not None:
                    publisher.publish(message)
        stream.counts['processed'] += 1
        stream.sigma_median_m.append(out.sigma_median_m)
        stream.scene, stream.bins_m = out.scene, out.bins_m
        stream.last_output = time.monotonic()
        stream.latency_ms.append((stream.last_output - received) * 1e3)
        if out.frame is not None:
            self._find_objects(stream, out.frame, self._wanted(stream), timer)
        stream.record(timer.samples)

    def _find_objects(self, stream: CameraStream, frame, want: Wanted,
                      timer: StageTimer) -> None:
        """The object step of a frame whose depth is already out: candidates (built in, or
        the label image of the same stamp, waited for up to ``object_masks_wait_s``), then
        the object outputs. A problem here skips the frame's objects, never its depth."""
        objects = stream.pipeline.objects
        labels = None
        if objects.proposals == 'topic':
            labels = self._masks_for(stream, frame.header, objects.masks_wait_s)
            if labels is None:
                return
        try:
            out = stream.pipeline.find(frame, want, labels, timer)
        except (FrameRejected, ValueError) as error:
            stream.counts['objects_skipped'] += 1
            self._problem(stream, 'error', f'objects: {error}')
            return
        with timer.stage('publish objects'):
            for publisher, message in ((stream.pub_markers, out.markers),
                                       (stream.pub_object_points, out.object_points),
                                       (stream.pub_labels, out.labels),
                                       (stream.pub_labels_info, out.labels_info),
                                       (stream.pub_detections, out.detections)):
                if message is not None and publisher is not None:
                    publisher.publish(message)
        stream.objects_found = out.objects
        stream.counts['objects_found'] += 1

    def _masks_for(self, stream: CameraStream, header, wait_s: float):
        """The label image stamped like ``header``, waiting up to ``wait_s`` for it (it
        usually comes from a segmenter fed the same image); ``None`` (warned) if none."""
        stamp = _stamp_ns(header)
        deadline = time.monotonic() + wait_s
        with self._lock:
            while self._running:
                if stamp in stream.masks:
                    return stream.masks.pop(stamp)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._lock.wait(remaining)
            newest = (f'{max(stream.masks) * 1e-9:.3f} s' if stream.masks else 'none yet')
        stream.counts['objects_skipped'] += 1
        self._problem(stream, 'warning',
                      f'no label image on {stream.pipeline.topics["objects/masks"]} stamped '
                      f'{stamp * 1e-9:.3f} s within {wait_s:g} s (newest: {newest}); '
                      f'objects skipped for this frame')
        return None

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

    # ------------------------------------------------------------------ diagnostics
    def _health(self, stream: CameraStream) -> tuple[bytes, str]:
        """The diagnostic level and message of a camera: ERROR when frames arrive but
        nothing has been published for ``STALL_S`` (or three frame times, if longer),
        naming the reason."""
        from diagnostic_msgs.msg import DiagnosticStatus
        now = time.monotonic()
        typical = statistics.median(stream.latency_ms) / 1e3 if stream.latency_ms else 0.0
        limit = max(STALL_S, 3 * typical)
        if now - stream.last_received < limit and now - stream.last_output > limit:
            return DiagnosticStatus.ERROR, (
                f'no output for {now - stream.last_output:.0f} s while frames arrive: '
                f'{stream.last_problem or "no frame finished (still processing?)"}')
        if self._head_mismatch:
            return DiagnosticStatus.WARN, self._head_mismatch
        if self.engine is None:
            return DiagnosticStatus.OK, 'not configured'
        if self.engine.random_weights:
            return DiagnosticStatus.WARN, 'random weights: not depth'
        if stream.counts['failed'] or stream.counts['rejected']:
            return DiagnosticStatus.WARN, 'frames rejected or failed'
        return DiagnosticStatus.OK, 'running'

    def _publish_diagnostics(self) -> None:
        """``<node>: depth`` (the model, and the camera's figures when there is one), with
        ``cameras`` one ``<node>: camera <name>`` per camera; ``<node>: objects`` (per
        camera: ``objects <name>``) while queries are set."""
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
        node = self.get_fully_qualified_name()
        engine = self.engine
        device = engine.describe_device() if engine is not None else 'not configured'
        values = {'device': device}
        if engine is not None:
            values.update({
                'model': f'{engine.config.model} ({engine.config.pretrained})',
                'feature mode': engine.config.feature_mode,
                'random weights': str(engine.random_weights),
            })
        if self._head_mismatch:
            values['pending configuration'] = self._head_mismatch
        values.update(self._bins_mode_values())
        status = DiagnosticStatus(name=f'{node}: depth', hardware_id=device)
        statuses = [status]
        if len(self.streams) == 1 and not self.streams[0].name:
            stream = self.streams[0]
            values = {**self._stream_values(stream), **values}
            status.level, status.message = self._health(stream)
        else:
            values['cameras'] = ', '.join(s.name for s in self.streams)
            levels = []
            for stream in self.streams:
                camera = DiagnosticStatus(name=f'{node}: camera {stream.name}',
                                          hardware_id=device)
                camera.values = [KeyValue(key=k, value=v)
                                 for k, v in self._stream_values(stream).items()]
                camera.level, camera.message = self._health(stream)
                levels.append(camera.level)
                statuses.append(camera)
            status.level = max(levels)
            status.message = ('every camera running' if status.level == DiagnosticStatus.OK
                              else 'see the cameras')
            if engine is not None and engine.random_weights:
                status.level = max(status.level, DiagnosticStatus.WARN)
                status.message = 'random weights: not depth'
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        for stream in self.streams:
            objects = self._objects_status(stream)
            if objects is not None:
                statuses.append(objects)
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = statuses
        self.pub_diagnostics.publish(array)

    def _stream_values(self, stream: CameraStream) -> dict[str, str]:
        values = {'input rate (Hz)': f'{stream.rate("received"):.2f}',
                  'output rate (Hz)': f'{stream.rate("processed"):.2f}'}
        values.update({f'frames {k}': str(v) for k, v in stream.counts.items()})
        if stream.latency_ms:
            values['latency end-to-end median (ms)'] = \
                f'{statistics.median(stream.latency_ms):.1f}'
        for name, samples in stream.stage_ms.items():
            values[f'stage {name} median (ms)'] = f'{statistics.median(samples):.2f}'
        if stream.sigma_median_m:
            values['depth uncertainty median (m)'] = \
                f'{statistics.median(stream.sigma_median_m):.3f}'
        if stream.bins_m is not None:
            values['bins (m, canonical)'] = ' '.join(f'{b:.3f}' for b in stream.bins_m)
        if stream.scene is not None:
            values['scene'] = stream.scene.chosen
            values['scene probabilities'] = ', '.join(
                f'{name} {p:.3f}' for name, p in stream.scene.as_dict().items())
        if stream.last_problem:
            values['last problem'] = stream.last_problem
        return values

    def _bins_mode_values(self) -> dict[str, str]:
        head = self.engine.head if self.engine is not None else None
        return {'bins mode': head.bins_mode if head else self._params['bins_mode']}

    def _objects_status(self, stream: CameraStream | None = None):
        """A status ``<node>: objects`` (``objects <camera>`` with several) while queries
        are set: per query its score, the margin to the runner-up and the position in the
        optical frame."""
        from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
        stream = stream or self.streams[0]
        if stream.pipeline is None or not stream.pipeline.objects.queries:
            return None
        status = DiagnosticStatus()
        suffix = f' {stream.name}' if stream.name else ''
        status.name = f'{self.get_fully_qualified_name()}: objects{suffix}'
        status.hardware_id = self.engine.describe_device() if self.engine else ''
        values = {'queries': str(len(stream.pipeline.objects.queries)),
                  'proposals': stream.pipeline.objects.proposals,
                  'frames with objects': str(stream.counts['objects_found']),
                  'frames without objects': str(stream.counts['objects_skipped'])}
        for result in stream.objects_found:
            prefix = f'query {result.index} "{result.query}"'
            values[f'{prefix} score'] = f'{result.score:.2f}'
            values[f'{prefix} margin'] = ('n/a' if result.margin is None
                                          else f'{result.margin:.2f}')
            values[f'{prefix} position (m)'] = (
                'no depth' if result.location is None else
                ' '.join(f'{v:.3f}' for v in result.location.position_m))
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        random = self.engine is not None and self.engine.random_weights
        status.level = DiagnosticStatus.WARN if random else DiagnosticStatus.OK
        status.message = ('random weights: objects are meaningless' if random
                          else f'{len(stream.objects_found)} objects located')
        return status


for _name in OUTPUT_PUBLISHERS:
    setattr(DepthNodeCore, _name,
            property(lambda self, _name=_name: getattr(self.streams[0], _name)))


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


def _subscribed(publisher) -> bool:
    return publisher is not None and publisher.get_subscription_count() > 0


def _stamp_ns(header) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def _detection_type():
    """vision_msgs/Detection3DArray where vision_msgs is installed (a ROS install), else
    ``None``: the node works without it."""
    try:
        from vision_msgs.msg import Detection3DArray
    except ImportError:
        return None
    return Detection3DArray


def head_from_parameters(p: dict) -> HeadConfig:
    """The engine's run-time settings from parameter values (raises ``ValueError``)."""
    return HeadConfig(distance_prompts=tuple(p['distance_prompts']),
                      depth_bins_m=tuple(p['depth_bins_m']),
                      prompt_template=p['prompt_template'],
                      prompt_objects=tuple(p['prompt_objects']),
                      temperature=p['temperature'],
                      canonical_focal_px=p['canonical_focal_px'],
                      flip_average=p['flip_average'],
                      bins_mode=p['bins_mode'],
                      scene_names=tuple(p['scene_names']),
                      scene_bins_m=tuple(p['scene_bins_m']),
                      scene_prompt_template=p['scene_prompt_template'])


def _count_mismatch(p: dict) -> str | None:
    """How the counts of prompts, bins and scene bins disagree, or ``None``."""
    prompts, bins = len(p['distance_prompts']), len(p['depth_bins_m'])
    if prompts != bins:
        return f'{prompts} distance_prompts but {bins} depth_bins_m'
    names, scene_bins = len(p['scene_names']), len(p['scene_bins_m'])
    if p['bins_mode'] != 'fixed' and (names < 2 or scene_bins != names * prompts):
        return (f'bins_mode {p["bins_mode"]} with {names} scene_names and {scene_bins} '
                f'scene_bins_m (needs at least 2 names and {prompts} bins per name)')
    return None


USAGE = """usage: depth_node [--help] [--ros-args ...]

DepthCLIP metric depth for a ROS 2 camera.

  subscribes  image (sensor_msgs/Image), camera_info (sensor_msgs/CameraInfo),
              image/compressed (sensor_msgs/CompressedImage, with image_transport
              compressed), objects/masks (label Image, with object_proposals topic)
  publishes   depth/image (32FC1 m), depth/camera_info, depth/uncertainty (32FC1 m),
              points (PointCloud2),
              depth/colormap (with publish_colormap), /diagnostics; with
              object_queries: objects/markers (MarkerArray), objects/points,
              objects/labels (mono16) + objects/camera_info,
              objects/detections (with vision_msgs)

  several cameras: -p "cameras:=[front, left]" (topics front/image, front/depth/image, ...)

  e.g. depth_node --ros-args --params-file config/depthclip.yaml \\
           -p pretrained:=none -r image:=/camera/color/image_raw \\
           -r camera_info:=/camera/color/camera_info

parameters (-p name:=value; read-only ones only at start):
"""


def usage() -> str:
    lines = [USAGE]
    for param in PARAMETERS:
        flag = ' (read-only)' if param.read_only else ''
        lines.append(f'  {param.name} = {param.default!r}{flag}\n      {param.description}')
    return '\n'.join(lines)


def _wants_help(args: list[str]) -> bool:
    """``-h``/``--help`` among the node's own arguments (before any ``--ros-args``)."""
    own = args[:args.index('--ros-args')] if '--ros-args' in args else args
    return any(a in ('-h', '--help') for a in own)


def run(args=None, managed: bool = False) -> int:
    """Start, spin until SIGINT/SIGTERM, clean up; the exit code (1: cannot start).

    ``managed``: the lifecycle node, which starts unconfigured and loads the model when a
    lifecycle manager configures it.

    Signals are the node's own (:mod:`depthclip_ros.ros.shutdown`), never rclpy's: rclpy's
    handler shuts the context down from another thread at once, racing both the executor
    (which then raises ``RCLError`` creating its wait set) and the worker (whose publish
    fails mid-frame). While starting (rclpy, node, model, prompts) a signal stops the start
    and cleans up what exists; while running it sets a flag (:func:`_spin_until_stopped`);
    the worker finishes its frame (up to ``WORKER_JOIN_S``), and only then is the context
    shut down. Repeated signals change nothing.
    """
    argv = sys.argv[1:] if args is None else list(args)
    if _wants_help(argv):
        print(usage())
        return 0
    SHUTDOWN.install()
    keep_freed_memory()  # a no-op when the entry point did it already (allocator.py)
    set_torch_threads(1)  # only the inference worker runs torch's team (INFERENCE_THREADS)
    import_backend()  # the last imports, while a signal still exits at once
    SHUTDOWN.phase = 'starting'
    node = None
    code = 0
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
        if managed:
            node = DepthLifecycleNode()
        else:
            node = DepthNode()
            node.load()
        SHUTDOWN.phase = 'running'
        _spin_until_stopped(node)
    except (StopRequested, KeyboardInterrupt, ExternalShutdownException):
        pass
    except (WeightsError, ValueError) as error:
        message = f'depth_node cannot start: {with_hint(error)}'
        if node is not None:
            node.get_logger().fatal(message)
        else:
            print(message, file=sys.stderr)
        code = 1
    finally:
        SHUTDOWN.phase = 'stopping'  # from here on a signal only sets the flag
        try:
            if node is not None:
                node.stop()
                node.destroy_node()
            rclpy.try_shutdown()
        except StopRequested:  # raised just before the phase changed
            pass
    return code


def set_torch_threads(count: int) -> None:
    """Torch's thread count for the calling thread, fixed now. ``torch.set_num_threads``
    sets the calling thread's count and a process-wide one, and a thread adopts the
    process-wide count at its first parallel operation: a thread that only set its count
    would take whatever another thread set last. Asking for the count makes torch do that
    adoption at once, under a lock, while the count is this thread's."""
    with _TORCH_THREADS_LOCK:
        torch.set_num_threads(count)
        torch.get_num_threads()


def _spin_until_stopped(node) -> None:
    """Run ``node``'s callbacks until a signal sets the stop flag or the context ends.

    The executor blocks in its own thread, woken only by work (a message, a timer, a
    service call) or by a guard condition the main thread triggers on a signal. The main
    thread waits on the flag, where Python runs signal handlers at once. Polling the
    executor from the main thread instead (a short ``spin_once`` timeout, so that a signal
    handler could run between calls) cost the node about 2% of a core while idle and took
    the GIL and a core from inference 20 times a second. An exception in a callback ends
    the loop and is raised here, as before.
    """
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    wake = node.create_guard_condition(lambda: None)
    failure: list[BaseException] = []
    leave = threading.Event()  # the main thread is leaving (on a signal, or an exception)

    def spin() -> None:
        set_torch_threads(1)  # a lifecycle configure loads the model here
        try:
            while not leave.is_set() and rclpy.ok():
                executor.spin_once(timeout_sec=SPIN_CHECK_S)
        except ExternalShutdownException:
            pass
        except BaseException as error:  # noqa: B902 - handed to the main thread
            failure.append(error)

    spinner = threading.Thread(target=spin, name='depthclip_executor', daemon=True)
    spinner.start()
    try:
        while spinner.is_alive() and not SHUTDOWN.requested.wait(SPIN_CHECK_S):
            pass
    finally:
        leave.set()
        wake.trigger()
        spinner.join()  # a callback in progress (a lifecycle transition) completes
        node.destroy_guard_condition(wake)
        executor.shutdown(timeout_sec=0)
    if failure:
        raise failure[0]


def main(args=None, managed: bool = False) -> None:
    """The ``depth_node`` executable (``depth_lifecycle_node`` with ``managed``):
    :func:`run`, then exit at once.

    Everything that needs closing (worker thread, node, DDS participant) is closed by
    ``run``; the interpreter's own teardown of torch and friends would add about a second
    (measured 1.0-1.2 s) to a shutdown that must finish within 2 s, so it is skipped.
    """
    code = run(args, managed)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == '__main__':
    main()

"""depth_node: camera Image + CameraInfo in, metric depth, its CameraInfo and a cloud out.

Topics (relative, remappable):

* subscribes ``image`` (sensor_msgs/Image), ``camera_info`` (sensor_msgs/CameraInfo),
  and with ``use_compressed`` ``image/compressed`` (sensor_msgs/CompressedImage);
* publishes ``depth`` (32FC1 metres, NaN invalid), ``depth/camera_info``, ``points``
  (organised PointCloud2), ``depth/colormap`` (rgb8, when ``publish_colormap``) and
  ``/diagnostics`` at 1 Hz. Every output carries the input image's header.

Inference runs on a worker thread: the subscription callbacks only store the newest frame
(an older one still waiting is dropped and counted), so the executor never stalls and
latency cannot grow without bound. Outputs nobody subscribes to are not computed.
"""

from __future__ import annotations

from collections import deque
import statistics
import sys
import threading
import time

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

from .encodings import ImageFormatError
from .geometry import Intrinsics, intrinsics_from_hfov
from .messages import (
    camera_info_for,
    CameraInfoError,
    depth_image,
    intrinsics_from_camera_info,
    pointcloud,
    rgb_from_compressed,
    rgb_from_image,
    rgb_image,
)
from .model import DepthCLIP, HeadConfig, ModelConfig, RANDOM_WEIGHTS_BANNER, WeightsError
from .parameters import declare_parameters, HEAD_PARAMETERS, PARAMETER_NAMES, validate_change
from .timing import StageTimer
from .visualize import colorize_depth

THROTTLE_S = 5.0
STATS_WINDOW = 100


class DepthNode(Node):
    """The DepthCLIP ROS 2 node. Call :meth:`load` before spinning."""

    def __init__(self, **kwargs):
        super().__init__('depth_node', **kwargs)
        declare_parameters(self)
        p = self._params = {name: self.get_parameter(name).value for name in PARAMETER_NAMES}
        validate_change(p)
        self.engine = DepthCLIP(
            ModelConfig(model=p['model'], pretrained=p['pretrained'], device=p['device'],
                        precision=p['precision'], feature_mode=p['feature_mode'],
                        input_size=tuple(p['input_size'])),
            head_from_parameters(p))
        self._pending_head: HeadConfig | None = None
        self.add_on_set_parameters_callback(self._on_set_parameters)

        sub_qos = (qos_profile_sensor_data if p['subscriber_qos'] == 'sensor_data'
                   else QoSProfile(depth=p['queue_depth'],
                                   reliability=ReliabilityPolicy.RELIABLE))
        pub_qos = QoSProfile(depth=p['queue_depth'],
                             reliability=ReliabilityPolicy.RELIABLE
                             if p['publisher_qos'] == 'reliable'
                             else ReliabilityPolicy.BEST_EFFORT)
        self.pub_depth = self.create_publisher(Image, 'depth', pub_qos)
        self.pub_info = self.create_publisher(CameraInfo, 'depth/camera_info', pub_qos)
        self.pub_points = self.create_publisher(PointCloud2, 'points', pub_qos)
        self.pub_colormap = (self.create_publisher(Image, 'depth/colormap', pub_qos)
                             if p['publish_colormap'] else None)
        from diagnostic_msgs.msg import DiagnosticArray
        self.pub_diagnostics = self.create_publisher(DiagnosticArray, '/diagnostics', 10)

        self._infos: dict[tuple[int, int], CameraInfo] = {}
        self._latest_info: CameraInfo | None = None
        self.create_subscription(CameraInfo, 'camera_info', self._on_camera_info, sub_qos)
        self.create_subscription(Image, 'image', self._on_image, sub_qos)
        if p['use_compressed']:
            self.create_subscription(CompressedImage, 'image/compressed', self._on_image,
                                     sub_qos)

        self._lock = threading.Condition()
        self._slot = None  # (message, receive time) of the newest waiting frame
        self._running = True
        self.counts = {'received': 0, 'processed': 0, 'dropped': 0, 'rejected': 0,
                       'skipped_no_subscribers': 0, 'failed': 0}
        self._latency_ms = deque(maxlen=STATS_WINDOW)
        self._stage_ms: dict[str, deque] = {}
        self._rate_marks = {'received': (time.monotonic(), 0), 'processed': (time.monotonic(), 0)}
        self._last_stamp_ns: int | None = None
        self._worker = threading.Thread(target=self._work, name='depthclip_inference',
                                        daemon=True)
        self.create_timer(1.0, self._publish_diagnostics)

    # ------------------------------------------------------------------ lifecycle
    def load(self) -> None:
        """Load the model (may raise ``WeightsError``/``ValueError``) and start the worker."""
        self.engine.load()
        if self.engine.random_weights:
            self.get_logger().warning(RANDOM_WEIGHTS_BANNER)
        self.get_logger().info(f'DepthCLIP {self.engine.config.model} '
                               f'({self.engine.config.pretrained}) on '
                               f'{self.engine.describe_device()}, '
                               f'{self.engine.config.feature_mode} mode, input '
                               f'{self.engine.config.input_size}')
        self._worker.start()

    def stop(self) -> None:
        with self._lock:
            self._running = False
            self._lock.notify_all()
        if self._worker.is_alive():
            self._worker.join(timeout=10.0)

    # ------------------------------------------------------------------ callbacks
    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._infos[(msg.height, msg.width)] = msg
        self._latest_info = msg

    def _on_image(self, msg) -> None:
        with self._lock:
            self.counts['received'] += 1
            if self._slot is not None:
                self.counts['dropped'] += 1
            self._slot = (msg, time.monotonic())
            self._lock.notify()

    def _on_set_parameters(self, parameters):
        from rcl_interfaces.msg import SetParametersResult
        proposed = dict(self._params)
        proposed.update({param.name: param.value for param in parameters})
        try:
            validate_change(proposed)
            head = head_from_parameters(proposed)
        except (ValueError, TypeError) as error:
            return SetParametersResult(successful=False, reason=str(error))
        self._params = proposed
        if any(param.name in HEAD_PARAMETERS for param in parameters):
            with self._lock:
                self._pending_head = head  # applied by the worker between frames
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        while True:
            with self._lock:
                while self._running and self._slot is None:
                    self._lock.wait()
                if not self._running:
                    return
                (msg, received), self._slot = self._slot, None
                head, self._pending_head = self._pending_head, None
            if head is not None:
                self.engine.set_head(head)
            try:
                self._process(msg, received)
            except Exception as error:  # noqa: BLE001 - one bad frame must not kill the node
                self.counts['failed'] += 1
                self.get_logger().error(f'inference failed, frame dropped: '
                                        f'{type(error).__name__}: {error}',
                                        throttle_duration_sec=THROTTLE_S)

    def _reject(self, problem: str) -> None:
        self.counts['rejected'] += 1
        self.get_logger().error(f'{problem}; frame dropped', throttle_duration_sec=THROTTLE_S)

    def _process(self, msg, received: float) -> None:
        want_depth = self.pub_depth.get_subscription_count() > 0
        want_info = self.pub_info.get_subscription_count() > 0
        want_points = self.pub_points.get_subscription_count() > 0
        want_colormap = (self.pub_colormap is not None
                         and self.pub_colormap.get_subscription_count() > 0)
        if not (want_depth or want_info or want_points or want_colormap):
            self.counts['skipped_no_subscribers'] += 1
            return
        p = self._params
        timer = StageTimer()
        topic = 'image/compressed' if isinstance(msg, CompressedImage) else 'image'
        with timer.stage('decode'):
            try:
                rgb = (rgb_from_compressed(msg) if isinstance(msg, CompressedImage)
                       else rgb_from_image(msg))
            except ImageFormatError as error:
                return self._reject(f'bad image on {self._topic(topic)}: {error}')
        height, width = rgb.shape[:2]
        self._warn_on_odd_header(msg.header)
        try:
            camera, template = self._camera_for(height, width)
        except CameraInfoError as error:
            return self._reject(f'{self._topic("camera_info")}: {error}')
        out_h, out_w = p['output_size']
        out_size = (height, width) if out_h <= 0 else (out_h, out_w)
        out_camera = camera if out_size == (height, width) else camera.resized(*out_size)

        depth = self.engine.predict(rgb, camera, output_size=out_size, timer=timer)
        header = msg.header
        with timer.stage('publish'):
            if want_depth:
                self.pub_depth.publish(depth_image(depth, header))
            if want_depth or want_info:
                self.pub_info.publish(camera_info_for(out_camera, header, template))
            if want_colormap:
                coloured, _, _ = colorize_depth(depth, p['min_depth_m'], p['max_depth_m'])
                self.pub_colormap.publish(rgb_image(coloured, header))
        if want_points:
            with timer.stage('cloud'):
                colours = None
                if p['cloud_rgb']:
                    colours = rgb if out_size == (height, width) else _resize_rgb(rgb, out_size)
                cloud = pointcloud(depth, out_camera, header, p['cloud_stride'],
                                   p['min_depth_m'], p['max_depth_m'], colours)
            with timer.stage('publish'):
                self.pub_points.publish(cloud)
        self.counts['processed'] += 1
        self._latency_ms.append((time.monotonic() - received) * 1e3)
        for name, values in timer.samples.items():
            self._stage_ms.setdefault(name, deque(maxlen=STATS_WINDOW)).append(sum(values))

    def _warn_on_odd_header(self, header) -> None:
        """Stamps going backwards or an empty frame_id: warned, the frame still processed."""
        stamp = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
        if self._last_stamp_ns is not None and stamp < self._last_stamp_ns:
            self.get_logger().warning(
                f'image stamps went backwards on {self._topic("image")} '
                f'({self._last_stamp_ns * 1e-9:.3f} s -> {stamp * 1e-9:.3f} s): bag loop or '
                f'clock reset; continuing', throttle_duration_sec=THROTTLE_S)
        self._last_stamp_ns = stamp
        if not header.frame_id:
            self.get_logger().warning(f'empty frame_id on {self._topic("image")}; outputs '
                                      f'carry it unchanged', throttle_duration_sec=THROTTLE_S)

    def _camera_for(self, height: int, width: int) -> tuple[Intrinsics, CameraInfo | None]:
        info = self._infos.get((height, width)) or self._latest_info
        source = self._params['intrinsics_source']
        if info is not None:
            return intrinsics_from_camera_info(info, height, width, source), info
        hfov = self._params['fallback_hfov_deg']
        if hfov > 0:
            return intrinsics_from_hfov(height, width, hfov), None
        raise CameraInfoError('no CameraInfo received yet (set fallback_hfov_deg to run '
                              'without one)')

    def _topic(self, name: str) -> str:
        return self.resolve_topic_name(name)

    # ------------------------------------------------------------------ diagnostics
    def _rate(self, key: str) -> float:
        now = time.monotonic()
        then, count_then = self._rate_marks[key]
        count = self.counts[key]
        self._rate_marks[key] = (now, count)
        return (count - count_then) / max(now - then, 1e-6)

    def _publish_diagnostics(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
        status = DiagnosticStatus()
        status.name = f'{self.get_fully_qualified_name()}: depth'
        status.hardware_id = self.engine.describe_device()
        values = {
            'input rate (Hz)': f'{self._rate("received"):.2f}',
            'output rate (Hz)': f'{self._rate("processed"):.2f}',
            'device': self.engine.describe_device(),
            'model': f'{self.engine.config.model} ({self.engine.config.pretrained})',
            'feature mode': self.engine.config.feature_mode,
            'random weights': str(self.engine.random_weights),
        }
        values.update({f'frames {k}': str(v) for k, v in self.counts.items()})
        if self._latency_ms:
            values['latency end-to-end median (ms)'] = \
                f'{statistics.median(self._latency_ms):.1f}'
        for name, samples in self._stage_ms.items():
            values[f'stage {name} median (ms)'] = f'{statistics.median(samples):.2f}'
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        if self.engine.random_weights:
            status.level, status.message = DiagnosticStatus.WARN, 'random weights: not depth'
        elif self.counts['failed'] or self.counts['rejected']:
            status.level, status.message = DiagnosticStatus.WARN, 'frames rejected or failed'
        else:
            status.level, status.message = DiagnosticStatus.OK, 'running'
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [status]
        self.pub_diagnostics.publish(array)


def head_from_parameters(p: dict) -> HeadConfig:
    """The engine's run-time settings from parameter values (raises ``ValueError``)."""
    return HeadConfig(distance_prompts=tuple(p['distance_prompts']),
                      depth_bins_m=tuple(p['depth_bins_m']),
                      prompt_template=p['prompt_template'],
                      prompt_objects=tuple(p['prompt_objects']),
                      temperature=p['temperature'],
                      canonical_focal_px=p['canonical_focal_px'],
                      flip_average=p['flip_average'])


def _resize_rgb(rgb, size):
    import cv2
    return cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def main(args=None) -> int:
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = DepthNode()
        node.load()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (WeightsError, ValueError) as error:
        message = f'depth_node cannot start: {error}'
        if node is not None:
            node.get_logger().fatal(message)
        print(message, file=sys.stderr)
        code = 1
    finally:
        if node is not None:
            node.stop()
            node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == '__main__':
    sys.exit(main())


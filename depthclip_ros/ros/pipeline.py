"""One camera frame in, the node's output messages out: the code path shared by
``depth_node`` (which publishes them) and ``depthclip-ros bag`` (which writes them).

No rclpy here: messages in and out are plain ``sensor_msgs`` objects, so the same
function serves a live subscription and a recording.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, field, fields
from typing import Callable

import numpy as np
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

from depthclip_ros.engine.config import mix_bins, SceneEstimate
from depthclip_ros.engine.depthclip import DepthCLIP
from depthclip_ros.engine.frames import FrameIn, Prediction
from depthclip_ros.geometry import Intrinsics, intrinsics_from_hfov
from depthclip_ros.io.encodings import ImageFormatError
from depthclip_ros.io.visualize import colorize_depth
from depthclip_ros.objects.finder import find_objects
from depthclip_ros.objects.locate import ObjectResult
from depthclip_ros.objects.referring import ReferringCLIP
from depthclip_ros.ros.messages import (
    camera_info_for,
    CameraInfoError,
    depth_image,
    image_size_of,
    intrinsics_from_camera_info,
    pointcloud,
    rgb_from_compressed,
    rgb_from_image,
    rgb_image,
    uncertainty_image,
)
from depthclip_ros.ros.object_messages import (
    detections_3d,
    labels_image,
    object_cloud,
    object_markers,
)
from depthclip_ros.ros.parameters import DEFAULTS, validate
from depthclip_ros.timing import stage_or_nothing, StageTimer

# image_geometry's models; the node honours none of them (it does not undistort), but an
# unknown name is reported as such.
KNOWN_DISTORTION_MODELS = ('plumb_bob', 'rational_polynomial', 'equidistant')
CAMERA_INFO_SIZES = 8  # CameraInfo remembered per image size (oldest forgotten first)


@dataclass(frozen=True)
class OutputSettings:
    """The node parameters that shape the outputs (not the network); node defaults.

    Checked on construction with the node's own rules (:func:`parameters.validate`):
    raises ``ValueError`` naming the parameter, so the tools refuse what the node refuses.
    """

    output_size: tuple[int, int] = tuple(DEFAULTS['output_size'])
    cloud_stride: int = DEFAULTS['cloud_stride']
    min_depth_m: float = DEFAULTS['min_depth_m']
    max_depth_m: float = DEFAULTS['max_depth_m']
    cloud_rgb: bool = DEFAULTS['cloud_rgb']
    max_uncertainty_m: float = DEFAULTS['max_uncertainty_m']
    scene_every_n_frames: int = DEFAULTS['scene_every_n_frames']
    intrinsics_source: str = DEFAULTS['intrinsics_source']
    fallback_hfov_deg: float = DEFAULTS['fallback_hfov_deg']
    max_input_pixels: int = DEFAULTS['max_input_pixels']

    def __post_init__(self):
        object.__setattr__(self, 'output_size', tuple(self.output_size))
        values = asdict(self)
        values['output_size'] = list(self.output_size)
        validate(values)

    @classmethod
    def from_parameters(cls, values: dict) -> OutputSettings:
        return cls(**{f.name: values[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class ObjectSettings:
    """The node parameters of language-referred objects (``object_*``); node defaults.
    No query: the object step is off. Checked like :class:`OutputSettings`."""

    queries: tuple[str, ...] = ()
    proposals: str = DEFAULTS['object_proposals']
    alpha: float = DEFAULTS['object_alpha']
    beta: float = DEFAULTS['object_beta']
    max_masks: int = DEFAULTS['object_max_masks']
    masks_wait_s: float = DEFAULTS['object_masks_wait_s']

    def __post_init__(self):
        object.__setattr__(self, 'queries', tuple(self.queries))
        validate(self.as_parameters())

    def as_parameters(self) -> dict:
        """The values under their parameter names (each field is ``object_<field>``)."""
        values = {f'object_{f.name}': getattr(self, f.name) for f in fields(self)}
        values['object_queries'] = list(self.queries)
        return values

    @classmethod
    def from_parameters(cls, values: dict) -> ObjectSettings:
        return cls(**{f.name: values[f'object_{f.name}'] for f in fields(cls)})


@dataclass(frozen=True)
class Wanted:
    """Which outputs to build (the node asks only for those with subscribers)."""

    depth: bool = True
    camera_info: bool = True
    points: bool = True
    colormap: bool = False
    uncertainty: bool = False  # depth/uncertainty
    markers: bool = False  # objects/markers
    object_points: bool = False  # objects/points
    labels: bool = False  # objects/labels
    detections: bool = False  # objects/detections (vision_msgs)

    def objects(self) -> bool:
        return self.markers or self.object_points or self.labels or self.detections

    def any(self) -> bool:
        return (self.depth or self.camera_info or self.points or self.colormap
                or self.uncertainty or self.objects())


@dataclass
class Frame:
    """What the object step needs of a processed frame, at the output size."""

    header: object
    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 metres
    camera: Intrinsics
    tokens: object  # the depth pass's trunk feature map (torch, on the device)
    input_size: tuple[int, int]  # (height, width) of the image as received
    camera_info: CameraInfo  # that of depth/image (objects/labels pairs with a copy)


@dataclass
class Outputs:
    """The messages of one frame; ``None`` for what was not wanted. All carry the input
    image's header. ``frame`` is set when objects were wanted (for
    :meth:`DepthPipeline.find`). ``sigma_median_m`` (the median depth uncertainty over the
    token grid) and ``scene`` (with scene-adaptive bins) are set for every frame."""

    depth: Image | None = None
    camera_info: CameraInfo | None = None
    points: PointCloud2 | None = None
    colormap: Image | None = None
    uncertainty: Image | None = None  # depth/uncertainty: 32FC1 metres
    sigma_median_m: float | None = None
    scene: SceneEstimate | None = None  # the scene whose bins this frame used
    bins_m: tuple[float, ...] | None = None  # the canonical bins this frame used
    frame: Frame | None = None
    markers: object | None = None  # visualization_msgs/MarkerArray
    object_points: PointCloud2 | None = None
    labels: Image | None = None
    labels_info: CameraInfo | None = None  # objects/camera_info: depth/camera_info's twin
    detections: object | None = None  # vision_msgs/Detection3DArray
    objects: list[ObjectResult] = field(default_factory=list)


@dataclass
class Job:
    """A prepared frame (:meth:`DepthPipeline.prepare`): the engine's input and what
    :meth:`DepthPipeline.finish` needs besides the prediction."""

    header: object
    frame: FrameIn  # image, intrinsics, output size, uncertainty, bins
    template: CameraInfo | None  # the CameraInfo the intrinsics came from
    want: Wanted
    scene: SceneEstimate | None
    bins_m: tuple[float, ...]  # the canonical bins this frame uses


class FrameRejected(ValueError):
    """The frame cannot be processed (bad image, no usable CameraInfo); the message names
    the problem and the topic."""


class DepthPipeline:
    """Decode, intrinsics, inference, depth/CameraInfo/cloud messages for one frame.

    ``topics`` names the input topics in messages (``{'image': ..., 'camera_info': ...}``);
    ``warn`` receives warnings about frames that are still processed (odd headers).
    """

    def __init__(self, engine: DepthCLIP, settings: OutputSettings | None = None,
                 topics: dict[str, str] | None = None,
                 warn: Callable[[str], None] | None = None,
                 objects: ObjectSettings | None = None):
        self.engine = engine
        self.settings = settings or OutputSettings()
        self.objects = objects or ObjectSettings()
        self._referring = None
        self.topics = {'image': 'image', 'image/compressed': 'image/compressed',
                       'camera_info': 'camera_info', 'objects/masks': 'objects/masks',
                       **(topics or {})}
        self.warn = warn or (lambda text: None)
        self._infos: OrderedDict[tuple[int, int], CameraInfo] = OrderedDict()
        self.latest_info: CameraInfo | None = None
        self._last_stamp_ns: int | None = None
        self._scene: SceneEstimate | None = None  # the latest, reused between classifications
        self._scene_key: tuple | None = None
        self._frames_since_scene = 0

    def on_camera_info(self, msg: CameraInfo) -> None:
        """Remember ``msg``; an image uses the CameraInfo of its size (the size it describes,
        ROI and binning applied), else the newest. At most ``CAMERA_INFO_SIZES`` sizes are
        kept, so a stream of ever-new sizes cannot grow memory."""
        key = image_size_of(msg)
        self._infos.pop(key, None)
        self._infos[key] = msg
        while len(self._infos) > CAMERA_INFO_SIZES:
            self._infos.popitem(last=False)
        self.latest_info = msg
        if self.settings.intrinsics_source == 'K' and any(
                value != 0 for value in msg.d):
            known = msg.distortion_model in KNOWN_DISTORTION_MODELS
            self.warn(f'{self.topics["camera_info"]} has {"" if known else "unknown "}'
                      f'distortion model {msg.distortion_model!r} with non-zero '
                      f'coefficients; the image is not undistorted, so depth and points use '
                      f'the pinhole K only (feed the rectified image with '
                      f'intrinsics_source P for exact geometry); continuing')

    def process(self, msg: Image | CompressedImage, want: Wanted = Wanted(),
                timer: StageTimer | None = None) -> Outputs:
        """The output messages for one image; raises :class:`FrameRejected`.

        :meth:`prepare`, the engine's pass, :meth:`finish`: the node runs the three steps
        itself to batch several cameras' frames into one pass
        (:func:`~depthclip_ros.ros.batch.run_batch`)."""
        job = self.prepare(msg, want, timer)
        [prediction] = self.engine.infer_frames([job.frame], timer)
        return self.finish(job, prediction, timer)

    def prepare(self, msg: Image | CompressedImage, want: Wanted = Wanted(),
                timer: StageTimer | None = None) -> Job:
        """Decode the image and find its intrinsics, output size and bins (the scene
        classified when due): what the engine needs for this frame. Raises
        :class:`FrameRejected`."""
        s = self.settings
        stage = stage_or_nothing(timer)
        compressed = isinstance(msg, CompressedImage)
        with stage('decode'):
            try:
                rgb = (rgb_from_compressed(msg, s.max_input_pixels) if compressed
                       else rgb_from_image(msg, s.max_input_pixels))
            except ImageFormatError as error:
                topic = self.topics['image/compressed' if compressed else 'image']
                raise FrameRejected(f'bad image on {topic}: {error}') from None
        height, width = rgb.shape[:2]
        self._check_header(msg.header)
        try:
            camera, template = self._camera_for(height, width)
        except CameraInfoError as error:
            raise FrameRejected(f'{self.topics["camera_info"]}: {error}') from None
        out_size = (height, width) if s.output_size[0] <= 0 else tuple(s.output_size)
        head = self.engine.head
        scene = bins = None
        if head.bins_mode != 'fixed':
            scene = self._scene_of(rgb, head, timer)
            bins = mix_bins(scene, head.scene_bin_sets, head.bins_mode)
        sigma_filter = want.points and s.max_uncertainty_m > 0
        frame = FrameIn(rgb, camera, out_size, want.uncertainty or sigma_filter, bins)
        return Job(msg.header, frame, template, want, scene, bins or head.depth_bins_m)

    def finish(self, job: Job, prediction: Prediction,
               timer: StageTimer | None = None) -> Outputs:
        """The output messages of a prepared frame from the engine's prediction of it."""
        s, want, header = self.settings, job.want, job.header
        stage = stage_or_nothing(timer)
        rgb, camera, out_size = job.frame.rgb, job.frame.intrinsics, job.frame.output_size
        height, width = rgb.shape[:2]
        out_camera = camera if out_size == (height, width) else camera.resized(*out_size)
        objects = want.objects() and bool(self.objects.queries)
        depth, sigma, tokens = prediction.depth, prediction.sigma, prediction.tokens
        # (sigma is there when prepare asked for it: a limit set in between waits a frame)
        sigma_filter = want.points and s.max_uncertainty_m > 0 and sigma is not None
        out = Outputs(sigma_median_m=prediction.sigma_median_m, scene=job.scene,
                      bins_m=tuple(job.bins_m))
        out_rgb = None
        if objects or (want.points and s.cloud_rgb):
            out_rgb = rgb if out_size == (height, width) else _resize_rgb(rgb, out_size)
        with stage('messages'):
            if want.depth:
                out.depth = depth_image(depth, header)
            info = None
            if want.depth or want.camera_info or objects:
                info = camera_info_for(out_camera, header, job.template)
            if want.depth or want.camera_info:
                out.camera_info = info
            if want.colormap:
                coloured, _, _ = colorize_depth(depth, s.min_depth_m, s.max_depth_m)
                out.colormap = rgb_image(coloured, header)
            if want.uncertainty:
                out.uncertainty = uncertainty_image(sigma, header)
        if want.points:
            with stage('cloud'):
                cloud_depth = depth
                if sigma_filter:  # too uncertain: no point (NaN), the rest unchanged
                    cloud_depth = np.where(sigma > s.max_uncertainty_m, np.float32(np.nan),
                                           depth)
                out.points = pointcloud(cloud_depth, out_camera, header, s.cloud_stride,
                                        s.min_depth_m, s.max_depth_m,
                                        out_rgb if s.cloud_rgb else None)
        if objects:
            out.frame = Frame(header, out_rgb, depth, out_camera, tokens, (height, width),
                              info)
        return out

    def _scene_of(self, rgb: np.ndarray, head, timer: StageTimer | None) -> SceneEstimate:
        """The frame's scene: classified every ``scene_every_n_frames`` frames (and at once
        when the scenes or their template change), reused in between."""
        key = (head.scene_names, head.scene_prompt_template)
        due = (self._scene is None or key != self._scene_key
               or self._frames_since_scene >= self.settings.scene_every_n_frames)
        if due:
            with stage_or_nothing(timer)('scene'):
                self._scene = self.engine.scene_classifier.classify(
                    rgb, head.scene_names, head.scene_prompt_template)
            self._scene_key, self._frames_since_scene = key, 0
        self._frames_since_scene += 1
        return self._scene

    def find(self, frame: Frame, want: Wanted, labels: np.ndarray | None = None,
             timer: StageTimer | None = None) -> Outputs:
        """The object outputs of a processed frame (:attr:`Outputs.frame`).

        ``labels``: the frame's candidates as a label image (at the received image's size or
        the output size), or ``None`` for the built-in proposals. Raises
        :class:`FrameRejected` for a label image that does not fit the frame.
        """
        o = self.objects
        stage = stage_or_nothing(timer)
        if labels is not None:
            labels = self._fit_labels(labels, frame)
        referring = self._referring_clip()
        found = find_objects(referring, frame.rgb, frame.depth, frame.camera, o.queries,
                             labels, protocol='node', tokens=frame.tokens,
                             max_masks=o.max_masks, min_depth_m=self.settings.min_depth_m,
                             max_depth_m=self.settings.max_depth_m, timer=timer)
        out = Outputs(objects=found.results)
        with stage('object messages'):
            if want.markers:
                out.markers = object_markers(found.results, frame.header)
            if want.object_points:
                out.object_points = object_cloud(found.results, frame.header)
            if want.labels:
                out.labels = labels_image(found.labels, frame.header)
                # image_transport pairs an image with its sibling camera_info
                out.labels_info = frame.camera_info
            if want.detections:
                out.detections = detections_3d(found.results, frame.header)
        return out

    def _referring_clip(self) -> ReferringCLIP:
        """The referring engine on this pipeline's CLIP, with the current mixing weights."""
        o = self.objects
        if self._referring is None or self._referring.engine is not self.engine:
            self._referring = ReferringCLIP(self.engine)
        self._referring.alpha, self._referring.beta = o.alpha, o.beta
        return self._referring

    def _fit_labels(self, labels: np.ndarray, frame: Frame) -> np.ndarray:
        """A label image at the received image's size, brought to the output size
        (nearest neighbour: labels are not blended)."""
        size = frame.depth.shape
        if labels.shape == size:
            return labels
        if labels.shape != frame.input_size:
            raise FrameRejected(
                f'label image on {self.topics["objects/masks"]} is {labels.shape[1]}x'
                f'{labels.shape[0]}, the image is {frame.input_size[1]}x'
                f'{frame.input_size[0]}; objects skipped for this frame')
        import cv2
        return cv2.resize(labels.astype(np.int32, copy=False), (size[1], size[0]),
                          interpolation=cv2.INTER_NEAREST_EXACT)

    def _check_header(self, header) -> None:
        """Stamps going backwards or an empty frame_id: warned, the frame still processed."""
        stamp = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
        topic = self.topics['image']
        if self._last_stamp_ns is not None and stamp < self._last_stamp_ns:
            self.warn(f'image stamps went backwards on {topic} '
                       f'({self._last_stamp_ns * 1e-9:.3f} s -> {stamp * 1e-9:.3f} s): bag '
                       f'loop or clock reset; continuing')
        self._last_stamp_ns = stamp
        if not header.frame_id:
            self.warn(f'empty frame_id on {topic}; outputs carry it unchanged')

    def _camera_for(self, height: int, width: int) -> tuple[Intrinsics, CameraInfo | None]:
        info = self._infos.get((height, width)) or self.latest_info
        if info is not None:
            return (intrinsics_from_camera_info(info, height, width,
                                                self.settings.intrinsics_source), info)
        if self.settings.fallback_hfov_deg > 0:
            return intrinsics_from_hfov(height, width, self.settings.fallback_hfov_deg), None
        raise CameraInfoError('no CameraInfo received yet (set fallback_hfov_deg to run '
                              'without one)')


def _resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2
    return cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_AREA)

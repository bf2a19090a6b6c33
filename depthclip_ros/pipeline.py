"""One camera frame in, the node's output messages out: the code path shared by
``depth_node`` (which publishes them) and ``depthclip-ros bag`` (which writes them).

No rclpy here: messages in and out are plain ``sensor_msgs`` objects, so the same
function serves a live subscription and a recording.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, fields
from typing import Callable

import numpy as np
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

from .encodings import ImageFormatError
from .geometry import Intrinsics, intrinsics_from_hfov
from .messages import (
    camera_info_for,
    CameraInfoError,
    depth_image,
    image_size_of,
    intrinsics_from_camera_info,
    pointcloud,
    rgb_from_compressed,
    rgb_from_image,
    rgb_image,
)
from .model import DepthCLIP
from .parameters import PARAMETERS, validate
from .timing import stage_or_nothing, StageTimer
from .visualize import colorize_depth

_DEFAULTS = {p.name: p.default for p in PARAMETERS}
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

    output_size: tuple[int, int] = tuple(_DEFAULTS['output_size'])
    cloud_stride: int = _DEFAULTS['cloud_stride']
    min_depth_m: float = _DEFAULTS['min_depth_m']
    max_depth_m: float = _DEFAULTS['max_depth_m']
    cloud_rgb: bool = _DEFAULTS['cloud_rgb']
    intrinsics_source: str = _DEFAULTS['intrinsics_source']
    fallback_hfov_deg: float = _DEFAULTS['fallback_hfov_deg']
    max_input_pixels: int = _DEFAULTS['max_input_pixels']

    def __post_init__(self):
        object.__setattr__(self, 'output_size', tuple(self.output_size))
        values = asdict(self)
        values['output_size'] = list(self.output_size)
        validate(values)

    @classmethod
    def from_parameters(cls, values: dict) -> OutputSettings:
        return cls(**{f.name: values[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class Wanted:
    """Which outputs to build (the node asks only for those with subscribers)."""

    depth: bool = True
    camera_info: bool = True
    points: bool = True
    colormap: bool = False

    def any(self) -> bool:
        return self.depth or self.camera_info or self.points or self.colormap


@dataclass
class Outputs:
    """The messages of one frame; ``None`` for what was not wanted. All carry the input
    image's header."""

    depth: Image | None = None
    camera_info: CameraInfo | None = None
    points: PointCloud2 | None = None
    colormap: Image | None = None


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
                 warn: Callable[[str], None] | None = None):
        self.engine = engine
        self.settings = settings or OutputSettings()
        self.topics = {'image': 'image', 'image/compressed': 'image/compressed',
                       'camera_info': 'camera_info', **(topics or {})}
        self.warn = warn or (lambda text: None)
        self._infos: OrderedDict[tuple[int, int], CameraInfo] = OrderedDict()
        self.latest_info: CameraInfo | None = None
        self._last_stamp_ns: int | None = None

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
        """The output messages for one image; raises :class:`FrameRejected`."""
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
        out_camera = camera if out_size == (height, width) else camera.resized(*out_size)

        depth = self.engine.predict(rgb, camera, output_size=out_size, timer=timer)
        header = msg.header
        out = Outputs()
        with stage('messages'):
            if want.depth:
                out.depth = depth_image(depth, header)
            if want.depth or want.camera_info:
                out.camera_info = camera_info_for(out_camera, header, template)
            if want.colormap:
                coloured, _, _ = colorize_depth(depth, s.min_depth_m, s.max_depth_m)
                out.colormap = rgb_image(coloured, header)
        if want.points:
            with stage('cloud'):
                colours = None
                if s.cloud_rgb:
                    colours = rgb if out_size == (height, width) else _resize_rgb(rgb, out_size)
                out.points = pointcloud(depth, out_camera, header, s.cloud_stride,
                                        s.min_depth_m, s.max_depth_m, colours)
        return out

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

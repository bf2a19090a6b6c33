"""numpy <-> sensor_msgs, one copy per message, never per point (no rclpy here).

cv_bridge and sensor_msgs_py are the reference semantics but are not installable from
PyPI; this module does the same conversions with numpy (docs/platform.md):
``msg.data`` is filled from an ``array.array('B')`` built from the numpy buffer.
"""

from __future__ import annotations

import array
import math

import numpy as np
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField

from depthclip_ros.geometry import backproject, Intrinsics
from depthclip_ros.io.encodings import (
    check_pixels,
    decode_to_rgb,
    encoded_image_size,
    ImageFormatError,
)

ASPECT_TOLERANCE = 0.01  # relative; a CameraInfo of another size is scaled within this


class CameraInfoError(ValueError):
    """A CameraInfo that cannot give usable intrinsics; the message says why."""


def _bytes(array_like: np.ndarray) -> array.array:
    out = array.array('B')
    out.frombytes(np.ascontiguousarray(array_like).view(np.uint8).reshape(-1))
    return out


def rgb_from_image(msg: Image, max_pixels: int | None = None) -> np.ndarray:
    """``sensor_msgs/Image`` -> ``(H, W, 3)`` uint8 RGB; raises ``ImageFormatError``
    (also for more than ``max_pixels`` pixels, from the header)."""
    return decode_to_rgb(msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian,
                         msg.data, max_pixels)


def rgb_from_compressed(msg, max_pixels: int | None = None) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (jpeg, png) -> ``(H, W, 3)`` uint8 RGB.

    The size the header declares is checked against ``max_pixels`` before decoding: a
    small file can declare gigapixels (a decompression bomb)."""
    import cv2
    buffer = np.frombuffer(msg.data, dtype=np.uint8)
    if buffer.size == 0:
        raise ImageFormatError('compressed image has no data')
    if max_pixels is not None:
        try:
            size = encoded_image_size(buffer)
        except ImageFormatError as error:
            raise ImageFormatError(f'cannot decode compressed image (format {msg.format!r}): '
                                   f'{error}') from None
        check_pixels(*size, max_pixels)
    decoded = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if decoded is None:
        raise ImageFormatError(f'cannot decode compressed image (format {msg.format!r})')
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def intrinsics_from_camera_info(msg: CameraInfo, height: int, width: int,
                                source: str = 'K') -> Intrinsics:
    """Intrinsics for an image of ``height`` x ``width`` from ``msg``.

    ``source`` is ``'K'`` (raw images) or ``'P'`` (rectified images, as depth_image_proc).
    Binning and region of interest follow image_geometry's ``PinholeCameraModel``: the
    camera publishes the ROI of the calibrated image, binned, so ``fx, cx`` become
    ``fx / binning_x, (cx - roi.x_offset) / binning_x`` (``y`` likewise) for an image of
    ``roi.width / binning_x`` x ``roi.height / binning_y`` (binning 0 means 1, an all-zero
    ROI the full image). An image of another size with the same aspect ratio is scaled.
    Raises :class:`CameraInfoError` for an uncalibrated, non-finite, inconsistent or
    implausible CameraInfo, naming the numbers.
    """
    if source == 'P':
        fx, fy, cx, cy = msg.p[0], msg.p[5], msg.p[2], msg.p[6]
    else:
        fx, fy, cx, cy = msg.k[0], msg.k[4], msg.k[2], msg.k[5]
    values = (fx, fy, cx, cy)
    if not all(math.isfinite(v) for v in values):
        raise CameraInfoError(f'CameraInfo {source} has non-finite values {list(values)}')
    for name in ('k', 'p', 'r', 'd'):  # copied into depth/camera_info: must be numbers
        field = getattr(msg, name)
        if not all(math.isfinite(v) for v in field):
            raise CameraInfoError(f'CameraInfo {name.upper()} has non-finite values '
                                  f'{list(field)}')
    if fx == 0 and fy == 0:
        raise CameraInfoError(f'CameraInfo is uncalibrated ({source} has zero focal lengths)')
    if fx <= 0 or fy <= 0:
        raise CameraInfoError(f'CameraInfo {source} has non-positive focal lengths fx={fx}, '
                              f'fy={fy}')
    if msg.width <= 0 or msg.height <= 0:
        raise CameraInfoError(f'CameraInfo size {msg.width}x{msg.height} is invalid')
    x0, y0, roi_w, roi_h, bx, by = _region(msg)
    if roi_w == 0 or roi_h == 0 or x0 + roi_w > msg.width or y0 + roi_h > msg.height:
        raise CameraInfoError(f'CameraInfo roi (x_offset={x0}, y_offset={y0}, '
                              f'{roi_w}x{roi_h}) does not lie inside the calibrated '
                              f'{msg.width}x{msg.height} image')
    full_h, full_w = image_size_of(msg)
    if full_w == 0 or full_h == 0:
        raise CameraInfoError(f'CameraInfo binning {bx}x{by} leaves no pixel of the '
                              f'{roi_w}x{roi_h} region')
    fx, fy, cx, cy = fx / bx, fy / by, (cx - x0) / bx, (cy - y0) / by
    described = f'{full_w}x{full_h}' + ('' if (bx, by, roi_w, roi_h) == (1, 1, msg.width,
                                                                           msg.height)
                                         else f' (roi {roi_w}x{roi_h}+{x0}+{y0} of '
                                              f'{msg.width}x{msg.height}, binning {bx}x{by})')
    _check_plausible(fx, fy, cx, cy, full_w, full_h, source)
    if (full_h, full_w) != (height, width) and \
            abs((width / height) / (full_w / full_h) - 1.0) > ASPECT_TOLERANCE:
        raise CameraInfoError(f'CameraInfo is for {described}, the image is '
                              f'{width}x{height}: different aspect ratio, cannot scale')
    try:
        info = Intrinsics(float(fx), float(fy), float(cx), float(cy), int(full_w), int(full_h))
        return info if info.size == (height, width) else info.resized(height, width)
    except ValueError as error:  # e.g. values that overflow when scaled
        raise CameraInfoError(f'CameraInfo {source} is unusable: {error}') from None


def _region(msg: CameraInfo) -> tuple[int, int, int, int, int, int]:
    """``(x_offset, y_offset, width, height, binning_x, binning_y)`` of the part of the
    calibrated image that ``msg``'s images show (image_geometry's rules: an all-zero ROI is
    the full image, binning 0 means 1). Not checked: see intrinsics_from_camera_info."""
    roi = msg.roi
    bx, by = msg.binning_x or 1, msg.binning_y or 1
    if roi.width == 0 and roi.height == 0 and roi.x_offset == 0 and roi.y_offset == 0:
        return 0, 0, msg.width, msg.height, bx, by
    return roi.x_offset, roi.y_offset, roi.width, roi.height, bx, by


def image_size_of(msg: CameraInfo) -> tuple[int, int]:
    """``(height, width)`` of the image ``msg`` describes: its ROI, binned (image_geometry's
    reduced resolution); the calibrated size when there is neither."""
    _, _, width, height, bx, by = _region(msg)
    return height // by, width // bx


# A pinhole focal length is width / (2 tan(hfov / 2)): 0.05 x width is a 169 degree field
# of view, 100 x width 0.6 degrees; beyond either the CameraInfo is not of this camera.
FOCAL_PER_WIDTH_RANGE = (0.05, 100.0)
PRINCIPAL_POINT_MARGIN = 0.5  # the principal point may lie this fraction outside the image


def _check_plausible(fx: float, fy: float, cx: float, cy: float, width: int, height: int,
                     source: str) -> None:
    low, high = FOCAL_PER_WIDTH_RANGE
    for name, focal, size in (('fx', fx, width), ('fy', fy, height)):
        if not low * size <= focal <= high * size:
            raise CameraInfoError(f'CameraInfo {source} is implausible: {name}={focal:g} px '
                                  f'for an image {size} px across (expected {low:g}-{high:g} '
                                  f'times that)')
    if not 1 / 3 <= fx / fy <= 3:
        raise CameraInfoError(f'CameraInfo {source} is implausible: fx={fx:g} and fy={fy:g} '
                              f'differ by more than 3x')
    m = PRINCIPAL_POINT_MARGIN
    if not (-m * width <= cx <= (1 + m) * width and -m * height <= cy <= (1 + m) * height):
        raise CameraInfoError(f'CameraInfo {source} is implausible: principal point '
                              f'({cx:g}, {cy:g}) lies far outside the {width}x{height} image')


def camera_info_for(intrinsics: Intrinsics, header, template: CameraInfo | None = None
                    ) -> CameraInfo:
    """CameraInfo that matches an image of ``intrinsics.size`` exactly.

    Keeps ``template``'s distortion model, D and R; K and P come from ``intrinsics``
    (P with the template's Tx, Ty scaled like fx, fy). ROI and binning are left zero: the
    message describes the published image itself.
    """
    msg = CameraInfo()
    msg.header = header
    msg.height, msg.width = intrinsics.height, intrinsics.width
    k = intrinsics.matrix()
    msg.k = k.reshape(-1).tolist()
    p = np.zeros((3, 4))
    p[:, :3] = k
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.distortion_model = 'plumb_bob'
    msg.d = [0.0] * 5
    if template is not None:
        msg.distortion_model = template.distortion_model
        msg.d = list(template.d)
        if any(template.r):
            msg.r = list(template.r)
        # Tx = -fx * baseline, Ty = -fy * baseline: scaled with the focal lengths (which
        # also covers the template's binning and ROI, unlike a ratio of image sizes)
        if template.p[0] > 0:
            p[0, 3] = template.p[3] * intrinsics.fx / template.p[0]
        if template.p[5] > 0:
            p[1, 3] = template.p[7] * intrinsics.fy / template.p[5]
    msg.p = p.reshape(-1).tolist()
    return msg


def depth_image(depth: np.ndarray, header) -> Image:
    """``(H, W)`` float metres -> 32FC1 Image (REP 118: NaN where invalid).

    Non-finite and non-positive depths are published as NaN: never as a valid reading."""
    depth = np.ascontiguousarray(depth, dtype=np.float32)
    if not (np.isfinite(depth).all() and (depth > 0).all()):
        with np.errstate(invalid='ignore'):
            depth = np.where(np.isfinite(depth) & (depth > 0), depth, np.float32(np.nan))
    return image_message(depth, header, '32FC1')


def uncertainty_image(sigma: np.ndarray, header) -> Image:
    """``(H, W)`` float standard deviations (m) -> 32FC1 Image; NaN where not finite (0 is
    a valid value: a certain pixel)."""
    sigma = np.ascontiguousarray(sigma, dtype=np.float32)
    if not np.isfinite(sigma).all():
        sigma = np.where(np.isfinite(sigma), sigma, np.float32(np.nan))
    return image_message(sigma, header, '32FC1')


def image_message(pixels: np.ndarray, header, encoding: str) -> Image:
    """``(H, W)`` or ``(H, W, C)`` little-endian pixels -> an Image of ``encoding``, rows
    unpadded (``step`` = width x bytes per pixel), one copy of the data."""
    pixels = np.ascontiguousarray(pixels)
    msg = Image()
    msg.header = header
    msg.height, msg.width = pixels.shape[:2]
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = pixels.shape[1] * pixels.itemsize * (pixels.shape[2] if pixels.ndim == 3 else 1)
    msg.data = _bytes(pixels)
    return msg


def depth_from_image(msg: Image) -> np.ndarray:
    """32FC1 Image -> ``(H, W)`` float32 view of its data (zero-copy)."""
    if msg.encoding != '32FC1':
        raise ImageFormatError(f'expected 32FC1, got {msg.encoding!r}')
    dtype = '>f4' if msg.is_bigendian else '<f4'
    rows = np.frombuffer(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)
    return rows[:, :msg.width * 4].copy().view(dtype).reshape(msg.height, msg.width)


def rgb_image(rgb: np.ndarray, header) -> Image:
    """``(H, W, 3)`` uint8 -> rgb8 Image."""
    return image_message(rgb, header, 'rgb8')


def _cloud_fields(with_rgb: bool) -> list[PointField]:
    names = ['x', 'y', 'z'] + (['rgb'] if with_rgb else [])
    return [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1)
            for i, n in enumerate(names)]


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """``(..., 3)`` uint8 -> ``(...,)`` float32 holding 0x00RRGGBB (PCL/rviz packing)."""
    rgb = rgb.astype(np.uint32)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    return packed.view(np.float32)


def pointcloud(depth: np.ndarray, intrinsics: Intrinsics, header, stride: int = 1,
               min_depth_m: float = 0.0, max_depth_m: float = math.inf,
               rgb: np.ndarray | None = None) -> PointCloud2:
    """Organised PointCloud2 (x, y, z float32 [, rgb]) of a z-depth image.

    ``depth (H, W)`` metres at the size of ``intrinsics``; every ``stride``-th row and
    column; NaN for invalid or out-of-range depth; ``rgb (H, W, 3)`` uint8 optional.
    """
    height, width = depth[::stride, ::stride].shape
    fields = 4 if rgb is not None else 3
    buffer = np.empty((height, width, fields), dtype=np.float32)
    backproject(depth, intrinsics, stride, min_depth_m, max_depth_m, out=buffer[..., :3])
    if rgb is not None:
        if rgb.shape[:2] != depth.shape:
            raise ValueError(f'rgb is {rgb.shape[1]}x{rgb.shape[0]}, depth is '
                             f'{depth.shape[1]}x{depth.shape[0]}')
        buffer[..., 3] = pack_rgb(rgb[::stride, ::stride])
    msg = PointCloud2()
    msg.header = header
    msg.height, msg.width = height, width
    msg.fields = _cloud_fields(rgb is not None)
    msg.is_bigendian = False
    msg.point_step = 4 * fields
    msg.row_step = msg.point_step * width
    msg.is_dense = False
    msg.data = _bytes(buffer)
    return msg


def cloud_array(msg: PointCloud2) -> np.ndarray:
    """PointCloud2 with float32 fields -> ``(H, W)`` structured array (a copy)."""
    dtype = np.dtype({'names': [f.name for f in msg.fields],
                      'formats': ['<f4'] * len(msg.fields),
                      'offsets': [f.offset for f in msg.fields],
                      'itemsize': msg.point_step})
    return np.frombuffer(msg.data, dtype=dtype).reshape(msg.height, msg.width).copy()

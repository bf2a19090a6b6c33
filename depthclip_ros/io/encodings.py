"""Camera pixel encodings (``sensor_msgs/Image.encoding``) to RGB, numpy + OpenCV only.

One table, :data:`ENCODINGS`, lists what is understood; anything else raises
:class:`ImageFormatError` naming it. ``step`` padding and ``is_bigendian`` are honoured.
Conversions follow cv_bridge's semantics (16-bit scaled to 8-bit, ``8UC3`` read as BGR,
ROS Bayer names mapped to OpenCV's shifted Bayer codes).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from depthclip_ros.engine.config import MAX_SIDE_PX


class ImageFormatError(ValueError):
    """An image message that cannot be decoded; the message says why."""


@dataclass(frozen=True)
class Encoding:
    channels: int  # samples per pixel in the buffer
    dtype: str  # 'u1' or 'u2'
    to_rgb: int | None  # cv2.cvtColor code, None when already RGB
    rows_factor: float = 1.0  # buffer rows per image row (1.5 for 4:2:0)
    packed: bool = False  # YUV 4:2:2 - 2 bytes per pixel read as (H, W, 2) uint8


ENCODINGS: dict[str, Encoding] = {
    'rgb8': Encoding(3, 'u1', None),
    'bgr8': Encoding(3, 'u1', cv2.COLOR_BGR2RGB),
    'rgba8': Encoding(4, 'u1', cv2.COLOR_RGBA2RGB),
    'bgra8': Encoding(4, 'u1', cv2.COLOR_BGRA2RGB),
    'mono8': Encoding(1, 'u1', cv2.COLOR_GRAY2RGB),
    '8UC1': Encoding(1, 'u1', cv2.COLOR_GRAY2RGB),
    '8UC3': Encoding(3, 'u1', cv2.COLOR_BGR2RGB),
    '8UC4': Encoding(4, 'u1', cv2.COLOR_BGRA2RGB),
    'rgb16': Encoding(3, 'u2', None),
    'bgr16': Encoding(3, 'u2', cv2.COLOR_BGR2RGB),
    'rgba16': Encoding(4, 'u2', cv2.COLOR_RGBA2RGB),
    'bgra16': Encoding(4, 'u2', cv2.COLOR_BGRA2RGB),
    'mono16': Encoding(1, 'u2', cv2.COLOR_GRAY2RGB),
    '16UC1': Encoding(1, 'u2', cv2.COLOR_GRAY2RGB),
    'yuv422': Encoding(2, 'u1', cv2.COLOR_YUV2RGB_UYVY, packed=True),  # UYVY
    'uyvy': Encoding(2, 'u1', cv2.COLOR_YUV2RGB_UYVY, packed=True),
    'yuv422_yuy2': Encoding(2, 'u1', cv2.COLOR_YUV2RGB_YUY2, packed=True),  # YUYV
    'yuyv': Encoding(2, 'u1', cv2.COLOR_YUV2RGB_YUY2, packed=True),
    'nv12': Encoding(1, 'u1', cv2.COLOR_YUV2RGB_NV12, rows_factor=1.5),
    'nv21': Encoding(1, 'u1', cv2.COLOR_YUV2RGB_NV21, rows_factor=1.5),
    # ROS names the top-left 2x2 pattern; OpenCV names the second row's: RGGB is BayerBG.
    'bayer_rggb8': Encoding(1, 'u1', cv2.COLOR_BayerBG2RGB),
    'bayer_bggr8': Encoding(1, 'u1', cv2.COLOR_BayerRG2RGB),
    'bayer_gbrg8': Encoding(1, 'u1', cv2.COLOR_BayerGR2RGB),
    'bayer_grbg8': Encoding(1, 'u1', cv2.COLOR_BayerGB2RGB),
    'bayer_rggb16': Encoding(1, 'u2', cv2.COLOR_BayerBG2RGB),
    'bayer_bggr16': Encoding(1, 'u2', cv2.COLOR_BayerRG2RGB),
    'bayer_gbrg16': Encoding(1, 'u2', cv2.COLOR_BayerGR2RGB),
    'bayer_grbg16': Encoding(1, 'u2', cv2.COLOR_BayerGB2RGB),
}


def row_bytes(encoding: str, width: int) -> int:
    """Bytes of one image row without padding (``step`` may be larger)."""
    spec = ENCODINGS[encoding]
    return width * spec.channels * (2 if spec.dtype == 'u2' else 1)


def check_pixels(height: int, width: int, max_pixels: int | None) -> None:
    """Refuse a declared size above ``max_pixels`` (``None``: no limit) before any work."""
    if max_pixels is not None and height * width > max_pixels:
        raise ImageFormatError(f'image declares {width}x{height} = {height * width} pixels, '
                               f'more than max_input_pixels ({max_pixels}); refused before '
                               f'decoding')


def encoded_image_size(source) -> tuple[int, int]:
    """``(height, width)`` declared by a compressed image's header (PNG, JPEG, BMP, TIFF,
    WebP, ...), read without decoding the pixels. ``source`` is the encoded bytes or a
    file path. Raises :class:`ImageFormatError` when the header cannot be read."""
    import io
    import warnings

    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    stream = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) \
        or hasattr(source, 'tobytes') else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', PILImage.DecompressionBombWarning)
            with PILImage.open(stream) as image:  # lazy: reads the header only
                width, height = image.size
    except PILImage.DecompressionBombError as error:
        raise ImageFormatError(f'image declares an absurd size, more than any '
                               f'max_input_pixels allows here ({error})') from None
    except UnidentifiedImageError:
        raise ImageFormatError('not a known image format (the header names none)') from None
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageFormatError(f'unreadable image header ({error})') from None
    return height, width


def decode_to_rgb(encoding: str, height: int, width: int, step: int, is_bigendian: bool,
                  data, max_pixels: int | None = None) -> np.ndarray:
    """Pixels of an image message as ``(height, width, 3)`` uint8 RGB.

    ``data`` is any buffer (``bytes``, ``array.array``, ``memoryview``). Raises
    :class:`ImageFormatError` for an unknown encoding, impossible sizes, a ``step`` shorter
    than a row, a buffer whose length is not ``step * rows`` or more than ``max_pixels``
    pixels (checked from the header, before the data is touched).
    """
    spec = ENCODINGS.get(encoding)
    if spec is None:
        raise ImageFormatError(f'unsupported encoding {encoding!r} (supported: '
                               f'{", ".join(sorted(ENCODINGS))})')
    if not (0 < height <= MAX_SIDE_PX and 0 < width <= MAX_SIDE_PX):
        raise ImageFormatError(f'image size {width}x{height} is zero or absurd')
    check_pixels(height, width, max_pixels)
    if spec.rows_factor != 1.0 and (height % 2 or width % 2):
        raise ImageFormatError(f'{encoding} needs an even width and height, got '
                               f'{width}x{height}')
    if spec.packed and width % 2:
        raise ImageFormatError(f'{encoding} needs an even width, got {width}')
    needed = row_bytes(encoding, width)
    if step < needed:
        raise ImageFormatError(f'step {step} is smaller than one {encoding} row of {width} '
                               f'pixels ({needed} bytes)')
    rows = int(height * spec.rows_factor)
    buffer = np.frombuffer(data, dtype=np.uint8)
    if buffer.size != step * rows:
        raise ImageFormatError(f'data has {buffer.size} bytes, expected step x rows = '
                               f'{step} x {rows} = {step * rows}')
    pixels = buffer.reshape(rows, step)[:, :needed]
    if spec.dtype == 'u2':
        big = bool(is_bigendian)
        wide = np.ascontiguousarray(pixels).view('>u2' if big else '<u2')
        pixels = (wide >> 8).astype(np.uint8)  # 16 -> 8 bit, like cv_bridge's scaling
    if spec.packed:
        pixels = pixels.reshape(rows, width, 2)
    elif spec.channels > 1:
        pixels = pixels.reshape(rows, width, spec.channels)
    else:
        pixels = pixels.reshape(rows, width)
    if spec.to_rgb is None:
        return np.ascontiguousarray(pixels)
    return cv2.cvtColor(np.ascontiguousarray(pixels), spec.to_rgb)


def encode_rgb(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """Test helper and reference: RGB ``(H, W, 3)`` uint8 -> the buffer layout of
    ``encoding`` (without padding), as ``(rows, row_bytes)`` uint8, little-endian."""
    spec = ENCODINGS[encoding]
    if encoding in ('yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv', 'nv12', 'nv21') \
            or encoding.startswith('bayer'):
        raise ValueError(f'encode_rgb does not produce {encoding}')
    if spec.channels == 1:
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    elif spec.to_rgb is None:
        pixels = rgb
    else:
        inverse = {cv2.COLOR_BGR2RGB: cv2.COLOR_RGB2BGR, cv2.COLOR_RGBA2RGB: cv2.COLOR_RGB2RGBA,
                   cv2.COLOR_BGRA2RGB: cv2.COLOR_RGB2BGRA}[spec.to_rgb]
        pixels = cv2.cvtColor(rgb, inverse)
    if spec.dtype == 'u2':
        pixels = pixels.astype('<u2') * 257
    return np.ascontiguousarray(pixels).view(np.uint8).reshape(rgb.shape[0], -1)


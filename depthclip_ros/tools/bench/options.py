"""Option types of the benchmarks, without torch (``depthclip-ros bench --help`` reads
them)."""

from __future__ import annotations

import argparse

from depthclip_ros.engine.config import PRECISIONS

LAYOUTS = {'nhwc': 'channels_last', 'nchw': 'contiguous'}
MAX_IMAGE_SIDE = 8192  # --image-size of the benchmarks, per side
IMAGE_SIZE_HELP = f'camera image size, 1..{MAX_IMAGE_SIDE} px a side (default 480 640)'


def image_size_problem(size) -> str | None:
    """Why ``--image-size H W`` is refused, or ``None``."""
    height, width = size
    if not (1 <= height <= MAX_IMAGE_SIDE and 1 <= width <= MAX_IMAGE_SIDE):
        return f'--image-size must be 1..{MAX_IMAGE_SIDE} px per side, got {height} {width}'
    return None


def range_problem(name: str, value: float, low: float, high: float,
                  low_open: bool = False) -> str | None:
    """Why ``--name value`` is outside ``[low, high]`` (``(low, high]`` with ``low_open``;
    NaN refused too), or ``None``."""
    inside = (low < value if low_open else low <= value) and value <= high
    if inside:
        return None
    bracket = '(' if low_open else '['
    return f'--{name} must be in {bracket}{low:g}, {high:g}], got {value:g}'



def precision_variant(text: str) -> tuple[str, str | None]:
    """``fp32``, ``bf16-nchw``, ``fp32/nhwc``, ... -> ``(precision, layout or None)``
    (argparse type: ``ArgumentTypeError`` for anything else)."""
    precision, _, layout = text.strip().lower().replace('/', '-').partition('-')
    if precision not in PRECISIONS or (layout and layout not in LAYOUTS):
        raise argparse.ArgumentTypeError(
            f'{text!r}: a precision ({", ".join(PRECISIONS)}), optionally with -nchw or '
            f'-nhwc (the trunk layout)')
    return precision, layout or None


# bench --compare-backends: label -> (backend, precision) of the engine it builds
BACKEND_VARIANTS = {'torch': ('torch', 'fp32'), 'openvino': ('openvino', 'fp32'),
                    'openvino-int8': ('openvino', 'int8')}

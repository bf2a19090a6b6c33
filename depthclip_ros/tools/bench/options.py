"""Option types of the benchmarks, without torch (``depthclip-ros bench --help`` reads
them)."""

from __future__ import annotations

import argparse

from depthclip_ros.engine.config import PRECISIONS

LAYOUTS = {'nhwc': 'channels_last', 'nchw': 'contiguous'}


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

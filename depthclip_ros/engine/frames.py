"""What goes into and comes out of one engine pass: :class:`FrameIn`, :class:`Prediction`,
and the moments of the bin distributions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from depthclip_ros.geometry import Intrinsics


@dataclass
class Prediction:
    """What one pass of :meth:`DepthCLIP.infer` gives, for one image or a batch."""

    depth: np.ndarray  # (H, W) or (B, H, W) float32 metric z-depth
    sigma: np.ndarray | None  # same shape, metres: std of the bin distribution (if asked)
    tokens: torch.Tensor  # (B, C, h, w) trunk map of the unflipped images, on the device
    sigma_median_m: float | list[float]  # median sigma over the token grid, per image
    scene: object = None  # SceneEstimate (per image) when infer classified the scenes


@dataclass
class FrameIn:
    """One image for :meth:`DepthCLIP.infer_frames`: ``rgb`` ``(H, W, 3)`` uint8, the
    ``intrinsics`` of that image, the ``output_size`` ``(height, width)`` of its depth
    (default the image size), whether to compute its ``uncertainty``, and its canonical
    ``bins_m`` (default the head's, or its scene's with scene-adaptive bins)."""

    rgb: np.ndarray
    intrinsics: Intrinsics
    output_size: tuple[int, int] | None = None
    uncertainty: bool = False
    bins_m: object = None

    def check(self) -> None:
        """Raise ``ValueError``/``TypeError`` naming what is wrong with this frame."""
        if not isinstance(self.rgb, np.ndarray) or self.rgb.ndim != 3 or \
                self.rgb.shape[-1] != 3 or min(self.rgb.shape[:2]) < 1:
            shape = getattr(self.rgb, 'shape', type(self.rgb).__name__)
            raise ValueError(f'images must be (H, W, 3) or (B, H, W, 3) RGB, got {shape}')
        if self.rgb.dtype != np.uint8:
            raise TypeError(f'images must be uint8, got {self.rgb.dtype}')
        if not isinstance(self.intrinsics, Intrinsics):
            raise TypeError(f'intrinsics must be Intrinsics, got '
                            f'{type(self.intrinsics).__name__}')
        height, width = self.rgb.shape[:2]
        if self.intrinsics.size != (height, width):
            raise ValueError(f'intrinsics are for {self.intrinsics.width}x'
                             f'{self.intrinsics.height}, images are {width}x{height}')
        if self.output_size is not None:
            size = tuple(self.output_size)
            if len(size) != 2 or min(size) < 1:
                raise ValueError(f'output_size must be (height, width) > 0, got {size}')


def bin_moments(weights: torch.Tensor, bins: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of the bin distributions: ``weights (B, HW, K)`` over
    ``bins (K,)`` or ``(B, K)`` -> two ``(B, HW)``. The variance is summed about the mean
    (``sum w (b - D)^2``, equal to ``sum w b^2 - D^2`` but without its cancellation)."""
    values = bins.view(-1, 1, bins.shape[-1])  # (1 or B, 1, K)
    depth = (weights * values).sum(-1)
    variance = (weights * (values - depth.unsqueeze(-1)).square()).sum(-1)
    return depth, variance.clamp_min(0).sqrt()


def as_batch(images) -> tuple[np.ndarray, bool]:
    if not isinstance(images, np.ndarray):
        raise TypeError(f'images must be a numpy array, got {type(images).__name__}')
    single = images.ndim == 3
    batch = images[None] if single else images
    if batch.ndim != 4 or batch.shape[-1] != 3 or min(batch.shape[:3]) < 1:
        raise ValueError(f'images must be (H, W, 3) or (B, H, W, 3) RGB, got {images.shape}')
    if batch.dtype != np.uint8:
        raise TypeError(f'images must be uint8, got {batch.dtype}')
    return np.ascontiguousarray(batch), single


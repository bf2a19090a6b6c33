"""What the benchmarks of ``depthclip-ros bench`` (and bench-bag, bench-node,
bench-cameras) share: the machine's description, device-synchronised timing, the frames
and camera every benchmark times, and the bins a timed frame uses."""

from __future__ import annotations

from pathlib import Path
import platform
import time
from typing import Callable

import numpy as np
import torch

from depthclip_ros.engine.depthclip import DepthCLIP
from depthclip_ros.geometry import Intrinsics


def cpu_name() -> str:
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown CPU'


def device_description(engine: DepthCLIP, dtype: bool = True) -> str:
    """The engine's device (and its dtype), with the CPU's name and thread count on the
    CPU."""
    device = engine.describe_device()
    if not dtype:
        device = device.rsplit(' ', 1)[0]
    if engine.device.type == 'cpu':
        device += f' - {cpu_name()}, {torch.get_num_threads()} threads'
    return device


def device_sync(engine: DepthCLIP) -> Callable[[], None] | None:
    """What waits for the engine's device work (CUDA), or None (the CPU: nothing to wait
    for)."""
    return torch.cuda.synchronize if engine.device.type == 'cuda' else None


def timed(step: Callable[[], object], sync: Callable[[], None] | None) -> float:
    """Milliseconds of ``step()`` (device work included)."""
    if sync:
        sync()
    start = time.perf_counter()
    step()
    if sync:
        sync()
    return (time.perf_counter() - start) * 1e3


def frame_bins(engine: DepthCLIP) -> tuple[float, ...] | None:
    """Bins to pass with every timed frame: with scene-adaptive bins the first scene's (the
    cost is that of any bins), so that the frame is timed without a scene classification
    (the node classifies every ``scene_every_n_frames`` frames, timed on its own)."""
    return engine.head.scene_bin_sets[0] if engine.head.bins_mode != 'fixed' else None


def bench_camera(height: int, width: int) -> Intrinsics:
    """The nominal camera of a ``height`` x ``width`` bench frame (fx = fy = 0.96 width,
    centred)."""
    return Intrinsics(0.96 * width, 0.96 * width, width / 2, height / 2, width, height)


def random_images(batch: int, height: int, width: int) -> np.ndarray:
    """``batch`` random ``height`` x ``width`` rgb8 frames, the same in every run."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)


def boxes_scene(height: int, width: int) -> np.ndarray:
    """A deterministic scene for the proposals: coloured boxes on a noisy gradient."""
    rng = np.random.default_rng(1)
    rows = np.linspace(90, 170, height, dtype=np.float32)[:, None, None]
    rgb = np.broadcast_to(rows, (height, width, 3)) + rng.normal(0, 4, (height, width, 3))
    colours = ((200, 40, 40), (40, 60, 200), (40, 170, 60), (220, 210, 40), (150, 80, 160))
    for i, colour in enumerate(colours):
        top, left = int(height * (0.1 + 0.15 * i)), int(width * (0.05 + 0.18 * i))
        rgb[top:top + height // 4, left:left + width // 6] = colour
    return np.clip(rgb, 0, 255).astype(np.uint8)

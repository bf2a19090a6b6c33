"""Which backend runs the engine's image networks (``backend``), decided once at load.

- ``torch``: the engine's own modules (today's path);
- ``openvino``: :class:`~depthclip_ros.engine.openvino_trunk.OpenVINONetworks` on the CPU,
  fp32 or int8; the trunk at the configured input size is converted (or read from the
  cache), compiled and run once at load, so that the first frame pays nothing;
- ``auto``: OpenVINO when the engine runs fp32 on the CPU, openvino is installed and a
  short measurement at load (:data:`AUTO_RUNS` interleaved trunk runs of each after a
  warm-up, medians) finds it faster; torch otherwise (on CUDA, in bf16, without
  openvino); with ``precision: int8`` OpenVINO (nothing else runs it). The choice and its
  timings are logged once.

Everything after the trunk (head, sigma, scene bins, upsampling) stays in torch.
"""

from __future__ import annotations

import logging
import statistics
import time

import torch

from depthclip_ros.engine.config import OPENVINO_INSTALL, openvino_installed

LOG = logging.getLogger(__name__)

AUTO_RUNS = 3  # timed trunk runs per backend for auto, after one warm-up each


def choose_backend(engine):
    """The OpenVINO networks ``engine`` (loaded, its config's ``backend`` not yet applied)
    should run its image networks on, or ``None`` for torch."""
    config = engine.config
    if config.backend == 'torch':
        return None
    from depthclip_ros.engine.openvino_trunk import OpenVINONetworks
    trunk_shape = (1, 3, *config.input_size)
    if config.openvino_required:
        networks = OpenVINONetworks(engine)
        # converted (or read) and compiled now, and its first run's set-up paid: not by
        # the first frame
        networks.trunk(torch.zeros(trunk_shape))
        if config.backend == 'auto':
            LOG.info('backend auto: openvino (precision int8 runs on OpenVINO only)')
        return networks
    reason = None
    if engine.device.type != 'cpu':
        reason = f'the engine runs on {engine.device} (OpenVINO runs on the CPU here)'
    elif engine.dtype != torch.float32:
        reason = f'the engine runs {str(engine.dtype).replace("torch.", "")} (OpenVINO ' \
                 f'runs fp32 or int8 here)'
    elif not openvino_installed():
        reason = f'openvino is not installed (`{OPENVINO_INSTALL}`)'
    if reason is not None:
        LOG.info('backend auto: torch, as %s', reason)
        return None
    networks = OpenVINONetworks(engine)
    networks.request('trunk', trunk_shape)
    torch_ms, openvino_ms = measure_trunks(engine, networks, trunk_shape)
    chosen = 'openvino' if openvino_ms < torch_ms else 'torch'
    LOG.info('backend auto: %s (trunk at %dx%d, median of %d: openvino fp32 %.1f ms, '
             'torch %.1f ms)', chosen, *config.input_size, AUTO_RUNS, openvino_ms, torch_ms)
    engine.backend_timings = {'openvino': openvino_ms, 'torch': torch_ms}
    return networks if chosen == 'openvino' else None


@torch.inference_mode()
def measure_trunks(engine, networks, shape: tuple[int, ...]) -> tuple[float, float]:
    """Median milliseconds of the torch trunk and the OpenVINO trunk at ``shape``, timed
    in interleaved rounds after one warm-up run each."""
    x = torch.zeros(shape, dtype=engine.dtype, device=engine.device).contiguous(
        memory_format=engine.memory_format)
    runs = {'torch': engine._trunk, 'openvino': networks.trunk}
    times = {name: [] for name in runs}
    for run in runs.values():
        run(x)
    for _ in range(AUTO_RUNS):
        for name, run in runs.items():
            started = time.perf_counter()
            run(x)
            times[name].append(1e3 * (time.perf_counter() - started))
    return statistics.median(times['torch']), statistics.median(times['openvino'])

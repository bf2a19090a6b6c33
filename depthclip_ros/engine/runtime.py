"""Where and how the trunk runs: device, dtype and memory layout, decided once at load."""

from __future__ import annotations

import torch

from depthclip_ros.engine.config import (
    check_openvino_installed,
    CUDA_GRAPHS_NEED_CUDA,
    ModelConfig,
    parse_device,
)

# Channels-last (NHWC) trunk on the CPU in fp32 too: faster than NCHW on the project's
# CPUs (docs/benchmarks.md, "Precision and layout"); bf16 always runs channels-last. CUDA
# fp16 and fp32 keep the default (NCHW) layout: nothing on a GPU has been measured here.
CPU_FP32_CHANNELS_LAST = True
# Frames per trunk call within a batch on the CPU: one. On the project's CPUs one trunk
# call per batch had the lower throughput (docs/benchmarks.md, "Batching several frames"),
# so infer_frames batches everything but the trunk there; on CUDA the whole batch goes
# through at once (engine.trunk_batch None). bench --batch sets trunk_batch to compare.
CPU_TRUNK_BATCH = 1


def resolve_device(device: str) -> torch.device:
    """The torch device for ``device``; raises ``ValueError`` if CUDA is asked but absent."""
    device = parse_device(device)
    if device == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if device.startswith('cuda'):
        if not torch.cuda.is_available():
            raise ValueError(f'device {device!r} asked for but CUDA is not available')
        index = int(device[5:]) if ':' in device else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f'device {device!r} asked for but only '
                             f'{torch.cuda.device_count()} CUDA device(s) exist')
    return torch.device(device)



def cpu_bf16_native() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16), as oneDNN (the
    CPU convolution library) reports it; else from /proc/cpuinfo's flags. Native is not
    the same as fast: on a CPU with AVX512-BF16 but no AMX, bf16 may be slower than fp32
    (measure with ``depthclip-ros bench --compare-precision``)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without the probe
        pass
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as cpuinfo:
            flags = {f for line in cpuinfo if line.startswith('flags')
                     for f in line.split(':', 1)[1].split()}
    except OSError:
        return False
    return bool(flags & {'avx512_bf16', 'amx_bf16'})


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The trunk's dtype for ``precision`` on ``device``; ``ValueError`` when the device
    cannot run it (fp16 on the CPU; bf16 on a CPU without native bf16 or an old GPU)."""
    if precision == 'auto':
        return torch.float16 if device.type == 'cuda' else torch.float32
    if precision == 'int8':  # OpenVINO's trunk; the torch side (head, fallbacks) in fp32
        if device.type != 'cpu':
            raise ValueError('precision int8 runs on the CPU only (OpenVINO)')
        return torch.float32
    if precision == 'fp16' and device.type != 'cuda':
        raise ValueError('precision fp16 needs a CUDA device; use fp32 (or auto) on the CPU')
    if precision == 'bf16':
        if device.type == 'cuda':
            if not torch.cuda.is_bf16_supported():
                raise ValueError(f'precision bf16 is not supported by {device} '
                                 f'({torch.cuda.get_device_name(device)}); use fp16 or auto')
        elif not cpu_bf16_native():
            raise ValueError('precision bf16 needs a CPU with native bf16 (AVX512-BF16 or '
                             'AMX, as oneDNN reports it) or a CUDA device; this CPU has '
                             'none: use fp32 (or auto)')
        return torch.bfloat16
    return torch.float16 if precision == 'fp16' else torch.float32


def resolve_runtime(config: ModelConfig) -> tuple[torch.device, torch.dtype]:
    """The device and trunk dtype of ``config`` on this machine, or ``ValueError`` with
    the reason (CUDA absent, a precision the device cannot run, cuda_graphs without
    CUDA). Loads nothing."""
    openvino = config.openvino_required
    # OpenVINO runs on the CPU here: device auto means the CPU with it
    device = resolve_device('cpu' if openvino and config.device == 'auto' else config.device)
    dtype = resolve_dtype(config.precision, device)
    if config.cuda_graphs and device.type != 'cuda':
        raise ValueError(CUDA_GRAPHS_NEED_CUDA)
    if openvino:
        check_openvino_installed(config.precision == 'int8')
    return device, dtype


def trunk_memory_format(device: torch.device, dtype: torch.dtype,
                        choice: str = 'auto') -> torch.memory_format:
    """The layout the trunk runs in: ``choice`` (:data:`MEMORY_FORMATS`) when it names
    one; for ``auto`` channels-last for bf16 and for fp32 on the CPU
    (:data:`CPU_FP32_CHANNELS_LAST`), else the default (NCHW). Channels-last fp16 on CUDA
    is the usual fast layout for convolutions on tensor cores, but it has not run on a GPU
    here: ``memory_format: channels_last`` asks for it."""
    if choice == 'channels_last':
        return torch.channels_last
    if choice == 'contiguous':
        return torch.contiguous_format
    if dtype == torch.bfloat16 or (device.type == 'cpu' and CPU_FP32_CHANNELS_LAST):
        return torch.channels_last
    return torch.contiguous_format


"""The image networks run by OpenVINO on the CPU (``backend: openvino``): the trunk of the
depth pass and the image encoder of the object step and the scene classifier.

Each network (engine/export.py's :class:`~depthclip_ros.engine.export.Trunk` and
:class:`~depthclip_ros.engine.export.ImageEncoder`, on the engine's own loaded weights) is
converted by OpenVINO's converter at a static input shape of batch 1, for ``fp32`` or
``int8`` (NNCF's post-training quantization, calibrated on the frames of
``calibration``), kept in the disk cache (engine/model_cache.py) and compiled for the CPU
with ``INFERENCE_PRECISION_HINT`` f32 (no silent bf16 on CPUs that have it). Shapes are
compiled when first asked for: the configured input size at load, others (the object
step's 224 x 224 crops, the referring paper protocol's 224 x 224 trunk) on first use.
Frames and crops run one at a time, as the CPU runs them fastest (engine/runtime.py
``CPU_TRUNK_BATCH``; docs/benchmarks.md). openvino and nncf are imported here only.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import warnings

import numpy as np
import torch

from depthclip_ros.engine.export import NETWORKS, to_openvino, without_cuda_home_notice
from depthclip_ros.engine.model_cache import arrays_hash, ModelCache, tell, tensors_hash
from depthclip_ros.engine.openvino_core import core

LOG = logging.getLogger(__name__)

CPU_CONFIG = {'INFERENCE_PRECISION_HINT': 'f32', 'PERFORMANCE_HINT': 'LATENCY'}


class OpenVINONetworks:
    """The engine's image networks on OpenVINO. ``engine``: a loaded
    :class:`~depthclip_ros.engine.depthclip.DepthCLIP` on the CPU (its weights, config and
    preprocessing); ``cache``: where converted networks are kept."""

    def __init__(self, engine, cache: ModelCache | None = None):
        import openvino as ov
        self.engine = engine
        self.precision = 'int8' if engine.config.precision == 'int8' else 'fp32'
        self.cache = cache or ModelCache()
        self._core = core()  # the process's one (engine/openvino_core.py)
        self._requests: dict[tuple[str, tuple[int, ...]], object] = {}
        self._lock = threading.Lock()  # one inference at a time per request
        self._weights_hash: str | None = None
        self._calibration: tuple[list[np.ndarray], str] | None = None
        self.version = ov.get_version()

    @property
    def name(self) -> str:
        return f'openvino {self.precision}'

    # ------------------------------------------------------------------ running
    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, h, w)`` -> ``(B, C, h / 32, w / 32)`` float32, frame by frame."""
        return self._run('trunk', x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """CLIP's image embedding ``(B, D)`` float32 of ``(B, 3, s, s)``, crop by crop."""
        return self._run('encoder', x)

    def _run(self, network: str, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().to(device='cpu', dtype=torch.float32)
        shape = (1, *x.shape[1:])
        request = self.request(network, shape)
        outputs = []
        with self._lock:
            for i in range(len(x)):
                request.infer({0: x[i:i + 1].contiguous().numpy()})
                outputs.append(request.get_output_tensor(0).data.copy())
        return torch.from_numpy(np.concatenate(outputs) if len(outputs) != 1 else outputs[0])

    def request(self, network: str, shape: tuple[int, ...]):
        """The infer request of ``network`` at ``shape``, converted (or read from the
        cache) and compiled the first time."""
        shape = tuple(int(v) for v in shape)
        request = self._requests.get((network, shape))
        if request is None:
            model = self.cache.load_or_build(self.key(network, shape),
                                             lambda: self._build(network, shape),
                                             self._describe(network, shape))
            compiled = self._core.compile_model(model, 'CPU', CPU_CONFIG)
            request = self._requests[(network, shape)] = compiled.create_infer_request()
        return request

    # ------------------------------------------------------------------ building
    def key(self, network: str, shape: tuple[int, ...]) -> dict:
        """Everything the converted network depends on (the disk cache's key)."""
        if self._weights_hash is None:
            self._weights_hash = tensors_hash(self.engine.clip.visual.state_dict())
        key = {'network': network, 'model': self.engine.config.model,
               'weights_sha256': self._weights_hash, 'shape': list(shape),
               'precision': self.precision, 'openvino': self.version}
        if self.precision == 'int8':
            key['calibration_sha256'] = self.calibration()[1]
            key['nncf'] = import_nncf().__version__
        return key

    def calibration(self) -> tuple[list[np.ndarray], str]:
        """The calibration frames (uint8 RGB, read once) and their hash."""
        if self._calibration is None:
            from depthclip_ros.io.calibration import calibration_frames
            frames = calibration_frames(self.engine.config.calibration)
            self._calibration = frames, arrays_hash(frames)
        return self._calibration

    def _describe(self, network: str, shape: tuple[int, ...]) -> str:
        extra = f' ({len(self.calibration()[0])} calibration frames)' \
            if self.precision == 'int8' else ''
        return (f'OpenVINO {self.precision} {network} of {self.engine.config.model} at '
                f'{"x".join(map(str, shape))}{extra}')

    def _build(self, network: str, shape: tuple[int, ...]):
        # also when first asked for inside an inference (the converter traces the module);
        # torch's notices that tracing is deprecated are not the user's concern
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore', FutureWarning)
            warnings.simplefilter('ignore', torch.jit.TracerWarning)
            module = NETWORKS[network](self.engine.clip.visual)
            model = to_openvino(module, shape)
            if self.precision == 'int8':
                model = self._quantize(model, network, shape)
        return model

    def _quantize(self, model, network: str, shape: tuple[int, ...]):
        """NNCF's post-training quantization of ``model`` on the calibration frames, each
        prepared as the engine prepares a frame for this input size."""
        nncf = import_nncf()
        frames, _ = self.calibration()
        size = tuple(shape[-2:])
        samples = CountedSamples(
            [self.engine.preprocess(frame[None], size).float().contiguous().numpy()
             for frame in frames], self._describe(network, shape))
        # NNCF logs each step and draws progress bars on stdout: not for a node's log or a
        # tool's output (the build's time is logged once by the cache)
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            return nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples),
                                 preset=nncf.QuantizationPreset.PERFORMANCE)


class CountedSamples:
    """The calibration samples as NNCF iterates them, each pass counted to the cache's
    build listener (``('calibrate', what, done, total)``): NNCF's own progress bars are
    silenced, the tools show these counts instead."""

    def __init__(self, samples: list, what: str):
        self.samples, self.what = samples, what

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self):
        for index, sample in enumerate(self.samples):
            tell('calibrate', self.what, index + 1, len(self.samples))  # being fed now
            yield sample


def import_nncf():
    """nncf, imported without the notice that no CUDA runtime exists which torch's
    extension builder (imported by nncf) logs on every machine without CUDA."""
    with without_cuda_home_notice():
        import nncf
    return nncf

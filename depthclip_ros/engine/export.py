"""The CLIP image networks as plain torch modules, and their conversion by the runtimes' own
converters (OpenVINO's ``convert_model``, torch's ONNX exporter): the one definition of
what "the trunk" and "the image encoder" are, shared by the torch engine, the OpenVINO
backend and ``depthclip-ros export``.

- :class:`Trunk`: the ResNet image tower up to ``layer4``, without its attention pool:
  ``(B, 3, h, w)`` normalised RGB -> ``(B, C, h / 32, w / 32)`` tokens (DepthCLIP's input).
- :class:`ImageEncoder`: the whole image tower with its attention pool, CLIP's
  ``encode_image``: ``(B, 3, s, s)`` -> ``(B, D)`` (the object step's 224 x 224 crops,
  the scene classifier).

Both wrap the loaded model's own submodules (no copy of the weights). The input is NCHW
float32 RGB, normalised with :data:`~depthclip_ros.engine.config.IMAGENET_MEAN` /
``IMAGENET_STD`` after scaling to [0, 1] (:func:`input_contract`). openvino and onnx are
imported only by the functions that need them.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

from depthclip_ros.engine.config import IMAGENET_MEAN, IMAGENET_STD


class Trunk(torch.nn.Module):
    """The image tower without its attention pool: ``stem`` and ``layer1``..``layer4``."""

    def __init__(self, visual: torch.nn.Module):
        super().__init__()
        self.visual = visual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        visual = self.visual
        x = visual.stem(x)
        x = visual.layer1(x)
        x = visual.layer2(x)
        x = visual.layer3(x)
        return visual.layer4(x)


class ImageEncoder(torch.nn.Module):
    """CLIP's image embedding (trunk and attention pool), unnormalised."""

    def __init__(self, visual: torch.nn.Module):
        super().__init__()
        self.visual = visual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)


NETWORKS = {'trunk': Trunk, 'encoder': ImageEncoder}


def input_contract(network: str, shape: tuple[int, int, int, int], output_shape,
                   model: str, pretrained: str) -> dict:
    """What a runtime must feed ``network`` and what it gives back (JSON-able), written
    beside every exported file."""
    return {
        'network': network,
        'model': model,
        'pretrained': pretrained,
        'input': {'name': 'image', 'shape': list(shape), 'dtype': 'float32',
                  'layout': 'NCHW', 'colour': 'RGB',
                  'normalisation': 'x = (rgb / 255 - mean) / std',
                  'mean': list(IMAGENET_MEAN), 'std': list(IMAGENET_STD)},
        'output': {'name': 'tokens' if network == 'trunk' else 'embedding',
                   'shape': list(output_shape), 'dtype': 'float32',
                   'layout': 'NCHW' if network == 'trunk' else 'ND'},
    }


def float_cpu_copy(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` as float32 NCHW on the CPU, for a converter: the module itself when it is
    already so, else a copy (the engine's own stays in its dtype, layout and device)."""
    parameters = list(module.parameters())
    if all(p.device.type == 'cpu' and p.dtype == torch.float32 and
           (p.dim() != 4 or p.is_contiguous()) for p in parameters):
        return module
    import copy
    clone = copy.deepcopy(module).to(device='cpu', dtype=torch.float32)
    for parameter in clone.parameters():
        if parameter.dim() == 4:
            parameter.data = parameter.data.contiguous()
    return clone


@contextlib.contextmanager
def without_cuda_home_notice():
    """Silences the notice "No CUDA runtime is found" that torch's extension builder logs
    when it is first imported on a machine without CUDA: nncf imports it, and OpenVINO's
    PyTorch converter imports nncf when it is installed. Not the user's concern."""
    notices = logging.getLogger('torch.utils.cpp_extension')
    level = notices.level
    notices.setLevel(logging.ERROR)
    try:
        yield
    finally:
        notices.setLevel(level)


def to_openvino(module: torch.nn.Module, shape: tuple[int, int, int, int]):
    """An ``openvino.Model`` of ``module`` for a static float32 input ``shape`` (NCHW), by
    OpenVINO's own PyTorch converter. Needs the ``openvino`` package."""
    import openvino as ov
    module = float_cpu_copy(module).eval()
    example = torch.zeros(shape, dtype=torch.float32)
    with torch.no_grad(), without_cuda_home_notice():
        converted = ov.convert_model(module, example_input=example, input=[list(shape)])
    converted.inputs[0].get_tensor().set_names({'image'})
    converted.outputs[0].get_tensor().set_names(
        {'tokens' if isinstance(module, Trunk) else 'embedding'})
    return converted


def to_onnx(module: torch.nn.Module, shape: tuple[int, int, int, int], path: Path,
            opset: int = 17) -> Path:
    """Write ``module`` for a static float32 input ``shape`` as ONNX to ``path`` (torch's
    TorchScript-based exporter; needs the ``onnx`` package). Returns ``path``."""
    import warnings
    module = float_cpu_copy(module).eval()
    example = torch.zeros(shape, dtype=torch.float32)
    output = 'tokens' if isinstance(module, Trunk) else 'embedding'
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)  # the exporter's own notices
        torch.onnx.export(module, (example,), str(path), input_names=['image'],
                          output_names=[output], opset_version=opset, dynamo=False)
    return Path(path)

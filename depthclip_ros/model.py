"""DepthCLIP: zero-shot metric depth from a frozen CLIP ResNet (METHOD.md).

Imports torch and open_clip, nothing from ROS. Construction is cheap; :meth:`DepthCLIP.load`
is the one call that reads weights and touches the device. Text features are computed once
per prompt change (:meth:`DepthCLIP.set_head`), never per frame.

Per frame (:meth:`DepthCLIP.predict`), for ``B`` images of one size:

1. upload the uint8 RGB images once, resize to ``input_size`` (if needed) and normalise
   with the ImageNet mean/std (the paper's evaluation code);
2. run the CLIP image trunk without its attention pool: ``(B, C, h, w)`` tokens;
3. ``paper`` mode: L2-normalise each token, keep every ``C / D``-th channel (``D`` the text
   embedding size; for RN50 every other one of 2048, the authors' nearest-neighbour
   ``interpolate(scale_factor=0.5)`` over channels); ``projected`` mode: ``c_proj(v_proj(.))``
   of the attention pool (MaskCLIP), then L2-normalise;
4. ``S = 100 * tokens @ T / temperature``, softmax over the ``K`` bins, weighted sum of
   the bins: canonical depth ``(B, 1, h, w)``; with flip averaging, averaged with the
   flipped-back prediction of the mirrored image at this resolution;
5. multiply by ``mean(fx, fy) / canonical_focal_px`` of the intrinsics at the network
   input (Metric3D's canonical camera), upsample bilinearly (``align_corners=True``) to the
   output size and download once.
"""

from __future__ import annotations

from collections import OrderedDict
import contextlib
from dataclasses import dataclass, replace
import logging
import math
import os
from typing import Sequence
import zipfile

import numpy as np
import torch
import torch.nn.functional as F

from .geometry import Intrinsics, metric_scale
from .timing import stage_or_nothing, StageTimer

LOG = logging.getLogger(__name__)

PAPER_DISTANCE_PROMPTS = ('giant', 'extremely close', 'close', 'not in distance',
                          'a little remote', 'far', 'unseen')
PAPER_DEPTH_BINS_M = (1.00, 1.50, 2.00, 2.25, 2.50, 2.75, 3.00)
PAPER_PROMPT_TEMPLATE = 'This {} is {}'
PAPER_PROMPT_OBJECTS = ('object',)
PAPER_TEMPERATURE = 0.1
NYU_FOCAL_PX = 518.8579  # NYU Depth v2 Kinect RGB fx: the bins' canonical camera
DEFAULT_INPUT_SIZE = (416, 544)  # height, width: the paper's NYU crop
# Ranges of the run-time head settings (the node's parameter descriptors use them too).
TEMPERATURE_RANGE = (1e-4, 100.0)
CANONICAL_FOCAL_RANGE_PX = (1.0, 100000.0)
# Bounds on the prompt set, so that every accepted set can be encoded quickly: bins x
# object words sentences, each within CLIP's 77-token context (checked by tokenising in
# DepthCLIP.check_head; the character bound is a cheap first filter).
MAX_BINS = 64
MAX_PROMPT_OBJECTS = 16
MAX_SENTENCES = 256
MAX_PROMPT_CHARS = 300
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_LOGIT_SCALE = 100.0
BINS_MODES = ('fixed', 'scene_soft', 'scene_hard')
SCENE_PROMPT_TEMPLATE = 'a photo of a {}.'  # CLIP's zero-shot template (METHOD.md §5)
MAX_SCENES = 32  # scene_names (each one text embedding, one bin set)

FEATURE_MODES = ('paper', 'projected')
PRECISIONS = ('auto', 'fp16', 'bf16', 'fp32')
# The trunk's layout: auto (the rule of trunk_memory_format), channels_last (NHWC) or
# contiguous (NCHW).
MEMORY_FORMATS = ('auto', 'channels_last', 'contiguous')
# Channels-last (NHWC) trunk on the CPU in fp32 too: measured on the project's 2 cores
# (RN50 at 416x544, same run) faster than NCHW; bf16 always runs channels-last. CUDA fp16
# and fp32 keep the default (NCHW) layout: nothing on a GPU has been measured here.
CPU_FP32_CHANNELS_LAST = True
# Frames per trunk call within a batch on the CPU: one. On the project's 2 cores a batch of
# 4 through one trunk call ran 0.85x the throughput of frame by frame (bench --batch), so
# infer_frames batches everything but the trunk there; on CUDA the whole batch goes through
# at once (engine.trunk_batch None). bench --batch sets trunk_batch to compare both.
CPU_TRUNK_BATCH = 1
MAX_CUDA_GRAPHS = 8  # captured trunk graphs (input shapes) per engine; more run eagerly
MAX_PINNED_BUFFERS = 8  # pinned host upload buffers (image shapes) per engine
CUDA_GRAPH_WARMUP_ITERS = 3  # eager runs on a side stream before a capture
RANDOM_WEIGHTS_BANNER = ('RANDOM WEIGHTS (pretrained=none): these depths are NOT an accuracy '
                         'result; load real CLIP weights for meaningful output.')

# Where a user gives ``pretrained``: a tool's option, a ROS parameter of a node started by
# ``ros2 run`` / ``python -m depthclip_ros.node``, or an argument of the launch file.
HINT_STYLES = ('cli', 'ros', 'launch')
_SPELL_PRETRAINED = {'cli': '--pretrained {}', 'ros': '-p pretrained:={}',
                     'launch': 'pretrained:={}'}
_WHERE_PRETRAINED = {
    'cli': '',
    'ros': ' (a node parameter: after --ros-args, or "pretrained: ..." in the --params-file '
           'YAML)',
    'launch': ' (a launch argument: ros2 launch depthclip_ros depth.launch.py '
              'pretrained:=..., or "pretrained: ..." in its params_file)',
}
LAUNCH_ENV = 'DEPTHCLIP_STARTED_BY_LAUNCH'  # set to 1 by launch/depth.launch.py
HUB_PROBE_TIMEOUT_S = 3.0  # one TCP connection attempt to the hub before a download


def how_to_supply_weights(style: str = 'cli') -> str:
    """How to give CLIP weights, in the syntax of ``style`` (one of :data:`HINT_STYLES`)."""
    if style not in HINT_STYLES:
        raise ValueError(f'hint style must be one of {HINT_STYLES}, got {style!r}')
    give = _SPELL_PRETRAINED[style].format
    return (f'Supply weights one of three ways{_WHERE_PRETRAINED[style]}: (1) an open_clip '
            f'tag such as {give("openai")}: downloaded once (needs the network), then read '
            f'from the Hugging Face cache ($HF_HOME/hub, default ~/.cache/huggingface/hub) '
            f'without it; (2) a local file: {give("/path/to/RN50.pt")} (OpenAI TorchScript) '
            f'or an open_clip state_dict (.pt/.bin/.safetensors); (3) {give("none")} for '
            f'random weights (tests only, meaningless depth).')


def node_hint_style() -> str:
    """The hint style for depth_node: ``launch`` when the launch file started it (it sets
    ``DEPTHCLIP_STARTED_BY_LAUNCH=1``), else ``ros``."""
    return 'launch' if os.environ.get(LAUNCH_ENV) == '1' else 'ros'


class WeightsError(RuntimeError):
    """The CLIP weights could not be loaded.

    ``problem`` says what went wrong; :meth:`hint` says how to supply weights in the syntax
    of where the user gave them (``cli``: ``--pretrained X``, ``ros``: ``-p pretrained:=X``,
    ``launch``: the launch argument ``pretrained:=X``); :meth:`message` is both.
    ``str(error)`` is ``message('cli')``: the tools' syntax.
    """

    def __init__(self, problem: str, *, supply_hint: bool = True):
        super().__init__(problem)
        self.problem = problem
        self.supply_hint = supply_hint

    def hint(self, style: str = 'cli') -> str:
        return how_to_supply_weights(style) if self.supply_hint else ''

    def message(self, style: str = 'cli') -> str:
        hint = self.hint(style)
        return f'{self.problem}\n{hint}' if hint else self.problem

    def __str__(self) -> str:
        return self.message('cli')


@dataclass(frozen=True)
class ModelConfig:
    """What is fixed once the model is loaded (read-only node parameters)."""

    model: str = 'RN50'
    pretrained: str = 'openai'  # open_clip tag, a local weights file, or 'none'
    device: str = 'auto'  # auto | cpu | cuda | cuda:N
    precision: str = 'auto'  # auto (fp16 on CUDA, fp32 on CPU) | fp16 | bf16 | fp32
    feature_mode: str = 'paper'  # paper | projected
    input_size: tuple[int, int] = DEFAULT_INPUT_SIZE  # network input height, width (px)
    # CUDA only, off by default (never yet run on a GPU by this project): the trunk as one
    # captured CUDA graph per input shape, pinned host buffers for the upload.
    cuda_graphs: bool = False
    # The trunk's layout (MEMORY_FORMATS). auto: channels-last on the CPU and in bf16, NCHW
    # for fp16/fp32 on CUDA until channels-last fp16 has been measured on a GPU here.
    memory_format: str = 'auto'

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model.startswith('RN'):
            raise ValueError(f'model must be an open_clip ResNet CLIP (RN50, RN101, RN50x4, '
                             f'..., optionally -quickgelu), got {self.model!r}')
        if not isinstance(self.pretrained, str) or not self.pretrained:
            raise ValueError(f'pretrained must be a tag, a file path or "none", '
                             f'got {self.pretrained!r}')
        if self.precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {PRECISIONS}, got {self.precision!r}')
        if self.feature_mode not in FEATURE_MODES:
            raise ValueError(f'feature_mode must be one of {FEATURE_MODES}, '
                             f'got {self.feature_mode!r}')
        check_input_size(self.input_size)
        parse_device(self.device)  # validates the spelling only; availability at load()
        if not isinstance(self.cuda_graphs, bool):
            raise ValueError(f'cuda_graphs must be true or false, got {self.cuda_graphs!r}')
        if self.cuda_graphs and self.device == 'cpu':
            raise ValueError(CUDA_GRAPHS_NEED_CUDA)
        if self.memory_format not in MEMORY_FORMATS:
            raise ValueError(f'memory_format must be one of {MEMORY_FORMATS}, '
                             f'got {self.memory_format!r}')

    @property
    def random_weights(self) -> bool:
        return self.pretrained.lower() == 'none'


@dataclass(frozen=True)
class HeadConfig:
    """What may change while running (prompts, bins, temperature, focal, flip)."""

    distance_prompts: tuple[str, ...] = PAPER_DISTANCE_PROMPTS
    depth_bins_m: tuple[float, ...] = PAPER_DEPTH_BINS_M
    prompt_template: str = PAPER_PROMPT_TEMPLATE
    prompt_objects: tuple[str, ...] = PAPER_PROMPT_OBJECTS
    temperature: float = PAPER_TEMPERATURE
    canonical_focal_px: float = NYU_FOCAL_PX
    flip_average: bool = False
    # Scene-adaptive bins (METHOD.md §5): with bins_mode scene_soft or scene_hard the bins
    # of each frame come from scene_bins_m (one set per scene, flattened), mixed or picked
    # by the frame's zero-shot scene probabilities; depth_bins_m is then unused.
    bins_mode: str = 'fixed'
    scene_names: tuple[str, ...] = ()
    scene_bins_m: tuple[float, ...] = ()
    scene_prompt_template: str = SCENE_PROMPT_TEMPLATE

    def __post_init__(self):
        # Normalise sequences to tuples so that configs compare and hash by value.
        object.__setattr__(self, 'distance_prompts', tuple(self.distance_prompts))
        object.__setattr__(self, 'depth_bins_m', tuple(float(b) for b in self.depth_bins_m))
        object.__setattr__(self, 'prompt_objects', tuple(self.prompt_objects))
        object.__setattr__(self, 'scene_names', tuple(self.scene_names))
        object.__setattr__(self, 'scene_bins_m', tuple(float(b) for b in self.scene_bins_m))
        prompts, bins = self.distance_prompts, self.depth_bins_m
        if len(prompts) < 2:
            raise ValueError(f'need at least 2 distance prompts, got {len(prompts)}')
        if any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise ValueError(f'distance prompts must be non-empty strings, got {list(prompts)}')
        if len(bins) != len(prompts):
            raise ValueError(f'need one depth bin per distance prompt: {len(prompts)} prompts, '
                             f'{len(bins)} bins')
        if any(not math.isfinite(b) or b <= 0 for b in bins):
            raise ValueError(f'depth bins must be finite and > 0, got {list(bins)}')
        if any(b1 <= b0 for b0, b1 in zip(bins, bins[1:])):
            raise ValueError(f'depth bins must be strictly increasing, got {list(bins)}')
        if not self.prompt_objects or any(not isinstance(o, str) or not o.strip()
                                          for o in self.prompt_objects):
            raise ValueError(f'prompt objects must be non-empty strings, '
                             f'got {list(self.prompt_objects)}')
        if len(prompts) > MAX_BINS:
            raise ValueError(f'at most {MAX_BINS} distance prompts, got {len(prompts)}')
        if len(self.prompt_objects) > MAX_PROMPT_OBJECTS:
            raise ValueError(f'at most {MAX_PROMPT_OBJECTS} prompt objects, '
                             f'got {len(self.prompt_objects)}')
        if len(prompts) * len(self.prompt_objects) > MAX_SENTENCES:
            raise ValueError(f'{len(prompts)} prompts x {len(self.prompt_objects)} objects '
                             f'= {len(prompts) * len(self.prompt_objects)} sentences to encode, '
                             f'more than {MAX_SENTENCES}')
        if not isinstance(self.prompt_template, str):
            raise ValueError(f'prompt_template must be a string, got {self.prompt_template!r}')
        for sentence in (s for group in self.prompts() for s in group):
            if len(sentence) > MAX_PROMPT_CHARS:
                raise ValueError(f'prompt {sentence[:40]!r}... has {len(sentence)} characters, '
                                 f'more than {MAX_PROMPT_CHARS}')
        if not _in_range(self.temperature, TEMPERATURE_RANGE):
            raise ValueError(f'temperature must be in [{TEMPERATURE_RANGE[0]:g}, '
                             f'{TEMPERATURE_RANGE[1]:g}], got {self.temperature}')
        if not _in_range(self.canonical_focal_px, CANONICAL_FOCAL_RANGE_PX):
            raise ValueError(f'canonical_focal_px must be in [{CANONICAL_FOCAL_RANGE_PX[0]:g}, '
                             f'{CANONICAL_FOCAL_RANGE_PX[1]:g}], got {self.canonical_focal_px}')
        self._check_scenes()

    def _check_scenes(self) -> None:
        if self.bins_mode not in BINS_MODES:
            raise ValueError(f'bins_mode must be one of {BINS_MODES}, got {self.bins_mode!r}')
        if self.bins_mode == 'fixed':
            return  # the scene settings are kept but unused
        names, flat, count = self.scene_names, self.scene_bins_m, len(self.distance_prompts)
        scene_prompts(names, self.scene_prompt_template)  # names, template, lengths
        if len(flat) != len(names) * count:
            raise ValueError(f'scene_bins_m must hold one set of {count} bins (one per '
                             f'distance prompt) for each of the {len(names)} scene_names, '
                             f'{len(names) * count} values in all; got {len(flat)}')
        for name, bins in zip(names, self.scene_bin_sets):
            if any(not math.isfinite(b) or b <= 0 for b in bins) or \
                    any(b1 <= b0 for b0, b1 in zip(bins, bins[1:])):
                raise ValueError(f'scene_bins_m: the bins of scene {name!r} must be finite, '
                                 f'> 0 and strictly increasing, got {list(bins)}')

    @property
    def scene_bin_sets(self) -> tuple[tuple[float, ...], ...]:
        """``scene_bins_m`` as one bin set per scene (empty when the count does not fit)."""
        count = len(self.distance_prompts)
        if not self.scene_names or len(self.scene_bins_m) != len(self.scene_names) * count:
            return ()
        return tuple(self.scene_bins_m[i * count:(i + 1) * count]
                     for i in range(len(self.scene_names)))

    def scene_prompts(self) -> list[str]:
        """The scene classifier's sentences (raises ``ValueError`` for bad names or a
        template that is not one plain ``{}`` field)."""
        return scene_prompts(self.scene_names, self.scene_prompt_template)

    def prompts(self) -> list[list[str]]:
        """The prompt sentences of every bin: ``K`` lists of ``len(prompt_objects)``.

        Raises ``ValueError`` when the template does not format into them (what the
        constructor checks, by building them)."""
        fields = _template_fields(self.prompt_template)
        if fields is None or sorted(fields) not in (['', ''], ['0', '1']):
            raise ValueError(f'prompt_template must hold exactly two plain fields, "{{}}" '
                             f'(object) and "{{}}" (distance word), as in "This {{}} is {{}}"; '
                             f'got {self.prompt_template!r}')
        out = [[self.prompt_template.format(obj, distance) for obj in self.prompt_objects]
               for distance in self.distance_prompts]
        return out

    @property
    def text_key(self) -> tuple:
        """What the text features depend on."""
        return (self.distance_prompts, self.prompt_template, self.prompt_objects)


def _template_fields(template: str) -> list[str] | None:
    """The field names of a ``str.format`` template, or ``None`` when it does not parse or
    a field has a conversion, a format spec (``{:>999999999}`` would allocate gigabytes) or
    an attribute/index."""
    import string
    try:
        parsed = list(string.Formatter().parse(template))
    except (ValueError, TypeError):
        return None
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if spec or conversion or name not in ('', '0', '1'):
            return None
        names.append(name)
    return names


def check_scene_names(names: Sequence[str]) -> tuple[str, ...]:
    """At least 2 and at most ``MAX_SCENES`` distinct non-empty strings; raises
    ``ValueError`` (``TypeError`` for one string instead of a list)."""
    if isinstance(names, str):
        raise TypeError('scene_names must be a list of strings, not one string')
    try:
        names = tuple(names)
    except TypeError:
        raise TypeError(f'scene_names must be a list of strings, got '
                        f'{type(names).__name__}') from None
    if len(names) < 2:
        raise ValueError(f'scene_names: need at least 2 scene names, got {len(names)}')
    if len(names) > MAX_SCENES:
        raise ValueError(f'scene_names: at most {MAX_SCENES} scene names, got {len(names)}')
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f'scene_names must be non-empty strings, got {name!r}')
    seen = set()
    for name in names:
        if name.strip() in seen:
            raise ValueError(f'scene_names must be unique, {name.strip()!r} is given twice')
        seen.add(name.strip())
    return names


def check_scene_template(template: str) -> str:
    """A ``str.format`` template with exactly one plain ``{}`` field; raises
    ``ValueError``."""
    if not isinstance(template, str) or _template_fields(template) != ['']:
        raise ValueError(f'scene_prompt_template must hold exactly one plain field "{{}}" '
                         f'(the scene name), as in {SCENE_PROMPT_TEMPLATE!r}; got {template!r}')
    return template


def scene_prompts(names: Sequence[str], template: str = SCENE_PROMPT_TEMPLATE) -> list[str]:
    """``template.format(name)`` for every scene, after checking both (no tokenising)."""
    names = check_scene_names(names)
    template = check_scene_template(template)
    sentences = [template.format(name) for name in names]
    for sentence in sentences:
        if len(sentence) > MAX_PROMPT_CHARS:
            raise ValueError(f'scene prompt {sentence[:40]!r}... has {len(sentence)} '
                             f'characters, more than {MAX_PROMPT_CHARS}')
    return sentences


def _in_range(value, bounds: tuple[float, float]) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value) and bounds[0] <= value <= bounds[1]


def check_input_size(size) -> tuple[int, int]:
    """Validate a network input ``(height, width)``: positive multiples of 32."""
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f'input_size must be (height, width), got {size!r}') from None
    if height < 32 or width < 32 or height % 32 or width % 32:
        raise ValueError(f"input_size must be positive multiples of 32 (the trunk's stride), "
                         f'got {height}x{width}')
    return height, width


def parse_device(device: str) -> str:
    """Check a device string's spelling: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if device in ('auto', 'cpu', 'cuda'):
        return device
    if isinstance(device, str) and device.startswith('cuda:') and device[5:].isdigit():
        return device
    raise ValueError(f'device must be auto, cpu, cuda or cuda:N, got {device!r}')


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


CUDA_GRAPHS_NEED_CUDA = ('cuda_graphs needs a CUDA device (device cuda, cuda:N, or auto '
                         'where CUDA is available); turn it off on the CPU')


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16), as oneDNN (the
    CPU convolution library) reports it; else from /proc/cpuinfo's flags. Native is not
    the same as fast: on a CPU with AVX512-BF16 but no AMX, bf16 may be slower than fp32
    (measure with ``depthclip-bench``)."""
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
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.precision, device)
    if config.cuda_graphs and device.type != 'cuda':
        raise ValueError(CUDA_GRAPHS_NEED_CUDA)
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


def _is_torchscript_archive(path: str) -> bool:
    """True for a TorchScript zip (OpenAI's original ``RN50.pt``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith('constants.pkl') or '/code/' in name
                   for name in archive.namelist())


def import_backend() -> None:
    """Import open_clip now, and with it what loading a model pulls in (torchvision, PIL,
    the Hugging Face hub client, torch._dynamo and triton: about 1,500 modules, two
    seconds). :func:`build_clip` imports it itself when needed; ``depth_node`` calls this
    while a signal still ends the process at once, so that no signal lands in the middle
    of an extension module's initialisation once starting up can be interrupted (one
    landing in triton's aborted the process)."""
    import open_clip  # noqa: F401


def build_clip(config: ModelConfig) -> torch.nn.Module:
    """Create the open_clip model of ``config`` on the CPU in fp32, weights loaded.

    A tag (``openai``, ...) is read from the local cache when it is there, without the
    network; otherwise open_clip downloads it, after one quick check that the hub can be
    reached at all (none with ``HF_HUB_OFFLINE=1``), so that a machine without network
    fails in seconds instead of after the hub client's retries. Raises
    :class:`WeightsError` (problem, and how to supply weights) when weights cannot be had.
    """
    import open_clip  # imported here: it is slow to import and pulls in torchvision

    name = config.model
    if name.replace('-quickgelu', '') not in {m.replace('-quickgelu', '')
                                              for m in open_clip.list_models()}:
        raise WeightsError(f'unknown open_clip model {name!r}')
    pretrained = config.pretrained
    try:
        if config.random_weights:
            # Announced once by whoever shows the run to a user (tools, node), not here.
            LOG.info('random weights (pretrained=none)')
            with torch.random.fork_rng(devices=[]), _quiet_open_clip(logging.WARNING):
                torch.manual_seed(0)  # the same random model every run
                return open_clip.create_model(name, pretrained=None, pretrained_text=False)
        if os.path.isfile(pretrained):
            if _is_torchscript_archive(pretrained):
                return _load_torchscript(pretrained)
            with _quiet_open_clip():
                return open_clip.create_model(name, pretrained=pretrained)
        if os.sep in pretrained or pretrained.endswith(('.pt', '.bin', '.safetensors', '.pth')):
            raise WeightsError(f'weights file {pretrained!r} does not exist')
        if pretrained not in open_clip.list_pretrained_tags_by_model(name):
            raise WeightsError(
                f'{pretrained!r} is neither a weights file nor an open_clip tag of {name} '
                f'(tags: {open_clip.list_pretrained_tags_by_model(name)})')
        cached = _cached_or_downloadable(name, pretrained)
        # The tag's own activation: OpenAI's (and the other RN tags') weights were trained
        # with QuickGELU, as the authors' code ran them.
        quick_gelu = bool(open_clip.get_pretrained_cfg(name, pretrained).get('quick_gelu'))
        with _quiet_open_clip():
            return open_clip.create_model(name, pretrained=cached or pretrained,
                                          force_quick_gelu=quick_gelu)
    except WeightsError:
        raise
    except Exception as error:  # download failures, corrupt or mismatched files
        raise WeightsError(f'could not load CLIP weights {pretrained!r} for {name}: '
                           f'{error}') from error


def _hub_file_candidates(hf_hub: str) -> tuple[str, list[str]]:
    """Repository and file names open_clip tries, in its order, for a config's ``hf_hub``
    entry (``org/repo/`` or ``org/repo/file``): the ``.safetensors`` variant first."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    repo, filename = os.path.split(hf_hub)
    filename = filename or HF_WEIGHTS_NAME
    if filename == HF_WEIGHTS_NAME:
        return repo, [HF_SAFE_WEIGHTS_NAME, filename]
    if filename.endswith(('.bin', '.pth')):
        return repo, [filename[:-4] + '.safetensors', filename]
    return repo, [filename]


def _cached_or_downloadable(name: str, tag: str) -> str | None:
    """The local cached file of open_clip tag ``tag``, or ``None`` when it is not cached
    but may be downloaded now (the hub, or the URL's host, accepts a connection).

    Looks where open_clip would download it to (the Hugging Face hub cache, or open_clip's
    URL cache when the hub client is absent) without touching the network. Raises
    :class:`WeightsError` at once when it is not cached and cannot be downloaded:
    ``HF_HUB_OFFLINE=1``, or no connection to the host within ``HUB_PROBE_TIMEOUT_S``.
    """
    from open_clip.pretrained import get_pretrained_cfg, has_hf_hub

    cfg = get_pretrained_cfg(name, tag)
    if 'file' in cfg:
        return cfg['file']
    if cfg.get('hf_hub') and has_hf_hub():
        from huggingface_hub import constants, try_to_load_from_cache
        repo, filenames = _hub_file_candidates(cfg['hf_hub'])
        for filename in filenames:
            found = try_to_load_from_cache(repo, filename)
            if isinstance(found, str) and os.path.isfile(found):
                LOG.info('CLIP weights %s for %s from the local cache: %s', tag, name, found)
                return found
        where = os.path.join(constants.HF_HUB_CACHE, 'models--' + repo.replace('/', '--'))
        source, offline = constants.ENDPOINT, constants.is_offline_mode()
    else:
        source = cfg.get('url', '')
        where = os.path.join(os.path.expanduser('~/.cache/clip'), os.path.basename(source))
        if os.path.isfile(where):
            return None  # open_clip checks its checksum and uses it without the network
        offline = os.environ.get('HF_HUB_OFFLINE', '').upper() in ('1', 'ON', 'YES', 'TRUE')
    if offline:
        reason = 'HF_HUB_OFFLINE=1 forbids downloading'
    else:
        reason = _unreachable(source)
        if reason is None:
            return None
        reason = f'there is no network: {reason}'
    raise WeightsError(f'CLIP weights {tag!r} for {name} are not in the local cache '
                       f'({where}) and {reason}. Download them once where there is network '
                       f'and copy that folder here, or give a local file.')


def _unreachable(url: str, timeout: float | None = None) -> str | None:
    """``None`` when one TCP connection to ``url``'s host (or to the proxy the environment
    sets for it) opens within ``timeout`` seconds, else why not. Name resolution counts
    against the timeout: the attempt runs on a daemon thread that is not waited for."""
    import socket
    import threading
    import urllib.parse
    import urllib.request

    timeout = HUB_PROBE_TIMEOUT_S if timeout is None else timeout
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        return f'no host in {url!r}'
    host, port = parts.hostname, parts.port or (443 if parts.scheme == 'https' else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    via = ''
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urllib.parse.urlsplit(proxy if '://' in proxy else f'http://{proxy}')
        if proxy_parts.hostname:
            via = f' (proxy of {host})'
            host, port = proxy_parts.hostname, proxy_parts.port or 80
    outcome: list = []

    def attempt():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(error)

    thread = threading.Thread(target=attempt, name='depthclip_hub_probe', daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        return f'{host}:{port}{via} did not answer within {timeout:g} s'
    if outcome[0] is not None:
        return f'{host}:{port}{via} cannot be reached ({outcome[0]})'
    return None


class _DropOpenClipLogs(logging.Filter):
    """Drops open_clip's root-logger records from ``level`` up: it logs an error before it
    raises (the raise becomes the one :class:`WeightsError` message) and warns about
    random initialisation (announced once by the tools and the node)."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= self.level
                    and f'{os.sep}open_clip{os.sep}' in record.pathname)


@contextlib.contextmanager
def _quiet_open_clip(level: int = logging.ERROR):
    """While open_clip builds, loads or downloads: none of its root-logger lines from
    ``level`` up, and no hub retry warnings (a failed download ends in one
    :class:`WeightsError` instead)."""
    hub_logger = logging.getLogger('huggingface_hub')
    hub_level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    drop = _DropOpenClipLogs(level)
    logging.root.addFilter(drop)
    try:
        yield
    finally:
        hub_logger.setLevel(hub_level)
        logging.root.removeFilter(drop)


def _load_torchscript(path: str) -> torch.nn.Module:
    """OpenAI's original TorchScript release (``RN50.pt``), rebuilt as a plain open_clip
    module in fp32 (the archive itself is not run)."""
    from open_clip.model import build_model_from_openai_state_dict

    archive = torch.jit.load(path, map_location='cpu')
    # Keep parameters and persistent buffers only: a TorchScript export may also carry
    # attributes such as the text attention mask, which open_clip rebuilds itself.
    state = {k: v for k, v in archive.state_dict().items() if k != 'attn_mask'}
    return build_model_from_openai_state_dict(state).float()


class DepthCLIP:
    """The DepthCLIP engine: RGB images + intrinsics in, metric z-depth out."""

    def __init__(self, config: ModelConfig | None = None, head: HeadConfig | None = None):
        self.config = config or ModelConfig()
        self.head = head or HeadConfig()
        self.device: torch.device | None = None
        self.dtype: torch.dtype | None = None
        self._clip = None
        self._text_key = None
        self._text_features = None  # (D, K) float32, unit columns
        self.memory_format = torch.contiguous_format  # the trunk's layout (set by load)
        self.trunk_batch: int | None = None  # frames per trunk call (None: all; set by load)
        self._graphs: TrunkGraphs | None = None  # cuda_graphs: the captured trunk
        self._uploads: PinnedUploads | None = None  # cuda_graphs: pinned host buffers
        self._bins = None  # (K,) float32 on device
        self._mean = self._std = None
        self.text_encodings = 0  # how often the text encoder ran (tests, diagnostics)
        self._scenes = None  # the scene classifier on this CLIP, made when first needed

    # ----------------------------------------------------------------- loading
    @property
    def loaded(self) -> bool:
        return self._clip is not None

    @property
    def random_weights(self) -> bool:
        return self.config.random_weights

    def load(self) -> 'DepthCLIP':
        """Read the weights, move them to the device, encode the prompts. Idempotent.

        The image tower runs in the precision's dtype and layout
        (:func:`trunk_memory_format`); the text tower and the head stay float32. On CUDA
        one warm-up frame runs here (with ``cuda_graphs``, capturing the batch-1 graph), so
        that the first real frame is not slow."""
        if self.loaded:
            return self
        device, dtype = resolve_runtime(self.config)
        clip = build_clip(self.config)
        visual = getattr(clip, 'visual', None)
        if not all(hasattr(visual, n) for n in ('stem', 'layer4', 'attnpool')):
            raise WeightsError(f'{self.config.model} has no ResNet image tower; DepthCLIP '
                               f'needs a ModifiedResNet CLIP (RN50, RN101, RN50x4, ...)')
        clip = clip.to(device=device).eval()
        memory_format = trunk_memory_format(device, dtype, self.config.memory_format)
        clip.visual.to(dtype=dtype, memory_format=memory_format)
        for parameter in clip.parameters():
            parameter.requires_grad_(False)
        self._clip, self.device, self.dtype = clip, device, dtype
        self.memory_format = memory_format
        self.trunk_batch = CPU_TRUNK_BATCH if device.type == 'cpu' else None
        if self.config.cuda_graphs:
            self._graphs = TrunkGraphs(self._trunk)
            self._uploads = PinnedUploads()
        self._mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255.0
        self._tokenizer = __import__('open_clip').get_tokenizer(
            self.config.model.replace('-quickgelu', ''))
        self.check_head(self.head)
        self._update_head(self.head)
        if device.type == 'cuda':
            self.warm_up()
        LOG.info('DepthCLIP %s (%s) loaded on %s in %s%s%s, %s mode', self.config.model,
                 self.config.pretrained, device, str(dtype).replace('torch.', ''),
                 ', channels-last' if memory_format == torch.channels_last else '',
                 ', CUDA graphs' if self._graphs is not None else '',
                 self.config.feature_mode)
        return self

    def warm_up(self) -> None:
        """Run one frame of zeros at the input size through the whole pass (with
        ``cuda_graphs``: capture the trunk's graph for that batch), so that the first real
        frame pays no one-off set-up. :meth:`load` calls it on CUDA; a failure is logged,
        not raised (the first real frame then reports its own error)."""
        self._require_loaded()
        height, width = self.config.input_size
        camera = Intrinsics(fx=float(width), fy=float(width), cx=(width - 1) / 2,
                            cy=(height - 1) / 2, width=width, height=height)
        try:
            self.infer(np.zeros((height, width, 3), np.uint8), camera,
                       bins_m=self.head.depth_bins_m)
            if self.device.type == 'cuda':
                torch.cuda.synchronize(self.device)
        except (RuntimeError, ValueError) as error:
            LOG.warning('DepthCLIP warm-up frame failed: %s', error)

    def describe_device(self) -> str:
        """Human-readable device name, e.g. ``cuda:0 (NVIDIA H100) fp16``."""
        if self.device is None:
            return 'not loaded'
        name = str(self.device)
        if self.device.type == 'cuda':
            name += f' ({torch.cuda.get_device_name(self.device)})'
        return f'{name} {str(self.dtype).replace("torch.", "")}'

    def use_memory_format(self, memory_format: torch.memory_format) -> None:
        """Run the trunk in ``memory_format`` (``torch.channels_last`` or
        ``torch.contiguous_format``) from now on: for comparisons (bench, tests); load()
        picks the faster one. Not with ``cuda_graphs`` (the captured graphs keep theirs)."""
        self._require_loaded()
        if memory_format not in (torch.channels_last, torch.contiguous_format):
            raise ValueError(f'memory_format must be torch.channels_last or '
                             f'torch.contiguous_format, got {memory_format}')
        if self._graphs is not None:
            raise ValueError('the memory format cannot change with cuda_graphs')
        self._clip.visual.to(memory_format=memory_format)
        self.memory_format = memory_format

    # ----------------------------------------------------------------- text side
    def set_head(self, head: HeadConfig) -> None:
        """Switch prompts, bins, temperature, focal or flip without reloading the model.

        The text encoder runs only if the prompts changed. ``head`` was validated when it
        was constructed, so a bad value never reaches a running engine.
        """
        if not isinstance(head, HeadConfig):
            raise TypeError(f'head must be a HeadConfig, got {type(head).__name__}')
        if self.loaded:
            self.check_head(head)
            self._update_head(head)
        self.head = head

    def _update_head(self, head: HeadConfig) -> None:
        if head.text_key != self._text_key:
            self._text_features = self.encode_prompts(head.prompts())
            self._text_key = head.text_key
        self._bins = torch.tensor(head.depth_bins_m, dtype=torch.float32, device=self.device)

    def check_head(self, head: HeadConfig) -> None:
        """Raise ``ValueError`` if ``head``'s prompts do not fit the text encoder's context
        (CLIP would silently cut them); cheap (tokenising only). Needs :meth:`load`."""
        for sentence in (s for group in head.prompts() for s in group):
            self.check_text(sentence, 'prompt')
        if head.bins_mode != 'fixed':
            for sentence in head.scene_prompts():
                self.check_text(sentence, 'scene prompt')

    def check_text(self, sentence: str, kind: str = 'text') -> None:
        """Raise ``ValueError`` (naming it a ``kind``) if ``sentence`` does not fit the text
        encoder's context; tokenising only. Needs :meth:`load`."""
        self._require_loaded()
        encode = getattr(self._tokenizer, 'encode', None)
        context = getattr(self._tokenizer, 'context_length', 77)
        if encode is None:
            return
        tokens = len(encode(sentence)) + 2  # start and end of text
        if tokens > context:
            raise ValueError(f"{kind} {sentence[:40]!r}... is longer than the text encoder's "
                             f'context of {context} tokens ({tokens} tokens)')

    @torch.inference_mode()
    def encode_prompts(self, prompts: list[list[str]]) -> torch.Tensor:
        """Text classifier ``(D, K)``: per bin, the mean of its L2-normalised prompt
        embeddings, normalised again (open_clip's zero-shot classifier recipe)."""
        self._require_loaded()
        flat = [sentence for group in prompts for sentence in group]
        tokens = self._tokenizer(flat).to(self.device)
        embeddings = F.normalize(self._clip.encode_text(tokens).float(), dim=-1)
        per_bin = embeddings.view(len(prompts), len(prompts[0]), -1).mean(dim=1)
        self.text_encodings += 1
        return F.normalize(per_bin, dim=-1).t().contiguous()  # float32: the head's dtype

    @property
    def text_features(self) -> torch.Tensor:
        self._require_loaded()
        return self._text_features

    # ----------------------------------------------------------------- image side
    def preprocess(self, images: np.ndarray, size: tuple[int, int] | None = None
                   ) -> torch.Tensor:
        """``(B, H, W, 3)`` uint8 RGB (host) -> ``(B, 3, h, w)`` normalised network input
        at ``size`` (default the configured input size; bilinear, antialiased), in the
        trunk's dtype and layout (:attr:`memory_format`). With ``cuda_graphs`` the pixels
        go up through a pinned host buffer, in one non-blocking copy."""
        self._require_loaded()
        size = tuple(size or self.config.input_size)
        if self._uploads is not None and self.device.type == 'cuda':
            x = self._uploads.upload(images, self.device)
        else:
            if not images.flags.writeable:  # a message's buffer: torch wants a writable one
                images = images.copy()
            x = torch.from_numpy(images).to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2)  # a channels-last view of the upload
        if tuple(x.shape[-2:]) != size:
            # Resized in NCHW: the same values as on the channels-last view, and faster on
            # the CPU (480x640 -> 416x544: 4.6 against 7.2 ms, 2 cores).
            x = F.interpolate(x.contiguous().float(), size=size, mode='bilinear',
                              align_corners=False, antialias=True)
        else:
            x = x.float()
        return self.normalise(x).contiguous(memory_format=self.memory_format)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, h, w)`` float RGB in [0, 255] -> network input (model dtype)."""
        return ((x - self._mean) / self._std).to(self.dtype)

    def image_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """CLIP image trunk without its final pooling: ``(B, C, h, w)`` last-stage map, in
        the trunk's dtype (``x`` is brought to its dtype and layout first). With
        ``cuda_graphs``, inputs of the configured size replay a captured graph."""
        x = x.to(dtype=self.dtype, memory_format=self.memory_format)
        chunk = self.trunk_batch or len(x)
        if len(x) > chunk:  # the CPU: frame by frame is faster than one batch
            return torch.cat([self._run_trunk(x[i:i + chunk])
                              for i in range(0, len(x), chunk)])
        return self._run_trunk(x)

    def _run_trunk(self, x: torch.Tensor) -> torch.Tensor:
        graphs = self._graphs
        if graphs is not None and x.is_cuda and tuple(x.shape[-2:]) == \
                tuple(self.config.input_size) and torch.is_inference_mode_enabled():
            return graphs(x)
        return self._trunk(x)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        visual = self._clip.visual
        x = visual.stem(x)
        x = visual.layer1(x)
        x = visual.layer2(x)
        x = visual.layer3(x)
        return visual.layer4(x)

    def token_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` trunk output -> ``(B, h*w, D)`` tokens comparable with text."""
        x = tokens.flatten(2).transpose(1, 2)  # (B, HW, C)
        text_dim = self._text_features.shape[0]
        if self.config.feature_mode == 'projected':
            pool = self._clip.visual.attnpool  # in the trunk's dtype, then float32
            return F.normalize(pool.c_proj(pool.v_proj(x)).float(), dim=-1)
        x = x.float()  # the head runs in float32 whatever the trunk's dtype
        x = x / x.norm(dim=-1, keepdim=True)
        ratio, remainder = divmod(x.shape[-1], text_dim)
        if remainder:
            raise ValueError(f'paper mode needs the trunk width ({x.shape[-1]}) to be a '
                             f'multiple of the text width ({text_dim})')
        # == F.interpolate(x, scale_factor=1/ratio) (nearest) over the channel axis
        return x[..., ::ratio]

    def bin_weights(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, h*w, D)`` token embeddings -> ``(B, h*w, K)`` float32 softmax weights over
        the bins: ``softmax(100 * tokens @ T / temperature)``, all in float32."""
        logits = CLIP_LOGIT_SCALE * (embeddings.float() @ self._text_features)  # (B, HW, K)
        return torch.softmax(logits / self.head.temperature, dim=-1)

    def canonical_depth(self, embeddings: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``(B, h*w, D)`` token embeddings -> ``(B, 1, h, w)`` float32 canonical depth."""
        depth = self.bin_weights(embeddings) @ self._bins  # (B, HW)
        return depth.view(-1, 1, *grid)

    def predict(self, images: np.ndarray, intrinsics: Intrinsics | list[Intrinsics],
                output_size: tuple[int, int] | None = None,
                timer: StageTimer | None = None) -> np.ndarray:
        """Metric z-depth of a batch of RGB images.

        ``images``: ``(H, W, 3)`` or ``(B, H, W, 3)`` uint8 RGB. ``intrinsics``: of the
        images as given (one for all, or one per image). ``output_size``: ``(height,
        width)`` of the returned depth, default the input image size.
        Returns ``(H', W')`` or ``(B, H', W')`` float32 metres.
        """
        return self.infer(images, intrinsics, output_size, timer).depth

    @torch.inference_mode()
    def infer(self, images: np.ndarray, intrinsics: Intrinsics | list[Intrinsics],
              output_size: tuple[int, int] | None = None, timer: StageTimer | None = None,
              *, uncertainty: bool = False, bins_m=None) -> Prediction:
        """:meth:`predict`, with what else the same pass gives (:class:`Prediction`).

        ``uncertainty``: also the per-pixel standard deviation of the metric bin
        distribution (METHOD.md §4), upsampled like the depth. ``bins_m``: canonical bins
        for this call instead of the head's: ``K`` values, or ``(B, K)`` for one set per
        image; each set strictly increasing and > 0. Without ``bins_m`` and with the head's
        ``bins_mode`` not ``fixed``, each image's scene is classified first and its bins
        mixed (METHOD.md §5; :attr:`Prediction.scene`); the node amortises that over
        frames by passing the bins itself.
        """
        self._require_loaded()
        batch, single = _as_batch(images)
        cameras = [intrinsics] * len(batch) if isinstance(intrinsics, Intrinsics) \
            else list(intrinsics)
        if len(cameras) != len(batch):
            raise ValueError(f'{len(batch)} images but {len(cameras)} intrinsics')
        if bins_m is None:
            per_image = [None] * len(batch)
        else:
            bins = np.asarray(bins_m, dtype=np.float64)
            per_image = [bins] * len(batch) if bins.ndim == 1 else list(bins)
            if len(per_image) != len(batch):
                raise ValueError(f'bins_m must be K bins or ({len(batch)}, K), got shape '
                                 f'{bins.shape}')
        frames = [FrameIn(image, camera, output_size, uncertainty, bins)
                  for image, camera, bins in zip(batch, cameras, per_image)]
        results = self.infer_frames(frames, timer)
        if single:
            return results[0]
        return Prediction(np.stack([r.depth for r in results]),
                          np.stack([r.sigma for r in results]) if uncertainty else None,
                          torch.cat([r.tokens for r in results]),
                          [r.sigma_median_m for r in results],
                          None if results[0].scene is None else [r.scene for r in results])

    @torch.inference_mode()
    def infer_frames(self, frames: list[FrameIn], timer: StageTimer | None = None
                     ) -> list[Prediction]:
        """One batched forward for frames of any sizes, cameras and output sizes (several
        cameras' newest frames, say): each is resized to the network input, so the trunk
        runs once on all of them; each result equals :meth:`infer` of that frame alone up
        to float re-association. Raises ``ValueError``/``TypeError`` for a bad frame (check
        frames with :meth:`FrameIn.check` first to isolate one)."""
        self._require_loaded()
        if not frames:
            return []
        for frame in frames:
            frame.check()
        stage = stage_or_nothing(timer)
        count = len(frames)
        bins = [None if f.bins_m is None else self._bins_for(f.bins_m, 1) for f in frames]
        scenes = [None] * count
        if self.head.bins_mode != 'fixed' and any(b is None for b in bins):
            with stage('scene'):
                for i, frame in enumerate(frames):
                    if bins[i] is None:
                        [scenes[i]], [mixed] = self._scene_bins([frame.rgb])
                        bins[i] = self._bins_for(mixed, 1)
        bins = (self._bins if all(b is None for b in bins) else
                torch.stack([self._bins if b is None else b.view(-1) for b in bins]))
        net_h, net_w = self.config.input_size
        # Python floats: applied as kernel scalars, no host-to-device copy per frame.
        scales = [metric_scale(f.intrinsics.resized(net_h, net_w),
                               self.head.canonical_focal_px) for f in frames]

        with stage('preprocess'):
            x = torch.cat([self.preprocess(f.rgb[None]) for f in frames])
            if self.head.flip_average:
                x = torch.cat([x, x.flip(-1)])
        with stage('network'):
            tokens = self.image_tokens(x)
        with stage('head'):
            grid = tuple(tokens.shape[-2:])
            weights = self.bin_weights(self.token_embeddings(tokens))  # (B', HW, K)
            if self.head.flip_average:  # the mixture of the two distributions
                plain, mirrored = weights[:count], weights[count:]
                mirrored = mirrored.view(count, *grid, -1).flip(2).reshape(plain.shape)
                weights = 0.5 * (plain + mirrored)
            depth, sigma = bin_moments(weights, bins)  # (B, HW) canonical metres
            maps = torch.stack([depth, sigma], dim=1).view(count, 2, *grid)
            if len(set(scales)) == 1:
                maps = maps * scales[0]
            else:
                maps = maps * torch.tensor(scales, device=maps.device).view(-1, 1, 1, 1)
            medians = maps[:, 1].flatten(1).median(dim=1).values
        with stage('upsample'):
            outs = []
            for i, frame in enumerate(frames):
                size = frame.output_size or frame.rgb.shape[:2]
                channels = maps[i:i + 1] if frame.uncertainty else maps[i:i + 1, :1]
                outs.append(F.interpolate(channels, size=tuple(size), mode='bilinear',
                                          align_corners=True)[0].cpu().numpy())
            medians = medians.cpu().tolist()
        tokens = tokens[:count]
        return [Prediction(out[0], out[1] if frame.uncertainty else None, tokens[i:i + 1],
                           medians[i], scenes[i])
                for i, (frame, out) in enumerate(zip(frames, outs))]

    def _scene_bins(self, batch: np.ndarray) -> tuple[list, list[tuple[float, ...]]]:
        """Each image's scene (:mod:`depthclip_ros.scenes`, on this CLIP) and its bins."""
        from .scenes import mix_bins
        head = self.head
        scenes = [self.scene_classifier.classify(image, head.scene_names,
                                                 head.scene_prompt_template)
                  for image in batch]
        return scenes, [mix_bins(s, head.scene_bin_sets, head.bins_mode) for s in scenes]

    @property
    def scene_classifier(self):
        """The zero-shot scene classifier on this CLIP (:mod:`depthclip_ros.scenes`):
        one per engine, so that its text cache is shared by every caller."""
        if self._scenes is None:
            from .scenes import SceneClassifier
            self._scenes = SceneClassifier(self)
        return self._scenes

    def _bins_for(self, bins_m, batch: int) -> torch.Tensor:
        """Per-call canonical bins: ``(K,)`` or ``(batch, K)`` on the device, checked."""
        bins = np.asarray(bins_m, dtype=np.float64)
        count = len(self.head.depth_bins_m)
        if bins.shape not in ((count,), (batch, count)):
            raise ValueError(f'bins_m must be {count} bins or ({batch}, {count}), '
                             f'got shape {bins.shape}')
        if not np.all(np.isfinite(bins)) or np.any(bins <= 0) or \
                np.any(np.diff(bins, axis=-1) <= 0):
            raise ValueError(f'bins_m must be finite, > 0 and strictly increasing, '
                             f'got {bins.tolist()}')
        return torch.as_tensor(bins, dtype=torch.float32, device=self.device)

    def _require_loaded(self) -> None:
        if not self.loaded:
            raise RuntimeError('DepthCLIP.load() has not been called')


class _Graph:
    """One captured trunk: replay after copying into its static input; the output is
    copied out (the next replay overwrites the static one)."""

    def __init__(self, static_in: torch.Tensor, static_out: torch.Tensor, graph):
        self.static_in, self.static_out, self.graph = static_in, static_out, graph

    def run(self, x: torch.Tensor) -> torch.Tensor:
        with torch.cuda.device(self.static_in.device):
            self.static_in.copy_(x)
            self.graph.replay()
            return self.static_out.clone()


class TrunkGraphs:
    """The image trunk as CUDA graphs (``ModelConfig.cuda_graphs``): one captured graph
    per input (shape, dtype, layout), i.e. per batch size at the fixed input size.

    The first input of a new shape captures (eager warm-up runs on a side stream first,
    as PyTorch's CUDA graph documentation prescribes); later ones replay. At most
    ``max_graphs`` are kept (each holds its own memory pool); inputs of further shapes run
    eagerly, so a changing batch size never re-captures over and over. A failed capture
    is logged once and turns the graphs off: everything runs eagerly from then on.
    ``capture`` (tests) replaces the CUDA capture: ``capture(trunk, x) -> runner`` with a
    ``run(x)`` method. Calls must come in inference mode (the engine checks).
    """

    def __init__(self, trunk, max_graphs: int = MAX_CUDA_GRAPHS, capture=None):
        if max_graphs < 1:
            raise ValueError(f'max_graphs must be >= 1, got {max_graphs}')
        self.trunk = trunk
        self.max_graphs = max_graphs
        self._capture = capture or capture_cuda_graph
        self._graphs: OrderedDict = OrderedDict()
        self.captures = 0  # successful captures (tests, diagnostics)
        self.replays = 0
        self.eager_runs = 0
        self.disabled_reason: str | None = None
        self._full_logged = False

    @staticmethod
    def key(x: torch.Tensor) -> tuple:
        layout = 'channels_last' if x.dim() == 4 and not x.is_contiguous() and \
            x.is_contiguous(memory_format=torch.channels_last) else 'contiguous'
        return tuple(x.shape), x.dtype, str(x.device), layout

    @property
    def shapes(self) -> list[tuple]:
        return list(self._graphs)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.disabled_reason is not None:
            return self._eager(x)
        key = self.key(x)
        graph = self._graphs.get(key)
        if graph is None:
            if len(self._graphs) >= self.max_graphs:
                if not self._full_logged:
                    LOG.warning('%d CUDA graphs captured already (the most kept); inputs of '
                                'other shapes (%s) run eagerly', self.max_graphs, key[0])
                    self._full_logged = True
                return self._eager(x)
            try:
                graph = self._capture(self.trunk, x)
            except Exception as error:  # noqa: BLE001 - any capture failure: run eagerly
                self.disabled_reason = f'{type(error).__name__}: {error}'
                LOG.warning('CUDA graph capture of the image trunk failed for input %s '
                            '(%s); running it eagerly from now on', key[0],
                            self.disabled_reason)
                return self._eager(x)
            self._graphs[key] = graph
            self.captures += 1
            LOG.info('captured the image trunk as a CUDA graph for input %s', key[0])
        self.replays += 1
        return graph.run(x)

    def _eager(self, x: torch.Tensor) -> torch.Tensor:
        self.eager_runs += 1
        return self.trunk(x)


def capture_cuda_graph(trunk, x: torch.Tensor) -> _Graph:
    """Capture ``trunk`` on a static copy of ``x`` (CUDA): warm-up on a side stream,
    then one capture, all with ``x``'s device current; raises whatever capture raises."""
    with torch.cuda.device(x.device):
        static_in = x.clone()  # same shape, dtype and layout
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(CUDA_GRAPH_WARMUP_ITERS):
                trunk(static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = trunk(static_in)
        return _Graph(static_in, static_out, graph)


class PinnedUploads:
    """Pinned (page-locked) host buffers, one per image shape (at most ``max_buffers``;
    the least recently used is dropped), so that an upload is one non-blocking copy.

    A buffer is refilled only after its previous upload finished (an event recorded
    after the copy is waited for), so frames of one shape in one batch cannot overwrite
    each other in flight. ``pin``/``make_event`` (tests) replace pinning and the CUDA
    event.
    """

    def __init__(self, max_buffers: int = MAX_PINNED_BUFFERS, pin: bool = True,
                 make_event=None):
        if max_buffers < 1:
            raise ValueError(f'max_buffers must be >= 1, got {max_buffers}')
        self.max_buffers = max_buffers
        self.pin = pin
        self._make_event = make_event or torch.cuda.Event
        self._buffers: OrderedDict = OrderedDict()  # shape -> [host tensor, event]

    @property
    def shapes(self) -> list[tuple]:
        return list(self._buffers)

    def upload(self, images: np.ndarray, device: torch.device) -> torch.Tensor:
        """``images`` (uint8) on ``device``: copied into the pinned buffer of its shape,
        then sent with one non-blocking copy."""
        key = tuple(images.shape)
        entry = self._buffers.get(key)
        if entry is None:
            host = torch.empty(key, dtype=torch.uint8, pin_memory=self.pin)
            entry = self._buffers[key] = [host, None]
            while len(self._buffers) > self.max_buffers:
                _, (_, event) = self._buffers.popitem(last=False)
                if event is not None:
                    event.synchronize()  # its copy may still read the buffer
        else:
            self._buffers.move_to_end(key)
            if entry[1] is not None:
                entry[1].synchronize()
        host = entry[0]
        host.copy_(torch.from_numpy(np.ascontiguousarray(images)))
        out = host.to(device, non_blocking=True)
        event = self._make_event()
        event.record(torch.cuda.current_stream(device) if device.type == 'cuda' else None)
        entry[1] = event
        return out


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


def _as_batch(images) -> tuple[np.ndarray, bool]:
    if not isinstance(images, np.ndarray):
        raise TypeError(f'images must be a numpy array, got {type(images).__name__}')
    single = images.ndim == 3
    batch = images[None] if single else images
    if batch.ndim != 4 or batch.shape[-1] != 3 or min(batch.shape[:3]) < 1:
        raise ValueError(f'images must be (H, W, 3) or (B, H, W, 3) RGB, got {images.shape}')
    if batch.dtype != np.uint8:
        raise TypeError(f'images must be uint8, got {batch.dtype}')
    return np.ascontiguousarray(batch), single


def head_with(head: HeadConfig, **changes) -> HeadConfig:
    """A validated copy of ``head`` with ``changes`` applied (raises ``ValueError``)."""
    return replace(head, **changes)


__all__ = ['DepthCLIP', 'ModelConfig', 'HeadConfig', 'FrameIn', 'Prediction', 'WeightsError',
           'TrunkGraphs', 'PinnedUploads', 'cpu_bf16_native', 'resolve_runtime',
           'import_backend', 'bin_moments', 'head_with', 'PAPER_DISTANCE_PROMPTS',
           'PAPER_DEPTH_BINS_M', 'NYU_FOCAL_PX', 'RANDOM_WEIGHTS_BANNER',
           'how_to_supply_weights', 'node_hint_style', 'HINT_STYLES']

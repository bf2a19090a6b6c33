"""The engine's settings and their rules, without torch: the paper's constants, the
model and head configurations with their validation, the scene rules and
:func:`mix_bins`. Tools, launch files and the node's parameter table read these without
importing torch."""

from __future__ import annotations

from dataclasses import dataclass, replace
import importlib.util
import math
from typing import Sequence

import numpy as np

PAPER_DISTANCE_PROMPTS = ('giant', 'extremely close', 'close', 'not in distance',
                          'a little remote', 'far', 'unseen')
PAPER_DEPTH_BINS_M = (1.00, 1.50, 2.00, 2.25, 2.50, 2.75, 3.00)
PAPER_PROMPT_TEMPLATE = 'This {} is {}'
PAPER_PROMPT_OBJECTS = ('object',)
PAPER_TEMPERATURE = 0.1
NYU_FOCAL_PX = 518.8579  # NYU Depth v2 Kinect RGB fx: the bins' canonical camera
DEFAULT_INPUT_SIZE = (416, 544)  # height, width: the paper's NYU crop
MAX_SIDE_PX = 16384  # any image (frame, file, label image) with a longer side is refused
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
SCENE_PROMPT_TEMPLATE = 'a photo of a {}.'  # CLIP's zero-shot template (docs/method.md §5)
MAX_SCENES = 32  # scene_names (each one text embedding, one bin set)

FEATURE_MODES = ('paper', 'projected')
PRECISIONS = ('auto', 'fp16', 'bf16', 'fp32', 'int8')
# What runs the image networks (the trunk, and the image encoder of the object step and the
# scene classifier): torch, OpenVINO on the CPU, or auto (OpenVINO on the CPU when it is
# installed and measures faster at load, else torch). engine/backend.py.
BACKENDS = ('torch', 'openvino', 'auto')
OPENVINO_INSTALL = 'pip install .[openvino]'
# The trunk's layout: auto (the rule of trunk_memory_format), channels_last (NHWC) or
# contiguous (NCHW).
MEMORY_FORMATS = ('auto', 'channels_last', 'contiguous')

RANDOM_WEIGHTS_BANNER = ('RANDOM WEIGHTS (pretrained=none): these depths are NOT an accuracy '
                         'result; load real CLIP weights for meaningful output.')


def openvino_installed(calibrating: bool = False) -> bool:
    """Whether ``openvino`` (and with ``calibrating`` ``nncf``) can be imported, without
    importing them."""
    names = ('openvino', 'nncf') if calibrating else ('openvino',)
    return all(importlib.util.find_spec(name) is not None for name in names)


def check_openvino_installed(calibrating: bool = False) -> None:
    """One-line ``ValueError`` naming the optional extra when OpenVINO (or NNCF, for
    int8) is not installed."""
    if not openvino_installed(calibrating):
        what = 'backend openvino and precision int8 need the openvino and nncf packages' \
            if calibrating else 'backend openvino needs the openvino package'
        raise ValueError(f'{what}: install them with `{OPENVINO_INSTALL}` (from the '
                         f'depthclip_ros checkout)')


CUDA_GRAPHS_NEED_CUDA = ('cuda_graphs needs a CUDA device (device cuda, cuda:N, or auto '
                         'where CUDA is available); turn it off on the CPU')



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
    # What runs the image networks (BACKENDS); precision int8 needs openvino (or auto) and a
    # calibration set: a folder of images or a ROS 2 bag (its colour image topics).
    backend: str = 'torch'
    calibration: str = ''

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
        check_backend(self)

    @property
    def random_weights(self) -> bool:
        return self.pretrained.lower() == 'none'

    @property
    def openvino_required(self) -> bool:
        """Whether the image networks run on OpenVINO whatever a measurement says: backend
        openvino, or precision int8 (only OpenVINO runs it). Then device auto means the
        CPU. ``auto`` in fp32 may choose OpenVINO too, at load (engine/backend.py)."""
        return self.backend == 'openvino' or self.precision == 'int8'


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
    # Scene-adaptive bins (docs/method.md §5): with bins_mode scene_soft or scene_hard the bins
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



def check_backend(config: ModelConfig) -> None:
    """The rules of ``backend``, ``precision: int8`` and ``calibration`` (one-line
    ``ValueError``): OpenVINO runs on the CPU only, in fp32 or int8; int8 is OpenVINO's
    only and needs a calibration set. Whether the package is installed is checked at load
    (engine/runtime.py), not here."""
    backend, precision = config.backend, config.precision
    if backend not in BACKENDS:
        raise ValueError(f'backend must be one of {BACKENDS}, got {backend!r}')
    if not isinstance(config.calibration, str):
        raise ValueError(f'calibration must be a path (a folder of images or a ROS 2 bag), '
                         f'got {config.calibration!r}')
    on_cuda = config.device.startswith('cuda')
    if precision == 'int8':
        if backend == 'torch':
            raise ValueError('precision int8 runs on OpenVINO only: set backend openvino '
                             '(or auto), or use fp32')
        if on_cuda:
            raise ValueError('precision int8 runs on the CPU only (OpenVINO): set device cpu '
                             'or auto, or use fp16 on CUDA')
        if not config.calibration.strip():
            raise ValueError('precision int8 needs calibration: a folder of images or a '
                             'ROS 2 bag of the scenes it will see (8 or more frames are best)')
    if backend == 'openvino':
        if on_cuda:
            raise ValueError(f'backend openvino runs on the CPU only: set device cpu (or '
                             f'auto), not {config.device}')
        if config.cuda_graphs:
            raise ValueError('backend openvino runs on the CPU: turn cuda_graphs off')
        if precision in ('fp16', 'bf16'):
            raise ValueError(f'backend openvino runs fp32 or int8, not {precision}: set '
                             f'precision fp32, int8 or auto')


def head_with(head: HeadConfig, **changes) -> HeadConfig:
    """A validated copy of ``head`` with ``changes`` applied (raises ``ValueError``)."""
    return replace(head, **changes)



MIX_MODES = ('scene_soft', 'scene_hard')


@dataclass(frozen=True)
class SceneEstimate:
    """The scene probabilities of one frame, in the order of the names given."""

    names: tuple[str, ...]
    probabilities: tuple[float, ...]  # sums to 1

    def __post_init__(self):
        object.__setattr__(self, 'names', tuple(self.names))
        object.__setattr__(self, 'probabilities', tuple(float(p) for p in self.probabilities))
        if len(self.names) != len(self.probabilities) or not self.names:
            raise ValueError(f'need one probability per scene: {len(self.names)} names, '
                             f'{len(self.probabilities)} probabilities')

    @property
    def best(self) -> int:
        """Position of the most probable scene (the first of equal probabilities)."""
        return int(np.argmax(self.probabilities))

    @property
    def chosen(self) -> str:
        """The most probable scene's name (the first of equal probabilities)."""
        return self.names[self.best]

    def as_dict(self) -> dict[str, float]:
        """``{name: probability}``, in the order of :attr:`names`."""
        return dict(zip(self.names, self.probabilities))


def mix_bins(estimate_or_probabilities: SceneEstimate | Sequence[float],
             bin_sets: Sequence[Sequence[float]], mode: str) -> tuple[float, ...]:
    """Depth bins for a frame from its scene probabilities and one bin set per scene.

    ``scene_soft``: ``sum_s p_s * bins_s``; ``scene_hard``: the bins of the most probable
    scene (the first of equal probabilities). Every bin set must have the same length, one
    set per probability. Raises ``ValueError``.
    """
    if mode not in MIX_MODES:
        raise ValueError(f'mode must be one of {", ".join(MIX_MODES)}, got {mode!r}')
    if isinstance(estimate_or_probabilities, SceneEstimate):
        probabilities = estimate_or_probabilities.probabilities
    else:
        probabilities = tuple(estimate_or_probabilities)
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 1 or len(p) < 1 or not np.isfinite(p).all() or (p < 0).any() \
            or not math.isclose(float(p.sum()), 1.0, abs_tol=1e-4):
        raise ValueError(f'scene probabilities must be finite, >= 0 and sum to 1, '
                         f'got {list(probabilities)}')
    try:
        bins = np.asarray([[float(b) for b in row] for row in bin_sets], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError('bin sets must be lists of numbers of one length') from None
    if bins.ndim != 2 or bins.shape[0] != len(p) or bins.shape[1] < 1:
        raise ValueError(f'need one bin set per scene, all of one length: {len(p)} scenes, '
                         f'bin sets of shape {[len(row) for row in bin_sets]}')
    if not np.isfinite(bins).all():
        raise ValueError('bins must be finite')
    if mode == 'scene_hard':
        return tuple(float(b) for b in bins[int(np.argmax(p))])
    return tuple(float(b) for b in p @ bins)

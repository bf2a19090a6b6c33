"""What every command-line tool shares: the model and head options (with their limits),
loading the engine with a word on what it is doing, and how a tool ends early.

Importing this module imports neither torch nor OpenCV (``depthclip-ros <tool> --help``
stays fast): the engine is imported by :func:`load_engine` and
:func:`check_model_options`, after the tool has said what it is loading.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
import sys
import time

from depthclip_ros.engine.config import (
    BACKENDS,
    BINS_MODES,
    CANONICAL_FOCAL_RANGE_PX,
    check_openvino_installed,
    FEATURE_MODES,
    HeadConfig,
    MAX_BINS,
    MAX_PROMPT_CHARS,
    MAX_SCENES,
    MAX_SENTENCES,
    MEMORY_FORMATS,
    ModelConfig,
    PRECISIONS,
    RANDOM_WEIGHTS_BANNER,
    SCENE_PROMPT_TEMPLATE,
    TEMPERATURE_RANGE,
)
from depthclip_ros.ros.configs import head_from_parameters, model_from_parameters
from depthclip_ros.ros.parameters import (
    DEFAULTS,
    HEAD_PARAMETERS,
    MODEL_PARAMETERS,
    PARAMETERS,
    validate,
)

# What a tool says while the model loads (torch and open_clip start, the network is built
# and its prompts encoded): from a few seconds on a workstation to a minute on a loaded
# 2-core machine (docs/benchmarks.md).
LOAD_TIME_HINT = 'usually 5-60 s'


class ToolExit(Exception):
    """Ends a tool early: ``message`` goes to stderr as one line and the command exits
    with ``status`` (2: an option refused; 1: what the run needs could not be had).
    ``depthclip-ros`` (:func:`depthclip_ros.tools.cli.main`) prints it."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.message, self.status = message, status


def prog_of(args: argparse.Namespace) -> str:
    """``depthclip-ros <command>``, the name a tool's messages start with."""
    command = getattr(args, 'command', None)
    return f'depthclip-ros {command}' if command else 'depthclip-ros'




def node_range(name: str) -> str:
    """The range of the node parameter ``name`` for an option's help: ``1..64``."""
    param = next(p for p in PARAMETERS if p.name == name)
    low, high = param.int_range or param.float_range
    return f'{low:g}..{high:g}'


def add_weights_arguments(group) -> None:
    """``--model`` and ``--pretrained``: which CLIP and its weights."""
    group.add_argument('--model', default=DEFAULTS['model'],
                       help=f'open_clip ResNet CLIP: RN50, RN101, RN50x4, ... (default '
                            f"{DEFAULTS['model']})")
    group.add_argument('--pretrained', default=DEFAULTS['pretrained'],
                       help='open_clip tag, local weights file (.pt/.bin/.safetensors or '
                            "OpenAI's TorchScript RN50.pt), or 'none' for random weights")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('model (same meaning as the node parameters)')
    add_weights_arguments(group)
    group.add_argument('--device', default=DEFAULTS['device'],
                       help='auto | cpu | cuda | cuda:N; a CUDA device that is not there is '
                            'refused (exit status 2)')
    group.add_argument('--precision', default=DEFAULTS['precision'], choices=PRECISIONS,
                       help='auto (fp16 on CUDA, fp32 on the CPU), fp16 (CUDA), bf16 (CUDA, '
                            'or a CPU with native bf16), fp32 or int8 (--backend openvino on '
                            'the CPU with --calibration; opt-in)')
    group.add_argument('--backend', default=DEFAULTS['backend'], choices=BACKENDS,
                       help='what runs the image networks: torch, openvino (the CPU only, '
                            'fp32 or int8; pip install .[openvino]; converted once and '
                            'cached) or auto (openvino when installed and measured faster '
                            'at load, else torch)')
    group.add_argument('--calibration', default=DEFAULTS['calibration'], metavar='PATH',
                       help='--precision int8: a folder of images or a ROS 2 bag (its colour '
                            'image topics) of the scenes to expect, at most 32 frames used')
    group.add_argument('--memory-format', default=DEFAULTS['memory_format'],
                       choices=MEMORY_FORMATS,
                       help="the image trunk's layout: auto (channels-last on the CPU and "
                            'in bf16, NCHW for fp16/fp32 on CUDA), channels_last or '
                            'contiguous')
    group.add_argument('--cuda-graphs', action='store_true',
                       help='CUDA only, experimental: replay the image trunk as a captured '
                            'CUDA graph per batch size (refused on the CPU)')
    group.add_argument('--feature-mode', default=DEFAULTS['feature_mode'],
                       choices=FEATURE_MODES)
    group.add_argument('--input-size', type=int, nargs=2, metavar=('H', 'W'),
                       default=tuple(DEFAULTS['input_size']),
                       help='network input size, multiples of 32, at least 32 (default '
                            f"{' '.join(map(str, DEFAULTS['input_size']))})")
    group.add_argument('--flip-average', action='store_true',
                       help='average with the horizontally flipped prediction')
    group.add_argument('--canonical-focal-px', type=float,
                       default=DEFAULTS['canonical_focal_px'],
                       help=f'focal the bins are calibrated for, '
                            f'{CANONICAL_FOCAL_RANGE_PX[0]:g}..{CANONICAL_FOCAL_RANGE_PX[1]:g} '
                            f"(default {DEFAULTS['canonical_focal_px']})")
    group.add_argument('--depth-bins-m', type=float, nargs='+',
                       default=tuple(DEFAULTS['depth_bins_m']),
                       help='canonical bin depths (m), one per distance prompt, > 0 and '
                            'strictly increasing')
    group.add_argument('--distance-prompts', nargs='+',
                       default=tuple(DEFAULTS['distance_prompts']),
                       help=f'distance words, one per bin: 2 to {MAX_BINS} of them; each '
                            f'sentence they make (at most {MAX_SENTENCES} in all) at most '
                            f"{MAX_PROMPT_CHARS} characters and within CLIP's 77-token "
                            f'context')
    group.add_argument('--temperature', type=float, default=DEFAULTS['temperature'],
                       help=f'softmax temperature over the bins, {TEMPERATURE_RANGE[0]:g}..'
                            f"{TEMPERATURE_RANGE[1]:g} (default {DEFAULTS['temperature']:g})")
    scenes = parser.add_argument_group('scene-adaptive bins (same meaning as the node '
                                       'parameters bins_mode, scene_*)')
    scenes.add_argument('--bins-mode', choices=BINS_MODES,
                        help='fixed (default: --depth-bins-m), scene_soft or scene_hard')
    scenes.add_argument('--scene-config', type=Path, metavar='YAML',
                        help='read scene_names, scene_bins_m, scene_prompt_template and '
                             'bins_mode from a node parameters file (e.g. '
                             'config/scene_bins_example.yaml); options given here win')
    scenes.add_argument('--scene-names', nargs='+', metavar='NAME',
                        help=f'2 to {MAX_SCENES} distinct scene names')
    scenes.add_argument('--scene-bins-m', type=float, nargs='+', metavar='M',
                        help='one set of bins per scene name, flattened: each as long as '
                             '--distance-prompts, > 0 and strictly increasing')
    scenes.add_argument('--scene-prompt-template', metavar='TEXT',
                        help=f'one {{}} for the scene name, each sentence at most '
                             f'{MAX_PROMPT_CHARS} characters (default '
                             f'{SCENE_PROMPT_TEMPLATE!r})')


def model_parameters(args: argparse.Namespace) -> dict:
    """The node's model parameters (:data:`MODEL_PARAMETERS`) from the shared model
    options, as ROS parameter values (lists, not tuples): what a tool that starts a node
    gives it, so that the node loads the model the tool's own engine loads."""
    values = {name: getattr(args, name) for name in MODEL_PARAMETERS
              if getattr(args, name, None) is not None}
    return {name: list(value) if isinstance(value, tuple) else value
            for name, value in values.items()}


def configs_from_args(args: argparse.Namespace) -> tuple[ModelConfig, HeadConfig]:
    """The engine's configurations from the options: the node's parameter table and its one
    mapping (:mod:`depthclip_ros.ros.configs`), options named as the parameters; a
    parameter a tool has no option for (or an option not given, None) keeps the table's
    default; the scene options come from :func:`scene_settings`."""
    names = (*MODEL_PARAMETERS, *HEAD_PARAMETERS)
    values = {name: getattr(args, name) for name in names
              if getattr(args, name, None) is not None}
    model = model_from_parameters(values)
    head = head_from_parameters({**values, **scene_settings(args)})
    if model.openvino_required:  # said before anything loads, like any refused option
        check_openvino_installed(model.precision == 'int8')
    check_calibration(model)
    return model, head


def check_calibration(model: ModelConfig) -> None:
    """With ``precision int8``, ``--calibration`` must name something that exists: a
    folder of images or a recording (checked without decoding anything, before the model
    loads: exit status 2 in every tool, like any refused option). Frames that exist but
    cannot be decoded are found at load: exit status 1 (:func:`build_engine`)."""
    if model.precision != 'int8':
        return
    from depthclip_ros.io.calibration import check_calibration_source
    try:
        check_calibration_source(model.calibration)
    except ValueError as error:
        raise ValueError(f'--{error}') from None

SCENE_OPTIONS = ('bins_mode', 'scene_names', 'scene_bins_m', 'scene_prompt_template')


def scene_settings(args: argparse.Namespace) -> dict:
    """The HeadConfig scene fields from ``--scene-config`` and the scene options (an
    option given on the command line wins over the file); ``ValueError`` for a file that
    cannot be read."""
    values = {}
    path = getattr(args, 'scene_config', None)
    if path is not None:
        values = {k: v for k, v in read_scene_config(path).items() if k in SCENE_OPTIONS}
    for name in SCENE_OPTIONS:
        given = getattr(args, name, None)
        if given is not None:
            values[name] = given
    return {name: tuple(value) if isinstance(value, list) else value
            for name, value in values.items()}


SCENE_FILE_KEYS = (*SCENE_OPTIONS, 'scene_every_n_frames')


def read_scene_config(path: Path) -> dict:
    """The scene parameters (``SCENE_FILE_KEYS``) of a node parameters file
    (``<node>: ros__parameters:``), checked by the node's rules."""
    import yaml
    try:
        document = yaml.safe_load(Path(path).read_text(encoding='utf-8'))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ValueError(f'--scene-config {path}: cannot be read: '
                         f'{str(error).splitlines()[0]}') from None
    for section in (document or {}).values() if isinstance(document, dict) else ():
        parameters = section.get('ros__parameters') if isinstance(section, dict) else None
        if isinstance(parameters, dict):
            found = {k: parameters[k] for k in SCENE_FILE_KEYS if k in parameters}
            validate(found)
            return found
    raise ValueError(f'--scene-config {path}: no "<node>: ros__parameters:" section')


def check_model_options(args: argparse.Namespace) -> None:
    """The model options as the node checks them, and the device's availability (this
    imports torch); ``ValueError`` with the reason. Loads nothing."""
    model, _ = configs_from_args(args)
    from depthclip_ros.engine.runtime import resolve_runtime
    resolve_runtime(model)


def check_max_depth(value: float, minimum: float = 0.0) -> None:
    if not (math.isfinite(value) and value > minimum):
        raise ValueError(f'--max-depth-m must be finite and > {minimum:g}, got {value}')


def option_problem(error: ValueError, args: argparse.Namespace) -> str:
    """A refused value's reason, led by the option that gave it (``--cloud-stride: ...``):
    the parameter rules name parameters, the tools' users typed options."""
    reason = str(error)
    name = reason.split(maxsplit=1)[0] if reason else ''
    if name and name in vars(args):
        return f'--{name.replace("_", "-")}: {reason}'
    return reason


def describe_model(model: ModelConfig) -> str:
    """``CLIP RN50 (random weights) on cpu``: what is about to be loaded."""
    weights = 'random weights' if model.random_weights else f'weights {model.pretrained}'
    openvino = model.openvino_required
    device = 'the CPU' if model.device == 'cpu' or openvino else \
        'CUDA if available, else the CPU' if model.device == 'auto' else model.device
    runtime = f' with OpenVINO {model.precision if model.precision == "int8" else "fp32"}' \
        if openvino else ''
    return f'CLIP {model.model} ({weights}) on {device}{runtime}'


def announce(prog: str, text: str) -> None:
    """A status line on stderr, at once (what a silent wait is spent on), led by the
    tool's short name (``infer: loading ...``) like its progress lines: a line led by
    ``depthclip-ros <tool>:`` is always a problem."""
    label = prog.removeprefix('depthclip-ros ')
    print(f'{label}: {text}', file=sys.stderr, flush=True)


CONVERSION_HINT = 'about 15 s for a network, INT8 calibration about 30 s more'


def show_conversions(prog: str) -> None:
    """Have the OpenVINO model cache say, on this tool's stderr, when it converts a network
    (the first use of a model, input size and precision; seconds to a minute), how long
    that took, and the INT8 calibration's progress with counts (engine/model_cache.py
    ``build_listener``; the node leaves it unset and logs instead)."""
    from depthclip_ros.engine import model_cache
    from depthclip_ros.tools.progress import Progress
    stream = sys.stderr  # now: NNCF's run redirects sys.stderr while it calibrates
    label = prog.removeprefix('depthclip-ros ')
    passes: dict[str, Progress] = {}

    def listener(event: str, what: str, *facts) -> None:
        if event == 'build':
            print(f'{label}: converting the {what} with OpenVINO, once ({CONVERSION_HINT}; '
                  f'kept in {facts[0]} for later runs)', file=stream, flush=True)
        elif event == 'built':
            passes.pop(what, None)
            print(f'{label}: {what} converted in {facts[0]:.1f} s', file=stream, flush=True)
        elif event == 'calibrate':
            done, total = facts
            progress = passes.get(what)
            if progress is None or done <= progress.done:  # NNCF's next pass over them
                progress = passes[what] = Progress(f'{label}: INT8 calibration', 'frame',
                                                   total, stream=stream)
                progress.update(0)  # said at once; the rate counts from here
            progress.update(done)
            if done == total:
                progress.close()
    model_cache.build_listener = listener


def build_engine(model: ModelConfig, head: HeadConfig, prog: str):
    """Say what is loading, check the device (``ToolExit`` 2 when it is refused), build
    and load the engine, and say how long it took. ``WeightsError`` propagates."""
    weights = '' if model.random_weights or Path(model.pretrained).is_file() else \
        ' (its weights from the local cache; the first run downloads them)'
    announce(prog, f'loading {describe_model(model)}: starting torch, building the network '
                   f'and encoding its prompts, {LOAD_TIME_HINT}{weights}')
    started = time.monotonic()
    from depthclip_ros.engine.depthclip import DepthCLIP
    from depthclip_ros.engine.runtime import resolve_runtime
    try:
        resolve_runtime(model)
    except ValueError as error:
        raise ToolExit(f'{prog}: {error}', 2) from None
    from depthclip_ros.io.calibration import CalibrationUnreadable
    show_conversions(prog)
    try:
        engine = DepthCLIP(model, head).load()
    except CalibrationUnreadable as error:  # damaged input: exit 1, with the count
        raise ToolExit(f'{prog}: {error}', 1) from None
    except ValueError as error:  # a prompt set the tokenizer refuses
        raise ToolExit(f'{prog}: {error}', 2) from None
    announce(prog, f'model ready in {time.monotonic() - started:.1f} s '
                   f'({engine.describe_device()})')
    return engine


def is_weights_error(error: BaseException) -> bool:
    """Whether ``error`` is the engine's ``WeightsError`` (imported only once an engine was
    being built, so that the import cannot delay the line saying what loads)."""
    from depthclip_ros.engine.weights import WeightsError
    return isinstance(error, WeightsError)


def load_engine(args: argparse.Namespace, prog: str | None = None):
    """Build and load the engine of ``args`` (:func:`build_engine`), saying what it is
    doing; ``ToolExit`` with one line when that fails: status 2 for an option (a device
    that is not there, a precision it cannot run), 1 when the weights cannot be had."""
    prog = prog or prog_of(args)
    try:
        model, head = configs_from_args(args)
    except ValueError as error:
        raise ToolExit(f'{prog}: {option_problem(error, args)}', 2) from None
    try:
        engine = build_engine(model, head, prog)
    except RuntimeError as error:
        if not is_weights_error(error):
            raise
        raise ToolExit(f'{prog}: {error}', 1) from None
    if engine.random_weights:
        warn_random_weights()
    return engine


def warn_random_weights() -> None:
    line = '!' * 78
    print(f'{line}\n{RANDOM_WEIGHTS_BANNER}\n{line}', file=sys.stderr, flush=True)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format='%(levelname)s %(name)s: %(message)s')

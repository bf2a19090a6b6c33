"""Options shared by every command-line tool: the model and head settings."""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
import sys

from depthclip_ros.engine.config import (
    BINS_MODES,
    HeadConfig,
    MEMORY_FORMATS,
    ModelConfig,
    NYU_FOCAL_PX,
    PAPER_DEPTH_BINS_M,
    PAPER_DISTANCE_PROMPTS,
    PAPER_TEMPERATURE,
    PRECISIONS,
    RANDOM_WEIGHTS_BANNER,
    SCENE_PROMPT_TEMPLATE,
)
from depthclip_ros.engine.depthclip import DepthCLIP
from depthclip_ros.engine.runtime import resolve_runtime
from depthclip_ros.engine.weights import WeightsError
from depthclip_ros.ros.parameters import validate


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('model (same meaning as the node parameters)')
    group.add_argument('--model', default='RN50', help='open_clip ResNet model (default RN50)')
    group.add_argument('--pretrained', default='openai',
                       help='open_clip tag, local weights file (.pt/.bin/.safetensors or '
                            "OpenAI's TorchScript RN50.pt), or 'none' for random weights")
    group.add_argument('--device', default='auto', help='auto | cpu | cuda | cuda:N')
    group.add_argument('--precision', default='auto', choices=PRECISIONS,
                       help='auto (fp16 on CUDA, fp32 on the CPU), fp16 (CUDA), bf16 (CUDA, '
                            'or a CPU with native bf16) or fp32')
    group.add_argument('--memory-format', default='auto', choices=MEMORY_FORMATS,
                       help="the image trunk's layout: auto (channels-last on the CPU and "
                            'in bf16, NCHW for fp16/fp32 on CUDA), channels_last or '
                            'contiguous')
    group.add_argument('--cuda-graphs', action='store_true',
                       help='CUDA only, experimental: replay the image trunk as a captured '
                            'CUDA graph per batch size (refused on the CPU)')
    group.add_argument('--feature-mode', default='paper', choices=('paper', 'projected'))
    group.add_argument('--input-size', type=int, nargs=2, metavar=('H', 'W'),
                       default=(416, 544), help='network input size (default 416 544)')
    group.add_argument('--flip-average', action='store_true',
                       help='average with the horizontally flipped prediction')
    group.add_argument('--canonical-focal-px', type=float, default=NYU_FOCAL_PX,
                       help=f'focal the bins are calibrated for (default {NYU_FOCAL_PX})')
    group.add_argument('--depth-bins-m', type=float, nargs='+', default=PAPER_DEPTH_BINS_M,
                       help='canonical bin depths, one per prompt')
    group.add_argument('--distance-prompts', nargs='+', default=PAPER_DISTANCE_PROMPTS,
                       help='distance words, one per bin')
    group.add_argument('--temperature', type=float, default=PAPER_TEMPERATURE)
    scenes = parser.add_argument_group('scene-adaptive bins (same meaning as the node '
                                       'parameters bins_mode, scene_*)')
    scenes.add_argument('--bins-mode', choices=BINS_MODES,
                        help='fixed (default: --depth-bins-m), scene_soft or scene_hard')
    scenes.add_argument('--scene-config', type=Path, metavar='YAML',
                        help='read scene_names, scene_bins_m, scene_prompt_template and '
                             'bins_mode from a node parameters file (e.g. '
                             'config/scene_bins_example.yaml); options given here win')
    scenes.add_argument('--scene-names', nargs='+', metavar='NAME')
    scenes.add_argument('--scene-bins-m', type=float, nargs='+', metavar='M',
                        help='one set of bins per scene name, flattened')
    scenes.add_argument('--scene-prompt-template', metavar='TEXT',
                        help=f'default {SCENE_PROMPT_TEMPLATE!r}')


def configs_from_args(args: argparse.Namespace) -> tuple[ModelConfig, HeadConfig]:
    model = ModelConfig(model=args.model, pretrained=args.pretrained, device=args.device,
                        precision=args.precision, feature_mode=args.feature_mode,
                        input_size=tuple(args.input_size),
                        cuda_graphs=getattr(args, 'cuda_graphs', False),
                        memory_format=getattr(args, 'memory_format', 'auto'))
    head = HeadConfig(distance_prompts=tuple(args.distance_prompts),
                      depth_bins_m=tuple(args.depth_bins_m), temperature=args.temperature,
                      canonical_focal_px=args.canonical_focal_px,
                      flip_average=args.flip_average, **scene_settings(args))
    return model, head


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
    """The model options as the node checks them, and the device's availability;
    ``ValueError`` with the reason. Loads nothing."""
    model, _ = configs_from_args(args)
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


def load_engine(args: argparse.Namespace) -> DepthCLIP:
    """Build and load the engine; exit with one clear message when that fails."""
    try:
        model, head = configs_from_args(args)
        engine = DepthCLIP(model, head).load()
    except (ValueError, WeightsError) as error:
        sys.exit(f'depthclip-ros: {error}')
    if engine.random_weights:
        warn_random_weights()
    return engine


def warn_random_weights() -> None:
    line = '!' * 78
    print(f'{line}\n{RANDOM_WEIGHTS_BANNER}\n{line}', file=sys.stderr, flush=True)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format='%(levelname)s %(name)s: %(message)s')

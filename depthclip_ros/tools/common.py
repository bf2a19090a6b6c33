"""Options shared by every command-line tool: the model and head settings."""

from __future__ import annotations

import argparse
import logging
import math
import sys

from ..model import (
    DepthCLIP,
    HeadConfig,
    ModelConfig,
    NYU_FOCAL_PX,
    PAPER_DEPTH_BINS_M,
    PAPER_DISTANCE_PROMPTS,
    PAPER_TEMPERATURE,
    RANDOM_WEIGHTS_BANNER,
    resolve_device,
    resolve_dtype,
    WeightsError,
)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('model (same meaning as the node parameters)')
    group.add_argument('--model', default='RN50', help='open_clip ResNet model (default RN50)')
    group.add_argument('--pretrained', default='openai',
                       help='open_clip tag, local weights file (.pt/.bin/.safetensors or '
                            "OpenAI's TorchScript RN50.pt), or 'none' for random weights")
    group.add_argument('--device', default='auto', help='auto | cpu | cuda | cuda:N')
    group.add_argument('--precision', default='auto', choices=('auto', 'fp16', 'fp32'))
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


def configs_from_args(args: argparse.Namespace) -> tuple[ModelConfig, HeadConfig]:
    model = ModelConfig(model=args.model, pretrained=args.pretrained, device=args.device,
                        precision=args.precision, feature_mode=args.feature_mode,
                        input_size=tuple(args.input_size))
    head = HeadConfig(distance_prompts=tuple(args.distance_prompts),
                      depth_bins_m=tuple(args.depth_bins_m), temperature=args.temperature,
                      canonical_focal_px=args.canonical_focal_px,
                      flip_average=args.flip_average)
    return model, head


def check_model_options(args: argparse.Namespace) -> None:
    """The model options as the node checks them, and the device's availability;
    ``ValueError`` with the reason. Loads nothing."""
    model, _ = configs_from_args(args)
    resolve_dtype(model.precision, resolve_device(model.device))


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

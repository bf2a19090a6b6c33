"""Every parameter of depth_node, declared once with a description and range.

``config/depthclip.yaml`` lists exactly these (a test checks it), and the README's
"Node" section documents them.
"""

from __future__ import annotations

from dataclasses import dataclass
import math

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from .model import (
    DEFAULT_INPUT_SIZE,
    NYU_FOCAL_PX,
    PAPER_DEPTH_BINS_M,
    PAPER_DISTANCE_PROMPTS,
    PAPER_PROMPT_OBJECTS,
    PAPER_PROMPT_TEMPLATE,
    PAPER_TEMPERATURE,
)


@dataclass(frozen=True)
class Param:
    name: str
    default: object
    description: str
    read_only: bool = False
    float_range: tuple[float, float] | None = None
    int_range: tuple[int, int] | None = None
    choices: tuple[str, ...] | None = None


PARAMETERS: tuple[Param, ...] = (
    Param('model', 'RN50', 'open_clip ResNet CLIP model (RN50, RN101, RN50x4, ...)',
          read_only=True),
    Param('pretrained', 'openai', 'open_clip pretrained tag, local weights file '
          '(.pt/.bin/.safetensors or OpenAI TorchScript RN50.pt), or none (random weights)',
          read_only=True),
    Param('device', 'auto', 'auto, cpu, cuda or cuda:N', read_only=True),
    Param('precision', 'auto', 'auto (fp16 on CUDA, fp32 on CPU), fp16 or fp32',
          read_only=True, choices=('auto', 'fp16', 'fp32')),
    Param('feature_mode', 'paper', "paper (the authors' raw tokens) or projected "
          '(attention-pool value/output projections)', read_only=True,
          choices=('paper', 'projected')),
    Param('input_size', list(DEFAULT_INPUT_SIZE), 'network input [height, width] px, '
          'multiples of 32; every image is resized to it', read_only=True),
    Param('distance_prompts', list(PAPER_DISTANCE_PROMPTS), 'distance words, one per bin'),
    Param('depth_bins_m', list(PAPER_DEPTH_BINS_M), 'canonical-camera bin depths (m), '
          'strictly increasing, > 0, one per prompt'),
    Param('prompt_template', PAPER_PROMPT_TEMPLATE, 'prompt with two {}: object, then '
          'distance word'),
    Param('prompt_objects', list(PAPER_PROMPT_OBJECTS), 'object words; their prompt '
          'embeddings are averaged per bin'),
    Param('temperature', PAPER_TEMPERATURE, 'softmax temperature over the bins',
          float_range=(1e-4, 100.0)),
    Param('canonical_focal_px', NYU_FOCAL_PX, 'focal length (px, at the network input) the '
          'bins are calibrated for; depth scales by mean(fx, fy) / this',
          float_range=(1.0, 100000.0)),
    Param('flip_average', False, 'average with the prediction of the mirrored image '
          '(twice the network cost)'),
    Param('output_size', [0, 0], 'depth [height, width] px; [0, 0] = the input image size'),
    Param('cloud_stride', 1, 'keep every n-th row and column in points', int_range=(1, 64)),
    Param('min_depth_m', 0.1, 'depths below become NaN in points',
          float_range=(0.0, 1000.0)),
    Param('max_depth_m', 10.0, 'depths above become NaN in points',
          float_range=(0.0, 1000.0)),
    Param('cloud_rgb', False, 'add a packed rgb field to points'),
    Param('publish_colormap', False, 'publish depth/colormap (rgb8) for people',
          read_only=True),
    Param('use_compressed', False, 'also subscribe to image/compressed (jpeg, png)',
          read_only=True),
    Param('intrinsics_source', 'K', 'K for raw images, P for rectified ones',
          choices=('K', 'P')),
    Param('fallback_hfov_deg', 0.0, 'horizontal FOV used when no CameraInfo has arrived; '
          '0 = skip such frames', float_range=(0.0, 179.0)),
    Param('subscriber_qos', 'sensor_data', 'sensor_data (best effort) or reliable',
          read_only=True, choices=('sensor_data', 'reliable')),
    Param('publisher_qos', 'reliable', 'reliable or best_effort', read_only=True,
          choices=('reliable', 'best_effort')),
    Param('queue_depth', 5, 'QoS history depth of publishers (and reliable subscribers)',
          read_only=True, int_range=(1, 100)),
)

PARAMETER_NAMES = tuple(p.name for p in PARAMETERS)
HEAD_PARAMETERS = frozenset({'distance_prompts', 'depth_bins_m', 'prompt_template',
                             'prompt_objects', 'temperature', 'canonical_focal_px',
                             'flip_average'})
_BY_NAME = {p.name: p for p in PARAMETERS}


def descriptor(param: Param) -> ParameterDescriptor:
    text = param.description
    if param.choices:
        text += f' (one of: {", ".join(param.choices)})'
    out = ParameterDescriptor(description=text, read_only=param.read_only)
    if param.float_range:
        out.floating_point_range = [FloatingPointRange(from_value=param.float_range[0],
                                                       to_value=param.float_range[1])]
    if param.int_range:
        out.integer_range = [IntegerRange(from_value=param.int_range[0],
                                          to_value=param.int_range[1], step=1)]
    return out


def declare_parameters(node) -> None:
    """Declare every parameter on ``node`` (overrides come from --ros-args)."""
    for param in PARAMETERS:
        node.declare_parameter(param.name, param.default, descriptor(param))


def validate_change(values: dict) -> None:
    """Checks that descriptors cannot express; raises ``ValueError`` with the reason."""
    for name, param in _BY_NAME.items():
        if param.choices and values[name] not in param.choices:
            raise ValueError(f'{name} must be one of {param.choices}, got {values[name]!r}')
    if values['min_depth_m'] >= values['max_depth_m']:
        raise ValueError(f'min_depth_m ({values["min_depth_m"]}) must be < max_depth_m '
                         f'({values["max_depth_m"]})')
    size = list(values['output_size'])
    if len(size) != 2 or not (size == [0, 0] or (size[0] > 0 and size[1] > 0)):
        raise ValueError(f'output_size must be [0, 0] or [height, width] > 0, got {size}')
    for name in ('temperature', 'canonical_focal_px', 'fallback_hfov_deg'):
        if not math.isfinite(values[name]):
            raise ValueError(f'{name} must be finite, got {values[name]}')

"""Every parameter of depth_node, declared once with a description and range, and the
one set of rules that checks their values (:func:`validate`).

``config/depthclip.yaml`` lists exactly these (a test checks it), and docs/node.md
"Parameters" documents them. The command-line tools take the same values as options and
check them with the same :func:`validate` (through ``OutputSettings`` and the model
configs), so a value the node refuses is refused everywhere, with the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass
import math

from depthclip_ros.engine.config import (
    BACKENDS,
    BINS_MODES,
    CANONICAL_FOCAL_RANGE_PX,
    check_scene_template,
    DEFAULT_INPUT_SIZE,
    MAX_BINS,
    MAX_PROMPT_CHARS,
    MAX_SCENES,
    MAX_SIDE_PX,
    MEMORY_FORMATS,
    NYU_FOCAL_PX,
    PAPER_DEPTH_BINS_M,
    PAPER_DISTANCE_PROMPTS,
    PAPER_PROMPT_OBJECTS,
    PAPER_PROMPT_TEMPLATE,
    PAPER_TEMPERATURE,
    PRECISIONS,
    SCENE_PROMPT_TEMPLATE,
    TEMPERATURE_RANGE,
)

# 16 MP: above every common camera (4K UHD is 8.3 MP, 12 MP phones 4000x3000); a frame at
# this size needs about 1 GB of working memory on the CPU.
DEFAULT_MAX_INPUT_PIXELS = 4096 * 4096


@dataclass(frozen=True)
class Param:
    name: str
    default: object
    description: str
    read_only: bool = False
    float_range: tuple[float, float] | None = None
    int_range: tuple[int, int] | None = None
    choices: tuple[str, ...] | None = None
    items: type | None = None  # the element type of a list (declared typed when empty)


PARAMETERS: tuple[Param, ...] = (
    Param('model', 'RN50', 'open_clip ResNet CLIP model (RN50, RN101, RN50x4, ...)',
          read_only=True),
    Param('pretrained', 'openai', 'open_clip pretrained tag, local weights file '
          '(.pt/.bin/.safetensors or OpenAI TorchScript RN50.pt), or none (random weights)',
          read_only=True),
    Param('device', 'auto', 'auto, cpu, cuda or cuda:N', read_only=True),
    Param('precision', 'auto', 'auto (fp16 on CUDA, fp32 on CPU), fp16 (CUDA), bf16 (CUDA, '
          'or a CPU with native bf16; float32 head), fp32 or int8 (backend openvino on the '
          'CPU, calibrated on calibration; opt-in, not yet evaluated with real weights)',
          read_only=True, choices=PRECISIONS),
    Param('backend', 'torch', 'what runs the image networks: torch, openvino (the CPU only, '
          'fp32 or int8; needs pip install .[openvino]; converted once, cached under '
          '~/.cache/depthclip_ros) or auto (openvino on the CPU when installed and measured '
          'faster at start, else torch)', read_only=True, choices=BACKENDS),
    Param('calibration', '', 'precision int8: a folder of images or a ROS 2 bag (its colour '
          'image topics) of the scenes the camera will see; unused otherwise',
          read_only=True),
    Param('cuda_graphs', False, 'CUDA only, experimental (not yet run on a GPU by this '
          'project): replay the image trunk as a captured CUDA graph per batch size, with '
          'pinned uploads; refused on the CPU', read_only=True),
    Param('memory_format', 'auto', "the image trunk's layout: auto (channels-last on the CPU "
          'and in bf16, NCHW for fp16/fp32 on CUDA), channels_last or contiguous (NCHW); '
          'channels-last fp16 on CUDA is experimental (not yet run on a GPU by this '
          'project)', read_only=True, choices=MEMORY_FORMATS),
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
          float_range=TEMPERATURE_RANGE),
    Param('canonical_focal_px', NYU_FOCAL_PX, 'focal length (px, at the network input) the '
          'bins are calibrated for; depth scales by mean(fx, fy) / this',
          float_range=CANONICAL_FOCAL_RANGE_PX),
    Param('flip_average', False, 'average with the prediction of the mirrored image '
          '(twice the network cost)'),
    Param('bins_mode', 'fixed', 'fixed (depth_bins_m), scene_soft (scene_bins_m mixed by '
          "the frame's scene probabilities) or scene_hard (the most likely scene's bins)",
          choices=BINS_MODES),
    Param('scene_names', [], 'scenes the frame is classified into (bins_mode scene_*), at '
          f'least 2, at most {MAX_SCENES}', items=str),
    Param('scene_bins_m', [], 'canonical bins per scene, flattened: one strictly '
          'increasing set per scene_names entry, each as long as distance_prompts',
          items=float),
    Param('scene_prompt_template', SCENE_PROMPT_TEMPLATE, 'scene classifier prompt with one '
          '{} (the scene name)'),
    Param('scene_every_n_frames', 10, 'classify the scene every n-th frame (scenes change '
          'slowly); the bins in between stay', int_range=(1, 100000)),
    Param('output_size', [0, 0], 'depth [height, width] px; [0, 0] = the input image size; '
          'at most max_input_pixels pixels'),
    Param('cloud_stride', 1, 'keep every n-th row and column in points', int_range=(1, 64)),
    Param('min_depth_m', 0.1, 'depths below become NaN in points',
          float_range=(0.0, 1000.0)),
    Param('max_depth_m', 10.0, 'depths above become NaN in points',
          float_range=(0.0, 1000.0)),
    Param('cloud_rgb', False, 'add a packed rgb field to points'),
    Param('max_uncertainty_m', 0.0, 'points whose depth uncertainty (std of the bin '
          'distribution, m) exceeds this become NaN in points; 0 = off',
          float_range=(0.0, 1000.0)),
    Param('publish_colormap', False, 'publish depth/colormap (rgb8) for people',
          read_only=True),
    Param('image_transport', 'raw', "input transport, image_transport's naming: raw "
          '(image) or compressed (<image>/compressed, jpeg or png)', read_only=True,
          choices=('raw', 'compressed')),
    Param('intrinsics_source', 'K', 'K for raw images, P for rectified ones',
          choices=('K', 'P')),
    Param('fallback_hfov_deg', 0.0, 'horizontal FOV used when no CameraInfo has arrived; '
          '0 = skip such frames', float_range=(0.0, 179.0)),
    Param('max_input_pixels', DEFAULT_MAX_INPUT_PIXELS, 'largest image (width x height) '
          'processed; larger ones are refused from their header, before decoding',
          int_range=(1024, MAX_SIDE_PX * MAX_SIDE_PX)),
    Param('object_queries', [], 'referring expressions to find ("the red chair next to '
          'the door"); empty = object outputs off. At most 16', items=str),
    Param('object_proposals', 'builtin', 'candidate masks: builtin (colour and depth '
          'segmentation, no weights) or topic (label images on objects/masks, matched by '
          'stamp)', choices=('builtin', 'topic')),
    Param('object_alpha', 0.95, 'visual mix: alpha * global + (1 - alpha) * local feature '
          '(0.85 suits long expressions)', float_range=(0.0, 1.0)),
    Param('object_beta', 0.5, 'text mix: beta * sentence + (1 - beta) * noun phrase',
          float_range=(0.0, 1.0)),
    Param('object_max_masks', 32, 'candidate masks per frame (the largest are kept)',
          int_range=(1, 64)),
    Param('object_masks_wait_s', 0.2, 'with object_proposals topic: how long to wait for '
          "the frame's label image after its depth is published", float_range=(0.0, 2.0)),
    Param('cameras', [], 'camera namespaces served by this node, one batched forward for '
          'all (e.g. [front, left]): topics <camera>/image, <camera>/camera_info, outputs '
          "under <camera>/; relative ROS namespaces, none inside another camera's topics; "
          'empty = one camera on the relative topics (read-only: fixed at start)',
          read_only=True, items=str),
    Param('subscriber_qos', 'sensor_data', 'sensor_data (best effort) or reliable',
          read_only=True, choices=('sensor_data', 'reliable')),
    Param('publisher_qos', 'reliable', 'reliable or best_effort', read_only=True,
          choices=('reliable', 'best_effort')),
    Param('queue_depth', 5, 'QoS history depth of publishers (and reliable subscribers)',
          read_only=True, int_range=(1, 100)),
)

PARAMETER_NAMES = tuple(p.name for p in PARAMETERS)
DEFAULTS = {p.name: p.default for p in PARAMETERS}
# The parameters that make the engine's configurations (ros/configs.py), by the field names
# of ModelConfig (fixed once loaded: all read-only) and HeadConfig (changeable while running).
MODEL_PARAMETERS = ('model', 'pretrained', 'device', 'precision', 'feature_mode',
                    'input_size', 'cuda_graphs', 'memory_format', 'backend', 'calibration')
HEAD_PARAMETERS = frozenset({'distance_prompts', 'depth_bins_m', 'prompt_template',
                             'prompt_objects', 'temperature', 'canonical_focal_px',
                             'flip_average', 'bins_mode', 'scene_names', 'scene_bins_m',
                             'scene_prompt_template'})
_BY_NAME = {p.name: p for p in PARAMETERS}


def descriptor(param: Param):
    """The rcl_interfaces ParameterDescriptor of ``param`` (ROS imported here only, so the
    tools that merely check values need no ROS install)."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
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
    """Declare every parameter on ``node`` (overrides come from --ros-args and params files).

    rclpy cannot infer a type from an empty list (it would declare a byte array), so an
    empty list is declared with its element type and then set to ``[]`` unless overridden.
    rclpy cannot set a read-only parameter after declaring it, so such a list is declared
    writable and the node refuses every change to it (:func:`check_read_only`).

    A value rclpy itself refuses at start (the wrong type, out of the descriptor's range)
    raises ``ValueError`` in one line naming the parameter and the rule, as the same value
    set at run time is refused with a reason; an empty list given for a list parameter
    (which ROS passes untyped) is refused where the default holds values.
    """
    from rclpy.exceptions import ParameterException, ParameterUninitializedException
    from rclpy.parameter import Parameter
    for param in PARAMETERS:
        kind = _array_type(param) if isinstance(param.default, list) else None
        try:
            if param.items is None or param.default:
                node.declare_parameter(param.name, param.default, descriptor(param))
            else:
                described = descriptor(param)
                described.read_only = False
                node.declare_parameter(param.name, kind, described)
        except ParameterException as error:
            raise ValueError(_refused_at_start(param, node, error)) from None
        try:
            node.get_parameter(param.name)
        except ParameterUninitializedException:  # [] given (untyped), or no default
            if param.default:
                raise ValueError(f'{param.name}: an empty list is refused, it needs values '
                                 f'(default {param.default})') from None
            node.set_parameters([Parameter(param.name, kind, [])])


def _array_type(param: Param):
    from rclpy.parameter import Parameter
    items = param.items or type(param.default[0])
    return {str: Parameter.Type.STRING_ARRAY, float: Parameter.Type.DOUBLE_ARRAY,
            int: Parameter.Type.INTEGER_ARRAY}[items]


_TYPE_WORDS = {bool: 'true or false', int: 'an integer', float: 'a double (e.g. 2.0)',
               str: 'a string'}
_LIST_WORDS = {int: 'a list of integers', float: 'a list of doubles (e.g. [1.0, 2.5])',
               str: 'a list of strings'}


def _refused_at_start(param: Param, node, error: Exception) -> str:
    """One line for a value rclpy refused while the parameter was declared: the value as
    given, and the type or range it must have."""
    given = getattr(node, '_parameter_overrides', {}).get(param.name)
    value = given.value if given is not None else None
    expected = type(param.default)
    if expected is list:
        rule = _LIST_WORDS[param.items or type(param.default[0])]
    else:
        rule = _TYPE_WORDS[expected]
    if param.float_range:
        rule += f' in [{param.float_range[0]:g}, {param.float_range[1]:g}]'
    if param.int_range:
        rule += f' in [{param.int_range[0]}, {param.int_range[1]}]'
    whole = isinstance(value, int) and not isinstance(value, bool)
    whole_items = isinstance(value, list) and value and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value)
    hint = ''
    if expected is float and whole:
        hint = f' (ROS reads {value} as an integer: write {value}.0)'
    elif expected is list and whole_items and (param.items or type(param.default[0])) is float:
        hint = ' (ROS reads whole numbers as integers: write 2.0, not 2)'
    shown = repr(value) if len(repr(value)) <= 80 else f'{repr(value)[:60]}...'
    return f'{param.name}: {shown} is refused, it must be {rule}{hint}'


# Parameters every rclpy node has (declared by rclpy, or read by it from the overrides).
ROS_PARAMETERS = ('use_sim_time', 'start_type_description_service')


def unknown_parameters(given) -> str | None:
    """One line naming the parameters among ``given`` (names from -p and params files)
    that depth_node does not have, each with the nearest name it has, or ``None``. ROS
    ignores them: the node warns, so that a misspelt name is not lost silently (a params
    file under ``/**`` may hold other nodes' parameters, so they are not refused)."""
    import difflib
    unknown = sorted(name for name in given if name not in _BY_NAME and
                     name not in ROS_PARAMETERS and not name.startswith('qos_overrides.'))
    if not unknown:
        return None
    named = []
    for name in unknown:
        close = difflib.get_close_matches(name, PARAMETER_NAMES, n=1)
        named.append(f'{name} (did you mean {close[0]}?)' if close else name)
    return (f'ignoring parameters depth_node does not have: {", ".join(named)}; '
            f'depth_node --help lists its parameters')


def check_read_only(current: dict, changes: dict) -> None:
    """Raise ``ValueError`` when ``changes`` alters a read-only parameter (rclpy refuses
    most of them itself; not those declared writable by :func:`declare_parameters`)."""
    for name, value in changes.items():
        param = _BY_NAME.get(name)
        if param is None or not param.read_only:
            continue
        old = current[name]
        same = (list(value) == list(old) if isinstance(old, (list, tuple))
                else value == old)
        if not same:
            raise ValueError(f'{name} is read-only: it is fixed when the node starts')


def validate(values: dict) -> None:
    """Check parameter values; raises ``ValueError`` naming the parameter and the rule.

    ``values`` may hold any subset of the parameters (the tools check only those they
    use); cross-parameter rules apply when all their parameters are present. Ranges are
    checked here too, not only by the descriptors, because the tools have no descriptors.

    Every rule here holds whatever the other values are: the node applies them to every
    value it is given, also while the counts of prompts, bins and scene bins disagree
    (:func:`~depthclip_ros.ros.configs.head_or_mismatch`), and in ``bins_mode`` fixed,
    which keeps the scene settings unused.
    """
    for name, value in values.items():
        param = _BY_NAME.get(name)
        if param is not None:
            _check_one(param, value)
    if 'min_depth_m' in values and 'max_depth_m' in values and \
            values['min_depth_m'] >= values['max_depth_m']:
        raise ValueError(f'min_depth_m ({values["min_depth_m"]}) must be < max_depth_m '
                         f'({values["max_depth_m"]})')
    if values.get('object_queries'):
        from depthclip_ros.objects.queries import check_queries
        try:
            check_queries(values['object_queries'])
        except (TypeError, ValueError) as error:
            raise ValueError(f'object_queries: {error}') from None
    if 'scene_names' in values and 'scene_prompt_template' in values:
        for scene in values['scene_names']:
            sentence = values['scene_prompt_template'].format(scene)
            if len(sentence) > MAX_PROMPT_CHARS:
                raise ValueError(f'scene_names: the scene prompt {sentence[:40]!r}... has '
                                 f'{len(sentence)} characters, more than {MAX_PROMPT_CHARS}')
    if 'output_size' in values:
        height, width = values['output_size']
        limit = values.get('max_input_pixels', DEFAULT_MAX_INPUT_PIXELS)
        if height * width > limit:
            raise ValueError(f'output_size {height}x{width} is {height * width} pixels, more '
                             f'than max_input_pixels ({limit})')


def _check_one(param: Param, value) -> None:
    name = param.name
    expected = type(param.default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if expected is list:
        if isinstance(value, (str, bytes)) or not hasattr(value, '__len__'):
            raise ValueError(f'{name} must be a list, got {value!r}')
    elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ValueError(f'{name} must be {expected.__name__}, got {value!r}')
    if param.items is not None and not all(
            isinstance(item, param.items) and not isinstance(item, bool) for item in value):
        raise ValueError(f'{name} must be a list of {param.items.__name__}, got {value!r}')
    if param.choices and value not in param.choices:
        raise ValueError(f'{name} must be one of {param.choices}, got {value!r}')
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f'{name} must be finite, got {value}')
    if param.float_range and not param.float_range[0] <= value <= param.float_range[1]:
        raise ValueError(f'{name} must be in [{param.float_range[0]:g}, '
                         f'{param.float_range[1]:g}], got {value:g}')
    if param.int_range and not param.int_range[0] <= value <= param.int_range[1]:
        raise ValueError(f'{name} must be in [{param.int_range[0]}, {param.int_range[1]}], '
                         f'got {value}')
    if name == 'scene_names':
        _check_scene_names(value)
    if name == 'scene_bins_m':
        _check_scene_bins(value)
    if name == 'scene_prompt_template':
        check_scene_template(value)
    if name == 'cameras':
        from depthclip_ros.ros.streams import check_camera_names
        check_camera_names(value)
    if name == 'output_size':
        size = list(value)
        if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool)
                                     for v in size) or \
                not (size == [0, 0] or (0 < size[0] <= MAX_SIDE_PX and
                                        0 < size[1] <= MAX_SIDE_PX)):
            raise ValueError(f'output_size must be [0, 0] or [height, width] in 1..'
                             f'{MAX_SIDE_PX}, got {size}')


def _check_scene_names(names) -> None:
    """At most ``MAX_SCENES`` distinct non-empty names (at least 2 only once used: that is
    a count, which may disagree for a while)."""
    if len(names) > MAX_SCENES or any(not item.strip() for item in names):
        raise ValueError(f'scene_names must be at most {MAX_SCENES} non-empty names, '
                         f'got {list(names)!r}')
    seen = set()
    for item in names:
        if item.strip() in seen:
            raise ValueError(f'scene_names must be unique, {item.strip()!r} is given twice')
        seen.add(item.strip())


def _check_scene_bins(flat) -> None:
    """Finite bins > 0 that split into scenes' sets each strictly increasing.

    How many bins a set holds is a count (one per distance prompt) that may be changing in
    the same ``ros2 param load``; whatever it becomes, a bin not above the one before it
    must start a set, so some set length of at least 2 must divide both the number of
    values and the position of every such bin."""
    if len(flat) > MAX_SCENES * MAX_BINS or any(not math.isfinite(b) or b <= 0 for b in flat):
        raise ValueError(f'scene_bins_m must be finite bins > 0, at most '
                         f'{MAX_SCENES * MAX_BINS} values, got {list(flat)!r}')
    falls = [i for i in range(1, len(flat)) if flat[i] <= flat[i - 1]]
    if falls and math.gcd(len(flat), *falls) < 2:
        at = falls[0]
        raise ValueError(f'scene_bins_m: the bins of each scene must be strictly increasing, '
                         f'and {list(flat)!r} splits into no equal sets of 2 or more that '
                         f'are (bin {at}, {flat[at]:g}, is not above bin {at - 1}, '
                         f'{flat[at - 1]:g})')

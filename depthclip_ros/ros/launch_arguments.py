"""The launch files' arguments, declared once for all three, and what their text becomes:
parameter values and the node's launch options (used by ``launch/*.launch.py``).

``LAUNCH_ARGUMENTS`` is the one table of every argument (default and help text, as
``--show-args`` prints them); ``FILE_ARGUMENTS`` says which of them each launch file
declares. A start-time argument overrides the params file only when it is given: its
default is the empty string, which means "keep the params file's value". ROS's ``launch``
is imported only inside :func:`declare`, so the table and the conversions load (and are
tested) where ROS's launch is not installed.
"""

from __future__ import annotations

import os
import re

from depthclip_ros.ros.parameters import PARAMETERS, validate

# name -> help text of the start-time choices (parameters read once, at configure)
START_TIME_ARGUMENTS = {
    'model': 'open_clip ResNet CLIP: RN50, RN101, RN50x4, ... (-quickgelu variants)',
    'pretrained': 'open_clip tag (openai), a local weights file (.pt/.bin/.safetensors, '
                  "OpenAI's TorchScript RN50.pt), or none for random weights",
    'device': 'auto, cpu, cuda or cuda:N',
    'precision': 'auto (fp16 on CUDA, fp32 on CPU), fp16, bf16, fp32 or int8 (backend '
                 'openvino with calibration)',
    'backend': 'torch, openvino (the CPU) or auto',
    'calibration': 'precision int8: a folder of images or a ROS 2 bag',
    'feature_mode': 'paper or projected',
    'input_size': 'network input "HEIGHT,WIDTH" in px, multiples of 32 (e.g. 416,544)',
    'image_transport': 'raw (subscribe image) or compressed (image/compressed)',
}
SHARE = 'share:'  # a default starting with this is a file in the installed share folder

# name -> (default, help text): every argument of every launch file, in --show-args order
LAUNCH_ARGUMENTS = {
    'namespace': ('', 'namespace of the node and its topics'),
    'params_file': (SHARE + 'config/depthclip.yaml', 'YAML with depth_node parameters'),
    'cameras_file': (SHARE + 'config/cameras_example.yaml',
                     'YAML naming the cameras (cameras: [...]), applied over params_file'),
    'image': ('image', 'colour image topic (sensor_msgs/Image)'),
    'camera_info': ('camera_info', 'CameraInfo topic of that image'),
    'use_sim_time': ('false', 'use /clock (bag replay, simulation)'),
    'log_level': ('info', 'debug, info, warn, error or fatal'),
    'rviz': ('false', 'also start rviz2 with the shipped config'),
    'managed': ('false', 'start depth_lifecycle_node (unconfigured, for a lifecycle manager) '
                         'instead of depth_node'),
    **{name: ('', f'{text} (default: the params file)')
       for name, text in START_TIME_ARGUMENTS.items()},
}
_EVERY_FILE = ('namespace', 'params_file', 'use_sim_time', 'log_level', *START_TIME_ARGUMENTS)
# launch file -> the arguments it declares (each is used: none is silently ignored)
FILE_ARGUMENTS = {
    'depth.launch.py': ('image', 'camera_info', 'rviz', 'managed', *_EVERY_FILE),
    # always managed: launch configures and activates it
    'depth_lifecycle.launch.py': ('image', 'camera_info', 'rviz', *_EVERY_FILE),
    # each camera's topics are below its name (remap at the drivers); no rviz layout for them
    'cameras.launch.py': ('cameras_file', 'managed', *_EVERY_FILE),
}
FILE_ARGUMENTS = {file: tuple(name for name in LAUNCH_ARGUMENTS if name in names)
                  for file, names in FILE_ARGUMENTS.items()}
_TYPES = {p.name: type(p.default) for p in PARAMETERS}
_FLAGS = {'true': True, '1': True, 'yes': True, 'on': True,
          'false': False, '0': False, 'no': False, 'off': False}


def default_of(name: str, share: str) -> str:
    """The argument's default, a share-folder file resolved against ``share``."""
    default = LAUNCH_ARGUMENTS[name][0]
    return os.path.join(share, default[len(SHARE):]) if default.startswith(SHARE) else default


def declare(launch_file: str) -> list:
    """``DeclareLaunchArgument`` for each argument of ``launch_file`` (its base name)."""
    from ament_index_python.packages import get_package_share_directory
    from launch.actions import DeclareLaunchArgument
    share = get_package_share_directory('depthclip_ros')
    return [DeclareLaunchArgument(name, default_value=default_of(name, share),
                                  description=LAUNCH_ARGUMENTS[name][1])
            for name in FILE_ARGUMENTS[launch_file]]


# what ros2 launch itself adds to the arguments (its --launch-prefix options)
_LAUNCH_OWN = ('launch-prefix', 'launch-prefix-filter')


def check_given(launch_file: str, context) -> None:
    """Refuse (``ValueError``, one line) arguments given on the ``ros2 launch`` command line
    that ``launch_file`` does not declare: launch itself accepts and ignores them, so a
    misspelt ``pretrianed:=none`` would be lost silently. Only where ``launch_file`` is the
    file ``ros2 launch`` was started with: a file that includes it passes arguments of its
    own (``context``: the launch context; its ``argv`` holds the command line's
    arguments)."""
    import sys
    here = getattr(context.locals, 'current_launch_file_path', None)
    command = sys.argv[1:]
    started = any(
        (word == launch_file and command[i - 1:i] == ['depthclip_ros']) or
        (here is not None and os.path.isfile(word) and os.path.samefile(word, here))
        for i, word in enumerate(command))
    if not started:
        return
    unknown = [word.split(':=', 1)[0] for word in context.argv if ':=' in word]
    unknown = [name for name in unknown
               if name not in FILE_ARGUMENTS[launch_file] and name not in _LAUNCH_OWN]
    if unknown:
        import difflib
        named = []
        for name in unknown:
            close = difflib.get_close_matches(name, FILE_ARGUMENTS[launch_file], n=1)
            named.append(f'{name} (did you mean {close[0]}?)' if close else name)
        raise ValueError(f'{launch_file} has no argument {", ".join(named)}; '
                         f'ros2 launch depthclip_ros {launch_file} --show-args lists them')


def flag(name: str, text: str) -> bool:
    """A true/false argument's value; raises ``ValueError`` naming it for other text."""
    try:
        return _FLAGS[text.strip().lower()]
    except KeyError:
        raise ValueError(f'launch argument {name}:={text!r} must be true or false') from None


def node_options(launch_file: str, given: dict[str, str]) -> dict:
    """The launch_ros ``Node`` options (all but package and executable) for the arguments of
    ``launch_file`` given as ``given`` (name -> text, e.g. a launch context's
    ``launch_configurations``): parameter files, then use_sim_time, then the start-time
    arguments that were given; remaps of image and camera_info where the file has them."""
    names = FILE_ARGUMENTS[launch_file]
    files = [given['params_file']] + ([given['cameras_file']] if 'cameras_file' in names
                                      else [])
    for name, path in zip(('params_file', 'cameras_file'), files):
        # launch_ros only warns of a missing file and starts the node without it
        if not os.path.isfile(path):
            raise ValueError(f'launch argument {name}:={path!r} is not a file')
    options = {
        'name': 'depth_node',
        'namespace': given['namespace'],
        'output': 'screen',
        'emulate_tty': True,
        'parameters': [*files, {'use_sim_time': flag('use_sim_time', given['use_sim_time'])},
                       overrides({name: given[name] for name in START_TIME_ARGUMENTS})],
        'arguments': ['--ros-args', '--log-level', given['log_level']],
        # error hints then name launch arguments (pretrained:=none), not --ros-args syntax
        'additional_env': {'DEPTHCLIP_STARTED_BY_LAUNCH': '1'},
    }
    if 'image' in names:
        options['remappings'] = [('image', given['image']),
                                 ('camera_info', given['camera_info'])]
    return options


def rviz_options(given: dict[str, str]) -> dict | None:
    """With rviz:=true, the launch_ros ``Node`` options of rviz2 with the shipped config in
    the node's namespace; else None."""
    if not flag('rviz', given['rviz']):
        return None
    from ament_index_python.packages import get_package_share_directory
    config = os.path.join(get_package_share_directory('depthclip_ros'), 'config',
                          'depthclip.rviz')
    return {'package': 'rviz2', 'executable': 'rviz2', 'namespace': given['namespace'],
            'arguments': ['-d', config],
            'parameters': [{'use_sim_time': flag('use_sim_time', given['use_sim_time'])}]}


def overrides(given: dict[str, str]) -> dict:
    """Parameter values for the arguments given (non-empty text); raises ``ValueError``
    naming the argument when its text is not a valid value."""
    out = {}
    for name, text in given.items():
        if name not in START_TIME_ARGUMENTS:
            raise ValueError(f'{name} is not a start-time launch argument')
        text = text.strip()
        if not text:
            continue
        if _TYPES[name] is list:  # input_size: "416,544", "416 544" or "[416, 544]"
            parts = [p for p in re.split(r'[\s,\[\]]+', text) if p]
            try:
                out[name] = [int(p) for p in parts]
            except ValueError:
                raise ValueError(f'launch argument {name}:={text!r} must be two integers, '
                                 f'e.g. {name}:=416,544') from None
        else:
            out[name] = text
    try:
        validate(out)
    except ValueError as error:
        raise ValueError(f'launch argument: {error}') from None
    if 'input_size' in out:
        from depthclip_ros.engine.config import check_input_size
        check_input_size(out['input_size'])
    return out

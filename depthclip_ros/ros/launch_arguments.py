"""The launch arguments for depth_node's start-time choices, and how their text becomes
parameter values (used by ``launch/*.launch.py``; no ``launch`` import here, so tests can
check the conversion where ROS's launch is not installed).

An argument overrides the params file only when it is given: its default is the empty
string, which means "keep the params file's value".
"""

from __future__ import annotations

import re

from depthclip_ros.ros.parameters import PARAMETERS, validate

# name -> help text shown by `ros2 launch depthclip_ros depth.launch.py --show-args`
START_TIME_ARGUMENTS = {
    'model': 'open_clip ResNet CLIP: RN50, RN101, RN50x4, ... (-quickgelu variants)',
    'pretrained': 'open_clip tag (openai), a local weights file (.pt/.bin/.safetensors, '
                  "OpenAI's TorchScript RN50.pt), or none for random weights",
    'device': 'auto, cpu, cuda or cuda:N',
    'precision': 'auto (fp16 on CUDA, fp32 on CPU), fp16, bf16 or fp32',
    'feature_mode': 'paper or projected',
    'input_size': 'network input "HEIGHT,WIDTH" in px, multiples of 32 (e.g. 416,544)',
    'image_transport': 'raw (subscribe image) or compressed (image/compressed)',
}
_TYPES = {p.name: type(p.default) for p in PARAMETERS}


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

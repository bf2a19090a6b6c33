"""The tools' command line itself: ``--help`` is quick (it imports no torch, OpenCV, ROS or
rosbags), it states every limit an option has, a mistake is said in one line first, and
the same mistake ends every tool with the same exit status."""

import argparse
import os
from pathlib import Path
import re
import subprocess
import sys

import pytest

from depthclip_ros.engine.config import (
    CANONICAL_FOCAL_RANGE_PX,
    MAX_BINS,
    MAX_PROMPT_CHARS,
    MAX_SCENES,
    MAX_SENTENCES,
    TEMPERATURE_RANGE,
)
from depthclip_ros.objects.proposals import MAX_MASKS
from depthclip_ros.objects.queries import MAX_QUERIES, MAX_QUERY_CHARS
from depthclip_ros.ros.parameters import PARAMETERS
from depthclip_ros.tools.cli import build_parser, main, SUMMARIES

REPO = Path(__file__).resolve().parents[1]
# What no --help may import: the frameworks, and the converters of the OpenVINO backend and
# of export (imported only inside the functions that need them).
HEAVY = ('torch', 'rclpy', 'cv2', 'rosbags', 'open_clip', 'openvino', 'nncf', 'onnx',
         'onnxruntime', 'tensorrt')
# Every tool of the command line, from its own table: a tool added later is checked too.
TOOLS = list(SUMMARIES)


def imported_modules(*args: str) -> tuple[int, set[str], str]:
    """Run ``depthclip-ros ARGS`` as its own process under ``python -X importtime``:
    ``(exit status, every module it imported, stdout)``."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, '-X', 'importtime', '-m', 'depthclip_ros.tools.cli',
                           *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    names = {line.rsplit('|', 1)[1].strip() for line in done.stderr.splitlines()
             if line.startswith('import time:') and '|' in line}
    names.discard('imported package')  # the header line
    return done.returncode, names, done.stdout


def heavy_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split('.')[0] in HEAVY)


# ---------------------------------------------------------------------------------------
# --help imports nothing heavy


def test_the_top_level_help_imports_no_tool_and_nothing_heavy():
    code, modules, out = imported_modules('--help')
    assert code == 0 and all(tool in out for tool in TOOLS)
    assert 'depthclip_ros.allocator' in modules  # the measurement sees our imports
    assert heavy_in(modules) == []
    assert not {m for m in modules if m.startswith('depthclip_ros.tools.')}


@pytest.mark.parametrize('tool', TOOLS)
def test_a_tool_s_help_imports_nothing_heavy(tool):
    code, modules, out = imported_modules(tool, '--help')
    assert code == 0 and f'usage: depthclip-ros {tool}' in out
    # its options are in the usage: the tool's module was imported, and its imports seen
    assert 'depthclip_ros.tools.common' in modules
    assert heavy_in(modules) == [], f'{tool} --help imports {heavy_in(modules)}'


def test_the_measurement_sees_a_heavy_import(tmp_path):
    """The check above can fail: a real run of a tool imports torch."""
    import numpy as np
    from PIL import Image
    Image.fromarray(np.full((32, 48, 3), 128, np.uint8)).save(tmp_path / 'grey.png')
    code, modules, _ = imported_modules(
        'infer', str(tmp_path / 'grey.png'), '--hfov-deg', '60', '--pretrained', 'none',
        '--device', 'cpu', '--output', str(tmp_path / 'out'))
    assert code == 0 and 'torch' in modules


# ---------------------------------------------------------------------------------------
# every limit an option has is in its help


def option_help(tool: str) -> dict[str, str]:
    """``{'--option': 'its help text'}`` of a tool's parser, as --help prints it (the
    format strings applied)."""
    parser = build_parser(tool)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {}
    for action in sub.choices[tool]._actions:
        for option in action.option_strings:
            text = action.help or ''
            helps[option] = text % {'default': action.default} if '%(' in text else text
    return helps


def number_pattern(value: float) -> str:
    """A number as a help text may write it (1, 1.0, 64, 0.0001, 1e-04)."""
    forms = {f'{value:g}', str(value)}
    if float(value).is_integer():
        forms.add(str(int(value)))
    return '|'.join(re.escape(f) for f in forms)


def assert_says(text: str, *values) -> None:
    for value in values:
        pattern = number_pattern(value) if isinstance(value, (int, float)) else \
            re.escape(value)
        assert re.search(rf'(?<!\d)(?<!\d\.)(?:{pattern})(?!\d)', text), (value, text)


MODEL_LIMITS = {
    '--distance-prompts': (MAX_BINS, MAX_PROMPT_CHARS, MAX_SENTENCES, '77-token'),
    '--depth-bins-m': ('strictly increasing', '> 0'),
    '--temperature': TEMPERATURE_RANGE,
    '--canonical-focal-px': CANONICAL_FOCAL_RANGE_PX,
    '--input-size': ('multiples of 32',),
    '--scene-names': (2, MAX_SCENES),
    '--scene-prompt-template': (MAX_PROMPT_CHARS,),
    '--device': ('exit status 2',),
}


@pytest.mark.parametrize('tool', ['infer', 'locate', 'bag', 'evaluate', 'demo'])
def test_every_model_option_states_its_limits(tool):
    helps = option_help(tool)
    for option, limits in MODEL_LIMITS.items():
        assert_says(helps[option], *limits)


QUERY_LIMITS = (MAX_QUERIES, MAX_QUERY_CHARS, '77-token')


def test_locate_states_the_limits_of_queries_masks_and_mixing():
    helps = option_help('locate')
    assert_says(helps['--query'], *QUERY_LIMITS)
    assert_says(helps['--noun-phrase'], 'same limits as --query')
    assert_says(helps['--max-masks'], 1, 64, MAX_MASKS)
    for option in ('--alpha', '--beta'):
        assert_says(helps[option], 0, 1)
    for option in ('--max-depth-m', '--max-input-pixels'):
        assert helps[option]


# bag's options that are node parameters: their help states the parameter's range
BAG_PARAMETERS = {'--cloud-stride': 'cloud_stride', '--min-depth-m': 'min_depth_m',
                  '--max-depth-m': 'max_depth_m', '--max-uncertainty-m': 'max_uncertainty_m',
                  '--scene-every-n-frames': 'scene_every_n_frames',
                  '--fallback-hfov-deg': 'fallback_hfov_deg',
                  '--max-input-pixels': 'max_input_pixels',
                  '--object-alpha': 'object_alpha', '--object-beta': 'object_beta'}


def test_bag_options_state_the_node_parameters_ranges():
    helps = option_help('bag')
    ranged = {p.name: p.int_range or p.float_range for p in PARAMETERS
              if p.int_range or p.float_range}
    for option, name in BAG_PARAMETERS.items():
        assert_says(helps[option], *ranged[name])
    assert_says(helps['--query'], *QUERY_LIMITS)
    assert_says(helps['--output-size'], '--max-input-pixels')


def test_infer_and_demo_state_their_limits():
    helps = option_help('infer')
    assert_says(helps['--hfov-deg'], 0, 180)
    assert_says(helps['--max-input-pixels'], *next(
        p.int_range for p in PARAMETERS if p.name == 'max_input_pixels'))
    assert_says(helps['--max-depth-m'], '> 0')
    assert_says(option_help('demo')['--frames'], 1, 1000)
    assert_says(option_help('evaluate')['--max-depth-m'], '> 0.001')


def test_every_tool_option_has_help():
    for tool in TOOLS:
        helps = option_help(tool)
        bare = [o for o, text in helps.items() if not text and o.startswith('--')
                and o not in ('--feature-mode', '--help')]
        assert not bare, f'{tool}: {bare} say nothing'


def tool_inputs(tmp_path: Path) -> tuple[Path, Path]:
    """A 52x36 image and a one-frame dataset folder (rgb/, depth/, intrinsics.json) for the
    tools' refusals, which must come before either is read."""
    import cv2
    import numpy as np
    image = tmp_path / 'a.png'
    cv2.imwrite(str(image), np.zeros((36, 52, 3), np.uint8))
    dataset = tmp_path / 'ds'
    (dataset / 'rgb').mkdir(parents=True)
    (dataset / 'depth').mkdir()
    cv2.imwrite(str(dataset / 'rgb' / '0.png'), np.zeros((36, 52, 3), np.uint8))
    cv2.imwrite(str(dataset / 'depth' / '0.png'), np.ones((36, 52), np.uint16))
    (dataset / 'intrinsics.json').write_text(
        '{"fx": 50, "fy": 50, "cx": 26, "cy": 18, "width": 52, "height": 36}')
    return image, dataset


# ---------------------------------------------------------------------------------------
# a mistake on the command line: one line first


@pytest.mark.parametrize('args, said', [
    (['infer', 'a.png', '--hfov-deg', '60'], 'the following arguments are required: '
                                              '--output'),
    (['infer', 'a.png', '-o', 'x', '--hfov-deg', 'wide'], '--hfov-deg: invalid float value'),
    (['locate', 'a.png', '-q', 'x', '--intrinsics', '1', '1', '1', '1', '-o', 'o',
      '--max-masks', 'many'], "--max-masks: invalid int value: 'many'"),
    (['bag', 'in.mcap'], 'the following arguments are required: output'),
    (['bag', 'in', 'out', '--intrinsics-source', 'Q'], "invalid choice: 'Q'"),
    (['evaluate', 'd', '--precision', 'fp8'], "invalid choice: 'fp8'"),
    (['demo', '--frames', 'ten'], "invalid int value: 'ten'"),
    (['soak', '--stop-signal', 'KILL'], "invalid choice: 'KILL'"),
    (['bench', '--batch', 'x'], "invalid int value: 'x'"),
    (['infer', 'a.png', '-o', 'x', '--hfov-deg', '60', '--no-such-option'],
     'unrecognized arguments: --no-such-option'),
    (['nonsense'], "invalid choice: 'nonsense'"),
    ([], 'the following arguments are required: COMMAND'),
])
def test_an_argument_error_is_one_line_then_where_the_usage_is(capsys, args, said):
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    tool = f'depthclip-ros {args[0]}' if args and args[0] != 'nonsense' else 'depthclip-ros'
    assert len(lines) == 2, captured.err
    assert lines[0].startswith(f'{tool}: error: ') and said in lines[0], lines[0]
    assert lines[1] == f'(usage: {tool} --help)'
    assert captured.out == ''


# ---------------------------------------------------------------------------------------
# the same mistake, the same exit status: an absent CUDA device is an option error (2)


def _no_cuda() -> bool:
    import torch
    return not torch.cuda.is_available()


@pytest.mark.skipif(not _no_cuda(), reason='CUDA is here')
@pytest.mark.parametrize('args', [
    ['infer', '{image}', '--hfov-deg', '60', '-o', '{tmp}/out'],
    ['locate', '{image}', '-q', 'a box', '--intrinsics', '50', '50', '26', '18', '-o',
     '{tmp}/out'],
    ['evaluate', '{dataset}'],
    ['bench', '--warmup', '0', '--repeat', '1'],
    ['demo', '--output', '{tmp}/out'],
])
def test_an_absent_cuda_device_is_exit_status_2_in_every_tool(tmp_path, capsys, monkeypatch,
                                                               args):
    from depthclip_ros.engine.depthclip import DepthCLIP
    monkeypatch.setattr(DepthCLIP, 'load', lambda self: pytest.fail('the model was built'))
    image, dataset = tool_inputs(tmp_path)
    args = [a.format(image=image, tmp=tmp_path, dataset=dataset) for a in args]
    assert main([*args, '--device', 'cuda', '--pretrained', 'none']) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f'depthclip-ros {args[0]}: ') and 'CUDA is not available' in last


# ---------------------------------------------------------------------------------------
# the same mistake, the same exit status: a --calibration that is not there is an option
# error (2), said before the model loads, in every tool that takes it


def _shared_bag() -> Path:
    from conftest import shared_data
    return shared_data('bags', 'realsense_d435_single_frame_ros2')


@pytest.mark.parametrize('args', [
    ['infer', '{image}', '--hfov-deg', '60', '-o', '{tmp}/out'],
    ['locate', '{image}', '-q', 'a box', '--intrinsics', '50', '50', '26', '18', '-o',
     '{tmp}/out'],
    ['evaluate', '{dataset}'],
    ['bag', '{bag}', '{tmp}/out'],
    ['demo', '--output', '{tmp}/out'],
    ['bench', '--warmup', '0', '--repeat', '1'],
    ['bench', '--compare-backends', 'openvino-int8', '--warmup', '0', '--repeat', '1'],
    ['bench-bag', '--frames', '2'],
    ['bench-node', '--frames', '1'],
    ['bench-cameras', '--cameras', '1'],
])
@pytest.mark.parametrize('where', ['nowhere', 'an empty folder', 'a text file'])
def test_a_calibration_that_is_not_there_is_exit_status_2_in_every_tool(
        tmp_path, capsys, monkeypatch, args, where):
    from depthclip_ros.engine.depthclip import DepthCLIP
    monkeypatch.setattr(DepthCLIP, 'load', lambda self: pytest.fail('the model was built'))
    image, dataset = tool_inputs(tmp_path)
    calibration = {'nowhere': tmp_path / 'no' / 'frames',
                   'an empty folder': tmp_path / 'empty',
                   'a text file': tmp_path / 'notes.txt'}[where]
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'notes.txt').write_text('not frames')
    args = [a.format(image=image, tmp=tmp_path, dataset=dataset, bag=_shared_bag())
            for a in args]
    int8 = [] if '--compare-backends' in args else ['--backend', 'openvino', '--precision',
                                                    'int8']
    assert main([*args, *int8, '--calibration', str(calibration), '--device', 'cpu',
                 '--pretrained', 'none']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f'depthclip-ros {args[0]}: ') and str(calibration) in err[-1]
    assert '--calibration' in err[-1]
    assert not (tmp_path / 'out').exists()


# ---------------------------------------------------------------------------------------
# the benchmarks' own options: every limit in --help, every value outside it refused in one
# line (status 2) before anything loads, never a traceback


@pytest.mark.parametrize('tool, option, value', [
    ('bench', '--image-size', ['0', '0']),
    ('bench', '--image-size', ['480', '9000']),
    ('bench-bag', '--frames', ['0']),
    ('bench-bag', '--frames', ['-3']),
    ('bench-bag', '--frames', ['1001']),
    ('bench-bag', '--image-size', ['0', '0']),
    ('bench-node', '--frames', ['0']),
    ('bench-node', '--image-size', ['-1', '640']),
    ('bench-node', '--stream-hz', ['0']),
    ('bench-node', '--stream-hz', ['nan']),
    ('bench-node', '--stream-seconds', ['-1']),
    ('bench-node', '--timeout', ['0']),
])
def test_a_benchmark_option_out_of_range_is_one_line_and_status_2(capsys, monkeypatch, tool,
                                                                   option, value):
    from depthclip_ros.engine.depthclip import DepthCLIP
    monkeypatch.setattr(DepthCLIP, 'load', lambda self: pytest.fail('the model was built'))
    assert main([tool, option, *value, '--device', 'cpu']) == 2
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [err.strip()]  # one line, no traceback
    assert err.startswith(f'depthclip-ros {tool}: {option} must be')
    limits = {'--frames': '1..', '--image-size': '1..8192', '--stream-hz': '(0, 1000]',
              '--stream-seconds': '(0, 3600]', '--timeout': '> 0'}
    assert limits[option] in option_help(tool)[option]  # the limit is in --help too

"""No tool replaces a file it did not create in this run unless the user says so
(``--overwrite``): the run is refused up front (exit status 2, before the model loads)
naming the files; with ``--overwrite`` they are replaced. Cases for every tool and every
kind of output file (CPU, random weights; the model is the session's small engine, or a
loader that fails the test where nothing may be loaded).
"""

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from depthclip_ros.io.outputs import (
    check_outputs,
    existing_outputs,
    OutputsExist,
    Series,
    SHOWN,
)
from depthclip_ros.tools import bag as bag_tool
from depthclip_ros.tools import demo, evaluate, infer, locate
from depthclip_ros.tools.cli import main
from depthclip_ros.tools.infer_names import OUTPUT_SUFFIXES, SUMMARY_SUFFIX

from conftest import small_engine_for_tools

FAST = ['--pretrained', 'none', '--device', 'cpu', '--input-size', '64', '96']
H, W = 36, 52
MINE = b"the user's own file"


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: the refusals come before it."""
    def load(*args, **kwargs):
        raise AssertionError('the model was loaded before the refusal')

    for module in (infer, locate, evaluate, bag_tool):
        monkeypatch.setattr(module, 'load_engine', load)
    monkeypatch.setattr(demo, 'build_engine', load)


@pytest.fixture
def tool_engine(monkeypatch, small_engine):
    restore = small_engine_for_tools(monkeypatch, small_engine, infer, locate, evaluate)
    monkeypatch.setattr(demo, 'build_engine', lambda model, head, prog: small_engine)
    yield small_engine
    restore()


def write_image(path: Path, seed: int = 0, size=(H, W)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), bgr)
    return path


def write_video(path: Path, frames: int = 3) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), 10, (64, 48))
    assert writer.isOpened()
    for level in range(frames):
        writer.write(np.full((48, 64, 3), 60 * level, np.uint8))
    writer.release()
    return path


def plant(path: Path) -> Path:
    """A file of the user's where a run would write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(MINE)
    return path


def assert_refused_naming(err: str, command: str, *paths: Path) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f'depthclip-ros {command}: this run would replace ')
    assert 'pass --overwrite' in lines[0]
    for path in paths:  # by name, after their folder
        assert f'in {path.parent}/: ' in lines[0] and path.name in lines[0], (path, lines[0])


# ---------------------------------------------------------------------------------------
# the planning function


def test_check_outputs_lists_what_exists_and_returns_it_with_overwrite(tmp_path):
    present = [plant(tmp_path / name) for name in ('b.png', 'a.npy')]
    absent = [tmp_path / 'c.ply', tmp_path / 'sub' / 'd.png']
    assert check_outputs(absent) == []
    with pytest.raises(OutputsExist) as refused:
        check_outputs([*absent, *present])
    assert refused.value.paths == sorted(present)
    assert '2 files that exist' in str(refused.value) and '--overwrite' in str(refused.value)
    assert check_outputs([*absent, *present], overwrite=True) == sorted(present)
    link = tmp_path / 'dangling.png'
    link.symlink_to(tmp_path / 'nowhere')
    with pytest.raises(OutputsExist):  # a link is replaced too: it counts
        check_outputs([link])


def test_a_refusal_names_a_few_and_counts_the_rest(tmp_path):
    present = [plant(tmp_path / f'f{i:02d}.png') for i in range(SHOWN + 7)]
    with pytest.raises(OutputsExist) as refused:
        check_outputs(present)
    text = str(refused.value)
    assert text.startswith(f'this run would replace {SHOWN + 7} files that exist already '
                           f'(pass --overwrite to replace them, or choose another output) '
                           f'in {tmp_path}/: f00.png, f01.png')
    assert all(p.name in text for p in present[:SHOWN])
    assert present[SHOWN].name not in text and text.endswith(' and 7 more')
    elsewhere = plant(tmp_path / 'sub' / 'g.png')
    with pytest.raises(OutputsExist) as refused:  # in several folders: whole paths
        check_outputs([present[0], elsewhere])
    assert str(refused.value).endswith(f'output) {present[0]}, {elsewhere}')


def test_a_folder_where_a_file_goes_is_refused_even_with_overwrite(tmp_path):
    (tmp_path / 'a_depth.png').mkdir()
    for overwrite in (False, True):
        with pytest.raises(ValueError, match='is a folder'):
            check_outputs([tmp_path / 'a_depth.png'], overwrite)


def test_a_series_claims_the_frames_of_a_video_only(tmp_path):
    series = Series(tmp_path, 'clip_', ('_depth.npy', '.ply'))
    for name in ('clip_000000_depth.npy', 'CLIP_001234.ply', 'clip_0000001.ply'):
        plant(tmp_path / name)
    for name in ('clip_00001_depth.npy', 'clip_000000_depth.png', 'clip_000000.ply.txt',
                 'clipx_000000.ply', 'clip_00000a.ply', 'other_000000.ply'):
        plant(tmp_path / name)
    found = {p.name for p in existing_outputs([], [series])}
    assert found == {'clip_000000_depth.npy', 'CLIP_001234.ply', 'clip_0000001.ply'}
    assert existing_outputs([], [Series(tmp_path / 'absent', 'clip_', ('.ply',))]) == []


# ---------------------------------------------------------------------------------------
# infer


INFER_KINDS = [*OUTPUT_SUFFIXES, SUMMARY_SUFFIX]


@pytest.mark.parametrize('suffix', INFER_KINDS)
def test_infer_refuses_to_replace_any_kind_of_output(tmp_path, capsys, no_model, suffix):
    """The reported case among them: a.png beside its ground truth a_depth.png, output
    into the same folder."""
    folder = tmp_path / 'data'
    source = write_image(folder / 'a.png')
    mine = plant(folder / f'a{suffix}')
    args = ['infer', str(source), '--hfov-deg', '60', '--output', str(folder), '--json',
            *FAST]
    assert main(args) == 2
    assert_refused_naming(capsys.readouterr().err, 'infer', mine)
    assert mine.read_bytes() == MINE
    assert sorted(p.name for p in folder.iterdir()) == sorted(['a.png', mine.name])


def test_infer_without_json_leaves_a_summary_of_that_name_alone(tmp_path, capsys,
                                                                   tool_engine):
    source = write_image(tmp_path / 'a.png')
    mine = plant(tmp_path / f'a{SUMMARY_SUFFIX}')
    assert main(['infer', str(source), '--hfov-deg', '60', '--output', str(tmp_path),
                 *FAST]) == 0
    assert mine.read_bytes() == MINE


@pytest.mark.parametrize('suffix', INFER_KINDS)
def test_infer_with_overwrite_replaces_them(tmp_path, capsys, tool_engine, suffix):
    source = write_image(tmp_path / 'in' / 'a.png')
    out = tmp_path / 'out'
    mine = plant(out / f'a{suffix}')
    assert main(['infer', str(source), '--hfov-deg', '60', '--output', str(out), '--json',
                 '--overwrite', *FAST]) == 0
    assert mine.read_bytes() != MINE
    assert '--overwrite: replacing 1 existing file' in capsys.readouterr().out
    assert source.read_bytes() != MINE


def test_infer_refuses_to_replace_a_video_frame_s_files(tmp_path, capsys, no_model):
    video = write_video(tmp_path / 'clip.avi')
    mine = plant(tmp_path / 'out' / 'clip_000002.ply')
    plant(tmp_path / 'out' / 'clip_notes.txt')  # no frame's: not in the way
    assert main(['infer', str(video), '--hfov-deg', '60', '--output', str(tmp_path / 'out'),
                 *FAST]) == 2
    assert_refused_naming(capsys.readouterr().err, 'infer', mine)


def test_infer_a_second_run_needs_overwrite(tmp_path, capsys, tool_engine, monkeypatch):
    inputs = [write_image(tmp_path / 'in' / f'{n}.png', seed) for seed, n in enumerate('ab')]
    out = tmp_path / 'out'
    args = ['infer', str(tmp_path / 'in'), '--hfov-deg', '60', '--output', str(out), *FAST]
    assert main(args) == 0
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert len(first) == 2 * len(OUTPUT_SUFFIXES)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f'{len(first)} files that exist' in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    assert main([*args, '--overwrite']) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(first)
    assert all(p.read_bytes() != MINE for p in inputs)


def test_infer_inputs_are_never_replaced_even_with_overwrite(tmp_path, capsys, tool_engine):
    """An image named like another input's output is an input: the other input moves to
    another name, --overwrite or not."""
    folder = tmp_path / 'data'
    write_image(folder / 'a.png', 1)
    truth = write_image(folder / 'a_depth.png', 2)
    before = truth.read_bytes()
    assert main(['infer', str(folder), '--hfov-deg', '60', '--output', str(folder),
                 '--overwrite', *FAST]) == 0
    assert truth.read_bytes() == before


# ---------------------------------------------------------------------------------------
# locate


@pytest.fixture
def scene(tmp_path) -> Path:
    rgb = np.full((48, 64, 3), (40, 160, 60), np.uint8)
    rgb[8:30, 4:26] = (220, 30, 30)
    image = tmp_path / 'scene.png'
    assert cv2.imwrite(str(image), rgb[..., ::-1])
    return image


LOCATE_OUTPUTS = ['scene_locate.png', 'scene_proposals.png', 'scene_proposals_preview.png',
                  'scene_0.ply', 'scene_1.ply', 'scene_locate.json']


def locate_args(image: Path, out: Path, *extra: str) -> list[str]:
    return ['locate', str(image), '--query', 'the red box', '--query', 'the green floor',
            '--intrinsics', '60', '60', '32', '24', '--output', str(out), *FAST, *extra]


@pytest.mark.parametrize('name', LOCATE_OUTPUTS)
def test_locate_refuses_to_replace_any_of_its_outputs(scene, tmp_path, capsys, no_model,
                                                      name):
    out = tmp_path / 'out'
    mine = plant(out / name)
    assert main(locate_args(scene, out)) == 2
    assert_refused_naming(capsys.readouterr().err, 'locate', mine)
    assert mine.read_bytes() == MINE and [p.name for p in out.iterdir()] == [name]


def test_locate_refuses_an_existing_json_elsewhere(scene, tmp_path, capsys, no_model):
    mine = plant(tmp_path / 'answers' / 'a.json')
    assert main(locate_args(scene, tmp_path / 'out', '--json', str(mine))) == 2
    assert_refused_naming(capsys.readouterr().err, 'locate', mine)


def test_locate_with_overwrite_replaces_them(scene, tmp_path, capsys, tool_engine):
    out = tmp_path / 'out'
    mine = [plant(out / name) for name in ('scene_locate.png', 'scene_locate.json')]
    assert main(locate_args(scene, out, '--overwrite')) == 0
    assert all(p.read_bytes() != MINE for p in mine)
    json.loads((out / 'scene_locate.json').read_text())
    capsys.readouterr()
    assert main(locate_args(scene, out)) == 2  # its own files, from an earlier run now


# ---------------------------------------------------------------------------------------
# evaluate


def make_dataset(root: Path, frames: int = 2) -> Path:
    (root / 'rgb').mkdir(parents=True)
    (root / 'depth').mkdir()
    for index in range(frames):
        write_image(root / 'rgb' / f'{index:04d}.png', index, (48, 64))
        depth = np.full((48, 64), 1500 + 100 * index, np.uint16)
        assert cv2.imwrite(str(root / 'depth' / f'{index:04d}.png'), depth)
    (root / 'intrinsics.json').write_text(json.dumps(
        {'fx': 60.0, 'fy': 60.0, 'cx': 32.0, 'cy': 24.0, 'width': 64, 'height': 48,
         'depth_unit_m': 0.001}))
    return root


def test_evaluate_refuses_to_replace_its_json(tmp_path, capsys, no_model):
    dataset = make_dataset(tmp_path / 'ds')
    mine = plant(tmp_path / 'results.json')
    assert main(['evaluate', str(dataset), '--json', str(mine), *FAST]) == 2
    assert_refused_naming(capsys.readouterr().err, 'evaluate', mine)
    assert mine.read_bytes() == MINE


def test_evaluate_with_overwrite_replaces_it(tmp_path, capsys, tool_engine):
    dataset = make_dataset(tmp_path / 'ds')
    mine = plant(tmp_path / 'results.json')
    assert main(['evaluate', str(dataset), '--json', str(mine), '--overwrite', *FAST]) == 0
    assert json.loads(mine.read_text())['datasets']['ds']['frames'] == 2


# ---------------------------------------------------------------------------------------
# bag (its output folder)


def test_bag_refuses_an_existing_output_before_the_model(tmp_path, capsys, no_model):
    source = shared_bag()
    out = tmp_path / 'out'
    out.mkdir()
    mine = plant(out / 'notes.txt')
    assert main(['bag', str(source), str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith('depthclip-ros bag: ') and '--overwrite' in err
    assert mine.read_bytes() == MINE


def shared_bag() -> Path:
    from conftest import shared_data
    return shared_data('bags', 'realsense_d435_single_frame_ros2')


# ---------------------------------------------------------------------------------------
# demo


@pytest.mark.parametrize('name', ['corridor_preview.png', 'corridor_uncertainty.npy',
                                  'corridor_truth_depth.npy', 'corridor_camera/metadata.yaml',
                                  'corridor_depth/metadata.yaml'])
def test_demo_refuses_to_replace_an_earlier_demo(tmp_path, capsys, no_model, name):
    mine = plant(tmp_path / name)
    shown = tmp_path / name.split('/')[0]
    assert main(['demo', '--output', str(tmp_path), *FAST, '--frames', '2']) == 2
    *status, line = capsys.readouterr().err.strip().splitlines()
    assert_refused_naming(line, 'demo', shown)
    assert all('importing' in s for s in status)
    assert mine.read_bytes() == MINE


def test_demo_refuses_to_replace_the_outputs_of_its_inputs(tmp_path, capsys, no_model):
    image = write_image(tmp_path / 'in' / 'kitchen.png')
    mine = plant(tmp_path / 'out' / 'kitchen.ply')
    assert main(['demo', '--input', str(image), '--output', str(tmp_path / 'out'),
                 *FAST]) == 2
    assert_refused_naming(capsys.readouterr().err.strip().splitlines()[-1], 'demo', mine)
    bag_out = plant(tmp_path / 'out2' / 'realsense_d435_single_frame_ros2_depth' / 'x.txt')
    assert main(['demo', '--input', str(shared_bag()), '--output', str(tmp_path / 'out2'),
                 *FAST]) == 2
    assert_refused_naming(capsys.readouterr().err.strip().splitlines()[-1], 'demo',
                          bag_out.parent)


def test_demo_with_overwrite_replaces_the_images_outputs(tmp_path, capsys, tool_engine):
    image = write_image(tmp_path / 'in' / 'kitchen.png')
    out = tmp_path / 'out'
    mine = plant(out / 'kitchen_depth.npy')
    assert main(['demo', '--input', str(image), '--output', str(out), '--overwrite',
                 *FAST]) == 0
    assert np.load(mine).shape == (H, W)
    assert os.path.exists(out / 'kitchen.ply')


def test_demo_refuses_a_bag_output_inside_its_input_before_the_model(tmp_path, capsys,
                                                                     no_model):
    import shutil
    recording = tmp_path / 'rec'
    shutil.copytree(shared_bag(), recording)
    before = sorted(p.name for p in recording.iterdir())
    assert main(['demo', '--input', str(recording), '--output', str(recording), *FAST]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith('depthclip-ros demo: ') and 'the input recording' in line
    assert sorted(p.name for p in recording.iterdir()) == before


# ---------------------------------------------------------------------------------------
# bench and bench-cameras: their --json


@pytest.mark.parametrize('tool', ['bench', 'bench-cameras'])
def test_a_benchmark_refuses_to_replace_its_json_before_it_starts(tmp_path, capsys, tool):
    report = tmp_path / 'figures.json'
    report.write_text('{"kept": true}\n')
    assert main([tool, '--json', str(report)]) == 2
    assert report.read_text() == '{"kept": true}\n'
    out, err = capsys.readouterr()
    assert 'figures.json' in err and '--overwrite' in err


@pytest.mark.parametrize('variant', [[], ['--compare-backends', 'openvino'],
                                     ['--compare-precision', 'fp32']])
@pytest.mark.parametrize('where', ['missing folder', 'a folder', 'under a file'])
def test_bench_refuses_a_json_it_could_not_write_before_the_model(tmp_path, capsys,
                                                                  monkeypatch, variant,
                                                                  where):
    """A ``--json`` that cannot be written is said up front (exit 2), not after the whole
    benchmark as a traceback."""
    from depthclip_ros.engine.depthclip import DepthCLIP
    monkeypatch.setattr(DepthCLIP, 'load', lambda self: pytest.fail('the model was built'))
    report = {'missing folder': tmp_path / 'nowhere' / 'figures.json',
              'a folder': tmp_path,
              'under a file': tmp_path / 'notes.txt' / 'figures.json'}[where]
    (tmp_path / 'notes.txt').write_text('mine')
    assert main(['bench', *variant, '--device', 'cpu', '--json', str(report)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith('depthclip-ros bench: output ') and str(report) in err[-1]


# ---------------------------------------------------------------------------------------
# a started node's params file: nothing is left in the temporary folder


@pytest.fixture
def fake_node(tmp_path, monkeypatch):
    """``start_node`` starts this script (it ignores its arguments and sleeps) instead of
    Python with depth_node, and makes its params folders under ``tmp_path/tmp``."""
    script = tmp_path / 'node.sh'
    script.write_text('#!/bin/sh\nexec sleep 30\n')
    script.chmod(0o755)
    temp = tmp_path / 'tmp'
    temp.mkdir()
    import sys
    import tempfile
    monkeypatch.setattr(sys, 'executable', str(script))
    monkeypatch.setattr(tempfile, 'tempdir', str(temp))
    return temp


@pytest.mark.parametrize('ending', ['stop_node', 'kill_wait', 'kill_poll', 'communicate',
                                    'dropped'])
def test_a_started_node_leaves_no_params_folder(fake_node, ending):
    import gc
    import time

    from depthclip_ros.tools import node_process
    process = node_process.start_node({'pretrained': 'none', 'input_size': [64, 96]})
    folders = list(fake_node.iterdir())
    assert [f.name.startswith('depthclip_node_') for f in folders] == [True]
    assert (folders[0] / 'params.yaml').is_file()  # there while the node runs
    if ending == 'stop_node':
        node_process.stop_node(process)
    elif ending == 'kill_wait':
        process.kill()
        process.wait()
    elif ending == 'kill_poll':
        process.kill()
        deadline = time.monotonic() + 10
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    elif ending == 'communicate':
        process.kill()
        process.communicate()
    else:  # never waited for: removed when the object goes
        process.kill()
        os.waitpid(process.pid, 0)
        process.returncode = -9
        del process
        gc.collect()
    assert list(fake_node.iterdir()) == []

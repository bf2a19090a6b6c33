"""What `infer` and `evaluate` promise about bad input (CPU, random weights).

* every input gets its own outputs (names decided before anything is written), each
  output belonging to its own input;
* one unreadable input is reported in one line and skipped, exit status 1;
* work is bounded by --max-input-pixels, checked from headers before decoding;
* options, inputs and output paths are checked before the model is loaded: one line
  "depthclip-ros <command>: <reason>", exit status 2, never a traceback.

Most runs are in-process with the model loader replaced by the session's small
random-weights engine (or by a loader that fails the test, where nothing may be loaded);
a few run the real command as its own process.
"""

import contextlib
import io
import json
import math
import os
from pathlib import Path
import subprocess
import sys

import cv2
from hypothesis import given, HealthCheck, settings
from hypothesis import strategies as st
import numpy as np
import pytest

from depthclip_ros.io import dataset
from depthclip_ros.io.dataset import DatasetError, read_rgb, RGBDFolder
from depthclip_ros.io.encodings import ImageFormatError
from depthclip_ros.io.visualize import read_ply, write_rgb_png
from depthclip_ros.ros.parameters import DEFAULT_MAX_INPUT_PIXELS
from depthclip_ros.tools import evaluate, infer
from depthclip_ros.tools.cli import main
from depthclip_ros.tools.infer_names import OUTPUT_SUFFIXES, plan_outputs

from conftest import fill_disk_at

REPO = Path(__file__).resolve().parents[1]
FAST = ['--pretrained', 'none', '--device', 'cpu', '--input-size', '64', '96']
BANNER_ROWS = 24  # the RANDOM WEIGHTS strip on top of a preview


# ---------------------------------------------------------------------------------------
# helpers


@pytest.fixture
def engine_loads(monkeypatch, small_engine):
    """Both tools load the session's small engine; the list counts the loads."""
    loads = []

    def load(args):
        loads.append(args)
        return small_engine

    monkeypatch.setattr(infer, 'load_engine', load)
    monkeypatch.setattr(evaluate, 'load_engine', load)
    return loads


@pytest.fixture
def no_model(monkeypatch):
    """Loading the model fails the test: for what must be refused before it."""
    def load(args):
        raise AssertionError('the model was loaded before the refusal')

    monkeypatch.setattr(infer, 'load_engine', load)
    monkeypatch.setattr(evaluate, 'load_engine', load)


def image(seed: int, height: int = 36, width: int = 52) -> np.ndarray:
    """A distinct BGR image per seed (and per size)."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_image(path: Path, bgr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), bgr)
    return path


def write_video(path: Path, levels, size=(64, 48)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), 10, size)
    assert writer.isOpened()
    for level in levels:
        writer.write(np.full((size[1], size[0], 3), level, np.uint8))
    writer.release()
    return path


def outputs(folder: Path, name: str) -> list[Path]:
    return [folder / f'{name}{suffix}' for suffix in OUTPUT_SUFFIXES]


def assert_outputs_of(folder: Path, name: str, source: Path) -> None:
    """The four files of ``name`` exist and were made from ``source``: the preview's left
    panel and the PLY's colours are its pixels, the depth has its size."""
    expected = cv2.imread(str(source), cv2.IMREAD_COLOR)  # BGR, as decoded by infer
    height, width = expected.shape[:2]
    for path in outputs(folder, name):
        assert path.is_file(), path
    depth = np.load(folder / f'{name}_depth.npy')
    assert depth.shape == (height, width)
    panel = cv2.imread(str(folder / f'{name}_preview.png'))[BANNER_ROWS:BANNER_ROWS + height,
                                                             :width]
    np.testing.assert_array_equal(panel, expected)
    cloud = read_ply(folder / f'{name}.ply')
    colours = np.stack([cloud['blue'], cloud['green'], cloud['red']], axis=-1)
    np.testing.assert_array_equal(colours, expected.reshape(-1, 3))


def assert_one_line_refusal(err: str, command: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f'depthclip-ros {command}: '), err
    assert 'Traceback' not in err


def run_process(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE='1')
    return subprocess.run([sys.executable, '-m', 'depthclip_ros.tools.cli', *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)


def infer_args(*inputs, output, camera=('--hfov-deg', '60'), extra=()):
    return ['infer', *map(str, inputs), *camera, '--output', str(output), *FAST, *extra]


# ---------------------------------------------------------------------------------------
# 1. every input gets its own outputs


def test_same_stem_different_suffix_get_their_own_outputs(tmp_path, capsys, engine_loads):
    folder = tmp_path / 'in'
    png = write_image(folder / 'a.png', image(1))
    jpg = write_image(folder / 'a.jpg', image(2, 40, 48))
    out = tmp_path / 'out'
    assert main(infer_args(folder, output=out)) == 0
    text = capsys.readouterr().out
    assert_outputs_of(out, 'a.png', png)
    assert_outputs_of(out, 'a.jpg', jpg)
    assert not (out / 'a_depth.npy').exists()
    assert f'{png} -> a.png_*' in text and f'{jpg} -> a.jpg_*' in text
    assert '2 written, 0 failed' in text


def test_same_file_name_in_two_folders(tmp_path, capsys, engine_loads):
    first = write_image(tmp_path / 'd1' / 'frame.png', image(3))
    second = write_image(tmp_path / 'd2' / 'frame.png', image(4, 30, 44))
    out = tmp_path / 'out'
    assert main(infer_args(first, second, output=out)) == 0
    text = capsys.readouterr().out
    assert_outputs_of(out, 'd1_frame', first)
    assert_outputs_of(out, 'd2_frame', second)
    assert f'{first} -> d1_frame_*' in text and f'{second} -> d2_frame_*' in text
    assert sorted(p.name for p in out.iterdir()) == sorted(
        p.name for n in ('d1_frame', 'd2_frame') for p in outputs(out, n))


def test_video_frames_and_an_image_named_like_a_frame(tmp_path, capsys, engine_loads):
    video = write_video(tmp_path / 'v.avi', (30, 220))
    still = write_image(tmp_path / 'v_000000.png', image(5))
    out = tmp_path / 'out'
    assert main(infer_args(video, still, output=out)) == 0
    text = capsys.readouterr().out
    assert_outputs_of(out, 'v_000000.png', still)
    for index, level in enumerate((30, 220)):
        name = f'v.avi_{index:06d}'
        assert all(p.is_file() for p in outputs(out, name))
        panel = cv2.imread(str(out / f'{name}_preview.png'))[BANNER_ROWS:BANNER_ROWS + 48, :64]
        assert abs(float(panel.mean()) - level) < 12  # this frame, not the other input
    assert not (out / 'v_000000_depth.npy').exists()
    assert f'{video} -> v.avi_NNNNNN_*' in text
    assert '3 written, 0 failed' in text


def test_the_same_file_given_twice_is_processed_once(tmp_path, capsys, engine_loads):
    folder = tmp_path / 'in'
    path = write_image(folder / 'a.png', image(6))
    link = tmp_path / 'link.png'
    link.symlink_to(path)
    out = tmp_path / 'out'
    assert main(infer_args(path, folder, link, output=out)) == 0
    text = capsys.readouterr().out
    assert text.count('the same file as') == 2
    assert_outputs_of(out, 'a', path)  # its stem is still unique: kept
    assert sorted(out.iterdir()) == sorted(outputs(out, 'a'))
    assert '1 written, 0 failed' in text


def test_unique_stems_keep_their_names_and_nothing_is_announced(tmp_path, capsys,
                                                                 engine_loads):
    a = write_image(tmp_path / 'x' / 'a.png', image(7))
    b = write_image(tmp_path / 'y' / 'b.jpg', image(8))
    out = tmp_path / 'out'
    assert main(infer_args(a, b, output=out)) == 0
    text = capsys.readouterr().out
    assert 'output names' not in text
    assert_outputs_of(out, 'a', a)
    assert_outputs_of(out, 'b', b)


def test_an_input_in_the_output_folder_is_never_overwritten(tmp_path, capsys,
                                                            engine_loads):
    folder = tmp_path / 'work'
    stem_clash = write_image(folder / 'x_depth.png', image(9))  # what 'x' would write
    x = write_image(folder / 'x.png', image(10))
    before = stem_clash.read_bytes()
    assert main(infer_args(folder, output=folder)) == 0
    capsys.readouterr()
    assert stem_clash.read_bytes() == before
    assert_outputs_of(folder, 'x.png', x)
    assert_outputs_of(folder, 'x_depth', stem_clash)


def test_names_are_decided_before_anything_is_written(tmp_path, capsys, monkeypatch,
                                                      engine_loads):
    """A clash found only at the second input would be too late: the mapping is printed
    before the first output exists."""
    write_image(tmp_path / 'd1' / 'f.png', image(11))
    write_image(tmp_path / 'd2' / 'f.png', image(12))
    out = tmp_path / 'out'
    seen = []
    real = infer.write_outputs

    def spy(output, name, *rest):
        seen.append((name, capsys.readouterr().out))
        return real(output, name, *rest)

    monkeypatch.setattr(infer, 'write_outputs', spy)
    assert main(infer_args(tmp_path / 'd1' / 'f.png', tmp_path / 'd2', output=out)) == 0
    assert [name for name, _ in seen] == ['d1_f', 'd2_f']
    assert '-> d1_f_*' in seen[0][1] and '-> d2_f_*' in seen[0][1]


SEGMENT = st.sampled_from(['a', 'A', 'b', 'v', 'v_000000', 'v_000001', 'x_depth', 'a.png'])
SUFFIX = st.sampled_from(['.png', '.PNG', '.jpg', '.avi', '.mp4'])
REL_PATH = st.tuples(st.lists(st.sampled_from(['d1', 'D1', 'd2', 'e']), max_size=2),
                     SEGMENT, SUFFIX).map(lambda t: Path(*t[0], t[1] + t[2]))


def claimed_names(source) -> set[str]:
    """Output files of a planned input, case-folded; a video's for its first frames and
    for a 7-digit frame number."""
    if source.video:
        names = [f'{source.name}_{i:06d}' for i in (0, 1, 999999, 1000000)]
    else:
        names = [source.name]
    return {(n + s).casefold() for n in names for s in OUTPUT_SUFFIXES}


@settings(max_examples=300, deadline=None)
@given(st.lists(REL_PATH, min_size=1, max_size=7))
def test_planned_outputs_never_overlap(paths):
    """Any mix of inputs (same stems, case-only differences, suffixes, video-frame-like
    names, the same path twice): distinct inputs claim disjoint output files, a stem that
    no other input shares is kept, and the names do not depend on the input order."""
    base = Path('/nonexistent-input-root')
    paths = [base / p for p in paths]
    plan = plan_outputs(paths, Path('/nonexistent-output'))
    assert [s.path for s in plan.sources] == list(dict.fromkeys(paths))
    claims = [claimed_names(s) for s in plan.sources]
    for i in range(len(claims)):
        for j in range(i + 1, len(claims)):
            assert not claims[i] & claims[j], (plan.sources[i], plan.sources[j])
    for source in plan.sources:
        stem = source.path.stem.casefold()
        if not source.video and not any(
                s is not source and (s.path.stem.casefold() == stem or (
                    s.video and stem.startswith(s.path.stem.casefold() + '_')))
                for s in plan.sources):
            assert source.name == source.path.stem and not source.renamed
    if not any('-' in s.name for s in plan.sources):  # the position fallback aside
        again = plan_outputs(list(reversed(paths)), Path('/nonexistent-output'))
        assert {s.path: s.name for s in again.sources} == \
            {s.path: s.name for s in plan.sources}


# ---------------------------------------------------------------------------------------
# 1b. an unreadable input is reported and skipped


def test_unreadable_files_are_reported_and_skipped(tmp_path, capsys, engine_loads):
    folder = tmp_path / 'in'
    good = [write_image(folder / f'good{i}.png', image(20 + i, 30, 30)) for i in range(2)]
    truncated = folder / 'truncated.png'
    whole = cv2.imencode('.png', image(30, 30, 30))[1].tobytes()
    truncated.write_bytes(whole[:len(whole) // 2])
    (folder / 'text.jpg').write_text('not a picture')
    write_image(folder / 'large.png', image(31, 40, 40))  # 1600 px > 1024
    (folder / 'empty.bmp').write_bytes(b'')
    out = tmp_path / 'out'
    code = main(infer_args(folder, output=out, extra=['--max-input-pixels', '1024']))
    captured = capsys.readouterr()
    assert code == 1
    problems = [line for line in captured.err.splitlines()
                if line.startswith('depthclip-ros infer: skipped ')]
    assert len(problems) == 4
    for name in ('truncated.png', 'text.jpg', 'large.png', 'empty.bmp'):
        assert sum(str(folder / name) in line for line in problems) == 1, name
        assert not any(out.glob(Path(name).stem + '*'))
    assert 'max_input_pixels' in next(line for line in problems if 'large.png' in line)
    assert 'Traceback' not in captured.err
    for path in good:
        assert_outputs_of(out, path.stem, path)
    assert captured.out.strip().splitlines()[-1].startswith('2 written, 4 failed')


def test_a_failed_write_leaves_none_of_that_input_s_files(tmp_path, capsys, monkeypatch,
                                                          engine_loads):
    a = write_image(tmp_path / 'in' / 'a.png', image(40))
    write_image(tmp_path / 'in' / 'b.png', image(41))
    fill_disk_at(monkeypatch, infer, 'write_ply', 'b.ply')
    out = tmp_path / 'out'
    assert main(infer_args(tmp_path / 'in', output=out)) == 1
    captured = capsys.readouterr()
    assert 'skipped' in captured.err and 'No space left' in captured.err
    assert_outputs_of(out, 'a', a)
    assert not any(p.exists() for p in outputs(out, 'b'))
    assert not any(p.name.startswith('.') for p in out.iterdir())  # no temporary left
    assert '1 written, 1 failed' in captured.out


def test_unreadable_files_in_a_real_run(tmp_path):
    """The command as its own process, the real model loader: each bad file is one line
    on stderr (FFmpeg's own complaint about the fake video kept quiet), the good one is
    written, exit status 1."""
    folder = tmp_path / 'in'
    good = write_image(folder / 'good.png', image(50))
    (folder / 'bad.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'\0' * 40)
    fake_video = tmp_path / 'fake.mp4'
    fake_video.write_text('not a video')
    out = tmp_path / 'out'
    result = run_process(*infer_args(folder, fake_video, output=out))
    assert result.returncode == 1, result.stderr
    assert 'Traceback' not in result.stderr and 'moov' not in result.stderr
    skipped = [line for line in result.stderr.splitlines()
               if line.startswith('depthclip-ros infer: skipped ')]
    assert len(skipped) == 2
    assert any('bad.png' in line for line in skipped)
    assert any('fake.mp4' in line for line in skipped)
    assert_outputs_of(out, 'good', good)
    assert result.stdout.strip().splitlines()[-1].startswith('1 written, 2 failed')


# ---------------------------------------------------------------------------------------
# 2. bounded work


def test_read_rgb_refuses_from_the_header_before_decoding(tmp_path, monkeypatch):
    path = write_image(tmp_path / 'big.png', image(60, 64, 64))
    monkeypatch.setattr(cv2, 'imread', lambda *a: pytest.fail('decoded'))
    with pytest.raises(ImageFormatError, match='max_input_pixels'):
        read_rgb(path, max_pixels=64 * 64 - 1)


def test_read_rgb_refuses_what_it_cannot_use(tmp_path):
    cv2.imwrite(str(tmp_path / 'float.tiff'), np.zeros((4, 5), np.float32))
    cv2.imwrite(str(tmp_path / 'signed.tiff'), np.zeros((4, 5), np.int16))
    (tmp_path / 'nothing.png').write_bytes(b'')
    for name in ('float.tiff', 'signed.tiff', 'nothing.png', 'absent.png'):
        with pytest.raises(ValueError) as error:
            read_rgb(tmp_path / name)
        assert name in str(error.value) and '\n' not in str(error.value)


def test_video_frames_are_bounded_by_the_declared_size(tmp_path, capsys, monkeypatch,
                                                       engine_loads):
    video = write_video(tmp_path / 'clip.avi', (50, 100, 150))  # 64x48 = 3072 px
    reads = []
    real = cv2.VideoCapture

    class Counting:
        def __init__(self, *args):
            self.capture = real(*args)

        def read(self):
            reads.append(1)
            return self.capture.read()

        def __getattr__(self, name):
            return getattr(self.capture, name)

    monkeypatch.setattr(cv2, 'VideoCapture', Counting)
    out = tmp_path / 'out'
    assert main(infer_args(video, output=out, extra=['--max-input-pixels', '3071'])) == 1
    captured = capsys.readouterr()
    assert reads == []  # refused from the capture's declared size, no frame decoded
    assert 'max_input_pixels' in captured.err and str(video) in captured.err
    assert not out.exists() or not any(out.iterdir())
    assert '0 written, 1 failed' in captured.out
    reads.clear()
    assert main(infer_args(video, output=out, extra=['--max-input-pixels', '3072'])) == 0
    assert len(reads) == 4 and '3 written, 0 failed' in capsys.readouterr().out


def test_max_input_pixels_defaults_to_the_node_parameter():
    from depthclip_ros.tools.cli import build_parser
    args = build_parser('infer').parse_args(['infer', 'x.png', '--hfov-deg', '60', '-o', 'o'])
    assert args.max_input_pixels == DEFAULT_MAX_INPUT_PIXELS


# ---------------------------------------------------------------------------------------
# 3. options, inputs and output paths refused up front


BAD_INFER_OPTIONS = [
    (['--temperature', '1e-300'], 'temperature'),
    (['--input-size', '65', '96'], 'input_size'),
    (['--depth-bins-m', '1', '2'], 'bin'),
    (['--device', 'gpu'], 'device'),
    (['--intrinsics', 'nan', '100', '30', '20'], '--intrinsics'),
    (['--intrinsics', '100', '0', '30', '20'], '--intrinsics'),
    (['--intrinsics', '100', '100', 'inf', '20'], '--intrinsics'),
    (['--intrinsics', '-100', '100', '30', '20'], '--intrinsics'),
    (['--hfov-deg', '0'], '--hfov-deg'),
    (['--hfov-deg', '180'], '--hfov-deg'),
    (['--hfov-deg', '-10'], '--hfov-deg'),
    (['--hfov-deg', 'nan'], '--hfov-deg'),
    (['--hfov-deg', '5e-324'], '--hfov-deg'),
    (['--hfov-deg', '60', '--max-depth-m', '0'], '--max-depth-m'),
    (['--hfov-deg', '60', '--max-depth-m', 'inf'], '--max-depth-m'),
    (['--hfov-deg', '60', '--max-depth-m', 'nan'], '--max-depth-m'),
    (['--hfov-deg', '60', '--max-input-pixels', '10'], '--max-input-pixels'),
    (['--hfov-deg', '60', '--max-input-pixels', str(16384 * 16384 + 1)],
     '--max-input-pixels'),
]


@pytest.mark.parametrize(('options', 'named'), BAD_INFER_OPTIONS)
def test_infer_refuses_bad_options_before_loading(tmp_path, capsys, no_model, options,
                                                  named):
    source = write_image(tmp_path / 'a.png', image(70))
    out = tmp_path / 'out'
    camera = [] if '--intrinsics' in options or '--hfov-deg' in options \
        else ['--hfov-deg', '60']
    code = main(['infer', str(source), '--output', str(out), '--pretrained', 'none',
                 '--device', 'cpu', '--input-size', '64', '96', *camera, *options])
    err = capsys.readouterr().err
    assert code == 2
    assert_one_line_refusal(err, 'infer')
    assert named in err
    assert not out.exists()


@pytest.mark.skipif(__import__('torch').cuda.is_available(), reason='CUDA is here')
def test_infer_refuses_an_absent_device_before_loading(tmp_path, capsys, monkeypatch):
    """The device is known once torch is imported: after the line saying what loads, one
    line saying why not, exit status 2, and no network built."""
    from depthclip_ros.engine.depthclip import DepthCLIP
    monkeypatch.setattr(DepthCLIP, 'load', lambda self: pytest.fail('the model was built'))
    source = write_image(tmp_path / 'a.png', image(71))
    args = infer_args(source, output=tmp_path / 'out') + ['--device', 'cuda']
    assert main(args) == 2
    announcement, refusal = capsys.readouterr().err.strip().splitlines()
    assert announcement.startswith('infer: loading CLIP RN50 (random weights)')
    assert_one_line_refusal(refusal, 'infer')
    assert 'CUDA is not available' in refusal
    assert not (tmp_path / 'out').exists()


def _bad_paths(tmp_path):
    good = write_image(tmp_path / 'a.png', image(72))
    a_file = tmp_path / 'file.txt'
    a_file.write_text('x')
    (tmp_path / 'empty').mkdir()
    return {
        'no such input': ([tmp_path / 'missing.png'], tmp_path / 'out', 'no such file'),
        'a folder without images': ([tmp_path / 'empty'], tmp_path / 'out', 'holds no images'),
        'output is a file': ([good], a_file, 'is not a folder'),
        'output under a file': ([good], a_file / 'sub', 'is not a folder'),
    }


@pytest.mark.parametrize('case', ['no such input', 'a folder without images',
                                  'output is a file', 'output under a file'])
def test_infer_refuses_bad_paths_before_loading(tmp_path, capsys, no_model, case):
    inputs, out, reason = _bad_paths(tmp_path)[case]
    assert main(infer_args(*inputs, output=out)) == 2
    err = capsys.readouterr().err
    assert_one_line_refusal(err, 'infer')
    assert reason in err


@pytest.mark.skipif(os.geteuid() == 0, reason='root may write anywhere')
def test_infer_refuses_an_unwritable_output(tmp_path, capsys, no_model):
    good = write_image(tmp_path / 'a.png', image(73))
    locked = tmp_path / 'locked'
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(infer_args(good, output=locked / 'out')) == 2
    finally:
        locked.chmod(0o700)
    assert 'not writable' in capsys.readouterr().err


def test_refusals_as_a_process_end_in_one_line_and_status_2(tmp_path):
    a_file = tmp_path / 'file.txt'
    a_file.write_text('x')
    cases = [
        ['infer', str(tmp_path / 'missing.png'), '--hfov-deg', '60', '-o', str(tmp_path),
         *FAST],
        ['infer', str(a_file), '--intrinsics', '1', '1', '0', '0', '-o', str(a_file), *FAST],
        ['infer', str(a_file), '--hfov-deg', '60', '-o', str(tmp_path), *FAST,
         '--temperature', '1e-300'],
        ['evaluate', str(tmp_path / 'missing'), *FAST],
    ]
    for args in cases:
        result = run_process(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert_one_line_refusal(result.stderr, args[0])
        assert result.stdout == ''


FINITE_OR_NOT = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                          st.sampled_from([0.0, -0.0, 1e-300, 5e-324, 180.0, 179.999]))


def as_argument(value: float) -> str:
    """A float as a command-line word that reads back exactly (argparse takes '-0.00001'
    as a value but '-1e-05' as an option)."""
    return np.format_float_positional(value, trim='0') if math.isfinite(value) else repr(value)


def widest_focal_is_finite(hfov: float) -> bool:
    try:
        return math.isfinite(0.5 * 16384 / math.tan(math.radians(hfov) / 2))
    except (ZeroDivisionError, OverflowError):
        return False


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(intrinsics=st.none() | st.lists(FINITE_OR_NOT, min_size=4, max_size=4),
       hfov=FINITE_OR_NOT, max_depth=FINITE_OR_NOT,
       max_pixels=st.integers(-10, 2 ** 29) | st.sampled_from([1023, 1024, 16384 ** 2]))
def test_infer_option_values_are_accepted_exactly_when_valid(
        tmp_path_factory, monkeypatch, intrinsics, hfov, max_depth, max_pixels):
    """Whatever the numbers: refused with status 2 and one line before the model loads,
    or accepted (the model is loaded); accepted exactly when every value is in range."""
    folder = tmp_path_factory.getbasetemp() / 'option-values'
    source = folder / 'a.png'
    if not source.exists():
        write_image(source, image(74, 8, 8))

    class Loaded(Exception):
        pass

    def load(args):
        raise Loaded

    monkeypatch.setattr(infer, 'load_engine', load)
    camera = ['--intrinsics', *map(as_argument, intrinsics)] if intrinsics is not None \
        else [f'--hfov-deg={as_argument(hfov)}']
    args = ['infer', str(source), *camera, '--output', str(folder / 'out'),
            f'--max-depth-m={as_argument(max_depth)}', f'--max-input-pixels={max_pixels}',
            *FAST]
    if intrinsics is not None:
        camera_ok = all(math.isfinite(v) for v in intrinsics) and \
            intrinsics[0] > 0 and intrinsics[1] > 0
    else:
        camera_ok = 0 < hfov < 180 and widest_focal_is_finite(hfov)
    valid = camera_ok and math.isfinite(max_depth) and max_depth > 0 and \
        1024 <= max_pixels <= 16384 ** 2
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(args)
        except Loaded:
            code = 'loaded'
        except SystemExit as stop:  # argparse: '-inf' among --intrinsics reads as an option
            assert stop.code == 2 and '-inf' in camera, err.getvalue()
            code = 'argparse'
    if valid:
        assert code == 'loaded', err.getvalue()
    elif code != 'argparse':
        assert code == 2
        assert_one_line_refusal(err.getvalue(), 'infer')
    assert not (folder / 'out').exists()


# ---------------------------------------------------------------------------------------
# evaluate


def make_dataset(root: Path, frames: int = 3, size=(48, 64), info=None) -> Path:
    height, width = size
    (root / 'rgb').mkdir(parents=True)
    (root / 'depth').mkdir()
    info = info if info is not None else {'fx': 60.0, 'fy': 60.0, 'cx': 31.5, 'cy': 23.5,
                                          'width': width, 'height': height,
                                          'depth_unit_m': 0.001}
    (root / 'intrinsics.json').write_text(json.dumps(info))
    rng = np.random.default_rng(len(str(root)))
    for index in range(frames):
        write_image(root / 'rgb' / f'{index:04d}.png', image(100 + index, height, width))
        depth = rng.integers(500, 5000, (height, width)).astype(np.uint16)
        assert cv2.imwrite(str(root / 'depth' / f'{index:04d}.png'), depth)
    return root


def break_intrinsics(text: str):
    def apply(root: Path):
        (root / 'intrinsics.json').write_text(text)
    return apply


GOOD_INFO = {'fx': 60.0, 'fy': 60.0, 'cx': 31.5, 'cy': 23.5, 'width': 64, 'height': 48}
BROKEN_DATASETS = {
    'intrinsics.json is not JSON': (break_intrinsics('{"fx": 60,'), 'not valid JSON'),
    'intrinsics.json is a list': (break_intrinsics('[1, 2]'), 'JSON object'),
    'fx missing': (break_intrinsics(json.dumps({k: v for k, v in GOOD_INFO.items()
                                                 if k != 'fx'})), '"fx"'),
    'fx a string': (break_intrinsics(json.dumps({**GOOD_INFO, 'fx': '60'})), '"fx"'),
    'negative focal': (break_intrinsics(json.dumps({**GOOD_INFO, 'fy': -1})), 'focal'),
    'width zero': (break_intrinsics(json.dumps({**GOOD_INFO, 'width': 0})), '"width"'),
    'width huge': (break_intrinsics(json.dumps({**GOOD_INFO, 'width': 10 ** 9})), '"width"'),
    'depth unit zero': (break_intrinsics(json.dumps({**GOOD_INFO, 'depth_unit_m': 0})),
                        'depth_unit_m'),
    'intrinsics.json unreadable bytes': (
        lambda root: (root / 'intrinsics.json').write_bytes(b'\xff\xfe\x00'), 'intrinsics'),
    'no rgb folder': (lambda root: [p.unlink() for p in (root / 'rgb').iterdir()]
                      and (root / 'rgb').rmdir(), 'no rgb/'),
    'no depth folder': (lambda root: [p.unlink() for p in (root / 'depth').iterdir()]
                        and (root / 'depth').rmdir(), 'no depth/'),
    'no pairs': (lambda root: [p.rename(p.with_name('x' + p.name))
                               for p in (root / 'depth').iterdir()], 'no rgb/ + depth/'),
}


@pytest.mark.parametrize('case', sorted(BROKEN_DATASETS))
def test_evaluate_refuses_a_broken_dataset_before_loading(tmp_path, capsys, no_model, case):
    breaker, reason = BROKEN_DATASETS[case]
    root = make_dataset(tmp_path / 'ds')
    breaker(root)
    assert main(['evaluate', str(root), *FAST]) == 2
    err = capsys.readouterr().err
    assert_one_line_refusal(err, 'evaluate')
    assert reason in err


@pytest.mark.parametrize('case', ['missing folder', 'a file', 'no dataset inside',
                                  'json is a folder', 'json folder missing', 'bad option',
                                  'bad max depth'])
def test_evaluate_refuses_bad_paths_and_options_before_loading(tmp_path, capsys, no_model,
                                                               case):
    good = make_dataset(tmp_path / 'ds')
    (tmp_path / 'plain').mkdir()
    args = {
        'missing folder': [str(good), str(tmp_path / 'nope')],
        'a file': [str(good / 'intrinsics.json')],
        'no dataset inside': [str(tmp_path / 'plain')],
        'json is a folder': [str(good), '--json', str(tmp_path / 'plain')],
        'json folder missing': [str(good), '--json', str(tmp_path / 'no' / 'r.json')],
        'bad option': [str(good), '--temperature', 'nan'],
        'bad max depth': [str(good), '--max-depth-m', '-3'],
    }[case]
    assert main(['evaluate', *args, *FAST]) == 2
    assert_one_line_refusal(capsys.readouterr().err, 'evaluate')


def test_evaluate_skips_bad_frames_and_says_so(tmp_path, capsys, engine_loads):
    root = make_dataset(tmp_path / 'ds', frames=5)
    (root / 'rgb' / '0001.png').write_bytes(b'\x89PNG\r\n\x1a\n garbage')  # corrupt
    write_image(root / 'rgb' / '0002.png', image(9, 40, 64))  # wrong size
    (root / 'depth' / '0003.png').write_text('nope')  # corrupt depth
    write_image(root / 'rgb' / '0009.png', image(9, 48, 64))  # no depth: noted
    out = tmp_path / 'r.json'
    assert main(['evaluate', str(root), '--json', str(out), *FAST]) == 1
    captured = capsys.readouterr()
    assert 'Traceback' not in captured.err
    skipped = [line for line in captured.err.splitlines()
               if line.startswith('depthclip-ros evaluate: skipped ')]
    assert len(skipped) == 3
    for name in ('0001.png', '0002.png', '0003'):
        assert sum(name in line for line in skipped) == 1
    assert '40' in next(line for line in skipped if '0002' in line)
    assert '1 rgb image(s) without a depth file' in captured.out
    assert '2 frames (3 skipped)' in captured.out
    assert captured.out.strip().splitlines()[-1] == '2 frame(s) evaluated, 3 skipped'
    results = json.loads(out.read_text())['datasets']['ds']
    assert results['frames'] == 2
    assert [f['frame'] for f in results['per_frame']] == ['0000', '0004']
    assert [s['frame'] for s in results['skipped']] == ['0001', '0002', '0003']


def test_evaluate_clean_run_exits_0_and_keeps_same_named_datasets_apart(tmp_path, capsys,
                                                                       engine_loads):
    first = make_dataset(tmp_path / 'a' / 'cam', frames=1)
    second = make_dataset(tmp_path / 'b' / 'cam', frames=2)
    out = tmp_path / 'r.json'
    assert main(['evaluate', str(first), str(second), str(first), '--json', str(out),
                 *FAST]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1] == '3 frame(s) evaluated, 0 skipped'
    results = json.loads(out.read_text())['datasets']
    assert {k: v['frames'] for k, v in results.items()} == {str(first): 1, str(second): 2}
    assert len(engine_loads) == 1


def test_evaluate_a_frame_without_ground_truth_in_range_is_skipped(tmp_path, capsys,
                                                                   engine_loads):
    root = make_dataset(tmp_path / 'ds', frames=2)
    assert cv2.imwrite(str(root / 'depth' / '0000.png'), np.zeros((48, 64), np.uint16))
    np.save(root / 'depth' / '0001.npy', np.full((48, 64), np.nan, np.float32))
    assert main(['evaluate', str(root), *FAST]) == 1
    captured = capsys.readouterr()
    assert captured.err.count('no ground truth in range') == 2
    assert 'no frame of ds could be evaluated' in captured.out


def test_rgbd_folder_checks_rgb_size_from_its_header(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / 'ds', frames=1)
    write_image(root / 'rgb' / '0000.png', image(1, 480, 64))
    folder = RGBDFolder(root)
    monkeypatch.setattr(cv2, 'imread', lambda *a: pytest.fail('decoded'))
    with pytest.raises(DatasetError, match='64x480'):
        folder.frame(0)


def test_rgbd_folder_checks_depth_size_from_its_header(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / 'ds', frames=1)
    assert cv2.imwrite(str(root / 'depth' / '0000.png'), np.ones((96, 64), np.uint16))
    folder = RGBDFolder(root)
    monkeypatch.setattr(cv2, 'imread', lambda *a: pytest.fail('decoded'))
    monkeypatch.setattr(dataset, 'read_rgb', lambda *a: np.zeros((48, 64, 3), np.uint8))
    with pytest.raises(DatasetError, match='64x96'):
        folder.frame(0)


def test_writers_leave_no_partial_file(tmp_path, monkeypatch):
    with pytest.raises(OSError):
        write_rgb_png(tmp_path / 'missing' / 'x.png', np.zeros((4, 4, 3), np.uint8))
    target = tmp_path / 'x.png'
    target.write_bytes(b'previous')

    def half_written(path, image):
        Path(path).write_bytes(b'\x89PNG half')
        raise cv2.error('disk gone')

    monkeypatch.setattr(cv2, 'imwrite', half_written)
    with pytest.raises(OSError, match='disk gone'):
        write_rgb_png(target, np.zeros((4, 4, 3), np.uint8))
    assert target.read_bytes() == b'previous'
    assert sorted(tmp_path.iterdir()) == [target]

"""No long silence: a tool says what it loads before the slow imports start, and loops over
images, frames or steps show counts (done/total), a rate and an ETA: a tqdm bar on a
terminal, a plain line every few seconds otherwise (CPU, random weights)."""

import io
import json
import os
from pathlib import Path
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from depthclip_ros.tools import evaluate, infer, locate, progress
from depthclip_ros.tools.cli import main
from depthclip_ros.tools.progress import Progress, Stages

from conftest import small_engine_for_tools

REPO = Path(__file__).resolve().parents[1]
FAST = ['--pretrained', 'none', '--device', 'cpu', '--input-size', '64', '96']


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(progress.time, 'perf_counter', fake)
    return fake


@pytest.fixture
def tool_engine(monkeypatch, small_engine):
    restore = small_engine_for_tools(monkeypatch, small_engine, infer, locate, evaluate)
    yield small_engine
    restore()


def write_image(path: Path, seed: int, size=(36, 52)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), bgr)
    return path


# ---------------------------------------------------------------------------------------
# the progress lines themselves


def test_plain_lines_come_first_every_few_seconds_and_last(clock):
    out = io.StringIO()
    bar = Progress('infer', 'image', 10, stream=out)
    for done in range(1, 11):
        clock.now += 1.5  # 1.5 s per image
        bar.update(done)
    lines = out.getvalue().splitlines()
    # the first, then one at least PLAIN_EVERY_S after the one before, and the last
    assert [re.match(r'infer: image (\d+)/10 ', line).group(1) for line in lines] == \
        ['1', '5', '9', '10']
    assert lines[0] == 'infer: image 1/10 (0.67 images/s, ETA 14 s)'
    assert lines[-1] == 'infer: image 10/10 (0.67 images/s)'  # nothing left: no ETA


def test_an_unknown_total_still_counts_and_a_restart_resets_the_rate(clock):
    out = io.StringIO()
    bar = Progress('bag', 'frame', stream=out)
    clock.now += 30.0  # the model loading: not part of the rate
    bar.restart()
    clock.now += 2.0
    bar.update(4)
    assert out.getvalue() == 'bag: frame 4 (2.00 frames/s)\n'


def test_a_terminal_gets_a_tqdm_bar_and_lines_go_above_it(capsys):
    screen = Terminal()
    with Progress('evaluate', 'frame', 4, stream=screen) as bar:
        bar.step()
        bar.step()
        bar.write('a result line')
    text = screen.getvalue()
    assert 'evaluate' in text and '2/4' in text and 'frame/s' in text and '<' in text
    assert capsys.readouterr().out == 'a result line\n'


def test_stages_count_and_time_each_step(clock):
    out = io.StringIO()
    stages = Stages('locate', 3, stream=out)
    stages.start('depth')
    clock.now += 2.5
    stages.start('candidate masks')
    clock.now += 1.0
    stages.start('scoring')
    clock.now += 4.0
    stages.finish()
    assert out.getvalue().splitlines() == [
        'locate: [1/3] depth...', 'locate: [2/3] candidate masks... (depth took 2.5 s)',
        'locate: [3/3] scoring... (candidate masks took 1.0 s)', 'locate: scoring took 4.0 s']


# ---------------------------------------------------------------------------------------
# the tools


def test_the_first_line_comes_before_torch_is_imported(tmp_path):
    """A real run as its own process: the line saying what loads (and how long it takes)
    is written before torch starts importing (the slow part), then the model is ready,
    then the images are counted."""
    for index in range(3):
        write_image(tmp_path / 'in' / f'{index}.png', index)
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE='1')
    done = subprocess.run(
        [sys.executable, '-X', 'importtime', '-m', 'depthclip_ros.tools.cli', 'infer',
         str(tmp_path / 'in'), '--hfov-deg', '60', '-o', str(tmp_path / 'out'), *FAST],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stderr.splitlines()

    def first(predicate) -> int:
        return next(i for i, line in enumerate(lines) if predicate(line))

    announced = first(lambda line: line.startswith('infer: loading CLIP RN50 (random weights) '
                                                   'on the CPU'))
    assert 'usually' in lines[announced] and ' s' in lines[announced]
    torch = first(lambda line: line.startswith('import time:')  # its first submodule
                  and line.rsplit('|', 1)[1].strip().split('.')[0] == 'torch')
    ready = first(lambda line: line.startswith('infer: model ready in '))
    counts = [line for line in lines if line.startswith('infer: image ')]
    assert announced < torch < ready < lines.index(counts[0])
    assert counts[0].startswith('infer: image 1/3 (') and counts[-1].startswith(
        'infer: image 3/3 (')


def test_infer_counts_the_frames_of_a_video_too(tmp_path, capsys, tool_engine):
    video = tmp_path / 'clip.avi'
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*'MJPG'), 10, (64, 48))
    for level in (40, 120, 200):
        writer.write(np.full((48, 64, 3), level, np.uint8))
    writer.release()
    image = write_image(tmp_path / 'b.png', 3)
    assert main(['infer', str(video), str(image), '--hfov-deg', '60', '-o',
                 str(tmp_path / 'out'), *FAST]) == 0
    captured = capsys.readouterr()
    counts = [line for line in captured.err.splitlines() if line.startswith('infer: image')]
    assert counts[0].startswith('infer: image 1/4 (') and counts[-1].startswith(
        'infer: image 4/4 (')
    assert 'b: 52x36' in captured.out  # the per-image lines stay on stdout


def test_evaluate_counts_the_frames_of_each_dataset(tmp_path, capsys, tool_engine):
    for name, frames in (('first', 3), ('second', 2)):
        root = tmp_path / name
        (root / 'depth').mkdir(parents=True)
        for index in range(frames):
            write_image(root / 'rgb' / f'{index}.png', index, (48, 64))
            cv2.imwrite(str(root / 'depth' / f'{index}.png'), np.full((48, 64), 2000, np.uint16))
        (root / 'intrinsics.json').write_text(json.dumps(
            {'fx': 60, 'fy': 60, 'cx': 32, 'cy': 24, 'width': 64, 'height': 48}))
    assert main(['evaluate', str(tmp_path), *FAST]) == 0
    captured = capsys.readouterr()
    assert '2 dataset(s), 5 frames to evaluate' in captured.out
    err = captured.err.splitlines()
    assert 'evaluate first: frame 1/3 (' in err[0] and err[0].endswith(' s)')
    assert any(line.startswith('evaluate first: frame 3/3 (') for line in err)
    assert any(line.startswith('evaluate second: frame 2/2 (') for line in err)


def test_locate_says_each_step_as_it_starts(tmp_path, capsys, tool_engine):
    image = write_image(tmp_path / 'scene.png', 5, (48, 64))
    assert main(['locate', str(image), '--query', 'a box', '--intrinsics', '60', '60', '32',
                 '24', '--output', str(tmp_path / 'out'), *FAST]) == 0
    steps = [line for line in capsys.readouterr().err.splitlines()
             if line.startswith('locate: ')]
    assert [re.match(r'locate: (\[\d/3\]|\w+)', s).group(1) for s in steps] == [
        '[1/3]', '[2/3]', '[3/3]', 'scoring']
    assert 'depth of the 64x48 image' in steps[0]
    assert 'built-in proposals' in steps[1] and 'took' in steps[1]
    assert '1 query' in steps[2] and steps[3].endswith(' s')


def test_bag_says_it_is_starting_before_torch_is_imported(tmp_path):
    """bag's imports (torch, rosbags, ROS 2) take seconds: its first line comes before."""
    source = tmp_path / 'in.mcap'
    source.write_bytes(b'not a bag')  # refused after the imports: the run stays short
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE='1', PYTHONUNBUFFERED='1')
    done = subprocess.run(
        [sys.executable, '-X', 'importtime', '-m', 'depthclip_ros.tools.cli', 'bag',
         str(source), str(tmp_path / 'out'), *FAST], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    lines = done.stdout.splitlines()
    said = next(i for i, line in enumerate(lines) if line.startswith('bag: '))
    torch = next(i for i, line in enumerate(lines) if line.startswith('import time:')
                 and line.rsplit('|', 1)[1].strip().split('.')[0] == 'torch')
    assert said < torch and 'starting' in lines[said], lines[said]

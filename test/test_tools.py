"""The command-line tools end to end (CPU, random weights: in this process the tests' tiny
model; the processes of ``run_cli``, started as a user starts them, RN50)."""

import json
import os
from pathlib import Path
import re
import socket
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from rosbags.highlevel import AnyReader

from depthclip_ros.engine.config import RANDOM_WEIGHTS_BANNER
from depthclip_ros.io.visualize import read_ply
from depthclip_ros.tools.cli import main
from depthclip_ros.tools.demo import render_corridor

from conftest import shared_data, TINY_MODEL

FAST = ['--model', TINY_MODEL, '--pretrained', 'none', '--device', 'cpu']
pytestmark = pytest.mark.usefixtures('tiny_model')  # FAST's model, in this process
REPO = Path(__file__).resolve().parents[1]


def test_evaluate_runs_the_nyu_protocol_on_real_frames(tmp_path, capsys):
    folder = shared_data('nyu_v2_eigen_test_sg10')
    out = tmp_path / 'nyu.json'
    assert main(['evaluate', str(folder), '--json', str(out), *FAST]) == 0
    text = capsys.readouterr().out
    assert 'NYU (DepthCLIP crop, Eigen mask, 10 m)' in text
    assert 'DepthCLIP paper (654 frames)' in text and '0.394' in text
    assert 'RANDOM WEIGHTS' in text
    results = json.loads(out.read_text())
    data = results['datasets']['nyu_v2_eigen_test_sg10']
    assert data['frames'] == 10 and results['random_weights'] is True
    for name in ('d1', 'd2', 'd3', 'abs_rel', 'sq_rel', 'rmse', 'rmse_log', 'log10'):
        assert np.isfinite(data['mean'][name])
    assert 0.0 <= data['mean']['d1'] <= data['mean']['d2'] <= data['mean']['d3'] <= 1.0


def test_evaluate_other_cameras(tmp_path, capsys):
    folder = shared_data('realsense_d435_librealsense')
    assert main(['evaluate', str(folder), *FAST, '--input-size', '224', '288']) == 0
    assert 'whole image, GT <= 80 m' in capsys.readouterr().out


def test_infer_writes_depth_png_preview_and_ply(tmp_path, capsys):
    rgb = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    folder = tmp_path / 'images'
    folder.mkdir()
    cv2.imwrite(str(folder / 'a.png'), rgb)
    cv2.imwrite(str(folder / 'b.jpg'), rgb)
    out = tmp_path / 'out'
    assert main(['infer', str(folder), '--intrinsics', '150', '150', '80', '60',
                 '--output', str(out), *FAST, '--input-size', '96', '128']) == 0
    for stem in ('a', 'b'):
        depth = np.load(out / f'{stem}_depth.npy')
        assert depth.shape == (120, 160) and depth.dtype == np.float32
        png = cv2.imread(str(out / f'{stem}_depth.png'), cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint16
        np.testing.assert_allclose(png / 1000.0, depth, atol=6e-4)
        preview = cv2.imread(str(out / f'{stem}_preview.png'))
        assert preview.shape[1] > 2 * 160  # image | depth | colour bar
        cloud = read_ply(out / f'{stem}.ply')
        assert len(cloud) == 120 * 160
        np.testing.assert_allclose(np.sort(cloud['z']), np.sort(depth.ravel()), rtol=1e-6)
    assert 'RANDOM WEIGHTS' in capsys.readouterr().out


def test_infer_takes_a_video_frame_by_frame(tmp_path, capsys):
    video = tmp_path / 'clip.avi'
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*'MJPG'), 10, (64, 48))
    assert writer.isOpened()
    for level in (40, 120, 200):
        writer.write(np.full((48, 64, 3), level, np.uint8))
    writer.release()
    out = tmp_path / 'out'
    assert main(['infer', str(video), '--hfov-deg', '60', '--output', str(out), *FAST,
                 '--input-size', '64', '96']) == 0
    for index in range(3):
        depth = np.load(out / f'clip_{index:06d}_depth.npy')
        assert depth.shape == (48, 64) and np.isfinite(depth).all()
        assert (out / f'clip_{index:06d}_preview.png').is_file()


def test_infer_needs_intrinsics_or_fov(tmp_path):
    with pytest.raises(SystemExit):
        main(['infer', str(tmp_path), '--output', str(tmp_path), *FAST])


def test_bench_prints_every_stage_and_the_device(capsys):
    assert main(['bench', '--model', TINY_MODEL, '--device', 'cpu', '--warmup', '0',
                 '--repeat', '1', '--image-size', '120', '160', '--input-size', '96',
                 '128']) == 0
    text = capsys.readouterr().out
    for stage in ('preprocess', 'network', 'head', 'upsample', 'backproject', 'total'):
        assert f'\n{stage}' in text
    assert 'device: cpu' in text and 'everything but the network' in text


def test_bench_times_the_object_step_per_query(tmp_path, capsys):
    out = tmp_path / 'bench.json'
    assert main(['bench', '--model', TINY_MODEL, '--device', 'cpu', '--warmup', '0',
                 '--repeat', '1', '--image-size', '60', '80', '--input-size', '64', '96',
                 '--queries', '3', '--max-masks', '4', '--json', str(out)]) == 0
    text = capsys.readouterr().out
    for stage in ('proposals', 'referring', 'locate'):
        assert f'\n{stage}' in text
    assert '1q ms' in text and '3q ms' in text and 'per added query' in text
    assert re.search(r'referring with \d masks: .* GFLOP, need .* ms at the fp32 peak', text)
    import json
    document = json.loads(out.read_text())
    figures = document['objects_median_ms']
    assert set(figures) == {'1', '3'} and figures['3']['total'] > 0
    # the FLOPs, counted on the tiny model: its encoder on each crop, and the global features
    flops = document['referring_flops']
    assert 1 <= flops['masks'] <= 4 and flops['GFLOP'] > 0 and flops['peak_GFLOP/s'] > 0
    assert main(['bench', '--queries', '17']) == 2


def test_demo_without_weights_stops_with_instructions(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(['demo', '--output', str(tmp_path), '--pretrained', str(tmp_path / 'no.pt'),
              '--device', 'cpu'])
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert 'does not exist' in err and 'Supply weights' in err


def closing_lines(text: str) -> list[str]:
    """The demo's list of what it wrote: the lines under 'outputs of this run in'."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('outputs of this run in'))
    rest = lines[start + 1:]
    return rest[:next((i for i, line in enumerate(rest) if not line.startswith('  ')),
                      len(rest))]


def test_demo_on_the_generated_scene(tmp_path, capsys):
    args = ['demo', '--output', str(tmp_path), *FAST, '--input-size', '64', '96',
            '--frames', '3']
    assert main(args) == 0
    captured = capsys.readouterr()
    text = captured.out
    # every step said as it starts, the recording's frames counted
    steps = [line for line in captured.err.splitlines() if line.startswith('demo: [')]
    assert [line[:11] for line in steps] == ['demo: [1/3]', 'demo: [2/3]', 'demo: [3/3]']
    assert 'bag: frame 3/3' in captured.err
    # the closing list: what was written, all of it, the uncertainty included
    listed = closing_lines(text)
    named = {line.split()[0].rstrip('/') for line in listed}
    assert named == {p.name for p in tmp_path.iterdir()} - {'corridor_depth.png'}
    assert any('corridor_depth.png' in line for line in listed)
    assert 'corridor_uncertainty.npy' in named
    assert 'RANDOM WEIGHTS' in text and str(tmp_path) in text
    truth = np.load(tmp_path / 'corridor_truth_depth.npy')
    assert truth.shape == (480, 640) and 1.0 < truth.min() and truth.max() <= 9.0
    assert (tmp_path / 'corridor_preview.png').is_file() and (tmp_path / 'corridor.ply').is_file()
    sigma = np.load(tmp_path / 'corridor_uncertainty.npy')
    assert sigma.shape == (480, 640) and np.isfinite(sigma).all() and sigma.min() >= 0
    # the generated recording, processed like `depthclip-ros bag`, with viewing help
    assert 'done: 3 of 3 frames with depth' in text and 'Foxglove' in text
    with AnyReader([tmp_path / 'corridor_depth']) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
    assert counts == {'/camera/color/image_raw': 3, '/camera/color/camera_info': 3,
                      '/camera/color/depth/image': 3, '/camera/color/depth/camera_info': 3,
                      '/camera/color/points': 3, '/camera/color/depth/colormap': 3}
    capsys.readouterr()
    assert main(args) == 2  # a second run would replace the first one's files and bags...
    err = capsys.readouterr().err
    assert 'pass --overwrite' in err and 'corridor_camera' in err and 'corridor.ply' in err
    assert main([*args, '--overwrite']) == 0  # ...which --overwrite allows


def test_corridor_recording_moves_forward():
    _, near, _ = render_corridor(48, 64, forward_m=0.0)
    _, far, _ = render_corridor(48, 64, forward_m=2.0)
    assert near.max() == pytest.approx(9.0) and far.max() == pytest.approx(7.0)


def test_demo_takes_a_bag_with_one_argument_changed(tmp_path, capsys):
    source = shared_data('bags', 'realsense_d435_single_frame_ros2')
    assert main(['demo', '--input', str(source), '--output', str(tmp_path), *FAST,
                 '--input-size', '64', '96']) == 0
    text = capsys.readouterr().out
    assert 'done: 1 of 1 frames with depth' in text
    assert 'rviz2 -d' in text and '__ns:=/camera/color -r image:=image_raw' in text
    assert (tmp_path / 'realsense_d435_single_frame_ros2_depth' / 'metadata.yaml').is_file()
    # only the bag was written, and only the bag is listed
    assert [line.split()[0] for line in closing_lines(text)] == [
        'realsense_d435_single_frame_ros2_depth/']
    assert [p.name for p in tmp_path.iterdir()] == ['realsense_d435_single_frame_ros2_depth']
    assert 'Image panel on /camera/color/depth/colormap (or /camera/color/depth/image)' in text


def test_bench_bag_prints_both_timings_and_the_overhead(capsys):
    assert main(['bench-bag', '--frames', '2', '--image-size', '48', '64', *FAST,
                 '--input-size', '64', '64']) == 0
    text = capsys.readouterr().out
    assert 'device: cpu' in text and 'bare engine.predict' in text
    assert 'bag stages (ms/frame): read' in text and 'write' in text
    assert 'overhead of the bag around inference' in text


def test_demo_falls_back_to_labelled_random_weights(tmp_path, capsys):
    assert main(['demo', '--output', str(tmp_path), '--model', TINY_MODEL, '--pretrained',
                 str(tmp_path / 'no.pt'), '--fallback-random', '--device', 'cpu',
                 '--input-size', '224', '288']) == 0
    captured = capsys.readouterr()
    assert captured.err.count('Supply weights') == 1 and '--pretrained none' in captured.err
    assert '--fallback-random: going on with random weights' in captured.err
    assert captured.err.count(RANDOM_WEIGHTS_BANNER) == 1  # once, at load
    assert f'engine: {TINY_MODEL} (none)' in captured.out and 'RANDOM WEIGHTS' in captured.out


def run_cli(args, tmp_path, **env):
    """``python -m depthclip_ros.tools.cli ARGS`` from this source tree, with a Hugging Face cache
    of its own (empty), the hub endpoint a closed loopback port (no real hub is ever
    asked), and ``env`` on top: ``(return code, stdout, stderr, seconds)``."""
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    environment = {k: v for k, v in os.environ.items()
                   if k not in ('HF_HUB_OFFLINE', 'HF_HUB_CACHE', 'HUGGINGFACE_HUB_CACHE')}
    environment.update(HF_HOME=str(tmp_path / 'hf_home'),
                       HF_ENDPOINT=f'http://127.0.0.1:{port}', **env)
    started = time.monotonic()
    done = subprocess.run([sys.executable, '-m', 'depthclip_ros.tools.cli', *args], cwd=REPO,
                          env=environment, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout, done.stderr, time.monotonic() - started


def infer_args(tmp_path):
    image = tmp_path / 'a.png'
    cv2.imwrite(str(image), np.zeros((48, 64, 3), np.uint8))
    return ['infer', str(image), '--hfov-deg', '60', '--output', str(tmp_path / 'out'),
            '--device', 'cpu', '--input-size', '64', '64']


@pytest.mark.parametrize('offline', ['', '1'])
def test_uncached_weights_without_network_fail_in_seconds_saying_so_once(tmp_path, offline):
    """The default ``--pretrained openai`` where nothing is cached and the hub cannot be
    reached: one message with the problem and how to supply weights in the command's own
    syntax, no hub retries (they took about 50 s before failing)."""
    code, out, err, seconds = run_cli(infer_args(tmp_path), tmp_path, HF_HUB_OFFLINE=offline)
    text = out + err
    assert code == 1, text
    assert text.count('not in the local cache') == 1, text
    assert ('HF_HUB_OFFLINE=1' if offline else 'no network') in text
    assert text.count('Supply weights') == 1 and '--pretrained none' in text
    assert 'pretrained:=' not in text  # ROS syntax is for the node
    for chatter in ('Retrying', 'Failed to download', 'Traceback'):
        assert chatter not in text, text
    assert seconds < 40, seconds  # the start of python and torch included


def test_random_weights_are_announced_once_at_load(tmp_path):
    code, out, err, _ = run_cli([*infer_args(tmp_path), '--pretrained', 'none'], tmp_path)
    assert code == 0, out + err
    assert err.count(RANDOM_WEIGHTS_BANNER) == 1, err  # at load, on stderr
    assert out.count(RANDOM_WEIGHTS_BANNER) <= 1, out  # the reminder in the summary
    assert 'No pretrained weights loaded' not in out + err  # open_clip's own notice

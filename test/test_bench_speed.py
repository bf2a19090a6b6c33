"""``bench --batch N`` (one by one against one batched call), ``bench
--compare-precision`` (precisions and layouts side by side, the depth deviation against
fp32) and ``bench --compare-backends`` (torch, OpenVINO fp32 and INT8), on the CPU with
the tests' tiny random model and tiny sizes. Speed is measured, not asserted: these tests
check that the tables, ratios and reports are there and consistent."""

import json
from pathlib import Path
import re

import cv2
import numpy as np
import pytest

from depthclip_ros.engine import runtime as model
from depthclip_ros.tools.bench import speed as bench
from depthclip_ros.tools.bench.batch import BATCH_STAGES, bench_frames
from depthclip_ros.tools.bench.precision import plan_variants
from depthclip_ros.tools.cli import main
from depthclip_ros.tools.common import configs_from_args

from conftest import TINY_MODEL

TINY = ['--model', TINY_MODEL, '--pretrained', 'none', '--device', 'cpu', '--warmup', '0',
        '--repeat', '1', '--input-size', '64', '96']
pytestmark = pytest.mark.usefixtures('tiny_model')  # TINY's model, in this process
H, W = 30, 40


@pytest.fixture
def tool_engine(monkeypatch, small_engine):
    """``bench`` loads the session's small engine with its options' head."""
    before = small_engine.head

    def load(args):
        small_engine.set_head(configs_from_args(args)[1])
        return small_engine

    monkeypatch.setattr(bench, 'load_engine', load)
    yield small_engine
    small_engine.set_head(before)


def write_image(path: Path, seed: int, size=(H, W)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), bgr)
    return path


def table(text: str, header: str) -> dict[str, list[str]]:
    """The rows (first word -> the other words) of the table whose header starts with
    ``header``, up to the first line that is not a row of it."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    columns = len(lines[start].split())
    rows = {}
    for line in lines[start + 1:]:
        words = line.split()
        if len(words) < columns or words[0] in rows:
            break
        rows[words[0]] = words[1:]
    return rows


# ------------------------------------------------------------------------------ --batch N

def test_batch_compares_one_by_one_with_one_batched_call(tmp_path, capsys, tool_engine):
    out = tmp_path / 'bench.json'
    assert main(['bench', *TINY, '--image-size', str(H), str(W), '--batch', '3',
                 '--json', str(out)]) == 0
    text = capsys.readouterr().out
    assert 'device: cpu' in text
    assert f'batching: 3 distinct {H}x{W} frames (each with its own intrinsics)' in text
    rows = table(text, 'stage        sequential')
    assert set(rows) >= {'preprocess', 'network', 'head', 'upsample', 'other', 'total',
                         'frames/s'}
    for name in ('preprocess', 'network', 'head', 'upsample', 'total'):
        assert len(rows[name]) == 3 and all(float(v) >= 0 for v in rows[name])
    assert 'the whole batch as one trunk call' in text
    ratio = re.search(r'batched/sequential throughput: ([0-9.]+)x', text)
    assert ratio and float(ratio.group(1)) > 0
    figures = json.loads(out.read_text())['batching']
    assert figures['batch'] == 3 and figures['rounds'] == 1
    assert figures['trunk_batch'] == 1  # the CPU's rule
    for mode in ('sequential', 'batched', 'one trunk call'):
        assert set(figures[mode]['stages_ms_per_frame']) == set(BATCH_STAGES)
        assert figures[mode]['fps'] == pytest.approx(1e3 / figures[mode]['total_ms_per_frame'])
    assert figures['ratio'] == pytest.approx(figures['batched']['fps']
                                             / figures['sequential']['fps'])
    # the printed table is the JSON's, per frame
    assert float(rows['total'][0]) == pytest.approx(
        figures['sequential']['total_ms_per_frame'], abs=0.006)


def test_batch_one_has_no_batching_table(capsys, tool_engine):
    assert main(['bench', *TINY, '--image-size', str(H), str(W)]) == 0
    text = capsys.readouterr().out
    assert 'batching:' not in text and 'throughput' not in text


def test_bench_frames_are_distinct_with_their_own_intrinsics(small_engine):
    frames = bench_frames(small_engine, H, W, 3)
    assert len({f.rgb.tobytes() for f in frames}) == 3
    assert len({f.intrinsics for f in frames}) == 3
    assert all(f.intrinsics.size == (H, W) for f in frames)


# ------------------------------------------------------------------ --compare-precision

def test_compare_precision_reports_fp16_and_fp32_against_itself_is_zero(tmp_path, capsys):
    for seed in range(2):
        write_image(tmp_path / 'images' / f'{seed}.png', seed)
    out = tmp_path / 'precision.json'
    assert main(['bench', *TINY, '--image-size', str(H), str(W), '--compare-precision',
                 'fp32', 'fp16', '--images', str(tmp_path / 'images' / '*.png'),
                 '--json', str(out)]) == 0
    text = capsys.readouterr().out
    assert 'device: cpu' in text and 'precisions interleaved' in text
    assert 'weights: trunk the same in every engine' in text
    assert 'text features: largest difference 0\n' in text
    # fp16 cannot run on the CPU: reported, not a crash
    assert 'fp16: not available: precision fp16 needs a CUDA device' in text
    # fp32 in both trunk layouts, side by side, the default (reference) first
    default = 'nhwc' if model.CPU_FP32_CHANNELS_LAST else 'nchw'
    other = 'nchw' if default == 'nhwc' else 'nhwc'
    reference, second = f'fp32/{default}', f'fp32/{other}'
    header = next(line for line in text.splitlines() if line.startswith('ms/frame'))
    assert header.split()[1:] == [reference, second]
    rows = table(text, 'ms/frame')
    for name in ('preprocess', 'network', 'head', 'upsample', 'total', 'frames/s'):
        assert len(rows[name]) == 2
    assert rows['speed-up'][0] == '1.000x'
    # the deviation of fp32 against a pass of its own is exactly 0
    deviation = table(text, 'variant')
    assert deviation[reference] == ['0', '0', '0']
    assert set(deviation) == {reference, second}
    assert 'over 2400 pixels of 2 images' in text
    figures = json.loads(out.read_text())
    assert figures['reference'] == reference
    assert figures['deviation'][reference] == {'median': 0.0, 'p99': 0.0, 'max': 0.0,
                                               'pixels': 2 * H * W}
    layout = figures['deviation'][second]
    assert 0 <= layout['median'] <= layout['p99'] <= layout['max'] < 1e-3  # re-association
    assert set(figures['not_available']) == {'fp16'}
    assert set(figures['precision_ms']) == {reference, second}


def test_compare_precision_reads_dataset_folders(tmp_path, capsys):
    """A folder holding dataset folders (the ../shared/data layout): each one's rgb/
    images with its own intrinsics; without images there is no deviation table."""
    root = tmp_path / 'data'
    for name, size in (('cam_a', (24, 32)), ('cam_b', (20, 36))):
        folder = root / name
        for index in range(2):
            write_image(folder / 'rgb' / f'{index:04d}.png', index, size)
            (folder / 'depth').mkdir(exist_ok=True)
            assert cv2.imwrite(str(folder / 'depth' / f'{index:04d}.png'),
                               np.full(size, 1000, np.uint16))
        (folder / 'intrinsics.json').write_text(json.dumps(
            {'fx': 30.0, 'fy': 30.0, 'cx': size[1] / 2, 'cy': size[0] / 2,
             'width': size[1], 'height': size[0], 'depth_unit_m': 0.001}))
    out = tmp_path / 'precision.json'
    assert main(['bench', *TINY, '--image-size', str(H), str(W), '--compare-precision',
                 'fp32-nchw', '--dataset', str(root), '--json', str(out)]) == 0
    text = capsys.readouterr().out
    pixels = 2 * 24 * 32 + 2 * 20 * 36
    assert f'over {pixels} pixels of 4 images' in text
    figures = json.loads(out.read_text())
    # fp32 in its default layout is always there (the reference); nchw asked: no other one
    default = 'nhwc' if model.CPU_FP32_CHANNELS_LAST else 'nchw'
    assert list(figures['precision_ms']) == list(dict.fromkeys([f'fp32/{default}',
                                                                'fp32/nchw']))
    assert figures['deviation'][f'fp32/{default}']['max'] == 0.0
    assert figures['not_available'] == {}


# ------------------------------------------------------------------- --compare-backends

def test_compare_backends_times_and_compares_them_against_torch(tmp_path, capsys,
                                                                 monkeypatch):
    """torch (the reference), OpenVINO fp32 and INT8 side by side: the network row's
    ratios, fp32 within float re-association of torch, INT8 further from it; without a
    calibration set INT8 is reported as not available, not a crash."""
    pytest.importorskip('openvino')
    monkeypatch.setenv('DEPTHCLIP_CACHE_DIR', str(tmp_path / 'cache'))
    for seed in range(2):
        write_image(tmp_path / 'images' / f'{seed}.png', seed)
    for seed in range(3):
        write_image(tmp_path / 'calibration' / f'{seed}.png', 10 + seed)
    out = tmp_path / 'backends.json'
    assert main(['bench', *TINY, '--image-size', str(H), str(W), '--compare-backends',
                 'openvino', 'openvino-int8', '--calibration', str(tmp_path / 'calibration'),
                 '--images', str(tmp_path / 'images' / '*.png'), '--json', str(out)]) == 0
    text = capsys.readouterr().out
    assert 'backends interleaved' in text and 'openvino 20' in text
    assert 'deviations are not an accuracy result' in text  # random weights
    header = next(line for line in text.splitlines() if line.startswith('ms/frame'))
    assert header.split()[1:] == ['torch', 'openvino', 'openvino-int8']
    rows = table(text, 'ms/frame')
    assert rows['speed-up'][0] == '1.000x' and rows['network'][0] != '1.000x'
    network = [line for line in text.splitlines() if line.startswith('network ')]
    assert len(network) == 2 and network[1].split()[1] == '1.000x'  # ms, then ratios
    figures = json.loads(out.read_text())
    deviation = figures['deviation']
    assert deviation['torch']['max'] == 0.0
    assert deviation['openvino']['max'] < 1e-4  # fp32: re-association only
    assert deviation['openvino-int8']['median'] > deviation['openvino']['median']
    assert figures['network_speedup']['torch'] == 1.0
    assert figures['not_available'] == {}
    # INT8 without a calibration set: not available, with the reason; the rest runs
    assert main(['bench', *TINY, '--image-size', str(H), str(W), '--compare-backends',
                 'openvino-int8']) == 0
    text = capsys.readouterr().out
    assert 'openvino-int8: not available: precision int8 needs calibration' in text
    header = next(line for line in text.splitlines() if line.startswith('ms/frame'))
    assert header.split()[1:] == ['torch']


def test_plan_reports_a_precision_the_cpu_cannot_run(monkeypatch):
    args = bench_args('--compare-precision', 'bf16', 'auto', 'fp16', 'fp32-nhwc')
    monkeypatch.setattr(model, 'cpu_bf16_native', lambda: False)
    plan, missing = plan_variants(args.compare_precision, args)
    reasons = dict(missing)
    assert set(reasons) == {'bf16', 'fp16'}
    assert 'native bf16' in reasons['bf16'] and 'CUDA' in reasons['fp16']
    labels = [label for label, _, _ in plan]
    # auto is fp32 on the CPU: kept once; a layout of fp32 asked: no other one added
    default = 'nhwc' if model.CPU_FP32_CHANNELS_LAST else 'nchw'
    assert labels == list(dict.fromkeys([f'fp32/{default}', 'fp32/nhwc']))


def test_bad_options_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(['bench', *TINY, '--compare-precision', 'fp8'])
    assert stop.value.code == 2
    assert "'fp8': a precision" in capsys.readouterr().err
    assert main(['bench', *TINY, '--images', str(tmp_path / '*.png')]) == 2
    assert 'go with --compare-precision' in capsys.readouterr().err
    assert main(['bench', *TINY, '--compare-precision', 'fp32', '--images',
                 str(tmp_path / 'none*.png')]) == 2
    assert 'no file matches' in capsys.readouterr().err
    for bad in (['--batch', '0'], ['--repeat', '0'], ['--warmup', '-1'], ['--queries', '-1'],
                ['--max-masks', '0']):
        assert main(['bench', *TINY, *bad]) == 2
        out, err = capsys.readouterr()  # the problem on stderr, as every tool says one
        assert out == '' and err.startswith('depthclip-ros bench: ' + bad[0])
    assert main(['bench', *TINY, '--compare-precision', 'fp32', '--compare-backends',
                 'openvino']) == 2
    assert 'runs of their own' in capsys.readouterr().err


def bench_args(*argv: str):
    import argparse
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args([*TINY, *argv])

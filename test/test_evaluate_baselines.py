"""`evaluate`'s baselines (issue 12): a constant at the median ground truth (oracle), a
constant at the median bin times the engine's focal scale, and a seeded uniform random
guess in (0, 10] m, each scored on exactly the model's pixels and frames."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from depthclip_ros.engine.config import HeadConfig, NYU_FOCAL_PX, PAPER_DEPTH_BINS_M
from depthclip_ros.engine.metrics import (
    depth_metrics,
    evaluated_pixels,
    median_of_counts,
    METRIC_NAMES,
    nyu_eval_mask,
    NYU_INPUT_CROP,
    uniform_random_depth,
)
from depthclip_ros.geometry import Intrinsics
from depthclip_ros.io.dataset import RGBDFolder
from depthclip_ros.tools import evaluate
from depthclip_ros.tools.cli import main

from conftest import shared_data, TINY_MODEL

FAST = ['--model', TINY_MODEL, '--pretrained', 'none', '--device', 'cpu']
pytestmark = pytest.mark.usefixtures('tiny_model')  # FAST's model, in this process
H, W = 48, 64
CAMERA = {'fx': 60.0, 'fy': 90.0, 'cx': 31.5, 'cy': 23.5, 'width': W, 'height': H,
          'depth_unit_m': 0.001}
LABELS = ('baseline: constant median GT = ', 'baseline: constant median bin x focal scale = ',
          'baseline: uniform random (0, 10] m, seed 0')


def write_dataset(root: Path, depths_m: list[np.ndarray], camera=CAMERA) -> Path:
    """An RGB-D folder: random images, the given ground truths as millimetre PNGs."""
    (root / 'rgb').mkdir(parents=True)
    (root / 'depth').mkdir()
    (root / 'intrinsics.json').write_text(json.dumps(camera))
    rng = np.random.default_rng(7)
    for index, depth in enumerate(depths_m):
        rgb = rng.integers(0, 256, (*depth.shape, 3), dtype=np.uint8)
        assert cv2.imwrite(str(root / 'rgb' / f'{index:04d}.png'), rgb)
        millimetres = np.round(depth * 1000).astype(np.uint16)
        assert cv2.imwrite(str(root / 'depth' / f'{index:04d}.png'), millimetres)
    return root


def strips(*columns: tuple[int, float]) -> np.ndarray:
    """A ground truth of vertical strips: ``(first column, depth)`` pairs, left to right."""
    depth = np.zeros((H, W))
    for first, value in columns:
        depth[:, first:] = value
    return depth


class FakeEngine:
    """What evaluate needs of an engine, predicting the given maps in call order."""

    def __init__(self, predictions, input_size=(96, 128), head=None):
        self.config = SimpleNamespace(input_size=input_size)
        self.head = head or HeadConfig(distance_prompts=('a', 'b', 'c', 'd'),
                                       depth_bins_m=(1.0, 2.0, 4.0, 8.0),
                                       canonical_focal_px=50.0)
        self.predictions = list(predictions)
        self.cameras = []

    def predict(self, rgb, camera):
        self.cameras.append(camera)
        return np.asarray(self.predictions.pop(0), dtype=np.float32)


def approx(metrics: dict, expected: dict):
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name


# ---------------------------------------------------------------------------------------
# the pieces


@pytest.mark.parametrize('values,counts', [
    ([1.0], [1]),
    ([3.0, 1.0, 2.0], [1, 1, 1]),  # unsorted, odd total
    ([1.0, 2.0, 4.0], [1536, 1536, 3072]),  # even total: mean of the two middle values
    ([5.0, 1.0, 2.0, 9.0], [0, 2, 1, 4]),  # a zero count
    ([2.5, 0.5], [3, 3]),
])
def test_median_of_counts_is_the_median_of_the_repeated_values(values, counts):
    expected = float(np.median(np.repeat(values, counts)))
    assert median_of_counts(np.array(values), np.array(counts)) == expected


def test_median_of_counts_by_hand_and_refusals():
    assert median_of_counts(np.array([1.0, 2.0, 4.0]), np.array([1536, 1536, 3072])) == 3.0
    assert median_of_counts(np.array([1.0, 2.0, 8.0]), np.array([1536, 1536, 768])) == 2.0
    with pytest.raises(ValueError, match='no value'):
        median_of_counts(np.array([1.0]), np.array([0]))
    with pytest.raises(ValueError, match='counts'):
        median_of_counts(np.array([1.0, 2.0]), np.array([1]))


def test_uniform_random_depth_is_reproducible_in_range_and_never_zero():
    first = uniform_random_depth(np.random.default_rng(0), 200_000)
    again = uniform_random_depth(np.random.default_rng(0), 200_000)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, uniform_random_depth(np.random.default_rng(1), 200_000))
    assert first.min() > 0 and first.max() <= 10.0
    assert first.mean() == pytest.approx(5.0, abs=0.03)
    assert np.histogram(first, bins=10, range=(0, 10))[0].min() > 19_000  # flat
    # the draw is 10 - U[0, 10): a generator's exact 0 becomes 10, never a depth of 0
    edges = SimpleNamespace(uniform=lambda low, high, size: np.array([0.0, 5.0, 9.999]))
    np.testing.assert_allclose(uniform_random_depth(edges, 3), [10.0, 5.0, 0.001])


def test_evaluated_pixels_are_the_ones_depth_metrics_scores():
    rng = np.random.default_rng(3)
    gt = rng.uniform(0.5, 5, (20, 30))
    gt[0, :5] = 0
    gt[1, :5] = np.nan
    pred = rng.uniform(0.5, 5, (20, 30))
    pred[2, :7] = np.nan
    pred[3, :2] = -1
    mask = np.ones(gt.shape, bool)
    mask[:, -4:] = False
    valid = evaluated_pixels(pred, gt, mask)
    assert valid.sum() == 20 * 26 - 5 - 5 - 7 - 2
    assert depth_metrics(pred[valid], gt[valid]) == depth_metrics(pred, gt, mask)


def test_median_bins_follows_the_focal_rule_by_hand():
    engine = FakeEngine([])
    camera = Intrinsics(**{k: v for k, v in CAMERA.items() if k != 'depth_unit_m'})
    # bins (1, 2, 4, 8): median 3; input 96x128 doubles the 64x48 camera: fx 120, fy 180,
    # mean 150 px over the canonical 50 px: scale 3
    assert evaluate.median_bins_depth(engine, camera) == pytest.approx(3.0 * 150 / 50)
    engine.config.input_size = (24, 96)  # fx 90, fy 45: mean 67.5
    assert evaluate.median_bins_depth(engine, camera) == pytest.approx(3.0 * 67.5 / 50)
    # NYU, the paper's way: the 544x416 crop fed at 416x544 with the paper's bins: 2.25 m
    # times mean(fx, fy) / 518.8579, and half that focal at half the input size
    nyu = Intrinsics(518.8579, 519.4696, 325.5824, 253.7362, 640, 480).cropped(60, 56, 544,
                                                                               416)
    paper = FakeEngine([], (416, 544), HeadConfig())
    assert np.median(PAPER_DEPTH_BINS_M) == 2.25
    assert evaluate.median_bins_depth(paper, nyu) == pytest.approx(
        2.25 * (518.8579 + 519.4696) / 2 / NYU_FOCAL_PX)
    paper.config.input_size = (208, 272)
    assert evaluate.median_bins_depth(paper, nyu) == pytest.approx(
        2.25 * (518.8579 + 519.4696) / 4 / NYU_FOCAL_PX)


def test_median_bins_scales_like_the_engine_does(small_engine):
    """Same image, two cameras: the engine's depths change by the ratio of the
    median-bins constants (both are bins x the same focal scale)."""
    rgb = np.random.default_rng(5).integers(0, 256, (H, W, 3), dtype=np.uint8)
    near = Intrinsics(60.0, 90.0, 31.5, 23.5, W, H)
    far = Intrinsics(150.0, 120.0, 31.5, 23.5, W, H)
    ratio = small_engine.predict(rgb, far) / small_engine.predict(rgb, near)
    expected = (evaluate.median_bins_depth(small_engine, far)
                / evaluate.median_bins_depth(small_engine, near))
    # at 96x64: near fx 90, fy 120; far fx 225, fy 160
    assert expected == pytest.approx((225 + 160) / (90 + 120))
    np.testing.assert_allclose(ratio, expected, rtol=1e-5)


# ---------------------------------------------------------------------------------------
# a dataset by hand


def hand_dataset(tmp_path) -> RGBDFolder:
    """Frame 0: 1 m on the left half, 2 m on the right; frame 1: 4 m, 8 m from column 48;
    frame 2: no ground truth (skipped)."""
    return RGBDFolder(write_dataset(tmp_path / 'hand', [
        strips((0, 1.0), (32, 2.0)), strips((0, 4.0), (48, 8.0)), np.zeros((H, W))]))


def test_baselines_by_hand_on_the_whole_frames(tmp_path):
    folder = hand_dataset(tmp_path)
    engine = FakeEngine([np.full((H, W), 3.0)] * 3)
    mean, per_frame, skipped, baselines = evaluate.evaluate_folder(engine, folder)
    assert len(per_frame) == 2 and [s['frame'] for s in skipped] == ['0002']
    scores = baselines.means()
    assert set(scores) == {'median_gt', 'median_bins', 'uniform_random'}
    # 1536 x 1 m, 1536 x 2 m, 2304 x 4 m, 768 x 8 m: the 3072nd and 3073rd are 2 and 4
    assert baselines.median_gt() == 3.0
    # constant 3 m. frame 0: ratios 3, 1.5; frame 1: 4/3, 8/3
    frame0 = {'d1': 0.0, 'd2': 0.5, 'd3': 0.5, 'abs_rel': (2 + 0.5) / 2,
              'rmse': math.sqrt((4 + 1) / 2), 'sq_rel': (4 / 1 + 1 / 2) / 2}
    frame1 = {'d1': 0.0, 'd2': 0.75, 'd3': 0.75, 'abs_rel': 0.75 * 0.25 + 0.25 * 5 / 8,
              'rmse': math.sqrt(0.75 * 1 + 0.25 * 25), 'sq_rel': 0.75 * 1 / 4 + 0.25 * 25 / 8}
    expected = {k: (frame0[k] + frame1[k]) / 2 for k in frame0}  # per-frame mean
    approx(scores['median_gt'], expected)
    approx(mean, expected)  # the engine predicted that very constant
    # median bins: 3 m x (mean of fx 120, fy 180 at 96x128) / 50 px = 9 m; ratios 9, 4.5,
    # 2.25, 1.125
    assert baselines.depths()['median_bins'] == [pytest.approx(9.0)]
    frame0 = {'d1': 0.0, 'd3': 0.0, 'abs_rel': (8 + 3.5) / 2, 'rmse': math.sqrt((64 + 49) / 2)}
    frame1 = {'d1': 0.25, 'd3': 0.25, 'abs_rel': 0.75 * 5 / 4 + 0.25 * 1 / 8,
              'rmse': math.sqrt(0.75 * 25 + 0.25 * 1)}
    approx(scores['median_bins'], {k: (frame0[k] + frame1[k]) / 2 for k in frame0})
    # the cameras the constant was scaled for are those the engine was given
    assert all(c.size == (H, W) and c.fx == 60.0 for c in engine.cameras)


def test_baselines_clip_like_the_model(tmp_path):
    """With a 6 m cap the 9 m median-bins constant becomes 6 m and the 8 m strip leaves
    the evaluation, exactly as for the model's prediction."""
    folder = hand_dataset(tmp_path)
    engine = FakeEngine([np.full((H, W), 30.0)] * 3)
    mean, _, _, baselines = evaluate.evaluate_folder(engine, folder, max_depth_m=6.0)
    scores = baselines.means()
    expected = {'abs_rel': ((5 + 2) / 2 + 2 / 4) / 2, 'rmse': (math.sqrt((25 + 16) / 2) + 2) / 2}
    approx(scores['median_bins'], expected)
    approx(mean, expected)  # the model's 30 m clipped to the same 6 m
    assert baselines.median_gt() == 2.0  # 1536 x 1, 1536 x 2, 2304 x 4


def test_baselines_use_exactly_the_pixels_the_model_was_scored_on(tmp_path):
    """The engine gives no depth (NaN) on columns 0-47 of frame 1: its 4 m strip is out
    of the model's metrics, so out of every baseline's too."""
    folder = hand_dataset(tmp_path)
    holes = np.full((H, W), 2.0)
    holes[:, :48] = np.nan
    engine = FakeEngine([np.full((H, W), 2.0), holes, np.full((H, W), 2.0)])
    mean, _, _, baselines = evaluate.evaluate_folder(engine, folder)
    scores = baselines.means()
    # 1536 x 1 m, 1536 x 2 m, 768 x 8 m: median 2 (3 with the 4 m strip)
    assert baselines.median_gt() == 2.0
    expected = {'d1': (0.5 + 0) / 2, 'd3': (0.5 + 0) / 2, 'abs_rel': (0.5 + 0.75) / 2,
                'rmse': (math.sqrt(0.5) + 6) / 2}
    approx(scores['median_gt'], expected)
    approx(mean, expected)
    # the random guess: default_rng(0), the evaluated pixels frame by frame, row-major
    rng = np.random.default_rng(0)
    frames = [strips((0, 1.0), (32, 2.0)).ravel(), np.full(H * 16, 8.0)]
    by_hand = [depth_metrics(np.clip(10.0 - rng.uniform(0, 10, g.size), 1e-3, 80.0), g)
               for g in frames]
    approx(scores['uniform_random'], {k: (by_hand[0][k] + by_hand[1][k]) / 2
                                      for k in METRIC_NAMES})
    # and a second run gives the same numbers
    again = evaluate.evaluate_folder(FakeEngine([np.full((H, W), 2.0), holes,
                                                 np.full((H, W), 2.0)]), folder)[3]
    assert again.means() == scores


def test_uniform_random_baseline_is_near_its_expectation(tmp_path):
    """Constant 4 m ground truth, uniform (0, 10]: d1 = P(3.2 < p < 5) = 0.18,
    abs_rel = E|p - 4| / 4 = (16 + 36) / 20 / 4 = 0.65."""
    folder = RGBDFolder(write_dataset(tmp_path / 'flat', [np.full((240, 320), 4.0)] * 3,
                                      {**CAMERA, 'width': 320, 'height': 240}))
    engine = FakeEngine([np.full((240, 320), 4.0)] * 3)
    scores = evaluate.evaluate_folder(engine, folder)[3].means()
    assert scores['uniform_random']['d1'] == pytest.approx(0.18, abs=0.005)
    assert scores['uniform_random']['abs_rel'] == pytest.approx(0.65, abs=0.01)
    approx(scores['median_gt'], {'d1': 1.0, 'abs_rel': 0.0, 'rmse': 0.0})


# ---------------------------------------------------------------------------------------
# the tool end to end (CPU, random weights)


def table_rows(text: str, first: str) -> list[str]:
    """The table's row labels from the row starting with ``first`` on."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first))
    rows = []
    for line in lines[start:]:
        if not line.strip():
            break
        rows.append(line)
    return rows


def check_baselines(data: dict):
    assert set(data['baselines']) == {'median_gt', 'median_bins', 'uniform_random'}
    for metrics in data['baselines'].values():
        assert set(metrics) == set(METRIC_NAMES)
        assert all(np.isfinite(metrics[name]) for name in METRIC_NAMES)
        assert 0.0 <= metrics['d1'] <= metrics['d2'] <= metrics['d3'] <= 1.0
    assert data['baseline_depth_m']['uniform_random'] == [0.0, 10.0]


def test_evaluate_prints_and_writes_the_baselines(tmp_path, capsys):
    rng = np.random.default_rng(11)
    depths = [np.round(rng.uniform(0.5, 5.0, (H, W)), 3) for _ in range(3)]
    root = write_dataset(tmp_path / 'cam', depths)
    out = tmp_path / 'r.json'
    assert main(['evaluate', str(root), '--json', str(out), *FAST,
                 '--input-size', '64', '96']) == 0
    text = capsys.readouterr().out
    rows = table_rows(text, 'ours (RANDOM WEIGHTS), 3 frames')
    assert len(rows) == 4
    for row, label in zip(rows[1:], LABELS):
        assert row.startswith(label)
    assert '(oracle)' in rows[1]
    assert text.count('RANDOM WEIGHTS (pretrained=none)') == 1  # the closing banner
    data = json.loads(out.read_text())['datasets']['cam']
    check_baselines(data)
    assert data['baseline_depth_m']['median_gt'] == pytest.approx(
        float(np.median(np.concatenate([d.ravel() for d in depths]))), abs=1e-6)
    # 64x48 camera at 96x64: fx 90, fy 120; paper bins' median 2.25 m
    assert data['baseline_depth_m']['median_bins'] == [
        pytest.approx(2.25 * (90 + 120) / 2 / NYU_FOCAL_PX)]


def test_evaluate_nyu_baselines_on_real_frames(tmp_path, capsys):
    folder = shared_data('nyu_v2_eigen_test_sg10')
    out = tmp_path / 'nyu.json'
    assert main(['evaluate', str(folder), '--json', str(out), *FAST,
                 '--input-size', '224', '288']) == 0
    text = capsys.readouterr().out
    rows = table_rows(text, 'ours (RANDOM WEIGHTS), 10 frames')
    assert [row.split('  ')[0] for row in rows[4:]] == ['DepthCLIP paper (654 frames)',
                                                        'random guess 0-10 m (paper)']
    for row, label in zip(rows[1:4], LABELS):
        assert row.startswith(label)
    data = json.loads(out.read_text())['datasets']['nyu_v2_eigen_test_sg10']
    check_baselines(data)
    # the median of every frame's ground truth inside the NYU evaluation mask
    nyu = RGBDFolder(folder)
    gt = np.concatenate([f.depth_m[nyu_eval_mask(f.depth_m)] for f in nyu])
    assert data['baseline_depth_m']['median_gt'] == pytest.approx(float(np.median(gt)),
                                                                  abs=1e-6)
    info = json.loads((folder / 'intrinsics.json').read_text())
    left, top, right, bottom = NYU_INPUT_CROP
    scale = (info['fx'] * 288 / (right - left) + info['fy'] * 224 / (bottom - top)) / 2
    assert data['baseline_depth_m']['median_bins'] == [
        pytest.approx(2.25 * scale / NYU_FOCAL_PX)]

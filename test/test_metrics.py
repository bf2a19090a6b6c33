import math

import numpy as np
import pytest

from depthclip_ros.engine.metrics import depth_metrics, format_table, mean_metrics, nyu_eval_mask


def test_metrics_by_hand():
    gt = np.array([[1.0, 2.0], [4.0, 0.0]])
    pred = np.array([[1.0, 3.0], [2.0, 5.0]])  # last pixel has no ground truth
    m = depth_metrics(pred, gt)
    # ratios: 1, 1.5, 2 -> d1 = 1/3, d2 (1.5625) = 2/3, d3 (1.953) = 2/3
    assert m['d1'] == pytest.approx(1 / 3)
    assert m['d2'] == pytest.approx(2 / 3)
    assert m['d3'] == pytest.approx(2 / 3)
    assert m['abs_rel'] == pytest.approx((0 + 0.5 + 0.5) / 3)
    assert m['sq_rel'] == pytest.approx((0 + 1 / 2 + 4 / 4) / 3)
    assert m['rmse'] == pytest.approx(math.sqrt((0 + 1 + 4) / 3))
    assert m['rmse_log'] == pytest.approx(math.sqrt((math.log(1.5) ** 2 + math.log(2) ** 2) / 3))
    assert m['log10'] == pytest.approx((math.log10(1.5) + math.log10(2)) / 3)


def test_perfect_prediction():
    gt = np.linspace(0.5, 9, 100).reshape(10, 10)
    m = depth_metrics(gt, gt)
    assert m['d1'] == 1.0 and m['abs_rel'] == 0.0 and m['rmse'] == 0.0


def test_mask_and_errors():
    gt = np.ones((2, 2))
    pred = np.array([[1.0, 10.0], [1.0, 1.0]])
    mask = np.array([[True, False], [True, True]])
    assert depth_metrics(pred, gt, mask)['d1'] == 1.0
    with pytest.raises(ValueError, match='no valid'):
        depth_metrics(pred, np.zeros((2, 2)))
    with pytest.raises(ValueError, match='shape'):
        depth_metrics(pred, np.ones((3, 3)))


def test_nyu_mask_is_eigen_crop_inside_input_crop():
    gt = np.full((480, 640), 2.0)
    gt[100, 100] = 0.0
    gt[200, 200] = 12.0
    mask = nyu_eval_mask(gt)
    assert mask.sum() == (471 - 56) * (601 - 60) - 2
    assert not mask[55, 300] and mask[56, 300] and not mask[300, 601] and mask[300, 600]


def test_mean_and_table():
    rows = [depth_metrics(np.ones((2, 2)), np.ones((2, 2))),
            depth_metrics(np.full((2, 2), 2.0), np.ones((2, 2)))]
    mean = mean_metrics(rows)
    assert mean['abs_rel'] == 0.5
    table = format_table({'ours': mean, 'paper': {'d1': 0.394}})
    assert 'ours' in table and '0.394' in table and '-' in table

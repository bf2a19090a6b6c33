"""3-D objects from a chosen mask and metric depth, against hand-computed scenes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from depthclip_ros.geometry import backproject, Intrinsics
from depthclip_ros.objects.locate import (
    depth_inliers,
    locate,
    ObjectLocation,
    ObjectResult,
    OUTLIER_FLOOR_M,
    query_labels,
)

# fx = fy = 100 px, principal point (32, 24): at z = 2 m a pixel step is 2 cm,
# x = 0.02 * (u - 32) and y = 0.02 * (v - 24).
K = Intrinsics(fx=100.0, fy=100.0, cx=32.0, cy=24.0, width=64, height=48)
ROWS, COLS = slice(10, 20), slice(20, 30)  # a 10 x 10 px square: rows 10-19, cols 20-29
TOL = 1e-6


def square_scene(z=2.0, background=np.nan):
    depth = np.full((48, 64), background, dtype=np.float32)
    depth[ROWS, COLS] = z
    mask = np.zeros((48, 64), dtype=bool)
    mask[ROWS, COLS] = True
    return depth, mask


def test_fronto_parallel_square_hand_computed():
    depth, mask = square_scene()
    location = locate(depth, K, mask)
    assert isinstance(location, ObjectLocation)
    # medians: u = 24.5 -> x = 0.02 * -7.5 = -0.15; v = 14.5 -> y = 0.02 * -9.5 = -0.19
    assert location.position_m == pytest.approx((-0.15, -0.19, 2.0), abs=TOL)
    # 100 points, 10 per column: the 5th percentile (sorted index 4.95) and the 95th
    # (94.05) fall inside the first and last columns and rows, so the box spans the
    # outermost pixel rays: u = 20 -> -0.24, u = 29 -> -0.06, v = 10 -> -0.28, v = 19 -> -0.10
    assert location.box_min_m == pytest.approx((-0.24, -0.28, 2.0), abs=TOL)
    assert location.box_max_m == pytest.approx((-0.06, -0.10, 2.0), abs=TOL)
    assert location.box_center_m == pytest.approx((-0.15, -0.19, 2.0), abs=TOL)
    assert location.box_size_m == pytest.approx((0.18, 0.18, 0.0), abs=TOL)
    assert location.pixels == 100
    assert location.points.shape == (100, 3) and location.points.dtype == np.float32
    assert not location.points.flags.writeable


def test_points_are_the_organised_cloud_points():
    rng = np.random.default_rng(3)
    depth = rng.uniform(1.9, 2.1, (48, 64)).astype(np.float32)
    mask = np.zeros((48, 64), dtype=bool)
    mask[5:30, 7:40] = True
    location = locate(depth, K, mask)
    assert location.pixels == mask.sum()
    # every point passes the rule here (z spread is small); bit-for-bit the same values
    # as backproject, in row-major order
    np.testing.assert_array_equal(location.points, backproject(depth, K)[mask])


def test_full_percentiles_give_the_extreme_rays():
    depth, mask = square_scene(z=4.0)
    location = locate(depth, K, mask, percentiles=(0.0, 100.0))
    assert location.box_min_m == pytest.approx((0.04 * -12, 0.04 * -14, 4.0), abs=TOL)
    assert location.box_max_m == pytest.approx((0.04 * -3, 0.04 * -5, 4.0), abs=TOL)


@pytest.mark.parametrize('band', [1, 2])
def test_background_bleeding_into_the_mask_edge_is_rejected(band):
    clean_depth, clean_mask = square_scene()
    clean = locate(clean_depth, K, clean_mask)
    depth, mask = square_scene(background=6.0)
    mask[ROWS, COLS.stop:COLS.stop + band] = True  # the right edge bleeds onto 6 m
    location = locate(depth, K, mask)
    assert location.pixels == 100 + 10 * band
    assert len(location.points) == 100
    assert location.position_m == pytest.approx(clean.position_m, abs=0.01)
    assert location.box_max_m[2] < 2.05  # not stretched towards 6 m
    assert location.box_max_m[0] == pytest.approx(clean.box_max_m[0], abs=TOL)


def test_bleeding_ring_all_round_with_depth_noise():
    rng = np.random.default_rng(0)
    depth, mask = square_scene(background=6.0)
    depth[ROWS, COLS] += rng.normal(0.0, 0.005, (10, 10)).astype(np.float32)
    mask[9:21, 19:31] = True  # a 1 px ring of background: 44 of 144 pixels
    location = locate(depth, K, mask)
    assert location.pixels == 144
    assert len(location.points) == 100
    assert location.position_m == pytest.approx((-0.15, -0.19, 2.0), abs=0.01)
    assert 1.95 < location.box_min_m[2] and location.box_max_m[2] < 2.05


def test_slanted_object_keeps_its_depth_extent():
    depth, mask = square_scene(background=6.0)
    depth[ROWS, COLS] = 2.0 + 0.05 * np.arange(10, dtype=np.float32)  # 2.00 .. 2.45 m
    mask[ROWS, 30:32] = True
    location = locate(depth, K, mask, percentiles=(0.0, 100.0))
    assert len(location.points) == 100  # the whole slope, none of the 6 m band
    assert location.box_min_m[2] == pytest.approx(2.0, abs=TOL)
    assert location.box_max_m[2] == pytest.approx(2.45, abs=1e-5)


def test_outlier_rule_floor_and_scale():
    z = np.array([2.0] * 10 + [2.019, 2.021])
    # MAD is 0: the 2 cm floor decides
    assert depth_inliers(z).tolist() == [True] * 11 + [False]
    assert OUTLIER_FLOOR_M == 0.02
    # spread data: 3 * 1.4826 * MAD around the median
    z = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 20.0])  # median 3.5, MAD 1.5 -> band 6.67
    assert depth_inliers(z).tolist() == [True] * 5 + [False]
    assert depth_inliers(np.array([])).shape == (0,)


def test_invalid_depth_pixels_are_ignored():
    depth, mask = square_scene()
    depth[10:20, 20] = [np.nan, 0.0, -1.0, np.inf, -np.inf, np.nan, 0.0, 0.0, np.nan, -0.5]
    location = locate(depth, K, mask)
    assert location.pixels == 90
    assert np.isfinite(location.points).all()
    # columns 21-29 remain: median u = 25 -> x = -0.14; 90 points, 10 per column: the
    # 5th and 95th percentiles (indices 4.45, 84.55) lie in columns 21 and 29
    assert location.position_m == pytest.approx((-0.14, -0.19, 2.0), abs=TOL)
    assert location.box_min_m[0] == pytest.approx(-0.22, abs=TOL)
    assert location.box_max_m[0] == pytest.approx(-0.06, abs=TOL)


def test_empty_or_invalid_masks_give_none():
    depth, mask = square_scene()
    assert locate(depth, K, np.zeros_like(mask)) is None
    assert locate(np.full_like(depth, np.nan), K, mask) is None
    hole = np.zeros_like(mask)
    hole[0:5, 0:5] = True  # background only, NaN there
    assert locate(depth, K, hole) is None
    assert locate(depth, K, mask, min_depth_m=3.0) is None


def test_integer_masks_count_non_zero_pixels():
    depth, mask = square_scene()
    assert locate(depth, K, mask.astype(np.uint8) * 7).position_m == \
        locate(depth, K, mask).position_m


def test_min_and_max_depth_are_honoured():
    depth, mask = square_scene()
    depth[10:15, COLS] = 1.0  # top half at 1 m, bottom half at 2 m
    near = locate(depth, K, mask, max_depth_m=1.5)
    far = locate(depth, K, mask, min_depth_m=1.5)
    assert near.pixels == far.pixels == 50
    assert np.all(near.points[:, 2] == 1.0) and np.all(far.points[:, 2] == 2.0)
    assert far.position_m[1] == pytest.approx(0.02 * (17 - 24), abs=TOL)  # rows 15-19
    with pytest.raises(ValueError, match='min_depth_m'):
        locate(depth, K, mask, min_depth_m=3.0, max_depth_m=2.0)


def test_shape_and_argument_errors():
    depth, mask = square_scene()
    with pytest.raises(ValueError, match='intrinsics'):
        locate(depth[:, :60], K, mask[:, :60])
    with pytest.raises(ValueError, match='mask is 60x48 but depth is 64x48'):
        locate(depth, K, mask[:, :60])
    with pytest.raises(ValueError, match='2-D'):
        locate(depth, K, mask[..., None])
    with pytest.raises(ValueError, match='2-D'):
        locate(depth.reshape(-1), K, mask)
    with pytest.raises(TypeError, match='Intrinsics'):
        locate(depth, (100.0, 100.0, 32.0, 24.0), mask)
    with pytest.raises(ValueError, match='bool or integer'):
        locate(depth, K, mask.astype(np.float32))
    for bad in [(50.0, 10.0), (-1.0, 95.0), (5.0, 101.0)]:
        with pytest.raises(ValueError, match='percentiles'):
            locate(depth, K, mask, percentiles=bad)


def result(index, label, score=25.0, location=None, query=None, margin=1.5,
           candidates=((1, 25.0), (2, 23.5))):
    return ObjectResult(query=query or f'query {index}', index=index, noun_phrase='mug',
                        label=label, score=score, margin=margin, candidates=candidates,
                        location=location)


def test_query_labels_and_the_tie_rule():
    proposals = np.array([[0, 1, 1, 2, 2],
                          [3, 3, 0, 2, 4],
                          [3, 5, 5, 0, 4]], dtype=np.int32)
    # queries 3 and 1 both chose mask 2: the lower index (1) wins whatever the order
    results = [result(3, 2), result(0, 3), result(1, 2), result(2, 0), result(4, 4)]
    labels = query_labels(results, proposals)
    assert labels.dtype == np.uint16 and labels.shape == proposals.shape
    np.testing.assert_array_equal(labels, [[0, 0, 0, 2, 2],
                                           [1, 1, 0, 2, 5],
                                           [1, 0, 0, 0, 5]])
    np.testing.assert_array_equal(query_labels(results[::-1], proposals), labels)
    np.testing.assert_array_equal(query_labels([], proposals), np.zeros((3, 5)))
    # a chosen label that is not in the image marks nothing
    assert not query_labels([result(0, 9)], proposals).any()


def test_query_labels_errors():
    with pytest.raises(ValueError, match='2-D'):
        query_labels([], np.zeros(5, dtype=np.int32))
    with pytest.raises(ValueError, match='integer'):
        query_labels([], np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match='uint16'):
        query_labels([result(65535, 1)], np.ones((2, 2), dtype=np.int32))
    with pytest.raises(ValueError, match='index'):
        result(-1, 1)


def test_to_json_round_trips_without_nan():
    depth, mask = square_scene()
    location = locate(depth, K, mask)
    found = result(0, 1, score=np.float32(25.25), location=location,
                   candidates=[(np.int64(1), np.float32(25.25)), (2, 23.75)])
    data = json.loads(json.dumps(found.to_json(), allow_nan=False))
    assert data['query'] == 'query 0' and data['index'] == 0
    assert data['best_label'] == 1 and data['noun_phrase'] == 'mug'
    assert data['score'] == 25.25 and data['margin'] == 1.5
    assert data['position_m'] == pytest.approx([-0.15, -0.19, 2.0], abs=TOL)
    assert data['box_m']['min'] == pytest.approx([-0.24, -0.28, 2.0], abs=TOL)
    assert data['box_m']['max'] == pytest.approx([-0.06, -0.10, 2.0], abs=TOL)
    assert data['points'] == 100
    assert data['masks'] == [{'label': 1, 'score': 25.25}, {'label': 2, 'score': 23.75}]
    assert found.candidates == ((1, 25.25), (2, 23.75))
    assert all(type(v) is float for v in found.to_json()['position_m'])


def test_to_json_single_candidate_no_location_and_non_finite():
    alone = result(2, 1, score=math.nan, margin=None, candidates=[(1, math.inf)])
    data = alone.to_json()
    text = json.dumps(data, allow_nan=False)
    assert json.loads(text) == data
    assert data['margin'] is None and data['score'] is None
    assert data['position_m'] is None and data['box_m'] is None and data['points'] == 0
    assert data['masks'] == [{'label': 1, 'score': None}]
    none = result(0, 0, margin=None, candidates=())
    assert none.to_json()['best_label'] == 0 and none.to_json()['masks'] == []

import math

import numpy as np
import pytest

from depthclip_ros.geometry import (
    backproject,
    Intrinsics,
    metric_scale,
    pixel_rays,
    project,
    valid_depth_mask,
)

K = Intrinsics(fx=500.0, fy=400.0, cx=320.0, cy=240.0, width=640, height=480)


def test_resize_scales_fx_cx_by_sx_and_fy_cy_by_sy():
    half = K.resized(240, 160)  # sx = 0.25, sy = 0.5
    assert (half.fx, half.cx, half.fy, half.cy) == (125.0, 80.0, 200.0, 120.0)
    assert half.size == (240, 160)


def test_crop_shifts_principal_point_and_keeps_focal():
    crop = K.cropped(left=60, top=56, width=544, height=416)
    assert (crop.fx, crop.fy, crop.cx, crop.cy) == (500.0, 400.0, 260.0, 184.0)
    with pytest.raises(ValueError, match='outside'):
        K.cropped(100, 0, 600, 480)


def test_mean_focal_and_metric_scale():
    assert K.mean_focal == 450.0
    assert metric_scale(K, 225.0) == 2.0
    with pytest.raises(ValueError):
        metric_scale(K, 0.0)


@pytest.mark.parametrize('bad', [dict(fx=0.0), dict(fy=-1.0), dict(cx=math.nan),
                                 dict(fx=math.inf), dict(width=0), dict(height=2.5)])
def test_bad_intrinsics_are_rejected(bad):
    values = dict(fx=1.0, fy=1.0, cx=0.0, cy=0.0, width=4, height=3)
    values.update(bad)
    with pytest.raises(ValueError):
        Intrinsics(**values)


def test_backproject_hand_computed_points():
    depth = np.full((480, 640), 2.0, dtype=np.float32)
    cloud = backproject(depth, K)
    assert cloud.shape == (480, 640, 3) and cloud.dtype == np.float32
    # The principal point lies on the optical axis.
    np.testing.assert_allclose(cloud[240, 320], [0.0, 0.0, 2.0])
    # u = 420, v = 40: x = (420 - 320) * 2 / 500 = 0.4, y = (40 - 240) * 2 / 400 = -1.0
    np.testing.assert_allclose(cloud[40, 420], [0.4, -1.0, 2.0], rtol=1e-6)
    # z is z-depth, not ray length.
    assert np.all(cloud[..., 2] == 2.0)


def test_backproject_project_round_trip():
    rng = np.random.default_rng(1)
    depth = rng.uniform(0.5, 8.0, (480, 640)).astype(np.float32)
    cloud = backproject(depth, K)
    uv = project(cloud, K)
    v, u = np.mgrid[0:480, 0:640]
    np.testing.assert_allclose(uv[..., 0], u, atol=2e-3)
    np.testing.assert_allclose(uv[..., 1], v, atol=2e-3)


def test_resize_consistency_of_rays():
    # The same scene point seen in the full image and in a 2x smaller copy lies on the
    # same ray: pixel (2u + 0.5 - 0.5) ~ u under plain scaling of fx, cx.
    small = K.resized(240, 320)
    x_full, y_full = pixel_rays(K)
    x_small, y_small = pixel_rays(small)
    np.testing.assert_allclose(x_small[0], x_full[0, ::2], atol=1e-6)
    np.testing.assert_allclose(y_small[:, 0], y_full[::2, 0], atol=1e-6)


def test_invalid_depths_become_nan_and_range_limits():
    depth = np.array([[1.0, 0.0, -1.0], [np.nan, np.inf, 20.0]], dtype=np.float32)
    camera = Intrinsics(1.0, 1.0, 1.0, 0.5, 3, 2)
    cloud = backproject(depth, camera, min_depth_m=0.5, max_depth_m=10.0)
    finite = np.isfinite(cloud).all(axis=-1)
    assert finite.tolist() == [[True, False, False], [False, False, False]]
    assert np.isnan(cloud[~finite]).all()
    mask = valid_depth_mask(depth, 0.5, 30.0)
    assert mask.tolist() == [[True, False, False], [False, False, True]]


def test_stride_keeps_every_nth_row_and_column():
    depth = np.arange(1, 481 * 640 + 1, dtype=np.float32)[:480 * 640].reshape(480, 640)
    cloud = backproject(depth, K, stride=4)
    assert cloud.shape == (120, 160, 3)
    np.testing.assert_array_equal(cloud[..., 2], depth[::4, ::4])
    np.testing.assert_allclose(cloud[3, 5], backproject(depth, K)[12, 20])


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match='2-D'):
        backproject(np.zeros((4, 4, 1)), K)
    with pytest.raises(ValueError, match='intrinsics are for 640x480'):
        backproject(np.zeros((10, 10)), K)
    with pytest.raises(ValueError, match='stride'):
        backproject(np.zeros((480, 640)), K, stride=0)


def test_intrinsics_from_hfov():
    from depthclip_ros.geometry import intrinsics_from_hfov
    camera = intrinsics_from_hfov(480, 640, 90.0)  # tan(45 deg) = 1: focal = width / 2
    assert camera.fx == pytest.approx(320.0) and camera.fy == camera.fx
    assert (camera.cx, camera.cy, camera.size) == (319.5, 239.5, (480, 640))
    for bad in (0.0, 180.0, -5.0):
        with pytest.raises(ValueError, match='field of view'):
            intrinsics_from_hfov(480, 640, bad)

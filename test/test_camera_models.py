"""CameraInfo read as image_geometry reads it (ROI, binning, K or P), implausible or
non-finite calibrations refused with their numbers, non-finite depth never valid."""

import math

from hypothesis import given, settings
from hypothesis import strategies as st
import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo

from depthclip_ros.geometry import project
from depthclip_ros.ros.messages import (
    camera_info_for,
    CameraInfoError,
    depth_from_image,
    depth_image,
    image_size_of,
    intrinsics_from_camera_info,
)
from depthclip_ros.ros.pipeline import DepthPipeline, OutputSettings

from rosutil import camera_info, rgb8_image


def calibrated(width=128, height=96, fx=100.0, fy=100.0, cx=64.0, cy=48.0, **fields):
    msg = camera_info(height, width, fx, fy, cx, cy)
    for name, value in fields.items():
        if name.startswith('roi_'):
            setattr(msg.roi, name[4:], value)
        else:
            setattr(msg, name, value)
    return msg


def test_roi_keeps_the_focal_and_shifts_the_principal_point():
    # the case: a 64x48 ROI of a 128x96 calibration used to halve the focal
    msg = calibrated(roi_x_offset=32, roi_y_offset=24, roi_width=64, roi_height=48)
    assert image_size_of(msg) == (48, 64)
    camera = intrinsics_from_camera_info(msg, 48, 64)
    assert (camera.fx, camera.fy, camera.cx, camera.cy) == (100.0, 100.0, 32.0, 24.0)


def test_binning_divides_focal_and_principal_point():
    msg = calibrated(binning_x=2, binning_y=2)
    assert image_size_of(msg) == (48, 64)
    camera = intrinsics_from_camera_info(msg, 48, 64)
    assert (camera.fx, camera.fy, camera.cx, camera.cy) == (50.0, 50.0, 32.0, 24.0)
    # binning alone used to be refused with an aspect-ratio message; a 2x1 binning changes
    # the aspect and is still read right
    msg = calibrated(binning_x=2, binning_y=1)
    camera = intrinsics_from_camera_info(msg, 96, 64)
    assert (camera.fx, camera.fy, camera.cx, camera.cy) == (50.0, 100.0, 32.0, 48.0)


def test_roi_and_binning_apply_to_p_as_to_k():
    msg = calibrated(roi_x_offset=16, roi_y_offset=8, roi_width=96, roi_height=72,
                     binning_x=2, binning_y=2)
    msg.p = [90.0, 0.0, 60.0, -9.0, 0.0, 90.0, 44.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    camera = intrinsics_from_camera_info(msg, 36, 48, 'P')
    assert (camera.fx, camera.fy, camera.cx, camera.cy) == (45.0, 45.0, 22.0, 18.0)
    out = camera_info_for(camera, msg.header, msg)
    assert out.p[3] == pytest.approx(-4.5)  # Tx = -fx * baseline follows the focal
    assert (out.roi.width, out.binning_x, out.width, out.height) == (0, 0, 48, 36)


@settings(max_examples=200, deadline=None)
@given(width=st.integers(16, 2000), height=st.integers(16, 2000),
       bx=st.integers(0, 4), by=st.integers(0, 4), data=st.data())
def test_every_roi_and_binning_projects_like_image_geometry(width, height, bx, by, data):
    """A 3-D point lands on the same pixel of the published image whether projected with
    our intrinsics or, as image_geometry defines it, with the full calibration and then
    shifted by the ROI offset and divided by the binning."""
    x0 = data.draw(st.integers(0, width - 8))
    y0 = data.draw(st.integers(0, height - 8))
    roi_w = data.draw(st.integers(8, width - x0))
    roi_h = data.draw(st.integers(8, height - y0))
    fx = data.draw(st.floats(0.3, 3.0)) * width
    fy = fx * data.draw(st.floats(0.8, 1.25))
    cx, cy = width * data.draw(st.floats(0.3, 0.7)), height * data.draw(st.floats(0.3, 0.7))
    msg = calibrated(width, height, fx, fy, cx, cy, roi_x_offset=x0, roi_y_offset=y0,
                     roi_width=roi_w, roi_height=roi_h, binning_x=bx, binning_y=by)
    bx, by = bx or 1, by or 1
    size = (roi_h // by, roi_w // bx)
    if 0 in size:
        with pytest.raises(CameraInfoError, match='binning'):
            intrinsics_from_camera_info(msg, 8, 8)
        return
    assert image_size_of(msg) == size
    try:
        camera = intrinsics_from_camera_info(msg, *size)
    except CameraInfoError as error:  # only the plausibility rule may refuse here
        assert 'implausible' in str(error)
        return
    point = np.array([0.3, -0.2, 2.0])
    full = np.array([fx * point[0] / point[2] + cx, fy * point[1] / point[2] + cy])
    expected = (full - [x0, y0]) / [bx, by]
    np.testing.assert_allclose(project(point, camera), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize('change, words', [
    (dict(fx=1.0, fy=1.0), 'fx=1 px'),  # orders of magnitude below the image size
    (dict(fx=1e6, fy=1e6), 'fx=1e+06 px'),
    (dict(fx=100.0, fy=1000.0), 'differ by more than 3x'),
    (dict(cx=5000.0), 'principal point (5000, 48)'),
    (dict(cy=-400.0), 'principal point (64, -400)'),
])
def test_implausible_intrinsics_are_refused_with_the_numbers(change, words):
    with pytest.raises(CameraInfoError, match='implausible') as error:
        intrinsics_from_camera_info(calibrated(**change), 96, 128)
    assert words in str(error.value)


@pytest.mark.parametrize('field', ['d', 'r', 'p', 'k'])
def test_non_finite_values_in_any_used_or_copied_field_are_refused(field):
    msg = calibrated()
    msg.d = [0.0] * 5
    values = list(getattr(msg, field))
    values[-1] = math.nan if field != 'k' else math.inf
    setattr(msg, field, values)
    with pytest.raises(CameraInfoError, match='non-finite'):
        intrinsics_from_camera_info(msg, 96, 128)


def test_roi_outside_the_calibrated_image_is_refused():
    msg = calibrated(roi_x_offset=100, roi_width=64, roi_height=48)
    with pytest.raises(CameraInfoError, match='does not lie inside'):
        intrinsics_from_camera_info(msg, 48, 64)


def test_non_finite_depth_is_never_published_as_valid():
    depth = np.array([[1.0, np.inf], [-np.inf, -2.0], [0.0, np.nan]], dtype=np.float32)
    out = depth_from_image(depth_image(depth, CameraInfo().header))
    assert out[0, 0] == 1.0 and np.isnan(out.reshape(-1)[1:]).all()


def test_the_pipeline_uses_roi_intrinsics_for_metric_depth(small_engine):
    """The same 64x48 pixels with a ROI CameraInfo and with its plain equivalent give the
    same depth (the ROI used to halve the focal, so depth came out half)."""
    rgb = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    with_roi = DepthPipeline(small_engine, OutputSettings())
    with_roi.on_camera_info(calibrated(roi_x_offset=32, roi_y_offset=24, roi_width=64,
                                       roi_height=48))
    plain = DepthPipeline(small_engine, OutputSettings())
    plain.on_camera_info(calibrated(64, 48, 100.0, 100.0, 32.0, 24.0))
    a = depth_from_image(with_roi.process(rgb8_image(rgb)).depth)
    b = depth_from_image(plain.process(rgb8_image(rgb)).depth)
    np.testing.assert_array_equal(a, b)


def test_camera_info_memory_is_bounded_under_ever_new_sizes(small_engine):
    pipeline = DepthPipeline(small_engine, OutputSettings())
    for i in range(200):
        pipeline.on_camera_info(calibrated(64 + 2 * i, 48 + 2 * i, 60.0 + i, 60.0 + i,
                                           32.0 + i, 24.0 + i))
    assert len(pipeline._infos) <= 8
    assert pipeline.latest_info.width == 64 + 2 * 199

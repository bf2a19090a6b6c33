"""The per-frame pipeline shared by the node and the bag tool, without ROS running
(CPU, random weights)."""

import math

import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage

from depthclip_ros.geometry import Intrinsics
from depthclip_ros.ros.messages import cloud_array, depth_from_image
from depthclip_ros.ros.pipeline import DepthPipeline, FrameRejected, OutputSettings, Wanted
from depthclip_ros.timing import StageTimer, Throttle

from rosutil import camera_info, rgb8_image

H, W = 48, 64
CAMERA = Intrinsics(60.0, 62.0, 31.5, 23.5, W, H)


def rgb(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def pipeline(engine, warnings=None, **settings):
    out = DepthPipeline(engine, OutputSettings(**settings),
                        topics={'image': '/cam/image', 'camera_info': '/cam/camera_info'},
                        warn=(warnings.append if warnings is not None else None))
    out.on_camera_info(camera_info(H, W, CAMERA.fx, CAMERA.fy, CAMERA.cx, CAMERA.cy))
    return out


def test_outputs_equal_the_engine_and_carry_the_header(small_engine):
    image = rgb8_image(rgb(), frame_id='cam', sec=7)
    timer = StageTimer()
    out = pipeline(small_engine, cloud_rgb=True, cloud_stride=2).process(image, timer=timer)
    depth = depth_from_image(out.depth)
    np.testing.assert_allclose(depth, small_engine.predict(rgb(), CAMERA), rtol=1e-6)
    for msg in (out.depth, out.camera_info, out.points):
        assert msg.header == image.header
    assert out.colormap is None
    assert list(out.camera_info.k) == pytest.approx(list(CAMERA.matrix().ravel()))
    cloud = cloud_array(out.points)
    assert cloud.shape == (H // 2, W // 2) and 'rgb' in cloud.dtype.names
    assert {'decode', 'network', 'messages', 'cloud'} <= set(timer.samples)


def test_only_wanted_outputs_are_built(small_engine):
    out = pipeline(small_engine).process(rgb8_image(rgb()),
                                         Wanted(depth=False, camera_info=False, points=True))
    assert out.depth is None and out.camera_info is None and out.points is not None
    out = pipeline(small_engine).process(rgb8_image(rgb()),
                                         Wanted(points=False, colormap=True))
    assert out.points is None and out.colormap.encoding == 'rgb8'


def test_output_size_scales_depth_and_its_camera_info(small_engine):
    out = pipeline(small_engine, output_size=(24, 32)).process(rgb8_image(rgb()))
    assert (out.depth.height, out.depth.width) == (24, 32)
    assert out.camera_info.k[0] == pytest.approx(CAMERA.fx / 2)


def test_rejections_name_the_problem_and_the_topic(small_engine):
    bad = rgb8_image(rgb())
    bad.encoding = 'xyz'
    with pytest.raises(FrameRejected, match='bad image on /cam/image: unsupported encoding'):
        pipeline(small_engine).process(bad)
    with pytest.raises(FrameRejected, match='bad image on image/compressed: cannot decode'):
        pipeline(small_engine).process(CompressedImage(format='jpeg', data=b'\x00' * 9))
    fresh = DepthPipeline(small_engine, topics={'camera_info': '/cam/camera_info'})
    with pytest.raises(FrameRejected, match='/cam/camera_info: no CameraInfo received yet'):
        fresh.process(rgb8_image(rgb()))
    fresh.on_camera_info(camera_info(H, W, 0.0, 0.0, 0.0, 0.0))
    with pytest.raises(FrameRejected, match='uncalibrated'):
        fresh.process(rgb8_image(rgb()))


def test_fallback_fov_without_camera_info(small_engine):
    p = DepthPipeline(small_engine, OutputSettings(fallback_hfov_deg=90.0))
    out = p.process(rgb8_image(rgb()))
    assert out.camera_info.k[0] == pytest.approx(W / 2 / math.tan(math.radians(45)))


def test_warnings_for_frames_that_are_still_processed(small_engine):
    warnings = []
    p = pipeline(small_engine, warnings)
    p.process(rgb8_image(rgb(), sec=10))
    p.process(rgb8_image(rgb(), sec=5))  # a bag loop
    assert any('stamps went backwards on /cam/image' in w for w in warnings)
    p.process(rgb8_image(rgb(), frame_id='', sec=11))
    assert any('empty frame_id on /cam/image' in w for w in warnings)
    distorted = camera_info(H, W, 60.0, 62.0, 31.5, 23.5)
    distorted.d = [0.1, -0.02, 0.0, 0.0, 0.0]
    p.on_camera_info(distorted)
    assert any("/cam/camera_info has distortion model 'plumb_bob' with non-zero" in w
               for w in warnings)
    distorted.distortion_model = 'Brown Conrady'
    p.on_camera_info(distorted)
    assert any("unknown distortion model 'Brown Conrady'" in w for w in warnings)
    count = len(warnings)
    rectified = pipeline(small_engine, warnings, intrinsics_source='P')
    rectified.on_camera_info(distorted)  # a rectified image has no distortion left
    assert len(warnings) == count


def test_throttle_is_per_kind_of_message_and_bounded():
    now = [0.0]
    throttle = Throttle(5.0, max_kinds=3, clock=lambda: now[0])
    assert throttle('data has 10 bytes, expected 20')
    assert not throttle('data has 12 bytes, expected 24')  # same kind, numbers differ
    assert throttle('no CameraInfo received yet')  # another kind is not hidden
    now[0] = 5.0
    assert throttle('data has 11 bytes, expected 20')
    # input text in quotes is not a new kind: a stream of bogus encodings logs once
    assert throttle("unsupported encoding 'a1'")
    assert not any(throttle(f'unsupported encoding {name!r}') for name in ('b', 'c"', 'x y'))
    assert not throttle('unsupported encoding "double quoted"')
    # ever-new kinds beyond max_kinds share one overflow kind: bounded memory and log rate
    shown = [throttle(f'problem number {i} of kind {chr(65 + i)}') for i in range(26)]
    assert len(throttle._last) <= 4 and sum(shown) <= 2

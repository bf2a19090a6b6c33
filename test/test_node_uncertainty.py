"""depth_node's depth/uncertainty, its confidence-filtered cloud and scene-adaptive bins
over real rclpy / Fast DDS (CPU, random weights: the scenes chosen mean nothing; these
tests check the plumbing, the filter and the live configuration)."""

import numpy as np
import pytest
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image

from depthclip_ros.ros.messages import cloud_array, depth_from_image

from rosutil import serving, Spinner, wait_for
from test_node import FX, FY, H, Harness, W

BATHROOM = [1.00, 1.25, 1.50, 1.75, 2.00, 2.25, 2.50]
FAR = [2.00, 2.50, 3.00, 3.25, 3.50, 3.75, 4.00]
SCENES = [Parameter('scene_names', value=['bathroom', 'street']),
          Parameter('scene_bins_m', value=BATHROOM + FAR),
          Parameter('bins_mode', value='scene_soft')]


def diagnostics_of(h, store):
    from diagnostic_msgs.msg import DiagnosticArray

    h.peer.create_subscription(DiagnosticArray, '/diagnostics', store.append, 10)

    def latest():
        found = [s for a in store for s in a.status
                 if s.name == f'{h.namespace}/depth_node: depth'
                 and any(kv.key == 'frames processed' and kv.value != '0' for kv in s.values)]
        return {kv.key: kv.value for kv in found[-1].values} if found else None
    return latest


def test_uncertainty_topic_filtered_cloud_and_scene_diagnostics(ros):
    h = Harness(ros, 'sigma', [*SCENES, Parameter('scene_every_n_frames', value=1)])
    sigmas, diagnostics = [], []
    h.subscribe(Image, 'depth/uncertainty', sigmas)
    latest = diagnostics_of(h, diagnostics)
    spinner = Spinner(ros, h.node, h.peer)
    try:
        assert h.connected()
        assert wait_for(lambda: h.node.streams[0].pub_uncertainty.get_subscription_count() > 0, 30)
        h.output_for(99)
        assert wait_for(lambda: [m for m in sigmas if m.header.stamp.sec == 99], 30)
        # a limit that splits this camera's frames, set live
        limit = float(np.median(depth_from_image(sigmas[-1])))
        [result] = h.node.set_parameters([Parameter('max_uncertainty_m', value=limit)])
        assert result.successful
        out = h.output_for(100)
        assert wait_for(lambda: [m for m in sigmas if m.header.stamp.sec == 100], 30)
        message = [m for m in sigmas if m.header.stamp.sec == 100][0]
        info = out['depth/camera_info']
        assert message.encoding == '32FC1' and message.header == out['depth/image'].header
        assert (message.height, message.width) == (info.height, info.width) == (H, W)
        sigma = depth_from_image(message)
        assert np.isfinite(sigma).all() and sigma.min() >= 0
        # the cloud: NaN exactly where sigma exceeds the limit, the depth elsewhere
        cloud = cloud_array(out['points'])
        depth = depth_from_image(out['depth/image'])
        dropped = sigma > limit
        assert 0.1 < dropped.mean() < 0.9, 'the limit should split this frame'
        assert np.isnan(cloud['z'][dropped]).all()
        np.testing.assert_allclose(cloud['z'][~dropped], depth[~dropped], rtol=1e-6)
        # the same frame through the engine: the scene's bins were used
        prediction = h.node.engine.infer(
            _rgb(100), _camera(), uncertainty=True)
        np.testing.assert_allclose(sigma, prediction.sigma, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(depth, prediction.depth, rtol=1e-5, atol=1e-6)
        assert wait_for(lambda: latest() and 'scene' in latest(), 30)
        values = latest()
        assert values['bins mode'] == 'scene_soft'
        assert values['scene'] == prediction.scene.chosen
        assert values['scene probabilities'].startswith('bathroom ')
        # the median over recent frames of each frame's median over the token grid (frames
        # may have been processed since that status: within their range, printed to 1 mm)
        recent = list(h.node.streams[0].sigma_median_m)
        assert any(m == pytest.approx(prediction.sigma_median_m, rel=1e-5) for m in recent)
        reported = float(values['depth uncertainty median (m)'])
        assert min(recent) - 5e-4 <= reported <= max(recent) + 5e-4
    finally:
        spinner.stop()
        h.close()


def _rgb(sec):
    return np.random.default_rng(sec).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _camera():
    from depthclip_ros.geometry import Intrinsics

    from test_node import CX, CY
    return Intrinsics(FX, FY, CX, CY, W, H)


def test_no_uncertainty_work_without_a_subscriber_or_a_filter(harness, monkeypatch):
    asked = []
    real = harness.node.engine.infer_frames

    def infer_frames(frames, *args, **kwargs):
        asked.extend(frame.uncertainty for frame in frames)
        return real(frames, *args, **kwargs)

    monkeypatch.setattr(harness.node.engine, 'infer_frames', infer_frames)
    harness.output_for(100)
    assert asked and not any(asked)


def test_scene_settings_apply_live_once_their_counts_agree(harness):
    node = harness.node
    harness.output_for(100)
    assert node.engine.head.bins_mode == 'fixed'
    # one at a time, as `ros2 param load` does: the mode first, the lists after
    for parameter in reversed(SCENES):
        [result] = node.set_parameters([parameter])
        assert result.successful, result.reason
        if parameter.name != 'scene_names':
            assert node._head_mismatch is not None
    assert node._head_mismatch is None
    harness.output_for(101)
    head = node.engine.head
    assert head.bins_mode == 'scene_soft' and head.scene_bin_sets == (tuple(BATHROOM),
                                                                      tuple(FAR))
    # a wrong value is refused outright, whatever the counts
    [result] = node.set_parameters([Parameter('scene_bins_m', value=BATHROOM + FAR[::-1])])
    assert not result.successful and 'strictly increasing' in result.reason
    [result] = node.set_parameters([Parameter('scene_prompt_template', value='{} {}')])
    assert not result.successful and 'one plain field' in result.reason
    [result] = node.set_parameters([Parameter('max_uncertainty_m', value=-1.0)])
    assert not result.successful


@pytest.fixture
def harness(ros):
    with serving(ros, Harness(ros, 'scenes')) as h:
        yield h

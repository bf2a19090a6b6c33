"""Scene-adaptive bins and the uncertainty outputs through the engine's configuration, the
parameter rules, the tools' options and the per-frame pipeline (no ROS spinning; CPU,
random weights: the scenes chosen mean nothing, these tests check the mechanism)."""

import argparse
from pathlib import Path

import numpy as np
import pytest
import yaml

from depthclip_ros.engine.config import head_with, HeadConfig, mix_bins, PAPER_DEPTH_BINS_M
from depthclip_ros.engine.scenes import SceneClassifier
from depthclip_ros.geometry import Intrinsics
from depthclip_ros.ros.configs import count_mismatch, head_from_parameters
from depthclip_ros.ros.messages import cloud_array, depth_from_image
from depthclip_ros.ros.parameters import PARAMETERS, validate
from depthclip_ros.ros.pipeline import DepthPipeline, OutputSettings, Wanted
from depthclip_ros.timing import StageTimer
from depthclip_ros.tools.common import add_model_arguments, configs_from_args

from rosutil import camera_info, rgb8_image

EXAMPLE = Path(__file__).resolve().parents[1] / 'config' / 'scene_bins_example.yaml'
BATHROOM = (1.00, 1.25, 1.50, 1.75, 2.00, 2.25, 2.50)
FAR = (2.00, 2.50, 3.00, 3.25, 3.50, 3.75, 4.00)
TWO_SCENES = dict(scene_names=('bathroom', 'street'), scene_bins_m=BATHROOM + FAR)
H, W = 48, 64
CAMERA = Intrinsics(60.0, 62.0, 31.5, 23.5, W, H)
DEFAULTS = {p.name: p.default for p in PARAMETERS}


def rgb(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def pipeline(engine, **settings):
    out = DepthPipeline(engine, OutputSettings(**settings))
    out.on_camera_info(camera_info(H, W, CAMERA.fx, CAMERA.fy, CAMERA.cx, CAMERA.cy))
    return out


@pytest.fixture
def scene_engine(small_engine):
    """The small engine with two scenes, soft mixing; restored afterwards."""
    before = small_engine.head
    small_engine.set_head(head_with(before, bins_mode='scene_soft', **TWO_SCENES))
    yield small_engine
    small_engine.set_head(before)


# ---------------------------------------------------------------- configuration rules
@pytest.mark.parametrize('changes, problem', [
    (dict(bins_mode='scenes'), 'bins_mode must be one of'),
    (dict(bins_mode='scene_soft'), 'at least 2 scene names'),
    (dict(bins_mode='scene_hard', scene_names=('a',), scene_bins_m=BATHROOM), 'at least 2'),
    (dict(bins_mode='scene_hard', scene_names=tuple('abcdefghijklmnopqrstuvwxyz0123456789'),
          scene_bins_m=BATHROOM * 36), 'at most 32'),
    (dict(bins_mode='scene_soft', scene_names=('a', 'a'), scene_bins_m=BATHROOM * 2),
     'unique'),
    (dict(bins_mode='scene_soft', scene_names=('a', ' '), scene_bins_m=BATHROOM * 2),
     'non-empty'),
    (dict(bins_mode='scene_soft', scene_names=('a', 'b'), scene_bins_m=BATHROOM),
     '14 values in all; got 7'),
    (dict(bins_mode='scene_soft', scene_names=('a', 'b'), scene_bins_m=BATHROOM + BATHROOM[::-1]),
     "scene 'b' must be finite, > 0 and strictly increasing"),
    (dict(bins_mode='scene_soft', scene_prompt_template='a {} {}', **TWO_SCENES),
     'exactly one plain field'),
    (dict(bins_mode='scene_soft', scene_prompt_template='a {0}', **TWO_SCENES),
     'exactly one plain field'),
    (dict(bins_mode='scene_soft', scene_prompt_template='a {:>99999}', **TWO_SCENES),
     'exactly one plain field'),
])
def test_scene_settings_are_checked_when_they_are_used(changes, problem):
    with pytest.raises(ValueError, match=problem):
        HeadConfig(**changes)


def test_fixed_mode_keeps_but_ignores_the_scene_settings():
    head = HeadConfig(scene_names=('a',), scene_bins_m=(1.0,))
    assert head.bins_mode == 'fixed' and head.scene_bin_sets == ()
    head = HeadConfig(bins_mode='scene_hard', **TWO_SCENES)
    assert head.scene_bin_sets == (BATHROOM, FAR)
    assert head.scene_prompts() == ['a photo of a bathroom.', 'a photo of a street.']


def test_scene_prompts_must_fit_the_text_encoder(small_engine):
    head = HeadConfig(bins_mode='scene_soft', scene_names=('a', 'a b ' * 45),
                      scene_bins_m=BATHROOM * 2)
    with pytest.raises(ValueError, match='scene prompt'):
        small_engine.check_head(head)


@pytest.mark.parametrize('values, problem', [
    ({'scene_names': ['kitchen', '']}, 'non-empty'),
    ({'scene_bins_m': [1.0, float('nan')]}, 'finite'),
    ({'scene_bins_m': [1.0, -2.0]}, '> 0'),
    ({'scene_bins_m': [1, 2]}, 'list of float'),
    ({'bins_mode': 'soft'}, 'one of'),
    ({'scene_every_n_frames': 0}, 'scene_every_n_frames'),
    ({'max_uncertainty_m': -1.0}, 'max_uncertainty_m'),
    ({'max_uncertainty_m': float('inf')}, 'max_uncertainty_m'),
])
def test_parameter_rules(values, problem):
    with pytest.raises(ValueError, match=problem):
        validate(values)


def test_counts_may_disagree_for_a_while_but_not_values():
    """What the node accepts one parameter at a time (``ros2 param load``) and holds as
    pending until the counts agree."""
    values = dict(DEFAULTS, bins_mode='scene_soft')
    assert 'needs at least 2 names' in count_mismatch(values)
    values.update(scene_names=['bathroom', 'street'])
    assert 'needs at least 2 names and 7 bins per name' in count_mismatch(values)
    values.update(scene_bins_m=list(BATHROOM + FAR))
    assert count_mismatch(values) is None
    assert head_from_parameters(values).scene_bin_sets == (BATHROOM, FAR)
    assert count_mismatch(dict(values, distance_prompts=['near', 'far'])) is not None
    # fixed mode never waits on the scene lists
    assert count_mismatch(dict(values, bins_mode='fixed', scene_bins_m=[1.0])) is None


def test_the_example_config_is_valid_and_marked_unvalidated():
    text = EXAMPLE.read_text()
    assert 'NOT VALIDATED' in text
    parameters = yaml.safe_load(text)['/**']['ros__parameters']
    assert set(parameters) <= {p.name for p in PARAMETERS}
    validate(parameters)
    head = head_from_parameters(dict(DEFAULTS, **parameters))
    assert head.bins_mode == 'scene_soft'
    assert BATHROOM in head.scene_bin_sets and tuple(PAPER_DEPTH_BINS_M) in head.scene_bin_sets
    # the scene lists come before the mode: loaded one at a time, never half-configured
    keys = list(parameters)
    assert keys.index('bins_mode') > max(keys.index('scene_names'),
                                         keys.index('scene_bins_m'))


def tool_args(*argv):
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    return parser.parse_args(list(argv))


def test_tools_read_the_scene_config_and_options_win():
    _, head = configs_from_args(tool_args('--scene-config', str(EXAMPLE)))
    assert head.bins_mode == 'scene_soft' and head.scene_names[0] == 'bathroom'
    _, head = configs_from_args(tool_args('--scene-config', str(EXAMPLE),
                                          '--bins-mode', 'scene_hard'))
    assert head.bins_mode == 'scene_hard'
    _, head = configs_from_args(tool_args('--bins-mode', 'scene_soft', '--scene-names', 'a',
                                          'b', '--scene-bins-m', *map(str, BATHROOM + FAR)))
    assert head.scene_bin_sets == (BATHROOM, FAR)
    _, head = configs_from_args(tool_args())
    assert head.bins_mode == 'fixed'


def test_a_bad_scene_config_is_one_clear_error(tmp_path):
    broken = tmp_path / 'broken.yaml'
    broken.write_text('/**:\n  ros__parameters:\n    scene_bins_m: [1.0, -1.0]\n')
    with pytest.raises(ValueError, match='scene_bins_m'):
        configs_from_args(tool_args('--scene-config', str(broken)))
    with pytest.raises(ValueError, match='no "<node>: ros__parameters:" section'):
        (tmp_path / 'plain.yaml').write_text('scene_names: [a, b]\n')
        configs_from_args(tool_args('--scene-config', str(tmp_path / 'plain.yaml')))
    with pytest.raises(ValueError, match='cannot be read'):
        configs_from_args(tool_args('--scene-config', str(tmp_path / 'missing.yaml')))


# ---------------------------------------------------------------- the pipeline
def test_scene_bins_are_mixed_from_the_frames_scene_probabilities(scene_engine):
    image = rgb(1)
    out = pipeline(scene_engine).process(rgb8_image(image))
    expected = SceneClassifier(scene_engine).classify(image, TWO_SCENES['scene_names'])
    assert out.scene.as_dict() == pytest.approx(expected.as_dict(), rel=1e-6)
    bins = mix_bins(expected, (BATHROOM, FAR), 'scene_soft')
    assert out.bins_m == pytest.approx(bins, rel=1e-6)
    assert not np.allclose(bins, BATHROOM) and not np.allclose(bins, FAR)
    depth = depth_from_image(out.depth)
    np.testing.assert_allclose(depth, scene_engine.infer(image, CAMERA, bins_m=bins).depth,
                               rtol=1e-5)


def test_hard_mode_uses_the_most_likely_scenes_bins(scene_engine):
    scene_engine.set_head(head_with(scene_engine.head, bins_mode='scene_hard'))
    out = pipeline(scene_engine).process(rgb8_image(rgb(2)))
    chosen = dict(zip(TWO_SCENES['scene_names'], (BATHROOM, FAR)))[out.scene.chosen]
    assert out.bins_m == chosen
    np.testing.assert_allclose(depth_from_image(out.depth),
                               scene_engine.infer(rgb(2), CAMERA, bins_m=chosen).depth,
                               rtol=1e-5)


def test_the_scene_is_classified_every_n_frames(scene_engine, monkeypatch):
    calls = []
    real = SceneClassifier.classify

    def counted(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SceneClassifier, 'classify', counted)
    frames = pipeline(scene_engine, scene_every_n_frames=3)
    timers = [StageTimer() for _ in range(7)]
    for seed, timer in enumerate(timers):
        frames.process(rgb8_image(rgb(seed)), Wanted(points=False), timer)
    assert len(calls) == 3  # frames 0, 3 and 6
    assert ['scene' in t.samples for t in timers] == [True, False, False] * 2 + [True]
    # new scene names: classified again at once
    scene_engine.set_head(head_with(scene_engine.head, scene_names=('kitchen', 'garden')))
    out = frames.process(rgb8_image(rgb(9)), Wanted(points=False))
    assert len(calls) == 4 and out.scene.names == ('kitchen', 'garden')


def test_fixed_mode_classifies_nothing(small_engine, monkeypatch):
    monkeypatch.setattr(SceneClassifier, 'classify',
                        lambda *a, **k: pytest.fail('classified in fixed mode'))
    out = pipeline(small_engine).process(rgb8_image(rgb()))
    assert out.scene is None and out.bins_m == tuple(PAPER_DEPTH_BINS_M)


def test_uncertainty_image_pairs_with_the_depth(small_engine):
    image = rgb8_image(rgb(3), frame_id='cam', sec=5)
    out = pipeline(small_engine, output_size=(24, 32)).process(
        image, Wanted(uncertainty=True))
    sigma = depth_from_image(out.uncertainty)
    assert out.uncertainty.encoding == '32FC1' and out.uncertainty.header == image.header
    assert (out.uncertainty.height, out.uncertainty.width) == \
        (out.camera_info.height, out.camera_info.width) == (24, 32)
    expected = small_engine.infer(rgb(3), CAMERA, (24, 32), uncertainty=True)
    np.testing.assert_allclose(sigma, expected.sigma, rtol=1e-6)
    assert out.sigma_median_m == pytest.approx(expected.sigma_median_m)
    assert pipeline(small_engine).process(image).uncertainty is None  # not wanted


def test_points_more_uncertain_than_the_limit_become_nan_and_the_rest_stay(small_engine):
    image = rgb(4)
    expected = small_engine.infer(image, CAMERA, uncertainty=True)
    limit = float(np.median(expected.sigma))
    plain = cloud_array(pipeline(small_engine).process(rgb8_image(image)).points)
    out = pipeline(small_engine, max_uncertainty_m=limit).process(
        rgb8_image(image), Wanted(uncertainty=False))
    cloud = cloud_array(out.points)
    dropped = expected.sigma > limit
    assert 0.2 < dropped.mean() < 0.8
    assert np.isnan(cloud['z'][dropped]).all()
    np.testing.assert_array_equal(cloud['z'][~dropped], plain['z'][~dropped])
    assert not np.isnan(plain['z']).any()
    assert out.uncertainty is None  # computed for the filter, published only if wanted


def test_the_engine_alone_classifies_each_images_scene(scene_engine):
    """``infer``/``predict`` without bins, in a scene mode: the tools' path."""
    frames = np.stack([rgb(5), rgb(6)])
    batch = scene_engine.infer(frames, CAMERA)
    assert len(batch.scene) == 2
    for frame, scene, depth in zip(frames, batch.scene, batch.depth):
        expected = scene_engine.scene_classifier.classify(frame, TWO_SCENES['scene_names'])
        assert scene.as_dict() == pytest.approx(expected.as_dict(), rel=1e-6)
        bins = mix_bins(expected, (BATHROOM, FAR), 'scene_soft')
        np.testing.assert_allclose(depth, scene_engine.infer(frame, CAMERA, bins_m=bins).depth,
                                   rtol=1e-4, atol=1e-5)
    single = scene_engine.infer(rgb(5), CAMERA)
    assert single.scene.names == TWO_SCENES['scene_names']
    np.testing.assert_array_equal(scene_engine.predict(rgb(5), CAMERA), single.depth)
    assert scene_engine.infer(rgb(5), CAMERA, bins_m=BATHROOM).scene is None

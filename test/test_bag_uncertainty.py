"""``depthclip-ros bag`` with the depth uncertainty and scene-adaptive bins (CPU, random
weights: the tests check topics and values against the engine, never their meaning)."""

import argparse

import numpy as np
import pytest
import yaml

from depthclip_ros.bags.process import process_bag
from depthclip_ros.bags.topics import output_topics
from depthclip_ros.engine import scenes
from depthclip_ros.geometry import Intrinsics
from depthclip_ros.ros.messages import cloud_array, depth_from_image
from depthclip_ros.ros.pipeline import DepthPipeline, OutputSettings
from depthclip_ros.tools import bag as bag_tool
from depthclip_ros.tools.cli import main

from conftest import small_engine_for_tools
from test_bag import by_topic, frames, mcap_messages, stamp_of, stream, write_bag

FAST = ['--pretrained', 'none', '--device', 'cpu', '--input-size', '64', '96']
H, W = 48, 64
CAMERA = Intrinsics(60.0, 60.0, W / 2, H / 2, W, H)  # what stream() records
UNCERTAINTY = '/cam/depth/uncertainty'


@pytest.fixture
def tool_engine(monkeypatch, small_engine):
    """The bag tool loads the small engine with its options' head (restored after)."""
    restore = small_engine_for_tools(monkeypatch, small_engine, bag_tool)
    yield small_engine
    restore()


def image_array(msg) -> np.ndarray:
    assert msg.encoding == '32FC1' and msg.step == 4 * msg.width
    return np.frombuffer(bytes(msg.data), '<f4').reshape(msg.height, msg.width)


def test_the_uncertainty_topic_is_the_engines_sigma(small_engine, tmp_path):
    images = frames(2)
    source = write_bag(tmp_path / 'in', stream(images))
    report = process_bag(source, tmp_path / 'out', DepthPipeline(small_engine),
                         uncertainty=True)
    assert report.frames_written == 2
    assert report.output_topics['depth/uncertainty'] == UNCERTAINTY
    assert len(report.sigma_medians_m) == 2
    got = by_topic(mcap_messages(tmp_path / 'out'))
    assert len(got[UNCERTAINTY]) == 2 and '/cam/depth/camera_info' in got  # its pair
    for index, rgb in enumerate(images):
        image, message = got['/cam/image_raw'][index], got[UNCERTAINTY][index]
        assert message.log_time_ns == image.log_time_ns
        assert stamp_of(message.ros_msg) == stamp_of(image.ros_msg)
        assert message.ros_msg.header.frame_id == image.ros_msg.header.frame_id
        expected = small_engine.infer(rgb, CAMERA, uncertainty=True)
        np.testing.assert_allclose(image_array(message.ros_msg), expected.sigma, rtol=1e-5,
                                   atol=1e-7)
        np.testing.assert_allclose(depth_from_image(got['/cam/depth/image'][index].ros_msg),
                                   expected.depth, rtol=1e-5)
        assert report.sigma_medians_m[index] == pytest.approx(expected.sigma_median_m,
                                                              rel=1e-6)


def test_max_uncertainty_drops_exactly_the_points_above_it(small_engine, tmp_path):
    (rgb,) = frames(1, seed=3)
    expected = small_engine.infer(rgb, CAMERA, uncertainty=True)
    values = np.unique(expected.sigma)
    assert len(values) > 10
    middle = len(values) // 2
    limit = float((values[middle] + values[middle + 1]) / 2)  # between two values: no ties
    settings = OutputSettings(max_uncertainty_m=limit, min_depth_m=0.0, max_depth_m=1000.0)
    source = write_bag(tmp_path / 'in', stream([rgb]))
    process_bag(source, tmp_path / 'out', DepthPipeline(small_engine, settings))
    got = by_topic(mcap_messages(tmp_path / 'out'))
    assert UNCERTAINTY not in got  # filtering points does not publish the uncertainty
    points = cloud_array(got['/cam/points'][0].ros_msg)
    dropped = expected.sigma > limit
    assert 0 < dropped.sum() < dropped.size
    np.testing.assert_array_equal(np.isnan(points['z']), dropped)
    np.testing.assert_allclose(points['z'][~dropped], expected.depth[~dropped], rtol=1e-5)
    # the depth image itself keeps every pixel
    depth = depth_from_image(got['/cam/depth/image'][0].ros_msg)
    assert np.isfinite(depth).all()


def test_the_command_writes_the_uncertainty_and_classifies_every_n_frames(
        tmp_path, capsys, monkeypatch, tool_engine):
    source = write_bag(tmp_path / 'in', stream(frames(3)))
    config = tmp_path / 'scenes.yaml'
    config.write_text(yaml.safe_dump({'/**': {'ros__parameters': {
        'scene_names': ['bathroom', 'street'], 'bins_mode': 'scene_hard',
        'scene_bins_m': [1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5,
                         2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]}}}))
    calls = []
    real = scenes.SceneClassifier.classify

    def counted(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(scenes.SceneClassifier, 'classify', counted)
    out = tmp_path / 'out'
    assert main(['bag', str(source), str(out), '--uncertainty', '--max-uncertainty-m', '50',
                 '--scene-config', str(config), '--scene-every-n-frames', '2', *FAST]) == 0
    text = capsys.readouterr().out
    assert 'done: 3 of 3 frames with depth' in text
    assert len(calls) == 2  # frames 1 and 3
    assert 'bins: scene_hard, the scene classified every 2 frames; frames per chosen ' \
        'scene: ' in text
    assert 'depth uncertainty (median over the token grid' in text
    assert f'Image panel on /cam/depth/image, {UNCERTAINTY}, 3D panel on /cam/points' in text
    got = by_topic(mcap_messages(out))
    assert len(got[UNCERTAINTY]) == 3
    assert all(m.ros_msg.encoding == '32FC1' for m in got[UNCERTAINTY])


def test_without_the_option_there_is_no_uncertainty_topic():
    assert 'depth/uncertainty' not in output_topics('/cam', colormap=True, objects=True)
    assert output_topics('/cam', False, uncertainty=True)['depth/uncertainty'] == UNCERTAINTY


def bag_args(*extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bag_tool.add_arguments(parser)
    return parser.parse_args(['in', 'out', *extra])


def test_scene_every_n_frames_comes_from_the_option_the_file_or_the_node(tmp_path):
    config = tmp_path / 'scenes.yaml'
    config.write_text(yaml.safe_dump({'/**': {'ros__parameters': {
        'scene_every_n_frames': 3}}}))
    assert bag_tool.settings_from_args(bag_args()).scene_every_n_frames == 10
    assert bag_tool.settings_from_args(
        bag_args('--scene-config', str(config))).scene_every_n_frames == 3
    assert bag_tool.settings_from_args(
        bag_args('--scene-config', str(config), '--scene-every-n-frames', '5')
    ).scene_every_n_frames == 5
    settings = bag_tool.settings_from_args(bag_args('--max-uncertainty-m', '0.25'))
    assert settings.max_uncertainty_m == 0.25


@pytest.mark.parametrize('extra, problem', [
    (['--max-uncertainty-m', '-1'], '--max-uncertainty-m: max_uncertainty_m must be in'),
    (['--max-uncertainty-m', 'nan'], '--max-uncertainty-m: max_uncertainty_m'),
    (['--scene-every-n-frames', '0'], '--scene-every-n-frames: scene_every_n_frames'),
])
def test_bad_uncertainty_options_are_refused_before_anything(tmp_path, capsys, monkeypatch,
                                                             extra, problem):
    def no_model(args):
        raise AssertionError('the model was loaded before the refusal')

    monkeypatch.setattr(bag_tool, 'load_engine', no_model)
    source = write_bag(tmp_path / 'in', stream(frames(1)))
    assert main(['bag', str(source), str(tmp_path / 'out'), *extra, *FAST]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith('depthclip-ros bag: ') and problem in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ['in']

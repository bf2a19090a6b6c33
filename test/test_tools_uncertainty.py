"""``infer`` and ``bench`` with the depth uncertainty and scene-adaptive bins (CPU, random
weights: the values mean nothing, these tests check that the files carry exactly what the
engine computes).

The tools load the session's small engine with the head their options describe (restored
afterwards), so the options' path into the engine is the real one.
"""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from depthclip_ros.engine.config import mix_bins, PAPER_DEPTH_BINS_M
from depthclip_ros.engine.scenes import SceneClassifier
from depthclip_ros.geometry import backproject, Intrinsics
from depthclip_ros.io.dataset import read_rgb
from depthclip_ros.io.visualize import (
    BAR_WIDTH,
    CAPTION_LINE,
    colorize_uncertainty,
    read_ply,
    TITLE_WIDTH,
    write_ply,
)
from depthclip_ros.tools import infer
from depthclip_ros.tools.bench import speed as bench
from depthclip_ros.tools.cli import main
from depthclip_ros.tools.infer_names import OUTPUT_SUFFIXES, plan_outputs, SUMMARY_SUFFIX

from conftest import fill_disk_at, small_engine_for_tools

FAST = ['--pretrained', 'none', '--device', 'cpu', '--input-size', '64', '96']
H, W = 36, 52
K = (50.0, 52.0, 25.5, 17.5)
CAMERA = Intrinsics(*K, W, H)
BANNER_ROWS = 24  # the RANDOM WEIGHTS strip on top of a preview
BATHROOM = [1.00, 1.25, 1.50, 1.75, 2.00, 2.25, 2.50]
STREET = [2.00, 3.00, 4.00, 5.00, 6.00, 8.00, 10.0]
SCENES = ['bathroom', 'street']


@pytest.fixture
def tool_engine(monkeypatch, small_engine):
    """``infer`` and ``bench`` load the small engine with their options' head."""
    restore = small_engine_for_tools(monkeypatch, small_engine, infer, bench)
    yield small_engine
    restore()


def write_image(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), bgr)
    return path


def scene_config(path: Path, mode: str = 'scene_soft') -> Path:
    path.write_text(yaml.safe_dump({'/**': {'ros__parameters': {
        'scene_names': SCENES, 'scene_bins_m': BATHROOM + STREET, 'bins_mode': mode}}}))
    return path


def run_infer(inputs, out: Path, *extra: str) -> int:
    return main(['infer', *map(str, inputs), '--intrinsics', *map(str, K), '--output',
                 str(out), *FAST, *extra])


def ply_header(path: Path) -> tuple[list[str], int]:
    """The header lines and the header's length in bytes."""
    data = path.read_bytes()
    end = data.index(b'end_header\n') + len(b'end_header\n')
    return data[:end].decode('ascii').splitlines(), end


# ---------------------------------------------------------------------------------- infer

def test_infer_writes_the_uncertainty_beside_the_depth(tmp_path, capsys, tool_engine):
    source = write_image(tmp_path / 'in' / 'a.png', 1)
    out = tmp_path / 'out'
    assert run_infer([source], out, '--json') == 0
    text = capsys.readouterr().out
    assert 'uncertainty median' in text and '<name>_uncertainty.npy float32 m' in text
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f'a{suffix}' for suffix in (*OUTPUT_SUFFIXES, SUMMARY_SUFFIX))
    rgb = read_rgb(source)
    expected = tool_engine.infer(rgb, CAMERA, uncertainty=True)

    sigma = np.load(out / 'a_uncertainty.npy')
    depth = np.load(out / 'a_depth.npy')
    assert sigma.dtype == np.float32 and sigma.shape == depth.shape == (H, W)
    np.testing.assert_allclose(sigma, expected.sigma, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(depth, expected.depth, rtol=1e-5)
    assert (sigma >= 0).all() and np.ptp(sigma) > 0

    # the preview: image | depth | depth bar | uncertainty | its bar, the banner on top,
    # two lines under it saying what the bars span
    preview = cv2.cvtColor(cv2.imread(str(out / 'a_preview.png')), cv2.COLOR_BGR2RGB)
    bar = BAR_WIDTH + TITLE_WIDTH
    assert preview.shape == (BANNER_ROWS + H + 2 * CAPTION_LINE, 3 * W + 2 * bar, 3)
    panels = preview[BANNER_ROWS:BANNER_ROWS + H]
    np.testing.assert_array_equal(panels[:, :W], rgb)
    panel = panels[:, 2 * W + bar:3 * W + bar]
    painted, low, high = colorize_uncertainty(sigma)
    assert low == 0.0 and high == pytest.approx(np.percentile(sigma, 98))
    np.testing.assert_array_equal(panel, painted)
    legend = panels[:, 3 * W + bar:3 * W + bar + 16]  # the colours, 0 at the top
    ramp = np.linspace(0.0, high, H, dtype=np.float32)[:, None].repeat(16, axis=1)
    np.testing.assert_array_equal(legend, colorize_uncertainty(ramp, high)[0])

    # the PLY: a float 'uncertainty' per vertex after the colours, a consistent layout
    header, length = ply_header(out / 'a.ply')
    properties = [line for line in header if line.startswith('property ')]
    assert properties == ['property float x', 'property float y', 'property float z',
                          'property uchar red', 'property uchar green', 'property uchar blue',
                          'property float uncertainty']
    count = int(next(line for line in header if line.startswith('element vertex')).split()[2])
    assert (out / 'a.ply').stat().st_size == length + count * (3 * 4 + 3 + 4)
    cloud = read_ply(out / 'a.ply')
    kept = np.isfinite(backproject(depth, CAMERA, max_depth_m=20.0)).all(axis=-1)
    assert count == kept.sum() > 0
    np.testing.assert_array_equal(cloud['uncertainty'], sigma[kept])
    np.testing.assert_array_equal(cloud['z'], depth[kept])

    # --json, fixed bins: no scene
    summary = json.loads((out / f'a{SUMMARY_SUFFIX}').read_text())
    assert 'scene_probabilities' not in summary and 'scene' not in summary
    assert summary['bins_mode'] == 'fixed'
    assert summary['bins_m'] == pytest.approx(PAPER_DEPTH_BINS_M)
    assert summary['uncertainty_median_m'] == pytest.approx(expected.sigma_median_m, rel=1e-6)
    assert summary['size'] == [H, W] and summary['random_weights'] is True
    assert summary['depth_m']['median'] == pytest.approx(float(np.median(depth)), rel=1e-6)
    assert all((out / name).is_file() for name in summary['files'])


@pytest.mark.parametrize('mode', ['scene_soft', 'scene_hard'])
def test_infer_classifies_every_image_and_uses_its_bins(tmp_path, capsys, tool_engine, mode):
    sources = [write_image(tmp_path / 'in' / f'{name}.png', seed)
               for name, seed in (('a', 2), ('b', 3))]
    out = tmp_path / 'out'
    config = scene_config(tmp_path / 'scenes.yaml')  # scene_soft; --bins-mode wins
    assert run_infer(sources, out, '--scene-config', str(config), '--bins-mode', mode,
                     '--json') == 0
    text = capsys.readouterr().out
    assert f'bins: {mode} over the scenes bathroom, street' in text
    classifier = SceneClassifier(tool_engine)
    for source in sources:
        rgb = read_rgb(source)
        estimate = classifier.classify(rgb, SCENES)
        bins = mix_bins(estimate, (tuple(BATHROOM), tuple(STREET)), mode)
        summary = json.loads((out / f'{source.stem}{SUMMARY_SUFFIX}').read_text())
        probabilities = summary['scene_probabilities']
        assert list(probabilities) == SCENES
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        assert probabilities == pytest.approx(estimate.as_dict(), rel=1e-5)
        assert summary['scene'] == estimate.chosen and summary['bins_mode'] == mode
        assert summary['bins_m'] == pytest.approx(bins, rel=1e-6)
        expected = tool_engine.infer(rgb, CAMERA, uncertainty=True, bins_m=bins)
        np.testing.assert_allclose(np.load(out / f'{source.stem}_depth.npy'),
                                   expected.depth, rtol=1e-5)
        np.testing.assert_allclose(np.load(out / f'{source.stem}_uncertainty.npy'),
                                   expected.sigma, rtol=1e-5, atol=1e-7)
        assert f'{source.stem}: {W}x{H}' in text and f'scene {estimate.chosen}' in text


def test_a_failed_write_takes_the_new_files_along_but_no_file_it_did_not_write(
        tmp_path, capsys, monkeypatch, tool_engine):
    a = write_image(tmp_path / 'in' / 'a.png', 4)
    write_image(tmp_path / 'in' / 'b.png', 5)
    out = tmp_path / 'out'
    out.mkdir()
    mine = out / f'b{SUMMARY_SUFFIX}'  # the user's, not written by a run without --json
    mine.write_text('keep me')
    fill_disk_at(monkeypatch, infer, 'write_ply', 'b.ply')
    assert run_infer([tmp_path / 'in'], out) == 1
    assert 'No space left' in capsys.readouterr().err
    assert all((out / f'a{suffix}').is_file() for suffix in OUTPUT_SUFFIXES)
    assert not (out / f'a{SUMMARY_SUFFIX}').exists()  # no --json: no summary
    assert not any((out / f'b{suffix}').exists() for suffix in OUTPUT_SUFFIXES)
    assert mine.read_text() == 'keep me'
    assert not any(p.name.startswith('.') for p in out.iterdir())  # no temporary left
    np.testing.assert_allclose(
        np.load(out / 'a_uncertainty.npy'),
        tool_engine.infer(read_rgb(a), CAMERA, uncertainty=True).sigma, rtol=1e-5, atol=1e-7)


def test_an_input_file_named_like_a_new_output_is_never_replaced(tmp_path):
    folder = tmp_path / 'work'
    folder.mkdir()
    paths = [folder / 'x.png', folder / 'x_uncertainty.npy', folder / 'y.png',
             folder / f'y{SUMMARY_SUFFIX}']
    for path in paths:
        path.write_bytes(b'')
    names = {s.path.name: s.name for s in plan_outputs(paths, folder).sources}
    assert names['x.png'] != 'x' and names['y.png'] == 'y'  # no --json: y's is not written
    with_json = plan_outputs(paths, folder, OUTPUT_SUFFIXES + (SUMMARY_SUFFIX,)).sources
    assert {s.path.name: s.name for s in with_json}['y.png'] != 'y'


def test_write_ply_checks_its_scalars(tmp_path):
    points = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    points[0, 1] = np.nan
    sigma = np.array([[0.5, 9.0], [0.25, 0.125]], dtype=np.float32)
    assert write_ply(tmp_path / 'p.ply', points, scalars={'uncertainty': sigma}) == 3
    cloud = read_ply(tmp_path / 'p.ply')
    np.testing.assert_array_equal(cloud['uncertainty'], [0.5, 0.25, 0.125])
    for name, values in (('x', sigma), ('two words', sigma), ('u', sigma[:1])):
        with pytest.raises(ValueError, match='PLY scalar'):
            write_ply(tmp_path / 'q.ply', points, scalars={name: values})
    assert not (tmp_path / 'q.ply').exists()


# ---------------------------------------------------------------------------------- bench

def test_bench_prints_the_cost_of_the_uncertainty_and_of_a_scene(tmp_path, capsys,
                                                                 tool_engine):
    out = tmp_path / 'bench.json'
    assert main(['bench', '--device', 'cpu', '--warmup', '0', '--repeat', '1',
                 '--image-size', '30', '40', '--input-size', '64', '96',
                 '--json', str(out)]) == 0
    text = capsys.readouterr().out
    assert 'device: cpu' in text
    line = next(line for line in text.splitlines() if 'paired difference' in line)
    assert 'frame without' in line and 'noise' in line
    line = next(line for line in text.splitlines() if 'stages that do the extra work' in line)
    assert 'upsample' in line and 'uncertainty cost' in line and '% of the frame' in line
    assert 'sigma and its median over the' in text
    assert 'scene classification (3 scenes, 30x40 image' in text
    figures = json.loads(out.read_text())
    cost = figures['uncertainty_ms']
    assert cost['with_ms'] > 0 and cost['without_ms'] > 0 and 'upsample' in cost['stages_with']
    assert figures['scene_ms']['classify_ms'] > 0

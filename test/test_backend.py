"""The trunk backend (``backend``: torch, openvino, auto) and INT8 on the CPU (issue 22):
OpenVINO fp32 equals torch, the disk cache of converted networks, NNCF's INT8, the choice
of auto, the object step's encoder and batches through the backend, and the refusals.

Random weights: the tests compare computations, never accuracy. Small input sizes and a
cache folder of this module's own (``DEPTHCLIP_CACHE_DIR``) keep them fast and away from
the user's cache.
"""

from dataclasses import replace
import logging
import os
import re
import shutil
import types

import numpy as np
import pytest
import torch

from depthclip_ros.engine import backend as backend_module
from depthclip_ros.engine import config as config_module
from depthclip_ros.engine import openvino_trunk, runtime
from depthclip_ros.engine.config import head_with, ModelConfig
from depthclip_ros.engine.depthclip import DepthCLIP
from depthclip_ros.engine.frames import FrameIn
from depthclip_ros.engine.model_cache import cache_dir, entry_name, tensors_hash
from depthclip_ros.geometry import metric_scale
from depthclip_ros.io.dataset import RGBDFolder

from conftest import random_models_shared, shared_data

SMALL = (64, 96)
TOLERANCE = 1e-5  # relative, on depth: the bound for openvino fp32 against torch
needs_openvino = pytest.mark.skipif(not config_module.openvino_installed(True),
                                    reason='openvino and nncf are not installed '
                                           '(pip install .[openvino])')


def config(**changes) -> ModelConfig:
    return ModelConfig(**{'pretrained': 'none', 'device': 'cpu', 'precision': 'fp32',
                          'input_size': SMALL, **changes})


def load(**changes) -> DepthCLIP:
    """An engine on the module's shared random model (one seeded RN50 for all)."""
    with random_models_shared():
        return DepthCLIP(config(**changes)).load()


def real_frames(count: int = 2):
    folder = RGBDFolder(shared_data('nyu_v2_eigen_test_sg10'))
    return [folder.frame(i) for i in range(count)]


def relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.abs(b)))


class Conversions:
    """Counts OpenVINO conversions (engine/export.py's to_openvino, as the backend calls
    it)."""

    def __init__(self, monkeypatch):
        self.count = 0
        real = openvino_trunk.to_openvino

        def counted(*args, **kwargs):
            self.count += 1
            return real(*args, **kwargs)
        monkeypatch.setattr(openvino_trunk, 'to_openvino', counted)


@pytest.fixture(scope='module')
def cache_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('depthclip-cache')
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('DEPTHCLIP_CACHE_DIR', str(root))
        yield root


@pytest.fixture(scope='module')
def torch_engine(cache_root):
    return load()


@pytest.fixture(scope='module')
def openvino_engine(cache_root):
    pytest.importorskip('openvino')
    return load(backend='openvino')


# ------------------------------------------------------------------------- refusals
@pytest.mark.parametrize('changes, reason', [
    ({'backend': 'torch', 'precision': 'int8', 'calibration': 'frames'},
     'int8 runs on OpenVINO only'),
    ({'backend': 'openvino', 'precision': 'int8', 'calibration': 'frames', 'device': 'cuda'},
     'int8 runs on the CPU only'),
    ({'backend': 'auto', 'precision': 'int8', 'calibration': 'frames', 'device': 'cuda:1'},
     'int8 runs on the CPU only'),
    ({'backend': 'openvino', 'precision': 'int8'}, 'int8 needs calibration'),
    ({'backend': 'openvino', 'precision': 'int8', 'calibration': '  '},
     'int8 needs calibration'),
    ({'backend': 'openvino', 'device': 'cuda'}, 'openvino runs on the CPU only'),
    ({'backend': 'openvino', 'device': 'auto', 'cuda_graphs': True}, 'turn cuda_graphs off'),
    ({'backend': 'openvino', 'precision': 'bf16'}, 'runs fp32 or int8, not bf16'),
    ({'backend': 'tensorrt'}, 'backend must be one of'),
])
def test_the_rules_refuse_in_one_line(changes, reason):
    with pytest.raises(ValueError, match=reason) as error:
        ModelConfig(**{'pretrained': 'none', **changes})
    assert '\n' not in str(error.value)


def test_the_parameter_table_and_the_tools_carry_the_rules():
    from depthclip_ros.ros.configs import model_from_parameters
    from depthclip_ros.ros.parameters import DEFAULTS, MODEL_PARAMETERS, validate
    assert {'backend', 'calibration'} <= set(MODEL_PARAMETERS)
    assert DEFAULTS['backend'] == 'torch' and DEFAULTS['calibration'] == ''
    with pytest.raises(ValueError, match='backend must be one of'):
        validate({'backend': 'onnx'})
    with pytest.raises(ValueError, match='int8 needs calibration'):
        model_from_parameters({'backend': 'openvino', 'precision': 'int8'})
    model = model_from_parameters({'backend': 'auto', 'precision': 'int8',
                                   'calibration': '/data/frames'})
    assert (model.backend, model.precision, model.calibration) == \
        ('auto', 'int8', '/data/frames')


def test_device_auto_means_the_cpu_with_openvino_and_a_missing_package_names_the_extra(
        monkeypatch):
    monkeypatch.setattr(runtime.torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(config_module, 'openvino_installed', lambda calibrating=False: True)
    assert runtime.resolve_runtime(config(device='auto', backend='openvino')) == \
        (torch.device('cpu'), torch.float32)
    assert runtime.resolve_runtime(config(device='auto', backend='auto', precision='int8',
                                          calibration='x'))[0] == torch.device('cpu')
    monkeypatch.setattr(config_module, 'openvino_installed', lambda calibrating=False: False)
    with pytest.raises(ValueError, match=r'pip install \.\[openvino\]'):
        runtime.resolve_runtime(config(backend='openvino'))
    # auto without openvino is torch, not a refusal
    assert runtime.resolve_runtime(config(backend='auto'))[0] == torch.device('cpu')


@pytest.mark.parametrize('options', [['--backend', 'openvino'],
                                     ['--backend', 'auto', '--precision', 'int8']])
def test_a_missing_openvino_ends_a_tool_in_one_line_with_status_2_before_loading(
        monkeypatch, tmp_path, capsys, options):
    import cv2

    from depthclip_ros.tools.cli import main
    monkeypatch.setattr(config_module, 'openvino_installed', lambda calibrating=False: False)
    monkeypatch.setattr(DepthCLIP, 'load', lambda self: pytest.fail('the model was built'))
    image = tmp_path / 'a.png'
    cv2.imwrite(str(image), np.zeros((36, 52, 3), np.uint8))
    frames = tmp_path / 'frames'
    frames.mkdir()
    cv2.imwrite(str(frames / 'f.png'), np.zeros((36, 52, 3), np.uint8))
    calibration = ['--calibration', str(frames)] if 'int8' in options else []
    assert main(['infer', str(image), '--hfov-deg', '60', '-o', str(tmp_path / 'out'),
                 '--pretrained', 'none', '--device', 'cpu', *options, *calibration]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # no 'loading' line before it: refused before anything loads
    assert err[0].startswith('depthclip-ros infer: ') and 'pip install .[openvino]' in err[0]
    assert not (tmp_path / 'out').exists()


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv('DEPTHCLIP_CACHE_DIR', str(tmp_path / 'own'))
    assert cache_dir() == tmp_path / 'own'
    monkeypatch.delenv('DEPTHCLIP_CACHE_DIR')
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    assert cache_dir() == tmp_path / 'xdg' / 'depthclip_ros'
    monkeypatch.delenv('XDG_CACHE_HOME')
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    assert cache_dir() == tmp_path / 'home' / '.cache' / 'depthclip_ros'


# ------------------------------------------------------------------------- fp32
@needs_openvino
def test_openvino_fp32_depth_equals_torch_on_real_frames(torch_engine, openvino_engine):
    assert openvino_engine.describe_device() == 'cpu float32, openvino fp32'
    assert torch_engine.describe_device() == 'cpu float32'
    for frame in real_frames(3):
        expected = torch_engine.infer(frame.rgb, frame.intrinsics, uncertainty=True)
        got = openvino_engine.infer(frame.rgb, frame.intrinsics, uncertainty=True)
        assert relative(got.depth, expected.depth) <= TOLERANCE
        assert relative(got.sigma, expected.sigma) <= 10 * TOLERANCE  # a difference of moments
        print(f'{frame.name}: openvino fp32 depth deviation from torch '
              f'{relative(got.depth, expected.depth):.1e} (random weights: not an accuracy '
              f'result)')


@needs_openvino
def test_encode_image_through_the_backend_equals_torch(torch_engine, openvino_engine):
    crops = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    expected = torch_engine.encode_image(crops, normalize=True)
    got = openvino_engine.encode_image(crops, normalize=True)
    assert got.shape == expected.shape == (3, 1024) and got.dtype == torch.float32
    assert relative(got, expected) <= TOLERANCE or \
        float((got - expected).abs().max()) <= TOLERANCE * float(expected.abs().max())
    # the scene classifier is encode_image's user: its probabilities follow
    rgb = real_frames(1)[0].rgb
    names = ['kitchen', 'office', 'street']
    scene_ov = openvino_engine.scene_classifier.classify(rgb, names).probabilities
    scene_torch = torch_engine.scene_classifier.classify(rgb, names).probabilities
    np.testing.assert_allclose(scene_ov, scene_torch, rtol=1e-4)


@needs_openvino
def test_several_frames_and_flip_averaging_go_through_the_backend(torch_engine,
                                                                  openvino_engine):
    frames = real_frames(2)
    rgbs = [frames[0].rgb, frames[1].rgb[::2, ::2], frames[0].rgb[:300]]
    cameras = [frames[0].intrinsics, frames[1].intrinsics.resized(240, 320),
               frames[0].intrinsics.cropped(0, 0, 640, 300)]
    calls = []
    real = openvino_engine._backend.trunk
    before = (torch_engine.head, openvino_engine.head)
    try:
        openvino_engine._backend.trunk = lambda x: calls.append(len(x)) or real(x)
        for flip in (False, True):
            for engine in (torch_engine, openvino_engine):
                engine.set_head(head_with(engine.head, flip_average=flip))
            batch = [FrameIn(rgb, camera, uncertainty=True) for rgb, camera in
                     zip(rgbs, cameras)]
            expected = torch_engine.infer_frames(batch)
            got = openvino_engine.infer_frames(batch)
            for g, e in zip(got, expected):
                assert relative(g.depth, e.depth) <= TOLERANCE
    finally:
        del openvino_engine._backend.trunk
        torch_engine.set_head(before[0])
        openvino_engine.set_head(before[1])
    # frame by frame on the CPU: 3 frames, then 6 with their mirror images
    assert calls == [1] * 3 + [1] * 6


# ------------------------------------------------------------------------- the cache
@needs_openvino
def test_a_second_load_reads_the_cache_without_converting(openvino_engine, monkeypatch):
    conversions = Conversions(monkeypatch)
    again = load(backend='openvino')
    assert conversions.count == 0 and again._backend.cache.built == 0
    frame = real_frames(1)[0]
    np.testing.assert_array_equal(again.predict(frame.rgb, frame.intrinsics),
                                  openvino_engine.predict(frame.rgb, frame.intrinsics))


@needs_openvino
@pytest.mark.parametrize('damage', ['bin', 'manifest', 'xml'])
def test_a_corrupt_entry_is_rebuilt_with_one_warning(openvino_engine, cache_root, tmp_path,
                                                     monkeypatch, caplog, damage):
    [entry] = [p for p in (cache_root / 'openvino').iterdir()
               if p.name.startswith(f'trunk-RN50-1x3x{SMALL[0]}x{SMALL[1]}-fp32-')]
    root = tmp_path / 'openvino'
    copy = root / entry.name
    shutil.copytree(entry, copy)
    if damage == 'bin':  # one flipped byte
        data = bytearray((copy / 'model.bin').read_bytes())
        data[len(data) // 2] ^= 0xFF
        (copy / 'model.bin').write_bytes(bytes(data))
    elif damage == 'manifest':  # a stale key
        text = (copy / 'manifest.json').read_text()
        (copy / 'manifest.json').write_text(text.replace('"trunk"', '"encoder"'))
    else:  # cut short
        (copy / 'model.xml').write_text((copy / 'model.xml').read_text()[:200])
    monkeypatch.setenv('DEPTHCLIP_CACHE_DIR', str(tmp_path))
    conversions = Conversions(monkeypatch)
    with caplog.at_level(logging.INFO, logger='depthclip_ros.engine.model_cache'):
        rebuilt = load(backend='openvino')
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and 'rebuilding it' in warnings[0].message
    built = [r for r in caplog.records if 'built in' in r.message]
    assert len(built) == 1 and 'a one-off start-up cost' in built[0].message
    assert conversions.count == 1
    assert sorted(p.name for p in root.iterdir()) == [entry.name]  # no temporary left
    assert (copy / 'model.bin').read_bytes() == (entry / 'model.bin').read_bytes()
    frame = real_frames(1)[0]
    np.testing.assert_array_equal(rebuilt.predict(frame.rgb, frame.intrinsics),
                                  openvino_engine.predict(frame.rgb, frame.intrinsics))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger='depthclip_ros.engine.model_cache'):
        load(backend='openvino')  # now whole: read, silently
    assert conversions.count == 1 and not caplog.records


def stand_in(engine, **changes):
    """What the backend reads of an engine, with another configuration (keys only)."""
    return types.SimpleNamespace(config=replace(engine.config, **changes), clip=engine.clip,
                                 preprocess=engine.preprocess)


@needs_openvino
def test_the_key_changes_with_size_precision_network_and_weights(openvino_engine):
    networks = openvino_engine._backend
    base = networks.key('trunk', (1, 3, *SMALL))
    assert base['weights_sha256'] == tensors_hash(openvino_engine.clip.visual.state_dict())
    names = {entry_name(base)}
    names.add(entry_name(networks.key('trunk', (1, 3, 96, 96))))
    names.add(entry_name(networks.key('encoder', (1, 3, *SMALL))))
    calibration = str(shared_data('nyu_v2_eigen_test_sg10'))
    int8 = openvino_trunk.OpenVINONetworks(stand_in(openvino_engine, precision='int8',
                                                    calibration=calibration))
    names.add(entry_name(int8.key('trunk', (1, 3, *SMALL))))
    other_model = openvino_trunk.OpenVINONetworks(stand_in(openvino_engine, model='RN101'))
    names.add(entry_name(other_model.key('trunk', (1, 3, *SMALL))))
    assert len(names) == 5
    state = openvino_engine.clip.visual.state_dict()
    conv = next(name for name, tensor in state.items() if tensor.dim() == 4)
    changed = {**state, conv: state[conv].clone()}
    changed[conv][0, 0, 0, 0] += 1e-3
    assert tensors_hash(changed) != base['weights_sha256']
    assert tensors_hash(state) == base['weights_sha256']
    # the layout does not change the hash: the same values
    nchw = {k: v.contiguous() for k, v in state.items()}
    assert tensors_hash(nchw) == base['weights_sha256']


# ------------------------------------------------------------------------- int8
@needs_openvino
def test_int8_runs_close_to_fp32_and_its_key_holds_the_calibration(
        torch_engine, openvino_engine, monkeypatch):
    from depthclip_ros.engine.openvino_core import core
    calibration = shared_data('nyu_v2_eigen_test_sg10')
    int8 = load(backend='openvino', precision='int8', calibration=str(calibration))
    assert int8.describe_device() == 'cpu float32, openvino int8'
    # quantized for real: the cached network holds NNCF's FakeQuantize operations
    [entry] = [p for p in int8._backend.cache.root.iterdir() if '-int8-' in p.name]
    model = core().read_model(str(entry / 'model.xml'))
    assert sum(op.get_type_name() == 'FakeQuantize' for op in model.get_ops()) > 20
    deviations, token_deviations = [], []
    lowest, highest = min(int8.head.depth_bins_m), max(int8.head.depth_bins_m)
    for frame in RGBDFolder(shared_data('nyu_v2_raw_sync_metric3d3')):  # not calibrated on
        got = int8.infer(frame.rgb, frame.intrinsics)
        reference = openvino_engine.infer(frame.rgb, frame.intrinsics)
        scale = metric_scale(frame.intrinsics.resized(*SMALL), int8.head.canonical_focal_px)
        assert np.isfinite(got.depth).all() and (got.depth > 0).all()
        # a mean of the bins: within them, at this camera's metric scale
        assert lowest * scale * (1 - 1e-5) <= got.depth.min() <= got.depth.max() <= \
            highest * scale * (1 + 1e-5)
        deviations.append(np.abs(got.depth - reference.depth) / reference.depth)
        token_deviations.append(float((got.tokens - reference.tokens).norm()
                                      / reference.tokens.norm()))
    deviation = np.concatenate([d.ravel() for d in deviations])
    print(f'int8 depth deviation from fp32: median {np.median(deviation):.2e}, p99 '
          f'{np.percentile(deviation, 99):.2e}; tokens {max(token_deviations):.2e} '
          f'(random weights: not an accuracy result)')
    # 8-bit weights and activations keep the trunk's tokens within a few per cent (NNCF's
    # usual result on ResNets, and the 3.2e-2 at full size); the depth, a
    # softmax-weighted mean of the bins, moves less than the tokens do
    assert 1e-4 < max(token_deviations) < 0.1  # quantized, yet close
    assert np.median(deviation) < 0.05
    # the calibration set is part of the key
    key = int8._backend.key('trunk', (1, 3, *SMALL))
    other = openvino_trunk.OpenVINONetworks(stand_in(
        int8, calibration=str(shared_data('realsense_d435_librealsense'))))
    other_key = other.key('trunk', (1, 3, *SMALL))
    assert key['calibration_sha256'] != other_key['calibration_sha256']
    assert entry_name(key) != entry_name(other_key)
    assert {k: v for k, v in key.items() if k != 'calibration_sha256'} == \
        {k: v for k, v in other_key.items() if k != 'calibration_sha256'}
    # a second int8 start reads it: no conversion, no calibration
    conversions = Conversions(monkeypatch)
    load(backend='openvino', precision='int8', calibration=str(calibration))
    assert conversions.count == 0


def test_a_calibration_source_that_cannot_be_read_stops_the_load(tmp_path):
    pytest.importorskip('nncf')
    empty = tmp_path / 'empty'
    empty.mkdir()
    engine = DepthCLIP(config(backend='openvino', precision='int8', calibration=str(empty)))
    with random_models_shared(), pytest.raises(ValueError, match='holds no images'):
        engine.load()
    assert not engine.loaded


def test_calibration_frames_come_from_folders_and_bags():
    from depthclip_ros.io.calibration import calibration_frames
    nyu = calibration_frames(shared_data('nyu_v2_eigen_test_sg10'), limit=4)
    assert len(nyu) == 4 and all(f.shape == (480, 640, 3) and f.dtype == np.uint8
                                 for f in nyu)
    folder = calibration_frames(shared_data('nyu_v2_eigen_test_sg10', 'rgb'))
    assert len(folder) == 10
    np.testing.assert_array_equal(folder[0], nyu[0])
    ros1 = calibration_frames(shared_data('bags', 'realsense_d435_single_depth_color_640x480.bag'))
    ros2 = calibration_frames(shared_data('bags', 'realsense_d435_single_frame_ros2'))
    # the colour frame only (its depth messages are left out), the same in both formats
    assert len(ros1) == len(ros2) == 1 and ros1[0].shape == (480, 640, 3)
    np.testing.assert_array_equal(ros1[0], ros2[0])
    with pytest.raises(ValueError, match='no such file or folder'):
        calibration_frames('/nonexistent/frames')


# ------------------------------------------------------------------------- auto
@needs_openvino
def test_auto_measures_both_and_logs_its_choice_once(openvino_engine, caplog):
    with caplog.at_level(logging.INFO, logger='depthclip_ros.engine.backend'):
        engine = load(backend='auto')
    [record] = [r for r in caplog.records if 'backend auto' in r.message]
    timings = engine.backend_timings
    chosen = 'openvino' if timings['openvino'] < timings['torch'] else 'torch'
    assert record.message.startswith(f'backend auto: {chosen} (trunk at 64x96, median of 3: ')
    assert f'openvino fp32 {timings["openvino"]:.1f} ms' in record.message
    assert f'torch {timings["torch"]:.1f} ms' in record.message
    assert (engine._backend is not None) == (chosen == 'openvino')
    print(f'auto at 64x96: {record.message} (this machine, loaded; not a benchmark)')


def test_auto_is_torch_without_openvino(monkeypatch, caplog):
    monkeypatch.setattr(backend_module, 'openvino_installed', lambda calibrating=False: False)
    with caplog.at_level(logging.INFO, logger='depthclip_ros.engine.backend'):
        engine = load(backend='auto')
    assert engine._backend is None and engine.describe_device() == 'cpu float32'
    assert [r.message for r in caplog.records if 'backend auto' in r.message] == [
        'backend auto: torch, as openvino is not installed (`pip install .[openvino]`)']


# ------------------------------------------------------------------------- node, tools
@needs_openvino
def test_the_node_s_parameters_give_an_openvino_engine_whose_pipeline_gives_depth(
        torch_engine, openvino_engine):
    """What the node does with ``backend: openvino``: its parameters make the engine, and its
    per-frame pipeline publishes the depth of the OpenVINO trunk."""
    from depthclip_ros.ros.messages import depth_from_image
    from depthclip_ros.ros.node import node_configs
    from depthclip_ros.ros.parameters import DEFAULTS
    from depthclip_ros.ros.pipeline import DepthPipeline

    from rosutil import camera_info, rgb8_image
    values = {**DEFAULTS, 'pretrained': 'none', 'device': 'cpu', 'precision': 'fp32',
              'input_size': list(SMALL), 'backend': 'openvino'}
    configs = node_configs(values)
    engine = load(**{name: getattr(configs.model, name)
                     for name in ('backend', 'precision', 'device')})
    assert engine.describe_device().endswith('openvino fp32')
    frame = real_frames(1)[0]
    pipeline = DepthPipeline(engine, configs.output)
    k = frame.intrinsics
    pipeline.on_camera_info(camera_info(k.height, k.width, k.fx, k.fy, k.cx, k.cy))
    out = pipeline.process(rgb8_image(frame.rgb))
    depth = depth_from_image(out.depth)
    assert relative(depth, torch_engine.predict(frame.rgb, frame.intrinsics)) <= TOLERANCE


@needs_openvino
def test_infer_tool_with_backend_openvino(tmp_path, capsys, tiny_model):
    """The tools' plumbing, on the tests' tiny model (its own networks converted: small)."""
    import cv2

    from depthclip_ros.tools.cli import main
    frame = real_frames(1)[0]
    cv2.imwrite(str(tmp_path / 'frame.png'), cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR))
    k = frame.intrinsics
    common = ['--intrinsics', str(k.fx), str(k.fy), str(k.cx), str(k.cy), '--pretrained',
              'none', '--device', 'cpu', '--precision', 'fp32', '--input-size',
              *map(str, SMALL), '--model', tiny_model]
    depths = {}
    with random_models_shared():
        for backend in ('torch', 'openvino'):
            out = tmp_path / backend
            assert main(['infer', str(tmp_path / 'frame.png'), '--output', str(out),
                         '--backend', backend, *common]) == 0
            depths[backend] = np.load(out / 'frame_depth.npy')
        assert relative(depths['openvino'], depths['torch']) <= TOLERANCE
        # bench: the same `network` line for the backend, which its device line names
        capsys.readouterr()
        assert main(['bench', '--backend', 'openvino', '--warmup', '0', '--repeat', '1',
                     '--image-size', '48', '64', *common[5:]]) == 0
    text = capsys.readouterr().out
    assert '\nnetwork' in text and 'openvino fp32' in text


@needs_openvino
def test_evaluate_locate_and_bag_run_on_openvino(tmp_path, capsys, tiny_model):
    """The other tools that load the model take the backend too: ``evaluate`` (INT8,
    calibrated on a folder), ``locate`` (its object step's crops through the OpenVINO
    encoder) and ``bag`` (a real RealSense recording), each naming it. On the tests' tiny
    model (the tools' plumbing; its networks are small)."""
    import cv2

    from depthclip_ros.tools.cli import main
    common = ['--model', tiny_model, '--pretrained', 'none', '--device', 'cpu',
              '--input-size', *map(str, SMALL)]
    calibration = shared_data('nyu_v2_eigen_test_sg10', 'rgb')
    with random_models_shared():
        assert main(['evaluate', str(shared_data('kitti_raw_metric3d3')), '--backend',
                     'openvino', '--precision', 'int8', '--calibration', str(calibration),
                     *common]) == 0
        text = capsys.readouterr().out
        assert 'openvino int8' in text and 'RANDOM WEIGHTS' in text  # its device line
        frame = real_frames(1)[0]
        image = tmp_path / 'scene.png'
        cv2.imwrite(str(image), cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR))
        k = frame.intrinsics
        assert main(['locate', str(image), '--query', 'the chair', '--intrinsics',
                     str(k.fx), str(k.fy), str(k.cx), str(k.cy), '--output',
                     str(tmp_path / 'found'), '--backend', 'openvino', *common]) == 0
        assert 'openvino fp32' in capsys.readouterr().err  # "model ready (...)"
        assert (tmp_path / 'found' / 'scene_locate.json').is_file()
        assert main(['bag', str(shared_data('bags', 'realsense_d435_single_frame_ros2')),
                     str(tmp_path / 'bag_out'), '--backend', 'openvino', *common]) == 0
        captured = capsys.readouterr()
        assert 'openvino fp32' in captured.err
        assert 'done: 1 of 1 frames with depth' in captured.out


ENGINES_THEN_A_SIGNAL = """
import gc, os, signal, sys, time
import open_clip
open_clip.add_model_config(sys.argv[1])
from depthclip_ros.engine.config import ModelConfig
from depthclip_ros.engine.depthclip import DepthCLIP
config = ModelConfig(model=sys.argv[2], pretrained='none', device='cpu', backend='openvino',
                     input_size=(64, 96))
first, second = DepthCLIP(config).load(), DepthCLIP(config).load()
first.release(); del first; gc.collect()  # released in the order they were made
second.release(); del second; gc.collect()
handled = []
signal.signal(signal.SIGINT, lambda *_: handled.append(True))
os.kill(os.getpid(), signal.SIGINT)
time.sleep(0.2)
print('handled' if handled else 'not handled')
"""


@needs_openvino
def test_engines_released_in_any_order_leave_signals_working(tmp_path):
    """OpenVINO's CPU plugin gives the main thread an alternate signal stack per Core and
    puts the previous one back when that Core goes: Cores released in the order they were
    made left the first one's freed stack, and the next Ctrl-C crashed the process (SIGSEGV)
    instead of running its handler. The engine uses the process's one Core
    (engine/openvino_core.py); this runs two engines and a signal in a process of its own."""
    import subprocess
    import sys

    from conftest import REPO, TINY_CONFIG_FILE, TINY_MODEL
    done = subprocess.run([sys.executable, '-c', ENGINES_THEN_A_SIGNAL, str(TINY_CONFIG_FILE),
                           TINY_MODEL], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, 'DEPTHCLIP_CACHE_DIR': str(tmp_path)})
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.strip().endswith('handled') and 'not handled' not in done.stdout


# -------------------------------------------- damaged calibration frames: exit 1, counted
def _calibration_with_damage(folder, good: int, bad: int):
    import cv2
    folder.mkdir()
    for i in range(good):
        cv2.imwrite(str(folder / f'{i:02d}.png'),
                    np.random.default_rng(i).integers(0, 256, (40, 56, 3), np.uint8))
    for i in range(bad):
        (folder / f'{good + i:02d}.png').write_bytes(b'\x89PNG\r\n\x1a\n broken')
    return folder


@pytest.mark.parametrize('good, bad', [(2, 1), (1, 2), (3, 3)])
def test_damaged_calibration_images_are_counted_not_dropped(tmp_path, good, bad):
    from depthclip_ros.io.calibration import calibration_frames, CalibrationUnreadable
    folder = _calibration_with_damage(tmp_path / 'cal', good, bad)
    with pytest.raises(CalibrationUnreadable) as caught:
        calibration_frames(folder)
    assert (caught.value.count, caught.value.total) == (bad, good + bad)
    assert f'{bad} of {good + bad} images' in str(caught.value)
    assert f'{good:02d}.png' in str(caught.value)  # the first damaged one named


@needs_openvino
@pytest.mark.parametrize('tool', ['infer', 'evaluate', 'bench-compare'])
def test_a_tool_ends_with_status_1_and_the_count_on_damaged_calibration(tmp_path, capsys,
                                                                        tiny_model, tool):
    import cv2

    from depthclip_ros.tools.cli import main
    calibration = _calibration_with_damage(tmp_path / 'cal', 2, 1)
    image = tmp_path / 'a.png'
    cv2.imwrite(str(image), np.zeros((40, 56, 3), np.uint8))
    common = ['--pretrained', 'none', '--device', 'cpu', '--input-size', *map(str, SMALL),
              '--model', tiny_model, '--calibration', str(calibration)]
    int8 = ['--backend', 'openvino', '--precision', 'int8']
    argv = {'infer': ['infer', str(image), '--hfov-deg', '60', '-o', str(tmp_path / 'out'),
                      *int8],
            'evaluate': ['evaluate', str(shared_data('nyu_v2_eigen_test_sg10')), *int8],
            'bench-compare': ['bench', '--compare-backends', 'openvino-int8', '--warmup',
                              '0', '--repeat', '1', '--image-size', '40', '56']}[tool]
    with random_models_shared():
        assert main([*argv, *common]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f'depthclip-ros {argv[0]}: ') and '1 of 3 images' in last
    assert not (tmp_path / 'out').exists()


# --------------------------------- the cache removes only what it wrote (wherever it points)
def _small_ov_model():
    import openvino as ov
    import openvino.opset13 as ops
    x = ops.parameter([1, 4], np.float32, name='x')
    return ov.Model([ops.relu(x)], [x], 'small')


def _old(path, days: float = 2) -> None:
    stamp = os.stat(path).st_mtime - days * 86400
    os.utime(path, (stamp, stamp), follow_symlinks=False)


@needs_openvino
@pytest.mark.parametrize('foreign', ['a user folder named like a temporary one',
                                     'a link named like a temporary one',
                                     'an aside folder holding user files'])
def test_the_cache_never_removes_what_it_did_not_write(tmp_path, foreign):
    from depthclip_ros.engine.model_cache import ModelCache
    root = tmp_path / 'openvino'
    root.mkdir()
    mine = tmp_path / 'mine'
    mine.mkdir()
    (mine / 'thesis.tex').write_text('years of work')
    if foreign == 'a user folder named like a temporary one':
        kept = root / '.tmp-notes'
        kept.mkdir()
        (kept / 'model.xml').write_text('my own model')
        (kept / 'todo.txt').write_text('mine')
    elif foreign == 'a link named like a temporary one':
        kept = root / '.tmp-link'
        kept.symlink_to(mine, target_is_directory=True)
    else:
        kept = root / '.old-backup'
        (kept / 'entry').mkdir(parents=True)
        (kept / 'entry' / 'diary.txt').write_text('mine')
    _old(kept)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob('*'))
    cache = ModelCache(root)
    cache.load_or_build({'network': 'trunk', 'model': 'm', 'shape': [1, 4],
                         'precision': 'fp32'}, _small_ov_model, 'a small network')
    after = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob('*'))
    assert set(before) <= set(after)  # nothing of theirs is gone
    assert (mine / 'thesis.tex').read_text() == 'years of work'


@needs_openvino
def test_the_cache_removes_its_own_stale_temporary_folders(tmp_path):
    from depthclip_ros.engine.model_cache import MARKER, ModelCache
    root = tmp_path / 'openvino'
    stale = root / '.tmp-killed'
    stale.mkdir(parents=True)
    (stale / MARKER).write_text('written by depthclip_ros')
    (stale / 'model.xml').write_text('half')
    _old(stale)
    fresh = root / '.tmp-running'  # another process's build in progress: kept
    fresh.mkdir()
    (fresh / MARKER).write_text('written by depthclip_ros')
    ModelCache(root).load_or_build({'network': 'trunk', 'model': 'm', 'shape': [1, 4],
                                    'precision': 'fp32'}, _small_ov_model, 'small')
    assert not stale.exists() and fresh.exists()


@needs_openvino
def test_an_entry_holding_foreign_files_is_used_uncached_and_left_alone(tmp_path, caplog):
    from depthclip_ros.engine.model_cache import entry_name, ModelCache
    root = tmp_path / 'openvino'
    key = {'network': 'trunk', 'model': 'm', 'shape': [1, 4], 'precision': 'fp32'}
    from depthclip_ros.engine.model_cache import CACHE_FORMAT
    squatted = root / entry_name({**key, 'cache_format': CACHE_FORMAT})
    squatted.mkdir(parents=True)
    (squatted / 'photo.jpg').write_bytes(b'mine')
    with caplog.at_level(logging.WARNING, logger='depthclip_ros.engine.model_cache'):
        model = ModelCache(root).load_or_build(key, _small_ov_model, 'small')
    assert model is not None and (squatted / 'photo.jpg').read_bytes() == b'mine'
    assert 'not cached' in caplog.text and 'did not write' in caplog.text


# ------------------------------------- no silent conversion: said, counted, once (class 8)
@needs_openvino
def test_a_first_conversion_and_int8_calibration_are_said_and_counted(tmp_path, capsys,
                                                                       tiny_model,
                                                                       monkeypatch):
    import cv2

    from depthclip_ros.tools.cli import main
    monkeypatch.setenv('DEPTHCLIP_CACHE_DIR', str(tmp_path / 'cache'))
    calibration = _calibration_with_damage(tmp_path / 'cal', 5, 0)
    cv2.imwrite(str(tmp_path / 'a.png'), np.zeros((40, 56, 3), np.uint8))
    argv = ['infer', str(tmp_path / 'a.png'), '--hfov-deg', '60', '--pretrained', 'none',
            '--device', 'cpu', '--input-size', *map(str, SMALL), '--model', tiny_model,
            '--calibration', str(calibration)]
    with random_models_shared():
        for run, precision in enumerate(('int8', 'int8', 'fp32')):
            assert main([*argv, '-o', str(tmp_path / f'out{run}'), '--backend', 'openvino',
                         '--precision', precision]) == 0
            lines = capsys.readouterr().err.splitlines()
            said = [i for i, line in enumerate(lines) if line.startswith(
                f'infer: converting the OpenVINO {precision} trunk')]
            ready = next(i for i, line in enumerate(lines)
                         if line.startswith('infer: model ready'))
            if run == 1:  # read from the cache: nothing to say
                assert said == [] and not any('calibration' in line for line in lines)
                continue
            assert len(said) == 1 and 'once' in lines[said[0]] and \
                str(tmp_path / 'cache') in lines[said[0]]
            counts = [i for i, line in enumerate(lines)
                      if line.startswith('infer: INT8 calibration: frame ')]
            converted = next(i for i, line in enumerate(lines) if 'converted in' in line)
            if precision == 'int8':
                assert lines[counts[0]].startswith('infer: INT8 calibration: frame 0/5')
                assert lines[counts[-1]].startswith('infer: INT8 calibration: frame 5/5')
                assert said[0] < counts[0] < counts[-1] < converted < ready
            else:
                assert counts == [] and said[0] < converted < ready


@needs_openvino
@pytest.mark.parametrize('comparison', [['--compare-backends', 'openvino'],
                                        ['--compare-precision', 'fp32']])
def test_a_comparison_says_each_engine_as_it_loads(tmp_path, capsys, tiny_model, monkeypatch,
                                                   comparison):
    from depthclip_ros.tools.cli import main
    monkeypatch.setenv('DEPTHCLIP_CACHE_DIR', str(tmp_path / 'cache'))
    with random_models_shared():
        assert main(['bench', *comparison, '--pretrained', 'none', '--device', 'cpu',
                     '--input-size', *map(str, SMALL), '--model', tiny_model, '--warmup',
                     '0', '--repeat', '1', '--image-size', '40', '56']) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith('bench: starting torch')  # before torch is imported
    stages = [line for line in lines if re.match(r'bench: \[\d/\d\] ', line)]
    assert [s.split('] ')[1].split('...')[0] for s in stages] == [
        *(f'loading the {label} engine' for label in (
            ('torch', 'openvino') if comparison[0] == '--compare-backends'
            else [line.split('loading the ')[1].split(' engine')[0] for line in stages[:-1]])),
        f'timing {len(stages) - 1} engines: 0 warm-up + 1 rounds each']
    if comparison[0] == '--compare-backends':
        loading = lines.index(stages[1])
        assert lines[loading + 2].startswith('bench: converting the OpenVINO fp32 trunk')


def test_compare_backends_lists_openvino_as_not_available_without_it(monkeypatch):
    import argparse

    from depthclip_ros.tools.bench import backends, speed
    parser = argparse.ArgumentParser()
    speed.add_arguments(parser)
    args = parser.parse_args(['--compare-backends', 'openvino'])
    monkeypatch.setattr(backends, 'openvino_installed', lambda calibrating=False: False)
    plan, missing = backends.plan_backends(['openvino'], args)
    assert [label for label, _ in plan] == ['torch']
    assert missing == [('openvino', 'the openvino package is not installed '
                                    '(pip install .[openvino])')]

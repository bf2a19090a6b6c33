"""Loading every weights-file format, made in the test from random weights."""

import zipfile

import numpy as np
import pytest
import torch

from depthclip_ros.geometry import Intrinsics
from depthclip_ros.model import DepthCLIP, ModelConfig, WeightsError

CAMERA = Intrinsics(518.86, 519.47, 144.0, 112.0, 288, 224)
RGB = np.random.default_rng(0).integers(0, 256, (224, 288, 3), dtype=np.uint8)


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    """A random RN50-quickgelu whose weights survive an fp16 round trip (OpenAI's
    TorchScript release is fp16), saved in every format."""
    import open_clip
    from safetensors.torch import save_file
    torch.manual_seed(1)
    clip = open_clip.create_model('RN50-quickgelu', pretrained=None).eval()
    clip.half().float()
    folder = tmp_path_factory.mktemp('weights')
    state = clip.state_dict()
    torch.save(state, folder / 'rn50.pt')
    torch.save({'state_dict': {f'module.{k}': v for k, v in state.items()}},
               folder / 'rn50_checkpoint.bin')
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / 'rn50.safetensors'))
    traced = torch.jit.trace(clip, (torch.zeros(1, 3, 224, 224),
                                    torch.zeros(1, 77, dtype=torch.long)), check_trace=False,
                             strict=False)
    traced.save(str(folder / 'RN50_openai_torchscript.pt'))
    engine = DepthCLIP(ModelConfig(model='RN50-quickgelu', pretrained=str(folder / 'rn50.pt'),
                                   device='cpu', input_size=(224, 288))).load()
    return folder, engine.predict(RGB, CAMERA)


@pytest.mark.parametrize('name', ['rn50.pt', 'rn50_checkpoint.bin', 'rn50.safetensors',
                                  'RN50_openai_torchscript.pt'])
def test_every_format_loads_the_same_weights(reference, name):
    folder, expected = reference
    path = folder / name
    if name.startswith('RN50_openai'):
        with zipfile.ZipFile(path) as archive:  # really TorchScript
            assert any(n.endswith('constants.pkl') for n in archive.namelist())
    engine = DepthCLIP(ModelConfig(model='RN50-quickgelu', pretrained=str(path), device='cpu',
                                   input_size=(224, 288))).load()
    assert not engine.random_weights
    np.testing.assert_allclose(engine.predict(RGB, CAMERA), expected, rtol=1e-4, atol=1e-4)


def test_random_weights_differ_from_the_file(reference):
    _, expected = reference
    torch.manual_seed(123)
    engine = DepthCLIP(ModelConfig(model='RN50-quickgelu', pretrained='none', device='cpu',
                                   input_size=(224, 288))).load()
    assert engine.random_weights
    assert np.abs(engine.predict(RGB, CAMERA) - expected).max() > 1e-3


def test_missing_wrong_and_unknown_weights_fail_with_instructions(tmp_path):
    with pytest.raises(WeightsError, match='does not exist'):
        DepthCLIP(ModelConfig(pretrained=str(tmp_path / 'absent.pt'), device='cpu')).load()
    garbage = tmp_path / 'garbage.pt'
    garbage.write_bytes(b'not a checkpoint')
    with pytest.raises(WeightsError, match='pretrained:=none'):
        DepthCLIP(ModelConfig(pretrained=str(garbage), device='cpu')).load()
    with pytest.raises(WeightsError, match='neither a weights file nor'):
        DepthCLIP(ModelConfig(pretrained='no-such-tag', device='cpu')).load()


def test_wrong_architecture_fails_clearly(reference):
    folder, _ = reference
    with pytest.raises(WeightsError, match='could not load'):
        DepthCLIP(ModelConfig(model='RN101', pretrained=str(folder / 'rn50.pt'),
                              device='cpu')).load()

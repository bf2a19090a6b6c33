"""Loading every weights-file format, made in the test from random weights; tags from the
local cache, and quick, clear failures without it and without network."""

import gc
import socket
import threading
import time
import zipfile

import numpy as np
import pytest
import torch

from depthclip_ros.engine import weights as model_module
from depthclip_ros.engine.config import ModelConfig
from depthclip_ros.engine.depthclip import DepthCLIP
from depthclip_ros.engine.weights import how_to_supply_weights, WeightsError
from depthclip_ros.geometry import Intrinsics
from depthclip_ros.ros.hints import LAUNCH_SPELLING, node_spelling, ROS_SPELLING, with_hint

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
    del clip, state, traced  # the files hold them now; the suite's peak memory is here
    gc.collect()
    engine = DepthCLIP(ModelConfig(model='RN50-quickgelu', pretrained=str(folder / 'rn50.pt'),
                                   device='cpu', input_size=(224, 288))).load()
    expected = engine.predict(RGB, CAMERA)
    engine.release()
    return folder, expected


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
    with pytest.raises(WeightsError, match='--pretrained none'):
        DepthCLIP(ModelConfig(pretrained=str(garbage), device='cpu')).load()
    with pytest.raises(WeightsError, match='neither a weights file nor'):
        DepthCLIP(ModelConfig(pretrained='no-such-tag', device='cpu')).load()


def test_wrong_architecture_fails_clearly(reference):
    folder, _ = reference
    with pytest.raises(WeightsError, match='could not load'):
        DepthCLIP(ModelConfig(model='RN101', pretrained=str(folder / 'rn50.pt'),
                              device='cpu')).load()


# ---------------------------------------------------------------- tags, cache and network
# open_clip's RN50/openai lives in the Hugging Face hub repository below; the cache layout
# is the hub client's (models--org--name/refs/main -> snapshots/<commit>/<file>).
HUB_REPO_FOLDER = 'models--timm--resnet50_clip.openai'
COMMIT = '0123456789abcdef0123456789abcdef01234567'
OPENAI_RN50 = dict(model='RN50', pretrained='openai', device='cpu', input_size=(224, 288))


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache, network allowed, the hub endpoint a closed loopback port
    (never the real hub), and a record of every reachability probe. open_clip is imported
    first: its import (seconds on a loaded machine) is not what the tests time."""
    from huggingface_hub import constants
    import open_clip  # noqa: F401
    cache = tmp_path / 'hub'
    cache.mkdir()
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(cache))
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setattr(constants, 'ENDPOINT', f'http://127.0.0.1:{closed_port()}')
    probes = []
    real_probe = model_module._unreachable

    def probe(url, timeout=None):
        probes.append(url)
        return real_probe(url, timeout)

    monkeypatch.setattr(model_module, '_unreachable', probe)
    return cache, probes


def cache_file(cache, weights, filename='open_clip_model.safetensors'):
    """Put ``weights`` into the hub cache as RN50/openai's ``filename`` (a symlink, as the
    hub client makes them)."""
    repo = cache / HUB_REPO_FOLDER
    (repo / 'refs').mkdir(parents=True)
    (repo / 'refs' / 'main').write_text(COMMIT)
    snapshot = repo / 'snapshots' / COMMIT
    snapshot.mkdir(parents=True)
    (snapshot / filename).symlink_to(weights)


@pytest.mark.parametrize('offline', [False, True])
@pytest.mark.parametrize('filename', ['open_clip_model.safetensors',
                                      'open_clip_pytorch_model.bin'])
def test_a_cached_tag_is_read_from_the_cache_without_the_network(reference, hub, monkeypatch,
                                                                  offline, filename):
    from huggingface_hub import constants
    folder, expected = reference
    cache, probes = hub
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', offline)
    cache_file(cache, folder / ('rn50.safetensors' if filename.endswith('safetensors')
                                else 'rn50.pt'), filename)
    engine = DepthCLIP(ModelConfig(**OPENAI_RN50)).load()
    assert probes == []  # the network was not even probed
    # Same weights, and OpenAI's QuickGELU (the tag's activation; RN50 itself has GELU).
    np.testing.assert_allclose(engine.predict(RGB, CAMERA), expected, rtol=1e-4, atol=1e-4)


def test_not_cached_and_offline_fails_at_once_without_probing(hub, monkeypatch):
    from huggingface_hub import constants
    cache, probes = hub
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    started = time.monotonic()
    with pytest.raises(WeightsError) as caught:
        DepthCLIP(ModelConfig(**OPENAI_RN50)).load()
    assert time.monotonic() - started < 10.0  # hub retries took ~50 s
    assert probes == []
    assert 'not in the local cache' in caught.value.problem
    assert 'HF_HUB_OFFLINE=1' in caught.value.problem
    assert str(cache / HUB_REPO_FOLDER) in caught.value.problem


def test_not_cached_and_no_network_fails_in_seconds(hub):
    _, probes = hub
    started = time.monotonic()
    with pytest.raises(WeightsError) as caught:
        DepthCLIP(ModelConfig(**OPENAI_RN50)).load()
    assert time.monotonic() - started < 10.0  # hub retries took ~50 s
    assert len(probes) == 1
    assert 'not in the local cache' in caught.value.problem
    assert 'no network' in caught.value.problem and 'cannot be reached' in caught.value.problem
    assert 'Supply weights' in str(caught.value)


def test_a_host_that_does_not_answer_counts_as_no_network(monkeypatch):
    """A connection (or name lookup) that hangs is given up after the probe's timeout."""
    release = threading.Event()

    def hang(*args, **kwargs):
        release.wait(30)
        raise OSError('released')

    monkeypatch.setattr(socket, 'create_connection', hang)
    try:
        started = time.monotonic()
        reason = model_module._unreachable('https://huggingface.co', timeout=0.5)
        assert time.monotonic() - started < 2.0
        assert reason == 'huggingface.co:443 did not answer within 0.5 s'
    finally:
        release.set()


def test_a_reachable_host_or_its_proxy_is_reachable(monkeypatch):
    with socket.socket() as server:
        server.bind(('127.0.0.1', 0))
        server.listen(1)
        port = server.getsockname()[1]
        for name in ('https_proxy', 'HTTPS_PROXY', 'no_proxy', 'NO_PROXY', 'all_proxy',
                     'ALL_PROXY'):
            monkeypatch.delenv(name, raising=False)
        assert model_module._unreachable(f'http://127.0.0.1:{port}') is None
        assert model_module._unreachable(f'http://127.0.0.1:{closed_port()}') is not None
        # Behind a proxy, the proxy is what has to answer (the hub's name may not even
        # resolve here).
        monkeypatch.setenv('https_proxy', f'http://127.0.0.1:{port}')
        assert model_module._unreachable('https://no-such-host.invalid') is None
        monkeypatch.setenv('https_proxy', f'http://127.0.0.1:{closed_port()}')
        reason = model_module._unreachable('https://no-such-host.invalid')
        assert reason is not None and 'proxy of no-such-host.invalid' in reason


def test_the_hint_speaks_the_syntax_of_where_weights_are_given(monkeypatch):
    cli = how_to_supply_weights()
    ros, launch = how_to_supply_weights(ROS_SPELLING), how_to_supply_weights(LAUNCH_SPELLING)
    assert '--pretrained none' in cli and ':=' not in cli
    assert '-p pretrained:=none' in ros and '--ros-args' in ros and '--pretrained' not in ros
    assert 'pretrained:=none' in launch and 'depth.launch.py' in launch
    assert '-p ' not in launch and '--pretrained' not in launch
    error = WeightsError('weights file x does not exist')
    assert error.problem == 'weights file x does not exist'
    assert error.message(ROS_SPELLING) == f'{error.problem}\n{ros}'
    assert error.hint(LAUNCH_SPELLING) == launch
    assert str(error) == error.message() == f'{error.problem}\n{cli}'
    assert WeightsError('no hint', supply_hint=False).message(ROS_SPELLING) == 'no hint'
    monkeypatch.delenv('DEPTHCLIP_STARTED_BY_LAUNCH', raising=False)
    assert node_spelling() == ROS_SPELLING and with_hint(error) == error.message(ROS_SPELLING)
    monkeypatch.setenv('DEPTHCLIP_STARTED_BY_LAUNCH', '1')
    assert node_spelling() == LAUNCH_SPELLING
    assert with_hint(error) == error.message(LAUNCH_SPELLING)
    assert with_hint(ValueError('plain')) == 'plain'


def test_not_cached_with_a_reachable_hub_is_left_to_open_clip_to_download(hub, monkeypatch):
    """Users with network keep open_clip's download (faked here: no real hub is asked)."""
    import open_clip
    _, probes = hub
    monkeypatch.setattr(model_module, '_unreachable', lambda url, timeout=None:
                        probes.append(url))  # None: reachable
    calls = []

    def create_model(name, pretrained=None, **kwargs):
        calls.append((name, pretrained, kwargs))
        raise RuntimeError('download faked away')

    monkeypatch.setattr(open_clip, 'create_model', create_model)
    with pytest.raises(WeightsError, match='download faked away'):
        DepthCLIP(ModelConfig(**OPENAI_RN50)).load()
    assert len(probes) == 1
    assert calls == [('RN50', 'openai', {'force_quick_gelu': True})]

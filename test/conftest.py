"""Test-wide set-up.

Network safety (docs/platform.md): before anything can start rclpy, keep DDS discovery on
this machine and pick a random domain so that parallel runs never hear each other.
"""

import os
from pathlib import Path
import random

os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ.setdefault('ROS_DOMAIN_ID', str(random.randint(1, 101)))
os.environ.setdefault('HF_HUB_OFFLINE', '1')  # tests never download weights

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _shared_data() -> Path:
    if os.environ.get('DEPTHCLIP_SHARED_DATA'):
        return Path(os.environ['DEPTHCLIP_SHARED_DATA'])
    # A fresh clone has ../shared beside it; colcon runs the tests from build/, so also
    # look beside the source tree the package was built from.
    for base in (REPO, Path.cwd(), *Path.cwd().parents):
        candidate = base.parent / 'shared' / 'data'
        if candidate.is_dir():
            return candidate
    return REPO.parent / 'shared' / 'data'


SHARED_DATA = _shared_data()


def shared_data(*parts: str) -> Path:
    """Path inside ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f'real data not available: {path} is absent (set DEPTHCLIP_SHARED_DATA)')
    return path


@pytest.fixture(scope='session')
def engine():
    """One random-weights RN50 on the CPU for the whole run (random weights: tests
    check computation, never accuracy)."""
    import torch

    from depthclip_ros.engine.config import ModelConfig
    from depthclip_ros.engine.depthclip import DepthCLIP

    torch.manual_seed(0)
    return DepthCLIP(ModelConfig(pretrained='none', device='cpu')).load()


@pytest.fixture(scope='session')
def small_engine():
    """Random weights and a small network input: for pipeline and bag mechanics."""
    from depthclip_ros.engine.config import ModelConfig
    from depthclip_ros.engine.depthclip import DepthCLIP

    return DepthCLIP(ModelConfig(pretrained='none', device='cpu', input_size=(64, 96))).load()


@pytest.fixture
def ros():
    """An rclpy context of its own for one test (conftest set the network-safe env)."""
    import rclpy
    context = rclpy.Context()
    rclpy.init(context=context)
    yield context
    rclpy.try_shutdown(context=context)


def small_engine_for_tools(monkeypatch, engine, *modules):
    """Make each tool module's ``load_engine`` return ``engine`` with the head its options
    ask for; returns a function that restores the engine's head."""
    from depthclip_ros.tools.common import configs_from_args
    before = engine.head

    def load(args):
        engine.set_head(configs_from_args(args)[1])
        return engine

    for module in modules:
        monkeypatch.setattr(module, 'load_engine', load)
    return lambda: engine.set_head(before)


def fill_disk_at(monkeypatch, module, writer: str, file_name: str) -> None:
    """Make ``module.<writer>`` fail with ENOSPC ("No space left on device") when it writes
    the file named ``file_name``; every other file is written as usual."""
    from pathlib import Path
    real = getattr(module, writer)

    def full_disk(path, *rest, **kwargs):
        if Path(path).name == file_name:
            raise OSError(28, 'No space left on device')
        return real(path, *rest, **kwargs)

    monkeypatch.setattr(module, writer, full_disk)

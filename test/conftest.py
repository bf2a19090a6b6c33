"""Test-wide set-up: network safety, tiers, memory.

Network safety: before anything can start rclpy, keep DDS discovery on this
machine and pick a random ROS domain of the tests' own, whatever the environment exports
(a developer's robot on an exported domain must never hear a test, nor a test the robot),
never the exported one, and say which. Two runs on one host may still draw the same domain:
rosutil.unique_namespace keeps each test's topics apart.

Tiers (pytest.ini registers the marks): every test is marked here from :data:`TIERS`, so
that no test file carries tier marks of its own: ``unit`` (no rclpy context, no DDS, no node
process, fast), ``ros`` (rclpy over DDS in this process, or node processes), ``slow`` (over
~5 s alone); ``smoke`` marks the few tests ``colcon test`` runs in CI (.ci/run). Quick tier:
``./scripts/test.sh -m "not slow"``; fast and ROS-free: ``-m unit``.

Memory: engines are large (a random RN50 holds ~0.7 GB) and nodes, harnesses and engines
built in a test often sit in reference cycles that Python's collector reaches only now and
then. After a test that left the process noticeably larger, and after each test module, the
cycles are collected and glibc hands the freed memory back, so that the run holds what the
live tests need, not everything every earlier test built (see :func:`release_memory`).
"""

import ctypes
import gc
import os
from pathlib import Path
import random


def choose_ros_domain(exported, rng=random) -> int:
    """A random ROS domain in 1..101 (ROS documents 0..101 as safe on Linux; 0 is the
    default every unconfigured node uses), never ``exported`` (an int or its text)."""
    try:
        avoid = int(exported)
    except (TypeError, ValueError):
        avoid = None
    return rng.choice([domain for domain in range(1, 102) if domain != avoid])


EXPORTED_ROS_DOMAIN_ID = os.environ.get('ROS_DOMAIN_ID')
os.environ['ROS_DOMAIN_ID'] = str(choose_ros_domain(EXPORTED_ROS_DOMAIN_ID))
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ.setdefault('HF_HUB_OFFLINE', '1')  # tests never download weights

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------- tiers
# Test file -> (tier, slow). The tier is 'unit' or 'ros' (see the module docstring); slow
# is True (every test of the file), or the names of its tests (without parameters) that
# take over ~5 s alone on a quiet 2-core machine. A slow 'unit' file's tests are marked
# only 'slow' (unit means fast). test_tiers.py fails when a test file is missing here or a
# name here is no longer a test.
TIERS = {
    'test_allocator.py': ('unit', {'test_frames_reuse_memory_with_the_settings_and_not_without'}),
    'test_bag.py': ('unit', set()),
    'test_bag_objects.py': ('unit', set()),
    'test_bag_safety.py': ('unit', set()),
    'test_bag_uncertainty.py': ('unit', set()),
    'test_batching.py': ('unit', set()),
    'test_bench_cameras.py': ('ros', {'test_two_cameras_answered_table_and_json'}),
    'test_bench_node.py': ('ros', True),
    'test_bench_speed.py': ('unit', set()),
    'test_camera_models.py': ('unit', set()),
    'test_conventions.py': ('ros', set()),
    'test_evaluate_baselines.py': ('unit', set()),
    'test_fuzz.py': ('unit', set()),
    'test_geometry.py': ('unit', set()),
    'test_install.py': ('unit', {'test_the_plain_python_tools_run_without_any_ros_package'}),
    'test_launch.py': ('ros', set()),
    'test_layers.py': ('unit', set()),
    'test_lifecycle.py': ('ros', set()),
    'test_locate.py': ('unit', set()),
    'test_messages.py': ('unit', set()),
    'test_metrics.py': ('unit', set()),
    'test_model.py': ('unit', set()),
    'test_node.py': ('ros', set()),
    'test_node_cameras.py': ('ros', set()),
    'test_node_hardening.py': ('ros', set()),
    'test_node_objects.py': ('ros', set()),
    'test_node_process.py': ('ros', True),
    'test_node_uncertainty.py': ('ros', set()),
    'test_object_messages.py': ('unit', set()),
    'test_objects.py': ('unit', set()),
    'test_parameters.py': ('unit', set()),
    'test_phrases.py': ('unit', set()),
    'test_pipeline.py': ('unit', set()),
    'test_proposals.py': ('unit', set()),
    'test_referring.py': ('unit', set()),
    'test_ros_domain.py': ('ros', set()),
    'test_scene_bins.py': ('unit', set()),
    'test_scenes.py': ('unit', set()),
    'test_soak.py': ('ros', True),
    'test_speed_paths.py': ('unit', set()),
    'test_tiers.py': ('unit', set()),
    'test_tools.py': ('unit', set()),
    'test_tools_robustness.py': ('unit', set()),
    'test_tools_uncertainty.py': ('unit', set()),
    'test_torch_threads.py': ('unit', set()),
    'test_uncertainty.py': ('unit', set()),
    'test_weights.py': ('unit', set()),
}
# What `colcon test` runs in CI (.ci/run, -m smoke): the package as installed, one node over
# DDS, the launch file's arguments given to a real node.
SMOKE = {
    'test_install.py': {'test_installed_tools_find_the_shipped_files_outside_the_checkout'},
    'test_node.py': {'test_outputs_match_the_input_and_each_other'},
    'test_launch.py': {'test_the_node_accepts_exactly_what_the_launch_file_passes'},
    'test_ros_domain.py': {'test_an_exported_domain_never_reaches_the_tests'},
}


def tier_marks(file_name: str, test_name: str) -> list[str]:
    """The marks of one test (``test_name`` without its parameters). A file missing from
    :data:`TIERS` counts as slow (kept out of the quick tier; test_tiers.py names it)."""
    tier, slow = TIERS.get(file_name, (None, True))
    marks = []
    is_slow = slow is True or test_name in slow
    if tier == 'ros':
        marks.append('ros')
    elif tier == 'unit' and not is_slow:
        marks.append('unit')
    if is_slow:
        marks.append('slow')
    if test_name in SMOKE.get(file_name, ()):
        marks.append('smoke')
    return marks


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = getattr(item, 'originalname', None) or item.name.split('[')[0]
        for mark in tier_marks(item.path.name, name):
            item.add_marker(mark)


def pytest_sessionstart(session):
    reporter = session.config.pluginmanager.get_plugin('terminalreporter')
    if reporter is not None:
        exported = ('' if not EXPORTED_ROS_DOMAIN_ID
                    else f'; the exported {EXPORTED_ROS_DOMAIN_ID} is not used')
        domain = os.environ['ROS_DOMAIN_ID']
        reporter.write_line(f'ROS_DOMAIN_ID={domain} (random, chosen for this test run'
                            f'{exported}), discovery on this host only')


# ------------------------------------------------------------------------------ memory
COLLECT_ABOVE_MB = 256  # collect after a test that left the process this much larger


def resident_mb() -> int:
    """This process's resident memory in MiB (0 where /proc is missing)."""
    try:
        with open('/proc/self/status') as status:
            for line in status:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def _malloc_trim():
    try:
        libc = ctypes.CDLL('libc.so.6')
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_TRIM = _malloc_trim()
_after_release = {'mb': 0}


def release_memory() -> None:
    """Collect reference cycles (nodes, harnesses, engines of finished tests) and give
    glibc's free memory back to the system."""
    gc.collect()
    if _TRIM is not None:
        _TRIM(0)
    _after_release['mb'] = resident_mb()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield  # the test's fixtures are finalised now (module ones at a module's last test)
    if (nextitem is None or nextitem.path != item.path
            or resident_mb() - _after_release['mb'] > COLLECT_ABOVE_MB):
        release_memory()


def pytest_terminal_summary(terminalreporter):
    """The run's peak memory, so that its cost is known (README: the test command)."""
    import resource
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # KiB -> GiB
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2
    terminalreporter.write_line(f'peak resident memory: pytest {own:.2f} GiB, largest child '
                                f'process {child:.2f} GiB')


# ---------------------------------------------------------------------------- data
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


# ------------------------------------------------------------------------- fixtures
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

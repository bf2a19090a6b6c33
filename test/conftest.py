"""Test-wide set-up: network safety, tiers, memory.

Network safety (docs/platform.md): before anything can start rclpy, keep DDS discovery on this
machine and pick a random ROS domain of the tests' own, whatever the environment exports
(a developer's robot on an exported domain must never hear a test, nor a test the robot),
never the exported one, and say which. Two runs on one host may still draw the same domain:
rosutil.unique_namespace keeps each test's topics apart.

Tiers (pytest.ini registers the marks): every test is marked here from :data:`TIERS`, so
that no test file carries tier marks of its own: ``unit`` (no rclpy context, no DDS, no node
process, fast), ``ros`` (rclpy over DDS in this process, or node processes), ``slow`` (over
~5 s alone); ``smoke`` marks the few tests ``colcon test`` runs in CI (.ci/run). Quick tier:
``./scripts/test.sh -m "not slow"``; fast and ROS-free: ``-m unit``.

Models: tests of mechanics (shapes, plumbing, errors, caching, node and tool wiring) run on
a tiny random open_clip ResNet CLIP, :data:`TINY_MODEL` (``small_engine``, the in-process
nodes, the tools' ``--model``); tests against the authors' computation, open_clip itself or
speed keep RN50 (``engine``).

Memory (the whole run's peak was ~10 GB): a random RN50 holds ~0.45 GB, and nodes, harnesses
and engines built in a test often sit in reference cycles that Python's collector reaches
only now and then. After a test that left the process noticeably larger, and after each
test module, the cycles are collected and glibc hands the freed memory back
(:func:`release_memory`), so that the run holds what the live tests need, not everything
every earlier test built. ``engine``, ``small_engine`` and the nodes of 'ros' files share
one random model per configuration (:func:`random_models_shared`).
"""

import atexit
from contextlib import contextmanager
import ctypes
import gc
import os
from pathlib import Path
import shutil
import subprocess
import sys
import tempfile

# tools/node_process imports only the standard library and io/resources: nothing here can
# start rclpy before the environment below is set.
from depthclip_ros.tools.node_process import choose_ros_domain

EXPORTED_ROS_DOMAIN_ID = os.environ.get('ROS_DOMAIN_ID')
os.environ['ROS_DOMAIN_ID'] = str(choose_ros_domain(EXPORTED_ROS_DOMAIN_ID))
# this run's own domain: tools/node_process.isolate_ros_traffic keeps it
os.environ['DEPTHCLIP_OWN_ROS_DOMAIN'] = os.environ['ROS_DOMAIN_ID']
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ.setdefault('HF_HUB_OFFLINE', '1')  # tests never download weights
# Networks converted for backend openvino go to a cache of this run's own, never the user's
# (~/.cache/depthclip_ros), removed at exit; test_backend.py uses its own folders within.
_TEST_CACHE = tempfile.mkdtemp(prefix='depthclip-test-cache-')
os.environ['DEPTHCLIP_CACHE_DIR'] = _TEST_CACHE
atexit.register(shutil.rmtree, _TEST_CACHE, ignore_errors=True)

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------- tiers
# Test file -> (tier, slow). The tier is 'unit' or 'ros' (see the module docstring); slow
# is True (every test of the file), or the names of its tests (without parameters) that
# take over ~5 s alone on a quiet 2-core machine (measured: over ~8 s with the machine's 2
# cores shared with 2 other test runs), and every test that runs a node process. A slow
# 'unit' file's tests are marked only 'slow' (unit means fast). test_tiers.py fails when a
# test file is missing here or a name here is no longer a test.
TIERS = {
    'test_allocator.py': ('unit', set()),
    'test_bag.py': ('unit', {'test_interrupting_leaves_a_readable_bag_with_whole_frames'}),
    'test_bag_objects.py': ('unit', set()),
    'test_bag_safety.py': ('unit', {  # a bag tool process
        'test_sigkill_leaves_the_input_intact_and_a_recoverable_partial'}),
    'test_bag_uncertainty.py': ('unit', set()),
    'test_bag_exit.py': ('unit', True),  # whole bag runs, one per kind of damage
    'test_backend.py': ('unit', {  # conversions by OpenVINO, NNCF's calibration, tools
        'test_int8_runs_close_to_fp32_and_its_key_holds_the_calibration',
        'test_encode_image_through_the_backend_equals_torch',
        'test_a_corrupt_entry_is_rebuilt_with_one_warning',
        'test_infer_tool_with_backend_openvino',
        'test_evaluate_locate_and_bag_run_on_openvino'}),
    'test_batching.py': ('unit', set()),
    'test_bench_cameras.py': ('ros', {'test_two_cameras_answered_table_and_json'}),
    'test_bench_node.py': ('ros', True),
    'test_bench_speed.py': ('unit', set()),
    'test_camera_models.py': ('unit', set()),
    'test_conventions.py': ('ros', set()),
    'test_evaluate_baselines.py': ('unit', set()),
    'test_fuzz.py': ('unit', set()),
    'test_export.py': ('unit', set()),
    'test_geometry.py': ('unit', set()),
    'test_gpu_check.py': ('unit', {  # a random engine run, a whole quick check
        'test_the_wheels_cover_every_module_a_random_engine_run_imports',
        'test_a_quick_cpu_run_writes_the_markdown_and_the_json'}),
    'test_install.py': ('unit', {'test_the_plain_python_tools_run_without_any_ros_package'}),
    'test_launch.py': ('ros', {  # each runs ros2 launch against a colcon-built install
        'test_show_args_lists_exactly_the_table',
        'test_an_argument_the_file_does_not_declare_ends_the_launch_naming_it',
        'test_a_file_that_includes_ours_keeps_its_own_arguments',
        'test_a_missing_params_file_ends_the_launch_naming_it',
        'test_depth_launch_remaps_namespace_params_file_arguments_and_sim_time',
        'test_depth_launch_managed_waits_for_a_lifecycle_manager',
        'test_depth_lifecycle_launch_brings_the_node_up_with_every_argument',
        'test_ctrl_c_during_the_lifecycle_bring_up_ends_cleanly',
        'test_cameras_launch_serves_each_camera',
        'test_a_bad_argument_ends_the_launch_naming_it'}),
    'test_layers.py': ('unit', set()),
    'test_jazzy_pins.py': ('unit', set()),
    'test_lifecycle.py': ('ros', set()),
    'test_locate.py': ('unit', set()),
    'test_messages.py': ('unit', set()),
    'test_metrics.py': ('unit', set()),
    'test_model.py': ('unit', {  # RN50 at its full input size
        'test_paper_mode_equals_the_authors_computation'}),
    'test_node.py': ('ros', {'test_backend_openvino_gives_the_depth_of_the_torch_backend'}),
    'test_node_cameras.py': ('ros', {  # node processes
        'test_the_node_process_refuses_a_bad_camera_name_in_one_line'}),
    'test_node_configs.py': ('unit', set()),
    'test_node_hardening.py': ('ros', {  # node processes
        'test_a_signal_while_starting_exits_zero_quickly_without_traceback',
        'test_a_signal_while_the_worker_encodes_prompts_does_not_wait_for_it'}),
    'test_node_objects.py': ('ros', set()),
    'test_node_start.py': ('ros', {  # node processes
        'test_the_node_process_refuses_in_one_line_without_traceback',
        'test_the_node_process_warns_of_a_misspelt_parameter'}),
    'test_node_process.py': ('ros', True),
    'test_node_uncertainty.py': ('ros', set()),
    'test_object_messages.py': ('unit', set()),
    'test_objects.py': ('unit', set()),
    'test_parameters.py': ('unit', set()),
    'test_phrases.py': ('unit', set()),
    'test_pipeline.py': ('unit', set()),
    'test_proposals.py': ('unit', set()),
    'test_referring.py': ('unit', {  # RN50 against the re-statement
        'test_node_protocol_reuses_the_depth_pass_with_a_resized_positional_embedding',
        'test_paper_protocol_scores_equal_the_restatement'}),
    'test_ros_domain.py': ('ros', set()),
    'test_scene_bins.py': ('unit', set()),
    'test_scenes.py': ('unit', {  # RN50 at full size against open_clip
        'test_another_template_is_open_clips_too',
        'test_probabilities_are_open_clips_zero_shot',
        'test_runs_without_autograd_and_accepts_views',
        'test_text_encoder_runs_once_per_names_and_template',
        'test_the_comparison_notices_wrong_preprocessing',
        'test_the_frame_matters'}),
    'test_soak.py': ('ros', True),
    'test_speed_paths.py': ('unit', {
        'test_bf16_depth_on_a_real_frame_at_the_default_size',
        'test_channels_last_fp32_equals_nchw_fp32',
        'test_referring_and_scenes_run_on_the_bf16_engine'}),
    'test_tiers.py': ('unit', set()),
    'test_tools.py': ('unit', {  # tool processes (RN50)
        'test_random_weights_are_announced_once_at_load',
        'test_uncached_weights_without_network_fail_in_seconds_saying_so_once'}),
    'test_tools_help.py': ('unit', {'test_the_measurement_sees_a_heavy_import'}),
    'test_tools_outputs.py': ('unit', set()),
    'test_tools_progress.py': ('unit', set()),
    'test_tools_robustness.py': ('unit', {
        'test_refusals_as_a_process_end_in_one_line_and_status_2',
        'test_unreadable_files_in_a_real_run'}),
    'test_tools_texts.py': ('unit', set()),
    'test_tools_uncertainty.py': ('unit', set()),
    'test_torch_threads.py': ('unit', set()),
    'test_uncertainty.py': ('unit', {  # RN50 at full size against the reference
        'test_sigma_is_the_standard_deviation_of_the_metric_bin_distribution',
        'test_with_flip_averaging_sigma_is_that_of_the_mixed_distributions'}),
    'test_weights.py': ('unit', {
        'test_a_cached_tag_is_read_from_the_cache_without_the_network',
        'test_every_format_loads_the_same_weights'}),
}
# What `colcon test` runs in CI (.ci/run, -m smoke): the package as installed, one node over
# DDS, the launch file's arguments given to a real node.
SMOKE = {
    'test_install.py': {'test_installed_tools_find_the_shipped_files_outside_the_checkout'},
    'test_node.py': {'test_outputs_match_the_input_and_each_other'},
    'test_launch.py': {'test_every_file_declares_the_shared_arguments_and_uses_each'},
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
    terminalreporter.write_line(f'peak resident memory: pytest {own:.2f} GiB; largest child '
                                f'process {child:.2f} GiB (counting the pages it shares with '
                                f'pytest, as the kernel does)')


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


# ---------------------------------------------------------------------- tiny model
# A ModifiedResNet CLIP as DepthCLIP needs it (stem, four stages, attention pool; 256 token
# channels for a 128-wide text embedding: paper mode keeps every other channel, as on RN50)
# with one bottleneck per stage, 8 wide, and a one-layer text tower of 64 (RN50's tokenizer,
# vocabulary and 77-token context): 3.6 M parameters (3.2 M of them the token embedding),
# built in a tenth of a second, a frame in milliseconds. The tests register it with
# open_clip (test/RNtiny-test.json); the package does not ship it, so a user never meets
# it. ModelConfig takes it as it takes any 'RN' model. Tool processes get it from
# :data:`TINY_TOOL`; node processes (started as a user starts them) keep RN50.
TINY_MODEL = 'RNtiny-test'
TINY_CONFIG_FILE = Path(__file__).resolve().with_name(f'{TINY_MODEL}.json')
# ``[*TINY_TOOL, *ARGS]``: ``depthclip-ros ARGS`` as a process (as ``python -m
# depthclip_ros.tools.cli ARGS``) that knows the tiny model; needs PYTHONPATH to the package
TINY_TOOL = [sys.executable, '-c', f'import open_clip\n'
             f'open_clip.add_model_config({str(TINY_CONFIG_FILE)!r})\n'
             f'import sys\n'
             f'from depthclip_ros.tools.cli import main\n'
             f'sys.exit(main(sys.argv[1:]))\n']


def register_tiny_model() -> str:
    """Make :data:`TINY_MODEL` an open_clip model in this process (imports open_clip, ~2 s
    the first time); returns its name."""
    import open_clip
    if TINY_MODEL not in open_clip.list_models():
        open_clip.add_model_config(TINY_CONFIG_FILE)
    return TINY_MODEL


@pytest.fixture(scope='session')
def tiny_model() -> str:
    """:data:`TINY_MODEL`, registered (for tests that give it to a tool's ``--model``)."""
    return register_tiny_model()


# ------------------------------------------------------------------------- fixtures
_RANDOM_MODELS = {}  # model configuration but its input size -> loaded random-weights model


@contextmanager
def random_models_shared():
    """Within this, every engine of random weights built in this process gets the loaded
    model kept for its configuration (built the first time) instead of building and
    initialising a ~0.45 GB RN50 of its own (3 to 8 s). Random weights come from one seed,
    so the model is the very one it would have built; each engine still loads it its own
    way (device, precision, layout, prompts). The input size changes no weight. An engine
    of :data:`TINY_MODEL` registers it first. Weights loading itself is tested without this
    (test_weights.py, test_model.py)."""
    from depthclip_ros.engine import depthclip
    real = depthclip.build_clip

    def build(config):
        if config.model.startswith(TINY_MODEL):
            register_tiny_model()
        if not config.random_weights:
            return real(config)
        # what load() makes of the model: its weights (model, pretrained) cast to the
        # device, dtype and layout it resolves to ('auto' and 'fp32' on the CPU are one
        # model; int8 keeps its torch side in float32). Input size, backend, feature mode
        # and CUDA graphs change no weight.
        from depthclip_ros.engine.runtime import resolve_runtime, trunk_memory_format
        device, dtype = resolve_runtime(config)
        key = repr((config.model, config.pretrained, str(device), str(dtype),
                    str(trunk_memory_format(device, dtype, config.memory_format))))
        if key not in _RANDOM_MODELS:
            _RANDOM_MODELS[key] = real(config)
        return _RANDOM_MODELS[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(depthclip, 'build_clip', build)
        yield


@pytest.fixture(scope='session')
def engine():
    """One random-weights RN50 on the CPU for the whole run (random weights: tests
    check computation, never accuracy)."""
    import torch

    from depthclip_ros.engine.config import ModelConfig
    from depthclip_ros.engine.depthclip import DepthCLIP

    torch.manual_seed(0)
    with random_models_shared():
        return DepthCLIP(ModelConfig(pretrained='none', device='cpu')).load()


@pytest.fixture(scope='session')
def small_engine():
    """The tiny random model (:data:`TINY_MODEL`) at a small network input (64x96), on the
    CPU: for pipeline, bag, tool and batching mechanics. Its model is the one the tiny nodes
    of 'ros' files share (:func:`random_models_shared`)."""
    from depthclip_ros.engine.config import ModelConfig
    from depthclip_ros.engine.depthclip import DepthCLIP

    with random_models_shared():
        return DepthCLIP(ModelConfig(model=TINY_MODEL, pretrained='none', device='cpu',
                                     input_size=(64, 96))).load()


@pytest.fixture(scope='session')
def tiny_engine():
    """The tiny random model at the default network input (416x544, NYU's crop), on the
    CPU: for the engine's invariants at full size (metric scale, flip, bins, batching,
    sizes), which hold whatever the weights. Its model is ``small_engine``'s."""
    from depthclip_ros.engine.config import ModelConfig
    from depthclip_ros.engine.depthclip import DepthCLIP

    with random_models_shared():
        return DepthCLIP(ModelConfig(model=TINY_MODEL, pretrained='none',
                                     device='cpu')).load()


@pytest.fixture(autouse=True)
def nodes_share_the_random_model(request):
    """In 'ros' test files the nodes built in this process (each builds an engine from
    its parameters) share the random model of their configuration
    (:func:`random_models_shared`)."""
    if TIERS.get(request.path.name, ('', ()))[0] != 'ros':
        yield
        return
    with random_models_shared():
        yield


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


# ------------------------------------------------------------------------- without ROS
# What `pip install .` without the `ros` extra gives: no ROS package importable at all.
ROS_PACKAGES = {'rclpy', 'rcl_interfaces', 'sensor_msgs', 'std_msgs', 'diagnostic_msgs',
                'lifecycle_msgs', 'ament_index_python', 'launch', 'launch_ros',
                'builtin_interfaces', 'visualization_msgs', 'geometry_msgs', 'vision_msgs',
                'rosidl_runtime_py', 'rpyutils'}
BLOCK_ROS = f"""
import sys
class NoRos:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {sorted(ROS_PACKAGES)!r}:
            raise ModuleNotFoundError(f'No module named {{name!r}}', name=name)
sys.meta_path.insert(0, NoRos())
from depthclip_ros.tools.cli import main
sys.exit(main(sys.argv[1:]))
"""


def without_ros(*args, cwd=REPO):
    """``depthclip-ros ARGS`` in a fresh interpreter where no ROS package imports."""
    return subprocess.run([sys.executable, '-c', BLOCK_ROS, *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd)

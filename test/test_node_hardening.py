"""An accepted configuration never stops the output; a signal at any moment ends the node
quietly (CPU, random weights: in this process the tests' tiny model, node processes RN50;
small input, real rclpy / Fast DDS on loopback)."""

import itertools
from pathlib import Path
import signal
import subprocess
import sys
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from hypothesis import given, HealthCheck, settings
from hypothesis import strategies as st
import numpy as np
import pytest
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy

from depthclip_ros.engine.config import PAPER_DEPTH_BINS_M, PAPER_DISTANCE_PROMPTS
from depthclip_ros.geometry import Intrinsics
from depthclip_ros.ros import diagnostics
from depthclip_ros.ros.configs import head_from_parameters
from depthclip_ros.tools import node_process

from conftest import random_models_shared
from rosutil import unique_namespace, wait_for
from test_node import Harness, harness  # noqa: F401 - harness: the fixture

HERE = Path(__file__).resolve().parent
LOOPBACK_PROFILE = str(HERE.parent / 'config' / 'fastdds_localhost.xml')


SECS = itertools.count(1000)  # a fresh frame stamp for every output awaited


def send_until_output(h) -> bool:
    h.output_for(next(SECS))  # asserts that the frame's outputs came back
    return True


def set_param(node, name, value):
    return node.set_parameters([Parameter(name, value=value)])[0]


def outputs_continue(h):
    return send_until_output(h)


# ---------------------------------------------------------------- accepted = usable
@pytest.mark.parametrize('name, value, reason', [
    ('prompt_template', '{} {} {0}', 'two plain fields'),
    ('prompt_template', '{:>999999999} {}', 'two plain fields'),
    ('prompt_template', 'only {}', 'two plain fields'),
    ('prompt_objects', ['x' * 400], 'characters'),
    ('prompt_objects', ['a,' * 100], 'tokens'),  # fits the characters, not the context
    ('distance_prompts', [f'd{i}' for i in range(100)], 'at most 64'),
    ('prompt_objects', [f'o{i}' for i in range(17)], 'at most 16'),
])
def test_values_that_cannot_be_built_are_refused_and_output_goes_on(harness, name, value,
                                                                    reason):
    assert send_until_output(harness)
    if name == 'distance_prompts':  # the count check is not the mismatch rule
        result = harness.node.set_parameters([Parameter(name, value=value)])[0]
    else:
        result = set_param(harness.node, name, value)
    assert not result.successful and reason in result.reason, result.reason
    assert harness.node.get_parameter(name).value != value
    assert outputs_continue(harness)
    assert harness.node.streams[0].counts['failed'] == 0


def test_the_worker_survives_any_exception_and_diagnostics_say_so(harness, monkeypatch):
    assert send_until_output(harness)

    def broken(head):
        raise RuntimeError('text encoder exploded')
    monkeypatch.setattr(harness.node.engine, 'set_head', broken)
    assert set_param(harness.node, 'temperature', 0.2).successful
    assert wait_for(lambda: harness.node.streams[0].counts['failed'] >= 1, 10)
    assert 'text encoder exploded' in harness.node.streams[0].last_problem
    monkeypatch.undo()
    # the worker is alive: the next frames are processed, and a new head applies
    assert outputs_continue(harness)
    assert set_param(harness.node, 'temperature', 0.3).successful
    assert wait_for(lambda: harness.node.engine.head.temperature == 0.3, 10)


def test_diagnostics_turn_error_when_frames_arrive_but_nothing_is_published(
        harness, monkeypatch):
    monkeypatch.setattr(diagnostics, 'STALL_S', 1.0)
    statuses = []
    harness.peer.create_subscription(
        DiagnosticArray, '/diagnostics', lambda m: statuses.extend(m.status),
        QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    assert send_until_output(harness)
    real = harness.node.streams[0].pipeline.prepare

    def failing(*args, **kwargs):
        raise MemoryError('out of memory in the test')
    monkeypatch.setattr(harness.node.streams[0].pipeline, 'prepare', failing)

    def stalled():
        harness.send(200)
        own = [s for s in statuses if s.name.startswith(harness.node.get_fully_qualified_name())]
        return own and own[-1].level == DiagnosticStatus.ERROR
    assert wait_for(stalled, 20, period=0.2)
    last = [s for s in statuses if s.level == DiagnosticStatus.ERROR][-1]
    assert 'no output for' in last.message and 'out of memory in the test' in last.message
    monkeypatch.setattr(harness.node.streams[0].pipeline, 'prepare', real)
    assert outputs_continue(harness)
    statuses.clear()
    assert wait_for(lambda: statuses and statuses[-1].level != DiagnosticStatus.ERROR, 10)


@pytest.mark.parametrize('one_request', [False, True])
def test_prompts_and_bins_changed_one_at_a_time_apply_together(harness, one_request):
    assert send_until_output(harness)
    prompts = ['near', 'middle', 'far', 'very far', 'horizon']
    bins = [0.5, 1.0, 2.0, 4.0, 8.0]
    new = [Parameter('distance_prompts', value=prompts),
           Parameter('depth_bins_m', value=bins)]
    if one_request:  # ros2 param load: one request, each parameter checked on its own
        assert all(r.successful for r in harness.node.set_parameters(new))
    else:  # two successive ros2 param set calls
        assert harness.node.set_parameters(new[:1])[0].successful
        assert harness.node._head_mismatch and '5 distance_prompts but 7' in \
            harness.node._head_mismatch
        time.sleep(0.5)
        assert harness.node.engine.head.depth_bins_m == PAPER_DEPTH_BINS_M  # still running
        assert outputs_continue(harness)
        assert harness.node.set_parameters(new[1:])[0].successful
    assert wait_for(lambda: harness.node.engine.head.depth_bins_m == tuple(bins), 10)
    assert harness.node.engine.head.distance_prompts == tuple(prompts)
    assert harness.node._head_mismatch is None
    assert outputs_continue(harness)


def test_a_bad_value_during_a_mismatch_is_still_refused(harness):
    assert harness.node.set_parameters([Parameter('distance_prompts', value=['a', 'b'])])[
        0].successful
    result = set_param(harness.node, 'depth_bins_m', [2.0, 1.0])
    assert not result.successful and 'strictly increasing' in result.reason
    result = set_param(harness.node, 'distance_prompts', ['only one'])
    assert not result.successful and 'at least 2' in result.reason
    assert harness.node.engine.head.distance_prompts == PAPER_DISTANCE_PROMPTS


def test_scene_values_are_checked_while_pending(harness):
    """The README's rule, over the parameter service: while a scene mode waits for its
    lists, each list set is still checked on its own (bins of each scene strictly
    increasing, names unique, template with its field), and a right one waits."""
    node = harness.node
    assert set_param(node, 'bins_mode', 'scene_soft').successful
    assert node._head_mismatch and 'scene_names' in node._head_mismatch
    for name, value, reason in (
            ('scene_bins_m', [3.0, 2.5, 2.0, 1.5, 1.0, 0.5, 0.25] * 2, 'strictly increasing'),
            ('scene_bins_m', [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 1.0], 'strictly increasing'),
            ('scene_names', ['kitchen', 'kitchen'], 'unique'),
            ('scene_prompt_template', 'a photo', 'one plain field')):
        before = dict(node._params)
        result = set_param(node, name, value)
        assert not result.successful and reason in result.reason, (name, result.reason)
        assert node._params == before
    bins = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    assert set_param(node, 'scene_bins_m', bins).successful  # still pending: no names
    assert node._head_mismatch
    assert set_param(node, 'scene_names', ['kitchen', 'street']).successful
    assert wait_for(lambda: node.engine.head.bins_mode == 'scene_soft', 10)
    assert node._head_mismatch is None
    assert outputs_continue(harness)


@pytest.fixture(scope='module')
def lone_node():
    """A node without traffic, for calling its parameter callback directly."""
    import rclpy
    context = rclpy.Context()
    rclpy.init(context=context)
    with random_models_shared():  # module fixtures start before the autouse one
        h = Harness(context)
    yield h.node
    h.close()
    rclpy.try_shutdown(context=context)


WORDS = st.text(st.characters(codec='utf-8', exclude_categories=('Cs',)), max_size=40)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(name=st.sampled_from(['prompt_template', 'distance_prompts', 'prompt_objects',
                             'depth_bins_m', 'temperature', 'canonical_focal_px']),
       template=st.one_of(WORDS, st.sampled_from(['{} {}', 'a {} b {}', '{1} {0}',
                                                  '{} {} {}', '{!r} {}', '{0} {0}'])),
       words=st.lists(WORDS, max_size=12),
       numbers=st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=12))
def test_every_accepted_value_is_usable(lone_node, name, template, words, numbers):
    """Whatever the callback accepts, the engine can apply and predict with."""
    value = {'prompt_template': template, 'distance_prompts': words,
             'prompt_objects': words, 'depth_bins_m': numbers,
             'temperature': numbers[0] if numbers else 0.1,
             'canonical_focal_px': numbers[0] if numbers else 500.0}[name]
    before = dict(lone_node._params)
    result = lone_node._on_set_parameters([Parameter(name, value=value)])
    if not result.successful:
        assert result.reason and lone_node._params == before
        return
    head = lone_node._next_head
    lone_node._next_head = None
    if head is None:  # a prompts/bins count mismatch waiting for its partner
        assert lone_node._head_mismatch
    else:
        lone_node.engine.set_head(head)
        depth = lone_node.engine.predict(np.zeros((16, 16, 3), np.uint8),
                                         Intrinsics(20.0, 20.0, 8.0, 8.0, 16, 16))
        assert np.isfinite(depth).all()
    lone_node._on_set_parameters([Parameter(name, value=before[name])])  # restore
    lone_node._next_head = None
    lone_node.engine.set_head(head_from_parameters(lone_node._params))


# ---------------------------------------------------------------- signals at any moment
def start(params: dict, namespace: str | None = None) -> subprocess.Popen:
    return node_process.start_node(
        params, namespace, env={'FASTDDS_DEFAULT_PROFILES_FILE': LOOPBACK_PROFILE,
                                'FASTRTPS_DEFAULT_PROFILES_FILE': LOOPBACK_PROFILE,
                                'PYTHONUNBUFFERED': '1'}, stdout=subprocess.PIPE, cwd=HERE.parent)


BIG_PROMPTS = {'distance_prompts': [f'distance word number {i}' for i in range(64)],
               'depth_bins_m': [0.5 + 0.1 * i for i in range(64)],
               'prompt_objects': ['object', 'thing', 'item', 'surface']}  # 256 sentences


@pytest.mark.parametrize('delay_s, signals', [
    (0.3, [signal.SIGINT]),  # imports
    (0.3, [signal.SIGTERM]),
    (2.5, [signal.SIGINT, signal.SIGINT, signal.SIGTERM]),  # as ros2 launch does
    (4.5, [signal.SIGTERM]),  # model loading or prompt encoding
    (6.5, [signal.SIGINT, signal.SIGINT]),
])
def test_a_signal_while_starting_exits_zero_quickly_without_traceback(delay_s, signals):
    process = start({'pretrained': 'none', 'device': 'cpu', 'input_size': [64, 64],
                     **BIG_PROMPTS})
    time.sleep(delay_s)
    sent = time.monotonic()
    for sig in signals:
        process.send_signal(sig)
        time.sleep(0.1)
    try:
        out, err = process.communicate(timeout=10)
    finally:
        process.kill()
    took = time.monotonic() - sent
    assert process.returncode == 0, (process.returncode, err)
    assert took < 2.0 + 1.0, took  # 2 s budget, 1 s slack for a loaded machine
    assert 'Traceback' not in err and 'KeyboardInterrupt' not in err, err


def test_a_signal_while_the_worker_encodes_prompts_does_not_wait_for_it():
    import rclpy
    from rclpy.parameter import Parameter as P
    namespace = unique_namespace('encoding')  # no other run's node answers
    process = start({'pretrained': 'none', 'device': 'cpu', 'input_size': [64, 64]}, namespace)
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        peer = rclpy.create_node('setter', context=context)
        client = peer.create_client(
            __import__('rcl_interfaces.srv', fromlist=['SetParameters']).SetParameters,
            f'{namespace}/depth_node/set_parameters')
        from rclpy.executors import SingleThreadedExecutor
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(peer)
        deadline = time.monotonic() + 60
        while not client.service_is_ready() and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
        assert client.service_is_ready(), process.stderr.read() if process.poll() else ''
        from rcl_interfaces.srv import SetParameters
        request = SetParameters.Request()
        request.parameters = [P(k, value=v).to_parameter_msg() for k, v in
                              BIG_PROMPTS.items()]
        for _ in range(6):  # a request right after discovery can be lost: ask again
            future = client.call_async(request)
            answer_by = time.monotonic() + 5.0
            while not future.done() and time.monotonic() < answer_by:
                executor.spin_once(timeout_sec=0.1)
            if future.done():
                break
        assert future.done() and all(r.successful for r in future.result().results)
        time.sleep(0.3)  # the worker is now encoding 256 sentences (seconds on the CPU)
        sent = time.monotonic()
        process.send_signal(signal.SIGINT)
        try:
            _, err = process.communicate(timeout=10)
        finally:
            process.kill()
        assert process.returncode == 0, err
        assert time.monotonic() - sent < 3.0
        assert 'Traceback' not in err, err
        peer.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)
        if process.poll() is None:
            process.kill()


def test_help_prints_usage_without_loading_a_model():
    result = subprocess.run([sys.executable, '-m', 'depthclip_ros.ros.entry', '--help'],
                            capture_output=True, text=True, timeout=60, cwd=HERE.parent)
    assert result.returncode == 0, result.stderr
    assert 'usage: depth_node' in result.stdout and 'max_input_pixels' in result.stdout
    assert 'RANDOM WEIGHTS' not in result.stdout + result.stderr
    assert 'DepthCLIP RN50' not in result.stdout + result.stderr


def test_the_entry_module_imports_nothing_that_starts_threads():
    """The entry points install the signal handlers and the allocator settings before
    anything is imported that starts threads (numpy, torch, rclpy) or takes long."""
    code = ('import sys, depthclip_ros.ros.entry; print(sorted(m for m in sys.modules if '
            'm.split(".")[0] in ("numpy", "torch", "rclpy", "yaml") or '
            'm.startswith("depthclip_ros.") and m not in ("depthclip_ros.ros", '
            '"depthclip_ros.ros.entry", "depthclip_ros.ros.shutdown", '
            '"depthclip_ros.allocator")))')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            timeout=60, cwd=HERE.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '[]'

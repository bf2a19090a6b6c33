"""The launch files: the arguments they declare and what they pass to the node.

ROS's ``launch``/``launch_ros`` are not installable from PyPI, so here the launch files
are evaluated against small stand-ins that record what each action was given (and, where
the real ``launch`` is importable, against it); the parameters the launch file passes are
then given to a real DepthNode, which must accept exactly them.
"""

import importlib.util
from pathlib import Path
import sys
import types

import pytest
import rclpy
from rclpy.parameter import Parameter

from depthclip_ros.ros.launch_arguments import overrides, START_TIME_ARGUMENTS
from depthclip_ros.ros.node import DepthNode
from depthclip_ros.ros.parameters import PARAMETER_NAMES

LAUNCH = Path(__file__).resolve().parents[1] / 'launch'


class Recorded:
    """Any launch action or substitution: remembers its arguments."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class Configuration(Recorded):
    def perform(self, context):
        return context.values[self.args[0]]


def stand_ins() -> dict:
    modules = {}
    for name in ('launch', 'launch.actions', 'launch.conditions', 'launch.substitutions',
                 'launch.events', 'launch_ros', 'launch_ros.actions',
                 'launch_ros.parameter_descriptions', 'launch_ros.event_handlers',
                 'launch_ros.events', 'launch_ros.events.lifecycle', 'lifecycle_msgs',
                 'lifecycle_msgs.msg'):
        module = types.ModuleType(name)
        module.__getattr__ = lambda attr: type(attr, (Recorded,), {})
        modules[name] = module
    modules['launch.substitutions'].LaunchConfiguration = Configuration
    modules['launch'].LaunchDescription = lambda entities: entities
    modules['lifecycle_msgs.msg'].Transition = types.SimpleNamespace(
        TRANSITION_CONFIGURE=1, TRANSITION_ACTIVATE=3)
    return modules


def load(path: Path, monkeypatch):
    for name, module in stand_ins().items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setenv('AMENT_PREFIX_PATH', str(Path(sys.prefix)))
    spec = importlib.util.spec_from_file_location(path.stem.replace('.', '_'), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


class Context:
    def __init__(self, **values):
        self.values = {'managed': 'false', **{name: '' for name in START_TIME_ARGUMENTS},
                       **values}


def declared(entities) -> dict:
    return {e.args[0]: e.kwargs for e in entities if type(e).__name__ == 'DeclareLaunchArgument'}


def node_of(entities, context) -> Recorded:
    opaque = [e for e in entities if type(e).__name__ == 'OpaqueFunction']
    assert len(opaque) == 1
    nodes = opaque[0].kwargs['function'](context)
    assert len(nodes) == 1
    return nodes[0]


def test_every_start_time_choice_is_a_launch_argument_with_help(monkeypatch):
    arguments = declared(load(LAUNCH / 'depth.launch.py', monkeypatch))
    for name in ('model', 'pretrained', 'device', 'precision', 'feature_mode', 'input_size',
                 'image_transport', 'namespace', 'params_file', 'image', 'camera_info',
                 'use_sim_time', 'log_level', 'rviz', 'managed'):
        assert name in arguments and arguments[name]['description'], name
    for name in START_TIME_ARGUMENTS:  # empty default: the params file decides
        assert arguments[name]['default_value'] == '' and name in PARAMETER_NAMES


def test_arguments_override_the_params_file_only_when_given(monkeypatch):
    entities = load(LAUNCH / 'depth.launch.py', monkeypatch)
    node = node_of(entities, Context())
    assert node.kwargs['executable'] == 'depth_node'
    assert node.kwargs['parameters'][-1] == {}  # nothing given: the params file rules
    assert node.kwargs['additional_env'] == {'DEPTHCLIP_STARTED_BY_LAUNCH': '1'}
    node = node_of(entities, Context(pretrained='none', device='cpu',
                                     input_size='64, 96', image_transport='compressed',
                                     managed='true'))
    assert node.kwargs['executable'] == 'depth_lifecycle_node'
    assert node.kwargs['parameters'][-1] == {'pretrained': 'none', 'device': 'cpu',
                                             'input_size': [64, 96],
                                             'image_transport': 'compressed'}


@pytest.mark.parametrize('given, words', [
    ({'input_size': '416'}, 'input_size'), ({'input_size': 'big'}, 'two integers'),
    ({'input_size': '100,100'}, 'multiples of 32'), ({'precision': 'fp8'}, 'precision'),
    ({'image_transport': 'theora'}, 'image_transport'),
])
def test_bad_argument_text_is_refused_naming_the_argument(given, words):
    with pytest.raises(ValueError, match=words):
        overrides(given)


def test_the_node_accepts_exactly_what_the_launch_file_passes(monkeypatch):
    entities = load(LAUNCH / 'depth.launch.py', monkeypatch)
    node = node_of(entities, Context(pretrained='none', device='cpu', precision='fp32',
                                     feature_mode='projected', input_size='[64, 96]',
                                     model='RN50', image_transport='compressed'))
    passed = node.kwargs['parameters'][-1]
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        depth = DepthNode(context=context, parameter_overrides=[
            Parameter(name, value=value) for name, value in passed.items()])
        for name, value in passed.items():
            assert depth.get_parameter(name).value == value
        assert depth.engine.config.input_size == (64, 96)
        assert depth.engine.config.feature_mode == 'projected'
        depth.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


def test_the_lifecycle_example_configures_then_activates(monkeypatch):
    entities = load(LAUNCH / 'depth_lifecycle.launch.py', monkeypatch)
    node = next(e for e in entities if type(e).__name__ == 'LifecycleNode')
    assert node.kwargs['executable'] == 'depth_lifecycle_node'
    events = [e for e in entities if type(e).__name__ == 'EmitEvent']
    assert events[0].kwargs['event'].kwargs['transition_id'] == 1  # configure
    handler = next(e for e in entities if type(e).__name__ == 'RegisterEventHandler')
    on_inactive = handler.args[0]
    assert on_inactive.kwargs['goal_state'] == 'inactive'
    assert on_inactive.kwargs['entities'][0].kwargs['event'].kwargs['transition_id'] == 3


def test_with_real_launch_the_description_evaluates():
    reason = 'ROS launch is not installed (PyPI has no working launch/launch_ros)'
    sources = pytest.importorskip('launch.launch_description_sources', reason=reason)
    pytest.importorskip('launch_ros.actions', reason=reason)
    import launch
    PythonLaunchDescriptionSource = sources.PythonLaunchDescriptionSource
    source = PythonLaunchDescriptionSource(str(LAUNCH / 'depth.launch.py'))
    description = source.get_launch_description(launch.LaunchContext())
    names = {a.name for a in description.get_launch_arguments()}
    assert set(START_TIME_ARGUMENTS) <= names


def test_the_cameras_example_starts_one_node_over_three_cameras(monkeypatch):
    import yaml
    entities = load(LAUNCH / 'cameras.launch.py', monkeypatch)
    arguments = declared(entities)
    assert set(START_TIME_ARGUMENTS) <= set(arguments)
    assert arguments['cameras_file']['default_value'].endswith('cameras_example.yaml')
    node = node_of(entities, Context(pretrained='none', device='cpu', input_size='[64, 96]'))
    assert node.kwargs['executable'] == 'depth_node'
    files = node.kwargs['parameters'][:2]
    assert [type(f).__name__ for f in files] == ['Configuration', 'Configuration']
    assert [f.args[0] for f in files] == ['params_file', 'cameras_file']
    config = LAUNCH.parent / 'config' / 'cameras_example.yaml'
    values = yaml.safe_load(config.read_text())['/**']['ros__parameters']
    passed = {**values, **node.kwargs['parameters'][-1]}
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        depth = DepthNode(context=context, parameter_overrides=[
            Parameter(name, value=value) for name, value in passed.items()])
        assert [s.name for s in depth.streams] == ['front', 'left', 'right']
        assert depth.streams[2].pub_points.topic_name == '/right/points'
        depth.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)

"""What a user gives depth_node at start is judged in one line, never a traceback, and never
lost silently: values rclpy itself refuses (type, range, an empty list), ROS arguments rcl
cannot parse, topics that meet once the namespace and remapping are applied (no camera may
read its own or another camera's outputs), and parameters the node does not have (CPU,
random weights; in this process the tests' tiny model, node processes RN50)."""

import math
import threading

import pytest
from rclpy.parameter import Parameter

from depthclip_ros.ros.node import DepthNode
from depthclip_ros.ros.parameters import unknown_parameters
from depthclip_ros.ros.streams import check_resolved_topics
from depthclip_ros.tools import node_process

from rosutil import start_refusal, unique_namespace
from test_node import SMALL


def start(ros, overrides=(), cli_args=None, cameras=None):
    names = [Parameter('cameras', value=cameras)] if cameras else []
    given = ' '.join(cli_args or ())  # a -p given wins over SMALL's value
    small = [p for p in SMALL if f'{p.name}:=' not in given]
    return DepthNode(context=ros, namespace=unique_namespace('start'), cli_args=cli_args,
                     parameter_overrides=[*small, *names, *overrides])


# ------------------------------------------------------------ values rclpy refuses itself
@pytest.mark.parametrize('name, value, words', [
    ('temperature', 'abc', "temperature: 'abc' is refused, it must be a double"),
    ('temperature', 1, 'write 1.0'),  # ROS reads 1 as an integer
    ('temperature', math.nan, 'in [0.0001, 100]'),
    ('max_uncertainty_m', -1.0, 'in [0, 1000]'),
    ('object_alpha', math.inf, 'in [0, 1]'),
    ('queue_depth', 0, 'an integer in [1, 100]'),
    ('cloud_stride', 1.5, 'an integer in [1, 64]'),
    ('flip_average', 1, 'true or false'),
    ('model', ['RN50'], 'a string'),
    ('cameras', 'front', 'a list of strings'),
    ('cameras', [1, 2], 'a list of strings'),
    ('depth_bins_m', [1, 2, 3, 4, 5, 6, 7], 'write 2.0, not 2'),
    ('scene_bins_m', ['a'], 'a list of doubles'),
    ('input_size', [224.0, 224.0], 'a list of integers'),
])
def test_a_value_rclpy_refuses_at_start_is_one_line_naming_the_parameter(ros, name, value,
                                                                         words):
    """The same values set while running are refused with rclpy's reason; at start rclpy
    raised its own exceptions (a traceback in the node process)."""
    with pytest.raises(ValueError, match=r'^' + name + ': ') as error:
        start(ros, [Parameter(name, value=value)])
    assert words in str(error.value) and '\n' not in str(error.value), error.value


@pytest.mark.parametrize('name', ['depth_bins_m', 'distance_prompts', 'prompt_objects',
                                  'input_size', 'output_size'])
def test_an_empty_list_for_a_list_that_needs_values_is_refused_in_one_line(ros, name):
    """``-p name:=[]`` reaches rclpy untyped: the parameter stayed uninitialised and reading
    it raised ParameterUninitializedException."""
    with pytest.raises(ValueError, match=f'^{name}: an empty list is refused'):
        start(ros, cli_args=['--ros-args', '-p', f'{name}:=[]'])


@pytest.mark.parametrize('name', ['object_queries', 'scene_names', 'scene_bins_m', 'cameras'])
def test_an_empty_list_where_empty_is_the_default_is_fine(ros, name):
    node = start(ros, cli_args=['--ros-args', '-p', f'{name}:=[]'])
    try:
        assert node.get_parameter(name).value == []
    finally:
        node.destroy_node()


@pytest.mark.parametrize('overrides, words', [
    ({'depth_bins_m': [3.0, 2.0]}, 'strictly increasing'),
    ({'depth_bins_m': [1.0, math.inf]}, 'finite'),
    ({'distance_prompts': ['near', '']}, 'non-empty'),
    ({'distance_prompts': ['near', 'x' * 400]}, 'more than 300'),
    ({'prompt_template': 'This {} is', 'distance_prompts': ['near', 'far']}, 'two plain'),
])
def test_at_start_a_wrong_value_is_named_before_counts_that_disagree(ros, overrides, words):
    """A value its own rules refuse is named as such whatever the counts (as while running);
    at start the counts were named instead, and the value's fault only once they agreed."""
    with pytest.raises(ValueError, match=words):
        start(ros, [Parameter(name, value=value) for name, value in overrides.items()])


# ----------------------------------------------- topics after namespace and remapping
@pytest.mark.parametrize('cameras, remaps, words', [
    (None, ['image:=depth/image'], 'image and depth/image are both the topic'),
    (None, ['image:=/x', 'camera_info:=/x'], 'image and camera_info'),
    (None, ['image:=points'], 'image and points'),
    (None, ['depth/image:=depth/uncertainty'], 'depth/image and depth/uncertainty'),
    (None, ['objects/masks:=objects/labels'], 'objects/masks and objects/labels'),
    (['a', 'b'], ['a/image:=b/depth/image'],
     "image of camera 'a' and depth/image of camera 'b'"),
    (['a', 'b'], ['b/image:=a/image'], "image of camera 'a' and image of camera 'b'"),
    (['a', 'b'], ['a/depth/image:=b/points'], 'depth/image of camera'),
    (['a', 'b'], ['b/camera_info:=/cam/image/compressed', 'a/image:=/cam/image'],
     "image/compressed of camera 'a' and camera_info of camera 'b'"),
    (['a', 'b'], ['a:=b'], None),  # a namespace remap is no topic remap: a stays apart
    (['a', 'b'], ['a/objects/markers:=/markers', 'b/objects/markers:=/markers'], None),
    (None, ['image:=/cam/color/image_raw', 'camera_info:=/cam/color/info'], None),
])
def test_no_camera_reads_its_own_or_another_cameras_topics_after_remapping(
        ros, cameras, remaps, words):
    """Before: accepted, camera a consumed camera b's depth as colour (or itself its own),
    or rclpy's RCLError on a type clash ended the start with a traceback."""
    cli_args = ['--ros-args'] + [part for remap in remaps for part in ('-r', remap)]
    if words is None:  # the same output of several cameras may share a topic
        start(ros, cli_args=cli_args, cameras=cameras).destroy_node()
        return
    with pytest.raises(ValueError, match='namespace and remapping applied') as error:
        start(ros, cli_args=cli_args, cameras=cameras)
    assert words in str(error.value) and '\n' not in str(error.value), error.value


def test_resolved_topics_meet_only_where_one_output_of_several_cameras_is_shared():
    topics = {'a': {'image': '/a/image', 'depth/image': '/a/depth/image'},
              'b': {'image': '/b/image', 'depth/image': '/a/depth/image'}}
    check_resolved_topics(topics)  # both cameras' depth on one topic
    for camera, topic, full in (('b', 'image', '/a/image'), ('b', 'image', '/a/depth/image'),
                                ('a', 'depth/image', '/a/image')):
        clash = {name: dict(values) for name, values in topics.items()}
        clash[camera][topic] = full
        with pytest.raises(ValueError, match='are both the topic'):
            check_resolved_topics(clash)


# ------------------------------------------------------ parameters the node does not have
def test_unknown_parameters_are_named_with_the_nearest_real_one():
    line = unknown_parameters(['pretrianed', 'max_dept_m', 'temperature', 'zzz_unrelated',
                               'use_sim_time', 'qos_overrides./parameter_events.depth'])
    assert line.startswith('ignoring parameters depth_node does not have: ')
    assert 'pretrianed (did you mean pretrained?)' in line
    assert 'max_dept_m (did you mean max_depth_m?)' in line
    assert 'zzz_unrelated' in line
    for known in ('temperature,', 'use_sim_time', 'qos_overrides'):
        assert known not in line
    assert unknown_parameters(['temperature', 'use_sim_time']) is None


# ------------------------------------------------------------------ the node process
@pytest.mark.parametrize('args, words', [
    (['-p', 'max_depth_m:=20'], 'max_depth_m: 20 is refused'),
    (['-p', 'depth_bins_m:=[]'], 'depth_bins_m: an empty list is refused'),
    (['-p', 'cameras:=[{x}]'], 'the ROS arguments are refused'),
    (['-r', 'image:=depth/image'], 'image and depth/image are both the topic'),
])
def test_the_node_process_refuses_in_one_line_without_traceback(args, words):
    line, err = start_refusal({'pretrained': 'none'}, ros_args=args)
    assert words in line, err


def test_the_node_process_warns_of_a_misspelt_parameter(tmp_path):
    """rclpy drops overrides of parameters a node does not declare: a misspelt -p or params
    file key was lost without a word."""
    params = tmp_path / 'params.yaml'
    params.write_text('/**:\n  ros__parameters:\n    max_dept_m: 5.0\n')
    process = node_process.start_node(
        {'pretrained': 'none', 'device': 'cpu', 'input_size': [64, 64]},
        unique_namespace('start'), ros_args=['-p', 'pretrianed:=none',
                                             '--params-file', str(params)])
    timer = threading.Timer(120, process.kill)  # the node runs until stopped
    timer.start()
    try:
        line = next((line for line in process.stderr if 'does not have' in line), '')
    finally:
        node_process.stop_node(process)
        timer.cancel()
    assert 'pretrianed (did you mean pretrained?)' in line, line
    assert 'max_dept_m (did you mean max_depth_m?)' in line, line

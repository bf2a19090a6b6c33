"""The launch files, run for real: ``ros2 launch depthclip_ros ...`` against the package
built with colcon into a temporary workspace and sourced (the README's route for ROS
users), whatever way this environment installed it. A probe node in this process talks to
the launched node over DDS (CPU, random weights, small input).

PyPI has no ``launch``/``launch_ros``/``ros2 launch``: ``../shared/ros-tools/install.sh``
installs them (CI does); without them these tests skip, saying so. The checks that need no
launch (argument text, the one table of arguments) run everywhere.

Every launch is a process group of its own, stopped as a terminal's Ctrl-C stops it:
SIGINT to the whole group; it must end within 10 s with exit 0 and leave nothing running.
"""

from __future__ import annotations

import os
from pathlib import Path
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import rclpy
from rclpy.qos import qos_profile_sensor_data, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from depthclip_ros.ros.launch_arguments import (
    default_of,
    FILE_ARGUMENTS,
    flag,
    LAUNCH_ARGUMENTS,
    node_options,
    overrides,
    START_TIME_ARGUMENTS,
)
from depthclip_ros.ros.parameters import PARAMETER_NAMES

from rosutil import camera_info, repeat_until, rgb8_image, Spinner, unique_namespace, wait_for

REPO = Path(__file__).resolve().parents[1]
ROS_TOOLS = REPO.parent / 'shared' / 'ros-tools'
SMALL = ['pretrained:=none', 'device:=cpu', 'input_size:=64,64']
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
STOP_S = 10.0  # Ctrl-C must end a launch within this


def real_launch_or_skip() -> None:
    try:
        import launch_ros.actions  # noqa: F401
        import ros2launch  # noqa: F401
    except ImportError as error:
        where = (f'{ROS_TOOLS}/install.sh installs them into this venv' if ROS_TOOLS.is_dir()
                 else f'{ROS_TOOLS} is absent (it holds them as wheels)')
        pytest.skip(f'ROS launch is not installed ({error.name} missing; PyPI has no '
                    f'launch/launch_ros/ros2launch): {where}')


# ---- checks that need no launch -----------------------------------------------------

@pytest.mark.parametrize('given, words', [
    ({'input_size': '416'}, 'input_size'), ({'input_size': 'big'}, 'two integers'),
    ({'input_size': '100,100'}, 'multiples of 32'), ({'precision': 'fp8'}, 'precision'),
    ({'image_transport': 'theora'}, 'image_transport'),
])
def test_bad_argument_text_is_refused_naming_the_argument(given, words):
    with pytest.raises(ValueError, match=words):
        overrides(given)


def test_start_time_arguments_are_parameters_that_only_override_when_given():
    for name in START_TIME_ARGUMENTS:
        assert name in PARAMETER_NAMES and LAUNCH_ARGUMENTS[name][0] == ''
    assert overrides({name: '' for name in START_TIME_ARGUMENTS}) == {}
    assert overrides({'input_size': '[64, 96]', 'pretrained': ' none '}) == {
        'input_size': [64, 96], 'pretrained': 'none'}


def test_every_file_declares_the_shared_arguments_and_uses_each():
    every = {'namespace', 'params_file', 'use_sim_time', 'log_level', *START_TIME_ARGUMENTS}
    assert set(FILE_ARGUMENTS) == {p.name for p in (REPO / 'launch').glob('*.launch.py')}
    for launch_file, names in FILE_ARGUMENTS.items():
        assert every <= set(names), launch_file
        assert all(LAUNCH_ARGUMENTS[name][1] for name in names)
        given = {name: default_of(name, str(REPO)) for name in names}  # the source's share
        options = node_options(launch_file, given)  # reads every argument but managed/rviz
        assert options['parameters'][0] == str(REPO / 'config' / 'depthclip.yaml')
        assert ('remappings' in options) == ('image' in names)
    assert 'managed' not in FILE_ARGUMENTS['depth_lifecycle.launch.py']  # always managed


@pytest.mark.parametrize('launch_file, name', [
    (launch_file, name) for launch_file, names in FILE_ARGUMENTS.items()
    for name in ('params_file', 'cameras_file') if name in names])
def test_a_params_file_that_is_not_a_file_is_refused_naming_the_argument(tmp_path,
                                                                         launch_file, name):
    """launch_ros only warns of it, then starts the node on its defaults (one camera,
    where cameras_file would have named three)."""
    given = {n: default_of(n, str(REPO)) for n in FILE_ARGUMENTS[launch_file]}
    for path in (tmp_path / 'missing.yaml', tmp_path):  # none there; a folder
        with pytest.raises(ValueError, match=f"^launch argument {name}:='{path}' is not a "
                                             f'file$'):
            node_options(launch_file, {**given, name: str(path)})


@pytest.mark.parametrize('text, value', [('true', True), ('False', False), ('1', True),
                                         ('no', False)])
def test_flags_read_the_usual_spellings(text, value):
    assert flag('managed', text) is value


def test_a_misspelt_flag_is_refused_not_read_as_false():
    with pytest.raises(ValueError, match=r"managed:='ture' must be true or false"):
        flag('managed', 'ture')


def test_the_docs_name_every_launch_argument():
    docs = (REPO / 'docs' / 'node.md').read_text(encoding='utf-8')
    missing = [name for name in LAUNCH_ARGUMENTS if f'`{name}`' not in docs]
    assert not missing, f'docs/node.md does not name the launch arguments {missing}'


def test_the_docs_table_lists_exactly_depth_launch_s_arguments():
    """The table under 'Arguments of `depth.launch.py`' names what the file declares, no
    more and no fewer (the first column's `names`)."""
    docs = (REPO / 'docs' / 'node.md').read_text(encoding='utf-8')
    after = docs.split('Arguments of `depth.launch.py`', 1)[1]
    rows = [line for line in after.split('\n\n')[1].splitlines()
            if line.startswith('| `')]
    named = {name for row in rows for name in re.findall(r'`([a-z_]+)`', row.split('|')[1])}
    assert named == set(FILE_ARGUMENTS['depth.launch.py']), \
        sorted(named ^ set(FILE_ARGUMENTS['depth.launch.py']))


# ---- the installed package, launched for real ---------------------------------------

@pytest.fixture(scope='module')
def installed(tmp_path_factory) -> dict:
    """The environment of a shell that has built this source tree with colcon and sourced
    the install (README: "Install for ROS 2"), with this run's network-safe settings."""
    real_launch_or_skip()
    ws = tmp_path_factory.mktemp('colcon_ws')
    build = subprocess.run(
        [sys.executable, '-c', 'import sys; from colcon_core.command import main; '
                               'sys.exit(main())',
         '--log-base', str(ws / 'log'), 'build', '--base-paths', str(REPO),
         '--build-base', str(ws / 'build'), '--install-base', str(ws / 'install')],
        cwd=ws, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    dump = subprocess.run(['bash', '-c', '. "$1" && env -0', '_',
                           str(ws / 'install' / 'setup.bash')],
                          capture_output=True, timeout=60, check=True)
    env = dict(line.split('=', 1) for line in dump.stdout.decode().split('\0') if '=' in line)
    prefix = ws / 'install' / 'depthclip_ros'
    # traffic stays on this machine (conftest chose the domain); the shipped loopback
    # profile under both names (Fast DDS 2 reads FASTRTPS_, Fast DDS 3 FASTDDS_)
    profile = str(prefix / 'share' / 'depthclip_ros' / 'config' / 'fastdds_localhost.xml')
    env.update(ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
               ROS_DOMAIN_ID=os.environ['ROS_DOMAIN_ID'],
               FASTDDS_DEFAULT_PROFILES_FILE=profile, FASTRTPS_DEFAULT_PROFILES_FILE=profile,
               HF_HUB_OFFLINE='1', PYTHONUNBUFFERED='1', ROS_LOG_DIR=str(ws / 'ros_log'))
    env['PATH'] = f'{Path(sys.executable).parent}{os.pathsep}{env.get("PATH", "")}'
    env['DEPTHCLIP_PREFIX'] = str(prefix)
    assert (prefix / 'lib' / 'depthclip_ros' / 'depth_node').exists()
    return env


class Launch:
    """``ros2 launch depthclip_ros <file> <args>`` as a process group of its own."""

    def __init__(self, env: dict, launch_file: str, *args: str, log: Path):
        self.log_path, self.log = log, log.open('w')
        ros2 = shutil.which('ros2', path=env['PATH'])
        assert ros2, 'ros2 is not on the PATH of the sourced install'
        self.process = subprocess.Popen(
            [ros2, 'launch', 'depthclip_ros', launch_file, *args], env=env,
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)

    def output(self) -> str:
        return self.log_path.read_text(errors='replace')

    def node_pids(self) -> list[int]:
        return [int(p) for p in re.findall(r'process started with pid \[(\d+)\]', self.output())]

    def interrupt(self) -> tuple[int, float]:
        """Ctrl-C as a terminal sends it (SIGINT to the whole group): (exit code, seconds)."""
        start = time.monotonic()
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            code = self.process.wait(timeout=STOP_S + 20)
        except subprocess.TimeoutExpired:
            code = None
        return code, time.monotonic() - start

    def stop_cleanly(self) -> None:
        """Ctrl-C; it must end within STOP_S with exit 0 and leave nothing running."""
        pids = self.node_pids()
        assert pids, self.output()
        code, took = self.interrupt()
        assert code == 0 and took < STOP_S, f'exit {code} after {took:.1f} s\n{self.output()}'
        assert not group_alive(self.process.pid), self.output()
        assert not [pid for pid in pids if alive(pid)], self.output()
        before, marker, after = self.output().partition('user interrupted with ctrl-c')
        assert marker, self.output()
        assert not [word for word in ('Traceback', 'ERROR', 'FATAL', 'exit code')
                    if word in after], self.output()

    def kill(self) -> None:
        if group_alive(self.process.pid):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.log.close()


def loading(pid: int) -> bool:
    """Whether ``pid`` has started loading rclpy's or torch's libraries (which the node's
    entry point imports after setting its signal handling)."""
    try:
        maps = Path(f'/proc/{pid}/maps').read_text()
    except OSError:
        return False
    return 'rclpy' in maps or 'torch' in maps


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has ended
        return Path(f'/proc/{pid}/stat').read_text().split(') ')[-1][0] != 'Z'
    except OSError:
        return False


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return any(alive(int(p.name)) for p in Path('/proc').iterdir()
               if p.name.isdigit() and _pgid(int(p.name)) == pgid)


def _pgid(pid: int):
    try:
        return os.getpgid(pid)
    except OSError:
        return None


@pytest.fixture
def launched(installed, tmp_path):
    """Start launches with ``launched(file, *args)``; any still running at the end is
    killed (a test that passed has stopped each with Ctrl-C)."""
    started = []

    def start(launch_file, *args):
        started.append(Launch(installed, launch_file, *args,
                              log=tmp_path / f'launch{len(started)}.log'))
        return started[-1]

    yield start
    for launch in started:
        launch.kill()


class Probe:
    """A node of this test: sends frames, records what comes back, calls services."""

    def __init__(self, context, namespace: str):
        self.context = context
        self.node = rclpy.create_node('probe', namespace=namespace, context=context)
        self.spinner = Spinner(context, self.node)
        self.got: dict[str, list] = {}
        self.rgb = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)

    def listen(self, prefix: str) -> None:
        """Record ``<prefix>depth/image``, ``<prefix>depth/camera_info``, ``<prefix>points``."""
        for kind, name in ((Image, 'depth/image'), (CameraInfo, 'depth/camera_info'),
                           (PointCloud2, 'points')):
            topic = prefix + name
            self.got[topic] = []
            self.node.create_subscription(kind, topic, self.got[topic].append, RELIABLE)

    def sender(self, image_topic: str, info_topic: str, frame_id: str):
        image = self.node.create_publisher(Image, image_topic, qos_profile_sensor_data)
        info = self.node.create_publisher(CameraInfo, info_topic, qos_profile_sensor_data)

        def send(sec: int) -> None:
            info.publish(camera_info(48, 64, 60.0, 60.0, 31.5, 23.5, frame_id=frame_id))
            image.publish(rgb8_image(self.rgb, frame_id=frame_id, sec=sec, nanosec=7))
        return send

    def depth_for(self, prefix: str, send, frame_id: str, timeout=120.0) -> None:
        """Send frames until depth, its CameraInfo and points with the frame's header (the
        same stamp, one of the sent ones, and frame_id) have come back on ``prefix``."""
        sec = iter(range(1000, 100000))
        topics = [prefix + n for n in ('depth/image', 'depth/camera_info', 'points')]

        def answered():
            stamps = [{(m.header.stamp.sec, m.header.stamp.nanosec, m.header.frame_id)
                       for m in list(self.got[t])} for t in topics]
            return bool(set.intersection(*stamps))
        assert repeat_until(lambda: send(next(sec)), answered, timeout=timeout, every=1.0), \
            {t: len(self.got[t]) for t in topics}
        stamp = set.intersection(*[{(m.header.stamp.sec, m.header.stamp.nanosec,
                                     m.header.frame_id) for m in self.got[t]} for t in topics])
        sec_, nanosec, frame = next(iter(stamp))
        assert 1000 <= sec_ < 100000 and nanosec == 7 and frame == frame_id
        depth = next(m for m in self.got[topics[0]] if m.header.frame_id == frame_id)
        assert depth.encoding == '32FC1' and depth.width > 0 and depth.height > 0

    def call(self, kind, service: str, request, timeout=60.0):
        client = self.node.create_client(kind, service)
        try:
            assert client.wait_for_service(timeout_sec=timeout), f'no {service}'
            for _ in range(3):  # a request right after discovery can be lost: ask again
                future = client.call_async(request)
                if wait_for(future.done, timeout / 3):
                    return future.result()
            raise AssertionError(f'no answer from {service}')
        finally:
            self.node.destroy_client(client)

    def parameters(self, node: str, names: list[str]) -> dict:
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python
        answer = self.call(GetParameters, f'{node}/get_parameters', GetParameters.Request(
            names=names))
        return {n: parameter_value_to_python(v) for n, v in zip(names, answer.values)}

    def lifecycle_state(self, node: str) -> str:
        from lifecycle_msgs.srv import GetState
        return self.call(GetState, f'{node}/get_state', GetState.Request()).current_state.label

    def transition(self, node: str, transition_id: int) -> bool:
        from lifecycle_msgs.srv import ChangeState
        request = ChangeState.Request()
        request.transition.id = transition_id
        return self.call(ChangeState, f'{node}/change_state', request, timeout=120.0).success

    def published_by(self, node: str, namespace: str) -> dict:
        try:
            return dict(self.node.get_publisher_names_and_types_by_node(node, namespace))
        except Exception:  # noqa: BLE001 - the node is not discovered yet
            return {}

    def close(self):
        self.spinner.stop()
        self.node.destroy_node()


@pytest.fixture
def probe(ros):
    made = []

    def make(namespace):
        made.append(Probe(ros, namespace))
        return made[-1]
    yield make
    for p in made:
        p.close()


def test_show_args_lists_exactly_the_table(installed):
    share = str(Path(installed['DEPTHCLIP_PREFIX']) / 'share' / 'depthclip_ros')
    for launch_file, names in FILE_ARGUMENTS.items():
        result = subprocess.run(['ros2', 'launch', 'depthclip_ros', launch_file, '--show-args'],
                                env=installed, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        shown = re.findall(r"^    '(\w+)':\n        (.+)\n        \(default: '(.*)'\)$",
                           result.stdout, flags=re.M)
        assert [s[0] for s in shown] == list(names), result.stdout
        for name, description, default in shown:
            assert ' '.join(description.split()) == LAUNCH_ARGUMENTS[name][1], name
            assert default == default_of(name, share), name


def test_depth_launch_remaps_namespace_params_file_arguments_and_sim_time(
        installed, launched, probe, tmp_path):
    """One launch: namespace, remapped inputs, a params file with arguments over it,
    use_sim_time; topics and types, depth with the input's header, parameters read back
    through the parameter service, then Ctrl-C."""
    namespace = unique_namespace('launch')
    camera = unique_namespace('camera')
    params = tmp_path / 'params.yaml'
    params.write_text("/**:\n  ros__parameters:\n    input_size: [96, 96]\n"
                      "    max_depth_m: 7.5\n    pretrained: 'openai'\n")
    launch = launched('depth.launch.py', f'namespace:={namespace}', f'params_file:={params}',
                      f'image:={camera}/color/image_raw', f'camera_info:={camera}/color/info',
                      'use_sim_time:=true', *SMALL)
    p = probe(namespace)
    node = f'{namespace}/depth_node'
    expected = {f'{namespace}/depth/image': ['sensor_msgs/msg/Image'],
                f'{namespace}/depth/camera_info': ['sensor_msgs/msg/CameraInfo'],
                f'{namespace}/points': ['sensor_msgs/msg/PointCloud2']}

    def topics_up():
        published = p.published_by('depth_node', namespace)
        return all(published.get(t) == kinds for t, kinds in expected.items())
    assert wait_for(topics_up, 120, period=0.5), (p.published_by('depth_node', namespace),
                                                  launch.output())
    assert wait_for(lambda: p.node.count_subscribers(f'{camera}/color/image_raw') == 1 and
                    p.node.count_subscribers(f'{camera}/color/info') == 1, 60), launch.output()
    names = dict(p.node.get_topic_names_and_types())
    assert names[f'{camera}/color/image_raw'] == ['sensor_msgs/msg/Image']
    assert names[f'{camera}/color/info'] == ['sensor_msgs/msg/CameraInfo']

    p.listen(f'{namespace}/')
    p.depth_for(f'{namespace}/', p.sender(f'{camera}/color/image_raw', f'{camera}/color/info',
                                          'cam_optical'), 'cam_optical')
    values = p.parameters(node, ['input_size', 'max_depth_m', 'pretrained', 'device',
                                 'use_sim_time', 'model'])
    assert values == {'input_size': [64, 64], 'max_depth_m': 7.5, 'pretrained': 'none',
                      'device': 'cpu', 'use_sim_time': True, 'model': 'RN50'}
    launch.stop_cleanly()


def test_depth_launch_managed_waits_for_a_lifecycle_manager(installed, launched, probe):
    from lifecycle_msgs.msg import Transition
    namespace = unique_namespace('managed')
    launch = launched('depth.launch.py', f'namespace:={namespace}', 'managed:=true', *SMALL)
    p = probe(namespace)
    node = f'{namespace}/depth_node'
    assert p.lifecycle_state(node) == 'unconfigured', launch.output()
    assert p.transition(node, Transition.TRANSITION_CONFIGURE), launch.output()
    assert p.transition(node, Transition.TRANSITION_ACTIVATE), launch.output()
    assert p.lifecycle_state(node) == 'active'
    p.listen(f'{namespace}/')
    p.depth_for(f'{namespace}/', p.sender(f'{namespace}/image', f'{namespace}/camera_info',
                                          'managed_optical'), 'managed_optical')
    launch.stop_cleanly()


def test_depth_lifecycle_launch_brings_the_node_up_with_every_argument(
        installed, launched, probe):
    namespace = unique_namespace('lifecycle')
    camera = unique_namespace('lifecycle_camera')
    launch = launched('depth_lifecycle.launch.py', f'namespace:={namespace}',
                      f'image:={camera}/image', f'camera_info:={camera}/camera_info',
                      'use_sim_time:=true', 'log_level:=debug', 'feature_mode:=projected',
                      *SMALL)
    p = probe(namespace)
    node = f'{namespace}/depth_node'
    assert wait_for(lambda: p.lifecycle_state(node) == 'active', 180, period=1.0), \
        launch.output()
    # the start-time arguments reached the node (they were ignored before: issue 21)
    assert p.parameters(node, ['pretrained', 'device', 'input_size', 'feature_mode',
                               'use_sim_time']) == {
        'pretrained': 'none', 'device': 'cpu', 'input_size': [64, 64],
        'feature_mode': 'projected', 'use_sim_time': True}
    p.listen(f'{namespace}/')
    p.depth_for(f'{namespace}/', p.sender(f'{camera}/image', f'{camera}/camera_info',
                                          'lc_optical'), 'lc_optical')
    assert f'{node} is active' in launch.output()
    assert '[DEBUG]' in launch.output()  # log_level reached the node
    launch.stop_cleanly()


@pytest.mark.parametrize('moment', ['before its services exist', 'while it configures'])
def test_ctrl_c_during_the_lifecycle_bring_up_ends_cleanly(installed, launched, probe,
                                                          moment):
    """Was: launch exit 1, 'cannot use Destroyable because destruction was requested'."""
    namespace = unique_namespace('lc_stop')
    launch = launched('depth_lifecycle.launch.py', f'namespace:={namespace}', *SMALL)
    assert wait_for(launch.node_pids, 60, period=0.05), launch.output()
    if moment == 'while it configures':
        from lifecycle_msgs.srv import ChangeState
        p = probe(namespace)
        client = p.node.create_client(ChangeState, f'{namespace}/depth_node/change_state')
        assert client.wait_for_service(timeout_sec=120), launch.output()
    else:  # the node is importing (its signal handling is set, it has no services yet)
        assert wait_for(lambda: loading(launch.node_pids()[0]), 60, period=0.05)
    launch.stop_cleanly()
    assert 'Destroyable' not in launch.output()


def test_cameras_launch_serves_each_camera(installed, launched, probe):
    namespace = unique_namespace('cameras')
    launch = launched('cameras.launch.py', f'namespace:={namespace}', *SMALL)
    p = probe(namespace)
    for camera in ('front', 'left', 'right'):
        p.listen(f'{namespace}/{camera}/')
    for camera in ('front', 'left', 'right'):
        prefix = f'{namespace}/{camera}/'
        p.depth_for(prefix, p.sender(prefix + 'image', prefix + 'camera_info',
                                     f'{camera}_optical'), f'{camera}_optical')
    launch.stop_cleanly()


def test_a_bad_argument_ends_the_launch_naming_it(installed, launched):
    launch = launched('depth.launch.py', 'managed:=ture', *SMALL)
    code = launch.process.wait(timeout=120)
    assert code == 1 and "managed:='ture' must be true or false" in launch.output(), \
        launch.output()
    assert not launch.node_pids()


@pytest.mark.parametrize('launch_file', list(FILE_ARGUMENTS))
def test_an_argument_the_file_does_not_declare_ends_the_launch_naming_it(
        installed, launched, launch_file):
    """``ros2 launch`` accepts any ``name:=value``: a misspelt pretrained, or an argument
    of another file (``cameras_file`` to depth.launch.py), was ignored without a word."""
    other = next(name for name in LAUNCH_ARGUMENTS if name not in FILE_ARGUMENTS[launch_file])
    launch = launched(launch_file, 'pretrianed:=none', f'{other}:=x', 'device:=cpu')
    code = launch.process.wait(timeout=120)
    text = launch.output()
    assert code == 1, text
    assert f'{launch_file} has no argument pretrianed (did you mean pretrained?), {other}' \
        in text, text
    assert '--show-args' in text and 'Traceback' not in text
    assert not launch.node_pids()


def test_a_file_that_includes_ours_keeps_its_own_arguments(installed, tmp_path):
    """The refusal is for the command line of the file ros2 launch started: a file that
    includes depth.launch.py has arguments of its own."""
    parent = tmp_path / 'robot.launch.py'
    parent.write_text(
        'from launch import LaunchDescription\n'
        'from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription\n'
        'from launch.launch_description_sources import PythonLaunchDescriptionSource\n'
        'import os\n\n\n'
        'def generate_launch_description():\n'
        '    path = os.path.join(os.environ["DEPTHCLIP_PREFIX"], "share", "depthclip_ros",\n'
        '                        "launch", "depth.launch.py")\n'
        '    return LaunchDescription([\n'
        '        DeclareLaunchArgument("robot", default_value="r1"),\n'
        '        IncludeLaunchDescription(PythonLaunchDescriptionSource(path),\n'
        '                                 launch_arguments={"managed": "ture"}.items())])\n')
    ros2 = shutil.which('ros2', path=installed['PATH'])
    result = subprocess.run([ros2, 'launch', str(parent), 'robot:=r2'], env=installed,
                            capture_output=True, text=True, timeout=120)
    text = result.stdout + result.stderr
    assert result.returncode == 1, text
    # depth.launch.py read its arguments (and refused the flag), not the parent's robot
    assert "managed:='ture' must be true or false" in text and 'no argument' not in text, text


@pytest.mark.parametrize('launch_file, name', [('depth.launch.py', 'params_file'),
                                               ('cameras.launch.py', 'cameras_file')])
def test_a_missing_params_file_ends_the_launch_naming_it(installed, launched, tmp_path,
                                                        launch_file, name):
    missing = tmp_path / 'nowhere.yaml'
    launch = launched(launch_file, f'{name}:={missing}', *SMALL)
    code = launch.process.wait(timeout=120)
    assert code == 1 and f"{name}:='{missing}' is not a file" in launch.output(), \
        launch.output()
    assert not launch.node_pids()

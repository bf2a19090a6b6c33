"""Install rules: the ROS path installs nothing that breaks a ROS distribution, `pip
install .` declares what the tools import, installed tools find their files in the
install's share folder, and the plain-Python tools run without any ROS package."""

import ast
from pathlib import Path
import re
import subprocess
import sys

import pytest

REPO = Path(__file__).resolve().parents[1]
# import name -> distribution that provides it
DISTRIBUTIONS = {'numpy': 'numpy', 'cv2': 'opencv-python-headless', 'PIL': 'pillow',
                 'torch': 'torch', 'torchvision': 'torchvision', 'open_clip': 'open_clip_torch',
                 'safetensors': 'safetensors', 'rosbags': 'rosbags', 'tqdm': 'tqdm',
                 'skimage': 'scikit-image', 'scipy': 'scipy'}
ROS = {'rclpy', 'rcl_interfaces', 'sensor_msgs', 'std_msgs', 'diagnostic_msgs',
       'lifecycle_msgs', 'ament_index_python', 'launch', 'launch_ros', 'builtin_interfaces',
       'visualization_msgs', 'geometry_msgs', 'vision_msgs'}


def requirements(path: Path) -> dict[str, str]:
    """``{name: pinned version or ''}`` of a requirements file."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split('#')[0].strip()
        if line and not line.startswith('-'):
            match = re.match(r'([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(?:[=<>~!]=?\s*([\w.]+))?', line)
            out[match.group(1).lower()] = match.group(3) or ''
    return out


def test_the_ros_path_installs_no_ros_wheel_and_keeps_numpy_1_and_opencv_4():
    wanted = requirements(REPO / 'requirements-ros.txt')
    assert wanted, 'requirements-ros.txt is empty'
    assert not [n for n in wanted if n.startswith('ros-')], wanted
    for name, version in wanted.items():
        if name == 'numpy':
            assert not version or int(version.split('.')[0]) < 2, version
        if name.startswith('opencv'):
            assert not version or int(version.split('.')[0]) < 5, version
    # what rosdep cannot give is there: the model's libraries
    assert {'torch', 'torchvision', 'open_clip_torch'} <= set(wanted)
    readme = (REPO / 'README.md').read_text()  # the ROS 2 install route
    assert 'pip install -r depthclip_ros/requirements-ros.txt' in readme


def imported_top_levels() -> set[str]:
    names = set()
    for path in (REPO / 'depthclip_ros').rglob('*.py'):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split('.')[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split('.')[0])
    return names


def test_setup_declares_every_third_party_import():
    setup = (REPO / 'setup.py').read_text()
    third_party = imported_top_levels() - set(sys.stdlib_module_names) - ROS - {
        'depthclip_ros', 'huggingface_hub', 'mcap', 'mcap_ros2', 'yaml', 'spacy'}
    unknown = third_party - set(DISTRIBUTIONS)
    assert not unknown, f'map these imports to distributions: {unknown}'
    for name in third_party:
        assert f"'{DISTRIBUTIONS[name]}'" in setup, DISTRIBUTIONS[name]
    for wheel in ('ros-rclpy', 'ros-sensor-msgs'):
        assert f"'{wheel}'" in setup  # the `ros` extra


BLOCK_ROS = f"""
import sys
class NoRos:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {sorted(ROS)!r}:
            raise ModuleNotFoundError(f'No module named {{name!r}}', name=name)
sys.meta_path.insert(0, NoRos())
from depthclip_ros.tools.cli import main
sys.exit(main(sys.argv[1:]))
"""


def without_ros(*args, cwd=REPO):
    return subprocess.run([sys.executable, '-c', BLOCK_ROS, *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def test_the_plain_python_tools_run_without_any_ros_package(tmp_path):
    result = without_ros('--help')
    assert result.returncode == 0, result.stderr
    assert 'infer' in result.stdout and 'bag' in result.stdout
    image = tmp_path / 'a.png'
    import cv2
    import numpy as np
    cv2.imwrite(str(image), np.full((40, 60, 3), 120, np.uint8))
    result = without_ros('infer', str(image), '--intrinsics', '50', '50', '30', '20',
                         '--output', str(tmp_path / 'out'), '--pretrained', 'none',
                         '--device', 'cpu', '--input-size', '64', '64')
    assert result.returncode == 0, result.stderr
    assert (tmp_path / 'out' / 'a_depth.npy').is_file()
    result = without_ros('bag', 'in.mcap', 'out')
    assert result.returncode == 2
    assert 'needs the ROS 2 Python packages' in result.stderr
    assert 'Traceback' not in result.stderr


def test_installed_tools_find_the_shipped_files_outside_the_checkout(tmp_path):
    """The package as installed (scripts/setup.sh runs `pip install .` into .venv), run
    from a folder outside the checkout, finds config/ under the install's share folder."""
    code = ('import depthclip_ros, depthclip_ros.io.resources as r; '
            'print(depthclip_ros.__file__); '
            "print(r.share_file('config/fastdds_localhost.xml')); "
            "print(r.share_file('config/depthclip.yaml')); "
            # what bench-node and soak do first: the loopback profile of the install
            'import os; from depthclip_ros.tools import node_process as n; '
            "n.isolate_ros_traffic(); print(os.environ['FASTRTPS_DEFAULT_PROFILES_FILE'])")
    result = subprocess.run([sys.executable, '-I', '-c', code], capture_output=True,
                            text=True, cwd=tmp_path, timeout=60)
    if result.returncode != 0 and 'No module named' in result.stderr:
        pytest.skip('depthclip_ros is not installed in this environment (source tree only)')
    assert result.returncode == 0, result.stderr
    module, profile, params, used = result.stdout.split()
    assert used == profile
    if Path(module).resolve().is_relative_to(REPO / 'depthclip_ros'):
        pytest.skip('the importable depthclip_ros is the checkout itself')
    for found in (profile, params):
        assert Path(found).is_file()
        assert not Path(found).resolve().is_relative_to(REPO / 'config'), found
        assert f'share{Path("/").as_posix()}depthclip_ros' in found

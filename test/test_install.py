"""Install rules: the ROS path installs nothing that breaks a ROS distribution, `pip
install .` declares what the tools import, installed tools find their files in the
install's share folder, and the plain-Python tools run without any ROS package."""

import ast
from pathlib import Path
import re
import subprocess
import sys

import pytest

from conftest import without_ros

REPO = Path(__file__).resolve().parents[1]
# import name -> distribution that provides it
DISTRIBUTIONS = {'numpy': 'numpy', 'cv2': 'opencv-python-headless', 'PIL': 'pillow',
                 'torch': 'torch', 'torchvision': 'torchvision', 'open_clip': 'open_clip_torch',
                 'safetensors': 'safetensors', 'huggingface_hub': 'huggingface_hub',
                 'rosbags': 'rosbags', 'mcap': 'mcap', 'yaml': 'pyyaml', 'tqdm': 'tqdm',
                 'skimage': 'scikit-image', 'scipy': 'scipy'}
# import name -> distribution of setup.py's `openvino` extra (backend openvino, precision
# int8, export --format onnx): imported only inside functions, pinned in
# requirements-dev.txt so that CI tests that path
OPENVINO_EXTRA = {'openvino': 'openvino', 'nncf': 'nncf', 'onnx': 'onnx'}
# import name -> rosdep key, for what a ROS distribution provides (the rest of the
# third-party imports come from requirements-ros.txt)
ROSDEP_KEYS = {'numpy': 'python3-numpy', 'cv2': 'python3-opencv', 'PIL': 'python3-pil',
               'skimage': 'python3-skimage', 'scipy': 'python3-scipy', 'yaml': 'python3-yaml'}
ROS = {'rclpy', 'rcl_interfaces', 'sensor_msgs', 'std_msgs', 'diagnostic_msgs',
       'lifecycle_msgs', 'ament_index_python', 'launch', 'launch_ros', 'builtin_interfaces',
       'visualization_msgs', 'geometry_msgs', 'vision_msgs'}
# imported only inside `try: ... except ImportError` (the node works without them)
OPTIONAL = {'vision_msgs'}
# the launch system: no PyPI wheel; a ROS install (or ../shared/ros-tools) provides it to
# `ros2 launch`, and only the module the launch files call imports it
LAUNCH_SYSTEM = {'launch', 'launch_ros'}
LAUNCH_SIDE = {'launch_arguments.py'}


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


def import_nodes():
    """``(path, the try blocks it sits in, top-level name)`` of every absolute import in
    the package (at any depth: lazy imports count)."""
    for path in sorted((REPO / 'depthclip_ros').rglob('*.py')):
        tree = ast.parse(path.read_text())
        guards = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Try):
                for inner in (n for stmt in node.body for n in ast.walk(stmt)):
                    guards.setdefault(inner, []).append(node)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name.split('.')[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module.split('.')[0]]
            else:
                continue
            for name in names:
                yield path, guards.get(node, []), name


def imported_top_levels() -> set[str]:
    return {name for _, _, name in import_nodes()}


def setup_keywords() -> dict:
    """setup.py's ``install_requires`` and ``extras_require``, read from the file."""
    tree = ast.parse((REPO / 'setup.py').read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call)
                and getattr(n.func, 'id', '') == 'setup')
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords
            if k.arg in ('install_requires', 'extras_require')}


def install_requires() -> tuple[set[str], set[str]]:
    """setup.py's ``install_requires`` and its ``ros`` extra."""
    keywords = setup_keywords()
    return set(keywords['install_requires']), set(keywords['extras_require']['ros'])


def exec_depends() -> set[str]:
    return set(re.findall(r'<exec_depend>([^<]+)</exec_depend>',
                          (REPO / 'package.xml').read_text()))


def test_every_third_party_import_is_declared_for_every_install():
    """`pip install .` (setup.py), the pinned plain-Python install (requirements.txt) and
    the ROS install (a rosdep key in package.xml, else requirements-ros.txt) each provide
    every module the package imports, `bag --recover`'s mcap included."""
    third_party = imported_top_levels() - set(sys.stdlib_module_names) - ROS - {
        'depthclip_ros'} - set(OPENVINO_EXTRA)
    unknown = third_party - set(DISTRIBUTIONS)
    assert not unknown, f'map these imports to distributions: {unknown}'
    assert {'mcap', 'yaml', 'huggingface_hub'} <= third_party  # the check sees them
    required, _ = install_requires()
    pinned = requirements(REPO / 'requirements.txt')
    for_ros = requirements(REPO / 'requirements-ros.txt')
    rosdep = exec_depends()
    for name in sorted(third_party):
        distribution = DISTRIBUTIONS[name]
        assert distribution in required, f'setup.py install_requires lacks {distribution}'
        assert pinned.get(distribution), f'requirements.txt does not pin {distribution}'
        assert ROSDEP_KEYS.get(name) in rosdep or distribution in for_ros, \
            f'neither package.xml (rosdep) nor requirements-ros.txt gives {distribution}'
    dev = requirements(REPO / 'requirements-dev.txt')
    assert not set(dev) & set(pinned), 'requirements-dev.txt repeats requirements.txt'
    assert '-r requirements.txt' in (REPO / 'requirements-dev.txt').read_text()


def test_the_openvino_extra_is_declared_pinned_and_imported_lazily():
    """openvino and nncf (and onnx, for the export tool) are setup.py's `openvino` extra
    (`pip install .[openvino]`), pinned in requirements-dev.txt (CI tests the path), and
    imported only inside functions: the package imports and runs without them."""
    extra = set(setup_keywords()['extras_require']['openvino'])
    dev = requirements(REPO / 'requirements-dev.txt')
    for distribution in OPENVINO_EXTRA.values():
        assert distribution in extra, f"setup.py's openvino extra lacks {distribution}"
        assert dev.get(distribution), f'requirements-dev.txt does not pin {distribution}'
    assert {'openvino', 'nncf'} <= imported_top_levels()  # the check sees them
    for path in sorted((REPO / 'depthclip_ros').rglob('*.py')):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level, also inside module-level if/try blocks
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            for inner in ast.walk(node):
                names = [a.name for a in inner.names] if isinstance(inner, ast.Import) \
                    else [inner.module or ''] if isinstance(inner, ast.ImportFrom) else []
                top = {name.split('.')[0] for name in names}
                assert not top & set(OPENVINO_EXTRA), \
                    f'{path.name} imports {sorted(top & set(OPENVINO_EXTRA))} at module level'
    assert 'pip install .[openvino]' in (REPO / 'docs' / 'node.md').read_text(encoding='utf-8')


def test_every_ros_import_is_declared_or_optional():
    """Each ROS package imported is an exec_depend of package.xml and a wheel of the `ros`
    extra (pinned in requirements.txt), or optional: imported only where an ImportError is
    caught."""
    _, ros_extra = install_requires()
    pinned = requirements(REPO / 'requirements.txt')
    rosdep = exec_depends()
    used = imported_top_levels() & ROS
    assert {'rclpy', 'sensor_msgs', 'geometry_msgs'} <= used
    for name in sorted(used & LAUNCH_SYSTEM):
        assert name in rosdep, f'package.xml lacks <exec_depend>{name}</exec_depend>'
    for path, _, name in import_nodes():
        if name in LAUNCH_SYSTEM:
            assert path.name in LAUNCH_SIDE, f'{path.name} imports {name} (launch files only)'
    for name in sorted(used - OPTIONAL - LAUNCH_SYSTEM):
        wheel = 'ros-' + name.replace('_', '-')
        assert name in rosdep, f'package.xml lacks <exec_depend>{name}</exec_depend>'
        assert wheel in ros_extra, f"setup.py's ros extra lacks {wheel}"
        assert pinned.get(wheel), f'requirements.txt does not pin {wheel}'
    for path, guards, name in import_nodes():
        if name in OPTIONAL:
            caught = {getattr(h.type, 'id', None) for t in guards for h in t.handlers}
            assert caught & {'ImportError', 'ModuleNotFoundError'}, \
                f'{path.name} imports the optional {name} without catching ImportError'


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

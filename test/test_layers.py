"""Imports go one way, checked statically over every module of the package (STYLE.md):
the engine and the object step know nothing of ROS, the rules that tools and launch files
read need no torch, only the ROS layer (and the tools that drive a node or write bags)
imports rclpy, and no two modules import each other, directly or through others."""

import ast
from pathlib import Path
import subprocess
import sys

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / 'depthclip_ros'
ROS_ROOTS = {'rclpy', 'rcl_interfaces', 'rosidl_runtime_py', 'builtin_interfaces',
             'sensor_msgs', 'std_msgs', 'diagnostic_msgs', 'visualization_msgs',
             'vision_msgs', 'lifecycle_msgs', 'geometry_msgs', 'launch', 'launch_ros'}
HEAVY = {'torch', 'torchvision', 'open_clip', 'cv2', 'rosbags', 'skimage', 'scipy'}
# Outside ros/ and bags/, only these drive a node or write ROS messages into bags.
RCLPY_TOOLS = {'depthclip_ros.tools.bag', 'depthclip_ros.tools.demo',
               'depthclip_ros.tools.soak', 'depthclip_ros.tools.node_process',
               'depthclip_ros.tools.bench.node', 'depthclip_ros.tools.bench.cameras',
               'depthclip_ros.tools.bench.bag'}
# What a parameter table, an option check or a launch file reads: no torch, no OpenCV.
# The command-line tools too: `depthclip-ros <tool> --help` imports the tool's module, which
# imports torch, OpenCV, rosbags and ROS only when it runs (test_tools_help checks a real
# run of every --help).
LIGHT = ['depthclip_ros.engine.config', 'depthclip_ros.objects.queries',
         'depthclip_ros.ros.parameters', 'depthclip_ros.ros.launch_arguments',
         'depthclip_ros.ros.streams', 'depthclip_ros.geometry',
         'depthclip_ros.engine.metrics', 'depthclip_ros.timing', 'depthclip_ros.allocator',
         'depthclip_ros.ros.shutdown', 'depthclip_ros.ros.entry', 'depthclip_ros.ros.configs',
         'depthclip_ros.io.dataset', 'depthclip_ros.io.visualize', 'depthclip_ros.io.outputs',
         'depthclip_ros.tools.cli', 'depthclip_ros.tools.common',
         'depthclip_ros.tools.progress', 'depthclip_ros.tools.infer',
         'depthclip_ros.tools.infer_names', 'depthclip_ros.tools.locate_outputs',
         'depthclip_ros.tools.locate', 'depthclip_ros.tools.evaluate',
         'depthclip_ros.tools.bag', 'depthclip_ros.tools.demo', 'depthclip_ros.tools.soak',
         'depthclip_ros.tools.export']


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix('').parts)
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob('*.py'))}


def _type_checking_only(stmt: ast.stmt) -> bool:
    """``if TYPE_CHECKING:`` (annotations only: never run)."""
    return isinstance(stmt, ast.If) and isinstance(stmt.test, ast.Name) and \
        stmt.test.id == 'TYPE_CHECKING' and not stmt.orelse


def imports_of(path: Path, name: str, top_level: bool) -> set[str]:
    """Absolute names of what ``path`` imports: every import, or only those run when the
    module is imported (``top_level``: not inside functions or classes, nor under
    ``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text(encoding='utf-8'))
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    nodes = tree.body if top_level else list(ast.walk(tree))
    if top_level:  # also inside module-level if/try blocks
        nodes = [n for stmt in tree.body for n in ast.walk(stmt)
                 if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                 and not _type_checking_only(stmt)]
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')[:len(package.split('.')) - node.level + 1]
                module = '.'.join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.add(module)
            for alias in node.names:  # from package import module
                if f'{module}.{alias.name}' in MODULES:
                    found.add(f'{module}.{alias.name}')
    return found


def with_parents(name: str) -> list[str]:
    parts = name.split('.')
    return ['.'.join(parts[:i]) for i in range(1, len(parts) + 1)]


def closure(roots, top_level: bool = True) -> set[str]:
    """Every module (ours and third-party roots) that importing ``roots`` imports."""
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        for part in with_parents(name):
            if part in seen:
                continue
            seen.add(part)
            if part in MODULES:
                todo.extend(imports_of(MODULES[part], part, top_level))
    return seen


def roots_of(names) -> set[str]:
    return {n.split('.')[0] for n in names}


def test_every_module_is_seen():
    assert len(MODULES) > 40 and 'depthclip_ros.engine.depthclip' in MODULES


def test_no_import_cycles():
    graph = {name: {m for m in imports_of(path, name, top_level=False) if m in MODULES
                    and m != name and not name.startswith(m + '.')}
             for name, path in MODULES.items()}
    cycles = []
    for start in graph:
        reach = closure_in(graph, start)
        if start in reach:
            cycles.append(start)
    assert not cycles, f'modules on an import cycle: {cycles}'


def closure_in(graph, start):
    seen, todo = set(), list(graph[start])
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(graph.get(name, ()))
    return seen


@pytest.mark.parametrize('layer', ['depthclip_ros.engine', 'depthclip_ros.objects',
                                   'depthclip_ros.io', 'depthclip_ros.geometry'])
def test_engine_objects_and_io_know_nothing_of_ros(layer):
    for name, path in MODULES.items():
        if name == layer or name.startswith(layer + '.'):
            direct = imports_of(path, name, top_level=False)
            bad = roots_of(direct) & ROS_ROOTS
            ours = {m for m in direct if m.startswith(('depthclip_ros.ros', 'depthclip_ros.bags',
                                                        'depthclip_ros.tools'))}
            assert not bad and not ours, f'{name} imports {sorted(bad | ours)}'


def test_only_the_ros_layer_and_node_tools_import_rclpy():
    for name, path in MODULES.items():
        allowed = name.startswith(('depthclip_ros.ros.', 'depthclip_ros.bags.')) or \
            name in RCLPY_TOOLS
        if not allowed:
            direct = roots_of(imports_of(path, name, top_level=False))
            assert not direct & ROS_ROOTS, f'{name} imports {sorted(direct & ROS_ROOTS)}'


@pytest.mark.parametrize('name', LIGHT)
def test_rules_and_tables_import_no_torch(name):
    heavy = roots_of(closure([name])) & (HEAVY | {'rclpy'})
    assert not heavy, f'importing {name} imports {sorted(heavy)}'


@pytest.mark.parametrize('launch_file', sorted((REPO / 'launch').glob('*.launch.py')),
                         ids=lambda p: p.name)
def test_launch_files_import_nothing_that_imports_torch(launch_file):
    ours = {m for m in imports_of(launch_file, 'launch_file', top_level=True)
            if m.startswith('depthclip_ros')}
    heavy = roots_of(closure(ours)) & HEAVY
    assert not heavy, f'{launch_file.name} imports {sorted(heavy)} through {sorted(ours)}'


def test_the_static_check_agrees_with_a_real_import():
    """One fresh interpreter: what the launch files import really leaves torch out."""
    code = ('import sys, depthclip_ros.ros.launch_arguments, depthclip_ros.engine.config; '
            'print(sorted(m for m in ("torch", "cv2", "open_clip", "rclpy") '
            'if m in sys.modules))')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '[]'

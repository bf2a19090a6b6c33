"""``scripts/gpu_check.sh``, its CPU-side parts: the wheel download it composes (nothing is
downloaded here), the wheels covering what the engine imports, the CUDA tests it selects
being those that skip on the CPU, the install and stage plan of a dry run, the time cap
of its child processes, the report's targets, and a whole ``--device cpu --quick`` run
writing the two files (random weights; its figures measure nothing).
"""

import ast
import importlib
import json
import os
from pathlib import Path
import subprocess
import sys

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / 'scripts' / 'gpu_check.sh'


@pytest.fixture(scope='module')
def gpu_check():
    sys.path.insert(0, str(REPO / 'scripts'))
    try:
        yield importlib.import_module('gpu_check')
    finally:
        sys.path.remove(str(REPO / 'scripts'))


def pins(*files: str) -> dict[str, str]:
    found = {}
    for name in files:
        for line in (REPO / name).read_text().splitlines():
            if '==' in line and not line.startswith('#'):
                package, version = line.split('==')
                found[package.strip().lower().replace('_', '-')] = version.strip()
    return found


# ------------------------------------------------------------------ the wheels
def test_prepare_downloads_binary_wheels_for_python_3_12_without_torch(gpu_check):
    command = gpu_check.prepare_command(Path('w'), '0.29.2')
    assert command[1:4] == ['-m', 'pip', 'download']
    text = ' '.join(command)
    for part in ('--no-deps', '--only-binary=:all:', '--python-version 3.12',
                 '--implementation cp', '--abi cp312', '--platform manylinux2014_x86_64',
                 '--platform manylinux_2_28_x86_64', '-d w'):
        assert part in text
    wanted = [arg for arg in command if '==' in arg]
    names = {arg.split('==')[0] for arg in wanted}
    assert {'open_clip_torch', 'ftfy', 'wcwidth', 'regex', 'huggingface_hub', 'safetensors',
            'timm', 'tqdm', 'pyyaml', 'numpy', 'pillow', 'pytest'} <= names
    assert 'torchvision==0.29.2' in wanted
    assert not {n for n in names if n == 'torch' or n.startswith(('nvidia', 'cuda', 'triton'))}
    # the versions the project pins, where it pins them
    pinned = pins('requirements.txt', 'requirements-dev.txt')
    for arg in wanted:
        name, version = arg.split('==')
        key = name.lower().replace('_', '-')
        assert pinned.get(key, version) == version, (name, version, pinned[key])
    assert pinned['torchvision'] == gpu_check.TORCHVISION


def test_prepare_leaves_out_what_it_is_told(gpu_check):
    command = gpu_check.prepare_command(Path('w'), 'none', ('numpy', 'pillow'))
    assert not [a for a in command if a.startswith(('torchvision==', 'numpy==', 'pillow=='))]
    assert 'open_clip_torch==3.3.0' in command
    with pytest.raises(ValueError, match='not one of the wheels: torch'):
        gpu_check.prepare_command(Path('w'), without=('torch',))


def test_prepare_dry_run_prints_the_command_and_downloads_nothing(gpu_check, tmp_path,
                                                                   capsys):
    assert gpu_check.main(['--prepare', '--dry-run', '--wheels', str(tmp_path / 'w')]) == 0
    out = capsys.readouterr().out
    assert '-m pip download --no-deps --only-binary=:all: --python-version 3.12' in out
    assert f'-d {tmp_path / "w"} open_clip_torch==' in out
    assert not (tmp_path / 'w').exists()


def test_the_wheels_are_ignored_by_git():
    ignored = subprocess.run(['git', 'check-ignore', 'gpu-wheels/x.whl',
                              'gpu-check-out/gpu-check.md'], cwd=REPO, capture_output=True,
                             text=True)
    assert ignored.stdout.split() == ['gpu-wheels/x.whl', 'gpu-check-out/gpu-check.md']


# What comes with torch itself, and optional imports a package tries when present here.
WITH_TORCH = {'torch', 'torchgen', 'triton', 'sympy', 'mpmath', 'networkx', 'jinja2',
              'markupsafe', 'filelock', 'fsspec', 'typing_extensions', 'nvidia', 'cuda',
              'setuptools', 'pkg_resources'}
OPTIONAL_HERE = {'pydot', 'backports', 'ros_wheels_bootstrapper'}
ENGINE_RUN = """
import sys
sys.path[:0] = ['scripts', 'test']
import gpu_measure
import conftest, test_speed_paths  # what the tests stage imports
import numpy as np
from depthclip_ros.engine.config import ModelConfig
from depthclip_ros.engine.depthclip import DepthCLIP
from depthclip_ros.engine.export import Trunk
engine = DepthCLIP(ModelConfig(pretrained='none', device='cpu', input_size=(64, 96))).load()
engine.infer_frames(gpu_measure.camera_frames(1))
names = {m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names)
print(' '.join(sorted(n for n in names if not n.startswith('_') and n != 'cython_runtime')))
"""


def test_the_wheels_cover_every_module_a_random_engine_run_imports(gpu_check):
    """...and the CUDA tests' modules: nothing the GPU machine would lack (OpenCV, ROS,
    scipy) is imported on the way."""
    done = subprocess.run([sys.executable, '-c', ENGINE_RUN], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, HF_HUB_OFFLINE='1'))
    assert done.returncode == 0, done.stderr[-2000:]
    imported = set(done.stdout.split())
    assert {'open_clip', 'ftfy', 'torchvision'} <= imported  # the check sees them
    carried = {module for _, _, module in gpu_check.WHEELS} | {'torchvision', 'py'}  # py: pytest's
    local = {'depthclip_ros', 'gpu_measure', 'conftest', 'test_speed_paths'}
    assert imported - carried - WITH_TORCH - OPTIONAL_HERE - local == set()


# ------------------------------------------------------------------ the CUDA tests
def cuda_only_tests() -> dict[str, set[str]]:
    """``{test file: names}`` of the tests skipped without CUDA (``needs_cuda``, or
    ``skipif(not ... cuda.is_available() ...)``)."""
    found = {}
    for path in sorted((REPO / 'test').glob('test_*.py')):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef):
                continue
            for decorator in node.decorator_list:
                text = ast.unparse(decorator)
                if text == 'needs_cuda' or ('skipif' in text and 'not ' in text and
                                            'cuda.is_available' in text):
                    found.setdefault(path.name, set()).add(node.name)
    return found


def test_it_runs_every_test_that_needs_cuda(gpu_check):
    found = cuda_only_tests()
    assert found and sum(map(len, found.values())) >= 3  # the scan sees them
    files = {Path(arg).name for arg in gpu_check.TESTS if arg.endswith('.py')}
    assert set(found) <= files
    keyword = gpu_check.TESTS[gpu_check.TESTS.index('-k') + 1]
    assert all(keyword in name for names in found.values() for name in names)


def test_pytest_counts_reads_the_closing_line(gpu_check):
    assert gpu_check.pytest_counts('x\n..s\n2 passed, 3 skipped, 14 deselected in 2.29s\n') \
        == {'passed': 2, 'skipped': 3, 'deselected': 14}
    assert gpu_check.pytest_counts('==== 1 failed, 1 passed, 2 errors in 3.0s ====') == \
        {'failed': 1, 'passed': 1, 'errors': 2}
    assert gpu_check.pytest_counts('killed') == {}


# ------------------------------------------------------------------ on the GPU machine
def test_a_dry_run_plans_the_install_and_the_stages_and_writes_nothing(gpu_check, tmp_path,
                                                                        capsys, monkeypatch):
    monkeypatch.setattr(gpu_check, 'missing_modules', lambda: ['ftfy', 'torchvision'])
    wheels, out = tmp_path / 'wheels', tmp_path / 'out'
    assert gpu_check.main(['--dry-run', '--wheels', str(wheels), '--out', str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    install = next(line for line in lines if 'would install' in line)
    assert '-m pip install --no-index --no-deps' in install
    assert f'--find-links {wheels} --target ' in install and install.endswith('ftfy torchvision')
    stages = {line.split(':')[1].strip(): line for line in lines if line.count(':') > 1 and
              line.split(':')[1].strip() in ('tests', 'measure', 'compile')}
    assert set(stages) == {'tests', 'measure', 'compile'}
    assert '-m pytest' in stages['tests'] and 'test/test_speed_paths.py -k cuda' in \
        stages['tests']
    assert '--device cuda --input-size 416 544 --batches 1 8 --cameras 8' in stages['measure']
    assert '--what trunk,multi_camera' in stages['measure']
    assert '--what compile' in stages['compile'] and '--compile-mode reduce-overhead' in \
        stages['compile']
    assert not out.exists()


def test_a_missing_wheels_folder_is_said_before_anything_runs(gpu_check, tmp_path, capsys,
                                                              monkeypatch):
    monkeypatch.setattr(gpu_check, 'missing_modules', lambda: ['open_clip_torch'])
    code = gpu_check.main(['--wheels', str(tmp_path / 'none'), '--out', str(tmp_path / 'o')])
    assert code == 2
    err = capsys.readouterr().err
    assert 'open_clip_torch cannot be imported here' in err and '--prepare' in err
    assert not (tmp_path / 'o').exists()


def test_a_child_is_stopped_at_its_cap_with_what_it_said(gpu_check):
    sleeper = [sys.executable, '-c', 'import subprocess, sys, time; print("started", '
               'flush=True); subprocess.Popen([sys.executable, "-c", "import time; '
               'time.sleep(60)"]); time.sleep(60)']
    result = gpu_check.run_child(sleeper, 2, dict(os.environ))
    assert result['timed_out'] is True and result['seconds'] < 20
    assert result['output_tail'] == ['started']
    done = gpu_check.run_child([sys.executable, '-c', 'print("a"); print("b")'], 30,
                               dict(os.environ))
    assert done['exit_status'] == 0 and not done['timed_out']
    assert done['output_tail'] == ['a', 'b']


def test_the_targets_are_judged_only_for_cuda_at_416x544(gpu_check):
    from gpu_report import targets
    rows = [{'variant': 'fp16 CUDA graphs NCHW', 'batch': 1, 'status': 'ok', 'median_ms': 1.2},
            {'variant': 'fp16 eager NCHW', 'batch': 8, 'status': 'ok', 'median_ms': 5.0},
            {'variant': 'fp16 CUDA graphs NCHW', 'batch': 8, 'status': 'ok', 'median_ms': 3.5},
            {'variant': 'fp16 torch.compile', 'batch': 8, 'status': 'not finished'}]
    document = {'settings': {'device': 'cuda', 'input_size': [416, 544]}, 'trunk': rows,
                'multi_camera': [{'variant': 'fp16 default', 'cameras': 8, 'status': 'ok',
                                  'batched': {'median_ms': 9.0}}]}
    graphs, batched, cameras = targets(document)
    assert graphs['met'] is True and graphs['measured_ms'] == 1.2
    assert batched['met'] is True and batched['variant'] == 'fp16 CUDA graphs NCHW'
    assert cameras['met'] is False and cameras['measured_ms'] == 9.0
    document['settings']['device'] = 'cpu'
    assert [t['met'] for t in targets(document)] == [None, None, None]


def test_a_quick_cpu_run_writes_the_markdown_and_the_json(tmp_path):
    out = tmp_path / 'out'
    done = subprocess.run([str(SCRIPT), '--device', 'cpu', '--quick', '--out', str(out)],
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, HF_HUB_OFFLINE='1'))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ['gpu-check.json', 'gpu-check.md']
    document = json.loads((out / 'gpu-check.json').read_text())
    assert document['random_weights'] is True and 'Random weights' in document['note']
    assert document['quick'] is True and document['installed_from_wheels'] == []
    assert document['machine']['torch'] and document['machine']['gpu'] is None
    assert document['settings']['input_size'] == [64, 96]
    counts = document['tests']['counts']
    assert document['tests']['exit_status'] == 0 and counts['passed'] >= 1 and \
        counts['skipped'] >= 3  # the CUDA tests skip here
    by_key = {(row['variant'], row['batch']): row for row in document['trunk']}
    for variant in ('fp32 eager NCHW', 'fp32 eager channels-last'):
        for batch in (1, 2):
            row = by_key[(variant, batch)]
            assert row['status'] == 'ok' and row['runs'] == 3 and row['median_ms'] > 0
            assert row['timer'] == 'perf_counter'
            assert row['p10_ms'] <= row['median_ms'] <= row['p90_ms']
    assert by_key[('fp32 CUDA graphs NCHW', 1)]['status'] == 'not available on the CPU'
    [cameras] = document['multi_camera']
    assert cameras['cameras'] == 2 and cameras['batched']['median_ms'] > 0
    assert [t['met'] for t in document['targets']] == [None, None, None]
    assert any('torch.compile' in e for e in document['errors'])
    text = (out / 'gpu-check.md').read_text()
    for heading in ('# DepthCLIP GPU check', '## Tests that need CUDA', '## Image trunk 64x96',
                    '## Several cameras', '## Targets (issue 22)', '**Random weights'):
        assert heading in text
    assert '| fp32 eager channels-last | 2 |' in text
    # a second run would replace them: refused before anything runs
    before = (out / 'gpu-check.md').read_bytes()
    again = subprocess.run([str(SCRIPT), '--device', 'cpu', '--quick', '--out', str(out)],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and '--overwrite' in again.stderr
    assert (out / 'gpu-check.md').read_bytes() == before


# ------------------------------------------------ gpu_measure never replaces a file unasked
@pytest.mark.parametrize('existing', ['file', 'link', 'dangling link'])
def test_gpu_measure_refuses_an_existing_json_before_it_runs(tmp_path, existing):
    mine = tmp_path / 'mine.json'
    mine.write_text('{"my": "figures"}')
    report = tmp_path / 'part.json'
    if existing == 'file':
        report.write_text('{"my": "figures"}')
    elif existing == 'link':
        report.symlink_to(mine)
    else:
        report.symlink_to(tmp_path / 'gone.json')
    done = subprocess.run([sys.executable, str(REPO / 'scripts' / 'gpu_measure.py'),
                           '--json', str(report), '--device', 'cpu'],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and '--overwrite' in done.stderr
    assert mine.read_text() == '{"my": "figures"}'
    assert os.path.lexists(report) and (existing != 'file' or
                                        report.read_text() == '{"my": "figures"}')
    assert 'torch' not in done.stderr  # refused before anything ran

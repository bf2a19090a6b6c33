"""One command for a GPU machine that has Python 3.12 and torch and no network: the CUDA
tests that skip on the CPU, the trunk's speed on the GPU and the engine's multi-camera
batch, written as one markdown and one JSON file of figures (``scripts/gpu_check.sh``).

Two steps (docs/benchmarks.md, "GPU check"):

1. ``--prepare``, on a machine with network, before going to the GPU machine: downloads
   the pure-Python packages the engine, its tests and the measurements need beyond torch
   (open_clip_torch, ftfy, huggingface_hub, pytest, ... and torchvision, which must
   match the GPU machine's torch) as Python 3.12 x86-64 wheels into ``--wheels``
   (default ``gpu-wheels/``, ignored by git). No torch and no CUDA wheel.
2. On the GPU machine, from the repository root: installs the wheels of whatever is not
   importable there (``pip install --no-index --no-deps --target`` a temporary folder,
   put on PYTHONPATH before the machine's own packages only for those), then within
   ``--budget-s`` (default 480 s): the tests, the measurements (scripts/gpu_measure.py)
   and ``torch.compile`` (each in a child process with its own time cap), and writes
   ``gpu-check.md`` and ``gpu-check.json`` into ``--out`` (default ``gpu-check-out/``).

Standard library only (it runs before anything is installed). ``--dry-run`` prints what
would run and writes nothing; ``--device cpu --quick`` runs the whole chain on the CPU at
a tiny size (what the project's tests check on machines without a GPU).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from pathlib import Path
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'scripts'))

from gpu_report import write_report  # noqa: E402  (scripts/ beside this file)

PYTHON_VERSION = '3.12'
PLATFORMS = ('manylinux_2_28_x86_64', 'manylinux_2_27_x86_64', 'manylinux_2_17_x86_64',
             'manylinux2014_x86_64')
# (distribution, version, module it provides): what `import depthclip_ros.engine.depthclip`,
# loading a random model, the CUDA tests and the measurements need beyond torch (and torch's
# own requirements: filelock, fsspec, typing_extensions come with it but are cheap to
# carry). Versions: the project's pins (requirements*.txt) and the versions tested with
# them. Left out: hf-xet (4 MB; huggingface_hub needs it only to download from the Hub).
# torchvision is separate: it must match the GPU machine's torch.
WHEELS = (
    ('open_clip_torch', '3.3.0', 'open_clip'),
    ('ftfy', '6.3.1', 'ftfy'),
    ('wcwidth', '0.9.5', 'wcwidth'),
    ('regex', '2026.12.2', 'regex'),
    ('tqdm', '4.70.1', 'tqdm'),
    ('timm', '1.0.31', 'timm'),
    ('safetensors', '0.8.0', 'safetensors'),
    ('huggingface_hub', '2.4.0', 'huggingface_hub'),
    ('httpx2', '2.17.0', 'httpx2'),
    ('httpcore2', '2.17.0', 'httpcore2'),
    ('anyio', '4.16.0', 'anyio'),
    ('h11', '0.16.0', 'h11'),
    ('idna', '3.21', 'idna'),
    ('truststore', '0.10.5', 'truststore'),
    ('click', '8.5.1', 'click'),
    ('filelock', '4.3.2', 'filelock'),
    ('fsspec', '2026.9.0', 'fsspec'),
    ('packaging', '26.4', 'packaging'),
    ('typing_extensions', '4.16.0', 'typing_extensions'),
    ('pyyaml', '6.0.3', 'yaml'),
    ('numpy', '2.4.6', 'numpy'),
    ('pillow', '13.0.0', 'PIL'),
    ('pytest', '9.2.0', 'pytest'),
    ('pluggy', '1.7.0', 'pluggy'),
    ('iniconfig', '2.3.1', 'iniconfig'),
    ('pygments', '2.21.0', 'pygments'),
)
# torch 2.14 and 2.15 pair with torchvision 0.29 (the project's pins); give the GPU
# machine's pair with --torchvision (torch 2.11 -> 0.26, 2.12 -> 0.27, 2.13 -> 0.28).
TORCHVISION = '0.29.2'
# The tests that need CUDA (they skip on the CPU): the CUDA-graph trunk against eager fp16,
# graph outputs kept across frames, bf16 on CUDA, and the CUDA side of the option checks.
TESTS = ('test/test_speed_paths.py', '-k', 'cuda')
BUDGET_S = 480
# Each stage's cap within the budget; torch.compile goes last and gets what is left.
CAPS_S = {'tests': 150, 'measure': 180, 'compile': 300}


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='scripts/gpu_check.sh', description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--prepare', action='store_true',
                        help='download the wheels (needs network); run nothing else')
    parser.add_argument('--wheels', type=Path, default=REPO / 'gpu-wheels',
                        help='the wheels folder (default gpu-wheels/)')
    parser.add_argument('--torchvision', default=TORCHVISION, metavar='VERSION',
                        help="--prepare: the torchvision matching the GPU machine's torch "
                             f"(default {TORCHVISION}), or 'none' when it has one")
    parser.add_argument('--without', nargs='+', default=(), metavar='NAME',
                        help='--prepare: leave these distributions out (ones the GPU '
                             'machine has: numpy, pillow and torchvision are 31 of the '
                             '40 MiB)')
    parser.add_argument('--out', type=Path, default=REPO / 'gpu-check-out',
                        help='where gpu-check.md and gpu-check.json go (default '
                             'gpu-check-out/)')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace gpu-check.md and gpu-check.json in --out (without it '
                             'a run that would is refused before anything runs)')
    parser.add_argument('--device', default='cuda', help='cuda (default), cuda:N or cpu')
    parser.add_argument('--quick', action='store_true',
                        help='a tiny run (64x96 input, batches 1 and 2, 2 cameras, 3 runs; '
                             'no torch.compile): checks the chain, measures nothing')
    parser.add_argument('--skip-tests', action='store_true', help='no pytest stage')
    parser.add_argument('--budget-s', type=float, default=BUDGET_S,
                        help=f'the whole run, installation included (default {BUDGET_S})')
    parser.add_argument('--compile-mode', default='reduce-overhead',
                        choices=('reduce-overhead', 'max-autotune',
                                 'max-autotune-no-cudagraphs', 'default'))
    parser.add_argument('--dry-run', action='store_true',
                        help='print the commands it would run; write nothing')
    return parser.parse_args(argv)


# ------------------------------------------------------------------ step 1: the wheels
def prepare_command(wheels: Path, torchvision: str | None = TORCHVISION,
                    without: tuple[str, ...] = (), python: str = sys.executable
                    ) -> list[str]:
    """``pip download`` of every wheel but those ``without``, for CPython 3.12 on
    manylinux x86-64, binary only, without dependencies (so that torch and CUDA libraries
    are never fetched)."""
    unknown = set(without) - {name for name, _, _ in WHEELS} - {'torchvision'}
    if unknown:
        raise ValueError(f'--without: not one of the wheels: {", ".join(sorted(unknown))}')
    command = [python, '-m', 'pip', 'download', '--no-deps', '--only-binary=:all:',
               '--python-version', PYTHON_VERSION, '--implementation', 'cp',
               '--abi', f'cp{PYTHON_VERSION.replace(".", "")}', '--abi', 'abi3',
               '--abi', 'none']
    for platform in PLATFORMS:
        command += ['--platform', platform]
    command += ['-d', str(wheels)]
    command += [f'{name}=={version}' for name, version, _ in WHEELS if name not in without]
    if torchvision and torchvision != 'none' and 'torchvision' not in without:
        command.append(f'torchvision=={torchvision}')
    return command


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def prepare(args: argparse.Namespace) -> int:
    try:
        command = prepare_command(args.wheels, args.torchvision, tuple(args.without))
    except ValueError as error:
        print(f'gpu_check: {error}', file=sys.stderr)
        return 2
    print('gpu_check: ' + ' '.join(command), flush=True)
    if args.dry_run:
        return 0
    args.wheels.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(command)
    if done.returncode != 0:
        print(f'gpu_check: pip download failed (exit status {done.returncode})',
              file=sys.stderr)
        return 1
    wheels = sorted(args.wheels.glob('*.whl'))
    print(f'gpu_check: {len(wheels)} wheels, {folder_size(args.wheels) / 2**20:.1f} MiB in '
          f'{args.wheels}/ -- take this folder and the repository to the GPU machine and '
          f'run scripts/gpu_check.sh there', flush=True)
    return 0


# ------------------------------------------------------------------ step 2: on the GPU
def missing_modules() -> list[str]:
    """The distributions of :data:`WHEELS` (and torchvision) whose module this Python
    cannot import."""
    names = [(name, module) for name, _, module in WHEELS] + [('torchvision', 'torchvision')]
    return [name for name, module in names if importlib.util.find_spec(module) is None]


def install_command(missing: list[str], wheels: Path, site: Path,
                    python: str = sys.executable) -> list[str]:
    """Install the wheels of ``missing`` from ``wheels`` alone into ``site``."""
    return [python, '-m', 'pip', 'install', '--no-index', '--no-deps', '--no-compile',
            '--disable-pip-version-check', '--find-links', str(wheels), '--target', str(site),
            *missing]


def child_env(site: Path | None) -> dict:
    paths = ([str(site)] if site else []) + [str(REPO)]
    previous = os.environ.get('PYTHONPATH')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths + ([previous] if previous
                                                                else [])))
    env.setdefault('HF_HUB_OFFLINE', '1')  # random weights; never a download
    env['PYTHONUNBUFFERED'] = '1'
    return env


def run_child(command: list[str], timeout: float, env: dict) -> dict:
    """Run ``command`` in a process group of its own, killed whole at ``timeout``
    (torch.compile's workers included); its output is shown as it comes."""
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    chunks: list[bytes] = []
    timed_out = False
    try:
        deadline = started + max(timeout, 1)
        selector = selectors.DefaultSelector()
        selector.register(process.stdout, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            if selector.select(timeout=min(left, 1.0)):
                chunk = os.read(process.stdout.fileno(), 65536)
                if not chunk:
                    break
                chunks.append(chunk)
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
            elif process.poll() is not None:  # ended; a worker it left holds the pipe
                break
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # at the cap, or what it left running
        except ProcessLookupError:
            pass
        process.wait()
        process.stdout.close()
    output = b''.join(chunks).decode('utf-8', 'replace')
    return {'command': command, 'exit_status': process.returncode, 'timed_out': timed_out,
            'seconds': round(time.monotonic() - started, 1),
            'output_tail': output.splitlines()[-40:]}


SUMMARY = re.compile(r'(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)')


def pytest_counts(output: str) -> dict:
    """``{'passed': 3, 'skipped': 1, ...}`` from pytest's closing line."""
    closing = [line for line in output.splitlines() if ' in ' in line and
               SUMMARY.search(line)]
    counts = {}
    for number, word in SUMMARY.findall(closing[-1] if closing else ''):
        counts['errors' if word.startswith('error') else word] = int(number)
    return counts


def plan(args: argparse.Namespace, part: Path) -> dict[str, list[str]]:
    """The child commands of this run, by stage."""
    size = ['64', '96'] if args.quick else ['416', '544']
    batches = ['1', '2'] if args.quick else ['1', '8']
    common = [sys.executable, str(REPO / 'scripts' / 'gpu_measure.py'),
              '--device', args.device, '--input-size', *size, '--batches', *batches,
              '--cameras', '2' if args.quick else '8',
              '--warmup', '1' if args.quick else '10', '--repeat', '3' if args.quick else '50',
              '--compile-mode', args.compile_mode]
    stages = {}
    if not args.skip_tests:
        stages['tests'] = [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
                           '-rs', *TESTS]
    stages['measure'] = [*common, '--json', str(part.with_suffix('.measure.json')),
                         '--what', 'trunk,multi_camera']
    if not args.quick and args.device != 'cpu':
        stages['compile'] = [*common, '--json', str(part.with_suffix('.compile.json')),
                             '--what', 'compile']
    return stages


def machine(env: dict) -> dict:
    """The GPU's name, torch, CUDA and cuDNN versions, as the children see them."""
    probe = ('import json, platform, torch; c = torch.cuda.is_available(); '
             'print(json.dumps({"python": platform.python_version(), '
             '"torch": torch.__version__, "cuda": torch.version.cuda, '
             '"cudnn": torch.backends.cudnn.version() if c else None, '
             '"gpu": torch.cuda.get_device_name() if c else None, '
             '"gpu_count": torch.cuda.device_count(), '
             '"capability": list(torch.cuda.get_device_capability()) if c else None, '
             '"cpu": platform.processor() or platform.machine()}))')
    done = subprocess.run([sys.executable, '-c', probe], env=env, capture_output=True,
                          text=True, timeout=120)
    if done.returncode != 0:
        return {'error': done.stderr.strip().splitlines()[-1:] or ['torch did not start']}
    return json.loads(done.stdout)


OUTPUTS = ('gpu-check.md', 'gpu-check.json')


def check(args: argparse.Namespace) -> int:
    started = time.monotonic()
    existing = [args.out / name for name in OUTPUTS if os.path.lexists(args.out / name)]
    if existing and not args.overwrite:
        print(f'gpu_check: {" and ".join(map(str, existing))} exist already (pass '
              f'--overwrite to replace them, or choose another --out)', file=sys.stderr)
        return 2
    missing = missing_modules()
    work = Path(tempfile.mkdtemp(prefix='gpu-check-'))
    site = work / 'site' if missing else None
    stages = plan(args, work / 'part')
    if args.dry_run:
        if missing:
            print('gpu_check: would install ' + ' '.join(install_command(missing,
                                                                          args.wheels, site)))
        else:
            print('gpu_check: nothing to install (every module imports)')
        for name, command in stages.items():
            print(f'gpu_check: {name}: ' + ' '.join(command))
        print(f'gpu_check: would write {args.out}/gpu-check.md and {args.out}/gpu-check.json')
        shutil.rmtree(work, ignore_errors=True)
        return 0
    try:
        installed = []
        if missing:
            if not args.wheels.is_dir():
                print(f'gpu_check: {", ".join(missing)} cannot be imported here and there '
                      f'is no {args.wheels}/: run scripts/gpu_check.sh --prepare on a '
                      f'machine with network first (docs/benchmarks.md)', file=sys.stderr)
                return 2
            print(f'gpu_check: installing {", ".join(missing)} from {args.wheels}/',
                  flush=True)
            done = subprocess.run(install_command(missing, args.wheels, site))
            if done.returncode != 0:
                print('gpu_check: installing from the wheels failed', file=sys.stderr)
                return 1
            installed = missing
        env = child_env(site)
        report = {'date': time.strftime('%Y-%m-%d %H:%M:%S %z'),
                  'machine': machine(env), 'installed_from_wheels': installed,
                  'quick': args.quick, 'budget_s': args.budget_s, 'stages': {}}
        parts = []
        for name, command in stages.items():
            left = args.budget_s - (time.monotonic() - started) - 5
            if left < 10:
                report['stages'][name] = {'command': command, 'skipped': 'budget spent'}
                continue
            print(f'gpu_check: {name} (at most {min(CAPS_S[name], left):.0f} s)', flush=True)
            result = run_child(command, min(CAPS_S[name], left), env)
            if name == 'tests':
                result['counts'] = pytest_counts('\n'.join(result['output_tail']))
            report['stages'][name] = result
            part = command[command.index('--json') + 1] if '--json' in command else None
            if part and Path(part).is_file():
                parts.append(json.loads(Path(part).read_text()))
        report['seconds'] = round(time.monotonic() - started, 1)
        markdown, document = write_report(args.out, report, parts)
        print(f'gpu_check: wrote {markdown} and {document} in {report["seconds"]} s',
              flush=True)
        failed = any(s.get('exit_status') not in (0, None) or s.get('timed_out')
                     for n, s in report['stages'].items() if n != 'compile')
        return 1 if failed else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    args = parse(argv)
    return prepare(args) if args.prepare else check(args)


if __name__ == '__main__':
    sys.exit(main())

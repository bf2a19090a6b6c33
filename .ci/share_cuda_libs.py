"""Hard-links the CUDA library wheels of this venv into another venv's site-packages.

Run with the main venv's Python: `python .ci/share_cuda_libs.py <other site-packages>`.

torch's PyPI wheel for Linux x86_64 depends on about 3 GB of NVIDIA library wheels
(nvidia-cublas, nvidia-cudnn-cu13, ...). Those wheels carry no Python code of a given
version: their tag is `py3-none-<platform>`, so the very same files serve any Python.
CI's Jazzy leg builds a second venv (Python 3.12) beside .venv (3.11); installing them
twice ran CI's disk out. Hard links make the second copy cost no disk, and since the
dist-info folders come along, pip sees those distributions as installed and skips them
when it resolves torch (it still installs any version torch asks for that differs).
Removing a hard link in one venv leaves the other's file alone.

Only distributions whose every wheel tag is Python-independent (`py3-none-*` or
`py2-none-*`) and whose name starts with `nvidia-` are shared; nothing else is touched.
Prints what it linked; links nothing (and says so) where the two folders are on
different file systems, so pip then installs the wheels as usual.
"""

from importlib.metadata import distributions
import os
from pathlib import Path
import sys


def python_independent(dist) -> bool:
    wheel = dist.read_text('WHEEL') or ''
    tags = [line.split(':', 1)[1].strip() for line in wheel.splitlines()
            if line.startswith('Tag:')]
    return bool(tags) and all(tag.split('-')[0] in ('py3', 'py2', 'py2.py3') and
                              tag.split('-')[1] == 'none' for tag in tags)


def main(target: Path) -> int:
    target.mkdir(parents=True, exist_ok=True)
    shared, linked_bytes = [], 0
    for dist in distributions():
        name = dist.metadata['Name'] or ''
        if not name.lower().startswith('nvidia-') or not python_independent(dist):
            continue
        files = [Path(dist.locate_file(entry)) for entry in dist.files or ()]
        root = Path(dist.locate_file(''))
        for source in files:
            if not source.is_file() or source.suffix == '.pyc':
                continue
            destination = target / source.relative_to(root)
            if destination.exists():
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, destination)
            except OSError as error:  # another file system: let pip install them
                print(f'share_cuda_libs: cannot hard-link into {target} ({error}); '
                      'pip will install the CUDA libraries itself')
                return 0
            linked_bytes += source.stat().st_size
        shared.append(f'{name}=={dist.version}')
    print(f'share_cuda_libs: {len(shared)} CUDA library wheels hard-linked '
          f'({linked_bytes / 2**30:.1f} GiB, no extra disk): {" ".join(sorted(shared))}')
    return 0


if __name__ == '__main__':
    sys.exit(main(Path(sys.argv[1])))

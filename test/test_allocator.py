"""allocator.keep_freed_memory: frames reuse their memory instead of faulting it in again.

Each case runs in a fresh interpreter (the setting is process-wide) and counts the minor
page faults of ten "frames" in a worker thread, each allocating a chain of large buffers
(90 MB at the peak, like a network's activations) and freeing them. Counts, not times:
deterministic on a shared machine.
"""

import platform
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO

pytestmark = pytest.mark.skipif(
    platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc',
    reason='the allocator settings are glibc mallopt knobs')

FRAMES = textwrap.dedent("""
    import sys
    from depthclip_ros.allocator import keep_freed_memory
    applied = keep_freed_memory() if sys.argv[1] == 'keep' else None  # first, as programs do
    import resource, threading
    import numpy as np
    result = {}

    def frame():
        live = [np.ones(n, np.float32)
                for n in (3_600_000, 7_200_000, 3_600_000, 7_200_000, 1_000_000)]
        return sum(float(a[-1]) for a in live)

    def worker():
        frame()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(10):
            frame()
        result['faults'] = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    print(applied, result['faults'])
""")
PAGES_PER_FRAME = 22_600_000 * 4 // 4096  # what one frame touches


def faults_per_frame(mode: str) -> tuple[str, float]:
    done = subprocess.run([sys.executable, '-c', FRAMES, mode], cwd=REPO, check=True,
                          capture_output=True, text=True, timeout=120)
    applied, faults = done.stdout.split()
    return applied, float(faults)


def test_frames_reuse_memory_with_the_settings_and_not_without():
    applied, kept = faults_per_frame('keep')
    assert applied == 'True'
    _, default = faults_per_frame('default')
    # With the settings a frame faults in (almost) nothing: its buffers are the last
    # frame's. glibc's defaults give pages back and fault them in again, every frame.
    assert kept <= 0.01 * PAGES_PER_FRAME, (kept, default)
    assert default > 10 * max(kept, 1.0), (kept, default)


def test_applied_once_and_the_answer_is_kept():
    check = ('from depthclip_ros.allocator import keep_freed_memory as k; '
             'print(k(), k())')
    done = subprocess.run([sys.executable, '-c', check], cwd=REPO, check=True,
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ['True', 'True']

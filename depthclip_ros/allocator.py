"""Keep freed memory for the next frame instead of handing it back to the kernel.

Every frame allocates and frees the same large buffers (the network's activations, tens
of MB, the depth image and the cloud). With glibc's defaults a process gives much of that
memory back to the kernel after each frame and takes it again on the next, one page fault
per 4 kB page (tens of thousands per frame). The worker thread makes it worse: a thread
other than the main one gets its own glibc arena, whose heaps are unmapped as soon as they
empty, whatever the trim threshold says. ``depthclip-ros bench-node`` prints the node's
page faults and kernel time per frame; docs/benchmarks.md has the figures with and
without these settings.

The settings are glibc's ``mallopt`` knobs (the same as the ``GLIBC_TUNABLES`` variables
``glibc.malloc.mmap_threshold``, ``trim_threshold`` and ``arena_max``): allocations up to
:data:`MMAP_THRESHOLD` come from the heap, at most :data:`TRIM_THRESHOLD` of free memory
stays at the heap's top, and all threads share one arena. Memory stays bounded: what is
kept is what the last frames used, and an idle process holds at most the trim threshold
beyond it (``depthclip-ros soak`` checks the resident size over thousands of frames).

Process-wide, so only the programs of this package call :func:`keep_freed_memory`, as
their first act: ``depth_node`` and ``depth_lifecycle_node`` (beside their signal
handlers), ``python -m depthclip_ros.ros.entry``, and the ``depthclip-ros`` command line.
First, because glibc fixes the arena limit when a thread first needs an arena after the
setting, and threads that numpy, torch or rclpy start on import keep the arenas they made
before it; a worker that then shares one of theirs is back to the churn. Importing the
package changes nothing. Elsewhere than glibc (musl, macOS) it does nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's upper limit for M_MMAP_THRESHOLD (64-bit)
TRIM_THRESHOLD = 256 * 1024 * 1024
ARENA_MAX = 1
# mallopt parameter numbers, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Apply the settings above to this process (once; later calls return the first
    result). True when glibc accepted all three, False where there is no glibc."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 on a refused value.
    _applied = all(mallopt(param, value) == 1 for param, value in (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (M_ARENA_MAX, ARENA_MAX)))
    return _applied


__all__ = ['keep_freed_memory', 'MMAP_THRESHOLD', 'TRIM_THRESHOLD', 'ARENA_MAX']

"""Torch's thread counts in the ``depth_node`` process: the inference worker runs torch's
OpenMP team, every other thread that touches torch runs with one thread.

The main thread loading the model and the executor thread (a lifecycle configure loads it
there) set one thread, so that only the worker's team exists. A second team (the main
thread's, left from loading) makes libgomp manage more threads than there are cores, and
it then stops its threads spinning between operations: the worker's threads sleep and are
woken hundreds of times per frame, and the network runs measurably slower than in a
process with one team (docs/benchmarks.md; ``depthclip-ros bench-node`` prints the node's
network against a bare forward).
"""

from __future__ import annotations

import threading

import torch

# Torch's thread count (OMP_NUM_THREADS, else the cores) when this module was imported,
# before anything set one: the inference worker's.
INFERENCE_THREADS = torch.get_num_threads()
_LOCK = threading.Lock()


def set_torch_threads(count: int) -> None:
    """Torch's thread count for the calling thread, fixed now. ``torch.set_num_threads``
    sets the calling thread's count and a process-wide one, and a thread adopts the
    process-wide count at its first parallel operation: a thread that only set its count
    would take whatever another thread set last. Asking for the count makes torch do that
    adoption at once, under a lock, while the count is this thread's."""
    with _LOCK:
        torch.set_num_threads(count)
        torch.get_num_threads()

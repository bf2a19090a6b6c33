"""The process's one OpenVINO ``Core``: every use of OpenVINO in this package goes through
:func:`core`, which makes it on first use and keeps it until the process ends.

Why one: OpenVINO's CPU plugin, loaded by each ``Core`` that compiles for the CPU, gives
the main thread an alternate signal stack (``sigaltstack``) and, when that ``Core`` is
destroyed, puts back the one it found. Two ``Core`` objects destroyed in the order they
were made (not the reverse) leave the thread with the first one's freed stack, and the
next signal the thread receives (Ctrl-C, the SIGTERM of ``ros2 launch``) kills the
process with a segmentation fault instead of running its handler. Measured with
openvino 2026.4.1 (docs/platform.md, "OpenVINO"); one ``Core`` for the process's life
never restores anything, so it cannot happen. openvino is imported on the first call.
"""

from __future__ import annotations

import threading

_CORE = None
_LOCK = threading.Lock()


def core():
    """The process-wide ``openvino.Core`` (made on first use, never destroyed)."""
    global _CORE
    with _LOCK:
        if _CORE is None:
            import openvino as ov
            _CORE = ov.Core()
        return _CORE

"""SIGINT/SIGTERM for ``depth_node``, from its first instruction to its exit.

Light on purpose (standard library only): it is installed before torch, rclpy and the
model are imported, so a signal at any moment ends the process quickly and quietly.
What a signal does depends on the phase the process is in:

* ``importing`` (the heavy imports): nothing to clean up yet, the process exits at once
  with code 0;
* ``starting`` (rclpy init, node creation, model loading, prompt encoding): the first
  signal raises :class:`StopRequested` in the main thread, which ``node.run`` catches to
  clean up what exists; later signals only set the flag;
* ``running`` and ``stopping``: a signal only sets the flag; the spin loop sees it, the
  worker finishes its frame and the node shuts down in order. Repeated signals (``ros2
  launch`` without a terminal sends SIGINT twice, then SIGTERM) change nothing.

No phase lets a ``KeyboardInterrupt`` escape into a traceback.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequested(BaseException):
    """Raised once in the main thread by a signal that arrives while starting up."""


class Shutdown:
    """The process-wide signal state (:data:`SHUTDOWN`)."""

    def __init__(self):
        self.requested = threading.Event()
        self.phase = 'importing'
        self._installed = False
        self._raised = False

    def install(self) -> None:
        """Take over SIGINT and SIGTERM (main thread only; idempotent)."""
        if self._installed or threading.current_thread() is not threading.main_thread():
            return
        for sig in SIGNALS:
            signal.signal(sig, self._handle)
        self._installed = True

    def _handle(self, signum, frame) -> None:
        self.requested.set()
        if self.phase == 'importing':
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        if self.phase == 'starting' and not self._raised:
            self._raised = True
            raise StopRequested()


SHUTDOWN = Shutdown()


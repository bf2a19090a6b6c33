"""What every bag run shares and that needs no ROS: the rosbag2 metadata version written,
the write error (what was left where) and stopping cleanly on SIGINT/SIGTERM. ``bag
--recover`` needs only this, ``safety`` and mcap/rosbags: it runs without ROS packages."""

from __future__ import annotations

import contextlib
from pathlib import Path
import signal
import threading
from typing import Iterator

from depthclip_ros.bags.safety import BagError
from depthclip_ros.ros.shutdown import Shutdown, SIGNALS

# rosbag2 metadata version 8 is read by Jazzy and newer; Foxglove reads the MCAP itself.
METADATA_VERSION = 8


class BagWriteError(BagError):
    """Writing failed during a run (disk full, I/O error). The message says what was left
    where: ``partial`` is the clearly named folder kept for recovery (None when nothing had
    been written); an earlier output was not touched. ``report``: the run's
    :class:`~depthclip_ros.bags.process.BagReport` so far, when there is one."""

    def __init__(self, message: str, partial: Path | None = None, report=None):
        super().__init__(message)
        self.partial = partial
        self.report = report


@contextlib.contextmanager
def stop_on_signal() -> Iterator[Shutdown]:
    """SIGINT/SIGTERM set the returned state's ``requested`` flag while the block runs; the
    loops check it between messages, so that every written frame is whole and the writer is
    drained and closed normally (at most one frame's inference later).

    The same mechanism as ``depth_node``'s (:class:`~depthclip_ros.ros.shutdown.Shutdown`,
    in its ``running`` phase: a signal only sets the flag), for the duration of the block:
    the handlers in place before are restored after it. Off the main thread no handler can
    be installed and the flag is never set."""
    stop = Shutdown()
    stop.phase = 'running'
    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS} if main else {}
    stop.install()
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

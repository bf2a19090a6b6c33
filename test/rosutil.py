"""Helpers for tests that run real rclpy (conftest has set the network-safe environment).

Two test runs on one host may draw the same random ROS domain (docs/platform.md): every test
puts its nodes in a namespace of its own (:func:`unique_namespace`) and stamps what it
sends, so it only ever hears itself. Best-effort input may be lost, above all while
discovery settles or the machine is loaded: tests resend until the condition they wait for
holds (:func:`repeat_until`), never a fixed number of times.
"""

from __future__ import annotations

from contextlib import contextmanager
import threading
import time
import uuid

import numpy as np
from sensor_msgs.msg import CameraInfo, Image


def wait_for(predicate, timeout=20.0, period=0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(period)
    return predicate()


def repeat_until(action, predicate, timeout=60.0, every=2.0) -> bool:
    """Call ``action()`` (e.g. publish best-effort messages), then wait up to ``every``
    seconds for ``predicate()``; again until it holds or ``timeout`` has passed."""
    deadline = time.monotonic() + timeout
    while True:
        action()
        left = deadline - time.monotonic()
        if wait_for(predicate, max(0.0, min(every, left))):
            return True
        if time.monotonic() >= deadline:
            return False


def unique_namespace(name: str) -> str:
    """``/<name>_<random>``: a namespace no other test, in this run or another, uses."""
    return f'/{name}_{uuid.uuid4().hex[:10]}'


class Spinner:
    """Spins an executor with the given nodes on a background thread."""

    def __init__(self, context, *nodes):
        from rclpy.executors import MultiThreadedExecutor
        self.executor = MultiThreadedExecutor(num_threads=2, context=context)
        for node in nodes:
            self.executor.add_node(node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self):
        try:
            self.executor.spin()
        except Exception:  # noqa: BLE001 - executor shut down under us
            pass

    def add(self, node):
        self.executor.add_node(node)

    def stop(self):
        self.executor.shutdown(timeout_sec=2.0)
        self.thread.join(timeout=5.0)


@contextmanager
def serving(context, rig):
    """``rig`` (a node under test and its peer: ``.node``, ``.peer``, ``.connected()``,
    ``.close()``) spun on a background executor of ``context`` for the block, its topics
    connected first; afterwards the executor stops and the rig is closed."""
    spinner = Spinner(context, rig.node, rig.peer)
    try:
        assert rig.connected()
        yield rig
    finally:
        spinner.stop()
        rig.close()


@contextmanager
def own_context():
    """An rclpy context of its own (a module-scoped fixture's), shut down afterwards."""
    import rclpy
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        rclpy.try_shutdown(context=context)


def rgb8_image(rgb: np.ndarray, frame_id='camera_optical', sec=100, nanosec=0) -> Image:
    msg = Image()
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec
    msg.height, msg.width = rgb.shape[:2]
    msg.encoding = 'rgb8'
    msg.step = rgb.shape[1] * 3
    msg.data = np.ascontiguousarray(rgb).tobytes()
    return msg


def camera_info(height, width, fx, fy, cx, cy, frame_id='camera_optical') -> CameraInfo:
    msg = CameraInfo()
    msg.header.frame_id = frame_id
    msg.height, msg.width = height, width
    msg.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    msg.p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.distortion_model = 'plumb_bob'
    msg.d = [0.0] * 5
    return msg


def start_refusal(parameters: dict, ros_args=(), namespace: str = 'start') -> tuple[str, str]:
    """Start a depth_node process (CPU) that must refuse to start: its one ``cannot
    start`` line and its whole stderr, after checking it exited 1 without a traceback."""
    from depthclip_ros.tools import node_process
    process = node_process.start_node({'device': 'cpu', **parameters},
                                      unique_namespace(namespace), ros_args=ros_args)
    try:
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 1, err
    assert 'Traceback' not in err and 'Exception' not in err, err
    [line] = [line for line in err.splitlines() if 'cannot start' in line]
    return line, err

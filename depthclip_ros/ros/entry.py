"""The ``depth_node`` process: its console scripts (``depth_node``, ``depth_lifecycle_node``,
and ``python -m depthclip_ros.ros.entry``), usage text, start, run loop and exit.

Light on purpose: importing this module imports the standard library only (not numpy,
torch or rclpy, whose imports start threads), so each entry point installs the signal
handling (:mod:`depthclip_ros.ros.shutdown`) and the allocator settings
(:mod:`depthclip_ros.allocator`) as its first acts, before the heavy imports start
threads; :func:`run` imports the node afterwards, while a signal still exits at once.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading

from depthclip_ros.allocator import keep_freed_memory  # both: the standard library only
from depthclip_ros.ros.shutdown import SHUTDOWN, StopRequested

SPIN_CHECK_S = 1.0  # the executor thread and the main thread re-check the stop flag

USAGE = """usage: depth_node [--help] [--ros-args ...]

DepthCLIP metric depth for a ROS 2 camera.

  subscribes  image (sensor_msgs/Image), camera_info (sensor_msgs/CameraInfo),
              image/compressed (sensor_msgs/CompressedImage, with image_transport
              compressed), objects/masks (label Image, with object_proposals topic)
  publishes   depth/image (32FC1 m), depth/camera_info, depth/uncertainty (32FC1 m),
              points (PointCloud2),
              depth/colormap (with publish_colormap), /diagnostics; with
              object_queries: objects/markers (MarkerArray), objects/points,
              objects/labels (mono16) + objects/camera_info,
              objects/detections (with vision_msgs)

  several cameras: -p "cameras:=[front, left]" (topics front/image, front/depth/image, ...)

  e.g. depth_node --ros-args --params-file config/depthclip.yaml \\
           -p pretrained:=none -r image:=/camera/color/image_raw \\
           -r camera_info:=/camera/color/camera_info

parameters (-p name:=value; read-only ones only at start):
"""


def usage() -> str:
    from depthclip_ros.ros.parameters import PARAMETERS
    lines = [USAGE]
    for param in PARAMETERS:
        flag = ' (read-only)' if param.read_only else ''
        lines.append(f'  {param.name} = {param.default!r}{flag}\n      {param.description}')
    return '\n'.join(lines)


def _wants_help(args: list[str]) -> bool:
    """``-h``/``--help`` among the node's own arguments (before any ``--ros-args``)."""
    own = args[:args.index('--ros-args')] if '--ros-args' in args else args
    return any(a in ('-h', '--help') for a in own)


def run(args=None, managed: bool = False) -> int:
    """Start, spin until SIGINT/SIGTERM, clean up; the exit code (1: cannot start).

    ``managed``: the lifecycle node, which starts unconfigured and loads the model when a
    lifecycle manager configures it.

    Signals are the node's own (:mod:`depthclip_ros.ros.shutdown`), never rclpy's: rclpy's
    handler shuts the context down from another thread at once, racing both the executor
    (which then raises ``RCLError`` creating its wait set) and the worker (whose publish
    fails mid-frame). While importing, a signal exits at once; while starting (rclpy,
    node, model, prompts) it stops the start and cleans up what exists; while running it
    sets a flag (:func:`_spin_until_stopped`); the worker finishes its frame (up to
    ``WORKER_JOIN_S``), and only then is the context shut down. Repeated signals change
    nothing.
    """
    argv = sys.argv[1:] if args is None else list(args)
    if _wants_help(argv):
        print(usage())
        return 0
    SHUTDOWN.install()
    keep_freed_memory()  # a no-op when the entry point did it already (allocator.py)
    # The heavy imports, in the 'importing' phase (a signal exits at once).
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.signals import SignalHandlerOptions

    from depthclip_ros.engine.weights import import_backend, WeightsError
    from depthclip_ros.ros.hints import with_hint
    from depthclip_ros.ros.node import DepthLifecycleNode, DepthNode
    from depthclip_ros.ros.torch_threads import set_torch_threads
    set_torch_threads(1)  # only the inference worker runs torch's team (torch_threads.py)
    import_backend()  # the last imports, while a signal still exits at once
    SHUTDOWN.phase = 'starting'
    node = None
    code = 0
    try:
        _init_rclpy(rclpy, args, SignalHandlerOptions.NO)
        if managed:
            node = DepthLifecycleNode()
        else:
            node = DepthNode()
            node.load()
        SHUTDOWN.phase = 'running'
        _spin_until_stopped(node)
    except (StopRequested, KeyboardInterrupt, ExternalShutdownException):
        pass
    except (WeightsError, ValueError) as error:
        message = f'depth_node cannot start: {with_hint(error)}'
        if node is not None:
            node.get_logger().fatal(message)
        else:
            print(message, file=sys.stderr)
        code = 1
    finally:
        SHUTDOWN.phase = 'stopping'  # from here on a signal only sets the flag
        try:
            if node is not None:
                node.stop()
                node.destroy_node()
            rclpy.try_shutdown()
        except StopRequested:  # raised just before the phase changed
            pass
    return code


def _init_rclpy(rclpy, args, signal_options) -> None:
    """``rclpy.init``; ROS arguments that rcl cannot parse (``-p 'cameras:=[{x}]'``, a
    params file that is no YAML) raise ``ValueError`` in one line, not rcl's traceback."""
    from rclpy._rclpy_pybind11 import RCLError
    try:
        rclpy.init(args=args, signal_handler_options=signal_options)
    except RCLError as error:  # rcl's text, less its C source locations
        text = re.sub(r', at [^,]+:\d+', '', ' '.join(str(error).split()))
        raise ValueError(f'the ROS arguments are refused: {text}') from None


def _spin_until_stopped(node) -> None:
    """Run ``node``'s callbacks until a signal sets the stop flag or the context ends.

    The executor blocks in its own thread, woken only by work (a message, a timer, a
    service call) or by a guard condition the main thread triggers on a signal. The main
    thread waits on the flag, where Python runs signal handlers at once. Polling the
    executor from the main thread instead (a short ``spin_once`` timeout, so that a signal
    handler could run between calls) cost the node about 2% of a core while idle and took
    the GIL and a core from inference 20 times a second. An exception in a callback ends
    the loop and is raised here, as before.
    """
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    from depthclip_ros.ros.torch_threads import set_torch_threads
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    wake = node.create_guard_condition(lambda: None)
    failure: list[BaseException] = []
    leave = threading.Event()  # the main thread is leaving (on a signal, or an exception)

    def spin() -> None:
        set_torch_threads(1)  # a lifecycle configure loads the model here
        try:
            while not leave.is_set() and rclpy.ok():
                executor.spin_once(timeout_sec=SPIN_CHECK_S)
        except ExternalShutdownException:
            pass
        except BaseException as error:  # noqa: B902 - handed to the main thread
            failure.append(error)

    spinner = threading.Thread(target=spin, name='depthclip_executor', daemon=True)
    spinner.start()
    try:
        while spinner.is_alive() and not SHUTDOWN.requested.wait(SPIN_CHECK_S):
            pass
    finally:
        leave.set()
        wake.trigger()
        spinner.join()  # a callback in progress (a lifecycle transition) completes
        node.destroy_guard_condition(wake)
        executor.shutdown(timeout_sec=0)
    if failure:
        raise failure[0]


def main(args=None, managed: bool = False) -> None:
    """The ``depth_node`` executable (``depth_lifecycle_node`` with ``managed``):
    :func:`run`, then exit at once.

    Everything that needs closing (worker thread, node, DDS participant) is closed by
    ``run``; the interpreter's own teardown of torch and friends would add about a second
    (docs/benchmarks.md) to a shutdown that must finish within 2 s, so it is skipped.
    """
    code = run(args, managed)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def depth_node() -> None:
    """The ``depth_node`` console script: signals handled and the allocator set
    (:mod:`depthclip_ros.allocator`) before the heavy imports start threads."""
    SHUTDOWN.install()
    keep_freed_memory()
    main()


def depth_lifecycle_node() -> None:
    """The ``depth_lifecycle_node`` console script (the managed node)."""
    SHUTDOWN.install()
    keep_freed_memory()
    main(managed=True)


if __name__ == '__main__':  # python -m depthclip_ros.ros.entry
    depth_node()

"""``depthclip-ros bench-node``: end-to-end latency of depth_node as its own process.

Starts ``python -m depthclip_ros.ros.entry`` with the given model options, publishes a camera
frame and its CameraInfo, and times frame-in to depth-and-cloud-out, one frame at a time
(closed loop) and then as a stream. Before each closed-loop frame it times one bare
network forward of the same engine in this process, so that the overhead of everything
around the network (decode, messages, DDS) is a ratio of two series from the same minutes;
the node's own stage medians (/diagnostics) and its page faults and CPU per frame say
where that overhead goes.

Traffic stays on this machine: discovery is limited to localhost in a random domain and
Fast DDS uses the shipped loopback profile (large shared-memory segment). The node and
this peer share a namespace of their own, so that another run that drew the same domain
cannot answer this run's frames.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import threading
import time

import numpy as np

from depthclip_ros.tools.bench.options import IMAGE_SIZE_HELP, image_size_problem, range_problem
from depthclip_ros.tools.common import (
    add_model_arguments,
    announce,
    load_engine,
    model_parameters,
    ToolExit,
)

MAX_FRAMES = 10000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--image-size', type=int, nargs=2, default=(480, 640),
                        metavar=('H', 'W'), help=IMAGE_SIZE_HELP)
    parser.add_argument('--frames', type=int, default=10,
                        help=f'timed frames (closed loop), 1..{MAX_FRAMES} (default 10)')
    parser.add_argument('--stream-hz', type=float, default=30.0,
                        help='camera rate of the streaming phase, (0, 1000] (default 30)')
    parser.add_argument('--stream-seconds', type=float, default=5.0,
                        help='length of the streaming phase, (0, 3600] s (default 5)')
    parser.add_argument('--timeout', type=float, default=300.0,
                        help='give up after this many seconds, > 0 (default 300)')
    add_model_arguments(parser)
    parser.set_defaults(pretrained='none')


def options_problem(args: argparse.Namespace) -> str | None:
    return (image_size_problem(args.image_size)
            or range_problem('frames', args.frames, 1, MAX_FRAMES)
            or range_problem('stream-hz', args.stream_hz, 0, 1000, low_open=True)
            or range_problem('stream-seconds', args.stream_seconds, 0, 3600, low_open=True)
            or range_problem('timeout', args.timeout, 0, math.inf, low_open=True))


def run(args: argparse.Namespace) -> int:
    problem = options_problem(args)
    if problem:  # before anything is loaded or started
        raise ToolExit(f'depthclip-ros bench-node: {problem}', 2)
    announce('depthclip-ros bench-node', 'starting: torch and ROS 2 load first (a few '
             'seconds), then the model, then the node as its own process')
    # Imported here, not with the module: `depthclip-ros bench-node --help` needs no torch.
    from depthclip_ros.tools.bench.common import device_description
    from depthclip_ros.tools.bench.stages import time_engine
    from depthclip_ros.tools.node_process import (
        isolate_ros_traffic,
        node_statuses,
        private_namespace,
        start_node,
        stop_node,
    )

    isolate_ros_traffic()
    height, width = args.image_size
    engine = load_engine(args)
    time_engine(engine, height, width, warmup=2, repeat=1)
    device = device_description(engine)

    from diagnostic_msgs.msg import DiagnosticArray
    import rclpy
    from rclpy.qos import qos_profile_sensor_data, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2
    from std_msgs.msg import Header

    from depthclip_ros.geometry import Intrinsics
    from depthclip_ros.ros.messages import camera_info_for, rgb_image

    namespace = private_namespace('bench_node')
    node = start_node(model_parameters(args), namespace)
    rclpy.init()
    peer = rclpy.create_node('bench_node_peer', namespace=namespace)
    arrived: dict[int, dict[str, float]] = {}
    lock = threading.Condition()  # notified by each output: no polling beside the node

    def on_output(kind):
        def callback(msg):
            with lock:
                arrived.setdefault(msg.header.stamp.nanosec, {})[kind] = time.perf_counter()
                lock.notify_all()
        return callback

    diagnostics: dict[str, str] = {}

    def on_diagnostics(msg):
        depth = node_statuses(msg, namespace).get('depth')  # this run's node only
        if depth is not None:
            with lock:
                diagnostics.clear()
                diagnostics.update(depth)
                diagnostics['_received'] = time.monotonic()
                lock.notify_all()

    reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    peer.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, 10)
    peer.create_subscription(Image, 'depth/image', on_output('depth'), reliable)
    peer.create_subscription(PointCloud2, 'points', on_output('points'), reliable)
    image_pub = peer.create_publisher(Image, 'image', qos_profile_sensor_data)
    info_pub = peer.create_publisher(CameraInfo, 'camera_info', qos_profile_sensor_data)
    spin = threading.Thread(target=rclpy.spin, args=(peer,), daemon=True)
    spin.start()

    rng = np.random.default_rng(1)
    header = Header(frame_id='camera_optical_frame')
    frame = rgb_image(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), header)
    focal = 0.96 * width
    info = camera_info_for(Intrinsics(focal, focal, width / 2, height / 2, width, height),
                           header)
    deadline = time.monotonic() + args.timeout
    sent: dict[int, float] = {}

    def send(index: int) -> None:
        frame.header.stamp.sec, frame.header.stamp.nanosec = 1, index
        info.header.stamp = frame.header.stamp
        info_pub.publish(info)
        sent[index] = time.perf_counter()
        image_pub.publish(frame)

    def complete(index: int) -> bool:
        with lock:
            return len(arrived.get(index, {})) == 2

    try:
        index = 0
        # Warm-up: resend until the node answers (discovery, model load, first frames).
        while not any(complete(i) for i in range(index)) and time.monotonic() < deadline:
            if node.poll() is not None:
                raise SystemExit(f'depth_node exited: {node.stderr.read()}')
            send(index)
            index += 1
            time.sleep(1.0)
        latencies, bare = [], []
        usage_before = process_usage(node.pid)
        for _ in range(args.frames + 2):
            # One bare forward here while the node idles, then one frame through the node
            # while this process idles: both series see the same minutes of the machine.
            bare.append(time_engine(engine, height, width, warmup=0, repeat=1)['network'])
            index += 1
            send(index)
            with lock:  # sleeps until an output arrives (a busy wait would take a core)
                lock.wait_for(lambda i=index: len(arrived.get(i, {})) == 2,
                              max(0.0, deadline - time.monotonic()))
            if not complete(index):
                break
            latencies.append((max(arrived[index].values()) - sent[index]) * 1e3)
        usage = process_usage(node.pid)
        if usage and usage_before and latencies:
            usage = {k: (usage[k] - usage_before[k]) / len(latencies) for k in usage}
        latencies, bare = latencies[2:], bare[2:len(latencies)]
        network_ms = statistics.median(bare) if bare else float('nan')
        # The node's own view of the same frames: its next /diagnostics.
        since = time.monotonic()
        with lock:
            lock.wait_for(lambda: diagnostics.get('_received', 0.0) > since, 3.0)
            node_view = dict(diagnostics)
        # Streaming at the camera rate: the node keeps the newest frame, so latency stays
        # bounded while frames are dropped.
        first = index + 1
        stop_at = time.monotonic() + args.stream_seconds
        while time.monotonic() < stop_at:
            index += 1
            send(index)
            time.sleep(1.0 / args.stream_hz)
        time.sleep(2 * network_ms / 1e3 + 0.5)
        streamed = [(max(arrived[i].values()) - sent[i]) * 1e3
                    for i in range(first, index + 1) if complete(i)]
    finally:
        stop_node(node)
        peer.destroy_node()
        rclpy.try_shutdown()
    if not latencies:
        raise SystemExit('no frame came back in time')
    median = statistics.median(latencies)
    print(f'device: {device}; {args.model} {args.feature_mode} mode; camera {height}x{width} '
          f'-> network {args.input_size[0]}x{args.input_size[1]}; depth + xyz cloud'
          + ('; random weights (cost is the same)' if args.pretrained == 'none' else ''))
    print(f'bare network forward (this process, median of {len(bare)}, each just before '
          f'a node frame): {network_ms:8.1f} ms')
    print(f'node frame-in -> depth+cloud-out (median of {len(latencies)}): {median:8.1f} ms'
          f'  (overhead {median - network_ms:+.1f} ms, '
          f'{100 * (median - network_ms) / network_ms:+.1f}% of the network)')
    print(f'ratio node end-to-end / bare network: {median / network_ms:.2f} '
          f'(goal <= 1.10)')
    report_breakdown(node_view, usage, median, network_ms)
    if streamed:
        print(f'streaming {args.stream_hz:g} Hz for {args.stream_seconds:g} s: '
              f'{len(streamed)} of {index - first + 1} frames processed '
              f'({len(streamed) / args.stream_seconds:.1f} frames/s), latency median '
              f'{statistics.median(streamed):.1f} ms, max {max(streamed):.1f} ms')
    return 0


AROUND_NETWORK = ('decode', 'preprocess', 'head', 'upsample', 'messages', 'cloud', 'publish')


def process_usage(pid: int) -> dict[str, float] | None:
    """Minor page faults and CPU milliseconds (user, system) of process ``pid`` so far,
    from ``/proc`` (None where there is none)."""
    try:
        with open(f'/proc/{pid}/stat', encoding='ascii') as stat:
            fields = stat.read().rsplit(')', 1)[1].split()
    except OSError:
        return None
    tick_ms = 1e3 / os.sysconf('SC_CLK_TCK')
    return {'page faults': float(fields[7]), 'user CPU ms': int(fields[11]) * tick_ms,
            'system CPU ms': int(fields[12]) * tick_ms}


def report_breakdown(node_view: dict[str, str], usage: dict[str, float] | None,
                     measured_ms: float, bare_ms: float) -> None:
    """Where the node's end-to-end time goes, from its own stage medians (/diagnostics,
    the recent frames, mostly the timed ones) against this run's outside measurement."""
    def stage(name):
        value = node_view.get(f'stage {name} median (ms)')
        return float(value) if value is not None else None

    network = stage('network')
    inside = node_view.get('latency end-to-end median (ms)')
    if network is None or inside is None:
        print('the node reported no stage timings (no /diagnostics in time)')
        return
    inside = float(inside)
    around = {name: stage(name) for name in AROUND_NETWORK if stage(name) is not None}
    print("where the time goes (the node's own medians from /diagnostics):")
    print(f'  network inside the node        {network:8.1f} ms  '
          f'({network / bare_ms:.2f} x the bare forward)')
    print(f'  node stages around the network {sum(around.values()):8.1f} ms  ('
          + ', '.join(f'{name} {ms:.1f}' for name, ms in around.items()) + ')')
    print(f'  node callback -> published     {inside:8.1f} ms')
    print(f'  DDS in + out, hand-over        {measured_ms - inside:8.1f} ms  '
          f"(frame-in -> depth+cloud-out minus the node's own latency)")
    if usage:
        print('node process per frame (closed loop): '
              + ', '.join(f'{name} {value:.0f}' for name, value in usage.items()))

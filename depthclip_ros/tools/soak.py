"""``depthclip-ros soak``: depth_node as its own process under a long stream.

Publishes ``--frames`` small camera frames faster than the node can process them (so
frames are dropped, newest wins), every ``--bad-every``-th one malformed (so frames are
rejected), and samples the node process's memory (RSS), threads and open file
descriptors after a warm-up and at the end, its end-to-end latency and its frame counts
(``/diagnostics``). Finally it sends SIGINT (or ``--stop-signal TERM``) while frames are
still streaming in and times the exit. Exits 1 when a check fails:

* RSS growth after warm-up < ``--max-rss-growth-mb`` (default 20 MB);
* no growth in threads or file descriptors;
* received = processed + dropped + rejected + failed (+ skipped with no subscribers);
* exit code 0 within 2 s of the signal, no traceback, no error logged while stopping.

Traffic stays on this machine: discovery limited to localhost in a random domain, the
shipped loopback Fast DDS profile. The node and the camera live in a namespace of their
own, and only that node's diagnostics are read: another run on this host that drew the
same domain cannot mix its frames or counts into this one.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
import signal
import subprocess
import threading
import time

from depthclip_ros.tools.common import announce, LOAD_TIME_HINT
from depthclip_ros.tools.node_process import (
    isolate_ros_traffic,
    node_statuses,
    private_namespace,
    start_node,
)

PROG = 'depthclip-ros soak'
COUNT_KEYS = ('received', 'processed', 'dropped', 'rejected', 'failed',
              'skipped_no_subscribers')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--frames', type=int, default=3000,
                        help='frames streamed (default 3000; more than --warmup-frames)')
    parser.add_argument('--image-size', type=int, nargs=2, default=(48, 64),
                        metavar=('H', 'W'), help='camera image size (default 48 64)')
    parser.add_argument('--input-size', type=int, nargs=2, default=(64, 64),
                        metavar=('H', 'W'), help='network input (default 64 64)')
    parser.add_argument('--rate-hz', type=float, default=200.0, help='camera rate')
    parser.add_argument('--bad-every', type=int, default=50,
                        help='every n-th frame is malformed (0 = none)')
    parser.add_argument('--warmup-frames', type=int, default=300,
                        help='frames before the first sample (default 300)')
    parser.add_argument('--max-rss-growth-mb', type=float, default=20.0,
                        help='largest RSS growth after the warm-up that passes (default 20)')
    parser.add_argument('--timeout', type=float, default=600.0,
                        help='seconds for the whole stream, the start included (default 600)')
    parser.add_argument('--device', default='cpu', help="the node's device (default cpu)")
    parser.add_argument('--stop-signal', choices=('INT', 'TERM'), default='INT',
                        help='signal that ends the node at the end (default INT)')


def process_sample(pid: int) -> dict[str, float]:
    """RSS (MB), threads and open file descriptors of process ``pid`` (Linux /proc)."""
    status = Path(f'/proc/{pid}/status').read_text()
    values = dict(line.split(':', 1) for line in status.splitlines() if ':' in line)
    return {'rss_mb': int(values['VmRSS'].split()[0]) / 1024,
            'threads': int(values['Threads']),
            'fds': len(os.listdir(f'/proc/{pid}/fd'))}


def run(args: argparse.Namespace) -> int:
    from depthclip_ros.tools.progress import Progress
    announce(PROG, f'starting depth_node ({args.device}, random weights) as its own process '
                   f'and waiting for its first depth image (it loads its model: '
                   f'{LOAD_TIME_HINT})')
    isolate_ros_traffic()
    from builtin_interfaces.msg import Time
    from diagnostic_msgs.msg import DiagnosticArray
    import numpy as np
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Header

    from depthclip_ros.geometry import Intrinsics
    from depthclip_ros.ros.messages import camera_info_for, rgb_image

    height, width = args.image_size
    namespace = private_namespace('soak')
    node = start_node({'pretrained': 'none', 'device': args.device,
                       'input_size': list(args.input_size)}, namespace)
    stderr_lines: list[str] = []
    threading.Thread(target=lambda: stderr_lines.extend(node.stderr), daemon=True).start()

    context = rclpy.Context()
    rclpy.init(context=context)
    peer = rclpy.create_node('soak_camera', namespace=namespace, context=context)
    state = {'depth': 0, 'diag': {}}

    def on_depth(msg):
        state['depth'] += 1

    def on_diagnostics(msg):
        depth = node_statuses(msg, namespace).get('depth')  # this run's node only
        if depth is not None:
            state['diag'] = depth

    reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    peer.create_subscription(Image, 'depth/image', on_depth, reliable)
    peer.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, 10)
    image_pub = peer.create_publisher(Image, 'image', qos_profile_sensor_data)
    info_pub = peer.create_publisher(CameraInfo, 'camera_info', qos_profile_sensor_data)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(peer)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()

    rng = np.random.default_rng(0)
    header = Header(frame_id='camera_optical_frame')
    good = rgb_image(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), header)
    bad = Image(height=height, width=width, encoding='rgb8', step=width * 3, header=header)
    bad.data = bytes(17)  # shorter than step x height
    focal = 0.9 * width
    info = camera_info_for(Intrinsics(focal, focal, width / 2, height / 2, width, height),
                           header)
    deadline = time.monotonic() + args.timeout
    failures: list[str] = []
    samples = {}

    def counts() -> dict[str, int]:
        diag = state['diag']
        return {k: int(diag.get(f'frames {k}', 0)) for k in COUNT_KEYS}

    def latency() -> float:
        return float(state['diag'].get('latency end-to-end median (ms)', 'nan'))

    try:
        while state['depth'] == 0 and time.monotonic() < deadline:  # discovery, model load
            if node.poll() is not None:
                raise SystemExit('depth_node exited: ' + ''.join(stderr_lines))
            info_pub.publish(info)
            image_pub.publish(good)
            time.sleep(0.5)
        announce(PROG, f'depth_node answers; streaming {args.frames} frames at '
                       f'{args.rate_hz:g} Hz')
        progress = Progress('soak', 'frame', args.frames)
        period = 1.0 / args.rate_hz
        sent = 0
        next_time = time.monotonic()
        for index in range(args.frames):
            if time.monotonic() > deadline:
                failures.append('timed out while streaming')
                break
            stamp = Time(sec=1 + index // 1000, nanosec=(index % 1000) * 1_000_000)
            message = bad if args.bad_every and index % args.bad_every == \
                args.bad_every - 1 else good
            message.header.stamp = stamp
            info.header.stamp = stamp
            info_pub.publish(info)
            image_pub.publish(message)
            sent += 1
            if index == args.warmup_frames:
                time.sleep(1.5)  # let diagnostics report the warm-up latency
                samples['warm'] = {**process_sample(node.pid), 'latency_ms': latency()}
            next_time += period
            progress.step()
            time.sleep(max(0.0, next_time - time.monotonic()))
        progress.close()
        announce(PROG, 'waiting until the node has accounted for every frame it received '
                       '(up to 30 s)')
        # Settle: every received frame is accounted for once the node is idle.
        settle_until = time.monotonic() + 30
        while time.monotonic() < settle_until:
            time.sleep(1.2)
            c = counts()
            if c['received'] and c['received'] == sum(c[k] for k in COUNT_KEYS[1:]):
                break
        samples['end'] = {**process_sample(node.pid), 'latency_ms': latency()}
        final = counts()
        # Shutdown while frames are still arriving (an inference is likely running).
        for _ in range(20):
            image_pub.publish(good)
            time.sleep(period)
        announce(PROG, f'stopping depth_node with SIG{args.stop_signal} while frames still '
                       f'arrive')
        before_signal = len(stderr_lines)
        started = time.monotonic()
        node.send_signal(getattr(signal, f'SIG{args.stop_signal}'))
        try:
            code = node.wait(timeout=10)
        except subprocess.TimeoutExpired:
            node.kill()
            code = None
        exit_s = time.monotonic() - started
    finally:
        if node.poll() is None:
            node.kill()
        executor.shutdown()
        spin.join(timeout=5)
        peer.destroy_node()
        rclpy.try_shutdown(context=context)

    warm, end = samples.get('warm'), samples['end']
    print(f'soak: depth_node process, {args.device}, random weights (cost only), camera '
          f'{height}x{width} at {args.rate_hz:g} Hz, network {args.input_size[0]}x'
          f'{args.input_size[1]}, {sent} frames sent (every {args.bad_every}th malformed)')
    print('counts: ' + ', '.join(f'{k} {v}' for k, v in final.items()))
    accounted = sum(final[k] for k in COUNT_KEYS[1:])
    if final['received'] != accounted or final['received'] == 0:
        failures.append(f'received {final["received"]} != processed + dropped + rejected + '
                        f'failed + skipped {accounted}')
    if args.bad_every and final['rejected'] == 0:
        failures.append('no malformed frame was rejected')
    if final['failed']:
        failures.append(f'{final["failed"]} frames failed')
    if warm:
        growth = end['rss_mb'] - warm['rss_mb']
        print(f'after warm-up ({args.warmup_frames} frames) -> end: RSS {warm["rss_mb"]:.1f} -> '
              f'{end["rss_mb"]:.1f} MB ({growth:+.1f}), threads {warm["threads"]} -> '
              f'{end["threads"]}, fds {warm["fds"]} -> {end["fds"]}, latency median '
              f'{warm["latency_ms"]:.1f} -> {end["latency_ms"]:.1f} ms')
        if growth >= args.max_rss_growth_mb:
            failures.append(f'RSS grew {growth:.1f} MB after warm-up')
        if end['threads'] > warm['threads']:
            failures.append(f'threads grew {warm["threads"]} -> {end["threads"]}')
        if end['fds'] > warm['fds']:
            failures.append(f'file descriptors grew {warm["fds"]} -> {end["fds"]}')
    else:
        failures.append('no warm-up sample (fewer frames than --warmup-frames)')
    print(f'SIG{args.stop_signal} while streaming: exit code {code} after {exit_s:.2f} s')
    if code != 0 or exit_s > 2.0:
        failures.append(f'exit code {code} after {exit_s:.2f} s (want 0 within 2 s)')
    failures += stderr_failures(stderr_lines, before_signal)
    for failure in failures:
        print(f'FAILED: {failure}')
    print('soak: ' + ('FAILED' if failures else 'all checks passed'))
    return 1 if failures else 0


def stderr_failures(lines: list[str], before_signal: int) -> list[str]:
    """What the node's stderr ``lines`` show went wrong: a traceback anywhere, an exception
    rclpy dropped unseen (a callback's task that failed with nobody to see it), an
    ``[ERROR]`` logged after the signal (``lines[before_signal:]``)."""
    failures = []
    if any('Traceback' in line for line in lines):
        failures.append('traceback on stderr: ' + ''.join(lines)[-2000:])
    unseen = [line for line in lines if 'was never retrieved' in line]  # rclpy's words
    if unseen:
        failures.append('exceptions never retrieved: ' + ''.join(unseen)[-2000:])
    errors_at_exit = [line for line in lines[before_signal:] if '[ERROR]' in line]
    if errors_at_exit:
        failures.append('errors logged while stopping: ' + ''.join(errors_at_exit)[-2000:])
    return failures

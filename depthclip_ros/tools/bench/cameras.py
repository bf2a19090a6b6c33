"""``depthclip-ros bench-cameras``: several cameras into one depth_node process.

Starts ``python -m depthclip_ros.ros.entry`` with ``cameras: [cam0, ..., camN-1]`` and the given
model options, publishes every camera's frames at its rate from one scheduling loop (the
cameras evenly out of phase, every frame stamped uniquely), and times each frame from its
publication to the arrival of both its ``depth/image`` and its ``points``. The node keeps
each camera's newest waiting frame and answers all waiting frames in one batched forward,
so a node slower than the cameras drops frames instead of queueing them: the table shows
what is answered, how fast, and whether the latency stays flat (the last third of the run
against the first third).

After a warm-up (frames resent until every camera has had an answer), frames are sent for
``--seconds``; frames still in flight when the sending stops are waited for.

Traffic stays on this machine: discovery is limited to localhost in a random domain, Fast
DDS uses the shipped loopback profile, and the node and this peer share a namespace of
their own (as ``bench-node``).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
import struct
import sys
import threading
import time

import numpy as np

from depthclip_ros.io.outputs import check_report_file, write_text_whole
from depthclip_ros.ros.streams import MAX_CAMERAS
from depthclip_ros.tools.common import (
    add_model_arguments,
    announce,
    check_model_options,
    model_parameters,
    option_problem,
    scene_settings,
)
from depthclip_ros.tools.node_process import (
    isolate_ros_traffic,
    node_statuses,
    private_namespace,
    start_node,
    stop_node,
)

BACKLOG_RATIO = 1.5  # last-third p50 / first-third p50 above this: latency is growing
WARMUP_PERIOD_S = 0.5  # warm-up: every camera gets a frame this often until all answered
MAX_DRAIN_S = 30.0  # after sending: wait at most this long for frames still in flight
BACKLOG_MIN_FRAMES = 5  # answered frames each third needs for the check
PROBLEM_MARKERS = ('Traceback', '[ERROR]', 'Exception', '[WARN]')
# Expected on the node's stderr: the PyPI ROS wheels' Fast DDS deprecation notice for the
# profile variable, and the random-weights warning.
BENIGN_MARKERS = ('FASTRTPS_DEFAULT_PROFILES_FILE', 'RANDOM WEIGHTS')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--cameras', type=int, default=3,
                        help=f'number of cameras (1..{MAX_CAMERAS}, default 3)')
    parser.add_argument('--rate-hz', type=float, default=30.0,
                        help='frames per second of each camera (default 30)')
    parser.add_argument('--seconds', type=float, default=10.0,
                        help='measured sending time after the warm-up (default 10)')
    parser.add_argument('--image-size', type=int, nargs=2, default=(480, 640),
                        metavar=('H', 'W'), help='camera frame size, rgb8 (default 480 640)')
    parser.add_argument('--timeout', type=float, default=300.0,
                        help='give up the warm-up after (s, default 300)')
    parser.add_argument('--json', type=Path, metavar='FILE', help='write the table as JSON '
                        '(an existing file is refused unless --overwrite)')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace an existing --json file')
    add_model_arguments(parser)
    parser.set_defaults(pretrained='none')


def _problem(args: argparse.Namespace) -> str | None:
    if not 1 <= args.cameras <= MAX_CAMERAS:
        return f'--cameras must be in 1..{MAX_CAMERAS}, got {args.cameras}'
    if not (math.isfinite(args.rate_hz) and 0 < args.rate_hz <= 1000):
        return f'--rate-hz must be in (0, 1000], got {args.rate_hz}'
    if not (math.isfinite(args.seconds) and 0 < args.seconds <= 3600):
        return f'--seconds must be in (0, 3600], got {args.seconds}'
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        return f'--timeout must be > 0, got {args.timeout}'
    height, width = args.image_size
    if not (1 <= height <= 8192 and 1 <= width <= 8192):
        return f'--image-size must be 1..8192 px per side, got {height} {width}'
    try:
        check_model_options(args)
    except ValueError as error:
        return option_problem(error, args)
    return None


def node_parameters(args: argparse.Namespace, cameras: list[str]) -> dict:
    """The node's parameters: the cameras and the model and head options."""
    parameters = {**model_parameters(args), 'flip_average': args.flip_average,
                  'canonical_focal_px': args.canonical_focal_px,
                  'depth_bins_m': list(args.depth_bins_m),
                  'distance_prompts': list(args.distance_prompts),
                  'temperature': args.temperature, 'cameras': cameras}
    for name, value in scene_settings(args).items():
        parameters[name] = list(value) if isinstance(value, tuple) else value
    return parameters


def stamp_of(raw: bytes) -> tuple[int, int] | None:
    """``(sec, nanosec)`` of a serialized message that starts with a std_msgs/Header (Image,
    PointCloud2): the CDR encapsulation (2 bytes kind, odd = little endian, 2 bytes
    options), then the stamp's int32 sec and uint32 nanosec."""
    if len(raw) < 12:
        return None
    return struct.unpack_from('<iI' if raw[1] & 1 else '>iI', raw, 4)


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarize(sent: int, latencies: list[float], seconds: float) -> dict:
    return {'sent': sent, 'answered': len(latencies),
            'output_hz': len(latencies) / seconds, 'dropped': sent - len(latencies),
            'p50_ms': percentile(latencies, 50), 'p95_ms': percentile(latencies, 95)}


def backlog_check(timed: list[tuple[float, float]], start: float, seconds: float) -> dict:
    """p50 latency of the frames sent in the last third of the run against the first
    third; ``timed`` holds (send time, latency ms)."""
    first = [ms for at, ms in timed if at - start < seconds / 3]
    last = [ms for at, ms in timed if at - start >= 2 * seconds / 3]
    first_p50, last_p50 = percentile(first, 50), percentile(last, 50)
    enough = min(len(first), len(last)) >= BACKLOG_MIN_FRAMES
    ratio = last_p50 / first_p50 if enough and first_p50 else None
    return {'first_third_p50_ms': first_p50, 'last_third_p50_ms': last_p50,
            'first_third_frames': len(first), 'last_third_frames': len(last),
            'ratio': ratio, 'growing': None if ratio is None else ratio > BACKLOG_RATIO}


def _ms(value: float | None) -> str:
    return f'{value:8.1f}' if value is not None else f'{"-":>8}'


def format_table(rows: list[dict], total: dict) -> str:
    lines = [f'{"camera":<8} {"sent":>6} {"answered":>8} {"out Hz":>7} {"dropped":>7} '
             f'{"p50 ms":>8} {"p95 ms":>8}']
    for row in [*rows, {'camera': 'total', **total}]:
        lines.append(f'{row["camera"]:<8} {row["sent"]:>6} {row["answered"]:>8} '
                     f'{row["output_hz"]:>7.2f} {row["dropped"]:>7} {_ms(row["p50_ms"])} '
                     f'{_ms(row["p95_ms"])}')
    return '\n'.join(lines)


def node_counts(diagnostics: dict[str, dict[str, str]], camera: str) -> dict[str, int]:
    """The node's own frame counts for ``camera`` from its latest /diagnostics."""
    values = diagnostics.get(camera, {})
    return {key[len('frames '):]: int(value) for key, value in values.items()
            if key.startswith('frames ') and value.isdigit()}


def run(args: argparse.Namespace) -> int:
    problem = _problem(args)
    if not problem and args.json is not None:
        try:  # before anything starts: never replace a file unasked, never fail at the end
            check_report_file(args.json, args.overwrite)
        except ValueError as error:
            problem = str(error)
    if problem:
        print(f'depthclip-ros bench-cameras: {problem}', file=sys.stderr)
        return 2
    isolate_ros_traffic()
    announce('depthclip-ros bench-cameras', f'starting depth_node with {args.cameras} '
             f'cameras as its own process (it loads its model first)')
    result = measure(args)
    report(args, result)
    return 0 if result['total']['answered'] else 1


def measure(args: argparse.Namespace) -> dict:
    """Start the node and the peer, warm up, stream, drain, stop the node (always): the
    per-camera rows, the total, the backlog check, the device and the node's stderr."""
    from diagnostic_msgs.msg import DiagnosticArray
    import rclpy
    from rclpy.qos import qos_profile_sensor_data, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2
    from std_msgs.msg import Header

    from depthclip_ros.geometry import Intrinsics
    from depthclip_ros.ros.messages import camera_info_for, rgb_image

    height, width = args.image_size
    cameras = [f'cam{i}' for i in range(args.cameras)]
    namespace = private_namespace('bench_cameras')
    lock = threading.Lock()
    # arrived[camera][index] = {'depth': t, 'points': t}
    arrived: list[dict[int, dict[str, float]]] = [{} for _ in cameras]
    last_arrival = [time.perf_counter()]
    diagnostics: dict[str, dict[str, str]] = {}  # camera (or 'depth') -> latest values
    device_seen: list[str] = []

    def on_output(camera: int, kind: str):
        def callback(raw: bytes) -> None:
            now = time.perf_counter()
            stamp = stamp_of(raw)
            if stamp is None or stamp[0] != 1:
                return
            with lock:
                arrived[camera].setdefault(stamp[1], {})[kind] = now
                last_arrival[0] = now
        return callback

    def on_diagnostics(msg) -> None:
        for part, values in node_statuses(msg, namespace).items():  # this run's node only
            key = part[len('camera '):] if part.startswith('camera ') else part
            with lock:
                diagnostics[key] = values
                if part == 'depth' and values.get('device'):
                    device_seen[:] = [values['device']]

    rng = np.random.default_rng(1)
    focal = 0.96 * width
    intrinsics = Intrinsics(focal, focal, width / 2, height / 2, width, height)
    frames, infos = [], []
    for camera in cameras:
        header = Header(frame_id=f'{camera}_optical_frame')
        frames.append(rgb_image(rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
                                header))
        infos.append(camera_info_for(intrinsics, header))
    publishers = []
    counter = [0]

    def send(camera: int) -> tuple[int, float]:
        """Publish the next uniquely stamped frame of ``camera``: (index, send time)."""
        counter[0] += 1
        index = counter[0]
        frame, info = frames[camera], infos[camera]
        frame.header.stamp.sec, frame.header.stamp.nanosec = 1, index
        info.header.stamp = frame.header.stamp
        image_pub, info_pub = publishers[camera]
        info_pub.publish(info)
        at = time.perf_counter()
        image_pub.publish(frame)
        return index, at

    def complete(camera: int, index: int) -> bool:
        return len(arrived[camera].get(index, {})) == 2

    stderr_lines: list[str] = []
    node = peer = None

    def check_node() -> None:
        if node.poll() is not None:
            time.sleep(0.2)
            raise SystemExit(f'depth_node exited ({node.returncode}): '
                             + ''.join(stderr_lines)[-4000:])

    warm: list[list[int]] = [[] for _ in cameras]  # warm-up indices
    sent: list[list[tuple[int, float]]] = [[] for _ in cameras]  # (index, send time)
    rclpy.init()
    try:
        peer = rclpy.create_node('bench_cameras_peer', namespace=namespace)
        reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        for i, camera in enumerate(cameras):
            # raw: the stamp is read from the serialized header, no 3-D cloud is decoded
            peer.create_subscription(Image, f'{camera}/depth/image', on_output(i, 'depth'),
                                     reliable, raw=True)
            peer.create_subscription(PointCloud2, f'{camera}/points', on_output(i, 'points'),
                                     reliable, raw=True)
            publishers.append((peer.create_publisher(Image, f'{camera}/image',
                                                     qos_profile_sensor_data),
                               peer.create_publisher(CameraInfo, f'{camera}/camera_info',
                                                     qos_profile_sensor_data)))
        peer.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, 10)
        threading.Thread(target=rclpy.spin, args=(peer,), daemon=True).start()

        node = start_node(node_parameters(args, cameras), namespace)
        threading.Thread(target=lambda: stderr_lines.extend(node.stderr), daemon=True).start()

        # Warm-up: discovery, the model load, the first forwards.
        deadline = time.monotonic() + args.timeout
        while True:
            with lock:
                answered = [any(complete(c, i) for i in warm[c]) for c in range(len(cameras))]
            if all(answered):
                break
            check_node()
            if time.monotonic() > deadline:
                silent = [cameras[c] for c, ok in enumerate(answered) if not ok]
                raise SystemExit(f'warm-up: no answer in {args.timeout:g} s from '
                                 f'{", ".join(silent)}')
            for c in range(len(cameras)):
                warm[c].append(send(c)[0])
            time.sleep(WARMUP_PERIOD_S)

        # Measurement: every camera at rate_hz, the cameras evenly out of phase (in time
        # order by construction); a late send goes at once, the schedule does not drift.
        period = 1.0 / args.rate_hz
        start = time.perf_counter() + 0.05
        for k in range(max(1, math.ceil(args.seconds * args.rate_hz - 1e-9))):
            for c in range(len(cameras)):
                wait = start + k * period + c * period / len(cameras) - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                sent[c].append(send(c))
            check_node()
        end_of_sending = time.perf_counter()

        # Drain: wait for frames still in flight (all answered, or quiet for a while).
        drain_until = end_of_sending + MAX_DRAIN_S
        while time.perf_counter() < drain_until:
            with lock:
                done = [[complete(c, i) for i, _ in sent[c]] for c in range(len(cameras))]
                slowest = max(((max(arrived[c][i].values()) - at)
                               for c in range(len(cameras))
                               for (i, at), ok in zip(sent[c], done[c]) if ok), default=0.0)
                quiet = time.perf_counter() - max(last_arrival[0], end_of_sending)
            if all(all(d) for d in done) or quiet > max(1.0, 2 * slowest):
                break
            time.sleep(0.05)
        time.sleep(1.2)  # one more /diagnostics, with the final counts
    finally:
        if node is not None:
            stop_node(node)
        if peer is not None:
            peer.destroy_node()
        rclpy.try_shutdown()

    rows, timed, all_latencies = [], [], []
    with lock:
        for c, camera in enumerate(cameras):
            latencies, partial = [], 0
            for index, at in sent[c]:
                got = arrived[c].get(index, {})
                if len(got) == 2:
                    ms = (max(got.values()) - at) * 1e3
                    latencies.append(ms)
                    timed.append((at, ms))
                elif got:
                    partial += 1
            all_latencies += latencies
            rows.append({'camera': camera, **summarize(len(sent[c]), latencies, args.seconds),
                         'partial': partial, 'warmup_sent': len(warm[c]),
                         'node_counts': node_counts(diagnostics, camera)})
        device = device_seen[0] if device_seen else None
    total = summarize(sum(len(s) for s in sent), all_latencies, args.seconds)
    total['partial'] = sum(row['partial'] for row in rows)
    if device is None:
        device = f'{args.device} (the node reported no device)'
    elif device.startswith('cpu'):
        import torch

        from depthclip_ros.tools.bench.common import cpu_name
        device += f' - {cpu_name()}, {torch.get_num_threads()} threads'
    problems = [line.rstrip() for line in stderr_lines
                if any(marker in line for marker in PROBLEM_MARKERS)
                and not any(marker in line for marker in BENIGN_MARKERS)]
    return {'device': device, 'model': args.model, 'feature_mode': args.feature_mode,
            'random_weights': args.pretrained == 'none', 'cameras': len(cameras),
            'rate_hz': args.rate_hz, 'seconds': args.seconds,
            'image_size': [height, width], 'input_size': list(args.input_size),
            'rows': rows, 'total': total,
            'backlog': backlog_check(timed, start, args.seconds),
            'node_exit_code': node.returncode, 'node_stderr_problems': problems}


def report(args: argparse.Namespace, result: dict) -> None:
    """Print the table (and write it as JSON with ``--json``)."""
    height, width = result['image_size']
    rows, total, backlog = result['rows'], result['total'], result['backlog']
    print(f'device: {result["device"]}; {args.model} {args.feature_mode} mode; '
          f'{result["cameras"]} camera{"s" if result["cameras"] > 1 else ""} x '
          f'{args.rate_hz:g} Hz, {height}x{width} rgb8 -> '
          f'network {args.input_size[0]}x{args.input_size[1]}; depth + xyz cloud; '
          f'{args.seconds:g} s after warm-up'
          + ('; random weights (cost is the same)' if result['random_weights'] else ''))
    print(format_table(rows, total))
    if backlog['ratio'] is None:
        print(f'backlog check: too few answered frames to judge (first third '
              f'{backlog["first_third_frames"]}, last third {backlog["last_third_frames"]}, '
              f'{BACKLOG_MIN_FRAMES} needed in each)')
    else:
        verdict = ('no growing backlog' if not backlog['growing']
                   else f'latency grows (ratio above {BACKLOG_RATIO:g}): a backlog?')
        print(f'backlog check: p50 latency last third {backlog["last_third_p50_ms"]:.1f} ms '
              f'/ first third {backlog["first_third_p50_ms"]:.1f} ms = '
              f'{backlog["ratio"]:.2f}: {verdict}')
    if any(row['node_counts'] for row in rows):
        print("node's own counts (/diagnostics, warm-up included): " + '; '.join(
            f'{row["camera"]} sent {row["sent"] + row["warmup_sent"]}, ' + ', '.join(
                f'{k} {row["node_counts"].get(k, 0)}'
                for k in ('received', 'processed', 'dropped', 'failed'))
            for row in rows))
    if total['partial']:
        print(f'{total["partial"]} frames got depth or points but not both')
    if result['node_exit_code'] not in (0, None):
        print(f'depth_node exit code after SIGINT: {result["node_exit_code"]}')
    problems = result['node_stderr_problems']
    if problems:
        print(f'depth_node stderr: {len(problems)} warning/error lines, e.g.: '
              + ' | '.join(problems[:5]))
    if args.json:
        write_text_whole(args.json, json.dumps(result, indent=2) + '\n')

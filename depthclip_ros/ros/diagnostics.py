"""``depth_node``'s ``/diagnostics`` at 1 Hz: what it reports and how healthy it is.

Functions of the node (a :class:`~depthclip_ros.ros.node.DepthNodeCore`): its model, its
pending configuration and each camera's figures (rates, counts, latency, stages,
uncertainty, scene, last problem), and the located objects while queries are set.
"""

from __future__ import annotations

import statistics
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from depthclip_ros.ros.streams import CameraStream

STALL_S = 5.0  # frames arriving but nothing published for this long: diagnostics ERROR


def publish_diagnostics(node) -> None:
    """``<node>: depth`` (the model, and the camera's figures when there is one), with
    ``cameras`` one ``<node>: camera <name>`` per camera; ``<node>: objects`` (per
    camera: ``objects <name>``) while queries are set."""
    name = node.get_fully_qualified_name()
    engine = node.engine
    device = engine.describe_device() if engine is not None else 'not configured'
    values = {'device': device}
    if engine is not None:
        values.update({
            'model': f'{engine.config.model} ({engine.config.pretrained})',
            'feature mode': engine.config.feature_mode,
            'random weights': str(engine.random_weights),
        })
    if node._head_mismatch:
        values['pending configuration'] = node._head_mismatch
    head = engine.head if engine is not None else None
    values['bins mode'] = head.bins_mode if head else node._params['bins_mode']
    status = DiagnosticStatus(name=f'{name}: depth', hardware_id=device)
    statuses = [status]
    if len(node.streams) == 1 and not node.streams[0].name:
        stream = node.streams[0]
        values = {**stream_values(stream), **values}
        status.level, status.message = health(node, stream)
    else:
        values['cameras'] = ', '.join(s.name for s in node.streams)
        levels = []
        for stream in node.streams:
            camera = DiagnosticStatus(name=f'{name}: camera {stream.name}',
                                      hardware_id=device)
            camera.values = [KeyValue(key=k, value=v)
                             for k, v in stream_values(stream).items()]
            camera.level, camera.message = health(node, stream)
            levels.append(camera.level)
            statuses.append(camera)
        status.level = max(levels)
        status.message = ('every camera running' if status.level == DiagnosticStatus.OK
                          else 'see the cameras')
        if engine is not None and engine.random_weights:
            status.level = max(status.level, DiagnosticStatus.WARN)
            status.message = 'random weights: not depth'
    status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
    for stream in node.streams:
        objects = objects_status(node, stream)
        if objects is not None:
            statuses.append(objects)
    array = DiagnosticArray()
    array.header.stamp = node.get_clock().now().to_msg()
    array.status = statuses
    node.pub_diagnostics.publish(array)


def health(node, stream: CameraStream) -> tuple[bytes, str]:
    """The diagnostic level and message of a camera: ERROR when frames arrive but nothing
    has been published for ``STALL_S`` (or three frame times, if longer), naming the
    reason."""
    now = time.monotonic()
    typical = statistics.median(stream.latency_ms) / 1e3 if stream.latency_ms else 0.0
    limit = max(STALL_S, 3 * typical)
    if now - stream.last_received < limit and now - stream.last_output > limit:
        return DiagnosticStatus.ERROR, (
            f'no output for {now - stream.last_output:.0f} s while frames arrive: '
            f'{stream.last_problem or "no frame finished (still processing?)"}')
    if node._head_mismatch:
        return DiagnosticStatus.WARN, node._head_mismatch
    if node.engine is None:
        return DiagnosticStatus.OK, 'not configured'
    if node.engine.random_weights:
        return DiagnosticStatus.WARN, 'random weights: not depth'
    if stream.counts['failed'] or stream.counts['rejected']:
        return DiagnosticStatus.WARN, 'frames rejected or failed'
    return DiagnosticStatus.OK, 'running'


def stream_values(stream: CameraStream) -> dict[str, str]:
    """A camera's figures: rates, counts, latency, stage times, uncertainty, scene."""
    values = {'input rate (Hz)': f'{stream.rate("received"):.2f}',
              'output rate (Hz)': f'{stream.rate("processed"):.2f}'}
    values.update({f'frames {k}': str(v) for k, v in stream.counts.items()})
    if stream.latency_ms:
        values['latency end-to-end median (ms)'] = \
            f'{statistics.median(stream.latency_ms):.1f}'
    for name, samples in stream.stage_ms.items():
        values[f'stage {name} median (ms)'] = f'{statistics.median(samples):.2f}'
    if stream.sigma_median_m:
        values['depth uncertainty median (m)'] = \
            f'{statistics.median(stream.sigma_median_m):.3f}'
    if stream.bins_m is not None:
        values['bins (m, canonical)'] = ' '.join(f'{b:.3f}' for b in stream.bins_m)
    if stream.scene is not None:
        values['scene'] = stream.scene.chosen
        values['scene probabilities'] = ', '.join(
            f'{name} {p:.3f}' for name, p in stream.scene.as_dict().items())
    if stream.last_problem:
        values['last problem'] = stream.last_problem
    return values


def objects_status(node, stream: CameraStream) -> DiagnosticStatus | None:
    """A status ``<node>: objects`` (``objects <camera>`` with several) while queries are
    set: per query its score, the margin to the runner-up and the position in the optical
    frame; ``None`` without queries."""
    if stream.pipeline is None or not stream.pipeline.objects.queries:
        return None
    status = DiagnosticStatus()
    suffix = f' {stream.name}' if stream.name else ''
    status.name = f'{node.get_fully_qualified_name()}: objects{suffix}'
    status.hardware_id = node.engine.describe_device() if node.engine else ''
    values = {'queries': str(len(stream.pipeline.objects.queries)),
              'proposals': stream.pipeline.objects.proposals,
              'frames with objects': str(stream.counts['objects_found']),
              'frames without objects': str(stream.counts['objects_skipped'])}
    if stream.pipeline.objects.proposals == 'topic':
        values['frames waiting for their label image'] = str(len(stream.objects_waiting))
    for result in stream.objects_found:
        prefix = f'query {result.index} "{result.query}"'
        values[f'{prefix} score'] = f'{result.score:.2f}'
        values[f'{prefix} margin'] = ('n/a' if result.margin is None
                                      else f'{result.margin:.2f}')
        values[f'{prefix} position (m)'] = (
            'no depth' if result.location is None else
            ' '.join(f'{v:.3f}' for v in result.location.position_m))
    status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
    random = node.engine is not None and node.engine.random_weights
    status.level = DiagnosticStatus.WARN if random else DiagnosticStatus.OK
    status.message = ('random weights: objects are meaningless' if random
                      else f'{len(stream.objects_found)} objects located')
    return status

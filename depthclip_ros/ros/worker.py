"""The inference side of ``depth_node``: frames in, outputs out, on a thread of its own.

The subscription callbacks (:meth:`FrameWorker._on_image`, :meth:`FrameWorker._on_masks`)
only store each camera's newest frame (an older one still waiting is dropped and counted)
and its label images, so the executor never stalls and latency cannot grow without bound.
The worker takes every camera's waiting frame, prepares each in its camera's pipeline,
runs them as one batched forward (:func:`~depthclip_ros.ros.batch.run_batch`) and
publishes each camera's depth outputs; outputs nobody subscribes to are not computed.

Then, per camera, the optional object step: each camera's frame waiting for it is kept
(``CameraStream.objects_waiting``), and completed once it can be: at once with the
built-in proposals, when its label image arrives with ``object_proposals: topic``, or
skipped (warned) when its own ``object_masks_wait_s`` has passed. The worker never waits
for one camera: while a frame waits for its label image, every camera's depth (its own
too) goes on, so no camera can starve another, nor delay another by a wait.
"""

from __future__ import annotations

import threading
import time

from depthclip_ros.engine.config import HeadConfig
from depthclip_ros.io.encodings import ImageFormatError
from depthclip_ros.ros.batch import run_batch
from depthclip_ros.ros.object_messages import labels_from_image
from depthclip_ros.ros.pipeline import FrameRejected, Wanted
from depthclip_ros.ros.streams import CameraStream
from depthclip_ros.ros.torch_threads import INFERENCE_THREADS, set_torch_threads
from depthclip_ros.timing import StageTimer

WORKER_JOIN_S = 1.0  # at shutdown, wait this long for the frame in progress
MASKS_KEPT = 8  # label images on objects/masks remembered, newest stamps first
OBJECT_FRAMES_KEPT = 4  # per camera: frames whose object step waits (for a label image)


class FrameWorker:
    """The worker of :class:`~depthclip_ros.ros.node.DepthNodeCore`, mixed into it.

    Uses the core's ``streams``, ``engine``, ``_params``, ``_lock`` (a Condition),
    ``_running``, ``_next_head`` (a head accepted by the parameter callback, applied here
    between batches), ``_worker`` (the thread), and its ``_problem`` and ``_log``.
    """

    def _start_worker(self) -> None:
        with self._lock:
            self._running = True
            for stream in self.streams:
                stream.slot = None
                stream.masks.clear()
                stream.objects_waiting.clear()
                stream.last_output = time.monotonic()
        self._worker = threading.Thread(target=self._work, name='depthclip_inference',
                                        daemon=True)
        self._worker.start()

    def _stop_worker(self) -> None:
        """Stop the worker and drop the waiting frames (and those waiting for their object
        step): a batch in progress may finish within ``WORKER_JOIN_S``; one that takes
        longer (or a long prompt encoding) is abandoned, never waited for."""
        with self._lock:
            self._running = False
            for stream in self.streams:
                stream.slot = None
                stream.objects_waiting.clear()
            self._lock.notify_all()
        if self._worker is not None and self._worker.is_alive():
            self._worker.join(timeout=WORKER_JOIN_S)

    # ------------------------------------------------------------------ callbacks
    def _on_image(self, stream: CameraStream, msg) -> None:
        with self._lock:
            stream.counts['received'] += 1
            stream.last_received = time.monotonic()
            if stream.slot is not None:
                stream.counts['dropped'] += 1
            stream.slot = (msg, time.monotonic())
            self._lock.notify()

    def _on_masks(self, stream: CameraStream, msg) -> None:
        """A label image for the object step: decoded and kept (bounded) by stamp."""
        topic = (stream.pipeline.topics['objects/masks'] if stream.pipeline
                 else stream.topic('objects/masks'))
        try:
            labels = labels_from_image(msg, self._params['max_input_pixels'])
        except ImageFormatError as error:
            self._problem(stream, 'error', f'bad label image on {topic}: {error}; ignored')
            return
        with self._lock:
            stream.masks[_stamp_ns(msg.header)] = labels
            while len(stream.masks) > MASKS_KEPT:
                stream.masks.popitem(last=False)
            self._lock.notify_all()

    # ------------------------------------------------------------------ the thread
    def _work(self) -> None:
        """Batches of frames, head changes and object steps, one at a time; nothing that
        happens in here can end the loop but :meth:`_stop_worker`. Torch runs here with all
        its threads (:data:`~depthclip_ros.ros.torch_threads.INFERENCE_THREADS`).

        Each round: the head accepted meanwhile, every camera's waiting frame as one batch
        (depth published for all of them), then every camera's due object step (one frame
        each). Between rounds it sleeps until a frame, a head, a label image or the
        earliest object deadline."""
        set_torch_threads(INFERENCE_THREADS)
        while True:
            with self._lock:
                while (self._running and self._next_head is None
                       and all(s.slot is None for s in self.streams)
                       and not self._objects_due(time.monotonic())):
                    self._lock.wait(self._until_next_deadline())
                if not self._running:
                    return
                batch = [(s, *s.slot) for s in self.streams if s.slot is not None]
                for stream in self.streams:
                    stream.slot = None
                head, self._next_head = self._next_head, None
            try:
                if head is not None:
                    self._apply_head(head)
                if batch:
                    self._process_batch(batch)
            except Exception as error:  # noqa: BLE001 - one bad batch must not kill the node
                for stream, _, _ in batch:
                    self._failed(stream, error)
            try:
                self._object_steps()
            except Exception as error:  # noqa: BLE001 - nor a failing object output
                self._log('error', f'object step failed: {type(error).__name__}: {error}')

    def _apply_head(self, head: HeadConfig) -> None:
        try:
            self.engine.set_head(head)
        except Exception as error:  # noqa: BLE001 - the previous head stays in use
            stream = self.streams[0]
            stream.counts['failed'] += 1
            self._problem(stream, 'error', f'could not apply the new prompts/bins, keeping '
                                           f'the previous ones: {type(error).__name__}: '
                                           f'{error}')

    def _process_batch(self, batch: list[tuple[CameraStream, object, float]]) -> None:
        """Every camera's waiting frame: prepared per camera, one forward for all, then
        each camera's outputs. A frame rejected or failing affects its own camera only."""
        jobs = []  # (stream, job, received, timer)
        for stream, msg, received in batch:
            want = self._wanted(stream)
            if not want.any():
                stream.counts['skipped_no_subscribers'] += 1
                stream.last_output = time.monotonic()
                continue
            timer = StageTimer()
            try:
                job = stream.pipeline.prepare(msg, want, timer)
            except FrameRejected as error:
                stream.counts['rejected'] += 1
                self._problem(stream, 'error', f'{error}; frame dropped')
                continue
            except Exception as error:  # noqa: BLE001 - this camera's frame only
                stream.counts['failed'] += 1
                self._problem(stream, 'error', f'frame dropped: {type(error).__name__}: '
                                               f'{error}')
                continue
            jobs.append((stream, job, received, timer))
        if not jobs:
            return
        ran = run_batch(self.engine, [job.frame for _, job, _, _ in jobs],
                        [timer for _, _, _, timer in jobs])
        for (stream, job, received, timer), result in zip(jobs, ran.results):
            if isinstance(result, Exception):
                self._failed(stream, result)
                continue
            try:
                out = stream.pipeline.finish(job, result, timer)
            except Exception as error:  # noqa: BLE001 - this camera's frame only
                self._failed(stream, error)
                continue
            self._publish(stream, out, received, timer)
        if ran.batch_error is not None:
            error = ran.batch_error
            self._log('warning', f'a batch of {len(jobs)} frames failed '
                                 f'({type(error).__name__}: {error}); its frames were run '
                                 f'one by one')

    def _failed(self, stream: CameraStream, error: Exception) -> None:
        stream.counts['failed'] += 1
        self._problem(stream, 'error', f'inference failed, frame dropped: '
                                       f'{type(error).__name__}: {error}')

    def _wanted(self, stream: CameraStream) -> Wanted:
        queries = bool(stream.pipeline.objects.queries)
        return Wanted(
            depth=_subscribed(stream.pub_depth),
            camera_info=_subscribed(stream.pub_info),
            points=_subscribed(stream.pub_points),
            colormap=_subscribed(stream.pub_colormap),
            uncertainty=_subscribed(stream.pub_uncertainty),
            markers=queries and _subscribed(stream.pub_markers),
            object_points=queries and _subscribed(stream.pub_object_points),
            labels=queries and (_subscribed(stream.pub_labels)
                                or _subscribed(stream.pub_labels_info)),
            detections=queries and _subscribed(stream.pub_detections))

    def _publish(self, stream: CameraStream, out, received: float, timer: StageTimer) -> None:
        with timer.stage('publish'):
            for publisher, message in ((stream.pub_depth, out.depth),
                                       (stream.pub_info, out.camera_info),
                                       (stream.pub_colormap, out.colormap),
                                       (stream.pub_uncertainty, out.uncertainty),
                                       (stream.pub_points, out.points)):
                if message is not None:
                    publisher.publish(message)
        stream.counts['processed'] += 1
        stream.sigma_median_m.append(out.sigma_median_m)
        stream.scene, stream.bins_m = out.scene, out.bins_m
        stream.last_output = time.monotonic()
        stream.latency_ms.append((stream.last_output - received) * 1e3)
        stream.record(timer.samples)
        if out.frame is not None:
            self._park(stream, out.frame)

    # ------------------------------------------------------------------ object steps
    def _park(self, stream: CameraStream, frame) -> None:
        """Keep a frame whose depth is out for its object step (:meth:`_object_steps`),
        with its own deadline for the label image (``object_masks_wait_s``, from now)."""
        deadline = time.monotonic() + stream.pipeline.objects.masks_wait_s
        stamp = _stamp_ns(frame.header)
        dropped = 0
        with self._lock:
            stream.objects_waiting.pop(stamp, None)  # the same frame again: the newer one
            stream.objects_waiting[stamp] = (frame, deadline)
            while len(stream.objects_waiting) > OBJECT_FRAMES_KEPT:
                stream.objects_waiting.popitem(last=False)
                dropped += 1
        if dropped:
            stream.counts['objects_skipped'] += dropped
            self._problem(stream, 'warning',
                          f'no label image on {stream.pipeline.topics["objects/masks"]} for '
                          f'{OBJECT_FRAMES_KEPT} frames in a row; objects skipped for the '
                          f'oldest')

    def _ready(self, stream: CameraStream, stamp: int) -> bool:
        """Whether the object step of ``stream``'s frame ``stamp`` can run now."""
        return stream.pipeline.objects.proposals != 'topic' or stamp in stream.masks

    def _objects_due(self, now: float) -> bool:
        """Some camera has an object step to run or to skip (call with the lock held)."""
        return any(self._ready(stream, stamp) or deadline <= now
                   for stream in self.streams if stream.pipeline is not None
                   for stamp, (_, deadline) in stream.objects_waiting.items())

    def _until_next_deadline(self) -> float | None:
        """Seconds to the earliest object deadline, ``None`` without one (lock held)."""
        deadlines = [deadline for stream in self.streams if stream.pipeline is not None
                     for _, deadline in stream.objects_waiting.values()]
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _object_steps(self) -> None:
        """Every camera's due object work: the newest frame that can run (older waiting
        frames of that camera are then skipped: newest wins, as for depth), and every frame
        whose label image did not come in time (skipped, warned). Each camera's own; a
        problem here skips that frame's objects, never anything else."""
        now = time.monotonic()
        runs, late, superseded = [], [], []
        with self._lock:
            for stream in self.streams:
                waiting = stream.objects_waiting
                if stream.pipeline is None or not waiting:
                    continue
                stamps = list(waiting)
                ready = [i for i, stamp in enumerate(stamps) if self._ready(stream, stamp)]
                newest = ready[-1] if ready else -1
                for i, stamp in enumerate(stamps):
                    frame, deadline = waiting[stamp]
                    if i == newest:
                        runs.append((stream, frame, stream.masks.pop(stamp, None)))
                    elif i < newest:
                        superseded.append(stream)
                    elif deadline <= now:
                        late.append((stream, stamp,
                                     max(stream.masks) if stream.masks else None))
                    else:
                        continue
                    del waiting[stamp]
        for stream, stamp, newest in late:
            stream.counts['objects_skipped'] += 1
            wait_s = stream.pipeline.objects.masks_wait_s
            self._problem(stream, 'warning',
                          f'no label image on {stream.pipeline.topics["objects/masks"]} '
                          f'stamped {stamp * 1e-9:.3f} s within {wait_s:g} s (newest: '
                          f'{"none yet" if newest is None else f"{newest * 1e-9:.3f} s"}); '
                          f'objects skipped for this frame')
        for stream in superseded:
            stream.counts['objects_skipped'] += 1
            self._problem(stream, 'warning', 'objects skipped for a frame: a newer frame was '
                                             'ready for its object step first')
        for stream, frame, labels in runs:
            self._find_objects(stream, frame, labels)

    def _find_objects(self, stream: CameraStream, frame, labels) -> None:
        """The object step of a frame whose depth is already out: candidates (built in, or
        ``labels``, the label image of the same stamp), then the object outputs."""
        objects = stream.pipeline.objects
        want = self._wanted(stream)
        if not objects.queries or not want.objects():
            return  # queries cleared, or nobody listens any more
        if objects.proposals != 'topic':
            labels = None
        timer = StageTimer()
        try:
            out = stream.pipeline.find(frame, want, labels, timer)
        except (FrameRejected, ValueError) as error:
            stream.counts['objects_skipped'] += 1
            self._problem(stream, 'error', f'objects: {error}')
            return
        except Exception as error:  # noqa: BLE001 - this camera's objects of this frame only
            stream.counts['objects_skipped'] += 1
            self._problem(stream, 'error', f'objects failed for this frame: '
                                           f'{type(error).__name__}: {error}')
            return
        with timer.stage('publish objects'):
            for publisher, message in ((stream.pub_markers, out.markers),
                                       (stream.pub_object_points, out.object_points),
                                       (stream.pub_labels, out.labels),
                                       (stream.pub_labels_info, out.labels_info),
                                       (stream.pub_detections, out.detections)):
                if message is not None and publisher is not None:
                    publisher.publish(message)
        stream.objects_found = out.objects
        stream.counts['objects_found'] += 1
        stream.record(timer.samples)


def _subscribed(publisher) -> bool:
    return publisher is not None and publisher.get_subscription_count() > 0


def _stamp_ns(header) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec

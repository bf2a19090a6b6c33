"""Frames through the network together, losing only the frame that fails: the one policy
for a batched forward, shared by ``depth_node`` (every camera's waiting frame) and the bag
tool.

No rclpy and no torch here: the frames come prepared (``DepthPipeline.prepare``), the
predictions go back to their pipelines (``DepthPipeline.finish``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, TYPE_CHECKING

from depthclip_ros.timing import StageTimer

if TYPE_CHECKING:
    from depthclip_ros.engine.depthclip import DepthCLIP
    from depthclip_ros.engine.frames import FrameIn


@dataclass
class BatchResult:
    """Per frame, in the order given, its ``Prediction`` or the ``Exception`` it raised."""

    results: list  # list[Prediction | Exception]
    # The batched forward's own error when it failed and the frames were run one by one
    # (several frames only: a single frame's error is its result); None otherwise.
    batch_error: Exception | None = None


def run_batch(engine: DepthCLIP, frames: Sequence[FrameIn],
              timers: Sequence[StageTimer | None] | None = None) -> BatchResult:
    """``frames`` through one :meth:`DepthCLIP.infer_frames` call; if that raises, each
    frame again on its own, so that only the frames that fail alone are lost.

    Contract:

    * returns a :class:`BatchResult` whose ``results[i]`` is frame ``i``'s prediction or
      the exception that lost it; nothing derived from ``Exception`` escapes (a CUDA
      out-of-memory, a bad frame), a ``BaseException`` (``KeyboardInterrupt``, a stop
      request) does, at once;
    * one frame is run once: its failure is its result, with no retry;
    * ``batch_error`` is set when a batch of several failed and was rerun frame by frame
      (the caller may report it once: its frames are accounted for in ``results``);
    * ``timers`` (one per frame, or ``None``; ``None`` entries allowed): each frame's timer
      gets the stages of the forward that gave its result: the batched forward's stages
      (shared by its frames, so each frame's timer holds the whole batch's times), or
      those of its own rerun;
    * ``frames`` may be empty (``results`` is then empty); the engine must be loaded.
    """
    frames = list(frames)
    timers = list(timers) if timers is not None else [None] * len(frames)
    if len(timers) != len(frames):
        raise ValueError(f'{len(frames)} frames but {len(timers)} timers')
    if not frames:
        return BatchResult([])
    shared = StageTimer()
    try:
        predictions = engine.infer_frames(frames, shared)
    except Exception as error:  # noqa: BLE001 - isolated frame by frame below
        if len(frames) == 1:
            return BatchResult([error])
        return BatchResult([_alone(engine, frame, timer) for frame, timer
                            in zip(frames, timers)], batch_error=error)
    for timer in timers:
        if timer is not None:
            for name, values in shared.samples.items():
                timer.samples.setdefault(name, []).extend(values)
    return BatchResult(list(predictions))


def _alone(engine: DepthCLIP, frame: FrameIn, timer: StageTimer | None):
    try:
        [prediction] = engine.infer_frames([frame], timer)
    except Exception as error:  # noqa: BLE001 - this frame's only
        return error
    return prediction

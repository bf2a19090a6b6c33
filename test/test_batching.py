"""Several frames of different sizes, cameras and output sizes in one forward
(``DepthCLIP.infer_frames``): each result equals the frame run alone (CPU, random
weights: the computation, not accuracy); and ``run_batch``, the batched forward that loses
only the frame that fails."""

import numpy as np
import pytest

from depthclip_ros.engine.config import head_with
from depthclip_ros.engine.frames import FrameIn
from depthclip_ros.geometry import Intrinsics
from depthclip_ros.ros.batch import run_batch
from depthclip_ros.timing import StageTimer

SIZES = [(48, 64), (60, 80), (48, 64)]


def frame(seed, size, uncertainty=False, output_size=None, bins_m=None):
    height, width = size
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    camera = Intrinsics(0.9 * width + seed, 0.9 * width + seed, width / 2, height / 2,
                        width, height)
    return FrameIn(rgb, camera, output_size, uncertainty, bins_m)


def alone(engine, f):
    return engine.infer(f.rgb, f.intrinsics, f.output_size, uncertainty=f.uncertainty,
                        bins_m=f.bins_m)


@pytest.mark.parametrize('flip', [False, True])
def test_a_batch_of_mixed_frames_equals_each_frame_alone(small_engine, flip):
    before = small_engine.head
    small_engine.set_head(head_with(before, flip_average=flip))
    try:
        frames = [frame(0, SIZES[0]), frame(1, SIZES[1], uncertainty=True, output_size=(30, 40)),
                  frame(2, SIZES[2], bins_m=(1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5))]
        batch = small_engine.infer_frames(frames)
        assert len(batch) == 3
        for f, got in zip(frames, batch):
            expected = alone(small_engine, f)
            assert got.depth.shape == expected.depth.shape == (f.output_size or
                                                               f.rgb.shape[:2])
            np.testing.assert_allclose(got.depth, expected.depth, rtol=1e-4, atol=1e-5)
            if f.uncertainty:
                np.testing.assert_allclose(got.sigma, expected.sigma, rtol=1e-4, atol=1e-5)
            else:
                assert got.sigma is None
            assert got.sigma_median_m == pytest.approx(expected.sigma_median_m, rel=1e-4)
            assert got.tokens.shape == expected.tokens.shape
    finally:
        small_engine.set_head(before)


def test_a_bad_frame_is_named_before_anything_runs(small_engine):
    good = frame(0, SIZES[0])
    wrong = FrameIn(good.rgb, Intrinsics(50, 50, 30, 20, 80, 60))
    with pytest.raises(ValueError, match='intrinsics are for 80x60, images are 64x48'):
        small_engine.infer_frames([good, wrong])
    with pytest.raises(TypeError, match='uint8'):
        FrameIn(good.rgb.astype(np.float32), good.intrinsics).check()
    assert small_engine.infer_frames([]) == []


def test_the_trunk_in_chunks_equals_one_trunk_call(small_engine):
    """On the CPU the trunk takes one frame per call (faster there); the result is the
    same as the whole batch in one call."""
    assert small_engine.trunk_batch == 1
    frames = [frame(seed, SIZES[seed]) for seed in range(3)]
    chunked = small_engine.infer_frames(frames)
    small_engine.trunk_batch = None
    try:
        whole = small_engine.infer_frames(frames)
    finally:
        small_engine.trunk_batch = 1
    for a, b in zip(chunked, whole):
        np.testing.assert_allclose(a.depth, b.depth, rtol=1e-4, atol=1e-5)


def counted(monkeypatch, engine) -> list[int]:
    """The number of frames of each ``infer_frames`` call from now on."""
    calls = []
    real = engine.infer_frames

    def infer_frames(frames, *args, **kwargs):
        calls.append(len(frames))
        return real(frames, *args, **kwargs)
    monkeypatch.setattr(engine, 'infer_frames', infer_frames)
    return calls


def test_run_batch_is_one_forward_and_every_timer_gets_its_stages(small_engine, monkeypatch):
    frames = [frame(seed, SIZES[seed]) for seed in range(3)]
    expected = small_engine.infer_frames(frames)
    calls = counted(monkeypatch, small_engine)
    timers = [StageTimer(), None, StageTimer()]
    ran = run_batch(small_engine, frames, timers)
    assert calls == [3] and ran.batch_error is None
    for got, want in zip(ran.results, expected):
        np.testing.assert_array_equal(got.depth, want.depth)
    assert timers[0].samples == timers[2].samples and len(timers[0].samples['network']) == 1
    assert run_batch(small_engine, []).results == [] and calls == [3]
    with pytest.raises(ValueError, match='3 frames but 1 timers'):
        run_batch(small_engine, frames, [None])


def test_run_batch_loses_only_the_failing_frame(small_engine, monkeypatch):
    good, other = frame(0, SIZES[0]), frame(1, SIZES[1])
    wrong = FrameIn(good.rgb, Intrinsics(50, 50, 30, 20, 80, 60))  # fails the frame check
    calls = counted(monkeypatch, small_engine)
    timers = [StageTimer(), StageTimer(), StageTimer()]
    ran = run_batch(small_engine, [good, wrong, other], timers)
    assert calls == [3, 1, 1, 1]  # the batch, then each frame alone
    assert isinstance(ran.batch_error, ValueError) and 'images are 64x48' in str(
        ran.batch_error)
    assert isinstance(ran.results[1], ValueError)
    for got, f in ((ran.results[0], good), (ran.results[2], other)):
        np.testing.assert_allclose(got.depth, alone(small_engine, f).depth, rtol=1e-4,
                                   atol=1e-5)
    assert 'network' in timers[0].samples and 'network' not in timers[1].samples


def test_run_batch_does_not_rerun_a_single_frame_nor_catch_a_stop(small_engine, monkeypatch):
    calls = []

    def failing(frames, *args, **kwargs):
        calls.append(len(frames))
        raise RuntimeError('CUDA out of memory (simulated)')
    monkeypatch.setattr(small_engine, 'infer_frames', failing)
    ran = run_batch(small_engine, [frame(0, SIZES[0])])
    assert calls == [1] and ran.batch_error is None
    [error] = ran.results
    assert isinstance(error, RuntimeError) and 'simulated' in str(error)

    def interrupted(frames, *args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(small_engine, 'infer_frames', interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_batch(small_engine, [frame(0, SIZES[0]), frame(1, SIZES[1])])

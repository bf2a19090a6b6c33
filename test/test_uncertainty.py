"""Per-pixel uncertainty (docs/method.md §4) and per-call bins, against an independent
computation from the softmax weights of the authors' re-stated pipeline.

Random weights throughout: these tests check the computation, not accuracy (at the
paper's temperature their bin distributions are spread: sigma 0.3-1 m, so the comparisons
mean something). The comparisons with the reference run on RN50 (``engine``); per-call
bins, batches and the option of sigma on the tests' tiny model (``tiny_engine``).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from depthclip_ros.engine.config import head_with, NYU_FOCAL_PX, PAPER_DEPTH_BINS_M

from test_model import image, NYU_CROP, reference_weights

TEMPERATURE = 0.1  # the paper's, the engine fixture's
BINS = np.asarray(PAPER_DEPTH_BINS_M, dtype=np.float64)


@pytest.fixture
def paper(engine):
    """The engine at the paper's head, restored after the test."""
    before = engine.head
    assert before.temperature == TEMPERATURE
    yield engine
    engine.set_head(before)


def moments(weights: np.ndarray, bins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of ``(K, h, w)`` weights over ``bins``, float64, textbook form."""
    values = bins.reshape(-1, 1, 1)
    mean = (weights * values).sum(0)
    return mean, np.sqrt((weights * values ** 2).sum(0) - mean ** 2)


def upsample(grid: np.ndarray, size) -> np.ndarray:
    out = F.interpolate(torch.from_numpy(grid)[None, None], size=size, mode='bilinear',
                        align_corners=True)
    return out[0, 0].numpy()


def reference(engine, rgb, flip=False):
    """``(depth, sigma, grid sigma)`` in metres from the reference softmax weights."""
    weights = reference_weights(engine.clip, rgb, TEMPERATURE)[0].double().numpy()
    if flip:
        mirrored = reference_weights(engine.clip, np.ascontiguousarray(rgb[:, ::-1]), TEMPERATURE)
        weights = 0.5 * (weights + mirrored[0].double().numpy()[:, :, ::-1])
    scale = NYU_CROP.mean_focal / NYU_FOCAL_PX
    mean, sigma = moments(weights, BINS * scale)
    return upsample(mean, rgb.shape[:2]), upsample(sigma, rgb.shape[:2]), sigma


def test_sigma_is_the_standard_deviation_of_the_metric_bin_distribution(paper):
    rgb = image()
    prediction = paper.infer(rgb, NYU_CROP, uncertainty=True)
    depth, sigma, grid_sigma = reference(paper, rgb)
    assert prediction.sigma.shape == prediction.depth.shape == (416, 544)
    assert prediction.sigma.dtype == np.float32
    np.testing.assert_allclose(prediction.depth, depth, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(prediction.sigma, sigma, rtol=1e-4, atol=1e-5)
    assert grid_sigma.min() > 0.05 and grid_sigma.std() > 1e-3  # a meaningful comparison
    assert prediction.sigma_median_m == pytest.approx(np.median(grid_sigma), rel=1e-4)


def test_with_flip_averaging_sigma_is_that_of_the_mixed_distributions(paper):
    paper.set_head(head_with(paper.head, flip_average=True))
    rgb = image(seed=3)
    prediction = paper.infer(rgb, NYU_CROP, uncertainty=True)
    depth, sigma, _ = reference(paper, rgb, flip=True)
    np.testing.assert_allclose(prediction.depth, depth, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(prediction.sigma, sigma, rtol=1e-4, atol=1e-5)
    # the mixture's sigma, not the mean of the two sigmas (which is never larger)
    _, plain, _ = reference(paper, rgb)
    _, mirrored, _ = reference(paper, np.ascontiguousarray(rgb[:, ::-1]))
    averaged = 0.5 * (plain + mirrored[:, ::-1])
    assert np.all(prediction.sigma >= averaged - 1e-4)
    assert np.abs(prediction.sigma - averaged).max() > 1e-3
    # and the depth is still the flip-averaged depth
    np.testing.assert_allclose(prediction.depth, paper.predict(rgb, NYU_CROP), rtol=1e-6)


def test_sigma_only_when_asked_and_the_depth_is_the_same_either_way(tiny_engine):
    rgb = image(seed=4)
    plain = tiny_engine.infer(rgb, NYU_CROP)
    assert plain.sigma is None
    asked = tiny_engine.infer(rgb, NYU_CROP, uncertainty=True, output_size=(100, 120))
    assert asked.sigma.shape == (100, 120)
    np.testing.assert_array_equal(plain.depth,
                                  tiny_engine.infer(rgb, NYU_CROP, uncertainty=True).depth)
    assert plain.sigma_median_m == asked.sigma_median_m


def test_a_certain_pixel_has_zero_sigma(engine):
    """One bin taking all the weight: the distribution has no spread."""
    cold = head_with(engine.head, temperature=1e-4)
    before = engine.head
    engine.set_head(cold)
    try:
        prediction = engine.infer(image(seed=5), NYU_CROP, uncertainty=True)
    finally:
        engine.set_head(before)
    scaled = BINS * NYU_CROP.mean_focal / NYU_FOCAL_PX
    on_bins = np.isclose(prediction.depth[..., None], scaled, atol=1e-5).any(-1)
    assert on_bins.mean() > 0.5
    assert np.all(prediction.sigma[on_bins] < 1e-3)


def test_per_call_bins_equal_a_head_with_those_bins(tiny_engine):
    rgb = image(seed=6)
    other = (1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5)
    called = tiny_engine.infer(rgb, NYU_CROP, uncertainty=True, bins_m=other)
    before = tiny_engine.head
    tiny_engine.set_head(head_with(before, depth_bins_m=other))
    try:
        expected = tiny_engine.infer(rgb, NYU_CROP, uncertainty=True)
    finally:
        tiny_engine.set_head(before)
    np.testing.assert_allclose(called.depth, expected.depth, rtol=1e-6)
    np.testing.assert_allclose(called.sigma, expected.sigma, rtol=1e-5, atol=1e-6)
    assert not np.allclose(called.depth, tiny_engine.predict(rgb, NYU_CROP))


def test_one_bin_set_per_image_of_a_batch(tiny_engine):
    frames = np.stack([image(seed=7), image(seed=8)])
    sets = np.array([PAPER_DEPTH_BINS_M, [2 * b for b in PAPER_DEPTH_BINS_M]])
    batch = tiny_engine.infer(frames, NYU_CROP, uncertainty=True, bins_m=sets)
    for frame, bins, depth, sigma in zip(frames, sets, batch.depth, batch.sigma):
        alone = tiny_engine.infer(frame, NYU_CROP, uncertainty=True, bins_m=bins)
        np.testing.assert_allclose(depth, alone.depth, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(sigma, alone.sigma, rtol=1e-4, atol=1e-5)
    assert len(batch.sigma_median_m) == 2


@pytest.mark.parametrize('bins, problem', [
    ((1.0, 2.0), 'must be 7 bins'),
    ((1.0, 1.5, 2.0, 2.0, 2.5, 2.75, 3.0), 'strictly increasing'),
    ((0.0, 1.5, 2.0, 2.25, 2.5, 2.75, 3.0), '> 0'),
    ((1.0, 1.5, 2.0, 2.25, 2.5, 2.75, float('nan')), 'finite'),
])
def test_bad_per_call_bins_are_refused(tiny_engine, bins, problem):
    with pytest.raises(ValueError, match=problem):
        tiny_engine.infer(image(64, 96), NYU_CROP.resized(64, 96), bins_m=bins)

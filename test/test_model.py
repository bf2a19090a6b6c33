"""The engine against an independent re-statement of docs/method.md §1 (on RN50,
``engine``), and its invariants (metric scale, focal, bins, flip, batching, sizes, the text
cache, release) on the tests' tiny model (``tiny_engine``, or built here).

Random weights throughout: these tests check the computation, not accuracy.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from depthclip_ros.engine.config import (
    head_with,
    HeadConfig,
    ModelConfig,
    NYU_FOCAL_PX,
    PAPER_DEPTH_BINS_M,
    PAPER_DISTANCE_PROMPTS,
    TEMPERATURE_RANGE,
)
from depthclip_ros.geometry import Intrinsics

NYU_CROP = Intrinsics(518.8579, 519.4696, 325.5824 - 60, 253.7362 - 56, 544, 416)


def image(height=416, width=544, seed=0):
    rng = np.random.default_rng(seed)
    # Smooth-ish content so that features vary across the image.
    low = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3)).astype(np.uint8)
    return np.ascontiguousarray(np.kron(low, np.ones((16, 16, 1), np.uint8))[:height, :width])


def reference_depthclip(clip, rgb, temperature=0.1, bins=PAPER_DEPTH_BINS_M):
    """A literal re-statement of the authors' MonoCLIP.forward for RN50 (fp32), written
    independently of depthclip_ros.engine.depthclip: open_clip's own trunk traversal, CLIP's text
    tower per prompt, F.interpolate for the channel reduction, softmax over dim 1."""
    with torch.no_grad():
        out = reference_weights(clip, rgb, temperature)
        out = out * torch.tensor(bins).reshape(1, len(bins), 1, 1)
        out = out.sum(1, keepdim=True)
        out = F.interpolate(out, size=rgb.shape[:2], mode='bilinear', align_corners=True)
    return out[0, 0].numpy()


def reference_weights(clip, rgb, temperature=0.1):
    """The softmax weights over the paper's K bins at the token grid, ``(1, K, h, w)``:
    the authors' computation up to the weighted sum."""
    import open_clip
    tokenizer = open_clip.get_tokenizer('RN50')
    with torch.no_grad():
        text_f = []
        for distance in PAPER_DISTANCE_PROMPTS:
            emb = clip.encode_text(tokenizer([f'This object is {distance}']))
            emb = emb / emb.norm(dim=-1, keepdim=True)
            emb = emb.mean(dim=0)
            text_f.append(emb / emb.norm())
        text_f = torch.stack(text_f, dim=1)  # (1024, K)
        x = torch.tensor(rgb).permute(2, 0, 1)[None].float() / 255.0
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        x = (x - mean) / std
        feats = clip.visual.forward_intermediates(x, indices=[4], intermediates_only=True)
        fmap = feats['image_intermediates'][-1]  # (1, 2048, 13, 17)
        h, w = fmap.shape[-2:]
        img_f = fmap.reshape(1, 2048, h * w).permute(2, 0, 1).permute(1, 0, 2)  # B, HW, C
        img_f = img_f / img_f.norm(dim=-1, keepdim=True)
        img_f = F.interpolate(img_f, scale_factor=0.5)
        logits = 100.0 * img_f @ text_f
        logits = logits.permute(0, 2, 1).reshape(-1, len(PAPER_DISTANCE_PROMPTS), h, w)
        logits /= temperature
        return F.softmax(logits, dim=1)


def test_paper_mode_equals_the_authors_computation(engine):
    rgb = image()
    ours = engine.predict(rgb, NYU_CROP)
    scale = NYU_CROP.mean_focal / NYU_FOCAL_PX
    ref = reference_depthclip(engine.clip, rgb) * scale
    assert ours.shape == (416, 544)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    # Not constant: the comparison is meaningful.
    assert ours.std() > 1e-4


def test_metric_scale_is_exact_for_nyu_and_doubles_with_focal(tiny_engine):
    rgb = image(seed=1)
    base = tiny_engine.predict(rgb, NYU_CROP)
    doubled = Intrinsics(2 * NYU_CROP.fx, 2 * NYU_CROP.fy, NYU_CROP.cx, NYU_CROP.cy, 544, 416)
    np.testing.assert_array_equal(tiny_engine.predict(rgb, doubled), 2 * base)
    canonical = Intrinsics(NYU_FOCAL_PX, NYU_FOCAL_PX, 272, 208, 544, 416)
    unscaled = tiny_engine.predict(rgb, canonical)
    np.testing.assert_allclose(base, unscaled * (NYU_CROP.mean_focal / NYU_FOCAL_PX), rtol=1e-6)


def test_focal_is_taken_at_the_network_input(tiny_engine):
    # A 1088x832 image of the same camera at twice the resolution has twice the focal in
    # pixels, but after resizing to 544x416 it is the same camera: same scale.
    rgb = image(seed=2)
    big = np.ascontiguousarray(np.kron(rgb, np.ones((2, 2, 1), np.uint8)))
    big_camera = Intrinsics(2 * NYU_CROP.fx, 2 * NYU_CROP.fy, 2 * NYU_CROP.cx, 2 * NYU_CROP.cy,
                            1088, 832)
    small = tiny_engine.predict(rgb, NYU_CROP)
    large = tiny_engine.predict(big, big_camera, output_size=(416, 544))
    assert np.median(large) == pytest.approx(np.median(small), rel=0.05)


def test_depth_stays_within_scaled_bins_and_temperature_limits(engine):
    rgb = image(seed=3)
    canonical = Intrinsics(NYU_FOCAL_PX, NYU_FOCAL_PX, 272, 208, 544, 416)
    depth = engine.predict(rgb, canonical)
    assert depth.min() >= 1.0 - 1e-5 and depth.max() <= 3.0 + 1e-5
    original = engine.head
    try:
        # The accepted extremes (TEMPERATURE_RANGE): near-uniform weights at the top...
        engine.set_head(head_with(original, temperature=TEMPERATURE_RANGE[1]))
        np.testing.assert_allclose(engine.predict(rgb, canonical), np.mean(PAPER_DEPTH_BINS_M),
                                   rtol=1e-2)
        # ... and argmax, one bin per token, at the bottom
        engine.set_head(head_with(original, temperature=TEMPERATURE_RANGE[0]))
        sharp = engine.predict(rgb, canonical, output_size=(13, 17))
        assert np.isin(np.round(sharp, 4), np.round(PAPER_DEPTH_BINS_M, 4)).mean() > 0.9
    finally:
        engine.set_head(original)


def test_changing_bins_and_temperature_reuses_model_and_text(tiny_engine):
    original = tiny_engine.head
    tiny_engine.encode_prompts(original.prompts())  # the newest entry of the text cache
    clip, runs = tiny_engine.clip, tiny_engine.text_encodings
    try:
        tiny_engine.set_head(head_with(original, depth_bins_m=[b * 2 for b in PAPER_DEPTH_BINS_M],
                                  temperature=0.2, canonical_focal_px=400.0))
        assert tiny_engine.text_encodings == runs and tiny_engine.clip is clip
        tiny_engine.set_head(head_with(original, distance_prompts=[f'{p}, said once' for p in
                                                              PAPER_DISTANCE_PROMPTS]))
        assert tiny_engine.text_encodings == runs + 1 and tiny_engine.clip is clip
    finally:
        tiny_engine.set_head(original)
    assert tiny_engine.text_encodings == runs + 1  # the original prompts' features are cached


def test_bins_scale_linearly(tiny_engine):
    rgb = image(seed=4)
    base = tiny_engine.predict(rgb, NYU_CROP)
    original = tiny_engine.head
    try:
        tiny_engine.set_head(head_with(original, depth_bins_m=[b * 3 for b in PAPER_DEPTH_BINS_M]))
        np.testing.assert_allclose(tiny_engine.predict(rgb, NYU_CROP), 3 * base, rtol=1e-5)
    finally:
        tiny_engine.set_head(original)


def test_flip_average_is_the_mean_of_both_predictions(tiny_engine):
    rgb = image(seed=5)
    plain = tiny_engine.predict(rgb, NYU_CROP)
    mirrored = tiny_engine.predict(np.ascontiguousarray(rgb[:, ::-1]), NYU_CROP)[:, ::-1]
    original = tiny_engine.head
    try:
        tiny_engine.set_head(head_with(original, flip_average=True))
        averaged = tiny_engine.predict(rgb, NYU_CROP)
        mirrored_avg = tiny_engine.predict(np.ascontiguousarray(rgb[:, ::-1]), NYU_CROP)[:, ::-1]
    finally:
        tiny_engine.set_head(original)
    np.testing.assert_allclose(averaged, 0.5 * (plain + mirrored), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(averaged, mirrored_avg, rtol=1e-5, atol=1e-6)
    assert np.abs(plain - mirrored).max() > 1e-4  # flipping matters for these weights


def test_batch_equals_single_frames(tiny_engine):
    frames = np.stack([image(seed=s) for s in (6, 7)])
    cameras = [NYU_CROP, Intrinsics(300.0, 300.0, 272, 208, 544, 416)]
    batch = tiny_engine.predict(frames, cameras)
    for frame, camera, depth in zip(frames, cameras, batch):
        np.testing.assert_allclose(depth, tiny_engine.predict(frame, camera), rtol=1e-4, atol=1e-5)


def test_any_image_size_and_output_size(tiny_engine):
    rgb = image(480, 640, seed=8)
    camera = Intrinsics(613.2, 613.4, 319.9, 239.2, 640, 480)
    assert tiny_engine.predict(rgb, camera).shape == (480, 640)
    assert tiny_engine.predict(rgb, camera, output_size=(120, 160)).shape == (120, 160)


def test_projected_mode_runs_on_the_attention_pool_projections(tiny_model):
    from depthclip_ros.engine.depthclip import DepthCLIP
    torch.manual_seed(0)
    projected = DepthCLIP(ModelConfig(model=tiny_model, pretrained='none', device='cpu',
                                      feature_mode='projected', input_size=(224, 288))).load()
    depth = projected.predict(image(224, 288), Intrinsics(NYU_FOCAL_PX, NYU_FOCAL_PX, 144, 112,
                                                          288, 224))
    assert depth.shape == (224, 288) and np.isfinite(depth).all()
    assert depth.min() >= 1.0 - 1e-5 and depth.max() <= 3.0 + 1e-5


@pytest.mark.parametrize('change, message', [
    (dict(depth_bins_m=[1.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), 'strictly increasing'),
    (dict(depth_bins_m=[-1.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), '> 0'),
    (dict(depth_bins_m=[1.0, 2.0]), 'one depth bin per distance prompt'),
    (dict(depth_bins_m=[1.0, float('nan'), 2.0, 3.0, 4.0, 5.0, 6.0]), 'finite'),
    (dict(temperature=0.0), 'temperature'),
    (dict(temperature=float('nan')), 'temperature'),
    (dict(canonical_focal_px=-5.0), 'canonical_focal_px'),
    (dict(prompt_template='This is {}'), 'two'),
    (dict(distance_prompts=['near', ''] + ['x'] * 5), 'non-empty'),
])
def test_invalid_head_values_are_rejected_with_a_reason(change, message):
    with pytest.raises(ValueError, match=message):
        head_with(HeadConfig(), **change)


@pytest.mark.parametrize('change, message', [
    (dict(feature_mode='dense'), 'feature_mode'), (dict(precision='int8'), 'precision'),
    (dict(device='gpu'), 'device'), (dict(input_size=(400, 544)), 'multiples of 32'),
    (dict(model='ViT-B-32'), 'ResNet'),
])
def test_invalid_model_config_is_rejected(change, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**change)


def test_construction_is_cheap_and_fp16_needs_cuda():
    from depthclip_ros.engine.depthclip import DepthCLIP
    engine = DepthCLIP(ModelConfig(pretrained='/nonexistent/weights.pt'))
    assert not engine.loaded  # nothing read yet
    with pytest.raises(RuntimeError, match='load'):
        engine.predict(image(), NYU_CROP)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='CUDA'):
            DepthCLIP(ModelConfig(pretrained='none', device='cpu', precision='fp16')).load()


def test_release_forgets_the_model_and_load_brings_it_back(tiny_model):
    from depthclip_ros.engine.depthclip import DepthCLIP
    engine = DepthCLIP(ModelConfig(model=tiny_model, pretrained='none', device='cpu',
                                   input_size=(64, 96)))
    engine.load()
    engine.encode_text(['a released sentence'])
    engine.release()
    assert not engine.loaded
    with pytest.raises(RuntimeError, match='load'):
        engine.clip  # noqa: B018 - the property raises
    with pytest.raises(RuntimeError, match='load'):
        engine.encode_text(['a released sentence'])
    engine.load()
    runs = engine.text_encodings
    engine.encode_text(['a released sentence'])  # the cache went with the model
    assert engine.text_encodings == runs + 1
    depth = engine.predict(image(seed=2), NYU_CROP, output_size=(13, 17))
    assert np.isfinite(depth).all()

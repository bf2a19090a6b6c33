"""Scene probabilities (docs/method.md §5) against open_clip's own zero-shot classification,
and the bin mixing.

Random weights: these tests check the computation, never what the probabilities mean.
"""

import math

import numpy as np
import open_clip
import pytest
import torch
from torchvision import transforms as T

from depthclip_ros.engine.config import (
    check_scene_template,
    MAX_SCENES,
    mix_bins,
    ModelConfig,
    SCENE_PROMPT_TEMPLATE,
    SceneEstimate,
)
from depthclip_ros.engine.depthclip import DepthCLIP, TEXT_CACHE
from depthclip_ros.engine.scenes import SceneClassifier

NAMES = ('kitchen', 'bathroom', 'bedroom', 'office', 'living room')
# (height, width): odd and non-square both ways, larger and smaller than CLIP's 224
SIZES = [(97, 151), (301, 203), (480, 640), (37, 53)]
# fp32 CPU, same weights: the embeddings come out identical, the probabilities within
# ~1e-6 (open_clip renormalises the one-template text mean). Random weights make the image
# embedding nearly constant across frames (cosine ~0.99999), so a wrong preprocessing moves
# the probabilities by only 1e-4..1e-2 and the embedding by 1e-5..1e-3: both are compared.
PROBABILITY_ATOL = 3e-6
EMBEDDING_ATOL = 1e-6
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def frame(height, width, seed=0):
    """A frame whose border differs from its centre (so a crop is not a squash): colour
    ramps along both axes, a bright disc off-centre, and noise."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:height, :width].astype(np.float32)
    red = 255 * cols / max(width - 1, 1)
    green = 255 * rows / max(height - 1, 1)
    blue = 255 * ((rows - 0.3 * height) ** 2 + (cols - 0.2 * width) ** 2
                  < (0.25 * min(height, width)) ** 2)
    rgb = np.stack([red, green, blue], axis=-1) + rng.normal(0, 20, (height, width, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


# ------------------------------------------------------------- open_clip's own recipe
@pytest.fixture(scope='module')
def open_clip_preprocess():
    """The eval transform open_clip itself hands out for RN50."""
    _, _, preprocess = open_clip.create_model_and_transforms('RN50', pretrained=None)
    return preprocess


def zero_shot_classifier(clip, names, template=lambda c: f'a photo of a {c}.'):
    """open_clip's zero-shot classifier ``(D, S)`` of ``names``, one template."""
    return open_clip.build_zero_shot_classifier(
        clip, open_clip.get_tokenizer('RN50'), list(names), templates=[template],
        num_classes_per_batch=None, device='cpu')


@pytest.fixture(scope='module')
def classifier(engine):
    return zero_shot_classifier(engine.clip, NAMES)


def reference(clip, preprocess, rgb, classifier):
    """open_clip's zero-shot classification of a PIL image: (probabilities, image feature)."""
    from PIL import Image

    with torch.no_grad():
        image = preprocess(Image.fromarray(rgb))[None]
        features = clip.encode_image(image, normalize=True)
        probabilities = (100.0 * features @ classifier).softmax(dim=-1)
    return probabilities[0].numpy(), features[0].numpy()


def variant(preprocess, *, imagenet_stats=False, squash=False, bilinear=False):
    """``preprocess`` with one thing done wrong (to show the comparison can fail)."""
    steps = list(preprocess.transforms)
    resize, crop = steps[0], steps[1]
    assert isinstance(resize, T.Resize) and isinstance(crop, T.CenterCrop)
    if squash:
        steps[0:2] = [T.Resize((224, 224), interpolation=resize.interpolation)]
    if bilinear:
        steps[0] = T.Resize(resize.size, interpolation=T.InterpolationMode.BILINEAR)
    if imagenet_stats:
        steps[-1] = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    return T.Compose(steps)


@pytest.fixture
def scenes(engine):
    return SceneClassifier(engine)


# ------------------------------------------------------------- the probabilities
def test_preprocess_is_open_clips_own(scenes, open_clip_preprocess):
    ours, theirs = scenes.preprocess, open_clip_preprocess
    assert repr(ours) == repr(theirs)
    assert 'CenterCrop' in repr(ours) and 'bicubic' in repr(ours)
    assert tuple(ours.transforms[-1].mean) == open_clip.OPENAI_DATASET_MEAN
    assert tuple(ours.transforms[-1].std) == open_clip.OPENAI_DATASET_STD


@pytest.mark.parametrize('size', SIZES)
def test_probabilities_are_open_clips_zero_shot(engine, scenes, open_clip_preprocess,
                                                 classifier, size):
    rgb = frame(*size)
    expected, expected_feature = reference(engine.clip, open_clip_preprocess, rgb,
                                           classifier)
    estimate = scenes.classify(rgb, NAMES)

    assert estimate.names == NAMES
    assert math.isclose(sum(estimate.probabilities), 1.0, abs_tol=1e-6)
    np.testing.assert_allclose(estimate.probabilities, expected, rtol=0,
                               atol=PROBABILITY_ATOL)
    feature = scenes.image_embedding(rgb).cpu().numpy()
    np.testing.assert_allclose(feature, expected_feature, rtol=0, atol=EMBEDDING_ATOL)
    assert estimate.chosen == NAMES[int(np.argmax(expected))]
    # random weights still separate the scenes enough for the comparison to mean something
    assert np.ptp(expected) > 0.01


@pytest.mark.parametrize('wrong', ['imagenet_stats', 'squash', 'bilinear'])
def test_the_comparison_notices_wrong_preprocessing(engine, scenes, open_clip_preprocess,
                                                    classifier, wrong):
    """The tolerances above are far tighter than what a wrong mean/std, a resize without
    the crop or another interpolation changes, on every test size: a wrong mean/std or no
    crop already shows in the probabilities, bilinear only in the embedding."""
    for size in SIZES:
        rgb = frame(*size)
        ours = np.asarray(scenes.classify(rgb, NAMES).probabilities)
        feature = scenes.image_embedding(rgb).cpu().numpy()
        broken, broken_feature = reference(
            engine.clip, variant(open_clip_preprocess, **{wrong: True}), rgb, classifier)
        assert np.abs(feature - broken_feature).max() > 10 * EMBEDDING_ATOL, (wrong, size)
        if wrong != 'bilinear':
            assert np.abs(ours - broken).max() > 20 * PROBABILITY_ATOL, (wrong, size)


def test_another_template_is_open_clips_too(engine, scenes, open_clip_preprocess):
    rgb = frame(120, 90, seed=3)
    names = ['street', 'corridor', 'classroom']
    robot = zero_shot_classifier(engine.clip, names, lambda c: f'an indoor {c}, seen by a robot')
    expected, _ = reference(engine.clip, open_clip_preprocess, rgb, robot)
    estimate = scenes.classify(rgb, names, 'an indoor {}, seen by a robot')
    np.testing.assert_allclose(estimate.probabilities, expected, rtol=0,
                               atol=PROBABILITY_ATOL)


def test_names_are_reordered_with_their_probabilities(scenes):
    rgb = frame(97, 151)
    forward = scenes.classify(rgb, NAMES).as_dict()
    backward = scenes.classify(rgb, NAMES[::-1]).as_dict()
    assert list(backward) == list(NAMES[::-1])
    for name in NAMES:
        assert backward[name] == pytest.approx(forward[name], abs=1e-6)


def test_the_frame_matters(scenes):
    one, other = frame(97, 151, seed=0), frame(97, 151, seed=1)[::-1, ::-1].copy()
    a = scenes.classify(one, NAMES).probabilities
    b = scenes.classify(other, NAMES).probabilities
    assert np.abs(np.subtract(a, b)).max() > 10 * PROBABILITY_ATOL
    difference = scenes.image_embedding(one) - scenes.image_embedding(other)
    assert difference.abs().max() > 10 * EMBEDDING_ATOL


def test_runs_without_autograd_and_accepts_views(scenes):
    rgb = frame(100, 160)
    view = rgb[:, ::2]  # not contiguous
    assert not view.flags['C_CONTIGUOUS']
    feature = scenes.image_embedding(view)
    assert torch.is_inference(feature) and not feature.requires_grad
    np.testing.assert_allclose(
        scenes.classify(view, NAMES).probabilities,
        scenes.classify(np.ascontiguousarray(view), NAMES).probabilities, atol=1e-7)


def test_shares_the_engine_and_loads_nothing(engine):
    unloaded = DepthCLIP(ModelConfig(pretrained='none', device='cpu'))
    classifier = SceneClassifier(unloaded)
    assert not unloaded.loaded
    with pytest.raises(RuntimeError, match='load'):
        classifier.classify(frame(50, 60), NAMES)
    shared = SceneClassifier(engine)
    assert shared.engine is engine
    with pytest.raises(TypeError):
        SceneClassifier(engine.clip)


# ------------------------------------------------------------- the text cache
def test_text_encoder_runs_once_per_names_and_template(engine, monkeypatch):
    """The scene texts go through the engine's one bounded text cache."""
    calls = []
    encode_text = engine.clip.encode_text

    def counting(*args, **kwargs):
        calls.append(args[0].shape[0])
        return encode_text(*args, **kwargs)

    monkeypatch.setattr(engine.clip, 'encode_text', counting)
    names = ('a scullery', 'a vestibule', 'a belfry')  # in no other test: not cached yet
    scenes = SceneClassifier(engine)
    runs = engine.text_encodings
    first = scenes.classify(frame(97, 151), names)
    again = scenes.classify(frame(97, 151), list(names))  # a list is the same key
    scenes.classify(frame(64, 64, seed=5), names)
    assert calls == [len(names)] and engine.text_encodings == runs + 1
    assert again == first
    SceneClassifier(engine).classify(frame(64, 64), names)  # shared by every classifier
    assert len(calls) == 1

    scenes.classify(frame(97, 151), names, 'a picture of a {}')
    scenes.classify(frame(97, 151), names[:2])
    assert len(calls) == 3 == engine.text_encodings - runs

    # bounded: after TEXT_CACHE other keys, the first is encoded again
    for i in range(TEXT_CACHE):
        scenes.text_features(['a hall', f'a room {i}'])
    assert len(calls) == 3 + TEXT_CACHE
    scenes.text_features(['a hall', f'a room {TEXT_CACHE - 1}'])  # the newest is still there
    assert len(calls) == 3 + TEXT_CACHE
    scenes.classify(frame(40, 40), names)
    assert len(calls) == 4 + TEXT_CACHE


def test_a_bad_call_encodes_nothing(engine, monkeypatch):
    calls = []
    monkeypatch.setattr(engine.clip, 'encode_text', lambda *a, **k: calls.append(a))
    scenes = SceneClassifier(engine)
    with pytest.raises(ValueError):
        scenes.classify(frame(40, 40), ['kitchen', 'kitchen'])
    with pytest.raises(ValueError):
        scenes.classify(frame(40, 40), NAMES, 'no field')
    assert calls == []


# ------------------------------------------------------------- validation
@pytest.mark.parametrize('names, match', [
    ([], 'at least 2'),
    (['kitchen'], 'at least 2'),
    (['kitchen', ''], 'non-empty'),
    (['kitchen', '   '], 'non-empty'),
    (['kitchen', 3], 'non-empty'),
    (['kitchen', None], 'non-empty'),
    (['kitchen', 'office', 'kitchen'], 'unique'),
    (['kitchen', 'kitchen '], 'unique'),
    ([f'room {i}' for i in range(MAX_SCENES + 1)], f'at most {MAX_SCENES}'),
])
def test_bad_names(scenes, names, match):
    with pytest.raises(ValueError, match=match):
        scenes.classify(frame(40, 40), names)


def test_one_string_is_not_a_list_of_names(scenes):
    with pytest.raises(TypeError, match='not one string'):
        scenes.classify(frame(40, 40), 'kitchen')


@pytest.mark.parametrize('template', [
    'a photo', 'a {} and a {}', '{0}', '{name}', '{:>999999999}', '{!r}', '{.real}',
    '{[0]}', 'a {', 'a }', 5, None,
])
def test_bad_templates(scenes, template):
    with pytest.raises(ValueError, match='exactly one plain field'):
        scenes.classify(frame(40, 40), NAMES, template)


def test_good_templates():
    for template in (SCENE_PROMPT_TEMPLATE, '{}', 'a {{braced}} {} here'):
        assert check_scene_template(template) == template


def test_prompts_must_fit_the_text_context(scenes):
    long_name = ' '.join(['x'] * 80)  # under 300 characters, over 77 tokens
    assert len(SCENE_PROMPT_TEMPLATE.format(long_name)) < 300
    with pytest.raises(ValueError, match='scene prompt .*context of 77 tokens'):
        scenes.classify(frame(40, 40), ['office', long_name])
    with pytest.raises(ValueError, match='characters'):
        scenes.classify(frame(40, 40), ['office', 'x' * 400])
    with pytest.raises(ValueError, match='scene prompt .*context'):
        scenes.classify(frame(40, 40), NAMES, 'a ' * 80 + '{}')


@pytest.mark.parametrize('rgb', [
    np.zeros((40, 40, 3), np.float32), np.zeros((40, 40), np.uint8),
    np.zeros((40, 40, 4), np.uint8), np.zeros((0, 40, 3), np.uint8),
    np.zeros((2, 40, 40, 3), np.uint8), [[[0, 0, 0]]],
])
def test_bad_frames(scenes, rgb):
    with pytest.raises(ValueError, match='rgb must be'):
        scenes.classify(rgb, NAMES)


# ------------------------------------------------------------- the estimate
def test_estimate():
    estimate = SceneEstimate(('a', 'b', 'c'), (0.2, 0.5, 0.3))
    assert estimate.chosen == 'b' and estimate.best == 1
    assert list(estimate.as_dict().items()) == [('a', 0.2), ('b', 0.5), ('c', 0.3)]
    assert SceneEstimate(('a', 'b', 'c'), (0.4, 0.2, 0.4)).chosen == 'a'  # first of ties
    assert SceneEstimate(['a', 'b'], [0.5, 0.5]).names == ('a', 'b')  # tuples, hashable
    with pytest.raises(ValueError):
        SceneEstimate(('a', 'b'), (1.0,))


# ------------------------------------------------------------- mixing bins
PAPER_BINS = (1.00, 1.50, 2.00, 2.25, 2.50, 2.75, 3.00)
BATHROOM_BINS = (1.00, 1.25, 1.50, 1.75, 2.00, 2.25, 2.50)


def test_soft_mix_by_hand():
    assert mix_bins((0.25, 0.75), [(1, 2, 3), (2, 4, 6)], 'scene_soft') == \
        pytest.approx((1.75, 3.5, 5.25), abs=1e-12)
    mixed = mix_bins((0.5, 0.5), [PAPER_BINS, BATHROOM_BINS], 'scene_soft')
    assert mixed == pytest.approx((1.0, 1.375, 1.75, 2.0, 2.25, 2.5, 2.75), abs=1e-12)
    assert mix_bins((0.0, 1.0), [PAPER_BINS, BATHROOM_BINS], 'scene_soft') == BATHROOM_BINS
    assert mix_bins((0.1, 0.2, 0.7), [(1, 2), (3, 5), (10, 20)], 'scene_soft') == \
        pytest.approx((0.1 + 0.6 + 7.0, 0.2 + 1.0 + 14.0), abs=1e-12)


def test_hard_mix_by_hand():
    sets = [PAPER_BINS, BATHROOM_BINS]
    assert mix_bins((0.3, 0.7), sets, 'scene_hard') == BATHROOM_BINS
    assert mix_bins((0.7, 0.3), sets, 'scene_hard') == PAPER_BINS
    assert mix_bins((0.5, 0.5), sets, 'scene_hard') == PAPER_BINS  # first of ties
    assert mix_bins((0.25, 0.5, 0.25), [(1, 2), (3, 4), (5, 6)], 'scene_hard') == (3.0, 4.0)


def test_mix_takes_an_estimate():
    estimate = SceneEstimate(('kitchen', 'bathroom'), (0.25, 0.75))
    assert mix_bins(estimate, [(1, 2, 3), (2, 4, 6)], 'scene_soft') == \
        pytest.approx((1.75, 3.5, 5.25))
    assert mix_bins(estimate, [(1, 2, 3), (2, 4, 6)], 'scene_hard') == (2.0, 4.0, 6.0)
    result = mix_bins(estimate, [(1, 2, 3), (2, 4, 6)], 'scene_soft')
    assert isinstance(result, tuple) and all(type(b) is float for b in result)


def test_mixing_keeps_bins_strictly_increasing():
    rng = np.random.default_rng(7)
    for _ in range(200):
        scenes, bins = rng.integers(2, 6), rng.integers(2, 10)
        sets = np.cumsum(rng.uniform(1e-3, 1.0, (scenes, bins)), axis=1) + 0.5
        p = rng.dirichlet(np.full(scenes, 0.3))
        for mode in ('scene_soft', 'scene_hard'):
            mixed = mix_bins(tuple(p / p.sum()), sets.tolist(), mode)
            assert len(mixed) == bins
            assert all(b1 > b0 for b0, b1 in zip(mixed, mixed[1:])), (mode, mixed)


@pytest.mark.parametrize('probabilities, sets, mode', [
    ((0.5, 0.5), [(1, 2), (3, 4)], 'soft'),
    ((0.5, 0.5), [(1, 2), (3, 4)], 'scene'),
    ((0.5, 0.5), [(1, 2), (3, 4)], None),
    ((0.2, 0.3, 0.5), [(1, 2), (3, 4)], 'scene_soft'),  # 3 scenes, 2 bin sets
    ((0.5, 0.5), [(1, 2), (3, 4), (5, 6)], 'scene_hard'),  # 2 scenes, 3 bin sets
    ((0.5, 0.5), [(1, 2), (3, 4, 5)], 'scene_soft'),  # ragged
    ((0.5, 0.5), [(), ()], 'scene_soft'),
    ((0.5, 0.6), [(1, 2), (3, 4)], 'scene_soft'),  # does not sum to 1
    ((1.5, -0.5), [(1, 2), (3, 4)], 'scene_soft'),
    ((float('nan'), 1.0), [(1, 2), (3, 4)], 'scene_hard'),
    ((0.5, 0.5), [(1, float('inf')), (3, 4)], 'scene_soft'),
    ((0.5, 0.5), [(1, 'x'), (3, 4)], 'scene_soft'),
    ((), [], 'scene_soft'),
])
def test_mix_errors(probabilities, sets, mode):
    with pytest.raises(ValueError):
        mix_bins(probabilities, sets, mode)

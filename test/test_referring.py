"""The referring engine against an independent re-statement of docs/method.md §3 (on RN50,
``engine``); its mechanics (selection, refusals, the text cache, batching) on the tests'
tiny model (``small_engine``).

Random weights: these tests check the computation, never what the scores mean.
"""

import copy

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from depthclip_ros.engine.depthclip import TEXT_CACHE
from depthclip_ros.geometry import Intrinsics
from depthclip_ros.objects.queries import check_queries, MAX_QUERIES
from depthclip_ros.objects.referring import attention_pool, masked_attention_pool, ReferringCLIP

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def scene(height=70, width=84, seed=0):
    """An RGB image and three masks (a rectangle, a disc, the rest)."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    rows, cols = np.mgrid[:height, :width]
    box = (rows >= 5) & (rows < 30) & (cols >= 8) & (cols < 40)
    disc = (rows - 48) ** 2 + (cols - 60) ** 2 < 15 ** 2
    rest = ~(box | disc)
    return rgb, np.stack([box, disc, rest])


# ------------------------------------------------------------- the re-statement
def reference_text(clip, sentence, phrase, beta):
    tokenizer = open_clip.get_tokenizer('RN50')
    with torch.no_grad():
        s = clip.encode_text(tokenizer([sentence])).float()[0]
        p = clip.encode_text(tokenizer([phrase])).float()[0]
    return beta * s / s.norm() + (1 - beta) * p / p.norm()


def normalised(rgb):
    """(H, W, 3) uint8 -> (3, H, W) in ImageNet-normalised units."""
    return (torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0 - MEAN) / STD


def cell_fractions(mask, grid):
    """Fraction of each token cell inside the mask (image sides divisible by the grid)."""
    h, w = mask.shape
    gh, gw = grid
    blocks = mask.reshape(gh, h // gh, gw, w // gw)
    return torch.from_numpy(blocks.mean(axis=(1, 3)).astype(np.float32))


def reference_global(clip, rgb, mask, size, pool):
    x = TF.resize(torch.from_numpy(rgb).permute(2, 0, 1).float(), list(size),
                  interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    x = ((x / 255.0 - MEAN) / STD)[None]
    v = clip.visual
    with torch.no_grad():
        fmap = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(x)))))
        fmap = fmap / fmap.norm(dim=1, keepdim=True)
        grid = tuple(fmap.shape[-2:])
        return pool(fmap * cell_fractions(mask, grid))[0]


def reference_local(clip, rgb, mask):
    image = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0
    m = torch.from_numpy(mask).float()
    filled = image * m + (1 - m) * MEAN  # the mean colour outside the mask
    rows, cols = np.nonzero(mask)
    top, left = rows.min(), cols.min()
    crop = TF.resized_crop(filled, int(top), int(left), int(rows.max() - top + 1),
                           int(cols.max() - left + 1), [224, 224],
                           interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    with torch.no_grad():
        f = clip.encode_image(((crop - MEAN) / STD)[None]).float()[0]
    return f / f.norm()


def resized_pool(pool, grid):
    """A copy of CLIP's attention pool whose positional embedding is resized to ``grid``
    with torchvision (bilinear), run through the module's own forward."""
    pool = copy.deepcopy(pool)
    table = pool.positional_embedding.data
    side = int(round((table.shape[0] - 1) ** 0.5))
    spatial = table[1:].T.reshape(-1, side, side)
    spatial = TF.resize(spatial, list(grid), interpolation=TF.InterpolationMode.BILINEAR,
                        antialias=False)
    pool.positional_embedding = torch.nn.Parameter(
        torch.cat([table[:1], spatial.reshape(table.shape[1], -1).T]))
    return pool


# ------------------------------------------------------------- tests
def test_paper_protocol_scores_equal_the_restatement(engine):
    rgb, masks = scene()
    referring = ReferringCLIP(engine, alpha=0.7, beta=0.4)
    sentence, phrase = 'the red chair next to the door', 'the red chair'
    [referral] = referring.refer(rgb, masks, [3, 5, 9], [sentence], [phrase],
                                 protocol='paper')
    clip = engine.clip
    t = reference_text(clip, sentence, phrase, 0.4)
    expected = []
    for mask in masks:
        f = (0.7 * reference_global(clip, rgb, mask, (224, 224), clip.visual.attnpool)
             + 0.3 * reference_local(clip, rgb, mask))
        expected.append(100.0 * float(f @ t))
    np.testing.assert_allclose(referral.scores, expected, rtol=1e-4, atol=1e-3)
    assert referral.labels == (3, 5, 9)
    assert referral.noun_phrase == phrase
    assert referral.label == (3, 5, 9)[int(np.argmax(expected))]


def test_node_protocol_reuses_the_depth_pass_with_a_resized_positional_embedding(engine):
    net_h, net_w = engine.config.input_size
    grid = (net_h // 32, net_w // 32)
    # an image whose sides divide evenly into the token grid: exact cell fractions
    rgb, masks = scene(height=grid[0] * 6, width=grid[1] * 5, seed=1)
    camera = Intrinsics(fx=60.0, fy=60.0, cx=rgb.shape[1] / 2, cy=rgb.shape[0] / 2,
                        width=rgb.shape[1], height=rgb.shape[0])
    prediction = engine.infer(rgb, camera)
    depth, tokens = prediction.depth, prediction.tokens
    assert tuple(tokens.shape[-2:]) == grid
    np.testing.assert_array_equal(depth, engine.predict(rgb, camera))

    referring = ReferringCLIP(engine, alpha=1.0, beta=0.5)  # global feature only
    [referral] = referring.refer(rgb, masks, [1, 2, 3], ['a mug'], ['a mug'],
                                 protocol='node', tokens=tokens)
    clip = engine.clip
    pool = resized_pool(clip.visual.attnpool, grid)
    t = reference_text(clip, 'a mug', 'a mug', 0.5)
    expected = [100.0 * float(reference_global(clip, rgb, m, (net_h, net_w), pool) @ t)
                for m in masks]
    np.testing.assert_allclose(referral.scores, expected, rtol=1e-4, atol=1e-3)


def test_attention_pool_at_the_trained_grid_is_clips_own(engine):
    pool = engine.clip.visual.attnpool
    x = torch.randn(2, pool.k_proj.in_features, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(attention_pool(pool, x), pool(x), rtol=1e-5, atol=1e-5)


def test_attention_pool_at_another_grid_resizes_the_positional_embedding(engine):
    """Against torchvision's bilinear resize of the table, run through CLIP's own forward;
    the table is amplified so that its resizing dominates the output (random weights make
    it small)."""
    pool = copy.deepcopy(engine.clip.visual.attnpool)
    pool.positional_embedding.data *= 50.0
    x = F.normalize(torch.randn(2, pool.k_proj.in_features, 13, 17), dim=1)
    with torch.no_grad():
        torch.testing.assert_close(attention_pool(pool, x), resized_pool(pool, (13, 17))(x),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('grid', [(7, 7), (13, 17), (13, 17), (4, 6)])
def test_all_masks_pooled_at_once_equal_each_masked_map_through_the_pool(engine, grid):
    """masked_attention_pool (the keys and values projected once per image) against the
    pool run on each masked map: the same numbers, at the trained grid and others (the
    repeated grid reads the remembered position projections); a mask of zeros and one of
    ones included. The positional table is amplified so that it weighs in the output."""
    pool = copy.deepcopy(engine.clip.visual.attnpool)
    pool.positional_embedding.data *= 20.0
    generator = torch.Generator().manual_seed(grid[0] * grid[1])
    x = F.normalize(torch.randn(pool.k_proj.in_features, *grid, generator=generator), dim=0)
    cells = torch.rand(5, *grid, generator=generator)
    cells[1] = 0.0
    cells[2] = 1.0
    cells[3] *= cells[3] > 0.5
    with torch.no_grad():
        expected = attention_pool(pool, x[None] * cells[:, None])
        got = masked_attention_pool(pool, x, cells)
    assert got.shape == expected.shape and got.dtype == torch.float32
    scale = expected.abs().max()  # random weights give small outputs: relative to them
    torch.testing.assert_close(got / scale, expected / scale, rtol=1e-5, atol=1e-6)


def test_the_text_feature_mixes_sentence_and_noun_phrase(engine):
    referring = ReferringCLIP(engine, beta=0.25)
    t = referring.text_feature('man in blue shirt', 'man')
    torch.testing.assert_close(t, reference_text(engine.clip, 'man in blue shirt', 'man',
                                                 0.25), rtol=1e-5, atol=1e-6)


def test_selection_follows_the_features(small_engine, monkeypatch):
    """A stub encoder that makes a known mask win: the answer and the margin follow."""
    rgb, masks = scene()
    referring = ReferringCLIP(small_engine)
    dim = 4
    visual = torch.eye(dim)[:3] * torch.tensor([[1.0], [2.0], [3.0]])
    texts = {'first': torch.tensor([1.0, 0, 0, 0]), 'last': torch.tensor([0.0, 0.1, 0.5, 0])}
    monkeypatch.setattr(referring, 'mask_features', lambda *a, **k: visual)
    monkeypatch.setattr(referring, 'sentence_features',
                        lambda sentence, phrase: (texts[sentence], texts[sentence]))
    first, last = referring.refer(rgb, masks, [10, 20, 30], ['first', 'last'],
                                  ['first', 'last'])
    assert first.label == 10 and first.score == pytest.approx(100.0)
    assert first.margin == pytest.approx(100.0)
    assert last.label == 30 and last.score == pytest.approx(150.0)
    assert last.margin == pytest.approx(150.0 - 20.0)


def test_no_candidates_and_one_candidate(small_engine):
    rgb, masks = scene()
    referring = ReferringCLIP(small_engine)
    [none] = referring.refer(rgb, masks[:0], [], ['a cup'], ['a cup'])
    assert none.labels == () and none.scores == ()
    [one] = referring.refer(rgb, masks[:1], [7], ['a cup'], ['a cup'], protocol='paper')
    assert one.label == 7 and one.margin is None


def test_bad_arguments_are_refused(small_engine):
    rgb, masks = scene()
    referring = ReferringCLIP(small_engine)
    with pytest.raises(ValueError, match='tokens'):
        referring.refer(rgb, masks, [1, 2, 3], ['a cup'], ['a cup'], protocol='node')
    with pytest.raises(ValueError, match='protocol'):
        referring.refer(rgb, masks, [1, 2, 3], ['a cup'], ['a cup'], protocol='fast')
    with pytest.raises(ValueError, match='labels'):
        referring.refer(rgb, masks, [1, 2], ['a cup'], ['a cup'])
    empty = masks.copy()
    empty[1] = False
    with pytest.raises(ValueError, match='empty'):
        referring.refer(rgb, empty, [1, 2, 3], ['a cup'], ['a cup'])
    with pytest.raises(ValueError, match='bool'):
        referring.refer(rgb, masks.astype(np.uint8), [1, 2, 3], ['a cup'], ['a cup'])
    with pytest.raises(ValueError, match='context'):
        referring.refer(rgb, masks, [1, 2, 3], ['a,' * 100], ['cup'])
    for alpha in (-0.1, 1.5, float('nan'), True, '0.5'):
        with pytest.raises(ValueError, match='alpha'):
            ReferringCLIP(small_engine, alpha=alpha)
    with pytest.raises(ValueError, match='at most'):
        check_queries(['a'] * (MAX_QUERIES + 1))
    with pytest.raises(ValueError, match='non-empty'):
        check_queries(['a cup', '  '])
    with pytest.raises(TypeError):
        check_queries('a cup')


def test_text_features_are_remembered_by_the_engine(small_engine):
    referring = ReferringCLIP(small_engine)
    runs = small_engine.text_encodings
    referring.text_feature('a teapot on a stool', 'a teapot')
    referring.text_feature('a teapot on a stool', 'a teapot')
    ReferringCLIP(small_engine).text_feature('a teapot on a stool', 'a teapot')
    assert small_engine.text_encodings == runs + 1
    for i in range(TEXT_CACHE + 5):
        referring.sentence_features(f'thing {i}', 'thing')
    assert small_engine.text_encodings == runs + 1 + TEXT_CACHE + 5
    referring.text_feature('a teapot on a stool', 'a teapot')  # evicted: encoded again
    assert small_engine.text_encodings == runs + 2 + TEXT_CACHE + 5


def test_local_crops_are_batched_and_independent_of_batching(small_engine, monkeypatch):
    import depthclip_ros.objects.referring as referring_module

    rgb, masks = scene(seed=3)
    referring = ReferringCLIP(small_engine)
    together = referring.local_features(rgb, masks)
    monkeypatch.setattr(referring_module, 'LOCAL_BATCH', 1)
    apart = referring.local_features(rgb, masks)
    torch.testing.assert_close(together, apart, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(together.norm(dim=-1).numpy(), 1.0, rtol=1e-5)
    assert F.cosine_similarity(together[0], apart[0], dim=0) > 0.9999

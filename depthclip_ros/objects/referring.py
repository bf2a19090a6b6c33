"""Language-referred objects: which candidate mask does a sentence describe?

Zero-shot referring image segmentation with CLIP's global-local context features (Yu,
Seo and Son, CVPR 2023), as stated in docs/method.md §3, on the CLIP already loaded
by the depth engine (:class:`~depthclip_ros.engine.depthclip.DepthCLIP`): nothing is loaded twice.

For a mask ``m`` of an image ``I`` and a referring expression ``T``:

- global feature ``f_G = attnpool(norm(F) * m_grid)``: ``F`` the trunk's last feature map,
  every token L2-normalised, ``m_grid`` the fraction of each token cell inside the mask,
  CLIP's own attention pool (positional embedding resized to the grid when it is not
  7x7); not normalised, as the authors do;
- local feature ``f_L = norm(encode_image(crop224(I * m + mean * (1 - m))))``: outside the
  mask the mean colour (zero after normalisation), cropped to the mask's bounding box,
  resized to 224x224;
- ``f = alpha * f_G + (1 - alpha) * f_L`` and ``t = beta * norm(E(T)) + (1 - beta) *
  norm(E(NP(T)))`` with ``NP`` the noun phrase holding the sentence's root
  (:mod:`~depthclip_ros.objects.phrases`);
- score ``s(m) = 100 * f . t``; the answer is the best-scoring mask.

Two protocols for ``F``: ``paper`` runs the trunk on the image resized to 224x224 (the
paper's setting, one extra trunk pass); ``node`` reuses the feature map of the depth pass
at the engine's input size (no extra trunk pass; the setting of the node).

With random weights (``pretrained='none'``) every score is meaningless; callers say so.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Sequence
import weakref

import numpy as np
import torch
import torch.nn.functional as F

from depthclip_ros.engine.config import CLIP_LOGIT_SCALE
from depthclip_ros.engine.depthclip import DepthCLIP
from depthclip_ros.objects.phrases import noun_phrase as extract_noun_phrase
from depthclip_ros.objects.queries import (
    check_mix,
    check_protocol,
    check_queries,
    DEFAULT_ALPHA,
    DEFAULT_BETA,
)

PAPER_INPUT_SIZE = (224, 224)  # the paper's CLIP input, global and local
LOCAL_BATCH = 8  # crops encoded per forward pass: bounds activation memory


@dataclass(frozen=True)
class Referral:
    """One query's answer over the candidate masks of one frame."""

    query: str
    noun_phrase: str
    labels: tuple[int, ...]  # candidate ids, in the order of ``scores``
    scores: tuple[float, ...]  # 100 * f . t per candidate

    @property
    def best(self) -> int:
        """Position of the best candidate in :attr:`labels` (the first of equal scores)."""
        return int(np.argmax(self.scores))

    @property
    def label(self) -> int:
        return self.labels[self.best]

    @property
    def score(self) -> float:
        return self.scores[self.best]

    @property
    def margin(self) -> float | None:
        """Best score minus the runner-up's; ``None`` with fewer than two candidates."""
        if len(self.scores) < 2:
            return None
        top = sorted(self.scores, reverse=True)
        return top[0] - top[1]



class ReferringCLIP:
    """Scores candidate masks against referring expressions with the depth engine's CLIP.

    ``engine`` must be loaded (or be loaded before the first call); its weights, device and
    precision are shared, never copied.
    """

    def __init__(self, engine: DepthCLIP, alpha: float = DEFAULT_ALPHA,
                 beta: float = DEFAULT_BETA, parser: str = 'auto'):
        self.engine = engine
        self.alpha = check_mix('alpha', alpha)
        self.beta = check_mix('beta', beta)
        self.parser = parser

    # ------------------------------------------------------------------ text side
    def noun_phrase(self, sentence: str, given: str | None = None) -> str:
        """The given noun phrase, else the one extracted from ``sentence``."""
        if given is not None:
            if not isinstance(given, str) or not given.strip():
                raise ValueError(f'noun phrase must be a non-empty string, got {given!r}')
            return given.strip()
        return extract_noun_phrase(sentence, self.parser)

    def check_text(self, sentence: str) -> None:
        """Raise ``ValueError`` if ``sentence`` does not fit CLIP's text context."""
        self.engine.check_text(sentence, 'query')

    def sentence_features(self, sentence: str, noun_phrase: str) -> tuple[torch.Tensor,
                                                                           torch.Tensor]:
        """``norm(E(sentence))`` and ``norm(E(noun_phrase))``, float32 ``(D,)`` each (the
        engine remembers recent ones)."""
        for text in (sentence, noun_phrase):
            self.check_text(text)
        embedded = self.engine.encode_text([sentence, noun_phrase])
        return embedded[0], embedded[1]

    def text_feature(self, sentence: str, noun_phrase: str) -> torch.Tensor:
        """``t = beta * norm(E(sentence)) + (1 - beta) * norm(E(noun phrase))``."""
        sentence_f, phrase_f = self.sentence_features(sentence, noun_phrase)
        return self.beta * sentence_f + (1.0 - self.beta) * phrase_f

    # ------------------------------------------------------------------ image side
    @torch.inference_mode()
    def trunk_tokens(self, rgb: np.ndarray, size: tuple[int, int] = PAPER_INPUT_SIZE
                     ) -> torch.Tensor:
        """The trunk's last feature map ``(1, C, h, w)`` of ``rgb`` resized to ``size``."""
        x = self.engine.preprocess(_batch_of_one(rgb), size)
        return self.engine.image_tokens(x)

    @torch.inference_mode()
    def global_features(self, tokens: torch.Tensor, masks: np.ndarray) -> torch.Tensor:
        """``f_G`` for every mask: ``(N, D)`` float32, not normalised.

        ``tokens`` ``(1, C, h, w)``: the trunk's map of the whole image; ``masks`` ``(N, H,
        W)`` bool at the image's size (the map covers the whole image at any input size).
        """
        masks_t = torch.from_numpy(np.ascontiguousarray(masks)).to(tokens.device)
        grid = tuple(tokens.shape[-2:])
        # fraction of each token cell inside the mask (area averaging)
        cells = F.interpolate(masks_t[:, None].float(), size=grid, mode='area')
        normalised = F.normalize(tokens.float(), dim=1)  # (1, C, h, w)
        return masked_attention_pool(self.engine.attention_pool, normalised[0], cells[:, 0])

    @torch.inference_mode()
    def local_features(self, rgb: np.ndarray, masks: np.ndarray) -> torch.Tensor:
        """``f_L`` for every mask: ``(N, D)`` float32, L2-normalised. The crops are encoded
        ``LOCAL_BATCH`` at a time."""
        engine = self.engine
        image = engine.normalise(torch.from_numpy(_batch_of_one(rgb)).to(engine.device)
                                 .permute(0, 3, 1, 2).float())[0].float()  # (3, H, W)
        features = []
        for start in range(0, len(masks), LOCAL_BATCH):
            crops = torch.stack([_masked_crop(image, mask)
                                 for mask in masks[start:start + LOCAL_BATCH]])
            features.append(engine.encode_image(crops, normalize=True))
        return torch.cat(features)

    def mask_features(self, rgb: np.ndarray, masks: np.ndarray, protocol: str = 'paper',
                      tokens: torch.Tensor | None = None) -> torch.Tensor:
        """``f = alpha * f_G + (1 - alpha) * f_L`` for every mask, ``(N, D)`` float32.

        ``protocol='node'`` needs ``tokens``, the depth pass's feature map of ``rgb``.
        """
        check_protocol(protocol)
        rgb, masks = _check_image_and_masks(rgb, masks)
        if protocol == 'node':
            if tokens is None:
                raise ValueError("protocol 'node' reuses the depth pass's feature map: pass "
                                 'tokens (DepthCLIP.infer(...).tokens)')
            tokens = tokens[:1]
        else:
            tokens = self.trunk_tokens(rgb)
        global_f = self.global_features(tokens, masks)
        if self.alpha == 1.0:
            return global_f
        return self.alpha * global_f + (1.0 - self.alpha) * self.local_features(rgb, masks)

    # ------------------------------------------------------------------ scoring
    def refer(self, rgb: np.ndarray, masks: np.ndarray, labels: Sequence[int],
              queries: Sequence[str], noun_phrases: Sequence[str | None] | None = None,
              protocol: str = 'paper', tokens: torch.Tensor | None = None
              ) -> list[Referral]:
        """Score every mask against every query; one :class:`Referral` per query.

        ``masks`` ``(N, H, W)`` bool with ids ``labels`` ``(N,)``; ``noun_phrases``: one per
        query, ``None`` to extract it. No mask (``N == 0``) gives referrals with no
        candidates.
        """
        queries = check_queries(queries)
        phrases = list(noun_phrases) if noun_phrases is not None else [None] * len(queries)
        if len(phrases) != len(queries):
            raise ValueError(f'{len(queries)} queries but {len(phrases)} noun phrases')
        labels = tuple(int(label) for label in labels)
        if len(labels) != len(masks):
            raise ValueError(f'{len(masks)} masks but {len(labels)} labels')
        phrases = [self.noun_phrase(q, p) for q, p in zip(queries, phrases)]
        texts = [self.text_feature(q, p) for q, p in zip(queries, phrases)]
        if not labels:
            return [Referral(q, p, (), ()) for q, p in zip(queries, phrases)]
        visual = self.mask_features(rgb, masks, protocol, tokens)  # (N, D)
        scores = score_matrix(visual, torch.stack(texts))  # (Q, N)
        return [Referral(q, p, labels, tuple(float(s) for s in row))
                for q, p, row in zip(queries, phrases, scores.cpu().numpy())]


def score_matrix(visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``s = 100 * f . t`` for every (query, mask): ``(Q, N)`` float32."""
    return CLIP_LOGIT_SCALE * (text.float() @ visual.float().t())


def attention_pool(pool: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """CLIP's ``AttentionPool2d`` on a ``(N, C, h, w)`` map of any grid size.

    The same computation as the module's own ``forward`` (query: the mean token; keys and
    values: the mean and every token, plus the positional embedding), except that the
    positional embedding's spatial part is resized to ``(h, w)`` (bilinear,
    ``align_corners=False``) when it was trained for another grid.
    """
    batch, channels, height, width = x.shape
    tokens = x.flatten(2).permute(2, 0, 1)  # (hw, N, C)
    tokens = torch.cat([tokens.mean(dim=0, keepdim=True), tokens])  # (hw + 1, N, C)
    tokens = tokens + positional_embedding(pool, (height, width))[:, None].to(x.dtype)
    out, _ = F.multi_head_attention_forward(
        query=tokens[:1], key=tokens, value=tokens, embed_dim_to_check=channels,
        num_heads=pool.num_heads, q_proj_weight=pool.q_proj.weight,
        k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None,
        in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
        out_proj_weight=pool.c_proj.weight, out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True, training=False, need_weights=False)
    return out[0]


def masked_attention_pool(pool: torch.nn.Module, x: torch.Tensor, cells: torch.Tensor
                          ) -> torch.Tensor:
    """:func:`attention_pool` of ``x * cells[n]`` for every mask ``n`` at once, float32
    ``(N, D)``: ``x`` ``(C, h, w)`` one image's map, ``cells`` ``(N, h, w)`` a weight per
    token and mask.

    The same numbers up to float re-association, for a fraction of the cost: the pool's
    keys and values are linear in its tokens, and a mask scales each token by a number, so
    with ``A = X W^T`` computed once for the image's tokens ``X`` (``P`` the positional
    embedding, ``b`` the bias), mask ``n``'s keys are ``m_t A_t + P_t W^T + b`` for each
    token ``t`` and ``(sum_t m_t X_t) W^T / hw + P_0 W^T + b`` for the mean token (whose
    projection alone is the query). The projections of every token of every mask (``N``
    matrix products of ``(1 + hw) x C x C``, most of the object step's work besides the
    crops' encoder) become one for the image, and the positions' projections are
    remembered per grid; attention and the output projection stay per mask."""
    channels, height, width = x.shape
    count = cells.shape[0]
    heads = pool.num_heads
    tokens = x.reshape(channels, height * width).t().float()  # (T, C)
    m = cells.reshape(count, height * width).float()  # (N, T)
    means = (m @ tokens) / m.shape[1]  # (N, C): each mask's mean token, before positions
    fixed = _position_projections(pool, (height, width))  # positions and biases, projected

    def weight(name: str) -> torch.Tensor:
        return getattr(pool, name).weight.float()

    query = means @ weight('q_proj').t() + fixed['q_proj'][0]  # (N, E): the mean token's
    keys, values = (
        torch.cat([(means @ weight(name).t() + fixed[name][0])[:, None],
                   m[:, :, None] * (tokens @ weight(name).t())[None] + fixed[name][None, 1:]],
                  dim=1)  # (N, 1 + T, E)
        for name in ('k_proj', 'v_proj'))
    head = keys.shape[-1] // heads
    query = query.view(count, heads, 1, head)
    keys = keys.view(count, -1, heads, head).transpose(1, 2)  # (N, heads, 1 + T, head)
    values = values.view(count, -1, heads, head).transpose(1, 2)
    attended = F.scaled_dot_product_attention(query, keys, values)  # (N, heads, 1, head)
    return attended.reshape(count, heads * head) @ weight('c_proj').t() + \
        pool.c_proj.bias.float()


# The projections of the positional embedding (and bias) per attention pool and grid: they
# do not depend on the image (a pool's weights never change once loaded).
_POSITIONS: 'weakref.WeakKeyDictionary[torch.nn.Module, dict]' = weakref.WeakKeyDictionary()


def _position_projections(pool: torch.nn.Module, grid: tuple[int, int]
                          ) -> dict[str, torch.Tensor]:
    """``{name: P W^T + b}`` ``(1 + h*w, E)`` float32 for the pool's q, k and v projections
    at ``grid``, remembered per pool for the last few grids."""
    per_grid = _POSITIONS.setdefault(pool, {})
    found = per_grid.get(grid)
    if found is None:
        position = positional_embedding(pool, grid).float()
        found = {name: position @ getattr(pool, name).weight.float().t() +
                 getattr(pool, name).bias.float() for name in ('q_proj', 'k_proj', 'v_proj')}
        if len(per_grid) >= 4:  # the node's grid, the paper protocol's 7x7, a few more
            per_grid.pop(next(iter(per_grid)))
        per_grid[grid] = found
    return found


def positional_embedding(pool: torch.nn.Module, grid: tuple[int, int]) -> torch.Tensor:
    """The attention pool's positional embedding ``(1 + h*w, C)`` for a ``grid`` map."""
    table = pool.positional_embedding
    side = math.isqrt(table.shape[0] - 1)
    if (side, side) == tuple(grid):
        return table
    spatial = table[1:].float().reshape(side, side, -1).permute(2, 0, 1)[None]
    spatial = F.interpolate(spatial, size=grid, mode='bilinear', align_corners=False)
    spatial = spatial[0].permute(1, 2, 0).reshape(grid[0] * grid[1], -1)
    return torch.cat([table[:1].float(), spatial]).to(table.dtype)


def _masked_crop(image: torch.Tensor, mask: np.ndarray) -> torch.Tensor:
    """``(3, H, W)`` normalised image -> ``(3, 224, 224)``: zero (the mean colour) outside
    ``mask``, cropped to the mask's bounding box (inclusive), resized bilinearly with
    ``align_corners=False`` and antialiasing (torchvision's ``resized_crop`` on tensors)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    inside = torch.from_numpy(np.ascontiguousarray(mask[top:bottom, left:right]))
    crop = image[:, top:bottom, left:right] * inside.to(image.device)
    return F.interpolate(crop[None], size=PAPER_INPUT_SIZE, mode='bilinear',
                         align_corners=False, antialias=True)[0]


def _batch_of_one(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgb)[None]


def _check_image_and_masks(rgb: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray,
                                                                          np.ndarray]:
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 \
            or rgb.dtype != np.uint8:
        raise ValueError(f'rgb must be an (H, W, 3) uint8 array, got '
                         f'{getattr(rgb, "shape", None)} {getattr(rgb, "dtype", "")}')
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.shape[1:] != rgb.shape[:2] or masks.dtype != np.bool_:
        raise ValueError(f'masks must be (N, {rgb.shape[0]}, {rgb.shape[1]}) bool, got '
                         f'{masks.shape} {masks.dtype}')
    empty = [i for i, mask in enumerate(masks) if not mask.any()]
    if empty:
        raise ValueError(f'mask {empty[0]} is empty')
    return rgb, masks


__all__ = ['ReferringCLIP', 'Referral', 'attention_pool', 'positional_embedding',
           'score_matrix']

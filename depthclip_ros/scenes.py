"""Scene-adaptive bins: which scene is this frame, and which depth bins go with it?

METHOD.md §5, on the CLIP already loaded by the depth engine
(:class:`~depthclip_ros.model.DepthCLIP`): nothing is loaded twice. For scene names
``s`` and one template (default ``"a photo of a {}."``)::

    p_s = softmax_s( 100 * e_img . t_s )

with ``e_img`` CLIP's standard image embedding (``encode_image``: the trunk and its
attention pool), L2-normalised, of the frame preprocessed exactly as open_clip's own
evaluation transform for the model (the one ``open_clip.create_model_and_transforms``
returns: resize the shorter side, centre crop, the model's mean/std, bicubic; built here
from the model's preprocess configuration with open_clip's ``image_transform_v2`` and
applied to a PIL image, as open_clip does), and ``t_s`` the L2-normalised text embedding
of ``template.format(s)``. Logits and softmax are float32.

:func:`mix_bins` turns the probabilities into bins: ``scene_soft`` is ``sum_s p_s *
bins_s``, ``scene_hard`` the bins of the most probable scene. Scaling to the camera
(METHOD.md §2) is the depth engine's business, as for any bins.

With random weights (``pretrained='none'``) every probability is meaningless; callers say
so.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .model import (  # noqa: F401 - the scene rules live beside HeadConfig, which uses them
    check_scene_names,
    check_scene_template,
    CLIP_LOGIT_SCALE,
    DepthCLIP,
    MAX_SCENES,
    SCENE_PROMPT_TEMPLATE,
    scene_prompts,
)

MIX_MODES = ('scene_soft', 'scene_hard')
TEXT_CACHE = 8  # (names, template) pairs whose text features are remembered


@dataclass(frozen=True)
class SceneEstimate:
    """The scene probabilities of one frame, in the order of the names given."""

    names: tuple[str, ...]
    probabilities: tuple[float, ...]  # sums to 1

    def __post_init__(self):
        object.__setattr__(self, 'names', tuple(self.names))
        object.__setattr__(self, 'probabilities', tuple(float(p) for p in self.probabilities))
        if len(self.names) != len(self.probabilities) or not self.names:
            raise ValueError(f'need one probability per scene: {len(self.names)} names, '
                             f'{len(self.probabilities)} probabilities')

    @property
    def best(self) -> int:
        """Position of the most probable scene (the first of equal probabilities)."""
        return int(np.argmax(self.probabilities))

    @property
    def chosen(self) -> str:
        """The most probable scene's name (the first of equal probabilities)."""
        return self.names[self.best]

    def as_dict(self) -> dict[str, float]:
        """``{name: probability}``, in the order of :attr:`names`."""
        return dict(zip(self.names, self.probabilities))


class SceneClassifier:
    """Zero-shot scene probabilities with the depth engine's CLIP.

    ``engine`` must be loaded (or be loaded before the first call); its weights, device and
    precision are shared, never copied.
    """

    def __init__(self, engine: DepthCLIP):
        if not isinstance(engine, DepthCLIP):
            raise TypeError(f'engine must be a DepthCLIP, got {type(engine).__name__}')
        self.engine = engine
        self._preprocess = None
        self._text: OrderedDict[tuple[tuple[str, ...], str], torch.Tensor] = OrderedDict()
        self.text_encodings = 0  # how often the text encoder ran (tests, diagnostics)

    # ------------------------------------------------------------------ text side
    @torch.inference_mode()
    def text_features(self, names: Sequence[str], template: str = SCENE_PROMPT_TEMPLATE
                      ) -> torch.Tensor:
        """``(D, S)`` float32 on the engine's device: per scene, the L2-normalised text
        embedding of ``template.format(name)``; remembered for the last ``TEXT_CACHE``
        (names, template) pairs. Raises ``ValueError`` for bad names or template, or a
        prompt longer than the text encoder's context."""
        sentences = scene_prompts(names, template)  # cheap checks, every call
        key = (tuple(names), template)
        if key in self._text:
            self._text.move_to_end(key)
            return self._text[key]
        engine = self.engine
        for sentence in sentences:
            engine.check_text(sentence, 'scene prompt')  # also: engine loaded
        tokens = engine._tokenizer(sentences).to(engine.device)
        embedded = F.normalize(engine._clip.encode_text(tokens).float(), dim=-1)
        self.text_encodings += 1
        value = embedded.t().contiguous()
        self._text[key] = value
        while len(self._text) > TEXT_CACHE:
            self._text.popitem(last=False)
        return value

    # ------------------------------------------------------------------ image side
    @property
    def preprocess(self):
        """open_clip's evaluation transform for the engine's model (PIL image -> ``(3, s,
        s)`` float32 tensor), built from the model's own preprocess configuration."""
        if self._preprocess is None:
            self._preprocess = eval_transform(self._loaded_clip())
        return self._preprocess

    @torch.inference_mode()
    def image_embedding(self, rgb: np.ndarray) -> torch.Tensor:
        """``e_img``: ``(D,)`` float32 on the engine's device, L2-normalised
        ``encode_image`` of ``rgb`` (``(H, W, 3)`` uint8 RGB, any size) after open_clip's
        evaluation transform."""
        from PIL import Image

        _check_rgb(rgb)
        clip = self._loaded_clip()
        x = self.preprocess(Image.fromarray(np.ascontiguousarray(rgb)))
        x = x[None].to(device=self.engine.device, dtype=self.engine.dtype)
        return F.normalize(clip.encode_image(x).float(), dim=-1)[0]

    # ------------------------------------------------------------------ scoring
    @torch.inference_mode()
    def classify(self, rgb: np.ndarray, names: Sequence[str],
                 template: str = SCENE_PROMPT_TEMPLATE) -> SceneEstimate:
        """Scene probabilities ``softmax_s(100 * e_img . t_s)`` of one frame."""
        text = self.text_features(names, template)  # validates names and template first
        image = self.image_embedding(rgb)
        logits = CLIP_LOGIT_SCALE * (image @ text)  # (S,) float32
        probabilities = torch.softmax(logits, dim=-1).cpu().numpy().astype(np.float64)
        return SceneEstimate(tuple(names), tuple(float(p) for p in probabilities))

    def _loaded_clip(self):
        if not self.engine.loaded:
            raise RuntimeError('DepthCLIP.load() has not been called')
        return self.engine._clip


def eval_transform(clip: torch.nn.Module):
    """open_clip's evaluation (``is_train=False``) image transform for ``clip``: what
    ``open_clip.create_model_and_transforms`` returns as its third value, built from the
    model's preprocess configuration (open_clip's defaults where the model has none, as
    for OpenAI's TorchScript release rebuilt by the engine)."""
    from open_clip import get_model_preprocess_cfg
    from open_clip.transform import image_transform_v2, merge_preprocess_dict, PreprocessCfg

    config = PreprocessCfg(**merge_preprocess_dict(PreprocessCfg(),
                                                   dict(get_model_preprocess_cfg(clip))))
    return image_transform_v2(config, is_train=False)


def mix_bins(estimate_or_probabilities: SceneEstimate | Sequence[float],
             bin_sets: Sequence[Sequence[float]], mode: str) -> tuple[float, ...]:
    """Depth bins for a frame from its scene probabilities and one bin set per scene.

    ``scene_soft``: ``sum_s p_s * bins_s``; ``scene_hard``: the bins of the most probable
    scene (the first of equal probabilities). Every bin set must have the same length, one
    set per probability. Raises ``ValueError``.
    """
    if mode not in MIX_MODES:
        raise ValueError(f'mode must be one of {", ".join(MIX_MODES)}, got {mode!r}')
    if isinstance(estimate_or_probabilities, SceneEstimate):
        probabilities = estimate_or_probabilities.probabilities
    else:
        probabilities = tuple(estimate_or_probabilities)
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 1 or len(p) < 1 or not np.isfinite(p).all() or (p < 0).any() \
            or not math.isclose(float(p.sum()), 1.0, abs_tol=1e-4):
        raise ValueError(f'scene probabilities must be finite, >= 0 and sum to 1, '
                         f'got {list(probabilities)}')
    try:
        bins = np.asarray([[float(b) for b in row] for row in bin_sets], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError('bin sets must be lists of numbers of one length') from None
    if bins.ndim != 2 or bins.shape[0] != len(p) or bins.shape[1] < 1:
        raise ValueError(f'need one bin set per scene, all of one length: {len(p)} scenes, '
                         f'bin sets of shape {[len(row) for row in bin_sets]}')
    if not np.isfinite(bins).all():
        raise ValueError('bins must be finite')
    if mode == 'scene_hard':
        return tuple(float(b) for b in bins[int(np.argmax(p))])
    return tuple(float(b) for b in p @ bins)


def _check_rgb(rgb: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 \
            or rgb.dtype != np.uint8 or min(rgb.shape[:2]) < 1:
        raise ValueError(f'rgb must be an (H, W, 3) uint8 array, got '
                         f'{getattr(rgb, "shape", None)} {getattr(rgb, "dtype", "")}')


__all__ = ['SceneClassifier', 'SceneEstimate', 'SCENE_PROMPT_TEMPLATE', 'MIX_MODES',
           'MAX_SCENES', 'TEXT_CACHE', 'mix_bins', 'eval_transform', 'check_scene_names',
           'check_scene_template', 'scene_prompts']

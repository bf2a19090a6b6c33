"""Scene-adaptive bins: which scene is this frame, and which depth bins go with it?

docs/method.md §5, on the CLIP already loaded by the depth engine
(:class:`~depthclip_ros.engine.depthclip.DepthCLIP`, which imports this module): nothing
is loaded twice. For scene names
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
(docs/method.md §2) is the depth engine's business, as for any bins.

With random weights (``pretrained='none'``) every probability is meaningless; callers say
so.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from depthclip_ros.engine.config import (
    CLIP_LOGIT_SCALE,
    SCENE_PROMPT_TEMPLATE,
    scene_prompts,
    SceneEstimate,
)


class SceneClassifier:
    """Zero-shot scene probabilities with the depth engine's CLIP.

    ``engine`` must be loaded (or be loaded before the first call); its weights, device and
    precision are shared, never copied.
    """

    def __init__(self, engine):
        if not all(hasattr(engine, name) for name in ('encode_text', 'check_text', 'loaded')):
            raise TypeError(f'engine must be a DepthCLIP, got {type(engine).__name__}')
        self.engine = engine
        self._preprocess = None

    # ------------------------------------------------------------------ text side
    def text_features(self, names: Sequence[str], template: str = SCENE_PROMPT_TEMPLATE
                      ) -> torch.Tensor:
        """``(D, S)`` float32 on the engine's device: per scene, the L2-normalised text
        embedding of ``template.format(name)`` (the engine remembers recent ones). Raises
        ``ValueError`` for bad names or template, or a prompt longer than the text
        encoder's context."""
        sentences = scene_prompts(names, template)  # cheap checks, every call
        for sentence in sentences:
            self.engine.check_text(sentence, 'scene prompt')  # also: engine loaded
        return self.engine.encode_text(sentences).t()

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
        x = self.preprocess(Image.fromarray(np.ascontiguousarray(rgb)))
        return self.engine.encode_image(x[None], normalize=True)[0]

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
        return self.engine.clip


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


def _check_rgb(rgb: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 \
            or rgb.dtype != np.uint8 or min(rgb.shape[:2]) < 1:
        raise ValueError(f'rgb must be an (H, W, 3) uint8 array, got '
                         f'{getattr(rgb, "shape", None)} {getattr(rgb, "dtype", "")}')


__all__ = ['SceneClassifier', 'eval_transform']

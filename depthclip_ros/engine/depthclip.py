"""DepthCLIP: zero-shot metric depth from a frozen CLIP ResNet (docs/method.md).

Imports torch and open_clip, nothing from ROS. Construction is cheap; :meth:`DepthCLIP.load`
is the one call that reads weights and touches the device. Text features are computed once
per prompt change (:meth:`DepthCLIP.set_head`), never per frame.

Per frame (:meth:`DepthCLIP.predict`), for ``B`` images of one size:

1. upload the uint8 RGB images once, resize to ``input_size`` (if needed) and normalise
   with the ImageNet mean/std (the paper's evaluation code);
2. run the CLIP image trunk without its attention pool: ``(B, C, h, w)`` tokens (in torch,
   or on OpenVINO with ``backend``: engine/backend.py);
3. ``paper`` mode: L2-normalise each token, keep every ``C / D``-th channel (``D`` the text
   embedding size; for RN50 every other one of 2048, the authors' nearest-neighbour
   ``interpolate(scale_factor=0.5)`` over channels); ``projected`` mode: ``c_proj(v_proj(.))``
   of the attention pool (MaskCLIP), then L2-normalise;
4. ``S = 100 * tokens @ T / temperature``, softmax over the ``K`` bins, weighted sum of
   the bins: canonical depth ``(B, 1, h, w)``; with flip averaging, averaged with the
   flipped-back prediction of the mirrored image at this resolution;
5. multiply by ``mean(fx, fy) / canonical_focal_px`` of the intrinsics at the network
   input (Metric3D's canonical camera), upsample bilinearly (``align_corners=True``) to the
   output size and download once.
"""

from __future__ import annotations

from collections import OrderedDict
import gc
import logging
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from depthclip_ros.engine.backend import choose_backend
from depthclip_ros.engine.config import (
    CLIP_LOGIT_SCALE,
    HeadConfig,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelConfig,
)
from depthclip_ros.engine.cuda import PinnedUploads, TrunkGraphs
from depthclip_ros.engine.export import Trunk
from depthclip_ros.engine.frames import as_batch, bin_moments, FrameIn, Prediction
from depthclip_ros.engine.runtime import CPU_TRUNK_BATCH, resolve_runtime, trunk_memory_format
from depthclip_ros.engine.weights import build_clip, WeightsError
from depthclip_ros.geometry import Intrinsics, metric_scale
from depthclip_ros.timing import stage_or_nothing, StageTimer

LOG = logging.getLogger(__name__)

# Sentence lists whose text embeddings the engine remembers (the head's prompts, scene
# names, object queries): one bounded cache for every user of the text encoder.
TEXT_CACHE = 32


class DepthCLIP:
    """The DepthCLIP engine: RGB images + intrinsics in, metric z-depth out."""

    def __init__(self, config: ModelConfig | None = None, head: HeadConfig | None = None):
        self.config = config or ModelConfig()
        self.head = head or HeadConfig()
        self.device: torch.device | None = None
        self.dtype: torch.dtype | None = None
        self._clip = None
        self._trunk_net: Trunk | None = None  # the trunk of self._clip (set by load)
        self._text_key = None
        self._text_features = None  # (D, K) float32, unit columns
        self.memory_format = torch.contiguous_format  # the trunk's layout (set by load)
        self.trunk_batch: int | None = None  # frames per trunk call (None: all; set by load)
        self._graphs: TrunkGraphs | None = None  # cuda_graphs: the captured trunk
        self._uploads: PinnedUploads | None = None  # cuda_graphs: pinned host buffers
        self._bins = None  # (K,) float32 on device
        self._mean = self._std = None
        self.text_encodings = 0  # how often the text encoder ran (tests, diagnostics)
        self._text_cache: OrderedDict[tuple[str, ...], torch.Tensor] = OrderedDict()
        self._scenes = None  # the scene classifier on this CLIP, made when first needed
        self._backend = None  # OpenVINO's networks (engine/backend.py); None: torch's
        self.backend_timings: dict | None = None  # backend auto: its measurement (ms)

    # ----------------------------------------------------------------- loading
    @property
    def loaded(self) -> bool:
        return self._clip is not None

    @property
    def random_weights(self) -> bool:
        return self.config.random_weights

    def load(self) -> 'DepthCLIP':
        """Read the weights, move them to the device, encode the prompts. Idempotent.

        The image tower runs in the precision's dtype and layout
        (:func:`trunk_memory_format`); the text tower and the head stay float32. On CUDA
        one warm-up frame runs here (with ``cuda_graphs``, capturing the batch-1 graph), so
        that the first real frame is not slow."""
        if self.loaded:
            return self
        device, dtype = resolve_runtime(self.config)
        clip = build_clip(self.config)
        visual = getattr(clip, 'visual', None)
        if not all(hasattr(visual, n) for n in ('stem', 'layer4', 'attnpool')):
            raise WeightsError(f'{self.config.model} has no ResNet image tower; DepthCLIP '
                               f'needs a ModifiedResNet CLIP (RN50, RN101, RN50x4, ...)')
        clip = clip.to(device=device).eval()
        memory_format = trunk_memory_format(device, dtype, self.config.memory_format)
        clip.visual.to(dtype=dtype, memory_format=memory_format)
        for parameter in clip.parameters():
            parameter.requires_grad_(False)
        self._clip, self.device, self.dtype = clip, device, dtype
        self._trunk_net = Trunk(clip.visual)  # the one definition (engine/export.py)
        self.memory_format = memory_format
        self.trunk_batch = CPU_TRUNK_BATCH if device.type == 'cpu' else None
        if self.config.cuda_graphs:
            self._graphs = TrunkGraphs(self._trunk)
            self._uploads = PinnedUploads()
        self._mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255.0
        self._tokenizer = __import__('open_clip').get_tokenizer(
            self.config.model.replace('-quickgelu', ''))
        self.check_head(self.head)
        self._update_head(self.head)
        try:
            self._backend = choose_backend(self)
        except BaseException:
            self.release()  # a calibration set that cannot be read, say: not loaded
            raise
        if device.type == 'cuda':
            self.warm_up()
        LOG.info('DepthCLIP %s (%s) loaded on %s in %s%s%s, %s mode', self.config.model,
                 self.config.pretrained, device, str(dtype).replace('torch.', ''),
                 ', channels-last' if memory_format == torch.channels_last else '',
                 ', CUDA graphs' if self._graphs is not None else '',
                 self.config.feature_mode)
        return self

    def warm_up(self) -> None:
        """Run one frame of zeros at the input size through the whole pass (with
        ``cuda_graphs``: capture the trunk's graph for that batch), so that the first real
        frame pays no one-off set-up. :meth:`load` calls it on CUDA; a failure is logged,
        not raised (the first real frame then reports its own error)."""
        self._require_loaded()
        height, width = self.config.input_size
        camera = Intrinsics(fx=float(width), fy=float(width), cx=(width - 1) / 2,
                            cy=(height - 1) / 2, width=width, height=height)
        try:
            self.infer(np.zeros((height, width, 3), np.uint8), camera,
                       bins_m=self.head.depth_bins_m)
            if self.device.type == 'cuda':
                torch.cuda.synchronize(self.device)
        except (RuntimeError, ValueError) as error:
            LOG.warning('DepthCLIP warm-up frame failed: %s', error)

    def describe_device(self) -> str:
        """Human-readable device name, e.g. ``cuda:0 (NVIDIA H100) fp16``."""
        if self.device is None:
            return 'not loaded'
        name = str(self.device)
        if self.device.type == 'cuda':
            name += f' ({torch.cuda.get_device_name(self.device)})'
        backend = f', {self._backend.name}' if self._backend is not None else ''
        return f'{name} {str(self.dtype).replace("torch.", "")}{backend}'

    @property
    def clip(self) -> torch.nn.Module:
        """The loaded open_clip model, shared by every capability built on this engine
        (scenes, objects): never copied. Needs :meth:`load`."""
        self._require_loaded()
        return self._clip

    @property
    def attention_pool(self) -> torch.nn.Module:
        """The image tower's attention pool (in the trunk's dtype). Needs :meth:`load`."""
        return self.clip.visual.attnpool

    def release(self) -> None:
        """Forget the model, its text cache and (on CUDA) its cached GPU memory; the
        engine can be loaded again with :meth:`load`."""
        device = self.device
        self._clip = self._trunk_net = None
        self._graphs = self._uploads = self._scenes = self._backend = None
        self._text_features = self._text_key = self._bins = None
        self._text_cache.clear()
        gc.collect()
        if device is not None and device.type == 'cuda':
            torch.cuda.empty_cache()

    # ----------------------------------------------------------------- text side
    def set_head(self, head: HeadConfig) -> None:
        """Switch prompts, bins, temperature, focal or flip without reloading the model.

        The text encoder runs only if the prompts changed. ``head`` was validated when it
        was constructed, so a bad value never reaches a running engine.
        """
        if not isinstance(head, HeadConfig):
            raise TypeError(f'head must be a HeadConfig, got {type(head).__name__}')
        if self.loaded:
            self.check_head(head)
            self._update_head(head)
        self.head = head

    def _update_head(self, head: HeadConfig) -> None:
        if head.text_key != self._text_key:
            self._text_features = self.encode_prompts(head.prompts())
            self._text_key = head.text_key
        self._bins = torch.tensor(head.depth_bins_m, dtype=torch.float32, device=self.device)

    def check_head(self, head: HeadConfig) -> None:
        """Raise ``ValueError`` if ``head``'s prompts do not fit the text encoder's context
        (CLIP would silently cut them); cheap (tokenising only). Needs :meth:`load`."""
        for sentence in (s for group in head.prompts() for s in group):
            self.check_text(sentence, 'prompt')
        if head.bins_mode != 'fixed':
            for sentence in head.scene_prompts():
                self.check_text(sentence, 'scene prompt')

    def check_text(self, sentence: str, kind: str = 'text') -> None:
        """Raise ``ValueError`` (naming it a ``kind``) if ``sentence`` does not fit the text
        encoder's context; tokenising only. Needs :meth:`load`."""
        self._require_loaded()
        encode = getattr(self._tokenizer, 'encode', None)
        context = getattr(self._tokenizer, 'context_length', 77)
        if encode is None:
            return
        tokens = len(encode(sentence)) + 2  # start and end of text
        if tokens > context:
            raise ValueError(f"{kind} {sentence[:40]!r}... is longer than the text encoder's "
                             f'context of {context} tokens ({tokens} tokens)')

    @torch.inference_mode()
    def encode_text(self, sentences: Sequence[str]) -> torch.Tensor:
        """``(N, D)`` float32 L2-normalised text embeddings of ``sentences`` on the device:
        tokenise, encode, normalise. The last :data:`TEXT_CACHE` lists are remembered, so
        a list seen before costs nothing (the returned tensor is shared: do not modify it).
        Needs :meth:`load`; check lengths first with :meth:`check_text`."""
        self._require_loaded()
        key = tuple(sentences)
        cached = self._text_cache.get(key)
        if cached is not None:
            self._text_cache.move_to_end(key)
            return cached
        tokens = self._tokenizer(list(key)).to(self.device)
        embedded = F.normalize(self._clip.encode_text(tokens).float(), dim=-1)
        self.text_encodings += 1
        self._text_cache[key] = embedded
        while len(self._text_cache) > TEXT_CACHE:
            self._text_cache.popitem(last=False)
        return embedded

    @torch.inference_mode()
    def encode_image(self, x: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """CLIP's image embedding (trunk and attention pool) of ``(B, 3, s, s)``
        preprocessed images: ``(B, D)`` float32, L2-normalised with ``normalize``."""
        self._require_loaded()
        x = x.to(device=self.device, dtype=self.dtype)
        encoded = self._clip.encode_image(x).float() if self._backend is None \
            else self._backend.encode(x)
        return F.normalize(encoded, dim=-1) if normalize else encoded

    def encode_prompts(self, prompts: list[list[str]]) -> torch.Tensor:
        """Text classifier ``(D, K)``: per bin, the mean of its L2-normalised prompt
        embeddings, normalised again (open_clip's zero-shot classifier recipe)."""
        flat = [sentence for group in prompts for sentence in group]
        embeddings = self.encode_text(flat)
        per_bin = embeddings.view(len(prompts), len(prompts[0]), -1).mean(dim=1)
        return F.normalize(per_bin, dim=-1).t().contiguous()  # float32: the head's dtype

    @property
    def text_features(self) -> torch.Tensor:
        self._require_loaded()
        return self._text_features

    # ----------------------------------------------------------------- image side
    def preprocess(self, images: np.ndarray, size: tuple[int, int] | None = None
                   ) -> torch.Tensor:
        """``(B, H, W, 3)`` uint8 RGB (host) -> ``(B, 3, h, w)`` normalised network input
        at ``size`` (default the configured input size; bilinear, antialiased), in the
        trunk's dtype and layout (:attr:`memory_format`). With ``cuda_graphs`` the pixels
        go up through a pinned host buffer, in one non-blocking copy."""
        self._require_loaded()
        size = tuple(size or self.config.input_size)
        if self._uploads is not None and self.device.type == 'cuda':
            x = self._uploads.upload(images, self.device)
        else:
            if not images.flags.writeable:  # a message's buffer: torch wants a writable one
                images = images.copy()
            x = torch.from_numpy(images).to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2)  # a channels-last view of the upload
        if tuple(x.shape[-2:]) != size:
            # Resized in NCHW: the same values as on the channels-last view, and faster on
            # the CPU (docs/benchmarks.md).
            x = F.interpolate(x.contiguous().float(), size=size, mode='bilinear',
                              align_corners=False, antialias=True)
        else:
            x = x.float()
        return self.normalise(x).contiguous(memory_format=self.memory_format)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, h, w)`` float RGB in [0, 255] -> network input (model dtype)."""
        return ((x - self._mean) / self._std).to(self.dtype)

    def image_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """CLIP image trunk without its final pooling: ``(B, C, h, w)`` last-stage map, in
        the trunk's dtype (``x`` is brought to its dtype and layout first). With
        ``cuda_graphs``, inputs of the configured size replay a captured graph."""
        x = x.to(dtype=self.dtype, memory_format=self.memory_format)
        chunk = self.trunk_batch or len(x)
        if len(x) > chunk:  # the CPU: frame by frame is faster than one batch
            return torch.cat([self._run_trunk(x[i:i + chunk])
                              for i in range(0, len(x), chunk)])
        return self._run_trunk(x)

    def _run_trunk(self, x: torch.Tensor) -> torch.Tensor:
        if self._backend is not None:
            return self._backend.trunk(x)
        graphs = self._graphs
        if graphs is not None and x.is_cuda and tuple(x.shape[-2:]) == \
                tuple(self.config.input_size) and torch.is_inference_mode_enabled():
            return graphs(x)
        return self._trunk(x)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self._trunk_net(x)

    def token_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` trunk output -> ``(B, h*w, D)`` tokens comparable with text."""
        x = tokens.flatten(2).transpose(1, 2)  # (B, HW, C)
        text_dim = self._text_features.shape[0]
        if self.config.feature_mode == 'projected':
            pool = self._clip.visual.attnpool  # in the trunk's dtype, then float32
            return F.normalize(pool.c_proj(pool.v_proj(x)).float(), dim=-1)
        x = x.float()  # the head runs in float32 whatever the trunk's dtype
        x = x / x.norm(dim=-1, keepdim=True)
        ratio, remainder = divmod(x.shape[-1], text_dim)
        if remainder:
            raise ValueError(f'paper mode needs the trunk width ({x.shape[-1]}) to be a '
                             f'multiple of the text width ({text_dim})')
        # == F.interpolate(x, scale_factor=1/ratio) (nearest) over the channel axis
        return x[..., ::ratio]

    def bin_weights(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, h*w, D)`` token embeddings -> ``(B, h*w, K)`` float32 softmax weights over
        the bins: ``softmax(100 * tokens @ T / temperature)``, all in float32."""
        logits = CLIP_LOGIT_SCALE * (embeddings.float() @ self._text_features)  # (B, HW, K)
        return torch.softmax(logits / self.head.temperature, dim=-1)

    def predict(self, images: np.ndarray, intrinsics: Intrinsics | list[Intrinsics],
                output_size: tuple[int, int] | None = None,
                timer: StageTimer | None = None) -> np.ndarray:
        """Metric z-depth of a batch of RGB images.

        ``images``: ``(H, W, 3)`` or ``(B, H, W, 3)`` uint8 RGB. ``intrinsics``: of the
        images as given (one for all, or one per image). ``output_size``: ``(height,
        width)`` of the returned depth, default the input image size.
        Returns ``(H', W')`` or ``(B, H', W')`` float32 metres.
        """
        return self.infer(images, intrinsics, output_size, timer).depth

    @torch.inference_mode()
    def infer(self, images: np.ndarray, intrinsics: Intrinsics | list[Intrinsics],
              output_size: tuple[int, int] | None = None, timer: StageTimer | None = None,
              *, uncertainty: bool = False, bins_m=None) -> Prediction:
        """:meth:`predict`, with what else the same pass gives (:class:`Prediction`).

        ``uncertainty``: also the per-pixel standard deviation of the metric bin
        distribution (docs/method.md §4), upsampled like the depth. ``bins_m``: canonical bins
        for this call instead of the head's: ``K`` values, or ``(B, K)`` for one set per
        image; each set strictly increasing and > 0. Without ``bins_m`` and with the head's
        ``bins_mode`` not ``fixed``, each image's scene is classified first and its bins
        mixed (docs/method.md §5; :attr:`Prediction.scene`); the node amortises that over
        frames by passing the bins itself.
        """
        self._require_loaded()
        batch, single = as_batch(images)
        cameras = [intrinsics] * len(batch) if isinstance(intrinsics, Intrinsics) \
            else list(intrinsics)
        if len(cameras) != len(batch):
            raise ValueError(f'{len(batch)} images but {len(cameras)} intrinsics')
        if bins_m is None:
            per_image = [None] * len(batch)
        else:
            bins = np.asarray(bins_m, dtype=np.float64)
            per_image = [bins] * len(batch) if bins.ndim == 1 else list(bins)
            if len(per_image) != len(batch):
                raise ValueError(f'bins_m must be K bins or ({len(batch)}, K), got shape '
                                 f'{bins.shape}')
        frames = [FrameIn(image, camera, output_size, uncertainty, bins)
                  for image, camera, bins in zip(batch, cameras, per_image)]
        results = self.infer_frames(frames, timer)
        if single:
            return results[0]
        return Prediction(np.stack([r.depth for r in results]),
                          np.stack([r.sigma for r in results]) if uncertainty else None,
                          torch.cat([r.tokens for r in results]),
                          [r.sigma_median_m for r in results],
                          None if results[0].scene is None else [r.scene for r in results])

    @torch.inference_mode()
    def infer_frames(self, frames: list[FrameIn], timer: StageTimer | None = None
                     ) -> list[Prediction]:
        """One batched forward for frames of any sizes, cameras and output sizes (several
        cameras' newest frames, say): each is resized to the network input, so the trunk
        runs once on all of them; each result equals :meth:`infer` of that frame alone up
        to float re-association. Raises ``ValueError``/``TypeError`` for a bad frame (check
        frames with :meth:`FrameIn.check` first to isolate one)."""
        self._require_loaded()
        if not frames:
            return []
        for frame in frames:
            frame.check()
        stage = stage_or_nothing(timer)
        count = len(frames)
        bins = [None if f.bins_m is None else self._bins_for(f.bins_m, 1) for f in frames]
        scenes = [None] * count
        if self.head.bins_mode != 'fixed' and any(b is None for b in bins):
            with stage('scene'):
                for i, frame in enumerate(frames):
                    if bins[i] is None:
                        [scenes[i]], [mixed] = self._scene_bins([frame.rgb])
                        bins[i] = self._bins_for(mixed, 1)
        bins = (self._bins if all(b is None for b in bins) else
                torch.stack([self._bins if b is None else b.view(-1) for b in bins]))
        net_h, net_w = self.config.input_size
        # Python floats: applied as kernel scalars, no host-to-device copy per frame.
        scales = [metric_scale(f.intrinsics.resized(net_h, net_w),
                               self.head.canonical_focal_px) for f in frames]

        with stage('preprocess'):
            x = torch.cat([self.preprocess(f.rgb[None]) for f in frames])
            if self.head.flip_average:
                x = torch.cat([x, x.flip(-1)])
        with stage('network'):
            tokens = self.image_tokens(x)
        with stage('head'):
            grid = tuple(tokens.shape[-2:])
            weights = self.bin_weights(self.token_embeddings(tokens))  # (B', HW, K)
            if self.head.flip_average:  # the mixture of the two distributions
                plain, mirrored = weights[:count], weights[count:]
                mirrored = mirrored.view(count, *grid, -1).flip(2).reshape(plain.shape)
                weights = 0.5 * (plain + mirrored)
            depth, sigma = bin_moments(weights, bins)  # (B, HW) canonical metres
            maps = torch.stack([depth, sigma], dim=1).view(count, 2, *grid)
            if len(set(scales)) == 1:
                maps = maps * scales[0]
            else:
                maps = maps * torch.tensor(scales, device=maps.device).view(-1, 1, 1, 1)
            medians = maps[:, 1].flatten(1).median(dim=1).values
        with stage('upsample'):
            outs = []
            for i, frame in enumerate(frames):
                size = frame.output_size or frame.rgb.shape[:2]
                channels = maps[i:i + 1] if frame.uncertainty else maps[i:i + 1, :1]
                outs.append(F.interpolate(channels, size=tuple(size), mode='bilinear',
                                          align_corners=True)[0].cpu().numpy())
            medians = medians.cpu().tolist()
        tokens = tokens[:count]
        return [Prediction(out[0], out[1] if frame.uncertainty else None, tokens[i:i + 1],
                           medians[i], scenes[i])
                for i, (frame, out) in enumerate(zip(frames, outs))]

    def _scene_bins(self, batch: np.ndarray) -> tuple[list, list[tuple[float, ...]]]:
        """Each image's scene (:mod:`depthclip_ros.engine.scenes`, on this CLIP) and its bins."""
        from depthclip_ros.engine.config import mix_bins
        head = self.head
        scenes = [self.scene_classifier.classify(image, head.scene_names,
                                                 head.scene_prompt_template)
                  for image in batch]
        return scenes, [mix_bins(s, head.scene_bin_sets, head.bins_mode) for s in scenes]

    @property
    def scene_classifier(self):
        """The zero-shot scene classifier on this CLIP (:mod:`depthclip_ros.engine.scenes`):
        one per engine, so that its text cache is shared by every caller."""
        if self._scenes is None:
            from depthclip_ros.engine.scenes import SceneClassifier
            self._scenes = SceneClassifier(self)
        return self._scenes

    def _bins_for(self, bins_m, batch: int) -> torch.Tensor:
        """Per-call canonical bins: ``(K,)`` or ``(batch, K)`` on the device, checked."""
        bins = np.asarray(bins_m, dtype=np.float64)
        count = len(self.head.depth_bins_m)
        if bins.shape not in ((count,), (batch, count)):
            raise ValueError(f'bins_m must be {count} bins or ({batch}, {count}), '
                             f'got shape {bins.shape}')
        if not np.all(np.isfinite(bins)) or np.any(bins <= 0) or \
                np.any(np.diff(bins, axis=-1) <= 0):
            raise ValueError(f'bins_m must be finite, > 0 and strictly increasing, '
                             f'got {bins.tolist()}')
        return torch.as_tensor(bins, dtype=torch.float32, device=self.device)

    def _require_loaded(self) -> None:
        if not self.loaded:
            raise RuntimeError('DepthCLIP.load() has not been called')


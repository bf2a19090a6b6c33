"""The speed paths (issue 13), each checked against eager fp32 NCHW: channels-last,
bf16 on the CPU (float32 head), and the CUDA-graph trunk (bookkeeping on the CPU with a
fake capture; against eager fp16 only where a GPU exists).

Random weights: the tests compare computations, never accuracy.
"""

import argparse
import copy
from dataclasses import replace
import json
import logging

import numpy as np
import pytest
import torch

from depthclip_ros.engine import runtime as model_module
from depthclip_ros.engine.config import MEMORY_FORMATS, ModelConfig, PRECISIONS
from depthclip_ros.engine.cuda import PinnedUploads, TrunkGraphs
from depthclip_ros.engine.depthclip import DepthCLIP
from depthclip_ros.engine.frames import FrameIn
from depthclip_ros.engine.runtime import resolve_dtype, resolve_runtime, trunk_memory_format
from depthclip_ros.geometry import Intrinsics
from depthclip_ros.ros.parameters import PARAMETERS, validate
from depthclip_ros.tools.common import add_model_arguments, check_model_options, configs_from_args

from conftest import random_models_shared, shared_data

SMALL = (64, 96)
BF16_NATIVE = model_module.cpu_bf16_native()
needs_bf16 = pytest.mark.skipif(
    not BF16_NATIVE, reason='this CPU has no native bf16 (oneDNN reports none): bf16 is '
                            'refused here, see test_bf16_is_refused_without_native_support')
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')


def camera(height: int, width: int, focal: float = 60.0) -> Intrinsics:
    return Intrinsics(fx=focal, fy=focal, cx=width / 2, cy=height / 2, width=width,
                      height=height)


def picture(height: int = 48, width: int = 80, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients plus noise: more like a photo than pure noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def relative_deviation(depth: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return np.abs(depth - reference) / reference


def nchw_tokens(engine: DepthCLIP, x: torch.Tensor) -> torch.Tensor:
    """The trunk as before the speed paths: an NCHW copy of the image tower, NCHW input."""
    visual = copy.deepcopy(engine.clip.visual).to(memory_format=torch.contiguous_format)
    x = x.contiguous()
    with torch.inference_mode():
        for layer in (visual.stem, visual.layer1, visual.layer2, visual.layer3,
                      visual.layer4):
            x = layer(x)
    return x


@pytest.fixture(scope='module')
def fp32_engine():
    """RN50 (the speed paths' model; ``engine``'s random weights) in fp32 at a small input:
    the reference of every speed path here."""
    with random_models_shared():
        return DepthCLIP(ModelConfig(pretrained='none', device='cpu', input_size=SMALL)).load()


@pytest.fixture(scope='module')
def bf16_engine():
    if not BF16_NATIVE:
        pytest.skip('this CPU has no native bf16')
    return DepthCLIP(ModelConfig(pretrained='none', device='cpu', input_size=SMALL,
                                 precision='bf16')).load()


# ------------------------------------------------------------------ configuration
def test_precision_and_cuda_graphs_are_parameters_and_options():
    assert 'bf16' in PRECISIONS
    by_name = {p.name: p for p in PARAMETERS}
    assert by_name['precision'].choices == PRECISIONS and by_name['precision'].read_only
    assert by_name['cuda_graphs'].default is False and by_name['cuda_graphs'].read_only
    validate({'precision': 'bf16', 'cuda_graphs': False})
    validate({'cuda_graphs': True})  # a value; the device decides at load
    with pytest.raises(ValueError, match='precision'):
        validate({'precision': 'fp8'})
    with pytest.raises(ValueError, match='cuda_graphs'):
        validate({'cuda_graphs': 'yes'})
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    model, _ = configs_from_args(parser.parse_args(['--precision', 'bf16', '--cuda-graphs']))
    assert model.precision == 'bf16' and model.cuda_graphs is True
    model, _ = configs_from_args(parser.parse_args([]))
    assert model.cuda_graphs is False
    with pytest.raises(SystemExit):
        parser.parse_args(['--precision', 'fp8'])


def test_cuda_graphs_are_off_by_default_and_refused_without_cuda():
    assert ModelConfig().cuda_graphs is False
    with pytest.raises(ValueError, match='cuda_graphs needs a CUDA device'):
        ModelConfig(device='cpu', cuda_graphs=True)
    with pytest.raises(ValueError, match='cuda_graphs must be true or false'):
        ModelConfig(cuda_graphs='yes')
    if torch.cuda.is_available():
        return
    config = ModelConfig(pretrained='none', device='auto', cuda_graphs=True)  # spelling ok
    with pytest.raises(ValueError, match='cuda_graphs needs a CUDA device'):
        resolve_runtime(config)
    with pytest.raises(ValueError, match='cuda_graphs needs a CUDA device'):
        DepthCLIP(config).load()  # refused before any weights are read
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    with pytest.raises(ValueError, match='cuda_graphs needs a CUDA device'):
        check_model_options(parser.parse_args(['--pretrained', 'none', '--cuda-graphs']))


def test_bf16_is_refused_without_native_support(monkeypatch):
    monkeypatch.setattr(model_module, 'cpu_bf16_native', lambda: False)
    with pytest.raises(ValueError, match='bf16 needs a CPU with native bf16'):
        resolve_dtype('bf16', torch.device('cpu'))
    with pytest.raises(ValueError, match='bf16 needs a CPU with native bf16'):
        DepthCLIP(ModelConfig(pretrained='none', device='cpu', precision='bf16')).load()
    monkeypatch.setattr(model_module, 'cpu_bf16_native', lambda: True)
    assert resolve_dtype('bf16', torch.device('cpu')) == torch.bfloat16
    # auto stays fp32 on the CPU whatever the CPU can do
    assert resolve_dtype('auto', torch.device('cpu')) == torch.float32
    with pytest.raises(ValueError, match='fp16 needs a CUDA device'):
        resolve_dtype('fp16', torch.device('cpu'))


# ------------------------------------------------------------------ channels-last
def test_the_cpu_fp32_trunk_runs_channels_last_whatever_the_image_size(fp32_engine):
    assert fp32_engine.dtype == torch.float32
    assert fp32_engine.memory_format == torch.channels_last
    conv = fp32_engine.clip.visual.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    seen = []
    for height, width in (SMALL, (48, 80)):  # not resized, and resized
        x = fp32_engine.preprocess(picture(height, width)[None])
        assert x.is_contiguous(memory_format=torch.channels_last), (height, width)
        seen.append(fp32_engine.image_tokens(x))
    assert all(t.is_contiguous(memory_format=torch.channels_last) for t in seen)


def test_channels_last_fp32_equals_nchw_fp32(fp32_engine):
    images = np.stack([picture(48, 80, seed) for seed in range(2)])
    x = torch.cat([fp32_engine.preprocess(image[None]) for image in images])
    with torch.inference_mode():
        fast = fp32_engine.image_tokens(x)
    reference = nchw_tokens(fp32_engine, x)
    assert fast.dtype == reference.dtype == torch.float32
    scale = reference.abs().max().item()
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-5 * scale)

    # the whole pass, channels-last against an engine of the same weights in NCHW
    cameras = camera(48, 80)
    depth_cl = fp32_engine.infer(images, cameras, uncertainty=True)
    nchw = DepthCLIP(replace(fp32_engine.config, memory_format='contiguous')).load()
    assert not nchw.clip.visual.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    depth_nchw = nchw.infer(images, cameras, uncertainty=True)
    np.testing.assert_allclose(depth_cl.depth, depth_nchw.depth, rtol=1e-5)
    np.testing.assert_allclose(depth_cl.sigma, depth_nchw.sigma, rtol=1e-4, atol=1e-6)


def test_memory_format_is_a_parameter_an_option_and_a_config():
    by_name = {p.name: p for p in PARAMETERS}
    param = by_name['memory_format']
    assert param.default == 'auto' and param.read_only and param.choices == MEMORY_FORMATS
    validate({'memory_format': 'channels_last'})
    with pytest.raises(ValueError, match='memory_format'):
        validate({'memory_format': 'nhwc'})
    with pytest.raises(ValueError, match='memory_format must be one of'):
        ModelConfig(memory_format='channels-last')
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    model, _ = configs_from_args(parser.parse_args(['--memory-format', 'contiguous']))
    assert model.memory_format == 'contiguous'
    assert configs_from_args(parser.parse_args([]))[0].memory_format == 'auto'
    with pytest.raises(SystemExit):
        parser.parse_args(['--memory-format', 'nhwc'])


def test_the_layout_rule_and_what_overrides_it():
    cpu, cuda = torch.device('cpu'), torch.device('cuda')
    last, nchw = torch.channels_last, torch.contiguous_format
    # auto: channels-last on the CPU and in bf16; CUDA fp16/fp32 keep NCHW (not yet
    # measured on a GPU here), unless asked
    assert trunk_memory_format(cpu, torch.float32) == last
    assert trunk_memory_format(cuda, torch.bfloat16) == last
    assert trunk_memory_format(cuda, torch.float16) == nchw
    assert trunk_memory_format(cuda, torch.float32) == nchw
    assert trunk_memory_format(cuda, torch.float16, 'channels_last') == last
    assert trunk_memory_format(cpu, torch.float32, 'contiguous') == nchw
    assert trunk_memory_format(cpu, torch.bfloat16, 'contiguous') == nchw


def test_a_contiguous_engine_loads_nchw_and_gives_the_channels_last_depth(fp32_engine):
    engine = DepthCLIP(ModelConfig(pretrained='none', device='cpu', input_size=SMALL,
                                   memory_format='contiguous')).load()
    assert engine.memory_format == torch.contiguous_format
    assert not engine.clip.visual.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    seen = []
    hook = engine.clip.visual.conv1.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].is_contiguous()))
    images = np.stack([picture(48, 80, seed) for seed in range(2)])
    try:
        nchw = engine.infer(images, camera(48, 80), uncertainty=True)
    finally:
        hook.remove()
    assert seen and all(seen)  # the trunk's input is NCHW too
    last = fp32_engine.infer(images, camera(48, 80), uncertainty=True)
    np.testing.assert_allclose(nchw.depth, last.depth, rtol=1e-5)
    np.testing.assert_allclose(nchw.sigma, last.sigma, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ bf16
@needs_bf16
def test_bf16_trunk_with_a_float32_text_tower_and_head(bf16_engine, fp32_engine):
    engine = bf16_engine
    assert engine.dtype == torch.bfloat16 and engine.memory_format == torch.channels_last
    assert 'bfloat16' in engine.describe_device()
    assert engine.clip.visual.conv1.weight.dtype == torch.bfloat16
    assert engine.clip.visual.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(p.dtype == torch.float32 for p in engine.clip.transformer.parameters())
    # text features in float32, equal to the fp32 engine's (same seeded random weights)
    assert engine.text_features.dtype == torch.float32
    torch.testing.assert_close(engine.text_features, fp32_engine.text_features,
                               rtol=0, atol=0)

    image = picture()
    prediction = engine.infer(image, camera(48, 80), uncertainty=True)
    tokens = prediction.tokens
    assert tokens.dtype == torch.bfloat16
    embeddings = engine.token_embeddings(tokens)
    assert embeddings.dtype == torch.float32
    weights = engine.bin_weights(embeddings)
    assert weights.dtype == torch.float32
    # the head by hand, in float32 from the bf16 tokens
    x = tokens.float().flatten(2).transpose(1, 2)
    x = (x / x.norm(dim=-1, keepdim=True))[..., ::2]
    expected = torch.softmax(100.0 * (x @ fp32_engine.text_features) / 0.1, dim=-1)
    torch.testing.assert_close(weights, expected, rtol=1e-5, atol=1e-6)
    assert prediction.depth.dtype == np.float32 and prediction.sigma.dtype == np.float32


@needs_bf16
def test_bf16_depth_is_within_a_percent_of_fp32(bf16_engine, fp32_engine):
    images = np.stack([picture(48, 80, seed) for seed in range(3)])
    cameras = camera(48, 80)
    reference = fp32_engine.infer(images, cameras, uncertainty=True)
    fast = bf16_engine.infer(images, cameras, uncertainty=True)
    deviation = relative_deviation(fast.depth, reference.depth)
    # measured on these frames: median ~0.2%, p99 ~0.6%
    assert np.median(deviation) < 0.01 and np.percentile(deviation, 99) < 0.03
    sigma = np.abs(fast.sigma - reference.sigma)
    assert np.median(sigma) < 0.02 * np.median(reference.sigma) + 1e-3
    # one batched call of different frames, each equal to the frame alone
    frames = [FrameIn(images[0], cameras), FrameIn(picture(40, 64, 5), camera(40, 64))]
    together = bf16_engine.infer_frames(frames)
    for frame, result in zip(frames, together):
        alone = bf16_engine.infer(frame.rgb, frame.intrinsics)
        np.testing.assert_allclose(result.depth, alone.depth, rtol=2e-2)


@needs_bf16
def test_bf16_depth_on_a_real_frame_at_the_default_size(engine):
    folder = shared_data('nyu_v2_eigen_test_sg10')
    meta = json.loads((folder / 'intrinsics.json').read_text())
    from PIL import Image
    rgb = np.array(Image.open(sorted((folder / 'rgb').iterdir())[0]).convert('RGB'))
    cameras = Intrinsics(meta['fx'], meta['fy'], meta['cx'], meta['cy'], meta['width'],
                         meta['height'])
    fast = DepthCLIP(ModelConfig(pretrained='none', device='cpu', precision='bf16')).load()
    deviation = relative_deviation(fast.predict(rgb, cameras), engine.predict(rgb, cameras))
    # measured: median ~0.2%, p99 ~0.8% (random weights; ~1% p99 over all 18 frames)
    assert np.median(deviation) < 0.01 and np.percentile(deviation, 99) < 0.03


@needs_bf16
def test_referring_and_scenes_run_on_the_bf16_engine(bf16_engine, fp32_engine):
    from depthclip_ros.objects.referring import ReferringCLIP
    rgb = picture(64, 96, seed=3)
    masks = np.zeros((2, 64, 96), bool)
    masks[0, :, :48] = True
    masks[1, :, 48:] = True
    cameras = camera(64, 96)
    scores = {}
    for name, engine in (('bf16', bf16_engine), ('fp32', fp32_engine)):
        tokens = engine.infer(rgb, cameras).tokens
        referring = ReferringCLIP(engine)
        [node] = referring.refer(rgb, masks, [1, 2], ['the left half'], ['the half'],
                                 protocol='node', tokens=tokens)
        [paper] = referring.refer(rgb, masks, [1, 2], ['the left half'], ['the half'],
                                  protocol='paper')
        scene = engine.scene_classifier.classify(rgb, ['kitchen', 'street'])
        scores[name] = (node.scores, paper.scores, scene.probabilities)
    for fast, reference in zip(scores['bf16'], scores['fp32']):
        assert all(np.isfinite(fast))
        np.testing.assert_allclose(fast, reference, rtol=0.02, atol=0.5)


# ------------------------------------------------------------------ CUDA graphs (CPU)
class FakeGraph:
    """What a capture returns: runs the trunk on a static copy, counts replays."""

    def __init__(self, trunk, x):
        self.trunk, self.static_in, self.replays = trunk, x.clone(), 0

    def run(self, x):
        self.static_in.copy_(x)
        self.replays += 1
        return self.trunk(self.static_in).clone()


def test_trunk_graphs_capture_once_per_shape_and_stay_bounded(caplog):
    captured = []

    def capture(trunk, x):
        captured.append(tuple(x.shape))
        return FakeGraph(trunk, x)

    def trunk(x):
        return x * 2.0

    graphs = TrunkGraphs(trunk, max_graphs=2, capture=capture)
    one, two, three = (torch.randn(b, 3, 4, 4) for b in (1, 2, 3))
    for _ in range(3):
        torch.testing.assert_close(graphs(one), one * 2.0)
    torch.testing.assert_close(graphs(two), two * 2.0)
    assert captured == [(1, 3, 4, 4), (2, 3, 4, 4)] and graphs.captures == 2
    assert graphs.replays == 4 and graphs.eager_runs == 0
    # the output is a copy: the next replay does not change it
    first = graphs(one)
    graphs(-one)
    torch.testing.assert_close(first, one * 2.0)
    # a third shape runs eagerly (no eviction, no re-capture), warned once
    with caplog.at_level(logging.WARNING, logger='depthclip_ros.engine.cuda'):
        for _ in range(2):
            torch.testing.assert_close(graphs(three), three * 2.0)
    assert graphs.eager_runs == 2 and len(graphs.shapes) == 2 and graphs.captures == 2
    assert sum('run eagerly' in r.message for r in caplog.records) == 1
    # the layout is part of the key
    assert TrunkGraphs.key(one) != TrunkGraphs.key(
        one.contiguous(memory_format=torch.channels_last))
    with pytest.raises(ValueError, match='max_graphs'):
        TrunkGraphs(trunk, max_graphs=0)


def test_a_failed_capture_falls_back_to_eager_with_a_warning(caplog):
    def capture(trunk, x):
        raise RuntimeError('operation not permitted when stream is capturing')

    graphs = TrunkGraphs(lambda x: x + 1.0, capture=capture)
    x = torch.zeros(1, 3, 2, 2)
    with caplog.at_level(logging.WARNING, logger='depthclip_ros.engine.cuda'):
        torch.testing.assert_close(graphs(x), x + 1.0)
        torch.testing.assert_close(graphs(torch.ones(2, 3, 2, 2)), torch.full((2, 3, 2, 2),
                                                                             2.0))
    assert 'not permitted' in graphs.disabled_reason and graphs.captures == 0
    assert graphs.eager_runs == 2
    assert sum('capture' in r.message and 'failed' in r.message
               for r in caplog.records) == 1


class FakeEvent:
    def __init__(self, log):
        self.log = log
        log.append(('made', self))

    def record(self, stream=None):
        self.log.append(('record', self))

    def synchronize(self):
        self.log.append(('synchronize', self))


def test_pinned_uploads_reuse_a_buffer_per_shape_after_its_copy_and_stay_bounded():
    log = []
    uploads = PinnedUploads(max_buffers=2, pin=False, make_event=lambda: FakeEvent(log))
    device = torch.device('cpu')

    def events():
        return [entry for kind, entry in log if kind == 'made']

    def waited():
        return [entry for kind, entry in log if kind == 'synchronize']

    a, b, c = (np.full((1, h, 5, 3), h, np.uint8) for h in (2, 3, 4))
    out = uploads.upload(a, device)
    assert out.dtype == torch.uint8 and np.array_equal(out.numpy(), a)
    assert ('record', events()[0]) in log and not waited()
    buffer = uploads._buffers[a.shape][0]
    out = uploads.upload(a + 1, device)  # same shape: waits for the last copy, refills
    assert waited() == [events()[0]] and uploads._buffers[a.shape][0] is buffer
    assert np.array_equal(out.numpy(), a + 1)
    uploads.upload(b, device)
    assert waited() == [events()[0]]  # a new shape waits for nothing
    uploads.upload(c, device)  # a third shape drops the least recently used (a's) ...
    assert uploads.shapes == [b.shape, c.shape]
    assert waited() == [events()[0], events()[1]]  # ... after its last copy finished
    # a non-contiguous array is uploaded by value
    strided = np.zeros((1, 3, 10, 3), np.uint8)[:, :, ::2]
    assert np.array_equal(uploads.upload(strided, device).numpy(), strided)
    with pytest.raises(ValueError, match='max_buffers'):
        PinnedUploads(max_buffers=0)


def test_warm_up_runs_one_frame_and_leaves_the_engine_as_it_was(small_engine):
    encodings = small_engine.text_encodings
    head = small_engine.head
    small_engine.warm_up()
    assert small_engine.text_encodings == encodings and small_engine.head is head


# ------------------------------------------------------------------ on a GPU only
@pytest.fixture(scope='module')
def cuda_engines():
    eager = DepthCLIP(ModelConfig(pretrained='none', device='cuda', precision='fp16',
                                  input_size=SMALL)).load()
    graphs = DepthCLIP(ModelConfig(pretrained='none', device='cuda', precision='fp16',
                                   input_size=SMALL, cuda_graphs=True)).load()
    return eager, graphs


@needs_cuda
def test_cuda_graph_depth_equals_eager_fp16(cuda_engines):
    eager, graphs = cuda_engines
    assert graphs._graphs is not None and graphs._graphs.disabled_reason is None
    assert graphs._graphs.captures >= 1  # the warm-up frame at load captured batch 1
    for batch in (1, 2, 1):
        images = np.stack([picture(48, 80, seed) for seed in range(batch)])
        reference = eager.infer(images, camera(48, 80), uncertainty=True)
        replayed = graphs.infer(images, camera(48, 80), uncertainty=True)
        np.testing.assert_allclose(replayed.depth, reference.depth, rtol=1e-3)
        np.testing.assert_allclose(replayed.sigma, reference.sigma, rtol=1e-2, atol=1e-4)
        torch.testing.assert_close(replayed.tokens, reference.tokens, rtol=1e-2, atol=1e-2)
    assert graphs._graphs.disabled_reason is None
    assert {key[0][0] for key in graphs._graphs.shapes} == {1, 2}
    assert graphs._graphs.replays >= 3
    assert graphs._uploads is not None and graphs._uploads.shapes


@needs_cuda
def test_cuda_graph_tokens_are_not_overwritten_by_the_next_frame(cuda_engines):
    _, graphs = cuda_engines
    first = graphs.infer(picture(seed=1), camera(48, 80)).tokens.clone()
    kept = graphs.infer(picture(seed=1), camera(48, 80)).tokens
    graphs.infer(picture(seed=2), camera(48, 80))
    torch.testing.assert_close(kept, first, rtol=0, atol=0)


@needs_cuda
def test_cuda_bf16_depth_is_within_a_percent_of_fp32():
    if not torch.cuda.is_bf16_supported():
        pytest.skip('this GPU has no bf16')
    fp32 = DepthCLIP(ModelConfig(pretrained='none', device='cuda', precision='fp32',
                                 input_size=SMALL)).load()
    bf16 = DepthCLIP(ModelConfig(pretrained='none', device='cuda', precision='bf16',
                                 input_size=SMALL)).load()
    images = np.stack([picture(48, 80, seed) for seed in range(2)])
    deviation = relative_deviation(bf16.predict(images, camera(48, 80)),
                                   fp32.predict(images, camera(48, 80)))
    assert np.median(deviation) < 0.01 and np.percentile(deviation, 99) < 0.03

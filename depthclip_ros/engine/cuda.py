"""Opt-in CUDA speed paths (``ModelConfig.cuda_graphs``): the trunk as captured CUDA
graphs and pinned host buffers for the upload. Not yet run on a GPU by this project;
their CPU-side mechanics are tested with stand-ins for the capture and the events."""

from __future__ import annotations

from collections import OrderedDict
import logging

import numpy as np
import torch

LOG = logging.getLogger(__name__)

MAX_CUDA_GRAPHS = 8  # captured trunk graphs (input shapes) per engine; more run eagerly
MAX_PINNED_BUFFERS = 8  # pinned host upload buffers (image shapes) per engine
CUDA_GRAPH_WARMUP_ITERS = 3  # eager runs on a side stream before a capture


class _Graph:
    """One captured trunk: replay after copying into its static input; the output is
    copied out (the next replay overwrites the static one)."""

    def __init__(self, static_in: torch.Tensor, static_out: torch.Tensor, graph):
        self.static_in, self.static_out, self.graph = static_in, static_out, graph

    def run(self, x: torch.Tensor) -> torch.Tensor:
        with torch.cuda.device(self.static_in.device):
            self.static_in.copy_(x)
            self.graph.replay()
            return self.static_out.clone()


class TrunkGraphs:
    """The image trunk as CUDA graphs (``ModelConfig.cuda_graphs``): one captured graph
    per input (shape, dtype, layout), i.e. per batch size at the fixed input size.

    The first input of a new shape captures (eager warm-up runs on a side stream first,
    as PyTorch's CUDA graph documentation prescribes); later ones replay. At most
    ``max_graphs`` are kept (each holds its own memory pool); inputs of further shapes run
    eagerly, so a changing batch size never re-captures over and over. A failed capture
    is logged once and turns the graphs off: everything runs eagerly from then on.
    ``capture`` (tests) replaces the CUDA capture: ``capture(trunk, x) -> runner`` with a
    ``run(x)`` method. Calls must come in inference mode (the engine checks).
    """

    def __init__(self, trunk, max_graphs: int = MAX_CUDA_GRAPHS, capture=None):
        if max_graphs < 1:
            raise ValueError(f'max_graphs must be >= 1, got {max_graphs}')
        self.trunk = trunk
        self.max_graphs = max_graphs
        self._capture = capture or capture_cuda_graph
        self._graphs: OrderedDict = OrderedDict()
        self.captures = 0  # successful captures (tests, diagnostics)
        self.replays = 0
        self.eager_runs = 0
        self.disabled_reason: str | None = None
        self._full_logged = False

    @staticmethod
    def key(x: torch.Tensor) -> tuple:
        layout = 'channels_last' if x.dim() == 4 and not x.is_contiguous() and \
            x.is_contiguous(memory_format=torch.channels_last) else 'contiguous'
        return tuple(x.shape), x.dtype, str(x.device), layout

    @property
    def shapes(self) -> list[tuple]:
        return list(self._graphs)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.disabled_reason is not None:
            return self._eager(x)
        key = self.key(x)
        graph = self._graphs.get(key)
        if graph is None:
            if len(self._graphs) >= self.max_graphs:
                if not self._full_logged:
                    LOG.warning('%d CUDA graphs captured already (the most kept); inputs of '
                                'other shapes (%s) run eagerly', self.max_graphs, key[0])
                    self._full_logged = True
                return self._eager(x)
            try:
                graph = self._capture(self.trunk, x)
            except Exception as error:  # noqa: BLE001 - any capture failure: run eagerly
                self.disabled_reason = f'{type(error).__name__}: {error}'
                LOG.warning('CUDA graph capture of the image trunk failed for input %s '
                            '(%s); running it eagerly from now on', key[0],
                            self.disabled_reason)
                return self._eager(x)
            self._graphs[key] = graph
            self.captures += 1
            LOG.info('captured the image trunk as a CUDA graph for input %s', key[0])
        self.replays += 1
        return graph.run(x)

    def _eager(self, x: torch.Tensor) -> torch.Tensor:
        self.eager_runs += 1
        return self.trunk(x)


def capture_cuda_graph(trunk, x: torch.Tensor) -> _Graph:
    """Capture ``trunk`` on a static copy of ``x`` (CUDA): warm-up on a side stream,
    then one capture, all with ``x``'s device current; raises whatever capture raises."""
    with torch.cuda.device(x.device):
        static_in = x.clone()  # same shape, dtype and layout
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(CUDA_GRAPH_WARMUP_ITERS):
                trunk(static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = trunk(static_in)
        return _Graph(static_in, static_out, graph)


class PinnedUploads:
    """Pinned (page-locked) host buffers, one per image shape (at most ``max_buffers``;
    the least recently used is dropped), so that an upload is one non-blocking copy.

    A buffer is refilled only after its previous upload finished (an event recorded
    after the copy is waited for), so frames of one shape in one batch cannot overwrite
    each other in flight. ``pin``/``make_event`` (tests) replace pinning and the CUDA
    event.
    """

    def __init__(self, max_buffers: int = MAX_PINNED_BUFFERS, pin: bool = True,
                 make_event=None):
        if max_buffers < 1:
            raise ValueError(f'max_buffers must be >= 1, got {max_buffers}')
        self.max_buffers = max_buffers
        self.pin = pin
        self._make_event = make_event or torch.cuda.Event
        self._buffers: OrderedDict = OrderedDict()  # shape -> [host tensor, event]

    @property
    def shapes(self) -> list[tuple]:
        return list(self._buffers)

    def upload(self, images: np.ndarray, device: torch.device) -> torch.Tensor:
        """``images`` (uint8) on ``device``: copied into the pinned buffer of its shape,
        then sent with one non-blocking copy."""
        key = tuple(images.shape)
        entry = self._buffers.get(key)
        if entry is None:
            host = torch.empty(key, dtype=torch.uint8, pin_memory=self.pin)
            entry = self._buffers[key] = [host, None]
            while len(self._buffers) > self.max_buffers:
                _, (_, event) = self._buffers.popitem(last=False)
                if event is not None:
                    event.synchronize()  # its copy may still read the buffer
        else:
            self._buffers.move_to_end(key)
            if entry[1] is not None:
                entry[1].synchronize()
        host = entry[0]
        host.copy_(torch.from_numpy(np.ascontiguousarray(images)))
        out = host.to(device, non_blocking=True)
        event = self._make_event()
        event.record(torch.cuda.current_stream(device) if device.type == 'cuda' else None)
        entry[1] = event
        return out


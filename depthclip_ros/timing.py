"""Per-stage wall-clock timing shared by the engine, the node and the benchmarks, and the
node's per-kind log throttle."""

from __future__ import annotations

from contextlib import contextmanager
import re
import statistics
import time
from typing import Callable, Iterator


class StageTimer:
    """Collects milliseconds per named stage.

    ``synchronize`` is called before each clock read (pass ``torch.cuda.synchronize``
    on CUDA so that asynchronous kernels are charged to the stage that launched them).
    """

    def __init__(self, synchronize: Callable[[], None] | None = None):
        self._synchronize = synchronize or (lambda: None)
        self.samples: dict[str, list[float]] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._synchronize()
            self.samples.setdefault(name, []).append((time.perf_counter() - start) * 1e3)

    def last(self) -> dict[str, float]:
        """The latest sample of every stage, in milliseconds."""
        return {name: values[-1] for name, values in self.samples.items()}

    def medians(self) -> dict[str, float]:
        """Median milliseconds of every stage."""
        return {name: statistics.median(values) for name, values in self.samples.items()}

    def clear(self) -> None:
        self.samples.clear()


@contextmanager
def _no_timing(name: str) -> Iterator[None]:
    yield


def stage_or_nothing(timer: StageTimer | None):
    """``timer.stage`` when a timer is given, else a context manager that does nothing."""
    return timer.stage if timer is not None else _no_timing


class Throttle:
    """``throttle(text)`` is True at most once per ``period_s`` for each kind of message.

    The kind is the text with everything that comes from the input blanked: numbers, and
    quoted literals (``'...'``, ``"..."``: encodings, model names, frame ids), so 'data
    has 10 bytes' and 'data has 12 bytes' are one kind, and so are ``unsupported encoding
    'x1'`` and ``unsupported encoding 'x2'``. At most ``max_kinds`` kinds are remembered;
    beyond that every new kind shares one overflow kind, so no variety of input can make
    more than ``max_kinds + 1`` messages per period, nor grow the memory.
    """

    OVERFLOW = '(other problems)'
    _INPUT = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[-+]?\d[\d.e+-]*")

    def __init__(self, period_s: float, max_kinds: int = 32,
                 clock: Callable[[], float] = time.monotonic):
        self.period_s, self.max_kinds, self._clock = period_s, max_kinds, clock
        self._last: dict[str, float] = {}

    @classmethod
    def kind(cls, text: str) -> str:
        return cls._INPUT.sub('#', text)

    def __call__(self, text: str) -> bool:
        kind = self.kind(text)
        if kind not in self._last and len(self._last) >= self.max_kinds:
            kind = self.OVERFLOW
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.period_s:
            return False
        self._last[kind] = now
        return True

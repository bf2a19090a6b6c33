"""Per-stage wall-clock timing shared by the engine, the node and the benchmarks."""

from __future__ import annotations

from contextlib import contextmanager
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

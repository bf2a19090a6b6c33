"""Progress of a tool's loop over frames, files or stages: done of total, rate and ETA.

On a terminal a tqdm bar; otherwise (a log, a pipe, a test) a plain line on the first
item, every :data:`PLAIN_EVERY_S` seconds and on the last, so that logs stay readable.
Lines a tool prints while a bar is shown go through :meth:`Progress.write`, which keeps
the bar intact. Standard library only until a bar is drawn (tqdm is imported then).
"""

from __future__ import annotations

import sys
import time

PLAIN_EVERY_S = 5.0


def _plural(unit: str, count: float) -> str:
    return unit if count == 1 else f'{unit}s'


class Progress:
    """``label``: what leads a plain line (``bag``: ``bag: frame 3/10 (...)``); ``unit``:
    what is counted (``frame``, ``image``); ``total``: how many (``None``: unknown)."""

    def __init__(self, label: str, unit: str, total: int | None = None, stream=None):
        self.label, self.unit, self.total = label, unit, total
        self.stream = stream or sys.stderr
        self.done = 0
        self.bar = None
        self._last_line = None
        self._start = time.perf_counter()

    def restart(self) -> None:
        """Rates count from now (after the model was loaded)."""
        self._start = time.perf_counter()

    def _terminal(self) -> bool:
        try:
            return self.stream.isatty()
        except (AttributeError, ValueError):
            return False

    def update(self, done: int, total: int | None = None) -> None:
        """``done`` items of ``total`` (default: the total given before)."""
        if total is not None:
            self.total = total
        self.done = done
        if self.bar is None and self._terminal():
            from tqdm import tqdm
            self.bar = tqdm(total=self.total, unit=self.unit, file=self.stream,
                            dynamic_ncols=True, desc=self.label)
        if self.bar is not None:
            if self.total is not None and self.bar.total != self.total:
                self.bar.total = self.total
            self.bar.update(done - self.bar.n)
            return
        now = time.perf_counter()
        if self._last_line is None or now - self._last_line >= PLAIN_EVERY_S or \
                done == self.total:
            self._last_line = now
            print(self.line(now), file=self.stream, flush=True)

    def step(self, count: int = 1) -> None:
        self.update(self.done + count)

    def line(self, now: float | None = None) -> str:
        """``label: unit done/total (rate units/s, ETA s)``."""
        now = time.perf_counter() if now is None else now
        rate = self.done / max(now - self._start, 1e-9)
        if self.total is None:
            return (f'{self.label}: {self.unit} {self.done} ({rate:.2f} '
                    f'{_plural(self.unit, 2)}/s)')
        left = self.total - self.done
        eta = f', ETA {left / rate:.0f} s' if rate > 0 and left > 0 else ''
        return (f'{self.label}: {self.unit} {self.done}/{self.total} ({rate:.2f} '
                f'{_plural(self.unit, 2)}/s{eta})')

    def write(self, text: str, file=None) -> None:
        """``text`` as a line on ``file`` (stdout), above the bar when one is shown."""
        file = file or sys.stdout
        if self.bar is not None:
            self.bar.write(text, file=file)
        else:
            print(text, file=file, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Stages:
    """Named steps of a run announced as they start, with their count and the time the
    previous one took: ``locate: [2/4] candidate masks (depth took 3.1 s)``."""

    def __init__(self, label: str, total: int, stream=None):
        self.label, self.total = label, total
        self.stream = stream or sys.stderr
        self.index = 0
        self._previous: tuple[str, float] | None = None

    def start(self, name: str) -> None:
        now = time.perf_counter()
        self.index += 1
        took = ''
        if self._previous is not None:
            took = f' ({self._previous[0]} took {now - self._previous[1]:.1f} s)'
        self._previous = (name, now)
        print(f'{self.label}: [{self.index}/{self.total}] {name}...{took}', file=self.stream,
              flush=True)

    def finish(self) -> None:
        """Say how long the last step took."""
        if self._previous is not None:
            name, started = self._previous
            print(f'{self.label}: {name} took {time.perf_counter() - started:.1f} s',
                  file=self.stream, flush=True)
            self._previous = None

"""Progress for people and for cron: a live bar on a terminal, plain periodic lines elsewhere.

Lines carry counts only, never personal data. The bar counts rows: rows already final after
planning (invalid, answered from the journal) start it off, and each answered person advances it
by the number of rows they stand for.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm

from batch_enricher.models import Status


class Progress:
    """The no-op base: the library calls these hooks; subclasses show them."""

    def phase(self, name: str) -> None:
        """A new phase began: planning, calling, writing."""

    def start(self, total_rows: int, done_rows: int, calls: int) -> None:
        """Calling begins: `done_rows` of `total_rows` are already final; `calls` to make."""

    def advance(self, rows: int, status: Status, *, billed: bool) -> None:
        """One person was answered (or failed); they stand for `rows` rows."""

    def note(self, message: str) -> None:
        """A one-line message for the operator (no personal data)."""

    def close(self) -> None:
        """The run is over."""


NullProgress = Progress


class _Counting(Progress):
    def __init__(self) -> None:
        self.total = 0
        self.done = 0
        self.calls = 0
        self.answered = 0
        self.billed = 0
        self.counts: Counter[Status] = Counter()
        self.started = time.monotonic()

    def start(self, total_rows: int, done_rows: int, calls: int) -> None:
        self.total, self.done, self.calls = total_rows, done_rows, calls
        self.started = time.monotonic()

    def advance(self, rows: int, status: Status, *, billed: bool) -> None:
        self.done += rows
        self.answered += 1
        self.counts[status] += rows
        self.billed += int(billed)

    def _counts_text(self) -> str:
        c = self.counts
        return (
            f"ok {c[Status.OK]} · rejected {c[Status.REJECTED]} · failed {c[Status.FAILED]}"
            f" · billed {self.billed}"
        )


class BarProgress(_Counting):
    """A tqdm bar on a terminal: rows done/total, rate, ETA and live counts."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream
        self._bar: tqdm[None] | None = None

    def start(self, total_rows: int, done_rows: int, calls: int) -> None:
        super().start(total_rows, done_rows, calls)
        self._bar = tqdm(
            total=total_rows,
            initial=done_rows,
            unit="row",
            file=self._stream,
            dynamic_ncols=True,
            desc=f"{calls} call(s)",
            mininterval=0.2,
        )
        self._bar.set_postfix_str(self._counts_text(), refresh=False)

    def advance(self, rows: int, status: Status, *, billed: bool) -> None:
        super().advance(rows, status, billed=billed)
        if self._bar is not None:
            self._bar.set_postfix_str(self._counts_text(), refresh=False)
            self._bar.update(rows)

    def note(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message, file=self._stream)
        else:
            print(message, file=self._stream)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class LineProgress(_Counting):
    """Plain lines every `interval` seconds, for logs and cron mail: no bar, no carriage return."""

    def __init__(
        self,
        stream: TextIO,
        *,
        interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._stream = stream
        self._interval = interval
        self._clock = clock
        self._last = 0.0

    def phase(self, name: str) -> None:
        print(f"batch-enricher: {name}", file=self._stream, flush=True)

    def start(self, total_rows: int, done_rows: int, calls: int) -> None:
        super().start(total_rows, done_rows, calls)
        self._last = self._clock()
        print(
            f"batch-enricher: {total_rows} row(s), {done_rows} already final, "
            f"{calls} call(s) to make",
            file=self._stream,
            flush=True,
        )

    def advance(self, rows: int, status: Status, *, billed: bool) -> None:
        super().advance(rows, status, billed=billed)
        now = self._clock()
        if now - self._last >= self._interval:
            self._last = now
            print(self.line(now), file=self._stream, flush=True)

    def line(self, now: float) -> str:
        """The periodic progress line."""
        elapsed = max(now - self.started, 1e-9)
        rate = self.answered / elapsed
        left = self.calls - self.answered
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        share = 100.0 * self.done / self.total if self.total else 100.0
        return (
            f"progress: {self.done}/{self.total} rows ({share:.1f}%), "
            f"{self.answered}/{self.calls} calls, {rate:.1f} calls/s, ETA {eta}; "
            f"{self._counts_text()}"
        )

    def note(self, message: str) -> None:
        print(message, file=self._stream, flush=True)


def make_progress(*, quiet: bool, stream: TextIO | None = None) -> Progress:
    """A bar when `stream` (stderr) is a terminal, plain lines when it is not, nothing with -q."""
    stream = stream or sys.stderr
    if quiet:
        return NullProgress()
    if stream.isatty():
        return BarProgress(stream)
    return LineProgress(stream)

"""Progress for people and for cron: a live bar on a terminal, plain periodic lines elsewhere.

Lines carry counts only, never personal data. The bar counts rows: rows already final after
planning (invalid, answered from the journal) start it off, and each answered person advances it
by the number of rows they stand for.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Final, TextIO

from tqdm import tqdm

from batch_enricher.models import Status


class Progress:
    """The no-op base: the library calls these hooks; subclasses show them."""

    def phase(self, name: str) -> None:
        """A new phase began: planning, calling, writing."""

    def start(
        self,
        total_rows: int,
        done_rows: int,
        calls: int,
        *,
        already: Mapping[Status, int] | None = None,
    ) -> None:
        """Calling begins: `done_rows` of `total_rows` are final (`already`: by status); `calls`."""

    def advance(self, rows: int, status: Status, *, billed: bool) -> None:
        """One person was answered (or failed); they stand for `rows` rows."""

    def note(self, message: str) -> None:
        """A one-line message for the operator (no personal data)."""

    def close(self) -> None:
        """The run is over."""


NullProgress = Progress

#: Statuses in the live counts; `skipped` is only decided after calling ends, so it is left out.
_SHOWN: Final = (Status.OK, Status.INVALID, Status.REJECTED, Status.FAILED)
_SHOWN_WITHOUT_INVALID: Final = tuple(s for s in _SHOWN if s is not Status.INVALID)


class _Counting(Progress):
    """Keeps the counts both displays show; `clock` is injectable so tests need not sleep."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.total = 0
        self.done = 0
        self.calls = 0
        self.answered = 0
        self.billed = 0
        self.counts: Counter[Status] = Counter()
        self.started = clock()
        self._shown: tuple[Status, ...] = _SHOWN

    def start(
        self,
        total_rows: int,
        done_rows: int,
        calls: int,
        *,
        already: Mapping[Status, int] | None = None,
    ) -> None:
        self.total, self.done, self.calls = total_rows, done_rows, calls
        self.counts.update(already or {})
        # Invalid rows are only known from `already`: without it a live "invalid 0" would lie.
        self._shown = _SHOWN if already is not None else _SHOWN_WITHOUT_INVALID
        self.started = self._clock()
        self._begin()

    def _begin(self) -> None:
        """Show that calling began (the counts above are set)."""

    def advance(self, rows: int, status: Status, *, billed: bool) -> None:
        self.done += rows
        self.answered += 1
        self.counts[status] += rows
        self.billed += int(billed)

    def _counts_text(self) -> str:
        c = self.counts
        shown = " · ".join(f"{status.value} {c[status]}" for status in self._shown)
        return f"{shown} · billed {self.billed}"


#: The size assumed when a terminal reports 0 (a pseudo-terminal nobody sized: `script`, some
#: `docker exec -t`): tqdm would take it as -1 columns and rows, and never draw the bar.
_DEFAULT_TERMINAL_SIZE: Final = os.terminal_size((80, 24))


def _terminal_size(stream: TextIO) -> os.terminal_size | None:
    """The size of the terminal `stream` writes to, or None if it is not one we can ask.

    A 0 (an unsized pseudo-terminal) becomes $COLUMNS / $LINES when set, else 80 x 24.
    """
    try:
        size = os.get_terminal_size(stream.fileno())
    except (OSError, ValueError):  # no file descriptor (io.UnsupportedOperation), or no terminal
        return None
    columns = size.columns or _environ_size("COLUMNS") or _DEFAULT_TERMINAL_SIZE.columns
    lines = size.lines or _environ_size("LINES") or _DEFAULT_TERMINAL_SIZE.lines
    return os.terminal_size((columns, lines))


def _environ_size(name: str) -> int:
    """A positive whole number from the environment, or 0."""
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else 0


class BarProgress(_Counting):
    """A tqdm bar on a terminal: rows done/total, rate, ETA and live counts.

    The bar follows the terminal's width as it changes. tqdm's own `dynamic_ncols` is not used:
    it takes an unsized terminal's 0 columns at face value and then shows nothing at all.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream
        self._bar: tqdm[None] | None = None

    def phase(self, name: str) -> None:
        self.close()  # the bar is complete once calling ends; the next phase gets its own line
        print(f"batch-enricher: {name}", file=self._stream, flush=True)

    def _begin(self) -> None:
        ncols, nrows = self._size()
        self._bar = tqdm(
            total=self.total,
            initial=self.done,
            unit="row",
            file=self._stream,
            desc=f"{self.calls} call(s)",
            mininterval=0.2,
            ncols=ncols,
            nrows=nrows,
        )
        self._bar.set_postfix_str(self._counts_text(), refresh=False)

    def _size(self) -> tuple[int, int] | tuple[None, None]:
        """tqdm's `ncols` and `nrows` for the terminal now, one spare as tqdm's own leave them
        (a full line never wraps); None for both when the stream has no size to ask for."""
        size = _terminal_size(self._stream)
        if size is None:
            return None, None
        return size.columns - 1, size.lines - 1

    def advance(self, rows: int, status: Status, *, billed: bool) -> None:
        super().advance(rows, status, billed=billed)
        if self._bar is not None:
            self._bar.ncols, self._bar.nrows = self._size()  # follow a resized window
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
        super().__init__(clock)
        self._stream = stream
        self._interval = interval
        self._last = 0.0

    def phase(self, name: str) -> None:
        print(f"batch-enricher: {name}", file=self._stream, flush=True)

    def _begin(self) -> None:
        self._last = self.started
        print(
            f"batch-enricher: {self.total} row(s), {self.done} already final, "
            f"{self.calls} call(s) to make",
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
        eta = _clock_text(left / rate) if rate > 0 else "?"
        share = 100.0 * self.done / self.total if self.total else 100.0
        return (
            f"progress: {self.done}/{self.total} rows ({share:.1f}%), "
            f"{self.answered}/{self.calls} calls, {rate:.1f} calls/s, "
            f"elapsed {_clock_text(elapsed)}, ETA {eta}; {self._counts_text()}"
        )

    def note(self, message: str) -> None:
        print(message, file=self._stream, flush=True)


def _clock_text(seconds: float) -> str:
    """A duration as a log reader takes it in at a glance: `42s`, `5m03s`, `2h07m`."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def make_progress(*, quiet: bool, stream: TextIO | None = None) -> Progress:
    """A bar when `stream` (stderr) is a terminal, plain lines when it is not, nothing with -q."""
    stream = stream or sys.stderr
    if quiet:
        return NullProgress()
    if stream.isatty():
        return BarProgress(stream)
    return LineProgress(stream)

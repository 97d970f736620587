"""Progress displays: plain periodic lines for logs, a live bar for terminals, silence with -q."""

from __future__ import annotations

import io
import os
import re

import pytest

from batch_enricher.models import Status
from batch_enricher.progress import BarProgress, LineProgress, NullProgress, make_progress


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeTerminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


PROGRESS_LINE = re.compile(
    r"progress: \d+/\d+ rows \(\d+\.\d%\), \d+/\d+ calls, \d+\.\d calls/s, "
    r"elapsed \w+, ETA \w+; ok \d+ · (invalid \d+ · )?rejected \d+ · failed \d+ · billed \d+"
)


def _progress_lines(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line.startswith("progress:")]


def test_line_progress_prints_one_line_per_interval_with_counts_only() -> None:
    clock, out = FakeClock(), io.StringIO()
    progress = LineProgress(out, interval=10.0, clock=clock)
    progress.start(100, 4, 96, already={Status.INVALID: 4})

    for second in range(1, 36):  # one person answered per second for 35 s
        clock.now += 1
        status = Status.REJECTED if second % 5 == 0 else Status.OK
        progress.advance(1, status, billed=status is Status.OK)

    lines = _progress_lines(out)
    assert len(lines) == 3, out.getvalue()  # at 10 s, 20 s and 30 s; not at 35 s
    assert all(PROGRESS_LINE.fullmatch(line) for line in lines), lines
    assert lines[-1] == (
        "progress: 34/100 rows (34.0%), 30/96 calls, 1.0 calls/s, elapsed 30s, ETA 1m06s; "
        "ok 24 · invalid 4 · rejected 6 · failed 0 · billed 24"
    )
    assert "\r" not in out.getvalue()


def test_line_progress_stays_quiet_between_intervals() -> None:
    clock, out = FakeClock(), io.StringIO()
    progress = LineProgress(out, interval=30.0, clock=clock)
    progress.start(10, 0, 10)
    for _ in range(10):
        clock.now += 2.9  # 29 s in all: under one interval
        progress.advance(1, Status.OK, billed=True)
    assert _progress_lines(out) == []
    assert out.getvalue().splitlines() == [
        "batch-enricher: 10 row(s), 0 already final, 10 call(s) to make"
    ]


def test_invalid_count_is_left_out_when_the_caller_does_not_know_it() -> None:
    clock, out = FakeClock(), io.StringIO()
    progress = LineProgress(out, interval=1.0, clock=clock)
    progress.start(3, 1, 2)  # one row final already, status unknown
    clock.now += 1
    progress.advance(1, Status.OK, billed=True)
    assert _progress_lines(out)[-1].endswith("; ok 1 · rejected 0 · failed 0 · billed 1")


def test_long_eta_reads_as_hours_and_minutes() -> None:
    clock, out = FakeClock(), io.StringIO()
    progress = LineProgress(out, interval=1.0, clock=clock)
    progress.start(100_000, 0, 100_000)
    for _ in range(10):  # 1 call/s: 99,990 calls, so as many seconds, to go
        clock.now += 1
        progress.advance(1, Status.OK, billed=True)
    assert "elapsed 10s, ETA 27h46m;" in _progress_lines(out)[-1]


def test_bar_redraws_in_place_with_fraction_and_live_counts() -> None:
    out = FakeTerminal()
    progress = BarProgress(out)
    progress.start(50, 10, 40, already={Status.INVALID: 10})
    for _ in range(40):
        progress.advance(1, Status.OK, billed=True)
    progress.close()
    text = out.getvalue()
    assert text.count("\r") >= 2
    assert "50/50" in text and "100%" in text
    assert "ok 40 · invalid 10 · rejected 0 · failed 0 · billed 40" in text


def test_bar_phase_after_calling_ends_the_bar_and_names_the_phase() -> None:
    out = FakeTerminal()
    progress = BarProgress(out)
    progress.start(2, 0, 2)
    progress.advance(2, Status.OK, billed=True)
    progress.phase("writing")
    assert out.getvalue().endswith("\nbatch-enricher: writing\n")


def test_make_progress_picks_bar_lines_or_nothing() -> None:
    assert type(make_progress(quiet=False, stream=FakeTerminal())) is BarProgress
    assert type(make_progress(quiet=False, stream=io.StringIO())) is LineProgress
    silent = make_progress(quiet=True, stream=FakeTerminal())
    assert type(silent) is NullProgress


class UnsizedTerminal(FakeTerminal):
    """A terminal with a file descriptor whose size the test decides (0 x 0: nobody sized it)."""

    FD = 99

    def __init__(self, monkeypatch: pytest.MonkeyPatch, columns: int = 0, lines: int = 0) -> None:
        super().__init__()
        self.size = os.terminal_size((columns, lines))
        real = os.get_terminal_size

        def get_terminal_size(fd: int = 1) -> os.terminal_size:
            return self.size if fd == self.FD else real(fd)

        # tqdm asks os at each call too: patched there, the test holds with or without the fix.
        monkeypatch.setattr(os, "get_terminal_size", get_terminal_size)
        monkeypatch.delenv("COLUMNS", raising=False)
        monkeypatch.delenv("LINES", raising=False)

    def fileno(self) -> int:
        return self.FD

    def frames(self) -> list[str]:
        """Each redraw of the bar, as the terminal shows it."""
        return [f.rstrip("\n") for f in self.getvalue().split("\r") if f.strip()]


def _run_bar(out: FakeTerminal) -> BarProgress:
    progress = BarProgress(out)
    progress.start(50, 10, 40, already={Status.INVALID: 10})
    for _ in range(40):
        progress.advance(1, Status.OK, billed=True)
    return progress


def test_a_terminal_reporting_0_columns_still_shows_the_bar_at_80(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`script`, some `docker exec -t`: a pseudo-terminal of 0 x 0. tqdm took that as -1 and
    drew nothing; the bar must show, 80 wide less tqdm's spare column."""
    out = UnsizedTerminal(monkeypatch)
    _run_bar(out).close()
    frames = out.frames()
    assert frames, "no bar was drawn"
    assert "10/50" in frames[0] and "50/50" in frames[-1] and "100%" in frames[-1]
    assert {len(frame) for frame in frames} == {79}
    assert re.search(r"100%\|.+\| 50/50", frames[-1]), "the bar itself is drawn"


def test_an_unsized_terminal_takes_columns_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = UnsizedTerminal(monkeypatch)
    monkeypatch.setenv("COLUMNS", "150")
    _run_bar(out).close()
    assert {len(frame) for frame in out.frames()} == {149}
    assert "billed 40]" in out.frames()[-1], "wide enough for every count"


def test_the_bar_follows_the_terminal_when_it_is_resized(monkeypatch: pytest.MonkeyPatch) -> None:
    out = UnsizedTerminal(monkeypatch, columns=60, lines=20)
    progress = _run_bar(out)
    assert {len(frame) for frame in out.frames()} == {59}
    out.size = os.terminal_size((120, 40))
    progress.advance(0, Status.OK, billed=False)
    progress.close()
    assert len(out.frames()[-1]) == 119

"""Stops while dispatching: calls still waiting for a send slot give up at once."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

from batch_enricher.models import Status
from batch_enricher.progress import Progress
from batch_enricher.runner import EnrichOptions, enrich
from tests.conftest import Served, person, read_csv, write_csv


class _SignalAfter(Progress):
    """Raises SIGTERM once `answers` people have been answered; remembers when."""

    def __init__(self, answers: int) -> None:
        self._answers = answers
        self.seen = 0
        self.signalled: float | None = None

    def advance(self, rows: int, status: Status, *, billed: bool) -> None:
        self.seen += 1
        if self.seen == self._answers:
            self.signalled = time.monotonic()
            signal.raise_signal(signal.SIGTERM)


def test_sigterm_does_not_wait_out_the_pacer_queue(
    tmp_path: Path, sandbox: Callable[..., Served]
) -> None:
    # At --qps 1 with 8 workers, 7 of them are queued for send slots a second apart. A stop
    # must not make each one sleep until its slot only to give up: that took ~7 s here (and
    # minutes after 10011 slow-downs), long enough for a supervisor to SIGKILL the run before
    # it wrote its output.
    server = sandbox()
    src = write_csv(tmp_path / "in.csv", [list(person(i)) for i in range(30)])
    options = EnrichOptions(
        inputs=[src],
        output=tmp_path / "o.csv",
        key="k",
        endpoint=server.url,
        qps=1,
        concurrency=8,
        state=tmp_path / "j.sqlite3",
    )
    progress = _SignalAfter(answers=2)

    summary = enrich(options, progress)

    assert progress.signalled is not None
    took = time.monotonic() - progress.signalled
    assert took < 1.5, f"took {took:.1f} s to stop after SIGTERM"
    assert summary.exit_code == 3
    assert server.stats.requests == summary.api_calls <= 3
    statuses = [r["status"] for r in read_csv(tmp_path / "o.csv")]
    assert statuses.count("skipped") == 30 - summary.api_calls

"""SIGINT/SIGTERM in each phase of a run: stop sending, still write the output; twice: exit."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from batch_enricher.interrupts import Interrupts
from batch_enricher.models import Status
from batch_enricher.progress import Progress
from batch_enricher.runner import EnrichOptions, enrich
from tests.conftest import Served, person, read_csv, write_csv


class _SignalAt(Progress):
    """Raises a real signal at the start of one phase, as an operator's Ctrl-C would."""

    def __init__(self, phase: str, signum: int = signal.SIGTERM) -> None:
        self._phase = phase
        self._signum = signum
        self.notes: list[str] = []

    def phase(self, name: str) -> None:
        if name == self._phase:
            signal.raise_signal(self._signum)

    def note(self, message: str) -> None:
        self.notes.append(message)


def _options(tmp_path: Path, server: Served, rows: int) -> EnrichOptions:
    src = write_csv(tmp_path / "in.csv", [list(person(i)) for i in range(rows)] + [["", "1", "2"]])
    return EnrichOptions(
        inputs=[src],
        output=tmp_path / "out.csv",
        key="k",
        endpoint=server.url,
        qps=500,
        state=tmp_path / "j.sqlite3",
    )


def test_signal_while_planning_sends_nothing_and_still_writes(
    tmp_path: Path, sandbox: Callable[..., Served]
) -> None:
    server = sandbox()
    progress = _SignalAt("planning")

    summary = enrich(_options(tmp_path, server, 5), progress)

    assert server.stats.requests == 0
    assert summary.exit_code == 3
    rows = read_csv(tmp_path / "out.csv")
    assert [r["status"] for r in rows] == ["skipped"] * 5 + ["invalid"]
    assert "interrupted by SIGTERM" in rows[0]["error_reason"]
    assert any("SIGTERM" in note for note in progress.notes)


def test_signal_while_writing_finishes_the_output(
    tmp_path: Path, sandbox: Callable[..., Served]
) -> None:
    server = sandbox()

    summary = enrich(_options(tmp_path, server, 5), _SignalAt("writing", signal.SIGINT))

    assert server.stats.requests == 5
    assert summary.exit_code == 0, "every row was already final: nothing left to continue"
    assert summary.count(Status.OK) + summary.count(Status.REJECTED) == 5
    assert len(read_csv(tmp_path / "out.csv")) == 6


def test_second_signal_exits_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    exits: list[int] = []
    monkeypatch.setattr("os._exit", exits.append)
    stops: list[str] = []
    interrupts = Interrupts(stops.append, lambda _message: None)

    interrupts.handle(signal.SIGINT)
    assert interrupts.requested and exits == []
    interrupts.handle(signal.SIGINT)
    assert exits == [130]


def test_second_signal_removes_a_half_written_output_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[str] = []
    monkeypatch.setattr("os._exit", lambda code: events.append(f"exit {code}"))
    interrupts = Interrupts(lambda _r: None, lambda _m: None)

    with interrupts.cleanup(lambda: events.append("temp removed")):
        interrupts.handle(signal.SIGINT)
        interrupts.handle(signal.SIGINT)
    assert events == ["temp removed", "exit 130"]

    events.clear()
    interrupts.handle(signal.SIGINT)  # after the block: nothing left to clean up
    assert events == ["exit 130"]


async def test_a_signal_while_dispatching_reaches_the_loop() -> None:
    stops: list[str] = []
    interrupts = Interrupts(stops.append, lambda _message: None)
    interrupts.loop = asyncio.get_running_loop()

    interrupts.handle(signal.SIGTERM)
    assert stops == []  # handed over, not run inside the handler
    await asyncio.sleep(0)
    assert stops == ["interrupted by SIGTERM; rerun the same command to continue"]


def test_handlers_are_restored_afterwards() -> None:
    before = signal.getsignal(signal.SIGTERM)
    interrupts = Interrupts(lambda _r: None, lambda _m: None)
    with interrupts.installed():
        assert signal.getsignal(signal.SIGTERM) == interrupts.handle
    assert signal.getsignal(signal.SIGTERM) == before

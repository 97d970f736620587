"""SIGINT/SIGTERM in each phase of a run: stop sending, still write the output; twice: exit."""

from __future__ import annotations

import asyncio
import io
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from batch_enricher.interrupts import Interrupts
from batch_enricher.models import Status
from batch_enricher.progress import LineProgress, Progress
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


# --- what the operator is told --------------------------------------------------------------


def test_second_signal_says_what_was_kept_what_may_be_lost_and_what_to_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("os._exit", sys.exit)
    notes: list[str] = []
    interrupts = Interrupts(lambda _r: None, notes.append)
    interrupts.in_flight = 8

    interrupts.handle(signal.SIGINT)
    with pytest.raises(SystemExit):
        interrupts.handle(signal.SIGINT)

    assert notes[-1] == (
        "SIGINT again: exiting now; answers received so far are kept in the journal; "
        "up to 8 request(s) in flight were abandoned and may have been billed (their answers "
        "are lost); rerun the same command to continue"
    )


def test_second_signal_while_writing_says_the_output_was_not_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("os._exit", sys.exit)
    notes: list[str] = []
    interrupts = Interrupts(lambda _r: None, notes.append)

    with interrupts.cleanup(lambda: None), pytest.raises(SystemExit):
        interrupts.handle(signal.SIGTERM)
        interrupts.handle(signal.SIGTERM)

    assert notes[-1] == (
        "SIGTERM again: exiting now; answers received so far are kept in the journal; "
        "the unfinished output was not written; rerun the same command to continue"
    )


class _TwiceAt(Progress):
    """Two Ctrl-Cs in a row at one point of the run (`os._exit` is stubbed by the test)."""

    def __init__(self, phase: str) -> None:
        self._at = phase
        self.notes: list[str] = []
        self.started = False

    def _twice(self, where: str) -> None:
        if where == self._at:
            self._at = ""
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)

    def phase(self, name: str) -> None:
        self._twice(name)

    def start(self, *args: object, **kwargs: object) -> None:
        self.started = True

    def advance(self, rows: int, status: Status, *, billed: bool) -> None:
        self._twice("calling")

    def note(self, message: str) -> None:
        self.notes.append(message)


@pytest.mark.parametrize(
    ("where", "in_flight"),
    [("planning", None), ("calling", "up to 4 request(s) in flight"), ("writing", None)],
)
def test_second_signal_counts_requests_in_flight_only_while_calling(
    tmp_path: Path,
    sandbox: Callable[..., Served],
    monkeypatch: pytest.MonkeyPatch,
    where: str,
    in_flight: str | None,
) -> None:
    exits: list[int] = []
    monkeypatch.setattr("os._exit", exits.append)
    progress = _TwiceAt(where)
    options = _options(tmp_path, sandbox(latency_ms=5), 20)
    options.concurrency = 4

    enrich(options, progress)

    assert exits == [130]
    message = next(note for note in progress.notes if "again: exiting now" in note)
    assert "answers received so far are kept in the journal" in message
    assert message.endswith("rerun the same command to continue")
    if in_flight is None:
        assert "in flight" not in message
    else:
        assert f"{in_flight} were abandoned and may have been billed" in message
    assert "every answer so far" not in message


def test_signal_while_planning_says_nothing_was_sent_not_calls_to_make(
    tmp_path: Path, sandbox: Callable[..., Served]
) -> None:
    server = sandbox()
    stream = io.StringIO()

    class _Lines(LineProgress):
        def phase(self, name: str) -> None:
            super().phase(name)
            if name == "planning":
                signal.raise_signal(signal.SIGTERM)

    enrich(_options(tmp_path, server, 5), _Lines(stream))

    assert server.stats.requests == 0
    text = stream.getvalue()
    assert "call(s) to make" not in text
    assert (
        "batch-enricher: planning was interrupted: nothing was sent, nothing billed; the output "
        "marks the rows not yet asked for as skipped; rerun the same command to continue"
    ) in text.splitlines()


def test_ctrl_c_outside_the_runs_own_handler_makes_no_false_promise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before the journal is open (reading the inputs, say) Ctrl-C is a KeyboardInterrupt that
    # reaches main(); nothing has been sent by then.
    from batch_enricher import cli as cli_module

    def interrupted(*_args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("batch_enricher.runner._open_inputs", interrupted)
    src = write_csv(tmp_path / "in.csv", [list(person(1))])
    argv = ["batch-enricher", "enrich", str(src), "--sandbox", "--state", str(tmp_path / "j")]
    monkeypatch.setattr(sys, "argv", argv)

    with pytest.raises(SystemExit) as exit_info:
        cli_module.main()

    assert exit_info.value.code == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        "interrupted: no request was in flight; answers already received are kept in the "
        "journal and an unfinished output was not written; rerun the same command to continue"
    )

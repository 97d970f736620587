"""Signal handler: it may land while the run itself is writing to the terminal."""

from __future__ import annotations

import asyncio
import io
import signal

import pytest

from batch_enricher.interrupts import Interrupts


class _Terminal(io.RawIOBase):
    """A stderr whose next write is interrupted by a signal, as a Ctrl-C can be at any moment."""

    def __init__(self, signum: int | None = None) -> None:
        self.signum = signum
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        if self.signum is not None:
            signum, self.signum = self.signum, None
            signal.raise_signal(signum)  # the handler runs here, inside the buffered write
        self.data += bytes(b)
        return len(b)


async def test_a_signal_during_a_progress_line_still_stops_the_run() -> None:
    # The handler announces the stop on the same stream the progress bar writes to. Landing
    # in the middle of such a write, the announcement hits "reentrant call inside
    # BufferedWriter": that RuntimeError must neither escape into the interrupted code (a
    # traceback out of the write pass or a worker) nor keep the stop from reaching the loop.
    raw = _Terminal(signal.SIGTERM)
    stderr = io.BufferedWriter(raw)  # type: ignore[type-var]

    def note(message: str) -> None:
        stderr.write(message.encode() + b"\n")
        stderr.flush()

    stops: list[str] = []
    interrupts = Interrupts(stops.append, note)
    interrupts.loop = asyncio.get_running_loop()
    with interrupts.installed():
        stderr.write(b"enriching: 40% ...\n")
        stderr.flush()  # a SIGTERM arrives during this write

    assert interrupts.requested
    await asyncio.sleep(0)
    assert stops and "SIGTERM" in stops[0]
    assert b"enriching: 40% ...\n" in raw.data


def test_a_second_signal_during_a_progress_line_still_exits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exits: list[int] = []
    monkeypatch.setattr("os._exit", exits.append)
    raw = _Terminal()
    stderr = io.BufferedWriter(raw)  # type: ignore[type-var]

    def note(message: str) -> None:
        stderr.write(message.encode() + b"\n")
        stderr.flush()

    interrupts = Interrupts(lambda _reason: None, note)
    with interrupts.installed():
        signal.raise_signal(signal.SIGINT)
        raw.signum = signal.SIGINT
        stderr.write(b"enriching: 41% ...\n")
        stderr.flush()  # the second Ctrl-C arrives during this write

    assert exits == [130]

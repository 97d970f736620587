"""SIGINT/SIGTERM during a run: the first stops sending, the second exits at once.

A plain `signal.signal` handler rather than `loop.add_signal_handler`: the loop only runs its
signal callbacks when it gets control back, and the planning and writing passes hold it for
as long as a large file takes to read, so a loop handler would leave Ctrl-C dead there.
The handler itself only sets a flag and, while calls are being dispatched, hands the stop to the
event loop with `call_soon_threadsafe` (the one loop entry point that is safe from a handler).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Final

_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


class Interrupts:
    """Records the first stop request and forwards it to the running loop, if any."""

    def __init__(self, on_stop: Callable[[str], None], note: Callable[[str], None]) -> None:
        self._on_stop = on_stop
        self._note = note
        self.reason: str | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # set while dispatching
        #: requests that may be in flight at most (the workers): set while dispatching
        self.in_flight = 0
        self._cleanups: list[Callable[[], None]] = []

    @property
    def requested(self) -> bool:
        """True once a stop was asked for."""
        return self.reason is not None

    def handle(self, signum: int, _frame: FrameType | None = None) -> None:
        """The signal handler: first signal stops sending, the second exits now."""
        name = signal.Signals(signum).name
        if self.reason is not None:
            self._say(self._exit_message(name))
            for cleanup in reversed(self._cleanups):
                with contextlib.suppress(Exception):
                    cleanup()  # e.g. remove a half-written output: it holds personal data
            os._exit(130)
        self.reason = f"interrupted by {name}; rerun the same command to continue"
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._on_stop, self.reason)
        self._say(f"{name}: no new requests; finishing the calls in flight and the output")

    def _exit_message(self, name: str) -> str:
        """What exiting now keeps and loses, and what to run next."""
        # The journal is committed answer by answer, so every answer received is kept; a
        # request still in flight may have been billed, but its answer will never arrive.
        parts = [f"{name} again: exiting now; answers received so far are kept in the journal"]
        if self.in_flight:
            parts.append(
                f"up to {self.in_flight} request(s) in flight were abandoned and may have "
                "been billed (their answers are lost)"
            )
        if self._cleanups:
            parts.append("the unfinished output was not written")
        parts.append("rerun the same command to continue")
        return "; ".join(parts)

    @contextmanager
    def cleanup(self, action: Callable[[], None]) -> Iterator[None]:
        """Run `action` if a second signal exits the process during the block."""
        self._cleanups.append(action)
        try:
            yield
        finally:
            self._cleanups.remove(action)

    def _say(self, message: str) -> None:
        """Tell the operator, best effort: the stop itself must happen whatever this does."""
        # The signal may have landed inside the run's own write to the same stream ("reentrant
        # call inside BufferedWriter"), or stderr may be gone. Raised here, the error would
        # surface in whatever code the signal interrupted, as a traceback.
        with contextlib.suppress(Exception):
            self._note(message)

    @contextmanager
    def installed(self, *, enabled: bool = True) -> Iterator[Interrupts]:
        """Install the handler for SIGINT and SIGTERM for the duration of the block."""
        import threading

        if not enabled or threading.current_thread() is not threading.main_thread():
            yield self  # only the main thread may install handlers; a library caller elsewhere
            return  # keeps its own
        previous = {sig: signal.signal(sig, self.handle) for sig in _SIGNALS}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

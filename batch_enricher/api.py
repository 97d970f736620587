"""The public Python API without pandas: file jobs, the sandbox for tests, the sync bridge.

`enrich_files` is `enrich` with keyword arguments; `run_sandbox` serves the API emulator on
loopback for the duration of a `with` block. `run_sync` runs a coroutine to completion from
synchronous code whether or not an event loop is already running in this thread (Jupyter runs
one): always in a worker thread with its own loop, so a KeyboardInterrupt lands in the caller's
thread, which asks the run to stop gracefully (`Stop`) and waits for the calls in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from batch_enricher.guards import RunControl
    from batch_enricher.interrupts import Interrupts
    from batch_enricher.progress import Progress
    from batch_enricher.sandbox import Sandbox, SandboxConfig
    from batch_enricher.summary import RunSummary

log = logging.getLogger("batch_enricher")

_T = TypeVar("_T")

#: What a KeyboardInterrupt leaves behind, said once the calls in flight are back.
INTERRUPTED = (
    "interrupted: no new requests; the calls in flight were finished and every answer received "
    "is kept in the journal; call again to continue"
)
#: How often the waiting thread wakes: a signal (or `_thread.interrupt_main`) that did not
#: interrupt its wait is handled at the next wake-up.
_POLL_S = 0.1
#: How long a second KeyboardInterrupt waits for the run to wind down before leaving it.
_ABANDON_WAIT_S = 5.0


class Stop:
    """A graceful stop asked from another thread: planning stops, dispatch sends nothing new.

    The run `attach`es its loop, `RunControl` and `Interrupts` once it has them; a stop asked
    before that is applied on attach.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reason: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._control: RunControl | None = None
        self._interrupts: Interrupts | None = None
        self._task: asyncio.Task[Any] | None = None

    def attach(
        self,
        loop: asyncio.AbstractEventLoop,
        control: RunControl | None,
        interrupts: Interrupts | None,
    ) -> None:
        """Called by the run, in its own thread, once it has a loop (and its controls)."""
        with self._lock:
            self._loop, self._control, self._interrupts = loop, control, interrupts
            self._task = asyncio.current_task(loop)
            if self.reason is not None:
                self._apply(self.reason)

    @property
    def graceful(self) -> bool:
        """Whether the run attached its controls (else a stop can only cancel it)."""
        return self._control is not None

    def request(self, reason: str) -> None:
        """Ask the run to stop sending (from any thread)."""
        with self._lock:
            if self.reason is None:
                self.reason = reason
                self._apply(reason)

    def _apply(self, reason: str) -> None:
        if self._interrupts is not None:
            self._interrupts.reason = reason  # planning checks it between rows
        if self._loop is not None and self._control is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed: nothing to stop
                self._loop.call_soon_threadsafe(self._control.stop, reason)

    def abandon(self) -> None:
        """Cancel the run now (a second interrupt): calls in flight are dropped."""
        with self._lock:
            if self._loop is not None and self._task is not None:
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(self._task.cancel)


def run_sync(
    make: Callable[[], Coroutine[Any, Any, _T]],
    stop: Stop | None = None,
    note: Callable[[str], None] | None = None,
) -> _T:
    """Run the coroutine `make()` in a worker thread with its own loop and return its result.

    A KeyboardInterrupt in this thread asks `stop` for a graceful stop, waits for the run to
    finish its calls in flight (their answers go to the journal), then re-raises; a second one
    abandons the run. Exceptions of the run are raised here.
    """
    box: dict[str, Any] = {}
    stop = stop or Stop()

    async def attached() -> _T:
        stop.attach(asyncio.get_running_loop(), None, None)  # at least cancellable
        return await make()

    def main() -> None:
        try:
            box["result"] = asyncio.run(attached())
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc
        finally:
            done.set()

    done = threading.Event()

    worker = threading.Thread(target=main, name="batch-enricher-run", daemon=True)
    worker.start()
    try:
        _wait(done)
    except KeyboardInterrupt:
        if not stop.graceful:
            stop.abandon()
            done.wait(_ABANDON_WAIT_S)
            raise
        stop.request("interrupted (KeyboardInterrupt); call again to continue")
        if note is not None:
            note("KeyboardInterrupt: no new requests; finishing the calls in flight")
        try:
            _wait(done)
        except KeyboardInterrupt:
            stop.abandon()
            done.wait(_ABANDON_WAIT_S)
            raise
        if "error" in box and not isinstance(box["error"], asyncio.CancelledError):
            raise box["error"] from None
        log.warning(INTERRUPTED)
        raise
    if "error" in box:
        raise box["error"]
    result: _T = box["result"]
    return result


def _wait(done: threading.Event) -> None:
    """Wait for the run to be over, waking now and then so that a KeyboardInterrupt is raised.

    Not `Thread.join`: on CPython 3.11 a join interrupted by KeyboardInterrupt can leave the
    thread reported dead while it still runs (its state lock released by the interrupted
    acquire), and the stop would return before the calls in flight and the output were done.
    """
    while not done.wait(_POLL_S):
        pass


def enrich_files(
    inputs: Sequence[str | os.PathLike[str]],
    *,
    key: str | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> RunSummary:
    """Enrich spreadsheet files as `batch-enricher enrich` does; return the run's summary.

    `options` are `EnrichOptions` fields (`output`, `output_dir`, `endpoint`, `qps`, `state`,
    `max_billed`, `name_col`, ...). The key defaults to $JUHE_API_KEY. An account-level abort
    is in `summary.abort_code` (and `summary.exit_code` is 4), as in the CLI.

    >>> # summary = enrich_files(["customers.csv"], state="journal.sqlite3")
    """
    from batch_enricher.runner import EnrichOptions, enrich_async
    from batch_enricher.store.url import parse_state

    known = {f.name for f in fields(EnrichOptions)} - {"inputs", "key"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"enrich_files() got unexpected keyword arguments: {', '.join(unknown)}")
    for name in ("output", "output_dir", "secret_file"):
        if options.get(name) is not None:
            options[name] = Path(options[name])
    if "state" in options:
        options["state"] = parse_state(options["state"])
    options.setdefault("handle_signals", False)  # the worker thread cannot install handlers
    run_options = EnrichOptions(
        inputs=[Path(p) for p in inputs],
        key=key if key is not None else os.environ.get("JUHE_API_KEY"),
        **options,
    )
    stop = Stop()  # Ctrl-C in the caller's thread: finish the calls in flight, write, re-raise
    note = progress.note if progress is not None else None
    return run_sync(lambda: enrich_async(run_options, progress, stop=stop), stop, note)


@contextlib.contextmanager
def run_sandbox(config: SandboxConfig | None = None, **settings: Any) -> Iterator[Sandbox]:
    """Serve the API emulator on loopback inside the block: `.url` is its endpoint, `.stats`
    what it saw (requests, billed). Settings are `SandboxConfig` fields.

    >>> # with run_sandbox(latency_ms=5) as box: enrich_frame(df, key="k", endpoint=box.url)
    """
    from batch_enricher.sandbox import SandboxConfig, running

    if config is None:
        config = SandboxConfig(**settings)
    elif settings:
        raise TypeError("pass either a SandboxConfig or its fields, not both")
    with running(config) as box:
        yield box

"""The local store: the SQLite journal and the in-process pacer, for one run at a time.

The journal's run lock keeps any other run out, so every person planned is this run's to
call: claims always succeed and cost nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

from batch_enricher.autorate import AutoRate, RateFound
from batch_enricher.client import CallStats
from batch_enricher.groupcommit import GroupCommit
from batch_enricher.guards import RunControl
from batch_enricher.models import Answer
from batch_enricher.pacer import Pacer
from batch_enricher.store.base import Claimed, Limiter, SessionContext, SessionSettings
from batch_enricher.store.sqlite import Journal

__all__ = ["LocalSession", "LocalStore"]


class LocalSession:
    """Sending with the local journal: no one else to ask."""

    def __init__(self, journal: Journal, pacer: Pacer, controller: AutoRate | None) -> None:
        self._journal = journal
        self._pacer = pacer
        self._controller = controller
        # Answers arriving close together share one commit; each `record` still returns only
        # once its own answer is committed (groupcommit.py).
        self._committer = GroupCommit(journal.put_many, pacer.backlog)

    @property
    def pacer(self) -> Limiter:
        """The in-process pacer: at `--qps`, or following the auto-rate controller."""
        return self._pacer

    @property
    def commits(self) -> int:
        """Journal transactions so far."""
        return self._committer.commits

    def found(self) -> RateFound | None:
        """The rate `--qps auto` found (None with a fixed --qps)."""
        return self._controller.found() if self._controller is not None else None

    @property
    def exclusive(self) -> bool:
        """Always: the journal's lock keeps other runs out."""
        return True

    @property
    def wait_for_others(self) -> float:
        """Never needed: no one else can hold a claim."""
        return 0.0

    async def claim(self, keys: Sequence[bytes]) -> Claimed:
        """Every key is this run's."""
        return Claimed(mine=list(keys))

    async def record(self, key: bytes, answer: Answer) -> None:
        """Commit the answer to the SQLite journal; returns once it is committed."""
        await self._committer.put(key, answer)

    def flush(self) -> None:
        """Commit whatever answers still wait (the session is ending)."""
        self._committer.flush()

    async def release(self, keys: Sequence[bytes]) -> None:
        """Nothing to release."""


class LocalStore:
    """An opened SQLite journal as a `Store`."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    @property
    def journal(self) -> Journal:
        """The SQLite journal."""
        return self._journal

    def session(
        self, settings: SessionSettings, control: RunControl, stats: CallStats
    ) -> SessionContext:
        """A session pacing at `settings.qps` in this process."""
        return _session(self._journal, settings)

    def close(self) -> None:
        """Close the journal (releases its run lock)."""
        self._journal.close()


@contextlib.asynccontextmanager
async def _session(journal: Journal, settings: SessionSettings) -> AsyncIterator[LocalSession]:
    controller = None
    if settings.qps == "auto":
        controller = AutoRate(settings.max_qps)
        pacer = Pacer.following(controller)
    else:
        pacer = Pacer(settings.qps)
    session = LocalSession(journal, pacer, controller)
    try:
        yield session
    finally:
        session.flush()  # a paid answer is never left waiting for a commit

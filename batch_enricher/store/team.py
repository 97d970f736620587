"""The shared store: a team's PostgreSQL journal, as a `Store`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from batch_enricher.models import Answer
from batch_enricher.pacer import Pacer
from batch_enricher.store.base import Claimed, Limiter, SessionContext, SessionSettings
from batch_enricher.store.postgres import PgJournal

if TYPE_CHECKING:
    from batch_enricher.client import CallStats
    from batch_enricher.guards import RunControl
    from batch_enricher.store import StoreOptions
    from batch_enricher.store.url import TeamUrl

__all__ = ["TeamSession", "TeamStore", "open_team_store"]


class TeamSession:
    """Sending with the team journal."""

    def __init__(self, journal: PgJournal, pacer: Pacer) -> None:
        self._journal = journal
        self._pacer = pacer

    @property
    def pacer(self) -> Limiter:
        """Where every request takes its send slot."""
        return self._pacer

    @property
    def exclusive(self) -> bool:
        """Not yet shared."""
        return True

    @property
    def wait_for_others(self) -> float:
        """Not yet shared."""
        return 0.0

    async def claim(self, keys: Sequence[bytes]) -> Claimed:
        """Every key is this run's."""
        return Claimed(mine=list(keys))

    async def record(self, key: bytes, answer: Answer) -> None:
        """Store the answer."""
        self._journal.put(key, answer)

    async def release(self, keys: Sequence[bytes]) -> None:
        """Nothing to release."""


class TeamStore:
    """An opened team journal as a `Store`."""

    def __init__(self, journal: PgJournal) -> None:
        self._journal = journal

    @property
    def journal(self) -> PgJournal:
        """The PostgreSQL journal."""
        return self._journal

    def session(
        self, settings: SessionSettings, control: RunControl, stats: CallStats
    ) -> SessionContext:
        """The sending phase's session."""
        return _session(self._journal, settings)

    def close(self) -> None:
        """Close the journal's connection."""
        self._journal.close()


@contextlib.asynccontextmanager
async def _session(journal: PgJournal, settings: SessionSettings) -> AsyncIterator[TeamSession]:
    yield TeamSession(journal, Pacer(settings.qps))


def open_team_store(url: TeamUrl, options: StoreOptions) -> TeamStore:
    """Open the team journal at `url` with the secret `options.secret_file` names."""
    return TeamStore(PgJournal.open(url, options.secret_file))

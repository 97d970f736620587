"""Where a run's state lives: a local SQLite journal, or a team's PostgreSQL database.

`open_store` picks the implementation from `--state`: a `postgresql://` (or `postgres://`)
URL opens the shared store (`postgres.py`, `team.py`), anything else is a journal file
(`sqlite.py`, `local.py`). The interfaces both implement are in `base.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from batch_enricher.store.base import Journal, Store
from batch_enricher.store.url import TeamUrl, is_team_url, mask_urls, parse_state

__all__ = [
    "DEFAULT_LEASE_S",
    "Journal",
    "Store",
    "StoreOptions",
    "TeamUrl",
    "is_team_url",
    "mask_urls",
    "open_store",
    "parse_state",
]

#: How long a team run's claims outlive its last heartbeat (a killed run's people are free
#: again after this; heartbeats come three times per lease).
DEFAULT_LEASE_S = 30.0


@dataclass(frozen=True)
class StoreOptions:
    """How to open `--state`."""

    state: Path | TeamUrl | None = None  # None: the default journal file
    lock_timeout: float = 5.0  # local: wait this long for another run's lock
    new_journal: bool = False  # local: set the journal and its secret aside, start over
    secret_file: Path | None = None  # team: the shared secret (default: beside the journal)
    lease: float = DEFAULT_LEASE_S  # team: claims of a run silent this long are free again


def open_store(options: StoreOptions) -> Store:
    """Open the journal `options.state` names, checked and ready to write."""
    state = options.state
    if isinstance(state, TeamUrl):
        from batch_enricher.store.team import open_team_store

        if options.new_journal:
            from batch_enricher.errors import ConfigError

            raise ConfigError(
                "--new-journal sets a local journal file aside; a team database is not "
                "started over by a run (use another database, or purge it)"
            )

        return open_team_store(state, options)
    from batch_enricher.store.local import LocalStore
    from batch_enricher.store.sqlite import Journal as SqliteJournal
    from batch_enricher.store.sqlite import default_state_path

    path = state if state is not None else default_state_path()
    return LocalStore(
        SqliteJournal.open(path, lock_timeout=options.lock_timeout, new_journal=options.new_journal)
    )

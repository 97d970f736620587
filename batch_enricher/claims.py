"""Who calls whom: people are claimed in small batches just before they are called.

With a shared store several runs may plan the same person. Each batch of people is claimed in
one round trip; a person another live run has claimed is not called again: their key waits
here, polled every `POLL_S`, until that answer lands (used as if reused from the journal), the
other run's claim lapses (it died: the person becomes this run's), or `Session.wait_for_others`
passes (the row ends `skipped`, and a rerun fills it). With the local store every claim
succeeds at once and this is a plain iterator over the spill.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from itertools import islice
from typing import Final

from batch_enricher.models import Person, Status
from batch_enricher.store.base import Session

__all__ = ["POLL_S", "Claimer"]

#: How often people held by another run are looked at again.
POLL_S: Final = 0.5
#: People claimed per round trip when the store is not shared (claims are free then).
_LOCAL_BATCH: Final = 500

Todo = tuple[bytes, Person, int]  # key, person, rows


class Claimer:
    """Hands each worker the next person this run has claimed; None when there is no more."""

    def __init__(
        self,
        session: Session,
        todo: Iterator[Todo],
        *,
        batch: int,
        stopped: Callable[[], bool],
        sleep: Callable[[float], Awaitable[None]],
        on_answered: Callable[[bytes, int, Status], None],
        on_given_up: Callable[[bytes, int], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._todo = todo
        # Shared: claim about one wave of calls at a time, so claims are held only briefly
        # before the call (another run waits on them).
        self._batch = _LOCAL_BATCH if session.exclusive else max(1, batch)
        self._stopped = stopped
        self._sleep = sleep
        self._on_answered = on_answered
        self._on_given_up = on_given_up
        self._clock = clock
        self._lock = asyncio.Lock()
        self._ready: deque[Todo] = deque()
        self._held: dict[bytes, tuple[Person, int, float]] = {}  # key → person, rows, since
        self._todo_done = False
        self._polled = clock()  # people just found held are looked at again POLL_S later

    @property
    def waiting(self) -> int:
        """People another run is asking about, whose answer this run is waiting for."""
        return len(self._held)

    async def next(self) -> Todo | None:
        """The next person to call (already claimed), or None when all are done or stopped."""
        async with self._lock:
            while not self._stopped():
                if self._ready:
                    return self._ready.popleft()
                due = self._clock() - self._polled >= POLL_S
                if self._held and (due or self._todo_done):
                    if not due:
                        await self._sleep(POLL_S - (self._clock() - self._polled))
                        continue
                    await self._poll()
                    continue
                if self._todo_done:
                    return None
                batch = list(islice(self._todo, self._batch))
                if not batch:
                    self._todo_done = True
                    continue
                await self._claim(batch, since=self._clock())
            return None

    async def _claim(self, batch: list[Todo], *, since: float) -> None:
        claimed = await self._session.claim([key for key, _, _ in batch])
        mine, held = set(claimed.mine), set(claimed.held)
        for key, person, rows in batch:
            if key in held:
                self._held.setdefault(key, (person, rows, since))  # keeps when it was first held
                continue
            self._held.pop(key, None)
            if key in mine:
                self._ready.append((key, person, rows))
            else:
                status = claimed.answered.get(key)
                if status is not None:
                    self._on_answered(key, rows, status)

    async def _poll(self) -> None:
        """Look again at the people held elsewhere: answered, free again, or waited too long."""
        self._polled = now = self._clock()
        await self._claim([(key, p, rows) for key, (p, rows, _) in self._held.items()], since=now)
        limit = self._session.wait_for_others
        for key in [key for key, (_, _, at) in self._held.items() if now - at >= limit]:
            _, rows, _ = self._held.pop(key)
            self._on_given_up(key, rows)

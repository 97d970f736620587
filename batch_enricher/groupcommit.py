"""Group commit: answers that arrive close together go to the journal in one transaction.

A journal transaction per answer (BEGIN, upsert, COMMIT: a dozen syscalls for file locks and
WAL pages) was the largest cost per API call after aiohttp itself, and it blocks the event loop.
One transaction for several answers costs little more than for one.

"Durable before acknowledged" still holds: `put` returns only once its answer is committed, and
only then does the worker mark it answered, count it in the progress, and take the next person.
Meanwhile the worker holds its answer exactly as it held the request in flight, so the answers
a `kill -9` can lose are still at most one per worker (`--concurrency`), as before: replies on
the wire and replies waiting for their group's commit, together.

How long to wait for company: never so long that the pacer runs out of workers to hand its next
slot to (`backlog`, the seconds of slots the workers already queued at the pacer will fill), and
never longer than `LINGER` or past `BATCH` answers. A worker's wait is then free: the pacer, not
the workers, sets the pace meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

from batch_enricher.models import Answer

__all__ = ["BATCH", "LINGER", "GroupCommit"]

#: At most this many answers in one transaction.
BATCH: Final = 8
#: An answer waits at most this long (seconds) for others to share its commit.
LINGER: Final = 0.05

Item = tuple[bytes, Answer]


class GroupCommit:
    """Batches `put_many(items)` calls; `await put(key, answer)` returns once committed.

    `backlog()` says how long the senders can go on without the workers waiting here; 0 (or
    less) commits at once.
    """

    def __init__(
        self,
        put_many: Callable[[list[Item]], None],
        backlog: Callable[[], float],
        *,
        batch: int = BATCH,
        linger: float = LINGER,
    ) -> None:
        self._put_many = put_many
        self._backlog = backlog
        self._batch = batch
        self._linger = linger
        self._items: list[Item] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._timer: asyncio.TimerHandle | None = None
        self.commits = 0  # transactions so far (for the debug log and tests)
        self.failed: list[Answer] = []  # answers received whose commit failed

    async def put(self, key: bytes, answer: Answer) -> None:
        """Store one answer; returns once it is committed, raises the journal's error if not."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._items.append((key, answer))
        self._waiters.append(done)
        wait = min(self._linger, self._backlog())
        if len(self._items) >= self._batch or wait <= 0:
            self.flush()
        else:
            deadline = loop.time() + wait
            if self._timer is None or deadline < self._timer.when():
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = loop.call_at(deadline, self.flush)
        try:
            await done
        except asyncio.CancelledError:
            self.flush()  # a paid answer is never left behind, even by a cancelled worker
            raise

    def flush(self) -> None:
        """Commit every waiting answer now, in one transaction; each waiter learns the outcome.

        Never raises: a failed commit is every waiter's error, and its answers are kept in
        `failed` (a cancelled worker cannot report its own).
        """
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        items, waiters = self._items, self._waiters
        if not items:
            return
        self._items, self._waiters = [], []
        error: Exception | None = None
        try:
            self._put_many(items)
        except Exception as exc:  # JournalError, typically: disk full, permissions
            error = exc
            self.failed.extend(answer for _, answer in items)
        self.commits += 1
        for waiter in waiters:
            if waiter.done():  # its worker was cancelled
                continue
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

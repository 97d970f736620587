"""What may still be sent: stop signals, account aborts, the breakers and the billing budget.

One `RunControl` is shared by every worker of a run. Each attempt asks it, right before sending,
whether it may go; anything that may not raises `NotSent`, and the row ends `skipped`.
With a team store, what it finds about the account (an abort, the quota breaker open) goes to
the other runs through `shared`, and what they found comes back through `abort`/`stop`.
`LostReplyBreaker` counts replies lost after their request was sent; the caller stops the run
through `RunControl.stop` when it opens.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Protocol


class NotSent(Exception):
    """The attempt was not sent (budget, breaker, abort, signal): the row is `skipped`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Quota(StrEnum):
    CLOSED = "closed"  # sending normally
    PROBING = "probing"  # a 10012 was seen: one call probes with backoff, the others wait
    OPEN = "open"  # the probe gave up: nothing more is sent this run


class AccountNews(Protocol):
    """Where a run tells the other runs on its account what it found (store/team.py)."""

    def aborted(self, code: int, reason: str) -> None:
        """An account-level code aborted this run."""
        ...

    def quota_open(self, reason: str) -> None:
        """This run's quota breaker opened."""
        ...


class RunControl:
    """Shared run state that decides whether one more request may be sent."""

    def __init__(self, *, max_billed: int | None = None) -> None:
        self.max_billed = max_billed
        self.billed = 0
        #: attempts whose reply was lost after the request was sent: the server may have billed
        self.possibly_billed = 0
        self.stop_reason: str | None = None
        self.abort_code: int | None = None
        self._in_flight = 0
        self._stopped = asyncio.Event()
        self._changed = asyncio.Event()  # set whenever a reservation is released
        self._quota = _Quota.CLOSED
        self._quota_probe: asyncio.Task[object] | None = None
        self._quota_clear = asyncio.Event()
        self._quota_clear.set()
        self._pacing: set[asyncio.Task[object]] = set()  # tasks waiting for a send slot
        #: the other runs sharing the account, if any: told of an abort or an open breaker
        self.shared: AccountNews | None = None

    @property
    def stopped(self) -> bool:
        """True once nothing new may be sent."""
        return self._stopped.is_set()

    def stop(self, reason: str) -> None:
        """Stop sending (signal, budget, breaker); the first reason given is the one reported."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stopped.set()
        self._quota_clear.set()  # wake anyone waiting on the quota probe so they see the stop
        self._changed.set()  # and anyone waiting for budget
        # and cut short anyone waiting for a send slot: at a low or slowed-down rate, a queue
        # of workers each sleeping until its slot only to give up would delay the exit by
        # (workers x spacing), which can be minutes.
        pacing, self._pacing = self._pacing, set()
        for task in pacing:
            task.cancel()

    def abort(self, code: int, reason: str, *, told: bool = False) -> None:
        """An account-level code: stop at once and remember the code for the exit status.

        `told`: another run found it (nothing to pass on).
        """
        if self.abort_code is None:
            self.abort_code = code
            if self.shared is not None and not told:
                self.shared.aborted(code, reason)
        self.stop(reason)

    async def sleep(self, delay: float) -> None:
        """Back off for `delay` seconds, waking early if the run stops (for tenacity's `sleep`)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), timeout=delay)

    async def admit(self) -> None:
        """Wait until this task may send one request, or raise `NotSent`."""
        me = asyncio.current_task()
        while self._quota is _Quota.PROBING and self._quota_probe is not me:
            # A stop sets `_quota_clear` while the probe may still be probing: check first, or
            # this loop would spin without ever yielding and hang the run.
            self.check()
            await self._quota_clear.wait()
        self.check()

    async def paced(self, wait: Callable[[], Awaitable[None]]) -> None:
        """Await `wait()` (the pacer's slot), or raise `NotSent` at once if the run stops."""
        self.check()
        task = asyncio.current_task()
        assert task is not None
        self._pacing.add(task)
        try:
            await wait()
        except asyncio.CancelledError:
            # Only our own cancel (from `stop`) becomes NotSent; anyone else's goes on.
            if self.stopped and task.uncancel() == 0:
                raise NotSent(self.stop_reason or "stopped") from None
            raise
        finally:
            self._pacing.discard(task)
        self.check()  # the run may have stopped the moment the slot came

    def check(self) -> None:
        """Raise `NotSent` if the run has stopped."""
        if self.stop_reason is not None:
            raise NotSent(self.stop_reason)

    # -- budget: --max-billed is a ceiling on what the server bills, in-flight calls included

    @property
    def spent(self) -> int:
        """Budget used: calls billed, plus calls possibly billed (a lost reply may have been)."""
        return self.billed + self.possibly_billed

    async def reserve(self) -> None:
        """Hold one unit of budget for a request about to be sent, or raise `NotSent`."""
        if self.max_billed is not None:
            # Calls in flight may still come back unbilled: wait for them before declaring the
            # budget spent, so the run uses every unit it was given and never one more.
            while self.spent + self._in_flight >= self.max_billed and self._in_flight > 0:
                self._changed.clear()
                await self._changed.wait()
                self.check()
            if self.spent >= self.max_billed:
                self.stop(self._budget_reason(self.max_billed))
        self.check()
        self._in_flight += 1

    def settle(self, *, billed: bool, possibly: bool = False) -> None:
        """Release a reservation once its reply (or failure) is known; safe on cancellation.

        `possibly`: the reply was lost after the request was sent. The server may have billed
        it, so it keeps its unit of budget as if it had been.
        """
        self._in_flight -= 1
        if billed:
            self.billed += 1
        elif possibly:
            self.possibly_billed += 1
        self._changed.set()

    def _budget_reason(self, ceiling: int) -> str:
        if not self.possibly_billed:
            return f"budget reached: {ceiling} billed call(s) (--max-billed)"
        return (
            f"budget reached: {self.billed} billed call(s) and {self.possibly_billed} possibly"
            f" billed (reply lost after sending) make {self.spent} of --max-billed {ceiling}"
        )

    # -- quota breaker (10012)

    def quota_hit(self) -> None:
        """A 10012 came back: the first caller to see it probes; everyone else waits."""
        if self._quota is _Quota.CLOSED:
            self._quota = _Quota.PROBING
            self._quota_probe = asyncio.current_task()
            self._quota_clear.clear()

    def quota_ok(self) -> None:
        """The probe got a reply other than 10012: the quota is back, resume sending."""
        if self._quota is _Quota.PROBING and self._quota_probe is asyncio.current_task():
            self._release_probe(_Quota.CLOSED)

    def quota_gave_up(self, *, still_quota: bool) -> None:
        """The probe's retries are spent: open the breaker if it was still 10012."""
        if self._quota is _Quota.PROBING and self._quota_probe is asyncio.current_task():
            if still_quota:
                self._release_probe(_Quota.OPEN)
                reason = "quota breaker open: 10012 请求超过次数限制 persisted after retries"
                if self.shared is not None and self.stop_reason is None:
                    self.shared.quota_open(reason)
                self.stop(reason)
            else:
                self._release_probe(_Quota.CLOSED)

    def _release_probe(self, state: _Quota) -> None:
        self._quota = state
        self._quota_probe = None
        self._quota_clear.set()


class LostReplyBreaker:
    """Opens after `limit` replies in a row were lost after sending, with no reply in between.

    One lost reply is a hiccup; a whole run of them (every reply slower than --timeout, or a
    server dropping every connection) would otherwise go on paying, possibly, for every retry.
    A reply of any kind (answer or error) closes the streak; a failure to connect does neither:
    it says nothing about replies and was certainly not billed.

    >>> breaker = LostReplyBreaker(limit=2)
    >>> breaker.lost(), breaker.lost()
    (False, True)
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.streak = 0

    def lost(self) -> bool:
        """Count one lost reply; True exactly when this one opens the breaker."""
        self.streak += 1
        return self.streak == self.limit

    def replied(self) -> None:
        """A reply came back: the streak starts over."""
        self.streak = 0

"""`--qps auto` for a team: one controller drives the account's shared schedule.

The server limits the *account*, so the controller must learn from the account's traffic, not
one run's: a run that counted only its own requests would find its share of the limit and,
since the schedule's rate is one for all, hold the whole account at that share. And the
account's rate must come from one controller: several, each seeing only its own replies, would
disagree (the lowest would win, and a run that starts later, back at 2/s, would drag everyone
down with it). So (team.py carries it out, in the statements it already makes):

- **One driver.** The auto run that reserved slots last holds the account's controller (an
  `autorate.AutoRate`); it writes its rate, ceiling and finding into `be_account` with each of
  its reservations. A driver silent for `DRIVER_HOLD_S` (dead, or idle: waiting for people
  another run is asking about) is replaced by the next auto run to reserve, which adopts the
  account's rate and ceiling instead of starting again from 2/s.
- **The account's sends, counted exactly.** The schedule grants slots strictly in order, so
  when a slot is reserved every slot before it is known: `be_account.recent` keeps the last
  seconds of slots, and every auto run feeds the new ones to its controller with each
  reservation. A count at any moment is then the account's count, whoever sent. Slots reserved
  but not sent (too late, or dropped after a 10011) are counted too: a little high, never low.
- **The account's 10011s.** Rare by design, so every run (auto or not) reports each one into
  `be_account.refused` with its next reservation; the driver feeds them to its controller.
  Its own accepted replies are the driver's sample of the rest: the server's window is the
  account's, so any run's reply says what the window held.
- **A 10011 is news at once.** The run that gets one reports it in its own statement, which
  also NOTIFYs every run of the account (team.py's `REFUSED_CHANNEL`). Each run then drops the
  slots it holds and not yet sent (granted before anyone knew, they would all meet the same full
  window); the driver reserves at once, reading the refusal with the account's slots up to it,
  so its controller counts the first refused slot of a wave, not a later one. Waiting for the
  driver's next reservation instead cost a wave of (runs x 100 ms) of other runs' slots and,
  counted at a later slot, a ceiling one or two too high: 2-7 % of requests refused.
- **A cut drains, it does not stop.** With an auto run live, the schedule spaces slots
  `AUTO_MARGIN / rate` apart (the controller's settling margin is the jitter room, as for a
  run alone) and never grants a slot whose trailing window of the account's slots would hold
  more than the driver's `per_window` (the pacer's guard): after a cut it restarts as soon as
  the window has drained below the new allowance, not a whole window later.
- **Old news.** Slots other runs already hold were granted at the old rate, so from the cut
  until the driver's next reservation writes it (`cut_pending`: the driver drops the slots it
  holds and reserves again at once) every verdict is old news, and so is every slot granted
  before the first one at the lowered rate (`_boundary`).
- **Caps.** An auto run registers its `--max-qps` as its `be_runs.qps`, so the account's rate
  is never above the lowest `--max-qps` of the auto runs nor the lowest `--qps` of the fixed
  ones: a run given `--qps 20` keeps the account at 20 at most, and the controller, seeing its
  rate not used in full, stops raising it there.

All times here are the database server's clock (epoch seconds), the schedule's own; the class is
arithmetic on what it is given, tested on a fake clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from batch_enricher.autorate import AutoRate, RateFound

__all__ = ["DRIVER_HOLD_S", "HISTORY_S", "AccountAuto", "Proposal", "Reserved"]

#: A driver that has not reserved for this long hands the account's controller to another.
DRIVER_HOLD_S: Final = 2.0
#: Seconds of slots and 10011s `be_account` keeps: a new driver's catch-up, and a window more.
HISTORY_S: Final = DRIVER_HOLD_S + 1.0
#: A rate lower than this share of the previous one is a cut (the schedule pauses a window).
_DROP: Final = 0.99


@dataclass(frozen=True)
class Proposal:
    """What the driver writes into `be_account` with its next reservation."""

    rate: float
    ceiling: int | None
    found: float | None
    per_window: int  # the most slots one window of the account's schedule may hold


@dataclass(frozen=True)
class Reserved:
    """What a reservation returned, for `AccountAuto.reserved` (times: server epoch s)."""

    now: float  # the statement's now()
    rate: float  # the account's rate for these slots
    slots: Sequence[float]  # the account's slots since the last `AccountAuto.seen`, in order
    own: int  # the last `own` of `slots` are this run's
    refused: Sequence[float]  # slots answered 10011 lately, reported by any run
    driving: bool  # this run holds the account's controller now
    account_rate: float | None  # the driver's rate in `be_account` (None: no driver yet)
    ceiling: int | None
    found: float | None


class AccountAuto:
    """One auto run's part in the account's `--qps auto` (see the module docstring).

    >>> auto = AccountAuto(max_rate=100)
    >>> auto.proposal() is None  # not driving yet
    True
    """

    def __init__(self, max_rate: float) -> None:
        self._auto = AutoRate(max_rate)
        self._seen = -math.inf  # the last account slot fed to the controller
        self._driving = False
        self._boundary = -math.inf  # slots before it were granted before the last cut applied
        self._told: dict[float, None] = {}  # 10011 slots already fed, oldest first
        self._last_rate = 0.0
        self._cut_pending = False
        self._account: RateFound | None = None

    @property
    def seen(self) -> float | None:
        """The last account slot this run knows of (None: none yet)."""
        return None if self._seen == -math.inf else self._seen

    @property
    def driving(self) -> bool:
        """Whether this run holds the account's controller."""
        return self._driving

    @property
    def rate(self) -> float:
        """The controller's rate (what the driver writes next)."""
        return self._auto.rate

    @property
    def cut_pending(self) -> bool:
        """The controller cut the rate and no reservation has written it yet: slots held were
        granted at the old rate, so drop them and reserve again."""
        return self._cut_pending

    def proposal(self) -> Proposal | None:
        """What to write into `be_account` with the next reservation (None: not driving)."""
        if not self._driving:
            return None
        auto = self._auto
        return Proposal(auto.rate, auto.ceiling, auto.found().rate, auto.per_window)

    def reserved(self, got: Reserved) -> None:
        """Feed a reservation's news: the account's new slots, 10011s, who drives."""
        for slot in got.slots:
            if slot > self._seen:
                self._auto.on_sent(slot)
                self._seen = slot
        if got.own and (self._cut_pending or got.rate < self._last_rate * _DROP):
            self._boundary = got.slots[-got.own]  # the first slot at the lowered rate
        self._cut_pending = False
        self._last_rate = got.rate
        if got.driving and not self._driving and got.account_rate is not None:
            self._auto.adopt(got.account_rate, got.ceiling, got.now)
        self._driving = got.driving
        if got.account_rate is not None:
            limited = got.ceiling is not None
            self._account = RateFound(got.found, limited=limited, ceiling=self._auto.max_rate)
        if self._driving:
            for slot in got.refused:
                self.refused(slot, got.now)
        self._note_cut()
        while self._told and next(iter(self._told)) < got.now - 2 * HISTORY_S:
            del self._told[next(iter(self._told))]

    def accepted(self, slot: float, now: float) -> None:
        """This run's request in `slot` got a reply other than 10011 at `now`."""
        if self._driving and not self._cut_pending and slot >= self._boundary:
            self._auto.on_accepted(slot, now)
            self._note_cut()

    def refused(self, slot: float, now: float) -> None:
        """The request in `slot` (any run's) was answered 10011, known at `now`."""
        if not self._driving or slot in self._told:
            return
        self._told[slot] = None
        if not self._cut_pending and slot >= self._boundary:
            self._auto.on_rate_limited(slot, now)
            self._note_cut()

    def _note_cut(self) -> None:
        if self._driving and self._auto.rate < self._last_rate * _DROP:
            self._cut_pending = True

    def found(self) -> RateFound | None:
        """What the account's controller found (this run's own when it drives)."""
        return self._auto.found() if self._driving else self._account

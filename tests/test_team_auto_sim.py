"""The team's `--qps auto` (store/team_auto.py) on a fake clock: several runs, one schedule.

`Account` plays the database (team.py's reservation statement, in Python: the lowest cap, the
driver's rate, a grid of slots `AUTO_MARGIN / rate` apart, the driver's guard on the account's
window of slots, the driver handed over after `DRIVER_HOLD_S` of silence); the server counts
arrivals in a trailing second (refused ones too) and answers `LATENCY` later. A 10011 reaches
every run `NOTIFY_S` after it (team.py's NOTIFY): each drops the slots it holds, the driver
reserves at once. Events run in time order; nothing sleeps.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from dataclasses import dataclass, field

import pytest

from batch_enricher.autorate import START_RATE
from batch_enricher.store.team import AUTO_MARGIN, BATCH_S, SHARED_MARGIN
from batch_enricher.store.team_auto import DRIVER_HOLD_S, HISTORY_S, AccountAuto, Reserved

LATENCY = 0.05
NOTIFY_S = 0.003


@dataclass
class Run:
    name: str
    auto: AccountAuto | None  # None: a run given a fixed --qps
    cap: float  # its --qps, or its --max-qps
    until: float = math.inf  # it stops sending then (finished, or waiting for others)
    held: set[float] = field(default_factory=set)  # slots reserved, not sent yet
    batch: int = 0  # events of an older batch (slots dropped since) are ignored


@dataclass
class Account:
    """The `be_account` row and the statements that change it."""

    runs: list[Run]
    last_slot: float = -math.inf
    last_rate: float = 0.0
    driver: str | None = None
    driver_seen: float = -math.inf
    rate: float | None = None
    ceiling: int | None = None
    found: float | None = None
    per_window: int | None = None
    recent: list[float] = field(default_factory=list)
    refused: list[float] = field(default_factory=list)

    def reserve(self, run: Run, now: float) -> list[float]:
        cap = min(r.cap for r in self.runs if r.until > now or r is run)
        auto = run.auto
        proposal = auto.proposal() if auto is not None else None
        drives = auto is not None and (
            self.driver in (None, run.name) or self.driver_seen < now - DRIVER_HOLD_S
        )
        cut = drives and proposal is not None
        if drives:
            self.driver, self.driver_seen = run.name, now
            if proposal is not None:
                self.rate, self.ceiling, self.found, self.per_window = (
                    proposal.rate,
                    proposal.ceiling,
                    proposal.found,
                    proposal.per_window,
                )
        rate = min(cap, self.rate if self.rate is not None else START_RATE)
        n = max(1, math.ceil(rate * BATCH_S))
        spacing = max(AUTO_MARGIN / rate, SHARED_MARGIN / cap)
        drop = not cut and rate < self.last_rate * 0.99
        first = max(now, self.last_slot + (SHARED_MARGIN if drop else spacing))
        per_window = min(math.floor(cap), self.per_window or math.inf)
        if len(self.recent) >= per_window:  # the guard: room in the account's window
            first = max(first, self.recent[-per_window] + 1.0)
        slots = [first + i * spacing for i in range(n)]
        self.last_slot, self.last_rate = slots[-1], rate
        seen = -math.inf if auto is None or auto.seen is None else auto.seen
        self.recent = [x for x in self.recent if x > now - HISTORY_S] + slots
        self.refused = [x for x in self.refused if x > now - HISTORY_S]
        if auto is not None:
            auto.reserved(
                Reserved(
                    now=now,
                    rate=rate,
                    slots=[x for x in self.recent if x > seen],
                    own=n,
                    refused=list(self.refused),
                    driving=drives,
                    account_rate=self.rate,
                    ceiling=self.ceiling,
                    found=self.found,
                )
            )
        return slots


class Sim:
    """Runs sharing an `Account` against a trailing-window server, on a fake clock."""

    def __init__(self, runs: list[Run], limit: list[tuple[float, float]], seed: int = 0) -> None:
        self.account = Account(runs)
        self.limit = limit  # (from this time on, the limit), in order
        self.rng = random.Random(seed)
        self.arrivals: list[float] = []
        self.refused: list[bool] = []
        self._events: list[tuple[float, int, str, Run, float, int]] = []
        self._seq = 0
        for run in runs:
            self._push(0.0, "reserve", run, 0.0)

    def _push(self, at: float, kind: str, run: Run, slot: float) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at, self._seq, kind, run, slot, run.batch))

    def _limit_at(self, at: float) -> float:
        return [value for start, value in self.limit if start <= at][-1]

    def _reserve(self, run: Run, now: float) -> None:
        slots = self.account.reserve(run, now)
        if run.auto is not None and run.auto.cut_pending:
            slots = self.account.reserve(run, now)  # as SharedPacer: write the cut
        run.batch += 1
        run.held = set(slots)
        for at in slots:
            self._push(at, "send", run, at)
        self._push(slots[-1], "reserve", run, 0.0)

    def _drop(self, run: Run, now: float, wake: bool) -> None:
        """SharedPacer.forget_slots: its waiting acquirer reserves at once (`wake`), or when
        the first slot it was waiting for comes."""
        held = sorted(run.held)
        run.batch += 1
        run.held = set()
        self._push(now if wake or not held else held[0], "reserve", run, 0.0)

    def run(self, seconds: float) -> None:
        while self._events and self._events[0][0] < seconds:
            now, _, kind, run, slot, batch = heapq.heappop(self._events)
            if kind in ("reserve", "send") and (batch != run.batch or now >= run.until):
                continue
            if kind == "reserve":
                self._reserve(run, now)
            elif kind == "send":
                run.held.discard(slot)
                self._push(now + self.rng.uniform(0, 0.02), "arrive", run, slot)
            elif kind == "arrive":
                index = bisect.bisect_right(self.arrivals, now)
                start = bisect.bisect_right(self.arrivals, now - 1.0)
                refused = index - start + 1 > self._limit_at(now)
                self.arrivals.insert(index, now)
                self.refused.insert(index, refused)
                self._push(now + LATENCY, "refused" if refused else "accepted", run, slot)
            elif kind == "accepted":
                if run.auto is not None:
                    run.auto.accepted(slot, now)
                    if run.auto.cut_pending:
                        self._drop(run, now, wake=True)
            elif kind == "refused":
                self.account.refused.append(slot)
                if run.auto is not None:
                    run.auto.refused(slot, now)
                self._drop(run, now, wake=run.auto is not None and run.auto.cut_pending)
                for other in self.account.runs:
                    if other is not run:
                        self._push(now + NOTIFY_S, "told", other, slot)
            elif now < run.until:  # told: another run's 10011
                self._drop(run, now, wake=run.auto is not None and run.auto.driving)

    def held(self, start: float, end: float) -> float:
        a, b = bisect.bisect_left(self.arrivals, start), bisect.bisect_left(self.arrivals, end)
        return (b - a) / (end - start)

    def refused_share(self, start: float, end: float) -> float:
        a, b = bisect.bisect_left(self.arrivals, start), bisect.bisect_left(self.arrivals, end)
        return sum(self.refused[a:b]) / max(1, b - a)

    def busiest(self) -> int:
        return max(
            i + 1 - bisect.bisect_right(self.arrivals, at - 1.0)
            for i, at in enumerate(self.arrivals)
        )


def _autos(n: int, max_rate: float = 200.0) -> list[Run]:
    return [Run(f"run{i}", AccountAuto(max_rate), max_rate) for i in range(n)]


# The targets: at most 1 % of requests answered 10011 after the first 15 s, and from
# 10 s after the limit halves. Held: 90-94 % in most cases, 88.7 % the least seen over seeds
# 0-3 (a probe above the ceiling costs ~0.5 s of sending, the slots dropped with it included),
# so the bound is 88 %. Before a 10011 was news at once (NOTIFY), 1.4-7 % were refused.
@pytest.mark.parametrize(
    ("runs", "limit"), [(2, 10), (2, 40), (2, 100), (3, 10), (3, 40), (3, 100)]
)
def test_runs_settle_the_account_just_under_the_limit(runs: int, limit: int) -> None:
    autos = _autos(runs)
    sim = Sim(autos, [(0.0, limit)], seed=runs)
    sim.run(60.0)
    assert sim.held(15.0, 60.0) >= 0.88 * limit
    assert sim.refused_share(15.0, 60.0) <= 0.01
    for run in autos:
        found = run.auto.found() if run.auto else None
        assert found is not None and found.limited
        assert found.rate is not None and 0.9 * limit <= found.rate <= limit


def test_a_limit_that_halves_is_followed_within_seconds() -> None:
    sim = Sim(_autos(2), [(0.0, 40), (30.0, 20)], seed=3)
    sim.run(60.0)
    assert sim.held(15.0, 30.0) >= 0.88 * 40
    assert sim.refused_share(40.0, 60.0) <= 0.01
    assert 0.88 * 20 <= sim.held(40.0, 60.0) <= 20


def test_a_new_driver_takes_over_without_starting_again() -> None:
    runs = _autos(2)
    runs[0].until = 20.0  # the first driver stops sending (finished, or waiting)
    sim = Sim(runs, [(0.0, 40)], seed=4)
    sim.run(40.0)
    assert sim.account.driver == "run1"
    # The rate the second run takes over is the account's, not slow start's 2/s again.
    assert sim.held(20.0 + DRIVER_HOLD_S + 1, 40.0) >= 0.85 * 40
    assert sim.refused_share(20.0, 40.0) <= 0.01


def test_never_above_the_lowest_max_qps_or_a_fixed_qps() -> None:
    runs = [*_autos(1), *_autos(1, max_rate=12)]
    sim = Sim(runs, [(0.0, 1000)], seed=5)
    sim.run(30.0)
    assert 10 <= sim.busiest() <= 12
    fixed = [*_autos(1), Run("fixed", None, 20.0)]
    sim = Sim(fixed, [(0.0, 1000)], seed=6)
    sim.run(30.0)
    assert 17 <= sim.busiest() <= 20
    assert sim.held(10.0, 30.0) >= 0.9 * 20 / SHARED_MARGIN

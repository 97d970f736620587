"""The team's `--qps auto` (store/team_auto.py) on a fake clock: several runs, one schedule.

`Account` plays the database (team.py's reservation statement, in Python: the lowest cap, the
driver's rate, a grid of slots `SHARED_MARGIN / rate` apart, a window's pause after a cut, the
driver handed over after `DRIVER_HOLD_S` of silence); the server counts arrivals in a trailing
second (refused ones too) and answers `LATENCY` later. Events run in time order; nothing sleeps.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from dataclasses import dataclass, field

import pytest

from batch_enricher.autorate import START_RATE
from batch_enricher.store.team import BATCH_S, SHARED_MARGIN
from batch_enricher.store.team_auto import DRIVER_HOLD_S, HISTORY_S, AccountAuto, Reserved

LATENCY = 0.05


@dataclass
class Run:
    name: str
    auto: AccountAuto | None  # None: a run given a fixed --qps
    cap: float  # its --qps, or its --max-qps
    until: float = math.inf  # it stops sending then (finished, or waiting for others)


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
    recent: list[float] = field(default_factory=list)
    refused: list[float] = field(default_factory=list)

    def reserve(self, run: Run, now: float) -> list[float]:
        cap = min(r.cap for r in self.runs if r.until > now or r is run)
        auto = run.auto
        proposal = auto.proposal() if auto is not None else None
        drives = auto is not None and (
            self.driver in (None, run.name) or self.driver_seen < now - DRIVER_HOLD_S
        )
        if drives:
            self.driver, self.driver_seen = run.name, now
            if proposal is not None:
                self.rate, self.ceiling, self.found = (
                    proposal.rate,
                    proposal.ceiling,
                    proposal.found,
                )
        rate = min(cap, self.rate if self.rate is not None else START_RATE)
        n = max(1, math.ceil(rate * BATCH_S))
        pause = SHARED_MARGIN if rate < self.last_rate * 0.99 else SHARED_MARGIN / rate
        first = max(now, self.last_slot + pause)
        slots = [first + i * SHARED_MARGIN / rate for i in range(n)]
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
        self._events: list[tuple[float, int, str, Run, float]] = []
        self._seq = 0
        for run in runs:
            self._push(0.0, "reserve", run, 0.0)

    def _push(self, at: float, kind: str, run: Run, slot: float) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at, self._seq, kind, run, slot))

    def _limit_at(self, at: float) -> float:
        return [value for start, value in self.limit if start <= at][-1]

    def run(self, seconds: float) -> None:
        while self._events and self._events[0][0] < seconds:
            now, _, kind, run, slot = heapq.heappop(self._events)
            if kind == "reserve":
                if now >= run.until:
                    continue
                slots = self.account.reserve(run, now)
                if run.auto is not None and run.auto.cut_pending:
                    slots = self.account.reserve(run, now)  # as SharedPacer: write the cut
                for at in slots:
                    self._push(at + self.rng.uniform(0, 0.02), "arrive", run, at)
                self._push(slots[-1], "reserve", run, 0.0)
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
            else:
                self.account.refused.append(slot)
                if run.auto is not None:
                    run.auto.refused(slot, now)

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


# Bounds are what the design achieves here, with room: the target (at most 1 % of
# requests answered 10011 after discovery) is not met in a team. Each refusal wave lasts until
# the driver reads the others' 10011s at its next reservation and the slots other runs already
# hold have gone out: about (runs x BATCH_S) more than a solo run's round trip. Without the
# old-news rules (`cut_pending`, `_boundary`) the same runs gave 9-16 %.
@pytest.mark.parametrize(
    ("runs", "limit", "refused"), [(2, 10, 0.04), (2, 40, 0.03), (2, 100, 0.025), (3, 40, 0.035)]
)
def test_runs_settle_the_account_just_under_the_limit(
    runs: int, limit: int, refused: float
) -> None:
    autos = _autos(runs)
    sim = Sim(autos, [(0.0, limit)], seed=runs)
    sim.run(60.0)
    assert sim.held(15.0, 60.0) >= 0.86 * limit
    assert sim.refused_share(15.0, 60.0) <= refused
    for run in autos:
        found = run.auto.found() if run.auto else None
        assert found is not None and found.limited
        assert found.rate is not None and 0.9 * limit <= found.rate <= limit


def test_a_limit_that_halves_is_followed_within_seconds() -> None:
    sim = Sim(_autos(2), [(0.0, 40), (30.0, 20)], seed=3)
    sim.run(60.0)
    assert sim.held(15.0, 30.0) >= 0.86 * 40
    assert sim.refused_share(40.0, 60.0) <= 0.025
    assert 0.85 * 20 <= sim.held(40.0, 60.0) <= 20


def test_a_new_driver_takes_over_without_starting_again() -> None:
    runs = _autos(2)
    runs[0].until = 20.0  # the first driver stops sending (finished, or waiting)
    sim = Sim(runs, [(0.0, 40)], seed=4)
    sim.run(40.0)
    assert sim.account.driver == "run1"
    # The rate the second run takes over is the account's, not slow start's 2/s again.
    assert sim.held(20.0 + DRIVER_HOLD_S + 1, 40.0) >= 0.85 * 40
    assert sim.refused_share(20.0, 40.0) <= 0.02


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

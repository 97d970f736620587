"""The pacer never exceeds the rate in any window, never bursts, and adapts to 10011.

Time is faked: the pacer's sleep advances a fake clock, so nothing here really waits.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math

import pytest

from batch_enricher.pacer import SPACING_MARGIN, Pacer


class FakeClock:
    """A clock whose sleep advances time at once (only the lock holder ever sleeps)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)  # still a suspension point, like the real thing


class ManualClock:
    """A clock that only moves when the test says so; sleepers wait for `advance`."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, future))
        await future

    async def advance(self, seconds: float) -> None:
        self.now += seconds
        for deadline, future in list(self._sleepers):
            if deadline <= self.now + 1e-12 and not future.done():
                future.set_result(None)
        await _settle()


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def _pacer(rate: float, clock: FakeClock | ManualClock, **kwargs: float) -> Pacer:
    return Pacer(rate, clock=clock.time, sleep=clock.sleep, **kwargs)


async def _grants(pacer: Pacer, clock: FakeClock, n: int) -> list[float]:
    times = []
    for _ in range(n):
        await pacer.acquire()
        times.append(clock.now)
    return times


def _max_in_any_window(times: list[float], window: float = 1.0) -> int:
    """The most grants in any half-open window [t, t + window) starting at a grant."""
    ordered = sorted(times)
    return max(bisect.bisect_left(ordered, t + window) - i for i, t in enumerate(ordered))


@pytest.mark.parametrize("rate", [1, 5, 10, 50])
async def test_n_grants_take_n_minus_one_intervals(rate: int) -> None:
    clock = FakeClock()
    times = await _grants(_pacer(rate, clock), clock, 3 * rate + 1)
    assert times[-1] == pytest.approx(3.0, rel=SPACING_MARGIN - 1 + 1e-9)
    assert times[-1] >= 3.0  # never faster than the rate
    assert len(times) / (times[-1] + 1 / rate) >= 0.97 * rate  # and close to it


@pytest.mark.parametrize("rate", [1, 3, 10, 50])
async def test_no_window_holds_more_than_rate_grants(rate: int) -> None:
    clock = FakeClock()
    times = await _grants(_pacer(rate, clock), clock, 5 * rate)
    assert _max_in_any_window(times) <= rate


async def test_first_grants_are_spaced_not_burst() -> None:
    clock = FakeClock()
    times = await _grants(_pacer(10, clock), clock, 10)
    assert times[0] == 0.0  # the very first request goes at once
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= 0.1 for gap in gaps)
    assert all(gap == pytest.approx(0.1 * SPACING_MARGIN) for gap in gaps)


class LateClock(FakeClock):
    """Every sleep overruns by `late` seconds, as a real event loop's timers do."""

    def __init__(self, late: float) -> None:
        super().__init__()
        self.late = late

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds + self.late)


async def test_late_wake_ups_do_not_pile_up() -> None:
    clock = LateClock(late=0.0016)  # the loop's usual lateness, measured by the benchmark
    times = await _grants(_pacer(50, clock), clock, 501)
    spacing = SPACING_MARGIN / 50
    # Measured from each actual grant, 500 slots would take 500 * (spacing + late) = 10.9 s,
    # 92% of the rate; on the grid only the one-second guard lets some lateness through.
    assert 500 / times[-1] >= 0.985 * 50
    assert _max_in_any_window(times) <= 50
    assert min(b - a for a, b in itertools.pairwise(times)) >= spacing - clock.late


async def test_a_long_stall_restarts_the_grid_without_a_catch_up_burst() -> None:
    clock = LateClock(late=0.0)
    pacer = _pacer(10, clock)
    await pacer.acquire()
    clock.now += 5.0  # nobody asked for a while
    times = await _grants(pacer, clock, 5)
    assert [b - a for a, b in itertools.pairwise(times)] == pytest.approx(
        [0.1 * SPACING_MARGIN] * 4
    )


async def test_late_wake_up_does_not_let_the_next_grant_catch_up() -> None:
    clock = FakeClock()
    pacer = _pacer(10, clock)
    await pacer.acquire()
    clock.now += 0.35  # the caller was busy: the next slot is measured from its real grant
    await pacer.acquire()
    granted = clock.now
    await pacer.acquire()
    assert clock.now - granted >= 0.1


async def test_fractional_rates() -> None:
    clock = FakeClock()
    times = await _grants(_pacer(0.5, clock), clock, 4)
    assert times == pytest.approx([0.0, 2.0, 4.0, 6.0], rel=SPACING_MARGIN - 1 + 1e-9)
    assert min(b - a for a, b in itertools.pairwise(times)) >= 2.0


async def test_fractional_rate_above_one_never_exceeds_it_in_a_window() -> None:
    clock = FakeClock()
    times = await _grants(_pacer(2.5, clock), clock, 20)
    assert _max_in_any_window(times) <= 2  # 2.5 per second allows 2 in one second, not 3
    assert _max_in_any_window(times, window=2.0) <= 5


async def test_slow_down_halves_once_per_window() -> None:
    clock = FakeClock()
    pacer = _pacer(20, clock)
    await pacer.acquire()
    for _ in range(10):  # a burst of 10011s from requests already in flight
        pacer.slow_down()
    assert pacer.rate == 10
    clock.now += 1.0
    pacer.slow_down()
    assert pacer.rate < 10  # a new window: a new halving (from the partly recovered rate)
    assert pacer.rate == pytest.approx((10 + 20 / 20 * 1.0) / 2)


async def test_slow_down_stops_at_min_rate() -> None:
    clock = FakeClock()
    pacer = _pacer(10, clock, min_rate=2, recovery=0.1)
    for _ in range(10):
        pacer.slow_down()
        clock.now += 1.0
    assert pacer.rate == 2
    assert _pacer(10, clock).min_rate == pytest.approx(0.2)
    assert _pacer(50, clock).min_rate == pytest.approx(1.0)


async def test_slowed_rate_spaces_grants_further() -> None:
    clock = FakeClock()
    pacer = _pacer(10, clock, recovery=0.1)
    await pacer.acquire()
    pacer.slow_down()
    start = clock.now
    await pacer.acquire()
    assert clock.now - start >= 1 / 5
    assert clock.now - start < 1 / 4


async def test_rate_recovers_additively_to_max() -> None:
    clock = FakeClock()
    pacer = _pacer(20, clock)  # default recovery: 20 / 20 = 1 qps per second
    pacer.slow_down()
    assert pacer.rate == 10
    clock.now += 4.0
    await pacer.acquire()
    assert pacer.rate == pytest.approx(14)
    clock.now += 100.0
    await pacer.acquire()
    assert pacer.rate == 20  # never above the maximum


async def test_recovery_under_load_reaches_max() -> None:
    clock = FakeClock()
    pacer = _pacer(10, clock, recovery=1.0)
    pacer.slow_down()
    times = await _grants(pacer, clock, 60)
    assert pacer.rate == 10
    assert _max_in_any_window(times) <= 10
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] > gaps[-1]  # it sped up as it recovered


async def test_concurrent_acquirers_stay_within_the_limit_and_are_fifo() -> None:
    clock = FakeClock()
    pacer = _pacer(10, clock)
    order: list[int] = []
    times: list[float] = []

    async def worker(i: int) -> None:
        await pacer.acquire()
        order.append(i)
        times.append(clock.now)

    await asyncio.gather(*(worker(i) for i in range(50)))
    assert order == list(range(50))
    assert _max_in_any_window(times) <= 10
    assert times[-1] == pytest.approx(4.9 * SPACING_MARGIN)


async def test_cancelled_waiter_does_not_take_or_corrupt_a_slot() -> None:
    clock = ManualClock()
    pacer = _pacer(10, clock)
    granted: list[tuple[str, float]] = []

    async def worker(name: str) -> None:
        await pacer.acquire()
        granted.append((name, clock.now))

    await worker("first")
    sleeping = asyncio.create_task(worker("sleeping"))  # holds the lock, waits for 0.1
    queued = asyncio.create_task(worker("queued"))  # waits for the lock
    behind = asyncio.create_task(worker("behind"))
    await _settle()
    sleeping.cancel()
    queued.cancel()
    await _settle()
    assert sleeping.cancelled()
    assert queued.cancelled()
    slot = 0.1 * SPACING_MARGIN  # the one slot after "first"
    await clock.advance(slot)
    assert behind.done()
    assert granted == [("first", 0.0), ("behind", pytest.approx(slot))]
    # And the pacer keeps working at its rate afterwards.
    later = asyncio.create_task(worker("later"))
    await _settle()
    assert not later.done()
    await clock.advance(slot)
    await later
    assert granted[-1][1] - granted[-2][1] >= 0.1


async def test_slow_down_while_waiting_moves_the_slot() -> None:
    clock = ManualClock()
    pacer = _pacer(10, clock, recovery=0.1)
    await pacer.acquire()
    waiter = asyncio.create_task(pacer.acquire())
    await _settle()
    pacer.slow_down()  # now 5 qps: the slot moves from 0.1 to 0.2 (times the margin)
    await clock.advance(0.1 * SPACING_MARGIN)
    assert not waiter.done()
    await clock.advance(0.1 * SPACING_MARGIN + 1e-6)
    await waiter


async def test_default_clock_is_the_running_loop() -> None:
    pacer = Pacer(1000)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for _ in range(6):
        await pacer.acquire()
    assert loop.time() - start >= 5 / 1000


def test_bad_rates_are_refused() -> None:
    for bad in (0, -1, math.inf, math.nan):
        with pytest.raises(ValueError):
            Pacer(bad)
    with pytest.raises(ValueError):
        Pacer(1, window=0)


def test_set_max_rate_clamps_the_current_rate() -> None:
    pacer = Pacer(10)
    pacer.set_max_rate(4)
    assert (pacer.rate, pacer.max_rate) == (4, 4)
    pacer.set_max_rate(8)
    assert pacer.max_rate == 8
    assert pacer.rate == 4  # raising the ceiling does not jump the rate; it recovers


async def test_a_slow_down_drains_the_window_before_the_next_grant() -> None:
    clock = FakeClock()
    pacer = _pacer(10, clock, recovery=0.01)
    times = await _grants(pacer, clock, 10)  # a full second at 10/s
    pacer.slow_down()  # 5/s: a server counting the last second still sees 10
    later = await _grants(pacer, clock, 1)
    # Not one spacing at 5/s after the last grant (0.2 s), but once the last window holds 4.
    assert later[0] >= times[5] + SPACING_MARGIN
    assert _max_in_any_window(times + later, window=SPACING_MARGIN) <= 10


async def test_acquire_returns_the_grant_time() -> None:
    clock = FakeClock()
    pacer = _pacer(10, clock)
    assert [await pacer.acquire() for _ in range(3)] == pytest.approx([0.0, 0.101, 0.202])


async def test_backlog_is_the_slots_the_waiting_callers_will_fill() -> None:
    clock = ManualClock()
    pacer = _pacer(10, clock)
    assert pacer.backlog() == 0
    await pacer.acquire()
    waiters = [asyncio.create_task(pacer.acquire()) for _ in range(3)]
    await _settle()
    assert pacer.backlog() == pytest.approx(3 * 0.1 * SPACING_MARGIN)
    for _ in range(3):
        await clock.advance(0.1 * SPACING_MARGIN)
    await asyncio.gather(*waiters)
    assert pacer.backlog() == 0

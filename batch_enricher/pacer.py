"""The shared request pacer: evenly spaced send slots, never a burst, slower on 10011.

Every request of a run (all inputs, all workers, retries included) takes a slot here first.
The contract with `--qps R`: never more than R requests in any one-second window, from the
very first request, evenly spaced at 1/R.

Why not a leaky or token bucket (e.g. aiolimiter): a bucket starts full, so the first R
requests go out at once, and a server that counts per second sees them land in the same
window as the next ones. Here there is no stored credit beyond half a slot.

Slots sit on a grid: each is one spacing after the previous *scheduled* slot, not after the
previous actual grant. Every wake-up is a little late (the loop rounds timeouts up to whole
milliseconds, and is sometimes busy); measured from actual grants that lateness piles up,
about 1.6 ms a slot, which cost 6% of the rate at 50 qps in the benchmark. On the grid a
lateness under half a spacing is absorbed by the next slot; a longer stall (or idle callers)
restarts the grid from now, so there is never a catch-up burst. A sliding window over the
actual grant times is a second, independent guard on the cap.

The rate adapts (AIMD, as in TCP): the server's 10011 ("too fast") halves it, at most once
per window, because the 10011s of requests already in flight describe the same moment;
it then recovers additively, `recovery` qps per second, back up to the maximum. So a server
whose real limit is below `--qps` still completes, at close to its limit.

Safety margin: the server counts arrivals, not our sends, and jitter (network, a busy
event loop, the server's own scheduling) bunches them. With slots exactly 1/R apart, the
(R+1)-th request lands exactly one second after the first, so a single millisecond of
jitter shows the server R+1 requests in one second (seen in tests against a loopback
server). Slots are spaced `SPACING_MARGIN / rate` apart and the guard allows R grants per
`SPACING_MARGIN` seconds: R+1 requests then span at least 1.01 s, which absorbs 10 ms of
jitter per second, and the run can still sustain 99% of the rate (issue 7 asks for ≥ 97%).
Relying on the adaptive slow-down instead would pay for each bunch with a 10011, a retry
and a halved rate.

The guard applies at the *current* rate, not the ceiling: after a cut, nothing is granted until
the last second holds fewer grants than the new rate allows. A server that counts arrivals in a
trailing second goes on refusing until its window has drained below its limit, so sending on
at the lower rate straight away would only buy more 10011s.

`--qps auto` (`Pacer.following(controller)`): an `autorate.AutoRate` sets the rate instead of
the AIMD above, under its `max_rate`; the pacer tells it every grant and every verdict. Spacing
and guard work as at any fixed rate, so no window ever holds more than the rate in force.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from batch_enricher.autorate import AutoRate

__all__ = ["Pacer"]

#: Slot spacing is this many times 1/rate (see the module docstring).
SPACING_MARGIN: Final = 1.01
#: A grant later than this share of a spacing restarts the grid instead of being absorbed.
MAX_ABSORBED: Final = 0.5
#: Multiplicative decrease on 10011.
DECREASE: Final = 0.5
#: Defaults relative to the maximum rate, and their floors.
_MIN_RATE_DIVISOR: Final = 50.0
_RECOVERY_DIVISOR: Final = 20.0
_RATE_FLOOR: Final = 0.1


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


def _positive(name: str, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


class Pacer:
    """Grant send slots at most `rate` per second, evenly spaced, adapting down on 10011.

    >>> async def send_all(pacer: Pacer, n: int) -> None:
    ...     for _ in range(n):
    ...         await pacer.acquire()  # then send one request
    """

    def __init__(
        self,
        rate: float,
        *,
        min_rate: float | None = None,
        recovery: float | None = None,
        window: float = 1.0,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        controller: AutoRate | None = None,
    ) -> None:
        self._controller = controller
        self._window = _positive("window", window)
        self._min_rate_given = None if min_rate is None else _positive("min_rate", min_rate)
        self._recovery_given = None if recovery is None else _positive("recovery", recovery)
        # The loop is looked up per call: a Pacer may be built before the loop runs.
        self._clock = clock or _loop_time
        self._sleep = sleep or asyncio.sleep
        # asyncio.Lock wakes waiters in arrival order: that is what makes acquire() FIFO.
        self._lock = asyncio.Lock()
        self._slot: float | None = None  # the grid position of the last grant
        self._last_slow_down = -math.inf
        self._recovered_at: float | None = None  # last time recovery was applied
        self._grants: deque[float] = deque()
        self._max_rate = 0.0
        self._rate = 0.0
        self._allowed = 1  # the guard's allowance per window, under a controller
        self._waiting = 0  # callers inside acquire()
        self.set_max_rate(rate)

    @classmethod
    def following(
        cls,
        controller: AutoRate,
        *,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> Pacer:
        """A pacer whose rate `controller` sets (`--qps auto`), never above its `max_rate`."""
        return cls(controller.max_rate, clock=clock, sleep=sleep, controller=controller)

    # -- public ----------------------------------------------------------------------------

    @property
    def rate(self) -> float:
        """The current rate (requests per second), after any slow-down and recovery so far."""
        return self._rate

    @property
    def controlled(self) -> bool:
        """Whether a controller sets the rate (`--qps auto`)."""
        return self._controller is not None

    @property
    def max_rate(self) -> float:
        """The ceiling: `--qps`, or `--max-qps` under `--qps auto`."""
        return self._max_rate

    @property
    def min_rate(self) -> float:
        """The floor that slow-downs never go below."""
        return self._min_rate

    def set_max_rate(self, rate: float) -> None:
        """Change the ceiling; the current rate is clamped to it (and starts there if new)."""
        self._max_rate = _positive("rate", rate)
        given = self._min_rate_given
        floor = max(_RATE_FLOOR, rate / _MIN_RATE_DIVISOR) if given is None else given
        self._min_rate = min(floor, rate)
        given = self._recovery_given
        self._recovery = max(_RATE_FLOOR, rate / _RECOVERY_DIVISOR) if given is None else given
        self._rate = rate if self._rate == 0.0 else min(max(self._rate, self._min_rate), rate)
        # Enough history for the guard at any rate up to the ceiling (`_next_slot`).
        self._grants = deque(self._grants, maxlen=_per_window(rate))
        self._follow()

    def backlog(self) -> float:
        """Seconds of slots that the callers already waiting in `acquire` will fill."""
        return self._waiting * SPACING_MARGIN / self._rate

    async def acquire(self) -> float:
        """Wait for the next send slot and return its time; first come, first served."""
        self._waiting += 1
        try:
            return await self._acquire()
        finally:
            self._waiting -= 1

    async def _acquire(self) -> float:
        async with self._lock:
            while True:
                now = self._clock()
                self._recover(now)
                ready = self._next_slot()
                if now >= ready:
                    break
                # Sleep, then look again: slow_down() may have moved the slot meanwhile.
                # Cancelled here, nothing was recorded, so the slot stays free for the next.
                await self._sleep(ready - now)
            spacing = SPACING_MARGIN / self._rate
            # On time or a little late: stay on the grid. Later than that: restart it from now.
            self._slot = ready if now - ready < MAX_ABSORBED * spacing else now
            self._grants.append(now)
            if self._controller is not None:
                self._controller.on_sent(now)
            return now

    def accepted(self, sent_at: float) -> None:
        """A reply other than 10011 came for the request granted at `sent_at`."""
        if self._controller is not None:
            self._controller.on_accepted(sent_at, self._clock())
            self._follow()

    def slow_down(self, sent_at: float | None = None) -> None:
        """On 10011 for the request granted at `sent_at`: slow down.

        Following a controller, it decides. Otherwise halve the rate (not below `min_rate`),
        at most once per window: the 10011s of requests in flight describe the same moment.
        """
        now = self._clock()
        if self._controller is not None:
            self._controller.on_rate_limited(now if sent_at is None else sent_at, now)
            self._follow()
            return
        if now - self._last_slow_down < self._window:
            return
        self._recover(now)
        self._last_slow_down = now
        self._rate = max(self._min_rate, self._rate * DECREASE)
        self._recovered_at = now

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    # -- internals -------------------------------------------------------------------------

    def _next_slot(self) -> float:
        """The earliest time the next grant may happen."""
        if self._slot is None:
            return -math.inf
        ready = self._slot + SPACING_MARGIN / self._rate
        allowed = _per_window(self._rate) if self._controller is None else self._allowed
        if len(self._grants) >= allowed:
            # The grant `allowed` back must have left the window before another enters.
            ready = max(ready, self._grants[-allowed] + self._window * SPACING_MARGIN)
        return ready

    def _follow(self) -> None:
        """Take the controller's rate, if there is one (under the ceiling, above zero)."""
        if self._controller is not None:
            rate = self._controller.rate
            self._rate = min(self._max_rate, max(rate, _RATE_FLOOR))
            self._allowed = min(self._controller.per_window, _per_window(self._max_rate))

    def _recover(self, now: float) -> None:
        """Additive increase, applied lazily: `recovery` qps per second since the last look."""
        if self._controller is not None:
            return  # the controller sets the rate
        if self._recovered_at is None or self._rate >= self._max_rate:
            self._recovered_at = now
            return
        elapsed = max(0.0, now - self._recovered_at)
        self._rate = min(self._max_rate, self._rate + self._recovery * elapsed)
        self._recovered_at = now


def _per_window(rate: float) -> int:
    """Grants one window may hold at `rate`: a 2.5 qps rate allows 2 in one second, not 3; a
    fractional rate below 1 still needs one slot to exist."""
    return max(1, math.floor(rate))

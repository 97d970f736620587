"""`--qps auto`: find an account's undisclosed request limit from 10011 replies alone.

Juhe publishes no per-key rate and sends no rate-limit headers; the only signal is 10011 ("too
fast"). `AutoRate` turns that signal, and the absence of it, into a send rate. It is plain
arithmetic on times it is given (no clock, no asyncio): `Pacer.following(controller)` feeds it
and spaces requests at its `rate`; a shared team limiter can feed one just the same.

The server this is built for counts arrivals in a trailing one-second window and answers 10011
past its limit L (the sandbox's `qps_limit`; refused requests count too). Against such a server
the rate is a cliff, not a slope: at an even rate just under L nothing is refused, just over it
almost everything is. Three consequences shape the design:

- **Count, don't guess.** The sender knows exactly how many requests it sent in the second
  before each one. The first request refused at a new rate was sent with L+1 in its window (the
  server's count; ours differs only by arrival jitter at the window's edge, a request at most),
  so the limit is found in one overshoot, not by bisection: `ceiling = count - 1`. An accepted
  request's count is likewise a floor.
- **Settle just under.** "Just under" a trailing-window limit means a rate whose every one-second
  window holds at most L arrivals with room for jitter. The pacer spaces slots 1.01/rate apart,
  so at `SETTLE * ceiling` (97 %) the (L+1)-th request arrives 1.04 s after the first: ~40 ms of
  arrival jitter pass unrefused, at any L.
- **10011s come in waves.** Requests already in flight (and retries of them) were sent before
  the rate was cut and are refused for the same moment; only a 10011 for a request sent after
  the last cut is news. The pacer's window guard follows the cut rate, so after a cut nothing is
  sent until our own window has drained below it: a refusal wave ends after one round trip.

Around that, a small state machine:

1. Slow start: from `START_RATE`, double after every full window the server accepted (and the
   run actually used: a rate that workers cannot fill proves nothing).
2. The first 10011 of a moment sets the ceiling and settles the rate just under it.
3. A third refused moment with nothing accepted in between (the second may be a ceiling that
   jitter made one too high), or a 10011 at a count well below one the server accepted since
   the last cut, means the limit fell (another system started using the key): halve, then,
   after one accepted window, go straight back to just under the ceiling; the count at the
   next refusal is the new limit.
4. Settled, it probes above the ceiling now and then (`PROBE_FIRST`, doubling after each probe
   that finds nothing, up to `PROBE_LONGEST`): each failed probe costs about one round trip of
   10011s. A count accepted clearly above the ceiling (by more than `_slack`, the jitter at a
   window's edge) means the limit rose: slow start again.

Never above `max_rate` (`--max-qps`) nor below `MIN_RATE`.
"""

from __future__ import annotations

import bisect
import logging
import math
from dataclasses import dataclass
from typing import Final

__all__ = ["AUTO", "DEFAULT_MAX_QPS", "AutoRate", "RateFound"]

log = logging.getLogger("batch_enricher.autorate")

#: The `--qps` value that asks for this controller.
AUTO: Final = "auto"
#: `--max-qps`: the ceiling `--qps auto` never goes above.
DEFAULT_MAX_QPS: Final = 100.0

#: The first rate, requests per second: low enough for any paid key, doubled within seconds.
START_RATE: Final = 2.0
#: Slow start: each full window accepted multiplies the rate by this.
GROWTH: Final = 2.0
#: Settle at this share of the ceiling (see the module docstring: ~40 ms of jitter room).
SETTLE: Final = 0.97
#: The limit fell by an unknown amount: multiply the rate by this.
FALL: Final = 0.5
#: A probe sends at this multiple of the least count that would show a rise.
PROBE: Final = 1.1
#: Seconds settled before the first probe; doubled after each probe that finds nothing new.
PROBE_FIRST: Final = 10.0
PROBE_LONGEST: Final = 60.0
#: A window was in use when it held at least this share of what the rate allows.
IN_USE: Final = 0.8
#: The rate never goes below this (requests per second).
MIN_RATE: Final = 0.5
#: Send times kept, in windows: a reply later than this says nothing (its window is forgotten).
HISTORY_WINDOWS: Final = 4.0


def _positive(name: str, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class RateFound:
    """What `--qps auto` learned: the rate to give `--qps` next time, and how it knows.

    `rate` is None when too few requests were sent to learn anything; `limited` says whether
    the server answered 10011 (the rate sits just under its limit) or never did (the limit is
    at least `rate`, which may be the `ceiling`).
    """

    rate: float | None
    limited: bool
    ceiling: float


class AutoRate:
    """The send rate that settles just under a server's unknown per-second limit.

    Feed it every request sent (`on_sent`) and the verdict on each (`on_accepted` for any reply
    but 10011, `on_rate_limited` for 10011, with the time the request was sent); read `rate`.
    Times are seconds on any one monotonic clock.

    >>> auto = AutoRate(max_rate=100)
    >>> auto.rate
    2.0
    """

    def __init__(self, max_rate: float = DEFAULT_MAX_QPS, *, window: float = 1.0) -> None:
        self.max_rate = _positive("max_rate", max_rate)
        self._window = _positive("window", window)
        self._rate = min(START_RATE, self.max_rate)
        self._sends: list[float] = []  # send times, oldest first
        self._forgotten = -math.inf  # sends before this were dropped from `_sends`
        self._changed_at = -math.inf  # when the rate last changed
        self._cut_at = -math.inf  # when it was last cut: older sends' 10011s are old news
        self._ceiling: int | None = None  # the most our window may hold: refused at one more
        self._floor = 0  # the most our window held at a send accepted since the last cut
        self._again = 0  # refused moments in a row with nothing accepted in between
        self._draining = False  # within a window of a cut
        self._probing = False
        self._probe_every = PROBE_FIRST
        self._probe_at = math.inf
        self._held = 0.0  # the highest rate the server accepted over a full window

    # -- reading -------------------------------------------------------------------------------

    @property
    def rate(self) -> float:
        """Requests per second to send at now."""
        return self._rate

    @property
    def per_window(self) -> int:
        """The most requests one window may hold (the pacer's guard), at least 1.

        What the rate's spacing lets through with the settling margin (the ceiling, when
        settled), never more than `max_rate` allows.
        """
        spaced = math.floor(self._rate * self._window / SETTLE + 1e-9)
        # Right after a cut the window still holds requests sent faster than the new rate: the
        # drain keeps one more out, or only the pacer's 10 ms would be left for jitter there.
        spaced -= self._draining
        return max(1, min(math.floor(self.max_rate * self._window), spaced))

    @property
    def ceiling(self) -> int | None:
        """The most requests the server took in one window before it said 10011 (None: never)."""
        return self._ceiling

    def found(self) -> RateFound:
        """The rate this run found, for the summary (and the next run's `--qps`)."""
        if self._ceiling is not None:
            rate = min(self.max_rate, self._settled(self._ceiling))
            return RateFound(_round_down(rate), limited=True, ceiling=self.max_rate)
        held = _round_down(self._held) if self._held > 0 else None
        return RateFound(held, limited=False, ceiling=self.max_rate)

    # -- feeding -------------------------------------------------------------------------------

    def on_sent(self, now: float) -> None:
        """One request was sent at `now` (times never go backwards)."""
        sends = self._sends
        sends.append(now)
        horizon = now - HISTORY_WINDOWS * self._window
        # Trimmed in bulk, once the oldest half of the history is stale: amortised O(1).
        if sends[0] < horizon - HISTORY_WINDOWS * self._window:
            cut = bisect.bisect_left(sends, horizon)
            del sends[:cut]
            self._forgotten = horizon

    def on_accepted(self, sent_at: float, now: float) -> None:
        """The request sent at `sent_at` got a reply other than 10011 at `now`."""
        if sent_at < self._cut_at:
            return  # sent before the last cut: it describes the moment the cut answered
        count = self._count(sent_at)
        if count is None:
            return
        self._floor = max(self._floor, count)
        if sent_at >= self._cut_at + self._window:
            self._draining = False  # the window no longer holds anything sent before the cut
        if self._ceiling is not None and count > self._ceiling + _slack(self._ceiling):
            # The server took clearly more than it refused before (not just jitter at the
            # window's edge): the limit rose (another user of the key stopped, or a probe found
            # room). Find it again from here.
            self._ceiling = None
            self._probing = False
            self._probe_every = PROBE_FIRST
        if sent_at < self._changed_at + self._window:
            return  # its window was not all at the current rate
        if count < IN_USE * self._rate * self._window:
            return  # the run did not use the rate: no evidence it would be accepted
        self._held = max(self._held, self._rate)
        if self._ceiling is None:
            self._change(self._rate * GROWTH, now, "accepted in full: faster")
        elif self._rate < self._settled(self._ceiling):
            self._change(self._settled(self._ceiling), now, "back to just under the ceiling")
        elif now >= self._probe_at and not self._probing:
            self._probing = True
            probe = self._ceiling + _slack(self._ceiling) + 1  # a count that would show a rise
            self._change(PROBE * probe / self._window, now, "probing above the ceiling")

    def on_rate_limited(self, sent_at: float, now: float) -> None:
        """The request sent at `sent_at` was answered 10011 at `now`."""
        if sent_at < self._cut_at:
            return  # sent before the last cut: the same moment, already answered
        count = self._count(sent_at)
        if count is None:
            return
        if self._floor == 0 and self._cut_at > -math.inf:
            self._again += 1  # refused again, nothing accepted since the last cut
        else:
            self._again = 0
        below = count < SETTLE * self._floor  # well below a count the server took since the cut
        fell = below or self._again > 1
        # If it fell (another system started using the key), by how much nobody knows: halve.
        # Otherwise this is the first refusal at a new height, or at the one just settled under
        # (our count and the server's differ by arrival jitter at the window's edge, so a
        # ceiling one too high shows up as a refusal right after settling): settle under it.
        target = self._rate * FALL if fell else self._settled(count - 1)
        self._ceiling = count - 1
        if self._probing:
            # The probe found the ceiling where it was: look again later, and less often.
            self._probe_every = min(PROBE_LONGEST, 2 * self._probe_every)
        why = "the limit fell" if fell else "settling under it"
        self._cut(min(target, self._rate), now, f"10011 at {count} in a second, {why}")

    def adopt(self, rate: float, ceiling: int | None, now: float) -> None:
        """Take over from another controller (a team's previous driver): its rate and ceiling.

        What it sent before `now` is its news, not this one's: older 10011s change nothing.
        Settled under a known ceiling, the first probe comes `PROBE_FIRST` from now.
        """
        self._ceiling = ceiling
        self._floor = 0
        self._again = 0
        self._probing = False
        self._probe_every = PROBE_FIRST
        self._probe_at = now + PROBE_FIRST if ceiling is not None else math.inf
        self._change(_positive("rate", rate), now, "taking over the account's rate")
        self._cut_at = now
        self._draining = False

    # -- internals -----------------------------------------------------------------------------

    def _count(self, at: float) -> int | None:
        """Our sends in the window that ends at `at` (inclusive), or None if forgotten."""
        start = at - self._window
        if start < self._forgotten:
            return None
        sends = self._sends
        return bisect.bisect_right(sends, at) - bisect.bisect_right(sends, start)

    def _settled(self, ceiling: int) -> float:
        return SETTLE * ceiling / self._window

    def _change(self, rate: float, now: float, why: str) -> None:
        self._rate = min(self.max_rate, max(MIN_RATE, rate))
        self._changed_at = now
        log.debug("--qps auto: %s: %.1f requests/s", why, self._rate)

    def _cut(self, rate: float, now: float, why: str) -> None:
        self._change(rate, now, why)
        self._cut_at = now
        self._draining = True
        self._floor = 0
        self._probing = False
        self._probe_at = now + self._probe_every


def _slack(ceiling: int) -> int:
    """How far an accepted count may pass the ceiling by arrival jitter alone: the settling
    margin's worth, and at least one request."""
    return max(1, math.ceil((1 - SETTLE) * ceiling))


def _round_down(rate: float) -> float:
    """To one decimal, down: a `--qps` the next run can be given without overshooting."""
    return math.floor(rate * 10 + 1e-9) / 10

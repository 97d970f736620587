"""How often and how patiently a transient failure is retried (`--max-retries` and friends).

A module of its own, apart from client.py, so that the command line can build a policy without
importing aiohttp (`--help` must start fast).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["UNCERTAIN_PAUSE_FACTOR", "RetryPolicy"]

#: A possibly billed attempt is retried after this many first backoffs (`RetryPolicy.initial`).
UNCERTAIN_PAUSE_FACTOR: Final = 10


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a transient failure is retried.

    `max_retries` bounds every person's retries. Of those, at most `uncertain_retries` may
    follow an attempt whose reply was lost after sending: each such retry may pay a second
    time, so a person costs at most `uncertain_retries + 1` possibly billed attempts.
    """

    max_retries: int = 6
    initial: float = 0.5  # first backoff, seconds; doubles each time, with as much jitter
    maximum: float = 30.0
    uncertain_retries: int = 1

    @property
    def uncertain_pause(self) -> float:
        """The least pause before retrying a possibly billed attempt (5 s by default).

        A reply lost after sending mostly means the server is slow or struggling (or the path
        to it is): an immediate retry would likely be lost too, and paid for again. Ten first
        backoffs is the pause the ordinary backoff reaches by its fifth retry; enough for a
        queue on the server to drain, short enough not to hold a person up. Never longer than
        `maximum`.
        """
        return min(self.maximum, UNCERTAIN_PAUSE_FACTOR * self.initial)

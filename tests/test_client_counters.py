"""A call's counters: retries are requests that were sent, like api_calls."""

from __future__ import annotations

import pytest

from batch_enricher.client import Caller, CallStats, RetryPolicy
from batch_enricher.errors import TransientApiError
from batch_enricher.guards import NotSent, RunControl
from batch_enricher.models import Answer, Person
from batch_enricher.pacer import Pacer

PERSON = Person("张三", "11010119900307803X", "13812345678")


class _Down:
    """A client whose every request fails transiently."""

    def __init__(self) -> None:
        self.requests = 0

    async def request(self, person: Person) -> Answer:
        self.requests += 1
        raise TransientApiError("281504 网络异常", error_code=281504)


async def test_a_retry_the_stop_prevented_is_not_counted() -> None:
    # The run stops (signal, breaker, budget) while this call backs off: the retry it was
    # waiting for is never sent, so it is neither an api_call nor a retry.
    client = _Down()
    control = RunControl()

    async def stop_during_backoff(seconds: float) -> None:
        control.stop("interrupted by SIGTERM")

    control.sleep = stop_during_backoff  # type: ignore[method-assign,assignment]
    stats = CallStats()
    caller = Caller(client, Pacer(1e6), control, RetryPolicy(max_retries=3), stats)  # type: ignore[arg-type]

    with pytest.raises(NotSent):
        await caller.call(PERSON)

    assert client.requests == stats.api_calls == 1
    assert stats.retries == 0

"""The caller under `--qps auto`: it tells the controller each verdict, with the send time, and
a 10011 does not idle its worker for a backoff the controller already applies to everyone."""

from __future__ import annotations

import pytest

from batch_enricher.autorate import AutoRate
from batch_enricher.client import AUTO_RATE_LIMITED_PAUSE, Caller, CallStats, RetryPolicy
from batch_enricher.errors import RateLimitedError, TransientApiError
from batch_enricher.guards import RunControl
from batch_enricher.models import Answer, Person, Status
from batch_enricher.pacer import Pacer

PERSON = Person("张三", "11010119900307803X", "13812345678")
OK = Answer(Status.OK, 0, "成功", "JH1", "16", "17", "38", "2026-11-28T12:00:00+08:00")


class _Scripted:
    """A client that fails with the scripted errors in turn, then answers."""

    timeout = 15.0

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)

    async def request(self, person: Person) -> Answer:
        if self.errors:
            raise self.errors.pop(0)
        return OK


class _Recorder(AutoRate):
    """An AutoRate that remembers what it was told."""

    def __init__(self) -> None:
        super().__init__(1e6)
        self.sent: list[float] = []
        self.verdicts: list[tuple[str, float]] = []

    def on_sent(self, now: float) -> None:
        self.sent.append(now)
        super().on_sent(now)

    def on_accepted(self, sent_at: float, now: float) -> None:
        self.verdicts.append(("accepted", sent_at))
        super().on_accepted(sent_at, now)

    def on_rate_limited(self, sent_at: float, now: float) -> None:
        self.verdicts.append(("10011", sent_at))
        super().on_rate_limited(sent_at, now)


class _Clock:
    """The pacer's clock: its sleeps advance time at once (nothing here waits for real)."""

    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def _following(controller: AutoRate) -> Pacer:
    clock = _Clock()
    return Pacer.following(controller, clock=clock.time, sleep=clock.sleep)


def _caller(client: _Scripted, pacer: Pacer) -> tuple[Caller, list[float]]:
    control = RunControl()
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)

    control.sleep = fake_sleep  # type: ignore[method-assign]
    policy = RetryPolicy(max_retries=6, initial=1.0)
    return Caller(client, pacer, control, policy, CallStats()), waits  # type: ignore[arg-type]


async def test_each_verdict_reaches_the_controller_with_its_send_time() -> None:
    limited = RateLimitedError("10011", error_code=10011)
    busy = TransientApiError("281504", error_code=281504)  # a reply: not "too fast"
    lost = TransientApiError("HTTP 502")  # no API reply: says nothing about the rate
    controller = _Recorder()
    caller, _ = _caller(_Scripted(limited, busy, lost), _following(controller))

    assert await caller.call(PERSON) == OK

    assert len(controller.sent) == 4
    assert controller.verdicts == [
        ("10011", controller.sent[0]),
        ("accepted", controller.sent[1]),
        ("accepted", controller.sent[3]),
    ]


@pytest.mark.parametrize("auto", [True, False])
async def test_a_10011_under_auto_is_retried_without_a_backoff(auto: bool) -> None:
    limited = RateLimitedError("10011", error_code=10011)
    pacer = _following(AutoRate(1e6)) if auto else Pacer(1e6)
    caller, waits = _caller(_Scripted(limited, limited, limited), pacer)

    assert await caller.call(PERSON) == OK

    if auto:  # the controller has slowed everyone down; the pacer holds the retry until then
        assert all(wait <= AUTO_RATE_LIMITED_PAUSE for wait in waits), waits
    else:  # a fixed --qps keeps its exponential backoff
        assert [1 <= waits[0] <= 2, 2 <= waits[1] <= 3, 4 <= waits[2] <= 5] == [True] * 3

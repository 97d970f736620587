"""One call: reply decoding, and the retry schedule (on a fake clock, no real pauses)."""

from __future__ import annotations

import pytest

from batch_enricher.client import Caller, CallStats, RetryPolicy, decode_reply
from batch_enricher.errors import (
    AccountError,
    QuotaExceededError,
    RateLimitedError,
    TransientApiError,
)
from batch_enricher.guards import RunControl
from batch_enricher.models import Answer, Person, Status
from batch_enricher.pacer import Pacer

PERSON = Person("张三", "11010119900307803X", "13812345678")
OK = Answer(Status.OK, 0, "成功", "JH1", "16", "17", "38", "2026-11-28T12:00:00+08:00")


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b'{"reason":"","result":null,"error_code":10001}', AccountError),
        (b'{"reason":"","result":null,"error_code":10021}', AccountError),
        (b'{"reason":"","result":null,"error_code":10011}', RateLimitedError),
        (b'{"reason":"","result":null,"error_code":10012}', QuotaExceededError),
        (b'{"reason":"","result":null,"error_code":281504}', TransientApiError),
        (b'{"reason":"","result":null,"error_code":10014}', TransientApiError),
        (b'{"reason":"","result":null,"error_code":99999}', TransientApiError),
        (b'{"reason":"\xe6\x88', TransientApiError),
        (b"<html>502</html>", TransientApiError),
    ],
)
def test_replies_that_are_not_answers_raise_what_they_mean(
    body: bytes, error: type[Exception]
) -> None:
    with pytest.raises(error):
        decode_reply(body)


def test_a_billed_reply_without_a_result_is_kept_not_retried() -> None:
    # error_code 0 is billed: retrying a malformed one would pay twice for the same person.
    answer = decode_reply(b'{"reason":"ok","result":null,"error_code":0}')
    assert (answer.status, answer.orderid, answer.range) == (Status.OK, "", "")


def test_an_answer_keeps_the_raw_scores_and_the_orderid() -> None:
    answer = decode_reply(
        b'{"reason":"\xe6\x88\x90\xe5\x8a\x9f","result":{"orderid":"JH815","range":"16",'
        b'"history":"17","stability":"38"},"error_code":0}'
    )
    assert (answer.status, answer.orderid, answer.range, answer.history, answer.stability) == (
        Status.OK,
        "JH815",
        "16",
        "17",
        "38",
    )
    assert answer.queried_at


class _Flaky:
    """A client whose first `failures` requests fail transiently."""

    def __init__(self, failures: int, error: type[TransientApiError] = TransientApiError) -> None:
        self.failures = failures
        self.error = error
        self.requests = 0

    async def request(self, person: Person) -> Answer:
        self.requests += 1
        if self.requests <= self.failures:
            raise self.error("281504 网络异常", error_code=281504)
        return OK


def _caller(client: _Flaky, policy: RetryPolicy) -> tuple[Caller, list[float]]:
    control = RunControl()
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)

    control.sleep = fake_sleep  # type: ignore[method-assign]
    pacer = Pacer(1e6)
    return Caller(client, pacer, control, policy, CallStats()), waits  # type: ignore[arg-type]


async def test_backoff_doubles_from_initial_with_jitter_and_a_cap() -> None:
    client = _Flaky(failures=6)
    caller, waits = _caller(client, RetryPolicy(max_retries=6, initial=1.0, maximum=20.0))

    assert await caller.call(PERSON) == OK

    assert client.requests == 7
    assert caller.stats.api_calls == 7 and caller.stats.retries == 6
    lows = [1, 2, 4, 8, 16, 20]
    for wait, low in zip(waits, lows, strict=True):
        assert low <= wait <= min(low + 1, 20), waits


async def test_retries_stop_after_max_retries_with_the_last_error() -> None:
    client = _Flaky(failures=10)
    caller, waits = _caller(client, RetryPolicy(max_retries=3, initial=0.5, maximum=30.0))

    with pytest.raises(TransientApiError, match="281504"):
        await caller.call(PERSON)

    assert client.requests == 4 and len(waits) == 3


async def test_no_retries_means_one_request() -> None:
    client = _Flaky(failures=1)
    caller, waits = _caller(client, RetryPolicy(max_retries=0))
    with pytest.raises(TransientApiError):
        await caller.call(PERSON)
    assert client.requests == 1 and waits == []


async def test_a_first_success_pays_no_pause() -> None:
    client = _Flaky(failures=0)
    caller, waits = _caller(client, RetryPolicy())
    assert await caller.call(PERSON) == OK
    assert waits == [] and caller.stats.billed == 1

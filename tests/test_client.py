"""One call: reply decoding, and the retry schedule (on a fake clock, no real pauses)."""

from __future__ import annotations

import asyncio

import pytest

from batch_enricher.client import Caller, CallStats, RetryPolicy, decode_reply
from batch_enricher.errors import (
    AccountError,
    ConnectFailedError,
    QuotaExceededError,
    RateLimitedError,
    TransientApiError,
    UncertainReplyError,
)
from batch_enricher.guards import NotSent, RunControl
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
        (b'{"reason":"\xe6\x88', UncertainReplyError),
        (b"<html>502</html>", UncertainReplyError),
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


# --- attempts whose reply was lost after sending (possibly billed) ----------------------------

LOST = UncertainReplyError(
    "no reply within --timeout 15 s: the request was sent, it may have been billed"
)
REFUSED = ConnectFailedError("connection error (ClientConnectorError)")
BUSY = TransientApiError("281504 网络异常", error_code=281504)


class _Scripted:
    """A client that fails with the scripted errors in turn, then answers."""

    timeout = 15.0

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.requests = 0

    async def request(self, person: Person) -> Answer:
        self.requests += 1
        if self.errors:
            raise self.errors.pop(0)
        return OK


def _scripted(
    client: _Scripted, policy: RetryPolicy, control: RunControl | None = None
) -> tuple[Caller, list[float], RunControl]:
    control = control or RunControl()
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)

    control.sleep = fake_sleep  # type: ignore[method-assign]
    caller = Caller(client, Pacer(1e6), control, policy, CallStats())  # type: ignore[arg-type]
    return caller, waits, control


async def test_a_lost_reply_is_retried_once_after_a_longer_pause_and_counted() -> None:
    client = _Scripted(LOST, LOST, LOST)
    caller, waits, control = _scripted(client, RetryPolicy())  # max_retries 6, 1 uncertain

    with pytest.raises(UncertainReplyError, match="may have been billed"):
        await caller.call(PERSON)

    assert client.requests == 2, "one retry for a lost reply, not six"
    assert caller.stats.possibly_billed == 2 == control.possibly_billed
    assert caller.stats.billed == 0 == control.billed
    (wait,) = waits
    assert 5.0 <= wait <= 5.5, "ten first backoffs, plus jitter"


async def test_certain_failures_keep_their_allowance_around_a_lost_reply() -> None:
    # Lost, then certain failures: retried on within --max-retries (all retries count there).
    client = _Scripted(LOST, BUSY, BUSY, BUSY)
    caller, waits, _ = _scripted(client, RetryPolicy(max_retries=6, initial=1.0, maximum=60.0))

    assert await caller.call(PERSON) == OK

    assert client.requests == 5 and caller.stats.possibly_billed == 1
    assert 10.0 <= waits[0] <= 11.0, waits  # after the lost reply: the longer pause
    assert [2 <= waits[1] <= 3, 4 <= waits[2] <= 5, 8 <= waits[3] <= 9] == [True] * 3, waits


async def test_a_second_lost_reply_ends_the_person_even_with_retries_left() -> None:
    client = _Scripted(BUSY, LOST, BUSY, LOST, BUSY)
    caller, _, _ = _scripted(client, RetryPolicy(max_retries=6, uncertain_retries=1))
    with pytest.raises(UncertainReplyError):
        await caller.call(PERSON)
    assert client.requests == 4 and caller.stats.possibly_billed == 2


async def test_max_retries_bounds_lost_replies_too() -> None:
    client = _Scripted(LOST, LOST)
    caller, waits, _ = _scripted(client, RetryPolicy(max_retries=0, uncertain_retries=3))
    with pytest.raises(UncertainReplyError):
        await caller.call(PERSON)
    assert client.requests == 1 and waits == []


async def test_a_person_that_had_a_lost_reply_fails_saying_it_may_have_been_billed() -> None:
    # The last error is certain, but an earlier attempt may have been billed: the row says so.
    client = _Scripted(LOST, BUSY, BUSY)
    caller, _, _ = _scripted(client, RetryPolicy(max_retries=2))
    with pytest.raises(UncertainReplyError, match=r"网络异常 \(281504\); an earlier attempt"):
        await caller.call(PERSON)


async def test_a_stop_after_a_lost_reply_leaves_the_person_failed_not_skipped() -> None:
    # `skipped` means never sent; this person's request was sent and may have been billed.
    client = _Scripted(LOST)
    control = RunControl()
    caller, _, _ = _scripted(client, RetryPolicy(), control)

    async def stop_during_backoff(seconds: float) -> None:
        control.stop("interrupted by SIGTERM")

    control.sleep = stop_during_backoff  # type: ignore[method-assign,assignment]
    with pytest.raises(UncertainReplyError):
        await caller.call(PERSON)
    assert client.requests == 1


async def test_an_account_abort_after_a_lost_reply_leaves_the_person_failed() -> None:
    client = _Scripted(LOST, AccountError("10001 错误的请求KEY", error_code=10001))
    caller, _, control = _scripted(client, RetryPolicy())
    with pytest.raises(UncertainReplyError):
        await caller.call(PERSON)
    assert control.abort_code == 10001, "the run is aborted all the same"


async def test_a_refused_connection_is_an_ordinary_retry_and_never_possibly_billed() -> None:
    client = _Scripted(*[REFUSED] * 6)
    caller, waits, control = _scripted(client, RetryPolicy(max_retries=6, initial=1.0))
    assert await caller.call(PERSON) == OK
    assert client.requests == 7 and caller.stats.possibly_billed == 0 == control.possibly_billed
    assert waits[0] < 2.0


async def test_lost_replies_in_a_row_open_the_breaker_and_stop_the_run() -> None:
    client = _Scripted(*[LOST] * 100)
    caller, _, control = _scripted(client, RetryPolicy(uncertain_retries=0))

    for _ in range(7):
        with pytest.raises(UncertainReplyError):
            await caller.call(PERSON)
    assert not control.stopped, "seven in a row is below the floor of eight"
    with pytest.raises(UncertainReplyError):
        await caller.call(PERSON)

    assert control.stopped and control.stop_reason is not None
    assert "8 replies in a row were lost" in control.stop_reason
    assert "(the last: no reply within --timeout 15 s)" in control.stop_reason
    assert "--timeout 15 s" in control.stop_reason and "raise" in control.stop_reason
    with pytest.raises(NotSent):
        await caller.call(PERSON)
    assert client.requests == 8


async def test_any_reply_closes_the_streak_and_a_refused_connection_does_not() -> None:
    client = _Scripted(*[LOST] * 7, BUSY, *[LOST] * 7, REFUSED, LOST)
    caller, _, control = _scripted(client, RetryPolicy(max_retries=0))
    for _ in range(15):
        with pytest.raises(TransientApiError):
            await caller.call(PERSON)
    assert not control.stopped, "the 281504 reply in the middle started the count over"
    for _ in range(2):  # refused (neither counts nor resets), then the eighth lost reply
        with pytest.raises(TransientApiError):
            await caller.call(PERSON)
    assert control.stopped


async def test_the_breaker_allows_two_waves_of_requests_in_flight() -> None:
    # With 12 requests in flight, a whole wave can be lost to one hiccup: the breaker waits
    # for a second (24 in a row) before stopping the run.
    release = asyncio.Event()

    class _Hanging(_Scripted):
        async def request(self, person: Person) -> Answer:
            self.requests += 1
            await release.wait()
            raise LOST

    client = _Hanging()
    caller, _, control = _scripted(client, RetryPolicy(uncertain_retries=0))
    calls = [asyncio.create_task(caller.call(PERSON)) for _ in range(12)]
    while client.requests < 12:
        await asyncio.sleep(0)
    release.set()
    await asyncio.gather(*calls, return_exceptions=True)
    assert not control.stopped
    for _ in range(11):
        with pytest.raises(UncertainReplyError):
            await caller.call(PERSON)
    assert not control.stopped
    with pytest.raises(UncertainReplyError):
        await caller.call(PERSON)
    assert control.stopped and "24 replies in a row" in (control.stop_reason or "")

"""Talking to the API: one request, its reply decoded, and the retrying call around it.

`JuheClient.request` sends exactly one HTTP request and turns the reply into an `Answer` or an
exception from `errors.py`. `Caller.call` wraps it with the pacer, the run's guards and tenacity's
backoff, so that each HTTP attempt is paced and counted.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import aiohttp
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from batch_enricher import __version__
from batch_enricher.codes import Kind, kind_of, reason_of
from batch_enricher.errors import (
    AccountError,
    ApiError,
    QuotaExceededError,
    RateLimitedError,
    TransientApiError,
)
from batch_enricher.guards import RunControl
from batch_enricher.models import Answer, Person, Status
from batch_enricher.pacer import Pacer
from batch_enricher.privacy import mask_idcard, mask_mobile

log = logging.getLogger("batch_enricher.client")

DEFAULT_ENDPOINT: Final = "https://apis.juhe.cn/financeInfo/query"
USER_AGENT: Final = f"batch-enricher/{__version__} (+aiohttp/{aiohttp.__version__})"

# HTTP statuses worth a retry; any other non-200 is a reply we cannot use, also retried as
# "undecodable" since the documented API always answers 200 with a JSON body.
_RETRY_HTTP: Final = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass
class CallStats:
    """What this run sent and received, counted at the source."""

    api_calls: int = 0  # HTTP requests sent, retries included
    billed: int = 0  # error_code 0 answers received
    retries: int = 0  # attempts after the first
    codes: Counter[int] = field(default_factory=Counter)


def now_iso() -> str:
    """The current local time as ISO 8601 with its UTC offset, to the second."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def decode_reply(body: bytes) -> Answer:
    """Turn a 200 reply's body into an `Answer`, or raise the error it stands for.

    >>> decode_reply(b'{"reason":"查询失败","result":null,"error_code":281505}').status
    <Status.REJECTED: 'rejected'>
    """
    try:
        data: Any = json.loads(body)
        code = int(data["error_code"])
    except (ValueError, TypeError, KeyError) as exc:
        raise TransientApiError("undecodable reply (not the documented JSON)") from exc
    reason = str(data.get("reason") or reason_of(code))
    kind = kind_of(code)
    if kind is Kind.OK:
        # error_code 0 is billed ("0时计费") whatever else the reply holds. A malformed result is
        # still a paid answer: keep it (its scores come out `unmapped`) rather than retry and
        # pay again.
        result = data.get("result")
        if not isinstance(result, dict):
            result = {}
        return Answer(
            status=Status.OK,
            error_code=0,
            reason=reason,
            orderid=str(result.get("orderid") or ""),
            range=_score(result.get("range")),
            history=_score(result.get("history")),
            stability=_score(result.get("stability")),
            queried_at=now_iso(),
        )
    if kind is Kind.REJECTED:
        return Answer(Status.REJECTED, code, reason_of(code), "", "", "", "", now_iso())
    message = f"{code} {reason_of(code)}"
    if kind is Kind.ACCOUNT:
        raise AccountError(message, error_code=code)
    if kind is Kind.RATE_LIMITED:
        raise RateLimitedError(message, error_code=code)
    if kind is Kind.QUOTA:
        raise QuotaExceededError(message, error_code=code)
    raise TransientApiError(message, error_code=code)


def _score(value: object) -> str:
    return "" if value is None else str(value).strip()


class JuheClient:
    """Sends one query per call to the financeInfo endpoint over a shared aiohttp session."""

    def __init__(
        self, session: aiohttp.ClientSession, endpoint: str, key: str, *, timeout: float
    ) -> None:
        self._session = session
        self._endpoint = endpoint
        self._key = key
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def request(self, person: Person) -> Answer:
        """POST one form-encoded query (no personal data in the URL) and decode the reply."""
        form = {
            "key": self._key,
            "idcard": person.idcard,
            "realname": person.realname,
            "mobile": person.mobile,
        }
        try:
            async with self._session.post(
                self._endpoint, data=form, timeout=self._timeout
            ) as response:
                body = await response.read()
                status = response.status
        except TimeoutError as exc:
            raise TransientApiError("timed out waiting for the API") from exc
        except aiohttp.ClientError as exc:
            # aiohttp's messages may quote the URL (never the form body); say only the kind.
            raise TransientApiError(f"connection error ({type(exc).__name__})") from exc
        if status != 200:
            detail = "rate limited" if status == 429 else "server error"
            if status not in _RETRY_HTTP and status < 500:
                detail = "unexpected reply"
            raise TransientApiError(f"HTTP {status} ({detail})")
        return decode_reply(body)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a transient failure is retried."""

    max_retries: int = 6
    initial: float = 0.5  # first backoff, seconds; doubles each time, with as much jitter
    maximum: float = 30.0


class Caller:
    """One person's call with pacing, guards, and exponential backoff with jitter (tenacity)."""

    def __init__(
        self,
        client: JuheClient,
        pacer: Pacer,
        control: RunControl,
        policy: RetryPolicy,
        stats: CallStats,
    ) -> None:
        self._client = client
        self._pacer = pacer
        self._control = control
        self._policy = policy
        self.stats = stats

    async def call(self, person: Person) -> Answer:
        """A final answer for `person`, or the last transient error once retries are spent.

        Raises `AccountError` (run aborted), `guards.NotSent` (stopped before sending) or a
        `TransientApiError` subclass (retries exhausted).
        """
        try:
            # Most calls succeed at once; tenacity's per-attempt machinery is a measurable share
            # of a run's CPU (issue 7's benchmark), so it only starts after a first failure.
            try:
                return await self._attempt(person)
            except TransientApiError as exc:
                if self._policy.max_retries == 0:
                    raise
                self._note_retry(person, exc)
            return await self._retry(person)
        except QuotaExceededError:
            self._control.quota_gave_up(still_quota=True)
            raise
        except TransientApiError:
            self._control.quota_gave_up(still_quota=False)
            raise

    async def _retry(self, person: Person) -> Answer:
        """Attempts 2 .. max_retries + 1, each after an exponential, jittered pause."""
        initial = self._policy.initial
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._policy.max_retries),
            # The pause after failed attempt n is initial * 2**(n - 1) plus up to `initial` of
            # jitter, capped. The pause after the first is taken below; tenacity's first
            # wait is the one after the second attempt, so its base is twice `initial`.
            wait=wait_exponential_jitter(
                multiplier=2 * initial, max=self._policy.maximum, jitter=initial
            ),
            retry=retry_if_exception_type(TransientApiError),
            sleep=self._control.sleep,
            reraise=True,
            before_sleep=lambda state: self._note_retry(
                person, state.outcome.exception() if state.outcome else None
            ),
        )
        await self._control.sleep(min(self._policy.maximum, initial + random.uniform(0, initial)))
        async for attempt in retrying:
            with attempt:
                return await self._attempt(person, retry=True)
        raise AssertionError("unreachable: tenacity either returns or reraises")

    async def _attempt(self, person: Person, *, retry: bool = False) -> Answer:
        await self._control.admit()
        # Budget before the pacer: a call that waited for budget after taking its slot would go
        # out whenever a reply freed the budget, on top of fresh slots, and break --qps.
        await self._control.reserve()
        try:
            await self._control.paced(self._pacer.acquire)
        except BaseException:
            self._control.settle(billed=False)
            raise
        # Counted once sent: a retry that a stop cut short was never a request.
        self.stats.api_calls += 1
        self.stats.retries += retry
        try:
            answer = await self._client.request(person)
        except BaseException as exc:
            self._control.settle(billed=False)
            if isinstance(exc, ApiError):
                self._on_error(exc)
            raise
        billed = answer.status is Status.OK
        self._control.settle(billed=billed)
        self.stats.codes[answer.error_code] += 1
        if billed:
            self.stats.billed += 1
        self._control.quota_ok()
        return answer

    def _on_error(self, exc: ApiError) -> None:
        if exc.error_code is not None:
            self.stats.codes[exc.error_code] += 1
        if isinstance(exc, RateLimitedError):
            self._pacer.slow_down()
        elif isinstance(exc, QuotaExceededError):
            self._control.quota_hit()
        elif isinstance(exc, AccountError):
            self._control.abort(exc.error_code or 0, f"aborted by the API: {exc}")

    def _note_retry(self, person: Person, exc: BaseException | None) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "retrying %s / %s after: %s",
                mask_idcard(person.idcard),
                mask_mobile(person.mobile),
                exc,
            )


__all__ = [
    "DEFAULT_ENDPOINT",
    "USER_AGENT",
    "CallStats",
    "Caller",
    "JuheClient",
    "RetryPolicy",
    "decode_reply",
    "now_iso",
]

"""Talking to the API: one request, its reply decoded, and the retrying call around it.

`JuheClient.request` sends exactly one HTTP request and turns the reply into an `Answer` or an
exception from `errors.py`. `Caller.call` wraps it with the pacer, the run's guards and tenacity's
backoff, so that each HTTP attempt is paced and counted.

Every answer with error_code 0 is billed, so a failure is only harmless if the request never
reached the server. aiohttp raises connector errors (`ClientConnectorError` and its DNS, SSL and
certificate kinds, `ConnectionTimeoutError`) only before anything is written, but a plain
`TimeoutError` (the total timeout) or a `ClientOSError` can come either before or after. So each
request carries a marker (in a context variable of the task sending it, whatever pooled
connection it uses) that the session's request class sets once the request is handed to the
connection (`open_session`). A failure after that (a timeout, `ServerDisconnectedError`,
`ClientPayloadError`, a reset, an unreadable 200, a 504 from a gateway) is `UncertainReplyError`:
possibly billed. The marker is set just before the bytes are written, so the rare request that
fails in between is counted possibly billed too: the error is on the side of caution, never of a
silent bill.
"""

from __future__ import annotations

import json
import logging
import random
import weakref
from collections import Counter
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote_plus

import aiohttp
from aiohttp import ClientResponse
from aiohttp.connector import Connection
from aiohttp.payload import BytesPayload
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from batch_enricher import __version__
from batch_enricher.codes import Kind, kind_of, reason_of
from batch_enricher.config import DEFAULT_ENDPOINT
from batch_enricher.errors import (
    AccountError,
    ApiError,
    ConnectFailedError,
    QuotaExceededError,
    RateLimitedError,
    TransientApiError,
    UncertainReplyError,
)
from batch_enricher.guards import LostReplyBreaker, NotSent, RunControl
from batch_enricher.models import Answer, Person, Status
from batch_enricher.privacy import mask_idcard, mask_mobile
from batch_enricher.retry import RetryPolicy

if TYPE_CHECKING:
    from batch_enricher.store.base import Limiter

log = logging.getLogger("batch_enricher.client")

USER_AGENT: Final = f"batch-enricher/{__version__} (+aiohttp/{aiohttp.__version__})"

# What the API takes (DESIGN.md): a form, in the body, never in the URL.
_FORM: Final = "application/x-www-form-urlencoded"
# HTTP statuses worth a retry; any other non-200 is a reply we cannot use, also retried as
# "undecodable" since the documented API always answers 200 with a JSON body.
_RETRY_HTTP: Final = frozenset({408, 425, 429, 500, 502, 503, 504})
# A gateway that gave up waiting for the API: the API may still have answered, and billed.
_GATEWAY_TIMEOUT: Final = 504
# Raised only while connecting, before anything is written: certainly not sent.
_CONNECT_ERRORS: Final = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
# How every lost reply's message ends; what comes before it says what happened.
_MAY_BE_BILLED: Final = ": the request was sent, it may have been billed"

#: Under `--qps auto`, a request answered 10011 is retried after at most this many seconds.
AUTO_RATE_LIMITED_PAUSE: Final = 0.1
#: The lost-reply breaker opens after this many lost replies in a row at least ...
BREAKER_MIN: Final = 8
#: ... or after this many times the most requests seen in flight at once, if that is more.
BREAKER_WAVES: Final = 2


@dataclass
class CallStats:
    """What this run sent and received, counted at the source."""

    api_calls: int = 0  # HTTP requests sent, retries included
    billed: int = 0  # error_code 0 answers received
    retries: int = 0  # attempts after the first
    possibly_billed: int = 0  # attempts whose reply was lost after the request was sent
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
        # A 200 whose body we cannot read may have been an answer, and answers are billed.
        raise UncertainReplyError(
            "unreadable reply (not the documented JSON)" + _MAY_BE_BILLED
        ) from exc
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


class _Sent:
    """One request's marker: set once the request is handed to its connection."""

    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent = False


#: The marker of the request this task is sending (`JuheClient.request` sets it).
_SENDING: Final[ContextVar[_Sent | None]] = ContextVar("batch_enricher_sending", default=None)
#: Sessions made by `open_session`, whose requests set their marker.
_MARKING: Final[weakref.WeakSet[aiohttp.ClientSession]] = weakref.WeakSet()


class _MarkingRequest(aiohttp.ClientRequest):
    """Sets the sending task's marker as aiohttp hands the request to a connection.

    `send` is where a request meets its connection, just before its headers are written; it runs
    in the task that called `session.post`. An aiohttp trace (`on_request_headers_sent`) says
    the same thing, but a session with any trace builds trace objects and awaits every signal of
    every request: 77k instructions of the ~800k a call took (callgrind), 10 % of its CPU.
    """

    async def send(self, conn: Connection) -> ClientResponse:
        marker = _SENDING.get()
        if marker is not None:
            marker.sent = True
        return await super().send(conn)


def open_session(**kwargs: Any) -> aiohttp.ClientSession:
    """The session a `JuheClient` needs; `kwargs` go to `aiohttp.ClientSession`.

    Only its requests tell "certainly not sent" from "sent, reply lost" (possibly billed).
    """
    session = aiohttp.ClientSession(request_class=_MarkingRequest, **kwargs)
    _MARKING.add(session)
    return session


class JuheClient:
    """Sends one query per call to the financeInfo endpoint over a shared aiohttp session.

    The session must come from `open_session()`: it is what tells "certainly not sent" from
    "sent, reply lost" (possibly billed).
    """

    def __init__(
        self, session: aiohttp.ClientSession, endpoint: str, key: str, *, timeout: float
    ) -> None:
        if session not in _MARKING:
            raise ValueError("JuheClient needs a session made by open_session()")
        self._session = session
        self._endpoint = endpoint
        self._key = key
        self.timeout = timeout
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._key_field = "key=" + quote_plus(key)

    def _form(self, person: Person) -> BytesPayload:
        """The form body, encoded here: handed a dict, aiohttp builds a form writer per request
        (a multipart writer and a uuid4 among it), 47-118 µs against 10-14 µs for this."""
        body = (
            f"{self._key_field}&idcard={quote_plus(person.idcard)}"
            f"&realname={quote_plus(person.realname)}&mobile={quote_plus(person.mobile)}"
        )
        return BytesPayload(body.encode("ascii"), content_type=_FORM)

    async def request(self, person: Person) -> Answer:
        """POST one form-encoded query (no personal data in the URL) and decode the reply.

        Raises `ConnectFailedError` when the request certainly never left, and
        `UncertainReplyError` when it left and no usable reply came back (possibly billed).
        """
        marker = _Sent()
        sending = _SENDING.set(marker)
        try:
            async with self._session.post(
                self._endpoint, data=self._form(person), timeout=self._timeout
            ) as response:
                body = await response.read()
                status = response.status
        except TimeoutError as exc:
            if marker.sent and not isinstance(exc, aiohttp.ConnectionTimeoutError):
                raise UncertainReplyError(
                    f"no reply within --timeout {self.timeout:g} s" + _MAY_BE_BILLED
                ) from exc
            raise ConnectFailedError("timed out connecting to the API") from exc
        except aiohttp.ClientError as exc:
            # aiohttp's messages may quote the URL (never the form body); say only the kind.
            kind = type(exc).__name__
            if marker.sent and not isinstance(exc, _CONNECT_ERRORS):
                raise UncertainReplyError(
                    f"connection lost before the whole reply came ({kind})" + _MAY_BE_BILLED
                ) from exc
            raise ConnectFailedError(f"connection error ({kind})") from exc
        finally:
            _SENDING.reset(sending)
        if status == _GATEWAY_TIMEOUT:
            raise UncertainReplyError(
                "HTTP 504 (a gateway gave up waiting for the API)" + _MAY_BE_BILLED
            )
        if status != 200:
            detail = "rate limited" if status == 429 else "server error"
            if status not in _RETRY_HTTP and status < 500:
                detail = "unexpected reply"
            raise TransientApiError(f"HTTP {status} ({detail})")
        return decode_reply(body)


class _Tries:
    """One person's failed attempts so far: all of them, and those whose reply was lost."""

    __slots__ = ("failed", "last_lost", "lost")

    def __init__(self) -> None:
        self.failed = 0
        self.lost = 0
        self.last_lost: UncertainReplyError | None = None


class Caller:
    """One person's call with pacing, guards, and exponential backoff with jitter (tenacity).

    It also keeps the lost-reply breaker: after `max(BREAKER_MIN, BREAKER_WAVES x the most
    requests seen in flight at once)` lost replies in a row it stops the run. A whole wave of
    requests in flight can be lost to one hiccup (a dropped link, a server pause); a second
    wave lost with no reply in between (their retries, or the next people's first tries) is a
    pattern, typically every reply slower than --timeout. With the defaults that is about
    two timeouts and one uncertain pause: well under a minute. The floor keeps a run at low
    concurrency from stopping over a few unlucky replies.
    """

    def __init__(
        self,
        client: JuheClient,
        pacer: Limiter,
        control: RunControl,
        policy: RetryPolicy,
        stats: CallStats,
    ) -> None:
        self._client = client
        self._pacer = pacer
        self._control = control
        self._policy = policy
        self.stats = stats
        self._breaker = LostReplyBreaker(BREAKER_MIN)
        self._sending = 0  # requests in flight right now

    async def call(self, person: Person) -> Answer:
        """A final answer for `person`, or the last transient error once retries are spent.

        Raises `AccountError` (run aborted), `guards.NotSent` (stopped before sending) or a
        `TransientApiError` subclass (retries exhausted). A person with a possibly billed
        attempt never ends in `NotSent` or `AccountError` (its row would say "not sent"): it
        ends in `UncertainReplyError`, whose message says it may have been billed.
        """
        tries = _Tries()
        try:
            # Most calls succeed at once; tenacity's per-attempt machinery is a measurable share
            # of a run's CPU (issue 7's benchmark), so it only starts after a first failure.
            try:
                return await self._counted(person, tries)
            except TransientApiError as exc:
                if self._spent(tries, exc):
                    raise
                self._note_retry(person, exc)
                pause = self._pause(tries, exc)
            await self._control.sleep(pause)
            return await self._retry(person, tries)
        except TransientApiError as exc:
            self._control.quota_gave_up(still_quota=isinstance(exc, QuotaExceededError))
            if tries.last_lost is not None and exc is not tries.last_lost:
                raise UncertainReplyError(
                    f"{_describe(exc)}; an earlier attempt's reply was lost after it was sent: "
                    "it may have been billed"
                ) from exc
            raise
        except (NotSent, AccountError):
            if tries.last_lost is not None:
                raise tries.last_lost from None
            raise

    async def _retry(self, person: Person, tries: _Tries) -> Answer:
        """Attempts after the first, each after its pause, until an answer or `_spent`."""
        retrying = AsyncRetrying(
            stop=lambda state: self._spent(tries, _failure(state)),
            wait=lambda state: self._pause(tries, _failure(state)),
            retry=retry_if_exception_type(TransientApiError),
            sleep=self._control.sleep,
            reraise=True,
            before_sleep=lambda state: self._note_retry(person, _failure(state)),
        )
        async for attempt in retrying:
            with attempt:
                return await self._counted(person, tries, retry=True)
        raise AssertionError("unreachable: tenacity either returns or reraises")

    async def _counted(self, person: Person, tries: _Tries, *, retry: bool = False) -> Answer:
        try:
            return await self._attempt(person, retry=retry)
        except UncertainReplyError as exc:
            tries.failed += 1
            tries.lost += 1
            tries.last_lost = exc
            raise
        except TransientApiError:
            tries.failed += 1
            raise

    def _spent(self, tries: _Tries, exc: BaseException | None) -> bool:
        """Whether the allowance for another retry is used up after this failure."""
        if tries.failed > self._policy.max_retries:
            return True
        return isinstance(exc, UncertainReplyError) and tries.lost > self._policy.uncertain_retries

    def _pause(self, tries: _Tries, exc: BaseException | None) -> float:
        """Failure n waits initial * 2**(n - 1) plus up to `initial` of jitter, capped at
        `maximum`; a lost reply waits at least `uncertain_pause` (plus the same jitter); a
        10011 under `--qps auto` at most `AUTO_RATE_LIMITED_PAUSE`."""
        policy = self._policy
        jitter = random.uniform(0, policy.initial)
        pause = min(policy.maximum, policy.initial * 2.0 ** (tries.failed - 1) + jitter)
        if isinstance(exc, UncertainReplyError):
            pause = max(pause, min(policy.maximum, policy.uncertain_pause + jitter))
        elif isinstance(exc, RateLimitedError) and self._pacer.controlled:
            # The controller has cut the rate for everyone, and the pacer sends nothing until
            # the server's window has drained: a backoff on top would only idle this worker
            # (at 100/s, eight workers, a probe's six 10011s held six of them for a second).
            pause = min(pause, AUTO_RATE_LIMITED_PAUSE)
        return pause

    async def _attempt(self, person: Person, *, retry: bool = False) -> Answer:
        await self._control.admit()
        # Budget before the pacer: a call that waited for budget after taking its slot would go
        # out whenever a reply freed the budget, on top of fresh slots, and break --qps.
        await self._control.reserve()
        pacer = self._pacer
        sent_at = 0.0

        async def take_slot() -> None:
            nonlocal sent_at
            sent_at = await pacer.acquire()

        try:
            await self._control.paced(take_slot)
        except BaseException:
            self._control.settle(billed=False)
            raise
        # Counted once sent: a retry that a stop cut short was never a request.
        self.stats.api_calls += 1
        self.stats.retries += retry
        self._sending += 1
        breaker = self._breaker
        breaker.limit = max(breaker.limit, BREAKER_WAVES * self._sending)
        try:
            answer = await self._client.request(person)
        except BaseException as exc:
            self._control.settle(billed=False, possibly=isinstance(exc, UncertainReplyError))
            if isinstance(exc, ApiError):
                self._on_error(exc, sent_at)
            raise
        finally:
            self._sending -= 1
        pacer.accepted(sent_at)
        billed = answer.status is Status.OK
        self._control.settle(billed=billed)
        self.stats.codes[answer.error_code] += 1
        if billed:
            self.stats.billed += 1
        breaker.replied()
        self._control.quota_ok()
        return answer

    def _on_error(self, exc: ApiError, sent_at: float) -> None:
        if exc.error_code is not None:
            self.stats.codes[exc.error_code] += 1
            if not isinstance(exc, RateLimitedError):
                # The server replied, and not "too fast": its limit let this one through.
                self._pacer.accepted(sent_at)
        if isinstance(exc, UncertainReplyError):
            self.stats.possibly_billed += 1
            if self._breaker.lost():
                self._control.stop(self._breaker_reason(exc))
        elif not isinstance(exc, ConnectFailedError):
            self._breaker.replied()  # the server answered, if only with an error
        if isinstance(exc, RateLimitedError):
            self._pacer.slow_down(sent_at)
        elif isinstance(exc, QuotaExceededError):
            self._control.quota_hit()
        elif isinstance(exc, AccountError):
            self._control.abort(exc.error_code or 0, f"aborted by the API: {exc}")

    def _breaker_reason(self, exc: UncertainReplyError) -> str:
        timeout = self._client.timeout
        last = str(exc).removesuffix(_MAY_BE_BILLED)
        return (
            f"{self._breaker.limit} replies in a row were lost after their request was sent "
            f"(the last: {last}); each may have been billed. If the API is slower than "
            f"--timeout {timeout:g} s, raise it (e.g. --timeout {2 * timeout:g}) and rerun"
        )

    def _note_retry(self, person: Person, exc: BaseException | None) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "retrying %s / %s after: %s",
                mask_idcard(person.idcard),
                mask_mobile(person.mobile),
                exc,
            )


def _failure(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome else None


def _describe(exc: ApiError) -> str:
    """An error as a row's reason would show it: the documented reason for an API code."""
    if exc.error_code is not None:
        return f"{reason_of(exc.error_code)} ({exc.error_code})"
    return str(exc)


__all__ = [
    "DEFAULT_ENDPOINT",
    "USER_AGENT",
    "CallStats",
    "Caller",
    "JuheClient",
    "RetryPolicy",
    "decode_reply",
    "now_iso",
    "open_session",
]

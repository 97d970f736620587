"""The small value types every stage shares: a person, an API answer, a row's outcome."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    """A row's final or current status, as written in the `status` column."""

    OK = "ok"  # error_code 0: billed, scores decoded
    INVALID = "invalid"  # failed local validation; nothing sent
    REJECTED = "rejected"  # the API refused the person (281501-281503, 281505); not billed
    FAILED = "failed"  # a transient error outlived the retries; rerun to try again
    SKIPPED = "skipped"  # never sent: budget, breaker, abort or signal; rerun to send


#: Statuses that a rerun does not need to touch again.
FINAL_STATUSES = frozenset({Status.OK, Status.INVALID, Status.REJECTED})


@dataclass(frozen=True, slots=True)
class Person:
    """A validated, normalised identity: exactly what is sent to the API.

    >>> Person(realname="张三", idcard="11010119900307803X", mobile="13812345678").idcard[-1]
    'X'
    """

    realname: str
    idcard: str
    mobile: str


@dataclass(frozen=True, slots=True)
class Invalid:
    """Why a row failed local validation: the API-equivalent code and a readable reason.

    `reason` never contains the full value that was rejected (masked forms only).
    """

    error_code: int | None  # 281501 ID, 281502 name, 281503 mobile; None: not a field problem
    reason: str


@dataclass(frozen=True, slots=True)
class Answer:
    """A final answer from the API for one person (status ok or rejected).

    This is what the journal stores and what every row of that person receives.
    Scores are kept as the raw strings the API returned; bands are derived when writing.
    """

    status: Status  # Status.OK or Status.REJECTED
    error_code: int
    reason: str
    orderid: str
    range: str
    history: str
    stability: str
    queried_at: str  # ISO 8601, UTC, when the answer was received


@dataclass(frozen=True, slots=True)
class Outcome:
    """A non-final result for an identity in this run (failed or skipped), kept in memory only."""

    status: Status  # Status.FAILED or Status.SKIPPED
    error_code: int | None
    reason: str

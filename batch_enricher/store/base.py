"""What a run needs from its state, whichever store holds it: the interfaces.

Two implementations of each, chosen from `--state` (`store/__init__.py`):

| interface | local (a file path) | shared (a `postgresql://` URL) |
| --- | --- | --- |
| `Journal` | `sqlite.Journal`: one run at a time (a file lock) | `postgres.PgJournal` |
| `Session` | `local.LocalSession`: every person is this run's | `team.TeamSession`: claims |
| `Limiter` | `pacer.Pacer`, in this process | `team.SharedPacer`: one schedule for all |

Planning and the write pass read the `Journal` (synchronously: nothing else runs then); while
sending, dispatch talks to a `Session` only: it claims people before calling them, records
each final answer, paces every request with the session's `Limiter`, and never knows whether
other runs share the account.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Protocol, Self

from batch_enricher.models import Answer, Person, Status

if TYPE_CHECKING:
    from batch_enricher.autorate import RateFound
    from batch_enricher.client import CallStats
    from batch_enricher.guards import RunControl

__all__ = [
    "Claimed",
    "Journal",
    "Limiter",
    "Session",
    "SessionContext",
    "SessionSettings",
    "Store",
]


class Journal(Protocol):
    """Every final answer, keyed by a secret HMAC of the person (never the person itself)."""

    @property
    def location(self) -> str:
        """Where it is, fit for a message (a path, or a URL with its password masked)."""
        ...

    def key(self, person: Person) -> bytes:
        """The person's key: HMAC-SHA256 of `idcard|realname|mobile` under the secret."""
        ...

    def get_many(
        self, keys: Iterable[bytes], *, newer_than: float | None = None
    ) -> dict[bytes, Answer]:
        """Stored answers of those keys that have one (received at or after `newer_than`)."""
        ...

    def get(self, key: bytes, *, newer_than: float | None = None) -> Answer | None:
        """The stored answer for one key, if any."""
        ...

    def put(self, key: bytes, answer: Answer) -> None:
        """Store (or replace) one final answer, committed when this returns."""
        ...

    def put_many(self, items: Iterable[tuple[bytes, Answer]]) -> None:
        """Store (or replace) several final answers in one transaction."""
        ...

    def count(self) -> int:
        """How many people have a stored answer."""
        ...

    def purge(self, older_than: float) -> int:
        """Delete answers received before `older_than` (epoch s); returns how many went."""
        ...

    def close(self) -> None:
        """Release the journal (safe to call twice)."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class Limiter(Protocol):
    """Send slots: at most the account's rate in any one-second window, slower on 10011."""

    @property
    def controlled(self) -> bool:
        """Whether an auto-rate controller (`--qps auto`) sets the rate."""
        ...

    async def acquire(self) -> float:
        """Wait for the next send slot; returns when it was granted (the event loop's clock)."""
        ...

    def accepted(self, sent_at: float) -> None:
        """The request sent at `sent_at` was answered without a 10011."""
        ...

    def slow_down(self, sent_at: float | None = None) -> None:
        """The server answered 10011 (too fast) to the request sent at `sent_at`: slow down."""
        ...

    def backlog(self) -> float:
        """Seconds of send slots the waiting senders will fill (0 when none wait)."""
        ...


@dataclass
class Claimed:
    """What `Session.claim` found for a batch of keys."""

    mine: list[bytes] = field(default_factory=list)  # claimed: this run calls them now
    answered: dict[bytes, Status] = field(default_factory=dict)  # answered meanwhile elsewhere
    held: list[bytes] = field(default_factory=list)  # another live run is asking right now


class Session(Protocol):
    """A run's sending phase on its store: claims, answers, pacing, shared account state."""

    @property
    def pacer(self) -> Limiter:
        """Where every request takes its send slot."""
        ...

    @property
    def exclusive(self) -> bool:
        """True when no other run can share this store (claims then always succeed)."""
        ...

    @property
    def wait_for_others(self) -> float:
        """Seconds to wait for a person another run is asking about before giving up."""
        ...

    @property
    def commits(self) -> int:
        """Journal transactions this session made (for the debug log and the benchmark)."""
        ...

    def found(self) -> RateFound | None:
        """The rate `--qps auto` found (None with a fixed --qps)."""
        ...

    async def claim(self, keys: Sequence[bytes]) -> Claimed:
        """Claim people before calling them; those another run holds or answered are not."""
        ...

    async def record(self, key: bytes, answer: Answer) -> None:
        """Store a final answer (committed on return) and give up the claim on its person."""
        ...

    async def release(self, keys: Sequence[bytes]) -> None:
        """Give up claims on people this run will not answer (failed, or not sent)."""
        ...


class Store(Protocol):
    """An opened `--state`: its journal, and sessions for sending."""

    @property
    def journal(self) -> Journal:
        """The answers."""
        ...

    def session(
        self, settings: SessionSettings, control: RunControl, stats: CallStats
    ) -> SessionContext:
        """The sending phase's session; `async with store.session(...) as session:`.

        A shared store tells `control` what other runs found (quota spent, account aborted),
        tells the other runs what `control` finds, and shows `stats` in the team's status.
        """
        ...

    def close(self) -> None:
        """Close the journal and anything else opened."""
        ...


@dataclass(frozen=True)
class SessionSettings:
    """What a session needs to know about the run."""

    qps: float | Literal["auto"]
    concurrency: int
    cutoff: float | None  # --max-age: answers older than this do not count as answered
    api_key: str = ""  # only to tell, by a keyed hash, whether another run used the same key
    max_qps: float = 100.0  # --qps auto's ceiling


#: An async context manager giving a `Session` (the run's claims go when it exits).
SessionContext = AbstractAsyncContextManager[Session]

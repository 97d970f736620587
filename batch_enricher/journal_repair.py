"""Check a journal, and copy the readable answers of a damaged one into a new journal.

`check_journal` only reads (and needs no run lock: in WAL mode it reads beside a running job).
`recover_journal` takes the run lock, copies every answer it can read into a new journal bound
to the same secret, and moves the damaged database aside: paid answers are the one thing never
thrown away.

Reading a damaged table: a query fails as soon as it touches a damaged page, so answers are
read in key ranges (keys are HMACs, spread evenly over the key space), forwards until the read
fails and then backwards from the range's end until it fails again. What is left between is
cut in 16 parts and each part is read the same way, down to 1/2^32 of the key space; a range
none of whose parts yields a single answer is given up whole, so a damaged region costs a few
hundred queries, not one per possible key. Only the answers on damaged pages are lost.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import shlex
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from .errors import JournalDamagedError, JournalError, JournalMismatchError
from .journal import (
    COPY_SQL,
    create_schema,
    inspect_db,
    integrity_problem,
    resolve_path,
    run_lock,
    select_range_sql,
    storable_row,
)
from .journal_identity import (
    JOURNAL_ID_BYTES,
    DbFacts,
    DbKind,
    SecretFile,
    binding_problem,
    read_secret,
    set_aside,
    sibling,
    write_secret,
)

__all__ = ["JournalReport", "Recovery", "check_journal", "recover_journal"]

_KEY_BYTES: Final = 32
_KEY_SPACE: Final = 1 << (8 * _KEY_BYTES)
_SPLIT: Final = 16
_MAX_DEPTH: Final = 8  # 16**8 = 2**32 parts at the finest
_BATCH: Final = 500
_FILE_MODE: Final = 0o600


@dataclass(frozen=True)
class JournalReport:
    """What `check_journal` found; `ok` when the journal is whole and belongs to its secret."""

    path: Path
    exists: bool
    schema_version: int | None = None
    answers: int | None = None
    damage: str | None = None  # None: the integrity check passed
    mismatch: str | None = None  # None: journal and secret belong together
    unusable: str | None = None  # why it cannot be used at all (not a journal, too new, ...)
    fix: str | None = None  # what to run or do next when not ok
    note: str | None = None

    @property
    def ok(self) -> bool:
        """Whole, readable and bound to its own secret: a run may use it."""
        return self.exists and not (self.damage or self.mismatch or self.unusable)

    def lines(self) -> list[str]:
        """The report as aligned `label: value` lines for a terminal."""
        if not self.exists:
            rows = [("journal", f"{self.path} does not exist")]
        else:
            version = {None: "unreadable", 0: "none (an empty database)"}.get(
                self.schema_version, f"version {self.schema_version}"
            )
            answers = "unreadable" if self.answers is None else f"{self.answers}"
            rows = [
                ("journal", str(self.path)),
                ("integrity", "ok" if self.damage is None else f"damaged: {self.damage}"),
                ("answers", answers),
                ("schema", version),
            ]
        if self.unusable:
            rows.append(("problem", self.unusable))
        else:
            rows.append(("secret", self.mismatch or "belongs to this journal"))
        if self.note:
            rows.append(("note", self.note))
        if self.fix and not self.ok:
            rows.append(("next", self.fix))
        width = max(len(label) for label, _ in rows) + 1
        return [f"{label + ':':<{width}} {value}" for label, value in rows]


@dataclass(frozen=True)
class Recovery:
    """What `recover_journal` did."""

    journal: Path  # the new journal (where the damaged one was)
    damaged: Path  # where the damaged one now is, with a copy of the secret
    saved: int
    unreadable: int | None  # None: the damaged journal does not say how many it held

    def message(self) -> str:
        """One line for the user: how many answers were saved and lost, and where things are."""
        if self.unreadable == 0:
            lost = "every answer could be read"
        elif self.unreadable is None:
            lost = "some could not be read (how many is unknown); those people are asked again"
        else:
            lost = (
                f"{self.unreadable} could not be read: those people are asked (and paid for) "
                "again by the next run"
            )
        return (
            f"saved {self.saved} answer(s) into a new journal at {self.journal}; {lost}. "
            f"The damaged journal is kept as {self.damaged}"
        )


def check_journal(path: Path) -> JournalReport:
    """Check the journal at `path` without changing it: integrity, answers, schema, secret."""
    path = resolve_path(path)
    recover = f"run `batch-enricher journal recover --state {shlex.quote(str(path))}`"
    try:
        stored = read_secret(sibling(path, ".secret"))
    except JournalError as exc:
        return JournalReport(path, path.exists(), unusable=str(exc))
    if not path.exists():
        problem = binding_problem(path, stored, DbFacts(DbKind.MISSING))
        if problem is None:
            return JournalReport(path, False, note="a run creates a new journal here")
        return JournalReport(path, False, mismatch=problem.what, fix=_start_over(problem.fix))
    report = JournalReport(path, True)
    try:
        with _read_only(path) as conn:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            report = replace(report, schema_version=int(version))
            facts = inspect_db(conn, path)
            if facts.kind in (DbKind.V1, DbKind.V2):
                (answers,) = conn.execute("SELECT COUNT(*) FROM answers").fetchone()
                facts = replace(facts, answers=int(answers))
                report = replace(report, answers=int(answers))
            elif facts.kind is DbKind.EMPTY:
                report = replace(report, answers=0)
            damage = integrity_problem(conn, "integrity_check")
            if damage is not None:
                report = replace(report, damage=damage, fix=recover)
    except sqlite3.Error as exc:
        return replace(report, damage=str(exc) or type(exc).__name__, fix=recover)
    except JournalError as exc:
        return replace(report, unusable=str(exc))
    problem = binding_problem(path, stored, facts)
    if problem is not None:
        return replace(report, mismatch=problem.what, fix=_start_over(problem.fix))
    if facts.kind is DbKind.V1:
        return replace(report, note="the next run binds it to its secret (schema version 2)")
    if stored is None:
        return replace(report, note="no secret yet: the next run creates one")
    return report


def recover_journal(path: Path, *, lock_timeout: float = 5.0) -> Recovery:
    """Copy every readable answer of the journal at `path` into a new journal there.

    The new journal is bound to the same secret (its keys stay valid); the damaged database is
    renamed beside it, never deleted. Raises JournalError when there is nothing to recover
    from (no journal, no secret, another journal's secret, nothing readable).
    """
    path = resolve_path(path)
    old_umask = os.umask(0o077)
    try:
        with run_lock(path, lock_timeout):
            return _recover(path)
    finally:
        os.umask(old_umask)


def _recover(path: Path) -> Recovery:
    secret_path = sibling(path, ".secret")
    if not path.exists():
        raise JournalError(f"there is no journal at {path}: nothing to recover")
    stored = read_secret(secret_path)
    if stored is None:
        raise JournalError(
            f"cannot recover {path}: its secret {secret_path} is missing, and without it no "
            "answer can be matched to anyone; restore the secret first"
        )
    temp = sibling(path, f".recovering-{secrets.token_hex(4)}")
    try:
        bound, saved, total = _copy_readable(path, stored, temp)
    except BaseException:
        for leftover in (temp, sibling(temp, "-journal")):
            with contextlib.suppress(OSError):
                leftover.unlink()
        raise
    aside: Path | None = None
    try:
        aside = set_aside(path, "damaged", keep_secret=True)
        os.replace(temp, path)
    except (OSError, JournalError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise JournalError(
            f"the answers were copied to {temp} but it could not take the journal's place "
            f"({detail}); the damaged journal is {aside or path}. Move {temp} to {path} by hand"
        ) from None
    if bound != stored:
        write_secret(secret_path, bound)
    unreadable = None if total is None or total < saved else total - saved
    return Recovery(path, aside or path, saved, unreadable)


def _copy_readable(
    path: Path, stored: SecretFile, temp: Path
) -> tuple[SecretFile, int, int | None]:
    """Copy what can be read into a new database at `temp`: (its secret, saved, total held)."""
    try:
        with _read_only(path) as src:
            try:
                facts = inspect_db(src, path)
            except sqlite3.DatabaseError as exc:
                raise JournalDamagedError(_unreadable(path, str(exc))) from None
            if facts.kind is DbKind.EMPTY:
                raise JournalError(
                    f"the journal {path} is empty: nothing to recover. Run with --new-journal "
                    "to set it and its secret aside and start a new journal"
                )
            problem = binding_problem(path, stored, facts)
            if problem is not None and facts.kind is DbKind.V2:
                raise JournalMismatchError(f"cannot recover: {problem.what}. {problem.fix}")
            journal_id = (
                stored.journal_id or facts.journal_id or secrets.token_bytes(JOURNAL_ID_BYTES)
            )
            bound = SecretFile(stored.secret, journal_id)
            fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
            os.close(fd)
            dest = sqlite3.connect(temp, isolation_level=None)
            try:
                create_schema(dest, bound)
                salvage = _Salvage(src, dest)
                salvage.run()
                (saved,) = dest.execute("SELECT COUNT(*) FROM answers").fetchone()
            finally:
                dest.close()
            total = salvage.total()
    except sqlite3.Error as exc:
        raise JournalError(f"cannot recover the journal {path}: {exc}") from None
    except OSError as exc:
        raise JournalError(f"cannot recover the journal {path}: {exc.strerror}") from None
    if saved == 0 and total != 0:
        raise JournalDamagedError(_unreadable(path, "no answer could be read"))
    return bound, int(saved), total


class _Salvage:
    """Copy every readable, well-formed answer from `src` to `dest`, range by range."""

    def __init__(self, src: sqlite3.Connection, dest: sqlite3.Connection) -> None:
        self._src = src
        self._dest = dest
        self.given_up = 0  # ranges nothing more could be read from

    def run(self) -> None:
        """Copy all that can be read, in one transaction: one sync to disk, not one a batch."""
        self._dest.execute("BEGIN IMMEDIATE")
        try:
            start, end = self._try(0, _KEY_SPACE)
            self._descend(start, end, 1)
        except BaseException:
            self._dest.execute("ROLLBACK")
            raise
        self._dest.execute("COMMIT")

    def total(self) -> int | None:
        """How many answers the damaged journal held, if it can still say."""
        try:
            # COUNT(*) reads the smaller received_at index, which names every row's key.
            (n,) = self._src.execute("SELECT COUNT(*) FROM answers").fetchone()
        except sqlite3.DatabaseError:
            return None if self.given_up else 0
        return int(n)

    def _descend(self, lo: int, hi: int, depth: int) -> None:
        """Read what can be read of [lo, hi), a range that could not be read in one go."""
        if lo >= hi:
            return
        if depth > _MAX_DEPTH or hi - lo < _SPLIT:
            self.given_up += 1
            return
        step = (hi - lo) // _SPLIT
        bounds = [lo + i * step for i in range(_SPLIT)] + [hi]
        unread = [self._try(a, b) for a, b in itertools.pairwise(bounds)]
        if all(
            (start, end) == (a, b)
            for (start, end), (a, b) in zip(unread, itertools.pairwise(bounds), strict=True)
        ):
            self.given_up += 1  # nothing here can be read: do not grind through every part
            return
        for start, end in unread:
            self._descend(start, end, depth + 1)

    def _try(self, lo: int, hi: int) -> tuple[int, int]:
        """Copy the answers in [lo, hi): forwards until a damaged page stops the read, then
        backwards from `hi` until one stops it again. Returns the part left unread (empty
        when the whole range was read)."""
        start = self._read(lo, hi, descending=False)
        if start is None:
            return hi, hi
        end = self._read(start, hi, descending=True)
        if end is None:  # read backwards to `start`: the forward read only tripped past `hi`
            return hi, hi
        return start, end

    def _read(self, lo: int, hi: int, *, descending: bool) -> int | None:
        """Copy the answers in [lo, hi) in key order (or reversed); None if all were read, else
        the bound of what was: every key below it (at or above it, reversed) was copied.

        Read in pages of at most `_BATCH` rows (`LIMIT`): a query that reaches a damaged page
        fails and returns none of its rows (sqlite3 steps to the next row before it hands over
        the current one), so a failed page is asked again for half as many rows, down to one,
        and the rows right up to the damage are still copied.
        """
        limit = _BATCH
        while lo < hi:
            sql, args = select_range_sql(
                _key(lo), _key(hi) if hi < _KEY_SPACE else None, descending=descending
            )
            try:
                rows = self._src.execute(f"{sql} LIMIT {limit}", args).fetchall()
            except sqlite3.DatabaseError:
                if limit == 1:
                    return hi if descending else lo
                limit //= 2
                continue
            self._keep(rows)
            if len(rows) < limit:
                return None
            last = rows[-1][0]
            if not isinstance(last, bytes) or len(last) != _KEY_BYTES:
                return hi if descending else lo  # a garbled key: no next page to ask for
            if descending:
                hi = int.from_bytes(last, "big")
            else:
                lo = int.from_bytes(last, "big") + 1
            limit = _BATCH
        return None

    def _keep(self, rows: list[tuple[Any, ...]]) -> None:
        self._dest.executemany(COPY_SQL, [row for row in map(storable_row, rows) if row])


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    # Not `mode=ro`: a read-only connection cannot clean up the -wal and -shm it creates.
    # query_only stops any write of ours; SQLite's own checkpoint on close is still allowed.
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA query_only = ON")
        yield conn
    finally:
        conn.close()


def _key(value: int) -> bytes:
    return value.to_bytes(_KEY_BYTES, "big")


def _unreadable(path: Path, detail: str) -> str:
    return (
        f"nothing can be read from the journal {path} ({detail}); it is left as it is. Run "
        "with --new-journal to set it and its secret aside and start an empty journal "
        "(everyone is then paid for again)"
    )


def _start_over(fix: str) -> str:
    return f"{fix}, or run `enrich --new-journal` to set both aside and start an empty journal"

"""The run's bookkeeping of distinct people, kept off the Python heap in a scratch SQLite database.

Planning must remember every distinct person it has seen (to dedupe), which of them to call,
and how many rows each stands for; dispatch and the write pass must know whom this run answered
and who failed. Held in Python objects that cost ~0.7 KB a person (4 GB at 5M people); here it is
~150 bytes a person on disk and a bounded page cache in memory.

Where it lives, and what it holds:
- `sqlite3.connect("")` opens SQLite's *private temporary database*. SQLite creates its file only
  once the page cache overflows, in the first writable folder of `$SQLITE_TMPDIR`, `$TMPDIR`,
  `/var/tmp`, `/usr/tmp`, `/tmp`; it creates it `O_EXCL | O_NOFOLLOW`, mode 0600, and on Unix
  unlinks it right after opening (`unixOpen`: `if( isDelete ) osUnlink(zName)`). No name is
  left on disk while the run lasts, and nothing at all after it ends, however it ends (kill -9
  included): the space goes when the last descriptor closes.
- Only HMAC keys (the journal's) are stored in the clear. The people to call must be kept to be
  sent later; they are *sealed* first: XORed with a SHAKE-256 keystream under a random key that
  exists only in this process's memory, the person's own (unique) HMAC key as the nonce. A copy
  of the freed disk blocks, or of the file through `/proc`, therefore shows no name, ID number
  or mobile.

Rows go in and out in batches of ≤ 500, like the journal's look-ups, so the per-person cost
stays a few microseconds.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Collection, Iterable, Iterator
from itertools import islice
from types import TracebackType
from typing import Final, Self

from batch_enricher.errors import ScratchError
from batch_enricher.models import Outcome, Person, Status
from batch_enricher.sealing import Sealer

__all__ = ["Spill"]

_BATCH: Final = 500  # rows per statement or look-up (SQLite's old limit of 999 parameters)
#: The page cache of the scratch database, KiB: the memory it may use, whatever the number of
#: people. Bigger is faster at millions of people (fewer reads back from the file).
_CACHE_KIB: Final = 16 * 1024

_SCHEMA: Final = """
CREATE TABLE people (
    id       INTEGER PRIMARY KEY,   -- order of first appearance: the order calls are made in
    key      BLOB NOT NULL UNIQUE,  -- the journal's HMAC key
    reused   TEXT,                  -- status of the journal answer that serves it; NULL: to call
    rows     INTEGER NOT NULL,      -- rows the person stands for (people to call)
    sealed   BLOB,                  -- the person to call, sealed (see the module docstring)
    answered INTEGER NOT NULL DEFAULT 0,  -- 1: this run put the answer in the journal
    outcome  TEXT,                  -- this run's non-final status (failed), if any
    error_code INTEGER,
    reason   TEXT
);
"""


class Spill:
    """A private scratch store for one run; `with Spill() as spill: ...` (closed, it is gone)."""

    def __init__(self, *, cache_kib: int = _CACHE_KIB) -> None:
        self._seal = Sealer()
        self._marks: list[tuple[int, str | None, int | None, str | None, bytes]] = []
        self._marked = 0  # marks ever made: none means the write pass needs no look-up here
        with _errors("open"):
            # Autocommit; writes are grouped by explicit BEGIN ... COMMIT per batch.
            self._conn: sqlite3.Connection | None = sqlite3.connect("", isolation_level=None)
            # Nothing here must survive a crash, so no rollback journal (one temp file fewer).
            self._conn.execute("PRAGMA journal_mode=OFF")
            self._conn.execute("PRAGMA synchronous=OFF")
            self._conn.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
            self._conn.execute("PRAGMA temp_store=FILE")  # sorts and the like: not in RAM either
            self._conn.executescript(_SCHEMA)

    # -- planning --------------------------------------------------------------------------

    def known(self, keys: Collection[bytes]) -> dict[bytes, Status | None]:
        """Those of `keys` stored already: the status they were reused with, None if to call."""
        found: dict[bytes, Status | None] = {}
        for chunk in _chunks(keys):
            marks = ", ".join("?" * len(chunk))
            sql = f"SELECT key, reused FROM people WHERE key IN ({marks})"
            with _errors("read"):
                rows = self._open().execute(sql, chunk).fetchall()
            for key, reused in rows:
                found[bytes(key)] = None if reused is None else Status(reused)
        return found

    def add(self, people: Iterable[tuple[bytes, Status | None, Person | None, int]]) -> None:
        """Store new people, in the order given: (key, reused status or None, person, rows).

        A person to call (status None) comes with the `Person` to send and their rows so far;
        one answered from the journal needs neither.
        """
        rows = (
            (key, None if status is None else status.value, self._sealed(key, person), count)
            for key, status, person, count in people
        )
        self._write("INSERT INTO people (key, reused, sealed, rows) VALUES (?, ?, ?, ?)", rows)

    def add_rows(self, counts: Iterable[tuple[int, bytes]]) -> None:
        """Add (rows, key) to the row counts of people already stored."""
        self._write("UPDATE people SET rows = rows + ? WHERE key = ?", counts)

    # -- dispatch --------------------------------------------------------------------------

    def to_call(self) -> Iterator[tuple[bytes, Person, int]]:
        """(key, person, rows) of everyone to call, in order of first appearance, read in chunks.

        Safe to share between asyncio tasks: it never awaits, so they take turns.
        """
        last = 0
        sql = (
            "SELECT id, key, sealed, rows FROM people "
            "WHERE id > ? AND reused IS NULL ORDER BY id LIMIT ?"
        )
        while True:
            with _errors("read"):
                chunk = self._open().execute(sql, (last, _BATCH)).fetchall()
            if not chunk:
                return
            for _id, key, sealed, rows in chunk:
                yield bytes(key), self._unsealed(bytes(key), bytes(sealed)), int(rows)
            last = chunk[-1][0]

    def answered(self, key: bytes) -> None:
        """Note that this run put `key`'s answer in the journal."""
        self._mark((1, None, None, None, key))

    def failed(self, key: bytes, outcome: Outcome) -> None:
        """Note `key`'s non-final outcome in this run (it stays out of the journal)."""
        self._mark((0, outcome.status.value, outcome.error_code, outcome.reason, key))

    # -- writing ---------------------------------------------------------------------------

    def this_run(self, keys: Collection[bytes]) -> tuple[set[bytes], dict[bytes, Outcome]]:
        """Of `keys`: those this run answered, and the outcomes of those it failed."""
        answered: set[bytes] = set()
        outcomes: dict[bytes, Outcome] = {}
        if not self._marked:
            return answered, outcomes
        self._flush_marks()
        for chunk in _chunks(keys):
            marks = ", ".join("?" * len(chunk))
            sql = (
                "SELECT key, answered, outcome, error_code, reason FROM people "
                f"WHERE key IN ({marks}) AND (answered OR outcome IS NOT NULL)"
            )
            with _errors("read"):
                rows = self._open().execute(sql, chunk).fetchall()
            for key, done, status, error_code, reason in rows:
                if done:
                    answered.add(bytes(key))
                else:
                    outcomes[bytes(key)] = Outcome(Status(status), error_code, reason)
        return answered, outcomes

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the store; SQLite frees its (already unlinked) file."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ScratchError("the run's scratch store is closed")
        return self._conn

    def _write(self, sql: str, rows: Iterable[tuple[object, ...]]) -> None:
        conn = self._open()
        it = iter(rows)
        while chunk := list(islice(it, _BATCH)):
            with _errors("write"):
                conn.execute("BEGIN")
                conn.executemany(sql, chunk)
                conn.execute("COMMIT")

    def _mark(self, mark: tuple[int, str | None, int | None, str | None, bytes]) -> None:
        self._marks.append(mark)
        self._marked += 1
        if len(self._marks) >= _BATCH:
            self._flush_marks()

    def _flush_marks(self) -> None:
        marks, self._marks = self._marks, []
        self._write(
            "UPDATE people SET answered = ?, outcome = ?, error_code = ?, reason = ? WHERE key = ?",
            marks,
        )

    def _sealed(self, key: bytes, person: Person | None) -> bytes | None:
        if person is None:
            return None
        # ID and mobile are normalised digits (and X): the name, last, may hold anything.
        plain = f"{person.idcard}\0{person.mobile}\0{person.realname}".encode()
        # The HMAC key is unique per row: it is the nonce.
        return self._seal(key, plain)

    def _unsealed(self, key: bytes, sealed: bytes) -> Person:
        plain = self._seal(key, sealed).decode()
        idcard, mobile, realname = plain.split("\0", 2)
        return Person(realname=realname, idcard=idcard, mobile=mobile)


def _chunks(keys: Collection[bytes]) -> Iterator[list[bytes]]:
    it = iter(keys)
    while chunk := list(islice(it, _BATCH)):
        yield chunk


@contextlib.contextmanager
def _errors(action: str) -> Iterator[None]:
    """sqlite3 errors as one line that says where the space is and what to do (no traceback)."""
    try:
        yield
    except sqlite3.Error as exc:
        detail = str(exc) or type(exc).__name__
        raise ScratchError(
            f"cannot {action} the run's scratch store ({detail}); it lives in the temporary "
            "folder ($SQLITE_TMPDIR, else $TMPDIR, else /var/tmp) and needs about 150 bytes per "
            "distinct person: free space there or point SQLITE_TMPDIR at a folder with room, "
            "then rerun (answers already paid for are in the journal)"
        ) from None

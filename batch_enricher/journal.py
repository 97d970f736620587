"""The SQLite journal: every final answer, keyed by a secret HMAC of the identity.

Every `error_code` 0 answer is billed, so the journal is both the resume point of an
interrupted run and the cross-run cache: an identity found here is never paid for again.
It must never hold a plaintext ID number, mobile or name, so rows are keyed by
HMAC-SHA256 over the normalised identity with a 32-byte secret kept beside the database
(`<journal>.secret`, mode 0600). Without that secret the keys cannot be recomputed, and a
copy of the database alone does not reveal who was queried.

Durability: WAL mode with `synchronous=NORMAL` means a committed transaction survives the
process being killed (`kill -9`, OOM); only a power cut may lose the last few commits.
`put` commits before it returns, so an answer that was paid for is on disk before the
caller moves on.

One run at a time: `Journal.open` takes an exclusive `flock` on `<journal>.lock` and
keeps it until `close`. The OS drops the lock when the process dies, so a crashed run
never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import hmac
import os
import secrets
import sqlite3
import stat
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import platformdirs

from .errors import JournalError, JournalLockedError
from .models import Answer, Person, Status

__all__ = ["SCHEMA_VERSION", "Journal", "default_state_path"]

#: The schema this code writes; `PRAGMA user_version` of a journal it created.
SCHEMA_VERSION: Final = 1

_APP: Final = "batch-enricher"
_FILENAME: Final = "journal.sqlite3"
_SECRET_BYTES: Final = 32
_FILE_MODE: Final = 0o600
_DIR_MODE: Final = 0o700
_LOCK_POLL_S: Final = 0.1
# SQLite's historical limit on bound parameters was 999; 500 keeps well clear of it.
_CHUNK: Final = 500
_STORABLE: Final = frozenset({Status.OK, Status.REJECTED})
# Answers remembered in memory once read or written. The run lock makes this connection the
# only writer, so the memo cannot go stale; it spares the writing pass of a big file with few
# people one SQL look-up and hundreds of Answer objects per chunk. Bounded (emptied when full)
# so memory does not grow with the number of people.
_MEMO_LIMIT: Final = 1 << 14

_SCHEMA: Final = """
CREATE TABLE answers (
    key         BLOB PRIMARY KEY,
    status      TEXT NOT NULL,
    error_code  INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    orderid     TEXT NOT NULL,
    range_score     TEXT NOT NULL,
    history_score   TEXT NOT NULL,
    stability_score TEXT NOT NULL,
    queried_at  TEXT NOT NULL,   -- the answer's own ISO 8601 text, returned unchanged on reuse
    received_at REAL NOT NULL    -- the same instant as epoch seconds, for --max-age and purge
) WITHOUT ROWID;
CREATE INDEX answers_received_at ON answers (received_at);
"""

_COLUMNS: Final = (
    "status, error_code, reason, orderid, range_score, history_score, stability_score, queried_at"
)
_UPSERT: Final = (
    f"INSERT OR REPLACE INTO answers (key, {_COLUMNS}, received_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def default_state_path() -> Path:
    """Where the journal lives unless `--state` says otherwise.

    `$XDG_STATE_HOME/batch-enricher/journal.sqlite3` when that variable is set (honoured on
    every platform, so cron jobs can redirect it), else the platform's user state folder,
    e.g. `~/.local/state/batch-enricher/journal.sqlite3` on Linux.
    """
    xdg = os.environ.get("XDG_STATE_HOME", "")
    # The XDG spec says a relative value is invalid and must be ignored.
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / _APP / _FILENAME
    return platformdirs.user_state_path(_APP, appauthor=False) / _FILENAME


class Journal:
    """An open journal; holds the run lock until `close()`. Use `Journal.open(path)`."""

    def __init__(self, path: Path, conn: sqlite3.Connection, secret: bytes, lock_fd: int) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = conn
        self._secret = secret
        self._lock_fd = lock_fd
        # -wal/-shm appear (or reappear) on the first write; check their modes once then.
        self._sidecars_checked = False
        self._memo: dict[bytes, tuple[float, Answer]] = {}  # key → (received_at, answer)

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, *, lock_timeout: float = 5.0) -> Journal:
        """Open or create the journal at `path`, waiting up to `lock_timeout` s for the run lock."""
        path = Path(path).expanduser()
        # Whatever the caller's umask, everything created here is private to the user.
        old_umask = os.umask(0o077)
        try:
            _make_state_dir(path.parent)
            lock_fd = _acquire_lock(path, lock_timeout)
            try:
                conn = _connect(path)
                try:
                    secret = _load_or_create_secret(path, conn)
                except BaseException:
                    conn.close()
                    raise
            except BaseException:
                _release_lock(lock_fd)
                raise
        finally:
            os.umask(old_umask)
        journal = cls(path, conn, secret, lock_fd)
        journal._tighten_sidecars()
        return journal

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    # -- keys and reads --------------------------------------------------------------------

    def key(self, person: Person) -> bytes:
        """The identity key: HMAC-SHA256 of `idcard|realname|mobile` under this journal's secret."""
        message = f"{person.idcard}|{person.realname}|{person.mobile}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    def get(self, key: bytes, *, newer_than: float | None = None) -> Answer | None:
        """The stored answer for `key`, if any (and received at or after `newer_than`, epoch s)."""
        return self.get_many([key], newer_than=newer_than).get(key)

    def get_many(
        self, keys: Iterable[bytes], *, newer_than: float | None = None
    ) -> dict[bytes, Answer]:
        """Stored answers for those keys that have one, looked up in batches of ≤ 500."""
        conn = self._open_conn()
        found: dict[bytes, Answer] = {}
        memo = self._memo
        missing: list[bytes] = []
        for key in dict.fromkeys(keys):
            hit = memo.get(key)
            if hit is None:
                missing.append(key)
            elif newer_than is None or hit[0] >= newer_than:
                found[key] = hit[1]
            # else: stored, but too old; the database holds the same row, so it is not asked
        cutoff = "" if newer_than is None else " AND received_at >= ?"
        tail: tuple[float, ...] = () if newer_than is None else (newer_than,)
        unique = iter(missing)
        while chunk := list(islice(unique, _CHUNK)):
            marks = ", ".join("?" * len(chunk))
            sql = f"SELECT key, {_COLUMNS}, received_at FROM answers WHERE key IN ({marks}){cutoff}"
            with _sqlite_errors(self._path, "read"):
                rows = conn.execute(sql, (*chunk, *tail)).fetchall()
            for row in rows:
                key, answer = bytes(row[0]), _answer(row[1:-1])
                found[key] = answer
                self._remember(key, float(row[-1]), answer)
        return found

    def count(self) -> int:
        """How many identities have a stored answer."""
        with _sqlite_errors(self._path, "read"):
            (n,) = self._open_conn().execute("SELECT COUNT(*) FROM answers").fetchone()
        return int(n)

    # -- writes ----------------------------------------------------------------------------

    def put(self, key: bytes, answer: Answer) -> None:
        """Store (or replace) one final answer; it is committed when this returns."""
        self.put_many([(key, answer)])

    def put_many(self, items: Iterable[tuple[bytes, Answer]]) -> None:
        """Store (or replace) several final answers in one transaction."""
        pairs = list(items)
        rows = [_row(key, answer) for key, answer in pairs]
        if not rows:
            return
        with self._transaction("write") as conn:
            conn.executemany(_UPSERT, rows)
        for (key, answer), row in zip(pairs, rows, strict=True):
            self._remember(bytes(key), float(row[-1]), answer)
        self._tighten_sidecars()

    def purge(self, older_than: float) -> int:
        """Delete answers received before `older_than` (epoch s); returns how many went."""
        self._memo.clear()
        with self._transaction("purge") as conn:
            deleted = conn.execute("DELETE FROM answers WHERE received_at < ?", (older_than,))
        return deleted.rowcount

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the database and release the run lock (safe to call twice)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.close()
        finally:
            _release_lock(self._lock_fd)

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

    def _remember(self, key: bytes, received_at: float, answer: Answer) -> None:
        if len(self._memo) >= _MEMO_LIMIT and key not in self._memo:
            self._memo.clear()
        self._memo[key] = (received_at, answer)

    def _open_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise JournalError(f"the journal {self._path} is closed")
        return self._conn

    @contextlib.contextmanager
    def _transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        conn = self._open_conn()
        with _sqlite_errors(self._path, action):
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _tighten_sidecars(self) -> None:
        if self._sidecars_checked:
            return
        # SQLite gives -wal/-shm the database file's mode, but check: they hold the same data.
        wal_seen = False
        for suffix in ("-wal", "-shm"):
            sidecar = self._path.with_name(self._path.name + suffix)
            if _tighten(sidecar) and suffix == "-wal":
                wal_seen = True
        self._sidecars_checked = wal_seen


def _make_state_dir(folder: Path) -> None:
    """Create the journal's folder 0700 if missing; an existing folder is left as it is."""
    if folder.is_dir():
        return
    try:
        folder.mkdir(mode=_DIR_MODE, parents=True)
        os.chmod(folder, _DIR_MODE)
    except FileExistsError:
        if not folder.is_dir():
            raise JournalError(f"cannot create the journal folder {folder}: not a folder") from None
    except OSError as exc:
        raise JournalError(f"cannot create the journal folder {folder}: {exc.strerror}") from None


def _acquire_lock(path: Path, timeout: float) -> int:
    """Take the exclusive run lock on `<path>.lock`, polling until `timeout` seconds have passed."""
    lock_path = _sibling(path, ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE)
    except OSError as exc:
        raise JournalError(f"cannot open the journal lock {lock_path}: {exc.strerror}") from None
    _tighten(lock_path)
    deadline = time.monotonic() + max(0.0, timeout)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                os.close(fd)
                raise JournalError(f"cannot lock the journal {path}: {exc.strerror}") from None
        if time.monotonic() >= deadline:
            os.close(fd)
            raise JournalLockedError(
                f"another batch-enricher run is using the journal {path}; wait for it to "
                "finish or use --state to pick another journal"
            )
        time.sleep(_LOCK_POLL_S)


def _release_lock(fd: int) -> None:
    # Closing the descriptor drops the flock; unlock first so it goes even if fd was dup'ed.
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    with contextlib.suppress(OSError):
        os.close(fd)


def _connect(path: Path) -> sqlite3.Connection:
    """Open the database, creating the schema in a new file and refusing foreign or newer ones."""
    try:
        # Pre-create the file 0600: SQLite copies the database's mode to -wal and -shm.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE))
    except OSError as exc:
        raise JournalError(f"cannot open the journal {path}: {exc.strerror}") from None
    _tighten(path)
    conn: sqlite3.Connection | None = None
    with _sqlite_errors(path, "open"):
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT) below.
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            _check_schema(conn, path)
            (mode,) = conn.execute("PRAGMA journal_mode=WAL").fetchone()
            if str(mode).lower() != "wal":
                raise JournalError(f"cannot put the journal {path} in WAL mode (got {mode})")
            # In WAL mode NORMAL loses nothing on a process crash, only on power loss.
            conn.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            conn.close()
            raise
    return conn


def _check_schema(conn: sqlite3.Connection, path: Path) -> None:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise JournalError(
            f"the journal {path} has schema version {version}, newer than this batch-enricher "
            f"understands ({SCHEMA_VERSION}); upgrade batch-enricher or use --state"
        )
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    if version == SCHEMA_VERSION and "answers" in tables:
        return
    if version != 0 or tables:
        raise JournalError(
            f"{path} is an SQLite database but not a batch-enricher journal; "
            "use --state to pick another path"
        )
    # One transaction: a journal either has the whole schema and its version, or nothing.
    conn.executescript(
        f"BEGIN IMMEDIATE; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
    )


def _load_or_create_secret(path: Path, conn: sqlite3.Connection) -> bytes:
    """Read `<path>.secret`, or create it if this journal holds nothing it would orphan."""
    secret_path = _sibling(path, ".secret")
    try:
        fd = os.open(secret_path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise JournalError(
            f"cannot read the journal secret {secret_path}: {exc.strerror}"
        ) from None
    else:
        with os.fdopen(fd, "rb") as f:
            secret = f.read()
        if len(secret) != _SECRET_BYTES:
            raise JournalError(
                f"the journal secret {secret_path} is damaged ({len(secret)} bytes, expected "
                f"{_SECRET_BYTES}); restore it, or move the journal and its secret away "
                "to start fresh"
            )
        _tighten(secret_path)
        return secret

    with _sqlite_errors(path, "read"):
        (entries,) = conn.execute("SELECT COUNT(*) FROM answers").fetchone()
    if entries:
        raise JournalError(
            f"the journal {path} holds {entries} answers but its secret {secret_path} is missing; "
            "without it those answers can never be matched again (they would be paid for twice). "
            f"Restore the secret file, or move {path} away (or use --state) "
            "to start a fresh journal"
        )
    secret = secrets.token_bytes(_SECRET_BYTES)
    try:
        # O_EXCL: if another process raced us to it, fail rather than overwrite its secret.
        fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(secret)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise JournalError(
            f"cannot create the journal secret {secret_path}: {exc.strerror}"
        ) from None
    _tighten(secret_path)
    return secret


def _tighten(path: Path) -> bool:
    """Make `path` mode 0600 if it exists with looser bits; returns whether it exists."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    if mode != _FILE_MODE:
        # Not our file (another owner): SQLite will still use it; nothing more we can do.
        with contextlib.suppress(OSError):
            os.chmod(path, _FILE_MODE)
    return True


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


@contextlib.contextmanager
def _sqlite_errors(path: Path, action: str) -> Iterator[None]:
    """Turn sqlite3 errors into a one-line JournalError (no SQL tracebacks for the user)."""
    try:
        yield
    except sqlite3.Error as exc:
        detail = str(exc) or type(exc).__name__
        raise JournalError(f"cannot {action} the journal {path}: {detail}") from None


def _epoch(queried_at: str) -> float:
    """Epoch seconds of an ISO 8601 time; a time without an offset is taken as UTC."""
    moment = datetime.fromisoformat(queried_at)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _row(key: bytes, answer: Answer) -> tuple[bytes | str | int | float, ...]:
    if answer.status not in _STORABLE:
        # A failed or skipped outcome must never become a cached "answer".
        raise ValueError(f"only final answers go in the journal, not {answer.status!r}")
    return (
        bytes(key),
        answer.status.value,
        answer.error_code,
        answer.reason,
        answer.orderid,
        answer.range,
        answer.history,
        answer.stability,
        answer.queried_at,
        _epoch(answer.queried_at),
    )


def _answer(row: tuple[Any, ...]) -> Answer:
    status, error_code, reason, orderid, range_, history, stability, queried_at = row
    return Answer(
        status=Status(status),
        error_code=int(error_code),
        reason=reason,
        orderid=orderid,
        range=range_,
        history=history,
        stability=stability,
        queried_at=queried_at,
    )

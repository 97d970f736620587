"""The SQLite journal: every final answer, keyed by a secret HMAC of the identity.

Every `error_code` 0 answer is billed, so the journal is both the resume point of an
interrupted run and the cross-run cache: an identity found here is never paid for again.
It must never hold a plaintext ID number, mobile or name, so rows are keyed by
HMAC-SHA256 over the normalised identity with a 32-byte secret kept beside the database
(`<journal>.secret`, mode 0600). Without that secret the keys cannot be recomputed, and a
copy of the database alone does not reveal who was queried.

The journal knows its secret (journal_identity.py): a journal that is missing, empty or
replaced next to its secret, or a secret that is not its own, would match nobody and pay
everyone again, so `Journal.open` refuses it before anything is sent; `new_journal=True` sets
the old pair aside (renamed, never deleted) and starts over. It also refuses a journal that
fails `PRAGMA quick_check` or cannot be written (journal_repair.py salvages a damaged one).
Paths are resolved first, so a symlink and its target share one lock and one secret.

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
import logging
import os
import shlex
import sqlite3
import stat
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import platformdirs

from ..errors import JournalDamagedError, JournalError, JournalLockedError, JournalMismatchError
from ..journal_identity import (
    DbFacts,
    DbKind,
    SecretFile,
    binding_problem,
    fingerprint,
    new_secret,
    read_secret,
    set_aside,
    sibling,
    write_secret,
)
from ..models import Answer, Person, Status

__all__ = ["SCHEMA_VERSION", "Journal", "default_state_path", "resolve_path", "run_lock"]

log = logging.getLogger("batch_enricher")

#: The schema this code writes; `PRAGMA user_version` of a journal it created. Version 1 had
#: no `meta` table; it is upgraded in place, bound to the secret found beside it.
SCHEMA_VERSION: Final = 2

_APP: Final = "batch-enricher"
_FILENAME: Final = "journal.sqlite3"
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

_ANSWERS_DDL: Final = (
    """CREATE TABLE answers (
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
) WITHOUT ROWID""",
    "CREATE INDEX answers_received_at ON answers (received_at)",
)
# Version 2: what binds the database to its secret (journal_identity.py). Never the secret.
_META_DDL: Final = "CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID"
_SET_META: Final = "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)"
_KEY_BYTES: Final = 32  # HMAC-SHA256
# The write check's row: written, then rolled back (no real key is 32 zero bytes).
_PROBE: Final = (bytes(_KEY_BYTES), "ok", 0, "", "", "", "", "", "1970-01-01T00:00:00+00:00", 0.0)

_COLUMNS: Final = (
    "status, error_code, reason, orderid, range_score, history_score, stability_score, queried_at"
)
_UPSERT: Final = (
    f"INSERT OR REPLACE INTO answers (key, {_COLUMNS}, received_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
#: Store a row made by `storable_row`, keeping the one already there (copying a journal).
COPY_SQL: Final = _UPSERT.replace("OR REPLACE", "OR IGNORE")
# Store a row made by `storable_row` unless the one already there is newer (`journal copy`).
_MERGE: Final = (
    f"INSERT INTO answers (key, {_COLUMNS}, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET status = excluded.status, "
    "error_code = excluded.error_code, reason = excluded.reason, orderid = excluded.orderid, "
    "range_score = excluded.range_score, history_score = excluded.history_score, "
    "stability_score = excluded.stability_score, queried_at = excluded.queried_at, "
    "received_at = excluded.received_at WHERE excluded.received_at > answers.received_at"
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
    def open(cls, path: Path, *, lock_timeout: float = 5.0, new_journal: bool = False) -> Journal:
        """Open or create the journal at `path` (symlinks followed), proven ready to write.

        Waits up to `lock_timeout` s for the run lock. Raises, before anything can be sent,
        `JournalMismatchError` when the journal and its secret do not belong together and
        `JournalDamagedError` when the journal fails its integrity check. `new_journal` first
        sets whatever journal and secret are there aside (renamed, never deleted) and starts
        an empty pair; a location with neither gets a new pair anyway.
        """
        typed, path = Path(path).expanduser().absolute(), resolve_path(path)
        # Whatever the caller's umask, everything created here is private to the user.
        old_umask = os.umask(0o077)
        try:
            _make_state_dir(path.parent)
            lock_fd = _acquire_lock(path, lock_timeout)
            try:
                if not new_journal:
                    _refuse_stray_secret(typed, path)
                if new_journal:
                    aside = set_aside(path, "aside")
                    if aside is not None:
                        log.warning(
                            "the journal %s and its secret were moved aside to %s; "
                            "starting a new, empty journal (everyone is paid for again)",
                            path,
                            aside,
                        )
                conn, secret = _open_bound(path)
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

    @property
    def location(self) -> str:
        """The database file, for messages."""
        return str(self._path)

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

    def merge(self, rows: Iterable[Sequence[bytes | str | int | float]]) -> None:
        """Store rows made by `storable_row` in one transaction; where this journal already
        has an answer for the person, the newer of the two is kept (`journal copy`)."""
        self._memo.clear()
        with self._transaction("write") as conn:
            conn.executemany(_MERGE, rows)

    @property
    def secret(self) -> bytes:
        """The secret the keys are made with."""
        return self._secret

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


def resolve_path(path: Path) -> Path:
    """The journal's real path: `~` expanded, symlinks followed, absolute.

    Its lock and secret are named from this path, so two runs that reach one database through
    different names (a symlink, a relative path) share one lock and one secret.
    """
    return Path(os.path.realpath(Path(path).expanduser()))


@contextlib.contextmanager
def run_lock(path: Path, timeout: float) -> Iterator[None]:
    """Hold the journal's run lock (`<path>.lock`, path already resolved) inside the block."""
    fd = _acquire_lock(path, timeout)
    try:
        yield
    finally:
        _release_lock(fd)


def _acquire_lock(path: Path, timeout: float) -> int:
    """Take the exclusive run lock on `<path>.lock`, polling until `timeout` seconds have passed."""
    lock_path = sibling(path, ".lock")
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


def _open_bound(path: Path) -> tuple[sqlite3.Connection, bytes]:
    """Connect to the journal, check it belongs to its secret, bind or create, prove writable."""
    secret_path = sibling(path, ".secret")
    stored = read_secret(secret_path)
    existed = path.exists()
    if stored is not None and not existed:
        # Refused before creating anything: an empty file here would hide what happened.
        _refuse(path, stored, DbFacts(DbKind.MISSING))
    if not existed:
        try:
            # Pre-create the file 0600: SQLite copies the database's mode to -wal and -shm.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE))
        except OSError as exc:
            raise JournalError(f"cannot create the journal {path}: {exc.strerror}") from None
    _tighten(path)
    with _open_errors(path):
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT) below.
        conn = sqlite3.connect(path, isolation_level=None)
    try:
        with _open_errors(path):
            facts = inspect_db(conn, path)
            if stored is None and facts.kind in (DbKind.V1, DbKind.V2):
                (answers,) = conn.execute("SELECT COUNT(*) FROM answers").fetchone()
                facts = replace(facts, answers=int(answers))
            _refuse(path, stored, facts)
            _quick_check(conn, path)
            (mode,) = conn.execute("PRAGMA journal_mode=WAL").fetchone()
            if str(mode).lower() != "wal":
                raise JournalError(f"cannot put the journal {path} in WAL mode (got {mode})")
            # In WAL mode NORMAL loses nothing on a process crash, only on power loss.
            conn.execute("PRAGMA synchronous=NORMAL")
            secret = _bind(conn, path, stored, facts)
            _write_check(conn)
    except BaseException:
        conn.close()
        raise
    return conn, secret


def _refuse_stray_secret(typed: Path, path: Path) -> None:
    """Earlier versions named the secret after the path as typed, a symlink included: point
    the user at it rather than start a second secret for the same database."""
    stray, secret = sibling(typed, ".secret"), sibling(path, ".secret")
    if typed != path and stray.exists() and not secret.exists():
        raise JournalMismatchError(
            f"the secret of the journal {path} is at {stray}, named after the link {typed}; "
            f"nothing was sent. Move it to {secret} (so every path to this journal shares it), "
            "then rerun"
        )


def _refuse(path: Path, stored: SecretFile | None, facts: DbFacts) -> None:
    problem = binding_problem(path, stored, facts)
    if problem is not None:
        raise JournalMismatchError(problem.message())


def inspect_db(conn: sqlite3.Connection, path: Path) -> DbFacts:
    """What the database holds: nothing yet, a version-1 or a version-2 journal (with its
    fingerprint and id); a newer or foreign database is a JournalError."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise JournalError(
            f"the journal {path} has schema version {version}, newer than this batch-enricher "
            f"understands ({SCHEMA_VERSION}); upgrade batch-enricher or use --state"
        )
    names = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    if version == 0 and not names:
        return DbFacts(DbKind.EMPTY)
    if version == 1 and "answers" in names and "meta" not in names:
        return DbFacts(DbKind.V1)
    if version == SCHEMA_VERSION and {"answers", "meta"} <= names:
        meta = {str(name): value for name, value in conn.execute("SELECT name, value FROM meta")}
        return DbFacts(
            DbKind.V2,
            fingerprint=_blob(meta.get("fingerprint")),
            journal_id=_blob(meta.get("journal_id")),
        )
    raise JournalError(
        f"{path} is an SQLite database but not a batch-enricher journal; "
        "use --state to pick another path"
    )


def create_schema(conn: sqlite3.Connection, secret: SecretFile) -> None:
    """Give an empty database the whole schema, bound to `secret`, in one transaction."""
    _write_identity(conn, secret, (*_ANSWERS_DDL, _META_DDL))


def _bind(conn: sqlite3.Connection, path: Path, stored: SecretFile | None, facts: DbFacts) -> bytes:
    """Make the database and the secret file name each other; returns the secret.

    The database is written first: a crash before the secret file follows leaves a journal
    whose fingerprint names its secret, which the next open completes (or, with no answers
    yet, rebinds), never a secret beside an empty database (which would be refused).
    """
    secret_path = sibling(path, ".secret")
    if stored is None:  # a new journal, or one with no answers whose secret is gone
        fresh = new_secret()
        ddl = {
            DbKind.MISSING: (*_ANSWERS_DDL, _META_DDL),
            DbKind.EMPTY: (*_ANSWERS_DDL, _META_DDL),
            DbKind.V1: (_META_DDL,),
            DbKind.V2: (),
        }[facts.kind]
        _write_identity(conn, fresh, ddl)
        write_secret(secret_path, fresh)
        return fresh.secret
    if facts.kind is DbKind.V1:  # binding_problem let it through: its secret has no id yet
        bound = SecretFile(stored.secret, new_secret().journal_id)
        _write_identity(conn, bound, (_META_DDL,))
        write_secret(secret_path, bound)
        log.info("upgraded the journal %s to schema version %d", path, SCHEMA_VERSION)
        return stored.secret
    if stored.journal_id is None and facts.journal_id is not None:
        # The fingerprint matched: an upgrade cut short, or a secret restored from before it.
        write_secret(secret_path, SecretFile(stored.secret, facts.journal_id))
    return stored.secret


def _write_identity(conn: sqlite3.Connection, secret: SecretFile, ddl: Sequence[str]) -> None:
    # One transaction: a journal has its schema, fingerprint, id and version, or none of them.
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in ddl:
            conn.execute(statement)
        conn.executemany(
            _SET_META,
            [("fingerprint", fingerprint(secret.secret)), ("journal_id", secret.journal_id)],
        )
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        _rollback(conn)
        raise
    conn.execute("COMMIT")


def _quick_check(conn: sqlite3.Connection, path: Path) -> None:
    problem = integrity_problem(conn, "quick_check")
    if problem is not None:
        raise JournalDamagedError(damaged_message(path, problem))


def integrity_problem(conn: sqlite3.Connection, pragma: str = "quick_check") -> str | None:
    """The first problem `PRAGMA quick_check` (or `integrity_check`) finds, or None if ok."""
    (first,) = conn.execute(f"PRAGMA {pragma}(1)").fetchone()
    if first == "ok":
        return None
    text = " ".join(str(first).replace("*** in database main ***", "").split())
    return text[:160] or "integrity check failed"


def damaged_message(path: Path, detail: str) -> str:
    """The one line for a journal that fails its integrity check: what to run next."""
    return (
        f"the journal {path} is damaged ({detail}); nothing was sent. Run `batch-enricher "
        f"journal recover --state {shlex.quote(str(path))}` to copy every readable answer into "
        "a new journal (the damaged one is kept), then rerun: only the answers it could not "
        "read are asked again"
    )


def _write_check(conn: sqlite3.Connection) -> None:
    """Prove the journal takes a write before anything is paid for, then undo it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(_UPSERT, _PROBE)
        conn.execute(_SET_META, ("write_check", b"\0"))
    finally:
        _rollback(conn)


def _rollback(conn: sqlite3.Connection) -> None:
    # SQLite may already have rolled back on its own (I/O errors, a full disk): then a second
    # ROLLBACK would fail and hide the error that matters.
    if conn.in_transaction:
        conn.execute("ROLLBACK")


# The error codes (sqlite3's primary result codes) that decide which message a user sees.
_SQLITE_PERM, _SQLITE_READONLY, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_NOTADB = 3, 8, 11, 13, 26


@contextlib.contextmanager
def _open_errors(path: Path) -> Iterator[None]:
    """sqlite3 errors while opening → one line that says nothing was sent and what to do."""
    try:
        yield
    except sqlite3.Error as exc:
        detail = str(exc) or type(exc).__name__
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code == _SQLITE_CORRUPT:
            raise JournalDamagedError(damaged_message(path, detail)) from None
        if code in (_SQLITE_PERM, _SQLITE_READONLY, _SQLITE_FULL):
            raise JournalError(
                f"the journal {path} cannot be written ({detail}); nothing was sent. Make it "
                f"and its folder {path.parent} writable by this user (or free disk space), or "
                "use --state to pick another journal"
            ) from None
        if code == _SQLITE_NOTADB:
            raise JournalError(
                f"cannot open the journal {path}: {detail}; nothing was sent. Use --state to "
                "pick another path (if it was your journal, it is damaged beyond repair: "
                "--new-journal sets it aside and starts an empty one)"
            ) from None
        raise JournalError(f"cannot open the journal {path}: {detail}; nothing was sent") from None


def _blob(value: object) -> bytes | None:
    return bytes(value) if isinstance(value, bytes | bytearray | memoryview) else None


def _tighten(path: Path) -> bool:
    """Take group and other bits off `path` if it exists; returns whether it exists.

    Only ever takes bits away: a journal its owner made read-only stays read-only (and is
    refused by the write check), rather than silently made writable again.
    """
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    if mode & ~_FILE_MODE:
        # Not our file (another owner): SQLite will still use it; nothing more we can do.
        with contextlib.suppress(OSError):
            os.chmod(path, mode & _FILE_MODE)
    return True


@contextlib.contextmanager
def _sqlite_errors(path: Path, action: str) -> Iterator[None]:
    """Turn sqlite3 errors into a one-line JournalError (no SQL tracebacks for the user)."""
    try:
        yield
    except sqlite3.Error as exc:
        detail = str(exc) or type(exc).__name__
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF == _SQLITE_CORRUPT:
            raise JournalDamagedError(
                f"cannot {action} the journal {path}: {detail}; the journal is damaged: run "
                f"`batch-enricher journal recover --state {shlex.quote(str(path))}` to copy "
                "every readable answer into a new journal, then rerun"
            ) from None
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


def select_range_sql(
    lo: bytes, hi: bytes | None, *, descending: bool = False
) -> tuple[str, tuple[bytes, ...]]:
    """SQL and parameters for the stored rows with `lo <= key < hi` (no upper bound when `hi`
    is None), in key order (or reversed), as `storable_row` takes them."""
    order = " ORDER BY key DESC" if descending else " ORDER BY key"
    sql = f"SELECT key, {_COLUMNS} FROM answers WHERE key >= ?"
    if hi is None:
        return sql + order, (lo,)
    return f"{sql} AND key < ?{order}", (lo, hi)


def storable_row(raw: Sequence[Any]) -> tuple[bytes | str | int | float, ...] | None:
    """A row read by `select_range_sql`, checked and ready for `COPY_SQL`; None if it is not a
    well-formed answer (a damaged page can read back as garbage rather than fail)."""
    key, status, error_code, *texts = raw
    if not isinstance(key, bytes) or len(key) != _KEY_BYTES or not isinstance(error_code, int):
        return None
    if not isinstance(status, str) or not all(isinstance(text, str) for text in texts):
        return None
    try:
        return _row(key, _answer((status, error_code, *texts)))
    except (ValueError, TypeError):
        return None


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

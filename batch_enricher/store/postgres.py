"""The team journal: the same answers as the SQLite journal, in a PostgreSQL database.

`--state postgresql://user@host:port/db` (libpq's URL, given to libpq as it is: its environment
variables, `~/.pgpass`, `sslmode` and the other parameters work as libpq documents them). The
driver is psycopg 3, an optional extra: `pip install 'batch-enricher[postgres]'`.

Schema: tables prefixed `be_`, in whatever schema the connection's `search_path` picks (a
dedicated database or schema is best). `be_schema_version` says which version the tables are;
the first run on an empty database creates them, a run of a newer batch-enricher upgrades them
in place (`MIGRATIONS`, under an advisory lock so runs starting together do it once). When the
version is current a run issues no DDL at all, so a role that may only read and write these
tables suffices (README, Team).

The secret: keys are HMACs, as in the SQLite journal, under a secret that must never be in the
database (an ID number has too little entropy: whoever holds both could test guesses). It is a
file every member keeps (`--secret-file`, 0600); the database keeps only its fingerprint
(journal_identity.py). On a new database the first run creates the file if it is missing, with
`link(2)` so that runs starting together agree on one (the losers read the winner's). A run
whose secret does not match refuses before sending anything.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from itertools import islice
from pathlib import Path
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar

from batch_enricher.errors import ConfigError, JournalError, JournalMismatchError
from batch_enricher.journal_identity import (
    SecretFile,
    fingerprint,
    new_secret,
    read_secret,
    sibling,
)
from batch_enricher.models import Answer, Person, Status
from batch_enricher.store.url import TeamUrl, mask_urls

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "ANSWER_COLUMNS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "PgJournal",
    "bind_secret",
    "connect",
    "default_secret_path",
    "ensure_schema",
    "pg_errors",
    "psycopg_module",
    "schema_version",
]

log = logging.getLogger("batch_enricher")
T = TypeVar("T")

#: What `pip` needs to talk to PostgreSQL; said in the message when it is missing.
INSTALL_HINT: Final = "pip install 'batch-enricher[postgres]'"
_APPLICATION: Final = "batch-enricher"
#: pg_advisory_xact_lock key for creating and upgrading the schema (any constant will do).
_SCHEMA_LOCK: Final = 0x62652D736368656D  # "be-schem"
_CHUNK: Final = 500
_DIR_MODE: Final = 0o700
_FILE_MODE: Final = 0o600

ANSWER_COLUMNS: Final = (
    "status, error_code, reason, orderid, range_score, history_score, stability_score, queried_at"
)

#: The schema, version by version: a new database gets every step, an older one the missing
#: steps, each version in one transaction. Never edit a step once released: add one.
MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    1: (
        "CREATE TABLE be_schema_version (version integer NOT NULL)",
        "INSERT INTO be_schema_version (version) VALUES (0)",
        # What binds the database to its secret: its fingerprint and a random id. Never the
        # secret itself.
        "CREATE TABLE be_meta (name text PRIMARY KEY, value bytea NOT NULL)",
        """CREATE TABLE be_answers (
            key             bytea PRIMARY KEY,
            status          text NOT NULL,
            error_code      integer NOT NULL,
            reason          text NOT NULL,
            orderid         text NOT NULL,
            range_score     text NOT NULL,
            history_score   text NOT NULL,
            stability_score text NOT NULL,
            queried_at      text NOT NULL,
            received_at     double precision NOT NULL
        )""",
        "CREATE INDEX be_answers_received_at ON be_answers (received_at)",
    ),
    # Version 2: what runs sharing the database coordinate through (store/team.py).
    2: (
        # Live runs: who they are, their --qps (the lowest live one is the account's rate),
        # when the server last heard from them, what they have sent.
        """CREATE TABLE be_runs (
            id        text PRIMARY KEY,
            host      text NOT NULL,
            username  text NOT NULL,
            pid       integer NOT NULL,
            started   timestamptz NOT NULL DEFAULT now(),
            last_seen timestamptz NOT NULL DEFAULT now(),
            lease     double precision NOT NULL,
            qps       double precision NOT NULL,
            rate      double precision NOT NULL DEFAULT 0,
            calls     bigint NOT NULL DEFAULT 0,
            billed    bigint NOT NULL DEFAULT 0
        )""",
        # Who is asking about whom right now; a claim outlives its run's last heartbeat by the
        # run's lease, then anyone may take it.
        """CREATE TABLE be_claims (
            key     bytea PRIMARY KEY,
            run_id  text NOT NULL,
            expires timestamptz NOT NULL
        )""",
        "CREATE INDEX be_claims_run ON be_claims (run_id)",
        # The account, one row: the shared send schedule and what every run must know.
        """CREATE TABLE be_account (
            id           integer PRIMARY KEY CHECK (id = 1),
            last_slot    timestamptz NOT NULL DEFAULT '-infinity',
            last_rate    double precision NOT NULL DEFAULT 0,
            slow_rate    double precision,
            slow_at      timestamptz,
            quota_until  timestamptz,
            quota_reason text,
            abort_code   integer,
            abort_reason text,
            abort_at     timestamptz,
            abort_key    bytea
        )""",
        "INSERT INTO be_account (id) VALUES (1)",
    ),
    # Version 3: `--qps auto` for a team (store/team_auto.py). Columns with defaults only, so
    # runs of version 2 still running meanwhile go on working (until they restart).
    3: (
        # Whether the run was given --qps auto (its `qps` is then its --max-qps).
        "ALTER TABLE be_runs ADD COLUMN auto boolean NOT NULL DEFAULT false",
        # The run driving the account's rate, when it last reserved, what its controller says;
        # the account's slots and 10011s of the last seconds (epoch seconds, in order).
        """ALTER TABLE be_account
            ADD COLUMN auto_run     text,
            ADD COLUMN auto_seen    timestamptz,
            ADD COLUMN auto_rate    double precision,
            ADD COLUMN auto_ceiling integer,
            ADD COLUMN auto_found   double precision,
            ADD COLUMN recent       double precision[] NOT NULL DEFAULT '{}',
            ADD COLUMN refused      double precision[] NOT NULL DEFAULT '{}'""",
    ),
    # Version 4: the driver's guard, the most slots one second of the schedule may hold
    # (team.py: a cut drains instead of pausing a window). NULL: no driver has written it.
    4: ("ALTER TABLE be_account ADD COLUMN auto_window integer",),
}
SCHEMA_VERSION: Final = max(MIGRATIONS)

_UPSERT: Final = (
    f"INSERT INTO be_answers (key, {ANSWER_COLUMNS}, received_at) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (key) DO UPDATE SET status = EXCLUDED.status, "
    "error_code = EXCLUDED.error_code, reason = EXCLUDED.reason, orderid = EXCLUDED.orderid, "
    "range_score = EXCLUDED.range_score, history_score = EXCLUDED.history_score, "
    "stability_score = EXCLUDED.stability_score, queried_at = EXCLUDED.queried_at, "
    "received_at = EXCLUDED.received_at"
)
_STORABLE: Final = frozenset({Status.OK, Status.REJECTED})


def psycopg_module() -> ModuleType:
    """psycopg, or a one-line ConfigError saying how to install it."""
    try:
        import psycopg
    except ImportError:
        raise ConfigError(
            "a postgresql:// --state needs the PostgreSQL driver, which is not installed: "
            f"{INSTALL_HINT}"
        ) from None
    return psycopg


def default_secret_path() -> Path:
    """The team secret's default place: `team.secret` beside the default journal."""
    from batch_enricher.store.sqlite import default_state_path

    return default_state_path().parent / "team.secret"


@contextlib.contextmanager
def pg_errors(url: TeamUrl, action: str, *, sent: bool = False) -> Iterator[None]:
    """psycopg errors as one JournalError line: the masked URL, what failed, nothing sent."""
    pg = psycopg_module()
    try:
        yield
    except pg.Error as exc:
        detail = " ".join(mask_urls(str(exc) or type(exc).__name__).split())
        tail = "" if sent else "; nothing was sent"
        raise JournalError(f"cannot {action} the team journal {url}: {detail}{tail}") from None


def connect(url: TeamUrl) -> psycopg.Connection[tuple[Any, ...]]:
    """A synchronous autocommit connection to the team database."""
    pg = psycopg_module()
    with pg_errors(url, "connect to"):
        conn: psycopg.Connection[tuple[Any, ...]] = pg.Connection.connect(
            url.conninfo, autocommit=True, application_name=_APPLICATION
        )
    return conn


def schema_version(conn: psycopg.Connection[tuple[Any, ...]]) -> int | None:
    """The tables' version; None on a database without them."""
    if not _has_table(conn, "be_schema_version"):
        return None
    (version,) = _one(conn, "SELECT max(version) FROM be_schema_version")
    return int(version or 0)


def ensure_schema(conn: psycopg.Connection[tuple[Any, ...]], url: TeamUrl) -> None:
    """Create the tables, or upgrade them in place; no DDL at all when they are current."""
    with pg_errors(url, "open"):
        version = schema_version(conn)
        if version == SCHEMA_VERSION:
            return
        _refuse_newer(url, version)
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            version = schema_version(conn)  # again: another run may have done it meanwhile
            _refuse_newer(url, version)
            if version is None and _has_table(conn, "be_answers"):
                raise JournalError(
                    f"the database {url} has a be_answers table but no be_schema_version: "
                    "it is not a batch-enricher team journal; pick another database"
                )
            start = 0 if version is None else version
            for step in range(start + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[step]:
                    conn.execute(statement)
            conn.execute("UPDATE be_schema_version SET version = %s", (SCHEMA_VERSION,))
        if version is None:
            log.info("created the team journal's tables in %s", url)
        elif version < SCHEMA_VERSION:
            log.info("upgraded the team journal %s to schema version %d", url, SCHEMA_VERSION)


def _refuse_newer(url: TeamUrl, version: int | None) -> None:
    if version is not None and version > SCHEMA_VERSION:
        raise JournalError(
            f"the team journal {url} has schema version {version}, newer than this "
            f"batch-enricher understands ({SCHEMA_VERSION}); upgrade batch-enricher; nothing "
            "was sent"
        )


def _has_table(conn: psycopg.Connection[tuple[Any, ...]], name: str) -> bool:
    """Whether the schema new tables go to has `name`.

    Read from pg_tables, not with to_regclass: that looks in the backend's catalog cache,
    which may not yet show tables another run committed while this one waited for the lock.
    """
    row = conn.execute(
        "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema() AND tablename = %s",
        (name,),
    ).fetchone()
    return bool(row and row[0])


def _one(conn: psycopg.Connection[tuple[Any, ...]], sql: str) -> tuple[Any, ...]:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return row


def stored_fingerprint(conn: psycopg.Connection[tuple[Any, ...]]) -> bytes | None:
    """The fingerprint of the secret the database is bound to; None if not bound yet."""
    row = conn.execute("SELECT value FROM be_meta WHERE name = 'fingerprint'").fetchone()
    return None if row is None else bytes(row[0])


def bind_secret(
    conn: psycopg.Connection[tuple[Any, ...]],
    url: TeamUrl,
    secret_path: Path,
    *,
    offered: SecretFile | None = None,
) -> SecretFile:
    """The secret this run uses with the database: its file's, checked against the database.

    On a database bound to no secret yet, the file's secret binds it; a missing file is
    created first (`offered`, or a new random secret). Raises JournalMismatchError, before
    anything is sent, when the file and the database do not belong together.
    """
    with pg_errors(url, "open"):
        bound = stored_fingerprint(conn)
    stored = read_secret(secret_path)
    created = False
    if stored is None and bound is None:
        stored, created = _create_secret_file(secret_path, offered or new_secret())
    if stored is None:
        raise JournalMismatchError(
            f"the team journal {url} is bound to a secret, but there is no secret file at "
            f"{secret_path}; nothing was sent. Copy the team's secret file there from a "
            "member whose runs use this database (or name it with --secret-file)"
        )
    if bound is None:
        with pg_errors(url, "bind the secret of"), conn.transaction():
            conn.execute(
                "INSERT INTO be_meta (name, value) VALUES ('fingerprint', %s), "
                "('journal_id', %s) ON CONFLICT (name) DO NOTHING",
                (fingerprint(stored.secret), stored.journal_id or new_secret().journal_id),
            )
            bound = stored_fingerprint(conn)
    if bound is None or not hmac.compare_digest(bound, fingerprint(stored.secret)):
        if created:  # lost the race to bind a new database: this file is nobody's secret
            with contextlib.suppress(OSError):
                secret_path.unlink()
        raise JournalMismatchError(mismatch_message(url, secret_path, created=created))
    return stored


def mismatch_message(url: TeamUrl, secret_path: Path, *, created: bool = False) -> str:
    """The one line for a secret file that is not the team database's."""
    what = (
        "another run bound the new team journal to its own secret first"
        if created
        else f"the secret file {secret_path} is not the one the team journal {url} was made with"
    )
    return (
        f"{what}: its answers would match nobody and everyone would be paid for again; "
        f"nothing was sent. Copy the team's secret file to {secret_path} (or name it with "
        "--secret-file)"
    )


def _create_secret_file(path: Path, secret: SecretFile) -> tuple[SecretFile, bool]:
    """Create the secret file (0600) unless another run just did; (its secret, created here).

    Written whole to a temporary name, then linked into place: `link` fails if the name
    exists, so of several runs starting at once exactly one creates it and the others read
    a complete file, never a half-written one.
    """
    folder = path.parent
    try:
        if not folder.is_dir():
            folder.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        temp = sibling(path, f".tmp-{secrets.token_hex(4)}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(secret.to_bytes())
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(temp, path)
            except FileExistsError:
                winner = read_secret(path)
                if winner is None:
                    raise JournalError(
                        f"the team secret {path} vanished while it was read"
                    ) from None
                return winner, False
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV):
                    raise
                os.rename(temp, path)  # a file system without hard links
        finally:
            with contextlib.suppress(OSError):
                temp.unlink()
    except OSError as exc:
        raise JournalError(
            f"cannot create the team secret {path}: {exc.strerror or exc}; nothing was sent"
        ) from None
    log.warning(
        "created the team secret %s: every member needs a copy (0600) to share the journal",
        path,
    )
    return secret, True


class PgJournal:
    """The answers in a PostgreSQL database (a `store.base.Journal`). Use `PgJournal.open`."""

    def __init__(
        self, url: TeamUrl, conn: psycopg.Connection[tuple[Any, ...]], secret: SecretFile
    ) -> None:
        self._url = url
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = conn
        self._secret = secret

    @classmethod
    def open(cls, url: TeamUrl, secret_path: Path | None = None) -> PgJournal:
        """Connect, create or upgrade the tables, and check the secret; nothing is sent yet."""
        path = secret_path if secret_path is not None else default_secret_path()
        path = Path(os.path.realpath(path.expanduser()))
        conn = connect(url)
        try:
            ensure_schema(conn, url)
            secret = bind_secret(conn, url, path)
        except BaseException:
            conn.close()
            raise
        return cls(url, conn, secret)

    @property
    def url(self) -> TeamUrl:
        """The database (its `str` is masked)."""
        return self._url

    @property
    def location(self) -> str:
        """The URL, password masked."""
        return self._url.masked

    @property
    def secret(self) -> SecretFile:
        """The secret the keys are made with (never stored in the database)."""
        return self._secret

    def key(self, person: Person) -> bytes:
        """HMAC-SHA256 of `idcard|realname|mobile` under the team's secret."""
        message = f"{person.idcard}|{person.realname}|{person.mobile}".encode()
        return hmac.new(self._secret.secret, message, hashlib.sha256).digest()

    def get(self, key: bytes, *, newer_than: float | None = None) -> Answer | None:
        """The stored answer for `key`, if any."""
        return self.get_many([key], newer_than=newer_than).get(key)

    def get_many(
        self, keys: Iterable[bytes], *, newer_than: float | None = None
    ) -> dict[bytes, Answer]:
        """Stored answers of those keys that have one, looked up in batches of ≤ 500."""
        found: dict[bytes, Answer] = {}
        cutoff = "" if newer_than is None else " AND received_at >= %s"
        sql = f"SELECT key, {ANSWER_COLUMNS} FROM be_answers WHERE key = ANY(%s){cutoff}"
        unique = iter(dict.fromkeys(keys))
        while chunk := list(islice(unique, _CHUNK)):
            params: tuple[Any, ...] = (chunk,) if newer_than is None else (chunk, newer_than)
            rows = self._again("read", partial(_fetch_all, sql=sql, params=params))
            for row in rows:
                found[bytes(row[0])] = answer_of(row[1:])
        return found

    def count(self) -> int:
        """How many people have a stored answer."""
        row = self._again(
            "read", lambda conn: conn.execute("SELECT count(*) FROM be_answers").fetchone()
        )
        return int(row[0]) if row else 0

    def put(self, key: bytes, answer: Answer) -> None:
        """Store (or replace) one final answer; committed when this returns."""
        self.put_many([(key, answer)])

    def put_many(self, items: Iterable[tuple[bytes, Answer]]) -> None:
        """Store (or replace) several final answers in one transaction."""
        rows = [answer_row(key, answer) for key, answer in items]
        if not rows:
            return

        def write(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(_UPSERT, rows)  # an upsert: safe to repeat

        self._again("write", write)

    def purge(self, older_than: float) -> int:
        """Delete answers received before `older_than` (epoch s); returns how many went."""
        with pg_errors(self._url, "purge", sent=True):
            cur = self._open_conn().execute(
                "DELETE FROM be_answers WHERE received_at < %s", (older_than,)
            )
        return cur.rowcount

    def close(self) -> None:
        """Close the connection (safe to call twice)."""
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

    def _open_conn(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._conn is None:
            raise JournalError(f"the team journal {self._url} is closed")
        return self._conn

    def _again(self, action: str, work: Callable[[psycopg.Connection[tuple[Any, ...]]], T]) -> T:
        """Do `work` (idempotent) on the connection; if the connection turns out to be lost
        (a long dispatch leaves it idle, and a server or firewall may drop it), reconnect and
        do it once more."""
        conn = self._open_conn()
        try:
            with pg_errors(self._url, action, sent=True):
                return work(conn)
        except JournalError:
            if not (conn.broken or conn.closed):
                raise
        log.debug("the team journal's connection was lost; connecting again")
        with contextlib.suppress(Exception):
            conn.close()
        self._conn = connect(self._url)
        with pg_errors(self._url, action, sent=True):
            return work(self._conn)


def _fetch_all(
    conn: psycopg.Connection[tuple[Any, ...]], *, sql: str, params: tuple[Any, ...]
) -> list[tuple[Any, ...]]:
    return conn.execute(sql, params).fetchall()


def answer_row(key: bytes, answer: Answer) -> tuple[Any, ...]:
    """The parameters of one answer's row (a failed or skipped outcome is refused)."""
    from batch_enricher.store.sqlite import storable_row

    if answer.status not in _STORABLE:
        raise ValueError(f"only final answers go in the journal, not {answer.status!r}")
    row = storable_row(
        (
            bytes(key),
            answer.status.value,
            answer.error_code,
            answer.reason,
            answer.orderid,
            answer.range,
            answer.history,
            answer.stability,
            answer.queried_at,
        )
    )
    if row is None:
        raise ValueError("not a well-formed answer")
    return row


def answer_of(row: Sequence[Any]) -> Answer:
    """An `Answer` from the columns `ANSWER_COLUMNS` names."""
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

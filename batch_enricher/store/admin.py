"""Journal housekeeping on either store: copy answers between them, purge, and team status.

`copy_journal` moves answers from a local SQLite journal into a team database (so a team that
adopts one pays nobody again), or back. Keys are HMACs under a secret, so the two must share
one: a new destination is bound to the source's secret (a new team database gets the secret
file from the local journal's), an existing one must already have it, else the copy is refused.
Where both hold an answer for a person, the newer one is kept.
"""

from __future__ import annotations

import contextlib
import hmac
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from batch_enricher.errors import JournalError, JournalLockedError, JournalMismatchError
from batch_enricher.journal_identity import (
    DbKind,
    SecretFile,
    binding_problem,
    fingerprint,
    new_secret,
    read_secret,
    sibling,
    write_secret,
)
from batch_enricher.store import sqlite as local
from batch_enricher.store.postgres import (
    ANSWER_COLUMNS,
    bind_secret,
    connect,
    default_secret_path,
    ensure_schema,
    pg_errors,
    schema_version,
    stored_fingerprint,
)
from batch_enricher.store.url import TeamUrl

if TYPE_CHECKING:
    import psycopg

__all__ = ["CopyReport", "TeamStatus", "copy_journal", "journal_status", "purge"]

_BATCH: Final = 500
_NEWER_PG: Final = (
    f"INSERT INTO be_answers (key, {ANSWER_COLUMNS}, received_at) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (key) DO UPDATE SET "
    "status = EXCLUDED.status, error_code = EXCLUDED.error_code, reason = EXCLUDED.reason, "
    "orderid = EXCLUDED.orderid, range_score = EXCLUDED.range_score, "
    "history_score = EXCLUDED.history_score, stability_score = EXCLUDED.stability_score, "
    "queried_at = EXCLUDED.queried_at, received_at = EXCLUDED.received_at "
    "WHERE EXCLUDED.received_at > be_answers.received_at"
)

Row = tuple[Any, ...]


@dataclass(frozen=True)
class CopyReport:
    """What `copy_journal` did."""

    source: str
    dest: str
    read: int  # answers read from the source
    before: int  # answers in the destination before
    after: int  # and after

    def message(self) -> str:
        """One line for the user."""
        new = self.after - self.before
        return (
            f"copied {self.read} answer(s) from {self.source} to {self.dest}: {new} new there, "
            f"{self.read - new} already there (the newer answer kept); {self.after} in all"
        )


# -- the two ends ----------------------------------------------------------------------------


def _sqlite_source(path: Path) -> tuple[SecretFile, Iterator[Row], int]:
    path = local.resolve_path(path)
    if not path.exists():
        raise JournalError(f"there is no journal at {path}: nothing to copy")
    stored = read_secret(sibling(path, ".secret"))
    if stored is None:
        raise JournalError(
            f"the journal {path} has no secret beside it ({sibling(path, '.secret')}): its "
            "answers cannot be matched to anyone, so there is nothing worth copying"
        )
    conn = _read_only(path)
    try:
        facts = local.inspect_db(conn, path)
        problem = binding_problem(path, stored, facts)
        if problem is not None:
            raise JournalMismatchError(problem.message())
        (total,) = conn.execute("SELECT COUNT(*) FROM answers").fetchone()
    except sqlite3.Error as exc:
        conn.close()
        raise JournalError(f"cannot read the journal {path}: {exc}") from None
    except BaseException:
        conn.close()
        raise
    return stored, _sqlite_rows(conn, path), int(total)


def _read_only(path: Path) -> sqlite3.Connection:
    try:
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise JournalError(f"cannot open the journal {path}: {exc}") from None


def _sqlite_rows(conn: sqlite3.Connection, path: Path) -> Iterator[Row]:
    try:
        sql, params = local.select_range_sql(b"", None)
        cursor = conn.execute(sql, params)
        while batch := cursor.fetchmany(_BATCH):
            for raw in batch:
                row = local.storable_row(raw)
                if row is not None:
                    yield row
    except sqlite3.Error as exc:
        raise JournalError(f"cannot read the journal {path}: {exc}") from None
    finally:
        conn.close()


def _pg_source(url: TeamUrl, secret_path: Path) -> tuple[SecretFile, Iterator[Row], int]:
    conn = connect(url)
    try:
        with pg_errors(url, "read"):
            if schema_version(conn) is None:
                raise JournalError(f"{url} holds no team journal: nothing to copy")
            bound = stored_fingerprint(conn)
            row = conn.execute("SELECT count(*) FROM be_answers").fetchone()
        stored = read_secret(secret_path)
        if stored is None or bound is None or not _same(bound, stored.secret):
            raise JournalMismatchError(
                f"the secret file {secret_path} is not the team journal {url}'s; nothing was "
                "copied. Name the team's secret with --secret-file"
            )
    except BaseException:
        conn.close()
        raise
    return stored, _pg_rows(conn, url), int(row[0]) if row else 0


def _pg_rows(conn: psycopg.Connection[tuple[Any, ...]], url: TeamUrl) -> Iterator[Row]:
    sql = f"SELECT key, {ANSWER_COLUMNS} FROM be_answers WHERE key > %s ORDER BY key LIMIT {_BATCH}"
    last = b""
    try:
        while True:
            with pg_errors(url, "read"):
                batch = conn.execute(sql, (last,)).fetchall()
            if not batch:
                return
            for raw in batch:
                row = local.storable_row((bytes(raw[0]), *raw[1:]))
                if row is not None:
                    yield row
            last = bytes(batch[-1][0])
    finally:
        conn.close()


def _same(bound: bytes, secret: bytes) -> bool:
    return hmac.compare_digest(bound, fingerprint(secret))


def _copy_into_sqlite(path: Path, secret: SecretFile, rows: Iterator[Row]) -> tuple[int, int, int]:
    path = local.resolve_path(path)
    if not path.exists() and read_secret(sibling(path, ".secret")) is None:
        _create_sqlite(path, secret)
    with local.Journal.open(path) as journal:
        if not _same(fingerprint(journal.secret), secret.secret):
            raise JournalMismatchError(
                f"the journal {path} has another secret than the source: their keys cannot be "
                "matched, so nothing was copied (copy into a new --state path instead)"
            )
        before = journal.count()
        read = 0
        while batch := _take(rows):
            read += len(batch)
            journal.merge(batch)
        return read, before, journal.count()


def _create_sqlite(path: Path, secret: SecretFile) -> None:
    """A new SQLite journal at `path` bound to the source's secret (database first)."""
    bound = SecretFile(secret.secret, new_secret().journal_id)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with local.run_lock(path, 5.0):
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
            path.chmod(0o600)
            local.create_schema(conn, bound)
        write_secret(sibling(path, ".secret"), bound)


def _copy_into_pg(
    url: TeamUrl, secret_path: Path, secret: SecretFile, rows: Iterator[Row]
) -> tuple[int, int, int]:
    conn = connect(url)
    try:
        ensure_schema(conn, url)
        try:
            mine = bind_secret(conn, url, secret_path, offered=secret)
        except JournalMismatchError:
            mine = None
        if mine is None or not _same(fingerprint(mine.secret), secret.secret):
            raise JournalMismatchError(
                f"the team journal {url} is bound to another secret than the source: their "
                "keys cannot be matched, so nothing was copied"
            )
        with pg_errors(url, "write"):
            before = _pg_count(conn)
            read = 0
            while batch := _take(rows):
                read += len(batch)
                with conn.transaction(), conn.cursor() as cur:
                    cur.executemany(_NEWER_PG, batch)
            return read, before, _pg_count(conn)
    finally:
        conn.close()


def _pg_count(conn: psycopg.Connection[tuple[Any, ...]]) -> int:
    row = conn.execute("SELECT count(*) FROM be_answers").fetchone()
    return int(row[0]) if row else 0


def _take(rows: Iterator[Row]) -> list[Row]:
    batch: list[Row] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= _BATCH:
            break
    return batch


def copy_journal(
    source: Path | TeamUrl, dest: Path | TeamUrl, *, secret_file: Path | None = None
) -> CopyReport:
    """Copy every answer of `source` into `dest` (SQLite ↔ PostgreSQL, or alike).

    `secret_file` is the team database's secret (default: team.secret in the state folder).
    """
    secret_path = secret_file if secret_file is not None else default_secret_path()
    if isinstance(source, TeamUrl) and isinstance(dest, TeamUrl) and source == dest:
        raise JournalError("the source and the destination are the same database")
    if isinstance(source, Path) and isinstance(dest, Path):  # noqa: SIM102
        if local.resolve_path(source) == local.resolve_path(dest):
            raise JournalError("the source and the destination are the same journal")
    if isinstance(source, TeamUrl):
        secret, rows, _ = _pg_source(source, secret_path)
    else:
        secret, rows, _ = _sqlite_source(source)
    try:
        if isinstance(dest, TeamUrl):
            read, before, after = _copy_into_pg(dest, secret_path, secret, rows)
        else:
            read, before, after = _copy_into_sqlite(dest, secret, rows)
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()
    return CopyReport(str(source), str(dest), read, before, after)


# -- purge -----------------------------------------------------------------------------------


def purge(state: Path | TeamUrl, older_than: float) -> tuple[int, int]:
    """Delete answers received before `older_than` (epoch s): (removed, kept).

    On a team database this needs no secret (it deletes by age only); it also forgets runs
    and claims long dead.
    """
    if isinstance(state, Path):
        with local.Journal.open(state) as journal:
            return journal.purge(older_than), journal.count()
    conn = connect(state)
    try:
        ensure_schema(conn, state)
        with pg_errors(state, "purge"), conn.transaction():
            removed = conn.execute(
                "DELETE FROM be_answers WHERE received_at < %s", (older_than,)
            ).rowcount
            conn.execute("DELETE FROM be_claims WHERE expires < now() - interval '1 hour'")
            conn.execute(
                "DELETE FROM be_runs "
                "WHERE last_seen + lease * interval '1 second' < now() - interval '1 hour'"
            )
            return removed, _pg_count(conn)
    finally:
        conn.close()


# -- status ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunInfo:
    """One live run of the team, as `journal status` shows it."""

    host: str
    user: str
    pid: int
    started: datetime
    qps: float  # its --qps, or under --qps auto its --max-qps
    rate: float
    calls: int
    billed: int
    auto: bool = False  # given --qps auto

    @property
    def given(self) -> str:
        """Its rate as given: `25`, or `auto (max 100)`."""
        return f"auto (max {self.qps:g})" if self.auto else f"{self.qps:g}"


@dataclass
class TeamStatus:
    """What `journal status` shows."""

    where: str
    answers: int
    kind: str  # "team" or "local"
    schema: int | None = None
    secret: str = ""
    runs: list[RunInfo] = field(default_factory=list)
    account_rate: float | None = None  # lowest --qps (or --max-qps, under auto) of the live runs
    current_rate: float | None = None  # after any slow-down, at the last reservation
    quota: str = "closed"
    abort: str | None = None
    in_use: bool | None = None  # local: whether a run holds the lock

    def lines(self) -> list[str]:
        """The status as aligned `label: value` lines, then a table of live runs."""
        rows: list[tuple[str, str]] = [("journal", f"{self.where} ({self.kind})")]
        rows.append(("answers", f"{self.answers} people answered"))
        if self.kind == "local":
            rows.append(("in use", "yes: a run holds its lock" if self.in_use else "no"))
            return _aligned(rows)
        rows.append(("schema", f"version {self.schema}"))
        rows.append(("secret", self.secret))
        if self.account_rate is None:
            rows.append(("rate", "no live run (the account's rate is the lowest live --qps)"))
        elif any(run.auto for run in self.runs):
            rate = f"--qps auto, at most {self.account_rate:g}/s (the lowest --qps or --max-qps)"
            if self.current_rate is not None:
                rate += f"; {self.current_rate:.1f}/s at the last reservation"
            rows.append(("rate", rate))
        else:
            rate = f"{self.account_rate:g}/s (the lowest --qps of the live runs)"
            if self.current_rate is not None and self.current_rate < self.account_rate * 0.99:
                rate += f"; slowed by 10011 to {self.current_rate:.1f}/s, recovering"
            rows.append(("rate", rate))
        rows.append(("quota breaker", self.quota))
        if self.abort:
            rows.append(("last abort", self.abort))
        rows.append(("live runs", str(len(self.runs))))
        lines = _aligned(rows)
        if self.runs:
            table = [
                ("host", "user", "pid", "started (UTC)", "qps", "rate share", "calls", "billed")
            ]
            total = sum(run.rate for run in self.runs) or 1.0
            for run in self.runs:
                table.append(
                    (
                        run.host,
                        run.user,
                        str(run.pid),
                        run.started.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
                        run.given,
                        f"{run.rate:.1f}/s ({run.rate / total:.0%})",
                        str(run.calls),
                        str(run.billed),
                    )
                )
            widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
            lines += [
                "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                for r in table
            ]
        return lines


_RUN_HEADINGS: Final = (
    "host",
    "user",
    "pid",
    "started (UTC)",
    "qps",
    "rate share",
    "calls",
    "billed",
)


def _aligned(rows: list[tuple[str, str]]) -> list[str]:
    width = max(len(label) for label, _ in rows) + 1
    return [f"{label + ':':<{width}} {value}" for label, value in rows]


def journal_status(state: Path | TeamUrl, *, secret_file: Path | None = None) -> TeamStatus:
    """What the journal holds and, for a team database, who is using it right now."""
    if isinstance(state, Path):
        return _local_status(state)
    secret_path = secret_file if secret_file is not None else default_secret_path()
    conn = connect(state)
    try:
        with pg_errors(state, "read"):
            version = schema_version(conn)
            if version is None:
                return TeamStatus(state.masked, 0, "team", secret="none yet (a new database)")
            answers = _pg_count(conn)
            bound = stored_fingerprint(conn)
            auto = "auto" if version >= 3 else "false"  # --qps auto came with schema 3
            runs = conn.execute(
                f"SELECT host, username, pid, started, qps, rate, calls, billed, {auto} "
                "FROM be_runs WHERE last_seen + lease * interval '1 second' > now() "
                "ORDER BY started"
            ).fetchall()
            account = conn.execute(
                "SELECT last_rate, quota_until > now(), quota_until, quota_reason, abort_code, "
                "abort_reason, abort_at FROM be_account WHERE id = 1"
            ).fetchone()
    finally:
        conn.close()
    status = TeamStatus(state.masked, answers, "team", schema=version)
    stored = read_secret(secret_path)
    if stored is None:
        status.secret = f"no secret file at {secret_path}"
    elif bound is not None and _same(bound, stored.secret):
        status.secret = f"{secret_path} (matches)"
    else:
        status.secret = f"{secret_path} does NOT match: runs with it are refused"
    status.runs = [
        RunInfo(str(h), str(u), int(p), s, float(q), float(r), int(c), int(b), bool(a))
        for h, u, p, s, q, r, c, b, a in runs
    ]
    if status.runs:
        status.account_rate = min(run.qps for run in status.runs)
    if account is not None:
        last_rate, quota_open, quota_until, quota_reason, abort_code, abort_reason, abort_at = (
            account
        )
        status.current_rate = float(last_rate) if last_rate else None
        if quota_open:
            until = quota_until.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            status.quota = f"OPEN until {until}: {quota_reason}"
        if abort_code is not None:
            at = abort_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            status.abort = f"{abort_code} at {at}: {abort_reason}"
    return status


def _local_status(path: Path) -> TeamStatus:
    path = local.resolve_path(path)
    if not path.exists():
        return TeamStatus(str(path), 0, "local", in_use=False)
    conn = _read_only(path)
    try:
        facts = local.inspect_db(conn, path)
        answers = 0
        if facts.kind in (DbKind.V1, DbKind.V2):
            (answers,) = conn.execute("SELECT COUNT(*) FROM answers").fetchone()
    except sqlite3.Error as exc:
        raise JournalError(f"cannot read the journal {path}: {exc}") from None
    finally:
        conn.close()
    try:
        with local.run_lock(path, 0.0):
            in_use = False
    except JournalLockedError:
        in_use = True
    return TeamStatus(str(path), int(answers), "local", in_use=in_use)

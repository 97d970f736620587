"""The team journal in a real PostgreSQL: schema, secret, privileges, messages."""

from __future__ import annotations

import os
import stat
import sys
import threading
from pathlib import Path

import psycopg
import pytest

from batch_enricher.errors import ConfigError, JournalError, JournalMismatchError
from batch_enricher.journal_identity import fingerprint, read_secret
from batch_enricher.models import Answer, Person, Status
from batch_enricher.store import StoreOptions, TeamUrl, open_store
from batch_enricher.store.postgres import (
    MIGRATIONS,
    SCHEMA_VERSION,
    PgJournal,
    schema_version,
)
from tests.pg import PgServer

PERSON = Person(realname="张三", idcard="11010119900307803X", mobile="13812345678")


def answer(orderid: str = "J1", queried_at: str = "2026-01-02T03:04:05+08:00") -> Answer:
    return Answer(Status.OK, 0, "查询成功", orderid, "16", "3", "40", queried_at)


def test_a_new_database_gets_the_schema_and_the_secret_file(pg_url: str, tmp_path: Path) -> None:
    secret = tmp_path / "team" / "team.secret"
    with PgJournal.open(TeamUrl(pg_url), secret) as journal:
        key = journal.key(PERSON)
        journal.put(key, answer())
        assert journal.get(key) == answer()
        assert journal.count() == 1
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    stored = read_secret(secret)
    assert stored is not None
    with psycopg.connect(pg_url) as conn:
        assert schema_version(conn) == SCHEMA_VERSION
        (fp,) = conn.execute("SELECT value FROM be_meta WHERE name = 'fingerprint'").fetchone()
        assert bytes(fp) == fingerprint(stored.secret)
        # The secret itself is nowhere in the database.
        dump = conn.execute("SELECT string_agg(encode(value, 'hex'), '') FROM be_meta").fetchone()
        assert stored.secret.hex() not in dump[0]
    # Reopened with the same file: the same keys, the same answers.
    with PgJournal.open(TeamUrl(pg_url), secret) as journal:
        assert journal.key(PERSON) == key
        assert journal.get(key) == answer()


def test_another_secret_is_refused_naming_the_file(pg_url: str, tmp_path: Path) -> None:
    PgJournal.open(TeamUrl(pg_url), tmp_path / "a.secret").close()
    with pytest.raises(JournalMismatchError) as info:
        PgJournal.open(TeamUrl(pg_url), tmp_path / "b.secret")
    assert str(tmp_path / "b.secret") in str(info.value)
    assert "nothing was sent" in str(info.value)
    # The loser's freshly made file is removed: it is nobody's secret.
    assert not (tmp_path / "b.secret").exists()
    # An existing file of another secret is refused too, and kept.
    (tmp_path / "c.secret").write_bytes(os.urandom(48))
    with pytest.raises(JournalMismatchError, match=r"c\.secret"):
        PgJournal.open(TeamUrl(pg_url), tmp_path / "c.secret")
    assert (tmp_path / "c.secret").exists()


def test_runs_starting_together_on_a_new_database_agree_on_one_secret(
    pg_url: str, tmp_path: Path
) -> None:
    secret = tmp_path / "team.secret"
    keys: list[bytes] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            with PgJournal.open(TeamUrl(pg_url), secret) as journal:
                keys.append(journal.key(PERSON))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(set(keys)) == 1 and len(keys) == 6
    assert [p.name for p in tmp_path.iterdir()] == ["team.secret"]


def test_a_bound_database_without_the_secret_file_is_refused(pg_url: str, tmp_path: Path) -> None:
    PgJournal.open(TeamUrl(pg_url), tmp_path / "team.secret").close()
    missing = tmp_path / "elsewhere" / "team.secret"
    with pytest.raises(JournalMismatchError, match=r"no secret file at .*elsewhere"):
        PgJournal.open(TeamUrl(pg_url), missing)
    assert not missing.exists()  # never a second secret for a bound database


def test_a_role_that_may_only_read_and_write_suffices(
    pg_server: PgServer, pg_url: str, tmp_path: Path
) -> None:
    secret = tmp_path / "team.secret"
    PgJournal.open(TeamUrl(pg_url), secret).close()  # the owner creates the tables
    database = pg_url.rsplit("/", 1)[1]
    role = f"member_{database}"
    with pg_server.admin(database) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"REVOKE CREATE ON SCHEMA public FROM PUBLIC, {role}")
        conn.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
        conn.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"
        )
    member = TeamUrl(pg_server.url(database, user=role))
    with PgJournal.open(member, secret) as journal:
        journal.put(journal.key(PERSON), answer())
        assert journal.count() == 1
    # The same role cannot create the tables of an empty database: a clear message.
    empty = pg_server.new_database()
    with pg_server.admin(empty) as conn:
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    with pytest.raises(JournalError, match="permission denied"):
        PgJournal.open(TeamUrl(pg_server.url(empty, user=role)), secret)


def test_a_newer_schema_is_refused(pg_url: str, tmp_path: Path) -> None:
    PgJournal.open(TeamUrl(pg_url), tmp_path / "team.secret").close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE be_schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(JournalError, match="newer than this batch-enricher"):
        PgJournal.open(TeamUrl(pg_url), tmp_path / "team.secret")


def test_an_older_schema_is_upgraded_in_place(pg_url: str, tmp_path: Path) -> None:
    secret = tmp_path / "team.secret"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for statement in MIGRATIONS[1]:
            conn.execute(statement)
        conn.execute("UPDATE be_schema_version SET version = 1")
    with PgJournal.open(TeamUrl(pg_url), secret) as journal:
        journal.put(journal.key(PERSON), answer())
    with psycopg.connect(pg_url) as conn:
        assert schema_version(conn) == SCHEMA_VERSION


def test_a_foreign_database_is_refused(pg_url: str, tmp_path: Path) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE be_answers (x int)")
    with pytest.raises(JournalError, match="not a batch-enricher team journal"):
        PgJournal.open(TeamUrl(pg_url), tmp_path / "team.secret")


def test_the_password_never_shows(pg_server: PgServer, tmp_path: Path) -> None:
    url = f"postgresql://nobody:hunter2secret@127.0.0.1:{pg_server.port}/no_such_db"
    with pytest.raises(JournalError) as info:
        open_store(StoreOptions(state=TeamUrl(url), secret_file=tmp_path / "s"))
    assert "hunter2secret" not in str(info.value)
    assert "nobody:***@127.0.0.1" in str(info.value)
    assert "nothing was sent" in str(info.value)


def test_without_psycopg_a_one_line_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(ConfigError, match=r"pip install 'batch-enricher\[postgres\]'"):
        open_store(StoreOptions(state=TeamUrl("postgresql://h/db"), secret_file=tmp_path / "s"))


def test_enrich_with_a_team_journal_pays_once(
    pg_url: str,
    tmp_path: Path,
    sandbox,
    run,  # type: ignore[no-untyped-def]
) -> None:
    from tests.conftest import fast, person, read_csv, write_csv

    server = sandbox()
    src = write_csv(tmp_path / "in.csv", [list(person(i)) for i in range(20)])
    secret = tmp_path / "team.secret"
    argv = ["enrich", str(src), "-o", str(tmp_path / "out.csv"), "--state", pg_url]
    argv += ["--secret-file", str(secret), "--key", "k", "--endpoint", server.url, *fast()]
    first = run(*argv)
    assert first.exit_code == 0, first.output
    assert server.stats.requests == 20
    again = run(*argv)
    assert again.exit_code == 0, again.output
    assert server.stats.requests == 20  # every answer came from the team journal
    assert {row["status"] for row in read_csv(tmp_path / "out.csv")} <= {"ok", "rejected"}


def test_a_connection_dropped_while_idle_is_made_again(
    pg_server: PgServer, pg_url: str, tmp_path: Path
) -> None:
    with PgJournal.open(TeamUrl(pg_url), tmp_path / "team.secret") as journal:
        key = journal.key(PERSON)
        journal.put(key, answer())
        database = pg_url.rsplit("/", 1)[1]
        with pg_server.admin() as admin:  # what a server restart or a firewall does
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            )
        assert journal.get(key) == answer()
        journal.put(key, answer("J2"))
        assert journal.count() == 1

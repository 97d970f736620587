"""`journal copy`, `purge` and `journal status` on both stores (a real PostgreSQL)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import psycopg
from click.testing import Result

from batch_enricher.client import CallStats
from batch_enricher.guards import RunControl
from batch_enricher.models import Answer, Status
from batch_enricher.store import StoreOptions, TeamUrl, open_store
from batch_enricher.store.admin import journal_status
from batch_enricher.store.base import SessionSettings
from batch_enricher.store.team import TeamStore
from tests.conftest import Served, fast, person, write_csv


def _enrich(
    run: Callable[..., Result], server: Served, src: Path, state: str, *extra: str
) -> Result:
    out = src.with_name(f"{src.stem}.{abs(hash(state)) % 1000}.out.csv")
    return run(
        "enrich", str(src), "-o", str(out), "--state", state, "--key", "k",
        "--endpoint", server.url, *fast(), *extra,
    )  # fmt: skip


def test_copy_a_local_journal_into_a_new_team_database_and_back(
    run: Callable[..., Result],
    sandbox: Callable[..., Served],
    pg_url: str,
    tmp_path: Path,
) -> None:
    server = sandbox()
    src = write_csv(tmp_path / "in.csv", [list(person(i)) for i in range(30)])
    local = tmp_path / "mine" / "journal.sqlite3"
    assert _enrich(run, server, src, str(local)).exit_code == 0
    paid = server.stats.requests
    team_secret = tmp_path / "team" / "team.secret"
    copied = run("journal", "copy", str(local), pg_url, "--secret-file", str(team_secret))
    assert copied.exit_code == 0, copied.output
    assert "copied 30 answer(s)" in copied.output and "30 new there" in copied.output
    # The team's secret is the local journal's: its keys stay valid.
    assert (
        team_secret.read_bytes()[:32] == (local.parent / "journal.sqlite3.secret").read_bytes()[:32]
    )
    # A team member pays nobody again.
    again = _enrich(run, server, src, pg_url, "--secret-file", str(team_secret))
    assert again.exit_code == 0, again.output
    assert server.stats.requests == paid
    # And back, into a new local journal somewhere else.
    back = tmp_path / "laptop" / "journal.sqlite3"
    copied = run("journal", "copy", pg_url, str(back), "--secret-file", str(team_secret))
    assert copied.exit_code == 0, copied.output
    assert _enrich(run, server, src, str(back)).exit_code == 0
    assert server.stats.requests == paid
    # Copying again adds nothing.
    copied = run("journal", "copy", str(local), pg_url, "--secret-file", str(team_secret))
    assert "0 new there, 30 already there" in copied.output


def test_copy_between_journals_of_different_secrets_is_refused(
    run: Callable[..., Result],
    sandbox: Callable[..., Served],
    pg_url: str,
    tmp_path: Path,
) -> None:
    server = sandbox()
    src = write_csv(tmp_path / "in.csv", [list(person(i)) for i in range(5)])
    team_secret = tmp_path / "team.secret"
    assert _enrich(run, server, src, pg_url, "--secret-file", str(team_secret)).exit_code == 0
    local = tmp_path / "mine" / "journal.sqlite3"
    assert _enrich(run, server, src, str(local)).exit_code == 0  # its own secret
    refused = run("journal", "copy", str(local), pg_url, "--secret-file", str(team_secret))
    assert refused.exit_code == 1
    assert "another secret" in refused.output and "nothing was copied" in refused.output
    refused = run("journal", "copy", pg_url, str(local), "--secret-file", str(team_secret))
    assert refused.exit_code == 1
    assert "another secret" in refused.output


def test_purge_works_on_a_team_database(
    run: Callable[..., Result], pg_url: str, tmp_path: Path
) -> None:
    store = open_store(StoreOptions(state=TeamUrl(pg_url), secret_file=tmp_path / "s"))
    old = Answer(Status.OK, 0, "查询成功", "J1", "1", "2", "3", "2020-01-01T00:00:00+00:00")
    new = Answer(Status.OK, 0, "查询成功", "J2", "1", "2", "3", "2099-01-01T00:00:00+00:00")
    store.journal.put_many([(b"\1" * 32, old), (b"\2" * 32, new)])
    store.close()
    purged = run("purge", "--older-than", "30d", "--state", pg_url)
    assert purged.exit_code == 0, purged.output
    assert "purged 1 answer(s)" in purged.output and "1 kept" in purged.output
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM be_answers").fetchone() == (1,)


async def test_status_shows_live_runs_the_rate_and_the_breaker(pg_url: str, tmp_path: Path) -> None:
    secret = tmp_path / "team.secret"
    store = open_store(StoreOptions(state=TeamUrl(pg_url), secret_file=secret))
    assert isinstance(store, TeamStore)
    control = RunControl()
    settings = SessionSettings(qps=25, concurrency=4, cutoff=None, api_key="k")
    try:
        async with store.session(settings, control, CallStats()) as session:
            await session.pacer.acquire()
            text = "\n".join(journal_status(TeamUrl(pg_url), secret_file=secret).lines())
            assert "live runs:" in text and socket.gethostname() in text
            assert "rate:          25/s" in text
            assert "quota breaker: closed" in text
            assert f"{secret} (matches)" in text
            session.quota_open("quota breaker open: 10012 请求超过次数限制")
            await session.news_sent()
            text = "\n".join(journal_status(TeamUrl(pg_url), secret_file=secret).lines())
            assert "quota breaker: OPEN until" in text
        text = "\n".join(journal_status(TeamUrl(pg_url), secret_file=secret).lines())
        assert "live runs:     0" in text
        assert "0 people answered" in text
    finally:
        store.close()


def test_status_of_a_local_journal_and_check_refuses_a_url(
    run: Callable[..., Result], pg_url: str, tmp_path: Path
) -> None:
    shown = run("journal", "status", "--state", str(tmp_path / "none.sqlite3"))
    assert shown.exit_code == 0 and "(local)" in shown.output
    refused = run("journal", "check", "--state", pg_url.replace("postgres@", "postgres:pw@"))
    assert refused.exit_code == 1
    assert "local SQLite journal only" in refused.output


async def test_status_shows_an_auto_runs_max_qps_as_such(pg_url: str, tmp_path: Path) -> None:
    secret = tmp_path / "team.secret"
    store = open_store(StoreOptions(state=TeamUrl(pg_url), secret_file=secret))
    assert isinstance(store, TeamStore)
    settings = SessionSettings(qps="auto", concurrency=4, cutoff=None, api_key="k", max_qps=60)
    try:
        async with store.session(settings, RunControl(), CallStats()) as session:
            await session.pacer.acquire()
            text = "\n".join(journal_status(TeamUrl(pg_url), secret_file=secret).lines())
            assert "rate:          --qps auto, at most 60/s" in text, text
            assert "auto (max 60)" in text, text
    finally:
        store.close()

"""Replies lost after the server billed (issue 10, item 1), end to end against the sandbox.

A timeout after sending, a connection dropped after sending and an unreadable 200 may each
have been billed. They are counted (`possibly_billed`), held against --max-billed, retried
only within a small allowance, and a run of them stops the run. What the server really
billed is read from `SandboxStats`; nothing here assumes an order of requests.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from aiohttp import web
from click.testing import Result

from tests.conftest import Served, fast, person, read_csv, write_csv

Run = Callable[..., Result]

#: The lost-reply modes of the sandbox; late replies are held well past the client's timeout.
LOST_MODES = {
    "dropped": {"drop_rate": 1.0},
    "late": {"late_rate": 1.0, "late_ms": 3000},
    "truncated": {"truncate_rate": 1.0},
}
TIMEOUT = "0.2"


def _people(tmp_path: Path, n: int) -> Path:
    return write_csv(tmp_path / "in.csv", [list(person(i)) for i in range(n)])


def _doc(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return doc


def _lost(server: Served) -> int:
    return sum(server.stats.lost.values())


@pytest.mark.parametrize("mode", LOST_MODES)
def test_replies_lost_after_billing_never_let_the_server_bill_past_max_billed(
    tmp_path: Path, sandbox: Callable[..., Served], enrich_at: Run, mode: str
) -> None:
    server = sandbox(**LOST_MODES[mode])
    src = _people(tmp_path, 40)

    summary = tmp_path / "s.json"
    result = enrich_at(server, str(src), "-o", str(tmp_path / "o.csv"), "--max-billed", "5",
                       "--timeout", TIMEOUT, "--summary-json", str(summary))  # fmt: skip

    assert result.exit_code == 3, result.output
    assert server.stats.billed <= 5, f"the server billed {server.stats.billed} with --max-billed 5"
    doc = _doc(tmp_path / "s.json")
    # Every request it sent lost its reply, and each is counted once as possibly billed.
    assert doc["possibly_billed"] == server.stats.requests == _lost(server) == doc["api_calls"]
    assert doc["billed"] == 0
    assert "budget reached" in doc["stop_reason"]
    assert f"possibly billed {doc['possibly_billed']}:" in result.stderr


def test_possibly_billed_counts_exactly_the_replies_that_were_lost(
    tmp_path: Path, sandbox: Callable[..., Served], enrich_at: Run
) -> None:
    # One request at a time so that the lost replies (a quarter of them, drawn by arrival)
    # never run eight in a row: this test is about counting, not about the breaker.
    server = sandbox(drop_rate=0.15, truncate_rate=0.1, seed=5)
    src = _people(tmp_path, 60)
    out = tmp_path / "o.csv"

    result = enrich_at(server, str(src), "-o", str(out), "--concurrency", "1",
                       "--summary-json", str(tmp_path / "s.json"))  # fmt: skip

    doc = _doc(tmp_path / "s.json")
    stats = server.stats
    assert _lost(server) > 0 and stats.lost_billed > 0
    assert doc["possibly_billed"] == _lost(server)
    assert doc["api_calls"] == stats.requests
    # What the client knows it paid for, plus what it may have paid for, covers every bill.
    assert doc["billed"] == stats.billed - stats.lost_billed
    assert doc["billed"] + doc["possibly_billed"] >= stats.billed
    failed = [row for row in read_csv(out) if row["status"] == "failed"]
    assert len(failed) == doc["failed"]
    for row in failed:  # two lost replies for one person end it: the row says what it may cost
        assert "may have been billed" in row["error_reason"], row["error_reason"]
        assert "rerun" in row["error_reason"]
    assert result.exit_code == (3 if failed else 0), result.output


def test_every_reply_slower_than_the_timeout_stops_the_run_quickly_saying_raise_it(
    tmp_path: Path, sandbox: Callable[..., Served], enrich_at: Run
) -> None:
    server = sandbox(late_rate=1.0, late_ms=3000)
    src = _people(tmp_path, 300)
    out = tmp_path / "o.csv"

    started = time.monotonic()
    result = enrich_at(server, str(src), "-o", str(out), "--timeout", TIMEOUT, "--concurrency",
                       "8", "--summary-json", str(tmp_path / "s.json"))  # fmt: skip
    elapsed = time.monotonic() - started

    assert result.exit_code == 3, result.output
    # The breaker opens after 16 lost replies in a row (two waves of 8); the 7 others in
    # flight then time out too. Without it: 300 people x 2 tries of 0.2 s, a minute or more.
    assert server.stats.requests <= 16 + 7, server.stats.requests
    assert elapsed < 20, f"took {elapsed:.1f} s"
    doc = _doc(tmp_path / "s.json")
    assert doc["possibly_billed"] == server.stats.requests
    reason = doc["stop_reason"]
    assert "replies in a row were lost" in reason
    assert f"--timeout {TIMEOUT} s" in reason and "raise" in reason
    assert f"stopped early: {reason}" in result.stderr
    rows = read_csv(out)
    assert {row["status"] for row in rows} == {"failed", "skipped"}
    assert doc["skipped"] > 200, "most people were never sent"


def test_a_refused_connection_is_not_possibly_billed_and_holds_no_budget(
    tmp_path: Path, run: Run
) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    src = _people(tmp_path, 6)

    url = f"http://127.0.0.1:{port}/financeInfo/query"
    result = run("enrich", str(src), "-o", str(tmp_path / "o.csv"), "--key", "k", "--endpoint", url,
                 "--max-billed", "1", "--max-retries", "1",
                 "--summary-json", str(tmp_path / "s.json"), *fast())  # fmt: skip

    assert result.exit_code == 3, result.output
    doc = _doc(tmp_path / "s.json")
    assert doc["possibly_billed"] == 0
    # Nothing can have been billed, so --max-billed 1 held nobody back: everyone was tried.
    assert (doc["api_calls"], doc["failed"], doc["skipped"]) == (12, 6, 0)
    assert "possibly billed" not in result.stderr
    for row in read_csv(tmp_path / "o.csv"):
        assert "connection error" in row["error_reason"]
        assert "billed" not in row["error_reason"]


def test_an_unreadable_200_is_possibly_billed_and_a_rerun_retries_the_person(
    tmp_path: Path, serve_app: Callable[..., Served], sandbox: Callable[..., Served], run: Run
) -> None:
    arrivals = 0

    async def garbled(request: web.Request) -> web.Response:
        nonlocal arrivals
        arrivals += 1
        await request.post()
        return web.Response(body=b'{"reason":"\xe6\x88\x90', content_type="application/json")

    app = web.Application()
    app.router.add_post("/financeInfo/query", garbled)
    server = serve_app(app)
    src = _people(tmp_path, 3)
    out = tmp_path / "o.csv"

    first = run("enrich", str(src), "-o", str(out), "--key", "k", "--endpoint", server.url,
                "--summary-json", str(tmp_path / "s.json"), *fast())  # fmt: skip

    assert first.exit_code == 3, first.output
    doc = _doc(tmp_path / "s.json")
    assert doc["possibly_billed"] == arrivals == 6, "one try and one retry for each person"
    assert {row["status"] for row in read_csv(out)} == {"failed"}
    assert all("may have been billed" in row["error_reason"] for row in read_csv(out))

    healthy = sandbox()
    second = run("enrich", str(src), "-o", str(out), "--key", "k", "--endpoint", healthy.url,
                 *fast())  # fmt: skip
    assert second.exit_code == 0, second.output
    assert healthy.stats.requests == 3


def test_uncertain_retries_is_a_flag_an_env_variable_and_a_setting(
    tmp_path: Path, sandbox: Callable[..., Served], enrich_at: Run, run: Run
) -> None:
    server = sandbox(drop_rate=1.0)
    src = _people(tmp_path, 1)

    assert enrich_at(server, str(src), "-o", str(tmp_path / "a.csv"),
                     "--uncertain-retries", "2").exit_code == 3  # fmt: skip
    assert server.stats.requests == 3
    env = {"BATCH_ENRICHER_UNCERTAIN_RETRIES": "0"}
    assert enrich_at(server, str(src), "-o", str(tmp_path / "b.csv"), env=env).exit_code == 3
    assert server.stats.requests == 4
    config = tmp_path / "c.toml"
    config.write_text("uncertain-retries = 3\n", encoding="utf-8")
    assert enrich_at(server, str(src), "-o", str(tmp_path / "c.csv"),
                     "--config", str(config)).exit_code == 3  # fmt: skip
    assert server.stats.requests == 8
    assert "--uncertain-retries" in run("enrich", "--help").output


def test_the_xlsx_summary_sheet_shows_possibly_billed_only_when_there_were_any(
    tmp_path: Path, sandbox: Callable[..., Served], enrich_at: Run
) -> None:
    src = _people(tmp_path, 2)
    label = "possibly billed: replies lost after sending (run)"

    lossy, healthy = sandbox(drop_rate=1.0), sandbox()
    assert enrich_at(lossy, str(src), "-o", str(tmp_path / "a.xlsx")).exit_code == 3
    assert enrich_at(healthy, str(src), "-o", str(tmp_path / "b.xlsx"),
                     "--state", str(tmp_path / "other.sqlite3")).exit_code == 0  # fmt: skip

    lost = _summary_rows(tmp_path / "a.xlsx")
    assert lost[label] == lossy.stats.requests == 4 and lost["billed (run)"] == 0
    assert label not in _summary_rows(tmp_path / "b.xlsx")


def _summary_rows(path: Path) -> dict[str, object]:
    sheet = openpyxl.load_workbook(path)["Summary"]
    return {str(a): b for a, b, *_ in sheet.iter_rows(values_only=True) if a is not None}

"""A journal that stops taking answers mid-run: the message says what happened, what was kept,
what was lost (paid answers included) and what to do, not just "disk I/O error" (issue 10)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from click.testing import Result

from batch_enricher.errors import JournalError
from batch_enricher.journal import Journal
from batch_enricher.models import Answer, Status
from tests.conftest import Served, fast, person, write_csv

CONCURRENCY = 4
KEPT = 3  # answers the journal takes before it fails


def test_a_journal_write_failure_says_what_was_lost_and_what_to_do(
    tmp_path: Path,
    sandbox: Callable[..., Served],
    run: Callable[..., Result],
    state: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = sandbox(latency_ms=5)
    src = write_csv(tmp_path / "in.csv", [list(person(i)) for i in range(60)])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    # What a killed earlier run left: swept at the start of this run, which writes nothing.
    (out_dir / ".o.csv.batch-enricher-dead0000.tmp").write_text("王小明", encoding="utf-8")
    real_put_many = Journal.put_many
    kept: list[Answer] = []
    refused: list[Answer] = []

    def failing_put_many(self: Journal, items: Iterable[tuple[bytes, Answer]]) -> None:
        batch = list(items)  # answers arriving together share one commit (groupcommit.py)
        if len(kept) >= KEPT:
            refused.extend(answer for _, answer in batch)
            raise JournalError(f"cannot write the journal {state}: disk I/O error")
        kept.extend(answer for _, answer in batch)
        real_put_many(self, batch)

    monkeypatch.setattr(Journal, "put_many", failing_put_many)

    result = run("enrich", str(src), "-o", str(out_dir / "o.csv"), "--key", "k",
                 "--endpoint", server.url, "--concurrency", str(CONCURRENCY), *fast())  # fmt: skip

    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    message = errors[0]
    billed = sum(answer.status is Status.OK for answer in refused)
    assert refused, "the failure happened"
    match = re.fullmatch(
        rf"Error: cannot write the journal {re.escape(str(state))}: disk I/O error\. "
        r"Nothing more was sent and no output was written\. Answers already in the journal are "
        rf"kept; lost: {billed} billed answer\(s\) that arrived but could not be stored, and up "
        r"to (\d+) request\(s\) in flight, abandoned \(they may have been billed\)\. Free disk "
        r"space or fix the journal folder's permissions, then rerun the same command: it asks "
        r"only for people whose answer is not in the journal",
        message,
    )
    assert match is not None, message
    abandoned = int(match.group(1))
    assert abandoned < CONCURRENCY, "the worker that failed is not in flight any more"
    # Every request the server saw is kept, refused (counted above) or within "up to N".
    assert server.stats.requests <= len(kept) + len(refused) + abandoned
    assert os.listdir(out_dir) == [], "no output, no temporary file, not even an old one"

"""The write pass's journal look-ups against --max-age, end to end."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from batch_enricher import client as client_mod
from batch_enricher import runner as runner_mod
from batch_enricher.journal import Journal
from batch_enricher.models import Answer, Status
from batch_enricher.runner import EnrichOptions, enrich
from batch_enricher.validate import check
from tests.conftest import Served, person, read_csv, write_csv


def _options(tmp_path: Path, server: Served | None, **extra: object) -> EnrichOptions:
    src = write_csv(tmp_path / "in.csv", [list(person(i)) for i in range(6)])
    return EnrichOptions(
        inputs=[src],
        output=tmp_path / "o.csv",
        key="k",
        endpoint=server.url if server else "http://127.0.0.1:9/unused",
        qps=500,
        state=tmp_path / "j.sqlite3",
        handle_signals=False,
        **extra,  # type: ignore[arg-type]
    )


def test_answers_paid_for_in_this_run_are_written_even_if_the_clock_stepped_back(
    tmp_path: Path, sandbox: Callable[..., Served], monkeypatch: pytest.MonkeyPatch
) -> None:
    # --max-age 0, and NTP steps the clock back a few seconds mid-run: the answers just paid
    # for carry a queried_at before the run's cutoff. They must still reach the output, or the
    # rows say `skipped` and the rerun the user is told to make pays for everyone again.
    server = sandbox()
    monkeypatch.setattr(
        client_mod,
        "now_iso",
        lambda: datetime.fromtimestamp(time.time() - 5).astimezone().isoformat("T", "seconds"),
    )

    summary = enrich(_options(tmp_path, server, max_age=0.0))

    assert server.stats.billed == summary.billed > 0
    statuses = Counter(r["status"] for r in read_csv(tmp_path / "o.csv"))
    assert statuses["skipped"] == 0, statuses
    assert summary.exit_code == 0


def test_a_dry_run_with_max_age_0_counts_every_person_as_to_send(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An answer from earlier in the same wall-clock second is still older than --max-age 0:
    # planning says it would be asked again, and the rows must say so too, not `ok`.
    whole = float(int(time.time()))
    options = _options(tmp_path, None, max_age=0.0, dry_run=True)
    with Journal.open(options.state or tmp_path / "j.sqlite3") as journal:
        for i in range(6):
            verdict = check(*person(i))
            assert not isinstance(verdict, Exception)
            queried_at = datetime.fromtimestamp(whole).astimezone().isoformat("T", "seconds")
            answer = Answer(Status.OK, 0, "成功", f"JH{i}", "16", "17", "38", queried_at)
            journal.put(journal.key(verdict), answer)  # type: ignore[arg-type]

    # The runner's clock half a second after those answers.
    clock = SimpleNamespace(time=lambda: whole + 0.5, monotonic=time.monotonic)
    monkeypatch.setattr(runner_mod, "time", clock)

    summary = enrich(options)

    assert summary.to_call == 6 and summary.reused == 0
    assert summary.count(Status.OK) == 0
    assert summary.count(Status.SKIPPED) == 6  # a dry run's "to send"

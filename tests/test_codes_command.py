"""`batch-enricher codes` says what the run really does with a code: the status it writes."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from click.testing import Result

from batch_enricher.sandbox import expected_answer
from tests.conftest import Served, person, read_csv, write_csv


def _codes_status(run: Callable[..., Result], code: int) -> str:
    output = run("codes").output
    match = re.search(rf"(?m)^  {code} +(\w+) ", output)
    assert match, output
    return match.group(1)


def test_codes_gives_the_status_a_persisting_10012_leaves_on_its_row(
    tmp_path: Path,
    sandbox: Callable[..., Served],
    enrich_at: Callable[..., Result],
    run: Callable[..., Result],
) -> None:
    server = sandbox(quota=1)
    people = [p for p in map(person, range(40)) if expected_answer(*p)[0] == 0][:3]
    src = write_csv(tmp_path / "in.csv", [list(p) for p in people])
    out = tmp_path / "out.csv"

    result = enrich_at(server, str(src), "-o", str(out), "--max-retries", "1", "--concurrency", "1")

    assert result.exit_code == 3, result.output
    statuses = {row["error_code"]: row["status"] for row in read_csv(out) if row["error_code"]}
    assert "10012" in statuses, statuses
    assert _codes_status(run, 10012) == statuses["10012"]

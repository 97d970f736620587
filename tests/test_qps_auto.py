"""`--qps auto` end to end: flag, environment and config; the summary says what it found."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from batch_enricher.autorate import RateFound
from batch_enricher.report import format_summary
from batch_enricher.summary import RunSummary
from tests.conftest import Served, person, read_csv, write_csv

Run = Callable[..., Result]

QUICK_RETRIES = ("--retry-initial", "0.005", "--retry-max", "0.05")


def _enrich(run: Run, server: Served, src: Path, tmp_path: Path, *extra: str) -> Result:
    """`enrich src` against `server`, to tmp_path/out.csv and tmp_path/summary.json."""
    return run(
        "enrich",
        str(src),
        "-o",
        str(tmp_path / "out.csv"),
        "--key",
        "k",
        "--endpoint",
        server.url,
        "--summary-json",
        str(tmp_path / "summary.json"),
        *extra,
    )


def test_auto_finds_the_sandbox_limit_and_reports_it(
    tmp_path: Path, sandbox: Callable[..., Served], run: Run
) -> None:
    server = sandbox(qps_limit=4)
    people = [person(i) for i in range(16)]
    src = write_csv(tmp_path / "in.csv", [list(p) for p in people])
    summary = tmp_path / "summary.json"

    result = _enrich(run, server, src, tmp_path, "--qps", "auto", *QUICK_RETRIES)

    assert result.exit_code == 0, result.output
    assert "--qps auto:" in result.output
    doc = json.loads(summary.read_text(encoding="utf-8"))
    # Generous bounds only: how many 10011s it takes depends on this machine's timing.
    assert 1.0 <= doc["rate_found"] <= 4.0
    assert {row["status"] for row in read_csv(tmp_path / "out.csv")} <= {"ok", "rejected"}
    assert max(server.stats.billed_by_identity.values()) == 1
    assert doc["rate_limited"] == server.stats.codes[10011]


def test_auto_never_exceeds_max_qps(
    tmp_path: Path, sandbox: Callable[..., Served], run: Run
) -> None:
    server = sandbox()  # no limit at all: only --max-qps holds it back
    src = write_csv(tmp_path / "in.csv", [list(person(i)) for i in range(8)])
    summary = tmp_path / "summary.json"

    result = _enrich(run, server, src, tmp_path, "--qps", "AUTO", "--max-qps", "3")

    assert result.exit_code == 0, result.output
    assert server.stats.max_per_second() <= 3
    assert json.loads(summary.read_text(encoding="utf-8"))["rate_found"] <= 3


@pytest.mark.parametrize("how", ["env", "config"])
def test_auto_from_the_environment_or_the_config_file(
    tmp_path: Path, sandbox: Callable[..., Served], run: Run, how: str
) -> None:
    server = sandbox()
    src = write_csv(tmp_path / "in.csv", [list(person(1))])
    config = tmp_path / "c.toml"
    config.write_text(
        f'endpoint = "{server.url}"\nkey = "k"\n' + ('qps = "auto"\n' if how == "config" else ""),
        encoding="utf-8",
    )
    env = {"BATCH_ENRICHER_QPS": "auto"} if how == "env" else {}
    summary = tmp_path / "summary.json"

    result = run(
        "enrich",
        str(src),
        "--config",
        str(config),
        "-o",
        str(tmp_path / "out.csv"),
        "--summary-json",
        str(summary),
        env=env,
    )

    assert result.exit_code == 0, result.output
    assert "--qps auto: too few requests to learn the account's limit" in result.output
    assert json.loads(summary.read_text(encoding="utf-8"))["rate_found"] is None


def test_a_fixed_qps_reports_no_rate_found() -> None:
    doc = RunSummary().to_json()
    assert doc["rate_found"] is None  # the key is always there, for scripts
    assert "--qps auto" not in format_summary(RunSummary(elapsed_s=1.0))


@pytest.mark.parametrize("value", ["fast", "0", "-1", "inf", "nan", ""])
def test_a_bad_qps_is_a_usage_error(tmp_path: Path, run: Run, value: str) -> None:
    src = write_csv(tmp_path / "in.csv", [list(person(1))])
    result = run("enrich", str(src), "--sandbox", "--qps", value)
    assert result.exit_code == 2
    assert "nor 'auto'" in result.output


def test_a_bad_qps_in_the_config_names_the_file(tmp_path: Path, run: Run) -> None:
    config = tmp_path / "c.toml"
    config.write_text('qps = "automatic"\n', encoding="utf-8")
    src = write_csv(tmp_path / "in.csv", [list(person(1))])
    result = run("enrich", str(src), "--sandbox", "--config", str(config))
    assert result.exit_code == 1
    assert f"{config}: qps:" in result.output


@pytest.mark.parametrize(
    ("found", "rate_limited", "says"),
    [
        (RateFound(38.8, True, 100.0), 7, "settled at 38.8 requests/s, just under the account's"),
        (RateFound(38.8, True, 100.0), 7, "give --qps 38.8 to start there next time"),
        (RateFound(100.0, False, 100.0), 0, "reached the --max-qps ceiling of 100 requests/s"),
        (RateFound(16.0, False, 100.0), 0, "took 16 requests/s without a 10011"),
        (RateFound(None, False, 100.0), 0, "too few requests to learn the account's limit"),
    ],
)
def test_the_summary_says_what_auto_found(found: RateFound, rate_limited: int, says: str) -> None:
    summary = RunSummary(rate_found=found, rate_limited=rate_limited, elapsed_s=1.0)
    text = format_summary(summary)
    assert says in text
    assert "a lower --qps would match" not in text  # auto mode: 10011s are how it finds out
    assert summary.to_json()["rate_found"] == found.rate

"""Bad paths, values and settings: one clear line and the contract's exit code, before anything
is sent, and never a traceback."""

from __future__ import annotations

import json
import re
import socket
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from batch_enricher import cli as cli_module
from tests.conftest import Served, person, write_csv

Run = Callable[..., Result]


def _input(tmp_path: Path, count: int = 3) -> Path:
    return write_csv(tmp_path / "in.csv", [list(person(i)) for i in range(count)])


def _requests(server: Served) -> int:
    """Requests the server saw, asked over HTTP: this also makes sure its loop is running, which
    the `serve_app` fixture's stop() needs (stopped before `run_forever` starts, it hangs 10 s)."""
    stats_url = server.url.replace("/financeInfo/query", "/_stats")
    with urllib.request.urlopen(stats_url, timeout=10) as reply:
        return int(json.load(reply)["requests"])


def _one_clear_line(result: Result) -> None:
    assert "Traceback" not in result.output
    assert "unexpected" not in result.output
    assert result.output.strip().splitlines()[-1].startswith("Error: ")


# --- unexpected errors ----------------------------------------------------------------------


def test_an_unexpected_error_shows_no_traceback_unless_asked(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def boom(*_args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("batch_enricher.runner.enrich", boom)
    monkeypatch.delenv("BATCH_ENRICHER_DEBUG", raising=False)
    argv = ["batch-enricher", "enrich", str(_input(tmp_path)), "--sandbox"]
    argv += ["--state", str(tmp_path / "j.sqlite3")]
    for extra, shown in (([], False), (["-v"], True)):
        monkeypatch.setattr(sys, "argv", [*argv, *extra])
        with pytest.raises(SystemExit) as exit_info:
            cli_module.main()
        assert exit_info.value.code == 1
        err = capsys.readouterr().err
        assert "Error: unexpected RuntimeError: boom" in err
        assert ("Traceback" in err) is shown, err


# --- paths the run writes besides its outputs ------------------------------------------------


def test_log_file_in_a_missing_folder_is_exit_1_before_anything_is_sent(
    tmp_path: Path, sandbox: Callable[..., Served], enrich_at: Callable[..., Result]
) -> None:
    server = sandbox()
    result = enrich_at(server, str(_input(tmp_path)), "--log-file", str(tmp_path / "no" / "x.log"))
    assert result.exit_code == 1, result.output
    _one_clear_line(result)
    assert "x.log" in result.output
    assert _requests(server) == 0


def test_summary_json_in_a_missing_folder_is_exit_1_before_anything_is_sent(
    tmp_path: Path, sandbox: Callable[..., Served], enrich_at: Callable[..., Result]
) -> None:
    server = sandbox()
    summary = tmp_path / "no" / "run.json"
    result = enrich_at(server, str(_input(tmp_path)), "--summary-json", str(summary))
    assert result.exit_code == 1, result.output
    _one_clear_line(result)
    assert _requests(server) == 0, "paid for a run whose summary cannot be written"


def test_a_missing_output_folder_in_o_is_exit_1_before_anything_is_sent(
    tmp_path: Path, sandbox: Callable[..., Served], enrich_at: Callable[..., Result]
) -> None:
    server = sandbox()
    result = enrich_at(server, str(_input(tmp_path)), "-o", str(tmp_path / "no" / "out.csv"))
    assert result.exit_code == 1, result.output
    _one_clear_line(result)
    assert f"folder does not exist: {tmp_path / 'no'}" in result.output
    assert _requests(server) == 0, "paid for answers that could not be written"


def test_a_missing_output_dir_is_created_and_holds_the_output_and_summary(
    tmp_path: Path, sandbox: Callable[..., Served], enrich_at: Callable[..., Result]
) -> None:
    server = sandbox()
    folder = tmp_path / "enriched" / "2024"
    src = str(_input(tmp_path))
    summary = folder / "run.json"
    result = enrich_at(server, src, "--output-dir", str(folder), "--summary-json", str(summary))
    assert result.exit_code == 0, result.output
    assert folder.stat().st_mode & 0o777 == 0o700
    assert (folder / "in.enriched.csv").is_file() and summary.is_file()


def test_a_missing_input_is_reported_as_missing_not_as_an_output_problem(
    tmp_path: Path, run: Run
) -> None:
    result = run("enrich", str(tmp_path / "no" / "in.csv"), "--sandbox")
    assert result.exit_code == 1, result.output
    _one_clear_line(result)
    assert "no such file" in result.output


@pytest.mark.parametrize("flag", ["--summary-json", "--log-file"])
def test_summary_and_log_never_overwrite_an_input_or_the_output(
    tmp_path: Path, run: Run, flag: str
) -> None:
    src = _input(tmp_path)
    out = tmp_path / "out.csv"
    out.write_text("earlier output\n", encoding="utf-8")
    before = src.read_bytes()
    for target in (src, out):
        result = run("enrich", str(src), "--sandbox", "-o", str(out), flag, str(target))
        assert result.exit_code == 1, result.output
        _one_clear_line(result)
    assert src.read_bytes() == before
    assert out.read_text(encoding="utf-8") == "earlier output\n"


def test_validate_summary_json_in_a_missing_folder_or_on_the_input(
    tmp_path: Path, run: Run
) -> None:
    src = _input(tmp_path)
    before = src.read_bytes()
    for target in (tmp_path / "no" / "v.json", src):
        result = run("validate", str(src), "--summary-json", str(target))
        assert result.exit_code == 1, result.output
        _one_clear_line(result)
    assert src.read_bytes() == before


# --- values -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "endpoint", ["notaurl", "ftp://example.com/q", "http://[::1", "https:///financeInfo/query"]
)
def test_an_endpoint_that_is_not_an_http_url_is_a_usage_error(
    tmp_path: Path, run: Run, endpoint: str
) -> None:
    result = run("enrich", str(_input(tmp_path)), "--key", "k", "--endpoint", endpoint)
    assert result.exit_code == 2, result.output
    assert "--endpoint" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    "flags", [["--qps", "inf"], ["--qps", "nan"], ["--timeout", "inf"], ["--retry-max", "nan"]]
)
def test_numbers_must_be_finite(tmp_path: Path, run: Run, flags: list[str]) -> None:
    result = run("enrich", str(_input(tmp_path)), "--sandbox", *flags)
    assert result.exit_code == 2, result.output
    assert flags[0] in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    "line",
    [
        'qps = "fast"',
        "qps = inf",
        'headers = "fr"',
        'max_age = "forever"',
        'escape_formulas = "no"',
        'endpoint = "ftp://example.com/q"',
    ],
)
def test_a_bad_value_in_the_config_file_is_a_config_error_naming_the_file(
    tmp_path: Path, run: Run, line: str
) -> None:
    config = tmp_path / "settings.toml"
    config.write_text(line + "\n", encoding="utf-8")
    result = run("enrich", str(_input(tmp_path)), "--sandbox", "--config", str(config))
    assert result.exit_code == 1, result.output
    _one_clear_line(result)
    name = line.split(" =")[0]
    assert "settings.toml" in result.output and name in result.output


def test_the_example_config_loads_with_every_setting_uncommented(tmp_path: Path, run: Run) -> None:
    example = (Path(__file__).resolve().parent.parent / "config.example.toml").read_text("utf-8")
    # Uncomment every `# name = value` line and the [bands] table, as a user would.
    text = re.sub(r"(?m)^# (\w+ = |\[bands\]|  +)", r"\1", example)
    text = text.replace('"/var/lib/batch-enricher/journal.sqlite3"', repr(str(tmp_path / "j")))
    config = tmp_path / "c.toml"
    config.write_text(text, encoding="utf-8")
    src = write_csv(tmp_path / "in.csv", [list(person(1))], ("客户名称", "证件号", "联系方式"))
    result = run("enrich", str(src), "--dry-run", "--config", str(config), "--encoding", "utf-8")
    assert result.exit_code == 0, result.output


# --- sandbox ----------------------------------------------------------------------------------


def test_sandbox_on_a_port_in_use_is_one_clear_line(run: Run) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run("sandbox", "--port", str(port))
    assert result.exit_code == 1, result.output
    _one_clear_line(result)
    assert "in use" in result.output and "--port" in result.output


@pytest.mark.parametrize(
    "flags", [["--latency-ms", "inf"], ["--qps-limit", "nan"], ["--fault-rate", "nan"]]
)
def test_sandbox_numbers_must_be_finite(run: Run, flags: list[str]) -> None:
    result = run("sandbox", "--port", "0", *flags)
    assert result.exit_code == 2, result.output
    assert flags[0] in result.output


def test_the_journal_is_never_an_input_or_the_output(tmp_path: Path, run: Run) -> None:
    src = _input(tmp_path)
    out = tmp_path / "out.csv"
    for target in (out, src):
        result = run("enrich", str(src), "--sandbox", "-o", str(out), "--state", str(target))
        assert result.exit_code == 1, result.output
        _one_clear_line(result)
    assert not out.exists(), "a journal at the output's path is replaced by the output"

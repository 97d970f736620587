"""Bad paths, values and settings: one clear line and the contract's exit code, before anything
is sent, and never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from batch_enricher import cli as cli_module
from tests.conftest import person, write_csv

Run = Callable[..., Result]


def _input(tmp_path: Path, count: int = 3) -> Path:
    return write_csv(tmp_path / "in.csv", [list(person(i)) for i in range(count)])


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

"""Start-up stays light: the commands that never call the API never import aiohttp.

aiohttp was 75-80 % of `batch-enricher --help`'s start-up (its connector builds SSL contexts at
import). Each check runs in a fresh interpreter, since this one has long imported everything.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import person, write_csv

ROOT = Path(__file__).resolve().parent.parent

_CHECK = """
import sys
{run}
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("aiohttp", "openpyxl", "pandas"))
print("HEAVY:" + ",".join(heavy))
"""

_COMMAND = """
from batch_enricher.cli import cli
try:
    cli.main({argv!r}, prog_name="batch-enricher", standalone_mode=False)
except SystemExit:
    pass
"""


def _heavy_modules(run: str) -> list[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", _CHECK.format(run=run)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=True,
    )
    line = next(text for text in done.stdout.splitlines() if text.startswith("HEAVY:"))
    return [name for name in line.removeprefix("HEAVY:").split(",") if name]


def test_importing_the_cli_does_not_import_aiohttp() -> None:
    assert _heavy_modules("import batch_enricher.cli") == []


@pytest.mark.parametrize("argv", [["--help"], ["enrich", "--help"], ["codes"]])
def test_commands_that_never_call_the_api_do_not_import_aiohttp(argv: list[str]) -> None:
    assert _heavy_modules(_COMMAND.format(argv=argv)) == []


def test_validate_does_not_import_aiohttp(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", [list(person(1))])
    assert _heavy_modules(_COMMAND.format(argv=["validate", str(src)])) == []


def test_the_check_would_see_aiohttp() -> None:
    # The probe itself works: a module that does import aiohttp is caught.
    assert "aiohttp" in _heavy_modules("import batch_enricher.client")

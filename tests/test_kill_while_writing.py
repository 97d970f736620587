"""kill -9 while the output is being written, then one successful rerun: nothing personal is left
behind, neither beside the output nor in $TMPDIR (issue 10, item 5).

The run is a real process with a private $TMPDIR. It is frozen (SIGSTOP) the moment its
temporary files show up, checked to be still unfinished, then killed: no timing is assumed. Should
a busy machine let it finish first, the attempt is repeated on a larger input.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import person, write_csv

REPO = Path(__file__).resolve().parent.parent
#: Rows per first attempt: CSV writes ~10x faster than XLSX, so it gets more to stay busy.
_ROWS = {".csv": 150_000, ".xlsx": 6_000}
_ATTEMPTS = 3


def _env(tmpdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["TMPDIR"] = str(tmpdir)
    env["PYTHONPATH"] = str(REPO)
    return env


def _argv(src: Path, out: Path, state: Path) -> list[str]:
    return [sys.executable, "-m", "batch_enricher", "enrich", str(src), "-o", str(out),
            "--sandbox", "--state", str(state), "-q"]  # fmt: skip


def _files(*folders: Path) -> list[str]:
    return sorted(str(folder / name) for folder in folders for name in os.listdir(folder))


def _kill_while_writing(src: Path, out: Path, state: Path, tmpdir: Path, spills: int) -> bool:
    """Run, freeze as soon as `spills` temp files exist, then kill -9; True if caught mid-write."""
    proc = subprocess.Popen(
        _argv(src, out, state), cwd=REPO, env=_env(tmpdir),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        # The output file itself, a temp file beside it and (XLSX) openpyxl's row spill file,
        # wherever it goes: the old code put that one in $TMPDIR.
        while len(_files(out.parent, tmpdir)) < spills:
            if proc.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        proc.send_signal(signal.SIGSTOP)
        return proc.poll() is None and not out.exists()
    finally:
        proc.kill()
        proc.wait(30)


@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
def test_kill_9_while_writing_then_a_rerun_leaves_no_temporary_file(
    tmp_path: Path, suffix: str
) -> None:
    people = [list(person(i)) for i in range(5)]  # few people: the run is all writing
    state = tmp_path / "state" / "journal.sqlite3"
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    spills = 2 if suffix == ".xlsx" else 1
    rows = _ROWS[suffix]
    for attempt in range(_ATTEMPTS):
        src = write_csv(tmp_path / f"in{attempt}.csv", [people[i % 5] for i in range(rows)])
        out_dir = tmp_path / f"out{attempt}"
        out_dir.mkdir()
        out = out_dir / f"customers{suffix}"
        if _kill_while_writing(src, out, state, tmpdir, spills):
            break
        rows *= 2
    else:
        pytest.fail(f"the run finished writing {_ATTEMPTS} times before it could be stopped")
    left = _files(out_dir, tmpdir)
    assert len(left) == spills, f"killed mid-write, it leaves its temporary files: {left}"

    rerun = subprocess.run(
        _argv(src, out, state), cwd=REPO, env=_env(tmpdir), capture_output=True, timeout=300
    )

    assert rerun.returncode == 0, rerun.stderr.decode("utf-8", "replace")
    assert os.listdir(out_dir) == [out.name], "the rerun swept what the killed run left"
    assert os.listdir(tmpdir) == [], "nothing of either run in $TMPDIR"

"""Issue 11, acceptance 3: damaged CSV, XLSX and XLS files never crash `validate` or a dry run.

A seeded generator cuts good files at random offsets, flips bytes, and damages the entries of
an .xlsx package (cut, corrupted, missing, or with broken XML). Each file goes through
`batch-enricher validate` and `enrich --dry-run`: the exit code is 0, 1 or 3, the only
exception is click's SystemExit, and nothing says "Traceback" or asks to report a bug. A few
cases run as real subprocesses too, where a Rust panic would print to the terminal itself.

The cases are fixed by the seed (`FUZZ_SEED`), so a failure reproduces; `FUZZ_CASES` in the
environment runs more of them (the suite runs a few seconds' worth).
"""

from __future__ import annotations

import io
import os
import random
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import openpyxl
import pytest
import xlwt  # type: ignore[import-untyped]
from click.testing import CliRunner

from batch_enricher.cli import cli
from tests.conftest import person

FUZZ_SEED = 20240111
CASES = int(os.environ.get("FUZZ_CASES", "60"))
SUBPROCESS_CASES = 4
ROOT = Path(__file__).resolve().parent.parent
ALLOWED_EXIT = {0, 1, 3}
BAD_WORDS = ("Traceback", "please report", "unexpected", "panicked", "PanicException")

HEADER = ["2024年1月客户名单"], ["姓名", "身份证号", "手机号", "备注"]


def _rows() -> list[list[object]]:
    rows: list[list[object]] = [list(HEADER[0]), list(HEADER[1])]
    for i in range(40):
        name, idcard, mobile = person(i)
        rows.append([name, idcard, int(mobile) if i % 3 == 0 else mobile, f"客户{i} VIP"])
        if i % 11 == 5:
            rows.append([])
    return rows


def _csv(encoding: str) -> bytes:
    lines = [",".join(str(c) for c in row) for row in _rows()]
    return ("\r\n".join(lines) + "\r\n").encode(encoding)


def _xlsx() -> bytes:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "客户"
    for row in _rows():
        sheet.append(row)
    sheet.merge_cells("A1:D1")
    book.create_sheet("说明")["A1"] = "notes"
    buffer = io.BytesIO()
    book.save(buffer)
    return _repacked(_entries(buffer.getvalue()))


def _entries(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as package:
        return {name: package.read(name) for name in package.namelist()}


def _repacked(entries: dict[str, bytes]) -> bytes:
    """A package of the entries with no clock in it (fixed entry times, no core properties'
    dates), so the same seed makes the same bytes on every run."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as out:
        for name, body in entries.items():
            if name == "docProps/core.xml":
                body = re.sub(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", b"2024-01-01T00:00:00Z", body)
            out.writestr(zipfile.ZipInfo(name, (2024, 1, 1, 0, 0, 0)), body, zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def _xls() -> bytes:
    book = xlwt.Workbook()
    sheet = book.add_sheet("客户")
    for r, row in enumerate(_rows()):
        for c, value in enumerate(row):
            sheet.write(r, c, value)
    book.add_sheet("说明").write(0, 0, "notes")
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


BASES: dict[str, Callable[[], bytes]] = {
    ".csv": lambda: _csv("utf-8"),
    ".txt": lambda: _csv("gbk"),
    ".xlsx": _xlsx,
    ".xls": _xls,
}


# --- damage ----------------------------------------------------------------------------------


def _cut(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(1, len(data))]


def _flip(rng: random.Random, data: bytes) -> bytes:
    damaged = bytearray(data)
    for _ in range(rng.choice((1, 2, 8, 64))):
        damaged[rng.randrange(len(damaged))] = rng.randrange(256)
    return bytes(damaged)


def _splice(rng: random.Random, data: bytes) -> bytes:
    """A run of bytes removed or repeated somewhere in the middle."""
    start = rng.randrange(len(data))
    length = rng.randrange(1, 512)
    if rng.random() < 0.5:
        return data[:start] + data[start + length :]
    return data[:start] + data[start : start + length] * 2 + data[start + length :]


def _zip_entry(rng: random.Random, data: bytes) -> bytes:
    """One entry of the package cut, garbled, emptied, dropped, or given broken XML."""
    entries = _entries(data)
    victim = rng.choice(sorted(entries))
    how = rng.choice(("cut", "garble", "empty", "drop", "xml", "utf16"))
    body = entries[victim]
    if how == "cut":
        entries[victim] = body[: rng.randrange(max(len(body), 1))]
    elif how == "garble":
        entries[victim] = _flip(rng, body) if body else b"\xff"
    elif how == "empty":
        entries[victim] = b""
    elif how == "drop":
        del entries[victim]
    elif how == "xml":
        entries[victim] = body.replace(b">", b"", 1) + b"<unclosed"
    else:
        entries[victim] = body.decode("utf-8", "replace").encode("utf-16")
    return _repacked(entries)


def _zip_bytes(rng: random.Random, data: bytes) -> bytes:
    """Bytes flipped inside the compressed data of one entry (its CRC then fails)."""
    with zipfile.ZipFile(io.BytesIO(data)) as package:
        info = rng.choice(package.infolist())
    start = info.header_offset + 30 + len(info.filename.encode())
    damaged = bytearray(data)
    for _ in range(rng.choice((1, 4))):
        offset = start + rng.randrange(max(info.compress_size, 1))
        damaged[min(offset, len(damaged) - 1)] ^= 1 << rng.randrange(8)
    return bytes(damaged)


DAMAGE: dict[str, tuple[Callable[[random.Random, bytes], bytes], ...]] = {
    ".csv": (_cut, _flip, _splice),
    ".txt": (_cut, _flip, _splice),
    ".xlsx": (_cut, _flip, _zip_entry, _zip_entry, _zip_bytes, _zip_bytes),
    ".xls": (_cut, _flip, _splice),
}


def _cases(count: int, seed: int = FUZZ_SEED) -> Iterator[tuple[str, str, bytes]]:
    """(case id, suffix, damaged bytes), the same ones for the same seed."""
    rng = random.Random(seed)
    bases = {suffix: make() for suffix, make in BASES.items()}
    for number in range(count):
        suffix = rng.choice(sorted(bases))
        damage = rng.choice(DAMAGE[suffix])
        yield f"{number}-{damage.__name__.strip('_')}{suffix}", suffix, damage(rng, bases[suffix])


# --- the commands ----------------------------------------------------------------------------


def _commands(path: Path, state: Path) -> list[list[str]]:
    return [
        ["validate", str(path)],
        ["enrich", str(path), "--dry-run", "--state", str(state)],
    ]


def test_damaged_files_give_an_exit_code_and_one_message_never_a_traceback(
    tmp_path: Path,
) -> None:
    runner = CliRunner()
    state = tmp_path / "state" / "journal.sqlite3"
    seen: set[int] = set()
    for case, suffix, data in _cases(CASES):
        path = tmp_path / f"input{suffix}"
        path.write_bytes(data)
        for args in _commands(path, state):
            result = runner.invoke(cli, args, catch_exceptions=True)
            where = f"case {case}: {args[0]}"
            if result.exception is not None and not isinstance(result.exception, SystemExit):
                raise AssertionError(f"{where} raised {result.exception!r}") from (result.exception)
            assert result.exit_code in ALLOWED_EXIT, (where, result.exit_code, result.output)
            assert not any(word in result.output for word in BAD_WORDS), (where, result.output)
            if result.exit_code == 1:
                said = result.output.strip().splitlines()
                assert said and said[-1].startswith("Error: "), (where, result.output)
            seen.add(result.exit_code)
    assert 1 in seen and seen & {0, 3}, "the cases must include readable and refused files"


@pytest.mark.parametrize("case", range(SUBPROCESS_CASES))
def test_damaged_files_as_a_user_runs_the_command(tmp_path: Path, case: int) -> None:
    # A subprocess sees what CliRunner cannot: a panic message Rust writes to fd 2 itself.
    (name, suffix, data), *_ = _cases(1, seed=FUZZ_SEED + 1 + case)
    path = tmp_path / f"input{suffix}"
    path.write_bytes(data)
    env = dict(os.environ, PYTHONPATH=str(ROOT), RUST_BACKTRACE="1")
    for args in _commands(path, tmp_path / "journal.sqlite3"):
        done = subprocess.run(
            [sys.executable, "-m", "batch_enricher", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=120,
            check=False,
        )
        said = done.stdout + done.stderr
        assert done.returncode in ALLOWED_EXIT, (name, args[0], said)
        assert not any(word in said for word in BAD_WORDS), (name, args[0], said)


def test_the_cases_are_the_same_for_the_same_seed() -> None:
    first = [(case, data) for case, _, data in _cases(8)]
    assert first == [(case, data) for case, _, data in _cases(8)]
    assert len({data for _, data in first}) == len(first)

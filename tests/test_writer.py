"""Tests for batch_enricher.writer: formula safety, typed XLSX, atomic private output."""

from __future__ import annotations

import csv
import datetime
import os
import stat
import subprocess
import sys
import tempfile
import tracemalloc
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import openpyxl
import pytest
from openpyxl.worksheet._writer import ALL_TEMP_FILES

from batch_enricher import writer as writer_mod
from batch_enricher.errors import OutputError, UnsupportedFileError
from batch_enricher.models import Status
from batch_enricher.writer import (
    Cell,
    SummarySheet,
    open_writer,
    sweep_temporary_files,
    write_text_atomically,
)

HEADERS = ["name", "idcard", "mobile", "amount", "status"]
DANGEROUS = ["=1+1", "+1", "-2+3", "@SUM(A1)", "\tx", "\rx", "\nx"]


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _write(path: Path, rows: Sequence[Sequence[Cell]], **kwargs: object) -> None:
    summary = kwargs.pop("summary", None)
    with open_writer(path, HEADERS, **kwargs) as writer:  # type: ignore[arg-type]
        for row in rows:
            writer.write_row(row)
        writer.commit(summary)  # type: ignore[arg-type]


def _read_csv(path: Path, delimiter: str = ",") -> list[list[str]]:
    with path.open(encoding="utf-8-sig", newline="") as stream:
        return list(csv.reader(stream, delimiter=delimiter))


def _leftovers(directory: Path, keep: str) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name != keep)


# --- CSV / TSV ---------------------------------------------------------------------------------


def test_csv_starts_with_bom_and_uses_crlf(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    _write(out, [["王小明", "11010119900307803X", "13812345678", "1", "ok"]])
    raw = out.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    assert raw.count(b"\r\n") == 2
    assert _read_csv(out)[1] == ["王小明", "11010119900307803X", "13812345678", "1", "ok"]


def test_csv_cells_are_written_as_text(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    row: list[Cell] = [
        None,
        42,
        1.0,
        2.5,
        True,
        False,
        datetime.date(2024, 1, 2),
        datetime.datetime(2024, 1, 2, 3, 4, 5),
        datetime.time(6, 7),
        1.10101199001011e17,
        Status.REJECTED,
        'a,"b"\nc',
    ]
    _write(out, [row])
    assert _read_csv(out)[1] == [
        "",
        "42",
        "1",
        "2.5",
        "TRUE",
        "FALSE",
        "2024-01-02",
        "2024-01-02T03:04:05",
        "06:07:00",
        # An ID Excel already rounded is not dressed up with invented trailing digits.
        "1.10101199001011e+17",
        "rejected",
        'a,"b"\nc',
    ]


@pytest.mark.parametrize("value", DANGEROUS)
def test_csv_escapes_formula_starts(tmp_path: Path, value: str) -> None:
    out = tmp_path / "out.csv"
    _write(out, [[value, "safe", "-", None, Status.OK]])
    assert _read_csv(out)[1] == ["'" + value, "safe", "'-", "", "ok"]


def test_csv_escapes_headers_and_numbers_stay_plain(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    with open_writer(out, ["=HYPERLINK()", "n"]) as writer:
        writer.write_row([-5, "a-b"])
        writer.commit()
    assert _read_csv(out) == [["'=HYPERLINK()", "n"], ["-5", "a-b"]]


def test_csv_escape_can_be_turned_off(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    _write(out, [DANGEROUS[:5]], escape_formulas=False)
    assert _read_csv(out)[1] == DANGEROUS[:5]


def test_tsv_uses_tabs(tmp_path: Path) -> None:
    out = tmp_path / "out.tsv"
    _write(out, [["a", "b", "c", "d", "=e"]])
    text = out.read_text(encoding="utf-8-sig")
    assert text.splitlines()[1] == "a\tb\tc\td\t'=e"
    assert _read_csv(out, "\t")[0] == HEADERS


# --- XLSX ----------------------------------------------------------------------------------------


def _status_rows() -> list[list[Cell]]:
    return [
        ["=1+1", 110101199003078031, 13812345678, 3.5, "ok"],
        ["+1", "11010119900307803X", "13912345678", 7, Status.INVALID],
        ["@SUM(A1)", None, None, datetime.date(2024, 1, 2), "rejected"],
        ["-2+3", None, None, "#N/A", "failed"],
        ["bell\x07", None, None, None, "skipped"],
    ]


def _xlsx(tmp_path: Path, rows: list[list[Cell]], **kwargs: object) -> openpyxl.Workbook:
    out = tmp_path / "out.xlsx"
    _write(out, rows, text_columns={1, 2}, status_column=4, **kwargs)
    return openpyxl.load_workbook(out)


def test_xlsx_never_writes_formulas(tmp_path: Path) -> None:
    ws = _xlsx(tmp_path, _status_rows()).worksheets[0]
    cells = [cell for row in ws.iter_rows() for cell in row]
    assert [c for c in cells if c.data_type in ("f", "e")] == []
    assert [ws.cell(r, 1).value for r in range(2, 6)] == ["=1+1", "+1", "@SUM(A1)", "-2+3"]
    assert ws["D5"].value == "#N/A"


def test_xlsx_strips_illegal_characters(tmp_path: Path) -> None:
    ws = _xlsx(tmp_path, _status_rows()).worksheets[0]
    assert ws["A6"].value == "bell"


def test_xlsx_id_and_mobile_are_text(tmp_path: Path) -> None:
    ws = _xlsx(tmp_path, _status_rows()).worksheets[0]
    for coordinate, expected in [
        ("B2", "110101199003078031"),
        ("C2", "13812345678"),
        ("B3", "11010119900307803X"),
    ]:
        assert ws[coordinate].value == expected
        assert ws[coordinate].data_type == "s"
        assert ws[coordinate].number_format == "@"


def test_xlsx_numbers_and_dates_stay_typed(tmp_path: Path) -> None:
    ws = _xlsx(tmp_path, _status_rows()).worksheets[0]
    assert ws["D2"].value == 3.5
    assert ws["D3"].value == 7
    assert ws["D2"].data_type == "n"
    assert ws["D4"].is_date
    assert ws["D4"].value == datetime.datetime(2024, 1, 2)


def test_xlsx_long_ints_outside_text_columns_keep_every_digit(tmp_path: Path) -> None:
    ws = _xlsx(tmp_path, [["a", None, None, 123456789012345678, "ok"]]).worksheets[0]
    assert ws["D2"].value == "123456789012345678"


def test_xlsx_big_numbers_excel_holds_stay_numbers(tmp_path: Path) -> None:
    # 15 significant digits, as a spreadsheet's double shows them: a number, as it was read.
    ws = _xlsx(tmp_path, [["a", None, None, 6222021234567890000, "ok"]]).worksheets[0]
    assert ws["D2"].data_type == "n" and float(ws["D2"].value) == float(6222021234567890000)
    assert writer_mod.excel_keeps(-(10**15)) and not writer_mod.excel_keeps(10**15 + 1)


def test_xlsx_floats_come_back_as_the_same_doubles(tmp_path: Path) -> None:
    from python_calamine import CalamineWorkbook

    floats = [3586.1783646399995, 0.1 + 0.2, 1 / 3, 2.5, -1e-300, 1.7976931348623157e308]
    out = tmp_path / "out.xlsx"
    _write(out, [["a", None, None, value, "ok"] for value in floats])
    rows = CalamineWorkbook.from_path(str(out)).get_sheet_by_index(0).to_python()
    assert [row[3] for row in rows[1:]] == floats
    ws = openpyxl.load_workbook(out).worksheets[0]
    assert [ws.cell(r, 4).value for r in range(2, 2 + len(floats))] == floats
    assert {ws.cell(r, 4).data_type for r in range(2, 2 + len(floats))} == {"n"}


def test_xlsx_keeps_a_cr_and_literal_escapes(tmp_path: Path) -> None:
    from python_calamine import CalamineWorkbook

    out = tmp_path / "out.xlsx"
    texts = ["a\rb", "a\r\nb", "_x000D_", "x_x0041_y"]
    _write(out, [[t, None, None, None, "ok"] for t in texts], text_columns={1})
    rows = CalamineWorkbook.from_path(str(out)).get_sheet_by_index(0).to_python()
    assert [row[0] for row in rows[1:]] == texts  # as Excel reads them


def test_xlsx_is_ready_to_use(tmp_path: Path) -> None:
    rows: list[list[Cell]] = [["张三", "1", "2", i, "ok"] for i in range(450)]  # past the sample
    ws = _xlsx(tmp_path, rows).worksheets[0]
    assert ws.freeze_panes == "A2"
    assert ws.auto_filter.ref == "A1:E451"
    assert ws.max_row == 451
    assert all(cell.font.b for cell in ws[1])
    assert ws["A2"].font.b is not True


def test_xlsx_column_widths_count_wide_characters_double(tmp_path: Path) -> None:
    out = tmp_path / "out.xlsx"
    with open_writer(out, ["a", "b", "c"]) as writer:
        writer.write_row(["客户姓名客户姓名客户姓名", "abcdefghijkl", "x" * 500])
        writer.commit()
    dims = openpyxl.load_workbook(out).worksheets[0].column_dimensions
    assert dims["A"].width > dims["B"].width > 8
    assert dims["C"].width <= 60


def test_xlsx_status_fills_differ_by_status(tmp_path: Path) -> None:
    ws = _xlsx(tmp_path, _status_rows()).worksheets[0]
    fill = {ws.cell(r, 5).value: ws.cell(r, 5).fill.fgColor.rgb for r in range(2, 7)}
    assert fill["invalid"] == fill["rejected"]
    assert fill["failed"] == fill["skipped"]
    assert len({fill["ok"], fill["invalid"], fill["failed"]}) == 3
    assert ws["A2"].fill.fill_type is None


def test_xlsx_summary_sheet_with_charts(tmp_path: Path) -> None:
    summary = SummarySheet(
        title="汇总",
        rows=[("rows", 5), ("ok", 1), ("elapsed_s", 0.5)],
        charts=[
            ("range", [("(0,1500]", 3), ("20000+", 1)]),
            ("history", [("(0,6]", 2)]),
        ],
    )
    wb = _xlsx(tmp_path, _status_rows(), summary=summary)
    assert wb.sheetnames[1] == "汇总"
    values = list(wb["汇总"].values)
    assert ("rows", 5) in values
    assert ("elapsed_s", 0.5) in values
    assert ("(0,1500]", 3) in values
    names = zipfile.ZipFile(tmp_path / "out.xlsx").namelist()
    assert {"xl/charts/chart1.xml", "xl/charts/chart2.xml"} <= set(names)


def test_xlsx_summary_is_ignored_for_csv(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    _write(out, [["a", "b", "c", "d", "ok"]], summary=SummarySheet("Summary", [("rows", 1)], []))
    assert len(_read_csv(out)) == 2


# --- atomicity, permissions, errors ---------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
def test_exception_leaves_existing_output_and_no_temp(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"out{suffix}"
    out.write_bytes(b"previous run")
    temps_before = set(ALL_TEMP_FILES)
    with pytest.raises(RuntimeError), open_writer(out, HEADERS) as writer:
        for i in range(300):
            writer.write_row(["x", "y", "z", i, "ok"])
        raise RuntimeError("boom")
    assert out.read_bytes() == b"previous run"
    assert _leftovers(tmp_path, out.name) == []
    # openpyxl's own spill file holds personal data too: it goes as well.
    assert [p for p in ALL_TEMP_FILES if p not in temps_before and os.path.exists(p)] == []


def test_leaving_without_commit_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    with open_writer(out, HEADERS) as writer:
        writer.write_row(["a", "b", "c", "d", "e"])
    assert os.listdir(tmp_path) == []


def test_target_appears_only_at_commit(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    with open_writer(out, HEADERS) as writer:
        writer.write_row(["a", "b", "c", "d", "e"])
        assert not out.exists()
        temps = _leftovers(tmp_path, out.name)
        assert len(temps) == 1  # beside the target, so the rename is atomic
        writer.commit()
    assert _leftovers(tmp_path, out.name) == []
    assert len(_read_csv(out)) == 2


def test_write_after_commit_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    with open_writer(out, HEADERS) as writer:
        writer.commit()
        with pytest.raises(OutputError, match="already committed"):
            writer.write_row(["a"])


@pytest.mark.usefixtures("umask_022")
@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".xlsx"])
def test_output_is_private(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"out{suffix}"
    out.write_bytes(b"old")
    out.chmod(0o644)
    _write(out, [["a", "b", "c", "d", "ok"]])
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_unsupported_extension(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedFileError, match=r"\.csv, \.tsv or \.xlsx"):
        open_writer(tmp_path / "out.xls", HEADERS)
    assert os.listdir(tmp_path) == []


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="directory does not exist"):
        open_writer(tmp_path / "nope" / "out.csv", HEADERS)


def test_unwritable_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> tuple[int, str]:
        raise PermissionError(13, "Permission denied")

    # chmod cannot lock out root (CI often runs as root), so refuse the temp file directly.
    monkeypatch.setattr("batch_enricher.writer.tempfile.mkstemp", refuse)
    with pytest.raises(OutputError, match=r"cannot write to output directory .*Permission denied"):
        open_writer(tmp_path / "out.csv", HEADERS)


# --- temporary files: beside the output, recognisable, swept once dead --------------------------


@pytest.fixture
def private_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A $TMPDIR of the test's own, so anything a writer puts there can be seen."""
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() caches; read $TMPDIR again
    return folder


def _our_temps(directory: Path, target: str) -> list[str]:
    prefix = f".{target}.batch-enricher-"
    return sorted(n for n in os.listdir(directory) if n.startswith(prefix) and n.endswith(".tmp"))


@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
def test_temp_files_lie_beside_the_output_and_never_in_tmpdir(
    tmp_path: Path, private_tmpdir: Path, suffix: str
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / f"o{suffix}"
    with open_writer(out, HEADERS, text_columns={1}) as writer:
        for i in range(500):  # past the XLSX width sample: openpyxl is spilling rows by now
            writer.write_row(["王小明", f"11010119900307{i:04d}", "13812345678", i, "ok"])
        temps = _our_temps(out_dir, out.name)
        assert os.listdir(private_tmpdir) == [], "openpyxl's spill file went to $TMPDIR"
        assert sorted(os.listdir(out_dir)) == temps
        assert len(temps) == (2 if suffix == ".xlsx" else 1)  # the XLSX and openpyxl's spill
        for name in temps:
            assert stat.S_IMODE((out_dir / name).stat().st_mode) == 0o600
        writer.commit(SummarySheet("Summary", [("rows", 500)], [("bands", [("a", 1)])]))
    assert os.listdir(out_dir) == [out.name]
    assert os.listdir(private_tmpdir) == []
    if suffix == ".xlsx":
        assert openpyxl.load_workbook(out).worksheets[0].max_row == 501


@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
def test_abort_leaves_no_temp_file_anywhere(
    tmp_path: Path, private_tmpdir: Path, suffix: str
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / f"o{suffix}"
    temps_before = set(ALL_TEMP_FILES)
    with open_writer(out, HEADERS) as writer:
        for i in range(500):
            writer.write_row(["x", "y", "z", i, "ok"])
        writer.abort()
    assert os.listdir(out_dir) == []
    assert os.listdir(private_tmpdir) == []
    assert set(ALL_TEMP_FILES) == temps_before, "openpyxl's list of temp files forgets ours"


def _dead_leftover(directory: Path, target: str, tail: str = "ab12cd34.tmp") -> Path:
    """A temp file as a killed run leaves it: our name, personal data inside, no lock."""
    path = directory / f".{target}.batch-enricher-{tail}"
    path.write_text("王小明,11010119900307803X\n", encoding="utf-8")
    return path


def test_the_next_write_sweeps_what_a_killed_run_left(tmp_path: Path) -> None:
    out = tmp_path / "o.csv"
    dead = [_dead_leftover(tmp_path, out.name), _dead_leftover(tmp_path, out.name, "x.sheet.tmp")]
    not_ours = [
        tmp_path / ".o.csv.ab12cd34.tmp",  # no tag: not ours to judge
        tmp_path / ".other.csv.batch-enricher-ab12cd34.tmp",  # another output's
        tmp_path / ".o.csv.batch-enricher-ab12cd34.txt",
        tmp_path / "o.csv.batch-enricher-ab12cd34.tmp",
    ]
    for path in not_ours:
        path.write_text("keep", encoding="utf-8")

    _write(out, [["a", "b", "c", 1, "ok"]])

    assert not any(path.exists() for path in dead)
    assert all(path.exists() for path in not_ours)
    assert len(_read_csv(out)) == 2


def test_a_summary_json_write_sweeps_its_own_leftovers(tmp_path: Path) -> None:
    target = tmp_path / "run.json"
    dead = _dead_leftover(tmp_path, target.name)
    write_text_atomically(target, "{}\n")
    assert sorted(os.listdir(tmp_path)) == ["run.json"]
    assert not dead.exists()


@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
def test_a_live_writers_temp_files_survive_another_runs_sweep(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"o{suffix}"
    with open_writer(out, HEADERS) as writer:
        for i in range(300):
            writer.write_row(["x", "y", "z", i, "ok"])
        live = _our_temps(tmp_path, out.name)
        dead = _dead_leftover(tmp_path, out.name)

        assert sweep_temporary_files(out) == 1, "only the dead one"
        # The same from another process, as a second run would do it.
        code = "import sys, pathlib; from batch_enricher.writer import sweep_temporary_files as s"
        code += "; print(s(pathlib.Path(sys.argv[1])))"
        swept = subprocess.run(
            [sys.executable, "-c", code, str(out)],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert swept.stdout.strip() == "0"

        assert not dead.exists()
        assert _our_temps(tmp_path, out.name) == live
        writer.commit()
    assert os.listdir(tmp_path) == [out.name]


def test_a_temp_file_swept_before_its_lock_is_taken_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A sweep may open and lock a new file in the instant between its creation and our lock:
    # it removes it, and the writer must notice and make another rather than write to nothing.
    out = tmp_path / "o.csv"
    real_mkstemp = tempfile.mkstemp
    calls: list[str] = []

    def mkstemp_then_sweep(*args: object, **kwargs: object) -> tuple[int, str]:
        fd, name = real_mkstemp(*args, **kwargs)  # type: ignore[call-overload]
        calls.append(name)
        if len(calls) == 1:
            assert sweep_temporary_files(out) == 1  # not locked yet: taken for a dead one
        return fd, name

    monkeypatch.setattr(writer_mod.tempfile, "mkstemp", mkstemp_then_sweep)
    with open_writer(out, HEADERS) as writer:
        assert len(calls) == 2 and not Path(calls[0]).exists()
        assert sweep_temporary_files(out) == 0, "the second one is locked"
        writer.write_row(["a", "b", "c", 1, "ok"])
        writer.commit()
    assert len(_read_csv(out)) == 2
    assert os.listdir(tmp_path) == [out.name]


def test_a_symlink_named_like_a_temp_file_is_left_alone(tmp_path: Path) -> None:
    victim = tmp_path / "precious.txt"
    victim.write_text("keep", encoding="utf-8")
    link = tmp_path / ".o.csv.batch-enricher-ab12cd34.tmp"
    link.symlink_to(victim)
    assert sweep_temporary_files(tmp_path / "o.csv") == 0
    assert link.is_symlink() and victim.read_text(encoding="utf-8") == "keep"


def _peak_memory(path: Path, rows: int) -> int:
    tracemalloc.start()
    try:
        with open_writer(path, HEADERS, text_columns={1, 2}) as writer:
            for i in range(rows):
                writer.write_row([f"王小明{i}", f"{i:018d}", "13812345678", 12.5, "ok"])
            writer.commit()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(("suffix", "rows"), [(".csv", 20_000), (".xlsx", 3_000)])
def test_memory_does_not_grow_with_rows(tmp_path: Path, suffix: str, rows: int) -> None:
    small = _peak_memory(tmp_path / f"small{suffix}", 300)
    large = _peak_memory(tmp_path / f"large{suffix}", rows)
    # Holding the extra rows would cost ~250 bytes each: at least 700 kB here.
    assert large - small < 200_000


# --- prepared tails ------------------------------------------------------------------------------

_HEADS: list[list[Cell]] = [
    ["王小明", "11010119900307803X"],
    ["a", "b", "c"],
    ["", ""],
    [""],
    [],
    ["one"],
    ["=1+1", "x"],
    ["x", "-2"],
    ["line\nbreak", "x"],
    ["carriage\rreturn", "x"],
    ["comma,inside", 'quote"inside'],
    ["tab\tinside", "x"],
    [" leading space", "x"],
    [12, "x"],
    [None, "x"],
    [True, 2.5],
    [datetime.date(2024, 1, 2), "x"],
    [Status.OK, "x"],
]
_TAILS: list[list[Cell]] = [
    [
        "ok",
        None,
        None,
        "SANDBOX01",
        16,
        "(0,1500]",
        0,
        "无法预测",
        95,
        "24",
        "2024-01-02T03:04:05+08:00",
    ],
    ["invalid", 281501, "身份证号格式错误: check digit should be X"] + [None] * 8,
    [],
    [""],
    [None],
    ["=cmd", "+1", "-1", "@x", "\tt"],
    ["a,b", 'c"d', "e\nf", -3, 1.0, False],
]


@pytest.mark.parametrize("escape", [True, False])
@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_rows_with_a_tail_are_the_same_bytes_as_whole_rows(
    tmp_path: Path, suffix: str, escape: bool
) -> None:
    whole, split = tmp_path / f"whole{suffix}", tmp_path / f"split{suffix}"
    with open_writer(whole, HEADERS, escape_formulas=escape) as writer:
        for head in _HEADS:
            for tail in _TAILS:
                writer.write_row([*head, *tail])
        writer.commit()
    with open_writer(split, HEADERS, escape_formulas=escape) as writer:
        tails = [writer.tail(tail) for tail in _TAILS]
        for head in _HEADS:
            for prepared in tails:
                writer.write_row(head, prepared)
        writer.commit()
    assert split.read_bytes() == whole.read_bytes()


def test_a_tail_from_another_format_is_still_written_right(tmp_path: Path) -> None:
    with open_writer(tmp_path / "other.tsv", HEADERS) as tsv:
        foreign = tsv.tail(["a,b", "=x"])
    out = tmp_path / "out.csv"
    with open_writer(out, HEADERS) as writer:
        writer.write_row(["name", "id"], foreign)
        writer.commit()
    assert _read_csv(out)[1] == ["name", "id", "a,b", "'=x"]


def test_xlsx_rows_with_a_tail_hold_the_same_cells(tmp_path: Path) -> None:
    out = tmp_path / "out.xlsx"
    with open_writer(out, HEADERS, text_columns={1}, status_column=2) as writer:
        prepared = writer.tail(_TAILS[0])
        writer.write_row(["王小明", "11010119900307803X"], prepared)
        writer.commit()
    sheet = openpyxl.load_workbook(out).active
    assert sheet is not None
    row = [cell.value for cell in next(sheet.iter_rows(min_row=2))]
    assert row[:2] == ["王小明", "11010119900307803X"]
    assert row[2:6] == ["ok", None, None, "SANDBOX01"]
    assert row[6] == 16


def test_xlsx_number_formats_follow_the_rows_preamble_included(tmp_path: Path) -> None:
    out = tmp_path / "out.xlsx"
    formats = iter(
        [
            ["0.0"],  # the preamble row
            [],  # the header row: no formats
            ["000000", None, "0.00%", "yyyy-mm-dd", "@"],
            [],  # a row without formats
        ]
    )
    with writer_mod.open_writer(
        out, ["a", "b", "c", "d", "e"], preamble=[[1.5]], number_formats=formats
    ) as writer:
        writer.write_row([42, 7, 0.125, datetime.date(2024, 1, 2), True])
        writer.write_row([42, "x", 0.5, None, 1])
        writer.commit()
    ws = openpyxl.load_workbook(out).worksheets[0]
    assert ws["A1"].number_format == "0.0"
    assert [ws.cell(3, c).number_format for c in range(1, 4)] == ["000000", "General", "0.00%"]
    assert ws["D3"].number_format == "yyyy-mm-dd" and ws["D3"].value == datetime.datetime(
        2024, 1, 2
    )
    assert ws["E3"].value is True and ws["A4"].number_format == "General"

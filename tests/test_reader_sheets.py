"""Workbooks: damaged ones give one line and no traceback, odd ones are read, cells keep types."""

from __future__ import annotations

import datetime as dt
import os
import random
import zipfile
from pathlib import Path
from typing import Any

import openpyxl
import pytest
import xlwt  # type: ignore[import-untyped]

from batch_enricher import sheets
from batch_enricher.errors import InputError
from batch_enricher.reader import Cell, open_source
from tests.workbooks import saved, strict_ooxml

HEADER = ["姓名", "身份证号", "手机号"]
PERSON = ["张三", "11010119900307803X", "13812345678"]


def _xlsx(path: Path, rows: list[list[Any]]) -> Path:
    return saved(path, rows, title="名单")


def _read(path: Path) -> list[list[Cell]]:
    source = open_source(path)
    first, second = list(source.rows()), list(source.rows())
    assert first == second
    return first


# --- damaged files ----------------------------------------------------------------------------


def _xls_bytes(tmp_path: Path) -> bytes:
    workbook = xlwt.Workbook()
    sheet = workbook.add_sheet("S")
    for r in range(300):
        for c in range(5):
            sheet.write(r, c, f"v{r}-{c}" if c % 2 else r * c)
    path = tmp_path / "full.xls"
    workbook.save(str(path))
    return path.read_bytes()


def test_truncated_xls_files_give_one_line_and_nothing_on_stderr(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # calamine panics on some cut-off .xls files (a BaseException from Rust), and Rust prints
    # the panic itself: both must stop at the reader.
    monkeypatch.setenv("RUST_BACKTRACE", "1")
    data = _xls_bytes(tmp_path)
    panics = 0
    real = sheets._is_panic

    def counting(exc: BaseException) -> bool:
        nonlocal panics
        panics += real(exc)
        return real(exc)

    monkeypatch.setattr(sheets, "_is_panic", counting)
    cut = tmp_path / "cut.xls"
    for end in range(1, len(data), 97):
        cut.write_bytes(data[:end])
        with pytest.raises(InputError) as caught:
            _read(cut)
        message = str(caught.value)
        assert message.startswith(f"{cut} ")
        assert "Calamine" not in message and "Panic" not in message
    assert panics > 0  # the cuts did reach calamine's panics
    assert capfd.readouterr().err == ""


def test_a_panic_message_is_dropped_but_other_stderr_output_is_kept(
    capfd: pytest.CaptureFixture[str],
) -> None:
    panic = type("PanicException", (BaseException,), {"__module__": "pyo3_runtime"})
    with (
        pytest.raises(InputError, match=r"x\.xls is not a readable \.xls file"),
        sheets._rust_call(Path("x.xls"), "xls"),
    ):
        os.write(2, b"thread '<unnamed>' panicked at src/cfb.rs\n")
        raise panic("index out of bounds")
    with sheets._rust_call(Path("x.xls"), "xls"):
        os.write(2, b"a warning worth keeping\n")
    with pytest.raises(KeyboardInterrupt), sheets._rust_call(Path("x.xls"), "xls"):
        raise KeyboardInterrupt
    assert capfd.readouterr().err == "a warning worth keeping\n"


def _corruptions(good: bytes) -> list[tuple[str, bytes]]:
    rng = random.Random(11)
    cases = [
        ("half", good[: len(good) // 2]),
        ("no central directory", good[:-22]),
        ("text", "姓名,手机\n张三,1\n".encode()),
        ("zip header only", b"PK\x03\x04" + b"\x00" * 100),
    ]
    for i in range(20):
        spoilt = bytearray(good)
        for _ in range(4):
            spoilt[rng.randrange(len(spoilt))] ^= 0xFF
        cases.append((f"flipped {i}", bytes(spoilt)))
    return cases


def test_corrupt_xlsx_files_give_one_clear_line(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    good = _xlsx(tmp_path / "good.xlsx", [HEADER, *[PERSON] * 50]).read_bytes()
    for what, data in _corruptions(good):
        path = tmp_path / "bad.xlsx"
        path.write_bytes(data)
        try:
            _read(path)
        except InputError as exc:
            message = str(exc)
            assert message.startswith(f"{path} "), what
            assert "(error)" not in message and "Error" not in message, (what, message)
            assert "save it" in message or "not a valid .xlsx file" in message, (what, message)
    assert capfd.readouterr().err == ""


def test_a_sheet_part_with_broken_xml(tmp_path: Path) -> None:
    good = _xlsx(tmp_path / "good.xlsx", [HEADER, PERSON])
    broken = tmp_path / "broken.xlsx"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(broken, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "xl/worksheets/sheet1.xml":
                data = data.replace(b"</sheetData>", b"<row><c>")
            dst.writestr(name, data)
    with pytest.raises(InputError, match=r"broken\.xlsx is a damaged \.xlsx file .* save it again"):
        _read(broken)


def test_a_strict_open_xml_workbook_is_read(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], recwarn: pytest.WarningsRecorder
) -> None:
    plain = _xlsx(tmp_path / "plain.xlsx", [HEADER, [*PERSON[:2], 13812345678]])
    path = strict_ooxml(plain, tmp_path / "strict.xlsx")
    assert b"purl.oclc.org" in zipfile.ZipFile(path).read("xl/workbook.xml")
    source = open_source(path)
    assert (source.sheet, source.strict_ooxml, source.headers) == ("名单", True, HEADER)
    assert list(source.rows()) == [[*PERSON[:2], 13812345678]]
    assert capfd.readouterr().err == "" and len(recwarn) == 0


def test_a_strict_workbook_too_large_for_calamine_is_streamed_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = strict_ooxml(_xlsx(tmp_path / "p.xlsx", [HEADER, PERSON]), tmp_path / "strict.xlsx")
    by_calamine = list(open_source(path).rows())
    monkeypatch.setattr(sheets, "CALAMINE_MAX_CELLS", 2)
    source = open_source(path)
    assert source._sheet == sheets.Sheet("名单", "stream", strict=True)
    assert source.headers == HEADER
    assert list(source.rows()) == by_calamine == [PERSON]


def test_an_empty_first_sheet_points_at_the_others(tmp_path: Path) -> None:
    workbook = openpyxl.Workbook()
    assert workbook.active is not None
    workbook.active.title = "说明"
    workbook.create_sheet("名单").append(HEADER)
    path = tmp_path / "two.xlsx"
    workbook.save(path)
    with pytest.raises(
        InputError, match=r"sheet '说明' is empty; the other sheets are '名单'.*--sheet"
    ):
        open_source(path)


# --- sparse sheets --------------------------------------------------------------------------


def test_one_cell_in_column_xfd_far_down_is_streamed_not_padded(tmp_path: Path) -> None:
    # calamine would hold a 3,000 x 16,384 rectangle (1.5 GB). Streamed: each row as long as
    # its own cells.
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.append(HEADER)
    for _ in range(2999):
        sheet.append(PERSON)
    sheet["XFD3000"] = "备注"
    path = tmp_path / "sparse.xlsx"
    workbook.save(path)
    source = open_source(path)
    assert source._sheet is not None and source._sheet.engine == "stream"
    rows = list(source.rows())
    assert len(rows) == 2999
    assert all(len(row) == 3 for row in rows[:-1])
    assert len(rows[-1]) == 16_384 and rows[-1][-1] == "备注"
    assert source.width == 16_384


def test_a_formatted_but_empty_column_xfd_does_not_count(tmp_path: Path) -> None:
    from openpyxl.styles import Font

    workbook = openpyxl.Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.append(HEADER)
    sheet.append(PERSON)
    for row in (1, 2, 500):
        sheet.cell(row, 16_384).font = Font(bold=True)
    path = tmp_path / "styled.xlsx"
    workbook.save(path)
    source = open_source(path)
    assert source._sheet is not None and source._sheet.engine == "calamine"
    assert list(source.rows()) == [PERSON]
    assert source.width == 3


def test_both_engines_read_the_same_cells(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    born = dt.datetime(1990, 3, 7)
    rows: list[list[Any]] = [
        ["编号", *HEADER, "生日", "时刻", "金额", "标记", "大数"],
        [1, *PERSON[:2], 13812345678, born, dt.datetime(2020, 1, 2, 3, 4), 1.5, True, 2**60],
        [],
        [None, "李四", None, 13912345678.0, dt.date(2001, 2, 3), dt.time(8, 30), -2.0],
    ]
    path = _xlsx(tmp_path / "typed.xlsx", rows)
    by_calamine = _read(path)
    monkeypatch.setattr(sheets, "CALAMINE_MAX_CELLS", 1)
    assert open_source(path)._sheet == sheets.Sheet("名单", "stream")
    assert _read(path) == by_calamine
    assert by_calamine == [
        [
            1,
            *PERSON[:2],
            13812345678,
            born.date(),
            dt.datetime(2020, 1, 2, 3, 4),
            1.5,
            True,
            1152921504606850000,
        ],
        [],
        [None, "李四", None, 13912345678, dt.date(2001, 2, 3), dt.time(8, 30), -2],
    ]


# --- .xls -----------------------------------------------------------------------------------


def test_xls_numbers_have_no_invented_digits(tmp_path: Path) -> None:
    workbook = xlwt.Workbook()
    sheet = workbook.add_sheet("S")
    for c, text in enumerate(["姓名", "身份证号", "手机号", "金额", "日期"]):
        sheet.write(0, c, text)
    dates = xlwt.easyxf(num_format_str="yyyy-mm-dd")
    sheet.write(1, 0, "张三")
    sheet.write(1, 1, 110101199003078034)  # stored as a double: 1.1010119900307803e17
    sheet.write(1, 2, 13812345678)
    sheet.write(1, 3, 1.5)
    sheet.write(1, 4, dt.date(2020, 1, 2), dates)
    path = tmp_path / "n.xls"
    workbook.save(str(path))
    rows = _read(path)
    # int(1.1010119900307803e17) is 110101199003078032: digits no spreadsheet ever showed.
    assert rows == [["张三", 110101199003078000, 13812345678, 1.5, dt.date(2020, 1, 2)]]
    assert type(rows[0][2]) is int


def test_whole_keeps_fifteen_significant_digits() -> None:
    assert sheets.whole(13812345678.0) == 13812345678
    assert sheets.whole(999_999_999_999_999.0) == 999_999_999_999_999
    assert sheets.whole(1.1010119900307803e17) == 110101199003078000
    assert sheets.whole(-0.0) == 0 and sheets.whole(0.1) == 0.1
    assert sheets.whole(float("inf")) == float("inf")


def test_the_extent_counts_cells_with_values_not_formatting(tmp_path: Path) -> None:
    from openpyxl.styles import Font

    workbook = openpyxl.Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.title = "名单"
    sheet["A1"], sheet["J7"], sheet["AB3"] = "a", "j", "ab"
    sheet.cell(900, 16_384).font = Font(bold=True)  # formatted, empty
    path = tmp_path / "extent.xlsx"
    workbook.save(path)
    assert sheets._xlsx_extent(path, "名单") == (False, 7, 28)
    sheet["AB3"] = None
    workbook.save(path)
    assert sheets._xlsx_extent(path, "名单") == (False, 7, 10)


def test_a_replacement_character_in_a_workbook_is_no_encoding_problem(tmp_path: Path) -> None:
    # An .xls from calamine's tests has one: the header search asked a workbook for its text
    # encoding (an AssertionError, "please report this").
    from batch_enricher.columns import ColumnNames
    from batch_enricher.errors import ColumnError

    path = _xlsx(tmp_path / "fffd.xlsx", [["名\ufffd", "x", "y"], ["a", "b", "c"]])
    with pytest.raises(ColumnError, match="no name column found") as caught:
        open_source(path, names=ColumnNames())
    assert "encoding" not in str(caught.value)


def test_an_xls_that_would_abort_calamine_is_refused(tmp_path: Path) -> None:
    # A FAT whose chain loops: calamine grows the directory chain until an allocation of
    # gigabytes fails, and Rust aborts the process. The probe reads it in a child first.
    data = bytearray(_xls_bytes(tmp_path))
    sector = 512
    first_fat = int.from_bytes(data[76:80], "little")  # the first FAT sector, from the DIFAT
    dir_start = int.from_bytes(data[48:52], "little")
    fat_at = sector * (1 + first_fat) + 4 * dir_start
    data[fat_at : fat_at + 4] = dir_start.to_bytes(4, "little")  # the directory chain loops
    path = tmp_path / "loop.xls"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"loop\.xls is not a readable \.xls file"):
        open_source(path)

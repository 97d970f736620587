"""Nothing dropped: the header row found below a title, every row kept in place, every cell kept.

Also the files that used to stop or hang a run: a 200 KB cell, a FIFO named x.csv.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from batch_enricher.columns import ColumnMap, ColumnNames
from batch_enricher.errors import ColumnError, InputError
from batch_enricher.reader import open_source

HEADER = ["客户编号", "姓名", "身份证号", "手机号"]
PERSON = ["C1", "张三", "11010119900307803X", "13812345678"]


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def _xlsx(path: Path, rows: list[list[Any]]) -> Path:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    assert sheet is not None
    for number, row in enumerate(rows, start=1):
        for column, value in enumerate(row, start=1):
            if value is not None:
                sheet.cell(number, column, value)
    workbook.save(path)
    return path


def _lines(*rows: list[str], delimiter: str = ",") -> str:
    return "".join(delimiter.join(row) + "\r\n" for row in rows)


# --- the header row -------------------------------------------------------------------------


def test_title_row_above_the_header_is_the_preamble(tmp_path: Path) -> None:
    text = _lines(["2024年1月客户名单"], [], ["导出时间", "2024-02-01"], HEADER, PERSON)
    source = open_source(_write(tmp_path / "t.csv", text))
    assert source.header_row == 4
    assert source.headers == HEADER
    assert source.columns == ColumnMap(realname=1, idcard=2, mobile=3)
    assert source.preamble() == [["2024年1月客户名单"], [], ["导出时间", "2024-02-01"]]
    assert list(source.numbered_rows()) == [(5, PERSON)]
    assert source.width == 4


def test_title_row_in_a_workbook_counts_sheet_rows(tmp_path: Path) -> None:
    rows: list[list[Any]] = [["2024年1月客户名单"], [], [None, *HEADER], [None, *PERSON]]
    source = open_source(_xlsx(tmp_path / "t.xlsx", rows))
    assert (source.header_row, source.headers) == (3, ["", *HEADER])
    assert source.preamble() == [["2024年1月客户名单"], []]
    assert list(source.numbered_rows()) == [(4, [None, *PERSON])]


def test_semicolon_file_with_a_title_row_gets_its_delimiter(tmp_path: Path) -> None:
    # The title alone splits the same under every delimiter; the header row decides.
    text = _lines(["客户名单, 2024年1月"], HEADER, PERSON, delimiter=";")
    source = open_source(_write(tmp_path / "t.csv", text))
    assert (source.delimiter, source.header_row) == (";", 2)
    assert list(source.rows()) == [PERSON]


def test_header_row_given(tmp_path: Path) -> None:
    text = _lines(["姓名", "身份证号", "手机号"], ["姓名", "证件", "电话"], ["张三", "x", "y"])
    path = _write(tmp_path / "t.csv", text)
    names = ColumnNames(idcard="证件", mobile="电话")
    source = open_source(path, header_row=2, names=names)
    assert (source.header_row, source.columns) == (2, ColumnMap(0, 1, 2))
    assert source.preamble() == [["姓名", "身份证号", "手机号"]]
    assert list(source.numbered_rows()) == [(3, ["张三", "x", "y"])]


@pytest.mark.parametrize(
    ("header_row", "message"),
    [(9, r"has no row 9 \(--header-row 9\)"), (2, r"row 2 is empty \(--header-row 2\)")],
)
def test_header_row_given_that_cannot_be(tmp_path: Path, header_row: int, message: str) -> None:
    path = _write(tmp_path / "t.csv", _lines(["a"], [], HEADER, PERSON))
    with pytest.raises(InputError, match=message):
        open_source(path, header_row=header_row)


def test_header_row_given_without_the_columns(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", _lines(["a"], HEADER, PERSON))
    with pytest.raises(ColumnError, match=r"no name column found .*\(in row 1, the --header-row\)"):
        open_source(path, header_row=1, names=ColumnNames())


def test_no_header_in_the_first_20_rows(tmp_path: Path) -> None:
    text = _lines(*[["说明", f"第{i}行"] for i in range(25)], HEADER, PERSON)
    with pytest.raises(ColumnError) as caught:
        open_source(_write(tmp_path / "t.csv", text), names=ColumnNames())
    message = str(caught.value)
    assert "Headers found: 说明, 第0行" in message  # the first non-empty row, as before
    assert "in the first 20 rows" in message and "--header-row N" in message


def test_no_header_and_data_in_the_first_row_is_masked(tmp_path: Path) -> None:
    text = _lines(*[PERSON] * 3)
    with pytest.raises(ColumnError) as caught:
        open_source(_write(tmp_path / "t.csv", text), names=ColumnNames())
    message = str(caught.value)
    assert "11010119900307803X" not in message and "张三" not in message
    assert "Headers found (masked)" in message and "--header-row" in message


def test_override_names_find_the_header_too(tmp_path: Path) -> None:
    text = _lines(["名单"], ["客户名称", "证件", "电话"], ["张三", "x", "y"])
    names = ColumnNames(realname="客户名称", idcard="证件", mobile="电话")
    source = open_source(_write(tmp_path / "t.csv", text), names=names)
    assert (source.header_row, source.columns) == (2, ColumnMap(0, 1, 2))


def test_without_names_a_file_with_no_header_falls_back_to_the_first_row(tmp_path: Path) -> None:
    # For callers that map the columns themselves (as the runner did before this contract).
    text = _lines([], ["客户名称", "证件", "电话"], ["张三", "x", "y"])
    source = open_source(_write(tmp_path / "t.csv", text))
    assert (source.header_row, source.headers, source.columns) == (
        2,
        ["客户名称", "证件", "电话"],
        None,
    )


# --- rows and cells -------------------------------------------------------------------------


def test_blank_and_whitespace_rows_and_extra_cells_are_kept(tmp_path: Path) -> None:
    text = _lines(HEADER, PERSON, [], [" ", "\u3000", "", ""], [*PERSON, "", "备注：老客户"])
    source = open_source(_write(tmp_path / "t.csv", text))
    rows = list(source.numbered_rows())
    assert rows == [
        (2, PERSON),
        (3, []),
        (4, [" ", "\u3000", "", ""]),
        (5, [*PERSON, "", "备注：老客户"]),  # an unlabelled notes column past the header
    ]
    assert source.width == 6


def test_xlsx_blank_rows_and_cells_past_the_header(tmp_path: Path) -> None:
    # (A cell of ASCII spaces alone reads as empty when, as openpyxl does, the writer leaves
    # out xml:space="preserve"; Excel writes it. An ideographic space is kept either way.)
    rows: list[list[Any]] = [HEADER, PERSON, [], ["\u3000"], [*PERSON, None, "备注"]]
    source = open_source(_xlsx(tmp_path / "t.xlsx", rows))
    assert list(source.numbered_rows()) == [
        (2, PERSON),
        (3, []),
        (4, ["\u3000"]),
        (5, [*PERSON, None, "备注"]),
    ]
    assert source.width == 6


def test_csv_record_numbers_count_records_not_lines(tmp_path: Path) -> None:
    text = _lines(HEADER, ["C1", "张三", "x", '"two\r\nlines"'], ["C2", "李四", "y", "z"])
    source = open_source(_write(tmp_path / "t.csv", text))
    assert [n for n, _ in source.numbered_rows()] == [2, 3]


def test_a_bare_cr_inside_a_quoted_cell_stays_a_cr(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", _lines(HEADER, ["C1", "张三", "x", '"a\rb"']))
    assert list(open_source(path).rows()) == [["C1", "张三", "x", "a\rb"]]


def test_width_is_known_after_a_pass_or_on_request(tmp_path: Path) -> None:
    source = open_source(_write(tmp_path / "t.csv", _lines(HEADER, PERSON, [*PERSON, "", "x"])))
    assert source._width is None  # not read yet
    assert source.width == 6  # reads the file once
    assert source._width == 6


def test_a_200_kb_cell_is_read(tmp_path: Path) -> None:
    note = "长" * 200_000
    source = open_source(_write(tmp_path / "t.csv", _lines(HEADER, [*PERSON, note])))
    rows = list(source.rows())
    assert rows[0][4] == note


def test_header_only_after_a_title(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", _lines(["名单"], HEADER, [], [" ", ""]))
    with pytest.raises(InputError, match="has a header row but no data rows"):
        open_source(path)


# --- files that are not regular files -------------------------------------------------------


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "x.csv"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            open_source(fifo)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(timeout=30)
    if worker.is_alive():  # unblock it before failing, so no thread is left behind
        with fifo.open("wb"):
            pass
        pytest.fail("open_source blocked on a FIFO")
    assert len(outcome) == 1 and isinstance(outcome[0], InputError)
    assert "is not a regular file (a pipe, device or socket)" in str(outcome[0])


def test_a_device_is_refused() -> None:
    with pytest.raises(InputError, match="is not a regular file"):
        open_source(Path("/dev/null"))


def test_head_is_the_first_rows_without_another_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batch_enricher import reader, sheets

    rows = [["title"], HEADER, *([PERSON, []] * 8)]
    source = open_source(_xlsx(tmp_path / "t.xlsx", rows))
    everything = list(source.rows())
    monkeypatch.setattr(sheets, "sheet_rows", lambda *a: pytest.fail("a pass of its own"))
    assert source.head(5) == everything[:5] and source.head(100) == everything
    monkeypatch.setattr(reader, "HEAD_ROWS", 3)
    long = open_source(_write(tmp_path / "t.csv", _lines(HEADER, *[PERSON] * 6)))
    assert len(long._head) == 3 and long.head(6) == [PERSON] * 6  # read on past what it kept

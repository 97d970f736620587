"""Reading inputs: encodings, delimiters, sheets, cell types, two passes, and every bad file."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import openpyxl
import pytest
import xlwt  # type: ignore[import-untyped]

from batch_enricher import reader
from batch_enricher.errors import InputError, UnsupportedFileError
from batch_enricher.reader import Cell, open_source

HEADERS = ["客户编号", "姓名", "身份证号", "手机号"]
ROWS = [
    ["C001", "张三", "11010119900307803X", "13812345678"],
    ["C002", "买买提·艾力", "440524198001010013", "13912345678"],
]


def _csv_text(rows: Sequence[Sequence[str]], delimiter: str = ",") -> str:
    return "".join(delimiter.join(row) + "\r\n" for row in rows)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _xlsx(path: Path, sheets: dict[str, list[list[Any]]]) -> Path:
    workbook = openpyxl.Workbook()
    workbook.remove(workbook.active)  # type: ignore[arg-type]
    for title, rows in sheets.items():
        sheet = workbook.create_sheet(title)
        for row in rows:
            sheet.append(row)
    workbook.save(path)
    return path


def _passes(path: Path, **kwargs: Any) -> list[list[Cell]]:
    """Open the file, read it twice, check both passes agree, return the rows."""
    source = open_source(path, **kwargs)
    first, second = list(source.rows()), list(source.rows())
    assert first == second
    return first


# --- CSV: encodings -----------------------------------------------------------------------------


def test_gbk_csv_with_chinese_headers(tmp_path: Path) -> None:
    path = _write(tmp_path / "gbk.csv", _csv_text([HEADERS, *ROWS[:1]]).encode("gbk"))
    source = reader.open_source(path)
    assert source.format == "csv"
    assert source.encoding == "gb18030"
    assert source.headers == HEADERS
    assert list(source.rows()) == [ROWS[0]]


def test_gb18030_only_characters(tmp_path: Path) -> None:
    # 𠀀 and the middle dot exist in GB18030 but not in GBK.
    rows = [HEADERS, ["C1", "𠀀·明", "11010119900307803X", "13812345678"]]
    path = _write(tmp_path / "gb.csv", _csv_text(rows).encode("gb18030"))
    assert _passes(path) == [rows[1]]


def test_utf8_bom(tmp_path: Path) -> None:
    path = _write(tmp_path / "bom.csv", b"\xef\xbb\xbf" + _csv_text([HEADERS, *ROWS]).encode())
    source = open_source(path)
    assert source.encoding == "utf-8-sig"
    assert source.headers == HEADERS  # no BOM glued to the first header
    assert list(source.rows()) == ROWS


def test_bom_is_stripped_even_with_an_explicit_utf8(tmp_path: Path) -> None:
    path = _write(tmp_path / "bom.csv", b"\xef\xbb\xbf" + _csv_text([HEADERS, *ROWS]).encode())
    source = open_source(path, encoding="UTF8")
    assert source.encoding == "utf-8"
    assert source.headers[0] == "客户编号"


def test_plain_utf8(tmp_path: Path) -> None:
    path = _write(tmp_path / "plain.csv", _csv_text([HEADERS, *ROWS]).encode())
    assert open_source(path).encoding == "utf-8"
    assert _passes(path) == ROWS


def test_encoding_override_wins(tmp_path: Path) -> None:
    # Valid UTF-8 bytes, but the user knows better.
    path = _write(tmp_path / "latin.csv", "name,city\nJosé,Zürich\n".encode())
    source = open_source(path, encoding="latin-1")
    assert source.encoding == "iso8859-1"
    assert list(source.rows()) == [["JosÃ©", "ZÃ¼rich"]]


def test_utf16_unicode_text_export(tmp_path: Path) -> None:
    # Excel's "Unicode text" export: UTF-16 with BOM, tab-separated, .txt.
    path = _write(tmp_path / "export.txt", _csv_text([HEADERS, *ROWS], "\t").encode("utf-16"))
    source = open_source(path)
    assert (source.encoding, source.delimiter) == ("utf-16", "\t")
    assert source.headers == HEADERS
    assert list(source.rows()) == ROWS


def test_last_resort_guess_for_other_encodings(tmp_path: Path) -> None:
    # Neither UTF-8 nor GB18030 ("é," is no GB18030 sequence): charset-normalizer's guess is
    # used. Its guess among single-byte code pages is rough, so only the table shape is sure.
    text = "name,city\nJosé Müller,Zürich\nFrançois Hébert,Paris\n"
    path = _write(tmp_path / "cp1252.csv", text.encode("cp1252"))
    source = open_source(path)
    assert source.encoding not in ("utf-8", "gb18030")
    assert source.headers == ["name", "city"]
    assert [len(row) for row in _passes(path)] == [2, 2]


def test_one_row_in_another_encoding_is_a_damaged_row(tmp_path: Path) -> None:
    # Mostly UTF-8: read as UTF-8; the GBK row's name cell is damaged and says where.
    good = _csv_text([HEADERS, *ROWS]).encode()
    path = _write(tmp_path / "mixed.csv", good + "C003,李四,x,y\r\n".encode("gbk"))
    source = reader.open_source(path)
    assert (source.encoding, source.damaged) == ("utf-8", True)
    numbered = list(source.numbered_rows())
    assert [row for _, row in numbered[:2]] == ROWS
    number, row = numbered[2]
    assert row[0] == "C003" and "\ufffd" in str(row[1])
    reason = source.damage_reason(number, row)
    assert reason == (
        "row 4, column 2 (姓名): bytes that are not valid UTF-8 (a damaged or mixed encoding); "
        "fix the cell or pass --encoding"
    )
    assert "李四" not in reason


def test_bad_bytes_far_into_the_file_decide_the_encoding(tmp_path: Path) -> None:
    # The first megabyte is ASCII; the only non-ASCII row comes much later and is GBK. The
    # whole file is judged, so it is read as GB18030 from the start, not UTF-8 then an error.
    filler = _csv_text([["C0", "Li Si", "x", "y"]] * 100_000).encode()
    assert len(filler) > 1 << 20
    tail = _csv_text([["C9", "李四", "x", "y"]]).encode("gbk")
    path = _write(tmp_path / "late.csv", b"id,name,idcard,mobile\r\n" + filler + tail)
    source = open_source(path)
    assert (source.encoding, source.damaged) == ("gb18030", False)
    assert list(source.rows())[-1] == ["C9", "李四", "x", "y"]


def test_unknown_encoding_name(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.csv", _csv_text([HEADERS, *ROWS]).encode())
    with pytest.raises(InputError, match="unknown encoding 'klingon'"):
        open_source(path, encoding="klingon")


# --- CSV: delimiters and shapes -----------------------------------------------------------------


def test_utf8_tsv(tmp_path: Path) -> None:
    # .tsv is tab-separated even though commas outnumber tabs here.
    rows = [HEADERS, ["C1", "张三", "11010119900307803X", "138,1234,5678"]]
    path = _write(tmp_path / "a.tsv", _csv_text(rows, "\t").encode())
    source = open_source(path)
    assert source.delimiter == "\t"
    assert list(source.rows()) == [rows[1]]


@pytest.mark.parametrize(("delimiter", "suffix"), [(";", ".csv"), ("\t", ".csv"), ("\t", ".txt")])
def test_delimiter_is_sniffed(tmp_path: Path, delimiter: str, suffix: str) -> None:
    path = _write(tmp_path / f"a{suffix}", _csv_text([HEADERS, *ROWS], delimiter).encode())
    source = open_source(path)
    assert source.delimiter == delimiter
    assert source.headers == HEADERS
    assert list(source.rows()) == ROWS


def test_semicolon_csv_with_commas_inside_quotes(tmp_path: Path) -> None:
    text = '"Name, full";idcard;mobile;"note, with, commas"\r\n张三;x;y;"a, b"\r\n'
    source = open_source(_write(tmp_path / "semi.csv", text.encode()))
    assert source.delimiter == ";"
    assert source.headers == ["Name, full", "idcard", "mobile", "note, with, commas"]
    assert list(source.rows()) == [["张三", "x", "y", "a, b"]]


def test_blank_and_ragged_rows_are_kept_in_place(tmp_path: Path) -> None:
    text = "\r\n\r\nname,idcard,mobile\r\n,,\r\na,b\r\n \t, ,\r\nc,d,e,f\r\n\r\n"
    source = open_source(_write(tmp_path / "r.csv", text.encode()))
    assert source.headers == ["name", "idcard", "mobile"]
    assert source.header_row == 3
    assert source.preamble() == [[], []]
    assert _passes(source.path) == [
        ["", "", ""],
        ["a", "b"],
        [" \t", " ", ""],
        ["c", "d", "e", "f"],
        [],
    ]
    assert [n for n, _ in source.numbered_rows()] == [4, 5, 6, 7, 8]
    assert source.width == 4


def test_quoted_newlines_and_cells_stay_text(tmp_path: Path) -> None:
    text = 'name,idcard,mobile,note\r\n张三,011010119900307803,013812345678,"two\r\nlines"\r\n'
    rows = _passes(_write(tmp_path / "q.csv", text.encode()))
    assert rows == [["张三", "011010119900307803", "013812345678", "two\r\nlines"]]


def test_original_header_text_is_kept(tmp_path: Path) -> None:
    path = _write(tmp_path / "h.csv", b" Name ,ID_Card,MOBILE \r\na,b,c\r\n")
    assert open_source(path).headers == [" Name ", "ID_Card", "MOBILE "]


def test_each_pass_starts_from_the_top(tmp_path: Path) -> None:
    source = open_source(_write(tmp_path / "a.csv", _csv_text([HEADERS, *ROWS]).encode()))
    first = source.rows()
    assert next(first) == ROWS[0]
    assert list(source.rows()) == ROWS  # a second pass while the first is half-way
    assert list(first) == ROWS[1:]


# --- XLSX ---------------------------------------------------------------------------------------


def test_xlsx_keeps_cell_types(tmp_path: Path) -> None:
    born = dt.datetime(1990, 3, 7)
    path = _xlsx(
        tmp_path / "a.xlsx",
        {
            "客户": [
                [*HEADERS, "生日", None, None],
                ["C1", "张三", "11010119900307803X", 13812345678, born, None],
                [None, None, None],
                ["C2", "李四", 110101199003078000, 13912345678.0],
                ["C3", True, 1.5],
            ]
        },
    )
    source = open_source(path)
    assert (source.format, source.sheet) == ("xlsx", "客户")
    assert source.headers == [*HEADERS, "生日"]  # trailing empty header cells trimmed
    rows = _passes(path)
    assert rows == [
        ["C1", "张三", "11010119900307803X", 13812345678, born.date()],  # midnight: a date
        [],  # a blank row stays in its place
        ["C2", "李四", 110101199003078000, 13912345678],
        ["C3", True, 1.5],
    ]
    assert isinstance(rows[0][3], int)  # the caller must know this cell was a number


def test_xlsx_sheet_by_name_and_index(tmp_path: Path) -> None:
    path = _xlsx(
        tmp_path / "s.xlsx",
        {"封面": [["说明"], ["x"]], "Data": [HEADERS, ROWS[0]], "Old": [HEADERS, ROWS[1]]},
    )
    assert open_source(path).sheet == "封面"
    for sheet in ("Data", " data ", 1, "1"):
        source = open_source(path, sheet=sheet)
        assert source.sheet == "Data"
        assert list(source.rows()) == [ROWS[0]]
    assert list(open_source(path, sheet=2).rows()) == [ROWS[1]]


def test_xlsx_unknown_sheet_lists_the_sheets(tmp_path: Path) -> None:
    path = _xlsx(tmp_path / "s.xlsx", {"Data": [HEADERS, ROWS[0]], "Old": [HEADERS, ROWS[1]]})
    with pytest.raises(InputError, match=r"no sheet named 'Nope'; its sheets are 'Data', 'Old'"):
        open_source(path, sheet="Nope")
    with pytest.raises(InputError, match=r"has no sheet number 5 .*'Data', 'Old'"):
        open_source(path, sheet=5)


def test_xlsx_with_a_wrong_recorded_dimension_is_read_whole(tmp_path: Path) -> None:
    path = _xlsx(tmp_path / "d.xlsx", {"S": [HEADERS, *ROWS]})
    # Rewrite the sheet's <dimension> to A1, as some generators do.
    import zipfile

    patched = tmp_path / "patched.xlsx"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(patched, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.startswith("xl/worksheets/sheet"):
                data = data.replace(b'<dimension ref="A1:D3" />', b'<dimension ref="A1" />')
                assert b'<dimension ref="A1" />' in data
            dst.writestr(item, data)
    assert _passes(patched) == ROWS


def test_xlsx_workbook_is_closed_after_each_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import python_calamine

    from batch_enricher import sheets

    path = _xlsx(tmp_path / "a.xlsx", {"S": [HEADERS, *ROWS]})
    opened: list[Any] = []
    real = sheets._open_calamine

    def spy(*args: Any) -> Any:
        workbook = real(*args)
        opened.append(workbook)
        return workbook

    monkeypatch.setattr(sheets, "_open_calamine", spy)
    source = open_source(path)
    list(source.rows())
    rows = source.rows()
    next(rows)
    rows.close()  # a caller that stops early
    assert len(opened) == 4  # sheet list, header search, two passes
    for workbook in opened:
        with pytest.raises(python_calamine.WorkbookClosed):
            workbook.get_sheet_by_index(0)


# --- XLS ----------------------------------------------------------------------------------------


def _xls(path: Path, sheets: dict[str, list[list[Any]]]) -> Path:
    workbook = xlwt.Workbook()
    for title, rows in sheets.items():
        sheet = workbook.add_sheet(title)
        for r, row in enumerate(rows):
            for c, value in enumerate(row):
                if value is not None:
                    sheet.write(r + 1, c + 1, value)  # start at B2: leading empty area
    workbook.save(str(path))
    return path


def test_xls_numbers_text_and_sheets(tmp_path: Path) -> None:
    path = _xls(
        tmp_path / "a.xls",
        {
            "Cover": [["nothing here"], ["x"]],
            "Data": [
                HEADERS,
                ["C1", "张三", "11010119900307803X", 13812345678],
                ["C2", "李四", "440524198001010013", "13912345678"],
                ["C3", None, 1.5, None],
            ],
        },
    )
    source = open_source(path, sheet="Data")
    assert (source.format, source.sheet) == ("xls", "Data")
    assert source.headers == ["", *HEADERS]  # column A stays, so positions match Excel's
    rows = _passes(path, sheet=1)
    assert rows == [
        [None, "C1", "张三", "11010119900307803X", 13812345678],
        [None, "C2", "李四", "440524198001010013", "13912345678"],
        [None, "C3", None, 1.5],
    ]
    assert isinstance(rows[0][4], int)
    with pytest.raises(InputError, match=r"no sheet named 'Nope'; its sheets are 'Cover', 'Data'"):
        open_source(path, sheet="Nope")


# --- bad files ----------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope\.csv: no such file"):
        open_source(tmp_path / "nope.csv")


def test_directory(tmp_path: Path) -> None:
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    with pytest.raises(InputError, match="is a directory"):
        open_source(folder)


@pytest.mark.parametrize("name", ["a.csv", "a.xlsx", "a.xls"])
def test_zero_byte_file(tmp_path: Path, name: str) -> None:
    with pytest.raises(InputError, match=r"is empty \(0 bytes\)"):
        open_source(_write(tmp_path / name, b""))


def test_blank_csv(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is empty: no header row"):
        open_source(_write(tmp_path / "a.csv", b"\xef\xbb\xbf\r\n ,\r\n\r\n"))


def test_header_only_csv(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="has a header row but no data rows"):
        open_source(_write(tmp_path / "a.csv", "姓名,身份证号,手机号\r\n,,\r\n".encode()))


def test_header_only_xlsx(tmp_path: Path) -> None:
    path = _xlsx(tmp_path / "a.xlsx", {"S": [HEADERS, [None, None]]})
    with pytest.raises(InputError, match="has a header row but no data rows"):
        reader.open_source(path)


def test_empty_xlsx(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is empty: no header row"):
        open_source(_xlsx(tmp_path / "a.xlsx", {"S": []}))


@pytest.mark.parametrize(
    "data",
    [b"not a zip at all", "姓名,手机\n张三,1\n".encode(), b"PK\x03\x04" + b"\x00" * 100],
)
def test_corrupt_xlsx(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(InputError, match=r"bad\.xlsx is not a valid \.xlsx file"):
        open_source(_write(tmp_path / "bad.xlsx", data))


def test_truncated_xlsx(tmp_path: Path) -> None:
    good = _xlsx(tmp_path / "good.xlsx", {"S": [HEADERS, *ROWS]}).read_bytes()
    with pytest.raises(InputError, match=r"cut\.xlsx is not a valid \.xlsx file"):
        open_source(_write(tmp_path / "cut.xlsx", good[: len(good) // 2]))


def test_password_protected_xlsx(tmp_path: Path) -> None:
    # Excel writes an encrypted workbook as an OLE2 compound file, whatever its name.
    ole2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 504
    with pytest.raises(InputError, match="is password-protected"):
        open_source(_write(tmp_path / "secret.xlsx", ole2))


def test_corrupt_xls(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"bad\.xls is not a readable \.xls file") as caught:
        open_source(_write(tmp_path / "bad.xls", b"garbage" * 100))
    assert "Calamine" not in str(caught.value)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"name,idcard\x00\x01\x02\x03,mobile\n" * 8, "binary file"),
        (
            b"PK\x03\x04\x14\x00\x06\x00rest",
            r"ZIP/XLSX file, not CSV text \(rename it",
        ),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 64, "XLS or encrypted Office file"),
    ],
)
def test_binary_file_named_csv(tmp_path: Path, data: bytes, why: str) -> None:
    with pytest.raises(InputError, match=why):
        open_source(_write(tmp_path / "data.csv", data))


def test_a_cell_too_large_for_memory_names_the_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path / "big.csv", b"a,b\r\n1,2\r\n3," + b"x" * 2000 + b"\r\n")
    source = open_source(path)
    monkeypatch.setattr(reader, "FIELD_LIMIT", 1000)  # as if the machine had little memory
    with pytest.raises(InputError, match=r"big\.csv: line 3 has a cell longer than 1,000 char"):
        list(source.rows())


@pytest.mark.parametrize("name", ["data.json", "data.ods", "data", "data.csv.gz"])
def test_unknown_extension(tmp_path: Path, name: str) -> None:
    with pytest.raises(UnsupportedFileError, match=r"unsupported file type \(use one of \.csv"):
        open_source(_write(tmp_path / name, b"a,b\n1,2\n"))


def test_messages_never_show_cell_contents(tmp_path: Path) -> None:
    secret = "11010119900307803X"
    utf8 = f"姓名,身份证号\r\n张三,{secret}\r\n".encode()
    text = utf8 + "王五,1\r\n赵六,2\r\n钱七,3\r\n".encode("gbk")  # half and half: refused
    with pytest.raises(InputError) as caught:
        open_source(_write(tmp_path / "p.csv", text))
    assert secret not in str(caught.value)
    assert "张三" not in str(caught.value)


# --- the committed samples ----------------------------------------------------------------------

SAMPLES = Path(__file__).resolve().parent.parent / "sample_data"


@pytest.mark.parametrize(
    ("name", "rows", "distinct", "invalid"),
    [("customers.csv", 41, 34, 6), ("customers.xlsx", 40, 35, 4)],
)
def test_sample_data_matches_its_readme(name: str, rows: int, distinct: int, invalid: int) -> None:
    from batch_enricher.columns import find_columns
    from batch_enricher.models import Invalid, Person
    from batch_enricher.validate import check

    source = open_source(SAMPLES / name)
    columns = find_columns(source.headers)
    results = [
        check(row[columns.realname], row[columns.idcard], row[columns.mobile])
        for row in source.rows()
    ]
    assert len(results) == rows
    assert len({r for r in results if isinstance(r, Person)}) == distinct
    assert sum(isinstance(r, Invalid) for r in results) == invalid


def test_an_xlsx_named_xls_is_read_as_the_workbook_it_is(tmp_path: Path) -> None:
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.append(["姓名", "身份证号", "手机号"])
    ws.append(["张三", "11010119900307803X", "13812345678"])
    path = tmp_path / "export.xls"
    wb.save(path)
    source = reader.open_source(path)
    assert source.format == "xlsx"
    assert list(source.rows()) == [["张三", "11010119900307803X", "13812345678"]]


def test_an_html_table_named_xls_says_what_it_is(tmp_path: Path) -> None:
    path = tmp_path / "bank.xls"
    path.write_bytes("<html><table><tr><td>姓名</td></tr></table></html>".encode())
    with pytest.raises(InputError, match=r"HTML page saved with an \.xls name"):
        reader.open_source(path)


def test_a_wrong_encoding_override_is_an_input_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("姓名,身份证号,手机号\n张三,11010119900307803X,13812345678\n", encoding="utf-8")
    with pytest.raises(InputError, match="is not valid utf-16 text"):
        list(reader.open_source(path, encoding="utf-16").rows())

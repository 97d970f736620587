"""The streaming .xlsx reader gives the cells python-calamine gives, in bounded memory.

Each workbook here is read both ways (`sheets.Sheet(name, "calamine")` and `xlsx_rows`) and the
rows compared: whichever reader `sheets.choose_sheet` picks for a sheet's size, a user's file
reads the same. The workbooks are made the way writers make them (openpyxl, XlsxWriter) and by
hand for what those never write (prefixes, attribute orders, rich text, escapes, odd types).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import random
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openpyxl
import pytest
import xlsxwriter
from click.testing import Result

from batch_enricher import sheets, xlsx_rows
from batch_enricher.errors import InputError
from batch_enricher.reader import Cell, open_source
from batch_enricher.shared_strings import BLOCK, SharedStrings
from batch_enricher.xlsx_rows import DATE, DURATION, NUMBER, format_kind, stream_rows
from tests.workbooks import saved, strict_ooxml

NS = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
PKG = "http://schemas.openxmlformats.org/package/2006/relationships"
STYLES = (
    f'<styleSheet xmlns="{NS}"><numFmts>'
    '<numFmt numFmtId="164" formatCode="[h]:mm:ss"/>'
    '<numFmt numFmtId="165" formatCode="yyyy&quot;年&quot;m&quot;月&quot;"/>'
    '<numFmt numFmtId="166" formatCode="&quot;Y: &quot;0.00"/>'
    "</numFmts><cellXfs>"
    '<xf numFmtId="0"/><xf numFmtId="14"/><xf numFmtId="164"/><xf numFmtId="165"/>'
    '<xf numFmtId="31"/><xf numFmtId="166"/><xf numFmtId="46"/>'
    "</cellXfs></styleSheet>"
)
SHARED = [
    "张三",
    "x_x0009_y &lt;z&gt; &#20013;",
    "<r><t>r1</t></r><r><rPr><b/></rPr><t>r2</t></r><rPh><t>ph</t></rPh>",
    "  trimmed  ",
    '<t xml:space="preserve">  kept  </t>',
    "_x000D_",
    "&#x20;",
    "a\r\nb",
    '<r><t> a </t></r><r><t xml:space="preserve"> b </t></r>',
    "",
]


def _si(text: str) -> str:
    return f"<si>{text}</si>" if text.startswith("<") else f"<si><t>{text}</t></si>"


def package(
    path: Path,
    rows_xml: str,
    *,
    shared: list[str] = SHARED,
    styles: str | None = STYLES,
    date1904: bool = False,
    prefix: str = "",
) -> Path:
    """A minimal workbook whose one sheet "S" holds `rows_xml` inside <sheetData>."""
    p = f"{prefix}:" if prefix else ""
    xmlns = f'xmlns:{prefix}="{NS}"' if prefix else f'xmlns="{NS}"'
    pr = '<workbookPr date1904="1"/>' if date1904 else ""
    rels = [("rId1", "worksheet", "worksheets/sheet1.xml")]
    if shared:
        rels.append(("rId2", "sharedStrings", "sharedStrings.xml"))
    if styles:
        rels.append(("rId3", "styles", "styles.xml"))
    parts = {
        "[Content_Types].xml": (
            '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.'
            'relationships+xml"/><Default Extension="xml" ContentType="application/xml"/>'
            '<Override PartName="/xl/workbook.xml" ContentType="application/vnd.'
            'openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/></Types>'
        ),
        "_rels/.rels": (
            f'<Relationships xmlns="{PKG}"><Relationship Id="rId1" '
            f'Type="{REL}/officeDocument" Target="xl/workbook.xml"/></Relationships>'
        ),
        "xl/workbook.xml": (
            f'<workbook xmlns="{NS}" xmlns:r="{REL}">{pr}<sheets>'
            '<sheet name="S" sheetId="1" r:id="rId1"/></sheets></workbook>'
        ),
        "xl/_rels/workbook.xml.rels": f'<Relationships xmlns="{PKG}">'
        + "".join(
            f'<Relationship Id="{i}" Type="{REL}/{t}" Target="{target}"/>' for i, t, target in rels
        )
        + "</Relationships>",
        "xl/worksheets/sheet1.xml": (
            f'<?xml version="1.0" encoding="UTF-8"?><{p}worksheet {xmlns}>'
            f"<{p}sheetData>{rows_xml}</{p}sheetData></{p}worksheet>"
        ),
    }
    if shared:
        parts["xl/sharedStrings.xml"] = (
            f'<sst xmlns="{NS}">' + "".join(_si(text) for text in shared) + "</sst>"
        )
    if styles:
        parts["xl/styles.xml"] = styles
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
        for name, text in parts.items():
            out.writestr(name, text)
    return path


def both(path: Path, name: str = "S") -> list[list[Cell]]:
    """The sheet's rows by calamine, asserting the stream reader gives exactly the same."""
    by_calamine = list(sheets.sheet_rows(path, "xlsx", sheets.Sheet(name, "calamine")))
    streamed = list(stream_rows(path, name))
    while by_calamine and by_calamine[-1] == []:  # calamine's range ends at its last cell
        by_calamine.pop()
    while streamed and streamed[-1] == []:
        streamed.pop()
    assert streamed == by_calamine
    return streamed


def _cells(row: int, cells: list[tuple[str, str]]) -> str:
    """`<row>` of cells given as (attributes, body) pairs, columns A, B, C, ..."""
    return (
        f'<row r="{row}">'
        + "".join(
            f'<c r="{chr(65 + i)}{row}" {attrs}>{body}</c>' for i, (attrs, body) in enumerate(cells)
        )
        + "</row>"
    )


# --- the same cells as calamine -------------------------------------------------------------


def test_shared_strings_read_as_calamine_reads_them(tmp_path: Path) -> None:
    row = _cells(1, [('t="s"', f"<v>{i}</v>") for i in range(len(SHARED))])
    rows = both(package(tmp_path / "s.xlsx", row))
    assert rows == [
        ["张三", "x\ty <z> 中", "r1r2", "trimmed", "  kept  ", "\r", None, "a\nb", "a b "],
    ]


NUMBERS = [
    "0",
    "-1",
    "-0.5",
    "0.5",
    "1",
    "1.5",
    "59",
    "59.5",
    "60",
    "60.5",
    "61",
    "45293",
    "45293.5",
    "45293.000001",
    "0.9999999999",
    "2958465",
    "2958465.99999",
    "2958466",
    "1e300",
    "1E+2",
    ".5",
    "5.",
    "+5",
    "-0",
    "123456789012345678",
    "1.1010119900307803e17",
]


@pytest.mark.parametrize("style", range(7))
@pytest.mark.parametrize("date1904", [False, True])
def test_numbers_dates_and_durations_by_style(tmp_path: Path, style: int, date1904: bool) -> None:
    # A duration past 10⁹ days: calamine cannot make a timedelta of it (below), we give the number.
    numbers = [n for n in NUMBERS if style not in (2, 6) or abs(float(n)) < 1e9]
    rows = "".join(
        _cells(n + 1, [(f's="{style}"', f"<v>{value}</v>")]) for n, value in enumerate(numbers)
    )
    both(package(tmp_path / "n.xlsx", rows, date1904=date1904))


def test_a_duration_too_large_for_python_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    path = package(tmp_path / "d.xlsx", _cells(1, [('s="2"', "<v>1e300</v>")]))
    assert list(stream_rows(path, "S")) == [[10**300]]
    with pytest.raises(InputError, match=r"d\.xlsx holds a duration cell too large to read"):
        list(sheets.sheet_rows(path, "xlsx", sheets.Sheet("S", "calamine")))


def test_types_inline_strings_formulas_and_odd_values(tmp_path: Path) -> None:
    cells = [
        ('t="inlineStr"', "<is><t>a_x000D_b</t></is>"),
        (
            't="inlineStr"',
            '<is><r><t>ri</t></r><r><t xml:space="preserve">ch </t></r><rPh><t>PH</t></rPh></is>',
        ),
        ('t="inlineStr"', "<is><t><![CDATA[Hello <CDATA>]]></t></is>"),
        ('t="b"', "<v>1</v>"),
        ('t="b"', "<v>0</v>"),
        ('t="e"', "<v>#DIV/0!</v>"),
        ('t="str"', "<f>A1</f><v>x&amp;y</v>"),
        ("", "<f>1+1</f><v>2</v>"),
        ('t="d"', "<v>2020-01-02T03:04:05</v>"),
        ('t="d"', "<v>2020-01-02</v>"),
        ('t="d"', "<v>12:30:00</v>"),
        ('t="d"', "<v>2020-01-02T00:00:00Z</v>"),
        ("", "<v>  12 </v>"),
        ("", "<v>1_0</v>"),
        ("", "<v></v>"),
        ('t="n"', "<v>5</v>"),
        ('t="str"', "<v> </v>"),
        ('t="s"', "<v></v>"),
    ]
    both(package(tmp_path / "t.xlsx", _cells(1, cells)))


def test_layouts_writers_rarely_use(tmp_path: Path) -> None:
    rows = (
        '<row r="2"><c r="B2" t="s"><v>0</v></c><c r="E2"><v>7</v></c></row>'  # gaps
        '<row><c t="s"><v>0</v></c><c><v>1</v></c></row>'  # no r: row 3, columns A, B
        '<row r="5" spans="1:3" ht="20"/>'  # self-closing
        "<row r='6'><c t='s' r='C6' s='1'><v>0</v></c><c s=\"1\" r=\"D6\"><v>45293</v></c></row>"
        '<row r="7"><c r="A7" s="1" t="s" cm="1"><v>0</v></c><c r="B7"/><c r="C7"></c></row>'
        '<row r="9" customFormat="1"><c r="AA9"><v>3</v></c></row>'
    )
    rows_read = both(package(tmp_path / "l.xlsx", rows))
    assert rows_read[1] == [None, "张三", None, None, 7]
    assert rows_read[2] == ["张三", 1]
    assert rows_read[8] == [None] * 26 + [3]


def test_a_namespace_prefix_and_strict_open_xml(tmp_path: Path) -> None:
    row = '<x:row r="1"><x:c r="A1" t="s"><x:v>0</x:v></x:c><x:c r="B1"><x:v>2</x:v></x:c></x:row>'
    assert both(package(tmp_path / "p.xlsx", row, prefix="x")) == [["张三", 2]]
    plain = saved(tmp_path / "plain.xlsx", [["姓名", 1.5, dt.datetime(2020, 1, 2, 3, 4)]])
    strict = strict_ooxml(plain, tmp_path / "strict.xlsx")
    assert both(strict) == [["姓名", 1.5, dt.datetime(2020, 1, 2, 3, 4)]]


def test_workbooks_as_xlsxwriter_and_openpyxl_save_them(tmp_path: Path) -> None:
    rng = random.Random(13)
    values: list[Any] = [
        "张三",
        "",
        " lead",
        "trail ",
        "a\nb",
        "_x000D_",
        "<&>",
        0,
        -3,
        1.5,
        2**53,
        1e-9,
        True,
        False,
        dt.datetime(2024, 2, 29, 13, 14, 15),
        dt.date(1900, 1, 1),
        dt.datetime(1900, 2, 28),
        dt.time(8, 30),
        None,
    ]
    grid = [[rng.choice(values) for _ in range(12)] for _ in range(300)]
    book = xlsxwriter.Workbook(str(tmp_path / "x.xlsx"), {"strings_to_numbers": False})
    ws = book.add_worksheet("S")
    date_format = book.add_format({"num_format": "yyyy-mm-dd hh:mm"})
    for r, row in enumerate(grid):
        for c, value in enumerate(row):
            if isinstance(value, dt.date | dt.time):
                ws.write_datetime(r, c, value, date_format)
            elif value is not None:
                ws.write(r, c, value)
    book.close()
    both(tmp_path / "x.xlsx")
    both(saved(tmp_path / "o.xlsx", grid))


@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_chunk_borders_change_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    shared = [f"名字{i}" for i in range(50)] + SHARED
    rows = "".join(
        _cells(r, [('t="s"', f"<v>{(r * 7 + c) % len(shared)}</v>") for c in range(4)])
        for r in range(1, 60)
    )
    path = package(tmp_path / "c.xlsx", rows, shared=shared)
    whole = list(stream_rows(path, "S"))
    monkeypatch.setattr(xlsx_rows, "_CHUNK", chunk)
    assert list(stream_rows(path, "S")) == whole == both(path)


def test_a_large_sheet_is_streamed_and_reads_as_calamine_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sheets, "CALAMINE_MAX_CELLS", 100)
    people = [[f"张{i}", "11010119900307803X", 13812345678 + i] for i in range(200)]
    saved(tmp_path / "big.xlsx", [["姓名", "身份证号", "手机号"], *people])
    source = open_source(tmp_path / "big.xlsx")
    assert source._sheet == sheets.Sheet("S", "stream")
    rows = list(source.rows())
    assert rows == both(tmp_path / "big.xlsx")[1:]
    assert rows[199] == ["张199", "11010119900307803X", 13812345678 + 199]


def test_a_sheet_part_in_utf16_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # calamine reads no rows at all from it (and the patch refuses to write it back): the
    # reader still reads it, so `validate` and a CSV output work.
    path = package(tmp_path / "u8.xlsx", _cells(1, [('t="s"', "<v>0</v>"), ("", "<v>5</v>")]))
    with zipfile.ZipFile(path) as z:
        parts = {n: z.read(n) for n in z.namelist()}
    xml = parts["xl/worksheets/sheet1.xml"].decode().replace('"UTF-8"', '"UTF-16"')
    parts["xl/worksheets/sheet1.xml"] = xml.encode("utf-16")
    with zipfile.ZipFile(tmp_path / "u16.xlsx", "w") as out:
        for name, data in parts.items():
            out.writestr(name, data)
    monkeypatch.setattr(xlsx_rows, "_CHUNK", 7)  # chunks that end inside characters
    assert list(stream_rows(tmp_path / "u16.xlsx", "S")) == [["张三", 5]]


# --- damaged sheets -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rows",
    [
        '<row r="1"><c r="A1" t="s"><v>99</v></c></row>',  # no such shared string
        '<row r="1"><c r="A1" t="b"><v>2</v></c></row>',  # neither true nor false
        '<row r="2"><c r="A2"><v>1</v></c></row><row r="1"/>',  # rows out of order
        '<row r="1"><c r="B1"><v>1</v></c><c r="A1"><v>1</v></c></row>',  # cells out of order
    ],
)
def test_a_damaged_sheet_is_one_line_naming_the_file(tmp_path: Path, rows: str) -> None:
    path = package(tmp_path / "d.xlsx", rows)
    with pytest.raises(InputError, match=r"d\.xlsx is a damaged \.xlsx file .* save it again"):
        list(stream_rows(path, "S"))


def test_a_sheet_cut_short_is_damaged(tmp_path: Path) -> None:
    path = package(tmp_path / "full.xlsx", _cells(1, [("", "<v>1</v>")]) * 1)
    with zipfile.ZipFile(path) as z:
        parts = {n: z.read(n) for n in z.namelist()}
    sheet = parts["xl/worksheets/sheet1.xml"]
    parts["xl/worksheets/sheet1.xml"] = sheet[: sheet.index(b"</sheetData>")]
    with zipfile.ZipFile(tmp_path / "cut.xlsx", "w") as out:
        for name, data in parts.items():
            out.writestr(name, data)
    with pytest.raises(InputError, match="damaged"):
        list(stream_rows(tmp_path / "cut.xlsx", "S"))


# --- number formats -------------------------------------------------------------------------

FORMATS = {  # calamine's own cases (formats.rs), and a few of ours
    "DD/MM/YY": DATE,
    "H:MM:SS;@": DATE,
    "#,##0\\ [$\\u20bd-46D]": NUMBER,
    'm"M"d"D";@': DATE,
    "[h]:mm:ss": DURATION,
    '"Y: "0.00"m";"Y: "-0.00"m";"Y: <num>m";@': NUMBER,
    '"$"#,##0_);[Red]("$"#,##0)': NUMBER,
    "0_ ;[Red]\\-0\\ ": NUMBER,
    "\\Y000000": NUMBER,
    '#,##0.0####" YMD"': NUMBER,
    "[h]": DURATION,
    "[ss]": DURATION,
    "[s].000": DURATION,
    "[Blue]\\+[h]:mm;[Red]\\-[h]:mm;[Green][h]:mm": DURATION,
    "[>=100][Magenta].00": NUMBER,
    "[>=100][Magenta]General": NUMBER,
    "ha/p\\\\m": DATE,
    "#,##0*y": NUMBER,
    "*-yyyy-mm-dd": DATE,
    'yyyy"年"m"月"d"日"': DATE,
    "0.00%": NUMBER,
    "General": NUMBER,
}


@pytest.mark.parametrize(("code", "kind"), FORMATS.items())
def test_what_a_number_format_makes_of_a_number(code: str, kind: int) -> None:
    assert format_kind(code) == kind


# --- the shared-string table ----------------------------------------------------------------


def test_shared_strings_spill_sealed_and_come_back_in_any_order() -> None:
    texts = [f"客户{i}号 13812345678" if i % 3 else "" for i in range(BLOCK * 5 + 17)]
    with contextlib.closing(SharedStrings(cache_blocks=2)) as table:
        table.extend(texts)
        table.finish()
        assert len(table) == len(texts)
        order = list(range(len(texts)))
        random.Random(7).shuffle(order)
        assert [table[i] for i in order] == [texts[i] for i in order]
        assert sum(block is not None for block in table._decoded) <= 2
        assert table._file is not None
        table._file.seek(0)
        on_disk = table._file.read()
        assert "客户".encode() not in on_disk and b"13812345678" not in on_disk
        with pytest.raises(IndexError):
            table[len(texts) + BLOCK]


def test_a_small_table_never_touches_the_disk() -> None:
    with contextlib.closing(SharedStrings()) as table:
        table.extend(["a", "b"])
        table.finish()
        assert (table[0], table[1], table._file) == ("a", "b", None)
        with pytest.raises(IndexError):
            table[2]


# --- through enrich -------------------------------------------------------------------------


def _values(path: Path, sheet: str) -> list[tuple[Any, ...]]:
    workbook = openpyxl.load_workbook(path, read_only=True)
    try:
        return [tuple(row) for row in workbook[sheet].iter_rows(values_only=True)]
    finally:
        workbook.close()


SAMPLE = Path(__file__).parent.parent / "sample_data" / "customers.xlsx"


def _with_shared_strings(path: Path) -> Path:
    """The sample (inline strings, as openpyxl saves) as Excel and XlsxWriter save it."""
    rows = list(sheets.sheet_rows(SAMPLE, "xlsx", sheets.Sheet("客户", "calamine")))
    book = xlsxwriter.Workbook(str(path), {"strings_to_numbers": False})
    sheet = book.add_worksheet("客户")
    for r, row in enumerate(rows):
        sheet.write_row(r, 0, row)
    book.close()
    return path


@pytest.mark.parametrize("strings", ["inline", "shared"])
@pytest.mark.parametrize("out", ["out.xlsx", "out.csv"])
def test_enrich_gives_the_same_file_whichever_reader_reads_the_sheet(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    run: Callable[..., Result],
    out: str,
    strings: str,
) -> None:
    src = SAMPLE if strings == "inline" else _with_shared_strings(tmp_path / "shared.xlsx")
    assert run("enrich", str(src), "--sandbox", "-o", str(tmp_path / "fill.xlsx")).exit_code == 0
    # Every answer is in the journal now: both runs below write the very same results.
    by_calamine = run("enrich", str(src), "--sandbox", "-o", str(tmp_path / f"a.{out}"))
    monkeypatch.setattr(sheets, "CALAMINE_MAX_CELLS", 1)
    assert open_source(src)._sheet is not None and open_source(src)._sheet.engine == "stream"
    streamed = run("enrich", str(src), "--sandbox", "-o", str(tmp_path / f"b.{out}"))
    assert (by_calamine.exit_code, streamed.exit_code) == (0, 0)
    a, b = tmp_path / f"a.{out}", tmp_path / f"b.{out}"
    if out.endswith(".csv"):
        assert a.read_bytes() == b.read_bytes()
    else:
        name = sheets.worksheet_names(src, "xlsx")[0]
        assert _values(a, name) == _values(b, name)
        assert len(_values(a, name)) > 40


def test_a_package_whose_entry_names_use_backslashes_is_read_and_written_back_well_formed(
    tmp_path: Path, run: Callable[..., Result]
) -> None:
    # Some exporters (Chinese HR and attendance systems among them) write xl\workbook.xml.
    odd = tmp_path / "odd.xlsx"
    with zipfile.ZipFile(SAMPLE) as src, zipfile.ZipFile(odd, "w", zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            out.writestr(info.filename.replace("/", "\\"), src.read(info))
    assert run("enrich", str(SAMPLE), "--sandbox", "-o", str(tmp_path / "a.xlsx")).exit_code == 0
    done = run("enrich", str(odd), "--sandbox", "-o", str(tmp_path / "b.xlsx"))
    assert done.exit_code == 0, done.output
    with zipfile.ZipFile(tmp_path / "b.xlsx") as written:
        assert not [n for n in written.namelist() if "\\" in n]
        assert written.testzip() is None
    assert _values(tmp_path / "b.xlsx", "客户") == _values(tmp_path / "a.xlsx", "客户")
    assert list(open_source(odd).rows()) == list(open_source(SAMPLE).rows())

"""Tests for batch_enricher.xlsx_patch: the input workbook comes back with result columns added.

The round trip compares input and output cell by cell and style by style over the original
area, and the untouched parts of the package byte for byte. Edge cases of the sheet XML
(namespace prefixes, rows and cells without `r`, self-closing rows, `<sheetData/>`, column
ranges over the new columns, filters, tables, an earlier run's result columns) are written by
hand, as other writers produce them.
"""

from __future__ import annotations

import datetime
import itertools
import os
import re
import shutil
import stat
import subprocess
import warnings
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterable, Sequence
from copy import copy
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from python_calamine import CalamineWorkbook

from batch_enricher.errors import InputError
from batch_enricher.writer import Cell, SummarySheet, Tail
from batch_enricher.xlsx_patch import check_workbook, open_patch_writer, patch_workbook
from tests.workbooks import FIXTURE_AREA, SHEET, area_differences
from tests.workbooks import customer_workbook as _fixture
from tests.workbooks import load as _load
from tests.workbooks import parts as _parts
from tests.workbooks import soffice as _soffice
from tests.workbooks import write_parts as _write_parts

MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
RESULT_HEADERS = ["status", "error_code", "error_reason", "orderid", "score", "queried_at"]
#: Parts of the fixture the patch must edit; every other part must come back byte for byte.
EDITED = {
    "xl/worksheets/sheet2.xml",
    "xl/styles.xml",
    "xl/workbook.xml",
    "xl/_rels/workbook.xml.rels",
    "[Content_Types].xml",
}  # and docProps/app.xml when it lists the sheets: openpyxl's does not
SUMMARY = SummarySheet(
    title="Summary",
    rows=[("input", "customers.xlsx"), ("rows", 5), ("ok", 3)],
    charts=[("range", [("[0,10)", 2), ("[10,20)", 1)]), ("history", [("A", 3)])],
)


# --- fixtures ----------------------------------------------------------------------------------


def _results(rows: Iterable[int]) -> list[tuple[int, list[Cell]]]:
    out: list[tuple[int, list[Cell]]] = []
    for row in rows:
        status = ("ok", "failed", "invalid")[row % 3]
        out.append(
            (
                row,
                [
                    status,
                    10011 if status == "failed" else None,
                    None,
                    f"JH{row}",
                    row * 10,
                    "2024-01-02 03:04:05",
                ],
            )
        )
    return out


def _patch(src: Path, dst: Path, results: Iterable[tuple[int, Sequence[Cell]]], **kw: Any) -> Path:
    options: dict[str, Any] = {
        "sheet": SHEET,
        "header_row": 2,
        "first_col": 9,
        "headers": RESULT_HEADERS,
        "status_column": 0,
        "text_columns": {3},
        "summary": SUMMARY,
    }
    options.update(kw)
    patch_workbook(src, dst, results=results, **options)
    return dst


# --- the round trip ----------------------------------------------------------------------------


@pytest.fixture
def round_trip(tmp_path: Path) -> tuple[Path, Path]:
    src = _fixture(tmp_path / "in.xlsx")
    # Rows 3-8, the blank row 6 with empty results as the runner gives it.
    results = [(row, cells) for row, cells in _results([3, 4, 5, 7, 8])]
    results.insert(3, (6, [None] * len(RESULT_HEADERS)))
    return src, _patch(src, tmp_path / "out.xlsx", results)


def test_original_area_is_unchanged_cell_by_cell_and_style_by_style(
    round_trip: tuple[Path, Path],
) -> None:
    src, out = round_trip
    before, after = _load(src)[SHEET], _load(out)[SHEET]
    assert (before.max_row, before.max_column) == FIXTURE_AREA
    assert area_differences(before, after, *FIXTURE_AREA) == []
    assert before.freeze_panes == "B3" and after.row_dimensions[1].height == 28
    assert len(after.data_validations.dataValidation) == 2
    assert len(after.conditional_formatting) == 1


def test_formula_keeps_its_cached_value(round_trip: tuple[Path, Path]) -> None:
    src, out = round_trip
    assert _load(out)[SHEET]["H4"].value == "=D3*2"
    assert _load(src, data_only=True)[SHEET]["H4"].value == 2469.12
    assert _load(out, data_only=True)[SHEET]["H4"].value == 2469.12
    sheet = CalamineWorkbook.from_path(str(out)).get_sheet_by_name(SHEET).to_python()
    assert sheet[3][7] == 2469.12


def test_other_parts_come_back_byte_for_byte(round_trip: tuple[Path, Path]) -> None:
    src, out = round_trip
    before, after = _parts(src), _parts(out)
    assert set(before) <= set(after)
    changed = {name for name in before if before[name] != after[name]}
    assert changed == EDITED
    assert (
        after["xl/worksheets/sheet1.xml"] == before["xl/worksheets/sheet1.xml"]
    )  # the other sheet


def test_result_columns_are_typed_and_styled(round_trip: tuple[Path, Path]) -> None:
    out = _load(round_trip[1])[SHEET]
    header = [out.cell(2, col) for col in range(9, 9 + len(RESULT_HEADERS))]
    assert [c.value for c in header] == RESULT_HEADERS
    assert all(c.font.b for c in header)
    assert all(out.cell(1, col).value is None for col in range(9, 15))  # the title row: nothing
    ok, failed = out["I3"], out["I4"]
    assert (ok.value, ok.fill.fgColor.rgb, ok.font.color.rgb) == ("ok", "FFC6EFCE", "FF006100")
    assert (failed.value, failed.fill.fgColor.rgb) == ("failed", "FFFFC7CE")
    assert out["J4"].value == 10011 and out["J4"].data_type == "n"
    assert (out["L3"].value, out["L3"].number_format, out["L3"].data_type) == ("JH3", "@", "s")
    assert out["M7"].value == 70
    assert [out.cell(6, col).value for col in range(1, 15)] == [None] * 14  # the blank row
    assert out.column_dimensions["I"].width >= 8
    assert out.auto_filter.ref == "A2:N8"


def test_summary_sheet_is_added_after_the_others(round_trip: tuple[Path, Path]) -> None:
    wb = _load(round_trip[1])
    assert wb.sheetnames == ["说明", SHEET, "Summary"]
    summary = wb["Summary"]
    assert summary["A1"].value == "Summary" and summary["A1"].font.b
    assert [(summary.cell(r, 1).value, summary.cell(r, 2).value) for r in range(2, 5)] == [
        ("input", "customers.xlsx"),
        ("rows", 5),
        ("ok", 3),
    ]
    assert summary["A6"].value == "range" and summary["A7"].value == "[0,10)"
    assert summary["B7"].value == 2
    assert len(summary._charts) == 2
    workbook = _parts(round_trip[1])["xl/workbook.xml"].decode()
    assert "_xlnm._FilterDatabase" in workbook and "'客户 list'!$A$2:$N$8" in workbook


def test_calamine_reads_the_output_like_the_input(round_trip: tuple[Path, Path]) -> None:
    src, out = round_trip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        before = CalamineWorkbook.from_path(str(src)).get_sheet_by_name(SHEET).to_python()
        book = CalamineWorkbook.from_path(str(out))
        after = book.get_sheet_by_name(SHEET).to_python()
    assert book.sheet_names == ["说明", SHEET, "Summary"]
    assert [row[:8] for row in after] == [row[:8] for row in before]
    assert after[2][8:] == ["ok", "", "", "JH3", 30.0, "2024-01-02 03:04:05"]


def test_all_xml_parts_are_well_formed(round_trip: tuple[Path, Path]) -> None:
    for name, data in _parts(round_trip[1]).items():
        if name.endswith((".xml", ".rels")):
            ET.fromstring(data)


@pytest.mark.skipif(shutil.which("soffice") is None, reason="LibreOffice is not installed")
def test_libreoffice_reads_the_output(round_trip: tuple[Path, Path], tmp_path: Path) -> None:
    out = round_trip[1]
    csv_dir = tmp_path / "csv"
    _soffice(
        "csv:Text - txt - csv (StarCalc):44,34,76,1,,0,false,true,false,false,false,2", out, csv_dir
    )
    text = (csv_dir / "out-客户 list.csv").read_text(encoding="utf-8")
    assert "status" in text.splitlines()[1] and "JH3" in text.splitlines()[2]


@pytest.mark.skipif(shutil.which("soffice") is None, reason="LibreOffice is not installed")
def test_a_libreoffice_saved_workbook_round_trips(tmp_path: Path) -> None:
    # LibreOffice writes column ranges to the last column, a self-contained autoFilter
    # element and cached formula values of its own.
    resaved = tmp_path / "lo"
    _soffice("xlsx", _fixture(tmp_path / "in.xlsx"), resaved)
    src = resaved / "in.xlsx"
    out = _patch(src, tmp_path / "out.xlsx", _results([3, 4, 5, 7, 8]))
    before, after = _load(src)[SHEET], _load(out)[SHEET]
    for row in before.iter_rows(min_row=1, max_row=8, max_col=8):
        for a in row:
            b = after[a.coordinate]
            assert (a.value, a.number_format, copy(a.font), copy(a.fill)) == (
                b.value,
                b.number_format,
                copy(b.font),
                copy(b.fill),
            ), a.coordinate
    assert _load(out, data_only=True)[SHEET]["H4"].value == 2469.12
    _assert_columns_do_not_overlap(_parts(out)["xl/worksheets/sheet2.xml"])
    assert after["I3"].value == "ok" and after.column_dimensions["A"].width == pytest.approx(
        before.column_dimensions["A"].width
    )


# --- the sheet XML as other writers write it -------------------------------------------------


def _package(
    path: Path,
    sheet_xml: str,
    *,
    extra_sheets: Sequence[str] = (),
    shared_strings: Sequence[str] = (),
) -> Path:
    """A minimal package holding `sheet_xml` as sheet "Data" (after `extra_sheets`)."""
    titles = [*extra_sheets, "Data"]
    sheets = "".join(
        f'<sheet name="{t}" sheetId="{i}" r:id="rId{i}"/>' for i, t in enumerate(titles, 1)
    )
    rels = "".join(
        f'<Relationship Id="rId{i}" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
        f'relationships/worksheet" Target="worksheets/sheet{i}.xml"/>'
        for i in range(1, len(titles) + 1)
    )
    overrides = "".join(
        f'<Override PartName="/xl/worksheets/sheet{i}.xml" ContentType="application/'
        'vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
        for i in range(1, len(titles) + 1)
    )
    parts = {
        "[Content_Types].xml": (
            '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" ContentType="application/'
            'vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
            '<Override PartName="/xl/workbook.xml" ContentType="application/'
            'vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
            f"{overrides}</Types>"
        ),
        "_rels/.rels": (
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
            'relationships/officeDocument" Target="xl/workbook.xml"/></Relationships>'
        ),
        "xl/workbook.xml": (
            f'<workbook xmlns="{MAIN}" xmlns:r="http://schemas.openxmlformats.org/'
            f'officeDocument/2006/relationships"><sheets>{sheets}</sheets></workbook>'
        ),
        "xl/_rels/workbook.xml.rels": (
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            f"{rels}</Relationships>"
        ),
        **{
            f"xl/worksheets/sheet{i}.xml": f'<worksheet xmlns="{MAIN}"><sheetData/></worksheet>'
            for i in range(1, len(titles))
        },
        f"xl/worksheets/sheet{len(titles)}.xml": sheet_xml,
    }
    if shared_strings:
        items = "".join(f"<si><t>{text}</t></si>" for text in shared_strings)
        parts["xl/sharedStrings.xml"] = (
            f'<sst xmlns="{MAIN}" count="{len(shared_strings)}" '
            f'uniqueCount="{len(shared_strings)}">{items}</sst>'
        )
        parts["xl/_rels/workbook.xml.rels"] = parts["xl/_rels/workbook.xml.rels"].replace(
            "</Relationships>",
            '<Relationship Id="rId99" Type="http://schemas.openxmlformats.org/officeDocument/'
            '2006/relationships/sharedStrings" Target="sharedStrings.xml"/></Relationships>',
        )
        parts["[Content_Types].xml"] = parts["[Content_Types].xml"].replace(
            "</Types>",
            '<Override PartName="/xl/sharedStrings.xml" ContentType="application/'
            'vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"/></Types>',
        )
    _write_parts(path, {name: text.encode() for name, text in parts.items()})
    return path


def _patched_sheet(
    tmp_path: Path,
    sheet_xml: str,
    results: Iterable[tuple[int, Sequence[Cell]]],
    *,
    header_row: int = 1,
    first_col: int = 3,
    headers: Sequence[str] = ("status", "code"),
    summary: SummarySheet | None = None,
) -> tuple[Path, str]:
    src = _package(tmp_path / "in.xlsx", sheet_xml)
    out = tmp_path / "out.xlsx"
    patch_workbook(
        src,
        out,
        sheet="Data",
        header_row=header_row,
        first_col=first_col,
        headers=headers,
        results=results,
        status_column=0,
        summary=summary,
    )
    return out, _parts(out)["xl/worksheets/sheet1.xml"].decode()


def _values(path: Path) -> list[list[Any]]:
    """The Data sheet through openpyxl (None for empty), rows from 1."""
    ws = _load(path)["Data"]
    return [list(row) for row in ws.iter_rows(values_only=True)]


def test_prefixed_elements_rows_and_cells_without_r_self_closing_rows(tmp_path: Path) -> None:
    sheet = (
        f'<x:worksheet xmlns:x="{MAIN}"><x:sheetData>'
        '<x:row r="1"><x:c r="A1" t="inlineStr"><x:is><x:t>name</x:t></x:is></x:c></x:row>'
        "<x:row><x:c><x:v>1</x:v></x:c><x:c><x:v>2</x:v></x:c></x:row>"  # row 2, A2 and B2
        '<x:row r="4" ht="30" customHeight="1"/>'
        "</x:sheetData></x:worksheet>"
    )
    results = [(2, ["ok", 1]), (3, ["failed", 2]), (4, ["ok", 3]), (6, ["invalid", 4])]
    out, xml = _patched_sheet(tmp_path, sheet, results)
    assert _values(out) == [
        ["name", None, "status", "code"],
        [1, 2, "ok", 1],
        [None, None, "failed", 2],  # created at its place
        [None, None, "ok", 3],
        [None, None, None, None],
        [None, None, "invalid", 4],  # created after the last row
    ]
    root = ET.fromstring(xml)
    assert all(row.tag == f"{{{MAIN}}}row" for row in root.iter() if row.tag.endswith("row"))
    assert _load(out)["Data"].row_dimensions[4].height == 30
    assert CalamineWorkbook.from_path(str(out)).get_sheet_by_name("Data").to_python()[1] == [
        1.0,
        2.0,
        "ok",
        1.0,
    ]


def test_empty_sheet_data_gets_rows(tmp_path: Path) -> None:
    sheet = f'<worksheet xmlns="{MAIN}"><dimension ref="A1"/><sheetData/></worksheet>'
    out, xml = _patched_sheet(tmp_path, sheet, [(3, ["ok", 1])])
    assert _values(out) == [
        [None, None, "status", "code"],
        [None, None, None, None],
        [None, None, "ok", 1],
    ]
    assert '<dimension ref="A1:D3"/>' in xml


def test_new_columns_split_a_column_range_over_them(tmp_path: Path) -> None:
    sheet = (
        f'<worksheet xmlns="{MAIN}"><cols><col min="1" max="1" width="30" customWidth="1"/>'
        '<col min="2" max="16384" width="9.5" style="0" customWidth="1"/></cols>'
        '<sheetData><row r="1"><c r="A1"><v>1</v></c></row></sheetData></worksheet>'
    )
    out, xml = _patched_sheet(tmp_path, sheet, [(2, ["ok", 1])])
    ranges = _assert_columns_do_not_overlap(xml.encode())
    assert ranges[:2] == [(1, 1), (2, 2)] and ranges[-1] == (5, 16384)
    ws = _load(out)["Data"]
    assert ws.column_dimensions["A"].width == 30
    assert ws.column_dimensions["B"].width == 9.5
    assert ws.column_dimensions["E"].width == 9.5


def _assert_columns_do_not_overlap(sheet_xml: bytes) -> list[tuple[int, int]]:
    ranges = [
        (int(low), int(high))
        for low, high in re.findall(rb'<col\b[^>]*?min="(\d+)"[^>]*?max="(\d+)"', sheet_xml)
        + [
            (low, high)
            for high, low in re.findall(rb'<col\b[^>]*?max="(\d+)"[^>]*?min="(\d+)"', sheet_xml)
        ]
    ]
    ranges.sort()
    for (_, high), (low, _) in itertools.pairwise(ranges):
        assert high < low, ranges
    return ranges


def test_a_filter_on_the_header_row_is_extended_others_are_left(tmp_path: Path) -> None:
    rows = (
        '<sheetData><row r="1"><c r="A1"><v>1</v></c><c r="B1"><v>2</v></c></row>'
        '<row r="2"><c r="A2"><v>1</v></c></row></sheetData>'
    )
    on_header = (
        f'<worksheet xmlns="{MAIN}">{rows}<autoFilter ref="A1:B2"><filterColumn colId="0"/>'
        "</autoFilter></worksheet>"
    )
    _, xml = _patched_sheet(tmp_path, on_header, [(2, ["ok", 1])])
    assert '<autoFilter ref="A1:D2">' in xml
    elsewhere = f'<worksheet xmlns="{MAIN}">{rows}<autoFilter ref="A2:B2"/></worksheet>'
    _, xml = _patched_sheet(tmp_path, elsewhere, [(2, ["ok", 1])])
    assert xml.count("<autoFilter") == 1 and '<autoFilter ref="A2:B2"/>' in xml


def test_a_sheet_with_a_table_gets_no_filter_of_ours(tmp_path: Path) -> None:
    sheet = (
        f'<worksheet xmlns="{MAIN}" xmlns:r="http://schemas.openxmlformats.org/officeDocument/'
        '2006/relationships"><sheetData><row r="1"><c r="A1"><v>1</v></c></row></sheetData>'
        '<tableParts count="1"><tablePart r:id="rId9"/></tableParts></worksheet>'
    )
    _, xml = _patched_sheet(tmp_path, sheet, [(2, ["ok", 1])])
    assert "<autoFilter" not in xml


def test_a_new_filter_goes_where_the_schema_puts_it(tmp_path: Path) -> None:
    sheet = (
        f'<worksheet xmlns="{MAIN}"><sheetData><row r="1"><c r="B1"><v>1</v></c></row>'
        '</sheetData><mergeCells count="1"><mergeCell ref="A5:B5"/></mergeCells>'
        '<pageMargins left="0.7" right="0.7" top="0.75" bottom="0.75" header="0.3" footer="0.3"/>'
        "</worksheet>"
    )
    _, xml = _patched_sheet(tmp_path, sheet, [(2, ["ok", 1])])
    assert '</sheetData><autoFilter ref="B1:D2"/><mergeCells' in xml


def test_an_earlier_runs_result_cells_are_replaced_and_later_cells_kept(tmp_path: Path) -> None:
    sheet = (
        f'<worksheet xmlns="{MAIN}"><sheetData>'
        '<row r="1"><c r="A1"><v>1</v></c><c r="C1" t="inlineStr"><is><t>old</t></is></c>'
        '<c r="D1"><v>9</v></c><c r="F1"><v>6</v></c></row>'
        '<row r="2"><c r="A2"><v>2</v></c><c r="C2"><v>7</v></c><c r="E2"><v>5</v></c></row>'
        '<row r="3"><c r="A3"><v>3</v></c><c r="D3" s="0"/></row>'
        "</sheetData></worksheet>"
    )
    results = [(2, ["ok", None]), (3, ["failed", 4])]
    out, _ = _patched_sheet(tmp_path, sheet, results)
    assert _values(out) == [
        [1, None, "status", "code", None, 6],
        [2, None, "ok", None, 5, None],
        [3, None, "failed", 4, None, None],
    ]


def test_result_text_is_never_a_formula_and_keeps_its_characters(tmp_path: Path) -> None:
    sheet = f'<worksheet xmlns="{MAIN}"><sheetData/></worksheet>'
    texts = ["=1+1", "_x0041_", "a\rb\nc", " lead", "<&>", "#N/A", "\x07bell"]
    results = [(row, ["ok", text]) for row, text in enumerate(texts, 2)]
    out, xml = _patched_sheet(tmp_path, sheet, results)
    assert "<f>" not in xml
    expected = ["=1+1", "_x0041_", "a\rb\nc", " lead", "<&>", "#N/A", "bell"]
    calamine = CalamineWorkbook.from_path(str(out)).get_sheet_by_name("Data").to_python()
    assert [row[-1] for row in calamine[1:]] == expected
    # openpyxl reads inline strings without undoing Excel's _xHHHH_ escapes (Excel,
    # LibreOffice and calamine do): a literal "_x0041_" is written escaped, or Excel shows "A".
    got = [row[3] for row in _values(out)[1:]]
    assert got == [*expected[:1], "_x005F_x0041_", *expected[2:]]
    ws = _load(out)["Data"]
    assert all(ws.cell(row, 4).data_type == "s" for row in range(2, 2 + len(texts)))


def test_typed_values(tmp_path: Path) -> None:
    sheet = f'<worksheet xmlns="{MAIN}"><sheetData/></worksheet>'
    values: list[Cell] = [
        True,
        2.5,
        10**15 + 1,
        6222021234567890000,  # 15 significant digits: what a double from a spreadsheet shows
        float("inf"),
        datetime.datetime(2024, 1, 2, 3, 4, 5),
        datetime.date(2024, 1, 2),
        datetime.time(6, 30),
    ]
    results = [(row, ["ok", value]) for row, value in enumerate(values, 2)]
    out, _ = _patched_sheet(tmp_path, sheet, results)
    got = [row[3] for row in _values(out)[1:]]
    assert got == [
        True,
        2.5,
        "1000000000000001",
        6222021234567890000,
        "inf",
        datetime.datetime(2024, 1, 2, 3, 4, 5),
        datetime.datetime(2024, 1, 2),
        datetime.time(6, 30),
    ]


def test_dates_follow_a_1904_workbook(tmp_path: Path) -> None:
    src = _fixture(tmp_path / "in.xlsx")
    parts = _parts(src)
    parts["xl/workbook.xml"] = parts["xl/workbook.xml"].replace(
        b"<workbookPr", b'<workbookPr date1904="1"', 1
    )
    _write_parts(src, parts)
    results = [(3, ["ok", None, None, None, None, datetime.datetime(2024, 1, 2, 3, 4, 5)])]
    out = _patch(src, tmp_path / "out.xlsx", results)
    assert _load(out)[SHEET]["N3"].value == datetime.datetime(2024, 1, 2, 3, 4, 5)


# --- the package -------------------------------------------------------------------------------


def test_a_users_summary_sheet_is_never_replaced(tmp_path: Path) -> None:
    src = tmp_path / "in.xlsx"
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = "Summary"
    ws["A1"] = "mine"
    data = wb.create_sheet("Data")
    data.append(["name"])
    data.append(["张三"])
    wb.save(src)
    out = tmp_path / "out.xlsx"
    patch_workbook(
        src,
        out,
        sheet="Data",
        header_row=1,
        first_col=2,
        headers=["status"],
        results=[(2, ["ok"])],
        summary=SUMMARY,
    )
    book = _load(out)
    assert book.sheetnames == ["Summary", "Data", "Summary (2)"]
    assert book["Summary"]["A1"].value == "mine"
    assert _parts(out)["xl/worksheets/sheet1.xml"] == _parts(src)["xl/worksheets/sheet1.xml"]


def test_app_properties_list_the_new_sheet(tmp_path: Path) -> None:
    src = _package(tmp_path / "in.xlsx", f'<worksheet xmlns="{MAIN}"><sheetData/></worksheet>')
    parts = _parts(src)
    parts["docProps/app.xml"] = (
        b'<Properties xmlns="http://schemas.openxmlformats.org/officeDocument/2006/extended-'
        b'properties" xmlns:vt="http://schemas.openxmlformats.org/officeDocument/2006/'
        b'docPropsVTypes"><HeadingPairs><vt:vector size="4" baseType="variant"><vt:variant>'
        b"<vt:lpstr>\xe5\xb7\xa5\xe4\xbd\x9c\xe8\xa1\xa8</vt:lpstr></vt:variant><vt:variant>"
        b"<vt:i4>1</vt:i4></vt:variant><vt:variant><vt:lpstr>Named Ranges</vt:lpstr>"
        b"</vt:variant><vt:variant><vt:i4>1</vt:i4></vt:variant></vt:vector></HeadingPairs>"
        b'<TitlesOfParts><vt:vector size="2" baseType="lpstr"><vt:lpstr>Data</vt:lpstr>'
        b"<vt:lpstr>Data!Print_Area</vt:lpstr></vt:vector></TitlesOfParts></Properties>"
    )
    parts["_rels/.rels"] = parts["_rels/.rels"].replace(
        b"</Relationships>",
        b'<Relationship Id="rId2" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
        b'relationships/extended-properties" Target="docProps/app.xml"/></Relationships>',
    )
    _write_parts(src, parts)
    out = tmp_path / "out.xlsx"
    patch_workbook(
        src,
        out,
        sheet="Data",
        header_row=1,
        first_col=1,
        headers=["s"],
        results=[],
        summary=SUMMARY,
    )
    app = _parts(out)["docProps/app.xml"].decode()
    assert "<vt:i4>2</vt:i4></vt:variant><vt:variant><vt:lpstr>Named Ranges" in app
    assert (
        '<vt:vector size="3" baseType="lpstr"><vt:lpstr>Data</vt:lpstr><vt:lpstr>Summary'
        "</vt:lpstr><vt:lpstr>Data!Print_Area" in app
    )


def _with_macros(path: Path) -> Path:
    """Make an openpyxl workbook an .xlsm package with a (fake) VBA project."""
    parts = _parts(path)
    parts["xl/vbaProject.bin"] = b"\xd0\xcf\x11\xe0 not really VBA"
    parts["xl/_rels/workbook.xml.rels"] = parts["xl/_rels/workbook.xml.rels"].replace(
        b"</Relationships>",
        b'<Relationship Id="rId99" Type="http://schemas.microsoft.com/office/2006/'
        b'relationships/vbaProject" Target="vbaProject.bin"/></Relationships>',
    )
    parts["[Content_Types].xml"] = (
        parts["[Content_Types].xml"]
        .replace(b"spreadsheetml.sheet.main+xml", b"ms-excel.sheet.macroEnabled.main+xml")
        .replace(b"vnd.openxmlformats-officedocument.ms-excel", b"vnd.ms-excel")
        .replace(
            b"</Types>",
            b'<Override PartName="/xl/vbaProject.bin" '
            b'ContentType="application/vnd.ms-office.vbaProject"/></Types>',
        )
    )
    assert b"application/vnd.ms-excel.sheet.macroEnabled.main+xml" in parts["[Content_Types].xml"]
    _write_parts(path, parts)
    return path


def _patch_one(src: Path, target: Path) -> None:
    """Patch `src` into `target` with one result ("ok" in row 3, column I)."""
    with open_patch_writer(
        target, src, sheet=SHEET, header_row=2, first_col=9, headers=RESULT_HEADERS
    ) as writer:
        writer.write_result(3, ["ok"])
        writer.commit(SUMMARY)


def test_xlsm_keeps_its_macros(tmp_path: Path) -> None:
    src = _with_macros(_fixture(tmp_path / "in.xlsm"))
    target = tmp_path / "out.xlsm"
    _patch_one(src, target)
    before, after = _parts(src), _parts(target)
    assert after["xl/vbaProject.bin"] == before["xl/vbaProject.bin"]
    assert b"macroEnabled.main+xml" in after["[Content_Types].xml"]
    assert b"vbaProject" in after["xl/_rels/workbook.xml.rels"]
    assert _load(target, keep_vba=True)[SHEET]["I3"].value == "ok"


def test_xlsm_written_as_xlsx_drops_the_macros(tmp_path: Path) -> None:
    src = _with_macros(_fixture(tmp_path / "in.xlsm"))
    target = tmp_path / "out.xlsx"
    _patch_one(src, target)
    after = _parts(target)
    assert "xl/vbaProject.bin" not in after
    assert b"vbaProject" not in after["xl/_rels/workbook.xml.rels"]
    assert b"vbaProject" not in after["[Content_Types].xml"]
    assert b"macroEnabled" not in after["[Content_Types].xml"]
    assert _load(target)[SHEET]["I3"].value == "ok"


def test_writer_commits_atomically_and_privately(tmp_path: Path) -> None:
    src = _fixture(tmp_path / "in.xlsx")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / "result.xlsx"
    with open_patch_writer(
        target, src, sheet=SHEET, header_row=2, first_col=9, headers=RESULT_HEADERS
    ) as writer:
        ok = writer.tail(["ok", None, None, "JH1"])
        writer.write_row(["张三", "...original cells, not rewritten"], ok)  # row 3
        writer.write_row([], Tail(("failed", 10011)))  # row 4
        writer.write_result(7, ["ok"])
        assert not target.exists()
        writer.commit(SUMMARY)
    assert os.listdir(out_dir) == ["result.xlsx"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    ws = _load(target)[SHEET]
    assert [ws["I3"].value, ws["L3"].value, ws["I4"].value, ws["J4"].value, ws["I7"].value] == [
        "ok",
        "JH1",
        "failed",
        10011,
        "ok",
    ]
    assert ws["A3"].value == "张三"


def test_writer_abort_leaves_nothing(tmp_path: Path) -> None:
    src = _fixture(tmp_path / "in.xlsx")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / "result.xlsx"
    with (
        pytest.raises(RuntimeError),
        open_patch_writer(
            target, src, sheet=SHEET, header_row=2, first_col=9, headers=RESULT_HEADERS
        ) as writer,
    ):
        writer.write_result(3, ["ok"])
        raise RuntimeError("stop")
    assert os.listdir(out_dir) == []


def test_rows_must_come_in_order(tmp_path: Path) -> None:
    src = _fixture(tmp_path / "in.xlsx")
    with pytest.raises(ValueError, match="row 4"):
        _patch(src, tmp_path / "out.xlsx", [(5, ["ok"]), (4, ["ok"])])
    with pytest.raises(ValueError, match="row 2"):
        _patch(src, tmp_path / "out.xlsx", [(2, ["ok"])])  # the header row itself


def test_bad_inputs_are_input_errors_naming_the_file(tmp_path: Path) -> None:
    not_zip = tmp_path / "plain.xlsx"
    not_zip.write_text("name\n张三\n", encoding="utf-8")

    def check(path: Path, sheet: str = SHEET, first_col: int = 9) -> None:
        check_workbook(
            path,
            sheet=sheet,
            header_row=2,
            first_col=first_col,
            headers=RESULT_HEADERS,
            spool_dir=tmp_path,
        )

    with pytest.raises(InputError, match=r"plain\.xlsx"):
        check(not_zip, "Sheet1")
    with pytest.raises(InputError, match=r"plain\.xlsx"):
        _patch(not_zip, tmp_path / "out.xlsx", [])
    src = _fixture(tmp_path / "in.xlsx")
    with pytest.raises(InputError, match="no sheet named 'Nope'"):
        check(src, "Nope")
    check(src)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.xlsx", "out.xlsx", "plain.xlsx"]
    utf16 = _package(tmp_path / "u16.xlsx", "x")
    parts = _parts(utf16)
    parts["xl/worksheets/sheet1.xml"] = (
        f'<worksheet xmlns="{MAIN}"><sheetData/></worksheet>'.encode("utf-16")
    )
    _write_parts(utf16, parts)
    with pytest.raises(InputError, match="UTF-16"):
        patch_workbook(
            utf16,
            tmp_path / "o.xlsx",
            sheet="Data",
            header_row=1,
            first_col=2,
            headers=["s"],
            results=[],
        )
    with pytest.raises(InputError, match=r"cannot add results to u16\.xlsx: .*UTF-16"):
        check(utf16, "Data", first_col=2)


def test_the_check_reads_every_part_the_patch_reads(tmp_path: Path) -> None:
    # Parts calamine never opens (app.xml, [Content_Types].xml) made the write pass fail after
    # the calls were paid for, some with a raw BadZipFile or zlib error.
    src = _fixture(tmp_path / "in.xlsx")
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as package:
        info = package.getinfo("docProps/app.xml")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + info.compress_size // 2] ^= 0x55
    damaged = tmp_path / "damaged.xlsx"
    damaged.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"to damaged\.xlsx: the workbook is corrupt"):
        check_workbook(
            damaged,
            sheet=SHEET,
            header_row=2,
            first_col=9,
            headers=RESULT_HEADERS,
            spool_dir=tmp_path,
        )
    with pytest.raises(InputError, match=r"damaged\.xlsx"):  # and the patch itself says so
        _patch(damaged, tmp_path / "out.xlsx", _results([3]))


def test_a_result_block_past_the_last_column_is_refused(tmp_path: Path) -> None:
    src = _fixture(tmp_path / "in.xlsx")
    from batch_enricher.errors import OutputError

    with pytest.raises(OutputError, match="XFD"):
        _patch(src, tmp_path / "out.xlsx", [], first_col=16380)


def test_many_rows_stream_through(tmp_path: Path) -> None:
    # More rows than the width sample and than one read buffer holds.
    wb = openpyxl.Workbook(write_only=True)
    ws = wb.create_sheet("Data")
    ws.append(["name", "id"])
    for number in range(1, 20_001):
        ws.append([f"name {number} " + "x" * 40, number])
    src = tmp_path / "in.xlsx"
    wb.save(src)
    out = tmp_path / "out.xlsx"
    patch_workbook(
        src,
        out,
        sheet="Data",
        header_row=1,
        first_col=3,
        headers=["status", "n"],
        results=((row, ["ok", row]) for row in range(2, 20_002) if row % 7),
        status_column=0,
    )
    rows = CalamineWorkbook.from_path(str(out)).get_sheet_by_name("Data").to_python()
    assert len(rows) == 20_001
    for number, row in enumerate(rows[1:], 2):
        assert row[:2] == [f"name {number - 1} " + "x" * 40, float(number - 1)]
        assert row[2:] == (["ok", float(number)] if number % 7 else ["", ""])


def test_rich_text_inside_the_last_cell_is_not_taken_for_a_cell(tmp_path: Path) -> None:
    sheet = (
        f'<worksheet xmlns="{MAIN}"><sheetData><row r="1">'
        '<c r="A1" t="inlineStr"><is><r><rPr><b/><color rgb="FFFF0000"/></rPr><t>red</t></r>'
        "<r><t> plain</t></r></is></c></row></sheetData></worksheet>"
    )
    out, _ = _patched_sheet(tmp_path, sheet, [], header_row=1, first_col=2)
    assert _values(out) == [["red plain", "status", "code"]]


def test_a_corrupt_sheet_stream_is_an_input_error(tmp_path: Path) -> None:
    rows = "".join(
        f'<row r="{r}"><c r="A{r}"><v>{r * 7919 % 10007}</v></c></row>' for r in range(1, 5000)
    )
    src = _package(
        tmp_path / "in.xlsx", f'<worksheet xmlns="{MAIN}"><sheetData>{rows}</sheetData></worksheet>'
    )
    with zipfile.ZipFile(src) as zf:
        info = zf.getinfo("xl/worksheets/sheet1.xml")
    data = bytearray(src.read_bytes())
    middle = info.header_offset + 30 + len(info.filename) + info.compress_size // 2
    data[middle : middle + 16] = bytes(16)
    src.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"in\.xlsx"):
        _patch(src, tmp_path / "out.xlsx", [], sheet="Data", header_row=1, first_col=2)


def test_a_shared_strings_workbook_keeps_its_string_table(tmp_path: Path) -> None:
    # What Excel writes: every text cell an index into xl/sharedStrings.xml.
    sheet = (
        f'<worksheet xmlns="{MAIN}"><sheetData>'
        '<row r="1" spans="1:2"><c r="A1" t="s"><v>0</v></c><c r="B1" t="s"><v>1</v></c></row>'
        '<row r="2" spans="1:2"><c r="A2" t="s"><v>2</v></c><c r="B2" t="s"><v>3</v></c></row>'
        "</sheetData></worksheet>"
    )
    src = _package(
        tmp_path / "in.xlsx", sheet, shared_strings=["姓名", "手机号", "张三", "13812345678"]
    )
    out = tmp_path / "out.xlsx"
    patch_workbook(
        src, out, sheet="Data", header_row=1, first_col=3, headers=["status"], results=[(2, ["ok"])]
    )
    assert _parts(out)["xl/sharedStrings.xml"] == _parts(src)["xl/sharedStrings.xml"]
    assert _values(out) == [["姓名", "手机号", "status"], ["张三", "13812345678", "ok"]]
    rows = CalamineWorkbook.from_path(str(out)).get_sheet_by_name("Data").to_python()
    assert rows == [["姓名", "手机号", "status"], ["张三", "13812345678", "ok"]]
    assert "spans" not in _parts(out)["xl/worksheets/sheet1.xml"].decode()  # hints now wrong


def test_entries_keep_their_order_and_unchanged_ones_their_compressed_bytes(
    round_trip: tuple[Path, Path],
) -> None:
    src, out = round_trip
    with zipfile.ZipFile(src) as before, zipfile.ZipFile(out) as after:
        assert after.testzip() is None
        names = [info.filename for info in after.infolist()]
        original = [info.filename for info in before.infolist()]
        assert names[: len(original)] == original
        for info in before.infolist():
            if info.filename not in EDITED:
                copied = after.getinfo(info.filename)
                assert (copied.CRC, copied.compress_size) == (info.CRC, info.compress_size)


@pytest.mark.skipif(shutil.which("file") is None, reason="file(1) is not installed")
def test_file_type_detection_sees_the_output_as_it_saw_the_input(tmp_path: Path) -> None:
    # libmagic reads the first local headers only: a big entry early must not hide the rest,
    # so [Content_Types].xml has to stay first, as Excel and XlsxWriter put it.
    import xlsxwriter

    src = tmp_path / "in.xlsx"
    book = xlsxwriter.Workbook(str(src))
    sheet = book.add_worksheet("Data")
    sheet.write_row(0, 0, ["name", "note"])
    for row in range(1, 3000):
        sheet.write_row(row, 0, [f"name {row}", f"note {row * 7919}"])
    book.close()
    out = tmp_path / "out.xlsx"
    results = [(row, ["ok"]) for row in range(2, 3001)]
    patch_workbook(
        src, out, sheet="Data", header_row=1, first_col=3, headers=["status"], results=results,
        summary=SUMMARY,
    )  # fmt: skip

    def kind(path: Path) -> str:
        return subprocess.run(["file", "-b", str(path)], capture_output=True, text=True).stdout

    if "Excel 2007" not in kind(src):
        pytest.skip(f"this file(1) does not recognise workbooks: {kind(src)!r}")
    assert kind(out) == kind(src)

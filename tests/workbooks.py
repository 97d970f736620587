"""Workbooks for the tests: the customer fixture, package surgery, and the round-trip check.

Shared by tests/test_xlsx_patch.py (the patch module alone), tests/test_fidelity.py and
tests/test_round_trip.py (the same through `batch-enricher enrich`).
"""

from __future__ import annotations

import datetime
import re
import subprocess
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from copy import copy
from pathlib import Path
from typing import Any

import openpyxl
from openpyxl.comments import Comment
from openpyxl.formatting.rule import CellIsRule
from openpyxl.styles import Alignment, Border, Font, PatternFill, Side
from openpyxl.worksheet.datavalidation import DataValidation

from batch_enricher import sheets

SHEET = "客户 list"
#: The people of the fixture's sheet, rows 3-5 and 7-8 (row 6 is blank).
FIXTURE_PEOPLE = [
    ("张三", "11010119900307803X", "13812345678"),
    ("李四", "110101199003071234", "13912345678"),
    ("王五", "11010119900307555X", "13712345678"),
    ("赵六", "110101199003076666", "13612345678"),
    ("钱七", "110101199003077777", "13512345678"),
]
#: The fixture's enriched sheet: 8 rows (a title, the header, six rows) by 8 columns.
FIXTURE_AREA = (8, 8)
STYLES = ("font", "fill", "border", "alignment", "protection")


def customer_workbook(path: Path, people: Sequence[tuple[str, str, str]] = FIXTURE_PEOPLE) -> Path:
    """Two sheets; the enriched one second, with a title row, formats, merges, a blank row,
    an unlabelled extra column, a formula with a cached value, validation and a comment.

    `people` fills the name/ID/mobile cells of rows 3-5 and 7-8 (five people).
    """
    wb = openpyxl.Workbook()
    notes = wb.active
    assert notes is not None
    notes.title = "说明"
    notes["A1"] = "Read me first"
    notes["A1"].font = Font(italic=True, color="FF0000")
    notes.column_dimensions["A"].width = 40

    ws = wb.create_sheet(SHEET)
    ws["A1"] = "2024年1月客户名单"
    ws.merge_cells("A1:E1")
    ws["A1"].font = Font(bold=True, size=14, name="宋体")
    ws["A1"].fill = PatternFill("solid", fgColor="DDEBF7")
    ws["A1"].alignment = Alignment(horizontal="center", vertical="center")
    ws.row_dimensions[1].height = 28
    thin = Side(style="thin", color="999999")
    for col, header in enumerate(["姓名", "身份证号", "手机号", "金额", "比例", "编号", "日期"], 1):
        cell = ws.cell(2, col, header)
        cell.font = Font(bold=True, color="FFFFFF")
        cell.fill = PatternFill("solid", fgColor="4472C4")
        cell.border = Border(bottom=thin, top=thin)
    p = list(people)
    rows: list[list[Any]] = [
        [*p[0], 1234.56, 0.125, 42, datetime.date(2024, 1, 2)],
        [*p[1], -5, 1, 7, datetime.date(2023, 12, 31)],
        [*p[2], 0, 0.5, 123456, datetime.date(2024, 2, 29)],
        [],  # a blank row (row 6): no <row> element at all
        [*p[3], 99.9, 0.001, 1, datetime.date(2020, 5, 6)],
        [*p[4], 10, 0.2, 0, datetime.date(1999, 12, 31)],
    ]
    for number, values in enumerate(rows, 3):
        for col, value in enumerate(values, 1):
            ws.cell(number, col, value)
        if values:
            ws.cell(number, 2).number_format = "@"
            ws.cell(number, 4).number_format = '"¥"#,##0.00'
            ws.cell(number, 5).number_format = "0.00%"
            ws.cell(number, 6).number_format = "000000"
            ws.cell(number, 7).number_format = "yyyy-mm-dd"
    ws["A3"].alignment = Alignment(wrap_text=True, indent=1)
    ws["C4"].font = Font(underline="single", strike=True)
    ws["H3"] = "VIP, call before 10"  # the unlabelled extra column
    ws["H4"] = "=D3*2"  # a formula; its cached value is added below
    ws["H7"] = "notes"
    ws.column_dimensions["A"].width = 12
    ws.column_dimensions["B"].width = 22
    ws.column_dimensions["D"].width = 14.5
    ws.freeze_panes = "B3"
    validation = DataValidation(type="whole", operator="between", formula1="0", formula2="999999")
    validation.add("F3:F8")
    ws.add_data_validation(validation)
    choice = DataValidation(type="list", formula1='"北京,上海"', allow_blank=True)
    choice.add("C3:C8")
    ws.add_data_validation(choice)
    red = PatternFill("solid", fgColor="FFC7CE")
    ws.conditional_formatting.add("D3:D8", CellIsRule(operator="lessThan", formula=["0"], fill=red))
    ws["A2"].comment = Comment("who to call", "ops")
    wb.save(path)
    set_cached_value(path, "xl/worksheets/sheet2.xml", "D3*2", "2469.12")
    return path


def set_cached_value(path: Path, part: str, formula: str, value: str) -> None:
    """Give a formula cell the cached value Excel would have saved (openpyxl writes none)."""
    package = parts(path)
    xml = package[part].decode()
    new, count = re.subn(
        rf"(<f>{re.escape(formula)}</f>)<v\s*/>", rf"\g<1><v>{value}</v>", xml, count=1
    )
    assert count == 1
    package[part] = new.encode()
    write_parts(path, package)


def parts(path: Path) -> dict[str, bytes]:
    """Every entry of a package, by name."""
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def write_parts(path: Path, package: Mapping[str, bytes]) -> None:
    """Write a package from its entries, in the given order."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in package.items():
            zf.writestr(name, data)


def saved(path: Path, rows: Sequence[Sequence[Any]], title: str = "S") -> Path:
    """A one-sheet workbook of `rows`, as openpyxl saves one (inline strings)."""
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = title
    for row in rows:
        sheet.append(list(row))
    book.save(path)
    return path


def load(path: Path, **kw: Any) -> openpyxl.Workbook:
    """openpyxl's reading of a workbook; any openpyxl warning fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return openpyxl.load_workbook(path, **kw)


def strict_ooxml(plain: Path, strict: Path) -> Path:
    """The workbook as Excel's "Strict Open XML Spreadsheet" would save it (namespaces)."""
    moves = [
        (b"http://schemas.openxmlformats.org/spreadsheetml/2006/main", sheets.STRICT_NS.encode()),
        (
            b"http://schemas.openxmlformats.org/officeDocument/2006/relationships",
            b"http://purl.oclc.org/ooxml/officeDocument/relationships",
        ),
    ]
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(strict, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name != "[Content_Types].xml":
                for old, new in moves:
                    data = data.replace(old, new)
            dst.writestr(name, data)
    return strict


def soffice(convert_to: str, src: Path, outdir: Path) -> None:
    """Convert with headless LibreOffice, in a private profile."""
    profile = outdir.parent / "lo-profile"
    subprocess.run(
        [
            "soffice",
            f"-env:UserInstallation=file://{profile}",
            "--headless",
            "--convert-to",
            convert_to,
            "--outdir",
            str(outdir),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=90,
    )


def area_differences(before: Any, after: Any, rows: int, columns: int) -> list[str]:
    """Where two worksheets differ over rows x columns: values, types, number formats,
    styles, comments; and over the sheet: merges, freeze panes, widths, heights,
    data validation and conditional formats. Empty when they agree."""
    found: list[str] = []
    for row in range(1, rows + 1):
        for col in range(1, columns + 1):
            a, b = before.cell(row, col), after.cell(row, col)
            where = a.coordinate
            if (a.value, a.data_type) != (b.value, b.data_type):
                found.append(f"{where}: value {a.value!r} became {b.value!r}")
            if a.number_format != b.number_format:
                found.append(f"{where}: format {a.number_format!r} became {b.number_format!r}")
            for style in STYLES:
                # copy(): openpyxl's style proxies compare equal to a style, not to a proxy
                if copy(getattr(a, style)) != copy(getattr(b, style)):
                    found.append(f"{where}: {style} differs")
            if (a.comment and a.comment.text) != (b.comment and b.comment.text):
                found.append(f"{where}: comment differs")
    sheet_wide = {
        "merged cells": lambda ws: sorted(map(str, ws.merged_cells.ranges)),
        "freeze panes": lambda ws: ws.freeze_panes,
        "column widths": lambda ws: [
            ws.column_dimensions[openpyxl.utils.get_column_letter(c)].width
            for c in range(1, columns + 1)
        ],
        "row heights": lambda ws: [ws.row_dimensions[r].height for r in range(1, rows + 1)],
        "data validation": lambda ws: sorted(
            (str(v.sqref), v.type, v.formula1, v.formula2)
            for v in ws.data_validations.dataValidation
        ),
        "conditional formats": lambda ws: sorted(
            (str(cf.sqref), *(str(r.formula) for r in cf.rules)) for cf in ws.conditional_formatting
        ),
    }
    for what, get in sheet_wide.items():
        if get(before) != get(after):
            found.append(f"{what}: {get(before)!r} became {get(after)!r}")
    return found

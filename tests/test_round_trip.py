"""Issue 11, acceptance 2: a workbook enriched through `batch-enricher enrich` is the same workbook.

The input is the customer fixture of tests/workbooks.py (two sheets, the enriched one second,
with a title row, number formats, dates, fonts, fills, merged cells, widths, freeze panes, data
validation, conditional formats, a formula with a cached value, a blank row and an unlabelled
extra column), filled with people the sandbox knows. After a real run against the sandbox the
original area must show no difference, cell by cell and style by style, and the other sheet
must come back byte for byte; the same for the workbook as LibreOffice saves it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result
from python_calamine import CalamineWorkbook

from batch_enricher.columns import RESULT_COLUMNS
from tests.conftest import Served, person
from tests.workbooks import (
    FIXTURE_AREA,
    SHEET,
    area_differences,
    customer_workbook,
    load,
    parts,
    soffice,
)

Run = Callable[..., Result]

PEOPLE = [person(i) for i in range(5)]
#: The sheet rows of the five people (row 6 is blank).
PEOPLE_ROWS = (3, 4, 5, 7, 8)
#: The result block: after the widest row (column H, the unlabelled notes), from column I.
FIRST_RESULT_COLUMN = 9


def _enriched(
    src: Path, out: Path, sandbox: Callable[..., Served], enrich_at: Run
) -> tuple[Served, Result]:
    server = sandbox()
    result = enrich_at(server, str(src), "--sheet", SHEET, "-o", str(out))
    assert result.exit_code == 0, result.output
    return server, result


def _check(src: Path, out: Path, server: Served, result: Result) -> None:
    assert "the header is row 2" in result.output
    assert sorted(server.stats.received) == sorted(PEOPLE)
    assert server.stats.billed == len(PEOPLE)
    before, after = load(src), load(out)
    assert after.sheetnames == [*before.sheetnames, "Summary"]
    assert area_differences(before[SHEET], after[SHEET], *FIXTURE_AREA) == []
    notes = before.sheetnames[0]
    assert area_differences(before[notes], after[notes], 1, 1) == []
    ws = after[SHEET]
    headers = [ws.cell(2, FIRST_RESULT_COLUMN + i).value for i in range(len(RESULT_COLUMNS["en"]))]
    assert headers == list(RESULT_COLUMNS["en"])
    for row in range(1, FIXTURE_AREA[0] + 1):
        status = ws.cell(row, FIRST_RESULT_COLUMN).value
        assert status == ("ok" if row in PEOPLE_ROWS else "status" if row == 2 else None), row
    # The cached value of the formula, as a reader that does not calculate sees it.
    assert load(out, data_only=True)[SHEET]["H4"].value == 2469.12
    calamine = CalamineWorkbook.from_path(str(out)).get_sheet_by_name(SHEET).to_python()
    assert calamine[3][7] == 2469.12


def test_an_enriched_workbook_is_the_same_workbook(
    tmp_path: Path, sandbox: Callable[..., Served], enrich_at: Run
) -> None:
    src = customer_workbook(tmp_path / "customers.xlsx", PEOPLE)
    out = tmp_path / "customers.enriched.xlsx"

    server, result = _enriched(src, out, sandbox, enrich_at)

    _check(src, out, server, result)
    before, after = parts(src), parts(out)
    assert after["xl/worksheets/sheet1.xml"] == before["xl/worksheets/sheet1.xml"]
    changed = {name for name in before if before[name] != after.get(name)}
    assert changed <= {
        "xl/worksheets/sheet2.xml",
        "xl/styles.xml",
        "xl/workbook.xml",
        "xl/_rels/workbook.xml.rels",
        "[Content_Types].xml",
        "docProps/app.xml",
    }


def test_the_difference_check_sees_a_difference(tmp_path: Path) -> None:
    # The comparison must be able to fail: a workbook with one format and one width changed.
    src = customer_workbook(tmp_path / "a.xlsx", PEOPLE)
    other = customer_workbook(tmp_path / "b.xlsx", PEOPLE)
    book = load(other)
    book[SHEET]["E4"].number_format = "0.0%"
    book[SHEET].column_dimensions["B"].width = 30
    book.save(other)
    found = area_differences(load(src)[SHEET], load(other)[SHEET], *FIXTURE_AREA)
    assert any(line.startswith("E4: format") for line in found)
    assert any(line.startswith("column widths") for line in found)


@pytest.mark.skipif(shutil.which("soffice") is None, reason="LibreOffice is not installed")
def test_a_libreoffice_saved_workbook_comes_back_the_same(
    tmp_path: Path, sandbox: Callable[..., Served], enrich_at: Run
) -> None:
    (tmp_path / "made").mkdir()
    made = customer_workbook(tmp_path / "made" / "customers.xlsx", PEOPLE)
    soffice("xlsx", made, tmp_path / "lo")
    src = tmp_path / "lo" / "customers.xlsx"
    out = tmp_path / "out.xlsx"

    server, result = _enriched(src, out, sandbox, enrich_at)

    _check(src, out, server, result)

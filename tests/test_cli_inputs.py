"""Real-world inputs through the CLI: encodings, headers, messy values, `validate`, `--dry-run`."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import openpyxl
import pytest
import xlwt
from click.testing import Result
from stdnum.cn.ric import calc_check_digit

from batch_enricher.columns import RESULT_COLUMNS
from tests.conftest import Served, person, read_csv, write_csv

Run = Callable[..., Result]


def test_gbk_csv_with_chinese_headers_round_trips(
    tmp_path: Path, sandbox: Callable[..., Served], enrich_at: Run
) -> None:
    server = sandbox()
    people = [person(i) for i in range(5)]
    src = tmp_path / "gbk.csv"
    lines = ["客户姓名,身份证号码,联系电话,备注"] + [
        f"{n},{i},{m},北京市朝阳区" for n, i, m in people
    ]
    src.write_bytes(("\r\n".join(lines) + "\r\n").encode("gbk"))

    result = enrich_at(server, str(src), "-o", str(tmp_path / "out.csv"))

    assert result.exit_code == 0, result.output
    rows = read_csv(tmp_path / "out.csv")
    assert [(r["客户姓名"], r["身份证号码"], r["联系电话"], r["备注"]) for r in rows] == [
        (n, i, m, "北京市朝阳区") for n, i, m in people
    ]
    assert {r["status"] for r in rows} <= {"ok", "rejected"}


def test_utf8_tsv_and_english_headers_with_odd_spacing(
    tmp_path: Path, sandbox: Callable[..., Served], enrich_at: Run
) -> None:
    server = sandbox()
    people = [person(i) for i in range(4)]
    src = tmp_path / "in.tsv"
    src.write_text(
        " Name \tID_Card\tMOBILE \n" + "".join(f"{n}\t{i}\t{m}\n" for n, i, m in people),
        encoding="utf-8",
    )

    result = enrich_at(server, str(src))

    assert result.exit_code == 0, result.output
    out = tmp_path / "in.enriched.tsv"
    text = out.read_text(encoding="utf-8-sig")
    assert text.splitlines()[0].startswith(" Name \tID_Card\tMOBILE \tstatus\t")
    assert all(f"{n}\t{i}\t{m}\t" in text for n, i, m in people)


def test_xls_input_is_read_and_written_as_xlsx(
    tmp_path: Path, sandbox: Callable[..., Served], enrich_at: Run
) -> None:
    server = sandbox()
    people = [person(i) for i in range(3)]
    book = xlwt.Workbook()
    sheet = book.add_sheet("客户")
    for col, header in enumerate(["姓名", "身份证", "手机号", "金额"]):
        sheet.write(0, col, header)
    for row, (n, i, m) in enumerate(people, start=1):
        sheet.write(row, 0, n)
        sheet.write(row, 1, i)
        sheet.write(row, 2, int(m))  # a mobile stored as a number
        sheet.write(row, 3, 12.5)
    src = tmp_path / "legacy.xls"
    book.save(str(src))

    result = enrich_at(server, str(src), "--sheet", "客户")

    assert result.exit_code == 0, result.output
    out = tmp_path / "legacy.enriched.xlsx"
    ws = openpyxl.load_workbook(out).worksheets[0]
    got = [list(r[:4]) for r in ws.iter_rows(min_row=2, values_only=True)]
    assert got == [[n, i, m, 12.5] for n, i, m in people]
    # Each person sent once, the mobile as its digits; calls run concurrently, in any order.
    assert sorted(server.stats.received) == sorted(people)


def _fullwidth(text: str) -> str:
    return text.translate({ord(c): ord(c) + 0xFEE0 for c in "0123456789X"})


def test_messy_values_are_sent_normalised_and_rounded_ids_never_sent(
    tmp_path: Path, sandbox: Callable[..., Served], enrich_at: Run
) -> None:
    server = sandbox()
    p = [person(i) for i in range(10, 20)]
    x_id = next(pp for pp in (person(i) for i in range(100, 2000)) if pp[1].endswith("X"))
    legacy15 = "110101850307123"  # 15-digit legacy ID: born 1985-03-07
    body = "11010119850307123"
    legacy18 = body + calc_check_digit(body + "0")
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.append(["姓名", "身份证号", "手机号"])
    cases = [
        (p[0][0], p[0][1], int(p[0][2])),  # mobile stored as a number
        (x_id[0], " " + x_id[1][:-1] + "x ", x_id[2]),  # lower-case x and spaces
        (p[1][0], _fullwidth(p[1][1]), _fullwidth(p[1][2])),  # full-width digits
        (p[2][0], p[2][1], "+86 " + p[2][2][:3] + " " + p[2][2][3:7] + " " + p[2][2][7:]),
        ("买买提•艾力", p[3][1], p[3][2]),
        ("阿依古丽・买买提", p[4][1], p[4][2]),
        ("古丽･努尔", p[5][1], p[5][2]),
        ("艾力‧买买提", p[6][1], p[6][2]),
        ("王建国", legacy15, p[7][2]),
        ("刘德华", 110101199003071234, p[8][2]),  # an 18-digit ID Excel rounded to a number
        ("陈奕迅", "1.10101199003071E+17", p[9][2]),  # the same, as text
    ]
    for case in cases:
        ws.append(list(case))
    src = tmp_path / "messy.xlsx"
    wb.save(src)
    out = tmp_path / "out.xlsx"

    result = enrich_at(server, str(src), "-o", str(out))

    assert result.exit_code == 0, result.output
    received = set(server.stats.received)
    assert (p[0][0], p[0][1], p[0][2]) in received
    assert (x_id[0], x_id[1], x_id[2]) in received
    assert (p[1][0], p[1][1], p[1][2]) in received
    assert (p[2][0], p[2][1], p[2][2]) in received
    for name in ("买买提·艾力", "阿依古丽·买买提", "古丽·努尔", "艾力·买买提"):
        assert name in {r[0] for r in received}
    assert ("王建国", legacy18, p[7][2]) in received
    assert len(server.stats.received) == len(received) == 9, "rounded IDs never sent, no one twice"
    ws_out = openpyxl.load_workbook(out).worksheets[0]
    rows = list(ws_out.iter_rows(min_row=2, values_only=True))
    assert rows[8][1] == legacy15, "the original cell stays as it was"
    for rounded in rows[9:]:
        assert rounded[3] == "invalid"
        assert "Excel" in str(rounded[5]) and "text" in str(rounded[5])


def test_validate_sends_nothing_and_counts_problems(tmp_path: Path, run: Run) -> None:
    good = [list(person(i)) for i in range(3)]
    src = write_csv(
        tmp_path / "in.csv",
        [
            *good,
            ["", person(5)[1], person(5)[2]],
            [person(6)[0], "110101199002301234", person(6)[2]],
        ],
    )
    report = tmp_path / "report.csv"

    result = run("validate", str(src), "-o", str(report))

    assert result.exit_code == 3, result.output
    assert "5 row(s): 3 valid, 2 invalid" in result.output
    assert "nothing was sent" in result.output
    assert "1  身份证号格式错误: birth date YYYY-MM-DD does not exist" in result.output
    assert "1990-02-30" not in result.output, "row details stay off the terminal"
    rows = read_csv(report)
    assert [r["status"] for r in rows] == ["valid"] * 3 + ["invalid"] * 2
    assert rows[4]["error_code"] == "281501"

    clean = write_csv(tmp_path / "clean.csv", good)
    assert run("validate", str(clean)).exit_code == 0


def test_dry_run_sends_nothing_and_reports_distinct_people(
    tmp_path: Path, sandbox: Callable[..., Served], enrich_at: Run
) -> None:
    server = sandbox()
    people = [list(person(i)) for i in range(6)]
    src = write_csv(tmp_path / "in.csv", people + people[:2] + [["", "1", "2"]])
    summary = tmp_path / "s.json"

    result = enrich_at(server, str(src), "--dry-run", "--summary-json", str(summary))

    assert result.exit_code == 0, result.output
    assert server.stats.requests == 0
    assert not (tmp_path / "in.enriched.csv").exists()
    doc = json.loads(summary.read_text(encoding="utf-8"))
    assert (doc["identities"], doc["would_call"], doc["max_billable"]) == (6, 6, 6)
    assert "6 call(s) would be made" in result.output
    assert "invalid 1 · from the journal: ok 0, rejected 0 · to send 8" in result.output

    assert enrich_at(server, str(src)).exit_code == 0  # pay for them once
    again = enrich_at(server, str(src), "--dry-run", "--summary-json", str(summary))
    doc = json.loads(summary.read_text(encoding="utf-8"))
    assert again.exit_code == 0 and (doc["reused"], doc["would_call"]) == (6, 0)


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    header_only = write_csv(tmp_path / "header.csv", [])
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    nocols = write_csv(tmp_path / "nocols.csv", [["a", "b"]], ("客户", "地址"))
    corrupt = tmp_path / "corrupt.xlsx"
    corrupt.write_bytes(b"PK\x03\x04 this is not really a zip file")
    protected = tmp_path / "protected.xlsx"
    protected.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 2048)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(bytes(range(256)) * 8)
    return {
        "empty": (empty, "empty"),
        "header only": (header_only, "no data rows"),
        "no columns": (nocols, "Headers found: 客户, 地址"),
        "corrupt xlsx": (corrupt, "corrupt"),
        "protected xlsx": (protected, "password"),
        "binary csv": (binary, "binary"),
        "missing": (tmp_path / "nope.csv", "no such file"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "empty",
        "header only",
        "no columns",
        "corrupt xlsx",
        "protected xlsx",
        "binary csv",
        "missing",
    ],
)
def test_bad_files_get_one_line_and_exit_1_and_no_output(
    tmp_path: Path, run: Run, case: str
) -> None:
    path, expected = _bad_files(tmp_path)[case]
    out = tmp_path / "out.csv"

    result = run("enrich", str(path), "--sandbox", "-o", str(out))

    assert result.exit_code == 1, result.output
    message = result.output.strip()
    assert message.startswith("Error: ") and "\n" not in message, message
    assert expected.lower() in message.lower(), message
    assert "Traceback" not in result.output
    assert not out.exists()
    assert run("validate", str(path)).exit_code == 1


def test_ragged_rows_keep_every_cell_and_are_enriched(
    tmp_path: Path, sandbox: Callable[..., Served], enrich_at: Run
) -> None:
    server = sandbox()
    n, i, m = person(1)
    src = tmp_path / "ragged.csv"
    src.write_text(
        f"姓名,身份证号,手机号,备注\n{n},{i},{m},a\n{n},{i}\n{n},{i},{m},b,extra,more\n",
        encoding="utf-8",
    )

    result = enrich_at(server, str(src), "-o", str(tmp_path / "o.csv"))

    assert result.exit_code == 0, result.output
    with (tmp_path / "o.csv").open(encoding="utf-8-sig", newline="") as fh:
        header, *rows = list(csv.reader(fh))
    # The result block starts after the widest row: the unlabelled cells keep their place.
    assert header == ["姓名", "身份证号", "手机号", "备注", "", "", *RESULT_COLUMNS["en"]]
    assert [r[:6] for r in rows] == [
        [n, i, m, "a", "", ""],
        [n, i, "", "", "", ""],
        [n, i, m, "b", "extra", "more"],
    ]
    assert [r[6] for r in rows] == ["ok", "invalid", "ok"], "a row with extra cells is enriched"
    assert "手机号" in rows[1][8]
    assert server.stats.requests == 1, "the same person, asked once"


def test_a_sheet_named_with_digits_is_that_sheet_not_an_index(tmp_path: Path, run: Run) -> None:
    book = openpyxl.Workbook()
    first = book.active
    assert first is not None
    first.title = "说明"
    first.append(["这张表没有客户"])
    named = book.create_sheet("2014")
    named.append(["姓名", "身份证号", "手机号"])
    named.append(list(person(1)))
    src = tmp_path / "years.xlsx"
    book.save(src)

    result = run("validate", str(src), "--sheet", "2014")

    assert result.exit_code == 0, result.output
    assert "1 row(s): 1 valid" in result.output

"""Issue 11, end to end: each file the issue's "Why" describes, through `batch-enricher enrich`.

Every test makes the file the way the bullet says a real export was made, runs the CLI against
the sandbox on loopback, and judges billing by what the server saw (`server.stats`): the other
rows paid with their real names, a damaged row `invalid` and never sent, nothing garbled paid
for, the output the same file with the results added.
"""

from __future__ import annotations

import csv
import datetime
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import openpyxl
import pytest
import xlwt  # type: ignore[import-untyped]
from click.testing import Result
from python_calamine import CalamineWorkbook

from batch_enricher.columns import RESULT_COLUMNS
from tests.conftest import Served, fast, person
from tests.workbooks import load, parts, strict_ooxml, write_parts

Run = Callable[..., Result]
Sandbox = Callable[..., Served]

RESULTS = list(RESULT_COLUMNS["en"])
EN = ("name", "idcard", "mobile", "note")
ZH = ("姓名", "身份证号", "手机号", "备注")
PEOPLE = [person(i) for i in range(12)]
ROOT = Path(__file__).resolve().parent.parent


def _lines(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    return _body([header, *rows])


def _body(rows: Sequence[Sequence[str]]) -> str:
    return "".join(",".join(row) + "\r\n" for row in rows)


def _with_notes(people: Sequence[tuple[str, str, str]]) -> list[tuple[str, ...]]:
    return [(*p, f"{i}号客户") for i, p in enumerate(people)]


def _out_rows(path: Path) -> list[list[str]]:
    """An output CSV (UTF-8 with BOM) as raw rows: blank rows and every cell as written."""
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return list(csv.reader(fh))


def _cyrillic_or_latin1(text: str) -> bool:
    return any("\u0400" <= ch <= "\u04ff" or "\u00c0" <= ch <= "\u00ff" for ch in text)


def _status(row: Sequence[str], width: int) -> dict[str, str]:
    return dict(zip(RESULTS, row[width:], strict=True))


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m batch_enricher ...` as a user runs it (so a Rust panic could reach stderr)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), NO_COLOR="1", JUHE_API_KEY="k")
    env.pop("RUST_BACKTRACE", None)
    return subprocess.run(
        [sys.executable, "-m", "batch_enricher", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )


# --- "It pays for garbage" ------------------------------------------------------------------


@pytest.mark.parametrize("header", [EN, ZH], ids=["english-headers", "chinese-headers"])
def test_gbk_export_with_one_stray_euro_byte_pays_the_real_names_only(
    tmp_path: Path, sandbox: Sandbox, enrich_at: Run, header: tuple[str, ...]
) -> None:
    # cp936 writes € as the single byte 0x80, which GB18030 does not decode. It once made the
    # whole file ISO-8859-5: every name Cyrillic, paid for, exit 0 (English headers), or a
    # run that stopped on garbled headers (Chinese ones).
    server = sandbox()
    rows = _with_notes(PEOPLE)
    data = _lines(header, rows).encode("gbk")
    damaged_name = PEOPLE[4][0].encode("gbk")
    data = data.replace(damaged_name, damaged_name[:2] + b"\x80" + damaged_name[2:], 1)
    src = tmp_path / "export.csv"
    src.write_bytes(data)
    out = tmp_path / "out.csv"

    result = enrich_at(server, str(src), "-o", str(out))

    assert result.exit_code == 0, result.output
    assert sorted(server.stats.received) == sorted(PEOPLE[:4] + PEOPLE[5:])
    assert not any(_cyrillic_or_latin1(name) for name, _, _ in server.stats.received)
    got = _out_rows(out)
    assert got[0] == [*header, *RESULTS]
    assert [row[1:4] for row in got[1:]] == [list(r[1:]) for r in rows]
    for number, row in enumerate(got[1:], start=2):
        status = _status(row, 4)
        if number == 6:
            assert status["status"] == "invalid"
            assert status["error_reason"].startswith(f"row 6, column 1 ({header[0]}): ")
            assert "GB18030" in status["error_reason"]
        else:
            assert row[0] == PEOPLE[number - 2][0]
            assert status["status"] == "ok", (number, status)


def test_gbk_export_with_a_double_byte_character_cut_at_the_end(
    tmp_path: Path, sandbox: Sandbox, enrich_at: Run
) -> None:
    server = sandbox()
    rows = _with_notes(PEOPLE[:6])
    data = _lines(ZH, rows).encode("gbk").rstrip(b"\r\n")[:-1]  # half of the last character
    src = tmp_path / "cut.csv"
    src.write_bytes(data)
    out = tmp_path / "out.csv"

    result = enrich_at(server, str(src), "-o", str(out))

    assert result.exit_code == 0, result.output
    assert sorted(server.stats.received) == sorted(PEOPLE[:5])
    got = _out_rows(out)
    assert [row[0] for row in got[1:]] == [p[0] for p in PEOPLE[:6]]
    last = _status(got[-1], 4)
    assert last["status"] == "invalid"
    assert last["error_reason"].startswith("row 7, column 4 (备注): bytes that are not valid")


def test_utf8_lines_in_a_gbk_file_are_never_sent_as_mojibake(
    tmp_path: Path, sandbox: Sandbox, enrich_at: Run
) -> None:
    # GB18030 decodes UTF-8 bytes without an error: 张三 as 寮犱笁, 赵伟 as 璧典紵 (two common
    # characters of three: this one was sent and paid for).
    server = sandbox()
    utf8_rows = [("张三", *PEOPLE[10][1:]), PEOPLE[7]]
    assert PEOPLE[7][0] == "赵伟"
    gbk_rows = [p for p in PEOPLE if p not in utf8_rows]
    src = tmp_path / "mixed.csv"
    src.write_bytes(_lines(ZH[:3], gbk_rows).encode("gbk") + _body(utf8_rows).encode())
    out = tmp_path / "out.csv"

    result = enrich_at(server, str(src), "-o", str(out))

    assert result.exit_code == 0, result.output
    assert sorted(server.stats.received) == sorted(gbk_rows)
    text = out.read_text(encoding="utf-8-sig")
    assert "寮" not in text and "璧" not in text
    got = _out_rows(out)
    assert [_status(row, 3)["status"] for row in got[-2:]] == ["invalid", "invalid"]
    assert _status(got[-1], 3)["error_reason"].startswith("row 14, column 1 (姓名): bytes that")


def test_a_file_half_gbk_half_utf8_is_refused_and_nothing_is_sent(
    tmp_path: Path, sandbox: Sandbox, enrich_at: Run
) -> None:
    server = sandbox()
    src = tmp_path / "half.csv"
    src.write_bytes(_lines(ZH[:3], PEOPLE[:6]).encode("gbk") + _body(PEOPLE[6:]).encode())

    result = enrich_at(server, str(src))

    assert result.exit_code == 1, result.output
    assert server.stats.requests == 0
    assert "mixes text encodings" in result.output and "--encoding" in result.output
    assert "寮" not in result.output and not (tmp_path / "half.enriched.csv").exists()


def test_latin1_copyright_sign_comes_back_as_itself(
    tmp_path: Path, sandbox: Sandbox, enrich_at: Run
) -> None:
    server = sandbox()
    latin = [("José Müller", *PEOPLE[0][1:], "© 2024"), ("Zoë Brontë", *PEOPLE[1][1:], "Zürich")]
    src = tmp_path / "latin1.csv"
    src.write_bytes(_lines(EN, latin).encode("latin-1"))
    out = tmp_path / "out.csv"

    result = enrich_at(server, str(src), "-o", str(out))

    assert result.exit_code == 0, result.output
    assert sorted(server.stats.received) == sorted(p[:3] for p in latin)
    got = _out_rows(out)
    assert [row[:4] for row in got[1:]] == [list(p) for p in latin]
    assert "ｩ" not in out.read_text(encoding="utf-8-sig")


# --- "It deletes data" ------------------------------------------------------------------------


def test_an_unlabelled_notes_column_is_kept_and_its_row_enriched(
    tmp_path: Path, sandbox: Sandbox, enrich_at: Run
) -> None:
    server = sandbox()
    src = tmp_path / "notes.csv"
    src.write_text(
        _lines(ZH[:3], [PEOPLE[0], (*PEOPLE[1], "VIP call before 10"), PEOPLE[2]]),
        encoding="utf-8",
    )
    out = tmp_path / "out.csv"

    result = enrich_at(server, str(src), "-o", str(out))

    assert result.exit_code == 0, result.output
    assert sorted(server.stats.received) == sorted(PEOPLE[:3])
    got = _out_rows(out)
    assert got[0] == [*ZH[:3], "", *RESULTS]  # results after the widest row
    assert got[2][:4] == [*PEOPLE[1], "VIP call before 10"]
    assert [row[3] for row in got[1:]] == ["", "VIP call before 10", ""]
    assert [_status(row, 4)["status"] for row in got[1:]] == ["ok"] * 3


# --- "The output is not the same workbook" ----------------------------------------------------


def test_blank_and_whitespace_rows_keep_their_place_in_a_csv(
    tmp_path: Path, sandbox: Sandbox, enrich_at: Run
) -> None:
    server = sandbox()
    src = tmp_path / "gaps.csv"
    src.write_text(_body([ZH[:3], PEOPLE[0], [], ["  ", "", " \t"], PEOPLE[1]]), encoding="utf-8")
    out = tmp_path / "out.csv"

    result = enrich_at(server, str(src), "-o", str(out))

    assert result.exit_code == 0, result.output
    got = _out_rows(out)
    assert len(got) == 5  # row N of the output is row N of the input
    assert got[1][:3] == list(PEOPLE[0]) and got[4][:3] == list(PEOPLE[1])
    assert got[2] == [""] * (3 + len(RESULTS))
    assert got[3] == ["  ", "", " \t", *[""] * len(RESULTS)]
    assert [_status(got[r], 3)["status"] for r in (1, 4)] == ["ok", "ok"]
    assert sorted(server.stats.received) == sorted(PEOPLE[:2])


def _workbook(path: Path, rows: Sequence[Sequence[Any]], *, other: bool = True) -> Path:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "客户名单"
    for number, row in enumerate(rows, start=1):
        for col, value in enumerate(row, start=1):
            sheet.cell(number, col, value)
    if other:
        notes = book.create_sheet("说明")
        notes["A1"] = "Read me first"
    book.save(path)
    return path


def test_blank_rows_and_the_other_sheet_survive_in_a_workbook(
    tmp_path: Path, sandbox: Sandbox, enrich_at: Run
) -> None:
    server = sandbox()
    rows: list[list[Any]] = [list(ZH[:3]), list(PEOPLE[0]), [], ["  ", None, " "], list(PEOPLE[1])]
    src = _workbook(tmp_path / "in.xlsx", rows)
    out = tmp_path / "out.xlsx"

    result = enrich_at(server, str(src), "-o", str(out))

    assert result.exit_code == 0, result.output
    book = load(out)
    assert book.sheetnames == ["客户名单", "说明", "Summary"]
    assert book["说明"]["A1"].value == "Read me first"
    sheet = book["客户名单"]
    got = [list(r) for r in sheet.iter_rows(values_only=True)]
    assert got[1][:4] == [*PEOPLE[0], "ok"] and got[4][:4] == [*PEOPLE[1], "ok"]
    assert got[2] == [None] * len(got[2]) and got[3][:3] == ["  ", None, " "]
    assert set(got[3][3:]) == {None}
    assert sorted(server.stats.received) == sorted(PEOPLE[:2])


def test_a_large_number_from_xls_keeps_its_digits(
    tmp_path: Path, sandbox: Sandbox, enrich_at: Run
) -> None:
    server = sandbox()
    book = xlwt.Workbook()
    sheet = book.add_sheet("客户")
    for col, text in enumerate([*ZH[:3], "账号", "金额", "单价", "编号", "比例", "日期"]):
        sheet.write(0, col, text)
    name, idcard, mobile = PEOPLE[0]
    sheet.write(1, 0, name)
    sheet.write(1, 1, idcard)
    sheet.write(1, 2, int(mobile))
    sheet.write(1, 3, 6222021234567890123)  # a bank account number kept as a number
    sheet.write(1, 4, 123456789012345, xlwt.easyxf(num_format_str='"¥"#,##0.00'))
    sheet.write(1, 5, 3586.1783646399995)  # 17 significant digits to tell it from its neighbours
    sheet.write(1, 6, 42, xlwt.easyxf(num_format_str="000000"))
    sheet.write(1, 7, 0.125, xlwt.easyxf(num_format_str="0.00%"))
    sheet.write(1, 8, datetime.date(2024, 1, 2), xlwt.easyxf(num_format_str="yyyy-mm-dd"))
    src = tmp_path / "legacy.xls"
    book.save(str(src))

    result = enrich_at(server, str(src))

    assert result.exit_code == 0, result.output
    ws = load(tmp_path / "legacy.enriched.xlsx")["客户"]
    account, amount = ws["D2"].value, ws["E2"].value
    # A number still, the very double the .xls held, shown as Excel shows it (15 digits):
    # once it became the text "6222021234567889920", digits Excel never showed.
    assert ws["D2"].data_type == "n" and float(account) == float(6222021234567890123)
    assert f"{float(account):.15g}" == "6.22202123456789e+18"
    assert ws["E2"].data_type == "n" and amount == 123456789012345
    assert ws["F2"].data_type == "n" and ws["F2"].value == 3586.1783646399995
    # Number formats kept (xlrd reads them; calamine reads only values).
    got = [(ws[c].value, ws[c].number_format) for c in ("E2", "G2", "H2", "I2", "F2")]
    assert got == [
        (123456789012345, '"¥"#,##0.00'),
        (42, "000000"),
        (0.125, "0.00%"),
        (datetime.datetime(2024, 1, 2), "yyyy-mm-dd"),
        (3586.1783646399995, "General"),
    ]
    assert server.stats.received == [PEOPLE[0]]


def test_a_bare_cr_inside_a_cell_stays_a_cr_csv_to_csv(
    tmp_path: Path, sandbox: Sandbox, enrich_at: Run
) -> None:
    server = sandbox()
    src = tmp_path / "cr.csv"
    src.write_bytes(
        _lines(EN, [(*PEOPLE[0], '"line one\rline two"'), (*PEOPLE[1], '"a\r\nb\nc"')]).encode()
    )
    out = tmp_path / "out.csv"

    result = enrich_at(server, str(src), "-o", str(out))

    assert result.exit_code == 0, result.output
    got = _out_rows(out)
    assert [row[3] for row in got[1:]] == ["line one\rline two", "a\r\nb\nc"]


def test_a_bare_cr_inside_a_cell_stays_a_cr_xlsx_to_xlsx_and_csv_to_xlsx(
    tmp_path: Path, sandbox: Sandbox, enrich_at: Run
) -> None:
    server = sandbox()
    note = "line one\rline two"
    src = _workbook(tmp_path / "cr.xlsx", [list(EN), [*PEOPLE[0], note]], other=False)
    # openpyxl writes the CR as it is, which an XML parser reads as LF.
    package = parts(src)
    sheet_xml = package["xl/worksheets/sheet1.xml"]
    assert sheet_xml.count(b"\r") == 1
    package["xl/worksheets/sheet1.xml"] = sheet_xml.replace(b"\r", b"&#13;")
    write_parts(src, package)
    assert load(src).worksheets[0]["D2"].value == note
    csv_src = tmp_path / "cr.csv"
    csv_src.write_bytes(_lines(EN, [(*PEOPLE[0], '"' + note + '"')]).encode())

    assert enrich_at(server, str(src), "-o", str(tmp_path / "x.xlsx")).exit_code == 0
    assert enrich_at(server, str(csv_src), "-o", str(tmp_path / "c.xlsx")).exit_code == 0

    patched = tmp_path / "x.xlsx"  # the input's cell, byte for byte (&#13;)
    assert load(patched).worksheets[0]["D2"].value == note
    assert CalamineWorkbook.from_path(str(patched)).get_sheet_by_index(0).to_python()[1][3] == note
    # The generated workbook holds the CR as Excel writes it, _x000D_ (openpyxl, which writes
    # a bare CR that every reader takes for LF, does not read that escape back).
    made = tmp_path / "c.xlsx"
    assert CalamineWorkbook.from_path(str(made)).get_sheet_by_index(0).to_python()[1][3] == note
    assert b"line one_x000D_line two" in parts(made)["xl/worksheets/sheet1.xml"]


# --- "It crashes" -----------------------------------------------------------------------------


def _xls(path: Path, rows: int = 300) -> Path:
    book = xlwt.Workbook()
    sheet = book.add_sheet("S")
    for col, text in enumerate(ZH[:3]):
        sheet.write(0, col, text)
    for r in range(1, rows):
        for c, value in enumerate(PEOPLE[r % len(PEOPLE)]):
            sheet.write(r, c, value)
    book.save(str(path))
    return path


def test_truncated_xls_gives_one_line_and_exit_1(tmp_path: Path, sandbox: Sandbox) -> None:
    server = sandbox()
    data = _xls(tmp_path / "full.xls").read_bytes()
    # Offsets where calamine once panicked (a BaseException from Rust) and others near them.
    for cut in (len(data) // 2, len(data) - 700, 3000, 600):
        src = tmp_path / f"cut{cut}.xls"
        src.write_bytes(data[:cut])
        for args in (
            ["validate", str(src)],
            ["enrich", str(src), "--endpoint", server.url, "--state",
             str(tmp_path / "j.sqlite3")],
        ):  # fmt: skip
            done = _cli(*args)
            assert done.returncode == 1, (cut, done.stdout, done.stderr)
            said = (done.stdout + done.stderr).strip()
            assert "Traceback" not in said and "panicked" not in said, (cut, said)
            assert len(said.splitlines()) == 1, (cut, said)
            assert said.startswith("Error: ") and src.name in said, said
            assert "CalamineError" not in said and "(error)" not in said
    assert server.stats.requests == 0


# --- "It gives up where a person would not" ---------------------------------------------------


def test_a_title_row_above_the_header_is_found_kept_and_named(
    tmp_path: Path, sandbox: Sandbox, enrich_at: Run
) -> None:
    server = sandbox()
    src = tmp_path / "titled.csv"
    src.write_text("2024年1月客户名单,,\r\n" + _lines(ZH[:3], PEOPLE[:3]), encoding="gbk")
    out = tmp_path / "out.csv"

    result = enrich_at(server, str(src), "-o", str(out))

    assert result.exit_code == 0, result.output
    assert "the header is row 2" in result.output
    got = _out_rows(out)
    assert got[0][:3] == ["2024年1月客户名单", "", ""]
    assert got[1] == [*ZH[:3], *RESULTS]
    assert [row[:3] for row in got[2:]] == [list(p) for p in PEOPLE[:3]]
    assert sorted(server.stats.received) == sorted(PEOPLE[:3])

    xlsx = _workbook(tmp_path / "titled.xlsx", [["2024年1月客户名单"], list(ZH[:3]), *PEOPLE[:3]])
    result = enrich_at(server, str(xlsx), "-o", str(tmp_path / "out.xlsx"))
    assert result.exit_code == 0, result.output
    assert "the header is row 2" in result.output
    ws = load(tmp_path / "out.xlsx")["客户名单"]
    assert ws["A1"].value == "2024年1月客户名单" and ws["D2"].value == "status"
    assert ws["D3"].value == "ok"


def test_a_valid_200_kb_cell_is_read_and_written(
    tmp_path: Path, sandbox: Sandbox, enrich_at: Run
) -> None:
    server = sandbox()
    big = "备注" * 100_000  # 200,000 characters, 600 KB of UTF-8
    src = tmp_path / "big.csv"
    src.write_text(_lines(EN, [(*PEOPLE[0], f'"{big}, quoted"'), (*PEOPLE[1], "x")]), "utf-8")
    out = tmp_path / "out.csv"

    result = enrich_at(server, str(src), "-o", str(out))

    assert result.exit_code == 0, result.output
    got = _out_rows(out)
    assert got[1][3] == big + ", quoted" and _status(got[1], 4)["status"] == "ok"
    assert sorted(server.stats.received) == sorted(PEOPLE[:2])


def _corrupt_xlsx(tmp_path: Path) -> dict[str, bytes]:
    good = _workbook(tmp_path / "good.xlsx", [list(ZH[:3]), *PEOPLE[:3]]).read_bytes()
    sheet_at = good.find(b"xl/worksheets/sheet1.xml")
    flipped = bytearray(good)
    for offset in range(sheet_at + 60, sheet_at + 160):
        flipped[offset] ^= 0x5A
    return {
        "cut.xlsx": good[: len(good) // 2],
        "flipped.xlsx": bytes(flipped),
        "noise.xlsx": b"PK\x03\x04" + os.urandom(3000),
        "text.xlsx": "姓名,身份证号\r\n".encode(),
    }


def test_corrupt_xlsx_and_xls_files_give_a_clear_message(
    tmp_path: Path, sandbox: Sandbox, run: Run
) -> None:
    server = sandbox()
    files = _corrupt_xlsx(tmp_path)
    files["noise.xls"] = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(range(256)) * 20
    files["text.xls"] = "姓名\t身份证号\r\n".encode("gbk")
    for name, data in files.items():
        src = tmp_path / name
        src.write_bytes(data)
        enriched = run("enrich", str(src), "--endpoint", server.url, env={"JUHE_API_KEY": "k"})
        for result in (enriched, run("validate", str(src))):
            said = result.output.strip()
            assert result.exit_code == 1, (name, said)
            assert len(said.splitlines()) == 1 and name in said, (name, said)
            assert "(error)" not in said and "CalamineError" not in said, (name, said)
            assert "Error" in said and ("save" in said or "not" in said), (name, said)
    assert server.stats.requests == 0


def test_a_strict_open_xml_workbook_is_enriched_without_warnings(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    server = sandbox()
    plain = _workbook(tmp_path / "plain.xlsx", [list(ZH[:3]), *PEOPLE[:3]])
    src = strict_ooxml(plain, tmp_path / "strict.xlsx")
    out = tmp_path / "out.xlsx"
    state = str(tmp_path / "j.sqlite3")

    done = _cli("enrich", str(src), "-o", str(out), "--endpoint", server.url,
                "--state", state, *fast())  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert "warn" not in done.stderr.lower(), done.stderr
    assert sorted(server.stats.received) == sorted(PEOPLE[:3])
    ws = load(out)["客户名单"]
    assert [c.value for c in ws[1]][:4] == [*ZH[:3], "status"]
    assert [ws.cell(r, 4).value for r in (2, 3, 4)] == ["ok"] * 3


def _sparse(path: Path, people: int, far: str) -> Path:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(list(ZH[:3]))
    for i in range(people):
        sheet.append(list(PEOPLE[i % len(PEOPLE)]))
    sheet[far] = "stray"
    book.save(path)
    return path


def test_a_sparse_xlsx_with_a_cell_in_xfd_is_quick_and_refused_cleanly(
    tmp_path: Path, sandbox: Sandbox, enrich_at: Run
) -> None:
    # One cell in XFD made every pass read a 16,384-column rectangle: 54 s each.
    server = sandbox()
    src = _sparse(tmp_path / "sparse.xlsx", 2000, "XFD2001")

    started = time.monotonic()
    refused = enrich_at(server, str(src), "-o", str(tmp_path / "out.xlsx"))
    as_csv = enrich_at(server, str(src), "-o", str(tmp_path / "out.csv"))
    took = time.monotonic() - started

    assert refused.exit_code == 1, refused.output
    assert "leaves no room for the 11 result columns" in refused.output
    assert not (tmp_path / "out.xlsx").exists()
    assert as_csv.exit_code == 0, as_csv.output
    got = _out_rows(tmp_path / "out.csv")
    assert len(got[0]) == 16_384 + len(RESULTS) and got[-1][16_383] == "stray"
    assert {_status(row, 16_384)["status"] for row in got[1:]} == {"ok"}
    assert server.stats.billed == len(PEOPLE)
    assert took < 60, f"{took:.1f} s for two runs"  # was 54 s a pass, four passes


def test_a_sparse_xlsx_with_room_left_is_written_as_a_workbook(
    tmp_path: Path, sandbox: Sandbox, enrich_at: Run
) -> None:
    server = sandbox()
    src = _sparse(tmp_path / "sparse.xlsx", 300, "XEZ301")  # 16,380 columns: 11 do not fit
    room = _sparse(tmp_path / "room.xlsx", 300, "XEA301")  # 16,355 columns: 11 fit

    assert enrich_at(server, str(src), "-o", str(tmp_path / "no.xlsx")).exit_code == 1
    result = enrich_at(server, str(room), "-o", str(tmp_path / "out.xlsx"))

    assert result.exit_code == 0, result.output
    ws = load(tmp_path / "out.xlsx", read_only=True)["Sheet"]
    header = next(ws.iter_rows(min_row=1, max_row=1, values_only=True))
    assert header[16_355 : 16_355 + len(RESULTS)] == tuple(RESULTS)


def test_a_fifo_named_csv_is_refused_at_once(tmp_path: Path, sandbox: Sandbox) -> None:
    server = sandbox()
    fifo = tmp_path / "x.csv"
    os.mkfifo(fifo)
    state = str(tmp_path / "j.sqlite3")
    for args in (
        ["enrich", str(fifo), "--endpoint", server.url, "--state", state],
        ["validate", str(fifo)],
    ):
        try:
            done = _cli(*args, timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{args[0]} blocked on a FIFO")
        assert done.returncode == 1, done.stderr
        assert "is not a regular file" in done.stderr and "Traceback" not in done.stderr


def test_one_nul_byte_early_or_late_is_the_same_damaged_row(
    tmp_path: Path, sandbox: Sandbox, enrich_at: Run
) -> None:
    # Once, a NUL in the first MB rejected the whole file and the same NUL later was accepted.
    server = sandbox()
    pad = "x" * 1000
    rows = [(*PEOPLE[i % len(PEOPLE)], pad) for i in range(1200)]  # 1.2 MB
    outcomes = []
    for where in (2, 1150):
        damaged = list(rows)
        name, idcard, mobile, note = damaged[where]
        damaged[where] = (name, idcard, mobile, note[:500] + "\x00" + note[500:])
        src = tmp_path / f"nul{where}.csv"
        src.write_text(_lines(EN, damaged), encoding="utf-8")
        assert src.stat().st_size > 1 << 20
        out = tmp_path / f"out{where}.csv"
        result = enrich_at(server, str(src), "-o", str(out))
        assert result.exit_code == 0, result.output
        statuses = [_status(row, 4)["status"] for row in _out_rows(out)[1:]]
        invalid = [i for i, s in enumerate(statuses) if s != "ok"]
        assert invalid == [where], (where, invalid)
        reason = _status(_out_rows(out)[where + 1], 4)["error_reason"]
        outcomes.append(reason.replace(f"row {where + 2},", "row N,"))
    assert outcomes[0] == outcomes[1] and "NUL" in outcomes[0]
    assert server.stats.billed == len(PEOPLE)  # each person once, over both runs


def test_a_workbook_the_patch_cannot_make_is_refused_before_anything_is_paid(
    tmp_path: Path, sandbox: Sandbox, enrich_at: Run
) -> None:
    # calamine reads the sheet without looking at docProps/app.xml; the patch edits that part.
    # Its damage once surfaced in the write pass, after every call was paid for, as
    # "unexpected BadZipFile ... please report this".
    server = sandbox()
    src = _workbook(tmp_path / "in.xlsx", [list(ZH[:3]), *PEOPLE[:3]])
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as package:
        info = package.getinfo("docProps/app.xml")
    data[info.header_offset + 30 + len(info.filename) + len(info.extra) + 5] ^= 0x55
    src.write_bytes(bytes(data))

    result = enrich_at(server, str(src), "-o", str(tmp_path / "out.xlsx"))

    assert result.exit_code == 1, result.output
    assert server.stats.requests == 0
    assert "Error: cannot add results to in.xlsx: the workbook is corrupt" in result.output
    assert "please report" not in result.output and not (tmp_path / "out.xlsx").exists()
    as_csv = enrich_at(server, str(src), "-o", str(tmp_path / "out.csv"))
    assert as_csv.exit_code == 0 and sorted(server.stats.received) == sorted(PEOPLE[:3])

"""What the operator sees: the live bar or log lines, the closing summary, the XLSX report,
several inputs in one run, Chinese headers, `-q`, and `batch-enricher codes`."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import openpyxl
import pytest
from aiohttp import web
from click.testing import Result
from openpyxl.worksheet.worksheet import Worksheet

from tests.conftest import Served, fast, person, read_csv, write_csv

Run = Callable[..., Result]

REPO = Path(__file__).resolve().parent.parent
HEADER = ["姓名", "身份证号", "手机号"]
EN = ["status", "error_code", "error_reason", "orderid", "range_score", "range_band",
      "history_score", "history_band", "stability_score", "stability_band",
      "queried_at"]  # fmt: skip
ZH = ["状态", "错误码", "错误说明", "订单号", "经济能力评分", "经济能力区间", "历史属性评分",
      "历史属性区间", "稳定性评分", "稳定性区间", "查询时间"]  # fmt: skip
# Excel's "Good", "Neutral" and "Bad" fills, as openpyxl reads them back (ARGB).
GREEN, AMBER, RED = "00C6EFCE", "00FFEB9C", "00FFC7CE"


def _cli(tmp_path: Path, *args: str) -> list[str]:
    """argv for running the CLI as a separate process, exactly as a user would."""
    return [sys.executable, "-m", "batch_enricher", *args, "--state", str(tmp_path / "j.sqlite3")]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "120"}


def _people_csv(path: Path, count: int, start: int = 0) -> Path:
    return write_csv(path, [list(person(i)) for i in range(start, start + count)])


def _people_xlsx(path: Path, people: list[tuple[str, str, str]]) -> Path:
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.append(HEADER)
    for name, idcard, mobile in people:
        ws.append([name, idcard, int(mobile)])  # mobiles often arrive as numbers
    wb.save(path)
    return path


def _sheet_rows(path: Path, index: int = 0) -> list[list[object]]:
    sheet = openpyxl.load_workbook(path).worksheets[index]
    return [list(row) for row in sheet.iter_rows(values_only=True)]


def _run_on_pty(argv: list[str], cwd: Path, deadline_s: float = 60.0) -> tuple[int, str]:
    """Run argv with stderr on a pseudo-terminal (120 columns); returns (exit code, what it got)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen(
        argv, cwd=cwd, env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=slave,
    )  # fmt: skip
    os.close(slave)
    received = bytearray()
    end = time.monotonic() + deadline_s
    try:
        while time.monotonic() < end:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end of the terminal
                break
            if not chunk:
                break
            received += chunk
    finally:
        os.close(master)
        proc.wait(10)
    return proc.returncode, received.decode("utf-8", "replace")


# --- progress on a terminal and in a log ------------------------------------------------------


def test_terminal_shows_a_live_bar_redrawn_in_place(tmp_path: Path) -> None:
    src = _people_csv(tmp_path / "in.csv", 200)
    argv = _cli(tmp_path, "enrich", str(src), "--sandbox", "-o", str(tmp_path / "out.csv"),
                "--qps", "200")  # fmt: skip

    code, screen = _run_on_pty(argv, tmp_path)

    assert code == 0, screen
    assert screen.count("\r") >= 3, "the bar is redrawn in place"
    fractions = {int(n) for n in re.findall(r"\b(\d+)/200\b", screen)}
    assert 200 in fractions and fractions & set(range(1, 200)), f"no live fraction in {screen!r}"
    assert "%|" in screen, "tqdm's percentage and bar"
    # "invalid" shows once the runner passes the statuses decided while planning (`already`).
    assert re.search(r"ok \d+ · (invalid 0 · )?rejected \d+ · failed 0 · billed \d+", screen)
    after_bar = screen[screen.rindex("200/200") :]
    assert "\r\nbatch-enricher: finished in" in after_bar, "the summary follows the finished bar"


def test_without_a_terminal_no_carriage_return_and_the_summary_comes_last(
    tmp_path: Path,
) -> None:
    src = _people_csv(tmp_path / "in.csv", 200)
    out, doc_path = tmp_path / "out.csv", tmp_path / "s.json"
    argv = _cli(tmp_path, "enrich", str(src), "--sandbox", "-o", str(out), "--qps", "500",
                "--summary-json", str(doc_path))  # fmt: skip

    proc = subprocess.run(argv, cwd=tmp_path, env=_env(), capture_output=True, timeout=60)

    assert proc.returncode == 0, proc.stderr
    text = proc.stderr.decode("utf-8")
    assert "\r" not in text
    doc = json.loads(doc_path.read_text(encoding="utf-8"))
    lines = text.splitlines()
    assert re.fullmatch(r"batch-enricher: finished in \d+\.\d s, exit 0 \(every row is final\)",
                        lines[-3])  # fmt: skip
    assert lines[-2] == (
        f"  {src}: 200 row(s): ok {doc['ok']} · invalid 0 · rejected {doc['rejected']}"
        f" · failed 0 · skipped 0 → {out}"
    )
    assert lines[-1].startswith(
        f"  people 200 · billed {doc['billed']} · reused 0 · duplicates 0 · API calls 200"
        " · retries 0 · elapsed "
    )
    assert lines[-1].endswith(" calls/s")


# --- the closing summary and -q ---------------------------------------------------------------


def test_summary_states_statuses_billed_reused_duplicates_retries_time_rate_and_output(
    tmp_path: Path, sandbox: Callable[..., Served], run: Run
) -> None:
    server = sandbox(fault_rate=0.5, seed=3)
    first = _people_csv(tmp_path / "first.csv", 1)
    assert run("enrich", str(first), "-o", str(tmp_path / "f.csv"), "--key", "k",
               "--endpoint", server.url, "--max-retries", "20", *fast()).exit_code == 0  # fmt: skip
    people = [list(person(i)) for i in range(10)]
    src = write_csv(tmp_path / "in.csv", [*people, people[2], ["王伟", person(9)[1], "123"]])
    out, doc_path = tmp_path / "out.csv", tmp_path / "s.json"

    result = run("enrich", str(src), "-o", str(out), "--key", "k", "--endpoint", server.url,
                 "--max-retries", "20", "--summary-json", str(doc_path), *fast())  # fmt: skip

    assert result.exit_code == 0, result.output
    doc = json.loads(doc_path.read_text(encoding="utf-8"))
    assert doc["retries"] > 0, "the faults were retried"
    assert (doc["reused"], doc["duplicates"], doc["invalid"]) == (1, 1, 1)
    lines = result.stderr.splitlines()
    assert lines[-2] == (
        f"  {src}: 12 row(s): ok {doc['ok']} · invalid 1 · rejected {doc['rejected']}"
        f" · failed 0 · skipped 0 → {out}"
    )
    match = re.fullmatch(
        f"  people 10 · billed {doc['billed']} · reused 1 · duplicates 1"
        f" · API calls {doc['api_calls']} · retries {doc['retries']}"
        r" · elapsed (\d+\.\d) s · (\d+\.\d) calls/s",
        lines[-1],
    )
    assert match, lines[-1]
    elapsed, rate = float(match[1]), float(match[2])
    assert abs(elapsed - doc["elapsed_s"]) <= 0.051
    assert rate == pytest.approx(doc["api_calls"] / doc["elapsed_s"], rel=0.02, abs=0.051)


def test_quiet_prints_nothing_on_success(tmp_path: Path, run: Run) -> None:
    src = _people_csv(tmp_path / "in.csv", 5)
    result = run("enrich", str(src), "--sandbox", "-q", "-o", str(tmp_path / "o.csv"), *fast())
    assert result.exit_code == 0
    assert result.output == ""
    assert len(read_csv(tmp_path / "o.csv")) == 5


def test_quiet_prints_the_summary_when_rows_are_left(tmp_path: Path, run: Run) -> None:
    src = _people_csv(tmp_path / "in.csv", 5)
    result = run("enrich", str(src), "--sandbox", "-q", "-o", str(tmp_path / "o.csv"),
                 "--max-billed", "1", "--concurrency", "1", *fast())  # fmt: skip
    assert result.exit_code == 3
    assert result.stdout == ""
    assert "exit 3 (some rows are failed or skipped: rerun the same command to continue)" in (
        result.stderr
    )
    assert "stopped early: budget reached: 1 billed call(s)" in result.stderr
    assert re.search(r"5 row\(s\): ok \d · .* skipped \d", result.stderr)


def test_quiet_still_prints_errors(tmp_path: Path, run: Run) -> None:
    result = run("enrich", str(tmp_path / "missing.csv"), "--sandbox", "-q")
    assert result.exit_code == 1
    assert "missing.csv" in result.stderr


# --- the XLSX report --------------------------------------------------------------------------

SCRIPT_CODES = {0: "rejected", 1: "failed", 3: "ok", 4: "skipped"}  # person → what happens


def _scripted(replies: dict[str, dict[str, object]]) -> web.Application:
    async def query(request: web.Request) -> web.Response:
        form = await request.post()
        return web.json_response(replies[str(form["idcard"])])

    app = web.Application()
    app.router.add_post("/financeInfo/query", query)
    return app


def _five_statuses(tmp_path: Path, serve_app: Callable[..., Served], run: Run,
                   *extra: str, source: str = "xlsx") -> tuple[Path, Result]:  # fmt: skip
    """One row of each status: rejected, failed, invalid, ok, skipped (in that order)."""
    scores = {"orderid": "JH1", "range": "16", "history": "95", "stability": "85"}
    ok = {"error_code": 0, "reason": "成功", "result": scores}
    replies = {
        person(0)[1]: {"error_code": 281505, "reason": "查询失败", "result": None},
        person(1)[1]: {"error_code": 281504, "reason": "网络异常", "result": None},
        person(3)[1]: ok,
        person(4)[1]: ok,
    }
    server = serve_app(_scripted(replies))
    bad_mobile = (person(2)[0], person(2)[1], "1234")
    people = [person(0), person(1), bad_mobile, person(3), person(4)]
    if source == "xlsx":
        src = _people_xlsx(tmp_path / "in.xlsx", people)
    else:
        src = write_csv(tmp_path / "in.csv", [list(p) for p in people])
    out = tmp_path / "out.xlsx"
    result = run("enrich", str(src), "-o", str(out), "--key", "k", "--endpoint", server.url,
                 "--concurrency", "1", "--max-billed", "1", *fast("--max-retries", "0"),
                 *extra)  # fmt: skip
    return out, result


def _summary(sheet: Worksheet) -> dict[str, object]:
    return {str(a): b for a, b, *_ in sheet.iter_rows(values_only=True) if a is not None}


def test_xlsx_made_from_a_csv_opens_ready_to_use(
    tmp_path: Path, serve_app: Callable[..., Served], run: Run
) -> None:
    out, result = _five_statuses(tmp_path, serve_app, run, source="csv")

    assert result.exit_code == 3, result.output
    wb = openpyxl.load_workbook(out)
    assert wb.sheetnames == ["Sheet1", "Summary"]
    data = wb.worksheets[0]
    assert data.freeze_panes == "A2"
    assert data.auto_filter.ref == "A1:N6"
    assert [c.value for c in data[1]] == HEADER + EN
    statuses = [str(c.value) for c in data["D"][1:]]
    assert statuses == ["rejected", "failed", "invalid", "ok", "skipped"]
    for row in data.iter_rows(min_row=2):
        for cell in (row[1], row[2]):  # ID and mobile
            assert cell.data_type == "s" and isinstance(cell.value, str), cell.coordinate
            assert cell.number_format == "@", cell.coordinate
    assert data["C5"].value == person(3)[2], "a numeric mobile comes back as its digits"
    colour = {"ok": GREEN, "invalid": AMBER, "rejected": AMBER, "failed": RED, "skipped": RED}
    for cell in data["D"][1:]:
        assert cell.fill.fgColor.rgb == colour[str(cell.value)], cell.value
    widths = {col: data.column_dimensions[col].width for col in "ABCF"}
    assert all(w is not None and 8 <= w <= 60 for w in widths.values()), widths
    assert widths["B"] >= 18, "an 18-digit ID fits its column"

    summary = wb["Summary"]
    counts = _summary(summary)
    assert {s: counts[s] for s in colour} == {s: 1 for s in colour}
    assert counts["rows"] == 5 and counts["billed (run)"] == 1
    assert float(str(counts["elapsed seconds (run)"])) > 0
    with zipfile.ZipFile(out) as archive:
        charts = [n for n in archive.namelist() if re.fullmatch(r"xl/charts/chart\d+\.xml", n)]
    assert len(charts) == 3, "one bar chart per score"


def test_xlsx_input_comes_back_as_the_same_workbook_with_the_results_added(
    tmp_path: Path, serve_app: Callable[..., Served], run: Run
) -> None:
    out, result = _five_statuses(tmp_path, serve_app, run)

    assert result.exit_code == 3, result.output
    wb = openpyxl.load_workbook(out)
    assert wb.sheetnames == ["Sheet", "Summary"], "the sheet keeps its name; Summary is added"
    data = wb.worksheets[0]
    assert data.freeze_panes is None, "the user's own view is kept (they froze nothing)"
    assert data.auto_filter.ref == "A1:N6"
    assert [c.value for c in data[1]] == HEADER + EN
    assert data["C5"].value == int(person(3)[2]), "the user's numeric mobile cell is theirs"
    statuses = [str(c.value) for c in data["D"][1:]]
    assert statuses == ["rejected", "failed", "invalid", "ok", "skipped"]
    colour = {"ok": GREEN, "invalid": AMBER, "rejected": AMBER, "failed": RED, "skipped": RED}
    for cell in data["D"][1:]:  # the same colour (its alpha byte is written opaque, FF)
        assert cell.fill.fgColor.rgb[-6:] == colour[str(cell.value)][-6:], cell.value
    counts = _summary(wb["Summary"])
    assert {s: counts[s] for s in colour} == {s: 1 for s in colour}
    with zipfile.ZipFile(out) as archive:
        charts = [n for n in archive.namelist() if re.fullmatch(r"xl/charts/chart\d+\.xml", n)]
    assert len(charts) == 3, "one bar chart per score"


def test_summary_sheet_lists_every_band_in_table_order(
    tmp_path: Path, serve_app: Callable[..., Served], run: Run
) -> None:
    out, _ = _five_statuses(tmp_path, serve_app, run)
    rows = _sheet_rows(out, 1)
    labels = [r[0] for r in rows]
    first = labels.index("stability: rows per band") + 1
    block = [(r[0], r[1]) for r in rows[first : first + 6]]
    assert block == [("无法预测", 0), ("(0,6]", 0), ("(6,12]", 0), ("(12,18]", 0),
                     ("(18,24)", 1), ("24", 0)]  # fmt: skip


def test_chinese_headers_and_summary_sheet(
    tmp_path: Path, serve_app: Callable[..., Served], run: Run
) -> None:
    out, result = _five_statuses(tmp_path, serve_app, run, "--headers", "zh")

    assert result.exit_code == 3, result.output
    wb = openpyxl.load_workbook(out)
    assert wb.sheetnames == ["Sheet", "汇总"], "the input's own sheet, under its own name"
    assert [c.value for c in wb.worksheets[0][1]] == HEADER + ZH
    counts = _summary(wb["汇总"])
    assert (counts["成功"], counts["本地校验失败"], counts["未发送"]) == (1, 1, 1)


def test_rerun_over_an_earlier_output_replaces_the_result_columns(tmp_path: Path, run: Run) -> None:
    src = write_csv(tmp_path / "in.csv", [[*person(i), f"n{i}"] for i in range(4)],
                    (*HEADER, "备注"))  # fmt: skip
    en, zh, back = tmp_path / "en.csv", tmp_path / "zh.xlsx", tmp_path / "back.csv"

    assert run("enrich", str(src), "--sandbox", "-o", str(en), *fast()).exit_code == 0
    assert run("enrich", str(en), "--sandbox", "-o", str(zh), "--headers", "zh").exit_code == 0
    assert run("enrich", str(zh), "--sandbox", "-o", str(back)).exit_code == 0

    first = read_csv(en)
    assert list(first[0]) == [*HEADER, "备注", *EN]
    rows = _sheet_rows(zh)
    assert rows[0] == [*HEADER, "备注", *ZH]
    assert [r[ZH.index("订单号") + 4] for r in rows[1:]] == [r["orderid"] for r in first]
    again = read_csv(back)
    assert list(again[0]) == [*HEADER, "备注", *EN]
    assert [r["orderid"] for r in again] == [r["orderid"] for r in first], "reused, not re-paid"
    assert [r["备注"] for r in again] == ["n0", "n1", "n2", "n3"]


# --- several inputs in one run ----------------------------------------------------------------


def test_two_inputs_two_outputs_and_a_shared_person_billed_once(
    tmp_path: Path, sandbox: Callable[..., Served], run: Run
) -> None:
    server = sandbox()
    a = _people_csv(tmp_path / "a.csv", 5)  # people 0-4
    b = _people_xlsx(tmp_path / "b.xlsx", [person(i) for i in range(3, 8)])  # 3 and 4 again
    out = tmp_path / "out"
    out.mkdir()

    result = run("enrich", str(a), str(b), "--output-dir", str(out), "--key", "k",
                 "--endpoint", server.url, *fast())  # fmt: skip

    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["a.enriched.csv", "b.enriched.xlsx"]
    assert server.stats.requests == 8
    assert sorted(server.stats.billed_by_identity.values()) == [1] * server.stats.billed
    assert len(read_csv(out / "a.enriched.csv")) == 5
    b_rows = _sheet_rows(out / "b.enriched.xlsx")
    assert len(b_rows) == 6 and b_rows[0] == HEADER + EN
    a_rows = read_csv(out / "a.enriched.csv")
    shared = {r["身份证号"]: r["orderid"] for r in a_rows[3:]}
    assert {str(r[1]): r[6] for r in b_rows[1:3]} == shared, "one answer for the shared people"
    stderr = result.stderr.splitlines()
    assert any(line.startswith(f"  {a}: 5 row(s): ") and line.endswith(
        f"→ {out / 'a.enriched.csv'}") for line in stderr)  # fmt: skip
    assert any(line.startswith(f"  {b}: 5 row(s): ") and line.endswith(
        f"→ {out / 'b.enriched.xlsx'}") for line in stderr)  # fmt: skip
    assert any(line.startswith("  all 2 files: 10 row(s): ") for line in stderr)
    assert "duplicates 2" in result.stderr


def test_a_folder_as_input_skips_earlier_outputs(tmp_path: Path, run: Run) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    _people_csv(folder / "a.csv", 3)
    _people_xlsx(folder / "b.xlsx", [person(i) for i in range(3, 5)])
    (folder / "a.enriched.csv").write_text("from an earlier run\n", encoding="utf-8")
    (folder / "notes.txt.bak").write_text("not a spreadsheet\n", encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()

    result = run("enrich", str(folder), "--sandbox", "--output-dir", str(out), *fast())

    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["a.enriched.csv", "b.enriched.xlsx"]


def test_a_glob_as_input(tmp_path: Path, run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    _people_csv(tmp_path / "jan.csv", 2)
    _people_csv(tmp_path / "feb.csv", 2, start=2)
    _people_csv(tmp_path / "other.tsv.txt.old", 1)
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)

    result = run("enrich", "*.csv", "--sandbox", "--output-dir", "out", *fast())

    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "feb.enriched.csv",
        "jan.enriched.csv",
    ]


def test_an_absolute_glob_as_input(tmp_path: Path, run: Run) -> None:
    _people_csv(tmp_path / "jan.csv", 2)
    (tmp_path / "out").mkdir()
    result = run("enrich", str(tmp_path / "*.csv"), "--sandbox", "--output-dir",
                 str(tmp_path / "out"), *fast())  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "jan.enriched.csv").exists()


# --- batch-enricher codes ---------------------------------------------------------------------


def test_codes_lists_every_code_its_reason_and_effect_and_the_band_tables(run: Run) -> None:
    result = run("codes")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    by_code = {
        line.split()[0]: line
        for line in lines
        if re.match(r"  \d+ +(ok|rejected|failed|skipped) ", line)
    }
    documented = {0, 281501, 281502, 281503, 281504, 281505, 10001, 10002, 10003, 10004, 10005,
                  10007, 10008, 10009, 10011, 10012, 10013, 10014, 10020, 10021}  # fmt: skip
    assert {int(code) for code in by_code} == documented
    assert re.fullmatch(r"  281505  rejected  final for this person: not billed, never retried"
                        r" +查询失败", by_code["281505"])  # fmt: skip
    assert re.fullmatch(r"  10001   skipped   aborts the run at once, nothing more sent \(exit 4\)"
                        r" +错误的请求KEY \(resultcode 101\)", by_code["10001"])  # fmt: skip
    assert re.fullmatch(r"  281504  failed    retried with backoff; failed if it persists"
                        r" +网络异常", by_code["281504"])  # fmt: skip
    assert "当前IP请求超过限制" in by_code["10011"] and "slows the shared rate" in by_code["10011"]
    assert "sending stops (exit 3)" in by_code["10012"]
    for heading in (
        "range (预测模型评分): score → band",
        "history (历史属性模型评分): score → band",
        "stability (稳定性模型评分): score → band",
    ):
        assert heading in lines
    stability = lines[lines.index("stability (稳定性模型评分): score → band") :]
    assert stability[1:9] == [
        "  0      无法预测",
        "  20-39  (0,6]",
        "  40-59  (6,12]",
        "  60-79  (12,18]",
        "  80-99  (18,24)",
        "  100    24",
        "  other  unmapped",
        "  (as published: no band for 1-19)",
    ]
    assert "  20-29  (0,1500]" in lines and "  90-99  (120,180]" in lines

"""`batch-enricher enrich` end to end against real loopback servers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import openpyxl
import pytest
from aiohttp import web
from click.testing import Result

from tests.conftest import Served, fast, person, read_csv, write_csv

Run = Callable[..., Result]

# The reference's tables, written out literally here (not imported from bands.py) so that a
# mistake in the shipped tables cannot also be in the expectation.
EXPECTED_BANDS: dict[str, list[tuple[str, str]]] = {
    "range": [
        ("0", "无法预测"),
        ("10", "(0,1500]"),
        ("19", "(0,1500]"),
        ("20", "(0,1500]"),
        ("29", "(0,1500]"),
        ("30", "(4500,6000]"),
        ("39", "(4500,6000]"),
        ("40", "(4500,6000]"),
        ("49", "(4500,6000]"),
        ("50", "(6000,8000]"),
        ("59", "(6000,8000]"),
        ("60", "(8000,10000]"),
        ("69", "(8000,10000]"),
        ("70", "(10000,13000]"),
        ("79", "(10000,13000]"),
        ("80", "(13000,16000]"),
        ("89", "(13000,16000]"),
        ("90", "(16000,20000]"),
        ("99", "(16000,20000]"),
        ("100", "20000+"),
        ("5", "unmapped"),
        ("101", "unmapped"),
        ("", "unmapped"),
        ("abc", "unmapped"),
    ],
    "history": [
        ("0", "无法预测"),
        ("10", "(0,6]"),
        ("19", "(0,6]"),
        ("20", "(6,12]"),
        ("29", "(6,12]"),
        ("30", "(12,24]"),
        ("39", "(12,24]"),
        ("40", "(24,36]"),
        ("49", "(24,36]"),
        ("50", "(36,48]"),
        ("59", "(36,48]"),
        ("60", "(48,60]"),
        ("69", "(48,60]"),
        ("70", "(60,84]"),
        ("79", "(60,84]"),
        ("80", "(84,120]"),
        ("89", "(84,120]"),
        ("90", "(120,180]"),
        ("99", "(120,180]"),
        ("100", "180+"),
        ("9", "unmapped"),
        ("", "unmapped"),
        ("150", "unmapped"),
        ("1000", "unmapped"),
    ],
    "stability": [
        ("0", "无法预测"),
        ("20", "(0,6]"),
        ("39", "(0,6]"),
        ("40", "(6,12]"),
        ("59", "(6,12]"),
        ("60", "(12,18]"),
        ("79", "(12,18]"),
        ("80", "(18,24)"),
        ("99", "(18,24)"),
        ("100", "24"),
        ("1", "unmapped"),
        ("19", "unmapped"),
        ("10", "unmapped"),
        ("", "unmapped"),
        ("200", "unmapped"),
        ("x", "unmapped"),
        ("15", "unmapped"),
        ("100", "24"),
        ("20", "(0,6]"),
        ("0", "无法预测"),
        ("80", "(18,24)"),
        ("60", "(12,18]"),
        ("40", "(6,12]"),
        ("99", "(18,24)"),
    ],
}
SEEN = web.AppKey("seen", list[str])
REJECTIONS = {
    281501: "身份证号格式错误",
    281502: "姓名格式错误",
    281503: "手机号格式错误",
    281505: "查询失败",
}


def _scripted_app(script: dict[str, dict[str, object]]) -> web.Application:
    """A server that answers each ID number as the script says, shaped like the reference."""
    seen: list[str] = []

    async def query(request: web.Request) -> web.Response:
        form = await request.post()
        idcard = str(form["idcard"])
        seen.append(idcard)
        return web.json_response(script[idcard])

    app = web.Application()
    app.router.add_post("/financeInfo/query", query)
    app[SEEN] = seen
    return app


def _script() -> tuple[
    list[tuple[str, str, str]], dict[str, dict[str, object]], list[dict[str, str]]
]:
    people, script, expected = [], {}, []
    n = len(EXPECTED_BANDS["range"])
    for i in range(n):
        name, idcard, mobile = person(i)
        (r, rb), (h, hb), (s, sb) = (
            EXPECTED_BANDS[m][i] for m in ("range", "history", "stability")
        )
        script[idcard] = {
            "reason": "成功",
            "error_code": 0,
            "result": {"orderid": f"JH{i:06d}", "range": r, "history": h, "stability": s},
        }
        people.append((name, idcard, mobile))
        expected.append(
            {
                "status": "ok",
                "error_code": "",
                "orderid": f"JH{i:06d}",
                "range_score": r,
                "range_band": rb,
                "history_score": h,
                "history_band": hb,
                "stability_score": s,
                "stability_band": sb,
            }
        )
    for j, (code, reason) in enumerate(REJECTIONS.items()):
        name, idcard, mobile = person(100 + j)
        script[idcard] = {"reason": reason, "error_code": code, "result": None}
        people.append((name, idcard, mobile))
        expected.append(
            {
                "status": "rejected",
                "error_code": str(code),
                "error_reason": reason,
                "orderid": "",
                "range_band": "",
            }
        )
    return people, script, expected


def test_every_row_gets_exactly_the_reference_band_csv(
    tmp_path: Path, serve_app: Callable[..., Served], run: Run
) -> None:
    people, script, expected = _script()
    server = serve_app(_scripted_app(script))
    rows = [[n, i, m, f"note {k}"] for k, (n, i, m) in enumerate(people)]
    src = write_csv(tmp_path / "in.csv", rows, ("姓名", "身份证号", "手机号", "备注"))
    out = tmp_path / "out.csv"

    result = run(
        "enrich", str(src), "-o", str(out), "--key", "k", "--endpoint", server.url, *fast()
    )

    assert result.exit_code == 0, result.output
    got = read_csv(out)
    assert len(got) == len(rows)
    for row, original, want in zip(got, rows, expected, strict=True):
        assert [row["姓名"], row["身份证号"], row["手机号"], row["备注"]] == original
        for column, value in want.items():
            assert row[column] == value, (column, original, row)
        assert row["queried_at"], "every answer records when it was received"
    assert sorted(server.app[SEEN]) == sorted(script), "each person asked exactly once"


def test_every_row_gets_exactly_the_reference_band_xlsx(
    tmp_path: Path, serve_app: Callable[..., Served], run: Run
) -> None:
    people, script, expected = _script()
    server = serve_app(_scripted_app(script))
    src = tmp_path / "in.xlsx"
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.append(["客户编号", "姓名", "身份证号", "手机号", "金额"])
    for k, (n, i, m) in enumerate(people):
        ws.append([k + 1, n, i, m, 1000.5 + k])
    wb.save(src)
    out = tmp_path / "out.xlsx"

    result = run(
        "enrich", str(src), "-o", str(out), "--key", "k", "--endpoint", server.url, *fast()
    )

    assert result.exit_code == 0, result.output
    sheet = openpyxl.load_workbook(out).worksheets[0]
    header = [c.value for c in sheet[1]]
    assert header[:5] == ["客户编号", "姓名", "身份证号", "手机号", "金额"]
    for k, (cells, want) in enumerate(
        zip(sheet.iter_rows(min_row=2, values_only=True), expected, strict=True)
    ):
        row = dict(zip(header, cells, strict=True))
        assert list(cells[:5]) == [k + 1, *people[k], 1000.5 + k], "original cells unchanged"
        for column, value in want.items():
            shown = "" if row[column] is None else str(row[column])
            assert shown == value, (column, k)


def test_transient_faults_are_retried_until_every_row_is_final(
    tmp_path: Path, sandbox: Callable[..., Served], enrich_at: Run
) -> None:
    server = sandbox(fault_rate=0.15, seed=7)
    people = [person(i) for i in range(80)]
    src = write_csv(tmp_path / "in.csv", [list(p) for p in people])
    summary = tmp_path / "summary.json"

    result = enrich_at(
        server,
        str(src),
        "-o",
        str(tmp_path / "out.csv"),
        "--max-retries",
        "6",
        "--summary-json",
        str(summary),
    )

    assert result.exit_code == 0, result.output
    statuses = {row["status"] for row in read_csv(tmp_path / "out.csv")}
    assert statuses <= {"ok", "rejected"}
    doc = json.loads(summary.read_text(encoding="utf-8"))
    stats = server.stats
    faults = sum(n for code, n in stats.codes.items() if code in (281504, 10014, -500, -502, -1))
    assert faults > 0, "the server did inject faults"
    assert doc["api_calls"] == stats.requests
    assert doc["billed"] == stats.billed == doc["ok"]
    assert doc["retries"] == stats.requests - len(people)
    assert max(stats.billed_by_identity.values()) == 1


def test_qps_is_never_exceeded_in_any_second_and_is_used_fully(
    tmp_path: Path, sandbox: Callable[..., Served], run: Run
) -> None:
    server = sandbox(qps_limit=25)
    people = [person(i) for i in range(70)]
    src = write_csv(tmp_path / "in.csv", [list(p) for p in people])

    result = run(
        "enrich",
        str(src),
        "-o",
        str(tmp_path / "out.csv"),
        "--key",
        "k",
        "--endpoint",
        server.url,
        "--qps",
        "20",
        "--concurrency",
        "8",
    )

    assert result.exit_code == 0, result.output
    stats = server.stats
    assert stats.codes[10011] == 0
    assert stats.max_per_second() <= 20
    arrivals = stats.arrivals
    mean_rate = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    assert mean_rate >= 0.9 * 20, mean_rate


def test_rejections_are_final_and_never_retried(
    tmp_path: Path, serve_app: Callable[..., Served], enrich_at: Run
) -> None:
    people = [person(i) for i in range(4)]
    script = {p[1]: {"reason": "查询失败", "error_code": 281505, "result": None} for p in people}
    server = serve_app(_scripted_app(script))
    src = write_csv(tmp_path / "in.csv", [list(p) for p in people])

    result = enrich_at(
        server,
        str(src),
        "-o",
        str(tmp_path / "o.csv"),
    )

    assert result.exit_code == 0, result.output
    assert len(server.app[SEEN]) == 4
    assert {r["status"] for r in read_csv(tmp_path / "o.csv")} == {"rejected"}


def test_invalid_rows_are_never_sent_and_say_why(
    tmp_path: Path, sandbox: Callable[..., Served], enrich_at: Run
) -> None:
    server = sandbox()
    good = person(1)
    src = write_csv(
        tmp_path / "in.csv",
        [
            list(good),
            [good[0], good[1][:-1] + ("0" if good[1][-1] != "0" else "1"), good[2]],
            ["", good[1], good[2]],
            [good[0], good[1], "1381234567"],
        ],
    )

    result = enrich_at(
        server,
        str(src),
        "-o",
        str(tmp_path / "o.csv"),
    )

    assert result.exit_code == 0, result.output
    rows = read_csv(tmp_path / "o.csv")
    assert [r["status"] for r in rows] == ["ok", "invalid", "invalid", "invalid"]
    assert [r["error_code"] for r in rows[1:]] == ["281501", "281502", "281503"]
    assert rows[1]["error_reason"].startswith("身份证号格式错误: check digit")
    assert server.stats.requests == 1


def test_no_key_and_no_sandbox_says_how_to_give_one(tmp_path: Path, run: Run) -> None:
    src = write_csv(tmp_path / "in.csv", [list(person(1))])
    result = run("enrich", str(src))
    assert result.exit_code == 1
    assert "JUHE_API_KEY" in result.output and "--sandbox" in result.output


def test_missing_column_lists_the_headers_found(tmp_path: Path, run: Run) -> None:
    src = write_csv(tmp_path / "in.csv", [["a", "b"]], ("客户", "电话号码"))
    result = run("enrich", str(src), "--sandbox")
    assert result.exit_code == 1
    assert "Headers found: 客户, 电话号码" in result.output
    assert "Traceback" not in result.output


def test_key_from_config_file_and_env_precedence(
    tmp_path: Path, sandbox: Callable[..., Served], run: Run
) -> None:
    server = sandbox(key="right")
    src = write_csv(tmp_path / "in.csv", [list(person(1))])
    config = tmp_path / "c.toml"
    config.write_text(f'key = "wrong"\nendpoint = "{server.url}"\nqps = 50\n', encoding="utf-8")

    from_file = run("enrich", str(src), "--config", str(config), "-o", str(tmp_path / "a.csv"))
    assert from_file.exit_code == 4, "the config's wrong key was used"
    from_env = run(
        "enrich",
        str(src),
        "--config",
        str(config),
        "-o",
        str(tmp_path / "b.csv"),
        env={"JUHE_API_KEY": "right"},
    )
    assert from_env.exit_code == 0, from_env.output
    from_flag = run(
        "enrich",
        str(src),
        "--config",
        str(config),
        "-o",
        str(tmp_path / "c.csv"),
        "--key",
        "wrong",
        "--max-age",
        "0",
        env={"JUHE_API_KEY": "right"},
    )
    assert from_flag.exit_code == 4, "the flag beats the environment"
    assert "10001" in from_flag.output and "wrong" not in from_flag.output


@pytest.mark.parametrize("sample", ["customers.csv", "customers.xlsx"])
def test_shipped_samples_run_in_the_sandbox(tmp_path: Path, run: Run, sample: str) -> None:
    src = Path(__file__).parent.parent / "sample_data" / sample
    out = tmp_path / "out.xlsx"
    summary = tmp_path / "s.json"
    result = run("enrich", str(src), "--sandbox", "-o", str(out), "--summary-json", str(summary))
    assert result.exit_code == 0, result.output
    doc = json.loads(summary.read_text(encoding="utf-8"))
    assert doc["ok"] > doc["rows"] / 2
    assert doc["invalid"] >= 3
    assert doc["duplicates"] >= 1
    sheet = openpyxl.load_workbook(out).worksheets[0]
    header = [c.value for c in sheet[1]]
    reasons = [
        dict(zip(header, [c.value for c in row], strict=True)) for row in sheet.iter_rows(min_row=2)
    ]
    assert all(r["error_reason"] for r in reasons if r["status"] == "invalid")
    assert all(str(r["orderid"]).startswith("SANDBOX") for r in reasons if r["status"] == "ok")

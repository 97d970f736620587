"""Column mapping: a customer's own "status" column is not an earlier output's."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from click.testing import Result

from batch_enricher.columns import RESULT_COLUMNS, existing_result_columns
from tests.conftest import person, write_csv

Run = Callable[..., Result]
INPUT = ["姓名", "身份证号", "手机号"]


def read_csv(path: Path) -> list[list[str]]:
    """An output CSV (UTF-8 with BOM) as rows of cells, duplicate headers and all."""
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return list(csv.reader(fh))


def test_a_lone_status_column_is_the_customers_own() -> None:
    """CRM exports often carry 状态/status (or 订单号, 查询时间): those are the customer's data,
    not results of ours to replace, unless they come as our block (status, then error_code)."""
    assert existing_result_columns([*INPUT, "状态", "备注"]) == []
    assert existing_result_columns([*INPUT, "Status"]) == []
    assert existing_result_columns([*INPUT, "订单号", "状态", "查询时间"]) == []


def test_an_earlier_output_is_still_recognised_next_to_a_customer_status() -> None:
    for lang in ("en", "zh"):
        headers = [*INPUT, "状态", *RESULT_COLUMNS[lang]]
        assert existing_result_columns(headers) == list(range(4, 15)), lang
    # A `validate` report's columns, fed back in.
    assert existing_result_columns([*INPUT, "status", "error_code", "error_reason"]) == [3, 4, 5]


def test_enrich_keeps_a_customer_status_column(tmp_path: Path, run: Run) -> None:
    name, idcard, mobile = person(1)
    src = write_csv(
        tmp_path / "in.csv", [[name, idcard, mobile, "VIP", "x"]], header=(*INPUT, "状态", "备注")
    )
    out = tmp_path / "out.csv"
    result = run("enrich", str(src), "--sandbox", "-o", str(out))
    assert result.exit_code == 0, result.output
    rows = read_csv(out)
    assert rows[0][:5] == [*INPUT, "状态", "备注"]
    assert rows[1][:5] == [name, idcard, mobile, "VIP", "x"]
    assert rows[1][5] == "ok"
    # And a rerun over that output keeps it too, replacing only our columns.
    again = tmp_path / "again.csv"
    result = run("enrich", str(out), "--sandbox", "-o", str(again))
    assert result.exit_code == 0, result.output
    assert read_csv(again)[0] == read_csv(out)[0]
    assert read_csv(again)[1][:5] == [name, idcard, mobile, "VIP", "x"]

"""The Python API: a DataFrame enriched with the file run's guarantees, judged by the server.

Billing is what the sandbox saw (`SandboxStats`), never what the library says it did.
"""

from __future__ import annotations

import _thread
import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from batch_enricher import (
    AccountError,
    ColumnError,
    ConfigError,
    RetryPolicy,
    enrich_files,
    enrich_frame,
    enrich_frame_async,
    validate_frame,
)
from batch_enricher.frame import RESULT_DTYPES
from batch_enricher.models import Status
from batch_enricher.progress import Progress
from batch_enricher.sandbox import expected_answer
from tests.conftest import Served, person, read_csv, write_csv

ROOT = Path(__file__).resolve().parent.parent
PEOPLE = 400  # distinct valid people in the 1,000-row frame
RESULT_NAMES = (
    "status",
    "error_code",
    "error_reason",
    "orderid",
    "range_score",
    "range_band",
    "history_score",
    "history_band",
    "stability_score",
    "stability_band",
    "queried_at",
)
DOCUMENTED_DTYPES = {
    "status": "string",
    "error_code": "Int64",
    "error_reason": "string",
    "orderid": "string",
    "range_score": "Int64",
    "range_band": "string",
    "history_score": "Int64",
    "history_band": "string",
    "stability_score": "Int64",
    "stability_band": "string",
    "queried_at": "datetime64[ns, UTC]",
}


def customers() -> tuple[pd.DataFrame, dict[str, int]]:
    """1,000 rows: 400 people (most repeated), invalid rows, blank rows; and what each row is.

    IDs are strings (a customer number keeps its leading zeros; an ID with a leading-zero
    region is invalid and must come back as the same string), mobiles an int64 column.
    """
    names, ids, mobiles, kinds = [], [], [], []
    valid = 0
    for i in range(1000):
        if i % 25 == 7:  # an ID whose region starts with 0: no such region, invalid
            name, idcard, mobile = person(i % PEOPLE)
            names.append(name)
            ids.append("0" + idcard[1:])
            mobiles.append(int(mobile))
            kinds.append("invalid")
        elif i % 25 == 13:  # an 8-digit mobile number
            name, idcard, _ = person(i % PEOPLE)
            names.append(name)
            ids.append(idcard)
            mobiles.append(13812345)
            kinds.append("invalid")
        else:
            name, idcard, mobile = person((valid * 7) % PEOPLE)  # 7 is prime to 400: all
            valid += 1
            names.append(name)
            ids.append(idcard.lower() if i % 11 == 0 else idcard)  # 'x' and 'X': one person
            mobiles.append(int(mobile))
            kinds.append("valid")
    df = pd.DataFrame(
        {
            "客户编号": [f"{i:06d}" for i in range(1000)],
            "姓名": names,
            "身份证号": ids,
            "手机号": pd.array(mobiles, dtype="int64"),
            "余额": [float(i) / 3 if i % 9 else float("nan") for i in range(1000)],
            "开户日": pd.date_range("2020-01-01", periods=1000, freq="D"),
        },
        index=pd.Index(range(5000, 3000, -2), name="cust"),
    )
    counts = {kind: kinds.count(kind) for kind in ("valid", "invalid")}
    return df, counts


def _people(df: pd.DataFrame, valid: pd.Series) -> set[tuple[str, str, str]]:
    """The distinct people of the valid rows, as the API receives them."""
    rows = df[valid.to_numpy()]
    return {
        (n, i.upper(), str(m))
        for n, i, m in zip(rows["姓名"], rows["身份证号"], rows["手机号"], strict=True)
    }


def check_result(out: pd.DataFrame, df: pd.DataFrame, counts: dict[str, int]) -> None:
    """Same index and original columns, documented dtypes, every row's true answer."""
    pd.testing.assert_frame_equal(out[list(df.columns)], df, check_exact=True)
    assert out.index.equals(df.index)
    assert list(out.columns) == [*df.columns, *RESULT_NAMES]
    assert {name: str(out[name].dtype) for name in RESULT_NAMES} == DOCUMENTED_DTYPES
    assert out["queried_at"].dt.tz is not None
    statuses = out["status"].value_counts().to_dict()
    assert statuses.get("invalid", 0) == counts["invalid"]
    assert statuses.get("ok", 0) + statuses.get("rejected", 0) == counts["valid"]
    for row in out[out["status"] != "invalid"].itertuples(index=False):
        code, scores = expected_answer(row[1], row[2].upper(), str(row[3]))
        if code == 0:
            assert row.status == "ok"
            assert row.range_score == int(scores["range"])
            assert row.stability_score == int(scores["stability"])
            assert not pd.isna(row.queried_at)
        else:
            assert (row.status, row.error_code) == ("rejected", code)


def _enrich(df: pd.DataFrame, server: Served, state: Path, **extra: Any) -> pd.DataFrame:
    kwargs: dict[str, Any] = {"qps": 500, "progress": False} | extra
    return enrich_frame(
        df,
        key="k",
        endpoint=server.url,
        state=state,
        retry=RetryPolicy(initial=0.005, maximum=0.05),
        **kwargs,
    )


def test_a_frame_is_enriched_once_per_person_and_a_second_call_bills_nothing(
    sandbox: Callable[..., Served], state: Path
) -> None:
    df, counts = customers()
    original = df.copy()
    server = sandbox()
    valid = validate_frame(df)["valid"]
    assert int(valid.sum()) == counts["valid"]
    people = _people(df, valid)
    assert len(people) == PEOPLE
    out = _enrich(df, server, state)
    check_result(out, df, counts)
    pd.testing.assert_frame_equal(df, original, check_exact=True)  # the input is untouched
    assert server.stats.requests == PEOPLE
    assert len(server.stats.billed_by_identity) == server.stats.billed
    billed = server.stats.billed
    again = _enrich(df, server, state)
    assert server.stats.requests == PEOPLE  # nothing sent, nothing billed
    assert server.stats.billed == billed
    pd.testing.assert_frame_equal(again, out, check_exact=True)
    assert again.attrs["batch_enricher"]["reused"] == PEOPLE


async def test_the_sync_call_works_inside_a_running_event_loop(
    sandbox: Callable[..., Served], state: Path
) -> None:
    asyncio.get_running_loop()  # as in Jupyter: a loop is running in this thread
    df, counts = customers()
    server = sandbox()
    out = _enrich(df, server, state)
    check_result(out, df, counts)
    assert server.stats.requests == PEOPLE
    _enrich(df, server, state)
    assert server.stats.requests == PEOPLE


async def test_the_async_twin_runs_on_the_callers_loop(
    sandbox: Callable[..., Served], state: Path
) -> None:
    df, counts = customers()
    server = sandbox()
    out = await enrich_frame_async(
        df, key="k", endpoint=server.url, state=state, qps=500, progress=False
    )
    check_result(out, df, counts)
    assert server.stats.requests == PEOPLE


class _Hook(Progress):
    """Counts answers; at the n-th, runs `action`."""

    def __init__(self, n: int, action: Callable[[], None]) -> None:
        self.n, self.action, self.answered = n, action, 0
        self.notes: list[str] = []
        self.stopping = threading.Event()

    def advance(self, rows: int, status: Status, *, billed: bool) -> None:
        self.answered += 1
        if self.answered == self.n:
            self.action()

    def note(self, message: str) -> None:
        self.notes.append(message)
        if "KeyboardInterrupt" in message:
            self.stopping.set()


def _raise() -> None:
    raise KeyboardInterrupt


def test_a_keyboard_interrupt_in_the_run_keeps_every_paid_answer(
    sandbox: Callable[..., Served], state: Path
) -> None:
    df, counts = customers()
    server = sandbox()
    with pytest.raises(KeyboardInterrupt):
        _enrich(df, server, state, concurrency=1, progress=_Hook(50, _raise))
    assert server.stats.requests == 50  # one call at a time: the 50th answer was the last
    out = _enrich(df, server, state)
    check_result(out, df, counts)
    assert server.stats.requests == PEOPLE  # the 50 paid answers came from the journal
    assert max(server.stats.billed_by_identity.values()) == 1


@pytest.fixture
def ctrl_c() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt, as in a terminal.

    A suite run as a background job inherits SIGINT ignored, and `_thread.interrupt_main()`
    then does nothing at all.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("ctrl_c")
def test_ctrl_c_in_the_callers_thread_finishes_the_calls_in_flight(
    sandbox: Callable[..., Served], state: Path
) -> None:
    df, counts = customers()
    server = sandbox()

    def interrupt() -> None:
        _thread.interrupt_main()  # Ctrl-C, as the caller's (main) thread receives it
        # Deterministic: no more answers until the caller's thread has asked for the stop.
        assert hook.stopping.wait(30), "the stop was never asked for"

    hook = _Hook(40, interrupt)
    with pytest.raises(KeyboardInterrupt):
        _enrich(df, server, state, concurrency=4, progress=hook)
    first = server.stats.requests
    assert 40 <= first < PEOPLE
    assert server.stats.answered.count(None) == 0  # none abandoned in flight
    out = _enrich(df, server, state)
    check_result(out, df, counts)
    assert server.stats.requests == PEOPLE  # every answer of the first call was kept
    assert max(server.stats.billed_by_identity.values()) == 1


def test_validate_frame_says_why_and_sends_nothing() -> None:
    df, counts = customers()
    report = validate_frame(df)
    assert report.index.equals(df.index)
    assert {c: str(t) for c, t in report.dtypes.items()} == {
        "valid": "boolean",
        "error_code": "Int64",
        "reason": "string",
    }
    assert int((~report["valid"]).sum()) == counts["invalid"]
    bad = report[~report["valid"]]
    assert set(bad["error_code"]) == {281501, 281503}
    assert bad["reason"].str.len().min() > 0
    assert not bad["reason"].str.contains("13812345").any()  # masked, never the value


def test_columns_found_as_in_the_cli_and_overridable(
    sandbox: Callable[..., Served], state: Path
) -> None:
    df = pd.DataFrame([person(1), person(2)], columns=["who", "证件", "tel"])
    with pytest.raises(ColumnError, match="name"):
        validate_frame(df)
    report = validate_frame(df, name_col="who", idcard_col="证件", mobile_col="tel")
    assert report["valid"].all()
    server = sandbox()
    out = _enrich(df, server, state, name_col="who", idcard_col="证件", mobile_col="tel")
    assert server.stats.requests == 2
    # An enriched frame enriched again: its result block is replaced, not doubled.
    again = _enrich(out, server, state, name_col="who", idcard_col="证件", mobile_col="tel")
    pd.testing.assert_frame_equal(again, out, check_exact=True)
    assert server.stats.requests == 2


def test_a_missing_key_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JUHE_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="no API key"):
        enrich_frame(pd.DataFrame([person(1)], columns=["姓名", "身份证号", "手机号"]))


def test_an_empty_frame_gets_the_typed_columns(sandbox: Callable[..., Served], state: Path) -> None:
    df = pd.DataFrame({"姓名": [], "身份证号": [], "手机号": []}, dtype="object")
    out = _enrich(df, sandbox(), state)
    assert len(out) == 0
    assert [str(out[n].dtype) for n in RESULT_NAMES] == list(RESULT_DTYPES)


def test_enrich_files_returns_the_run_summary(
    sandbox: Callable[..., Served], state: Path, tmp_path: Path
) -> None:
    src = write_csv(tmp_path / "in.csv", [list(person(i)) for i in (1, 2, 2)])
    server = sandbox()
    summary = enrich_files(
        [src], key="k", endpoint=server.url, state=state, qps=500, output=tmp_path / "out.csv"
    )
    assert (summary.rows, summary.identities, summary.billed) == (3, 2, server.stats.billed)
    assert (tmp_path / "out.csv").exists()


@pytest.mark.usefixtures("ctrl_c")
def test_ctrl_c_during_enrich_files_finishes_the_calls_in_flight_and_writes_the_file(
    sandbox: Callable[..., Served], state: Path, tmp_path: Path
) -> None:
    src = write_csv(tmp_path / "in.csv", [list(person(i)) for i in range(PEOPLE)])
    server = sandbox()

    def interrupt() -> None:
        _thread.interrupt_main()  # Ctrl-C, as the caller's (main) thread receives it
        assert hook.stopping.wait(30), "the stop was never asked for"

    hook = _Hook(40, interrupt)
    out = tmp_path / "out.csv"
    with pytest.raises(KeyboardInterrupt):
        enrich_files(
            [src],
            key="k",
            endpoint=server.url,
            state=state,
            qps=500,
            concurrency=4,
            output=out,
            progress=hook,
        )
    first = server.stats.requests
    assert 40 <= first < PEOPLE
    assert server.stats.answered.count(None) == 0  # none abandoned in flight
    statuses = [row["status"] for row in read_csv(out)]  # the file was written, rows marked
    assert statuses.count("ok") + statuses.count("rejected") == first
    assert statuses.count("skipped") == PEOPLE - first
    summary = enrich_files([src], key="k", endpoint=server.url, state=state, qps=500, output=out)
    assert summary.exit_code == 0
    assert server.stats.requests == PEOPLE  # every answer of the first run was kept
    assert max(server.stats.billed_by_identity.values()) == 1


def test_importing_the_package_or_the_cli_does_not_import_pandas() -> None:
    code = (
        "import sys, batch_enricher\n"
        "assert 'aiohttp' not in sys.modules, 'aiohttp imported'\n"
        "import batch_enricher.cli\n"
        "assert 'pandas' not in sys.modules, 'pandas imported'\n"
        "assert 'batch_enricher.frame' not in sys.modules\n"
        "batch_enricher.EnricherError\n"  # a lazy export still resolves
        "assert 'pandas' not in sys.modules\n"
    )
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_the_readme_python_api_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "no python example in the README's Python API section"
    monkeypatch.chdir(tmp_path)  # the example's journal file goes here
    namespace: dict[str, Any] = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert "out" in namespace


def test_an_account_abort_raises_with_the_result_so_far(
    sandbox: Callable[..., Served], state: Path
) -> None:
    df = pd.DataFrame([person(i) for i in range(5)], columns=["姓名", "身份证号", "手机号"])
    server = sandbox(key="the-right-key")
    with pytest.raises(AccountError) as caught:
        _enrich(df, server, state)
    assert caught.value.error_code == 10001
    assert server.stats.billed == 0
    partial = caught.value.frame  # type: ignore[attr-defined]
    assert set(partial["status"]) == {"skipped"}
    assert partial.index.equals(df.index)


def test_frames_larger_than_a_block_keep_their_row_order(
    sandbox: Callable[..., Served], state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("batch_enricher.frame._BLOCK_ROWS", 7)
    df, counts = customers()
    report = validate_frame(df)
    assert int(report["valid"].sum()) == counts["valid"]
    out = _enrich(df, sandbox(), state)
    check_result(out, df, counts)


def test_without_pandas_the_frame_api_says_which_extra_to_install() -> None:
    code = (
        "import sys\n"
        "sys.modules['pandas'] = None  # as if it were not installed\n"
        "import batch_enricher\n"
        "try:\n"
        "    batch_enricher.enrich_frame\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'batch-enricher[pandas]'" in done.stdout

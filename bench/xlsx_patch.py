"""Benchmark of the "same workbook out" XLSX path (batch_enricher/xlsx_patch.py) against pandas.

Run `python bench/xlsx_patch.py [--rows 100000] [--repeat 3]`. It generates an `--rows`-row,
10-column workbook the way Excel saves one (shared strings, a date format; XlsxWriter), then
runs each of these as a child process, measured alone (`os.wait4`: its own peak RSS; the
seconds are the child's own, imports excluded):

- patch: `patch_workbook` adds 11 result columns (a different result on every row, the worst
  case for its per-person template cache) and a Summary sheet with charts;
- read + patch: the same, with the rows read first through python-calamine, as the enrich
  write pass does (the reader holds the whole sheet; that is the reader's memory, not the
  patch's);
- pandas: `read_excel(engine="calamine")`, 11 columns added, `to_excel(engine="xlsxwriter")`,
  the round trip issue 13 sets as the bar.

Files live under bench/_work/ (git-ignored).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "_work"
SHEET = "客户"
COLUMNS = ["姓名", "身份证号", "手机号", "城市", "金额", "日期", "备注", "编号", "比例", "等级"]
RESULTS = [
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
]
CITIES = ("北京", "上海", "广州", "深圳", "成都")


def generate(path: Path, rows: int) -> None:
    """An Excel-like workbook: shared strings, text IDs, numbers, formatted dates."""
    import xlsxwriter

    book = xlsxwriter.Workbook(str(path))
    sheet = book.add_worksheet(SHEET)
    date = book.add_format({"num_format": "yyyy-mm-dd"})
    sheet.write_row(0, 0, COLUMNS)
    start = datetime.datetime(2024, 1, 1)
    for i in range(1, rows + 1):
        sheet.write_string(i, 0, f"张{i:07d}")
        sheet.write_string(i, 1, f"110101199003{i:06d}")
        sheet.write_string(i, 2, f"138{i:08d}")
        sheet.write_string(i, 3, CITIES[i % len(CITIES)])
        sheet.write_number(i, 4, (i * 7919) % 100000 / 100)
        sheet.write_datetime(i, 5, start + datetime.timedelta(days=i % 365), date)
        sheet.write_string(i, 6, f"note {i % 97}")
        sheet.write_number(i, 7, i)
        sheet.write_number(i, 8, (i % 1000) / 1000)
        sheet.write_string(i, 9, "ABCD"[i % 4])
    book.close()


def _result(row: int) -> list[object]:
    if row % 10 == 0:
        return ["failed", 10011, "rate limited", None, None, None, None, None, None, None, None]
    score = row % 9 + 1
    band = f"[{score}0000,{score + 1}0000)"
    return ["ok", 0, None, f"JH{row:012d}", score, band, score, band, score, band, "2024-01-02"]


def _summary(rows: int) -> object:
    from batch_enricher.writer import SummarySheet

    bands = [(f"[{s}0000,{s + 1}0000)", rows // 9) for s in range(1, 10)]
    return SummarySheet(
        "Summary",
        [("input", "bench.xlsx"), ("rows", rows)],
        [("range", bands), ("history", bands), ("stability", bands)],
    )


def _child_patch(src: Path, out: Path, rows: int, read: bool) -> None:
    from batch_enricher.xlsx_patch import patch_workbook

    started = time.perf_counter()
    results: Iterator[tuple[int, list[object]]]
    if read:
        from python_calamine import CalamineWorkbook

        sheet = CalamineWorkbook.from_path(str(src)).get_sheet_by_name(SHEET)
        results = (
            (number, _result(number)) for number, _ in enumerate(sheet.iter_rows(), 1) if number > 1
        )
    else:
        results = ((number, _result(number)) for number in range(2, rows + 2))
    patch_workbook(
        src,
        out,
        sheet=SHEET,
        header_row=1,
        first_col=len(COLUMNS) + 1,
        headers=RESULTS,
        results=results,  # type: ignore[arg-type]
        status_column=0,
        summary=_summary(rows),  # type: ignore[arg-type]
    )
    print(f"{time.perf_counter() - started:.6f}")


def _child_pandas(src: Path, out: Path) -> None:
    import pandas as pd

    started = time.perf_counter()
    frame = pd.read_excel(src, sheet_name=SHEET, engine="calamine")
    for index, name in enumerate(RESULTS):
        frame[name] = [_result(row)[index] for row in range(2, len(frame) + 2)]
    frame.to_excel(out, sheet_name=SHEET, index=False, engine="xlsxwriter")
    print(f"{time.perf_counter() - started:.6f}")


def run_child(argv: Sequence[str]) -> tuple[float, float]:
    """(the child's own seconds, its peak RSS in MB)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, __file__, *argv], stdout=subprocess.PIPE, env=env, cwd=ROOT
    )
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"child {argv} failed with {proc.returncode}")
    return float(output.split()[-1]), usage.ru_maxrss / 1024


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--modes", default="patch,read+patch,pandas", help="comma-separated runs to measure"
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, src, out, *rest = args.child
        if mode == "generate":
            generate(Path(src), int(rest[0]))
            print("0")
        elif mode == "pandas":
            _child_pandas(Path(src), Path(out))
        else:
            _child_patch(Path(src), Path(out), int(rest[0]), read=mode == "read+patch")
        return
    WORK.mkdir(exist_ok=True)
    src = WORK / f"xlsx_patch_{args.rows}.xlsx"
    if not src.exists():
        # In a child: a forked child starts with its parent's peak RSS on Linux (it survives
        # exec), so the parent stays small for the measured children.
        started = time.perf_counter()
        run_child(["--child", "generate", str(src), "-", str(args.rows)])
        print(f"generated {src.name} in {time.perf_counter() - started:.1f} s")
    out = WORK / "xlsx_patch_out.xlsx"
    figures: dict[str, list[tuple[float, float]]] = {}
    for _ in range(args.repeat):
        for mode in args.modes.split(","):
            child = ["--child", mode, str(src), str(out), str(args.rows)]
            figures.setdefault(mode, []).append(run_child(child))
    pandas = statistics.median(s for s, _ in figures.get("pandas", [(float("nan"), 0.0)]))
    print(f"\n{args.rows:,} rows x {len(COLUMNS)} columns + {len(RESULTS)} result columns")
    print("| run | seconds (median; all) | peak RSS MB (max) | time vs pandas |")
    print("|---|---|---|---|")
    for mode, runs in figures.items():
        seconds = [s for s, _ in runs]
        median = statistics.median(seconds)
        spread = ", ".join(f"{s:.2f}" for s in seconds)
        rss = max(r for _, r in runs)
        ratio = f"{median / pandas:.2f}x" if "pandas" in figures else "-"
        print(f"| {mode} | {median:.2f} ({spread}) | {rss:.0f} | {ratio} |")


if __name__ == "__main__":
    main()

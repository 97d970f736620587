"""Benchmark of the XLSX round trip (issue 11): `enrich` of a big workbook against pandas.

Run `python bench/xlsx.py [--rows 100000] [--repeat 3]` (with `--targets`: issue 13's (e) and
(g), at `--rows` and 3 x `--rows`, with verdicts). It generates an `--rows`-row, 10-column
workbook the way Excel saves one (shared strings, a date format; XlsxWriter) whose
rows are `--distinct` fictional people (default: every row a different one), then measures
each of these as a child process, alone (`os.wait4`: its own CPU and peak RSS):

- enrich: `batch-enricher enrich in.xlsx -o out.xlsx` with every answer already in the journal
  (a first, unmeasured run against the built-in sandbox fills it; the measured runs make no
  API call, which the run's summary confirms). Wall time from start to exit, imports and
  start-up included, as a user waits for it.
- pandas+xlsxwriter / pandas+openpyxl: `read_excel(engine="calamine")`, 11 columns added,
  `to_excel(engine=...)`; timed inside the child, imports excluded (the stricter yardstick),
  and with start-up.
- patch, read+patch: `xlsx_patch.patch_workbook` alone, with and without reading the rows
  through python-calamine first (the module's own cost; `--modes` to add them).

Files live under bench/_work/ (git-ignored); the generated workbook is kept between runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from batch_enricher.columns import RESULT_COLUMNS

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import person  # noqa: E402  (the same fictional people as the main benchmark)

ROOT = HERE.parent
WORK = HERE / "_work"
SHEET = "客户"
COLUMNS = ["客户编号", "姓名", "身份证号", "手机号", "城市", "金额", "日期", "备注", "比例", "等级"]
RESULTS = list(RESULT_COLUMNS["en"])
CITIES = ("北京", "上海", "广州", "深圳", "成都")
DEFAULT_MODES = "enrich,pandas+xlsxwriter,pandas+openpyxl"


def generate(path: Path, rows: int, distinct: int) -> None:
    """An Excel-like workbook: shared strings, text IDs, numbers, formatted dates."""
    import xlsxwriter

    book = xlsxwriter.Workbook(str(path))
    sheet = book.add_worksheet(SHEET)
    date = book.add_format({"num_format": "yyyy-mm-dd"})
    money = book.add_format({"num_format": '"¥"#,##0.00'})
    share = book.add_format({"num_format": "0.00%"})
    sheet.write_row(0, 0, COLUMNS)
    start = datetime.datetime(2024, 1, 1)
    for i in range(1, rows + 1):
        name, idcard, mobile = person((i - 1) % distinct)
        sheet.write_string(i, 0, f"C{i:08d}")
        sheet.write_string(i, 1, name)
        sheet.write_string(i, 2, idcard)
        sheet.write_string(i, 3, mobile)
        sheet.write_string(i, 4, CITIES[i % len(CITIES)])
        sheet.write_number(i, 5, (i * 7919) % 100000 / 100, money)
        sheet.write_datetime(i, 6, start + datetime.timedelta(days=i % 365), date)
        sheet.write_string(i, 7, f"note {i % 97}")
        sheet.write_number(i, 8, (i % 1000) / 1000, share)
        sheet.write_string(i, 9, "ABCD"[i % 4])
    book.close()


# --- children ----------------------------------------------------------------------------------


def _result(row: int) -> list[object]:
    score = row % 9 + 1
    band = f"[{score}0000,{score + 1}0000)"
    return ["ok", None, None, f"JH{row:012d}", score, band, score, band, score, band, "2024-01-02"]


def _child_pandas(src: Path, out: Path, engine: str) -> None:
    import pandas as pd

    started = time.perf_counter()
    frame = pd.read_excel(src, sheet_name=SHEET, engine="calamine")
    for index, name in enumerate(RESULTS):
        frame[name] = [_result(row)[index] for row in range(2, len(frame) + 2)]
    frame.to_excel(out, sheet_name=SHEET, index=False, engine=engine)
    print(f"{time.perf_counter() - started:.6f}")


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
    )
    print(f"{time.perf_counter() - started:.6f}")


@dataclass
class Child:
    """One measured child: wall seconds (start to exit), its own CPU, peak RSS, stdout."""

    wall: float
    cpu: float
    rss_mb: float
    stdout: str


def run_child(argv: Sequence[str]) -> Child:
    """Run a child to completion and measure it alone (`wait4`: this child's rusage only)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), JUHE_API_KEY="bench-key")
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # measure like an installed tool (see bench/run.py)
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env, cwd=ROOT, text=True)
    assert proc.stdout is not None
    output = proc.stdout.read()
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"child {list(argv)[:6]} failed with {proc.returncode}")
    return Child(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, output)


def _enrich_argv(src: Path, out: Path, state: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "batch_enricher",
        "enrich",
        str(src),
        "-o",
        str(out),
        "--state",
        str(state),
        "--sandbox",
        "--summary-json",
        str(out.with_suffix(".summary.json")),
        "-q",
        *extra,
    ]


def _api_calls(out: Path) -> int:
    summary = json.loads(out.with_suffix(".summary.json").read_text(encoding="utf-8"))
    return int(summary["api_calls"])


def measure(mode: str, src: Path, state: Path, rows: int) -> tuple[float, Child]:
    """(the figure compared: wall for enrich, in-process seconds for the others, the child)."""
    if mode == "enrich":
        out = WORK / "xlsx_enriched.xlsx"
        child = run_child(_enrich_argv(src, out, state))
        if _api_calls(out) != 0:
            raise SystemExit("the measured enrich run made API calls: the journal was not warm")
        return child.wall, child
    out = WORK / "xlsx_bench_out.xlsx"
    child = run_child([sys.executable, __file__, "--child", mode, str(src), str(out), str(rows)])
    return float(child.stdout.split()[-1]), child


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--distinct", type=int, default=0, help="people (default: --rows)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--modes", default=DEFAULT_MODES, help="comma-separated runs to measure")
    parser.add_argument(
        "--targets",
        action="store_true",
        help="issue 13's (e) and (g): --rows and 3 x --rows, all modes, with verdicts",
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, src, out, *rest = args.child
        if mode == "generate":
            generate(Path(src), int(rest[0]), int(rest[1]))
        elif mode.startswith("pandas+"):
            _child_pandas(Path(src), Path(out), mode.removeprefix("pandas+"))
        else:
            _child_patch(Path(src), Path(out), int(rest[0]), read=mode == "read+patch")
        return
    if args.targets:
        _targets(args.rows, args.repeat)
        return
    distinct = args.distinct or args.rows
    src, figures = measure_size(args.rows, distinct, args.repeat, args.modes.split(","))
    _report(args.rows, distinct, src, figures)


def measure_size(
    rows: int, distinct: int, repeat: int, modes: list[str]
) -> tuple[Path, dict[str, list[tuple[float, Child]]]]:
    """Generate (once) the `rows`-row workbook, fill its journal (once), measure each mode."""
    WORK.mkdir(exist_ok=True)
    src = WORK / f"xlsx_{rows}_{distinct}.xlsx"
    if not src.exists():
        # In a child: a forked child starts with its parent's peak RSS on Linux (it survives
        # exec), so the parent stays small for the measured children.
        started = time.perf_counter()
        run_child(
            [sys.executable, __file__, "--child", "generate", str(src), "-", str(rows),
             str(distinct)]
        )  # fmt: skip
        print(f"generated {src.name} ({src.stat().st_size / 1e6:.1f} MB) in "
              f"{time.perf_counter() - started:.1f} s")  # fmt: skip
    state = WORK / f"xlsx_{rows}_{distinct}.journal.sqlite3"
    if "enrich" in modes and not state.exists():
        warm = run_child(
            _enrich_argv(src, WORK / "xlsx_warm.xlsx", state, "--qps", "100000",
                         "--concurrency", "64")
        )  # fmt: skip
        print(
            f"journal filled ({_api_calls(WORK / 'xlsx_warm.xlsx'):,} calls) in {warm.wall:.1f} s"
        )
    figures: dict[str, list[tuple[float, Child]]] = {}
    for _ in range(repeat):
        for mode in modes:
            figures.setdefault(mode, []).append(measure(mode, src, state, rows))
    return src, figures


def _targets(rows: int, repeat: int) -> None:
    """Issue 13's (e) and (g): `rows` and 3 x `rows`, every row a different person."""
    modes = DEFAULT_MODES.split(",")
    small_src, small = measure_size(rows, rows, repeat, modes)
    _report(rows, rows, small_src, small)
    big_src, big = measure_size(3 * rows, 3 * rows, repeat, modes)
    _report(3 * rows, 3 * rows, big_src, big)

    def median(runs: list[tuple[float, Child]]) -> float:
        return statistics.median(s for s, _ in runs)

    def peak(runs: list[tuple[float, Child]]) -> float:
        return max(c.rss_mb for _, c in runs)

    versus = median(small["enrich"]) / median(small["pandas+xlsxwriter"])
    growth = median(big["enrich"]) / median(small["enrich"])
    rss_ratio = peak(big["enrich"]) / peak(small["enrich"])
    checks = [
        ("(e)", f"{rows:,} rows: enrich / pandas calamine+xlsxwriter", f"{versus:.2f}x",
         "<= 1.0x", versus <= 1.0),
        ("(e)", f"{rows:,} rows: enrich peak RSS", f"{peak(small['enrich']):.0f} MB",
         "<= 150 MB", peak(small["enrich"]) <= 150),
        ("(e)", f"{3 * rows:,} / {rows:,} rows: enrich time", f"{growth:.2f}x", "<= 3.2x",
         growth <= 3.2),
        ("(g)", f"{3 * rows:,} / {rows:,} rows: enrich peak RSS", f"{rss_ratio:.2f}x",
         "<= 1.1x", rss_ratio <= 1.1),
    ]  # fmt: skip
    print("\n| part | figure | value | target | |")
    print("|---|---|---|---|---|")
    for part, figure, value, target, met in checks:
        print(f"| {part} | {figure} | {value} | {target} | {'met' if met else '**not met**'} |")


def _report(
    rows: int, distinct: int, src: Path, figures: dict[str, list[tuple[float, Child]]]
) -> None:
    medians = {mode: statistics.median(s for s, _ in runs) for mode, runs in figures.items()}
    print(
        f"\n{rows:,} rows x {len(COLUMNS)} columns ({distinct:,} people; "
        f"{src.stat().st_size / 1e6:.1f} MB) + {len(RESULTS)} result columns"
    )
    print("| run | seconds (median; all) | with start-up | CPU s | peak RSS MB | vs pandas |")
    print("|---|---|---|---|---|---|")
    for mode, runs in figures.items():
        seconds = ", ".join(f"{s:.2f}" for s, _ in runs)
        wall = statistics.median(c.wall for _, c in runs)
        cpu = statistics.median(c.cpu for _, c in runs)
        rss = max(c.rss_mb for _, c in runs)
        ratios = [
            f"{medians[mode] / medians[other]:.2f}x {other.removeprefix('pandas+')}"
            for other in ("pandas+xlsxwriter", "pandas+openpyxl")
            if other in medians and other != mode and not mode.startswith("pandas")
        ]
        print(
            f"| {mode} | {medians[mode]:.2f} ({seconds}) | {wall:.2f} | {cpu:.2f} | {rss:.0f} "
            f"| {', '.join(ratios) or '-'} |"
        )


if __name__ == "__main__":
    main()

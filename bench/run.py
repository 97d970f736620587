"""Benchmark of batch-enricher against the targets of issues 7 and 10; prints one table.

Run `python bench/run.py` (or `make bench`). The project's API emulator runs in its own process
on 127.0.0.1 (so its CPU never counts against, or competes inside, the client being measured),
with 50 ms latency and a server-side limit of `--qps` requests per second (10011 beyond it).
Every client under test is a separate process too, measured with `os.wait4` (its own CPU seconds
and peak RSS, nothing else's):

(a) pacing: `enrich` over N distinct people at `--qps`; request rate first-to-last arrival as
    the server saw it, the 10011 replies, and the whole run's wall time against N/qps.
(b) CPU: that same `enrich` run against a bare aiohttp loop sending the same N requests to the
    same server at the same pace and concurrency.
(c) scale: `enrich` at 100k and 1M rows of a few distinct people (a warm-up run fills the
    journal first), peak RSS and wall time, against pandas read_csv + to_csv of the same file.
(d) a naive client: one blocking request at a time, a new connection each, as typical Juhe
    sample code does.
(f) team mode (issue 12), opt-in with `--team`: one `enrich` alone with a PostgreSQL `--state`
    (the shared journal, claims and the account's shared send schedule) at `--qps`, against the
    same server; its request rate must reach 95 % of `--qps`. A throw-away PostgreSQL server is
    started on loopback the way the tests start theirs (tests/pg.py).
(e) planning memory (issue 10), opt-in with `--planning`: peak RSS of `enrich --dry-run` with a
    fresh journal over 5,000,000 distinct people (`--planning-people`), and over a tenth of them
    for the ratio. No server is needed: a dry run sends nothing. Several minutes.
(b') issue 13: CPU per API call, enrich's call phase against the bare loop's (both measured
    inside their process, start-up excluded: enrich's debug log gives its own), from the (a)/(b)
    runs; and the imports of `batch-enricher --help` (`python -X importtime`).
(f) `--qps auto` (issue 13), opt-in with `--auto`: enrich with `--qps auto` against server
    limits it is not told (10, 40 and 100/s, and 40/s dropping to 20/s halfway), each stopped
    with Ctrl-C after `--auto-seconds`; the share of the limit held after the first 15 s, the
    share of requests answered 10011, the seconds to reach 90 % of the limit. About 4 minutes.
    With `--auto --team`: the same for two runs at once sharing a throw-away PostgreSQL
    `--state` (the account's schedule, one controller driving it), distinct people each; what
    the server saw of both together is what is judged.

Generated files live under bench/_work/ (git-ignored), recreated on every run. The people are
fictional, with valid check digits (the same scheme as tests/conftest.py, copied here).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import csv
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "_work"
KEY = "bench-key"  # the emulator accepts any non-empty key; never a real one

# Targets of issue 7.
RATE_SHARE_MIN = 0.97
WALL_OVER_IDEAL_MAX = 1.10
CPU_RATIO_MAX = 1.5
RSS_RATIO_MAX = 1.3
PANDAS_RATIO_MAX = 4.0
# Target of issue 10.
PLANNING_RSS_MAX_MB = 300
# Target of issue 12.
TEAM_RATE_SHARE_MIN = 0.95
# Targets of issue 13: (b') and (f).
CPU_PER_CALL_MAX = 1.25
HELP_IMPORTS_MAX_MS = 150.0
AUTO_HELD_MIN = 0.90  # of the limit, after the first AUTO_SETTLING seconds
AUTO_SETTLING = 15.0
AUTO_REFUSED_MAX = 0.01  # share of requests answered 10011
AUTO_RECOVERY = 10.0  # seconds after the limit halves, from which <= 1 % again
AUTO_MAX_QPS = 200.0
AUTO_TEAM_RUNS = 2  # --auto --team: runs sharing the PostgreSQL --state

# --- fictional people (the scheme of tests/conftest.py `person(i)`) ----------------------------

_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
_GIVEN = [
    "伟",
    "芳",
    "娜",
    "秀英",
    "敏",
    "静",
    "丽",
    "强",
    "磊",
    "军",
    "洋",
    "勇",
    "艳",
    "杰",
    "娟",
]
_REGIONS = ("110101", "310104", "440305", "510107", "330106")
_WEIGHTS = [pow(2, 17 - i, 11) for i in range(17)]  # ISO 7064 MOD 11-2 weights


def _check_digit(body: str) -> str:
    total = sum(int(d) * w for d, w in zip(body, _WEIGHTS, strict=True))
    return "10X98765432"[total % 11]


def person(i: int) -> tuple[str, str, str]:
    """The i-th fictional person: (name, 18-digit ID with a correct check digit, mobile)."""
    birth = f"{1960 + i % 40:04d}{1 + i % 12:02d}{1 + i % 28:02d}"
    body = f"{_REGIONS[i % 5]}{birth}{i % 1000:03d}"
    name = _SURNAMES[i % len(_SURNAMES)] + _GIVEN[(i // len(_SURNAMES)) % len(_GIVEN)]
    mobile = "1" + str(3 + i % 7) + f"{i:09d}"
    return name, body + _check_digit(body), mobile


HEADER = ("客户编号", "姓名", "身份证号", "手机号")


def write_input(path: Path, rows: int, distinct: int) -> Path:
    """A UTF-8 CSV of `rows` customers cycling through `distinct` people."""
    people = [person(i) for i in range(distinct)]
    with path.open("w", encoding="utf-8", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(HEADER)
        out.writerows((f"C{r:08d}", *people[r % distinct]) for r in range(rows))
    return path


def write_distinct(path: Path, people: int) -> Path:
    """A UTF-8 CSV of `people` rows, every one a different person (unique ID and mobile).

    The i-th ID is region, birth date and sequence number drawn from i (1,000 people per
    region and day, from 1970 on), with its ISO 7064 check digit: the sum of the first 14
    digits is worked out once per day, so the loop stays tight (~1 s per million rows).
    """
    import datetime as dt

    first = dt.date(1970, 1, 1).toordinal()
    tail_weights = _WEIGHTS[14:]
    names = [s + g for g in _GIVEN for s in _SURNAMES]
    with path.open("w", encoding="utf-8", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(HEADER)
        for day in range((people + 999) // 1000):
            born = dt.date.fromordinal(first + day // 5).strftime("%Y%m%d")
            prefix = _REGIONS[day % 5] + born
            head = sum(int(d) * w for d, w in zip(prefix, _WEIGHTS, strict=False))
            rows = []
            for seq in range(min(1000, people - day * 1000)):
                i = day * 1000 + seq
                digits = f"{seq:03d}"
                total = head + sum(int(d) * w for d, w in zip(digits, tail_weights, strict=True))
                idcard = prefix + digits + "10X98765432"[total % 11]
                mobile = "1" + str(3 + i % 7) + f"{i:09d}"
                rows.append((f"C{i:08d}", names[i % len(names)], idcard, mobile))
            out.writerows(rows)
    return path


# --- child processes ----------------------------------------------------------------------------


@dataclass
class Child:
    """What one finished child process cost: wall and CPU seconds, peak RSS, exit status."""

    wall: float
    cpu: float
    maxrss_mb: float
    returncode: int
    stdout: str = ""


def run_child(argv: Sequence[str], env: dict[str, str] | None = None) -> Child:
    """Run a process to completion and measure it alone (`wait4` gives this child's rusage)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT, text=True
    )
    # Read the pipes first (a full pipe would block the child), then reap it with wait4.
    out, err = _drain(proc)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.stderr.write(f"[bench] {' '.join(argv[:4])}... exited {proc.returncode}\n{err}\n")
    return Child(
        wall=wall,
        cpu=usage.ru_utime + usage.ru_stime,
        maxrss_mb=usage.ru_maxrss / 1024,  # KiB on Linux
        returncode=proc.returncode,
        stdout=out,
    )


def _drain(proc: subprocess.Popen[str]) -> tuple[str, str]:
    assert proc.stdout is not None and proc.stderr is not None
    # Children here write little; reading stderr after stdout cannot deadlock on these sizes.
    out = proc.stdout.read()
    err = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    return out, err


def enrich_argv(src: Path, out: Path, state: Path, url: str, qps: float) -> list[str]:
    """The command line of one measured `enrich` run against the bench server."""
    return [
        sys.executable,
        "-m",
        "batch_enricher",
        "enrich",
        str(src),
        "-o",
        str(out),
        "--endpoint",
        url,
        "--qps",
        str(qps),
        "--state",
        str(state),
        "--summary-json",
        str(out.with_suffix(".summary.json")),
        "-q",
    ]


def child_env() -> dict[str, str]:
    """The environment of every child: the bench key, and this checkout first on the path."""
    env = dict(os.environ)
    env["JUHE_API_KEY"] = KEY
    # Measure like an installed tool: pip compiles bytecode once at install, but some dev
    # machines set PYTHONDONTWRITEBYTECODE, which made every run recompile the package
    # (~40 ms of CPU) and charged that to enrich in figure (b).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


# --- the server: the project's emulator plus a window on its arrivals ---------------------------


class Server:
    """The sandbox in its own process; `window(since)` reports what it saw from `since` on."""

    def __init__(
        self, qps_limit: float, latency_ms: float, schedule: Sequence[tuple[float, float]] = ()
    ) -> None:
        steps = [f"{at:g}:{limit:g}" for at, limit in schedule]
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(qps_limit), str(latency_ms), *steps],
            stdout=subprocess.PIPE,
            env=child_env(),
            cwd=ROOT,
            text=True,
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://"):
            raise RuntimeError("the bench server did not start")
        self.base = self.url.rsplit("/financeInfo/", 1)[0]

    def window(self, since: int = 0) -> dict[str, Any]:
        """Arrivals, codes and timing of the requests from arrival index `since` on."""
        with urllib.request.urlopen(f"{self.base}/_bench?since={since}", timeout=10) as reply:
            data: dict[str, Any] = json.load(reply)
        return data

    def detail(self) -> tuple[list[float], list[int | None]]:
        """Every arrival (seconds after the first) and the code it was answered with."""
        with urllib.request.urlopen(f"{self.base}/_bench?detail=1", timeout=30) as reply:
            data: dict[str, Any] = json.load(reply)
        return data["times"], data["answered"]

    def close(self) -> None:
        """Stop the server process (it was started here, so it is ended by its own pid)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _serve(qps_limit: float, latency_ms: float, steps: Sequence[str] = ()) -> None:
    """Child mode: serve the project's emulator on a free loopback port until SIGTERM.

    `steps` ("30:20") change the limit that many seconds after the first request."""
    from aiohttp import web

    from batch_enricher.sandbox import STATS, SandboxConfig, make_app

    schedule = tuple((float(at), float(limit)) for at, limit in (s.split(":") for s in steps))
    config = SandboxConfig(qps_limit=qps_limit, latency_ms=latency_ms, qps_schedule=schedule)
    app = make_app(config)

    async def bench_window(request: web.Request) -> web.Response:
        stats = request.app[STATS]
        if request.query.get("detail"):
            first = stats.arrivals[0] if stats.arrivals else 0.0
            times = [at - first for at in stats.arrivals]
            return web.json_response({"times": times, "answered": stats.answered})
        since = int(request.query.get("since", "0"))
        arrivals = stats.arrivals[since:]
        codes: dict[str, int] = {}
        for code in stats.answered[since:]:
            codes[str(code)] = codes.get(str(code), 0) + 1
        return web.json_response(
            {
                "next": len(stats.arrivals),
                "requests": len(arrivals),
                "first": arrivals[0] if arrivals else None,
                "last": arrivals[-1] if arrivals else None,
                "codes": codes,
                "max_per_second": _max_per_second(arrivals),
            }
        )

    app.router.add_get("/_bench", bench_window)

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print(f"http://127.0.0.1:{port}/financeInfo/query", flush=True)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())


def _max_per_second(arrivals: Sequence[float]) -> int:
    best, start = 0, 0
    for index, at in enumerate(arrivals):
        while arrivals[start] <= at - 1.0:
            start += 1
        best = max(best, index + 1 - start)
    return best


# --- (b) the bare loop and (d) the naive client -------------------------------------------------


def _people_of(path: Path) -> list[tuple[str, str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        rows = csv.reader(fh)
        next(rows)
        return [(r[1], r[2], r[3]) for r in rows]


def _bare_loop(url: str, src: Path, qps: float, concurrency: int) -> None:
    """Child mode: the same calls as `enrich`, at the same pace, with nothing else around them."""
    import aiohttp

    people = _people_of(src)
    spacing = 1.001 / qps  # the pacer's own spacing (SPACING_MARGIN), so the pace is identical

    async def main() -> None:
        cpu = time.process_time()
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            todo = iter(enumerate(people))

            async def worker() -> None:
                for i, (name, idcard, mobile) in todo:
                    delay = t0 + i * spacing - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    form = {"key": KEY, "idcard": idcard, "realname": name, "mobile": mobile}
                    async with session.post(url, data=form) as reply:
                        json.loads(await reply.read())

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        # The call phase's CPU, as enrich logs its own (b'): start-up and imports excluded.
        print(f"{time.process_time() - cpu:.6f}")

    asyncio.run(main())


def naive_client(url: str, people: Sequence[tuple[str, str, str]]) -> float:
    """One blocking POST at a time, a new connection each, as Juhe's sample code; req/s."""
    started = time.perf_counter()
    for name, idcard, mobile in people:
        body = urllib.parse.urlencode(
            {"key": KEY, "idcard": idcard, "realname": name, "mobile": mobile}
        ).encode()
        with urllib.request.urlopen(url, data=body, timeout=10) as reply:
            json.load(reply)
    return len(people) / (time.perf_counter() - started)


def _pandas_round_trip(src: Path, out: Path) -> None:
    """Child mode: pandas read_csv(dtype=str) + to_csv; prints its seconds (imports excluded)."""
    import pandas as pd

    started = time.perf_counter()
    frame = pd.read_csv(src, dtype=str, keep_default_na=False)
    frame.to_csv(out, index=False)
    print(f"{time.perf_counter() - started:.6f}")


# --- the table ----------------------------------------------------------------------------------


@dataclass
class Table:
    """Rows of (part, figure, value, target, verdict), printed as one Markdown table."""

    rows: list[tuple[str, str, str, str, str]] = field(default_factory=list)

    def add(self, part: str, figure: str, value: str, target: str = "", met: bool | None = None):
        verdict = "" if met is None else ("met" if met else "MISSED")
        self.rows.append((part, figure, value, target, verdict))

    def render(self) -> str:
        head = ("part", "figure", "value", "target", "")
        widths = [max(len(r[i]) for r in [head, *self.rows]) for i in range(5)]

        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

        rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        return "\n".join([line(head), rule, *(line(r) for r in self.rows)])


def machine() -> str:
    """nproc, CPU model and Python version, for the record."""
    model = "unknown CPU"
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        for text in fh:
            if text.startswith("model name"):
                model = text.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def _summary(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(out.with_suffix(".summary.json").read_text())
    return data


# --- the benchmark ------------------------------------------------------------------------------


def bench(args: argparse.Namespace) -> None:
    """Run (a)-(d) and (b'), or (e) alone with --planning, (f) with --auto; print the table."""
    started = time.perf_counter()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    env = child_env()
    table = Table()
    if args.planning or args.auto:
        if args.planning:
            _planning(env, table, args.planning_people)
        if args.auto:
            _auto(env, table, args)
        print(table.render())
        print(f"\nmachine: {machine()}")
        print(f"bench took {time.perf_counter() - started:.0f} s")
        return
    server = Server(qps_limit=args.qps, latency_ms=args.latency_ms)
    if args.team:
        try:
            _team(server, env, table, args)
        finally:
            server.close()
        print(table.render())
        print(f"\nmachine: {machine()}")
        print(f"bench took {time.perf_counter() - started:.0f} s")
        return
    try:
        _pacing_and_cpu(server, env, table, args)
        _startup(env, table)
        _naive(server, table, args.qps, args.naive)
        _scale(server, env, table, args.distinct, args.rows)
    finally:
        server.close()
    print(table.render())
    print(f"\nmachine: {machine()}")
    print(f"bench took {time.perf_counter() - started:.0f} s")


def _pacing_and_cpu(
    server: Server, env: dict[str, str], table: Table, args: argparse.Namespace
) -> None:
    qps, n = args.qps, args.people
    src = write_input(WORK / "pacing.csv", n, n)
    ideal = n / qps
    runs: list[tuple[Child, dict[str, Any], dict[str, Any]]] = []
    bares: list[tuple[Child, dict[str, Any]]] = []
    call_cpu: list[float] = []  # enrich's call phase, CPU seconds per API call
    bare_call_cpu: list[float] = []
    # enrich and the bare loop take turns, `repeat` times each: the machine's noise then hits
    # both alike, and the CPU figures are the best of each (the least disturbed run).
    for attempt in range(args.repeat):
        out = WORK / f"pacing{attempt}.enriched.csv"
        state = WORK / f"pacing{attempt}.sqlite3"  # a fresh journal: every person is called
        log = WORK / f"pacing{attempt}.log"
        since = server.window()["next"]
        argv = [*enrich_argv(src, out, state, server.url, qps), "--log-file", str(log)]
        run = run_child(argv, env)
        runs.append((run, server.window(since), _summary(out)))
        call_cpu.append(_dispatch_cpu_per_call(log))
        since = server.window()["next"]
        bare_argv = [sys.executable, __file__, "--bare", server.url, str(src), str(qps)]
        bare = run_child([*bare_argv, str(args.concurrency)], env)
        bares.append((bare, server.window(since)))
        bare_call_cpu.append(float(bare.stdout.strip() or "nan") / n)

    rates = [_rate(seen) for _, seen, _ in runs]
    worst = min(range(len(runs)), key=rates.__getitem__)
    seen = runs[worst][1]
    of = f"worst of {len(runs)}"
    table.add(
        "(a)",
        f"request rate, first to last ({seen['requests']} requests, {of})",
        f"{rates[worst]:.2f}/s = {rates[worst] / qps:.1%} of --qps {qps:g}",
        f">= {RATE_SHARE_MIN:.0%}",
        rates[worst] / qps >= RATE_SHARE_MIN and all(s["requests"] == n for _, s, _ in runs),
    )
    rate_limited = sum(s["codes"].get("10011", 0) for _, s, _ in runs)
    table.add(
        "(a)",
        "10011 replies, all runs (server's count)",
        f"{rate_limited}; busiest 1 s window: {max(s['max_per_second'] for _, s, _ in runs)} "
        f"requests; enrich retries: {sum(int(m.get('retries', 0)) for _, _, m in runs)}",
        "0",
        rate_limited == 0,
    )
    slowest = max(run.wall for run, _, _ in runs)
    table.add(
        "(a)",
        f"whole enrich run vs N/qps ({of})",
        f"{slowest:.2f} s vs {ideal:.2f} s = {slowest / ideal:.3f}x",
        f"<= {WALL_OVER_IDEAL_MAX:.1f}x",
        slowest <= WALL_OVER_IDEAL_MAX * ideal and all(r.returncode == 0 for r, _, _ in runs),
    )
    bare_rate = min(_rate(seen) for _, seen in bares)
    table.add(
        "(a)",
        "same server, bare loop on a fixed time grid (control)",
        f"{bare_rate:.2f}/s = {bare_rate / qps:.1%} of --qps {qps:g}",
    )

    cpu = min(run.cpu for run, _, _ in runs)
    bare_cpu = min(bare.cpu for bare, _ in bares)
    ratio = cpu / bare_cpu
    table.add(
        "(b)",
        f"CPU: enrich vs bare aiohttp loop ({n} requests, best of {len(runs)})",
        f"{cpu:.2f} s vs {bare_cpu:.2f} s = {ratio:.2f}x",
        f"<= {CPU_RATIO_MAX:.1f}x",
        ratio <= CPU_RATIO_MAX and all(seen["requests"] == n for _, seen in bares),
    )
    per_call, bare_per_call = min(call_cpu), min(bare_call_cpu)
    table.add(
        "(b')",
        f"CPU per API call, call phase: enrich vs bare loop (best of {len(runs)})",
        f"{per_call * 1e3:.3f} ms vs {bare_per_call * 1e3:.3f} ms = "
        f"{per_call / bare_per_call:.2f}x (each run: "
        + ", ".join(f"{a / b:.2f}x" for a, b in zip(call_cpu, bare_call_cpu, strict=True))
        + ")",
        f"<= {CPU_PER_CALL_MAX:.2f}x",
        per_call <= CPU_PER_CALL_MAX * bare_per_call,
    )


def _dispatch_cpu_per_call(log: Path) -> float:
    """CPU seconds per API call of enrich's call phase, from the debug line dispatch logs."""
    found = re.search(
        r"dispatch took [\d.]+ s, ([\d.]+) s CPU, (\d+) API calls", log.read_text("utf-8")
    )
    if found is None:
        raise RuntimeError(f"no dispatch line in {log}")
    return float(found.group(1)) / int(found.group(2))


def _startup(env: dict[str, str], table: Table) -> None:
    """(b') `batch-enricher --help`: the time spent importing, best of three, and the wall."""
    argv = [sys.executable, "-X", "importtime", "-m", "batch_enricher", "--help"]
    totals, walls, loaded = [], [], False
    for _ in range(3):
        started = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, check=True)
        walls.append(time.perf_counter() - started)
        micros = 0
        for text in done.stderr.splitlines():
            fields = text.removeprefix("import time:").split("|")
            if len(fields) != 3 or not fields[1].strip().isdigit():
                continue
            loaded |= fields[2].strip() == "aiohttp"
            if fields[2][1:2] != " ":  # a top-level import: its cumulative time
                micros += int(fields[1])
        totals.append(micros / 1000)
    table.add(
        "(b')",
        "`batch-enricher --help`: imports (best of 3)",
        f"{min(totals):.0f} ms of imports, {min(walls) * 1000:.0f} ms wall; aiohttp "
        + ("imported" if loaded else "not imported"),
        f"< {HELP_IMPORTS_MAX_MS:.0f} ms",
        min(totals) < HELP_IMPORTS_MAX_MS,
    )


def _rate(seen: dict[str, Any]) -> float:
    """Requests per second from the first arrival to the last."""
    span = float(seen["last"] - seen["first"]) if seen["requests"] > 1 else 0.0
    return (seen["requests"] - 1) / span if span > 0 else 0.0


def _naive(server: Server, table: Table, qps: float, calls: int) -> None:
    people = [person(i) for i in range(calls)]
    rate = naive_client(server.url, people)
    table.add(
        "(d)",
        f"naive serial client ({calls} calls, for contrast)",
        f"{rate:.1f} req/s = {rate / qps:.0%} of --qps {qps:g}",
    )


def _scale(server: Server, env: dict[str, str], table: Table, distinct: int, rows: int) -> None:
    state = WORK / "scale.sqlite3"
    sizes = {"small": rows // 10, "big": rows}
    files = {size: write_input(WORK / f"rows_{size}.csv", k, distinct) for size, k in sizes.items()}
    # Warm-up: fills the journal with the `distinct` people (and the page cache with the file).
    warm = run_child(
        enrich_argv(files["small"], WORK / "warm.enriched.csv", state, server.url, 50.0), env
    )
    if warm.returncode != 0:
        raise RuntimeError("the warm-up enrich run failed")
    measured: dict[str, tuple[Child, float]] = {}
    for size, src in files.items():
        label = f"{sizes[size]:,} rows"
        # pandas: best of two, timed inside its process (imports excluded): the stricter yardstick.
        pandas = [
            run_child([sys.executable, __file__, "--pandas", str(src), str(WORK / "pd.csv")], env)
            for _ in range(2)
        ]
        pandas_s = min(float(p.stdout.strip() or "nan") for p in pandas)
        out = WORK / f"rows_{size}.enriched.csv"
        enrich = run_child(enrich_argv(src, out, state, server.url, 50.0), env)
        calls = _summary(out).get("api_calls")
        measured[size] = (enrich, pandas_s)
        table.add(
            "(c)",
            f"{label}, {distinct} people: enrich (API calls: {calls})",
            f"{enrich.wall:.2f} s wall, {enrich.maxrss_mb:.0f} MB peak RSS",
        )
        table.add(
            "(c)",
            f"{label}: pandas read_csv + to_csv",
            f"{pandas_s:.2f} s ({min(p.wall for p in pandas):.2f} s with start-up), "
            f"{max(p.maxrss_mb for p in pandas):.0f} MB peak RSS",
        )
    (small, _), (big, big_pandas) = measured["small"], measured["big"]
    rss_ratio = big.maxrss_mb / small.maxrss_mb
    table.add(
        "(c)",
        f"peak RSS of enrich, {rows:,} / {rows // 10:,} rows",
        f"{rss_ratio:.2f}x",
        f"<= {RSS_RATIO_MAX:.1f}x",
        rss_ratio <= RSS_RATIO_MAX,
    )
    time_ratio = big.wall / big_pandas
    table.add(
        "(c)",
        f"{rows:,} rows: enrich wall / pandas round trip",
        f"{time_ratio:.2f}x",
        f"<= {PANDAS_RATIO_MAX:.0f}x",
        time_ratio <= PANDAS_RATIO_MAX,
    )


def _team(server: Server, env: dict[str, str], table: Table, args: argparse.Namespace) -> None:
    """(h) One run alone with a PostgreSQL state: the shared limiter must not be the bottleneck."""
    sys.path.insert(0, str(ROOT))
    from tests.pg import running_server

    qps, n = args.qps, args.people
    src = write_input(WORK / "team.csv", n, n)
    with running_server() as pg:
        rates, walls = [], []
        for attempt in range(args.repeat):
            url = pg.url(pg.new_database())  # a new team database: every person is called
            out = WORK / f"team{attempt}.enriched.csv"
            argv = enrich_argv(src, out, WORK / "unused.sqlite3", server.url, qps)
            argv[argv.index("--state") + 1] = url
            argv += ["--secret-file", str(WORK / f"team{attempt}.secret")]
            since = server.window()["next"]
            run = run_child(argv, env)
            seen = server.window(since)
            rates.append(_rate(seen) if seen["requests"] == n and run.returncode == 0 else 0.0)
            walls.append(run.wall)
    worst = min(rates)
    table.add(
        "(h)",
        f"one run alone, PostgreSQL --state: request rate ({n} requests, worst of {len(rates)})",
        f"{worst:.2f}/s = {worst / qps:.1%} of --qps {qps:g}",
        f">= {TEAM_RATE_SHARE_MIN:.0%}",
        worst / qps >= TEAM_RATE_SHARE_MIN,
    )
    table.add(
        "(h)",
        "whole run with a PostgreSQL --state vs N/qps (slowest)",
        f"{max(walls):.2f} s vs {n / qps:.2f} s = {max(walls) / (n / qps):.3f}x",
    )


@dataclass
class AutoRun:
    """One `--qps auto` run as the server saw it: arrival times (from the first) and codes."""

    times: list[float]
    codes: list[int | None]
    summary: dict[str, Any]
    seconds: float

    def refused_share(self, start: float = 0.0) -> float:
        codes = [c for t, c in zip(self.times, self.codes, strict=True) if t >= start]
        return sum(1 for c in codes if c == 10011) / max(1, len(codes))

    def accepted(self, start: float, end: float) -> float:
        """Requests per second the server accepted (anything but 10011) from `start` to `end`."""
        pairs = zip(self.times, self.codes, strict=True)
        return sum(1 for t, c in pairs if start <= t < end and c != 10011) / (end - start)

    def reached(self, share: float, limit: float) -> float | None:
        """Seconds until the last second first held `share` of `limit` in accepted requests."""
        accepted = [t for t, c in zip(self.times, self.codes, strict=True) if c != 10011]
        for index, at in enumerate(accepted):
            start = bisect.bisect_right(accepted, at - 1.0)
            if index + 1 - start >= share * limit:
                return at
        return None


def _auto(env: dict[str, str], table: Table, args: argparse.Namespace) -> None:
    """(f) `--qps auto` against limits it is not told, and one that halves halfway."""
    seconds = args.auto_seconds
    target = f">= {AUTO_HELD_MIN:.0%}, <= {AUTO_REFUSED_MAX:.0%}"
    runs = AUTO_TEAM_RUNS if args.team else 1
    who = f"{runs} runs sharing PostgreSQL, " if runs > 1 else ""
    for limit in (10.0, 40.0, 100.0):
        run = _auto_run(env, args, limit, seconds, runs=runs)
        held = run.accepted(AUTO_SETTLING, seconds) / limit
        refused = run.refused_share()
        reached = run.reached(AUTO_HELD_MIN, limit)
        table.add(
            "(f)",
            f"{who}--qps auto --max-qps {AUTO_MAX_QPS:g}, server limit {limit:g}/s "
            f"({seconds:g} s, {len(run.times)} requests)",
            f"held {held:.1%} of the limit after {AUTO_SETTLING:g} s; 10011: {refused:.2%} of "
            f"requests; 90% reached at {_seconds(reached)}; rate_found {run.summary['rate_found']}",
            target,
            held >= AUTO_HELD_MIN and refused <= AUTO_REFUSED_MAX,
        )
    drop = seconds / 2
    run = _auto_run(env, args, 40.0, seconds, schedule=[(drop, 20.0)], runs=runs)
    before = run.accepted(AUTO_SETTLING, drop) / 40.0
    after = run.accepted(drop + AUTO_RECOVERY, seconds) / 20.0
    refused_after = run.refused_share(drop + AUTO_RECOVERY)
    table.add(
        "(f)",
        f"{who}--qps auto, limit 40/s, 20/s from {drop:g} s on ({seconds:g} s)",
        f"held {before:.1%} before the drop, {after:.1%} from {AUTO_RECOVERY:g} s after it; "
        f"10011 from then on: {refused_after:.2%} (all: {run.refused_share():.2%}); "
        f"rate_found {run.summary['rate_found']}",
        f"<= {AUTO_REFUSED_MAX:.0%} after {AUTO_RECOVERY:g} s",
        refused_after <= AUTO_REFUSED_MAX and min(before, after) >= AUTO_HELD_MIN,
    )


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def _auto_run(
    env: dict[str, str],
    args: argparse.Namespace,
    limit: float,
    seconds: float,
    schedule: Sequence[tuple[float, float]] = (),
    runs: int = 1,
) -> AutoRun:
    """enrich --qps auto for `seconds` from the first request (then Ctrl-C) against a server
    limited to `limit` requests per trailing second, changed by `schedule`; `runs` > 1: that
    many at once, sharing a throw-away PostgreSQL `--state`, each with people of its own."""
    tag = f"auto{limit:g}" + ("-drop" if schedule else "") + (f"-team{runs}" if runs > 1 else "")
    # More people than the runs can reach: they are stopped, never run dry.
    every = write_distinct(WORK / f"{tag}.csv", int(limit * (seconds + 10) * 1.2))
    srcs = _split(every, runs) if runs > 1 else [every]
    server = Server(qps_limit=limit, latency_ms=args.latency_ms, schedule=schedule)
    with contextlib.ExitStack() as stack:
        stack.callback(server.close)
        if runs > 1:
            sys.path.insert(0, str(ROOT))
            from tests.pg import running_server

            pg = stack.enter_context(running_server())
            state: list[str] = [pg.url(pg.new_database())]
            state += ["--secret-file", str(WORK / f"{tag}.secret")]
        procs = []
        for n, src in enumerate(srcs):
            out = src.with_suffix(".enriched.csv")
            argv = enrich_argv(src, out, WORK / f"{tag}.sqlite3", server.url, 0.0)
            if runs > 1:
                at = argv.index("--state") + 1
                argv[at : at + 1] = state
            # Above every limit here, 100 included: each is found, not met as a ceiling.
            at = argv.index("--qps") + 1
            argv[at : at + 1] = ["auto", "--max-qps", str(AUTO_MAX_QPS)]
            err = stack.enter_context((WORK / f"{tag}.{n}.stderr").open("w"))
            proc = subprocess.Popen(argv, stdout=err, stderr=err, env=env, cwd=ROOT)
            procs.append((proc, err.name))
        deadline = time.monotonic() + 60
        while server.window()["requests"] == 0:
            if time.monotonic() > deadline or any(p.poll() is not None for p, _ in procs):
                raise RuntimeError(f"the {tag} run sent nothing")
            time.sleep(0.05)
        time.sleep(seconds)
        for proc, _ in procs:
            proc.send_signal(signal.SIGINT)  # stop sending: the summary is still written
        for proc, name in procs:
            if proc.wait(120) not in (0, 3):
                raise RuntimeError(f"the {tag} run failed; see {name}")
        times, codes = server.detail()
    # Kept for a closer look (what the server saw, no personal data).
    (WORK / f"{tag}.arrivals.json").write_text(json.dumps({"times": times, "codes": codes}))
    return AutoRun(times, codes, _summary(srcs[0].with_suffix(".enriched.csv")), seconds)


def _split(src: Path, parts: int) -> list[Path]:
    """`src`'s rows dealt into `parts` files (the header in each): people of their own."""
    with src.open(encoding="utf-8", newline="") as fh:
        header, *rows = list(csv.reader(fh))
    paths = []
    for n in range(parts):
        path = src.with_name(f"{src.stem}.{n}.csv")
        with path.open("w", encoding="utf-8", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(header)
            out.writerows(rows[n::parts])
        paths.append(path)
    return paths


def _planning(env: dict[str, str], table: Table, people: int) -> None:
    """(e) Peak RSS of planning (a dry run, fresh journal) at `people` and a tenth of them."""
    measured: dict[int, Child] = {}
    for count in (people // 10, people):
        made = time.perf_counter()
        src = write_distinct(WORK / f"distinct_{count}.csv", count)
        made_s = time.perf_counter() - made
        out = WORK / f"distinct_{count}.summary.json"
        argv = [sys.executable, "-m", "batch_enricher", "enrich", str(src), "--dry-run"]
        argv += ["--state", str(WORK / f"distinct_{count}.sqlite3"), "--summary-json", str(out)]
        run = run_child([*argv, "-q"], env)
        if run.returncode != 0:
            raise RuntimeError("the planning run failed")
        doc = json.loads(out.read_text(encoding="utf-8"))
        if doc.get("identities") != count:
            raise RuntimeError(f"planned {doc.get('identities')} people, not {count}")
        measured[count] = run
        table.add(
            "(e)",
            f"enrich --dry-run, {count:,} distinct people, fresh journal",
            f"{run.maxrss_mb:.0f} MB peak RSS, {run.wall:.0f} s wall, {run.cpu:.0f} s CPU "
            f"(input written in {made_s:.0f} s)",
            f"<= {PLANNING_RSS_MAX_MB} MB" if count == people else "",
            run.maxrss_mb <= PLANNING_RSS_MAX_MB if count == people else None,
        )
        src.unlink()
    small, big = measured[people // 10], measured[people]
    table.add(
        "(e)",
        f"peak RSS of planning, {people:,} / {people // 10:,} people",
        f"{big.maxrss_mb / small.maxrss_mb:.2f}x",
    )


def main(argv: Sequence[str] | None = None) -> None:
    """`python bench/run.py [options]`; the --serve/--bare/--pandas modes are its own children."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qps", type=float, default=50.0)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--people", type=int, default=500, help="distinct people for (a)/(b)")
    parser.add_argument("--concurrency", type=int, default=8, help="enrich's default")
    parser.add_argument("--repeat", type=int, default=2, help="runs of (a)/(b) each")
    parser.add_argument("--naive", type=int, default=60, help="calls of the naive client")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the big file (c)")
    parser.add_argument("--distinct", type=int, default=200, help="people in the (c) files")
    parser.add_argument(
        "--planning",
        action="store_true",
        help="run only (e): planning memory at --planning-people distinct people (minutes)",
    )
    parser.add_argument("--planning-people", type=int, default=5_000_000)
    parser.add_argument(
        "--team",
        action="store_true",
        help="(h) only: one run with a PostgreSQL --state (starts a throw-away server)",
    )
    parser.add_argument(
        "--auto",
        action="store_true",
        help="run only (f): --qps auto against unknown limits (about 4 minutes); "
        "with --team, two runs sharing a PostgreSQL --state",
    )
    parser.add_argument("--auto-seconds", type=float, default=60.0, help="length of each (f) run")
    parser.add_argument(
        "--xlsx",
        action="store_true",
        help="run only (e) and (g): bench/xlsx.py --targets, 100,000 and 300,000-row .xlsx "
        "(about 25 minutes the first time, which fills the journals)",
    )
    parser.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--bare", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--pandas", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        _serve(float(args.serve[0]), float(args.serve[1]), args.serve[2:])
    elif args.bare:
        url, src, qps, concurrency = args.bare
        _bare_loop(url, Path(src), float(qps), int(concurrency))
    elif args.pandas:
        _pandas_round_trip(Path(args.pandas[0]), Path(args.pandas[1]))
    elif args.xlsx:  # its own script: it keeps its workbooks and journals in bench/_work
        xlsx = Path(__file__).with_name("xlsx.py")
        argv = [sys.executable, str(xlsx), "--targets", "--rows", "100000", "--repeat", "3"]
        raise SystemExit(subprocess.run(argv, check=False).returncode)
    else:
        bench(args)


if __name__ == "__main__":
    main()

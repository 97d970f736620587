"""`--qps auto` with a team journal, end to end: two `enrich` processes, one PostgreSQL journal,
one account whose limit the sandbox keeps and nobody told them (store/team_auto.py).

Billing and rates are judged by what the server saw: `billed_by_identity`, the arrival log and
the code each arrival was answered with.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable
from pathlib import Path

from batch_enricher.sandbox import SandboxStats
from tests.conftest import Served, person, read_csv, write_csv
from tests.team import Member, enrich_argv

LIMIT = 20


def _files(tmp_path: Path, distinct: int) -> list[Path]:
    """Two files over `distinct` people, overlapping by a third, the second in another order."""
    third = distinct // 3
    spans = [list(range(0, 2 * third)), list(range(third, distinct))]
    random.Random(5).shuffle(spans[1])
    return [
        write_csv(tmp_path / f"in{n}.csv", [list(person(i)) for i in span])
        for n, span in enumerate(spans)
    ]


def _members(
    tmp_path: Path, files: list[Path], pg_url: str, url: str, *extra: list[str]
) -> list[Member]:
    secret = tmp_path / "team.secret"
    members = []
    for n, (src, more) in enumerate(zip(files, extra, strict=True)):
        argv = enrich_argv(src, src.with_suffix(".out.csv"), pg_url, secret, url)
        argv[argv.index("--qps") + 1] = "auto"
        members.append(Member(tmp_path / f"host{n}", [*argv, "--concurrency", "4", *more]))
    return members


def _run_together(members: list[Member]) -> None:
    for member in members:
        member.start()
    for member in members:
        assert member.wait() in (0, 3), member.stderr
        assert "Traceback" not in member.stderr


def _refused(stats: SandboxStats) -> list[float]:
    return [at for at, code in zip(stats.arrivals, stats.answered, strict=True) if code == 10011]


def _held(stats: SandboxStats, start: float, end: float) -> float:
    """Requests per second that arrived between `start` and `end`."""
    arrivals = stats.arrivals
    count = bisect.bisect_left(arrivals, end) - bisect.bisect_left(arrivals, start)
    return count / (end - start)


def test_two_auto_runs_settle_the_account_just_under_its_limit(
    sandbox: Callable[..., Served], pg_url: str, tmp_path: Path
) -> None:
    server = sandbox(qps_limit=LIMIT, latency_ms=20)
    files = _files(tmp_path, 210)
    members = _members(tmp_path, files, pg_url, server.url, [], [])

    _run_together(members)

    stats = server.stats
    assert max(stats.billed_by_identity.values()) == 1  # nobody paid twice
    for src in files:
        assert {row["status"] for row in read_csv(src.with_suffix(".out.csv"))} <= {
            "ok",
            "rejected",
        }
    refused = _refused(stats)
    # Discovery overshoots once (slow start: ... 16, 32/s, refused at 21 in a second), and
    # each probe above the ceiling costs about one round trip of 10011s; from the end of the
    # first wave on, the account stays under the limit the server keeps.
    assert refused, "the limit was never reached: nothing was found"
    settled = refused[0] + 2.0
    after = [at for at in refused if at >= settled]
    sent_after = len(stats.arrivals) - bisect.bisect_left(stats.arrivals, settled)
    shares = (len(refused), len(stats.arrivals), len(after), sent_after)
    assert len(refused) <= 0.08 * len(stats.arrivals), shares
    assert len(after) <= max(6, 0.03 * sent_after), shares
    # Held after discovery: the account as a whole, both runs together.
    end = stats.arrivals[-1]
    assert end - settled >= 3.0, shares
    held = _held(stats, settled, end - 0.5)
    assert held >= 0.7 * LIMIT, (held, shares)
    for member in members:
        found = member.summary()["rate_found"]
        assert found is not None and 0.8 * LIMIT <= found <= LIMIT, found
        assert member.summary()["rate_limited"] >= 0


def test_the_account_never_goes_above_the_lowest_max_qps_nor_a_fixed_qps(
    sandbox: Callable[..., Served], pg_url: str, tmp_path: Path
) -> None:
    server = sandbox(qps_limit=LIMIT)
    files = _files(tmp_path, 105)
    # One auto run may go up to 100/s, the other only to 12/s: the account stays at 12/s.
    members = _members(tmp_path, files, pg_url, server.url, [], ["--max-qps", "12"])

    _run_together(members)

    stats = server.stats
    assert max(stats.billed_by_identity.values()) == 1
    assert stats.max_per_second() <= 12, stats.max_per_second()
    assert not _refused(stats)  # 12 < 20: the limit was never reached
    assert stats.max_per_second() >= 9  # but the account got there
    for member in members:
        assert member.summary()["rate_found"] is not None


def test_an_auto_run_beside_a_fixed_qps_stays_under_it(
    sandbox: Callable[..., Served], pg_url: str, tmp_path: Path
) -> None:
    server = sandbox(qps_limit=LIMIT)
    files = _files(tmp_path, 75)
    members = _members(tmp_path, files, pg_url, server.url, [], [])
    fixed = members[1].argv
    fixed[fixed.index("--qps") + 1] = "10"

    _run_together(members)

    stats = server.stats
    assert max(stats.billed_by_identity.values()) == 1
    assert stats.max_per_second() <= 10, stats.max_per_second()
    assert not _refused(stats)
    assert stats.max_per_second() >= 7
    assert members[0].summary()["rate_found"] is not None
    assert members[1].summary()["rate_found"] is None  # it was given its rate

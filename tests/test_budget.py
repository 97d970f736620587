"""Budget (--max-billed) against the rate cap and the counts, end to end."""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from batch_enricher.runner import EnrichOptions, enrich
from tests.conftest import Served, person, write_csv

REJECTED = {"reason": "查询失败", "result": None, "error_code": 281505}


def _max_in_any_window(times: list[float], window: float = 1.0) -> int:
    ordered = sorted(times)
    return max(bisect.bisect_left(ordered, t + window) - i for i, t in enumerate(ordered))


def test_calls_held_back_by_the_budget_never_burst_past_qps(
    tmp_path: Path, serve_app: Callable[..., Served]
) -> None:
    # Everyone is rejected (never billed), so the budget is never spent, but while the first
    # calls are slow the budget makes the others wait. When those slow replies come back the
    # waiting calls must still go out at the paced rate, not all at once on top of new slots.
    arrivals: list[float] = []

    async def handler(request: web.Request) -> web.Response:
        arrivals.append(time.monotonic())
        await request.post()
        await asyncio.sleep(1.0 if len(arrivals) <= 2 else 0.01)
        return web.json_response(REJECTED)

    app = web.Application()
    app.router.add_post("/financeInfo/query", handler)
    server = serve_app(app)
    src = write_csv(tmp_path / "in.csv", [list(person(i)) for i in range(40)])
    options = EnrichOptions(
        inputs=[src],
        output=tmp_path / "o.csv",
        key="k",
        endpoint=server.url,
        qps=10,
        concurrency=8,
        max_billed=2,
        state=tmp_path / "j.sqlite3",
        handle_signals=False,
    )

    summary = enrich(options)

    assert summary.api_calls == len(arrivals) == 40
    assert _max_in_any_window(arrivals) <= 10, "more than --qps requests in one second"

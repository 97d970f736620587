"""Prototypes behind the proposals in bench/RESULTS.md, for the owners of runner.py and pacer.py.

Not product code: each one measures how much a proposed change would save, using only the
project's public pieces.

    python bench/prototypes.py pacer
        grants 250 slots at 50/s with 8 workers, from the current Pacer and from a grid variant
        (each slot measured from the previous *scheduled* slot, not the actual grant).
    python bench/prototypes.py passes INPUT.csv OUTPUT.csv JOURNAL
        the plan and write passes of `enrich` over a CSV whose people are all in JOURNAL
        (run `python bench/run.py` first: bench/_work/rows_big.csv and bench/_work/scale.sqlite3),
        with one set of result cells per person (Writer.tail) instead of per row.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections import Counter
from pathlib import Path

from batch_enricher import bands
from batch_enricher.columns import RESULT_COLUMNS, find_columns
from batch_enricher.journal import Journal
from batch_enricher.models import Answer, Person, Status
from batch_enricher.pacer import SPACING_MARGIN, Pacer
from batch_enricher.reader import Cell, open_source
from batch_enricher.validate import check
from batch_enricher.writer import open_writer

# --- pacer ------------------------------------------------------------------------------------


class GridPacer(Pacer):
    """Slots on a grid: lateness of one wake-up is not carried into every later slot."""

    _slot: float | None = None

    def _next_slot(self) -> float:
        if self._last_grant is None or self._slot is None:
            return -math.inf
        spacing = SPACING_MARGIN / self._rate
        # On the grid, but never closer than half a spacing to the previous actual grant.
        ready = max(self._slot + spacing, self._last_grant + spacing / 2)
        if len(self._grants) == self._grants.maxlen:
            ready = max(ready, self._grants[0] + self._window)  # the 1 s window cap, unchanged
        return ready

    async def acquire(self) -> None:
        """As Pacer.acquire, but remember the slot's scheduled time, not only the grant's."""
        async with self._lock:
            while True:
                now = self._clock()
                self._recover(now)
                ready = self._next_slot()
                if now >= ready:
                    break
                await self._sleep(ready - now)
            spacing = SPACING_MARGIN / self._rate
            # A wake-up late by less than one spacing is absorbed; after a longer stall (or at
            # the start) the grid restarts from now, so there is never a catch-up burst.
            self._slot = ready if math.isfinite(ready) and now - ready < spacing else now
            self._last_grant = now
            self._grants.append(now)


async def _pace(pacer: Pacer, slots: int, workers: int, latency: float) -> list[float]:
    grants: list[float] = []
    todo = iter(range(slots))

    async def worker() -> None:
        for _ in todo:
            await pacer.acquire()
            grants.append(time.monotonic())
            await asyncio.sleep(latency)  # the request

    await asyncio.gather(*(worker() for _ in range(workers)))
    return grants


def pacer_prototype(rate: float = 50.0, slots: int = 250) -> None:
    """Print the achieved rate and the busiest second of both pacers."""
    for cls in (Pacer, GridPacer):
        grants = asyncio.run(_pace(cls(rate), slots, workers=8, latency=0.05))
        achieved = (len(grants) - 1) / (grants[-1] - grants[0])
        busiest, start = 0, 0
        for index, at in enumerate(grants):
            while grants[start] <= at - 1.0:
                start += 1
            busiest = max(busiest, index + 1 - start)
        print(
            f"{cls.__name__:10} {achieved:6.2f}/s = {achieved / rate:.1%} of {rate:g}; "
            f"busiest 1 s: {busiest}"
        )


# --- the two passes ---------------------------------------------------------------------------


def _result_cells(answer: Answer) -> list[Cell]:
    cells: list[Cell] = [answer.status.value] + [None] * 10
    cells[10] = answer.queried_at
    if answer.status is Status.OK:
        cells[3] = answer.orderid
        raws = (answer.range, answer.history, answer.stability)
        for i, (model, raw) in enumerate(zip(bands.MODELS, raws, strict=True)):
            cells[4 + 2 * i] = int(raw) if raw.isdecimal() and raw.isascii() else raw
            cells[5 + 2 * i] = bands.band(model, raw)
    else:
        cells[1], cells[2] = answer.error_code, answer.reason
    return cells


def passes_prototype(src: Path, out: Path, state: Path) -> None:
    """Both passes with per-person memos; every person must already be in the journal."""
    started = time.perf_counter()
    source = open_source(src)
    columns = find_columns(source.headers)
    width = len(source.headers)
    name, idcard, mobile = columns.realname, columns.idcard, columns.mobile
    with Journal.open(state) as journal:
        keys: dict[Person, bytes] = {}
        seen: set[bytes] = set()
        rows = 0
        for row in source.rows():  # plan: distinct people only
            rows += 1
            person = check(row[name], row[idcard], row[mobile]) if len(row) == width else None
            if type(person) is Person:
                key = keys.get(person)
                if key is None:
                    key = keys[person] = journal.key(person)
                seen.add(key)
        answers = journal.get_many(seen)
        planned = time.perf_counter()
        headers = [*source.headers, *RESULT_COLUMNS["en"]]
        rows_of: Counter[bytes] = Counter()  # statuses and bands follow from this at the end
        with open_writer(out, headers, text_columns={idcard, mobile}, status_column=width) as w:
            tails = {key: w.tail(_result_cells(answer)) for key, answer in answers.items()}
            invalid = w.tail(["invalid", *[None] * 10])
            for row in source.rows():
                person = check(row[name], row[idcard], row[mobile]) if len(row) == width else None
                if type(person) is Person:
                    key = keys[person]
                    rows_of[key] += 1
                    w.write_row(row, tails[key])
                else:
                    w.write_row(row, invalid)
            w.commit()
    done = time.perf_counter()
    print(
        f"{rows:,} rows, {len(seen)} people: plan {planned - started:.2f} s, "
        f"write {done - planned:.2f} s, total {done - started:.2f} s (imports excluded)"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["pacer"]:
        pacer_prototype()
    elif sys.argv[1:2] == ["passes"] and len(sys.argv) == 5:
        passes_prototype(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        sys.exit(__doc__)

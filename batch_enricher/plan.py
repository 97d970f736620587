"""Planning: read every row, validate it, dedupe people across all inputs, ask the journal.

What remains is the people to call. They, the set of people seen and each person's row count go
to the run's `Spill` (a scratch SQLite store) in batches; memory holds only a bounded cache of
recently seen people, so it does not grow with the number of distinct people. Repeated rows of
a cached person cost one dict look-up, as before.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from batch_enricher.columns import ColumnMap
from batch_enricher.interrupts import Interrupts
from batch_enricher.models import Person, Status
from batch_enricher.plausible import NameProfile
from batch_enricher.progress import Progress
from batch_enricher.reader import Source
from batch_enricher.rowcheck import RowCheck
from batch_enricher.spill import Spill
from batch_enricher.store.base import Journal
from batch_enricher.summary import FileSummary, RunSummary

LOOKUP_BATCH: Final = 500  # keys per journal (and spill) look-up while planning and writing
MEMO_SIZE: Final = 1 << 14  # people's results kept in memory at most in the write pass
#: People whose planning state is cached in memory at most; the rest is in the spill only.
_CACHE_SIZE: Final = 1 << 14
_NOTE_EVERY: Final = 50_000  # rows between "planning: N rows read" notes


@dataclass
class Input:
    """One opened input file, where its rows go, and how its rows are judged."""

    source: Source
    columns: ColumnMap
    output: Path
    # indexes of the header's columns that are an earlier run's result block (replaced)
    old_results: list[int]
    summary: FileSummary
    names: NameProfile | None = None  # what the file's names are written in
    _check: RowCheck | None = None

    @property
    def check(self) -> RowCheck:
        """The row verdicts of this input (set by `bind` once the journal is open)."""
        assert self._check is not None, "Input.bind(journal) first"
        return self._check

    def bind(self, journal: Journal) -> None:
        """Judge rows with `journal`'s keys from now on."""
        self._check = RowCheck(self.source, self.columns, self.names, journal.key)


@dataclass
class Plan:
    """What the planning pass found; the people to call themselves are in the spill."""

    calls: int = 0  # people to call
    resolved_rows: int = 0  # rows already final after planning (invalid, reused)
    blank: int = 0  # blank rows: kept in place, nobody to ask
    already: Counter[Status] = field(default_factory=Counter)  # those rows, by status
    total_rows: int = 0


def make_plan(
    inputs: list[Input],
    journal: Journal,
    spill: Spill,
    cutoff: float | None,
    summary: RunSummary,
    progress: Progress,
    interrupts: Interrupts,
) -> Plan:
    """Read every row once; fill `spill` with the run's people and `summary` with the counts."""
    planner = _Planner(journal, spill, cutoff, summary)
    return planner.run(inputs, progress, interrupts)


class _Planner:
    """The state of one planning pass.

    A person is *new* from their first row until the next batch look-up (`_flush`), then
    *cached* (`extra`, `status`) until the cache is full and goes to the spill (`_evict`).
    Counts are kept per person, not per row: `extra[key]` is the rows seen since the person
    was cached, added to the spill (people to call) or to the reused counts when evicted.
    """

    def __init__(
        self,
        journal: Journal,
        spill: Spill,
        cutoff: float | None,
        summary: RunSummary,
    ) -> None:
        self.journal, self.spill = journal, spill
        self.cutoff, self.summary = cutoff, summary
        self.plan = Plan()
        self.identities = 0
        self.new: dict[bytes, Person] = {}  # first seen since the last look-up, in row order
        self.new_rows: dict[bytes, int] = {}  # their rows so far
        self.extra: dict[bytes, int] = {}  # cached people → rows not yet counted
        self.status: dict[bytes, Status | None] = {}  # cached people → reused status, or None
        self.evicted = False  # whether the spill holds people the cache does not

    def run(self, inputs: list[Input], progress: Progress, interrupts: Interrupts) -> Plan:
        new, new_rows, extra = self.new, self.new_rows, self.extra
        total = invalid = valid = blank = 0
        for item in inputs:
            columns, resolve = item.columns, item.check
            memo, top = resolve.memo, resolve.top
            n_at, i_at, m_at = columns.realname, columns.idcard, columns.mobile
            for number, row in item.source.numbered_rows():
                if interrupts.requested:
                    break  # nothing is sent after a signal; the write pass still covers every row
                hit = memo.get((row[n_at], row[i_at], row[m_at])) if len(row) > top else None
                result, key = hit if hit is not None else resolve(number, row)
                if result is None:
                    blank += 1
                    continue
                total += 1
                if total % _NOTE_EVERY == 0:
                    progress.note(f"planning: {total:,} rows read")
                if key is None:
                    invalid += 1
                    continue
                valid += 1
                count = extra.get(key)
                if count is not None:
                    extra[key] = count + 1
                    continue
                count = new_rows.get(key)
                if count is not None:
                    new_rows[key] = count + 1
                    continue
                assert isinstance(result, Person)
                new[key] = result
                new_rows[key] = 1
                if len(new) >= LOOKUP_BATCH:
                    self._flush()
        self._flush()
        self._evict()
        plan, summary = self.plan, self.summary
        plan.total_rows, plan.blank = total, blank
        if invalid:
            plan.resolved_rows += invalid
            plan.already[Status.INVALID] += invalid
        summary.identities = self.identities
        summary.duplicates += valid - self.identities  # every valid row after a person's first
        summary.to_call = plan.calls
        return plan

    def _flush(self) -> None:
        """Settle the new people: seen before (evicted), answered by the journal, or to call."""
        if not self.new:
            return
        keys = list(self.new)
        stored = self.spill.known(keys) if self.evicted else {}
        fresh = [key for key in keys if key not in stored]
        found = self.journal.get_many(fresh, newer_than=self.cutoff) if fresh else {}
        if len(self.extra) + len(keys) > _CACHE_SIZE:
            self._evict()
        plan, summary, extra, status = self.plan, self.summary, self.extra, self.status
        added: list[tuple[bytes, Status | None, Person | None, int]] = []
        for key in keys:
            count = self.new_rows[key]
            if key in stored:  # seen before the cache last emptied: count its rows later
                status[key], extra[key] = stored[key], count
                continue
            extra[key] = 0
            answer = found.get(key)
            if answer is None:
                status[key] = None
                added.append((key, None, self.new[key], count))
                plan.calls += 1
            else:
                status[key] = answer.status
                added.append((key, answer.status, None, 0))
                summary.reused += 1
                plan.resolved_rows += count
                plan.already[answer.status] += count
        self.identities += len(added)
        self.spill.add(added)
        self.new.clear()
        self.new_rows.clear()

    def _evict(self) -> None:
        """Count the cached people's extra rows (into the spill, or as reused) and forget them."""
        plan, status = self.plan, self.status
        to_call: list[tuple[int, bytes]] = []
        for key, count in self.extra.items():
            if not count:
                continue
            reused = status[key]
            if reused is None:
                to_call.append((count, key))
            else:
                plan.resolved_rows += count
                plan.already[reused] += count
        self.spill.add_rows(to_call)
        self.extra.clear()
        status.clear()
        self.evicted = True

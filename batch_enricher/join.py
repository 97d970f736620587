"""The write pass: a second read of each input joins every row with its person's result.

Results come from the journal (this run's answers by key, earlier ones by the planning cutoff)
and from the spill (who failed in this run); every row goes out with its 11 result columns,
written atomically.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Generic, TypeVar

from batch_enricher import bands as bands_mod
from batch_enricher.columns import RESULT_COLUMNS
from batch_enricher.interrupts import Interrupts
from batch_enricher.models import Answer, Invalid, Outcome, Status
from batch_enricher.plan import LOOKUP_BATCH, MEMO_SIZE, Input
from batch_enricher.reader import Cell
from batch_enricher.spill import Spill
from batch_enricher.store.base import Journal
from batch_enricher.summary import FileSummary
from batch_enricher.writer import SummarySheet, open_writer

if TYPE_CHECKING:
    from batch_enricher.runner import EnrichOptions


@dataclass
class Join:
    """What the second pass knows for joining rows with their answers."""

    journal: Journal
    cutoff: float | None  # for answers from earlier runs: planning's --max-age cutoff
    spill: Spill  # whom this run answered (their answer, whatever the clock says), who failed
    skip_reason: str
    tables: dict[str, bands_mod.Table]


def _result_cells(
    status: Status,
    answer: Answer | None,
    invalid: Invalid | None,
    outcome: Outcome | None,
    skip_reason: str,
    tables: dict[str, bands_mod.Table],
) -> list[Cell]:
    """The 11 appended cells, in `RESULT_COLUMNS` order."""
    cells: list[Cell] = [status.value] + [None] * 10
    if answer is not None:
        cells[10] = answer.queried_at
        if answer.status is Status.OK:
            cells[3] = answer.orderid
            raws = (answer.range, answer.history, answer.stability)
            for i, (model, raw) in enumerate(zip(bands_mod.MODELS, raws, strict=True)):
                cells[4 + 2 * i] = _number(raw)
                cells[5 + 2 * i] = bands_mod.band(model, raw, tables)
        else:
            cells[1], cells[2] = answer.error_code, answer.reason
    elif invalid is not None:
        cells[1], cells[2] = invalid.error_code, invalid.reason
    elif outcome is not None:
        cells[1], cells[2] = outcome.error_code, outcome.reason
    else:
        cells[2] = skip_reason
    return cells


def _number(raw: str) -> Cell:
    return int(raw) if raw.isdecimal() and raw.isascii() else raw


_Tail = TypeVar("_Tail")
_Item = TypeVar("_Item")
_NO_BANDS: tuple[str, ...] = ()


class _Result(Generic[_Tail]):
    """One person's result in the write pass, and how many rows it has been written to."""

    __slots__ = ("bands", "rows", "status", "tail")

    def __init__(self, status: Status, tail: _Tail, bands: tuple[str, ...]) -> None:
        self.status, self.tail, self.bands, self.rows = status, tail, bands, 0


def joined(
    item: Input, join: Join, make_tail: Callable[[list[Cell]], _Tail]
) -> Iterator[tuple[int, list[Cell], _Tail]]:
    """Each row of `item` as (row number, its cells, its result), counted into its FileSummary.

    The cells are the row as read (a `list`, to be padded or cut by the writer); blank rows come
    with `make_tail` of empty result cells. A person's result is the same on every row, so it is
    worked out and prepared for the writer (`make_tail`) once per person, not once per row, and
    rows are counted per person and added up at the end: on a big file with few people the
    per-row work is the cost.
    """
    source, columns, resolve = item.source, item.columns, item.check
    fs = item.summary
    memo, top = resolve.memo, resolve.top
    n_at, i_at, m_at = columns.realname, columns.idcard, columns.mobile
    per_person: dict[bytes, _Result[_Tail]] = {}
    blank_tail = make_tail([None] * len(RESULT_COLUMNS["en"]))
    try:
        for chunk in _chunks(source.numbered_rows(), LOOKUP_BATCH):
            checked = [
                (memo.get((row[n_at], row[i_at], row[m_at])) if len(row) > top else None)
                or resolve(number, row)
                for number, row in chunk
            ]
            if len(per_person) > MEMO_SIZE:
                _count(per_person.values(), fs)
                per_person.clear()
            missing = {k for _, k in checked if k is not None and k not in per_person}
            answers, outcomes = _answers(join, missing) if missing else ({}, {})
            for (number, row), (verdict, key) in zip(chunk, checked, strict=True):
                if key is not None:
                    result = per_person.get(key)
                    if result is None:
                        result = per_person[key] = _person_result(
                            answers.get(key), outcomes.get(key), join, make_tail
                        )
                    result.rows += 1
                    yield number, row, result.tail
                elif verdict is None:
                    fs.blank += 1
                    yield number, row, blank_tail
                else:
                    assert isinstance(verdict, Invalid)
                    cells = _result_cells(Status.INVALID, None, verdict, None, "", join.tables)
                    fs.statuses[Status.INVALID] += 1
                    fs.rows += 1
                    yield number, row, make_tail(cells)
    finally:
        _count(per_person.values(), fs)


def _answers(join: Join, keys: set[bytes]) -> tuple[dict[bytes, Answer], dict[bytes, Outcome]]:
    """Journal answers for `keys` (this run's own whatever their time, earlier ones by the
    cutoff), and this run's outcomes for those it failed.

    The cutoff alone would hide an answer paid for in this run whenever its `queried_at` (to
    the second, from the wall clock) falls before the cutoff: in the run's first second with
    --max-age 0, or after the clock was stepped back. Its row would come out `skipped` and the
    rerun would pay for it again.
    """
    fresh, outcomes = join.spill.this_run(keys)
    found = join.journal.get_many(keys - fresh, newer_than=join.cutoff) if keys - fresh else {}
    if fresh:
        found.update(join.journal.get_many(fresh))
    return found, outcomes


def _count(results: Iterable[_Result[_Tail]], fs: FileSummary) -> None:
    """Add people's rows to the file's status and band counts."""
    for result in results:
        fs.rows += result.rows
        fs.statuses[result.status] += result.rows
        for model, band in zip(bands_mod.MODELS, result.bands, strict=False):
            fs.bands.setdefault(model, Counter())[band] += result.rows
        result.rows = 0


def _person_result(
    answer: Answer | None,
    outcome: Outcome | None,
    join: Join,
    make_tail: Callable[[list[Cell]], _Tail],
) -> _Result[_Tail]:
    if answer is not None:
        status, outcome = answer.status, None
    else:
        status = outcome.status if outcome is not None else Status.SKIPPED
    cells = _result_cells(status, answer, None, outcome, join.skip_reason, join.tables)
    bands = tuple(str(cells[pos]) for pos in (5, 7, 9)) if status is Status.OK else _NO_BANDS
    return _Result(status, make_tail(cells), bands)


def write(
    item: Input,
    join: Join,
    options: EnrichOptions,
    make_sheet: Callable[[FileSummary], SummarySheet],
    interrupts: Interrupts,
) -> None:
    """The second pass over one input: every row, its result, written atomically.

    An .xlsx/.xlsm input written to .xlsx/.xlsm comes back as the same workbook with the result
    block patched into its sheet (`xlsx_patch`); anything else is written row by row, each row
    padded to the file's widest row so the result block starts in one column for all of them.
    """
    if _patchable(item):
        _write_patched(item, join, options, make_sheet, interrupts)
        return
    source, columns = item.source, item.columns
    old = set(item.old_results)
    keep = [i for i in range(source.width) if i not in old]
    headers = [source.headers[i] if i < len(source.headers) else "" for i in keep]
    out_index = {orig: pos for pos, orig in enumerate(keep)}
    text_columns = {out_index[i] for i in (columns.idcard, columns.mobile) if i in out_index}
    width = len(keep)
    whole = keep == list(range(source.width))  # no earlier result columns to drop
    with (
        open_writer(
            item.output,
            [*headers, *RESULT_COLUMNS[options.headers]],
            text_columns=text_columns,
            status_column=width,
            escape_formulas=options.escape_formulas,
            sheet_title=source.sheet or "Sheet1",
            preamble=source.preamble(),
            number_formats=_xls_formats(item, keep),
        ) as writer,
        interrupts.cleanup(writer.abort),
    ):
        write_row = writer.write_row
        for _, row, tail in joined(item, join, writer.tail):
            if whole:
                if len(row) < width:
                    row.extend([None] * (width - len(row)))
                write_row(row, tail)
            else:
                write_row([row[i] if i < len(row) else None for i in keep], tail)
        writer.commit(make_sheet(item.summary))


_PATCHED_SUFFIXES: Final = (".xlsx", ".xlsm")


def _xls_formats(item: Input, keep: list[int]) -> Iterator[list[str | None]] | None:
    """An .xls input's number formats for an .xlsx output, in the output's columns."""
    source = item.source
    if source.format != "xls" or source.sheet is None or item.output.suffix.lower() != ".xlsx":
        return None
    from batch_enricher.sheets import xls_number_formats

    formats = xls_number_formats(source.path, source.sheet)
    if formats is None:
        return None
    return ([row[i] if i < len(row) else None for i in keep] for row in formats)


def _patchable(item: Input) -> bool:
    """Whether the output can be the input workbook itself with the results added."""
    source = item.source
    return (
        source.format == "xlsx"
        and not source.strict_ooxml
        and source.path.suffix.lower() in _PATCHED_SUFFIXES
        and item.output.suffix.lower() in _PATCHED_SUFFIXES
    )


def check_outputs(items: Iterable[Input], options: EnrichOptions) -> None:
    """Refuse now, before anything is paid for, an .xlsx output that could not be written.

    A workbook calamine reads may still be one the patch cannot make (a damaged part that
    calamine never opens): `xlsx_patch.check_workbook` makes the patch with no results.
    """
    from batch_enricher.xlsx_patch import check_workbook

    for item in items:
        if _patchable(item):
            sheet, header_row, first_col = _patch_place(item)
            check_workbook(
                item.source.path,
                sheet=sheet,
                header_row=header_row,
                first_col=first_col,
                headers=RESULT_COLUMNS[options.headers],
                spool_dir=item.output.parent,
                macro_enabled=item.output.suffix.lower() == ".xlsm",
            )


def _patch_place(item: Input) -> tuple[str, int, int]:
    """(sheet, header row, first result column) of the result block patched into a workbook.

    An earlier run's block is replaced where it is; else the block goes after the widest row.
    """
    source = item.source
    assert source.sheet is not None
    first_col = min(item.old_results) + 1 if item.old_results else source.width + 1
    return source.sheet, source.header_row, first_col


def _write_patched(
    item: Input,
    join: Join,
    options: EnrichOptions,
    make_sheet: Callable[[FileSummary], SummarySheet],
    interrupts: Interrupts,
) -> None:
    from batch_enricher.xlsx_patch import open_patch_writer

    sheet, header_row, first_col = _patch_place(item)
    with (
        open_patch_writer(
            item.output,
            item.source.path,
            sheet=sheet,
            header_row=header_row,
            first_col=first_col,
            headers=RESULT_COLUMNS[options.headers],
            status_column=0,
        ) as writer,
        interrupts.cleanup(writer.abort),
    ):
        write_result = writer.write_result
        for number, _, tail in joined(item, join, writer.tail):
            write_result(number, tail)
        writer.commit(make_sheet(item.summary))


def count_only(item: Input, join: Join) -> None:
    """The dry run's pass: count each row's status into the file's summary, write nothing."""
    for _ in joined(item, join, _no_tail):
        pass


def _no_tail(cells: list[Cell]) -> None:
    """The dry run's stand-in for `Writer.tail`: nothing is written."""


def _chunks(rows: Iterable[_Item], size: int) -> Iterator[list[_Item]]:
    """Lists of up to `size` items (islice does the batching in C)."""
    it = iter(rows)
    while chunk := list(itertools.islice(it, size)):
        yield chunk

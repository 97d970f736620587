"""The enrich job: plan every row, call the API once per new person, write every row's result.

Three phases, each streaming over the inputs:

1. plan: read every row, validate it, dedupe people across all inputs and look them up in the
   journal; what remains is the list of calls to make (the only thing held in memory besides
   one key per distinct person).
2. dispatch: `concurrency` workers take people from that list, pace and guard each request, and
   commit each final answer to the journal the moment it arrives.
3. write: a second pass over each input joins every row with its answer from the journal and
   writes the output atomically.

A crash at any point loses at most the calls in flight: everything answered is in the journal,
and rerunning the same command continues from there.
"""

from __future__ import annotations

import asyncio
import glob
import itertools
import logging
import ssl
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Final, Generic, TypeVar

import aiohttp

from batch_enricher import bands as bands_mod
from batch_enricher.client import (
    DEFAULT_ENDPOINT,
    USER_AGENT,
    Caller,
    CallStats,
    JuheClient,
    RetryPolicy,
    send_tracing,
)
from batch_enricher.codes import reason_of
from batch_enricher.columns import RESULT_COLUMNS, ColumnMap, existing_result_columns, find_columns
from batch_enricher.errors import (
    AccountError,
    ConfigError,
    InputError,
    JournalError,
    OutputError,
    TransientApiError,
)
from batch_enricher.guards import NotSent, RunControl
from batch_enricher.interrupts import Interrupts
from batch_enricher.journal import Journal
from batch_enricher.models import Answer, Invalid, Outcome, Person, Status
from batch_enricher.pacer import Pacer
from batch_enricher.progress import NullProgress, Progress
from batch_enricher.reader import Cell, Source, open_source
from batch_enricher.summary import FileSummary, RunSummary
from batch_enricher.validate import check_row
from batch_enricher.writer import SummarySheet, open_writer, sweep_temporary_files

log = logging.getLogger("batch_enricher")

_LOOKUP_BATCH: Final = 500  # keys per journal look-up while planning and writing
_PLANNING_STOPPED: Final = (
    "batch-enricher: planning was interrupted: nothing was sent, nothing billed; the output "
    "marks the rows not yet asked for as skipped; rerun the same command to continue"
)
_MEMO_SIZE: Final = 1 << 16  # rows' verdicts and people's results kept in memory at most


@dataclass
class EnrichOptions:
    """Everything one enrich run needs; the CLI fills it from flags, env and config."""

    inputs: Sequence[Path]
    output: Path | None = None  # only with a single input
    output_dir: Path | None = None
    key: str | None = None
    endpoint: str = DEFAULT_ENDPOINT
    qps: float = 10.0
    concurrency: int = 8
    timeout: float = 15.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    state: Path | None = None  # the journal; None: the default under the user's state folder
    max_age: float | None = 30 * 86400.0  # seconds; 0: ask again; None: reuse whatever is there
    max_billed: int | None = None
    sandbox: bool = False
    dry_run: bool = False
    headers: str = "en"
    escape_formulas: bool = True
    insecure: bool = False
    name_col: str | None = None
    idcard_col: str | None = None
    mobile_col: str | None = None
    sheet: str | int | None = None
    encoding: str | None = None
    lock_timeout: float = 5.0
    new_journal: bool = False  # set the journal and its secret aside, start an empty pair
    band_tables: dict[str, bands_mod.Table] = field(
        default_factory=lambda: dict(bands_mod.DEFAULT_TABLES)
    )
    handle_signals: bool = True


@dataclass
class _Input:
    source: Source
    columns: ColumnMap
    output: Path
    # indexes of the input columns that go to the output (earlier result columns dropped)
    keep: list[int]
    summary: FileSummary


@dataclass
class _Plan:
    """What the planning pass found: people to call, and how many rows each stands for."""

    to_call: list[tuple[bytes, Person]] = field(default_factory=list)
    rows_of: dict[bytes, int] = field(default_factory=dict)  # key → rows, for people to call
    resolved_rows: int = 0  # rows already final after planning (invalid, reused)
    already: Counter[Status] = field(default_factory=Counter)  # those rows, by status
    total_rows: int = 0


def default_output(path: Path, output_dir: Path | None) -> Path:
    """`<stem>.enriched.<ext>` beside the input (or in `output_dir`); `.xls` becomes `.xlsx`.

    >>> default_output(Path("in/customers.csv"), None)
    PosixPath('in/customers.enriched.csv')
    """
    suffix = path.suffix.lower()
    ext = {".xls": ".xlsx", ".xlsm": ".xlsx", ".txt": ".csv"}.get(suffix, suffix)
    folder = output_dir if output_dir is not None else path.parent
    return folder / f"{path.stem}.enriched{ext}"


def resolve_outputs(options: EnrichOptions) -> list[Path]:
    """One output path per input, checked before anything is sent: each can be written, and
    none overwrites an input, another output or the journal."""
    if options.output is not None and len(options.inputs) > 1:
        raise ConfigError("-o/--output takes a single input; with several, use --output-dir")
    if options.output is not None:
        outputs = [options.output]
    else:
        outputs = [default_output(p, options.output_dir) for p in options.inputs]
    inputs = {p.resolve() for p in options.inputs}
    seen: set[Path] = set()
    for out in outputs:
        resolved = out.resolve()
        if resolved in inputs:
            raise OutputError(f"the output {out} is an input file; choose another -o")
        if resolved in seen:
            raise OutputError(
                f"two inputs would both be written to {out}; rename one or use separate runs"
            )
        seen.add(resolved)
    # Checked now, not when writing: by then every answer has been paid for. A default output
    # lies beside its input, whose absence the reader reports better. A missing --output-dir is
    # made (like `mkdir -p`, private: the outputs hold personal data); a missing folder in -o
    # is more likely a typo, and stays an error.
    if (options.output or options.output_dir) and not options.dry_run:
        if options.output is None and options.output_dir is not None:
            _make_output_dir(options.output_dir)
        for out in outputs:
            if not out.parent.is_dir():
                raise OutputError(
                    f"cannot write the output {out}: folder does not exist: {out.parent}"
                )
    if options.state is not None and options.state.resolve() in inputs | seen:
        # The output would replace the journal (paid answers lost), or the journal an input.
        what = "an input" if options.state.resolve() in inputs else "an output"
        raise OutputError(f"--state {options.state} is {what} of this run; choose another path")
    return outputs


def _make_output_dir(folder: Path) -> None:
    """Create `folder` and any missing parents, each readable only by the user (0700)."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"the output folder {folder} is a file; choose another --output-dir")
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    for path in reversed(missing):
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            pass  # made meanwhile, or a file: the is_dir() check that follows says which
        except OSError as err:
            reason = err.strerror or type(err).__name__
            raise OutputError(f"cannot create the output folder {folder}: {reason}") from err


def _open_inputs(options: EnrichOptions, outputs: list[Path]) -> list[_Input]:
    opened: list[_Input] = []
    for path, output in zip(options.inputs, outputs, strict=True):
        source = open_source(path, sheet=options.sheet, encoding=options.encoding)
        columns = find_columns(
            source.headers,
            realname=options.name_col,
            idcard=options.idcard_col,
            mobile=options.mobile_col,
        )
        old = set(existing_result_columns(source.headers))
        keep = [i for i in range(len(source.headers)) if i not in old]
        opened.append(_Input(source, columns, output, keep, FileSummary(path, output)))
    return opened


class _Rows:
    """A row's verdict (`Person` or `Invalid`) and journal key, memoised on its raw fields.

    Big files repeat few people, so most rows are one dict look-up on the three raw cells:
    cheaper than validating (even memoised) and hashing the `Person` to find its key.
    Only all-text triples are memoised here: `check` tells an int from an equal float, a
    plain dict would not.
    """

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        #: raw (name, ID, mobile) cells → verdict and key; the hot loops read it directly
        self.memo: dict[tuple[Cell, Cell, Cell], tuple[Person | Invalid, bytes | None]] = {}

    def __call__(
        self, row: Sequence[Cell], columns: ColumnMap, width: int
    ) -> tuple[Person | Invalid, bytes | None]:
        raw = None
        if len(row) == width:
            raw = (row[columns.realname], row[columns.idcard], row[columns.mobile])
            hit = self.memo.get(raw)
            if hit is not None:
                return hit
        result = check_row(row, columns, width)
        entry = (result, self._journal.key(result) if isinstance(result, Person) else None)
        if raw is not None and all(type(cell) is str for cell in raw):
            if len(self.memo) >= _MEMO_SIZE:
                self.memo.clear()
            self.memo[raw] = entry
        return entry


def _plan(
    inputs: list[_Input],
    rows: _Rows,
    journal: Journal,
    cutoff: float | None,
    summary: RunSummary,
    progress: Progress,
    interrupts: Interrupts,
) -> _Plan:
    plan = _Plan()
    seen: set[bytes] = set()
    reused: dict[bytes, Status] = {}  # people answered from the journal, for their later rows
    pending: list[tuple[bytes, Person]] = []

    def flush() -> None:
        found = journal.get_many((k for k, _ in pending), newer_than=cutoff)
        for key, person in pending:
            answer = found.get(key)
            if answer is not None:
                summary.reused += 1
                rows_so_far = plan.rows_of.pop(key)
                plan.resolved_rows += rows_so_far
                plan.already[answer.status] += rows_so_far
                reused[key] = answer.status
            else:
                plan.to_call.append((key, person))
        pending.clear()

    memo = rows.memo
    for item in inputs:
        columns = item.columns
        width = len(item.source.headers)
        n_at, i_at, m_at = columns.realname, columns.idcard, columns.mobile
        for row in item.source.rows():
            if interrupts.requested:
                break  # nothing is sent after a signal; the write pass still covers every row
            plan.total_rows += 1
            hit = memo.get((row[n_at], row[i_at], row[m_at])) if len(row) == width else None
            result, key = hit if hit is not None else rows(row, columns, width)
            if key is None:
                plan.resolved_rows += 1
                plan.already[Status.INVALID] += 1
                continue
            assert isinstance(result, Person)
            if key in seen:
                summary.duplicates += 1
                if key in plan.rows_of:
                    plan.rows_of[key] += 1
                else:  # its first row was already answered from the journal
                    plan.resolved_rows += 1
                    plan.already[reused[key]] += 1
                continue
            seen.add(key)
            plan.rows_of[key] = 1
            pending.append((key, result))
            if len(pending) >= _LOOKUP_BATCH:
                flush()
            if plan.total_rows % 50_000 == 0:
                progress.note(f"planning: {plan.total_rows:,} rows read")
    flush()
    summary.identities = len(seen)
    summary.to_call = len(plan.to_call)
    return plan


async def _dispatch(
    options: EnrichOptions,
    plan: _Plan,
    journal: Journal,
    summary: RunSummary,
    control: RunControl,
    progress: Progress,
    answered: set[bytes],
) -> dict[bytes, Outcome]:
    """Call the API for every planned person; returns the non-final outcomes (failed).

    Adds to `answered` the key of everyone whose answer this run put in the journal.
    """
    outcomes: dict[bytes, Outcome] = {}
    stats = CallStats()
    endpoint, key = options.endpoint, options.key
    sandbox = None
    if options.sandbox:
        from batch_enricher.sandbox import SandboxConfig, start

        sandbox = await start(SandboxConfig())
        endpoint, key = sandbox.url, "sandbox"
    if not key:
        raise ConfigError("no API key")  # enrich_async checks first; this keeps the types honest
    ssl_context: ssl.SSLContext | bool = True
    if options.insecure:
        ssl_context = False
    connector = aiohttp.TCPConnector(limit=options.concurrency, ssl=ssl_context)
    pacer = Pacer(options.qps)
    started = time.monotonic()
    try:
        async with aiohttp.ClientSession(
            connector=connector, headers={"User-Agent": USER_AGENT}, trace_configs=[send_tracing()]
        ) as session:
            client = JuheClient(session, endpoint, key, timeout=options.timeout)
            caller = Caller(client, pacer, control, options.retry, stats)
            todo: Iterator[tuple[bytes, Person]] = iter(plan.to_call)
            in_flight = 0
            unkept: list[Answer] = []  # answers received that the journal could not store

            async def worker() -> None:
                nonlocal in_flight
                for key_, person in todo:
                    if control.stopped:
                        return
                    in_flight += 1
                    try:
                        answer = await caller.call(person)
                    except (NotSent, AccountError):
                        continue  # skipped: the loop ends at the next `stopped` check
                    except TransientApiError as exc:
                        outcomes[key_] = Outcome(Status.FAILED, exc.error_code, _failed(exc))
                        progress.advance(plan.rows_of[key_], Status.FAILED, billed=False)
                        continue
                    finally:
                        in_flight -= 1
                    try:
                        journal.put(key_, answer)
                    except JournalError:
                        unkept.append(answer)
                        raise
                    answered.add(key_)
                    progress.advance(
                        plan.rows_of[key_], answer.status, billed=answer.status is Status.OK
                    )

            count = max(1, min(options.concurrency, len(plan.to_call)))
            workers = [asyncio.create_task(worker()) for _ in range(count)]
            try:
                await asyncio.gather(*workers)
            except BaseException as exc:
                # One worker failed for real (the journal cannot be written, say): the others
                # must not go on sending answers that could no longer be kept.
                control.stop("stopped by an error")
                abandoned = in_flight
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                if isinstance(exc, JournalError) and unkept:
                    raise _journal_failed(exc, unkept, abandoned) from exc
                raise
    finally:
        if sandbox is not None:
            await sandbox.close()
        summary.api_calls += stats.api_calls
        summary.billed += stats.billed
        summary.retries += stats.retries
        summary.possibly_billed += stats.possibly_billed
        summary.rate_limited += stats.codes[10011]
        log.debug("dispatch took %.1f s", time.monotonic() - started)
    return outcomes


def _journal_failed(exc: JournalError, unkept: list[Answer], abandoned: int) -> JournalError:
    """The journal refused an answer: what that cost, and what to do before rerunning."""
    billed = sum(answer.status is Status.OK for answer in unkept)
    return JournalError(
        f"{exc}. Nothing more was sent and no output was written. Answers already in the "
        f"journal are kept; lost: {billed} billed answer(s) that arrived but could not be "
        f"stored, and up to {abandoned} request(s) in flight, abandoned (they may have been "
        "billed). Free disk space or fix the journal folder's permissions, then rerun the "
        "same command: it asks only for people whose answer is not in the journal"
    )


def _failed(exc: TransientApiError) -> str:
    text = str(exc)
    if exc.error_code is not None:
        text = f"{reason_of(exc.error_code)} ({exc.error_code})"
    return f"{text}; still failing after retries, rerun to try again"


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


@dataclass
class _Join:
    """What the second pass knows for joining rows with their answers."""

    rows: _Rows
    journal: Journal
    cutoff: float | None  # for answers from earlier runs: planning's --max-age cutoff
    answered: set[bytes]  # people answered in this run: their answer, whatever the clock says
    outcomes: dict[bytes, Outcome]
    skip_reason: str
    tables: dict[str, bands_mod.Table]


_Tail = TypeVar("_Tail")
_NO_BANDS: tuple[str, ...] = ()


class _Result(Generic[_Tail]):
    """One person's result in the write pass, and how many rows it has been written to."""

    __slots__ = ("bands", "rows", "status", "tail")

    def __init__(self, status: Status, tail: _Tail, bands: tuple[str, ...]) -> None:
        self.status, self.tail, self.bands, self.rows = status, tail, bands, 0


def _joined(
    item: _Input, join: _Join, make_tail: Callable[[list[Cell]], _Tail]
) -> Iterator[tuple[Sequence[Cell], _Tail]]:
    """Each row of `item` (its kept cells) with its result, counted into its FileSummary.

    A person's result is the same on every row, so it is worked out and prepared for the
    writer (`make_tail`) once per person, not once per row, and rows are counted per person
    and added up at the end: on a big file with few people the per-row work is the cost.
    """
    source, columns, keep = item.source, item.columns, item.keep
    fs = item.summary
    width = len(source.headers)
    whole = keep == list(range(width))  # no earlier result columns to drop
    memo, resolve = join.rows.memo, join.rows
    n_at, i_at, m_at = columns.realname, columns.idcard, columns.mobile
    per_person: dict[bytes, _Result[_Tail]] = {}
    try:
        for chunk in _chunks(source.rows(), _LOOKUP_BATCH):
            checked = [
                (memo.get((row[n_at], row[i_at], row[m_at])) if len(row) == width else None)
                or resolve(row, columns, width)
                for row in chunk
            ]
            if len(per_person) > _MEMO_SIZE:
                _count(per_person.values(), fs)
                per_person.clear()
            missing = {k for _, k in checked if k is not None and k not in per_person}
            answers = _answers(join, missing) if missing else {}
            for row, (verdict, key) in zip(chunk, checked, strict=True):
                if key is None:
                    assert isinstance(verdict, Invalid)
                    cells = _result_cells(Status.INVALID, None, verdict, None, "", join.tables)
                    fs.statuses[Status.INVALID] += 1
                    fs.rows += 1
                    tail = make_tail(cells)
                else:
                    result = per_person.get(key)
                    if result is None:
                        result = per_person[key] = _person_result(
                            key, answers.get(key), join, make_tail
                        )
                    result.rows += 1
                    tail = result.tail
                if whole and len(row) == width:
                    yield row, tail
                else:
                    yield [row[i] if i < len(row) else None for i in keep], tail
    finally:
        _count(per_person.values(), fs)


def _answers(join: _Join, keys: set[bytes]) -> dict[bytes, Answer]:
    """Journal answers for `keys`: this run's own whatever their time, earlier ones by the cutoff.

    The cutoff alone would hide an answer paid for in this run whenever its `queried_at` (to
    the second, from the wall clock) falls before the cutoff: in the run's first second with
    --max-age 0, or after the clock was stepped back. Its row would come out `skipped` and the
    rerun would pay for it again.
    """
    fresh = keys & join.answered
    found = join.journal.get_many(keys - fresh, newer_than=join.cutoff) if keys - fresh else {}
    if fresh:
        found.update(join.journal.get_many(fresh))
    return found


def _count(results: Iterable[_Result[_Tail]], fs: FileSummary) -> None:
    """Add people's rows to the file's status and band counts."""
    for result in results:
        fs.rows += result.rows
        fs.statuses[result.status] += result.rows
        for model, band in zip(bands_mod.MODELS, result.bands, strict=False):
            fs.bands.setdefault(model, Counter())[band] += result.rows
        result.rows = 0


def _person_result(
    key: bytes, answer: Answer | None, join: _Join, make_tail: Callable[[list[Cell]], _Tail]
) -> _Result[_Tail]:
    outcome = join.outcomes.get(key) if answer is None else None
    if answer is not None:
        status = answer.status
    else:
        status = outcome.status if outcome is not None else Status.SKIPPED
    cells = _result_cells(status, answer, None, outcome, join.skip_reason, join.tables)
    bands = tuple(str(cells[pos]) for pos in (5, 7, 9)) if status is Status.OK else _NO_BANDS
    return _Result(status, make_tail(cells), bands)


def _write(
    item: _Input,
    join: _Join,
    options: EnrichOptions,
    make_sheet: Callable[[FileSummary], SummarySheet],
    interrupts: Interrupts,
) -> None:
    """The second pass over one input: every row, its result, written atomically."""
    source, columns, keep = item.source, item.columns, item.keep
    headers = [source.headers[i] for i in keep] + list(RESULT_COLUMNS[options.headers])
    out_index = {orig: pos for pos, orig in enumerate(keep)}
    text_columns = {out_index[i] for i in (columns.idcard, columns.mobile) if i in out_index}
    with (
        open_writer(
            item.output,
            headers,
            text_columns=text_columns,
            status_column=len(keep),
            escape_formulas=options.escape_formulas,
        ) as writer,
        interrupts.cleanup(writer.abort),
    ):
        write_row = writer.write_row
        for original, tail in _joined(item, join, writer.tail):
            write_row(original, tail)
        writer.commit(make_sheet(item.summary))


def _chunks(rows: Iterable[list[Cell]], size: int) -> Iterator[list[list[Cell]]]:
    """Lists of up to `size` rows (islice does the batching in C)."""
    it = iter(rows)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def exit_code_for(summary: RunSummary) -> int:
    """0 all final · 3 some failed or skipped · 4 aborted by an account-level code."""
    if summary.abort_code is not None:
        return 4
    if summary.count(Status.FAILED) or summary.count(Status.SKIPPED):
        return 3
    return 0


async def enrich_async(options: EnrichOptions, progress: Progress | None = None) -> RunSummary:
    """Run the whole job and return its summary; raises `EnricherError` for bad input or setup."""
    from batch_enricher.report import summary_sheet

    progress = progress or NullProgress()
    started = time.monotonic()
    summary = RunSummary(dry_run=options.dry_run)
    if not options.sandbox and not options.key and not options.dry_run:
        raise ConfigError(
            'no API key: set JUHE_API_KEY, put key = "..." in the --config file, or pass --key '
            "(or try --sandbox to run against the built-in emulator)"
        )
    outputs = resolve_outputs(options)
    if not options.dry_run:
        for out in outputs:  # what a killed run left beside them holds personal data
            sweep_temporary_files(out)
    inputs = _open_inputs(options, outputs)
    state = options.state
    if state is None:
        from batch_enricher.journal import default_state_path

        state = default_state_path()
    control = RunControl(max_billed=options.max_billed)
    interrupts = Interrupts(control.stop, progress.note)
    with (
        interrupts.installed(enabled=options.handle_signals),
        Journal.open(
            state, lock_timeout=options.lock_timeout, new_journal=options.new_journal
        ) as journal,
    ):
        rows = _Rows(journal)
        cutoff = None if options.max_age is None else time.time() - options.max_age
        progress.phase("planning")
        plan = _plan(inputs, rows, journal, cutoff, summary, progress, interrupts)
        outcomes: dict[bytes, Outcome] = {}
        answered: set[bytes] = set()
        if not options.dry_run:
            interrupts.loop = asyncio.get_running_loop()
            if interrupts.reason is not None:  # a signal during planning: send nothing
                control.stop(interrupts.reason)
                progress.note(_PLANNING_STOPPED)
            else:
                progress.start(
                    plan.total_rows, plan.resolved_rows, len(plan.to_call), already=plan.already
                )
                interrupts.in_flight = min(options.concurrency, len(plan.to_call))
            if plan.to_call and not control.stopped:
                outcomes = await _dispatch(
                    options, plan, journal, summary, control, progress, answered
                )
            interrupts.loop, interrupts.in_flight = None, 0
            progress.phase("writing")
        # The same cutoff as planning, so rows agree with what was reused and what was (or in
        # a dry run would be) asked again; this run's own answers are found by key instead.
        join = _Join(
            rows,
            journal,
            cutoff,
            answered,
            outcomes,
            _skip_reason(control, dry_run=options.dry_run),
            options.band_tables,
        )
        for item in inputs:
            if options.dry_run:  # count statuses only: every person still to ask is "skipped"
                for _ in _joined(item, join, _no_tail):
                    pass
            else:
                sheet = partial(
                    summary_sheet, run=summary, lang=options.headers, tables=options.band_tables
                )
                _write(item, join, options, sheet, interrupts)
            summary.files.append(item.summary)
    if options.dry_run:
        summary.max_billable = len(plan.to_call)
        if options.max_billed is not None:
            summary.max_billable = min(summary.max_billable, options.max_billed)
    summary.stop_reason = control.stop_reason
    summary.abort_code = control.abort_code
    summary.elapsed_s = time.monotonic() - started
    summary.exit_code = 0 if options.dry_run else exit_code_for(summary)
    progress.close()
    return summary


def _no_tail(cells: list[Cell]) -> None:
    """The dry run's stand-in for `Writer.tail`: nothing is written."""


def _skip_reason(control: RunControl, *, dry_run: bool) -> str:
    if dry_run:
        return "not sent: dry run"
    if control.stop_reason:
        return f"not sent: {control.stop_reason}"
    return "not sent"


def enrich(options: EnrichOptions, progress: Progress | None = None) -> RunSummary:
    """Run the enrich job to completion (blocking).

    >>> # enrich(EnrichOptions(inputs=[Path("sample_data/customers.csv")], sandbox=True))
    """
    return asyncio.run(enrich_async(options, progress))


_INPUT_SUFFIXES: Final = (".csv", ".tsv", ".txt", ".xlsx", ".xlsm", ".xls")


def expand_inputs(args: Iterable[str]) -> list[Path]:
    """Files named on the command line; a folder or an unexpanded glob stands for its spreadsheets.

    Earlier outputs (`*.enriched.*`) found in a folder or glob are left out; a named file is not.
    """
    paths: list[Path] = []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if _is_input(p))
        elif any(ch in arg for ch in "*?[") and not path.exists():
            # glob.glob, not Path.glob: the latter refuses absolute patterns like /data/*.csv
            found = sorted(p for p in map(Path, glob.glob(arg)) if p.is_file() and _is_input(p))
            if not found:
                raise InputError(f"no input files match {arg}")
        else:
            found = [path]
        if not found:
            raise InputError(f"no .csv/.tsv/.xlsx/.xls files in the folder {path}")
        paths.extend(p for p in found if p not in paths)
    return paths


def _is_input(path: Path) -> bool:
    return path.suffix.lower() in _INPUT_SUFFIXES and ".enriched." not in path.name

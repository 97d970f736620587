"""The enrich job: plan every row, call the API once per new person, write every row's result.

Three phases, each streaming over the inputs, each in its own module:

1. plan (`plan.py`): read every row, validate it, dedupe people across all inputs and look them
   up in the journal; what remains is the people to call. They, the seen-set and row counts go
   to the run's spill (`spill.py`, a private scratch SQLite store), not to Python memory.
2. dispatch (`dispatch.py`): `concurrency` workers take people from the spill in chunks, pace
   and guard each request, and commit each final answer to the journal the moment it arrives.
3. write (`join.py`): a second pass over each input joins every row with its answer from the
   journal and writes the output atomically.

A crash at any point loses at most the calls in flight: everything answered is in the journal,
and rerunning the same command continues from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from batch_enricher import bands as bands_mod
from batch_enricher.autorate import DEFAULT_MAX_QPS
from batch_enricher.client import DEFAULT_ENDPOINT, RetryPolicy
from batch_enricher.columns import RESULT_COLUMNS, ColumnNames, existing_result_columns
from batch_enricher.dispatch import dispatch
from batch_enricher.errors import ConfigError, InputError, OutputError
from batch_enricher.guards import RunControl
from batch_enricher.interrupts import Interrupts
from batch_enricher.join import Join, check_outputs, count_only, write
from batch_enricher.models import Status
from batch_enricher.plan import Input, make_plan
from batch_enricher.progress import NullProgress, Progress
from batch_enricher.reader import open_source
from batch_enricher.rowcheck import name_profile
from batch_enricher.spill import Spill
from batch_enricher.store import DEFAULT_LEASE_S, StoreOptions, TeamUrl, open_store
from batch_enricher.summary import FileSummary, RunSummary
from batch_enricher.writer import sweep_temporary_files

if TYPE_CHECKING:
    from batch_enricher.api import Stop

log = logging.getLogger("batch_enricher")

_PLANNING_STOPPED: Final = (
    "batch-enricher: planning was interrupted: nothing was sent, nothing billed; the output "
    "marks the rows not yet asked for as skipped; rerun the same command to continue"
)


@dataclass
class EnrichOptions:
    """Everything one enrich run needs; the CLI fills it from flags, env and config."""

    inputs: Sequence[Path]
    output: Path | None = None  # only with a single input
    output_dir: Path | None = None
    key: str | None = None
    endpoint: str = DEFAULT_ENDPOINT
    qps: float | Literal["auto"] = 10.0  # "auto": find the account's limit (autorate.py)
    max_qps: float = DEFAULT_MAX_QPS  # the ceiling of qps="auto"
    concurrency: int = 8
    timeout: float = 15.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: the journal: a file (None: the default under the user's state folder), or a team's
    #: PostgreSQL database shared by every run that names it
    state: Path | TeamUrl | None = None
    secret_file: Path | None = None  # a team database's secret (default: beside the journal)
    team_lease: float = DEFAULT_LEASE_S  # a team run silent this long loses its claims
    max_age: float | None = 30 * 86400.0  # seconds; 0: ask again; None: reuse whatever is there
    max_billed: int | None = None
    dry_run: bool = False
    headers: str = "en"
    escape_formulas: bool = True
    insecure: bool = False
    name_col: str | None = None
    idcard_col: str | None = None
    mobile_col: str | None = None
    sheet: str | int | None = None
    encoding: str | None = None
    header_row: int | None = None  # 1-based; None: the first of the first 20 rows that fits
    lock_timeout: float = 5.0
    new_journal: bool = False  # set the journal and its secret aside, start an empty pair
    band_tables: dict[str, bands_mod.Table] = field(
        default_factory=lambda: dict(bands_mod.DEFAULT_TABLES)
    )
    handle_signals: bool = True


def default_output(path: Path, output_dir: Path | None) -> Path:
    """`<stem>.enriched.<ext>` beside the input (or in `output_dir`); `.xls` becomes `.xlsx`.

    >>> default_output(Path("in/customers.csv"), None)
    PosixPath('in/customers.enriched.csv')
    """
    suffix = path.suffix.lower()
    # An .xlsm stays .xlsm: the output is the same workbook, macros included.
    ext = {".xls": ".xlsx", ".txt": ".csv"}.get(suffix, suffix)
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
    if isinstance(options.state, Path) and options.state.resolve() in inputs | seen:
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


def _open_inputs(options: EnrichOptions, outputs: list[Path], progress: Progress) -> list[Input]:
    opened: list[Input] = []
    names = ColumnNames(options.name_col, options.idcard_col, options.mobile_col)
    for path, output in zip(options.inputs, outputs, strict=True):
        source = open_source(
            path,
            sheet=options.sheet,
            encoding=options.encoding,
            header_row=options.header_row,
            names=names,
        )
        assert source.columns is not None  # with `names`, a missing header is an InputError
        if source.header_row > 1:
            progress.note(f"{path}: the header is row {source.header_row}; the rows above it stay")
        old = existing_result_columns(source.headers)
        item = Input(source, source.columns, output, old, FileSummary(path, output))
        item.names = name_profile(source, source.columns)
        opened.append(item)
    return opened


#: Columns a worksheet has (A to XFD).
_SHEET_COLUMNS: Final = 16384


def _check_room(inputs: list[Input], headers: str) -> None:
    """Refuse, before anything is sent, a sheet with no room left for the result columns."""
    block = len(RESULT_COLUMNS[headers])
    for item in inputs:
        if item.output.suffix.lower() not in (".xlsx", ".xlsm"):
            continue
        first = min(item.old_results) if item.old_results else item.source.width
        if first + block > _SHEET_COLUMNS:
            raise InputError(
                f"{item.source.path}: a cell in column {item.source.width} leaves no room for the "
                f"{block} result columns in a worksheet (at most {_SHEET_COLUMNS} columns); "
                "delete the stray cells on the right, or write a .csv output"
            )


def exit_code_for(summary: RunSummary) -> int:
    """0 all final · 3 some failed or skipped · 4 aborted by an account-level code."""
    if summary.abort_code is not None:
        return 4
    if summary.count(Status.FAILED) or summary.count(Status.SKIPPED):
        return 3
    return 0


async def enrich_async(
    options: EnrichOptions, progress: Progress | None = None, *, stop: Stop | None = None
) -> RunSummary:
    """Run the whole job and return its summary; raises `EnricherError` for bad input or setup.

    `stop` (`api.Stop`) lets another thread ask for a graceful stop, as Ctrl-C does.
    """
    from batch_enricher.report import summary_sheet

    progress = progress or NullProgress()
    started = time.monotonic()
    summary = RunSummary(dry_run=options.dry_run)
    if not options.key and not options.dry_run:
        raise ConfigError(
            'no API key: set JUHE_API_KEY, put key = "..." in the --config file, or pass --key '
            "(or try --sandbox to run against the built-in emulator)"
        )
    outputs = resolve_outputs(options)
    if not options.dry_run:
        for out in outputs:  # what a killed run left beside them holds personal data
            sweep_temporary_files(out)
    inputs = _open_inputs(options, outputs, progress)
    control = RunControl(max_billed=options.max_billed)
    interrupts = Interrupts(control.stop, progress.note)
    if stop is not None:
        stop.attach(asyncio.get_running_loop(), control, interrupts)
    store_options = StoreOptions(
        state=options.state,
        lock_timeout=options.lock_timeout,
        new_journal=options.new_journal,
        secret_file=options.secret_file,
        lease=options.team_lease,
    )
    with (
        interrupts.installed(enabled=options.handle_signals),
        contextlib.closing(open_store(store_options)) as store,
        Spill() as spill,  # the run's people, off the heap; gone when the run ends
    ):
        journal = store.journal
        for item in inputs:
            item.bind(journal)
        cutoff = None if options.max_age is None else time.time() - options.max_age
        progress.phase("planning")
        plan = make_plan(inputs, journal, spill, cutoff, summary, progress, interrupts)
        if not options.dry_run:
            _check_room(inputs, options.headers)  # the widest row is known now
            check_outputs(inputs, options)  # a workbook the patch cannot make: refused now
            interrupts.loop = asyncio.get_running_loop()
            if interrupts.reason is not None:  # a signal during planning: send nothing
                control.stop(interrupts.reason)
                progress.note(_PLANNING_STOPPED)
            else:
                progress.start(
                    plan.total_rows, plan.resolved_rows, plan.calls, already=plan.already
                )
                interrupts.in_flight = min(options.concurrency, plan.calls)
            if plan.calls and not control.stopped:
                await dispatch(options, plan, store, spill, summary, control, progress, cutoff)
            interrupts.loop, interrupts.in_flight = None, 0
            progress.phase("writing")
        # The same cutoff as planning, so rows agree with what was reused and what was (or in
        # a dry run would be) asked again; this run's own answers are found by key instead.
        join = Join(
            journal,
            cutoff,
            spill,
            _skip_reason(control, dry_run=options.dry_run),
            options.band_tables,
        )
        for item in inputs:
            if options.dry_run:  # count statuses only: every person still to ask is "skipped"
                count_only(item, join)
            else:
                sheet = partial(
                    summary_sheet, run=summary, lang=options.headers, tables=options.band_tables
                )
                write(item, join, options, sheet, interrupts)
            summary.files.append(item.summary)
    if options.dry_run:
        summary.max_billable = plan.calls
        if options.max_billed is not None:
            summary.max_billable = min(summary.max_billable, options.max_billed)
    summary.stop_reason = control.stop_reason
    summary.abort_code = control.abort_code
    summary.elapsed_s = time.monotonic() - started
    summary.exit_code = 0 if options.dry_run else exit_code_for(summary)
    progress.close()
    return summary


def _skip_reason(control: RunControl, *, dry_run: bool) -> str:
    if dry_run:
        return "not sent: dry run"
    if control.stop_reason:
        return f"not sent: {control.stop_reason}"
    return "not sent"


def enrich(options: EnrichOptions, progress: Progress | None = None) -> RunSummary:
    """Run the enrich job to completion (blocking).

    >>> # enrich(EnrichOptions(inputs=[Path("customers.csv")], key=os.environ["JUHE_API_KEY"]))
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

"""Enrich a pandas DataFrame in memory, with the same guarantees as a file run.

The frame goes through the run's own pieces: `FrameSource` stands in for a file's `Source`
(each row as a list of cells: strings stay strings, int64 values become Python ints, missing
values None, so a row is judged exactly as the same spreadsheet row would be), then planning
(`plan.make_plan`: validation, dedup, the journal), `dispatch.dispatch` (pacing, retries,
breakers, budget; each answer journaled the moment it arrives) and the join (`join.joined`),
whose 11 result cells per row become typed columns instead of a file.

Row numbers in this module are positions (0-based), not labels: the index may repeat.
Needs pandas (`pip install 'batch-enricher[pandas]'`); nothing else in the package imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

from batch_enricher import bands as bands_mod
from batch_enricher.api import Stop, run_sync
from batch_enricher.client import DEFAULT_ENDPOINT, RetryPolicy
from batch_enricher.columns import (
    RESULT_COLUMNS,
    ColumnMap,
    existing_result_columns,
    find_columns,
)
from batch_enricher.errors import AccountError, ColumnError, ConfigError, InputError
from batch_enricher.models import Invalid, Status
from batch_enricher.progress import NullProgress, Progress
from batch_enricher.reader import Cell, Source
from batch_enricher.rowcheck import RowCheck, name_profile
from batch_enricher.store import DEFAULT_LEASE_S
from batch_enricher.store.url import TeamUrl, parse_state
from batch_enricher.summary import RunSummary

try:
    import pandas as pd
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "batch_enricher.enrich_frame and validate_frame need pandas: "
        "pip install 'batch-enricher[pandas]'"
    ) from err

if TYPE_CHECKING:
    from batch_enricher.runner import EnrichOptions

__all__ = ["FrameSource", "enrich_frame", "enrich_frame_async", "validate_frame"]

log = logging.getLogger("batch_enricher")

#: The dtype of each appended column, by its position in `RESULT_COLUMNS`.
RESULT_DTYPES: Final = (
    "string",  # status
    "Int64",  # error_code
    "string",  # error_reason
    "string",  # orderid
    "Int64",  # range_score
    "string",  # range_band
    "Int64",  # history_score
    "string",  # history_band
    "Int64",  # stability_score
    "string",  # stability_band
    "datetime64[ns, UTC]",  # queried_at
)

#: The columns `validate_frame` returns, and their dtypes.
VALIDATION_DTYPES: Final = {"valid": "boolean", "error_code": "Int64", "reason": "string"}
_BLANK_REASON: Final = "blank row: nothing to ask"
_BLOCK_ROWS: Final = 10_000  # rows converted to cells at a time


def _cell(value: Any) -> Cell:
    """One frame value as the cell a spreadsheet reader would give: missing values are None."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        with contextlib.suppress(ValueError, TypeError):
            value = value.item()  # a numpy scalar: np.int64 is not an `int` to validation
    return value  # type: ignore[no-any-return]


class FrameSource:
    """A DataFrame read as a `reader.Source`: headers are the column labels, rows positions.

    Row numbers are 0-based positions (`numbered_rows`), so results line up with `iloc`
    whatever the index holds; nothing in a frame is ever damaged, and nothing sits above its
    header.
    """

    format = "frame"
    header_row = 0
    sheet: str | None = None
    strict_ooxml = False
    damaged = False

    def __init__(self, df: pd.DataFrame, columns: ColumnMap) -> None:
        self._df = df
        self.path = Path("<DataFrame>")
        self.headers = [str(label) for label in df.columns]
        self.columns: ColumnMap | None = columns
        self.width = len(self.headers)

    def preamble(self) -> list[list[Cell]]:
        """A frame has nothing above its header."""
        return []

    def damage_reason(self, number: int, row: Sequence[Cell]) -> str | None:
        """Frames hold values, not bytes: nothing is ever undecodable."""
        return None

    def head(self, count: int) -> list[list[Cell]]:
        """The first `count` rows, as `rows()` gives them."""
        return list(itertools.islice(self.rows(), count))

    def rows(self) -> Iterator[list[Cell]]:
        """Every row as a list of cells (column by column `tolist()`: Python scalars).

        A block of rows at a time, so a pass holds one block's cells, not the frame's.
        """
        df = self._df
        for start in range(0, len(df), _BLOCK_ROWS):
            block = df.iloc[start : start + _BLOCK_ROWS]
            values = [block.iloc[:, i].tolist() for i in range(self.width)]
            for cells in zip(*values, strict=True):
                yield [_cell(value) for value in cells]

    def numbered_rows(self) -> Iterator[tuple[int, list[Cell]]]:
        """`rows()` with each row's position (0-based)."""
        return enumerate(self.rows())

    def as_source(self) -> Source:
        """This object where a `Source` is expected (it has every member they read)."""
        return cast("Source", self)


def _find_columns(
    df: pd.DataFrame, name_col: str | None, idcard_col: str | None, mobile_col: str | None
) -> ColumnMap:
    if not isinstance(df, pd.DataFrame):
        raise InputError(f"expected a pandas DataFrame, got {type(df).__name__}")
    headers = [str(label) for label in df.columns]
    if len(set(headers)) != len(headers):
        raise ColumnError("the frame has two columns with the same name; rename one")
    return find_columns(headers, realname=name_col, idcard=idcard_col, mobile=mobile_col)


def validate_frame(
    df: pd.DataFrame,
    *,
    name_col: str | None = None,
    idcard_col: str | None = None,
    mobile_col: str | None = None,
) -> pd.DataFrame:
    """The local checks only, per row: `valid`, `error_code` and `reason`; nothing is sent.

    >>> # validate_frame(df).query("not valid")["reason"].value_counts()
    """
    columns = _find_columns(df, name_col, idcard_col, mobile_col)
    source = FrameSource(df, columns)
    check = RowCheck(source.as_source(), columns, name_profile(source.as_source(), columns))
    valid: list[bool] = []
    codes: list[int | None] = []
    reasons: list[str | None] = []
    for number, row in source.numbered_rows():
        verdict, _ = check(number, row)
        valid.append(verdict is not None and not isinstance(verdict, Invalid))
        codes.append(verdict.error_code if isinstance(verdict, Invalid) else None)
        if verdict is None:
            reasons.append(_BLANK_REASON)
        else:
            reasons.append(verdict.reason if isinstance(verdict, Invalid) else None)
    data = {"valid": valid, "error_code": codes, "reason": reasons}
    return pd.DataFrame(
        {name: pd.array(data[name], dtype=dtype) for name, dtype in VALIDATION_DTYPES.items()},
        index=df.index,
    )


def enrich_frame(
    df: pd.DataFrame,
    *,
    key: str | None = None,
    endpoint: str = DEFAULT_ENDPOINT,
    qps: float = 10.0,
    concurrency: int = 8,
    timeout: float = 15.0,
    retry: RetryPolicy | None = None,
    state: str | os.PathLike[str] | TeamUrl | None = None,
    max_age: float | None = 30 * 86400.0,
    max_billed: int | None = None,
    name_col: str | None = None,
    idcard_col: str | None = None,
    mobile_col: str | None = None,
    headers: str = "en",
    band_tables: Mapping[str, bands_mod.Table] | None = None,
    progress: bool | Progress = True,
    insecure: bool = False,
) -> pd.DataFrame:
    """A copy of `df` with the 11 result columns appended (blocking; fine inside Jupyter).

    Same pipeline and guarantees as `batch-enricher enrich`: each distinct valid person is
    paid for once, answers go to the journal (`state`) as they arrive, and calling again after
    an interrupt asks only for who is missing. A KeyboardInterrupt stops sending, waits for the
    calls in flight, then is raised. An account-level abort raises `AccountError` whose
    `frame` attribute holds the result so far. The key defaults to $JUHE_API_KEY.

    >>> # out = enrich_frame(customers, state="journal.sqlite3", qps=10)
    """
    stop = Stop()
    prepared = _prepare(
        df,
        key=key,
        endpoint=endpoint,
        qps=qps,
        concurrency=concurrency,
        timeout=timeout,
        retry=retry,
        state=state,
        max_age=max_age,
        max_billed=max_billed,
        names=(name_col, idcard_col, mobile_col),
        headers=headers,
        band_tables=band_tables,
        progress=progress,
        insecure=insecure,
    )
    return run_sync(lambda: _enrich(df, prepared, stop), stop, prepared.progress.note)


async def enrich_frame_async(
    df: pd.DataFrame,
    *,
    key: str | None = None,
    endpoint: str = DEFAULT_ENDPOINT,
    qps: float = 10.0,
    concurrency: int = 8,
    timeout: float = 15.0,
    retry: RetryPolicy | None = None,
    state: str | os.PathLike[str] | TeamUrl | None = None,
    max_age: float | None = 30 * 86400.0,
    max_billed: int | None = None,
    name_col: str | None = None,
    idcard_col: str | None = None,
    mobile_col: str | None = None,
    headers: str = "en",
    band_tables: Mapping[str, bands_mod.Table] | None = None,
    progress: bool | Progress = True,
    insecure: bool = False,
) -> pd.DataFrame:
    """`enrich_frame` on the caller's event loop (reading and planning block it meanwhile).

    Cancelling the task stops at once: answers received are kept in the journal.
    """
    prepared = _prepare(
        df,
        key=key,
        endpoint=endpoint,
        qps=qps,
        concurrency=concurrency,
        timeout=timeout,
        retry=retry,
        state=state,
        max_age=max_age,
        max_billed=max_billed,
        names=(name_col, idcard_col, mobile_col),
        headers=headers,
        band_tables=band_tables,
        progress=progress,
        insecure=insecure,
    )
    return await _enrich(df, prepared, None)


class _Prepared:
    """A checked call: its options, the frame's source and result column names, its progress."""

    def __init__(
        self,
        options: EnrichOptions,
        source: FrameSource,
        old: list[int],
        progress: Progress,
    ) -> None:
        self.options, self.source, self.old, self.progress = options, source, old, progress


def _prepare(
    df: pd.DataFrame,
    *,
    key: str | None,
    endpoint: str,
    qps: float,
    concurrency: int,
    timeout: float,
    retry: RetryPolicy | None,
    state: str | os.PathLike[str] | TeamUrl | None,
    max_age: float | None,
    max_billed: int | None,
    names: tuple[str | None, str | None, str | None],
    headers: str,
    band_tables: Mapping[str, bands_mod.Table] | None,
    progress: bool | Progress,
    insecure: bool,
) -> _Prepared:
    """Check the arguments and the frame before anything is opened or sent."""
    from batch_enricher.runner import EnrichOptions

    if headers not in RESULT_COLUMNS:
        raise ConfigError(f"headers must be one of {', '.join(RESULT_COLUMNS)}, not {headers!r}")
    key = key if key is not None else os.environ.get("JUHE_API_KEY")
    if not key:
        raise ConfigError("no API key: pass key=... or set JUHE_API_KEY")
    columns = _find_columns(df, *names)
    source = FrameSource(df, columns)
    old = existing_result_columns(source.headers)
    kept = {h for i, h in enumerate(source.headers) if i not in old}
    clash = sorted(kept & set(RESULT_COLUMNS[headers]))
    if clash:
        raise ColumnError(
            f"the frame already has a column named {clash[0]!r}, which the results would "
            "replace; rename it"
        )
    state_value = os.fspath(state) if isinstance(state, os.PathLike) else state
    options = EnrichOptions(
        inputs=[],
        key=key,
        endpoint=endpoint,
        qps=qps,
        concurrency=concurrency,
        timeout=timeout,
        retry=retry or RetryPolicy(),
        state=parse_state(state_value),
        team_lease=DEFAULT_LEASE_S,
        max_age=max_age,
        max_billed=max_billed,
        headers=headers,
        band_tables=dict(band_tables if band_tables is not None else bands_mod.DEFAULT_TABLES),
        insecure=insecure,
        handle_signals=False,  # the frame run leaves the caller's signal handlers alone
    )
    if isinstance(progress, Progress):
        shown = progress
    else:
        shown = _BarProgress() if progress else NullProgress()
    return _Prepared(options, source, old, shown)


async def _enrich(df: pd.DataFrame, prepared: _Prepared, stop: Stop | None) -> pd.DataFrame:
    """Plan, dispatch and join one frame; the result cells become typed columns."""
    from batch_enricher.dispatch import dispatch
    from batch_enricher.guards import RunControl
    from batch_enricher.interrupts import Interrupts
    from batch_enricher.join import Join, joined
    from batch_enricher.plan import Input, make_plan
    from batch_enricher.runner import exit_code_for
    from batch_enricher.spill import Spill
    from batch_enricher.store import StoreOptions, open_store
    from batch_enricher.summary import FileSummary

    options, source, progress = prepared.options, prepared.source, prepared.progress
    assert source.columns is not None
    started = time.monotonic()
    summary = RunSummary()
    control = RunControl(max_billed=options.max_billed)
    interrupts = Interrupts(control.stop, progress.note)
    if stop is not None:
        stop.attach(asyncio.get_running_loop(), control, interrupts)
    as_source = source.as_source()
    item = Input(
        as_source, source.columns, source.path, prepared.old, FileSummary(source.path, None)
    )
    item.names = name_profile(as_source, source.columns)
    store_options = StoreOptions(
        state=options.state,
        lock_timeout=options.lock_timeout,
        new_journal=False,
        secret_file=options.secret_file,
        lease=options.team_lease,
    )
    try:
        with contextlib.closing(open_store(store_options)) as store, Spill() as spill:
            journal = store.journal
            item.bind(journal)
            cutoff = None if options.max_age is None else time.time() - options.max_age
            progress.phase("planning")
            plan = make_plan([item], journal, spill, cutoff, summary, progress, interrupts)
            if interrupts.reason is not None:
                control.stop(interrupts.reason)
            else:
                progress.start(
                    plan.total_rows, plan.resolved_rows, plan.calls, already=plan.already
                )
                if plan.calls:
                    await dispatch(options, plan, store, spill, summary, control, progress, cutoff)
            progress.phase("writing")
            reason = f"not sent: {control.stop_reason}" if control.stop_reason else "not sent"
            join = Join(journal, cutoff, spill, reason, options.band_tables)
            tails = [tail for _, _, tail in joined(item, join, tuple)]
            summary.files.append(item.summary)
    finally:
        progress.close()
    summary.stop_reason = control.stop_reason
    summary.abort_code = control.abort_code
    summary.elapsed_s = time.monotonic() - started
    summary.exit_code = exit_code_for(summary)
    result = _result_frame(df, prepared.old, tails, options.headers)
    result.attrs["batch_enricher"] = summary.to_json()
    if control.abort_code is not None:
        error = AccountError(
            f"the run was aborted: {control.stop_reason}; answers received are kept in the "
            "journal, the rows not asked are marked skipped (see the error's .frame)",
            error_code=control.abort_code,
        )
        error.frame = result  # type: ignore[attr-defined]
        raise error
    if summary.exit_code:
        log.warning(
            "%d row(s) failed and %d skipped: call again to retry them",
            summary.count(Status.FAILED),
            summary.count(Status.SKIPPED),
        )
    return result


def _result_frame(
    df: pd.DataFrame, old: list[int], tails: list[tuple[Cell, ...]], headers: str
) -> pd.DataFrame:
    """`df` (an earlier result block dropped) with the typed result columns appended."""
    out = df.drop(columns=df.columns[old]) if old else df.copy()
    by_column = list(zip(*tails, strict=True)) if tails else [()] * len(RESULT_DTYPES)
    for name, dtype, values in zip(RESULT_COLUMNS[headers], RESULT_DTYPES, by_column, strict=True):
        out[name] = _typed(list(values), dtype)
    return out


def _typed(values: list[Cell], dtype: str) -> Any:
    """One result column as a pandas array of `dtype` (positional: the index is not used)."""
    if dtype == "Int64":
        return pd.array([v if isinstance(v, int) else None for v in values], dtype="Int64")
    if dtype.startswith("datetime64"):
        stamps = pd.to_datetime([v or None for v in values], utc=True, format="ISO8601")
        return stamps.as_unit("ns").array
    return pd.array([None if v is None else str(v) for v in values], dtype=dtype)


class _BarProgress(Progress):
    """A tqdm.auto bar (a widget in Jupyter, text elsewhere); notes go to the logger."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._billed = 0

    def start(
        self,
        total_rows: int,
        done_rows: int,
        calls: int,
        *,
        already: Mapping[Status, int] | None = None,
    ) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total_rows, initial=done_rows, unit="row", desc="enriching")

    def advance(self, rows: int, status: Status, *, billed: bool) -> None:
        if self._bar is not None:
            self._billed += billed
            self._bar.update(rows)
            self._bar.set_postfix(billed=self._billed, refresh=False)

    def note(self, message: str) -> None:
        log.info("%s", message)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

"""Streaming output: CSV, TSV and XLSX writers that are formula-safe, atomic and private.

`open_writer` picks the format from the extension and returns a `Writer`. Rows are streamed to a
temporary file beside the target (created with mode 0600, whatever the umask); `commit` fsyncs
it and renames it over the target in one step, so a reader never sees a half-written file and an
earlier output stays intact until then. Leaving a `with` block without `commit` (or with an
exception) removes the temporary file and leaves the target untouched.

Temporary files hold personal data, so none outlives its run for long, kill -9 included: each
lies beside its target (never in `$TMPDIR`), is named `.<target name>.batch-enricher-<random>…tmp`
and is held under an `flock` while it lives. `sweep_temporary_files` (run before each write of
the same target) removes those whose lock nobody holds: the leftovers of a killed run, never a
live run's file. openpyxl's own row spill file for XLSX is made one of them (`_spill_beside`).

Formats:
- CSV/TSV: UTF-8 with BOM (Excel detects the encoding), `\\r\\n` line endings (RFC 4180, what
  Excel writes), every cell as text: None → "", bool → TRUE/FALSE, dates/times → ISO 8601,
  floats in their shortest round-trip form with integral values (below 2**53) written as ints.
  With `escape_formulas` a str cell starting with `=`, `+`, `-`, `@`, tab, CR or LF gets a
  leading `'` (OWASP CSV injection), headers and our own columns included.
- XLSX: an openpyxl write-only workbook. Every str is a string cell, never a formula or an error
  value; characters XML cannot hold are dropped, a CR is kept (as `_x000D_`); numbers and dates
  stay typed (except ints with more than Excel's 15 significant digits, written as text so no
  digit is lost). `text_columns` are text cells with number format "@". Bold header, frozen
  header row, an auto-filter over the data, column widths from the first rows, coloured status
  cells and an optional summary sheet with bar charts.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import errno
import fcntl
import functools
import io
import math
import os
import re
import stat
import tempfile
import unicodedata
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Final, Self, cast

from batch_enricher.errors import OutputError, UnsupportedFileError
from batch_enricher.models import Status

# openpyxl is imported when an XLSX writer is opened, not with this module: it costs ~0.2 s of
# CPU (numpy comes with it), as much as aiohttp, and a CSV run never needs it.
if TYPE_CHECKING:
    from openpyxl import Workbook
    from openpyxl.cell.cell import Cell as XlCell
    from openpyxl.styles import Font, PatternFill
    from openpyxl.worksheet.worksheet import Worksheet

Cell = str | int | float | bool | datetime.datetime | datetime.date | datetime.time | None

#: First characters that make a spreadsheet treat a text cell as a formula (OWASP).
_DANGEROUS: Final = frozenset("=+-@\t\r\n")
#: The same, at the start of any cell of a row joined with NUL (a false hit only costs speed).
_DANGEROUS_START: Final = re.compile("\x00[=+\\-@\t\r\n]")
#: Cell types the csv module writes exactly as `_text` would (str(int), "" for None); bool and
#: float are not among them (csv would write True and 1.0).
_CSV_NATIVE: Final = frozenset({str, int, type(None)})
_TEXT_ONLY: Final = {str}

#: Light fills with Excel's matching dark text colours ("Good", "Neutral", "Bad" styles).
_GREEN: Final = ("C6EFCE", "006100")
_AMBER: Final = ("FFEB9C", "9C5700")
_RED: Final = ("FFC7CE", "9C0006")
_STATUS_COLOURS: Final[dict[str, tuple[str, str]]] = {
    Status.OK.value: _GREEN,
    Status.INVALID.value: _AMBER,
    Status.REJECTED.value: _AMBER,
    Status.FAILED.value: _RED,
    Status.SKIPPED.value: _RED,
}

#: Rows (header included) buffered to estimate column widths before the first row is written.
_WIDTH_SAMPLE_ROWS: Final = 200
_MIN_WIDTH: Final = 8
_MAX_WIDTH: Final = 60
#: Excel keeps 15 significant digits; ints with more are written as text so none is lost.
_MAX_EXACT_INT: Final = 10**15
#: Floats below this are exact integers when integral, so "1.0" can be written "1".
_MAX_EXACT_FLOAT: Final = 2.0**53
#: Rows of chart data per chart slot on the summary sheet (a default chart is ~15 rows high).
_CHART_ROWS: Final = 16

_EXCEL_MAX_STR: Final = 32767

_DELIMITERS: Final = {".csv": ",", ".tsv": "\t"}


def excel_keeps(value: int) -> bool:
    """Whether Excel holds every digit of the int as a number: at most 15 significant ones.

    A big number read from a spreadsheet is one Excel held (a double shown to 15 digits:
    6222021234567890000) and goes back as the number it was; an int with more digits (an ID
    typed into a CSV-made cell) would lose some and is written as text.

    >>> excel_keeps(6222021234567890000), excel_keeps(110101199003078034), excel_keeps(-42)
    (True, False, True)
    """
    if -_MAX_EXACT_INT < value < _MAX_EXACT_INT:
        return True
    digits = str(abs(value)).rstrip("0")
    return len(digits) <= 15 and abs(value) < 10**308


#: In every temporary file's name, after `.<target name>.`: how a sweep knows a file is ours.
_TEMP_TAG: Final = "batch-enricher-"
_TEMP_SUFFIX: Final = ".tmp"
#: openpyxl's row spill file for an XLSX sheet (also ends in `_TEMP_SUFFIX`).
_SPILL_SUFFIX: Final = ".sheet.tmp"
#: New names to try when a sweep took the lock of a file between its creation and our lock.
_CREATE_TRIES: Final = 5


@dataclass
class SummarySheet:
    """The run summary as an XLSX sheet: a two-column table and one bar chart per band count."""

    title: str
    rows: list[tuple[str, object]] = field(default_factory=list)
    charts: list[tuple[str, list[tuple[str, int]]]] = field(default_factory=list)


def open_writer(
    path: Path,
    headers: Sequence[str],
    *,
    text_columns: Collection[int] = (),
    status_column: int | None = None,
    escape_formulas: bool = True,
    sheet_title: str = "Sheet1",
    preamble: Sequence[Sequence[Cell]] = (),
    number_formats: Iterator[Sequence[str | None]] | None = None,
) -> Writer:
    """Open a streaming writer for `path` (.csv, .tsv or .xlsx) and write the header row.

    `preamble` rows (a title above the header, say) are written first, as they are.
    `number_formats` (XLSX only) gives, for each row written (preamble, header, then data rows),
    the number format of each of its cells (None: General); numbers and dates get theirs.

    >>> with open_writer(Path("out.csv"), ["name"]) as w:  # doctest: +SKIP
    ...     w.write_row(["=1+1"])
    ...     w.commit()
    """
    suffix = path.suffix.lower()
    if suffix not in _DELIMITERS and suffix != ".xlsx":
        raise UnsupportedFileError(
            f"cannot write {path.name!r}: output must end in .csv, .tsv or .xlsx"
        )
    fd, temp = _create_temp(path)
    writer: Writer
    fd_open = True
    try:
        if suffix == ".xlsx":
            fd_open = False
            os.close(fd)  # openpyxl reopens the file itself at commit; `temp` keeps the lock
            writer = _XlsxWriter(
                path,
                temp,
                headers,
                text_columns=frozenset(text_columns),
                status_column=status_column,
                sheet_title=sheet_title,
                header_index=len(preamble),
                number_formats=number_formats,
            )
        else:
            # UTF-8 with a BOM, so Excel opens it as UTF-8. The BOM is written by hand: the
            # "utf-8-sig" codec is pure Python and runs on every row, plain "utf-8" runs in C.
            stream = open(fd, "w", encoding="utf-8", newline="", buffering=1 << 20)  # noqa: SIM115
            fd_open = False  # the stream owns it now, and the writer owns the stream
            stream.write("\ufeff")
            writer = _CsvWriter(path, temp, stream, _DELIMITERS[suffix], escape_formulas)
    except BaseException:
        if fd_open:
            os.close(fd)
        temp.remove()
        raise
    with on_error(writer.abort):
        for row in preamble:
            writer.write_row(row)
        writer.write_row(headers)
    return writer


@dataclass(frozen=True)
class Tail:
    """Cells that end many rows (one person's result columns), prepared once by `Writer.tail`.

    `write_row(cells, tail)` writes `cells + tail.cells`, byte for byte as `write_row` would, but
    a CSV writer converts, escapes and quotes the tail's cells only once, not on every row.
    """

    cells: tuple[Cell, ...]
    text: str = ""  # CSV: the cells as written, delimiter first and line ending last
    dialect: tuple[str, bool] | None = None  # (delimiter, escape) that `text` was written with


class Writer:
    """A streaming output file: `write_row` as often as needed, then `commit` or `abort`."""

    def __init__(self, target: Path, temp: _TempFile) -> None:
        self.path = target
        self._temp = temp
        self._closed = False

    def write_row(self, cells: Sequence[Cell], tail: Tail | None = None) -> None:
        """Write one output row: `cells`, followed by the tail's cells if one is given."""
        raise NotImplementedError

    def tail(self, cells: Sequence[Cell]) -> Tail:
        """Prepare cells that will end many rows (see `Tail`).

        >>> # ok = writer.tail(result_cells); writer.write_row(original_cells, ok)
        """
        return Tail(tuple(cells))

    def commit(self, summary: SummarySheet | None = None) -> None:
        """Finish the file and move it into place atomically (`summary` is used for XLSX only)."""
        self._check_open()
        try:
            self._finish(summary)
            os.replace(self._temp.path, self.path)
        except OSError as exc:
            self.abort()
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self._temp.release()  # renamed: the lock now only guards the finished output
        self._discard()
        _fsync_dir(self.path.parent)

    def abort(self) -> None:
        """Drop everything written so far; the target is left as it was."""
        if self._closed:
            return
        self._closed = True
        self._discard()
        self._temp.remove()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()  # a no-op after commit

    def _check_open(self) -> None:
        if self._closed:
            raise OutputError(f"output {self.path.name!r} is already committed or aborted")

    def _finish(self, summary: SummarySheet | None) -> None:
        """Write everything still pending to the temp file and fsync it."""
        raise NotImplementedError

    def _discard(self) -> None:
        """Release open handles and remove any temporary file besides `_temp` (after a commit
        too: then only what is left over)."""
        raise NotImplementedError


class _CsvWriter(Writer):
    """CSV or TSV through the stdlib csv module, one list comprehension per row."""

    def __init__(
        self, target: Path, temp: _TempFile, stream: IO[str], delimiter: str, escape: bool
    ) -> None:
        super().__init__(target, temp)
        self._stream = stream
        self._csv = csv.writer(stream, delimiter=delimiter, lineterminator="\r\n")
        # The same, without the line ending, for the cells written ahead of a prepared tail.
        self._csv_head = csv.writer(stream, delimiter=delimiter, lineterminator="")
        self._delimiter = delimiter
        self._escape = escape
        self._dialect = (delimiter, escape)  # what a tail's text was written with
        self._joiner, self._joiner_width = "", 0  # "\x00%s" once per cell of the last row

    def write_row(self, cells: Sequence[Cell], tail: Tail | None = None) -> None:
        """Write one output row as text cells (then the tail's, already converted)."""
        if self._closed:
            self._check_open()
        try:
            if tail is not None:
                if tail.dialect == self._dialect and _plain_head(cells):
                    self._csv_head.writerow(cells)
                    self._stream.write(tail.text)
                    return
                cells = [*cells, *tail.cells]
            self._csv.writerow(self._converted(cells))
        except OSError as exc:
            self.abort()
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def tail(self, cells: Sequence[Cell]) -> Tail:
        """Prepare cells that will end many rows: converted and quoted once, here."""
        buffer = io.StringIO()
        # A plain first cell stands for whatever precedes the tail; csv quotes cell by cell, so
        # what follows it is exactly what these cells become at the end of any longer row.
        csv.writer(buffer, delimiter=self._delimiter, lineterminator="\r\n").writerow(
            self._converted(["x", *cells])
        )
        return Tail(tuple(cells), buffer.getvalue()[1:], self._dialect)

    def _converted(self, cells: Sequence[Cell]) -> Sequence[object]:
        """The row as the csv module should get it: text cells, escaped where needed."""
        # Fast path, all in C: a row whose cells are all str, int or None (the csv module writes
        # those exactly as `_text` would) and where no text cell starts with a dangerous
        # character goes to the csv module as is. The test joins the cells with NUL: a plain
        # join for text only, else one %-format (a negative int then looks dangerous, which only
        # costs the slow path). Enrich's rows always hold ints or None in the result columns.
        kinds = set(map(type, cells))
        if kinds <= _CSV_NATIVE:
            if kinds == _TEXT_ONLY:
                joined = "\x00".join(("", *cells))  # type: ignore[arg-type]
            else:
                if len(cells) != self._joiner_width:
                    self._joiner, self._joiner_width = "\x00%s" * len(cells), len(cells)
                joined = self._joiner % tuple(cells)
            if _DANGEROUS_START.search(joined) is None:
                return cells
        if self._escape:
            return [
                ("'" + c if c[:1] in _DANGEROUS else c) if type(c) is str else _escaped_text(c)
                for c in cells
            ]
        return [c if type(c) is str else _text(c) for c in cells]

    def _finish(self, summary: SummarySheet | None) -> None:
        self._stream.flush()
        os.fsync(self._stream.fileno())
        self._stream.close()

    def _discard(self) -> None:
        # The file is being thrown away: a failed flush changes nothing.
        with contextlib.suppress(OSError):
            self._stream.close()


class _XlsxWriter(Writer):
    """An openpyxl write-only workbook; the first rows are held back to size the columns."""

    def __init__(
        self,
        target: Path,
        temp: _TempFile,
        headers: Sequence[str],
        *,
        text_columns: frozenset[int],
        status_column: int | None,
        sheet_title: str,
        header_index: int = 0,
        number_formats: Iterator[Sequence[str | None]] | None = None,
    ) -> None:
        super().__init__(target, temp)
        self._formats = number_formats
        from openpyxl import Workbook
        from openpyxl.cell import WriteOnlyCell
        from openpyxl.styles import Font, PatternFill

        self._new_cell = WriteOnlyCell
        self._spills: list[_TempFile] = []  # openpyxl's row spill files, one per sheet
        self._wb = Workbook(write_only=True)
        self._ws = _sheet(self._wb, sheet_title)
        self._ncols = len(headers)
        self._text_columns = text_columns
        self._status_column = status_column
        self._pending: list[list[Cell]] | None = []  # None once the sample has been flushed
        self._rows = 0
        self._header_index = header_index  # 0-based: rows above it are a preamble, kept as is
        self._bold = Font(bold=True)
        self._status_styles = {
            status: (PatternFill("solid", fgColor=fill), Font(color=font))
            for status, (fill, font) in _STATUS_COLOURS.items()
        }

    def write_row(self, cells: Sequence[Cell], tail: Tail | None = None) -> None:
        """Write one output row with typed cells."""
        self._check_open()
        if tail is not None:
            cells = [*cells, *tail.cells]
        self._rows += 1
        self._ncols = max(self._ncols, len(cells))
        if self._pending is not None:
            self._pending.append(list(cells))
            if len(self._pending) >= _WIDTH_SAMPLE_ROWS:
                self._flush_sample()
            return
        self._append(cells, header=False)

    def _flush_sample(self) -> None:
        """Size the columns and freeze the header (both must precede the first row), then write."""
        from openpyxl.utils import get_column_letter

        pending, self._pending = self._pending or [], None
        ws = self._ws
        for index, width in enumerate(
            _column_widths(pending[self._header_index :], self._ncols), 1
        ):
            ws.column_dimensions[get_column_letter(index)].width = width
        ws.freeze_panes = f"A{self._header_index + 2}"
        self._spill_beside(ws)
        for number, row in enumerate(pending):
            if number < self._header_index:
                formats = self._row_formats()
                self._ws.append(
                    [self._formatted(v, formats[i] if i < len(formats) else None)
                     for i, v in enumerate(row)]
                )  # fmt: skip
            else:
                self._append(row, header=number == self._header_index)

    def _row_formats(self) -> Sequence[str | None]:
        """The next row's number formats (nothing once they run out, or without any)."""
        return () if self._formats is None else next(self._formats, ())

    def _formatted(self, value: Cell, number_format: str | None) -> object:
        """`_typed`, with the number format a number or date had in the input."""
        if number_format is None or isinstance(value, str | bool) or value is None:
            return self._typed(value)
        typed = self._typed(value)
        if isinstance(typed, str):  # a number written as text keeps no number format
            return typed
        if isinstance(typed, int | float | datetime.date | datetime.time):
            cell = self._new_cell(self._ws, value=typed)  # type: ignore[arg-type]
        else:
            cell = cast("XlCell", typed)  # already a cell: a float written as its repr
        cell.number_format = number_format
        return cell

    def _append(self, cells: Sequence[Cell], *, header: bool) -> None:
        out: list[object] = []
        formats = self._row_formats()
        for index, value in enumerate(cells):
            if header:
                out.append(self._styled(_xlsx_text(value), font=self._bold))
            elif index in self._text_columns:
                out.append(self._styled(_xlsx_text(value), number_format="@"))
            elif index == self._status_column and isinstance(value, str):
                fill, font = self._status_styles.get(str(value), (None, None))
                out.append(self._styled(_xlsx_text(value), fill=fill, font=font))
            elif index < len(formats):
                out.append(self._formatted(value, formats[index]))
            else:
                out.append(self._typed(value))
        try:
            self._ws.append(out)
        except OSError as exc:
            self.abort()
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def _typed(self, value: Cell) -> object:
        """A plain value openpyxl may write as is, or a cell forced to the type we mean."""
        if isinstance(value, str):
            text = _excel_string(str(value))
            # openpyxl would store these as a formula or an error value: force a string cell.
            if text[:1] == "=" or text in _error_codes():
                return self._styled(text)
            return text
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, int):
            return value if excel_keeps(value) else str(value)
        if isinstance(value, float):
            if not math.isfinite(value):
                return repr(value)
            if float(f"{value:.16g}") == value:
                return value
            # openpyxl writes 16 significant digits ("%.16g"), one short of some doubles: an
            # .xls's 3586.1783646399995 would come back 3586.178364639999. Its shortest
            # round-trip text instead, in a number cell.
            cell = self._new_cell(self._ws, value=repr(value))
            cell.data_type = "n"
            return cell
        if isinstance(value, datetime.datetime | datetime.time) and value.tzinfo is not None:
            return value.isoformat()  # Excel has no time zones; keep the offset as text
        return value

    def _styled(
        self,
        text: str | None,
        *,
        font: Font | None = None,
        fill: PatternFill | None = None,
        number_format: str | None = None,
    ) -> XlCell:
        cell = self._new_cell(self._ws, value=text)
        if text is not None:
            cell.data_type = "s"  # never a formula, whatever the text starts with
        if font is not None:
            cell.font = font
        if fill is not None:
            cell.fill = fill
        if number_format is not None:
            cell.number_format = number_format
        return cell

    def _finish(self, summary: SummarySheet | None) -> None:
        from openpyxl.utils import get_column_letter

        if self._pending is not None:
            self._flush_sample()
        # The filter is written after the rows, so the final row count can still go in here.
        last = get_column_letter(max(self._ncols, 1))
        top = self._header_index + 1
        self._ws.auto_filter.ref = f"A{top}:{last}{max(self._rows, top)}"
        if summary is not None:
            self._add_summary(summary)
        with open(self._temp.path, "wb") as stream:
            self._wb.save(stream)
            stream.flush()
            os.fsync(stream.fileno())

    def _add_summary(self, summary: SummarySheet) -> None:
        from openpyxl.chart import BarChart, Reference

        ws = _sheet(self._wb, _xml_safe(summary.title)[:31] or "Summary")
        labels = [summary.title, *(label for label, _ in summary.rows)]
        labels += [t for t, bands in summary.charts for t in (t, *(b for b, _ in bands))]
        ws.column_dimensions["A"].width = min(
            _MAX_WIDTH, max(_MIN_WIDTH, *(_display_width(x) + 2 for x in labels))
        )
        ws.column_dimensions["B"].width = 14
        self._spill_beside(ws)
        ws.append([self._styled(_xlsx_text(summary.title), font=self._bold)])
        row = 1
        for label, value in summary.rows:
            ws.append([self._styled(_xlsx_text(label)), self._typed(_as_cell(value))])
            row += 1
        # Chart data goes below the table in A:B; the charts sit to the right, one per slot.
        for number, (title, bands) in enumerate(summary.charts):
            ws.append([])
            ws.append([self._styled(_xlsx_text(title), font=self._bold)])
            first = row + 3
            for band_label, count in bands:
                ws.append([self._styled(_xlsx_text(band_label)), count])
            row += 2 + len(bands)
            chart = BarChart()
            chart.title = title
            chart.legend = None
            # openpyxl 3.1 marks axes deleted by default, which hides the band labels in Excel.
            chart.x_axis.delete = False
            chart.y_axis.delete = False
            chart.add_data(Reference(ws, min_col=2, min_row=first, max_row=max(row, first)))
            chart.set_categories(Reference(ws, min_col=1, min_row=first, max_row=max(row, first)))
            ws.add_chart(chart, f"D{1 + number * _CHART_ROWS}")

    def _spill_beside(self, ws: Worksheet) -> None:
        """Make the sheet spill its rows to a temporary file of ours, beside the output.

        Call it after the column widths and panes are set and before the first row: it writes
        the sheet's opening XML, which openpyxl would otherwise do at the first `append`.
        """
        # A write-only sheet streams its rows to `create_temporary_file()`: a NamedTemporaryFile
        # named openpyxl.* in $TMPDIR, holding every ID number of the output until the save
        # copies it into the .xlsx. Removing it ourselves is not enough: after kill -9 nothing
        # can tell our openpyxl.* files from anyone else's, so they would stay for good.
        # Redirecting it is: `WorksheetWriter` takes the file as `out`, and a sheet whose
        # `_writer` is set uses it instead of creating its own (openpyxl 3.1's `_get_writer`).
        # The file is then one of our temporary files: beside the output, named for the sweep,
        # locked while we live. Registered in ALL_TEMP_FILES as openpyxl registers its own, so
        # the save's `cleanup()` removes it as usual (and openpyxl's exit hook on a normal exit).
        from openpyxl.worksheet._writer import ALL_TEMP_FILES, WorksheetWriter

        sheet: Any = ws  # `_writer` is in no type stub
        if sheet._writer is not None:  # openpyxl already made its own: nothing to redirect
            return
        fd, spill = _create_temp(self.path, _SPILL_SUFFIX)
        os.close(fd)  # openpyxl opens it by name; `spill` keeps the lock
        self._spills.append(spill)
        name = str(spill.path)
        ALL_TEMP_FILES.append(name)
        writer = WorksheetWriter(ws, out=name)
        writer.write_top()
        sheet._writer = writer

    def _discard(self) -> None:
        # The spill files hold personal data: remove them now, not at interpreter exit. After a
        # commit, the save has already removed them; only their locks are left to release.
        from openpyxl.worksheet._writer import ALL_TEMP_FILES

        for ws in self._wb.worksheets:
            sheet: Any = ws
            # Best effort, each on its own: only ends our own streams before their files go.
            if sheet._rows is not None:
                with contextlib.suppress(Exception):
                    sheet._rows.close()
            if sheet._writer is not None:
                with contextlib.suppress(Exception):
                    sheet._writer.close()
        for spill in self._spills:
            spill.remove()
            with contextlib.suppress(ValueError):
                ALL_TEMP_FILES.remove(str(spill.path))
        self._spills.clear()


def _sheet(workbook: Workbook, title: str) -> Worksheet:
    # A write-only sheet has column_dimensions, auto_filter, freeze_panes and add_chart at run
    # time (openpyxl copies them from Worksheet); the type stubs omit them, hence the cast.
    return cast("Worksheet", workbook.create_sheet(title))


def _text(value: Cell) -> str:
    """A non-str cell as CSV text (str subclasses such as `Status` pass through as str)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < _MAX_EXACT_FLOAT:
            return str(int(value))
        return repr(value)
    if isinstance(value, int):
        return str(value)
    return value.isoformat()


def _plain_head(cells: Sequence[Cell]) -> bool:
    """Whether `cells` may be written as they are ahead of a prepared tail.

    They must be text needing no escape and holding no line break (the csv module quotes a
    line break only when it writes the row's line ending itself), and more than one cell (a
    lone empty cell is written as "" on its own).
    """
    if len(cells) < 2:
        return False
    try:
        # In C: a non-text cell raises. The leading NUL puts the first cell like the others.
        joined = "\x00" + "\x00".join(cells)  # type: ignore[arg-type]
    except TypeError:
        return False
    # Plain `in` scans are memchr-fast; one regex with alternation measured 3x slower.
    return not ("\n" in joined or "\r" in joined or _DANGEROUS_START.search(joined))


def _escaped_text(value: Cell) -> str:
    text = _text(value)
    return "'" + text if isinstance(value, str) and text[:1] in _DANGEROUS else text


def _xlsx_text(value: Cell) -> str | None:
    """A cell as XLSX string content: CSV text with characters XML cannot hold removed."""
    return None if value is None else _excel_string(_text(value))


#: Excel reads `_xHHHH_` in a string as the character U+HHHH; a literal one is escaped as
#: `_x005F_xHHHH_` (ECMA-376 Part 1, 22.9.2.19).
EXCEL_ESCAPE: Final = re.compile(r"_(x[0-9A-Fa-f]{4}_)")


def _excel_string(text: str) -> str:
    """Text as openpyxl should write it for Excel to read it back as it was.

    openpyxl writes a CR as it is, and an XML parser reads that as LF: a CR goes as `_x000D_`,
    the escape Excel itself writes (python-calamine and LibreOffice read it too), and a literal
    `_xHHHH_` is escaped so it is not read as a character.
    """
    text = _xml_safe(text)
    if "_x" in text:
        text = EXCEL_ESCAPE.sub(r"_x005F_\1", text)
    if "\r" in text:
        text = text.replace("\r", "_x000D_")
    return text


def _xml_safe(text: str) -> str:
    # Control characters are invalid in XML: openpyxl refuses them, so drop them, not the row.
    illegal = _illegal_characters()
    if illegal.search(text):
        text = illegal.sub("", text)
    return text[:_EXCEL_MAX_STR]


@functools.cache
def _illegal_characters() -> re.Pattern[str]:
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

    return ILLEGAL_CHARACTERS_RE


@functools.cache
def _error_codes() -> frozenset[str]:
    from openpyxl.cell.cell import ERROR_CODES

    return frozenset(ERROR_CODES)


def _as_cell(value: object) -> Cell:
    if value is None or isinstance(
        value, str | int | float | datetime.datetime | datetime.date | datetime.time
    ):
        return value
    return str(value)


def _display_width(text: str) -> int:
    """Columns a text takes on screen: wide (CJK) characters count double; longest line wins."""
    return max(
        sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in line)
        for line in text.splitlines() or [""]
    )


def _column_widths(rows: Sequence[Sequence[Cell]], ncols: int) -> list[float]:
    widths = [_MIN_WIDTH] * ncols
    for row in rows:
        for index, value in enumerate(row):
            if value is not None:
                widths[index] = max(widths[index], _display_width(_text(value)) + 2)
    return [min(width, _MAX_WIDTH) for width in widths]


def write_text_atomically(path: Path, text: str) -> None:
    """Write a small UTF-8 text file the way outputs are written: 0600 temp file, fsync, rename.

    >>> # write_text_atomically(Path("run.json"), "{}\\n")
    """
    fd, temp = _create_temp(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp.path, path)
    except OSError as exc:
        temp.remove()
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        temp.remove()
        raise
    temp.release()
    _fsync_dir(path.parent)


class _TempFile:
    """A temporary file of ours beside an output, and the lock that marks it as live."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self._lock_fd = lock_fd  # -1 once released

    def release(self) -> None:
        """Drop the lock (the file is gone, or renamed into place)."""
        fd, self._lock_fd = self._lock_fd, -1
        if fd >= 0:
            os.close(fd)

    def remove(self) -> None:
        """Remove the file, then drop its lock."""
        _remove_quietly(self.path)
        self.release()


def sweep_temporary_files(target: Path) -> int:
    """Remove the temporary files that dead runs left beside `target`; returns how many went.

    Only files named as ours for this target and whose lock can be taken: a live run holds the
    lock on its own until it is done, so its files are never touched.

    >>> # sweep_temporary_files(Path("out/customers.enriched.xlsx"))
    """
    prefix = f".{target.name}.{_TEMP_TAG}"
    directory = target.parent
    try:
        names = [n for n in os.listdir(directory) if n.startswith(prefix)]
    except OSError:
        return 0  # no folder, no leftovers; a folder we cannot read is reported when writing
    removed = 0
    for name in names:
        if name.endswith(_TEMP_SUFFIX) and _remove_if_dead(directory / name):
            removed += 1
    return removed


def _remove_if_dead(path: Path) -> bool:
    # O_NOFOLLOW: a symlink named like ours is not ours. O_NONBLOCK: nor is a FIFO.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Locked: no run is writing it. Unlinked while locked, so the run that created it
        # (should it only now be taking its lock) finds it gone and makes another.
        if not _is_same_file(fd, path):
            return False
        path.unlink()
        return True
    except OSError:
        return False  # held by a live run (EWOULDBLOCK), gone already, or not ours to remove
    finally:
        os.close(fd)


def _is_same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the regular file open as `fd`."""
    try:
        named = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    held = os.fstat(fd)
    return stat.S_ISREG(held.st_mode) and (named.st_dev, named.st_ino) == (
        held.st_dev,
        held.st_ino,
    )


def _create_temp(target: Path, suffix: str = _TEMP_SUFFIX) -> tuple[int, _TempFile]:
    """A locked 0600 temp file beside `target`, so the final rename stays on one file system.

    Returns a descriptor to write through and the `_TempFile` (which holds the lock on its own
    descriptor, so closing the first keeps the file marked as live). Leftovers of dead runs for
    the same target are swept first.
    """
    directory = target.parent
    if not directory.is_dir():
        raise OutputError(f"output directory does not exist: {directory}")
    sweep_temporary_files(target)
    for _ in range(_CREATE_TRIES):
        try:
            fd, name = tempfile.mkstemp(
                prefix=f".{target.name}.{_TEMP_TAG}", suffix=suffix, dir=directory
            )
        except OSError as exc:
            raise OutputError(
                f"cannot write to output directory {directory}: {exc.strerror or exc}"
            ) from exc
        os.fchmod(fd, 0o600)  # mkstemp already uses 0600; be explicit, whatever the umask
        path = Path(name)
        lock_fd = os.dup(fd)
        if _lock_new(lock_fd, path):
            return fd, _TempFile(path, lock_fd)
        os.close(lock_fd)  # a sweep got to it first and removed it: take another name
        os.close(fd)
        _remove_quietly(path)
    raise OutputError(f"cannot create a temporary file in {directory}: it keeps disappearing")


def _lock_new(fd: int, path: Path) -> bool:
    """Lock a file we just created; False if a sweep took it in between (it is gone then)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        # Held: a sweep has it. Any other error: no flock on this file system, so no sweep can
        # lock the file either, and none removes it.
        return exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN)
    return _is_same_file(fd, path)


@contextlib.contextmanager
def on_error(action: Callable[[], None]) -> Iterator[None]:
    """Run `action` (an abort, a close) if the block raises, then re-raise."""
    try:
        yield
    except BaseException:
        action()
        raise


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; some file systems refuse, which costs only durability.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

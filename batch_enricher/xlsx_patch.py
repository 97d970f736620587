"""Excel in, the same workbook out: the input package, with the result columns added.

`patch_workbook` (and `PatchWriter`, the same as a `Writer`) writes a copy of an `.xlsx`/`.xlsm`
workbook in which the enriched sheet has the result columns appended and a Summary sheet is
added; nothing else changes. Every entry of the package except the ones that must change is
copied as it is, compressed bytes and all (other sheets, shared strings, themes, drawings,
macros), and the entries keep their order, so tools that identify a file by its first entries
see the output as they saw the input. The enriched
sheet's XML is streamed through `SheetRewriter`, which appends cells to rows and leaves
every other byte as it was: values, number formats, dates, fonts, fills, merged cells,
column widths, freeze panes, data validation, conditional formats, formulas and their cached
values. The small parts that must change (styles.xml, workbook.xml and its .rels,
[Content_Types].xml, docProps/app.xml) are edited in place, not re-serialised.

Memory is bounded: one buffer of rows of the sheet, the first rows' results (for the column
widths), and caches of rendered results. The rewritten sheet is deflated as it streams into
an anonymous temp file beside the output (mode 0600, gone when closed, about 13 MB per
100,000 rows); the archive is assembled from it, the input and the edited parts at the end.
Result cells are inline strings (so shared strings are never rewritten), typed and styled as
the XLSX writer does.

Rows are addressed by their 1-based sheet row numbers, in increasing order; a row that is not
in the XML (Excel leaves blank rows out) is created at its place; rows with no results are
left untouched.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import zipfile
import zlib
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Final, cast

from batch_enricher.errors import InputError, OutputError
from batch_enricher.sheets import open_zip
from batch_enricher.writer import (
    _WIDTH_SAMPLE_ROWS,
    Cell,
    SummarySheet,
    Tail,
    Writer,
    _column_widths,
    _create_temp,
    _TempFile,
    on_error,
)
from batch_enricher.xlsx_cells import CellRenderer, add_styles
from batch_enricher.xlsx_package import (
    CONTENT_TYPES,
    STYLES_TYPE,
    NewPart,
    app_with,
    content_types_with,
    free_id,
    free_part,
    free_title,
    read_package,
    rels_name,
    rels_with,
    rels_without,
    summary_parts,
    workbook_with,
)
from batch_enricher.xlsx_sheet import Filter, SheetRewriter
from batch_enricher.zip_writer import DeflateSpool, ZipWriter

#: Excel's limits: columns (XFD) and rows.
_MAX_COLUMN: Final = 16384
_MAX_ROW: Final = 1_048_576
#: zlib level of the rewritten sheet. On a 100,000-row sheet (82 MB of XML) level 2 takes
#: 0.4 s for 13.4 MB, the default 6 takes 1.7 s for 11.3 MB.
_SHEET_COMPRESSION: Final = 2
_WORKBOOK_TYPES: Final = (
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml",
    "application/vnd.ms-excel.sheet.macroEnabled.main+xml",
)
_MACRO_SUFFIXES: Final = frozenset({".xlsm"})


def patch_workbook(
    src: Path,
    dst: Path,
    *,
    sheet: str,
    header_row: int,
    first_col: int,
    headers: Sequence[str],
    results: Iterable[tuple[int, Sequence[Cell]]],
    text_columns: Collection[int] = (),
    status_column: int | None = None,
    summary: SummarySheet | None = None,
    macro_enabled: bool | None = None,
) -> None:
    """Write to `dst` the workbook `src` with result columns added to sheet `sheet`.

    `header_row` is the header's 1-based sheet row; the result block starts at 1-based column
    `first_col` with `headers`; `results` yields (1-based sheet row, result cells) in
    increasing row order. `text_columns` and `status_column` index the result cells (text
    with format "@"; coloured by status). `macro_enabled` makes the output an .xlsm package
    (True) or an .xlsx one, without the macros (False); None keeps the input's kind. On an
    error `dst` is left incomplete: give a temp file and rename it (as `PatchWriter` does).

    >>> patch_workbook(Path("in.xlsx"), Path("out.xlsx"), sheet="Sheet1", header_row=1,
    ...     first_col=4, headers=["status"], results=[(2, ["ok"])])  # doctest: +SKIP
    """
    with open(dst, "wb") as stream:
        patcher = _Patcher(
            src,
            stream,
            spool_dir=dst.parent,
            sheet=sheet,
            header_row=header_row,
            first_col=first_col,
            headers=headers,
            text_columns=text_columns,
            status_column=status_column,
            macro_enabled=macro_enabled,
        )
        with on_error(patcher.close):
            for row, cells in results:
                patcher.add(row, cells)
            patcher.finish(summary)


def check_workbook(
    src: Path,
    *,
    sheet: str,
    header_row: int,
    first_col: int,
    headers: Sequence[str],
    spool_dir: Path,
    macro_enabled: bool | None = None,
) -> None:
    """Raise InputError now if the patch `patch_workbook` would make of `src` cannot be made.

    The check is that patch with no result rows, written nowhere: every part the patch reads
    or edits is read (its CRC checked) and edited, and the sheet streams through the rewriter
    into a spool in `spool_dir` (0.4 s for a 100,000-row sheet). A workbook calamine reads can
    still fail here (a damaged part calamine never opens, a part in UTF-16): run it before
    anything is paid for, with the arguments the patch will get.
    """
    try:
        patcher = _Patcher(
            src,
            cast(IO[bytes], _Sink()),
            spool_dir=spool_dir,
            sheet=sheet,
            header_row=header_row,
            first_col=first_col,
            headers=headers,
            text_columns=(),
            status_column=0,
            macro_enabled=macro_enabled,
        )
        with on_error(patcher.close):
            patcher.finish(SummarySheet("Summary", [("rows", 0)], []))
    except InputError as exc:
        message = str(exc)
        if not message.startswith("cannot add results"):
            message = f"cannot add results to {src.name}: {message}"
        raise InputError(message) from None
    except (zipfile.BadZipFile, KeyError, ValueError, zlib.error, EOFError) as exc:
        raise InputError(
            f"cannot add results to {src.name}: the workbook is damaged ({exc}); open it in "
            "Excel and save it again, or write a .csv output"
        ) from None


class _Sink:
    """A write-only stream that keeps nothing (for `check_workbook`)."""

    def __init__(self) -> None:
        self._position = 0

    def write(self, data: bytes) -> int:
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        """Nothing to flush."""


class PatchWriter(Writer):
    """`patch_workbook` as a `Writer`: results pushed row by row, `commit` renames atomically."""

    def __init__(self, target: Path, temp: _TempFile, stream: IO[bytes], patcher: _Patcher) -> None:
        super().__init__(target, temp)
        self._stream = stream
        self._patcher = patcher
        self._next_row = patcher.header_row + 1

    def write_result(self, row: int, cells: Sequence[Cell] | Tail) -> None:
        """Add result cells (or a prepared tail's cells) to 1-based sheet row `row`."""
        self._check_open()
        with self._aborting():
            self._patcher.add(row, cells.cells if isinstance(cells, Tail) else cells)
        self._next_row = row + 1

    def write_row(self, cells: Sequence[Cell], tail: Tail | None = None) -> None:
        """Add results to the next sheet row (the row after the header, then the next...).

        With a `tail`, `cells` are the row's own cells, which stay as they are in the
        workbook, and only the tail's cells are added; without one, `cells` are the results.
        """
        self.write_result(self._next_row, tail.cells if tail is not None else cells)

    def _finish(self, summary: SummarySheet | None) -> None:
        self._patcher.finish(summary)
        self._stream.flush()
        os.fsync(self._stream.fileno())
        self._stream.close()

    def _discard(self) -> None:
        self._patcher.close()
        with contextlib.suppress(OSError):
            self._stream.close()

    @contextlib.contextmanager
    def _aborting(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            self.abort()
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        except BaseException:
            self.abort()
            raise


def open_patch_writer(
    target: Path,
    source: Path,
    *,
    sheet: str,
    header_row: int,
    first_col: int,
    headers: Sequence[str],
    text_columns: Collection[int] = (),
    status_column: int | None = None,
) -> PatchWriter:
    """A `PatchWriter` writing `source` with results into a temp file beside `target`.

    An .xlsm target keeps the workbook's macros; any other target is a plain workbook
    (Excel refuses an .xlsx that holds macros).
    """
    fd, temp = _create_temp(target)
    try:
        stream = os.fdopen(fd, "w+b")
    except BaseException:
        os.close(fd)
        temp.remove()
        raise
    try:
        patcher = _Patcher(
            source,
            stream,
            spool_dir=target.parent,
            sheet=sheet,
            header_row=header_row,
            first_col=first_col,
            headers=headers,
            text_columns=text_columns,
            status_column=status_column,
            macro_enabled=target.suffix.lower() in _MACRO_SUFFIXES,
        )
    except BaseException as exc:
        stream.close()
        temp.remove()
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from exc
        raise
    return PatchWriter(target, temp, stream, patcher)


class _Patcher:
    """The patch in progress: the sheet streaming into a spool, the archive written at `finish`."""

    def __init__(
        self,
        src: Path,
        stream: IO[bytes],
        *,
        spool_dir: Path,
        sheet: str,
        header_row: int,
        first_col: int,
        headers: Sequence[str],
        text_columns: Collection[int],
        status_column: int | None,
        macro_enabled: bool | None,
    ) -> None:
        width = len(headers)
        if not 1 <= header_row < _MAX_ROW or first_col < 1 or width < 1:
            raise ValueError("header_row and first_col are 1-based; headers must not be empty")
        if first_col + width - 1 > _MAX_COLUMN:
            raise OutputError(
                f"cannot add {width} columns to sheet {sheet!r} of {src.name}: "
                "it would pass Excel's last column (XFD)"
            )
        self.header_row = header_row
        self._last_row = header_row  # results come for rows below the header, in order
        self._src, self._out = src, stream
        self._first_col, self._width = first_col, width
        self._headers = list(headers)
        self._text_columns, self._status_column = text_columns, status_column
        self._macro_enabled = macro_enabled
        self._pending: list[tuple[int, tuple[Cell, ...]]] | None = []
        self._renderer: CellRenderer | None = None
        self._sheet_in: IO[bytes] | None = None
        self._spool: DeflateSpool | None = None
        try:
            self._zin: zipfile.ZipFile | None = open_zip(src)
        except OSError as exc:
            raise InputError(f"cannot read {src}: {exc.strerror or exc}") from exc
        except zipfile.BadZipFile:
            raise InputError(f"{src.name} is not a valid .xlsx workbook (not a zip file)") from None
        try:
            with self._reading():
                self._package = package = read_package(self._zin, sheet)
                styles = self._zin.read(package.styles) if package.styles else None
                self._styles_xml, self._styles = add_styles(styles)
                self._sheet_in = self._zin.open(package.sheet_part)
            self._spool = DeflateSpool(spool_dir, _SHEET_COMPRESSION)
            self._sheet = SheetRewriter(
                self._sheet_in,
                self._spool.write,
                header_row=header_row,
                first_col=first_col,
                width=width,
            )
        except BaseException:
            self.close()
            raise

    def add(self, row: int, cells: Sequence[Cell]) -> None:
        """Queue or write one row's result cells."""
        if len(cells) > self._width:
            raise ValueError(f"{len(cells)} result cells for {self._width} result columns")
        if not self._last_row < row <= _MAX_ROW:
            raise ValueError(f"results for row {row} after row {self._last_row}")
        self._last_row = row
        if self._pending is not None:
            self._pending.append((row, tuple(cells)))
            if len(self._pending) >= _WIDTH_SAMPLE_ROWS:
                self._start()
            return
        assert self._renderer is not None
        try:  # not `with self._reading()`: this runs once per row, and a try costs nothing
            self._sheet.add(row, self._renderer.row(cells))
        except _READ_ERRORS:
            with self._reading():
                raise

    def finish(self, summary: SummarySheet | None) -> None:
        """Write the archive: the input's entries in their order, edited or copied, then ours."""
        if self._pending is not None:
            self._start()
        with self._reading():
            found = self._sheet.finish()
        assert self._zin is not None and self._spool is not None
        self._spool.finish()
        package, zin = self._package, self._zin
        with self._reading():
            edited, new_parts = self._edited_parts(summary, found)
        dropped = self._dropped_parts()
        out = ZipWriter(self._out)
        with self._reading():
            for info in zin.infolist():
                name = info.filename.lower()
                if name in dropped:
                    continue
                if info.filename == package.sheet_part:
                    out.add_spool(info.filename, self._spool, info)
                elif name in edited:
                    out.add_bytes(info.filename, edited[name], info)
                else:
                    out.add_copy(zin, info)
            like = zin.getinfo(package.workbook)
            for part in new_parts:
                out.add_bytes(part.name, part.data, like)
        out.close()
        self.close()

    def close(self) -> None:
        """Release the input and the spool (after `finish`, or to give up)."""
        for handle in (self._sheet_in, self._spool, self._zin):
            if handle is not None:
                with contextlib.suppress(Exception):  # a failed close of a reader changes nothing
                    handle.close()
        self._sheet_in = self._spool = self._zin = None

    def _start(self) -> None:
        """Size the new columns from the first rows, then write the head and those rows."""
        pending, self._pending = self._pending or [], None
        widths = _column_widths([self._headers, *(cells for _, cells in pending)], self._width)
        last = max((row for row, _ in pending), default=self.header_row)
        with self._reading():
            self._sheet.start(widths, last)
            self._renderer = renderer = CellRenderer(
                self._styles,
                first_col=self._first_col,
                prefix=self._sheet.prefix,
                text_columns=self._text_columns,
                status_column=self._status_column,
                date1904=self._package.date1904,
            )
            self._sheet.header(renderer.header(self._headers))
            for row, cells in pending:
                self._sheet.add(row, renderer.row(cells))

    def _edited_parts(
        self, summary: SummarySheet | None, found: Filter | None
    ) -> tuple[dict[str, bytes], list[NewPart]]:
        """The new content of the parts that change (by lower-case name), and the new parts."""
        package = self._package
        assert self._zin is not None
        read = self._zin.read
        edited: dict[str, bytes] = {}
        new_parts: list[NewPart] = []
        rels_xml = read(package.workbook_rels)
        rel_additions: list[tuple[str, str, str]] = []
        workbook_dir = posixpath.dirname(package.workbook)
        if package.styles is not None:
            edited[package.styles.lower()] = self._styles_xml
        else:  # a workbook without styles: ours become its styles part
            # openpyxl looks for xl/styles.xml by name, whatever the relationships say
            name = posixpath.join(workbook_dir, "styles.xml")
            if name.lower() in package.names:
                _, name = free_part(package.names, posixpath.join(workbook_dir, "styles{}.xml"))
            new_parts.append(NewPart(name, self._styles_xml, STYLES_TYPE))
            target = posixpath.relpath(name, workbook_dir)
            rel_additions.append((free_id(rels_xml), f"{package.rel_base}/styles", target))
        new_sheet = None
        if summary is not None:
            title = free_title(package.sheet_titles, summary.title)
            _, part = free_part(package.names, "xl/worksheets/sheet{}.xml")
            new_parts += summary_parts(
                summary, package=package, title=title, sheet_name=part, styles=self._styles
            )
            rid = free_id(rels_xml, [rid for rid, _, _ in rel_additions])
            target = posixpath.relpath(part, workbook_dir)
            rel_additions.append((rid, f"{package.rel_base}/worksheet", target))
            new_sheet = (title, _next_sheet_id(read(package.workbook)), rid)
        edited[package.workbook.lower()] = workbook_with(
            read(package.workbook),
            rel_ns=package.rel_base,
            new_sheet=new_sheet,
            filter_name=(
                None if found is None else (package.sheet_position, package.sheet_title, found.ref)
            ),
        )
        dropped = self._dropped_parts()
        if dropped:
            rels_xml = rels_without(rels_xml, dropped, package.workbook.lower())
        edited[package.workbook_rels.lower()] = rels_with(rels_xml, rel_additions)
        content_types = content_types_with(
            read(package.names[CONTENT_TYPES.lower()]),
            [(p.name, p.content_type) for p in new_parts if p.content_type is not None],
            without=dropped,
        )
        edited[CONTENT_TYPES.lower()] = _with_workbook_type(content_types, self._macro_enabled)
        if package.app is not None and new_sheet is not None:
            edited[package.app.lower()] = app_with(
                read(package.app), package.sheet_title, new_sheet[0]
            )
        return edited, new_parts

    def _dropped_parts(self) -> frozenset[str]:
        """Lower-case names of the macro parts to leave out (for a plain .xlsx output)."""
        if self._macro_enabled is not False:
            return frozenset()
        names = {part.lower() for part in self._package.macro_parts}
        return frozenset(names | ({rels_name(n) for n in names} & set(self._package.names)))

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """Name the input in what goes wrong while reading it."""
        try:
            yield
        except InputError as exc:
            raise InputError(f"cannot add results to {self._src.name}: {exc}") from None
        except (zipfile.BadZipFile, zlib.error, EOFError, UnicodeDecodeError) as exc:
            raise InputError(
                f"cannot add results to {self._src.name}: the workbook is corrupt ({exc})"
            ) from None


_READ_ERRORS: Final = (InputError, zipfile.BadZipFile, zlib.error, EOFError, UnicodeDecodeError)


def _next_sheet_id(workbook: bytes) -> int:
    ids = [int(x) for x in re.findall(rb"\ssheetId\s*=\s*[\"'](\d+)[\"']", workbook)]
    return max(ids, default=0) + 1


def _with_workbook_type(content_types: bytes, macro_enabled: bool | None) -> bytes:
    """The workbook's main content type made macro-enabled or plain, as the output's kind."""
    if macro_enabled is None:
        return content_types
    plain, macro = (t.encode() for t in _WORKBOOK_TYPES)
    return content_types.replace(*((plain, macro) if macro_enabled else (macro, plain)))

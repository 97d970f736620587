"""Streaming input: CSV/TSV text, XLSX and XLS read as physical rows of cells, nothing dropped.

`open_source` checks the file, picks the encoding, delimiter or sheet, and finds the header
row; a `Source` then streams the rows again from the top on every call (the tool reads each
input twice). The contract:

- Rows are numbered as the user sees them: the sheet row for xlsx/xls, the record number for
  CSV (a record may span lines inside quotes), from 1, counting the rows above the header.
- `Source.header_row` is the header's row number: the first of the first 20 rows that holds
  the name, ID and mobile columns (`columns.find_header`; the override names in `names`
  count), or the row `header_row=` names. `Source.headers` is that row as text and
  `Source.columns` the mapped columns. Without `names`, a file where no row qualifies falls
  back to its first non-empty row (`columns` None): for callers that map columns themselves.
- `Source.preamble()` is the rows above the header, as read (a title such as "2024年1月客户名单").
- `Source.rows()` yields every row after the header, in order: blank and whitespace-only rows
  as they are (an empty list, or empty cells), rows shorter or longer than the header as they
  are (a cell past the header's last column is kept). `Source.numbered_rows()` yields the same
  rows as `(row number, cells)`.
- `Source.head(n)` is the first n rows of `rows()`, the first `HEAD_ROWS` of them kept from
  the open (a workbook is loaded whole for every pass).
- `Source.width` is the widest row of the file (preamble and header included), known after the
  first full pass (reading it earlier makes one).
- A CSV read with replacement markers (`Source.damaged`, see `encoding.py`) has U+FFFD where
  bytes did not decode; `damaged_cell(row)` gives the first damaged column of a row (U+FFFD or
  a NUL) and `Source.damage_reason(number, row)` the one-line reason to mark the row invalid
  with. Such a row must never be sent.

Formats:
- CSV/TSV (`.csv`, `.tsv`, `.txt`): every cell is text (stdlib csv, field size limited only by
  memory). Encoding: the `encoding` argument (read strictly), else chosen from the whole file
  (`encoding.choose`). Delimiter: tab for `.tsv`; else the one of comma, tab and semicolon
  under which a header row is found in the first rows, else the one that splits the first
  non-empty row into most fields.
- XLSX (`.xlsx`, `.xlsm`) and XLS: `sheets.py` (python-calamine; cells keep their Python types:
  a numeric ID cell must stay recognisable as one).

Non-regular files (FIFOs, devices) are refused before they are opened (a FIFO would block).
Every failure is an `InputError` with a one-line message naming the file, never cell contents.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import itertools
import os
import stat
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, cast

from batch_enricher import encoding as text_encoding
from batch_enricher import sheets
from batch_enricher.columns import (
    HEADER_SEARCH_ROWS,
    ColumnMap,
    ColumnNames,
    find_columns,
    find_header,
)
from batch_enricher.errors import ColumnError, InputError, UnsupportedFileError
from batch_enricher.sheets import Cell

__all__ = ["FORMATS", "Cell", "Source", "damaged_cell", "open_source"]

_Records = Generator[list[Cell], None, None]

#: File extensions we read, and the reader each one uses.
FORMATS: Final[dict[str, str]] = {
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",
    ".xlsx": "xlsx",
    ".xlsm": "xlsx",
    ".xls": "xls",
}

#: How much text decides the delimiter.
SAMPLE_CHARS: Final = 1 << 16
#: Rows after the header that `open_source` keeps for `Source.head`.
HEAD_ROWS: Final = 1000
#: Candidate delimiters; on a tie the earlier one wins.
DELIMITERS: Final = (",", "\t", ";")


def _memory_bound_field_limit() -> int:
    """The longest CSV cell we accept: a 32nd of the machine's memory, in characters.

    The csv module holds a cell as 4-byte characters while it reads it; a cell that big is an
    unclosed quote swallowing the file, not data. (Its default, 128 KiB, refuses valid cells.)
    """
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        memory = 4 << 30
    return max(1 << 20, min(memory // 32, (1 << 31) - 1))


#: The csv module's field size limit while we read (`_memory_bound_field_limit`).
FIELD_LIMIT: Final = _memory_bound_field_limit()


@dataclass
class Source:
    """An opened input: its format, header row, and how to stream its rows again."""

    path: Path
    format: str  # "csv" | "xlsx" | "xls"
    headers: list[str] = field(default_factory=list)
    header_row: int = 1  # 1-based row number of the header
    columns: ColumnMap | None = None  # the name/ID/mobile columns, when found at open
    encoding: str | None = None  # csv only: the codec used (e.g. "utf-8-sig", "gb18030")
    delimiter: str | None = None  # csv only
    sheet: str | None = None  # xlsx/xls only: the sheet's name
    damaged: bool = False  # csv only: some bytes did not decode (read as U+FFFD) or are NUL
    strict_ooxml: bool = False  # xlsx only: saved as Strict Open XML
    _decoding: text_encoding.Decoding | None = field(default=None, repr=False)
    _sheet: sheets.Sheet | None = field(default=None, repr=False)
    _preamble: list[list[Cell]] = field(default_factory=list, repr=False)
    _width: int | None = field(default=None, repr=False)
    _head: list[list[Cell]] = field(default_factory=list, repr=False)
    _head_complete: bool = field(default=False, repr=False)  # `_head` holds every row

    def preamble(self) -> list[list[Cell]]:
        """The rows above the header row, as read."""
        return [list(row) for row in self._preamble]

    def head(self, count: int) -> list[list[Cell]]:
        """The first `count` rows after the header, as `rows()` gives them.

        Up to `HEAD_ROWS` come from what `open_source` read; more cost a pass of their own.
        """
        if count <= len(self._head) or self._head_complete:
            return [list(row) for row in self._head[:count]]
        rows = self.rows()
        try:
            return list(itertools.islice(rows, count))
        finally:
            rows.close()

    def rows(self) -> Generator[list[Cell], None, None]:
        """Every row after the header, from the top of the file on each call (see module)."""
        records = self._records()
        widest = max([len(self.headers), *map(len, self._preamble)])
        try:
            for row in itertools.islice(records, self.header_row, None):
                if len(row) > widest:
                    widest = len(row)
                yield row
            self._width = widest  # a full pass: now the widest row is known
        finally:
            records.close()  # closes the file or workbook even if the caller stops early

    def numbered_rows(self) -> Iterator[tuple[int, list[Cell]]]:
        """`rows()` with each row's 1-based row number (sheet row, or CSV record)."""
        return enumerate(self.rows(), start=self.header_row + 1)

    @property
    def width(self) -> int:
        """The widest row of the file, header and preamble included (may cost a full pass)."""
        if self._width is None:
            for _ in self.rows():
                pass
        assert self._width is not None
        return self._width

    def damaged_cell(self, row: Sequence[Cell]) -> int | None:
        """0-based column of the row's first damaged cell (see `damaged_cell`), or None."""
        return damaged_cell(row)

    def damage_reason(self, number: int, row: Sequence[Cell]) -> str | None:
        """Why the row cannot be sent, if a cell is damaged: a one-line reason, else None.

        The reason names the row, the column and its header; never the cell's contents.
        """
        column = damaged_cell(row)
        if column is None:
            return None
        header = self.headers[column].strip() if column < len(self.headers) else ""
        where = f"row {number}, column {column + 1}" + (f" ({header})" if header else "")
        cell = cast(str, row[column])
        if "\x00" in cell:
            what = "holds a NUL byte (the file is damaged)"
        elif self.damaged:
            label = self._decoding.label if self._decoding is not None else self.encoding
            what = f"bytes that are not valid {label} (a damaged or mixed encoding)"
        else:
            what = "holds U+FFFD, the mark of a character lost before this file was saved"
        return f"{where}: {what}; fix the cell or pass --encoding"

    def _records(self) -> _Records:
        """Every row of the file from row 1."""
        if self.format == "csv":
            assert self.encoding is not None and self.delimiter is not None
            return _csv_records(self.path, self._text(), self.delimiter)
        assert self._sheet is not None
        return sheets.sheet_rows(self.path, self.format, self._sheet)

    def _text(self) -> text_encoding.Decoding:
        if self._decoding is not None:
            return self._decoding
        assert self.encoding is not None
        return text_encoding.Decoding(self.encoding, self.encoding)


def damaged_cell(row: Sequence[Cell]) -> int | None:
    """0-based column of the first text cell holding U+FFFD or a NUL, or None.

    >>> damaged_cell(["张三", "李\\ufffd", "x"])
    1
    """
    try:
        joined = "\x1f".join(cast(Sequence[str], row))  # CSV rows: all text, checked in C
    except TypeError:
        pass
    else:
        if "\ufffd" not in joined and "\x00" not in joined:
            return None
    for column, cell in enumerate(row):
        if isinstance(cell, str) and ("\ufffd" in cell or "\x00" in cell):
            return column
    return None


def open_source(
    path: Path,
    *,
    sheet: str | int | None = None,
    encoding: str | None = None,
    header_row: int | None = None,
    names: ColumnNames | None = None,
) -> Source:
    """Open an input file and find its header row.

    `sheet` (name or 0-based index; a str of digits that names no sheet is an index) applies
    to xlsx/xls, `encoding` to CSV; each is ignored for the other format. `header_row` (1-based)
    names the header row instead of searching for it; `names` gives the header texts of the
    name/ID/mobile columns (`--name-col` ...) and makes a missing header an error.
    Raises InputError (ColumnError when no header row is found, UnsupportedFileError for an
    unknown extension) with a one-line message.
    """
    path = Path(path)
    if header_row is not None and header_row < 1:
        raise InputError(f"--header-row must be 1 or more, not {header_row}")
    fmt = _format_of(path)
    if fmt == "csv":
        source = _open_csv(path, encoding, header_row, names)
    else:
        chosen = sheets.choose_sheet(path, fmt, sheet)
        source = Source(path, fmt, sheet=chosen.name, strict_ooxml=chosen.strict, _sheet=chosen)
    _find_header(source, header_row, names)
    return source


def _format_of(path: Path) -> str:
    """Check that the path is a readable regular file of a known kind; return its format."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{path} is a directory, not a file")
    if not stat.S_ISREG(mode):
        # Opening a FIFO blocks until someone writes to it; a device may never end.
        raise InputError(
            f"{path} is not a regular file (a pipe, device or socket): save the data to a "
            "file and pass that"
        )
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(FORMATS)
        raise UnsupportedFileError(f"{path}: unsupported file type (use one of {known})")
    try:
        with path.open("rb") as f:
            head = f.read(1024)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    if not head:
        raise InputError(f"{path} is empty (0 bytes)")
    if fmt == "xls":
        return _xls_by_content(path, head)
    return fmt


def _xls_by_content(path: Path, head: bytes) -> str:
    """What an `.xls` really is: bank and CRM exports often give other things that name."""
    if head.startswith(b"PK\x03\x04"):
        return "xlsx"  # a newer workbook saved under the old name: read it as what it is
    if head.lstrip().lower().startswith((b"<", b"\xef\xbb\xbf<")):
        raise InputError(
            f"{path} is an HTML page saved with an .xls name (some bank and CRM exports are): "
            "open it in Excel and save it as .xlsx or .csv"
        )
    return "xls"


def _header_text(cell: Cell) -> str:
    """A header cell as text (Excel headers may be numbers or dates)."""
    if cell is None:
        return ""
    if isinstance(cell, dt.date | dt.time):
        return cell.isoformat()
    return str(cell)


def _texts(row: Sequence[Cell]) -> list[str]:
    return [_header_text(cell) for cell in row]


def _is_empty(row: Sequence[Cell]) -> bool:
    return all(cell is None or (isinstance(cell, str) and not cell.strip()) for cell in row)


def _overrides(names: ColumnNames | None) -> dict[str, str | None]:
    names = names or ColumnNames()
    return {"realname": names.realname, "idcard": names.idcard, "mobile": names.mobile}


def _find_header(source: Source, header_row: int | None, names: ColumnNames | None) -> None:
    """Set the source's header row, headers, columns and preamble; check there is data."""
    path = source.path
    records = source._records()
    try:
        top = list(itertools.islice(records, header_row or HEADER_SEARCH_ROWS))
        if header_row is not None:
            number = header_row
            source.columns = _given_header(path, top, number, names)
        else:
            found = _search_header(top, names)
            if found is not None:
                number, source.columns = found
            else:
                number = _first_non_empty(top, records)
                if number == 0:
                    raise InputError(_empty(source))
                if names is not None:  # the caller wants the columns: say what is missing
                    try:
                        _search_header(top[:HEADER_SEARCH_ROWS], names, strict=True)
                    except ColumnError as exc:
                        # Damaged bytes are a CSV's problem: a workbook's U+FFFD is a character.
                        if source.format == "csv" and any(
                            damaged_cell(row) is not None for row in top
                        ):
                            label = source._text().label
                            raise ColumnError(
                                f"{exc}. Some of these rows hold bytes that are not valid "
                                f"{label}: the file's encoding may be damaged or mixed; "
                                "re-save it as UTF-8, or pass --encoding"
                            ) from None
                        raise
                # Otherwise the caller maps the columns itself: the first non-empty row.
        source.header_row = number
        source.headers = _texts(top[number - 1])
        source._preamble = top[: number - 1]
        # The first rows after the header are kept: a workbook is loaded whole by calamine,
        # so `head` spares the caller who samples them a pass of its own.
        after = itertools.chain(top[number:], records)
        head = list(itertools.islice(after, HEAD_ROWS))
        source._head = head
        source._head_complete = len(head) < HEAD_ROWS
        if all(_is_empty(row) for row in head) and all(_is_empty(row) for row in after):
            raise InputError(f"{path} has a header row but no data rows")
    finally:
        records.close()


def _empty(source: Source) -> str:
    """The message for an input without a single non-empty row."""
    if source.sheet is None:
        return f"{source.path} is empty: no header row and no data"
    others = [
        repr(name)
        for name in sheets.worksheet_names(source.path, source.format)
        if name != source.sheet
    ]
    if not others:
        return f"{source.path} is empty: no header row and no data"
    return (
        f"{source.path}: sheet {source.sheet!r} is empty; the other sheets are "
        f"{', '.join(others)}: choose one with --sheet"
    )


def _given_header(
    path: Path, top: list[list[Cell]], number: int, names: ColumnNames | None
) -> ColumnMap | None:
    """The columns of the row `--header-row` names (None if they are not all there)."""
    if len(top) < number:
        raise InputError(f"{path} has no row {number} (--header-row {number})")
    if _is_empty(top[number - 1]):
        raise InputError(f"{path}: row {number} is empty (--header-row {number})")
    try:
        return find_columns(_texts(top[number - 1]), **_overrides(names))
    except ColumnError as exc:
        if names is None:
            return None  # the caller maps the columns itself
        raise ColumnError(f"{exc} (in row {number}, the --header-row)") from None


def _search_header(
    top: list[list[Cell]], names: ColumnNames | None, *, strict: bool = False
) -> tuple[int, ColumnMap] | None:
    """The header row among the top rows and its columns, or None (ColumnError if strict)."""
    try:
        return find_header(
            ((i, _texts(row)) for i, row in enumerate(top, 1)), names or ColumnNames()
        )
    except ColumnError:
        if strict:
            raise
        return None


def _first_non_empty(top: list[list[Cell]], records: _Records) -> int:
    """Number of the first non-empty row, reading on past `top` (and keeping what it reads)."""
    for number, row in enumerate(top, 1):
        if not _is_empty(row):
            return number
    for row in records:
        top.append(row)
        if not _is_empty(row):
            return len(top)
    return 0


# --- CSV ----------------------------------------------------------------------------------------


def _open_csv(
    path: Path, encoding: str | None, header_row: int | None, names: ColumnNames | None
) -> Source:
    if encoding is None:
        decoding = text_encoding.choose(path)
    else:
        try:
            codec = codecs.lookup(encoding).name
        except LookupError:
            raise InputError(f"unknown encoding {encoding!r} (for {path})") from None
        decoding = text_encoding.Decoding(codec, codec)
    try:
        with text_encoding.open_text(path, _lenient(decoding)) as f:
            sample = f.read(SAMPLE_CHARS)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    except UnicodeError:
        raise InputError(_decode_error(path, decoding.codec)) from None
    if path.suffix.lower() == ".tsv":
        delimiter = "\t"
    else:
        delimiter = _sniff_delimiter(sample.removeprefix("\ufeff"), header_row, names)
    return Source(
        path,
        "csv",
        encoding=decoding.codec,
        delimiter=delimiter,
        damaged=decoding.damaged,
        _decoding=decoding,
    )


def _lenient(decoding: text_encoding.Decoding) -> text_encoding.Decoding:
    """The same decoding, replacing bad bytes (a sample may end inside a character)."""
    return text_encoding.Decoding(decoding.codec, decoding.label, True, foreign=decoding.foreign)


def _sniff_delimiter(text: str, header_row: int | None, names: ColumnNames | None) -> str:
    """The delimiter under which the header row is found; else the one giving most fields."""
    lines = io.StringIO(text, newline="")

    def top(delimiter: str) -> list[list[Cell]]:
        lines.seek(0)
        limit = header_row or HEADER_SEARCH_ROWS
        return cast(
            list[list[Cell]], list(itertools.islice(csv.reader(lines, delimiter=delimiter), limit))
        )

    if header_row is None:
        for delimiter in DELIMITERS:
            if _search_header(top(delimiter), names) is not None:
                return delimiter
    best, best_count = DELIMITERS[0], 1
    for delimiter in DELIMITERS:
        rows = top(delimiter)
        if header_row is not None:
            rows = rows[header_row - 1 : header_row]
        header = next((r for r in rows if not _is_empty(r)), [])
        if len(header) > best_count:
            best, best_count = delimiter, len(header)
    return best


def _csv_records(path: Path, decoding: text_encoding.Decoding, delimiter: str) -> _Records:
    reader = None
    csv.field_size_limit(FIELD_LIMIT)
    try:
        with text_encoding.open_text(path, decoding) as f:
            reader = csv.reader(f, delimiter=delimiter)
            first = next(reader, None)
            if first is None:
                return
            if first and first[0].startswith("\ufeff"):  # a BOM read with a plain utf-8 codec
                first[0] = first[0][1:]
            yield cast(list[Cell], first)
            yield from cast(Iterator[list[Cell]], reader)
    # UnicodeError, not just decode errors: some codecs refuse a whole stream (UTF-16, no BOM).
    except UnicodeError:
        raise InputError(_decode_error(path, decoding.codec)) from None
    except csv.Error as exc:
        line = reader.line_num if reader is not None else 0
        if "field larger than field limit" in str(exc):
            raise InputError(
                f"{path}: line {line} has a cell longer than {csv.field_size_limit():,} "
                "characters: probably a quote that is never closed; check the file's quoting"
            ) from None
        raise InputError(f"{path}: line {line} is not valid CSV ({exc})") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None


def _decode_error(path: Path, encoding: str) -> str:
    """Name the first line that does not decode (the text reader only knows the chunk)."""
    advice = "re-save it as UTF-8, or pass --encoding"
    line = _first_undecodable_line(path, encoding)
    if line is None:
        return f"{path} is not valid {encoding} text; {advice}"
    return (
        f"{path}: line {line} is not valid {encoding} text (the file may mix encodings); {advice}"
    )


def _first_undecodable_line(path: Path, encoding: str) -> int | None:
    """1-based number of the first line that fails to decode, if lines can be told apart."""
    encoder = codecs.getincrementalencoder(encoding)()
    encoder.encode("a")  # a BOM, if the codec writes one, comes out here
    if encoder.encode("\n") != b"\n":  # UTF-16/32: byte lines are not text lines
        return None
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    number = 0
    with path.open("rb") as f:
        for raw in f:
            number += 1
            try:
                decoder.decode(raw)
            except UnicodeDecodeError:
                return number
    return number  # an incomplete character at the very end

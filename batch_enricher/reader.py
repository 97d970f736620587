"""Streaming input: CSV/TSV text, XLSX and XLS read as a header row and rows of cells.

`open_source` checks the file, picks the encoding, delimiter or sheet, and reads the header
row; `Source.rows()` then streams the data rows, starting from the top on every call (the tool
reads each input twice). Entirely empty rows are skipped on every pass alike; the first
non-empty row is the header. Rows are yielded as they are, shorter or longer than the header.

- CSV/TSV (`.csv`, `.tsv`, `.txt`): every cell is text (stdlib csv). Encoding: the `encoding`
  argument, else chosen from the first 1 MB: a UTF-8/UTF-16 BOM, strict UTF-8, strict GB18030
  (GBK and GB2312 are subsets), and only then charset-normalizer, which misreads short GBK text.
  A later part that does not decode raises `InputError` naming the line. Delimiter: tab for
  `.tsv`, else whichever of comma, tab and semicolon splits the header row into most fields.
- XLSX (`.xlsx`, `.xlsm`): openpyxl, read-only, cached formula values; cells keep their Python
  types (a numeric ID cell must stay recognisable as one). Trailing empty cells are trimmed.
- XLS: python-calamine; integral floats become ints, text stays text, empty cells are None.

Every failure is an `InputError` with a one-line message naming the file, never cell contents.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import zipfile
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

from batch_enricher.errors import InputError, UnsupportedFileError

# openpyxl (with numpy behind it), python-calamine and charset-normalizer are imported where they
# are first needed: importing openpyxl alone costs ~0.2 s of CPU, as much as aiohttp, and a CSV
# run never uses it.
if TYPE_CHECKING:
    from openpyxl.workbook.workbook import Workbook

Cell = str | int | float | bool | dt.datetime | dt.date | dt.time | None
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

#: How much of a text file decides its encoding and delimiter.
SAMPLE_BYTES: Final = 1 << 20
#: Candidate delimiters; on a tie the earlier one wins.
DELIMITERS: Final = (",", "\t", ";")
#: Strict decoders tried in order before charset-normalizer is asked.
_STRICT_ENCODINGS: Final = ("utf-8", "gb18030")

# Leading bytes of files that are not text, with what to tell the user. UTF-32 before UTF-16:
# the UTF-32-LE BOM starts with the UTF-16-LE one.
_TEXT_BOMS: Final = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_ZIP_MAGIC: Final = b"PK\x03\x04"
_OLE2_MAGIC: Final = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


@dataclass
class Source:
    """An opened input: its format, header row, and how to stream its data rows again."""

    path: Path
    format: str  # "csv" | "xlsx" | "xls"
    headers: list[str]
    encoding: str | None = None  # csv only: the codec used (e.g. "utf-8-sig", "gb18030")
    delimiter: str | None = None  # csv only
    sheet: str | None = None  # xlsx/xls only: the sheet's name

    def rows(self) -> Generator[list[Cell], None, None]:
        """Stream the non-empty rows after the header, from the top of the file each call."""
        records = self._records()
        try:
            next(records, None)  # the header row
            yield from records
        finally:
            records.close()  # closes the file or workbook even if the caller stops early

    def _records(self) -> _Records:
        """Every non-empty row, the header row included."""
        if self.format == "csv":
            assert self.encoding is not None and self.delimiter is not None
            return _csv_records(self.path, self.encoding, self.delimiter)
        assert self.sheet is not None
        if self.format == "xlsx":
            return _xlsx_records(self.path, self.sheet)
        return _xls_records(self.path, self.sheet)


def open_source(
    path: Path, *, sheet: str | int | None = None, encoding: str | None = None
) -> Source:
    """Open an input file and read its header row.

    `sheet` (name or 0-based index; a str of digits that names no sheet is an index) applies
    to xlsx/xls, `encoding` to CSV; each is ignored for the other format.
    Raises InputError (UnsupportedFileError for an unknown extension) with a one-line message.
    """
    path = Path(path)
    fmt = _format_of(path)
    if fmt == "csv":
        source = _open_csv(path, encoding)
    elif fmt == "xlsx":
        source = Source(path, fmt, [], sheet=_xlsx_sheet(path, sheet))
    else:
        source = Source(path, fmt, [], sheet=_xls_sheet(path, sheet))
    records = source._records()
    try:
        header = next(records, None)
        if header is None:
            raise InputError(f"{path} is empty: no header row and no data")
        if next(records, None) is None:
            raise InputError(f"{path} has a header row but no data rows")
    finally:
        records.close()
    source.headers = [_header_text(cell) for cell in header]
    if source.headers:
        source.headers[0] = source.headers[0].removeprefix("\ufeff")
    return source


def _format_of(path: Path) -> str:
    """Check that the path is a readable file of a known kind; return its format."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path} is a directory, not a file")
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


def _is_empty(row: Sequence[Cell]) -> bool:
    return all(cell is None or (isinstance(cell, str) and not cell.strip()) for cell in row)


def _trim(row: Sequence[Any]) -> list[Cell]:
    """Drop trailing empty cells (spreadsheets report formatted but empty cells too)."""
    end = len(row)
    while end and (row[end - 1] is None or row[end - 1] == ""):
        end -= 1
    return [str(c) if isinstance(c, dt.timedelta) else c for c in row[:end]]


# --- CSV ----------------------------------------------------------------------------------------


def _open_csv(path: Path, encoding: str | None) -> Source:
    with path.open("rb") as f:
        sample = f.read(SAMPLE_BYTES)
        complete = not f.read(1)
    if encoding is None:
        encoding = _detect_encoding(path, sample, complete)
    else:
        try:
            encoding = codecs.lookup(encoding).name
        except LookupError:
            raise InputError(f"unknown encoding {encoding!r} (for {path})") from None
    if path.suffix.lower() == ".tsv":
        delimiter = "\t"
    else:
        delimiter = _sniff_delimiter(sample.decode(encoding, errors="replace"))
    return Source(path, "csv", [], encoding=encoding, delimiter=delimiter)


def _detect_encoding(path: Path, sample: bytes, complete: bool) -> str:
    """Choose the codec from the first bytes: BOM, strict UTF-8, strict GB18030, then a guess."""
    for bom, name in _TEXT_BOMS:
        if sample.startswith(bom):
            return name
    if sample.startswith(_ZIP_MAGIC):
        raise InputError(f"{path} is a ZIP/XLSX file, not CSV text (rename it to .xlsx?)")
    if sample.startswith(_OLE2_MAGIC):
        raise InputError(f"{path} is an XLS or encrypted Office file, not CSV text")
    if b"\x00" in sample:
        raise InputError(f"{path} is a binary file, not CSV text (it contains NUL bytes)")
    for name in _STRICT_ENCODINGS:
        try:
            codecs.getincrementaldecoder(name)().decode(sample, final=complete)
        except UnicodeDecodeError as exc:
            if name == "utf-8" and not sample[: exc.start].isascii():
                # Real UTF-8 text up to here, then something else: a file that mixes encodings.
                # Guessing would garble one part or the other.
                line = sample[: exc.start].count(b"\n") + 1
                raise InputError(
                    f"{path}: line {line} is not valid UTF-8 although the lines before it are "
                    "(mixed encodings?); re-save it as UTF-8, or pass --encoding"
                ) from None
            continue
        return name
    import charset_normalizer

    best = charset_normalizer.from_bytes(sample).best()
    if best is None:
        raise InputError(f"{path} is not readable text (binary, or an unknown encoding)")
    return codecs.lookup(best.encoding).name


def _sniff_delimiter(text: str) -> str:
    """The delimiter that splits the first non-empty record into the most fields."""
    lines = io.StringIO(text[:65536], newline="")
    best, best_count = DELIMITERS[0], 1
    for delimiter in DELIMITERS:
        lines.seek(0)
        header = next((r for r in csv.reader(lines, delimiter=delimiter) if not _is_empty(r)), [])
        if len(header) > best_count:
            best, best_count = delimiter, len(header)
    return best


def _csv_records(path: Path, encoding: str, delimiter: str) -> _Records:
    reader = None
    try:
        with path.open(encoding=encoding, errors="strict", newline="") as f:
            reader = csv.reader(f, delimiter=delimiter)
            for row in reader:
                # All cells are text here: the row is empty exactly when their concatenation is
                # blank, and one join + strip in C is several times cheaper than _is_empty.
                if "".join(row).strip():
                    yield cast(list[Cell], row)
    # UnicodeError, not just decode errors: some codecs refuse a whole stream (UTF-16, no BOM).
    except UnicodeError:
        raise InputError(_decode_error(path, encoding)) from None
    except csv.Error as exc:
        line = reader.line_num if reader is not None else 0
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


# --- XLSX ---------------------------------------------------------------------------------------


def load_workbook(path: Path | io.BytesIO, *, read_only: bool, data_only: bool) -> Workbook:
    """openpyxl's `load_workbook`, imported on first use (see the imports at the top)."""
    from openpyxl import load_workbook as load

    return load(path, read_only=read_only, data_only=data_only)


def _load_xlsx(path: Path) -> Workbook:
    from openpyxl.utils.exceptions import InvalidFileException

    with path.open("rb") as f:
        magic = f.read(len(_OLE2_MAGIC))
    if magic == _OLE2_MAGIC:
        # Excel saves password-protected workbooks as an encrypted OLE2 container.
        raise InputError(
            f"{path} is password-protected (encrypted) or an old .xls file renamed: "
            "remove the password, or save it as .xlsx"
        )
    # openpyxl judges a path by its extension; a workbook named .xls (read as what its bytes
    # say) is handed over in memory instead: such exports are small.
    source: Path | io.BytesIO = path
    if path.suffix.lower() not in (".xlsx", ".xlsm"):
        source = io.BytesIO(path.read_bytes())
    try:
        return load_workbook(source, read_only=True, data_only=True)
    except (zipfile.BadZipFile, InvalidFileException):
        raise InputError(f"{path} is not a valid .xlsx file (corrupt or not a workbook)") from None
    except Exception as exc:  # openpyxl surfaces broken parts as many exception types
        raise InputError(f"{path} is a corrupt .xlsx file ({type(exc).__name__})") from None


def _xlsx_sheet(path: Path, sheet: str | int | None) -> str:
    workbook = _load_xlsx(path)
    try:
        return _pick_sheet(path, [ws.title for ws in workbook.worksheets], sheet)
    finally:
        workbook.close()


def _xlsx_records(path: Path, sheet: str) -> _Records:
    workbook = _load_xlsx(path)
    try:
        worksheet = workbook[sheet]
        # Some writers record a wrong used range; without it openpyxl reads every cell there is.
        worksheet.reset_dimensions()
        for values in worksheet.iter_rows(values_only=True):
            row = _trim(values)
            if row and not _is_empty(row):
                yield row
    except InputError:
        raise
    except Exception as exc:  # a broken sheet part fails only when it is read
        raise InputError(f"{path}: sheet {sheet!r} is corrupt ({type(exc).__name__})") from None
    finally:
        workbook.close()


# --- XLS ----------------------------------------------------------------------------------------


def _load_xls(path: Path) -> Any:
    import python_calamine

    try:
        return python_calamine.CalamineWorkbook.from_path(str(path))
    except python_calamine.PasswordError:
        raise InputError(f"{path} is password-protected: remove the password first") from None
    except Exception as exc:  # calamine reports a broken file with several error types
        raise InputError(f"{path} is not a valid .xls file ({type(exc).__name__})") from None


def _xls_sheet(path: Path, sheet: str | int | None) -> str:
    import python_calamine

    workbook = _load_xls(path)
    try:
        names = [
            meta.name
            for meta in workbook.sheets_metadata
            if meta.typ == python_calamine.SheetTypeEnum.WorkSheet
        ]
        return _pick_sheet(path, names, sheet)
    finally:
        workbook.close()


def _xls_records(path: Path, sheet: str) -> _Records:
    workbook = _load_xls(path)
    try:
        # An .xls sheet holds at most 65,536 rows, so reading it whole is bounded. Keep the
        # empty area so columns stay where they are.
        data = workbook.get_sheet_by_name(sheet).to_python(skip_empty_area=False)
    except Exception as exc:
        raise InputError(f"{path}: sheet {sheet!r} cannot be read ({type(exc).__name__})") from None
    finally:
        workbook.close()
    for values in data:
        row = _trim([_xls_cell(value) for value in values])
        if row and not _is_empty(row):
            yield row


def _xls_cell(value: Any) -> Any:
    """calamine gives "" for empty cells and floats for all numbers."""
    if value == "" and isinstance(value, str):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# --- sheets -------------------------------------------------------------------------------------


def _pick_sheet(path: Path, names: list[str], sheet: str | int | None) -> str:
    """Resolve a sheet name or 0-based index against the workbook's worksheets."""
    if not names:
        raise InputError(f"{path} has no worksheets")
    listed = ", ".join(repr(n) for n in names)
    if sheet is None:
        return names[0]
    if isinstance(sheet, str):
        if sheet in names:
            return sheet
        folded = [n for n in names if n.strip().casefold() == sheet.strip().casefold()]
        if len(folded) == 1:
            return folded[0]
        if not sheet.strip().isdigit():
            raise InputError(f"{path} has no sheet named {sheet!r}; its sheets are {listed}")
        sheet = int(sheet)
    if 0 <= sheet < len(names):
        return names[sheet]
    raise InputError(
        f"{path} has no sheet number {sheet} (counting from 0); its sheets are {listed}"
    )

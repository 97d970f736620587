"""Reading .xlsx/.xlsm and .xls sheets: every row from the top, cells as plain Python values.

python-calamine reads both formats (in Rust: about 13 times faster than openpyxl on a
100,000-row sheet) and Strict Open XML workbooks too. It holds a whole sheet in memory as a
dense rectangle (about 90 bytes a cell), so an .xlsx sheet's XML is first scanned for its real
extent (streamed, with a regular expression in C; the recorded `<dimension>` is not trusted):
a sheet whose rectangle exceeds `CALAMINE_MAX_CELLS` (a long sheet, or one stray cell in
column XFD far down) is streamed by `xlsx_rows.py` instead, a chunk of rows at a time, empty
cells skipped, so such a sheet costs memory in proportion to neither its rows nor its
rectangle. The two readers give the same cells (tests/test_xlsx_rows.py).
An .xls sheet is at most 65,536 x 256 cells and always goes to calamine.

Cells: text is `str`; empty cells are None; numbers are `int` when whole (a whole number of 16
or more digits as Excel shows it, to 15 significant digits: 1.1010119900307803e17 becomes
110101199003078000, not the 110101199003078032 the binary double spells), else `float`;
booleans `bool`; dates `datetime` (a date-time at midnight is a `date`, as calamine gives it),
times `time`, durations text ("1 day, 6:00:00"); error cells (#DIV/0!) are None, and so is
a text of ASCII spaces alone stored without xml:space="preserve" (openpyxl writes them so;
Excel does not). A row's trailing empty cells are dropped; rows start at the sheet's row 1.

An .xls file is first read once in a child process under an address-space limit
(`_probe_xls`): on some damaged files calamine follows a looping sector chain until an
allocation of gigabytes fails, and Rust then aborts the whole process, which no `except` can
catch. Every failure is an `InputError` naming the file and what to do. Rust panics
(`pyo3_runtime.PanicException`, a BaseException that slips past `except Exception`) are caught
here, and the panic message Rust prints itself is kept off the terminal.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import posixpath
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Final
from xml.etree import ElementTree

from batch_enricher.errors import InputError

Cell = str | int | float | bool | dt.datetime | dt.date | dt.time | None

#: Largest rectangle (rows x columns) of an .xlsx sheet handed to calamine: about 20 MB of
#: memory there (calamine holds the whole sheet); a larger sheet is streamed (`xlsx_rows.py`).
CALAMINE_MAX_CELLS: Final = 200_000
#: Excel's grid.
MAX_ROWS: Final = 1_048_576
MAX_COLUMNS: Final = 16_384

STRICT_NS: Final = "http://purl.oclc.org/ooxml/spreadsheetml/main"
_OFFICE_DOCUMENT: Final = "/officeDocument"  # the end of both relationship types' URIs
_RELS_NS: Final = "{http://schemas.openxmlformats.org/package/2006/relationships}"
_OLE2_MAGIC: Final = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ZIP_MAGIC: Final = b"PK\x03\x04"

# In a sheet's XML, cells that hold something (a value, inline text or a formula): their
# column letters and row. Empty styled cells (a whole column formatted down to row 1,048,576)
# are left out: calamine skips them too. A tag cut at a chunk border is caught by the overlap.
_VALUE_CELL: Final = re.compile(
    rb"<(?:\w+:)?c\b[^>]*?\sr=\"([A-Z]{1,3})(\d+)\"[^>]*(?<!/)>\s*<(?:\w+:)?(?:v|is|f)\b"
)
_WIDE_VALUE_CELL: Final = re.compile(
    rb"<(?:\w+:)?c\b[^>]*?\sr=\"([A-Z]{2,3})\d+\"[^>]*(?<!/)>\s*<(?:\w+:)?(?:v|is|f)\b"
)
# Cheap test first: any reference to a column past Z at all (most sheets have none).
_WIDE_REF: Final = re.compile(rb"r=\"[A-Z]{2,3}[0-9]")  # literal-led: fast
#: A sheet part larger than this (uncompressed) is streamed, its extent unscanned: no sheet
#: this large fits in `CALAMINE_MAX_CELLS` (a cell takes 20 bytes of XML or more).
CALAMINE_MAX_XML: Final = 8 << 20
_OVERLAP: Final = 256


@dataclass(frozen=True)
class Sheet:
    """A sheet chosen in a workbook, and how to read it."""

    name: str
    engine: str  # "calamine" | "stream" (xlsx_rows.py)
    strict: bool = False  # an .xlsx saved as Strict Open XML


def open_zip(path: Path) -> zipfile.ZipFile:
    """Open a workbook's zip; entries named with backslashes are known by the OOXML "/" name.

    Some exporters (seen from Chinese HR and attendance systems) write `xl\\workbook.xml`;
    calamine reads such files, so the rest of the tool must too. `ZipInfo.filename` is renamed
    in place: `ZipFile.open` checks the local header against `orig_filename`, which stays, and
    a copied entry (`ZipWriter.add_copy`) is written under the new name, so the output is a
    well-formed package.
    """
    zf = zipfile.ZipFile(path)
    for info in zf.infolist():
        if "\\" in info.filename:
            zf.NameToInfo.pop(info.filename, None)
            info.filename = info.filename.replace("\\", "/")
            zf.NameToInfo[info.filename] = info
    return zf


def worksheet_names(path: Path, fmt: str) -> list[str]:
    """The workbook's worksheets (chart sheets excluded), in workbook order."""
    import python_calamine

    workbook = _open_calamine(path, fmt)
    try:
        return [
            meta.name
            for meta in workbook.sheets_metadata
            if meta.typ == python_calamine.SheetTypeEnum.WorkSheet
        ]
    finally:
        workbook.close()


def choose_sheet(path: Path, fmt: str, sheet: str | int | None) -> Sheet:
    """Resolve `sheet` (name or 0-based index) and decide how to read it."""
    name = pick_sheet(path, worksheet_names(path, fmt), sheet)
    if fmt != "xlsx":
        return Sheet(name, "calamine")
    strict, rows, columns = _xlsx_extent(path, name)
    if rows * columns <= CALAMINE_MAX_CELLS:
        return Sheet(name, "calamine", strict)
    return Sheet(name, "stream", strict)


def sheet_rows(path: Path, fmt: str, sheet: Sheet) -> Generator[list[Cell], None, None]:
    """Every row of the sheet from row 1 (empty rows as []), trailing empty cells dropped."""
    if sheet.engine == "stream":
        from batch_enricher.xlsx_rows import stream_rows

        return stream_rows(path, sheet.name)
    return _calamine_rows(path, fmt, sheet.name)


def pick_sheet(path: Path, names: list[str], sheet: str | int | None) -> str:
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


# --- cells --------------------------------------------------------------------------------------


def whole(value: float) -> int | float:
    """A whole float as int, to the 15 significant digits a spreadsheet keeps; else as is.

    >>> whole(13812345678.0), whole(1.1010119900307803e17), whole(1.5)
    (13812345678, 110101199003078000, 1.5)
    """
    if not value.is_integer():  # also inf and nan
        return value
    if -1e15 < value < 1e15:
        return int(value)
    return int(Decimal(f"{value:.15g}"))


def trimmed(row: list[Cell]) -> list[Cell]:
    """The row without its trailing empty cells (the same list if it has none)."""
    end = len(row)
    while end and row[end - 1] is None:
        end -= 1
    return row[:end] if end < len(row) else row


def _calamine_row(values: list[Any], lead: int) -> list[Cell]:
    row: list[Cell] = [None] * lead
    append = row.append
    for value in values:
        kind = type(value)
        if kind is str:
            append(value or None)
        elif kind is float:
            append(whole(value))
        elif kind is dt.timedelta:
            append(str(value))
        else:
            append(value)
    return trimmed(row)


# --- calamine -----------------------------------------------------------------------------------


def _is_panic(exc: BaseException) -> bool:
    """A Rust panic surfaced by pyo3 (its class lives in a module made at run time)."""
    kind = type(exc)
    return kind.__name__ == "PanicException" and kind.__module__ == "pyo3_runtime"


def broken(path: Path, fmt: str) -> InputError:
    """The one-line error for a workbook that cannot be read."""
    if fmt == "xls":
        return InputError(
            f"{path} is not a readable .xls file (damaged or cut short): open it in Excel and "
            "save it again, or save it as .xlsx"
        )
    return InputError(
        f"{path} is a damaged .xlsx file (a part of it cannot be read): open it in Excel and "
        "save it again"
    )


@contextlib.contextmanager
def _rust_call(path: Path, fmt: str) -> Iterator[None]:
    """Turn a calamine panic into InputError, keeping Rust's own panic message off stderr.

    Rust prints a panic (and with RUST_BACKTRACE a backtrace) before unwinding: stderr's file
    descriptor is pointed at a temporary file for the call, and what it caught is passed on
    afterwards unless the call panicked.
    """
    sys.stderr.flush()
    with tempfile.TemporaryFile() as capture:
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all: nothing to keep clean
            saved = -1
        if saved >= 0:
            os.dup2(capture.fileno(), 2)
        panicked = False
        try:
            yield
        except BaseException as exc:
            if not _is_panic(exc):
                raise
            panicked = True
            raise broken(path, fmt) from None
        finally:
            if saved >= 0:
                os.dup2(saved, 2)
                os.close(saved)
                capture.seek(0)
                said = capture.read()
                if said and not panicked:
                    os.write(2, said)


#: What the .xls probe may use: address space (a real .xls sheet needs well under 1 GiB in
#: calamine, a damaged one can ask for 4 GiB at a time and more) and seconds.
PROBE_MEMORY: Final = 2 << 30
PROBE_SECONDS: Final = 60.0
# Run with `python -I -c`: limit the address space, then open the workbook and load every
# worksheet as the reader would. A Python exception is no danger (the reader reports it);
# only an abort, a crash or a hang is.
_PROBE: Final = """
import io, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), int(sys.argv[2])))
try:
    import python_calamine as pc
    with open(sys.argv[1], "rb") as f:
        book = pc.CalamineWorkbook.from_filelike(io.BytesIO(f.read()))
    for meta in book.sheets_metadata:
        if meta.typ == pc.SheetTypeEnum.WorkSheet:
            book.get_sheet_by_name(meta.name)
except BaseException:
    pass
"""


def _probe_xls(path: Path) -> None:
    """Refuse an .xls that would take calamine down with it: try it in a child process first.

    calamine parses the OLE2 container of a damaged .xls trusting its sector chains: a chain
    that loops grows until an allocation of gigabytes fails, and Rust then aborts the whole
    process (no exception to catch), or the kernel kills it. The child runs under an address
    space limit and a timeout; once it has read the file cleanly, the reader may. A file is
    probed once per size and modification time.
    """
    try:
        st = path.stat()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _PROBED:
        return
    limit = PROBE_MEMORY + 2 * st.st_size
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-c", _PROBE, str(path), str(limit)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=PROBE_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise broken(path, "xls") from None
    except OSError:
        return  # no child can be started here: read it in-process, as before
    if done.returncode != 0:
        raise broken(path, "xls")
    _PROBED.add(key)


_PROBED: set[tuple[str, int, int]] = set()


def _open_calamine(path: Path, fmt: str) -> Any:
    import python_calamine

    with path.open("rb") as f:
        magic = f.read(8)
    if fmt == "xls" and magic == _OLE2_MAGIC:
        _probe_xls(path)
    if fmt == "xlsx" and magic == _OLE2_MAGIC:
        # Excel saves password-protected workbooks as an encrypted OLE2 container.
        raise InputError(
            f"{path} is password-protected (encrypted) or an old .xls file renamed: "
            "remove the password, or save it as .xlsx"
        )
    if fmt == "xlsx" and not magic.startswith(_ZIP_MAGIC):
        raise InputError(f"{path} is not a valid .xlsx file (corrupt or not a workbook)")
    try:
        with _rust_call(path, fmt):
            if (fmt == "xls") == (path.suffix.lower() == ".xls"):
                return python_calamine.CalamineWorkbook.from_path(str(path))
            # A workbook named for another format (an .xlsx saved as .xls): calamine goes by
            # the name on a path, by the bytes on a file object. Such exports are small.
            return python_calamine.CalamineWorkbook.from_filelike(io.BytesIO(path.read_bytes()))
    except python_calamine.PasswordError:
        raise InputError(f"{path} is password-protected: remove the password first") from None
    except python_calamine.ZipError:
        raise InputError(f"{path} is not a valid .xlsx file (corrupt or not a workbook)") from None
    except (python_calamine.CalamineError, ValueError, OSError):
        raise broken(path, fmt) from None


def _calamine_rows(path: Path, fmt: str, name: str) -> Generator[list[Cell], None, None]:
    import python_calamine

    workbook = _open_calamine(path, fmt)
    try:
        try:
            with _rust_call(path, fmt):
                sheet = workbook.get_sheet_by_name(name)
        except (python_calamine.CalamineError, ValueError):
            raise broken(path, fmt) from None
        start = sheet.start
        lead = start[1] if start is not None else 0
        try:
            # Rows come from row 1, but columns from the first used one: put the lead back.
            for values in sheet.iter_rows():
                yield _calamine_row(values, lead)
        except OverflowError:  # python-calamine's timedelta of a duration beyond 10⁹ days
            raise InputError(
                f"{path} holds a duration cell too large to read (over a billion days): "
                "correct it in Excel and save it again"
            ) from None
        except BaseException as exc:
            if _is_panic(exc):
                raise broken(path, fmt) from None
            raise
    finally:
        workbook.close()


# --- .xls number formats ------------------------------------------------------------------------


def xls_number_formats(path: Path, name: str) -> Iterator[list[str | None]] | None:
    """Each row's number formats in sheet `name` of an .xls, from row 1 (None: General).

    python-calamine reads values only; xlrd (`formatting_info=True`) reads the formats, so an
    .xls written out as .xlsx keeps `000000`, `0.00%` or `yyyy-mm-dd`. Formats are an extra:
    a file xlrd cannot read for them (it reads only the BIFF8 that calamine also reads after
    the probe) gives None, and the output is written without them.
    """
    import xlrd  # type: ignore[import-untyped]

    try:
        book = xlrd.open_workbook(str(path), formatting_info=True, on_demand=True)
        sheet = book.sheet_by_name(name)
        by_xf: dict[int, str | None] = {}
        for index, xf in enumerate(book.xf_list):
            shown = book.format_map.get(xf.format_key)
            text = shown.format_str if shown is not None else "General"
            by_xf[index] = None if text in ("General", "") else text
        rows = [
            [by_xf.get(sheet.cell_xf_index(r, c)) for c in range(sheet.row_len(r))]
            for r in range(sheet.nrows)
        ]
        book.release_resources()
    except Exception:  # a damaged or odd file: its values are still written, plainly
        return None
    return iter([row if any(row) else [] for row in rows])


# --- the .xlsx package --------------------------------------------------------------------------


def _xlsx_extent(path: Path, name: str) -> tuple[bool, int, int]:
    """(saved as Strict Open XML, rows, columns) of a sheet's used rectangle, from its XML."""
    try:
        with open_zip(path) as package:
            strict, part = _sheet_part(package, name)
            if part is None:
                return strict, MAX_ROWS, MAX_COLUMNS  # unknown: do not trust it to calamine
            if package.getinfo(part).file_size > CALAMINE_MAX_XML:
                return strict, MAX_ROWS, MAX_COLUMNS
            rows, columns = 0, 1
            tail = b""
            with package.open(part) as xml:
                while chunk := xml.read(1 << 20):
                    data = tail + chunk
                    rows = max(rows, _last_value_row(data))
                    columns = _widest_letter(data, columns)
                    if _WIDE_REF.search(data):
                        for letters in set(_WIDE_VALUE_CELL.findall(data)):
                            columns = max(columns, _column_number(letters))
                    tail = data[-_OVERLAP:]
            return strict, rows, columns
    except (zipfile.BadZipFile, KeyError, OSError, EOFError, ElementTree.ParseError, ValueError):
        raise InputError(f"{path} is not a valid .xlsx file (corrupt or not a workbook)") from None
    except Exception:  # zlib.error and the like, from a damaged part
        raise broken(path, "xlsx") from None


def _last_value_row(data: bytes) -> int:
    """Row number of the last cell with a value in `data` (0 if none): rows come in order."""
    for window in (1 << 16, len(data)):
        found = _VALUE_CELL.findall(data[-window:])
        if found:
            return max(int(row) for _, row in found[-64:])
    return 0


def _widest_letter(data: bytes, columns: int) -> int:
    """`columns`, raised to the last one-letter column (A-Z) any cell of `data` refers to.

    Only letters past the widest seen are looked for: a literal-led search each, in C.
    """
    while columns < 26:
        found = re.search(rb'r="([%c-Z])[0-9]' % (ord("A") + columns), data)
        if found is None:
            break
        columns = found[1][0] - ord("A") + 1
    return columns


def _column_number(letters: bytes) -> int:
    number = 0
    for letter in letters:
        number = number * 26 + letter - 64
    return number


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def sheet_rel_id(workbook: ElementTree.Element, name: str) -> str | None:
    """The relationship id (`r:id`) of the sheet named `name` in a parsed workbook part."""
    return next(
        (
            value
            for sheet in workbook.iter()
            if _local(sheet.tag) == "sheet" and sheet.get("name") == name
            for key, value in sheet.attrib.items()
            if _local(key) == "id"
        ),
        None,
    )


def _sheet_part(package: zipfile.ZipFile, name: str) -> tuple[bool, str | None]:
    """(strict, path of the named sheet's XML part), following the package's relationships."""
    root = ElementTree.fromstring(package.read("_rels/.rels"))
    workbook_part = next(
        (
            rel.get("Target", "").lstrip("/")
            for rel in root.iter(f"{_RELS_NS}Relationship")
            if rel.get("Type", "").endswith(_OFFICE_DOCUMENT)
        ),
        "xl/workbook.xml",
    )
    workbook = ElementTree.fromstring(package.read(workbook_part))
    strict = workbook.tag.startswith("{" + STRICT_NS + "}")
    rel_id = sheet_rel_id(workbook, name)
    folder, base = posixpath.split(workbook_part)
    rels = ElementTree.fromstring(package.read(posixpath.join(folder, "_rels", base + ".rels")))
    for rel in rels.iter(f"{_RELS_NS}Relationship"):
        if rel.get("Id") == rel_id:
            target = rel.get("Target", "")
            if target.startswith("/"):
                return strict, target.lstrip("/")
            return strict, posixpath.normpath(posixpath.join(folder, target))
    return strict, None

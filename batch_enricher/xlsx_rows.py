"""The rows of one `.xlsx` worksheet, streamed from its XML in bounded memory.

python-calamine reads a whole sheet into memory before its first row comes out (about 100 bytes
a cell, plus every shared string as a Python object): 260 MB at 100,000 rows of 10 columns,
growing with the file. This reader holds one chunk of the sheet's XML (`_CHUNK`) and the few
shared-string blocks it is using (`shared_strings.py`), so its memory is the same at 100,000
rows as at 1,000,000. `sheets.py` sends a sheet here when it is too large for calamine.

It scans bytes with regular expressions rather than parsing XML events: ElementTree's C parser
took 3.3 s a pass over a 100,000-row sheet (a Python object per element and event), this takes
2.1 s of CPU (calamine 0.75 s, holding all of the sheet). It relies on what SpreadsheetML
guarantees inside `<sheetData>` (only `<row>` elements holding only `<c>` elements; no raw `<`
in text), as `xlsx_sheet.py` does, accepts any namespace prefix and either quote, reads a part
declared in UTF-16, and decodes cells the way python-calamine does, so that a sheet reads the
same whichever reader `sheets.py` picks (tests/test_xlsx_rows.py compares the two):

- types: `t="s"` shared string, `str`/`inlineStr` text, `b` boolean, `e` error (None), `d` an
  ISO date (`date`, `datetime` or `time`; one with a zone stays text), otherwise a number;
- a number whose style has a date format (built-in ids 14-22, 27-36, 45, 47, 50-58, or a custom
  code with a date token outside quotes and brackets) is a date: `date` when whole, `datetime`
  with a fraction, `time` below 1 day, to the millisecond; a duration format (`[h]:mm`, id 46)
  gives a duration's text; a date past 9999-12-31 stays a number;
- text: XML entities and Excel's `_x00HH_` escapes decoded, line ends normalised as an XML
  parser would, phonetic runs (`<rPh>`) left out; empty text is None.
"""

from __future__ import annotations

import codecs
import contextlib
import datetime as dt
import posixpath
import re
import zipfile
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import IO, Final
from xml.etree import ElementTree

from batch_enricher.errors import InputError
from batch_enricher.shared_strings import SharedStrings
from batch_enricher.sheets import (
    Cell,
    broken,
    open_zip,
    sheet_rel_id,
    trimmed,
    whole,
)  # imported lazily there

#: Bytes of XML read at a time (more while one row is longer).
_CHUNK: Final = 1 << 18
_P: Final = rb"(?:[\w.-]+:)?"  # any namespace prefix

# One alternation, so findall returns rows and cells in document order. Row: ("row",
# attributes, "/" when self-closing). Cell: the canonical attributes r, s, t in that order
# (every writer measured uses it) in groups 4-6, any other attribute in group 7 (then parsed in
# full), the value of a body that is just <v>...</v> in group 8, any other body (a formula, an
# inline string, a prefixed <x:v>) in group 9.
_TOKEN: Final = re.compile(
    rb"<" + _P + rb"(?:(row)\b([^>]*?)(/?)>|c"
    rb"(?:\s+r=\"([A-Z]{1,3})[0-9]*\")?(?:\s+s=\"([0-9]+)\")?(?:\s+t=\"(\w+)\")?(\s[^>]*?)?"
    rb"(?:/>|>(?:<v>([^<]*)</v>|(.*?))</" + _P + rb"c>))",
    re.S,
)
_ROW_NUMBER: Final = re.compile(rb"(?:^|\s)r\s*=\s*[\"']([0-9]+)[\"']")
_SHEET_DATA: Final = re.compile(rb"<" + _P + rb"sheetData\b[^>]*?(/?)>")
_SHEET_DATA_END: Final = re.compile(rb"</" + _P + rb"sheetData>|<" + _P + rb"sheetData\b[^>]*/>")
_ATTRIBUTE: Final = re.compile(rb"([\w.:-]+)\s*=\s*(?:\"([^\"]*)\"|'([^']*)')")
_REF: Final = re.compile(rb"\$?([A-Za-z]{1,3})\$?([0-9]*)")
_VALUE: Final = re.compile(rb"<" + _P + rb"v(?:\s[^>]*)?>([^<]*)</" + _P + rb"v>")
_INLINE: Final = re.compile(rb"<" + _P + rb"is\b[^>]*>(.*?)</" + _P + rb"is>", re.S)
_TEXT: Final = re.compile(rb"<" + _P + rb"t(\s[^>]*)?>([^<]*)</" + _P + rb"t>")
_PHONETIC: Final = re.compile(rb"<" + _P + rb"rPh\b.*?</" + _P + rb"rPh>", re.S)
_SI: Final = re.compile(rb"<" + _P + rb"si\b[^>]*?(?:/>|>(.*?)</" + _P + rb"si>)", re.S)
_XML_SPACE: Final = " \t\r\n"
_CDATA: Final = re.compile(rb"<!\[CDATA\[(.*?)\]\]>", re.S)
_SST_END: Final = re.compile(rb"</" + _P + rb"sst>|<" + _P + rb"sst\b[^>]*/>")
_ENTITY: Final = re.compile(r"&(?:#x([0-9A-Fa-f]+)|#([0-9]+)|(lt|gt|amp|quot|apos));")
_NAMED: Final = {"lt": "<", "gt": ">", "amp": "&", "quot": '"', "apos": "'"}
_EXCEL_ESCAPE: Final = re.compile(r"_x00([0-9A-Fa-f]{2})_")
_DECLARED: Final = re.compile(rb"""<\?xml[^>]*encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_ISO_DATE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_ISO_DATETIME: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
)
_ISO_TIME: Final = re.compile(r"[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?")
_DIGITS: Final = b"0123456789.eE+-"  # a number made of these alone parses alike everywhere
_NOT_A_NUMBER: Final = re.compile(rb"[\s_]|^0[xX]")  # Python's float() takes them; Excel not

#: What a style's number format makes of a number.
NUMBER, DATE, DURATION = 0, 1, 2
_BUILTIN_KINDS: Final = {
    **dict.fromkeys([*range(14, 23), *range(27, 37), 45, 47, *range(50, 59)], DATE),
    46: DURATION,
}
_EPOCH_1900: Final = dt.datetime(1899, 12, 30)
_EPOCH_1900_EARLY: Final = dt.datetime(1899, 12, 31)  # before Excel's phantom 1900-02-29
_EPOCH_1904: Final = dt.datetime(1904, 1, 1)
_MS_PER_DAY: Final = 86_400_000


class _Damaged(Exception):
    """Inside this module: the sheet cannot be read as SpreadsheetML."""


def stream_rows(path: Path, name: str) -> Generator[list[Cell], None, None]:
    """Every row of sheet `name` from row 1 (empty rows as []), trailing empty cells dropped."""
    try:
        package = open_zip(path)
    except (OSError, zipfile.BadZipFile, EOFError):
        raise broken(path, "xlsx") from None
    try:
        with package, contextlib.ExitStack() as stack:
            try:
                parts = _Parts.find(package, name)
                strings = stack.enter_context(contextlib.closing(SharedStrings()))
                if parts.strings is not None:
                    _load_strings(package, parts.strings, strings)
                strings.finish()
                kinds = _style_kinds(package, parts.styles)
                xml = stack.enter_context(_utf8(package.open(parts.sheet)))
            except (_Damaged, KeyError, ValueError, ElementTree.ParseError):
                raise broken(path, "xlsx") from None
            cells = _Cells(strings, kinds, parts.date1904)
            yield from _rows(xml, cells)
    except (_Damaged, zipfile.BadZipFile, EOFError, ValueError, IndexError):
        raise broken(path, "xlsx") from None
    except InputError:
        raise
    except Exception as exc:  # zlib.error and the like from a damaged part
        if isinstance(exc, OSError) and not isinstance(exc, zipfile.BadZipFile):
            raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
        raise broken(path, "xlsx") from None


# --- the package ------------------------------------------------------------------------------


class _Parts:
    """Where the sheet, the shared strings and the styles are, and the workbook's date system."""

    def __init__(self, sheet: str, strings: str | None, styles: str | None, date1904: bool):
        self.sheet, self.strings, self.styles, self.date1904 = sheet, strings, styles, date1904

    @classmethod
    def find(cls, package: zipfile.ZipFile, name: str) -> _Parts:
        # Part names compare case-blind, and some writers separate folders with "\\".
        names = {n.lower().replace("\\", "/"): n for n in package.namelist()}

        def read(part: str) -> bytes:
            return package.read(names.get(part.lower(), part))

        root = ElementTree.fromstring(read("_rels/.rels") if "_rels/.rels" in names else b"<r/>")
        workbook_part = next(
            (_target("", rel) for rel in root if _local(rel.get("Type", "")) == "officeDocument"),
            "xl/workbook.xml",
        )
        workbook = ElementTree.fromstring(read(workbook_part))
        rels = ElementTree.fromstring(read(_rels_of(workbook_part)))
        folder = posixpath.dirname(workbook_part)
        by_id = {rel.get("Id"): rel for rel in rels}
        by_type = {_local(rel.get("Type", "")): _target(folder, rel) for rel in rels}
        rel_id = sheet_rel_id(workbook, name)
        if rel_id not in by_id:
            raise _Damaged(f"no sheet {name!r}")
        date1904 = any(
            _local(e.tag) == "workbookPr" and e.get("date1904", "").lower() in ("1", "true")
            for e in workbook
        )

        def present(part: str | None) -> str | None:
            return names.get(part.lower()) if part is not None else None

        sheet = present(_target(folder, by_id[rel_id]))
        if sheet is None:
            raise _Damaged("the sheet's part is missing")
        return cls(
            sheet, present(by_type.get("sharedStrings")), present(by_type.get("styles")), date1904
        )


def _local(name: str) -> str:
    """The local part of a tag (`{ns}sheet`) or of a relationship type URI (`.../styles`)."""
    return name.rsplit("}", 1)[-1].rsplit("/", 1)[-1]


def _target(folder: str, rel: ElementTree.Element) -> str:
    target = rel.get("Target", "")
    if target.startswith("/"):
        return target.lstrip("/")
    return posixpath.normpath(posixpath.join(folder, target))


def _rels_of(part: str) -> str:
    folder, base = posixpath.split(part)
    return posixpath.join(folder, "_rels", base + ".rels")


@contextlib.contextmanager
def _utf8(raw: IO[bytes]) -> Iterator[IO[bytes]]:
    """The part as UTF-8 bytes: a part declared in another encoding (UTF-16, rare) is recoded."""
    with raw:
        head = raw.peek(256)[:256] if hasattr(raw, "peek") else b""
        declared = _DECLARED.match(head.lstrip(b"\xef\xbb\xbf"))
        encoding = "utf-16" if head[:2] in (b"\xff\xfe", b"\xfe\xff") else None
        if declared is not None:
            encoding = declared[1].decode("ascii").lower()
        if encoding is None or codecs.lookup(encoding).name == "utf-8":
            yield raw
        else:
            yield _Recoded(raw, encoding)  # type: ignore[misc]


class _Recoded:
    """A binary stream re-encoded to UTF-8 as it is read."""

    def __init__(self, raw: IO[bytes], encoding: str) -> None:
        self._raw = raw
        self._decoder = codecs.getincrementaldecoder(encoding)()

    def read(self, size: int) -> bytes:
        while True:  # a chunk may end inside a character: then read on, never return b"" early
            data = self._raw.read(size)
            text = self._decoder.decode(data, final=not data)
            if text or not data:
                return text.encode()


# --- shared strings and styles ----------------------------------------------------------------


def _load_strings(package: zipfile.ZipFile, part: str, table: SharedStrings) -> None:
    with _utf8(package.open(part)) as xml:
        data = b""
        while chunk := xml.read(_CHUNK):
            data += chunk
            cut = _last_start(data, b"si")
            for body in _SI.findall(data, 0, cut):
                table.append(_si_text(body))
            data = data[cut:]
        if not _SST_END.search(data):
            raise _Damaged("the shared strings are cut short")
        for body in _SI.findall(data):
            table.append(_si_text(body))


def _last_start(data: bytes, local: bytes) -> int:
    """Index of the last start tag `<local` (any prefix) in `data`: all before it is whole."""
    at = len(data)
    while (at := data.rfind(local, 0, at)) > 0:
        opened = data.rfind(b"<", 0, at)
        prefix = data[opened + 1 : at]
        follows = data[at + len(local) : at + len(local) + 1]
        if (
            opened >= 0
            and follows in (b" ", b">", b"/", b"\t", b"\r", b"\n")
            and (not prefix or (prefix.endswith(b":") and not prefix.startswith(b"/")))
        ):
            return opened
    return 0


def _si_text(body: bytes) -> str:
    """The text of a shared or inline string: its runs, phonetic runs left out.

    A run not marked xml:space="preserve" is trimmed, as calamine does (Excel marks every run
    whose spaces matter).
    """
    if not body:
        return ""
    if body[:3] == b"<t>" and body.find(b"<", 3) == len(body) - 4:  # the common <t>text</t>
        return _text(body[3:-4], trim=True)
    if b"rPh" in body:
        body = _PHONETIC.sub(b"", body)
    if b"<![CDATA[" in body:
        body = _CDATA.sub(_escaped, body)
    return "".join(_text(raw, trim=b"preserve" not in attrs) for attrs, raw in _TEXT.findall(body))


def _style_kinds(package: zipfile.ZipFile, part: str | None) -> list[int]:
    """What each cell style (`s="N"`, an index into `cellXfs`) makes of a number."""
    if part is None:
        return []
    root = ElementTree.fromstring(package.read(part))
    custom: dict[int, int] = {}
    kinds: list[int] = []
    for element in root:
        local = _local(element.tag)
        if local == "numFmts":
            for fmt in element:
                with contextlib.suppress(ValueError):
                    custom[int(fmt.get("numFmtId", ""))] = format_kind(fmt.get("formatCode", ""))
        elif local == "cellXfs":
            for xf in element:
                try:
                    number = int(xf.get("numFmtId", "0"))
                except ValueError:
                    number = 0
                kinds.append(custom.get(number, _BUILTIN_KINDS.get(number, NUMBER)))
    return kinds


def format_kind(code: str) -> int:
    """NUMBER, DATE or DURATION: what a custom number format shows a number as.

    Only the first section counts; quoted text, escaped and fill characters, and bracketed
    colours and conditions are not tokens; `[h]`, `[mm]`, `[ss]` make a duration.

    >>> format_kind("yyyy-mm-dd"), format_kind('"Y: "0.00'), format_kind("[h]:mm:ss")
    (1, 0, 2)
    """
    escaped = quoted = am_pm = elapsed = False
    brackets = 0
    previous = " "
    for char in code:
        if escaped:
            escaped = False
        elif char in "_\\*":
            escaped = True
        elif quoted:
            quoted = char != '"'
        elif char == '"':
            quoted = True
        elif char == ";":
            return NUMBER
        elif char == "[":
            brackets += 1
        elif char == "]" and brackets == 1 and elapsed:
            return DURATION
        elif char == "]":
            brackets = max(0, brackets - 1)
        elif brackets == 0 and not am_pm and char in "aA":
            am_pm = True
        elif (brackets == 0 and am_pm and char in "pmPM/") or (
            brackets == 0 and not am_pm and char in "dmhysDMHYS"
        ):
            return DATE
        elif not (elapsed and char.lower() == previous.lower()):
            elapsed = previous == "[" and char in "mhsMHS"
        previous = char
    return NUMBER


# --- cells ------------------------------------------------------------------------------------


def _escaped(found: re.Match[bytes]) -> bytes:
    """A CDATA section's text as ordinary escaped text."""
    return found[1].replace(b"&", b"&amp;").replace(b"<", b"&lt;").replace(b">", b"&gt;")


def _entity(found: re.Match[str]) -> str:
    hexadecimal, decimal, named = found.groups()
    if named:
        return _NAMED[named]
    return chr(int(hexadecimal, 16) if hexadecimal else int(decimal))


def _text(raw: bytes, *, trim: bool = False) -> str:
    """Element text as an XML parser gives it, with Excel's `_x00HH_` escapes decoded.

    `trim`: strip XML white space after the entities are read and before Excel's escapes are
    (calamine's order: `<t>_x000D_</t>` is a carriage return, `<t>&#32;</t>` is empty).
    """
    text = raw.decode()
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "&" in text:
        text = _ENTITY.sub(_entity, text)
    if trim:
        text = text.strip(_XML_SPACE)
    if "_x00" in text:
        text = _EXCEL_ESCAPE.sub(lambda m: chr(int(m[1], 16)), text)
    return text


class _Cells:
    """Turns a cell's type, style and raw value into a Python value."""

    def __init__(self, strings: SharedStrings, kinds: list[int], date1904: bool) -> None:
        self.strings = strings
        self.kinds = kinds
        self.date1904 = date1904

    def number(self, raw: bytes, style: int) -> Cell:
        if not raw:
            return None
        if raw.translate(None, _DIGITS) and _NOT_A_NUMBER.search(raw):
            return raw.decode()
        try:
            value = float(raw)
        except ValueError:
            return raw.decode()
        kind = self.kinds[style] if style < len(self.kinds) else NUMBER
        if kind == DATE:
            return self._date(value)
        if kind == DURATION:
            try:
                return str(dt.timedelta(milliseconds=round(value * _MS_PER_DAY)))
            except OverflowError:
                pass
        return whole(value)

    def _date(self, value: float) -> Cell:
        if value != value or value in (float("inf"), float("-inf")):
            return whole(value)
        if value < 1:
            ms = round((value % 1) * _MS_PER_DAY) % _MS_PER_DAY
            seconds, ms = divmod(ms, 1000)
            minutes, seconds = divmod(seconds, 60)
            return dt.time(minutes // 60, minutes % 60, seconds, ms * 1000)
        early = _EPOCH_1900_EARLY if value < 60 else _EPOCH_1900
        epoch = _EPOCH_1904 if self.date1904 else early
        try:
            moment = epoch + dt.timedelta(milliseconds=round(value * _MS_PER_DAY))
        except OverflowError:
            return whole(value)
        if value.is_integer():
            return moment.date()
        return moment

    def typed(self, kind: bytes, raw: bytes | None, body: bytes | None) -> Cell:
        """A cell of type `kind` (not a plain number) from its <v> text or its whole body."""
        if kind == b"inlineStr":
            found = _INLINE.search(body or b"")
            return _si_text(found[1]) or None if found else None
        if raw is None:
            found = _VALUE.search(body or b"")
            raw = found[1] if found else b""
        if kind == b"s":
            if not raw:
                return None
            return self.strings[int(raw)] or None
        if kind == b"str":
            return _text(raw) or None
        if kind == b"b":
            if not raw:
                return None
            flag = raw.lower()
            if flag in (b"1", b"true"):
                return True
            if flag in (b"0", b"false"):
                return False
            raise _Damaged("a boolean cell holds neither 0 nor 1")
        if kind == b"e":
            return None
        if kind == b"d":
            return _iso(_text(raw))
        if kind == b"n":
            return self.number(raw, 0)
        return _text(raw) or None


def _iso(text: str) -> Cell:
    try:
        if _ISO_DATETIME.fullmatch(text):
            return dt.datetime.fromisoformat(text)
        if _ISO_DATE.fullmatch(text):
            return dt.date.fromisoformat(text)
        if _ISO_TIME.fullmatch(text):
            return dt.time.fromisoformat(text)
    except ValueError:
        pass
    return text or None


# --- the sheet --------------------------------------------------------------------------------


_COLUMNS: dict[bytes, int] = {}  # column letters seen, and their numbers


def _column(letters: bytes) -> int:
    number = 0
    for letter in letters.upper():
        number = number * 26 + letter - 64
    _COLUMNS[letters] = number
    return number


def _rows(xml: IO[bytes], cells: _Cells) -> Iterator[list[Cell]]:
    """Rows of the sheet part from row 1: `[]` for a row the XML leaves out."""
    strings = cells.strings
    kinds = cells.kinds
    columns = _COLUMNS
    number = cells.number
    typed = cells.typed
    done = 0  # the last row number yielded
    row: list[Cell] | None = None  # the row being read
    row_number = column = 0
    for tokens in _token_batches(xml):
        for tag, row_attrs, closed, letters, style, kind, other, value, body in tokens:
            if tag:  # <row ...>: the previous row is complete
                if row is not None:
                    yield trimmed(row)
                    done = row_number
                if row_attrs[:4] == b' r="':  # as every writer measured puts it
                    row_number = int(row_attrs[4 : row_attrs.index(b'"', 4)])
                else:
                    found = _ROW_NUMBER.search(row_attrs)
                    row_number = int(found[1]) if found else row_number + 1
                if row_number <= done:
                    raise _Damaged("rows out of order")
                while done + 1 < row_number:
                    done += 1
                    yield []
                row, column = [], 0
                if closed:
                    yield row
                    done, row = row_number, None
                continue
            if row is None:
                raise _Damaged("a cell outside a row")
            if other:  # attributes in another order, quoting or company: read them all
                attrs = {key: a or b for key, a, b in _ATTRIBUTE.findall(other)}
                ref = _REF.match(attrs.get(b"r", b""))
                letters = letters or (ref[1] if ref else b"")
                style = style or attrs.get(b"s", b"")
                kind = kind or attrs.get(b"t", b"")
            column = (columns.get(letters) or _column(letters)) if letters else column + 1
            if body:
                if b"<![CDATA[" in body:
                    body = _CDATA.sub(_escaped, body)
                if kind in (b"", b"n"):
                    cell = number(_value(body), int(style or 0))
                else:
                    cell = typed(kind, None, body)
            elif kind == b"s" and value:
                cell = strings[int(value)] or None
            elif (
                kind == b""
                and value
                and not value.translate(None, _DIGITS)
                and (not style or int(style) >= len(kinds) or kinds[int(style)] == NUMBER)
            ):
                try:  # the common number: digits and a point, no date format
                    cell = whole(float(value))
                except ValueError:  # "e" or "." alone: text, as calamine reads it
                    cell = value.decode()
            elif kind in (b"", b"n"):
                cell = number(value, int(style or 0))
            else:
                cell = typed(kind, value, None)
            if cell is None:
                continue
            gap = column - 1 - len(row)
            if gap > 0:
                row.extend([None] * gap)
            elif gap < 0:
                raise _Damaged("cells out of order")
            row.append(cell)
    if row is not None:
        yield trimmed(row)


_Token = tuple[bytes, bytes, bytes, bytes, bytes, bytes, bytes, bytes, bytes]


def _token_batches(xml: IO[bytes]) -> Iterator[list[_Token]]:
    """The rows and cells of <sheetData>, a chunk of whole rows at a time."""
    data = b""
    started = False
    while True:
        chunk = xml.read(_CHUNK)
        data += chunk
        if not started:
            start = _SHEET_DATA.search(data)
            if start is None:
                if not chunk:
                    raise _Damaged("the sheet has no sheetData")
                continue
            if start[1]:  # <sheetData/>
                return
            started, data = True, data[start.end() :]
        ending = _SHEET_DATA_END.search(data)
        if ending is not None:
            yield _TOKEN.findall(data, 0, ending.start())
            return
        if not chunk:
            raise _Damaged("the sheet is cut short")
        cut = _last_start(data, b"row")
        if cut:
            yield _TOKEN.findall(data, 0, cut)
            data = data[cut:]


def _value(body: bytes) -> bytes:
    found = _VALUE.search(body)
    return found[1] if found else b""

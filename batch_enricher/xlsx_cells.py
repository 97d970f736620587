"""Our cells as SpreadsheetML: `<c>` elements for the result columns and the styles they use.

`add_styles` appends to a workbook's styles.xml (bytes in, bytes out, everything else kept byte
for byte) the fonts, fills, number formats and cell formats our cells need, and returns their
indexes as `CellStyles`. `CellRenderer` turns one row's result cells into XML, typed as the
XLSX writer types them (writer.py): a text cell is an inline string (never a formula, whatever
it starts with), numbers and booleans stay typed, ints with more than Excel's 15 significant
digits and non-finite floats become text, dates become serial numbers with a date format;
`text_columns` are text with number format "@"; the status column is coloured by status.

A row is rendered once per distinct result (a person's cells are the same on every row of
theirs) into a template whose pieces are joined with the row number: the per-row cost is one
dict lookup and one `bytes.join`.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from batch_enricher.errors import InputError
from batch_enricher.writer import (
    _STATUS_COLOURS,
    EXCEL_ESCAPE,
    Cell,
    _text,
    _xml_safe,
    excel_keeps,
)

#: Templates kept per renderer before the cache starts over (a template is ~1 KB).
_CACHE_SIZE: Final = 4096
#: Marks where the row number goes in a rendered template (XML text never holds a NUL).
_ROW: Final = "\x00"

#: `\r` is written as a character reference: an XML parser turns a literal CR into LF.
_XML_TEXT: Final = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})
_XML_ATTR: Final = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\r": "&#13;", "\n": "&#10;"}
)

#: Number format 49 is Excel's built-in "@" (text); 21 is "h:mm:ss".
_TEXT_FORMAT: Final = 49
_TIME_FORMAT: Final = 21
#: Custom formats for the date kinds (as openpyxl writes them), appended to numFmts.
_DATE_FORMATS: Final = ("yyyy-mm-dd h:mm:ss", "yyyy-mm-dd")
#: The first id Excel leaves to custom number formats.
_FIRST_CUSTOM_FORMAT: Final = 164

_EPOCH_1900: Final = datetime.datetime(1899, 12, 30)
_EPOCH_1904: Final = datetime.datetime(1904, 1, 1)
#: 1 March 1900, the first day whose 1900-system serial is right from the 1899-12-30 epoch.
_FIRST_TRUE_SERIAL: Final = 61


@dataclass(frozen=True)
class CellStyles:
    """Indexes into a workbook's cellXfs of the formats our cells use."""

    header: int
    text: int
    status: Mapping[str, int]
    datetime: int
    date: int
    time: int


def column_letter(column: int) -> str:
    """The letters of a 1-based column number.

    >>> column_letter(1), column_letter(27), column_letter(16384)
    ('A', 'AA', 'XFD')
    """
    letters = ""
    while column > 0:
        column, rest = divmod(column - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


def xml_text(text: str) -> str:
    """`text` escaped for an XML attribute value.

    >>> xml_text('a<b & "c"')
    'a&lt;b &amp; &quot;c&quot;'
    """
    return text.translate(_XML_ATTR)


def string_element(text: str, prefix: str = "") -> str:
    """The `<is>` element of an inline string cell holding `text` (already XML-safe)."""
    if "_x" in text:
        text = EXCEL_ESCAPE.sub(r"_x005F_\1", text)
    space = ' xml:space="preserve"' if text != text.strip() else ""
    return f"<{prefix}is><{prefix}t{space}>{text.translate(_XML_TEXT)}</{prefix}t></{prefix}is>"


class CellRenderer:
    """Renders rows of cells that start at column `first_col` as `<c>` elements."""

    def __init__(
        self,
        styles: CellStyles,
        *,
        first_col: int,
        prefix: str = "",
        text_columns: Collection[int] = (),
        status_column: int | None = None,
        date1904: bool = False,
    ) -> None:
        self._styles = styles
        self._prefix = prefix
        self._first_col = first_col
        self._text_columns = frozenset(text_columns)
        self._status_column = status_column
        self._epoch = _EPOCH_1904 if date1904 else _EPOCH_1900
        self._rows: dict[tuple[tuple[Cell, ...], tuple[type, ...]], list[bytes]] = {}
        self._cells: dict[tuple[int, type, Cell], str] = {}
        self._refs: list[str] = []

    def row(self, cells: Sequence[Cell]) -> list[bytes]:
        """A row's cells as pieces to join with the row number (see `join`).

        Cached per row (a person's result repeats on their rows) and per cell (statuses,
        codes and bands repeat across people): only new values are rendered.
        """
        key = (tuple(cells), tuple(map(type, cells)))
        template = self._rows.get(key)
        if template is None:
            if len(self._rows) >= _CACHE_SIZE:
                self._rows.clear()
            if len(self._cells) >= _CACHE_SIZE:
                self._cells.clear()
            known, xml = self._cells, []
            for index, value in enumerate(cells):
                cell_key = (index, type(value), value)
                fragment = known.get(cell_key)
                if fragment is None:
                    fragment = known[cell_key] = self._fragment(index, self._cell(index, value))
                xml.append(fragment)
            template = self._rows[key] = "".join(xml).encode().split(_ROW.encode())
        return template

    def header(self, headers: Sequence[str]) -> list[bytes]:
        """Header cells: bold text."""
        return self._render(
            [
                self._string(text, self._styles.header) if (text := _xml_safe(h)) else None
                for h in headers
            ]
        )

    def labelled(self, cells: Sequence[Cell], *, bold: bool = False) -> list[bytes]:
        """Cells typed like data cells, without column roles (the Summary sheet's rows)."""
        parts: list[tuple[str, str] | None] = []
        for value in cells:
            if bold and isinstance(value, str):
                text = _xml_safe(value)
                parts.append(self._string(text, self._styles.header) if text else None)
            else:
                parts.append(self._typed(value))
        return self._render(parts)

    @staticmethod
    def join(template: list[bytes], row: int) -> bytes:
        """The cells of `template` for sheet row `row`."""
        return str(row).encode().join(template)

    def _render(self, cells: Sequence[tuple[str, str] | None]) -> list[bytes]:
        """`(attributes, content)` per cell (None: no cell) as a template of pieces."""
        xml = "".join(self._fragment(index, cell) for index, cell in enumerate(cells))
        return xml.encode().split(_ROW.encode())

    def _fragment(self, index: int, cell: tuple[str, str] | None) -> str:
        """One `<c>` element, `_ROW` standing for its row number ("" for no cell)."""
        if cell is None:
            return ""
        while len(self._refs) <= index:
            self._refs.append(column_letter(self._first_col + len(self._refs)))
        attrs, content = cell
        p = self._prefix
        end = f">{content}</{p}c>" if content else "/>"
        return f'<{p}c r="{self._refs[index]}{_ROW}"{attrs}{end}'

    def _cell(self, index: int, value: Cell) -> tuple[str, str] | None:
        if index in self._text_columns:
            text = "" if value is None else _xml_safe(_text(value))
            return self._string(text, self._styles.text)
        if index == self._status_column and isinstance(value, str):
            style = self._styles.status.get(str(value))
            if style is not None:
                text = _xml_safe(str(value))
                return self._string(text, style) if text else None
        return self._typed(value)

    def _typed(self, value: Cell) -> tuple[str, str] | None:
        """A plain cell: the value in the type writer.py gives it, in the default format."""
        if value is None:
            return None
        if isinstance(value, str):
            text = _xml_safe(str(value))
            return self._string(text, None) if text else None
        if isinstance(value, bool):
            return ' t="b"', f"<{self._prefix}v>{int(value)}</{self._prefix}v>"
        if isinstance(value, int):
            if excel_keeps(value):
                return "", f"<{self._prefix}v>{value}</{self._prefix}v>"
            return self._string(str(value), None)
        if isinstance(value, float):
            if math.isfinite(value):
                return "", f"<{self._prefix}v>{value!r}</{self._prefix}v>"
            return self._string(repr(value), None)
        return self._temporal(value)

    def _temporal(
        self, value: datetime.datetime | datetime.date | datetime.time
    ) -> tuple[str, str]:
        if isinstance(value, datetime.datetime | datetime.time) and value.tzinfo is not None:
            return self._string(value.isoformat(), None)  # Excel has no time zones
        if isinstance(value, datetime.datetime):
            serial, style = (
                (value - self._epoch) / datetime.timedelta(days=1),
                self._styles.datetime,
            )
        elif isinstance(value, datetime.date):
            serial = float((value - self._epoch.date()).days)
            style = self._styles.date
        else:
            seconds = value.hour * 3600 + value.minute * 60 + value.second
            serial, style = (seconds + value.microsecond / 1e6) / 86400, self._styles.time
        if (
            self._epoch is _EPOCH_1900
            and 0 < serial < _FIRST_TRUE_SERIAL
            and style != self._styles.time
        ):
            serial -= 1  # Excel counts a 29 February 1900 that never was
        number = int(serial) if serial.is_integer() else serial
        return f' s="{style}"', f"<{self._prefix}v>{number!r}</{self._prefix}v>"

    def _string(self, text: str, style: int | None) -> tuple[str, str]:
        attrs = "" if style is None else f' s="{style}"'
        if not text:
            return attrs, ""  # an empty cell that keeps its format
        return f'{attrs} t="inlineStr"', string_element(text, self._prefix)


# --- styles.xml ---------------------------------------------------------------------------------


def add_styles(styles_xml: bytes | None) -> tuple[bytes, CellStyles]:
    """styles.xml with our formats appended (a minimal one if the workbook has none).

    Our fonts are the workbook's default font (its first), made bold or coloured, so the new
    columns look like the rest of the sheet.
    """
    text = (styles_xml or _MINIMAL_STYLES).decode("utf-8")
    p = _prefix_of(text, "styleSheet")
    default_font = _children(text, p, "fonts", "font")
    base_font = _plain_font(default_font[0], p) if default_font else f"<{p}font></{p}font>"
    colours = list(dict.fromkeys(_STATUS_COLOURS.values()))
    fonts = [_with(base_font, p, f"<{p}b/>")] + [
        _with(base_font, p, f'<{p}color rgb="FF{font}"/>') for _, font in colours
    ]
    fills = [
        f'<{p}fill><{p}patternFill patternType="solid"><{p}fgColor rgb="FF{fill}"/>'
        f'<{p}bgColor indexed="64"/></{p}patternFill></{p}fill>'
        for fill, _ in colours
    ]
    used = {int(m) for m in re.findall(r'numFmtId\s*=\s*["\'](\d+)', text)}
    first_format = max([_FIRST_CUSTOM_FORMAT - 1, *used]) + 1
    formats = [
        f'<{p}numFmt numFmtId="{first_format + i}" formatCode="{xml_text(code)}"/>'
        for i, code in enumerate(_DATE_FORMATS)
    ]

    text, first_font = _append(text, p, "fonts", "font", fonts, before=("fills",))
    text, first_fill = _append(text, p, "fills", "fill", fills, before=("borders",))
    style_xf = ' xfId="0"' if _children(text, p, "cellStyleXfs", "xf") else ""
    xfs = [
        f'<{p}xf numFmtId="0" fontId="{first_font}" fillId="0" borderId="0"{style_xf}'
        ' applyFont="1"/>',
        f'<{p}xf numFmtId="{_TEXT_FORMAT}" fontId="0" fillId="0" borderId="0"{style_xf}'
        ' applyNumberFormat="1"/>',
        *(
            f'<{p}xf numFmtId="0" fontId="{first_font + 1 + i}" fillId="{first_fill + i}"'
            f' borderId="0"{style_xf} applyFont="1" applyFill="1"/>'
            for i in range(len(fills))
        ),
        *(
            f'<{p}xf numFmtId="{number_format}" fontId="0" fillId="0" borderId="0"{style_xf}'
            ' applyNumberFormat="1"/>'
            for number_format in (first_format, first_format + 1, _TIME_FORMAT)
        ),
    ]
    text, first_xf = _append(
        text, p, "cellXfs", "xf", xfs, before=("cellStyles", "dxfs", "tableStyles", "extLst")
    )
    text, _ = _append(
        text, p, "numFmts", "numFmt", formats, before=("fonts", "fills", "borders", "cellXfs")
    )
    status = {name: first_xf + 2 + colours.index(pair) for name, pair in _STATUS_COLOURS.items()}
    return text.encode("utf-8"), CellStyles(
        header=first_xf,
        text=first_xf + 1,
        status=status,
        datetime=first_xf + 2 + len(fills),
        date=first_xf + 3 + len(fills),
        time=first_xf + 4 + len(fills),
    )


_MINIMAL_STYLES: Final = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    b'<styleSheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
    b'<fonts count="1"><font><sz val="11"/><name val="Calibri"/></font></fonts>'
    b'<fills count="2"><fill><patternFill patternType="none"/></fill>'
    b'<fill><patternFill patternType="gray125"/></fill></fills>'
    b'<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>'
    b'<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs>'
    b'<cellXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/></cellXfs>'
    b'<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles>'
    b"</styleSheet>"
)


def _prefix_of(text: str, local: str) -> str:
    """The namespace prefix (with its colon, or "") the document uses for element `local`."""
    match = re.search(rf"<([A-Za-z_][\w.-]*:)?{local}[\s/>]", text)
    if match is None:
        raise InputError(f"the styles part has no <{local}> element")
    return match.group(1) or ""


def _block(text: str, p: str, name: str) -> re.Match[str] | None:
    """The element `name` (a container that appears once): start tag, content and end."""
    return re.search(
        rf"<{re.escape(p)}{name}(?=[\s/>])[^>]*?(?:/>|>(.*?)</{re.escape(p)}{name}\s*>)",
        text,
        re.DOTALL,
    )


def _children(text: str, p: str, container: str, child: str) -> list[str]:
    """The `child` elements of `container` (which holds nothing else that nests), as text."""
    block = _block(text, p, container)
    if block is None or block.group(1) is None:
        return []
    q = re.escape(p)
    return re.findall(
        rf"<{q}{child}(?=[\s/>])[^>]*?(?:/>|>.*?</{q}{child}\s*>)", block.group(1), re.DOTALL
    )


def _append(
    text: str, p: str, container: str, child: str, items: Sequence[str], *, before: Sequence[str]
) -> tuple[str, int]:
    """Append `items` to `container` (created before the first of `before` if missing).

    Returns the new text and the index of the first appended item. The count attribute is
    set to the real number of children.
    """
    block = _block(text, p, container)
    existing = len(_children(text, p, container, child))
    total = existing + len(items)
    if block is None:
        new = f'<{p}{container} count="{total}">{"".join(items)}</{p}{container}>'
        at = _insert_position(text, p, before)
        return text[:at] + new + text[at:], existing
    start_tag = re.match(r"<[^>]*?(?=/?>)", block.group(0))
    assert start_tag is not None
    tag = start_tag.group(0)
    if re.search(r"\scount\s*=", tag):
        tag = re.sub(r'(\scount\s*=\s*)(["\'])\d*\2', rf'\g<1>"{total}"', tag)
    else:
        tag += f' count="{total}"'
    content = block.group(1) or ""
    new = f"{tag}>{content}{''.join(items)}</{p}{container}>"
    return text[: block.start()] + new + text[block.end() :], existing


def _insert_position(text: str, p: str, before: Sequence[str]) -> int:
    """Where an element goes that must precede the first of `before` (or the root's end)."""
    names = "|".join(re.escape(name) for name in before)
    match = re.search(rf"<{re.escape(p)}(?:{names})(?=[\s/>])", text)
    if match is not None:
        return match.start()
    return text.rindex(f"</{p}styleSheet")


def _plain_font(font: str, p: str) -> str:
    """A font element without bold, italic, underline, strike-through or colour."""
    q = re.escape(p)
    font = re.sub(rf"<{q}(?:b|i|u|strike|color)(?=[\s/>])[^>]*?(?:/>|>[^<]*</{q}\w+>)", "", font)
    if font.endswith("/>"):  # <font/>: an empty font element
        font = font[:-2] + f"></{p}font>"
    return font


def _with(font: str, p: str, child: str) -> str:
    """`font` with `child` as its first child."""
    end = font.index(">") + 1
    return font[:end] + child + font[end:]

"""The parts of a workbook package around the enriched sheet: found, then edited in place.

`read_package` finds, from the package's small XML parts, where the enriched sheet, the
styles, the workbook and its relationships live (part names are resolved the OPC way:
relative to their source, case-insensitively, percent-decoded), and whether the workbook has
macros. The `*_with` functions return an edited copy of one small part: text is inserted
or replaced where needed and every other byte kept, so namespace prefixes, `mc:Ignorable`
lists and extensions other writers put there survive (re-serialising with ElementTree would
rename prefixes and break `mc:Ignorable`). `summary_parts` builds the Summary sheet and, for
its charts, drawing and chart parts (the chart XML is openpyxl's, as in the XLSX writer).
"""

from __future__ import annotations

import posixpath
import re
import urllib.parse
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from xml.sax import saxutils

from batch_enricher.errors import InputError
from batch_enricher.writer import (
    _CHART_ROWS,
    _MAX_WIDTH,
    _MIN_WIDTH,
    SummarySheet,
    _as_cell,
    _display_width,
    _xml_safe,
)
from batch_enricher.xlsx_cells import CellRenderer, CellStyles, xml_text

CONTENT_TYPES: Final = "[Content_Types].xml"
WORKSHEET_TYPE: Final = "application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"
STYLES_TYPE: Final = "application/vnd.openxmlformats-officedocument.spreadsheetml.styles+xml"
_DRAWING_TYPE: Final = "application/vnd.openxmlformats-officedocument.drawing+xml"
_CHART_TYPE: Final = "application/vnd.openxmlformats-officedocument.drawingml.chart+xml"
_PACKAGE_RELS: Final = "http://schemas.openxmlformats.org/package/2006/relationships"
_STRICT_MAIN: Final = "http://purl.oclc.org/ooxml/spreadsheetml/main"
_DECLARATION: Final = b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
#: Characters Excel refuses in a sheet name.
_BAD_TITLE: Final = re.compile(r"[\[\]:*?/\\]")
_MAX_TITLE: Final = 31
#: Workbook elements that follow <definedNames> (ECMA-376 CT_Workbook), and the end tag.
_AFTER_DEFINED_NAMES: Final = (
    "calcPr|oleSize|customWorkbookViews|pivotCaches|smartTagPr|smartTagTypes|webPublishing|"
    "fileRecoveryPr|webPublishObjects|extLst"
)


@dataclass(frozen=True)
class Relationship:
    """One `<Relationship>` of a .rels part, its target resolved to a part name."""

    id: str
    type: str
    part: str  # resolved, lower-case ("" for an external target)


@dataclass(frozen=True)
class Package:
    """Where things are in a workbook package."""

    names: Mapping[str, str]  # lower-case part name → the name in the zip
    workbook: str
    workbook_rels: str
    sheet_part: str
    sheet_title: str
    sheet_position: int  # 0-based, among the workbook's sheets (localSheetId)
    sheet_titles: Sequence[str]
    styles: str | None
    app: str | None
    rel_base: str  # relationship types and the r: namespace start with this
    main_ns: str
    date1904: bool
    macro_parts: frozenset[str]  # zip names of the VBA project and its signatures

    @property
    def strict(self) -> bool:
        """A Strict OOXML workbook (ISO 29500 strict namespaces)."""
        return self.main_ns == _STRICT_MAIN


def read_package(zf: zipfile.ZipFile, sheet: str) -> Package:
    """Find the workbook, the sheet named `sheet` and its neighbours in an open package."""
    names = {info.filename.lower(): info.filename for info in zf.infolist()}
    if CONTENT_TYPES.lower() not in names:
        raise InputError("it is not a workbook package (no [Content_Types].xml)")
    root_rels = _relationships(zf, names, "")
    workbook = _target(root_rels, "/officeDocument", "the package has no workbook")
    app = next((r.part for r in root_rels if r.type.endswith("/extended-properties")), None)
    book = _parse(zf, names, workbook)
    main_ns = book.tag[1:].partition("}")[0]
    sheets = [
        (element.get("name") or "", _attribute(element, "id"))
        for element in book.iterfind("{*}sheets/{*}sheet")
    ]
    titles = [title for title, _ in sheets]
    if sheet not in titles:
        raise InputError(f"the workbook has no sheet named {sheet!r}")
    position = titles.index(sheet)
    rels = _relationships(zf, names, workbook)
    by_id = {r.id: r for r in rels}
    link = by_id.get(sheets[position][1] or "")
    if link is None or not link.type.endswith("/worksheet") or link.part not in names:
        raise InputError(f"sheet {sheet!r} is not a worksheet this tool can write to")
    vba = {r.part for r in rels if r.type.endswith("/vbaProject") and r.part in names}
    for part in list(vba):
        vba |= {r.part for r in _relationships(zf, names, part) if r.part in names}
    properties = book.find("{*}workbookPr")
    date1904 = properties is not None and properties.get("date1904", "") in ("1", "true")
    styles = next((r.part for r in rels if r.type.endswith("/styles") and r.part in names), None)
    return Package(
        names=names,
        workbook=names[workbook],
        workbook_rels=names.get(rels_name(workbook), rels_name(workbook)),
        sheet_part=names[link.part],
        sheet_title=sheet,
        sheet_position=position,
        sheet_titles=titles,
        styles=names[styles] if styles else None,
        app=names.get(app) if app else None,
        rel_base=link.type.rsplit("/", 1)[0],
        main_ns=main_ns,
        date1904=date1904,
        macro_parts=frozenset(names[part] for part in vba),
    )


def free_title(taken: Sequence[str], wanted: str) -> str:
    """A sheet title like `wanted` that no sheet has (Excel compares titles case-insensitively).

    >>> free_title(["Data", "summary"], "Summary")
    'Summary (2)'
    """
    base = _BAD_TITLE.sub("_", _xml_safe(wanted)).strip("'")[:_MAX_TITLE] or "Summary"
    used = {title.casefold() for title in taken}
    title, number = base, 1
    while title.casefold() in used:
        number += 1
        suffix = f" ({number})"
        title = base[: _MAX_TITLE - len(suffix)] + suffix
    return title


def free_part(names: Mapping[str, str], pattern: str) -> tuple[int, str]:
    """The first `pattern.format(n)` (n ≥ 1) that is not a part of the package yet."""
    number = 1
    while pattern.format(number).lower() in names:
        number += 1
    return number, pattern.format(number)


def free_id(rels_xml: bytes, also: Collection[str] = ()) -> str:
    """A relationship id used neither in `rels_xml` nor in `also`."""
    used = {rid.decode() for rid in re.findall(rb"\sId\s*=\s*[\"']([^\"']*)[\"']", rels_xml)}
    used.update(also)
    number = len(used) + 1
    while f"rId{number}" in used:
        number += 1
    return f"rId{number}"


# --- edits of small parts --------------------------------------------------------------------


def workbook_with(
    xml: bytes,
    *,
    rel_ns: str,
    new_sheet: tuple[str, int, str] | None,
    filter_name: tuple[int, str, str] | None,
) -> bytes:
    """workbook.xml with a sheet added at the end (title, sheetId, relationship id) and the
    `_xlnm._FilterDatabase` name of sheet `filter_name` = (position, title, range) set."""
    text = xml.decode("utf-8")
    p = _prefix(text, "workbook")
    if new_sheet is not None:
        title, sheet_id, rid = new_sheet
        element = (
            f'<{p}sheet xmlns:r="{rel_ns}" name="{xml_text(title)}" sheetId="{sheet_id}"'
            f' r:id="{rid}"/>'
        )
        end = re.search(rf"</{re.escape(p)}sheets\s*>", text)
        if end is None:
            raise InputError("the workbook part has no <sheets>")
        text = text[: end.start()] + element + text[end.start() :]
    if filter_name is not None:
        text = _with_filter_name(text, p, *filter_name)
    return text.encode("utf-8")


def _with_filter_name(text: str, p: str, position: int, title: str, ref: str) -> str:
    quoted = "'" + title.replace("'", "''") + "'"
    absolute = ":".join(re.sub(r"([A-Z]+)(\d+)", r"$\1$\2", corner) for corner in ref.split(":"))
    value = xml_text(f"{quoted}!{absolute}")
    q = re.escape(p)
    for name in re.finditer(rf"<{q}definedName(?=[\s>])([^>]*)>(.*?)</{q}definedName\s*>", text):
        attrs = name.group(1)
        if re.search(r"\sname\s*=\s*[\"']_xlnm\._FilterDatabase[\"']", attrs) and re.search(
            rf"\slocalSheetId\s*=\s*[\"']{position}[\"']", attrs
        ):
            return text[: name.start(2)] + value + text[name.end(2) :]
    element = (
        f'<{p}definedName name="_xlnm._FilterDatabase" localSheetId="{position}"'
        f' hidden="1">{value}</{p}definedName>'
    )
    end = re.search(rf"</{q}definedNames\s*>", text)
    if end is not None:
        return text[: end.start()] + element + text[end.start() :]
    empty = re.search(rf"<{q}definedNames\s*/>", text)
    if empty is not None:
        return (
            f"{text[: empty.start()]}<{p}definedNames>{element}</{p}definedNames>"
            + text[empty.end() :]
        )
    after = re.search(rf"<{q}(?:{_AFTER_DEFINED_NAMES})(?=[\s/>])|</{q}workbook\s*>", text)
    at = after.start() if after is not None else len(text)
    return f"{text[:at]}<{p}definedNames>{element}</{p}definedNames>{text[at:]}"


def rels_with(xml: bytes | None, additions: Sequence[tuple[str, str, str]]) -> bytes:
    """A .rels part with relationships (id, type, target) added (a new part if None)."""
    if xml is None:
        xml = _DECLARATION + f'<Relationships xmlns="{_PACKAGE_RELS}"></Relationships>'.encode()
    text = xml.decode("utf-8")
    p = _prefix(text, "Relationships")
    new = "".join(
        f'<{p}Relationship Id="{rid}" Type="{kind}" Target="{xml_text(target)}"/>'
        for rid, kind, target in additions
    )
    return _before_end(text, p, "Relationships", new).encode("utf-8")


def rels_without(xml: bytes, parts: frozenset[str], source: str) -> bytes:
    """A .rels part without the relationships whose target is one of `parts` (lower-case)."""
    text = xml.decode("utf-8")

    def keep(found: re.Match[str]) -> str:
        target = re.search(r"\sTarget\s*=\s*[\"']([^\"']*)[\"']", found.group(0))
        hit = target is not None and _resolve(source, _unescape(target.group(1))) in parts
        return "" if hit else found.group(0)

    pattern = r"<(?:\w+:)?Relationship(?=[\s/>])[^>]*?(?:/>|>.*?</(?:\w+:)?Relationship\s*>)"
    return re.sub(pattern, keep, text, flags=re.DOTALL).encode("utf-8")


def content_types_with(
    xml: bytes, overrides: Sequence[tuple[str, str]], *, without: frozenset[str] = frozenset()
) -> bytes:
    """[Content_Types].xml with Overrides (part name, type) added and those of `without`
    (lower-case part names) removed."""
    text = xml.decode("utf-8")
    p = _prefix(text, "Types")
    if without:

        def keep(found: re.Match[str]) -> str:
            name = re.search(r"\sPartName\s*=\s*[\"']/?([^\"']*)[\"']", found.group(0))
            return "" if name and _unescape(name.group(1)).lower() in without else found.group(0)

        text = re.sub(rf"<{re.escape(p)}Override(?=[\s/>])[^>]*?/>", keep, text)
    new = "".join(
        f'<{p}Override PartName="/{xml_text(name)}" ContentType="{kind}"/>'
        for name, kind in overrides
    )
    if not re.search(r"\sExtension\s*=\s*[\"']rels[\"']", text, re.IGNORECASE):
        new += (
            f'<{p}Default Extension="rels" '
            'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        )
    return _before_end(text, p, "Types", new).encode("utf-8")


def app_with(xml: bytes, after: str, title: str) -> bytes:
    """docProps/app.xml with `title` listed after sheet `after`, in that sheet's group.

    Its HeadingPairs name groups of parts in the (localised) words of the application that
    wrote it ("Worksheets", "工作表", "Листы") with a count each; TitlesOfParts lists the parts
    in that order. Left as it is when the two do not agree (the part is informative only).
    """
    text = xml.decode("utf-8")
    pairs = re.search(r"<(?:\w+:)?HeadingPairs>(.*?)</(?:\w+:)?HeadingPairs>", text, re.DOTALL)
    titles = re.search(
        r"<(?:\w+:)?TitlesOfParts>\s*<(\w+:)?vector\b[^>]*?\ssize=[\"'](\d+)[\"'][^>]*>(.*?)"
        r"</\1vector>",
        text,
        re.DOTALL,
    )
    if pairs is None or titles is None:
        return xml
    vt = re.escape(titles.group(1) or "")
    counts = list(re.finditer(rf"<{vt}i4>(\d+)</{vt}i4>", pairs.group(1)))
    names = list(re.finditer(rf"<{vt}lpstr>(.*?)</{vt}lpstr>", titles.group(3), re.DOTALL))
    if not names or sum(int(c.group(1)) for c in counts) != len(names):
        return xml
    seen = 0
    for count in counts:
        group = names[seen : seen + int(count.group(1))]
        seen += int(count.group(1))
        if not any(_text_of(name.group(1)) == after for name in group):
            continue
        entry = f"<{titles.group(1) or ''}lpstr>{xml_text(title)}</{titles.group(1) or ''}lpstr>"
        edits = [
            (titles.start(3) + group[-1].end(), titles.start(3) + group[-1].end(), entry),
            (titles.start(2), titles.end(2), str(int(titles.group(2)) + 1)),
            (
                pairs.start(1) + count.start(1),
                pairs.start(1) + count.end(1),
                str(int(count.group(1)) + 1),
            ),
        ]
        for start, end, new in sorted(edits, reverse=True):
            text = text[:start] + new + text[end:]
        return text.encode("utf-8")
    return xml


def _text_of(escaped: str) -> str:
    return saxutils.unescape(escaped, {"&quot;": '"', "&apos;": "'"})


# --- the Summary sheet ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NewPart:
    """A part to add to the package: its name, content, and content type (None: a .rels)."""

    name: str
    data: bytes
    content_type: str | None


def summary_parts(
    summary: SummarySheet,
    *,
    package: Package,
    title: str,
    sheet_name: str,
    styles: CellStyles,
) -> list[NewPart]:
    """The Summary sheet's part, and its drawing, charts and .rels when it has charts.

    The layout is the XLSX writer's: the title, a label/value table, then each chart's data
    below it in A:B and the chart to the right of the table.
    """
    renderer = CellRenderer(styles, first_col=1, date1904=package.date1904)
    rows: list[bytes] = []

    def add(cells: Sequence[object], *, bold: bool = False) -> None:
        number = len(rows) + 1
        template = renderer.labelled([_as_cell(c) for c in cells], bold=bold)
        rows.append(f'<row r="{number}">'.encode() + renderer.join(template, number) + b"</row>")

    add([summary.title], bold=True)
    for label, value in summary.rows:
        add([label, value])
    data: list[tuple[str, int, int]] = []  # chart title, first and last row of its data
    for chart_title, bands in summary.charts:
        add([])
        add([chart_title], bold=True)
        first = len(rows) + 1
        for band, count in bands:
            add([band, count])
        data.append((chart_title, first, max(len(rows), first)))
    labels = [summary.title, *(label for label, _ in summary.rows)]
    labels += [t for t, bands in summary.charts for t in (t, *(b for b, _ in bands))]
    width = min(_MAX_WIDTH, max(_MIN_WIDTH, *(_display_width(x) + 2 for x in labels)))
    charts = data if not package.strict else []  # openpyxl's chart XML is transitional
    drawing = '<drawing r:id="rId1"/>' if charts else ""
    sheet = (
        _DECLARATION.decode()
        + f'<worksheet xmlns="{package.main_ns}" xmlns:r="{package.rel_base}">'
        f'<dimension ref="A1:B{len(rows)}"/><sheetViews><sheetView workbookViewId="0"/>'
        '</sheetViews><sheetFormatPr defaultRowHeight="15"/>'
        f'<cols><col min="1" max="1" width="{width:g}" customWidth="1"/>'
        '<col min="2" max="2" width="14" customWidth="1"/></cols>'
        f"<sheetData>{b''.join(rows).decode()}</sheetData>"
        '<pageMargins left="0.75" right="0.75" top="1" bottom="1" header="0.5" footer="0.5"/>'
        f"{drawing}</worksheet>"
    )
    parts = [NewPart(sheet_name, sheet.encode("utf-8"), WORKSHEET_TYPE)]
    if charts:
        parts += _chart_parts(charts, package, title, sheet_name)
    return parts


def _chart_parts(
    charts: Sequence[tuple[str, int, int]], package: Package, title: str, sheet_name: str
) -> list[NewPart]:
    """Drawing and chart parts for the Summary sheet, serialised by openpyxl.

    openpyxl's own writer numbers these parts from 1; here they get numbers the package does
    not use yet (its `_id`), which is what its `path` and the drawing's relationships follow.
    """
    from openpyxl.chart import BarChart, Reference
    from openpyxl.chart.reference import DummyWorksheet
    from openpyxl.drawing.spreadsheet_drawing import SpreadsheetDrawing

    names = dict(package.names)
    # Typed as Any: `_id`, `_write` and `_write_rels` are what openpyxl's ExcelWriter uses,
    # outside its type stubs.
    drawing: Any = SpreadsheetDrawing()
    drawing._id, drawing_name = free_part(names, "xl/drawings/drawing{}.xml")
    names[drawing_name.lower()] = drawing_name
    sheet: Any = DummyWorksheet(title)
    parts: list[NewPart] = []
    for number, (chart_title, first, last) in enumerate(charts):
        chart: Any = BarChart()
        chart.title = chart_title
        chart.legend = None
        # openpyxl 3.1 marks axes deleted by default, which hides the band labels in Excel.
        chart.x_axis.delete = False
        chart.y_axis.delete = False
        chart.add_data(Reference(sheet, min_col=2, min_row=first, max_row=last))
        chart.set_categories(Reference(sheet, min_col=1, min_row=first, max_row=last))
        chart.anchor = f"D{1 + number * _CHART_ROWS}"
        chart._id, chart_name = free_part(names, "xl/charts/chart{}.xml")
        names[chart_name.lower()] = chart_name
        drawing.charts.append(chart)
        parts.append(NewPart(chart_name, _serialised(chart._write()), _CHART_TYPE))
    parts.append(NewPart(drawing_name, _serialised(drawing._write()), _DRAWING_TYPE))
    parts.append(NewPart(rels_name(drawing_name), _serialised(drawing._write_rels()), None))
    sheet_rels = rels_with(None, [("rId1", f"{package.rel_base}/drawing", "/" + drawing_name)])
    parts.append(NewPart(rels_name(sheet_name), sheet_rels, None))
    return parts


def _serialised(tree: Any) -> bytes:
    from openpyxl.xml.functions import tostring

    data: bytes | str = tostring(tree)
    return _DECLARATION + (data if isinstance(data, bytes) else data.encode("utf-8"))


# --- reading -----------------------------------------------------------------------------------


def _parse(zf: zipfile.ZipFile, names: Mapping[str, str], part: str) -> ET.Element:
    if part not in names:
        raise InputError(f"the package has no part {part!r}")
    data = zf.read(names[part])
    if b"<!DOCTYPE" in data[:4096]:
        raise InputError(f"{names[part]} declares a DTD, which workbooks never do")
    try:
        return ET.fromstring(data)
    except ET.ParseError as exc:
        raise InputError(f"{names[part]} is not well-formed XML ({exc})") from None


def _relationships(
    zf: zipfile.ZipFile, names: Mapping[str, str], source: str
) -> list[Relationship]:
    """The relationships of part `source` ("" for the package), targets resolved."""
    rels = rels_name(source).lower()
    if rels not in names:
        return []
    out = []
    for element in _parse(zf, names, rels).iterfind("{*}Relationship"):
        external = element.get("TargetMode", "") == "External"
        target = _unescape(element.get("Target", ""))
        part = "" if external else _resolve(source, target)
        out.append(Relationship(element.get("Id", ""), element.get("Type", ""), part))
    return out


def _target(rels: Sequence[Relationship], suffix: str, missing: str) -> str:
    for rel in rels:
        if rel.type.endswith(suffix):
            return rel.part
    raise InputError(missing)


def _attribute(element: ET.Element, local: str) -> str | None:
    """The value of the namespaced attribute `local` (e.g. r:id, whatever the namespace)."""
    for key, value in element.attrib.items():
        if key.endswith("}" + local):
            return value
    return None


def rels_name(part: str) -> str:
    """The .rels part of `part` ("" for the package's own)."""
    folder, name = posixpath.split(part)
    return posixpath.join(folder, "_rels", f"{name}.rels")


def _resolve(source: str, target: str) -> str:
    """A relationship target as a lower-case part name."""
    if target.startswith("/"):
        path = target[1:]
    else:
        path = posixpath.normpath(posixpath.join(posixpath.dirname(source), target))
    return path.lower()


def _unescape(target: str) -> str:
    return urllib.parse.unquote(target)


def _prefix(text: str, local: str) -> str:
    found = re.search(rf"<([A-Za-z_][\w.-]*:)?{local}[\s/>]", text)
    if found is None:
        raise InputError(f"a workbook part has no <{local}> element")
    return found.group(1) or ""


def _before_end(text: str, p: str, root: str, new: str) -> str:
    end = text.rfind(f"</{p}{root}")
    if end < 0:
        empty = re.search(rf"<{re.escape(p)}{root}\b([^>]*)/>", text)
        if empty is None:
            raise InputError(f"a workbook part has no </{root}>")
        element = f"<{p}{root}{empty.group(1)}>{new}</{p}{root}>"
        return text[: empty.start()] + element + text[empty.end() :]
    return text[:end] + new + text[end:]

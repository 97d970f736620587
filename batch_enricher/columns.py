"""Which input column holds the name, the ID number and the mobile; the result column names.

Headers are matched by alias after normalisation (`normalise_header`): full-width forms folded
(NFKC), case ignored, spaces, underscores and hyphens dropped, so " Name ", "ID_Card", "MOBILE "
and "ＩＤＣＡＲＤ" all match. Aliases are data (`ALIASES`); `--name-col`, `--idcard-col` and
`--mobile-col` override them with a header text of the user's choosing (`ColumnNames`).

The header row need not be the first: `find_header` takes the first of the first
`HEADER_SEARCH_ROWS` rows that holds all three columns (a title such as "2024年1月客户名单" may
sit above it); `--header-row N` names it instead.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from batch_enricher.errors import ColumnError
from batch_enricher.privacy import mask_name, scrub

#: The three input fields, in the order the API takes them.
FIELDS: Final = ("realname", "idcard", "mobile")

#: Header texts that identify each field (any spelling that normalises to the same text matches).
#: Deliberately absent: a bare "ID" (often a row or customer number) and 电话/电话号码 (often a
#: landline), so those need an explicit override.
ALIASES: Final[dict[str, tuple[str, ...]]] = {
    "realname": (
        "姓名",
        "客户姓名",
        "真实姓名",
        "用户姓名",
        "名字",
        "realname",
        "real name",
        "name",
        "full name",
        "customer name",
    ),
    "idcard": (
        "身份证",
        "身份证号",
        "身份证号码",
        "身份证件号码",
        "公民身份号码",
        "证件号",
        "证件号码",
        "idcard",
        "id_card",
        "id card",
        "id no",
        "id number",
        "idcard no",
        "idcard number",
    ),
    "mobile": (
        "手机",
        "手机号",
        "手机号码",
        "联系手机",
        "联系电话",
        "移动电话",
        "mobile",
        "mobile no",
        "mobile number",
        "mobile phone",
        "phone",
        "phone number",
        "cellphone",
        "cell phone",
    ),
}

#: How many rows from the top may hold the header row.
HEADER_SEARCH_ROWS: Final = 20

#: What each field is called in messages, and the flag that overrides its column.
_LABELS: Final[dict[str, str]] = {"realname": "name", "idcard": "ID number", "mobile": "mobile"}
_FLAGS: Final[dict[str, str]] = {
    "realname": "--name-col",
    "idcard": "--idcard-col",
    "mobile": "--mobile-col",
}

#: Columns appended to the output, per `--headers` language, in output order.
RESULT_COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    "en": (
        "status",
        "error_code",
        "error_reason",
        "orderid",
        "range_score",
        "range_band",
        "history_score",
        "history_band",
        "stability_score",
        "stability_band",
        "queried_at",
    ),
    "zh": (
        "状态",
        "错误码",
        "错误说明",
        "订单号",
        "经济能力评分",
        "经济能力区间",
        "历史属性评分",
        "历史属性区间",
        "稳定性评分",
        "稳定性区间",
        "查询时间",
    ),
}

# Dropped before comparing headers: whitespace (incl. U+3000 after NFKC), '_' and '-', the BOM
# and zero-width characters that spreadsheet exports leave behind.
_HEADER_NOISE: Final = re.compile(r"[\s_\-\ufeff\u200b\u200c\u200d\u2060]+")

# Show at most this many headers (each cut to _MAX_HEADER_CHARS) in an error message.
_MAX_HEADERS_SHOWN: Final = 40
_MAX_HEADER_CHARS: Final = 40


@dataclass(frozen=True)
class ColumnMap:
    """0-based indexes of the three input fields in the header row."""

    realname: int
    idcard: int
    mobile: int


@dataclass(frozen=True)
class ColumnNames:
    """Header texts given for the three fields (`--name-col` ...); None: found by alias."""

    realname: str | None = None
    idcard: str | None = None
    mobile: str | None = None


def normalise_header(text: str) -> str:
    """The form in which headers are compared.

    >>> normalise_header(" ID_Card ") == normalise_header("ＩＤＣＡＲＤ")
    True
    """
    return _HEADER_NOISE.sub("", unicodedata.normalize("NFKC", text)).casefold()


_ALIAS_KEYS: Final[dict[str, frozenset[str]]] = {
    field: frozenset(normalise_header(alias) for alias in aliases)
    for field, aliases in ALIASES.items()
}
_RESULT_KEYS: Final = frozenset(
    normalise_header(name) for names in RESULT_COLUMNS.values() for name in names
)
# The first two result columns, which open every block of ours.
_STATUS_KEYS: Final = frozenset(normalise_header(names[0]) for names in RESULT_COLUMNS.values())
_ERROR_CODE_KEYS: Final = frozenset(normalise_header(names[1]) for names in RESULT_COLUMNS.values())


def existing_result_columns(headers: Sequence[str]) -> list[int]:
    """Indexes of headers that are our result columns (either language), in an earlier output.

    Our columns always come as a block that starts with status then error_code (enrich outputs
    and validate reports alike); a header such as 状态, status or 订单号 anywhere else is the
    customer's own column and stays.

    >>> existing_result_columns(["姓名", "状态", "status", "error_code", "查询时间", "备注"])
    [2, 3, 4]
    """
    keys = [normalise_header(header) for header in headers]
    found: list[int] = []
    i = 0
    while i < len(keys) - 1:
        if keys[i] in _STATUS_KEYS and keys[i + 1] in _ERROR_CODE_KEYS:
            while i < len(keys) and keys[i] in _RESULT_KEYS:
                found.append(i)
                i += 1
        else:
            i += 1
    return found


def find_columns(
    headers: Sequence[str],
    *,
    realname: str | None = None,
    idcard: str | None = None,
    mobile: str | None = None,
) -> ColumnMap:
    """Map each field to one column by alias or by the header text given as an override.

    >>> find_columns(["客户编号", "姓名", "身份证号", "手机号"])
    ColumnMap(realname=1, idcard=2, mobile=3)

    Raises ColumnError when a field has no column, two columns, or shares a column with another.
    """
    overrides = {"realname": realname, "idcard": idcard, "mobile": mobile}
    found: dict[str, int] = {}
    for field, matches in _matches(headers, overrides).items():
        if not matches:
            raise ColumnError(_missing_message(field, overrides[field], headers))
        if len(matches) > 1:
            raise ColumnError(_ambiguous_message(field, matches, headers))
        found[field] = matches[0]
    _check_distinct(found, headers)
    return ColumnMap(**found)


def find_header(
    rows: Iterable[tuple[int, Sequence[str]]],
    names: ColumnNames = ColumnNames(),
    *,
    limit: int = HEADER_SEARCH_ROWS,
) -> tuple[int, ColumnMap]:
    """The header row among `rows` ((row number, header texts), from the top) and its columns.

    It is the first row, among those numbered up to `limit`, where every field has a column
    (by alias, or by the header text `names` gives); its columns are then mapped as
    `find_columns` does (an ambiguous row raises its error). None qualifies: ColumnError
    listing the headers of the first non-empty row, as `find_columns` would.

    >>> find_header([(1, ["2024年1月客户名单"]), (2, []), (3, ["姓名", "身份证号", "手机号"])])
    (3, ColumnMap(realname=0, idcard=1, mobile=2))
    """
    overrides = {"realname": names.realname, "idcard": names.idcard, "mobile": names.mobile}
    first: Sequence[str] | None = None
    for number, headers in rows:
        if number > limit:
            break
        if first is None and any(h.strip() for h in headers):
            first = headers
        if all(_matches(headers, overrides).values()):
            return number, find_columns(headers, **overrides)
    shown = first or []
    missing = next(field for field, found in _matches(shown, overrides).items() if not found)
    raise ColumnError(
        f"{_missing_message(missing, overrides[missing], shown)} (looked for a header row with "
        f"the name, ID and mobile columns in the first {limit} rows; if it is further down, "
        "pass --header-row N)"
    )


def _matches(headers: Sequence[str], overrides: dict[str, str | None]) -> dict[str, list[int]]:
    """Each field's candidate columns: by its override, else by alias; never our result columns."""
    keys = [normalise_header(h) for h in headers]
    excluded = set(existing_result_columns(headers))
    found: dict[str, list[int]] = {}
    for field in FIELDS:
        override = overrides[field]
        wanted = _ALIAS_KEYS[field] if override is None else {normalise_header(override)}
        found[field] = [i for i, key in enumerate(keys) if key in wanted and i not in excluded]
    return found


def _check_distinct(found: dict[str, int], headers: Sequence[str]) -> None:
    """Refuse one column serving two fields (only possible through overrides)."""
    for a_pos, a in enumerate(FIELDS):
        for b in FIELDS[a_pos + 1 :]:
            if found[a] == found[b]:
                raise ColumnError(
                    f"column {_quote(headers[found[a]])} was chosen for both the {_LABELS[a]} "
                    f"and the {_LABELS[b]}; check {_FLAGS[a]} and {_FLAGS[b]}"
                )


def _missing_message(field: str, override: str | None, headers: Sequence[str]) -> str:
    label, flag = _LABELS[field], _FLAGS[field]
    if override is not None:
        head = f"no column named {_quote(override)} for the {label} ({flag})"
    else:
        looked_for = ", ".join(ALIASES[field])
        head = f"no {label} column found (looked for {looked_for}; use {flag})"
    return f"{head}. {_headers_found(headers)}"


def _ambiguous_message(field: str, matches: list[int], headers: Sequence[str]) -> str:
    label, flag = _LABELS[field], _FLAGS[field]
    named = " and ".join(f"{_quote(headers[i])} (column {i + 1})" for i in matches)
    return f"more than one {label} column: {named}; choose one with {flag}"


def _headers_found(headers: Sequence[str]) -> str:
    """List the headers for an error message without leaking a data row used as a header.

    A file without a header row shows its first person here: if any cell looks like an ID
    number or mobile, every header is masked and the message says why.
    """
    headers = [_one_line(h) for h in headers]
    looks_like_data = any(scrub(h) != h for h in headers)
    shown = [mask_name(h) if looks_like_data else h for h in headers]
    shown = [s if len(s) <= _MAX_HEADER_CHARS else s[:_MAX_HEADER_CHARS] + "…" for s in shown]
    more = len(shown) - _MAX_HEADERS_SHOWN
    text = ", ".join(shown[:_MAX_HEADERS_SHOWN]) if shown else "(none)"
    if more > 0:
        text += f", … ({more} more)"
    if looks_like_data:
        return (
            f"Headers found (masked): {text}. The first row looks like data: "
            "the file needs a header row"
        )
    return f"Headers found: {text}"


def _quote(text: str) -> str:
    return '"' + _one_line(text) + '"'


def _one_line(text: str) -> str:
    """A header as messages show it, on one line: NULs dropped, line breaks and tabs as spaces.

    >>> _one_line(" Line 1\\nLine\\x002 ")
    'Line 1 Line2'
    """
    text = text.replace("\x00", "")
    return " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())

"""Normalise and check a row's name, ID number and mobile before anything is paid for.

`check` turns three raw cells into a `Person` (normalised, ready to send) or an `Invalid`
(with the API's own error code and reason, plus an English detail). It rejects only on
certainties, as DESIGN.md "Local validation" asks:

ID number (281501)
    18 characters: 17 digits and a digit or X; the ISO 7064 MOD 11-2 check digit; a birth date
    that exists, is not before 1900 and not in the future anywhere (after today in UTC+14).
    A 15-digit legacy number is upgraded to 18 digits. An ID that Excel stored as a number
    (>= 16 digits as a numeric cell, text in scientific notation, or 18 digits ending "000"
    whose check digit fails) has lost the digits after the 15th and is flagged, never sent.
    There is no birth-place (region) check.
Name (281502)
    Not empty, at most 50 characters, no digits, no control characters, and no punctuation or
    symbols other than the middle dot "·", and the apostrophe, hyphen, period and single inner
    space of Latin-script names. That excludes every spreadsheet formula trigger (= + @ < > ...)
    and brackets, slashes, commas and the like. Any CJK ideograph (all extensions, compatibility
    ideographs, private-use code points used for rare characters) and any letter or combining
    mark is accepted; the API is the final judge.
Mobile (281503)
    11 digits starting 13-19, nothing more: no number-range tables, they go stale.

Normalisation (also exposed as `normalise_idcard`, `normalise_mobile`, `normalise_name`):
    ID and mobile: NFKC (full-width to half-width), all whitespace and invisible characters
    (zero-width, soft hyphen, bidi marks) removed, a leading apostrophe (a spreadsheet "text"
    marker) removed; ID: x -> X; mobile: separators (space - . parentheses) and a +86 / 0086 /
    (86) / 86- country prefix removed.
    Name: canonical composition (NFC, so a decomposed "Nguyễn" is the same person) except for
    compatibility ideographs; full-width ASCII to half-width (not full NFKC, which would
    rewrite compatibility ideographs that people's names really use), look-alike middle dots
    to "·" (U+00B7), curly apostrophes and dash variants to ASCII. A name holding any CJK
    character loses all spaces (and "." becomes "·", the separator it stands for in minority
    names); a Latin-script name keeps single inner spaces ("Ayşe  Nur" -> "Ayşe Nur").
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
import unicodedata
from collections.abc import Sequence
from typing import Final

from stdnum.iso7064 import mod_11_2

from batch_enricher.codes import INVALID_IDCARD, INVALID_MOBILE, INVALID_NAME, reason_of
from batch_enricher.columns import ColumnMap
from batch_enricher.models import Invalid, Person

# NOTE: stdnum.cn.ric.validate()/is_valid() are deliberately not used: they also reject IDs whose
# first six digits are missing from stdnum's birth-place (region) table, which goes stale as
# districts are created and renamed, and would reject real people. We check only the format,
# the birth date and the ISO 7064 MOD 11-2 check digit.

MAX_NAME_LENGTH: Final = 50

#: Look-alike characters written for the middle dot of minority and foreign names.
MIDDLE_DOTS: Final = "\u2022\u30fb\uff65\u2027\u2219\u22c5\u00b7\u0387\u16eb\u2e31\ua78f"
_NAME_TRANSLATION: Final[dict[int, str]] = {
    **{ord(c): "·" for c in MIDDLE_DOTS},
    **{ord(c): "'" for c in "\u2019\u2018\u02bc`\u00b4"},  # apostrophe look-alikes
    **{ord(c): "-" for c in "\u2010\u2011\u2012\u2013"},  # hyphen look-alikes
    # Full-width ASCII (U+FF01-U+FF5E) to ASCII, and the ideographic space to a space.
    **{code: chr(code - 0xFEE0) for code in range(0xFF01, 0xFF5F)},
    0x3000: " ",
}

# Whitespace (Unicode-aware, incl. U+3000 and NBSP) and invisible characters that copy-paste
# and exports leave behind.
_INVISIBLE: Final = "\u200b\u200c\u200d\u2060\ufeff"
_INVISIBLE_RE: Final = re.compile(f"[{_INVISIBLE}]+")
_SPACE_RE: Final = re.compile(r"\s+")
# In an ID or mobile, also soft hyphens and the bidi marks Windows puts around a phone number
# copied from a contact card ("\u202a138...\u202c"): invisible, so the user sees a valid value.
# (In a name, a bidi override can disguise what is shown, so there it stays a reason to reject.)
_NUMBER_NOISE: Final = f"{_INVISIBLE}\u00ad\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_NUMBER_SPACE_RE: Final = re.compile(rf"[\s{_NUMBER_NOISE}]+")
_MOBILE_SEPARATORS_RE: Final = re.compile(rf"[\s{_NUMBER_NOISE}\-.()]+")
_COUNTRY_PREFIX_RE: Final = re.compile(r"^(?:\+86|0086)")
# A bare "86" is a country code only when exactly a mobile-length number follows.
_BARE_86_RE: Final = re.compile(r"^86(?=1\d{10}$)")
_EXCEL_SCIENTIFIC_RE: Final = re.compile(r"^[0-9](?:\.[0-9]+)?E\+?[0-9]+$")
_ID18_RE: Final = re.compile(r"^[0-9]{17}[0-9X]$")
_ID15_RE: Final = re.compile(r"^[0-9]{15}$")
_MOBILE_RE: Final = re.compile(r"^1[3-9][0-9]{9}$")

# CJK ideographs in every block and extension (planes 2 and 3 are wholly CJK, which also covers
# extensions newer than this Python's Unicode tables), compatibility ideographs, 〇, and the
# private-use areas where rare name characters live before they are encoded.
_CJK_RE: Final = re.compile(
    "[\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\ue000-\uf8ff"
    "\U00020000-\U0003ffff\U000f0000-\U0010ffff]"
)
# CJK compatibility ideographs: NFC maps each to a unified ideograph, but registered names use
# them as they are, so canonical composition (of decomposed accents) skips them.
_COMPAT_IDEOGRAPHS_RE: Final = re.compile("([\uf900-\ufaff\U0002f800-\U0002fa1f])")
# Allowed besides letters, marks and CJK: "·" always; these only in Latin-script names.
_LATIN_NAME_PUNCTUATION: Final = frozenset(" '-.")

#: The time zone whose calendar date is ahead of every other's.
_LATEST_ZONE: Final = dt.timezone(dt.timedelta(hours=14))

_EXCEL_ROUNDED: Final = (
    "stored as a number by Excel, digits after the 15th are lost; export the column as text"
)
_NOT_TEXT: Final[dict[type, str]] = {
    bool: "is a TRUE/FALSE cell",
    dt.datetime: "is a date/time cell",
    dt.date: "is a date cell",
    dt.time: "is a time cell",
}


def normalise_idcard(value: str) -> str:
    """Half-width, no spaces, upper-case X.

    >>> normalise_idcard(" １１０１０１１９９００３０７８０３ｘ ")
    '11010119900307803X'
    """
    text = _NUMBER_SPACE_RE.sub("", unicodedata.normalize("NFKC", value)).upper()
    return text.removeprefix("'")


def normalise_mobile(value: str) -> str:
    """Half-width digits without separators or a mainland country prefix.

    >>> normalise_mobile("+86 (138) 1234-5678")
    '13812345678'
    """
    text = _MOBILE_SEPARATORS_RE.sub("", unicodedata.normalize("NFKC", value)).removeprefix("'")
    text = _COUNTRY_PREFIX_RE.sub("", text)
    return _BARE_86_RE.sub("", text)


def normalise_name(value: str) -> str:
    """Canonical spelling of a name: see the module docstring for the rules.

    >>> normalise_name(" 买买提•艾力 ")
    '买买提·艾力'
    >>> normalise_name("  Ayşe   Nur ")
    'Ayşe Nur'
    """
    # Invisible marks go first, so that one inside a word does not split it with a space.
    text = _INVISIBLE_RE.sub("", _compose(value)).translate(_NAME_TRANSLATION)
    text = _SPACE_RE.sub(" ", text).strip()
    if _CJK_RE.search(text):
        return text.replace(" ", "").replace(".", "·")
    return text


def _compose(text: str) -> str:
    """Canonical composition (NFC), except for CJK compatibility ideographs.

    Files saved on macOS often hold "Nguyễn" decomposed (e + combining marks): the same person,
    who must get the same spelling (one identity, one paid call) and the same length.
    """
    if unicodedata.is_normalized("NFC", text):
        return text
    parts = _COMPAT_IDEOGRAPHS_RE.split(text)  # odd positions hold the ideographs themselves
    return "".join(p if i % 2 else unicodedata.normalize("NFC", p) for i, p in enumerate(parts))


# typed=True keeps 13812345678 (int) and 13812345678.0 (float) apart from the text, which matters
# for IDs: a numeric ID cell is judged differently from the same digits as text. The memo is the
# public function itself: a wrapper around it would cost one more Python call on every row.
@functools.lru_cache(maxsize=65536, typed=True)
def check(realname: object, idcard: object, mobile: object) -> Person | Invalid:
    """Normalise and validate one row's cells (str, or int/float/bool/datetime/None from Excel).

    When several fields are bad, `error_code` is the first of ID, name, mobile and the reason
    lists each problem in that order, separated by " | ". Memoised: files repeat people a lot.

    >>> check("张三", "11010119900307803x", "+86 138 1234 5678")
    Person(realname='张三', idcard='11010119900307803X', mobile='13812345678')
    >>> check("张三", "110101199003078030", "13812345678").reason
    '身份证号格式错误: check digit should be X'
    """
    id_result = _check_idcard(idcard)
    name_result = _check_name(realname)
    mobile_result = _check_mobile(mobile)
    problems = [
        (code, result)
        for code, result in (
            (INVALID_IDCARD, id_result),
            (INVALID_NAME, name_result),
            (INVALID_MOBILE, mobile_result),
        )
        if isinstance(result, _Problem)
    ]
    if problems:
        reason = " | ".join(f"{reason_of(code)}: {problem.detail}" for code, problem in problems)
        return Invalid(error_code=problems[0][0], reason=reason)
    assert isinstance(id_result, str)
    assert isinstance(name_result, str)
    assert isinstance(mobile_result, str)
    return Person(realname=name_result, idcard=id_result, mobile=mobile_result)


def check_row(row: Sequence[object], columns: ColumnMap, width: int) -> Person | Invalid:
    """Check one row's three fields; a row with extra, non-empty cells gets a reason instead.

    Short rows are common (exports drop trailing empty cells): missing fields count as empty.

    >>> check_row(["张三", "11010119900307803X", "13812345678"], ColumnMap(0, 1, 2), 3).mobile
    '13812345678'
    """
    n = len(row)
    if n == width:  # the common case, kept to one call
        return check(row[columns.realname], row[columns.idcard], row[columns.mobile])
    if n > width and any(cell not in (None, "") for cell in row[width:]):
        return Invalid(
            None, f"row has {n} cells but the header has {width}; check the file's quoting"
        )
    fields = (columns.realname, columns.idcard, columns.mobile)
    return check(*(row[i] if i < n else None for i in fields))


class _Problem:
    """Why one field failed (English detail, never the value itself)."""

    __slots__ = ("detail",)

    def __init__(self, detail: str) -> None:
        self.detail = detail


def _number_text(value: int | float) -> str | None:
    """Digits of a whole, non-negative number cell, or None if it is not one."""
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            return None
        value = int(value)
    return str(value) if value >= 0 else None


def _cell_text(value: object) -> str | _Problem:
    """A non-numeric cell as text, or why it cannot hold a name, ID or mobile."""
    if value is None:
        return ""
    for kind, detail in _NOT_TEXT.items():
        if isinstance(value, kind):
            return _Problem(detail)
    return value if isinstance(value, str) else str(value)


def _check_idcard(value: object) -> str | _Problem:
    if isinstance(value, int | float) and not isinstance(value, bool):
        digits = _number_text(value)
        if digits is None:
            return _Problem("is a number cell that is not a whole number")
        if len(digits) >= 16:
            # A double holds 15 significant digits: the rest were rounded away.
            return _Problem(_EXCEL_ROUNDED)
        return _check_id_text(digits)
    text = _cell_text(value)
    if isinstance(text, _Problem):
        return text
    return _check_id_text(normalise_idcard(text))


def _check_id_text(text: str) -> str | _Problem:
    if not text:
        return _Problem("empty")
    if _EXCEL_SCIENTIFIC_RE.match(text):
        return _Problem(_EXCEL_ROUNDED)
    if len(text) == 15:
        return _upgrade_legacy(text)
    if len(text) != 18:
        return _Problem(f"must be 18 characters, got {len(text)}")
    if not _ID18_RE.match(text):
        return _Problem("must be 17 digits followed by a digit or X")
    date_problem = _birth_date_problem(text[6:14])
    if date_problem:
        return _Problem(date_problem)
    expected = mod_11_2.calc_check_digit(text[:17])
    if text[17] != expected:
        if text.endswith("000"):
            return _Problem(f"check digit fails and it ends in 000: probably {_EXCEL_ROUNDED}")
        return _Problem(f"check digit should be {expected}")
    return text


def _upgrade_legacy(text: str) -> str | _Problem:
    """A 15-digit (pre-1999) ID becomes 18 digits: century "19" inserted, check digit added."""
    if not _ID15_RE.match(text):
        return _Problem("a 15-character (old-style) ID must be all digits")
    date_problem = _birth_date_problem("19" + text[6:12])
    if date_problem:
        return _Problem(date_problem)
    body = text[:6] + "19" + text[6:]
    return body + mod_11_2.calc_check_digit(body)


def _birth_date_problem(yyyymmdd: str) -> str | None:
    shown = f"{yyyymmdd[:4]}-{yyyymmdd[4:6]}-{yyyymmdd[6:]}"
    try:
        born = dt.date(int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:]))
    except ValueError:
        return f"birth date {shown} does not exist"
    if born.year < 1900:
        return f"birth date {shown} is before 1900"
    if born > _latest_today():
        return f"birth date {shown} is in the future"
    return None


def _latest_today() -> dt.date:
    """Today's date where it is latest (UTC+14): a birth date after it is certainly future.

    The machine's own date is not enough: a UTC server running at 01:00 in Beijing would call
    someone born that day in China "born in the future".
    """
    return dt.datetime.now(_LATEST_ZONE).date()


def _check_name(value: object) -> str | _Problem:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _Problem("contains digits")
    text = _cell_text(value)
    if isinstance(text, _Problem):
        return text
    name = normalise_name(text)
    if not name:
        return _Problem("empty")
    if len(name) > MAX_NAME_LENGTH:
        return _Problem(f"longer than {MAX_NAME_LENGTH} characters")
    latin = not _CJK_RE.search(name)
    has_letter = False
    for ch in name:
        if _CJK_RE.match(ch):
            has_letter = True
            continue
        category = unicodedata.category(ch)
        if category[0] in "LM":
            has_letter = has_letter or category[0] == "L"
            continue
        if ch == "·" or (latin and ch in _LATIN_NAME_PUNCTUATION):
            continue
        return _Problem(_name_character_problem(ch, category))
    if not has_letter:
        return _Problem("contains no letters")
    if name[0] in "-.'·":
        return _Problem(f"starts with {name[0]!r}")
    return name


def _name_character_problem(ch: str, category: str) -> str:
    if category[0] == "N":
        return "contains digits"
    if category in ("Cc", "Cf", "Cs"):
        return f"contains a control character (U+{ord(ch):04X})"
    if category == "Cn":
        return f"contains an unassigned character (U+{ord(ch):04X})"
    return f"contains {ch!r}, which is not allowed in names"


# A whole number written as a float ("13812345678.0", how pandas exports a float column).
# Its ".0" must go before "." is taken for a separator, or "1381234567.0" would become the
# 11-digit 13812345670: someone else's number, and a paid call.
_FLOAT_TEXT_RE: Final = re.compile(r"^\s*([0-9]+)\.0+\s*$")


def _check_mobile(value: object) -> str | _Problem:
    if isinstance(value, int | float) and not isinstance(value, bool):
        digits = _number_text(value)
        if digits is None:
            return _Problem("is a number cell that is not a whole number")
        text = normalise_mobile(digits)
    else:
        raw = _cell_text(value)
        if isinstance(raw, _Problem):
            return raw
        if _EXCEL_SCIENTIFIC_RE.match(normalise_idcard(raw)):  # before "." goes as a separator
            return _Problem(
                "must be 11 digits starting 13-19; "
                "it is in scientific notation (a number formatted by Excel)"
            )
        text = normalise_mobile(_FLOAT_TEXT_RE.sub(r"\1", raw))
    if _MOBILE_RE.match(text):
        return text
    return _Problem(_mobile_problem(text))


def _mobile_problem(text: str) -> str:
    rule = "must be 11 digits starting 13-19"
    if not text:
        return "empty"
    if not text.isascii() or not text.isdigit():
        return f"{rule}, got characters other than digits"
    if len(text) != 11:
        return f"{rule}, got {len(text)} digits"
    return f"{rule}, got one starting {text[:2]}"
